r"""The deep-transition RNN (rhn_np.dtrnn): DT-RNN and DT(S)-RNN of Pascanu et al. (2013).

Everything here is checked against code written in this file from the equations
alone (row vectors, micro-layer ℓ = 1..L inside step t, ``z_0 = s_{t-1}``, code index
``l = ℓ - 1``)::

    a_ℓ = [ℓ=1]·(x_t ⊙ m_x) @ W + (z_{ℓ-1} ⊙ m_s) @ R[l] + b[l]
                               + [ℓ=L and shortcut]·(s_{t-1} ⊙ m_s) @ U
    z_ℓ = tanh(a_ℓ),    s_t = y_t = z_L

* a plain NumPy forward written as loops (:func:`oracle_forward`), and
* the same equations in PyTorch, differentiated by autograd (``torch`` only),

plus central differences of ``L = Σ_t ⟨dys[t], y_t⟩ + ⟨ds_last, y_T⟩`` for every
gradient. Numbers are compared in float64 throughout (float32 appears only where the
dtype itself is under test).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import host, make_inputs, on
from rhn_np import backend, dtrnn, gradcheck

EXACT = 1e-12  # two float64 computations of the same sums, grouped differently
# Central differences in float64 with step GRAD_H. Their truncation error, h²/6 times
# L's third derivative, reached 3.5e-6 relative with h = 1e-5 at init_scale 1, depth 4,
# masks (a gradient growing to 45 through 5 steps; the analytic one agreed with autograd
# to 1e-13); h = 1e-6 cuts it 100x while the round-off, ε·Σ|y ⊙ dy|/h, stays below 1e-8
# relative. A wrong gradient is off by 1e-3 or more.
GRAD_H = 1e-6
GRAD_TOL = 1e-6  # as in test_rhn.py (see _grad_errors for the floor)
TORCH_RTOL = 1e-9


# ----------------------------------------------------------------------------
# Independent references (no rhn_np code)
# ----------------------------------------------------------------------------
def host_params(n_in, n, depth, *, shortcut=False, scale=0.5, seed=0):
    """Float64 host parameters drawn here (not by dtrnn.init_params)."""
    rng = np.random.default_rng([seed, 7])
    p = {
        "W": rng.uniform(-scale, scale, (n_in, n)),
        "R": rng.uniform(-scale, scale, (depth, n, n)),
        "b": rng.uniform(-scale, scale, (depth, n)),
    }
    if shortcut:
        p["U"] = rng.uniform(-scale, scale, (n, n))
    return p


def value_masks(B, n_in, n, seed=0, keys=("x", "s")):
    """Masks with values in (0, 2), zeros included: a mask's value (not only 0/1) matters."""
    rng = np.random.default_rng([seed, 11])
    m = {"x": rng.uniform(0.0, 2.0, (B, n_in)), "s": rng.uniform(0.0, 2.0, (B, n))}
    m["x"][0, 0] = 0.0
    m["s"][-1, -1] = 0.0
    return {k: m[k] for k in keys}


def oracle_forward(p, xs, s0, masks=None):
    """ys (T, B, n) straight from the equations, one micro-layer and one product at a time."""
    W, R, b, U = p["W"], p["R"], p["b"], p.get("U")
    masks = masks or {}
    m_x, m_s = masks.get("x"), masks.get("s")
    mask_s = (lambda v: v) if m_s is None else (lambda v: v * m_s)
    L = R.shape[0]
    T = xs.shape[0]
    ys = np.empty((T, xs.shape[1], R.shape[1]))
    s_prev = s0
    for t in range(T):
        x = xs[t] if m_x is None else xs[t] * m_x
        z = s_prev
        for ell in range(1, L + 1):
            l = ell - 1
            a = mask_s(z) @ R[l] + b[l]
            if ell == 1:
                a = a + x @ W
            if ell == L and U is not None:
                a = a + mask_s(s_prev) @ U
            z = np.tanh(a)
        ys[t] = z
        s_prev = z
    return ys


