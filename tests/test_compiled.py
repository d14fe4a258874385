"""The compiled CPU fast path (numba): :mod:`rhn_np.fast.compiled` against the reference.

What is checked here, on NumPy arrays:

* the compiled tanh (float32: Eigen's rational approximation, float64: libm) against the
  exact values, in float32 ulp;
* the compiled gate maths against :func:`rhn_np.rhn.micro_forward` / ``micro_backward``;
* whole windows (forward and BPTT) of the RHN and of the DT(S)-RNN, compiled against the
  reference, on drawn shapes, masks and ``ds_last`` (Hypothesis), and against central
  differences;
* what ``impl`` means (:func:`rhn_np.fast.resolve`), with numba hidden or turned off too
  (in subprocesses);
* that the pooled buffers (:mod:`rhn_np.fast.buffers`) never hand out memory still in use;
* that training with ``impl="fast"`` follows the reference run's loss curve.

The whole module is skipped, with the reason, where the compiled path cannot run
(``fast.compiled_status()[0] is None``: no numba, no usable BLAS, or ``RHN_NUMBA=0``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rhn_np import backend, dtrnn, fast, gradcheck, rhn

COMPILED, WHY = fast.compiled_status()
if COMPILED is None:
    pytest.skip(f"the compiled CPU path (numba) cannot run here: {WHY}", allow_module_level=True)

from rhn_np.fast import buffers  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPS = ("rhn_forward_loop", "rhn_backward_loop", "dt_forward_loop", "dt_backward_loop")
# The largest distance of the float32 tanh from the correctly rounded tanh, in float32 ulp.
# Measured over every float32 in [0, 10] (the approximation is odd, and 1 beyond 9.01 as
# is the rounded tanh): 7 ulp at 5 inputs (listed below), 6 ulp at 332, <= 5 elsewhere;
# an absolute error of at most 4.2e-7.
TANH32_MAX_ULP = 7
TANH32_WORST = (5.928892135620117, 5.856571674346924, 5.827876091003418, 5.774549961090088, 5.740292549133301)


@pytest.fixture(autouse=True)
def compiled_kernels():
    """Every test starts on the compiled kernels and leaves the choice as it found it."""
    previous = fast.set_cpu_kernels("compiled")
    try:
        assert fast.uses_compiled()
        yield
    finally:
        fast.set_cpu_kernels(previous)


# ----------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------
def ordered(x32):
    """float32 bit patterns as integers whose differences count ulp (across 0 too)."""
    i = np.ascontiguousarray(x32, np.float32).view(np.int32).astype(np.int64)
    return np.where(i < 0, -(i & 0x7FFFFFFF), i)


def ulp_error32(x32):
    """Distance in float32 ulp of the compiled tanh from tanh (float64, rounded to float32)."""
    got = COMPILED.tanh_values(x32)
    exact = np.tanh(x32.astype(np.float64)).astype(np.float32)
    return np.abs(ordered(got) - ordered(exact)), got


def mask_dict(kind, rng, B, n_in, n, keep, dtype):
    """Inverted-dropout masks (0 or 1/keep): none, only "x", only "s" or both."""
    if kind == "none":
        return None
    m = {}
    if kind in ("x", "both"):
        m["x"] = ((rng.random((B, n_in)) < keep) / keep).astype(dtype)
    if kind in ("s", "both"):
        m["s"] = ((rng.random((B, n)) < keep) / keep).astype(dtype)
    return m


def window(cell, p, xs, s0, masks, dys, last, impl):
    """Forward + BPTT of one window of ``cell`` (rhn or dtrnn): outputs, cache arrays, gradients."""
    ys, cache = cell.forward(p, xs, s0, masks, impl=impl)
    gate_keys = ("s_in", "h", "t", "c") if cell is rhn else ("z", "s_prev")
    out = {"ys": ys, **{f"cache.{k}": np.array(cache[k]) for k in gate_keys if cache.get(k) is not None}}
    grads, dxs, ds0 = cell.backward(p, cache, dys, last)
    out.update({"dxs": dxs, "ds0": ds0, **{f"d{k}": v for k, v in grads.items()}})
    return cache["impl"], out


def assert_same(got, want, rtol, atol_rel):
    """Every array of ``got`` equals ``want``'s to ``rtol`` and ``atol_rel`` × its scale."""
    assert set(got) == set(want)
    for k, ref in want.items():
        assert got[k].dtype == ref.dtype, (k, got[k].dtype, ref.dtype)
        assert got[k].shape == ref.shape, (k, got[k].shape, ref.shape)
        scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
        np.testing.assert_allclose(got[k], ref, rtol=rtol, atol=atol_rel * scale, err_msg=k)


