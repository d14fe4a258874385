r"""The paper's theory (Eqs. 2–4 and 10–15): temporal Jacobians and Geršgorin discs.

The gradient that BPTT carries from step t to step t-1 is multiplied by the
temporal Jacobian ``∂s_t/∂s_{t-1}``; its spectrum decides whether gradients
vanish or explode. This module computes those Jacobians *exactly* for every cell of
:mod:`rhn_np.cells` (the RHN, the DT-RNN and DT(S)-RNN; at depth 1 the DT-RNN is the
plain tanh RNN of Eq. 2), and the Geršgorin discs that locate their eigenvalues.

One source of truth
-------------------
:func:`step_jacobian` and :func:`sequence_jacobians` take any cell: row i of the
Jacobian is the cell's own ``step_backward`` of the unit vector ``e_i`` (all rows in
one batched call), so no formula of a cell is written twice. The RHN's own
functions (Eqs. 10-13: :func:`rhn_step_jacobian`, :func:`micro_jacobians`,
:func:`jacobian_terms`, ...) recompute no gate either: every gate value (h, t, c and
the input state ``s[ℓ-1]`` of each micro-layer) is read from the cache of
:func:`rhn_np.rhn.step_forward` / :func:`rhn_np.rhn.forward`; they only add the
derivatives ``tanh' = 1 - h²``, ``σ' = t(1 - t)``. The tests check that both routes
agree. The plain RNN's functions (``rnn_*``) run :mod:`rhn_np.dtrnn` at depth 1.

Notation (paper Eqs. 10-13; one micro-layer, input state ``y = s[ℓ-1]``)::

    A  = diag(c) + H' diag(t) + C' diag(y) + T' diag(h)             (Eq. 10)
    H' = R_H  diag[tanh'(a_H)]                                      (Eq. 11)
    T' = R_T  diag[σ'(a_T)]                                         (Eq. 12)
    C' = R_C  diag[σ'(a_C)]        (coupled, c = 1 - t:  C' = -T')  (Eq. 13)

with ``a_G`` the full pre-activations (inputs and biases included) and ``R_G``
the matrices *as stored in the params dict*. The paper writes column vectors,
``a = R y``, so its ``H'`` is ``R_paperᵀ diag[tanh']``; the code uses row
vectors, ``a = y @ R``, i.e. ``R = R_paperᵀ``, which is why ``R_H`` appears
untransposed above. With a dropout mask on the state (``masks["s"] = m``) the
transforms see ``y ⊙ m``, so ``H', T', C'`` gain ``diag(m)`` on the left
(input side); the carry term ``diag(c)`` does not.

Layouts
-------
``layout="numerator"`` (the default) is the usual Jacobian,
``J[b, i, j] = ∂s_t[b, i] / ∂s_{t-1}[b, j]``; chain rule ``J = J_L ⋯ J_1``.

``layout="paper"`` is the paper's ``A = Jᵀ``: ``A[b, i, j] = ∂s_t[b, j] / ∂s_{t-1}[b, i]``;
chain rule ``A = A_1 ⋯ A_L``. Eigenvalues agree, row discs of one are the
column discs of the other.

Eq. 14 caveat
-------------
Right-multiplying by a diagonal matrix scales *columns*, so from Eq. 10 the
off-diagonal entry is ``A_ij = H'_ij t_j + C'_ij y_j + T'_ij h_j``. The radius
printed as Eq. 14 indexes the gate values by the row, ``Σ_{j≠i} |H'_ij t_i +
C'_ij y_i + T'_ij h_i|``, which is not a radius of A. :func:`gersgorin_discs`
computes radii from the actual matrix; :func:`eq14_printed_radii` computes the
printed expression so the two can be compared (notebook ``theory.py``).

Backends
--------
Jacobians are built with the Array API namespace of the inputs (NumPy, CuPy,
array-api-strict). Eigenvalues and singular values are computed on the host in
float64 (:func:`rhn_np.backend.to_host` then ``numpy.linalg``): the Array API
standard has no general eigensolver.
"""

from __future__ import annotations

import numpy as np

from . import backend as _backend
from . import cells, checks, dtrnn, rhn

