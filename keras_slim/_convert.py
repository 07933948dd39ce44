"""The one call to the TFLite converter, for `keras_slim.export_tflite`.

Converter facts this module handles (measured with TensorFlow 2.21):
- Calibrated int8 through `TFLiteConverter.from_concrete_functions` fails
  on Keras 3 models ("READ_VARIABLE failed to invoke"), as does a
  SavedModel of a `tf.function`; `from_keras_model` on a Functional wrapper
  with a fixed batch size converts cleanly. Every path goes through it.
- Only TFLite builtin ops are allowed: `model.export(format="litert")`
  turns on Flex (SELECT_TF_OPS) ops, which a plain phone runtime cannot
  run.
- The file's inputs and outputs come out in the converter's own order (a
  two-output model came out reversed); the wrapper names them `input_i`
  and `output_i` so that `_tflite_file.relabel` can restore Keras's order
  and names from the signature.
- A layer under a mixed precision policy (`mixed_float16`,
  `mixed_bfloat16`) traces float16 ops, which no builtin TFLite kernel
  takes ("'tf.Conv2D' op is neither a custom op nor a flex op", for
  every quantization): such layers compute in float32 while the model is
  converted (`float32_compute`); their variables are float32 already.
- Keras's `LayerNormalization` traces to a NEG op and `RMSNormalization`
  to a SQUARE op, neither of which the converter can quantize; int8
  conversions trace them in equivalent forms without those ops
  (`_export_rewrites`).
"""

import contextlib
import io
import warnings

import keras

from keras_slim import _export_rewrites
from keras_slim import _tflite_file


def _key(kind, i):
    return f"{kind}_{i:03d}"


def wrapper(model, sig, batch_size):
    """A Functional model around `model` with fixed-size inputs named
    `input_000`, ... and a dict of outputs `output_000`, ...; records the
    output names and structure in `sig`."""
    inputs = [
        keras.Input(
            batch_shape=(batch_size, *shape), dtype=dtype, name=_key("input", i)
        )
        for i, (shape, dtype) in enumerate(zip(sig.shapes, sig.dtypes))
    ]
    if sig.input_structure is None:
        call_inputs = inputs[0]
    else:
        call_inputs = keras.tree.pack_sequence_as(sig.input_structure, inputs)
    outputs = model(call_inputs)
    flat = keras.tree.flatten(outputs)
    if isinstance(outputs, dict):
        names = keras.tree.flatten({k: k for k in outputs})
        structure = "dict"
    else:
        names = list(getattr(model, "output_names", None) or [])
        if not names and isinstance(model, keras.Sequential) and model.layers:
            names = [model.layers[-1].name]
        # `model.predict` returns a lone output as an array, even when the
        # model declares it as a list of one.
        structure = "single" if len(flat) == 1 else "list"
    if len(names) != len(flat) or len(set(names)) != len(names):
        names = [f"output_{i}" for i in range(len(flat))]
    sig.output_names = names
    sig.output_structure = structure
    outs = {_key("output", i): t for i, t in enumerate(flat)}
    return keras.Model(inputs, outs, name=f"{model.name}_export")


@contextlib.contextmanager
def float32_compute(model):
    """Every layer of `model` (at any depth, the sub-layers of custom
    layers too) whose policy computes in a narrower float than its
    float32 variables computes in float32 inside the block; each gets its
    own policy back after it, also on error."""
    changed = []
    try:
        for layer in model._flatten_layers(include_self=True, recursive=True):
            policy = layer.dtype_policy
            if (
                policy.quantization_mode is None
                and policy.variable_dtype == "float32"
                and policy.compute_dtype != "float32"
            ):
                changed.append((layer, policy))
                layer.dtype_policy = keras.DTypePolicy("float32")
        yield
    finally:
        for layer, policy in reversed(changed):
            layer.dtype_policy = policy


def convert(model, sig, options, samples):
    """Convert `model` with the `options` dict of `export_tflite`; return
    the file's bytes, inputs and outputs in Keras's order and names."""
    from keras_slim.quantization import _quantizers

    with float32_compute(model), _quantizers.tracing_the_file():
        return _convert(model, sig, options, samples)


