"""Shared test setup: Hypothesis profiles and the backend matrix.

Hypothesis profile, chosen by the environment variable ``RHN_HYPOTHESIS_PROFILE``:

* ``dev``       few examples, for the edit-test loop (default on a workstation);
* ``ci``        moderate, the default when the ``CI`` variable is set;
* ``thorough``  many examples, for a nightly or pre-release run.

Backend matrix (fixture ``be``): NumPy always; array-api-strict on its fake device
``Device("device1")`` (catches host/device mixing without a GPU); CuPy only where
:func:`rhn_np.backend.cupy_available` says a GPU is usable, otherwise reported as
skipped.

NumPy's fast path (fixture ``cpu_kernels``): the compiled loops (numba) and the in-place
ufunc kernels, each test run with both; the compiled variant is reported as skipped
where numba is not installed. ``RHN_HIDE_NUMBA=1`` hides numba from the whole test run
(as if it were not installed): CI runs the layer tests so once more.
"""

from __future__ import annotations

import os
import sys

if os.environ.get("RHN_HIDE_NUMBA") == "1":
    sys.modules["numba"] = None  # import numba now raises ImportError, as without it

import numpy as np
import pytest
from hypothesis import settings, strategies as st

from rhn_np import backend, fast, rhn

settings.register_profile("dev", max_examples=10, deadline=None)
settings.register_profile("ci", max_examples=50, deadline=None)
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("RHN_HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# ----------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------
requires_cupy = pytest.mark.skipif(
    not backend.cupy_available(),
    reason=f"CuPy with a CUDA GPU is not available ({backend.cupy_unavailable_reason()})",
)

BACKENDS = [
    pytest.param("numpy", id="numpy"),
    pytest.param("array_api_strict", id="strict"),
    pytest.param("cupy", id="cupy", marks=[requires_cupy, pytest.mark.gpu]),
]


# Tests that run the layer itself use this name; it is the same matrix. (Until commit
# dbf2832 the strict entry carried an xfail for rhn.py's ``b[0]``/``R[l]`` indexing,
# which the Array API standard does not allow on 2-d/3-d arrays.)
LAYER_BACKENDS = BACKENDS


@pytest.fixture(params=fast.CPU_KERNEL_VARIANTS)
def cpu_kernels(request):
    """NumPy's fast path as the compiled loops, then as the ufunc kernels (restored after)."""
    if request.param == "compiled" and fast.compiled_status()[0] is None:
        pytest.skip(f"compiled CPU path: {fast.compiled_status()[1]}")
    previous = fast.set_cpu_kernels(request.param)
    yield request.param
    fast.set_cpu_kernels(previous)


@pytest.fixture(params=BACKENDS)
def be(request):
    """A :class:`rhn_np.backend.Backend` of the matrix (numpy, array_api_strict, cupy)."""
    return backend.get(request.param)


# ----------------------------------------------------------------------------
# Small helpers for building inputs (host NumPy first: identical numbers everywhere)
# ----------------------------------------------------------------------------
def make_inputs(T, B, n_in, n, *, seed=0, masks=False, keep=0.7, s0_scale=0.5):
    """Host float64 ``xs (T, B, n_in)``, ``s0 (B, n)``, ``dys (T, B, n)``, ``ds_last (B, n)``
    and, with ``masks=True``, inverted-dropout masks ``{"x": (B, n_in), "s": (B, n)}``."""
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((T, B, n_in))
    s0 = s0_scale * np.tanh(rng.standard_normal((B, n)))
    dys = rng.standard_normal((T, B, n))
    ds_last = rng.standard_normal((B, n))
    m = None
    if masks:
        m = {
            "x": (rng.random((B, n_in)) < keep) / keep,
            "s": (rng.random((B, n)) < keep) / keep,
        }
    return xs, s0, dys, ds_last, m


def window_case(cfg, dtype, seed=0):
    """Host inputs of one window for ``cfg = (T, B, n_in, n, depth, coupled, masks, ds_last)``:
    ``(params, xs, s0, masks, dys, ds_last)`` in ``dtype`` (masks/ds_last None when off)."""
    T, B, n_in, n, depth, coupled, use_masks, use_last = cfg
    rng = np.random.default_rng(seed)
    p = rhn.init_params(n_in, n, depth, coupled=coupled, init_scale=0.5, transform_bias=-1.0, seed=seed, dtype=dtype)
    xs = rng.standard_normal((T, B, n_in)).astype(dtype)
    s0 = rng.uniform(-1, 1, (B, n)).astype(dtype)
    masks = {"x": rng.uniform(0, 2, (B, n_in)).astype(dtype), "s": rng.uniform(0, 2, (B, n)).astype(dtype)} if use_masks else None
    dys = rng.standard_normal((T, B, n)).astype(dtype)
    last = rng.standard_normal((B, n)).astype(dtype) if use_last else None
    return p, xs, s0, masks, dys, last


def run_window(p, xs, s0, masks, dys, last, impl):
    """Forward + BPTT of one window: ``{"ys", "dxs", "ds0", "d<param>"...}``."""
    ys, cache = rhn.forward(p, xs, s0, masks, impl=impl)
    grads, dxs, ds0 = rhn.backward(p, cache, dys, last)
    return {"ys": ys, "dxs": dxs, "ds0": ds0, **{f"d{k}": v for k, v in grads.items()}}


def draw_layer(data, *, masks=None, ds_last=None, T_max=5, B_max=3, n_in_max=5, n_max=6, depth_max=4,
               init_scale=(0.1, 1.0), transform_bias=(-2.0, 2.0)):
    """Draw a layer configuration (labelled draws) and build float64 host inputs for it.

    Returns ``params, xs, s0, dys, ds_last_or_None, masks_or_None``. ``masks`` /
    ``ds_last`` force the option on or off; None draws it. The default ranges keep
    gates out of saturation everywhere, so central differences stay accurate.
    """
    T = data.draw(st.integers(1, T_max), label="T")
    B = data.draw(st.integers(1, B_max), label="B")
    n_in = data.draw(st.integers(1, n_in_max), label="n_in")
    n = data.draw(st.integers(1, n_max), label="n")
    depth = data.draw(st.integers(1, depth_max), label="depth")
    coupled = data.draw(st.booleans(), label="coupled")
    use_masks = data.draw(st.booleans(), label="masks") if masks is None else masks
    use_ds_last = data.draw(st.booleans(), label="ds_last") if ds_last is None else ds_last
    scale = data.draw(st.floats(*init_scale), label="init_scale")
    bias = data.draw(st.floats(*transform_bias), label="transform_bias")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    from rhn_np import rhn

    params = rhn.init_params(n_in, n, depth, coupled=coupled, init_scale=scale, transform_bias=bias, seed=seed,
                             dtype="float64")
    xs, s0, dys, ds_last_arr, m = make_inputs(T, B, n_in, n, seed=seed, masks=use_masks)
    return params, xs, s0, dys, (ds_last_arr if use_ds_last else None), m


@pytest.fixture(scope="module")
def data_home(tmp_path_factory):
    """One download cache for a test module (``RHN_NP_DATA_HOME``; the pydoc corpus is built
    into it once), the variable restored afterwards."""
    home = tmp_path_factory.mktemp("data-home")
    old = os.environ.get("RHN_NP_DATA_HOME")
    os.environ["RHN_NP_DATA_HOME"] = str(home)
    yield home
    if old is None:
        del os.environ["RHN_NP_DATA_HOME"]
    else:
        os.environ["RHN_NP_DATA_HOME"] = old


def check_dense_gradients(params, xs, targets, s0, masks, step_mask, ds_last, tol):
    """Every gradient of ``lm.dense_loss_and_grads`` (parameters, ``dxs``, ``ds0``) against
    central differences of ``loss + Σ s_last ⊙ ds_last`` (float64 host arrays); returns
    ``(loss, grads, s_last, stats)`` of the analytic call."""
    from rhn_np import gradcheck, lm

    loss, grads, s_last, stats = lm.dense_loss_and_grads(params, xs, targets, s0, masks, step_mask=step_mask,
                                                         ds_last=ds_last)
    assert set(grads) == set(params)

    def f(_):
        l, _, s, _ = lm.dense_loss_and_grads(params, xs, targets, s0, masks, step_mask=step_mask)
        return float(l) + float(np.sum(s * ds_last))

    for k in params:
        err = gradcheck.rel_error(grads[k], gradcheck.numerical_gradient(f, params[k]))
        assert err < tol, (k, err)
    assert gradcheck.rel_error(stats["dxs"], gradcheck.numerical_gradient(f, xs)) < tol
    assert gradcheck.rel_error(stats["ds0"], gradcheck.numerical_gradient(f, s0)) < tol
    return loss, grads, s_last, stats


def on(be, tree, dtype="float64"):
    """Move a host array, or a dict of them (None kept), to backend ``be``."""
    if tree is None:
        return None
    if isinstance(tree, dict):
        return {k: on(be, v, dtype) for k, v in tree.items()}
    return be.to_device(tree, dtype=dtype)


def host(tree):
    """Inverse of :func:`on`: every array of a dict (or one array) to host NumPy."""
    if tree is None:
        return None
    if isinstance(tree, dict):
        return {k: host(v) for k, v in tree.items()}
    return backend.to_host(tree)
