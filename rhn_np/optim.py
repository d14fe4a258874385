r"""Optimisation: gradient clipping, the authors' L2 term, SGD, Adam, the lr schedule.

The authors' training step (TensorFlow ``rhn.py``), for a window's loss ``L``
(:func:`rhn_np.lm.lm_loss_and_grads`, summed over time, averaged over the batch)::

    cost  = L + wd · ½ Σ_w ‖w‖²                 all variables (tf.nn.l2_loss), wd = 1e-7
    g     = ∇ cost = ∇L + wd · w
    g, N  = clip_by_global_norm(g, 10)          N = sqrt(Σ_w ‖g_w‖²)
    w    -= lr · g                              SGD, no momentum, lr 0.2

In this module::

    grads = add_l2_gradient(grads, params, wd)   # before clipping, as the authors
    grads, norm = clip_global_norm(grads, 10.0)
    SGD(lr=0.2).step(params, grads)              # params updated in place

The ``weight_decay`` argument of :class:`SGD` / :class:`Adam` instead adds ``wd · w``
to the gradient inside ``step``, i.e. *after* any clipping the caller did (PyTorch's
convention; for Adam this is L2-regularised Adam, not AdamW). Leave it at 0 for the
authors' recipe.

**Updates are in place.** ``step(params, grads)`` changes the arrays of ``params``
with the Array API in-place operators (``p -= lr * g``), which NumPy, CuPy and
array-api-strict all support; it returns the same dict for convenience. Every other
reference to these arrays sees the new values: copy parameters you want to keep
before stepping, and run :func:`rhn_np.rhn.backward` before the step, not after it
(its cache holds no weights; it reads them from ``params`` again).

Every function takes its namespace from its arguments and works on NumPy, CuPy and
array-api-strict arrays; norms and penalties are returned as 0-d arrays on the
device (``float(x)`` reads them; it syncs on a GPU).
"""

from __future__ import annotations

import math

import numpy as np

from . import backend as _backend
from . import checks

__all__ = [
    "global_norm",
    "clip_global_norm",
    "l2_penalty",
    "add_l2_gradient",
    "SGD",
    "Adam",
    "lr_at_epoch",
    "lr_at_step",
]


# ----------------------------------------------------------------------------
# Gradient clipping and the L2 term
# ----------------------------------------------------------------------------
def global_norm(grads):
    """``N = sqrt(Σ_w Σ_i g_w[i]²)`` over every array of the dict: a 0-d array."""
    checks.grads_dict("grads", grads)
    xp = _backend.namespace(*grads.values())
    total = None
    for g in grads.values():
        sq = xp.sum(g * g)
        total = sq if total is None else total + sq
    return xp.sqrt(total)


def clip_global_norm(grads, max_norm):
    """Rescale all gradients together when their global norm exceeds ``max_norm``.

    As ``tf.clip_by_global_norm``::

        g_w ← g_w · max_norm / max(N, max_norm)         N = global_norm(grads)

    so the direction is kept and the new global norm is ``min(N, max_norm)``. When
    ``N ≤ max_norm`` the factor is exactly 1 and the gradients are unchanged. A
    non-finite N makes every gradient NaN (as in TensorFlow): the step is visibly bad.

    Parameters
    ----------
    grads : dict name -> array
    max_norm : float > 0 (the authors: 10)

    Returns
    -------
    clipped : a new dict (the input arrays are not modified)
    norm : 0-d array, the global norm *before* clipping (for logging)
    """
    max_norm = checks.number("max_norm", max_norm, strict=True)
    norm = global_norm(grads)
    xp = _backend.namespace(norm)
    cap = xp.asarray(max_norm, dtype=norm.dtype, device=_backend.device_of(norm))
    scale = cap / xp.maximum(norm, cap)  # 0-d, stays on the device: no sync
    # inf / inf and inf (float32 overflow of Σ g²) would give 0 or NaN by accident: NaN always.
    scale = xp.where(xp.isfinite(norm), scale, xp.asarray(math.nan, dtype=norm.dtype, device=_backend.device_of(norm)))
    return {k: g * scale for k, g in grads.items()}, norm


