"""The CUDA sources of the fast path, compiled as C++ and run on the CPU.

The GPU tests (``test_gpu.py``) need a CUDA GPU, which most machines that run this suite
do not have. This file checks, on any machine with a C++ compiler, the parts of the CuPy
fast path that are plain logic rather than CUDA:

* the gate kernels' source (``_CUDA_GATES`` + ``_RAW_SOURCE``, and the ElementwiseKernel
  bodies), compiled by the host C++ compiler with a few lines that stand in for CUDA's
  keywords and thread indices, and launched over the same grid a GPU would run;
* the raw plans' address arithmetic and every cuBLAS call's arguments, with cuBLAS's
  documented column-major GEMM (``C = α op(A) op(B) + β C``, leading dimensions) played
  by NumPy on host pointers.

The whole forward and BPTT of :mod:`rhn_np.fast` then runs through
``gates.CupyRawGates``'s own ``forward_steps``/``backward_steps``/``matmul`` code and must
match the readable reference in float64. What this cannot check — the CUDA compiler,
CuPy's launch and memory semantics, cuBLAS itself — is left to ``test_gpu.py`` on a GPU.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import types

import numpy as np
import pytest

from conftest import run_window, window_case
from rhn_np import backend, fast
from rhn_np.fast import gates

CXX = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler (c++, g++ or clang++) on PATH")

# What a CUDA compiler provides and a C++ one does not: the keywords, and the thread
# indices as globals that the launchers below set before each "thread".
_SHIM = r"""
#include <cmath>
#include <cstdint>
using std::tanh;
#define __global__
#define __device__
#define __forceinline__ inline
struct rhn_dim3 { unsigned x, y, z; };
static rhn_dim3 blockIdx, blockDim, threadIdx;
"""

_KERNEL_SIGNATURE = re.compile(r'extern "C" __global__ void (\w+)\(([^)]*)\)')


def _params(signature):
    """[(ctype text, name)] of a C parameter list."""
    out = []
    for part in signature.split(","):
        words = part.replace("*", " * ").split()
        out.append((" ".join(words[:-1]), words[-1]))
    return out


def _raw_launchers(source):
    """C++ launchers: launch_NAME(grid, block, args...) runs every thread of the grid."""
    code, sigs = [], {}
    for name, sig in _KERNEL_SIGNATURE.findall(source):
        params = _params(sig)
        sigs[name] = params
        decl = ", ".join(f"{t} {n}" for t, n in params)
        args = ", ".join(n for _, n in params)
        code.append(
            f'extern "C" void launch_{name}(unsigned rhn_grid, unsigned rhn_block, {decl}) {{\n'
            f"  blockDim.x = rhn_block;\n"
            f"  for (unsigned bi = 0; bi < rhn_grid; ++bi) for (unsigned th = 0; th < rhn_block; ++th) {{\n"
            f"    blockIdx.x = bi; threadIdx.x = th; {name}({args});\n  }}\n}}\n"
        )
    return "".join(code), sigs


def _elementwise_function(name, in_params, out_params, body):
    """A C++ function that runs an ElementwiseKernel body for i in [0, size): a non-raw
    parameter ``T x`` is the element ``x[i]`` (a reference for outputs), a ``raw T x``
    the whole array, an ``int32 x`` a scalar, as CuPy's generated code has them.
    Returns the code and [(kind, name, is_output)] of its parameters after ``size``."""
    c_params, prologue, sig = [], [], []
    for text, is_out in [(p, False) for p in in_params.split(",")] + [(p, True) for p in out_params.split(",")]:
        words = text.split()
        pname = words[-1]
        if words[0] == "raw":
            c_params.append(f"T* {pname}")
            sig.append(("raw", pname, is_out))
        elif words[0] == "int32":
            c_params.append(f"int {pname}")
            sig.append(("int", pname, is_out))
        else:
            c_params.append(f"T* {pname}_array")
            prologue.append(f"T& {pname} = {pname}_array[i];" if is_out else f"const T {pname} = {pname}_array[i];")
            sig.append(("elem", pname, is_out))
    code = (f'extern "C" void {name}(long size, {", ".join(c_params)}) {{\n'
            f"  for (long i = 0; i < size; ++i) {{\n    {' '.join(prologue)}\n{body}\n  }}\n}}\n")
    return code, sig


_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_LIBS: dict = {}


def _build(source, tmp_dir):
    """Compile C++ ``source`` to a shared library (once per source) and load it."""
    key = hash(source)
    if key not in _LIBS:
        src = tmp_dir / f"rhn_cuda_{len(_LIBS)}.cpp"
        lib_path = src.with_suffix(".so")
        src.write_text(source)
        done = subprocess.run([CXX, "-std=c++11", "-O1", "-shared", "-fPIC", "-o", str(lib_path), str(src)],
                              capture_output=True, text=True)
        assert done.returncode == 0, f"the CUDA source does not compile as C++:\n{done.stderr}"
        _LIBS[key] = ctypes.CDLL(str(lib_path))
    return _LIBS[key]


def _compile(dtype, tmp_dir):
    """The raw kernels (the string the package gives ``cupy.RawModule``) and their
    launchers, built for ``dtype``: (library, {kernel name: parameters})."""
    launchers, sigs = _raw_launchers(gates.RAW_SOURCE)
    source = _SHIM + gates.CUDA_GATES + f"typedef {_CTYPE[np.dtype(dtype)]} T;\n" + gates.RAW_SOURCE + launchers
    return _build(source, tmp_dir), sigs


class FakeElementwiseKernel:
    """A stand-in for ``cupy.ElementwiseKernel`` built from the same four strings: the
    body runs for every element of the (C-contiguous, same-shape) non-raw arrays."""

    def __init__(self, tmp_dir, in_params, out_params, operation, name, preamble=""):
        self.tmp_dir, self.name = tmp_dir, name
        self.in_params, self.out_params, self.operation, self.preamble = in_params, out_params, operation, preamble

    def __call__(self, *args):
        code, sig = _elementwise_function(self.name, self.in_params, self.out_params, self.operation)
        assert len(args) == len(sig), f"{self.name} takes {len(sig)} arguments, got {len(args)}"
        arrays = [a for (kind, _, _), a in zip(sig, args) if kind != "int"]
        dtype = arrays[0].dtype
        shape = next(a.shape for (kind, _, _), a in zip(sig, args) if kind == "elem")
        for (kind, pname, _), a in zip(sig, args):
            if kind == "int":
                assert isinstance(a, (int, np.integer)), f"{self.name}: {pname} is {type(a).__name__}"
                continue
            assert a.dtype == dtype, f"{self.name}: {pname} is {a.dtype}, others {dtype}"
            assert a.flags.c_contiguous, f"{self.name}: {pname} is not C-contiguous"
            if kind == "elem":
                assert a.shape == shape, f"{self.name}: {pname} has shape {a.shape}, the loop {shape}"
        lib = _build(_SHIM + self.preamble + f"typedef {_CTYPE[dtype]} T;\n" + code, self.tmp_dir)
        fn = getattr(lib, self.name)
        fn.argtypes = [ctypes.c_long] + [ctypes.c_int if kind == "int" else ctypes.c_void_p for kind, _, _ in sig]
        fn(int(np.prod(shape)), *[int(a) if kind == "int" else a.ctypes.data for (kind, _, _), a in zip(sig, args)])


def _raw_kernel(lib, name, params, launches):
    """A stand-in for ``cupy.RawKernel``: ``kernel(grid, block, args)``; appends ``name``
    to ``launches`` at every launch."""
    fn = getattr(lib, f"launch_{name}")
    fn.argtypes = [ctypes.c_uint, ctypes.c_uint] + [ctypes.c_void_p if "*" in t else ctypes.c_int for t, _ in params]
    fn.restype = None

    def launch(grid, block, args):
        assert len(args) == len(params), f"{name} takes {len(params)} arguments, got {len(args)}"
        for (t, pname), value in zip(params, args):  # CuPy passes NumPy scalars by their C type
            want = np.uintp if "*" in t else np.int32
            assert isinstance(value, want), f"{name}: argument {pname} is {type(value).__name__}, not {want.__name__}"
        launches.append(name)
        fn(grid[0], block[0], *[int(v) for v in args])

    return launch


class _Ptr:
    def __init__(self, ptr):
        self.ptr = ptr


class HostArray(np.ndarray):
    """A NumPy array that, like a CuPy one, tells its address as ``.data.ptr``."""

    @property
    def data(self):
        return _Ptr(self.ctypes.data)


def _host(x):
    return None if x is None else np.asarray(x).view(HostArray)


def _column_major(ptr, rows, cols, ld, dtype):
    """The (rows, cols) column-major matrix at address ``ptr`` with leading dimension ld."""
    dtype = np.dtype(dtype)
    assert ld >= max(rows, 1), f"leading dimension {ld} < rows {rows}"
    count = ld * (cols - 1) + rows
    buf = np.ctypeslib.as_array((ctypes.c_char * (count * dtype.itemsize)).from_address(ptr)).view(dtype)
    return np.lib.stride_tricks.as_strided(buf, (rows, cols), (dtype.itemsize, ld * dtype.itemsize))


def _gemm(dtype, calls, status=None):
    """cuBLAS ``<t>gemm`` (column-major) on host memory; records each call."""
    ctype = ctypes.c_float if np.dtype(dtype) == np.float32 else ctypes.c_double

    def gemm(handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
        calls.append((transa, transb, m, n, k, lda, ldb, ldc))
        opA = _column_major(A, k, m, lda, dtype).T if transa else _column_major(A, m, k, lda, dtype)
        opB = _column_major(B, n, k, ldb, dtype).T if transb else _column_major(B, k, n, ldb, dtype)
        Cm = _column_major(C, m, n, ldc, dtype)
        a, b = ctype.from_address(alpha).value, ctype.from_address(beta).value
        Cm[...] = a * (opA @ opB) + (b * Cm if b != 0 else 0)
        return status

    return gemm


class EmulatedRawKernels(gates.CupyRawGates):
    """``gates.CupyRawGates`` with its CUDA parts played on the host: the kernels are the
    C++ build of the same source, cuBLAS is :func:`_gemm`, CuPy's array calls are
    NumPy's. Its ``matmul``, ``forward_steps`` and ``backward_steps`` are the real ones."""

    def __init__(self, coupled, tmp_dir, capturing=False):
        self.coupled = coupled
        self.calls, self.launches = [], []  # cuBLAS calls and kernel launches, in order
        self._scalars = {dt: (np.ones((), dt), np.zeros((), dt)) for dt in (np.dtype(np.float32), np.dtype(np.float64))}
        one_zero = {dt: (one.ctypes.data, zero.ctypes.data) for dt, (one, zero) in self._scalars.items()}
        # the ctypes binding returns a status (0 = success), CuPy's Cython one None
        self.blas = types.SimpleNamespace(one_zero=one_zero, handle=0, use_stream=lambda ptr: None,
                                          gemm={dt: _gemm(dt, self.calls, status=0) for dt in one_zero})
        self._cupy_gemm = {dt: _gemm(dt, self.calls) for dt in one_zero}
        self._cupy_handle = lambda: 0
        self._cublas = types.SimpleNamespace(setPointerMode=lambda handle, mode: None, CUBLAS_POINTER_MODE_HOST=0)
        stream = types.SimpleNamespace(is_capturing=lambda: capturing, ptr=0)
        self.cp = types.SimpleNamespace(
            empty=lambda shape, dtype: np.empty(shape, dtype).view(HostArray),
            matmul=np.matmul, ascontiguousarray=lambda x: _host(np.ascontiguousarray(x)),
            cuda=types.SimpleNamespace(get_current_stream=lambda: stream))
        tag = "coupled" if coupled else "uncoupled"
        self._fn = {}
        for dt in (np.float32, np.float64):
            lib, sigs = _compile(dt, tmp_dir)
            self._fn[np.dtype(dt)] = (_raw_kernel(lib, f"fwd_{tag}", sigs[f"fwd_{tag}"], self.launches),
                                      _raw_kernel(lib, f"bwd_{tag}", sigs[f"bwd_{tag}"], self.launches))

    # rhn_np.fast hands over plain NumPy buffers; the real methods see them as HostArrays.
    def matmul(self, a, b, out=None):
        return super().matmul(_host(a), _host(b), out=_host(out))

    def forward_steps(self, *buffers):
        return super().forward_steps(*[_host(x) for x in buffers])

    def backward_steps(self, R, S, Hs, Ts, Cs, dys, mask, dA, carry, g):
        return super().backward_steps(*[_host(x) for x in (R, S, Hs, Ts, Cs, dys, mask, dA)],
                                      [_host(c) for c in carry], _host(g))


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cuda_emulated")


