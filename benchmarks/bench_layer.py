"""Forward + BPTT time of the RHN layer against PyTorch, measured in the same run.

One unit of work = ``rhn.forward`` over a window of T steps x L micro-layers plus the
full ``rhn.backward``, float32, coupled gates, no softmax (the sizes of the project's
performance notes). Baselines: the same layer in PyTorch eager (per-micro-layer
parameter tensors, gates fused into one (n, 2n) matrix per micro-layer, autograd),
and on the GPU the same PyTorch step captured whole in one CUDA graph.

Each size also gets a full language-model training step in tokens/s: the trainer's own
step (``rhn_np.train.Trainer.train_step``, with embedding, softmax and optimiser) for the
preset of that size (``benchmarks/bench_lm.py``). Peak memory is the growth of the
process's peak resident set during one window on the CPU (the same yardstick for NumPy
and PyTorch), and the allocator high-water marks on the GPU.

Usage::

    python benchmarks/bench_layer.py                      # CPU: NumPy vs PyTorch eager
    python benchmarks/bench_layer.py --device gpu         # GPU: CuPy vs PyTorch eager / graph
    python benchmarks/bench_layer.py --device cpu,gpu --sizes small,ptb_paper,enwik8_paper
    python benchmarks/bench_layer.py --sizes small --repeats 3 --lm none --json out.json

It prints one line of JSON per measurement as it goes, then Markdown tables. Ratios
(< 1: rhn_np is faster) are the result; absolute times vary between machines.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc

import numpy as np

import bench_lm  # next to this file: the trainer's LM step
from rhn_np import backend, fast, graphs, rhn

SIZES = {  # name: (n_in, n, depth L, batch B, steps T)
    "small": (128, 256, 4, 32, 50),
    "ptb_paper": (830, 830, 10, 20, 35),
    "enwik8_paper": (205, 1500, 10, 128, 50),
}
# The training preset whose language-model step is timed with each size: the paper's
# PTB and enwik8 models are these sizes; `small` has no preset and gets the demo's.
LM_PRESET = {"small": "demo", "ptb_paper": "ptb_sota", "enwik8_paper": "enwik8_sota"}


def gflop(n_in, n, L, B, T):
    """Forward: one B x n by n x 2n product per micro-step; backward two more; plus
    the input projection (3 products of T*B x n_in by n_in x 2n)."""
    rec = 3 * T * L * 2 * B * n * 2 * n
    inp = 3 * 2 * T * B * n_in * 2 * n
    return (rec + inp) / 1e9


def median_time(fn, repeats, sync=lambda: None, warmup=2):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class PeakRSS:
    """Growth of the process's peak resident set over a block, in MiB (Linux).

    Writing 5 to /proc/self/clear_refs resets the kernel's high-water mark (VmHWM) to the
    current resident set, so ``VmHWM`` after the block minus ``VmRSS`` before it is the
    most memory the block held at once, whichever library allocated it. Memory freed
    earlier but kept by the C allocator would be reused without showing up, so it is
    first handed back with glibc's ``malloc_trim(0)``. ``mb`` stays None where the
    kernel offers no such reset.
    """

    def __enter__(self):
        self.mb = None
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self._start = self._read("VmRSS")
        except OSError:
            self._start = None
        return self

    def __exit__(self, *exc):
        if self._start is not None:
            self.mb = (self._read("VmHWM") - self._start) / 1024

    @staticmethod
    def _read(field):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])  # kB
        raise OSError(f"no {field} in /proc/self/status")


def make_inputs(size, seed=0):
    n_in, n, L, B, T = SIZES[size]
    rng = np.random.default_rng(seed)
    params = rhn.init_params(n_in, n, L, seed=seed)  # float32 host arrays
    xs = rng.standard_normal((T, B, n_in), dtype=np.float32)
    s0 = np.zeros((B, n), np.float32)
    dys = rng.standard_normal((T, B, n), dtype=np.float32)
    return params, xs, s0, dys


def rhn_step(params, xs, s0, dys, impl):
    def step():
        ys, cache = rhn.forward(params, xs, s0, impl=impl)
        return rhn.backward(params, cache, dys)

    return step


def gemm_only_step(params, xs, dys):
    """The matrix products of one reference window and nothing else: its GEMM floor.

    Exactly the products ``rhn.forward`` and ``rhn.backward`` run, on buffers of the
    same shapes: the input projection of all steps, per micro-step ``s @ R[l]`` forward
    and ``∂L/∂a @ R[l]ᵀ`` (stored Rᵀ) backward, then dR (batched over the micro-layers),
    dW and dx. Time spent in a window beyond this is gate maths, copies and Python.
    """
    T, B, n_in = xs.shape
    W, R, _ = rhn.fuse_params(params)
    L, n, kn = R.shape
    R_t = np.ascontiguousarray(np.swapaxes(R, 1, 2))
    S = np.ascontiguousarray(np.broadcast_to(dys, (L, T, B, n)))  # stand-ins of the cached states
    dA = np.ones((L, T, B, kn), np.float32)
    a, g = np.empty((B, kn), np.float32), np.empty((B, n), np.float32)
    x2 = xs.reshape(T * B, n_in)

    def step():
        x2 @ W
        for t in range(T):
            for l in range(L):
                np.matmul(S[l, t], R[l], out=a)
        for t in reversed(range(T)):
            for l in reversed(range(L)):
                np.matmul(dA[l, t], R_t[l], out=g)
        np.swapaxes(S.reshape(L, T * B, n), 1, 2) @ dA.reshape(L, T * B, kn)
        x2.T @ dA[0].reshape(T * B, kn)
        dA[0].reshape(T * B, kn) @ W.T

    return step


# ---------------------------------------------------------------- PyTorch baseline
def torch_layer(torch, params, device):
    """Per-micro-layer leaf tensors, gates fused: R[l] is (n, 2n) = [R_H[l] | R_T[l]]."""
    L = params["R_H"].shape[0]
    t = lambda a: torch.tensor(np.ascontiguousarray(a), device=device, requires_grad=True)  # noqa: E731
    W = t(np.concatenate([params["W_H"], params["W_T"]], axis=1))
    R = [t(np.concatenate([params["R_H"][l], params["R_T"][l]], axis=1)) for l in range(L)]
    b = [t(np.concatenate([params["b_H"][l], params["b_T"][l]])) for l in range(L)]
    return W, R, b


def torch_loss(torch, W, R, b, X, S0, D):
    T, B, n_in = X.shape
    n = S0.shape[1]
    ax = (X.reshape(T * B, n_in) @ W).reshape(T, B, -1) + b[0]
    s, ys = S0, []
    for t in range(T):
        for l in range(len(R)):
            a = s @ R[l] + (ax[t] if l == 0 else b[l])
            h = torch.tanh(a[:, :n])
            g = torch.sigmoid(a[:, n:])
            s = h * g + s * (1 - g)
        ys.append(s)
    return (torch.stack(ys) * D).sum()


def torch_eager_step(torch, params, xs, s0, dys, device):
    W, R, b = torch_layer(torch, params, device)
    X, S0, D = (torch.tensor(a, device=device) for a in (xs, s0, dys))
    leaves = [W, *R, *b]

    def step():
        for p in leaves:
            p.grad = None
        torch_loss(torch, W, R, b, X, S0, D).backward()

    return step, leaves


def torch_graph_step(torch, params, xs, s0, dys):
    """The whole forward + backward captured in one CUDA graph (PyTorch's whole-network recipe)."""
    step, leaves = torch_eager_step(torch, params, xs, s0, dys, "cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    for p in leaves:
        p.grad = None
    graph = torch.cuda.CUDAGraph()
    W, R, b = leaves[0], leaves[1 : 1 + len(params["R_H"])], leaves[1 + len(params["R_H"]) :]
    X, S0, D = (torch.tensor(a, device="cuda") for a in (xs, s0, dys))
    with torch.cuda.graph(graph):
        torch_loss(torch, W, R, b, X, S0, D).backward()
    return graph.replay


# ---------------------------------------------------------------- measurements
def cpu_row(size, repeats, torch):
    params, xs, s0, dys = make_inputs(size)
    row = {"size": size, "device": "cpu", "gflop": gflop(*SIZES[size])}
    for impl in ("reference", "fast"):
        step = rhn_step(params, xs, s0, dys, impl)
        row[f"numpy_{impl}_ms"] = 1e3 * median_time(step, repeats)
        with PeakRSS() as peak:
            step()
        row[f"numpy_{impl}_peak_mb"] = peak.mb
    row["numpy_gemm_only_ms"] = 1e3 * median_time(gemm_only_step(params, xs, dys), repeats)
    row["ratio_reference_vs_gemm_only"] = row["numpy_reference_ms"] / row["numpy_gemm_only_ms"]
    tracemalloc.start()  # NumPy reports its allocations to tracemalloc: an exact count
    rhn_step(params, xs, s0, dys, "reference")()
    row["numpy_traced_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    ys, cache = rhn.forward(params, xs, s0)
    row["cache_mb"] = rhn.cache_nbytes(cache) / 2**20
    n_in, n, L, B, T = SIZES[size]
    row["cache_min_mb"] = 3 * L * T * B * n * 4 / 2**20  # s_in, h, t per micro-layer and step
    if torch is not None:
        step, _ = torch_eager_step(torch, params, xs, s0, dys, "cpu")
        row["torch_eager_ms"] = 1e3 * median_time(step, repeats)
        with PeakRSS() as peak:
            step()
        row["torch_eager_peak_mb"] = peak.mb
        for impl in ("reference", "fast"):
            row[f"ratio_{impl}_vs_torch"] = row[f"numpy_{impl}_ms"] / row["torch_eager_ms"]
    print(json.dumps(row), flush=True)
    return row


def gpu_row(size, repeats, torch):
    cp = backend.cupy_module()
    if cp is None:
        sys.exit(f"no usable GPU: {backend.cupy_unavailable_reason()}")
    sync = cp.cuda.Device().synchronize
    pool = cp.get_default_memory_pool()
    params, xs, s0, dys = make_inputs(size)
    gp = {k: backend.to_device(v, "cupy") for k, v in params.items()}
    gx, gs0, gdy = (backend.to_device(a, "cupy") for a in (xs, s0, dys))
    row = {"size": size, "device": "gpu", "gflop": gflop(*SIZES[size])}
    for label, impl, variant in (("cupy_fast_raw", "fast", "raw"), ("cupy_fast_elementwise", "fast", "elementwise"),
                                 ("cupy_reference", "reference", "raw")):
        fast.set_cuda_kernels(variant)
        step = rhn_step(gp, gx, gs0, gdy, impl)
        row[f"{label}_ms"] = 1e3 * median_time(step, repeats, sync)
        # Pool high-water mark of one step (inputs and parameters included): the pool
        # keeps every block it allocated, and reuses freed ones, so after emptying it
        # and running one step its size is the step's peak.
        pool.free_all_blocks()
        out = step()
        sync()
        del out
        row[f"{label}_pool_mb"] = pool.total_bytes() / 2**20
    fast.set_cuda_kernels("raw")
    try:  # the same fast path captured once in a CUDA graph, replayed per window
        window = graphs.CapturedWindow(gp, SIZES[size][4], SIZES[size][3])
        row["cupy_graph_ms"] = 1e3 * median_time(lambda: window(gx, gs0, gdy), repeats, sync)
        # The graphs' private pools, plus what lives in the default pool (parameters and
        # inputs), as the fast path's figure includes them: the same yardstick.
        pool.free_all_blocks()
        row["cupy_graph_private_mb"] = window.pool_bytes() / 2**20
        row["cupy_graph_pool_mb"] = (window.pool_bytes() + pool.total_bytes()) / 2**20
        window = None  # frees the graph and its private pool before the PyTorch runs
    except Exception as exc:  # report, never hide
        row["cupy_graph_error"] = f"{type(exc).__name__}: {exc}"
    ys, cache = rhn.forward(gp, gx, gs0)
    row["cache_mb"] = rhn.cache_nbytes(cache) / 2**20
    n_in, n, L, B, T = SIZES[size]
    row["cache_min_mb"] = 3 * L * T * B * n * 4 / 2**20
    del ys, cache
    if torch is not None:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.cuda.reset_peak_memory_stats()
        step, _ = torch_eager_step(torch, params, xs, s0, dys, "cuda")
        row["torch_eager_ms"] = 1e3 * median_time(step, repeats, torch.cuda.synchronize)
        row["torch_eager_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        try:
            replay = torch_graph_step(torch, params, xs, s0, dys)
            row["torch_graph_ms"] = 1e3 * median_time(replay, repeats, torch.cuda.synchronize)
        except Exception as exc:  # report, never hide
            row["torch_graph_error"] = f"{type(exc).__name__}: {exc}"
        for label in ("cupy_fast_raw", "cupy_graph"):
            if f"{label}_ms" in row:
                row[f"ratio_{label}_vs_torch_eager"] = row[f"{label}_ms"] / row["torch_eager_ms"]
                if "torch_graph_ms" in row:
                    row[f"ratio_{label}_vs_torch_graph"] = row[f"{label}_ms"] / row["torch_graph_ms"]
    print(json.dumps(row), flush=True)
    return row


def _fmt(v, unit=""):
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return (f"{v:.2g}" if v < 0.1 else f"{v:.2f}" if v < 10 else f"{v:.3g}" if v < 1000 else f"{v:,.0f}") + unit
    return f"{v}{unit}"


def markdown(columns, rows):
    """A Markdown table: ``columns`` is a list of (header, key, unit); missing keys show –."""
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k), u) for _, k, u in columns) + " |")
    return "\n".join(lines)


