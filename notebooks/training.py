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
# # Training a character-level RHN
#
# *Recurrent Highway Networks* (Zilly et al., ICML 2017), §5.2.2 and §6 — a walkthrough.
#
# This notebook trains a small character-level RHN language model on an English corpus
# and then looks inside it the way §6 of the paper does:
#
# 1. load the data and train with the package's `Trainer` (the authors' training step:
#    truncated BPTT, gradient clipping, evaluation in bits per character);
# 2. draw the learning curve and sample text from the model;
# 3. **transform-gate activity** per micro-layer (the paper's Figure 5a): which layers
#    transform, and which only carry, character by character;
# 4. **lesioning** (Figure 5b): switch one micro-layer off and see how much worse the
#    model predicts.
#
# The same run from the command line is `rhn-np train` (the `demo` preset; options such
# as `--depth`, `--hidden`, `--max-steps`, `--work-dir` override it), followed by
# `rhn-np sample` and `rhn-np evaluate` on its work folder.
#
# *Fast mode:* `RHN_FAST=1` trains a tiny model for a few hundred steps (well under a
# minute on 2 CPU cores); the model is then barely trained, and the numbers printed
# below say so. Without it the notebook trains the `demo` preset (a few minutes).
# `RHN_FIGDIR=some/folder` also saves every figure as a PNG.

# %%
import os

# The matrices here are small: one BLAS thread is as fast as several, and OpenBLAS
# threads that spin-wait slow down many times over when other programs share the CPU.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import re  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rhn_np import data, lm, plots, rhn, train  # noqa: E402

FAST = os.environ.get("RHN_FAST", "0") not in ("", "0")
# The trainer imports tqdm.auto, which warns in a kernel without ipywidgets; we train with progress=False.
warnings.filterwarnings("ignore", message="IProgress not found")
np.set_printoptions(precision=3, suppress=True)


show = plots.show  # display, and save as <RHN_FIGDIR>/<name>.png when that is set


print("fast mode" if FAST else "full mode")

# %% [markdown]
# ## 1. The data: Python's own docstrings
#
# The paper's character-level results are on enwik8 and text8 (100 M characters each,
# §5.2.2). Those are large downloads, so this notebook uses `pydoc`: English text built
# from the docstrings of the Python standard library installed on this machine (no
# download; it is built once and cached). It is split by position into train / valid /
# test, like enwik8.
#
# A character model predicts the next *character* from all the previous ones. Its loss
# is reported in **bits per character (BPC)**: the mean negative log-likelihood of the
# next character in nats, divided by $\ln 2$. Two reference points: guessing uniformly
# among the $V$ symbols costs $\log_2 V$ bits; knowing only how often each character
# occurs (a unigram model, no context at all) costs the entropy of those frequencies.
# Anything below that second number has been learned from context.

# %%
ds = data.load("pydoc")
print(ds)
print(f"vocabulary ({ds.vocab_size} symbols):", repr("".join(ds.vocab)))

counts = np.bincount(ds.train, minlength=ds.vocab_size)
freq = counts[counts > 0] / counts.sum()
uniform_bpc = np.log2(ds.vocab_size)
unigram_bpc = float(-(freq * np.log2(freq)).sum())
print(f"uniform guess: {uniform_bpc:.2f} BPC; unigram (character frequencies only): {unigram_bpc:.2f} BPC")
print("\nthe first 300 characters of the validation split:\n")
print(ds.decode(ds.valid[:300]))

# %% [markdown]
# ## 2. Configure and train
#
# `train.config_from_preset("demo", ...)` gives the `demo` preset with some fields
# overridden. The model is the one of the paper's character experiments, only much
# smaller: an embedding as wide as the vocabulary, **one** RHN layer of recurrence depth
# $L$ (micro-layers $\ell = 1..L$ inside each time step, Eqs. 6-9), coupled carry gate
# $c = 1 - t$, transform-gate bias initialised to $b_T = -2$ (so every layer starts
# mostly carrying, §4), and a softmax over the next character. The demo trains with
# Adam and no dropout (the paper: SGD with variational dropout, on far more data).
#
# Each training step takes one window of `batch_size` rows × `bptt` characters,
# back-propagates through those `bptt` steps (truncated BPTT) and carries the state
# into the next window. Every `eval_every` steps the trainer scores the whole
# validation split with dropout off, appends the numbers to `metrics.jsonl`, and saves
# `checkpoint.npz` and (when validation improved) `best.npz` in the work folder.

# %%
if FAST:
    cfg = train.config_from_preset("demo", depth=3, hidden=64, max_steps=300, eval_every=50)
else:
    cfg = train.config_from_preset("demo", eval_every=250)  # depth 3, 128 units, 4000 steps
