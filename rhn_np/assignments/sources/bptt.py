# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
#   rhn_np:
#     assignment: bptt
# ---

# %% [markdown]
# # Assignment 2: backpropagation through time over a window (RHN, Eqs. 6–9)
#
# An RHN layer of recurrence depth L runs L micro-layers per time step. Over a *window* of
# T steps, starting from the state `s0` carried over from the previous window:
#
# $$a^{(t)}_\ell = [\ell = 1]\,(x_t \odot m_x) W + (s^{(t)}_{\ell-1} \odot m_s) R_\ell + b_\ell,
#   \qquad s^{(t)}_\ell = h \odot t + s^{(t)}_{\ell-1} \odot c \quad \text{(Eqs. 6–9)},$$
#
# with $s^{(t)}_0 = s^{(t-1)}_L$ (and $s^{(1)}_0$ = `s0`), the output $y_t = s^{(t)}_L$, and
# $W$, $R_\ell$, $b_\ell$ the *fused* weights `[H | T | (C)]` of `rhn.fuse_params`:
# `W` (n_in, k·n), `R` (L, n, k·n), `b` (L, k·n). Only micro-layer 1 sees the input.
# `m_x`, `m_s` are variational-dropout masks (or `None`): the same mask at every step and
# micro-layer; the state mask multiplies the state *that enters the transforms*; the carry
# term $s_{\ell-1} \odot c$ uses the unmasked state.
#
# The forward is given: `ys, cache = rhn.forward(params, xs, s0, masks, impl="reference")`.
# Its cache holds, for every micro-layer l (code index, ℓ = l + 1) and step, the input
# state `cache["s_in"][l, t]` and the gates `cache["h"]`, `cache["t"]`, `cache["c"]`
# ((L, T, B, n) arrays; `c` is `None` when coupled), and `cache["xs"]`, `cache["m_x"]`,
# `cache["m_s"]`. You write the backward in three functions, which
# `bptt(params, cache, dys, ds_last=None)` (given) puts together with the signature and
# results of `rhn.backward`:
#
# * `dys` (T, B, n): $\partial L/\partial y_t$ from the layer above, for every step;
# * `ds_last` (B, n) or `None`: the gradient arriving at the window's last state from the
#   *next* window. A long window can then be cut in two: the later half's
#   $\partial L/\partial$`s0` is the earlier half's `ds_last`;
# * it returns `grads` (the keys of `params`), `dxs` (T, B, n_in) and
#   `ds0` $= \partial L/\partial$`s0`, which goes back to the previous window.
#
# Use the package's `rhn.micro_backward(ds, s_in, h, t, c)` (assignment 1's function): it
# returns $\partial L/\partial a$ (B, k·n) and the carry part of $\partial L/\partial s_{\ell-1}$.
#
# **Parts and points**
#
# | part | what | points |
# |---|---|---|
# | `step` | `micro_layers_backward`: one step, micro-layers L..1, the carry and the transform paths | 3 |
# | `loop` | `time_loop`: steps T..1, ∂L/∂a of every micro-layer and step, ∂L/∂s0 | 2 |
# | `weights` | `weight_grads`: ∂L/∂W, ∂L/∂R, ∂L/∂b and ∂L/∂x_t from ∂L/∂a | 3 |
# | `ds_last` | `time_loop` with a gradient arriving from the next window | 2 |
#
# `time_loop` must call `micro_layers_backward` for every step: the tests of parts 2 and 4
# replace it, by a simple stand-in in the visible tests and by a correct one in the hidden
# tests, and part 3 is given a correct ∂L/∂a, so that a mistake in one part costs that
# part's points only. Hidden tests compare with `rhn.step_backward` / `rhn.backward` (the
# reference) on random windows (Hypothesis), and check gradients by central differences.
# A test cell that fails or writes to stderr scores 0 for its part. Do not call
# `rhn.backward` / `rhn.step_backward` in your answers.

# %% nbgrader={"grade": false, "grade_id": "bptt-setup", "locked": true, "schema_version": 3, "solution": false, "task": false}
import warnings
from contextlib import contextmanager

import numpy as np

from rhn_np import rhn
from rhn_np.gradcheck import directional_check, rel_error, rhn_loss

warnings.simplefilter("ignore", RuntimeWarning)  # a test cell that writes to stderr scores 0


