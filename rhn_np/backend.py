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
* the one operation that differs between libraries: :func:`scatter_add_rows`
  (embedding gradients).

Nothing here is about a model: the fast path's kernels are in :mod:`rhn_np.fast`,
CUDA graphs in :mod:`rhn_np.graphs`. Those modules reach CuPy through
:func:`cupy_module`, so that this stays the one module that imports it.

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
import os
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
    "address",
    "xp_name",
    "cupy_module",
    "cupy_blas",
    "available_memory",
    "blas_libraries",
    "limit_blas_threads",
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


def cupy_module():
    """The CuPy module when it imports and sees a GPU, else None (the fast path and the
    CUDA graphs get CuPy from here: no other module imports it)."""
    return _import_cupy()


def cupy_blas():
    """CuPy's cuBLAS binding and its per-device handle getter, ``(cublas, get_cublas_handle)``,
    for the fast path's direct GEMM calls (None when CuPy is not usable)."""
    if _import_cupy() is None:
        return None
    from cupy.cuda import device as cuda_device
    from cupy_backends.cuda.libs import cublas

    return cublas, cuda_device.get_cublas_handle


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


def xp_name(xp) -> str:
    """'numpy', 'cupy' or 'array_api_strict' for a namespace."""
    mod = xp.__name__
    return "array_api_strict" if "strict" in mod else ("cupy" if "cupy" in mod else "numpy")


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


def available_memory(backend="numpy") -> int | None:
    """Bytes of memory free for new arrays of ``backend``: the GPU's free memory plus what
    CuPy's pool holds unused (CuPy), else the host's available memory (``MemAvailable``
    of ``/proc/meminfo``, else the free physical pages); None where it cannot be read."""
    be = get(backend)
    if be.name == "cupy":
        cp = _import_cupy()
        free, _ = cp.cuda.runtime.memGetInfo()
        return int(free) + int(cp.get_default_memory_pool().free_bytes())
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def blas_libraries() -> list[dict]:
    """The BLAS libraries loaded in this process (NumPy's), as ``threadpoolctl`` reports
    them: ``internal_api`` (openblas, mkl, ...), ``version``, ``num_threads``, ``filepath``."""
    import threadpoolctl

    return [lib for lib in threadpoolctl.threadpool_info() if lib.get("user_api") == "blas"]


def limit_blas_threads(threads: int | None):
    """A context manager running its block with ``threads`` BLAS threads (``None``: as they
    are), then restoring them: ``with backend.limit_blas_threads(1): ...``. The compiled
    CPU path calls the same BLAS, so it follows too."""
    import contextlib

    if threads is None:
        return contextlib.nullcontext()
    import threadpoolctl

    return threadpoolctl.threadpool_limits(limits=int(threads), user_api="blas")


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