__all__ = [
    # RHN Jacobians
    "step_jacobian",
    "micro_jacobians",
    "jacobian_from_cache",
    "derivative_matrices",
    "jacobian_terms",
    "coupled_closed_form",
    "eq14_printed_radii",
    "sequence_jacobians",
    "rhn_step_jacobian",
    # plain tanh RNN
    "rnn_init",
    "rnn_step_forward",
    "rnn_forward",
    "rnn_step_jacobian",
    "rnn_sequence_jacobians",
    "rnn_norm_bound",
    # Jacobians across time
    "jacobians_across_time",
    "host_matrix",
    "singular_values",
    "lag_norms",
    # Geršgorin discs and spectra
    "gersgorin_discs",
    "in_union",
    "eigenvalues_in_union",
    "spectrum",
    "spectral_radius",
]

LAYOUTS = checks.LAYOUTS


# ----------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------
def _mT(M):
    """Transpose of the last two axes (a stack of matrices)."""
    xp = _backend.namespace(M)
    return xp.matrix_transpose(M)


def _diag(v):
    """(B, n) -> (B, n, n) stack of diagonal matrices diag(v[b])."""
    xp = _backend.namespace(v)
    n = v.shape[-1]
    eye = xp.eye(n, dtype=v.dtype, device=_backend.device_of(v))
    return eye[None, ...] * v[:, None, :]


def _derivative_matrix(R, dact, m_s):
    """``diag(m_s) R diag(dact)`` per batch row: (n, n), (B, n), (B, n) or None -> (B, n, n).

    This is the paper's ``H'`` (or ``T'``, ``C'``) in its own layout: entry
    ``[i, j] = m_i · R[i, j] · dact_j = ∂a_j / ∂y_i · f'(a_j)``.
    """
    M = R[None, ...] * dact[:, None, :]
    return M if m_s is None else M * m_s[:, :, None]


def _layer_values(cache, layer, t):
    """Gate values of micro-layer ``layer`` at time index ``t`` from a forward cache."""
    S, H, G, C = cache["s_in"], cache["h"], cache["t"], cache["c"]
    checks.micro_layer(layer, S.shape[0])
    c = None if C is None else C[layer, t, ...]
    return S[layer, t, ...], H[layer, t, ...], G[layer, t, ...], c


def _step_cache(params, x, s_prev, masks, what):
    """The layer's own forward over one step: its cache holds every gate value."""
    checks.rhn_only(cells.name_of(params), what)
    checks.finite_params(params)
    _, cache = rhn.step_forward(params, x, s_prev, masks)
    return cache


# ----------------------------------------------------------------------------
# RHN: one micro-layer (Eqs. 10-13)
# ----------------------------------------------------------------------------
def _paper_derivatives(params, cache, layer, t):
    """``H', T', C'`` (paper layout, (B, n, n) each) and the gate values of one micro-layer."""
    s_in, h, g_t, c = _layer_values(cache, layer, t)
    m_s = cache["m_s"]
    Hp = _derivative_matrix(params["R_H"][layer, ...], 1.0 - h * h, m_s)  # Eq. 11
    Tp = _derivative_matrix(params["R_T"][layer, ...], g_t * (1.0 - g_t), m_s)  # Eq. 12
    if c is None:  # coupled: c = 1 - t, so ∂c/∂a_T = -σ'(a_T) and C' = -T'
        Cp = -Tp
        c = 1.0 - g_t
    else:
        Cp = _derivative_matrix(params["R_C"][layer, ...], c * (1.0 - c), m_s)  # Eq. 13
    return {"H": Hp, "T": Tp, "C": Cp}, (s_in, h, g_t, c)


def _paper_terms(params, cache, layer, t):
    """The four terms of Eq. 10 in the paper's layout."""
    D, (y, h, g_t, c) = _paper_derivatives(params, cache, layer, t)
    return {
        "carry": _diag(c),  # diag(c)
        "H": D["H"] * g_t[:, None, :],  # H' diag(t)
        "C": D["C"] * y[:, None, :],  # C' diag(y)   (y = s[ℓ-1], unmasked)
        "T": D["T"] * h[:, None, :],  # T' diag(h)
    }


def _micro_paper(params, cache, layer, t):
    terms = _paper_terms(params, cache, layer, t)
    return terms["carry"] + terms["H"] + terms["C"] + terms["T"]  # Eq. 10


