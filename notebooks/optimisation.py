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
# # The optimisation experiment: are deep transitions harder to train?
#
# *Recurrent Highway Networks* (Zilly et al., ICML 2017), §5.1 (Fig. 4) and §6.
#
# The paper's empirical claim: a deep-transition RNN (DT-RNN, an MLP of $L$ tanh layers
# between $s_{t-1}$ and $s_t$; Pascanu et al. 2013) and its variant with a shortcut,
# DT(S)-RNN, become much harder to *optimise* as the recurrence depth $L$ grows, while an
# RHN of the same depth and the same number of parameters does not. The evidence is a
# random search over SGD hyper-parameters for each cell and depth (1, 2, 4, 6) on JSB
# Chorales, with one point per trial (its best validation NLL) in a swarm plot.
#
# This notebook
#
# 1. states the experiment as a **sweep** (`rhn_np.sweep`): arms, search space, budget;
# 2. runs a tiny one on a local Dask cluster (fast mode) — or reads a finished one;
# 3. reads the CPU-default run recorded with this package (`docs/results/fig4`): the
#    swarm plot, the medians, and *why* the deep baselines fail (learning rate against
#    NLL);
# 4. trains a depth-6 RHN on JSB and repeats §6's analysis: (a) the transform-gate
#    activity of each micro-layer along four chorales, (b) lesioning each micro-layer;
# 5. compares the Geršgorin discs of a trained DT-RNN's step Jacobian with a trained
#    RHN's.
#
# The same sweep from the command line: `rhn-np sweep run fig4 --work-dir DIR`
# (`--trials`, `--depths`, `--cells`, `--epochs` make it smaller or larger), then
# `rhn-np sweep plot DIR`. `docs/experiments.md` has the recorded run and its verdict.
#
# *Modes:* `RHN_FAST=1` runs a tiny sweep (about a minute on 2 cores) and trains the
# analysis models for a few epochs. Without it, the notebook reads the sweep folder
# named by `RHN_SWEEP_DIR`, or else runs the CPU default (hours), and trains the analysis
# models fully. `RHN_FIGDIR=some/folder` saves every figure as a PNG.

# %%
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small matrices: one BLAS thread each

import pathlib  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rhn_np import data, lm, plots, sweep, tasks, theory, train  # noqa: E402

FAST = os.environ.get("RHN_FAST", "0") not in ("", "0")
warnings.filterwarnings("ignore", message="IProgress not found")
np.set_printoptions(precision=3, suppress=True)
show = plots.show
DATA_DIR = os.environ.get("RHN_DATA_DIR")  # a folder holding jsb_chorales/, else the download cache


def repo_file(*parts):
    """A file of this repository (the notebook runs from notebooks/ or from docs/notebooks/)."""
    here = pathlib.Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").exists() and (folder / "rhn_np").is_dir():
            return folder.joinpath(*parts)
    return None


print("fast mode" if FAST else "full mode")

# %% [markdown]
# ## 1. The experiment as a sweep
#
# A sweep is a grid of **arms** (here cell × depth), a **search space** (fixed values,
# choices, uniform and log-uniform ranges) and a number of **trials** per arm. Trial $k$
# of an arm draws its hyper-parameters from a generator seeded by the sweep's seed, the
# arm and $k$ only: the same command always means the same trials. Each trial is an
# ordinary training run with early stopping on validation; it ends as one line of
# `results.jsonl`.
#
# The paper gives neither sizes, nor ranges, nor budgets ("a random search over SGD
# hyper-parameters"); the ones below are **ours**. Parameter counts are equal across
# the three cells at each depth and grow with depth (25k, 40k, 70k, 100k): each cell's
# width is the one whose model is closest to the budget.

# %%
spec = sweep.builtin("fig4")
print(sweep.spec_to_toml(spec))
ds = data.load("jsb", root=DATA_DIR)
for depth in spec.arms["depth"]:
    row = []
    for t in sweep.trials(sweep.builtin("fig4", trials=1, depths=[depth])):
        cfg = tasks.resolve_width(sweep.trial_config(t), ds)
        row.append(f"{t['settings']['cell']} {cfg.hidden} units = {tasks.count_params(cfg, ds):,}")
    print(f"depth {depth}: " + ";  ".join(row))

