"""The ``rhn-np`` command line.

* ``rhn-np info``: the version and which array backends and devices are usable;
* ``rhn-np train``: train a model (no arguments: the ``demo`` preset on the embedded
  ``pydoc`` corpus, a few minutes on a laptop CPU); its options are generated from the
  declarations of :mod:`rhn_np.config`;
* ``rhn-np evaluate``: perplexity / bits per character of a trained run on a split
  (``--mc-samples N``: the authors' MC-dropout evaluation);
* ``rhn-np sample``: generate text from a trained run.

Expected errors (bad arguments, missing data, unreadable checkpoints, a diverging
run, and the machine's refusals: permissions, a full disk, out of memory, a model larger
than the memory available) print one message and exit with status 1. ``train``,
``evaluate`` and ``sample`` set NumPy's BLAS threads (``--threads``, else
:func:`rhn_np.tasks.threads_for`). Ctrl+C or SIGTERM during training
finishes the step, saves a checkpoint, says how to resume and exits with status 130
(SIGINT) or 143 (SIGTERM), the shell's ``128 + signal``; before training (imports, data,
model) they exit with one line and the same status, no traceback. The ``rhn-np``
command enters through :mod:`rhn_np.__main__`, which covers the imports too.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import signal
import sys
import time

from tqdm.auto import tqdm

from . import __version__, backend, config, data, tasks
from . import train as T
from .checkpoint import CheckpointError
from .interrupts import exit_status, interrupt_on_signals, signal_name, take_pending
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
    libs = backend.blas_libraries()
    for lib in libs:
        n = lib.get("num_threads")
        print(f"BLAS: {lib.get('internal_api')} {lib.get('version')} ({lib.get('threading_layer', 'threads')}, "
              f"{lib.get('architecture', '')}), {n} thread{'' if n == 1 else 's'} as loaded; {lib.get('filepath')}")
    if not libs:
        print("BLAS: none found by threadpoolctl")
    env = [f"{v}={os.environ[v]}" for v in tasks.BLAS_THREAD_VARIABLES if os.environ.get(v)]
    if env:
        print(f"BLAS threads of train, evaluate and sample: as {', '.join(env)} says (--threads N overrides it)")
    else:
        rule = ", ".join(f"{name} {tasks.blas_threads(config.config_from_preset(name), PRESETS[name]['batch_size'])}"
                         for name in PRESETS if PRESETS[name].get("hidden") is not None)
        print(f"BLAS threads of train ({tasks.cpu_cores()} cores; --threads N overrides): {rule}")
    from . import fast

    module, reason = fast.compiled_status()
    if module is None:
        print(f"compiled CPU path: {reason}")
        return 0
    print(f"compiled CPU path: {reason}; code cache {module.CACHE_DIR}")
    if args.compile:
        rep = module.warm_up()
        hits = sum(rep["cache_hits"].values())
        print(f"first calls ({'loaded from the cache' if hits else 'compiled'}): "
              + ", ".join(f"{k} {v:.2f} s" for k, v in rep["first_call_s"].items()))
    return 0


def _threads_said(threads) -> str:
    if threads is None:
        return f", BLAS threads as {' / '.join(v for v in tasks.BLAS_THREAD_VARIABLES if os.environ.get(v))} says"
    return f", {threads} BLAS thread" + ("" if threads == 1 else "s")


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
    overrides = config.options_given(args)
    preset = args.preset or "demo"
    if args.dataset is not None:
        data.canonical_name(args.dataset)  # a typo is reported now, --print-config included
    if args.params is not None and args.hidden is not None:
        raise ValueError("give the width (--hidden) or a parameter budget (--params), not both")
    if args.params is not None:
        overrides["hidden"] = None  # resolved from the budget once the data set is known
    cfg = T.config_from_preset(preset, **overrides)
    if args.epochs is not None and args.max_steps is None:
        cfg.max_steps = None  # --epochs alone: that many epochs, not the preset's step count
    if args.print_config:  # the resolved configuration and its size, nothing trained or written
        cfg.check()
        try:  # the size needs the vocabulary: from files already here, nothing downloaded
            ds = data.load(cfg.dataset, root=cfg.data_dir, download=False)
        except FileNotFoundError as exc:
            if cfg.params is not None:
                raise FileNotFoundError(f"--params needs the data set's vocabulary to size the model: {exc}") from None
            print(f"rhn-np train: the parameter count needs {cfg.dataset}'s files, which are not here yet "
                  "(a run downloads them)", file=sys.stderr)
            print(json.dumps({**cfg.to_dict(), "n_params": None}, indent=2))
            return 0
        cfg = tasks.resolve_width(cfg, ds)
        print(json.dumps({**cfg.to_dict(), "n_params": tasks.count_params(cfg, ds)}, indent=2))
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
            raise T.RunError(T.held_message(work_dir, held, cli=True))
        trainer = T.Trainer(cfg, work_dir, progress=not args.quiet)
    cfg, ds = trainer.cfg, trainer.ds
    layers = f"{cfg.layers} layers of " if cfg.layers > 1 else ""
    source = "the run's settings" if args.resume else f"preset {preset}"
    print(f"training on {ds.name} ({ds.level} level, {len(ds.train):,} training {'sequences' if ds.kind != 'tokens' else 'symbols'}, "
          f"vocabulary {ds.vocab_size}) with {source}: {layers}{cfg.cell}, depth {cfg.depth}, {cfg.hidden} units, "
          f"{trainer.n_params:,} parameters, batch {cfg.batch_size} x {cfg.bptt} steps, {cfg.optimizer} lr {cfg.lr:g}, "
          f"{_steps(trainer.total_steps())}, backend {trainer.be.name} {cfg.dtype}, about "
          f"{tasks.format_bytes(trainer.memory['total'])} of memory{_threads_said(trainer.threads)}")
    print(f"work folder: {work_dir}")
    args.training_started = True  # an interrupt from here on is the trainer's to report (main: before it)
    summary = trainer.run()  # Ctrl+C / SIGTERM: it saves, says how to resume, raises Interrupted (main: 130 / 143)
    last = summary["last_valid"]
    speed = f", {summary['tokens_per_s']:,.0f} tokens/s with validation" if summary.get("tokens_per_s") else ""
    print(f"\ndone: {_steps(summary['steps'])} (epoch {summary['epoch']}) in {_fmt_time(summary['seconds'])}{speed}")
    if last is not None:
        print(f"validation: {_score(last)}")
    if summary.get("best_valid_nll") is not None and last is not None and summary["best_valid_nll"] < last["nll"]:
        print(f"best validation nll {summary['best_valid_nll']:.4f} (kept in best.npz)")
    final = summary.get("final")
    if final:  # Config.final_eval: the authors' reported figures of the best checkpoint
        first = next(iter(final.values()))
        print(f"final, best checkpoint (step {first['step']}), batch {first['batch_size']}: "
              + "; ".join(f"{'validation' if split == 'valid' else split} {_score(rec)}" for split, rec in final.items()))
    print(f"metrics: {os.path.join(work_dir, 'metrics.jsonl')}, curve: {os.path.join(work_dir, 'learning_curve.png')}")
    if ds.kind == "tokens" and args.sample_length > 0:
        params, _, _ = T.load_run(work_dir, "best", backend=trainer.be)
        text = T.sample(params, ds, length=args.sample_length, temperature=0.8, prime=None, seed=cfg.seed,
                        impl=cfg.impl)
        print(f"\nsample (best checkpoint, temperature 0.8):\n{text.strip()}\n")
    hint = f"next: rhn-np evaluate --work-dir {work_dir} --split test"
    print(hint + (f"   |   rhn-np sample --work-dir {work_dir}" if ds.kind == "tokens" else ""))
    return 0


def _evaluate(args) -> int:
    params, cfg, meta = T.load_run(args.work_dir, args.checkpoint, backend=args.backend)
    T.check_run_data(meta, data.canonical_name(cfg.dataset))  # before loading (or downloading) anything
    ds = data.load(cfg.dataset, root=args.data_dir or cfg.data_dir)
    T.check_run_data(meta, ds)
    rows = 1 if args.batch_1 else (args.batch_size or getattr(args, "mc_rows", None) or cfg.eval_batch_size)
    args.scope.enter_context(backend.limit_blas_threads(tasks.threads_for(cfg, rows, args.threads)))
    if args.mc_samples is not None:
        return _evaluate_mc(args, params, cfg, meta, ds)
    batch = 1 if args.batch_1 else (cfg.eval_batch_size if args.batch_size is None else args.batch_size)
    total = len(getattr(ds, args.split)) if ds.kind == "tokens" else None
    with tqdm(total=total, unit="tok", disable=True if (args.quiet or total is None) else None, desc=f"{args.split}") as bar:
        res = T.evaluate_dataset(params, ds, args.split, batch_size=batch, bptt=cfg.bptt, progress=bar.update,
                                 impl=cfg.impl)
    rec = {"split": args.split, **res, "step": meta["step"], "epoch": meta["epoch"], "lr": None,
           "tokens_per_s": None, "level": ds.level, "dataset": ds.name, "batch_size": batch,
           "checkpoint": args.checkpoint, "time": time.time()}
    T.append_metrics(args.work_dir, rec)
    print(f"{ds.name} {args.split} ({res['n_tokens']:,} {'tokens' if ds.kind == 'tokens' else 'time steps'}, "
          f"batch {batch}, {args.checkpoint} checkpoint at step {meta['step']}): {_score(rec)}")
    return 0


def _evaluate_mc(args, params, cfg, meta, ds) -> int:
    """``rhn-np evaluate --mc-samples N``: the authors' MC-dropout figure (:func:`rhn_np.tasks.evaluate_mc`)
    with the run's own dropout rates."""
    if ds.kind != "tokens":
        raise ValueError(f"--mc-samples: MC-dropout evaluation scores token streams and {ds.name} holds piano "
                         "rolls; evaluate this run without --mc-samples")
    if args.batch_size is not None:
        raise ValueError("--mc-samples: every sample is one batch-1 pass over the whole split (the samples are the "
                         "rows of the batch), so --batch-size does not apply; --mc-rows sets how many run at once")
    drops = {k: getattr(cfg, k) for k in ("drop_x", "drop_i", "drop_h", "drop_o")}
    if not any(drops.values()):
        raise ValueError(f"--mc-samples: MC dropout needs dropout, and the run in {args.work_dir} was trained "
                         "without it (drop_x, drop_i, drop_h and drop_o are all 0 in its config): every sample would "
                         "be the same pass; evaluate it without --mc-samples")
    part = getattr(ds, args.split)
    with tqdm(total=args.mc_samples * max(len(part) - 1, 0), unit="tok", disable=True if args.quiet else None,
              desc=f"{args.split}, MC dropout") as bar:
        res = T.evaluate_mc(params, part, samples=args.mc_samples, seed=args.mc_seed, reject_ppl=args.mc_reject_ppl,
                            x_mask=args.mc_x_mask, rows=args.mc_rows, bptt=cfg.bptt, level=ds.level,
                            progress=bar.update, impl=cfg.impl, **drops)
    rec = {"split": args.split, "nll": res["nll"], "ppl": res["ppl"], "bpc": res["bpc"], "n_tokens": res["n_tokens"],
           "step": meta["step"], "epoch": meta["epoch"], "lr": None, "tokens_per_s": None, "level": ds.level,
           "dataset": ds.name, "batch_size": 1, "checkpoint": args.checkpoint, "mc_samples": res["samples"],
           "mc_rejected": res["rejected"], "mc_seed": args.mc_seed, "mc_reject_ppl": args.mc_reject_ppl,
           "mc_x_mask": args.mc_x_mask, "mc_sample_nll": res["sample_nll"], "time": time.time()}
    T.append_metrics(args.work_dir, rec)
    print(f"{ds.name} {args.split} ({res['n_tokens']:,} tokens, MC dropout: {res['samples']} samples, "
          f"{res['rejected']} rejected and drawn again, batch 1, {args.checkpoint} checkpoint at step {meta['step']}): "
          f"{_score(rec)}")
    return 0


