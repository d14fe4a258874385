"""The theory module (rhn_np.theory): exact temporal Jacobians and Geršgorin discs.

Every analytic Jacobian is checked against an independent derivative: central
finite differences of the layer's own forward (``rhn.step_forward``,
``rhn.micro_forward``, ``rhn.forward``) and, where PyTorch is installed, autograd
on a separate PyTorch transcription of Eqs. 6-9. All numbers are float64.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from conftest import BACKENDS, host, on
from rhn_np import backend, rhn, theory

FD_EPS = 1e-6  # central differences, float64: truncation ~eps², round-off ~1e-16/eps
FD_TOL = 1e-7
EXACT = 1e-12


# ----------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------
def draw_config(data, *, coupled=None, masks=None, depth=None, transform_bias=None):
    """Draw a small RHN configuration (labelled) and host float64 inputs for one step."""
    B = data.draw(st.integers(1, 3), label="B")
    n_in = data.draw(st.integers(1, 4), label="n_in")
    n = data.draw(st.integers(1, 6), label="n")
    L = data.draw(st.integers(1, 3), label="depth") if depth is None else depth
    coupled = data.draw(st.booleans(), label="coupled") if coupled is None else coupled
    use_masks = data.draw(st.booleans(), label="masks") if masks is None else masks
    init_scale = data.draw(st.floats(0.05, 1.0), label="init_scale")
    if transform_bias is None:
        transform_bias = data.draw(st.floats(-3.0, 3.0), label="transform_bias")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    params = rhn.init_params(
        n_in, n, L, coupled=coupled, init_scale=init_scale, transform_bias=transform_bias, seed=seed, dtype="float64"
    )
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, n_in))
    s = np.tanh(rng.standard_normal((B, n)))
    m = None
    if use_masks:  # inverted dropout masks, keep = 0.7 (zeros included)
        m = {"x": (rng.random((B, n_in)) < 0.7) / 0.7, "s": (rng.random((B, n)) < 0.7) / 0.7}
    return params, x, s, m


def fd_jacobian(f, s, eps=FD_EPS):
    """Central-difference Jacobian of a row-wise map f: (B, n) -> (B, m); returns (B, m, n).

    Rows of the batch are independent, so perturbing column j of every row at once
    gives column j of every row's Jacobian.
    """
    B, n = s.shape
    cols = []
    for j in range(n):
        e = np.zeros_like(s)
        e[:, j] = eps
        cols.append((f(s + e) - f(s - e)) / (2 * eps))
    return np.stack(cols, axis=-1)


def same_spectrum(a, b, tol):
    """Each eigenvalue of a has one of b within tol, and vice versa (host complex arrays)."""
    d = np.abs(np.ravel(a)[:, None] - np.ravel(b)[None, :])
    return d.min(axis=1).max() <= tol and d.min(axis=0).max() <= tol


# ----------------------------------------------------------------------------
# The RHN step Jacobian
# ----------------------------------------------------------------------------
@given(data=st.data())
@settings(deadline=None)
def test_step_jacobian_matches_finite_differences(data):
    params, x, s, m = draw_config(data)
    J = theory.step_jacobian(params, x, s, m)
    J_fd = fd_jacobian(lambda z: rhn.step_forward(params, x, z, m)[0], s)
    assert J.shape == (s.shape[0], s.shape[1], s.shape[1])
    np.testing.assert_allclose(J, J_fd, rtol=FD_TOL, atol=FD_TOL)


@given(data=st.data())
@settings(deadline=None)
def test_micro_jacobians_match_finite_differences_of_micro_forward(data):
    """Each J_ℓ is ∂s[ℓ]/∂s[ℓ-1] of the layer's own micro_forward, and J = J_L ⋯ J_1."""
    params, x, s, m = draw_config(data)
    coupled = "R_C" not in params
    W, R, b = rhn.fuse_params(params)
    m_s = None if m is None else m["s"]
    x_in = x if m is None else x * m["x"]
    _, cache = rhn.step_forward(params, x, s, m)
    Js = theory.micro_jacobians(params, x, s, m)
    assert len(Js) == R.shape[0]
    prod = None
    for l, J_l in enumerate(Js):
        a_in = x_in @ W + b[0] if l == 0 else b[l]

        def micro(z, l=l, a_in=a_in):
            z_tr = z if m_s is None else z * m_s
            return rhn.micro_forward(z_tr @ R[l] + a_in, z, coupled)[0]

        s_in = cache["s_in"][l, 0]
        np.testing.assert_allclose(J_l, fd_jacobian(micro, s_in), rtol=FD_TOL, atol=FD_TOL)
        prod = J_l if prod is None else J_l @ prod
    np.testing.assert_allclose(theory.step_jacobian(params, x, s, m), prod, rtol=EXACT, atol=EXACT)


@given(data=st.data())
@settings(deadline=None)
def test_product_rule_for_depth_above_one(data):
    """Numerator layout J = J_L ⋯ J_1; paper layout A = A_1 ⋯ A_L (the transpose)."""
    L = data.draw(st.integers(2, 4), label="depth")
    params, x, s, m = draw_config(data, depth=L)
    Js = theory.micro_jacobians(params, x, s, m)
    As = theory.micro_jacobians(params, x, s, m, layout="paper")
    J, A = Js[0], As[0]
    for J_l, A_l in zip(Js[1:], As[1:]):
        J = J_l @ J
        A = A @ A_l
    np.testing.assert_allclose(theory.step_jacobian(params, x, s, m), J, rtol=EXACT, atol=EXACT)
    np.testing.assert_allclose(theory.step_jacobian(params, x, s, m, layout="paper"), A, rtol=EXACT, atol=EXACT)


def test_product_order_matters():
    """The reversed product J_1 ⋯ J_L is a different matrix: the test above can fail."""
    params = rhn.init_params(2, 4, 2, coupled=False, init_scale=1.0, transform_bias=0.0, seed=4, dtype="float64")
    rng = np.random.default_rng(4)
    x, s = rng.standard_normal((1, 2)), np.tanh(rng.standard_normal((1, 4)))
    J1, J2 = theory.micro_jacobians(params, x, s)
    J = theory.step_jacobian(params, x, s)
    np.testing.assert_allclose(J, J2 @ J1, rtol=EXACT, atol=EXACT)
    assert np.max(np.abs(J - J1 @ J2)) > 1e-2


