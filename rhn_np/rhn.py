r"""The Recurrent Highway Network layer: explicit forward and hand-written BPTT.

Notation (paper Eqs. 6-9, row-vector convention, micro-layer :math:`\ell = 1..L`
inside time step :math:`t`; code index ``l = ℓ - 1``)::

    a_G[ℓ] = [ℓ=1]·x_t @ W_G + s[ℓ-1] @ R_G[ℓ] + b_G[ℓ]        G ∈ {H, T, C}
    h[ℓ]   = tanh(a_H[ℓ])                                     (Eq. 7)
    t[ℓ]   = σ(a_T[ℓ])                                        (Eq. 8)
    c[ℓ]   = σ(a_C[ℓ])   or   1 - t[ℓ] (coupled, the paper)   (Eq. 9)
    s[ℓ]   = h[ℓ] ⊙ t[ℓ] + s[ℓ-1] ⊙ c[ℓ]                       (Eq. 6)

with ``s[0]`` of step t the output of step t-1 (``s0`` at t = 1) and the output
``y_t = s[L]``. Only micro-layer 1 sees the input; each micro-layer has its own
``R_G[ℓ]`` and ``b_G[ℓ]``.

Variational dropout (``masks``): ``masks["x"]`` (B, n_in) multiplies ``x_t`` at
micro-layer 1; ``masks["s"]`` (B, n) multiplies the state that enters the
transforms, ``s[ℓ-1] @ R_G`` becomes ``(s[ℓ-1] ⊙ m_s) @ R_G``, the same mask at
every micro-layer and step. The carry term ``s[ℓ-1] ⊙ c`` uses the unmasked
state (the authors' TensorFlow scheme).

Parameters are a dict keyed by the paper's names (shapes for ``n_in`` inputs,
``n`` units, recurrence depth ``L``)::

    W_H, W_T, (W_C)   (n_in, n)     input weights, used by micro-layer 1 only
    R_H, R_T, (R_C)   (L, n, n)     recurrent weights of every micro-layer
    b_H, b_T, (b_C)   (L, n)        biases; b_T starts at ``transform_bias``

Internally the gates are fused along the last axis, ``[H | T | (C)]``, so that one
matrix product per micro-step computes every pre-activation
(:func:`fuse_params`); users only ever see the dict above.

Functions here are written against the Array API standard: the same code runs on
NumPy, CuPy and array-api-strict arrays. On CuPy, :func:`forward` and
:func:`backward` use the fused-kernel fast path of :mod:`rhn_np.fast` by default;
this module is the reference it is tested against. Argument checks are in
:mod:`rhn_np.checks`: each public function opens with one call there.

This module is one *cell* (:mod:`rhn_np.cells`): ``init_params``, ``param_shapes``,
``dims``, ``forward``, ``backward``, ``step_forward``, ``step_backward``; the language
model, the trainer and the theory take it, or any other cell, by name.
"""

from __future__ import annotations

import math

import numpy as np

from . import backend as _backend
from . import checks, fast

NAME = "rhn"
FAST_PATH = True  # CUDA kernels in rhn_np.fast (and CUDA graphs of them, rhn_np.graphs); on NumPy, rhn_np.fast too

__all__ = [
    "init_params",
    "param_shapes",
    "dims",
    "is_coupled",
    "gate_names",
    "fuse_params",
    "split_grads",
    "sigmoid",
    "micro_forward",
    "micro_backward",
    "step_forward",
    "step_backward",
    "forward",
    "backward",
    "cache_nbytes",
]


# ----------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------
def gate_names(coupled: bool) -> tuple[str, ...]:
    """Gates with their own weights: ("H", "T") coupled (c = 1 - t), ("H", "T", "C") not."""
    return ("H", "T") if coupled else ("H", "T", "C")


def param_shapes(n_in: int, n: int, depth: int, coupled: bool = True) -> dict[str, tuple[int, ...]]:
    """Shape of every parameter, keyed by the paper's names."""
    coupled = checks.flag("coupled", coupled)
    shapes = {}
    for g in gate_names(coupled):
        shapes[f"W_{g}"] = (n_in, n)
    for g in gate_names(coupled):
        shapes[f"R_{g}"] = (depth, n, n)
    for g in gate_names(coupled):
        shapes[f"b_{g}"] = (depth, n)
    return shapes


