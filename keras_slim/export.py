"""Export Keras models to TFLite (LiteRT) files, and inspect such files.

This is the one module of keras_slim that talks to the TFLite converter.
`export_tflite` converts, checks what it produced (`int8` means int8 end
to end) and only then writes the file, atomically. `inspect_tflite` reads
a file's flatbuffer and tells what is inside: ops, tensor dtypes, input and
output quantization, and whether it is `int8_only`.

Converter facts this module handles (measured with TensorFlow 2.21):
- Calibrated int8 through `TFLiteConverter.from_concrete_functions` fails
  on Keras 3 models ("READ_VARIABLE failed to invoke"), as does a
  SavedModel of a `tf.function`; `from_keras_model` on a Functional wrapper
  with a fixed batch size converts cleanly. Every path goes through it.
- `model.export(format="litert")` turns on Flex (SELECT_TF_OPS) ops, which
  a plain phone runtime cannot run: only TFLite builtin ops are allowed
  here.
- The converter quantizes Dense layers per output channel by default;
  some microcontroller and NNAPI runtimes accept only per-tensor
  FULLY_CONNECTED weights (`per_channel_dense=False`).
"""

import contextlib
import gzip
import io
import itertools
import os
import tempfile
import time
import warnings

import keras
import numpy as np

from keras_slim import _validation

QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")
IO_DTYPES = ("float32", "int8", "uint8")

# Ops that only move data between float and integer at the model's edges.
_EDGE_OPS = ("QUANTIZE", "DEQUANTIZE")
_INTEGER_DTYPES = ("int8", "uint8", "int16", "int32", "int64", "bool")


# ------------------------------------------------------------ inspection


