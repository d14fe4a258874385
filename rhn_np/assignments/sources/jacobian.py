# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
#   rhn_np:
#     assignment: jacobian
# ---

# %% [markdown]
# # Assignment 3: the step Jacobian and its Geršgorin discs (Eqs. 4, 10–13, 15)
#
# Backpropagation multiplies the state gradient, once per time step, by the temporal
# Jacobian $\partial s_t/\partial s_{t-1}$; its eigenvalues decide whether gradients vanish
# or explode. The paper bounds them with the Geršgorin circle theorem (Eq. 4): every
# eigenvalue of a square matrix $A$ lies in the union of the discs centred at $a_{ii}$ with
# radius $\sum_{j \ne i} |a_{ij}|$ (rows; the same holds for columns).
#
# For one micro-layer with **coupled** gates ($c = 1 - t$) and input state $y = s_{\ell-1}$,
# Eqs. 10–13 give, in the paper's layout ($A_{ij} = \partial s_j / \partial y_i$),
#
# $$A = \operatorname{diag}(1 - t) + H' \operatorname{diag}(t) + T' \operatorname{diag}(h - y),
#   \qquad H' = \operatorname{diag}(m)\, R_H \operatorname{diag}[\tanh'(a_H)], \quad
#   T' = \operatorname{diag}(m)\, R_T \operatorname{diag}[\sigma'(a_T)],$$
#
# with `R_H`, `R_T` the matrices *as stored* in `rhn_np` (row vectors: $a = (y \odot m) R + \dots$)
# and $m$ the dropout mask of the state (all ones without one). Note that
# $\tanh'(a_H) = 1 - h^2$ and $\sigma'(a_T) = t(1 - t)$ come from the gate values alone.
#
# **Layouts.** `rhn_np` and this assignment use the usual *numerator* layout,
# $J_{ij} = \partial s_i / \partial y_j$, i.e. $J = A^\top$; the chain rule over the
# micro-layers of one step is then $J = J_L \cdots J_1$. The eigenvalues of $J$ and $A$ are
# the same; the row discs of one are the column discs of the other.
#
# **Parts and points**
#
# | part | what | points |
# |---|---|---|
# | `micro` | `micro_jacobian`: one coupled micro-layer's Jacobian, numerator layout (Eqs. 10–13) | 4 |
# | `chain` | `chain`: the step Jacobian from the micro-layer Jacobians | 2 |
# | `discs` | `gersgorin_discs`: centres and row radii (Eq. 4) | 2 |
# | `eq15` | a written answer on Eq. 15's limits | 2, **graded by hand** |
#
# The first three parts are auto-graded: visible tests now, hidden tests at grading time
# against `rhn_np.theory` (the reference), central differences and Hypothesis properties.
# The written answer is graded by hand and is not part of the automatic score. A test cell
# that fails or writes to stderr scores 0 for its part. Do not call `rhn_np.theory`'s
# Jacobian or disc functions in your answers.

# %% nbgrader={"grade": false, "grade_id": "jacobian-setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
import warnings

import numpy as np

from rhn_np import rhn, theory
from rhn_np.gradcheck import numerical_gradient, rel_error

warnings.simplefilter("ignore", RuntimeWarning)  # a test cell that writes to stderr scores 0


def coupled_layer(B=2, n=3, n_in=2, depth=1, transform_bias=-1.0, masked=False, seed=0):
    """A small coupled RHN and one step's inputs: params, x (B, n_in), s_prev (B, n), masks (or None)."""
    rng = np.random.default_rng(seed)
    params = rhn.init_params(n_in, n, depth, transform_bias=transform_bias, init_scale=0.6, seed=seed,
                             dtype="float64")
    x = rng.standard_normal((B, n_in))
    s_prev = rng.uniform(-0.8, 0.8, (B, n))
    masks = None
    if masked:
        masks = {"x": rng.binomial(1, 0.7, (B, n_in)) / 0.7, "s": rng.binomial(1, 0.7, (B, n)) / 0.7}
    return params, x, s_prev, masks


def gate_values(params, x, s_prev, masks=None):
    """(y, h, t) of micro-layers 1..L of one step, from the reference forward's cache, and the state mask."""
    _, cache = rhn.step_forward(params, x, s_prev, masks)
    L = cache["s_in"].shape[0]
    layers = [(cache["s_in"][l, 0], cache["h"][l, 0], cache["t"][l, 0]) for l in range(L)]
    return layers, cache["m_s"]