def l2_penalty(params, weight_decay):
    """The authors' weight-decay term ``wd · ½ Σ_w Σ_i w[i]²`` over *all* variables
    (embedding, softmax, RHN weights and biases alike; ``tf.nn.l2_loss``). 0-d array."""
    weight_decay = checks.number("weight_decay", weight_decay)
    checks.grads_dict("params", params)
    xp = _backend.namespace(*params.values())
    total = None
    for w in params.values():
        sq = xp.sum(w * w)
        total = sq if total is None else total + sq
    return 0.5 * weight_decay * total


def add_l2_gradient(grads, params, weight_decay):
    """Gradient of :func:`l2_penalty` added to ``grads``: ``g_w + wd · w`` (a new dict)."""
    weight_decay = checks.number("weight_decay", weight_decay)
    checks.same_keys(grads, params)
    if weight_decay == 0.0:
        return dict(grads)
    return {k: g + weight_decay * params[k] for k, g in grads.items()}


# ----------------------------------------------------------------------------
# Optimisers
# ----------------------------------------------------------------------------
def _host_copy(x):
    return np.array(_backend.to_host(x), copy=True)


def _like(host, p):
    """Host array -> an array on the backend, device and dtype of parameter ``p``."""
    return _backend.of(p).to_device(host, dtype=p.dtype)


class _Optimizer:
    """Shared parts: the learning rate (settable, for schedules) and the step count."""

    name = "Optimizer"
    _hyper: tuple[str, ...] = ()

    def __init__(self, lr, weight_decay=0.0):
        self.lr = lr
        self.weight_decay = checks.number("weight_decay", weight_decay)
        self.t = 0  # number of steps taken

    @property
    def lr(self) -> float:
        """The learning rate; assign to it between steps (e.g. ``opt.lr = lr_at_epoch(...)``)."""
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = checks.number("lr", value)

    def _grad(self, params, grads, k):
        g = grads[k]
        return g if self.weight_decay == 0.0 else g + self.weight_decay * params[k]

    def _base_state(self):
        return {"name": self.name, "lr": self.lr, "weight_decay": self.weight_decay, "t": self.t,
                **{h: getattr(self, h) for h in self._hyper}}

    def _load_base(self, state):
        if not isinstance(state, dict) or state.get("name") != self.name:
            got = state.get("name") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state_dict is for {got!r}, not {self.name!r}")
        t = checks.positive_int("state_dict step count t", state["t"], minimum=0)
        # The constructor's checks, so a damaged state cannot slip in a beta of 1.5.
        fresh = type(self)(lr=state["lr"], weight_decay=state["weight_decay"], **{h: state[h] for h in self._hyper})
        self.lr, self.weight_decay, self.t = fresh.lr, fresh.weight_decay, t
        for h in self._hyper:
            setattr(self, h, getattr(fresh, h))


