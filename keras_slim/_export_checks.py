"""Checks of `export_tflite` around the quantizer: which route and
per-layer precisions fit the other arguments (before any work), and
whether the converted file is as integer as asked (after conversion,
naming the Keras layer each float op came from)."""

from keras_slim import _layers
from keras_slim import _litert_quantizer
from keras_slim import _tensor_names
from keras_slim import _validation

CALIBRATED = ("int8", "int16x8")
_CALIBRATED = CALIBRATED

# Float ops the converter cannot quantize (`tfl.neg` and `tfl.square` are
# float-only in its op definitions), that a model can avoid, and how.
# Keras's LayerNormalization and RMSNormalization are rewritten at export
# (`_export_rewrites`); these hints are for the same ops written by hand.
_NO_INT8_KERNEL = {
    "NEG": "The TFLite converter cannot quantize NEG (its NEG op takes "
    "float32, int32 and int64 only): write `-x` as `x * -1.0`, or "
    "`b - a` for `-a + b`",
    "SQUARE": "The TFLite converter cannot quantize SQUARE (its SQUARE op "
    "is float only): write `ops.square(x)` as `x * x`",
}


def check_quantizer(model, options, quantizers):
    quantizer = options["quantizer"]
    _validation.check_choice("quantizer", quantizer, quantizers)
    precision = options["layer_precision"]
    if quantizer == "litert":
        if options["quantization"] not in _CALIBRATED:
            raise ValueError(
                "`quantizer='litert'` quantizes to 'int8' or 'int16x8'. "
                f"Received: quantization={options['quantization']!r}"
            )
        for name in ("io_dtype", "sparse"):
            if options[name] not in ("float32", "int8", False):
                raise ValueError(
                    f"`quantizer='litert'` does not support "
                    f"`{name}={options[name]!r}`; use `quantizer="
                    f"'converter'`. Received: {name}={options[name]!r}"
                )
        _litert_quantizer.require()
    if precision is None:
        return
    if quantizer != "litert":
        raise ValueError(
            "`layer_precision` needs `quantizer='litert'` (the converter "
            f"has no per-layer precision). Received: quantizer={quantizer!r}"
        )
    _validation.check_type("layer_precision", precision, dict, "a dict")
    names = {layer.name for _, layer in _layers.iter_layers(model)}
    for name, value in precision.items():
        if name not in names:
            raise ValueError(
                "Expected the keys of `layer_precision` to be layer names "
                f"of `model`. Received: {name!r}, not a layer of "
                f"{model.name!r}"
            )
        _validation.check_choice(
            f"layer_precision[{name!r}]", value, ("int16x8", "float32")
        )


def check_integer(model, info, options):
    """Refuse a file that keeps float ops when an integer one was asked
    for, naming the Keras layer each float op came from."""
    quantization = options["quantization"]
    precisions = set((options["layer_precision"] or {}).values())
    if (
        quantization not in _CALIBRATED
        or options["allow_float_fallback"]
        or "float32" in precisions
    ):
        return
    wanted_int8 = quantization == "int8" and "int16x8" not in precisions
    if info.int8_only or (info.integer_only and not wanted_int8):
        return
    if info.integer_only:  # int16 activations in an int8 file
        raise ValueError(
            "The int8 conversion of `model` has int16 activations "
            f"({info.activation_dtypes}). Nothing was written."
        )
    names = {layer.name for _, layer in _layers.iter_layers(model)}
    found = []
    for op in info.float_ops or sorted(info.ops):
        layer = _tensor_names.producer(info.float_op_tensors.get(op), names)
        found.append(f"{op} (layer {layer!r})" if layer else op)
    kinds = sorted({op.split(":")[0] for op in info.float_ops})
    hints = "".join(
        f" {_NO_INT8_KERNEL[kind]}."
        for kind in kinds
        if kind in _NO_INT8_KERNEL
    )
    raise ValueError(
        f"The {quantization} conversion of `model` kept float ops: "
        + ", ".join(found)
        + f".{hints} Nothing was written. Pass `allow_float_fallback=True` to "
        "accept a mixed file, or keep those layers float explicitly with "
        "`quantizer='litert', layer_precision={name: 'float32'}`."
    )
