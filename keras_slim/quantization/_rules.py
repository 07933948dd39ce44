"""How each layer takes part in int8 simulation (its quantization rule).

A rule says how a layer takes part in int8 simulation:
  "conv", "depthwise", "separable", "transpose", "dense", "einsum": weights
      fake-quantized (a transposed convolution's kernel per output
      channel, its axis -2);
      output pending unless the layer's own activation is not linear (a
      separable convolution's depthwise output gets a range of its own).
  "batchnorm": fuses with a pending convolution/Dense output; output
      pending.
  "activation": ReLU-like, fused by the converter into the op before it;
      output pending (quantized by its first consumer that needs it).
  "add": inputs quantized; output pending (a ReLU after it fuses).
  "concat": pending inputs take the output's range; output quantized.
  "output": inputs quantized; output quantized (global averaging pools,
      Softmax, any element-wise op without weights).
  "affine": `Rescaling`, `Normalization`: an int8 MUL by the scale whose
      product has a range, then an int8 ADD of the offset; output
      quantized. ConvNeXt's `LayerScale` (a MUL only): output quantized.
  "layernorm": `LayerNormalization` as the int8 ops MEAN, SUB, MUL, MEAN,
      ADD, RSQRT, MUL (and MUL by gamma, ADD of beta), each output with a
      range of its own (`LAYERNORM_STEPS`); output quantized.
  "groupnorm": `GroupNormalization` as the LayerNormalization ops on its
      input reshaped into groups (RESHAPE keeps the scale), reshaped back,
      then MUL by gamma, ADD of beta; same ranges; output quantized.
  "unitnorm": `UnitNormalization` as MUL (x * x), SUM, RSQRT, MUL
      (`UNITNORM_STEPS`); output quantized.
  "rmsnorm": `RMSNormalization` as MUL (x * x), MEAN, ADD, RSQRT, MUL,
      MUL by its scale (`RMSNORM_STEPS`); output quantized.
  "embedding": the table fake-quantized per tensor (symmetric, as a Dense
      kernel) and looked up by an int8 GATHER, whose output keeps the
      table's scale: no range of its own. Its integer inputs are never
      quantized.
  "attention": `MultiHeadAttention` as its int8 file runs it (projections,
      MUL by 1/sqrt(key_dim), BATCH_MATMUL, SOFTMAX, BATCH_MATMUL, output
      projection; `_attention`), each inner tensor with a range of its
      own; output quantized.
  "recurrent": `LSTM`, `GRU`, `SimpleRNN` (and `Bidirectional` over
      them) unrolled as their int8 file runs them (`_recurrent`): each
      gate's matmuls, sums and products with ranges of their own, shared
      by every time step; the new state's range is the output's (a
      `Bidirectional` concatenation's output quantized).
  "passthrough": inputs quantized; the output keeps the input's range
      (MaxPooling, Flatten, Reshape, Dropout, padding, cropping; and
      `AveragePooling1D`/`2D`, whose int8 AVERAGE_POOL_2D needs its output
      on its input's scale: a range of its own made the converter
      requantize after the pool, or refuse the model with a
      `Concatenate` after it, as in DenseNet's transitions. The output is
      not rounded to that range in Keras: an average of four values on
      the grid sits on a rounding tie once in four, which float noise
      decides differently on each backend).
  "quantizer": a keras_slim fake-quant layer (already quantized).
  "skip": left in float (the layer is called unchanged).
"""

import keras

from keras_slim import _layers
from keras_slim import catalogue
from keras_slim._layers import iter_layers
from keras_slim.quantization import _attention
from keras_slim.quantization import _quantizers
from keras_slim.quantization import _recurrent

# The rules a layer class can be given (the catalogue's list, less
# "quantizer", which only keras_slim's own FakeQuant has).
RULES = tuple(r for r in catalogue.QUANTIZATION_RULES if r != "quantizer")
WEIGHT_RULES = (
    "conv",
    "depthwise",
    "separable",
    "transpose",
    "dense",
    "einsum",
)
# BatchNormalization folds into a convolution (per output channel); after a
# Dense (quantized per tensor) or anything else it runs as int8 MUL and ADD.
CONV_RULES = ("conv", "depthwise", "separable", "transpose")
FUSING_PRODUCERS = (*WEIGHT_RULES, "batchnorm", "add")
# Concatenation runs in int8 with one scale for its inputs and output: the
# converter gives the inputs the output's range, so they are not quantized
# on their own.
CONCAT_PRODUCERS = (*FUSING_PRODUCERS, "activation", "recurrent")
_FUSED_ACTIVATIONS = ("relu", "relu6")
# Activations that run as an int8 op of their own (the fixed-range ones
# included); any other activation has no int8 kernel here. Not "elu"
# (TensorFlow's converter keeps ELU float) nor "hard_sigmoid" (traced as
# ADD and MUL whose inner tensor would need a range): listed, they passed
# the check before training and the export refused the file after it.
_OWN_OP_ACTIVATIONS = (
    "softmax",
    "sigmoid",
    "tanh",
    "swish",
    "silu",
    "hard_swish",
    "hard_silu",
    "gelu",
    "leaky_relu",
)

