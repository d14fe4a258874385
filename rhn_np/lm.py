r"""Language-model pieces around the recurrent layers: embedding, dropout masks, output losses.

The recurrent layers are any cell of :mod:`rhn_np.cells` (the RHN, the DT-RNN, the
DT(S)-RNN), one or several stacked; below, ``RHN`` stands for whichever cell it is.

Word-level model (PTB, enwik8, text8; paper §5.2 and the authors' ``rhn.py``), for a
window of token ids ``ids (T, B)`` and next-token targets ``targets (T, B)``::

    x_t      = E[ids_t] ⊙ m_x[t]                  embedding, word-type dropout  (T, B, n_emb)
    y_t      = RHN(x_t ⊙ m_i, s_{t-1})            rhn.forward; m_h on the state  (T, B, n)
    logits_t = (y_t ⊙ m_o) @ W_out + b_out        untied                        (T, B, V)
             = (y_t ⊙ m_o) @ Eᵀ    + b_out        tied (weight tying, n_emb = n)
    loss     = (1/B) Σ_t Σ_b -log softmax(logits_t[b])[targets_t[b]]

Music model (JSB Chorales, paper §5.1): the 88-key piano roll ``xs (T, B, 88)`` goes
straight into the RHN (no input projection, no embedding) and each key is a Bernoulli
variable::

    y_t      = RHN(x_t ⊙ m_i, s_{t-1})
    logits_t = (y_t ⊙ m_o) @ W_out + b_out                                      (T, B, 88)
    loss     = (1/B) Σ_t Σ_b mask_t[b] Σ_k -log Bernoulli(targets_t[b, k]; σ(logits_t[b, k]))

**Loss scale.** Both losses are *summed over the time steps of the window and
averaged over the batch*, the scale of the authors' ``tf.reduce_sum(loss) /
batch_size`` that their learning rate 0.2 assumes. A loss averaged over time as well
would be T = 35 times smaller and would need a 35 times larger learning rate. For
reporting, the per-token mean NLL is ``loss / T`` (``stats["mean_nll"]``); perplexity
is ``exp(mean_nll)``, bits per character ``mean_nll / ln 2``.

**Variational dropout** (Gal & Ghahramani; the authors' ``get_noise``): four inverted
masks, values ``Bernoulli(keep) / keep``, drawn on the host once per window and
shared by every time step and every micro-layer (:func:`draw_masks`)::

    "x" (T, B, 1)   word-type mask on the embeddings: every occurrence of a token in
                    one row of the window shares one value (the whole word is dropped)
    "i" (B, n_emb)  the RHN input features         -> rhn masks["x"]
    "h" (B, n)      the state entering the transforms of every micro-layer -> rhn masks["s"]
    "o" (B, n)      the RHN output before the softmax

The authors' configurations give *drop* probabilities (PTB: x .25, i .75, h .25,
o .75): ``keep = 1 - drop``.

**Stacked layers** (``layers = K``, the authors' ``num_layers``): layer k + 1 reads
layer k's outputs ``y_t``; each layer has its own input and state masks (``"i"``,
``"h"`` for layer 1, ``"layer<k>.i"``, ``"layer<k>.h"`` above it) and its own carried
state (``s`` is then (K, B, n)); ``m_o`` and the softmax act on the last layer.

Parameters are one dict: layer 1's keys (the cell's, e.g. :func:`rhn_np.rhn.param_shapes`),
``"layer<k>.<key>"`` for layer k >= 2 (:func:`layer_params` splits them out), plus::

    E      (V, n_emb)   embedding (word model only)
    W_out  (n, V)       softmax / output weights (absent when tied: Eᵀ is used)
    b_out  (V,)         output bias (kept when tied, as in the authors' code)

Gradients come back as a dict with the same keys. Every function is written against
the Array API standard (NumPy, CuPy, array-api-strict) and creates its arrays on the
device of its inputs; random numbers are drawn on the host.
"""

from __future__ import annotations

import numpy as np

from . import backend as _backend
from . import cells, checks, rhn

__all__ = [
    "init_lm_params",
    "layer_params",
    "layer_key",
    "n_layers",
    "param_shapes",
    "cell_of",
    "layer_cache",
    "layers_forward",
    "layers_backward",
    "state_shape",
    "zero_state",
    "init_dense_params",
    "draw_masks",
    "draw_dense_masks",
    "embedding_forward",
    "embedding_backward",
    "log_softmax",
    "softmax_nll",
    "softmax_cross_entropy",
    "sigmoid_bernoulli_nll",
    "output_forward",
    "output_backward",
    "lm_forward",
    "lm_backward",
    "lm_loss_and_grads",
    "lm_logits",
    "lm_nll",
    "dense_forward",
    "dense_backward",
    "dense_loss_and_grads",
    "dense_logits",
]

# ----------------------------------------------------------------------------
# Parameters: layers of any cell, then the heads
# ----------------------------------------------------------------------------
HEAD_KEYS = ("E", "W_out", "b_out")  # the keys that are not a layer's


def layer_key(k: int, name: str) -> str:
    """The key of layer ``k``'s parameter ``name`` in a model's dict: the cell's own name for
    layer 1 (``"R_H"``), ``"layer<k>.<name>"`` above it (``"layer2.R_H"``)."""
    return name if k == 1 else f"layer{k}.{name}"


def n_layers(params) -> int:
    """Number of stacked layers of a model's ``params``."""
    tops = [int(key.split(".", 1)[0][len("layer"):]) for key in params if key.startswith("layer")]
    return max(tops, default=1)


