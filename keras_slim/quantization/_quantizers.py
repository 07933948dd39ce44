"""The int8 simulation itself: kernels and activations, fake-quantized.

- Weights: symmetric, narrow range ([-127, 127], zero point 0, so zeros
  stay exact zeros), per output channel for `Conv1D`/`Conv2D` and
  `DepthwiseConv2D` (the depthwise kernel `(kh, kw, in, multiplier)` is
  quantized per `in * multiplier` output channel), per tensor for `Dense`.
  The range is the current max |w| of each channel, so nothing is learned.
- BatchNorm: the converter folds BN into the convolution before it
  quantizes: `w' = w * gamma / sqrt(var + eps)` per output channel. A
  symmetric per-channel quantizer commutes with a per-channel scale
  (`q(s * w) = s * q(w)`), so fake-quantizing the unfolded kernel is
  exactly what the folded int8 kernel computes.
- Activations: per tensor, asymmetric, moving-average min/max ranges
  initialised from the first batch.
- Biases: the file stores a Conv/Dense bias as int32 at scale `s_x * s_w`
  (input step times kernel step), a folded BatchNorm's bias too, at
  `s_x * s_w * |gamma / sqrt(var + eps)|`: `rounded_bias` and
  `folded_bias_correction` add them so rounded (gradient straight
  through), where the placement knows the input's step.

Everything here is `keras.ops` (and `keras.quantizers`), so it runs on
every Keras backend. Fake quantization rounds as TensorFlow's kernel, and
so the int8 file, does on every backend (`fake_quant`).
"""

import contextlib

import keras
from keras import ops

from keras_slim.quantization import _torch

NUM_BITS = 8
RANGE_MOMENTUM = 0.99
MIN_WEIGHT_RANGE = 1e-8
MIN_ACTIVATION_RANGE = 1e-3
INITIAL_RANGE = 6.0
# The fixed output ranges of the TFLite int8 kernels of bounded activations
# (SOFTMAX and LOGISTIC: scale 1/256, zero point -128; TANH: scale 1/128,
# zero point 0): fake quantization with these ranges is what the file
# computes, and the converter keeps those ops int8.
FIXED_RANGES = {
    "softmax": (0.0, 255.0 / 256.0),
    "sigmoid": (0.0, 255.0 / 256.0),
    "tanh": (-1.0, 127.0 / 128.0),
}


