r"""The deep-transition RNN (DT-RNN) and its shortcut variant DT(S)-RNN: the paper's baselines.

Pascanu et al. (2013), "How to construct deep recurrent neural networks", §3.2: the
transition from ``s_{t-1}`` to ``s_t`` is an MLP of L tanh layers (Fig. 2(b)); the
DT(S)-RNN adds a shortcut from the previous state to the last layer (Fig. 2(b*)). Our
reading: the input enters the first intermediate layer, the shortcut connects
``s_{t-1}`` to the last one. The RHN paper compares both with the RHN at recurrence
depths 1, 2, 4, 6 (§5.1, Fig. 4).

Notation (row vectors, micro-layer :math:`\ell = 1..L` inside time step t, code index
``l = ℓ - 1``, ``z_0 = s_{t-1}``)::

    a_ℓ = [ℓ=1]·(x_t ⊙ m_x) @ W + (z_{ℓ-1} ⊙ m_s) @ R[ℓ] + b[ℓ]
                               + [ℓ=L, shortcut]·(s_{t-1} ⊙ m_s) @ U          (DT-1)
    z_ℓ = tanh(a_ℓ)                                                          (DT-2)
    s_t = y_t = z_L

At depth 1 without the shortcut this is the plain tanh RNN of the paper's Eq. 2,
``y_t = tanh(x_t @ W + y_{t-1} @ R + b)``; :mod:`rhn_np.theory`'s RNN functions run it
through this module.

Variational dropout as in :mod:`rhn_np.rhn`: ``masks["x"]`` (B, n_in) on the input,
``masks["s"]`` (B, n) on every state that enters a matrix product (the same mask at
every micro-layer and step, the shortcut included).

Parameters (``n_in`` inputs, ``n`` units, depth ``L``)::

    W   (n_in, n)     input weights, micro-layer 1 only
    R   (L, n, n)     weights of each micro-layer, from its input z_{ℓ-1}
    b   (L, n)        biases
    U   (n, n)        shortcut s_{t-1} -> last micro-layer (DT(S)-RNN only)

Backward (``g_ℓ = ∂L/∂z_ℓ``, ``da_ℓ = ∂L/∂a_ℓ``), from (DT-1), (DT-2)::

    da_ℓ      = g_ℓ ⊙ (1 - z_ℓ²)                          tanh' from the stored z_ℓ
    g_{ℓ-1}   = (da_ℓ @ R[ℓ]ᵀ) ⊙ m_s                       through the micro-layer
    ∂L/∂s_{t-1} = g_0  (+ (da_L @ Uᵀ) ⊙ m_s, shortcut)
    ∂L/∂R[ℓ]  = Σ_t (z_{ℓ-1} ⊙ m_s)ᵀ da_ℓ                  ∂L/∂b[ℓ] = Σ_t Σ_b da_ℓ
    ∂L/∂W     = Σ_t (x_t ⊙ m_x)ᵀ da_1                      ∂L/∂x_t = (da_1 @ Wᵀ) ⊙ m_x
    ∂L/∂U     = Σ_t (s_{t-1} ⊙ m_s)ᵀ da_L

This module is a *cell* (:mod:`rhn_np.cells`) with the interface of :mod:`rhn_np.rhn`.
Its fast path is the compiled CPU loop (:func:`rhn_np.fast.dt_forward`, numba, NumPy
arrays); it has no CUDA kernels (on CuPy this reference code runs as is).
"""

from __future__ import annotations

from . import backend as _backend
from . import checks, fast

NAME = "dtrnn"
FAST_PATH = False  # no CUDA kernels; the compiled CPU loop is rhn_np.fast.dt_forward

__all__ = [
    "init_params",
    "param_shapes",
    "dims",
    "has_shortcut",
    "micro_forward",
    "micro_backward",
    "step_forward",
    "step_backward",
    "forward",
    "backward",
    "rnn_params",
]