def layer_params(params, k: int = 1):
    """Layer ``k``'s part of a model's ``params`` (1 = the layer that reads the inputs), under
    the cell's own names: what :mod:`rhn_np.rhn` / :mod:`rhn_np.dtrnn` and
    :mod:`rhn_np.theory` take, e.g. for the Jacobians of a trained model
    (``train.load_run``). The arrays are shared, not copied."""
    checks.model_params(params)
    if k == 1:
        return {key: v for key, v in params.items() if key not in HEAD_KEYS and not key.startswith("layer")}
    prefix = f"layer{k}."
    layer = {key[len(prefix):]: v for key, v in params.items() if key.startswith(prefix)}
    checks.layer_found(layer, k, n_layers(params))
    return layer


def _add_layer(params, k, layer):
    params.update({layer_key(k, name): v for name, v in layer.items()})


def _uniform(rng, be, shape, init_scale, dtype):
    return be.to_device(rng.uniform(-init_scale, init_scale, size=shape), dtype=dtype)


def init_lm_params(
    vocab,
    n_emb,
    n,
    depth,
    *,
    tied=False,
    cell="rhn",
    layers=1,
    coupled=True,
    transform_bias=-2.0,
    init_scale=0.04,
    seed=0,
    dtype="float32",
    backend="numpy",
):
    """Initial parameters of the word-level model: layers of a cell, embedding, softmax.

    Everything is U(-init_scale, init_scale) except an RHN's ``b_T = transform_bias``
    (see :func:`rhn_np.rhn.init_params`).

    Draw order, from one host generator ``numpy.random.default_rng(seed)``:

    1. layer 1 exactly as ``<cell>.init_params(n_emb, n, depth, seed=seed, ...)``
       (so its weights equal that call's);
    2. ``E (V, n_emb)``;
    3. ``b_out (V,)``;
    4. ``W_out (n, V)``, untied only;
    5. layers 2..``layers`` (each ``(n, n, depth)``), keys ``"layer<k>.<name>"``.

    Hence a tied model's parameters are exactly the untied model's without ``W_out``,
    and a one-layer model's are those of the stack's first layer and heads.

    Parameters
    ----------
    vocab, n_emb, n, depth : int
        Vocabulary size V, embedding width, units per layer, recurrence depth L.
    tied : bool
        Weight tying: ``logits = y @ Eᵀ + b_out``; needs ``n_emb == n``.
    cell : "rhn", "dt_rnn" or "dts_rnn" (:mod:`rhn_np.cells`)
    layers : int, stacked layers (layer k + 1 reads layer k's outputs)
    coupled, transform_bias : the RHN's (ignored by the other cells)
    init_scale, seed, dtype, backend : as in :func:`rhn_np.rhn.init_params`.

    Returns
    -------
    dict: the layers' keys, ``E`` (V, n_emb), ``b_out`` (V,) and, untied, ``W_out`` (n, V).
    """
    vocab, n_emb, n = (checks.positive_int(k, v) for k, v in (("vocab", vocab), ("n_emb", n_emb), ("n", n)))
    layers = checks.positive_int("layers", layers)
    tied, coupled = checks.flag("tied", tied), checks.flag("coupled", coupled)
    checks.tied_width(tied, n_emb, n)
    c = cells.get(cell)
    be = _backend.get(backend)
    rng = checks.seed("seed", seed)
    opts = dict(coupled=coupled, transform_bias=transform_bias, init_scale=init_scale, seed=rng, dtype=dtype, backend=be)
    params = c.init_params(n_emb, n, depth, **opts)
    params["E"] = _uniform(rng, be, (vocab, n_emb), init_scale, dtype)
    params["b_out"] = _uniform(rng, be, (vocab,), init_scale, dtype)
    if not tied:
        params["W_out"] = _uniform(rng, be, (n, vocab), init_scale, dtype)
    for k in range(2, layers + 1):
        _add_layer(params, k, c.init_params(n, n, depth, **opts))
    return params


def init_dense_params(
    n_in,
    n,
    depth,
    *,
    n_out=None,
    cell="rhn",
    layers=1,
    coupled=True,
    transform_bias=-2.0,
    init_scale=0.04,
    seed=0,
    dtype="float32",
    backend="numpy",
):
    """Initial parameters of the dense-input model (JSB piano rolls, ``n_in = n_out = 88``).

    The inputs go straight into layer 1 (its input weights are the input projection).
    Draw order from ``numpy.random.default_rng(seed)``: layer 1 as
    ``<cell>.init_params(n_in, n, depth, seed=seed, ...)``, then ``b_out (n_out,)``, then
    ``W_out (n, n_out)``, then layers 2..``layers``; all U(-init_scale, init_scale)
    except an RHN's ``b_T``.

    Returns
    -------
    dict: the layers' keys, ``W_out`` (n, n_out) and ``b_out`` (n_out,); ``n_out``
    defaults to ``n_in`` (next-step prediction of the same roll).
    """
    n_in = checks.positive_int("n_in", n_in)
    n_out = n_in if n_out is None else checks.positive_int("n_out", n_out)
    n = checks.positive_int("n", n)
    layers = checks.positive_int("layers", layers)
    coupled = checks.flag("coupled", coupled)
    c = cells.get(cell)
    be = _backend.get(backend)
    rng = checks.seed("seed", seed)
    opts = dict(coupled=coupled, transform_bias=transform_bias, init_scale=init_scale, seed=rng, dtype=dtype, backend=be)
    params = c.init_params(n_in, n, depth, **opts)
    params["b_out"] = _uniform(rng, be, (n_out,), init_scale, dtype)
    params["W_out"] = _uniform(rng, be, (n, n_out), init_scale, dtype)
    for k in range(2, layers + 1):
        _add_layer(params, k, c.init_params(n, n, depth, **opts))
    return params