class TFLiteInfo:
    """What a `.tflite` file holds, as read from its flatbuffer.

    Returned by `keras_slim.inspect_tflite`; see there.

    Attributes:
        filepath: The file that was read.
        bytes: Size of the file in bytes.
        gzip_bytes: Size after `gzip -9`: what an app download carries,
            and the figure where pruning's zeros show.
        ops: Dict of op name to count, e.g. `{"CONV_2D": 4, ...}`.
        tensors: List of dicts with `name`, `dtype` and `shape` of every
            tensor in the main graph.
        inputs, outputs: Lists of dicts with `name`, `shape`, `dtype`,
            `scale` and `zero_point` (`scale` 0.0 when not quantized).
        float_ops: Ops (`"OP_NAME:index"`) that read or write a float
            tensor, and QUANTIZE / DEQUANTIZE ops inside the graph (those
            at the inputs and outputs are expected and not listed).
        int8_only: True when every compute op is integer and QUANTIZE /
            DEQUANTIZE appear only at the model's inputs and outputs.

    Example:

    >>> import numpy as np
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> data = np.random.rand(32, 4).astype("float32")
    >>> _ = export_tflite(model, "tiny.tflite", representative_data=data)
    >>> info = inspect_tflite("tiny.tflite")
    >>> info.int8_only, info.ops["FULLY_CONNECTED"]
    (True, 1)
    """

    def __init__(self, filepath, data):
        from ai_edge_litert import schema_py_generated as schema

        self.filepath = filepath
        self.bytes = len(data)
        self.gzip_bytes = len(gzip.compress(data, compresslevel=9))
        model = schema.Model.GetRootAsModel(data, 0)
        op_names = {
            v: k
            for k, v in vars(schema.BuiltinOperator).items()
            if not k.startswith("_")
        }
        dtype_names = {
            v: k.lower()
            for k, v in vars(schema.TensorType).items()
            if not k.startswith("_")
        }
        graph = model.Subgraphs(0)

        def tensor(i):
            t = graph.Tensors(i)
            q = t.Quantization()
            scales = q.ScaleAsNumpy() if q is not None else 0
            zeros = q.ZeroPointAsNumpy() if q is not None else 0
            scale = scales if isinstance(scales, np.ndarray) else []
            zero = zeros if isinstance(zeros, np.ndarray) else []
            return {
                "name": t.Name().decode(),
                "dtype": dtype_names.get(t.Type(), str(t.Type())),
                "shape": tuple(int(d) for d in t.ShapeAsNumpy())
                if t.ShapeLength()
                else (),
                "scale": float(scale[0]) if len(scale) == 1 else
                (scale.tolist() if len(scale) else 0.0),
                "zero_point": int(zero[0]) if len(zero) == 1 else
                (zero.tolist() if len(zero) else 0),
            }

        self.tensors = [tensor(i) for i in range(graph.TensorsLength())]
        input_ids = [int(i) for i in graph.InputsAsNumpy()]
        output_ids = [int(i) for i in graph.OutputsAsNumpy()]
        self.inputs = [self.tensors[i] for i in input_ids]
        self.outputs = [self.tensors[i] for i in output_ids]

        self.ops = {}
        self.float_ops = []
        for index in range(graph.OperatorsLength()):
            op = graph.Operators(index)
            code = model.OperatorCodes(op.OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            name = op_names.get(builtin, f"OP_{builtin}")
            if name == "CUSTOM":
                name = f"CUSTOM:{code.CustomCode().decode()}"
            self.ops[name] = self.ops.get(name, 0) + 1
            ins = [int(i) for i in op.InputsAsNumpy() if i >= 0]
            outs = [int(i) for i in op.OutputsAsNumpy() if i >= 0]
            if name in _EDGE_OPS:
                at_edge = all(i in input_ids for i in ins) or all(
                    o in output_ids for o in outs
                )
                if not at_edge:
                    self.float_ops.append(f"{name}:{index}")
                continue
            dtypes = {self.tensors[i]["dtype"] for i in ins + outs}
            if not dtypes <= set(_INTEGER_DTYPES):
                self.float_ops.append(f"{name}:{index}")
        self.int8_only = not self.float_ops and not any(
            n.startswith("CUSTOM") for n in self.ops
        )

    def __repr__(self):
        return (
            f"<TFLiteInfo {os.path.basename(self.filepath)!r} "
            f"bytes={self.bytes} int8_only={self.int8_only}>"
        )

    def __str__(self):
        def io_line(kind, t):
            q = (
                f" scale={t['scale']:.6g} zero_point={t['zero_point']}"
                if isinstance(t["scale"], float) and t["scale"]
                else ""
            )
            return f"  {kind} {t['name']}: {t['dtype']} {list(t['shape'])}{q}"

        lines = [
            f"{self.filepath}",
            f"  bytes: {self.bytes:,}  gzip: {self.gzip_bytes:,}",
            f"  int8_only: {self.int8_only}",
        ]
        lines += [io_line("input ", t) for t in self.inputs]
        lines += [io_line("output", t) for t in self.outputs]
        lines.append("  ops: " + ", ".join(
            f"{k} x{v}" for k, v in sorted(self.ops.items())
        ))
        if self.float_ops:
            lines.append("  float ops: " + ", ".join(self.float_ops))
        return "\n".join(lines)


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
        ValueError: if the file does not exist or is not a TFLite
            flatbuffer.

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
        quantization: `"float32"`, `"float16"`, `"dynamic"` or `"int8"`.
        io_dtype: dtype of the file's input and output tensors.
        batch_size: Batch size of the signature (`None`: dynamic).
        ranges: `"calibrated"` (int8 from representative data),
            `"learned"` (int8 from quantization-aware training) or `None`.
        calibration_samples: Number of representative samples used.
        seconds: Conversion time.
        info: The `TFLiteInfo` of the written file (`bytes`, `gzip_bytes`,
            `ops`, `int8_only`, ...).

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> report = export_tflite(model, "m.tflite", quantization="float16")
    >>> report.quantization, report.info.bytes > 0
    ('float16', True)
    """

    def __init__(self, filepath, quantization, io_dtype, batch_size, ranges,
                 calibration_samples, seconds, info):
        self.filepath = filepath
        self.quantization = quantization
        self.io_dtype = io_dtype
        self.batch_size = batch_size
        self.ranges = ranges
        self.calibration_samples = calibration_samples
        self.seconds = seconds
        self.info = info

    @property
    def int8_only(self):
        return self.info.int8_only

    def __repr__(self):
        return (
            f"<ExportReport {self.filepath!r} {self.quantization} "
            f"bytes={self.info.bytes} int8_only={self.info.int8_only}>"
        )

    def __str__(self):
        ranges = f", ranges {self.ranges}" if self.ranges else ""
        return (
            f"Exported {self.quantization}{ranges} in {self.seconds:.1f}s\n"
            + str(self.info)
        )


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
):
    """Convert a Keras model to a verified TFLite (LiteRT) file.

    One call from a trained Keras 3 model (Sequential, Functional,
    subclassed, nested or a `keras.applications` backbone) to a `.tflite`
    file for a phone or a microcontroller. The file is checked before it
    is written: with `quantization="int8"` every compute op must be
    integer, or the export fails with an error naming the float ops
    (unless `allow_float_fallback=True`). Only TFLite builtin ops are used,
    never Flex (SELECT_TF_OPS). The file is written to a temporary file in
    the target folder and renamed, so a failed export leaves no partial
    file and never touches an existing one.

    Post-training int8 quantization needs `representative_data`, a few
    hundred typical inputs, to calibrate activation ranges. A model trained
    with `keras_slim.callbacks.QuantizationAwareTraining` (or built by
    `keras_slim.quantization.quantize_model`) carries learned ranges and
    needs none.

    Args:
        model: A built Keras 3 model with one input.
        filepath: Path of the `.tflite` file to write; its folder must
            exist.
        quantization: `"float32"` (no quantization), `"float16"` (weights
            in float16), `"dynamic"` (int8 weights, float activations) or
            `"int8"` (weights and activations int8).
        representative_data: For `"int8"`: a NumPy array of inputs (shape
            `(n, *input_shape)`), a `tf.data.Dataset` of inputs or of
            `(inputs, labels)` batches, or a generator (or a function
            returning one) of input batches. Checked against the model's
            input shape and dtype before conversion starts.
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
            `representative_data` when that is an array).

    Returns:
        An `ExportReport` with the file's `TFLiteInfo` as `report.info`.

    Raises:
        TypeError: if `model` is not a Keras 3 model.
        ValueError: if an argument is invalid (named in the message), if
            `"int8"` is asked for without `representative_data` on a model
            with no learned ranges, if float ops remain in an int8 file
            and `allow_float_fallback=False`, or if LiteRT cannot load the
            converted file with its default delegate. Nothing is written
            then.

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
    # ---- validation: everything before any work.
    _validation.check_model(model)
    filepath = _validation.check_output_path(
        "filepath", filepath, suffixes=(".tflite",)
    )
    _validation.check_choice("quantization", quantization, QUANTIZATIONS)
    _validation.check_choice("io_dtype", io_dtype, IO_DTYPES)
    if io_dtype != "float32" and quantization != "int8":
        raise ValueError(
            f"`io_dtype={io_dtype!r}` needs `quantization='int8'`. "
            f"Received: quantization={quantization!r}"
        )
    if batch_size is not None:
        _validation.check_int("batch_size", batch_size, minimum=1)
    if calibration_steps is not None:
        _validation.check_int("calibration_steps", calibration_steps, 1)
    for name, value in (
        ("allow_float_fallback", allow_float_fallback),
        ("sparse", sparse),
        ("per_channel_dense", per_channel_dense),
    ):
        _validation.check_type(name, value, bool, "a bool")
    input_shape, input_dtype = _single_input(
        model, input_shape, representative_data
    )

    learned = _is_quantization_aware(model)
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
    samples = None
    if quantization == "int8" and not learned:
        if representative_data is None:
            raise ValueError(
                "`quantization='int8'` needs `representative_data` (a few "
                "hundred typical inputs) to calibrate activation ranges, "
                "unless the model was trained with "
                "`keras_slim.callbacks.QuantizationAwareTraining`. "
                "Received: representative_data=None"
            )
        samples = _representative_samples(
            representative_data, input_shape, input_dtype,
            calibration_steps or 500,
        )
    elif representative_data is not None and quantization != "int8":
        raise ValueError(
            "`representative_data` is used only with `quantization='int8'`. "
            f"Received: quantization={quantization!r}"
        )

    # ---- conversion.
    import tensorflow as tf

    start = time.perf_counter()
    inputs = keras.Input(
        batch_shape=(batch_size, *input_shape), dtype=input_dtype
    )
    wrapper = keras.Model(inputs, model(inputs), name=f"{model.name}_export")
    converter = tf.lite.TFLiteConverter.from_keras_model(wrapper)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    optimizations = []
    if quantization != "float32":
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization == "int8":
        if samples is not None:
            converter.representative_dataset = lambda: (
                [s[None]] for s in samples
            )
        if not allow_float_fallback and samples is not None:
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.TFLITE_BUILTINS_INT8
            ]
        if io_dtype != "float32":
            converter.inference_input_type = getattr(tf, io_dtype)
            converter.inference_output_type = getattr(tf, io_dtype)
        if not per_channel_dense:
            # The converter's only switch for this is a private attribute.
            converter._experimental_disable_per_channel_quantization_for_dense_layers = True  # noqa: E501
    try:
        # `from_keras_model` exports a SavedModel and prints its signature.
        # It also warns that the (float) input has no statistics, which is
        # expected: the first QUANTIZE op takes the calibrated input range.
        with contextlib.redirect_stdout(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            data = converter.convert()
    except Exception as e:  # noqa: BLE001 - the converter raises many types
        message = str(e).strip().splitlines()
        raise ValueError(
            f"The TFLite converter refused `model` ({model.name!r}) for "
            f"quantization={quantization!r}: "
            + " ".join(message[:6])
            + (
                " Pass `allow_float_fallback=True` to keep unsupported ops "
                "in float."
                if quantization == "int8" and not allow_float_fallback
                else ""
            )
        ) from None
    seconds = time.perf_counter() - start
    info = TFLiteInfo(filepath, data)
    if quantization == "int8" and not allow_float_fallback and (
        not info.int8_only
    ):
        raise ValueError(
            "The int8 conversion of `model` kept float ops: "
            + ", ".join(info.float_ops or sorted(info.ops))
            + ". Nothing was written. Pass `allow_float_fallback=True` to "
            "accept a mixed file, or skip those layers from quantization."
        )

    # ---- the file must load in LiteRT as a phone would run it (with the
    # default XNNPACK delegate) before it is written.
    from keras_slim import litert

    problem = litert.load_error(data)
    if problem:
        hint = (
            " The sparse encoding (`sparse=True`) adds DENSIFY ops whose "
            "results the XNNPACK delegate cannot take; export without it "
            "(pruning's zeros still show in the gzip size)."
            if sparse
            else ""
        )
        raise ValueError(
            "LiteRT cannot run the converted file with its default "
            f"delegate: {problem}. Nothing was written.{hint}"
        )

    # ---- atomic write: a temporary file in the same folder, then rename.
    folder = os.path.dirname(os.path.abspath(filepath))
    fd, tmp = tempfile.mkstemp(
        prefix=".keras_slim-", suffix=".tflite.tmp", dir=folder
    )
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, filepath)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return ExportReport(
        filepath=filepath,
        quantization=quantization,
        io_dtype=io_dtype,
        batch_size=batch_size,
        ranges=("learned" if learned else "calibrated")
        if quantization == "int8"
        else None,
        calibration_samples=None if samples is None else len(samples),
        seconds=seconds,
        info=info,
    )


