"""The settings of a training run: one declaration per hyper-parameter, and the presets.

Each field of :class:`Config` is declared once, with its type, its range, its help
text and whether ``--resume`` may change it (:class:`Setting`). From that one
declaration come

* :meth:`Config.check` (every field checked by :func:`rhn_np.checks.setting`),
* the options of ``rhn-np train`` (:func:`add_options`, used by :mod:`rhn_np.cli`),
* the resume rules (:data:`RESUMABLE`, used by :meth:`rhn_np.train.Trainer.resume`).

Adding a hyper-parameter is one field here (and the code that uses it).
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import numpy as np

from . import cells, checks

__all__ = ["Setting", "Config", "PRESETS", "RESUMABLE", "FIELDS", "config_from_preset", "label", "add_options",
           "options_given"]


@dataclasses.dataclass(frozen=True)
class Setting:
    """How one :class:`Config` field is checked, offered on the command line and resumed.

    kind : "int", "float", "bool", "choice" or "text"
    minimum, maximum : the range (``strict``: the minimum itself is refused)
    optional : None is allowed (unset)
    choices : for "choice" (``cli_choices``: the subset offered by ``rhn-np train``)
    resume : whether ``--resume`` may change it (how long and where a run goes, not what it is)
    cli : whether ``rhn-np train`` has an option for it
    """

    kind: str
    help: str
    minimum: float | None = None
    maximum: float | None = None
    strict: bool = False
    below_max: bool = False
    optional: bool = False
    choices: tuple = ()
    cli_choices: tuple = ()
    resume: bool = False
    cli: bool = True
    metavar: str | None = None
    rule: str | None = None  # the message's wording of the range, where a plain one would say less


def _field(default, kind, help, **kw):
    return dataclasses.field(default=default, metadata={"setting": Setting(kind, help, **kw)})


def _count(default, help, *, optional=False, minimum=1, **kw):
    return _field(default, "int", help, minimum=minimum, optional=optional, **kw)


def _real(default, help, **kw):
    return _field(default, "float", help, **kw)


def _drop(what):
    return _real(0.0, f"variational dropout probability on {what}", minimum=0.0, maximum=1.0, below_max=True,
                 rule="is a drop probability and must lie in [0, 1)")


@dataclasses.dataclass
class Config:
    """Every setting of a run. Field names follow the paper and the authors' configs.

    The defaults are the ``demo`` preset's; see :data:`PRESETS` for the paper's. Each
    field's help text says what it is (``rhn-np train --help`` prints them). Notes:

    ``cell``: "rhn" (the paper), "dt_rnn" or "dts_rnn" (its baselines, :mod:`rhn_np.cells`);
    ``coupled`` and ``transform_bias`` apply to the RHN only. ``params``: a parameter
    budget; when set, the width (``hidden``) is the one whose model is closest to it
    (:func:`rhn_np.cells.matched_width`), resolved when the data set is known.
    ``emb`` ``None``: as in the authors' code, the vocabulary size when untied and
    smaller than ``hidden``, else ``hidden``. ``lr_schedule="epoch"`` is the authors':
    ``max_epoch`` epochs at the constant ``lr``, then ÷ ``lr_decay`` per epoch;
    ``"cosine"`` (the short ``demo`` runs): half a cosine from ``lr`` down to ``lr / 20``
    over ``decay_steps`` steps. ``epochs`` / ``max_steps`` / ``time_limit`` (minutes):
    whichever ends the run first; ``eval_every`` ``None``: once per epoch; ``patience``:
    early stopping after that many validations without a new best.
    ``momentum``: SGD's heavy-ball momentum (0 for the authors' plain SGD).
    ``eval_test``: a batched "test" record at every validation (the paper presets);
    ``final_eval``: the batch-1 validation and test figures of ``best.npz`` at the end
    (:meth:`rhn_np.train.Trainer.final_evaluation`).
    ``checkpoint_every`` (steps) / ``checkpoint_minutes``: between validations, save
    ``checkpoint.npz`` (not ``best.npz``) at whichever comes first; ``None``: not by that one.
    ``cuda_graphs`` (CuPy, cells with the fast path): replay each training window's
    layer forward and BPTT from CUDA graphs (:class:`rhn_np.graphs.CapturedLayer`).
    ``impl``: the cells' ``impl`` in training, validation and sampling
    (:func:`rhn_np.fast.resolve`); "fast" and "reference" agree to float round-off.
    ``threads``: NumPy's BLAS threads during the run (``None``: the rule of
    :func:`rhn_np.tasks.blas_threads`, or the environment's ``OPENBLAS_NUM_THREADS``).
    """

    dataset: str = _field("pydoc", "text", "ptb, ptb-char, text8, enwik8, jsb or pydoc",
                          rule="must be a data set name such as 'ptb'")
    data_dir: str | None = _field(
        None, "text", "folder holding the data files, or its parent (default: the download cache, $RHN_NP_DATA_HOME "
        "or ~/.cache/rhn_np, where missing files are downloaded)", optional=True, resume=True,
        rule="must be a folder path or None")
    cell: str = _field("rhn", "choice", "the recurrent cell: rhn (the paper), dt_rnn or dts_rnn (its deep-transition "
                       "baselines)", choices=cells.NAMES)
    layers: int = _count(1, "stacked layers (layer k+1 reads layer k's outputs)")
    depth: int = _count(3, "recurrence depth L (micro-layers per time step)")
    hidden: int = _count(128, "units n per layer")
    params: int | None = _count(None, "parameter budget: the width whose model is closest to it (in place of --hidden)",
                                optional=True, metavar="N")
    emb: int | None = _count(None, "embedding width (default: the vocabulary size when untied and smaller than "
                             "--hidden, else --hidden)", optional=True)
    tied: bool = _field(False, "bool", "weight tying of embedding and softmax (needs emb == hidden)")
    coupled: bool = _field(True, "bool", "RHN carry gate c = 1 - t (the paper); --no-coupled: its own weights")
    transform_bias: float = _real(-2.0, "initial RHN transform-gate bias b_T")
    init_scale: float = _real(0.04, "weights start uniform in (-init_scale, init_scale) (the authors: 0.04)",
                              minimum=0.0, strict=True)
    batch_size: int = _count(32, "B, rows of the token stream (sequences per batch for JSB)")
    bptt: int = _count(50, "T, steps per truncated-BPTT window")
    optimizer: str = _field("adam", "choice", "optimiser", choices=("sgd", "adam"))
    lr: float = _real(1e-2, "learning rate", minimum=0.0, strict=True)
    momentum: float = _real(0.0, "SGD momentum mu (u <- mu u + g, w <- w - lr u; the authors: 0, plain SGD)",
                            minimum=0.0, maximum=1.0, below_max=True, rule="must lie in [0, 1)")
    lr_schedule: str = _field("cosine", "choice", "epoch: the authors' (constant, then /lr-decay per epoch); cosine: "
                              "down to lr/20 over --decay-steps", choices=("epoch", "cosine"))
    lr_decay: float = _real(1.0, "divide the lr by this every epoch after --max-epoch", minimum=1.0,
                            rule="divides the learning rate each epoch after max_epoch and must be >= 1")
    max_epoch: int = _count(1_000_000, "epochs at the constant initial lr")
    decay_steps: int = _count(4000, "length of the cosine decay in steps")
    epochs: int = _count(1_000_000, "stop after this many epochs", resume=True)
    max_steps: int | None = _count(4000, "stop after this many training windows", optional=True, resume=True)
    time_limit: float | None = _real(None, "stop after this many minutes (then validate and save)", minimum=0.0,
                                     strict=True, optional=True, resume=True, rule="is in minutes and must be > 0")
    clip: float = _real(10.0, "global gradient-norm clip", minimum=0.0, strict=True)
    weight_decay: float = _real(0.0, "L2 coefficient wd of wd/2 * sum(w^2) (the authors: 1e-7)", minimum=0.0)
    drop_x: float = _drop("whole input symbols (word-type)")
    drop_i: float = _drop("the layers' input features")
    drop_h: float = _drop("the state entering every micro-layer")
    drop_o: float = _drop("the last layer's output before the softmax")
    eval_every: int | None = _count(1000, "validate every N steps (default: the preset's; once per epoch for the "
                                    "paper presets)", optional=True, resume=True)
    patience: int | None = _count(None, "early stopping: stop when the validation NLL has not improved for this many "
                                  "validations in a row (default: never)", optional=True, resume=True, metavar="N")
    checkpoint_every: int | None = _count(None, "also save checkpoint.npz every N steps between validations "
                                          "(default: by time only, --checkpoint-minutes)", optional=True,
                                          resume=True, metavar="N")
    checkpoint_minutes: float | None = _real(10.0, "save checkpoint.npz at least every this many minutes of "
                                             "training between validations (at most this much work is lost to a "
                                             "crash)", minimum=0.0, strict=True, optional=True, resume=True,
                                             metavar="MINUTES", rule="is in minutes and must be > 0")
    eval_batch_size: int = _count(32, "rows of the batched validation")
    eval_test: bool = _field(False, "bool", "also score the test split, batched, at every validation (as the "
                             "authors' loop does; on for the paper presets)", resume=True)
    final_eval: bool = _field(True, "bool", "at the end, score the best checkpoint on the validation and test "
                              "splits with batch size 1, the authors' reported figures (slow for enwik8 and text8: "
                              "--no-final-eval skips it)", resume=True)
    log_every: int = _count(10, "steps between progress updates (a metrics record every 10 of them)", resume=True)
    seed: int = _count(0, "seed of the initial weights, dropout masks and shuffling", minimum=0)
    backend: str = _field("numpy", "choice", "array backend (auto: cupy if usable)",
                          choices=("numpy", "cupy", "auto", "array_api_strict"), cli_choices=("numpy", "cupy", "auto"),
                          resume=True)
    dtype: str = _field("float32", "choice", "floating-point type", choices=("float32", "float64"))
    cuda_graphs: bool = _field(True, "bool", "with --backend cupy, replay the layer's forward and BPTT from CUDA "
                               "graphs", resume=True)
    impl: str = _field("auto", "choice", "the layers' code: reference (the readable one), fast (the compiled CPU "
                       "loops with numba, the CUDA kernels on CuPy) or auto (fast where it runs, else reference)",
                       choices=("auto", "reference", "fast"), resume=True)
    threads: int | None = _count(None, "BLAS threads of the CPU's matrix products (default: one where the model's "
                                 "matrices are small, and never every core; as OPENBLAS_NUM_THREADS says when set)",
                                 optional=True, resume=True, metavar="N")

    def check(self) -> Config:
        """Validate every field; raises ``ValueError`` naming the bad one.

        NumPy scalars (from ``np.arange``/``np.linspace`` sweeps) become Python numbers.
        """
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.bool_):
                v = bool(v)
            elif isinstance(v, np.integer):
                v = int(v)
            elif isinstance(v, np.floating):
                v = float(v)
            if f.name == "data_dir" and isinstance(v, os.PathLike):
                v = os.fspath(v)  # a str: the config is stored as JSON in checkpoints
            setattr(self, f.name, checks.setting(label(f.name), v, f.metadata["setting"]))
        checks.representable(label("transform_bias"), self.transform_bias, self.dtype)  # finite once cast
        checks.representable(label("lr"), self.lr, self.dtype)
        checks.init_scale(self.init_scale, self.dtype, label("init_scale"))
        if not self.dataset.strip():
            raise ValueError(f"{label('dataset')} must be a data set name such as 'ptb', got {self.dataset!r}")
        if self.tied and self.emb is not None and self.emb != self.hidden and self.params is None:
            raise ValueError(f"weight tying (--tied) needs emb == hidden (--emb, --hidden), got emb={self.emb}, "
                             f"hidden={self.hidden}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        unknown = set(d) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(FIELDS)}")
        return cls(**d)


#: Every field's :class:`Setting`, by name.
FIELDS: dict[str, Setting] = {f.name: f.metadata["setting"] for f in dataclasses.fields(Config)}
#: The fields ``--resume`` may change.
RESUMABLE = frozenset(k for k, s in FIELDS.items() if s.resume)


def label(field: str) -> str:
    """A Config field with its ``rhn-np train`` option, for messages: ``lr (--lr)``."""
    return f"{field} (--{field.replace('_', '-')})" if FIELDS.get(field, Setting("", "")).cli else field


_PTB_SOTA = dict(
    dataset="ptb", depth=10, hidden=830, emb=None, tied=True, transform_bias=-2.0, init_scale=0.04,
    batch_size=20, bptt=35, optimizer="sgd", lr=0.2, lr_schedule="epoch", lr_decay=1.02, max_epoch=20, epochs=500,
    max_steps=None, clip=10.0, weight_decay=1e-7, drop_x=0.25, drop_i=0.75, drop_h=0.25, drop_o=0.75,
    eval_every=None, eval_batch_size=20, eval_test=True,
)
_CHAR_SOTA = dict(
    depth=10, hidden=1500, emb=None, tied=False, transform_bias=-4.0, init_scale=0.04,
    batch_size=128, bptt=50, optimizer="sgd", lr=0.2, lr_schedule="epoch", lr_decay=1.03, max_epoch=5, epochs=500,
    max_steps=None, clip=10.0, weight_decay=1e-7, drop_x=0.10, drop_i=0.40, drop_h=0.10, drop_o=0.40,
    eval_every=None, eval_batch_size=128, eval_test=True,
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


def config_from_preset(preset: str = "demo", **overrides) -> Config:
    """A :class:`Config` from a preset name, with ``overrides`` (``None`` values ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    fields = dict(PRESETS[preset])
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return Config.from_dict(fields).check()


# ----------------------------------------------------------------------------
# The command-line options of the settings
# ----------------------------------------------------------------------------
def add_options(parser: argparse.ArgumentParser) -> None:
    """One ``--option`` per :class:`Config` field with ``cli=True`` (default None: the preset's)."""
    for name, s in FIELDS.items():
        if not s.cli:
            continue
        flag = f"--{name.replace('_', '-')}"
        if s.kind == "bool":
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=s.help)
        elif s.kind == "choice":
            parser.add_argument(flag, dest=name, choices=s.cli_choices or s.choices, default=None, help=s.help)
        else:
            kind = {"int": int, "float": float, "text": str}[s.kind]
            parser.add_argument(flag, dest=name, type=kind, default=None, help=s.help, metavar=s.metavar)


def options_given(args) -> dict:
    """The settings given on the command line (``None``: not given)."""
    return {name: getattr(args, name) for name, s in FIELDS.items() if s.cli}
