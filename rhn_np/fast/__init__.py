"""The fast path of the RHN layer: the same maths as :mod:`rhn_np.rhn`, fewer launches.

:mod:`rhn_np.rhn` is the readable reference and the truth; this package computes the
same forward and BPTT (tested against it) on the *fused* weights of
:func:`rhn_np.rhn.fuse_params` (``W (n_in, k·n)``, ``R (L, n, k·n)``, ``b (L, k·n)``,
gate blocks ``[H | T | (C)]``), with the launch count a GPU wants:

* per micro-step forward: **one GEMM** ``a = (s ⊙ m_s) @ R[ℓ]`` into a preallocated
  buffer and **one fused kernel** for all gate maths (bias, tanh, σ, Eq. 6, and the
  masked state for the next GEMM), writing h, t, s straight into the cache;
* per micro-step backward: **one fused kernel** (``ds = ds_carry + g ⊙ m_s (+ dy_t)``,
  ∂L/∂a of every gate, the next carry gradient) and **one GEMM** ``g = ∂L/∂a @ R[ℓ]ᵀ``;
* the input projection of all steps is one GEMM before the loop, and the weight
  gradients are one GEMM per micro-layer after it;
* no allocation inside the time loop, and no host synchronisation at all.

Files: this one holds the loops and picks the gate kernels (:func:`gate_kernels`);
:mod:`rhn_np.fast.gates` holds every non-reference copy of the gate maths side by side
(in-place NumPy, CUDA device functions, kernel bodies); :mod:`rhn_np.fast.cublas` the
ctypes cuBLAS binding. CUDA-graph capture of this path is :mod:`rhn_np.graphs`.

On NumPy, with numba installed (the ``cpu`` extra), the whole loop over time steps and
micro-layers is compiled (:mod:`rhn_np.fast.compiled`, :class:`CompiledGates`): one call
per window, NumPy's BLAS called from inside it. Without numba (or with ``RHN_NUMBA=0``,
or after ``set_cpu_kernels("numpy")``) the gate kernels are in-place ufunc calls
(:class:`NumpyGates`), so the loop and buffer logic of this file is tested on every CPU
too. The compiled path also runs the DT-RNN cells (:func:`dt_forward`, :func:`dt_backward`),
which have no CUDA kernels.

What ``impl`` means (:func:`resolve`): ``"reference"`` the readable code; ``"fast"`` this
package; ``"auto"`` this package where it removes real overhead, i.e. on CuPy (cells with
CUDA kernels) and on NumPy when the compiled path is available, and the reference
everywhere else (array-api-strict; NumPy without numba, where the ufunc kernels save
only a few per cent).
"""

from __future__ import annotations

import importlib
import os

import numpy as np

from .. import backend as _backend
from . import buffers
from .gates import CupyElementwiseGates, CupyRawGates, NumpyGates

__all__ = ["forward", "backward", "dt_forward", "dt_backward", "resolve", "gate_kernels", "set_cuda_kernels",
           "set_cpu_kernels", "uses_compiled", "compiled_status", "CUDA_KERNEL_VARIANTS", "CPU_KERNEL_VARIANTS"]

CUDA_KERNEL_VARIANTS = ("raw", "elementwise")
CPU_KERNEL_VARIANTS = ("compiled", "numpy")
_KERNELS: dict = {}
_cuda_variant = "raw"
_cpu_variant = "compiled"
_COMPILED: list = []  # [module or None, reason]: filled on first use