CASES = [  # T, B, n_in, n, depth, coupled, masks, ds_last
    (5, 3, 4, 6, 3, True, False, False),
    (4, 2, 3, 5, 2, False, True, True),
    (3, 20, 33, 70, 5, False, False, False),
    (6, 7, 9, 37, 4, True, True, True),  # B·n not a multiple of the block size
    (1, 1, 1, 1, 1, True, False, True),
]


@pytest.mark.parametrize("capturing", [False, True], ids=["eager", "capturing"])
@pytest.mark.parametrize("cfg", CASES)
def test_raw_cuda_path_matches_reference(cfg, capturing, build_dir, monkeypatch):
    """The raw plans (kernels + cuBLAS arguments) give the reference's window, float64."""
    k = EmulatedRawKernels(cfg[5], build_dir, capturing=capturing)
    monkeypatch.setattr(fast, "gate_kernels", lambda x, coupled: k)
    case = window_case(cfg, "float64")
    got = run_window(*case, impl="fast")
    want = run_window(*case, impl="reference")
    T, B, n_in, n, depth = cfg[:5]
    # one GEMM per micro-step each way, plus the input projection, dR per layer, dW and dx;
    # one fused gate kernel per micro-step each way
    assert len(k.calls) == 2 * T * depth + 1 + depth + 2
    tag = "coupled" if cfg[5] else "uncoupled"
    assert k.launches == [f"fwd_{tag}"] * (T * depth) + [f"bwd_{tag}"] * (T * depth)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-12, err_msg=name)


