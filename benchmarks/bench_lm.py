"""Tokens per second of the trainer's step (``rhn_np.train.Trainer.train_step``) per preset.

One step is exactly what ``rhn-np train`` does per window: draw the four variational
dropout masks on the host, embedding, RHN forward, softmax cross-entropy, backward
through all of it, the authors' L2 term, global-norm clipping and the optimiser update
(float32). The data is a random token stream with the preset's vocabulary size, so no
download is needed; the model, batch and window are the preset's.

Usage::

    python benchmarks/bench_lm.py                                 # NumPy on the CPU
    python benchmarks/bench_lm.py --backend cupy                  # CuPy on the GPU
    python benchmarks/bench_lm.py --presets demo,ptb_sota --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np

from rhn_np import backend, data
from rhn_np import train as T

VOCAB = {"demo": 96, "ptb_sota": 10000, "enwik8_sota": 205, "text8_sota": 27}
LEVEL = {"ptb_sota": "word"}


def synthetic(preset, n_tokens):
    """A random token stream with the preset's vocabulary size (the speed does not depend on the text)."""
    V = VOCAB[preset]
    ids = np.random.default_rng(0).integers(0, V, n_tokens).astype(np.int32)
    vocab = [f"w{i}" for i in range(V)]
    return data.Dataset(name=f"synthetic-{preset}", kind="tokens", train=ids, valid=ids[:1000], test=ids[:1000],
                        vocab=vocab, level=LEVEL.get(preset, "char"))


def graph_settings(backend_name):
    """The ``cuda_graphs`` settings to time: on CuPy with and without graphs, else the default."""
    return (True, False) if backend_name == "cupy" else (True,)


def time_steps(trainer, warmup, repeats):
    """Median seconds of ``trainer.train_step()`` after ``warmup`` steps, and the last loss."""
    for _ in range(warmup):
        float(trainer.train_step())  # float(): the host sync that ends the step on a GPU
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        loss = float(trainer.train_step())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), loss


def _row(preset, trainer, cfg, bptt, vocab, med, loss, cuda_graphs):
    row = {"preset": preset, "backend": trainer.be.name, "depth": cfg.depth, "hidden": cfg.hidden,
           "batch": cfg.batch_size, "bptt": bptt, "vocab": vocab, "step_ms": 1e3 * med,
           "tokens_per_s": cfg.batch_size * bptt / med, "loss": loss}
    if trainer.be.name == "cupy":
        row["cuda_graphs"] = cuda_graphs
    return row


def bench(preset, backend_name, repeats, warmup=2, cuda_graphs=True):
    cfg = T.config_from_preset(preset, backend=backend_name, dtype="float32", cuda_graphs=cuda_graphs)
    tokens = cfg.batch_size * cfg.bptt
    ds = synthetic(preset, tokens * (warmup + repeats + 2) + cfg.batch_size)
    trainer = T.Trainer(cfg, tempfile.mkdtemp(prefix="bench-lm-"), ds=ds, progress=False, out=lambda *a: None)
    med, loss = time_steps(trainer, warmup, repeats)
    return _row(preset, trainer, cfg, cfg.bptt, ds.vocab_size, med, loss, cuda_graphs)


def bench_rolls(preset, backend_name, repeats, warmup=2, cuda_graphs=True, frames=100):
    """:func:`bench` for a piano-roll preset (``jsb``): the trainer's step (sigmoid outputs,
    Adam, ...) on synthetic chorales of ``frames`` + 1 frames (random keys, 5 % on), one
    window of ``frames`` steps over the preset's batch; ``tokens_per_s`` counts frames."""
    cfg = T.config_from_preset(preset, backend=backend_name, dtype="float32", cuda_graphs=cuda_graphs)
    rng = np.random.default_rng(0)
    rolls = [(rng.random((frames + 1, data.N_KEYS)) < 0.05).astype(np.uint8)
             for _ in range(cfg.batch_size * (warmup + repeats + 2))]
    keys = [str(data.LOWEST_NOTE + k) for k in range(data.N_KEYS)]
    ds = data.Dataset(f"synthetic-{preset}", "piano_roll", rolls, rolls[:cfg.batch_size], rolls[:cfg.batch_size],
                      keys, "frame")
    trainer = T.Trainer(cfg, tempfile.mkdtemp(prefix="bench-lm-"), ds=ds, progress=False, out=lambda *a: None)
    med, loss = time_steps(trainer, warmup, repeats)
    return _row(preset, trainer, cfg, frames, data.N_KEYS, med, loss, cuda_graphs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="numpy", choices=("numpy", "cupy"))
    ap.add_argument("--presets", default="demo,ptb_sota,enwik8_sota")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    rows = []
    for name in args.presets.split(","):
        for graphs in graph_settings(args.backend):
            row = bench(name, args.backend, args.repeats, cuda_graphs=graphs)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        facts = backend.describe()
        with open(args.json, "w") as fh:
            json.dump({"date": time.strftime("%Y-%m-%d"), "cpu_count": os.cpu_count(),
                       "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"), "numpy": facts["numpy"],
                       "gpu": facts.get("gpu"), "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
