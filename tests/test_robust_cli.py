"""The command line on a hostile machine: the operating system's refusals (permissions, a
full disk, out of memory) as one line, the memory estimate that refuses a model before it is
allocated, unreadable checkpoints, extreme sampling temperatures, BLAS threads and the plain
progress lines of a run whose stdout is not a terminal."""

from __future__ import annotations

import argparse
import builtins
import errno
import os
import re
import subprocess
import sys
import time
import tracemalloc
import warnings

import numpy as np
import pytest

from rhn_np import backend, checkpoint, cli, config, data, lm, tasks
from rhn_np import train as T
from rhn_np.fast import buffers

TINY = ["--hidden", "16", "--depth", "2", "--batch-size", "8", "--bptt", "20", "--eval-batch-size", "8"]


@pytest.fixture(scope="module", autouse=True)
def _one_data_home(data_home):
    """Every test here uses one download cache (conftest's ``data_home``)."""
    return data_home


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A few steps of a tiny model on pydoc: a run folder with best.npz and checkpoint.npz."""
    work = tmp_path_factory.mktemp("runs") / "tiny"
    assert cli.main(["train", *TINY, "--max-steps", "6", "--eval-every", "3", "--sample-length", "0", "--quiet",
                     "--no-final-eval", "--work-dir", str(work)]) == 0
    return work


def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    return lines[0]


# ----------------------------------------------------------------------------
# Permissions, a full disk, out of memory: one line, exit status 1
# ----------------------------------------------------------------------------
def _refuse_writes_under(monkeypatch, folder):
    """Make ``folder`` read-only: its mode, and (for root, whom modes do not stop) every
    creation, write, rename or removal under it refused with EACCES, as the kernel does."""
    folder = os.path.abspath(folder)
    os.chmod(folder, 0o555)
    inside = lambda p: os.path.abspath(os.fspath(p)).startswith(folder + os.sep)  # noqa: E731
    denied = lambda p: PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(p))  # noqa: E731
    real_open, real_os_open, real_replace = builtins.open, os.open, os.replace
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | getattr(os, "O_TMPFILE", 0)

    def fake_open(file, mode="r", *args, **kw):
        if isinstance(file, (str, bytes, os.PathLike)) and inside(file) and set(mode) & set("wax+"):
            raise denied(file)
        return real_open(file, mode, *args, **kw)

    def fake_os_open(path, flags, *args, **kw):
        if inside(os.path.join(path, "x") if os.path.isdir(path) else path) and flags & writes:
            raise denied(path)
        return real_os_open(path, flags, *args, **kw)

    def fake_replace(src, dst, *args, **kw):
        if inside(src) or inside(dst):
            raise denied(src)
        return real_replace(src, dst, *args, **kw)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "replace", fake_replace)


def test_a_read_only_work_folder_is_said_at_start_in_one_line(tmp_path, monkeypatch, capsys):
    empty, earlier = tmp_path / "ro", tmp_path / "ro-earlier"
    empty.mkdir()
    earlier.mkdir()
    (earlier / "metrics.jsonl").write_text("")  # the records of an earlier run that saved nothing
    _refuse_writes_under(monkeypatch, empty)
    _refuse_writes_under(monkeypatch, earlier)
    try:
        assert cli.main(["train", *TINY, "--max-steps", "2", "--work-dir", str(empty), "--quiet"]) == 1
        _one_error_line(capsys, "rhn-np train: error: cannot write in the work folder", "Permission denied",
                        "--work-dir")
        # They cannot be set aside either: said by the operating system's error, in one line.
        assert cli.main(["train", *TINY, "--max-steps", "2", "--work-dir", str(earlier), "--quiet"]) == 1
        _one_error_line(capsys, "Permission denied", "fix the permissions (chmod) or choose a folder you can write to")
    finally:
        os.chmod(empty, 0o755)
        os.chmod(earlier, 0o755)
    assert list(empty.iterdir()) == [] and [p.name for p in earlier.iterdir()] == ["metrics.jsonl"]


def test_evaluate_in_a_read_only_run_folder_is_one_line(tiny_run, monkeypatch, capsys):
    _refuse_writes_under(monkeypatch, tiny_run)  # evaluate appends its result to metrics.jsonl
    try:
        assert cli.main(["evaluate", "--work-dir", str(tiny_run), "--quiet"]) == 1
        _one_error_line(capsys, "rhn-np evaluate: error: Permission denied", "metrics.jsonl", "chmod")
    finally:
        os.chmod(tiny_run, 0o755)


def test_a_full_disk_is_one_line_and_leaves_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    """ENOSPC from the disk while the second validation saves: one line that says what to do;
    the checkpoint of the first is intact and no temporary file is left."""
    work = tmp_path / "full"
    full = {"now": False}
    real_fsync, real_validate = os.fsync, T.Trainer.validate

    def fsync(fd):
        if full["now"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    def validate(self):
        rec = real_validate(self)
        full["now"] = True  # the disk fills up after the first validation
        return rec

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(T.Trainer, "validate", validate)
    assert cli.main(["train", *TINY, "--max-steps", "4", "--eval-every", "2", "--quiet", "--no-final-eval",
                     "--work-dir", str(work)]) == 1
    _one_error_line(capsys, "rhn-np train: error: the disk is full (No space left on device)", "free some space",
                    "the last one saved is intact", f"rhn-np train --work-dir {work} --resume")
    monkeypatch.undo()
    _, meta = checkpoint.load(work / "checkpoint.npz")
    assert meta["step"] == 2
    assert not [p.name for p in work.iterdir() if p.name.endswith(".part")]


def test_out_of_memory_in_model_init_is_one_line(tmp_path, monkeypatch, capsys):
    def no_memory(*args, **kw):
        raise MemoryError("Unable to allocate 4.00 GiB for an array with shape (1000, 1000, 1000)")

    monkeypatch.setattr(tasks, "init_model", no_memory)
    assert cli.main(["train", *TINY, "--max-steps", "2", "--work-dir", str(tmp_path / "w"), "--quiet"]) == 1
    _one_error_line(capsys, "rhn-np train: error: out of memory (Unable to allocate 4.00 GiB", "--hidden",
                    "--batch-size")
    assert not (tmp_path / "w").exists()


def _minimal_argv(name, sub):
    """The shortest command line ``sub`` (the parser of sub-command ``name``) accepts."""
    argv = [name]
    for action in sub._actions:
        value = str(next(iter(action.choices))) if action.choices else "x"
        if isinstance(action, argparse._SubParsersAction):
            return argv + _minimal_argv(value, action.choices[value])
        if action.required and action.option_strings:
            argv += [action.option_strings[0]] + ([] if action.nargs == 0 else [value])
        elif not action.option_strings and action.nargs in (None, "+"):
            argv.append(value)
    return argv


def _every_parser(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _every_parser(sub)


@pytest.mark.parametrize("error, needles", [
    (PermissionError(errno.EACCES, "Permission denied", "somewhere/file"),
     ["Permission denied: somewhere/file", "chmod"]),
    (OSError(errno.EROFS, "Read-only file system", "somewhere"), ["Read-only file system: somewhere", "--work-dir"]),
    (OSError(errno.ENOSPC, "No space left on device"), ["the disk is full", "free some space"]),
    (OSError(errno.EIO, "Input/output error", "somewhere"), ["Input/output error: somewhere (errno EIO)"]),
    (MemoryError(), ["out of memory: use a smaller model"]),
], ids=["EACCES", "EROFS", "ENOSPC", "EIO", "MemoryError"])
def test_every_subcommand_says_os_errors_in_one_line(error, needles, monkeypatch, capsys):
    """Whatever the sub-command (those added later included: they are read from the parser)."""
    parser = cli.build_parser()

    def fail(args):
        raise error

    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"train", "evaluate", "sample", "info", "assignments"} <= set(commands)
    for p in _every_parser(parser):
        if p is not parser:
            p.set_defaults(func=fail)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    for name, sub in commands.items():
        assert cli.main(_minimal_argv(name, sub)) == 1, name
        _one_error_line(capsys, f"rhn-np {name}: error:", *needles)


# ----------------------------------------------------------------------------
# The memory estimate
# ----------------------------------------------------------------------------
MEASURED = [
    dict(hidden=128, depth=3, batch_size=32, bptt=50),  # the demo
    dict(hidden=64, depth=2, batch_size=64, bptt=60, coupled=False, eval_batch_size=16),
    dict(hidden=96, depth=4, batch_size=16, bptt=35, optimizer="sgd", cell="dt_rnn"),
    dict(hidden=64, depth=3, batch_size=16, bptt=40, dtype="float64", layers=2, tied=True, emb=64),
]


@pytest.mark.parametrize("impl", ["reference", "fast"])
@pytest.mark.parametrize("over", MEASURED, ids=["demo", "uncoupled", "dt_rnn-sgd", "2-layers-float64"])
def test_memory_estimate_is_within_a_factor_2_of_the_measured_peak(over, impl, tmp_path):
    """tracemalloc's peak (NumPy reports its arrays' memory to it) over the model's
    initialisation, three training steps and a validation, against memory_estimate."""
    ds = data.load("pydoc")
    cfg = T.config_from_preset("demo", impl=impl, eval_every=3, max_steps=3, **over)
    warm = T.Trainer(cfg, tmp_path / "warm", ds=ds, progress=False, out=lambda *a: None)
    warm.train_step()  # compiled code and first-call caches, outside the measurement
    del warm
    buffers.release()  # the fast path's reused buffers count as the run's own
    tracemalloc.start()
    try:
        trainer = T.Trainer(cfg, tmp_path / "run", ds=ds, progress=False, out=lambda *a: None)
        for _ in range(3):
            trainer.train_step()
        trainer.validate()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    est = tasks.memory_estimate(trainer.cfg, ds)
    assert est["total"] == est["params"] + est["optimizer"] + est["activations"]
    assert trainer.memory == est
    assert 0.5 <= est["total"] / peak <= 2.0, (est, peak)


def test_memory_estimate_grows_as_its_formula_says():
    ds = data.load("pydoc")
    base = T.config_from_preset("demo")
    est = tasks.memory_estimate(base, ds)
    P = tasks.count_params(base, ds)
    assert est["params"] == 3 * P * 4 and est["optimizer"] == 2 * P * 4  # float32, Adam's two moments
    assert tasks.memory_estimate(T.config_from_preset("demo", optimizer="sgd"), ds)["optimizer"] == 0
    doubled = tasks.memory_estimate(T.config_from_preset("demo", batch_size=64), ds)
    assert doubled["activations"] == 2 * est["activations"]
    wide = tasks.memory_estimate(T.config_from_preset("demo", dtype="float64"), ds)
    assert wide["total"] == 2 * est["total"]


def test_a_model_larger_than_memory_is_refused_before_allocating(tmp_path, capsys, monkeypatch):
    # Real: a width whose weights alone are terabytes, against this machine's available memory.
    argv = ["train", "--hidden", "200000", "--depth", "10", "--max-steps", "2", "--quiet", "--work-dir",
            str(tmp_path / "huge")]
    started = time.perf_counter()
    assert cli.main(argv) == 1
    assert time.perf_counter() - started < 30  # refused, not attempted
    line = _one_error_line(capsys, "rhn-np train: error: this model needs about", "GiB of memory", "is available",
                           "--hidden")
    need = tasks.memory_estimate(T.config_from_preset("demo", hidden=200000, depth=10), data.load("pydoc"))
    assert tasks.format_bytes(need["total"]) in line
    assert not (tmp_path / "huge").exists()
    # The demo on a machine with 1 MiB free: refused with the estimate, by the API too.
    monkeypatch.setattr(backend, "available_memory", lambda be="numpy": 2**20)
    with pytest.raises(tasks.InsufficientMemory, match=r"needs about 21\.\d MiB of memory .* but 1\.0 MiB is"):
        T.Trainer(T.config_from_preset("demo"), tmp_path / "small", progress=False)
    assert isinstance(tasks.InsufficientMemory("x"), MemoryError)


def test_train_says_its_memory_and_threads(tmp_path, capsys, monkeypatch):
    for var in tasks.BLAS_THREAD_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    assert cli.main(["train", *TINY, "--max-steps", "2", "--quiet", "--sample-length", "0", "--no-final-eval",
                     "--work-dir", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    given = {k.lstrip("-").replace("-", "_"): int(v) for k, v in zip(TINY[::2], TINY[1::2])}
    cfg = T.config_from_preset("demo", **given)
    need = tasks.memory_estimate(cfg, data.load("pydoc"))
    assert f"about {tasks.format_bytes(need['total'])} of memory, 1 BLAS thread\n" in out


# ----------------------------------------------------------------------------
# An unreadable checkpoint is not a corrupted one
# ----------------------------------------------------------------------------
def _unreadable(monkeypatch, path):
    """``path`` unreadable: mode 000 and (for root, whom modes do not stop) open() refused."""
    path = os.path.abspath(path)
    os.chmod(path, 0)
    real_open = builtins.open

    def fake_open(file, *args, **kw):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(os.fspath(file)) == path:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(file))
        return real_open(file, *args, **kw)

    monkeypatch.setattr(builtins, "open", fake_open)


def test_an_unreadable_best_npz_is_reported_as_unreadable(tiny_run, monkeypatch, capsys):
    best = tiny_run / "best.npz"
    _unreadable(monkeypatch, best)
    try:
        with pytest.raises(PermissionError) as info:
            T.load_run(tiny_run)
        assert not isinstance(info.value, checkpoint.CheckpointError)
        text = str(info.value)
        assert f"cannot read the checkpoint {best}: Permission denied" in text and "chmod u+r" in text
        assert "corrupt" not in text.replace("nothing is known to be wrong", "")
        for command in (["evaluate", "--quiet"], ["sample", "--length", "5"]):
            assert cli.main([command[0], "--work-dir", str(tiny_run), *command[1:]]) == 1
            line = _one_error_line(capsys, f"rhn-np {command[0]}: error: cannot read the checkpoint",
                                   "Permission denied", "chmod u+r")
            assert "corrupted" not in line
    finally:
        monkeypatch.undo()
        os.chmod(best, 0o644)
    assert T.load_run(tiny_run)[2]["step"] == 6  # intact: readable again


# ----------------------------------------------------------------------------
# Sampling at any temperature
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sampler():
    """A word/char model whose logits differ clearly, and its data set's vocabulary."""
    ds = data.load("pydoc")
    params = lm.init_lm_params(ds.vocab_size, 16, 16, 2, init_scale=0.5, seed=3, dtype="float64")
    return params, ds