class SGD(_Optimizer):
    """Stochastic gradient descent: plain (the authors' optimiser, ``momentum=0``),
    ``w ← w - lr · g``, or with heavy-ball momentum in PyTorch's form::

        u ← μ u + g        (u starts at 0; μ = momentum)
        w ← w - lr · u

    ``g = grads[w] + weight_decay · w`` (weight_decay 0 by default; see the module
    docstring for where the authors' L2 term goes). ``step`` updates ``params`` in place.
    The velocities ``u`` live on the device of the parameters, created at the first step
    (none with ``momentum=0``).
    """

    name = "SGD"
    _hyper = ("momentum",)

    def __init__(self, lr=0.2, weight_decay=0.0, momentum=0.0):
        super().__init__(lr, weight_decay)
        if not 0.0 <= checks.number("momentum", momentum) < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        self.m: dict = {}  # velocities u, like params (momentum > 0 only)
        self._pending = None  # host velocities from load_state_dict, moved at the next step

    def _velocities(self, params):
        if self._pending is not None:
            checks.same_keys(self._pending, params, "the loaded velocities")
            self.m = {k: _like(self._pending[k], params[k]) for k in params}
            self._pending = None
        elif not self.m:
            xp = _backend.namespace(*params.values())
            self.m = {k: xp.zeros_like(p) for k, p in params.items()}
        return self.m

    def step(self, params, grads):
        """One update of every parameter, in place. Returns ``params``."""
        checks.same_keys(grads, params)
        if self.momentum == 0.0:
            for k in params:
                params[k] -= self.lr * self._grad(params, grads, k)
        else:
            u = self._velocities(params)
            checks.same_keys(u, params, "SGD's velocities")
            for k in params:
                u[k] *= self.momentum
                u[k] += self._grad(params, grads, k)
                params[k] -= self.lr * u[k]
        self.t += 1
        return params

    def state_dict(self) -> dict:
        """``{"name", "lr", "weight_decay", "t", "momentum"}`` as numbers, and with
        momentum the velocities ``"m"`` as a dict of host NumPy copies."""
        state = self._base_state()
        if self.momentum:
            state["m"] = ({k: a.copy() for k, a in self._pending.items()} if self._pending is not None
                          else {k: _host_copy(a) for k, a in self.m.items()})
        return state

    def load_state_dict(self, state) -> None:
        """Restore from :meth:`state_dict`. States saved before momentum existed have no
        ``"momentum"`` (plain SGD)."""
        if isinstance(state, dict) and "momentum" not in state:
            state = {**state, "momentum": 0.0}
        self._load_base(state)
        m = state.get("m") or {}
        if m and not self.momentum:
            raise ValueError("state_dict holds SGD velocities 'm' but momentum is 0: damaged state")
        self.m = {}
        self._pending = {k: _host_copy(a) for k, a in m.items()} or None


class Adam(_Optimizer):
    """Adam (Kingma & Ba), in PyTorch's form, updating ``params`` in place::

        m ← β1 m + (1 - β1) g
        v ← β2 v + (1 - β2) g²
        w ← w - (lr / (1 - β1^t)) · m / (sqrt(v) / sqrt(1 - β2^t) + eps)

    with ``t`` the step count (from 1) and ``g = grads[w] + weight_decay · w``.
    The moments live on the device of the parameters, created at the first step.
    """

    name = "Adam"
    _hyper = ("beta1", "beta2", "eps")

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
        super().__init__(lr, weight_decay)
        for h, v in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= checks.number(h, v) < 1.0:
                raise ValueError(f"{h} must lie in [0, 1), got {v!r}")
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.eps = checks.number("eps", eps, strict=True)  # > 0: a zero gradient would divide 0 by 0
        self.m: dict = {}  # first moments, like params
        self.v: dict = {}  # second moments
        self._pending = None  # host moments from load_state_dict, moved at the next step

    def _moments(self, params):
        if self._pending is not None:
            m, v = self._pending
            checks.same_keys(m, params, "the loaded moments")
            self.m = {k: _like(m[k], params[k]) for k in params}
            self.v = {k: _like(v[k], params[k]) for k in params}
            self._pending = None
        elif not self.m:
            xp = _backend.namespace(*params.values())
            self.m = {k: xp.zeros_like(p) for k, p in params.items()}
            self.v = {k: xp.zeros_like(p) for k, p in params.items()}
        return self.m, self.v

    def step(self, params, grads):
        """One Adam update of every parameter, in place. Returns ``params``."""
        checks.same_keys(grads, params)
        m, v = self._moments(params)
        try:  # before anything changes: a failed step leaves params and moments as they were
            checks.same_keys(m, params, "Adam's moments")
        except (KeyError, ValueError) as exc:
            raise type(exc)(f"{exc.args[0]}: an Adam instance follows the one params dict it first stepped; "
                            "make a new Adam for another model") from None
        xp = _backend.namespace(*params.values())
        dtype = next(iter(params.values())).dtype
        checks.nonzero_in("eps", self.eps, dtype)  # scalars only: cheap on every step
        checks.representable("lr", self.lr, dtype)
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        step_size = self.lr / (1.0 - b1**self.t)
        sqrt_bc2 = math.sqrt(1.0 - b2**self.t)
        for k in params:
            g = self._grad(params, grads, k)
            m[k] *= b1
            m[k] += (1.0 - b1) * g
            v[k] *= b2
            v[k] += (1.0 - b2) * (g * g)
            params[k] -= step_size * (m[k] / (xp.sqrt(v[k]) / sqrt_bc2 + self.eps))
        return params

    def state_dict(self) -> dict:
        """Hyperparameters and ``t`` as numbers; moments ``"m"``, ``"v"`` as dicts of
        host NumPy copies (empty before the first step)."""
        if self._pending is not None:
            m, v = ({k: a.copy() for k, a in d.items()} for d in self._pending)
        else:
            m = {k: _host_copy(a) for k, a in self.m.items()}
            v = {k: _host_copy(a) for k, a in self.v.items()}
        return {**self._base_state(), "m": m, "v": v}

    def load_state_dict(self, state) -> None:
        """Restore from :meth:`state_dict`; the moments move to the parameters' device
        at the next :meth:`step`."""
        self._load_base(state)
        m, v = state["m"], state["v"]
        if set(m) != set(v):
            raise ValueError("state_dict moments 'm' and 'v' have different keys")
        m, v = {k: _host_copy(a) for k, a in m.items()}, {k: _host_copy(a) for k, a in v.items()}
        for k in m:
            if m[k].shape != v[k].shape:
                raise ValueError(f"state_dict moments of {k!r} differ in shape: m {m[k].shape}, v {v[k].shape}")
            if not np.all(v[k] >= 0):  # a second moment is a running mean of g²
                raise ValueError(f"state_dict second moment v[{k!r}] has negative or NaN entries: damaged state")
        self.m, self.v = {}, {}
        self._pending = (m, v) if m else None


