"""Probe: can the CuPy fast path (raw kernels + direct cuBLAS) be captured in a CUDA graph?

CuPy refuses ``cupy.matmul`` inside stream capture, but the raw fast path calls cuBLAS
directly. This script captures one forward + BPTT window at a benchmark size, replays
it, checks the replay reproduces the eager results exactly, and times both. It is a
measurement for deciding whether a graphed training step is worth building; nothing
in the package depends on it.

Usage: python benchmarks/gpu_graph_probe.py [--size ptb_paper] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


from rhn_np import backend, fast, rhn

from bench_layer import SIZES, make_inputs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="ptb_paper", choices=sorted(SIZES))
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    cp = backend.cupy_module()
    fast.set_cuda_kernels("raw")
    params, xs, s0, dys = make_inputs(args.size)
    gp = {k: backend.to_device(v, "cupy") for k, v in params.items()}
    gx, gs0, gdy = (backend.to_device(a, "cupy") for a in (xs, s0, dys))

    def window():
        ys, cache = rhn.forward(gp, gx, gs0, impl="fast")
        grads, dxs, ds0 = rhn.backward(gp, cache, gdy)
        return ys, grads, dxs, ds0

    sync = cp.cuda.Device().synchronize
    eager = window()
    sync()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        window()
        sync()
        times.append(time.perf_counter() - t0)
    row = {"size": args.size, "eager_ms": 1e3 * statistics.median(times)}

    stream = cp.cuda.Stream(non_blocking=True)
    try:
        with stream:
            window()  # warm the memory pool on this stream
            stream.synchronize()
            stream.begin_capture()
            captured = window()  # outputs stay referenced while the graph is replayed
            graph = stream.end_capture()
        graph.launch(stream)
        stream.synchronize()
        ys, grads, dxs, ds0 = captured
        err = max(float(cp.abs(ys - eager[0]).max()), float(cp.abs(dxs - eager[2]).max()),
                  max(float(cp.abs(grads[k] - eager[1][k]).max()) for k in grads))
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            graph.launch(stream)
            stream.synchronize()
            times.append(time.perf_counter() - t0)
        row.update(graph_ms=1e3 * statistics.median(times), graph_max_abs_diff=err)
    except Exception as exc:  # the point of the probe is to report this
        row["graph_error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    main()
