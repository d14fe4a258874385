"""What a training run does with its data: batches, the model for it, one training window,
evaluation and sampling; for token streams (PTB, text8, enwik8, pydoc) and piano rolls (JSB).

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

**Tasks** (:func:`task_for`): :class:`TokenTask` and :class:`RollTask` give the trainer
(:mod:`rhn_np.train`) one interface: the model's parameters, one training window's loss
and gradients, what a checkpoint keeps of the data's position, and validation. The
trainer never asks which data, nor which cell, it has.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from . import backend as _backend
from . import cells, checks, lm
from . import data as _data

__all__ = [
    "TokenBatches",
    "SequenceBatches",
    "emb_width",
    "model_shapes",
    "count_params",
    "resolve_width",
    "init_model",
    "metrics",
    "evaluate",
    "evaluate_sequences",
    "evaluate_dataset",
    "sample",
    "TokenTask",
    "RollTask",
    "task_for",
    "LN2",
]

LN2 = math.log(2.0)


# ----------------------------------------------------------------------------
# Batching
# ----------------------------------------------------------------------------
class TokenBatches:
    """The authors' layout of a token stream for truncated BPTT (``ptb_iterator``).

    ``rows = stream[: B·L].reshape(B, L)`` with ``L = len(stream) // B``; window ``i``
    is ``x = rows[:, i·T : (i+1)·T]`` and ``y = rows[:, i·T+1 : (i+1)·T+1]``,
    returned time-major as ``(T, B)`` host arrays. ``len(self)`` = ``(L - 1) // T``
    windows per epoch (the tail that does not fill a window is left out in training;
    :meth:`all_windows` adds it as a shorter last window, for evaluation).
    """

    def __init__(self, stream, batch_size: int, bptt: int):
        stream = np.asarray(_backend.to_host(stream))  # any backend's array, or a list
        checks.token_stream(stream)
        self.batch_size, self.bptt = checks.positive_int("batch_size", batch_size), checks.positive_int("bptt", bptt)
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
        self.sequences = checks.piano_rolls(sequences, "sequences")
        self.batch_size = checks.positive_int("batch_size", batch_size)
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
# The model of a configuration on a data set
# ----------------------------------------------------------------------------
def emb_width(cfg, vocab_size: int, hidden: int | None = None) -> int:
    """The authors' rule (their ``rhn.py``): the vocabulary size when untied and smaller
    than ``hidden``, one-hot-sized inputs as for the paper's character-level models,
    else ``hidden``; ``cfg.emb`` overrides it."""
    hidden = cfg.hidden if hidden is None else hidden
    if cfg.emb is not None:
        return cfg.emb
    if not cfg.tied and vocab_size < hidden:
        return vocab_size
    return hidden


def model_shapes(cfg, ds, hidden: int | None = None) -> dict:
    """Every parameter's shape of ``cfg``'s model on ``ds`` (at width ``hidden``, default
    ``cfg.hidden``), without building it."""
    n = cfg.hidden if hidden is None else hidden
    common = dict(layers=cfg.layers, coupled=cfg.coupled)
    if ds.kind == "piano_roll":
        return lm.param_shapes(cfg.cell, _data.N_KEYS, n, cfg.depth, _data.N_KEYS, **common)
    V = ds.vocab_size
    return lm.param_shapes(cfg.cell, emb_width(cfg, V, n), n, cfg.depth, V, vocab=V, tied=cfg.tied, **common)


def count_params(cfg, ds, hidden: int | None = None) -> int:
    """Number of parameters of ``cfg``'s model on ``ds``."""
    return sum(math.prod(s) for s in model_shapes(cfg, ds, hidden).values())


def resolve_width(cfg, ds):
    """``cfg`` with ``hidden`` set from its parameter budget ``cfg.params`` (unchanged when
    unset): the width whose model on ``ds`` is closest to it (:func:`rhn_np.cells.matched_width`)."""
    if cfg.params is None:
        return cfg
    n, _ = cells.matched_width(cfg.cell, cfg.depth, None, None, cfg.params, count=lambda n: count_params(cfg, ds, n))
    checks.budget_tying(cfg.tied, cfg.emb, n, cfg.params)
    return dataclasses.replace(cfg, hidden=n)


