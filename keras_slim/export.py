"""Export Keras models to TFLite (LiteRT) files, and inspect such files.

This is the one module of keras_slim that talks to the TFLite converter.
`export_tflite` runs three steps, each in its own private module: check
and convert (`_export_inputs`, `_convert`), verify the converted bytes by
reading and running them (`_tflite_file`, `_verify`), and only then write
the file atomically (`_safe_write`). `inspect_tflite` reads a file's
flatbuffer and tells what is inside: ops, tensor dtypes, input and output
quantization, and whether it is `int8_only`.
"""

import time

import keras
import numpy as np  # noqa: F401 - the docstring examples use it

from keras_slim import _adaround
from keras_slim import _bias_correction
from keras_slim import _convert
from keras_slim import _cross_backend
from keras_slim import _export_checks
from keras_slim import _export_inputs
from keras_slim import _litert_quantizer
from keras_slim import _safe_write
from keras_slim import _tflite_file
from keras_slim import _validation
from keras_slim import _verify

QUANTIZATIONS = ("float32", "float16", "dynamic", "int8", "int16x8")
IO_DTYPES = ("float32", "int8", "uint8")
QUANTIZERS = ("converter", "litert")
_CALIBRATED = ("int8", "int16x8")

TFLiteInfo = _tflite_file.TFLiteInfo
TFLiteInfo.__module__ = __name__  # public here; its example runs here


# ------------------------------------------------------------ inspection


def inspect_tflite(filepath):
    """Read a `.tflite` file and report what it holds.

    Use it to check a file before it ships: that it is integer end to end
    (`int8_only`), which ops a runtime must support, how inputs must be
    quantized (`scale`, `zero_point`) and how big it is, raw and gzipped.
    The file is parsed, not run, so this works for any file the converter
    can write.

    Args:
        filepath: Path of a `.tflite` file.

    Returns:
        A `TFLiteInfo`; `print(info)` shows a readable summary.

    Raises:
        ValueError: if the file does not exist, is not a TFLite flatbuffer,
            or is truncated or corrupt.

    Example:

    >>> import numpy as np
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> _ = export_tflite(model, "float.tflite", quantization="float32")
    >>> info = inspect_tflite("float.tflite")
    >>> info.inputs[0]["dtype"], info.inputs[0]["shape"], info.int8_only
    ('float32', (1, 4), False)
    """
    filepath = _validation.check_input_file("filepath", filepath)
    with open(filepath, "rb") as f:
        data = f.read()
    _validation.check_tflite_bytes(data, filepath)
    return TFLiteInfo(filepath, data)


# ---------------------------------------------------------------- export


