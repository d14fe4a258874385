r"""The compiled CPU path: the fast path's loops over time steps and micro-layers in numba.

The CPU sibling of the fused CUDA kernels. On NumPy arrays, :mod:`rhn_np.fast` runs the
whole window here, in one compiled call: per micro-step one ``gemm`` of NumPy's own BLAS
(:mod:`rhn_np.fast.blas`, called directly, no Python in between) and one pass over the
units that applies the gate maths of :mod:`rhn_np.fast.gates` (``cpu_gates_fwd`` ...,
inlined, vectorised by LLVM). The input projection and the weight gradients stay large
NumPy products in :mod:`rhn_np.fast`. Per micro-step that is about 1 µs of work besides the
product, where the ufunc path spends about ten NumPy calls (2-3 µs each).

* **tanh**: float64 uses the C library's ``tanh`` (results equal the reference's to
  ~1e-15). float32 uses a rational approximation (Eigen's ``generic_fast_tanh_float``:
  odd degree-13 over even degree-6 polynomial, clamped at ±7.9053, ``tanh(x) = x`` below
  4e-4; NaN kept NaN), because LLVM vectorises it and cannot vectorise a call to
  ``tanhf``: 1.2 µs instead of 27 µs per 1,024 values. Measured over every float32 in
  [0, 10]: at most 7 ulp (4.2e-7) from the correctly rounded tanh, ≤ 5 ulp for all but
  337 values (``tests/test_compiled.py``). A float32 window then agrees with the float64
  truth to about 4e-5 of its scale (the float32 reference: 1.2e-5), and 200 training
  steps give the reference's loss curve to 1e-5.
* **Cache**: compiled code is kept on disk (numba's ``cache=True``) in
  ``$XDG_CACHE_HOME/rhn_np/numba/<key>`` (``~/.cache`` without it; under
  ``$NUMBA_CACHE_DIR`` when that is set), where ``<key>`` hashes this file, the gate file,
  numba's version and the BLAS ABI: a change to any of them compiles afresh. The first
  call of each loop in a process is timed (:func:`report`): the compile on a cold cache
  (seconds), the load from disk on a warm one.
* ``RHN_NUMBA=0`` in the environment turns the compiled path off (``impl="fast"`` then
  means the NumPy ufunc kernels, ``"auto"`` the reference).

Only :mod:`rhn_np.fast` imports this module, and only when it is asked for the compiled
path: ``import rhn_np`` never imports numba.
"""

from __future__ import annotations

import hashlib
import math
import os
import time

import numba
import numpy as np
from llvmlite import binding as _llvm
from numba import types
from numba.extending import overload

from . import blas, gates
from .gates import HALF, ONE, StepPlans

__all__ = ["GEMM", "REASON", "CACHE_DIR", "CompiledGates", "timed", "rhn_forward_loop", "rhn_backward_loop", "dt_forward_loop",
           "dt_backward_loop", "tanh_values", "gate_values", "warm_up", "report"]

GEMM, REASON = blas.find()
if GEMM is None:  # the caller (rhn_np.fast) reports REASON and does not offer the path
    raise ImportError(REASON)


