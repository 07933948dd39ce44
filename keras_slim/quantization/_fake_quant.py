"""Fake quantization shared by `QuantizationAwareTraining` and
`quantize_model`: range variables, per-layer rules, the serializable
fake-quant layers, and the in-place patching of a model's forward pass.

How the int8 simulation is placed (what the TFLite converter expects):

- Weights: symmetric, narrow range ([-127, 127], zero point 0, so zeros
  stay exact zeros), per output channel for `Conv1D`/`Conv2D` and
  `DepthwiseConv2D` (the depthwise kernel `(kh, kw, in, multiplier)` is
  quantized per `in * multiplier` output channel), per tensor for `Dense`.
  The range is the current max |w| of each channel, so nothing is learned.
- BatchNorm: the converter folds BN into the convolution before it
  quantizes: `w' = w * gamma / sqrt(var + eps)` per output channel. A
  symmetric per-channel quantizer commutes with a per-channel scale
  (`q(s * w) = s * q(w)`, the range scales with the channel), so
  fake-quantizing the unfolded kernel is exactly what the folded int8
  kernel computes. What remains is the usual batch-vs-moving statistics
  gap of BN, which `freeze_bn_delay` closes by running BN in inference
  mode (moving statistics, as in the folded file) for the last steps.
- Activations: per tensor, asymmetric, moving-average min/max ranges
  initialised from the first batch, at the tensors the converter keeps:
  the model inputs, after ReLU/ReLU6 (fused into the convolution), after
  `Add` (or its fused ReLU), after averaging pools, concatenations and the
  logits. Never between a convolution and its BatchNorm or ReLU.

Placement is decided while the forward pass runs (eagerly, traced or
symbolic): a layer whose output could still be fused (a convolution, BN,
`Add`) leaves it "pending"; the next consumer either fuses it (BN after a
convolution, ReLU after any of them) or quantizes it first. That works the
same for Sequential, Functional, subclassed and nested models.
"""

import contextlib
import threading
import weakref

import keras
from keras import ops

from keras_slim._layers import iter_layers

NUM_BITS = 8
RANGE_MOMENTUM = 0.99
_MIN_WEIGHT_RANGE = 1e-8
_MIN_ACTIVATION_RANGE = 1e-3

# ------------------------------------------------------------------ rules
#
# A rule says how a layer takes part in int8 simulation:
#   "conv", "depthwise", "dense": weights fake-quantized (see module doc);
#       output pending unless the layer's own activation is not linear.
#   "batchnorm": fuses with a pending convolution/Dense output; output
#       pending.
#   "activation": ReLU-like, fused by the converter into the op before it;
#       output pending (quantized by its first consumer that needs it).
#   "add": inputs quantized; output pending (a ReLU after it fuses).
#   "concat": pending inputs take the output's range; output quantized.
#   "output": inputs quantized; output quantized (averaging pools,
#       Softmax, any element-wise op without weights).
#   "passthrough": inputs quantized; the output keeps the input's range
#       (MaxPooling, Flatten, Reshape, Dropout, padding, cropping).
#   "quantizer": a keras_slim fake-quant layer (already quantized).
#   "skip": left in float (the layer is called unchanged).

RULES = (
    "concat",
    "conv",
    "depthwise",
    "dense",
    "batchnorm",
    "activation",
    "add",
    "output",
    "passthrough",
    "skip",
)

_layers = keras.layers
_RULES = {
    _layers.Conv1D: "conv",
    _layers.Conv2D: "conv",
    _layers.DepthwiseConv2D: "depthwise",
    _layers.Dense: "dense",
    _layers.BatchNormalization: "batchnorm",
    _layers.Add: "add",
    _layers.Subtract: "add",
    _layers.Concatenate: "concat",
    _layers.Multiply: "output",
    _layers.Average: "output",
    _layers.Maximum: "output",
    _layers.Minimum: "output",
    _layers.GlobalAveragePooling1D: "output",
    _layers.GlobalAveragePooling2D: "output",
    _layers.AveragePooling1D: "output",
    _layers.AveragePooling2D: "output",
    _layers.Softmax: "output",
    _layers.Rescaling: "output",
    _layers.MaxPooling1D: "passthrough",
    _layers.MaxPooling2D: "passthrough",
    _layers.GlobalMaxPooling1D: "passthrough",
    _layers.GlobalMaxPooling2D: "passthrough",
    _layers.Flatten: "passthrough",
    _layers.Reshape: "passthrough",
    _layers.Dropout: "passthrough",
    _layers.SpatialDropout1D: "passthrough",
    _layers.SpatialDropout2D: "passthrough",
    _layers.GaussianNoise: "passthrough",
    _layers.ZeroPadding1D: "passthrough",
    _layers.ZeroPadding2D: "passthrough",
    _layers.Cropping1D: "passthrough",
    _layers.Cropping2D: "passthrough",
    _layers.Identity: "passthrough",
    _layers.InputLayer: "passthrough",
}

