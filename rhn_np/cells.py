"""The recurrent cells, by name: one registry, one interface.

A *cell* is a module with ``init_params``, ``param_shapes``, ``dims`` (``(n_in, n, depth,
dtype)`` of its params), ``forward``, ``backward``, ``step_forward`` and
``step_backward``, the shapes and conventions of :mod:`rhn_np.rhn`; ``FAST_PATH`` says
whether it has the fused fast path (and so CUDA graphs). The language model, the
trainer, evaluation, sampling, checkpoints and the theory take any of them: they call
:func:`get` with the configured name, or :func:`of` on a parameter dict, and never ask
which cell they have.

=========  =============================================  =======================
name       cell                                           module
=========  =============================================  =======================
rhn        Recurrent Highway Network (the paper)          :mod:`rhn_np.rhn`
dt_rnn     deep-transition RNN (Pascanu et al. 2013)      :mod:`rhn_np.dtrnn`
dts_rnn    DT(S)-RNN: the same with a shortcut            :mod:`rhn_np.dtrnn`
=========  =============================================  =======================

Adding a cell: write its module with the interface above and add one line to
:data:`CELLS`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from . import checks, dtrnn, rhn

__all__ = ["Cell", "CELLS", "NAMES", "get", "of", "name_of", "count_params", "matched_width"]


@dataclasses.dataclass(frozen=True)
class Cell:
    """A registered cell: its name, its module, the module's keyword for the variant
    (``variant(coupled) -> {"coupled": ...}`` or ``{"shortcut": ...}``) and whether its
    ``init_params`` takes a ``transform_bias``."""

    name: str
    module: Any
    variant: Callable[[bool], dict]
    transform_bias: bool
    summary: str

    def init_params(self, n_in, n, depth, *, coupled=True, transform_bias=-2.0, init_scale=0.04, seed=0,
                    dtype="float32", backend="numpy"):
        """The module's ``init_params`` with the settings that apply to this cell."""
        bias = {"transform_bias": transform_bias} if self.transform_bias else {}
        return self.module.init_params(n_in, n, depth, init_scale=init_scale, seed=seed, dtype=dtype, backend=backend,
                                       **self.variant(coupled), **bias)

    def param_shapes(self, n_in, n, depth, *, coupled=True) -> dict:
        return self.module.param_shapes(n_in, n, depth, **self.variant(coupled))

    def count(self, n_in, n, depth, *, coupled=True) -> int:
        """Number of parameters of one layer of this cell."""
        return sum(math.prod(s) for s in self.param_shapes(n_in, n, depth, coupled=coupled).values())


#: The registered cells by name: adding a cell is one line here.
CELLS: dict[str, Cell] = {
    "rhn": Cell("rhn", rhn, lambda coupled: {"coupled": coupled}, True,
                "Recurrent Highway Network (Zilly et al. 2017)"),
    "dt_rnn": Cell("dt_rnn", dtrnn, lambda coupled: {"shortcut": False}, False,
                   "deep-transition RNN (Pascanu et al. 2013)"),
    "dts_rnn": Cell("dts_rnn", dtrnn, lambda coupled: {"shortcut": True}, False,
                    "deep-transition RNN with shortcut, DT(S)-RNN (Pascanu et al. 2013)"),
}
NAMES = tuple(CELLS)


def get(name) -> Cell:
    """The cell registered as ``name`` ("rhn", "dt_rnn", "dts_rnn")."""
    if name not in CELLS:
        raise ValueError(f"unknown cell {name!r}; the cells are {', '.join(NAMES)}")
    return CELLS[name]


def name_of(params) -> str:
    """The registered name of the cell whose parameter dict this is (by its keys)."""
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of a cell's parameters, got {type(params).__name__}")
    keys = set(params)
    if keys & set(rhn.param_shapes(1, 1, 1, coupled=False)):  # the cell's own check names what is missing
        return "rhn"
    if keys & set(dtrnn.param_shapes(1, 1, 1, shortcut=True)):
        return "dts_rnn" if dtrnn.has_shortcut(params) else "dt_rnn"
    raise ValueError(f"params {sorted(params)} are no cell's: an RHN layer holds R_H (rhn.init_params), a DT-RNN "
                     "holds R (dtrnn.init_params); of a language model's params take lm.layer_params(params)")


def of(params):
    """The module of the cell whose parameters these are: ``of(p).forward(p, xs, s0)``."""
    return get(name_of(params)).module


def count_params(cell, n_in, n, depth, n_out, *, layers=1, coupled=True, embedding=0, tied=False) -> int:
    """Parameters of a model: ``layers`` stacked layers of ``cell`` (the first reads ``n_in``
    inputs, the others ``n``), an output layer ``W_out (n, n_out)`` (none when ``tied``),
    ``b_out (n_out,)``, and ``embedding`` more (an embedding's V·n_emb)."""
    c = get(cell)
    layers = checks.positive_int("layers", layers)
    coupled, tied = checks.flag("coupled", coupled), checks.flag("tied", tied)
    total = c.count(n_in, n, depth, coupled=coupled) + (layers - 1) * c.count(n, n, depth, coupled=coupled)
    return total + (0 if tied else n * n_out) + n_out + embedding


def matched_width(cell, depth, n_in, n_out, budget, *, layers=1, coupled=True, count=None):
    """The width ``n`` whose total parameter count is closest to ``budget``, and that count.

    ``count(n) -> int`` gives the model's size at width n; by default
    :func:`count_params` of a dense-input model (``cell``, ``depth``, ``n_in`` inputs,
    ``n_out`` outputs, ``layers``). The count grows with ``n``, so the search is a
    bisection; ties go to the smaller width. This is how the optimisation experiment
    makes cells of one depth equally large (paper §5.1) and what ``rhn-np train
    --params N`` uses.

    Returns ``(n, count(n))``.
    """
    depth = checks.positive_int("depth", depth)
    budget = checks.positive_int("budget (number of parameters)", budget)
    layers, coupled = checks.positive_int("layers", layers), checks.flag("coupled", coupled)
    if count is None:
        get(cell)
        n_in, n_out = checks.positive_int("n_in", n_in), checks.positive_int("n_out", n_out)
        count = lambda n: count_params(cell, n_in, n, depth, n_out, layers=layers, coupled=coupled)  # noqa: E731
    lo, hi = 1, 2
    while count(hi) < budget:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # count(lo) < budget <= count(hi), or lo = 1
        mid = (lo + hi) // 2
        if count(mid) < budget:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda n: (abs(count(n) - budget), n))
    return best, count(best)