class ExportReport:
    """What `export_tflite` wrote.

    Attributes:
        filepath: The written file.
        quantization: `"float32"`, `"float16"`, `"dynamic"`, `"int8"` or
            `"int16x8"`.
        quantizer: `"converter"` or `"litert"` (the LiteRT Quantizer).
        layer_precision: The per-layer precisions asked for (a dict,
            empty unless some layers were kept in int16 or float).
        io_dtype: dtype of the file's input and output tensors.
        batch_size: Batch size of the signature (`None`: dynamic).
        ranges: `"calibrated"` (int8 from representative data),
            `"learned"` (int8 from quantization-aware training) or `None`.
        calibration_samples: Number of representative samples used.
        seconds: Conversion time.
        info: The `TFLiteInfo` of the written file (`bytes`, `gzip_bytes`,
            `ops`, `int8_only`, ...).
        agreement: Dict of output name to the fraction of verification
            samples on which the file agrees with Keras.
        notes: Diagnostics that did not stop the export (for instance a
            `Rescaling` layer whose calibration data spans a sliver of the
            range it expects).

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> report = export_tflite(model, "m.tflite", quantization="float16")
    >>> report.quantization, report.info.bytes > 0, report.agreement
    ('float16', True, {'dense': 1.0})
    """

    def __init__(
        self,
        filepath,
        quantization,
        io_dtype,
        batch_size,
        ranges,
        calibration_samples,
        seconds,
        info,
        agreement=None,
        notes=(),
        quantizer="converter",
        layer_precision=None,
    ):
        self.filepath = filepath
        self.quantization = quantization
        self.quantizer = quantizer
        self.layer_precision = dict(layer_precision or {})
        self.io_dtype = io_dtype
        self.batch_size = batch_size
        self.ranges = ranges
        self.calibration_samples = calibration_samples
        self.seconds = seconds
        self.info = info
        self.agreement = dict(agreement or {})
        self.notes = list(notes)

    @property
    def int8_only(self):
        """Whether the file is integer end to end with int8 activations."""
        return self.info.int8_only

    @property
    def integer_only(self):
        """Whether the file is integer end to end (int8 or int16x8)."""
        return self.info.integer_only

    def __repr__(self):
        return (
            f"<ExportReport {self.filepath!r} {self.quantization} "
            f"bytes={self.info.bytes} int8_only={self.info.int8_only}>"
        )

    def summary(self):
        """Return what was exported and verified, as text."""
        ranges = f", ranges {self.ranges}" if self.ranges else ""
        if self.quantizer != "converter":
            ranges += f", quantizer {self.quantizer}"
        agreement = ", ".join(
            f"{k} {100 * v:.1f}%" for k, v in self.agreement.items()
        )
        lines = [
            f"Exported {self.quantization}{ranges} in {self.seconds:.1f}s"
            + (f"; agreement with Keras: {agreement}" if agreement else ""),
            self.info.summary(),
        ]
        lines += [
            f"  layer {k!r}: {v}" for k, v in self.layer_precision.items()
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def print_summary(self, print_fn=print):
        """Print `summary()` with `print_fn`."""
        print_fn(self.summary())

    def __str__(self):
        return self.summary()


def export_tflite(
    model,
    filepath,
    quantization="int8",
    representative_data=None,
    io_dtype="float32",
    allow_float_fallback=False,
    batch_size=1,
    sparse=False,
    per_channel_dense=True,
    calibration_steps=None,
    input_shape=None,
    min_agreement=_verify.MIN_AGREEMENT,
    quantizer="converter",
    layer_precision=None,
    bias_correction=False,
    weight_rounding="nearest",
):
    """Convert a Keras model to a verified TFLite (LiteRT) file.

    One call from a trained Keras 3 model (Sequential, Functional,
    subclassed, nested or a `keras.applications` backbone) to a `.tflite`
    file for a phone or a microcontroller. The file is checked before it
    is written: with `quantization="int8"` every compute op must be
    integer, or the export fails with an error naming the float ops
    (unless `allow_float_fallback=True`). Only TFLite builtin ops are used,
    never Flex (SELECT_TF_OPS). Every array that enters the conversion is
    checked first (finite weights; finite calibration data within
    +/-1e9), since the converter crashes the process on some of them.
    The converted file is then run with LiteRT on the calibration samples
    (or 8 synthetic samples in [0, 1)): it must give finite outputs and
    agree with Keras on at least `min_agreement` of them, output by
    output, or nothing is written. The file is written to a temporary
    file in the target folder and renamed, so a failed export leaves no
    partial file and never touches an existing one; it gets the mode of
    the file it replaces (or the umask's), and a symlink is written
    through.

    Models with several inputs or outputs (lists or dicts, as Keras
    allows) keep Keras's order and names in the file; pass their
    `representative_data` as a list or a dict of arrays, as to
    `model.predict`.

    Post-training int8 quantization needs `representative_data`, a few
    hundred typical inputs, to calibrate activation ranges. A model trained
    with `keras_slim.callbacks.QuantizationAwareTraining` (or built by
    `keras_slim.quantization.quantize_model`) carries learned ranges and
    needs none.

    Args:
        model: A built Keras 3 model. Under `KERAS_BACKEND=jax` or
            `torch` it is saved to a temporary `.keras` file and converted
            in a child process under the TensorFlow backend, with the same
            checks (see `keras_slim._cross_backend`). Layers under a mixed
            precision policy (`mixed_float16`, `mixed_bfloat16`) compute
            in float32 while it is converted and keep their policy.
        filepath: Path of the `.tflite` file to write; its folder must
            exist and be writable.
        quantization: `"float32"` (no quantization), `"float16"` (weights
            in float16), `"dynamic"` (int8 weights, float activations) or
            `"int8"` (weights and activations int8), or `"int16x8"` (int8
            weights, int16 activations: more accurate where int8
            activations lose most, integer end to end, `int8_only` False
            and `integer_only` True; LiteRT's 16x8 kernels are slower
            than int8 and not every runtime has them).
        representative_data: For `"int8"`: a NumPy array of inputs (shape
            `(n, *input_shape)`; a list or dict of arrays for several
            inputs), a `tf.data.Dataset` of inputs or of `(inputs, labels)`
            batches, or a generator (or a function returning one) of input
            batches. Checked against the model's input shapes and dtypes,
            and for NaN, inf and values beyond +/-1e9, before conversion
            starts.
        io_dtype: `"float32"`, or `"int8"` / `"uint8"` for full-integer
            models whose input and output tensors are quantized too
            (microcontrollers, NPUs); needs `quantization="int8"`.
        allow_float_fallback: With `"int8"`, allow ops that cannot be
            quantized to stay float instead of failing.
        batch_size: Batch size of the exported signature; `1` is what
            phones run; `None` for a dynamic batch.
        sparse: Ask the converter to encode sparse weights (for models
            pruned with `keras_slim.callbacks.MagnitudePruning`). Measured
            with TensorFlow 2.21 on the 80%-pruned demo CNN in int8: the
            raw file shrinks (20.9 kB vs 27.9 kB) but its gzip size grows
            (11.1 kB vs 9.0 kB), and the DENSIFY ops it adds make LiteRT's
            default XNNPACK delegate fail on FULLY_CONNECTED, which this
            function then refuses. Pruning's gain shows in the gzip size
            (`report.info.gzip_bytes`) without it.
        per_channel_dense: Quantize Dense weights per output channel (the
            converter's default). Set `False` for runtimes that accept only
            per-tensor FULLY_CONNECTED weights (many microcontroller and
            NNAPI drivers).
        calibration_steps: Use at most this many representative samples
            (default: all of them, up to 500).
        input_shape: Input shape without the batch size, for subclassed
            models, which do not record it (taken from
            `representative_data` when that is an array), and to fix the
            `None` dimensions of a model such as `keras.Input((None, None,
            1))`. A list or dict of shapes for several inputs.
        min_agreement: Refuse the file if, for any output, the fraction of
            verification samples on which it agrees with Keras (same top-1
            index; for single-value outputs, within 10% of the largest
            expected magnitude; for an output with spatial or sequence
            axes, the fraction of its positions, each by its last axis) is
            below this. Default 0.5: trained
            models' int8 files agree 97-100%; a miscalibrated one 14-24%.
            Untrained deep models, whose outputs are near ties, can land
            below too (an untrained MobileNetV3Small on random 0-255
            images: 12.5%). Lower it (down to 0) to accept such a file
            knowingly.
        quantizer: Who quantizes, for `"int8"` and `"int16x8"`:
            `"converter"` (the TFLite converter's built-in calibration) or
            `"litert"` (Google's LiteRT Quantizer, `litert-quantizer`,
            installed with `pip install "keras-slim[litert]"`): the model
            is converted to float32, then quantized from the same
            representative data. Both give files that pass the same
            checks.
        layer_precision: With `quantizer="litert"`, a dict of Keras layer
            name to `"int16x8"` (int16 activations) or `"float32"` (not
            quantized) for layers to keep in higher precision; the rest
            follows `quantization`. A `"float32"` layer makes a mixed
            file (`int8_only` False): passing it is the explicit choice
            of one. `keras_slim.quantization.select_precision` picks
            these layers from a target agreement.
        bias_correction: For `"int8"` and `"int16x8"` from calibration,
            shift the biases of Conv2D, DepthwiseConv2D and Dense layers
            by the mean error their int8 weights add on the calibration
            data (Nagel et al. 2019); `report.notes` names the layers.
            Measured: it lifts files whose agreement the int8 weights
            bound (MobileNetV2's int16x8: 99.56% to 100%), and can cost a
            little elsewhere; compare both.
        weight_rounding: `"nearest"` (the converter's rounding of every
            weight) or `"adaround"`: for `"int8"` and `"int16x8"` from
            calibration, each Conv2D, DepthwiseConv2D and Dense kernel is
            rounded up or down weight by weight to fit the layer's output
            on the calibration data (Nagel et al. 2020; ~2,000 Adam steps
            a layer: about 25 s a layer on a laptop CPU, with a progress
            bar). Measured: the demo CNN's int8 agreement 99.33% to 99.56%
            (median of 3 seeds; never lower on a seed).

    Returns:
        An `ExportReport` with the file's `TFLiteInfo` as `report.info`.

    Raises:
        TypeError: if `model` is not a Keras 3 model.
        ImportError: if `quantizer="litert"` and `litert-quantizer` is not
            installed.
        ValueError: if an argument is invalid (named in the message), if
            `"int8"` is asked for without `representative_data` on a model
            with no learned ranges, if a weight or a calibration sample is
            NaN, inf or out of range, if `"int8"`/`"int16x8"` calibration
            meets a `stateful=True` recurrent layer (LSTM, GRU and
            SimpleRNN layers are otherwise unrolled over the input's fixed
            steps, whose WHILE loop would crash the converter's
            calibrator), if the folder is not writable, if float ops
            remain in an int8 file and `allow_float_fallback=False` (each
            named with the Keras layer it came from), if LiteRT cannot
            load the converted file with its default delegate, or if the
            file outputs NaN/inf or agrees with Keras less than
            `min_agreement`. Nothing is written then.

    Example:

    >>> import numpy as np
    >>> model = keras.Sequential([
    ...     keras.Input((8, 8, 1)),
    ...     keras.layers.Conv2D(4, 3, activation="relu"),
    ...     keras.layers.GlobalAveragePooling2D(),
    ...     keras.layers.Dense(10),
    ... ])
    >>> images = np.random.rand(64, 8, 8, 1).astype("float32")
    >>> report = export_tflite(model, "model.tflite",
    ...                        representative_data=images)
    >>> report.int8_only, report.info.inputs[0]["shape"]
    (True, (1, 8, 8, 1))
    """
    options = dict(
        quantization=quantization,
        io_dtype=io_dtype,
        batch_size=batch_size,
        allow_float_fallback=allow_float_fallback,
        sparse=sparse,
        per_channel_dense=per_channel_dense,
        quantizer=quantizer,
        layer_precision=layer_precision,
    )
    filepath = _check_arguments(
        model, filepath, options, calibration_steps, min_agreement
    )
    sig = _export_inputs.signature(model, input_shape, representative_data)
    learned = _check_ranges_source(model, quantization, representative_data)
    options["bias_correction"] = _bias_correction.check(
        model, bias_correction, quantization, learned
    )
    _adaround.check(
        model, weight_rounding, quantization, learned, bias_correction
    )
    options["weight_rounding"] = weight_rounding
    if learned and quantizer == "litert":
        raise ValueError(
            "This model carries learned int8 ranges from quantization-aware "
            "training, which only the converter reads; export it with "
            "`quantizer='converter'`. Received: quantizer='litert'"
        )
    if learned and not per_channel_dense:
        from keras_slim.quantization import _recurrent

        _recurrent.refuse_per_tensor_export(model)
    samples = None
    if representative_data is not None:
        samples = _export_inputs.samples(
            representative_data, sig, calibration_steps or 500
        )
    _export_inputs.check_weights(model)
    if not learned:
        _export_inputs.check_calibratable(model, quantization)
    if keras.backend.backend() != "tensorflow":  # JAX or PyTorch
        return _cross_backend.export_tflite_in_tensorflow(
            model,
            filepath,
            sig,
            samples,
            learned=learned,
            calibration_steps=calibration_steps,
            input_shape=input_shape,
            min_agreement=min_agreement,
            **options,
        )

    # ---- convert, then verify the bytes before anything is written.
    start = time.perf_counter()
    with (
        _adaround.rounded(model, sig, samples, options) as notes,
        _bias_correction.corrected(model, sig, samples, options) as more,
    ):
        data = _convert_either(model, sig, samples, options)
    notes += more
    seconds = time.perf_counter() - start
    info = TFLiteInfo(filepath, data)
    _export_checks.check_integer(model, info, options)
    _verify.check_loads(data, sparse)
    if samples is not None:
        notes += _verify.rescaling_notes(model, sig, samples)
    agreement = _verify.verify(model, data, sig, samples, min_agreement, notes)

    _safe_write.write(filepath, data)
    return ExportReport(
        filepath=filepath,
        quantization=quantization,
        io_dtype=io_dtype,
        batch_size=batch_size,
        ranges=("learned" if learned else "calibrated")
        if quantization in _CALIBRATED
        else None,
        calibration_samples=None if samples is None else len(samples[0]),
        seconds=seconds,
        info=info,
        agreement=agreement,
        notes=notes,
        quantizer=quantizer if quantization in _CALIBRATED else "converter",
        layer_precision=layer_precision,
    )


def _convert_either(model, sig, samples, options):
    """The file's bytes from the converter, or through the LiteRT
    Quantizer (float32 from the converter, then quantized)."""
    if options["quantizer"] == "litert":
        floats = {
            **options,
            "quantization": "float32",
            "sparse": False,
            "quantized_later": options["quantization"],
        }
        data = _convert.convert(model, sig, floats, None)
        return _litert_quantizer.quantize(data, sig, samples, options)
    return _convert.convert(model, sig, options, samples)


def _check_arguments(
    model, filepath, options, calibration_steps, min_agreement
):
    """Refuse bad arguments before any work; return `filepath` as str."""
    _validation.check_model(model)
    filepath = _validation.check_output_path(
        "filepath", filepath, suffixes=(".tflite",)
    )
    quantization, io_dtype = options["quantization"], options["io_dtype"]
    _validation.check_choice("quantization", quantization, QUANTIZATIONS)
    _validation.check_choice("io_dtype", io_dtype, IO_DTYPES)
    if io_dtype != "float32" and quantization != "int8":
        raise ValueError(
            f"`io_dtype={io_dtype!r}` needs `quantization='int8'`. "
            f"Received: quantization={quantization!r}"
        )
    _export_checks.check_quantizer(model, options, QUANTIZERS)
    if options["batch_size"] is not None:
        _validation.check_int("batch_size", options["batch_size"], minimum=1)
    if calibration_steps is not None:
        _validation.check_int("calibration_steps", calibration_steps, 1)
    for name in ("allow_float_fallback", "sparse", "per_channel_dense"):
        _validation.check_type(name, options[name], bool, "a bool")
    _validation.check_range("min_agreement", min_agreement, 0, 1)
    _safe_write.check_writable(filepath)
    return filepath


def _check_ranges_source(model, quantization, representative_data):
    """Whether `model` carries learned int8 ranges; refuse combinations
    of `quantization` and `representative_data` that do not fit."""
    from keras_slim.quantization import is_quantization_aware

    learned = bool(is_quantization_aware(model))
    if learned and quantization != "int8":
        raise ValueError(
            "This model carries learned int8 ranges from quantization-aware "
            "training; export it with `quantization='int8'`. Received: "
            f"quantization={quantization!r}"
        )
    if learned and representative_data is not None:
        raise ValueError(
            "This model carries learned int8 ranges from quantization-aware "
            "training, so `representative_data` would be ignored; leave it "
            "None. Received: representative_data of type "
            f"{type(representative_data).__name__}"
        )
    if (
        quantization in _CALIBRATED
        and not learned
        and representative_data is None
    ):
        raise ValueError(
            f"`quantization={quantization!r}` needs `representative_data` "
            "(a few hundred typical inputs) to calibrate activation ranges, "
            "unless the model was trained with "
            "`keras_slim.callbacks.QuantizationAwareTraining`. "
            "Received: representative_data=None"
        )
    if representative_data is not None and quantization not in _CALIBRATED:
        raise ValueError(
            "`representative_data` is used only with `quantization='int8'` "
            "or `'int16x8'`. "
            f"Received: quantization={quantization!r}"
        )
    return learned


__all__ = ["export_tflite", "inspect_tflite", "ExportReport", "TFLiteInfo"]
