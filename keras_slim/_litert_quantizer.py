"""The LiteRT Quantizer route of `keras_slim.export_tflite`.

The model is converted to a float32 file first (`_convert`), then
quantized by `litert-quantizer` (the renamed ai-edge-quantizer, an
optional extra: `pip install "keras-slim[litert]"`) from the same
representative samples. Facts this module handles (litert-quantizer 0.11,
ai-edge-litert 2.3.0):

- Its static recipes quantize the graph's inputs and outputs too; with
  `io_dtype="float32"` the virtual INPUT and OUTPUT ops are left
  unquantized, so the file takes and returns float32 with a QUANTIZE and
  a DEQUANTIZE at its edges, as the converter's files do.
- It renames the output tensors (`logits` becomes `logits_dequant`);
  `_tflite_file.relabel` puts Keras's names back.
- Its recipes select ops by a regex over their output tensor names (the
  op's "scope"). The converter keeps the Keras layer names in those names
  (`model/relu4_1/Relu;model/bn4_1/...;model/conv4_1/convolution`), so a
  layer name selects every op that computes (part of) that layer.
"""

import contextlib
import copy
import io
import os
import re
import warnings

PACKAGE = "litert-quantizer"
EXTRA = 'pip install "keras-slim[litert]"'
# Per-layer precisions of `layer_precision`.
PRECISIONS = ("int8", "int16x8", "float32")

_ACTIVATION = {
    "int8": {
        "num_bits": 8,
        "symmetric": False,
        "granularity": "TENSORWISE",
        "dtype": "INT",
    },
    # TFLite's 16x8 kernels take symmetric int16 activations.
    "int16x8": {
        "num_bits": 16,
        "symmetric": True,
        "granularity": "TENSORWISE",
        "dtype": "INT",
    },
}


def _weights(granularity="CHANNELWISE"):
    return {
        "num_bits": 8,
        "symmetric": True,
        "granularity": granularity,
        "dtype": "INT",
    }


def require():
    """Return the `litert_quantizer.quantizer` module, or raise
    `ImportError` naming the missing package and how to install it."""
    try:
        from litert_quantizer import quantizer
    except ImportError as e:
        raise ImportError(
            f"`quantizer='litert'` needs the `{PACKAGE}` package (Google's "
            f"LiteRT Quantizer), which is not installed ({e}). Install it "
            f"with `{EXTRA}` (it needs ai-edge-litert 2.3.0), or use "
            "`quantizer='converter'`."
        ) from None
    return quantizer


def available():
    """Whether `litert-quantizer` can be imported."""
    try:
        require()
    except ImportError:
        return False
    return True


def layer_regex(name):
    """A regex selecting the ops whose output tensor names hold Keras
    layer `name` (as `name` or `name_<n>`, the scope TensorFlow adds)."""
    return rf"(^|[/;]){re.escape(name)}(_\d+)?/"


def _entry(regex, precision, per_channel_dense, operation="*"):
    if precision == "float32":
        return {"regex": regex, "operation": operation,
                "algorithm_key": "no_quantize"}  # fmt: skip
    granularity = "CHANNELWISE"
    if operation == "FULLY_CONNECTED" and not per_channel_dense:
        granularity = "TENSORWISE"
    return {
        "regex": regex,
        "operation": operation,
        "algorithm_key": "min_max_uniform_quantize",
        "op_config": {
            "activation_tensor_config": copy.deepcopy(_ACTIVATION[precision]),
            "weight_tensor_config": _weights(granularity),
            "compute_precision": "INTEGER",
            "explicit_dequantize": False,
            "skip_checks": False,
            "min_weight_elements": 0,
        },
    }


def recipe(quantization, io_dtype, per_channel_dense, layer_precision):
    """The quantizer's recipe (JSON-able list) for these options."""
    entries = [_entry(".*", quantization, per_channel_dense)]
    if not per_channel_dense:
        entries.append(
            _entry(".*", quantization, False, operation="FULLY_CONNECTED")
        )
    for name, precision in (layer_precision or {}).items():
        entries.append(_entry(layer_regex(name), precision, per_channel_dense))
    if io_dtype == "float32":
        entries += [
            {"regex": ".*", "operation": op, "algorithm_key": "no_quantize"}
            for op in ("INPUT", "OUTPUT")
        ]
    return entries


def quantize(float_data, sig, samples, options):
    """Quantize the float32 file `float_data` from `samples` (a list of
    arrays, one per input, Keras's order); return the quantized bytes,
    relabeled to Keras's input and output names."""
    from ai_edge_litert.interpreter import Interpreter

    from keras_slim import _convert
    from keras_slim import _tflite_file

    quantizer = require()
    entries = recipe(
        options["quantization"],
        options["io_dtype"],
        options["per_channel_dense"],
        options.get("layer_precision"),
    )
    signatures = Interpreter(model_content=bytes(float_data))
    [key] = list(signatures.get_signature_list())
    calibration = {
        key: [
            {n: s[j : j + 1] for n, s in zip(sig.input_names, samples)}
            for j in range(len(samples[0]))
        ]
    }
    try:
        # It prints a progress bar and a size report, and warns.
        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            q = quantizer.Quantizer(bytearray(float_data), entries)
            qsvs = q.calibrate(calibration, num_threads=os.cpu_count() or 1)
            result = q.quantize(qsvs, enable_progress_report=False)
            data = bytes(result.quantized_model)
    except Exception as e:  # noqa: BLE001 - the quantizer raises many types
        message = " ".join(str(e).strip().splitlines()[:6])
        raise ValueError(
            "The LiteRT Quantizer refused the float file for "
            f"quantization={options['quantization']!r}: "
            f"{type(e).__name__}: {message}. Nothing was written. Try "
            "`quantizer='converter'`."
        ) from None
    return _tflite_file.relabel(
        data,
        sig.input_names,
        sig.output_names,
        sig.input_names,
        sig.output_names,
        _convert.io_metadata(sig),
    )