def torch_oracle(p, xs, s0, dys, masks=None, ds_last=None):
    """ys and autograd gradients of L = Σ dys ⊙ ys (+ ds_last ⊙ y_T) (float64 PyTorch)."""
    import torch

    leaf = lambda a: torch.tensor(a, dtype=torch.float64, requires_grad=True)  # noqa: E731
    const = lambda a: None if a is None else torch.tensor(a, dtype=torch.float64)  # noqa: E731
    tp = {k: leaf(v) for k, v in p.items()}
    xs_t, s0_t = leaf(xs), leaf(s0)
    masks = masks or {}
    m_x, m_s = const(masks.get("x")), const(masks.get("s"))
    mask_s = (lambda v: v) if m_s is None else (lambda v: v * m_s)
    L = tp["R"].shape[0]
    ys, s_prev = [], s0_t
    for t in range(xs_t.shape[0]):
        x = xs_t[t] if m_x is None else xs_t[t] * m_x
        z = s_prev
        for l in range(L):
            a = mask_s(z) @ tp["R"][l] + tp["b"][l]
            if l == 0:
                a = a + x @ tp["W"]
            if l == L - 1 and "U" in tp:
                a = a + mask_s(s_prev) @ tp["U"]
            z = torch.tanh(a)
        ys.append(z)
        s_prev = z
    ys = torch.stack(ys)
    loss = (ys * const(dys)).sum()
    if ds_last is not None:
        loss = loss + (ys[-1] * const(ds_last)).sum()
    loss.backward()
    grads = {k: v.grad.numpy() for k, v in tp.items()}
    return ys.detach().numpy(), grads, xs_t.grad.numpy(), s0_t.grad.numpy()


def loss_of(params, xs, s0, dys, masks=None, ds_last=None):
    """The scalar loss whose gradients dtrnn.backward returns."""
    ys, _ = dtrnn.forward(params, xs, s0, masks)
    loss = float(np.sum(ys * dys))
    if ds_last is not None:
        loss += float(np.sum(ys[-1] * ds_last))
    return loss


def run(params, xs, s0, dys, masks=None, ds_last=None):
    """Forward + BPTT of one window: ``{"ys", "xs", "s0", <param>...}`` (gradients under the input's name)."""
    ys, cache = dtrnn.forward(params, xs, s0, masks)
    grads, dxs, ds0 = dtrnn.backward(params, cache, dys, ds_last)
    return {"ys": ys, "xs": dxs, "s0": ds0, **grads}


def assert_close(actual, expected, tol=EXACT, what=""):
    actual, expected = host(actual), np.asarray(expected)
    assert tuple(actual.shape) == tuple(expected.shape), f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max()) if expected.size else 1.0)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol * scale, err_msg=what)


def draw_case(data, *, masks=None, ds_last=None, shortcut=None, T_max=5, B_max=3, n_in_max=5, n_max=6, depth_max=4,
              init_scale=(0.1, 1.0)):
    """A drawn DT-RNN configuration (labelled draws) with float64 host inputs:
    ``params, xs, s0, dys, ds_last_or_None, masks_or_None``. ``masks``/``ds_last``/
    ``shortcut`` force the option; None draws it."""
    T = data.draw(st.integers(1, T_max), label="T")
    B = data.draw(st.integers(1, B_max), label="B")
    n_in = data.draw(st.integers(1, n_in_max), label="n_in")
    n = data.draw(st.integers(1, n_max), label="n")
    depth = data.draw(st.integers(1, depth_max), label="depth")
    shortcut = data.draw(st.booleans(), label="shortcut") if shortcut is None else shortcut
    use_masks = data.draw(st.booleans(), label="masks") if masks is None else masks
    use_last = data.draw(st.booleans(), label="ds_last") if ds_last is None else ds_last
    scale = data.draw(st.floats(*init_scale), label="init_scale")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    params = dtrnn.init_params(n_in, n, depth, shortcut=shortcut, init_scale=scale, seed=seed, dtype="float64")
    xs, s0, dys, last, m = make_inputs(T, B, n_in, n, seed=seed, masks=use_masks)
    return params, xs, s0, dys, (last if use_last else None), m


