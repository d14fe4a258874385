"""Compiled peers of the RHN layer on the CPU, for ``bench_layer.py``: torch.compile and JAX jit.

Both compute exactly the window of ``bench_layer.torch_loss`` (coupled gates fused into
one ``(n, 2n)`` product per micro-layer, float32, loss = sum(ys * D), so dL/dys = D):

* **torch.compile** (:func:`torch_compile_step`): compiling the whole unrolled T x L window
  takes over ten minutes at the benchmark's sizes, so one *time step* (its L micro-layers)
  is compiled, default mode, ``dynamic=False``; a Python loop over T calls it and autograd
  runs the compiled backward of every step. Its first window (Dynamo tracing, Inductor's
  C++ code generation and compile, forward and backward; a second trace for the steps whose
  state needs a gradient) is timed on its own, never in the median. Inductor caches
  compiled graphs on disk, so a first call takes about a minute when cold and seconds when
  warm (``bench_layer`` records the cache hits with it).
* **JAX jit** (:func:`jax_step`): fused arrays ``W (n_in, 2n)``, ``R (L, n, 2n)``,
  ``b (L, 2n)``, a ``lax.scan`` over the T steps whose body unrolls the L micro-layers,
  ``jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))``; the first call (trace and XLA
  compile) is timed on its own.

JAX is optional and in no extra (``pip install jax``). Threads: :func:`xla_flags` before
JAX is imported, and every JAX call inside :func:`confined` (see there).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import numpy as np

PEERS = ("eager", "compile", "jax")
# The largest acceptable max|peer - reference| / max|reference| over ys and every gradient
# (float32: both sides round differently, and BPTT over T x L micro-steps accumulates it).
RTOL = 1e-3
_SINGLE_THREAD_FLAG = "--xla_cpu_multi_thread_eigen=false"


def xla_flags(threads: int) -> str:
    """Prepare JAX to use ``threads`` CPU threads (before it is imported); returns what it
    will use, for the run's metadata. Run JAX only inside :func:`confined`.

    XLA's CPU client has no thread-count flag: it sizes its pool by the CPUs the process
    may run on, and ``--xla_cpu_multi_thread_eigen=false`` alone did not keep it on one core
    (jax 0.10, 2 cores: process time up to twice the wall time, run to run; the often quoted
    ``... intra_op_parallelism_threads=1`` suffix is no XLA flag and did not help). So every
    JAX call runs inside :func:`confined`: the calling thread's CPU affinity is ``threads``
    CPUs, and XLA's pool threads, created inside, inherit it for good (checked: process time
    = wall time at one thread). NumPy's and PyTorch's threads are left alone. For one thread
    the Eigen flag is set as well, so XLA does not split its work into tasks for one core.
    """
    if threads == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_cpu_multi_thread_eigen" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {_SINGLE_THREAD_FLAG}".strip()
    cpus = _cpus_for(threads)
    if cpus is None:
        print(f"note: no CPU affinity here: JAX (XLA) may use more than the {threads} thread(s) of NumPy's BLAS",
              file=sys.stderr)
        return f"{threads} asked, not enforced (no CPU affinity); XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}"
    return f"{len(cpus)} (its threads confined to CPUs {sorted(cpus)}); XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}"


def _cpus_for(threads):
    """The first ``threads`` CPUs this thread may run on, or None without affinity support."""
    try:
        return set(sorted(os.sched_getaffinity(0))[:max(1, threads)])
    except (AttributeError, OSError):
        return None


@contextlib.contextmanager
def confined(threads: int):
    """Run the block, and every thread it starts, on ``threads`` CPUs (see :func:`xla_flags`);
    the calling thread's affinity is restored afterwards (threads started inside keep theirs)."""
    cpus = _cpus_for(threads)
    if cpus is None:
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def import_jax():
    """``(jax, None)``, or ``(None, reason)`` when JAX cannot be imported or has no CPU."""
    try:
        import jax
        import jax.numpy  # noqa: F401
    except ImportError:
        return None, "jax not installed (pip install jax)"
    try:
        jax.devices("cpu")  # starts the CPU client (and its thread pool) now
    except Exception as exc:
        return None, f"JAX has no CPU backend: {type(exc).__name__}: {exc}"
    return jax, None


