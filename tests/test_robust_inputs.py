"""Malformed inputs get a clear error that names the argument; valid inputs keep their results.

The classes of silent wrong results and deep errors of the robustness audit, one table
each: NumPy array subclasses (``np.matrix``, where ``*`` is a matrix product; masked
arrays), NaN / infinity / negative values in parameters, masks, gradients and weights,
numbers that overflow the dtype once cast, seeds, booleans and enumerations, the
theory's matrices, and messages that use each function's own argument names. Every row
is ``(call, error type, fragment of the message)``, and some rows also name a fragment
the message must *not* hold (the name of another function's argument).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rhn_np import cells, checkpoint, checks, config, data, dtrnn, gradcheck, lm, optim, rhn, tasks, theory
from rhn_np import train as T

pytestmark = pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")  # np.matrix on purpose

# ----------------------------------------------------------------------------
# Small models and inputs (built once; no call below changes them in place)
# ----------------------------------------------------------------------------
N_IN, N, DEPTH, TT, B, V = 3, 4, 2, 5, 2, 7
P32 = rhn.init_params(N_IN, N, DEPTH, seed=1)
P64 = rhn.init_params(N_IN, N, DEPTH, seed=1, dtype="float64")
D32 = dtrnn.init_params(N_IN, N, DEPTH, seed=1)
RNG = np.random.default_rng(0)
XS = RNG.standard_normal((TT, B, N_IN)).astype(np.float32)
S0 = RNG.standard_normal((B, N)).astype(np.float32)
DYS = RNG.standard_normal((TT, B, N)).astype(np.float32)
MASKS = {"x": np.full((B, N_IN), 2.0, np.float32), "s": np.full((B, N), 2.0, np.float32)}
_, CACHE = rhn.forward(P32, XS, S0, MASKS)
_, D_CACHE = dtrnn.forward(D32, XS, S0)
_, STEP_CACHE = rhn.step_forward(P32, XS[0], S0)
_, D_STEP_CACHE = dtrnn.step_forward(D32, XS[0], S0)
LMP = lm.init_lm_params(V, N, N, DEPTH, seed=2)
IDS = RNG.integers(0, V, (TT, B))
DENSE = lm.init_dense_params(N_IN, N, DEPTH, seed=2)
LOGITS = RNG.standard_normal((TT, B, V)).astype(np.float32)
R_RNN = theory.rnn_init(N_IN, N, seed=0)


def with_(a, index, value):
    """A copy of ``a`` with one entry changed."""
    out = np.array(a, copy=True)
    out[index] = value
    return out


def params_with(params, key, index, value):
    return {**params, key: with_(params[key], index, value)}


def masked(a):
    return np.ma.masked_array(a, mask=np.zeros(a.shape, bool))


def tiny_dataset():
    s = np.random.default_rng(3).integers(0, 5, 600).astype(np.int32)
    return data.Dataset(name="mine", kind="tokens", train=s[:400], valid=s[400:500], test=s[500:],
                        vocab=list("abcd\n"), level="char")


TOKENS = tiny_dataset()
TOKEN_PARAMS = lm.init_lm_params(5, 5, N, DEPTH, seed=0)


# ----------------------------------------------------------------------------
# The tables: (id, call, error type, fragment[, fragment that must not appear])
# ----------------------------------------------------------------------------
SUBCLASSES = [
    ("rhn.forward s0 matrix", lambda: rhn.forward(P32, XS, np.asmatrix(S0)), TypeError, "s0 is a numpy.matrix"),
    ("rhn.forward param matrix", lambda: rhn.forward({**P32, "W_H": np.asmatrix(P32["W_H"])}, XS, S0), TypeError,
     "params['W_H'] is a numpy.matrix"),
    ("rhn.forward mask matrix", lambda: rhn.forward(P32, XS, S0, {"s": np.asmatrix(MASKS["s"])}), TypeError,
     "masks['s'] is a numpy.matrix"),
    ("rhn.forward xs masked", lambda: rhn.forward(P32, masked(XS), S0), TypeError, "xs is a numpy.ma"),
    ("rhn.forward fast s0 matrix", lambda: rhn.forward(P32, XS, np.asmatrix(S0), impl="reference"), TypeError,
     "s0 is a numpy.matrix"),
    ("rhn.backward dys masked", lambda: rhn.backward(P32, CACHE, masked(DYS)), TypeError, "dys is a numpy.ma"),
    ("rhn.backward ds_last matrix", lambda: rhn.backward(P32, CACHE, DYS, np.asmatrix(S0)), TypeError,
     "ds_last is a numpy.matrix"),
    ("rhn.step_forward x", lambda: rhn.step_forward(P32, np.asmatrix(XS[0]), S0), TypeError, "x is a numpy.matrix"),
    ("rhn.step_forward s_prev", lambda: rhn.step_forward(P32, XS[0], np.asmatrix(S0)), TypeError,
     "s_prev is a numpy.matrix"),
    ("rhn.step_backward ds", lambda: rhn.step_backward(P32, STEP_CACHE, np.asmatrix(S0)), TypeError,
     "ds is a numpy.matrix"),
    ("rhn.micro_forward a", lambda: rhn.micro_forward(np.asmatrix(np.zeros((B, 2 * N))), np.zeros((B, N))),
     TypeError, "a is a numpy.matrix"),
    ("rhn.micro_backward t", lambda: rhn.micro_backward(*(np.zeros((B, N)),) * 3, np.asmatrix(np.zeros((B, N)))),
     TypeError, "t is a numpy.matrix"),
    ("dtrnn.forward s0", lambda: dtrnn.forward(D32, XS, np.asmatrix(S0)), TypeError, "s0 is a numpy.matrix"),
    ("dtrnn.forward param", lambda: dtrnn.forward({**D32, "W": np.asmatrix(D32["W"])}, XS, S0), TypeError,
     "params['W'] is a numpy.matrix"),
    ("dtrnn.step_forward x", lambda: dtrnn.step_forward(D32, np.asmatrix(XS[0]), S0), TypeError,
     "x is a numpy.matrix"),
    ("dtrnn.step_backward ds", lambda: dtrnn.step_backward(D32, D_STEP_CACHE, masked(S0)), TypeError,
     "ds is a numpy.ma"),
    ("dtrnn.micro_backward z", lambda: dtrnn.micro_backward(np.zeros((B, N)), np.asmatrix(np.zeros((B, N)))),
     TypeError, "z is a numpy.matrix"),
    ("lm.lm_forward E", lambda: lm.lm_forward({**LMP, "E": np.asmatrix(LMP["E"])}, IDS, lm.zero_state(LMP, B)),
     TypeError, "params['E'] is a numpy.matrix"),
    ("lm.lm_forward W_out", lambda: lm.lm_forward({**LMP, "W_out": np.asmatrix(LMP["W_out"])}, IDS,
                                                  lm.zero_state(LMP, B)), TypeError, "params['W_out'] is a numpy"),
    ("lm.lm_forward ids", lambda: lm.lm_forward(LMP, np.asmatrix(IDS), lm.zero_state(LMP, B)), TypeError,
     "ids is a numpy.matrix"),
    ("lm.lm_forward mask o", lambda: lm.lm_forward(LMP, IDS, lm.zero_state(LMP, B),
                                                   {"o": np.asmatrix(np.ones((B, N), np.float32))}), TypeError,
     "masks['o'] is a numpy.matrix"),
    ("lm.lm_forward s0", lambda: lm.lm_forward(LMP, IDS, np.asmatrix(lm.zero_state(LMP, B))), TypeError,
     "s0 is a numpy.matrix"),
    ("lm.softmax_cross_entropy weights", lambda: lm.softmax_cross_entropy(LOGITS, IDS, np.asmatrix(np.ones((TT, B)))),
     TypeError, "weights is a numpy.matrix"),
    ("lm.output_forward W_out", lambda: lm.output_forward(DYS, np.asmatrix(LMP["W_out"]), LMP["b_out"]), TypeError,
     "W_out is a numpy.matrix"),
    ("lm.embedding_forward E", lambda: lm.embedding_forward(np.asmatrix(LMP["E"]), IDS), TypeError,
     "E is a numpy.matrix"),
    ("lm.draw_masks ids", lambda: lm.draw_masks(0, np.asmatrix(IDS), vocab=V, n_emb=N, n=N), TypeError,
     "ids is a numpy.matrix"),
    ("lm.dense_forward xs masked", lambda: lm.dense_forward(DENSE, masked(XS), lm.zero_state(DENSE, B)), TypeError,
     "xs is a numpy.ma"),
    ("optim.global_norm", lambda: optim.global_norm({"a": np.asmatrix(np.ones((2, 2)))}), TypeError,
     "grads['a'] is a numpy.matrix"),
    ("optim.SGD.step", lambda: optim.SGD(0.1).step({"a": np.ones((2, 2))}, {"a": np.asmatrix(np.ones((2, 2)))}),
     TypeError, "grads['a'] is a numpy.matrix"),
    ("theory.spectrum", lambda: theory.spectrum(np.asmatrix(np.eye(2))), TypeError, "M is a numpy.matrix"),
    ("theory.gersgorin_discs", lambda: theory.gersgorin_discs(masked(np.eye(2))), TypeError, "M is a numpy.ma"),
    ("theory.step_jacobian x", lambda: theory.step_jacobian(P32, np.asmatrix(XS[0]), S0), TypeError,
     "x is a numpy.matrix"),
    ("theory.rnn_step_forward R", lambda: theory.rnn_step_forward(np.asmatrix(R_RNN["R"]), R_RNN["W"], R_RNN["b"],
                                                                  XS[0].astype(np.float64), S0.astype(np.float64)),
     TypeError, "R is a numpy.matrix"),
    ("TokenBatches stream", lambda: tasks.TokenBatches(masked(TOKENS.train), 2, 5), TypeError,
     "stream is a numpy.ma"),
    ("SequenceBatches roll", lambda: tasks.SequenceBatches([np.zeros((3, 88)), np.asmatrix(np.zeros((3, 88)))], 2),
     TypeError, "sequences[1] is a numpy.matrix"),
    ("gradcheck.rhn_loss ds_last", lambda: gradcheck.rhn_loss(P64, XS.astype(np.float64), S0.astype(np.float64),
                                                            DYS.astype(np.float64), ds_last=np.asmatrix(S0)),
     TypeError, "ds_last is a numpy.matrix"),
    ("Dataset.decode ids", lambda: TOKENS.decode(masked(np.array([0, 1]))), TypeError, "ids is a numpy.ma"),
    ("gradcheck.rel_error", lambda: gradcheck.rel_error(np.asmatrix(np.eye(2)), np.eye(2)), TypeError,
     "x is a numpy.matrix"),
    ("gradcheck.numerical_gradient", lambda: gradcheck.numerical_gradient(np.sum, np.asmatrix(np.eye(2))), TypeError,
     "x is a numpy.matrix"),
]

NON_FINITE = [
    ("rhn.forward mask NaN", lambda: rhn.forward(P32, XS, S0, {"s": with_(MASKS["s"], (0, 1), np.nan)}), ValueError,
     "masks['s'] contains NaN or infinity"),
    ("rhn.forward mask negative", lambda: rhn.forward(P32, XS, S0, {"x": with_(MASKS["x"], (1, 0), -2.0)}),
     ValueError, "masks['x'] contains negative values"),
    ("rhn.forward s0 NaN hint", lambda: rhn.forward(P32, XS, with_(S0, (0, 0), np.nan)), ValueError,
     "s0 contains NaN or infinity; a state turns NaN when the parameters"),
    ("rhn.backward dys NaN", lambda: rhn.backward(P32, CACHE, with_(DYS, (2, 1, 0), np.nan)), ValueError,
     "dys contains NaN or infinity"),
    ("rhn.backward ds_last inf", lambda: rhn.backward(P32, CACHE, DYS, with_(S0, (1, 3), np.inf)), ValueError,
     "ds_last contains NaN or infinity"),
    ("rhn.step_backward ds NaN", lambda: rhn.step_backward(P32, STEP_CACHE, with_(S0, (0, 0), np.nan)), ValueError,
     "ds contains NaN", "dys"),
    ("rhn.step_forward x NaN", lambda: rhn.step_forward(P32, with_(XS[0], (0, 0), np.nan), S0), ValueError,
     "x contains NaN", "xs"),
    ("rhn.step_forward s_prev inf", lambda: rhn.step_forward(P32, XS[0], with_(S0, (0, 0), -np.inf)), ValueError,
     "s_prev contains NaN", "s0"),
    ("dtrnn.backward dys inf", lambda: dtrnn.backward(D32, D_CACHE, with_(DYS, (0, 0, 0), np.inf)), ValueError,
     "dys contains NaN or infinity"),
    ("dtrnn.step_backward ds NaN", lambda: dtrnn.step_backward(D32, D_STEP_CACHE, with_(S0, (1, 1), np.nan)),
     ValueError, "ds contains NaN", "dys"),
    ("lm mask x NaN", lambda: lm.lm_forward(LMP, IDS, lm.zero_state(LMP, B),
                                            {"x": with_(np.ones((TT, B, 1), np.float32), (0, 0, 0), np.nan)}),
     ValueError, "masks['x'] contains NaN or infinity"),
    ("lm mask o negative", lambda: lm.lm_forward(LMP, IDS, lm.zero_state(LMP, B),
                                                 {"o": with_(np.ones((B, N), np.float32), (0, 0), -1.0)}),
     ValueError, "masks['o'] contains negative values"),
    ("lm mask h NaN", lambda: lm.lm_forward(LMP, IDS, lm.zero_state(LMP, B),
                                            {"h": with_(np.ones((B, N), np.float32), (0, 0), np.nan)}),
     ValueError, "masks['h'] contains NaN or infinity"),
    ("lm weights NaN", lambda: lm.softmax_cross_entropy(LOGITS, IDS, with_(np.ones((TT, B)), (0, 0), np.nan)),
     ValueError, "weights contains NaN or infinity"),
    ("lm weights negative", lambda: lm.lm_loss_and_grads(LMP, IDS, IDS, lm.zero_state(LMP, B),
                                                         weights=with_(np.ones((TT, B)), (1, 1), -1.0)),
     ValueError, "weights contains negative values"),
    ("lm step_mask inf", lambda: lm.sigmoid_bernoulli_nll(LOGITS, np.zeros_like(LOGITS),
                                                          with_(np.ones((TT, B)), (0, 0), np.inf)),
     ValueError, "step_mask contains NaN or infinity"),
    ("lm word_mask NaN", lambda: lm.embedding_forward(LMP["E"], IDS, with_(np.ones((TT, B)), (0, 0), np.nan)),
     ValueError, "word_mask contains NaN or infinity"),
    ("lm_backward dlogits", lambda: lm.lm_backward(LMP, lm.lm_forward(LMP, IDS, lm.zero_state(LMP, B))[2],
                                                   with_(LOGITS, (0, 0, 0), np.nan)),
     ValueError, "dlogits contains NaN", "dys"),
    ("dense_backward dlogits", lambda: lm.dense_backward(DENSE, lm.dense_forward(DENSE, XS, lm.zero_state(DENSE, B))[2],
                                                         with_(XS, (0, 0, 0), np.inf)),
     ValueError, "dlogits contains NaN", "dys"),
    ("evaluate NaN weight", lambda: tasks.evaluate(params_with(TOKEN_PARAMS, "R_H", (1, 0, 0), np.nan), TOKENS.valid,
                                                   batch_size=2, bptt=5, level="char"),
     ValueError, "params['R_H'] contains NaN or infinity", "s0"),
    ("evaluate_sequences inf weight", lambda: tasks.evaluate_sequences(
        params_with(lm.init_dense_params(88, N, DEPTH), "W_out", (0, 0), np.inf), [np.zeros((4, 88))]),
     ValueError, "params['W_out'] contains NaN or infinity"),
    ("sample NaN weight", lambda: tasks.sample(params_with(TOKEN_PARAMS, "b_out", (0,), np.nan), TOKENS, length=3),
     ValueError, "params['b_out'] contains NaN or infinity"),
    ("theory.step_jacobian NaN weight", lambda: theory.step_jacobian(params_with(P32, "R_T", (0, 0, 0), np.nan),
                                                                     XS[0], S0), ValueError,
     "params['R_T'] contains NaN"),
    ("theory.jacobian_terms NaN weight", lambda: theory.jacobian_terms(params_with(P32, "b_H", (0, 0), np.inf),
                                                                       XS[0], S0), ValueError,
     "params['b_H'] contains NaN"),
    ("gradcheck.check_rhn NaN weight", lambda: gradcheck.check_rhn(params_with(P64, "W_T", (0, 0), np.nan),
                                                                   XS.astype(np.float64), S0.astype(np.float64),
                                                                   DYS.astype(np.float64)), ValueError,
     "params['W_T'] contains NaN"),
]

OVERFLOW = [
    ("rhn transform_bias f32", lambda: rhn.init_params(3, 4, 2, transform_bias=1e300), ValueError,
     "transform_bias must lie within"),
    ("rhn transform_bias inf", lambda: rhn.init_params(3, 4, 2, transform_bias=-math.inf, dtype="float64"),
     ValueError, "transform_bias must be a finite number"),
    ("rhn init_scale range", lambda: rhn.init_params(3, 4, 2, init_scale=1e308, dtype="float64"), ValueError,
     "init_scale must lie within"),
    ("rhn init_scale f32", lambda: rhn.init_params(3, 4, 2, init_scale=1e300), ValueError, "init_scale must lie within"),
    ("dtrnn init_scale f32", lambda: dtrnn.init_params(3, 4, 2, init_scale=1e39), ValueError,
     "init_scale must lie within"),
    ("lm transform_bias", lambda: lm.init_lm_params(V, N, N, DEPTH, transform_bias=-1e39), ValueError,
     "transform_bias must lie within"),
    ("lm dense init_scale", lambda: lm.init_dense_params(N_IN, N, DEPTH, cell="dt_rnn", init_scale=1e308,
                                                         dtype="float64"), ValueError, "init_scale must lie within"),
    ("Config transform_bias", lambda: config.Config(transform_bias=1e300).check(), ValueError,
     "transform_bias (--transform-bias) must lie within"),
    ("Config init_scale", lambda: config.Config(init_scale=1e308, dtype="float64").check(), ValueError,
     "init_scale (--init-scale) must lie within"),
    ("draw_masks 1/keep", lambda: lm.draw_masks(0, IDS, vocab=V, n_emb=N, n=N, keep_i=1e-39), ValueError,
     "1/keep_i must lie within"),
    ("draw_dense_masks 1/keep", lambda: lm.draw_dense_masks(0, B, n_in=N_IN, n=N, keep_o=1e-310, dtype="float64"),
     ValueError, "1/keep_o must lie within"),
    ("rnn_init init_std", lambda: theory.rnn_init(3, 4, init_std=1e300, dtype="float32"), ValueError,
     "init_std=1e+300 draws numbers that overflow float32"),
    ("Adam eps underflow", lambda: optim.Adam(eps=1e-50).step({"a": np.ones(2, np.float32)},
                                                              {"a": np.zeros(2, np.float32)}),
     ValueError, "eps must be >= 1.175e-38 with float32 parameters"),
    ("Adam lr overflow", lambda: optim.Adam(lr=1e300).step({"a": np.ones(2, np.float32)}, {"a": np.ones(2, np.float32)}),
     ValueError, "lr must lie within"),
    ("Config lr overflow", lambda: config.Config(lr=1e39).check(), ValueError, "lr (--lr) must lie within"),
    ("rnn_init init_std inf", lambda: theory.rnn_init(3, 4, init_std=math.inf), ValueError, "init_std must be"),
]

SEEDS_BOOLS_ENUMS = [
    ("rhn seed negative", lambda: rhn.init_params(3, 4, 2, seed=-1), ValueError, "seed must be an integer >= 0"),
    ("rhn seed fractional", lambda: rhn.init_params(3, 4, 2, seed=1.5), TypeError, "seed must be an integer >= 0"),
    ("rhn seed string", lambda: rhn.init_params(3, 4, 2, seed="0"), TypeError, "seed must be an integer >= 0"),
    ("rhn seed bool", lambda: rhn.init_params(3, 4, 2, seed=True), TypeError, "seed must be an integer"),
    ("rhn seed None", lambda: rhn.init_params(3, 4, 2, seed=None), TypeError, "seed must be an integer"),
    ("dtrnn seed", lambda: dtrnn.init_params(3, 4, 2, seed=-5), ValueError, "seed must be an integer >= 0"),
    ("lm seed", lambda: lm.init_lm_params(V, N, N, DEPTH, seed=2.0), TypeError, "seed must be an integer"),
    ("lm dense seed", lambda: lm.init_dense_params(N_IN, N, DEPTH, seed="x"), TypeError, "seed must be an integer"),
    ("draw_masks rng", lambda: lm.draw_masks(-1, IDS, vocab=V, n_emb=N, n=N), ValueError, "rng must be an integer"),
    ("draw_dense_masks rng", lambda: lm.draw_dense_masks(0.5, B, n_in=N_IN, n=N), TypeError, "rng must be an integer"),
    ("rnn_init seed", lambda: theory.rnn_init(3, 4, seed=-1), ValueError, "seed must be an integer >= 0"),
    ("sample seed", lambda: tasks.sample(TOKEN_PARAMS, TOKENS, length=3, seed="7"), TypeError,
     "seed must be an integer"),
    ("directional_check seed", lambda: gradcheck.directional_check(np.sum, np.ones(3), np.ones(3), seed=-2),
     ValueError, "seed must be an integer >= 0"),
    ("check_rhn seed", lambda: gradcheck.check_rhn(P64, XS.astype(np.float64), S0.astype(np.float64),
                                                   DYS.astype(np.float64), directional=True, seed=1.5), TypeError,
     "seed must be an integer"),
    ("Config seed", lambda: config.Config(seed=-1).check(), ValueError, "seed (--seed) must be an integer >= 0"),
    ("lm tied 'no'", lambda: lm.init_lm_params(V, N, N, DEPTH, tied="no"), TypeError, "tied must be True or False"),
    ("lm coupled 'no' dt_rnn", lambda: lm.init_lm_params(V, N, N, DEPTH, cell="dt_rnn", coupled="no"), TypeError,
     "coupled must be True or False"),
    ("lm dense coupled 1", lambda: lm.init_dense_params(N_IN, N, DEPTH, coupled=1), TypeError,
     "coupled must be True or False"),
    ("lm.param_shapes tied", lambda: lm.param_shapes("rhn", 3, 4, 2, 5, tied="yes"), TypeError,
     "tied must be True or False"),
    ("rhn.param_shapes coupled", lambda: rhn.param_shapes(3, 4, 2, coupled="no"), TypeError,
     "coupled must be True or False"),
    ("dtrnn.param_shapes shortcut", lambda: dtrnn.param_shapes(3, 4, 2, shortcut="no"), TypeError,
     "shortcut must be True or False"),
    ("cells.count_params tied", lambda: cells.count_params("rhn", 3, 4, 2, 5, tied="no"), TypeError,
     "tied must be True or False"),
    ("cells.count_params layers", lambda: cells.count_params("rhn", 3, 4, 2, 5, layers=0), ValueError,
     "layers must be >= 1"),
    ("cells.matched_width coupled", lambda: cells.matched_width("rhn", 2, 3, 5, 1000, coupled="no"), TypeError,
     "coupled must be True or False"),
    ("data.load download", lambda: data.load("ptb", download="no"), TypeError, "download must be True or False"),
    ("check_rhn directional", lambda: gradcheck.check_rhn(P64, XS.astype(np.float64), S0.astype(np.float64),
                                                          DYS.astype(np.float64), directional="yes"), TypeError,
     "directional must be True or False"),
    ("Config tied", lambda: config.Config(tied="no").check(), ValueError, "tied (--tied) must be True or False"),
    ("Dataset kind", lambda: data.Dataset(name="d", kind="words", train=[], valid=[], test=[], vocab=[], level="word"),
     ValueError, "Dataset kind must be 'tokens' or 'piano_roll', got 'words'"),
    ("Dataset level", lambda: data.Dataset(name="d", kind="tokens", train=[], valid=[], test=[], vocab=[],
                                           level="bits"), ValueError, "Dataset level must be 'word' or 'char'"),
    ("Dataset level of rolls", lambda: data.Dataset(name="d", kind="piano_roll", train=[], valid=[], test=[],
                                                    vocab=[], level="word"), ValueError, "Dataset level must be 'frame'"),
    ("evaluate level", lambda: tasks.evaluate(TOKEN_PARAMS, TOKENS.valid, batch_size=2, bptt=5, level="perplexity"),
     ValueError, "level must be 'word' or 'char', got 'perplexity'"),
    ("metrics level", lambda: tasks.metrics(1.0, "bogus"), ValueError, "level must be 'word', 'char' or 'frame'"),
    ("draw_masks dtype", lambda: lm.draw_masks(0, IDS, vocab=V, n_emb=N, n=N, keep_i=0.5, dtype="float16"),
     ValueError, "dtype must be float32 or float64"),
    ("draw_dense_masks dtype", lambda: lm.draw_dense_masks(0, B, n_in=N_IN, n=N, dtype="int8"), ValueError,
     "dtype must be float32 or float64"),
    ("state_shape batch", lambda: lm.zero_state(LMP, 0), ValueError, "batch must be >= 1"),
    ("numerical_gradient h", lambda: gradcheck.numerical_gradient(np.sum, np.ones(2), h=0.0), ValueError,
     "h must be a finite number > 0"),
    ("rnn_norm_bound gamma", lambda: theory.rnn_norm_bound(np.eye(2), gamma="1"), TypeError, "gamma must be a number"),
    ("rnn_norm_bound gamma NaN", lambda: theory.rnn_norm_bound(np.eye(2), gamma=math.nan), ValueError,
     "gamma must be a finite number"),
]

THEORY = [
    ("spectrum NaN", lambda: theory.spectrum(np.array([[np.nan, 1.0], [1.0, 1.0]])), ValueError,
     "M contains NaN or infinity"),
    ("spectrum 1-D", lambda: theory.spectrum(np.zeros(3)), ValueError, "M must have shape (..., n, n), got shape (3,)"),
    ("spectrum non-square", lambda: theory.spectrum(np.zeros((2, 3))), ValueError, "M must be square"),
    ("spectrum None", lambda: theory.spectrum(None), TypeError, "M must be an array of shape (..., n, n), got NoneType"),
    ("spectrum empty", lambda: theory.spectrum(np.zeros((0, 0))), ValueError, "M must have no empty axis"),
    ("spectral_radius empty", lambda: theory.spectral_radius(np.zeros((3, 0, 0))), ValueError,
     "M must have no empty axis"),
    ("spectral_radius inf", lambda: theory.spectral_radius(np.full((2, 2), np.inf)), ValueError, "M contains NaN"),
    ("singular_values None", lambda: theory.singular_values(None), TypeError, "M must be an array"),
    ("singular_values 1-D", lambda: theory.singular_values(np.ones(4)), ValueError, "M must have shape"),
    ("singular_values empty", lambda: theory.singular_values(np.zeros((0, 3))), ValueError, "no empty axis"),
    ("singular_values NaN", lambda: theory.singular_values(np.array([[1.0, np.nan]])), ValueError, "M contains NaN"),
    ("lag_norms 1-D", lambda: theory.lag_norms(np.ones(3)), ValueError, "P must have shape"),
    ("gersgorin None", lambda: theory.gersgorin_discs(None), TypeError, "M must be an array"),
    ("gersgorin 1-D", lambda: theory.gersgorin_discs(np.ones(3)), ValueError, "M must have shape"),
    ("gersgorin NaN", lambda: theory.gersgorin_discs(np.array([[1.0, np.nan], [0.0, 1.0]])), ValueError,
     "M contains NaN"),
    ("gersgorin non-square", lambda: theory.gersgorin_discs(np.ones((2, 3))), ValueError, "M must be square"),
    ("eigenvalues_in_union NaN", lambda: theory.eigenvalues_in_union(np.full((2, 2), np.nan)), ValueError,
     "M contains NaN"),
    ("eigenvalues_in_union empty", lambda: theory.eigenvalues_in_union(np.zeros((0, 0))), ValueError,
     "no empty axis"),
    ("eigenvalues_in_union None", lambda: theory.eigenvalues_in_union(None), TypeError, "M must be an array"),
    ("rnn_norm_bound 1-D", lambda: theory.rnn_norm_bound(np.ones(3)), ValueError, "R must have shape (n, n)"),
    ("rnn_norm_bound NaN", lambda: theory.rnn_norm_bound(np.full((2, 2), np.nan)), ValueError, "R contains NaN"),
    ("jacobians_across_time empty", lambda: theory.jacobians_across_time(np.zeros((0, 1, 2, 2))), ValueError,
     "Js must have no empty axis"),
    ("jacobians_across_time 2-D", lambda: theory.jacobians_across_time(np.eye(2)), ValueError,
     "Js must have shape (T, B, n, n)"),
    ("jacobians_across_time None", lambda: theory.jacobians_across_time(None), TypeError, "Js must be an array"),
    ("in_union NaN point", lambda: theory.in_union(np.array([np.nan + 0j]), np.zeros(2), np.ones(2)), ValueError,
     "points contains NaN"),
    ("in_union negative radius", lambda: theory.in_union(np.array([0j]), np.zeros(2), -np.ones(2)), ValueError,
     "radii must be >= 0"),
    ("rnn_step_forward None R", lambda: theory.rnn_step_forward(None, R_RNN["W"], R_RNN["b"], np.zeros((1, N_IN)),
                                                                np.zeros((1, N))), TypeError, "R must be an array"),
    ("rnn_step_forward b 2-D", lambda: theory.rnn_step_forward(R_RNN["R"], R_RNN["W"], R_RNN["b"][None],
                                                               np.zeros((1, N_IN)), np.zeros((1, N))), ValueError,
     "b must be 1-D"),
    ("rnn_step_jacobian R not square", lambda: theory.rnn_step_jacobian(R_RNN["W"], R_RNN["W"], R_RNN["b"],
                                                                        np.zeros((1, N_IN)), np.zeros((1, N))),
     ValueError, "R must be (n, n)"),
]

OWN_NAMES = [
    ("rhn.step_forward x dtype", lambda: rhn.step_forward(P32, XS[0].astype(np.float64), S0), TypeError,
     "x is float64", "xs"),
    ("rhn.step_forward x width", lambda: rhn.step_forward(P32, np.zeros((B, N_IN + 1), np.float32), S0), ValueError,
     "x has shape", "xs"),
    ("rhn.step_forward s_prev width", lambda: rhn.step_forward(P32, XS[0], np.zeros((B, N + 1), np.float32)),
     ValueError, "s_prev has shape", "s0"),
    ("rhn.step_forward s_prev None", lambda: rhn.step_forward(P32, XS[0], None), TypeError,
     "s_prev must be an array", "s0"),
    ("rhn.step_backward ds dtype", lambda: rhn.step_backward(P32, STEP_CACHE, S0.astype(np.float64)), TypeError,
     "ds is float64", "dys"),
    ("dtrnn.step_forward s_prev dtype", lambda: dtrnn.step_forward(D32, XS[0], S0.astype(np.float64)), TypeError,
     "s_prev is float64", "s0"),
    ("dtrnn.step_backward ds dtype", lambda: dtrnn.step_backward(D32, D_STEP_CACHE, S0.astype(np.float64)), TypeError,
     "ds is float64", "dys"),
    ("theory.step_jacobian s_prev", lambda: theory.step_jacobian(P32, XS[0], np.zeros((B, N + 1), np.float32)),
     ValueError, "s_prev has shape", "s0"),
    ("theory.rnn_step_forward y_prev", lambda: theory.rnn_step_forward(**R_RNN, x=np.zeros((1, N_IN)),
                                                                       y_prev=np.zeros((1, N + 1))),
     ValueError, "y_prev has shape", "s0"),
    ("theory.rnn_step_forward y_prev NaN", lambda: theory.rnn_step_forward(**R_RNN, x=np.zeros((1, N_IN)),
                                                                           y_prev=np.full((1, N), np.nan)),
     ValueError, "y_prev contains NaN", "s_prev"),
    ("theory.rnn_forward y0", lambda: theory.rnn_forward(**R_RNN, xs=np.zeros((2, 1, N_IN)), y0=np.zeros((2, N))),
     ValueError, "y0 has shape", "s0"),
    ("theory.rnn_step_forward x 3-D", lambda: theory.rnn_step_forward(**R_RNN, x=np.zeros((2, 1, N_IN)),
                                                                      y_prev=np.zeros((1, N))),
     ValueError, "x must be one step's input of shape (B, n_in), got (2, 1, 3); for a window of T steps use "
     "theory.rnn_forward"),
    ("rhn.backward dys dtype", lambda: rhn.backward(P32, CACHE, DYS.astype(np.float64)), TypeError, "dys is float64"),
]

TABLE = SUBCLASSES + NON_FINITE + OVERFLOW + SEEDS_BOOLS_ENUMS + THEORY + OWN_NAMES


@pytest.mark.parametrize("case", TABLE, ids=[c[0] for c in TABLE])
def test_malformed_input_is_refused_naming_the_argument(case):
    _, call, error, fragment, *absent = case
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert fragment in message, message
    for other in absent:  # another function's argument name (the window's xs, s0, dys)
        assert f"{other} " not in message and f"{other}[" not in message, message


def test_the_table_names_each_class_and_no_case_twice():
    ids = [c[0] for c in TABLE]
    assert len(ids) == len(set(ids))
    assert all(len(t) >= 6 for t in (SUBCLASSES, NON_FINITE, OVERFLOW, SEEDS_BOOLS_ENUMS, THEORY, OWN_NAMES))


# ----------------------------------------------------------------------------
# Hypothesis: a non-finite entry anywhere in any input is named
# ----------------------------------------------------------------------------
INPUTS = {"xs": XS, "s0": S0, "masks['x']": MASKS["x"], "masks['s']": MASKS["s"], "dys": DYS, "ds_last": S0}


def _window_call(name, bad):
    arrays = {**INPUTS, name: bad}
    masks = {"x": arrays["masks['x']"], "s": arrays["masks['s']"]}
    if name in ("dys", "ds_last"):
        return lambda: rhn.backward(P32, CACHE, arrays["dys"], arrays["ds_last"])
    return lambda: rhn.forward(P32, arrays["xs"], arrays["s0"], masks)


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(INPUTS)), value=st.sampled_from([np.nan, np.inf, -np.inf]), data=st.data())
def test_a_non_finite_entry_anywhere_is_named(name, value, data):
    a = INPUTS[name]
    index = tuple(data.draw(st.integers(0, d - 1)) for d in a.shape)
    with pytest.raises(ValueError, match=rf"^{__import__('re').escape(name)} contains (NaN or infinity|negative)"):
        _window_call(name, with_(a, index, value))()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(-(2 ** 70), 2 ** 70))
def test_every_integer_seed_is_numpys_or_refused(seed):
    if seed < 0:
        with pytest.raises(ValueError, match="seed must be an integer >= 0"):
            rhn.init_params(2, 3, 1, seed=seed)
    else:
        expected = np.random.default_rng(seed).uniform(-0.04, 0.04, size=(2, 3)).astype(np.float32)
        np.testing.assert_array_equal(rhn.init_params(2, 3, 1, seed=seed)["W_H"], expected)


@settings(max_examples=40, deadline=None)
@given(bias=st.floats(allow_nan=False, allow_infinity=False), dtype=st.sampled_from(["float32", "float64"]))
def test_transform_bias_is_finite_once_cast_or_refused(bias, dtype):
    if abs(bias) > float(np.finfo(dtype).max):
        with pytest.raises(ValueError, match="transform_bias must lie within"):
            rhn.init_params(2, 3, 1, transform_bias=bias, dtype=dtype)
    else:
        b_T = rhn.init_params(2, 3, 1, transform_bias=bias, dtype=dtype)["b_T"]
        assert np.all(np.isfinite(b_T)) and np.all(b_T == np.asarray(bias, dtype))


# ----------------------------------------------------------------------------
# Valid inputs: the same results as before
# ----------------------------------------------------------------------------
def test_memmap_inputs_are_plain_arrays_and_give_the_same_states(tmp_path):
    xs_map = np.lib.format.open_memmap(os.fspath(tmp_path / "xs.npy"), mode="w+", dtype=np.float32, shape=XS.shape)
    xs_map[...] = XS
    for impl in ("reference", "auto"):
        ys, _ = rhn.forward(P32, XS, S0, MASKS, impl=impl)
        ys_map, _ = rhn.forward(P32, xs_map, S0, MASKS, impl=impl)
        np.testing.assert_array_equal(np.asarray(ys_map), ys)


def test_a_matrix_converted_by_its_documented_fix_gives_the_array_result():
    ys, _ = rhn.forward(P32, XS, S0)
    with pytest.raises(TypeError, match=r"np\.asarray\(s0\)"):
        rhn.forward(P32, XS, np.asmatrix(S0))
    np.testing.assert_array_equal(rhn.forward(P32, XS, np.asarray(np.asmatrix(S0)))[0], ys)
    with pytest.raises(TypeError, match=r"xs\.filled\(value\)"):
        rhn.forward(P32, masked(XS), S0)
    np.testing.assert_array_equal(rhn.forward(P32, masked(XS).filled(0.0), S0)[0], ys)


def test_seeds_of_every_accepted_form_draw_the_same_weights():
    ref = rhn.init_params(3, 4, 2, seed=5)
    for seed in (np.int64(5), np.uint8(5), np.random.default_rng(5)):
        got = rhn.init_params(3, 4, 2, seed=seed)
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k])
    m1 = lm.draw_masks(7, IDS, vocab=V, n_emb=N, n=N, keep_x=0.8, keep_i=0.5, keep_h=0.5, keep_o=0.5)
    m2 = lm.draw_masks(np.random.default_rng(7), IDS, vocab=V, n_emb=N, n=N, keep_x=0.8, keep_i=0.5, keep_h=0.5,
                       keep_o=0.5, dtype=np.float32)
    for k in m1:
        np.testing.assert_array_equal(m1[k], m2[k])
    assert all(np.all(m >= 0) for m in m1.values())


def test_adam_with_a_tiny_eps_steps_in_float64():
    params = {"a": np.ones(2)}
    optim.Adam(eps=1e-50).step(params, {"a": np.zeros(2)})  # 1e-50 is a float64 number: no 0/0
    np.testing.assert_array_equal(params["a"], np.ones(2))


def test_large_finite_settings_that_fit_the_dtype_still_build():
    p = rhn.init_params(2, 3, 1, transform_bias=-1e300, init_scale=1e300, dtype="float64")
    assert all(np.all(np.isfinite(a)) for a in p.values())
    p = rhn.init_params(2, 3, 1, transform_bias=3e38, init_scale=3e38)
    assert all(np.all(np.isfinite(a)) for a in p.values())
    m = lm.draw_dense_masks(0, 2, n_in=3, n=4, keep_h=1e-30)  # 1/keep = 1e30 fits float32
    assert set(np.unique(m["h"]).tolist()) <= {0.0, float(np.float32(1e30))}


def test_valid_masks_weights_and_gradients_keep_their_results():
    """Zero masks and zero weights are valid (dropped units, padding): the results equal a
    computation by hand, and the step functions still equal a window of one step."""
    zero = {"s": np.zeros((B, N), np.float32)}
    ys, cache = rhn.forward(P32, XS, S0, zero, impl="reference")
    grads, dxs, ds0 = rhn.backward(P32, cache, DYS, np.zeros_like(S0))
    grads2, dxs2, ds02 = rhn.backward(P32, cache, DYS)
    for k in grads:
        np.testing.assert_array_equal(grads[k], grads2[k])
    np.testing.assert_array_equal(ds0, ds02)
    s, step_cache = rhn.step_forward(P32, XS[0], S0, zero)
    np.testing.assert_array_equal(s, ys[0])
    _, dx, ds_prev = rhn.step_backward(P32, step_cache, DYS[0])
    window = rhn.forward(P32, XS[:1], S0, zero, impl="reference")[1]
    np.testing.assert_array_equal(dx, rhn.backward(P32, window, DYS[:1])[1][0])
    w = np.ones((TT, B))
    w[0] = 0.0
    loss_w, _ = lm.softmax_cross_entropy(LOGITS, IDS, w)
    loss_rest, _ = lm.softmax_cross_entropy(LOGITS[1:], IDS[1:])
    np.testing.assert_allclose(float(loss_w), float(loss_rest), rtol=1e-6)
    assert lm.softmax_cross_entropy(LOGITS, IDS, w.astype(bool))[0] == loss_w


def test_theory_still_answers_for_valid_matrices():
    M = np.array([[2.0, 1.0], [0.5, -1.0]])
    np.testing.assert_allclose(np.sort(theory.spectrum(M).real), np.sort(np.linalg.eigvals(M).real))
    assert bool(theory.eigenvalues_in_union(M, "both"))
    np.testing.assert_allclose(theory.singular_values(np.ones((1, 3))), [math.sqrt(3.0)])
    assert theory.rnn_norm_bound(np.eye(3), gamma=0.5) == 0.5
    c, r = theory.gersgorin_discs(np.array([[1.0, 2.0], [3.0, 4.0]]))
    np.testing.assert_array_equal(c, [1.0, 4.0])
    np.testing.assert_array_equal(r, [2.0, 3.0])


def test_checks_plain_is_a_type_check_only():
    """It reads no data: a huge matrix is refused as fast as a small one, and a plain
    array of any size passes without being read."""
    checks.plain("a", np.empty((1 << 12, 1 << 12), np.float32))  # uninitialised: any NaN in it is not looked at
    with pytest.raises(TypeError, match="a is a numpy.matrix"):
        checks.plain("a", np.asmatrix(np.empty((1 << 12, 1 << 12), np.float32)))
    checks.plain("a", None)  # the caller's own checks say what a None should have been


# ----------------------------------------------------------------------------
# Checkpoints: NaN weights named once, when the run is loaded
# ----------------------------------------------------------------------------
def test_nan_weights_in_a_checkpoint_are_named_when_it_is_loaded(tmp_path):
    s = np.random.default_rng(1).integers(0, 5, 900).astype(np.int32)
    ds = data.Dataset(name="mine", kind="tokens", train=s[:600], valid=s[600:750], test=s[750:],
                      vocab=list("abcd\n"), level="char")
    cfg = config.Config(dataset="mine", depth=2, hidden=6, batch_size=2, bptt=5, max_steps=4, eval_every=2,
                        eval_batch_size=2, log_every=2, dtype="float64", lr_schedule="epoch").check()
    work = tmp_path / "run"
    T.Trainer(cfg, work, ds=ds, progress=False, out=lambda *a: None).run()
    for name in ("best.npz", "checkpoint.npz"):
        arrays, meta = checkpoint.load(work / name)
        arrays["param.R_H"] = with_(arrays["param.R_H"], (0, 1, 2), np.nan)
        checkpoint.save(work / name, arrays, meta)
    with pytest.raises(T.RunError, match=r"params\['R_H'\] contains NaN or infinity in .*best\.npz") as info:
        T.load_run(work)
    assert "s0" not in str(info.value)
    with pytest.raises(checkpoint.CheckpointError, match=r"params\['R_H'\] contains NaN or infinity in the checkpoint"):
        T.Trainer.resume(work, overrides={"max_steps": 6}, progress=False, out=lambda *a: None, ds=ds)


def test_a_run_that_diverges_between_progress_logs_stops_as_diverged(tmp_path):
    """NaN weights give NaN gradients in the same window and a NaN state in the next: both
    stop the run as diverged (the loss is only read every log_every steps), not with the
    ValueError a caller's NaN argument gets."""

    class PoisonAt(T.Trainer):
        def train_step(self):
            if self.step == 3:
                self.params["R_H"][...] = np.nan
            return super().train_step()

    s = np.random.default_rng(1).integers(0, 5, 900).astype(np.int32)
    ds = data.Dataset(name="mine", kind="tokens", train=s[:600], valid=s[600:750], test=s[750:],
                      vocab=list("abcd\n"), level="char")
    cfg = config.Config(dataset="mine", depth=2, hidden=6, batch_size=2, bptt=5, max_steps=20, eval_every=10,
                        eval_batch_size=2, log_every=7, dtype="float64", lr_schedule="epoch").check()
    with pytest.raises(T.TrainingDiverged, match="non-finite.*by step 4") as info:
        PoisonAt(cfg, tmp_path / "run", ds=ds, progress=False, out=lambda *a: None).run()
    assert isinstance(info.value.__cause__, checks.NonFinite)
    assert issubclass(checks.NonFinite, ValueError)  # still a ValueError for callers