_L = keras.layers
# keras_slim's own quantization-aware layers (`_twins`); every other class
# takes its rule from `keras_slim.catalogue`.
_OWN_RULES = {}


def register_own_rule(layer_class, rule):
    """Give one of keras_slim's own layer classes its rule."""
    _OWN_RULES[layer_class] = rule


def is_float(t):
    """Whether tensor `t` holds floating values (else ids, masks, ...)."""
    return "float" in str(keras.backend.standardize_dtype(t.dtype))


def records_bias(layer, rule):
    """Whether a BatchNormalization can fold into `layer` (a channels-last
    convolution with a linear activation), so its bias is recorded."""
    return (
        rule in ("conv", "depthwise", "separable", "transpose")
        and layer.data_format == "channels_last"
        and activation_name(layer.activation) == "linear"
    )


def activation_name(activation):
    """The registered name of an activation function, or "custom"."""
    if activation is None:
        return "linear"
    try:
        name = keras.activations.serialize(activation)
    except Exception:  # noqa: BLE001 - a custom callable
        return "custom"
    if isinstance(name, dict):
        name = name.get("config", name.get("class_name"))
    return name if isinstance(name, str) else "custom"


def layer_rule(layer):
    """Return the rule of `layer`, or `None` when it has none."""
    cls = type(layer)
    if cls is _L.Activation:
        name = activation_name(layer.activation)
        if name in _FUSED_ACTIVATIONS:
            return "activation"
        return "passthrough" if name == "linear" else "output"
    if cls is _L.ReLU:
        plain = (
            float(layer.negative_slope) == 0.0
            and float(layer.threshold) == 0.0
            and layer.max_value in (None, 6.0, 6)
        )
        return "activation" if plain else "output"
    if cls is _L.LayerNormalization and getattr(layer, "rms_scaling", 0):
        return None  # Keras's deprecated RMS branch: not modelled
    for known, rule in _OWN_RULES.items():
        if cls is known or (rule == "quantizer" and isinstance(layer, known)):
            return rule
    return catalogue.quantization_rule_of(cls)


# Rules whose layers compute an inner tensor that needs a range: a
# standalone BatchNorm's or an affine layer's product, a separable
# convolution's depthwise output.
INNER_RULES = ("batchnorm", "affine", "separable")
# The inner tensors of a LayerNormalization, in the order computed
# (`_layernorm.forward`): the output of each int8 op but the last.
LAYERNORM_STEPS = (
    "mean",
    "centered",
    "square",
    "variance",
    "shifted_variance",
    "rsqrt",
    "normalized",
    "scaled",
)


# The inner tensors of an RMSNormalization (`_layernorm.rms_forward`).
RMSNORM_STEPS = (
    "square",
    "variance",
    "shifted_variance",
    "rsqrt",
    "normalized",
)


# The inner tensors of a UnitNormalization (`_layernorm.unit_forward`).
UNITNORM_STEPS = ("square", "sum", "rsqrt")


def inner_names(layer, rule):
    """The names of the inner tensors of `layer` that get ranges of their
    own (the last op's output is the layer's output and has its range)."""
    if rule == "rmsnorm":
        return RMSNORM_STEPS
    if rule == "unitnorm":
        return UNITNORM_STEPS
    if rule in ("layernorm", "groupnorm"):
        ops_after = int(bool(layer.scale)) + int(bool(layer.center))
        return LAYERNORM_STEPS[: len(LAYERNORM_STEPS) - 2 + ops_after]
    if rule == "attention":
        return _attention.STEPS
    if rule == "recurrent":
        return _recurrent.steps(layer)
    if rule == "affine" and not _quantizers.has_offset(layer):
        return ()
    return ("inner",) if rule in INNER_RULES else ()


def splits_activation(layer, rule):
    """Whether a weight layer's own activation runs as an op of its own
    (its input then needs a range of its own)."""
    if rule not in WEIGHT_RULES or not hasattr(layer, "activation"):
        return False
    name = activation_name(layer.activation)
    return name not in ("linear", *_FUSED_ACTIVATIONS)


def fixed_range(layer, rule):
    """The fixed `(min, max)` output range of `layer`, or `None`."""
    if rule in WEIGHT_RULES or type(layer) is _L.Activation:
        name = activation_name(layer.activation)
        return _quantizers.FIXED_RANGES.get(name)
    if type(layer) is _L.Softmax:
        return _quantizers.FIXED_RANGES["softmax"]
    if not isinstance(layer, _L.Layer):  # a keras.ops node
        return _quantizers.FIXED_RANGES.get(type(layer).__name__.lower())
    return None


