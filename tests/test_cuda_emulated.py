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
``_CupyRawKernels``'s own ``forward_steps``/``backward_steps``/``matmul`` code and must
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
from rhn_np import backend

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
    the whole array, an ``int32 x`` a scalar, as CuPy's generated code has them."""
    c_params, prologue, sig = [], [], []
    for text, is_out in [(p, False) for p in in_params.split(",")] + [(p, True) for p in out_params.split(",")]:
        words = text.split()
        pname = words[-1]
        if words[0] == "raw":
            c_params.append(f"T* {pname}")
            sig.append(("ptr", pname))
        elif words[0] == "int32":
            c_params.append(f"int {pname}")
            sig.append(("int", pname))
        else:
            c_params.append(f"T* {pname}_array")
            prologue.append(f"T& {pname} = {pname}_array[i];" if is_out else f"const T {pname} = {pname}_array[i];")
            sig.append(("ptr", pname))
    code = (f'extern "C" void elementwise_{name}(long size, {", ".join(c_params)}) {{\n'
            f"  for (long i = 0; i < size; ++i) {{\n    {' '.join(prologue)}\n{body}\n  }}\n}}\n")
    return code, sig


_LIBS: dict = {}


def _compile(dtype, tmp_dir):
    """Build (once per dtype) a shared library of the raw kernels, their launchers and
    the ElementwiseKernel bodies, all from the strings the package gives to CuPy."""
    key = np.dtype(dtype)
    if key in _LIBS:
        return _LIBS[key]
    ctype = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}[key]
    launchers, sigs = _raw_launchers(backend._RAW_SOURCE)
    elementwise, ew_sigs = [], {}
    for coupled in (True, False):
        tag = "coupled" if coupled else "uncoupled"
        c = "" if coupled else ", T c"
        for kind, ins, outs, body in (
            ("fwd", "raw T a, raw T bias, T s_in, T mask, int32 n, int32 kn, int32 bias_stride",
             f"T h, T t{c}, T s_out, T s_tr", backend._CUDA_FORWARD[coupled]),
            ("bwd", f"T carry_in, T g, T mask, T extra, T s_in, T h, T t{c}, int32 n, int32 kn",
             "raw T da, T carry_out", backend._CUDA_BACKWARD[coupled]),
        ):
            code, sig = _elementwise_function(f"{kind}_{tag}", ins, outs, body)
            elementwise.append(code)
            ew_sigs[f"{kind}_{tag}"] = sig
    source = (_SHIM + backend._CUDA_GATES + f"typedef {ctype} T;\n" + backend._RAW_SOURCE + launchers
              + "".join(elementwise))
    src = tmp_dir / f"rhn_cuda_{ctype}.cpp"
    lib_path = tmp_dir / f"rhn_cuda_{ctype}.so"
    src.write_text(source)
    done = subprocess.run([CXX, "-std=c++11", "-O1", "-shared", "-fPIC", "-o", str(lib_path), str(src)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"the CUDA sources do not compile as C++:\n{done.stderr}"
    lib = ctypes.CDLL(str(lib_path))
    _LIBS[key] = (lib, sigs, ew_sigs)
    return _LIBS[key]


def _raw_kernel(lib, name, params):
    """A stand-in for ``cupy.RawKernel``: ``kernel(grid, block, args)``."""
    fn = getattr(lib, f"launch_{name}")
    fn.argtypes = [ctypes.c_uint, ctypes.c_uint] + [ctypes.c_void_p if "*" in t else ctypes.c_int for t, _ in params]
    fn.restype = None

    def launch(grid, block, args):
        assert len(args) == len(params), f"{name} takes {len(params)} arguments, got {len(args)}"
        for (t, pname), value in zip(params, args):  # CuPy passes NumPy scalars by their C type
            want = np.uintp if "*" in t else np.int32
            assert isinstance(value, want), f"{name}: argument {pname} is {type(value).__name__}, not {want.__name__}"
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


class EmulatedRawKernels(backend._CupyRawKernels):
    """``_CupyRawKernels`` with its CUDA parts played on the host: the kernels are the
    C++ build of the same source, cuBLAS is :func:`_gemm`, CuPy's array calls are
    NumPy's. Its ``matmul``, ``forward_steps`` and ``backward_steps`` are the real ones."""

    def __init__(self, coupled, tmp_dir, capturing=False):
        self.coupled = coupled
        self.calls = []
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
            lib, sigs, _ = _compile(dt, tmp_dir)
            self._fn[np.dtype(dt)] = (_raw_kernel(lib, f"fwd_{tag}", sigs[f"fwd_{tag}"]),
                                      _raw_kernel(lib, f"bwd_{tag}", sigs[f"bwd_{tag}"]))

    # fast.py hands over plain NumPy buffers; the real methods see them as HostArrays.
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
    monkeypatch.setattr(backend, "gate_kernels", lambda x, coupled: k)
    case = window_case(cfg, "float64")
    got = run_window(*case, impl="fast")
    want = run_window(*case, impl="reference")
    T, B, n_in, n, depth = cfg[:5]
    # one GEMM per micro-step each way, plus the input projection, dR per layer, dW and dx
    assert len(k.calls) == 2 * T * depth + 1 + depth + 2
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-12, err_msg=name)


def test_raw_cuda_path_float32(build_dir, monkeypatch):
    cfg = CASES[3]
    k = EmulatedRawKernels(cfg[5], build_dir)
    monkeypatch.setattr(backend, "gate_kernels", lambda x, coupled: k)
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


@pytest.mark.parametrize("coupled", [True, False])
def test_elementwise_cuda_bodies_match_numpy_kernels(coupled, build_dir):
    """The ElementwiseKernel variant's bodies compute what the NumPy gate kernels do."""
    lib, _, ew = _compile(np.float64, build_dir)
    tag = "coupled" if coupled else "uncoupled"
    rng = np.random.default_rng(2)
    B, n = 4, 5
    kn = (2 if coupled else 3) * n
    ref = backend._NumpyGateKernels(coupled)

    def call(name, arrays, scalars, size):
        fn = getattr(lib, f"elementwise_{name}")
        sig = ew[name]
        fn.argtypes = [ctypes.c_long] + [ctypes.c_void_p if kind == "ptr" else ctypes.c_int for kind, _ in sig]
        fn(size, *[arrays[p].ctypes.data if kind == "ptr" else scalars[p] for kind, p in sig])

    for bias_2d in (True, False):  # layer 1 adds the (B, kn) input projection, others b[l] (kn,)
        a = rng.standard_normal((B, kn))
        bias = rng.standard_normal((B, kn) if bias_2d else (kn,))
        s_in, mask = rng.standard_normal((B, n)), rng.uniform(0, 2, (B, n))
        outs = {k: np.full((B, n), np.nan) for k in ("h", "t", "c", "s_out", "s_tr")}
        call(f"fwd_{tag}", {"a": a, "bias": bias, "s_in": s_in, "mask": mask, **outs},
             {"n": n, "kn": kn, "bias_stride": kn if bias_2d else 0}, B * n)
        want = {k: np.full((B, n), np.nan) for k in ("h", "t", "c", "s_out", "s_tr")}
        ref.forward(a.copy(), bias, s_in, mask, want["h"], want["t"], want["c"], want["s_out"], want["s_tr"])
        for key in ("h", "t", "s_out", "s_tr") + (() if coupled else ("c",)):
            np.testing.assert_allclose(outs[key], want[key], rtol=1e-13, atol=1e-13, err_msg=key)

    carry_in, g, extra = (rng.standard_normal((B, n)) for _ in range(3))
    h, t, c = np.tanh(rng.standard_normal((B, n))), rng.uniform(0, 1, (B, n)), rng.uniform(0, 1, (B, n))
    da, carry_out = np.full((B, kn), np.nan), np.full((B, n), np.nan)
    call(f"bwd_{tag}", {"carry_in": carry_in, "g": g, "mask": mask, "extra": extra, "s_in": s_in, "h": h, "t": t,
                        "c": c, "da": da, "carry_out": carry_out}, {"n": n, "kn": kn}, B * n)
    want_da, want_carry = np.full((B, kn), np.nan), np.full((B, n), np.nan)
    ref.backward(carry_in.copy(), g.copy(), mask, extra, s_in, h, t, c, want_da, want_carry)
    np.testing.assert_allclose(da, want_da, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(carry_out, want_carry, rtol=1e-13, atol=1e-13)
