"""Every argument check of the package, in one place.

The maths modules (:mod:`rhn_np.rhn`, :mod:`rhn_np.dtrnn`, :mod:`rhn_np.lm`, ...) read
maths first: each public function opens with one call into this module, which
raises a ``TypeError`` or ``ValueError`` that names the argument, says what was
wrong and what to do. Nothing here computes a result.

Sections: numbers; arrays; a cell's parameters (any cell, described by its
``param_shapes`` and a few facts); a window's inputs, caches and gradients; the
language model's heads and masks; optimisers; theory; gradient checks; data.

Checks that need the values of an array (NaN, ranges, 0/1) run only where the array
lives on the host: on a GPU they would force a synchronisation every call. Parameters
are read in full (:func:`finite_params`) only where a model is loaded, evaluated or
analysed, not on every training window. NumPy array subclasses other than
``numpy.memmap`` are refused wherever an array comes in (:func:`plain`: a type check).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import backend as _backend

__all__ = [
    "is_real",
    "positive_int",
    "number",
    "is_array",
    "array",
    "finite",
    "NonFinite",
    "plain",
    "finite_params",
    "seed",
    "representable",
    "cell_params",
    "window_inputs",
    "step_inputs",
    "cache_matches",
    "step_cache",
    "window_grads",
    "impl",
    "keep",
    "lm_masks",
    "head",
    "time_major",
    "ids",
    "targets",
    "grads_dict",
    "same_keys",
    "layout",
    "float64_host",
    "setting",
    "piano_rolls",
]


# ----------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------
def is_real(x) -> bool:
    """A real number: int, float or a NumPy scalar of either (``np.float32(0.5)``); not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def positive_int(name, value, minimum=1) -> int:
    """``value`` as an int >= ``minimum`` (NumPy integers accepted, bools and floats refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def number(name, value, *, minimum=0.0, strict=False) -> float:
    """``value`` as a finite float >= ``minimum`` (> with ``strict``)."""
    if not is_real(value):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {minimum}, got {value!r}")
    return value


def finite_real(name, value) -> float:
    """Any finite real number (``transform_bias``)."""
    if not (is_real(value) and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def flag(name, value) -> bool:
    """``value`` as a bool: True or False (NumPy's bool too); a string such as ``'no'`` or a
    number is refused, since ``bool('no')`` is True."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def seed(name, value) -> np.random.Generator:
    """The host generator of ``value``: a ``numpy.random.Generator`` (used as it is,
    advanced in place) or a seed, an integer >= 0 (NumPy integers accepted; bools,
    floats, strings and None refused: None would draw a fresh seed every call)."""
    if isinstance(value, np.random.Generator):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer >= 0 or a numpy.random.Generator, got {value!r} "
                        f"({type(value).__name__})")
    if value < 0:
        raise ValueError(f"{name} must be an integer >= 0 (NumPy's seeds are non-negative), got {value}")
    return _backend.host_rng(int(value))


_LIMITS: dict = {}


def _limits(dtype):
    """``(name, largest, smallest normal)`` of a float dtype, cached (checks on every
    optimiser step read them). The key leads with the dtype's type, so that dtypes of
    different backends are never compared with each other."""
    key = (type(dtype), dtype)
    try:
        got = _LIMITS.get(key)
    except TypeError:  # an unhashable dtype description
        key, got = None, None
    if got is None:
        name = _backend.float_dtype_name(dtype)
        info = np.finfo(name)
        got = (name, float(info.max), float(info.tiny))
        if key is not None:
            _LIMITS[key] = got
    return got


def representable(name, value, dtype, *, limit=None) -> float:
    """``value`` (a finite float) stays finite once stored as ``dtype`` ("float32" or
    "float64"): ``|value| <=`` the dtype's largest number (or ``limit``, when smaller)."""
    dtype_name, big, _ = _limits(dtype)
    big = big if limit is None else min(big, limit)
    if abs(value) > big:
        raise ValueError(f"{name} must lie within ±{big:.4g}, got {value!r}: it would overflow {dtype_name} and "
                         "become infinite")
    return value


def nonzero_in(name, value, dtype) -> float:
    """``value`` > 0 stays > 0 once cast to ``dtype`` (it is not below the dtype's smallest
    normal number: Adam's ``eps`` of 1e-50 would become 0 in float32, and a zero gradient
    would then divide 0 by 0)."""
    dtype_name, _, tiny = _limits(dtype)
    if 0 < value < tiny:
        raise ValueError(f"{name} must be >= {tiny:.4g} with {dtype_name} parameters, got {value!r}: it would round "
                         "to 0")
    return value


def init_scale(value, dtype, name="init_scale") -> float:
    """``init_scale`` of a uniform U(-init_scale, init_scale) draw: a finite number >= 0
    whose range, ``2·init_scale``, is a float64 and whose draws fit ``dtype``."""
    value = number(name, value)
    return representable(name, value, dtype, limit=float(np.finfo(np.float64).max) / 2)


# ----------------------------------------------------------------------------
# Arrays
# ----------------------------------------------------------------------------
def is_array(a) -> bool:
    return _backend.name_of(a) in ("numpy", "cupy", "array_api_strict") or hasattr(a, "__array_namespace__")