# The attributes a rule computes the layer with (its Keras class has them).
_COMPUTES_WITH = {
    "layernorm": ("axis", "epsilon", "gamma", "beta", "scale", "center"),
    "groupnorm": (
        "axis",
        "groups",
        "epsilon",
        "gamma",
        "beta",
        "scale",
        "center",
    ),
    "rmsnorm": ("axis", "epsilon", "scale"),
    "unitnorm": ("axis",),
    "embedding": ("embeddings",),
    "einsum": ("equation", "kernel", "bias", "activation"),
    "attention": ("query_dense", "key_dense", "value_dense", "output_dense"),
    "recurrent": ("return_sequences",),
}


def unsupported_reason(layer, rule):
    """Why QAT cannot quantize `layer` (its rule given), or `None`."""
    if rule is None and getattr(layer, "rms_scaling", False):
        return (
            "uses `rms_scaling=True` (deprecated; use "
            "`keras.layers.RMSNormalization`), which has no int8 rule"
        )
    if rule is None:
        why = dict(catalogue.UNSUPPORTED).get(type(layer))
        if why is not None:  # deliberately unsupported, with the reason
            return f"has no int8 quantization rule ({why})"
        return "has no int8 quantization rule in the catalogue"
    missing = [a for a in _COMPUTES_WITH.get(rule, ()) if not hasattr(layer, a)]
    if missing:  # a custom class registered with a Keras class's rule
        return (
            f"has the rule {rule!r}, whose int8 computation reads the "
            f"attributes {missing}, which it lacks"
        )
    if rule == "attention":
        return _attention.unsupported_reason(layer)
    if rule == "recurrent":
        return _recurrent.unsupported_reason(layer)
    activation = getattr(layer, "activation", None)
    if rule in (*WEIGHT_RULES, "output") and activation is not None:
        name = activation_name(activation)
        if name not in ("linear", *_FUSED_ACTIVATIONS, *_OWN_OP_ACTIVATIONS):
            return (
                f"has activation {name!r}, which has no int8 TFLite "
                "kernel that keras_slim places ranges for"
            )
    return None


def output_mode(layer, rule):
    """'pending', 'quantize' or 'none' for the output of `layer`."""
    if rule == "recurrent":
        if _recurrent.kind(layer) == "Bidirectional":
            return "quantize"  # the concatenation of its directions
        return "pending" if _recurrent.final_output_pending(layer) else "none"
    if rule in WEIGHT_RULES:
        name = activation_name(layer.activation)
        return "pending" if name == "linear" else "quantize"
    if rule in ("batchnorm", "add", "activation"):
        return "pending"
    if rule in (
        "output",
        "concat",
        "affine",
        "layernorm",
        "groupnorm",
        "rmsnorm",
        "unitnorm",
        "attention",
    ):
        return "quantize"
    return "none"


# `keras.ops` calls on symbolic tensors become nodes of a Functional graph
# (MobileNetV3's hard-swish `x * relu6(x + 3) / 6`): rules by op class.
_OP_RULES = {
    "Add": "add",
    "Subtract": "add",
    "Relu": "activation",
    "Relu6": "activation",
    **dict.fromkeys(
        "Multiply Divide TrueDivide Maximum Minimum Sigmoid Tanh Softmax "
        "HardSigmoid HardSilu Silu Gelu Mean Square".split(),
        "output",
    ),
    **dict.fromkeys("Reshape ExpandDims Squeeze".split(), "passthrough"),
    # Boolean results (`Embedding(mask_zero=True)`'s mask): nothing to
    # quantize.
    **dict.fromkeys(
        "NotEqual Equal Greater GreaterEqual Less LessEqual LogicalAnd "
        "LogicalOr LogicalNot".split(),
        "skip",
    ),
}


def op_rows(model):
    """`[(path, op, rule)]` for the `keras.ops` nodes of the graph of
    `model` and of its nested graph models; refuses those with no rule."""
    rows, refused = [], []
    graphs = [("", model)]
    graphs += [(p, sub) for p, sub, is_model in walk(model) if is_model]
    for prefix, graph in graphs:
        if isinstance(graph, keras.Sequential):
            continue  # every node of a Sequential model is a layer
        if not _layers.is_graph_model(graph):
            continue
        for op in graph.operations:
            if isinstance(op, keras.layers.Layer):
                continue
            path = f"{prefix}/{op.name}" if prefix else op.name
            rule = _OP_RULES.get(type(op).__name__)
            if rule is None:
                reason = "is a `keras.ops` node with no int8 rule"
                refused.append((path, type(op).__name__, reason))
            rows.append((path, op, rule))
    if refused:
        raise ValueError(_refusal(refused))
    return rows