def window(T=3, B=2, n_in=2, n=3, depth=2, coupled=True, masked=False, seed=0):
    """A small random problem: params, xs (T, B, n_in), s0 (B, n), masks (or None), dys (T, B, n)."""
    rng = np.random.default_rng(seed)
    params = rhn.init_params(n_in, n, depth, coupled=coupled, init_scale=0.5, transform_bias=-1.0,
                             seed=seed, dtype="float64")
    xs = rng.standard_normal((T, B, n_in))
    s0 = rng.uniform(-0.5, 0.5, (B, n))
    masks = None
    if masked:
        masks = {"x": rng.binomial(1, 0.7, (B, n_in)) / 0.7, "s": rng.binomial(1, 0.7, (B, n)) / 0.7}
    dys = rng.standard_normal((T, B, n))
    return params, xs, s0, masks, dys


def step_layers(cache, step):
    """The gate values (s_in, h, t, c) of micro-layers 1..L at time index `step` of a forward cache."""
    c = cache["c"]
    return [(cache["s_in"][l, step], cache["h"][l, step], cache["t"][l, step], None if c is None else c[l, step])
            for l in range(cache["s_in"].shape[0])]


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
# ## Part 1: one time step, micro-layers L down to 1, 3 points
#
# `micro_layers_backward(ds, layers, R, m_s)` takes $\partial L/\partial s_L$ of one step
# and returns $\partial L/\partial s_0$ of that step and $\partial L/\partial a_\ell$ of each
# micro-layer. The state $s_{\ell-1}$ reaches $s_\ell$ along two paths: the carry term
# (`rhn.micro_backward` gives you that part) and the pre-activations $a_\ell$, through
# $R_\ell$ and the mask. Complete the body of the loop.

# %% nbgrader={"grade": false, "grade_id": "bptt-step_solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
def micro_layers_backward(ds, layers, R, m_s=None):
    """Backward through the L micro-layers of one time step, ℓ = L down to 1.

    Parameters
    ----------
    ds : (B, n) ∂L/∂s[L], the gradient at the step's output state
    layers : list of L tuples (s_in, h, t, c): the gate values of micro-layers 1..L (`step_layers`)
    R : (L, n, k·n) the fused recurrent weights (`rhn.fuse_params(params)[1]`)
    m_s : (B, n) the dropout mask of the state, or None

    Returns
    -------
    ds_prev : (B, n) ∂L/∂s[0], the gradient at the step's input state (the previous step's output)
    das : list of L arrays (B, k·n), ∂L/∂a of micro-layers 1..L
    """
    das = [None] * len(layers)
    for l in reversed(range(len(layers))):
        s_in, h, t, c = layers[l]
        # Set da (∂L/∂a of this micro-layer) and replace ds (∂L/∂s[ℓ]) by ∂L/∂s[ℓ-1].
        ### BEGIN SOLUTION
        da, ds_carry = rhn.micro_backward(ds, s_in, h, t, c)
        ds_tr = da @ R[l].T  # through the transforms: a = (s_in ⊙ m_s) @ R[ℓ] + ...
        ds = ds_carry + (ds_tr if m_s is None else ds_tr * m_s)  # the carry uses the unmasked state
        ### END SOLUTION
        das[l] = da
    return ds, das


# %% nbgrader={"grade": true, "grade_id": "bptt-step", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
### BEGIN HIDDEN TESTS
def reference_micro_layers_backward(ds, layers, R, m_s=None):
    """A correct step backward (the reference's own arithmetic), used by the hidden tests of parts 2-4."""
    das = [None] * len(layers)
    for l in reversed(range(len(layers))):
        da, ds_carry = rhn.micro_backward(ds, *layers[l])
        ds_tr = da @ R[l].T
        ds = ds_carry + (ds_tr if m_s is None else ds_tr * m_s)
        das[l] = da
    return ds, das


def reference_time_loop(cache, dys, R, ds_last=None):
    """A correct time loop on the correct step: ∂L/∂a of every micro-layer and step, and ∂L/∂s0."""
    L, T, B, n = cache["s_in"].shape
    dA = np.zeros((L, T, B, R.shape[2]))
    ds = np.zeros((B, n)) if ds_last is None else ds_last
    for step in reversed(range(T)):
        ds, das = reference_micro_layers_backward(ds + dys[step], step_layers(cache, step), R, cache["m_s"])
        for l in range(L):
            dA[l, step] = das[l]
    return dA, ds


