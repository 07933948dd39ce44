"""Quantization-aware training: simulate int8 in `model.fit`, export an
all-int8 TFLite file that agrees with the Keras model.

- `QuantizationAwareTraining`: the `model.fit` callback (in place).
- `quantize_model`: a new model with serializable fake-quant layers, for
  saving, reloading and resuming quantization-aware training.
- `is_quantization_aware`: whether a model carries learned int8 ranges.
- `register_quantization_rule`: give a custom layer class a rule.
"""

import keras

from keras_slim import _layers
from keras_slim import _validation
from keras_slim.quantization import _in_place
from keras_slim.quantization import _rules
from keras_slim.quantization import _twins
from keras_slim.quantization.model import quantize_model
from keras_slim.quantization.qat import QuantizationAwareTraining

__all__ = [
    "QuantizationAwareTraining",
    "is_quantization_aware",
    "quantize_model",
    "register_quantization_rule",
]


def is_quantization_aware(model):
    """Return whether `model` carries learned int8 ranges.

    True for a model trained with `QuantizationAwareTraining` (once
    quantization has started) and for a model from `quantize_model` whose
    fake-quant layers have seen training data (or copied learned ranges).
    `keras_slim.export_tflite` then converts it from those ranges, with no
    representative data.

    Args:
        model: A Keras model.

    Returns:
        `bool`.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> is_quantization_aware(model)
    False
    """
    _validation.check_model(model, built=False)
    model = _layers.target_model(model)
    awareness = _in_place.awareness_of(model)
    if awareness is not None:
        return bool(awareness.read_phase()[0] and awareness.learned())
    for layer in _layers.leaf_layers(model):
        if isinstance(layer, _twins.FakeQuant) and layer.built:
            if float(keras.ops.convert_to_numpy(layer.initialized)) > 0:
                return True
    return False


def register_quantization_rule(layer_class, rule):
    """Tell quantization-aware training how to treat a custom layer class.

    Every layer that `QuantizationAwareTraining` or `quantize_model`
    meets needs a rule; a layer class without one is refused with an
    error naming it. Rules apply to the exact class (not subclasses, whose
    `call` may differ). A custom layer with its own weights cannot become
    int8 through a rule: build it from Keras `Conv2D`/`Dense` layers, or
    skip it with `filters` (it then stays float).

    Args:
        layer_class: A `keras.layers.Layer` subclass.
        rule: One of
            `"output"`: an op without weights whose output is a new value
            (its inputs and its output get int8 ranges);
            `"passthrough"`: reshapes or selects values (its output keeps
            the input's range);
            `"activation"`: a ReLU-like op the converter fuses into the
            convolution before it;
            `"add"`: like `"output"`, but a ReLU after it may fuse;
            `"skip"`: leave it float.

    Raises:
        TypeError: if `layer_class` is not a Keras layer class.
        ValueError: if `rule` is not one of the above.

    Example:

    >>> class Double(keras.layers.Layer):
    ...     def call(self, x):
    ...         return x * 2.0
    >>> register_quantization_rule(Double, "output")
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
    ...                           Double()])
    >>> qmodel = quantize_model(model)
    >>> [type(layer).__name__ for layer in qmodel.layers]
    ['InputLayer', 'FakeQuant', 'QuantizedDense', 'FakeQuant', 'Double', \
'FakeQuant']
    """
    if not (
        isinstance(layer_class, type)
        and issubclass(layer_class, keras.layers.Layer)
    ):
        raise TypeError(
            "Expected `layer_class` to be a `keras.layers.Layer` subclass. "
            f"Received: layer_class={layer_class!r}"
        )
    _validation.check_choice(
        "rule", rule, ("output", "passthrough", "activation", "add", "skip")
    )
    _rules.register_rule(layer_class, rule)
