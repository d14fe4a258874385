"""Time per sample of MC-dropout evaluation (``rhn_np.tasks.evaluate_mc``): batched against one by one.

Batched, the N samples run as the N rows of one batch over the stream (``rows=N``); one
by one, each sample is its own batch-1 pass (``rows=1``), the authors' way. A one-by-one
pass does not depend on how many others follow it, so its time per sample is measured
over ``min(N, --sequential-samples)`` samples, and both ways are timed in the same run on
the same model and stream. The first samples of both ways are checked to agree (the same
masks; they differ by float32 round-off only).

Models (float32, random weights, a random token stream with the model's vocabulary:
the speed does not depend on the text):

* ``demo``: the demo preset's model (96 symbols, depth 3, 128 units);
* ``ptb_small``: a word model with PTB's 10,000-word vocabulary, tied, depth 4, 200 units.

Usage::

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_mc.py
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_mc.py --models demo --samples 1,10,100 --tokens 2000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from rhn_np import lm, tasks

MODELS = {  # vocabulary, embedding, units, depth, tied, level
    "demo": (96, 96, 128, 3, False, "char"),
    "ptb_small": (10000, 200, 200, 4, True, "word"),
}
DROPS = dict(drop_x=0.25, drop_i=0.5, drop_h=0.25, drop_o=0.5)


def model_and_stream(name, n_tokens, seed=0):
    """The model ``name`` (float32) and a random stream of ``n_tokens`` of its vocabulary."""
    V, n_emb, n, depth, tied, level = MODELS[name]
    params = lm.init_lm_params(V, n_emb, n, depth, tied=tied, seed=seed, dtype="float32")
    stream = np.random.default_rng(seed).integers(0, V, n_tokens).astype(np.int32)
    return params, stream, level


def timed(params, stream, level, samples, rows, bptt):
    """Seconds of one ``evaluate_mc`` call and its result (no rejection: every pass counts)."""
    t0 = time.perf_counter()
    res = tasks.evaluate_mc(params, stream, samples=samples, rows=rows, reject_ppl=None, bptt=bptt, level=level,
                            **DROPS)
    return time.perf_counter() - t0, res


def measure(name, n_tokens, samples_list, sequential_samples, bptt):
    """One row per N of ``samples_list`` for model ``name``."""
    params, stream, level = model_and_stream(name, n_tokens)
    timed(params, stream, level, 2, 2, bptt)  # warm-up: first calls of the compiled path
    k = max(1, min(max(samples_list), sequential_samples))
    seq_s, seq = timed(params, stream, level, k, 1, bptt)
    seq_per_sample = seq_s / k
    rows = []
    for N in samples_list:
        batch_s, res = timed(params, stream, level, N, N, bptt)
        m = min(N, k)
        diff = float(np.max(np.abs(np.subtract(res["sample_nll"][:m], seq["sample_nll"][:m]))))
        rows.append({"model": name, "tokens": int(res["n_tokens"]), "samples": N, "rows": N,
                     "batched_s": batch_s, "batched_per_sample_ms": 1e3 * batch_s / N,
                     "one_by_one_per_sample_ms": 1e3 * seq_per_sample, "one_by_one_samples_timed": k,
                     "ratio_one_by_one_vs_batched": seq_per_sample / (batch_s / N),
                     "max_sample_nll_difference": diff})
    return rows


def report(rows) -> str:
    lines = ["| model | tokens | N | batched, total | batched, per sample | one by one, per sample "
             "| one by one / batched |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['tokens']:,} | {r['samples']} | {r['batched_s']:.2f} s | "
                     f"{r['batched_per_sample_ms']:,.1f} ms | {r['one_by_one_per_sample_ms']:,.1f} ms | "
                     f"**{r['ratio_one_by_one_vs_batched']:.1f}×** |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="demo,ptb_small", help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--samples", default="1,10,100", help="comma-separated numbers of MC samples N")
    ap.add_argument("--tokens", type=int, default=2000, help="length of the stream (a slice of a split)")
    ap.add_argument("--sequential-samples", type=int, default=10,
                    help="one-by-one passes timed for the time per sample (at most N)")
    ap.add_argument("--bptt", type=int, default=50, help="window length (the result does not depend on it)")
    ap.add_argument("--json", help="write the rows and the machine's facts here")
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        ap.error(f"--models: unknown {', '.join(unknown)}; known: {', '.join(MODELS)}")
    try:
        samples = [int(s) for s in args.samples.split(",") if s]
    except ValueError:
        ap.error(f"--samples must be comma-separated integers, got {args.samples!r}")
    if not samples or min(samples) < 1:
        ap.error(f"--samples must be integers >= 1, got {args.samples!r}")
    if args.tokens < 2 or args.sequential_samples < 1 or args.bptt < 1:
        ap.error("--tokens must be >= 2, --sequential-samples and --bptt >= 1")
    rows = [r for m in models for r in measure(m, args.tokens, samples, args.sequential_samples, args.bptt)]
    print(report(rows))
    result = {"rows": rows, "meta": {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
                                     "cpu_threads": os.cpu_count(), "numpy": np.__version__,
                                     "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
                                     "drops": DROPS, "bptt": args.bptt}}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return result


if __name__ == "__main__":
    main()