# ---------------------------------------------------------------- torch.compile, one step
def torch_compile_step(torch, W, R, b, X, S0, D, backend="inductor"):
    """``(step, run)``: ``step()`` one window's forward + backward on the leaves W, R[l], b[l]
    of ``bench_layer.torch_layer`` with the compiled time step; ``run()`` the same, returning
    ``(ys, dW, dR, db)`` as NumPy arrays for the numerical check. ``backend``: torch.compile's
    (the benchmark times the default, Inductor; the tests use ``"aot_eager"``, no C++ build)."""
    n = S0.shape[1]
    L = len(R)

    def one_step(s, ax_t, R, b):  # the L micro-layers of one time step: the maths of torch_loss
        for l in range(L):
            a = s @ R[l] + (ax_t if l == 0 else b[l])
            h = torch.tanh(a[:, :n])
            g = torch.sigmoid(a[:, n:])
            s = h * g + s * (1 - g)
        return s

    compiled = torch.compile(one_step, backend=backend, dynamic=False)
    leaves = [W, *R, *b]
    T, B, n_in = X.shape

    def forward():
        ax = (X.reshape(T * B, n_in) @ W).reshape(T, B, -1) + b[0]
        s, ys = S0, []
        for t in range(T):
            s = compiled(s, ax[t], R, b)
            ys.append(s)
        return torch.stack(ys)

    def step():
        for p in leaves:
            p.grad = None
        ys = forward()
        (ys * D).sum().backward()
        return ys

    def run():
        ys = step()
        grads = [p.grad.detach().numpy() for p in leaves]
        return ys.detach().numpy(), grads[0], np.stack(grads[1:1 + L]), np.stack(grads[1 + L:])

    return step, run


def compile_cache_counts(torch) -> dict:
    """PyTorch's compile-cache counters so far (``fxgraph_cache_hit``, ``autograd_cache_miss``
    ...): Inductor keeps compiled graphs on disk (``/tmp/torchinductor_<user>``), so a first
    call with hits only loads them and takes seconds where a cold one compiles for a minute."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return {}
    return {k: v for group in ("inductor", "aot_autograd") for k, v in counters[group].items() if "cache" in k}


# ---------------------------------------------------------------- JAX jit
def jax_step(jax, W, R, b, xs, s0, dys):
    """``(step, run)`` for fused NumPy arrays W (n_in, 2n), R (L, n, 2n), b (L, 2n): ``step()``
    one jitted ``value_and_grad`` of the window, finished (``block_until_ready``); ``run()``
    returns ``(ys, dW, dR, db)`` as NumPy arrays for the numerical check."""
    jnp, lax = jax.numpy, jax.lax
    cpu = jax.devices("cpu")[0]  # the CPU even where JAX also sees a GPU
    L, n = R.shape[0], R.shape[1]

    def outputs(W, R, b, X, S0):
        T, B, n_in = X.shape
        ax = (X.reshape(T * B, n_in) @ W).reshape(T, B, -1) + b[0]

        def body(s, ax_t):
            for l in range(L):  # unrolled inside the scan body
                a = s @ R[l] + (ax_t if l == 0 else b[l])
                h = jnp.tanh(a[:, :n])
                g = jax.nn.sigmoid(a[:, n:])
                s = h * g + s * (1 - g)
            return s, s

        return lax.scan(body, S0, ax)[1]

    def loss(W, R, b, X, S0, D):
        return jnp.sum(outputs(W, R, b, X, S0) * D)

    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    args = [jax.device_put(np.ascontiguousarray(a), cpu) for a in (W, R, b, xs, s0, dys)]

    def step():
        return jax.block_until_ready(value_and_grad(*args))

    def run():
        _, grads = step()
        ys = jax.jit(outputs)(*args[:5])
        return (np.asarray(ys), *(np.asarray(g) for g in grads))

    return step, run


# ---------------------------------------------------------------- numerical check
def max_errors(peer, reference):
    """max|peer - ref| / max|ref| of ``ys`` and of the worst of dW, dR, db: 4-tuples each."""
    rel = [float(np.max(np.abs(p - r)) / max(float(np.max(np.abs(r))), 1e-30)) for p, r in zip(peer, reference)]
    return rel[0], max(rel[1:])


def timed_first_call(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