_FUSED_ACTIVATIONS = ("relu", "relu6")
_WEIGHT_RULES = ("conv", "depthwise", "dense")
_FUSING_PRODUCERS = (*_WEIGHT_RULES, "batchnorm", "add")
# Concatenation runs in int8 with one scale for its inputs and output: the
# converter gives the inputs the output's range, so they are not quantized
# on their own.
_CONCAT_PRODUCERS = (*_FUSING_PRODUCERS, "activation")


def register_rule(layer_class, rule):
    """Give `layer_class` (exact type, not subclasses) a rule name."""
    _RULES[layer_class] = rule


def _activation_name(activation):
    if activation is None:
        return "linear"
    try:
        name = keras.activations.serialize(activation)
    except Exception:  # noqa: BLE001 - a custom callable
        return "custom"
    if isinstance(name, dict):
        name = name.get("config", name.get("class_name"))
    return name if isinstance(name, str) else "custom"


def rule_for(layer):
    """Return the rule of `layer`, or `None` when it has none."""
    rule = _RULES.get(type(layer))
    if rule is None:
        for cls, value in _RULES.items():
            if value == "quantizer" and isinstance(layer, cls):
                return value
        return None
    if type(layer) is _layers.ReLU:
        plain = (
            float(layer.negative_slope) == 0.0
            and float(layer.threshold) == 0.0
            and layer.max_value in (None, 6.0, 6)
        )
        return "activation" if plain else "output"
    return rule


_RULES[_layers.ReLU] = "activation"


def _activation_layer_rule(layer):
    name = _activation_name(layer.activation)
    if name in _FUSED_ACTIVATIONS:
        return "activation"
    if name == "linear":
        return "passthrough"
    return "output"


def layer_rule(layer):
    """`rule_for` plus the `Activation` layer, judged by its function."""
    if type(layer) is _layers.Activation:
        return _activation_layer_rule(layer)
    return rule_for(layer)


def output_mode(layer, rule):
    """'pending', 'quantize' or 'none' for the output of `layer`."""
    if rule in _WEIGHT_RULES:
        name = _activation_name(layer.activation)
        return "pending" if name == "linear" else "quantize"
    if rule in ("batchnorm", "add", "activation"):
        return "pending"
    if rule in ("output", "concat"):
        return "quantize"
    return "none"


# ----------------------------------------------------------------- weights


def quantize_kernel(kernel, rule):
    """Symmetric narrow-range int8 fake quantization of a kernel."""
    if rule == "dense":
        m = ops.max(ops.abs(kernel))
        m = ops.stop_gradient(ops.maximum(m, _MIN_WEIGHT_RANGE))
        return keras.quantizers.fake_quant_with_min_max_vars(
            kernel, -m, m, num_bits=NUM_BITS, narrow_range=True
        )
    shape = ops.shape(kernel)
    flat = kernel
    if rule == "depthwise":
        # (kh, kw, in, multiplier) -> one channel per output channel.
        flat = ops.reshape(kernel, (shape[0], shape[1], -1))
    axes = tuple(range(len(flat.shape) - 1))
    m = ops.max(ops.abs(flat), axis=axes)
    m = ops.stop_gradient(ops.maximum(m, _MIN_WEIGHT_RANGE))
    out = keras.quantizers.fake_quant_with_min_max_vars(
        flat, -m, m, num_bits=NUM_BITS, narrow_range=True, axis=-1
    )
    return ops.reshape(out, shape) if rule == "depthwise" else out


def weight_forward(layer, rule, inputs, quantize):
    """The forward pass of a Conv/DepthwiseConv/Dense layer, through its
    public attributes, with the kernel fake-quantized when `quantize`."""
    kernel = layer.kernel
    if quantize:
        kernel = quantize_kernel(kernel, rule)
    if rule == "dense":
        outputs = ops.matmul(inputs, kernel)
        if layer.use_bias:
            outputs = ops.add(outputs, layer.bias)
    else:
        if rule == "depthwise":
            outputs = ops.depthwise_conv(
                inputs,
                kernel,
                strides=layer.strides,
                padding=layer.padding,
                dilation_rate=layer.dilation_rate,
                data_format=layer.data_format,
            )
        else:
            outputs = layer.convolution_op(inputs, kernel)
        if layer.use_bias:
            rank = len(outputs.shape) - 2
            channels = layer.bias.shape[0]
            if layer.data_format == "channels_last":
                bias_shape = (1,) * (rank + 1) + (channels,)
            else:
                bias_shape = (1, channels) + (1,) * rank
            outputs = ops.add(outputs, ops.reshape(layer.bias, bias_shape))
    if layer.activation is not None:
        outputs = layer.activation(outputs)
    return outputs