def _greedy(params, ds, prime, length):
    """Greedy decoding, written plainly: the argmax of the logits, fed back."""
    ids = list(ds.encode(prime))
    logits, s = lm.lm_logits(params, np.asarray(ids, np.int64)[:, None], lm.zero_state(params, 1))
    out = list(ids)
    for _ in range(length):
        nxt = int(np.argmax(logits[-1, 0]))
        out.append(nxt)
        logits, s = lm.lm_logits(params, np.asarray([[nxt]], np.int64), s)
    return ds.decode(np.asarray(out, np.int64))


def _uniform(ds, prime, length, seed):
    """What the sampler draws from a uniform distribution (the model's logits do not matter)."""
    rng = backend.host_rng(seed)
    V = ds.vocab_size
    ids = list(ds.encode(prime)) + [int(rng.choice(V, p=np.full(V, 1.0 / V))) for _ in range(length)]
    return ds.decode(np.asarray(ids, np.int64))


@pytest.mark.parametrize("temperature", [5e-324, 1e-320, 1e-308, 1e-100])
def test_a_tiny_temperature_samples_the_argmax(sampler, temperature):
    params, ds = sampler
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow, no invalid value: nothing NaN on the way
        text = T.sample(params, ds, length=40, temperature=temperature, prime="def ", seed=1)
    assert text == _greedy(params, ds, "def ", 40)