def plain(name, a):
    """``a`` is not a NumPy array subclass whose arithmetic differs from an array's.

    The rule, the same at every entry point: plain ``numpy.ndarray`` (and
    ``numpy.memmap``, an ndarray backed by a file) pass; every other subclass is a
    ``TypeError`` -- ``numpy.matrix``, where ``*`` is a matrix product and rows stay 2-D,
    would give wrong states without an error, and a masked array's mask would be
    ignored by the compiled paths. A type check only (no data is read): it costs the
    same for any size. None and other types pass (the caller's own checks name them).
    """
    if type(a) is not np.ndarray and isinstance(a, np.ndarray) and not isinstance(a, np.memmap):
        fix = (f"{name}.filled(value) gives a plain array with the masked entries set"
               if isinstance(a, np.ma.MaskedArray) else f"np.asarray({name}) gives the plain array")
        raise TypeError(f"{name} is a {type(a).__module__}.{type(a).__name__}, a NumPy array subclass; rhn_np takes "
                        f"plain arrays (numpy.ndarray) only, because a subclass's operators may differ (in "
                        f"numpy.matrix, * is a matrix product): {fix}")


def plain_all(names, *arrays):
    """:func:`plain` of each array, named by the words of ``names`` in order
    (``plain_all("ys W_out", ys, W_out)``); plain arrays cost one type check each."""
    for a in arrays:
        if a is not None and type(a) is not np.ndarray:
            for name, b in zip(names.split(), arrays):
                plain(name, b)
            return


def array(xp, name, a, shape, dtype, required=False):
    """``a`` is a plain array (:func:`plain`) of ``shape`` and ``dtype`` on the backend of
    ``xp`` (None allowed unless ``required``; ``xp`` None: any backend)."""
    if a is None:
        if required:
            raise TypeError(f"{name} must be an array of shape {tuple(shape)}, got None")
        return
    if not is_array(a):
        raise TypeError(f"{name} must be an array, got {type(a).__name__}")
    plain(name, a)
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(a.shape)}, expected {tuple(shape)}")
    if xp is not None and _backend.name_of(a) != _backend.xp_name(xp):
        where = _backend.xp_name(xp)
        raise TypeError(
            f"{name} is a {_backend.name_of(a)} array but the parameters are {where} arrays: arrays from "
            f"different backends were mixed; move it with rhn_np.backend.to_device({name}, '{where}')"
        )
    if a.dtype != dtype:
        raise TypeError(f"{name} is {a.dtype} but the parameters are {dtype}: cast it to {dtype} (every input "
                        "has the parameters' dtype)")


class NonFinite(ValueError):
    """An array holds NaN or infinity: a ``ValueError`` of its own class, so that the trainer
    can tell a diverged run (a NaN state or gradient of a window) from a wrong argument."""


def finite(xp, name, a, hint=""):
    """No NaN or infinity in ``a`` (checked on host arrays only; ``hint`` ends the message)."""
    if a is not None and _backend.name_of(a) == "numpy" and not bool(np.all(np.isfinite(a))):
        raise NonFinite(f"{name} contains NaN or infinity{hint}")


#: The end of the message of a NaN state: where it usually comes from.
STATE_HINT = ("; a state turns NaN when the parameters hold NaN or infinity (a diverged run) or the inputs did "
              "earlier: check the parameters with rhn_np.checks.finite_params(params)")


def mask_values(name, m):
    """A dropout mask (host arrays only): finite and >= 0 (it holds 0 and 1/keep)."""
    if m is None or _backend.name_of(m) != "numpy" or not m.size:
        return
    if not (m.min() >= 0.0 and m.max() < np.inf):  # two reductions, no temporary; a NaN fails both
        what = ": a dropout mask holds 0 (dropped) and 1/keep (kept), as rhn_np.lm.draw_masks draws them"
        if not bool(np.all(np.isfinite(m))):
            raise NonFinite(f"{name} contains NaN or infinity{what}")
        raise ValueError(f"{name} contains negative values{what}")


def finite_params(params, what="params", where=""):
    """No NaN or infinity in any array of a parameter dict, the first bad key named
    (``what[key]``, then ``where``, e.g. " in run/best.npz"). Reads every value: it runs
    where a model is loaded, checked or evaluated, not on every training window. Any
    backend (one device sync per array)."""
    if not isinstance(params, dict):
        raise TypeError(f"{what} must be a dict name -> array, got {type(params).__name__}")
    for k, a in params.items():
        if not is_array(a):
            raise TypeError(f"{what}[{k!r}] must be an array, got {type(a).__name__}")
        plain(f"{what}[{k!r}]", a)
        xp = _backend.namespace(a)
        if not bool(xp.all(xp.isfinite(a))):
            raise NonFinite(f"{what}[{k!r}] contains NaN or infinity{where}: a diverged run or damaged weights "
                            "(a run's earlier checkpoint, or a smaller learning rate, may help)")