@given(data=st.data())
@settings(deadline=None)
def test_paper_layout_is_the_transpose(data):
    params, x, s, m = draw_config(data)
    J = theory.step_jacobian(params, x, s, m)
    A = theory.step_jacobian(params, x, s, m, layout="paper")
    np.testing.assert_array_equal(A, np.swapaxes(J, -1, -2))
    for J_l, A_l in zip(theory.micro_jacobians(params, x, s, m), theory.micro_jacobians(params, x, s, m, layout="paper")):
        np.testing.assert_array_equal(A_l, np.swapaxes(J_l, -1, -2))
    tn = theory.jacobian_terms(params, x, s, m)
    tp = theory.jacobian_terms(params, x, s, m, layout="paper")
    for k in ("carry", "H", "C", "T"):
        np.testing.assert_array_equal(tp[k], np.swapaxes(tn[k], -1, -2))
    # eigenvalues agree; row discs of A are the column discs of J
    assert same_spectrum(theory.spectrum(A), theory.spectrum(J), 1e-9)
    for a, b in zip(theory.gersgorin_discs(A, "rows"), theory.gersgorin_discs(J, "columns")):
        np.testing.assert_allclose(a, b, rtol=EXACT, atol=EXACT)


@given(data=st.data())
@settings(deadline=None)
def test_eq10_terms_sum_to_the_micro_jacobian(data):
    params, x, s, m = draw_config(data)
    L = params["R_H"].shape[0]
    layer = data.draw(st.integers(0, L - 1), label="layer")
    terms = theory.jacobian_terms(params, x, s, m, layer=layer, layout="paper")
    A = theory.micro_jacobians(params, x, s, m, layout="paper")[layer]
    np.testing.assert_allclose(terms["carry"] + terms["H"] + terms["C"] + terms["T"], A, rtol=EXACT, atol=EXACT)
    # carry term is diagonal and unmasked: diag(c) exactly
    _, cache = rhn.step_forward(params, x, s, m)
    c = 1.0 - cache["t"][layer, 0] if cache["c"] is None else cache["c"][layer, 0]
    np.testing.assert_array_equal(np.diagonal(terms["carry"], axis1=-2, axis2=-1), c)
    # H' diag(t) from the derivative matrices
    D = theory.derivative_matrices(params, x, s, m, layer=layer)
    np.testing.assert_allclose(terms["H"], D["H"] * cache["t"][layer, 0][:, None, :], rtol=EXACT, atol=EXACT)
    if cache["c"] is None:
        np.testing.assert_array_equal(D["C"], -D["T"])


@given(data=st.data())
@settings(deadline=None)
def test_coupled_closed_form_equals_general_form(data):
    """c = 1 - t: A = diag(1 - t) + H' diag(t) + T' diag(h - y) (paper §2, coupled gates)."""
    params, x, s, m = draw_config(data, coupled=True)
    L = params["R_H"].shape[0]
    for layout in ("numerator", "paper"):
        general = theory.micro_jacobians(params, x, s, m, layout=layout)
        for layer in range(L):
            closed = theory.coupled_closed_form(params, x, s, m, layer=layer, layout=layout)
            np.testing.assert_allclose(closed, general[layer], rtol=EXACT, atol=EXACT)


def test_coupled_closed_form_rejects_uncoupled_params():
    params = rhn.init_params(2, 3, 1, coupled=False, dtype="float64")
    with pytest.raises(ValueError, match="coupled"):
        theory.coupled_closed_form(params, np.zeros((1, 2)), np.zeros((1, 3)))


