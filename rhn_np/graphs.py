"""CUDA graphs: the RHN layer's fast forward and BPTT captured once, replayed per window.

On a GPU the fast path (:mod:`rhn_np.fast`) is bound by the Python cost of launching
two operations per micro-step; a CUDA graph replays all of them with one launch.

* :func:`capture_graph` captures any function of capturable operations (CuPy kernels
  and the fast path's direct cuBLAS calls) with a private memory pool;
* :class:`CapturedLayer` is :func:`rhn_np.rhn.forward` and :func:`rhn_np.rhn.backward`
  of fixed shapes, each captured once (the trainer uses it on CuPy:
  ``Config.cuda_graphs``, for cells whose ``FAST_PATH`` is true);
* :class:`CapturedWindow` replays both for a given ``∂L/∂ys`` (the benchmark's window).

CuPy is reached through :func:`rhn_np.backend.cupy_module`.
"""

from __future__ import annotations

from . import backend as _backend
from . import fast, rhn

__all__ = ["CapturedGraph", "capture_graph", "CapturedLayer", "CapturedWindow", "supports"]


def supports(cell) -> bool:
    """Whether a cell module can be captured (it has the fast path)."""
    return bool(getattr(cell, "FAST_PATH", False))


class CapturedGraph:
    """A CUDA graph, the outputs its capture produced, and the private memory pool that
    holds every buffer it touches (so no later allocation can reuse that memory)."""

    def __init__(self, graph, outputs, pool, stream):
        self.graph, self.outputs, self._pool, self._stream = graph, outputs, pool, stream

    def pool_bytes(self) -> int:
        """Bytes held by the graph's private memory pool (every buffer it touches)."""
        return self._pool.total_bytes()

    def launch(self):
        """Replay on the caller's current stream (asynchronous, like any kernel launch)."""
        self.graph.launch(_backend.cupy_module().cuda.get_current_stream())


def capture_graph(fn) -> CapturedGraph:
    """Run ``fn()`` once to warm up, then capture a second run into a CUDA graph.

    Everything ``fn`` allocates comes from a private CuPy memory pool that lives as long
    as the returned object: temporaries freed during the capture keep their addresses
    for the replays. ``fn`` must use only capturable operations (CuPy kernels and the
    fast path's direct cuBLAS calls; not ``cupy.matmul``).
    """
    cp = _backend.cupy_module()
    if cp is None:
        raise RuntimeError(f"CUDA graphs need CuPy and a GPU ({_backend.cupy_unavailable_reason()})")
    cp.cuda.get_current_stream().synchronize()  # what fn reads was written on the caller's stream
    pool = cp.cuda.MemoryPool()
    stream = cp.cuda.Stream(non_blocking=True)
    mode = getattr(cp.cuda.runtime, "streamCaptureModeRelaxed", None)
    with cp.cuda.using_allocator(pool.malloc), stream:
        fn()  # compiles kernels and sizes the private pool
        stream.synchronize()
        stream.begin_capture() if mode is None else stream.begin_capture(mode)
        try:
            outputs = fn()
        except BaseException:
            try:  # end the broken capture, but report what broke it
                stream.end_capture()
            except Exception:
                pass
            raise
        graph = stream.end_capture()
    stream.synchronize()
    return CapturedGraph(graph, outputs, pool, stream)


class CapturedLayer:
    """:func:`rhn_np.rhn.forward` and :func:`rhn_np.rhn.backward` of fixed shapes, each
    captured once into a CUDA graph and replayed per window.

    On a GPU the fast path is bound by the Python cost of launching two operations per
    micro-step; a CUDA graph replays all of them with one launch. The two graphs compute
    exactly :func:`rhn_np.fast.forward` and :func:`rhn_np.fast.backward` (the same kernels), so
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
        n_in, n, depth, dtype = rhn.dims(params)
        xp = _backend.namespace(*params.values())
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
        previous = fast.set_cuda_kernels("raw")  # direct cuBLAS calls can be captured
        try:
            self._forward_graph = capture_graph(self._forward)
            self._backward_graph = capture_graph(self._backward)  # reads the forward's cache buffers
        finally:
            fast.set_cuda_kernels(previous)

    def _forward(self):
        inp = self._inputs
        masks = {"x": inp["m_x"], "s": inp["m_s"]} if self.masks else None
        return rhn.forward(self.params, inp["xs"], inp["s0"], masks, impl="fast")

    def _backward(self):
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
