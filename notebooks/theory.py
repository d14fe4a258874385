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
# # Why gates help: Geršgorin discs of recurrent Jacobians
#
# *Recurrent Highway Networks* (Zilly et al., ICML 2017), its Geršgorin analysis (Eqs. 2–4 and 10–15) — a walkthrough.
#
# Backpropagation through time multiplies the gradient at step $t$ by the temporal
# Jacobian $\partial s_t/\partial s_{t-1}$, once per step. Where its eigenvalues
# sit decides whether gradients **vanish** ($|\lambda| < 1$) or **explode**
# ($|\lambda| > 1$) over long lags. The paper locates those eigenvalues with the
# **Geršgorin circle theorem** and uses it to argue
#
# 1. why plain RNNs are hard to initialise (Figure 2),
# 2. how the carry and transform gates of an RHN move every eigenvalue between
#    "perfect memory" ($\lambda = 1$) and "plain tanh RNN" (Eq. 15),
# 3. why the transform-gate bias starts negative.
#
# Every Jacobian below is **exact**: `rhn_np.theory` builds it from the gate values
# of the layer's own forward (`rhn.step_forward`), and the tests check it against
# finite differences and PyTorch autograd.
#
# *Fast mode:* `RHN_FAST=1` shrinks every size and sweep (under a minute on 2 CPU
# cores). `RHN_FIGDIR=some/folder` also saves every figure as a PNG. Run in Jupyter,
# section 4 ends with sliders that redraw the RHN's discs for your own settings.

# %%
import os

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from rhn_np import dtrnn, plots, rhn, theory

FAST = os.environ.get("RHN_FAST", "0") not in ("", "0")
plots.use_slide_style()
np.set_printoptions(precision=3, suppress=True)


show = plots.show  # display, and save as <RHN_FIGDIR>/<name>.png when that is set


print("fast mode" if FAST else "full mode")

# %% [markdown]
# ## 1. The Geršgorin circle theorem (Eq. 4)
#
# For a square matrix $A$, draw for every row $i$ the disc centred at the diagonal
# entry $a_{ii}$ with radius the sum of the absolute off-diagonal entries of that row,
#
# $$ D_i = \Big\{ \lambda \in \mathbb{C} : |\lambda - a_{ii}| \le \textstyle\sum_{j \ne i} |a_{ij}| \Big\}. $$
#
# **Every eigenvalue of $A$ lies in the union $\bigcup_i D_i$.** The same holds for
# the column discs (radii summed over columns), since $A$ and $A^\top$ have the same
# eigenvalues. A disc need not contain an eigenvalue; a connected group of $k$ discs
# that is disjoint from the others contains exactly $k$.
#
# Why it matters here: when every row disc lies inside the unit circle,
# $|a_{ii}| + r_i < 1$ for every row, i.e. $\|A\|_\infty < 1$. That norm is
# submultiplicative, so products of such Jacobians over many steps shrink (vanishing
# gradients), and every eigenvalue has $|\lambda| < 1$. A disc that reaches outside
# allows eigenvalues with $|\lambda| > 1$ (possible explosion).

# %%
A_example = np.array(
    [
        [1.6, 0.3, -0.2, 0.1],
        [0.4, -1.1, 0.3, 0.0],
        [0.0, -0.5, 0.2, -0.9],
        [0.2, 0.1, 0.8, 0.3],
    ]
)
centres, r_rows = theory.gersgorin_discs(A_example, axis="rows")
_, r_cols = theory.gersgorin_discs(A_example, axis="columns")
lam = theory.spectrum(A_example)
print(" i   centre a_ii   row radius   column radius")
for i in range(4):
    print(f"{i:2d}   {centres[i]:10.2f}   {r_rows[i]:10.2f}   {r_cols[i]:12.2f}")
print("eigenvalues:", lam)
print("inside the row discs:", theory.eigenvalues_in_union(A_example, "rows"),
      "| inside the column discs:", theory.eigenvalues_in_union(A_example, "columns"))

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 6))
plots.plot_discs(A_example, axes[0], axis="rows", unit_circle=False, title="row discs")
plots.plot_discs(A_example, axes[1], axis="columns", color="C2", unit_circle=False, title="column discs")
plots.set_common_limits(axes)
for ax in axes:
    ax.legend(loc="upper left")
fig.suptitle("Geršgorin: every eigenvalue (×) lies in the union of the discs")
show(fig, "01_gersgorin_example")

# %% [markdown]
# ## 2. Figure 2 of the paper: small random vs identity initialisation
#
# For a plain tanh RNN, $y_t = \tanh(x_t W + y_{t-1} R + b)$ (in the row-vector
# convention of the code), the temporal Jacobian in the paper's layout (Eq. 2) is
#
# $$ A = \frac{\partial y_t}{\partial y_{t-1}} = R\, \mathrm{diag}\big[\tanh'(a_t)\big], \qquad \|A\| \le \gamma\, \sigma_{\max}(R) \quad (\text{Eq. 3}), $$
#
# with $\gamma = 1$ a bound on $|\tanh'|$. At the origin ($x = 0$, $y = 0$) $\tanh' = 1$,
# so $A = R$ and the discs are those of the recurrent matrix itself:
#
# * **small random init** (every entry $\sim \mathcal N(0, 0.01^2)$): every disc is
#   centred near 0 → all eigenvalues small → gradients vanish;
# * **identity init** (diagonal 1, small random off-diagonal; Le et al. 2015): discs
#   centred at 1 — gradients neither vanish nor explode *at first*, but the radii
#   already straddle the unit circle, and any weight update that grows them pushes
#   eigenvalues outside.

