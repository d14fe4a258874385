# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
#   rhn_np:
#     assignment: dtrnn_backward
# ---

# %% [markdown]
# # Assignment 4: the backward of the deep-transition RNN (the paper's baseline)
#
# The paper compares the RHN with the deep-transition RNN of Pascanu et al. (2013): the
# transition from $s_{t-1}$ to $s_t$ is an MLP of L tanh layers (DT-RNN), and the
# DT(S)-RNN adds a shortcut from $s_{t-1}$ to the last layer. With $z_0 = s_{t-1}$ and
# micro-layers $\ell = 1..L$ (row vectors, as in `rhn_np.dtrnn`):
#
# $$a_\ell = [\ell = 1]\,(x_t \odot m_x) W + (z_{\ell-1} \odot m_s) R_\ell + b_\ell
#    + [\ell = L,\ \text{shortcut}]\,(s_{t-1} \odot m_s)\, U \quad \text{(DT-1)}, \qquad
#    z_\ell = \tanh(a_\ell) \quad \text{(DT-2)},$$
#
# and $s_t = y_t = z_L$. `W` (n_in, n), `R` (L, n, n), `b` (L, n), `U` (n, n) (DT(S)-RNN
# only); `m_x`, `m_s` are dropout masks (or `None`), the same at every step, the state mask
# on *every* state that enters a product, the shortcut's included. At depth 1 without
# shortcut this is the plain tanh RNN of the paper's Eq. 2.
#
# The forward is given: `ys, cache = dtrnn.forward(params, xs, s0, masks, impl="reference")`,
# with `cache["z"]` (L, T, B, n) the output $z_\ell$ of every micro-layer and step,
# `cache["s_prev"]` (T, B, n) the state $s_{t-1}$ each step started from, and
# `cache["xs"]`, `cache["m_x"]`, `cache["m_s"]`.
#
# **Parts and points**
#
# | part | what | points |
# |---|---|---|
# | `micro` | `dt_micro_backward`: (DT-2) backwards | 1 |
# | `step` | `dt_step_backward`: one step, micro-layers L..1, without the shortcut | 3 |
# | `shortcut` | `dt_step_backward` with the shortcut `U` | 2 |
# | `window` | `dt_backward`: the time loop, `ds_last`, the weight gradients and ∂L/∂x_t | 4 |
#
# `dt_step_backward` must call `dt_micro_backward`, and `dt_backward` must call
# `dt_step_backward` once per step: the tests of parts 2 and 3 put the package's
# `dtrnn.micro_backward` in place of yours, and those of part 4 replace your step backward
# (by simple stand-ins in the visible tests, by a correct one in the hidden tests), so that
# a mistake in one part costs that part's points only. Hidden tests compare with
# `rhn_np.dtrnn` (the reference) on random windows (Hypothesis) and check gradients by
# central differences. A test cell that fails or writes to stderr scores 0 for its part.
# Do not call `dtrnn.backward` / `dtrnn.step_backward` in your answers.

# %% nbgrader={"grade": false, "grade_id": "dtrnn_backward-setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
import warnings
from contextlib import contextmanager

import numpy as np

from rhn_np import dtrnn
from rhn_np.gradcheck import directional_check, numerical_gradient, rel_error

warnings.simplefilter("ignore", RuntimeWarning)  # a test cell that writes to stderr scores 0


def window(T=3, B=2, n_in=2, n=3, depth=2, shortcut=False, masked=False, seed=0):
    """A small random problem: params, xs (T, B, n_in), s0 (B, n), masks (or None), dys (T, B, n)."""
    rng = np.random.default_rng(seed)
    params = dtrnn.init_params(n_in, n, depth, shortcut=shortcut, init_scale=0.6, seed=seed, dtype="float64")
    xs = rng.standard_normal((T, B, n_in))
    s0 = rng.uniform(-0.5, 0.5, (B, n))
    masks = None
    if masked:
        masks = {"x": rng.binomial(1, 0.7, (B, n_in)) / 0.7, "s": rng.binomial(1, 0.7, (B, n)) / 0.7}
    dys = rng.standard_normal((T, B, n))
    return params, xs, s0, masks, dys


def dt_loss(params, xs, s0, dys, masks=None, ds_last=None):
    """L = Σ_t ⟨dys[t], y_t⟩ + ⟨ds_last, y_T⟩: its gradients are what dt_backward returns."""
    ys, _ = dtrnn.forward(params, xs, s0, masks, impl="reference")
    return float(np.sum(ys * dys) + (0.0 if ds_last is None else np.sum(ys[-1] * ds_last)))


