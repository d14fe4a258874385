"""The authors' evaluation protocol: MC-dropout evaluation (``tasks.evaluate_mc``, ``rhn-np
evaluate --mc-samples``) against a slow, obviously correct implementation, and the figures a
run reports at its end (``Config.final_eval``, ``Config.eval_test``)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from rhn_np import cli, lm, tasks
from rhn_np import train as T

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from test_train import TinyRolls, TinyText, _rolls, markov_text, tiny_cfg  # noqa: E402

DROPS = dict(drop_x=0.25, drop_i=0.5, drop_h=0.25, drop_o=0.5)


# ----------------------------------------------------------------------------
# The slow, obviously correct implementation
# ----------------------------------------------------------------------------
def mc_one_by_one(params, stream, *, samples, seed=0, reject_ppl=500.0, x_mask="type", window=5, **drops):
    """The authors' ``run_mc_epoch``, sample after sample: one batch-1 pass over the stream per
    draw with the masks of ``tasks.mc_dropout_masks``, the probability of every target kept;
    a pass with perplexity >= ``reject_ppl`` is dropped and another drawn, until ``samples``
    passes are kept; the result is the NLL of the mean of their probabilities."""
    stream = np.asarray(stream)
    sum_probs, kept_nll, draw = np.zeros(len(stream) - 1), [], 0
    while len(kept_nll) < samples:
        masks = tasks.mc_dropout_masks(params, draw, seed=seed, x_mask=x_mask, **drops)
        draw += 1
        fixed = {k: None if m is None else np.asarray(m, dtype=params["E"].dtype) for k, m in masks.items() if k != "x"}
        s = lm.zero_state(params, 1)
        probs = []
        for start in range(0, len(stream) - 1, window):
            ids = stream[start: min(start + window, len(stream) - 1)]
            targets = stream[start + 1: start + 1 + len(ids)]
            step_masks = dict(fixed)
            if masks["x"] is not None:  # every token of the pass takes its type's value (or the one value)
                value = masks["x"][ids] if x_mask == "type" else np.full(len(ids), masks["x"][0])
                step_masks["x"] = value[:, None].astype(params["E"].dtype)
            logits, s, _ = lm.lm_forward(params, ids[:, None], s, step_masks)
            logits = np.asarray(logits, np.float64)[:, 0, :]
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            probs.extend(p[np.arange(len(ids)), targets])
        probs = np.asarray(probs)
        nll = -np.mean(np.log(probs))
        if reject_ppl is not None and math.exp(nll) >= reject_ppl:
            continue
        sum_probs += probs
        kept_nll.append(nll)
    return {"nll": -np.mean(np.log(sum_probs / samples)), "sample_nll": kept_nll, "rejected": draw - samples}


@pytest.fixture(scope="module")
def model():
    """A two-layer float64 word model and a stream of its vocabulary."""
    params = lm.init_lm_params(13, 6, 8, 2, layers=2, seed=4, dtype="float64", init_scale=0.5)
    stream = markov_text(160, seed=2, vocab="abcdefghijklm")
    return params, stream


# ----------------------------------------------------------------------------
# MC dropout: batched rows against one pass after another
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("x_mask", ["type", "authors"])
def test_batched_rows_equal_one_pass_after_another(model, x_mask):
    params, stream = model
    # "authors": their run_mc_epoch's one-token windows, one word-type value for the whole pass.
    ref = mc_one_by_one(params, stream, samples=7, seed=3, x_mask=x_mask, window=1 if x_mask == "authors" else 5,
                        **DROPS)
    for rows, bptt in ((7, 9), (3, 50), (1, 4)):  # one batch; 3 + 3 + 1 rows; one row at a time
        res = tasks.evaluate_mc(params, stream, samples=7, seed=3, x_mask=x_mask, rows=rows, bptt=bptt, **DROPS)
        assert res["nll"] == pytest.approx(ref["nll"], rel=1e-12, abs=0)
        np.testing.assert_allclose(res["sample_nll"], ref["sample_nll"], rtol=1e-12, atol=0)
        assert (res["samples"], res["rejected"], res["rows"], res["n_tokens"]) == (7, 0, rows, len(stream) - 1)
        assert res["ppl"] == pytest.approx(math.exp(res["nll"]), rel=1e-12)
    assert len(set(np.round(ref["sample_nll"], 10))) == 7  # the samples differ: the masks are on


def test_every_backend_gives_the_host_one_by_one_figure(model, be):
    params, stream = model
    ref = mc_one_by_one(params, stream, samples=3, seed=1, **DROPS)
    on_be = {k: be.to_device(v) for k, v in params.items()}
    res = tasks.evaluate_mc(on_be, stream, samples=3, seed=1, rows=2, impl="reference", **DROPS)
    assert res["nll"] == pytest.approx(ref["nll"], rel=1e-12)
    np.testing.assert_allclose(res["sample_nll"], ref["sample_nll"], rtol=1e-12, atol=0)


def test_float32_model_agrees_with_its_float64_one_by_one_passes(model):
    params, stream = model
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    ref = mc_one_by_one(params, stream, samples=4, **DROPS)
    res = tasks.evaluate_mc(p32, stream, samples=4, rows=4, **DROPS)
    assert res["nll"] == pytest.approx(ref["nll"], rel=1e-5)


def test_rejected_passes_are_drawn_again_and_left_out(model):
    """The authors' rule: a pass with perplexity >= reject_ppl is not averaged and another is
    drawn in its place, so the result always averages ``samples`` accepted passes."""
    params, stream = model
    free = tasks.evaluate_mc(params, stream, samples=12, reject_ppl=None, rows=5, **DROPS)
    ppl = np.exp(free["sample_nll"])
    threshold = float(np.median(ppl))
    accepted = [nll for nll, p in zip(free["sample_nll"], ppl) if p < threshold][:4]
    res = tasks.evaluate_mc(params, stream, samples=4, reject_ppl=threshold, max_rejected=8, rows=3, **DROPS)
    n_drawn = next(i for i in range(12) if sum(ppl[: i + 1] < threshold) == 4) + 1
    assert res["sample_nll"] == accepted  # the first four accepted draws, in order, bit for bit
    assert res["rejected"] == n_drawn - 4 > 0
    ref = mc_one_by_one(params, stream, samples=4, reject_ppl=threshold, **DROPS)
    assert res["nll"] == pytest.approx(ref["nll"], rel=1e-12) and res["rejected"] == ref["rejected"]
    # At the threshold itself a pass is rejected (">= 500", not "> 500").
    at = math.exp(free["sample_nll"][0])
    first = tasks.evaluate_mc(params, stream, samples=1, reject_ppl=at, max_rejected=12, **DROPS)
    k = next(i for i in range(12) if ppl[i] < at)
    assert first["rejected"] == k >= 1 and first["sample_nll"] == [free["sample_nll"][k]]


def test_too_many_rejected_passes_stop_with_a_clear_error(model):
    params, stream = model
    with pytest.raises(RuntimeError, match=r"4 of 4 MC-dropout passes had perplexity >= reject_ppl=1.0001 "
                                           r"\(0 of samples=3 accepted\), more than max_rejected=3.*raise reject_ppl"):
        tasks.evaluate_mc(params, stream, samples=3, reject_ppl=1.0001, rows=2, **DROPS)
    with pytest.raises(RuntimeError, match="2 of 2 MC-dropout passes"):
        tasks.evaluate_mc(params, stream, samples=5, reject_ppl=1.0001, max_rejected=1, rows=2, **DROPS)


def test_probabilities_are_averaged_not_log_probabilities(model):
    params, stream = model
    res = tasks.evaluate_mc(params, stream, samples=6, **DROPS)
    mean_of_nll = float(np.mean(res["sample_nll"]))  # what averaging log-probabilities gives
    assert res["nll"] < mean_of_nll - 1e-3  # Jensen: the mixture scores better than its average pass
    one = tasks.evaluate_mc(params, stream, samples=1, **DROPS)
    assert one["nll"] == pytest.approx(one["sample_nll"][0], rel=1e-14)  # one sample: its own pass


def test_masks_of_a_sample_depend_on_the_seed_and_its_index_only(model):
    params, stream = model
    a = tasks.evaluate_mc(params, stream, samples=5, seed=11, rows=5, **DROPS)
    b = tasks.evaluate_mc(params, stream, samples=5, seed=11, rows=2, **DROPS)
    c = tasks.evaluate_mc(params, stream, samples=5, seed=12, rows=5, **DROPS)
    assert a["sample_nll"] == b["sample_nll"] and a["nll"] == pytest.approx(b["nll"], rel=1e-14)
    assert c["sample_nll"] != a["sample_nll"]
    longer = tasks.evaluate_mc(params, stream, samples=8, seed=11, rows=8, **DROPS)
    np.testing.assert_allclose(longer["sample_nll"][:5], a["sample_nll"], rtol=1e-13, atol=0)


def test_mc_dropout_masks(model):
    params, _ = model  # V 13, n_emb 6, n 8, 2 layers
    m = tasks.mc_dropout_masks(params, 0, seed=1, **DROPS)
    assert set(m) == {"x", "i", "h", "o", "layer2.i", "layer2.h"}
    assert m["x"].shape == (13,) and m["i"].shape == (1, 6) and m["h"].shape == m["o"].shape == (1, 8)
    assert m["layer2.i"].shape == m["layer2.h"].shape == (1, 8)
    for key, drop in (("x", .25), ("i", .5), ("h", .25), ("o", .5), ("layer2.i", .5), ("layer2.h", .25)):
        assert set(np.unique(m[key])) <= {0.0, 1.0 / (1.0 - drop)}, key
    assert tasks.mc_dropout_masks(params, 0, seed=1, x_mask="authors", **DROPS)["x"].shape == (1,)
    only_o = tasks.mc_dropout_masks(params, 0, drop_o=0.5)
    assert only_o["x"] is None and only_o["i"] is None and only_o["h"] is None and only_o["o"] is not None
    # One value per vocabulary entry, dropped at the rate asked: a large vocabulary shows it.
    big = lm.init_lm_params(4000, 4, 4, 1, seed=0, dtype="float64")
    x = tasks.mc_dropout_masks(big, 3, drop_x=0.25)["x"]
    assert x.shape == (4000,) and abs(np.mean(x == 0) - 0.25) < 0.03
    again = tasks.mc_dropout_masks(big, 3, drop_x=0.25)["x"]
    other = tasks.mc_dropout_masks(big, 4, drop_x=0.25)["x"]
    assert np.array_equal(x, again) and not np.array_equal(x, other)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(samples=0), ValueError, "samples must be >= 1, got 0"),
    (dict(samples=2.0), TypeError, "samples must be an integer"),
    (dict(samples=2, drop_x=0, drop_i=0, drop_h=0, drop_o=0), ValueError, "MC dropout needs dropout: drop_x, drop_i"),
    (dict(samples=2, drop_h=1.0), ValueError, r"drop_h must be a drop probability in \[0, 1\), got 1.0"),
    (dict(samples=2, drop_i=float("nan")), ValueError, "drop_i must be a drop probability"),
    (dict(samples=2, seed=-1), ValueError, "seed must be >= 0"),
    (dict(samples=2, reject_ppl=1.0), ValueError, "reject_ppl must be a finite number > 1.0"),
    (dict(samples=2, reject_ppl="500"), TypeError, "reject_ppl must be a number"),
    (dict(samples=2, max_rejected=-1), ValueError, "max_rejected must be >= 0"),
    (dict(samples=2, x_mask="word"), ValueError, "x_mask must be 'type' or 'authors', got 'word'"),
    (dict(samples=2, level="frame"), ValueError, "level must be 'word' or 'char', got 'frame'"),
    (dict(samples=2, rows=0), ValueError, "rows must be >= 1"),
])
def test_bad_arguments_are_refused_by_name(model, kwargs, error, match):
    params, stream = model
    kw = {**DROPS, **kwargs}
    with pytest.raises(error, match=match):
        tasks.evaluate_mc(params, stream, **kw)


def test_bad_models_and_streams_are_refused(model):
    params, _ = model
    dense = lm.init_dense_params(88, 8, 2, seed=0)
    with pytest.raises(ValueError, match="evaluate_mc needs the parameters of lm.init_lm_params.*piano-roll"):
        tasks.evaluate_mc(dense, np.arange(10), samples=2, **DROPS)
    with pytest.raises(ValueError, match="cannot fill 1 rows of at least 2 tokens"):
        tasks.evaluate_mc(params, np.array([3]), samples=2, **DROPS)
    with pytest.raises(ValueError, match=r"stream must hold token ids in \[0, 13\).*got ids in \[1, 13\]"):
        tasks.evaluate_mc(params, np.array([1, 2, 13, 4]), samples=2, **DROPS)
    with pytest.raises(ValueError, match="token stream must be a 1-D integer array"):
        tasks.evaluate_mc(params, np.array([1.0, 2.0, 3.0]), samples=2, **DROPS)


# ----------------------------------------------------------------------------
# rhn-np evaluate --mc-samples
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dropout_run(tmp_path_factory):
    """A few steps of a small model with dropout on pydoc (no final evaluation: it is tested apart)."""
    work = tmp_path_factory.mktemp("mc") / "run"
    rc = cli.main(["train", "--max-steps", "3", "--eval-every", "3", "--hidden", "16", "--depth", "1", "--drop-x",
                   "0.1", "--drop-i", "0.3", "--drop-h", "0.1", "--drop-o", "0.3", "--no-final-eval",
                   "--sample-length", "0", "--quiet", "--work-dir", str(work)])
    assert rc == 0
    return work


def test_cli_mc_samples_is_evaluate_mc_with_the_runs_dropout(dropout_run, capsys):
    from rhn_np import data

    capsys.readouterr()
    rc = cli.main(["evaluate", "--work-dir", str(dropout_run), "--split", "valid", "--mc-samples", "3", "--mc-seed",
                   "5", "--mc-rows", "2", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "MC dropout: 3 samples, 0 rejected" in out and "bits per character" in out
    rec = T.read_metrics(dropout_run)[-1]
    assert (rec["split"], rec["batch_size"], rec["mc_samples"], rec["mc_seed"], rec["mc_reject_ppl"]) == (
        "valid", 1, 3, 5, 500.0)
    params, cfg, _ = T.load_run(dropout_run)
    direct = T.evaluate_mc(params, data.load("pydoc").valid, samples=3, seed=5, level="char", drop_x=cfg.drop_x,
                           drop_i=cfg.drop_i, drop_h=cfg.drop_h, drop_o=cfg.drop_o)
    assert rec["nll"] == pytest.approx(direct["nll"], rel=1e-6) and rec["mc_sample_nll"] == pytest.approx(
        direct["sample_nll"], rel=1e-6)
    assert f"{rec['bpc']:.3f} bits per character" in out


def test_cli_mc_samples_refusals(dropout_run, tmp_path, capsys):
    assert cli.main(["evaluate", "--work-dir", str(dropout_run), "--mc-samples", "2", "--batch-size", "4"]) == 1
    assert "--batch-size does not apply" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--work-dir", str(dropout_run), "--mc-samples", "2", "--mc-reject-ppl", "0.5"])
    assert "--mc-reject-ppl: must be a perplexity > 1 or 'none', got '0.5'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--work-dir", str(dropout_run), "--mc-samples", "0"])
    assert "--mc-samples: must be an integer >= 1, got 0" in capsys.readouterr().err
    no_dropout = tmp_path / "plain"
    assert cli.main(["train", "--max-steps", "1", "--eval-every", "1", "--hidden", "8", "--depth", "1",
                     "--no-final-eval", "--sample-length", "0", "--quiet", "--work-dir", str(no_dropout)]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", "--work-dir", str(no_dropout), "--mc-samples", "2", "--quiet"]) == 1
    assert "MC dropout needs dropout, and the run in" in capsys.readouterr().err


# ----------------------------------------------------------------------------
# The end of a training run: batch-1 figures of the best checkpoint; test per validation
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    vocab = list("abcdefgh\n")
    s = markov_text(6000, seed=1, vocab=vocab)
    return TinyText(s[:5000], s[5000:5600], s[5600:], vocab)


def test_a_run_ends_with_the_batch_1_figures_of_its_best_checkpoint(tiny, tmp_path):
    said = []
    tr = T.Trainer(tiny_cfg(max_steps=30, eval_test=True), tmp_path, ds=tiny, progress=False, out=said.append)
    summary = tr.run()
    records = T.read_metrics(tmp_path)
    valid = [r for r in records if r["split"] == "valid"]
    best = min(valid, key=lambda r: r["nll"])
    params, cfg, meta = T.load_run(tmp_path, "best")
    assert meta["step"] == best["step"]
    final = {r["split"]: r for r in records if r["split"].startswith("final_")}
    assert set(final) == {"final_valid", "final_test"} and set(summary["final"]) == {"valid", "test"}
    for split in ("valid", "test"):
        rec = final[f"final_{split}"]
        direct = T.evaluate(params, getattr(tiny, split), batch_size=1, bptt=cfg.bptt, level="char")
        assert rec["nll"] == direct["nll"] and rec["n_tokens"] == len(getattr(tiny, split)) - 1
        assert (rec["step"], rec["batch_size"], rec["checkpoint"]) == (best["step"], 1, "best")
        assert summary["final"][split] == rec
    assert any(line.startswith(f"final, best checkpoint (step {best['step']}), batch 1: valid nll") for line in said)
    # eval_test: a batched "test" record with every validation, at the same step.
    tests = [r for r in records if r["split"] == "test"]
    assert [r["step"] for r in tests] == [r["step"] for r in valid] == [10, 20, 30]
    latest, _, _ = T.load_run(tmp_path, "latest")
    direct = T.evaluate(latest, tiny.test, batch_size=cfg.eval_batch_size, bptt=cfg.bptt, level="char")
    assert tests[-1]["nll"] == direct["nll"] and tests[-1]["batch_size"] == cfg.eval_batch_size
    assert any(", test nll " in line for line in said)
    # A resume at the last step does not score the same checkpoint again.
    n = len(records)
    again = T.Trainer.resume(tmp_path, ds=tiny, progress=False, out=said.append).run()
    assert len(T.read_metrics(tmp_path)) == n and again["final"]["test"] == final["final_test"]


def test_final_eval_off_and_a_test_split_too_short(tiny, tmp_path):
    tr = T.Trainer(tiny_cfg(max_steps=10, final_eval=False), tmp_path / "off", ds=tiny, progress=False,
                   out=lambda *a: None)
    assert tr.run()["final"] is None
    assert not [r for r in T.read_metrics(tmp_path / "off") if r["split"].startswith("final") or r["split"] == "test"]
    short = TinyText(tiny.train, tiny.valid, tiny.test[:4], tiny.vocab)
    with pytest.raises(ValueError, match=r"test split of tiny \(4 items\) is too short.*eval_test.*--no-eval-test"):
        T.Trainer(tiny_cfg(eval_test=True), tmp_path / "short", ds=short, progress=False)
    tr = T.Trainer(tiny_cfg(max_steps=10), tmp_path / "short", ds=short, progress=False, out=lambda *a: None)
    assert set(tr.run()["final"]) == {"valid", "test"}  # batch 1 scores even 4 tokens
    empty = TinyText(tiny.train, tiny.valid, tiny.test[:1], tiny.vocab)
    tr = T.Trainer(tiny_cfg(max_steps=10), tmp_path / "empty", ds=empty, progress=False, out=lambda *a: None)
    assert set(tr.run()["final"]) == {"valid"}  # one token has no target: left out


def test_piano_rolls_end_with_the_figures_of_whole_chorales(tmp_path):
    ds = TinyRolls(_rolls(12, 0), _rolls(5, 1), _rolls(4, 2))
    cfg = tiny_cfg(dataset="tinyjsb", emb=None, max_steps=6, eval_every=3, batch_size=4, eval_batch_size=3,
                   eval_test=True, drop_x=0.0)
    summary = T.Trainer(cfg, tmp_path, ds=ds, progress=False, out=lambda *a: None).run()
    params, cfg, _ = T.load_run(tmp_path, "best")
    for split in ("valid", "test"):
        rec = summary["final"][split]
        assert rec["batch_size"] == cfg.eval_batch_size and rec["ppl"] is None
        assert rec["nll"] == T.evaluate_sequences(params, getattr(ds, split), batch_size=cfg.eval_batch_size)["nll"]
        one = T.evaluate_sequences(params, getattr(ds, split), batch_size=1)  # no batch size changes the figure
        assert one["nll"] == pytest.approx(rec["nll"], rel=1e-12)
    assert len([r for r in T.read_metrics(tmp_path) if r["split"] == "test"]) == 2


def test_paper_presets_record_test_per_validation_and_every_preset_ends_with_batch_1():
    for preset in ("ptb_sota", "enwik8_sota", "text8_sota"):
        cfg = T.config_from_preset(preset)
        assert cfg.eval_test and cfg.final_eval and cfg.eval_every is None  # per epoch
    for preset in ("demo", "jsb"):
        cfg = T.config_from_preset(preset)
        assert cfg.final_eval and not cfg.eval_test


def test_cli_train_prints_the_final_figures_and_keeps_its_summary_lines(tmp_path, capsys):
    rc = cli.main(["train", "--max-steps", "2", "--eval-every", "2", "--hidden", "8", "--depth", "1",
                   "--sample-length", "20", "--quiet", "--work-dir", str(tmp_path / "w")])
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.splitlines()
    final = [line for line in lines if line.startswith("final, best checkpoint (step 2), batch 1: validation ")]
    assert len(final) == 1 and "; test " in final[0] and final[0].count("bits per character") == 2
    assert any(line.startswith("validation: ") and "bits per character" in line for line in lines)
    assert any(line.startswith("sample (best checkpoint") for line in lines)
    records = {r["split"]: r for r in T.read_metrics(tmp_path / "w")}
    assert f"{records['final_test']['bpc']:.3f} bits per character" in final[0]


# ----------------------------------------------------------------------------
# The benchmark runs and reports what it measured (timings are its own business)
# ----------------------------------------------------------------------------
def test_bench_mc_reports_batched_and_one_by_one_time_per_sample(tmp_path, monkeypatch, capsys):
    import bench_mc

    monkeypatch.setitem(bench_mc.MODELS, "tiny", (11, 5, 6, 2, False, "char"))
    out = tmp_path / "mc.json"
    bench_mc.main(["--models", "tiny", "--samples", "1,3", "--tokens", "40", "--sequential-samples", "2",
                   "--json", str(out)])
    result = json.loads(out.read_text())
    assert [r["samples"] for r in result["rows"]] == [1, 3]
    for r in result["rows"]:
        assert r["ratio_one_by_one_vs_batched"] == pytest.approx(r["one_by_one_per_sample_ms"]
                                                                 / r["batched_per_sample_ms"])
        assert r["max_sample_nll_difference"] < 1e-4 and r["one_by_one_samples_timed"] == 2
    assert "| tiny | 39 | 3 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench_mc.main(["--models", "nope"])
