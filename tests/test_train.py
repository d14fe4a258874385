"""The trainer: batching, the recipe, evaluation, sampling, checkpoints and resuming."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import signal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rhn_np import backend, checkpoint, lm, tasks
from rhn_np import train as T


# ----------------------------------------------------------------------------
# Small data sets made here
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class TinyText:
    """A character data set with the interface of ``rhn_np.data.Dataset``."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    vocab: list
    name: str = "tiny"
    kind: str = "tokens"
    level: str = "char"

    @property
    def vocab_size(self):
        return len(self.vocab)

    def encode(self, text):
        return np.asarray([self.vocab.index(c) for c in text], np.int32)

    def decode(self, ids):
        return "".join(self.vocab[int(i)] for i in ids)


def markov_text(n, seed=0, vocab="abcdefgh\n"):
    """Symbols from a sparse random Markov chain: learnable, far from uniform."""
    rng = np.random.default_rng(seed)
    V = len(vocab)
    P = rng.dirichlet(np.full(V, 0.3), size=V)
    out = np.empty(n, np.int32)
    out[0] = 0
    for i in range(1, n):
        out[i] = rng.choice(V, p=P[out[i - 1]])
    return out


@pytest.fixture(scope="module")
def tiny():
    vocab = list("abcdefgh\n")
    s = markov_text(6000, seed=1, vocab=vocab)
    return TinyText(s[:5000], s[5000:5600], s[5600:], vocab)


@dataclasses.dataclass
class TinyRolls:
    train: list
    valid: list
    test: list
    vocab: list = dataclasses.field(default_factory=lambda: [str(m) for m in range(21, 109)])
    name: str = "tinyjsb"
    kind: str = "piano_roll"
    level: str = "frame"

    @property
    def vocab_size(self):
        return 88


def _rolls(n, seed):
    rng = np.random.default_rng(seed)
    return [(rng.random((int(rng.integers(5, 12)), 88)) < 0.05).astype(np.uint8) for _ in range(n)]


def tiny_cfg(**kw):
    base = dict(dataset="tiny", depth=2, hidden=12, emb=6, batch_size=4, bptt=7, optimizer="sgd", lr=0.5, lr_schedule="epoch",
                lr_decay=1.5, max_epoch=1, epochs=50, max_steps=40, clip=1.0, weight_decay=1e-3, drop_x=0.2,
                drop_i=0.3, drop_h=0.2, drop_o=0.3, eval_every=10, eval_batch_size=3, log_every=3, seed=3,
                dtype="float64")
    base.update(kw)
    return T.Config(**base).check()


def run(cfg, ds, work, **kw):
    return T.Trainer(cfg, work, ds=ds, progress=False, out=lambda *a: None, **kw)


def params_host(trainer):
    return {k: np.asarray(v).copy() for k, v in trainer.params.items()}


def valid_records(work):
    return [{k: r[k] for k in ("step", "epoch", "nll", "ppl", "bpc", "lr")} for r in T.read_metrics(work)
            if r["split"] == "valid"]


# ----------------------------------------------------------------------------
# Batching
# ----------------------------------------------------------------------------
def ptb_iterator(raw, batch_size, num_steps):
    """The authors' reader (TensorFlow PTB tutorial ``ptb_iterator``), batch-major."""
    raw = np.array(raw, dtype=np.int32)
    batch_len = len(raw) // batch_size
    data = np.zeros([batch_size, batch_len], dtype=np.int32)
    for i in range(batch_size):
        data[i] = raw[batch_len * i:batch_len * (i + 1)]
    epoch_size = (batch_len - 1) // num_steps
    for i in range(epoch_size):
        yield data[:, i * num_steps:(i + 1) * num_steps], data[:, i * num_steps + 1:(i + 1) * num_steps + 1]


def test_embedding_width_follows_the_authors_rule(tiny):
    """Their rhn.py: vocabulary size when untied and smaller than hidden, else hidden."""
    V = tiny.vocab_size  # 9
    for kw, width in [(dict(hidden=12, emb=None, tied=False), V), (dict(hidden=8, emb=None, tied=False), 8),
                      (dict(hidden=V, emb=None, tied=False), V), (dict(hidden=12, emb=None, tied=True), 12),
                      (dict(hidden=12, emb=5, tied=False), 5)]:
        params = T.init_model(tiny_cfg(**kw), tiny)
        assert params["E"].shape == (V, width), kw


def test_resume_keeps_the_embedding_width_of_the_run(tiny, tmp_path, monkeypatch):
    """A run whose default width came from an earlier rule resumes with the width it has."""
    with monkeypatch.context() as m:
        m.setattr(tasks, "emb_width", lambda cfg, vocab_size, hidden=None: vocab_size)  # the rule before: vocabulary size at char level
        run(tiny_cfg(hidden=8, emb=None, tied=False, max_steps=6, eval_every=3), tiny, tmp_path / "r").run()
    b = T.Trainer.resume(tmp_path / "r", overrides={"max_steps": 9}, ds=tiny, progress=False, out=lambda *x: None)
    assert b.params["E"].shape == (tiny.vocab_size, tiny.vocab_size)
    b.run()
    assert b.step == 9