# A scratch folder that is deleted when the kernel stops; give a folder of your own to keep the run.
run_folder = tempfile.TemporaryDirectory(prefix="rhn-training-")
work_dir = run_folder.name
print(cfg)
print("work folder:", work_dir)

# %%
trainer = train.Trainer(cfg, work_dir, ds=ds, progress=False, out=print)
summary = trainer.run()
print(f"\n{summary['steps']} steps in {summary['seconds']:.1f} s "
      f"({summary['tokens_per_s']:,.0f} characters/s)")
print("work folder now holds:", sorted(os.listdir(work_dir)))

# %% [markdown]
# ## 3. The learning curve
#
# `train.read_metrics(work_dir)` returns the records of `metrics.jsonl`. A `train`
# record is the mean loss over the training windows since the previous evaluation; a
# `valid` record scores the whole validation split. (The trainer also drew this plot
# itself, as `learning_curve.png` in the work folder.)

# %%
plots.use_slide_style()  # large fonts for our figures (set after training: the trainer draws its own plot)
records = train.read_metrics(work_dir)
fig, ax = plt.subplots(figsize=(10, 5.5))
for split, style in (("train", "-"), ("valid", "o-")):
    pts = [(r["step"], r["bpc"]) for r in records if r["split"] == split]
    ax.plot(*zip(*pts), style, label=f"{split} (mean since the last evaluation)" if split == "train" else split)
ax.axhline(unigram_bpc, color="0.4", ls="--", lw=1.5, label=f"unigram baseline ({unigram_bpc:.2f})")
ax.set(xlabel="training step", ylabel="bits per character",
       title=f"pydoc, RHN depth {cfg.depth}, {cfg.hidden} units")
ax.legend()
show(fig, "training-01-learning-curve")

valid = [r for r in records if r["split"] == "valid"]
best = min(valid, key=lambda r: r["bpc"])
print(f"last validation: {valid[-1]['bpc']:.3f} BPC at step {valid[-1]['step']}; "
      f"best: {best['bpc']:.3f} BPC at step {best['step']} (saved as best.npz)")
print("the trainer's own plot:", os.path.join(work_dir, "learning_curve.png"))

# %% [markdown]
# ## 4. Sampling
#
# `train.load_run(work_dir)` reads the best parameters back from `best.npz`.
# `train.sample` feeds the prime through the model, then repeatedly draws the next
# character from $\mathrm{softmax}(\text{logits}/\tau)$ and feeds it back in. A low
# temperature $\tau$ sharpens the distribution (safer, more repetitive text); $\tau = 1$
# samples the model's own distribution.

# %%
params, _, _ = train.load_run(work_dir, "best")
prime = "Return the "
for temperature in (0.5, 1.0):
    text = train.sample(params, ds, length=250, temperature=temperature, prime=prime, seed=0)
    print(f"--- temperature {temperature} " + "-" * 50)
    print(text)
    print()

# %% [markdown]
# ## 5. Transform-gate activity per micro-layer (paper Figure 5a)
#
# In micro-layer $\ell$ the state is updated as $s^{[\ell]} = h^{[\ell]} \odot t^{[\ell]} +
# s^{[\ell-1]} \odot (1 - t^{[\ell]})$ (Eq. 6, coupled). Where the transform gate
# $t^{[\ell]}$ is near 0 the layer just **carries** its input state; where it is large
# the layer **transforms** it. So the gate activity shows how much of each micro-layer
# the network uses, character by character.
#
# We run the model over one piece of validation text with `lm.lm_forward` (no dropout
# masks, zero initial state). Its cache holds every gate value: `lm.layer_cache(cache)["t"]` has
# shape $(L, T, B, n)$ — micro-layer, character, batch row, unit. Averaging over the
# $n$ units gives one number per micro-layer and character, as in the paper's figure.
#
# For comparison: the **initial** parameters (the very ones this run started from,
# `train.init_model(cfg, ds)`). There all weights are tiny and $b_T = -2$, so every gate
# sits near $\sigma(-2) \approx 0.12$ whatever the input.
#
# In the heat map below each half has its own colour scale and colour bar. The trained
# gates are drawn as they are (from 0); the initial ones differ from each other by about
# $10^{-4}$ or less, so they are drawn relative to the mean of their micro-layer,
# $t - \bar t_\ell$, magnified (the colour bar says by how much): this shows *that* the
# untrained gates vary a little with the input, and how little.

# %%
valid_text = ds.decode(ds.valid[:20_000])
match = re.search(r"(?<=\n\n)[A-Z][a-z]+(?: [a-z]+){3}[^\n]{40}", valid_text)  # a paragraph of English words
n_chars = 60  # characters along the heat map: few enough for labels readable on a slide
text_piece = valid_text[match.start(): match.start() + n_chars] if match else valid_text[:n_chars]
print(repr(text_piece))
ids = ds.encode(text_piece)[:, None]  # (T, 1): one row