def compiled_status():
    """``(module, reason)``: :mod:`rhn_np.fast.compiled` when the compiled CPU path can run
    here (numba importable, NumPy's BLAS found, not turned off by ``RHN_NUMBA=0``), else
    ``None``; ``reason`` says which. Imports numba on the first call only."""
    if not _COMPILED:
        if os.environ.get("RHN_NUMBA", "").strip() == "0":
            _COMPILED[:] = [None, "turned off by RHN_NUMBA=0"]
        else:
            try:
                module = importlib.import_module(".compiled", __name__)
            except ImportError as err:  # no numba, or no BLAS that numba can call
                _COMPILED[:] = [None, f"not available: {err} (pip install 'rhn-np[cpu]' for numba)"]
            else:
                _COMPILED[:] = [module, f"numba {module.numba.__version__}, {module.REASON}"]
    return _COMPILED[0], _COMPILED[1]


def uses_compiled():
    """Whether ``impl="fast"`` on NumPy runs the compiled loops (available and chosen)."""
    return _cpu_variant == "compiled" and compiled_status()[0] is not None


def set_cpu_kernels(variant: str) -> str:
    """Choose the NumPy fast path: ``"compiled"`` (numba, the default where available) or
    ``"numpy"`` (in-place ufunc kernels). Returns the previous choice."""
    global _cpu_variant
    if variant not in CPU_KERNEL_VARIANTS:
        raise ValueError(f"CPU kernel variant must be one of {CPU_KERNEL_VARIANTS}, got {variant!r}")
    previous, _cpu_variant = _cpu_variant, variant
    return previous


def resolve(impl: str, xs, *, cuda: bool = True, numpy_gates: bool = True) -> str:
    """The implementation a cell's ``forward`` runs: ``"fast"`` or ``"reference"``.

    ``impl`` is checked already (:func:`rhn_np.checks.impl`). ``cuda``: the cell has CUDA
    kernels; ``numpy_gates``: it has the in-place NumPy kernels (the RHN does, the DT-RNN
    has only the compiled loop). "auto" -> "fast" on CuPy for cells with CUDA kernels and on
    NumPy when the compiled path runs, else "reference".
    """
    if impl == "reference":
        return impl
    kind = _backend.name_of(xs)
    if kind == "cupy":
        ok = cuda
    elif kind == "numpy":
        ok = uses_compiled() or (impl == "fast" and numpy_gates)
    else:
        ok = False
    if impl == "auto":
        return "fast" if ok else "reference"
    if ok:
        return "fast"
    if kind == "cupy":
        raise ValueError("this cell has no CUDA kernels: use impl='reference' (or 'auto')")
    if kind == "numpy":
        state = compiled_status()[1] if _cpu_variant == "compiled" else "switched off (set_cpu_kernels)"
        raise ValueError(f"this cell's fast path on NumPy is the compiled one, and it is {state}: "
                         "use impl='reference' (or 'auto')")
    raise ValueError("impl='fast' needs NumPy or CuPy arrays")


def set_cuda_kernels(variant: str) -> str:
    """Choose the CuPy fast path: ``"raw"`` (RawKernels + direct cuBLAS, the default) or
    ``"elementwise"`` (ElementwiseKernels + ``cupy.matmul``). Returns the previous choice."""
    global _cuda_variant
    if variant not in CUDA_KERNEL_VARIANTS:
        raise ValueError(f"CUDA kernel variant must be one of {CUDA_KERNEL_VARIANTS}, got {variant!r}")
    previous, _cuda_variant = _cuda_variant, variant
    return previous


def gate_kernels(x, coupled: bool):
    """The gate kernels for the library of array ``x`` (NumPy or CuPy), built once."""
    kind = _backend.name_of(x)
    if kind not in ("numpy", "cupy"):
        raise ValueError(f"the fast path needs NumPy or CuPy arrays, got {kind}")
    if kind == "numpy":
        if uses_compiled():
            key, cls = ("compiled", bool(coupled)), compiled_status()[0].CompiledGates
        else:
            key, cls = ("numpy", bool(coupled)), NumpyGates
    else:
        key = ("cupy", _cuda_variant, bool(coupled))
        cls = CupyRawGates if _cuda_variant == "raw" else CupyElementwiseGates
    if key not in _KERNELS:
        _KERNELS[key] = cls(bool(coupled))
    return _KERNELS[key]