def _reject_ppl(text: str):
    """argparse type of --mc-reject-ppl: a perplexity > 1, or ``none``."""
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a perplexity > 1 or 'none', got {text!r}") from None
    if not (value > 1.0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a perplexity > 1 or 'none', got {text!r}")
    return value


def _sweep(args) -> int:
    from . import sweep as S  # Dask and seaborn load only when a sweep runs or draws

    if args.action == "list":
        for name, d in S.SWEEPS.items():
            spec = S.Spec.from_dict(d)
            arms = " x ".join(f"{k} {', '.join(str(x) for x in v)}" for k, v in spec.arms.items())
            print(f"{name}: {len(S.trials(spec))} trials ({spec.trials} per arm; arms: {arms}), preset {spec.preset}")
        return 0
    if args.action == "show":
        print(S.spec_to_toml(_sweep_spec(S, args)), end="")
        return 0
    if args.action == "run":
        spec = _sweep_spec(S, args)
        records = S.run_sweep(spec, args.work_dir, workers=args.workers, scheduler=args.scheduler,
                              data_dir=args.data_dir, backend=args.backend, keep=args.keep, progress=not args.quiet)
        print(S.format_table(S.summary_table(records, spec)))
        print(f"results: {os.path.join(args.work_dir, S.RESULTS)}; next: rhn-np sweep plot {args.work_dir}")
        return 0
    if args.action == "status":
        st = S.status(args.work_dir)
        print(f"sweep {st['spec'].name} in {args.work_dir}: {st['finished']} of {st['total']} trials finished"
              + (f", {len(st['started'])} started and not finished" if st["started"] else ""))
        for arm, a in st["by_arm"].items():
            print(f"  {arm:<18} {a['ok'] + a['diverged'] + a['failed']:>4} / {a['total']:<4} ok {a['ok']:>3}, "
                  f"diverged {a['diverged']:>3}, failed {a['failed']:>3}")
        records = S.read_results(args.work_dir)
        if records:
            print(S.format_table(S.summary_table(records, st["spec"])))
        return 0
    # plot
    path = S.plot_swarm(args.work_dir, path=args.out)
    spec = S.spec_of(args.work_dir)
    print(S.format_table(S.summary_table(S.read_results(args.work_dir), spec)))
    print(f"wrote {path}")
    return 0


def _sweep_spec(S, args):
    """A built-in sweep with the command line's options, or a spec file (NAME.toml)."""
    name = args.sweep
    if name.endswith(".toml") or os.sep in name:
        given = [o for o in ("trials", "cells", "depths", "epochs", "seed") if getattr(args, o) is not None]
        if given:
            raise ValueError(f"--{', --'.join(given)} change a built-in sweep; with a spec file, edit the file")
        return S.load_spec(name)
    return S.builtin(name, trials=args.trials, cells=args.cells, depths=args.depths, epochs=args.epochs,
                     seed=args.seed)


def _list_of(kind):
    def parse(text):
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}s, got {text!r}")
        if not values:
            raise argparse.ArgumentTypeError("expected at least one value")
        return values
    return parse