# The oracle itself, on a case small enough to write out by hand (scalars, L = 2)
def test_oracle_forward_by_hand():
    w, r1, r2, b1, b2, u = 0.7, -0.4, 0.9, 0.1, -0.2, 0.5
    p = {"W": np.array([[w]]), "R": np.array([[[r1]], [[r2]]]), "b": np.array([[b1], [b2]]), "U": np.array([[u]])}
    x1, x2, s0, mx, ms = 1.3, -0.6, 0.25, 1.5, 0.5
    xs = np.array([[[x1]], [[x2]]])
    m = {"x": np.array([[mx]]), "s": np.array([[ms]])}
    s = s0
    expected = []
    for x in (x1, x2):
        z1 = math.tanh(x * mx * w + s * ms * r1 + b1)
        z2 = math.tanh(z1 * ms * r2 + b2 + s * ms * u)
        expected.append(z2)
        s = z2
    np.testing.assert_allclose(oracle_forward(p, xs, np.array([[s0]]), m)[:, 0, 0], expected, rtol=0, atol=1e-15)


# ----------------------------------------------------------------------------
# 1. forward == the oracle; gradients == torch autograd
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("shortcut", [False, True], ids=["dt", "dts"])
@pytest.mark.parametrize("mask_keys", [None, ("x", "s"), ("x",), ("s",)], ids=["nomask", "masks", "mask_x", "mask_s"])
def test_forward_matches_oracle(depth, shortcut, mask_keys):
    T, B, n_in, n = 4, 3, 3, 5
    p = host_params(n_in, n, depth, shortcut=shortcut, scale=0.6, seed=depth)
    xs, s0, _, _, _ = make_inputs(T, B, n_in, n, seed=depth, s0_scale=0.9)
    masks = None if mask_keys is None else value_masks(B, n_in, n, seed=depth, keys=mask_keys)
    ys, _ = dtrnn.forward(p, xs, s0, masks)
    expected = oracle_forward(p, xs, s0, masks)
    assert ys.shape == (T, B, n) and ys.dtype == np.float64
    assert_close(ys, expected, what="ys")
    # the test can tell the variants apart: the shortcut, a mask, the depth all change ys
    if shortcut:
        assert np.abs(expected - oracle_forward({k: v for k, v in p.items() if k != "U"}, xs, s0, masks)).max() > 1e-3
    if masks is not None:
        assert np.abs(expected - oracle_forward(p, xs, s0)).max() > 1e-3


@pytest.mark.torch
@pytest.mark.parametrize("depth", [1, 2, 4])
@pytest.mark.parametrize("shortcut", [False, True], ids=["dt", "dts"])
@pytest.mark.parametrize("use_masks", [False, True], ids=["nomask", "masks"])
@pytest.mark.parametrize("use_last", [False, True], ids=["nolast", "ds_last"])
def test_every_gradient_matches_torch_autograd(depth, shortcut, use_masks, use_last):
    pytest.importorskip("torch")
    T, B, n_in, n = 4, 2, 3, 4
    p = host_params(n_in, n, depth, shortcut=shortcut, scale=0.6, seed=10 + depth)
    xs, s0, dys, ds_last, _ = make_inputs(T, B, n_in, n, seed=10 + depth, s0_scale=0.9)
    masks = value_masks(B, n_in, n, seed=depth) if use_masks else None
    ds_last = ds_last if use_last else None
    ys_t, grads_t, dxs_t, ds0_t = torch_oracle(p, xs, s0, dys, masks, ds_last)
    got = run(p, xs, s0, dys, masks, ds_last)
    assert_close(got["ys"], ys_t, what="ys")
    expected = {**grads_t, "xs": dxs_t, "s0": ds0_t}
    assert set(got) == set(expected) | {"ys"}
    for k, v in expected.items():
        assert got[k].shape == v.shape, k
        np.testing.assert_allclose(got[k], v, rtol=TORCH_RTOL, atol=TORCH_RTOL * 1e-3 * np.abs(v).max(), err_msg=k)