def jacobian_from_cache(params, cache, t=0, *, layout="numerator"):
    """Step Jacobian ``∂s_t/∂s_{t-1}`` at time index ``t`` of a forward cache.

    Parameters
    ----------
    params : the dict given to the forward
    cache : from :func:`rhn_np.rhn.forward` (``impl="reference"``) or
        :func:`rhn_np.rhn.step_forward` (then ``t = 0``)
    t : int, time index inside the window (0-based)
    layout : "numerator" or "paper" (see the module docstring)

    Returns
    -------
    (B, n, n) array: ``J_L ⋯ J_1`` (numerator) or ``A_1 ⋯ A_L`` (paper).
    """
    checks.layout(layout)
    checks.rhn_only(cells.name_of(params), "jacobian_from_cache")
    n_in, n, depth, dtype = rhn.dims(params)
    checks.finite_params(params)
    T, _ = checks.cache_matches(cache, (n_in, n, depth, not rhn.is_coupled(params), dtype), "rhn")
    checks.time_index(t, T)
    xp = _backend.namespace(*params.values())
    J = None
    for layer in range(depth):
        J_l = _mT(_micro_paper(params, cache, layer, t))  # numerator layout
        J = J_l if J is None else xp.matmul(J_l, J)  # J = J_L ⋯ J_1
    return J if layout == "numerator" else _mT(J)


def step_jacobian(params, x, s_prev, masks=None, *, layout="numerator"):
    """Exact Jacobian of one time step of any cell (all L micro-layers): ``∂s_t/∂s_{t-1}``.

    ``J[b, i, j] = ∂s_t[b, i] / ∂s_{t-1}[b, j]``, computed by the cell's own
    ``step_forward`` / ``step_backward`` (:mod:`rhn_np.cells`): each batch row is
    repeated n times and row i of ``J[b]`` is the backward of the unit vector
    ``e_i``, so no formula is written twice and the result is exact up to round-off.
    For the RHN it equals ``J_L ⋯ J_1`` of Eq. 10 (:func:`jacobian_from_cache`); for
    the DT-RNN ``Π_ℓ diag(1 - z_ℓ²) (diag(m_s) R[ℓ])ᵀ`` (plus the shortcut); at depth 1
    without shortcut it is Eq. 2 (:func:`rnn_step_jacobian`).

    Parameters
    ----------
    params : a cell's parameter dict (``rhn.init_params``, ``dtrnn.init_params``; of a
        language model, ``lm.layer_params(params, k)``)
    x : (B, n_in) input ``x_t``
    s_prev : (B, n) state ``s_{t-1}``
    masks : optional ``{"x": (B, n_in), "s": (B, n)}`` dropout masks
    layout : "numerator" (default) or "paper" (the transpose, ``A``)

    Returns
    -------
    (B, n, n) array on the backend of the inputs.
    """
    checks.layout(layout)
    cell = cells.of(params)
    n_in, n, _, dtype = cell.dims(params)
    checks.finite_params(params)
    checks.step_inputs(cell.NAME, x, s_prev, (_backend.namespace(*params.values()), n_in, n, dtype))
    xp = _backend.namespace(*params.values(), x, s_prev)
    B = x.shape[0]
    rep = lambda a: None if a is None else xp.reshape(  # noqa: E731  (B, k) -> (B·n, k), each row n times
        xp.broadcast_to(a[:, None, :], (a.shape[0], n, a.shape[1])), (a.shape[0] * n, a.shape[1]))
    if masks is not None and not isinstance(masks, dict):
        checks.masks(xp, masks, B, n_in, n, dtype)  # its message
    m = None if masks is None else {k: rep(v) for k, v in masks.items()}
    _, cache = cell.step_forward(params, rep(x), rep(s_prev), m)
    eye = xp.eye(n, dtype=dtype, device=_backend.device_of(x))
    ds = xp.reshape(xp.broadcast_to(eye[None, ...], (B, n, n)), (B * n, n))  # row (b, i) = e_i
    _, _, ds_prev = cell.step_backward(params, cache, ds)
    J = xp.reshape(ds_prev, (B, n, n))  # J[b, i, :] = e_iᵀ ∂s_t/∂s_{t-1}
    return J if layout == "numerator" else _mT(J)


