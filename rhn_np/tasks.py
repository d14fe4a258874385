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
per character = ``nll / ln 2``, ``nll`` in nats per token. :func:`evaluate_mc` is the
authors' MC-dropout evaluation: batch-1 passes with dropout on, their per-token
probabilities averaged, the passes run as the rows of one batch.

**Tasks** (:func:`task_for`): :class:`TokenTask` and :class:`RollTask` give the trainer
(:mod:`rhn_np.train`) one interface: the model's parameters, one training window's loss
and gradients, what a checkpoint keeps of the data's position, and validation. The
trainer never asks which data, nor which cell, it has.
"""

from __future__ import annotations

import dataclasses
import math
import os

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
    "InsufficientMemory",
    "memory_estimate",
    "require_memory",
    "THREAD_WORK",
    "cpu_cores",
    "blas_threads",
    "BLAS_THREAD_VARIABLES",
    "threads_for",
    "metrics",
    "evaluate",
    "evaluate_sequences",
    "evaluate_dataset",
    "evaluate_mc",
    "mc_dropout_masks",
    "MC_REJECT_PPL",
    "MC_MEMORY",
    "MC_WINDOW_BYTES",
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
        checks.plain("stream", stream)
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
# What a model costs: memory and BLAS threads
# ----------------------------------------------------------------------------
class InsufficientMemory(MemoryError):
    """The memory a run needs (:func:`memory_estimate`) is more than the device has free."""


def _gate_matrices(cfg) -> int:
    """k: the recurrent matrices of one micro-layer (2 for the coupled RHN, 3 uncoupled, 1 for a DT-RNN),
    counted from the cell's parameter shapes (the ``(depth, n, n)`` arrays)."""
    shapes = cells.get(cfg.cell).param_shapes(1, cfg.hidden, cfg.depth, coupled=cfg.coupled)
    return sum(1 for s in shapes.values() if len(s) == 3)


def _longest(sequences) -> int:
    return max((len(s) for s in sequences), default=1)


def memory_estimate(cfg, ds) -> dict:
    """Bytes that training ``cfg``'s model on ``ds`` needs, estimated before anything is
    allocated: ``{"params", "optimizer", "activations", "total"}``.

    With ``P`` parameters (:func:`count_params`), ``k`` recurrent matrices per micro-layer
    (2 for the coupled RHN, 3 uncoupled, 1 for a DT-RNN), depth ``L``, width ``n``,
    ``K`` layers, inputs of width ``e`` (the embedding; 88 keys for piano rolls) and ``V``
    outputs, in numbers of ``cfg.dtype``:

    * ``params``: ``3 P``, the parameters, their gradients and the clipped gradients;
    * ``optimizer``: Adam's two moments ``2 P``, SGD's velocities ``P`` with momentum,
      none for plain SGD;
    * ``activations``: the larger of a training window, ``T·B·(K·(L·n·(2k + 1) +
      n·(k + 3)) + 2e + 3V)`` (the forward's cache of ``k + 1`` arrays per micro-layer,
      BPTT's ``∂L/∂a`` of ``k``, the input projection, outputs and their gradients, the
      embedded inputs and their gradient, the logits, the softmax and its gradient), and a
      validation window, ``T·B_eval·(K·(L + 1)·n·(k + 1) + e + 2V)`` (forward only).
      ``T`` is ``bptt`` for token streams and the longest sequence for piano rolls.

    Data, code and the interpreter come on top. Against the peak that ``tracemalloc``
    measures over initialisation, training steps and a validation it is within a factor
    of 2 either way (``tests/test_robust_cli.py``).
    """
    P = count_params(cfg, ds)
    itemsize = np.dtype(cfg.dtype).itemsize
    k, L, n, K = _gate_matrices(cfg), cfg.depth, cfg.hidden, cfg.layers
    if ds.kind == "piano_roll":
        e = V = _data.N_KEYS
        T_train, T_eval = _longest(ds.train) - 1, _longest(ds.valid) - 1
    else:
        e, V = emb_width(cfg, ds.vocab_size), ds.vocab_size
        T_train = T_eval = cfg.bptt
    train = T_train * cfg.batch_size * (K * (L * n * (2 * k + 1) + n * (k + 3)) + 2 * e + 3 * V)
    valid = T_eval * cfg.eval_batch_size * (K * (L + 1) * n * (k + 1) + e + 2 * V)
    moments = 2 if cfg.optimizer == "adam" else (1 if getattr(cfg, "momentum", 0.0) else 0)
    out = {"params": 3 * P * itemsize, "optimizer": moments * P * itemsize,
           "activations": max(train, valid) * itemsize}
    out["total"] = sum(out.values())
    return out