# ----------------------------------------------------------------------------
# A cell's parameters
# ----------------------------------------------------------------------------
def cell_params(params, *, cell, shapes, anchor, variant_keys, build, other_cells=""):
    """A cell's parameter dict: exactly its keys, arrays of one float dtype, consistent shapes.

    Parameters
    ----------
    params : what the caller passed
    cell : the cell's name for messages ("RHN", "DT-RNN")
    shapes : ``shapes(n_in, n, depth, variant) -> {key: shape}`` (the cell's ``param_shapes``)
    anchor : ``(W_key, R_key)``: the input matrix (n_in, n) and the recurrent stack (depth, n, n)
        from which the dimensions are read
    variant_keys : the keys whose presence selects the cell's variant (all or none of them)
    build : the call that builds the dict, for messages (``"rhn.init_params(...)"``)

    Returns
    -------
    tuple
        ``xp, n_in, n, depth, dtype, variant`` (``variant``: whether ``variant_keys`` are there).
    """
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of the {cell}'s parameters ({build}), got {type(params).__name__}")
    present = [k for k in variant_keys if k in params]
    if present and len(present) < len(variant_keys):
        raise ValueError(f"params has {present} but not all of {', '.join(variant_keys)}: they come together "
                         f"({build})")
    variant = bool(present)
    expected = list(shapes(1, 1, 1, variant))
    missing = [k for k in expected if k not in params]
    if missing:
        raise ValueError(f"params is missing {missing}; build it with {build}{other_cells}")
    unknown = [k for k in params if k not in expected]
    if unknown:
        raise ValueError(f"params has keys that are not the {cell} layer's: {unknown}; it holds exactly {expected} "
                         "(of a language model's params, rhn_np.lm.layer_params(params) is the layer's part)")
    for k in expected:
        if not is_array(params[k]):
            raise TypeError(f"params[{k!r}] must be an array, got {type(params[k]).__name__}")
        plain(f"params[{k!r}]", params[k])
    xp = _backend.namespace(*params.values())
    W_key, R_key = anchor
    R = params[R_key]
    if R.ndim != 3 or R.shape[1] != R.shape[2]:
        raise ValueError(f"params[{R_key!r}] must have shape (depth, n, n), got {tuple(R.shape)}")
    depth, n = R.shape[0], R.shape[1]
    if depth < 1:
        raise ValueError(f"depth must be >= 1: params[{R_key!r}] has no micro-layer")
    W = params[W_key]
    if W.ndim != 2:
        raise ValueError(f"params[{W_key!r}] must have shape (n_in, n), got {tuple(W.shape)}")
    n_in = W.shape[0]
    dtype = R.dtype
    if dtype not in (xp.float32, xp.float64):
        raise TypeError(f"params must be float32 or float64, got {dtype}")
    for name, shape in shapes(n_in, n, depth, variant).items():
        p = params[name]
        if tuple(p.shape) != shape:
            raise ValueError(
                f"params[{name!r}] has shape {tuple(p.shape)}, expected {shape} (n_in={n_in} read from "
                f"params[{W_key!r}], n={n} and depth={depth} from params[{R_key!r}]): all must agree"
            )
        if p.dtype != dtype:
            raise TypeError(f"params[{name!r}] is {p.dtype} but params[{R_key!r}] is {dtype}: use one dtype for all "
                            "parameters")
    return xp, n_in, n, depth, dtype, variant


def masks(xp, masks, B, n_in, n, dtype):
    """A layer's dropout masks ``{"x": (B, n_in), "s": (B, n)}`` (either may be absent)."""
    if masks is None:
        return None, None
    if not isinstance(masks, dict) or not set(masks) <= {"x", "s"}:
        got = f"keys {sorted(map(str, masks))}" if isinstance(masks, dict) else type(masks).__name__
        raise ValueError(f"masks must be a dict with keys 'x' (B, n_in) and/or 's' (B, n), got {got}")
    m_x, m_s = masks.get("x"), masks.get("s")
    array(xp, "masks['x']", m_x, (B, n_in), dtype)
    array(xp, "masks['s']", m_s, (B, n), dtype)
    mask_values("masks['x']", m_x)
    mask_values("masks['s']", m_s)
    return m_x, m_s


# ----------------------------------------------------------------------------
# A window's inputs, caches and gradients (every cell)
# ----------------------------------------------------------------------------
def window_inputs(xp, n_in, n, dtype, params, xs, s0, m):
    """Inputs of a cell's ``forward``: ``xs (T, B, n_in)``, ``s0 (B, n)``, masks.

    Returns ``xp, T, B, m_x, m_s`` (``xp`` of all arrays together: mixed backends raise).
    """
    plain("xs", xs)
    if not hasattr(xs, "shape") or len(xs.shape) != 3:
        raise ValueError(f"xs must have shape (T, B, n_in), got {getattr(xs, 'shape', type(xs).__name__)}")
    T, B = xs.shape[0], xs.shape[1]
    if T < 1 or B < 1:
        raise ValueError(f"xs must have T >= 1 steps and B >= 1 rows, got shape {tuple(xs.shape)}")
    array(xp, "xs", xs, (T, B, n_in), dtype)
    if hasattr(s0, "shape") and len(s0.shape) == 2 and s0.shape[0] != B and s0.shape[0] == T > 1:
        raise ValueError(f"s0 has shape {tuple(s0.shape)}, expected {(B, n)}: B = {B} rows, from xs "
                         f"{tuple(xs.shape)}. If xs is batch-major, (B, T, n_in), make it time-major, (T, B, n_in), "
                         "with xs.transpose(1, 0, 2)")
    array(xp, "s0", s0, (B, n), dtype, required=True)
    m_x, m_s = masks(xp, m, B, n_in, n, dtype)
    xp = _backend.namespace(*params.values(), xs, s0, m_x, m_s)  # mixed backends -> TypeError
    finite(xp, "xs", xs)
    finite(xp, "s0", s0, STATE_HINT)
    return xp, T, B, m_x, m_s