def gate_activity(p):
    """Mean transform-gate value over the units: (L, T), micro-layer by character."""
    s0 = np.zeros((1, p["R_H"].shape[1]), dtype=p["R_H"].dtype)
    _, _, cache = lm.lm_forward(p, ids, s0)  # masks None: dropout off
    return np.asarray(lm.layer_cache(cache)["t"])[:, :, 0, :].mean(axis=-1)


params_init = train.init_model(cfg, ds)
gates = {"initial": gate_activity(params_init), "trained": gate_activity(params)}
print("σ(b_T) at initialisation:", float(rhn.sigmoid(np.float64(cfg.transform_bias))))
for name, g in gates.items():
    print(f"{name:8s} mean gate per micro-layer:", g.mean(axis=1))

# %%
labels = [{" ": "␣", "\n": "↵"}.get(ch, ch) for ch in text_piece]
# Each half on its own colour scale with its own colour bar. The initial gates all sit at
# about σ(b_T) and differ by ~1e-4 at most: on the trained half's scale they would be one
# flat colour, so they are drawn relative to their mean (per micro-layer), magnified.
g_init, g_trained = gates["initial"], gates["trained"]
dev = g_init - g_init.mean(axis=1, keepdims=True)
lim = max(float(np.abs(dev).max()), 1e-12)
expo = int(np.floor(np.log10(lim)))  # colour bar in units of 10^expo
fig, axes = plt.subplots(2, 1, figsize=(20, 4.4 + 1.4 * cfg.depth), sharex=True)
im0 = axes[0].imshow(dev / 10.0**expo, aspect="auto", cmap="RdBu_r", vmin=-lim / 10.0**expo, vmax=lim / 10.0**expo,
                     interpolation="nearest")
axes[0].set_title(f"initial parameters: every gate ≈ {g_init.mean():.4f}; colour = t minus the mean of its "
                  "micro-layer (own scale, blue below, red above)", loc="left", fontsize=17)
fig.colorbar(im0, ax=axes[0], pad=0.01, aspect=12).set_label(f"$(t - \\bar t_\\ell)\\,/\\,10^{{{expo}}}$")
im1 = axes[1].imshow(g_trained, aspect="auto", cmap="magma", vmin=0.0, vmax=float(g_trained.max()),
                     interpolation="nearest")
axes[1].set_title("trained parameters: colour = mean transform gate t (own scale, from 0)", loc="left", fontsize=17)
fig.colorbar(im1, ax=axes[1], pad=0.01, aspect=12).set_label("mean gate $t$")
for ax in axes:
    ax.set_yticks(range(cfg.depth), [f"ℓ = {l + 1}" for l in range(cfg.depth)], fontsize=16)
    ax.grid(False)
axes[-1].set_xticks(range(len(labels)), labels, fontsize=18, family="monospace")
axes[-1].tick_params(axis="x", length=0, pad=6)
fig.suptitle("Transform-gate activity per micro-layer along the text (cf. paper Fig. 5a); ␣ = space, ↵ = new line")
show(fig, "training-02-gate-heatmap")

# %%
fig, axes = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [2.2, 1]})
for l in range(cfg.depth):
    axes[0].plot(gates["trained"][l], "-", color=f"C{l}", lw=1.8, label=f"ℓ = {l + 1}, trained")
    axes[0].plot(gates["initial"][l], ":", color="0.4", lw=1.8)
axes[0].plot([], [], ":", color="0.4", label="initial (all layers)")
axes[0].set(xlabel="character position in the text", ylabel="mean transform gate $t$",
            title="along the text")
axes[0].legend(fontsize=11, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.17))
layers = np.arange(1, cfg.depth + 1)
for k, (name, g) in enumerate(gates.items()):
    axes[1].errorbar(layers + 0.08 * (2 * k - 1), g.mean(axis=1), yerr=g.std(axis=1), fmt="o", capsize=5,
                     color="0.5" if name == "initial" else "C3", label=name)
axes[1].axhline(float(rhn.sigmoid(np.float64(cfg.transform_bias))), color="0.5", ls=":", lw=1.2)
axes[1].set(xticks=layers, xlabel="micro-layer ℓ", ylabel="mean over the text (± std)", title="per micro-layer")
axes[1].legend(fontsize=12)
fig.suptitle("Transform-gate activity: initial vs trained")
show(fig, "training-03-gate-means")

# %% [markdown]
# What to look for (the numbers below are computed from this run, in either mode):
#
# * **Initial:** every layer sits at $\approx 0.12$ and barely moves from character to
#   character (tiny standard deviation): the network has not yet learned to use its
#   depth; it mostly carries its state, which is what the negative bias is for.
# * **Trained:** the paper (on JSB, depth 6) reports that after training all layers are
#   used, micro-layer 1 is high on average and the others switch on and off per step.
#   Compare the means and the spread along the text printed below.
# * An open gate alone does not prove that a layer matters: the layer's transform could
#   still be of little use to the prediction. Section 6 tests that directly.