# ------------------------------------------------------------- activations


def fake_quant_activation(x, min_var, max_var, init_var, update, momentum):
    """Per-tensor asymmetric fake quantization with moving-average ranges.

    With `update`, the batch min/max move the ranges (the first batch sets
    them); otherwise the stored ranges are read and nothing is written.
    """
    if update:
        x32 = ops.cast(x, "float32")
        batch_min = ops.minimum(ops.min(x32), 0.0)
        batch_max = ops.maximum(ops.max(x32), 0.0)
        seen = ops.greater(init_var, 0.0)
        lo = ops.where(
            seen, momentum * min_var + (1.0 - momentum) * batch_min, batch_min
        )
        hi = ops.where(
            seen, momentum * max_var + (1.0 - momentum) * batch_max, batch_max
        )
        hi = ops.maximum(hi, lo + _MIN_ACTIVATION_RANGE)
        min_var.assign(lo)
        max_var.assign(hi)
        init_var.assign(1.0)
        lo = ops.stop_gradient(lo)
        hi = ops.stop_gradient(hi)
    else:
        lo, hi = min_var, max_var
    return keras.quantizers.fake_quant_with_min_max_vars(
        x, lo, hi, num_bits=NUM_BITS, narrow_range=False
    )


class RangeQuantizer:
    """Range variables of one activation tensor, held outside any layer
    (used by the in-place callback)."""

    def __init__(self, name, momentum=RANGE_MOMENTUM):
        self.name = name
        self.momentum = momentum
        self.min = keras.Variable(-6.0, trainable=False, name=f"{name}_min")
        self.max = keras.Variable(6.0, trainable=False, name=f"{name}_max")
        self.initialized = keras.Variable(
            0.0, trainable=False, name=f"{name}_initialized"
        )
        self.active = True
        self.frozen = False

    def __call__(self, x, training):
        if not self.active:
            return x
        return fake_quant_activation(
            x,
            self.min,
            self.max,
            self.initialized,
            bool(training) and not self.frozen,
            self.momentum,
        )


@keras.saving.register_keras_serializable(package="keras_slim")
class FakeQuant(keras.layers.Layer):
    """Int8 fake quantization of an activation with moving-average ranges.

    Inserted by `keras_slim.quantization.quantize_model`. Its range
    variables (`min`, `max`, `initialized`) are weights of the layer, so
    `model.save` and `keras.models.load_model` keep them. Ranges move only
    when the layer is called with `training=True`.

    Args:
        momentum: Momentum of the moving-average min/max, in [0, 1).
        **kwargs: Base layer arguments (`name`, ...).
    """

    def __init__(self, momentum=RANGE_MOMENTUM, **kwargs):
        super().__init__(**kwargs)
        self.momentum = momentum
        self.quantize_active = True
        self.ranges_frozen = False

    def build(self, input_shape):
        const = keras.initializers.Constant
        self.min = self.add_weight(
            shape=(), initializer=const(-6.0), trainable=False, name="min"
        )
        self.max = self.add_weight(
            shape=(), initializer=const(6.0), trainable=False, name="max"
        )
        self.initialized = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="initialized"
        )

    def call(self, inputs, training=None):
        if not self.quantize_active:
            return inputs
        return fake_quant_activation(
            inputs,
            self.min,
            self.max,
            self.initialized,
            training is True and not self.ranges_frozen,
            self.momentum,
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum}


class _WeightQuantMixin:
    """Conv/Dense subclass whose forward pass fake-quantizes its kernel."""

    weight_rule = None

    def call(self, inputs):
        return weight_forward(
            self,
            self.weight_rule,
            inputs,
            getattr(self, "quantize_active", True),
        )


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
class QuantizedDense(_WeightQuantMixin, keras.layers.Dense):
    """`keras.layers.Dense` with int8 per-tensor fake-quantized kernel."""

    weight_rule = "dense"