# ----------------------------------------------------------------------------
# 2. Every gradient against central differences (Hypothesis)
# ----------------------------------------------------------------------------
def _grad_errors(params, xs, s0, dys, masks, ds_last):
    """Relative error of every gradient (each parameter, xs, s0) against central differences.

    Each central difference of L carries a round-off error of about
    ε·Σ|y ⊙ dy| / h ≈ 1e-10·Σ|y ⊙ dy|; arrays far below that (a gradient that vanished)
    are measured against the floor 1e-3·(1 + Σ|y ⊙ dy|), where that noise reads < 1e-7.
    """
    got = run(params, xs, s0, dys, masks, ds_last)
    floor = 1e-3 * (1.0 + float(np.sum(np.abs(got["ys"] * dys))))
    arrays = {**params, "xs": xs, "s0": s0}

    def loss(_):  # the arrays are perturbed in place; the loss reads them through the closure
        return loss_of(params, xs, s0, dys, masks, ds_last)

    return {k: gradcheck.rel_error(got[k], gradcheck.numerical_gradient(loss, a, h=GRAD_H), tiny=floor)
            for k, a in arrays.items()}


@given(data=st.data())
@settings(deadline=None)
def test_every_gradient_matches_central_differences(data):
    params, xs, s0, dys, ds_last, masks = draw_case(data)
    errors = _grad_errors(params, xs, s0, dys, masks, ds_last)
    assert set(errors) == set(params) | {"xs", "s0"}
    bad = {k: e for k, e in errors.items() if not e < GRAD_TOL}
    assert not bad, f"relative errors above {GRAD_TOL}: {bad}"


def test_central_differences_see_a_wrong_gradient():
    """The check above can fail: gradients of the loss without ds_last are rejected."""
    params = dtrnn.init_params(2, 3, 3, shortcut=True, init_scale=0.5, seed=3, dtype="float64")
    xs, s0, dys, ds_last, _ = make_inputs(3, 2, 2, 3, seed=3)
    assert max(_grad_errors(params, xs, s0, dys, None, ds_last).values()) < GRAD_TOL
    got = run(params, xs, s0, dys)  # without ds_last
    num = gradcheck.numerical_gradient(lambda _: loss_of(params, xs, s0, dys, None, ds_last), params["U"])
    assert gradcheck.rel_error(got["U"], num) > 1e-3


def test_ds_last_arrives_where_dys_of_the_last_step_does():
    params = dtrnn.init_params(2, 3, 2, shortcut=True, init_scale=0.5, seed=5, dtype="float64")
    xs, s0, dys, ds_last, _ = make_inputs(4, 2, 2, 3, seed=5)
    a = run(params, xs, s0, dys)
    b = run(params, xs, s0, dys, None, ds_last)
    dys_c = dys.copy()
    dys_c[-1] += ds_last
    c = run(params, xs, s0, dys_c)
    assert gradcheck.rel_error(a["s0"], b["s0"]) > 1e-3
    for k in b:
        assert_close(b[k], c[k], what=k)


def test_forward_and_backward_leave_their_inputs_alone():
    params = dtrnn.init_params(3, 4, 3, shortcut=True, init_scale=0.5, seed=13, dtype="float64")
    xs, s0, dys, ds_last, masks = make_inputs(4, 2, 3, 4, seed=13, masks=True)
    before = {"xs": xs, "s0": s0, "dys": dys, "ds_last": ds_last, **{f"m_{k}": v for k, v in masks.items()},
              **{f"p_{k}": v for k, v in params.items()}}
    copies = {k: v.copy() for k, v in before.items()}
    first = run(params, xs, s0, dys, masks, ds_last)
    second = run(params, xs, s0, dys, masks, ds_last)  # the same numbers again
    for k, v in before.items():
        np.testing.assert_array_equal(v, copies[k], err_msg=f"{k} was changed in place")
    for k in first:
        np.testing.assert_array_equal(first[k], second[k], err_msg=k)


# ----------------------------------------------------------------------------
# 3. The step API
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("shortcut", [False, True], ids=["dt", "dts"])
@pytest.mark.parametrize("use_masks", [False, True], ids=["nomask", "masks"])
def test_step_api_equals_sequence_api_at_T1(depth, shortcut, use_masks):
    B, n_in, n = 2, 3, 4
    params = dtrnn.init_params(n_in, n, depth, shortcut=shortcut, init_scale=0.5, seed=7, dtype="float64")
    xs, s0, dys, _, _ = make_inputs(1, B, n_in, n, seed=7)
    masks = value_masks(B, n_in, n, seed=7) if use_masks else None
    s, step_cache = dtrnn.step_forward(params, xs[0], s0, masks)
    ys, cache = dtrnn.forward(params, xs, s0, masks)
    assert s.shape == (B, n)
    assert_close(s, ys[0], what="s")
    assert_close(s, oracle_forward(params, xs, s0, masks)[0], what="s vs oracle")
    grads, dx, ds_prev = dtrnn.step_backward(params, step_cache, dys[0])
    grads_seq, dxs, ds0 = dtrnn.backward(params, cache, dys)
    assert dx.shape == (B, n_in) and ds_prev.shape == (B, n)
    assert set(grads) == set(params)
    assert_close(dx, dxs[0], what="dx")
    assert_close(ds_prev, ds0, what="ds_prev")
    for k in params:
        assert grads[k].shape == params[k].shape, k
        assert_close(grads[k], grads_seq[k], what=k)