def test_torch_autograd_agrees():
    """An independent oracle: PyTorch autograd through its own transcription of Eqs. 6-9."""
    torch = pytest.importorskip("torch")
    for seed, (B, n_in, n, L, coupled, use_masks) in enumerate(
        [(2, 3, 4, 1, True, False), (3, 2, 5, 3, False, True), (1, 4, 6, 4, True, True), (2, 1, 3, 2, False, False)]
    ):
        params = rhn.init_params(n_in, n, L, coupled=coupled, init_scale=0.7, transform_bias=-0.5, seed=seed, dtype="float64")
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((B, n_in))
        s = np.tanh(rng.standard_normal((B, n)))
        m = {"x": rng.uniform(0, 2, (B, n_in)), "s": rng.uniform(0, 2, (B, n))} if use_masks else None
        P = {k: torch.tensor(v) for k, v in params.items()}
        xt = torch.tensor(x if m is None else x * m["x"])
        ms = None if m is None else torch.tensor(m["s"])

        def step(s_prev):
            z = s_prev
            for l in range(L):
                zt = z if ms is None else z * ms
                pre = {g: zt @ P[f"R_{g}"][l] + P[f"b_{g}"][l] for g in ("H", "T", "C") if f"R_{g}" in P}
                if l == 0:
                    pre = {g: a + xt @ P[f"W_{g}"] for g, a in pre.items()}
                h, t = torch.tanh(pre["H"]), torch.sigmoid(pre["T"])
                c = 1 - t if coupled else torch.sigmoid(pre["C"])
                z = h * t + z * c
            return z

        jac = torch.autograd.functional.jacobian(step, torch.tensor(s))  # (B, n, B, n)
        J_torch = torch.stack([jac[b, :, b, :] for b in range(B)]).numpy()
        np.testing.assert_allclose(theory.step_jacobian(params, x, s, m), J_torch, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------
# Eq. 15: the two limits of the gates
# ----------------------------------------------------------------------------
@given(data=st.data())
@settings(deadline=None)
def test_eq15_saturated_carry_gives_identity(data):
    """c = 1, t = 0 (coupled, transform bias -50): J = I, every eigenvalue is 1."""
    params, x, s, m = draw_config(data, coupled=True, transform_bias=-50.0)
    J = theory.step_jacobian(params, x, s, m)
    np.testing.assert_allclose(J, np.broadcast_to(np.eye(s.shape[1]), J.shape), atol=EXACT)
    np.testing.assert_allclose(theory.spectrum(J), 1.0, atol=1e-10)


@given(data=st.data())
@settings(deadline=None)
def test_eq15_open_transform_gives_plain_tanh_rnn(data):
    """c = 0, t = 1 (uncoupled, b_C = -50, b_T = +50): A = H', the plain tanh RNN Jacobian."""
    params, x, s, _ = draw_config(data, coupled=False, masks=False, depth=1)
    params["b_T"] = params["b_T"] * 0 + 50.0
    params["b_C"] = params["b_C"] * 0 - 50.0
    J = theory.step_jacobian(params, x, s)
    J_rnn = theory.rnn_step_jacobian(params["R_H"][0], params["W_H"], params["b_H"][0], x, s)
    np.testing.assert_allclose(J, J_rnn, atol=EXACT)
    assert same_spectrum(theory.spectrum(J), theory.spectrum(J_rnn), 1e-6)
    # ... and H' itself (paper layout) is that matrix
    D = theory.derivative_matrices(params, x, s)
    np.testing.assert_allclose(D["H"], theory.rnn_step_jacobian(params["R_H"][0], params["W_H"], params["b_H"][0], x, s, layout="paper"), atol=EXACT)


def test_eq15_between_the_limits_moves_the_spectrum():
    """At a moderate bias the spectrum is neither all 1 nor that of H' (the gates interpolate)."""
    rng = np.random.default_rng(3)
    x, s = rng.standard_normal((1, 4)), np.tanh(rng.standard_normal((1, 8)))
    spectra = []
    for bias in (-50.0, 0.0, 50.0):
        p = rhn.init_params(4, 8, 1, coupled=True, init_scale=0.8, transform_bias=bias, seed=1, dtype="float64")
        spectra.append(theory.spectrum(theory.step_jacobian(p, x, s)))
    assert not same_spectrum(spectra[1], spectra[0], 1e-2)
    assert not same_spectrum(spectra[1], spectra[2], 1e-2)


# ----------------------------------------------------------------------------
# Geršgorin discs
# ----------------------------------------------------------------------------
square_matrices = st.integers(1, 6).flatmap(
    lambda n: hnp.arrays(np.float64, (n, n), elements=st.floats(-10, 10, allow_nan=False, allow_subnormal=False))
)


@given(M=square_matrices)
@settings(deadline=None)
def test_gersgorin_discs_definition(M):
    n = M.shape[0]
    c, r_rows = theory.gersgorin_discs(M, "rows")
    _, r_cols = theory.gersgorin_discs(M, "columns")
    np.testing.assert_array_equal(c, np.diag(M))
    for i in range(n):
        assert r_rows[i] == pytest.approx(sum(abs(M[i, j]) for j in range(n) if j != i), abs=EXACT)
        assert r_cols[i] == pytest.approx(sum(abs(M[j, i]) for j in range(n) if j != i), abs=EXACT)


@given(M=square_matrices)
@settings(deadline=None)
def test_eigenvalues_lie_in_the_union_of_discs(M):
    assert theory.eigenvalues_in_union(M, "rows")
    assert theory.eigenvalues_in_union(M, "columns")
    assert theory.eigenvalues_in_union(M, "both")


@given(data=st.data())
@settings(deadline=None)
def test_rhn_jacobian_eigenvalues_lie_in_the_union_of_discs(data):
    params, x, s, m = draw_config(data)
    for layout in ("numerator", "paper"):
        J = theory.step_jacobian(params, x, s, m, layout=layout)
        assert np.all(theory.eigenvalues_in_union(J, "both"))
        for A in theory.micro_jacobians(params, x, s, m, layout=layout):
            assert np.all(theory.eigenvalues_in_union(A, "both"))


def test_eigenvalues_in_union_can_say_no():
    """The check is not vacuous: shrink the discs and an eigenvalue falls outside."""
    M = np.array([[0.0, 2.0], [2.0, 0.0]])  # eigenvalues ±2, discs centred at 0 of radius 2
    assert theory.eigenvalues_in_union(M)
    lam = theory.spectrum(M)
    centres, radii = theory.gersgorin_discs(M)
    assert not np.all(theory.in_union(lam, centres, radii * 0.9))
    batch = np.stack([M, np.diag([1.0, 2.0])])
    assert theory.eigenvalues_in_union(batch).shape == (2,)


def test_gersgorin_rejects_bad_input():
    with pytest.raises(ValueError, match="square"):
        theory.gersgorin_discs(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="axis"):
        theory.gersgorin_discs(np.zeros((2, 2)), axis="diagonal")
    with pytest.raises(ValueError, match="layout"):
        theory.step_jacobian(rhn.init_params(1, 2, 1, dtype="float64"), np.zeros((1, 1)), np.zeros((1, 2)), layout="denominator")


# ----------------------------------------------------------------------------
# Eq. 14: the printed radius indexes the gates by the row
# ----------------------------------------------------------------------------
def test_eq14_printed_radius_differs_from_the_actual_radius():
    rng = np.random.default_rng(0)
    params = rhn.init_params(3, 6, 1, coupled=False, init_scale=1.0, transform_bias=0.0, seed=0, dtype="float64")
    x, s = rng.standard_normal((2, 3)), np.tanh(rng.standard_normal((2, 6)))
    A = theory.step_jacobian(params, x, s, layout="paper")
    _, actual = theory.gersgorin_discs(A, "rows")
    printed = theory.eq14_printed_radii(params, x, s)
    assert printed.shape == actual.shape == (2, 6)
    assert np.max(np.abs(printed - actual)) > 1e-2


@given(data=st.data())
@settings(deadline=None)
def test_eq14_printed_radius_is_right_when_gates_are_uniform(data):
    """If t, h, y (and c) are the same in every unit, row- and column-indexing agree."""
    params, x, _, _ = draw_config(data, depth=1, masks=False)
    n = params["R_H"].shape[1]
    for k in ("W_H", "W_T") + (("W_C",) if "W_C" in params else ()):
        params[k] = params[k] * 0
    for k in [k for k in params if k.startswith("b_")]:
        params[k] = params[k] * 0 + params[k][0, 0]
    s = np.full((x.shape[0], n), 0.0)  # y = 0: every unit sees the same pre-activation
    A = theory.step_jacobian(params, x, s, layout="paper")
    np.testing.assert_allclose(theory.eq14_printed_radii(params, x, s), theory.gersgorin_discs(A)[1], rtol=1e-12, atol=EXACT)


# ----------------------------------------------------------------------------
# Plain tanh RNN (Eqs. 2-3)
# ----------------------------------------------------------------------------
@given(
    n_in=st.integers(1, 4),
    n=st.integers(1, 6),
    B=st.integers(1, 3),
    std=st.floats(0.01, 2.0),
    init=st.sampled_from(["normal", "identity"]),
    seed=st.integers(0, 2**32 - 1),
)
@settings(deadline=None)
def test_rnn_step_jacobian_and_eq3_bound(n_in, n, B, std, init, seed):
    p = theory.rnn_init(n_in, n, init_std=std, init=init, seed=seed)
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((B, n_in)), np.tanh(rng.standard_normal((B, n)))
    J = theory.rnn_step_jacobian(**p, x=x, y_prev=y)
    J_fd = fd_jacobian(lambda z: theory.rnn_step_forward(**p, x=x, y_prev=z), y)
    np.testing.assert_allclose(J, J_fd, rtol=FD_TOL, atol=FD_TOL)
    np.testing.assert_array_equal(theory.rnn_step_jacobian(**p, x=x, y_prev=y, layout="paper"), np.swapaxes(J, -1, -2))
    bound = theory.rnn_norm_bound(p["R"])  # Eq. 3 with γ = 1 (tanh)
    assert bound == pytest.approx(np.linalg.norm(p["R"], 2), rel=1e-12)
    assert np.all(theory.lag_norms(J[None])[0] <= bound * (1 + 1e-12))
    if init == "identity":
        np.testing.assert_array_equal(np.diag(p["R"]), 1.0)


# ----------------------------------------------------------------------------
# Jacobians across time
# ----------------------------------------------------------------------------
@given(data=st.data(), T=st.integers(1, 5), anchor=st.sampled_from(["end", "start"]))
@settings(deadline=None)
def test_rhn_jacobians_across_time_match_finite_differences(data, T, anchor):
    params, x, s0, m = draw_config(data)
    rng = np.random.default_rng(T)
    xs = rng.standard_normal((T,) + x.shape)
    Js = theory.sequence_jacobians(params, xs, s0, m)
    P = theory.jacobians_across_time(Js, anchor=anchor)
    assert P.shape == (T,) + Js.shape[1:]
    ys, _ = rhn.forward(params, xs, s0, m, impl="reference")
    states = [s0] + [ys[t] for t in range(T)]
    for k in range(1, T + 1):
        if anchor == "end":  # ∂s_T / ∂s_{T-k}: run steps T-k+1..T from a perturbed s_{T-k}
            f = lambda z, k=k: rhn.forward(params, xs[T - k :], z, m, impl="reference")[0][-1]
            at = states[T - k]
        else:  # ∂s_k / ∂s_0
            f = lambda z, k=k: rhn.forward(params, xs[:k], z, m, impl="reference")[0][-1]
            at = s0
        np.testing.assert_allclose(P[k - 1], fd_jacobian(f, at), rtol=1e-6, atol=1e-7)
    # each step Jacobian equals the one-step API at the same state
    t = data.draw(st.integers(0, T - 1), label="t")
    np.testing.assert_allclose(Js[t], theory.step_jacobian(params, xs[t], states[t], m), rtol=EXACT, atol=EXACT)


def test_rnn_jacobians_across_time_and_norms():
    p = theory.rnn_init(2, 4, init_std=0.6, seed=5)
    rng = np.random.default_rng(5)
    xs, y0 = rng.standard_normal((6, 2, 2)), np.zeros((2, 4))
    Js = theory.rnn_sequence_jacobians(**p, xs=xs, y0=y0)
    P = theory.jacobians_across_time(Js, anchor="start")
    f = lambda z: theory.rnn_forward(**p, xs=xs, y0=z)[-1]
    np.testing.assert_allclose(P[-1], fd_jacobian(f, y0), rtol=1e-6, atol=1e-8)
    norms = theory.lag_norms(P)
    assert norms.shape == (6, 2)
    np.testing.assert_allclose(norms, np.linalg.norm(P, ord=2, axis=(-2, -1)), rtol=1e-12)
    sv = theory.singular_values(P)
    assert sv.shape == (6, 2, 4) and np.all(np.diff(sv, axis=-1) <= 0)
    with pytest.raises(ValueError, match="anchor"):
        theory.jacobians_across_time(Js, anchor="middle")


# ----------------------------------------------------------------------------
# Backends: Jacobians on the device of the inputs, eigenvalues on the host
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKENDS)
def test_step_jacobian_on_every_backend(name):
    be = backend.get(name)
    params = rhn.init_params(3, 5, 2, coupled=False, init_scale=0.6, transform_bias=-0.5, seed=2, dtype="float64")
    rng = np.random.default_rng(2)
    x, s = rng.standard_normal((2, 3)), np.tanh(rng.standard_normal((2, 5)))
    m = {"x": rng.uniform(0, 2, (2, 3)), "s": rng.uniform(0, 2, (2, 5))}
    J_ref = theory.step_jacobian(params, x, s, m)
    J = theory.step_jacobian(on(be, params), on(be, x), on(be, s), on(be, m))
    assert backend.name_of(J) == be.name
    np.testing.assert_allclose(host(J), J_ref, rtol=EXACT, atol=EXACT)
    np.testing.assert_allclose(theory.spectrum(J), theory.spectrum(J_ref), rtol=1e-12, atol=EXACT)