### END HIDDEN TESTS
# Visible tests: one step of depth 2 with dropout masks, against the package's step_backward.
params, xs, s0, masks, dys = window(T=1, depth=2, masked=True)
_, cache = rhn.step_forward(params, xs[0], s0, masks)
_, R, _ = rhn.fuse_params(params)
ds_prev, das = micro_layers_backward(dys[0], step_layers(cache, 0), R, masks["s"])
grads, _, ds_prev_ref = rhn.step_backward(params, cache, dys[0])
_, dR_ref, db_ref = rhn.fuse_params(grads)  # the reference's gradients, fused like the weights
assert ds_prev.shape == s0.shape and len(das) == 2 and das[0].shape == (2, 6)
assert rel_error(ds_prev, ds_prev_ref) < 1e-10, f"∂L/∂s[0] is off: relative error {rel_error(ds_prev, ds_prev_ref):.1e}"
# ∂L/∂b[ℓ] is ∂L/∂a[ℓ] summed over the batch:
assert rel_error(np.stack([d.sum(axis=0) for d in das]), db_ref) < 1e-10, "∂L/∂a of some micro-layer is off"
print("visible tests passed")
### BEGIN HIDDEN TESTS
from hypothesis import given, settings, strategies as st


@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(B=st.integers(1, 3), n=st.integers(1, 4), depth=st.integers(1, 3), coupled=st.booleans(),
       masked=st.booleans(), seed=st.integers(0, 2**16))
def step_matches_the_reference(B, n, depth, coupled, masked, seed):
    params, xs, s0, masks, dys = window(T=1, B=B, n=n, depth=depth, coupled=coupled, masked=masked, seed=seed)
    _, cache = rhn.step_forward(params, xs[0], s0, masks)
    _, R, _ = rhn.fuse_params(params)
    m_s = None if masks is None else masks["s"]
    ds_prev, das = micro_layers_backward(dys[0].copy(), step_layers(cache, 0), R, m_s)
    grads, _, ds_prev_ref = rhn.step_backward(params, cache, dys[0])
    _, dR_ref, db_ref = rhn.fuse_params(grads)
    assert rel_error(ds_prev, ds_prev_ref) < 1e-10, f"∂L/∂s[0]: relative error {rel_error(ds_prev, ds_prev_ref):.1e}"
    S_tr = cache["s_in"][:, 0] if m_s is None else cache["s_in"][:, 0] * m_s
    dR = np.stack([S_tr[l].T @ das[l] for l in range(depth)])  # what the reference makes of ∂L/∂a
    assert rel_error(dR, dR_ref) < 1e-10 and rel_error(np.stack([d.sum(0) for d in das]), db_ref) < 1e-10, "∂L/∂a"


step_matches_the_reference()
### END HIDDEN TESTS

# %% [markdown]
# ## Part 2: the time loop, 2 points (and part 4, `ds_last`, 2 points)
#
# `time_loop(cache, dys, R, ds_last=None)` runs from the last step to the first. The state
# gradient is carried from step to step (the carried state of the forward, backwards), and
# every step also gets its own $\partial L/\partial y_t$ from `dys`. Call
# `micro_layers_backward` once per step and fill `dA[l, t]` with $\partial L/\partial a$ of
# micro-layer l at step t; return `dA` and `ds0` $= \partial L/\partial$`s0`. `ds_last`, when
# given, is the gradient that arrives at the window's last state from the next window.

# %% nbgrader={"grade": false, "grade_id": "bptt-loop_solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
def time_loop(cache, dys, R, ds_last=None):
    """The time loop of BPTT, step T down to 1.

    Parameters
    ----------
    cache : from rhn.forward(params, xs, s0, masks, impl="reference"); cache["m_s"] is the state mask (or None)
    dys : (T, B, n) ∂L/∂y_t of every step
    R : (L, n, k·n) the fused recurrent weights
    ds_last : (B, n) the gradient arriving at the last state from the next window, or None

    Returns
    -------
    dA : (L, T, B, k·n) ∂L/∂a of every micro-layer and step
    ds0 : (B, n) ∂L/∂s0
    """
    L, T, B, n = cache["s_in"].shape
    dA = np.zeros((L, T, B, R.shape[2]))
    # Fill dA[l, step] for every micro-layer and step, and set ds0. (step_layers(cache, step) gives the gate values.)
    ### BEGIN SOLUTION
    ds = np.zeros((B, n)) if ds_last is None else ds_last
    for step in reversed(range(T)):
        ds, das = micro_layers_backward(ds + dys[step], step_layers(cache, step), R, cache["m_s"])
        for l in range(L):
            dA[l, step] = das[l]
    ds0 = ds
    ### END SOLUTION
    return dA, ds0