def draw_window(data, cell, dtype):
    """Draw a window of ``cell``: params, inputs, masks (none / x / s / both), dys, ds_last."""
    T = data.draw(st.integers(1, 6), label="T")
    B = data.draw(st.integers(1, 4), label="B")
    n_in = data.draw(st.integers(1, 5), label="n_in")
    n = data.draw(st.integers(1, 8), label="n")
    depth = data.draw(st.integers(1, 4), label="depth")
    variant = data.draw(st.booleans(), label="coupled" if cell is rhn else "shortcut")
    mask_kind = data.draw(st.sampled_from(["none", "x", "s", "both"]), label="masks")
    keep = data.draw(st.floats(0.3, 1.0), label="keep")
    use_last = data.draw(st.booleans(), label="ds_last")
    scale = data.draw(st.floats(0.1, 1.5), label="init_scale")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    if cell is rhn:
        bias = data.draw(st.floats(-3.0, 2.0), label="transform_bias")
        p = rhn.init_params(n_in, n, depth, coupled=variant, init_scale=scale, transform_bias=bias, seed=seed,
                            dtype=dtype)
    else:
        p = dtrnn.init_params(n_in, n, depth, shortcut=variant, init_scale=scale, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((T, B, n_in)).astype(dtype)
    s0 = rng.uniform(-1, 1, (B, n)).astype(dtype)
    dys = rng.standard_normal((T, B, n)).astype(dtype)
    last = rng.standard_normal((B, n)).astype(dtype) if use_last else None
    return p, xs, s0, mask_dict(mask_kind, rng, B, n_in, n, keep, dtype), dys, last


def _window_inputs(p, dtype, T, B, n_in, n, seed, masks):
    rng = np.random.default_rng(seed + 1)
    xs = rng.standard_normal((T, B, n_in)).astype(dtype)
    s0 = rng.uniform(-1, 1, (B, n)).astype(dtype)
    dys = rng.standard_normal((T, B, n)).astype(dtype)
    last = rng.standard_normal((B, n)).astype(dtype)
    return p, xs, s0, mask_dict(masks, rng, B, n_in, n, 0.7, dtype), dys, last


def small_rhn(coupled=True, dtype="float64", T=4, B=3, n_in=3, n=5, depth=3, seed=0, masks="both"):
    p = rhn.init_params(n_in, n, depth, coupled=coupled, init_scale=0.5, transform_bias=-1.0, seed=seed, dtype=dtype)
    return _window_inputs(p, dtype, T, B, n_in, n, seed, masks)


def small_dt(shortcut=True, dtype="float64", T=4, B=3, n_in=3, n=5, depth=3, seed=0, masks="both"):
    p = dtrnn.init_params(n_in, n, depth, shortcut=shortcut, init_scale=0.6, seed=seed, dtype=dtype)
    return _window_inputs(p, dtype, T, B, n_in, n, seed, masks)


# ----------------------------------------------------------------------------
# tanh
# ----------------------------------------------------------------------------
def test_float32_tanh_within_the_measured_ulp_bound():
    """float32 tanh_values is within 7 ulp of the rounded tanh: dense grid, random bit patterns, edge values."""
    rng = np.random.default_rng(0)
    grid = np.arange(-10.0, 10.0, 1e-4).astype(np.float32)  # 200,000 points
    bits = rng.integers(0, 2**32, 1_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    bits = bits[np.isfinite(bits)]  # every exponent, denormals included
    f32 = np.finfo(np.float32)
    edges = np.array([0.0, f32.smallest_subnormal, 1e-42, f32.tiny, 1e-30, 1e-10, 1e-5, 3.99e-4, 4e-4, 4.01e-4, 0.5,
                      1.0, 7.9, 7.9053111, 7.906, 8.5, 9.0, 9.1, 10.0, 20.0, 1e30, f32.max, *TANH32_WORST], np.float32)
    x = np.concatenate([grid, bits, edges, -edges, -np.asarray(TANH32_WORST, np.float32)])
    err, got = ulp_error32(x)
    worst = int(err.max())
    assert worst <= TANH32_MAX_ULP, (worst, float(x[np.argmax(err)]))
    assert worst == TANH32_MAX_ULP  # the listed worst inputs are in: the bound is a measured one, not loose
    assert got.dtype == np.float32
    # beyond the clamp the approximation is 1 exactly, as tanh rounded to float32 is from 9.01 on
    assert np.all(np.abs(got[np.abs(x) >= 9.1]) == 1.0)
    assert np.all(np.abs(got) <= 1.0)


def test_float32_tanh_special_values():
    """float32 tanh_values: NaN -> NaN, ±inf -> ±1, ±0 and tiny/denormal inputs returned exactly (sign kept), odd."""
    f32 = np.finfo(np.float32)
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, f32.smallest_subnormal, -f32.smallest_subnormal, f32.tiny,
                  -f32.tiny, 1e-20, -3e-4], np.float32)
    y = COMPILED.tanh_values(x)
    assert np.isnan(y[0])
    assert y[1] == 1.0 and y[2] == -1.0
    assert y[3] == 0.0 and not np.signbit(y[3]) and y[4] == 0.0 and np.signbit(y[4])
    np.testing.assert_array_equal(y[5:], x[5:])  # tanh(x) = x to float32 precision below 4e-4
    z = np.random.default_rng(1).standard_normal(10_000).astype(np.float32) * 4
    np.testing.assert_array_equal(COMPILED.tanh_values(-z), -COMPILED.tanh_values(z))


