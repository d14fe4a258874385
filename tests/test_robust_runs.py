"""Runs that are stopped, killed or handed damaged files: nothing lost, nothing silently wrong.

* Ctrl+C and SIGTERM during training save and resume exactly; during start-up they exit
  with one line and 130 / 143, no traceback (real ``rhn-np train`` processes);
* periodic checkpoints between validations resume bit for bit;
* a kill between ``best.npz`` and ``checkpoint.npz``, or in the middle of a checkpoint
  write (SIGKILL), loses nothing, and the next start leaves no temporary file;
* checkpoints whose members are compressed or larger than their headers say (a zip
  bomb), whose metadata was edited, which lost Adam's moments or metadata keys, are
  refused with a clear :class:`rhn_np.checkpoint.CheckpointError`, before anything large
  is read; the format-1 checkpoints of earlier versions still load.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

from rhn_np import checkpoint, cli, config
from rhn_np import train as T
from test_train import TinyText, markov_text, tiny_cfg

TESTS = pathlib.Path(__file__).parent
FIXTURES = TESTS / "fixtures"
ADAM = dict(optimizer="adam", lr=0.01, lr_schedule="cosine", decay_steps=30)


@pytest.fixture(scope="module")
def tiny():
    vocab = list("abcdefgh\n")
    s = markov_text(6000, seed=1, vocab=vocab)
    return TinyText(s[:5000], s[5000:5600], s[5600:], vocab)


def quiet(said=None):
    return said.append if said is not None else (lambda *a: None)


def trainer(cfg, ds, work, said=None):
    return T.Trainer(cfg, work, ds=ds, progress=False, out=quiet(said))


def resume(work, ds, said=None, **overrides):
    return T.Trainer.resume(work, ds=ds, progress=False, out=quiet(said), overrides=overrides or None)


def assert_same_params(a, b):
    assert sorted(a.params) == sorted(b.params)
    for k in a.params:
        np.testing.assert_array_equal(np.asarray(a.params[k]), np.asarray(b.params[k]), err_msg=k)


def assert_same_checkpoints(path_a, path_b):
    """The same arrays and the same training state (everything but the file's own checksums)."""
    (arrays_a, meta_a), (arrays_b, meta_b) = checkpoint.load(path_a), checkpoint.load(path_b)
    assert sorted(arrays_a) == sorted(arrays_b)
    for k in arrays_a:
        np.testing.assert_array_equal(arrays_a[k], arrays_b[k], err_msg=f"{path_b}: {k}")
    skip = {"checksum", "meta_checksum"}
    assert {k: v for k, v in meta_a.items() if k not in skip} == {k: v for k, v in meta_b.items() if k not in skip}


def records(work, fields=("split", "step", "epoch", "nll", "lr")):
    """The metrics records without their times and speeds."""
    return [{k: r.get(k) for k in fields} for r in T.read_metrics(work) if r["split"] in ("train", "valid")]


def temporaries(folder):
    return sorted(p.name for p in pathlib.Path(folder).iterdir() if p.name.startswith(".tmp-"))


class _Crash(BaseException):
    """A kill, as far as the trainer can tell: nothing catches it."""


class _CrashAt(T.Trainer):
    at = None

    def train_step(self):
        if self.step == self.at:
            raise _Crash
        return super().train_step()


class _SignalAt(T.Trainer):
    at, signum = None, signal.SIGTERM

    def train_step(self):
        if self.step == self.at:
            os.kill(os.getpid(), self.signum)  # handled between two bytecodes of this step: it finishes first
        return super().train_step()


# ----------------------------------------------------------------------------
# Interrupts, in process
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_is_handled_like_ctrl_c_and_resumes_exactly(tiny, tmp_path, signum):
    cfg = tiny_cfg(max_steps=20, eval_every=10, **ADAM)
    straight = trainer(cfg, tiny, tmp_path / "straight")
    straight.run()
    before = signal.getsignal(signal.SIGTERM)
    split = _SignalAt(cfg, tmp_path / "split", ds=tiny, progress=False, out=quiet(said := []))
    split.at, split.signum = 13, signum
    with pytest.raises(T.Interrupted) as stop:
        split.run()
    assert stop.value.signum == signum and stop.value.reported and isinstance(stop.value, KeyboardInterrupt)
    name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl+C (SIGINT)"
    assert any(m.startswith(f"interrupted at step 14 by {name}: saved ") and m.endswith("--resume") for m in said), said
    assert checkpoint.read_metadata(tmp_path / "split" / "checkpoint.npz")["step"] == 14
    assert signal.getsignal(signal.SIGTERM) is before and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    again = resume(tmp_path / "split", tiny)
    again.run()
    assert_same_params(straight, again)
    assert_same_checkpoints(tmp_path / "straight" / "best.npz", tmp_path / "split" / "best.npz")


def test_an_interrupt_where_a_validation_was_due_validates_on_resume(tiny, tmp_path):
    """Stopped in the step that ends at a validation: saved unvalidated, validated first on resume."""
    cfg = tiny_cfg(max_steps=20, eval_every=10, **ADAM)
    straight = trainer(cfg, tiny, tmp_path / "straight")
    straight.run()
    split = _SignalAt(cfg, tmp_path / "split", ds=tiny, progress=False, out=quiet())
    split.at = 9
    with pytest.raises(T.Interrupted):
        split.run()
    meta = checkpoint.read_metadata(tmp_path / "split" / "checkpoint.npz")
    assert (meta["step"], meta["validated"]) == (10, False)
    assert not (tmp_path / "split" / "best.npz").exists()
    again = resume(tmp_path / "split", tiny)
    again.run()
    assert_same_params(straight, again)
    valid = [r for r in records(tmp_path / "split") if r["split"] == "valid"]
    assert valid == [r for r in records(tmp_path / "straight") if r["split"] == "valid"]
    assert_same_checkpoints(tmp_path / "straight" / "best.npz", tmp_path / "split" / "best.npz")


def test_a_second_signal_stops_at_once_and_says_what_is_kept(tiny, tmp_path):
    class Twice(T.Trainer):
        def train_step(self):
            if self.step == 12:
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)
            return super().train_step()

    tr = Twice(tiny_cfg(max_steps=20, eval_every=10), tmp_path, ds=tiny, progress=False, out=quiet(said := []))
    with pytest.raises(T.Interrupted) as stop:
        tr.run()
    assert stop.value.reported
    assert any("SIGTERM: stopped at once at step 12, unsaved; the last checkpoint is" in m and "(step 10)" in m
               for m in said), said
    assert checkpoint.read_metadata(tmp_path / "checkpoint.npz")["step"] == 10