# %% nbgrader={"grade": true, "grade_id": "bptt-loop", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
# Visible tests with a stand-in for one step's backward that halves the gradient and returns ∂L/∂a = 0:
# then ∂L/∂s0 = dys[0] / 2 + dys[1] / 4 + dys[2] / 8.
def halving_step(ds, layers, R, m_s=None):
    return ds / 2, [np.zeros((ds.shape[0], R.shape[2])) for _ in layers]


params, xs, s0, masks, dys = window(T=3)
_, cache = rhn.forward(params, xs, s0, masks, impl="reference")
_, R, _ = rhn.fuse_params(params)
with replaced("micro_layers_backward", halving_step):
    dA, ds0 = time_loop(cache, dys, R)
assert dA.shape == (2, 3, 2, 6) and ds0.shape == s0.shape
assert rel_error(ds0, dys[0] / 2 + dys[1] / 4 + dys[2] / 8) < 1e-12, "the state gradient is not carried back step by step"
print("visible tests passed")
### BEGIN HIDDEN TESTS
from hypothesis import given, settings, strategies as st


@settings(max_examples=12, deadline=None, derandomize=True, database=None)
@given(T=st.integers(1, 4), B=st.integers(1, 3), n=st.integers(1, 3), depth=st.integers(1, 3),
       coupled=st.booleans(), masked=st.booleans(), seed=st.integers(0, 2**16))
def loop_matches_the_reference(T, B, n, depth, coupled, masked, seed):
    params, xs, s0, masks, dys = window(T=T, B=B, n=n, depth=depth, coupled=coupled, masked=masked, seed=seed)
    _, cache = rhn.forward(params, xs, s0, masks, impl="reference")
    _, R, _ = rhn.fuse_params(params)
    with replaced("micro_layers_backward", reference_micro_layers_backward):
        dA, ds0 = time_loop(cache, dys.copy(), R)
    dA_ref, ds0_ref = reference_time_loop(cache, dys, R)
    _, _, ds0_pkg = rhn.backward(params, cache, dys)
    assert rel_error(ds0, ds0_pkg) < 1e-10, f"∂L/∂s0: relative error {rel_error(ds0, ds0_pkg):.1e}"
    assert rel_error(dA, dA_ref) < 1e-10, f"∂L/∂a: relative error {rel_error(dA, dA_ref):.1e}"


loop_matches_the_reference()
params, xs, s0, masks, dys = window(T=4, depth=2, masked=True, seed=5)
_, cache = rhn.forward(params, xs, s0, masks, impl="reference")
with replaced("micro_layers_backward", reference_micro_layers_backward):
    _, ds0 = time_loop(cache, dys, rhn.fuse_params(params)[1])
loss = lambda _: rhn_loss(params, xs, s0, dys, masks)  # noqa: E731  (reads s0, perturbed in place)
assert directional_check(loss, s0, ds0) < 1e-6, "∂L/∂s0 against central differences"
### END HIDDEN TESTS

# %% [markdown]
# ## Part 3: the weight gradients, 3 points
#
# `weight_grads(params, cache, dA)` turns $\partial L/\partial a$ of every micro-layer and
# step into the gradients of the weights, each a sum over all steps and batch rows, and
# $\partial L/\partial x_t$. From the forward above: what multiplies $R_\ell$, $W$ and
# $b_\ell$ in $a_\ell$, masks included? `np.einsum` or reshaping to (T·B, ·) both work;
# `rhn.split_grads(dW, dR, db, coupled)` turns the fused gradients into the dict of `params`.

