"""The serializable quantization-aware layers that `quantize_model` puts in
a model: `FakeQuant` for activations, quantized twins of the weight layers
and a BatchNormalization that can run on its moving statistics.

All are registered Keras serializables: `model.save` and
`keras.models.load_model` round-trip them with no custom scope.
"""

import keras

from keras_slim.quantization import _attention
from keras_slim.quantization import _intercept
from keras_slim.quantization import _layernorm
from keras_slim.quantization import _quantizers
from keras_slim.quantization import _rules


@keras.saving.register_keras_serializable(package="keras_slim")
class FakeQuant(keras.layers.Layer):
    """Int8 fake quantization of an activation with moving-average ranges.

    Inserted by `keras_slim.quantization.quantize_model`. Its range
    variables (`min`, `max`, `initialized`) are weights of the layer, so
    `model.save` and `keras.models.load_model` keep them. Ranges move only
    when the layer is called with `training=True`.

    Args:
        momentum: Momentum of the moving-average min/max, in [0, 1).
        fixed_range: `None` (learned ranges), or a fixed `(min, max)`: the
            output range of the TFLite int8 kernel of a bounded activation
            (softmax and sigmoid `(0, 255/256)`, tanh `(-1, 127/128)`).
        **kwargs: Base layer arguments (`name`, ...).

    Example:

    >>> layer = FakeQuant()
    >>> y = layer(keras.ops.convert_to_tensor([[0.0, 1.0, 2.0]]),
    ...           training=True)
    >>> float(layer.max.numpy())
    2.0
    """

    def __init__(
        self, momentum=_quantizers.RANGE_MOMENTUM, fixed_range=None, **kwargs
    ):
        super().__init__(**kwargs)
        self.momentum = momentum
        self.fixed_range = (
            None if fixed_range is None else tuple(map(float, fixed_range))
        )
        self.quantize_active = True
        self.ranges_frozen = False

    def build(self, input_shape):
        const = keras.initializers.Constant
        init = _quantizers.INITIAL_RANGE
        lo, hi = self.fixed_range or (-init, init)
        self.min = self.add_weight(
            shape=(),
            initializer=const(lo),
            dtype="float32",
            trainable=False,
            autocast=False,
            name="min",
        )
        self.max = self.add_weight(
            shape=(),
            initializer=const(hi),
            dtype="float32",
            trainable=False,
            autocast=False,
            name="max",
        )
        self.initialized = self.add_weight(
            shape=(),
            initializer=const(0.0 if self.fixed_range is None else 1.0),
            dtype="float32",
            trainable=False,
            autocast=False,
            name="initialized",
        )

    def call(self, inputs, training=None, step=False, requantize_from=None):
        """`step`: return the range's int8 step; `requantize_from`: the
        step of the grid `inputs` is on, to move it to this range as the
        file's requantizing op does (`_quantizers.requantize`)."""
        if step:  # the int8 step of the range (a convolution's bias reads it)
            return _quantizers.step(*(self.fixed_range or (self.min, self.max)))
        if not self.quantize_active:
            return inputs
        if requantize_from is not None:
            return _quantizers.requantize(
                inputs,
                requantize_from,
                *(self.fixed_range or (self.min, self.max)),
            )
        if self.fixed_range is not None:
            return _quantizers.fake_quant_fixed(inputs, self.fixed_range)
        return _quantizers.fake_quant_activation(
            inputs,
            self.min,
            self.max,
            self.initialized,
            training is True and not self.ranges_frozen,
            self.momentum,
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(
        self, inputs, training=None, step=False, requantize_from=None
    ):
        if step:
            return keras.KerasTensor((), "float32")
        return keras.KerasTensor(inputs.shape, inputs.dtype)

    def get_config(self):
        config = {**super().get_config(), "momentum": self.momentum}
        if self.fixed_range is not None:
            config["fixed_range"] = list(self.fixed_range)
        return config


class _WeightQuantMixin:
    """Conv/Dense subclass whose forward pass fake-quantizes its kernel."""

    weight_rule = None

    def call(self, inputs, input_scale=None, bias_record=False):
        """`input_scale`: the int8 step of `inputs` (the bias is rounded as
        the file stores it); `bias_record`: return what a BatchNorm folded
        into this layer needs instead (`_quantizers.bias_record`)."""
        active = getattr(self, "quantize_active", True)
        if bias_record:
            return _quantizers.bias_record(
                self, self.weight_rule, input_scale, active
            )
        return _quantizers.weight_forward(
            self, self.weight_rule, inputs, active, input_scale=input_scale
        )

    def compute_output_spec(self, inputs, input_scale=None, bias_record=False):
        if bias_record:
            channels = self.kernel.shape[-1]
            if self.weight_rule == "depthwise":
                channels *= self.kernel.shape[-2]
            elif self.weight_rule == "transpose":  # (..., out, in)
                channels = self.kernel.shape[-2]
            return keras.KerasTensor((3, channels), "float32")
        return super().compute_output_spec(inputs)


@keras.saving.register_keras_serializable(package="keras_slim")
class QuantizedConv2D(_WeightQuantMixin, keras.layers.Conv2D):
    """`keras.layers.Conv2D` with int8 per-channel fake-quantized kernel.

    Same arguments and config as `Conv2D` (see `quantize_model`).
    """

    weight_rule = "conv"


@keras.saving.register_keras_serializable(package="keras_slim")
class QuantizedConv1D(_WeightQuantMixin, keras.layers.Conv1D):
    """`keras.layers.Conv1D` with int8 per-channel fake-quantized kernel."""

    weight_rule = "conv"


@keras.saving.register_keras_serializable(package="keras_slim")
class QuantizedDepthwiseConv2D(_WeightQuantMixin, keras.layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` with int8 per-channel fake-quantized
    kernel."""

    weight_rule = "depthwise"


@keras.saving.register_keras_serializable(package="keras_slim")
class QuantizedDepthwiseConv1D(_WeightQuantMixin, keras.layers.DepthwiseConv1D):
    """`keras.layers.DepthwiseConv1D` with int8 per-channel fake-quantized
    kernel."""

    weight_rule = "depthwise"


class _SeparableQuantMixin:
    """SeparableConv subclass: both kernels fake-quantized per channel,
    the depthwise output through its `FakeQuant` sublayer `depthwise_quant`
    (the converter runs a DEPTHWISE_CONV_2D, then a CONV_2D)."""

    weight_rule = "separable"

    def build(self, input_shape):
        super().build(input_shape)
        self.depthwise_quant = FakeQuant(name="depthwise_quant")
        self.depthwise_quant.build(())

    def call(self, inputs, training=None, bias_record=False):
        """`bias_record`: return what a BatchNorm folded into this layer
        needs instead (`_quantizers.bias_record`, at the step of the
        depthwise output's range)."""
        active = getattr(self, "quantize_active", True)
        if bias_record:
            step = self.depthwise_quant(inputs, step=True)
            return _quantizers.bias_record(self, "separable", step, active)

        def inner(t):
            return self.depthwise_quant(t, training=training)

        def inner_scale(t):
            return self.depthwise_quant(t, step=True)

        return _quantizers.weight_forward(
            self,
            "separable",
            inputs,
            active,
            inner=inner if active else None,
            inner_scale=inner_scale,
        )

    def compute_output_spec(self, inputs, training=None, bias_record=False):
        if bias_record:
            channels = self.pointwise_kernel.shape[-1]
            return keras.KerasTensor((3, channels), "float32")
        return super().compute_output_spec(inputs)


@keras.saving.register_keras_serializable(package="keras_slim")
class QuantizedSeparableConv1D(
    _SeparableQuantMixin, keras.layers.SeparableConv1D
):
    """`keras.layers.SeparableConv1D` with int8 per-channel fake-quantized
    kernels and a range on its depthwise output."""


@keras.saving.register_keras_serializable(package="keras_slim")
class QuantizedSeparableConv2D(
    _SeparableQuantMixin, keras.layers.SeparableConv2D
):
    """`keras.layers.SeparableConv2D` with int8 per-channel fake-quantized
    kernels and a range on its depthwise output."""


@keras.saving.register_keras_serializable(package="keras_slim")
class QuantizedConv2DTranspose(_WeightQuantMixin, keras.layers.Conv2DTranspose):
    """`keras.layers.Conv2DTranspose` with int8 fake-quantized kernel, per
    output channel (the kernel's axis -2: `(h, w, out, in)`)."""

    weight_rule = "transpose"


@keras.saving.register_keras_serializable(package="keras_slim")
class QuantizedDense(_WeightQuantMixin, keras.layers.Dense):
    """`keras.layers.Dense` with int8 per-tensor fake-quantized kernel."""

    weight_rule = "dense"


@keras.saving.register_keras_serializable(package="keras_slim")
class QuantizedEinsumDense(_WeightQuantMixin, keras.layers.EinsumDense):
    """`keras.layers.EinsumDense` with int8 per-tensor fake-quantized
    kernel."""

    weight_rule = "einsum"


@keras.saving.register_keras_serializable(package="keras_slim")
class FreezableBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` that can run on its moving
    statistics in training too (`frozen = True`), as the folded int8 file
    does. `QuantizationAwareTraining(freeze_bn_delay=...)` sets `frozen`.

    Same arguments and config as `BatchNormalization`.
    """

    frozen = False

    def call(self, inputs, training=None, mask=None, folded=None):
        """`folded`: the `bias_record` of the convolution this layer folds
        into; on moving statistics the output then has the folded bias
        rounded as the int8 file stores it."""
        if self.frozen:
            training = False
        outputs = super().call(inputs, training=training, mask=mask)
        if folded is not None and _quantizers.on_moving_statistics(
            self, training
        ):
            correction = _quantizers.folded_bias_correction(self, folded)
            outputs = outputs + keras.ops.cast(correction, outputs.dtype)
        return outputs


@keras.saving.register_keras_serializable(package="keras_slim")
class StandaloneBatchNormalization(FreezableBatchNormalization):
    """A `FreezableBatchNormalization` that does not fold into a
    convolution (after a Dense, an addition or a model input): the int8
    file runs it as a MUL by its scale and an ADD of its offset, so the
    product gets a range of its own, the `FakeQuant` sublayer `product`.

    Same arguments and config as `BatchNormalization`.
    """

    quantize_active = True

    def build(self, input_shape):
        super().build(input_shape)
        self.product = FakeQuant(name="product")
        self.product.build(input_shape)

    def call(self, inputs, training=None, mask=None):
        learning = training is True
        if self.frozen:
            training = False
        if not self.quantize_active:
            return super().call(inputs, training=training, mask=mask)

        def original(x, training):
            return keras.layers.BatchNormalization.call(
                self, x, training=training, mask=mask
            )

        def inner(t):
            return self.product(t, training=learning)

        return _quantizers.standalone_batchnorm(
            self, inputs, training is True, inner, original
        )


class _StepQuantMixin:
    """A twin whose int8 computation has inner tensors of its own: one
    `FakeQuant` sublayer per step name, in `step_quants`."""

    def _build_steps(self, names):
        self.step_names = tuple(names)
        self.step_quants = [FakeQuant(name=n) for n in self.step_names]
        for quant in self.step_quants:
            quant.build(())

    def _step(self, training):
        """`step(name, t)`: `t` through the `FakeQuant` of step `name`."""
        quants = dict(zip(self.step_names, self.step_quants))

        def step(name, t):
            return quants[name](t, training=training is True)

        return step


class _NormQuantMixin(_StepQuantMixin):
    """A normalization twin: `step_rule` (its catalogue rule) names its
    inner steps, `step_forward` (a `_layernorm` function) computes it
    (not `forward`: on torch that is `torch.nn.Module.forward`)."""

    quantize_active = True

    def build(self, input_shape):
        super().build(input_shape)
        self._build_steps(_rules.inner_names(self, self.step_rule))

    def call(self, inputs, training=None):
        if not self.quantize_active:
            return super().call(inputs)
        return self.step_forward(self, inputs, self._step(training))


@keras.saving.register_keras_serializable(package="keras_slim")
class QuantizedLayerNormalization(
    _NormQuantMixin, keras.layers.LayerNormalization
):
    """`keras.layers.LayerNormalization` computed as its int8 file runs
    it (MEAN, SUB, MUL, MEAN, ADD, RSQRT, MUL, MUL by gamma, ADD of beta),
    each inner tensor through a `FakeQuant` sublayer of `step_quants`.

    Same arguments and config as `LayerNormalization`.
    """

    step_rule = "layernorm"
    step_forward = staticmethod(_layernorm.forward)


@keras.saving.register_keras_serializable(package="keras_slim")
class QuantizedGroupNormalization(
    _NormQuantMixin, keras.layers.GroupNormalization
):
    """`keras.layers.GroupNormalization` computed as its int8 file runs
    it (the LayerNormalization ops on each group), each inner tensor
    through a `FakeQuant` sublayer of `step_quants`.

    Same arguments and config as `GroupNormalization`.
    """

    step_rule = "groupnorm"
    step_forward = staticmethod(_layernorm.group_forward)


@keras.saving.register_keras_serializable(package="keras_slim")
class QuantizedUnitNormalization(
    _NormQuantMixin, keras.layers.UnitNormalization
):
    """`keras.layers.UnitNormalization` computed as its int8 file runs it
    (MUL, SUM, RSQRT, MUL), each inner tensor through a `FakeQuant`
    sublayer of `step_quants`.

    Same arguments and config as `UnitNormalization`.
    """

    step_rule = "unitnorm"
    step_forward = staticmethod(_layernorm.unit_forward)


@keras.saving.register_keras_serializable(package="keras_slim")
class QuantizedRMSNormalization(_NormQuantMixin, keras.layers.RMSNormalization):
    """`keras.layers.RMSNormalization` computed as its int8 file runs it
    (MUL, MEAN, ADD, RSQRT, MUL, MUL by the scale), each inner tensor
    through a `FakeQuant` sublayer of `step_quants`.

    Same arguments and config as `RMSNormalization`.
    """

    step_rule = "rmsnorm"
    step_forward = staticmethod(_layernorm.rms_forward)


@keras.saving.register_keras_serializable(package="keras_slim")
class QuantizedMultiHeadAttention(
    _StepQuantMixin, keras.layers.MultiHeadAttention
):
    """`keras.layers.MultiHeadAttention` computed as its int8 file runs it
    (projections with int8 kernels, scaled dot product, softmax, weighted
    sum), each inner tensor through a `FakeQuant` sublayer of
    `step_quants` (see `_attention`).

    Same arguments and config as `MultiHeadAttention`.
    """

    quantize_active = True

    def build(self, query_shape, value_shape, key_shape=None):
        super().build(query_shape, value_shape, key_shape)
        self._build_steps(_attention.STEPS)

    def call(self, query, value, key=None, training=None, **kwargs):
        if not self.quantize_active or kwargs.get("return_attention_scores"):
            return super().call(query, value, key, training=training, **kwargs)
        inputs, masks, _ = _attention.bind(self, (query, value, key), kwargs)
        return _attention.forward(
            self, inputs, self._step(training), training is True, **masks
        )


@keras.saving.register_keras_serializable(package="keras_slim")
class QuantizedEmbedding(keras.layers.Embedding):
    """`keras.layers.Embedding` whose table is fake-quantized to int8 per
    tensor, as the int8 file's GATHER reads it.

    Same arguments and config as `Embedding`.
    """

    quantize_active = True

    def call(self, inputs):
        if not self.quantize_active:
            return super().call(inputs)
        return _quantizers.embedding_lookup(self, inputs)


@keras.saving.register_keras_serializable(package="keras_slim")
class QuantizedActivation(keras.layers.Activation):
    """`keras.layers.Activation("swish")` computed as its int8 file runs
    it: LOGISTIC on its fixed int8 grid, then MUL (any other activation
    as `Activation`).

    Same arguments and config as `Activation`.
    """

    quantize_active = True

    def call(self, inputs):
        if self.quantize_active and _quantizers.is_swish(self.activation):
            return _quantizers.swish(inputs)
        return super().call(inputs)


@keras.saving.register_keras_serializable(package="keras_slim")
class QuantizedPReLU(keras.layers.PReLU):
    """`keras.layers.PReLU` with its `alpha` read as the int8 file stores
    it (per tensor, symmetric); its output range is the `FakeQuant` after
    it.

    Same arguments and config as `PReLU`.
    """

    quantize_active = True

    def call(self, inputs):
        if not self.quantize_active:
            return super().call(inputs)
        return _intercept.with_quantized_kernel(
            self, "prelu", lambda: super(QuantizedPReLU, self).call(inputs)
        )


TWINS = {
    keras.layers.Conv1D: QuantizedConv1D,
    keras.layers.Conv2D: QuantizedConv2D,
    keras.layers.DepthwiseConv1D: QuantizedDepthwiseConv1D,
    keras.layers.DepthwiseConv2D: QuantizedDepthwiseConv2D,
    keras.layers.SeparableConv1D: QuantizedSeparableConv1D,
    keras.layers.SeparableConv2D: QuantizedSeparableConv2D,
    keras.layers.Conv2DTranspose: QuantizedConv2DTranspose,
    keras.layers.Dense: QuantizedDense,
    keras.layers.EinsumDense: QuantizedEinsumDense,
    keras.layers.BatchNormalization: FreezableBatchNormalization,
    keras.layers.LayerNormalization: QuantizedLayerNormalization,
    keras.layers.Embedding: QuantizedEmbedding,
    keras.layers.MultiHeadAttention: QuantizedMultiHeadAttention,
    keras.layers.RMSNormalization: QuantizedRMSNormalization,
    keras.layers.GroupNormalization: QuantizedGroupNormalization,
    keras.layers.PReLU: QuantizedPReLU,
    keras.layers.UnitNormalization: QuantizedUnitNormalization,
}
# Twins that compute several int8 ops, a `FakeQuant` after each.
STEP_TWINS = (
    QuantizedLayerNormalization,
    QuantizedRMSNormalization,
    QuantizedGroupNormalization,
    QuantizedUnitNormalization,
    QuantizedMultiHeadAttention,
)
WEIGHT_TWINS = (
    QuantizedConv1D,
    QuantizedConv2D,
    QuantizedDepthwiseConv1D,
    QuantizedDepthwiseConv2D,
    QuantizedSeparableConv1D,
    QuantizedSeparableConv2D,
    QuantizedConv2DTranspose,
    QuantizedDense,
    QuantizedEinsumDense,
)
for _twin in WEIGHT_TWINS:
    _rules.register_own_rule(_twin, _twin.weight_rule)
_rules.register_own_rule(FreezableBatchNormalization, "batchnorm")
_rules.register_own_rule(StandaloneBatchNormalization, "batchnorm")
_rules.register_own_rule(QuantizedLayerNormalization, "layernorm")
_rules.register_own_rule(QuantizedRMSNormalization, "rmsnorm")
_rules.register_own_rule(QuantizedGroupNormalization, "groupnorm")
_rules.register_own_rule(QuantizedUnitNormalization, "unitnorm")
_rules.register_own_rule(QuantizedEmbedding, "embedding")
_rules.register_own_rule(QuantizedActivation, "output")
_rules.register_own_rule(QuantizedPReLU, "output")
_rules.register_own_rule(QuantizedMultiHeadAttention, "attention")
_rules.register_own_rule(FakeQuant, "quantizer")
