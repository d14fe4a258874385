r"""Every non-reference copy of the RHN gate maths (Eqs. 6-9 and their derivative), side by side.

The reference is :func:`rhn_np.rhn.micro_forward` / :func:`rhn_np.rhn.micro_backward`;
each copy here computes the same formulas for the fast path (:mod:`rhn_np.fast`) and is
tested against the reference (``tests/test_rhn.py`` and ``tests/test_backends.py`` on every CPU,
``tests/test_cuda_emulated.py`` compiles the CUDA source for the host, ``tests/test_gpu.py``
on a GPU):

* :class:`NumpyGates` — in-place NumPy ufunc calls into preallocated buffers;
* :func:`cpu_gates_fwd`, :func:`cpu_gates_bwd` (and ``_c`` uncoupled, :func:`cpu_dt_fwd`,
  :func:`cpu_dt_bwd` for the DT-RNN) — scalar functions that :mod:`rhn_np.fast.compiled`
  compiles with numba into its loops (the compiled CPU path, the CPU sibling of the CUDA
  kernels below);
* :data:`CUDA_GATES` — the same formulas as CUDA device functions, written once and
  called by both CuPy variants:
  :class:`CupyElementwiseGates` (``cupy.ElementwiseKernel`` bodies :data:`CUDA_FORWARD`,
  :data:`CUDA_BACKWARD`, Chainer's LSTM style) and :class:`CupyRawGates` (the
  ``RawKernel`` s of :data:`RAW_SOURCE`, GEMMs straight through cuBLAS,
  :mod:`rhn_np.fast.cublas`).

Each class is a *plan* (:class:`StepPlans`): ``forward_steps(...)`` returns ``step(t, l)``,
one GEMM and one gate kernel per micro-step; ``backward_steps(...)`` returns
``(step(t, l), ds0())``, one gate kernel and one GEMM per micro-step.

The gate kernels reach CuPy through :func:`rhn_np.backend.cupy_module` (the one module
that imports it).
"""

from __future__ import annotations

import numpy as np

from .. import backend as _backend
from .cublas import Cublas

__all__ = ["StepPlans", "NumpyGates", "fast_tanh", "cpu_sigmoid", "cpu_gates_fwd", "cpu_gates_fwd_c",
           "cpu_gates_bwd", "cpu_gates_bwd_c", "cpu_dt_fwd", "cpu_dt_bwd", "CUDA_GATES", "CUDA_FORWARD", "CUDA_BACKWARD", "RAW_SOURCE",
           "CupyElementwiseGates", "CupyRawGates"]


class StepPlans:
    """The micro-step bodies of the fast path, on views of the preallocated buffers.

    ``forward_steps(...)`` returns ``step(t, l)``: one GEMM ``a = s_tr @ R[l]`` and one
    gate kernel writing h, t, (c) and the new state into the cache. ``backward_steps``
    returns ``(step(t, l), ds0())``: one gate kernel and one GEMM ``g = ∂L/∂a @ R[l]ᵀ``.
    Subclasses provide ``matmul``, ``forward`` and ``backward`` (the gate kernels).
    """

    def forward_steps(self, a_x, R, b, S, Hs, Ts, Cs, ys, mask, s_tr, a):
        depth, T = S.shape[0], S.shape[1]

        def step(t, l):
            self.matmul(s_tr, R[l, ...], out=a)
            bias = a_x[t, ...] if l == 0 else b[l, ...]
            s_out = ys[t, ...] if l == depth - 1 else S[l + 1, t, ...]
            self.forward(a, bias, S[l, t, ...], mask, Hs[l, t, ...], Ts[l, t, ...],
                         None if Cs is None else Cs[l, t, ...], s_out, s_tr)
            if l == depth - 1 and t + 1 < T:
                S[0, t + 1, ...] = s_out  # the next step starts from this state

        return step

    def forward_loop(self, a_x, R, b, S, Hs, Ts, Cs, ys, mask, s_tr, a):
        """Every micro-step of the window, in order (Python loop over :meth:`forward_steps`)."""
        step = self.forward_steps(a_x, R, b, S, Hs, Ts, Cs, ys, mask, s_tr, a)
        for t in range(S.shape[1]):
            for l in range(S.shape[0]):
                step(t, l)

    def backward_loop(self, R, S, Hs, Ts, Cs, dys, mask, dA, carry, g):
        """Every micro-step backwards (Python loop over :meth:`backward_steps`); returns ∂L/∂s0."""
        step, ds0 = self.backward_steps(R, S, Hs, Ts, Cs, dys, mask, dA, carry, g)
        del R  # the step function holds what it needs (NumPy: a copy laid out as Rᵀ; CuPy: R itself)
        for t in reversed(range(S.shape[1])):
            for l in reversed(range(S.shape[0])):
                step(t, l)
        return ds0()

    def backward_steps(self, R, S, Hs, Ts, Cs, dys, mask, dA, carry, g):
        depth = S.shape[0]
        cur = [0]  # which carry buffer holds the current carry gradient

        def step(t, l):
            c = cur[0]
            extra = dys[t, ...] if l == depth - 1 else None
            self.backward(carry[c], g, mask, extra, S[l, t, ...], Hs[l, t, ...], Ts[l, t, ...],
                          None if Cs is None else Cs[l, t, ...], dA[l, t, ...], carry[1 - c])
            cur[0] = 1 - c
            self.matmul(dA[l, t, ...], R[l, ...].T, out=g)

        def ds0():
            return carry[cur[0]] + g * mask

        return step, ds0


