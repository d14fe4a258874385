"""The RHN layer (rhn_np.rhn): gradients, step API, truncated BPTT, invariants.

Numbers are compared in float64 throughout (float32 appears only where the dtype
itself is under test).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from conftest import BACKENDS, LAYER_BACKENDS, draw_layer, make_inputs, on
from rhn_np import backend, gradcheck, rhn

GRAD_TOL = 1e-6  # central differences, float64, h = 1e-5
EXACT = 1e-12  # two float64 computations of the same sum in a different grouping


# ----------------------------------------------------------------------------
# The checkers themselves (rhn_np.gradcheck) must be able to say "wrong"
# ----------------------------------------------------------------------------
def test_rel_error_values():
    assert gradcheck.rel_error(np.zeros(3), np.zeros(3)) == 0.0
    assert gradcheck.rel_error([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert gradcheck.rel_error([1.0, -2.0], [1.0, -2.2]) == pytest.approx(0.2 / 4.2)
    assert gradcheck.rel_error(1e-300, -1e-300) == pytest.approx(1.0)


def test_numerical_gradient_of_a_known_function():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4))
    x0 = x.copy()
    df = rng.standard_normal((3, 4))
    num = gradcheck.numerical_gradient(lambda z: np.sin(z) * z**2, x, df)
    exact = (np.cos(x0) * x0**2 + 2 * x0 * np.sin(x0)) * df
    assert gradcheck.rel_error(num, exact) < 1e-9
    assert np.array_equal(x, x0), "numerical_gradient must restore x"
    # scalar f, no df: gradient of a quadratic form
    A = rng.standard_normal((4, 4))
    v = rng.standard_normal(4)
    num = gradcheck.numerical_gradient(lambda z: z @ A @ z, v)
    assert gradcheck.rel_error(num, (A + A.T) @ v) < 1e-9


def test_directional_check_accepts_right_and_rejects_wrong_gradient():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 30))
    f = lambda z: np.sum(np.tanh(z) ** 3)  # noqa: E731
    grad = 3 * np.tanh(x) ** 2 * (1 - np.tanh(x) ** 2)
    for seed in range(3):
        assert gradcheck.directional_check(f, x, grad, seed=seed) < 1e-8
    wrong = grad.copy()
    wrong[7, 3] += 1.0  # one wrong entry out of 1200
    assert max(gradcheck.directional_check(f, x, wrong, seed=s) for s in range(3)) > 1e-4


def test_check_rhn_catches_a_planted_backward_bug(monkeypatch):
    params = rhn.init_params(2, 3, 2, init_scale=0.5, transform_bias=0.0, seed=3, dtype="float64")
    xs, s0, dys, ds_last, _ = make_inputs(3, 2, 2, 3, seed=3)
    assert max(gradcheck.check_rhn(params, xs, s0, dys, ds_last=ds_last).values()) < GRAD_TOL

    right = rhn.micro_backward

    def wrong(ds, s_in, h, t, c=None):  # forgets tanh' in ∂L/∂a_H
        da, ds_carry = right(ds, s_in, h, t, c)
        n = s_in.shape[-1]
        da[:, :n] = ds * t
        return da, ds_carry

    monkeypatch.setattr(rhn, "micro_backward", wrong)
    errors = gradcheck.check_rhn(params, xs, s0, dys, ds_last=ds_last)
    assert errors["W_H"] > 1e-3 and errors["R_H"] > 1e-3 and errors["xs"] > 1e-3
    errors = gradcheck.check_rhn(params, xs, s0, dys, ds_last=ds_last, directional=True)
    assert errors["W_H"] > 1e-3


def test_check_rhn_refuses_float32():
    params = rhn.init_params(2, 3, 1, dtype="float32")
    xs, s0, dys, _, _ = make_inputs(2, 1, 2, 3)
    with pytest.raises(TypeError, match="float64"):
        gradcheck.check_rhn(params, xs.astype(np.float32), s0.astype(np.float32), dys.astype(np.float32))


# ----------------------------------------------------------------------------
# Every gradient against central differences (Hypothesis)
# ----------------------------------------------------------------------------
@given(data=st.data())
def test_every_gradient_matches_central_differences(data):
    params, xs, s0, dys, ds_last, masks = draw_layer(data)
    errors = gradcheck.check_rhn(params, xs, s0, dys, masks, ds_last)
    assert set(errors) == set(params) | {"xs", "s0"}
    bad = {k: e for k, e in errors.items() if not e < GRAD_TOL}
    assert not bad, f"relative errors above {GRAD_TOL}: {bad}"


@pytest.mark.parametrize("coupled", [True, False], ids=["coupled", "uncoupled"])
@pytest.mark.parametrize("use_masks", [False, True], ids=["nomask", "masks"])
def test_directional_check_on_larger_shapes(coupled, use_masks):
    T, B, n_in, n, depth = 12, 6, 10, 24, 3
    params = rhn.init_params(n_in, n, depth, coupled=coupled, init_scale=0.3, transform_bias=-1.0, seed=5, dtype="float64")
    xs, s0, dys, ds_last, masks = make_inputs(T, B, n_in, n, seed=5, masks=use_masks)
    for seed in range(2):
        errors = gradcheck.check_rhn(params, xs, s0, dys, masks, ds_last, directional=True, seed=seed)
        bad = {k: e for k, e in errors.items() if not e < GRAD_TOL}
        assert not bad, f"directional relative errors above {GRAD_TOL}: {bad}"


# ----------------------------------------------------------------------------
# step_forward / step_backward (the CS231n-style teaching API)
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("coupled", [True, False], ids=["coupled", "uncoupled"])
def test_step_api_equals_sequence_api_at_T1(coupled):
    params = rhn.init_params(3, 4, 3, coupled=coupled, init_scale=0.5, transform_bias=-0.5, seed=7, dtype="float64")
    xs, s0, dys, _, masks = make_inputs(1, 2, 3, 4, seed=7, masks=True)
    s, step_cache = rhn.step_forward(params, xs[0], s0, masks)
    ys, cache = rhn.forward(params, xs, s0, masks, impl="reference")  # the step API runs the reference
    assert s.shape == (2, 4)
    np.testing.assert_array_equal(s, ys[0])
    grads, dx, ds_prev = rhn.step_backward(params, step_cache, dys[0])
    grads_seq, dxs, ds0 = rhn.backward(params, cache, dys)
    assert dx.shape == (2, 3) and ds_prev.shape == (2, 4)
    np.testing.assert_array_equal(dx, dxs[0])
    np.testing.assert_array_equal(ds_prev, ds0)
    for k in params:
        np.testing.assert_array_equal(grads[k], grads_seq[k])


@given(data=st.data())
def test_step_forward_T_times_equals_forward_and_step_backward_chains(data):
    params, xs, s0, dys, _, masks = draw_layer(data, ds_last=False)
    T = xs.shape[0]
    ys, cache = rhn.forward(params, xs, s0, masks)
    s, caches = s0, []
    for t in range(T):
        s, c = rhn.step_forward(params, xs[t], s, masks)
        caches.append(c)
        np.testing.assert_allclose(s, ys[t], rtol=0, atol=EXACT)
    # BPTT by hand: carry ds_prev backwards, sum the parameter gradients
    grads_ref, dxs_ref, ds0_ref = rhn.backward(params, cache, dys)
    total = {k: np.zeros_like(v) for k, v in params.items()}
    ds = np.zeros_like(s0)
    for t in reversed(range(T)):
        g, dx, ds = rhn.step_backward(params, caches[t], dys[t] + ds)
        np.testing.assert_allclose(dx, dxs_ref[t], rtol=0, atol=EXACT)
        for k in total:
            total[k] += g[k]
    np.testing.assert_allclose(ds, ds0_ref, rtol=0, atol=EXACT)
    for k in params:
        np.testing.assert_allclose(total[k], grads_ref[k], rtol=0, atol=EXACT * max(1.0, np.abs(grads_ref[k]).max()))


# ----------------------------------------------------------------------------
# Truncated BPTT: two windows chained through ds_last == one long window
# ----------------------------------------------------------------------------
@given(data=st.data())
def test_two_chained_windows_equal_one_double_window(data):
    params, xs1, s0, dys1, ds_last, masks = draw_layer(data)
    xs2, _, dys2, _, _ = make_inputs(*xs1.shape, s0.shape[1], seed=data.draw(st.integers(0, 99), label="seed2"))
    xs = np.concatenate([xs1, xs2])
    dys = np.concatenate([dys1, dys2])

    ys, cache = rhn.forward(params, xs, s0, masks)
    grads, dxs, ds0 = rhn.backward(params, cache, dys, ds_last)

    ys1, c1 = rhn.forward(params, xs1, s0, masks)
    ys2, c2 = rhn.forward(params, xs2, ys1[-1], masks)  # the state crosses the window boundary
    g2, dxs2, ds_mid = rhn.backward(params, c2, dys2, ds_last)
    g1, dxs1, ds0_chained = rhn.backward(params, c1, dys1, ds_mid)  # ... and so does its gradient

    np.testing.assert_allclose(np.concatenate([ys1, ys2]), ys, rtol=0, atol=EXACT)
    np.testing.assert_allclose(ds0_chained, ds0, rtol=0, atol=EXACT)
    np.testing.assert_allclose(np.concatenate([dxs1, dxs2]), dxs, rtol=0, atol=EXACT)
    for k in params:
        np.testing.assert_allclose(g1[k] + g2[k], grads[k], rtol=0, atol=EXACT * max(1.0, np.abs(grads[k]).max()))


def test_ds_last_is_not_ignored():
    params = rhn.init_params(2, 3, 2, init_scale=0.5, transform_bias=0.0, seed=11, dtype="float64")
    xs, s0, dys, ds_last, _ = make_inputs(4, 2, 2, 3, seed=11)
    ys, cache = rhn.forward(params, xs, s0)
    _, _, ds0_a = rhn.backward(params, cache, dys)
    _, _, ds0_b = rhn.backward(params, cache, dys, ds_last)
    dys_b = dys.copy()
    dys_b[-1] += ds_last  # ds_last arrives where dys[T-1] does
    _, _, ds0_c = rhn.backward(params, cache, dys_b)
    assert gradcheck.rel_error(ds0_a, ds0_b) > 1e-3
    np.testing.assert_allclose(ds0_b, ds0_c, rtol=0, atol=EXACT)


# ----------------------------------------------------------------------------
# Invariants of the model
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("use_masks", [False, True], ids=["nomask", "masks"])
def test_very_negative_transform_bias_carries_the_state(use_masks):
    params = rhn.init_params(4, 5, 3, init_scale=0.5, transform_bias=-40.0, seed=13, dtype="float64")
    xs, s0, _, _, masks = make_inputs(6, 3, 4, 5, seed=13, masks=use_masks)
    ys, _ = rhn.forward(params, xs, s0, masks)
    for t in range(6):
        np.testing.assert_allclose(ys[t], s0, rtol=0, atol=EXACT)
    # and the control: a zero bias does change the state
    params["b_T"] = np.zeros_like(params["b_T"])
    ys, _ = rhn.forward(params, xs, s0, masks)
    assert np.abs(ys[-1] - s0).max() > 1e-3


@given(data=st.data())
def test_coupled_states_stay_inside_the_unit_interval(data):
    """From s0 = 0, s = s_in + t ⊙ (h - s_in) is a convex mix of values in (-1, 1)."""
    n_in, n, depth = data.draw(st.integers(1, 6), label="n_in"), data.draw(st.integers(1, 8), label="n"), data.draw(st.integers(1, 4), label="depth")
    # 12-25x the paper's 0.04, yet pre-activations stay far from the ~19 where float64
    # tanh rounds to exactly 1 (that regime: test_coupled_states_bounded_with_huge_weights)
    init_scale = data.draw(st.floats(0.5, 1.0), label="init_scale")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    params = rhn.init_params(n_in, n, depth, init_scale=init_scale, transform_bias=0.0, seed=seed, dtype="float64")
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((10, 4, n_in))
    ys, cache = rhn.forward(params, xs, np.zeros((4, n)))
    assert np.abs(ys).max() < 1.0
    assert np.abs(cache["s_in"]).max() < 1.0


def test_coupled_states_bounded_with_huge_weights():
    """With weights 1000x the paper's, tanh and σ round to exactly ±1/0/1 in float64:
    the open interval becomes closed, but the bound |s| <= 1 still holds exactly."""
    params = rhn.init_params(5, 8, 4, init_scale=40.0, transform_bias=0.0, seed=17, dtype="float64")
    xs = 10.0 * np.random.default_rng(17).standard_normal((20, 8, 5))
    ys, _ = rhn.forward(params, xs, np.zeros((8, 8)))
    assert np.abs(ys).max() <= 1.0
    assert np.abs(ys).max() > 0.99  # the test does reach the saturated regime


@pytest.mark.parametrize("be", LAYER_BACKENDS, indirect=True)
@pytest.mark.parametrize("coupled", [True, False], ids=["coupled", "uncoupled"])
def test_float32_in_float32_out(be, coupled):
    params = rhn.init_params(3, 4, 2, coupled=coupled, seed=19, dtype="float32", backend=be)
    xs, s0, dys, ds_last, masks = make_inputs(3, 2, 3, 4, seed=19, masks=True)
    xs, s0, dys, ds_last, masks = (on(be, a, "float32") for a in (xs, s0, dys, ds_last, masks))
    ys, cache = rhn.forward(params, xs, s0, masks)
    grads, dxs, ds0 = rhn.backward(params, cache, dys, ds_last)
    f32 = be.xp.float32
    assert ys.dtype == f32 and dxs.dtype == f32 and ds0.dtype == f32
    assert all(g.dtype == f32 for g in grads.values())
    assert all(cache[k].dtype == f32 for k in ("s_in", "h", "t"))


def test_state_mask_scales_only_the_transform_path():
    """m_s = 0: every transform sees a zero state, the carry still carries s (paper, TF code)."""
    n_in, n, depth, B = 3, 4, 3, 2
    params = rhn.init_params(n_in, n, depth, init_scale=0.7, transform_bias=-0.3, seed=23, dtype="float64")
    xs, s0, _, _, _ = make_inputs(1, B, n_in, n, seed=23, s0_scale=0.9)
    zero = {"s": np.zeros((B, n))}
    ys, _ = rhn.forward(params, xs, s0, zero)

    sig = lambda a: 1.0 / (1.0 + np.exp(-a))  # noqa: E731
    s = s0
    for l in range(depth):  # Eqs. 6-9 with R_G s = 0 (masked), carry on the true s
        x_part = (lambda W: xs[0] @ W) if l == 0 else (lambda W: 0.0)
        h = np.tanh(x_part(params["W_H"]) + params["b_H"][l])
        t = sig(x_part(params["W_T"]) + params["b_T"][l])
        s = h * t + s * (1.0 - t)
    np.testing.assert_allclose(ys[0], s, rtol=0, atol=EXACT)
    # ... and it is a real mask: m_s = 1 gives the unmasked layer, which differs
    ys_one, _ = rhn.forward(params, xs, s0, {"s": np.ones((B, n))})
    ys_none, _ = rhn.forward(params, xs, s0)
    np.testing.assert_array_equal(ys_one, ys_none)
    assert np.abs(ys_none - ys).max() > 1e-3


def test_state_mask_scales_the_transform_input_by_its_value():
    params = rhn.init_params(2, 3, 2, init_scale=0.7, transform_bias=0.0, seed=29, dtype="float64")
    xs, s0, _, _, _ = make_inputs(1, 2, 2, 3, seed=29)
    m_s = np.random.default_rng(29).uniform(0.0, 2.0, (2, 3))
    # First micro-step by hand: s0 ⊙ m_s enters the R products, s0 itself the carry.
    _, cache = rhn.forward(params, xs, s0, {"s": m_s})
    a_H = xs[0] @ params["W_H"] + (s0 * m_s) @ params["R_H"][0] + params["b_H"][0]
    a_T = xs[0] @ params["W_T"] + (s0 * m_s) @ params["R_T"][0] + params["b_T"][0]
    h, t = np.tanh(a_H), 1.0 / (1.0 + np.exp(-a_T))
    np.testing.assert_allclose(cache["h"][0, 0], h, rtol=0, atol=EXACT)
    np.testing.assert_allclose(cache["t"][0, 0], t, rtol=0, atol=EXACT)
    np.testing.assert_allclose(cache["s_in"][1, 0], h * t + s0 * (1 - t), rtol=0, atol=EXACT)


@pytest.mark.parametrize("coupled", [True, False], ids=["coupled", "uncoupled"])
def test_input_mask_multiplies_the_input(coupled):
    params = rhn.init_params(3, 4, 2, coupled=coupled, init_scale=0.5, transform_bias=0.0, seed=31, dtype="float64")
    xs, s0, dys, _, masks = make_inputs(4, 2, 3, 4, seed=31, masks=True)
    m_x = masks["x"]
    assert (m_x == 0).any() and (m_x > 1).any()
    ys_m, cache_m = rhn.forward(params, xs, s0, {"x": m_x})
    ys_p, cache_p = rhn.forward(params, xs * m_x, s0)  # the mask is shared by all T steps
    np.testing.assert_allclose(ys_m, ys_p, rtol=0, atol=EXACT)
    g_m, dxs_m, _ = rhn.backward(params, cache_m, dys)
    g_p, dxs_p, _ = rhn.backward(params, cache_p, dys)
    np.testing.assert_allclose(dxs_m, dxs_p * m_x, rtol=0, atol=EXACT)  # chain rule through x ⊙ m_x
    for k in params:
        np.testing.assert_allclose(g_m[k], g_p[k], rtol=0, atol=EXACT)


# ----------------------------------------------------------------------------
# init_params
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("coupled", [True, False], ids=["coupled", "uncoupled"])
def test_init_params_shapes_and_ranges(coupled):
    n_in, n, depth = 3, 5, 4
    p = rhn.init_params(n_in, n, depth, coupled=coupled, transform_bias=-2.5, init_scale=0.04, seed=0, dtype="float64")
    gates = ("H", "T") if coupled else ("H", "T", "C")
    expected = {}
    for g in gates:
        expected.update({f"W_{g}": (n_in, n), f"R_{g}": (depth, n, n), f"b_{g}": (depth, n)})
    assert {k: v.shape for k, v in p.items()} == expected
    assert rhn.param_shapes(n_in, n, depth, coupled) == expected
    np.testing.assert_array_equal(p["b_T"], np.full((depth, n), -2.5))
    for k, v in p.items():
        assert v.dtype == np.float64
        if k != "b_T":
            assert np.abs(v).max() <= 0.04
            assert np.abs(v).max() > 0.02  # really drawn from U(-0.04, 0.04), not zeros
            assert np.unique(v).size == v.size


def test_init_params_uncoupled_adds_exactly_the_carry_gate():
    a = rhn.init_params(2, 3, 2, coupled=True)
    b = rhn.init_params(2, 3, 2, coupled=False)
    assert set(b) - set(a) == {"W_C", "R_C", "b_C"}
    assert set(a) <= set(b)


def test_init_params_seed():
    a = rhn.init_params(3, 4, 2, seed=5, dtype="float64")
    b = rhn.init_params(3, 4, 2, seed=5, dtype="float64")
    c = rhn.init_params(3, 4, 2, seed=6, dtype="float64")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["R_H"], c["R_H"])


@pytest.mark.parametrize("be", BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_init_params_same_seed_same_weights_on_every_backend(be, dtype):
    ref = rhn.init_params(3, 4, 2, coupled=False, seed=42, dtype=dtype)
    p = rhn.init_params(3, 4, 2, coupled=False, seed=42, dtype=dtype, backend=be)
    for k, v in p.items():
        assert backend.name_of(v) == be.name
        assert v.dtype == getattr(be.xp, dtype)
        np.testing.assert_array_equal(backend.to_host(v), ref[k])


# ----------------------------------------------------------------------------
# The cache holds exactly what the backward needs
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("coupled,per_step", [(True, 3), (False, 4)], ids=["coupled", "uncoupled"])
@pytest.mark.parametrize("dtype,itemsize", [("float32", 4), ("float64", 8)])
def test_cache_nbytes(coupled, per_step, dtype, itemsize):
    T, B, n_in, n, depth = 5, 3, 2, 4, 3
    params = rhn.init_params(n_in, n, depth, coupled=coupled, dtype=dtype)
    xs, s0, _, _, masks = make_inputs(T, B, n_in, n, masks=True)
    _, cache = rhn.forward(params, xs.astype(dtype), s0.astype(dtype), {k: v.astype(dtype) for k, v in masks.items()})
    assert rhn.cache_nbytes(cache) == per_step * depth * T * B * n * itemsize