def test_float64_tanh_is_libm_tanh():
    """float64 tanh_values equals math.tanh to 1 ulp everywhere tested (incl. ±0, denormals, ±inf, NaN)."""
    rng = np.random.default_rng(2)
    x = np.concatenate([np.linspace(-25, 25, 200_001), rng.standard_normal(20_000) * 6,
                        [0.0, -0.0, 5e-324, -5e-324, 1e-300, 1e-8, 19.06, 1e300, np.inf, -np.inf]])
    got = COMPILED.tanh_values(x)
    want = np.array([math.tanh(v) for v in x])
    assert got.dtype == np.float64
    assert np.all(np.abs(got - want) <= np.spacing(np.abs(want)))
    assert np.isnan(COMPILED.tanh_values(np.array([np.nan]))[0])
    assert np.signbit(COMPILED.tanh_values(np.array([-0.0]))[0])


# ----------------------------------------------------------------------------
# The gate maths of one micro-layer
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("coupled", [True, False], ids=["coupled", "uncoupled"])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-14), ("float32", 2e-6)])
def test_gate_values_match_micro_forward_and_backward(coupled, dtype, tol):
    """gate_values gives rhn.micro_forward's h, t, (c), s and micro_backward's da, carry, saturated gates included."""
    rng = np.random.default_rng(3)
    B, n = 64, 24
    k = 2 if coupled else 3
    a = rng.standard_normal((B, k * n)) * 3
    a[:16] *= 20  # |a| up to ~200: tanh and σ saturated
    a[16, :] = np.resize([1e4, -1e4, 88.0, -88.0, 700.0, -700.0, 30.0, -30.0, 17.0, -17.0, np.inf, -np.inf], k * n)
    a[17, :] = np.resize([0.0, -0.0, 1e-9, -1e-9, 3e-4, -3e-4, 4e-4, -4e-4], k * n)
    a = a.astype(dtype)
    s_in = rng.uniform(-1, 1, (B, n)).astype(dtype)
    ds = rng.uniform(-1, 1, (B, n)).astype(dtype)

    out = COMPILED.gate_values(a, s_in, ds, coupled)
    assert out.shape == (2 * k + 2, B, n) and out.dtype == np.dtype(dtype)
    s, h, t, c = rhn.micro_forward(a, s_in, coupled)
    da, carry = rhn.micro_backward(ds, s_in, h, t, c)
    want = [h, t] + ([] if coupled else [c]) + [s] + [da[:, g * n:(g + 1) * n] for g in range(k)] + [carry]
    names = ["h", "t"] + ([] if coupled else ["c"]) + ["s"] + [f"da{g}" for g in "HTC"[:k]] + ["carry"]
    for name, got, ref in zip(names, out, want):
        assert np.all(np.isfinite(got)), name
        np.testing.assert_allclose(got, ref, rtol=0, atol=tol, err_msg=name)
    # saturation is exact: σ(±large) is 0 or 1, tanh(±large) is ±1
    big = np.abs(a[:, :n].astype(np.float64)) > 20
    np.testing.assert_array_equal(np.abs(out[0][big]), 1.0)
    bigT = a[:, n:2 * n].astype(np.float64)
    np.testing.assert_array_equal(out[1][bigT > 40], 1.0)
    np.testing.assert_array_equal(out[1][bigT < -40], 0.0)


# ----------------------------------------------------------------------------
# Whole windows: compiled vs reference (Hypothesis)
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("cell", [rhn, dtrnn], ids=["rhn", "dtrnn"])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_compiled_matches_reference_float64(cell, data):
    """RHN and DT(S)-RNN windows, float64: compiled ys, gate cache, every gradient, dxs, ds0 equal the reference's to 1e-12."""
    case = draw_window(data, cell, "float64")
    impl_f, got = window(cell, *case, impl="fast")
    impl_r, want = window(cell, *case, impl="reference")
    assert (impl_f, impl_r) == ("fast", "reference")
    assert_same(got, want, rtol=1e-12, atol_rel=1e-12)


