"""A training run on disk: its work folder, metrics, checkpoints, and reading it back.

A run lives in a work folder::

    metrics.jsonl        one JSON line per evaluation (and one per training interval)
    checkpoint.npz       the latest state: parameters, optimiser, carried state, RNG
    best.npz             the parameters with the best validation NLL so far
    learning_curve.png   training and validation NLL against steps

:func:`load_run` reads the parameters, the :class:`rhn_np.config.Config` and the
metadata of a finished run (any cell, any number of layers); :func:`read_metrics` its
records. Checkpoints are :mod:`rhn_np.checkpoint` files (atomic, no pickle); the layout
of a run's is ``param.<key>`` (the model's parameters), ``opt.m.<key>`` / ``opt.v.<key>``
(Adam's moments), ``state.s`` (the carried state) and JSON metadata.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np

from . import backend as _backend
from . import checkpoint as _checkpoint
from . import checks
from . import data as _data
from . import plots as _plots
from .config import Config
from .tasks import LN2

__all__ = [
    "TRAINER_FORMAT",
    "TRAINER_VERSION",
    "RunError",
    "held_run",
    "held_message",
    "read_metrics",
    "read_records",
    "append_metrics",
    "plot_learning_curve",
    "check_run_meta",
    "check_run_data",
    "optimizer_arrays",
    "optimizer_state",
    "rng_state",
    "rng_from_state",
    "dataset_for_sampling",
    "load_run",
]

TRAINER_FORMAT = "rhn_np-run"
TRAINER_VERSION = 1


class RunError(ValueError):
    """A work folder that cannot be used as asked (e.g. --resume without a checkpoint)."""


def optimizer_arrays(opt) -> tuple[dict, dict]:
    """Optimiser state -> (numbers for the metadata, arrays ``opt.m.<k>`` / ``opt.v.<k>``)."""
    state = opt.state_dict()
    arrays = {}
    for moment in ("m", "v"):
        for k, a in state.pop(moment, {}).items():
            arrays[f"opt.{moment}.{k}"] = a
    return state, arrays


def optimizer_state(numbers: dict, arrays: dict) -> dict:
    state = dict(numbers)
    if state.get("name") == "SGD" and state.get("momentum"):
        state["m"] = {k[len("opt.m."):]: _backend.to_host(a) for k, a in arrays.items() if k.startswith("opt.m.")}
    if state.get("name") == "Adam":
        state["m"] = {k[len("opt.m."):]: _backend.to_host(a) for k, a in arrays.items() if k.startswith("opt.m.")}
        state["v"] = {k[len("opt.v."):]: _backend.to_host(a) for k, a in arrays.items() if k.startswith("opt.v.")}
    return state


def rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


def rng_from_state(state: dict) -> np.random.Generator:
    bitgen = getattr(np.random, state["bit_generator"])()
    bitgen.state = state
    return np.random.Generator(bitgen)


def held_run(work_dir) -> list[str]:
    """Which of ``checkpoint.npz`` / ``best.npz`` ``work_dir`` holds: a folder with either is a run."""
    return [f for f in ("checkpoint.npz", "best.npz") if os.path.exists(os.path.join(os.fspath(work_dir), f))]


def held_message(work_dir, held, *, cli=False) -> str:
    where = os.fspath(work_dir)
    other = "choose another --work-dir" if cli else "start afresh there with overwrite=True (its files are deleted), or choose another work folder"
    if "checkpoint.npz" in held:
        resume = "add --resume to continue it" if cli else "continue it with Trainer.resume(work_dir) (train(..., resume=True))"
        return f"{where} already holds a run ({', '.join(held)}); {resume}, or {other}"
    use = "rhn-np evaluate/sample --work-dir" if cli else "train.load_run(work_dir)"
    resume = "--resume" if cli else "Trainer.resume(work_dir)"
    return (f"{where} holds the best parameters of a run (best.npz) but no checkpoint.npz to resume from; use them "
            f"with {use}, continue the run from them with {resume} (best.npz holds the whole training state of its "
            f"step), or {other}")


#: What each key of a run's metadata holds, and its JSON type (:func:`check_run_meta`).
RUN_META = {"config": ("the run's configuration", dict), "step": ("the step count", int),
            "epoch": ("the epoch", int), "optimizer": ("the optimiser's state", dict),
            "rng": ("the random generator's state", dict)}


def check_run_meta(meta: dict, path, *, resume: bool = False) -> None:
    """Raise a :class:`rhn_np.checkpoint.CheckpointError` unless ``meta`` is the metadata
    of a run's checkpoint with the keys that using it needs: ``config``, ``step`` and
    ``epoch`` to evaluate or sample; with ``resume``, also ``optimizer`` and ``rng``."""
    if meta.get("trainer_format") != TRAINER_FORMAT:
        raise _checkpoint.CheckpointError(f"{path} is an rhn_np checkpoint but not one of a training run "
                                          "(no run metadata); it cannot be resumed or evaluated as a run")
    if meta.get("trainer_version") != TRAINER_VERSION:
        raise _checkpoint.CheckpointError(f"{path} was written by run format version {meta.get('trainer_version')}; "
                                          f"this rhn_np reads version {TRAINER_VERSION}")
    needed = list(RUN_META) if resume else ["config", "step", "epoch"]
    for key in needed:
        what, kind = RUN_META[key]
        value = meta.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            got = "has none" if value is None else f"has {type(value).__name__} {value!r:.40}"
            raise _checkpoint.CheckpointError(
                f"{path}: its run metadata lacks a valid {key!r} ({what}; it {got}), so it cannot be "
                f"{'resumed' if resume else 'used as a run'}: the file is damaged or was not written by rhn_np")


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


def read_metrics(work_dir) -> list[dict]:
    """The records of ``work_dir/metrics.jsonl`` (empty list when there is none)."""
    return read_records(os.path.join(os.fspath(work_dir), "metrics.jsonl"))


def read_records(path, *, warn: bool = True) -> list[dict]:
    """The JSON records of a JSON-lines file, one per line (empty list when there is
    none). A last line cut short by a crash is ignored (with a warning when ``warn``);
    a damaged line anywhere else raises ``ValueError`` naming it."""
    path = os.fspath(path)
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
                if warn:
                    warnings.warn(f"{path}: ignoring its last line, a record cut short ({line[:40]!r}...)",
                                  stacklevel=3)
                continue
            raise ValueError(f"{path}, line {i}: not a JSON record ({exc.msg}); fix or delete that line") from None
    return records


def append_metrics(work_dir, record: dict) -> None:
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
    """Plot training and validation NLL (bits per char at char level) against steps.

    Drawn in the slide style of :mod:`rhn_np.plots` (``SLIDE_RC``: large fonts; 10 × 5.6 inches,
    about 1300 × 730 pixels) on a figure of its own that pyplot never sees: it works under
    any backend, without a display, and leaves the caller's backend, rcParams and open
    figures as they were. Returns the path written (``work_dir/learning_curve.png`` by
    default).
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    work_dir = os.fspath(work_dir)
    records = read_metrics(work_dir)
    level = next((r.get("level") for r in records if r.get("level")), "word")
    unit, scale = ("bits per character", 1.0 / LN2) if level == "char" else (
        ("NLL per time step (nats)", 1.0) if level == "frame" else ("NLL per token (nats)", 1.0))
    path = os.path.join(work_dir, "learning_curve.png") if path is None else os.fspath(path)
    with matplotlib.rc_context(_plots.SLIDE_RC):  # rcParams are read while drawing and saving: both inside
        fig = Figure(figsize=(10, 5.6), layout="constrained")
        FigureCanvasAgg(fig)  # Agg whatever pyplot's backend is
        ax = fig.add_subplot()
        for split, style in (("train", "-"), ("valid", "o-")):
            pts = [(r["step"], r["nll"] * scale) for r in records
                   if r.get("split") == split and r.get("nll") is not None]
            if pts:
                # A resumed run re-logs nothing, but keep only the last record per step.
                d = dict(pts)
                steps = sorted(d)
                label = "train (mean since the previous point)" if split == "train" else "valid (dropout off)"
                ax.plot(steps, [d[k] for k in steps], style, label=label)
        ax.set_xlabel("training step")
        ax.set_ylabel(unit)
        ax.set_title(f"learning curve: {os.path.basename(os.path.abspath(work_dir))}")
        if ax.lines:
            ax.legend(loc="best")
        fig.savefig(path, dpi=130, format="png")
    return path


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
    check_run_meta(meta, path)
    params = {k[len("param."):]: a for k, a in arrays.items() if k.startswith("param.")}
    try:
        checks.finite_params(params, where=f" in {path}")  # named here, not as the NaN state it would cause
    except ValueError as exc:
        raise RunError(str(exc)) from None
    cfg = Config.from_dict(meta["config"])
    return params, cfg, meta