CPU_COLUMNS = [
    ("size", "size", ""), ("NumPy reference", "numpy_reference_ms", " ms"), ("NumPy fast", "numpy_fast_ms", " ms"),
    ("PyTorch eager", "torch_eager_ms", " ms"), ("reference / PyTorch", "ratio_reference_vs_torch", ""),
    ("fast / PyTorch", "ratio_fast_vs_torch", ""), ("GEMMs only", "numpy_gemm_only_ms", " ms"),
    ("reference / GEMMs", "ratio_reference_vs_gemm_only", ""), ("peak RSS, reference", "numpy_reference_peak_mb", " MiB"),
    ("peak RSS, fast", "numpy_fast_peak_mb", " MiB"), ("peak RSS, PyTorch", "torch_eager_peak_mb", " MiB"),
    ("cache", "cache_mb", " MiB"), ("minimum", "cache_min_mb", " MiB"),
]
GPU_COLUMNS = [
    ("size", "size", ""), ("CuPy captured", "cupy_graph_ms", " ms"), ("CuPy fast", "cupy_fast_raw_ms", " ms"),
    ("CuPy fast, ElementwiseKernel", "cupy_fast_elementwise_ms", " ms"), ("CuPy reference", "cupy_reference_ms", " ms"),
    ("PyTorch eager", "torch_eager_ms", " ms"), ("PyTorch CUDA graph", "torch_graph_ms", " ms"),
    ("captured / graph", "ratio_cupy_graph_vs_torch_graph", ""), ("captured / eager", "ratio_cupy_graph_vs_torch_eager", ""),
    ("fast / graph", "ratio_cupy_fast_raw_vs_torch_graph", ""), ("fast / eager", "ratio_cupy_fast_raw_vs_torch_eager", ""),
    ("peak, CuPy fast", "cupy_fast_raw_pool_mb", " MiB"), ("peak, CuPy captured", "cupy_graph_pool_mb", " MiB"),
    ("peak, PyTorch eager", "torch_eager_peak_mb", " MiB"), ("cache", "cache_mb", " MiB"), ("minimum", "cache_min_mb", " MiB"),
]
LM_COLUMNS = [
    ("preset", "preset", ""), ("backend", "backend", ""), ("V", "vocab", ""), ("n", "hidden", ""), ("L", "depth", ""),
    ("B", "batch", ""), ("T", "bptt", ""), ("CUDA graphs", "cuda_graphs", ""), ("step", "step_ms", " ms"),
    ("tokens/s", "tokens_per_s", ""),
]