def _sample(args) -> int:
    params, cfg, meta = T.load_run(args.work_dir, args.checkpoint, backend=args.backend)
    ds = T.dataset_for_sampling(meta)
    args.scope.enter_context(backend.limit_blas_threads(tasks.threads_for(cfg, 1, args.threads)))
    text = T.sample(params, ds, length=args.length, temperature=args.temperature, prime=args.prime, seed=args.seed,
                    impl=cfg.impl)
    print(text)
    return 0


def _assignments(args) -> int:
    from . import assignments as A  # nbgrader and jupytext are imported only when used (the assignments extra)

    if args.action == "list":
        for name, (title, covers) in A.ASSIGNMENTS.items():
            rows = A.parts(name)
            auto = sum(r["points"] for r in rows if r["graded"] == "auto")
            hand = sum(r["points"] for r in rows if r["graded"] == "hand")
            print(f"{name}: {title} ({covers}); {auto:g} points auto-graded" + (f" + {hand:g} by hand" if hand else ""))
            print("    " + ", ".join(f"{r['part']} {r['points']:g}" + (" (by hand)" if r["graded"] == "hand" else "")
                                   for r in rows))
        return 0
    if args.action in ("release", "source"):
        if args.action == "release":
            paths = A.release(args.out, args.only, force=args.force)
        else:
            paths = A.write_sources(args.out, args.only, force=args.force)
        for path in paths:
            print(path)
        kind = "student notebooks (solutions removed, hidden tests held back)" if args.action == "release" else \
            "instructor notebooks (solutions and hidden tests; an nbgrader course's source/ folder)"
        print(f"wrote {len(paths)} {kind} under {args.out}")
        return 0
    if (args.notebook is None) == (not args.solutions):
        raise ValueError("give one NOTEBOOK to grade, or --solutions (not both)")
    if args.notebook is not None:
        print(A.report(A.grade(args.notebook, timeout=args.timeout)))
        return 0
    results = A.grade_solutions(timeout=args.timeout)
    for name, res in results.items():
        hand = f" (+ {res['hand_points']:g} graded by hand)" if res["hand_points"] else ""
        print(f"{name}: {res['score']:g} / {res['max_score']:g}{hand}")
    short = [name for name, res in results.items() if not A.full_marks(res)]
    if short:
        for name in short:
            print(A.report(results[name]), file=sys.stderr)
        print(f"solutions that lose marks: {', '.join(short)}", file=sys.stderr)
        return 1
    print("all solutions score full marks")
    return 0


