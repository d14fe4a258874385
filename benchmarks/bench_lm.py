"""Tokens per second of one full language-model training step at the paper's sizes.

One step = draw the four variational dropout masks on the host, embedding, RHN
forward, softmax cross-entropy, backward through all of it, the authors' L2 term,
global-norm clipping and an SGD update (the authors' recipe, float32).

Usage::

    python benchmarks/bench_lm.py                         # NumPy on the CPU
    python benchmarks/bench_lm.py --backend cupy          # CuPy on the GPU
    python benchmarks/bench_lm.py --configs ptb_sota --repeats 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from rhn_np import backend, lm, optim

CONFIGS = {  # vocab, n_emb, n, depth, tied, batch, bptt, keep x/i/h/o, transform bias
    "ptb_sota": dict(vocab=10000, n_emb=830, n=830, depth=10, tied=True, batch=20, bptt=35,
                     keep=(0.75, 0.25, 0.75, 0.25), transform_bias=-2.0),
    "enwik8_sota": dict(vocab=205, n_emb=205, n=1500, depth=10, tied=False, batch=128, bptt=50,
                        keep=(0.9, 0.6, 0.9, 0.6), transform_bias=-4.0),
}


def make_step(cfg, be_name, seed=0):
    be = backend.get(be_name)
    params = lm.init_lm_params(cfg["vocab"], cfg["n_emb"], cfg["n"], cfg["depth"], tied=cfg["tied"],
                               transform_bias=cfg["transform_bias"], seed=seed, backend=be)
    rng = np.random.default_rng(seed)
    T, B, V = cfg["bptt"], cfg["batch"], cfg["vocab"]
    ids_host = rng.integers(0, V, size=(T + 1, B))
    ids = be.to_device(ids_host[:-1])
    targets = be.to_device(ids_host[1:])
    s0 = be.zeros((B, cfg["n"]))
    opt = optim.SGD(lr=0.2)
    kx, ki, kh, ko = cfg["keep"]

    def step():
        masks = lm.draw_masks(rng, ids, vocab=V, n_emb=cfg["n_emb"], n=cfg["n"], keep_x=kx, keep_i=ki,
                              keep_h=kh, keep_o=ko, backend=be)
        loss, grads, s_last, _ = lm.lm_loss_and_grads(params, ids, targets, s0, masks)
        grads = optim.add_l2_gradient(grads, params, 1e-7)
        grads, _ = optim.clip_global_norm(grads, 10.0)
        opt.step(params, grads)
        return loss

    sync = (lambda: backend._import_cupy().cuda.Device().synchronize()) if be.name == "cupy" else (lambda: None)
    return step, sync, T * B


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="numpy", choices=("numpy", "cupy"))
    ap.add_argument("--configs", default="ptb_sota,enwik8_sota")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    rows = []
    for name in args.configs.split(","):
        step, sync, tokens = make_step(CONFIGS[name], args.backend)
        step()
        sync()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            loss = step()
            sync()
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        row = {"config": name, "backend": args.backend, "step_ms": 1e3 * med, "tokens_per_s": tokens / med,
               "loss": float(backend.to_host(loss))}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"date": time.strftime("%Y-%m-%d"), "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