def step_inputs(module, x, s_prev, dims=None, names=("x", "s_prev")):
    """``x (B, n_in)`` and ``s_prev (B, n)`` of a cell's ``step_forward``, under the names
    ``names`` (the calling function's own); ``module`` is the cell's module name, or the
    window function to suggest (``"theory.rnn_forward"``). With ``dims = (xp, n_in, n, dtype)`` (the
    cell's checked params) every check of the window's ``forward`` runs here first, so
    that no message names the window's ``xs`` or ``s0``."""
    x_name, s_name = names
    plain(x_name, x)
    plain(s_name, s_prev)
    if not hasattr(x, "shape") or len(x.shape) != 2:
        window = module if "." in module else f"{module}.forward (or theory.sequence_jacobians)"
        raise ValueError(f"{x_name} must be one step's input of shape (B, n_in), got "
                         f"{getattr(x, 'shape', type(x).__name__)}; for a window of T steps use {window}")
    if hasattr(s_prev, "shape") and tuple(s_prev.shape[:1]) != tuple(x.shape[:1]):
        raise ValueError(f"{s_name} has shape {tuple(s_prev.shape)} but {x_name} has {x.shape[0]} rows (B): "
                         f"{s_name} must be (B, n)")
    if dims is not None:
        xp, n_in, n, dtype = dims
        B = x.shape[0]
        if B < 1:
            raise ValueError(f"{x_name} must have B >= 1 rows, got shape {tuple(x.shape)}")
        array(xp, x_name, x, (B, n_in), dtype, required=True)
        array(xp, s_name, s_prev, (B, n), dtype, required=True)
        finite(xp, x_name, x)
        finite(xp, s_name, s_prev, STATE_HINT)


def cache_matches(cache, now, module):
    """The cache is a ``forward`` cache of ``module`` made with parameters of the same
    ``(n_in, n, depth, variant, dtype)`` as ``now``; returns ``(T, B)``."""
    if not isinstance(cache, dict) or "dims" not in cache or cache.get("cell") != module:
        raise TypeError(f"cache must be the second value returned by {module}.forward(...)")
    T, B, *made = cache["dims"]
    made[-1] = _backend.float_dtype_name(made[-1])  # by name: a cache moved to another backend still matches
    now = tuple(now[:-1]) + (_backend.float_dtype_name(now[-1]),)
    if tuple(made) != now:
        names = ("n_in", "n", "depth", "variant", "dtype")
        diff = ", ".join(f"{k} {a} (cache) vs {b} (params)" for k, a, b in zip(names, made, now) if a != b)
        raise ValueError(f"params do not match the ones the cache was made with: {diff}")
    return T, B


def step_cache(cache, module):
    """A cache of ``module.step_forward`` (a window of one step); returns ``(B, n)``."""
    if not isinstance(cache, dict) or cache.get("cell") != module or cache.get("dims", (None,))[0] != 1:
        raise TypeError(f"cache must be the second value returned by {module}.step_forward(...); "
                        f"for a window of T steps use {module}.backward")
    return cache["dims"][1], cache["dims"][3]


def step_grad(ds, B, n, dtype=None):
    """``ds (B, n)`` of a cell's ``step_backward`` (of ``dtype``, the cache's, when given)."""
    plain("ds", ds)
    if not hasattr(ds, "shape") or tuple(ds.shape) != (B, n):
        raise ValueError(f"ds must have shape (B, n) = {(B, n)}, got {getattr(ds, 'shape', type(ds).__name__)}")
    if dtype is not None:
        array(None, "ds", ds, (B, n), dtype, required=True)
        finite(np, "ds", ds)


def window_grads(xp, params, cache, dys, ds_last, T, B, n, dtype):
    """``dys (T, B, n)`` and ``ds_last (B, n)`` of a cell's ``backward``; returns ``xp``."""
    array(xp, "dys", dys, (T, B, n), dtype, required=True)
    array(xp, "ds_last", ds_last, (B, n), dtype)
    xp = _backend.namespace(*params.values(), dys, ds_last, cache["xs"])
    finite(xp, "dys", dys)
    finite(xp, "ds_last", ds_last)
    return xp


def impl(impl, xs):
    """``impl`` of a ``forward``, checked: "auto", "reference" or "fast" (for NumPy or CuPy
    arrays). Which one "auto" means, and whether a cell has a fast path, is
    :func:`rhn_np.fast.resolve`'s answer."""
    if impl not in ("auto", "reference", "fast"):
        raise ValueError(f"impl must be 'auto', 'reference' or 'fast', got {impl!r}")
    if impl == "fast" and _backend.name_of(xs) not in ("numpy", "cupy"):
        raise ValueError("impl='fast' needs NumPy or CuPy arrays")
    return impl


# ----------------------------------------------------------------------------
# The language model
# ----------------------------------------------------------------------------
def keep(name, keep) -> float:
    if not (is_real(keep) and 0.0 < keep <= 1.0):
        raise ValueError(f"{name} must be a probability in (0, 1] (keep = 1 - drop), got {keep!r}")
    return float(keep)


def drop(name, drop) -> float:
    """A dropout probability in [0, 1) (``drop = 1 - keep``), as the configs give them."""
    if not (is_real(drop) and 0.0 <= drop < 1.0):
        raise ValueError(f"{name} must be a drop probability in [0, 1), got {drop!r}")
    return float(drop)