def init_params(
    n_in,
    n,
    depth,
    *,
    coupled=True,
    transform_bias=-2.0,
    init_scale=0.04,
    seed=0,
    dtype="float32",
    backend="numpy",
):
    """Initial RHN parameters, as in the authors' code.

    Every weight and bias is drawn from U(-init_scale, init_scale), except the
    transform-gate bias ``b_T``, which is the constant ``transform_bias`` in every
    micro-layer (negative: the layer starts close to carrying its state, Eq. 15).

    Numbers are drawn on the host with ``numpy.random.default_rng(seed)`` in the
    order of :func:`param_shapes`, so every backend gets identical weights.

    Parameters
    ----------
    n_in, n, depth : int
        Input width, number of units, recurrence depth L (>= 1).
    coupled : bool
        ``True``: carry gate c = 1 - t (the paper). ``False``: own ``W_C, R_C, b_C``.
    transform_bias, init_scale : float
    seed : int or numpy.random.Generator
    dtype : "float32" or "float64", or such a dtype of any backend (``numpy.float64``)
    backend : {"numpy", "cupy", "auto", "array_api_strict"} or Backend

    Returns
    -------
    dict of str -> array, shapes as in :func:`param_shapes`.
    """
    n_in, n, depth = (checks.positive_int(k, v) for k, v in (("n_in", n_in), ("n", n), ("depth", depth)))
    coupled = checks.flag("coupled", coupled)
    dtype = _backend.float_dtype_name(dtype)
    init_scale = checks.init_scale(init_scale, dtype)
    transform_bias = checks.representable("transform_bias", checks.finite_real("transform_bias", transform_bias), dtype)
    be = _backend.get(backend)
    rng = checks.seed("seed", seed)
    params = {}
    for name, shape in param_shapes(n_in, n, depth, coupled).items():
        if name == "b_T":
            host = np.full(shape, float(transform_bias))
        else:
            host = rng.uniform(-init_scale, init_scale, size=shape)
        params[name] = be.to_device(host, dtype=dtype)
    return params


def is_coupled(params) -> bool:
    """Whether the carry gate is ``c = 1 - t`` (no ``W_C, R_C, b_C`` in ``params``)."""
    return "W_C" not in params


def dims(params):
    """``(n_in, n, depth, dtype)`` of a parameter dict, checked (the cell interface)."""
    return _checked(params)[1:5]


def _checked(params):
    return checks.cell_params(params, cell="RHN", shapes=lambda n_in, n, depth, uncoupled: param_shapes(
        n_in, n, depth, coupled=not uncoupled), anchor=("W_H", "R_H"),
                              variant_keys=("W_C", "R_C", "b_C"), build="rhn.init_params(...)")


def fuse_params(params):
    """Concatenate the gates along the last axis: ``W (n_in, k·n)``, ``R (L, n, k·n)``,
    ``b (L, k·n)`` with column blocks ``[H | T | (C)]`` and ``k`` = 2 (coupled) or 3."""
    xp = _backend.namespace(*params.values())
    gates = gate_names(is_coupled(params))
    W = xp.concat([params[f"W_{g}"] for g in gates], axis=1)
    R = xp.concat([params[f"R_{g}"] for g in gates], axis=2)
    b = xp.concat([params[f"b_{g}"] for g in gates], axis=1)
    return W, R, b


def split_grads(dW, dR, db, coupled: bool):
    """Inverse of :func:`fuse_params` for gradients: fused blocks -> dict of the paper's names."""
    n = dR.shape[1]
    grads = {}
    for k, g in enumerate(gate_names(coupled)):
        grads[f"W_{g}"] = dW[:, k * n : (k + 1) * n]
        grads[f"R_{g}"] = dR[:, :, k * n : (k + 1) * n]
        grads[f"b_{g}"] = db[:, k * n : (k + 1) * n]
    return grads


# ----------------------------------------------------------------------------
# One micro-layer: the gate maths (Eqs. 6-9) and its derivative
# ----------------------------------------------------------------------------
def sigmoid(x, xp=None):
    """σ(x) = 1 / (1 + e^-x), computed as (1 + tanh(x/2)) / 2: no overflow for any x."""
    xp = xp or _backend.namespace(x)
    return 0.5 * (1.0 + xp.tanh(0.5 * x))


