"""Sweep throughput: trials per hour on a Dask LocalCluster against one by one in-process.

The same trials three ways, each in a fresh sweep folder: ``--workers 0`` (one by one in
this process, no Dask), a LocalCluster of one worker (the Dask overhead per trial:
scheduling, the worker's start-up, its data loading, results coming back) and a
LocalCluster of ``--workers`` workers (the speed-up). The trials are one-epoch JSB
Chorales trials of the ``fig4`` sweep (every cell, every depth), the size the issue
names. Prints the ratios and writes JSON.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_sweep.py --data-dir DIR --json out.json

Run it on an otherwise idle machine: its point is to compare wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy: the trials' BLAS at one thread, as in the workers


def _run(spec, workers, data_dir):
    from rhn_np import sweep

    folder = tempfile.mkdtemp(prefix=f"bench-sweep-{workers}-")
    try:
        t0 = time.perf_counter()
        records = sweep.run_sweep(spec, folder, workers=workers, data_dir=data_dir, progress=False,
                                  out=lambda m: None)
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    bad = [r["trial"] for r in records if r["status"] != "ok"]
    seconds = [r["seconds"] for r in records]
    return {"workers": workers, "trials": len(records), "wall_s": wall, "trial_s_sum": sum(seconds),
            "trial_s_median": statistics.median(seconds), "trials_per_hour": 3600.0 * len(records) / wall,
            "not_ok": bad}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=os.environ.get("RHN_DATA_DIR"), help="folder holding jsb_chorales/")
    ap.add_argument("--trials", type=int, default=5, help="trials per arm (12 arms)")
    ap.add_argument("--workers", type=int, default=2, help="workers of the speed-up run")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    from rhn_np import data, sweep

    data.load("jsb", root=args.data_dir)  # fetched into the cache first if need be: not timed
    spec = sweep.builtin("fig4", trials=args.trials, epochs=1)
    runs = [_run(spec, 0, args.data_dir), _run(spec, 1, args.data_dir), _run(spec, args.workers, args.data_dir)]
    seq, one, many = runs
    n = seq["trials"]
    per_trial = seq["wall_s"] / n
    overhead = (one["wall_s"] - seq["wall_s"]) / n  # everything Dask adds, its start-up spread over the n trials
    outside = (one["wall_s"] - one["trial_s_sum"]) / n  # time of the 1-worker run outside any trial, per trial
    result = {
        "meta": {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "cpus": os.cpu_count(),
                 "python": platform.python_version(), "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS")},
        "runs": runs,
        "seconds_per_trial_in_process": per_trial,
        "dask_overhead_s_per_trial": overhead,
        "dask_overhead_fraction": overhead / per_trial,
        "outside_trials_s_per_trial": outside,
        "median_trial_s": {"in_process": seq["trial_s_median"], "one_worker": one["trial_s_median"]},
        "speedup": seq["wall_s"] / many["wall_s"],
    }
    print(f"{n} one-epoch JSB trials (fig4, {args.trials} per arm), BLAS at one thread")
    print("| run | wall (s) | trials/hour | sum of trial times (s) |")
    print("|---|---|---|---|")
    for r in runs:
        name = "--workers 0 (in process)" if r["workers"] == 0 else f"LocalCluster, {r['workers']} worker(s)"
        print(f"| {name} | {r['wall_s']:.1f} | {r['trials_per_hour']:.0f} | {r['trial_s_sum']:.1f} |")
    print(f"speed-up of {args.workers} workers over --workers 0: {result['speedup']:.2f}x (target >= 1.8)")
    print(f"Dask overhead per trial (1 worker against in-process): {overhead:.3f} s = "
          f"{100 * result['dask_overhead_fraction']:.1f} % of a {per_trial:.2f} s trial (target < 5 %)")
    print(f"  of which outside the trials (cluster start-up, scheduling, results): {outside:.3f} s per trial; "
          f"median trial {one['trial_s_median']:.3f} s on the worker against {seq['trial_s_median']:.3f} s in process")
    for r in runs:
        if r["not_ok"]:
            print(f"note: {len(r['not_ok'])} trials of the {r['workers']}-worker run did not end ok: {r['not_ok'][:5]}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main()