def lm_masks(masks, allowed, shapes, dtype):
    """The LM's masks under their own names: keys among ``allowed``, shapes as in
    ``shapes`` (key -> tuple of allowed shapes), the parameters' dtype."""
    if masks is None:
        return
    if not isinstance(masks, dict) or not set(masks) <= set(allowed):
        got = f"keys {sorted(map(str, masks))}" if isinstance(masks, dict) else type(masks).__name__
        raise ValueError(f"masks must be a dict with keys among {sorted(allowed)} (lm.draw_masks), got {got}")
    for key, ok in shapes.items():
        m = masks.get(key)
        if m is None:
            continue
        plain(f"masks[{key!r}]", m)
        if tuple(getattr(m, "shape", ())) not in ok:
            want = f"(T, B, 1) = {ok[0]} (one bit per token: lm.draw_masks)" if key == "x" else ok[0]
            raise ValueError(f"masks[{key!r}] has shape {tuple(getattr(m, 'shape', ()))}, expected {want}")
        if m.dtype != dtype:
            raise TypeError(f"masks[{key!r}] is {m.dtype} but the parameters are {dtype}: draw the masks with "
                            f"dtype='{dtype}' (lm.draw_masks(..., dtype=...))")
        mask_values(f"masks[{key!r}]", m)


def head(params, n, dtype):
    """``W_out`` (n, V) and ``b_out`` (V,) fit the last layer (and ``E``), in the parameters' dtype."""
    W_out = params.get("W_out")
    plain("params['W_out']", W_out)
    plain("params['b_out']", params["b_out"])
    if W_out is not None:
        V = params["E"].shape[0] if "E" in params else (W_out.shape[-1] if getattr(W_out, "ndim", 0) == 2 else None)
        if V is None or tuple(W_out.shape) != (n, V):
            raise ValueError(f"params['W_out'] has shape {tuple(getattr(W_out, 'shape', ()))}, expected (n, V) = "
                             f"{(n, V or 'V')}")
    else:
        V = params["E"].shape[0]
    for key, a in (("W_out", W_out), ("b_out", params["b_out"])):
        if key == "b_out" and tuple(getattr(a, "shape", ())) != (V,):
            raise ValueError(f"params['b_out'] has shape {tuple(getattr(a, 'shape', ()))}, expected (V,) = ({V},)")
        if a is not None and a.dtype != dtype:
            raise TypeError(f"params[{key!r}] is {a.dtype} but the layer's parameters are {dtype}: use one dtype")


def model_params(params):
    """A language model's parameter dict (it has the output bias ``b_out``)."""
    if not isinstance(params, dict) or "b_out" not in params:
        raise TypeError("params must be the dict of lm.init_lm_params(...) or lm.init_dense_params(...)")


def layer_found(layer, k, K):
    if not layer:
        raise ValueError(f"the model has {K} layer(s), not a layer {k}")


def tied_width(tied, n_emb, n):
    if tied and n_emb != n:
        raise ValueError(f"weight tying uses E (vocab, n_emb) as the softmax weights Eᵀ (n, vocab), so it needs "
                         f"n_emb == n; got n_emb={n_emb}, n={n}")


def budget_tying(tied, emb, n, budget):
    """A tied model sized by a parameter budget: its embedding width is the width the budget gives."""
    if tied and emb is not None and emb != n:
        raise ValueError(f"weight tying (--tied) needs emb == hidden, and the budget of {budget:,} parameters "
                         f"(--params) gives hidden = {n}, not emb = {emb}: leave --emb unset")


def stacked_layer(k, n_in, n_k, n):
    """Layer ``k`` >= 2 reads the ``n`` outputs of the one below and has ``n`` units."""
    if n_in != n or n_k != n:
        raise ValueError(f"layer {k} reads {n_in} inputs and has {n_k} units; every layer above the first reads "
                         f"the {n} outputs of the one below and has {n} units")


def model_kind(params, word):
    if word and "E" not in params:
        raise ValueError("params has no embedding 'E': build it with lm.init_lm_params(...)")
    if not word and "W_out" not in params:
        raise ValueError("params has no 'W_out': build it with lm.init_dense_params(...)")


def vocab_shape(vocab_shape, dX, ids):
    """``vocab_shape`` is ``E.shape`` and fits ``dX (T, B, n_emb)`` and ``ids (T, B)``."""
    if not (isinstance(vocab_shape, (tuple, list)) and len(vocab_shape) == 2):
        raise TypeError(f"vocab_shape must be the shape (V, n_emb) of E, got {vocab_shape!r}")
    T, B, d = dX.shape
    if d != tuple(vocab_shape)[1] or tuple(ids.shape) != (T, B):
        raise ValueError(f"dX {tuple(dX.shape)} and ids {tuple(ids.shape)} do not match vocab_shape {tuple(vocab_shape)}")


def embedding(E, n_in, dtype, tied, n):
    plain("params['E']", E)
    if tied and E.shape[1] != n:
        raise ValueError(f"a tied model (no 'W_out') needs n_emb == n, got E {tuple(E.shape)} and n={n}")
    if len(E.shape) != 2 or E.shape[1] != n_in or E.dtype != dtype:
        raise ValueError(f"params['E'] is {E.dtype} {tuple(E.shape)} but the first layer reads {n_in} {dtype} inputs: "
                         "E must be (V, n_emb = n_in) of the parameters' dtype")


def state(name, s, layers, B, n, dtype, xp):
    """A model's carried state: (B, n) for one layer, (layers, B, n) for a stack."""
    shape = (B, n) if layers == 1 else (layers, B, n)
    if not hasattr(s, "shape") or tuple(s.shape) != shape:
        want = f"(B, n) = {shape}" if layers == 1 else f"(layers, B, n) = {shape}: one state per layer"
        raise ValueError(f"{name} has shape {tuple(getattr(s, 'shape', ())) or type(s).__name__}, expected {want}")
    array(xp, name, s, shape, dtype)