def fake_quant(x, lo, hi, narrow_range=False, axis=None):
    """`keras.quantizers.fake_quant_with_min_max_vars` at 8 bits, rounded as
    TensorFlow rounds on every backend.

    On TensorFlow it is that function (its `FakeQuantWithMinMaxVars` op is
    what the converter reads the int8 ranges from). Keras's `keras.ops`
    version for the other backends rounds differently at exact ties: it
    multiplies by `255 / (hi - lo)` where TensorFlow divides by the scale
    `(hi - lo) / 255`, and rounds the zero point half to even where
    TensorFlow rounds it half away from zero. On the digits, whose pixels
    are multiples of 1/16, the input range [0, 1] puts the 0.5 pixel on a
    tie (127.5): JAX rounded it up and TensorFlow, like the int8 file,
    down, in 852 of 28,800 input values. This is TensorFlow's kernel in
    `keras.ops`, with the same rounding decisions and a straight-through
    gradient inside the nudged range; the range gets no gradient (every
    range here is a moving average or a weight's max |w|).

    Args:
        x: Float tensor.
        lo: Minimum, a scalar or one per channel of `axis`.
        hi: Maximum, same shape as `lo`.
        narrow_range: Whether the integer range is [1, 255] instead of
            [0, 255].
        axis: The channel axis of per-channel `lo` and `hi`: -1 or None.

    Returns:
        `x` fake-quantized, of its dtype.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return keras.quantizers.fake_quant_with_min_max_vars(
            x,
            lo,
            hi,
            num_bits=NUM_BITS,
            narrow_range=narrow_range,
            axis=axis,
        )
    if backend == "torch":
        return _torch.fake_quant(x, lo, hi, narrow_range)
    return _fake_quant_ops(x, lo, hi, narrow_range)


def _fake_quant_ops(x, lo, hi, narrow_range=False, axis=None):
    """`fake_quant` in `keras.ops` (JAX, and the reference the torch path
    is tested against): TensorFlow's kernel, see `fake_quant`. A
    per-channel range broadcasts against `x` (`axis` -1)."""
    dtype = x.dtype
    x = ops.cast(x, "float32")
    lo = ops.stop_gradient(ops.cast(lo, "float32"))
    hi = ops.stop_gradient(ops.cast(hi, "float32"))
    scale, nudged_min, nudged_max = _nudge(lo, hi, narrow_range)
    shifted = ops.clip(ops.stop_gradient(x), nudged_min, nudged_max)
    shifted = shifted - nudged_min
    steps = ops.floor(shifted / scale + 0.5)
    quantized = ops.stop_gradient(steps * scale + nudged_min)
    # The value is `quantized` exactly (`x - x` is 0); the gradient is 1
    # where TensorFlow's is, inside [nudged_min, nudged_max].
    inside = ops.logical_and(
        ops.greater_equal(x, nudged_min), ops.less_equal(x, nudged_max)
    )
    straight = (x - ops.stop_gradient(x)) * ops.cast(inside, "float32")
    return ops.cast(quantized + straight, dtype)


_FILE_TRACING = []  # non-empty while the int8 file's graph is traced


@contextlib.contextmanager
def tracing_the_file():
    """While the converter traces a model: `requantize` leaves its input as
    it is, so the graph has no ops of its own there and the converter
    writes its requantizing QUANTIZE op (what `requantize` imitates)."""
    _FILE_TRACING.append(True)
    try:
        yield
    finally:
        _FILE_TRACING.pop()


def requantize(x, input_step, lo, hi):
    """`x`, on an int8 grid of step `input_step`, moved to the range
    `[lo, hi]` as the int8 file's requantizing QUANTIZE op computes it
    under XNNPACK (LiteRT's default CPU path): `q - zero` times the 8-bit
    multiplier `round(256 * input_step / scale)`, plus 128, shifted right
    by 8. The converter inserts that op where a tensor already on a grid
    meets another range with no op between (a pooled input of a
    concatenation). Rounded as fake quantization rounds, the value differs
    from XNNPACK's by a step on 6-10% of such elements (its multiplier
    has 8 fractional bits). Outside XNNPACK's ratios [2^-8, 2^7] the op
    runs LiteRT's own kernel: fake quantization. Gradient straight
    through. While the file is traced (`tracing_the_file`): `x`."""
    if _FILE_TRACING:
        return x
    dtype = x.dtype
    x32 = ops.cast(x, "float32")
    lo = ops.stop_gradient(ops.cast(lo, "float32"))
    hi = ops.stop_gradient(ops.cast(hi, "float32"))
    input_step = ops.stop_gradient(ops.cast(input_step, "float32"))
    scale, nudged_min, _ = _nudge(lo, hi, False)
    ratio = input_step / scale
    levels = ops.round(ops.stop_gradient(x32) / input_step)  # q - zero
    multiplier = ops.round(256.0 * ratio)  # lrintf: half to even
    moved = ops.floor((levels * multiplier + 128.0) / 256.0)
    zero = ops.round(-nudged_min / scale)
    steps = ops.clip(moved + zero, 0.0, 255.0)
    xnnpack = steps * scale + nudged_min
    inside = ops.logical_and(ratio >= 2.0**-8, ratio <= 2.0**7)
    exact = fake_quant(ops.stop_gradient(x32), lo, hi)
    value = ops.stop_gradient(ops.where(inside, xnnpack, exact))
    return ops.cast(x32 + (value - ops.stop_gradient(x32)), dtype)


def _nudge(lo, hi, narrow_range, xp=ops):
    """TensorFlow's `Nudge` on float32 range tensors: `(scale, nudged_min,
    nudged_max)`. The zero point is an integer, rounded half away from
    zero (it is >= 0 here: `floor(z) + 1` from a half up). `xp` is
    `keras.ops`, or `torch` itself on the torch path (the same operations
    without `keras.ops`'s conversions, ~70 us a call there)."""
    q_min = 1.0 if narrow_range else 0.0
    q_max = float(2**NUM_BITS - 1)
    scale = (hi - lo) / (q_max - q_min)
    zero = xp.clip(q_min - lo / scale, q_min, q_max)
    whole = xp.floor(zero)
    zero = xp.where(zero - whole >= 0.5, whole + 1.0, whole)
    return scale, (q_min - zero) * scale, (q_max - zero) * scale


def quantize_kernel(kernel, rule):
    """Symmetric narrow-range int8 fake quantization of a kernel."""
    if rule in ("dense", "einsum"):
        m = _kernel_range(kernel, None)
        return fake_quant(kernel, -m, m, narrow_range=True)
    if rule in ("transpose", "prelu"):
        # keras.ops rounding: transpose (..., out, in) per output channel
        # (axis -2); PReLU's alpha per tensor, as TF 2.21's converter stores
        # it (with a `FakeQuant` op on alpha it kept PRELU float).
        rank = len(kernel.shape)
        kept = rank - 2 if rule == "transpose" else None
        axes = tuple(i for i in range(rank) if i != kept)
        m = ops.max(ops.abs(kernel), axis=axes, keepdims=True)
        scale = ops.stop_gradient(ops.maximum(m, MIN_WEIGHT_RANGE) / 127.0)
        q = ops.clip(ops.round(kernel / scale), -127.0, 127.0) * scale
        return kernel + ops.stop_gradient(q - kernel)
    flat = _output_channels_last(kernel, rule)
    m = _kernel_range(flat, tuple(range(len(flat.shape) - 1)))
    out = fake_quant(flat, -m, m, narrow_range=True, axis=-1)
    return ops.reshape(out, ops.shape(kernel)) if flat is not kernel else out


def _output_channels_last(kernel, rule):
    """A convolution's kernel with one axis of output channels, the last:
    a depthwise kernel `(..., in, multiplier)` as `(..., in * multiplier)`,
    a transposed one `(..., out, in)` as `(..., in, out)`."""
    if rule == "transpose":
        return ops.swapaxes(kernel, -1, -2)
    if rule != "depthwise":
        return kernel
    return ops.reshape(kernel, tuple(ops.shape(kernel)[:-2]) + (-1,))


def _kernel_range(kernel, axes):
    """`max(max |kernel| over axes (None: all), MIN_WEIGHT_RANGE)`, with
    no gradient: a kernel's symmetric range."""
    if keras.backend.backend() == "torch":
        return _torch.kernel_range(kernel, axes, MIN_WEIGHT_RANGE)
    m = ops.max(ops.abs(kernel), axis=axes)
    return ops.stop_gradient(ops.maximum(m, MIN_WEIGHT_RANGE))


def embedding_lookup(layer, ids):
    """`keras.layers.Embedding`'s lookup in its table fake-quantized per
    tensor (the int8 GATHER's table)."""
    if "int" not in str(ids.dtype):
        ids = ops.cast(ids, "int32")
    table = quantize_kernel(layer.embeddings, "dense")
    return ops.cast(ops.take(table, ids, axis=0), layer.compute_dtype)


def fake_quant_fixed(x, fixed):
    """Fake quantization with a fixed `(min, max)` range."""
    dtype = x.dtype
    lo, hi = (ops.convert_to_tensor(v, "float32") for v in fixed)
    out = fake_quant(ops.cast(x, "float32"), lo, hi)
    return ops.cast(out, dtype)


def is_prelu(layer):
    """Whether `layer` is Keras's `PReLU` with its `alpha` variable."""
    return type(layer) is keras.layers.PReLU and isinstance(
        getattr(layer, "alpha", None), keras.Variable
    )


def is_swish(activation):
    """Whether an activation function is Keras's swish (`silu`): the
    converter writes it as LOGISTIC then MUL. A user's own function of
    that name is not taken for it."""
    return any(
        activation is f
        for f in (
            keras.activations.silu,
            keras.activations.swish,
            keras.ops.silu,
            getattr(keras.ops, "swish", None),
        )
    )


def is_swish_operation(op):
    """Whether a graph operation computes swish: an `Activation("swish")`
    layer (or its twin) or a `keras.ops.silu` node."""
    if isinstance(op, keras.layers.Activation):
        # Keras's class or keras_slim's twin, not a user's subclass (whose
        # `call` may do more): as `quantize_model` swaps them.
        module = type(op).__module__
        return module.startswith(("keras.", "keras_slim.")) and is_swish(
            op.activation
        )
    return type(op).__name__ == "Silu" and not isinstance(
        op, keras.layers.Layer
    )


def swish(x):
    """Swish as its int8 file computes it: `x * sigmoid(x)` with the
    sigmoid on LOGISTIC's fixed int8 grid (scale 1/256). Without that
    grid the simulation's product differs from the file's by up to a
    step in about 1% of the outputs (measured on a Conv2D + swish), an
    error that compounds over EfficientNet's 16 swish blocks."""
    sigmoid = fake_quant_fixed(ops.sigmoid(x), FIXED_RANGES["sigmoid"])
    return x * sigmoid


def weight_forward(
    layer,
    rule,
    inputs,
    quantize,
    pre_activation=None,
    inner=None,
    input_scale=None,
    inner_scale=None,
):
    """The forward pass of a Conv/DepthwiseConv/SeparableConv/Dense layer,
    through its public attributes, with the kernel fake-quantized when
    `quantize`.

    `pre_activation(t)`, when given, fake-quantizes the output before the
    layer's own activation (an activation the converter cannot fuse runs
    as an op of its own, on an int8 input); `inner(t)` the depthwise
    output of a separable convolution (the converter runs it as a
    DEPTHWISE_CONV_2D, then a CONV_2D). With `input_scale` (the int8 step
    of `inputs`), the bias is rounded as the file stores it
    (`rounded_bias`); a separable convolution's bias with
    `inner_scale(t)`, the step of `inner`'s output `t`."""
    if rule == "separable":
        outputs, step_ = _separable(layer, inputs, quantize, inner, inner_scale)
        bias = rounded_bias(layer, rule, step_) if quantize else None
        return _bias_activation(layer, outputs, pre_activation, value=bias)
    if rule == "transpose":
        kernel = layer.kernel
        if quantize:
            kernel = quantize_kernel(kernel, rule)
        outputs = ops.conv_transpose(
            inputs,
            kernel,
            strides=layer.strides,
            padding=layer.padding,
            output_padding=layer.output_padding,
            dilation_rate=layer.dilation_rate,
            data_format=layer.data_format,
        )
        bias = rounded_bias(layer, rule, input_scale) if quantize else None
        return _bias_activation(layer, outputs, pre_activation, value=bias)
    kernel = layer.kernel
    # A 1D convolution runs as a 2D one with a height of 1: the converter
    # refuses the per-channel kernel of a 1D one ("'tfl.reshape' op
    # requires 'output' type ... cast compatible": its ExpandDims keeps the
    # quantized axis at 2 when the channels move to 3), so the kernel is
    # expanded before it is fake-quantized.
    one_d = rule in ("conv", "depthwise") and len(kernel.shape) == 3
    if one_d:
        kernel = ops.expand_dims(kernel, 0)
    if quantize:
        kernel = quantize_kernel(kernel, rule)
    if rule == "einsum":
        outputs = ops.einsum(layer.equation, inputs, kernel)
        if layer.bias is not None:
            bias = layer.bias
            if quantize:
                bias = rounded_bias(layer, rule, input_scale)
            outputs = ops.add(outputs, bias)
        return _bias_activation(layer, outputs, pre_activation, bias=False)
    bias = rounded_bias(layer, rule, input_scale) if quantize else layer.bias
    if rule == "dense":
        outputs = ops.matmul(inputs, kernel)
        if layer.use_bias:
            outputs = ops.add(outputs, bias)
        return _bias_activation(layer, outputs, pre_activation, bias=False)
    outputs = _convolve(layer, rule, inputs, kernel, one_d)
    return _bias_activation(layer, outputs, pre_activation, value=bias)


def _bias_activation(layer, outputs, pre_activation, bias=True, value=None):
    if bias and layer.use_bias:
        value = layer.bias if value is None else value
        rank = len(outputs.shape) - 2
        channels = layer.bias.shape[0]
        if layer.data_format == "channels_last":
            bias_shape = (1,) * (rank + 1) + (channels,)
        else:
            bias_shape = (1, channels) + (1,) * rank
        outputs = ops.add(outputs, ops.reshape(value, bias_shape))
    if pre_activation is not None:
        outputs = pre_activation(outputs)
        if is_swish(layer.activation):
            return swish(outputs)
    if layer.activation is not None:
        outputs = layer.activation(outputs)
    return outputs


def _separable(layer, inputs, quantize, inner, inner_scale=None):
    """The depthwise then pointwise convolutions (no bias) and the step of
    the depthwise output (`inner_scale` of it, or None)."""
    depthwise = layer.depthwise_kernel
    pointwise = layer.pointwise_kernel
    one_d = len(depthwise.shape) == 3
    if one_d:
        depthwise = ops.expand_dims(depthwise, 0)
        pointwise = ops.expand_dims(pointwise, 0)
    if quantize:
        depthwise = quantize_kernel(depthwise, "depthwise")
        pointwise = quantize_kernel(pointwise, "conv")
    outputs = _convolve(layer, "depthwise", inputs, depthwise, one_d)
    step_ = None
    if inner is not None:
        outputs = inner(outputs)
        if inner_scale is not None:
            step_ = inner_scale(outputs)
    axis = 1 if layer.data_format == "channels_last" else 2
    if one_d:
        outputs = ops.expand_dims(outputs, axis)
    outputs = ops.conv(
        outputs, pointwise, padding="valid", data_format=layer.data_format
    )
    return (ops.squeeze(outputs, axis) if one_d else outputs), step_


def _convolve(layer, rule, inputs, kernel, one_d):
    strides, dilation = layer.strides, layer.dilation_rate
    padding, data_format = layer.padding, layer.data_format
    if rule == "conv" and not one_d:
        return layer.convolution_op(inputs, kernel)
    axis = 1 if data_format == "channels_last" else 2
    if one_d:
        if padding == "causal":
            left = dilation[0] * (layer.kernel_size[0] - 1)
            pads = [[0, 0], [0, 0], [0, 0]]
            pads[axis] = [left, 0]
            inputs, padding = ops.pad(inputs, pads), "valid"
        inputs = ops.expand_dims(inputs, axis)
        strides, dilation = (1, strides[0]), (1, dilation[0])
    op = ops.depthwise_conv if rule == "depthwise" else ops.conv
    outputs = op(
        inputs,
        kernel,
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
        data_format=data_format,
    )
    return ops.squeeze(outputs, axis) if one_d else outputs


def fake_quant_activation(
    x, min_var, max_var, init_var, update, momentum, with_range=False
):
    """Per-tensor asymmetric fake quantization with moving-average ranges.

    With `update`, the batch min/max move the ranges (the first batch sets
    them); otherwise the stored ranges are read and nothing is written.
    With `with_range`, returns `(output, lo, hi)`, the range it used.
    """
    # Ranges are float32 state (never autocast); under mixed precision the
    # activation is quantized in float32 and cast back.
    dtype = x.dtype
    x32 = ops.cast(x, "float32")
    if not update:
        lo, hi = ops.cast(min_var, "float32"), ops.cast(max_var, "float32")
    elif keras.backend.backend() == "torch":
        lo, hi = _torch.moving_range(
            x32, min_var, max_var, init_var, momentum, MIN_ACTIVATION_RANGE
        )
    else:
        batch_min = ops.minimum(ops.min(x32), 0.0)
        batch_max = ops.maximum(ops.max(x32), 0.0)
        seen = ops.greater(init_var, 0.0)
        old_min = ops.cast(min_var, "float32")
        old_max = ops.cast(max_var, "float32")
        lo = ops.where(
            seen, momentum * old_min + (1.0 - momentum) * batch_min, batch_min
        )
        hi = ops.where(
            seen, momentum * old_max + (1.0 - momentum) * batch_max, batch_max
        )
        hi = ops.maximum(hi, lo + MIN_ACTIVATION_RANGE)
        lo, hi = ops.stop_gradient(lo), ops.stop_gradient(hi)
    if update:
        min_var.assign(lo)
        max_var.assign(hi)
        init_var.assign(1.0)
    out = ops.cast(fake_quant(x32, lo, hi), dtype)
    return (out, lo, hi) if with_range else out


def step(lo, hi):
    """The int8 scale of the range `[lo, hi]` (fake quantization's nudge
    moves the range, not its step), as a float32 tensor with no
    gradient."""
    lo, hi = (ops.cast(v, "float32") for v in (lo, hi))
    return ops.stop_gradient((hi - lo) / 255.0)


# The layers whose bias the file stores as int32 at scale s_x * s_w (a
# separable convolution's: its pointwise CONV_2D's, `s_x` the step of the
# depthwise output between the two; an EinsumDense's where it becomes a
# FULLY_CONNECTED, `einsum_is_fully_connected`).
BIAS_RULES = ("conv", "depthwise", "dense", "separable", "transpose", "einsum")


def einsum_is_fully_connected(layer):
    """Whether an `EinsumDense` is a fully connected layer over its input's
    last axes, with a bias over all its output axes: `ab,bc->ac`,
    `abc,cd->abd`, MultiHeadAttention's `abc,cde->abde` (bias `de`) and
    `abcd,cde->abe` (bias `e`). The converter writes such a layer as a
    FULLY_CONNECTED with an int32 bias at `s_x * s_w` (read back from the
    files of `benchmarks/probes/qat_bias_kinds.py` and the zoo's text
    Transformer); other equations keep their bias unrounded."""
    equation = str(getattr(layer, "equation", "")).replace(" ", "")
    if "." in equation or equation.count("->") != 1:
        return False
    operands, out = equation.split("->")
    if operands.count(",") != 1:
        return False
    x, k = operands.split(",")
    contracted = "".join(c for c in k if c in x and c not in out)
    n = len(contracted)
    kept = k[n:]
    return (
        n > 0
        and x.endswith(contracted)
        and k.startswith(contracted)
        and out == x[: len(x) - n] + kept
        and (getattr(layer, "bias_axes", None) or "") == kept
    )


def bias_scale(layer, rule, input_scale):
    """The int32 scale of `layer`'s bias in its int8 file, `s_x * s_w`:
    the input's step times the kernel's (per output channel for a
    convolution, per tensor for a Dense), float32, no gradient. A
    separable convolution's `s_w` is its pointwise kernel's, and
    `input_scale` the step of its depthwise output."""
    if rule == "separable":
        kernel = ops.cast(layer.pointwise_kernel, "float32")
    else:
        kernel = ops.cast(layer.kernel, "float32")
    if rule in ("dense", "einsum"):  # per tensor
        m = _kernel_range(kernel, None)
    else:
        kernel = _output_channels_last(kernel, rule)
        m = _kernel_range(kernel, tuple(range(len(kernel.shape) - 1)))
    return ops.stop_gradient(input_scale * (m / 127.0))


def round_to_scale(value, scale):
    """`value` rounded to a multiple of `scale` (the file's int32 bias),
    the gradient straight through."""
    v32 = ops.cast(value, "float32")
    q = ops.round(v32 / scale) * scale
    return ops.cast(v32 + ops.stop_gradient(q - v32), value.dtype)


def rounded_bias(layer, rule, input_scale):
    """`layer.bias` as the int8 file stores it (`round_to_scale` at
    `bias_scale`), or the bias as it is where the file's is not known:
    no bias, no input scale, a layer kind whose bias is not int32.

    The converter rounds each bias to int32 at scale `s_x * s_w`; adding
    it unrounded put the float simulation of a convolution one step off
    its int8 file on 0.01-1.4% of the outputs
    (`benchmarks/probes/conv_requantization.py`), which deep models
    amplify."""
    bias = getattr(layer, "bias", None)
    if bias is None or input_scale is None or rule not in BIAS_RULES:
        return bias
    if not getattr(layer, "use_bias", True):
        return bias
    if rule == "einsum" and not einsum_is_fully_connected(layer):
        return bias
    return round_to_scale(bias, bias_scale(layer, rule, input_scale))


def bias_record(layer, rule, input_scale, active=True):
    """What a BatchNormalization folded into the convolution `layer` needs
    of it (`folded_bias_correction`): a float32 `(3, channels)` tensor of
    the bias scale `s_x * s_w`, the bias and the bias the convolution
    added (rounded), no gradient. Not `active`: a scale of 0 and the
    bias unrounded, which correct nothing."""
    scale = bias_scale(layer, rule, input_scale)
    if layer.use_bias:
        bias = ops.cast(layer.bias, "float32")
        used = ops.round(bias / scale) * scale  # `round_to_scale`'s value
    else:
        bias = used = ops.zeros_like(scale)
    if not active:
        scale, used = ops.zeros_like(scale), bias
    return ops.stop_gradient(ops.stack([scale, bias, used]))


def on_moving_statistics(batchnorm, training):
    """Whether a BatchNormalization runs on its moving statistics."""
    return not batchnorm.trainable or not training


def folds_on_last_axis(batchnorm, rank):
    """Whether a BatchNormalization normalizes the last axis of a rank
    `rank` input (a channels-last convolution's channels)."""
    axis = batchnorm.axis
    if isinstance(axis, (list, tuple)):
        axis = axis[0] if len(axis) == 1 else None
    return axis in (-1, rank - 1)


def folded_bias_correction(batchnorm, record):
    """What to add to a BatchNormalization's inference output so that it
    equals the file's: the convolution before it and the BN folded into
    one, whose bias `beta + (b - mean) * k` (`k = gamma / sqrt(var +
    eps)`) the file rounds at scale `s_x * s_w * |k|`. `record` is the
    convolution's `bias_record`. No gradient."""
    scale, bias, used = record[0], record[1], record[2]
    mean = ops.cast(batchnorm.moving_mean, "float32")
    variance = ops.cast(batchnorm.moving_variance, "float32")
    k = ops.rsqrt(variance + batchnorm.epsilon)
    if batchnorm.gamma is not None:
        k = k * ops.cast(batchnorm.gamma, "float32")
    beta = (
        ops.cast(batchnorm.beta, "float32")
        if batchnorm.beta is not None
        else ops.zeros_like(mean)
    )
    folded = beta + (bias - mean) * k
    step_ = scale * ops.abs(k)
    safe = ops.where(step_ > 0, step_, 1.0)  # gamma 0: nothing to round
    wanted = ops.where(step_ > 0, ops.round(folded / safe) * safe, folded)
    return ops.stop_gradient(wanted - (beta + (used - mean) * k))


def quantize_constant(c):
    """A constant as the converter stores it when it becomes an int8
    operand of a MUL or an ADD (the scale and offset of a BatchNormalization
    that folds into no convolution, of `Rescaling`, of `Normalization`): one
    asymmetric int8 range for the whole tensor, from `min(c, 0)` to
    `max(c, 0)`. Per-channel values spread over that one range lose up to
    half a step each: a scale of 0.05 stored with a step of 0.0085 is off by
    up to 8%, which the float constant would hide from the Keras model."""
    c32 = ops.cast(c, "float32")
    lo = ops.minimum(ops.min(c32), 0.0)
    hi = ops.maximum(ops.maximum(ops.max(c32), 0.0), lo + MIN_WEIGHT_RANGE)
    out = fake_quant(c32, ops.stop_gradient(lo), ops.stop_gradient(hi))
    return ops.cast(out, c.dtype)


def standalone_batchnorm(layer, x, training, inner, original):
    """A BatchNormalization that does not fold into a convolution.

    After a Dense (quantized per tensor, so a per-unit scale cannot fold
    into its kernel) or after an addition (pre-activation ResNets), the
    converter runs BatchNorm as an int8 MUL by its scale, then an int8 ADD
    of its offset: the product is a tensor of its own, fake-quantized by
    `inner`. In training the batch statistics are used, as Keras does
    (`original`); the product's range is learned from the moving ones.
    """
    rank = len(x.shape)
    shape = [1] * rank
    axis = layer.axis % rank
    shape[axis] = x.shape[axis]
    variance = ops.cast(layer.moving_variance, x.dtype)
    scale = ops.rsqrt(variance + layer.epsilon)
    if layer.scale:
        scale = scale * ops.cast(layer.gamma, x.dtype)
    offset = -ops.cast(layer.moving_mean, x.dtype) * scale
    if layer.center:
        offset = offset + ops.cast(layer.beta, x.dtype)
    # Computed in training too: that moves the product's range.
    product = inner(x * ops.reshape(quantize_constant(scale), shape))
    if training:
        return original(x, training=True)
    return product + ops.reshape(quantize_constant(offset), shape)


def has_offset(layer):
    """Whether an `affine` layer adds an offset after its scale
    (`Rescaling`, `Normalization`) or only scales (`LayerScale`)."""
    return isinstance(
        layer, (keras.layers.Rescaling, keras.layers.Normalization)
    )


def affine_parameters(layer, dtype):
    """The `(scale, offset)` of a `Rescaling` or `Normalization` layer;
    of ConvNeXt's `LayerScale`, `(gamma, None)`."""
    if not has_offset(layer):
        return ops.cast(layer.gamma, dtype), None
    if isinstance(layer, keras.layers.Normalization):
        std = ops.maximum(
            ops.sqrt(ops.cast(layer.variance, dtype)), keras.config.epsilon()
        )
        mean = ops.cast(layer.mean, dtype)
        if layer.invert:
            return std, mean
        return 1.0 / std, -mean / std
    return ops.cast(layer.scale, dtype), ops.cast(layer.offset, dtype)


def removed_ops(layer):
    """`(MUL removed, ADD removed)` for a `Rescaling`, `Normalization` or
    `LayerScale`: TensorFlow drops a multiplication by ones and an addition
    of zeros before the converter sees them (`Rescaling(1 / 255)` has no
    ADD in its file; an unadapted `Normalization`, as in
    `keras.applications.EfficientNet*(weights=None)`, has no op at all),
    and the converter then keeps the first of two ranges with no op
    between (measured: the later ones leave no trace in the file). Read
    eagerly, once: `(False, False)` where the values cannot be read."""
    try:
        scale, offset = affine_parameters(layer, "float32")
        scale = ops.convert_to_numpy(scale)
        if offset is not None:
            offset = ops.convert_to_numpy(offset)
    except Exception:  # traced values: assume both ops stay
        return False, False
    return (
        bool((scale == 1).all()),
        offset is not None and bool((offset == 0).all()),
    )


def affine_forward(layer, x, inner, removed=(False, False)):
    """`Rescaling` or `Normalization` as the int8 file runs it: an int8
    MUL by the scale, then an int8 ADD of the offset; the product is
    fake-quantized by `inner`. `LayerScale`: the MUL only. `removed`
    (`removed_ops`): the ops the file does not have; a tensor that
    reaches the output with no op after its range is returned as it is
    (the placement then adds no range: the file has none)."""
    if x.dtype != layer.compute_dtype:
        x = ops.cast(x, layer.compute_dtype)
    scale, offset = affine_parameters(layer, x.dtype)
    mul_removed, add_removed = removed
    product = x if mul_removed else x * quantize_constant(scale)
    if offset is None:  # `LayerScale`: the product is the output
        return product
    if not mul_removed:
        product = inner(product)
    if add_removed:
        return product
    return product + quantize_constant(offset)