def lm_row(preset, backend_name, repeats, cuda_graphs=True):
    """The trainer's full language-model step of one preset (see ``bench_lm.py``)."""
    try:
        row = bench_lm.bench(preset, backend_name, repeats, cuda_graphs=cuda_graphs)
    except Exception as exc:  # report, never hide
        row = {"preset": preset, "backend": backend_name, "error": f"{type(exc).__name__}: {exc}"}
        if backend_name == "cupy":
            row["cuda_graphs"] = cuda_graphs
    print(json.dumps(row), flush=True)
    return row


def report(meta, layer, lm):
    out = ["", "```", json.dumps(meta), "```"]
    for device, columns in (("cpu", CPU_COLUMNS), ("gpu", GPU_COLUMNS)):
        rows = [r for r in layer if r["device"] == device]
        if rows:
            out += ["", f"Forward + BPTT of one window, {device.upper()} (median):", "", markdown(columns, rows)]
    if lm:
        out += ["", "Full language-model training step (the trainer's, median):", "", markdown(LM_COLUMNS, lm)]
    errors = [f"{r.get('size') or r.get('preset')}: {k} = {v}" for r in layer + lm for k, v in r.items() if "error" in k]
    if errors:
        out += ["", "Errors:", *errors]
    return "\n".join(out)


