"""Bad inputs fail early with a ValueError/TypeError whose message names the culprit."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from conftest import make_inputs, on
from rhn_np import backend, rhn, theory

T, B, N_IN, N, DEPTH = 3, 2, 4, 5, 2


@pytest.fixture
def layer():
    """float64 NumPy params (uncoupled: every parameter name exists) and matching inputs."""
    params = rhn.init_params(N_IN, N, DEPTH, coupled=False, dtype="float64", seed=0)
    xs, s0, dys, ds_last, masks = make_inputs(T, B, N_IN, N, masks=True)
    return params, xs, s0, dys, ds_last, masks


# ----------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,shape",
    [
        ("W_H", (N_IN, N + 1)),  # (N_IN + 1, N) is blamed on W_T: n_in is read off W_H (reported)
        ("W_T", (N_IN, N + 1)),
        ("W_C", (N_IN,)),
        ("R_T", (DEPTH + 1, N, N)),
        ("R_C", (DEPTH, N, N + 1)),
        ("b_H", (DEPTH, N + 1)),
        ("b_T", (DEPTH + 1, N)),
        ("b_C", (N,)),
    ],
)
def test_param_shape_mismatch_names_the_parameter(layer, name, shape):
    params, xs, s0, _, _, _ = layer
    params = dict(params, **{name: np.zeros(shape)})
    with pytest.raises(ValueError, match=rf"params\['{name}'\]"):
        rhn.forward(params, xs, s0)


@pytest.mark.parametrize("name", ["W_H", "R_T", "b_T"])
def test_missing_parameter_is_named(layer, name):
    params, xs, s0, _, _, _ = layer
    del params[name]
    with pytest.raises(ValueError, match=rf"missing.*{name}"):
        rhn.forward(params, xs, s0)


def test_params_not_a_dict(layer):
    params, xs, s0, _, _, _ = layer
    with pytest.raises(TypeError, match="params must be a dict"):
        rhn.forward(list(params.values()), xs, s0)


@pytest.mark.parametrize(
    "what,shape,pattern",
    [
        ("xs", (T, B, N_IN + 1), r"xs has shape \(3, 2, 5\), expected \(3, 2, 4\)"),
        ("xs", (B, N_IN), r"xs must have shape \(T, B, n_in\)"),
        ("xs", (0, B, N_IN), r"xs must have T >= 1"),
        ("s0", (B, N + 1), r"s0 has shape \(2, 6\), expected \(2, 5\)"),
        ("s0", (B + 1, N), r"s0 has shape \(3, 5\)"),
        ("s0", (N,), r"s0 has shape"),
    ],
)
def test_input_shape_mismatch_names_the_input(layer, what, shape, pattern):
    params, xs, s0, _, _, _ = layer
    args = {"xs": xs, "s0": s0, what: np.zeros(shape)}
    with pytest.raises(ValueError, match=pattern):
        rhn.forward(params, args["xs"], args["s0"])


@pytest.mark.parametrize(
    "masks,pattern",
    [
        ({"x": np.ones((B, N))}, r"masks\['x'\] has shape \(2, 5\), expected \(2, 4\)"),
        ({"s": np.ones((B, N_IN))}, r"masks\['s'\] has shape \(2, 4\), expected \(2, 5\)"),
        ({"s": np.ones((T, B, N))}, r"masks\['s'\] has shape"),
        ({"h": np.ones((B, N))}, r"masks must be a dict with keys 'x'.*'s'.*, got keys \['h'\]$"),
        ([np.ones((B, N_IN))], r"masks must be a dict.*, got list$"),
    ],
)
def test_mask_mismatch_names_the_mask(layer, masks, pattern):
    params, xs, s0, _, _, _ = layer
    with pytest.raises(ValueError, match=pattern):
        rhn.forward(params, xs, s0, masks)


@pytest.mark.parametrize(
    "what,shape,pattern",
    [
        ("dys", (T - 1, B, N), r"dys has shape \(2, 2, 5\), expected \(3, 2, 5\)"),
        ("dys", (T, B, N + 1), r"dys has shape"),
        ("ds_last", (B, N - 1), r"ds_last has shape \(2, 4\), expected \(2, 5\)"),
        ("ds_last", (T, B, N), r"ds_last has shape"),
    ],
)
def test_gradient_shape_mismatch_names_the_gradient(layer, what, shape, pattern):
    params, xs, s0, dys, ds_last, _ = layer
    _, cache = rhn.forward(params, xs, s0)
    args = {"dys": dys, "ds_last": ds_last, what: np.zeros(shape)}
    with pytest.raises(ValueError, match=pattern):
        rhn.backward(params, cache, args["dys"], args["ds_last"])


def test_params_different_from_the_cache(layer):
    params, xs, s0, dys, _, _ = layer
    _, cache = rhn.forward(params, xs, s0)
    other = rhn.init_params(N_IN, N + 1, DEPTH, coupled=False, dtype="float64")
    with pytest.raises(ValueError, match="params do not match the ones the cache was made with"):
        rhn.backward(other, cache, dys)
    coupled = rhn.init_params(N_IN, N, DEPTH, coupled=True, dtype="float64")
    with pytest.raises(ValueError, match="params do not match"):
        rhn.backward(coupled, cache, dys)


# ----------------------------------------------------------------------------
# Dtypes
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("what", ["xs", "s0", "masks['x']", "masks['s']"])
def test_float32_input_with_float64_params(layer, what):
    params, xs, s0, _, _, masks = layer
    args = {"xs": xs, "s0": s0, "masks['x']": masks["x"], "masks['s']": masks["s"]}
    args[what] = args[what].astype(np.float32)
    with pytest.raises(TypeError, match=re.escape(what) + " is float32 but the parameters are float64"):
        rhn.forward(params, args["xs"], args["s0"], {"x": args["masks['x']"], "s": args["masks['s']"]})


@pytest.mark.parametrize("what", ["dys", "ds_last"])
def test_float32_gradient_with_float64_params(layer, what):
    params, xs, s0, dys, ds_last, _ = layer
    _, cache = rhn.forward(params, xs, s0)
    args = {"dys": dys, "ds_last": ds_last}
    args[what] = args[what].astype(np.float32)
    with pytest.raises(TypeError, match=rf"{what} is float32 but the parameters are float64"):
        rhn.backward(params, cache, args["dys"], args["ds_last"])


def test_one_parameter_of_another_dtype_is_named(layer):
    params, xs, s0, _, _, _ = layer
    params["b_T"] = params["b_T"].astype(np.float32)
    with pytest.raises(TypeError, match=r"params\['b_T'\] is float32"):
        rhn.forward(params, xs, s0)


def test_integer_params_are_refused(layer):
    params, xs, s0, _, _, _ = layer
    params = {k: v.astype(np.int64) for k, v in params.items()}
    with pytest.raises(TypeError, match="params must be float32 or float64"):
        rhn.forward(params, xs.astype(np.int64), s0.astype(np.int64))


def test_unknown_dtype_name():
    with pytest.raises(ValueError, match=r"dtype must be float32 or float64 \(a name such as 'float32', or a "
                                         r"dtype such as numpy.float32\), got 'float16'"):
        backend.get("numpy").zeros((2,), "float16")


@pytest.mark.parametrize("dtype", ["float16", "int32", np.int32, None, "no such type"])
def test_init_params_unknown_dtype(dtype):
    with pytest.raises(ValueError, match=r"dtype must be float32 or float64 .*got " + re.escape(repr(dtype))):
        rhn.init_params(2, 3, 1, dtype=dtype)


def test_dtype_objects_are_accepted_where_names_are():
    """A NumPy or array-api-strict dtype object means the same as its name (users write
    ``dtype=np.float64`` as often as ``"float64"``)."""
    strict = pytest.importorskip("array_api_strict")
    for dtype in (np.float64, np.dtype("float64"), "f8"):
        assert rhn.init_params(2, 3, 1, dtype=dtype)["W_H"].dtype == np.float64
        assert theory.rnn_init(2, 3, dtype=dtype)["R"].dtype == np.float64
    p = rhn.init_params(2, 3, 1, dtype=strict.float64, backend="array_api_strict")
    assert p["W_H"].dtype == strict.float64
    assert backend.get("array_api_strict").zeros((2,), np.float32).dtype == strict.float32


# ----------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------
def test_numpy_xs_with_strict_params_names_xs_and_both_backends():
    be = backend.get("array_api_strict")
    params = rhn.init_params(N_IN, N, DEPTH, dtype="float64", backend=be)
    xs, s0, _, _, _ = make_inputs(T, B, N_IN, N)
    with pytest.raises(TypeError, match=r"(?s)xs.*(numpy.*array_api_strict|array_api_strict.*numpy)"):
        rhn.forward(params, xs, on(be, s0))


def test_strict_and_numpy_params_mixed():
    be = backend.get("array_api_strict")
    params = rhn.init_params(N_IN, N, DEPTH, dtype="float64")
    params["R_H"] = on(be, params["R_H"])
    with pytest.raises(TypeError, match=r"different backends.*to_device"):
        rhn.fuse_params(params)


@pytest.mark.parametrize("name", ["tensorflow", "torch", ""])
def test_unknown_backend_name(name):
    with pytest.raises(ValueError, match=rf"unknown backend '{name}'; expected one of 'numpy', 'cupy'"):
        backend.get(name)
    with pytest.raises(ValueError, match="unknown backend"):
        rhn.init_params(2, 3, 1, backend=name)


def test_backend_not_a_string():
    with pytest.raises(TypeError, match="backend must be a string"):
        backend.get(3)


@pytest.mark.skipif(backend.cupy_available(), reason="checks the message given where CuPy is unusable")
def test_cupy_backend_without_a_gpu_says_why():
    with pytest.raises(RuntimeError, match=r"backend='cupy' is not usable here.*gpu-cuda12.*--backend numpy"):
        backend.get("cupy")


def test_unknown_impl(layer):
    params, xs, s0, _, _, _ = layer
    with pytest.raises(ValueError, match=r"impl must be 'auto', 'reference' or 'fast', got 'gpu'"):
        rhn.forward(params, xs, s0, impl="gpu")


def test_fast_impl_refuses_strict_arrays():
    be = backend.get("array_api_strict")
    params = rhn.init_params(N_IN, N, DEPTH, dtype="float64", backend=be)
    xs, s0, _, _, _ = make_inputs(T, B, N_IN, N)
    with pytest.raises(ValueError, match="impl='fast' needs NumPy or CuPy arrays"):
        rhn.forward(params, on(be, xs), on(be, s0), impl="fast")


# ----------------------------------------------------------------------------
# init_params arguments
# ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args,exc,pattern",
    [
        ((N_IN, N, 0), ValueError, r"depth must be >= 1, got 0"),
        ((N_IN, 0, DEPTH), ValueError, r"n must be >= 1, got 0"),
        ((N_IN, -3, DEPTH), ValueError, r"n must be >= 1, got -3"),
        ((0, N, DEPTH), ValueError, r"n_in must be >= 1, got 0"),
        ((N_IN, N, 2.0), TypeError, r"depth must be an integer, got float"),
        ((N_IN, True, DEPTH), TypeError, r"n must be an integer, got bool"),
    ],
)
def test_init_params_sizes(args, exc, pattern):
    with pytest.raises(exc, match=pattern):
        rhn.init_params(*args)


@pytest.mark.parametrize(
    "kw,pattern",
    [
        ({"init_scale": -0.1}, r"init_scale must be a finite number >= 0"),
        ({"init_scale": float("nan")}, r"init_scale must be a finite number"),
        ({"transform_bias": float("inf")}, r"transform_bias must be a finite number"),
    ],
)
def test_init_params_scales(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        rhn.init_params(N_IN, N, DEPTH, **kw)


# ----------------------------------------------------------------------------
# Values and caches
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("what", ["xs", "s0"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_on_numpy(layer, what, bad):
    params, xs, s0, _, _, _ = layer
    args = {"xs": xs.copy(), "s0": s0.copy()}
    args[what].flat[-1] = bad
    with pytest.raises(ValueError, match=rf"{what} contains NaN or infinity"):
        rhn.forward(params, args["xs"], args["s0"])


@pytest.mark.parametrize("cache", [None, {}, (1, 2), {"S": np.zeros(3)}, "cache"])
def test_cache_not_from_forward(layer, cache):
    params, _, _, dys, _, _ = layer
    with pytest.raises(TypeError, match=r"cache must be the second value returned by rhn.forward"):
        rhn.backward(params, cache, dys)


def test_forward_outputs_passed_in_the_wrong_order(layer):
    params, xs, s0, dys, _, _ = layer
    ys, cache = rhn.forward(params, xs, s0)
    with pytest.raises(TypeError, match="cache must be"):
        rhn.backward(params, ys, cache)


@pytest.mark.parametrize("what", ["s0", "dys"])
def test_none_for_a_required_array_is_named(layer, what):
    params, xs, s0, dys, _, _ = layer
    with pytest.raises((TypeError, ValueError), match=what):
        if what == "s0":
            rhn.forward(params, xs, None)
        else:
            _, cache = rhn.forward(params, xs, s0)
            rhn.backward(params, cache, None)


def test_step_functions_name_their_own_arguments(layer):
    """rhn.step_forward / step_backward (and the theory functions built on them) take one
    step: a window, or a gradient of the wrong shape, is named as such."""
    params, xs, s0, _, _, _ = layer
    with pytest.raises(ValueError, match=r"x must be one step's input of shape \(B, n_in\), got \(3, 2, 4\).*rhn\.forward"):
        rhn.step_forward(params, xs, s0)
    with pytest.raises(ValueError, match=r"x must be one step's input"):
        theory.step_jacobian(params, xs, s0)
    s, cache = rhn.step_forward(params, xs[0], s0)
    with pytest.raises(ValueError, match=r"ds must have shape \(B, n\) = \(2, 5\), got \(1, 2, 5\)"):
        rhn.step_backward(params, cache, s[None, ...])
    _, window_cache = rhn.forward(params, xs, s0)
    with pytest.raises(TypeError, match=r"rhn\.step_forward.*rhn\.backward"):
        rhn.step_backward(params, window_cache, s)


# ----------------------------------------------------------------------------
# The rest of the API: language-model pieces, optimisers, gradient checks, data
# ----------------------------------------------------------------------------
def test_lm_pieces_refuse_ids_and_targets_out_of_range():
    from rhn_np import lm

    dX = np.ones((2, 3, 4))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, vocab=5\), got values in \[-1, 2\]"):
        lm.embedding_backward(dX, np.array([[0, 1, 2], [-1, 0, 1]]), (5, 4))  # -1 would land in row 4
    with pytest.raises(TypeError, match="vocab_shape must be the shape"):
        lm.embedding_backward(dX, np.zeros((2, 3), np.int64), 5)
    with pytest.raises(ValueError, match=r"targets must be 0 or 1.*\[2\]"):
        lm.sigmoid_bernoulli_nll(np.zeros((2, 3, 4)), np.full((2, 3, 4), 2))


def test_optimisers_refuse_what_broadcasting_or_an_unpacked_tuple_would_hide():
    from rhn_np import optim

    params = {"w": np.ones((2, 3))}
    for opt in (optim.SGD(0.1), optim.Adam(0.1)):
        with pytest.raises(ValueError, match=r"grads\['w'\] has shape \(3,\), params\['w'\] \(2, 3\)"):
            opt.step(params, {"w": np.ones(3)})
        with pytest.raises(TypeError, match=r"clip_global_norm returns \(grads, norm\): unpack it"):
            opt.step(params, optim.clip_global_norm({"w": np.ones((2, 3))}, 1.0))
    np.testing.assert_array_equal(params["w"], 1.0)
    with pytest.raises(ValueError, match="params is empty"):
        optim.l2_penalty({}, 1e-3)
    # float32 Σ g² overflows although every entry is finite: the step is visibly bad (NaN), not silently zero
    with np.errstate(over="ignore"):
        clipped, norm = optim.clip_global_norm({"w": np.full(4, 3e19, np.float32)}, 10.0)
    assert np.isinf(norm) and np.all(np.isnan(clipped["w"]))
    with pytest.raises(TypeError, match=r"max_epoch must be an integer, got float"):
        optim.lr_at_epoch(0, 0.2, 5.0, 1.02)
    with pytest.raises(TypeError, match=r"epoch must be an integer, got float"):  # arguments swapped
        optim.lr_at_epoch(0.2, 5, 20, 1.02)
    with pytest.raises(ValueError, match="lr_decay must be a finite number >= 1.0"):
        optim.lr_at_epoch(30, 0.2, 20, 0.5)


def test_gradient_checks_refuse_integer_inputs_and_different_shapes():
    from rhn_np import gradcheck

    with pytest.raises(TypeError, match="integer array would round every x ± h"):
        gradcheck.numerical_gradient(lambda v: np.sum(v**2), np.array([1, 2, 3]))
    with pytest.raises(TypeError, match="x must be a float64 NumPy array"):
        gradcheck.directional_check(lambda v: np.sum(v**2), np.array([1, 2, 3]), np.array([2.0, 4.0, 6.0]))
    # float32 gave 2.0027 for d(sum x^2)/dx = 2 and a near-threshold 8e-4 on a correct gradient
    with pytest.raises(TypeError, match=r"got float32 \(float32 round-off swamps central differences\)"):
        gradcheck.numerical_gradient(lambda v: np.sum(v**2), np.ones(3, np.float32))
    with pytest.raises(TypeError, match=r"got: list. Move it to the host"):
        gradcheck.numerical_gradient(lambda v: np.sum(v), [1.0, 2.0])
    with pytest.raises(TypeError, match=r"got a NumPy scalar \(float64\): use np.array\(x, dtype=np.float64\)"):
        gradcheck.numerical_gradient(lambda v: v * v, np.float64(3.0))
    with pytest.raises(ValueError, match=r"grad has shape \(3,\), x \(2, 3\)"):
        gradcheck.directional_check(lambda v: np.sum(v**2), np.ones((2, 3)), np.ones(3))
    strict = backend.get("array_api_strict")
    params = rhn.init_params(2, 3, 1, dtype="float64", backend=strict)
    with pytest.raises(TypeError, match=r"params\['W_H'\] must be a float64 NumPy array, got: array_api_strict array. Move it to the host"):
        gradcheck.check_rhn(params, strict.zeros((2, 1, 2), "float64"), strict.zeros((1, 3), "float64"),
                            np.zeros((2, 1, 3)))
    with pytest.raises(ValueError, match=r"arrays of one shape, got \(3,\) and \(2, 3\)"):
        gradcheck.rel_error(np.ones(3), np.ones((2, 3)))


def test_decode_refuses_a_window_of_several_streams():
    from rhn_np import data

    ds = data.Dataset(name="t", kind="tokens", train=np.zeros(0, np.int32), valid=np.zeros(0, np.int32),
                      test=np.zeros(0, np.int32), vocab=list("ab"), level="char")
    assert ds.decode(np.array([0, 1, 0])) == "aba"
    with pytest.raises(ValueError, match=r"one sequence of ids \(1-D\), got shape \(2, 2\).*ds.decode\(ids\[:, b\]\)"):
        ds.decode(np.array([[0, 1], [1, 0]]))


def test_lm_forward_names_the_lm_masks_and_the_embedding():
    from rhn_np import lm

    p = lm.init_lm_params(10, 6, 8, 2, dtype="float64")
    ids, s0 = np.zeros((4, 3), np.int64), np.zeros((3, 8))
    f32 = lm.draw_masks(0, ids, vocab=10, n_emb=6, n=8, keep_i=0.5, keep_h=0.5, keep_o=0.5)  # float32 by default
    with pytest.raises(TypeError, match=r"masks\['i'\] is float32 but the parameters are float64.*dtype='float64'"):
        lm.lm_forward(p, ids, s0, f32)
    with pytest.raises(ValueError, match=r"masks\['h'\] has shape \(3, 5\), expected \(3, 8\)"):
        lm.lm_forward(p, ids, s0, {"h": np.ones((3, 5))})
    with pytest.raises(ValueError, match=r"got keys \['q'\]$"):
        lm.lm_forward(p, ids, s0, {"q": np.ones(3)})
    with pytest.raises(ValueError, match=r"params\['E'\] is float64 \(10, 5\) but the first layer reads 6 float64 inputs"):
        lm.lm_forward({**p, "E": np.zeros((10, 5))}, ids, s0)
    with pytest.raises(ValueError, match="n_in must be >= 1"):
        lm.init_dense_params(0, 8, 2)
    with pytest.raises(ValueError, match="n_emb must be >= 1"):
        lm.draw_masks(0, ids, vocab=10, n_emb=0, n=8)


def test_evaluate_and_sample_name_a_model_or_vocabulary_that_does_not_fit():
    from rhn_np import data, lm
    from rhn_np import train as T

    text = data.Dataset(name="t", kind="tokens", train=np.zeros(0, np.int32), valid=np.zeros(0, np.int32),
                        test=np.zeros(0, np.int32), vocab=list("abcde"), level="char")
    with pytest.raises(ValueError, match="evaluate needs the parameters of lm.init_lm_params.*piano-roll model"):
        T.evaluate(lm.init_dense_params(88, 8, 2), np.zeros(100, np.int32), batch_size=2, bptt=5)
    with pytest.raises(ValueError, match="the model predicts 7 symbols but t has 5"):
        T.sample(lm.init_lm_params(7, 4, 8, 2), text, length=3)


def test_adam_refuses_a_damaged_state():
    from rhn_np import optim

    good = optim.Adam(0.1)
    good.step({"w": np.ones(3)}, {"w": np.ones(3)})
    for change, pattern in [({"beta1": 1.5}, r"beta1 must lie in \[0, 1\)"), ({"t": -5}, "state_dict step count t must be >= 0, got -5"),
                            ({"v": {"w": -np.ones(3)}}, "negative or NaN"),
                            ({"m": {"w": np.ones(2)}}, r"differ in shape: m \(2,\), v \(3,\)")]:
        with pytest.raises(ValueError, match=pattern):
            optim.Adam().load_state_dict({**good.state_dict(), **change})
    with pytest.raises(TypeError, match="state_dict step count t must be an integer, got float"):
        optim.Adam().load_state_dict({**good.state_dict(), "t": 2.0})


def test_theory_plots_and_batches_refuse_what_they_would_misread(layer):
    from rhn_np import plots, train

    params, xs, s0, _, _, _ = layer
    _, cache = rhn.forward(params, xs, s0, impl="reference")
    assert theory.jacobian_from_cache(params, cache, T - 1).shape == (B, N, N)
    for t in (T, T + 3):
        with pytest.raises(ValueError, match=rf"t must be a time index in 0..{T - 1}"):
            theory.jacobian_from_cache(params, cache, t)
    with pytest.raises(ValueError, match="t must be >= 0, got -1"):
        theory.jacobian_from_cache(params, cache, -1)
    with pytest.raises(TypeError, match="t must be an integer, got float"):
        theory.jacobian_from_cache(params, cache, 1.0)
    p = theory.rnn_init(3, 4, seed=0)
    with pytest.raises(ValueError, match=r"xs must have shape \(T >= 1, B, n_in\), got \(5, 3\)"):
        theory.rnn_forward(p["R"], p["W"], p["b"], np.zeros((5, 3)), np.zeros((1, 4)))
    import matplotlib

    matplotlib.use("Agg")
    with pytest.raises(ValueError, match=r"radii must be one per disc, shape \(4,\), got \(2, 4\).*radii\[b\]"):
        plots.plot_discs(np.eye(4), radii=np.ones((2, 4)))
    batches = train.TokenBatches(np.arange(100), 4, 5)
    with pytest.raises(IndexError, match=r"window 4 of an epoch of 4 \(0..3\)"):
        batches.window(4)


def test_data_and_rnn_helpers_name_their_arguments():
    from rhn_np import data

    with pytest.raises(TypeError, match=r"root must be a folder path \(str or pathlib.Path\), got int"):
        data.load("ptb", root=5)
    with pytest.raises(TypeError, match=r"text must be the str of a PTB word file, got bytes \(decode bytes first\)"):
        data.ptb_words_to_chars(b"a b\n")
    with pytest.raises(ValueError, match=r"n \(a count of items\) must be >= 0, got -5"):
        data.split_by_position(-5)
    with pytest.raises(TypeError, match=r"n \(a count of items\) must be an integer, got float"):
        data.split_by_position(5.0)
    for kw, pattern in [({"n": 0}, "n must be >= 1"), ({"n": 4.0}, "n must be an integer"),
                        ({"init_std": "0.1"}, "init_std must be a number >= 0"), ({"dtype": "int32"}, "dtype must be")]:
        with pytest.raises((TypeError, ValueError), match=pattern):
            theory.rnn_init(**{"n_in": 3, "n": 4, **kw})


def test_plots_gradcheck_and_roll_batches_name_a_wrong_argument():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rhn_np import gradcheck, lm, plots, train

    fig, ax = plt.subplots()
    with pytest.raises(TypeError, match=r"fig must be a matplotlib Figure, got Axes \(an Axes: pass ax.figure\)"):
        plots.save_figure(ax, "x")
    plt.close(fig)
    with pytest.raises(ValueError, match="at least one Axes"):
        plots.set_common_limits([])
    fig, ax = plt.subplots()
    for bad in (np.zeros((0,)), np.ones((3, 0)), np.ones((3, 2, 2))):
        with pytest.raises(ValueError, match=rf"curves\['rhn'\] must be norms of shape \(K,\) or \(K, B\).*got shape {re.escape(str(bad.shape))}"):
            plots.plot_norm_vs_lag({"rhn": bad}, ax)
    with pytest.raises(ValueError, match=r"shape \(K, n\).*got shape \(4, 2, 3\) \(one sequence: pass sv\[:, b\]"):
        plots.plot_singular_values_vs_lag(np.ones((4, 2, 3)), ax)
    for bad in (np.ones((0, 3)), np.ones((4, 0)), np.ones(4)):
        with pytest.raises(ValueError, match=r"sv must be the singular values of one sequence"):
            plots.plot_singular_values_vs_lag(bad, ax)
    plt.close(fig)
    p = lm.init_lm_params(5, 3, 4, 1, dtype="float64")
    with pytest.raises(ValueError, match="check_rhn checks the RHN layer alone"):
        gradcheck.check_rhn(p, np.zeros((2, 1, 3)), np.zeros((1, 4)), np.zeros((2, 1, 4)))
    rolls = np.zeros((3, 6, 88), np.uint8)  # N equal-length rolls as one array
    batches = train.SequenceBatches(rolls, 2)
    assert len(batches) == 2 and batches.window(1, batches.order(None))[0].shape == (5, 1, 88)
    with pytest.raises(IndexError, match=r"batch 2 of an epoch of 2 \(0..1\)"):
        batches.window(2, batches.order(None))
    with pytest.raises(ValueError, match="non-empty list of"):
        train.SequenceBatches([], 2)


# ----------------------------------------------------------------------------
# Mistakes that used to give a silent wrong result or a misleading message
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("drop", [["W_C"], ["R_C"], ["b_C"], ["W_C", "R_C"]])
def test_a_partial_set_of_carry_gate_parameters_is_refused(layer, drop):
    """Without W_C the layer used to run as a coupled one and ignore R_C, b_C."""
    params, xs, s0, _, _, _ = layer
    for k in drop:
        del params[k]
    with pytest.raises(ValueError, match=r"params has \[.*\] but not all of W_C, R_C, b_C"):
        rhn.forward(params, xs, s0)


def test_unknown_parameter_keys_are_refused_with_the_way_out(layer):
    from rhn_np import lm

    params, xs, s0, _, _, _ = layer
    with pytest.raises(ValueError, match=r"params has keys that are not the RHN layer's: \['lr'\]"):
        rhn.forward({**params, "lr": np.float64(0.1)}, xs, s0)
    p = lm.init_lm_params(7, N_IN, N, DEPTH, dtype="float64")
    with pytest.raises(ValueError, match=r"\['E', 'b_out', 'W_out'\].*rhn_np.lm.layer_params\(params\)"):
        theory.step_jacobian(p, xs[0], s0)
    J = theory.step_jacobian(lm.layer_params(p), xs[0], s0)
    assert J.shape == (B, N, N)
    with pytest.raises(TypeError, match=r"params\['R_H'\] must be an array, got str"):
        rhn.forward({**params, "R_H": "weights"}, xs, s0)


def test_jacobian_from_cache_checks_the_params_against_the_cache(layer):
    params, xs, s0, _, _, _ = layer
    _, cache = rhn.forward(params, xs, s0)
    deeper = rhn.init_params(N_IN, N, DEPTH + 1, coupled=False, dtype="float64")
    with pytest.raises(ValueError, match=rf"params do not match .*: depth {DEPTH} \(cache\) vs {DEPTH + 1} \(params\)"):
        theory.jacobian_from_cache(deeper, cache, 0)
    wider = rhn.init_params(N_IN, N + 1, DEPTH, coupled=False, dtype="float64")
    with pytest.raises(ValueError, match=rf"n {N} \(cache\) vs {N + 1} \(params\)"):
        theory.jacobian_from_cache(wider, cache, 0)


def test_complex_matrices_keep_their_eigenvalues():
    """spectrum used to cast to float64, dropping imaginary parts with only a warning."""
    M = np.array([[1j, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(np.sort_complex(theory.spectrum(M)), [1j, 2.0])
    M = np.array([[1j, 0.5], [0.3j, 2.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the old float64 cast warned (ComplexWarning) and passed
        assert theory.eigenvalues_in_union(M, "both")
        np.testing.assert_allclose(theory.singular_values(M), np.linalg.svd(M, compute_uv=False))
    with pytest.raises(ValueError, match=r"axis must be 'rows', 'columns' or 'both', got 'cols'"):
        theory.eigenvalues_in_union(M, "cols")
    with pytest.raises(ValueError, match=r"centres \(2,\) and radii \(1,\) must have the same shape"):
        theory.in_union(np.zeros(1), np.zeros(2), np.ones(1))  # used to broadcast the one radius


def test_batch_major_inputs_get_a_message_about_the_layout():
    from rhn_np import lm

    params = rhn.init_params(N_IN, N, DEPTH, dtype="float64")
    xs, s0 = np.zeros((4, B, N_IN)), np.zeros((B, N))
    with pytest.raises(ValueError, match=r"s0 has shape \(2, 5\), expected \(4, 5\).*xs is batch-major.*xs.transpose\(1, 0, 2\)"):
        rhn.forward(params, np.swapaxes(xs, 0, 1), s0)
    p = lm.init_lm_params(7, N_IN, N, DEPTH, dtype="float64")
    ids = np.zeros((4, B), np.int64)
    with pytest.raises(ValueError, match=r"ids \(2, 4\)\. If ids is batch-major, make it time-major, \(T, B\), with ids.T"):
        lm.lm_forward(p, ids.T, s0)
    d = lm.init_dense_params(N_IN, N, DEPTH, dtype="float64")
    with pytest.raises(ValueError, match=r"xs.transpose\(1, 0, 2\)"):
        lm.dense_forward(d, np.swapaxes(xs, 0, 1), s0)


def test_language_model_head_and_word_mask_are_checked():
    from rhn_np import lm

    p = lm.init_lm_params(7, N_IN, N, DEPTH, dtype="float64")
    ids, s0 = np.zeros((4, B), np.int64), np.zeros((B, N))
    with pytest.raises(ValueError, match=r"params\['W_out'\] has shape \(5, 8\), expected \(n, V\) = \(5, 7\)"):
        lm.lm_forward({**p, "W_out": np.zeros((N, 8))}, ids, s0)
    with pytest.raises(ValueError, match=r"params\['b_out'\] has shape \(1, 7\), expected \(V,\) = \(7,\)"):
        lm.lm_forward({**p, "b_out": p["b_out"][None]}, ids, s0)
    with pytest.raises(TypeError, match=r"params\['b_out'\] is float32 but the layer's parameters are float64"):
        lm.lm_forward({**p, "b_out": p["b_out"].astype(np.float32)}, ids, s0)
    m = lm.draw_masks(0, ids, vocab=7, n_emb=N_IN, n=N, keep_x=0.5, dtype="float64")
    with pytest.raises(ValueError, match=r"masks\['x'\] has shape \(2, 4, 1\), expected \(T, B, 1\) = \(4, 2, 1\)"):
        lm.lm_forward(p, ids, s0, {**m, "x": np.swapaxes(m["x"], 0, 1)})
    with pytest.raises(TypeError, match=r"masks\['x'\] is float32 but the parameters are float64"):
        lm.lm_forward(p, ids, s0, {**m, "x": m["x"].astype(np.float32)})


def test_numpy_scalars_are_numbers_and_bools_are_not():
    from rhn_np import lm

    p = rhn.init_params(N_IN, N, DEPTH, transform_bias=np.float32(-1.5), init_scale=np.float32(0.1))
    assert np.all(p["b_T"] == -1.5)
    assert set(lm.draw_dense_masks(0, B, n_in=N_IN, n=N, keep_i=np.float32(0.5))) == {"i", "h", "o"}
    with pytest.raises(ValueError, match="transform_bias must be a finite number, got True"):
        rhn.init_params(N_IN, N, DEPTH, transform_bias=True)
    with pytest.raises(TypeError, match="coupled must be True or False, got 'no'"):
        rhn.init_params(N_IN, N, DEPTH, coupled="no")


def test_a_list_where_an_array_belongs_is_named_as_such():
    with pytest.raises(TypeError, match=r"expected arrays, got list: make an array first with numpy.asarray"):
        theory.gersgorin_discs([[1.0, 2.0], [3.0, 4.0]])
    strict = backend.get("array_api_strict")
    with pytest.raises(TypeError, match=r"arrays from different backends were mixed \(array_api_strict, float, numpy\)"):
        backend.namespace(np.zeros(2), strict.zeros((2,), "float64"), 0.5)  # a Python scalar is no culprit


def test_one_step_names_its_own_arguments():
    """step_forward is forward over T = 1: a 1-row s_prev must not be taken for a
    batch-major window, and the message names x and s_prev."""
    params = rhn.init_params(N_IN, N, DEPTH, dtype="float64")
    with pytest.raises(ValueError, match=r"s_prev has shape \(1, 5\) but x has 4 rows \(B\)"):
        theory.step_jacobian(params, np.zeros((4, N_IN)), np.zeros((1, N)))


def test_the_head_check_comes_after_the_layer_check():
    from rhn_np import lm

    d = lm.init_dense_params(N_IN, N, DEPTH, dtype="float64")
    del d["R_H"]
    with pytest.raises(ValueError, match=r"params is missing \['R_H'\]"):
        lm.dense_forward(d, np.zeros((3, B, N_IN)), np.zeros((B, N)))
