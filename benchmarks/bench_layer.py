"""Forward + BPTT time of the RHN layer against PyTorch and JAX, measured in the same run.

One unit of work = ``rhn.forward`` over a window of T steps x L micro-layers plus the
full ``rhn.backward``, float32, coupled gates, no softmax (the sizes of the project's
performance notes). rhn_np is timed three ways on the CPU: the reference, the fast path
with its in-place ufunc kernels (``fast.set_cpu_kernels("numpy")``) and the fast path
compiled with numba (``"compiled"``, where numba is installed), next to the window's GEMM
floor (its matrix products and nothing else). Peers (``--peers``): the same layer in
PyTorch eager (per-micro-layer parameter tensors, gates fused into one (n, 2n) matrix per
micro-layer, autograd), in PyTorch with one time step compiled by ``torch.compile``, and
in JAX (``lax.scan``, ``jax.jit`` of ``value_and_grad``; optional, ``pip install jax``);
see ``benchmarks/peers.py``. Each compiled peer's first call (its compile) is reported on
its own and kept out of the median, and its ys and gradients are checked once per size
against rhn_np's reference (a warning when they differ by more than ``peers.RTOL``). On the
GPU: the same PyTorch step captured whole in one CUDA graph.

Threads: NumPy's BLAS uses ``OPENBLAS_NUM_THREADS`` (or ``OMP_``/``MKL_NUM_THREADS``; every
core when none is set); PyTorch is given the same count (``torch.set_num_threads``), and
JAX runs confined to that many CPUs (XLA has no thread-count flag: ``peers.xla_flags``).
The counts are in the JSON metadata (``threads``).

Each size also gets a full training step in tokens (frames) per second: the trainer's own
step (``rhn_np.train.Trainer.train_step``, with embedding, softmax and optimiser) for the
preset of that size (``benchmarks/bench_lm.py``; the jsb preset on synthetic piano rolls,
sigmoid outputs). Peak memory is the growth of the process's peak resident set during one
window on the CPU (the same yardstick for NumPy, PyTorch and JAX), and the allocator
high-water marks on the GPU.

Usage::

    python benchmarks/bench_layer.py                      # CPU: NumPy vs PyTorch eager / compile, JAX
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_layer.py --sizes jsb,small,ptb_paper
    python benchmarks/bench_layer.py --device gpu         # GPU: CuPy vs PyTorch eager / graph
    python benchmarks/bench_layer.py --device cpu,gpu --sizes small,ptb_paper,enwik8_paper
    python benchmarks/bench_layer.py --sizes small --repeats 3 --lm none --peers eager --json out.json

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
import peers  # next to this file: torch.compile and JAX
from rhn_np import backend, fast, graphs, rhn
from rhn_np.config import PRESETS

SIZES = {  # name: (n_in, n, depth L, batch B, steps T)
    "small": (128, 256, 4, 32, 50),
    "ptb_paper": (830, 830, 10, 20, 35),
    "enwik8_paper": (205, 1500, 10, 128, 50),
    "jsb": (88, 128, 6, 8, 100),  # 88 piano keys in, a small deep RHN, short batches
}
# The training preset whose language-model step is timed with each size: the paper's
# PTB and enwik8 models are these sizes; `small` has no preset and gets the demo's; `jsb`
# the jsb preset's (its own width and batch), None where no such preset exists.
LM_PRESET = {"small": "demo", "ptb_paper": "ptb_sota", "enwik8_paper": "enwik8_sota",
             "jsb": "jsb" if "jsb" in PRESETS else None}
# Presets on piano rolls: their step is timed on synthetic rolls (bench_lm.bench_rolls).
ROLL_PRESETS = tuple(p for p, fields in PRESETS.items() if fields.get("dataset") == "jsb")


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
# rhn_np's variants on the CPU: label, impl, fast.set_cpu_kernels choice (None: leave it)
NUMPY_VARIANTS = (("reference", "reference", None), ("fast", "fast", "numpy"), ("compiled", "fast", "compiled"))
# The yardsticks of the ratios ``ratio_{variant}_vs_{peer}``, and which ratios a CPU row gets.
CPU_PEER_KEYS = {"gemm_only": "numpy_gemm_only_ms", "torch": "torch_eager_ms", "torch_compile": "torch_compile_ms",
                 "jax": "jax_jit_ms"}
CPU_RATIOS = [(v, p) for v, _, _ in NUMPY_VARIANTS for p in ("gemm_only", "torch")] + [
    ("compiled", "torch_compile"), ("compiled", "jax")]


def time_peer(row, name, build, repeats, reference, first_call_key=None):
    """Time one peer into ``row`` as ``{name}_ms`` / ``{name}_peak_mb``; on failure record
    ``{name}_error`` and go on. ``build()`` returns ``(step, run)`` (see ``peers.py``); with
    ``first_call_key`` the first ``step()`` (the compile) is timed on its own, before the
    warm-up, and ``run()``'s ys and gradients are checked against ``reference``."""
    try:
        step, run = build()
        if first_call_key:
            row[first_call_key] = peers.timed_first_call(step)
        row[f"{name}_ms"] = 1e3 * median_time(step, repeats)
        with PeakRSS() as peak:
            step()
        row[f"{name}_peak_mb"] = peak.mb
        if first_call_key:
            err_ys, err_grads = peers.max_errors(run(), reference)
            row[f"{name}_err_ys"], row[f"{name}_err_grads"] = err_ys, err_grads
            if not max(err_ys, err_grads) <= peers.RTOL:  # NaN fails too
                row[f"{name}_numerics_warning"] = (
                    f"{name} disagrees with rhn_np's reference: max|diff|/max|ref| = {err_ys:.2g} (ys), "
                    f"{err_grads:.2g} (gradients), tolerance {peers.RTOL:g}: not the same computation")
                print(f"WARNING: {row['size']}: {row[f'{name}_numerics_warning']}", file=sys.stderr, flush=True)
    except Exception as exc:  # report, never hide
        row[f"{name}_error"] = f"{type(exc).__name__}: {exc}"