# %% [markdown]
# ## Part 1: one micro-layer's Jacobian, 4 points
#
# Write `micro_jacobian(R_H, R_T, y, h, t, m_s=None)`: the Jacobian
# $J_{b,i,j} = \partial s_\ell[b, i] / \partial y[b, j]$ of one coupled micro-layer, for
# every batch row b, in the **numerator** layout, from the formula above. `R_H`, `R_T` are
# this micro-layer's (n, n) matrices; `y`, `h`, `t`, `m_s` are (B, n). Broadcasting a
# (B, n) vector against a (B, n, n) stack scales rows (`v[:, :, None]`) or columns
# (`v[:, None, :]`).

# %% nbgrader={"grade": false, "grade_id": "jacobian-micro_solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
def micro_jacobian(R_H, R_T, y, h, t, m_s=None):
    """∂s[ℓ]/∂s[ℓ-1] of one coupled micro-layer, numerator layout: (B, n, n), J[b, i, j] = ∂s[b, i]/∂y[b, j]."""
    n = y.shape[1]
    ### BEGIN SOLUTION
    RH, RT = R_H.T[None, :, :], R_T.T[None, :, :]  # J = Aᵀ: the stored R transposed
    if m_s is not None:
        RH, RT = RH * m_s[:, None, :], RT * m_s[:, None, :]  # diag(m) on the input side: columns of J
    J = (t * (1.0 - h * h))[:, :, None] * RH  # diag(t ⊙ tanh') R_Hᵀ diag(m)
    J = J + ((h - y) * t * (1.0 - t))[:, :, None] * RT  # diag((h - y) ⊙ σ') R_Tᵀ diag(m)
    J = J + np.eye(n)[None, :, :] * (1.0 - t)[:, :, None]  # the carry: diag(1 - t)
    return J
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "jacobian-micro", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
# Visible tests. (1) A very negative transform bias closes the gate (t ≈ 0): the carry limit of Eq. 15, J = I.
params, x, s_prev, masks = coupled_layer(transform_bias=-40.0)
[(y, h, t)], m_s = gate_values(params, x, s_prev)
J = micro_jacobian(params["R_H"][0], params["R_T"][0], y, h, t)
assert J.shape == (2, 3, 3), "one (n, n) Jacobian per batch row"
assert np.allclose(J, np.eye(3)), "t = 0: s = y, so J = I"
# (2) Central differences of the package's one-step forward (depth 1, dropout masks on): row i of J is
# the gradient of Σ_b s[b, i] with respect to s_prev.
params, x, s_prev, masks = coupled_layer(masked=True, seed=1)
[(y, h, t)], m_s = gate_values(params, x, s_prev, masks)
J = micro_jacobian(params["R_H"][0], params["R_T"][0], y, h, t, m_s)
for i in range(3):
    e_i = np.zeros((2, 3))
    e_i[:, i] = 1.0
    row = numerical_gradient(lambda s_: rhn.step_forward(params, x, s_, masks)[0], s_prev, e_i)
    assert rel_error(J[:, i, :], row) < 1e-7, f"row {i} of J: relative error {rel_error(J[:, i, :], row):.1e}"
print("visible tests passed")
### BEGIN HIDDEN TESTS
from hypothesis import given, settings, strategies as st


@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(B=st.integers(1, 3), n=st.integers(1, 4), depth=st.integers(1, 3), bias=st.sampled_from([-3.0, -1.0, 0.0, 2.0]),
       masked=st.booleans(), seed=st.integers(0, 2**16))
def micro_jacobians_match_the_reference(B, n, depth, bias, masked, seed):
    params, x, s_prev, masks = coupled_layer(B=B, n=n, depth=depth, transform_bias=bias, masked=masked, seed=seed)
    layers, m_s = gate_values(params, x, s_prev, masks)
    want = theory.micro_jacobians(params, x, s_prev, masks)  # numerator layout
    for l, (y, h, t) in enumerate(layers):
        J = micro_jacobian(params["R_H"][l].copy(), params["R_T"][l].copy(), y.copy(), h.copy(), t.copy(),
                           None if m_s is None else m_s.copy())
        assert np.shape(J) == want[l].shape, f"shape {np.shape(J)}, expected {want[l].shape}"
        assert rel_error(J, want[l]) < 1e-10, f"micro-layer {l + 1}: relative error {rel_error(J, want[l]):.1e}"


micro_jacobians_match_the_reference()
### END HIDDEN TESTS