def micro_forward(a, s_in, coupled=True):
    """Gate maths of one micro-layer, given its pre-activations.

    Eqs. 6-9: ``h = tanh(a_H)``, ``t = σ(a_T)``, ``c = σ(a_C)`` (or ``1 - t``),
    ``s = h ⊙ t + s_in ⊙ c``.

    Parameters
    ----------
    a : (B, k·n) pre-activations ``[a_H | a_T | (a_C)]`` (see :func:`fuse_params`)
    s_in : (B, n) the micro-layer's input state ``s[ℓ-1]`` (unmasked: carry path)

    Returns
    -------
    s (B, n), h (B, n), t (B, n), c (B, n) or None when coupled
    """
    checks.plain("a", a)
    checks.plain("s_in", s_in)
    coupled = checks.flag("coupled", coupled)
    xp = _backend.namespace(a, s_in)
    n = s_in.shape[-1]
    h = xp.tanh(a[:, :n])  # Eq. 7
    t = sigmoid(a[:, n : 2 * n], xp)  # Eq. 8
    if coupled:
        c = None
        s = h * t + s_in * (1.0 - t)  # Eq. 6 with c = 1 - t (Eq. 9, coupled)
    else:
        c = sigmoid(a[:, 2 * n :], xp)  # Eq. 9
        s = h * t + s_in * c  # Eq. 6
    return s, h, t, c


def micro_backward(ds, s_in, h, t, c=None):
    """Backward of :func:`micro_forward`.

    From ``s = h ⊙ t + s_in ⊙ c``::

        ∂L/∂a_H = ds ⊙ t ⊙ (1 - h²)
        ∂L/∂a_T = ds ⊙ (h - s_in) ⊙ t(1 - t)        coupled (c = 1 - t)
                = ds ⊙ h ⊙ t(1 - t)                 uncoupled
        ∂L/∂a_C = ds ⊙ s_in ⊙ c(1 - c)              uncoupled
        carry:  ∂L/∂s_in (direct path) = ds ⊙ c

    Returns
    -------
    da : (B, k·n) gradient of the fused pre-activations ``[a_H | a_T | (a_C)]``
    ds_carry : (B, n) the part of ∂L/∂s_in that flows through the carry term
        (the part through ``a`` is ``(da @ Rᵀ) ⊙ m_s``, added by the caller)
    """
    checks.plain_all("ds s_in h t c", ds, s_in, h, t, c)
    xp = _backend.namespace(ds, s_in, h, t, c)
    da_H = ds * t * (1.0 - h * h)  # BPTT of Eqs. 6-7
    if c is None:
        da_T = ds * (h - s_in) * t * (1.0 - t)
        ds_carry = ds * (1.0 - t)
        return xp.concat([da_H, da_T], axis=1), ds_carry
    da_T = ds * h * t * (1.0 - t)
    da_C = ds * s_in * c * (1.0 - c)
    ds_carry = ds * c
    return xp.concat([da_H, da_T, da_C], axis=1), ds_carry


# ----------------------------------------------------------------------------
# One time step: the L micro-layers (the body of the time loop)
# ----------------------------------------------------------------------------
def _step_forward(a_x, s, R, b, m_s, coupled):
    """Micro-layers 1..L of one time step on fused weights.

    a_x : (B, k·n) the input part of micro-layer 1, ``x_t @ W + b[0]``
    s   : (B, n) the state from the previous step
    Returns the new state and, per micro-layer, ``(s_in, h, t, c)``.
    """
    layers = []
    for l in range(R.shape[0]):
        s_tr = s if m_s is None else s * m_s  # state seen by the transforms (masked)
        a = s_tr @ R[l, ...] + (a_x if l == 0 else b[l, ...])  # (B, k·n) pre-activations of Eqs. 7-9: one product
        s_new, h, t, c = micro_forward(a, s, coupled)
        layers.append((s, h, t, c))
        s = s_new
    return s, layers


def _step_backward(ds, layers, R_t, m_s):
    """Backward of :func:`_step_forward`: micro-layers L..1.

    ds : (B, n) gradient arriving at the step's output state.
    R_t : (L, k·n, n) the fused recurrent weights transposed, ``R_t[l] = R[l]ᵀ``.
    Returns ∂L/∂s (previous step's state) and, per micro-layer, ∂L/∂a (B, k·n).
    """
    das = [None] * len(layers)
    for l in reversed(range(len(layers))):
        s_in, h, t, c = layers[l]
        da, ds_carry = micro_backward(ds, s_in, h, t, c)
        ds_tr = da @ R_t[l, ...]  # (B, n) through the transforms: ∂L/∂a @ R[ℓ]ᵀ
        ds = ds_carry + (ds_tr if m_s is None else ds_tr * m_s)
        das[l] = da
    return ds, das


