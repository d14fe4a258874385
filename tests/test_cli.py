"""The ``rhn-np`` command line: train, evaluate, sample, as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from rhn_np import backend, checkpoint, cli, data, tasks
from rhn_np import train as T

DATA_DIR = os.environ.get("RHN_DATA_DIR")
needs_shared_data = pytest.mark.skipif(
    not DATA_DIR or not os.path.isdir(os.path.join(DATA_DIR or "", "ptb_char")),
    reason="RHN_DATA_DIR (the folder with ptb_char/) is not set: the PTB character-level checks need the real files",
)


@pytest.fixture(scope="module", autouse=True)
def _one_data_home(data_home):
    """Every test here uses one download cache (conftest's ``data_home``)."""
    return data_home


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A short run of the default (demo) configuration."""
    work = tmp_path_factory.mktemp("runs") / "demo"
    rc = cli.main(["train", "--max-steps", "30", "--eval-every", "15", "--sample-length", "0", "--quiet",
                   "--work-dir", str(work)])
    assert rc == 0
    return work


def test_train_defaults_to_the_demo_on_pydoc(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["train", "--max-steps", "12", "--eval-every", "6", "--sample-length", "60", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "training on pydoc (char level" in out and "preset demo" in out
    assert "validation:" in out and "bits per character" in out
    assert "sample (best checkpoint" in out
    sample = out.split("sample (best checkpoint, temperature 0.8):\n", 1)[1].split("\nnext:")[0]
    assert len(sample.strip()) > 20
    work = tmp_path / "rhn-runs" / "demo"
    assert (work / "checkpoint.npz").exists() and (work / "learning_curve.png").exists()
    valid = [r for r in T.read_metrics(work) if r["split"] == "valid"]
    assert [r["step"] for r in valid] == [6, 12]
    assert f"{valid[-1]['bpc']:.3f} bits per character" in out
    # A second plain `rhn-np train` does not clobber the first run; --resume picks the newest.
    assert cli._default_work_dir("demo") == os.path.join("rhn-runs", "demo-2")
    assert cli._latest_work_dir("demo") == os.path.join("rhn-runs", "demo")
    assert cli.main(["train", "--resume", "--max-steps", "14", "--quiet", "--sample-length", "0"]) == 0
    assert "resuming rhn-runs/demo at step 12" in capsys.readouterr().out
    assert [r["step"] for r in T.read_metrics(work) if r["split"] == "valid"][-1] == 14


def test_evaluate_and_sample(demo_run, capsys):
    rc = cli.main(["evaluate", "--work-dir", str(demo_run), "--split", "test", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "pydoc test" in out and "bits per character" in out
    rec = T.read_metrics(demo_run)[-1]
    assert rec["split"] == "test" and rec["batch_size"] == 32 and rec["bpc"] > 0
    params, cfg, _ = T.load_run(demo_run)
    from rhn_np import data

    ds = data.load("pydoc")
    # with the BLAS threads the command used (float32 products differ in the last bits between thread counts)
    with backend.limit_blas_threads(tasks.threads_for(cfg, 32)):
        direct = T.evaluate(params, ds.test, batch_size=32, bptt=cfg.bptt, level="char")
    assert rec["nll"] == pytest.approx(direct["nll"], rel=1e-12)

    rc = cli.main(["evaluate", "--work-dir", str(demo_run), "--split", "valid", "--batch-1", "--quiet"])
    assert rc == 0 and T.read_metrics(demo_run)[-1]["batch_size"] == 1
    capsys.readouterr()

    rc = cli.main(["sample", "--work-dir", str(demo_run), "--length", "80", "--prime", "Return the ", "--seed", "3"])
    text = capsys.readouterr().out
    assert rc == 0 and text.startswith("Return the ") and len(text.rstrip("\n")) >= 80
    cli.main(["sample", "--work-dir", str(demo_run), "--length", "80", "--prime", "Return the ", "--seed", "3"])
    assert capsys.readouterr().out == text  # same seed, same text


def test_print_config_resolves_preset_and_options_without_training(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--preset", "ptb_sota", "--depth", "4", "--epochs", "3", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    n_params = cfg.pop("n_params")  # the size needs PTB's vocabulary: None where its files are not here
    assert cfg == {**T.config_from_preset("ptb_sota").to_dict(), "depth": 4, "epochs": 3, "max_steps": None}
    assert n_params is None or n_params == T.count_params(T.Config(**cfg), data.load("ptb", download=False))
    assert cfg["cuda_graphs"] is True
    assert cli.main(["train", "--backend", "cupy", "--no-cuda-graphs", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["cuda_graphs"] is False
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_errors_are_one_clear_line(tmp_path, demo_run, capsys):
    cases = [
        (["evaluate", "--work-dir", str(tmp_path / "none")], "no best.npz"),
        (["train", "--resume", "--work-dir", str(tmp_path / "none")], "no checkpoint.npz"),
        (["train", "--dataset", "nope", "--work-dir", str(tmp_path / "x")], "nope"),
        (["train", "--dataset", "ptbb", "--print-config"], "unknown data set 'ptbb'; known: ptb"),
        (["train", "--work-dir", str(demo_run)], "already holds a run"),
        (["train", "--resume", "--depth", "5", "--work-dir", str(demo_run)], "depth (--depth) was 3 and cannot change"),
        (["train", "--hidden", "0", "--work-dir", str(tmp_path / "y")], "hidden (--hidden) must be a positive integer"),
        (["train", "--drop-h", "1.5", "--work-dir", str(tmp_path / "y")], "drop_h (--drop-h) is a drop probability"),
        (["train", "--dataset", "ptb-char", "--data-dir", str(tmp_path / "typo"), "--work-dir", str(tmp_path / "y")],
         "typo does not exist"),
        (["sample", "--work-dir", str(demo_run), "--prime", "\u00e9t\u00e9"], "cannot encode"),
        (["train", "--dataset", "ptb-char", "--data-dir", str(demo_run / "best.npz"), "--work-dir", str(tmp_path / "y")],
         "best.npz is a file, not a folder"),
        (["sample", "--work-dir", str(demo_run / "best.npz")],
         f"best.npz is a file; give the run's folder, the one holding best.npz and checkpoint.npz (rhn-np: --work-dir {demo_run})"),
        (["train", "--max-steps", "2", "--work-dir", str(demo_run / "best.npz" / "sub")], "cannot create the work folder"),
    ]
    from rhn_np import backend

    if not backend.cupy_available():
        cases.append((["train", "--backend", "cupy", "--work-dir", str(tmp_path / "z")], "backend='cupy' is not usable"))
        # said before anything about the data: the data folder here does not exist either
        cases.append((["train", "--backend", "cupy", "--dataset", "ptb", "--data-dir", str(tmp_path / "typo"),
                       "--work-dir", str(tmp_path / "z")], "backend='cupy' is not usable"))
    for argv, message in cases:
        assert cli.main(argv) == 1, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    assert not any((tmp_path / d).exists() for d in "xyz"), "a run that cannot start leaves no folder"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "best.npz").write_bytes(b"not a zip file at all")
    assert cli.main(["evaluate", "--work-dir", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "corrupted or truncated" in err and "other checkpoint" not in err  # bad/ holds no checkpoint.npz
    (bad / "checkpoint.npz").write_bytes((demo_run / "checkpoint.npz").read_bytes())
    assert cli.main(["evaluate", "--work-dir", str(bad), "--quiet"]) == 1
    assert "The run's other checkpoint, checkpoint.npz, may still be readable (rhn-np: --checkpoint latest" in capsys.readouterr().err
    assert cli.main(["evaluate", "--work-dir", str(bad), "--checkpoint", "latest", "--quiet"]) == 0
    capsys.readouterr()
    (bad / "checkpoint.npz").write_bytes(b"truncated")
    assert cli.main(["train", "--resume", "--work-dir", str(bad), "--quiet"]) == 1
    assert "Resuming needs it (the optimiser's state is only there)" in capsys.readouterr().err


def test_evaluate_refuses_a_run_of_other_data_before_loading_any(tmp_path, monkeypatch, capsys):
    """A run trained on a data set given from Python stores only its name and vocabulary;
    rhn-np evaluate said nothing and scored the config's data set (here ptb, which it
    would first have tried to download)."""
    import urllib.request

    from rhn_np import data

    ids = np.arange(400, dtype=np.int32) % 5
    ds = data.Dataset(name="mine", kind="tokens", level="char", vocab=list("abcde"), train=ids[:300],
                      valid=ids[300:350], test=ids[350:])
    cfg = T.config_from_preset("demo", dataset="ptb", depth=1, hidden=8, batch_size=2, bptt=5, max_steps=3,
                               eval_every=3, eval_batch_size=2)
    T.Trainer(cfg, tmp_path / "run", ds=ds, progress=False, out=lambda *a: None).run()
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("evaluate tried to download"))
    assert cli.main(["evaluate", "--work-dir", str(tmp_path / "run"), "--quiet"]) == 1
    assert "the run was trained on 'mine', not 'ptb'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "--work-dir", "w", "--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got 0"),
    (["sample", "--work-dir", "w", "--seed", "-1"], "argument --seed: must be an integer >= 0, got -1"),
    (["sample", "--work-dir", "w", "--length", "2.5"], "argument --length: must be an integer >= 1, got '2.5'"),
    (["train", "--sample-length", "-1"], "argument --sample-length: must be an integer >= 0, got -1"),
])
def test_options_outside_the_config_are_checked_when_parsed(argv, message, capsys):
    """Options that are not part of a run's configuration are refused by the parser,
    with the option's name, before anything is loaded or trained."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path, data_home):
    """A real SIGINT to a real `rhn-np train` process."""
    work = tmp_path / "run"
    env = dict(os.environ, RHN_NP_DATA_HOME=str(data_home), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rhn_np.cli", "train", "--max-steps", "100000", "--eval-every", "100000", "--quiet",
         "--work-dir", str(work)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        first = proc.stdout.readline()  # "training on pydoc ..." once data and model are ready
        assert first.startswith("training on pydoc"), first
        time.sleep(2.0)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, out
    assert "interrupted at step" in out and "--resume" in out
    _, meta = checkpoint.load(work / "checkpoint.npz")
    assert meta["step"] > 0
    assert cli.main(["train", "--resume", "--work-dir", str(work), "--max-steps", str(meta["step"] + 3), "--quiet",
                     "--sample-length", "0"]) == 0
    _, meta2 = checkpoint.load(work / "checkpoint.npz")
    assert meta2["step"] == meta["step"] + 3


# ----------------------------------------------------------------------------
# The acceptance command on the real PTB character data
# ----------------------------------------------------------------------------
PTB_CHAR = ["--dataset", "ptb-char", "--depth", "2", "--hidden", "64", "--batch-size", "16", "--bptt", "50",
            "--seed", "0", "--quiet", "--sample-length", "0"]


@needs_shared_data
def test_ptb_char_reaches_bpc_below_3_2_and_resumes_exactly(tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    args = PTB_CHAR + ["--data-dir", DATA_DIR]
    assert cli.main(["train", *args, "--max-steps", "200", "--work-dir", str(straight)]) == 0
    last = [r for r in T.read_metrics(straight) if r["split"] == "valid"][-1]
    assert last["step"] == 200 and last["dataset"] == "ptb-char"
    assert last["bpc"] < 3.2, last
    assert f"{last['bpc']:.3f} bits per character" in capsys.readouterr().out

    assert cli.main(["train", *args, "--max-steps", "100", "--work-dir", str(split)]) == 0
    assert cli.main(["train", *args, "--max-steps", "200", "--work-dir", str(split), "--resume"]) == 0
    a, _ = checkpoint.load(straight / "checkpoint.npz")
    b, meta = checkpoint.load(split / "checkpoint.npz")
    assert meta["step"] == 200 and set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    last_split = [r for r in T.read_metrics(split) if r["split"] == "valid"][-1]
    for key in ("step", "epoch", "nll", "ppl", "bpc", "lr"):
        assert last_split[key] == last[key], key
    json.dumps(last_split)
