"""The fast path of the RHN layer: the same maths as :mod:`rhn_np.rhn`, fewer launches.

:mod:`rhn_np.rhn` is the readable reference and the truth; this module computes the
same forward and BPTT (tested against it) with the launch count a GPU wants:

* per micro-step forward: **one GEMM** ``a = (s ⊙ m_s) @ R[ℓ]`` into a preallocated
  buffer and **one fused kernel** for all gate maths (bias, tanh, σ, Eq. 6, and the
  masked state for the next GEMM), writing h, t, s straight into the cache;
* per micro-step backward: **one fused kernel** (``ds = ds_carry + g ⊙ m_s (+ dy_t)``,
  ∂L/∂a of every gate, the next carry gradient) and **one GEMM** ``g = ∂L/∂a @ R[ℓ]ᵀ``;
* the input projection of all steps is one GEMM before the loop, and the weight
  gradients are one GEMM per micro-layer after it;
* no allocation inside the time loop, and no host synchronisation at all.

The elementwise kernels come from :func:`rhn_np.backend.gate_kernels`: CUDA
``ElementwiseKernel`` s on CuPy (Chainer's LSTM style), in-place NumPy ufunc calls on
NumPy (so the loop and buffer logic of this file is tested on every CPU too). The CuPy
plans' own code is also tested without a GPU: ``tests/test_cuda_emulated.py`` compiles
their CUDA source for the CPU and plays cuBLAS with NumPy.

The cache has the same layout as the reference one (``S``, ``H``, ``T``, ``C`` of
shape (L, T, B, n)), so :func:`rhn_np.rhn.backward` accepts either.

On a GPU even two launches per micro-step cost more than the arithmetic at small batch
sizes: :class:`CapturedLayer` captures this forward and this backward once each into a
CUDA graph and replays them per window (the trainer does so on CuPy), and
:class:`CapturedWindow` replays both for a given ∂L/∂ys (the benchmark's window).
"""

from __future__ import annotations

from . import backend as _backend
from .rhn import fuse_params, split_grads


def forward(params, xs, s0, m_x, m_s, dims):
    """Fast forward; arguments already checked by :func:`rhn_np.rhn.forward`."""
    T, B, n_in, n, depth, coupled, dtype = dims
    xp = _backend.namespace(xs)
    k = _backend.gate_kernels(xs, coupled)
    dev = _backend.device_of(xs)
    W, R, b = fuse_params(params)
    kn = R.shape[2]

    x_in = xs if m_x is None else xs * m_x
    # Input projection of all T steps in one product; micro-layer 1's bias folded in.
    a_x = xp.reshape(k.matmul(xp.reshape(x_in, (T * B, n_in)), W), (T, B, kn)) + b[0, ...]  # (T, B, k·n)
    mask = xp.ones((B, n), dtype=dtype, device=dev) if m_s is None else k.contiguous(m_s)

    S = xp.empty((depth, T, B, n), dtype=dtype, device=dev)
    Hs = xp.empty((depth, T, B, n), dtype=dtype, device=dev)
    Ts = xp.empty((depth, T, B, n), dtype=dtype, device=dev)
    Cs = None if coupled else xp.empty((depth, T, B, n), dtype=dtype, device=dev)
    ys = xp.empty((T, B, n), dtype=dtype, device=dev)
    a = xp.empty((B, kn), dtype=dtype, device=dev)  # pre-activations of one micro-step
    s_tr = k.contiguous(s0 * mask)  # state seen by the transforms, (B, n)
    S[0, 0, ...] = s0
    step = k.forward_steps(a_x, R, b, S, Hs, Ts, Cs, ys, mask, s_tr, a)
    for t in range(T):
        for l in range(depth):
            step(t, l)  # one GEMM + one gate kernel: S[l, t] -> H, T, (C)[l, t] and the next state
    cache = {"impl": "fast", "dims": dims, "xs": xs, "m_x": m_x, "m_s": m_s, "S": S, "H": Hs, "T": Ts, "C": Cs}
    return ys, cache