def time_major(name, a, s0):
    """A (B, T, ...) array where (T, B, ...) belongs gets a message about the layout."""
    if (hasattr(a, "shape") and hasattr(s0, "shape") and len(a.shape) >= 2 and len(s0.shape) >= 2
            and s0.shape[-2] != a.shape[1] and s0.shape[-2] == a.shape[0] > 1):
        layout = "(T, B)" if len(a.shape) == 2 else "(T, B, ...)"
        fix = f"{name}.T" if len(a.shape) == 2 else f"{name}.transpose(1, 0, 2)"
        raise ValueError(f"s0 has shape {tuple(s0.shape)}, expected (B, n) with B = {a.shape[1]} rows, from {name} "
                         f"{tuple(a.shape)}. If {name} is batch-major, make it time-major, {layout}, with {fix}")


def ids(xp, name, ids, vocab):
    """Integer token ids ``(T, B)`` in ``[0, vocab)``."""
    plain(name, ids)
    if not hasattr(ids, "shape") or len(ids.shape) != 2:
        raise ValueError(f"{name} must have shape (T, B), got {getattr(ids, 'shape', type(ids).__name__)}")
    if not xp.isdtype(ids.dtype, "integral"):
        raise TypeError(f"{name} must be an integer array, got {ids.dtype}")
    if _backend.name_of(ids) == "numpy" and ids.size:
        lo, hi = int(np.min(ids)), int(np.max(ids))
        if lo < 0 or hi >= vocab:
            raise ValueError(f"{name} must lie in [0, vocab={vocab}), got values in [{lo}, {hi}]")


def host_ids(ids_host, vocab):
    if ids_host.ndim != 2 or not np.issubdtype(ids_host.dtype, np.integer):
        raise ValueError(f"ids must be an integer array of shape (T, B), got {ids_host.dtype} {ids_host.shape}")
    if ids_host.size and (ids_host.min() < 0 or ids_host.max() >= vocab):
        raise ValueError(f"ids must lie in [0, vocab={vocab}), got [{ids_host.min()}, {ids_host.max()}]")


def targets(xp, logits, targets):
    plain("logits", logits)
    if len(logits.shape) != 3:
        raise ValueError(f"logits must have shape (T, B, V), got {tuple(logits.shape)}")
    if tuple(targets.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"targets must have shape (T, B) = {tuple(logits.shape[:2])}, got {tuple(targets.shape)}")
    ids(xp, "targets", targets, logits.shape[2])


def binary_targets(logits, targets, step_mask):
    plain_all("logits targets step_mask", logits, targets, step_mask)
    if len(logits.shape) != 3 or tuple(targets.shape) != tuple(logits.shape):
        raise ValueError(f"logits and targets must both have shape (T, B, K), got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")
    T, B, _ = logits.shape
    if step_mask is not None and tuple(step_mask.shape) != (T, B):
        raise ValueError(f"step_mask must have shape (T, B) = {(T, B)}, got {tuple(step_mask.shape)}")
    if _backend.name_of(targets) == "numpy" and not bool(np.all((targets == 0) | (targets == 1))):
        raise ValueError("targets must be 0 or 1 (a key is off or on); got other values, e.g. "
                         f"{np.unique(targets[(targets != 0) & (targets != 1)])[:5].tolist()}: binarise them first")
    token_weights("step_mask", step_mask)


def weights(w, T, B):
    plain("weights", w)
    if w is not None and tuple(w.shape) != (T, B):
        raise ValueError(f"weights must have shape (T, B) = {(T, B)}, got {tuple(w.shape)}")
    token_weights("weights", w)


def token_weights(name, w):
    """Per-token weights or a step mask (host arrays only): finite and >= 0."""
    if w is None or _backend.name_of(w) != "numpy" or w.dtype == np.bool_ or not w.size:
        return
    if not (w.min() >= 0 and w.max() < np.inf):  # a NaN fails both
        what = ": each token's weight in the loss is >= 0 (0 leaves it out, e.g. padding)"
        if not bool(np.all(np.isfinite(w))):
            raise NonFinite(f"{name} contains NaN or infinity{what}")
        raise ValueError(f"{name} contains negative values{what}")


# ----------------------------------------------------------------------------
# Optimisers
# ----------------------------------------------------------------------------
def grads_dict(name, d):
    if not isinstance(d, dict):
        hint = "; clip_global_norm returns (grads, norm): unpack it" if isinstance(d, tuple) else ""
        raise TypeError(f"{name} must be a dict name -> array, got {type(d).__name__}{hint}")
    if not d:
        raise ValueError(f"{name} is empty")
    for k, a in d.items():
        plain(f"{name}[{k!r}]", a)


def same_keys(grads, params, what="grads"):
    grads_dict(what, grads)
    grads_dict("params", params)
    if set(grads) != set(params):
        raise KeyError(f"{what} and params must have the same keys; differ in {sorted(set(grads) ^ set(params))}")
    for k in params:  # broadcasting would apply a (n,) gradient to every row of an (m, n) parameter
        if tuple(grads[k].shape) != tuple(params[k].shape):
            raise ValueError(f"{what}[{k!r}] has shape {tuple(grads[k].shape)}, params[{k!r}] {tuple(params[k].shape)}")


# ----------------------------------------------------------------------------
# Theory
# ----------------------------------------------------------------------------
LAYOUTS = ("numerator", "paper")