@contextmanager
def replaced(name, function):
    """Run the body with the notebook's function `name` replaced by `function`."""
    saved = globals().get(name)
    globals()[name] = function
    try:
        yield
    finally:
        globals()[name] = saved


# %% [markdown]
# ## Part 1: one micro-layer, 1 point
#
# `dt_micro_backward(dz, z)`: $\partial L/\partial a_\ell$ from $\partial L/\partial z_\ell$
# and the stored output $z_\ell = \tanh(a_\ell)$ (the forward keeps $z$, not $a$).

# %% nbgrader={"grade": false, "grade_id": "dtrnn_backward-micro_solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
def dt_micro_backward(dz, z):
    """∂L/∂a from ∂L/∂z and z = tanh(a), both (B, n)."""
    ### BEGIN SOLUTION
    return dz * (1.0 - z * z)  # tanh' = 1 - tanh²
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "dtrnn_backward-micro", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
# Visible tests.
a = np.random.default_rng(0).standard_normal((2, 3))
dz = np.random.default_rng(1).standard_normal((2, 3))
da = dt_micro_backward(dz, np.tanh(a))
assert da.shape == (2, 3)
assert rel_error(da, numerical_gradient(np.tanh, a, dz)) < 1e-7, "∂L/∂a against central differences"
print("visible tests passed")
### BEGIN HIDDEN TESTS
from hypothesis import given, settings, strategies as st


@settings(max_examples=10, deadline=None, derandomize=True, database=None)
@given(B=st.integers(1, 4), n=st.integers(1, 5), scale=st.sampled_from([0.1, 1.0, 5.0]), seed=st.integers(0, 2**16))
def micro_matches_the_reference(B, n, scale, seed):
    rng = np.random.default_rng(seed)
    z, dz = np.tanh(scale * rng.standard_normal((B, n))), rng.standard_normal((B, n))
    da = dt_micro_backward(dz.copy(), z.copy())
    assert rel_error(da, dtrnn.micro_backward(dz, z)) < 1e-12


micro_matches_the_reference()
### END HIDDEN TESTS

# %% [markdown]
# ## Parts 2 and 3: one time step, micro-layers L down to 1 (3 points), and the shortcut (2 points)
#
# `dt_step_backward(ds, zs, R, U=None, m_s=None)` takes $\partial L/\partial s_t$ of one step
# and the outputs `zs` $= [z_1, \dots, z_L]$ of its micro-layers, and returns
# $\partial L/\partial s_{t-1}$ and $\partial L/\partial a_\ell$ of every micro-layer. Which
# products does the gradient cross on its way down, and which masks? With the shortcut
# (`U` not `None`), $s_{t-1}$ reaches $a_L$ directly as well. Part 2 is graded without the
# shortcut, part 3 on what the shortcut adds.

# %% nbgrader={"grade": false, "grade_id": "dtrnn_backward-step_solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
def dt_step_backward(ds, zs, R, U=None, m_s=None):
    """Backward of one DT-RNN step.

    Parameters
    ----------
    ds : (B, n) ∂L/∂s_t
    zs : list of L arrays (B, n), the outputs z_1..z_L of the step's micro-layers
    R : (L, n, n) the micro-layers' weights
    U : (n, n) the shortcut's weights, or None (DT-RNN)
    m_s : (B, n) the dropout mask of the state, or None

    Returns
    -------
    ds_prev : (B, n) ∂L/∂s_{t-1}
    das : list of L arrays (B, n), ∂L/∂a of micro-layers 1..L
    """
    L = len(zs)
    das = [None] * L
    g = ds  # ∂L/∂z_L; on the way down, g is ∂L/∂z_ℓ, and at the end ∂L/∂s_(t-1)
    ### BEGIN SOLUTION
    for l in reversed(range(L)):
        das[l] = dt_micro_backward(g, zs[l])  # (DT-2)
        g = das[l] @ R[l].T  # (DT-1): a_ℓ = (z_{ℓ-1} ⊙ m_s) @ R[ℓ] + ...
        if m_s is not None:
            g = g * m_s
    if U is not None:
        d_short = das[L - 1] @ U.T  # the shortcut: a_L also sees (s_{t-1} ⊙ m_s) @ U
        g = g + (d_short if m_s is None else d_short * m_s)
    ### END SOLUTION
    return g, das