def param_shapes(cell, n_in, n, depth, n_out, *, layers=1, coupled=True, vocab=None, tied=False):
    """Shape of every parameter of a model, without building it (``vocab``: a word model
    with an embedding ``E (vocab, n_in)``; ``n_out`` is then ``vocab``)."""
    layers, tied = checks.positive_int("layers", layers), checks.flag("tied", tied)
    vocab = None if vocab is None else checks.positive_int("vocab", vocab)
    c = cells.get(cell)
    shapes = dict(c.param_shapes(n_in, n, depth, coupled=coupled))
    if vocab is not None:
        shapes["E"] = (vocab, n_in)
    shapes["b_out"] = (n_out,)
    if not tied:
        shapes["W_out"] = (n, n_out)
    for k in range(2, layers + 1):
        shapes.update({layer_key(k, name): s for name, s in c.param_shapes(n, n, depth, coupled=coupled).items()})
    return shapes


def _stack(params):
    """The model's layers: ``[(cell module, layer params, (n_in, n, depth, dtype)), ...]``, checked."""
    out = []
    for k in range(1, n_layers(params) + 1):
        lp = layer_params(params, k)
        cell = cells.of(lp)
        out.append((cell, lp, cell.dims(lp)))
    n = out[0][2][1]
    for k, (_, _, d) in enumerate(out[1:], 2):
        checks.stacked_layer(k, d[0], d[1], n)
    return out


def cell_of(params):
    """The cell module of a model's layers (:func:`rhn_np.cells.of` of layer 1)."""
    return cells.of(layer_params(params, 1))


def _layer_states(s, K):
    """A model's carried state -> one (B, n) state per layer."""
    return [s] if K == 1 else [s[k, ...] for k in range(K)]


def _model_masks(masks, K):
    """The LM's mask dict -> one ``{"x", "s"}`` dict (or None) per layer."""
    out = []
    for k in range(1, K + 1):
        m = {"x": (masks or {}).get(layer_key(k, "i")), "s": (masks or {}).get(layer_key(k, "h"))}
        out.append({key: v for key, v in m.items() if v is not None} or None)
    return out


def _check_masks(stack, T, B, masks, word):
    dtype, n_in, n = stack[0][2][3], stack[0][2][0], stack[0][2][1]
    shapes = {"i": ((B, n_in),), "h": ((B, n),), "o": ((B, n),)}
    if word:
        shapes["x"] = ((T, B, 1), (T, B))
    for k in range(2, len(stack) + 1):
        shapes.update({layer_key(k, "i"): ((B, n),), layer_key(k, "h"): ((B, n),)})
    checks.lm_masks(masks, tuple(shapes), shapes, dtype)


def layers_forward(params, X, s0, masks=None, *, impl="auto", layer=None):
    """The stacked layers over one window: layer k + 1 reads layer k's outputs.

    X (T, B, n_in) the first layer's inputs; s0 (B, n), or (K, B, n) for K layers;
    ``masks`` the LM's (keys "i", "h", "layer<k>.i", "layer<k>.h" used here).
    ``layer``: optional :class:`rhn_np.graphs.CapturedLayer`, or one per layer (None
    entries run the cell's own forward). Returns the last layer's outputs ys (T, B, n),
    the last state of every layer (the form of ``s0``) and the caches.
    """
    return _run_layers(_stack(params), X, s0, masks, impl, layer)


def _run_layers(stack, X, s0, masks, impl, layer):
    """:func:`layers_forward` on the model's layers as :func:`_stack` gave them (checked once)."""
    K = len(stack)
    captured = layer if isinstance(layer, (list, tuple)) else [layer] + [None] * (K - 1)
    states, caches, inputs = [], [], X
    xp = _backend.namespace(X, s0)
    for (cell, lp, _), s_k, m_k, cap in zip(stack, _layer_states(s0, K), _model_masks(masks, K), captured):
        if cap is None:
            ys, cache = cell.forward(lp, inputs, s_k, m_k, impl=impl)
        else:
            ys, cache = cap.forward(lp, inputs, s_k, m_k)
        states.append(ys[-1, ...])
        caches.append((cell, cap, cache))
        inputs = ys
    s_last = states[0] if K == 1 else xp.stack(states)
    return inputs, s_last, caches


def layer_cache(cache, k: int = 1):
    """Layer ``k``'s own cache inside a cache of :func:`lm_forward` / :func:`dense_forward`
    (the cell's, e.g. :func:`rhn_np.rhn.forward`'s: ``layer_cache(cache)["t"]`` holds the
    transform-gate values of layer 1)."""
    return cache["layers"][k - 1][2]


def layers_backward(params, caches, dys, ds_last=None):
    """Backward of :func:`layers_forward`: ``(grads of every layer's keys, dX, ds0)``."""
    K = len(caches)
    ds_lasts = [None] * K if ds_last is None else _layer_states(ds_last, K)
    grads, ds0s = {}, [None] * K
    for k in reversed(range(K)):
        cell, cap, cache = caches[k]
        lp = layer_params(params, k + 1)
        g, dys, ds0s[k] = (cap or cell).backward(lp, cache, dys, ds_lasts[k])
        _add_layer(grads, k + 1, g)
    xp = _backend.namespace(dys)
    return grads, dys, (ds0s[0] if K == 1 else xp.stack(ds0s))