# %% [markdown]
# ## Part 2: the step Jacobian, 2 points
#
# `chain(Js)` takes the micro-layer Jacobians $J_1, \dots, J_L$ of one step (a list of
# (B, n, n) stacks, numerator layout, micro-layer 1 first) and returns
# $\partial s_L / \partial s_0$ (B, n, n). `@` multiplies stacks of matrices.

# %% nbgrader={"grade": false, "grade_id": "jacobian-chain_solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
def chain(Js):
    """∂s[L]/∂s[0] = J_L ⋯ J_1 from [J_1, ..., J_L], each (B, n, n)."""
    ### BEGIN SOLUTION
    J = Js[0]
    for J_l in Js[1:]:
        J = J_l @ J  # the later micro-layer on the left
    return J
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "jacobian-chain", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
# Visible tests: two matrices that do not commute, then a 3-deep step against the package's step Jacobian.
J1 = np.array([[[1.0, 1.0], [0.0, 1.0]]])
J2 = np.array([[[1.0, 0.0], [1.0, 1.0]]])
assert np.allclose(chain([J1]), J1)
assert np.allclose(chain([J1, J2]), [[[1.0, 1.0], [1.0, 2.0]]]), "∂s2/∂s0 = J2 J1"
params, x, s_prev, masks = coupled_layer(depth=3, seed=2)
J = chain(theory.micro_jacobians(params, x, s_prev))
assert rel_error(J, theory.step_jacobian(params, x, s_prev)) < 1e-10
print("visible tests passed")
### BEGIN HIDDEN TESTS
from hypothesis import given, settings, strategies as st


@settings(max_examples=12, deadline=None, derandomize=True, database=None)
@given(B=st.integers(1, 3), n=st.integers(1, 4), depth=st.integers(1, 4), masked=st.booleans(),
       seed=st.integers(0, 2**16))
def chain_matches_the_step_jacobian(B, n, depth, masked, seed):
    params, x, s_prev, masks = coupled_layer(B=B, n=n, depth=depth, masked=masked, seed=seed)
    Js = theory.micro_jacobians(params, x, s_prev, masks)
    J = chain([J_l.copy() for J_l in Js])
    want = theory.step_jacobian(params, x, s_prev, masks)
    assert np.shape(J) == want.shape and rel_error(J, want) < 1e-10, "J_L ⋯ J_1"


chain_matches_the_step_jacobian()
### END HIDDEN TESTS

# %% [markdown]
# ## Part 3: Geršgorin discs, 2 points
#
# `gersgorin_discs(M)` takes a stack of square matrices M (..., n, n) and returns the
# centres $m_{ii}$ and the **row** radii $\sum_{j \ne i} |m_{ij}|$, each (..., n).

# %% nbgrader={"grade": false, "grade_id": "jacobian-discs_solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
def gersgorin_discs(M):
    """Centres and row radii of the Geršgorin discs of M (..., n, n): two (..., n) arrays."""
    ### BEGIN SOLUTION
    centres = np.diagonal(M, axis1=-2, axis2=-1)
    radii = np.abs(M).sum(axis=-1) - np.abs(centres)
    return centres, radii
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "jacobian-discs", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
# Visible tests.
M = np.array([[2.0, -1.0, 0.5], [0.0, -3.0, 0.25], [1.0, 1.0, 0.0]])
centres, radii = gersgorin_discs(M)
assert np.allclose(centres, [2.0, -3.0, 0.0]) and np.allclose(radii, [1.5, 0.25, 2.0])
centres, radii = gersgorin_discs(np.stack([M, M.T]))
assert centres.shape == radii.shape == (2, 3) and np.allclose(radii[1], [1.0, 2.0, 0.75]), "a stack of matrices"
print("visible tests passed")
### BEGIN HIDDEN TESTS
from hypothesis import given, settings, strategies as st


@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(B=st.integers(1, 3), n=st.integers(1, 5), scale=st.sampled_from([0.1, 1.0, 10.0]), seed=st.integers(0, 2**16))
def discs_hold_every_eigenvalue(B, n, scale, seed):
    M = scale * np.random.default_rng(seed).standard_normal((B, n, n))
    centres, radii = gersgorin_discs(M.copy())
    c_ref, r_ref = theory.gersgorin_discs(M, axis="rows")
    assert np.shape(centres) == c_ref.shape and np.shape(radii) == r_ref.shape, "(..., n) each"
    assert rel_error(centres, c_ref) < 1e-12 and rel_error(radii, r_ref) < 1e-12, "centres and row radii"
    tol = 1e-9 * (1.0 + np.abs(M).sum(axis=-1).max())
    assert np.all(theory.in_union(theory.spectrum(M), centres, radii, tol=tol)), "an eigenvalue outside every disc"