@pytest.mark.parametrize("temperature", [1e300, 1.7e308, float("inf")])
def test_a_huge_temperature_samples_uniformly(sampler, temperature):
    params, ds = sampler
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = T.sample(params, ds, length=60, temperature=temperature, prime="def ", seed=5)
    assert text == _uniform(ds, "def ", 60, seed=5)
    assert text != _greedy(params, ds, "def ", 60)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), "1", None, True])
def test_a_temperature_that_is_not_positive_is_refused(sampler, temperature):
    params, ds = sampler
    with pytest.raises(ValueError, match="temperature must be > 0"):
        T.sample(params, ds, length=5, temperature=temperature)


def test_sample_refuses_logits_that_are_not_finite(sampler, monkeypatch):
    """Finite weights can still overflow to inf logits: said, not drawn from NaN probabilities."""
    params, ds = sampler
    real = lm.lm_logits

    def overflowing(*args, **kw):
        logits, s = real(*args, **kw)
        logits = np.array(logits)
        logits[-1, 0, 3] = np.inf
        return logits, s

    monkeypatch.setattr(lm, "lm_logits", overflowing)
    with pytest.raises(ValueError, match="logits are not finite"):
        T.sample(params, ds, length=5, prime="def ")


def test_cli_sample_at_1e_320_is_greedy(tiny_run, capsys):
    assert cli.main(["sample", "--work-dir", str(tiny_run), "--temperature", "1e-320", "--length", "30",
                     "--prime", "import "]) == 0
    out = capsys.readouterr().out
    params, _, meta = T.load_run(tiny_run)
    assert out == _greedy(params, T.dataset_for_sampling(meta), "import ", 30) + "\n"