@given(data=st.data())
@settings(deadline=None)
def test_step_forward_T_times_equals_forward_and_step_backward_chains(data):
    params, xs, s0, dys, _, masks = draw_case(data, ds_last=False)
    T = xs.shape[0]
    ys, cache = dtrnn.forward(params, xs, s0, masks)
    s, caches = s0, []
    for t in range(T):
        s, c = dtrnn.step_forward(params, xs[t], s, masks)
        caches.append(c)
        assert_close(s, ys[t], what=f"s[{t}]")
    grads_ref, dxs_ref, ds0_ref = dtrnn.backward(params, cache, dys)
    total = {k: np.zeros_like(v) for k, v in params.items()}
    ds = np.zeros_like(s0)
    for t in reversed(range(T)):
        g, dx, ds = dtrnn.step_backward(params, caches[t], dys[t] + ds)
        assert_close(dx, dxs_ref[t], what=f"dx[{t}]")
        for k in total:
            total[k] += g[k]
    assert_close(ds, ds0_ref, what="ds0")
    for k in params:
        assert_close(total[k], grads_ref[k], what=k)


# ----------------------------------------------------------------------------
# 4. Truncated BPTT: two windows chained through ds_last == one long window
# ----------------------------------------------------------------------------
@given(data=st.data())
@settings(deadline=None)
def test_two_chained_windows_equal_one_long_window(data):
    params, xs1, s0, dys1, ds_last, masks = draw_case(data)
    T2 = data.draw(st.integers(1, 5), label="T2")
    xs2, _, dys2, _, _ = make_inputs(T2, xs1.shape[1], xs1.shape[2], s0.shape[1],
                                     seed=data.draw(st.integers(0, 99), label="seed2"))
    xs = np.concatenate([xs1, xs2])
    dys = np.concatenate([dys1, dys2])

    ys, cache = dtrnn.forward(params, xs, s0, masks)
    grads, dxs, ds0 = dtrnn.backward(params, cache, dys, ds_last)

    ys1, c1 = dtrnn.forward(params, xs1, s0, masks)
    ys2, c2 = dtrnn.forward(params, xs2, ys1[-1], masks)  # the state crosses the window boundary
    g2, dxs2, ds_mid = dtrnn.backward(params, c2, dys2, ds_last)
    g1, dxs1, ds0_chained = dtrnn.backward(params, c1, dys1, ds_mid)  # ... and so does its gradient

    assert_close(np.concatenate([ys1, ys2]), ys, what="ys")
    assert_close(ds0_chained, ds0, what="ds0")
    assert_close(np.concatenate([dxs1, dxs2]), dxs, what="dxs")
    for k in params:
        assert_close(g1[k] + g2[k], grads[k], what=k)


# ----------------------------------------------------------------------------
# 5. Depth 1 without the shortcut is the plain tanh RNN (rhn_np.theory)
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("B", [1, 3])
def test_depth_one_is_the_plain_tanh_rnn(B):
    from rhn_np import theory

    T, n_in, n = 5, 3, 4
    p = host_params(n_in, n, 1, scale=0.8, seed=B)
    xs, y0, _, _, _ = make_inputs(T, B, n_in, n, seed=B, s0_scale=0.9)
    ys, _ = dtrnn.forward(p, xs, y0)
    by_hand, y = [], y0
    for t in range(T):
        y = np.tanh(xs[t] @ p["W"] + y @ p["R"][0] + p["b"][0])
        by_hand.append(y)
    by_hand = np.stack(by_hand)
    assert_close(oracle_forward(p, xs, y0), by_hand, what="oracle vs plain RNN")
    assert_close(ys, by_hand, what="dtrnn vs plain RNN")
    th = theory.rnn_forward(p["R"][0], p["W"], p["b"][0], xs, y0)
    assert_close(th, by_hand, what="theory.rnn_forward vs plain RNN")
    assert_close(th, ys, what="theory.rnn_forward vs dtrnn")