# ----------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------
def param_shapes(n_in: int, n: int, depth: int, shortcut: bool = False) -> dict[str, tuple[int, ...]]:
    """Shape of every parameter: ``W (n_in, n)``, ``R (L, n, n)``, ``b (L, n)``, (``U (n, n)``)."""
    shapes = {"W": (n_in, n), "R": (depth, n, n), "b": (depth, n)}
    if checks.flag("shortcut", shortcut):
        shapes["U"] = (n, n)
    return shapes


def init_params(n_in, n, depth, *, shortcut=False, init_scale=0.04, seed=0, dtype="float32", backend="numpy"):
    """Initial DT-RNN (``shortcut=True``: DT(S)-RNN) parameters, U(-init_scale, init_scale).

    Drawn on the host with ``numpy.random.default_rng(seed)`` in the order of
    :func:`param_shapes`, so every backend gets identical weights.

    Returns
    -------
    dict of str -> array, shapes as in :func:`param_shapes`.
    """
    n_in, n, depth = (checks.positive_int(k, v) for k, v in (("n_in", n_in), ("n", n), ("depth", depth)))
    shortcut = checks.flag("shortcut", shortcut)
    dtype = _backend.float_dtype_name(dtype)
    init_scale = checks.init_scale(init_scale, dtype)
    be = _backend.get(backend)
    rng = checks.seed("seed", seed)
    return {name: be.to_device(rng.uniform(-init_scale, init_scale, size=shape), dtype=dtype)
            for name, shape in param_shapes(n_in, n, depth, shortcut).items()}


def has_shortcut(params) -> bool:
    """Whether ``params`` are a DT(S)-RNN's (they hold the shortcut ``U``)."""
    return "U" in params


def dims(params):
    """``(n_in, n, depth, dtype)`` of a parameter dict, checked (the cell interface)."""
    return _checked(params)[1:5]


def _checked(params):
    return checks.cell_params(params, cell="DT-RNN", shapes=param_shapes, anchor=("W", "R"), variant_keys=("U",),
                              build="dtrnn.init_params(...)")


# ----------------------------------------------------------------------------
# One micro-layer and its derivative
# ----------------------------------------------------------------------------
def micro_forward(a):
    """``z = tanh(a)`` (DT-2); a (B, n) -> z (B, n)."""
    checks.plain("a", a)
    return _backend.namespace(a).tanh(a)


def micro_backward(dz, z):
    """``∂L/∂a = ∂L/∂z ⊙ (1 - z²)`` from the stored output ``z``."""
    checks.plain("dz", dz)
    checks.plain("z", z)
    return dz * (1.0 - z * z)


# ----------------------------------------------------------------------------
# One time step: the L micro-layers (the body of the time loop)
# ----------------------------------------------------------------------------
def _step_forward(a_x, s, R, b, U, m_s):
    """Micro-layers 1..L of one step. ``a_x`` (B, n) = ``(x_t ⊙ m_x) @ W + b[0]``.

    Returns the new state and the outputs ``z_1..z_L``."""
    depth = R.shape[0]
    s_tr = s if m_s is None else s * m_s  # s_{t-1} as the products see it
    z, zs = s, []
    for l in range(depth):
        z_tr = s_tr if l == 0 else (z if m_s is None else z * m_s)
        a = z_tr @ R[l, ...] + (a_x if l == 0 else b[l, ...])  # (DT-1)
        if l == depth - 1 and U is not None:
            a = a + s_tr @ U  # the shortcut into the last micro-layer
        z = micro_forward(a)  # (DT-2)
        zs.append(z)
    return z, zs