# %% nbgrader={"grade": false, "grade_id": "bptt-weights_solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
def weight_grads(params, cache, dA):
    """The gradients of the weights and of the inputs from ∂L/∂a.

    Parameters
    ----------
    params : the layer's parameters (dict of the paper's names)
    cache : from rhn.forward(params, xs, s0, masks, impl="reference")
    dA : (L, T, B, k·n) ∂L/∂a of every micro-layer and step

    Returns
    -------
    grads : dict with the keys and shapes of params
    dxs : (T, B, n_in) ∂L/∂x_t
    """
    W, R, _ = rhn.fuse_params(params)  # W (n_in, k·n), R (L, n, k·n)
    S = cache["s_in"]  # (L, T, B, n): the input state of every micro-layer and step
    xs, m_x, m_s = cache["xs"], cache["m_x"], cache["m_s"]  # (T, B, n_in), masks or None
    # Set the fused dW (n_in, k·n), dR (L, n, k·n), db (L, k·n), and dxs (T, B, n_in).
    ### BEGIN SOLUTION
    S_tr = S if m_s is None else S * m_s  # the states the transforms saw
    dR = np.einsum("ltbi,ltbk->lik", S_tr, dA)
    db = dA.sum(axis=(1, 2))
    x_in = xs if m_x is None else xs * m_x
    dW = np.einsum("tbi,tbk->ik", x_in, dA[0])  # only micro-layer 1 sees the input
    dxs = dA[0] @ W.T
    if m_x is not None:
        dxs = dxs * m_x
    ### END SOLUTION
    return rhn.split_grads(dW, dR, db, rhn.is_coupled(params)), dxs


# %% nbgrader={"grade": true, "grade_id": "bptt-weights", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
# Visible tests with ∂L/∂a = 1 everywhere: then ∂L/∂b[ℓ] counts the T·B rows, and every column of
# ∂L/∂R_H[ℓ] is the sum of the states that micro-layer's transforms saw.
T, B = 3, 2
params, xs, s0, masks, dys = window(T=T, B=B, depth=2, masked=True)
_, cache = rhn.forward(params, xs, s0, masks, impl="reference")
grads, dxs = weight_grads(params, cache, np.ones((2, T, B, 6)))
assert set(grads) == set(params), f"grads has the keys {sorted(grads)}, params {sorted(params)}"
for key in params:
    assert grads[key].shape == params[key].shape, f"grads[{key!r}] has shape {grads[key].shape}"
assert dxs.shape == xs.shape
assert np.allclose(grads["b_H"], T * B) and np.allclose(grads["b_T"], T * B)
seen = (cache["s_in"] * masks["s"]).sum(axis=(1, 2))  # (L, n)
assert np.allclose(grads["R_H"], seen[:, :, None]), "∂L/∂R: which states did the transforms see?"
print("visible tests passed")
### BEGIN HIDDEN TESTS
from hypothesis import given, settings, strategies as st


@settings(max_examples=12, deadline=None, derandomize=True, database=None)
@given(T=st.integers(1, 4), B=st.integers(1, 3), n=st.integers(1, 3), depth=st.integers(1, 3),
       coupled=st.booleans(), masked=st.booleans(), seed=st.integers(0, 2**16))
def weights_match_the_reference(T, B, n, depth, coupled, masked, seed):
    params, xs, s0, masks, dys = window(T=T, B=B, n=n, depth=depth, coupled=coupled, masked=masked, seed=seed)
    _, cache = rhn.forward(params, xs, s0, masks, impl="reference")
    dA, _ = reference_time_loop(cache, dys, rhn.fuse_params(params)[1])
    grads, dxs = weight_grads(params, cache, dA.copy())
    grads_ref, dxs_ref, _ = rhn.backward(params, cache, dys)
    for key in params:
        err = rel_error(grads[key], grads_ref[key])
        assert err < 1e-10, f"∂L/∂{key}: relative error {err:.1e}"
    assert rel_error(dxs, dxs_ref) < 1e-10, f"∂L/∂x: relative error {rel_error(dxs, dxs_ref):.1e}"


weights_match_the_reference()
params, xs, s0, masks, dys = window(T=3, depth=2, coupled=False, masked=True, seed=7)
_, cache = rhn.forward(params, xs, s0, masks, impl="reference")
grads, dxs = weight_grads(params, cache, reference_time_loop(cache, dys, rhn.fuse_params(params)[1])[0])
loss = lambda _: rhn_loss(params, xs, s0, dys, masks)  # noqa: E731  (reads the arrays perturbed in place)
for key, g in [*grads.items(), ("xs", dxs)]:
    err = directional_check(loss, xs if key == "xs" else params[key], g)
    assert err < 1e-6, f"∂L/∂{key} against central differences: {err:.1e}"
### END HIDDEN TESTS

# %% [markdown]
# ## The whole backward
#
# `bptt` puts the parts together (given; nothing to write here).

# %% nbgrader={"grade": false, "grade_id": "bptt-bptt", "locked": true, "schema_version": 3, "solution": false, "task": false}
def bptt(params, cache, dys, ds_last=None):
    """Backpropagation through time over the window of rhn.forward(params, xs, s0, masks).

    Returns grads (dict like params), dxs (T, B, n_in) and ds0 (B, n), as rhn.backward does.
    """
    _, R, _ = rhn.fuse_params(params)
    dA, ds0 = time_loop(cache, dys, R, ds_last)
    grads, dxs = weight_grads(params, cache, dA)
    return grads, dxs, ds0