# %%
n_fig2 = 32
x0, y0 = np.zeros((1, 4)), np.zeros((1, n_fig2))
rnn_small = theory.rnn_init(4, n_fig2, init_std=0.01, init="normal", seed=0)
rnn_ident = theory.rnn_init(4, n_fig2, init_std=0.01, init="identity", seed=0)
A_small = theory.rnn_step_jacobian(**rnn_small, x=x0, y_prev=y0, layout="paper")[0]
A_ident = theory.rnn_step_jacobian(**rnn_ident, x=x0, y_prev=y0, layout="paper")[0]

fig, ax = plt.subplots(figsize=(9, 7))
# One legend group per initialisation (its discs, then its eigenvalues), the unit circle last.
plots.plot_discs(A_small, ax, color="C0", label="(1) small random init: discs", unit_circle=False,
                 eigenvalue_label="(1) its eigenvalues ×")
plots.plot_discs(A_ident, ax, color="C3", label="(2) identity init: discs", eigenvalue_marker="+",
                 eigenvalue_label="(2) its eigenvalues +")
ax.legend(loc="upper left", framealpha=0.95)
ax.set_title(f"Figure 2: Geršgorin discs of a tanh RNN Jacobian (n = {n_fig2})")
show(fig, "02_figure2_init")
for name, A in [("small random", A_small), ("identity", A_ident)]:
    print(f"{name:13s}: spectral radius {theory.spectral_radius(A):.3f}, "
          f"mean disc radius {theory.gersgorin_discs(A)[1].mean():.3f}, "
          f"Eq. 3 bound γσ_max = {theory.rnn_norm_bound(A):.3f}")

# %% [markdown]
# ## 3. Plain RNN: the radii grow with the init std *and* with the width
#
# A radius is a **sum over a row**: with i.i.d. entries of std $\sigma$ it grows like
# $\sigma\, n \sqrt{2/\pi}$. Larger init std or a wider layer pushes the discs out of
# the unit circle, and the eigenvalues follow (for random matrices the spectral
# radius grows like $\sigma \sqrt n$, more slowly than the discs: Geršgorin is a
# *bound*). This is the paper's point that larger matrices need smaller init std.
# Below: the Jacobian at the origin for two widths and three stds, all six panels on
# the same axes, so that the growth of the discs can be seen from panel to panel (the
# discs that are dots on that scale are shown again in an inset, every inset zoomed
# by the same factor).

# %%
widths_grid = [16, 64] if FAST else [16, 128]
stds_grid = [0.02, 0.08, 0.3]
fig, axes = plt.subplots(len(widths_grid), len(stds_grid), figsize=(5.2 * len(stds_grid), 5.2 * len(widths_grid)))
grid_A = {}
for r, n in enumerate(widths_grid):
    for c, std in enumerate(stds_grid):
        p = theory.rnn_init(1, n, init_std=std, seed=1)
        A = grid_A[r, c] = theory.rnn_step_jacobian(**p, x=np.zeros((1, 1)), y_prev=np.zeros((1, n)), layout="paper")[0]
        ax = plots.plot_discs(A, axes[r, c], color="C0" if std < 1 / n**0.5 else "C3")
        ax.set_title(f"n = {n}, std = {std}\nρ(A) = {theory.spectral_radius(A):.2f}, "
                     f"max r = {theory.gersgorin_discs(A)[1].max():.2f}")
        ax.set(xlabel="Re λ" if r == len(widths_grid) - 1 else "", ylabel="Im λ" if c == 0 else "")
plots.set_common_limits(axes)  # one scale for all six panels: the discs' growth is seen, not read off the ticks
# On that scale the smallest discs are dots: those panels get an inset, all insets on one
# (zoomed) scale of their own.
half = np.ptp(axes[0, 0].get_xlim()) / 2  # the common half-width
extent = {}  # how far from 0 each panel's discs reach
for rc, A in grid_A.items():
    cen, rad = theory.gersgorin_discs(A)
    extent[rc] = float(np.max(np.abs(cen) + rad))
dots = [rc for rc in grid_A if extent[rc] < half / 10]
zoom = 1.25 * max([1.0] + [extent[rc] for rc in dots])
for r, c in dots:
    ins = axes[r, c].inset_axes([0.58, 0.58, 0.4, 0.4])
    plots.plot_discs(grid_A[r, c], ins, color=axes[r, c].patches[0].get_facecolor()[:3])
    ins.set(xlim=(-zoom, zoom), ylim=(-zoom, zoom), xticks=[], yticks=[], xlabel="", ylabel="")
    ins.text(0.04, 0.04, f"zoom ×{half / zoom:.0f}", transform=ins.transAxes, fontsize=12, ha="left", va="bottom",
             bbox=dict(facecolor="white", edgecolor="none", alpha=0.85, pad=1.5))
axes[0, 0].legend(loc="lower left", fontsize=11)
fig.suptitle("tanh RNN at the origin: discs grow with std and width (red: std > 1/√n; all panels on one scale)")
show(fig, "03_rnn_discs_std_width")