discs_hold_every_eigenvalue()
params, x, s_prev, masks = coupled_layer(B=3, n=4, depth=2, seed=3)
J = theory.step_jacobian(params, x, s_prev)
centres, radii = gersgorin_discs(J)
assert rel_error(radii, theory.gersgorin_discs(J)[1]) < 1e-12, "the discs of a step Jacobian"
### END HIDDEN TESTS

# %% [markdown]
# ## Eq. 15 in numbers (not graded)
#
# The cell below uses your functions on one coupled micro-layer at three transform-gate
# biases: $t \approx 0$, $t \approx 1/2$ and $t \approx 1$. It prints where the discs of
# $J$ lie and the spectral radius, and at $t \approx 1$ how far $J$ is from the Jacobian of
# a plain tanh RNN with the weights $R_H$, $W_H$, $b_H$ (paper Eq. 2:
# $\operatorname{diag}[\tanh'(a)] R^\top$).

# %% nbgrader={"grade": false, "grade_id": "jacobian-eq15_numbers", "locked": true, "schema_version": 3, "solution": false, "task": false}
for bias in (-15.0, 0.0, 15.0):
    params, x, s_prev, masks = coupled_layer(B=1, n=4, transform_bias=bias, seed=4)
    [(y, h, t)], m_s = gate_values(params, x, s_prev)
    J = micro_jacobian(params["R_H"][0], params["R_T"][0], y, h, t)
    centres, radii = gersgorin_discs(J)
    print(f"b_T = {bias:+5.1f}: t in [{t.min():.2g}, {t.max():.2g}], centres in [{centres.min():+.3f}, "
          f"{centres.max():+.3f}], largest radius {radii.max():.3f}, spectral radius {theory.spectral_radius(J)[0]:.3f}")
J_rnn = theory.rnn_step_jacobian(params["R_H"][0], params["W_H"], params["b_H"][0], x, s_prev)
print(f"b_T = +15: relative distance of J from the tanh RNN's Jacobian: {rel_error(J, J_rnn):.1e}")

# %% [markdown] nbgrader={"grade": true, "grade_id": "jacobian-eq15", "locked": false, "points": 2, "schema_version": 3, "solution": true, "task": false}
# **Question (Eq. 15; graded by hand, 2 points).** Eq. 15 states two limits of a
# micro-layer's Jacobian: with $c = 1, t = 0$ every eigenvalue is exactly 1; with
# $c = 0, t = 1$ they are the eigenvalues of $H'$. In four to six sentences: (a) what do the
# numbers above show at each limit, and why do sigmoid gates only approach these limits
# (what happens to $T'$ there)? (b) Why is this a statement per unit and per time step
# rather than about the whole layer? (c) What do the limits *not* tell you: between them,
# and for a step Jacobian $J_L \cdots J_1$ of depth $L > 1$?
#
# ### BEGIN SOLUTION
# (a) At $b_T = -15$ the gate is closed ($t \approx 3\cdot10^{-7}$): every disc is centred at
# 1 with radius $\approx 0$ and the spectral radius is 1, the carry limit (perfect memory). At
# $b_T = +15$ the layer is the tanh RNN with $R_H$: $J$ equals Eq. 2's Jacobian to
# $\sim 10^{-7}$, so its discs are those of $H'$. A sigmoid reaches 0 or 1 only as its input
# goes to $\mp\infty$, so both limits are approached, never reached; near them
# $\sigma'(a_T) = t(1 - t) \to 0$, so $T'$ (and $C'$) vanish and only $\operatorname{diag}(c)$
# and $H' \operatorname{diag}(t)$ remain. (b) $t$ and $c$ are vectors computed from the input
# and the state: each unit $i$ has its own gate, and disc $i$ moves between "centre 1,
# radius 0" and "the disc of $H'$" with its own $t_i$, differently at each step, so the
# network can carry some units while it transforms others. (c) Between the limits
# $T' \operatorname{diag}(h - y)$ adds to the centres and radii and can push eigenvalues past
# the unit circle; the discs only bound the eigenvalues and may be loose. At depth $L > 1$
# the step Jacobian is a product: its eigenvalues are not the products of the factors'
# eigenvalues (the factors need not commute), and the factors' discs do not bound them.
# ### END SOLUTION