def rhn_step_jacobian(params, x, s_prev, masks=None, *, layout="numerator"):
    """The RHN's step Jacobian from the paper's Eqs. 10-13: ``J_L ⋯ J_1`` of the gate values
    in :func:`rhn_np.rhn.step_forward`'s cache (equal to :func:`step_jacobian`)."""
    return jacobian_from_cache(params, _step_cache(params, x, s_prev, masks, "rhn_step_jacobian"), 0, layout=layout)


def micro_jacobians(params, x, s_prev, masks=None, *, layout="numerator"):
    """The L micro-layer Jacobians ``∂s[ℓ]/∂s[ℓ-1]`` of one step, a list of (B, n, n).

    Their product is :func:`step_jacobian`: ``J = J_L ⋯ J_1`` (numerator) or
    ``A = A_1 ⋯ A_L`` (paper layout).
    """
    checks.layout(layout)
    cache = _step_cache(params, x, s_prev, masks, "micro_jacobians")
    out = []
    for layer in range(cache["s_in"].shape[0]):
        A = _micro_paper(params, cache, layer, 0)
        out.append(A if layout == "paper" else _mT(A))
    return out


def derivative_matrices(params, x, s_prev, masks=None, *, layer=0):
    """``H', T', C'`` of Eqs. 11-13 for one micro-layer, in the paper's layout.

    Returns a dict ``{"H", "T", "C"}`` of (B, n, n) arrays,
    ``H'[b, i, j] = m_i R_H[i, j] tanh'(a_H[b, j])`` (``R_H`` as stored, row-vector
    convention), and likewise for T, C; coupled gates give ``C' = -T'``.
    ``layer`` is the code index ℓ-1 (0 = the micro-layer that sees the input).
    """
    D, _ = _paper_derivatives(params, _step_cache(params, x, s_prev, masks, "derivative_matrices"), layer, 0)
    return D


def jacobian_terms(params, x, s_prev, masks=None, *, layer=0, layout="numerator"):
    """The four terms of Eq. 10 for one micro-layer, separately.

    Paper layout: ``{"carry": diag(c), "H": H' diag(t), "C": C' diag(y), "T": T' diag(h)}``
    with ``y = s[ℓ-1]`` (``y_{t-1}`` for L = 1). Numerator layout: the transpose of
    each. The terms sum to the micro-layer Jacobian. Coupled gates: ``c = 1 - t``
    and ``C' = -T'``.
    """
    checks.layout(layout)
    terms = _paper_terms(params, _step_cache(params, x, s_prev, masks, "jacobian_terms"), layer, 0)
    return terms if layout == "paper" else {k: _mT(v) for k, v in terms.items()}


def coupled_closed_form(params, x, s_prev, masks=None, *, layer=0, layout="numerator"):
    """Coupled-gate form of Eq. 10: ``A = diag(1 - t) + H' diag(t) + T' diag(h - y)``.

    Valid only for coupled params (c = 1 - t, C' = -T'); equals
    :func:`micro_jacobians` ``[layer]``. A very negative transform bias makes
    ``t ≈ 0`` and ``T' ≈ 0``, so ``A ≈ I``.
    """
    checks.layout(layout)
    checks.coupled(params, "coupled_closed_form")
    cache = _step_cache(params, x, s_prev, masks, "coupled_closed_form")
    D, (y, h, g_t, _) = _paper_derivatives(params, cache, layer, 0)
    A = _diag(1.0 - g_t) + D["H"] * g_t[:, None, :] + D["T"] * (h - y)[:, None, :]
    return A if layout == "paper" else _mT(A)


def eq14_printed_radii(params, x, s_prev, masks=None, *, layer=0):
    """The Geršgorin radii *as printed* in Eq. 14 (paper layout, rows).

    ``r_i = Σ_{j≠i} |H'_ij t_i + C'_ij y_i + T'_ij h_i|``: the gate values are
    indexed by the row i. The actual row radius of Eq. 10's matrix is
    ``Σ_{j≠i} |H'_ij t_j + C'_ij y_j + T'_ij h_j|`` (compute it with
    ``gersgorin_discs(A_paper)``). Returns (B, n).

    With ``H'_ji`` in place of ``H'_ij`` (and likewise C', T') the printed sum would
    be the *column* radius of A, ``Σ_{j≠i} |A_ji|``, which is a valid disc; as
    printed it mixes the two and can miss eigenvalues (notebook ``theory.py``, §6).
    """
    cache = _step_cache(params, x, s_prev, masks, "eq14_printed_radii")
    D, (y, h, g_t, _) = _paper_derivatives(params, cache, layer, 0)
    M = D["H"] * g_t[:, :, None] + D["C"] * y[:, :, None] + D["T"] * h[:, :, None]  # row-indexed gates
    _, radii = gersgorin_discs(M, axis="rows")
    return radii