@pytest.mark.parametrize("n,B,Tw", [(1000, 20, 35), (103, 4, 5), (50, 1, 49), (64, 8, 3)])
def test_token_batches_match_the_authors_reader(n, B, Tw):
    stream = np.arange(n, dtype=np.int32) * 7 % 1009
    tb = T.TokenBatches(stream, B, Tw)
    ref = list(ptb_iterator(stream, B, Tw))
    assert len(tb) == len(ref)
    for i, (x, y) in enumerate(ref):
        xt, yt = tb.window(i)
        assert xt.shape == (Tw, B)
        np.testing.assert_array_equal(xt, x.T)
        np.testing.assert_array_equal(yt, y.T)


@given(n=st.integers(2, 400), B=st.integers(1, 12), Tw=st.integers(1, 40))
def test_token_batches_property(n, B, Tw):
    """Any stream, batch and window: the training windows are the authors' reader's, and
    the evaluation windows score every target of the rows exactly once, in order."""
    stream = np.arange(n, dtype=np.int32)
    if n // B < 2:
        with pytest.raises(ValueError, match="smaller batch size"):
            T.TokenBatches(stream, B, Tw)
        return
    tb = T.TokenBatches(stream, B, Tw)
    ref = list(ptb_iterator(stream, B, Tw))
    assert len(tb) == len(ref)
    for i, (x, y) in enumerate(ref):
        xt, yt = tb.window(i)
        np.testing.assert_array_equal(xt, x.T)
        np.testing.assert_array_equal(yt, y.T)
    windows = list(tb.all_windows())
    assert all(0 < x.shape[0] <= Tw and x.shape == y.shape for x, y in windows)
    np.testing.assert_array_equal(np.concatenate([y for _, y in windows]).T, tb.rows[:, 1:])
    np.testing.assert_array_equal(np.concatenate([x for x, _ in windows]).T, tb.rows[:, :-1])


def test_all_windows_score_every_target_once():
    stream = np.arange(103, dtype=np.int32)
    tb = T.TokenBatches(stream, 4, 5)
    targets = np.concatenate([y.T for _, y in tb.all_windows()], axis=1)  # (B, L-1)
    np.testing.assert_array_equal(targets, tb.rows[:, 1:])
    inputs = np.concatenate([x.T for x, _ in tb.all_windows()], axis=1)
    np.testing.assert_array_equal(inputs, tb.rows[:, :-1])


def test_token_batches_take_a_stream_on_any_backend():
    stream = np.arange(103, dtype=np.int32)
    on_device = backend.get("array_api_strict").to_device(stream)  # a fake non-CPU device
    np.testing.assert_array_equal(T.TokenBatches(on_device, 4, 5).rows, T.TokenBatches(stream, 4, 5).rows)


def test_token_batches_reject_bad_streams():
    with pytest.raises(ValueError, match="smaller batch size"):
        T.TokenBatches(np.arange(5), 4, 3)
    with pytest.raises(ValueError, match="1-D integer"):
        T.TokenBatches(np.zeros(10), 2, 3)


def test_sequence_batches_pad_and_mask():
    seqs = _rolls(7, 0)
    sb = T.SequenceBatches(seqs, 3)
    assert len(sb) == 3
    order = sb.order(np.random.default_rng(0))
    assert sorted(order) == list(range(7))
    seen = 0
    for i in range(len(sb)):
        x, y, mask = sb.window(i, order)
        idx = order[i * 3:(i + 1) * 3]
        assert x.shape[0] == max(len(seqs[j]) for j in idx) - 1
        for b, j in enumerate(idx):
            t = len(seqs[j]) - 1
            np.testing.assert_array_equal(x[:t, b], seqs[j][:-1])
            np.testing.assert_array_equal(y[:t, b], seqs[j][1:])
            assert mask[:t, b].all() and not mask[t:, b].any() and not x[t:, b].any()
            seen += 1
    assert seen == 7


# ----------------------------------------------------------------------------
# Evaluation and sampling
# ----------------------------------------------------------------------------
def test_evaluate_batch_1_is_one_pass_over_the_split(tiny):
    params = lm.init_lm_params(tiny.vocab_size, 6, 12, 2, seed=0, dtype="float64")
    s = tiny.valid
    whole, _ = lm.lm_nll(params, s[:-1, None], s[1:, None], np.zeros((1, 12)))  # one window, T = len - 1
    res = T.evaluate(params, s, batch_size=1, bptt=7, level="char")
    assert res["n_tokens"] == len(s) - 1
    assert res["nll"] == pytest.approx(float(np.mean(whole)), rel=1e-12)
    assert res["bpc"] == pytest.approx(res["nll"] / math.log(2))
    assert res["ppl"] == pytest.approx(math.exp(res["nll"]))
    # Batched: the rows' own one-pass NLL, averaged over all their targets.
    rows = T.TokenBatches(s, 3, 7).rows
    nll, _ = lm.lm_nll(params, rows[:, :-1].T, rows[:, 1:].T, np.zeros((3, 12)))
    assert T.evaluate(params, s, batch_size=3, bptt=7)["nll"] == pytest.approx(float(np.mean(nll)), rel=1e-12)


