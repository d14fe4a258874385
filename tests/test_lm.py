"""Language-model pieces (rhn_np.lm): losses, masks, embedding, the whole-window models.

Numbers are compared in float64. Gradients are checked against central differences
over every entry (rhn_np.gradcheck) at tiny sizes: V = 7, n_emb = n = 4, depth 2,
T = 3, B = 2.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import BACKENDS, LAYER_BACKENDS, check_dense_gradients, host, on
from rhn_np import backend, gradcheck, lm, rhn

GRAD_TOL = 1e-6  # central differences, float64, h = 1e-5
SAME = 1e-12  # the same float64 computation on two backends

V, N, DEPTH, T, B = 7, 4, 2, 3, 2
IDS = np.array([[1, 2], [1, 5], [3, 2]])  # (T, B): token 1 twice in row 0, token 2 twice in row 1
TARGETS = np.array([[4, 0], [6, 2], [1, 1]])
KEEP = dict(keep_x=0.6, keep_i=0.7, keep_h=0.6, keep_o=0.7)


def lm_case(*, tied, masks=True, coupled=True, n_emb=N, weights=False, seed=0):
    """Float64 host inputs of one word-model window (params, ids, targets, s0, masks, ds_last, weights)."""
    params = lm.init_lm_params(V, n_emb, N, DEPTH, tied=tied, coupled=coupled, init_scale=0.5,
                               transform_bias=-0.5, seed=seed, dtype="float64")
    rng = np.random.default_rng(seed + 100)
    s0 = 0.5 * np.tanh(rng.standard_normal((B, N)))
    ds_last = rng.standard_normal((B, N))
    w = rng.uniform(0.0, 2.0, (T, B)) if weights else None
    m = None
    if masks:
        m = lm.draw_masks(seed, IDS, vocab=V, n_emb=n_emb, n=N, **KEEP, dtype="float64")
        assert all(v is not None for v in m.values())
    return params, IDS.copy(), TARGETS.copy(), s0, m, ds_last, w


def lm_objective(params, ids, targets, s0, masks, ds_last, weights):
    """The scalar whose gradients lm_loss_and_grads returns: loss + ⟨ds_last, s_last⟩."""
    loss, _, s_last, _ = lm.lm_loss_and_grads(params, ids, targets, s0, masks, weights=weights)
    return float(loss) + float(np.sum(s_last * ds_last))


# ----------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------
def test_init_lm_params_shapes_ranges_and_draw_order():
    p = lm.init_lm_params(V, 3, N, DEPTH, seed=5, dtype="float64")
    layer = rhn.init_params(3, N, DEPTH, seed=5, dtype="float64")
    assert set(p) == set(layer) | {"E", "W_out", "b_out"}
    for k in layer:  # the RHN part is drawn first, exactly as rhn.init_params
        assert np.array_equal(p[k], layer[k]), k
    assert p["E"].shape == (V, 3) and p["W_out"].shape == (N, V) and p["b_out"].shape == (V,)
    for k in ("E", "W_out", "b_out"):
        assert np.all(np.abs(p[k]) <= 0.04) and np.std(p[k]) > 0.01, k
    assert np.all(p["b_T"] == -2.0)
    # explicit draw order: RHN, E, b_out, W_out
    rng = np.random.default_rng(5)
    rhn.init_params(3, N, DEPTH, seed=rng, dtype="float64")
    assert np.array_equal(p["E"], rng.uniform(-0.04, 0.04, (V, 3)))
    assert np.array_equal(p["b_out"], rng.uniform(-0.04, 0.04, (V,)))
    assert np.array_equal(p["W_out"], rng.uniform(-0.04, 0.04, (N, V)))


def test_init_lm_params_tied():
    untied = lm.init_lm_params(V, N, N, DEPTH, seed=1, dtype="float64")
    tied = lm.init_lm_params(V, N, N, DEPTH, tied=True, seed=1, dtype="float64")
    assert set(tied) == set(untied) - {"W_out"}
    for k in tied:
        assert np.array_equal(tied[k], untied[k]), k
    with pytest.raises(ValueError, match="n_emb == n"):
        lm.init_lm_params(V, 3, N, DEPTH, tied=True)


def test_init_dense_params():
    p = lm.init_dense_params(5, N, DEPTH, seed=2, dtype="float64")
    layer = rhn.init_params(5, N, DEPTH, seed=2, dtype="float64")
    for k in layer:
        assert np.array_equal(p[k], layer[k]), k
    assert p["W_out"].shape == (N, 5) and p["b_out"].shape == (5,) and "E" not in p
    assert lm.init_dense_params(5, N, DEPTH, n_out=3)["W_out"].shape == (N, 3)


# ----------------------------------------------------------------------------
# Dropout masks
# ----------------------------------------------------------------------------
def test_word_type_mask_shares_values_within_a_row():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 5, (20, 4))  # many repeats per row
    varied = False
    for seed in range(20):
        m = lm.draw_masks(seed, ids, vocab=5, n_emb=3, n=3, keep_x=0.5, dtype="float64")["x"]
        assert m.shape == (20, 4, 1)
        assert set(np.unique(m)) <= {0.0, 2.0}
        for b in range(4):
            for t1 in range(20):
                for t2 in range(20):
                    if ids[t1, b] == ids[t2, b]:
                        assert m[t1, b, 0] == m[t2, b, 0], (seed, b, t1, t2)
            varied |= len(np.unique(m[:, b, 0])) > 1
    assert varied, "different tokens of a row must get independent values"


def test_word_type_mask_rows_are_independent():
    ids = np.tile(np.arange(6)[:, None], (1, 2))  # both rows hold the same tokens
    rng = np.random.default_rng(3)
    agree = [lm.draw_masks(rng, ids, vocab=6, n_emb=2, n=2, keep_x=0.5)["x"] for _ in range(300)]
    agree = np.mean([np.mean(m[:, 0, 0] == m[:, 1, 0]) for m in agree])
    assert 0.42 < agree < 0.58  # independent rows agree half the time; shared rows always


def test_mask_keep_rates_shapes_and_none():
    ids = np.arange(2000).reshape(50, 40)  # all distinct: one draw per position
    m = lm.draw_masks(7, ids, vocab=2000, n_emb=30, n=25, keep_x=0.75, keep_i=0.25, keep_h=0.75, keep_o=0.25,
                      dtype="float64")
    assert m["x"].shape == (50, 40, 1) and m["i"].shape == (40, 30)
    assert m["h"].shape == (40, 25) and m["o"].shape == (40, 25)
    for k, keep in (("x", 0.75), ("i", 0.25), ("h", 0.75), ("o", 0.25)):
        assert set(np.unique(m[k])) == {0.0, 1.0 / keep}, k
        sd = math.sqrt(keep * (1 - keep) / m[k].size)
        assert abs(np.mean(m[k] > 0) - keep) < 4 * sd, k
    none = lm.draw_masks(7, ids, vocab=2000, n_emb=30, n=25, keep_x=1.0, keep_h=0.5)
    assert none["x"] is None and none["i"] is None and none["o"] is None and none["h"].shape == (40, 25)
    assert none["h"].dtype == np.float32
    dense = lm.draw_dense_masks(0, 3, n_in=5, n=4, keep_i=0.5, keep_o=0.5)
    assert set(dense) == {"i", "h", "o"} and dense["i"].shape == (3, 5) and dense["h"] is None
    with pytest.raises(ValueError, match="keep"):
        lm.draw_masks(0, ids, vocab=2000, n_emb=2, n=2, keep_x=0.0)
    with pytest.raises(ValueError, match="vocab"):
        lm.draw_masks(0, ids, vocab=10, n_emb=2, n=2)


@pytest.mark.parametrize("name", BACKENDS)
def test_masks_identical_on_every_backend(name):
    be = backend.get(name)
    ref = lm.draw_masks(11, IDS, vocab=V, n_emb=N, n=N, **KEEP, dtype="float64")
    got = lm.draw_masks(11, on(be, IDS, None), vocab=V, n_emb=N, n=N, **KEEP, dtype="float64", backend=be)
    for k in ref:
        assert backend.name_of(got[k]) == be.name
        assert np.array_equal(host(got[k]), ref[k]), k


# ----------------------------------------------------------------------------
# Embedding
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKENDS)
def test_embedding_scatter_add_with_repeated_ids(name):
    be = backend.get(name)
    rng = np.random.default_rng(4)
    E = rng.standard_normal((5, 3))
    ids = np.array([[1, 1], [3, 1], [0, 1]])  # id 1 four times
    word_mask = rng.uniform(0.5, 1.5, (3, 2, 1))
    dX = rng.standard_normal((3, 2, 3))
    expected_X = E[ids] * word_mask
    expected_dE = np.zeros((5, 3))
    for t in range(3):
        for b in range(2):
            expected_dE[ids[t, b]] += dX[t, b] * word_mask[t, b, 0]
    X = lm.embedding_forward(on(be, E), on(be, ids, None), on(be, word_mask))
    dE = lm.embedding_backward(on(be, dX), on(be, ids, None), (5, 3), on(be, word_mask))
    assert np.allclose(host(X), expected_X, rtol=SAME, atol=SAME)
    assert np.allclose(host(dE), expected_dE, rtol=SAME, atol=SAME)
    assert np.all(host(dE)[[2, 4]] == 0.0)
    # (T, B) masks are accepted too
    X2 = lm.embedding_forward(on(be, E), on(be, ids, None), on(be, word_mask[:, :, 0]))
    assert np.allclose(host(X2), expected_X, rtol=SAME, atol=SAME)


def test_embedding_rejects_bad_ids():
    E = np.zeros((5, 3))
    with pytest.raises(ValueError, match="vocab"):
        lm.embedding_forward(E, np.array([[5]]))
    with pytest.raises(TypeError, match="integer"):
        lm.embedding_forward(E, np.array([[1.0]]))


# ----------------------------------------------------------------------------
# Softmax cross-entropy
# ----------------------------------------------------------------------------
def naive_ce(logits, targets, weights=None):
    p = np.exp(logits) / np.sum(np.exp(logits), axis=-1, keepdims=True)
    Tn, Bn = targets.shape
    nll = -np.log(p[np.arange(Tn)[:, None], np.arange(Bn)[None, :], targets])
    w = np.ones((Tn, Bn)) if weights is None else weights
    return np.sum(nll * w) / Bn


def test_softmax_ce_matches_naive_formula_and_numerical_gradient():
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((T, B, V)) * 3
    weights = rng.uniform(0, 2, (T, B))
    for w in (None, weights):
        loss, dlogits = lm.softmax_cross_entropy(logits, TARGETS, w)
        assert float(loss) == pytest.approx(naive_ce(logits, TARGETS, w), rel=1e-12)
        num = gradcheck.numerical_gradient(lambda z: float(lm.softmax_cross_entropy(z, TARGETS, w)[0]), logits)
        assert gradcheck.rel_error(dlogits, num) < GRAD_TOL
    nll = lm.softmax_nll(logits, TARGETS)
    assert nll.shape == (T, B)
    assert float(np.sum(nll)) / B == pytest.approx(naive_ce(logits, TARGETS), rel=1e-12)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.uint32, np.int64])
def test_losses_do_not_depend_on_the_integer_type_of_the_ids(dtype):
    """Token ids are often stored narrow (uint8 bytes, uint16 words); the flat index
    T·B·V of the picked log-probabilities must not wrap around in their type."""
    rng = np.random.default_rng(7)
    Tn, Bn, Vn = 40, 20, 100  # T·B·V = 80,000 > 2**16: index arithmetic in 8 or 16 bits wraps
    logits = rng.standard_normal((Tn, Bn, Vn))
    targets = rng.integers(0, Vn, (Tn, Bn))
    loss, dlogits = lm.softmax_cross_entropy(logits, targets.astype(dtype))
    assert float(loss) == pytest.approx(naive_ce(logits, targets), rel=1e-12)
    _, dref = lm.softmax_cross_entropy(logits, targets)
    np.testing.assert_array_equal(dlogits, dref)
    assert float(np.sum(lm.softmax_nll(logits, targets.astype(dtype)))) / Bn == pytest.approx(float(loss), rel=1e-12)


def test_loss_scale_sums_over_time_and_averages_over_batch():
    # uniform logits: every token costs log V; loss = T·log V (not T·B·log V, not log V)
    loss, _ = lm.softmax_cross_entropy(np.zeros((3, 2, 4)), np.zeros((3, 2), dtype=np.int64))
    assert float(loss) == pytest.approx(3 * math.log(4), rel=1e-14)
    # by hand: row 0 predicts token 1 with p = 3/4, row 1 token 0 with p = 1/2, two steps
    logits = np.array([[[0.0, math.log(3.0)], [0.0, 0.0]]] * 2)  # (T=2, B=2, V=2)
    targets = np.array([[1, 0], [1, 0]])
    loss, dlogits = lm.softmax_cross_entropy(logits, targets)
    assert float(loss) == pytest.approx(math.log(8 / 3), rel=1e-14)  # 2 · (ln 4/3 + ln 2) / 2
    assert np.allclose(dlogits[0, 0], [0.25 / 2, -0.25 / 2]) and np.allclose(dlogits[0, 1], [-0.25, 0.25])


def test_softmax_ce_is_stable_for_huge_logits():
    rng = np.random.default_rng(6)
    small = rng.standard_normal((T, B, V))
    ref, dref = lm.softmax_cross_entropy(small, TARGETS)
    big, dbig = lm.softmax_cross_entropy(small + 1e4, TARGETS)  # softmax is shift invariant
    assert float(big) == pytest.approx(float(ref), rel=1e-9) and np.allclose(dbig, dref, atol=1e-9)
    spread = np.array([[[1e4, 0.0, -1e4]]])
    for target, nll in ((0, 0.0), (1, 1e4), (2, 2e4)):
        loss, dl = lm.softmax_cross_entropy(spread, np.array([[target]]))
        assert float(loss) == pytest.approx(nll, abs=1e-9)
        expect = np.array([1.0, 0.0, 0.0])
        expect[target] -= 1.0
        assert np.all(np.isfinite(dl)) and np.allclose(dl[0, 0], expect)


# ----------------------------------------------------------------------------
# Sigmoid-Bernoulli NLL (piano rolls)
# ----------------------------------------------------------------------------
def naive_bernoulli(z, y, mask):
    p = 1.0 / (1.0 + np.exp(-z))
    nll = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return np.sum(np.sum(nll, axis=-1) * mask) / z.shape[1]


def test_sigmoid_bernoulli_matches_naive_with_padding_and_gradient():
    rng = np.random.default_rng(7)
    z = rng.standard_normal((4, 3, 5)) * 3
    y = (rng.random((4, 3, 5)) < 0.3).astype(np.float64)
    mask = np.ones((4, 3))
    mask[2:, 1] = 0.0  # sequence 1 is two steps long
    mask[3, 2] = 0.0
    for m in (None, mask):
        loss, dz = lm.sigmoid_bernoulli_nll(z, y, m)
        assert float(loss) == pytest.approx(naive_bernoulli(z, y, np.ones((4, 3)) if m is None else m), rel=1e-12)
        num = gradcheck.numerical_gradient(lambda a: float(lm.sigmoid_bernoulli_nll(a, y, m)[0]), z)
        assert gradcheck.rel_error(dz, num) < GRAD_TOL
    loss, dz = lm.sigmoid_bernoulli_nll(z, y, mask)
    assert np.all(dz[2:, 1] == 0.0) and np.all(dz[3, 2] == 0.0)
    z2 = z.copy()
    z2[2:, 1] += 100.0  # padded steps do not count
    assert float(lm.sigmoid_bernoulli_nll(z2, y, mask)[0]) == pytest.approx(float(loss), rel=1e-14)
    # integer / bool targets are accepted
    assert float(lm.sigmoid_bernoulli_nll(z, y.astype(bool), mask)[0]) == pytest.approx(float(loss), rel=1e-14)


def test_sigmoid_bernoulli_is_stable_for_huge_logits():
    z = np.array([[[1e4, -1e4, 1e4, -1e4]]])
    y = np.array([[[1.0, 0.0, 0.0, 1.0]]])
    loss, dz = lm.sigmoid_bernoulli_nll(z, y)
    assert float(loss) == pytest.approx(2e4, rel=1e-14)
    assert np.array_equal(dz, np.array([[[0.0, 0.0, 1.0, -1.0]]]))


# ----------------------------------------------------------------------------
# The whole word model
# ----------------------------------------------------------------------------
def test_lm_runs_the_layer_it_is_given():
    """``layer=`` (a CapturedLayer on a GPU) replaces rhn.forward and rhn.backward, and
    lm_backward finds it in the cache; the results are those of the module functions."""
    calls = []

    class Counted:  # rhn's own functions, counted
        def forward(self, params, xs, s0, masks=None):
            calls.append("forward")
            return rhn.forward(params, xs, s0, masks)

        def backward(self, params, cache, dys, ds_last=None):
            calls.append("backward")
            return rhn.backward(params, cache, dys, ds_last)

    params, ids, targets, s0, m, ds_last, w = lm_case(tied=True, masks=True, coupled=True, weights=False)
    want = lm.lm_loss_and_grads(params, ids, targets, s0, m, ds_last=ds_last)
    got = lm.lm_loss_and_grads(params, ids, targets, s0, m, ds_last=ds_last, layer=Counted())
    assert calls == ["forward", "backward"]
    assert float(got[0]) == float(want[0])
    np.testing.assert_array_equal(got[2], want[2])
    for k in want[1]:
        np.testing.assert_array_equal(got[1][k], want[1][k], err_msg=k)


@pytest.mark.parametrize(
    "tied, masks, coupled, weights",
    [(False, True, True, False), (True, True, True, False), (True, False, True, False),
     (False, True, False, True), (True, True, False, True)],
    ids=["untied-masks", "tied-masks", "tied-nomasks", "untied-uncoupled-weights", "tied-uncoupled-weights"],
)
def test_lm_gradients_match_central_differences(tied, masks, coupled, weights):
    params, ids, targets, s0, m, ds_last, w = lm_case(tied=tied, masks=masks, coupled=coupled, weights=weights)
    loss, grads, s_last, stats = lm.lm_loss_and_grads(params, ids, targets, s0, m, weights=w, ds_last=ds_last)
    assert set(grads) == set(params)

    def f(_):
        return lm_objective(params, ids, targets, s0, m, ds_last, w)

    for k in params:
        assert grads[k].shape == params[k].shape, k
        err = gradcheck.rel_error(grads[k], gradcheck.numerical_gradient(f, params[k]))
        assert err < GRAD_TOL, (k, err)
    assert gradcheck.rel_error(stats["ds0"], gradcheck.numerical_gradient(f, s0)) < GRAD_TOL
    n_tokens = T * B if w is None else np.sum(w)
    assert float(stats["mean_nll"]) == pytest.approx(float(loss) * B / n_tokens, rel=1e-14)


def test_tied_embedding_gradient_sums_both_uses():
    params, ids, targets, s0, m, _, _ = lm_case(tied=True)
    _, grads, _, _ = lm.lm_loss_and_grads(params, ids, targets, s0, m)
    # the same model with the softmax weights as a separate copy of Eᵀ
    untied = dict(params, W_out=params["E"].T.copy())
    _, g2, _, _ = lm.lm_loss_and_grads(untied, ids, targets, s0, m)
    assert np.allclose(grads["E"], g2["E"] + g2["W_out"].T, rtol=SAME, atol=SAME)
    assert not np.allclose(grads["E"], g2["E"])


def test_lm_forward_is_the_documented_composition():
    # n_emb != n, so that swapping the i and h masks could not go unnoticed
    params, ids, targets, s0, m, _, _ = lm_case(tied=False, n_emb=3)
    logits, s_last, _ = lm.lm_forward(params, ids, s0, m)
    layer = {k: v for k, v in params.items() if k not in ("E", "W_out", "b_out")}
    X = params["E"][ids] * m["x"]
    ys, _ = rhn.forward(layer, X, s0, {"x": m["i"], "s": m["h"]})
    expected = (ys * m["o"]) @ params["W_out"] + params["b_out"]
    assert np.allclose(logits, expected, rtol=SAME, atol=SAME)
    assert np.array_equal(s_last, ys[-1])  # the carried state is not output-masked
    with pytest.raises(ValueError, match="keys"):
        lm.lm_forward(params, ids, s0, {"s": m["h"]})


def test_state_carries_across_windows():
    params, _, _, s0, _, _, _ = lm_case(tied=True)
    ids = np.random.default_rng(8).integers(0, V, (6, B))
    full, s_full = lm.lm_logits(params, ids, s0)
    first, s_mid = lm.lm_logits(params, ids[:3], s0)
    second, s_end = lm.lm_logits(params, ids[3:], s_mid)
    assert np.allclose(full, np.concatenate([first, second]), rtol=SAME, atol=SAME)
    assert np.allclose(s_full, s_end, rtol=SAME, atol=SAME)
    nll, _ = lm.lm_nll(params, ids[:3], TARGETS, s0)
    loss, _, _, stats = lm.lm_loss_and_grads(params, ids[:3], TARGETS, s0)
    assert float(stats["mean_nll"]) == pytest.approx(float(np.mean(nll)), rel=1e-12)


@pytest.mark.parametrize("name", LAYER_BACKENDS)
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_lm_on_every_backend_matches_numpy(name, tied):
    be = backend.get(name)
    params, ids, targets, s0, m, ds_last, w = lm_case(tied=tied, weights=True)
    ref = lm.lm_loss_and_grads(params, ids, targets, s0, m, weights=w, ds_last=ds_last)
    got = lm.lm_loss_and_grads(on(be, params), on(be, ids, None), on(be, targets, None), on(be, s0), on(be, m),
                               weights=on(be, w), ds_last=on(be, ds_last))
    assert float(got[0]) == pytest.approx(float(ref[0]), rel=SAME)
    for k in params:
        assert backend.name_of(got[1][k]) == be.name
        assert np.allclose(host(got[1][k]), ref[1][k], rtol=SAME, atol=SAME), k
    assert np.allclose(host(got[2]), ref[2], rtol=SAME, atol=SAME)
    assert float(got[3]["mean_nll"]) == pytest.approx(float(ref[3]["mean_nll"]), rel=SAME)


@pytest.mark.parametrize("name", BACKENDS)
def test_losses_on_every_backend_match_numpy(name):
    be = backend.get(name)
    rng = np.random.default_rng(9)
    logits = rng.standard_normal((T, B, V))
    w = rng.uniform(0, 1, (T, B))
    for ref, got in zip(lm.softmax_cross_entropy(logits, TARGETS, w),
                        lm.softmax_cross_entropy(on(be, logits), on(be, TARGETS, None), on(be, w))):
        assert np.allclose(host(got), ref, rtol=SAME, atol=SAME)
    y = (rng.random((T, B, V)) < 0.5).astype(np.float64)
    mask = np.array([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    for ref, got in zip(lm.sigmoid_bernoulli_nll(logits, y, mask),
                        lm.sigmoid_bernoulli_nll(on(be, logits), on(be, y), on(be, mask))):
        assert np.allclose(host(got), ref, rtol=SAME, atol=SAME)


# ----------------------------------------------------------------------------
# The dense-input model (piano rolls)
# ----------------------------------------------------------------------------
def dense_case(seed=0, masks=True):
    K = 5  # keys (88 for JSB)
    params = lm.init_dense_params(K, N, DEPTH, init_scale=0.5, transform_bias=-0.5, seed=seed, dtype="float64")
    rng = np.random.default_rng(seed + 200)
    xs = (rng.random((T, B, K)) < 0.4).astype(np.float64)
    targets = (rng.random((T, B, K)) < 0.4).astype(np.float64)
    s0 = 0.5 * np.tanh(rng.standard_normal((B, N)))
    ds_last = rng.standard_normal((B, N))
    step_mask = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    m = lm.draw_dense_masks(seed, B, n_in=K, n=N, keep_i=0.7, keep_h=0.6, keep_o=0.7, dtype="float64") if masks else None
    return params, xs, targets, s0, m, ds_last, step_mask


def test_dense_model_gradients_match_central_differences():
    params, xs, targets, s0, m, ds_last, step_mask = dense_case()
    loss, grads, s_last, stats = check_dense_gradients(params, xs, targets, s0, m, step_mask, ds_last, GRAD_TOL)
    assert float(stats["nll_per_step"]) == pytest.approx(float(loss) * B / 5.0, rel=1e-14)
    # composition: RHN straight on the inputs, output mask, linear read-out
    layer = {k: v for k, v in params.items() if k not in ("W_out", "b_out")}
    ys, _ = rhn.forward(layer, xs, s0, {"x": m["i"], "s": m["h"]})
    logits, _, _ = lm.dense_forward(params, xs, s0, m)
    assert np.allclose(logits, (ys * m["o"]) @ params["W_out"] + params["b_out"], rtol=SAME, atol=SAME)
    with pytest.raises(ValueError, match="keys"):
        lm.dense_forward(params, xs, s0, {"x": np.ones((T, B, 1))})


@pytest.mark.parametrize("name", LAYER_BACKENDS)
def test_dense_model_on_every_backend_matches_numpy(name):
    be = backend.get(name)
    params, xs, targets, s0, m, ds_last, step_mask = dense_case(seed=1)
    ref = lm.dense_loss_and_grads(params, xs, targets, s0, m, step_mask=step_mask, ds_last=ds_last)
    got = lm.dense_loss_and_grads(on(be, params), on(be, xs), on(be, targets), on(be, s0), on(be, m),
                                  step_mask=on(be, step_mask), ds_last=on(be, ds_last))
    assert float(got[0]) == pytest.approx(float(ref[0]), rel=SAME)
    for k in params:
        assert np.allclose(host(got[1][k]), ref[1][k], rtol=SAME, atol=SAME), k
    logits, _ = lm.dense_logits(on(be, params), on(be, xs), on(be, s0))
    assert np.allclose(host(logits), lm.dense_logits(params, xs, s0)[0], rtol=SAME, atol=SAME)
