"""`LayerNormalization` (and `GroupNormalization`, the same ops on each
group, `RMSNormalization` and `UnitNormalization`) as its int8 file
computes it.

LiteRT has no LayerNormalization op: the converter keeps the ops the
layer is traced as, and a quantization-aware model must give every
tensor between them a range, or the converter leaves it float. Measured
(TensorFlow 2.21, `benchmarks/probes/layernorm_qat.py`): written as

    mean = MEAN(x); centered = SUB(x, mean); square = MUL(centered, centered)
    variance = MEAN(square); shifted = ADD(variance, epsilon)
    inv = RSQRT(shifted); normalized = MUL(centered, inv)
    scaled = MUL(normalized, gamma); output = ADD(scaled, beta)

with a fake quantization after each op, a Dense-LayerNormalization-Dense
model converts to a file with only int8 tensors (MEAN, SUB, MUL, ADD and
RSQRT all have int8 kernels). Centring before the division keeps the
ranges small when `x` has a large mean (see `keras_slim._export_rewrites`,
which computes the same form for post-training int8). `gamma` and `beta`
are stored as one int8 range each, as the converter stores the constant
operand of a MUL or ADD (`_quantizers.quantize_constant`).
"""

import keras
from keras import ops

from keras_slim import _export_rewrites
from keras_slim.quantization import _quantizers


def rms_forward(layer, x, step):
    """`RMSNormalization` on `x` as its int8 file computes it: `x * x`
    (MUL: `ops.square` would be a float-only SQUARE op), MEAN, ADD of
    epsilon, RSQRT, MUL by it, MUL by the scale stored as one int8
    range; `step(name, t)` fake-quantizes each inner tensor
    (`_rules.RMSNORM_STEPS`), the output is left to the layer's range."""
    dtype = layer.compute_dtype
    epsilon = layer.epsilon
    if epsilon is None:  # as `ops.rms_normalization`
        epsilon = keras.backend.epsilon()
    x = _export_rewrites.float32_or_wider(x)
    square = step("square", x * x)
    variance = step(
        "variance", ops.mean(square, axis=layer.axis, keepdims=True)
    )
    shifted = step("shifted_variance", variance + epsilon)
    shifted = ops.maximum(shifted, epsilon)  # as in `forward`
    outputs = step("normalized", x * step("rsqrt", ops.rsqrt(shifted)))
    scale = _quantizers.quantize_constant(layer.scale)
    return ops.cast(outputs * ops.cast(scale, x.dtype), dtype)


def unit_forward(layer, x, step):
    """`UnitNormalization` on `x` as its int8 file computes it: `x * x`,
    SUM, RSQRT (bounded by `1 / 1e-12`, as `ops.normalize`), MUL; `step`
    as in `forward`."""
    dtype = layer.compute_dtype
    x = _export_rewrites.float32_or_wider(x)
    square = step("square", x * x)
    total = step("sum", ops.sum(square, axis=layer.axis, keepdims=True))
    # A sum that rounds to 0 on its grid saturates LiteRT's RSQRT at the
    # top of its range; the clamp keeps the simulation finite there.
    inv = ops.rsqrt(ops.maximum(total, 1e-24))
    return ops.cast(x * step("rsqrt", ops.minimum(inv, 1e12)), dtype)


def forward(layer, x, step):
    """The output of `layer` on `x`, with `step(name, t)` fake-quantizing
    the inner tensor `name` (one of `_rules.inner_names(layer, ...)`); the
    last op's output is left to the layer's output range."""
    x = _export_rewrites.float32_or_wider(x)
    axes, _ = _export_rewrites.normalization_axes(layer, x)
    return _normalize(layer, x, axes, lambda t: t, step)


def group_forward(layer, x, step):
    """`GroupNormalization` on `x` as its int8 file computes it: the
    LayerNormalization ops on `x` reshaped into groups (RESHAPE keeps its
    input's scale), reshaped back, then MUL by gamma and ADD of beta per
    channel; `step` as in `forward`."""
    x = _export_rewrites.float32_or_wider(x)
    grouped, axes, restore = _export_rewrites.group_view(layer, x)
    return _normalize(layer, grouped, axes, restore, step)


def _normalize(layer, x, axes, restore, step):
    mean = step("mean", ops.mean(x, axis=axes, keepdims=True))
    centered = step("centered", x - mean)
    square = step("square", centered * centered)
    variance = step("variance", ops.mean(square, axis=axes, keepdims=True))
    shifted = step("shifted_variance", variance + layer.epsilon)
    # A variance that rounds to 0 on its int8 grid makes LiteRT's RSQRT
    # saturate at the top of its output range; `rsqrt(0)` would be inf
    # (and its gradient NaN): the clamp saturates as the file does.
    shifted = ops.maximum(shifted, layer.epsilon)
    outputs = restore(centered * step("rsqrt", ops.rsqrt(shifted)))
    _, broadcast = _export_rewrites.normalization_axes(layer, outputs)
    if layer.gamma is not None:
        outputs = step("normalized", outputs)
        gamma = _quantizers.quantize_constant(layer.gamma)
        outputs = outputs * broadcast(gamma)
    if layer.beta is not None:
        name = "scaled" if layer.gamma is not None else "normalized"
        outputs = step(name, outputs)
        outputs = outputs + broadcast(_quantizers.quantize_constant(layer.beta))
    return ops.cast(outputs, layer.compute_dtype)