def _step_backward(ds, z_prev, zs, R_t, U_t, m_s):
    """Backward of :func:`_step_forward`: micro-layers L..1.

    ds (B, n) at ``s_t``; ``z_prev`` = ``s_{t-1}``; ``R_t[l] = R[l]ᵀ``, ``U_t = Uᵀ`` (or None).
    Returns ∂L/∂s_{t-1} and, per micro-layer, ∂L/∂a (B, n)."""
    depth = len(zs)
    das = [None] * depth
    g = ds
    d_short = None
    for l in reversed(range(depth)):
        da = micro_backward(g, zs[l])
        das[l] = da
        if l == depth - 1 and U_t is not None:
            d_short = da @ U_t  # (B, n) through the shortcut
        g = da @ R_t[l, ...]  # through the micro-layer's product
        if m_s is not None:
            g = g * m_s
    if d_short is not None:
        g = g + (d_short if m_s is None else d_short * m_s)
    return g, das


# ----------------------------------------------------------------------------
# Public API: one step and the whole sequence
# ----------------------------------------------------------------------------
def step_forward(params, x, s_prev, masks=None):
    """One time step: ``forward`` on a window of one step. x (B, n_in), s_prev (B, n) -> (s (B, n), cache)."""
    xp, n_in, n, _, dtype, _ = _checked(params)
    checks.step_inputs("dtrnn", x, s_prev, (xp, n_in, n, dtype))
    ys, cache = forward(params, x[None, ...], s_prev, masks, impl="reference")
    return ys[0, ...], cache


def step_backward(params, cache, ds):
    """Backward of :func:`step_forward`: ``(grads, dx (B, n_in), ds_prev (B, n))``."""
    checks.step_grad(ds, *checks.step_cache(cache, "dtrnn"), cache["dims"][-1])
    grads, dxs, ds_prev = backward(params, cache, ds[None, ...])
    return grads, dxs[0, ...], ds_prev


def forward(params, xs, s0, masks=None, *, impl="auto"):
    """Run the DT-RNN over a window of T steps.

    Parameters
    ----------
    params : dict from :func:`init_params`
    xs : (T, B, n_in) inputs
    s0 : (B, n) initial state
    masks : optional ``{"x": (B, n_in), "s": (B, n)}``
    impl : {"auto", "reference", "fast"}
        "fast": the compiled loop of :mod:`rhn_np.fast` (NumPy arrays, numba installed).
        "auto": that where it runs, else this module's reference code.

    Returns
    -------
    ys : (T, B, n)
    cache : ``cache["z"]`` (L, T, B, n) the output of every micro-layer and step,
        ``cache["s_prev"]`` (T, B, n) the state each step started from; ``xs`` and the
        masks referenced (change none of them, nor the parameters, before :func:`backward`).
    """
    xp, n_in, n, depth, dtype, shortcut = _checked(params)
    xp, T, B, m_x, m_s = checks.window_inputs(xp, n_in, n, dtype, params, xs, s0, masks)
    W, R, b, U = params["W"], params["R"], params["b"], params.get("U")
    base = {"cell": "dtrnn", "dims": (T, B, n_in, n, depth, shortcut, dtype), "xs": xs, "m_x": m_x, "m_s": m_s}
    if fast.resolve(checks.impl(impl, xs), xs, cuda=False, numpy_gates=False) == "fast":
        ys, Z, S_prev = fast.dt_forward(W, R, b, U, xs, s0, m_x, m_s)
        return ys, {**base, "impl": "fast", "z": Z, "s_prev": S_prev}
    dev = _backend.device_of(xs)
    x_in = xs if m_x is None else xs * m_x
    a_x = xp.reshape(xp.reshape(x_in, (T * B, n_in)) @ W, (T, B, n)) + b[0, ...]  # input part of (DT-1), all T steps

    Z = xp.empty((depth, T, B, n), dtype=dtype, device=dev)  # z_ℓ of every micro-layer and step
    S_prev = xp.empty((T, B, n), dtype=dtype, device=dev)  # s_{t-1} of every step
    ys = xp.empty((T, B, n), dtype=dtype, device=dev)
    s = s0
    for step in range(T):
        S_prev[step, ...] = s
        s, zs = _step_forward(a_x[step, ...], s, R, b, U, m_s)
        for l, z in enumerate(zs):
            Z[l, step, ...] = z
        ys[step, ...] = s
    return ys, {**base, "impl": "reference", "z": Z, "s_prev": S_prev}


