"""How each layer takes part in int8 simulation (its quantization rule).

A rule says how a layer takes part in int8 simulation:
  "conv", "depthwise", "dense": weights fake-quantized; output pending
      unless the layer's own activation is not linear.
  "batchnorm": fuses with a pending convolution/Dense output; output
      pending.
  "activation": ReLU-like, fused by the converter into the op before it;
      output pending (quantized by its first consumer that needs it).
  "add": inputs quantized; output pending (a ReLU after it fuses).
  "concat": pending inputs take the output's range; output quantized.
  "output": inputs quantized; output quantized (averaging pools,
      Softmax, any element-wise op without weights).
  "passthrough": inputs quantized; the output keeps the input's range
      (MaxPooling, Flatten, Reshape, Dropout, padding, cropping).
  "quantizer": a keras_slim fake-quant layer (already quantized).
  "skip": left in float (the layer is called unchanged).
"""

import keras

from keras_slim import catalogue
from keras_slim._layers import iter_layers

# The rules a layer class can be given (the catalogue's list, less
# "quantizer", which only keras_slim's own FakeQuant has).
RULES = tuple(r for r in catalogue.QUANTIZATION_RULES if r != "quantizer")
WEIGHT_RULES = ("conv", "depthwise", "dense")
FUSING_PRODUCERS = (*WEIGHT_RULES, "batchnorm", "add")
# Concatenation runs in int8 with one scale for its inputs and output: the
# converter gives the inputs the output's range, so they are not quantized
# on their own.
CONCAT_PRODUCERS = (*FUSING_PRODUCERS, "activation")
_FUSED_ACTIVATIONS = ("relu", "relu6")

_L = keras.layers
# keras_slim's own quantization-aware layers (`_twins`); every other class
# takes its rule from `keras_slim.catalogue`.
_OWN_RULES = {}


def register_own_rule(layer_class, rule):
    """Give one of keras_slim's own layer classes its rule."""
    _OWN_RULES[layer_class] = rule


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
    for known, rule in _OWN_RULES.items():
        if cls is known or (rule == "quantizer" and isinstance(layer, known)):
            return rule
    return catalogue.quantization_rule_of(cls)


def output_mode(layer, rule):
    """'pending', 'quantize' or 'none' for the output of `layer`."""
    if rule in WEIGHT_RULES:
        name = activation_name(layer.activation)
        return "pending" if name == "linear" else "quantize"
    if rule in ("batchnorm", "add", "activation"):
        return "pending"
    if rule in ("output", "concat"):
        return "quantize"
    return "none"


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
                "with `keras_slim.catalogue.register_layer("
                f"{cls}, quantization=rule)`, rule being one of "
                f"{list(RULES)}."
            )
        rows.append((path, layer, rule if selected else "skip"))
    return rows


def check_filters_matched(rows, filters, model):
    """Refuse `filters` that leave every layer out."""
    if filters is not None and all(rule == "skip" for _, _, rule in rows):
        raise ValueError(
            f"`filters` matched no layer of model {model.name!r}: nothing "
            f"would be quantized. Received: filters={filters!r}"
        )