# %% [markdown]
# One reference point for reading NLLs on JSB: a model that has learnt only how often
# each key sounds (an independent Bernoulli per key with the training frequencies, no
# context) scores the NLL below on the validation split. A trial that ends there has
# learnt nothing from the music's history; 88 ln 2 ≈ 61 is guessing every key with
# probability ½, where a model that has not learnt at all sits.

# %%
train_frames = np.concatenate(ds.train).astype(np.float64)
valid_frames = np.concatenate(ds.valid).astype(np.float64)
freq = train_frames.mean(axis=0).clip(1e-6, 1 - 1e-6)
frequency_nll = float(-(valid_frames * np.log(freq) + (1 - valid_frames) * np.log(1 - freq)).sum(axis=1).mean())
print(f"key-frequency model: {frequency_nll:.3f} nats per time step on the validation split; "
      f"guessing: {88 * np.log(2):.1f}")

# %% [markdown]
# ## 2. A sweep on a local Dask cluster
#
# `workers=2` starts a Dask `LocalCluster` of two single-threaded worker processes (the
# 2-core default); each loads the data itself and trains one trial at a time. Running
# the same call again skips the finished trials, so a killed run loses nothing but the
# trials in flight, and those resume from their last checkpoint. In fast mode the sweep
# is tiny: two trials per arm at depths 1 and 6, three epochs each.

# %%
given = os.environ.get("RHN_SWEEP_DIR")
if FAST:
    run_spec = sweep.builtin("fig4", trials=2, depths=[1, 6], epochs=3)
    run_dir = tempfile.mkdtemp(prefix="rhn-sweep-")
elif given:
    run_spec, run_dir = sweep.spec_of(given), given
else:
    run_spec, run_dir = spec, os.path.join("rhn-runs", "fig4-sweep")
# In a notebook kernel: a LocalCluster of two workers. Run as a plain script, this file has
# no `if __name__ == "__main__":` guard, so the workers Dask spawns would run it again: the
# trials then run one by one in this process (workers=0), with the same results.
WORKERS = 0 if "__file__" in globals() else 2
records = sweep.run_sweep(run_spec, run_dir, workers=WORKERS, data_dir=DATA_DIR, progress=False)
print(sweep.format_table(sweep.summary_table(records, run_spec)))

# %%
path = sweep.plot_swarm(run_dir)
img = plt.imread(path)
fig, ax = plt.subplots(figsize=(9, 5.5))
ax.imshow(img)
ax.set_axis_off()
show(fig, "optimisation-01-this-sweep")

# %% [markdown]
# The tiny sweep shows the mechanics, not the finding: three epochs are too few for any
# cell to get far below the 11-12 nats of a model that has learnt only which keys are
# common. The finding needs the full budget, below.

# %% [markdown]
# ## 3. Reading the CPU-default run
#
# `docs/results/fig4/` holds a run of the default `fig4` sweep on a 2-core CPU
# (`results.jsonl`: one record per trial; `sweep.json`: the spec). Each point of the
# swarm plot is one trial's best validation NLL per time step (nats, summed over the 88
# keys; lower is better). Crosses on the dashed ceiling are trials that diverged (the
# loss became NaN or infinite); triangles there are trials worse than the ceiling.
#
# How to read it, as the paper does: look at the **bulk** of each arm, not its best
# point. A random search that lands in the good region only rarely means a model that is
# hard to optimise, even when its best trial is good.

# %%
recorded = repo_file("docs", "results", "fig4")
if recorded is not None and (recorded / "results.jsonl").exists():
    rec_spec = sweep.spec_of(recorded)
    rec = sweep.read_results(recorded)
    rows = sweep.summary_table(rec, rec_spec)
    print(f"{len(rec)} trials recorded")
    print(sweep.format_table(rows))
else:  # an installed package without the repository: the run of section 2
    recorded, rec_spec, rec = pathlib.Path(run_dir), run_spec, records
    rows = sweep.summary_table(rec, rec_spec)
    print("no recorded run here; reading the sweep of section 2")

fig, ax = plt.subplots(figsize=(9, 5.5))
ax.imshow(plt.imread(sweep.plot_swarm(records=rec, spec=rec_spec, path=os.path.join(tempfile.mkdtemp(), "s.png"))))
ax.set_axis_off()
show(fig, "optimisation-02-recorded-swarm")