def sequence_jacobians(params, xs, s0, masks=None, *, layout="numerator"):
    """Step Jacobians ``∂s_t/∂s_{t-1}`` for t = 1..T along an input sequence, any cell.

    One ``forward`` of the cell gives the states; the Jacobian of step t is
    :func:`step_jacobian` at ``(x_t, s_{t-1})``. ``xs`` (T, B, n_in), ``s0`` (B, n).
    Returns (T, B, n, n); entry ``[t-1]`` is the Jacobian of step t.
    """
    checks.layout(layout)
    checks.finite_params(params)
    ys, _ = cells.of(params).forward(params, xs, s0, masks, impl="reference")
    xp = _backend.namespace(xs)
    prev = [s0] + [ys[t, ...] for t in range(xs.shape[0] - 1)]
    return xp.stack([step_jacobian(params, xs[t, ...], prev[t], masks, layout=layout) for t in range(xs.shape[0])])


# ----------------------------------------------------------------------------
# Plain tanh RNN (its temporal Jacobian is paper Eq. 2)
# ----------------------------------------------------------------------------
def rnn_init(n_in, n, *, init_std=0.1, init="normal", seed=0, dtype="float64", backend="numpy"):
    """Parameters of a plain tanh RNN ``y_t = tanh(x_t @ W + y_{t-1} @ R + b)``.

    Row-vector convention as in :mod:`rhn_np.rhn` (the paper's ``R`` is ``Rᵀ`` here).

    Parameters
    ----------
    n_in, n : int
    init_std : float, standard deviation of the Gaussian weights
    init : "normal" (every entry of W and R ~ N(0, init_std²), b = 0) or
        "identity" (the same, then ``diag(R) = 1``: Le et al. 2015; Fig. 2, circle 2)
    seed, dtype, backend : as in :func:`rhn_np.rhn.init_params`

    Returns
    -------
    dict ``{"R": (n, n), "W": (n_in, n), "b": (n,)}``: call ``rnn_step_jacobian(**p, x=x, y_prev=y)``.
    """
    checks.choice("init", init, ("normal", "identity"))
    n_in, n = checks.positive_int("n_in", n_in), checks.positive_int("n", n)
    checks.nonnegative("init_std", init_std)
    dtype = _backend.float_dtype_name(dtype)
    be = _backend.get(backend)
    rng = checks.seed("seed", seed)
    W = rng.normal(0.0, init_std, size=(n_in, n))
    R = rng.normal(0.0, init_std, size=(n, n))
    checks.draws_fit("init_std", init_std, dtype, W, R)
    if init == "identity":
        np.fill_diagonal(R, 1.0)
    b = np.zeros(n)
    return {"R": be.to_device(R, dtype), "W": be.to_device(W, dtype), "b": be.to_device(b, dtype)}


def rnn_step_forward(R, W, b, x, y_prev):
    """The plain RNN step (row vectors): ``y_t = tanh(x_t @ W + y_{t-1} @ R + b)``; (B, n_in), (B, n) -> (B, n).

    It is the DT-RNN of depth 1 without shortcut: :func:`rhn_np.dtrnn.step_forward`."""
    params = dtrnn.rnn_params(R, W, b)
    checks.step_inputs("theory.rnn_forward", x, y_prev, (_backend.namespace(R, W, b), W.shape[0], R.shape[0], R.dtype),
                       names=("x", "y_prev"))
    return dtrnn.step_forward(params, x, y_prev)[0]


def rnn_forward(R, W, b, xs, y0):
    """:func:`rnn_step_forward` over ``xs`` (T, B, n_in) from ``y0`` (B, n); returns ys (T, B, n)."""
    checks.sequence("xs", xs)
    params = dtrnn.rnn_params(R, W, b)
    checks.rnn_state("y0", y0, xs, R)
    return dtrnn.forward(params, xs, y0)[0]