def init_model(cfg, ds, backend=None):
    """Initial parameters for ``cfg`` on data set ``ds`` (word/char or piano-roll model)."""
    be = _backend.get(backend if backend is not None else cfg.backend)
    cfg = resolve_width(cfg, ds)
    common = dict(cell=cfg.cell, layers=cfg.layers, coupled=cfg.coupled, transform_bias=cfg.transform_bias,
                  init_scale=cfg.init_scale, seed=cfg.seed, dtype=cfg.dtype, backend=be)
    if ds.kind == "piano_roll":
        return lm.init_dense_params(_data.N_KEYS, cfg.hidden, cfg.depth, **common)
    return lm.init_lm_params(ds.vocab_size, emb_width(cfg, ds.vocab_size), cfg.hidden, cfg.depth, tied=cfg.tied,
                             **common)


# ----------------------------------------------------------------------------
# Evaluation and sampling
# ----------------------------------------------------------------------------
def metrics(nll: float, level: str) -> dict:
    """``{nll, ppl, bpc}`` of a mean NLL in nats (per token; per time step at the frame level)."""
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


def evaluate(params, stream, *, batch_size: int = 32, bptt: int = 50, level: str = "word", progress=None,
             impl: str = "auto") -> dict:
    """Dropout-off NLL of a token stream: ``{"nll", "ppl", "bpc", "n_tokens"}``.

    The stream is laid out in ``batch_size`` rows (:class:`TokenBatches`); the state is
    carried over all windows, the last shorter window included. ``batch_size=1`` is the
    authors' reported evaluation (one pass over the split in order). ``impl``: the
    cells' (:func:`rhn_np.rhn.forward`).
    """
    _vocab_of(params, "evaluate")
    be = _backend.of(params["E"])
    xp = be.xp
    batches = TokenBatches(stream, batch_size, bptt)
    s = lm.zero_state(params, batch_size)
    total = None
    n_tokens = 0
    for x, y in batches.all_windows():
        nll, s = lm.lm_nll(params, be.to_device(x), be.to_device(y), s, impl=impl)  # (T, B)
        part = xp.sum(xp.astype(nll, xp.float64))
        total = part if total is None else total + part
        n_tokens += x.size
        if progress is not None:
            progress(x.size)
    value = float(total) / n_tokens  # the one host sync of the evaluation
    return {**metrics(value, level), "n_tokens": n_tokens}


def evaluate_sequences(params, sequences, *, batch_size: int = 16, impl: str = "auto") -> dict:
    """Dropout-off NLL per time step (summed over the 88 keys) of piano rolls."""
    be = _backend.of(params["W_out"])
    dtype = params["W_out"].dtype
    batches = SequenceBatches(sequences, batch_size)
    order = batches.order(None)
    total, n_steps = None, 0.0
    for i in range(len(batches)):
        x, y, mask = batches.window(i, order)
        xd, yd, md = (be.to_device(a, dtype=dtype) for a in (x, y, mask))
        s0 = lm.zero_state(params, x.shape[1])
        logits, _ = lm.dense_logits(params, xd, s0, impl=impl)
        loss, _ = lm.sigmoid_bernoulli_nll(logits, yd, md)
        part = loss * x.shape[1]
        total = part if total is None else total + part
        n_steps += float(mask.sum())
    value = float(total) / n_steps
    return {**metrics(value, "frame"), "n_tokens": int(n_steps)}


def evaluate_dataset(params, ds, split: str = "valid", *, batch_size: int = 32, bptt: int = 50, progress=None,
                     impl: str = "auto") -> dict:
    """:func:`evaluate` (token data) or :func:`evaluate_sequences` (JSB) on ``ds.<split>``."""
    if split not in ("train", "valid", "test"):
        raise ValueError(f"split must be 'train', 'valid' or 'test', got {split!r}")
    part = getattr(ds, split)
    if ds.kind == "piano_roll":
        if not isinstance(params, dict) or "E" in params or "W_out" not in params:
            raise ValueError(f"{ds.name} holds piano rolls: it needs a piano-roll model (lm.init_dense_params), "
                             "not a word/char model")
        return evaluate_sequences(params, part, batch_size=batch_size, impl=impl)
    _check_vocab_size(params, ds, "evaluate_dataset", "evaluate on the data set the model was trained on")
    return evaluate(params, part, batch_size=batch_size, bptt=bptt, level=ds.level, progress=progress, impl=impl)