QUANTIZED_CLASSES = {
    keras.layers.Conv1D: QuantizedConv1D,
    keras.layers.Conv2D: QuantizedConv2D,
    keras.layers.DepthwiseConv2D: QuantizedDepthwiseConv2D,
    keras.layers.Dense: QuantizedDense,
}
_RULES[QuantizedConv1D] = "conv"
_RULES[QuantizedConv2D] = "conv"
_RULES[QuantizedDepthwiseConv2D] = "depthwise"
_RULES[QuantizedDense] = "dense"
_RULES[FakeQuant] = "quantizer"


# ------------------------------------------------- placement while tracing


class _Scope:
    """Tensors whose quantization is pending during one forward pass."""

    def __init__(self, training):
        self.training = training
        self.pending = {}  # id(tensor) -> (tensor, producer rule, quantize)
        self.done = {}  # id(tensor) -> (tensor, quantized tensor)

    def defer(self, tensor, rule, quantize):
        self.pending[id(tensor)] = (tensor, rule, quantize)

    def producer(self, tensor):
        entry = self.pending.get(id(tensor))
        return entry[1] if entry and entry[0] is tensor else None

    def materialize(self, structure):
        def one(t):
            key = id(t)
            done = self.done.get(key)
            if done is not None and done[0] is t:
                return done[1]
            entry = self.pending.get(key)
            if entry is None or entry[0] is not t:
                return t
            q = entry[2](t)
            self.done[key] = (t, q)
            return q

        return keras.tree.map_structure(one, structure)


_local = threading.local()


def current_scope():
    return getattr(_local, "scope", None)


@contextlib.contextmanager
def scope(training, new=False):
    """Open a placement scope (reuse the enclosing one unless `new`)."""
    outer = current_scope()
    if outer is not None and not new:
        yield outer
        return
    inner = _Scope(training)
    _local.scope = inner
    try:
        yield inner
    finally:
        _local.scope = outer


def place(rule, layer, args, run, quantize_output):
    """Run one layer under its rule inside the current scope.

    `run(args)` computes the layer's output; `quantize_output(t)` returns
    `t` fake-quantized with this layer's output range.
    """
    sc = current_scope()
    if sc is None or rule == "quantizer":
        return run(args)
    if rule == "batchnorm":
        fused = all(
            sc.producer(t) in _WEIGHT_RULES for t in keras.tree.flatten(args)
        )
        if not fused:
            args = sc.materialize(args)
    elif rule == "concat":
        fused = all(
            sc.producer(t) in _CONCAT_PRODUCERS
            for t in keras.tree.flatten(args)
        )
        if not fused:
            args = sc.materialize(args)
    elif rule == "activation":
        fused = all(
            sc.producer(t) in _FUSING_PRODUCERS
            for t in keras.tree.flatten(args)
        )
        if not fused:
            args = sc.materialize(args)
    else:
        args = sc.materialize(args)
    outputs = run(args)
    if rule == "skip":
        return outputs
    mode = output_mode(layer, rule)
    if not keras.ops.is_tensor(outputs) and not isinstance(
        outputs, keras.KerasTensor
    ):
        return outputs  # several outputs: left as they are
    if mode == "quantize":
        return quantize_output(outputs)
    if mode == "pending":
        sc.defer(outputs, rule, quantize_output)
    return outputs


# ---------------------------------------------------- in-place patching

# Model (weak) -> ModelPatch, for models made quantization-aware in place.
PATCHES = weakref.WeakKeyDictionary()

SAVE_REFUSAL = (
    "Model {name!r} was made quantization-aware in place by "
    "`keras_slim.callbacks.QuantizationAwareTraining`: its learned int8 "
    "ranges live outside its layers, so `model.save`, "
    "`keras.saving.save_model` and `save_weights` cannot store them and "
    "would silently write a float model. Call "
    "`keras_slim.quantization.quantize_model(model)` to get an equivalent "
    "model with serializable fake-quant layers that carry the learned "
    "ranges, and save that one; or export the int8 file directly with "
    "`keras_slim.export_tflite(model, filepath)`."
)


def walk(model):
    """Yield `(path, layer, is_model)` for all sub-layers, depth first."""
    for path, layer in iter_layers(model, models=True):
        yield path, layer, isinstance(layer, keras.Model)