# %% [markdown]
# The medians per arm against depth make the trend explicit, and the fraction of
# trials that reached a good NLL (within 0.5 nats of the best trial of the whole sweep)
# says how often the search found the good region.

# %%
cells_ = [c for c in rec_spec.arms["cell"]]
depths = rec_spec.arms["depth"]
ok = [r for r in rec if r["status"] == "ok" and r.get("valid_nll") is not None]
best_all = min(r["valid_nll"] for r in ok)
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
for i, cell in enumerate(cells_):
    med = [next((row["median_valid_nll"] for row in rows if row["cell"] == cell and row["depth"] == d), np.nan)
           for d in depths]
    good = []
    for d in depths:
        rs = [r for r in rec if r["cell"] == cell and r["depth"] == d]
        good.append(np.mean([r["status"] == "ok" and r["valid_nll"] is not None and r["valid_nll"] < best_all + 0.5
                             for r in rs]) if rs else np.nan)
    axes[0].plot(depths, [np.nan if v is None else v for v in med], "o-", color=f"C{i}", label=cell)
    axes[1].plot(depths, good, "o-", color=f"C{i}", label=cell)
axes[0].axhline(frequency_nll, color="0.5", ls=":", lw=1.2, label="key-frequency model")
axes[0].set(xlabel="recurrence depth", ylabel="median best validation NLL", xticks=depths,
            title="median of each arm")
axes[1].set(xlabel="recurrence depth", ylabel="fraction of trials", xticks=depths, ylim=(-0.02, 1.02),
            title=f"trials within 0.5 nats of the best ({best_all:.2f})")
for a in axes:
    a.grid(alpha=0.3)
    a.legend(frameon=False)
fig.tight_layout()
show(fig, "optimisation-03-medians")

# %% [markdown]
# Why do trials fail? The learning rate is the hyper-parameter that matters most in a
# random SGD search. Below: each trial's best validation NLL against its learning rate,
# at the smallest and the largest depth, with the key-frequency model as a dotted line.
# A cell whose good trials span a wide band of learning rates is easy to optimise; one
# whose trials end on the dotted line at every learning rate is not.

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
ceiling = sweep.ceiling_of(rec, rec_spec)
for ax, d in zip(axes, (min(depths), max(depths))):
    for i, cell in enumerate(cells_):
        rs = [r for r in rec if r["cell"] == cell and r["depth"] == d]
        lr = np.array([r["lr"] for r in rs])
        y = np.array([min(r["valid_nll"], ceiling) if r["status"] == "ok" and r["valid_nll"] is not None else ceiling
                      for r in rs])
        bad = np.array([r["status"] != "ok" for r in rs])
        ax.scatter(lr[~bad], y[~bad], color=f"C{i}", s=18, label=cell)
        ax.scatter(lr[bad], y[bad], color=f"C{i}", marker="x", s=24)
    ax.set(xscale="log", xlabel="learning rate", title=f"depth {d}")
    ax.axhline(ceiling, color="0.6", ls="--", lw=0.8)
    ax.axhline(frequency_nll, color="0.5", ls=":", lw=1.2)
    ax.grid(alpha=0.3)
axes[0].set_ylabel("best validation NLL (ceiling: diverged / worse)")
axes[0].legend(frameon=False)
fig.tight_layout()
show(fig, "optimisation-04-lr")

# %% [markdown]
# ## 4. Inside a trained depth-6 RHN (§6)
#
# §6 of the paper looks inside the depth-6 RHN trained on JSB: (a) the mean
# transform-gate activity $t^{[\ell]}$ of each micro-layer along time for a few
# sequences, and (b) *lesioning*: after training, force one micro-layer to carry (its
# transform-gate bias $b_T[\ell]$ set to a large negative value, so $t^{[\ell]}\approx 0$
# and the layer passes its input through unchanged) and measure the loss on the
# training set.
#
# We train a depth-6 RHN and, for section 5, a depth-6 DT-RNN on JSB with the package's
# `jsb` recipe (Adam; our choice, the paper gives none) at the 100k-parameter budget of
# the sweep's depth-6 arms.