# ----------------------------------------------------------------------------
# Variational dropout masks (drawn on the host, once per window)
# ----------------------------------------------------------------------------
def _bernoulli(rng, shape, keep):
    """Inverted dropout values on the host: 1/keep with probability keep, else 0."""
    return (rng.random(shape) < keep).astype(np.float64) / keep


def _word_type_mask(rng, ids_host, keep):
    """(T, B, 1) mask where every occurrence of a token within one row shares a value.

    One uniform per position is drawn, ``(T, B)``; each position then takes the value
    of the first occurrence of its token in its row (the authors' ``get_noise``).
    """
    T, B = ids_host.shape
    fresh = _bernoulli(rng, (T, B), keep)  # (T, B)
    mask = np.empty((T, B))
    for b in range(B):
        _, first, inverse = np.unique(ids_host[:, b], return_index=True, return_inverse=True)
        mask[:, b] = fresh[first[inverse.reshape(-1)], b]
    return mask[:, :, None]  # (T, B, 1)


def draw_masks(rng, ids, *, vocab, n_emb, n, keep_x=1.0, keep_i=1.0, keep_h=1.0, keep_o=1.0, layers=1,
               dtype="float32", backend="numpy"):
    """The four variational-dropout masks of the word model for one window.

    Drawn on the host with ``rng`` (a seed or a ``numpy.random.Generator``, advanced in
    place) in the order x, i, h, o, then ``i``, ``h`` of layers 2..``layers``; a mask
    whose keep is 1 is ``None`` and draws nothing. Values are ``Bernoulli(keep) / keep``
    (inverted dropout: the expectation of every masked quantity is unchanged).

    Parameters
    ----------
    rng : int or numpy.random.Generator
    ids : (T, B) integer token ids of the window (any backend; copied to the host
        when they live on a device, for the word-type sharing: pass the host copy
        the batcher already has to save that transfer)
    vocab, n_emb, n : int
    keep_x, keep_i, keep_h, keep_o : float in (0, 1]
        Keep probabilities (``1 - drop`` of the authors' configs).
    layers : stacked layers: each has its own input and state masks
    dtype, backend : of the returned masks (the parameters' ones)

    Returns
    -------
    dict with
        ``"x"`` (T, B, 1): word-type mask on the embeddings; all occurrences of a
        token within one row of the window share one value, rows are independent;
        ``"i"`` (B, n_emb): input mask of layer 1 (-> its ``masks["x"]``);
        ``"h"`` (B, n): state mask of every micro-layer of layer 1 (-> ``masks["s"]``);
        ``"o"`` (B, n): output mask before the softmax;
        ``"layer<k>.i"``, ``"layer<k>.h"`` (B, n): the same for layer k >= 2.
    """
    keep_x, keep_i, keep_h, keep_o = (checks.keep(k, v) for k, v in
                                      (("keep_x", keep_x), ("keep_i", keep_i), ("keep_h", keep_h), ("keep_o", keep_o)))
    vocab = checks.positive_int("vocab", vocab)
    dtype = _mask_dtype(dtype, keep_x, keep_i, keep_h, keep_o)
    checks.plain("ids", ids)
    ids_host = np.asarray(_backend.to_host(ids))
    checks.host_ids(ids_host, vocab)
    rng = checks.seed("rng", rng)
    be = _backend.get(backend)
    B = ids_host.shape[1]
    masks = {"x": None if keep_x == 1.0 else _word_type_mask(rng, ids_host, keep_x)}
    masks.update(_dense_masks(rng, B, checks.positive_int("n_emb", n_emb), n, keep_i, keep_h, keep_o, layers))
    return {k: None if m is None else be.to_device(m, dtype=dtype) for k, m in masks.items()}


def _mask_dtype(dtype, *keeps):
    """The masks' dtype, "float32" or "float64", checked to hold every mask value 1/keep."""
    dtype = _backend.float_dtype_name(dtype)
    for name, keep in zip(("keep_x", "keep_i", "keep_h", "keep_o")[-len(keeps):], keeps):
        checks.representable(f"1/{name}", 1.0 / keep, dtype)
    return dtype


def _dense_masks(rng, B, n_in, n, keep_i, keep_h, keep_o, layers):
    n_in = checks.positive_int("n_in", n_in)
    n = checks.positive_int("n", n)
    layers = checks.positive_int("layers", layers)
    masks = {
        "i": None if keep_i == 1.0 else _bernoulli(rng, (B, n_in), keep_i),  # (B, n_in)
        "h": None if keep_h == 1.0 else _bernoulli(rng, (B, n), keep_h),  # (B, n)
        "o": None if keep_o == 1.0 else _bernoulli(rng, (B, n), keep_o),  # (B, n)
    }
    for k in range(2, layers + 1):  # after the first layer's: a one-layer run draws as before
        masks[layer_key(k, "i")] = None if keep_i == 1.0 else _bernoulli(rng, (B, n), keep_i)
        masks[layer_key(k, "h")] = None if keep_h == 1.0 else _bernoulli(rng, (B, n), keep_h)
    return masks


