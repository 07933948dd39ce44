"""`MultiHeadAttention` as its int8 file computes it.

Keras's layer runs `ops.dot_product_attention` (one fused kernel) where it
can; the int8 file cannot: LiteRT runs the projections, the scaled dot
product, the softmax and the weighted sum as ops of their own, and each
tensor between them needs a range. Here the layer is computed in that
form, with Keras's own sub-layers' variables and equations:

    query, key, value = EinsumDense projections   (kernels int8 per tensor)
    query = query * 1/sqrt(key_dim)                MUL
    scores = einsum(key, query)                    BATCH_MATMUL
    probs = softmax(scores)                        SOFTMAX (fixed range)
    combined = einsum(probs, value)                BATCH_MATMUL
    output = EinsumDense projection of combined

with a range after each step (`STEPS`); the output projection's result
is the layer's output. The mask is computed by Keras
(`_compute_attention_mask`) and applied here with `where`
(`_masked_softmax`). Variants that add ops
(a gated output, sliding windows) are refused before training
(`unsupported_reason`).
"""

import inspect

import keras
from keras import ops

from keras_slim.quantization import _quantizers

STEPS = ("query", "key", "value", "query_scaled", "scores", "combined")


def unsupported_reason(layer):
    """Why `layer`'s computation is not modelled here, or `None`."""
    if getattr(layer, "_use_gate", False):
        return "uses `use_gate=True`, which keras_slim does not model"
    if getattr(layer, "_sliding_window", None) is not None:
        return "uses `sliding_window`, which keras_slim does not model"
    if not hasattr(layer, "_dot_product_equation"):
        return "has not been built (its equations are not known yet)"
    return None


_MASKS = (
    "query_mask",
    "value_mask",
    "key_mask",
    "attention_mask",
    "use_causal_mask",
)


def bind(layer, args, kwargs):
    """`(inputs, masks, training)` of a call of `layer`, `inputs` being
    `(query, value, key)`; `None` for a call that returns the attention
    scores too (run as it is: its file keeps them float, and export names
    the layer)."""
    arguments = (
        inspect.signature(type(layer).call)
        .bind(layer, *args, **kwargs)
        .arguments
    )
    if arguments.get("return_attention_scores"):
        return None
    query, value = arguments["query"], arguments["value"]
    key = arguments.get("key")
    masks = {k: arguments[k] for k in _MASKS if arguments.get(k) is not None}
    if "query_mask" not in masks:  # Keras's mask on the query tensor
        query_mask = getattr(query, "_keras_mask", None)
        if query_mask is not None:
            masks["query_mask"] = query_mask
    inputs = (query, value, value if key is None else key)
    return inputs, masks, arguments.get("training")


def _project(dense, x):
    """An `EinsumDense` with its kernel fake-quantized per tensor."""
    kernel = _quantizers.quantize_kernel(dense.kernel, "dense")
    y = ops.einsum(dense.equation, x, ops.cast(kernel, x.dtype))
    if dense.bias is not None:
        y = y + ops.cast(dense.bias, y.dtype)
    return y


def _masked_softmax(layer, scores, mask):
    """`layer`'s softmax of `scores` under `mask`, in the form that
    converts to int8 ops on every Keras we support.

    Keras >= 3.13 masks with `where` (int8 SELECT_V2 in the file); Keras
    3.12 adds `(1 - mask) * -1e9` and multiplies by the mask, float
    CAST/SUB/MUL/ADD ops the int8 file cannot hold. The same values for a
    boolean mask (Keras's own masks are boolean); a float mask is read as
    `mask > 0.5`, as Keras >= 3.13 reads it (3.12 would weight by it). The
    mask is expanded as `MultiHeadAttention._masked_softmax` does.
    """
    if mask is None:
        return layer._softmax(scores)
    axis = -len(layer._attention_axes) * 2 - 1
    for _ in range(len(scores.shape) - len(mask.shape)):
        mask = ops.expand_dims(mask, axis=axis)
    if keras.backend.standardize_dtype(mask.dtype) != "bool":
        mask = ops.greater(mask, ops.cast(0.5, mask.dtype))
    negative = (
        -3e4
        if keras.backend.standardize_dtype(scores.dtype) == "float16"
        else -1e9
    )
    probs = layer._softmax(ops.where(mask, scores, negative))
    return ops.where(mask, probs, 0.0)


def forward(layer, inputs, step, training=False, **masks):
    """The output of `layer` on `inputs` = `(query, value, key)`,
    with `step(name, t)` fake-quantizing each tensor of `STEPS`.

    `masks`: the layer's mask arguments (`attention_mask`,
    `use_causal_mask`, `query_mask`, `value_mask`, `key_mask`).
    """
    query, value, key = inputs
    mask = layer._compute_attention_mask(query, value, **masks)
    q = step("query", _project(layer.query_dense, query))
    k = step("key", _project(layer.key_dense, key))
    v = step("value", _project(layer.value_dense, value))
    scale = ops.cast(layer._inverse_sqrt_key_dim, q.dtype)
    q = step("query_scaled", q * scale)
    scores = step("scores", ops.einsum(layer._dot_product_equation, k, q))
    probs = _masked_softmax(layer, scores, mask)
    probs = _quantizers.fake_quant_fixed(
        probs, _quantizers.FIXED_RANGES["softmax"]
    )
    if training and layer._dropout > 0:
        probs = layer._dropout_layer(probs, training=True)
    combined = ops.einsum(layer._combine_equation, probs, v)
    combined = step("combined", combined)
    return _project(layer.output_dense, combined)