# %%
epochs = 3 if FAST else 40
models = {}
for cell in ("rhn", "dt_rnn"):
    cfg = train.config_from_preset("jsb", cell=cell, depth=6, params=100_000, epochs=epochs, data_dir=DATA_DIR)
    work = tempfile.mkdtemp(prefix=f"rhn-{cell}-")
    trainer = train.Trainer(cfg, work, ds=ds, progress=False, out=lambda m: None)
    summary = trainer.run()
    params, cfg, _ = train.load_run(work, "best")
    models[cell] = params
    print(f"{cell}: {trainer.cfg.hidden} units, {trainer.n_params:,} parameters, {epochs} epochs: best validation "
          f"NLL {summary['best_valid_nll']:.3f}")

# %% [markdown]
# ### (a) Transform-gate activity along four chorales
#
# The gates are read off the forward pass's cache (`lm.layer_cache(cache)["t"]`, shape
# $(L, T, B, n)$), averaged over the units: one value per micro-layer and time step.

# %%
rhn_params = models["rhn"]
chorales = [ds.test[i] for i in range(4)]


def gate_activity(p, roll):
    """Mean transform gate over the units: (L, T) for one piano roll (T, 88)."""
    x = roll.astype(p["W_out"].dtype)[:, None, :]
    _, _, cache = lm.dense_forward(p, x, lm.zero_state(p, 1))
    return np.asarray(lm.layer_cache(cache)["t"])[:, :, 0, :].mean(axis=-1)  # "t": (L, T, B, n)


acts = [gate_activity(rhn_params, c) for c in chorales]
vmax = max(a.max() for a in acts)
fig, axes = plt.subplots(4, 1, figsize=(11, 10), layout="constrained")
for k, (ax, a) in enumerate(zip(axes, acts)):
    im = ax.imshow(a, aspect="auto", cmap="magma", vmin=0, vmax=vmax, interpolation="nearest",
                   extent=(-0.5, a.shape[1] - 0.5, a.shape[0] + 0.5, 0.5))
    ax.set(ylabel="micro-layer ℓ", yticks=range(1, a.shape[0] + 1), title=f"test chorale {k}")
axes[-1].set_xlabel("time step (quarter note)")
fig.colorbar(im, ax=axes, pad=0.01, aspect=30).set_label("mean transform gate $t$")
fig.suptitle("Transform-gate activity per micro-layer along four chorales (depth-6 RHN)")
show(fig, "optimisation-05-gates")
print("mean gate per micro-layer over the four chorales:", np.mean([a.mean(axis=1) for a in acts], axis=0))

# %% [markdown]
# ### (b) Lesioning each micro-layer
#
# Lesioning layer $\ell$ sets $b_T[\ell] = -30$ in a copy of the parameters
# ($\sigma(-30)\approx 10^{-13}$): the layer only carries. The bars are the increase of
# the NLL per time step on the **training** set.

# %%
def lesioned(p, layer, bias=-30.0):
    q = {k: v.copy() for k, v in p.items()}
    q["b_T"][layer] = bias
    return q


intact = tasks.evaluate_sequences(rhn_params, ds.train)["nll"]
depth = rhn_params["b_T"].shape[0]
loss = np.array([tasks.evaluate_sequences(lesioned(rhn_params, l), ds.train)["nll"] for l in range(depth)])
for l, v in enumerate(loss):
    print(f"micro-layer {l + 1} lesioned: training NLL {v:.3f} (+{v - intact:.3f})")
fig, ax = plt.subplots(figsize=(7, 4))
ax.bar(range(1, depth + 1), loss - intact, color="C3", width=0.6)
ax.set(xlabel="lesioned micro-layer ℓ  ($b_T[\\ell] = -30$)", ylabel="increase in training NLL",
       title=f"Lesioning (intact model: {intact:.3f} nats per time step)", xticks=range(1, depth + 1))
ax.grid(axis="y", alpha=0.3)
fig.tight_layout()
show(fig, "optimisation-06-lesioning")

# %% [markdown]
# ## 5. Geršgorin discs: a trained DT-RNN against a trained RHN
#
# The step Jacobian $\partial s_t / \partial s_{t-1}$ of each trained model, at one time
# step in the middle of a test chorale (`theory.step_jacobian`, the same function for
# both cells), with its Geršgorin discs (Eq. 4) and eigenvalues. The DT-RNN's Jacobian is
# a product of $L$ factors $\mathrm{diag}(1 - z_\ell^2)\,R_\ell^\top$: each tanh
# derivative is at most 1, so with depth the product tends to shrink (or, with large
# weights, to blow up). The RHN's carry path keeps a diagonal near $1 - t$ that the
# gates control.

