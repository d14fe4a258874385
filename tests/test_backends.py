"""Backends: array-api-strict's fake device, host/device crossings, CuPy and the fast path.

The NumPy float64 reference (``impl="reference"``) is the truth every other
backend and implementation is compared with.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import BACKENDS, host, make_inputs, on, requires_cupy
from rhn_np import backend, gradcheck, rhn

EXACT = 1e-12


def run_layer(be, *, coupled, use_masks, use_ds_last, dtype="float64", impl="reference", T=4, B=3, n_in=3, n=5, depth=3, seed=0):
    """forward + backward on backend ``be``; returns the raw outputs and the host float64 inputs."""
    p_host = rhn.init_params(n_in, n, depth, coupled=coupled, init_scale=0.5, transform_bias=-0.5, seed=seed, dtype="float64")
    xs, s0, dys, ds_last, masks = make_inputs(T, B, n_in, n, seed=seed, masks=use_masks)
    ds_last = ds_last if use_ds_last else None
    args = (p_host, xs, s0, dys, ds_last, masks)
    params = on(be, p_host, dtype)
    ys, cache = rhn.forward(params, on(be, xs, dtype), on(be, s0, dtype), on(be, masks, dtype), impl=impl)
    grads, dxs, ds0 = rhn.backward(params, cache, on(be, dys, dtype), on(be, ds_last, dtype))
    return (ys, grads, dxs, ds0, cache), args


def reference(p, xs, s0, dys, ds_last, masks):
    ys, cache = rhn.forward(p, xs, s0, masks, impl="reference")
    grads, dxs, ds0 = rhn.backward(p, cache, dys, ds_last)
    return ys, grads, dxs, ds0


def assert_layer_close(out, ref, tol):
    """Every output of forward/backward within ``tol`` relative error of the reference."""
    ys, grads, dxs, ds0 = (host(o) for o in out[:4])
    r_ys, r_grads, r_dxs, r_ds0 = ref
    errors = {"ys": gradcheck.rel_error(ys, r_ys), "dxs": gradcheck.rel_error(dxs, r_dxs), "ds0": gradcheck.rel_error(ds0, r_ds0)}
    assert set(grads) == set(r_grads)
    errors.update({k: gradcheck.rel_error(grads[k], r_grads[k]) for k in r_grads})
    bad = {k: e for k, e in errors.items() if not e <= tol}
    assert not bad, f"relative errors above {tol}: {bad}"


GRID = [
    pytest.param(c, m, d, id=f"{'coupled' if c else 'uncoupled'}-{'masks' if m else 'nomask'}-{'dslast' if d else 'nodslast'}")
    for c in (True, False)
    for m in (False, True)
    for d in (False, True)
]


# ----------------------------------------------------------------------------
# array-api-strict: a fake non-CPU device
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("coupled,use_masks,use_ds_last", GRID)
def test_strict_device_matches_numpy(coupled, use_masks, use_ds_last):
    be = backend.get("array_api_strict")
    out, args = run_layer(be, coupled=coupled, use_masks=use_masks, use_ds_last=use_ds_last)
    assert_layer_close(out, reference(*args), EXACT)


def test_strict_results_stay_on_the_device(monkeypatch):
    be = backend.get("array_api_strict")
    assert be.device != be.xp.Device("CPU_DEVICE")

    def no_host(x):
        raise AssertionError("rhn.forward/backward crossed to the host")

    monkeypatch.setattr(backend, "to_host", no_host)  # the one named device -> host crossing
    (ys, grads, dxs, ds0, cache), _ = run_layer(be, coupled=False, use_masks=True, use_ds_last=True)
    for a in [ys, dxs, ds0, *grads.values(), *(cache[k] for k in ("s_in", "h", "t", "c"))]:
        assert backend.name_of(a) == "array_api_strict"
        assert a.device == be.device


@pytest.mark.parametrize("be", BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_to_device_to_host_round_trip(be, dtype):
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(dtype)
    d = backend.to_device(x, be)
    assert backend.name_of(d) == be.name
    assert backend.device_of(d) == be.device
    assert d.dtype == getattr(be.xp, dtype)
    back = backend.to_host(d)
    assert isinstance(back, np.ndarray) and back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, x)
    # lists and scalars, with a cast on the host
    np.testing.assert_array_equal(backend.to_host(be.to_device([[1, 2], [3, 4]], dtype=dtype)), np.array([[1, 2], [3, 4]], dtype))
    assert backend.to_host(be.to_device(2.5, dtype=dtype)).shape == ()
    # an array already on a backend travels through the host to another one
    np.testing.assert_array_equal(backend.to_host(backend.to_device(d, "numpy")), x)


@pytest.mark.parametrize("be", BACKENDS, indirect=True)
def test_scatter_add_rows_accumulates_repeated_indices(be):
    rng = np.random.default_rng(1)
    target = rng.standard_normal((6, 3))
    indices = np.array([0, 2, 2, 5, 0, 2, 1])
    values = rng.standard_normal((7, 3))
    expected = target.copy()
    for k, i in enumerate(indices):  # the definition, one row at a time
        expected[i] += values[k]
    out = backend.scatter_add_rows(on(be, target), be.to_device(indices, dtype="int64"), on(be, values))
    assert backend.name_of(out) == be.name
    np.testing.assert_allclose(host(out), expected, rtol=0, atol=EXACT)
    assert not np.allclose(expected[2], target[2] + values[1])  # a lost repeat would be caught


def assert_names_argument_and_backends(info, where):
    msg = str(info.value)
    assert where in msg, msg
    assert "numpy" in msg and "array_api_strict" in msg and "to_device" in msg, msg


@pytest.mark.parametrize("where", ["xs", "s0", "masks"])
def test_numpy_input_with_strict_params_raises_type_error_naming_it(where):
    be = backend.get("array_api_strict")
    params = rhn.init_params(2, 3, 2, dtype="float64", backend=be)
    xs, s0, _, _, masks = make_inputs(2, 1, 2, 3, masks=True)
    args = {"xs": on(be, xs), "s0": on(be, s0), "masks": on(be, masks)}
    args[where] = xs if where == "xs" else s0 if where == "s0" else {"x": on(be, masks["x"]), "s": masks["s"]}
    with pytest.raises(TypeError) as info:
        rhn.forward(params, args["xs"], args["s0"], args["masks"])
    assert_names_argument_and_backends(info, where)


@pytest.mark.parametrize("where", ["dys", "ds_last"])
def test_numpy_gradient_with_strict_cache_raises_type_error_naming_it(where):
    be = backend.get("array_api_strict")
    params = rhn.init_params(2, 3, 2, dtype="float64", backend=be)
    xs, s0, dys, ds_last, _ = make_inputs(2, 1, 2, 3)
    _, cache = rhn.forward(params, on(be, xs), on(be, s0))
    args = {"dys": on(be, dys), "ds_last": on(be, ds_last)}
    args[where] = dys if where == "dys" else ds_last
    with pytest.raises(TypeError) as info:
        rhn.backward(params, cache, args["dys"], args["ds_last"])
    assert_names_argument_and_backends(info, where)


def test_namespace_mixing_names_the_backends():
    strict = backend.get("array_api_strict")
    with pytest.raises(TypeError, match=r"different backends.*array_api_strict, numpy.*to_device"):
        backend.namespace(np.zeros(2), strict.zeros((2,), "float64"))


def test_get_auto_and_available():
    auto = backend.get("auto")
    assert auto.name == ("cupy" if backend.cupy_available() else "numpy")
    assert backend.get(auto) is auto
    assert backend.get("NumPy").name == "numpy"
    assert backend.get("array-api-strict").name == "array_api_strict"
    names = backend.available()
    assert names[0] == "numpy" and "array_api_strict" in names
    assert ("cupy" in names) == backend.cupy_available()
    if not backend.cupy_available():
        assert backend.cupy_unavailable_reason()


# ----------------------------------------------------------------------------
# CuPy (skipped, and reported as skipped, without a GPU)
# ----------------------------------------------------------------------------
CUPY_TOL = {"float64": 1e-10, "float32": 1e-4}


@requires_cupy
@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["reference", "fast"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("coupled,use_masks,use_ds_last", GRID)
def test_cupy_matches_numpy(impl, dtype, coupled, use_masks, use_ds_last):
    be = backend.get("cupy")
    out, args = run_layer(be, coupled=coupled, use_masks=use_masks, use_ds_last=use_ds_last, dtype=dtype, impl=impl,
                          T=7, B=4, n_in=6, n=9, depth=3, seed=3)
    ys, grads, dxs, ds0, cache = out
    assert cache["impl"] == impl
    for a in [ys, dxs, ds0, *grads.values()]:
        assert backend.name_of(a) == "cupy" and a.dtype == getattr(be.xp, dtype)
    assert_layer_close(out, reference(*args), CUPY_TOL[dtype])


@requires_cupy
@pytest.mark.gpu
def test_cupy_auto_uses_the_fast_path_and_matches_reference():
    be = backend.get("cupy")
    out_auto, args = run_layer(be, coupled=True, use_masks=True, use_ds_last=True, impl="auto", seed=4)
    out_ref, _ = run_layer(be, coupled=True, use_masks=True, use_ds_last=True, impl="reference", seed=4)
    assert out_auto[4]["impl"] == "fast" and out_ref[4]["impl"] == "reference"
    assert_layer_close(out_auto, tuple(host(o) for o in out_ref[:4]), CUPY_TOL["float64"])


@requires_cupy
@pytest.mark.gpu
@pytest.mark.parametrize("coupled", [True, False], ids=["coupled", "uncoupled"])
def test_cupy_gradients_match_central_differences(coupled):
    """The GPU backward against numbers that never touched the GPU backward."""
    be = backend.get("cupy")
    (ys, grads, dxs, ds0, _), (p, xs, s0, dys, ds_last, masks) = run_layer(
        be, coupled=coupled, use_masks=True, use_ds_last=True, impl="fast", T=3, B=2, n_in=2, n=3, depth=2, seed=5
    )
    num = gradcheck.numerical_gradient(lambda _: gradcheck.rhn_loss(p, xs, s0, dys, masks, ds_last), p["R_T"])
    assert gradcheck.rel_error(host(grads["R_T"]), num) < 1e-6


# ----------------------------------------------------------------------------
# The fast path on NumPy against the reference
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("coupled,use_masks,use_ds_last", GRID)
def test_numpy_fast_matches_reference(coupled, use_masks, use_ds_last, cpu_kernels):
    be = backend.get("numpy")
    out, args = run_layer(be, coupled=coupled, use_masks=use_masks, use_ds_last=use_ds_last, impl="fast")
    assert out[4]["impl"] == "fast"
    assert_layer_close(out, reference(*args), EXACT)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # cpu_kernels is a setting, not state
@given(data=st.data())
def test_numpy_fast_matches_reference_drawn(data, cpu_kernels):
    kw = dict(
        T=data.draw(st.integers(1, 5), label="T"),
        B=data.draw(st.integers(1, 3), label="B"),
        n_in=data.draw(st.integers(1, 4), label="n_in"),
        n=data.draw(st.integers(1, 6), label="n"),
        depth=data.draw(st.integers(1, 4), label="depth"),
        seed=data.draw(st.integers(0, 2**16), label="seed"),
    )
    flags = dict(
        coupled=data.draw(st.booleans(), label="coupled"),
        use_masks=data.draw(st.booleans(), label="masks"),
        use_ds_last=data.draw(st.booleans(), label="ds_last"),
    )
    out, args = run_layer(backend.get("numpy"), impl="fast", **flags, **kw)
    assert_layer_close(out, reference(*args), EXACT)


def test_numpy_fast_leaves_its_inputs_alone_and_same_cache_size(cpu_kernels):
    p = rhn.init_params(3, 4, 2, coupled=False, init_scale=0.5, seed=6, dtype="float64")
    xs, s0, dys, ds_last, masks = make_inputs(3, 2, 3, 4, seed=6, masks=True)
    before = [a.copy() for a in (xs, s0, dys, ds_last, masks["x"], masks["s"], *p.values())]
    _, c_fast = rhn.forward(p, xs, s0, masks, impl="fast")
    rhn.backward(p, c_fast, dys, ds_last)
    rhn.backward(p, c_fast, dys, ds_last)  # twice: the cache is not consumed
    after = [xs, s0, dys, ds_last, masks["x"], masks["s"], *p.values()]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    _, c_ref = rhn.forward(p, xs, s0, masks, impl="reference")
    assert rhn.cache_nbytes(c_fast) == rhn.cache_nbytes(c_ref) == 4 * 2 * 3 * 2 * 4 * 8
    g1, _, _ = rhn.backward(p, c_fast, dys, ds_last)
    g2, _, _ = rhn.backward(p, c_ref, dys, ds_last)
    for k in p:
        np.testing.assert_allclose(g1[k], g2[k], rtol=0, atol=EXACT)


def test_to_device_takes_dtype_objects_of_any_backend_and_of_finds_an_arrays_backend():
    strict = pytest.importorskip("array_api_strict")
    x = np.arange(3)
    cases = [("float64", strict.float64), (np.float64, strict.float64), (np.dtype("float32"), strict.float32),
             (strict.float64, strict.float64), (strict.float32, strict.float32)]
    for dtype, expected in cases:
        assert backend.to_device(x, "array_api_strict", dtype=dtype).dtype == expected, dtype
    p = backend.to_device(np.zeros(2), "array_api_strict", dtype="float32")
    be = backend.of(p)
    assert be.name == "array_api_strict" and be.device == p.device
    q = be.to_device(np.ones(2), dtype=p.dtype)
    assert q.dtype == strict.float32 and q.device == p.device