def format_bytes(nbytes: float) -> str:
    """``21.3 MiB``, ``1.5 GiB``: a size for messages."""
    return f"{nbytes / 2**30:,.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:,.1f} MiB"


def require_memory(cfg, ds, backend=None) -> dict:
    """:func:`memory_estimate` of ``cfg`` on ``ds``; raises :class:`InsufficientMemory`,
    with the estimate, when it exceeds the memory the backend's device has available
    (:func:`rhn_np.backend.available_memory`; nothing is refused where that is unknown)."""
    be = _backend.get(backend if backend is not None else cfg.backend)
    need = memory_estimate(cfg, ds)
    free = _backend.available_memory(be)
    if free is not None and need["total"] > free:
        where = "GPU memory" if be.name == "cupy" else "memory"
        raise InsufficientMemory(
            f"this model needs about {format_bytes(need['total'])} of {where} (parameters and gradients "
            f"{format_bytes(need['params'])}, optimiser {format_bytes(need['optimizer'])}, activations of a "
            f"window {format_bytes(need['activations'])}) but {format_bytes(free)} is available: use a smaller "
            "model or window (--hidden, --depth, --batch-size, --bptt, --eval-batch-size) or free memory")
    return need


#: Multiply-adds per thread below which a BLAS thread costs more than it saves: OpenBLAS
#: wakes and joins its threads at every product (microseconds each), which a product of a
#: few million multiply-adds per thread pays back.
THREAD_WORK = 4_000_000


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def blas_threads(cfg, rows: int, cores: int | None = None) -> int:
    """BLAS threads for ``cfg``'s model multiplying ``rows`` rows (the batch; 1 to sample).

    The product on every step's sequential path is the micro-layer's ``(rows, n) @ (n,
    k·n)``: ``rows·k·n²`` multiply-adds. Threads: ``max(1, min(cores - 1, rows·k·n² //
    THREAD_WORK))``: one until each thread gets :data:`THREAD_WORK` multiply-adds of it,
    and never every core: OpenBLAS's threads wait for one another at the end of each
    product, so when another program takes a core from one of them, every product waits
    for it (training ran 10-18 times slower on a busy 2-core machine). On 2 cores this is
    one thread for every model; with more, only wide models (``ptb_sota``, the character
    presets) use more. ``cores``: default :func:`cpu_cores`.
    """
    cores = cpu_cores() if cores is None else checks.positive_int("cores", cores)
    work = checks.positive_int("rows", rows) * _gate_matrices(cfg) * cfg.hidden ** 2
    return max(1, min(cores - 1, work // THREAD_WORK))


#: Environment variables that set the BLAS's threads; when one is set, it is obeyed.
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")


def threads_for(cfg, rows: int, threads: int | None = None) -> int | None:
    """The BLAS threads to use: ``threads`` when given (``--threads``), else None (leave
    the BLAS as it is) when the environment sets them (:data:`BLAS_THREAD_VARIABLES`),
    else :func:`blas_threads`."""
    if threads is not None:
        return checks.positive_int("threads", threads)
    if any(os.environ.get(v) for v in BLAS_THREAD_VARIABLES):
        return None
    return blas_threads(cfg, rows)


# ----------------------------------------------------------------------------
# Evaluation and sampling
# ----------------------------------------------------------------------------
def metrics(nll: float, level: str) -> dict:
    """``{nll, ppl, bpc}`` of a mean NLL in nats (per token; per time step at the frame level)."""
    checks.choice("level", level, ("word", "char", "frame"))
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
    checks.choice("level", level, ("word", "char"))
    checks.finite_params(params)  # once per evaluation: a NaN weight named, not the NaN state it causes
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
    checks.model_params(params)
    checks.model_kind(params, word=False)
    checks.finite_params(params)
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


# ----------------------------------------------------------------------------
# MC-dropout evaluation (the authors' evaluate_mc)
# ----------------------------------------------------------------------------
#: The authors' ``run_mc_epoch``: a pass whose perplexity is at or above this is drawn again.
MC_REJECT_PPL = 500.0
#: Bytes that the default number of rows of one batched MC pass aims to stay within.
MC_MEMORY = 2**30
#: Bytes of one window's logits in a batched MC pass (the window is shortened to fit): past
#: the caches, the softmax of a large vocabulary runs at memory speed.
MC_WINDOW_BYTES = 2**25
#: The word-type mask of an MC pass: one value per vocabulary entry, or one value for all.
MC_X_MASKS = ("type", "authors")


def _mc_drops(drop_x, drop_i, drop_h, drop_o) -> dict:
    drops = {k: checks.drop(k, v) for k, v in (("drop_x", drop_x), ("drop_i", drop_i), ("drop_h", drop_h),
                                                ("drop_o", drop_o))}
    if not any(drops.values()):
        raise ValueError("MC dropout needs dropout: drop_x, drop_i, drop_h and drop_o are all 0, so every sample "
                         "would be the same dropout-off pass; give the rates the model was trained with (its run's "
                         "config: drop_x, drop_i, drop_h, drop_o), or use evaluate for the dropout-off figure")
    return drops


def mc_dropout_masks(params, k: int, *, seed: int = 0, drop_x=0.0, drop_i=0.0, drop_h=0.0, drop_o=0.0,
                     x_mask: str = "type") -> dict:
    """The dropout masks of MC sample ``k``: one set for a whole pass over a split.

    Drawn by :func:`rhn_np.lm.draw_masks` for one row from the host generator
    ``numpy.random.default_rng([seed, k])`` (so sample ``k`` has the same masks however
    the samples are batched), as host float64 arrays. ``"x"`` is the word-type mask of
    the pass, indexed by token id: with ``x_mask="type"`` a ``(V,)`` vector, one value
    per vocabulary entry shared by every occurrence of that token in the pass (drawn as
    ``draw_masks`` over a window holding each token once); with ``x_mask="authors"`` a
    ``(1,)`` vector, one value for every token of the pass, which is what the authors'
    ``run_mc_epoch`` ends up with (their windows are one token long and they draw the masks
    at the first window only). ``"i"`` ``(1, n_emb)``, ``"h"``, ``"o"`` ``(1, n)`` and
    the ``"layer<k>.*"`` masks of stacked layers are :func:`rhn_np.lm.draw_masks`'.
    A mask whose drop rate is 0 is ``None``.
    """
    V = _vocab_of(params, "mc_dropout_masks")
    k = checks.positive_int("k", k, minimum=0)
    seed = checks.positive_int("seed", seed, minimum=0)
    drops = _mc_drops(drop_x, drop_i, drop_h, drop_o)
    x_mask = checks.choice("x_mask", x_mask, MC_X_MASKS)
    ids = np.arange(V)[:, None] if x_mask == "type" else np.zeros((1, 1), np.int64)
    masks = lm.draw_masks(np.random.default_rng([seed, k]), ids, vocab=V, n_emb=int(params["E"].shape[1]),
                          n=lm.state_shape(params, 1)[-1], layers=lm.n_layers(params), dtype="float64",
                          **{f"keep_{key[-1]}": 1.0 - v for key, v in drops.items()})
    if masks["x"] is not None:
        masks["x"] = masks["x"].reshape(-1)  # (V, 1, 1) or (1, 1, 1) -> by token id
    return masks


def _itemsize(params) -> int:
    return 8 if "64" in str(params["E"].dtype) else 4


def _mc_rows(params, n_tokens: int, bptt: int, samples: int) -> int:
    """Rows of one batched MC pass that keep its memory near :data:`MC_MEMORY`: per row, the
    per-token log-probabilities of the pass (float64) and one window's logits and layer cache."""
    n_in, n, depth, _ = lm.cell_of(params).dims(lm.layer_params(params, 1))
    window = 3 * params["E"].shape[0] + 8 * depth * n * lm.n_layers(params) + n_in  # per step: logits, cache, inputs
    per_row = 8 * n_tokens + _itemsize(params) * bptt * window
    return max(1, min(samples, MC_MEMORY // per_row))


def _mc_pass(params, windows, n_tokens, drawn, x_by_type, impl, progress):
    """Per-token log-probabilities ``(R, n_tokens)`` (float64, on the device) of one pass
    over ``windows`` with ``R = len(drawn)`` rows, row ``r`` under the masks ``drawn[r]``."""
    be = _backend.of(params["E"])
    xp, dtype = be.xp, params["E"].dtype
    R = len(drawn)
    rows = {key: None if drawn[0][key] is None else be.to_device(np.concatenate([m[key] for m in drawn]), dtype=dtype)
            for key in drawn[0] if key != "x"}  # (R, n_emb), (R, n), ...
    table = None if drawn[0]["x"] is None else np.stack([m["x"] for m in drawn])  # (R, V) or (R, 1)
    s = lm.zero_state(params, R)
    out = xp.zeros((R, n_tokens), dtype=xp.float64, device=be.device)
    pos = 0
    for x, y in windows:  # (T, 1): the same stream in every row
        T = x.shape[0]
        masks = dict(rows)
        if table is not None:
            m_x = table[:, x[:, 0]] if x_by_type else np.repeat(table, T, axis=1)  # (R, T)
            masks["x"] = be.to_device(np.ascontiguousarray(m_x.T), dtype=dtype)  # (T, R)
        ids = be.to_device(np.repeat(x, R, axis=1))
        logits, s, _ = lm.lm_forward(params, ids, s, masks, impl=impl)
        nll = lm.softmax_nll(logits, be.to_device(np.repeat(y, R, axis=1)))  # (T, R)
        out[:, pos:pos + T] = -xp.astype(nll, xp.float64).T
        pos += T
        if progress is not None:
            progress(T * R)
    return out


def evaluate_mc(params, stream, *, samples: int, drop_x=0.0, drop_i=0.0, drop_h=0.0, drop_o=0.0, seed: int = 0,
                reject_ppl: float | None = MC_REJECT_PPL, max_rejected: int | None = None, x_mask: str = "type",
                rows: int | None = None, bptt: int = 50, level: str = "word", progress=None,
                impl: str = "auto") -> dict:
    """MC-dropout evaluation of a token stream, the authors' ``evaluate_mc``.

    Each sample is one batch-1 pass over the whole stream (the state carried from the
    first token to the last, as :func:`evaluate` with ``batch_size=1``) with dropout on:
    one set of the four masks for the whole pass (:func:`mc_dropout_masks`; sample ``k``'s
    come from ``default_rng([seed, k])``). A pass whose perplexity is ``>= reject_ppl``
    is rejected and another sample drawn in its place, until ``samples`` passes are
    accepted; the per-token probabilities of the accepted passes are averaged and the
    result is the NLL of that average::

        nll = -(1/N) Σ_t log( (1/S) Σ_k p_k(y_t | y_<t) )

    The samples run as the rows of one batch (the same stream in every row, each row
    its own masks), ``rows`` of them at a time (default: as many as fit in about
    :data:`MC_MEMORY` bytes), so that S samples cost about one batched pass, not S
    sequential ones; the result does not depend on ``rows`` beyond float round-off.

    Where it differs from the authors' code: ``x_mask="type"`` (the default) gives each
    vocabulary entry its own word-type value for the pass; ``"authors"`` reproduces their
    single value for every token (with ``drop_x = 0.25`` a quarter of their passes see no
    input at all, which their perplexity-500 rule then rejects). Their average also
    counts one unscored position as probability 1e-10 and clips the probabilities to
    ``[1e-10, 1 - 1e-10]``; here only the ``N`` scored tokens count and the average is
    taken in log space without clipping.

    Parameters
    ----------
    params : a word/char model (:func:`rhn_np.lm.init_lm_params`)
    stream : 1-D integer token ids
    samples : accepted passes to average (S >= 1)
    drop_x, drop_i, drop_h, drop_o : the drop rates the model was trained with (its
        run's config); at least one must be > 0
    seed : seed of the masks
    reject_ppl : rejection threshold on a pass's perplexity (the authors' 500); None
        keeps every pass
    max_rejected : stop with a ``RuntimeError`` once more passes than this were rejected
        (default: ``samples``)
    x_mask : "type" or "authors" (above)
    rows : samples per batched pass
    bptt, impl : the longest window (shortened so that a window's logits for all rows
        stay within :data:`MC_WINDOW_BYTES`) and the cells' code; the result does not
        depend on the window length
    level : "word" or "char" (what :func:`metrics` reports)
    progress : called with the number of (token, sample) pairs of each window

    Returns
    -------
    dict: ``nll``, ``ppl``, ``bpc`` of the averaged probabilities, ``n_tokens`` (N),
    ``samples``, ``rejected`` (passes drawn again), ``sample_nll`` (each accepted
    pass's own mean NLL, in the order drawn), ``rows``.
    """
    V = _vocab_of(params, "evaluate_mc")
    samples = checks.positive_int("samples", samples)
    drops = _mc_drops(drop_x, drop_i, drop_h, drop_o)
    seed = checks.positive_int("seed", seed, minimum=0)
    if reject_ppl is not None:
        reject_ppl = checks.number("reject_ppl", reject_ppl, minimum=1.0, strict=True)
    max_rejected = samples if max_rejected is None else checks.positive_int("max_rejected", max_rejected, minimum=0)
    x_mask = checks.choice("x_mask", x_mask, MC_X_MASKS)
    level = checks.choice("level", level, ("word", "char"))
    batches = TokenBatches(stream, 1, bptt)  # one row: the whole stream in order
    lo, hi = int(batches.rows.min()), int(batches.rows.max())
    if lo < 0 or hi >= V:
        raise ValueError(f"stream must hold token ids in [0, {V}) (the model's vocabulary), got ids in [{lo}, {hi}]")
    n_tokens = batches.rows.shape[1] - 1
    rows = _mc_rows(params, n_tokens, bptt, samples) if rows is None else checks.positive_int("rows", rows)
    window = max(1, min(bptt, MC_WINDOW_BYTES // (min(rows, samples) * V * _itemsize(params))))
    windows = list(TokenBatches(stream, 1, window).all_windows())
    xp = _backend.of(params["E"]).xp
    log_sum, sample_nll, rejected, drawn = None, [], 0, 0  # log Σ_k p_k per token, over accepted passes
    while len(sample_nll) < samples:
        R = min(rows, samples - len(sample_nll))
        masks = [mc_dropout_masks(params, drawn + r, seed=seed, x_mask=x_mask, **drops) for r in range(R)]
        logp = _mc_pass(params, windows, n_tokens, masks, x_mask == "type", impl, progress)  # (R, N)
        drawn += R
        pass_nll = [float(v) for v in _backend.to_host(-xp.mean(logp, axis=1))]
        kept = []
        for r, nll in enumerate(pass_nll):
            if reject_ppl is not None and math.exp(min(nll, 700.0)) >= reject_ppl:
                rejected += 1
                if rejected > max_rejected:
                    raise RuntimeError(
                        f"{rejected} of {drawn - R + r + 1} MC-dropout passes had perplexity >= "
                        f"reject_ppl={reject_ppl:g} ({len(sample_nll) + len(kept)} of samples={samples} accepted), "
                        f"more than max_rejected={max_rejected}: check drop_x, drop_i, drop_h, drop_o against the "
                        "rates the model was trained with, or raise reject_ppl (None keeps every pass) or max_rejected")
            else:
                kept.append(r)
        if not kept:
            continue
        part = xp.take(logp, xp.asarray(kept, dtype=xp.int64, device=_backend.device_of(logp)), axis=0)
        top = xp.max(part, axis=0)
        part = top + xp.log(xp.sum(xp.exp(part - top), axis=0))  # log Σ_k p_k over this batch's kept rows
        log_sum = part if log_sum is None else xp.logaddexp(log_sum, part)
        sample_nll.extend(pass_nll[r] for r in kept)
    value = float(-xp.mean(log_sum - math.log(samples)))
    return {**metrics(value, level), "n_tokens": n_tokens, "samples": samples, "rejected": rejected,
            "sample_nll": sample_nll, "rows": rows}


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

    Any ``temperature > 0`` is sound, ``inf`` included: the logits' maximum is subtracted
    *before* the division, so every exponent is ``<= 0`` and the most likely symbols have
    exactly ``exp(0) = 1`` (no overflow, no ``inf - inf``). As the temperature goes to 0
    this is greedy decoding (the argmax; ties drawn evenly), and the limit is reached
    exactly where ``gap / temperature`` overflows (``1e-320``); as it grows the draw
    becomes uniform.
    """
    if ds.kind != "tokens":
        raise ValueError("sampling needs a word or character model; JSB piano-roll models have no text to sample")
    if not (checks.is_real(temperature) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    length = checks.positive_int("length", length)
    _check_vocab_size(params, ds, "sample", "sample with the data set (or run) the model was trained on")
    checks.finite_params(params)
    be = _backend.of(params["E"])
    rng = checks.seed("seed", seed)
    ids = list(ds.encode(prime)) if prime else []
    if not ids:  # start after an end of line, like a new sentence / paragraph
        seed_ids, out = [_start_symbol(ds, rng)], []
    else:
        seed_ids, out = ids, list(ids)
    s = lm.zero_state(params, 1)
    logits, s = lm.lm_logits(params, be.to_device(np.asarray(seed_ids, np.int64)[:, None]), s, impl=impl)
    for _ in range(length):
        z = _backend.to_host(logits[-1, 0, :]).astype(np.float64)  # (V,)
        if not np.all(np.isfinite(z)):
            raise ValueError("the model's logits are not finite (NaN or inf): its parameters are damaged or "
                             "diverged; sample from another checkpoint")
        with np.errstate(over="ignore"):  # (z - max) / tiny temperature -> -inf: probability 0, as it should be
            p = np.exp((z - z.max()) / temperature)
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
        return self.score(params, "valid", self.cfg.eval_batch_size)

    def score(self, params, split: str, batch_size: int) -> dict:
        """Dropout-off figures of ``params`` on ``split`` with ``batch_size`` rows (:func:`evaluate_dataset`)."""
        cfg = self.cfg
        return evaluate_dataset(params, self.ds, split, batch_size=batch_size, bptt=cfg.bptt, impl=cfg.impl)

    #: The batch size of the figures reported at the end of training (``Config.final_eval``).
    final_batch_size = 1

    def can_score(self, split: str, batch_size: int) -> bool:
        """Whether ``split`` is long enough for :meth:`score` with ``batch_size`` rows."""
        return len(getattr(self.ds, split)) > 0

    def _check_valid_split(self) -> None:
        if len(self.ds.valid) == 0:
            raise ValueError(f"the validation split of {self.ds.name} is empty: the trainer validates every "
                             "eval_every steps and needs one")
        if self.cfg.eval_test and not self.can_score("test", self.cfg.eval_batch_size):
            raise ValueError(f"the test split of {self.ds.name} ({len(self.ds.test):,} items) is too short to score "
                             f"with eval_batch_size={self.cfg.eval_batch_size} rows at every validation (eval_test); "
                             "turn eval_test off (--no-eval-test) or use a smaller eval_batch_size")


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

    def can_score(self, split: str, batch_size: int) -> bool:
        return len(getattr(self.ds, split)) // batch_size >= 2  # TokenBatches: rows of at least 2 tokens

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

    @property
    def final_batch_size(self) -> int:
        """Chorales score from a zero state each with their padding masked: the batch size does
        not change the figure, so the final one is batched like the validation."""
        return self.cfg.eval_batch_size

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