def backward(params, cache, dys, ds_last):
    """Fast BPTT; arguments already checked by :func:`rhn_np.rhn.backward`."""
    T, B, n_in, n, depth, coupled, dtype = cache["dims"]
    xp = _backend.namespace(dys)
    k = _backend.gate_kernels(dys, coupled)
    dev = _backend.device_of(dys)
    W, R, _ = fuse_params(params)
    kn = R.shape[2]
    S, Hs, Ts, Cs, m_s, m_x = cache["S"], cache["H"], cache["T"], cache["C"], cache["m_s"], cache["m_x"]
    mask = xp.ones((B, n), dtype=dtype, device=dev) if m_s is None else k.contiguous(m_s)
    dys = k.contiguous(dys)
    dA = xp.empty((depth, T, B, kn), dtype=dtype, device=dev)
    # ∂L/∂s of a micro-layer's input = ds_carry + (∂L/∂a @ Rᵀ) ⊙ m_s: kept as its two parts,
    # summed inside the next kernel. Two carry buffers, so no kernel reads what it writes.
    carry = [xp.zeros((B, n), dtype=dtype, device=dev), xp.empty((B, n), dtype=dtype, device=dev)]
    if ds_last is not None:
        carry[0][...] = ds_last
    g = xp.zeros((B, n), dtype=dtype, device=dev)  # ∂L/∂a @ Rᵀ of the micro-layer above
    step, ds0 = k.backward_steps(R, S, Hs, Ts, Cs, dys, mask, dA, carry, g)
    del R  # the step function holds what it needs (NumPy: a copy laid out as Rᵀ; CuPy: R itself)
    for t in reversed(range(T)):
        for l in reversed(range(depth)):
            step(t, l)  # one gate kernel (-> dA[l, t]) + one GEMM (-> g)
    ds0 = ds0()

    dR = xp.empty((depth, n, kn), dtype=dtype, device=dev)
    for l in range(depth):
        s_tr = S[l, ...] if m_s is None else S[l, ...] * m_s
        k.matmul(xp.reshape(s_tr, (T * B, n)).T, xp.reshape(dA[l, ...], (T * B, kn)), out=dR[l, ...])
    db = xp.sum(xp.reshape(dA, (depth, T * B, kn)), axis=1)
    dA1 = xp.reshape(dA[0, ...], (T * B, kn))
    xs = cache["xs"]
    x_in = xs if m_x is None else xs * m_x
    dW = k.matmul(xp.reshape(x_in, (T * B, n_in)).T, dA1)
    dxs = xp.reshape(k.matmul(dA1, W.T), (T, B, n_in))
    if m_x is not None:
        dxs = dxs * m_x
    return split_grads(dW, dR, db, coupled), dxs, ds0


