"""Every cell through every part of the package: the registry, equal-size models (the
paper's Fig. 4 protocol), stacked layers, the trainer, checkpoints and the command line.

The cells are :mod:`rhn_np.cells`' "rhn", "dt_rnn" and "dts_rnn"; the numerical checks
are float64 (central differences, h = 1e-5).
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from conftest import check_dense_gradients
from rhn_np import cells, cli, data, dtrnn, gradcheck, lm, rhn, tasks
from rhn_np import train as T
from test_train import (TinyRolls, TinyText, _rolls, _train_split, markov_text, params_host, run, tiny_cfg,
                        valid_records)

CELLS = list(cells.NAMES)
GRAD_TOL = 1e-6  # central differences, float64, h = 1e-5
SAME = 1e-12  # one float64 computation done two ways


@pytest.fixture(scope="module")
def tiny():
    vocab = list("abcdefgh\n")
    s = markov_text(6000, seed=1, vocab=vocab)
    return TinyText(s[:5000], s[5000:5600], s[5600:], vocab)


@pytest.fixture(scope="module")
def rolls():
    return TinyRolls(_rolls(11, 0), _rolls(4, 1), _rolls(4, 2))


def n_entries(params) -> int:
    return sum(math.prod(v.shape) for v in params.values())


# ----------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------
def test_the_three_cells_are_registered():
    assert cells.NAMES == ("rhn", "dt_rnn", "dts_rnn")
    modules = {"rhn": rhn, "dt_rnn": dtrnn, "dts_rnn": dtrnn}
    for name in CELLS:
        c = cells.get(name)
        assert c.name == name and c.module is modules[name] and c.summary
        for module_fn in ("init_params", "param_shapes", "dims", "forward", "backward", "step_forward",
                          "step_backward"):
            assert callable(getattr(c.module, module_fn)), (name, module_fn)
        for coupled in (True, False):
            p = c.init_params(3, 4, 2, coupled=coupled, seed=1, dtype="float64")
            assert cells.name_of(p) == name
            assert cells.of(p) is modules[name]
            assert {k: tuple(v.shape) for k, v in p.items()} == c.param_shapes(3, 4, 2, coupled=coupled)
            assert c.count(3, 4, 2, coupled=coupled) == n_entries(p)
            assert tuple(c.module.dims(p))[:3] == (3, 4, 2)
    # The settings map onto each module's own keywords.
    assert set(cells.get("dts_rnn").init_params(3, 4, 2)) == {"W", "R", "b", "U"}
    assert set(cells.get("dt_rnn").init_params(3, 4, 2)) == {"W", "R", "b"}
    assert "R_C" in cells.get("rhn").init_params(3, 4, 2, coupled=False)
    assert "R_C" not in cells.get("rhn").init_params(3, 4, 2, coupled=True)
    assert np.all(cells.get("rhn").init_params(3, 4, 2, transform_bias=-1.5)["b_T"] == -1.5)
    # The same seed gives each module's own init.
    np.testing.assert_array_equal(cells.get("dts_rnn").init_params(3, 4, 2, seed=9)["U"],
                                  dtrnn.init_params(3, 4, 2, shortcut=True, seed=9)["U"])


def test_unknown_cells_and_dicts_of_no_cell_are_refused_clearly():
    with pytest.raises(ValueError, match=r"unknown cell 'lstm'; the cells are rhn, dt_rnn, dts_rnn"):
        cells.get("lstm")
    with pytest.raises(ValueError, match=r"rhn, dt_rnn, dts_rnn"):
        cells.count_params("gru", 3, 4, 2, 5)
    with pytest.raises(ValueError, match=r"rhn, dt_rnn, dts_rnn"):
        lm.init_lm_params(5, 3, 4, 2, cell="DT_RNN")
    for bad in ({"E": np.zeros((5, 3)), "b_out": np.zeros(5)}, {}, {"W_out": np.zeros((3, 3))}):
        with pytest.raises(ValueError, match=r"are no cell's.*R_H.*dtrnn.init_params.*lm.layer_params"):
            cells.name_of(bad)
        with pytest.raises(ValueError, match="are no cell's"):
            cells.of(bad)
    with pytest.raises(TypeError, match="params must be a dict of a cell's parameters, got list"):
        cells.name_of([np.zeros(3)])
    with pytest.raises(ValueError, match=r"cell \(--cell\)"):
        T.Config(cell="lstm").check()


def test_the_cell_of_a_language_model_and_of_each_layer():
    for name in CELLS:
        p = lm.init_lm_params(5, 3, 4, 2, cell=name, layers=3, seed=0)
        assert lm.cell_of(p) is cells.get(name).module
        for k in (1, 2, 3):
            assert cells.name_of(lm.layer_params(p, k)) == name


# ----------------------------------------------------------------------------
# Equal-size models (paper §5.1, Fig. 4): matched_width
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("depth", [1, 2, 4, 6])
@pytest.mark.parametrize("layers", [1, 2])
def test_matched_width_is_the_closest_width_and_counts_the_real_model(cell, depth, layers):
    for budget in (3_000, 50_000, 123_457):
        n, count = cells.matched_width(cell, depth, 88, 88, budget, layers=layers)
        assert count == cells.count_params(cell, 88, n, depth, 88, layers=layers)
        if budget <= 50_000:  # building the model: its true number of entries
            assert count == n_entries(lm.init_dense_params(88, n, depth, cell=cell, layers=layers))
        # Brute force: no width is closer to the budget (ties to the smaller width).
        sizes = {w: cells.count_params(cell, 88, w, depth, 88, layers=layers) for w in range(1, 2 * n + 3)}
        best = min(sizes, key=lambda w: (abs(sizes[w] - budget), w))
        assert n == best, (budget, n, best)
        for w in (n - 1, n + 1):
            if w >= 1:
                assert abs(sizes[w] - budget) >= abs(count - budget)


def test_matched_width_counts_the_uncoupled_rhn_and_the_dense_model_of_any_size():
    for n_in, n_out in ((88, 88), (5, 7)):
        n, count = cells.matched_width("rhn", 3, n_in, n_out, 20_000, coupled=False)
        p = lm.init_dense_params(n_in, n, 3, n_out=n_out, cell="rhn", coupled=False)
        assert "R_C" in p and count == n_entries(p)
        assert abs(count - 20_000) <= min(abs(cells.count_params("rhn", n_in, w, 3, n_out, coupled=False) - 20_000)
                                          for w in (n - 1, n + 1))


def test_matched_width_edge_cases():
    assert cells.matched_width("dt_rnn", 1, 88, 88, 1) == (1, cells.count_params("dt_rnn", 88, 1, 1, 88))
    assert cells.matched_width("rhn", 1, None, None, 15, count=lambda n: 10 * n) == (1, 10)  # a tie: the smaller
    assert cells.matched_width("rhn", 1, None, None, 16, count=lambda n: 10 * n) == (2, 20)
    assert cells.matched_width("rhn", 1, None, None, 10**9, count=lambda n: n * n) == (31623, 31623**2)
    with pytest.raises(ValueError, match="budget"):
        cells.matched_width("rhn", 2, 88, 88, 0)
    with pytest.raises(ValueError, match="depth"):
        cells.matched_width("rhn", 0, 88, 88, 1000)
    with pytest.raises(ValueError, match="the cells are"):
        cells.matched_width("lstm", 2, 88, 88, 1000)


@pytest.mark.parametrize("budget", [50_000, 100_000, 200_000])
@pytest.mark.parametrize("depth", [1, 2, 4, 6])
def test_cells_of_one_depth_are_equally_large(budget, depth):
    """The Fig. 4 protocol: at one depth and budget the three cells differ in width, not in size."""
    found = {c: cells.matched_width(c, depth, 88, 88, budget) for c in CELLS}
    counts = [count for _, count in found.values()]
    assert max(counts) / min(counts) - 1 < 0.03, found
    assert all(abs(count / budget - 1) < 0.02 for count in counts), found
    widths = {c: n for c, (n, _) in found.items()}
    assert widths["rhn"] < widths["dts_rnn"] <= widths["dt_rnn"]  # the RHN has two transforms, DT(S) a shortcut


# ----------------------------------------------------------------------------
# A configuration's model on a data set: count_params, resolve_width
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_count_params_is_the_size_of_the_model_built(tiny, rolls, cell, layers, tied):
    cases = [(tiny_cfg(cell=cell, layers=layers, tied=tied, emb=None if tied else 6), tiny),
             (tiny_cfg(cell=cell, layers=layers, tied=tied, emb=None, hidden=9), tiny),  # emb by the authors' rule
             (tiny_cfg(dataset="tinyjsb", cell=cell, layers=layers, tied=tied, emb=None), rolls)]
    for cfg, ds in cases:
        params = tasks.init_model(cfg, ds)
        assert tasks.count_params(cfg, ds) == n_entries(params)
        assert tasks.model_shapes(cfg, ds) == {k: tuple(v.shape) for k, v in params.items()}
        assert lm.n_layers(params) == layers and lm.cell_of(params) is cells.get(cell).module
        assert ("W_out" in params) == (not tied or ds.kind == "piano_roll")
        for w in (5, 13):  # at other widths too
            wcfg = dataclasses.replace(cfg, hidden=w)
            assert tasks.count_params(cfg, ds, w) == n_entries(tasks.init_model(wcfg, ds))


@pytest.mark.parametrize("cell", CELLS)
def test_a_parameter_budget_picks_the_width(tiny, rolls, tmp_path, cell):
    for ds, kw in ((tiny, dict(emb=None)), (tiny, dict(emb=None, tied=True)), (rolls, dict(dataset="tinyjsb", emb=None))):
        for budget in (2_000, 7_777):
            cfg = tiny_cfg(cell=cell, layers=2, params=budget, **kw)
            resolved = tasks.resolve_width(cfg, ds)
            n = resolved.hidden
            assert resolved.params == budget and dataclasses.replace(resolved, hidden=cfg.hidden) == cfg
            count = tasks.count_params(cfg, ds, n)
            assert count == tasks.count_params(resolved, ds)
            for w in (n - 1, n + 1):
                assert abs(tasks.count_params(cfg, ds, w) - budget) >= abs(count - budget), (budget, n, w)
            assert n_entries(tasks.init_model(cfg, ds)) == count  # init_model resolves the width itself
    assert tasks.resolve_width(tiny_cfg(), tiny) == tiny_cfg()  # no budget: unchanged
    cfg = tiny_cfg(cell=cell, layers=2, params=4_000, emb=None, max_steps=2, eval_every=2)
    tr = run(cfg, tiny, tmp_path / "run")
    want = tasks.resolve_width(cfg, tiny).hidden
    assert tr.cfg.hidden == want != cfg.hidden and tr.n_params == tasks.count_params(tr.cfg, tiny)
    assert lm.state_shape(tr.params, 3) == (2, 3, want)
    tr.run()
    _, stored, _ = T.load_run(tmp_path / "run")
    assert stored.hidden == want and stored.params == 4_000


# ----------------------------------------------------------------------------
# Stacked layers
# ----------------------------------------------------------------------------
V, N, DEPTH, TT, B = 7, 4, 2, 3, 2
IDS = np.array([[1, 2], [1, 5], [3, 2]])  # (T, B): repeated tokens in both rows
TARGETS = np.array([[4, 0], [6, 2], [1, 1]])
KEEP = dict(keep_i=0.7, keep_h=0.6, keep_o=0.7)


@pytest.mark.parametrize("cell", CELLS)
def test_stacked_parameters_keys_and_draw_order(cell):
    c = cells.get(cell)
    one = lm.init_lm_params(V, 3, N, DEPTH, cell=cell, seed=4, dtype="float64")
    two = lm.init_lm_params(V, 3, N, DEPTH, cell=cell, layers=2, seed=4, dtype="float64")
    names = set(c.param_shapes(3, N, DEPTH))
    assert set(one) == names | {"E", "b_out", "W_out"}
    assert set(two) == set(one) | {f"layer2.{k}" for k in names}
    assert lm.layer_key(1, "R_H") == "R_H" and lm.layer_key(2, "R") == "layer2.R" and lm.layer_key(3, "U") == "layer3.U"
    assert lm.n_layers(one) == 1 and lm.n_layers(two) == 2
    for k in one:  # a one-layer model is the stack's first layer and heads, same seed
        np.testing.assert_array_equal(one[k], two[k], err_msg=k)
    layer1 = c.init_params(3, N, DEPTH, seed=4, dtype="float64")  # layer 1 is drawn first, as the cell's own init
    for k in layer1:
        np.testing.assert_array_equal(two[k], layer1[k], err_msg=k)
    # The documented order, from one generator: layer 1, E, b_out, W_out, layer 2.
    rng = np.random.default_rng(4)
    c.init_params(3, N, DEPTH, seed=rng, dtype="float64")
    for k, shape in (("E", (V, 3)), ("b_out", (V,)), ("W_out", (N, V))):
        np.testing.assert_array_equal(two[k], rng.uniform(-0.04, 0.04, size=shape), err_msg=k)
    for k, v in c.init_params(N, N, DEPTH, seed=rng, dtype="float64").items():
        np.testing.assert_array_equal(two[f"layer2.{k}"], v, err_msg=k)
    l2 = lm.layer_params(two, 2)
    assert set(l2) == names and all(l2[k] is two[f"layer2.{k}"] for k in l2)  # views, not copies
    assert tuple(c.module.dims(l2))[:3] == (N, N, DEPTH)  # layer 2 reads the N outputs of layer 1
    assert {k: tuple(v.shape) for k, v in l2.items()} == c.param_shapes(N, N, DEPTH)
    assert not any(np.array_equal(l2[k], lm.layer_params(two, 1)[k]) for k in l2 if l2[k].shape ==
                   lm.layer_params(two, 1)[k].shape and np.ptp(l2[k]) > 0)  # drawn afresh
    assert lm.layer_params(two, 1) == {k: v for k, v in two.items() if k in names}
    with pytest.raises(ValueError, match="the model has 2 layer"):
        lm.layer_params(two, 3)
    tied = lm.init_lm_params(V, N, N, DEPTH, cell=cell, layers=2, tied=True, seed=4, dtype="float64")
    untied = lm.init_lm_params(V, N, N, DEPTH, cell=cell, layers=2, seed=4, dtype="float64")
    assert set(untied) - set(tied) == {"W_out"}
    for k in tied:  # tied: the untied model's draws without W_out, layer 2 included (drawn after W_out)
        if not k.startswith("layer"):
            np.testing.assert_array_equal(tied[k], untied[k], err_msg=k)
    dense1 = lm.init_dense_params(5, N, DEPTH, cell=cell, seed=2, dtype="float64")
    dense2 = lm.init_dense_params(5, N, DEPTH, cell=cell, layers=2, seed=2, dtype="float64")
    assert set(dense2) - set(dense1) == {f"layer2.{k}" for k in names}
    for k in dense1:
        np.testing.assert_array_equal(dense1[k], dense2[k], err_msg=k)
    assert lm.zero_state(two, 3).shape == (2, 3, N) and lm.zero_state(one, 3).shape == (3, N)
    assert lm.state_shape(dense2, 5) == (2, 5, N)


def _masks_before_layers(seed, ids, n_emb, n, keep_x, keep_i, keep_h, keep_o):
    """The documented draw of one layer's masks, written out: x (word type), i, h, o."""
    rng = np.random.default_rng(seed)
    Tn, Bn = ids.shape
    fresh = (rng.random((Tn, Bn)) < keep_x) / keep_x
    x = np.empty((Tn, Bn))
    for b in range(Bn):
        for t in range(Tn):
            first = int(np.flatnonzero(ids[:, b] == ids[t, b])[0])
            x[t, b] = fresh[first, b]
    i = (rng.random((Bn, n_emb)) < keep_i) / keep_i
    h = (rng.random((Bn, n)) < keep_h) / keep_h
    o = (rng.random((Bn, n)) < keep_o) / keep_o
    return {"x": x[:, :, None], "i": i, "h": h, "o": o}, rng


