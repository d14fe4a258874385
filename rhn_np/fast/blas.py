"""NumPy's own BLAS, found for the compiled CPU path (:mod:`rhn_np.fast.compiled`).

The compiled loops call ``gemm`` between their gate kernels. They call the library NumPy
itself multiplies with (OpenBLAS in the PyPI wheels, bundled as ``numpy.libs`` /
``numpy/.dylibs``; or the system's BLAS NumPy was built against), so a product takes the
same time, the same threads (``threadpoolctl`` and ``OPENBLAS_NUM_THREADS`` set both) and
the same kernels as ``numpy.matmul``. :func:`find` returns where its ``cblas_?gemm`` are,
or ``None`` with the reason when no usable library is found (the compiled path is then
not offered; nothing else changes).
"""

from __future__ import annotations

import ctypes
import dataclasses
import glob
import os

import numpy as np

__all__ = ["Gemm", "find", "ROW_MAJOR", "NO_TRANS", "TRANS"]

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112  # the CBLAS enums

# (symbol of sgemm, symbol of dgemm, 64-bit integers): NumPy's wheels (scipy-openblas,
# ILP64), a plain ILP64 OpenBLAS, and any LP64 CBLAS.
_SYMBOLS = (
    ("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_", True),
    ("cblas_sgemm64_", "cblas_dgemm64_", True),
    ("scipy_cblas_sgemm", "scipy_cblas_dgemm", False),
    ("cblas_sgemm", "cblas_dgemm", False),
)


@dataclasses.dataclass(frozen=True)
class Gemm:
    """Where NumPy's ``cblas_sgemm`` / ``cblas_dgemm`` are: addresses, names, integer width."""

    path: str
    sgemm: int
    dgemm: int
    symbols: tuple[str, str]
    ilp64: bool

    @property
    def key(self) -> str:
        """Names the ABI the compiled code is built for (part of its on-disk cache's name)."""
        return f"{os.path.basename(self.path)}:{self.symbols[0]}:{'ilp64' if self.ilp64 else 'lp64'}"


def _candidates():
    """Shared libraries that may hold NumPy's BLAS: the ones bundled with the wheel first."""
    root = os.path.dirname(np.__file__)
    found = []
    for pattern in ("../numpy.libs/*blas*", ".dylibs/*blas*", "../numpy.libs/*.dll", "*.libs/*blas*"):
        found += sorted(glob.glob(os.path.join(root, pattern)))
    try:  # Linux: whatever BLAS this process loaded with NumPy (a conda or system NumPy)
        import numpy.linalg  # noqa: F401  (makes NumPy load its BLAS if it has not yet)

        with open("/proc/self/maps") as fh:
            for line in fh:
                name = line.split()[-1]
                if ("blas" in name.lower() or "mkl_rt" in name) and name.startswith("/") and name not in found:
                    found.append(name)
    except OSError:
        pass
    return found


def find() -> tuple[Gemm | None, str]:
    """NumPy's BLAS ``gemm`` (or ``None``) and a sentence on what was found."""
    tried = []
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError as err:
            tried.append(f"{os.path.basename(path)} ({err})")
            continue
        for s_name, d_name, ilp64 in _SYMBOLS:
            try:
                s_fn, d_fn = getattr(lib, s_name), getattr(lib, d_name)
            except AttributeError:
                continue
            s_addr = ctypes.cast(s_fn, ctypes.c_void_p).value
            d_addr = ctypes.cast(d_fn, ctypes.c_void_p).value
            gemm = Gemm(path, s_addr, d_addr, (s_name, d_name), ilp64)
            return gemm, f"NumPy's BLAS: {os.path.basename(path)} ({s_name}, {'ILP64' if ilp64 else 'LP64'})"
        tried.append(f"{os.path.basename(path)} (no cblas_sgemm)")
    return None, "NumPy's BLAS library was not found" + (f" (tried {', '.join(tried)})" if tried else "")