def backward(params, cache, dys, ds_last=None):
    """Backpropagation through time over the window of :func:`forward`.

    dys (T, B, n) gradient at each output; ``ds_last`` (B, n) gradient arriving at the
    final state from a later window. Returns ``grads`` (the keys of ``params``),
    ``dxs`` (T, B, n_in) and ``ds0`` (B, n).
    """
    xp, n_in, n, depth, dtype, shortcut = _checked(params)
    T, B = checks.cache_matches(cache, (n_in, n, depth, shortcut, dtype), "dtrnn")
    xp = checks.window_grads(xp, params, cache, dys, ds_last, T, B, n, dtype)
    W, R, U = params["W"], params["R"], params.get("U")
    Z, S_prev, m_x, m_s, xs = cache["z"], cache["s_prev"], cache["m_x"], cache["m_s"], cache["xs"]
    if cache["impl"] == "fast":
        dA, ds = fast.dt_backward(R, U, Z, dys, m_s, ds_last)
    else:
        dA, ds = _backward_steps(xp, R, U, Z, S_prev, dys, m_s, ds_last)

    # Weight gradients: one product per micro-layer over all T·B rows.
    # The input of micro-layer ℓ is z_{ℓ-1}: s_{t-1} for ℓ = 1, else Z[ℓ-2].
    inputs = xp.concat([S_prev[None, ...], Z[:-1, ...]], axis=0)  # (L, T, B, n)
    inputs_tr = inputs if m_s is None else inputs * m_s
    flat = lambda a: xp.reshape(a, (-1, a.shape[-1]))  # noqa: E731  (..., k) -> (rows, k)
    dR = xp.matrix_transpose(xp.reshape(inputs_tr, (depth, T * B, n))) @ xp.reshape(dA, (depth, T * B, n))
    db = xp.sum(xp.reshape(dA, (depth, T * B, n)), axis=1)
    x_in = xs if m_x is None else xs * m_x
    dA1 = flat(dA[0, ...])
    grads = {"W": flat(x_in).T @ dA1, "R": dR, "b": db}
    if U is not None:
        s_tr = S_prev if m_s is None else S_prev * m_s
        grads["U"] = flat(s_tr).T @ flat(dA[depth - 1, ...])
    dxs = xp.reshape(dA1 @ W.T, (T, B, n_in))
    if m_x is not None:
        dxs = dxs * m_x
    return grads, dxs, ds


def _backward_steps(xp, R, U, Z, S_prev, dys, m_s, ds_last):
    """The time loop of :func:`backward`: ∂L/∂a of every micro-layer and step, and ∂L/∂s0."""
    depth, T, B, n = Z.shape
    R_t = xp.reshape(xp.matrix_transpose(R), (depth, n, n), copy=True)  # Rᵀ stored: faster products
    U_t = None if U is None else xp.asarray(U.T, copy=True)
    dev = _backend.device_of(dys)
    dA = xp.empty((depth, T, B, n), dtype=Z.dtype, device=dev)
    ds = xp.zeros((B, n), dtype=Z.dtype, device=dev) if ds_last is None else ds_last
    for step in reversed(range(T)):
        ds = ds + dys[step, ...]
        ds, das = _step_backward(ds, S_prev[step, ...], [Z[l, step, ...] for l in range(depth)], R_t, U_t, m_s)
        for l in range(depth):
            dA[l, step, ...] = das[l]
    return dA, ds


# ----------------------------------------------------------------------------
# The plain tanh RNN (paper Eq. 2): depth 1, no shortcut
# ----------------------------------------------------------------------------
def rnn_params(R, W, b):
    """A depth-1 DT-RNN's params from the plain RNN's ``R (n, n)``, ``W (n_in, n)``, ``b (n,)``
    (views, not copies): ``y_t = tanh(x_t @ W + y_{t-1} @ R + b)``."""
    checks.rnn_weights(R, W, b)
    return {"W": W, "R": R[None, ...], "b": b[None, ...]}