# %% [markdown]
# The same as a sweep. Left: the spectral radius $\rho(A)$ (solid, dots), the Eq. 3 bound
# $\gamma\sigma_{\max}$ (dotted) and the Geršgorin bound $\max_i (|a_{ii}| + r_i)$
# (dashed, hollow squares) against the init std; the colour is the width, in both panels.
# Each of the three crosses 1 at a smaller std for a wider layer (for n = 256, in full
# mode, the Geršgorin bound is above 1 already at the smallest std plotted). The bound
# grows like $\sigma n$, the spectral radius like $\sigma\sqrt n$, so the Geršgorin
# bound of n = 16 lies almost on the spectral radius of n = 256 (the squares on the
# dots). Right: every $|\lambda|$ (grey) against the width at a fixed std, the widths of
# the left panel marked in their colours.

# %%
stds = np.geomspace(0.005, 0.5, 9 if FAST else 21)
widths = [16, 64] if FAST else [16, 64, 256]
# Colour = width, in both panels (and no other meaning; colour-blind safe);
# line style and marker = which quantity.
WIDTH_COLORS = {16: "#1b9e77", 64: "#7570b3", 256: "#d95f02"}
fig, axes = plt.subplots(1, 2, figsize=(16, 6.4))
for n in widths:
    rho, sig, ger = [], [], []
    for std in stds:
        A = theory.rnn_init(1, n, init_std=std, seed=2)["R"]  # A = R at the origin
        cen, rad = theory.gersgorin_discs(A)
        rho.append(theory.spectral_radius(A))
        sig.append(theory.rnn_norm_bound(A))
        ger.append(np.max(np.abs(cen) + rad))
    col = WIDTH_COLORS[n]
    axes[0].plot(stds, rho, "-o", color=col, ms=6, zorder=3)
    axes[0].plot(stds, sig, ":", color=col, zorder=3)
    # The Geršgorin bound of a narrow layer can lie on the spectral radius of a wide one
    # (n·σ·√(2/π) against σ·√n): dashed with hollow squares, drawn on top, so both show.
    axes[0].plot(stds, ger, "--s", color=col, ms=10, mfc="none", mew=2, zorder=4)
axes[0].axhline(1.0, color="0.25", lw=1.4, ls="-.", zorder=1)
axes[0].set(xscale="log", yscale="log", xlabel="init std σ of R", ylabel="|λ| or bound",
            title="vanishing → exploding with the std")
width_handles = [matplotlib.lines.Line2D([], [], color=WIDTH_COLORS[n], lw=6, label=f"n = {n}") for n in widths]
kind_handles = [
    matplotlib.lines.Line2D([], [], color="k", ls="-", marker="o", ms=6, label="spectral radius ρ"),
    matplotlib.lines.Line2D([], [], color="k", ls=":", label="Eq. 3 bound γσ_max"),
    matplotlib.lines.Line2D([], [], color="k", ls="--", marker="s", ms=10, mfc="none", mew=2,
                            label="Geršgorin bound"),
]
axes[0].add_artist(axes[0].legend(handles=width_handles, loc="upper left", title="colour: width", fontsize=12))
axes[0].legend(handles=kind_handles, loc="lower right", title="line: quantity", fontsize=12)

sweep_widths = [8, 16, 32, 64, 128] if FAST else [8, 16, 32, 64, 128, 256, 512]
spectra = [theory.spectrum(theory.rnn_init(1, n, init_std=0.05, seed=3)["R"]) for n in sweep_widths]
# Here width is the x-axis: everything in grey and black, the widths of the left panel marked in their colours.
plots.plot_spectrum_sweep(sweep_widths, spectra, axes[1], xlabel="width n", color="0.35",
                          title="σ = 0.05: wider → larger |λ|")
axes[1].plot(sweep_widths, [0.05 * n**0.5 for n in sweep_widths], ":", color="k", lw=2.8, label="σ√n (circular law)")
for n, lam in zip(sweep_widths, spectra):
    if n in widths:
        axes[1].plot([n], [np.abs(lam).max()], "o", ms=13, color=WIDTH_COLORS[n], mec="k", zorder=5,
                     label=f"n = {n} (as on the left)")
axes[1].set_xscale("log", base=2)
axes[1].set_ylim(0, 1.6 * max(1.0, max(np.abs(lam).max() for lam in spectra)))
axes[1].legend(loc="upper left", fontsize=12, framealpha=0.95)
show(fig, "04_rnn_spectrum_sweeps")