class NumpyGates(StepPlans):
    """In-place NumPy ufunc calls into preallocated buffers (no temporaries)."""

    def __init__(self, coupled):
        self.coupled = coupled

    @staticmethod
    def matmul(a, b, out=None):
        return np.matmul(a, b, out=out)

    def backward_steps(self, R, *buffers):
        # The same R, stored so that each R[l].T is C-contiguous: OpenBLAS multiplies by
        # it about 10 % faster than by a transposed view (backward, small size).
        R_t = np.ascontiguousarray(np.swapaxes(R, 1, 2))
        return super().backward_steps(np.swapaxes(R_t, 1, 2), *buffers)

    @staticmethod
    def contiguous(x):
        return np.ascontiguousarray(x)

    @staticmethod
    def _sigmoid(a, out):
        np.multiply(a, 0.5, out=out)  # σ(a) = (1 + tanh(a/2)) / 2
        np.tanh(out, out=out)
        out += 1.0
        out *= 0.5

    def forward(self, a, bias, s_in, mask, h, t, c, s_out, s_tr):
        """a += bias; h = tanh(a_H); t = σ(a_T); (c = σ(a_C)); s_out = h t + s_in c; s_tr = s_out ⊙ mask."""
        n = s_in.shape[-1]
        np.add(a, bias, out=a)
        np.tanh(a[:, :n], out=h)
        self._sigmoid(a[:, n : 2 * n], t)
        if self.coupled:  # s = h t + s_in (1 - t) = s_in + t (h - s_in)
            np.subtract(h, s_in, out=s_out)
            s_out *= t
            s_out += s_in
        else:
            self._sigmoid(a[:, 2 * n :], c)
            np.multiply(s_in, c, out=s_tr)
            np.multiply(h, t, out=s_out)
            s_out += s_tr
        np.multiply(s_out, mask, out=s_tr)

    def backward(self, carry_in, g, mask, extra, s_in, h, t, c, da, carry_out):
        """ds = carry_in + g ⊙ mask (+ extra); da = ∂L/∂[a_H | a_T | (a_C)]; carry_out = ds ⊙ c."""
        n = s_in.shape[-1]
        ds = carry_in  # reused in place: its old value is not needed again
        g *= mask
        ds += g
        if extra is not None:
            ds += extra
        da_H, da_T = da[:, :n], da[:, n : 2 * n]
        np.multiply(h, h, out=da_H)
        np.subtract(1.0, da_H, out=da_H)
        da_H *= t
        da_H *= ds
        np.subtract(1.0, t, out=carry_out)  # 1 - t
        if self.coupled:
            np.subtract(h, s_in, out=da_T)
        else:
            np.copyto(da_T, h)
        da_T *= ds
        da_T *= t
        da_T *= carry_out
        if self.coupled:
            carry_out *= ds
        else:
            da_C = da[:, 2 * n :]
            np.subtract(1.0, c, out=da_C)
            da_C *= c
            da_C *= s_in
            da_C *= ds
            np.multiply(ds, c, out=carry_out)