def draw_dense_masks(rng, batch, *, n_in, n, keep_i=1.0, keep_h=1.0, keep_o=1.0, layers=1, dtype="float32",
                     backend="numpy"):
    """Masks of the dense-input model (piano rolls): like :func:`draw_masks` without "x".

    Draw order i, h, o, then layers 2..``layers``; returns ``{"i": (B, n_in), "h": (B, n),
    "o": (B, n), ...}`` with ``None`` where keep is 1.
    """
    keep_i, keep_h, keep_o = (checks.keep(k, v) for k, v in (("keep_i", keep_i), ("keep_h", keep_h), ("keep_o", keep_o)))
    batch = checks.positive_int("batch", batch)
    dtype = _mask_dtype(dtype, keep_i, keep_h, keep_o)
    rng = checks.seed("rng", rng)
    be = _backend.get(backend)
    masks = _dense_masks(rng, batch, n_in, n, keep_i, keep_h, keep_o, layers)
    return {k: None if m is None else be.to_device(m, dtype=dtype) for k, m in masks.items()}


# ----------------------------------------------------------------------------
# Embedding
# ----------------------------------------------------------------------------
def _word_mask_3d(xp, word_mask):
    if word_mask is not None and len(word_mask.shape) == 2:
        return word_mask[:, :, None]  # (T, B) -> (T, B, 1)
    return word_mask


def embedding_forward(E, ids, word_mask=None):
    """Look up the embedding: ``x[t, b] = E[ids[t, b]] ⊙ m_x[t, b]``.

    Parameters
    ----------
    E : (V, n_emb) embedding matrix
    ids : (T, B) integer token ids
    word_mask : optional (T, B, 1) or (T, B) word-type dropout mask (:func:`draw_masks`)

    Returns
    -------
    X : (T, B, n_emb)
    """
    checks.plain_all("E word_mask", E, word_mask)
    checks.mask_values("word_mask", word_mask)
    xp = _backend.namespace(E, ids, word_mask)
    checks.ids(xp, "ids", ids, E.shape[0])
    T, B = ids.shape
    X = xp.reshape(xp.take(E, xp.reshape(ids, (T * B,)), axis=0), (T, B, E.shape[1]))  # (T, B, n_emb)
    word_mask = _word_mask_3d(xp, word_mask)
    return X if word_mask is None else X * word_mask


def embedding_backward(dX, ids, vocab_shape, word_mask=None):
    """Gradient of :func:`embedding_forward` with respect to ``E``.

    ``dE[v] = Σ_{(t, b): ids[t, b] = v} dX[t, b] ⊙ m_x[t, b]``: repeated ids
    accumulate (:func:`rhn_np.backend.scatter_add_rows`).

    Parameters
    ----------
    dX : (T, B, n_emb) gradient with respect to the looked-up (masked) embeddings
    ids : (T, B) integer token ids
    vocab_shape : (V, n_emb), the shape of ``E``
    word_mask : the mask given to the forward, or None

    Returns
    -------
    dE : (V, n_emb)
    """
    checks.plain_all("dX word_mask", dX, word_mask)
    xp = _backend.namespace(dX, ids, word_mask)
    checks.vocab_shape(vocab_shape, dX, ids)
    T, B, _ = dX.shape
    V, n_emb = tuple(vocab_shape)
    checks.ids(xp, "ids", ids, V)  # a negative id would silently send its gradient to row V - k
    word_mask = _word_mask_3d(xp, word_mask)
    dXm = dX if word_mask is None else dX * word_mask  # (T, B, n_emb)
    dE = xp.zeros((V, n_emb), dtype=dX.dtype, device=_backend.device_of(dX))
    return _backend.scatter_add_rows(dE, xp.reshape(ids, (T * B,)), xp.reshape(dXm, (T * B, n_emb)))


# ----------------------------------------------------------------------------
# Output losses
# ----------------------------------------------------------------------------
def log_softmax(logits):
    """``log softmax(z)_v = z_v - m - log Σ_u exp(z_u - m)`` with ``m = max_u z_u``
    (stable for any finite logits). logits (..., V) -> (..., V)."""
    checks.plain("logits", logits)
    xp = _backend.namespace(logits)
    z = logits - xp.max(logits, axis=-1, keepdims=True)
    return z - xp.log(xp.sum(xp.exp(z), axis=-1, keepdims=True))


def _pick(xp, a, targets):
    """``a[t, b, targets[t, b]]`` for a (T, B, V): (T, B), one flat ``take``."""
    T, B, V = a.shape
    dev = _backend.device_of(a)
    # int64 whatever the ids' dtype: (T·B - 1)·V + V - 1 overflows uint8/uint16 ids at once
    # and int32 ones past 2**31 (e.g. B 512, T 100, V 50k), which `take` would read silently.
    flat = xp.arange(T * B, dtype=xp.int64, device=dev) * V + xp.astype(xp.reshape(targets, (T * B,)), xp.int64)
    return xp.reshape(xp.take(xp.reshape(a, (T * B * V,)), flat), (T, B))


def softmax_nll(logits, targets):
    """Per-token negative log-likelihood ``-log softmax(logits[t, b])[targets[t, b]]``.

    logits (T, B, V), targets (T, B) integer -> (T, B). For evaluation: perplexity
    is ``exp(mean)`` over all tokens.
    """
    xp = _backend.namespace(logits, targets)
    checks.targets(xp, logits, targets)
    return -_pick(xp, log_softmax(logits), targets)  # (T, B)


