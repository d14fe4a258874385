r"""Numerical gradient checks (CS231n style) for the hand-written BPTT.

Three small tools and one convenience:

* :func:`rel_error` — how far apart two arrays are, relative to their size;
* :func:`numerical_gradient` — central differences over *every* entry of an array;
* :func:`directional_check` — one random direction instead of every entry (two loss
  evaluations, whatever the size), for shapes too large for the full check;
* :func:`check_rhn` — compares every gradient of :func:`rhn_np.rhn.backward`
  (each parameter, ``xs`` and ``s0``) with its numerical estimate.

Central differences: for a loss L and a step h,

    ∂L/∂x_i ≈ (L(x + h e_i) - L(x - h e_i)) / (2h)        (error O(h²))

In float64 with h = 1e-5 the truncation error is ~1e-10 and the round-off error
~1e-16 / 1e-5 = 1e-11, so a correct backward agrees to ~1e-7 relative or better; a
wrong one is usually off by 1e-2 or more. In float32 the round-off error alone is
~1e-7 / 1e-3: check gradients in float64.

Everything here works on host NumPy arrays (use :func:`rhn_np.backend.to_host`).
"""

from __future__ import annotations

import numpy as np

from . import backend as _backend
from . import checks, rhn
from .lm import HEAD_KEYS

__all__ = ["rel_error", "numerical_gradient", "directional_check", "rhn_loss", "check_rhn"]


def rel_error(x, y, tiny=1e-300):
    """Relative error ``max|x - y| / max(|x| + |y|)`` of two arrays (or scalars).

    One number for the whole array: the largest difference divided by the largest
    magnitude, so that entries that are (nearly) zero in both do not blow it up.
    ``tiny`` is the smallest denominator: it guards the division (0.0 when both are
    exactly zero) and, set larger, measures arrays smaller than it absolutely.
    """
    checks.plain_all("x y", x, y)
    x = np.asarray(_backend.to_host(x) if hasattr(x, "__array_namespace__") else x, dtype=np.float64)
    y = np.asarray(_backend.to_host(y) if hasattr(y, "__array_namespace__") else y, dtype=np.float64)
    if x.shape != y.shape:  # broadcasting would compare, e.g., one row against every row
        raise ValueError(f"rel_error compares arrays of one shape, got {x.shape} and {y.shape}")
    return float(np.max(np.abs(x - y)) / max(float(np.max(np.abs(x) + np.abs(y))), tiny))


def _check_perturbable(x):
    checks.float64_host("x", x)  # perturbed in place, so it must be the caller's float64 array


def numerical_gradient(f, x, df=None, h=1e-5):
    """Central-difference gradient of ``sum(f(x) * df)`` with respect to every entry of ``x``.

    Parameters
    ----------
    f : callable, ``f(x) -> array or scalar``. It is called with ``x`` itself, which
        is changed in place one entry at a time (and restored), so ``f`` may also
        ignore its argument and read ``x`` through a closure (the CS231n idiom).
    x : float64 NumPy array, perturbed in place (float32 is refused: see the module docstring).
    df : array shaped like ``f(x)``, the upstream gradient; ``None`` means ones,
        i.e. the gradient of ``sum(f(x))``.
    h : the step.

    Returns
    -------
    grad : array shaped like ``x``,
        ``grad[i] = sum((f(x + h e_i) - f(x - h e_i)) * df) / (2h)``.
    """
    _check_perturbable(x)
    h = checks.number("h", h, strict=True)
    grad = np.zeros_like(x, dtype=np.float64)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        plus = np.asarray(f(x), dtype=np.float64)
        x[i] = old - h
        minus = np.asarray(f(x), dtype=np.float64)
        x[i] = old
        upstream = 1.0 if df is None else df
        grad[i] = np.sum((plus - minus) * upstream) / (2.0 * h)
    return grad