# ----------------------------------------------------------------------------
# 6. Backends: the NumPy numbers, on the input's backend
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("shortcut", [False, True], ids=["dt", "dts"])
@pytest.mark.parametrize("use_masks", [False, True], ids=["nomask", "masks"])
def test_backend_matches_numpy_and_stays_on_its_device(be, shortcut, use_masks):
    T, B, n_in, n, depth = 3, 2, 3, 4, 3
    p = host_params(n_in, n, depth, shortcut=shortcut, scale=0.6, seed=17)
    xs, s0, dys, ds_last, _ = make_inputs(T, B, n_in, n, seed=17)
    masks = value_masks(B, n_in, n, seed=17) if use_masks else None
    ref = run(p, xs, s0, dys, masks, ds_last)
    assert_close(ref["ys"], oracle_forward(p, xs, s0, masks), what="numpy ys vs oracle")

    ys, cache = dtrnn.forward(on(be, p), on(be, xs), on(be, s0), on(be, masks))
    grads, dxs, ds0 = dtrnn.backward(on(be, p), cache, on(be, dys), on(be, ds_last))
    got = {"ys": ys, "xs": dxs, "s0": ds0, **grads}
    assert set(got) == set(ref)
    for k, v in got.items():
        assert backend.name_of(v) == be.name, f"{k} is a {backend.name_of(v)} array, not {be.name}"
        assert backend.device_of(v) == be.device, f"{k} is on {backend.device_of(v)}, not {be.device}"
        assert v.dtype == be.xp.float64, k
        assert_close(host(v), ref[k], what=k)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype_in_dtype_out(be, dtype):
    params = dtrnn.init_params(3, 4, 2, shortcut=True, seed=19, dtype=dtype, backend=be)
    xs, s0, dys, ds_last, masks = make_inputs(3, 2, 3, 4, seed=19, masks=True)
    ys, cache = dtrnn.forward(params, on(be, xs, dtype), on(be, s0, dtype), on(be, masks, dtype))
    grads, dxs, ds0 = dtrnn.backward(params, cache, on(be, dys, dtype), on(be, ds_last, dtype))
    want = getattr(be.xp, dtype)
    assert ys.dtype == want and dxs.dtype == want and ds0.dtype == want
    assert all(g.dtype == want for g in grads.values())
    if dtype == "float32":  # the float32 numbers are the float64 ones, to float32 round-off
        ref = run({k: host(v).astype(np.float64) for k, v in params.items()}, xs, s0, dys, masks, ds_last)
        assert_close(host(ys), ref["ys"], tol=1e-5, what="ys")
        assert_close(host(dxs), ref["xs"], tol=1e-5, what="dxs")