def _empty(xp, shape, dtype, dev):
    """A window-sized buffer: reused on NumPy (:mod:`rhn_np.fast.buffers`), new on CuPy
    (whose memory pool already reuses device memory)."""
    if isinstance(dev, str) and dev == "cpu":  # NumPy (the fast path runs on NumPy and CuPy only)
        return buffers.empty(shape, dtype)
    return xp.empty(shape, dtype=dtype, device=dev)


def _window(x, coupled, m_s, B, n):
    """What the fast forward and backward of a window share: the namespace, the gate
    kernels, the device and the state mask (ones without dropout), for arrays like ``x``."""
    xp, dev = _backend.namespace(x), _backend.device_of(x)
    k = gate_kernels(x, coupled)
    mask = xp.ones((B, n), dtype=x.dtype, device=dev) if m_s is None else k.contiguous(m_s)
    return xp, k, dev, mask


def forward(W, R, b, xs, s0, m_x, m_s, coupled):
    """Fast forward on fused weights; arguments already checked by :func:`rhn_np.rhn.forward`.

    Returns ``ys (T, B, n)`` and the gate arrays ``{"s_in", "h", "t", "c"}`` of shape
    (L, T, B, n) (``"c"`` None when coupled), the layout of the reference cache.
    """
    T, B, n_in = xs.shape
    depth, n, kn = R.shape
    dtype = xs.dtype
    xp, k, dev, mask = _window(xs, coupled, m_s, B, n)

    x_in = xs if m_x is None else xs * m_x
    # Input projection of all T steps in one product; micro-layer 1's bias folded in.
    a_x = xp.reshape(k.matmul(xp.reshape(x_in, (T * B, n_in)), W), (T, B, kn)) + b[0, ...]  # (T, B, k·n)

    S = _empty(xp, (depth, T, B, n), dtype, dev)
    Hs = _empty(xp, (depth, T, B, n), dtype, dev)
    Ts = _empty(xp, (depth, T, B, n), dtype, dev)
    Cs = None if coupled else _empty(xp, (depth, T, B, n), dtype, dev)
    ys = _empty(xp, (T, B, n), dtype, dev)
    a = xp.empty((B, kn), dtype=dtype, device=dev)  # pre-activations of one micro-step
    s_tr = k.contiguous(s0 * mask)  # state seen by the transforms, (B, n)
    S[0, 0, ...] = s0
    # per micro-step one GEMM + one gate kernel: S[l, t] -> H, T, (C)[l, t] and the next state
    k.forward_loop(a_x, R, b, S, Hs, Ts, Cs, ys, mask, s_tr, a)
    return ys, {"s_in": S, "h": Hs, "t": Ts, "c": Cs}


