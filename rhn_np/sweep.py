r"""Sweeps: many independent training runs (the paper's Fig. 4 and depth table), on Dask.

A **sweep** is

* a set of **arms**: the cartesian product of a few config fields (``cell`` × ``depth``
  for Fig. 4), with optional **linked** fields whose value follows an arm field (the
  parameter budget follows the depth, so that the cells have equal counts at each depth);
* a **search space**: fixed values, ``choice`` lists, ``uniform`` and ``log_uniform``
  ranges over :class:`rhn_np.config.Config` fields, each optionally only for some arms
  (``when``: the transform bias for the RHN only);
* a number of **trials** per arm and a **budget** per trial (epochs, steps or minutes,
  and early stopping on validation, ``patience``).

Trial ``k`` of an arm draws its hyper-parameters from a generator seeded by the sweep's
seed, the arm and ``k`` alone, so the same spec always means the same trials, and
``--trials 40`` after ``--trials 30`` adds ten trials without changing the first thirty.
A trial is one ordinary run of :class:`rhn_np.train.Trainer` in its own work folder
``DIR/trials/<id>/``; it returns one record (:func:`run_trial`). The records go to
``DIR/results.jsonl``, one whole line per finished trial.

Files of a sweep folder ``DIR``::

    sweep.json       the spec, and the digest that identifies it (a changed spec is refused)
    results.jsonl    one record per finished trial, appended as each finishes
    trials/<id>/     the trial's run: metrics.jsonl, best.npz, learning_curve.png, and
                     record.json once it finished (checkpoint.npz while it runs)
    swarm.png        :func:`plot_swarm`, the paper's Fig. 4

Running the same sweep again skips the finished trials (those in ``results.jsonl`` or
with a ``record.json``: a driver killed after a trial finished loses nothing) and runs
the rest; a trial that was cut short resumes from its last checkpoint.

Execution (:func:`run_sweep`): ``workers=0`` runs the trials one by one in the calling
process (no Dask needed); ``workers=N`` starts a Dask ``LocalCluster`` of ``N``
single-threaded worker processes; ``scheduler="tcp://host:8786"`` uses a running Dask
cluster (``dask scheduler`` / ``dask worker``, or dask-jobqueue on SLURM or PBS;
``docs/experiments.md``). Workers load the data themselves (``data_dir`` or their
cache); the sweep folder must be on a file system the workers share with the driver.
A worker that dies mid-trial has the trial rescheduled by Dask; the new attempt resumes
from that trial's last checkpoint.

Built-in sweeps (:data:`SWEEPS`): ``fig4`` (JSB Chorales, RHN / DT-RNN / DT(S)-RNN at
depths 1, 2, 4, 6, random SGD search), ``ptb-depth`` (the authors' depth table, depths
1-10 at their widths, tied and untied, their recipe: a GPU-cluster job) and
``ptb-depth-cpu`` (the same question on ptb-char at a CPU budget). The budgets and
ranges of ``fig4`` are ours: the paper gives none.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import statistics
import time
import traceback

import numpy as np

from . import checkpoint as _checkpoint
from . import data as _data
from .config import FIELDS, RESUMABLE, Config, config_from_preset
from .runs import RunError, load_run, read_metrics, read_records
from .tasks import evaluate_dataset
from .train import Trainer, TrainingDiverged

__all__ = ["Spec", "SWEEPS", "builtin", "load_spec", "spec_to_toml", "trials", "run_trial", "run_sweep",
           "read_results", "status", "summary_table", "plot_swarm", "SweepError"]

FORMAT = "rhn_np-sweep"
VERSION = 1
RESULTS = "results.jsonl"
_KINDS = ("choice", "uniform", "log_uniform")
_BUDGET_KEYS = ("epochs", "steps", "minutes", "patience")
# The record's own keys; every other key of a record is a hyper-parameter of the trial.
RECORD_KEYS = ("trial", "arm", "index", "status", "params", "hidden", "valid_nll", "valid_step", "test_nll",
               "last_finite_nll", "error", "steps", "epochs_run", "stopped_early", "seconds", "host")


class SweepError(ValueError):
    """A sweep that cannot run as asked (a bad spec, a folder holding another sweep)."""


# ----------------------------------------------------------------------------
# The spec
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class Spec:
    """What a sweep is; see the module docstring. Every field is plain data (TOML-able).

    Attributes
    ----------
    name : str
    preset : str
        The :data:`rhn_np.config.PRESETS` entry every trial starts from.
    arms : dict[str, list]
        Config field -> values; the arms are their cartesian product, in this order.
    linked : dict[str, dict]
        Config field -> ``{"on": arm field, "values": {str(arm value): value}}``.
    space : dict[str, object]
        Config field -> a fixed value, or ``{"choice": [...]}``, ``{"uniform": [lo, hi]}``,
        ``{"log_uniform": [lo, hi]}``, each optionally with ``"when": {arm field: [values]}``
        (elsewhere the preset's value).
    trials : int
        Trials per arm.
    budget : dict
        ``epochs``, ``steps``, ``minutes`` (whichever ends a trial first) and ``patience``
        (validations without a new best before it stops early); ``None``: no such limit.
    seed : int
    plot : dict
        ``ceiling``: the NLL at which diverged trials are drawn (default: from the data);
        ``title``.
    """

    name: str
    preset: str
    arms: dict
    space: dict = dataclasses.field(default_factory=dict)
    linked: dict = dataclasses.field(default_factory=dict)
    trials: int = 1
    budget: dict = dataclasses.field(default_factory=dict)
    seed: int = 0
    plot: dict = dataclasses.field(default_factory=dict)

    def check(self) -> Spec:
        """Validate the spec; raises :class:`SweepError` saying which part is wrong."""
        def bad(msg):
            raise SweepError(f"sweep {self.name!r}: {msg}")

        if not isinstance(self.name, str) or not self.name.strip():
            raise SweepError(f"a sweep needs a name (a non-empty string), got {self.name!r}")
        try:
            config_from_preset(self.preset)
        except ValueError as exc:
            bad(str(exc))
        if not isinstance(self.trials, int) or isinstance(self.trials, bool) or self.trials < 1:
            bad(f"trials (per arm) must be an integer >= 1, got {self.trials!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            bad(f"seed must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.arms, dict) or not self.arms:
            bad("arms must map at least one config field to a list of values, e.g. {'cell': ['rhn', 'dt_rnn']}")
        for table in ("arms", "space", "linked", "budget", "plot"):
            if not isinstance(getattr(self, table), dict):
                bad(f"{table} must be a table (dict), got {type(getattr(self, table)).__name__}")
        seen = {}
        for table in ("arms", "linked", "space"):
            for k in getattr(self, table):
                if k not in FIELDS:
                    bad(f"{table}.{k} is not a config field; fields: {', '.join(FIELDS)}")
                if k in seen:
                    bad(f"{k} is in both {seen[k]} and {table}; give each field once")
                seen[k] = table
        for k in ("epochs", "max_steps", "time_limit", "patience", "seed"):
            if k in seen:
                bad(f"{k} is set by the sweep (budget.epochs/steps/minutes/patience; each trial's seed comes from "
                    f"the sweep's seed), not in {seen[k]}")
        for k, values in self.arms.items():
            if not isinstance(values, list) or not values or len(set(map(_key, values))) != len(values):
                bad(f"arms.{k} must be a non-empty list of distinct values, got {values!r}")
        for k, link in self.linked.items():
            if not isinstance(link, dict) or set(link) != {"on", "values"} or link["on"] not in self.arms:
                bad(f"linked.{k} must be {{'on': <an arm field>, 'values': {{<arm value>: <value>}}}}, got {link!r}")
            missing = [v for v in self.arms[link["on"]] if _key(v) not in link["values"]]
            if missing:
                bad(f"linked.{k} has no value for {link['on']} = {', '.join(map(_key, missing))}")
        for k, entry in self.space.items():
            if isinstance(entry, dict):
                kinds = [x for x in _KINDS if x in entry]
                extra = set(entry) - set(_KINDS) - {"when"}
                if len(kinds) != 1 or extra:
                    bad(f"space.{k} must have exactly one of {', '.join(_KINDS)} (and optionally 'when'), got {entry!r}")
                kind, arg = kinds[0], entry[kinds[0]]
                if kind == "choice" and (not isinstance(arg, list) or not arg):
                    bad(f"space.{k}.choice must be a non-empty list, got {arg!r}")
                if kind != "choice":
                    if (not isinstance(arg, list) or len(arg) != 2
                            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in arg)
                            or not arg[0] <= arg[1]):
                        bad(f"space.{k}.{kind} must be [low, high] with low <= high, got {arg!r}")
                    if kind == "log_uniform" and arg[0] <= 0:
                        bad(f"space.{k}.log_uniform needs low > 0, got {arg!r}")
                when = entry.get("when", {})
                if not isinstance(when, dict) or any(w not in self.arms or not isinstance(v, list)
                                                     for w, v in when.items()):
                    bad(f"space.{k}.when must map arm fields to lists of their values, got {when!r}")
        unknown = set(self.budget) - set(_BUDGET_KEYS)
        if unknown:
            bad(f"budget has unknown keys {sorted(unknown)}; known: {', '.join(_BUDGET_KEYS)}")
        for k in _BUDGET_KEYS:
            v = self.budget.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0
                                  or (k != "minutes" and not float(v).is_integer())):
                bad(f"budget.{k} must be a positive {'number' if k == 'minutes' else 'integer'} or absent, got {v!r}")
        if not any(self.budget.get(k) for k in ("epochs", "steps", "minutes")):
            bad("the budget needs epochs, steps or minutes: a trial must end")
        for trial in trials(self, per_arm=1):
            try:  # every arm's config is valid (the first trial of each)
                trial_config(trial)
            except ValueError as exc:
                bad(f"arm {trial['arm']}: {exc}")
        return self

    def to_dict(self) -> dict:
        return copy.deepcopy(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> Spec:
        if not isinstance(d, dict):
            raise SweepError(f"a sweep spec is a table (dict), got {type(d).__name__}")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise SweepError(f"unknown sweep spec keys {sorted(unknown)}; known: "
                             f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        missing = {"name", "preset", "arms"} - set(d)
        if missing:
            raise SweepError(f"a sweep spec needs {', '.join(sorted(missing))}")
        return cls(**copy.deepcopy(d))

    def identity(self) -> str:
        """The digest that names this sweep: the spec without ``trials`` (adding trials
        extends a sweep) and without ``plot`` (how it is drawn)."""
        d = self.to_dict()
        d.pop("trials")
        d.pop("plot")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def _key(v) -> str:
    """An arm value as a string (TOML keys, trial ids): ``True`` -> ``"true"``, 6 -> ``"6"``."""
    return json.dumps(v) if isinstance(v, bool) else str(v)


#: The paper's Fig. 4 at CPU scale. Ours: the paper gives no sizes, ranges or budgets.
FIG4 = dict(
    name="fig4",
    preset="jsb",
    arms={"cell": ["rhn", "dt_rnn", "dts_rnn"], "depth": [1, 2, 4, 6]},
    # Equal parameter counts across the cells at each depth, growing with depth.
    linked={"params": {"on": "depth", "values": {"1": 25_000, "2": 40_000, "4": 70_000, "6": 100_000}}},
    space={
        "optimizer": "sgd",
        "lr_schedule": "epoch",  # a constant learning rate (max_epoch beyond the budget)
        "max_epoch": 1_000_000,
        "lr": {"log_uniform": [0.001, 0.3]},
        "momentum": {"uniform": [0.0, 0.95]},
        "init_scale": {"log_uniform": [0.02, 0.3]},
        "clip": {"log_uniform": [1.0, 100.0]},
        "transform_bias": {"uniform": [-4.0, 0.0], "when": {"cell": ["rhn"]}},
    },
    trials=20,
    budget={"epochs": 20, "patience": 5},
    seed=0,
    plot={"title": "JSB Chorales: best validation NLL of each random-search trial (Fig. 4)"},
)

#: The authors' depth table (their README): depth 1 -> 10 at widths that keep the
#: untied model at about 32M parameters, tied and untied, the authors' PTB recipe.
PTB_DEPTH = dict(
    name="ptb-depth",
    preset="ptb_sota",
    arms={"depth": list(range(1, 11)), "tied": [True, False]},
    linked={"hidden": {"on": "depth", "values": {str(d): w for d, w in zip(
        range(1, 11), (1275, 1180, 1110, 1050, 1000, 960, 920, 890, 860, 830))}}},
    space={},
    trials=1,
    budget={"epochs": 500},  # the authors': up to 500 epochs, the best validation kept
    seed=0,
    plot={"title": "PTB: validation NLL per word against recurrence depth (the authors' depth table)"},
)

#: The depth question at CPU scale: ptb-char, depths 1-10 at one parameter budget, a
#: short Adam run each. Ours.
PTB_DEPTH_CPU = dict(
    name="ptb-depth-cpu",
    preset="demo",
    arms={"depth": list(range(1, 11))},
    space={"dataset": "ptb-char", "params": 200_000, "tied": False, "decay_steps": 1500, "eval_every": 250},
    trials=1,
    budget={"steps": 1500, "minutes": 10},
    seed=0,
    plot={"title": "ptb-char: validation bits per character against recurrence depth (200k parameters)"},
)

#: The built-in sweeps by name.
SWEEPS: dict[str, dict] = {s["name"]: s for s in (FIG4, PTB_DEPTH, PTB_DEPTH_CPU)}


def builtin(name: str, *, trials=None, cells=None, depths=None, epochs=None, seed=None) -> Spec:
    """A built-in sweep (:data:`SWEEPS`) with the options of ``rhn-np sweep run``.

    ``trials`` per arm, ``cells`` and ``depths`` (subsets of its arms, or new values),
    ``epochs`` (the budget) and ``seed``: ``None`` keeps the sweep's own.
    """
    if name not in SWEEPS:
        raise SweepError(f"unknown sweep {name!r}; built-in sweeps: {', '.join(SWEEPS)} (or give a spec file, "
                         "NAME.toml)")
    d = copy.deepcopy(SWEEPS[name])
    for field, values in (("cell", cells), ("depth", depths)):
        if values is None:
            continue
        if field not in d["arms"]:
            raise SweepError(f"sweep {name!r} has no {field} arms (its arms: {', '.join(d['arms'])})")
        d["arms"][field] = list(values)
        for link in d.get("linked", {}).values():
            if link["on"] == field and any(_key(v) not in link["values"] for v in values):
                known = ", ".join(link["values"])
                raise SweepError(f"sweep {name!r} sizes its models for {field} {known} only; got {values}")
    if trials is not None:
        d["trials"] = trials
    if epochs is not None:
        d["budget"]["epochs"] = epochs
    if seed is not None:
        d["seed"] = seed
    return Spec.from_dict(d).check()


def load_spec(path) -> Spec:
    """A sweep spec from a TOML file (the layout :func:`spec_to_toml` writes)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise SweepError("reading a TOML spec on Python 3.10 needs tomli (pip install tomli)") from None
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            d = tomllib.load(fh)
    except FileNotFoundError:
        raise SweepError(f"no sweep spec file {path}; built-in sweeps: {', '.join(SWEEPS)}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(f"{path} is not valid TOML: {exc}") from None
    d.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    return Spec.from_dict(d).check()


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise SweepError(f"{v!r} ({type(v).__name__}) cannot be written to TOML")


def spec_to_toml(spec: Spec) -> str:
    """The spec as TOML, to copy and edit (``rhn-np sweep show fig4 > mine.toml``)."""
    d = spec.to_dict()
    lines = [f"# rhn-np sweep spec; run with: rhn-np sweep run {d['name']}.toml --work-dir DIR"]
    for k in ("name", "preset", "trials", "seed"):
        lines.append(f"{k} = {_toml_value(d[k])}")
    for table in ("budget", "arms", "linked", "space", "plot"):
        lines.append(f"\n[{table}]")
        for k, v in d[table].items():
            if v is not None:
                lines.append(f"{k} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------
# Trials
# ----------------------------------------------------------------------------
def _arm_label(arm: dict) -> str:
    return "-".join(_key(v) if k == "cell" else f"{k}{_key(v)}" for k, v in arm.items())


def _arm_seed(label_: str) -> int:
    return int.from_bytes(hashlib.sha256(label_.encode()).digest()[:8], "little")


def _draw(entry, rng):
    kind = next(k for k in _KINDS if k in entry)
    arg = entry[kind]
    if kind == "choice":
        v = arg[int(rng.integers(len(arg)))]
        return v
    lo, hi = float(arg[0]), float(arg[1])
    u = float(rng.uniform())
    if kind == "uniform":
        value = lo + (hi - lo) * u
    else:
        value = math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u)
    return float(f"{value:.6g}")  # readable records; the same number every time


def trials(spec: Spec, *, per_arm: int | None = None) -> list[dict]:
    """Every trial of ``spec`` (``per_arm``: only the first that many of each arm).

    A trial is ``{"trial": id, "arm": label, "index": k, "preset": ..., "settings":
    {config field: value}, "budget": {...}}``. Trial ``k`` of an arm depends only on the
    spec's seed, the arm and ``k``; ids read ``<cell>-depth<d>-t<k>``.
    """
    n = spec.trials if per_arm is None else per_arm
    out = []
    fields = list(spec.arms)
    for values in itertools.product(*(spec.arms[f] for f in fields)):
        arm = dict(zip(fields, values))
        arm_label = _arm_label(arm)
        for k in range(n):
            rng = np.random.default_rng([spec.seed, _arm_seed(arm_label), k])
            settings = dict(arm)
            for f, link in spec.linked.items():
                settings[f] = link["values"][_key(arm[link["on"]])]
            for f, entry in spec.space.items():  # in the spec's order: the draws are reproducible
                if not isinstance(entry, dict):
                    settings[f] = entry
                    continue
                value = _draw(entry, rng)  # drawn even where unused, so the other draws do not shift
                when = entry.get("when", {})
                if all(arm[w] in allowed for w, allowed in when.items()):
                    settings[f] = value
            settings["seed"] = int(rng.integers(2**31 - 1))
            out.append({"trial": f"{arm_label}-t{k:03d}", "arm": arm_label, "index": k, "preset": spec.preset,
                        "settings": settings, "budget": dict(spec.budget)})
    return out


def trial_config(trial: dict, *, data_dir=None, backend=None) -> Config:
    """The :class:`rhn_np.config.Config` of one trial."""
    b = trial["budget"]
    cfg = config_from_preset(trial["preset"], **trial["settings"])
    cfg.epochs = int(b["epochs"]) if b.get("epochs") else 1_000_000
    cfg.max_steps = int(b["steps"]) if b.get("steps") else None
    cfg.time_limit = float(b["minutes"]) if b.get("minutes") else None
    cfg.patience = int(b["patience"]) if b.get("patience") else None
    cfg.final_eval = False  # the record's test NLL is the trial's own evaluation of best.npz
    if data_dir is not None:
        cfg.data_dir = os.fspath(data_dir)
    if backend is not None:
        cfg.backend = backend
    return cfg.check()


_DATASETS: dict = {}


def _dataset(name, data_dir):
    """Each worker process loads a data set once (from ``data_dir`` or its own cache)."""
    key = (_data.canonical_name(name), None if data_dir is None else os.path.abspath(data_dir))
    if key not in _DATASETS:
        _DATASETS[key] = _data.load(name, root=data_dir)
    return _DATASETS[key]


@contextlib.contextmanager
def _trial_lock(folder):
    """Hold ``folder/.lock`` while a trial runs there: a second attempt at the same trial
    (a driver restarted while an orphaned worker still runs it) waits, then finds its record."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ".lock"), "a+") as fh:
        try:
            import fcntl
        except ImportError:  # Windows: no lock; trials of one sweep do not share folders there
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_trial(trial: dict, sweep_dir, *, data_dir=None, backend=None, keep: str = "best",
              one_thread: bool = False) -> dict:
    """Run one trial (or finish it: a trial cut short resumes from its checkpoint); its record.

    The run is an ordinary :class:`rhn_np.train.Trainer` run in
    ``sweep_dir/trials/<id>/``, with early stopping (``budget.patience``). The record
    holds ``trial``, ``arm``, every hyper-parameter of the trial (``cell``, ``depth``,
    ``lr``, ... and its ``seed``), ``params`` (the parameter count), ``hidden``,
    ``valid_nll`` (the best validation NLL per time step / token) and ``valid_step`` (the
    step it was reached), ``test_nll`` of the best checkpoint, ``status`` (``ok``,
    ``diverged`` with ``last_finite_nll``, or ``failed`` with ``error``) and
    ``seconds``. It is also written to the trial folder as ``record.json``; a trial that
    has one is not run again (its record is returned).

    ``keep``: which checkpoints stay once the trial ends: ``"best"`` (``best.npz``, for
    analysis; the default), ``"all"``, or ``"none"``. ``one_thread``: the run's BLAS at one
    thread (``threads=1``; the sweep's Dask workers).
    """
    if keep not in ("best", "all", "none"):
        raise SweepError(f"keep must be 'best', 'all' or 'none', got {keep!r}")
    folder = os.path.join(os.fspath(sweep_dir), "trials", trial["trial"])
    done = os.path.join(folder, "record.json")
    with _trial_lock(folder):
        if os.path.exists(done):
            with open(done, encoding="utf-8") as fh:
                return json.load(fh)
        t0 = time.time()
        settings = trial["settings"]
        record = {"trial": trial["trial"], "arm": trial["arm"], "index": trial["index"], **settings,
                  "status": "ok", "params": None, "hidden": None, "valid_nll": None, "valid_step": None,
                  "test_nll": None, "last_finite_nll": None, "error": None, "steps": None, "epochs_run": None,
                  "stopped_early": None, "seconds": None, "host": os.uname().nodename if hasattr(os, "uname") else None}
        trainer = None
        log = []
        try:
            cfg = trial_config(trial, data_dir=data_dir, backend=backend)
            if one_thread:  # the trainer sets its BLAS threads for the run (rhn_np.backend.limit_blas_threads)
                cfg.threads = 1
            ds = _dataset(cfg.dataset, cfg.data_dir)
            if os.path.exists(os.path.join(folder, "checkpoint.npz")):  # cut short (a kill): continue it
                trainer = Trainer.resume(folder, overrides={k: getattr(cfg, k) for k in RESUMABLE}, progress=False,
                                         out=log.append, ds=ds)
            else:
                trainer = Trainer(cfg, folder, ds=ds, progress=False, out=log.append, overwrite=True)
            record["params"], record["hidden"] = trainer.n_params, trainer.cfg.hidden
            summary = trainer.run()
            record.update(steps=summary["steps"], epochs_run=summary["epoch"], stopped_early=summary["stopped_early"])
        except TrainingDiverged as exc:
            record["status"], record["error"] = "diverged", str(exc)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # recorded, not raised: one bad trial does not stop a sweep
            record["status"] = "failed"
            record["error"] = f"{type(exc).__name__}: {exc}"
            record["traceback"] = traceback.format_exc(limit=8)
        if record["error"]:  # paths inside the sweep folder as relative ones: the record reads the same anywhere
            record["error"] = record["error"].replace(os.path.abspath(os.fspath(sweep_dir)) + os.sep, "")
        if trainer is not None:
            record["steps"] = trainer.step if record["steps"] is None else record["steps"]
            _fill_from_metrics(record, trainer)
        record["seconds"] = round(time.time() - t0, 3)  # this attempt's (a resumed trial: since the resume)
        _finish_folder(folder, keep)
        with _checkpoint.atomic_open(done) as fh:
            fh.write(json.dumps(record).encode())
        return record


def _fill_from_metrics(record: dict, trainer) -> None:
    records = read_metrics(trainer.work_dir)
    valid = [r for r in records if r.get("split") == "valid" and math.isfinite(r["nll"])]
    if valid:
        best = min(valid, key=lambda r: r["nll"])
        record["valid_nll"], record["valid_step"] = best["nll"], best["step"]
    finite = [r["nll"] for r in records if r.get("split") in ("train", "valid") and math.isfinite(r["nll"])]
    if record["status"] == "diverged":
        record["last_finite_nll"] = finite[-1] if finite else None
        return
    if record["status"] != "ok" or not valid:
        return
    try:  # the test NLL of the best checkpoint (the one valid_nll belongs to)
        params, cfg, _ = load_run(trainer.work_dir, "best", backend=trainer.be)
        res = evaluate_dataset(params, trainer.ds, "test", batch_size=cfg.eval_batch_size, bptt=cfg.bptt,
                               impl=cfg.impl)
        record["test_nll"] = res["nll"]
    except (RunError, ValueError) as exc:
        record["error"] = f"test evaluation: {exc}"


def _finish_folder(folder, keep):
    names = {"best": ("checkpoint.npz",), "none": ("checkpoint.npz", "best.npz"), "all": ()}[keep]
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, name))


# ----------------------------------------------------------------------------
# The sweep folder
# ----------------------------------------------------------------------------
def read_results(sweep_dir) -> list[dict]:
    """The records of ``sweep_dir/results.jsonl`` (a last line cut short by a kill is
    ignored; that trial is then recovered from its ``record.json`` or run again)."""
    try:
        return read_records(os.path.join(os.fspath(sweep_dir), RESULTS), warn=False)
    except ValueError as exc:
        raise SweepError(str(exc)) from None


def _append(sweep_dir, record) -> None:
    """One whole line per record, flushed to disk before the next."""
    path = os.path.join(os.fspath(sweep_dir), RESULTS)
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            # The last record was cut short by a kill: drop the fragment (that trial is
            # recovered from its record.json, or runs again), so every line stays whole.
            with open(path, "rb") as fh:
                keep = fh.read().rfind(b"\n") + 1
            os.ftruncate(fd, keep)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def open_sweep(spec: Spec, sweep_dir) -> None:
    """Create ``sweep_dir`` for ``spec``, or check that it holds this same sweep."""
    sweep_dir = os.fspath(sweep_dir)
    meta_path = os.path.join(sweep_dir, "sweep.json")
    if os.path.exists(sweep_dir) and not os.path.isdir(sweep_dir):
        raise SweepError(f"{sweep_dir} is a file; give a folder for the sweep (--work-dir)")
    if os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as fh:
            try:
                meta = json.load(fh)
            except json.JSONDecodeError:
                raise SweepError(f"{meta_path} is damaged (not JSON); it names the sweep this folder holds") from None
        if meta.get("format") != FORMAT:
            raise SweepError(f"{meta_path} is not an rhn_np sweep file")
        if meta.get("identity") != spec.identity():
            old = Spec.from_dict(meta["spec"]).to_dict()
            new = spec.to_dict()
            diff = [k for k in new if k not in ("trials", "plot") and old.get(k) != new[k]]
            raise SweepError(
                f"{sweep_dir} holds another sweep ({old['name']!r}; it differs from this one in "
                f"{', '.join(diff) or 'its spec'}): its trials would not be this sweep's. Give another --work-dir, "
                f"or run the sweep it holds (its spec: {meta_path}; rhn-np sweep status {sweep_dir})")
        if meta["spec"].get("trials") != spec.trials or meta["spec"].get("plot") != spec.plot:
            meta["spec"] = spec.to_dict()  # more (or fewer) trials per arm: the same sweep, extended
            _write_json(meta_path, meta)
        return
    if os.path.isdir(sweep_dir) and os.path.exists(os.path.join(sweep_dir, RESULTS)):
        raise SweepError(f"{sweep_dir} has {RESULTS} but no sweep.json: not a folder this sweep can extend")
    try:
        os.makedirs(sweep_dir, exist_ok=True)
    except OSError as exc:
        raise SweepError(f"cannot create the sweep folder {sweep_dir}: {exc.strerror or exc}") from exc
    _write_json(meta_path, {"format": FORMAT, "version": VERSION, "identity": spec.identity(),
                            "spec": spec.to_dict(), "created": time.strftime("%Y-%m-%d %H:%M:%S")})


def _write_json(path, obj):
    with _checkpoint.atomic_open(path) as fh:
        fh.write((json.dumps(obj, indent=2) + "\n").encode())


def spec_of(sweep_dir) -> Spec:
    """The spec stored in a sweep folder."""
    path = os.path.join(os.fspath(sweep_dir), "sweep.json")
    if not os.path.exists(path):
        raise SweepError(f"no sweep in {sweep_dir} (no sweep.json): run one there first (rhn-np sweep run fig4 "
                         f"--work-dir {sweep_dir})")
    with open(path, encoding="utf-8") as fh:
        return Spec.from_dict(json.load(fh)["spec"])


def _recover(sweep_dir, known: set) -> list[dict]:
    """Records of trials that finished (``record.json``) but are not in results.jsonl yet
    (the driver was killed in between): appended now."""
    root = os.path.join(os.fspath(sweep_dir), "trials")
    found = []
    if not os.path.isdir(root):
        return found
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name, "record.json")
        if name in known or not os.path.exists(path):
            continue
        try:
            with open(path, encoding="utf-8") as fh:
                rec = json.load(fh)
        except (OSError, json.JSONDecodeError):
            continue  # written atomically: a damaged one is not ours; the trial runs again
        _append(sweep_dir, rec)
        found.append(rec)
    return found


# ----------------------------------------------------------------------------
# Running a sweep
# ----------------------------------------------------------------------------
def run_sweep(spec: Spec, sweep_dir, *, workers: int = 2, scheduler: str | None = None, data_dir=None,
              backend: str | None = None, keep: str = "best", progress: bool = True, out=print) -> list[dict]:
    """Run every trial of ``spec`` not finished yet in ``sweep_dir``; returns all records.

    ``workers=0``: one by one in this process, without Dask. ``workers=N`` (N >= 1): a
    Dask ``LocalCluster`` of N single-threaded worker processes (BLAS at one thread in
    each). ``scheduler``: the address of a running Dask scheduler (``workers`` is then
    ignored). ``data_dir``: where the workers read the data (default: their cache).
    ``backend``: the trials' array backend (``"cupy"`` on GPU workers). ``keep``: see
    :func:`run_trial`. A progress bar counts finished trials and shows the best NLL of
    each arm so far.
    """
    spec = spec.check()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise SweepError(f"workers must be an integer >= 0 (0: no Dask, in this process), got {workers!r}")
    if keep not in ("best", "all", "none"):
        raise SweepError(f"keep must be 'best', 'all' or 'none', got {keep!r}")
    sweep_dir = os.path.abspath(os.fspath(sweep_dir))  # workers may run elsewhere: no relative paths
    data_dir = None if data_dir is None else os.path.abspath(os.fspath(data_dir))
    open_sweep(spec, sweep_dir)
    everything = trials(spec)
    wanted = {t["trial"] for t in everything}
    results = read_results(sweep_dir)
    results += _recover(sweep_dir, {r["trial"] for r in results})
    done = {r["trial"] for r in results}
    # Trial k of every arm before trial k + 1 of any: a sweep cut short has every arm alike.
    pending = sorted((t for t in everything if t["trial"] not in done), key=lambda t: t["index"])
    mine = [r for r in results if r["trial"] in wanted]
    bar = _Progress(len(everything), mine, progress, spec)
    say = bar.write if progress else out
    say(f"sweep {spec.name}: {len(everything)} trials in {len(everything) // spec.trials} arms, {len(mine)} finished, "
        f"{len(pending)} to run, in {sweep_dir}")
    kwargs = dict(data_dir=data_dir, backend=backend, keep=keep)
    try:
        if not pending:
            pass
        elif scheduler is None and workers == 0:
            for t in pending:
                rec = run_trial(t, sweep_dir, **kwargs)
                _append(sweep_dir, rec)
                results.append(rec)
                bar.add(rec)
        else:
            for rec in _run_on_dask(pending, sweep_dir, workers, scheduler, kwargs, say):
                _append(sweep_dir, rec)
                results.append(rec)
                bar.add(rec)
    finally:
        bar.close()
    return [r for r in results if r["trial"] in wanted]


def _run_on_dask(pending, sweep_dir, workers, scheduler, kwargs, say):
    try:
        import dask
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise SweepError("running trials on Dask needs the sweep extra: pip install 'rhn-np[sweep]' "
                         "(or --workers 0: one by one in this process)") from None
    with contextlib.ExitStack() as stack:
        if scheduler is not None:
            client = stack.enter_context(Client(scheduler, timeout="30s"))
            n = len(client.scheduler_info().get("workers", {}))
            say(f"connected to the Dask scheduler at {scheduler} ({n} workers)")
            trimmed = sorted({v for v in client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_").values() if v})
            if trimmed:
                say(f"note: the workers run with MALLOC_TRIM_THRESHOLD_={','.join(trimmed)} (Dask's nanny default), "
                    f"which makes trials about 1.8x slower; {_TRIM_HINT}")
        else:
            # processes=True: each worker its own interpreter; the nanny starts them with
            # OMP/OpenBLAS/MKL at one thread (Dask's default), and run_trial pins BLAS too.
            # Not with Dask's MALLOC_TRIM_THRESHOLD_: setting it turns off glibc's dynamic
            # mmap threshold, every window-sized array is then mapped afresh, and a trial
            # took 1.8x as long (0.83 s against 0.45 s, benchmarks/bench_sweep.py).
            environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ").items()
                       if k != "MALLOC_TRIM_THRESHOLD_"}
            stack.enter_context(dask.config.set({"distributed.nanny.pre-spawn-environ": environ}))
            cluster = stack.enter_context(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                       dashboard_address=":0", silence_logs=logging.ERROR))
            client = stack.enter_context(Client(cluster))
            say(f"started a Dask LocalCluster of {workers} single-threaded worker processes (dashboard: "
                f"{client.dashboard_link})")
        futures = [client.submit(run_trial, t, sweep_dir, **kwargs, one_thread=True, key=f"trial-{t['trial']}",
                                 pure=False, retries=2) for t in pending]
        by_key = {f.key: t for f, t in zip(futures, pending)}
        for fut in as_completed(futures):
            try:
                rec = fut.result()
            except Exception as exc:  # the worker died on every attempt (Dask's retries and reschedules)
                t = by_key[fut.key]
                rec = {"trial": t["trial"], "arm": t["arm"], "index": t["index"], **t["settings"], "status": "failed",
                       "error": f"{type(exc).__name__}: {exc}", "valid_nll": None, "test_nll": None, "seconds": None}
            yield rec


_TRIM_HINT = ("give their nannies a Dask config without it (distributed.nanny.pre-spawn-environ."
              "MALLOC_TRIM_THRESHOLD_: null; docs/experiments.md)")


class _Progress:
    """Finished trials out of all, and the best NLL per arm so far (tqdm)."""

    def __init__(self, total, records, enabled, spec):
        from tqdm.auto import tqdm

        self.best = {}
        for r in records:
            self._note(r)
        self.bar = tqdm(total=total, initial=len(records), unit="trial", desc=spec.name, dynamic_ncols=True,
                        disable=None if enabled else True)
        self._show()

    def _note(self, r):
        v = r.get("valid_nll")
        if r.get("status") == "ok" and v is not None and v < self.best.get(r["arm"], math.inf):
            self.best[r["arm"]] = v
        self.best.setdefault(r["arm"], math.inf)

    def _show(self):
        parts = [f"{arm} {v:.3f}" for arm, v in self.best.items() if math.isfinite(v)]
        self.bar.set_postfix_str("best: " + ", ".join(parts) if parts else "", refresh=False)

    def add(self, r):
        self._note(r)
        self._show()
        self.bar.update(1)

    def write(self, msg):
        self.bar.write(msg) if not self.bar.disable else print(msg)

    def close(self):
        self.bar.close()


# ----------------------------------------------------------------------------
# Reading a sweep
# ----------------------------------------------------------------------------
def status(sweep_dir) -> dict:
    """How far a sweep has got: ``{"spec", "total", "finished", "by_arm": {arm: {...}}}``."""
    spec = spec_of(sweep_dir)
    everything = trials(spec)
    results = {r["trial"]: r for r in read_results(sweep_dir)}
    running = []
    root = os.path.join(os.fspath(sweep_dir), "trials")
    by_arm = {}
    for t in everything:
        a = by_arm.setdefault(t["arm"], {"total": 0, "ok": 0, "diverged": 0, "failed": 0, "started": 0})
        a["total"] += 1
        r = results.get(t["trial"])
        if r is not None:
            a[r["status"]] += 1
        elif os.path.isdir(os.path.join(root, t["trial"])):
            a["started"] += 1
            running.append(t["trial"])
    finished = sum(a["ok"] + a["diverged"] + a["failed"] for a in by_arm.values())
    return {"spec": spec, "total": len(everything), "finished": finished, "started": running, "by_arm": by_arm}


def summary_table(records: list[dict], spec: Spec | None = None) -> list[dict]:
    """Per arm: trials, how many ok / diverged / failed, the median and best validation NLL
    of the ok trials, and the test NLL of the best one. Arms in the spec's order."""
    arms = []
    if spec is not None:
        arms = list(dict.fromkeys(t["arm"] for t in trials(spec, per_arm=1)))
    for r in records:
        if r["arm"] not in arms:
            arms.append(r["arm"])
    rows = []
    for arm in arms:
        rs = [r for r in records if r["arm"] == arm]
        ok = [r for r in rs if r["status"] == "ok" and r.get("valid_nll") is not None]
        best = min(ok, key=lambda r: r["valid_nll"]) if ok else None
        first = rs[0] if rs else {}
        rows.append({
            "arm": arm, "cell": first.get("cell"), "depth": first.get("depth"), "trials": len(rs), "ok": len(ok),
            "diverged": sum(r["status"] == "diverged" for r in rs), "failed": sum(r["status"] == "failed" for r in rs),
            "params": statistics.median([r["params"] for r in rs if r.get("params")]) if any(
                r.get("params") for r in rs) else None,
            "median_valid_nll": statistics.median([r["valid_nll"] for r in ok]) if ok else None,
            "best_valid_nll": best["valid_nll"] if best else None,
            "best_test_nll": best.get("test_nll") if best else None,
            "best_trial": best["trial"] if best else None,
        })
    return rows


def format_table(rows: list[dict]) -> str:
    """:func:`summary_table` as aligned text (what ``rhn-np sweep plot`` prints)."""
    head = ("arm", "trials", "ok", "diverged", "failed", "params", "median valid", "best valid", "its test")

    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    body = [(r["arm"], str(r["trials"]), str(r["ok"]), str(r["diverged"]), str(r["failed"]), num(r["params"], ",.0f"),
             num(r["median_valid_nll"], ".3f"), num(r["best_valid_nll"], ".3f"), num(r["best_test_nll"], ".3f"))
            for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths)))]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(b, widths))) for b in body]
    return "\n".join(lines)