def check_float32(cell, case64):
    """The float32 window of ``case64``: compiled = reference (float32) and = float64 truth, to F32_TOL."""
    _, truth = window(cell, *case64, impl="reference")
    case32 = [None if a is None else {k: v.astype(np.float32) for k, v in a.items()} if isinstance(a, dict)
              else a.astype(np.float32) for a in case64]
    impl, got = window(cell, *case32, impl="fast")
    _, want = window(cell, *case32, impl="reference")
    assert impl == "fast"
    assert_same(got, want, rtol=1e-5, atol_rel=F32_TOL)
    assert_same({k: v.astype(np.float64) for k, v in got.items()}, truth, rtol=1e-5, atol_rel=F32_TOL)


# float32 windows: rtol 1e-5 plus 1e-4 × the array's largest value. Up to 24 micro-steps
# amplify the rounding (and the compiled tanh's <= 7 ulp): over 400 drawn windows of each
# cell the compiled results were within 3.8e-5 × scale of the float64 truth (the float32
# reference within 1.2e-5, typical cases both below 2e-6).
F32_TOL = 1e-4


@pytest.mark.parametrize("cell", [rhn, dtrnn], ids=["rhn", "dtrnn"])
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_compiled_matches_reference_float32(cell, data):
    """RHN and DT(S)-RNN windows, float32: compiled = float32 reference and float64 truth, relative to each array's scale."""
    check_float32(cell, draw_window(data, cell, "float64"))


@pytest.mark.parametrize("cell", [rhn, dtrnn], ids=["rhn", "dtrnn"])
@pytest.mark.parametrize("variant", [True, False], ids=["coupled/shortcut", "uncoupled/plain"])
def test_non_contiguous_inputs_give_the_reference_results(cell, variant):
    """Strided / transposed views as xs, s0, masks, dys, ds_last and Fortran-ordered weights: compiled = reference."""
    T, B, n_in, n = 4, 3, 3, 5
    maker = small_rhn if cell is rhn else small_dt
    p, xs, s0, masks, dys, last = maker(variant, T=T, B=B, n_in=n_in, n=n, seed=5)
    rng = np.random.default_rng(9)
    big = rng.standard_normal((B, 2 * T, n_in))
    xs_v = big[:, ::2, :].transpose(1, 0, 2)  # (T, B, n_in), neither C- nor F-contiguous
    s0_v = np.asfortranarray(s0)  # F-ordered (B, n)
    dys_v = np.ascontiguousarray(dys.transpose(2, 1, 0)).transpose(2, 1, 0)  # same values, odd strides
    last_v = np.asfortranarray(last)
    masks_v = {k: np.asfortranarray(v) for k, v in masks.items()}
    p_v = {k: np.asfortranarray(v) for k, v in p.items()}
    assert not xs_v.flags.c_contiguous and not s0_v.flags.c_contiguous and not dys_v.flags.c_contiguous
    impl_f, got = window(cell, p_v, xs_v, s0_v, masks_v, dys_v, last_v, impl="fast")
    _, want = window(cell, p, np.ascontiguousarray(xs_v), s0, masks, dys, last, impl="reference")
    assert impl_f == "fast"
    assert_same(got, want, rtol=1e-12, atol_rel=1e-12)


# ----------------------------------------------------------------------------
# Gradients of the compiled path against central differences
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("coupled", [True, False], ids=["coupled", "uncoupled"])
@pytest.mark.parametrize("masks", ["none", "both"])
def test_rhn_compiled_gradients_match_central_differences(coupled, masks):
    """rhn.backward of the compiled path: every parameter, xs and s0 agree with central differences (rel < 1e-7)."""
    p, xs, s0, m, dys, last = small_rhn(coupled, T=3, B=2, n_in=2, n=3, depth=3, seed=11, masks=masks)
    assert rhn.forward(p, xs, s0, m, impl="fast")[1]["impl"] == "fast"
    errors = gradcheck.check_rhn(p, xs, s0, dys, m, last, impl="fast")
    assert set(errors) == set(p) | {"xs", "s0"}
    assert max(errors.values()) < 1e-7, errors


@pytest.mark.parametrize("shortcut", [True, False], ids=["dts", "dt"])
def test_dtrnn_compiled_gradients_match_central_differences(shortcut):
    """dtrnn.backward of the compiled path: random-direction checks of every parameter, xs and s0 (rel < 1e-7)."""
    p, xs, s0, m, dys, last = small_dt(shortcut, T=4, B=2, n_in=3, n=4, depth=3, seed=12)

    def loss(_):  # reads the perturbed-in-place arrays through the closure
        ys, cache = dtrnn.forward(p, xs, s0, m, impl="fast")
        assert cache["impl"] == "fast"
        return float(np.sum(ys * dys) + np.sum(ys[-1] * last))

    ys, cache = dtrnn.forward(p, xs, s0, m, impl="fast")
    grads, dxs, ds0 = dtrnn.backward(p, cache, dys, last)
    analytic = {**grads, "xs": dxs, "s0": ds0}
    assert set(grads) == set(p) and ("U" in grads) == shortcut
    for name, arr in {**p, "xs": xs, "s0": s0}.items():
        for seed in range(3):
            err = gradcheck.directional_check(loss, arr, analytic[name], seed=seed)
            assert err < 1e-7, (name, seed, err)