def softmax_cross_entropy(logits, targets, weights=None):
    """Softmax cross-entropy of a window, summed over time, averaged over the batch.

    ::

        nll[t, b] = log Σ_v exp(logits[t, b, v]) - logits[t, b, targets[t, b]]
        loss      = (1/B) Σ_t Σ_b w[t, b] · nll[t, b]
        dlogits   = (w[t, b] / B) · (softmax(logits[t, b]) - onehot(targets[t, b]))

    This is the authors' scale (``reduce_sum(loss) / batch_size``), for which their
    lr 0.2 is tuned; the per-token mean NLL for reporting is ``loss · B / Σ w``
    (``loss / T`` without weights), see :func:`lm_loss_and_grads`' ``stats``.

    Parameters
    ----------
    logits : (T, B, V) float
    targets : (T, B) integer class ids
    weights : optional (T, B) per-token weights (e.g. 0 for padding), default ones

    Returns
    -------
    loss : 0-d array (on the device of ``logits``; ``float(loss)`` to read it)
    dlogits : (T, B, V) gradient of ``loss`` with respect to ``logits``
    """
    xp = _backend.namespace(logits, targets, weights)
    checks.targets(xp, logits, targets)
    T, B, V = logits.shape
    checks.weights(weights, T, B)
    dev = _backend.device_of(logits)
    logp = log_softmax(logits)  # (T, B, V)
    nll = -_pick(xp, logp, targets)  # (T, B)
    w = 1.0 / B if weights is None else xp.astype(weights, logits.dtype) / B  # (T, B) or scalar
    loss = xp.sum(nll * w)
    onehot = xp.astype(targets, xp.int64)[:, :, None] == xp.arange(V, dtype=xp.int64, device=dev)  # (T, B, V) bool
    dlogits = xp.exp(logp) - xp.astype(onehot, logits.dtype)  # softmax - onehot
    dlogits = dlogits * (w if weights is None else w[:, :, None])
    return loss, dlogits


def sigmoid_bernoulli_nll(logits, targets, step_mask=None):
    """Bernoulli NLL of independent binary outputs (piano-roll keys), stable.

    With ``z`` the logits and ``y`` in {0, 1}::

        nll[t, b, k] = -y log σ(z) - (1 - y) log(1 - σ(z))
                     = max(z, 0) - y·z + log(1 + exp(-|z|))      (softplus form, any z)
        loss         = (1/B) Σ_t Σ_b mask[t, b] Σ_k nll[t, b, k]
        dlogits      = (mask[t, b] / B) · (σ(z) - y)

    Summed over keys and time, averaged over the batch (B counts every sequence of
    the batch, padded or not), the same scale as :func:`softmax_cross_entropy`. The
    usual JSB figure, NLL per time step, is ``loss · B / Σ mask``.

    Parameters
    ----------
    logits : (T, B, K) float
    targets : (T, B, K) in {0, 1} (float, integer or bool)
    step_mask : optional (T, B), 1 for real steps and 0 for padding

    Returns
    -------
    loss : 0-d array
    dlogits : (T, B, K)
    """
    xp = _backend.namespace(logits, targets, step_mask)
    checks.binary_targets(logits, targets, step_mask)
    T, B, _ = logits.shape
    z, y = logits, xp.astype(targets, logits.dtype)
    relu = 0.5 * (z + xp.abs(z))  # max(z, 0), exactly
    nll = relu - y * z + xp.log1p(xp.exp(-xp.abs(z)))  # (T, B, K)
    w = 1.0 / B if step_mask is None else (xp.astype(step_mask, logits.dtype) / B)[:, :, None]
    loss = xp.sum(nll * w)
    dlogits = (rhn.sigmoid(z, xp) - y) * w  # (T, B, K)
    return loss, dlogits


# ----------------------------------------------------------------------------
# Output layer (shared by the word and the dense model)
# ----------------------------------------------------------------------------
def output_forward(ys, W_out, b_out, m_o=None):
    """``logits = (y ⊙ m_o) @ W_out + b_out``, all T·B rows in one product.

    ys (T, B, n), W_out (n, V) (tied: ``Eᵀ``), b_out (V,), m_o (B, n) or None.
    Returns logits (T, B, V) and the masked outputs ``y_o`` (T, B, n) for the backward.
    """
    checks.plain_all("ys W_out b_out m_o", ys, W_out, b_out, m_o)
    xp = _backend.namespace(ys, W_out, b_out, m_o)
    T, B, n = ys.shape
    y_o = ys if m_o is None else ys * m_o  # (T, B, n); m_o is shared by all T steps
    logits = xp.reshape(xp.reshape(y_o, (T * B, n)) @ W_out + b_out, (T, B, W_out.shape[1]))  # (T, B, V)
    return logits, y_o


def output_backward(dlogits, y_o, W_out, m_o=None):
    """Backward of :func:`output_forward`.

    Returns ``dys`` (T, B, n), ``dW_out`` (n, V) = Σ y_oᵀ dlogits, ``db_out`` (V,).
    """
    checks.plain_all("dlogits y_o W_out m_o", dlogits, y_o, W_out, m_o)
    xp = _backend.namespace(dlogits, y_o, W_out, m_o)
    T, B, V = dlogits.shape
    n = y_o.shape[2]
    dl = xp.reshape(dlogits, (T * B, V))  # (T·B, V)
    dW_out = xp.reshape(y_o, (T * B, n)).T @ dl  # (n, V)
    db_out = xp.sum(dl, axis=0)  # (V,)
    dys = xp.reshape(dl @ W_out.T, (T, B, n))  # (T, B, n)
    return (dys if m_o is None else dys * m_o), dW_out, db_out


# ----------------------------------------------------------------------------
# The word-level model
# ----------------------------------------------------------------------------
def _softmax_weights(params):
    """W_out (n, V), or Eᵀ when the model is tied (no ``W_out`` key)."""
    return params["E"].T if "W_out" not in params else params["W_out"]


