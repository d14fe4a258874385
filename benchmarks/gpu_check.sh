#!/usr/bin/env bash
# GPU checks in one go, for a machine with an NVIDIA GPU, CuPy and (optionally) PyTorch:
# the whole test suite (the CuPy tests run there), `rhn-np train --backend cupy` end to end,
# then the GPU benchmark (forward + BPTT against PyTorch eager and CUDA graph, and the
# trainer's language-model step on CuPy for the presets of the sizes).
# Usage: bash benchmarks/gpu_check.sh RESULTS_DIR [SIZES]   (about 6 minutes on an H100)
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
# End to end: `rhn-np train --backend cupy` on the demo preset (the pydoc corpus needs no network).
(export RHN_NP_DATA_HOME="$out/data-home"; timeout ${TRAIN_TIMEOUT:-200} python3 -m rhn_np.cli train --backend cupy \
    --max-steps ${TRAIN_STEPS:-1000} --eval-every 500 --quiet --work-dir "$out/demo-cupy" \
    && python3 -m rhn_np.cli evaluate --work-dir "$out/demo-cupy" --backend numpy --split test --quiet) 2>&1 \
    | tee "$out/train_cupy.txt"
status=$((status | ${PIPESTATUS[0]}))
timeout ${BENCH_TIMEOUT:-480} python3 benchmarks/bench_layer.py --device gpu --sizes "$sizes" --repeats ${REPEATS:-10} \
    --json "$out/bench_gpu.json" 2>&1 | tee "$out/bench_gpu.txt"
status=$((status | ${PIPESTATUS[0]}))
exit $status
