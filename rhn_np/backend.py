"""Array backends: the one place that knows NumPy from CuPy.

The maths of rhn_np (``rhn.py``, ``lm.py``, ``optim.py``) is written against the
Python Array API standard: every function takes its namespace ``xp`` from its
arguments (:func:`namespace`) and creates new arrays on the device of its inputs.
This module is the only one that imports CuPy (guarded), and it owns

* choosing a backend by name (``"numpy"``, ``"cupy"``, ``"auto"``, and, for tests,
  ``"array_api_strict"``: NumPy behind a strict namespace on a fake non-CPU device);
* every host <-> device crossing: :func:`to_device` and :func:`to_host`;
* random numbers, which are always drawn on the host (NumPy ``Generator``) so that
  weights and dropout masks are identical on every backend;
* the few operations that differ between libraries: :func:`scatter_add_rows`
  (embedding gradients) and the fused CuPy kernels of the fast path (:func:`gate_kernels`).

Example
-------
>>> from rhn_np import backend
>>> be = backend.get("numpy")
>>> x = be.to_device([[1.0, 2.0]], dtype="float32")
>>> backend.to_host(x).dtype
dtype('float32')
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from typing import Any

import numpy as np
import array_api_compat

__all__ = [
    "Backend",
    "get",
    "available",
    "cupy_available",
    "namespace",
    "name_of",
    "to_device",
    "to_host",
    "float_dtype_name",
    "to_dtype",
    "host_rng",
    "scatter_add_rows",
    "is_cupy",
    "device_of",
    "of",
    "gate_kernels",
    "set_cuda_kernels",
    "describe",
]

BACKEND_NAMES = ("numpy", "cupy", "array_api_strict")
DTYPES = ("float32", "float64")

_cupy = None
_cupy_error: str | None = None


def _import_cupy():
    """Import CuPy once; remember why it failed (no package, no GPU, no driver)."""
    global _cupy, _cupy_error
    if _cupy is not None or _cupy_error is not None:
        return _cupy
    try:
        cp = importlib.import_module("cupy")
        if cp.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("CuPy sees no CUDA device")
        _cupy = cp
    except Exception as exc:  # ImportError, CUDARuntimeError, ...
        _cupy_error = f"{type(exc).__name__}: {exc}"
    return _cupy


def cupy_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    return _import_cupy() is not None


def cupy_unavailable_reason() -> str | None:
    """Why CuPy cannot be used here, or None when it can."""
    _import_cupy()
    return _cupy_error


def available() -> list[str]:
    """Names of the backends usable on this machine (``array_api_strict`` only if installed)."""
    names = ["numpy"]
    if cupy_available():
        names.append("cupy")
    if importlib.util.find_spec("array_api_strict") is not None:
        names.append("array_api_strict")
    return names


@dataclasses.dataclass(frozen=True)
class Backend:
    """A chosen array library and device.

    Attributes
    ----------
    name : str
        ``"numpy"``, ``"cupy"`` or ``"array_api_strict"``.
    xp : module
        The Array API namespace of the library.
    device : object
        The device new arrays are created on (``"cpu"``, a CuPy device, or the
        strict library's fake ``Device("device1")``).
    """

    name: str
    xp: Any
    device: Any

    def to_device(self, x, dtype=None):
        """Host data (NumPy array, list, scalar) -> array of this backend. The named crossing."""
        return to_device(x, self, dtype=dtype)

    def zeros(self, shape, dtype="float32"):
        return self.xp.zeros(shape, dtype=to_dtype(self.xp, dtype), device=self.device)

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"Backend({self.name!r}, device={self.device!r})"


def get(name: str | Backend = "numpy") -> Backend:
    """Resolve a backend by name.

    Parameters
    ----------
    name : {"numpy", "cupy", "auto", "array_api_strict"} or Backend
        ``"auto"`` picks CuPy when a GPU is usable, else NumPy.
    """
    if isinstance(name, Backend):
        return name
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string such as 'numpy' or 'cupy', got {type(name).__name__}")
    key = name.lower().replace("-", "_")
    if key == "auto":
        key = "cupy" if cupy_available() else "numpy"
    if key == "numpy":
        return Backend("numpy", array_api_compat.array_namespace(np.empty(0)), "cpu")
    if key == "cupy":
        cp = _import_cupy()
        if cp is None:
            raise RuntimeError(
                f"backend='cupy' is not usable here ({_cupy_error}). On a machine with an NVIDIA GPU, "
                "install the GPU extra for its CUDA major version (in the project folder: "
                "pip install -e '.[gpu-cuda12]' or -e '.[gpu-cuda13]'), or use the numpy backend "
                "(rhn-np: --backend numpy)."
            )
        return Backend("cupy", array_api_compat.array_namespace(cp.empty(0)), cp.cuda.Device())
    if key == "array_api_strict":
        try:
            import array_api_strict as strict
        except ImportError as exc:  # pragma: no cover - only in test envs without the extra
            raise RuntimeError("backend='array_api_strict' needs the test extra: pip install -e '.[test]'") from exc
        return Backend("array_api_strict", strict, strict.Device("device1"))
    raise ValueError(f"unknown backend {name!r}; expected one of 'numpy', 'cupy', 'auto', 'array_api_strict'")


def namespace(*arrays):
    """The Array API namespace shared by ``arrays`` (None entries are ignored).

    Raises a TypeError that says so when arrays from two libraries are mixed, e.g. a
    NumPy ``xs`` with CuPy ``params``: move them with :func:`to_device` first.
    """
    arrays = [a for a in arrays if a is not None]
    try:
        return array_api_compat.array_namespace(*arrays)
    except TypeError as exc:
        kinds = sorted({name_of(a) for a in arrays})
        others = sorted({type(a).__name__ for a in arrays
                         if not array_api_compat.is_array_api_obj(a) and not isinstance(a, (bool, int, float, complex))})
        if others:
            raise TypeError(f"expected arrays, got {', '.join(others)}: make an array first with numpy.asarray(x) "
                            "(or rhn_np.backend.to_device(x, backend) for a GPU)") from exc
        raise TypeError(
            f"arrays from different backends were mixed ({', '.join(kinds)}); move them to one "
            f"backend with rhn_np.backend.to_device(x, backend) first"
        ) from exc


def name_of(x) -> str:
    """Backend name of an array: 'numpy', 'cupy', 'array_api_strict' (or its type name)."""
    mod = type(x).__module__.split(".")[0]
    return {"numpy": "numpy", "cupy": "cupy", "array_api_strict": "array_api_strict"}.get(mod, type(x).__name__)


def device_of(x):
    """The device an array lives on (for creating new arrays next to it)."""
    return array_api_compat.device(x)


def of(x) -> Backend:
    """The backend and device array ``x`` lives on (to put new data next to it)."""
    return Backend(name_of(x), namespace(x), device_of(x))


def is_cupy(x) -> bool:
    return name_of(x) == "cupy"


def address(x) -> int:
    """Address of an array's first byte (device memory for CuPy, host memory for NumPy):
    whether two arrays are the same memory, e.g. the parameters a CUDA graph reads."""
    return x.__array_interface__["data"][0] if isinstance(x, np.ndarray) else x.data.ptr


def float_dtype_name(dtype) -> str:
    """``'float32'`` or ``'float64'`` for a floating dtype given by name (``'float32'``,
    ``'f8'``) or as a dtype of any backend (``numpy.float64``, ``params["W_H"].dtype``,
    ``array_api_strict.float32``); any other dtype is a ValueError."""
    try:
        name = None if dtype is None else _host_dtype(dtype).name  # NumPy reads None as float64
    except TypeError:
        name = None
    if name not in DTYPES:
        raise ValueError(f"dtype must be float32 or float64 (a name such as 'float32', or a dtype such as "
                         f"numpy.float32), got {dtype!r}")
    return name


def to_dtype(xp, dtype):
    """A float32/float64 dtype given by name or as any backend's dtype -> ``xp``'s dtype object."""
    return getattr(xp, float_dtype_name(dtype))


def to_device(x, backend: str | Backend = "numpy", dtype=None):
    """Copy host data to ``backend`` (the only host -> device crossing of the package).

    ``x`` may be a NumPy array, a nested list or a scalar; ``dtype`` (a name such as
    'float32', or the dtype of an array of any backend, e.g. ``params["W_H"].dtype``)
    casts on the host first. The result is always a new array, on NumPy too, so
    in-place updates never reach the caller's data.
    """
    be = get(backend)
    host = to_host(x) if name_of(x) in ("cupy", "array_api_strict") else np.asarray(x)
    if dtype is not None:
        host = host.astype(_host_dtype(dtype), copy=False)
    if be.name == "numpy":
        return np.array(host, copy=True)
    if be.name == "cupy":
        cp = _import_cupy()
        if be.device is None:
            return cp.asarray(host)
        with be.device:  # the backend's GPU, not merely the current one
            return cp.asarray(host)
    return be.xp.asarray(host, device=be.device)


def _host_dtype(dtype):
    """NumPy's dtype for a dtype name or a dtype of any backend (array-api-strict's are
    not NumPy dtypes: ``array_api_strict.float64`` -> ``float64``)."""
    try:
        return np.dtype(dtype)
    except TypeError:
        return np.dtype(str(dtype).rsplit(".", 1)[-1])


def to_host(x) -> np.ndarray:
    """Copy an array of any backend to a NumPy array (the only device -> host crossing)."""
    kind = name_of(x)
    if kind == "numpy":
        return x
    if kind == "cupy":
        return x.get()
    if kind == "array_api_strict":
        import array_api_strict as strict

        return np.asarray(x.to_device(strict.Device("CPU_DEVICE")))
    return np.asarray(x)


def host_rng(seed) -> np.random.Generator:
    """The host random generator every random draw of the package uses (PCG64)."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def scatter_add_rows(target, indices, values):
    """``target[indices[k]] += values[k]`` for every k, repeated indices accumulating.

    target (V, d), indices (N,) integer, values (N, d); returns the updated target
    (in place on NumPy and CuPy). This is the embedding-gradient operation, which the
    Array API standard lacks; on other libraries it is a one-hot product.
    """
    kind = name_of(target)
    if kind == "numpy":
        np.add.at(target, indices, values)
        return target
    if kind == "cupy":
        _import_cupy().add.at(target, indices, values)
        return target
    xp = namespace(target, values)
    vocab = target.shape[0]
    onehot = xp.astype(indices[:, None] == xp.arange(vocab, device=target.device)[None, :], values.dtype)
    return target + onehot.T @ values