def _start_symbol(ds, rng) -> int:
    """The end-of-line symbol (a sample then starts like a new line), else a random one."""
    for sym in ("<eos>", "\n"):
        if sym in ds.vocab:
            return list(ds.vocab).index(sym)
    return int(rng.integers(ds.vocab_size))


def sample(params, ds, *, length: int = 300, temperature: float = 1.0, prime: str | None = None, seed: int = 0,
           impl: str = "auto") -> str:
    """Generate text from a word/char model: prime the state, then draw ``length`` symbols.

    Each symbol is drawn from ``softmax(logits / temperature)`` (host generator
    ``seed``) and fed back as the next input. Returns the prime followed by the sample,
    decoded by ``ds.decode``.
    """
    if ds.kind != "tokens":
        raise ValueError("sampling needs a word or character model; JSB piano-roll models have no text to sample")
    if not (checks.is_real(temperature) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    length = checks.positive_int("length", length)
    _check_vocab_size(params, ds, "sample", "sample with the data set (or run) the model was trained on")
    be = _backend.of(params["E"])
    rng = _backend.host_rng(seed)
    ids = list(ds.encode(prime)) if prime else []
    if not ids:  # start after an end of line, like a new sentence / paragraph
        seed_ids, out = [_start_symbol(ds, rng)], []
    else:
        seed_ids, out = ids, list(ids)
    s = lm.zero_state(params, 1)
    logits, s = lm.lm_logits(params, be.to_device(np.asarray(seed_ids, np.int64)[:, None]), s, impl=impl)
    for _ in range(length):
        z = _backend.to_host(logits[-1, 0, :]).astype(np.float64) / temperature  # (V,)
        p = np.exp(z - z.max())
        nxt = int(rng.choice(len(p), p=p / p.sum()))
        out.append(nxt)
        logits, s = lm.lm_logits(params, be.to_device(np.asarray([[nxt]], np.int64)), s, impl=impl)
    return ds.decode(np.asarray(out, np.int64))




# ----------------------------------------------------------------------------
# Tasks: what the trainer does with each kind of data
# ----------------------------------------------------------------------------
class _Task:
    """What :class:`rhn_np.train.Trainer` needs of a data set (see :func:`task_for`).

    ``train_window(params, i, rng, layer_for)`` trains on window ``i`` of the epoch and
    returns ``(loss, grads, nll_sum, count)``; ``validate(params)`` scores the
    validation split; ``position()`` / ``restore(...)`` are what a checkpoint keeps of the
    place in the data (the carried state, the epoch's order).
    """

    def __init__(self, cfg, ds, be):
        self.cfg, self.ds, self.be = cfg, ds, be
        self.batches = self._batches()
        self._check_data()
        self._check_valid_split()

    def __len__(self) -> int:
        return len(self.batches)

    def init_params(self):
        return init_model(self.cfg, self.ds, self.be)

    def _keep(self):
        cfg = self.cfg
        return dict(keep_i=1 - cfg.drop_i, keep_h=1 - cfg.drop_h, keep_o=1 - cfg.drop_o, layers=cfg.layers,
                    dtype=cfg.dtype, backend=self.be)

    def validate(self, params) -> dict:
        cfg = self.cfg
        return evaluate_dataset(params, self.ds, "valid", batch_size=cfg.eval_batch_size, bptt=cfg.bptt,
                                impl=cfg.impl)

    def _check_valid_split(self) -> None:
        if len(self.ds.valid) == 0:
            raise ValueError(f"the validation split of {self.ds.name} is empty: the trainer validates every "
                             "eval_every steps and needs one")


class TokenTask(_Task):
    """Token streams: the authors' rows and windows, the state carried from window to window."""

    kind = "tokens"

    def _batches(self):
        cfg = self.cfg
        batches = TokenBatches(self.ds.train, cfg.batch_size, cfg.bptt)
        if len(batches) == 0:
            raise ValueError(
                f"the training split ({len(self.ds.train)} tokens) is too short for batch_size={cfg.batch_size} "
                f"and bptt={cfg.bptt}: each of the rows needs more than bptt tokens")
        self.state = None  # the carried state
        return batches

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.cfg.bptt

    def train_window(self, params, i, rng, layer_for):
        be, cfg = self.be, self.cfg
        if i == 0 or self.state is None:
            self.state = lm.zero_state(params, cfg.batch_size)  # reset at every epoch start
        x, y = self.batches.window(i)
        masks = lm.draw_masks(rng, x, vocab=self.ds.vocab_size, n_emb=params["E"].shape[1], n=cfg.hidden,
                              keep_x=1 - cfg.drop_x, **self._keep())
        masked = any(m is not None for k, m in masks.items() if k not in ("x", "o"))
        loss, grads, s_last, stats = lm.lm_loss_and_grads(params, be.to_device(x), be.to_device(y), self.state, masks,
                                                           layer=layer_for(x.shape, masked), impl=cfg.impl)
        self.state = be.xp.asarray(s_last, copy=True)
        return loss, grads, stats["nll_sum"], x.size

    def position(self):
        return ({} if self.state is None else {"state.s": self.state}), {"order": None}

    def restore(self, arrays, meta, step, dtype) -> None:
        if "state.s" in arrays and step % len(self) != 0:
            self.state = self.be.to_device(arrays["state.s"], dtype=dtype)

    def _check_data(self) -> None:
        """Every split fits the model, checked once before training (not at a later step)."""
        ds = self.ds
        for split in ("train", "valid", "test"):
            part = _backend.to_host(getattr(ds, split))
            if part.ndim != 1 or not np.issubdtype(part.dtype, np.integer):
                raise ValueError(f"the {split} split of {ds.name} must be a 1-D integer array of symbol ids, "
                                 f"got {part.dtype} {part.shape}")
            if len(part):
                lo, hi = int(np.min(part)), int(np.max(part))
                if lo < 0 or hi >= ds.vocab_size:
                    raise ValueError(f"the {split} split of {ds.name} holds symbol ids in [{lo}, {hi}], outside its "
                                     f"vocabulary of {ds.vocab_size} symbols")

    def _check_valid_split(self) -> None:
        super()._check_valid_split()
        valid, rows = self.ds.valid, self.cfg.eval_batch_size
        if len(valid) // rows < 2:
            raise ValueError(f"the validation split ({len(valid)} tokens) cannot fill eval_batch_size={rows} rows of "
                             "at least 2 tokens; use a smaller eval_batch_size (--eval-batch-size)")


class RollTask(_Task):
    """Piano rolls: shuffled, padded batches of whole sequences, each from a zero state."""

    kind = "piano_roll"
    tokens_per_step = None

    def _batches(self):
        self.order = None  # the epoch's sequence order
        return SequenceBatches(self.ds.train, self.cfg.batch_size)

    def train_window(self, params, i, rng, layer_for):
        be, cfg = self.be, self.cfg
        if i == 0 or self.order is None:
            self.order = self.batches.order(rng)
        x, y, mask = self.batches.window(i, self.order)
        masks = lm.draw_dense_masks(rng, x.shape[1], n_in=_data.N_KEYS, n=cfg.hidden, **self._keep())
        dtype = params["b_out"].dtype
        xd, yd, md = (be.to_device(a, dtype=dtype) for a in (x, y, mask))
        loss, grads, _, _ = lm.dense_loss_and_grads(params, xd, yd, lm.zero_state(params, x.shape[1]), masks,
                                                    step_mask=md, impl=cfg.impl)
        return loss, grads, loss * x.shape[1], float(mask.sum())

    def position(self):
        return {}, {"order": None if self.order is None else [int(j) for j in self.order]}

    def restore(self, arrays, meta, step, dtype) -> None:
        self.order = None if meta.get("order") is None else np.asarray(meta["order"], np.int64)

    def _check_data(self) -> None:
        ds = self.ds
        for split in ("train", "valid", "test"):  # train: already checked by its SequenceBatches
            part = getattr(ds, split)
            rolls = self.batches.sequences if split == "train" else checks.piano_rolls(
                part, f"the {split} piano rolls of {ds.name}")
            if rolls[0].shape[1] != _data.N_KEYS:
                raise ValueError(f"the {split} piano rolls of {ds.name} have {rolls[0].shape[1]} keys per frame; "
                                 f"the model reads {_data.N_KEYS} (MIDI notes {_data.LOWEST_NOTE}-"
                                 f"{_data.LOWEST_NOTE + _data.N_KEYS - 1})")


def task_for(cfg, ds, be):
    """The task of data set ``ds``: :class:`RollTask` for piano rolls, else :class:`TokenTask`."""
    return (RollTask if ds.kind == "piano_roll" else TokenTask)(cfg, ds, be)
