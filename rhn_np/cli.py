"""The ``rhn-np`` command line.

``rhn-np info``      the version and which array backends and devices are usable
``rhn-np train``     train a model (no arguments: the ``demo`` preset on the embedded
                     ``pydoc`` corpus, a few minutes on a laptop CPU)
``rhn-np evaluate``  perplexity / bits per character of a trained run on a split
``rhn-np sample``    generate text from a trained run

Expected errors (bad arguments, missing data, unreadable checkpoints, a diverging
run) print one message and exit with status 1; Ctrl+C during training saves a
checkpoint and exits with status 130.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as _np
from tqdm.auto import tqdm

from . import __version__, backend, data
from . import train as T
from .checkpoint import CheckpointError
from .train import PRESETS, RunError, TrainingDiverged, held_run


def _int_at_least(low: int):
    """argparse type: an integer >= ``low`` (argparse names the option in its message)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    return parse


def _info(args) -> int:
    facts = backend.describe()
    print(f"rhn_np {__version__}")
    print(f"python {sys.version.split()[0]}, numpy {facts['numpy']}")
    print(f"backends usable here: {', '.join(facts['backends'])}")
    if "cupy" in facts:
        print(f"cupy {facts['cupy']}, CUDA runtime {facts['cuda_runtime']}, driver {facts['cuda_driver']}")
        print(f"gpu: {facts['gpu']} ({facts['gpu_count']} visible)")
    else:
        print(f"cupy: not usable ({facts.get('cupy_unavailable')})")
    return 0