# %%
roll = chorales[0]
T_mid = roll.shape[0] // 2
fig, axes = plt.subplots(2, 2, figsize=(12, 12))
for col, (cell, p) in enumerate(models.items()):
    layer = lm.layer_params(p, 1)
    x = roll.astype(p["W_out"].dtype)[:, None, :]
    ys, _, _ = lm.layers_forward(p, x, lm.zero_state(p, 1))
    J = theory.step_jacobian(layer, x[T_mid], ys[T_mid - 1])[0]
    centres, radii = theory.gersgorin_discs(J)
    rho = theory.spectral_radius(J)
    plots.plot_discs(J, ax=axes[0, col], title=f"trained {cell}, depth 6: spectral radius {float(rho):.2f}")
    plots.plot_discs(J, ax=axes[1, col], title=f"{cell}: the same, near the unit circle")
    axes[1, col].set_adjustable("box")  # the zoom keeps its limits (equal aspect by the box, not the data)
    axes[1, col].set(xlim=(-1.6, 1.6), ylim=(-1.6, 1.6))
    print(f"{cell}: centres in [{float(centres.min()):.2f}, {float(centres.max()):.2f}], "
          f"largest radius {float(radii.max()):.2f}, spectral radius {float(rho):.3f}")
plots.set_common_limits(axes[0])
fig.tight_layout()
show(fig, "optimisation-07-discs")

# %% [markdown]
# ## What this shows
#
# Read with the recorded run (`docs/results/fig4`, 240 trials; `docs/experiments.md`
# has the table and the verdict) and, for sections 4 and 5, with the models trained in
# full mode (40 epochs of the `jsb` recipe); in fast mode the models are barely trained
# and their figures show the method only.
#
# * **The swarm plot and the medians.** At depth 1 the three cells are alike (medians
#   9.8, 9.7, 10.2 nats). With depth the DT-RNN's and DT(S)-RNN's medians rise to the
#   key-frequency plateau (about 11.0 at depths 4 and 6) while the RHN's stay between 9.8
#   and 10.4, and the RHN's best trial improves with depth (8.73 at depth 1, 8.50 at
#   depth 6) while the baselines' best do not (8.94 to 9.03; 9.14 to 9.13). The share of
#   trials within 0.5 nats of the sweep's best is 0.35 for the RHN at depths 4 and 6 and
#   0 for both baselines from depth 2 on: the paper's finding, at this scale.
# * **The learning-rate panel.** At depth 6, 10 of the 14 RHN trials with learning rates
#   from 0.01 to 0.3 get below 10 nats; of the DT-RNN's 8 and the DT(S)-RNN's 9 trials in
#   that range, one each does, and the rest end on the key-frequency line (or diverge):
#   with SGD, their gradients through six tanh layers per step rarely get the recurrence
#   trained within the budget. Below 0.01, few trials of any cell get far in 20 epochs.
# * **Gates (full mode).** Every micro-layer's mean transform gate varies along each
#   chorale; micro-layers 1, 5 and 6 are the most open (about 0.5), layer 2 the least
#   (about 0.36). None is shut, as the paper observes.
# * **Lesioning (full mode).** Removing any micro-layer raises the training NLL; layer 1
#   by far the most (+4.6 nats per time step, against +0.6 to +1.8 for the others), as in
#   the paper.
# * **Discs (full mode).** The trained RHN's step Jacobian has centres up to 1.0 (the
#   carry path) and a spectral radius of 0.996; the trained DT-RNN's centres stay within
#   ±0.3 and its spectral radius is 0.76. The discs of both are wide (radii up to 18-20:
#   a row sums the magnitudes of 80-115 entries), so at trained weights Geršgorin's bound
#   says little and the eigenvalues say more.
# * With Adam and the `jsb` recipe, a depth-6 DT-RNN trains as well as the RHN (8.53
#   against 8.90 validation NLL in one run each): the difficulty the sweep measures is
#   that of finding SGD settings that work, which is what the paper claims, not a limit
#   of what a DT-RNN can represent.