def test_jacobian_from_cache_on_the_strict_backend():
    """theory's own array code is Array-API clean: a NumPy forward cache moved to
    array-api-strict's fake device gives the same Jacobians."""
    be = backend.get("array_api_strict")
    for coupled in (True, False):
        params = rhn.init_params(3, 5, 3, coupled=coupled, init_scale=0.6, seed=1, dtype="float64")
        rng = np.random.default_rng(1)
        xs, s0 = rng.standard_normal((3, 2, 3)), np.tanh(rng.standard_normal((2, 5)))
        m = {"x": rng.uniform(0, 2, (2, 3)), "s": rng.uniform(0, 2, (2, 5))}
        _, cache = rhn.forward(params, xs, s0, m, impl="reference")
        cache_strict = {k: on(be, v) if isinstance(v, np.ndarray) else v for k, v in cache.items()}
        cache_strict["m_s"] = on(be, cache["m_s"])
        Js = []
        for t in range(3):
            J = theory.jacobian_from_cache(on(be, params), cache_strict, t)
            assert backend.name_of(J) == "array_api_strict"
            np.testing.assert_allclose(host(J), theory.jacobian_from_cache(params, cache, t), rtol=EXACT, atol=EXACT)
            Js.append(host(J))
        P = theory.jacobians_across_time(on(be, np.stack(Js)))
        assert backend.name_of(P) == "array_api_strict"
        np.testing.assert_allclose(host(P), theory.jacobians_across_time(np.stack(Js)), rtol=EXACT, atol=EXACT)