def _fmt_time(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def _steps(n: int) -> str:
    return f"{n:,} step" + ("" if n == 1 else "s")


def _score(rec: dict) -> str:
    if rec.get("level") == "char" or (rec.get("bpc") is not None and rec.get("level") is None):
        return f"{rec['bpc']:.3f} bits per character (nll {rec['nll']:.4f} nats)"
    if rec.get("ppl") is not None:
        return f"perplexity {rec['ppl']:.2f} (nll {rec['nll']:.4f} nats per token)"
    return f"nll {rec['nll']:.4f} nats per time step"


def _default_work_dir(name: str) -> str:
    """``rhn-runs/<name>``, or ``<name>-2``, ``-3``... when that one holds a run already."""
    base = os.path.join("rhn-runs", name)
    path, k = base, 1
    while held_run(path):
        k += 1
        path = f"{base}-{k}"
    return path


def _latest_work_dir(name: str) -> str:
    """The newest of ``rhn-runs/<name>``, ``<name>-2``, ... holding a run (for ``--resume``)."""
    latest = os.path.join("rhn-runs", name)
    k = 2
    while os.path.exists(os.path.join(f"{os.path.join('rhn-runs', name)}-{k}", "checkpoint.npz")):
        latest = f"{os.path.join('rhn-runs', name)}-{k}"
        k += 1
    return latest


def _train(args) -> int:
    overrides = dict(
        dataset=args.dataset, data_dir=args.data_dir, depth=args.depth, hidden=args.hidden, emb=args.emb,
        batch_size=args.batch_size, bptt=args.bptt, lr=args.lr, optimizer=args.optimizer,
        max_steps=args.max_steps, epochs=args.epochs, time_limit=args.time_limit, eval_every=args.eval_every,
        seed=args.seed, backend=args.backend, dtype=args.dtype, lr_decay=args.lr_decay, max_epoch=args.max_epoch,
        clip=args.clip, weight_decay=args.weight_decay, transform_bias=args.transform_bias, tied=args.tied,
        init_scale=args.init_scale,
        drop_x=args.drop_x, drop_i=args.drop_i, drop_h=args.drop_h, drop_o=args.drop_o,
        eval_batch_size=args.eval_batch_size, lr_schedule=args.lr_schedule, decay_steps=args.decay_steps,
        cuda_graphs=args.cuda_graphs,
    )
    preset = args.preset or "demo"
    if args.dataset is not None:
        data._canonical_name(args.dataset)  # a typo is reported now, --print-config included
    cfg = T.config_from_preset(preset, **overrides)
    if args.epochs is not None and args.max_steps is None:
        cfg.max_steps = None  # --epochs alone: that many epochs, not the preset's step count
    if args.print_config:  # the resolved configuration, nothing trained or written
        print(json.dumps(cfg.check().to_dict(), indent=2))
        return 0
    name = args.preset or (args.dataset or "demo")
    work_dir = args.work_dir or (_latest_work_dir(name) if args.resume else _default_work_dir(name))
    if args.resume:
        explicit = {k: v for k, v in overrides.items() if v is not None}
        trainer = T.Trainer.resume(work_dir, overrides=explicit, progress=not args.quiet)
        print(f"resuming {work_dir} at step {trainer.step}")
    else:
        held = T.held_run(work_dir)
        if held:
            raise T.RunError(T._held_message(work_dir, held, cli=True))
        trainer = T.Trainer(cfg, work_dir, progress=not args.quiet)
    cfg, ds = trainer.cfg, trainer.ds
    n_params = sum(int(_np.prod(p.shape)) for p in trainer.params.values())
    print(f"training on {ds.name} ({ds.level} level, {len(ds.train):,} training {'sequences' if ds.kind != 'tokens' else 'symbols'}, "
          f"vocabulary {ds.vocab_size}) with preset {preset}: depth {cfg.depth}, {cfg.hidden} units, "
          f"{n_params:,} parameters, batch {cfg.batch_size} x {cfg.bptt} steps, {cfg.optimizer} lr {cfg.lr:g}, "
          f"{_steps(trainer.total_steps())}, backend {trainer.be.name} {cfg.dtype}")
    print(f"work folder: {work_dir}")
    try:
        summary = trainer.run()
    except KeyboardInterrupt:
        return 130
    last = summary["last_valid"]
    speed = f", {summary['tokens_per_s']:,.0f} tokens/s with validation" if summary.get("tokens_per_s") else ""
    print(f"\ndone: {_steps(summary['steps'])} (epoch {summary['epoch']}) in {_fmt_time(summary['seconds'])}{speed}")
    if last is not None:
        print(f"validation: {_score(last)}")
    if summary.get("best_valid_nll") is not None and last is not None and summary["best_valid_nll"] < last["nll"]:
        print(f"best validation nll {summary['best_valid_nll']:.4f} (kept in best.npz)")
    print(f"metrics: {os.path.join(work_dir, 'metrics.jsonl')}, curve: {os.path.join(work_dir, 'learning_curve.png')}")
    if ds.kind == "tokens" and args.sample_length > 0:
        params, _, _ = T.load_run(work_dir, "best", backend=trainer.be)
        text = T.sample(params, ds, length=args.sample_length, temperature=0.8, prime=None, seed=cfg.seed)
        print(f"\nsample (best checkpoint, temperature 0.8):\n{text.strip()}\n")
    hint = f"next: rhn-np evaluate --work-dir {work_dir} --split test"
    print(hint + (f"   |   rhn-np sample --work-dir {work_dir}" if ds.kind == "tokens" else ""))
    return 0


def _evaluate(args) -> int:
    params, cfg, meta = T.load_run(args.work_dir, args.checkpoint, backend=args.backend)
    T.check_run_data(meta, data._canonical_name(cfg.dataset))  # before loading (or downloading) anything
    ds = data.load(cfg.dataset, root=args.data_dir or cfg.data_dir)
    T.check_run_data(meta, ds)
    batch = 1 if args.batch_1 else (cfg.eval_batch_size if args.batch_size is None else args.batch_size)
    total = len(getattr(ds, args.split)) if ds.kind == "tokens" else None
    with tqdm(total=total, unit="tok", disable=True if (args.quiet or total is None) else None, desc=f"{args.split}") as bar:
        res = T.evaluate_dataset(params, ds, args.split, batch_size=batch, bptt=cfg.bptt, progress=bar.update)
    rec = {"split": args.split, **res, "step": meta["step"], "epoch": meta["epoch"], "lr": None,
           "tokens_per_s": None, "level": ds.level, "dataset": ds.name, "batch_size": batch,
           "checkpoint": args.checkpoint, "time": time.time()}
    T._append_metrics(args.work_dir, rec)
    print(f"{ds.name} {args.split} ({res['n_tokens']:,} {'tokens' if ds.kind == 'tokens' else 'time steps'}, "
          f"batch {batch}, {args.checkpoint} checkpoint at step {meta['step']}): {_score(rec)}")
    return 0


def _sample(args) -> int:
    params, cfg, meta = T.load_run(args.work_dir, args.checkpoint, backend=args.backend)
    ds = T.dataset_for_sampling(meta)
    text = T.sample(params, ds, length=args.length, temperature=args.temperature, prime=args.prime, seed=args.seed)
    print(text)
    return 0


class _Help(argparse.HelpFormatter):
    """Shows an option's default where it has a real one and the help does not say it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" not in text and action.default not in (None, False, argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rhn-np", description="Recurrent Highway Networks in NumPy/CuPy.")
    parser.add_argument("--version", action="version", version=f"rhn_np {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_info = sub.add_parser("info", help="print the version and the usable backends and devices")
    p_info.set_defaults(func=_info)

    p = sub.add_parser(
        "train", help="train a model (no arguments: the demo preset on the embedded pydoc corpus)", formatter_class=_Help,
        description="Train an RHN language model. With no arguments: the 'demo' preset, a small character "
                    "model on the embedded 'pydoc' corpus, a few minutes on a laptop CPU. Options override "
                    "the preset's values.")
    p.add_argument("--preset", choices=sorted(PRESETS), help="named configuration (default: demo)")
    p.add_argument("--dataset", help="ptb, ptb-char, text8, enwik8, jsb or pydoc (default: the preset's)")
    p.add_argument("--data-dir", help="folder holding the data files, or its parent (default: the download cache, "
                                      "$RHN_NP_DATA_HOME or ~/.cache/rhn_np, where missing files are downloaded)")
    p.add_argument("--depth", type=int, help="recurrence depth L")
    p.add_argument("--hidden", type=int, help="RHN units n")
    p.add_argument("--emb", type=int, help="embedding width (default: the vocabulary size when untied and smaller than --hidden, else --hidden)")
    p.add_argument("--batch-size", type=int, help="B, rows of the token stream")
    p.add_argument("--bptt", type=int, help="T, steps per truncated-BPTT window")
    p.add_argument("--optimizer", choices=("sgd", "adam"))
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--lr-schedule", choices=("epoch", "cosine"),
                   help="epoch: the authors' (constant, then /lr-decay per epoch); cosine: down to lr/20 over --decay-steps")
    p.add_argument("--decay-steps", type=int, help="length of the cosine decay in steps")
    p.add_argument("--lr-decay", type=float, help="divide the lr by this every epoch after --max-epoch")
    p.add_argument("--max-epoch", type=int, help="epochs at the constant initial lr")
    p.add_argument("--clip", type=float, help="global gradient-norm clip")
    p.add_argument("--weight-decay", type=float, help="L2 coefficient wd of wd/2 * sum(w^2) (the authors: 1e-7)")
    p.add_argument("--transform-bias", type=float, help="initial transform-gate bias b_T")
    p.add_argument("--init-scale", type=float, help="weights start uniform in (-init_scale, init_scale) (the authors: 0.04)")
    p.add_argument("--tied", action=argparse.BooleanOptionalAction, default=None,
                   help="weight tying of embedding and softmax (needs emb == hidden)")
    for mask, what in (("x", "whole input symbols (word-type)"), ("i", "RHN input features"),
                       ("h", "the state entering every micro-layer"), ("o", "RHN output before the softmax")):
        p.add_argument(f"--drop-{mask}", type=float, help=f"variational dropout probability on {what}")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="with --backend cupy, replay the RHN layer's forward and BPTT from CUDA graphs (default: on)")
    p.add_argument("--max-steps", type=int, help="stop after this many training windows")
    p.add_argument("--epochs", type=int, help="stop after this many epochs")
    p.add_argument("--time-limit", type=float, help="stop after this many minutes (then validate and save)")
    p.add_argument("--eval-every", type=int, help="validate every N steps (default: the preset's; once per epoch for the paper presets)")
    p.add_argument("--eval-batch-size", type=int, help="rows of the batched validation")
    p.add_argument("--work-dir", help="folder for metrics, checkpoints and the learning curve (default: "
                                      "rhn-runs/<preset, else data set>, then -2, -3, ... so that no run is overwritten)")
    p.add_argument("--resume", action="store_true", help="continue the run in --work-dir from its checkpoint.npz")
    p.add_argument("--seed", type=int, help="seed of the initial weights, dropout masks and shuffling")
    p.add_argument("--backend", choices=("numpy", "cupy", "auto"), help="array backend (default: numpy; auto: cupy if usable)")
    p.add_argument("--dtype", choices=("float32", "float64"), help="floating-point type (default: float32)")
    p.add_argument("--sample-length", type=_int_at_least(0), default=300, help="characters/words to sample at the end (0: none)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true",
                   help="print the configuration the preset and options resolve to, as JSON, and exit")
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "evaluate", help="score a trained run on a split (perplexity / bits per character)",
        formatter_class=_Help,
        description="Score a trained run on one split: bits per character for character-level data, perplexity "
                    "for words, nats per time step for JSB. The result is also appended to the run's metrics.jsonl.")
    p.add_argument("--work-dir", required=True, help="the run's folder (as given to or printed by rhn-np train)")
    p.add_argument("--split", default="valid", choices=("train", "valid", "test"), help="which split to score")
    p.add_argument("--batch-1", action="store_true", help="the authors' reported evaluation: batch size 1, the whole split in one pass")
    p.add_argument("--batch-size", type=_int_at_least(1), help="evaluation rows (default: the run's eval batch size)")
    p.add_argument("--checkpoint", default="best", choices=("best", "latest"),
                   help="best: the best validation so far (best.npz); latest: the last save (checkpoint.npz)")
    p.add_argument("--data-dir", help="where the data files are (default: the run's)")
    p.add_argument("--backend", default="numpy", choices=("numpy", "cupy", "auto"), help="array backend")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("sample", help="generate text from a trained run",
                       formatter_class=_Help,
                       description="Generate text from a trained run, one symbol at a time from the softmax.")
    p.add_argument("--work-dir", required=True, help="the run's folder (as given to or printed by rhn-np train)")
    p.add_argument("--length", type=_int_at_least(1), default=500, help="symbols to generate")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (<1: more conservative)")
    p.add_argument("--prime", help="text to feed in first")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of the sampling")
    p.add_argument("--checkpoint", default="best", choices=("best", "latest"),
                   help="best: the best validation so far (best.npz); latest: the last save (checkpoint.npz)")
    p.add_argument("--backend", default="numpy", choices=("numpy", "cupy", "auto"), help="array backend")
    p.set_defaults(func=_sample)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError, CheckpointError, RunError, TrainingDiverged) as exc:
        print(f"rhn-np {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