# ----------------------------------------------------------------------------
# What impl means
# ----------------------------------------------------------------------------
def test_resolve_on_numpy_with_the_compiled_path():
    """With numba: auto and fast resolve to the compiled path for both cells; reference stays reference."""
    xs = np.zeros((2, 1, 3))
    assert fast.resolve("auto", xs) == "fast"
    assert fast.resolve("fast", xs) == "fast"
    assert fast.resolve("auto", xs, cuda=False, numpy_gates=False) == "fast"
    assert fast.resolve("fast", xs, cuda=False, numpy_gates=False) == "fast"
    assert fast.resolve("reference", xs) == "reference"
    assert type(fast.gate_kernels(xs, True)) is COMPILED.CompiledGates
    p, xs, s0, m, _, _ = small_rhn()
    assert rhn.forward(p, xs, s0, m)[1]["impl"] == "fast"
    assert rhn.forward(p, xs, s0, m, impl="reference")[1]["impl"] == "reference"
    q, xs, s0, m, _, _ = small_dt()
    assert dtrnn.forward(q, xs, s0, m)[1]["impl"] == "fast"
    assert dtrnn.forward(q, xs, s0, m, impl="reference")[1]["impl"] == "reference"


def test_set_cpu_kernels_numpy_switches_the_compiled_path_off():
    """set_cpu_kernels("numpy"): auto -> reference, RHN fast -> ufunc kernels (= reference), DT fast -> ValueError."""
    assert fast.set_cpu_kernels("numpy") == "compiled"
    try:
        assert not fast.uses_compiled()
        xs = np.zeros((2, 1, 3))
        assert fast.resolve("auto", xs) == "reference"
        assert fast.resolve("fast", xs) == "fast"
        assert type(fast.gate_kernels(xs, False)).__name__ == "NumpyGates"
        p, xs, s0, m, dys, last = small_rhn(coupled=False)
        assert rhn.forward(p, xs, s0, m)[1]["impl"] == "reference"
        impl_f, got = window(rhn, p, xs, s0, m, dys, last, impl="fast")
        _, want = window(rhn, p, xs, s0, m, dys, last, impl="reference")
        assert impl_f == "fast"
        assert_same(got, want, rtol=1e-12, atol_rel=1e-12)

        q, xs, s0, m, _, _ = small_dt()
        assert dtrnn.forward(q, xs, s0, m)[1]["impl"] == "reference"
        with pytest.raises(ValueError, match=r"fast path on NumPy is the compiled one.*set_cpu_kernels") as err:
            dtrnn.forward(q, xs, s0, m, impl="fast")
        assert "impl='reference'" in str(err.value)
        with pytest.raises(ValueError, match="compiled one"):
            fast.resolve("fast", xs, cuda=False, numpy_gates=False)
    finally:
        assert fast.set_cpu_kernels("compiled") == "numpy"
    assert fast.uses_compiled()
    with pytest.raises(ValueError, match="CPU kernel variant"):
        fast.set_cpu_kernels("numba")
    assert fast.uses_compiled()


@pytest.mark.parametrize("cell", [rhn, dtrnn], ids=["rhn", "dtrnn"])
def test_array_api_strict_runs_the_reference(cell):
    """On array-api-strict arrays auto -> reference (same numbers as NumPy), fast -> ValueError."""
    be = backend.get("array_api_strict")
    p, xs, s0, m, dys, last = (small_rhn if cell is rhn else small_dt)(True)
    on = lambda a: None if a is None else be.to_device(a, dtype="float64")  # noqa: E731
    ps = {k: on(v) for k, v in p.items()}
    ms = {k: on(v) for k, v in m.items()}
    ys, cache = cell.forward(ps, on(xs), on(s0), ms, impl="auto")
    assert cache["impl"] == "reference" and backend.name_of(ys) == "array_api_strict"
    assert fast.resolve("auto", on(xs)) == "reference"
    ys_np, _ = cell.forward(p, xs, s0, m, impl="fast")
    np.testing.assert_allclose(backend.to_host(ys), ys_np, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="NumPy or CuPy"):
        cell.forward(ps, on(xs), on(s0), ms, impl="fast")


