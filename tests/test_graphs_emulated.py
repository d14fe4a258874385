"""The Python logic of ``graphs.CapturedLayer`` and the trainer's use of it, on the CPU.

A CUDA graph is played by :class:`ReplayGraph`: "capture" runs the function once, and
each replay runs it again and copies every result into the arrays of that first run, so
outputs keep their memory between replays as a graph's buffers do. NumPy arrays stand
in for CuPy ones. What this cannot show (the kernels and cuBLAS under capture, stream
order) is tested on a GPU in ``tests/test_gpu.py``.
"""

import numpy as np
import pytest

from conftest import window_case
from rhn_np import backend, data, graphs, lm, rhn
from rhn_np import train as T


def _copy_into(first, again):
    if isinstance(first, np.ndarray):
        if first is not again:
            first[...] = again
    elif isinstance(first, dict):
        for k in first:
            _copy_into(first[k], again[k])
    elif isinstance(first, (tuple, list)):
        for a, b in zip(first, again):
            _copy_into(a, b)


class ReplayGraph:
    def __init__(self, fn):
        self.fn, self.outputs = fn, fn()

    def launch(self):
        _copy_into(self.outputs, self.fn())

    def pool_bytes(self):
        return 0


@pytest.fixture
def emulated(monkeypatch):
    monkeypatch.setattr(graphs, "capture_graph", ReplayGraph)
    monkeypatch.setattr(backend, "is_cupy", lambda x: isinstance(x, np.ndarray))


CFG = (4, 3, 5, 6, 3, False, True, True)  # T, B, n_in, n, depth, coupled, masks, ds_last


def test_replays_give_rhn_forward_and_backward(emulated):
    p, *_ = window_case(CFG, "float64", seed=0)
    layer = graphs.CapturedLayer(p, CFG[0], CFG[1], masks=True, ds_last=True)
    for call in range(4):
        _, xs, s0, masks, dys, last = window_case(CFG, "float64", seed=10 + call)
        masks, last = [(masks, last), ({"s": masks["s"]}, last), (None, None), ({"x": masks["x"], "s": None}, last)][call]
        ys, cache = layer.forward(p, xs, s0, masks)
        want_ys, want_cache = rhn.forward(p, xs, s0, masks)
        np.testing.assert_allclose(ys, want_ys, rtol=1e-12, atol=1e-14, err_msg=str(call))
        head = dys * ys
        grads, dxs, ds0 = layer.backward(p, cache, head, last)
        want_grads, want_dxs, want_ds0 = rhn.backward(p, want_cache, head, last)
        np.testing.assert_allclose(dxs, want_dxs, rtol=1e-12, atol=1e-14, err_msg=str(call))
        np.testing.assert_allclose(ds0, want_ds0, rtol=1e-12, atol=1e-14, err_msg=str(call))
        for k in want_grads:
            np.testing.assert_allclose(grads[k], want_grads[k], rtol=1e-12, atol=1e-14, err_msg=f"{call} {k}")
        for k in p:  # in place, as the optimisers do
            p[k] -= 0.05 * grads[k]


def test_a_failed_forward_changes_nothing_and_ends_the_old_cache(emulated):
    p, xs, s0, masks, dys, last = window_case(CFG, "float64", seed=1)
    layer = graphs.CapturedLayer(p, CFG[0], CFG[1], masks=True, ds_last=True)
    _, cache = layer.forward(p, xs, s0, masks)
    before = {k: v.copy() for k, v in layer._inputs.items()}
    with pytest.raises(ValueError, match=r"s0 must be a CuPy float64 array of shape \(3, 6\)"):
        layer.forward(p, xs + 1, s0[:2], {"x": masks["x"] * 0})  # the last input is the bad one
    for k in before:  # checked before anything was written
        np.testing.assert_array_equal(layer._inputs[k], before[k], err_msg=k)
    with pytest.raises(ValueError, match="not from the latest forward"):
        layer.backward(p, cache, dys, last)


def test_clear_errors(emulated):
    p, xs, s0, masks, dys, last = window_case(CFG, "float64", seed=2)
    bare = graphs.CapturedLayer(p, CFG[0], CFG[1])
    with pytest.raises(ValueError, match="captured without masks: build it with masks=True"):
        bare.forward(p, xs, s0, masks)
    _, cache = bare.forward(p, xs, s0, {"x": None})  # no mask given: nothing to apply
    with pytest.raises(ValueError, match="captured without ds_last"):
        bare.backward(p, cache, dys, last)
    with pytest.raises(ValueError, match=r"lm\.layer_params"):
        bare.forward({**p, "E": xs}, xs, s0)
    with pytest.raises(ValueError, match=r"params \['R_H'\] are not the arrays captured .*replaced"):
        bare.forward({**p, "R_H": p["R_H"].copy()}, xs, s0)
    with pytest.raises(ValueError, match=r"xs must be a CuPy .* got builtins\.list"):
        bare.forward(p, xs.tolist(), s0)
    with pytest.raises(TypeError, match="s0 must be a CuPy array, got None"):
        bare.forward(p, xs, None)
    _, cache = bare.forward(p, xs, s0)
    other = graphs.CapturedLayer(p, CFG[0], CFG[1])
    with pytest.raises(ValueError, match="not from the latest forward of this CapturedLayer"):
        other.backward(p, cache, dys)


def test_needs_device_parameters():
    p, *_ = window_case(CFG, "float64")
    with pytest.raises(ValueError, match="needs CuPy parameters"):
        graphs.CapturedLayer(p, CFG[0], CFG[1])


def _periodic():
    s = np.tile(np.arange(9, dtype=np.int32), 100)
    return data.Dataset(name="tiny", kind="tokens", train=s[:700], valid=s[700:800], test=s[800:],
                        vocab=list("abcdefgh\n"), level="char")


def test_trainer_steps_through_the_captured_layer_and_recaptures(emulated, tmp_path):
    """The trainer hands its layer to the language model (only the RHN input mask on
    here: a partial mask dict), matches itself without graphs, and captures again when
    the parameter arrays are replaced."""
    cfg = T.Config(dataset="tiny", depth=2, hidden=8, emb=4, batch_size=3, bptt=5, optimizer="adam", lr=0.01,
                   max_steps=20, drop_x=0.1, drop_i=0.3, drop_o=0.2, dtype="float64", seed=1).check()
    quiet = dict(ds=_periodic(), progress=False, out=lambda *a: None)
    ref, tr = T.Trainer(cfg, tmp_path / "ref", **quiet), T.Trainer(cfg, tmp_path / "graphs", **quiet)
    assert not tr._graphs_on  # NumPy: never on its own
    tr._graphs_on = True
    for step in range(6):
        if step == 3:  # new arrays, the same numbers
            for t in (ref, tr):
                t.params = {k: v.copy() for k, v in t.params.items()}
            first = tr._captured
        np.testing.assert_allclose(float(tr.train_step()), float(ref.train_step()), rtol=1e-12)
    assert ref._captured is None and first is not None
    [layer] = tr._captured  # one layer: one captured layer
    assert layer is not first[0] and (layer.shape, layer.masks) == ((5, 3), True)
    assert layer.holds(lm.layer_params(tr.params))
    for k in ref.params:
        np.testing.assert_allclose(tr.params[k], ref.params[k], rtol=1e-12, atol=1e-15, err_msg=k)