# ----------------------------------------------------------------------------
# Public API: one step (teaching) and the whole sequence
# ----------------------------------------------------------------------------
def step_forward(params, x, s_prev, masks=None):
    """One time step, micro-layers 1..L (CS231n style).

    Parameters
    ----------
    params : dict from :func:`init_params`
    x : (B, n_in) input ``x_t``
    s_prev : (B, n) state ``s_{t-1}`` (= ``y_{t-1}``)
    masks : optional dict ``{"x": (B, n_in), "s": (B, n)}``

    Returns
    -------
    s : (B, n) the new state ``y_t = s[L]``
    cache : dict for :func:`step_backward`

    This is :func:`forward` on a window of one step, so the step and the sequence share
    every line: the loop over micro-layers that both run is ``_step_forward`` above
    (one matrix product and :func:`micro_forward` per micro-layer), and
    :func:`step_backward` runs ``_step_backward`` (:func:`micro_backward`, then the
    gradient through the transforms, micro-layer L down to 1).
    """
    xp, n_in, n, _, dtype, _ = _checked(params)
    checks.step_inputs("rhn", x, s_prev, (xp, n_in, n, dtype))
    ys, cache = forward(params, x[None, ...], s_prev, masks, impl="reference")
    return ys[0, ...], cache


def step_backward(params, cache, ds):
    """Backward of :func:`step_forward`.

    ds : (B, n) gradient of the loss with respect to the step's output state.
    Returns ``grads`` (dict like ``params``), ``dx`` (B, n_in) and ``ds_prev`` (B, n).
    """
    checks.step_grad(ds, *checks.step_cache(cache, "rhn"), cache["dims"][-1])
    grads, dxs, ds_prev = backward(params, cache, ds[None, ...])
    return grads, dxs[0, ...], ds_prev


def forward(params, xs, s0, masks=None, *, impl="auto"):
    """Run the RHN layer over a window of T steps.

    Parameters
    ----------
    params : dict from :func:`init_params`
    xs : (T, B, n_in) inputs
    s0 : (B, n) initial state (the last state of the previous window, or zeros)
    masks : optional dict ``{"x": (B, n_in), "s": (B, n)}`` of variational dropout
        masks, already scaled by 1/keep (see the module docstring)
    impl : {"auto", "reference", "fast"}
        "reference" is this module's readable Array API code. "fast" is
        :mod:`rhn_np.fast` (preallocated buffers; fused CuPy kernels on the GPU; on NumPy
        the compiled loops of :mod:`rhn_np.fast.compiled` when numba is installed, else
        in-place ufunc kernels). "auto" picks "fast" on CuPy and on NumPy with numba, and
        "reference" elsewhere (:func:`rhn_np.fast.resolve`).

    Returns
    -------
    ys : (T, B, n) the last micro-layer's state at each step
    cache : dict holding what :func:`backward` needs: per step and micro-layer the
        input state, h and t (and c), i.e. (3 or 4)·L·T·B·n numbers; no weights.
        Its layout is public (``rhn_np.theory`` and the notebooks read the gate values
        from it): ``cache["s_in"]``, ``cache["h"]``, ``cache["t"]`` and, uncoupled,
        ``cache["c"]`` are (L, T, B, n) arrays with ``s_in[l, t]`` the input state of
        micro-layer l + 1 at step t, and ``h[l, t]``, ``t[l, t]``, ``c[l, t]`` its gate
        values; ``cache["m_x"]``, ``cache["m_s"]`` are the masks (or None).
        It references ``xs`` and the masks rather than copying them, and
        :func:`backward` reads the weights from ``params`` again: change none of
        them in place (an optimiser step included) before calling :func:`backward`,
        or its gradients belong to no single forward pass.
    """
    xp, n_in, n, depth, dtype, uncoupled = _checked(params)
    xp, T, B, m_x, m_s = checks.window_inputs(xp, n_in, n, dtype, params, xs, s0, masks)
    coupled = not uncoupled
    W, R, b = fuse_params(params)
    cache = {"cell": "rhn", "dims": (T, B, n_in, n, depth, uncoupled, dtype), "xs": xs, "m_x": m_x, "m_s": m_s}
    if fast.resolve(checks.impl(impl, xs), xs) == "fast":
        ys, gates = fast.forward(W, R, b, xs, s0, m_x, m_s, coupled)
        return ys, {**cache, "impl": "fast", **gates}
    kn = R.shape[2]
    dev = _backend.device_of(xs)

    x_in = xs if m_x is None else xs * m_x  # masks["x"] is shared by all T steps
    # Input projection of all T steps in one product; micro-layer 1's bias folded in.
    a_x = xp.reshape(xp.reshape(x_in, (T * B, n_in)) @ W, (T, B, kn)) + b[0, ...]  # x-part of Eqs. 7-9

    S = xp.empty((depth, T, B, n), dtype=dtype, device=dev)  # input state of each micro-layer
    Hs = xp.empty((depth, T, B, n), dtype=dtype, device=dev)
    Ts = xp.empty((depth, T, B, n), dtype=dtype, device=dev)
    Cs = None if coupled else xp.empty((depth, T, B, n), dtype=dtype, device=dev)
    ys = xp.empty((T, B, n), dtype=dtype, device=dev)

    s = s0
    for step in range(T):
        s, layers = _step_forward(a_x[step, ...], s, R, b, m_s, coupled)
        for l, (s_in, h, t, c) in enumerate(layers):
            S[l, step, ...] = s_in
            Hs[l, step, ...] = h
            Ts[l, step, ...] = t
            if c is not None:
                Cs[l, step, ...] = c
        ys[step, ...] = s
    return ys, {**cache, "impl": "reference", "s_in": S, "h": Hs, "t": Ts, "c": Cs}