# %% [markdown]
# ## 4. The RHN Jacobian: gates move the discs (Eqs. 10–15)
#
# For one micro-layer with input state $y$ (= $y_{t-1}$ for recurrence depth 1), in the
# paper's layout,
#
# $$ A = \mathrm{diag}(c) + H'\,\mathrm{diag}(t) + C'\,\mathrm{diag}(y) + T'\,\mathrm{diag}(h), \qquad
#    H' = R_H\, \mathrm{diag}[\tanh'(a_H)],\; T' = R_T\,\mathrm{diag}[\sigma'(a_T)],\; C' = R_C\,\mathrm{diag}[\sigma'(a_C)] $$
#
# (Eqs. 10–13; the code's $R$ is the paper's $R^\top$ because it multiplies row
# vectors). Disc $i$ is centred at $c_i + H'_{ii} t_i + C'_{ii} y_i + T'_{ii} h_i$.
# The two limits of Eq. 15:
#
# * $c = 1, t = 0$: $A = I$, **every eigenvalue is exactly 1** — the state is carried
#   unchanged, gradients neither vanish nor explode;
# * $c = 0, t = 1$: $A = H'$, the Jacobian of a **plain tanh RNN**.
#
# With coupled gates ($c = 1 - t$, so $C' = -T'$) used in every experiment of the paper,
# $A = \mathrm{diag}(1 - t) + H'\mathrm{diag}(t) + T'\mathrm{diag}(h - y)$. The
# transform-gate bias $b_T$ sets $t = \sigma(\cdot + b_T)$ and slides each disc from 1
# (carry) to the plain-RNN position (transform). Below, the transform bias goes from
# −4 to +4 at fixed input and state, for the authors' init $U(-0.04, 0.04)$ and a
# larger $U(-0.5, 0.5)$.

# %%
n_rhn, n_in_rhn = (16, 8) if FAST else (32, 8)


