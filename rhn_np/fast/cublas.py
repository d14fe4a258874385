"""cuBLAS through ctypes: the GEMMs of the fast path that a CUDA graph can capture.

CuPy's own cuBLAS bindings refuse to run while a stream is being captured; cuBLAS
itself supports capture once it has a workspace it need not allocate. This module
binds the library CuPy already loaded (found in the process's memory map).
"""

from __future__ import annotations

import numpy as np

__all__ = ["Cublas"]


class Cublas:
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
