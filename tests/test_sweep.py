"""Sweeps (rhn_np.sweep): trials, the sweep folder, Dask execution, kills, the plot.

The Dask tests start a real ``LocalCluster`` of two worker processes and train tiny
trials (two arms x two trials x one epoch) on a slice of JSB Chorales: the real data
when the shared data folder is there (``RHN_DATA_DIR``), else chorales drawn at random
in the same format (the tests are about the sweep, not the music).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from rhn_np import cli, sweep

SPEED = {"OPENBLAS_NUM_THREADS": "1", "RHN_HYPOTHESIS_PROFILE": "dev"}


# ----------------------------------------------------------------------------
# A slice of JSB, and tiny specs
# ----------------------------------------------------------------------------
def _chorales(rng, n, frames):
    return [[sorted(set(int(v) for v in rng.integers(36, 82, size=rng.integers(1, 5)))) for _ in range(frames)]
            for _ in range(n)]


@pytest.fixture(scope="module")
def jsb_dir(tmp_path_factory):
    """A folder with jsb_chorales/jsb-chorales-quarter.json: 12 / 4 / 4 chorales of 24 frames."""
    root = tmp_path_factory.mktemp("jsb")
    sizes = {"train": 12, "valid": 4, "test": 4}
    real = os.environ.get("RHN_DATA_DIR")
    obj = None
    if real and os.path.isdir(os.path.join(real, "jsb_chorales")):
        from rhn_np import data

        ds = data.load("jsb", root=real)
        obj = {split: [[[int(k) + data.LOWEST_NOTE for k in np.flatnonzero(frame)] for frame in roll[:24]]
                       for roll in getattr(ds, split)[:n]] for split, n in sizes.items()}
    else:
        rng = np.random.default_rng(0)
        obj = {split: _chorales(rng, n, 24) for split, n in sizes.items()}
    folder = root / "jsb_chorales"
    folder.mkdir()
    (folder / "jsb-chorales-quarter.json").write_text(json.dumps(obj))
    return str(root)


def tiny(name="tiny", *, trials=2, epochs=1, cells=("rhn", "dt_rnn"), **space):
    """Two arms (cells) at depth 2, a small budget, a random lr and init scale."""
    return sweep.Spec(
        name=name, preset="jsb", arms={"cell": list(cells), "depth": [2]},
        space={"hidden": 12, "batch_size": 4, "eval_batch_size": 4, "optimizer": "sgd", "lr_schedule": "epoch",
               "lr": {"log_uniform": [0.01, 0.1]}, "init_scale": {"uniform": [0.05, 0.2]},
               "transform_bias": {"uniform": [-3.0, -1.0], "when": {"cell": ["rhn"]}}, **space},
        trials=trials, budget={"epochs": epochs, "patience": 3}, seed=1).check()


def _ids(records):
    return [r["trial"] for r in records]


# ----------------------------------------------------------------------------
# Specs and trials
# ----------------------------------------------------------------------------
def test_trials_are_deterministic_and_nest():
    a = sweep.trials(sweep.builtin("fig4", trials=5))
    b = sweep.trials(sweep.builtin("fig4", trials=5))
    assert a == b
    assert len(a) == 3 * 4 * 5 and len(set(_ids(a))) == len(a)
    fewer = sweep.trials(sweep.builtin("fig4", trials=3))
    assert all(t in a for t in fewer)  # more trials per arm add trials, they change none
    other = sweep.trials(sweep.builtin("fig4", trials=5, seed=1))
    assert _ids(other) == _ids(a) and [t["settings"] for t in other] != [t["settings"] for t in a]
    # a subset of the arms draws the same trials for those arms
    sub = sweep.trials(sweep.builtin("fig4", trials=5, cells=["dt_rnn"], depths=[4]))
    assert sub == [t for t in a if t["arm"] == "dt_rnn-depth4"]


def test_fig4_trials_follow_the_spec():
    spec = sweep.builtin("fig4")
    ts = sweep.trials(spec)
    for t in ts:
        s = t["settings"]
        assert 0.001 <= s["lr"] <= 0.3 and 0.0 <= s["momentum"] <= 0.95 and 1.0 <= s["clip"] <= 100.0
        assert ("transform_bias" in s) == (s["cell"] == "rhn")
        assert s["params"] == {1: 25_000, 2: 40_000, 4: 70_000, 6: 100_000}[s["depth"]]
        assert s["optimizer"] == "sgd"
    lrs = np.log([t["settings"]["lr"] for t in ts])
    assert np.log(0.001) < lrs.min() < np.log(0.003) and np.log(0.1) < lrs.max() < np.log(0.3)  # log-uniform spread
    cfg = sweep.trial_config(ts[0])
    assert cfg.patience == 5 and cfg.epochs == 20 and cfg.max_steps is None and cfg.momentum == ts[0]["settings"]["momentum"]


def test_parameter_counts_match_across_cells(jsb_dir):
    from rhn_np import data, tasks

    ds = data.load("jsb", root=jsb_dir)
    for depth in (1, 2, 4, 6):
        spec = sweep.builtin("fig4", trials=1, depths=[depth])
        counts = [tasks.count_params(tasks.resolve_width(sweep.trial_config(t), ds), ds) for t in sweep.trials(spec)]
        assert max(counts) / min(counts) < 1.03, counts  # within 3 % (integer widths)
    assert sweep.builtin("ptb-depth").trials == 1 and len(sweep.trials(sweep.builtin("ptb-depth"))) == 20


def test_toml_round_trip(tmp_path):
    for name in sweep.SWEEPS:
        spec = sweep.builtin(name)
        path = tmp_path / f"{name}.toml"
        path.write_text(sweep.spec_to_toml(spec))
        back = sweep.load_spec(path)
        assert back.identity() == spec.identity() and back.trials == spec.trials
        assert sweep.trials(back) == sweep.trials(spec)


@pytest.mark.parametrize("change, fragment", [
    (dict(arms={}), "arms must map"),
    (dict(arms={"cel": ["rhn"]}), "arms.cel is not a config field"),
    (dict(arms={"cell": ["rhn", "rhn"]}), "distinct values"),
    (dict(arms={"cell": ["lstm"]}), "cell (--cell) must be one of"),
    (dict(space={"lr": {"log_uniform": [0.0, 1.0]}}), "needs low > 0"),
    (dict(space={"lr": {"uniform": [1.0, 0.1]}}), "low <= high"),
    (dict(space={"lr": {"choice": []}}), "non-empty list"),
    (dict(space={"lr": {"uniform": [0.1, 1.0], "log_uniform": [0.1, 1.0]}}), "exactly one of"),
    (dict(space={"clip": {"uniform": [1, 2], "when": {"dataset": ["jsb"]}}}), "when must map arm fields"),
    (dict(space={"epochs": 3}), "set by the sweep"),
    (dict(space={"cell": "rhn"}), "in both arms and space"),
    (dict(budget={}), "needs epochs, steps or minutes"),
    (dict(budget={"epochs": 0}), "budget.epochs must be a positive integer"),
    (dict(budget={"epochs": 2, "hours": 1}), "unknown keys"),
    (dict(trials=0), "trials (per arm) must be an integer >= 1"),
    (dict(preset="nope"), "unknown preset"),
    (dict(linked={"params": {"on": "depth", "values": {"1": 100}}}), "no value for depth = 2"),
    (dict(space={"lr": -1.0}), "lr"),
])
def test_bad_specs_are_refused(change, fragment):
    d = tiny().to_dict()
    d.update(change)
    with pytest.raises(sweep.SweepError, match=None) as err:
        sweep.Spec.from_dict(d).check()
    assert fragment in str(err.value), str(err.value)


def test_builtin_options_are_checked():
    with pytest.raises(sweep.SweepError, match="unknown sweep"):
        sweep.builtin("fig5")
    with pytest.raises(sweep.SweepError, match="sizes its models for depth 1, 2, 4, 6 only"):
        sweep.builtin("fig4", depths=[3])
    with pytest.raises(sweep.SweepError, match="has no cell arms"):
        sweep.builtin("ptb-depth", cells=["rhn"])


# ----------------------------------------------------------------------------
# Running, without Dask
# ----------------------------------------------------------------------------
def test_workers_0_runs_every_trial_once_and_skips_finished(tmp_path, jsb_dir):
    spec = tiny()
    out = tmp_path / "sw"
    recs = sweep.run_sweep(spec, out, workers=0, data_dir=jsb_dir, progress=False, out=lambda m: None)
    assert sorted(_ids(recs)) == sorted(_ids(sweep.trials(spec)))
    for r in recs:
        assert r["status"] == "ok", r
        assert r["valid_nll"] > 0 and r["test_nll"] > 0 and r["params"] > 0 and r["seconds"] > 0
        assert r["cell"] in ("rhn", "dt_rnn") and r["depth"] == 2 and "lr" in r and "seed" in r
        folder = out / "trials" / r["trial"]
        assert (folder / "best.npz").exists() and not (folder / "checkpoint.npz").exists()
        assert (folder / "record.json").exists()
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == len(recs)
    stamp = {r["trial"]: os.stat(out / "trials" / r["trial"] / "metrics.jsonl").st_mtime_ns for r in recs}
    again = sweep.run_sweep(spec, out, workers=0, data_dir=jsb_dir, progress=False, out=lambda m: None)
    assert sorted(_ids(again)) == sorted(_ids(recs))
    assert (out / "results.jsonl").read_text().splitlines() == lines  # nothing appended, nothing rerun
    assert stamp == {r: os.stat(out / "trials" / r / "metrics.jsonl").st_mtime_ns for r in stamp}
    # more trials per arm: the same sweep, extended by the new trials only
    more = sweep.run_sweep(tiny(trials=3), out, workers=0, data_dir=jsb_dir, progress=False, out=lambda m: None)
    assert len(more) == 6 and len((out / "results.jsonl").read_text().splitlines()) == 6


def test_a_changed_spec_is_refused(tmp_path, jsb_dir):
    out = tmp_path / "sw"
    sweep.run_sweep(tiny(trials=1, cells=("dt_rnn",)), out, workers=0, data_dir=jsb_dir, progress=False,
                    out=lambda m: None)
    changed = tiny(trials=1, cells=("dt_rnn",), clip=3.0)
    with pytest.raises(sweep.SweepError, match="holds another sweep .* differs from this one in space"):
        sweep.run_sweep(changed, out, workers=0, data_dir=jsb_dir, progress=False)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "results.jsonl").write_text("")
    with pytest.raises(sweep.SweepError, match="no sweep.json"):
        sweep.run_sweep(tiny(), tmp_path / "plain", workers=0, progress=False)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_diverged_and_failed_trials_are_recorded(tmp_path, jsb_dir):
    diverging = tiny("div", trials=1, cells=("dt_rnn",), lr=1e38, clip=1e38, init_scale=1.0)
    recs = sweep.run_sweep(diverging, tmp_path / "div", workers=0, data_dir=jsb_dir, progress=False,
                           out=lambda m: None)
    (r,) = recs
    assert r["status"] == "diverged" and "non-finite" in r["error"] and r["test_nll"] is None
    failing = tiny("fail", trials=1, cells=("dt_rnn",), data_dir=str(tmp_path / "no-such-folder"))
    (f,) = sweep.run_sweep(failing, tmp_path / "fail", workers=0, progress=False, out=lambda m: None)
    assert f["status"] == "failed" and "no-such-folder" in f["error"] and f["valid_nll"] is None
    rows = sweep.summary_table(recs + [f])
    assert [(x["diverged"], x["failed"], x["ok"]) for x in rows] == [(1, 1, 0)]


def test_a_trial_cut_short_resumes_from_its_checkpoint(tmp_path, jsb_dir):
    """A trial whose run was interrupted (a kill) continues from its checkpoint and ends
    where an uninterrupted trial ends."""
    spec = tiny("cut", trials=1, cells=("dt_rnn",), epochs=3)
    (t,) = sweep.trials(spec)
    whole = sweep.run_trial(t, tmp_path / "whole", data_dir=jsb_dir)
    from rhn_np import train

    folder = tmp_path / "cut" / "trials" / t["trial"]
    cfg = sweep.trial_config(t, data_dir=jsb_dir)
    cfg.epochs = 1  # the first epoch only, then "killed": a checkpoint and no record
    trainer = train.Trainer(cfg, folder, progress=False, out=lambda m: None)
    trainer.run()
    assert (folder / "checkpoint.npz").exists() and not (folder / "record.json").exists()
    resumed = sweep.run_trial(t, tmp_path / "cut", data_dir=jsb_dir)
    assert resumed["valid_nll"] == pytest.approx(whole["valid_nll"], rel=1e-6)
    assert resumed["steps"] == whole["steps"]


def test_a_killed_driver_loses_nothing(tmp_path, jsb_dir):
    """SIGKILL the driver (workers 0) after some trials finished; the rerun records each
    trial once and reruns none that had finished, including one whose record was
    written to its folder but not yet to results.jsonl."""
    out = tmp_path / "sw"
    env = {**os.environ, **SPEED}
    spec_file = tmp_path / "x.toml"
    spec_file.write_text(sweep.spec_to_toml(tiny("x", trials=3, epochs=2)))
    cmd = [sys.executable, "-m", "rhn_np.cli", "sweep", "run", str(spec_file), "--work-dir", str(out), "--workers",
           "0", "--data-dir", jsb_dir, "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    results = out / "results.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if results.exists() and len(results.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = results.read_text().splitlines()
    assert 2 <= len(before) < 6, "the driver finished before it could be killed"
    finished = [json.loads(x)["trial"] for x in before]
    # The window between a trial's record.json and its line in results.jsonl, made wide:
    # drop the last line, as if the kill had come just before it was appended.
    results.write_text("\n".join(before[:-1]) + "\n")
    stamps = {t: os.stat(out / "trials" / t / "record.json").st_mtime_ns for t in finished}
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    after = [json.loads(x) for x in results.read_text().splitlines()]
    assert sorted(_ids(after)) == sorted(_ids(sweep.trials(tiny("x", trials=3, epochs=2))))  # complete, unique
    assert all(r["status"] == "ok" for r in after)
    assert stamps == {t: os.stat(out / "trials" / t / "record.json").st_mtime_ns for t in finished}  # not rerun


def test_plot_from_a_results_file(tmp_path):
    import matplotlib.image as mpimg

    spec = sweep.builtin("fig4", trials=4)
    rng = np.random.default_rng(0)
    recs = []
    for t in sweep.trials(spec):
        s = t["settings"]
        status = "diverged" if rng.uniform() < 0.15 else "ok"
        v = None if status != "ok" else float(8.5 + 0.2 * s["depth"] * (s["cell"] != "rhn") + rng.normal(0, 0.3))
        recs.append({"trial": t["trial"], "arm": t["arm"], **s, "status": status, "valid_nll": v,
                     "test_nll": v, "params": s["params"]})
    recs[0]["valid_nll"] = 40.0  # far worse than the rest: drawn on the ceiling
    folder = tmp_path / "sw"
    sweep.open_sweep(spec, folder)
    for r in recs:
        sweep._append(folder, r)
    path = sweep.plot_swarm(folder)
    img = mpimg.imread(path)
    assert img.shape[0] > 400 and img.shape[1] > 700 and img[..., :3].std() > 0.05
    assert sweep.ceiling_of(recs) < 40.0
    rows = sweep.summary_table(recs, spec)
    assert [r["arm"] for r in rows][:2] == ["rhn-depth1", "rhn-depth2"] and len(rows) == 12
    code = cli.main(["sweep", "plot", str(folder), "--out", str(tmp_path / "fig.png")])
    assert code == 0 and (tmp_path / "fig.png").stat().st_size > 10_000


def test_results_file_cut_short_is_tolerated(tmp_path):
    spec = tiny()
    sweep.open_sweep(spec, tmp_path)
    (tmp_path / "results.jsonl").write_text('{"trial": "a", "arm": "x", "status": "ok"}\n{"trial": "b", "ar')
    assert _ids(sweep.read_results(tmp_path)) == ["a"]
    sweep._append(tmp_path, {"trial": "c", "arm": "x", "status": "ok"})
    assert _ids(sweep.read_results(tmp_path)) == ["a", "c"]  # the fragment dropped, every line whole
    assert (tmp_path / "results.jsonl").read_text().count("\n") == 2


def test_workers_0_without_dask_installed(tmp_path, jsb_dir):
    code = f"""
import sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('dask', 'distributed'):
            raise ImportError('hidden: ' + name)
sys.meta_path.insert(0, Hide())
from rhn_np import cli
spec = {str(tmp_path / 'x.toml')!r}
rc = cli.main(['sweep', 'run', spec, '--work-dir', {str(tmp_path / 'sw')!r}, '--workers', '0', '--data-dir', {jsb_dir!r}, '--quiet'])
assert 'distributed' not in sys.modules and 'dask' not in sys.modules
rc2 = cli.main(['sweep', 'run', spec, '--work-dir', {str(tmp_path / 'sw2')!r}, '--workers', '2', '--quiet'])
sys.exit(rc * 10 + rc2)
"""
    (tmp_path / "x.toml").write_text(sweep.spec_to_toml(tiny("x", trials=1, cells=("dt_rnn",))))
    res = subprocess.run([sys.executable, "-c", code], env={**os.environ, **SPEED}, capture_output=True, text=True)
    assert res.returncode == 1, res.stderr  # 0 for --workers 0, 1 (an error) for --workers 2
    assert "needs the sweep extra: pip install 'rhn-np[sweep]'" in res.stderr
    assert len((tmp_path / "sw" / "results.jsonl").read_text().splitlines()) == 1


# ----------------------------------------------------------------------------
# On Dask: a real LocalCluster of two processes
# ----------------------------------------------------------------------------
distributed = pytest.importorskip("distributed", reason="the sweep extra (Dask distributed) is not installed")


def test_local_cluster_of_two_processes(tmp_path, jsb_dir, monkeypatch):
    for k, v in SPEED.items():
        monkeypatch.setenv(k, v)
    spec = tiny()
    recs = sweep.run_sweep(spec, tmp_path / "sw", workers=2, data_dir=jsb_dir, progress=False, out=lambda m: None)
    assert sorted(_ids(recs)) == sorted(_ids(sweep.trials(spec)))
    assert len(set(_ids(recs))) == len(recs) and all(r["status"] == "ok" for r in recs)
    lines = (tmp_path / "sw" / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["trial"] for x in lines) == sorted(_ids(recs))
    # the same trials as without Dask: a trial's result does not depend on where it ran
    alone = sweep.run_trial(sweep.trials(spec)[0], tmp_path / "alone", data_dir=jsb_dir)
    first = next(r for r in recs if r["trial"] == alone["trial"])
    assert first["valid_nll"] == pytest.approx(alone["valid_nll"], rel=1e-5)


def test_a_worker_killed_mid_trial(tmp_path, jsb_dir, monkeypatch):
    """A Dask worker SIGKILLed while it trains a trial: the nanny restarts it, Dask
    reschedules the trial, which resumes from its checkpoint and finishes."""
    for k, v in SPEED.items():
        monkeypatch.setenv(k, v)
    from dask.distributed import Client, LocalCluster

    spec = tiny("kill", trials=1, cells=("dt_rnn",), epochs=30, hidden=24)  # long enough to be caught mid-way
    (t,) = sweep.trials(spec)
    folder = tmp_path / "sw" / "trials" / t["trial"]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        box = {}
        runner = threading.Thread(target=lambda: box.setdefault("recs", sweep.run_sweep(
            spec, tmp_path / "sw", scheduler=cluster.scheduler_address, data_dir=jsb_dir, progress=False,
            out=lambda m: None)))
        runner.start()
        deadline = time.time() + 240
        while time.time() < deadline and not (folder / "checkpoint.npz").exists():
            time.sleep(0.05)
        assert (folder / "checkpoint.npz").exists(), "the trial never saved a checkpoint"
        processing = client.processing()
        busy = [w for w, keys in processing.items() if keys]
        assert len(busy) == 1
        pid = client.run(os.getpid, workers=busy)[busy[0]]
        os.kill(pid, signal.SIGKILL)
        runner.join(300)
        assert not runner.is_alive()
    (rec,) = box["recs"]
    assert rec["status"] == "ok" and rec["steps"] > 0, rec
    metrics = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in metrics if m["split"] == "valid"]
    assert steps == sorted(set(steps))  # resumed where it was, not restarted in the same folder
    whole = sweep.run_trial(t, tmp_path / "whole", data_dir=jsb_dir)
    assert rec["valid_nll"] == pytest.approx(whole["valid_nll"], rel=1e-5)


def test_cli_sweep_commands(tmp_path, jsb_dir, capsys, monkeypatch):
    for k, v in SPEED.items():
        monkeypatch.setenv(k, v)
    assert cli.main(["sweep", "list"]) == 0
    listed = capsys.readouterr().out
    assert "fig4: 240 trials" in listed and "ptb-depth:" in listed and "ptb-depth-cpu:" in listed
    assert cli.main(["sweep", "show", "fig4", "--trials", "3"]) == 0
    shown = capsys.readouterr().out
    assert "trials = 3" in shown and "[space]" in shown
    spec_file = tmp_path / "t.toml"
    spec_file.write_text(sweep.spec_to_toml(tiny("t", trials=1)))
    out = tmp_path / "sw"
    assert cli.main(["sweep", "run", str(spec_file), "--work-dir", str(out), "--workers", "0", "--data-dir", jsb_dir,
                     "--quiet"]) == 0
    ran = capsys.readouterr().out
    assert "rhn-depth2" in ran and "dt_rnn-depth2" in ran and "median valid" in ran
    assert cli.main(["sweep", "status", str(out)]) == 0
    assert "2 of 2 trials finished" in capsys.readouterr().out
    assert cli.main(["sweep", "run", str(spec_file), "--trials", "4", "--work-dir", str(out)]) == 1
    assert "with a spec file, edit the file" in capsys.readouterr().err
    assert cli.main(["sweep", "status", str(tmp_path / "none")]) == 1
    assert "no sweep in" in capsys.readouterr().err
    assert cli.main(["sweep", "run", "fig5", "--work-dir", str(out)]) == 1
    assert "unknown sweep 'fig5'" in capsys.readouterr().err



def test_output_into_a_closed_pipe_is_not_an_error(capsys, monkeypatch, tmp_path):
    """`rhn-np sweep status DIR | head -1`: the reader leaves early; no message, the shell's SIGPIPE status."""
    class Gone:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

        def fileno(self):
            return os.open(os.devnull, os.O_WRONLY)

    monkeypatch.setattr(sys, "stdout", Gone())
    assert cli.main(["sweep", "list"]) == 141
    assert capsys.readouterr().err == ""