# %% nbgrader={"grade": true, "grade_id": "dtrnn_backward-step", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
### BEGIN HIDDEN TESTS
def reference_dt_step_backward(ds, zs, R, U=None, m_s=None):
    """A correct step backward (the reference's arithmetic), used by the hidden tests of part 4."""
    das, g = [None] * len(zs), ds
    for l in reversed(range(len(zs))):
        das[l] = dtrnn.micro_backward(g, zs[l])
        g = das[l] @ R[l].T
        g = g if m_s is None else g * m_s
    if U is not None:
        d_short = das[-1] @ U.T
        g = g + (d_short if m_s is None else d_short * m_s)
    return g, das


### END HIDDEN TESTS
# Visible tests: one step of depth 2 with dropout masks, against the package's step_backward
# (with the package's micro-layer backward in place of yours, so that part 1 is not counted twice).
params, xs, s0, masks, dys = window(T=1, masked=True)
_, cache = dtrnn.step_forward(params, xs[0], s0, masks)
zs = [cache["z"][l, 0] for l in range(2)]
with replaced("dt_micro_backward", dtrnn.micro_backward):
    ds_prev, das = dt_step_backward(dys[0], zs, params["R"], None, masks["s"])
grads, _, ds_prev_ref = dtrnn.step_backward(params, cache, dys[0])
assert ds_prev.shape == s0.shape and len(das) == 2
assert rel_error(ds_prev, ds_prev_ref) < 1e-10, f"∂L/∂s_(t-1): relative error {rel_error(ds_prev, ds_prev_ref):.1e}"
assert rel_error(np.stack([d.sum(axis=0) for d in das]), grads["b"]) < 1e-10, "∂L/∂a (summed over the batch: ∂L/∂b)"
print("visible tests passed")
### BEGIN HIDDEN TESTS
from hypothesis import given, settings, strategies as st


@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(B=st.integers(1, 3), n=st.integers(2, 4), depth=st.integers(1, 3), masked=st.booleans(), seed=st.integers(0, 2**16))
def step_matches_the_reference(B, n, depth, masked, seed):
    params, xs, s0, masks, dys = window(T=1, B=B, n=n, depth=depth, masked=masked, seed=seed)
    _, cache = dtrnn.step_forward(params, xs[0], s0, masks)
    zs = [cache["z"][l, 0] for l in range(depth)]
    m_s = None if masks is None else masks["s"]
    with replaced("dt_micro_backward", dtrnn.micro_backward):
        ds_prev, das = dt_step_backward(dys[0].copy(), zs, params["R"].copy(), None, m_s)
    ds_ref, das_ref = reference_dt_step_backward(dys[0], zs, params["R"], None, m_s)
    _, _, ds_prev_pkg = dtrnn.step_backward(params, cache, dys[0])
    assert rel_error(ds_prev, ds_prev_pkg) < 1e-10, f"∂L/∂s_(t-1): relative error {rel_error(ds_prev, ds_prev_pkg):.1e}"
    assert rel_error(np.stack(das), np.stack(das_ref)) < 1e-10, "∂L/∂a of the micro-layers"


step_matches_the_reference()
### END HIDDEN TESTS

# %% nbgrader={"grade": true, "grade_id": "dtrnn_backward-shortcut", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
# Visible tests: with the same micro-layer outputs, the shortcut adds its own term to ∂L/∂s_(t-1):
# the difference between your step backward with U and without it, against the package's.
params, xs, s0, masks, dys = window(T=1, shortcut=True, masked=True, seed=1)
_, cache = dtrnn.step_forward(params, xs[0], s0, masks)
zs = [cache["z"][l, 0] for l in range(2)]
with replaced("dt_micro_backward", dtrnn.micro_backward):
    with_u, _ = dt_step_backward(dys[0], zs, params["R"], params["U"], masks["s"])
    without_u, _ = dt_step_backward(dys[0], zs, params["R"], None, masks["s"])
_, _, ds_prev_ref = dtrnn.step_backward(params, cache, dys[0])
# The package's step backward on the same cache with U = 0: the same micro-layer outputs, no shortcut term.
_, _, ds_prev_zero_u = dtrnn.step_backward({**params, "U": np.zeros_like(params["U"])}, cache, dys[0])
err = rel_error(with_u - without_u, ds_prev_ref - ds_prev_zero_u)
assert err < 1e-10, f"the shortcut's part of ∂L/∂s_(t-1): relative error {err:.1e}"
print("visible tests passed")
### BEGIN HIDDEN TESTS
from hypothesis import given, settings, strategies as st


