"""An independent oracle: the RHN of the paper written in PyTorch, differentiated by autograd.

The oracle is written straight from Eqs. 6-9, per micro-layer, with the separate
matrices of the paper and ``torch.sigmoid`` (no fused gates, no shared code with
rhn_np), in the row-vector layout of rhn_np (``x @ W`` is the paper's ``W x``):

    h_ℓ = tanh( [ℓ=1]·x_t W_H + (s_{ℓ-1} ⊙ m_s) R_Hℓ + b_Hℓ )
    t_ℓ = σ   ( [ℓ=1]·x_t W_T + (s_{ℓ-1} ⊙ m_s) R_Tℓ + b_Tℓ )
    c_ℓ = σ   ( [ℓ=1]·x_t W_C + (s_{ℓ-1} ⊙ m_s) R_Cℓ + b_Cℓ )   or 1 - t_ℓ (coupled)
    s_ℓ = h_ℓ ⊙ t_ℓ + s_{ℓ-1} ⊙ c_ℓ,       s_0 = y_{t-1},  y_t = s_L,  x_t ← x_t ⊙ m_x
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from conftest import draw_layer, make_inputs
from rhn_np import gradcheck, rhn

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

TOL = 1e-9


def torch_rhn(p, xs, s0, m_x=None, m_s=None):
    """Outputs ys (T, B, n) of the RHN layer, Eqs. 6-9, one micro-layer at a time."""
    coupled = "W_C" not in p
    depth = p["R_H"].shape[0]
    ys = []
    s = s0
    for x_t in xs:
        if m_x is not None:
            x_t = x_t * m_x
        for l in range(depth):
            s_tr = s if m_s is None else s * m_s
            first = l == 0
            h = torch.tanh((x_t @ p["W_H"] if first else 0.0) + s_tr @ p["R_H"][l] + p["b_H"][l])  # Eq. 7
            t = torch.sigmoid((x_t @ p["W_T"] if first else 0.0) + s_tr @ p["R_T"][l] + p["b_T"][l])  # Eq. 8
            if coupled:
                c = 1.0 - t  # coupled carry gate
            else:
                c = torch.sigmoid((x_t @ p["W_C"] if first else 0.0) + s_tr @ p["R_C"][l] + p["b_C"][l])  # Eq. 9
            s = h * t + s * c  # Eq. 6
        ys.append(s)
    return torch.stack(ys)


def oracle(params, xs, s0, dys, masks, ds_last):
    """ys and autograd gradients of L = Σ dys ⊙ ys (+ ds_last ⊙ y_T) for every input."""
    leaf = lambda a: torch.tensor(a, dtype=torch.float64, requires_grad=True)  # noqa: E731
    const = lambda a: None if a is None else torch.tensor(a, dtype=torch.float64)  # noqa: E731
    p = {k: leaf(v) for k, v in params.items()}
    xs_t, s0_t = leaf(xs), leaf(s0)
    masks = masks or {}
    ys = torch_rhn(p, xs_t, s0_t, const(masks.get("x")), const(masks.get("s")))
    loss = (ys * const(dys)).sum()
    if ds_last is not None:
        loss = loss + (ys[-1] * const(ds_last)).sum()
    loss.backward()
    grads = {k: v.grad.numpy() for k, v in p.items()}
    return ys.detach().numpy(), grads, xs_t.grad.numpy(), s0_t.grad.numpy()


def compare(params, xs, s0, dys, masks, ds_last):
    ys, cache = rhn.forward(params, xs, s0, masks, impl="reference")
    grads, dxs, ds0 = rhn.backward(params, cache, dys, ds_last)
    o_ys, o_grads, o_dxs, o_ds0 = oracle(params, xs, s0, dys, masks, ds_last)
    errors = {"ys": gradcheck.rel_error(ys, o_ys), "xs": gradcheck.rel_error(dxs, o_dxs), "s0": gradcheck.rel_error(ds0, o_ds0)}
    assert set(grads) == set(o_grads)
    errors.update({k: gradcheck.rel_error(grads[k], o_grads[k]) for k in o_grads})
    bad = {k: e for k, e in errors.items() if not e < TOL}
    assert not bad, f"rhn_np differs from the PyTorch oracle: {bad}"


@given(data=st.data())
def test_matches_torch_autograd(data):
    # Wider ranges than the finite-difference tests: the oracle is exact, so saturated
    # gates (transform bias down to -4, init up to 1.5) are fair game here.
    params, xs, s0, dys, ds_last, masks = draw_layer(
        data, T_max=6, B_max=4, n_in_max=6, n_max=10, depth_max=5, init_scale=(0.05, 1.5), transform_bias=(-4.0, 2.0)
    )
    compare(params, xs, s0, dys, masks, ds_last)


@pytest.mark.parametrize("coupled", [True, False], ids=["coupled", "uncoupled"])
@pytest.mark.parametrize("use_masks", [False, True], ids=["nomask", "masks"])
@pytest.mark.parametrize("use_ds_last", [False, True], ids=["nodslast", "dslast"])
def test_matches_torch_autograd_grid(coupled, use_masks, use_ds_last):
    """A fixed, paper-like configuration (negative transform bias, small init) at a larger size."""
    params = rhn.init_params(8, 16, 4, coupled=coupled, init_scale=0.3, transform_bias=-2.0, seed=7, dtype="float64")
    xs, s0, dys, ds_last, masks = make_inputs(10, 5, 8, 16, seed=7, masks=use_masks)
    compare(params, xs, s0, dys, masks, ds_last if use_ds_last else None)


def test_oracle_is_sensitive_to_the_carry_gate():
    """The oracle is not blind: a coupled layer and its uncoupled twin with c ≠ 1 - t differ."""
    p = rhn.init_params(3, 4, 2, coupled=False, init_scale=0.5, transform_bias=0.0, seed=9, dtype="float64")
    xs, s0, _, _, _ = make_inputs(3, 2, 3, 4, seed=9)
    coupled = {k: v for k, v in p.items() if not k.endswith("_C")}
    a = torch_rhn({k: torch.tensor(v) for k, v in p.items()}, torch.tensor(xs), torch.tensor(s0))
    b = torch_rhn({k: torch.tensor(v) for k, v in coupled.items()}, torch.tensor(xs), torch.tensor(s0))
    assert float((a - b).abs().max()) > 1e-3
    np.testing.assert_allclose(b.numpy(), rhn.forward(coupled, xs, s0)[0], rtol=0, atol=1e-12)
