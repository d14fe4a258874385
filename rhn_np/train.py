r"""Training RHN language models: batching, the authors' recipe, evaluation, checkpoints.

The training step is the authors' (TensorFlow ``rhn.py``, paper §5.2; see
:mod:`rhn_np.optim`), written with this package's functions::

    masks        = lm.draw_masks(rng, x, ...)                    # once per window
    loss, g, s   = lm.lm_loss_and_grads(params, x, y, s, masks)  # Σ over time, mean over batch
    g            = optim.add_l2_gradient(g, params, wd)          # ½·wd·Σw² in the cost
    g, norm      = optim.clip_global_norm(g, clip)               # global norm 10
    opt.step(params, g)                                          # SGD, lr 0.2
    opt.lr       = optim.lr_at_epoch(epoch, lr, max_epoch, lr_decay)

**Batching** (:class:`TokenBatches`, the authors' ``ptb_iterator``): the token stream
is cut into ``batch_size`` contiguous rows of ``L = len // batch_size`` tokens; window
``i`` of an epoch is columns ``[i·T, (i+1)·T)`` of the rows (inputs) and the same
shifted by one (targets), ``(L - 1) // T`` windows per epoch. The state is carried
from window to window and reset to zeros at the start of every epoch. Variable-length
sequences (JSB chorales) go in :class:`SequenceBatches`: shuffled each epoch, padded to
the longest sequence of the batch, with a step mask that removes the padding from the
loss; every batch starts from a zero state.

**Evaluation** (:func:`evaluate`) runs with dropout off over a whole split with the
same row layout, the state carried over the split and the last, shorter window
included, so every target of the rows is scored. ``batch_size=1`` is the authors'
reported figure (one row, the whole split in order). Perplexity = ``exp(nll)``, bits
per character = ``nll / ln 2``, ``nll`` in nats per token.

**A run** (:func:`train`) lives in a work folder::

    metrics.jsonl        one JSON line per evaluation (and one per training interval)
    checkpoint.npz       the latest state: parameters, optimiser, carried state, RNG
    best.npz             the parameters with the best validation NLL so far
    learning_curve.png   training and validation NLL against steps

A checkpoint holds everything needed to continue bit for bit: resuming after step 100
and training to step 200 gives the same parameters and metrics as 200 steps in one go
(on the CPU). Ctrl+C saves a checkpoint before stopping; a non-finite loss stops the
run with :class:`TrainingDiverged` and leaves the last good checkpoint in place.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings

import numpy as np

from . import backend as _backend
from . import checkpoint as _checkpoint
from . import data as _data
from . import lm, optim, rhn

__all__ = [
    "Config",
    "PRESETS",
    "config_from_preset",
    "lr_at_step",
    "init_model",
    "TokenBatches",
    "SequenceBatches",
    "Trainer",
    "TrainingDiverged",
    "train",
    "evaluate",
    "evaluate_dataset",
    "check_run_data",
    "sample",
    "load_run",
    "dataset_for_sampling",
    "read_metrics",
    "plot_learning_curve",
]

TRAINER_FORMAT = "rhn_np-run"
TRAINER_VERSION = 1
LN2 = math.log(2.0)


# ----------------------------------------------------------------------------
# Configuration and presets
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class Config:
    """Every setting of a run. Field names follow the paper and the authors' configs.

    The defaults are the ``demo`` preset's; see :data:`PRESETS` for the paper's.

    Model: ``depth`` (recurrence depth L), ``hidden`` (units n), ``emb`` (embedding
    width; ``None``: as in the authors' code, the vocabulary size when untied and
    smaller than ``hidden``, as for the paper's character-level models, else
    ``hidden``), ``tied`` (weight tying), ``coupled`` (c = 1 - t),
    ``transform_bias`` (initial b_T), ``init_scale`` (U(±init_scale) init).
    Dropout is given as *drop* probabilities, as in the authors' configs.
    ``lr_schedule="epoch"`` is the authors': ``max_epoch`` epochs at the constant ``lr``,
    then ÷ ``lr_decay`` per epoch (:func:`rhn_np.optim.lr_at_epoch`). ``"cosine"``
    (used by the short ``demo`` runs) follows :func:`lr_at_step`: half a cosine from
    ``lr`` down to ``lr / 20`` over ``decay_steps`` steps, then constant. Both depend
    only on the step count and fixed settings, so a resumed run follows the same
    schedule whatever its ``max_steps``.
    ``epochs``/``max_steps``/``time_limit`` (minutes): whichever ends the run first.
    ``eval_every``: steps between validations (``None``: once per epoch); the run
    always ends with one.
    ``cuda_graphs`` (CuPy only): run the RHN layer's forward and BPTT of every training
    window of token data from two CUDA graphs (:class:`rhn_np.fast.CapturedLayer`, the
    same kernels as the eager fast path; piano rolls, whose windows vary in shape, are
    launched kernel by kernel); ``False`` launches them one by one. It may change on
    ``resume``.
    """

    dataset: str = "pydoc"
    data_dir: str | None = None
    depth: int = 3
    hidden: int = 128
    emb: int | None = None
    tied: bool = False
    coupled: bool = True
    transform_bias: float = -2.0
    init_scale: float = 0.04
    batch_size: int = 32
    bptt: int = 50
    optimizer: str = "adam"
    lr: float = 1e-2
    lr_schedule: str = "cosine"
    lr_decay: float = 1.0
    max_epoch: int = 1_000_000
    decay_steps: int = 4000
    epochs: int = 1_000_000
    max_steps: int | None = 4000
    time_limit: float | None = None
    clip: float = 10.0
    weight_decay: float = 0.0
    drop_x: float = 0.0
    drop_i: float = 0.0
    drop_h: float = 0.0
    drop_o: float = 0.0
    eval_every: int | None = 1000
    eval_batch_size: int = 32
    log_every: int = 10
    seed: int = 0
    backend: str = "numpy"
    dtype: str = "float32"
    cuda_graphs: bool = True

    def check(self) -> Config:
        """Validate every field; raises ``ValueError`` naming the bad one.

        NumPy scalars (from ``np.arange``/``np.linspace`` sweeps) become Python numbers.
        """
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.bool_):
                setattr(self, f.name, bool(v))
            elif isinstance(v, np.integer):
                setattr(self, f.name, int(v))
            elif isinstance(v, np.floating):
                setattr(self, f.name, float(v))
        for name in ("tied", "coupled", "cuda_graphs"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{_label(name)} must be True or False, got {getattr(self, name)!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"{_label('seed')} must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.dataset, str) or not self.dataset.strip():
            raise ValueError(f"{_label('dataset')} must be a data set name such as 'ptb', got {self.dataset!r}")
        number = rhn._is_real  # int or float, not bool (NumPy scalars were made Python numbers above)
        if not (number(self.transform_bias) and math.isfinite(self.transform_bias)):
            raise ValueError(f"{_label('transform_bias')} must be a finite number, got {self.transform_bias!r}")
        if self.data_dir is not None and not isinstance(self.data_dir, (str, os.PathLike)):
            raise ValueError(f"{_label('data_dir')} must be a folder path or None, got {self.data_dir!r}")
        if self.data_dir is not None:
            self.data_dir = os.fspath(self.data_dir)  # a str: the config is stored as JSON in checkpoints
        positive = ("depth", "hidden", "batch_size", "bptt", "epochs", "max_epoch", "eval_batch_size", "log_every",
                    "decay_steps")
        for name in positive:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{_label(name)} must be a positive integer, got {v!r}")
        for name in ("max_steps", "eval_every", "emb"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{_label(name)} must be a positive integer or unset (None), got {v!r}")
        for name in ("drop_x", "drop_i", "drop_h", "drop_o"):
            v = getattr(self, name)
            if not (number(v) and 0.0 <= v < 1.0):
                raise ValueError(f"{_label(name)} is a drop probability and must lie in [0, 1), got {v!r}")
        for name, lo in (("lr", 0.0), ("clip", 0.0), ("init_scale", 0.0)):
            v = getattr(self, name)
            if not (number(v) and math.isfinite(v) and v > lo):
                raise ValueError(f"{_label(name)} must be a finite number > {lo}, got {v!r}")
        if not (number(self.lr_decay) and math.isfinite(self.lr_decay) and self.lr_decay >= 1.0):
            raise ValueError(f"{_label('lr_decay')} divides the learning rate each epoch after max_epoch and must be >= 1, got {self.lr_decay!r}")
        if not (number(self.weight_decay) and math.isfinite(self.weight_decay) and self.weight_decay >= 0.0):
            raise ValueError(f"{_label('weight_decay')} must be a finite number >= 0, got {self.weight_decay!r}")
        if self.time_limit is not None and not (number(self.time_limit) and self.time_limit > 0):
            raise ValueError(f"{_label('time_limit')} is in minutes and must be > 0, got {self.time_limit!r}")
        if self.lr_schedule not in ("epoch", "cosine"):
            raise ValueError(f"{_label('lr_schedule')} must be 'epoch' (the authors') or 'cosine', got {self.lr_schedule!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"{_label('optimizer')} must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"{_label('dtype')} must be 'float32' or 'float64', got {self.dtype!r}")
        if self.backend not in ("numpy", "cupy", "auto", "array_api_strict"):
            raise ValueError(f"{_label('backend')} must be 'numpy', 'cupy', 'auto' or 'array_api_strict', got {self.backend!r}")
        if self.tied and self.emb is not None and self.emb != self.hidden:
            raise ValueError(f"weight tying (--tied) needs emb == hidden (--emb, --hidden), got emb={self.emb}, hidden={self.hidden}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        unknown = set(d) - _CONFIG_FIELDS
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(_CONFIG_FIELDS)}")
        return cls(**d)


_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(Config))

_PTB_SOTA = dict(
    dataset="ptb", depth=10, hidden=830, emb=None, tied=True, transform_bias=-2.0, init_scale=0.04,
    batch_size=20, bptt=35, optimizer="sgd", lr=0.2, lr_schedule="epoch", lr_decay=1.02, max_epoch=20, epochs=500,
    max_steps=None, clip=10.0, weight_decay=1e-7, drop_x=0.25, drop_i=0.75, drop_h=0.25, drop_o=0.75,
    eval_every=None, eval_batch_size=20,
)
_CHAR_SOTA = dict(
    depth=10, hidden=1500, emb=None, tied=False, transform_bias=-4.0, init_scale=0.04,
    batch_size=128, bptt=50, optimizer="sgd", lr=0.2, lr_schedule="epoch", lr_decay=1.03, max_epoch=5, epochs=500,
    max_steps=None, clip=10.0, weight_decay=1e-7, drop_x=0.10, drop_i=0.40, drop_h=0.10, drop_o=0.40,
    eval_every=None, eval_batch_size=128,
)

#: Named configurations. ``ptb_sota``, ``enwik8_sota`` and ``text8_sota`` are the
#: authors' exact settings (their TF configs, paper §5.2); ``jsb`` is ours (the paper
#: gives no recipe for JSB, only a random search; depth 6 as in its Fig. 5 analysis, and
#: U(±0.2) init: with the authors' ±0.04 the sparse piano-roll inputs barely reach the
#: output and the model stays at the per-key marginals); ``demo`` trains a small character
#: model on the embedded ``pydoc`` corpus in about two and a half minutes on two CPU cores
#: (Adam with a cosine decay: fast early progress, which short runs need).
PRESETS: dict[str, dict] = {
    "demo": dict(
        dataset="pydoc", depth=3, hidden=128, emb=None, tied=False, transform_bias=-2.0,
        batch_size=32, bptt=50, optimizer="adam", lr=1e-2, lr_schedule="cosine", decay_steps=4000,
        max_steps=4000, clip=10.0, weight_decay=0.0, drop_x=0.0, drop_i=0.0, drop_h=0.0, drop_o=0.0,
        eval_every=1000, eval_batch_size=32,
    ),
    "ptb_sota": _PTB_SOTA,
    "enwik8_sota": dict(_CHAR_SOTA, dataset="enwik8"),
    "text8_sota": dict(_CHAR_SOTA, dataset="text8"),
    "jsb": dict(
        dataset="jsb", depth=6, hidden=256, emb=None, tied=False, transform_bias=-1.0, init_scale=0.2,
        batch_size=8, bptt=200, optimizer="adam", lr=3e-3, lr_schedule="cosine", decay_steps=1450, epochs=50,
        max_steps=None, clip=10.0, weight_decay=0.0, drop_x=0.0, drop_i=0.0, drop_h=0.0, drop_o=0.0,
        eval_every=None, eval_batch_size=16,
    ),
}


def _label(field: str) -> str:
    """A Config field with its ``rhn-np train`` option, for messages: ``lr (--lr)``."""
    return field if field == "log_every" else f"{field} (--{field.replace('_', '-')})"


def lr_at_step(step: int, lr: float, decay_steps: int, final_ratio: float = 0.05) -> float:
    """Cosine decay: ``lr · (r + (1 - r) · ½ (1 + cos(π · min(step, D) / D)))``, ``r = final_ratio``.

    ``lr`` at step 0, ``lr · r`` from step ``D = decay_steps`` on.
    """
    decay_steps = lm._check_int("decay_steps", decay_steps)
    step = rhn._positive_int("step", step, minimum=0)
    lr = optim._check_number("lr", lr)
    if not 0.0 <= optim._check_number("final_ratio", final_ratio) <= 1.0:
        raise ValueError(f"final_ratio is the fraction of lr left at the end and must lie in [0, 1], got {final_ratio!r}")
    frac = min(step, decay_steps) / decay_steps
    return lr * (final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac)))


def config_from_preset(preset: str = "demo", **overrides) -> Config:
    """A :class:`Config` from a preset name, with ``overrides`` (``None`` values ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    fields = dict(PRESETS[preset])
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return Config.from_dict(fields).check()


# ----------------------------------------------------------------------------
# Batching
# ----------------------------------------------------------------------------
def _check_rolls(sequences, what: str) -> list[np.ndarray]:
    """Piano rolls as NumPy arrays: each (T_i >= 2, K) of 0/1 frames, one K for all."""
    if isinstance(sequences, np.ndarray) and sequences.ndim == 3:
        sequences = list(sequences)  # (N, T, K): N sequences of one length
    if not isinstance(sequences, (list, tuple)) or not sequences:
        raise ValueError(f"{what} must be a non-empty list of (T_i, K) piano rolls")
    rolls = [np.asarray(s) for s in sequences]
    for j, r in enumerate(rolls):
        if r.ndim != 2 or len(r) < 2:
            raise ValueError(f"{what}: sequence {j} must be a (T_i >= 2, K) array, got shape {r.shape}")
        if not np.all((r == 0) | (r == 1)):
            raise ValueError(f"{what}: sequence {j} must hold 0/1 piano-roll frames (a key off or on), got other values")
    keys = sorted({r.shape[1] for r in rolls})
    if len(keys) != 1:
        raise ValueError(f"{what}: all sequences must have the same number of keys K, got {keys}")
    return rolls


class TokenBatches:
    """The authors' layout of a token stream for truncated BPTT (``ptb_iterator``).

    ``rows = stream[: B·L].reshape(B, L)`` with ``L = len(stream) // B``; window ``i``
    is ``x = rows[:, i·T : (i+1)·T]`` and ``y = rows[:, i·T+1 : (i+1)·T+1]``,
    returned time-major as ``(T, B)`` host arrays. ``len(self)`` = ``(L - 1) // T``
    windows per epoch (the tail that does not fill a window is left out in training;
    :meth:`all_windows` adds it as a shorter last window, for evaluation).
    """

    def __init__(self, stream, batch_size: int, bptt: int):
        stream = _backend.to_host(stream)  # any backend's array, or a list
        if stream.ndim != 1 or not np.issubdtype(stream.dtype, np.integer):
            raise ValueError(f"the token stream must be a 1-D integer array, got {stream.dtype} {stream.shape}")
        self.batch_size, self.bptt = lm._check_int("batch_size", batch_size), lm._check_int("bptt", bptt)
        L = len(stream) // self.batch_size
        if L < 2:
            raise ValueError(
                f"a stream of {len(stream)} tokens cannot fill {self.batch_size} rows of at least 2 tokens; "
                "use a smaller batch size")
        self.rows = np.ascontiguousarray(stream[: self.batch_size * L].reshape(self.batch_size, L))
        self.n_windows = (L - 1) // self.bptt

    def __len__(self) -> int:
        return self.n_windows

    def window(self, i: int):
        """Inputs and targets of window ``i``: two ``(T, B)`` host arrays."""
        if not 0 <= i < self.n_windows:
            raise IndexError(f"window {i} of an epoch of {self.n_windows} (0..{self.n_windows - 1}); all_windows() "
                             "adds the shorter tail")
        T = self.bptt
        x = self.rows[:, i * T: (i + 1) * T]
        y = self.rows[:, i * T + 1: (i + 1) * T + 1]
        return np.ascontiguousarray(x.T), np.ascontiguousarray(y.T)

    def all_windows(self):
        """Every window of the rows in order, the last one possibly shorter: all targets."""
        L = self.rows.shape[1]
        for start in range(0, L - 1, self.bptt):
            stop = min(start + self.bptt, L - 1)
            yield (np.ascontiguousarray(self.rows[:, start:stop].T),
                   np.ascontiguousarray(self.rows[:, start + 1: stop + 1].T))


class SequenceBatches:
    """Padded, masked batches of variable-length sequences (JSB piano rolls).

    Each batch holds ``batch_size`` sequences (the last one fewer), padded with zeros to
    the longest: ``x = roll[:-1]``, ``y = roll[1:]`` (next-frame prediction) as
    ``(T, B, K)`` arrays and a ``(T, B)`` step mask, 1 on real steps. The order is
    shuffled every epoch with the run's generator (:meth:`order`).
    """

    def __init__(self, sequences, batch_size: int):
        self.sequences = _check_rolls(sequences, "sequences")
        self.batch_size = lm._check_int("batch_size", batch_size)
        self.n_windows = -(-len(self.sequences) // self.batch_size)

    def __len__(self) -> int:
        return self.n_windows

    def order(self, rng: np.random.Generator | None):
        """A permutation of the sequences (identity without a generator)."""
        n = len(self.sequences)
        return np.arange(n) if rng is None else rng.permutation(n)

    def window(self, i: int, order):
        """Batch ``i`` under ``order``: ``(x (T, B, K), y (T, B, K), step_mask (T, B))``."""
        if not 0 <= i < self.n_windows:
            raise IndexError(f"batch {i} of an epoch of {self.n_windows} (0..{self.n_windows - 1})")
        idx = order[i * self.batch_size: (i + 1) * self.batch_size]
        seqs = [self.sequences[j] for j in idx]
        T = max(len(s) for s in seqs) - 1
        K = seqs[0].shape[1]
        x = np.zeros((T, len(seqs), K), np.float64)
        y = np.zeros((T, len(seqs), K), np.float64)
        mask = np.zeros((T, len(seqs)), np.float64)
        for b, s in enumerate(seqs):
            t = len(s) - 1
            x[:t, b] = s[:-1]
            y[:t, b] = s[1:]
            mask[:t, b] = 1.0
        return x, y, mask


# ----------------------------------------------------------------------------
# Models, evaluation and sampling
# ----------------------------------------------------------------------------
def _emb_width(cfg: Config, ds) -> int:
    """The authors' rule (their ``rhn.py``): the vocabulary size when untied and smaller
    than ``hidden`` (one-hot-sized inputs, as for the paper's character-level models),
    else ``hidden``; ``cfg.emb`` overrides it."""
    if cfg.emb is not None:
        return cfg.emb
    if not cfg.tied and ds.vocab_size < cfg.hidden:
        return ds.vocab_size
    return cfg.hidden


def init_model(cfg: Config, ds, backend=None):
    """Initial parameters for ``cfg`` on data set ``ds`` (word/char or piano-roll model)."""
    be = _backend.get(backend if backend is not None else cfg.backend)
    common = dict(coupled=cfg.coupled, transform_bias=cfg.transform_bias, init_scale=cfg.init_scale,
                  seed=cfg.seed, dtype=cfg.dtype, backend=be)
    if ds.kind == "piano_roll":
        return lm.init_dense_params(_data.N_KEYS, cfg.hidden, cfg.depth, **common)
    return lm.init_lm_params(ds.vocab_size, _emb_width(cfg, ds), cfg.hidden, cfg.depth, tied=cfg.tied, **common)


def _metrics(nll: float, level: str) -> dict:
    if level == "frame":  # JSB: NLL per time step summed over keys; no perplexity
        return {"nll": nll, "ppl": None, "bpc": None}
    return {"nll": nll, "ppl": math.exp(min(nll, 700.0)), "bpc": nll / LN2}


def _vocab_of(params, what: str) -> int:
    if not isinstance(params, dict) or "E" not in params:
        kind = ("a piano-roll model (lm.init_dense_params): use evaluate_sequences" if isinstance(params, dict)
                and "W_out" in params else "not the parameters of a word/char model")
        raise ValueError(f"{what} needs the parameters of lm.init_lm_params (with an embedding 'E'); got {kind}")
    return int(params["E"].shape[0])


def _check_vocab_size(params, ds, what: str, fix: str) -> None:
    V = _vocab_of(params, what)
    if V != ds.vocab_size:
        raise ValueError(f"the model predicts {V} symbols but {ds.name} has {ds.vocab_size}: {fix}")


def _hidden_of(params) -> int:
    return int(params["R_H"].shape[1])


def evaluate(params, stream, *, batch_size: int = 32, bptt: int = 50, level: str = "word", progress=None) -> dict:
    """Dropout-off NLL of a token stream: ``{"nll", "ppl", "bpc", "n_tokens"}``.

    The stream is laid out in ``batch_size`` rows (:class:`TokenBatches`); the state is
    carried over all windows, the last shorter window included. ``batch_size=1`` is the
    authors' reported evaluation (one pass over the split in order).
    """
    _vocab_of(params, "evaluate")
    be = _backend.of(params["E"])
    xp = be.xp
    batches = TokenBatches(stream, batch_size, bptt)
    s = xp.zeros((batch_size, _hidden_of(params)), dtype=params["E"].dtype, device=be.device)
    total = None
    n_tokens = 0
    for x, y in batches.all_windows():
        nll, s = lm.lm_nll(params, be.to_device(x), be.to_device(y), s)  # (T, B)
        part = xp.sum(xp.astype(nll, xp.float64))
        total = part if total is None else total + part
        n_tokens += x.size
        if progress is not None:
            progress(x.size)
    value = float(total) / n_tokens  # the one host sync of the evaluation
    return {**_metrics(value, level), "n_tokens": n_tokens}


def evaluate_sequences(params, sequences, *, batch_size: int = 16) -> dict:
    """Dropout-off NLL per time step (summed over the 88 keys) of piano rolls."""
    be = _backend.of(params["W_out"])
    xp, dtype = be.xp, params["W_out"].dtype
    batches = SequenceBatches(sequences, batch_size)
    order = batches.order(None)
    total, n_steps = None, 0.0
    for i in range(len(batches)):
        x, y, mask = batches.window(i, order)
        xd, yd, md = (be.to_device(a, dtype=dtype) for a in (x, y, mask))
        s0 = xp.zeros((x.shape[1], _hidden_of(params)), dtype=dtype, device=be.device)
        logits, _ = lm.dense_logits(params, xd, s0)
        loss, _ = lm.sigmoid_bernoulli_nll(logits, yd, md)
        part = loss * x.shape[1]
        total = part if total is None else total + part
        n_steps += float(mask.sum())
    value = float(total) / n_steps
    return {**_metrics(value, "frame"), "n_tokens": int(n_steps)}


def evaluate_dataset(params, ds, split: str = "valid", *, batch_size: int = 32, bptt: int = 50, progress=None) -> dict:
    """:func:`evaluate` (token data) or :func:`evaluate_sequences` (JSB) on ``ds.<split>``."""
    if split not in ("train", "valid", "test"):
        raise ValueError(f"split must be 'train', 'valid' or 'test', got {split!r}")
    part = getattr(ds, split)
    if ds.kind == "piano_roll":
        if not isinstance(params, dict) or "E" in params or "W_out" not in params:
            raise ValueError(f"{ds.name} holds piano rolls: it needs a piano-roll model (lm.init_dense_params), "
                             "not a word/char model")
        return evaluate_sequences(params, part, batch_size=batch_size)
    _check_vocab_size(params, ds, "evaluate_dataset", "evaluate on the data set the model was trained on")
    return evaluate(params, part, batch_size=batch_size, bptt=bptt, level=ds.level, progress=progress)


def check_run_data(meta: dict, ds) -> None:
    """Raise a :class:`RunError` unless ``ds`` is the data set the run of ``meta`` was
    trained on: the same name and, for word/char data, the same vocabulary in the same
    order (otherwise the symbol ids would not mean the same). ``ds`` may also be just a
    data set name (then only the name is compared, before anything is loaded)."""
    d = meta.get("dataset") or {}
    name = ds if isinstance(ds, str) else ds.name
    if d.get("name") is not None and d.get("name") != name:
        raise RunError(f"the run was trained on {d.get('name')!r}, not {name!r}: a data set given to the Trainer "
                       "from Python is not stored with the run; give it again (Trainer.resume(work_dir, ds=...), "
                       "train.evaluate_dataset(params, ds, ...))")
    stored_vocab = d.get("vocab")
    if not isinstance(ds, str) and ds.kind == "tokens" and stored_vocab is not None and list(ds.vocab) != list(stored_vocab):
        raise RunError(f"{ds.name} as given here ({ds.vocab_size} symbols) does not have the vocabulary the run was "
                       f"trained with ({len(stored_vocab)} symbols, in its order): the symbol ids would not mean the "
                       "same; use the run's data (is --data-dir the run's copy? pydoc's vocabulary depends on the "
                       "Python version that built it)")


def _start_symbol(ds, rng) -> int:
    """The end-of-line symbol (a sample then starts like a new line), else a random one."""
    for sym in ("<eos>", "\n"):
        if sym in ds.vocab:
            return list(ds.vocab).index(sym)
    return int(rng.integers(ds.vocab_size))


def sample(params, ds, *, length: int = 300, temperature: float = 1.0, prime: str | None = None, seed: int = 0) -> str:
    """Generate text from a word/char model: prime the state, then draw ``length`` symbols.

    Each symbol is drawn from ``softmax(logits / temperature)`` (host generator
    ``seed``) and fed back as the next input. Returns the prime followed by the sample,
    decoded by ``ds.decode``.
    """
    if ds.kind != "tokens":
        raise ValueError("sampling needs a word or character model; JSB piano-roll models have no text to sample")
    if not (rhn._is_real(temperature) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    length = lm._check_int("length", length)
    _check_vocab_size(params, ds, "sample", "sample with the data set (or run) the model was trained on")
    be = _backend.of(params["E"])
    xp = be.xp
    rng = _backend.host_rng(seed)
    ids = list(ds.encode(prime)) if prime else []
    if not ids:  # start after an end of line, like a new sentence / paragraph
        seed_ids, out = [_start_symbol(ds, rng)], []
    else:
        seed_ids, out = ids, list(ids)
    s = xp.zeros((1, _hidden_of(params)), dtype=params["E"].dtype, device=be.device)
    logits, s = lm.lm_logits(params, be.to_device(np.asarray(seed_ids, np.int64)[:, None]), s)
    for _ in range(length):
        z = _backend.to_host(logits[-1, 0, :]).astype(np.float64) / temperature  # (V,)
        p = np.exp(z - z.max())
        nxt = int(rng.choice(len(p), p=p / p.sum()))
        out.append(nxt)
        logits, s = lm.lm_logits(params, be.to_device(np.asarray([[nxt]], np.int64)), s)
    return ds.decode(np.asarray(out, np.int64))


# ----------------------------------------------------------------------------
# Metrics file and learning curve
# ----------------------------------------------------------------------------
def read_metrics(work_dir) -> list[dict]:
    """The records of ``work_dir/metrics.jsonl`` (empty list when there is none)."""
    path = os.path.join(os.fspath(work_dir), "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if i == len(lines):  # no newline after it: a write cut short (a crash); the rest is intact
                warnings.warn(f"{path}: ignoring its last line, a record cut short ({line[:40]!r}...)", stacklevel=2)
                continue
            raise ValueError(f"{path}, line {i}: not a JSON record ({exc.msg}); fix or delete that line") from None
    return records


def _append_metrics(work_dir, record: dict) -> None:
    """Append one JSON line to ``metrics.jsonl``, first ending or dropping a last line a crash left open."""
    with open(os.path.join(work_dir, "metrics.jsonl"), "a+b") as fh:  # writes always go to the end
        end = fh.seek(0, os.SEEK_END)
        fh.seek(max(end - 1, 0))
        if end and fh.read(1) != b"\n":  # the last line has no newline
            fh.seek(0)
            data = fh.read()
            cut = data.rfind(b"\n") + 1
            try:
                json.loads(data[cut:])
                fh.write(b"\n")  # a whole record: keep it, end its line
            except ValueError:
                fh.truncate(cut)  # a record cut short by a crash: drop the fragment
        fh.write((json.dumps(record, sort_keys=True) + "\n").encode("utf-8"))


def plot_learning_curve(work_dir, path=None) -> str:
    """Plot training and validation NLL (bits per char at char level) against steps."""
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    work_dir = os.fspath(work_dir)
    records = read_metrics(work_dir)
    level = next((r.get("level") for r in records if r.get("level")), "word")
    unit, scale = ("bits per character", 1.0 / LN2) if level == "char" else (
        ("NLL per time step (nats)", 1.0) if level == "frame" else ("NLL per token (nats)", 1.0))
    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    for split, style in (("train", "-"), ("valid", "o-")):
        pts = [(r["step"], r["nll"] * scale) for r in records if r.get("split") == split and r.get("nll") is not None]
        if pts:
            # A resumed run re-logs nothing, but keep only the last record per step.
            d = dict(pts)
            steps = sorted(d)
            label = "train (mean since the previous point)" if split == "train" else "valid (dropout off)"
            ax.plot(steps, [d[k] for k in steps], style, label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel(unit)
    ax.set_title(f"learning curve: {os.path.basename(os.path.abspath(work_dir))}")
    ax.grid(alpha=0.3)
    ax.legend()
    path = os.path.join(work_dir, "learning_curve.png") if path is None else os.fspath(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------
class _DeferredInterrupt:
    """Ctrl+C during training: finish the current step, then stop cleanly.

    The first SIGINT sets :attr:`requested` (the loop saves a checkpoint and stops
    after the step in progress, so parameters and optimiser are never half updated);
    a second one interrupts at once. Only active in the main thread.
    """

    def __init__(self):
        self.requested = False
        self._old = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl+C: stopping after this step and saving a checkpoint (press again to abort at once)",
              flush=True)

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        import signal

        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


class RunError(ValueError):
    """A work folder that cannot be used as asked (e.g. --resume without a checkpoint)."""


def _flatten_opt(opt) -> tuple[dict, dict]:
    """Optimiser state -> (numbers for the metadata, arrays ``opt.m.<k>`` / ``opt.v.<k>``)."""
    state = opt.state_dict()
    arrays = {}
    for moment in ("m", "v"):
        for k, a in state.pop(moment, {}).items():
            arrays[f"opt.{moment}.{k}"] = a
    return state, arrays


def _unflatten_opt(numbers: dict, arrays: dict) -> dict:
    state = dict(numbers)
    if state.get("name") == "Adam":
        state["m"] = {k[len("opt.m."):]: _backend.to_host(a) for k, a in arrays.items() if k.startswith("opt.m.")}
        state["v"] = {k[len("opt.v."):]: _backend.to_host(a) for k, a in arrays.items() if k.startswith("opt.v.")}
    return state


def _rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


def _rng_from_state(state: dict) -> np.random.Generator:
    bitgen = getattr(np.random, state["bit_generator"])()
    bitgen.state = state
    return np.random.Generator(bitgen)


def held_run(work_dir) -> list[str]:
    """Which of ``checkpoint.npz`` / ``best.npz`` ``work_dir`` holds: a folder with either is a run."""
    return [f for f in ("checkpoint.npz", "best.npz") if os.path.exists(os.path.join(os.fspath(work_dir), f))]


def _held_message(work_dir, held, *, cli=False) -> str:
    where = os.fspath(work_dir)
    other = "choose another --work-dir" if cli else "start afresh there with overwrite=True (its files are deleted), or choose another work folder"
    if "checkpoint.npz" in held:
        resume = "add --resume to continue it" if cli else "continue it with Trainer.resume(work_dir) (train(..., resume=True))"
        return f"{where} already holds a run ({', '.join(held)}); {resume}, or {other}"
    use = "rhn-np evaluate/sample --work-dir" if cli else "train.load_run(work_dir)"
    return (f"{where} holds the best parameters of a run (best.npz) but no checkpoint.npz to resume from; use them "
            f"with {use}, or {other}")


class Trainer:
    """One training run in a work folder (see the module docstring).

    ``Trainer(cfg, work_dir).run()`` trains from scratch; ``Trainer.resume(work_dir)``
    continues from ``work_dir/checkpoint.npz``. The loop is :meth:`train_step` per
    window; :meth:`validate` evaluates, logs, checkpoints and plots.

    A ``work_dir`` that already holds a run (``checkpoint.npz`` or ``best.npz``) is
    refused, so no run is overwritten by accident; ``overwrite=True`` deletes that run's
    files and starts afresh there. Without it, a ``metrics.jsonl`` or
    ``learning_curve.png`` already in the folder (of a run that saved nothing) is renamed
    to ``metrics.before-<time>.jsonl`` (...) and the new run starts its own.

    ``ds``: a :class:`rhn_np.data.Dataset` to train on instead of ``data.load(cfg.dataset)``
    (your own data: docs/training.md, "Your own data"); :meth:`resume` then needs it again.
    ``progress``: a tqdm progress bar. ``out``: where messages go (``print``; with the bar
    on, ``print`` is replaced by the bar's own ``write`` so the bar stays intact).
    """

    _RUN_FILES = ("checkpoint.npz", "best.npz", "metrics.jsonl", "learning_curve.png")

    def __init__(self, cfg: Config, work_dir, *, ds=None, progress: bool = True, out=print, overwrite: bool = False,
                 _resuming: bool = False):
        if not isinstance(cfg, Config):
            raise TypeError(f"cfg must be a train.Config (e.g. train.config_from_preset('demo')), got {type(cfg).__name__}")
        held = held_run(work_dir)
        if held and not (overwrite or _resuming):
            raise RunError(_held_message(work_dir, held))
        self.cfg = cfg.check()
        self.work_dir = os.fspath(work_dir)
        self.out = out
        self.progress = progress
        self.be = _backend.get(cfg.backend)  # before the data: an unusable backend is said first
        self.ds = ds if ds is not None else _data.load(cfg.dataset, root=cfg.data_dir)
        self.params = init_model(cfg, self.ds, self.be)
        self.opt = optim.SGD(cfg.lr) if cfg.optimizer == "sgd" else optim.Adam(cfg.lr)
        self.rng = np.random.default_rng([cfg.seed, 1])  # dropout masks and shuffling; the init used seed
        if self.ds.kind == "piano_roll":
            self.batches = SequenceBatches(self.ds.train, cfg.batch_size)
        else:
            self.batches = TokenBatches(self.ds.train, cfg.batch_size, cfg.bptt)
            if len(self.batches) == 0:
                raise ValueError(
                    f"the training split ({len(self.ds.train)} tokens) is too short for batch_size={cfg.batch_size} "
                    f"and bptt={cfg.bptt}: each of the rows needs more than bptt tokens")
        self._check_data()
        self._check_valid_split()  # now, not at the first validation after eval_every steps of training
        if os.path.exists(self.work_dir) and not os.path.isdir(self.work_dir):
            raise RunError(f"the work folder {self.work_dir} is a file; choose a folder (--work-dir)")
        if not _resuming:  # a fresh run: no records or checkpoints of an earlier one mixed in
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for name in self._RUN_FILES:
                old = os.path.join(self.work_dir, name)
                if not os.path.exists(old):
                    continue
                if overwrite:  # asked for: the earlier run's files go
                    os.remove(old)
                    out(f"removed {old} of an earlier run (overwrite=True)")
                else:  # files of a run that saved no checkpoint, or not ours: kept aside, never deleted
                    stem, ext = os.path.splitext(name)
                    kept = os.path.join(self.work_dir, f"{stem}.before-{stamp}{ext}")
                    os.replace(old, kept)
                    out(f"kept the earlier {name} of this folder as {kept}")
        try:  # only now: a run that cannot start leaves no folder
            os.makedirs(self.work_dir, exist_ok=True)
        except OSError as exc:
            raise RunError(f"cannot create the work folder {self.work_dir}: {exc.strerror or exc}; choose a "
                           "folder you can write to (--work-dir)") from exc
        self.step = 0
        self.best_nll = math.inf
        self.order = None  # the epoch's sequence order (JSB)
        self.state = None  # the carried (B, n) state (token data)
        self._captured = None  # the fast.CapturedLayer of the training windows (CuPy with cfg.cuda_graphs)
        self._graphs_on = self.be.name == "cupy" and cfg.cuda_graphs
        self._train_sum = None  # Σ NLL and count since the last "train" record
        self._train_count = 0
        self._rec_tokens, self._rec_time = 0, 0.0  # throughput since the last "train" record
        self._train_tokens, self._train_time = 0, 0.0  # ... and since the last validation
        self._last_eval_step = -1

    def _check_data(self) -> None:
        """Every split fits the model, checked once before training (not at a later step)."""
        ds = self.ds
        for split in ("train", "valid", "test"):
            part = getattr(ds, split)
            if ds.kind == "piano_roll":  # train: already checked by its SequenceBatches
                rolls = self.batches.sequences if split == "train" else _check_rolls(part, f"the {split} piano rolls of {ds.name}")
                if rolls[0].shape[1] != _data.N_KEYS:
                    raise ValueError(f"the {split} piano rolls of {ds.name} have {rolls[0].shape[1]} keys per frame; "
                                     f"the model reads {_data.N_KEYS} (MIDI notes {_data.LOWEST_NOTE}-"
                                     f"{_data.LOWEST_NOTE + _data.N_KEYS - 1})")
                continue
            part = _backend.to_host(part)
            if part.ndim != 1 or not np.issubdtype(part.dtype, np.integer):
                raise ValueError(f"the {split} split of {ds.name} must be a 1-D integer array of symbol ids, "
                                 f"got {part.dtype} {part.shape}")
            if len(part):
                lo, hi = int(np.min(part)), int(np.max(part))
                if lo < 0 or hi >= ds.vocab_size:
                    raise ValueError(f"the {split} split of {ds.name} holds symbol ids in [{lo}, {hi}], outside its "
                                     f"vocabulary of {ds.vocab_size} symbols")

    def _check_valid_split(self) -> None:
        cfg, valid = self.cfg, self.ds.valid
        if len(valid) == 0:
            raise ValueError(f"the validation split of {self.ds.name} is empty: the trainer validates every "
                             "eval_every steps and needs one")
        if self.ds.kind != "piano_roll" and len(valid) // cfg.eval_batch_size < 2:
            raise ValueError(f"the validation split ({len(valid)} tokens) cannot fill eval_batch_size="
                             f"{cfg.eval_batch_size} rows of at least 2 tokens; use a smaller {_label('eval_batch_size')}")

    # -- bookkeeping ------------------------------------------------------------
    @property
    def epoch_size(self) -> int:
        return len(self.batches)

    @property
    def epoch(self) -> int:
        return self.step // self.epoch_size

    def total_steps(self) -> int:
        cfg = self.cfg
        by_epochs = cfg.epochs * self.epoch_size
        return by_epochs if cfg.max_steps is None else min(by_epochs, cfg.max_steps)

    def _zero_state(self):
        xp = self.be.xp
        return xp.zeros((self.cfg.batch_size, self.cfg.hidden), dtype=self.params["R_H"].dtype, device=self.be.device)

    # -- one window -------------------------------------------------------------
    def train_step(self):
        """Train on the next window; returns the window's summed loss (a 0-d device array)."""
        cfg, xp, be = self.cfg, self.be.xp, self.be
        i = self.step % self.epoch_size
        if cfg.lr_schedule == "cosine":
            self.opt.lr = lr_at_step(self.step, cfg.lr, cfg.decay_steps)
        else:
            self.opt.lr = optim.lr_at_epoch(self.epoch, cfg.lr, cfg.max_epoch, cfg.lr_decay)
        keep = dict(keep_i=1 - cfg.drop_i, keep_h=1 - cfg.drop_h, keep_o=1 - cfg.drop_o)
        dtype = self.params["R_H"].dtype
        if self.ds.kind == "piano_roll":
            if i == 0 or self.order is None:
                self.order = self.batches.order(self.rng)
            x, y, mask = self.batches.window(i, self.order)
            masks = lm.draw_dense_masks(self.rng, x.shape[1], n_in=_data.N_KEYS, n=cfg.hidden, dtype=cfg.dtype, backend=be, **keep)
            xd, yd, md = (be.to_device(a, dtype=dtype) for a in (x, y, mask))
            s0 = xp.zeros((x.shape[1], cfg.hidden), dtype=dtype, device=be.device)
            loss, grads, _, stats = lm.dense_loss_and_grads(self.params, xd, yd, s0, masks, step_mask=md)
            nll_sum, n = loss * x.shape[1], float(mask.sum())
        else:
            if i == 0 or self.state is None:
                self.state = self._zero_state()  # reset at every epoch start
            x, y = self.batches.window(i)
            masks = lm.draw_masks(self.rng, x, vocab=self.ds.vocab_size, n_emb=self.params["E"].shape[1], n=cfg.hidden,
                                  keep_x=1 - cfg.drop_x, dtype=cfg.dtype, backend=be, **keep)
            masked = masks.get("i") is not None or masks.get("h") is not None
            loss, grads, s_last, stats = lm.lm_loss_and_grads(self.params, be.to_device(x), be.to_device(y),
                                                               self.state, masks, layer=self._layer(x.shape, masked))
            self.state = xp.asarray(s_last, copy=True)
            nll_sum, n = stats["nll_sum"], x.size
        grads = optim.add_l2_gradient(grads, self.params, cfg.weight_decay)
        grads, _ = optim.clip_global_norm(grads, cfg.clip)
        self.opt.step(self.params, grads)
        self.step += 1
        self._train_sum = nll_sum if self._train_sum is None else self._train_sum + nll_sum
        self._train_count += n
        self._train_tokens += n
        self._rec_tokens += n
        return loss

    def _layer(self, shape, masked):
        """The RHN layer of this window captured in CUDA graphs (CuPy and ``cuda_graphs``),
        else None (:func:`rhn_np.rhn.forward` / ``backward`` launch kernel by kernel).

        Captured on first use (a few hundred ms; all training windows of token data have
        one shape), and again if the shape, the masking or the parameter arrays changed
        (``resume`` replaces the arrays)."""
        if not self._graphs_on:
            return None
        from . import fast

        layer, params = self._captured, lm.layer_params(self.params)
        if layer is None or layer.shape != tuple(shape) or layer.masks != masked or not layer.holds(params):
            self._captured = layer = None  # let go of the old graphs' memory before capturing new ones
            self._captured = layer = fast.CapturedLayer(params, *shape, masks=masked)
        return layer

    def _add_time(self, seconds: float) -> None:
        self._train_time += seconds
        self._rec_time += seconds

    def log_train(self) -> dict | None:
        """Append a "train" record: mean training NLL (dropout on) since the last one."""
        if not self._train_count:
            return None
        train_nll = float(self._train_sum) / self._train_count
        if not math.isfinite(train_nll):
            raise TrainingDiverged(self._diverged_message())
        record = {"split": "train", **_metrics(train_nll, self.ds.level), "step": self.step, "epoch": self.epoch,
                  "lr": self.opt.lr, "tokens_per_s": self._rec_tokens / self._rec_time if self._rec_time > 0 else None,
                  "level": self.ds.level, "dataset": self.ds.name, "time": time.time()}
        _append_metrics(self.work_dir, record)
        self._train_sum, self._train_count, self._rec_tokens, self._rec_time = None, 0, 0, 0.0
        return record

    # -- evaluation, checkpoints --------------------------------------------------
    def validate(self) -> dict:
        """Evaluate on the validation split, log to metrics.jsonl, save checkpoints, plot."""
        cfg = self.cfg
        self.log_train()
        now = time.time()
        tokens_per_s = self._train_tokens / self._train_time if self._train_time > 0 else None
        common = {"step": self.step, "epoch": self.epoch, "lr": self.opt.lr, "tokens_per_s": tokens_per_s,
                  "level": self.ds.level, "dataset": self.ds.name}
        res = evaluate_dataset(self.params, self.ds, "valid", batch_size=cfg.eval_batch_size, bptt=cfg.bptt)
        if not math.isfinite(res["nll"]):
            raise TrainingDiverged(self._diverged_message())
        record = {"split": "valid", **res, **common, "time": time.time(), "eval_seconds": time.time() - now}
        _append_metrics(self.work_dir, record)
        self._train_tokens, self._train_time = 0, 0.0
        improved = res["nll"] < self.best_nll
        if improved:
            self.best_nll = res["nll"]
        latest = self.save("checkpoint.npz")
        if improved:  # the same state: copy the file rather than serialise it twice
            _checkpoint.copy(latest, os.path.join(self.work_dir, "best.npz"))
        plot_learning_curve(self.work_dir)
        self._last_eval_step = self.step
        return record

    def _diverged_message(self) -> str:
        ckpt = os.path.join(self.work_dir, "checkpoint.npz")
        kept = f"the last good checkpoint is {ckpt}" if os.path.exists(ckpt) else "no checkpoint had been written yet"
        return (f"the training loss became non-finite (NaN or inf) by step {self.step} (lr {self.opt.lr:g}); "
                f"stopped without saving the bad parameters; {kept}. Try a smaller --lr, a smaller clip or float64.")

    def _meta(self, opt_numbers: dict) -> dict:
        return {
            "trainer_format": TRAINER_FORMAT, "trainer_version": TRAINER_VERSION,
            "config": self.cfg.to_dict(), "step": self.step, "epoch": self.epoch, "best_nll": self.best_nll
            if math.isfinite(self.best_nll) else None,
            "optimizer": opt_numbers, "rng": _rng_state(self.rng),
            "order": None if self.order is None else [int(j) for j in self.order],
            "dataset": {"name": self.ds.name, "kind": self.ds.kind, "level": self.ds.level,
                        "vocab": list(self.ds.vocab) if self.ds.kind == "tokens" else None},
        }

    def save(self, name: str = "checkpoint.npz") -> str:
        """Write the whole training state atomically to ``work_dir/name``."""
        opt_numbers, opt_arrays = _flatten_opt(self.opt)  # one host copy of the moments
        arrays = {f"param.{k}": v for k, v in self.params.items()}
        arrays.update(opt_arrays)
        if self.state is not None:
            arrays["state.s"] = self.state
        return _checkpoint.save(os.path.join(self.work_dir, name), arrays, self._meta(opt_numbers))

    @classmethod
    def resume(cls, work_dir, *, overrides: dict | None = None, progress=True, out=print, ds=None) -> Trainer:
        """Continue the run saved in ``work_dir/checkpoint.npz``.

        ``overrides`` may change how long the run goes and where it runs
        (``max_steps``, ``epochs``, ``time_limit``, ``eval_every``, ``log_every``,
        ``backend``, ``data_dir``, ``cuda_graphs``); changing the model, the data or the recipe raises a
        :class:`RunError`.
        """
        path = os.path.join(os.fspath(work_dir), "checkpoint.npz")
        if not os.path.exists(path):
            raise RunError(f"--resume: there is no checkpoint.npz in {work_dir}; start the run without --resume")
        try:
            arrays, meta = _checkpoint.load(path)
        except _checkpoint.CheckpointError as exc:
            raise _checkpoint.CheckpointError(
                f"{exc}. Resuming needs it (the optimiser's state is only there); best.npz, if the run has one, "
                "still serves rhn-np evaluate and sample, and a new run starts without --resume") from exc
        _check_run_meta(meta, path)
        stored = dict(meta["config"])
        allowed = {"max_steps", "epochs", "time_limit", "eval_every", "log_every", "backend", "data_dir", "cuda_graphs"}
        for k, v in (overrides or {}).items():
            if k not in _CONFIG_FIELDS:
                raise RunError(f"unknown setting {k!r} in overrides; settings: {', '.join(sorted(_CONFIG_FIELDS))}")
            if v is None or stored.get(k) == v:
                continue
            if k not in allowed:
                raise RunError(f"--resume continues the run as it was configured; {_label(k)} was {stored.get(k)!r} "
                               f"and cannot change to {v!r} (allowed to change: "
                               f"{', '.join(_label(a) for a in sorted(allowed))})")
            stored[k] = v
        if stored.get("emb") is None and "param.E" in arrays:
            stored["emb"] = int(arrays["param.E"].shape[1])  # the width the run has, whatever rule chose it
        cfg = Config.from_dict(stored).check()
        self = cls(cfg, work_dir, progress=progress, out=out, ds=ds, _resuming=True)
        check_run_data(meta, self.ds)
        self._restore(arrays, meta)
        return self

    def _restore(self, arrays: dict, meta: dict) -> None:
        for k in self.params:
            a = arrays.get(f"param.{k}")
            if a is None or tuple(a.shape) != tuple(self.params[k].shape):
                raise _checkpoint.CheckpointError(f"checkpoint parameter {k!r} is missing or has the wrong shape")
            self.params[k] = self.be.to_device(a, dtype=self.params[k].dtype)
        self.opt.load_state_dict(_unflatten_opt(meta["optimizer"], arrays))
        self.rng = _rng_from_state(meta["rng"])
        self.step = int(meta["step"])
        self.best_nll = math.inf if meta.get("best_nll") is None else float(meta["best_nll"])
        self.order = None if meta.get("order") is None else np.asarray(meta["order"], np.int64)
        if "state.s" in arrays and self.step % self.epoch_size != 0:
            self.state = self.be.to_device(arrays["state.s"], dtype=self.params["R_H"].dtype)
        self._last_eval_step = self.step

    # -- the loop -----------------------------------------------------------------
    def run(self) -> dict:
        """Train until ``epochs``/``max_steps``/``time_limit``; returns a summary dict.

        Raises :class:`TrainingDiverged` on a non-finite loss and re-raises
        ``KeyboardInterrupt`` after saving a checkpoint (``summary`` is then on
        ``self.interrupted_summary``).
        """
        if self.progress:
            from tqdm.auto import tqdm  # a widget in notebooks, text in terminals
        else:
            from tqdm import tqdm  # disabled below; no notebook-widget import

        cfg = self.cfg
        total = self.total_steps()
        start_step, t_start = self.step, time.time()
        eval_every = cfg.eval_every or self.epoch_size
        bar = tqdm(total=total, initial=self.step, disable=None if self.progress else True, unit="step", dynamic_ncols=True,
                   desc=f"{self.ds.name}")
        running = None
        say = bar.write if self.progress and self.out is print else self.out
        with _DeferredInterrupt() as interrupt:
            try:
                while self.step < total:
                    t0 = time.perf_counter()
                    loss = self.train_step()
                    running = loss if running is None else running + loss
                    if self.step % cfg.log_every == 0 or self.step == total:
                        value = float(running)  # host sync only here, where a number is printed
                        running = None
                        self._add_time(time.perf_counter() - t0)
                        if not math.isfinite(value):
                            raise TrainingDiverged(self._diverged_message())
                        tps = self._rec_tokens / self._rec_time if self._rec_time > 0 else 0.0
                        shown = float(self._train_sum) / max(self._train_count, 1)
                        if self.ds.level == "char":
                            bar.set_postfix_str(f"bpc {shown / LN2:.3f}, {tps:,.0f} tok/s")
                        else:
                            bar.set_postfix_str(f"nll {shown:.3f}, {tps:,.0f} tok/s")
                        if self.step % (10 * cfg.log_every) == 0:
                            self.log_train()
                    else:
                        self._add_time(time.perf_counter() - t0)
                    bar.update(1)
                    if interrupt.requested:
                        break
                    if self.step % eval_every == 0 or self.step == total:
                        say(_describe(self.validate()))
                    if cfg.time_limit is not None and time.time() - t_start > 60.0 * cfg.time_limit:
                        say(f"time limit of {cfg.time_limit:g} min reached at step {self.step}")
                        break
            finally:
                bar.close()
            if interrupt.requested:
                # Between two steps: parameters, optimiser, state and generator agree.
                self.log_train()
                path = self.save("checkpoint.npz")
                self.out(f"interrupted at step {self.step}: saved {path}; continue with: "
                         f"rhn-np train --work-dir {self.work_dir} --resume")
                self.interrupted_summary = self._summary(start_step, t_start)
                raise KeyboardInterrupt
        if self._last_eval_step != self.step:
            self.out(_describe(self.validate()))
        return self._summary(start_step, t_start)

    def _summary(self, start_step, t_start) -> dict:
        records = read_metrics(self.work_dir)
        valid = [r for r in records if r["split"] == "valid"]
        elapsed = time.time() - t_start
        steps = self.step - start_step
        tokens_per_step = (self.cfg.batch_size * self.cfg.bptt) if self.ds.kind == "tokens" else None
        return {
            "steps": self.step, "steps_this_run": steps, "epoch": self.epoch, "seconds": elapsed,
            "tokens_per_s": (steps * tokens_per_step / elapsed) if tokens_per_step and elapsed > 0 else None,
            "last_valid": valid[-1] if valid else None,
            "best_valid_nll": self.best_nll if math.isfinite(self.best_nll) else None,
            "work_dir": self.work_dir, "level": self.ds.level,
        }


def _describe(rec: dict) -> str:
    parts = [f"step {rec['step']}", f"epoch {rec['epoch']}", f"{rec['split']} nll {rec['nll']:.4f}"]
    if rec.get("level") == "char":
        parts.append(f"bpc {rec['bpc']:.4f}")
    elif rec.get("ppl") is not None:
        parts.append(f"ppl {rec['ppl']:.2f}")
    if rec.get("tokens_per_s"):
        parts.append(f"{rec['tokens_per_s']:,.0f} tok/s")
    return ", ".join(parts)


def _check_run_meta(meta: dict, path) -> None:
    if meta.get("trainer_format") != TRAINER_FORMAT:
        raise _checkpoint.CheckpointError(f"{path} is an rhn_np checkpoint but not one of a training run "
                                          "(no run metadata); it cannot be resumed or evaluated as a run")
    if meta.get("trainer_version") != TRAINER_VERSION:
        raise _checkpoint.CheckpointError(f"{path} was written by run format version {meta.get('trainer_version')}; "
                                          f"this rhn_np reads version {TRAINER_VERSION}")


def train(cfg: Config, work_dir, *, resume: bool = False, progress: bool = True) -> dict:
    """Train ``cfg`` in ``work_dir`` (or continue it with ``resume=True``); returns the summary."""
    if resume:
        trainer = Trainer.resume(work_dir, overrides=cfg.to_dict(), progress=progress)
    else:
        trainer = Trainer(cfg, work_dir, progress=progress)  # refuses a folder that holds a run
    return trainer.run()


def dataset_for_sampling(meta: dict):
    """A :class:`rhn_np.data.Dataset` with the run's vocabulary and empty splits.

    Enough to encode a prime and decode samples without loading the data again.
    """
    d = meta.get("dataset") or {}
    if d.get("kind") != "tokens" or not d.get("vocab"):
        raise RunError(f"the run was trained on {d.get('name')!r} ({d.get('kind')}); only word and character "
                       "models can be sampled as text")
    empty = np.zeros(0, np.int32)
    return _data.Dataset(name=d["name"], kind="tokens", train=empty, valid=empty, test=empty, vocab=list(d["vocab"]),
                         level=d["level"])


def load_run(work_dir, which: str = "best", backend="numpy"):
    """Parameters, config and data-set description of a finished run.

    Returns ``(params, cfg, meta)`` from ``work_dir/best.npz`` (``which="best"``) or
    ``checkpoint.npz`` (``"latest"``); the arrays go to ``backend``.
    """
    name = {"best": "best.npz", "latest": "checkpoint.npz"}.get(which)
    if name is None:
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    path = os.path.join(os.fspath(work_dir), name)
    if os.path.isfile(work_dir):
        raise RunError(f"{work_dir} is a file; give the run's folder, the one holding best.npz and checkpoint.npz "
                       f"(rhn-np: --work-dir {os.path.dirname(os.fspath(work_dir)) or '.'})")
    if not os.path.exists(path):
        if which == "best" and os.path.exists(os.path.join(os.fspath(work_dir), "checkpoint.npz")):
            raise RunError(
                f"no best.npz in {work_dir} yet (it is written at the first validation): use the latest checkpoint "
                f"(rhn-np: --checkpoint latest; Python: which='latest'), or continue training "
                f"(rhn-np train --work-dir {work_dir} --resume)")
        raise RunError(f"no {name} in {work_dir}: train a model there first (rhn-np train --work-dir {work_dir})")
    try:
        arrays, meta = _checkpoint.load(path, backend=backend)
    except _checkpoint.CheckpointError as exc:
        other, other_which = {"best": ("checkpoint.npz", "latest"), "latest": ("best.npz", "best")}[which]
        if not os.path.exists(os.path.join(os.fspath(work_dir), other)):
            raise
        raise _checkpoint.CheckpointError(
            f"{exc}. The run's other checkpoint, {other}, may still be readable (rhn-np: --checkpoint "
            f"{other_which}; Python: which={other_which!r})") from exc
    _check_run_meta(meta, path)
    params = {k[len("param."):]: a for k, a in arrays.items() if k.startswith("param.")}
    cfg = Config.from_dict(meta["config"])
    return params, cfg, meta