class CapturedLayer:
    """:func:`rhn_np.rhn.forward` and :func:`rhn_np.rhn.backward` of fixed shapes, each
    captured once into a CUDA graph and replayed per window.

    On a GPU the fast path is bound by the Python cost of launching two operations per
    micro-step; a CUDA graph replays all of them with one launch. The two graphs compute
    exactly :func:`forward` and :func:`backward` of this module (the same kernels), so
    they are tested against them. Forward and backward are separate graphs so that work
    that needs the outputs (a softmax head) can run between them: this is what the
    trainer uses on CuPy for token data (``Config.cuda_graphs``).

    Usage (the same calls and results as the functions of :mod:`rhn_np.rhn`)::

        layer = CapturedLayer(params, T, B, masks=True)          # CuPy params
        ys, cache = layer.forward(params, xs, s0, masks)          # copy in, replay
        grads, dxs, ds0 = layer.backward(params, cache, dys)      # copy in, replay

    ``params`` are the layer's own (``lm.layer_params`` of a language model's). They are
    read at every replay from the arrays that were in ``params`` at capture: update them
    in place (the optimisers of :mod:`rhn_np.optim` do); passing other arrays raises a
    ValueError. A layer captured with ``masks=True`` takes a missing mask (or
    ``masks=None``) as all ones, one captured with ``ds_last=True`` a missing ``ds_last``
    as zeros. The returned arrays are the graphs' own buffers, overwritten by the next
    call: copy what you keep. A cache serves backward until the next forward.
    """

    def __init__(self, params, T, B, *, masks=False, ds_last=False):
        if not all(_backend.is_cupy(p) for p in params.values()):
            raise ValueError("a CUDA graph needs CuPy parameters: rhn.init_params(..., backend='cupy')")
        from .rhn import _check_params

        xp, n_in, n, depth, dtype, coupled = _check_params(params)
        dev = _backend.device_of(params["R_H"])
        z = lambda *shape: xp.zeros(shape, dtype=dtype, device=dev)  # noqa: E731
        self.params = dict(params)
        self.shape = (T, B)
        self.masks, self.ds_last = bool(masks), bool(ds_last)
        self._ptrs = {k: _backend.address(v) for k, v in params.items()}
        self._inputs = {"xs": z(T, B, n_in), "s0": z(B, n), "dys": z(T, B, n)}
        if self.masks:
            self._inputs.update(m_x=z(B, n_in) + 1, m_s=z(B, n) + 1)
        if self.ds_last:
            self._inputs["ds_last"] = z(B, n)
        self._token = None  # the cache of the latest forward replay
        previous = _backend.set_cuda_kernels("raw")  # direct cuBLAS calls can be captured
        try:
            self._forward_graph = _backend.capture_graph(self._forward)
            self._backward_graph = _backend.capture_graph(self._backward)  # reads the forward's cache buffers
        finally:
            _backend.set_cuda_kernels(previous)

    def _forward(self):
        from . import rhn

        inp = self._inputs
        masks = {"x": inp["m_x"], "s": inp["m_s"]} if self.masks else None
        return rhn.forward(self.params, inp["xs"], inp["s0"], masks, impl="fast")

    def _backward(self):
        from . import rhn

        _, cache = self._forward_graph.outputs
        return rhn.backward(self.params, cache, self._inputs["dys"], self._inputs.get("ds_last"))

    def pool_bytes(self) -> int:
        """GPU memory held by the two graphs' private pools: buffers, cache, temporaries."""
        return self._forward_graph.pool_bytes() + self._backward_graph.pool_bytes()

    def holds(self, params) -> bool:
        """Whether ``params`` are the arrays this layer was captured with (same keys, same memory)."""
        return isinstance(params, dict) and set(params) == set(self._ptrs) and all(
            _backend.is_cupy(v) and _backend.address(v) == self._ptrs[k] for k, v in params.items())

    def _check_captured_params(self, params):
        if self.holds(params):
            return
        if not isinstance(params, dict):
            raise TypeError(f"params must be the dict this layer was captured with, got {type(params).__name__}")
        extra, missing = sorted(set(params) - set(self._ptrs)), sorted(set(self._ptrs) - set(params))
        if extra or missing:
            raise ValueError(f"params has the keys {sorted(params)}, this layer {sorted(self._ptrs)}: pass the RHN "
                             "layer's own parameters (lm.layer_params(params) of a language model)")
        changed = sorted(k for k, v in params.items() if not _backend.is_cupy(v) or _backend.address(v) != self._ptrs[k])
        raise ValueError(f"params {changed} are not the arrays captured in this CUDA graph (replaced since the "
                         "capture?); update parameters in place or build a new CapturedLayer")

    def _copy_in(self, given):
        """Check every input, then copy them into the graphs' buffers (None: the neutral value)."""
        for k, v in given.items():
            buf = self._inputs[k]
            if v is None:
                continue
            if not _backend.is_cupy(v) or tuple(v.shape) != tuple(buf.shape) or v.dtype != buf.dtype:
                got = (f"{v.dtype} {tuple(v.shape)}" if _backend.is_cupy(v) else
                       f"{type(v).__module__.split('.')[0]}.{type(v).__name__}")
                raise ValueError(f"{k} must be a CuPy {buf.dtype} array of shape {tuple(buf.shape)} (the captured "
                                 f"shape), got {got}")
        for k, v in given.items():
            if v is None:
                self._inputs[k][...] = 1 if k in ("m_x", "m_s") else 0  # a missing mask keeps every unit
            else:
                self._inputs[k][...] = v

    def forward(self, params, xs, s0, masks=None):
        """Replay :func:`rhn_np.rhn.forward`: ``(ys (T, B, n), cache)``."""
        self._token = None  # from here on, the buffers earlier caches point at may change
        if masks is not None and not isinstance(masks, dict):
            raise TypeError(f"masks must be a dict with the keys 'x' and/or 's' (those of rhn.forward) or None, "
                            f"got {type(masks).__name__}")
        masks = {k: v for k, v in (masks or {}).items() if v is not None}
        if not set(masks) <= {"x", "s"}:
            raise ValueError(f"masks must have the keys 'x' and/or 's' (those of rhn.forward), got {sorted(masks)}")
        if masks and not self.masks:
            raise ValueError("this layer was captured without masks: build it with masks=True to pass masks")
        given = {"xs": xs, "s0": s0}
        if self.masks:
            given.update(m_x=masks.get("x"), m_s=masks.get("s"))
        if xs is None or s0 is None:
            raise TypeError(f"{'xs' if xs is None else 's0'} must be a CuPy array, got None")
        self._check_captured_params(params)
        self._copy_in(given)
        self._forward_graph.launch()
        ys, cache = self._forward_graph.outputs
        self._token = object()
        return ys, {**cache, "graph": self._token}

    def backward(self, params, cache, dys, ds_last=None):
        """Replay :func:`rhn_np.rhn.backward` of the latest forward: ``(grads, dxs, ds0)``."""
        if not isinstance(cache, dict) or cache.get("graph") is None or cache.get("graph") is not self._token:
            raise ValueError("this cache is not from the latest forward of this CapturedLayer (its buffers may "
                             "have been overwritten since): run forward again")
        if ds_last is not None and not self.ds_last:
            raise ValueError("this layer was captured without ds_last: build it with ds_last=True to pass ds_last")
        if dys is None:
            raise TypeError("dys must be a CuPy array, got None")
        given = {"dys": dys}
        if self.ds_last:
            given["ds_last"] = ds_last
        self._check_captured_params(params)
        self._copy_in(given)
        self._backward_graph.launch()
        grads, dxs, ds0 = self._backward_graph.outputs
        return dict(grads), dxs, ds0


class CapturedWindow:
    """One forward + BPTT window of fixed shapes, replayed from CUDA graphs: a
    :class:`CapturedLayer`'s forward then its backward, for a given ``dys``.

    Usage::

        window = CapturedWindow(params, T, B, masks=True)   # CuPy params
        ys, grads, dxs, ds0 = window(xs, s0, dys, masks)     # every call: copy in, replay

    The rules of :class:`CapturedLayer` hold: parameters updated in place, returned
    arrays overwritten by the next call.
    """

    def __init__(self, params, T, B, *, masks=False, ds_last=False):
        self.params = params
        self._layer = CapturedLayer(params, T, B, masks=masks, ds_last=ds_last)

    def pool_bytes(self) -> int:
        """GPU memory held by the graphs (:meth:`CapturedLayer.pool_bytes`)."""
        return self._layer.pool_bytes()

    def __call__(self, xs, s0, dys, masks=None, ds_last=None):
        """Copy the inputs into the graphs' buffers, replay, return ``(ys, grads, dxs, ds0)``."""
        ys, cache = self._layer.forward(self.params, xs, s0, masks)
        grads, dxs, ds0 = self._layer.backward(self.params, cache, dys, ds_last)
        return ys, grads, dxs, ds0