def _cache_dir():
    here = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    for name in ("compiled.py", "gates.py"):
        with open(os.path.join(here, name), "rb") as fh:
            digest.update(fh.read())
    digest.update(f"{numba.__version__}|{GEMM.key}".encode())
    root = os.environ.get("NUMBA_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "rhn_np", "numba")
    return os.path.join(root, digest.hexdigest()[:16])


CACHE_DIR = _cache_dir()

# ----------------------------------------------------------------------------
# NumPy's gemm, callable from compiled code by name (so the code can be cached)
# ----------------------------------------------------------------------------
_llvm.add_symbol("rhn_np_sgemm", GEMM.sgemm)
_llvm.add_symbol("rhn_np_dgemm", GEMM.dgemm)
_I = types.int64 if GEMM.ilp64 else types.int32
_P = types.intp  # pointers are passed as addresses
_sgemm = types.ExternalFunction("rhn_np_sgemm", types.void(
    types.int32, types.int32, types.int32, _I, _I, _I, types.float32, _P, _I, _P, _I, types.float32, _P, _I))
_dgemm = types.ExternalFunction("rhn_np_dgemm", types.void(
    types.int32, types.int32, types.int32, _I, _I, _I, types.float64, _P, _I, _P, _I, types.float64, _P, _I))
_ROW, _N, _T = blas.ROW_MAJOR, blas.NO_TRANS, blas.TRANS

_OPTS = dict(nogil=True, error_model="numpy")  # numpy error model: no division checks, so loops vectorise
_JIT_CACHE = dict(cache=True, **_OPTS)


def _gemm(a, b, c, trans_b, beta):
    """``c = a @ b (or a @ bᵀ) + beta·c`` for C-contiguous 2-D float arrays (a (m, k))."""


@overload(_gemm, **_OPTS)
def _gemm_impl(a, b, c, trans_b, beta):
    fn = _sgemm if a.dtype == types.float32 else _dgemm
    real = np.float32 if a.dtype == types.float32 else np.float64

    def impl(a, b, c, trans_b, beta):
        m, k = a.shape
        n = c.shape[1]
        fn(_ROW, _N, _T if trans_b else _N, m, n, k, real(1.0), a.ctypes.data, k, b.ctypes.data, b.shape[1],
           real(beta), c.ctypes.data, n)

    return impl


# ----------------------------------------------------------------------------
# tanh for compiled code (see the module docstring)
# ----------------------------------------------------------------------------
_CLAMP = np.float32(7.90531110763549805)
_TINY = np.float32(0.0004)
_ALPHA = tuple(np.float32(v) for v in (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
                                       5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04,
                                       4.89352455891786e-03))
_BETA = tuple(np.float32(v) for v in (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
                                      4.89352518554385e-03))


@overload(gates.fast_tanh, **_OPTS)
def _fast_tanh_impl(x):
    if x == types.float32:
        a13, a11, a9, a7, a5, a3, a1 = _ALPHA
        b6, b4, b2, b0 = _BETA

        def tanh32(x):
            y = _CLAMP if x > _CLAMP else x  # comparisons false for NaN: NaN stays NaN
            y = -_CLAMP if y < -_CLAMP else y
            y2 = y * y
            p = ((((((a13 * y2 + a11) * y2 + a9) * y2 + a7) * y2 + a5) * y2 + a3) * y2 + a1) * y
            q = ((b6 * y2 + b4) * y2 + b2) * y2 + b0
            r = p / q
            if abs(x) < _TINY:  # tanh(x) = x to float32 precision; keeps tiny values exact
                r = x
            return r

        return tanh32
    return lambda x: math.tanh(x)


@overload(gates.cpu_sigmoid, inline="always", **_OPTS)
def _cpu_sigmoid_impl(x):
    return gates.cpu_sigmoid  # the plain function itself, compiled (its fast_tanh is the one above)


def _njit_inline(fn):
    return numba.njit(inline="always", **_OPTS)(fn)


_gates_fwd = _njit_inline(gates.cpu_gates_fwd)
_gates_fwd_c = _njit_inline(gates.cpu_gates_fwd_c)
_gates_bwd = _njit_inline(gates.cpu_gates_bwd)
_gates_bwd_c = _njit_inline(gates.cpu_gates_bwd_c)
_dt_fwd = _njit_inline(gates.cpu_dt_fwd)
_dt_bwd = _njit_inline(gates.cpu_dt_bwd)


@numba.njit(**_OPTS)
def tanh_values(x):
    """The compiled ``fast_tanh`` over a 1-D array (for its tests against ``numpy.tanh``)."""
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = gates.fast_tanh(x[i])
    return out


@numba.njit(**_OPTS)
def gate_values(a, s_in, ds, coupled):
    """The compiled gate functions over (B, k·n) pre-activations (for their tests)."""
    B, n = s_in.shape
    k = 2 if coupled else 3
    out = np.zeros((2 * k + 2, B, n), dtype=a.dtype)  # h, t, (c), s, daH, daT, (daC), carry
    for i in range(B):
        for j in range(n):
            if coupled:
                h, t, s = _gates_fwd(a[i, j], a[i, n + j], s_in[i, j])
                dh, dt, carry = _gates_bwd(ds[i, j], s_in[i, j], h, t)
                vals = (h, t, s, dh, dt, carry)
                for q in range(6):
                    out[q, i, j] = vals[q]
            else:
                h, t, c, s = _gates_fwd_c(a[i, j], a[i, n + j], a[i, 2 * n + j], s_in[i, j])
                dh, dt, dc, carry = _gates_bwd_c(ds[i, j], s_in[i, j], h, t, c)
                vals = (h, t, c, s, dh, dt, dc, carry)
                for q in range(8):
                    out[q, i, j] = vals[q]
    return out


# ----------------------------------------------------------------------------
# The RHN: the loops of rhn_np.fast.forward / backward (same buffers, same order)
# ----------------------------------------------------------------------------
def _jit(fn):
    """``numba.njit(cache=True)`` with the cache in :data:`CACHE_DIR` (numba reads the
    folder when a function is decorated; the global setting is put back at once)."""
    previous, numba.config.CACHE_DIR = numba.config.CACHE_DIR, CACHE_DIR
    try:
        return numba.njit(**_JIT_CACHE)(fn)
    finally:
        numba.config.CACHE_DIR = previous


@_jit
def rhn_forward_loop(a_x, R, b, S, Hs, Ts, Cs, ys, mask, s_tr, a, coupled):
    """All T·L micro-steps: ``a = s_tr @ R[l]`` (gemm), then the gate maths per unit.

    a_x (T, B, k·n) the input part with micro-layer 1's bias; R (L, n, k·n); b (L, k·n);
    writes S, Hs, Ts, (Cs) (L, T, B, n) and ys (T, B, n); s_tr (B, n) holds the masked
    state ``s0 ⊙ m_s`` on entry.
    """
    depth, T, B, n = S.shape
    for t in range(T):
        for l in range(depth):
            _gemm(s_tr, R[l], a, False, 0.0)
            s_in = S[l, t]
            s_out = ys[t] if l == depth - 1 else S[l + 1, t]
            for i in range(B):
                bias = a_x[t, i] if l == 0 else b[l]
                if coupled:
                    for j in range(n):
                        h, g, s = _gates_fwd(a[i, j] + bias[j], a[i, n + j] + bias[n + j], s_in[i, j])
                        Hs[l, t, i, j] = h
                        Ts[l, t, i, j] = g
                        s_out[i, j] = s
                        s_tr[i, j] = s * mask[i, j]
                else:
                    for j in range(n):
                        h, g, c, s = _gates_fwd_c(a[i, j] + bias[j], a[i, n + j] + bias[n + j],
                                                  a[i, 2 * n + j] + bias[2 * n + j], s_in[i, j])
                        Hs[l, t, i, j] = h
                        Ts[l, t, i, j] = g
                        Cs[l, t, i, j] = c
                        s_out[i, j] = s
                        s_tr[i, j] = s * mask[i, j]
        if t + 1 < T:
            S[0, t + 1] = ys[t]


@_jit
def rhn_backward_loop(R_t, S, Hs, Ts, Cs, dys, mask, dA, carry, g, coupled):
    """All micro-steps backwards: gate derivative per unit, then ``g = ∂L/∂a @ R[l]ᵀ`` (gemm).

    R_t (L, k·n, n) the recurrent weights transposed; carry (B, n) holds ``ds_last`` (or
    zeros) on entry; g (B, n) zeros. Writes dA (L, T, B, k·n); returns nothing, and
    leaves ∂L/∂s0 = carry + g ⊙ mask in ``carry``.
    """
    depth, T, B, n = S.shape
    for t in range(T - 1, -1, -1):
        for l in range(depth - 1, -1, -1):
            top = l == depth - 1
            s_in, h_, t_ = S[l, t], Hs[l, t], Ts[l, t]
            da = dA[l, t]
            for i in range(B):
                if coupled:
                    for j in range(n):
                        ds = carry[i, j] + g[i, j] * mask[i, j]
                        if top:
                            ds += dys[t, i, j]
                        dh, dt, c = _gates_bwd(ds, s_in[i, j], h_[i, j], t_[i, j])
                        da[i, j] = dh
                        da[i, n + j] = dt
                        carry[i, j] = c
                else:
                    for j in range(n):
                        ds = carry[i, j] + g[i, j] * mask[i, j]
                        if top:
                            ds += dys[t, i, j]
                        dh, dt, dc, c = _gates_bwd_c(ds, s_in[i, j], h_[i, j], t_[i, j], Cs[l, t, i, j])
                        da[i, j] = dh
                        da[i, n + j] = dt
                        da[i, 2 * n + j] = dc
                        carry[i, j] = c
            _gemm(da, R_t[l], g, False, 0.0)
    for i in range(B):
        for j in range(n):
            carry[i, j] += g[i, j] * mask[i, j]


class CompiledGates(StepPlans):
    """The fast path's plan on NumPy with the loops compiled: ``forward_loop`` /
    ``backward_loop`` run the whole window in one call of the functions above."""

    def __init__(self, coupled):
        self.coupled = coupled

    @staticmethod
    def matmul(a, b, out=None):
        return np.matmul(a, b, out=out)

    @staticmethod
    def contiguous(x):
        return np.ascontiguousarray(x)

    def forward_loop(self, a_x, R, b, S, Hs, Ts, Cs, ys, mask, s_tr, a):
        Cs_ = Hs[:0] if Cs is None else Cs  # a typed empty stand-in when coupled
        timed(rhn_forward_loop, a_x, np.ascontiguousarray(R), np.ascontiguousarray(b), S, Hs, Ts, Cs_, ys, mask,
               s_tr, a, self.coupled)

    def backward_loop(self, R, S, Hs, Ts, Cs, dys, mask, dA, carry, g):
        R_t = np.ascontiguousarray(np.swapaxes(R, 1, 2))
        Cs_ = Hs[:0] if Cs is None else Cs
        timed(rhn_backward_loop, R_t, S, Hs, Ts, Cs_, dys, mask, dA, carry[0], g, self.coupled)
        return carry[0]


# ----------------------------------------------------------------------------
# The DT-RNN and DT(S)-RNN (rhn_np.dtrnn's equations DT-1, DT-2)
# ----------------------------------------------------------------------------
@_jit
def dt_forward_loop(a_x, R, b, U, Z, S_prev, ys, s0, mask, s_tr, z_tr, a, shortcut):
    """All micro-steps of the DT(S)-RNN forward.

    a_x (T, B, n) input part with b[0]; R (L, n, n); b (L, n); U (n, n) (unused without
    the shortcut); writes Z (L, T, B, n), S_prev (T, B, n) and ys (T, B, n).
    """
    depth, T, B, n = Z.shape
    S_prev[0] = s0
    for t in range(T):
        s = S_prev[t]
        for i in range(B):
            for j in range(n):
                s_tr[i, j] = s[i, j] * mask[i, j]
        for l in range(depth):
            if l == depth - 1 and shortcut:
                _gemm(s_tr, U, a, False, 0.0)
                _gemm(s_tr if l == 0 else z_tr, R[l], a, False, 1.0)
            else:
                _gemm(s_tr if l == 0 else z_tr, R[l], a, False, 0.0)
            z = Z[l, t]
            for i in range(B):
                bias = a_x[t, i] if l == 0 else b[l]
                for j in range(n):
                    v = _dt_fwd(a[i, j] + bias[j])
                    z[i, j] = v
                    z_tr[i, j] = v * mask[i, j]
        ys[t] = Z[depth - 1, t]
        if t + 1 < T:
            S_prev[t + 1] = Z[depth - 1, t]


@_jit
def dt_backward_loop(R_t, U_t, Z, dys, mask, dA, ds, g, d_short, shortcut):
    """All micro-steps of the DT(S)-RNN backward; ``ds`` (B, n) holds ``ds_last`` (or
    zeros) on entry and ∂L/∂s0 on exit. Writes dA (L, T, B, n)."""
    depth, T, B, n = Z.shape
    for t in range(T - 1, -1, -1):
        for i in range(B):
            for j in range(n):
                g[i, j] = ds[i, j] + dys[t, i, j]  # ∂L/∂z_L
        for l in range(depth - 1, -1, -1):
            z, da = Z[l, t], dA[l, t]
            for i in range(B):
                for j in range(n):
                    da[i, j] = _dt_bwd(g[i, j], z[i, j])
            if l == depth - 1 and shortcut:
                _gemm(da, U_t, d_short, False, 0.0)
            _gemm(da, R_t[l], g, False, 0.0)
            for i in range(B):
                for j in range(n):
                    g[i, j] *= mask[i, j]
        for i in range(B):
            for j in range(n):
                ds[i, j] = g[i, j] + d_short[i, j] * mask[i, j] if shortcut else g[i, j]


# ----------------------------------------------------------------------------
# First-call timings
# ----------------------------------------------------------------------------
_FIRST_CALLS: dict = {}


def timed(fn, *args):
    """Call a compiled loop; the first call per loop and signature is timed (compile or cache load)."""
    key = (fn.__name__, str(args[0].dtype))
    if key in _FIRST_CALLS:
        return fn(*args)
    t0 = time.perf_counter()
    out = fn(*args)
    _FIRST_CALLS[key] = time.perf_counter() - t0
    return out


def warm_up() -> dict:
    """Compile (or load from the cache) every loop for float32 and float64 on a tiny
    window, and return :func:`report` with the time each took."""
    for dt in (np.float32, np.float64):
        T, B, n, L = 2, 1, 2, 2
        z = lambda *shape: np.zeros(shape, dt)  # noqa: E731
        S, H, Tg, C = z(L, T, B, n), z(L, T, B, n), z(L, T, B, n), z(L, T, B, n)
        timed(rhn_forward_loop, z(T, B, 2 * n), z(L, n, 2 * n), z(L, 2 * n), S, H, Tg, H[:0], z(T, B, n),
               z(B, n) + 1, z(B, n), z(B, 2 * n), True)
        timed(rhn_backward_loop, z(L, 2 * n, n), S, H, Tg, H[:0], z(T, B, n), z(B, n) + 1, z(L, T, B, 2 * n),
               z(B, n), z(B, n), True)
        timed(dt_forward_loop, z(T, B, n), z(L, n, n), z(L, n), z(n, n), z(L, T, B, n), z(T, B, n), z(T, B, n),
               z(B, n), z(B, n) + 1, z(B, n), z(B, n), z(B, n), True)
        timed(dt_backward_loop, z(L, n, n), z(n, n), z(L, T, B, n), z(T, B, n), z(B, n) + 1, z(L, T, B, n),
               z(B, n), z(B, n), z(B, n), True)
    return report()


def report() -> dict:
    """What the compiled path is and how long its first calls in this process took.

    ``first_call_s``: loop name and dtype -> seconds of the first call (compile on a cold
    cache, load on a warm one, plus one run); ``cache_hits`` / ``cache_misses`` per loop.
    """
    loops = {"rhn_forward_loop": rhn_forward_loop, "rhn_backward_loop": rhn_backward_loop,
             "dt_forward_loop": dt_forward_loop, "dt_backward_loop": dt_backward_loop}
    return {
        "numba": numba.__version__,
        "blas": REASON,
        "cache_dir": CACHE_DIR,
        "first_call_s": {f"{k[0]}[{k[1]}]": round(v, 3) for k, v in sorted(_FIRST_CALLS.items())},
        "cache_hits": {k: sum(f.stats.cache_hits.values()) for k, f in loops.items()},
        "cache_misses": {k: sum(f.stats.cache_misses.values()) for k, f in loops.items()},
    }