def test_one_layer_masks_are_drawn_as_before_layers_existed():
    ids = np.array([[1, 2, 0], [1, 5, 0], [3, 2, 4], [1, 2, 0]])
    want, rng = _masks_before_layers(11, ids, 3, 5, 0.6, 0.7, 0.6, 0.8)
    kw = dict(vocab=V, n_emb=3, n=5, keep_x=0.6, keep_i=0.7, keep_h=0.6, keep_o=0.8, dtype="float64")
    one = lm.draw_masks(11, ids, **kw)
    assert set(one) == {"x", "i", "h", "o"}
    for k in want:
        np.testing.assert_array_equal(one[k], want[k], err_msg=k)
    two = lm.draw_masks(11, ids, layers=2, **kw)
    assert set(two) == {"x", "i", "h", "o", "layer2.i", "layer2.h"}
    for k in one:
        np.testing.assert_array_equal(two[k], one[k], err_msg=k)
    # Layer 2's masks come next from the same generator: (B, n) input and state masks.
    np.testing.assert_array_equal(two["layer2.i"], (rng.random((3, 5)) < 0.7) / 0.7)
    np.testing.assert_array_equal(two["layer2.h"], (rng.random((3, 5)) < 0.6) / 0.6)
    three = lm.draw_masks(11, ids, layers=3, **kw)
    assert set(three) == set(two) | {"layer3.i", "layer3.h"}
    for k in two:
        np.testing.assert_array_equal(three[k], two[k], err_msg=k)
    # A keep of 1 draws nothing, in every layer.
    off = lm.draw_masks(11, ids, layers=2, **dict(kw, keep_i=1.0))
    assert off["i"] is None and off["layer2.i"] is None and off["layer2.h"] is not None
    # The dense model: i, h, o as before, then the layers above.
    d1 = lm.draw_dense_masks(5, 3, n_in=4, n=5, **KEEP, dtype="float64")
    d2 = lm.draw_dense_masks(5, 3, n_in=4, n=5, **KEEP, layers=2, dtype="float64")
    r = np.random.default_rng(5)
    for k, shape, keep in (("i", (3, 4), 0.7), ("h", (3, 5), 0.6), ("o", (3, 5), 0.7)):
        expected = (r.random(shape) < keep) / keep
        np.testing.assert_array_equal(d1[k], expected, err_msg=k)
        np.testing.assert_array_equal(d2[k], expected, err_msg=k)
    assert set(d2) - set(d1) == {"layer2.i", "layer2.h"} and d2["layer2.i"].shape == (3, 5)