# %%
for l in range(cfg.depth):
    gi, gt = gates["initial"][l], gates["trained"][l]
    print(f"ℓ = {l + 1}: initial mean {gi.mean():.3f} (std along the text {gi.std():.4f}) -> "
          f"trained mean {gt.mean():.3f} (std {gt.std():.3f}, range {gt.min():.2f}..{gt.max():.2f})")
top = int(np.argmax(gates["trained"].mean(axis=1))) + 1
print(f"\nmost active micro-layer after training: ℓ = {top}")

# %% [markdown]
# ## 6. Lesioning micro-layers (paper Figure 5b)
#
# To test how much each micro-layer contributes, the paper *lesions* it after training:
# its transform-gate bias is set to a large negative number, so $t^{[\ell]} \approx 0$
# and $s^{[\ell]} = s^{[\ell-1]}$ — the layer only carries and is effectively removed.
# We set $b_T[\ell] = -30$ ($\sigma(-30) \approx 10^{-13}$) in a copy of the parameters
# and score the validation text with `train.evaluate` (dropout off). Everything else is
# left as trained.
#
# One thing to keep in mind when reading the bars: in an RHN only micro-layer 1 sees the
# input character $x_t$ (Eqs. 7-9: the $W$ terms appear only for $\ell = 1$). Lesioning
# layer 1 therefore also cuts the model off from its input, which may be why it is the
# costliest lesion (our reading; the paper reports the finding without this reason).

# %%
n_lesion = 20_000 if FAST else len(ds.valid)
eval_args = dict(batch_size=cfg.eval_batch_size, bptt=cfg.bptt, level="char")
intact = train.evaluate(params, ds.valid[:n_lesion], **eval_args)["bpc"]


def lesioned(p, layer, bias=-30.0):
    """A copy of p with micro-layer `layer` (0-based) forced to carry."""
    q = {k: v.copy() for k, v in p.items()}
    q["b_T"][layer] = bias
    return q


lesion_bpc = np.array([train.evaluate(lesioned(params, l), ds.valid[:n_lesion], **eval_args)["bpc"]
                       for l in range(cfg.depth)])
print(f"intact model: {intact:.3f} BPC on the first {n_lesion:,} validation characters")
for l, b in enumerate(lesion_bpc):
    verdict = "the model relies on it" if b - intact > 0.1 else "the model barely uses it yet"
    print(f"micro-layer {l + 1} lesioned: {b:.3f} BPC (+{b - intact:.3f}): {verdict}")
worst = int(np.argmax(lesion_bpc)) + 1
print(f"the costliest lesion: micro-layer {worst}")
if lesion_bpc.max() > uniform_bpc:
    print(f"(worse than guessing uniformly, {uniform_bpc:.2f} BPC: the lesioned model still predicts "
          "confidently, but from a state that no longer matches the text)")

# %%
fig, ax = plt.subplots(figsize=(9, 5.5))
bars = ax.bar(layers, lesion_bpc - intact, color="C3", width=0.6)
ax.bar_label(bars, fmt="+%.3f", fontsize=13, padding=3)
ax.set(xticks=layers, xlabel="lesioned micro-layer ℓ  ($b_T[\\ell] = -30$)", ylabel="increase in BPC",
       title=f"Lesioning (cf. paper Fig. 5b); intact model {intact:.3f} BPC")
ax.set_ylim(top=1.15 * max(lesion_bpc.max() - intact, 1e-3))
show(fig, "training-04-lesioning")

# %% [markdown]
# Reading the result: a tall bar means the trained model relies on that micro-layer; a
# bar near zero means the layer could be removed at little cost, i.e. training has not
# (yet) put it to use. The paper's trained network needed every layer, layer 1 most.
# Compare the bars of a fast run (a few hundred updates) with those of a full run: the
# longer the training, the more of its depth the model has learned to use.
#
# ## Summary
#
# * `Trainer(cfg, work_dir).run()` (or `rhn-np train`) trains a character-level RHN and
#   leaves metrics, checkpoints and a learning curve in its work folder; `load_run`,
#   `sample` and `evaluate` use them afterwards.
# * The transform gates start near $\sigma(b_T)$ everywhere; training makes them
#   depend on the layer and on the input — the network decides per character how much
#   of its depth to use (paper §6).
# * Lesioning a micro-layer (forcing it to carry) measures how much the model relies on
#   it. Micro-layer 1 is the only one that reads the input, so removing it cuts the model
#   off from the text; the other layers' costs grow as training puts them to use.