def test_sample_is_reproducible_and_keeps_the_prime(tiny):
    params = lm.init_lm_params(tiny.vocab_size, 6, 12, 2, seed=0)
    a = T.sample(params, tiny, length=40, prime="abc", seed=5)
    b = T.sample(params, tiny, length=40, prime="abc", seed=5)
    c = T.sample(params, tiny, length=40, prime="abc", seed=6)
    assert a == b and a != c
    assert a.startswith("abc") and len(a) == 43
    assert len(T.sample(params, tiny, length=10)) == 10
    with pytest.raises(ValueError, match="temperature"):
        T.sample(params, tiny, temperature=0.0)


def test_sample_temperature_sharpens(tiny):
    """Low temperature concentrates the draws on the most likely symbols."""
    params = lm.init_lm_params(tiny.vocab_size, 6, 12, 2, seed=0, init_scale=1.0)
    cold = T.sample(params, tiny, length=300, temperature=0.05, seed=1)
    hot = T.sample(params, tiny, length=300, temperature=5.0, seed=1)
    assert len(set(cold)) < len(set(hot))


# ----------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------
def test_training_learns_a_markov_chain(tiny, tmp_path):
    cfg = tiny_cfg(optimizer="adam", lr=0.02, max_steps=300, eval_every=100, drop_x=0.0, drop_i=0.0, drop_h=0.0,
                   drop_o=0.0, lr_decay=1.0, weight_decay=0.0, clip=10.0, dtype="float32", hidden=32, emb=9,
                   batch_size=16)
    tr = run(cfg, tiny, tmp_path)
    summary = tr.run()
    valid = [r for r in T.read_metrics(tmp_path) if r["split"] == "valid"]
    assert [r["step"] for r in valid] == [100, 200, 300]
    # What the best bigram model (the chain's own order) fitted on train scores on valid.
    s = tiny.valid
    counts = np.zeros((9, 9))
    np.add.at(counts, (tiny.train[:-1], tiny.train[1:]), 1)
    P = (counts + 0.5) / (counts + 0.5).sum(1, keepdims=True)
    bigram_bpc = -np.mean(np.log2(P[s[:-1], s[1:]]))
    assert valid[-1]["bpc"] < math.log2(9) - 0.5  # far below uniform
    assert valid[-1]["bpc"] < bigram_bpc + 0.1  # close to the best a bigram model does
    assert summary["last_valid"]["bpc"] == valid[-1]["bpc"]