# ----------------------------------------------------------------------------
# Interrupts of real `rhn-np train` processes
# ----------------------------------------------------------------------------
def _default_signals():  # a child of a shell script's background job would inherit SIGINT ignored
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _start(args, data_home, **kw):
    env = dict(os.environ, RHN_NP_DATA_HOME=str(data_home), PYTHONUNBUFFERED="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "rhn_np", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=_default_signals, **kw)


def _wait_for(condition, proc, what, timeout=120.0):
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended ({proc.returncode}) before {what}: {proc.communicate()}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.02)


def _catches(pid, signum) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (Linux: SigCgt in /proc/<pid>/status)."""
    try:
        text = pathlib.Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = int(next(line.split()[1] for line in text.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(mask >> (signum - 1) & 1)


TINY_DEMO = ["train", "--preset", "demo", "--hidden", "16", "--eval-every", "100000", "--log-every", "1", "--quiet",
             "--sample-length", "0", "--no-final-eval"]


def test_sigterm_to_rhn_np_train_saves_says_how_to_resume_and_exits_143(tmp_path, data_home):
    work = tmp_path / "run"
    proc = _start([*TINY_DEMO, "--max-steps", "100000", "--work-dir", str(work)], data_home)
    try:
        _wait_for(lambda: (work / "metrics.jsonl").exists(), proc, "a first training record")  # at step 10
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, (out, err)
    assert "Traceback" not in err, err
    meta = checkpoint.read_metadata(work / "checkpoint.npz")
    step = meta["step"]
    assert f"interrupted at step {step} by SIGTERM: saved {work / 'checkpoint.npz'}; continue with: rhn-np train " \
           f"--work-dir {work} --resume" in out, out
    assert cli.main(["train", "--resume", "--work-dir", str(work), "--max-steps", str(step + 3), "--quiet",
                     "--sample-length", "0", "--no-final-eval"]) == 0
    # The same as a run that was never stopped.
    cfg = T.config_from_preset("demo", hidden=16, eval_every=100000, log_every=1, max_steps=step + 3, final_eval=False)
    straight = T.Trainer(cfg, tmp_path / "straight", progress=False, out=quiet())
    straight.run()
    arrays, meta = checkpoint.load(work / "checkpoint.npz")
    assert meta["step"] == step + 3
    for k, v in straight.params.items():
        np.testing.assert_array_equal(arrays[f"param.{k}"], np.asarray(v), err_msg=k)


@pytest.mark.skipif(not pathlib.Path("/proc/self/status").exists(), reason="needs Linux's /proc to see when the "
                    "process has installed its handlers")
@pytest.mark.parametrize("signum,delay", [(signal.SIGINT, 0.0), (signal.SIGTERM, 0.0), (signal.SIGINT, 0.7),
                                          (signal.SIGTERM, 0.7)])
def test_a_stop_during_start_up_exits_quietly(tmp_path, data_home, signum, delay):
    """From the first moment the command handles SIGTERM (in its imports), then later in
    the start-up (data, model): one line, status 128 + signal, no traceback, nothing
    written but what a save made whole."""
    work = tmp_path / "run"
    proc = _start([*TINY_DEMO, "--max-steps", "40", "--work-dir", str(work)], data_home)
    try:
        _wait_for(lambda: _catches(proc.pid, signal.SIGTERM), proc, "a SIGTERM handler")
        time.sleep(delay)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl+C (SIGINT)"
    assert proc.returncode == 128 + signum, (out, err)
    assert "Traceback" not in err and "Traceback" not in out, err
    lines = [line for line in err.splitlines() if line.strip()]
    started = f"by {name}: saved" in out  # (a slow start-up is over before the signal)
    if not started:
        assert len(lines) == 1 and lines[0] in (f"rhn-np: stopped by {name} while starting",
                                                f"rhn-np train: stopped by {name} before training started"), err
    if work.exists():
        assert temporaries(work) == []


def test_the_command_enters_through_the_launcher():
    """``rhn-np`` starts in rhn_np.__main__, which handles a stop while rhn_np.cli imports."""
    import tomllib

    with open(TESTS.parent / "pyproject.toml", "rb") as fh:
        scripts = tomllib.load(fh)["project"]["scripts"]
    assert scripts["rhn-np"] == "rhn_np.__main__:main"


# ----------------------------------------------------------------------------
# Periodic checkpoints
# ----------------------------------------------------------------------------
def test_periodic_checkpoints_write_checkpoint_npz_only_and_resume_bit_for_bit(tiny, tmp_path):
    cfg = tiny_cfg(max_steps=24, eval_every=12, checkpoint_every=5, log_every=1, **ADAM)
    straight = trainer(cfg, tiny, tmp_path / "straight")
    straight.run()
    crashed = _CrashAt(cfg, tmp_path / "split", ds=tiny, progress=False, out=quiet())
    crashed.at = 17  # after the periodic save at 15, in the middle of a "train" record's interval (11..20)
    with pytest.raises(_Crash):
        crashed.run()
    latest = checkpoint.read_metadata(tmp_path / "split" / "checkpoint.npz")
    assert (latest["step"], latest["validated"], latest["train_count"] > 0) == (15, False, True)
    assert checkpoint.read_metadata(tmp_path / "split" / "best.npz")["step"] == 12  # not written by the periodic save
    again = resume(tmp_path / "split", tiny)
    again.run()
    assert_same_params(straight, again)
    assert records(tmp_path / "split") == records(tmp_path / "straight")  # the train records too
    for name in ("checkpoint.npz", "best.npz"):
        assert_same_checkpoints(tmp_path / "straight" / name, tmp_path / "split" / name)


def test_checkpoint_minutes_saves_by_wall_time(tiny, tmp_path):
    for minutes, saved in ((1e-9, 3), (60.0, None)):  # every step; never within the test
        cfg = tiny_cfg(max_steps=20, eval_every=100, checkpoint_minutes=minutes)
        crashed = _CrashAt(cfg, tmp_path / str(minutes), ds=tiny, progress=False, out=quiet())
        crashed.at = 3
        with pytest.raises(_Crash):
            crashed.run()
        path = tmp_path / str(minutes) / "checkpoint.npz"
        assert (checkpoint.read_metadata(path)["step"] if path.exists() else None) == saved


def test_the_default_loses_at_most_ten_minutes_and_the_settings_resume():
    assert config.Config().checkpoint_minutes == 10.0
    for name in config.PRESETS:
        cfg = config.config_from_preset(name)
        assert cfg.checkpoint_minutes is not None and cfg.checkpoint_minutes <= 10.0, name
    assert {"checkpoint_every", "checkpoint_minutes"} <= config.RESUMABLE
    for bad, message in ((dict(checkpoint_every=0), r"checkpoint_every \(--checkpoint-every\)"),
                         (dict(checkpoint_minutes=0.0), r"checkpoint_minutes \(--checkpoint-minutes\) is in minutes")):
        with pytest.raises(ValueError, match=message):
            config.config_from_preset("demo", **bad)


# ----------------------------------------------------------------------------
# best.npz and checkpoint.npz agree
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("at", [10, 20])
def test_a_kill_between_best_and_checkpoint_loses_nothing(tiny, tmp_path, monkeypatch, at):
    """best.npz is written first, then copied to checkpoint.npz; a kill between the two
    (here: the copy raises) is completed on resume, at the final step too."""
    cfg = tiny_cfg(max_steps=20, eval_every=10, **ADAM)
    straight = trainer(cfg, tiny, tmp_path / "straight")
    straight.run()
    assert checkpoint.read_metadata(tmp_path / "straight" / "best.npz")["step"] == 20  # both validations improve
    real_copy = checkpoint.copy
    cut = trainer(cfg, tiny, tmp_path / "split")

    def killed_copy(src, dst):
        if cut.step == at:
            raise _Crash
        return real_copy(src, dst)

    monkeypatch.setattr(checkpoint, "copy", killed_copy)
    with pytest.raises(_Crash):
        cut.run()
    monkeypatch.setattr(checkpoint, "copy", real_copy)
    assert checkpoint.read_metadata(tmp_path / "split" / "best.npz")["step"] == at  # never behind
    latest = tmp_path / "split" / "checkpoint.npz"
    assert (checkpoint.read_metadata(latest)["step"] if latest.exists() else None) == (None if at == 10 else 10)
    again = resume(tmp_path / "split", tiny, said := [])
    assert again.step == at and any(m.startswith("completed the save a stop interrupted") for m in said), said
    again.run()
    assert_same_params(straight, again)
    for name in ("checkpoint.npz", "best.npz"):
        assert_same_checkpoints(tmp_path / "straight" / name, tmp_path / "split" / name)
    assert [r for r in records(tmp_path / "split") if r["split"] == "valid"] == \
           [r for r in records(tmp_path / "straight") if r["split"] == "valid"]


def _resave(path, *, meta_change=None, drop=()):
    """Save the checkpoint ``path`` again through checkpoint.save (checksums recomputed),
    its metadata changed by ``meta_change`` and the arrays starting with ``drop`` left out."""
    arrays, meta = checkpoint.load(path)
    if meta_change:
        meta_change(meta)
    checkpoint.save(path, {k: v for k, v in arrays.items() if not k.startswith(tuple(drop) or ("\0",))}, meta)


def test_a_stale_best_left_by_an_earlier_version_is_repaired_on_resume(tiny, tmp_path):
    """Earlier versions wrote checkpoint.npz first; a kill before best.npz left it behind
    (or missing) for good, a resume at the final step validating nothing."""
    cfg = tiny_cfg(max_steps=10, eval_every=10, **ADAM)
    work = tmp_path / "run"
    trainer(cfg, tiny, work).run()
    kept = tmp_path / "best-kept.npz"
    shutil.copy(work / "best.npz", kept)
    # Format 2 (best_step recorded): copied from the checkpoint.
    (work / "best.npz").unlink()
    resume(work, tiny, said := []).run()
    assert any(m.startswith(f"repaired {work / 'best.npz'}: it was missing") for m in said), said
    assert_same_checkpoints(kept, work / "best.npz")
    # As an earlier version wrote it (no best_step): validated again, found to be the best, copied.
    _resave(work / "checkpoint.npz", meta_change=lambda m: (m.pop("best_step"), m.pop("validated")))
    (work / "best.npz").unlink()
    resume(work, tiny, said := []).run()
    assert any(m.startswith(f"repaired {work / 'best.npz'}") for m in said), said
    repaired, original = checkpoint.load(work / "best.npz")[0], checkpoint.load(kept)[0]
    assert sorted(repaired) == sorted(original)
    for k in original:
        np.testing.assert_array_equal(repaired[k], original[k], err_msg=k)
    # The best is at an earlier step and its parameters are gone: said, nothing invented.
    _resave(work / "checkpoint.npz", meta_change=lambda m: m.update(best_step=5))
    (work / "best.npz").unlink()
    resume(work, tiny, said := [])
    assert any("whose parameters are no longer stored" in m for m in said), said
    assert not (work / "best.npz").exists()


# ----------------------------------------------------------------------------
# Temporary files of killed writes
# ----------------------------------------------------------------------------
needs_locks = pytest.mark.skipif(checkpoint._fcntl is None, reason="advisory locks (fcntl) tell live writes; "
                                 "without them only age does, over an hour")


@needs_locks
def test_only_abandoned_temporaries_of_ours_are_removed(tmp_path):
    old = time.time() - 2 * checkpoint.EMPTY_TEMPORARY_GRACE_S

    def make(name, data=b"", age=None):
        path = tmp_path / name
        path.write_bytes(data)
        if age is not None:
            os.utime(path, (age, age))
        return path

    abandoned = make(".tmp-0123456789abcdef.part", b"x" * 1000)
    empty_old = make(".tmp-00000000000000aa.part", age=old)
    empty_new = make(".tmp-00000000000000bb.part")  # perhaps a write that has not taken its lock yet
    foreign = [make(".tmp-notours.part", b"x", old), make("x.part", b"x", old),
               make(".tmp-0123456789abcdef.part.bak", b"x", old)]
    with checkpoint.atomic_open(tmp_path / "live.bin") as fh:  # a write in progress: locked, kept
        fh.write(b"y" * 1000)
        fh.flush()
        (live,) = set(temporaries(tmp_path)) - {p.name for p in (abandoned, empty_old, empty_new, *foreign)}
        removed = checkpoint.remove_stale_temporaries(tmp_path)
        assert sorted(removed) == sorted(str(p) for p in (abandoned, empty_old))
        assert (tmp_path / live).exists()
    assert (tmp_path / "live.bin").read_bytes() == b"y" * 1000
    assert sorted(temporaries(tmp_path)) == sorted([empty_new.name, ".tmp-notours.part", foreign[2].name])
    assert checkpoint.remove_stale_temporaries(tmp_path / "missing") == []


@needs_locks
def test_a_new_run_removes_abandoned_temporaries_too(tiny, tmp_path):
    (tmp_path / ".tmp-00112233445566ff.part").write_bytes(b"x" * 5000)  # left by a kill, before any checkpoint
    tr = trainer(tiny_cfg(max_steps=2, eval_every=2), tiny, tmp_path, said := [])
    assert said == [f"removed 1 temporary file of interrupted checkpoint writes in {tmp_path}"]
    assert temporaries(tmp_path) == []
    tr.run()
    assert temporaries(tmp_path) == []


CHILD = r"""
import os, shutil, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from test_train import TinyText, markov_text, tiny_cfg
from rhn_np import train as T