# The gate maths of one micro-layer for the CPU, as scalar functions: the compiled path
# (rhn_np.fast.compiled) compiles them with numba, inlined in its loops over units. They
# are plain Python here (this file never imports numba). ``fast_tanh`` is tanh: numba
# gets its own implementation of it from rhn_np.fast.compiled (float32: a vectorisable
# rational form, float64: the C library's). HALF and ONE are float32 so that float32
# maths stays float32 under numba; both are exact in float64 too.
HALF, ONE = np.float32(0.5), np.float32(1.0)


def fast_tanh(x):
    """tanh(x); compiled code uses the implementation of :mod:`rhn_np.fast.compiled`."""
    return np.tanh(x)


def cpu_sigmoid(x):
    """σ(x) = (1 + tanh(x/2)) / 2, as :func:`rhn_np.rhn.sigmoid`."""
    return HALF * (ONE + fast_tanh(HALF * x))


def cpu_gates_fwd(aH, aT, s_in):
    """Coupled (c = 1 - t): returns h, t, s."""
    h = fast_tanh(aH)  # Eq. 7
    t = cpu_sigmoid(aT)  # Eq. 8
    return h, t, h * t + s_in * (ONE - t)  # Eq. 6 with Eq. 9 coupled


def cpu_gates_fwd_c(aH, aT, aC, s_in):
    """Uncoupled: returns h, t, c, s."""
    h = fast_tanh(aH)  # Eq. 7
    t = cpu_sigmoid(aT)  # Eq. 8
    c = cpu_sigmoid(aC)  # Eq. 9
    return h, t, c, h * t + s_in * c  # Eq. 6


def cpu_gates_bwd(ds, s_in, h, t):
    """Coupled: returns ∂L/∂a_H, ∂L/∂a_T and the carry part of ∂L/∂s_in."""
    return ds * t * (ONE - h * h), ds * (h - s_in) * t * (ONE - t), ds * (ONE - t)


def cpu_gates_bwd_c(ds, s_in, h, t, c):
    """Uncoupled: returns ∂L/∂a_H, ∂L/∂a_T, ∂L/∂a_C and the carry part of ∂L/∂s_in."""
    return ds * t * (ONE - h * h), ds * h * t * (ONE - t), ds * s_in * c * (ONE - c), ds * c


def cpu_dt_fwd(a):
    """DT-RNN micro-layer (DT-2): z = tanh(a)."""
    return fast_tanh(a)


def cpu_dt_bwd(dz, z):
    """DT-RNN: ∂L/∂a = ∂L/∂z ⊙ (1 - z²) from the stored z."""
    return dz * (ONE - z * z)


# The gate maths of one micro-layer in CUDA, written once: device functions that both
# CuPy variants below call (the ElementwiseKernels and the RawKernels). The formulas are
# those of rhn.micro_forward / rhn.micro_backward, and are tested against them.
#: The gate maths of one micro-layer as CUDA device functions (both CuPy variants call them).
CUDA_GATES = r"""
template <typename T> __device__ __forceinline__ T rhn_sigmoid(T x) {
    return (T)0.5 * ((T)1 + tanh((T)0.5 * x));          // sigma, no overflow
}
template <typename T> __device__ __forceinline__ void rhn_gates_fwd(
        T aH, T aT, T s_in, T& h, T& t, T& s) {          // coupled: c = 1 - t (Eq. 9)
    h = tanh(aH);                                        // Eq. 7
    t = rhn_sigmoid(aT);                                 // Eq. 8
    s = h * t + s_in * ((T)1 - t);                       // Eq. 6
}
template <typename T> __device__ __forceinline__ void rhn_gates_fwd(
        T aH, T aT, T aC, T s_in, T& h, T& t, T& c, T& s) {
    h = tanh(aH);                                        // Eq. 7
    t = rhn_sigmoid(aT);                                 // Eq. 8
    c = rhn_sigmoid(aC);                                 // Eq. 9
    s = h * t + s_in * c;                                // Eq. 6
}
template <typename T> __device__ __forceinline__ void rhn_gates_bwd(
        T ds, T s_in, T h, T t, T& daH, T& daT, T& carry) {       // coupled
    daH = ds * t * ((T)1 - h * h);
    daT = ds * (h - s_in) * t * ((T)1 - t);
    carry = ds * ((T)1 - t);
}
template <typename T> __device__ __forceinline__ void rhn_gates_bwd(
        T ds, T s_in, T h, T t, T c, T& daH, T& daT, T& daC, T& carry) {
    daH = ds * t * ((T)1 - h * h);
    daT = ds * h * t * ((T)1 - t);
    daC = ds * s_in * c * ((T)1 - c);
    carry = ds * c;
}
"""