def lm_case(cell, *, tied=False, layers=2, seed=0):
    n_emb = N if tied else 3  # n_emb != n untied: a swapped input/state mask would show
    params = lm.init_lm_params(V, n_emb, N, DEPTH, cell=cell, layers=layers, tied=tied, init_scale=0.5,
                               transform_bias=-0.5, seed=seed, dtype="float64")
    rng = np.random.default_rng(seed + 100)
    shape = (B, N) if layers == 1 else (layers, B, N)
    s0 = 0.5 * np.tanh(rng.standard_normal(shape))
    ds_last = rng.standard_normal(shape)
    m = lm.draw_masks(seed, IDS, vocab=V, n_emb=n_emb, n=N, keep_x=0.6, **KEEP, layers=layers, dtype="float64")
    assert all(v is not None for v in m.values())
    return params, IDS.copy(), TARGETS.copy(), s0, m, ds_last


def _forward_by_hand(params, X, s0, m, cell):
    """The stack written out: layer k+1 reads layer k's outputs, with its own masks."""
    mod = cells.get(cell).module
    ys1, _ = mod.forward(lm.layer_params(params, 1), X, s0[0], {"x": m["i"], "s": m["h"]})
    ys2, _ = mod.forward(lm.layer_params(params, 2), ys1, s0[1], {"x": m["layer2.i"], "s": m["layer2.h"]})
    return ys2, np.stack([ys1[-1], ys2[-1]])


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_two_layer_word_model_gradients_match_central_differences(cell, tied):
    params, ids, targets, s0, m, ds_last = lm_case(cell, tied=tied)
    loss, grads, s_last, stats = lm.lm_loss_and_grads(params, ids, targets, s0, m, ds_last=ds_last)
    assert set(grads) == set(params) and s_last.shape == (2, B, N) and stats["ds0"].shape == (2, B, N)

    def f(_):
        l, _, s, _ = lm.lm_loss_and_grads(params, ids, targets, s0, m)
        return float(l) + float(np.sum(s * ds_last))

    for k in params:
        assert grads[k].shape == params[k].shape, k
        err = gradcheck.rel_error(grads[k], gradcheck.numerical_gradient(f, params[k]))
        assert err < GRAD_TOL, (k, err)
    assert gradcheck.rel_error(stats["ds0"], gradcheck.numerical_gradient(f, s0)) < GRAD_TOL
    # The forward is the documented composition.
    ys, last = _forward_by_hand(params, params["E"][ids] * m["x"], s0, m, cell)
    W = params["E"].T if tied else params["W_out"]
    logits, s_last2, _ = lm.lm_forward(params, ids, s0, m)
    np.testing.assert_allclose(logits, (ys * m["o"]) @ W + params["b_out"], rtol=SAME, atol=SAME)
    np.testing.assert_array_equal(s_last2, last)