def input_and_state(n):
    """The fixed input x_t and state y_{t-1} of this section, for a layer of width n."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, n_in_rhn))
    return x, 0.5 * np.tanh(rng.standard_normal((1, n)))


x_rhn, s_rhn = input_and_state(n_rhn)  # one fixed input and state y_{t-1}


BIAS_CMAP = matplotlib.colors.LinearSegmentedColormap.from_list("bias", plt.cm.plasma(np.linspace(0.0, 0.85, 256)))


def rhn_jacobian(bias, scale, coupled=True, depth=1, width=None):
    """Parameters and step Jacobian A = ∂s_t/∂s_{t-1} (paper layout, all `depth` micro-layers)."""
    n = n_rhn if width is None else int(width)
    x, s = (x_rhn, s_rhn) if n == n_rhn else input_and_state(n)
    p = rhn.init_params(n_in_rhn, n, depth, coupled=coupled, init_scale=scale, transform_bias=bias, seed=11, dtype="float64")
    return p, theory.step_jacobian(p, x, s, layout="paper")[0]


biases_grid = [-4.0, -2.0, 0.0, 2.0, 4.0]
scales = [0.04, 0.5]
fig, axes = plt.subplots(2, len(biases_grid), figsize=(4.3 * len(biases_grid), 9.2))
for r, scale in enumerate(scales):
    for c, bias in enumerate(biases_grid):
        _, A = rhn_jacobian(bias, scale)
        plots.plot_discs(A, axes[r, c], color=BIAS_CMAP((bias + 4) / 8))
        axes[r, c].set_title(f"$b_T$ = {bias:+.0f}\nρ = {theory.spectral_radius(A):.2f}", fontsize=15)
        axes[r, c].set_ylabel(f"init U(±{scale})\nIm λ" if c == 0 else "")
    plots.set_common_limits(axes[r])
axes[0, 0].legend(loc="lower left", fontsize=11)
fig.suptitle(f"RHN (L = 1, coupled, n = {n_rhn}): the transform bias slides the discs from 1 (carry) to a tanh RNN")
show(fig, "05_rhn_discs_transform_bias")

# %% [markdown]
# The sweep in finer steps: eigenvalues in the complex plane coloured by the bias
# (left, larger init) and every $|\lambda|$ against the bias for both inits (right).
# At $b_T = -4$ the spectrum is bunched around 1: $A \approx \mathrm{diag}(1 - t)$
# with $1 - \sigma(-4) \approx 0.98$. As $b_T$ grows, the small-init layer (blue)
# follows the carry term $1 - \sigma(b_T)$ down towards 0 (its $H'$ is tiny), while the
# larger init (orange) fans out towards the plain-RNN spectrum, some of it beyond 1.

# %%
biases = np.linspace(-4, 4, 9 if FAST else 33)
fig, axes = plt.subplots(1, 2, figsize=(17, 6.8), gridspec_kw={"width_ratios": [1, 1.2]})
spectra_big = [theory.spectrum(rhn_jacobian(b, 0.5)[1]) for b in biases]
plots.plot_eigenvalue_paths(biases, spectra_big, axes[0], cmap=BIAS_CMAP, colorbar_label="transform bias $b_T$",
                            title="init U(±0.5): eigenvalues vs $b_T$")
axes[0].legend(loc="lower left", fontsize=11)
for k, scale in enumerate(scales):
    spectra_s = [theory.spectrum(rhn_jacobian(b, scale)[1]) for b in biases]
    plots.plot_spectrum_sweep(biases, spectra_s, axes[1], xlabel="transform bias $b_T$", color=f"C{k}", label=f"U(±{scale})")
axes[1].plot(biases, 1 - 1 / (1 + np.exp(-biases)), "k:", label="1 − σ($b_T$)  (carry alone)")
axes[1].set_title("spectrum vs transform bias (L = 1)")
axes[1].legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=12)
show(fig, "06_rhn_spectrum_vs_bias")

# %% [markdown]
# **Eq. 15 numerically.** Saturate the gates: a coupled layer with $b_T = -50$ gives
# $A = I$ exactly; an uncoupled layer with $b_T = +50$, $b_C = -50$ gives the Jacobian
# of the plain tanh RNN with $R = R_H$, $W = W_H$, $b = b_H$ (equal in exact
# arithmetic; the two codes sum in different orders, so they differ by round-off).

# %%
_, A_carry = rhn_jacobian(-50.0, 0.5)
print("c = 1, t = 0:  max |λ - 1| =", np.max(np.abs(theory.spectrum(A_carry) - 1)))
p_unc, _ = rhn_jacobian(0.0, 0.5, coupled=False)
p_unc["b_T"] = np.full_like(p_unc["b_T"], 50.0)
p_unc["b_C"] = np.full_like(p_unc["b_C"], -50.0)
A_open = theory.step_jacobian(p_unc, x_rhn, s_rhn, layout="paper")[0]
A_tanh = theory.rnn_step_jacobian(p_unc["R_H"][0], p_unc["W_H"], p_unc["b_H"][0], x_rhn, s_rhn, layout="paper")[0]
print("c = 0, t = 1:  max |A_RHN - A_tanh-RNN| =", np.max(np.abs(A_open - A_tanh)))
print("               spectral radii:", theory.spectral_radius(A_open), theory.spectral_radius(A_tanh))

# %% [markdown]
# ### Try it: sliders
#
# In Jupyter (a running kernel with `ipywidgets`), the sliders below redraw the discs and
# the eigenvalues of the same step Jacobian $A = \partial s_t/\partial s_{t-1}$
# (coupled gates, all $L$ micro-layers, the fixed input and state of this section) for a
# **transform bias** $b_T$, an **init scale** (every weight $U(\pm\text{scale})$), a
# **width** $n$ and a **recurrence depth** $L$; the figure is redrawn when a slider is
# released. Left: the discs (coloured by $b_T$ as above) with the eigenvalues (×) and
# $|\lambda| = 1$; right: every $|\lambda|$, largest first (log scale), against the
# carry-alone value $(1 - \sigma(b_T))^L$. The start values ($b_T = -2$, $U(\pm 0.5)$,
# $L = 1$, the width of this section) give the panel of the first disc figure of this
# section in row $U(\pm 0.5)$, column $b_T = -2$.
#
# Things to try: $b_T$ from −4 to +4 at scale 0.5 (carry → tanh RNN); a wider layer at
# the same scale (the discs grow, as in section 3); a deeper transition at the authors'
# scale 0.04 (the spectrum contracts like $(1 - \sigma(b_T))^L$, as in section 5), then
# the same at scale 0.5 (it contracts more slowly than the carry alone: the transforms
# add to it) and at a larger width.
#
# The sliders need a live kernel: on the documentation's page they are at most a
# snapshot that does not respond. Without a Jupyter kernel (`python notebooks/theory.py`)
# or without `ipywidgets`, the cell prints a note and draws the start values once.

# %%
SLIDER_WIDTHS = [4, 8, 16, 32, 64, 128]
SLIDER_SCALES = [0.01, 0.02, 0.04, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]


def draw_rhn_step(bias=-2.0, scale=0.5, width=n_rhn, depth=1):
    """Discs and eigenvalues of the RHN step Jacobian for the given settings (one redraw)."""
    _, A = rhn_jacobian(bias, scale, depth=depth, width=width)
    lam = theory.spectrum(A)
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.2), gridspec_kw={"width_ratios": [1.1, 1]})
    plots.plot_discs(A, axes[0], color=BIAS_CMAP((np.clip(bias, -4, 4) + 4) / 8))
    axes[0].set_title("Geršgorin discs and eigenvalues")
    axes[0].legend(loc="upper left", fontsize=11, framealpha=0.9)
    mod = np.maximum(np.sort(np.abs(lam))[::-1], 1e-16)
    carry = (1 - float(rhn.sigmoid(np.float64(bias)))) ** depth
    axes[1].plot(np.arange(1, width + 1), mod, "o-", color="k", ms=5, label="|λ|, largest first")
    axes[1].axhline(1.0, ls="--", color="0.25", lw=1.6, label="|λ| = 1")
    axes[1].axhline(carry, ls=":", color="C3", lw=2.5, label="$(1 - \\sigma(b_T))^L$  (carry alone)")
    axes[1].set(xlabel="eigenvalue (sorted)", ylabel="|λ|", title="eigenvalue moduli (log scale)", yscale="log",
                ylim=(min(mod.min(), carry) / 2, 2 * max(1.0, mod.max())))
    axes[1].legend(loc="lower left", fontsize=11, framealpha=0.9)
    rho = float(theory.spectral_radius(A))
    rho_text = f"{rho:.3f}" if rho >= 1e-3 else f"{rho:.1e}"
    fig.suptitle(f"RHN step Jacobian: $b_T$ = {bias:+.1f}, U(±{scale:g}), n = {width}, L = {depth}:  ρ = {rho_text}")
    return fig


def has_kernel():
    """True in a Jupyter kernel (which can show widgets); False in a plain script or terminal IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def rhn_sliders():
    """The sliders and the figure they redraw (ipywidgets.interactive_output)."""
    import ipywidgets as widgets
    from IPython.display import display

    common = dict(continuous_update=False, style={"description_width": "9em"}, layout=widgets.Layout(width="26em"))
    controls = {
        "bias": widgets.FloatSlider(value=-2.0, min=-6.0, max=4.0, step=0.5, description="transform bias b_T",
                                    readout_format="+.1f", **common),
        "scale": widgets.SelectionSlider(options=SLIDER_SCALES, value=0.5, description="init scale", **common),
        "width": widgets.SelectionSlider(options=SLIDER_WIDTHS, value=n_rhn, description="width n", **common),
        "depth": widgets.IntSlider(value=1, min=1, max=6, description="depth L", **common),
    }
    out = widgets.interactive_output(lambda **kw: show(draw_rhn_step(**kw), "11_rhn_sliders"), controls)
    ui = widgets.VBox([widgets.HBox([controls["bias"], controls["scale"]]),
                       widgets.HBox([controls["width"], controls["depth"]]), out])
    display(ui)
    return ui