# ----------------------------------------------------------------------------
# Without numba, or with it turned off (fresh interpreters)
# ----------------------------------------------------------------------------
_SUBPROCESS_CHECK = textwrap.dedent("""
    import json, sys
    import numpy as np
    from rhn_np import dtrnn, fast, rhn

    mod, why = fast.compiled_status()
    rng = np.random.default_rng(0)
    p = rhn.init_params(3, 4, 2, coupled=False, init_scale=0.5, seed=1, dtype="float64")
    xs, s0 = rng.standard_normal((5, 2, 3)), rng.uniform(-1, 1, (2, 4))
    masks = {"x": (rng.random((2, 3)) < 0.7) / 0.7, "s": (rng.random((2, 4)) < 0.7) / 0.7}
    dys, last = rng.standard_normal((5, 2, 4)), rng.standard_normal((2, 4))
    out = {"module_is_none": mod is None, "why": why, "uses_compiled": fast.uses_compiled()}
    out["rhn_auto"] = rhn.forward(p, xs, s0, masks)[1]["impl"]
    res = {}
    for impl in ("fast", "reference"):
        ys, cache = rhn.forward(p, xs, s0, masks, impl=impl)
        grads, dxs, ds0 = rhn.backward(p, cache, dys, last)
        res[impl] = (cache["impl"], [ys, dxs, ds0, *grads.values()])
    out["rhn_fast"] = res["fast"][0]
    out["kernels"] = type(fast.gate_kernels(xs, False)).__name__
    out["rhn_fast_err"] = max(float(np.max(np.abs(a - b))) for a, b in zip(res["fast"][1], res["reference"][1]))
    q = dtrnn.init_params(3, 4, 2, shortcut=True, seed=1, dtype="float64")
    out["dt_auto"] = dtrnn.forward(q, xs, s0, masks)[1]["impl"]
    try:
        dtrnn.forward(q, xs, s0, masks, impl="fast")
        out["dt_fast_error"] = None
    except ValueError as err:
        out["dt_fast_error"] = str(err)
    out["numba_imported"] = sys.modules.get("numba") is not None
    print(json.dumps(out))
""")


