#!/usr/bin/env bash
# GPU checks in one go, for a machine with an NVIDIA GPU, CuPy and (optionally) PyTorch:
# the whole test suite (the CuPy tests run there), `rhn-np train --backend cupy` end to end,
# then the GPU benchmark (forward + BPTT against PyTorch eager and CUDA graph, and the
# trainer's language-model step on CuPy for the presets of the sizes).
# Usage: bash benchmarks/gpu_check.sh RESULTS_DIR [SIZES]
# RESULTS_DIR receives seven files and nothing else (the run's own folders go to a
# scratch folder): gpu.txt, tests.txt, train_cupy.txt, train_metrics.jsonl, bench_gpu.txt,
# bench_gpu.json (rewritten after every row) and status.txt. Each stage has its own time
# limit (TEST_TIMEOUT, TRAIN_TIMEOUT, BENCH_TIMEOUT, in seconds), so the whole script ends
# within about 9 minutes even when a stage hangs.
set -uo pipefail
out=${1:?usage: gpu_check.sh RESULTS_DIR [SIZES]}
sizes=${2:-small,ptb_paper,enwik8_paper}
mkdir -p "$out"
scratch=$(mktemp -d)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 RHN_HYPOTHESIS_PROFILE=${RHN_HYPOTHESIS_PROFILE:-ci}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -m rhn_np.cli info; } > "$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
if ! python3 -c "import rhn_np, cupy" 2>>"$out/gpu.txt"; then  # nothing below can work: stop now
    echo "import rhn_np, cupy failed (see gpu.txt): install the package's dependencies first" | tee "$out/status.txt"
    exit 2
fi
status=0
stages=""
# Four test processes where pytest-xdist is installed (the suite passes the same under -n).
workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n ${TEST_WORKERS:-4}")
timeout ${TEST_TIMEOUT:-240} python3 -m pytest ${PYTEST_TARGETS:-tests} $workers -q -rs -p no:cacheprovider 2>&1 | tee "$out/tests.txt"
rc=${PIPESTATUS[0]}; status=$((status | rc)); stages+="tests=$rc "
# End to end: `rhn-np train --backend cupy` on the demo preset (the pydoc corpus needs no network).
(export RHN_NP_DATA_HOME="$scratch/data-home"; timeout ${TRAIN_TIMEOUT:-120} python3 -m rhn_np.cli train --backend cupy \
    --max-steps ${TRAIN_STEPS:-500} --eval-every 250 --quiet --work-dir "$scratch/demo-cupy" \
    && python3 -m rhn_np.cli evaluate --work-dir "$scratch/demo-cupy" --backend numpy --split test --quiet) 2>&1 \
    | tee "$out/train_cupy.txt"
rc=${PIPESTATUS[0]}; status=$((status | rc)); stages+="train=$rc "
cp "$scratch/demo-cupy/metrics.jsonl" "$out/train_metrics.jsonl" 2>/dev/null
timeout ${BENCH_TIMEOUT:-150} python3 benchmarks/bench_layer.py --device gpu --sizes "$sizes" --repeats ${REPEATS:-10} \
    --json "$out/bench_gpu.json" 2>&1 | tee "$out/bench_gpu.txt"
rc=${PIPESTATUS[0]}; status=$((status | rc)); stages+="bench=$rc"
echo "$stages" | tee "$out/status.txt"
rm -rf "$scratch"
exit $status