def ceiling_of(records: list[dict], spec: Spec | None = None) -> float:
    """Where diverged trials (and worse ones) are drawn: the spec's ``plot.ceiling``, else
    a little above the worst of the ok trials' best NLL, at most 1.5 × their median."""
    if spec is not None and spec.plot.get("ceiling") is not None:
        return float(spec.plot["ceiling"])
    ok = [r["valid_nll"] for r in records if r["status"] == "ok" and r.get("valid_nll") is not None]
    if not ok:
        return 1.0
    med = statistics.median(ok)
    top = min(max(ok), 1.5 * med) if med > 0 else max(ok)
    return float(top + 0.04 * (top - min(ok) or abs(top) or 1.0))


def plot_swarm(sweep_dir=None, *, records=None, spec=None, path=None, x: str = "depth", hue: str = "cell") -> str:
    """The paper's Fig. 4: one point per trial, ``x`` = depth, colour = cell, y = best
    validation NLL; diverged and failed trials as crosses at a ceiling, trials worse than
    the ceiling as triangles on it. Writes ``sweep_dir/swarm.png`` (or ``path``); returns
    the path. Needs seaborn (the sweep extra)."""
    try:
        import seaborn as sns
    except ImportError:
        raise SweepError("the swarm plot needs seaborn: pip install 'rhn-np[sweep]'") from None
    import matplotlib
    from matplotlib.figure import Figure  # its own figure: the caller's pyplot state is left alone

    from .plots import SLIDE_RC

    if records is None:
        records = read_results(sweep_dir)
        spec = spec_of(sweep_dir) if spec is None else spec
    if not records:
        raise SweepError(f"no finished trials in {sweep_dir} yet: nothing to plot")
    if path is None:
        if sweep_dir is None:
            raise SweepError("plot_swarm needs sweep_dir or path")
        path = os.path.join(os.fspath(sweep_dir), "swarm.png")
    ceiling = ceiling_of(records, spec)
    xs = sorted({r.get(x) for r in records}, key=lambda v: (isinstance(v, str), v))
    hues = list(dict.fromkeys((spec.arms.get(hue) if spec is not None and hue in spec.arms else [])
                              + [r.get(hue) for r in records]))
    rows = {"x": [], "y": [], "hue": [], "kind": []}
    for r in records:
        v = r.get("valid_nll")
        if r["status"] != "ok" or v is None:
            kind, y = "diverged", ceiling
        elif v > ceiling:
            kind, y = "above", ceiling
        else:
            kind, y = "ok", v
        rows["x"].append(xs.index(r.get(x)))
        rows["y"].append(y)
        rows["hue"].append(r.get(hue))
        rows["kind"].append(kind)
    palette = dict(zip(hues, sns.color_palette("colorblind", len(hues))))
    with matplotlib.rc_context(SLIDE_RC):
        fig = Figure(figsize=(9, 5.5), layout="constrained")
        ax = fig.subplots()
        ok = [i for i, k in enumerate(rows["kind"]) if k == "ok"]
        sns.swarmplot(x=[xs[rows["x"][i]] for i in ok], y=[rows["y"][i] for i in ok],
                      hue=[rows["hue"][i] for i in ok], hue_order=hues, order=xs, dodge=True, palette=palette,
                      size=4.5, ax=ax, warn_thresh=1.0)
        n_h = max(len(hues), 1)
        width = 0.8 / n_h
        for marker, kind in (("x", "diverged"), ("^", "above")):
            for h_i, h in enumerate(hues):
                idx = [i for i, k in enumerate(rows["kind"]) if k == kind and rows["hue"][i] == h]
                if not idx:
                    continue
                rng = np.random.default_rng(h_i)
                pos = [rows["x"][i] - 0.4 + width * (h_i + 0.5) + rng.uniform(-0.3, 0.3) * width for i in idx]
                ax.scatter(pos, [ceiling] * len(idx), marker=marker, color=palette[h], s=28, linewidths=1.2,
                           zorder=3, clip_on=False)
        ax.axhline(ceiling, color="0.6", lw=0.8, ls="--", zorder=1)
        ax.annotate("diverged (x) / worse (^)", (1.0, ceiling), xycoords=("axes fraction", "data"),
                    xytext=(-4, 4), textcoords="offset points", ha="right", va="bottom", fontsize=9, color="0.35")
        ax.set_xlabel("recurrence depth" if x == "depth" else x)
        ax.set_ylabel("best validation NLL per time step" if spec is None or spec.preset == "jsb"
                      else "best validation NLL")
        lo = min(rows["y"])
        ax.set_ylim(lo - 0.05 * (ceiling - lo or 1.0), ceiling + 0.08 * (ceiling - lo or 1.0))
        title = (spec.plot.get("title") if spec is not None else None) or "Best validation NLL per trial"
        ax.set_title(title, fontsize=11)
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles, labels, title=hue, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with _checkpoint.atomic_open(path) as fh:
            fig.savefig(fh, format="png", dpi=130)
    return os.fspath(path)