def backward(params, cache, dys, ds_last=None):
    """Backpropagation through time over the window of :func:`forward`.

    Parameters
    ----------
    params : the dict given to :func:`forward`, with the same values (not yet
        updated by an optimiser step)
    cache : from :func:`forward` (its ``xs`` and masks unchanged since)
    dys : (T, B, n) gradient of the loss with respect to each output ``y_t``
    ds_last : optional (B, n) gradient arriving at the final state from a later
        window (truncated BPTT chains exactly through it)

    Returns
    -------
    grads : dict with the keys and shapes of ``params``
    dxs : (T, B, n_in) gradient with respect to ``xs``
    ds0 : (B, n) gradient with respect to ``s0``
    """
    xp, n_in, n, depth, dtype, uncoupled = _checked(params)
    T, B = checks.cache_matches(cache, (n_in, n, depth, uncoupled, dtype), "rhn")
    xp = checks.window_grads(xp, params, cache, dys, ds_last, T, B, n, dtype)
    coupled = not uncoupled
    W, R, _ = fuse_params(params)
    xs, m_s, m_x = cache["xs"], cache["m_s"], cache["m_x"]
    if cache["impl"] == "fast":
        dW, dR, db, dxs, ds0 = fast.backward(W, R, cache, xs, m_x, m_s, dys, ds_last, coupled)
        return split_grads(dW, dR, db, coupled), dxs, ds0

    kn = R.shape[2]
    # Rᵀ of every micro-layer, copied once per window: a BLAS multiplies by a stored Rᵀ
    # faster than by a transposed view (about 10 % of the backward at the small size).
    R_t = xp.reshape(xp.matrix_transpose(R), (depth, kn, n), copy=True)
    del R  # only its transpose is needed from here on: no second copy held
    dev = _backend.device_of(dys)
    S, Hs, Ts, Cs = cache["s_in"], cache["h"], cache["t"], cache["c"]

    dA = xp.empty((depth, T, B, kn), dtype=dtype, device=dev)  # ∂L/∂a of every micro-layer and step
    ds = xp.zeros((B, n), dtype=dtype, device=dev) if ds_last is None else ds_last
    for step in reversed(range(T)):
        ds = ds + dys[step, ...]
        layers = [(S[l, step, ...], Hs[l, step, ...], Ts[l, step, ...], None if Cs is None else Cs[l, step, ...])
                  for l in range(depth)]
        ds, das = _step_backward(ds, layers, R_t, m_s)
        for l in range(depth):
            dA[l, step, ...] = das[l]
    ds0 = ds

    # Weight gradients: one product per micro-layer over all T·B rows (not T small ones),
    # batched over the micro-layers: (L, n, T·B) @ (L, T·B, k·n) -> (L, n, k·n).
    S_tr = S if m_s is None else S * m_s  # the states the transforms saw
    dR = xp.matrix_transpose(xp.reshape(S_tr, (depth, T * B, n))) @ xp.reshape(dA, (depth, T * B, kn))
    db = xp.sum(xp.reshape(dA, (depth, T * B, kn)), axis=1)
    dA1 = xp.reshape(dA[0, ...], (T * B, kn))  # only micro-layer 1 sees the input
    x_in = xs if m_x is None else xs * m_x
    dW = xp.reshape(x_in, (T * B, n_in)).T @ dA1
    dxs = xp.reshape(dA1 @ W.T, (T, B, n_in))
    if m_x is not None:
        dxs = dxs * m_x
    return split_grads(dW, dR, db, coupled), dxs, ds0


def cache_nbytes(cache) -> int:
    """Bytes the cache owns (the inputs ``xs`` and the masks are referenced, not copied)."""
    total = 0
    for key in ("s_in", "h", "t", "c"):
        a = cache.get(key)
        if a is not None:
            total += math.prod(a.shape) * (8 if "64" in str(a.dtype) else 4)
    return total