def test_metrics_file_and_learning_curve(tiny, tmp_path):
    tr = run(tiny_cfg(max_steps=20), tiny, tmp_path)
    tr.run()
    recs = T.read_metrics(tmp_path)
    for r in recs:
        for key in ("split", "step", "epoch", "nll", "ppl", "bpc", "lr", "tokens_per_s"):
            assert key in r
    valid = [r for r in recs if r["split"] == "valid"]
    assert [r["step"] for r in valid] == [10, 20]
    assert all(r["tokens_per_s"] > 0 for r in valid)
    png = (tmp_path / "learning_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert (tmp_path / "checkpoint.npz").exists() and (tmp_path / "best.npz").exists()


def test_learning_curve_is_a_slide_and_leaves_matplotlib_alone(tmp_path):
    """learning_curve.png in the slide style (large figure, large fonts), drawn without
    pyplot: the caller's backend, rcParams and open figures are as they were."""
    import warnings

    import matplotlib
    import matplotlib.pyplot as plt

    from rhn_np import runs

    for k, split in enumerate(["train", "valid"] * 3):
        runs.append_metrics(tmp_path, {"split": split, "step": 10 * (k // 2 + 1), "nll": 2.0 - 0.1 * k, "level": "char"})
    before_backend = matplotlib.get_backend()
    matplotlib.use("svg")  # a backend the old code switched to Agg behind the caller's back
    try:
        plt.figure()
        figs_before = plt.get_fignums()
        rc_before = {k: v for k, v in matplotlib.rcParams.items() if k != "backend"}
        path = runs.plot_learning_curve(tmp_path)
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == figs_before
        assert {k: v for k, v in matplotlib.rcParams.items() if k != "backend"} == rc_before
    finally:
        plt.close("all")
        matplotlib.use(before_backend)
    png = pathlib.Path(path).read_bytes()
    assert path == str(tmp_path / "learning_curve.png") and png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width >= 1200 and height >= 650, (width, height)  # was 640 x 400
    # No records (a run stopped before its first evaluation): an empty plot, no legend warning.
    empty = tmp_path / "empty"
    empty.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert os.path.exists(runs.plot_learning_curve(empty, path=empty / "lc.png"))


def test_lr_schedule_follows_the_authors(tiny, tmp_path):
    """Constant for max_epoch epochs, then divided by lr_decay every epoch."""
    cfg = tiny_cfg(max_steps=None, epochs=4, max_epoch=2, lr=0.4, lr_decay=2.0, eval_every=None)
    tr = run(cfg, tiny, tmp_path)
    tr.run()
    valid = [r for r in T.read_metrics(tmp_path) if r["split"] == "valid"]
    assert [r["step"] for r in valid] == [tr.epoch_size * k for k in (1, 2, 3, 4)]
    # The lr logged at the end of epoch e (0-based) is the one used during it.
    assert [r["lr"] for r in valid] == [0.4, 0.4, 0.2, 0.1]


def test_cosine_schedule():
    assert T.lr_at_step(0, 0.01, 100) == 0.01
    assert T.lr_at_step(50, 0.01, 100) == pytest.approx(0.01 * (0.05 + 0.95 * 0.5))
    assert T.lr_at_step(100, 0.01, 100) == pytest.approx(0.0005)
    assert T.lr_at_step(10_000, 0.01, 100) == pytest.approx(0.0005)
    lrs = [T.lr_at_step(k, 1.0, 100) for k in range(101)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def _train_split(cfg, ds, root, first, total):
    """(uninterrupted run, run stopped at `first` and resumed to `total`)."""
    a = run(dataclasses.replace(cfg, max_steps=total), ds, root / "straight")
    a.run()
    b = run(dataclasses.replace(cfg, max_steps=first), ds, root / "split")
    b.run()
    b2 = T.Trainer.resume(root / "split", overrides={"max_steps": total}, ds=ds, progress=False, out=lambda *x: None)
    assert b2.step == first
    b2.run()
    return a, b2


@pytest.mark.parametrize("optimizer,schedule", [("sgd", "epoch"), ("adam", "epoch"), ("adam", "cosine")])
def test_resume_equals_uninterrupted(tiny, tmp_path, optimizer, schedule):
    ds = dataclasses.replace(tiny, train=tiny.train[:400])  # 14 windows per epoch
    cfg = tiny_cfg(optimizer=optimizer, lr=0.3 if optimizer == "sgd" else 0.01, eval_every=10, lr_schedule=schedule,
                   decay_steps=30)
    a, b = _train_split(cfg, ds, tmp_path, 20, 40)  # crosses two epoch ends and one lr decay
    assert a.epoch_size == 14
    for k in a.params:
        np.testing.assert_array_equal(np.asarray(a.params[k]), np.asarray(b.params[k]), err_msg=k)
    assert valid_records(tmp_path / "straight") == valid_records(tmp_path / "split")
    np.testing.assert_array_equal(a.state, b.state)
    assert a.rng.bit_generator.state == b.rng.bit_generator.state


def test_resume_with_sgd_momentum_equals_uninterrupted(tiny, tmp_path):
    ds = dataclasses.replace(tiny, train=tiny.train[:400])
    cfg = tiny_cfg(optimizer="sgd", momentum=0.9, lr=0.05, eval_every=10)
    a, b = _train_split(cfg, ds, tmp_path, 20, 40)
    assert b.opt.momentum == 0.9
    for k in a.params:
        np.testing.assert_array_equal(np.asarray(a.params[k]), np.asarray(b.params[k]), err_msg=k)
    plain = run(dataclasses.replace(cfg, momentum=0.0, max_steps=40), ds, tmp_path / "plain")
    plain.run()
    assert not np.allclose(np.asarray(plain.params["W_out"]), np.asarray(a.params["W_out"]))


def test_early_stopping_and_its_resume(tiny, tmp_path):
    """patience N: stop after N validations in a row without a new best; a resumed run
    counts on from where it was, and a run that had stopped early does not train on."""
    ds = dataclasses.replace(tiny, train=tiny.train[:400])
    cfg = tiny_cfg(optimizer="sgd", lr=3.0, clip=100.0, eval_every=2, max_steps=200, patience=2, drop_x=0.0,
                   drop_i=0.0, drop_h=0.0, drop_o=0.0, lr_schedule="epoch", max_epoch=1000)
    a = run(cfg, ds, tmp_path / "a")
    summary = a.run()
    valid = [r["nll"] for r in valid_records(tmp_path / "a")]
    assert summary["stopped_early"] and a.step < 200
    best = int(np.argmin(valid))
    assert len(valid) - 1 - best == 2 and all(v >= valid[best] for v in valid[best + 1:])
    assert summary["best_step"] == valid_records(tmp_path / "a")[best]["step"]
    # the same run cut after its second-last validation, resumed: it stops at the same step
    cut = run(dataclasses.replace(cfg, max_steps=a.step - 2), ds, tmp_path / "b")
    cut.run()
    assert cut.stale == 1
    resumed = T.Trainer.resume(tmp_path / "b", overrides={"max_steps": 200}, ds=ds, progress=False,
                               out=lambda *x: None)
    assert resumed.stale == 1
    again = resumed.run()
    assert again["stopped_early"] and resumed.step == a.step
    finished = T.Trainer.resume(tmp_path / "a", ds=ds, progress=False, out=lambda *x: None)
    assert finished.run()["steps_this_run"] == 0


def test_resume_equals_uninterrupted_piano_rolls(tmp_path):
    ds = TinyRolls(_rolls(11, 0), _rolls(4, 1), _rolls(4, 2))
    cfg = tiny_cfg(dataset="tinyjsb", emb=None, batch_size=3, optimizer="adam", lr=0.01, eval_every=5, drop_x=0.0)
    a, b = _train_split(cfg, ds, tmp_path, 5, 13)  # 4 batches per epoch: stops mid-epoch
    for k in a.params:
        np.testing.assert_array_equal(np.asarray(a.params[k]), np.asarray(b.params[k]), err_msg=k)
    assert valid_records(tmp_path / "straight") == valid_records(tmp_path / "split")
    assert valid_records(tmp_path / "straight")[-1]["ppl"] is None


def test_piano_roll_nll_matches_a_direct_computation(tmp_path):
    ds = TinyRolls(_rolls(6, 0), _rolls(5, 1), _rolls(3, 2))
    params = lm.init_dense_params(88, 10, 2, seed=0, dtype="float64")
    res = T.evaluate_sequences(params, ds.valid, batch_size=2)
    total, steps = 0.0, 0
    for s in ds.valid:  # one sequence at a time, no padding
        logits, _ = lm.dense_logits(params, s[:-1, None, :].astype(float), np.zeros((1, 10)))
        loss, _ = lm.sigmoid_bernoulli_nll(logits, s[1:, None, :].astype(float))
        total += float(loss)
        steps += len(s) - 1
    assert res["nll"] == pytest.approx(total / steps, rel=1e-12)
    assert res["n_tokens"] == steps


class _InterruptAt(T.Trainer):
    """Sends itself SIGINT in the middle of a given step (as Ctrl+C would)."""

    at = 7

    def train_step(self):
        if self.step == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return super().train_step()


def test_ctrl_c_saves_and_resumes_exactly(tiny, tmp_path):
    ds = dataclasses.replace(tiny, train=tiny.train[:400])
    cfg = tiny_cfg(max_steps=20, eval_every=10)
    a = run(cfg, ds, tmp_path / "straight")
    a.run()
    b = _InterruptAt(cfg, tmp_path / "split", ds=ds, progress=False, out=lambda *x: None)
    with pytest.raises(KeyboardInterrupt):
        b.run()
    arrays, meta = checkpoint.load(tmp_path / "split" / "checkpoint.npz")
    assert meta["step"] == 8  # the step in progress was finished, then saved
    c = T.Trainer.resume(tmp_path / "split", ds=ds, progress=False, out=lambda *x: None)
    c.run()
    for k in a.params:
        np.testing.assert_array_equal(np.asarray(a.params[k]), np.asarray(c.params[k]), err_msg=k)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class _PoisonAt(T.Trainer):
    at = 14

    def train_step(self):
        if self.step == self.at:
            self.params["R_H"][...] = np.nan
        return super().train_step()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny, tmp_path):
    tr = _PoisonAt(tiny_cfg(max_steps=40, eval_every=10, log_every=1), tmp_path, ds=tiny, progress=False,
                   out=lambda *x: None)
    with pytest.raises(T.TrainingDiverged, match="non-finite.*step 15.*checkpoint.npz"):
        tr.run()
    arrays, meta = checkpoint.load(tmp_path / "checkpoint.npz")
    assert meta["step"] == 10
    assert all(np.isfinite(a).all() for a in arrays.values())


def test_load_run_before_the_first_validation_points_to_the_latest_checkpoint(tiny, tmp_path):
    tr = run(tiny_cfg(max_steps=4), tiny, tmp_path / "run")
    tr.run()
    (tmp_path / "run" / "best.npz").unlink()  # as after Ctrl+C before the first validation
    with pytest.raises(T.RunError, match=r"no best.npz .* yet .*--checkpoint latest.*--resume"):
        T.load_run(tmp_path / "run")
    params, _, _ = T.load_run(tmp_path / "run", "latest")
    assert set(params) == set(tr.params)
    with pytest.raises(T.RunError, match="train a model there first"):
        T.load_run(tmp_path / "empty")


def test_resume_errors(tiny, tmp_path):
    with pytest.raises(T.RunError, match="no checkpoint.npz"):
        T.Trainer.resume(tmp_path / "nothing", ds=tiny)
    tr = run(tiny_cfg(max_steps=10), tiny, tmp_path / "run")
    tr.run()
    with pytest.raises(T.RunError, match=r"depth \(--depth\) was 2 and cannot change to 3"):
        T.Trainer.resume(tmp_path / "run", overrides={"depth": 3}, ds=tiny)
    # Where it runs may change: e.g. without CUDA graphs on a GPU where they fail.
    again = T.Trainer.resume(tmp_path / "run", overrides={"cuda_graphs": False}, ds=tiny, progress=False,
                             out=lambda *a: None)
    assert again.cfg.cuda_graphs is False
    with pytest.raises(T.RunError, match="already holds a run"):
        T.train(tiny_cfg(), tmp_path / "run")
    # Foreign and corrupted files.
    checkpoint.save(tmp_path / "foreign" / "checkpoint.npz", {"w": np.zeros(3)})
    with pytest.raises(checkpoint.CheckpointError, match="not one of a training run"):
        T.Trainer.resume(tmp_path / "foreign", ds=tiny)
    raw = bytearray((tmp_path / "run" / "checkpoint.npz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / "run" / "checkpoint.npz").write_bytes(bytes(raw))
    with pytest.raises(checkpoint.CheckpointError):
        T.Trainer.resume(tmp_path / "run", ds=tiny)


def test_a_folder_holding_a_run_is_never_overwritten_by_accident(tiny, tmp_path):
    cfg = tiny_cfg(max_steps=10)
    run(cfg, tiny, tmp_path / "run").run()
    before = {f: (tmp_path / "run" / f).read_bytes() for f in ("checkpoint.npz", "best.npz", "metrics.jsonl")}
    with pytest.raises(T.RunError, match=r"already holds a run \(checkpoint.npz, best.npz\).*Trainer.resume.*overwrite=True"):
        run(cfg, tiny, tmp_path / "run")
    assert {f: (tmp_path / "run" / f).read_bytes() for f in before} == before
    n_records = len(T.read_metrics(tmp_path / "run"))
    said = []
    T.Trainer(cfg, tmp_path / "run", ds=tiny, progress=False, out=said.append, overwrite=True).run()
    assert len(T.read_metrics(tmp_path / "run")) == n_records  # the new run's records only, none mixed in
    assert any("removed" in line and "metrics.jsonl" in line for line in said)
    # Records in a folder without checkpoints (a run that failed before saving, or a
    # user's own file) are kept under another name, never deleted; the new run starts
    # its own metrics.jsonl.
    (tmp_path / "stale").mkdir()
    (tmp_path / "stale" / "metrics.jsonl").write_text('{"my": "own log"}\n')
    said = []
    T.Trainer(cfg, tmp_path / "stale", ds=tiny, progress=False, out=said.append).run()
    assert [r["step"] for r in T.read_metrics(tmp_path / "stale")] == [r["step"] for r in T.read_metrics(tmp_path / "run")]
    (kept,) = (tmp_path / "stale").glob("metrics.before-*.jsonl")
    assert kept.read_text() == '{"my": "own log"}\n' and any("kept the earlier metrics.jsonl" in line for line in said)
    # A folder with only best.npz is a run too, but there is nothing to resume: say so.
    (tmp_path / "best-only").mkdir()
    checkpoint.copy(tmp_path / "run" / "best.npz", tmp_path / "best-only" / "best.npz")
    for call in (lambda: run(cfg, tiny, tmp_path / "best-only"), lambda: T.train(cfg, tmp_path / "best-only")):
        with pytest.raises(T.RunError, match=r"best parameters of a run \(best.npz\) but no checkpoint.npz to resume"):
            call()
    with pytest.raises(TypeError, match="cfg must be a train.Config"):
        T.Trainer(cfg.to_dict(), tmp_path / "x", ds=tiny)


def test_a_validation_split_that_cannot_be_scored_is_refused_before_training(tiny, tmp_path):
    short = dataclasses.replace(tiny, valid=tiny.valid[:5])
    with pytest.raises(ValueError, match=r"validation split \(5 tokens\).*eval_batch_size=3.*--eval-batch-size"):
        run(tiny_cfg(), short, tmp_path / "a")
    with pytest.raises(ValueError, match="validation split of tiny is empty"):
        run(tiny_cfg(), dataclasses.replace(tiny, valid=tiny.valid[:0]), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_load_run_and_best_checkpoint(tiny, tmp_path):
    tr = run(tiny_cfg(max_steps=30, eval_every=10), tiny, tmp_path)
    tr.run()
    valid = [r for r in T.read_metrics(tmp_path) if r["split"] == "valid"]
    best = min(valid, key=lambda r: r["nll"])
    params, cfg, meta = T.load_run(tmp_path, "best")
    assert meta["step"] == best["step"] and cfg.depth == 2
    res = T.evaluate(params, tiny.valid, batch_size=cfg.eval_batch_size, bptt=cfg.bptt, level="char")
    assert res["nll"] == pytest.approx(best["nll"], rel=1e-12)
    latest, _, meta = T.load_run(tmp_path, "latest")
    assert meta["step"] == 30
    for k in latest:
        np.testing.assert_array_equal(latest[k], np.asarray(tr.params[k]))


def test_config_checks():
    with pytest.raises(ValueError, match="drop_h"):
        tiny_cfg(drop_h=1.0)
    with pytest.raises(ValueError, match="depth"):
        tiny_cfg(depth=0)
    with pytest.raises(ValueError, match="lr_decay"):
        tiny_cfg(lr_decay=0.5)
    with pytest.raises(ValueError, match="unknown preset"):
        T.config_from_preset("nope")
    with pytest.raises(ValueError, match="unknown config keys"):
        T.Config.from_dict({"depht": 3})


def test_paper_presets_are_the_authors_configs():
    p = T.config_from_preset("ptb_sota")
    assert (p.depth, p.hidden, p.tied, p.batch_size, p.bptt) == (10, 830, True, 20, 35)
    assert (p.optimizer, p.lr, p.lr_decay, p.max_epoch, p.clip, p.weight_decay) == ("sgd", 0.2, 1.02, 20, 10.0, 1e-7)
    assert (p.drop_x, p.drop_i, p.drop_h, p.drop_o, p.transform_bias, p.init_scale) == (0.25, 0.75, 0.25, 0.75, -2.0, 0.04)
    for name in ("enwik8_sota", "text8_sota"):
        c = T.config_from_preset(name)
        assert (c.depth, c.hidden, c.tied, c.batch_size, c.bptt, c.transform_bias) == (10, 1500, False, 128, 50, -4.0)
        assert (c.lr, c.lr_decay, c.max_epoch, c.drop_x, c.drop_i, c.drop_h, c.drop_o) == (0.2, 1.03, 5, 0.1, 0.4, 0.1, 0.4)
    assert json.loads(json.dumps(p.to_dict())) == p.to_dict()


def test_config_defaults_are_the_demo_preset():
    assert T.Config() == T.config_from_preset("demo")
    assert T.config_from_preset("ptb_sota").lr_schedule == "epoch"


def test_training_on_a_device_backend_matches_numpy(tiny, tmp_path):
    """The whole trainer on array-api-strict's fake device: no NumPy-only call, no
    implicit host transfer in training, evaluation, checkpoints or resuming."""
    pytest.importorskip("array_api_strict")
    ds = dataclasses.replace(tiny, train=tiny.train[:400])
    cfg = tiny_cfg(max_steps=12, eval_every=6, optimizer="adam", lr=0.01)
    a = run(cfg, ds, tmp_path / "numpy")
    a.run()
    strict_cfg = dataclasses.replace(cfg, backend="array_api_strict", max_steps=6)
    b = run(strict_cfg, ds, tmp_path / "strict")
    b.run()
    b = T.Trainer.resume(tmp_path / "strict", overrides={"max_steps": 12}, ds=ds, progress=False, out=lambda *x: None)
    assert b.be.name == "array_api_strict"
    b.run()
    from rhn_np import backend

    for k in a.params:
        assert backend.name_of(b.params[k]) == "array_api_strict"
        np.testing.assert_allclose(backend.to_host(b.params[k]), a.params[k], rtol=1e-10, atol=1e-12, err_msg=k)
    va, vb = valid_records(tmp_path / "numpy"), valid_records(tmp_path / "strict")
    assert [r["step"] for r in va] == [r["step"] for r in vb] == [6, 12]
    for ra, rb in zip(va, vb):
        assert rb["nll"] == pytest.approx(ra["nll"], rel=1e-10)
    params, _, _ = T.load_run(tmp_path / "strict", backend="array_api_strict")
    text = T.sample(params, ds, length=20, prime="ab", seed=1)
    params_np, _, _ = T.load_run(tmp_path / "strict")
    assert text == T.sample(params_np, ds, length=20, prime="ab", seed=1)


def test_a_record_cut_short_by_a_crash_does_not_break_the_run(tiny, tmp_path):
    """A crash in the middle of writing metrics.jsonl leaves a fragment without newline:
    reading warns and skips it, the next record replaces it, and resume carries on."""
    tr = run(tiny_cfg(max_steps=10), tiny, tmp_path / "run")
    tr.run()
    path = tmp_path / "run" / "metrics.jsonl"
    good = T.read_metrics(tmp_path / "run")
    with open(path, "a") as fh:
        fh.write('{"split": "valid", "nll": 1.2')  # the crash
    with pytest.warns(UserWarning, match="ignoring its last line, a record cut short"):
        assert T.read_metrics(tmp_path / "run") == good
    T.Trainer.resume(tmp_path / "run", overrides={"max_steps": 20}, ds=tiny, progress=False, out=lambda *a: None).run()
    records = T.read_metrics(tmp_path / "run")  # no warning: the fragment is gone
    assert records[: len(good)] == good and [r["step"] for r in records if r["split"] == "valid"] == [10, 20]
    assert path.read_text().endswith("}\n") and "1.2{" not in path.read_text()
    # A whole record whose newline was never written is kept, not cut.
    path.write_text(path.read_text().rstrip("\n"))
    T.append_metrics(str(tmp_path / "run"), {"split": "note", "step": 99})
    assert T.read_metrics(tmp_path / "run")[-2:] == [records[-1], {"split": "note", "step": 99}]
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:1] + ["not json"] + lines[1:]) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: not a JSON record.*fix or delete that line"):
        T.read_metrics(tmp_path / "run")


def test_resume_with_another_vocabulary_is_refused(tiny, tmp_path):
    run(tiny_cfg(max_steps=10), tiny, tmp_path / "run").run()
    shuffled = dataclasses.replace(tiny, vocab=tiny.vocab[::-1])  # same size, other symbols behind the ids
    with pytest.raises(T.RunError, match="does not have the vocabulary the run was trained with"):
        T.Trainer.resume(tmp_path / "run", ds=shuffled)


def test_config_takes_numpy_scalars_and_refuses_what_would_fail_later():
    cfg = T.Config(hidden=np.int64(8), lr=np.float32(0.1), tied=np.bool_(False), seed=np.int32(3)).check()
    assert (type(cfg.hidden), type(cfg.lr), type(cfg.tied), type(cfg.seed)) == (int, float, bool, int)
    json.dumps(cfg.to_dict())  # it goes into checkpoint metadata
    assert T.Config(data_dir=pathlib.Path("/tmp")).check().data_dir == "/tmp"
    for kw, pattern in [({"tied": "no"}, r"tied \(--tied\) must be True or False"),
                        ({"cuda_graphs": 1}, r"cuda_graphs \(--cuda-graphs\) must be True or False, got 1"),
                        ({"seed": -1}, r"seed \(--seed\) must be an integer >= 0"),
                        ({"transform_bias": math.nan}, "transform_bias.*finite"),
                        ({"weight_decay": math.inf}, "weight_decay.*finite"),
                        ({"data_dir": 123}, "data_dir.*folder path"),
                        ({"dataset": ""}, r"dataset \(--dataset\) must be a data set name"),
                        ({"time_limit": "5"}, r"time_limit \(--time-limit\) is in minutes and must be > 0, got '5'"),
                        ({"time_limit": True}, r"time_limit.*got True"),  # True is not 1 minute
                        ({"lr": True}, r"lr \(--lr\) must be a finite number > 0.0, got True"),
                        ({"drop_x": False}, r"drop_x.*got False")]:
        with pytest.raises(ValueError, match=pattern):
            T.Config(**kw).check()


def test_batchers_refuse_bad_sizes_and_non_binary_rolls():
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        T.TokenBatches(np.arange(100), 0, 5)
    with pytest.raises(TypeError, match="bptt must be an integer, got float"):
        T.TokenBatches(np.arange(100), 4, 4.5)
    rolls = _rolls(3, 0)
    with pytest.raises(ValueError, match="sequences: sequence 1 must hold 0/1 piano-roll frames"):
        T.SequenceBatches([rolls[0], rolls[1] * 64, rolls[2]], 2)
    with pytest.raises(ValueError, match=r"same number of keys K, got \[12, 88\]"):
        T.SequenceBatches([rolls[0], rolls[1][:, :12]], 2)


def test_data_that_does_not_fit_the_model_is_refused_before_any_step(tiny, tmp_path):
    bad = dataclasses.replace(tiny, valid=np.concatenate([tiny.valid, [len(tiny.vocab) + 3]]).astype(np.int32))
    with pytest.raises(ValueError, match=r"the valid split of tiny holds symbol ids in \[0, 12\], outside its vocabulary of 9"):
        run(tiny_cfg(), bad, tmp_path / "a")
    rolls = TinyRolls(_rolls(5, 0), [r[:, :12] for r in _rolls(3, 1)], _rolls(3, 2))
    with pytest.raises(ValueError, match=r"the valid piano rolls of tinyjsb have 12 keys per frame"):
        run(tiny_cfg(dataset="tinyjsb", emb=None, batch_size=3, drop_x=0.0), rolls, tmp_path / "b")
    floats = dataclasses.replace(tiny, test=tiny.test.astype(np.float64))
    with pytest.raises(ValueError, match="the test split of tiny must be a 1-D integer array"):
        run(tiny_cfg(), floats, tmp_path / "c")
    loud = TinyRolls(_rolls(5, 0), [r * 3 for r in _rolls(3, 1)], _rolls(3, 2))
    with pytest.raises(ValueError, match="the valid piano rolls of tinyjsb: sequence 0 must hold 0/1 piano-roll frames"):
        run(tiny_cfg(dataset="tinyjsb", emb=None, batch_size=3, drop_x=0.0), loud, tmp_path / "d")
    (tmp_path / "file").write_text("x")
    with pytest.raises(T.RunError, match="is a file"):
        run(tiny_cfg(), tiny, tmp_path / "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # no folder left by a run that could not start
    run(tiny_cfg(max_steps=10), tiny, tmp_path / "run").run()
    with pytest.raises(T.RunError, match="unknown setting 'lrr' in overrides"):
        T.Trainer.resume(tmp_path / "run", overrides={"lrr": 0.1}, ds=tiny)
    with pytest.raises(ValueError, match="decay_steps must be >= 1, got 0"):
        T.lr_at_step(3, 0.1, 0)
    with pytest.raises(ValueError, match="step must be >= 0, got -1"):
        T.lr_at_step(-1, 0.1, 10)  # used to be clamped to 0 without a word
    with pytest.raises(TypeError, match="step must be an integer, got float"):
        T.lr_at_step(2.5, 0.1, 10)  # used to be truncated
    with pytest.raises(ValueError, match="lr must be a finite number >= 0.0, got -0.1"):
        T.lr_at_step(1, -0.1, 10)
    with pytest.raises(ValueError, match="final_ratio is the fraction of lr left at the end"):
        T.lr_at_step(1, 0.1, 10, final_ratio=1.5)


def test_a_model_is_scored_only_on_its_own_data(tiny, tmp_path):
    """evaluate_dataset used to score a model on any data whose ids were in range (a word
    model on characters gave a number); the CLI compares the run's stored data set."""
    run(tiny_cfg(max_steps=10), tiny, tmp_path / "run").run()
    params, _, meta = T.load_run(tmp_path / "run")
    more = dataclasses.replace(tiny, vocab=tiny.vocab + ["x"])
    with pytest.raises(ValueError, match=r"the model predicts 9 symbols but tiny has 10: evaluate on the data set"):
        T.evaluate_dataset(params, more, "valid", batch_size=3, bptt=7)
    with pytest.raises(ValueError, match="needs a piano-roll model"):
        T.evaluate_dataset(params, TinyRolls(_rolls(3, 0), _rolls(2, 1), _rolls(2, 2)), "valid")
    T.check_run_data(meta, tiny)  # the run's own data: no error
    with pytest.raises(T.RunError, match=r"trained on 'tiny', not 'other'.*train.evaluate_dataset"):
        T.check_run_data(meta, dataclasses.replace(tiny, name="other"))
    with pytest.raises(T.RunError, match="does not have the vocabulary the run was trained with"):
        T.check_run_data(meta, dataclasses.replace(tiny, vocab=tiny.vocab[::-1]))


def test_messages_go_to_out_when_it_is_given(tiny, tmp_path):
    said = []
    T.Trainer(tiny_cfg(max_steps=20, eval_every=10), tmp_path, ds=tiny, progress=True, out=said.append).run()
    assert sum(m.startswith("step ") and "valid" in m for m in said) == 2, said  # with the bar on they used to go to stdout
    assert sum(m.startswith("final, best checkpoint") for m in said) == 1, said