@pytest.mark.parametrize("name", [p.values[0] for p in BACKENDS], ids=[p.id for p in BACKENDS])
def test_discs_spectrum_and_rnn_on_every_backend(name):
    if name == "cupy" and not backend.cupy_available():
        pytest.skip("CuPy with a CUDA GPU is not available")
    be = backend.get(name)
    M = np.array([[1.0, -2.0, 0.5], [0.3, -1.0, 0.0], [0.0, 4.0, 2.0]])
    c, r = theory.gersgorin_discs(on(be, M), "rows")
    assert backend.name_of(c) == be.name
    np.testing.assert_allclose(host(r), [2.5, 0.3, 4.0])
    assert theory.eigenvalues_in_union(on(be, M), "both")
    np.testing.assert_allclose(np.sort_complex(theory.spectrum(on(be, M))), np.sort_complex(np.linalg.eigvals(M)))
    p = theory.rnn_init(2, 3, init_std=0.5, seed=1, backend=be)
    p_host = theory.rnn_init(2, 3, init_std=0.5, seed=1)
    x, y = np.ones((1, 2)), np.full((1, 3), 0.2)
    J = theory.rnn_step_jacobian(**p, x=on(be, x), y_prev=on(be, y))
    np.testing.assert_allclose(host(J), theory.rnn_step_jacobian(**p_host, x=x, y_prev=y), rtol=EXACT)