def _is_quantization_aware(model):
    try:
        from keras_slim.quantization import is_quantization_aware
    except ImportError:
        return False
    return bool(is_quantization_aware(model))


def _single_input(model, input_shape, representative_data):
    if _has_inputs(model):
        if len(model.inputs) > 1:
            raise ValueError(
                "`export_tflite` supports models with one input. Received: "
                f"a model with {len(model.inputs)} inputs"
            )
        shape = tuple(model.inputs[0].shape[1:])
        dtype = str(model.inputs[0].dtype)
        if input_shape is not None and tuple(input_shape) != shape:
            raise ValueError(
                f"`input_shape` must match the model's input shape {shape}. "
                f"Received: input_shape={input_shape!r}"
            )
    elif input_shape is not None:
        if not (
            isinstance(input_shape, (tuple, list))
            and all(isinstance(d, int) and d > 0 for d in input_shape)
        ):
            raise ValueError(
                "Expected `input_shape` to be a tuple of positive ints "
                "without the batch size. Received: "
                f"input_shape={input_shape!r}"
            )
        shape, dtype = tuple(input_shape), "float32"
    elif isinstance(representative_data, np.ndarray) and (
        representative_data.ndim >= 2
    ):
        shape, dtype = tuple(representative_data.shape[1:]), "float32"
    else:
        # Subclassed models do not record their input shape publicly.
        raise ValueError(
            "`model` does not record its input shape (a subclassed model?): "
            "pass `input_shape=(height, width, channels)` (without the "
            f"batch size). Received: input_shape=None for model={model.name!r}"
        )
    if any(d is None for d in shape):
        raise ValueError(
            "`export_tflite` needs a fixed input shape (besides the batch "
            f"size). Received: a model with input shape {shape}"
        )
    return shape, dtype