def directional_check(f, x, grad, h=1e-5, seed=0):
    """Random-direction (dot-product) check of a gradient; two evaluations of ``f``.

    With ``L(x) = sum(f(x))`` and a random unit direction ``v`` (Gaussian,
    normalised, drawn with ``seed``), compare the directional derivative from the
    gradient, ``⟨grad, v⟩``, with ``(L(x + h v) - L(x - h v)) / (2h)``.

    ``x`` is changed in place during the evaluation and restored afterwards.

    Returns
    -------
    rel_error : float, ``|⟨grad, v⟩ - numeric| / (|⟨grad, v⟩| + |numeric|)``.
    """
    _check_perturbable(x)
    h = checks.number("h", h, strict=True)
    checks.plain("grad", grad)
    if tuple(np.shape(grad)) != x.shape:
        raise ValueError(f"grad has shape {tuple(np.shape(grad))}, x {x.shape}: one gradient entry per entry of x")
    v = checks.seed("seed", seed).standard_normal(x.shape)
    v /= np.linalg.norm(v)
    old = x.copy()
    x[...] = old + h * v
    plus = float(np.sum(f(x)))
    x[...] = old - h * v
    minus = float(np.sum(f(x)))
    x[...] = old
    numeric = (plus - minus) / (2.0 * h)
    analytic = float(np.sum(np.asarray(grad, dtype=np.float64) * v))
    return rel_error(analytic, numeric)


def rhn_loss(params, xs, s0, dys, masks=None, ds_last=None, impl="reference"):
    """The scalar loss whose gradients :func:`rhn_np.rhn.backward` returns.

    ``L = Σ_t ⟨dys[t], y_t⟩ + ⟨ds_last, y_T⟩``: ``dys`` and ``ds_last`` are the
    gradients arriving from above and from the next window, so this L has exactly
    them as ``∂L/∂y_t`` and ``∂L/∂s_T``.
    """
    checks.plain_all("dys ds_last", dys, ds_last)  # in np.matrix, * would be a matrix product
    ys, _ = rhn.forward(params, xs, s0, masks, impl=impl)
    loss = float(np.sum(ys * dys))
    if ds_last is not None:
        loss += float(np.sum(ys[-1, ...] * ds_last))
    return loss


def check_rhn(params, xs, s0, dys, masks=None, ds_last=None, *, impl="reference", h=1e-5, directional=False, seed=0,
              floor="auto"):
    """Check every gradient of ``rhn.backward`` against central differences.

    Parameters
    ----------
    params, xs, s0, masks : float64 NumPy inputs of :func:`rhn_np.rhn.forward`
    dys : (T, B, n) weight of each output in the loss (see :func:`rhn_loss`)
    ds_last : optional (B, n) gradient arriving at the final state
    impl : which forward/backward to check ("reference" or "fast")
    directional : False: every entry (:func:`numerical_gradient`); True: one random
        direction per array (:func:`directional_check`), for large shapes.
    floor : the smallest denominator of the relative error (``tiny`` of
        :func:`rel_error`; full check only). Each central difference of L carries a
        round-off error of about ε·Σ|y ⊙ dy| / h ≈ 2e-11·Σ|y ⊙ dy|, so a gradient
        array far smaller than that (a gate deep in a vanished path, say) cannot be
        checked relatively. ``"auto"`` measures such arrays against
        1e-4·(1 + Σ|y ⊙ dy|), i.e. the round-off shows up as < 1e-6. ``0.0``: plain
        :func:`rel_error`.

    Returns
    -------
    dict name -> relative error, for every parameter name, ``"xs"`` and ``"s0"``.
    A correct backward gives < 1e-6 (usually < 1e-8); a wrong one > 1e-3.
    """
    if isinstance(params, dict) and set(params) & set(HEAD_KEYS):
        raise ValueError("check_rhn checks the RHN layer alone: pass its parameters (rhn.init_params), not a whole "
                         "language model's; for those, compare lm_loss_and_grads with numerical_gradient")
    directional = checks.flag("directional", directional)
    if floor != "auto":
        floor = checks.number("floor", floor)
    checks.seed("seed", seed)
    arrays = {**params, "xs": xs, "s0": s0}
    for name, a in arrays.items():
        checks.float64_host(name if name in ("xs", "s0") else f"params[{name!r}]", a)
    checks.finite_params(params)
    ys, cache = rhn.forward(params, xs, s0, masks, impl=impl)
    grads, dxs, ds0 = rhn.backward(params, cache, dys, ds_last)
    analytic = {**grads, "xs": dxs, "s0": ds0}
    if floor == "auto":
        floor = 1e-4 * (1.0 + float(np.sum(np.abs(ys * dys))))

    def loss(_):  # reads the (perturbed in place) arrays through the closure
        return rhn_loss(params, xs, s0, dys, masks, ds_last, impl)

    errors = {}
    for name, a in arrays.items():
        if directional:
            errors[name] = directional_check(loss, a, analytic[name], h=h, seed=seed)
        else:
            errors[name] = rel_error(analytic[name], numerical_gradient(loss, a, h=h), tiny=max(floor, 1e-300))
    return errors