def _rnn_jacobian_from_output(R, y, layout):
    """``diag(1 - y²) Rᵀ`` (numerator) or ``R diag(1 - y²)`` (paper) from the step's output y."""
    A = R[None, ...] * (1.0 - y * y)[:, None, :]  # paper: A = R_paperᵀ diag[f'] (Eq. 2)
    return A if layout == "paper" else _mT(A)


def rnn_step_jacobian(R, W, b, x, y_prev, *, layout="numerator"):
    """Temporal Jacobian of a plain tanh RNN step (paper Eq. 2, inputs and bias included).

    Numerator layout ``J[b, i, j] = ∂y_t[b, i]/∂y_{t-1}[b, j] = tanh'(a_i) R[j, i]``,
    i.e. ``J = diag[tanh'(a)] Rᵀ``; paper layout ``A = Jᵀ = R diag[tanh'(a)]``.
    The tanh value comes from :func:`rnn_step_forward`. Returns (B, n, n).
    """
    checks.layout(layout)
    return _rnn_jacobian_from_output(R, rnn_step_forward(R, W, b, x, y_prev), layout)


def rnn_sequence_jacobians(R, W, b, xs, y0, *, layout="numerator"):
    """Step Jacobians of a plain tanh RNN along ``xs`` (T, B, n_in); returns (T, B, n, n)."""
    checks.layout(layout)
    ys = rnn_forward(R, W, b, xs, y0)
    xp = _backend.namespace(R, xs)
    return xp.stack([_rnn_jacobian_from_output(R, ys[t, ...], layout) for t in range(xs.shape[0])])


def rnn_norm_bound(R, gamma=1.0):
    """Eq. 3: ``‖A‖₂ ≤ γ σ_max(R)`` with ``γ`` a bound on ``|f'|`` (1 for tanh).

    Returns the float ``γ σ_max(R)`` (σ_max on the host). Gradients vanish
    geometrically when it is below 1.
    """
    checks.matrices("R", R, ndim=2)
    return checks.number("gamma", gamma) * float(singular_values(R)[0])


# ----------------------------------------------------------------------------
# Jacobians across time
# ----------------------------------------------------------------------------
def jacobians_across_time(Js, *, anchor="end"):
    """Products of step Jacobians (numerator layout) against the time lag k = 1..T.

    ``Js`` (T, B, n, n): ``Js[t-1] = ∂s_t/∂s_{t-1}``, from :func:`sequence_jacobians`
    or :func:`rnn_sequence_jacobians`.

    * ``anchor="end"``: ``P[k-1] = ∂s_T/∂s_{T-k} = J_T ⋯ J_{T-k+1}`` (what BPTT
      multiplies the last step's gradient by, k steps back);
    * ``anchor="start"``: ``P[k-1] = ∂s_k/∂s_0 = J_k ⋯ J_1``.

    Returns (T, B, n, n) on the backend of ``Js``.
    """
    checks.choice("anchor", anchor, ("end", "start"))
    checks.matrices("Js", Js, ndim=4)
    xp = _backend.namespace(Js)
    T = Js.shape[0]
    P, out = None, []
    for k in range(1, T + 1):
        if anchor == "end":
            J = Js[T - k, ...]
            P = J if P is None else xp.matmul(P, J)  # ∂s_T/∂s_{T-k} = (∂s_T/∂s_{T-k+1}) J_{T-k+1}
        else:
            J = Js[k - 1, ...]
            P = J if P is None else xp.matmul(J, P)  # ∂s_k/∂s_0 = J_k (∂s_{k-1}/∂s_0)
        out.append(P)
    return xp.stack(out)


def host_matrix(M) -> np.ndarray:
    """M on the host in float64 (complex128 when M is complex), for LAPACK."""
    Mh = np.asarray(_backend.to_host(M))
    return Mh.astype(np.complex128 if np.iscomplexobj(Mh) else np.float64, copy=False)


def singular_values(M):
    """Singular values of a (stack of) matrix (..., m, n), on the host in float64, descending
    (a complex M is decomposed in complex128)."""
    checks.matrices("M", M, square_=False)
    return np.linalg.svd(host_matrix(M), compute_uv=False)


