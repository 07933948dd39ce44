"""Quantization-aware training: simulate int8 in `model.fit`, export an
all-int8 TFLite file that agrees with the Keras model.

- `QuantizationAwareTraining`: the `model.fit` callback (in place).
- `quantize_model`: a new model with serializable fake-quant layers, for
  saving, reloading and resuming quantization-aware training.
- `is_quantization_aware`: whether a model carries learned int8 ranges.
- `error_report`: a quantized file's error at each layer's output.
- `select_precision`: an int8 file that keeps its most sensitive layers in
  int16 (or float), as few as reach a target agreement.
- `register_quantization_rule`: deprecated, use
  `keras_slim.catalogue.register_layer`.
"""

import warnings

import keras

from keras_slim import _layers
from keras_slim import _validation
from keras_slim import catalogue
from keras_slim.quantization import _in_place
from keras_slim.quantization import _recurrent_twins  # noqa: F401 - twins
from keras_slim.quantization import _twins
from keras_slim.quantization._error_report import ErrorReport
from keras_slim.quantization._error_report import LayerError
from keras_slim.quantization._error_report import error_report
from keras_slim.quantization._selective import SelectionReport
from keras_slim.quantization._selective import select_precision
from keras_slim.quantization.model import quantize_model
from keras_slim.quantization.qat import QuantizationAwareTraining

# Public here; their docstring examples run here.
for _name in (
    ErrorReport,
    LayerError,
    SelectionReport,
    error_report,
    select_precision,
):
    _name.__module__ = __name__
del _name

__all__ = [
    "ErrorReport",
    "LayerError",
    "QuantizationAwareTraining",
    "SelectionReport",
    "error_report",
    "select_precision",
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
    return any(
        isinstance(layer, _twins.FakeQuant)
        and layer.built
        and float(keras.ops.convert_to_numpy(layer.initialized)) > 0
        for layer in _layers.leaf_layers(model)
    )


def register_quantization_rule(layer_class, rule):
    """Deprecated: use `keras_slim.catalogue.register_layer(layer_class,
    quantization=rule)`, which teaches a layer class to every capability.

    Kept so that existing scripts keep working; it warns with a
    `DeprecationWarning` and forwards to `register_layer`.

    Args:
        layer_class: A `keras.layers.Layer` subclass.
        rule: One of `"output"`, `"passthrough"`, `"activation"`, `"add"`,
            `"skip"` (see `keras_slim.catalogue.register_layer`).

    Raises:
        TypeError: if `layer_class` is not a Keras layer class.
        ValueError: if `rule` is not one of the above.

    Example:

    >>> import warnings
    >>> class Triple(keras.layers.Layer):
    ...     def call(self, x):
    ...         return x * 3.0
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     register_quantization_rule(Triple, "output")
    >>> caught[0].category.__name__
    'DeprecationWarning'
    >>> from keras_slim.catalogue import quantization_rule_of
    >>> quantization_rule_of(Triple)
    'output'
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
    warnings.warn(
        "`keras_slim.quantization.register_quantization_rule` is deprecated: "
        "use `keras_slim.catalogue.register_layer(layer_class, "
        "quantization=rule)`.",
        DeprecationWarning,
        stacklevel=2,
    )
    catalogue.register_layer(layer_class, quantization=rule)