work, hook, at, cfg = sys.argv[2], sys.argv[3], int(sys.argv[4]), eval(sys.argv[5])
vocab = list("abcdefgh\n")
s = markov_text(6000, seed=1, vocab=vocab)
tr = T.Trainer(tiny_cfg(**cfg), work, ds=TinyText(s[:5000], s[5000:5600], s[5600:], vocab), progress=False,
               out=lambda *a: None)

def stall(fh):
    fh.write(b"\0" * 100_000)
    print("STALLED", flush=True)
    time.sleep(600)

if hook == "write":  # in the middle of serialising a checkpoint
    real_write = np.lib.format.write_array
    def write_array(fh, array, **kw):
        if tr.step == at and array.size > 8:
            stall(fh)
        return real_write(fh, array, **kw)
    np.lib.format.write_array = write_array
else:  # in the middle of copying best.npz to checkpoint.npz
    real_copy = shutil.copyfileobj
    def copyfileobj(src, dst, *args):
        if tr.step == at:
            stall(dst)
        return real_copy(src, dst, *args)
    shutil.copyfileobj = copyfileobj
tr.run()
"""


@needs_locks
@pytest.mark.parametrize("hook,at", [("write", 20), ("copy", 10)])
def test_sigkill_during_a_checkpoint_write_loses_nothing_and_leaves_no_temporary(tiny, tmp_path, hook, at):
    cfg = dict(max_steps=20, eval_every=10, **ADAM)
    straight = trainer(tiny_cfg(**cfg), tiny, tmp_path / "straight")
    straight.run()
    work = tmp_path / "run"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(TESTS), str(work), hook, str(at), repr(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "STALLED", (line, proc.stderr.read() if proc.poll() is not None else "")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    (left,) = temporaries(work)
    assert (work / left).stat().st_size > 0  # what the kill left: a partial write
    again = resume(work, tiny, said := [])
    assert any("removed 1 temporary file of interrupted checkpoint writes" in m for m in said), said
    assert temporaries(work) == []
    again.run()
    assert_same_params(straight, again)
    for name in ("checkpoint.npz", "best.npz"):
        assert_same_checkpoints(tmp_path / "straight" / name, work / name)


# ----------------------------------------------------------------------------
# Loading: members refused before they are read
# ----------------------------------------------------------------------------
def _members(path):
    with zipfile.ZipFile(path) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def _write_zip(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _npy(array, header_shape=None):
    buf = io.BytesIO()
    if header_shape is None:
        np.lib.format.write_array(buf, array)
    else:  # a header that claims another shape
        np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(array.dtype),
                                                   "fortran_order": False, "shape": header_shape})
        buf.write(array.tobytes())
    return buf.getvalue()


@pytest.fixture
def saved(tmp_path):
    return checkpoint.save(tmp_path / "ck.npz", {"w": np.arange(10.0), "b": np.ones(3, np.float32)}, {"step": 3})


def test_a_compressed_member_is_refused_unread(saved, tmp_path):
    bad = _write_zip(tmp_path / "deflated.npz", _members(saved), zipfile.ZIP_DEFLATED)
    for read in (checkpoint.load, checkpoint.read_metadata):
        with pytest.raises(checkpoint.CheckpointError, match=r"stored compressed \(deflate\).*refuses compressed "
                                                             r"members unread"):
            read(bad)


def _bomb(path, inflated_mib):
    """A checkpoint-shaped zip whose one array, deflated, inflates to ``inflated_mib`` MiB
    of zeros from about a thousandth of that (written by hand: 1 MiB of zeros deflates to
    the same kilobyte after every full flush). Its CRC is not computed: a loader that
    inflates the member finds out only at the end."""
    n = inflated_mib * (1 << 20) // 8
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (n,)})
    header = header.getvalue()
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = co.compress(header) + co.flush(zlib.Z_FULL_FLUSH)
    chunk = co.compress(bytes(1 << 20)) + co.flush(zlib.Z_FULL_FLUSH)
    assert co.compress(bytes(1 << 20)) + co.flush(zlib.Z_FULL_FLUSH) == chunk
    stream = head + chunk * inflated_mib + co.flush()
    meta = _npy(np.frombuffer(json.dumps({"format": checkpoint.FORMAT, "version": 1}).encode(), np.uint8))
    entries = [("__meta__.npy", meta, zipfile.ZIP_STORED, zlib.crc32(meta), len(meta)),
               ("w.npy", stream, zipfile.ZIP_DEFLATED, 0, len(header) + n * 8)]
    out, central = bytearray(), bytearray()
    for name, data, method, crc, size in entries:
        raw = name.encode()
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(data), size,
                               len(raw), 0, 0, 0, 0, 0, len(out)) + raw
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(data), size, len(raw), 0)
        out += raw + data
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(out), 0)
    path.write_bytes(bytes(out + central + end))
    return path


def test_a_zip_bomb_is_refused_before_it_inflates(tmp_path):
    bomb = _bomb(tmp_path / "bomb.npz", 2000)
    assert bomb.stat().st_size < 2.5e6  # about 2 MB inflating to 2 GiB
    with zipfile.ZipFile(bomb) as zf:
        assert zf.getinfo("w.npy").file_size > 2e9
    tracemalloc.start()
    try:
        with pytest.raises(checkpoint.CheckpointError, match=r"'w' is stored compressed \(deflate\)"):
            checkpoint.load(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak:,} bytes"


def test_a_member_larger_or_smaller_than_its_header_says_is_refused_unread(saved, tmp_path):
    members = _members(saved)
    cases = {
        "claims more": _npy(np.arange(10.0), header_shape=(10 ** 9,)),  # 8 GB announced, 80 bytes there
        "holds more": _npy(np.arange(11.0), header_shape=(10,)),  # 8 bytes more than the header says
        "holds less": _npy(np.arange(9.0), header_shape=(10,)),
    }
    for case, data in cases.items():
        bad = _write_zip(tmp_path / f"{case}.npz", {**members, "w.npy": data})
        with pytest.raises(checkpoint.CheckpointError, match=r"the array 'w' should hold [\d,]+ bytes by its \.npy "
                                                             r"header \(shape .*\(refused unread\)"):
            checkpoint.load(bad)
    # The zip directory claims more than the file holds (a forged size): refused from the directory alone.
    raw = bytearray(_write_zip(tmp_path / "forged.npz", members).read_bytes())
    at = raw.find(b"PK\x01\x02")  # the zip directory's first entry: sizes at bytes 20-27
    struct.pack_into("<2L", raw, at + 20, 3_000_000_000, 3_000_000_000)
    (tmp_path / "forged.npz").write_bytes(bytes(raw))
    with pytest.raises(checkpoint.CheckpointError, match=r"its members claim [\d,]+ bytes, more than the file's"):
        checkpoint.load(tmp_path / "forged.npz")
    tracemalloc.start()
    try:
        with pytest.raises(checkpoint.CheckpointError):
            checkpoint.load(tmp_path / "claims more.npz")
        assert tracemalloc.get_traced_memory()[1] < 8 << 20
    finally:
        tracemalloc.stop()


def test_other_members_and_duplicates_are_refused(saved, tmp_path):
    members = _members(saved)
    with pytest.raises(checkpoint.CheckpointError, match=r"holds the member 'notes.txt', which is not an array"):
        checkpoint.load(_write_zip(tmp_path / "extra.npz", {**members, "notes.txt": b"hi"}))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile: "Duplicate name"
        dup = _write_zip(tmp_path / "dup.npz", {**members})
        with zipfile.ZipFile(dup, "a") as zf:
            zf.writestr("w.npy", members["w.npy"])
    with pytest.raises(checkpoint.CheckpointError, match=r"holds the array 'w' twice"):
        checkpoint.load(dup)


# ----------------------------------------------------------------------------
# Loading: the metadata is checked too
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adam_run(tiny, tmp_path_factory):
    work = tmp_path_factory.mktemp("adam-run")
    trainer(tiny_cfg(max_steps=12, eval_every=6, **ADAM), tiny, work).run()
    return work


@pytest.fixture
def run_copy(adam_run, tmp_path):
    shutil.copytree(adam_run, tmp_path / "run")
    return tmp_path / "run"


def _edit_meta(path, change):
    """Change the metadata inside the file as an editor would: its checksums stay as they were."""
    members = _members(path)
    meta = json.loads(np.lib.format.read_array(io.BytesIO(members["__meta__.npy"])).tobytes())
    change(meta)
    members["__meta__.npy"] = _npy(np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8))
    _write_zip(path, members)


def _bump_rng(meta):
    meta["rng"]["state"]["state"] += 1


EDITS = {
    "step": lambda m: m.update(step=m["step"] + 1),
    "config": lambda m: m["config"].update(lr=0.02),
    "rng": _bump_rng,
    "optimizer": lambda m: m["optimizer"].update(t=m["optimizer"]["t"] - 1),
    "vocabulary": lambda m: m["dataset"]["vocab"].reverse(),
    "best_nll": lambda m: m.update(best_nll=0.0),
}


@pytest.mark.parametrize("what", sorted(EDITS))
def test_edited_metadata_is_refused(run_copy, tiny, what):
    path = run_copy / "checkpoint.npz"
    _edit_meta(path, EDITS[what])
    message = r"was altered: its metadata \(step, optimiser state, random-generator state, configuration"
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.load(path)
    with pytest.raises(checkpoint.CheckpointError, match=message):
        resume(run_copy, tiny)


def test_lost_adam_moments_are_refused(run_copy, tiny):
    path = run_copy / "checkpoint.npz"
    original = path.read_bytes()
    # Cut out of the file: the arrays' checksum tells.
    _write_zip(path, {k: v for k, v in _members(path).items() if not k.startswith("opt.m.")})
    with pytest.raises(checkpoint.CheckpointError, match="corrupted: its arrays do not match the checksum"):
        resume(run_copy, tiny)
    # Saved again without them (checksums recomputed): the resume tells.
    path.write_bytes(original)
    _resave(path, drop=["opt.v."])
    with pytest.raises(checkpoint.CheckpointError, match=r"the optimiser \(Adam, 12 steps taken\) has no 'v' moment of "
                                                         r".*would not continue the run exactly"):
        resume(run_copy, tiny)


@pytest.mark.parametrize("key", ["config", "step", "epoch", "optimizer", "rng"])
def test_missing_metadata_keys_give_a_clear_error(run_copy, tiny, key):
    path = run_copy / "checkpoint.npz"
    _resave(path, meta_change=lambda m: m.pop(key))
    message = rf"its run metadata lacks a valid '{key}' \(.*; it has none\), so it cannot be resumed: the file is damaged"
    with pytest.raises(checkpoint.CheckpointError, match=message):
        resume(run_copy, tiny)
    if key in ("config", "step", "epoch"):
        with pytest.raises(checkpoint.CheckpointError, match=rf"lacks a valid '{key}'.*cannot be used as a run"):
            T.load_run(run_copy, "latest")
    _resave(path, meta_change=lambda m: m.update({key: "12"}))
    with pytest.raises(checkpoint.CheckpointError, match=rf"lacks a valid '{key}' \(.*; it has str '12'\)"):
        resume(run_copy, tiny)


def test_damaged_rng_or_optimizer_state_is_a_checkpoint_error(run_copy, tiny):
    path = run_copy / "checkpoint.npz"
    _resave(path, meta_change=lambda m: m["rng"].update(bit_generator="NoSuchGenerator"))
    with pytest.raises(checkpoint.CheckpointError, match="optimiser or random-generator state is damaged"):
        resume(run_copy, tiny)


def test_new_checkpoints_are_format_2_and_round_trip_their_metadata(saved, tmp_path):
    arrays, meta = checkpoint.load(saved)
    assert meta["version"] == checkpoint.VERSION == 2 and len(meta["meta_checksum"]) == 64
    checkpoint.save(tmp_path / "again.npz", arrays, meta)  # a loaded checkpoint's metadata saves as it is
    again = checkpoint.read_metadata(tmp_path / "again.npz")
    assert again == meta
    odd = checkpoint.save(tmp_path / "odd.npz", {"a": np.ones(1)}, {"t": (1, 2), "x": 1e-7, "nan": float("nan"),
                                                                     "text": "ü"})
    assert checkpoint.read_metadata(odd)["t"] == [1, 2]


@pytest.mark.parametrize("name", ["old-run-tokens", "old-run-rolls"])
def test_format_1_checkpoints_still_load_and_their_arrays_are_checked(name, tmp_path):
    for file in ("checkpoint.npz", "best.npz"):
        path = FIXTURES / name / file
        meta = checkpoint.read_metadata(path)
        assert meta["version"] == 1 and "meta_checksum" not in meta  # what they have: the arrays' checksum
        arrays, _ = checkpoint.load(path)
        assert any(k.startswith("param.") for k in arrays)
    damaged = tmp_path / "damaged.npz"
    members = _members(FIXTURES / name / "checkpoint.npz")
    key = next(k for k in members if k.startswith("param."))
    array = np.lib.format.read_array(io.BytesIO(members[key]))
    members[key] = _npy(array + 1)
    _write_zip(damaged, members)
    with pytest.raises(checkpoint.CheckpointError, match="corrupted: its arrays do not match"):
        checkpoint.load(damaged)


def test_an_unknown_format_version_is_refused(saved):
    _edit_meta(saved, lambda m: m.update(version=3))
    with pytest.raises(checkpoint.CheckpointError, match=r"format version 3, this rhn_np reads versions 1, 2"):
        checkpoint.load(saved)


def test_a_stop_swallowed_where_it_landed_is_still_acted_on(monkeypatch, capsys):
    """A signal that lands in a ``__del__`` is printed by Python as "Exception ignored" and
    not raised on; the command still stops with the signal's status (CI caught a Ctrl+C so
    lost at the start of training, which then ran to the end with status 0)."""
    from rhn_np import cli, interrupts

    class LandsInDel:
        def __del__(self):
            interrupts._raise_interrupted(signal.SIGINT, None)  # what the handler does when the signal comes here

    def command(args):
        LandsInDel()  # collected at once: the Interrupted is swallowed
        return 0

    monkeypatch.setattr(cli, "_info", command)
    assert cli.main(["info"]) == 130
    assert "stopped by Ctrl+C (SIGINT)" in capsys.readouterr().err
    assert interrupts.take_pending() is None