@pytest.mark.parametrize("cell", CELLS)
def test_two_layer_dense_model_gradients_match_central_differences(cell):
    K = 5
    params = lm.init_dense_params(K, N, DEPTH, cell=cell, layers=2, init_scale=0.5, transform_bias=-0.5, seed=1,
                                  dtype="float64")
    rng = np.random.default_rng(201)
    xs = (rng.random((TT, B, K)) < 0.4).astype(np.float64)
    targets = (rng.random((TT, B, K)) < 0.4).astype(np.float64)
    s0 = 0.5 * np.tanh(rng.standard_normal((2, B, N)))
    ds_last = rng.standard_normal((2, B, N))
    step_mask = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    m = lm.draw_dense_masks(1, B, n_in=K, n=N, **KEEP, layers=2, dtype="float64")
    loss, grads, s_last, stats = check_dense_gradients(params, xs, targets, s0, m, step_mask, ds_last, GRAD_TOL)
    assert s_last.shape == (2, B, N)
    ys, last = _forward_by_hand(params, xs, s0, m, cell)
    logits, s_last2, _ = lm.dense_forward(params, xs, s0, m)
    np.testing.assert_allclose(logits, (ys * m["o"]) @ params["W_out"] + params["b_out"], rtol=SAME, atol=SAME)
    np.testing.assert_array_equal(s_last2, last)


