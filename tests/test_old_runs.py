"""Runs written before the cell interface (rhn_np at f2e6ecf) still resume, evaluate and
sample, with the numbers that version gives (``tests/fixtures/README.md``).

Bit for bit with the reference implementation (``impl="reference"``, which that version
ran on the CPU); the compiled CPU path gives the same numbers to float round-off."""

from __future__ import annotations

import pathlib
import shutil

import numpy as np
import pytest

from rhn_np import cells, fast, lm
from rhn_np import train as T
from test_train import TinyRolls, TinyText, _rolls, markov_text

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
EXPECTED = np.load(FIXTURES / "old-runs-expected.npz")


def _data():
    vocab = list("abcdefgh\n")
    s = markov_text(3000, seed=1, vocab=vocab)
    rolls = _rolls(12, 5)
    return {"old-run-tokens": (TinyText(s[:2400], s[2400:2700], s[2700:], vocab), 18),
            "old-run-rolls": (TinyRolls(rolls[:8], rolls[8:10], rolls[10:]), 6)}


@pytest.mark.parametrize("impl", ["reference", "fast"])
@pytest.mark.parametrize("name", ["old-run-tokens", "old-run-rolls"])
def test_an_old_run_resumes_to_the_numbers_of_the_old_code(name, impl, tmp_path):
    """Bitwise with the reference; to 1e-5 (float32 round-off over the steps) with the fast path."""
    if impl == "fast" and not fast.uses_compiled():
        pytest.skip(f"compiled CPU path: {fast.compiled_status()[1]}")
    ds, steps = _data()[name]
    work = tmp_path / name
    shutil.copytree(FIXTURES / name, work)
    tr = T.Trainer.resume(work, overrides={"max_steps": steps, "impl": impl}, ds=ds, progress=False,
                          out=lambda *a: None)
    assert (tr.cfg.cell, tr.cfg.layers) == ("rhn", 1)  # the config has neither: an RHN of one layer
    tr.run()
    assert tr.step == steps
    keys = sorted(k[len(name) + len(".param."):] for k in EXPECTED.files if k.startswith(f"{name}.param."))
    assert sorted(tr.params) == keys
    for k in keys:
        want = EXPECTED[f"{name}.param.{k}"]
        if impl == "reference":
            np.testing.assert_array_equal(np.asarray(tr.params[k]), want, err_msg=k)
        else:
            np.testing.assert_allclose(np.asarray(tr.params[k]), want, rtol=0, atol=1e-5 * max(1.0, np.abs(want).max()),
                                       err_msg=k)


@pytest.mark.parametrize("name", ["old-run-tokens", "old-run-rolls"])
def test_an_old_run_evaluates_and_samples_as_before(name):
    ds, _ = _data()[name]
    params, cfg, meta = T.load_run(FIXTURES / name)
    assert cells.name_of(lm.layer_params(params)) == "rhn" and lm.n_layers(params) == 1
    res = T.evaluate_dataset(params, ds, "test", batch_size=2, bptt=cfg.bptt, impl="reference")
    assert res["nll"] == float(EXPECTED[f"{name}.test_nll"])
    if fast.uses_compiled():
        got = T.evaluate_dataset(params, ds, "test", batch_size=2, bptt=cfg.bptt, impl="fast")["nll"]
        assert abs(got - res["nll"]) <= 1e-6 * abs(res["nll"])
    if ds.kind == "tokens":
        text = T.sample(params, T.dataset_for_sampling(meta), length=40, temperature=0.8, seed=1, impl="reference")
        assert text == EXPECTED[f"{name}.sample"].tobytes().decode()