def _checked_model(params, s0, a, name, word):
    """The model's layers, with its heads, state and input layout checked."""
    checks.model_kind(params, word)
    stack = _stack(params)
    n_in, n, _, dtype = stack[0][2]
    if word:
        checks.embedding(params["E"], n_in, dtype, "W_out" not in params, n)
    checks.head(params, n, dtype)
    checks.time_major(name, a, s0)
    return stack


def lm_forward(params, ids, s0, masks=None, *, impl="auto", layer=None):
    """Forward of the word model over one window (see the module docstring).

    Parameters
    ----------
    params : dict from :func:`init_lm_params` (tied when it has no ``W_out``)
    ids : (T, B) integer input tokens
    s0 : (B, n) state carried from the previous window (zeros at the start);
        (K, B, n) for K stacked layers
    masks : optional dict from :func:`draw_masks` (keys "x", "i", "h", "o", ...)
    impl : passed to the cell's ``forward`` (:func:`rhn_np.rhn.forward`)
    layer : optional :class:`rhn_np.graphs.CapturedLayer` (or one per layer, None for
        the others) to run an RHN layer's forward (and later :func:`lm_backward`'s BPTT)
        from CUDA graphs instead of :func:`rhn_np.rhn.forward` / :func:`rhn_np.rhn.backward`;
        the same maths, and ``impl`` does not apply to it. Its buffers are overwritten
        by its next replay: so are ``s_last`` (a view of its ys), the layer's gradients
        and ``ds0`` of :func:`lm_backward`; copy what you keep

    Returns
    -------
    logits : (T, B, V)
    s_last : the unmasked last state (the form of ``s0``), to carry into the next window
    cache : for :func:`lm_backward`
    """
    stack = _checked_model(params, s0, ids, "ids", word=True)
    if hasattr(ids, "shape") and len(ids.shape) == 2:
        _check_masks(stack, *ids.shape, masks, word=True)
    masks = masks or {}
    m_x, m_o = masks.get("x"), masks.get("o")
    X = embedding_forward(params["E"], ids, m_x)  # (T, B, n_emb)
    ys, s_last, layer_caches = _run_layers(stack, X, s0, masks, impl, layer)  # (T, B, n)
    logits, y_o = output_forward(ys, _softmax_weights(params), params["b_out"], m_o)  # (T, B, V)
    cache = {"layers": layer_caches, "ids": ids, "m_x": m_x, "m_o": m_o, "y_o": y_o}
    return logits, s_last, cache


def lm_backward(params, cache, dlogits, ds_last=None):
    """Backward of :func:`lm_forward`.

    Parameters
    ----------
    dlogits : (T, B, V) gradient of the loss with respect to the logits
    ds_last : optional gradient arriving at ``s_last`` from a later window (its form)

    Returns
    -------
    grads : dict with the keys of ``params``; tied, ``grads["E"]`` sums the
        embedding and the softmax uses of ``E``
    ds0 : gradient with respect to ``s0`` (its form)
    """
    checks.plain("dlogits", dlogits)
    checks.finite(None, "dlogits", dlogits)  # the layers' backward would call it dys
    return _lm_backward(params, cache, dlogits, ds_last)


def _lm_backward(params, cache, dlogits, ds_last):
    """:func:`lm_backward` of checked (or computed, in :func:`lm_loss_and_grads`) ``dlogits``."""
    E = params["E"]
    dys, dW_out, db_out = output_backward(dlogits, cache["y_o"], _softmax_weights(params), cache["m_o"])
    grads, dX, ds0 = layers_backward(params, cache["layers"], dys, ds_last)  # BPTT through the layers
    dE = embedding_backward(dX, cache["ids"], E.shape, cache["m_x"])  # (V, n_emb)
    if "W_out" in params:
        grads["W_out"] = dW_out
    else:
        dE = dE + dW_out.T  # tied: E is also the softmax weights Eᵀ
    grads["E"] = dE
    grads["b_out"] = db_out
    return grads, ds0


def lm_loss_and_grads(params, ids, targets, s0, masks=None, *, weights=None, ds_last=None, impl="auto", layer=None):
    """Loss and every gradient of the word model for one training window.

    ``loss = (1/B) Σ_t Σ_b w[t, b] · (-log p(targets[t, b] | ids[≤t, b]))`` (summed over
    time, averaged over the batch; :func:`softmax_cross_entropy`), through the cells'
    ``forward`` / ``backward``. The L2 term and gradient clipping are in :mod:`rhn_np.optim`.

    Parameters
    ----------
    params : dict from :func:`init_lm_params`
    ids, targets : (T, B) integer input tokens and next tokens
    s0 : (B, n) initial state ((K, B, n) for K layers)
    masks : optional dict from :func:`draw_masks`
    weights : optional (T, B) per-token weights
    ds_last : optional gradient arriving at the final state from a later window
    impl, layer : as for :func:`lm_forward` (with ``layer``, copy ``s_last`` and the
        layer's gradients before the next window, as the trainer does)

    Returns
    -------
    loss : 0-d array
    grads : dict with the keys and shapes of ``params``
    s_last : last state (carry it into the next window)
    stats : dict of 0-d arrays / numbers: ``"mean_nll"`` per-token mean NLL
        (``exp`` of it is the perplexity), ``"nll_sum"`` Σ w·nll, ``"n_tokens"`` Σ w,
        ``"ds0"`` gradient with respect to ``s0``
    """
    logits, s_last, cache = lm_forward(params, ids, s0, masks, impl=impl, layer=layer)
    loss, dlogits = softmax_cross_entropy(logits, targets, weights)
    grads, ds0 = _lm_backward(params, cache, dlogits, ds_last)
    T, B = ids.shape
    xp = _backend.namespace(loss)
    n_tokens = T * B if weights is None else xp.sum(xp.astype(weights, loss.dtype))
    stats = {"nll_sum": loss * B, "n_tokens": n_tokens, "mean_nll": loss * B / n_tokens, "ds0": ds0}
    return loss, grads, s_last, stats