def blas_threads() -> int:
    """The threads NumPy's BLAS uses: its environment variable if set, else every core."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return max(1, int(os.environ[var]))
    return os.cpu_count() or 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu, gpu, or both: cpu,gpu")
    ap.add_argument("--sizes", default="small,ptb_paper", help=f"comma-separated, from {', '.join(SIZES)}")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--lm", default="auto",
                    help="presets whose language-model step to time (comma-separated), 'auto' for the "
                         f"presets of the sizes ({', '.join(f'{k}: {v}' for k, v in LM_PRESET.items())}), or 'none'")
    ap.add_argument("--lm-repeats", type=int, default=3)
    ap.add_argument("--json", help="write the rows here as JSON")
    args = ap.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    for s in sizes:
        if s not in SIZES:
            ap.error(f"unknown size {s!r}; choose from {', '.join(SIZES)}")
    devices = [d for d in args.device.split(",") if d]
    if not devices or any(d not in ("cpu", "gpu") for d in devices):
        ap.error(f"--device must be cpu, gpu or cpu,gpu, got {args.device!r}")
    presets = ([LM_PRESET[s] for s in sizes] if args.lm == "auto" else
               [] if args.lm == "none" else [p for p in args.lm.split(",") if p])
    for p in presets:
        if p not in bench_lm.VOCAB:
            ap.error(f"unknown preset {p!r} for --lm; choose from {', '.join(bench_lm.VOCAB)}, 'auto' or 'none'")
    threads = blas_threads()
    try:
        import torch

        torch.set_num_threads(threads)  # the same number of threads as NumPy's BLAS: a fair race
    except ImportError:
        torch = None
        print("PyTorch is not installed: no baseline (pip install -e '.[bench]')", file=sys.stderr)
    meta = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "cpu_threads": threads, "date": time.strftime("%Y-%m-%d"), "torch": getattr(torch, "__version__", None)}
    if "gpu" in devices:
        meta.update({k: v for k, v in backend.describe().items() if k != "backends"})
    layer, lm = [], []

    def save():  # after every row, so a run stopped part-way keeps what it measured
        if args.json:
            tmp = args.json + ".tmp"
            with open(tmp, "w") as fh:
                json.dump({"meta": meta, "rows": layer, "lm": lm}, fh, indent=2)
            os.replace(tmp, args.json)

    for device in devices:
        for size in sizes:
            layer.append((cpu_row if device == "cpu" else gpu_row)(size, args.repeats, torch))
            save()
        lm_backend = "numpy" if device == "cpu" else "cupy"
        for preset in presets:
            for use_graphs in bench_lm.graph_settings(lm_backend):
                lm.append(lm_row(preset, lm_backend, args.lm_repeats, use_graphs))
                save()
    print(report(meta, layer, lm))


if __name__ == "__main__":
    main()