def describe() -> dict:
    """Facts for ``rhn-np info``: versions and usable devices of each backend."""
    info = {"numpy": np.__version__, "backends": available()}
    cp = _import_cupy()
    if cp is not None:
        dev = cp.cuda.Device()
        props = cp.cuda.runtime.getDeviceProperties(dev.id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        info.update(
            cupy=cp.__version__,
            cuda_runtime=cp.cuda.runtime.runtimeGetVersion(),
            cuda_driver=cp.cuda.runtime.driverGetVersion(),
            gpu=f"{name} (device {dev.id}, {props['totalGlobalMem'] / 2**30:.1f} GiB)",
            gpu_count=cp.cuda.runtime.getDeviceCount(),
        )
    else:
        info["cupy_unavailable"] = _cupy_error
    return info


# ----------------------------------------------------------------------------
# Gate kernels of the fast path (rhn_np.fast): one call for all gate maths of a
# micro-step forward, one for its backward. The formulas are those of
# rhn.micro_forward / rhn.micro_backward (the reference), and are tested against them.
# ----------------------------------------------------------------------------
class _StepPlans:
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


class _NumpyGateKernels(_StepPlans):
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


# The gate maths of one micro-layer in CUDA, written once: device functions that both
# CuPy variants below call (the ElementwiseKernels and the RawKernels). The formulas are
# those of rhn.micro_forward / rhn.micro_backward, and are tested against them.
_CUDA_GATES = r"""
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

_CUDA_FORWARD = {  # ElementwiseKernel bodies: index, then the shared gate maths
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

_CUDA_BACKWARD = {
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


class _CupyGateKernels(_StepPlans):
    """Fused CUDA ElementwiseKernels (compiled once per gate layout and dtype)."""

    def __init__(self, coupled):
        cp = _import_cupy()
        self.cp = cp
        self.coupled = coupled
        c_in = "" if coupled else ", T c"
        c_out = "" if coupled else ", T c"
        tag = "coupled" if coupled else "uncoupled"
        self._fwd = cp.ElementwiseKernel(
            "raw T a, raw T bias, T s_in, T mask, int32 n, int32 kn, int32 bias_stride",
            f"T h, T t{c_out}, T s_out, T s_tr",
            _CUDA_FORWARD[coupled],
            f"rhn_gates_forward_{tag}",
            preamble=_CUDA_GATES,
        )
        self._bwd = cp.ElementwiseKernel(
            f"T carry_in, T g, T mask, T extra, T s_in, T h, T t{c_in}, int32 n, int32 kn",
            "raw T da, T carry_out",
            _CUDA_BACKWARD[coupled],
            f"rhn_gates_backward_{tag}",
            preamble=_CUDA_GATES,
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
_RAW_SOURCE = r"""
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


class _Cublas:
    """cuBLAS through ctypes, with a handle and a workspace of our own.

    CuPy's cuBLAS bindings refuse to run while a stream is being captured into a CUDA
    graph; cuBLAS itself supports capture once it has a workspace it need not allocate.
    The library is the one CuPy already loaded (found in the process's memory map).
    """

    OP_N, OP_T = 0, 1
    WORKSPACE_BYTES = 32 * 2**20

    def __init__(self, cp):
        import ctypes

        cp.cuda.device.get_cublas_handle()  # makes CuPy load libcublas
        path = None
        with open("/proc/self/maps") as fh:
            for line in fh:
                name = line.split()[-1]
                if "libcublas.so" in name and "libcublasLt" not in name:
                    path = name
                    break
        if path is None:
            raise RuntimeError("libcublas is not loaded in this process; CuPy's cuBLAS could not be found")
        lib = ctypes.CDLL(path)
        vp, i32 = ctypes.c_void_p, ctypes.c_int
        for name in ("cublasSgemm_v2", "cublasDgemm_v2"):
            fn = getattr(lib, name)
            fn.argtypes = [vp, i32, i32, i32, i32, i32, vp, vp, i32, vp, i32, vp, vp, i32]
            fn.restype = i32
        lib.cublasCreate_v2.argtypes = [ctypes.POINTER(vp)]
        lib.cublasSetStream_v2.argtypes = [vp, vp]
        lib.cublasSetWorkspace_v2.argtypes = [vp, vp, ctypes.c_size_t]
        lib.cublasSetPointerMode_v2.argtypes = [vp, i32]
        handle = vp()
        self._check(lib.cublasCreate_v2(ctypes.byref(handle)), "cublasCreate")
        self.handle = handle.value
        # A plain device allocation, not from the current memory pool: this object is cached
        # for the process, and may first be built inside a CapturedLayer's private pool.
        self.workspace = cp.cuda.Memory(self.WORKSPACE_BYTES)
        self.lib = lib
        self._set_workspace()
        self._check(lib.cublasSetPointerMode_v2(self.handle, 0), "cublasSetPointerMode")  # host scalars
        self.gemm = {np.dtype(np.float32): lib.cublasSgemm_v2, np.dtype(np.float64): lib.cublasDgemm_v2}
        self.scalars = {dt: (np.ones((), dt), np.zeros((), dt)) for dt in self.gemm}
        self.one_zero = {dt: (one.ctypes.data, zero.ctypes.data) for dt, (one, zero) in self.scalars.items()}

    @staticmethod
    def _check(status, what):
        if status != 0:
            raise RuntimeError(f"{what} failed with cuBLAS status {status}")

    def _set_workspace(self):
        self._check(self.lib.cublasSetWorkspace_v2(self.handle, self.workspace.ptr, self.WORKSPACE_BYTES),
                    "cublasSetWorkspace")

    def use_stream(self, stream_ptr):
        """Issue the following GEMMs on this stream (the caller's current one)."""
        self._check(self.lib.cublasSetStream_v2(self.handle, stream_ptr), "cublasSetStream")
        self._set_workspace()  # cublasSetStream resets the workspace to cuBLAS's default pool


class _CupyRawKernels(_StepPlans):
    """Gate maths as RawKernels on contiguous buffers, GEMMs straight through cuBLAS."""

    BLOCK = 256

    def __init__(self, coupled):
        cp = _import_cupy()
        self.cp, self.coupled = cp, coupled
        self.blas = _Cublas(cp)
        from cupy.cuda import device as cuda_device
        from cupy_backends.cuda.libs import cublas

        self._cublas, self._cupy_handle = cublas, cuda_device.get_cublas_handle
        self._cupy_gemm = {np.dtype(np.float32): cublas.sgemm, np.dtype(np.float64): cublas.dgemm}
        tag = "coupled" if coupled else "uncoupled"
        self._fn = {}
        for ctype, dt in (("float", np.float32), ("double", np.float64)):
            mod = cp.RawModule(code=_CUDA_GATES + f"typedef {ctype} T;\n" + _RAW_SOURCE, options=("--std=c++11",))
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
        opb, ldb = (_Cublas.OP_N, max(N, 1)) if b.flags.c_contiguous else (_Cublas.OP_T, max(K, 1))
        opa, lda = (_Cublas.OP_N, max(K, 1)) if a.flags.c_contiguous else (_Cublas.OP_T, max(M, 1))
        handle, gemm, one, zero = self._gemm_setup(out.dtype)
        status = gemm(handle, opb, opa, N, M, K, one, b.data.ptr, ldb, a.data.ptr, lda, zero, out.data.ptr, max(N, 1))
        if status:
            raise RuntimeError(f"cuBLAS gemm failed with status {status}")
        return out

    def contiguous(self, x):
        return self.cp.ascontiguousarray(x)

    # The plans below replace the view-based ones of _StepPlans: creating a CuPy view
    # costs microseconds of Python, so every address is computed as an integer from the
    # buffers' base pointers, and each micro-step is exactly one cuBLAS call and one
    # kernel launch.
    def forward_steps(self, a_x, R, b, S, Hs, Ts, Cs, ys, mask, s_tr, a):
        depth, T, B, n = S.shape
        kn, isz = a.shape[1], a.itemsize
        fwd, _ = self._fn[a.dtype]
        handle, gemm, one, zero = self._gemm_setup(a.dtype)
        op_n = _Cublas.OP_N
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
        op_n, op_t = _Cublas.OP_N, _Cublas.OP_T
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


_KERNELS: dict = {}
CUDA_KERNEL_VARIANTS = ("raw", "elementwise")
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
    """The fast path's gate kernels for the library of array ``x`` (NumPy or CuPy)."""
    kind = name_of(x)
    if kind not in ("numpy", "cupy"):
        raise ValueError(f"the fast path needs NumPy or CuPy arrays, got {kind}")
    if kind == "numpy":
        key, cls = ("numpy", bool(coupled)), _NumpyGateKernels
    else:
        key = ("cupy", _cuda_variant, bool(coupled))
        cls = _CupyRawKernels if _cuda_variant == "raw" else _CupyGateKernels
    if key not in _KERNELS:
        _KERNELS[key] = cls(bool(coupled))
    return _KERNELS[key]


# ----------------------------------------------------------------------------
# CUDA graphs: capture a forward or a BPTT once, replay it (rhn_np.fast.CapturedLayer)
# ----------------------------------------------------------------------------
class CapturedGraph:
    """A CUDA graph, the outputs its capture produced, and the private memory pool that
    holds every buffer it touches (so no later allocation can reuse that memory)."""

    def __init__(self, graph, outputs, pool, stream):
        self.graph, self.outputs, self._pool, self._stream = graph, outputs, pool, stream

    def pool_bytes(self) -> int:
        """Bytes held by the graph's private memory pool (every buffer it touches)."""
        return self._pool.total_bytes()

    def launch(self):
        """Replay on the caller's current stream (asynchronous, like any kernel launch)."""
        self.graph.launch(_import_cupy().cuda.get_current_stream())


def capture_graph(fn) -> CapturedGraph:
    """Run ``fn()`` once to warm up, then capture a second run into a CUDA graph.

    Everything ``fn`` allocates comes from a private CuPy memory pool that lives as long
    as the returned object: temporaries freed during the capture keep their addresses
    for the replays. ``fn`` must use only capturable operations (CuPy kernels and the
    fast path's direct cuBLAS calls; not ``cupy.matmul``).
    """
    cp = _import_cupy()
    if cp is None:
        raise RuntimeError(f"CUDA graphs need CuPy and a GPU ({_cupy_error})")
    cp.cuda.get_current_stream().synchronize()  # what fn reads was written on the caller's stream
    pool = cp.cuda.MemoryPool()
    stream = cp.cuda.Stream(non_blocking=True)
    mode = getattr(cp.cuda.runtime, "streamCaptureModeRelaxed", None)
    with cp.cuda.using_allocator(pool.malloc), stream:
        fn()  # compiles kernels and sizes the private pool
        stream.synchronize()
        stream.begin_capture() if mode is None else stream.begin_capture(mode)
        try:
            outputs = fn()
        except BaseException:
            try:  # end the broken capture, but report what broke it
                stream.end_capture()
            except Exception:
                pass
            raise
        graph = stream.end_capture()
    stream.synchronize()
    return CapturedGraph(graph, outputs, pool, stream)
