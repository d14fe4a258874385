r"""Training language models of any cell: the authors' recipe, as a loop.

The training step is the authors' (TensorFlow ``rhn.py``, paper §5.2; see
:mod:`rhn_np.optim`), written with this package's functions::

    masks        = lm.draw_masks(rng, x, ...)                    # once per window
    loss, g, s   = lm.lm_loss_and_grads(params, x, y, s, masks)  # Σ over time, mean over batch
    g            = optim.add_l2_gradient(g, params, wd)          # ½·wd·Σw² in the cost
    g, norm      = optim.clip_global_norm(g, clip)               # global norm 10
    opt.step(params, g)                                          # SGD, lr 0.2
    opt.lr       = optim.lr_at_epoch(epoch, lr, max_epoch, lr_decay)

Where each part lives: the settings and presets in :mod:`rhn_np.config`; batching, the
model for a data set, one window's loss and gradients, evaluation and sampling in
:mod:`rhn_np.tasks`; the work folder, metrics, checkpoints and :func:`load_run` in
:mod:`rhn_np.runs`. This module is the loop (:class:`Trainer`); it asks neither which
cell (``Config.cell``) nor which kind of data it has. Its names are also importable
from here (``train.Config``, ``train.evaluate``, ``train.load_run``, ...).

A checkpoint holds everything needed to continue bit for bit: resuming after step 100
and training to step 200 gives the same parameters and metrics as 200 steps in one go
(on the CPU), also from the periodic saves between validations (``checkpoint_every``,
``checkpoint_minutes``). Ctrl+C or SIGTERM saves a checkpoint before stopping
(:class:`rhn_np.interrupts.Interrupted`); a non-finite loss stops the run with
:class:`TrainingDiverged` and leaves the last good checkpoint in place. ``best.npz`` is
written before ``checkpoint.npz`` of the same validation (a copy of it), so a kill
between the two leaves ``best.npz`` ahead, never behind, and :meth:`Trainer.resume`
completes the copy.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import tempfile
import time

import numpy as np

from . import backend as _backend
from . import checkpoint as _checkpoint
from . import data as _data
from . import checks, graphs, lm, optim
from .config import PRESETS, RESUMABLE, Config, config_from_preset, label
from .interrupts import Interrupted, signal_name, take_pending
from .optim import lr_at_step
from .runs import (TRAINER_FORMAT, TRAINER_VERSION, RunError, append_metrics, check_run_data, check_run_meta,
                   dataset_for_sampling, held_message, held_run, load_run, optimizer_arrays, optimizer_state,
                   plot_learning_curve, read_metrics, rng_from_state, rng_state)
from .tasks import require_memory, threads_for
from .tasks import (LN2, SequenceBatches, TokenBatches, count_params, evaluate, evaluate_dataset, evaluate_mc,
                    evaluate_sequences, init_model, metrics, resolve_width, sample, task_for)

__all__ = [
    "Config",
    "PRESETS",
    "config_from_preset",
    "lr_at_step",
    "init_model",
    "count_params",
    "TokenBatches",
    "SequenceBatches",
    "Trainer",
    "TrainingDiverged",
    "Interrupted",
    "RunError",
    "train",
    "evaluate",
    "evaluate_sequences",
    "evaluate_dataset",
    "evaluate_mc",
    "check_run_data",
    "sample",
    "load_run",
    "held_run",
    "held_message",
    "dataset_for_sampling",
    "read_metrics",
    "append_metrics",
    "plot_learning_curve",
]

# ----------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------
class _DeferredInterrupt:
    """Ctrl+C or SIGTERM during training: finish the current step, then stop cleanly.

    The first SIGINT or SIGTERM sets :attr:`requested` and :attr:`signum` (the loop
    saves a checkpoint and stops after the step in progress, so parameters and optimiser
    are never half updated); a second one raises :class:`rhn_np.interrupts.Interrupted`
    at once. Only active in the main thread.
    """

    _SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self):
        self.requested = False
        self.signum = None
        self._old = {}

    def _handler(self, signum, frame):
        if self.requested:
            raise Interrupted(signum)
        self.requested, self.signum = True, signum
        again = "press again" if signum == signal.SIGINT else "a second signal"
        print(f"\n{signal_name(signum)}: stopping after this step and saving a checkpoint ({again} to abort at once)",
              flush=True)

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self._SIGNALS:
                sig = getattr(signal, name)
                if signal.getsignal(sig) is not signal.SIG_IGN:  # one the process was started to ignore stays so
                    self._old[sig] = signal.signal(sig, self._handler)
            pending = take_pending()  # a stop that came before and was swallowed where it landed
            if pending is not None:
                self.requested, self.signum = True, pending
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
        return False


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


class Trainer:
    """One training run in a work folder (:mod:`rhn_np.runs` describes its files).

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
    With ``cfg.params`` set, ``self.cfg.hidden`` is the width it resolved to.
    """

    _RUN_FILES = ("checkpoint.npz", "best.npz", "metrics.jsonl", "learning_curve.png")

    def __init__(self, cfg: Config, work_dir, *, ds=None, progress: bool = True, out=print, overwrite: bool = False,
                 _resuming: bool = False):
        if not isinstance(cfg, Config):
            raise TypeError(f"cfg must be a train.Config (e.g. train.config_from_preset('demo')), got {type(cfg).__name__}")
        held = held_run(work_dir)
        if held and not (overwrite or _resuming):
            raise RunError(held_message(work_dir, held))
        cfg = cfg.check()
        self.work_dir = os.fspath(work_dir)
        self.out = out
        self.progress = progress
        self.be = _backend.get(cfg.backend)  # before the data: an unusable backend is said first
        self.ds = ds if ds is not None else _data.load(cfg.dataset, root=cfg.data_dir)
        self.cfg = cfg = resolve_width(cfg, self.ds)
        self.memory = require_memory(cfg, self.ds, self.be)  # refused, with the estimate, before anything is allocated
        self.threads = threads_for(cfg, cfg.batch_size, cfg.threads)  # BLAS threads of run() (None: the environment's)
        self.task = task_for(cfg, self.ds, self.be)
        self.params = self.task.init_params()
        self.opt = optim.SGD(cfg.lr, momentum=cfg.momentum) if cfg.optimizer == "sgd" else optim.Adam(cfg.lr)
        self.rng = np.random.default_rng([cfg.seed, 1])  # dropout masks and shuffling; the init used seed
        if os.path.exists(self.work_dir) and not os.path.isdir(self.work_dir):
            raise RunError(f"the work folder {self.work_dir} is a file; choose a folder (--work-dir)")
        if not _resuming:  # a fresh run: no records or checkpoints of an earlier one mixed in
            self._set_aside_earlier_files(overwrite, out)
        try:  # only now: a run that cannot start leaves no folder
            os.makedirs(self.work_dir, exist_ok=True)
        except OSError as exc:
            raise RunError(f"cannot create the work folder {self.work_dir}: {exc.strerror or exc}; choose a "
                           "folder you can write to (--work-dir)") from exc
        try:  # said now, not at the first save after minutes of training
            with tempfile.TemporaryFile(dir=self.work_dir):
                pass
        except OSError as exc:
            raise RunError(f"cannot write in the work folder {self.work_dir}: {exc.strerror or exc}; make it "
                           "writable or choose a folder you can write to (--work-dir)") from exc
        left = _checkpoint.remove_stale_temporaries(self.work_dir)  # of checkpoint writes that a kill cut short
        if left:
            out(f"removed {len(left)} temporary file{'s' * (len(left) > 1)} of interrupted checkpoint writes in "
                f"{self.work_dir}")
        self.step = 0
        self.best_nll = math.inf
        self.best_step = None  # the step of the best validation (None: none yet, or a run that did not record it)
        self._last_save_step, self._last_save_time = None, time.monotonic()  # the periodic saves count from here
        self._captured = None  # the graphs.CapturedLayer per layer of the training windows (CuPy, cuda_graphs)
        self._graphs_on = self.be.name == "cupy" and cfg.cuda_graphs and graphs.supports(lm.cell_of(self.params))
        self._train_sum = None  # Σ NLL and count since the last "train" record
        self._train_count = 0
        self._rec_tokens, self._rec_time = 0, 0.0  # throughput since the last "train" record
        self._train_tokens, self._train_time = 0, 0.0  # ... and since the last validation
        self._last_eval_step = -1
        self.stale = 0  # validations in a row without a new best (cfg.patience)

    def _set_aside_earlier_files(self, overwrite, out) -> None:
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

    # -- bookkeeping ------------------------------------------------------------
    @property
    def epoch_size(self) -> int:
        return len(self.task)

    @property
    def epoch(self) -> int:
        return self.step // self.epoch_size

    @property
    def state(self):
        """The carried state of token data (None for piano rolls, and before the first window)."""
        return getattr(self.task, "state", None)

    @property
    def order(self):
        """The epoch's order of the sequences (piano rolls; None for token data)."""
        return getattr(self.task, "order", None)

    @property
    def n_params(self) -> int:
        return sum(math.prod(p.shape) for p in self.params.values())

    def total_steps(self) -> int:
        cfg = self.cfg
        by_epochs = cfg.epochs * self.epoch_size
        return by_epochs if cfg.max_steps is None else min(by_epochs, cfg.max_steps)

    # -- one window -------------------------------------------------------------
    def train_step(self):
        """Train on the next window; returns the window's summed loss (a 0-d device array)."""
        cfg = self.cfg
        if cfg.lr_schedule == "cosine":
            self.opt.lr = lr_at_step(self.step, cfg.lr, cfg.decay_steps)
        else:
            self.opt.lr = optim.lr_at_epoch(self.epoch, cfg.lr, cfg.max_epoch, cfg.lr_decay)
        try:
            loss, grads, nll_sum, n = self.task.train_window(self.params, self.step % self.epoch_size, self.rng,
                                                             self._layers)
        except checks.NonFinite as exc:  # a NaN state or gradient inside the window: the loss is NaN too
            raise TrainingDiverged(self._diverged_message(self.step + 1)) from exc
        grads = optim.add_l2_gradient(grads, self.params, cfg.weight_decay)
        grads, _ = optim.clip_global_norm(grads, cfg.clip)
        self.opt.step(self.params, grads)
        self.step += 1
        self._train_sum = nll_sum if self._train_sum is None else self._train_sum + nll_sum
        self._train_count += n
        self._train_tokens += n
        self._rec_tokens += n
        return loss

    def _layers(self, shape, masked):
        """The layers of this window captured in CUDA graphs (CuPy, ``cuda_graphs`` and a cell
        with the fast path), one :class:`rhn_np.graphs.CapturedLayer` per layer; else None
        (each cell's ``forward`` / ``backward`` launch kernel by kernel).

        Captured on first use (a few hundred ms; all training windows of token data have
        one shape), and again if the shape, the masking or the parameter arrays changed
        (``resume`` replaces the arrays)."""
        if not self._graphs_on:
            return None
        layers = [lm.layer_params(self.params, k) for k in range(1, lm.n_layers(self.params) + 1)]
        old = self._captured
        if old is None or any(c.shape != tuple(shape) or c.masks != masked or not c.holds(p)
                              for c, p in zip(old, layers)):
            self._captured = None  # let go of the old graphs' memory before capturing new ones
            self._captured = [graphs.CapturedLayer(p, *shape, masks=masked) for p in layers]
        return self._captured

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
        record = {"split": "train", **metrics(train_nll, self.ds.level), "step": self.step, "epoch": self.epoch,
                  "lr": self.opt.lr, "tokens_per_s": self._rec_tokens / self._rec_time if self._rec_time > 0 else None,
                  "level": self.ds.level, "dataset": self.ds.name, "time": time.time()}
        append_metrics(self.work_dir, record)
        self._train_sum, self._train_count, self._rec_tokens, self._rec_time = None, 0, 0, 0.0
        return record

    # -- evaluation, checkpoints --------------------------------------------------
    def validate(self) -> dict:
        """Evaluate on the validation split, log to metrics.jsonl, save checkpoints, plot."""
        self.log_train()
        now = time.time()
        tokens_per_s = self._train_tokens / self._train_time if self._train_time > 0 else None
        common = {"step": self.step, "epoch": self.epoch, "lr": self.opt.lr, "tokens_per_s": tokens_per_s,
                  "level": self.ds.level, "dataset": self.ds.name}
        try:
            res = self.task.validate(self.params)
        except checks.NonFinite as exc:  # NaN parameters (evaluate names them): diverged since the last log
            raise TrainingDiverged(self._diverged_message()) from exc
        if not math.isfinite(res["nll"]):
            raise TrainingDiverged(self._diverged_message())
        record = {"split": "valid", **res, **common, "time": time.time(), "eval_seconds": time.time() - now}
        append_metrics(self.work_dir, record)
        if self.cfg.eval_test:  # the authors' loop scores the test split (batched) at every validation too
            record = {**record, "test": self._score_test(common)}  # its own record in metrics.jsonl
        self._train_tokens, self._train_time = 0, 0.0
        improved = res["nll"] < self.best_nll
        if improved:
            self.best_nll, self.best_step = res["nll"], self.step
        self.stale = 0 if improved else self.stale + 1  # validations since the best (early stopping)
        self._last_eval_step = self.step  # before saving: the checkpoint records that this step was validated
        if improved:
            # best.npz first: a kill before checkpoint.npz is renamed leaves best.npz ahead of it, never behind,
            # and resume() completes the copy (_finish_interrupted_save).
            best = self.save("best.npz")
            _checkpoint.copy(best, os.path.join(self.work_dir, "checkpoint.npz"))  # the same state, not serialised again
        else:
            self.save("checkpoint.npz")
        plot_learning_curve(self.work_dir)
        return record

    def _score_test(self, common: dict) -> dict:
        """Score the current parameters on the test split, batched like the validation; append a "test" record."""
        now = time.time()
        res = self.task.score(self.params, "test", self.cfg.eval_batch_size)
        record = {"split": "test", **res, **common, "batch_size": self.cfg.eval_batch_size, "time": time.time(),
                  "eval_seconds": time.time() - now}
        append_metrics(self.work_dir, record)
        return record

    def final_evaluation(self) -> dict:
        """Score the best checkpoint (``best.npz``) on the validation and test splits as the
        authors report their figures: batch size 1, each split in one pass in order (JSB:
        each chorale from a zero state, which no batch size changes). Appends a
        "final_valid" and a "final_test" record (``step`` is the checkpoint's) and returns
        ``{"valid": record, "test": record}``; a run whose records already hold them for
        this checkpoint (a resume at the last step) is not scored again. A test split too
        short to score is left out."""
        params, _, meta = load_run(self.work_dir, "best", backend=self.be)
        done = {r["split"][len("final_"):]: r for r in read_metrics(self.work_dir)
                if r.get("split") in ("final_valid", "final_test") and r.get("step") == meta["step"]}
        splits = [s for s in ("valid", "test") if self.task.can_score(s, self.task.final_batch_size)]
        if all(s in done for s in splits):
            return done
        batch = self.task.final_batch_size
        self.out(f"final evaluation of the best checkpoint (step {meta['step']}): {' and '.join(splits)}, batch "
                 f"{batch} (final_eval=False or --no-final-eval skips it)")
        out = {}
        try:
            for split in splits:
                now = time.time()
                res = self.task.score(params, split, batch)
                out[split] = {"split": f"final_{split}", **res, "step": meta["step"], "epoch": meta["epoch"],
                              "lr": None, "tokens_per_s": None, "level": self.ds.level, "dataset": self.ds.name,
                              "batch_size": batch, "checkpoint": "best", "time": time.time(),
                              "eval_seconds": time.time() - now}
                append_metrics(self.work_dir, out[split])
        except KeyboardInterrupt:
            self.out(f"final evaluation interrupted; the run is saved: rhn-np evaluate --work-dir {self.work_dir} "
                     "--split test --batch-1 scores it later")
            raise
        self.out(_describe_final(out))
        return out

    def _diverged_message(self, step=None) -> str:
        ckpt = os.path.join(self.work_dir, "checkpoint.npz")
        kept = f"the last good checkpoint is {ckpt}" if os.path.exists(ckpt) else "no checkpoint had been written yet"
        step = self.step if step is None else step
        return (f"the training loss became non-finite (NaN or inf) by step {step} (lr {self.opt.lr:g}); "
                f"stopped without saving the bad parameters; {kept}. Try a smaller --lr, a smaller clip or float64.")

    def _meta(self, opt_numbers: dict, position: dict) -> dict:
        return {
            "trainer_format": TRAINER_FORMAT, "trainer_version": TRAINER_VERSION,
            "config": self.cfg.to_dict(), "step": self.step, "epoch": self.epoch, "best_nll": self.best_nll
            if math.isfinite(self.best_nll) else None,
            "optimizer": opt_numbers, "rng": rng_state(self.rng), **position,
            "dataset": {"name": self.ds.name, "kind": self.ds.kind, "level": self.ds.level,
                        "vocab": list(self.ds.vocab) if self.ds.kind == "tokens" else None},
            # Since rhn_np's checkpoint format 2: where the best validation was, whether this step's validation
            # ran, and the training NLL summed since the last "train" record (a periodic save falls between
            # two), so that a resume continues the records as they would have gone.
            "best_step": self.best_step, "validated": self._last_eval_step == self.step,
            "train_sum": None if self._train_sum is None else [float(self._train_sum),
                                                                  str(getattr(self._train_sum, "dtype", "float64"))],
            "train_count": self._train_count,
        }

    def save(self, name: str = "checkpoint.npz") -> str:
        """Write the whole training state atomically to ``work_dir/name``."""
        opt_numbers, opt_arrays = optimizer_arrays(self.opt)  # one host copy of the moments
        arrays = {f"param.{k}": v for k, v in self.params.items()}
        arrays.update(opt_arrays)
        position_arrays, position = self.task.position()
        arrays.update(position_arrays)
        path = _checkpoint.save(os.path.join(self.work_dir, name), arrays, self._meta(opt_numbers, position))
        self._last_save_step, self._last_save_time = self.step, time.monotonic()
        return path

    def _save_due(self) -> bool:
        """Whether a periodic save is due: ``checkpoint_every`` steps, or ``checkpoint_minutes``
        since the last save (any save), and this step not saved yet."""
        cfg = self.cfg
        if self._last_save_step == self.step:
            return False
        if cfg.checkpoint_every is not None and self.step % cfg.checkpoint_every == 0:
            return True
        minutes = cfg.checkpoint_minutes
        return minutes is not None and time.monotonic() - self._last_save_time >= 60.0 * minutes

    @classmethod
    def resume(cls, work_dir, *, overrides: dict | None = None, progress=True, out=print, ds=None) -> Trainer:
        """Continue the run saved in ``work_dir/checkpoint.npz``.

        ``overrides`` may change how long the run goes and where it runs (the settings
        whose declaration allows it, :data:`rhn_np.config.RESUMABLE`: ``max_steps``,
        ``epochs``, ``time_limit``, ``eval_every``, ``log_every``, ``backend``,
        ``data_dir``, ``cuda_graphs``, ``threads``); changing the model, the data or the recipe raises a
        :class:`RunError`. Runs written before ``cell`` and ``layers`` existed are RHN runs
        of one layer, and resume as such.

        First the folder is put in order: a save that a kill cut between ``best.npz`` and
        ``checkpoint.npz`` is completed (:func:`_finish_interrupted_save`), temporary files
        of killed writes are removed, and a ``best.npz`` that an earlier version left behind
        the best validation is repaired where the checkpoint holds that state
        (:meth:`_repair_best`); each is said through ``out``. A checkpoint whose metadata
        lacks what resuming needs, or whose optimiser lost its moments, raises a
        :class:`rhn_np.checkpoint.CheckpointError`.
        """
        path = os.path.join(os.fspath(work_dir), "checkpoint.npz")
        _finish_interrupted_save(os.fspath(work_dir), out)
        if not os.path.exists(path):
            raise RunError(f"--resume: there is no checkpoint.npz in {work_dir}; start the run without --resume")
        try:
            arrays, meta = _checkpoint.load(path)
        except _checkpoint.CheckpointError as exc:
            raise _checkpoint.CheckpointError(
                f"{exc}. Resuming needs it (the optimiser's state is only there); best.npz, if the run has one, "
                "still serves rhn-np evaluate and sample, and a new run starts without --resume") from exc
        check_run_meta(meta, path, resume=True)
        stored = dict(meta["config"])
        for k, v in (overrides or {}).items():
            if k not in Config.__dataclass_fields__:
                raise RunError(f"unknown setting {k!r} in overrides; settings: {', '.join(sorted(Config.__dataclass_fields__))}")
            if v is None or stored.get(k, getattr(Config, k, None)) == v:
                continue
            if k not in RESUMABLE:
                raise RunError(f"--resume continues the run as it was configured; {label(k)} was "
                               f"{stored.get(k, getattr(Config, k, None))!r} and cannot change to {v!r} (allowed to "
                               f"change: {', '.join(label(a) for a in sorted(RESUMABLE))})")
            stored[k] = v
        if stored.get("emb") is None and "param.E" in arrays:
            stored["emb"] = int(arrays["param.E"].shape[1])  # the width the run has, whatever rule chose it
        cfg = Config.from_dict(stored).check()
        self = cls(cfg, work_dir, progress=progress, out=out, ds=ds, _resuming=True)
        check_run_data(meta, self.ds)
        self._restore(arrays, meta, path)
        self._repair_best()
        return self

    def _restore(self, arrays: dict, meta: dict, path="checkpoint.npz") -> None:
        """Take the training state of a checkpoint (``path``: its name in messages)."""
        for k in self.params:
            a = arrays.get(f"param.{k}")
            if a is None or tuple(a.shape) != tuple(self.params[k].shape):
                raise _checkpoint.CheckpointError(f"checkpoint parameter {k!r} is missing or has the wrong shape")
            try:  # once per resume: a NaN weight named here, not as the NaN state of a later window
                checks.finite_params({k: a}, where=" in the checkpoint")
            except ValueError as exc:
                raise _checkpoint.CheckpointError(f"{exc}; resume from an earlier copy of the run") from None
            self.params[k] = self.be.to_device(a, dtype=self.params[k].dtype)
        state = optimizer_state(meta["optimizer"], arrays)
        _check_moments(state, self.params, path)
        try:
            self.opt.load_state_dict(state)
            self.rng = rng_from_state(meta["rng"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _checkpoint.CheckpointError(f"{path}: its optimiser or random-generator state is damaged "
                                              f"({type(exc).__name__}: {exc}); it cannot be resumed") from None
        self.step = meta["step"]
        self.best_nll = math.inf if meta.get("best_nll") is None else float(meta["best_nll"])
        self.best_step = meta.get("best_step")  # None in checkpoints of format 1
        self.task.restore(arrays, meta, self.step, self.params["b_out"].dtype)
        # A checkpoint saved where a validation was due before it ran (an interrupt) says so; run() does it first.
        self._last_eval_step = self.step if meta.get("validated", True) else -1
        self._last_save_step = self.step
        self.stale = _validations_since_best(read_metrics(self.work_dir), self.step)  # early stopping counts on
        total = meta.get("train_sum")
        if total is not None:  # the training NLL summed since the last "train" record, as it was
            self._train_sum = self.be.to_device(np.asarray(total[0], dtype=total[1]))
            self._train_count = int(meta.get("train_count") or 0)

    def _repair_best(self) -> None:
        """After :meth:`resume`: make ``best.npz`` hold the best validation the checkpoint
        records, where it can. Runs of this version write ``best.npz`` first, so it can be
        ahead of ``checkpoint.npz`` but not behind; a run of an earlier version, killed
        between writing the two, left ``best.npz`` older than the best (or missing), and a
        resume at the final step would not validate again. If the checkpoint is that best
        state (its ``best_step`` is its step; for earlier runs, which do not record it,
        validating it again tells), it is copied to ``best.npz``; otherwise the best
        parameters are gone, which is said."""
        if not math.isfinite(self.best_nll):
            return  # no validation yet: no best.npz to have
        best = os.path.join(self.work_dir, "best.npz")
        held = None
        if os.path.exists(best):
            try:
                held = _checkpoint.read_metadata(best).get("best_nll")
            except (OSError, _checkpoint.CheckpointError) as exc:
                self.out(f"warning: cannot read {best} ({exc}); left as it is")
                return
            if isinstance(held, (int, float)) and held <= self.best_nll:
                return  # the best (or, killed before checkpoint.npz was written, a later best): as it should be
        if self.best_step is None and self._last_eval_step == self.step:  # an earlier version's checkpoint
            res = self.task.validate(self.params)
            here = res["nll"] if math.isclose(res["nll"], self.best_nll, rel_tol=1e-6) else None
        else:
            here = self.best_nll if self.best_step == self.step else None
        if here is not None:
            _checkpoint.copy(os.path.join(self.work_dir, "checkpoint.npz"), best)
            self.out(f"repaired {best}: it was {'older than' if held is not None else 'missing for'} the best "
                     f"validation (nll {self.best_nll:.4f}, step {self.step}), which checkpoint.npz holds")
        else:
            where = f"step {self.best_step}" if self.best_step is not None else "an earlier step"
            self.out(f"warning: {best} is {'older than' if held is not None else 'missing for'} the best validation "
                     f"(nll {self.best_nll:.4f} at {where}), whose parameters are no longer stored; it is written "
                     "again at the next validation that beats it")

    # -- the loop -----------------------------------------------------------------
    def run(self) -> dict:
        """Train until ``epochs``/``max_steps``/``time_limit``; returns a summary dict.

        Raises :class:`TrainingDiverged` on a non-finite loss. Ctrl+C or SIGTERM (in the
        main thread): the step in progress is finished, a checkpoint saved, and
        :class:`rhn_np.interrupts.Interrupted` (a ``KeyboardInterrupt``; ``signum`` says
        which signal) raised (``summary`` is then on ``self.interrupted_summary``); a
        second one stops at once, unsaved. Between validations ``checkpoint.npz`` is saved
        every ``cfg.checkpoint_every`` steps and at least every ``cfg.checkpoint_minutes``.
        NumPy's BLAS runs with :attr:`threads` threads meanwhile (``cfg.threads``, else
        :func:`rhn_np.tasks.threads_for`'s rule; ``None``: as the environment set them),
        restored afterwards. Where no progress bar is drawn
        (``progress`` on but stdout not a terminal: a log file, a pipe), a plain line with
        the step, the training loss, the speed and the time left is printed every
        :data:`PROGRESS_SECONDS` seconds instead.
        """
        with _backend.limit_blas_threads(self.threads):
            try:
                return self._run()
            except Interrupted as exc:
                if not exc.reported:  # a second Ctrl+C or SIGTERM: stopped at once, in a step or a save
                    self.out(self._aborted_message(exc.signum))
                    exc.reported = True
                raise

    def _aborted_message(self, signum) -> str:
        if self._last_save_step is None:
            return f"{signal_name(signum)}: stopped at once at step {self.step}; no checkpoint had been saved"
        return (f"{signal_name(signum)}: stopped at once at step {self.step}, unsaved; the last checkpoint is "
                f"{os.path.join(self.work_dir, 'checkpoint.npz')} (step {self._last_save_step}); continue with: "
                f"rhn-np train --work-dir {self.work_dir} --resume")

    def _run(self) -> dict:
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
        say = _flushed(bar.write if self.progress and self.out is print else self.out, self.out is print)
        # Plain progress lines where no bar is seen: none drawn (no terminal), or stdout sent to a file or pipe.
        notebook = any(c.__module__ == "tqdm.notebook" for c in type(bar).__mro__)
        unseen = bar.disable or (self.out is print and not notebook and not _isatty(sys.stdout))
        plain = time.time() + PROGRESS_SECONDS if self.progress and unseen else None  # when the next one is due
        with _DeferredInterrupt() as interrupt:
            try:
                if 0 < self.step < total and self._last_eval_step != self.step and self.step % eval_every == 0:
                    say(_describe(self.validate()))  # due where an interrupt saved the checkpoint: now
                # A run that had already stopped early (and is resumed) does not train on.
                self.stopped_early = cfg.patience is not None and self.stale >= cfg.patience
                while self.step < total and not self.stopped_early:
                    if interrupt.requested:  # (during a validation or a save)
                        break
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
                        if plain is not None and time.time() >= plain:
                            say(self._progress_line(total, start_step, t_start, shown, tps))
                            plain = time.time() + PROGRESS_SECONDS
                        if self.step % (10 * cfg.log_every) == 0:
                            self.log_train()
                    else:
                        self._add_time(time.perf_counter() - t0)
                    bar.update(1)
                    if interrupt.requested:
                        break
                    if self.step % eval_every == 0 or self.step == total:
                        say(_describe(self.validate()))
                        if cfg.patience is not None and self.stale >= cfg.patience:
                            say(f"early stop at step {self.step}: no better validation NLL for {self.stale} "
                                f"validations (patience {cfg.patience}); best {self.best_nll:.4f}")
                            self.stopped_early = True
                            break
                    if self._save_due():
                        self.save("checkpoint.npz")  # between validations: checkpoint.npz only
                    if cfg.time_limit is not None and time.time() - t_start > 60.0 * cfg.time_limit:
                        say(f"time limit of {cfg.time_limit:g} min reached at step {self.step}")
                        break
            finally:
                bar.close()
            if interrupt.requested:
                # Between two steps: parameters, optimiser, state and generator agree.
                path = os.path.join(self.work_dir, "checkpoint.npz")
                if self._last_save_step != self.step:  # (a validation or a periodic save may just have written it)
                    self.log_train()
                    path = self.save("checkpoint.npz")
                self.out(f"interrupted at step {self.step} by {signal_name(interrupt.signum)}: saved {path}; "
                         f"continue with: rhn-np train --work-dir {self.work_dir} --resume")
                self.interrupted_summary = self._summary(start_step, t_start)
                raise Interrupted(interrupt.signum, reported=True)
        if self._last_eval_step != self.step:
            self.out(_describe(self.validate()))
        summary = self._summary(start_step, t_start)
        summary["final"] = self.final_evaluation() if cfg.final_eval else None
        return summary

    def _progress_line(self, total, start_step, t_start, shown, tps) -> str:
        """``step 1,230/4,000 (31 %), bpc 2.345, 12,345 tok/s, eta 1 min 52 s``: the plain progress line."""
        loss = f"bpc {shown / LN2:.3f}" if self.ds.level == "char" else f"nll {shown:.3f}"
        done = self.step - start_step
        left = (total - self.step) * (time.time() - t_start) / done if done else 0.0
        m, sec = divmod(int(round(left)), 60)
        eta = f"{m} min {sec:02d} s" if m else f"{sec} s"
        return (f"step {self.step:,}/{total:,} ({100 * self.step // max(total, 1)} %), {loss}, {tps:,.0f} tok/s, "
                f"eta {eta}")

    def _summary(self, start_step, t_start) -> dict:
        records = read_metrics(self.work_dir)
        valid = [r for r in records if r["split"] == "valid"]
        elapsed = time.time() - t_start
        steps = self.step - start_step
        tokens_per_step = self.task.tokens_per_step
        return {
            "steps": self.step, "steps_this_run": steps, "epoch": self.epoch, "seconds": elapsed,
            "tokens_per_s": (steps * tokens_per_step / elapsed) if tokens_per_step and elapsed > 0 else None,
            "last_valid": valid[-1] if valid else None,
            "best_valid_nll": self.best_nll if math.isfinite(self.best_nll) else None,
            "best_step": min(valid, key=lambda r: r["nll"])["step"] if valid else None,
            "stopped_early": bool(getattr(self, "stopped_early", False)),
            "work_dir": self.work_dir, "level": self.ds.level,
        }


def _finish_interrupted_save(work_dir: str, out) -> None:
    """Complete a validation's save that a kill cut short: :meth:`Trainer.validate` writes
    ``best.npz`` and then copies it to ``checkpoint.npz``, so a ``best.npz`` at a later
    step than ``checkpoint.npz`` (or without one) is the newest state of the run; it is
    copied over ``checkpoint.npz``. Unreadable files are left to the load to report."""
    best, latest = os.path.join(work_dir, "best.npz"), os.path.join(work_dir, "checkpoint.npz")
    if not os.path.exists(best):
        return
    try:
        best_step = _checkpoint.read_metadata(best).get("step")
        latest_step = _checkpoint.read_metadata(latest).get("step") if os.path.exists(latest) else -1
    except (OSError, _checkpoint.CheckpointError):
        return
    if type(best_step) is int and type(latest_step) is int and best_step > latest_step:
        _checkpoint.copy(best, latest)
        out(f"completed the save a stop interrupted: {latest} is now a copy of {best} (step {best_step}), the "
            "state both hold after a validation")


def _check_moments(state: dict, params: dict, path) -> None:
    """Raise a CheckpointError unless the optimiser ``state`` read from ``path`` holds, once
    it has taken a step, a moment of each kind it keeps for every parameter, in its shape
    (without them a resume would silently restart the moments from zero)."""
    kinds = [m for m in ("m", "v") if m in state]
    t = state.get("t")
    if not kinds or not isinstance(t, int) or t <= 0:
        return
    for moment in kinds:
        held = state[moment]
        missing = [k for k in params if k not in held]
        if missing:
            raise _checkpoint.CheckpointError(
                f"{path}: the optimiser ({state.get('name')}, {t} steps taken) has no {moment!r} moment of "
                f"{', '.join(missing)} (arrays opt.{moment}.<name>); the checkpoint lost part of its state and would "
                "not continue the run exactly: resume from an intact copy, or start a new run")
        for k in params:
            if tuple(held[k].shape) != tuple(params[k].shape):
                raise _checkpoint.CheckpointError(f"{path}: the optimiser's {moment!r} moment of {k} has shape "
                                                  f"{tuple(held[k].shape)}, not the parameter's {tuple(params[k].shape)}")


def _validations_since_best(records: list[dict], step: int) -> int:
    """Validations after the best one among the run's records up to ``step`` (early stopping
    resumes with the count it had)."""
    valid = [r["nll"] for r in records if r.get("split") == "valid" and r.get("step", 0) <= step]
    if not valid:
        return 0
    best = min(range(len(valid)), key=lambda i: (valid[i], i))  # the first of equal bests, as validate() keeps it
    return len(valid) - 1 - best


#: Seconds between the plain progress lines of :meth:`Trainer.run` where no bar is drawn.
PROGRESS_SECONDS = 10.0


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no such method, or a closed stream
        return False


def _flushed(write, flush: bool):
    """``write``, then a flush of stdout (when ``flush``): a line reaches a log file or pipe when said."""
    if not flush:
        return write

    def say(text):
        write(text)
        sys.stdout.flush()

    return say


def _describe(rec: dict) -> str:
    parts = [f"step {rec['step']}", f"epoch {rec['epoch']}", f"{rec['split']} nll {rec['nll']:.4f}"]
    if rec.get("level") == "char":
        parts.append(f"bpc {rec['bpc']:.4f}")
    elif rec.get("ppl") is not None:
        parts.append(f"ppl {rec['ppl']:.2f}")
    if rec.get("tokens_per_s"):
        parts.append(f"{rec['tokens_per_s']:,.0f} tok/s")
    if rec.get("test") is not None:
        parts.append(_figure(rec["test"]).replace("nll", "test nll", 1))
    return ", ".join(parts)


def _figure(rec: dict) -> str:
    """``nll 1.2345, bpc 1.7810`` (char level), ``nll ..., ppl ...`` (words) or ``nll ...`` (JSB)."""
    text = f"nll {rec['nll']:.4f}"
    if rec.get("level") == "char":
        return f"{text}, bpc {rec['bpc']:.4f}"
    return f"{text}, ppl {rec['ppl']:.2f}" if rec.get("ppl") is not None else text


def _describe_final(final: dict) -> str:
    first = next(iter(final.values()))
    return (f"final, best checkpoint (step {first['step']}), batch {first['batch_size']}: "
            + "; ".join(f"{split} {_figure(rec)}" for split, rec in final.items()))


def train(cfg: Config, work_dir, *, resume: bool = False, progress: bool = True) -> dict:
    """Train ``cfg`` in ``work_dir`` (or continue it with ``resume=True``); returns the summary."""
    if resume:
        trainer = Trainer.resume(work_dir, overrides=cfg.to_dict(), progress=progress)
    else:
        trainer = Trainer(cfg, work_dir, progress=progress)  # refuses a folder that holds a run
    return trainer.run()