try:
    import ipywidgets  # noqa: F401
except ImportError:
    ipywidgets = None
if ipywidgets is not None and has_kernel():
    sliders = rhn_sliders()
else:
    print("Sliders: " + ("ipywidgets is not installed (pip install 'rhn_np[notebooks]')" if ipywidgets is None
                         else "no Jupyter kernel to run them (a plain script)")
          + "; open the notebook in Jupyter to move them. The start values, drawn once:")
    show(draw_rhn_step(), "11_rhn_sliders")

# %% [markdown]
# ## 5. Gradient norm against the time lag, at initialisation
#
# Along a random input sequence, the gradient that reaches step $T - k$ from step $T$
# is multiplied by $\partial s_T / \partial s_{T-k} = J_T J_{T-1} \cdots J_{T-k+1}$.
# Its spectral norm against the lag $k$ (median over the batch, min–max shaded):
#
# * plain tanh RNN with std $0.5/\sqrt n$: vanishes geometrically; with $2/\sqrt n$:
#   grows instead of vanishing (the chaotic regime; in the fast mode's small network it
#   levels off after about ten steps); identity init: slowly grows;
# * RHN (coupled, authors' init $U(\pm 0.04)$): $A \approx \mathrm{diag}(1 - t)$ per
#   micro-layer, so the norm decays like $(1 - \sigma(b_T))^{L k}$ (dotted) — the
#   negative transform bias sets how long gradients survive, and at a given bias a
#   deeper transition (larger $L$) forgets $L$ times faster per time step.

# %%
T_lag, B_lag, n_lag, n_in_lag = (40, 4, 32, 16) if FAST else (120, 8, 64, 16)
rng = np.random.default_rng(0)
xs_lag = rng.standard_normal((T_lag, B_lag, n_in_lag))
z0 = np.zeros((B_lag, n_lag))

rnn_curves, rnn_P = {}, {}
for label, std, init in [
    ("tanh RNN, std 0.5/√n", 0.5 / n_lag**0.5, "normal"),
    ("tanh RNN, std 2/√n", 2.0 / n_lag**0.5, "normal"),
    ("tanh RNN, identity init", 0.01, "identity"),
]:
    p = theory.rnn_init(n_in_lag, n_lag, init_std=std, init=init, seed=1)
    P = theory.jacobians_across_time(theory.rnn_sequence_jacobians(**p, xs=xs_lag, y0=z0), anchor="end")
    rnn_P[label] = P
    rnn_curves[label] = theory.lag_norms(P)

rhn_curves, rhn_P, rhn_pred = {}, {}, {}
for depth, bias in [(1, -2.0), (4, -2.0), (4, -4.0)]:
    label = f"RHN L = {depth}, $b_T$ = {bias:+.0f}"
    p = rhn.init_params(n_in_lag, n_lag, depth, transform_bias=bias, init_scale=0.04, seed=1, dtype="float64")
    P = theory.jacobians_across_time(theory.sequence_jacobians(p, xs_lag, z0), anchor="end")
    rhn_P[label] = P
    rhn_curves[label] = theory.lag_norms(P)
    rhn_pred[label] = (1 - 1 / (1 + np.exp(-bias))) ** (depth * np.arange(1, T_lag + 1))

fig, axes = plt.subplots(1, 2, figsize=(17, 6.2), sharey=True)
plots.plot_norm_vs_lag(rnn_curves, axes[0], title="plain tanh RNN")
plots.plot_norm_vs_lag(rhn_curves, axes[1], title="RHN (coupled, init U(±0.04))", colors=["C3", "C4", "C5"])
for k, pred in enumerate(rhn_pred.values()):
    axes[1].plot(np.arange(1, T_lag + 1), pred, ":", color=["C3", "C4", "C5"][k], lw=2.5)
axes[1].plot([], [], "k:", label="$(1-\\sigma(b_T))^{Lk}$")
axes[1].legend(loc="lower left", fontsize=12)
axes[0].set_ylim(1e-12, 1e4)
fig.suptitle(r"$\|\partial s_T / \partial s_{T-k}\|_2$ at initialisation, along a random input sequence")
show(fig, "07_norm_vs_lag")

# %% [markdown]
# The norm is only the largest singular value. All singular values of
# $\partial s_T/\partial s_{T-k}$ (one sequence; bold: largest and smallest; values below
# $10^{-15}\sigma_{\max}$, the grey dash-dot line, are float64 round-off and are left out) show the
# difference in kind: the plain RNN's directions spread over many orders of magnitude
# (a few grow while most vanish), while at initialisation the RHN shrinks all
# directions together at the rate set by its gates.

