# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Checking gradients: numerical differences and property-based tests
#
# `rhn_np` computes the gradients of a Recurrent Highway Network by **hand-written
# backpropagation through time** (`rhn.backward`, built from `rhn.micro_backward`, the
# derivative of Eqs. 6–9). Nothing checks such code for us: a sign error or a
# forgotten factor still trains, only worse. This notebook shows how the project
# checks it, in the order a lecturer would:
#
# 1. **central differences** and how their error depends on the step size $h$
#    (truncation against round-off), in float64 and float32;
# 2. **`rel_error`**, the one number we compare, and why checks run in float64;
# 3. the **entry-by-entry** check of every gradient of `rhn.backward`;
# 4. the **directional** (random dot-product) check, for shapes too large for that;
# 5. **planted bugs**: what the checks report when the backward is wrong;
# 6. **Hypothesis**: the property "every gradient matches central differences" over
#    drawn shapes, depths, couplings and masks, and
# 7. how Hypothesis **shrinks** a planted bug to a minimal failing example;
# 8. **invariants** of the model as properties;
# 9. Hypothesis **settings and profiles** (as `tests/conftest.py` registers them).
#
# Everything runs on NumPy in float64 unless a cell says otherwise, on the readable
# reference code (`impl="reference"`, see §5 for why that matters).
#
# *Fast mode:* `RHN_FAST=1` shrinks every size and runs few Hypothesis examples (well
# under a minute on 2 CPU cores). `RHN_FIGDIR=some/folder` also saves every figure as
# a PNG.

# %%
import os

# The matrices here are tiny: one BLAS thread is as fast as several, and OpenBLAS
# threads that spin-wait slow down many times over when other programs share the CPU.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import contextlib  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import NamedTuple  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

# Hypothesis keeps a cache (and, for tests, its example database) in ./.hypothesis; here a
# scratch folder instead, removed when the kernel stops, so that no run leaves files
# next to the notebook.
hypothesis_home = tempfile.TemporaryDirectory(prefix="rhn-hypothesis-")
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", hypothesis_home.name)

from hypothesis import Phase, given, settings, strategies as st  # noqa: E402

from rhn_np import fast, gradcheck, plots, rhn  # noqa: E402

FAST = os.environ.get("RHN_FAST", "0") not in ("", "0")
plots.use_slide_style()
np.set_printoptions(precision=3, suppress=False)

GRAD_TOL = 1e-6  # the tolerance of tests/test_rhn.py: float64, h = 1e-5


show = plots.show  # display, and save as <RHN_FIGDIR>/<name>.png when that is set


print("fast mode" if FAST else "full mode")
T0_NOTEBOOK = time.perf_counter()

# %% [markdown]
# ## The layer we check
#
# One configuration of the layer is a `Case`: the window length $T$, batch $B$, input
# width, number of units $n$, recurrence depth $L$, coupled or uncoupled carry gate,
# with or without variational-dropout masks, with or without a gradient `ds_last`
# arriving from a later window, the init scale, the transform-gate bias and a seed.
# `make_layer` turns a `Case` into float64 arrays. The loss whose gradients
# `rhn.backward` returns is
#
# $$ L = \sum_t \langle \mathrm{dys}_t, y_t\rangle + \langle \mathrm{ds\_last}, y_T \rangle , $$
#
# i.e. `dys` and `ds_last` are "the gradients arriving from above"
# (`gradcheck.rhn_loss`). The same `Case` type is what Hypothesis will draw in §6.

# %%
class Case(NamedTuple):
    T: int
    B: int
    n_in: int
    n: int
    depth: int
    coupled: bool
    masks: bool
    ds_last: bool
    init_scale: float
    transform_bias: float
    seed: int


def make_layer(case):
    """float64 parameters and inputs of one window for ``case`` (masks, ds_last None when off)."""
    rng = np.random.default_rng(case.seed)
    params = rhn.init_params(case.n_in, case.n, case.depth, coupled=case.coupled, init_scale=case.init_scale,
                             transform_bias=case.transform_bias, seed=case.seed, dtype="float64")
    xs = rng.standard_normal((case.T, case.B, case.n_in))
    s0 = 0.5 * np.tanh(rng.standard_normal((case.B, case.n)))
    dys = rng.standard_normal((case.T, case.B, case.n))
    ds_last = rng.standard_normal((case.B, case.n))
    keep = 0.7  # inverted dropout: Bernoulli(keep) / keep, one mask per window
    masks = {"x": (rng.random((case.B, case.n_in)) < keep) / keep, "s": (rng.random((case.B, case.n)) < keep) / keep}
    return SimpleNamespace(params=params, xs=xs, s0=s0, dys=dys, ds_last=ds_last if case.ds_last else None,
                           masks=masks if case.masks else None)


def n_entries(case):
    """How many numbers the gradient check compares: every parameter, xs and s0."""
    shapes = rhn.param_shapes(case.n_in, case.n, case.depth, case.coupled)
    return sum(int(np.prod(s)) for s in shapes.values()) + case.T * case.B * case.n_in + case.B * case.n


if FAST:
    EXAMPLE = Case(T=4, B=2, n_in=3, n=5, depth=3, coupled=True, masks=True, ds_last=True,
                   init_scale=0.5, transform_bias=-1.0, seed=1)
else:
    EXAMPLE = Case(T=6, B=3, n_in=4, n=8, depth=4, coupled=True, masks=True, ds_last=True,
                   init_scale=0.5, transform_bias=-1.0, seed=1)
layer = make_layer(EXAMPLE)
print(EXAMPLE)
print("parameters:", {k: v.shape for k, v in layer.params.items()})
print("numbers to check:", n_entries(EXAMPLE))

# %% [markdown]
# ## 1. Central differences and the step size
#
# Move all inputs of the loss along a direction $v$ ($\|v\| = 1$) and expand in Taylor
# series, $g(h) = L(\theta + h v)$:
#
# $$ \frac{g(h) - g(-h)}{2h} = g'(0) + \frac{h^2}{6}\, g'''(0) + O(h^4). $$
#
# The exact directional derivative is $g'(0) = \langle \nabla L, v\rangle$, which the
# backward gives us. Two errors compete:
#
# * **truncation**, from the dropped Taylor terms: $\approx \tfrac{h^2}{6}|g'''|$,
#   shrinks with $h$ (one-sided differences $(g(h) - g(0))/h$ only reach $O(h)$: that is
#   why we use *central* ones);
# * **round-off**: each $g(\pm h)$ is computed with an error of about $\varepsilon \cdot
#   \sum|y \odot \mathrm{dy}|$ (machine epsilon $\varepsilon$ times the size of the terms
#   summed), and the difference is divided by $2h$: $\approx \varepsilon\,C / h$, grows
#   as $h$ shrinks.
#
# Their sum $E(h) \approx a h^2 + c\,\varepsilon / h$ is smallest at
# $h^* = (c\varepsilon / 2a)^{1/3} \propto \varepsilon^{1/3}$, where
# $E(h^*) \propto \varepsilon^{2/3}$. With $\varepsilon_{64} = 2.2\cdot10^{-16}$ that is
# $h^* \sim 6\cdot10^{-6}$ and $E \sim 4\cdot10^{-11}$; with
# $\varepsilon_{32} = 1.2\cdot10^{-7}$, $h^* \sim 5\cdot10^{-3}$ and $E \sim 2\cdot10^{-5}$.
#
# Below we measure it: the relative error of the central difference against
# $\langle\nabla L, v\rangle$ from `rhn.backward` (float64), for many steps $h$ and
# random directions $v$ through all parameters, `xs` and `s0` at once, once with the
# forward computed in float64 and once in float32.