# ----------------------------------------------------------------------------
# Learning-rate schedule
# ----------------------------------------------------------------------------
def lr_at_epoch(epoch, lr, max_epoch, lr_decay):
    """The authors' schedule: ``lr / lr_decay ** max(epoch - max_epoch + 1, 0)``.

    ``epoch`` counts from 0 as in their training loop, so epochs ``0 .. max_epoch-1``
    (the first ``max_epoch`` epochs) use ``lr`` and every later epoch divides it by
    ``lr_decay`` once more. PTB: ``lr=0.2, max_epoch=20, lr_decay=1.02``; enwik8 /
    text8: ``max_epoch=5, lr_decay=1.03``.
    """
    epoch = checks.positive_int("epoch", epoch, minimum=0)  # counts from 0
    max_epoch = checks.positive_int("max_epoch", max_epoch)
    lr = checks.number("lr", lr)
    lr_decay = checks.number("lr_decay", lr_decay, minimum=1.0)  # >= 1: the rate never grows
    try:
        return lr / lr_decay ** max(epoch - max_epoch + 1, 0)
    except OverflowError:  # lr_decay ** epochs beyond a float: the rate has decayed to nothing
        return 0.0


def lr_at_step(step: int, lr: float, decay_steps: int, final_ratio: float = 0.05) -> float:
    """Cosine decay: ``lr · (r + (1 - r) · ½ (1 + cos(π · min(step, D) / D)))``, ``r = final_ratio``.

    ``lr`` at step 0, ``lr · r`` from step ``D = decay_steps`` on.
    """
    decay_steps = checks.positive_int("decay_steps", decay_steps)
    step = checks.positive_int("step", step, minimum=0)
    lr = checks.number("lr", lr)
    if not 0.0 <= checks.number("final_ratio", final_ratio) <= 1.0:
        raise ValueError(f"final_ratio is the fraction of lr left at the end and must lie in [0, 1], got {final_ratio!r}")
    frac = min(step, decay_steps) / decay_steps
    return lr * (final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac)))
