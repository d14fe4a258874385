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
(on the CPU). Ctrl+C saves a checkpoint before stopping; a non-finite loss stops the
run with :class:`TrainingDiverged` and leaves the last good checkpoint in place.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from . import backend as _backend
from . import checkpoint as _checkpoint
from . import data as _data
from . import graphs, lm, optim
from .config import PRESETS, RESUMABLE, Config, config_from_preset, label
from .optim import lr_at_step
from .runs import (TRAINER_FORMAT, TRAINER_VERSION, RunError, append_metrics, check_run_data, check_run_meta,
                   dataset_for_sampling, held_message, held_run, load_run, optimizer_arrays, optimizer_state,
                   plot_learning_curve, read_metrics, rng_from_state, rng_state)
from .tasks import (LN2, SequenceBatches, TokenBatches, count_params, evaluate, evaluate_dataset,
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
    "RunError",
    "train",
    "evaluate",
    "evaluate_sequences",
    "evaluate_dataset",
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
        self.task = task_for(cfg, self.ds, self.be)
        self.params = self.task.init_params()
        self.opt = optim.SGD(cfg.lr) if cfg.optimizer == "sgd" else optim.Adam(cfg.lr)
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
        self.step = 0
        self.best_nll = math.inf
        self._captured = None  # the graphs.CapturedLayer per layer of the training windows (CuPy, cuda_graphs)
        self._graphs_on = self.be.name == "cupy" and cfg.cuda_graphs and graphs.supports(lm.cell_of(self.params))
        self._train_sum = None  # Σ NLL and count since the last "train" record
        self._train_count = 0
        self._rec_tokens, self._rec_time = 0, 0.0  # throughput since the last "train" record
        self._train_tokens, self._train_time = 0, 0.0  # ... and since the last validation
        self._last_eval_step = -1

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
        loss, grads, nll_sum, n = self.task.train_window(self.params, self.step % self.epoch_size, self.rng,
                                                         self._layers)
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
        res = self.task.validate(self.params)
        if not math.isfinite(res["nll"]):
            raise TrainingDiverged(self._diverged_message())
        record = {"split": "valid", **res, **common, "time": time.time(), "eval_seconds": time.time() - now}
        append_metrics(self.work_dir, record)
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

    def _meta(self, opt_numbers: dict, position: dict) -> dict:
        return {
            "trainer_format": TRAINER_FORMAT, "trainer_version": TRAINER_VERSION,
            "config": self.cfg.to_dict(), "step": self.step, "epoch": self.epoch, "best_nll": self.best_nll
            if math.isfinite(self.best_nll) else None,
            "optimizer": opt_numbers, "rng": rng_state(self.rng), **position,
            "dataset": {"name": self.ds.name, "kind": self.ds.kind, "level": self.ds.level,
                        "vocab": list(self.ds.vocab) if self.ds.kind == "tokens" else None},
        }

    def save(self, name: str = "checkpoint.npz") -> str:
        """Write the whole training state atomically to ``work_dir/name``."""
        opt_numbers, opt_arrays = optimizer_arrays(self.opt)  # one host copy of the moments
        arrays = {f"param.{k}": v for k, v in self.params.items()}
        arrays.update(opt_arrays)
        position_arrays, position = self.task.position()
        arrays.update(position_arrays)
        return _checkpoint.save(os.path.join(self.work_dir, name), arrays, self._meta(opt_numbers, position))

    @classmethod
    def resume(cls, work_dir, *, overrides: dict | None = None, progress=True, out=print, ds=None) -> Trainer:
        """Continue the run saved in ``work_dir/checkpoint.npz``.

        ``overrides`` may change how long the run goes and where it runs (the settings
        whose declaration allows it, :data:`rhn_np.config.RESUMABLE`: ``max_steps``,
        ``epochs``, ``time_limit``, ``eval_every``, ``log_every``, ``backend``,
        ``data_dir``, ``cuda_graphs``); changing the model, the data or the recipe raises a
        :class:`RunError`. Runs written before ``cell`` and ``layers`` existed are RHN runs
        of one layer, and resume as such.
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
        check_run_meta(meta, path)
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
        self._restore(arrays, meta)
        return self

    def _restore(self, arrays: dict, meta: dict) -> None:
        for k in self.params:
            a = arrays.get(f"param.{k}")
            if a is None or tuple(a.shape) != tuple(self.params[k].shape):
                raise _checkpoint.CheckpointError(f"checkpoint parameter {k!r} is missing or has the wrong shape")
            self.params[k] = self.be.to_device(a, dtype=self.params[k].dtype)
        self.opt.load_state_dict(optimizer_state(meta["optimizer"], arrays))
        self.rng = rng_from_state(meta["rng"])
        self.step = int(meta["step"])
        self.best_nll = math.inf if meta.get("best_nll") is None else float(meta["best_nll"])
        self.task.restore(arrays, meta, self.step, self.params["b_out"].dtype)
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
        tokens_per_step = self.task.tokens_per_step
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


def train(cfg: Config, work_dir, *, resume: bool = False, progress: bool = True) -> dict:
    """Train ``cfg`` in ``work_dir`` (or continue it with ``resume=True``); returns the summary."""
    if resume:
        trainer = Trainer.resume(work_dir, overrides=cfg.to_dict(), progress=progress)
    else:
        trainer = Trainer(cfg, work_dir, progress=progress)  # refuses a folder that holds a run
    return trainer.run()
