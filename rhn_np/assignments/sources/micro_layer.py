# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
#   rhn_np:
#     assignment: micro_layer
# ---

# %% [markdown]
# # Assignment 1: the RHN micro-layer, forward and backward (Eqs. 6–9)
#
# A Recurrent Highway Network (Zilly et al., ICML 2017) computes each time step with
# L *micro-layers*. Micro-layer ℓ takes the state $s_{\ell-1}$ and returns the state
# $s_\ell$ (paper Eqs. 6–9):
#
# $$h = \tanh(a_H) \quad \text{(Eq. 7)}, \qquad t = \sigma(a_T) \quad \text{(Eq. 8)}, \qquad
#   c = \sigma(a_C) \ \text{or}\ c = 1 - t \quad \text{(Eq. 9)},$$
#
# $$s_\ell = h \odot t + s_{\ell-1} \odot c \quad \text{(Eq. 6)}.$$
#
# $h$ is the transform, $t$ the *transform gate*, $c$ the *carry gate*. The paper couples
# the gates, $c = 1 - t$, in every experiment; the uncoupled form has its own $a_C$.
# The pre-activations are $a_G = s_{\ell-1} R_{G\ell} + b_{G\ell}$ (plus $x_t W_G$ in
# micro-layer 1). Here they are **given**: you write the gate maths and its derivative only.
#
# **Conventions** (those of `rhn_np`): row vectors, a batch of B rows, n units, float64.
# The pre-activations come *fused*: `a` has shape (B, k·n) with the column blocks
# `[a_H | a_T | a_C]`, k = 2 when coupled (no `a_C`), k = 3 uncoupled.
#
# **Parts and points** (each graded by the test cell that follows it):
#
# | part | what | points |
# |---|---|---|
# | `forward` | `micro_forward`, coupled and uncoupled | 3 |
# | `backward_coupled` | `micro_backward` with $c = 1 - t$ | 4 |
# | `backward_uncoupled` | `micro_backward` with its own carry gate | 3 |
#
# Each test cell starts with visible tests you can run now. When the notebook is graded,
# hidden tests are added: they compare your functions with the package's reference
# (`rhn_np.rhn`) on random inputs (Hypothesis) and by central differences. A test cell
# that fails, or that writes to stderr, scores 0 for its part; the other parts keep their
# points. Write only where it says `YOUR CODE HERE`, keep the functions' names and
# signatures, and do not call `rhn.micro_forward` / `rhn.micro_backward` in your answers:
# they are what you are compared with.

# %% nbgrader={"grade": false, "grade_id": "micro_layer-setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
import warnings

import numpy as np

from rhn_np import rhn
from rhn_np.gradcheck import numerical_gradient, rel_error

# A test cell that writes to stderr scores 0: keep harmless floating-point warnings quiet.
warnings.simplefilter("ignore", RuntimeWarning)