# %% [markdown]
# ## Part 4: a gradient from the next window (`ds_last`), 2 points
#
# Graded on `time_loop`'s `ds_last` (written in part 2). A long window cut in two, the later
# half run first with `ds_last`, its `ds0` passed as the earlier half's `ds_last`, must give
# the long window's ∂L/∂s0.

# %% nbgrader={"grade": true, "grade_id": "bptt-ds_last", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
# Visible tests with the halving stand-in: ∂L/∂s0 = ds_last / 8 + dys[0] / 2 + dys[1] / 4 + dys[2] / 8.
def halving_step(ds, layers, R, m_s=None):
    return ds / 2, [np.zeros((ds.shape[0], R.shape[2])) for _ in layers]


params, xs, s0, masks, dys = window(T=3)
_, cache = rhn.forward(params, xs, s0, masks, impl="reference")
ds_last = np.random.default_rng(3).standard_normal(s0.shape)
with replaced("micro_layers_backward", halving_step):
    _, ds0 = time_loop(cache, dys, rhn.fuse_params(params)[1], ds_last)
assert rel_error(ds0, ds_last / 8 + dys[0] / 2 + dys[1] / 4 + dys[2] / 8) < 1e-12, "ds_last enters at the last step"
print("visible tests passed")
### BEGIN HIDDEN TESTS
from hypothesis import given, settings, strategies as st


@settings(max_examples=10, deadline=None, derandomize=True, database=None)
@given(T1=st.integers(1, 3), T2=st.integers(1, 3), B=st.integers(1, 2), n=st.integers(1, 3),
       depth=st.integers(1, 2), coupled=st.booleans(), masked=st.booleans(), seed=st.integers(0, 2**16))
def two_windows_make_one(T1, T2, B, n, depth, coupled, masked, seed):
    params, xs, s0, masks, dys = window(T=T1 + T2, B=B, n=n, depth=depth, coupled=coupled, masked=masked, seed=seed)
    R = rhn.fuse_params(params)[1]
    ys1, cache1 = rhn.forward(params, xs[:T1], s0, masks, impl="reference")
    _, cache2 = rhn.forward(params, xs[T1:], ys1[-1], masks, impl="reference")  # the carried state
    _, cache = rhn.forward(params, xs, s0, masks, impl="reference")
    ds_last = np.random.default_rng(seed + 1).standard_normal((B, n))
    with replaced("micro_layers_backward", reference_micro_layers_backward):
        _, ds_mid = time_loop(cache2, dys[T1:].copy(), R, ds_last.copy())
        _, ds0 = time_loop(cache1, dys[:T1].copy(), R, ds_mid)
    _, _, ds_mid_ref = rhn.backward(params, cache2, dys[T1:], ds_last)
    _, _, ds0_ref = rhn.backward(params, cache, dys, ds_last)
    assert rel_error(ds_mid, ds_mid_ref) < 1e-10, "time_loop(..., ds_last): ∂L/∂s0 of the later window"
    assert rel_error(ds0, ds0_ref) < 1e-10, "two windows chained through ds_last: ∂L/∂s0 of the long window"


two_windows_make_one()
### END HIDDEN TESTS

# %% [markdown]
# ## Check it yourself (not graded)
#
# Your own `micro_layers_backward` and `bptt` together, against the package's backward.

# %% nbgrader={"grade": false, "grade_id": "bptt-selfcheck", "locked": true, "schema_version": 3, "solution": false, "task": false}
params, xs, s0, masks, dys = window(T=5, B=3, n=4, depth=3, masked=True, seed=11)
_, cache = rhn.forward(params, xs, s0, masks, impl="reference")
ds_last = np.random.default_rng(12).standard_normal(s0.shape)
grads, dxs, ds0 = bptt(params, cache, dys, ds_last)
grads_ref, dxs_ref, ds0_ref = rhn.backward(params, cache, dys, ds_last)
for key in params:
    print(f"∂L/∂{key:4s} relative error {rel_error(grads[key], grads_ref[key]):.1e}")
print(f"∂L/∂x    relative error {rel_error(dxs, dxs_ref):.1e}")
print(f"∂L/∂s0   relative error {rel_error(ds0, ds0_ref):.1e}")