# ----------------------------------------------------------------------------
# Plot helpers (Agg): they draw, label and save without a display
# ----------------------------------------------------------------------------
def test_plot_helpers_draw_and_save(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rhn_np import plots

    M = np.array([[0.5, 0.2], [-0.1, -0.3]])
    with plots.slide_style():
        fig, axes = plt.subplots(1, 4, figsize=(20, 5))
        ax = plots.plot_discs(M, axes[0], title="discs")
        plots.plot_discs(np.eye(2) * 0.9, ax, color="C1", label="second")
        assert ax.get_xlabel() == "Re λ" and len(ax.patches) == 2 * 2 * 2
        assert sum(line.get_label() == "unit circle |λ| = 1" for line in ax.lines) == 1
        plots.set_common_limits(axes[:1])
        plots.plot_spectrum_sweep([0, 1], [theory.spectrum(M), theory.spectrum(2 * M)], axes[1], xlabel="scale")
        plots.plot_eigenvalue_paths([0, 1], [theory.spectrum(M), theory.spectrum(2 * M)], axes[2])
        plots.plot_norm_vs_lag({"a": np.array([1.0, 0.5, 0.25]), "b": np.ones((3, 2))}, axes[3])
        fig2 = plt.figure()
        plots.plot_singular_values_vs_lag(np.array([[2.0, 1.0], [1.5, 0.5]]), fig2.gca(), label="rhn")
    with pytest.raises(ValueError, match="one matrix"):
        plots.plot_discs(np.zeros((2, 2, 2)))
    monkeypatch.delenv("RHN_FIGDIR", raising=False)
    assert plots.save_figure(fig, "x") is None
    monkeypatch.setenv("RHN_FIGDIR", str(tmp_path / "figs"))
    path = plots.save_figure(fig, "discs")
    assert path.endswith("discs.png") and (tmp_path / "figs" / "discs.png").stat().st_size > 1000
    plt.close("all")


def test_plot_mistakes_found_by_a_lecturer(tmp_path, monkeypatch):
    """Each of these used to draw a wrong figure, write a wrong file, or hide the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rhn_np import plots

    M = np.array([[0.5, 0.2], [-0.1, -0.3]])
    three = [theory.spectrum(M * s) for s in (1, 2, 3)]
    fig, ax = plt.subplots()
    for plot in (plots.plot_spectrum_sweep, plots.plot_eigenvalue_paths):
        with pytest.raises(ValueError, match=r"one spectrum per swept value: got \(2,\) values and 3 spectra"):
            plot([0, 1], three, ax)  # zip dropped the third spectrum / mis-coloured the points
    strict = backend.get("array_api_strict")
    plots.plot_spectrum_sweep(strict.to_device(np.array([1.0, 2.0, 3.0])), three, ax)  # values on a device
    # Complex matrices keep their discs off the real axis; negative radii are refused.
    Z = np.array([[1j, 0.1], [0.1, 2.0]])
    ax2 = plots.plot_discs(Z, plt.figure().gca())
    assert ax2.patches[0].center == (0.0, 1.0)
    with pytest.raises(ValueError, match="radii must be >= 0"):
        plots.plot_discs(M, ax, radii=np.array([0.1, -0.1]))
    assert plots.plot_discs(M, plt.figure().gca(), radii=np.array([0.1, 0.1])).patches[1].get_label() == \
        "discs (given radii)"
    # Round-off singular values are left out, not drawn at a made-up level.
    ax3 = plots.plot_singular_values_vs_lag(np.array([[1.0, 1e-20], [1.0, 1e-3]]), plt.figure().gca())
    sigma_min = next(ln for ln in ax3.lines if ln.get_label() == "σ_min")
    assert np.isnan(sigma_min.get_ydata()[0]) and sigma_min.get_ydata()[1] == 1e-3
    assert any("round-off" in ln.get_label() for ln in ax3.lines)
    ax5 = plots.plot_singular_values_vs_lag(np.array([[1.0, 0.5], [0.9, 0.4]]), plt.figure().gca())
    assert not any("round-off" in ln.get_label() for ln in ax5.lines)  # nothing left out: no level line
    ax6 = plots.plot_singular_values_vs_lag(np.array([[0.0, 0.0], [1.0, 0.0]]), plt.figure().gca())
    assert np.all(np.isnan(next(ln for ln in ax6.lines if ln.get_label() == "σ_min").get_ydata()))  # zeros too
    with pytest.raises(ValueError, match="colors has 1 entries for 2 curves"):
        plots.plot_norm_vs_lag({"a": np.ones(3), "b": np.ones(3)}, ax, colors=["C0"])
    with pytest.raises(ValueError, match="curves must be a non-empty dict"):
        plots.plot_norm_vs_lag({}, ax)
    # File names: no folders, no doubled extension.
    monkeypatch.setenv("RHN_FIGDIR", str(tmp_path))
    for bad in ("../escape", "/tmp/x", "sub/x", "", None, 3, ".png", "..png", "C:x", "a\\b"):
        with pytest.raises(ValueError, match="name must be a file name without folder or extension"):
            plots.save_figure(fig, bad)
    assert plots.save_figure(fig, "y.png") == str(tmp_path / "y.png")
    # show() displays on interactive Agg-based backends (QtAgg, ipympl), closes only on plain Agg.
    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(True))
    monkeypatch.delenv("RHN_FIGDIR")
    for name, displayed in (("QtAgg", True), ("module://ipympl.backend_nbagg", True), ("agg", False),
                            ("module://matplotlib_inline.backend_inline", True),
                            ("module://matplotlib.backends.backend_agg", False)):
        monkeypatch.setattr(matplotlib, "get_backend", lambda name=name: name)
        shown.clear()
        plots.show(plt.figure(), "f")
        assert bool(shown) == displayed, name
    plt.close("all")


def test_two_matrices_on_one_axes_keep_their_legend_groups():
    """Figure 2: each initialisation's discs and eigenvalues together in the legend, the
    unit circle after both (it used to sit between them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rhn_np import plots

    M = np.array([[0.5, 0.2], [-0.1, -0.3]])
    ax = plt.figure().gca()
    plots.plot_discs(M, ax, color="C0", label="(1) discs", unit_circle=False, eigenvalue_label="(1) eigenvalues")
    plots.plot_discs(M + 1, ax, color="C3", label="(2) discs", eigenvalue_marker="+", eigenvalue_label="(2) eigenvalues")
    handles, labels = ax.get_legend_handles_labels()
    assert labels == ["(1) discs", "(1) eigenvalues", "(2) discs", "(2) eigenvalues", "unit circle |λ| = 1"]
    assert [h.get_marker() for h in handles if "eigenvalues" in h.get_label()] == ["x", "+"]
    ax2 = plt.figure().gca()  # by default: one "eigenvalues" entry for all matrices, as before
    plots.plot_discs(M, ax2)
    plots.plot_discs(M + 1, ax2, color="C1")
    assert ax2.get_legend_handles_labels()[1].count("eigenvalues") == 1
    plt.close("all")


def test_adam_checks_the_params_before_changing_anything():
    from rhn_np import optim

    opt = optim.Adam(0.1)
    p = {"a": np.ones(3), "b": np.ones(2)}
    opt.step(p, {k: np.ones_like(v) for k, v in p.items()})
    before = {k: v.copy() for k, v in opt.m.items()}
    q = {"a": np.ones(4), "b": np.ones(2)}
    with pytest.raises(ValueError, match=r"Adam's moments\['a'\] has shape \(3,\), params\['a'\] \(4,\).*make a new Adam"):
        opt.step(q, {k: np.ones_like(v) for k, v in q.items()})
    with pytest.raises(KeyError, match="differ in \\['b'\\]"):
        opt.step({"a": np.ones(3)}, {"a": np.ones(3)})
    assert opt.t == 1 and all(np.array_equal(opt.m[k], before[k]) for k in before)  # nothing was changed
    with pytest.raises(ValueError, match="eps must be a finite number > 0.0"):
        optim.Adam(eps=0)
    assert optim.lr_at_epoch(10**6, 0.2, 1, 1.5) == 0.0  # decayed to nothing, not an OverflowError


# ----------------------------------------------------------------------------
# Any cell: the generic step Jacobian on the DT-RNN and DT(S)-RNN (Pascanu et al.),
# Eq. 2 as the DT-RNN of depth 1, and the RHN's Eq. 10 route against the generic one
# ----------------------------------------------------------------------------
from rhn_np import dtrnn  # noqa: E402


def draw_dtrnn_config(data, *, shortcut=None, masks=None, depth=None):
    """Draw a small DT-RNN / DT(S)-RNN configuration (labelled) and host float64 inputs for one step."""
    B = data.draw(st.integers(1, 3), label="B")
    n_in = data.draw(st.integers(1, 4), label="n_in")
    n = data.draw(st.integers(1, 5), label="n")
    L = data.draw(st.integers(1, 3), label="depth") if depth is None else depth
    shortcut = data.draw(st.booleans(), label="shortcut") if shortcut is None else shortcut
    use_masks = data.draw(st.booleans(), label="masks") if masks is None else masks
    init_scale = data.draw(st.floats(0.05, 1.2), label="init_scale")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    params = dtrnn.init_params(n_in, n, L, shortcut=shortcut, init_scale=init_scale, seed=seed, dtype="float64")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, n_in))
    s = np.tanh(rng.standard_normal((B, n)))
    m = None
    if use_masks:  # inverted dropout masks, keep = 0.7 (zeros included)
        m = {"x": (rng.random((B, n_in)) < 0.7) / 0.7, "s": (rng.random((B, n)) < 0.7) / 0.7}
    return params, x, s, m