# %%
ys, cache = rhn.forward(layer.params, layer.xs, layer.s0, layer.masks, impl="reference")
grads, dxs, ds0 = rhn.backward(layer.params, cache, layer.dys, layer.ds_last)
analytic = {**grads, "xs": dxs, "s0": ds0}
theta = {**layer.params, "xs": layer.xs, "s0": layer.s0}  # everything the loss depends on


def loss_in(arrays, dtype):
    """The loss with every array (and the forward, and the sum) in ``dtype``."""
    p = {k: arrays[k].astype(dtype) for k in layer.params}
    masks = None if layer.masks is None else {k: m.astype(dtype) for k, m in layer.masks.items()}
    y, _ = rhn.forward(p, arrays["xs"].astype(dtype), arrays["s0"].astype(dtype), masks, impl="reference")
    total = np.sum(y * layer.dys.astype(dtype)) + np.sum(y[-1] * layer.ds_last.astype(dtype))
    return float(total)


steps = np.logspace(-12, 0, 37 if FAST else 61)
n_dirs = 6 if FAST else 24
errors_h = {"float64": np.empty((n_dirs, len(steps))), "float32": np.empty((n_dirs, len(steps)))}
forward_h = np.empty((n_dirs, len(steps)))  # one-sided differences, float64 (for comparison)
for d in range(n_dirs):
    rng = np.random.default_rng(100 + d)
    v = {k: rng.standard_normal(a.shape) for k, a in theta.items()}
    norm = np.sqrt(sum(np.sum(a * a) for a in v.values()))
    v = {k: a / norm for k, a in v.items()}
    exact = sum(float(np.sum(analytic[k] * v[k])) for k in theta)  # <∇L, v> from the backward
    L0 = loss_in(theta, np.float64)
    for j, h in enumerate(steps):
        plus = {k: theta[k] + h * v[k] for k in theta}
        minus = {k: theta[k] - h * v[k] for k in theta}
        for name, dtype in (("float64", np.float64), ("float32", np.float32)):
            numeric = (loss_in(plus, dtype) - loss_in(minus, dtype)) / (2 * h)
            errors_h[name][d, j] = abs(numeric - exact) / abs(exact)
        forward_h[d, j] = abs((loss_in(plus, np.float64) - L0) / h - exact) / abs(exact)

best = {}
for name, e in errors_h.items():
    med = np.median(e, axis=0)
    j = int(np.argmin(med))
    best[name] = (steps[j], med[j])
    print(f"{name}: smallest median error {med[j]:.1e} at h = {steps[j]:.1e}; "
          f"at the default h = 1e-5: {np.interp(-5, np.log10(steps), med):.1e}")
med_fwd = np.median(forward_h, axis=0)
print(f"one-sided, float64: smallest median error {med_fwd.min():.1e} at h = {steps[np.argmin(med_fwd)]:.1e}")

# %% [markdown]
# The model $E(h) = a h^2 + c/h$, fitted to each curve — $a$ from the large steps where
# truncation dominates, $c$ from the small steps where round-off does — predicts the
# optimum $h^* = (c/2a)^{1/3}$ and the error there, $E(h^*) = 3a^{1/3}(c/2)^{2/3}$:

# %%
def fit_v(e, h):
    """a, c of E(h) = a h² + c / h from the two straight arms of a log-log V."""
    med = np.median(e, axis=0)
    j = int(np.argmin(med))
    right = (h >= 10 * h[j]) & (med < 0.1)
    left = (h <= h[j] / 10) & (med < 0.3)  # below the plateau where θ ± hv rounds to θ
    return float(np.median(med[right] / h[right] ** 2)), float(np.median(med[left] * h[left]))


model = {}
for name, e in errors_h.items():
    a, c = fit_v(e, steps)
    h_star = (c / (2 * a)) ** (1 / 3)
    model[name] = (a, c)
    eps = np.finfo(name).eps
    print(f"{name}: a = {a:.2g}, c = {c:.2g} (c/ε = {c / eps:.2g}); model h* = {h_star:.1e}, "
          f"E(h*) = {3 * a ** (1 / 3) * (c / 2) ** (2 / 3):.1e};  ε^(1/3) = {eps ** (1 / 3):.1e}")

