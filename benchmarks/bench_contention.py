"""Training speed on a shared machine: ``rhn-np train`` idle and with other busy processes.

For each BLAS-thread setting, ``rhn-np train`` (the ``demo`` preset by default) runs
``--steps`` training steps twice: on the idle machine, and with ``--busy`` other processes
(by default one per core) busy all the time, each multiplying matrices with NumPy on one
thread (``--busy-kind matmul``) or spinning in a Python loop (``spin``). The speed is the
trainer's own: steps per second over the second half of the steps, from the ``train``
records of the run's ``metrics.jsonl`` (start-up, compilation and validation left out).

Settings:

* ``default``: what ``rhn-np train`` does with no option and no ``OPENBLAS_NUM_THREADS``
  (:func:`rhn_np.tasks.threads_for`: one thread for small matrices, never every core);
* ``all cores``: ``--threads <cores>``, OpenBLAS's own default, the behaviour before.

Printed: steps/s of each run (and the CPU the command got: its CPU seconds over its wall
time, which says how much of the machine the other programs left it), the ratios busy /
idle per setting (the target: the default keeps at least 40 % of its idle speed under
contention) and default / all cores. The
machine's other load is not under this script's control: run it more than once on a
shared machine (``--repeats``; the median is reported).

Usage::

    python benchmarks/bench_contention.py                       # demo, 100 steps, 2 repeats
    python benchmarks/bench_contention.py --busy-kind spin --repeats 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from rhn_np import tasks
from rhn_np import train as T

BUSY_CODE = {
    "matmul": "import numpy as np\na = np.random.default_rng(0).random((384, 384))\nwhile True:\n    a @ a\n",
    "spin": "while True:\n    pass\n",
}


def clean_env() -> dict:
    """The environment without the variables that fix BLAS threads (so the CLI's rule applies)."""
    return {k: v for k, v in os.environ.items() if k not in tasks.BLAS_THREAD_VARIABLES}


def start_busy(n: int, kind: str) -> list[subprocess.Popen]:
    env = dict(clean_env(), OPENBLAS_NUM_THREADS="1")  # each busy process: one thread, one core's worth of load
    procs = [subprocess.Popen([sys.executable, "-c", BUSY_CODE[kind]], env=env) for _ in range(n)]
    time.sleep(1.0)  # running at full speed before the measurement starts
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def train_speed(preset: str, steps: int, threads: int | None, folder: str) -> dict:
    """One ``rhn-np train`` of ``steps`` steps; steps/s of its second half, and its wall time."""
    cfg = T.config_from_preset(preset)
    log_every = max(1, steps // 20)  # a "train" record every 10 log steps: at steps/2 and at steps
    argv = [sys.executable, "-m", "rhn_np.cli", "train", "--preset", preset, "--max-steps", str(steps),
            "--eval-every", str(10 ** 9), "--log-every", str(log_every), "--sample-length", "0", "--no-final-eval",
            "--quiet", "--work-dir", folder]
    if threads is not None:
        argv += ["--threads", str(threads)]
    start, used = time.perf_counter(), _children_cpu()
    subprocess.run(argv, env=clean_env(), check=True, stdout=subprocess.DEVNULL)
    wall, cpu = time.perf_counter() - start, _children_cpu() - used
    records = [r for r in T.read_metrics(folder) if r["split"] == "train" and r.get("tokens_per_s")]
    last = records[-1]  # the steps after the previous record: warm, no validation inside
    per_step = cfg.batch_size * cfg.bptt  # token presets: every step is one B x T window
    return {"steps_per_s": last["tokens_per_s"] / per_step, "tokens_per_s": last["tokens_per_s"],
            "measured_steps": last["step"] - (records[-2]["step"] if len(records) > 1 else 0), "wall_s": wall,
            "cpu_s": cpu, "cores_used": cpu / wall}


def _children_cpu() -> float:
    """User + system CPU seconds of this process's finished children (the training command's)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="demo", choices=[p for p in T.PRESETS if p != "jsb"],
                    help="a token-stream preset (its data set must be here or downloadable)")
    ap.add_argument("--steps", type=int, default=100, help="training steps per run (the second half is timed)")
    ap.add_argument("--busy", type=int, default=tasks.cpu_cores(), help="busy processes (default: one per core)")
    ap.add_argument("--busy-kind", choices=sorted(BUSY_CODE), default="matmul")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each measurement (the median is reported)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    cores = tasks.cpu_cores()
    settings = {"default": None, "all cores": cores}
    cfg = T.config_from_preset(args.preset)
    print(f"{args.preset}: {cfg.hidden} units, depth {cfg.depth}, batch {cfg.batch_size} x {cfg.bptt}; {cores} cores; "
          f"default threads {tasks.blas_threads(cfg, cfg.batch_size)}; busy: {args.busy} x {args.busy_kind}; "
          f"load average before {os.getloadavg()[0]:.2f}")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        train_speed(args.preset, 4, None, os.path.join(tmp, "warm-up"))  # data cache and compiled code, untimed
        for r in range(args.repeats):
            for load in ("idle", "busy"):
                procs = start_busy(args.busy, args.busy_kind) if load == "busy" else []
                try:
                    for name, threads in settings.items():
                        res = train_speed(args.preset, args.steps, threads, os.path.join(tmp, f"{r}-{load}-{name}"))
                        runs.setdefault((name, load), []).append(res)
                        print(f"  repeat {r + 1}, {load:4s}, {name:9s}: {res['steps_per_s']:6.2f} steps/s "
                              f"(command {res['wall_s']:.1f} s, {res['cores_used']:.2f} cores busy on average)",
                              flush=True)
                finally:
                    stop(procs)
    speed = {k: statistics.median(x["steps_per_s"] for x in v) for k, v in runs.items()}
    ratios = {
        "default busy / idle": speed[("default", "busy")] / speed[("default", "idle")],
        "all cores busy / idle": speed[("all cores", "busy")] / speed[("all cores", "idle")],
        "busy: default / all cores": speed[("default", "busy")] / speed[("all cores", "busy")],
        "idle: default / all cores": speed[("default", "idle")] / speed[("all cores", "idle")],
    }
    print("\n| setting | idle steps/s | busy steps/s | busy / idle |")
    print("|---|---|---|---|")
    for name in settings:
        print(f"| {name} | {speed[(name, 'idle')]:.2f} | {speed[(name, 'busy')]:.2f} | "
              f"{speed[(name, 'busy')] / speed[(name, 'idle')]:.2f} |")
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}")
    met = ratios["default busy / idle"] >= 0.40
    print(f"target (default keeps >= 40 % of its idle speed under contention): {'met' if met else 'NOT met'}")
    result = {"meta": {"preset": args.preset, "steps": args.steps, "busy": args.busy, "busy_kind": args.busy_kind,
                       "repeats": args.repeats, "cores": cores, "machine": platform.processor() or platform.machine(),
                       "date": time.strftime("%Y-%m-%d")},
              "runs": {f"{name}, {load}": v for (name, load), v in runs.items()},
              "median_steps_per_s": {f"{name}, {load}": v for (name, load), v in speed.items()},
              "ratios": ratios, "target_met": met}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main()