@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(B=st.integers(1, 3), n=st.integers(2, 4), depth=st.integers(1, 3), masked=st.booleans(), seed=st.integers(0, 2**16))
def shortcut_matches_the_reference(B, n, depth, masked, seed):
    params, xs, s0, masks, dys = window(T=1, B=B, n=n, depth=depth, shortcut=True, masked=masked, seed=seed)
    _, cache = dtrnn.step_forward(params, xs[0], s0, masks)
    zs = [cache["z"][l, 0] for l in range(depth)]
    m_s = None if masks is None else masks["s"]
    with replaced("dt_micro_backward", dtrnn.micro_backward):
        with_u, das = dt_step_backward(dys[0].copy(), zs, params["R"], params["U"].copy(), m_s)
        without_u, _ = dt_step_backward(dys[0].copy(), zs, params["R"], None, m_s)
    ref_u, _ = reference_dt_step_backward(dys[0], zs, params["R"], params["U"], m_s)
    ref_no_u, _ = reference_dt_step_backward(dys[0], zs, params["R"], None, m_s)
    err = rel_error(with_u - without_u, ref_u - ref_no_u)
    assert err < 1e-10, f"the shortcut's part of ∂L/∂s_(t-1): relative error {err:.1e}"


shortcut_matches_the_reference()
### END HIDDEN TESTS

# %% [markdown]
# ## Part 4: the window, 4 points
#
# `dt_backward(params, cache, dys, ds_last=None)` has the signature and results of
# `dtrnn.backward`: the time loop from the last step to the first (carrying the state
# gradient, adding each step's `dys[t]`, starting from `ds_last` when a later window sends
# one), then the gradients of `W`, `R`, `b` (and `U`), each a sum over all steps and batch
# rows, and $\partial L/\partial x_t$. Call `dt_step_backward` once per step. What did each
# product in (DT-1) multiply, masks included? The input of micro-layer 1 is $s_{t-1}$.

# %% nbgrader={"grade": false, "grade_id": "dtrnn_backward-window_solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
def dt_backward(params, cache, dys, ds_last=None):
    """BPTT over the window of dtrnn.forward: grads (the keys of params), dxs (T, B, n_in), ds0 (B, n)."""
    W, R, U = params["W"], params["R"], params.get("U")  # U is None for a DT-RNN
    Z, S_prev = cache["z"], cache["s_prev"]  # (L, T, B, n), (T, B, n)
    xs, m_x, m_s = cache["xs"], cache["m_x"], cache["m_s"]
    L, T, B, n = Z.shape
    dA = np.zeros((L, T, B, n))  # ∂L/∂a of every micro-layer and step
    # The time loop (filling dA, ending with ds0), then grads {"W", "R", "b" (, "U")} and dxs (T, B, n_in).
    ### BEGIN SOLUTION
    ds = np.zeros((B, n)) if ds_last is None else ds_last
    for step in reversed(range(T)):
        ds, das = dt_step_backward(ds + dys[step], [Z[l, step] for l in range(L)], R, U, m_s)
        for l in range(L):
            dA[l, step] = das[l]
    ds0 = ds
    inputs = np.concatenate([S_prev[None], Z[:-1]], axis=0)  # z_(ℓ-1) of every micro-layer: s_(t-1) for ℓ = 1
    if m_s is not None:
        inputs = inputs * m_s
    x_in = xs if m_x is None else xs * m_x
    grads = {"W": np.einsum("tbi,tbj->ij", x_in, dA[0]),  # only micro-layer 1 sees the input
             "R": np.einsum("ltbi,ltbj->lij", inputs, dA), "b": dA.sum(axis=(1, 2))}
    if U is not None:
        s_tr = S_prev if m_s is None else S_prev * m_s
        grads["U"] = np.einsum("tbi,tbj->ij", s_tr, dA[L - 1])
    dxs = dA[0] @ W.T
    if m_x is not None:
        dxs = dxs * m_x
    ### END SOLUTION
    return grads, dxs, ds0


# %% nbgrader={"grade": true, "grade_id": "dtrnn_backward-window", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
# Visible tests with stand-ins for one step's backward (the hidden tests use a correct one).
# (1) A stand-in that halves the gradient and returns ∂L/∂a = 0:
#     ∂L/∂s0 = ds_last / 8 + dys[0] / 2 + dys[1] / 4 + dys[2] / 8.
def halving_step(ds, zs, R, U=None, m_s=None):
    return ds / 2, [np.zeros_like(ds) for _ in zs]