@given(data=st.data())
@settings(deadline=None)
def test_dtrnn_step_jacobian_matches_finite_differences(data):
    """The generic step_jacobian (the cell's own step_backward) on DT-RNN / DT(S)-RNN params
    is the derivative of dtrnn.step_forward with respect to s_{t-1}."""
    params, x, s, m = draw_dtrnn_config(data)
    J = theory.step_jacobian(params, x, s, m)
    assert J.shape == (x.shape[0], s.shape[1], s.shape[1]) and J.dtype == np.float64
    J_fd = fd_jacobian(lambda z: dtrnn.step_forward(params, x, z, m)[0], s)
    np.testing.assert_allclose(J, J_fd, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(theory.step_jacobian(params, x, s, m, layout="paper"), np.swapaxes(J, -1, -2),
                               rtol=0, atol=0)


@pytest.mark.parametrize("shortcut", [False, True], ids=["dt_rnn", "dts_rnn"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomasks", "masks"])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_dtrnn_step_jacobian_matches_finite_differences_grid(shortcut, masked, depth):
    """The same on a fixed grid, every combination at least once (B 3, n 5)."""
    rng = np.random.default_rng(depth + 10 * shortcut + 100 * masked)
    B, n_in, n = 3, 2, 5
    params = dtrnn.init_params(n_in, n, depth, shortcut=shortcut, init_scale=0.8, seed=depth, dtype="float64")
    x, s = rng.standard_normal((B, n_in)), np.tanh(rng.standard_normal((B, n)))
    m = {"x": rng.uniform(0, 2, (B, n_in)), "s": rng.uniform(0, 2, (B, n))} if masked else None
    J = theory.step_jacobian(params, x, s, m)
    J_fd = fd_jacobian(lambda z: dtrnn.step_forward(params, x, z, m)[0], s)
    np.testing.assert_allclose(J, J_fd, rtol=1e-8, atol=1e-8)
    # The closed form of the docstring: Π_ℓ diag(1 - z_ℓ²) (diag(m_s) R[ℓ])ᵀ, plus the
    # shortcut diag(1 - z_L²) (diag(m_s) U)ᵀ added to the last factor's input path.
    _, cache = dtrnn.step_forward(params, x, s, m)
    ms = np.ones((B, n)) if m is None else m["s"]
    P = np.broadcast_to(np.eye(n), (B, n, n))
    for l in range(depth):
        d = 1.0 - cache["z"][l, 0] ** 2  # (B, n)
        M = d[:, :, None] * np.swapaxes(ms[:, :, None] * params["R"][l][None], -1, -2)
        P = M @ P
    if shortcut:
        d = 1.0 - cache["z"][depth - 1, 0] ** 2
        P = P + d[:, :, None] * np.swapaxes(ms[:, :, None] * params["U"][None], -1, -2)
    np.testing.assert_allclose(J, P, rtol=EXACT, atol=EXACT)


@given(
    n_in=st.integers(1, 4),
    n=st.integers(1, 5),
    B=st.integers(1, 3),
    std=st.floats(0.05, 1.5),
    seed=st.integers(0, 2**32 - 1),
)
@settings(deadline=None)
def test_dtrnn_of_depth_one_is_eq2(n_in, n, B, std, seed):
    """Depth 1 without shortcut is the plain tanh RNN: step_jacobian on its DT-RNN params
    equals rnn_step_jacobian (Eq. 2, closed form), in both layouts."""
    p = theory.rnn_init(n_in, n, init_std=std, seed=seed)
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((B, n_in)), np.tanh(rng.standard_normal((B, n)))
    dp = dtrnn.rnn_params(p["R"], p["W"], p["b"])
    assert dp["R"].shape == (1, n, n) and dp["b"].shape == (1, n) and not dtrnn.has_shortcut(dp)
    for layout in ("numerator", "paper"):
        J_gen = theory.step_jacobian(dp, x, y, layout=layout)
        J_eq2 = theory.rnn_step_jacobian(**p, x=x, y_prev=y, layout=layout)
        np.testing.assert_allclose(J_gen, J_eq2, rtol=EXACT, atol=EXACT)
    # ... and the DT-RNN drawn by its own init, read back as (R[0], W, b[0]).
    q = dtrnn.init_params(n_in, n, 1, init_scale=std, seed=seed, dtype="float64")
    for layout in ("numerator", "paper"):
        np.testing.assert_allclose(theory.step_jacobian(q, x, y, layout=layout),
                                   theory.rnn_step_jacobian(q["R"][0], q["W"], q["b"][0], x, y, layout=layout),
                                   rtol=EXACT, atol=EXACT)
    A = theory.rnn_step_jacobian(q["R"][0], q["W"], q["b"][0], x, y, layout="paper")
    np.testing.assert_allclose(A, np.swapaxes(theory.rnn_step_jacobian(q["R"][0], q["W"], q["b"][0], x, y), -1, -2),
                               rtol=0, atol=0)


@given(data=st.data())
@settings(deadline=None)
def test_generic_step_jacobian_equals_the_rhn_eq10_product(data):
    """For RHN params (coupled or not, masks or not) the generic route (rhn.step_backward of
    unit vectors) and the paper's route (J_L ⋯ J_1 of Eq. 10 from the cached gates) agree."""
    params, x, s, m = draw_config(data)
    for layout in ("numerator", "paper"):
        J_gen = theory.step_jacobian(params, x, s, m, layout=layout)
        J_eq10 = theory.rhn_step_jacobian(params, x, s, m, layout=layout)
        np.testing.assert_allclose(J_gen, J_eq10, rtol=EXACT, atol=EXACT)
    _, cache = rhn.step_forward(params, x, s, m)
    np.testing.assert_allclose(theory.jacobian_from_cache(params, cache, 0), theory.step_jacobian(params, x, s, m),
                               rtol=EXACT, atol=EXACT)


@pytest.mark.parametrize("coupled", [True, False], ids=["coupled", "uncoupled"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomasks", "masks"])
def test_generic_step_jacobian_equals_the_rhn_eq10_product_grid(coupled, masked):
    params = rhn.init_params(3, 5, 3, coupled=coupled, init_scale=0.7, transform_bias=-0.5, seed=4, dtype="float64")
    rng = np.random.default_rng(4)
    x, s = rng.standard_normal((3, 3)), np.tanh(rng.standard_normal((3, 5)))
    m = {"x": rng.uniform(0, 2, (3, 3)), "s": rng.uniform(0, 2, (3, 5))} if masked else None
    J = theory.step_jacobian(params, x, s, m)
    np.testing.assert_allclose(J, theory.rhn_step_jacobian(params, x, s, m), rtol=EXACT, atol=EXACT)
    assert np.max(np.abs(J - np.eye(5))) > 1e-3  # not a trivial (identity) Jacobian


@pytest.mark.parametrize("shortcut", [False, True], ids=["dt_rnn", "dts_rnn"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomasks", "masks"])
def test_dtrnn_sequence_jacobians_across_time_and_discs(shortcut, masked):
    Tn, B, n_in, n, depth = 5, 2, 3, 4, 2
    params = dtrnn.init_params(n_in, n, depth, shortcut=shortcut, init_scale=0.9, seed=7, dtype="float64")
    rng = np.random.default_rng(7)
    xs, s0 = rng.standard_normal((Tn, B, n_in)), np.tanh(rng.standard_normal((B, n)))
    m = {"x": rng.uniform(0, 2, (B, n_in)), "s": rng.uniform(0, 2, (B, n))} if masked else None
    Js = theory.sequence_jacobians(params, xs, s0, m)
    assert Js.shape == (Tn, B, n, n)
    ys, _ = dtrnn.forward(params, xs, s0, m)
    prev = s0
    for t in range(Tn):  # entry t: the step from the state before step t
        np.testing.assert_allclose(Js[t], theory.step_jacobian(params, xs[t], prev, m), rtol=EXACT, atol=EXACT)
        prev = ys[t]
    np.testing.assert_allclose(theory.sequence_jacobians(params, xs, s0, m, layout="paper"), np.swapaxes(Js, -1, -2),
                               rtol=0, atol=0)
    for anchor in ("end", "start"):
        P = theory.jacobians_across_time(Js, anchor=anchor)
        assert P.shape == (Tn, B, n, n)
        assert theory.lag_norms(P).shape == (Tn, B)
    # The longest product is ∂s_T/∂s_0 from both ends: central differences of dtrnn.forward.
    P_end, P_start = theory.jacobians_across_time(Js, anchor="end"), theory.jacobians_across_time(Js, anchor="start")
    np.testing.assert_allclose(P_end[-1], P_start[-1], rtol=1e-12, atol=1e-14)
    full = fd_jacobian(lambda z: dtrnn.forward(params, xs, z, m)[0][-1], s0)
    np.testing.assert_allclose(P_start[-1], full, rtol=1e-7, atol=1e-8)
    # anchor="start", lag k: ∂s_k/∂s_0; anchor="end", lag 1: the last step's Jacobian.
    k2 = fd_jacobian(lambda z: dtrnn.forward(params, xs, z, m)[0][1], s0)
    np.testing.assert_allclose(P_start[1], k2, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(P_end[0], Js[-1], rtol=0, atol=0)
    # Geršgorin: every eigenvalue of every step Jacobian (and product) lies in the union of its discs.
    for M in (Js, P_end):
        assert np.all(theory.eigenvalues_in_union(M, "both"))
        lam = theory.spectrum(M)
        for axis in ("rows", "columns"):
            c, r = theory.gersgorin_discs(M, axis=axis)
            assert c.shape == r.shape == (Tn, B, n) and np.all(r >= 0)
            np.testing.assert_allclose(c, np.diagonal(M, axis1=-2, axis2=-1), rtol=0, atol=0)
            assert np.all(theory.in_union(lam, c, r, tol=1e-10))


def test_rnn_forward_is_the_dtrnn_of_depth_one():
    """One source of truth: rnn_step_forward / rnn_forward run the DT-RNN; bitwise equal,
    and equal to the recursion y_t = tanh(x_t W + y_{t-1} R + b) written out here."""
    p = theory.rnn_init(3, 4, init_std=0.6, seed=5)
    rng = np.random.default_rng(5)
    xs, y0 = rng.standard_normal((6, 2, 3)), np.tanh(rng.standard_normal((2, 4)))
    ys = theory.rnn_forward(p["R"], p["W"], p["b"], xs, y0)
    ref, _ = dtrnn.forward(dtrnn.rnn_params(p["R"], p["W"], p["b"]), xs, y0)
    np.testing.assert_array_equal(ys, ref)
    np.testing.assert_array_equal(theory.rnn_step_forward(p["R"], p["W"], p["b"], xs[0], y0),
                                  dtrnn.step_forward(dtrnn.rnn_params(p["R"], p["W"], p["b"]), xs[0], y0)[0])
    y, by_hand = y0, []
    for t in range(6):
        y = np.tanh(xs[t] @ p["W"] + y @ p["R"] + p["b"])
        by_hand.append(y)
    np.testing.assert_allclose(ys, np.stack(by_hand), rtol=1e-14, atol=1e-15)
    # The sequence Jacobians of both routes agree too.
    np.testing.assert_allclose(theory.rnn_sequence_jacobians(p["R"], p["W"], p["b"], xs, y0),
                               theory.sequence_jacobians(dtrnn.rnn_params(p["R"], p["W"], p["b"]), xs, y0),
                               rtol=EXACT, atol=EXACT)


@pytest.mark.parametrize("shortcut", [False, True], ids=["dt_rnn", "dts_rnn"])
def test_dtrnn_step_jacobian_on_the_strict_backend(shortcut):
    pytest.importorskip("array_api_strict")
    be = backend.get("array_api_strict")
    params = dtrnn.init_params(3, 4, 3, shortcut=shortcut, init_scale=0.8, seed=3, dtype="float64")
    rng = np.random.default_rng(3)
    x, s = rng.standard_normal((2, 3)), np.tanh(rng.standard_normal((2, 4)))
    m = {"x": rng.uniform(0, 2, (2, 3)), "s": rng.uniform(0, 2, (2, 4))}
    for masks in (None, m):
        for layout in ("numerator", "paper"):
            J_ref = theory.step_jacobian(params, x, s, masks, layout=layout)
            J = theory.step_jacobian(on(be, params), on(be, x), on(be, s), on(be, masks), layout=layout)
            assert backend.name_of(J) == "array_api_strict"
            np.testing.assert_allclose(host(J), J_ref, rtol=EXACT, atol=EXACT)
    xs = rng.standard_normal((3, 2, 3))
    Js = theory.sequence_jacobians(on(be, params), on(be, xs), on(be, s), on(be, m))
    assert backend.name_of(Js) == "array_api_strict"
    np.testing.assert_allclose(host(Js), theory.sequence_jacobians(params, xs, s, m), rtol=EXACT, atol=EXACT)
    assert np.all(theory.eigenvalues_in_union(Js, "both"))