def sigmoid(x):
    """σ(x) = 1 / (1 + e^-x), computed as (1 + tanh(x/2)) / 2: no overflow for any x."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


# %% [markdown]
# ## Part 1: the forward (Eqs. 6–9), 3 points
#
# Write `micro_forward(a, s_in, coupled=True)`. It returns `s, h, t, c`, each (B, n),
# with `c = None` when the gates are coupled (the carry gate is then `1 - t`, and `a` has
# no `a_C` block). Use `sigmoid` from the cell above.

# %% nbgrader={"grade": false, "grade_id": "micro_layer-forward_solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
def micro_forward(a, s_in, coupled=True):
    """Gate maths of one micro-layer (Eqs. 6-9).

    Parameters
    ----------
    a : (B, k·n) pre-activations [a_H | a_T | (a_C)]
    s_in : (B, n) the micro-layer's input state s[ℓ-1]
    coupled : True: c = 1 - t (a has 2n columns); False: c = σ(a_C) (3n columns)

    Returns
    -------
    s : (B, n) the new state s[ℓ]
    h, t : (B, n) the transform and the transform gate
    c : (B, n) the carry gate, or None when coupled
    """
    n = s_in.shape[1]
    ### BEGIN SOLUTION
    h = np.tanh(a[:, :n])  # Eq. 7
    t = sigmoid(a[:, n : 2 * n])  # Eq. 8
    if coupled:
        c = None
        s = h * t + s_in * (1.0 - t)  # Eq. 6 with c = 1 - t
    else:
        c = sigmoid(a[:, 2 * n :])  # Eq. 9
        s = h * t + s_in * c  # Eq. 6
    ### END SOLUTION
    return s, h, t, c


# %% nbgrader={"grade": true, "grade_id": "micro_layer-forward", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
# Visible tests. At a = 0: h = tanh(0) = 0 and t = σ(0) = 1/2.
B, n = 2, 3
s_in = np.full((B, n), 0.4)
out = micro_forward(np.zeros((B, 2 * n)), s_in)
assert len(out) == 4, "return s, h, t, c"
s, h, t, c = out
assert s.shape == h.shape == t.shape == (B, n), "s, h and t are (B, n)"
assert c is None, "coupled gates: return c = None (the carry gate is 1 - t)"
assert np.allclose(h, 0.0) and np.allclose(t, 0.5)
assert np.allclose(s, 0.2), "coupled, a = 0: s = h t + s_in (1 - t) = 0 + 0.4 / 2"
a = np.zeros((B, 3 * n))
a[:, 2 * n :] = 50.0  # the carry gate saturated open: c = 1
s, h, t, c = micro_forward(a, s_in, coupled=False)
assert c.shape == (B, n) and np.allclose(c, 1.0), "uncoupled: c = σ(a_C)"
assert np.allclose(s, 0.4), "uncoupled, h = 0 and c = 1: s = s_in"
print("visible tests passed")
### BEGIN HIDDEN TESTS
from hypothesis import given, settings, strategies as st


@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(B=st.integers(1, 4), n=st.integers(1, 5), coupled=st.booleans(),
       scale=st.sampled_from([0.1, 1.0, 4.0, 40.0]), seed=st.integers(0, 2**16))
def forward_matches_the_reference(B, n, coupled, scale, seed):
    rng = np.random.default_rng(seed)
    a = scale * rng.standard_normal((B, (2 if coupled else 3) * n))
    s_in = rng.uniform(-1.0, 1.0, (B, n))
    got = micro_forward(a.copy(), s_in.copy(), coupled)
    want = rhn.micro_forward(a, s_in, coupled)
    assert len(got) == 4, "return s, h, t, c"
    for name, g, w in zip("shtc", got, want):
        if w is None:
            assert g is None, f"{name} should be None when the gates are coupled"
            continue
        assert np.shape(g) == w.shape, f"{name}: shape {np.shape(g)}, expected {w.shape}"
        err = rel_error(g, w)
        assert err < 1e-10, f"{name} differs from the reference (coupled={coupled}): relative error {err:.1e}"


forward_matches_the_reference()
### END HIDDEN TESTS

# %% [markdown]
# ## Part 2: the backward, coupled gates ($c = 1 - t$), 4 points
#
# Write `micro_backward(ds, s_in, h, t, c=None)`: given `ds` $= \partial L/\partial s_\ell$
# and the forward's values, return
#
# * `da` (B, k·n): $\partial L/\partial a$ in the column layout of `a`,
#   `[∂L/∂a_H | ∂L/∂a_T | (∂L/∂a_C)]`;
# * `ds_carry` (B, n): $\partial L/\partial s_{\ell-1}$ along the carry term
#   $s_{\ell-1} \odot c$. (In the layer, $s_{\ell-1}$ also reaches $a$ through $R$; that
#   path is assignment 2's. Here `a` is given, so the carry term is the only path.)
#
# `c is None` means coupled. Hints: $\tanh'(a) = 1 - \tanh^2(a)$,
# $\sigma'(a) = \sigma(a)(1 - \sigma(a))$, and with $c = 1 - t$ the state depends on $t$
# twice. Write both branches in the cell below; part 2 grades the coupled one, part 3 the
# uncoupled one.

# %% nbgrader={"grade": false, "grade_id": "micro_layer-backward_solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
def micro_backward(ds, s_in, h, t, c=None):
    """Backward of micro_forward.

    Parameters
    ----------
    ds : (B, n) ∂L/∂s, the gradient arriving at the micro-layer's output s[ℓ]
    s_in, h, t : (B, n) the forward's input state and gate values
    c : (B, n) the carry gate, or None when the gates are coupled (c = 1 - t)

    Returns
    -------
    da : (B, k·n) ∂L/∂a, columns [∂L/∂a_H | ∂L/∂a_T | (∂L/∂a_C)]
    ds_carry : (B, n) ∂L/∂s_in along the carry term s_in ⊙ c
    """
    ### BEGIN SOLUTION
    da_H = ds * t * (1.0 - h * h)  # tanh'(a_H) = 1 - h²
    if c is None:
        da_T = ds * (h - s_in) * t * (1.0 - t)  # ∂s/∂t = h - s_in when c = 1 - t; σ' = t (1 - t)
        return np.concatenate([da_H, da_T], axis=1), ds * (1.0 - t)
    da_T = ds * h * t * (1.0 - t)
    da_C = ds * s_in * c * (1.0 - c)
    return np.concatenate([da_H, da_T, da_C], axis=1), ds * c
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "micro_layer-backward_coupled", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
# Visible tests. At a = 0 (h = 0, t = 1/2) with ds = 1:
# ∂L/∂a_H = t (1 - h²) = 1/2, ∂L/∂a_T = (h - s_in) t (1 - t) = -s_in / 4, ∂L/∂s_in = 1 - t = 1/2.
s_in = np.full((2, 3), 0.4)
da, ds_carry = micro_backward(np.ones((2, 3)), s_in, np.zeros((2, 3)), np.full((2, 3), 0.5))
assert da.shape == (2, 6) and ds_carry.shape == (2, 3), "da is (B, 2n) when coupled, ds_carry (B, n)"
assert np.allclose(da[:, :3], 0.5), "∂L/∂a_H"
assert np.allclose(da[:, 3:], -0.1), "∂L/∂a_T"
assert np.allclose(ds_carry, 0.5), "∂L/∂s_in along the carry"
# Central differences through the package's forward (so that a mistake in part 1 does not show here).
rng = np.random.default_rng(1)
a, s_in, ds = rng.standard_normal((2, 6)), rng.uniform(-1, 1, (2, 3)), rng.standard_normal((2, 3))
_, h, t, _ = rhn.micro_forward(a, s_in)
da, ds_carry = micro_backward(ds, s_in, h, t)
assert rel_error(da, numerical_gradient(lambda a_: rhn.micro_forward(a_, s_in)[0], a, ds)) < 1e-7, "∂L/∂a"
assert rel_error(ds_carry, numerical_gradient(lambda s_: rhn.micro_forward(a, s_)[0], s_in, ds)) < 1e-7, "∂L/∂s_in"
print("visible tests passed")
### BEGIN HIDDEN TESTS
from hypothesis import given, settings, strategies as st


@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(B=st.integers(1, 4), n=st.integers(1, 4), scale=st.sampled_from([0.3, 1.0, 3.0]), seed=st.integers(0, 2**16))
def coupled_backward_matches(B, n, scale, seed):
    rng = np.random.default_rng(seed)
    a, s_in = scale * rng.standard_normal((B, 2 * n)), rng.uniform(-1, 1, (B, n))
    ds = rng.standard_normal((B, n))
    _, h, t, _ = rhn.micro_forward(a, s_in)
    da, ds_carry = micro_backward(ds.copy(), s_in.copy(), h.copy(), t.copy())
    da_ref, carry_ref = rhn.micro_backward(ds, s_in, h, t)
    assert da.shape == da_ref.shape and ds_carry.shape == carry_ref.shape, "shapes of da, ds_carry"
    assert rel_error(da, da_ref) < 1e-10, f"∂L/∂a differs from the reference: {rel_error(da, da_ref):.1e}"
    err = rel_error(ds_carry, carry_ref)
    assert err < 1e-10, f"ds_carry differs from the reference: relative error {err:.1e}"
    num = numerical_gradient(lambda a_: rhn.micro_forward(a_, s_in)[0], a, ds)
    assert rel_error(da, num) < 1e-6, "∂L/∂a against central differences"


coupled_backward_matches()
### END HIDDEN TESTS

# %% [markdown]
# ## Part 3: the backward, uncoupled gates (own $c = \sigma(a_C)$), 3 points
#
# The `c is not None` branch of `micro_backward` above: `da` then has three blocks.

# %% nbgrader={"grade": true, "grade_id": "micro_layer-backward_uncoupled", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
# Visible tests. At a = 0 (h = 0, t = c = 1/2) with ds = 1:
# ∂L/∂a_H = 1/2, ∂L/∂a_T = h t (1 - t) = 0, ∂L/∂a_C = s_in c (1 - c) = s_in / 4, ∂L/∂s_in = c = 1/2.
s_in = np.full((2, 3), 0.4)
half = np.full((2, 3), 0.5)
da, ds_carry = micro_backward(np.ones((2, 3)), s_in, np.zeros((2, 3)), half, half)
assert da.shape == (2, 9) and ds_carry.shape == (2, 3), "da is (B, 3n) when uncoupled"
assert np.allclose(da[:, :3], 0.5) and np.allclose(da[:, 3:6], 0.0) and np.allclose(da[:, 6:], 0.1)
assert np.allclose(ds_carry, 0.5)
rng = np.random.default_rng(2)
a, s_in, ds = rng.standard_normal((2, 9)), rng.uniform(-1, 1, (2, 3)), rng.standard_normal((2, 3))
_, h, t, c = rhn.micro_forward(a, s_in, coupled=False)
da, ds_carry = micro_backward(ds, s_in, h, t, c)
assert rel_error(da, numerical_gradient(lambda a_: rhn.micro_forward(a_, s_in, False)[0], a, ds)) < 1e-7, "∂L/∂a"
assert rel_error(ds_carry, numerical_gradient(lambda s_: rhn.micro_forward(a, s_, False)[0], s_in, ds)) < 1e-7
print("visible tests passed")
### BEGIN HIDDEN TESTS
from hypothesis import given, settings, strategies as st


@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(B=st.integers(1, 4), n=st.integers(1, 4), scale=st.sampled_from([0.3, 1.0, 3.0]), seed=st.integers(0, 2**16))
def uncoupled_backward_matches(B, n, scale, seed):
    rng = np.random.default_rng(seed)
    a, s_in = scale * rng.standard_normal((B, 3 * n)), rng.uniform(-1, 1, (B, n))
    ds = rng.standard_normal((B, n))
    _, h, t, c = rhn.micro_forward(a, s_in, coupled=False)
    da, ds_carry = micro_backward(ds.copy(), s_in.copy(), h.copy(), t.copy(), c.copy())
    da_ref, carry_ref = rhn.micro_backward(ds, s_in, h, t, c)
    assert da.shape == da_ref.shape and ds_carry.shape == carry_ref.shape, "shapes of da, ds_carry"
    assert rel_error(da, da_ref) < 1e-10, f"∂L/∂a differs from the reference: {rel_error(da, da_ref):.1e}"
    err = rel_error(ds_carry, carry_ref)
    assert err < 1e-10, f"ds_carry differs from the reference: relative error {err:.1e}"
    num = numerical_gradient(lambda s_: rhn.micro_forward(a, s_, False)[0], s_in, ds)
    assert rel_error(ds_carry, num) < 1e-6, "ds_carry against central differences"


uncoupled_backward_matches()
### END HIDDEN TESTS