def cpu_row(size, repeats, torch, peer_names=("eager",), jax=None, jax_reason=None, threads=1):
    """One size on the CPU: rhn_np's variants, the GEMM floor and the peers in ``peer_names``
    (``torch`` and ``jax``: the modules, or None; ``jax_reason``: why JAX is missing;
    ``threads``: the CPUs JAX may use, :func:`peers.confined`)."""
    params, xs, s0, dys = make_inputs(size)
    row = {"size": size, "device": "cpu", "gflop": gflop(*SIZES[size])}
    for label, impl, kernels in NUMPY_VARIANTS:
        if kernels == "compiled" and fast.compiled_status()[0] is None:
            row["numpy_compiled_skipped"] = fast.compiled_status()[1]
            continue
        previous = fast.set_cpu_kernels(kernels) if kernels else None
        try:
            step = rhn_step(params, xs, s0, dys, impl)
            row[f"numpy_{label}_ms"] = 1e3 * median_time(step, repeats)
            # The fast path reuses its window buffers (rhn_np.fast.buffers): dropped first,
            # so that the peak counts the window's whole memory, as for the reference.
            fast.buffers.release()
            with PeakRSS() as peak:
                step()
            row[f"numpy_{label}_peak_mb"] = peak.mb
        finally:
            if previous is not None:
                fast.set_cpu_kernels(previous)
    row["numpy_gemm_only_ms"] = 1e3 * median_time(gemm_only_step(params, xs, dys), repeats)
    tracemalloc.start()  # NumPy reports its allocations to tracemalloc: an exact count
    rhn_step(params, xs, s0, dys, "reference")()
    row["numpy_traced_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    ys, cache = rhn.forward(params, xs, s0, impl="reference")
    row["cache_mb"] = rhn.cache_nbytes(cache) / 2**20
    n_in, n, L, B, T = SIZES[size]
    row["cache_min_mb"] = 3 * L * T * B * n * 4 / 2**20  # s_in, h, t per micro-layer and step
    grads, _, _ = rhn.backward(params, cache, dys)
    reference = (ys, *rhn.fuse_params(grads))  # what every compiled peer must reproduce
    del cache
    if torch is None:
        for name, peer in (("torch_eager", "eager"), ("torch_compile", "compile")):
            if peer in peer_names:
                row[f"{name}_skipped"] = "PyTorch is not installed (pip install -e '.[bench]')"
    if torch is not None and "eager" in peer_names:
        step, _ = torch_eager_step(torch, params, xs, s0, dys, "cpu")
        row["torch_eager_ms"] = 1e3 * median_time(step, repeats)
        with PeakRSS() as peak:
            step()
        row["torch_eager_peak_mb"] = peak.mb
    if torch is not None and "compile" in peer_names:
        def build():
            torch._dynamo.reset()  # a fresh cache per size: no silent fallback to eager at its size limit
            W, R, b = torch_layer(torch, params, "cpu")
            X, S0, D = (torch.tensor(a) for a in (xs, s0, dys))
            return peers.torch_compile_step(torch, W, R, b, X, S0, D)

        before = peers.compile_cache_counts(torch)
        time_peer(row, "torch_compile", build, repeats, reference, "torch_compile_first_call_s")
        after = peers.compile_cache_counts(torch)  # hits: the first call loaded compiled code from disk
        row["torch_compile_caches"] = {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}
    if "jax" in peer_names:
        if jax is None:
            row["jax_jit_skipped"] = jax_reason or "jax not installed (pip install jax)"
        else:
            with peers.confined(threads):
                time_peer(row, "jax_jit", lambda: peers.jax_step(jax, *rhn.fuse_params(params), xs, s0, dys),
                          repeats, reference, "jax_first_call_s")
    for label, peer in CPU_RATIOS:  # < 1: rhn_np is faster
        if f"numpy_{label}_ms" in row and CPU_PEER_KEYS[peer] in row:
            row[f"ratio_{label}_vs_{peer}"] = row[f"numpy_{label}_ms"] / row[CPU_PEER_KEYS[peer]]
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
    ("size", "size", ""), ("NumPy reference", "numpy_reference_ms", " ms"),
    ("NumPy fast, ufuncs", "numpy_fast_ms", " ms"), ("NumPy compiled", "numpy_compiled_ms", " ms"),
    ("GEMMs only", "numpy_gemm_only_ms", " ms"), ("compiled / GEMMs", "ratio_compiled_vs_gemm_only", ""),
    ("PyTorch eager", "torch_eager_ms", " ms"), ("torch.compile", "torch_compile_ms", " ms"),
    ("JAX jit", "jax_jit_ms", " ms"), ("compiled / eager", "ratio_compiled_vs_torch", ""),
    ("compiled / torch.compile", "ratio_compiled_vs_torch_compile", ""), ("compiled / JAX", "ratio_compiled_vs_jax", ""),
    ("reference / PyTorch", "ratio_reference_vs_torch", ""), ("reference / GEMMs", "ratio_reference_vs_gemm_only", ""),
]
# Memory and the compiled peers' first calls, in a second CPU table (one table would not fit a page).
CPU_MORE_COLUMNS = [
    ("size", "size", ""), ("peak RSS, reference", "numpy_reference_peak_mb", " MiB"),
    ("peak RSS, ufuncs", "numpy_fast_peak_mb", " MiB"), ("peak RSS, compiled", "numpy_compiled_peak_mb", " MiB"),
    ("peak RSS, PyTorch", "torch_eager_peak_mb", " MiB"), ("peak RSS, torch.compile", "torch_compile_peak_mb", " MiB"),
    ("peak RSS, JAX", "jax_jit_peak_mb", " MiB"), ("cache", "cache_mb", " MiB"), ("minimum", "cache_min_mb", " MiB"),
    ("torch.compile 1st call", "torch_compile_first_call_s", " s"), ("JAX 1st call", "jax_first_call_s", " s"),
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
    """The trainer's full training step of one preset (see ``bench_lm.py``: ``bench``, ``bench_rolls``)."""
    try:
        bench = bench_lm.bench_rolls if preset in ROLL_PRESETS else bench_lm.bench
        row = bench(preset, backend_name, repeats, cuda_graphs=cuda_graphs)
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
        if rows and device == "cpu":
            out += ["", "Memory of one window, CPU, and the compiled peers' first calls (excluded above):", "",
                    markdown(CPU_MORE_COLUMNS, rows)]
    if lm:
        out += ["", "Full language-model training step (the trainer's, median):", "", markdown(LM_COLUMNS, lm)]
    for title, word in (("Errors", "error"), ("Warnings", "warning"), ("Skipped", "skipped")):
        lines = [f"{r.get('size') or r.get('preset')}: {k} = {v}"
                 for r in layer + lm for k, v in r.items() if word in k]
        if lines:
            out += ["", f"{title}:", *lines]
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
    ap.add_argument("--peers", default=",".join(peers.PEERS),
                    help=f"the CPU peers to time, comma-separated from {', '.join(peers.PEERS)} (PyTorch eager, "
                         "torch.compile of one step, JAX jit), or 'none'")
    ap.add_argument("--json", help="write the rows here as JSON")
    args = ap.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    for s in sizes:
        if s not in SIZES:
            ap.error(f"unknown size {s!r}; choose from {', '.join(SIZES)}")
    devices = [d for d in args.device.split(",") if d]
    if not devices or any(d not in ("cpu", "gpu") for d in devices):
        ap.error(f"--device must be cpu, gpu or cpu,gpu, got {args.device!r}")
    presets = ([LM_PRESET[s] for s in sizes if LM_PRESET[s]] if args.lm == "auto" else
               [] if args.lm == "none" else [p for p in args.lm.split(",") if p])
    timeable = [*bench_lm.VOCAB, *ROLL_PRESETS]
    for p in presets:
        if p not in timeable:
            ap.error(f"unknown preset {p!r} for --lm; choose from {', '.join(timeable)}, 'auto' or 'none'")
    peer_names = [] if args.peers == "none" else [p for p in args.peers.split(",") if p]
    for p in peer_names:
        if p not in peers.PEERS:
            ap.error(f"unknown peer {p!r} for --peers; choose from {', '.join(peers.PEERS)} or 'none'")
    threads = blas_threads()
    torch = None
    if "gpu" in devices or {"eager", "compile"} & set(peer_names):
        try:
            import torch

            torch.set_num_threads(threads)  # the same number of threads as NumPy's BLAS: a fair race
        except ImportError:
            print("PyTorch is not installed: no baseline (pip install -e '.[bench]')", file=sys.stderr)
    jax, jax_reason, jax_threads = None, None, None
    if "cpu" in devices and "jax" in peer_names:
        jax_threads = peers.xla_flags(threads)  # before JAX is imported
        with peers.confined(threads):  # XLA's threads, started here, stay on `threads` CPUs
            jax, jax_reason = peers.import_jax()
        if jax is None:
            print(f"JAX peer skipped: {jax_reason}", file=sys.stderr)
    meta = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "cpu_threads": threads, "date": time.strftime("%Y-%m-%d"),
            "torch": getattr(torch, "__version__", None), "jax": getattr(jax, "__version__", None), "peers": peer_names,
            "threads": {"blas": threads, "torch": torch.get_num_threads() if torch is not None else None,
                        "jax": jax_threads if jax is not None else None, "XLA_FLAGS": os.environ.get("XLA_FLAGS")}}
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
            if device == "cpu":
                layer.append(cpu_row(size, args.repeats, torch, peer_names, jax, jax_reason, threads))
                compiled, meta["compiled_status"] = fast.compiled_status()
                meta["compiled"] = compiled.report() if compiled is not None else None  # its first calls so far
                if meta["compiled"]:  # the cache folder without this machine's home directory
                    meta["compiled"]["cache_dir"] = meta["compiled"]["cache_dir"].replace(os.path.expanduser("~"), "~")
            else:
                layer.append(gpu_row(size, args.repeats, torch))
            save()
        lm_backend = "numpy" if device == "cpu" else "cupy"
        for preset in presets:
            for use_graphs in bench_lm.graph_settings(lm_backend):
                lm.append(lm_row(preset, lm_backend, args.lm_repeats, use_graphs))
                save()
    print(report(meta, layer, lm))


if __name__ == "__main__":
    main()