def run_fresh(prelude="", env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "RHN_NUMBA"}
    env.update(env_extra or {}, OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", prelude + _SUBPROCESS_CHECK], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_without_numba_the_fast_path_is_the_ufunc_kernels():
    """numba hidden: no compiled module (reason: numba, rhn-np[cpu]), auto -> reference, RHN fast ok, DT fast fails."""
    out = run_fresh("import sys; sys.modules['numba'] = None\n")
    assert out["module_is_none"] and not out["uses_compiled"]
    assert "numba" in out["why"] and "rhn-np[cpu]" in out["why"], out["why"]
    assert out["rhn_auto"] == "reference" and out["dt_auto"] == "reference"
    assert out["rhn_fast"] == "fast" and out["kernels"] == "NumpyGates"
    assert out["rhn_fast_err"] < 1e-12
    msg = out["dt_fast_error"]
    assert msg is not None, "impl='fast' of the DT-RNN ran without numba"
    assert "compiled" in msg and "rhn-np[cpu]" in msg and "impl='reference'" in msg, msg
    assert not out["numba_imported"]


def test_rhn_numba_0_turns_the_compiled_path_off():
    """RHN_NUMBA=0: "turned off by RHN_NUMBA=0", numba not imported, auto -> reference, DT fast -> ValueError."""
    out = run_fresh(env_extra={"RHN_NUMBA": "0"})
    assert out["module_is_none"] and not out["uses_compiled"]
    assert out["why"] == "turned off by RHN_NUMBA=0"
    assert not out["numba_imported"]
    assert out["rhn_auto"] == "reference" and out["dt_auto"] == "reference"
    assert out["rhn_fast"] == "fast" and out["kernels"] == "NumpyGates" and out["rhn_fast_err"] < 1e-12
    assert out["dt_fast_error"] is not None and "RHN_NUMBA=0" in out["dt_fast_error"], out["dt_fast_error"]


def test_importing_the_package_does_not_import_numba():
    """import rhn_np (and its trainer) imports neither numba nor rhn_np.fast.compiled."""
    code = ("import sys, rhn_np, rhn_np.train, rhn_np.rhn, rhn_np.dtrnn, rhn_np.fast\n"
            "print(sys.modules.get('numba') is None, 'rhn_np.fast.compiled' not in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"]


# ----------------------------------------------------------------------------
# Pooled buffers
# ----------------------------------------------------------------------------
def _snapshot(cache, ys):
    return {k: np.array(cache[k]) for k in ("s_in", "h", "t", "c", "z", "s_prev") if cache.get(k) is not None} | {
        "ys": np.array(ys)}


def _arrays(cache, ys):
    return [cache[k] for k in ("s_in", "h", "t", "c", "z", "s_prev") if cache.get(k) is not None] + [ys]


@pytest.mark.parametrize("cell", [rhn, dtrnn], ids=["rhn", "dtrnn"])
def test_buffers_in_use_are_never_handed_out_again(cell):
    """A held cache, or only a view of it (cache["t"][0]), is never reused by later windows; its values stay."""
    assert buffers.ENABLED == (platform.python_implementation() == "CPython"
                               and getattr(sys, "_is_gil_enabled", lambda: True)())
    p, xs, s0, m, dys, last = (small_rhn if cell is rhn else small_dt)(False)
    key = "t" if cell is rhn else "z"
    ys1, cache1 = cell.forward(p, xs, s0, m, impl="fast")
    assert cache1["impl"] == "fast"
    held = _snapshot(cache1, ys1)
    cell.backward(p, cache1, dys, last)  # the backward's own pooled buffers must not touch the cache either
    for k in range(3):
        ys2, cache2 = cell.forward(p, xs * (k + 2), s0, m, impl="fast")
        cell.backward(p, cache2, dys, last)
        for a in _arrays(cache1, ys1):
            for b in _arrays(cache2, ys2):
                assert not np.shares_memory(a, b)
        del ys2, cache2
    now = _snapshot(cache1, ys1)
    for k in held:
        np.testing.assert_array_equal(now[k], held[k], err_msg=k)

    # only a view kept: its buffer stays out of the pool's hands, the rest may be reused
    view = cache1[key][0]
    kept = view.copy()
    del ys1, cache1, held, now
    for k in range(3):
        ys3, cache3 = cell.forward(p, xs * (k + 5), s0, m, impl="fast")
        for b in _arrays(cache3, ys3):
            assert not np.shares_memory(view, b)
        del ys3, cache3
    np.testing.assert_array_equal(view, kept)


@pytest.mark.parametrize("cell", [rhn, dtrnn], ids=["rhn", "dtrnn"])
def test_dropped_windows_are_reused(cell):
    """Windows whose results were dropped reuse the same memory: held_bytes stays flat over 20 windows."""
    if not buffers.ENABLED:
        pytest.skip("buffers.ENABLED is False here (not CPython with the GIL): the pool is numpy.empty")
    p, xs, s0, m, dys, last = (small_rhn if cell is rhn else small_dt)(True, T=6, B=4, n=7)
    key = "h" if cell is rhn else "z"
    buffers.release()
    try:
        held, pointers = [], []
        for k in range(20):
            ys, cache = cell.forward(p, xs, s0, m, impl="fast")
            grads, dxs, ds0 = cell.backward(p, cache, dys, last)
            pointers.append(cache[key].__array_interface__["data"][0])
            del ys, cache, grads, dxs, ds0
            held.append(buffers.held_bytes())
        # the first windows may find buffers still pinned (e.g. by numba's first call); then it is flat
        assert held[-1] == held[4], held
        assert len(set(held[4:])) == 1, held
        assert len(set(pointers[4:])) == 1, pointers
    finally:
        buffers.release()
    assert buffers.held_bytes() == 0


# ----------------------------------------------------------------------------
# Compile report
# ----------------------------------------------------------------------------
def test_warm_up_reports_every_loop_and_the_cache():
    """report() after warm_up(): first-call times of the 4 loops × float32/float64, an existing cache folder."""
    rep = COMPILED.warm_up()
    assert set(rep) == {"numba", "blas", "cache_dir", "first_call_s", "cache_hits", "cache_misses"}
    import numba

    assert rep["numba"] == numba.__version__ and rep["blas"] == COMPILED.REASON
    expected = {f"{name}[{dt}]" for name in LOOPS for dt in ("float32", "float64")}
    assert expected <= set(rep["first_call_s"]), rep["first_call_s"]
    assert all(isinstance(v, float) and v >= 0.0 for v in rep["first_call_s"].values())
    assert rep["cache_dir"] == COMPILED.CACHE_DIR and os.path.isdir(rep["cache_dir"])
    index = [f for _, _, files in os.walk(rep["cache_dir"]) for f in files if f.endswith(".nbi")]
    assert {name for name in LOOPS if any(f".{name}-" in f for f in index)} == set(LOOPS), index
    for name in LOOPS:  # each signature was compiled (miss) or loaded from disk (hit)
        assert rep["cache_hits"][name] + rep["cache_misses"][name] >= 2, (name, rep)


# ----------------------------------------------------------------------------
# Training: impl="fast" follows the reference run
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pydoc(data_home):
    """The pydoc corpus, its validation split cut to 20,000 characters (quick validations)."""
    from rhn_np import data

    ds = data.load("pydoc")
    return dataclasses.replace(ds, valid=ds.valid[:20_000])


@pytest.fixture
def spy(monkeypatch):
    """Counts of the compiled-path entry points called (fast.forward, fast.dt_forward)."""
    counts = {"forward": 0, "dt_forward": 0}
    for name in counts:
        real = getattr(fast, name)

        def wrapper(*a, _real=real, _name=name, **kw):
            counts[_name] += 1
            return _real(*a, **kw)

        monkeypatch.setattr(fast, name, wrapper)
    return counts


def train_curve(ds, tmp_path, impl, dtype, steps, spy, **kw):
    """Training losses of ``steps`` windows, the validation result of a small run, and how many
    calls of the compiled path (``spy``) training and validation made."""
    from rhn_np import train as T

    base = dict(dataset=ds.name, depth=2, hidden=32, batch_size=8, bptt=20, max_steps=steps, eval_every=steps,
                eval_batch_size=8, impl=impl, dtype=dtype, seed=0)
    base.update(kw)
    trainer = T.Trainer(T.Config(**base), tmp_path / f"{impl}-{dtype}", ds=ds, progress=False, out=lambda *a: None)
    before = dict(spy)
    losses = np.array([float(trainer.train_step()) for _ in range(steps)])
    trained = {k: spy[k] - before[k] for k in spy}
    valid = trainer.task.validate(trainer.params)
    validated = {k: spy[k] - before[k] - trained[k] for k in spy}
    return losses, valid, trainer, trained, validated


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float64", 1e-10)])
def test_training_with_fast_follows_the_reference_run(pydoc, tmp_path, spy, dtype, tol):
    """200 RHN steps on pydoc: impl="fast" loss curve and validation NLL = impl="reference"'s to tol (relative)."""
    ref, v_ref, _, trained, validated = train_curve(pydoc, tmp_path, "reference", dtype, 200, spy)
    assert trained["forward"] == validated["forward"] == 0  # the reference run never entered the fast path
    got, v_got, trainer, trained, validated = train_curve(pydoc, tmp_path, "fast", dtype, 200, spy)
    assert trained["forward"] == 200 and validated["forward"] > 0  # cfg.impl reached training and validation
    assert np.all(np.isfinite(ref)) and ref[-20:].mean() < 0.8 * ref[:20].mean()  # it learns
    np.testing.assert_allclose(got, ref, rtol=tol, atol=0)
    assert abs(v_got["nll"] - v_ref["nll"]) <= tol * abs(v_ref["nll"]), (v_got, v_ref)
    assert v_got["n_tokens"] == v_ref["n_tokens"]
    if dtype == "float64":  # sampling (tasks.sample, the CLI's) with either impl: the same text
        from rhn_np import tasks

        texts = {impl: tasks.sample(trainer.params, pydoc, length=60, seed=4, impl=impl)
                 for impl in ("fast", "reference")}
        assert texts["fast"] == texts["reference"]


def test_dt_rnn_training_with_fast_follows_the_reference_run(pydoc, tmp_path, spy):
    """30 DT-RNN training steps (float32): compiled loss curve and validation NLL = reference's to 1e-5 (relative)."""
    ref, v_ref, _, trained, validated = train_curve(pydoc, tmp_path, "reference", "float32", 30, spy, cell="dt_rnn")
    assert trained["dt_forward"] == validated["dt_forward"] == 0
    got, v_got, _, trained, validated = train_curve(pydoc, tmp_path, "fast", "float32", 30, spy, cell="dt_rnn")
    assert trained["dt_forward"] == 30 and validated["dt_forward"] > 0
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=0)
    assert abs(v_got["nll"] - v_ref["nll"]) <= 1e-5 * abs(v_ref["nll"])