# %%
fig, axes = plt.subplots(1, 2, figsize=(17, 6.2), sharey=True)
lbl_rnn, lbl_rhn = "tanh RNN, std 2/√n", "RHN L = 4, $b_T$ = -4"
plots.plot_singular_values_vs_lag(theory.singular_values(rnn_P[lbl_rnn][:, 0]), axes[0], color="C1", title=lbl_rnn)
plots.plot_singular_values_vs_lag(theory.singular_values(rhn_P[lbl_rhn][:, 0]), axes[1], color="C5", title=lbl_rhn)
fig.suptitle(r"all singular values of $\partial s_T / \partial s_{T-k}$ (one sequence)")
show(fig, "08_singular_values_vs_lag")

# %% [markdown]
# ## 6. A caveat about the printed Eq. 14
#
# Right-multiplying by a diagonal matrix scales **columns**, so from Eq. 10 the
# off-diagonal entry of $A$ is
#
# $$ A_{ij} = H'_{ij}\, t_j + C'_{ij}\, y_j + T'_{ij}\, h_j , $$
#
# and the row radius is $r_i = \sum_{j \ne i} |A_{ij}|$. The radius printed as Eq. 14
# indexes the gate values by the row, $\sum_{j\ne i} |H'_{ij} t_i + C'_{ij} y_i + T'_{ij} h_i|$,
# which is not a radius of $A$ (it mixes the row sum of one matrix with the column
# scaling of the other; with $H'_{ji}$, $C'_{ji}$, $T'_{ji}$ in place of $H'_{ij}$,
# $C'_{ij}$, $T'_{ij}$ it would be the correct *column* radius). The two agree when
# $t$, $h$ and $y$ are each uniform across units (for a coupled layer, where
# $C' = -T'$, uniform $t$ and $h - y$ suffice); otherwise they generally differ.
# `theory.eq14_printed_radii` computes the printed expression; `theory.gersgorin_discs`
# computes radii from the actual matrix.

# %%
rng = np.random.default_rng(0)
p14 = rhn.init_params(3, 8, 1, coupled=False, init_scale=1.0, transform_bias=0.0, seed=0, dtype="float64")
x14, s14 = rng.standard_normal((16, 3)), np.tanh(rng.standard_normal((16, 8)))
A14 = theory.step_jacobian(p14, x14, s14, layout="paper")
_, r_actual = theory.gersgorin_discs(A14, "rows")
r_printed = theory.eq14_printed_radii(p14, x14, s14)
print("batch row 0, actual radii :", r_actual[0])
print("batch row 0, printed radii:", r_printed[0])
print(f"largest |printed − actual| over 16 states × 8 units: {np.max(np.abs(r_printed - r_actual)):.3f}")

# %% [markdown]
# Can the printed discs miss an eigenvalue? Search random coupled layers with
# per-unit transform biases (units that carry next to units that transform) for one
# where an eigenvalue lies outside the union of the printed discs:

# %%
def printed_discs_miss(seed, n=4):
    rng = np.random.default_rng(seed)
    p = rhn.init_params(2, n, 1, coupled=True, init_scale=2.0, seed=seed, dtype="float64")
    p["b_T"] = rng.uniform(-6, 6, (1, n))  # mixed gates: some units carry, some transform
    x, s = np.zeros((1, 2)), np.tanh(2 * rng.standard_normal((1, n)))
    A = theory.step_jacobian(p, x, s, layout="paper")
    centres, _ = theory.gersgorin_discs(A)
    lam = theory.spectrum(A)
    miss = not np.all(theory.in_union(lam, centres, theory.eq14_printed_radii(p, x, s)))
    return miss, A[0], p, x, s


seed_miss = next(s for s in range(10_000) if printed_discs_miss(s)[0])
_, A_miss, p_miss, x_miss, s_miss = printed_discs_miss(seed_miss)
print("first seed where the printed discs miss an eigenvalue:", seed_miss)
print("eigenvalues:", theory.spectrum(A_miss))
print("still inside the actual row discs:", theory.eigenvalues_in_union(A_miss, "rows"),
      "| actual column discs:", theory.eigenvalues_in_union(A_miss, "columns"))

fig, axes = plt.subplots(1, 2, figsize=(15, 6.5))
plots.plot_discs(A_miss, axes[0], color="C0", label="actual row discs", unit_circle=False,
                 title="radii from the matrix")
plots.plot_discs(A_miss, axes[1], color="C3", label="printed Eq. 14 discs", unit_circle=False,
                 radii=theory.eq14_printed_radii(p_miss, x_miss, s_miss)[0], title="radii as printed (Eq. 14)")
lam_miss = theory.spectrum(A_miss)
c_miss, _ = theory.gersgorin_discs(A_miss)
outside = ~theory.in_union(lam_miss, c_miss, theory.eq14_printed_radii(p_miss, x_miss, s_miss)[0])
axes[1].plot(lam_miss.real[outside], lam_miss.imag[outside], "o", ms=22, mfc="none", mec="C3", mew=2.5,
             label="missed eigenvalue", zorder=7)