def lag_norms(P):
    """Spectral norms ``‖P[k-1]‖₂`` (largest singular value) of :func:`jacobians_across_time`
    output: (T, B, n, n) -> host (T, B)."""
    checks.matrices("P", P, square_=False)
    return singular_values(P)[..., 0]


# ----------------------------------------------------------------------------
# Geršgorin discs and spectra (Eq. 4)
# ----------------------------------------------------------------------------
def gersgorin_discs(M, axis="rows"):
    """Geršgorin discs of a (stack of) square matrix M (..., n, n) (Eq. 4).

    centres ``a_ii``; radii ``Σ_{j≠i} |a_ij|`` (axis="rows") or ``Σ_{j≠i} |a_ji|``
    (axis="columns"). Every eigenvalue lies in the union of the row discs, and in
    the union of the column discs. Returns ``(centres, radii)``, each (..., n),
    on the backend of M.
    """
    checks.choice("axis", axis, ("rows", "columns"))
    checks.matrices("M", M)
    xp = _backend.namespace(M)
    n = M.shape[-1]
    eye = xp.eye(n, dtype=M.dtype, device=_backend.device_of(M))
    centres = xp.sum(M * eye, axis=-1)
    absM = xp.abs(M)  # real also for a complex M, and so are the radii
    off = absM * (1.0 - xp.eye(n, dtype=absM.dtype, device=_backend.device_of(M)))
    radii = xp.sum(off, axis=-1 if axis == "rows" else -2)
    return centres, radii


def spectrum(M):
    """Eigenvalues of a (stack of) square matrix, on the host: (..., n, n) -> complex128 (..., n).

    ``backend.to_host`` then ``numpy.linalg.eigvals`` in float64 (complex128 for a
    complex M), so it works for CuPy and array-api-strict inputs too.
    """
    checks.matrices("M", M)
    return np.linalg.eigvals(host_matrix(M)).astype(np.complex128)


def spectral_radius(M):
    """``max |λ|`` of a (stack of) square matrix, host (...,)."""
    return np.max(np.abs(spectrum(M)), axis=-1)


def in_union(points, centres, radii, *, tol=0.0):
    """For each complex point, whether it lies in the union of the discs (host arrays).

    points (..., p), centres (..., n), radii (..., n) with matching leading axes;
    a point counts as inside when ``|z - centre_i| <= radius_i + tol`` for some i.
    Returns a host bool array (..., p).
    """
    checks.plain_all("points centres radii", points, centres, radii)
    z = np.asarray(_backend.to_host(points))[..., :, None]
    c = np.asarray(_backend.to_host(centres))[..., None, :]
    r = np.asarray(_backend.to_host(radii))[..., None, :]
    checks.discs(c, r)
    checks.disc_values(z, c, r, tol)
    tol = np.asarray(tol)[..., None, None] if np.ndim(tol) else tol
    return np.any(np.abs(z - c) <= r + tol, axis=-1)


def eigenvalues_in_union(M, axis="rows", *, rtol=1e-7, atol=1e-12):
    """Geršgorin's theorem as a check: every eigenvalue of M in the union of its discs.

    The discs come from :func:`gersgorin_discs` (``axis`` "rows", "columns" or
    "both"), the eigenvalues from :func:`spectrum` (host, float64 or complex128). ``tol = atol +
    rtol · max(1, ‖M‖_∞)`` absorbs the round-off of the eigensolver.

    Returns a host bool array of shape ``M.shape[:-2]`` (a 0-d array for one matrix).
    """
    checks.choice("axis", axis, ("rows", "columns", "both"))
    checks.matrices("M", M)
    axes = ("rows", "columns") if axis == "both" else (axis,)
    Mh = host_matrix(M)
    lam = spectrum(Mh)
    scale = np.maximum(1.0, np.max(np.sum(np.abs(Mh), axis=-1), axis=-1))
    tol = atol + rtol * scale
    ok = np.ones(Mh.shape[:-2], dtype=bool)
    for ax in axes:
        centres, radii = gersgorin_discs(Mh, axis=ax)
        ok &= np.all(in_union(lam, centres, radii, tol=tol), axis=-1)
    return ok