def lm_logits(params, ids, s0, *, impl="auto"):
    """Evaluation forward (dropout off, no gradients): ``(logits (T, B, V), s_last)``."""
    logits, s_last, _ = lm_forward(params, ids, s0, None, impl=impl)
    return logits, s_last


def lm_nll(params, ids, targets, s0, *, impl="auto"):
    """Evaluation: per-token NLL (T, B) and the last state.

    Perplexity of a split = ``exp(Σ nll / number of tokens)`` over all its windows,
    carrying ``s_last`` from window to window.
    """
    logits, s_last = lm_logits(params, ids, s0, impl=impl)
    return softmax_nll(logits, targets), s_last


def state_shape(params, batch):
    """Shape of a model's carried state for ``batch`` rows: (B, n), or (K, B, n) for K layers."""
    batch = checks.positive_int("batch", batch)
    stack = _stack(params)
    n = stack[0][2][1]
    return (batch, n) if len(stack) == 1 else (len(stack), batch, n)


def zero_state(params, batch):
    """The zero state of a model (the start of every epoch), on the parameters' device."""
    be = _backend.of(params["b_out"])
    return be.xp.zeros(state_shape(params, batch), dtype=params["b_out"].dtype, device=be.device)


# ----------------------------------------------------------------------------
# The dense-input model (piano rolls)
# ----------------------------------------------------------------------------
def dense_forward(params, xs, s0, masks=None, *, impl="auto"):
    """Forward of the dense-input model: ``logits = (layers(xs) ⊙ m_o) @ W_out + b_out``.

    Parameters
    ----------
    params : dict from :func:`init_dense_params`
    xs : (T, B, n_in) inputs (piano-roll frames), fed straight into layer 1
    s0 : (B, n), or (K, B, n) for K layers
    masks : optional dict from :func:`draw_dense_masks` (keys "i", "h", "o", ...)

    Returns
    -------
    logits (T, B, n_out), s_last, cache
    """
    stack = _checked_model(params, s0, xs, "xs", word=False)
    if hasattr(xs, "shape") and len(xs.shape) == 3:
        _check_masks(stack, xs.shape[0], xs.shape[1], masks, word=False)
    ys, s_last, layer_caches = _run_layers(stack, xs, s0, masks, impl, None)  # (T, B, n)
    m_o = (masks or {}).get("o")
    logits, y_o = output_forward(ys, params["W_out"], params["b_out"], m_o)  # (T, B, n_out)
    return logits, s_last, {"layers": layer_caches, "m_o": m_o, "y_o": y_o}


def dense_backward(params, cache, dlogits, ds_last=None):
    """Backward of :func:`dense_forward`: ``(grads, dxs (T, B, n_in), ds0)``."""
    checks.plain("dlogits", dlogits)
    checks.finite(None, "dlogits", dlogits)  # the layers' backward would call it dys
    return _dense_backward(params, cache, dlogits, ds_last)


def _dense_backward(params, cache, dlogits, ds_last):
    dys, dW_out, db_out = output_backward(dlogits, cache["y_o"], params["W_out"], cache["m_o"])
    grads, dxs, ds0 = layers_backward(params, cache["layers"], dys, ds_last)
    grads["W_out"] = dW_out
    grads["b_out"] = db_out
    return grads, dxs, ds0


def dense_loss_and_grads(params, xs, targets, s0, masks=None, *, step_mask=None, ds_last=None, impl="auto"):
    """Loss and gradients of the dense-input model (next-frame Bernoulli NLL).

    ``loss`` is :func:`sigmoid_bernoulli_nll` of the logits: summed over keys and
    time, averaged over the batch, padded steps excluded by ``step_mask``.

    Returns
    -------
    loss : 0-d array
    grads : dict with the keys of ``params``
    s_last : the last state
    stats : ``"nll_per_step"`` (mean over unmasked steps of the NLL summed over
        keys, the JSB figure), ``"n_steps"``, ``"dxs"`` (T, B, n_in), ``"ds0"``
    """
    logits, s_last, cache = dense_forward(params, xs, s0, masks, impl=impl)
    loss, dlogits = sigmoid_bernoulli_nll(logits, targets, step_mask)
    grads, dxs, ds0 = _dense_backward(params, cache, dlogits, ds_last)
    T, B = xs.shape[0], xs.shape[1]
    xp = _backend.namespace(loss)
    n_steps = T * B if step_mask is None else xp.sum(xp.astype(step_mask, loss.dtype))
    stats = {"nll_per_step": loss * B / n_steps, "n_steps": n_steps, "dxs": dxs, "ds0": ds0}
    return loss, grads, s_last, stats


def dense_logits(params, xs, s0, *, impl="auto"):
    """Evaluation forward (dropout off): ``(logits (T, B, n_out), s_last)``."""
    logits, s_last, _ = dense_forward(params, xs, s0, None, impl=impl)
    return logits, s_last