class _Help(argparse.HelpFormatter):
    """Shows an option's default where it has a real one and the help does not say it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" not in text and action.default not in (None, False, argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``rhn-np`` and its sub-commands."""
    parser = argparse.ArgumentParser(prog="rhn-np", description="Recurrent Highway Networks in NumPy/CuPy.")
    parser.add_argument("--version", action="version", version=f"rhn_np {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_info = sub.add_parser("info", help="print the version and the usable backends and devices")
    p_info.add_argument("--compile", action="store_true", help="compile the compiled CPU path's loops now (or load "
                        "them from its cache) and print how long each took")
    p_info.set_defaults(func=_info)

    p = sub.add_parser(
        "train", help="train a model (no arguments: the demo preset on the embedded pydoc corpus)", formatter_class=_Help,
        description="Train a language model: an RHN (--cell rhn) or one of the paper's deep-transition "
                    "baselines (--cell dt_rnn, dts_rnn), one or more layers (--layers). With no arguments: the 'demo' preset, a small character "
                    "model on the embedded 'pydoc' corpus, a few minutes on a laptop CPU. Options override "
                    "the preset's values.")
    p.add_argument("--preset", choices=sorted(PRESETS), help="named configuration (default: demo)")
    config.add_options(p)  # one option per setting, from its declaration in rhn_np.config
    p.add_argument("--work-dir", help="folder for metrics, checkpoints and the learning curve (default: "
                                      "rhn-runs/<preset, else data set>, then -2, -3, ... so that no run is overwritten)")
    p.add_argument("--resume", action="store_true", help="continue the run in --work-dir from its checkpoint.npz")
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
    p.add_argument("--threads", type=_int_at_least(1), metavar="N", help=config.FIELDS["threads"].help)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--mc-samples", type=_int_at_least(1), metavar="N",
                   help="MC-dropout evaluation (the authors' evaluate_mc): average the per-token probabilities of N "
                        "batch-1 passes over the split, each with its own dropout masks at the run's rates; passes "
                        "with perplexity >= --mc-reject-ppl are drawn again")
    p.add_argument("--mc-seed", type=_int_at_least(0), default=0, metavar="SEED", help="seed of the MC-dropout masks")
    p.add_argument("--mc-reject-ppl", type=_reject_ppl, default=500.0, metavar="PPL",
                   help="draw an MC pass again when its perplexity is at or above this (the authors': 500; none: keep "
                        "every pass)")
    p.add_argument("--mc-x-mask", default="type", choices=("type", "authors"),
                   help="word-type mask of an MC pass: one value per vocabulary entry, or the authors' one value for "
                        "every token")
    p.add_argument("--mc-rows", type=_int_at_least(1), metavar="R",
                   help="MC samples run as rows of one batch, R at a time (default: as many as fit in about 1 GiB)")
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
    p.add_argument("--threads", type=_int_at_least(1), metavar="N", help=config.FIELDS["threads"].help)
    p.set_defaults(func=_sample)

    p = sub.add_parser(
        "sweep", help="many training runs: the paper's Fig. 4 and depth table (Dask)",
        description="Sweeps of independent training runs (rhn_np.sweep): built-in fig4 (JSB, RHN vs DT-RNN vs "
                    "DT(S)-RNN at depths 1-6, random SGD search), ptb-depth (the authors' depth table, a GPU-cluster "
                    "job) and ptb-depth-cpu, or a spec file. Needs the sweep extra for Dask and the plot: "
                    "pip install 'rhn-np[sweep]'.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="the built-in sweeps")
    for action, text in (("run", "run the trials not finished yet (again: skips finished ones, resumes cut ones)"),
                         ("show", "print a sweep's spec as TOML (to copy, edit and run as a file)")):
        a = actions.add_parser(action, help=text, formatter_class=_Help)
        a.add_argument("sweep", metavar="NAME|SPEC.toml", help="a built-in sweep (rhn-np sweep list) or a spec file")
        a.add_argument("--trials", type=_int_at_least(1), help="trials per arm (default: the sweep's)")
        a.add_argument("--cells", type=_list_of(str), help="comma-separated cells, e.g. rhn,dt_rnn")
        a.add_argument("--depths", type=_list_of(int), help="comma-separated depths, e.g. 1,2")
        a.add_argument("--epochs", type=_int_at_least(1), help="most epochs per trial (default: the sweep's)")
        a.add_argument("--seed", type=_int_at_least(0), help="the sweep's seed (which trials it draws)")
        if action == "show":
            continue
        a.add_argument("--work-dir", required=True, help="the sweep's folder (results.jsonl, trials/, swarm.png)")
        a.add_argument("--workers", type=_int_at_least(0), default=2,
                       help="worker processes of a local Dask cluster, one thread each (0: no Dask, one by one here)")
        a.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler, e.g. tcp://host:8786 "
                       "(in place of --workers; the work folder must be on a file system the workers share)")
        a.add_argument("--data-dir", help="where the workers read the data (default: their download cache)")
        a.add_argument("--backend", choices=("numpy", "cupy", "auto"), help="the trials' array backend (cupy: GPU "
                       "workers; default: the preset's)")
        a.add_argument("--keep", choices=("best", "all", "none"), default="best",
                       help="checkpoints kept in each finished trial's folder")
        a.add_argument("--quiet", action="store_true", help="no progress bar")
    a = actions.add_parser("status", help="how many trials are finished, per arm")
    a.add_argument("work_dir", metavar="DIR", help="the sweep's folder")
    a = actions.add_parser("plot", help="write DIR/swarm.png (Fig. 4) and print the medians per arm")
    a.add_argument("work_dir", metavar="DIR", help="the sweep's folder")
    a.add_argument("--out", help="where to write the plot (default: DIR/swarm.png)")
    p.set_defaults(func=_sweep)

    p = sub.add_parser(
        "assignments", help="auto-graded assignments (nbgrader): release the student notebooks, grade them",
        description="Four notebooks a student completes, auto-graded with nbgrader: the micro-layer (Eqs. 6-9), BPTT "
                    "over a window, the step Jacobian and its Gersgorin discs (Eq. 15 written, graded by hand), the "
                    "DT-RNN backward. Needs the assignments extra: pip install 'rhn-np[assignments]'.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("list", help="the assignments, their parts and points")
    for action, text in (("release", "write the student notebooks OUT/<name>/<name>.ipynb through nbgrader generate_assignment"),
                         ("source", "write the instructor notebooks (solutions, hidden tests) for an nbgrader course")):
        a = actions.add_parser(action, help=text, formatter_class=_Help)
        a.add_argument("out", metavar="OUT", help="folder to write into")
        a.add_argument("--only", action="append", metavar="NAME", help="this assignment only (repeatable; default: all)")
        a.add_argument("--force", action="store_true", help="replace notebooks that exist in OUT")
    a = actions.add_parser("grade", help="autograde a completed notebook (or, --solutions, the instructor versions)",
                           formatter_class=_Help,
                           description="Autograde one completed notebook with nbgrader (in a temporary course folder) "
                                       "and print its parts and 'score X / Y' (auto-graded points; a written answer is "
                                       "graded by hand and reported apart). --solutions grades the instructor versions "
                                       "of all assignments and exits non-zero unless they score full marks.")
    a.add_argument("notebook", nargs="?", metavar="NOTEBOOK", help="the student's .ipynb (or a py:percent .py)")
    a.add_argument("--solutions", action="store_true", help="grade the instructor versions of all assignments")
    a.add_argument("--timeout", type=_int_at_least(1), default=120, help="nbgrader's limit per notebook cell, seconds")
    p.set_defaults(func=_assignments)
    return parser


def _memory_error(exc: MemoryError) -> str:
    if isinstance(exc, tasks.InsufficientMemory):
        return str(exc)
    said = f" ({exc})" if str(exc) else ""
    return (f"out of memory{said}: use a smaller model or window (--hidden, --depth, --batch-size, --bptt, "
            "--eval-batch-size), or close other programs")


def _os_error(exc: OSError, args) -> str:
    """One line for an error of the operating system: what it said, where, and what to do."""
    if exc.errno is None:  # a message of rhn_np's own (e.g. a checkpoint that cannot be read)
        return str(exc)
    where = f": {exc.filename}" if exc.filename else ""
    folder = getattr(args, "work_dir", None)
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        resume = (f"; continue with rhn-np train --work-dir {folder} --resume" if args.command == "train" and folder
                  else "")
        return (f"the disk is full ({exc.strerror}{where}): free some space, or write to another disk (--work-dir); "
                f"checkpoints are written whole or not at all, so the last one saved is intact{resume}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"{exc.strerror}{where}: this user may not read or write there; fix the permissions (chmod) or "
                "choose a folder you can write to (--work-dir)")
    return f"{exc.strerror or exc}{where} (errno {errno.errorcode.get(exc.errno, exc.errno)}); check the path and the disk"


def main(argv=None) -> int:
    """Run ``rhn-np`` with ``argv`` (default: the command line); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with contextlib.ExitStack() as scope:
            args.scope = scope  # what a command sets for its run (the BLAS threads) is undone when it returns
            scope.enter_context(interrupt_on_signals())  # SIGTERM stops a command as Ctrl+C does
            status = args.func(args)
        swallowed = take_pending()  # a stop that landed where it could not be raised on (a __del__)
        if swallowed is not None:
            print(f"rhn-np {args.command}: stopped by {signal_name(swallowed)}", file=sys.stderr)
            return 128 + swallowed
        return status
    except KeyboardInterrupt as exc:  # Ctrl+C or SIGTERM: quietly, with the shell's status for that signal
        take_pending()  # this one is handled here
        if not getattr(exc, "reported", False):
            when = " before training started" if args.command == "train" and not getattr(
                args, "training_started", False) else ""
            print(f"rhn-np {args.command}: stopped by {signal_name(getattr(exc, 'signum', signal.SIGINT))}{when}",
                  file=sys.stderr)
        return exit_status(exc)
    except (ValueError, FileNotFoundError, RuntimeError, CheckpointError, RunError, TrainingDiverged) as exc:
        print(f"rhn-np {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except MemoryError as exc:  # an estimate refused (tasks.InsufficientMemory) or an allocation that failed
        print(f"rhn-np {args.command}: error: {_memory_error(exc)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the output's reader has gone (`rhn-np sweep status DIR | head`): not an error
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        except (OSError, ValueError):
            pass
        return 141  # the shell's status for SIGPIPE
    except OSError as exc:  # permissions, a full disk, ...: the operating system's refusal, in one line
        print(f"rhn-np {args.command}: error: {_os_error(exc, args)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