# ----------------------------------------------------------------------------
# 7. init_params, param_shapes, dims
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("shortcut", [False, True], ids=["dt", "dts"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_init_params_shapes_values_and_dtype(shortcut, dtype):
    n_in, n, depth, scale, seed = 3, 5, 4, 0.3, 42
    shapes = dtrnn.param_shapes(n_in, n, depth, shortcut=shortcut)
    expected_shapes = {"W": (n_in, n), "R": (depth, n, n), "b": (depth, n)}
    if shortcut:
        expected_shapes["U"] = (n, n)
    assert {k: tuple(v) for k, v in shapes.items()} == expected_shapes
    params = dtrnn.init_params(n_in, n, depth, shortcut=shortcut, init_scale=scale, seed=seed, dtype=dtype)
    assert set(params) == set(shapes)
    rng = np.random.default_rng(seed)  # drawn on the host, in the order of param_shapes
    for k, shape in shapes.items():
        v = params[k]
        assert isinstance(v, np.ndarray) and v.dtype == np.dtype(dtype), k
        assert v.shape == tuple(shape), k
        assert np.abs(v).max() <= scale, k
        assert np.abs(v).max() > 0.5 * scale, k  # really drawn from the whole range
        np.testing.assert_array_equal(v, rng.uniform(-scale, scale, size=shape).astype(dtype), err_msg=k)
    n_in_, n_, depth_, dtype_ = dtrnn.dims(params)
    assert (n_in_, n_, depth_) == (n_in, n, depth)
    assert backend.float_dtype_name(dtype_) == dtype


def test_init_params_seed_and_shortcut_adds_exactly_U():
    a = dtrnn.init_params(2, 3, 2, seed=1, dtype="float64")
    b = dtrnn.init_params(2, 3, 2, seed=1, dtype="float64")
    c = dtrnn.init_params(2, 3, 2, seed=2, dtype="float64")
    assert set(a) == {"W", "R", "b"}
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    s = dtrnn.init_params(2, 3, 2, shortcut=True, seed=1, dtype="float64")
    assert set(s) - set(a) == {"U"} and set(a) <= set(s)
    assert s["U"].shape == (3, 3)
    assert np.abs(a["W"]).max() <= 0.04  # the default init_scale
    assert dtrnn.init_params(2, 3, 2)["W"].dtype == np.float32  # the default dtype


def test_init_params_same_numbers_on_every_backend(be):
    params = dtrnn.init_params(3, 4, 2, shortcut=True, init_scale=0.2, seed=9, dtype="float64", backend=be)
    ref = dtrnn.init_params(3, 4, 2, shortcut=True, init_scale=0.2, seed=9, dtype="float64")
    assert set(params) == set(ref)
    for k, v in params.items():
        assert backend.name_of(v) == be.name, k
        assert backend.device_of(v) == be.device, k
        np.testing.assert_array_equal(host(v), ref[k], err_msg=k)


# ----------------------------------------------------------------------------
# 8. Bad input: a clear error that names what was wrong
# ----------------------------------------------------------------------------
def _good(shortcut=True):
    T, B, n_in, n, depth = 3, 2, 3, 4, 2
    p = host_params(n_in, n, depth, shortcut=shortcut, seed=23)
    xs, s0, dys, ds_last, masks = make_inputs(T, B, n_in, n, seed=23, masks=True)
    return p, xs, s0, dys, ds_last, masks


def _drop(d, key):
    return {k: v for k, v in d.items() if k != key}


FORWARD_ERRORS = {
    "xs_2d": (lambda p, xs, s0, m: (p, xs[0], s0, m), ValueError, r"\bxs\b"),
    "xs_n_in": (lambda p, xs, s0, m: (p, xs[:, :, :2], s0, m), ValueError, r"\bxs\b"),
    "s0_n": (lambda p, xs, s0, m: (p, xs, s0[:, :3], m), ValueError, r"\bs0\b"),
    "s0_B": (lambda p, xs, s0, m: (p, xs, s0[:1], m), ValueError, r"\bs0\b"),
    "s0_1d": (lambda p, xs, s0, m: (p, xs, s0[0], m), ValueError, r"\bs0\b"),
    "missing_R": (lambda p, xs, s0, m: (_drop(p, "R"), xs, s0, m), ValueError, r"\bR\b"),
    "U_shape": (lambda p, xs, s0, m: ({**p, "U": np.zeros((5, 4))}, xs, s0, m), ValueError, r"\bU\b"),
    "U_3d": (lambda p, xs, s0, m: ({**p, "U": np.zeros((1, 4, 4))}, xs, s0, m), ValueError, r"\bU\b"),
    "unknown_param": (lambda p, xs, s0, m: ({**p, "W_H": p["W"]}, xs, s0, m), ValueError, r"W_H"),
    "xs_float32": (lambda p, xs, s0, m: (p, xs.astype(np.float32), s0, m), TypeError, r"\bxs\b"),
    "s0_float32": (lambda p, xs, s0, m: (p, xs, s0.astype(np.float32), m), TypeError, r"\bs0\b"),
    "params_mixed_dtypes": (lambda p, xs, s0, m: ({**p, "b": p["b"].astype(np.float32)}, xs, s0, m), TypeError,
                            r"float32"),
    "mask_float32": (lambda p, xs, s0, m: (p, xs, s0, {**m, "s": m["s"].astype(np.float32)}), TypeError, r"mask"),
    "mask_unknown_key": (lambda p, xs, s0, m: (p, xs, s0, {**m, "h": m["s"]}), ValueError, r"mask"),
    "mask_shape": (lambda p, xs, s0, m: (p, xs, s0, {"x": m["x"][:, :2]}), ValueError, r"mask"),
    "params_not_dict": (lambda p, xs, s0, m: ([p["W"], p["R"], p["b"]], xs, s0, m), TypeError, r"params"),
}


@pytest.mark.parametrize("case", list(FORWARD_ERRORS))
def test_forward_rejects_bad_input_with_a_clear_error(case):
    p, xs, s0, _, _, masks = _good()
    make, exc, match = FORWARD_ERRORS[case]
    args = make(p, xs, s0, masks)
    with pytest.raises(exc, match=match):
        dtrnn.forward(*args)


def test_missing_R_without_shortcut_and_a_lone_U_of_wrong_shape():
    p, xs, s0, _, _, _ = _good(shortcut=False)
    with pytest.raises(ValueError, match=r"\bR\b"):
        dtrnn.forward(_drop(p, "R"), xs, s0)
    with pytest.raises(ValueError, match=r"\bU\b"):
        dtrnn.forward({**p, "U": np.zeros((4, 5))}, xs, s0)
    with pytest.raises((ValueError, TypeError), match=r"\bR\b"):
        dtrnn.dims(_drop(p, "R"))


@pytest.mark.parametrize("case", ["dys_shape", "dys_T", "dys_float32", "ds_last_shape", "ds_last_float32"])
def test_backward_rejects_bad_gradients_with_a_clear_error(case):
    p, xs, s0, dys, ds_last, masks = _good()
    _, cache = dtrnn.forward(p, xs, s0, masks)
    bad = {
        "dys_shape": ((dys[:, :, :3], None), ValueError, r"\bdys\b"),
        "dys_T": ((dys[:2], None), ValueError, r"\bdys\b"),
        "dys_float32": ((dys.astype(np.float32), None), TypeError, r"\bdys\b"),
        "ds_last_shape": ((dys, ds_last[:1]), ValueError, r"ds_last"),
        "ds_last_float32": ((dys, ds_last.astype(np.float32)), TypeError, r"ds_last"),
    }
    (d, last), exc, match = bad[case]
    with pytest.raises(exc, match=match):
        dtrnn.backward(p, cache, d, last)


def test_step_api_rejects_bad_input():
    p, xs, s0, dys, _, _ = _good()
    with pytest.raises(ValueError, match=r"\bx\b"):
        dtrnn.step_forward(p, xs, s0)  # a window, not one step
    with pytest.raises(ValueError, match=r"s_prev"):
        dtrnn.step_forward(p, xs[0], s0[:1])
    _, cache = dtrnn.step_forward(p, xs[0], s0)
    with pytest.raises(ValueError, match=r"\bds\b"):
        dtrnn.step_backward(p, cache, dys)  # (T, B, n), not (B, n)


def test_mixed_backends_are_refused():
    strict = backend.get("array_api_strict")
    p, xs, s0, _, _, _ = _good()
    with pytest.raises(TypeError, match=r"backend|array_api_strict"):
        dtrnn.forward(p, on(strict, xs), s0)


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"depth": 0}, ValueError, r"depth"),
    ({"n": 0}, ValueError, r"\bn\b"),
    ({"n_in": 2.5}, TypeError, r"n_in"),
    ({"shortcut": "yes"}, TypeError, r"shortcut"),
    ({"dtype": "int32"}, ValueError, r"dtype"),
    ({"init_scale": -1.0}, ValueError, r"init_scale"),
], ids=["depth0", "n0", "n_in_float", "shortcut_str", "dtype_int", "scale_negative"])
def test_init_params_rejects_bad_arguments(kwargs, exc, match):
    args = {"n_in": 2, "n": 3, "depth": 2, **kwargs}
    n_in, n, depth = args.pop("n_in"), args.pop("n"), args.pop("depth")
    with pytest.raises(exc, match=match):
        dtrnn.init_params(n_in, n, depth, **args)