@pytest.mark.parametrize("cell", CELLS)
def test_chained_windows_of_a_two_layer_model_are_one_long_window(cell):
    params, _, _, s0, m, _ = lm_case(cell)
    m = {k: (None if k == "x" else v) for k, v in m.items()}  # the word mask belongs to one window's ids
    rng = np.random.default_rng(8)
    ids, targets = rng.integers(0, V, (7, B)), rng.integers(0, V, (7, B))
    full, s_full = lm.lm_logits(params, ids, s0)
    first, s_mid = lm.lm_logits(params, ids[:3], s0)
    second, s_end = lm.lm_logits(params, ids[3:], s_mid)
    np.testing.assert_allclose(full, np.concatenate([first, second]), rtol=SAME, atol=SAME)
    np.testing.assert_allclose(s_full, s_end, rtol=SAME, atol=SAME)
    assert s_mid.shape == (2, B, N)
    # Truncated BPTT with the gradient carried back (ds_last) is full BPTT.
    loss, g, s_l, st = lm.lm_loss_and_grads(params, ids, targets, s0, m)
    loss2, g2, s_m, st2 = lm.lm_loss_and_grads(params, ids[3:], targets[3:], lm.lm_forward(params, ids[:3], s0, m)[1], m)
    loss1, g1, _, st1 = lm.lm_loss_and_grads(params, ids[:3], targets[:3], s0, m, ds_last=st2["ds0"])
    assert float(loss) == pytest.approx(float(loss1) + float(loss2), rel=SAME)
    for k in g:
        np.testing.assert_allclose(g[k], g1[k] + g2[k], rtol=1e-10, atol=1e-13, err_msg=k)
    np.testing.assert_allclose(st["ds0"], st1["ds0"], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(s_l, s_m, rtol=SAME, atol=SAME)
    # The dense model too.
    dp = lm.init_dense_params(5, N, DEPTH, cell=cell, layers=2, init_scale=0.5, seed=3, dtype="float64")
    xs = (rng.random((7, B, 5)) < 0.4).astype(np.float64)
    a, sa = lm.dense_logits(dp, xs, s0)
    b1, sb = lm.dense_logits(dp, xs[:4], s0)
    b2, sc = lm.dense_logits(dp, xs[4:], sb)
    np.testing.assert_allclose(a, np.concatenate([b1, b2]), rtol=SAME, atol=SAME)
    np.testing.assert_allclose(sa, sc, rtol=SAME, atol=SAME)


def test_stacked_layers_must_fit_each_other():
    p = lm.init_lm_params(V, 3, N, DEPTH, cell="dt_rnn", layers=2, seed=0, dtype="float64")
    bad = dict(p, **{f"layer2.{k}": v for k, v in dtrnn.init_params(3, 5, DEPTH, dtype="float64").items()})
    with pytest.raises(ValueError, match="layer 2 reads 3 inputs and has 5 units"):
        lm.lm_logits(bad, IDS, np.zeros((2, B, N)))


# ----------------------------------------------------------------------------
# Training, resuming, evaluating and sampling with each cell and two layers
# ----------------------------------------------------------------------------
def _assert_same_run(a, b, root):
    assert (b.cfg.cell, b.cfg.layers) == (a.cfg.cell, a.cfg.layers)  # the resumed run kept its cell and layers
    pa, pb = params_host(a), params_host(b)
    assert set(pa) == set(pb)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
    assert valid_records(root / "straight") == valid_records(root / "split")
    assert a.rng.bit_generator.state == b.rng.bit_generator.state


@pytest.mark.parametrize("cell,layers", [("rhn", 2), ("dt_rnn", 1), ("dt_rnn", 2), ("dts_rnn", 1), ("dts_rnn", 2)])
def test_token_runs_resume_bitwise_and_load_evaluate_sample(tiny, tmp_path, cell, layers):
    ds = dataclasses.replace(tiny, train=tiny.train[:400])  # 14 windows per epoch
    cfg = tiny_cfg(cell=cell, layers=layers, optimizer="adam", lr=0.01, eval_every=5, lr_schedule="cosine",
                   decay_steps=20)
    a, b = _train_split(cfg, ds, tmp_path, 10, 17)  # stops mid-epoch, crosses an epoch end (14)
    _assert_same_run(a, b, tmp_path)
    assert a.state.shape == ((4, 12) if layers == 1 else (2, 4, 12))
    np.testing.assert_array_equal(a.state, b.state)
    assert lm.n_layers(a.params) == layers and cells.name_of(lm.layer_params(a.params, layers)) == cell
    # The run as a user reads it back.
    params, stored, meta = T.load_run(tmp_path / "split", "latest")
    assert (stored.cell, stored.layers, meta["step"]) == (cell, layers, 17)
    for k in params:
        np.testing.assert_array_equal(params[k], params_host(b)[k], err_msg=k)
    valid = [r for r in T.read_metrics(tmp_path / "split") if r["split"] == "valid"]
    assert [r["step"] for r in valid] == [5, 10, 15, 17]
    res = T.evaluate_dataset(params, ds, "valid", batch_size=stored.eval_batch_size, bptt=stored.bptt)
    assert res["nll"] == pytest.approx(valid[-1]["nll"], rel=1e-12)
    best, _, best_meta = T.load_run(tmp_path / "split", "best")
    best_rec = min(valid, key=lambda r: r["nll"])
    assert best_meta["step"] == best_rec["step"]
    assert T.evaluate_dataset(best, ds, "valid", batch_size=3, bptt=7)["nll"] == pytest.approx(best_rec["nll"],
                                                                                                rel=1e-12)
    text = T.sample(params, ds, length=25, prime="ab", seed=2)
    assert text.startswith("ab") and len(text) == 27 and set(text) <= set(ds.vocab)
    assert text == T.sample(params, ds, length=25, prime="ab", seed=2)
    assert len(T.sample(params, ds, length=10, seed=1)) == 10


@pytest.mark.parametrize("cell", CELLS)
def test_piano_roll_runs_resume_bitwise_with_two_layers(rolls, tmp_path, cell):
    cfg = tiny_cfg(dataset="tinyjsb", cell=cell, layers=2, emb=None, batch_size=3, optimizer="adam", lr=0.01,
                   eval_every=5, drop_x=0.0)
    a, b = _train_split(cfg, rolls, tmp_path, 5, 11)  # 4 batches per epoch: stops mid-epoch
    _assert_same_run(a, b, tmp_path)
    np.testing.assert_array_equal(a.order, b.order)
    params, stored, meta = T.load_run(tmp_path / "split", "latest")
    assert (stored.cell, stored.layers, meta["step"]) == (cell, 2, 11) and lm.n_layers(params) == 2
    res = T.evaluate_dataset(params, rolls, "valid", batch_size=stored.eval_batch_size)
    valid = valid_records(tmp_path / "split")
    assert res["nll"] == pytest.approx(valid[-1]["nll"], rel=1e-12) and res["ppl"] is None
    with pytest.raises(ValueError, match="sampling needs a word or character model"):
        T.sample(params, rolls)


@pytest.mark.parametrize("cell", CELLS)
def test_the_trainer_drops_out_in_every_layer(tiny, rolls, tmp_path, monkeypatch, cell):
    """Each layer gets its own input and state masks in training (the resume test cannot see
    a layer trained without dropout: both runs would miss it alike)."""
    seen = []
    for name in ("lm_loss_and_grads", "dense_loss_and_grads"):
        def spy(params, xs, targets, s0, masks=None, *a, _f=getattr(lm, name), **kw):
            seen.append((masks, tuple(s0.shape)))
            return _f(params, xs, targets, s0, masks, *a, **kw)
        monkeypatch.setattr(lm, name, spy)
    for ds, kw in ((tiny, {}), (rolls, dict(dataset="tinyjsb", emb=None, batch_size=3, drop_x=0.0))):
        seen.clear()
        run(tiny_cfg(cell=cell, layers=2, max_steps=2, eval_every=2, **kw), ds, tmp_path / ds.name).run()
        assert len(seen) == 2
        for masks, s_shape in seen:
            Bn = s_shape[1]
            assert s_shape == (2, Bn, 12)
            for key in ("i", "h", "o", "layer2.i", "layer2.h"):
                assert masks[key] is not None and masks[key].shape[0] == Bn, key
            assert masks["layer2.i"].shape == masks["layer2.h"].shape == (Bn, 12)
            assert not np.array_equal(masks["layer2.h"], masks["h"])  # drawn afresh
        seen.clear()
        run(tiny_cfg(cell=cell, layers=2, max_steps=1, eval_every=1, drop_i=0.0, drop_h=0.0, **kw), ds,
            tmp_path / f"{ds.name}-nodrop").run()
        (masks, _), = seen
        assert masks["i"] is masks["h"] is masks["layer2.i"] is masks["layer2.h"] is None


@pytest.mark.parametrize("cell", ["dt_rnn", "dts_rnn"])
def test_the_baselines_learn_a_markov_chain(tiny, tmp_path, cell):
    cfg = tiny_cfg(cell=cell, optimizer="adam", lr=0.02, max_steps=60, eval_every=60, drop_x=0.0, drop_i=0.0,
                   drop_h=0.0, drop_o=0.0, lr_decay=1.0, weight_decay=0.0, clip=10.0, dtype="float32", hidden=32,
                   emb=9, batch_size=16)
    tr = run(cfg, tiny, tmp_path)
    before = T.evaluate_dataset(tr.params, tiny, "valid", batch_size=3, bptt=7)["nll"]
    assert before == pytest.approx(math.log(9), abs=0.05)  # small weights: near uniform
    tr.run()
    (after,) = [r["nll"] for r in T.read_metrics(tmp_path) if r["split"] == "valid"]
    assert after < before - 0.4, (before, after)


# ----------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pydoc(data_home):
    return data.load("pydoc")


def _config_of(capsys):
    out = capsys.readouterr().out
    return json.loads(out)


def test_cli_print_config_shows_the_cell_layers_and_size(pydoc, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--cell", "dt_rnn", "--layers", "2", "--dataset", "pydoc", "--print-config"]) == 0
    cfg = _config_of(capsys)
    n_params = cfg.pop("n_params")
    assert cfg["cell"] == "dt_rnn" and cfg["layers"] == 2 and isinstance(n_params, int)
    assert n_params == tasks.count_params(T.Config(**cfg), pydoc)
    assert n_params == n_entries(tasks.init_model(T.Config(**cfg), pydoc))
    assert cli.main(["train", "--cell", "dts_rnn", "--dataset", "pydoc", "--print-config"]) == 0
    cfg2 = _config_of(capsys)
    assert cfg2["cell"] == "dts_rnn" and cfg2["layers"] == 1 and cfg2["n_params"] > 0
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_cli_params_resolves_the_width_and_refuses_a_width_too(pydoc, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--params", "20000", "--hidden", "10", "--print-config"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0] == ("rhn-np train: error: give the width (--hidden) or a parameter budget "
                                            "(--params), not both")
    for argv in (["--params", "20000"], ["--params", "20000", "--cell", "dts_rnn", "--layers", "2", "--depth", "2"]):
        assert cli.main(["train", "--dataset", "pydoc", *argv, "--print-config"]) == 0
        cfg = _config_of(capsys)
        n_params, n = cfg.pop("n_params"), cfg["hidden"]
        c = T.Config(**cfg)
        assert cfg["params"] == 20000 and n_params == tasks.count_params(c, pydoc)
        for w in (n - 1, n + 1):
            assert abs(tasks.count_params(c, pydoc, w) - 20000) >= abs(n_params - 20000), (argv, n, w)
        assert abs(n_params - 20000) / 20000 < 0.05
    assert list(tmp_path.iterdir()) == []


def test_cli_trains_resumes_evaluates_and_samples_a_two_layer_baseline(pydoc, tmp_path, monkeypatch, capsys):
    """A real (tiny) run on pydoc: the run keeps its cell and layers through resume, evaluate and sample."""
    monkeypatch.chdir(tmp_path)
    common = ["--quiet", "--work-dir", "w"]
    rc = cli.main(["train", "--dataset", "pydoc", "--cell", "dts_rnn", "--layers", "2", "--depth", "2", "--hidden",
                   "16", "--batch-size", "4", "--bptt", "10", "--max-steps", "3", "--eval-every", "3",
                   "--eval-batch-size", "64", "--sample-length", "20", *common])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "2 layers of dts_rnn, depth 2, 16 units" in out and "sample (best checkpoint" in out
    params, cfg, meta = T.load_run(tmp_path / "w")
    assert (cfg.cell, cfg.layers, meta["step"]) == ("dts_rnn", 2, 3)
    assert f"{n_entries(params):,} parameters" in out
    assert cli.main(["train", "--resume", "--cell", "rhn", "--quiet", "--work-dir", "w"]) == 1
    assert "cell (--cell) was 'dts_rnn' and cannot change to 'rhn'" in capsys.readouterr().err
    assert cli.main(["train", "--resume", "--layers", "1", "--quiet", "--work-dir", "w"]) == 1
    assert "layers (--layers) was 2 and cannot change to 1" in capsys.readouterr().err
    assert cli.main(["train", "--resume", "--max-steps", "4", "--sample-length", "0", *common]) == 0
    assert "resuming w at step 3" in capsys.readouterr().out
    _, cfg, meta = T.load_run(tmp_path / "w", "latest")
    assert (cfg.cell, cfg.layers, meta["step"]) == ("dts_rnn", 2, 4)
    assert cli.main(["evaluate", "--work-dir", "w", "--checkpoint", "latest", "--quiet"]) == 0
    assert "pydoc valid" in capsys.readouterr().out
    records = T.read_metrics(tmp_path / "w")
    last_valid = [r for r in records if r["split"] == "valid"][-1]
    assert records[-1]["step"] == 4 and records[-1]["nll"] == pytest.approx(last_valid["nll"], rel=1e-6)  # float32
    assert cli.main(["sample", "--work-dir", "w", "--length", "30", "--prime", "def ", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("def ") and len(text.rstrip("\n")) >= 30


def test_cli_print_config_refuses_a_tied_model_whose_embedding_cannot_match_the_budget_width(pydoc, tmp_path,
                                                                                               monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--dataset", "pydoc", "--tied", "--emb", "50", "--params", "20000"]
    rc_train = cli.main([*argv, "--max-steps", "1", "--quiet", "--sample-length", "0", "--work-dir", "w"])
    err = capsys.readouterr().err
    assert rc_train == 1 and "emb == hidden" in err and len(err.strip().splitlines()) == 1  # refused, in one line
    assert cli.main([*argv, "--print-config"]) == 1  # and so is the configuration it would train
    assert "leave --emb unset" in capsys.readouterr().err