def backward(W, R, gates, xs, m_x, m_s, dys, ds_last, coupled):
    """Fast BPTT on fused weights; arguments already checked by :func:`rhn_np.rhn.backward`.

    ``gates``: the arrays :func:`forward` returned. Returns ``dW, dR, db`` (fused blocks),
    ``dxs (T, B, n_in)`` and ``ds0 (B, n)``.
    """
    T, B, n_in = xs.shape
    depth, n, kn = R.shape
    dtype = dys.dtype
    xp, k, dev, mask = _window(dys, coupled, m_s, B, n)
    S, Hs, Ts, Cs = gates["s_in"], gates["h"], gates["t"], gates["c"]
    dys = k.contiguous(dys)
    dA = _empty(xp, (depth, T, B, kn), dtype, dev)
    # ∂L/∂s of a micro-layer's input = ds_carry + (∂L/∂a @ Rᵀ) ⊙ m_s: kept as its two parts,
    # summed inside the next kernel. Two carry buffers, so no kernel reads what it writes.
    carry = [xp.zeros((B, n), dtype=dtype, device=dev), xp.empty((B, n), dtype=dtype, device=dev)]
    if ds_last is not None:
        carry[0][...] = ds_last
    g = xp.zeros((B, n), dtype=dtype, device=dev)  # ∂L/∂a @ Rᵀ of the micro-layer above
    # per micro-step one gate kernel (-> dA[l, t]) + one GEMM (-> g)
    ds0 = k.backward_loop(R, S, Hs, Ts, Cs, dys, mask, dA, carry, g)

    dR = xp.empty((depth, n, kn), dtype=dtype, device=dev)
    for l in range(depth):
        s_tr = S[l, ...] if m_s is None else S[l, ...] * m_s
        k.matmul(xp.reshape(s_tr, (T * B, n)).T, xp.reshape(dA[l, ...], (T * B, kn)), out=dR[l, ...])
    db = xp.sum(xp.reshape(dA, (depth, T * B, kn)), axis=1)
    dA1 = xp.reshape(dA[0, ...], (T * B, kn))
    x_in = xs if m_x is None else xs * m_x
    dW = k.matmul(xp.reshape(x_in, (T * B, n_in)).T, dA1)
    dxs = xp.reshape(k.matmul(dA1, W.T), (T, B, n_in))
    if m_x is not None:
        dxs = dxs * m_x
    return dW, dR, db, dxs, ds0


def dt_forward(W, R, b, U, xs, s0, m_x, m_s):
    """Compiled DT(S)-RNN forward (NumPy, :func:`uses_compiled` true); arguments checked by
    :func:`rhn_np.dtrnn.forward`. Returns ``ys (T, B, n)``, ``Z (L, T, B, n)`` and
    ``S_prev (T, B, n)``, the reference cache's arrays."""
    mod = compiled_status()[0]
    T, B, n_in = xs.shape
    depth, n, _ = R.shape
    dtype = xs.dtype
    x_in = xs if m_x is None else xs * m_x
    a_x = (np.reshape(x_in, (T * B, n_in)) @ W).reshape(T, B, n) + b[0]  # input part of (DT-1)
    mask = np.ones((B, n), dtype=dtype) if m_s is None else np.ascontiguousarray(m_s)
    Z = buffers.empty((depth, T, B, n), dtype)
    S_prev = buffers.empty((T, B, n), dtype)
    ys = buffers.empty((T, B, n), dtype)
    U_ = np.empty((n, n), dtype=dtype) if U is None else np.ascontiguousarray(U)
    work = [np.empty((B, n), dtype=dtype) for _ in range(3)]  # s_tr, z_tr, a
    mod.timed(mod.dt_forward_loop, a_x, np.ascontiguousarray(R), np.ascontiguousarray(b), U_, Z, S_prev, ys,
               np.ascontiguousarray(s0), mask, *work, U is not None)
    return ys, Z, S_prev


def dt_backward(R, U, Z, dys, m_s, ds_last):
    """Compiled DT(S)-RNN backward through the micro-steps: returns ``dA (L, T, B, n)``
    and ``ds0 (B, n)``; the weight gradients are the caller's large products."""
    mod = compiled_status()[0]
    depth, T, B, n = Z.shape
    dtype = Z.dtype
    mask = np.ones((B, n), dtype=dtype) if m_s is None else np.ascontiguousarray(m_s)
    R_t = np.ascontiguousarray(np.swapaxes(R, 1, 2))
    U_t = np.empty((n, n), dtype=dtype) if U is None else np.ascontiguousarray(U.T)
    dA = buffers.empty((depth, T, B, n), dtype)
    ds = np.zeros((B, n), dtype=dtype) if ds_last is None else np.array(ds_last, dtype=dtype, order="C")
    g, d_short = np.empty((B, n), dtype=dtype), np.zeros((B, n), dtype=dtype)
    mod.timed(mod.dt_backward_loop, R_t, U_t, Z, np.ascontiguousarray(dys), mask, dA, ds, g, d_short, U is not None)
    return dA, ds