def _convert(model, sig, options, samples):
    import tensorflow as tf

    quantization = options["quantization"]
    converter = tf.lite.TFLiteConverter.from_keras_model(
        wrapper(model, sig, options["batch_size"])
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    optimizations = []
    if quantization != "float32":
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if options["sparse"]:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization in ("int8", "int16x8"):
        _int8_options(converter, options, samples)
    rewrite = contextlib.nullcontext()
    # `quantized_later`: the target of a float file that the LiteRT
    # Quantizer quantizes next. Only int8 gains: for int16x8 the converter
    # refuses NEG cleanly, but quantizes the rewrite's SQUARED_DIFFERENCE
    # to int16, which LiteRT cannot run.
    if options.get("quantized_later", quantization) == "int8":
        rewrite = _export_rewrites.int8_normalization()
    matmul = contextlib.nullcontext()
    if quantization != "float32":
        matmul = _export_rewrites.batched_matmul()
    unrolled = contextlib.nullcontext()
    if options.get("quantized_later", quantization) in ("int8", "int16x8"):
        unrolled = _export_rewrites.unrolled_recurrence(model)
    try:
        # `from_keras_model` exports a SavedModel and prints its signature.
        # It also warns that the (float) input has no statistics, which is
        # expected: the first QUANTIZE op takes the calibrated input range.
        with (
            rewrite,
            matmul,
            unrolled,
            _export_rewrites.inference_dropout(model),
            contextlib.redirect_stdout(io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore", UserWarning)
            data = converter.convert()
    except Exception as e:  # noqa: BLE001 - the converter raises many types
        message = " ".join(str(e).strip().splitlines()[:6])
        hint = ""
        if quantization != "float32" and not options["allow_float_fallback"]:
            hint = (
                " Pass `allow_float_fallback=True` to keep unsupported ops "
                "in float."
            )
        raise ValueError(
            f"The TFLite converter refused `model` ({model.name!r}) for "
            f"quantization={quantization!r}: {message}{hint}"
        ) from None
    return _tflite_file.relabel(
        data,
        [_key("input", i) for i in range(len(sig.input_names))],
        [_key("output", i) for i in range(len(sig.output_names))],
        sig.input_names,
        sig.output_names,
        io_metadata(sig),
    )


def io_metadata(sig):
    """The `keras_slim_io` metadata of a file for the signature `sig`."""
    return {
        "inputs": sig.input_names,
        "outputs": sig.output_names,
        "input_structure": _input_structure(sig),
        "output_structure": sig.output_structure,
    }


def _input_structure(sig):
    if isinstance(sig.input_structure, dict):
        return "dict"
    if isinstance(sig.input_structure, (list, tuple)):
        return "list"
    return "single"


def _int8_options(converter, options, samples):
    import tensorflow as tf

    if samples is not None:
        keys = [_key("input", i) for i in range(len(samples))]

        def dataset():
            for j in range(len(samples[0])):
                yield {k: s[j : j + 1] for k, s in zip(keys, samples)}

        converter.representative_dataset = dataset
        ops = tf.lite.OpsSet
        if options["quantization"] == "int16x8":
            # 16x8 kernels; float fallback keeps the rest float, else the
            # converter refuses an op with no 16x8 kernel.
            supported = [
                ops.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
            ]  # noqa: E501
            if options["allow_float_fallback"]:
                supported.append(ops.TFLITE_BUILTINS)
            converter.target_spec.supported_ops = supported
        elif not options["allow_float_fallback"]:
            converter.target_spec.supported_ops = [ops.TFLITE_BUILTINS_INT8]
    io_dtype = options["io_dtype"]
    if io_dtype != "float32":
        converter.inference_input_type = getattr(tf, io_dtype)
        converter.inference_output_type = getattr(tf, io_dtype)
    if not options["per_channel_dense"]:
        # The converter's only switch for this is a private attribute.
        converter._experimental_disable_per_channel_quantization_for_dense_layers = True  # noqa: E501