def test_raw_cuda_path_float32(build_dir, monkeypatch):
    cfg = CASES[3]
    k = EmulatedRawKernels(cfg[5], build_dir)
    monkeypatch.setattr(fast, "gate_kernels", lambda x, coupled: k)
    case = window_case(cfg, "float32")
    got = run_window(*case, impl="fast")
    want = run_window(*case, impl="reference")
    for name in want:
        assert got[name].dtype == np.float32, name
        scale = max(float(np.abs(want[name]).max()), 1e-30)
        assert float(np.abs(got[name] - want[name]).max()) / scale < 1e-4, name


@pytest.mark.parametrize("a_order", ["C", "F"])
@pytest.mark.parametrize("b_order", ["C", "F"])
@pytest.mark.parametrize("shape", [(5, 7, 3), (1, 4, 9), (6, 1, 2), (3, 5, 1)])
def test_raw_matmul_layouts(shape, a_order, b_order, build_dir):
    """``matmul`` maps each operand layout to cuBLAS's op/leading-dimension arguments."""
    M, K, N = shape
    k = EmulatedRawKernels(True, build_dir)
    rng = np.random.default_rng(1)
    a = np.asarray(rng.standard_normal((M, K)), order=a_order)
    b = np.asarray(rng.standard_normal((K, N)), order=b_order)
    out = k.matmul(a, b, out=np.full((M, N), np.nan))
    assert len(k.calls) == 1  # the one cuBLAS call, not the fallback
    np.testing.assert_allclose(out, a @ b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("cfg", CASES)
def test_elementwise_cuda_path_matches_reference(cfg, build_dir, monkeypatch):
    """The ElementwiseKernel variant (``_CupyGateKernels``, built from its own strings by
    a stand-in ``cupy.ElementwiseKernel``) gives the reference's window, float64."""
    fake_cupy = types.SimpleNamespace(
        ElementwiseKernel=lambda *a, **kw: FakeElementwiseKernel(build_dir, *a, **kw),
        matmul=np.matmul, ascontiguousarray=np.ascontiguousarray, zeros=np.zeros)
    monkeypatch.setattr(backend, "cupy_module", lambda: fake_cupy)
    k = gates.CupyElementwiseGates(cfg[5])
    monkeypatch.setattr(fast, "gate_kernels", lambda x, coupled: k)
    case = window_case(cfg, "float64")
    got = run_window(*case, impl="fast")
    want = run_window(*case, impl="reference")
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-12, err_msg=name)