z = lam_miss[outside][0]
axes[1].annotate("outside every\nprinted disc", (z.real, z.imag), xytext=(z.real - 0.4, z.imag + 0.9), fontsize=15,
                 color="C3", arrowprops=dict(arrowstyle="->", color="C3", lw=2))
plots.set_common_limits(axes)
for ax in axes:
    ax.legend(loc="upper left")
fig.suptitle(f"Eq. 14 caveat: the printed discs can miss an eigenvalue (seed {seed_miss})")
show(fig, "09_eq14_caveat")

# %% [markdown]
# ## 7. The paper's baselines: deep-transition RNNs
#
# The optimisation experiment (§5.1, Fig. 4) compares the RHN with the deep-transition
# RNNs of Pascanu et al. (2013): the DT-RNN puts $L$ tanh layers between $s_{t-1}$ and
# $s_t$, $z_\ell = \tanh([\ell{=}1]\,x_t W + z_{\ell-1} R_\ell + b_\ell)$ with
# $z_0 = s_{t-1}$, $s_t = z_L$ (`rhn_np.dtrnn`); the DT(S)-RNN adds a shortcut
# $s_{t-1} U$ into the last layer. Its step Jacobian is the product of $L$ plain-RNN
# Jacobians (Eq. 2), one per layer, so its discs shrink or grow geometrically with the
# depth. `theory.step_jacobian` takes either cell (it runs the cell's own backward).
#
# Below, all three cells at depths 1, 2 and 4 on the same input and state, every
# weight $U(\pm\sqrt{3/n})$ (standard deviation $1/\sqrt{n}$, the edge between
# vanishing and exploding for one tanh layer), the RHN with $b_T = -2$.

# %%
scale_dt = float(np.sqrt(3.0 / n_rhn))
makers = {
    "DT-RNN": lambda L: dtrnn.init_params(n_in_rhn, n_rhn, L, init_scale=scale_dt, seed=11, dtype="float64"),
    "DT(S)-RNN": lambda L: dtrnn.init_params(n_in_rhn, n_rhn, L, shortcut=True, init_scale=scale_dt, seed=11,
                                             dtype="float64"),
    "RHN": lambda L: rhn.init_params(n_in_rhn, n_rhn, L, init_scale=scale_dt, transform_bias=-2.0, seed=11,
                                     dtype="float64"),
}
depths_dt = [1, 2, 4]
fig, axes = plt.subplots(len(makers), len(depths_dt), figsize=(4.6 * len(depths_dt), 4.6 * len(makers)))
radii_dt = {}
for r, (name, make) in enumerate(makers.items()):
    for c, L in enumerate(depths_dt):
        A = theory.step_jacobian(make(L), x_rhn, s_rhn, layout="paper")[0]
        radii_dt[name, L] = float(theory.spectral_radius(A))
        plots.plot_discs(A, axes[r, c], color=f"C{r}")
        axes[r, c].set_title(f"{name}, L = {L}\nρ = {radii_dt[name, L]:.2f}", fontsize=15)
plots.set_common_limits(axes)
fig.suptitle(f"Step Jacobians of the three cells at init (n = {n_rhn}, weights U(±{scale_dt:.2f}))")
show(fig, "10_deep_transition_discs")
for name in makers:
    print(f"{name:10s} spectral radius at L = 1, 2, 4:", ", ".join(f"{radii_dt[name, L]:.3f}" for L in depths_dt))

# %% [markdown]
# Read by rows (the crosses are the eigenvalues, the dashed circle is $|\lambda| = 1$).
# The DT-RNN's discs are wide — a row of a dense random matrix sums $n$ absolute values —
# while its eigenvalues sit inside the unit circle and contract with the depth: each
# extra tanh layer multiplies the step's Jacobian by another $\mathrm{diag}(\tanh')R$,
# so one *time step* already attenuates more at larger $L$, and BPTT multiplies such
# steps. The shortcut adds a path of depth 1 from $s_{t-1}$ to $s_t$: the DT(S)-RNN's
# spectrum does not contract with $L$, and at this init it reaches beyond 1 (a step can
# amplify). The RHN's discs are small and centred near the carry value
# $1 - \sigma(-2) \approx 0.88$: the gates make its Jacobian nearly diagonal, so here the
# discs say much. Its micro-layers multiply too — its spectral radius falls from $L = 1$
# to $L = 4$ (printed above) — which a more negative transform bias undoes (the
# authors use $-4$ for their depth-10 character models); a DT-RNN has no such knob.

# %% [markdown]
# ## Summary
#
# * Geršgorin discs locate the eigenvalues of a recurrent Jacobian: centres are the
#   self-connections, radii the sums of cross-connections.
# * Plain tanh RNN: the radii are set once by the init (std and width); the network
#   cannot change them quickly — small init vanishes, large init explodes, identity
#   init sits on the edge.
# * RHN: the carry and transform gates move each disc, per unit and per step, between
#   $\lambda = 1$ (carry) and the plain-RNN position (transform). A negative transform
#   bias starts the layer near the identity, so gradients survive many steps;
#   its value (and the recurrence depth $L$) sets how fast they decay.
# * Compute radii from the matrix: the printed Eq. 14 indexes the gates by the row.
# * Deep-transition RNNs multiply one plain-RNN Jacobian per layer: without gates or a
#   shortcut the spectrum of one step shrinks with the depth.
