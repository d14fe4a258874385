"""Optimisation (rhn_np.optim): clipping, the L2 term, SGD, Adam, state dicts, lr schedule."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from conftest import BACKENDS, host, on
from rhn_np import backend, gradcheck, optim

SAME = 1e-12


def tree(seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return {"W": scale * rng.standard_normal((3, 4)), "R": scale * rng.standard_normal((2, 4, 4)),
            "b": scale * rng.standard_normal((4,))}


def copy_tree(t):
    return {k: v.copy() for k, v in t.items()}


# ----------------------------------------------------------------------------
# Clipping and L2
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKENDS)
def test_clip_global_norm_matches_the_formula(name):
    be = backend.get(name)
    g = tree(1, scale=5.0)
    norm = math.sqrt(sum(float(np.sum(v**2)) for v in g.values()))
    assert norm > 10.0
    clipped, got_norm = optim.clip_global_norm(on(be, g), 10.0)
    assert float(got_norm) == pytest.approx(norm, rel=SAME)
    assert float(optim.global_norm(on(be, g))) == pytest.approx(norm, rel=SAME)
    for k in g:
        assert backend.name_of(clipped[k]) == be.name
        assert np.allclose(host(clipped[k]), g[k] * 10.0 / norm, rtol=SAME, atol=SAME), k
    assert float(optim.global_norm(clipped)) == pytest.approx(10.0, rel=1e-12)


@pytest.mark.parametrize("name", BACKENDS)
def test_clip_global_norm_leaves_small_gradients_unchanged(name):
    be = backend.get(name)
    g = tree(2, scale=0.1)
    gd = on(be, g)
    clipped, norm = optim.clip_global_norm(gd, 10.0)
    assert float(norm) < 10.0
    for k in g:
        assert np.array_equal(host(clipped[k]), g[k]), k
        assert np.array_equal(host(gd[k]), g[k]), "the input must not be modified"
    with pytest.raises(ValueError):
        optim.clip_global_norm(gd, 0.0)


@pytest.mark.parametrize("name", BACKENDS)
def test_l2_penalty_and_its_gradient(name):
    be = backend.get(name)
    p = tree(3)
    wd = 1e-2
    pen = optim.l2_penalty(on(be, p), wd)
    assert float(pen) == pytest.approx(0.5 * wd * sum(float(np.sum(v**2)) for v in p.values()), rel=SAME)
    g = tree(4)
    g2 = optim.add_l2_gradient(on(be, g), on(be, p), wd)
    for k in p:
        assert np.allclose(host(g2[k]), g[k] + wd * p[k], rtol=SAME, atol=SAME), k
    # the gradient of the penalty is wd·w: check one array by central differences
    hp = copy_tree(p)
    num = gradcheck.numerical_gradient(lambda _: float(optim.l2_penalty(hp, wd)), hp["R"])
    assert gradcheck.rel_error(num, wd * p["R"]) < 1e-7
    with pytest.raises(KeyError):
        optim.add_l2_gradient({"W": g["W"]}, p, wd)


def assert_steps_like_torch(opt, p0, grads_seq, torch_name, **torch_hyper):
    """``opt`` over ``grads_seq`` from ``p0`` ends where ``torch.optim.<torch_name>`` does."""
    torch = pytest.importorskip("torch")
    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in p0.items()}
    topt = getattr(torch.optim, torch_name)(list(tp.values()), **torch_hyper)
    p = copy_tree(p0)
    for g in grads_seq:
        for k in tp:
            tp[k].grad = torch.tensor(g[k], dtype=torch.float64)
        topt.step()
        opt.step(p, g)
    for k in p:
        assert np.allclose(p[k], tp[k].detach().numpy(), rtol=1e-12, atol=1e-14), k


# ----------------------------------------------------------------------------
# SGD
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKENDS)
def test_sgd_step_in_place(name):
    be = backend.get(name)
    p, g = tree(5), tree(6)
    pd = on(be, copy_tree(p))  # on() does not copy NumPy arrays; the step is in place
    arrays = dict(pd)
    opt = optim.SGD(0.2)
    out = opt.step(pd, on(be, g))
    assert out is pd
    for k in p:
        assert pd[k] is arrays[k], "the update is in place"
        assert np.allclose(host(pd[k]), p[k] - 0.2 * g[k], rtol=SAME, atol=SAME), k
    opt.lr = 0.05
    opt.weight_decay = 0.1
    before = {k: host(v).copy() for k, v in pd.items()}
    opt.step(pd, on(be, g))
    for k in p:
        assert np.allclose(host(pd[k]), before[k] - 0.05 * (g[k] + 0.1 * before[k]), rtol=SAME, atol=SAME), k
    assert opt.t == 2
    with pytest.raises(ValueError):
        opt.lr = -1.0


def test_sgd_state_dict_round_trip():
    opt = optim.SGD(0.2, weight_decay=1e-7)
    p = tree(7)
    opt.step(p, tree(8))
    opt.lr = 0.1
    sd = pickle.loads(pickle.dumps(opt.state_dict()))
    new = optim.SGD(1.0)
    new.load_state_dict(sd)
    assert (new.lr, new.weight_decay, new.t) == (0.1, 1e-7, 1)
    with pytest.raises(ValueError, match="SGD"):
        optim.Adam().load_state_dict(sd)


@pytest.mark.parametrize("name", BACKENDS)
def test_sgd_momentum_matches_the_formula(name):
    """u <- mu u + (g + wd w), w <- w - lr u, u from 0 (PyTorch's heavy ball)."""
    be = backend.get(name)
    p0, grads_seq = tree(40), [tree(41 + i) for i in range(5)]
    lr, mu, wd = 0.1, 0.9, 0.01
    ref, u = copy_tree(p0), {k: np.zeros_like(v) for k, v in p0.items()}
    for g in grads_seq:
        for k in ref:
            u[k] = mu * u[k] + g[k] + wd * ref[k]
            ref[k] = ref[k] - lr * u[k]
    pd = on(be, copy_tree(p0))
    opt = optim.SGD(lr, weight_decay=wd, momentum=mu)
    for g in grads_seq:
        opt.step(pd, on(be, g))
    for k in ref:
        assert np.allclose(host(pd[k]), ref[k], rtol=1e-12, atol=1e-14), k
    plain = copy_tree(p0)
    optim.SGD(lr, weight_decay=wd).step(plain, grads_seq[0])
    assert not np.allclose(plain["W"], ref["W"])


def test_sgd_momentum_matches_torch():
    assert_steps_like_torch(optim.SGD(0.05, weight_decay=1e-3, momentum=0.8), tree(50),
                            [tree(51 + i) for i in range(6)], "SGD", lr=0.05, momentum=0.8, weight_decay=1e-3)


def test_sgd_momentum_state_round_trip_resumes_identically():
    p0, grads_seq = tree(60), [tree(61 + i) for i in range(6)]
    straight, opt = copy_tree(p0), optim.SGD(0.1, momentum=0.7)
    for g in grads_seq:
        opt.step(straight, g)
    split, first = copy_tree(p0), optim.SGD(0.1, momentum=0.7)
    for g in grads_seq[:3]:
        first.step(split, g)
    sd = pickle.loads(pickle.dumps(first.state_dict()))
    assert sd["momentum"] == 0.7 and set(sd["m"]) == set(p0)
    second = optim.SGD(1.0)
    second.load_state_dict(sd)
    for g in grads_seq[3:]:
        second.step(split, g)
    for k in p0:
        np.testing.assert_array_equal(split[k], straight[k], err_msg=k)
    older = {k: v for k, v in optim.SGD(0.2).state_dict().items() if k != "momentum"}  # saved before momentum
    plain = optim.SGD(1.0)
    plain.load_state_dict(older)
    assert plain.momentum == 0.0 and plain.lr == 0.2
    with pytest.raises(ValueError, match="momentum must lie in"):
        optim.SGD(0.1, momentum=1.0)
    with pytest.raises(ValueError, match="velocities 'm' but momentum is 0"):
        optim.SGD(0.1).load_state_dict({**optim.SGD(0.1).state_dict(), "m": {"W": np.zeros((3, 4))}})


# ----------------------------------------------------------------------------
# Adam
# ----------------------------------------------------------------------------
def adam_reference(p, grads_seq, lr, b1, b2, eps, wd):
    """Textbook Adam (Kingma & Ba, Algorithm 1) with L2 added to the gradient."""
    p = copy_tree(p)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, grads in enumerate(grads_seq, start=1):
        for k in p:
            g = grads[k] + wd * p[k]
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g**2
            m_hat = m[k] / (1 - b1**t)
            v_hat = v[k] / (1 - b2**t)
            p[k] = p[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


HYPER = dict(lr=0.01, beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=0.01)


@pytest.mark.parametrize("name", BACKENDS)
def test_adam_matches_a_hand_written_reference(name):
    be = backend.get(name)
    p0 = tree(9)
    grads_seq = [tree(10 + i) for i in range(5)]
    pd = on(be, copy_tree(p0))
    opt = optim.Adam(**HYPER)
    for g in grads_seq:
        opt.step(pd, on(be, g))
    ref = adam_reference(p0, grads_seq, HYPER["lr"], HYPER["beta1"], HYPER["beta2"], HYPER["eps"], HYPER["weight_decay"])
    for k in p0:
        assert np.allclose(host(pd[k]), ref[k], rtol=1e-10, atol=1e-12), k
        assert not np.allclose(ref[k], p0[k])


def test_adam_matches_torch():
    assert_steps_like_torch(optim.Adam(**HYPER), tree(20), [tree(30 + i) for i in range(6)], "Adam", lr=HYPER["lr"],
                            betas=(HYPER["beta1"], HYPER["beta2"]), eps=HYPER["eps"],
                            weight_decay=HYPER["weight_decay"])


@pytest.mark.parametrize("name", BACKENDS)
def test_adam_state_dict_round_trip_resumes_identically(name):
    be = backend.get(name)
    p0 = tree(40)
    grads_seq = [tree(50 + i) for i in range(5)]
    pa = on(be, copy_tree(p0))
    a = optim.Adam(**HYPER)
    for g in grads_seq[:3]:
        a.step(pa, on(be, g))
    sd = a.state_dict()
    assert sd["t"] == 3 and isinstance(sd["lr"], float)
    assert all(type(x) is np.ndarray for d in (sd["m"], sd["v"]) for x in d.values())
    saved_m = {k: x.copy() for k, x in sd["m"].items()}
    raw, sd = sd, pickle.loads(pickle.dumps(sd))
    pb = on(be, {k: host(v).copy() for k, v in pa.items()})  # a checkpoint of the parameters
    b = optim.Adam(lr=1.0)
    b.load_state_dict(sd)
    assert b.state_dict()["t"] == 3 and np.array_equal(b.state_dict()["m"]["W"], saved_m["W"])
    pc = on(be, {k: host(v).copy() for k, v in pa.items()})
    c = optim.Adam(lr=1.0)  # moments handed over as arrays of the backend, not host arrays
    c.load_state_dict({**sd, "m": on(be, sd["m"]), "v": on(be, sd["v"])})
    for g in grads_seq[3:]:
        a.step(pa, on(be, g))
        b.step(pb, on(be, g))
        c.step(pc, on(be, g))
    for k in p0:
        assert np.array_equal(host(pa[k]), host(pb[k])), k
        assert np.array_equal(host(pa[k]), host(pc[k])), k
        assert backend.name_of(b.m[k]) == be.name
        assert np.array_equal(raw["m"][k], saved_m[k]), "state_dict arrays must be copies"


def test_adam_without_restored_moments_differs():
    # the round-trip test above can fail: a fresh Adam does not resume identically
    p0 = tree(40)
    grads_seq = [tree(50 + i) for i in range(5)]
    pa = copy_tree(p0)
    a = optim.Adam(**HYPER)
    for g in grads_seq[:3]:
        a.step(pa, g)
    pb = copy_tree(pa)
    b = optim.Adam(**HYPER)
    for g in grads_seq[3:]:
        a.step(pa, g)
        b.step(pb, g)
    assert not np.allclose(pa["W"], pb["W"])


# ----------------------------------------------------------------------------
# Learning-rate schedule
# ----------------------------------------------------------------------------
def test_lr_schedule_values():
    # PTB: lr 0.2 for epochs 0..19, then ÷1.02 per epoch
    assert [optim.lr_at_epoch(e, 0.2, 20, 1.02) for e in (0, 1, 19)] == [0.2, 0.2, 0.2]
    assert optim.lr_at_epoch(20, 0.2, 20, 1.02) == pytest.approx(0.2 / 1.02, rel=1e-15)
    assert optim.lr_at_epoch(25, 0.2, 20, 1.02) == pytest.approx(0.2 / 1.02**6, rel=1e-15)
    # enwik8: ÷1.03 after epoch 5
    assert optim.lr_at_epoch(4, 0.2, 5, 1.03) == 0.2
    assert optim.lr_at_epoch(7, 0.2, 5, 1.03) == pytest.approx(0.2 / 1.03**3, rel=1e-15)
    with pytest.raises(ValueError):
        optim.lr_at_epoch(-1, 0.2, 20, 1.02)