#: ElementwiseKernel bodies of the forward gate kernel (coupled: True, uncoupled: False).
CUDA_FORWARD = {  # index, then the shared gate maths
    True: """
    const int b = i / n, j = i % n;
    const T* ab = &a[b * kn]; const T* bb = &bias[b * bias_stride];
    T s;
    rhn_gates_fwd<T>(ab[j] + bb[j], ab[n + j] + bb[n + j], s_in, h, t, s);
    s_out = s; s_tr = s * mask;
    """,
    False: """
    const int b = i / n, j = i % n;
    const T* ab = &a[b * kn]; const T* bb = &bias[b * bias_stride];
    T s;
    rhn_gates_fwd<T>(ab[j] + bb[j], ab[n + j] + bb[n + j], ab[2 * n + j] + bb[2 * n + j], s_in, h, t, c, s);
    s_out = s; s_tr = s * mask;
    """,
}

#: ElementwiseKernel bodies of the backward gate kernel (coupled: True, uncoupled: False).
CUDA_BACKWARD = {
    True: """
    const int b = i / n, j = i % n;
    T* db = &da[b * kn];
    rhn_gates_bwd<T>(carry_in + g * mask + extra, s_in, h, t, db[j], db[n + j], carry_out);
    """,
    False: """
    const int b = i / n, j = i % n;
    T* db = &da[b * kn];
    rhn_gates_bwd<T>(carry_in + g * mask + extra, s_in, h, t, c, db[j], db[n + j], db[2 * n + j], carry_out);
    """,
}


class CupyElementwiseGates(StepPlans):
    """Fused CUDA ElementwiseKernels (compiled once per gate layout and dtype)."""

    def __init__(self, coupled):
        cp = _backend.cupy_module()
        self.cp = cp
        self.coupled = coupled
        c_in = "" if coupled else ", T c"
        c_out = "" if coupled else ", T c"
        tag = "coupled" if coupled else "uncoupled"
        self._fwd = cp.ElementwiseKernel(
            "raw T a, raw T bias, T s_in, T mask, int32 n, int32 kn, int32 bias_stride",
            f"T h, T t{c_out}, T s_out, T s_tr",
            CUDA_FORWARD[coupled],
            f"rhn_gates_forward_{tag}",
            preamble=CUDA_GATES,
        )
        self._bwd = cp.ElementwiseKernel(
            f"T carry_in, T g, T mask, T extra, T s_in, T h, T t{c_in}, int32 n, int32 kn",
            "raw T da, T carry_out",
            CUDA_BACKWARD[coupled],
            f"rhn_gates_backward_{tag}",
            preamble=CUDA_GATES,
        )
        self._zeros = {}

    def matmul(self, a, b, out=None):
        return self.cp.matmul(a, b, out=out)

    def contiguous(self, x):
        return self.cp.ascontiguousarray(x)

    def forward(self, a, bias, s_in, mask, h, t, c, s_out, s_tr):
        n, kn = s_in.shape[-1], a.shape[-1]
        stride = kn if bias.ndim == 2 else 0
        if self.coupled:
            self._fwd(a, bias, s_in, mask, n, kn, stride, h, t, s_out, s_tr)
        else:
            self._fwd(a, bias, s_in, mask, n, kn, stride, h, t, c, s_out, s_tr)

    def backward(self, carry_in, g, mask, extra, s_in, h, t, c, da, carry_out):
        n, kn = s_in.shape[-1], da.shape[-1]
        if extra is None:
            key = (s_in.shape, s_in.dtype)
            if key not in self._zeros:
                self._zeros[key] = self.cp.zeros(s_in.shape, s_in.dtype)
            extra = self._zeros[key]
        if self.coupled:
            self._bwd(carry_in, g, mask, extra, s_in, h, t, n, kn, da, carry_out)
        else:
            self._bwd(carry_in, g, mask, extra, s_in, h, t, c, n, kn, da, carry_out)