# ----------------------------------------------------------------------------
# BLAS threads
# ----------------------------------------------------------------------------
def _blas_threads_now() -> int:
    return backend.blas_libraries()[0]["num_threads"]


def test_the_thread_rule():
    for name, preset in config.PRESETS.items():  # on 2 cores: one thread for every preset
        cfg = T.config_from_preset(name)
        assert tasks.blas_threads(cfg, preset["batch_size"], cores=2) == 1, name
    for cores in (1, 2, 4, 16, 64):
        for hidden in (16, 128, 830, 1500, 4000):
            for rows in (1, 20, 128):
                cfg = T.config_from_preset("demo", hidden=hidden)
                k = 2  # the coupled RHN: R_H and R_T per micro-layer
                n = tasks.blas_threads(cfg, rows, cores=cores)
                assert n == max(1, min(cores - 1, rows * k * hidden ** 2 // tasks.THREAD_WORK))
                assert 1 <= n and (n < cores or cores == 1)
    uncoupled = T.config_from_preset("demo", hidden=1500, coupled=False)
    assert tasks.blas_threads(uncoupled, 8, cores=64) > tasks.blas_threads(T.config_from_preset(
        "demo", hidden=1500), 8, cores=64)  # three gate matrices per micro-layer: more work per product
    with pytest.raises(ValueError, match="rows must be >= 1"):
        tasks.blas_threads(uncoupled, 0)


def test_threads_for_obeys_the_option_then_the_environment(monkeypatch):
    cfg = T.config_from_preset("demo")
    for var in tasks.BLAS_THREAD_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    assert tasks.threads_for(cfg, 32) == tasks.blas_threads(cfg, 32)
    assert tasks.threads_for(cfg, 32, 3) == 3
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    assert tasks.threads_for(cfg, 32) is None  # the environment's setting is left as it is
    assert tasks.threads_for(cfg, 32, 1) == 1
    with pytest.raises(ValueError, match="threads must be >= 1"):
        tasks.threads_for(cfg, 32, 0)


def test_training_runs_with_its_threads_and_restores_them(tmp_path, monkeypatch):
    for var in tasks.BLAS_THREAD_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    seen = []
    real_step = T.Trainer.train_step

    def step(self):
        seen.append(_blas_threads_now())
        return real_step(self)

    monkeypatch.setattr(T.Trainer, "train_step", step)
    before = _blas_threads_now()
    ds = data.load("pydoc")
    for threads, expected in ((None, 1), (2, 2), (1, 1)):
        seen.clear()
        cfg = T.config_from_preset("demo", hidden=16, depth=2, batch_size=8, bptt=20, eval_batch_size=8,
                                   max_steps=2, eval_every=2, threads=threads, final_eval=False)
        trainer = T.Trainer(cfg, tmp_path / f"t{threads}", ds=ds, progress=False, out=lambda *a: None)
        assert trainer.threads == expected
        trainer.run()
        assert seen == [expected, expected]
        assert _blas_threads_now() == before
    # resumable: a run may continue with other threads
    resumed = T.Trainer.resume(tmp_path / "t1", overrides={"threads": 2, "max_steps": 3}, ds=ds, progress=False,
                               out=lambda *a: None)
    assert resumed.threads == 2 and resumed.cfg.threads == 2


def test_evaluate_and_sample_use_their_threads(tiny_run, monkeypatch, capsys):
    for var in tasks.BLAS_THREAD_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    seen = {}

    def watched(name, real):
        def call(*args, **kw):
            seen[name] = _blas_threads_now()
            return real(*args, **kw)
        return call

    monkeypatch.setattr(T, "evaluate_dataset", watched("evaluate", T.evaluate_dataset))
    monkeypatch.setattr(T, "sample", watched("sample", T.sample))
    before = _blas_threads_now()
    assert cli.main(["evaluate", "--work-dir", str(tiny_run), "--quiet", "--threads", "2"]) == 0
    assert cli.main(["sample", "--work-dir", str(tiny_run), "--length", "5"]) == 0
    assert seen == {"evaluate": 2, "sample": 1}
    assert _blas_threads_now() == before
    capsys.readouterr()


def test_info_reports_the_blas(capsys, monkeypatch):
    for var in tasks.BLAS_THREAD_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    libs = backend.blas_libraries()
    assert libs, "NumPy's BLAS is visible to threadpoolctl"
    for lib in libs:
        assert f"BLAS: {lib['internal_api']} {lib['version']}" in out and f"{lib['num_threads']} thread" in out
    assert f"BLAS threads of train ({tasks.cpu_cores()} cores; --threads N overrides): demo " \
           f"{tasks.blas_threads(T.config_from_preset('demo'), 32)}," in out
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert cli.main(["info"]) == 0
    assert "as OPENBLAS_NUM_THREADS=1 says (--threads N overrides it)" in capsys.readouterr().out


# ----------------------------------------------------------------------------
# Progress where stdout is not a terminal
# ----------------------------------------------------------------------------
PROGRESS = re.compile(r"^step (\d[\d,]*)/200 \(\d+ %\), bpc \d+\.\d{3}, [\d,]+ tok/s, eta (\d+ min )?\d+ s$")


def _run_piped(tmp_path, data_home, *extra):
    """`rhn-np train` with stdout a pipe, no PYTHONUNBUFFERED; (seconds after start, line) as they arrive."""
    code = ("import sys; from rhn_np import train; train.PROGRESS_SECONDS = 0.1; from rhn_np import cli; "
            "sys.exit(cli.main(sys.argv[1:]))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env.update(RHN_NP_DATA_HOME=str(data_home), OPENBLAS_NUM_THREADS="1")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, "train", *TINY, "--max-steps", "200", "--eval-every", "100",
                             "--log-every", "2", "--sample-length", "0", "--no-final-eval", "--work-dir",
                             str(tmp_path / "w"), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    lines = []
    try:
        for line in proc.stdout:
            lines.append((time.perf_counter() - start, line.rstrip("\n")))
        proc.wait(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, proc.stderr.read()
    return lines, time.perf_counter() - start


def test_a_piped_run_prints_plain_progress_lines_as_it_goes(tmp_path, data_home):
    lines, total = _run_piped(tmp_path, data_home)
    progress = [(t, line) for t, line in lines if line.startswith("step ") and "/200" in line]
    assert len(progress) >= 3, lines
    for _, line in progress:
        assert PROGRESS.match(line), line
    steps = [int(PROGRESS.match(line).group(1)) for _, line in progress]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    # Streamed as they are printed (flushed), not in one block when the process ends.
    assert progress[-1][0] - progress[0][0] > 0.25, progress
    valid = [t for t, line in lines if line.startswith("step 100, epoch 0, valid nll")]
    assert valid and valid[0] < lines[-1][0] - 0.25
    assert "\r" not in "".join(line for _, line in lines)  # no bar drawn into the pipe


def test_a_quiet_piped_run_prints_no_progress_lines(tmp_path, data_home):
    lines, _ = _run_piped(tmp_path, data_home, "--quiet")
    assert not [line for _, line in lines if "/200" in line], lines