@pytest.fixture(scope="module")
def jsb(data_home):
    """JSB Chorales from RHN_DATA_DIR (or the download cache of data_home, without downloading), cut small."""
    from rhn_np import data

    root = os.environ.get("RHN_DATA_DIR")
    try:
        ds = data.load("jsb", root=root) if root else data.load("jsb", download=False)
    except (data.DataNotFoundError, OSError) as err:
        pytest.skip(f"JSB Chorales not reachable (set RHN_DATA_DIR to the folder holding jsb_chorales/): {err}")
    return dataclasses.replace(ds, train=ds.train[:48], valid=ds.valid[:16])


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float64", 1e-10)])
def test_jsb_training_with_fast_follows_the_reference_run(jsb, tmp_path, spy, dtype, tol):
    """20 RHN steps on JSB piano rolls (dense inputs, masked steps): fast loss curve and valid NLL = reference's."""
    kw = dict(hidden=24, batch_size=4, emb=None, drop_x=0.0, optimizer="adam", lr=0.01)
    ref, v_ref, _, trained, validated = train_curve(jsb, tmp_path, "reference", dtype, 20, spy, **kw)
    assert trained["forward"] == validated["forward"] == 0
    got, v_got, _, trained, validated = train_curve(jsb, tmp_path, "fast", dtype, 20, spy, **kw)
    assert trained["forward"] == 20 and validated["forward"] > 0
    np.testing.assert_allclose(got, ref, rtol=tol, atol=0)
    assert abs(v_got["nll"] - v_ref["nll"]) <= tol * abs(v_ref["nll"])