# A lower-overhead CuPy variant: the same gate maths as hand-launched RawKernels and
# cuBLAS GEMMs called directly (cupy.matmul costs tens of microseconds of Python per
# call; at the paper's batch sizes the step is bound by launches, not arithmetic).
#: The RawKernels of :class:`CupyRawGates` (compiled after :data:`CUDA_GATES` and a typedef of T).
RAW_SOURCE = r"""
extern "C" __global__ void fwd_coupled(const T* a, const T* bias, int bias_stride, const T* s_in,
        const T* mask, T* h, T* t, T* s_out, T* s_out2, T* s_tr, int size, int n, int kn) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= size) return;
    const int b = i / n, j = i % n;
    const T* ab = &a[b * kn]; const T* bb = &bias[b * bias_stride];
    T hh, tt, s;
    rhn_gates_fwd<T>(ab[j] + bb[j], ab[n + j] + bb[n + j], s_in[i], hh, tt, s);
    h[i] = hh; t[i] = tt; s_out[i] = s; s_tr[i] = s * mask[i];
    if (s_out2) s_out2[i] = s;
}
extern "C" __global__ void fwd_uncoupled(const T* a, const T* bias, int bias_stride, const T* s_in,
        const T* mask, T* h, T* t, T* c, T* s_out, T* s_out2, T* s_tr, int size, int n, int kn) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= size) return;
    const int b = i / n, j = i % n;
    const T* ab = &a[b * kn]; const T* bb = &bias[b * bias_stride];
    T hh, tt, cc, s;
    rhn_gates_fwd<T>(ab[j] + bb[j], ab[n + j] + bb[n + j], ab[2 * n + j] + bb[2 * n + j], s_in[i], hh, tt, cc, s);
    h[i] = hh; t[i] = tt; c[i] = cc; s_out[i] = s; s_tr[i] = s * mask[i];
    if (s_out2) s_out2[i] = s;
}
extern "C" __global__ void bwd_coupled(const T* carry_in, const T* g, const T* mask, const T* extra,
        const T* s_in, const T* h, const T* t, T* da, T* carry_out, int size, int n, int kn) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= size) return;
    const int b = i / n, j = i % n;
    const T ds = carry_in[i] + g[i] * mask[i] + (extra ? extra[i] : (T)0);
    T* db = &da[b * kn];
    rhn_gates_bwd<T>(ds, s_in[i], h[i], t[i], db[j], db[n + j], carry_out[i]);
}
extern "C" __global__ void bwd_uncoupled(const T* carry_in, const T* g, const T* mask, const T* extra,
        const T* s_in, const T* h, const T* t, const T* c, T* da, T* carry_out, int size, int n, int kn) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= size) return;
    const int b = i / n, j = i % n;
    const T ds = carry_in[i] + g[i] * mask[i] + (extra ? extra[i] : (T)0);
    T* db = &da[b * kn];
    rhn_gates_bwd<T>(ds, s_in[i], h[i], t[i], c[i], db[j], db[n + j], db[2 * n + j], carry_out[i]);
}
"""