def ones_step(ds, zs, R, U=None, m_s=None):
    return np.zeros_like(ds), [np.ones_like(ds) for _ in zs]


T, B = 3, 2
params, xs, s0, masks, dys = window(T=T, B=B, shortcut=True, masked=True, seed=2)
_, cache = dtrnn.forward(params, xs, s0, masks, impl="reference")
ds_last = np.random.default_rng(3).standard_normal(s0.shape)
with replaced("dt_step_backward", halving_step):
    _, _, ds0 = dt_backward(params, cache, dys, ds_last)
assert rel_error(ds0, ds_last / 8 + dys[0] / 2 + dys[1] / 4 + dys[2] / 8) < 1e-12, "the state gradient, step by step"
# (2) A stand-in whose ∂L/∂a is 1 everywhere: ∂L/∂b[ℓ] counts the T·B rows, and every column of ∂L/∂R[ℓ]
# (and of ∂L/∂U) is the sum of the (masked) states that product saw.
with replaced("dt_step_backward", ones_step):
    grads, dxs, _ = dt_backward(params, cache, dys, ds_last)
assert set(grads) == set(params), f"grads has the keys {sorted(grads)}, params {sorted(params)}"
for key in params:
    assert grads[key].shape == params[key].shape, f"grads[{key!r}] has shape {np.shape(grads[key])}"
assert dxs.shape == xs.shape and np.allclose(grads["b"], T * B)
m_s = masks["s"]
assert np.allclose(grads["R"][1], (cache["z"][0] * m_s).sum(axis=(0, 1))[:, None]), "∂L/∂R[2]: its input is z_1"
assert np.allclose(grads["R"][0], (cache["s_prev"] * m_s).sum(axis=(0, 1))[:, None]), "∂L/∂R[1]: its input is s_(t-1)"
assert np.allclose(grads["U"], (cache["s_prev"] * m_s).sum(axis=(0, 1))[:, None]), "∂L/∂U"
print("visible tests passed")
### BEGIN HIDDEN TESTS
from hypothesis import given, settings, strategies as st


@settings(max_examples=12, deadline=None, derandomize=True, database=None)
@given(T=st.integers(1, 4), B=st.integers(1, 3), n=st.integers(1, 3), depth=st.integers(1, 3), shortcut=st.booleans(),
       masked=st.booleans(), last=st.booleans(), seed=st.integers(0, 2**16))
def window_matches_the_reference(T, B, n, depth, shortcut, masked, last, seed):
    params, xs, s0, masks, dys = window(T=T, B=B, n=n, depth=depth, shortcut=shortcut, masked=masked, seed=seed)
    _, cache = dtrnn.forward(params, xs, s0, masks, impl="reference")
    ds_last = np.random.default_rng(seed + 1).standard_normal((B, n)) if last else None
    with replaced("dt_step_backward", reference_dt_step_backward):
        grads, dxs, ds0 = dt_backward(params, cache, dys.copy(), None if ds_last is None else ds_last.copy())
    grads_ref, dxs_ref, ds0_ref = dtrnn.backward(params, cache, dys, ds_last)
    for key in params:
        err = rel_error(grads[key], grads_ref[key])
        assert err < 1e-10, f"∂L/∂{key}: relative error {err:.1e}"
    assert rel_error(dxs, dxs_ref) < 1e-10 and rel_error(ds0, ds0_ref) < 1e-10, "∂L/∂x, ∂L/∂s0"


window_matches_the_reference()
params, xs, s0, masks, dys = window(T=3, depth=2, shortcut=True, masked=True, seed=9)
_, cache = dtrnn.forward(params, xs, s0, masks, impl="reference")
ds_last = np.random.default_rng(10).standard_normal(s0.shape)
with replaced("dt_step_backward", reference_dt_step_backward):
    grads, dxs, ds0 = dt_backward(params, cache, dys, ds_last)
loss = lambda _: dt_loss(params, xs, s0, dys, masks, ds_last)  # noqa: E731  (reads the arrays perturbed in place)
for key, array, g in [*((k, params[k], grads[k]) for k in params), ("xs", xs, dxs), ("s0", s0, ds0)]:
    err = directional_check(loss, array, g)
    assert err < 1e-6, f"∂L/∂{key} against central differences: {err:.1e}"
### END HIDDEN TESTS