def layout(layout):
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'numerator' or 'paper', got {layout!r}")
    return layout


def choice(name, value, choices):
    """``value`` is one of ``choices`` (strings): "must be 'a' or 'b', got ..."."""
    if value not in choices:
        listed = ", ".join(repr(v) for v in choices[:-1]) + f" or {choices[-1]!r}" if len(choices) > 1 else repr(choices[0])
        raise ValueError(f"{name} must be {listed}, got {value!r}")
    return value


def rhn_only(cell_name, what):
    """The functions of the RHN's Eqs. 10-13 take RHN parameters."""
    if cell_name != "rhn":
        raise ValueError(f"{what} computes the RHN's Eqs. 10-13 and needs RHN parameters, got a {cell_name}'s; "
                         "theory.step_jacobian gives the step Jacobian of any cell")


def coupled(params, what):
    if "R_C" in params:
        raise ValueError(f"{what} needs coupled params (no W_C/R_C/b_C)")


def nonnegative(name, value):
    if not (is_real(value) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a number >= 0, and finite, got {value!r}")
    return value


def sequence(name, xs):
    if len(xs.shape) != 3 or xs.shape[0] < 1:
        raise ValueError(f"{name} must have shape (T >= 1, B, n_in), got {tuple(xs.shape)} (one sequence: "
                         f"{name}[:, None, :])")


def square(name, M):
    if M.ndim < 2 or M.shape[-1] != M.shape[-2]:
        raise ValueError(f"{name} must be square in its last two axes, got shape {tuple(M.shape)}")


def matrices(name, M, *, square_=True, ndim=None):
    """A (stack of) matrix ``(..., m, n)`` for the theory's linear algebra: an array (not
    None, not a subclass), at least 2-D (exactly ``ndim``-D when given), no empty axis,
    square in its last two axes (``square_``) and, on the host, finite -- what LAPACK
    and the reductions would otherwise refuse with their own messages."""
    if M is None or not (is_array(M) or isinstance(M, (list, tuple))):
        raise TypeError(f"{name} must be an array of shape (..., n, n), got {type(M).__name__}")
    plain(name, M)
    shape = tuple(np.shape(M)) if isinstance(M, (list, tuple)) else tuple(M.shape)
    want = "(n, n)" if ndim == 2 else "(T, B, n, n)" if ndim == 4 else "(..., n, n)"
    if len(shape) < 2 or (ndim is not None and len(shape) != ndim):
        raise ValueError(f"{name} must have shape {want}, got shape {shape}"
                         + (f" (a vector: {name}[None, :] is one row)" if len(shape) == 1 else ""))
    if 0 in shape:
        raise ValueError(f"{name} must have no empty axis, got shape {shape}")
    if square_ and shape[-1] != shape[-2]:
        raise ValueError(f"{name} must be square in its last two axes, got shape {shape}")
    if isinstance(M, (list, tuple)) or _backend.name_of(M) == "numpy":
        Mh = np.asarray(M)
        if not np.issubdtype(Mh.dtype, np.number) or np.issubdtype(Mh.dtype, np.timedelta64):
            raise TypeError(f"{name} must hold numbers, got dtype {Mh.dtype}")
        if not bool(np.all(np.isfinite(Mh))):
            raise NonFinite(f"{name} contains NaN or infinity: its eigenvalues, singular values and discs are "
                            "undefined")


def rnn_state(name, y, xs, R):
    """A plain RNN's state ``(B, n)``: B from ``xs (T, B, n_in)``, n and the dtype from ``R``."""
    plain(name, y)
    array(None, name, y, (xs.shape[1], R.shape[0]), R.dtype, required=True)
    finite(np, name, y, STATE_HINT)


def draws_fit(name, value, dtype, *draws):
    """Random draws of scale ``value`` (float64 host arrays) stay finite once cast to ``dtype``."""
    big = float(np.finfo(dtype).max)
    for d in draws:
        if d.size and not (bool(np.all(np.isfinite(d))) and float(np.max(np.abs(d))) <= big):
            raise ValueError(f"{name}={value!r} draws numbers that overflow {dtype} (they would be infinite): use a "
                             "smaller one")


def disc_values(z, c, r, tol):
    """Points, centres and radii of :func:`rhn_np.theory.in_union`: finite; radii and tol >= 0."""
    for name, a in (("points", z), ("centres", c), ("radii", r), ("tol", np.asarray(tol))):
        if not np.issubdtype(a.dtype, np.number):
            raise TypeError(f"{name} must hold numbers, got dtype {a.dtype}")
        if not bool(np.all(np.isfinite(a))):
            raise ValueError(f"{name} contains NaN or infinity: whether a point lies in a disc is then undefined")
        if name in ("radii", "tol") and bool(np.any(np.real(a) < 0)):
            why = "a disc's radius" if name == "radii" else "the slack added to every radius"
            raise ValueError(f"{name} must be >= 0 ({why}), got negative values")


def rnn_weights(R, W, b):
    """A plain RNN's ``R (n, n)``, ``W (n_in, n)``, ``b (n,)``: arrays of one float dtype."""
    for name, a, nd in (("R", R, 2), ("W", W, 2), ("b", b, 1)):
        if not is_array(a):
            raise TypeError(f"{name} must be an array, got {type(a).__name__} (theory.rnn_init builds R, W, b)")
        plain(name, a)
        if a.ndim != nd:
            raise ValueError(f"{name} must be {nd}-D, got shape {tuple(a.shape)}")
    n = R.shape[0]
    if tuple(R.shape) != (n, n) or W.shape[1] != n or tuple(b.shape) != (n,):
        raise ValueError(f"R must be (n, n), W (n_in, n) and b (n,), got R {tuple(R.shape)}, W {tuple(W.shape)}, "
                         f"b {tuple(b.shape)}")
    if not (R.dtype == W.dtype == b.dtype):
        raise TypeError(f"R, W and b must have one dtype, got {R.dtype}, {W.dtype}, {b.dtype}")


def discs(c, r):
    """Centres and radii of one set of discs (host arrays with a point axis added)."""
    if c.shape != r.shape:
        raise ValueError(f"centres {c.shape[:-2] + c.shape[-1:]} and radii {r.shape[:-2] + r.shape[-1:]} must have "
                         "the same shape (one radius per disc; gersgorin_discs returns both)")


def micro_layer(layer, depth):
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < depth:
        raise ValueError(f"layer must be in 0..{depth - 1} (code index ℓ-1), got {layer!r}")


def time_index(t, T):
    if not 0 <= positive_int("t", t, minimum=0) < T:
        raise ValueError(f"t must be a time index in 0..{T - 1} of the cache's window, got {t!r}")


# ----------------------------------------------------------------------------
# Gradient checks
# ----------------------------------------------------------------------------
def float64_host(name, a):
    """Every numerical check runs on float64 host arrays (:mod:`rhn_np.gradcheck` says why)."""
    plain(name, a)
    if isinstance(a, np.generic):
        raise TypeError(f"{name} must be a float64 NumPy array, got a NumPy scalar ({a.dtype}): use "
                        f"np.array({name}, dtype=np.float64)")
    if not isinstance(a, np.ndarray):
        kind = _backend.name_of(a)
        kind = f"{kind} array" if kind in ("cupy", "array_api_strict") else kind
        raise TypeError(f"{name} must be a float64 NumPy array, got: {kind}. Move it to the host with "
                        f"rhn_np.backend.to_host({name}) (or np.asarray) and cast with .astype(np.float64)")
    if a.dtype != np.float64:
        why = ("an integer array would round every x ± h" if not np.issubdtype(a.dtype, np.floating)
               else f"{a.dtype} round-off swamps central differences" if a.itemsize < 8
               else "the checks are written and calibrated for float64")
        raise TypeError(f"{name} must be a float64 NumPy array, got {a.dtype} ({why}): use {name}.astype(np.float64)")


# ----------------------------------------------------------------------------
# Settings (rhn_np.config: one declaration per hyper-parameter)
# ----------------------------------------------------------------------------
def setting(label, value, s):
    """``value`` of a :class:`rhn_np.config.Config` field checked against its declaration
    ``s`` (a :class:`rhn_np.config.Setting`); returns it. ``label`` names the field and its
    option in the message."""
    if value is None and s.optional:
        return None
    if s.kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{label} must be True or False, got {value!r}")
        return value
    if s.kind == "choice":
        if value not in s.choices:
            raise ValueError(f"{label} must be one of {', '.join(map(repr, s.choices))}, got {value!r}")
        return value
    if s.kind == "text":
        if not isinstance(value, str):
            raise ValueError(f"{label} {s.rule or 'must be a string'}, got {value!r}")
        return value
    unset = " or unset (None)" if s.optional else ""
    if s.kind == "int":
        minimum = int(s.minimum)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            want = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise ValueError(f"{label} must be {want}{unset}, got {value!r}")
        return value
    ok = is_real(value) and math.isfinite(value)
    if ok and s.minimum is not None:
        ok = value > s.minimum if s.strict else value >= s.minimum
    if ok and s.maximum is not None:
        ok = value < s.maximum if s.below_max else value <= s.maximum
    if not ok:
        if s.rule:
            raise ValueError(f"{label} {s.rule}, got {value!r}")
        bound = "" if s.minimum is None else f" {'>' if s.strict else '>='} {float(s.minimum)}"
        raise ValueError(f"{label} must be a finite number{bound}{unset}, got {value!r}")
    return value


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------
def piano_rolls(sequences, what: str) -> list[np.ndarray]:
    """Piano rolls as NumPy arrays: each (T_i >= 2, K) of 0/1 frames, one K for all."""
    if isinstance(sequences, np.ndarray) and sequences.ndim == 3:
        sequences = list(sequences)  # (N, T, K): N sequences of one length
    if not isinstance(sequences, (list, tuple)) or not sequences:
        raise ValueError(f"{what} must be a non-empty list of (T_i, K) piano rolls")
    for j, s in enumerate(sequences):
        plain(f"{what}[{j}]", s)
    rolls = [np.asarray(s) for s in sequences]
    for j, r in enumerate(rolls):
        if r.ndim != 2 or len(r) < 2:
            raise ValueError(f"{what}: sequence {j} must be a (T_i >= 2, K) array, got shape {r.shape}")
        if not np.all((r == 0) | (r == 1)):
            raise ValueError(f"{what}: sequence {j} must hold 0/1 piano-roll frames (a key off or on), got other values")
    keys = sorted({r.shape[1] for r in rolls})
    if len(keys) != 1:
        raise ValueError(f"{what}: all sequences must have the same number of keys K, got {keys}")
    return rolls


def token_stream(stream):
    if stream.ndim != 1 or not np.issubdtype(stream.dtype, np.integer):
        raise ValueError(f"the token stream must be a 1-D integer array, got {stream.dtype} {stream.shape}")
