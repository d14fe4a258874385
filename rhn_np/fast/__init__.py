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

On NumPy the gate kernels are in-place ufunc calls, so the loop and buffer logic of
this file is tested on every CPU too.
"""

from __future__ import annotations

from .. import backend as _backend
from .gates import CupyElementwiseGates, CupyRawGates, NumpyGates

__all__ = ["forward", "backward", "gate_kernels", "set_cuda_kernels", "CUDA_KERNEL_VARIANTS"]

CUDA_KERNEL_VARIANTS = ("raw", "elementwise")
_KERNELS: dict = {}
_cuda_variant = "raw"


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
        key, cls = ("numpy", bool(coupled)), NumpyGates
    else:
        key = ("cupy", _cuda_variant, bool(coupled))
        cls = CupyRawGates if _cuda_variant == "raw" else CupyElementwiseGates
    if key not in _KERNELS:
        _KERNELS[key] = cls(bool(coupled))
    return _KERNELS[key]


def forward(W, R, b, xs, s0, m_x, m_s, coupled):
    """Fast forward on fused weights; arguments already checked by :func:`rhn_np.rhn.forward`.

    Returns ``ys (T, B, n)`` and the gate arrays ``{"s_in", "h", "t", "c"}`` of shape
    (L, T, B, n) (``"c"`` None when coupled), the layout of the reference cache.
    """
    T, B, n_in = xs.shape
    depth, n, kn = R.shape
    dtype = xs.dtype
    xp = _backend.namespace(xs)
    k = gate_kernels(xs, coupled)
    dev = _backend.device_of(xs)

    x_in = xs if m_x is None else xs * m_x
    # Input projection of all T steps in one product; micro-layer 1's bias folded in.
    a_x = xp.reshape(k.matmul(xp.reshape(x_in, (T * B, n_in)), W), (T, B, kn)) + b[0, ...]  # (T, B, k·n)
    mask = xp.ones((B, n), dtype=dtype, device=dev) if m_s is None else k.contiguous(m_s)

    S = xp.empty((depth, T, B, n), dtype=dtype, device=dev)
    Hs = xp.empty((depth, T, B, n), dtype=dtype, device=dev)
    Ts = xp.empty((depth, T, B, n), dtype=dtype, device=dev)
    Cs = None if coupled else xp.empty((depth, T, B, n), dtype=dtype, device=dev)
    ys = xp.empty((T, B, n), dtype=dtype, device=dev)
    a = xp.empty((B, kn), dtype=dtype, device=dev)  # pre-activations of one micro-step
    s_tr = k.contiguous(s0 * mask)  # state seen by the transforms, (B, n)
    S[0, 0, ...] = s0
    step = k.forward_steps(a_x, R, b, S, Hs, Ts, Cs, ys, mask, s_tr, a)
    for t in range(T):
        for l in range(depth):
            step(t, l)  # one GEMM + one gate kernel: S[l, t] -> H, T, (C)[l, t] and the next state
    return ys, {"s_in": S, "h": Hs, "t": Ts, "c": Cs}


def backward(W, R, gates, xs, m_x, m_s, dys, ds_last, coupled):
    """Fast BPTT on fused weights; arguments already checked by :func:`rhn_np.rhn.backward`.

    ``gates``: the arrays :func:`forward` returned. Returns ``dW, dR, db`` (fused blocks),
    ``dxs (T, B, n_in)`` and ``ds0 (B, n)``.
    """
    T, B, n_in = xs.shape
    depth, n, kn = R.shape
    dtype = dys.dtype
    xp = _backend.namespace(dys)
    k = gate_kernels(dys, coupled)
    dev = _backend.device_of(dys)
    S, Hs, Ts, Cs = gates["s_in"], gates["h"], gates["t"], gates["c"]
    mask = xp.ones((B, n), dtype=dtype, device=dev) if m_s is None else k.contiguous(m_s)
    dys = k.contiguous(dys)
    dA = xp.empty((depth, T, B, kn), dtype=dtype, device=dev)
    # ∂L/∂s of a micro-layer's input = ds_carry + (∂L/∂a @ Rᵀ) ⊙ m_s: kept as its two parts,
    # summed inside the next kernel. Two carry buffers, so no kernel reads what it writes.
    carry = [xp.zeros((B, n), dtype=dtype, device=dev), xp.empty((B, n), dtype=dtype, device=dev)]
    if ds_last is not None:
        carry[0][...] = ds_last
    g = xp.zeros((B, n), dtype=dtype, device=dev)  # ∂L/∂a @ Rᵀ of the micro-layer above
    step, ds0 = k.backward_steps(R, S, Hs, Ts, Cs, dys, mask, dA, carry, g)
    del R  # the step function holds what it needs (NumPy: a copy laid out as Rᵀ; CuPy: R itself)
    for t in reversed(range(T)):
        for l in reversed(range(depth)):
            step(t, l)  # one gate kernel (-> dA[l, t]) + one GEMM (-> g)
    ds0 = ds0()

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