class CupyRawGates(StepPlans):
    """Gate maths as RawKernels on contiguous buffers, GEMMs straight through cuBLAS."""

    BLOCK = 256

    def __init__(self, coupled):
        cp = _backend.cupy_module()
        self.cp, self.coupled = cp, coupled
        self.blas = Cublas(cp)
        cublas, get_handle = _backend.cupy_blas()
        self._cublas, self._cupy_handle = cublas, get_handle
        self._cupy_gemm = {np.dtype(np.float32): cublas.sgemm, np.dtype(np.float64): cublas.dgemm}
        tag = "coupled" if coupled else "uncoupled"
        self._fn = {}
        for ctype, dt in (("float", np.float32), ("double", np.float64)):
            mod = cp.RawModule(code=CUDA_GATES + f"typedef {ctype} T;\n" + RAW_SOURCE, options=("--std=c++11",))
            self._fn[np.dtype(dt)] = (mod.get_function(f"fwd_{tag}"), mod.get_function(f"bwd_{tag}"))

    def _gemm_setup(self, dtype):
        """A GEMM function of ``dtype``, its handle and host pointers to 1 and 0, on the current
        stream: CuPy's Cython binding (the cheapest call) unless the stream is being
        captured into a CUDA graph, where only the ctypes one is allowed."""
        dtype = np.dtype(dtype)
        one, zero = self.blas.one_zero[dtype]
        stream = self.cp.cuda.get_current_stream()
        if stream.is_capturing():
            self.blas.use_stream(stream.ptr)
            return self.blas.handle, self.blas.gemm[dtype], one, zero
        handle = self._cupy_handle()  # CuPy binds it to the current stream
        self._cublas.setPointerMode(handle, self._cublas.CUBLAS_POINTER_MODE_HOST)
        return handle, self._cupy_gemm[dtype], one, zero

    def matmul(self, a, b, out=None):
        """out = a @ b (2-D, C- or F-contiguous operands, C-contiguous out) by one cuBLAS call."""
        cp = self.cp
        M, K = a.shape
        N = b.shape[1]
        if out is None:
            out = cp.empty((M, N), dtype=a.dtype)
        ok = out.flags.c_contiguous and a.dtype == b.dtype == out.dtype and out.dtype in self.blas.gemm
        if not ok or not (a.flags.c_contiguous or a.flags.f_contiguous) or not (b.flags.c_contiguous or b.flags.f_contiguous):
            return cp.matmul(a, b, out=out)
        if M == 0 or N == 0:
            return out
        if K == 0:
            out.fill(0)
            return out
        # Row-major out (M, N) is column-major out.T (N, M) = b.T @ a.T.
        opb, ldb = (Cublas.OP_N, max(N, 1)) if b.flags.c_contiguous else (Cublas.OP_T, max(K, 1))
        opa, lda = (Cublas.OP_N, max(K, 1)) if a.flags.c_contiguous else (Cublas.OP_T, max(M, 1))
        handle, gemm, one, zero = self._gemm_setup(out.dtype)
        status = gemm(handle, opb, opa, N, M, K, one, b.data.ptr, ldb, a.data.ptr, lda, zero, out.data.ptr, max(N, 1))
        if status:
            raise RuntimeError(f"cuBLAS gemm failed with status {status}")
        return out

    def contiguous(self, x):
        return self.cp.ascontiguousarray(x)

    # The plans below replace the view-based ones of StepPlans: creating a CuPy view
    # costs microseconds of Python, so every address is computed as an integer from the
    # buffers' base pointers, and each micro-step is exactly one cuBLAS call and one
    # kernel launch.
    def forward_steps(self, a_x, R, b, S, Hs, Ts, Cs, ys, mask, s_tr, a):
        depth, T, B, n = S.shape
        kn, isz = a.shape[1], a.itemsize
        fwd, _ = self._fn[a.dtype]
        handle, gemm, one, zero = self._gemm_setup(a.dtype)
        op_n = Cublas.OP_N
        state = B * n * isz  # bytes of one (B, n) state
        pS, pH, pT, pys = S.data.ptr, Hs.data.ptr, Ts.data.ptr, ys.data.ptr
        pC = None if Cs is None else Cs.data.ptr
        pR, pb, pax, pa, ps_tr, pm = R.data.ptr, b.data.ptr, a_x.data.ptr, a.data.ptr, s_tr.data.ptr, mask.data.ptr
        grid, block = ((B * n + self.BLOCK - 1) // self.BLOCK,), (self.BLOCK,)
        tail = (np.int32(B * n), np.int32(n), np.int32(kn))
        null, kn32, zero32 = np.uintp(0), np.int32(kn), np.int32(0)

        def step(t, l):
            # a (B, kn) = s_tr (B, n) @ R[l] (n, kn); column-major: aᵀ = R[l]ᵀ s_trᵀ
            if gemm(handle, op_n, op_n, kn, B, n, one, pR + l * n * kn * isz, kn, ps_tr, n, zero, pa, kn):
                raise RuntimeError("cuBLAS gemm failed in the forward micro-step")
            if l == 0:
                bias, stride = np.uintp(pax + t * B * kn * isz), kn32
            else:
                bias, stride = np.uintp(pb + l * kn * isz), zero32
            off = (l * T + t) * state  # S[l, t], H[l, t], ...
            if l == depth - 1:  # the step's output goes to ys[t] and to S[0, t + 1]
                s_out = np.uintp(pys + t * state)
                s_out2 = np.uintp(pS + (t + 1) * state) if t + 1 < T else null
            else:
                s_out, s_out2 = np.uintp(pS + off + T * state), null
            gates = (np.uintp(pH + off), np.uintp(pT + off)) + (() if pC is None else (np.uintp(pC + off),))
            fwd(grid, block, (np.uintp(pa), bias, stride, np.uintp(pS + off), np.uintp(pm)) + gates
                + (s_out, s_out2, np.uintp(ps_tr)) + tail)

        step.buffers = (a_x, R, b, S, Hs, Ts, Cs, ys, mask, s_tr, a)  # the addresses above stay valid
        return step

    def backward_steps(self, R, S, Hs, Ts, Cs, dys, mask, dA, carry, g):
        depth, T, B, n = S.shape
        kn, isz = dA.shape[-1], dA.itemsize
        _, bwd = self._fn[dA.dtype]
        handle, gemm, one, zero = self._gemm_setup(dA.dtype)
        op_n, op_t = Cublas.OP_N, Cublas.OP_T
        state = B * n * isz
        pS, pH, pT, pdy = S.data.ptr, Hs.data.ptr, Ts.data.ptr, dys.data.ptr
        pC = None if Cs is None else Cs.data.ptr
        pR, pdA, pg, pm = R.data.ptr, dA.data.ptr, g.data.ptr, mask.data.ptr
        pcarry = (np.uintp(carry[0].data.ptr), np.uintp(carry[1].data.ptr))
        grid, block = ((B * n + self.BLOCK - 1) // self.BLOCK,), (self.BLOCK,)
        tail = (np.int32(B * n), np.int32(n), np.int32(kn))
        null = np.uintp(0)
        cur = [0]  # which carry buffer holds the current carry gradient

        def step(t, l):
            c = cur[0]
            off = (l * T + t) * state
            pda = pdA + (l * T + t) * B * kn * isz
            extra = np.uintp(pdy + t * state) if l == depth - 1 else null
            gates = (np.uintp(pH + off), np.uintp(pT + off)) + (() if pC is None else (np.uintp(pC + off),))
            bwd(grid, block, (pcarry[c], np.uintp(pg), np.uintp(pm), extra, np.uintp(pS + off)) + gates
                + (np.uintp(pda), pcarry[1 - c]) + tail)
            cur[0] = 1 - c
            # g (B, n) = da (B, kn) @ R[l]ᵀ; column-major: gᵀ = R[l] daᵀ with R[l] stored as R[l]ᵀ
            if gemm(handle, op_t, op_n, n, B, kn, one, pR + l * n * kn * isz, kn, pda, kn, zero, pg, n):
                raise RuntimeError("cuBLAS gemm failed in the backward micro-step")

        def ds0():
            return carry[cur[0]] + g * mask

        # The step works on raw addresses: it must own the arrays behind them (the caller
        # may drop its R while the loop runs).
        step.buffers = (R, S, Hs, Ts, Cs, dys, mask, dA, carry, g)
        return step, ds0