# %%
fig, ax = plt.subplots(figsize=(11, 6.8))
colors = {"float64": "C0", "float32": "C3"}
for name, e in errors_h.items():
    col = colors[name]
    lo, med, hi = np.percentile(e, [25, 50, 75], axis=0)
    ax.fill_between(steps, lo, hi, color=col, alpha=0.18, lw=0)
    ax.plot(steps, med, "-o", color=col, ms=4, label=f"central, {name} (median of {n_dirs} directions)")
    a, c = model[name]
    ax.plot(steps, a * steps**2 + c / steps, ":", color=col, lw=2, alpha=0.9)
    h_opt, e_opt = best[name]
    ax.plot([h_opt], [e_opt], "*", color=col, ms=22, mec="k", mew=1.2, zorder=6)
    ax.annotate(f"h* = {h_opt:.0e}\nerror {e_opt:.0e}", (h_opt, e_opt), xytext=(14, -16),  # below right: empty
                textcoords="offset points", ha="left", va="top", fontsize=14, color=col,
                fontweight="bold", bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none", alpha=0.85))
ax.plot(steps, med_fwd, "--", color="0.45", lw=1.8, label="one-sided, float64: error O(h)")
ax.plot([], [], "k:", lw=2, label="model  a·h² + c/h")
ax.axvline(1e-5, color="0.3", lw=1.2, ls="-.")
ax.text(1.3e-5, 4e1, "gradcheck's\ndefault h = 1e-5", fontsize=12, color="0.3", va="top")
ax.text(2e-12, 1e-3, "round-off\n∝ ε / h", fontsize=14, color="0.25")
ax.text(1.5e-2, 1e-9, "truncation\n∝ h²", fontsize=14, color="0.25")
ax.set(xscale="log", yscale="log", ylim=(1e-13, 1e2), xlim=(steps[0] / 2, steps[-1] * 2),
       xlabel="step h", ylabel=r"relative error vs $\langle\nabla L, v\rangle$",
       title="Central differences: truncation against round-off")
ax.legend(loc="lower left", fontsize=12, framealpha=0.95)
show(fig, "gradients-01-step-size")

# %% [markdown]
# Read the V from right to left. For large $h$ both precisions lie on the same line of
# slope 2: truncation does not care about the precision (the fit gives the same $a$ for
# both). Where it meets the round-off line of slope −1 is the best step. float64
# reaches an error of a few $10^{-11}$ at $h$ of a few $10^{-5}$, next to the default
# $h = 10^{-5}$ of `gradcheck`. float32 never gets below about $10^{-5}$, at
# $h \approx 2\cdot10^{-2}$ — and at $h = 10^{-5}$ it is off by several per cent. Far left
# its curve is flat at exactly 1: there $\theta \pm h v$ rounds to $\theta$, both losses
# are equal and the "derivative" is 0. The round-off constant $c$ comes out as a few
# $\varepsilon$ in both precisions; $a$ is small here, which moves both optima a factor
# of about five above $\varepsilon^{1/3}$. The grey one-sided difference shows why we pay
# for the second loss evaluation: its error falls only like $h$, so its best is a few
# $10^{-8}$ (theory: $\sim\varepsilon^{1/2}$), a thousand times worse than central.

# %% [markdown]
# ## 2. One number per array: `rel_error`, and why float64
#
# `gradcheck.rel_error(x, y)` is
#
# $$ \mathrm{rel\_error}(x, y) = \frac{\max_i |x_i - y_i|}{\max_i \left(|x_i| + |y_i|\right)} , $$
#
# one number for a whole array: the largest difference measured against the largest
# magnitude. It is 0 for equal arrays, 1 for $x = -y$, and it does not blow up on
# entries that are (nearly) zero in both: an entry of $10^{-12}$ computed as
# $2\cdot10^{-12}$ is round-off, not a bug, when its neighbours are of order 1. (A
# per-entry relative error $|x_i - y_i| / (|x_i| + |y_i|)$ would call it 33 % wrong.)

# %%
g = np.array([1.0, -2.0, 1e-12])
print("identical                      :", gradcheck.rel_error(g, g))
print("the sign flipped               :", gradcheck.rel_error(g, -g))
print("one large entry 10 % off       :", gradcheck.rel_error(g, [1.0, -2.2, 1e-12]))
print("round-off in the near-zero one :", gradcheck.rel_error(g, [1.0, -2.0, 2e-12]))
print("per entry, that last one       :", np.abs(g - [1.0, -2.0, 2e-12]) / (np.abs(g) + np.abs([1.0, -2.0, 2e-12])))

# %% [markdown]
# Rules of thumb for float64 and $h = 10^{-5}$ (the package docstring gives them too):
# a correct backward agrees to $10^{-7}$ or better (the tests ask for $10^{-6}$); a
# wrong one is usually off by $10^{-3}$ or more; in between, look for kinks
# (`max`, `abs`, ReLU) or saturated gates, where the Taylor expansion fails.
#
# **Why float64.** In float32 the best any step can do is about $10^{-5}$ (§1), and
# only if we knew the best step in advance. A bug that changes one gradient entry by
# 0.01 % would hide in that noise. In float64 there are five orders of magnitude
# between the round-off ($\sim10^{-11}$) and the tolerance, and five more up to what
# bugs usually leave. So `gradcheck` refuses float32 outright:

# %%
try:
    gradcheck.numerical_gradient(lambda z: np.sum(z**2), np.ones(3, dtype=np.float32))
except TypeError as err:
    print("TypeError:", err)

# %% [markdown]
# ## 3. Entry by entry
#
# `gradcheck.numerical_gradient(f, x)` perturbs every entry of `x` in place, one at a
# time, by $\pm h$ (and puts it back): two evaluations of the loss per entry. The
# closure `f` ignores its argument and reads the perturbed arrays — the CS231n idiom.
# `gradcheck.check_rhn` does this for every parameter, `xs` and `s0` and returns
# `rel_error` per array. (Its `floor` guards arrays far smaller than the round-off of
# the loss, e.g. gradients deep in a vanished path; it does not matter here.)

# %%
t0 = time.perf_counter()
errors = gradcheck.check_rhn(layer.params, layer.xs, layer.s0, layer.dys, layer.masks, layer.ds_last)
t_full = time.perf_counter() - t0
print(f"{n_entries(EXAMPLE)} numbers, {2 * n_entries(EXAMPLE)} forward passes, {t_full:.2f} s")
for name, e in errors.items():
    print(f"  {name:5s} {str(theta[name].shape):13s} rel_error = {e:.1e}")
print("all below", GRAD_TOL, ":", max(errors.values()) < GRAD_TOL)

# %% [markdown]
# To *see* the check, compute the numerical gradient ourselves and look at the
# per-entry differences. Left: the analytic $\partial L/\partial R_H$ of every
# micro-layer. Middle: $|\text{analytic} - \text{numeric}|$ of the same entries, on a
# log colour scale. Right: the differences of *all* arrays, each divided by its array's
# largest $|x_i| + |y_i|$ (the terms whose maximum is `rel_error`).

# %%
def f_loss(_):
    return gradcheck.rhn_loss(layer.params, layer.xs, layer.s0, layer.dys, layer.masks, layer.ds_last)


numeric = {name: gradcheck.numerical_gradient(f_loss, theta[name]) for name in theta}
per_entry = {}
for name in theta:
    scale = np.max(np.abs(analytic[name]) + np.abs(numeric[name]))
    per_entry[name] = np.abs(analytic[name] - numeric[name]) / scale

fig = plt.figure(figsize=(17, 6.3))
gs = fig.add_gridspec(1, 3, width_ratios=[1.05, 1.05, 1.25])
depth = EXAMPLE.depth
gR = np.concatenate([analytic["R_H"][l] for l in range(depth)], axis=1)  # (n, L·n): micro-layers side by side
dR = np.concatenate([np.abs(analytic["R_H"][l] - numeric["R_H"][l]) for l in range(depth)], axis=1)
ax0, ax1, ax2 = fig.add_subplot(gs[0]), fig.add_subplot(gs[1]), fig.add_subplot(gs[2])
lim = np.abs(gR).max()
im0 = ax0.imshow(gR, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
fig.colorbar(im0, ax=ax0, shrink=0.85)
ax0.set_title(r"analytic $\partial L/\partial R_H$")
im1 = ax1.imshow(np.log10(np.maximum(dR, 1e-18)), cmap="viridis", aspect="auto")
fig.colorbar(im1, ax=ax1, shrink=0.85, label="log₁₀ |analytic − numeric|")
ax1.set_title("its per-entry error")
n_units = EXAMPLE.n
for ax in (ax0, ax1):
    ax.grid(False)
    for l in range(1, depth):
        ax.axvline(l * n_units - 0.5, color="k", lw=2.5)
    ax.set_xticks([l * n_units + (n_units - 1) / 2 for l in range(depth)], [f"ℓ = {l + 1}" for l in range(depth)])
    ax.set_yticks([])
    ax.set_xlabel("micro-layer (each block: n × n)")
groups = {"W (input)": ["W_H", "W_T", "W_C"], "R (recurrent)": ["R_H", "R_T", "R_C"], "b (bias)": ["b_H", "b_T", "b_C"],
          "xs": ["xs"], "s0": ["s0"]}
vals = [np.log10(np.maximum(np.concatenate([per_entry[k].ravel() for k in ks if k in per_entry]), 1e-18))
        for ks in groups.values()]
bins = np.linspace(-17, -8, 37)
ax2.hist(vals, bins=bins, stacked=True, label=list(groups), color=["C0", "C1", "C2", "C4", "C5"])
ax2.axvline(np.log10(GRAD_TOL), color="C3", lw=2.5, ls="--")
ax2.text(np.log10(GRAD_TOL) - 0.15, ax2.get_ylim()[1] * 0.97, "tolerance\n1e-6  →", color="C3", ha="right", va="top",
         fontsize=13)
ax2.set_xlim(-17, -5)
ax2.set(xlabel="log₁₀ (|analytic − numeric| / array scale)", ylabel="entries",
        title=f"all {n_entries(EXAMPLE)} entries")
ax2.legend(loc="upper left", fontsize=12)
fig.suptitle("Entry-by-entry check of rhn.backward (float64, h = 1e-5)")
show(fig, "gradients-02-entry-by-entry")

# %% [markdown]
# Every entry agrees to about $10^{-10}$ of its array's scale or better, five orders of
# magnitude below the tolerance. The errors have no pattern over the matrix: they are
# the round-off and truncation noise of §1, not a structured mistake (a bug shows up as
# a block, a row or a whole micro-layer that stands out).

# %% [markdown]
# ## 4. Too large for that: the directional check
#
# The entry-by-entry check costs two forward passes *per number*. For a layer of a
# realistic size that is hopeless. The **directional check** instead picks one random
# unit direction $v$ per array and compares one number,
#
# $$ \langle \nabla L, v \rangle \quad\text{with}\quad \frac{L(\theta + h v) - L(\theta - h v)}{2h}, $$
#
# two forward passes whatever the size (`gradcheck.directional_check`;
# `check_rhn(..., directional=True)` does it per array). A wrong gradient $\tilde g$
# passes only if $\langle \tilde g - \nabla L, v\rangle \approx 0$, which a random $v$
# almost never gives. The price: an error confined to $k$ of $N$ entries is diluted,
# its share of the dot product is of order $\sqrt{k/N}$ — so use several seeds, and
# keep the entry-by-entry check for small shapes, where it tells *which* entries are
# wrong.

# %%
BIG = (Case(T=10, B=4, n_in=8, n=32, depth=3, coupled=True, masks=True, ds_last=True, init_scale=0.3,
            transform_bias=-1.0, seed=5) if FAST else
       Case(T=20, B=8, n_in=16, n=64, depth=4, coupled=True, masks=True, ds_last=True, init_scale=0.3,
            transform_bias=-1.0, seed=5))
big = make_layer(BIG)
t0 = time.perf_counter()
for _ in range(5):
    gradcheck.rhn_loss(big.params, big.xs, big.s0, big.dys, big.masks, big.ds_last)
t_fwd = (time.perf_counter() - t0) / 5
print(BIG)
t_est = 2 * n_entries(BIG) * t_fwd
print(f"{n_entries(BIG):,} numbers; one forward {1e3 * t_fwd:.1f} ms: the entry-by-entry check would take about "
      + (f"{t_est:.0f} s" if t_est < 120 else f"{t_est / 60:.0f} min"))
seeds = range(3)
t0 = time.perf_counter()
directional = [gradcheck.check_rhn(big.params, big.xs, big.s0, big.dys, big.masks, big.ds_last, directional=True,
                                   seed=s) for s in seeds]
print(f"directional check, {len(seeds)} seeds: {time.perf_counter() - t0:.2f} s")
print("       " + "".join(f"  seed {s}" for s in seeds))
for name in directional[0]:
    print(f"  {name:5s}" + "".join(f"  {d[name]:.1e}" for d in directional))

# %% [markdown]
# ## 5. Planted bugs: what a wrong backward looks like
#
# A check that never fails proves nothing. So we plant bugs in the backward and watch
# the check catch them. Three typical mistakes of hand-written BPTT:
#
# 1. **a sign error in $\partial L/\partial a_T$** (coupled gate): from
#    $s = s_{in} + t \odot (h - s_{in})$ the correct term is
#    $\mathrm{ds} \odot (h - s_{in}) \odot t(1-t)$; the bug writes $(s_{in} - h)$;
# 2. **the dropout mask applied to the carry path**: the state mask $m_s$ multiplies
#    only the state that enters the transforms, $(s \odot m_s) R$, while the carry term
#    $s \odot c$ uses the unmasked state. The bug masks the whole $\partial L/\partial s$,
#    $(\text{carry} + \text{transform}) \odot m_s$;
# 3. **micro-layer 1's weights in every micro-layer's backward**: $\partial L/\partial a\,
#    R_1^\top$ instead of $R_\ell^\top$ (an indexing slip that only matters for $L \ge 2$).
#
# Each is a buggy copy of `rhn.micro_backward` or of the private `rhn._step_backward`
# (the loop over micro-layers that calls it), planted with a context manager that puts
# the original back however the block ends, and counts the calls so that we can verify
# the bug really runs.

# %%
reference_micro_backward = rhn.micro_backward


def micro_backward_sign_bug(ds, s_in, h, t, c=None):
    """rhn.micro_backward with the sign of (h - s_in) flipped in ∂L/∂a_T (coupled gate)."""
    if c is not None:
        return reference_micro_backward(ds, s_in, h, t, c)  # the uncoupled branch is untouched
    da_H = ds * t * (1.0 - h * h)
    da_T = ds * (s_in - h) * t * (1.0 - t)  # BUG: should be (h - s_in)
    return np.concatenate([da_H, da_T], axis=1), ds * (1.0 - t)


def step_backward_mask_bug(ds, layers, R_t, m_s):
    """rhn._step_backward with the state mask applied to the carry path too."""
    das = [None] * len(layers)
    for l in reversed(range(len(layers))):
        s_in, h, t, c = layers[l]
        da, ds_carry = rhn.micro_backward(ds, s_in, h, t, c)
        ds_tr = da @ R_t[l]
        ds = ds_carry + ds_tr if m_s is None else (ds_carry + ds_tr) * m_s  # BUG: ds_carry + ds_tr * m_s
        das[l] = da
    return ds, das


def step_backward_layer_bug(ds, layers, R_t, m_s):
    """rhn._step_backward that multiplies by micro-layer 1's Rᵀ in every micro-layer."""
    das = [None] * len(layers)
    for l in reversed(range(len(layers))):
        s_in, h, t, c = layers[l]
        da, ds_carry = rhn.micro_backward(ds, s_in, h, t, c)
        ds_tr = da @ R_t[0]  # BUG: should be R_t[l]
        ds = ds_carry + (ds_tr if m_s is None else ds_tr * m_s)
        das[l] = da
    return ds, das


BUGS = {
    "sign of ∂L/∂a_T": ("micro_backward", micro_backward_sign_bug),
    "mask on the carry": ("_step_backward", step_backward_mask_bug),
    "R₁ in every layer": ("_step_backward", step_backward_layer_bug),
}


@contextlib.contextmanager
def planted(bug):
    """Replace one function of rhn by its buggy copy; yields a call counter; always restores."""
    name, buggy = BUGS[bug]
    original = getattr(rhn, name)
    calls = [0]

    def counted(*args, **kwargs):
        calls[0] += 1
        return buggy(*args, **kwargs)

    setattr(rhn, name, counted)
    try:
        yield calls
    finally:
        setattr(rhn, name, original)


# %% [markdown]
# **Make sure the bug runs.** `rhn.forward` picks an implementation: with
# `impl="auto"` it runs the fast path of `rhn_np.fast` where one is available (fused
# CUDA kernels on CuPy; compiled loops on NumPy when numba is installed), and that
# never calls `rhn.micro_backward`. A bug planted in the reference would then be
# silently skipped and every check would pass. So every call here says
# `impl="reference"` (`check_rhn` and `rhn_loss` do so by default), and we count:

# %%
print("impl='auto' on these NumPy arrays would run:", fast.resolve("auto", layer.xs))
with planted("sign of ∂L/∂a_T") as calls:
    _, c_ref = rhn.forward(layer.params, layer.xs, layer.s0, layer.masks, impl="reference")
    g_bug, _, _ = rhn.backward(layer.params, c_ref, layer.dys, layer.ds_last)
    print(f"reference: cache['impl'] = {c_ref['impl']!r}, buggy micro_backward called {calls[0]} times "
          f"(T·L = {EXAMPLE.T * EXAMPLE.depth}); ∂L/∂b_T changed by rel_error "
          f"{gradcheck.rel_error(g_bug['b_T'], grads['b_T']):.2f}")
    previous = fast.set_cpu_kernels("numpy")  # the fast path's NumPy kernels (no compilation needed)
    try:
        calls[0] = 0
        _, c_fast = rhn.forward(layer.params, layer.xs, layer.s0, layer.masks, impl="fast")
        g_fast, _, _ = rhn.backward(layer.params, c_fast, layer.dys, layer.ds_last)
    finally:
        fast.set_cpu_kernels(previous)
    print(f"fast:      cache['impl'] = {c_fast['impl']!r}, buggy micro_backward called {calls[0]} times; "
          f"∂L/∂b_T vs the correct one: {gradcheck.rel_error(g_fast['b_T'], grads['b_T']):.0e} (the bug never ran)")
print("restored:", rhn.micro_backward is reference_micro_backward)

# %% [markdown]
# Now the entry-by-entry check on the example layer (coupled, $L \ge 2$, masks on), once
# correct and once with each bug planted:

# %%
bug_errors = {"correct": errors}
for bug in BUGS:
    with planted(bug) as calls:
        bug_errors[bug] = gradcheck.check_rhn(layer.params, layer.xs, layer.s0, layer.dys, layer.masks,
                                              layer.ds_last)
    assert calls[0] > 0, f"the planted bug {bug!r} never ran"
    print(f"{bug:18s}: called {calls[0]:5d} times;  " + "  ".join(f"{k} {e:.0e}" for k, e in bug_errors[bug].items()))

# %%
names = list(errors)
TEX = {"xs": r"$x_{1..T}$", "s0": r"$s_0$"}  # tick labels: W_H -> $W_H$ etc.
BUG_LABEL = {"sign of ∂L/∂a_T": r"sign of $\partial L/\partial a_T$", "mask on the carry": "mask on the carry",
             "R₁ in every layer": r"$R_1$ in every layer"}
fig, ax = plt.subplots(figsize=(14, 6.8))
width = 0.8 / len(bug_errors)
bottom = 1e-14
for i, (label, errs) in enumerate(bug_errors.items()):
    x = np.arange(len(names)) + (i - (len(bug_errors) - 1) / 2) * width
    heights = [max(errs[k], bottom) - bottom for k in names]
    ax.bar(x, heights, width, bottom=bottom, color="0.55" if label == "correct" else f"C{i - 1}",
           label="correct backward" if label == "correct" else f"bug: {BUG_LABEL[label]}", edgecolor="k", lw=0.6)
ax.axhline(GRAD_TOL, color="C3", ls="--", lw=2.2, label="tolerance 1e-6")
ax.set_yscale("log")
ax.set_ylim(bottom, 5)
ax.set_xticks(np.arange(len(names)), [TEX.get(k, f"${k}$") for k in names], fontsize=16)
ax.set(ylabel="rel_error (analytic vs numeric)")
ax.set_title("Entry-by-entry check with and without planted bugs", pad=62)
handles, labels = ax.get_legend_handles_labels()
order = [labels.index(lab) for lab in labels if not lab.startswith("tolerance")] + [labels.index("tolerance 1e-6")]
ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="lower center", bbox_to_anchor=(0.5, 1.0),
          ncol=3, fontsize=13, frameon=False)
ax.grid(axis="x", visible=False)
show(fig, "gradients-03-planted-bugs")

# %% [markdown]
# Correct, every array sits near $10^{-10}$; each bug lifts every array by eight to ten
# orders of magnitude, to $10^{-2}$–$1$: there is no doubt which side of the tolerance
# an array is on. Which arrays move most tells where to look:
#
# * the **sign bug** puts the transform gate's own arrays $W_T$, $R_T$, $b_T$ at 1 (the
#   sign of every term flipped), and $x$, which receives $\partial L/\partial a_T$
#   through $W_T$, close to that; the $H$-gate arrays and $s_0$ are hit only through the
#   state gradient that flows back through $R_T$, at $10^{-2}$–$10^{-1}$;
# * the **mask bug** corrupts every gradient that has flowed back through a state, so
#   it reaches every array at $10^{-1}$–$1$;
# * the **layer bug** leaves $\partial L/\partial a$ of the top micro-layer of each step
#   right and is wrong from there down, again in every array.
#
# The directional check on the large layer catches all three as well, with one
# direction per array:

# %%
for bug in BUGS:
    with planted(bug) as calls:
        d_err = gradcheck.check_rhn(big.params, big.xs, big.s0, big.dys, big.masks, big.ds_last, directional=True)
    assert calls[0] > 0
    print(f"{bug:18s}: " + "  ".join(f"{k} {e:.0e}" for k, e in d_err.items()))

# %% [markdown]
# ## 6. Property-based testing with Hypothesis
#
# One layer, checked once, says little about *other* layers: a bug might appear only
# without masks, only for $T = 1$, only uncoupled, only for $L \ge 2$. Writing a test per
# combination does not scale. [Hypothesis](https://hypothesis.readthedocs.io) lets us
# state a **property** that must hold for *every* configuration, draws configurations
# from a **strategy**, runs the check on each, and, when one fails, **shrinks** it to
# the simplest failing configuration it can find.
#
# The strategy draws a `Case`: every field its own strategy (`st.integers`,
# `st.booleans`, `st.floats`), combined by `st.builds`. The ranges keep the gates out of
# saturation, where central differences lose accuracy; keyword arguments override one
# field (§8 uses that).

# %%
MAXIMA = dict(T=3, B=2, n_in=3, n=4, depth=3) if FAST else dict(T=5, B=3, n_in=5, n=6, depth=4)


def cases(**override):
    """Strategy for a ``Case``; ``override`` replaces the strategy of some fields."""
    fields = dict(
        T=st.integers(1, MAXIMA["T"]), B=st.integers(1, MAXIMA["B"]), n_in=st.integers(1, MAXIMA["n_in"]),
        n=st.integers(1, MAXIMA["n"]), depth=st.integers(1, MAXIMA["depth"]),
        coupled=st.booleans(), masks=st.booleans(), ds_last=st.booleans(),
        init_scale=st.floats(0.1, 1.0), transform_bias=st.floats(-2.0, 2.0), seed=st.integers(0, 2**32 - 1),
    )
    fields.update(override)
    return st.builds(Case, **fields)


def draws(strategy, k, **kw):
    """The first ``k`` values a derandomized run of ``@given(strategy)`` draws (``kw``: more settings)."""
    drawn = []

    @settings(**{"max_examples": k, "deadline": None, "derandomize": True, "database": None, **kw})
    @given(value=strategy)
    def record(value):
        drawn.append(value)

    record()
    return drawn[:k]


print("five draws:", *draws(cases(), 5), sep="\n  ")

# %% [markdown]
# The first draw is the simplest configuration of all; later ones mix sizes and flags.
# Hypothesis also likes awkward values on purpose: bounds of the ranges, zero, and
# floats such as $-10^{-300}$ that a hand-picked test would never contain.

# %% [markdown]
# The property is the project's own test (`test_every_gradient_matches_central_differences`
# in `tests/test_rhn.py`): build the layer, run `check_rhn`, assert every relative error
# is below the tolerance. `TRIED` records every example run, for the figure in §7.
#
# The settings: `max_examples` is how many configurations to try; `deadline=None`
# switches off Hypothesis's per-example time limit (a gradient check of a larger draw
# takes a good fraction of a second, and timing varies between machines);
# `derandomize=True` makes the draws a fixed function of the test, so this notebook
# prints the same numbers on every run; `database=None` stops Hypothesis from writing
# failing examples to a `.hypothesis/` folder next to the notebook. (§9 has more.)

# %%
NB_SETTINGS = settings(max_examples=8 if FAST else 60, deadline=None, derandomize=True, database=None,
                       phases=[p for p in Phase if p != Phase.explain])
TRIED = []  # (case, worst relative error) of every example run


def every_gradient_matches(case):
    lay = make_layer(case)
    errs = gradcheck.check_rhn(lay.params, lay.xs, lay.s0, lay.dys, lay.masks, lay.ds_last)
    worst = max(errs, key=errs.get)
    TRIED.append((case, errs[worst]))
    assert errs[worst] < GRAD_TOL, f"{worst}: relative error {errs[worst]:.1e} > {GRAD_TOL}"


test_every_gradient = NB_SETTINGS(given(case=cases())(every_gradient_matches))  # = @settings(...) @given(...) def

TRIED.clear()
t0 = time.perf_counter()
test_every_gradient()  # no exception: the property held for every draw
print(f"passed: {len(TRIED)} configurations in {time.perf_counter() - t0:.1f} s, "
      f"worst relative error {max(e for _, e in TRIED):.1e}")
print(f"  depths {sorted({c.depth for c, _ in TRIED})}, T {sorted({c.T for c, _ in TRIED})}, "
      f"coupled {sum(c.coupled for c, _ in TRIED)}/{len(TRIED)}, masks {sum(c.masks for c, _ in TRIED)}/{len(TRIED)}, "
      f"ds_last {sum(c.ds_last for c, _ in TRIED)}/{len(TRIED)}, "
      f"{min(n_entries(c) for c, _ in TRIED)}–{max(n_entries(c) for c, _ in TRIED)} numbers each")

# %% [markdown]
# In a test file the same property reads
#
# ```python
# @given(case=cases())
# def test_every_gradient_matches_central_differences(case):
#     ...
# ```
#
# with the settings coming from the profile that `tests/conftest.py` loads (§9).

# %% [markdown]
# ## 7. Shrinking: from a random failure to a minimal example
#
# Now run the same property with each bug planted. The first failing draw is whatever
# Hypothesis happened to generate — often a large configuration. Hypothesis then
# **shrinks** it: it tries smaller integers, `False` for booleans, simpler floats, and
# keeps any change after which the property still fails, until no change helps. It
# reports the result as the exception's note ("Falsifying example" / "Failing test
# case"); we catch the `AssertionError` and print that note.

# %%
shrink = {}
for bug in BUGS:
    TRIED.clear()
    t0 = time.perf_counter()
    with planted(bug) as calls:
        try:
            test_every_gradient()
        except AssertionError as err:
            report = "\n".join(getattr(err, "__notes__", [])) or str(err)
            message = str(err)
        else:
            raise RuntimeError(f"Hypothesis did not catch the bug {bug!r}")
    assert calls[0] > 0
    failing = [(i, c) for i, (c, e) in enumerate(TRIED) if not e < GRAD_TOL]
    minimal = TRIED[-1][0]  # Hypothesis runs the shrunk example once more, last, to report it
    assert not TRIED[-1][1] < GRAD_TOL
    shrink[bug] = dict(tried=list(TRIED), first=failing[0][1], minimal=minimal, message=message)
    print(f"=== bug: {bug}  ({len(TRIED)} examples run, {time.perf_counter() - t0:.1f} s)")
    print(f"first failure: {failing[0][1]}  ({n_entries(failing[0][1])} numbers)")
    print(report)
    print("assertion:", message, "\n")

# %% [markdown]
# Each minimal example names exactly the ingredient its bug needs, and nothing else is
# left: one step, one batch row, one input, one unit (as far as the bug allows),
# booleans `False` unless they are needed.
#
# * The **sign bug** needs `coupled=True`: only the coupled branch was changed.
# * The **mask bug** needs `masks=True`; without a mask the two formulas agree.
# * The **layer bug** needs `depth=2`: with one micro-layer, $R_1$ *is* the right matrix.
#
# That is the point of shrinking: the report is a diagnosis, not a random
# configuration of a hundred numbers. The figure shows how it got there: the failing
# examples in the order Hypothesis ran them, each field orange until it reaches its
# final value. The path is not monotone in every row: Hypothesis orders examples by
# the sequence of choices it made to draw them, so turning a ten-digit seed into 0 or a
# float into a round number can be worth a larger $T$ for a while; at the end every
# field is as simple as the bug allows. "Simple" is Hypothesis's order, not ours: the
# mask bug ends uncoupled (11 numbers) because `False` is simpler than `True`, though a
# coupled layer has fewer numbers (8).

# %%
ROWS = ["T", "B", "n_in", "n", "depth", "coupled", "masks", "ds_last", "init_scale", "transform_bias", "seed", "numbers"]


def shrink_path(res):
    """The failing examples in the order they were run (consecutive repeats merged)."""
    cols = []
    for c, e in res["tried"]:
        if not e < GRAD_TOL:
            col = [*(getattr(c, k) for k in ROWS[:-1]), n_entries(c)]
            if not cols or cols[-1] != col:
                cols.append(col)
    return cols


for i, (bug, res) in enumerate(shrink.items()):  # one figure (one slide) per bug
    cols = shrink_path(res)
    final = cols[-1]
    differs = np.array([[col[r] != final[r] for col in cols] for r in range(len(ROWS))], dtype=float)
    fig, ax = plt.subplots(figsize=(15, 5.6))
    ax.imshow(differs, cmap=ListedColormap(["#e8e8e8", "#f4a261"]), vmin=0, vmax=1, aspect="auto")
    for r in range(len(ROWS)):
        for j, col in enumerate(cols):
            v = col[r]
            if isinstance(v, bool):
                text = "T" if v else "F"
            elif isinstance(v, float):
                text = f"{v:.2g}"
            else:
                text = str(v) if v < 10**5 else f"{v:.0e}".replace("e+0", "e")
            ax.text(j, r, text, ha="center", va="center", fontsize=13,
                    fontweight="bold" if j == len(cols) - 1 else "normal")
    ax.set_yticks(range(len(ROWS)), ROWS, fontsize=14)
    ax.set_xticks([0, len(cols) - 1], ["first failure", "minimal"], fontsize=14)
    ax.set_xticks(np.arange(-0.5, len(cols)), minor=True)
    ax.set_yticks(np.arange(-0.5, len(ROWS)), minor=True)
    ax.grid(False)
    ax.grid(which="minor", color="white", lw=2)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("failing examples, in the order Hypothesis ran them  →  (orange: not yet the final value)")
    n_fail = sum(not e < GRAD_TOL for _, e in res["tried"])
    ax.set_title(f"Hypothesis shrinks the bug \u201c{BUG_LABEL[bug]}\u201d "
                 f"({n_fail} of the {len(res['tried'])} examples run failed)")
    show(fig, f"gradients-04{'abc'[i]}-shrinking")

# %% [markdown]
# **Which fields matter?** Hypothesis can say so itself. After shrinking, its
# `Phase.explain` (on by default) varies the fields of the minimal example and marks
# those whose value does not matter with `# or any other generated value`. It costs a
# few hundred extra runs, which is why `NB_SETTINGS` above leaves it out. Here it is once,
# for the layer bug, on a strategy of tiny layers so that it stays quick. (The same
# phase also traces every line that failing runs execute, to list the lines that *only*
# failing runs reach; under that tracing our pure-Python layer runs several times
# slower, so we switch the tracing off with the hook `hypothesis.core` provides for it.)

# %%
@contextlib.contextmanager
def no_line_tracing():
    """Switch off Hypothesis's line tracing of failing runs (its source calls the method a
    supported monkeypatch point); the explain phase still marks the fields that matter."""
    from hypothesis import core

    state = getattr(core, "StateForActualGivenExecution", None)
    if state is None or not hasattr(state, "_should_trace"):  # another Hypothesis version: just slower
        yield
        return
    original = state._should_trace
    state._should_trace = lambda self: False
    try:
        yield
    finally:
        state._should_trace = original


tiny = cases(T=st.integers(1, 2), B=st.integers(1, 2), n_in=st.integers(1, 2), n=st.integers(1, 2),
             depth=st.integers(1, 3))
explained = settings(NB_SETTINGS, phases=list(Phase))(given(case=tiny)(every_gradient_matches))
TRIED.clear()
t0 = time.perf_counter()
with planted("R₁ in every layer"), no_line_tracing():
    try:
        explained()
    except AssertionError as err:
        note = "\n".join(getattr(err, "__notes__", []))
    else:
        raise RuntimeError("Hypothesis did not catch the layer bug")
print(f"{len(TRIED)} examples run, {time.perf_counter() - t0:.1f} s")
print(note.split("\nExplanation:")[0])

# %% [markdown]
# Two fields are left without the comment. `depth=2` we expected. `masks=False` is a
# surprise worth a minute in a lecture: with a single unit, a drawn mask can drop that
# unit ($m_s = 0$); then no gradient flows through the transforms at all, the wrong
# matrix multiplies zero, and the bug is invisible. Hypothesis found that by itself —
# and it is a reminder that a check on one configuration can pass by accident.
#
# Once a bug is found and fixed, pin its minimal example so that every future run tries
# it first, whatever the random draws: `@example(case=Case(...))` above `@given`.
# (Hypothesis's example database does this automatically for the last failure on a
# developer's machine; `@example` makes it part of the test file.)

# %% [markdown]
# ## 8. Invariants as properties
#
# Central differences check that the backward is the derivative of the forward. They
# cannot tell whether the *forward* is the model of the paper. Properties of the model
# itself can, and they are as easy to state:
#
# **A saturated transform gate carries the state.** With the coupled gate, each
# micro-layer computes $s = s_{in} + t \odot (h - s_{in})$. A transform bias of $-30$
# makes $t = \sigma(a_T) \approx e^{-30} \approx 10^{-13}$, so every micro-layer copies
# its input and the output of every step is $s_0$ — for every input, depth, width and
# mask (the mask acts only on the transforms, Eq. 15: the Jacobian is the identity).
# Not bit for bit: $t$ is not exactly 0, so we assert the bound that follows from
# $|h - s_{in}| \le 2$, namely $\max|y_t - s_0| \le 2\,T L \max t$, and that
# $\max t < 10^{-10}$. (Uncoupled, the carry gate needs saturating too: $b_C = +30$.)
#
# **Two chained windows equal one long one.** Truncated BPTT carries the state
# forward and its gradient `ds_last` backward across a window boundary. Running
# windows $[1, T]$ and $[T+1, 2T]$ chained that way must give the same outputs and
# gradients as one window $[1, 2T]$ — to round-off, since the sums are grouped
# differently.

# %%
carry_stats = []


@NB_SETTINGS
@given(case=cases(transform_bias=st.just(-30.0), init_scale=st.floats(0.01, 0.2)))
def test_saturated_transform_gate_carries_the_state(case):
    lay = make_layer(case)
    if not case.coupled:
        lay.params["b_C"] = np.full_like(lay.params["b_C"], 30.0)
    ys, cache = rhn.forward(lay.params, lay.xs, lay.s0, lay.masks, impl="reference")
    t_max = float(cache["t"].max())
    leak = t_max if case.coupled else max(t_max, float(1.0 - cache["c"].min()))
    deviation = float(np.abs(ys - lay.s0).max())
    carry_stats.append((deviation, t_max))
    assert t_max < 1e-10
    assert deviation <= 2 * case.T * case.depth * leak, (deviation, leak)


test_saturated_transform_gate_carries_the_state()
dev = max(d for d, _ in carry_stats)
print(f"held for {len(carry_stats)} configurations: max |y_t - s0| = {dev:.1e}, "
      f"max t = {max(t for _, t in carry_stats):.1e} (σ(-30) = {1 / (1 + np.exp(30)):.1e})")


# %%
EXACT = 1e-12  # two float64 computations of the same sums, grouped differently
chain_stats = []


@NB_SETTINGS
@given(case=cases(), seed2=st.integers(0, 2**32 - 1))
def test_two_chained_windows_equal_one_long_window(case, seed2):
    lay = make_layer(case)
    second = make_layer(case._replace(seed=seed2))  # the next window: new inputs, same weights
    xs = np.concatenate([lay.xs, second.xs])
    dys = np.concatenate([lay.dys, second.dys])
    p, m = lay.params, lay.masks

    ys, c = rhn.forward(p, xs, lay.s0, m, impl="reference")  # one window of 2T steps
    g, dxs, ds0 = rhn.backward(p, c, dys, lay.ds_last)

    ys1, c1 = rhn.forward(p, lay.xs, lay.s0, m, impl="reference")
    ys2, c2 = rhn.forward(p, second.xs, ys1[-1], m, impl="reference")  # the state crosses the boundary
    g2, dxs2, ds_mid = rhn.backward(p, c2, second.dys, lay.ds_last)
    g1, dxs1, ds0_chained = rhn.backward(p, c1, lay.dys, ds_mid)  # ... and so does its gradient

    diffs = [gradcheck.rel_error(np.concatenate([ys1, ys2]), ys), gradcheck.rel_error(ds0_chained, ds0),
             gradcheck.rel_error(np.concatenate([dxs1, dxs2]), dxs)]
    diffs += [gradcheck.rel_error(g1[k] + g2[k], g[k]) for k in p]
    chain_stats.append(max(diffs))
    assert max(diffs) < EXACT, diffs


test_two_chained_windows_equal_one_long_window()
print(f"held for {len(chain_stats)} configurations: largest rel_error between chained and long: "
      f"{max(chain_stats):.1e}")

# %% [markdown]
# ## 9. Settings and profiles
#
# Every `@given` test runs under a `settings` object. The fields used most:
#
# | setting | meaning | here |
# |---|---|---|
# | `max_examples` | configurations to try (shrinking runs come on top) | 8 fast / 60 full |
# | `deadline` | per-example time limit (default 200 ms) | `None` |
# | `derandomize` | draws fixed by the test's source, not random | `True` |
# | `database` | where failing examples are saved and replayed | `None` (no `.hypothesis/`) |
# | `phases` | e.g. leave out `Phase.shrink` to see the raw failure | all |
# | `verbosity` | `Verbosity.verbose` prints every example tried | normal |
#
# An explicit `@settings(...)` on a test wins over the **profile** loaded for the run,
# which wins over Hypothesis's defaults. The project's `tests/conftest.py` registers
# three profiles and picks one by an environment variable:
#
# ```python
# settings.register_profile("dev", max_examples=10, deadline=None)        # edit-test loop
# settings.register_profile("ci", max_examples=50, deadline=None)         # CI (the CI variable is set)
# settings.register_profile("thorough", max_examples=500, deadline=None)  # nightly, pre-release
# settings.load_profile(os.environ.get("RHN_HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
# ```
#
# so `RHN_HYPOTHESIS_PROFILE=thorough pytest tests/test_rhn.py` runs every property on
# 500 configurations, without touching a test. The tests leave `derandomize` off: each
# CI run then tries new configurations, and a failure is saved in the database and
# replayed first next time. The notebook turns it on, because a lecture should print the
# same numbers every time. Both, side by side, on a cheap property (the first three
# draws of two runs each):

# %%
settings.register_profile("notebook", max_examples=3, deadline=None, database=None)
settings.load_profile("notebook")  # what conftest.py does with "dev", "ci" or "thorough"
print("loaded profile: max_examples =", settings.default.max_examples, "| deadline =", settings.default.deadline)
print("NB_SETTINGS (explicit, wins over the profile): max_examples =", NB_SETTINGS.max_examples)


for derandomize in (True, False):
    runs = [[c[:5] for c in draws(cases(), 3, derandomize=derandomize)] for _ in range(2)]
    print(f"derandomize={derandomize!s:5s}: run 1 {runs[0]}\n                   run 2 {runs[1]}  "
          f"-> {'the same' if runs[0] == runs[1] else 'different'}")
settings.load_profile("default")

# %% [markdown]
# ## Summary
#
# * Central differences have an error $a h^2 + c\varepsilon/h$: truncation against
#   round-off. Measured here: float64 is best near $h = 10^{-5}$ at about $10^{-11}$;
#   float32 near $h = 10^{-2}$ at about $10^{-5}$ — too coarse to tell a small bug from
#   noise. Check gradients in float64 (`gradcheck` insists).
# * Compare whole arrays with `rel_error` (largest difference over largest magnitude):
#   a correct backward gives $\sim 10^{-10}$, a wrong one $10^{-3}$ or more.
# * Entry by entry for small shapes (it says *where*); one random direction for large
#   ones (two forward passes whatever the size; use a few seeds).
# * Plant bugs to show that a check can fail, and verify that the planted code runs:
#   the fast path never calls the reference's `micro_backward`.
# * Hypothesis turns "the gradients are right for this layer" into "for every layer of
#   these shapes, depths, couplings and masks", and shrinks a failure to a minimal
#   example that names the cause.
# * Invariants of the model (saturated carry, chained windows) check the forward too.
# * Settings per test, profiles per run: `RHN_HYPOTHESIS_PROFILE=dev|ci|thorough`.

# %%
print(f"notebook ran in {time.perf_counter() - T0_NOTEBOOK:.1f} s ({'fast' if FAST else 'full'} mode)")