def _has_inputs(model):
    try:
        return bool(model.inputs)
    except (AttributeError, ValueError):
        return False


def _representative_samples(data, input_shape, input_dtype, limit):
    """Return a float array `(n, *input_shape)` of calibration inputs."""
    import tensorflow as tf

    def fail(received):
        raise ValueError(
            "Expected `representative_data` to hold model inputs of shape "
            f"(n, {', '.join(str(d) for d in input_shape)}) and dtype "
            f"{input_dtype}. Received: {received}"
        )

    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        if isinstance(spec, tuple):
            data = data.map(lambda *e: e[0])
            spec = spec[0]
        if not isinstance(spec, tf.TensorSpec):
            fail(f"a dataset with element_spec={data.element_spec}")
        shape = tuple(spec.shape)
        batched = len(shape) == len(input_shape) + 1
        if tuple(shape[-len(input_shape):]) != input_shape:
            fail(f"a dataset of elements with shape {shape}")
        if not spec.dtype.is_floating and spec.dtype.name != input_dtype:
            fail(f"a dataset of dtype {spec.dtype.name}")
        arrays = []
        count = 0
        for element in data:
            element = np.asarray(element)
            if not batched:
                element = element[None]
            arrays.append(element)
            count += len(element)
            if count >= limit:
                break
        if not arrays:
            fail("an empty dataset")
        return np.concatenate(arrays)[:limit].astype(input_dtype)

    if callable(data) and not isinstance(data, np.ndarray):
        data = data()
    if not isinstance(data, np.ndarray) and hasattr(data, "__next__"):
        arrays = []
        count = 0
        for element in itertools.islice(data, limit):
            if isinstance(element, (list, tuple)):
                element = element[0]
            element = np.asarray(element)
            if element.shape == input_shape:
                element = element[None]
            if tuple(element.shape[1:]) != input_shape:
                fail(f"a generator yielding arrays of shape {element.shape}")
            arrays.append(element)
            count += len(element)
            if count >= limit:
                break
        if not arrays:
            fail("an empty generator")
        data = np.concatenate(arrays)
    if hasattr(data, "numpy"):
        data = data.numpy()
    if not isinstance(data, np.ndarray):
        raise TypeError(
            "Expected `representative_data` to be a NumPy array, a "
            "`tf.data.Dataset` or a generator of input batches. Received: "
            f"representative_data of type {type(data).__name__}"
        )
    if data.ndim != len(input_shape) + 1 or tuple(data.shape[1:]) != (
        input_shape
    ):
        fail(f"an array of shape {data.shape}")
    if not (
        np.issubdtype(data.dtype, np.floating) or data.dtype == input_dtype
    ):
        fail(f"an array of dtype {data.dtype}")
    if len(data) == 0:
        fail("an empty array")
    return data[:limit].astype(input_dtype)

__all__ = ["export_tflite", "inspect_tflite", "ExportReport", "TFLiteInfo"]