def shared_outputs(model):
    """Ids of the layers whose output feeds more than one consumer in the
    graph of `model` (or of a nested Sequential/Functional model): the
    converter can fuse nothing into such an output, so it is quantized.

    Identical fusing activations of one tensor (NASNet applies five
    `Activation("relu")` to its stem's BatchNormalization) count as one
    consumer: TensorFlow merges them into one RELU before the converter,
    which fuses it into the convolution (one rounding, at the ReLU's range;
    their ranges are equal, as they see the same values)."""
    shared = set()
    models = [model] + [sub for _, sub, is_model in walk(model) if is_model]
    for graph in models:
        if not _layers.is_graph_model(graph):
            continue
        consumers = {}
        for t in keras.tree.flatten(graph.outputs):
            consumers.setdefault(id(t), []).append(None)  # the output
        for layer in graph.layers:
            try:
                inputs = keras.tree.flatten(layer.input)
            except (AttributeError, ValueError):  # shared or not called
                continue
            for t in inputs:
                consumers.setdefault(id(t), []).append(layer)
        for layer in graph.layers:
            try:
                output = layer.output
            except (AttributeError, ValueError):
                continue
            found = consumers.get(id(output), [])
            kinds = {_fusing_activation_kind(c) for c in found}
            if len(found) > 1 and (len(kinds) > 1 or None in kinds):
                shared.add(id(layer))
    return shared


def _fusing_activation_kind(layer):
    """What identifies a fusing activation layer for TensorFlow's merging
    of identical ops (its class and config but its name), else `None`."""
    if layer is None or layer_rule(layer) != "activation":
        return None
    try:
        config = layer.get_config()
    except Exception:  # noqa: BLE001 - a layer with no config
        return None
    # Not its name, nor its dtype policy: serialized while Keras loads a
    # model, a policy shared by the layers carries a sharing id that
    # differs from one layer to the next.
    config = {
        k: v
        for k, v in config.items()
        if k not in ("name", "dtype", "trainable")
    }
    return type(layer).__name__ + repr(sorted(config.items()))


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
    refused = []
    masked = _mask_consumers(model)
    for path, layer, is_model in walk(model):
        if is_model:
            continue
        rule = layer_rule(layer)
        selected = predicate(path, layer)
        reason = unsupported_reason(layer, rule)
        if reason is None and id(layer) in masked and rule != "recurrent":
            # (A recurrent layer's rule computes its mask: SELECT_V2.)
            reason = (
                "is called with a Keras mask (from `Embedding(mask_zero="
                "True)` or `Masking`): its masked computation runs as "
                "float ops in the int8 file (CAST, SUM, DIV for a masked "
                "average), which keras_slim does not place ranges for"
            )
        if reason is not None and selected:
            refused.append((path, type(layer).__name__, reason))
        rows.append((path, layer, rule if selected else "skip"))
    if refused:
        raise ValueError(_refusal(refused))
    return rows


def _mask_consumers(model):
    """`id`s of the layers a graph model (or a nested one) calls with a
    `mask` argument: they compute with it (a masked pooling)."""
    found = set()
    graphs = [model, *(sub for _, sub, is_model in walk(model) if is_model)]
    for graph in graphs:
        if not _layers.is_graph_model(graph):
            continue
        try:
            operations = graph.operations
        except AttributeError:  # a Sequential model not built as a graph
            continue
        for op in operations:
            for node in getattr(op, "_inbound_nodes", ()):
                mask = node.arguments.kwargs.get("mask")
                if isinstance(mask, keras.KerasTensor):
                    found.add(id(op))
    return found


def _refusal(refused):
    lines = "\n".join(
        f"  - {path!r} of type `{cls}` {reason}"
        for path, cls, reason in refused
    )
    cls = refused[0][1]
    return (
        f"Quantization-aware training cannot quantize {len(refused)} "
        f"layer(s) of this model:\n{lines}\n"
        "Skip them with `filters` (for example "
        f"`filters=lambda layer: not isinstance(layer, {cls})`; they then "
        "stay float and export only with `allow_float_fallback=True`), or "
        "give a custom class a rule with "
        "`keras_slim.catalogue.register_layer(cls, quantization=rule)`, "
        f"rule being one of {list(RULES)}."
    )


def check_filters_matched(rows, filters, model):
    """Refuse `filters` that leave every layer out."""
    if filters is not None and all(rule == "skip" for _, _, rule in rows):
        raise ValueError(
            f"`filters` matched no layer of model {model.name!r}: nothing "
            f"would be quantized. Received: filters={filters!r}"
        )