def plan(model, predicate):
    """Return `[(path, layer, rule)]` for the leaf layers of `model`.

    Layers not selected by `predicate` get the rule "skip". Raises a
    `ValueError` naming the first layer type that has no rule.
    """
    rows = []
    for path, layer, is_model in walk(model):
        if is_model:
            continue
        rule = layer_rule(layer)
        selected = predicate(path, layer)
        if rule is None and selected:
            cls = type(layer).__name__
            raise ValueError(
                f"Layer {path!r} of type `{cls}` has no int8 quantization "
                "rule. Skip it with `filters` (for example "
                f"`filters=lambda layer: not isinstance(layer, {cls})`; it "
                "then stays float and exports only with "
                "`allow_float_fallback=True`), or give its class a rule "
                "with `keras_slim.quantization.register_quantization_rule("
                f"{cls}, rule)`, rule being one of {list(RULES)}."
            )
        rows.append((path, layer, rule if selected else "skip"))
    return rows


class ModelPatch:
    """The in-place changes made to one model, and its range variables."""

    def __init__(self, model, rows):
        self.model = model
        self.rows = rows
        self.quantizers = {}  # path -> RangeQuantizer
        self.bn_layers = []
        self.bn_frozen = False
        self.active = True
        self.frozen = False
        self.input_quantizer = RangeQuantizer("input")
        self.originals = []
        self.start_step = 0

    def all_quantizers(self):
        return [self.input_quantizer, *self.quantizers.values()]

    def set_state(self, active, frozen, bn_frozen):
        self.active, self.frozen, self.bn_frozen = active, frozen, bn_frozen
        for q in self.all_quantizers():
            q.active, q.frozen = active, frozen

    def learned(self):
        return any(
            float(keras.ops.convert_to_numpy(q.initialized)) > 0
            for q in self.all_quantizers()
        )


def _training_of(original_call, args, kwargs):
    import inspect

    if "training" in kwargs:
        return kwargs["training"]
    try:
        bound = inspect.signature(original_call).bind_partial(*args, **kwargs)
    except TypeError:
        return None
    return bound.arguments.get("training")


def patch_model(model, rows):
    """Make `model` quantization-aware in place (see module docstring).

    Overrides the instance attribute `call` of the model, of its nested
    models and of its leaf layers (their classes are untouched), and
    `save`/`save_own_variables` of the model so that saving refuses.
    """
    patch = ModelPatch(model, rows)
    symbolic = (keras.KerasTensor,)

    def is_symbolic(args):
        return any(isinstance(t, symbolic) for t in keras.tree.flatten(args))

    for path, layer, rule in rows:
        original = layer.call
        if isinstance(layer, keras.layers.BatchNormalization):
            patch.bn_layers.append(layer)
        quantizer = None
        if output_mode(layer, rule) != "none" and rule != "skip":
            quantizer = RangeQuantizer(path.replace("/", "_"))
            patch.quantizers[path] = quantizer
        layer.call = _make_layer_call(
            patch, layer, rule, original, quantizer, is_symbolic
        )
        patch.originals.append((layer, original))

    for path, sub, is_model in walk(model):
        if is_model:
            original = sub.call
            sub.call = _make_submodel_call(original, is_symbolic)
            patch.originals.append((sub, original))

    original = model.call

    def call(*args, **kwargs):
        if is_symbolic(args):
            return original(*args, **kwargs)
        training = _training_of(original, args, kwargs) is True
        with scope(training, new=True) as sc:
            if patch.active and args:
                first = keras.tree.map_structure(
                    lambda t: patch.input_quantizer(t, training), args[0]
                )
                args = (first, *args[1:])
            outputs = original(*args, **kwargs)
            return sc.materialize(outputs)

    model.call = call
    patch.originals.append((model, original))

    def refuse(*args, **kwargs):
        raise ValueError(SAVE_REFUSAL.format(name=model.name))

    model.save = refuse
    model.save_own_variables = refuse
    model.save_weights = refuse
    PATCHES[model] = patch
    return patch


def _make_submodel_call(original, is_symbolic):
    def call(*args, **kwargs):
        sc = current_scope()
        if sc is None or is_symbolic(args):
            return original(*args, **kwargs)
        args = sc.materialize(args)
        return sc.materialize(original(*args, **kwargs))

    return call


def _make_layer_call(patch, layer, rule, original, quantizer, is_symbolic):
    weighted = rule in _WEIGHT_RULES

    def call(*args, **kwargs):
        if is_symbolic(args) or current_scope() is None:
            return original(*args, **kwargs)
        if patch.bn_frozen and isinstance(
            layer, keras.layers.BatchNormalization
        ):
            kwargs = {**kwargs, "training": False}
        if not patch.active:
            return original(*args, **kwargs)
        sc = current_scope()

        def run(new_args):
            if weighted:
                return weight_forward(layer, rule, new_args[0], True)
            return original(*new_args, **kwargs)

        def quantize_output(t):
            return quantizer(t, sc.training)

        return place(rule, layer, args, run, quantize_output)

    return call
