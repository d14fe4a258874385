#!/usr/bin/env bash
# GPU checks in one go, for a machine with an NVIDIA GPU, CuPy and (optionally) PyTorch:
# the CuPy tests, then the GPU benchmark. Usage: bash benchmarks/gpu_check.sh RESULTS_DIR [SIZES]
set -uo pipefail
out=${1:?usage: gpu_check.sh RESULTS_DIR [SIZES]}
sizes=${2:-small,ptb_paper,enwik8_paper}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 RHN_HYPOTHESIS_PROFILE=${RHN_HYPOTHESIS_PROFILE:-ci}
status=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1
python3 -m rhn_np.cli info 2>&1 | tee "$out/info.txt"
python3 -m pytest ${PYTEST_TARGETS:-tests} -q -rs -p no:cacheprovider 2>&1 | tee "$out/tests.txt"
status=$((status | ${PIPESTATUS[0]}))
timeout ${BENCH_TIMEOUT:-400} python3 benchmarks/bench_layer.py --device gpu --sizes "$sizes" --repeats ${REPEATS:-10} \
    --json "$out/bench_gpu.json" 2>&1 | tee "$out/bench_gpu.txt"
status=$((status | ${PIPESTATUS[0]}))
exit $status
