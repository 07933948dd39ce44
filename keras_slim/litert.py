"""Run `.tflite` files with LiteRT: accuracy, agreement with Keras, latency.

This is the one module of keras_slim that runs `.tflite` files. It uses
`ai_edge_litert` (the successor of the deprecated `tf.lite.Interpreter`).
Inputs are quantized and outputs dequantized with the file's own scale
and zero point, so a full-integer file (`io_dtype="int8"`) is evaluated on
the same float data as the Keras model.

Latency is measured on this host. On x86, int8 kernels are often no
faster than float32 (XNNPACK's float path is very tuned); phones and NPUs
are where int8 pays. Report host latency; do not read it as a phone's.
"""

import time

import keras  # noqa: F401 - the docstring examples use it
import numpy as np

from keras_slim import _validation
from keras_slim._litert_file import File as _File
from keras_slim._litert_file import agreement as _agreement
from keras_slim._litert_file import flat_outputs as _flat_outputs


def load_error(data):
    """Return why LiteRT cannot load `.tflite` bytes, or `""` if it can.

    Loads and allocates the model with LiteRT's default settings (the
    XNNPACK delegate on CPU), as an app would, without running it.
    `keras_slim.export_tflite` calls it before writing a file.

    Args:
        data: The bytes of a `.tflite` file.

    Returns:
        An empty string, or the runtime's error message.

    Example:

    >>> load_error(b"not a model")
    'The model is not a valid Flatbuffer buffer'
    """
    from ai_edge_litert.interpreter import Interpreter

    try:
        Interpreter(model_content=bytes(data)).allocate_tensors()
    except (RuntimeError, ValueError) as e:
        return " ".join(str(e).split()) or type(e).__name__
    return ""


def predict(filepath, x, threads=None, kernels="xnnpack"):
    """Run a `.tflite` file on every sample of `x`; return float outputs.

    Inputs are quantized with the file's input scale and zero point when
    the file takes integers; integer outputs are dequantized, so the
    result is comparable with `model.predict(x)`. A file with a fixed
    batch size of 1 (what `export_tflite` writes by default) is run one
    sample at a time; a dynamic-batch file in chunks of 64.

    A model with several inputs takes `x` as a list (in the model's order)
    or a dict (by input name), as `model.predict` does; with several
    outputs, the result is a list or a dict, as `model.predict` returns
    for the Keras model the file was exported from.

    Args:
        filepath: Path of a `.tflite` file.
        x: NumPy array of inputs, `(n, *input_shape)`, or a list or dict of
            such arrays for a model with several inputs.
        threads: Number of CPU threads for LiteRT (default: its own).
        kernels: Which of LiteRT's CPU kernel sets runs the file:
            `"xnnpack"` (LiteRT's default, the XNNPACK delegate, what an
            app gets), `"builtin"` (LiteRT's built-in optimized kernels,
            without XNNPACK) or `"reference"` (its reference kernels,
            whose integer arithmetic TensorFlow Lite Micro's follow). An
            int8 file's outputs differ between them by a step here and
            there; check the one your target runs.

    Returns:
        A float32 NumPy array, `(n, *output_shape)`, or a list or dict of
        them for a model with several outputs.

    Raises:
        ValueError: if the file is missing or not a `.tflite` file,
            `kernels` is not one of the three, or `x` does not match its
            inputs.

    Example:

    >>> import numpy as np
    >>> from keras_slim import export_tflite
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> _ = export_tflite(model, "m.tflite", quantization="float32")
    >>> predict("m.tflite", np.zeros((5, 4), "float32")).shape
    (5, 3)

    The same file on LiteRT's reference kernels:

    >>> predict("m.tflite", np.zeros((5, 4), "float32"),
    ...         kernels="reference").shape
    (5, 3)
    """
    file = _File(filepath, threads=threads, kernels=kernels)
    return file.pack(file.run(file.arrays(x)))


def evaluate(filepath, x, y, threads=None, kernels="xnnpack"):
    """Top-1 accuracy of a classifier `.tflite` file on `(x, y)`.

    Args:
        filepath: Path of a `.tflite` classifier (logits or probabilities
            out).
        x: NumPy array of inputs, `(n, *input_shape)` (a list or dict of
            arrays for several inputs).
        y: Integer labels, `(n,)` (or one-hot, `(n, classes)`); a list or
            dict of them, one per output, for several outputs.
        threads: Number of CPU threads for LiteRT.
        kernels: LiteRT's CPU kernel set, as in `predict`.

    Returns:
        Accuracy as a float in [0, 1]; a list or dict of them, one per
        output, for several outputs.

    Raises:
        ValueError: if `x` and `y` differ in length, `x` does not match
            the file's input, or `kernels` is not one of the three.

    Example:

    >>> import numpy as np
    >>> from keras_slim import export_tflite
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    >>> model.set_weights([np.eye(2, dtype="float32"), np.zeros(2, "float32")])
    >>> _ = export_tflite(model, "m.tflite", quantization="float32")
    >>> evaluate("m.tflite", np.array([[1., 0.], [0., 1.]]), np.array([0, 1]))
    1.0
    """
    file = _File(filepath, threads=threads, kernels=kernels)
    arrays = file.arrays(x)
    labels = _flat_outputs(y, file.output_names)
    if len(labels) != len(file.outputs):
        raise ValueError(
            f"Expected `y` to hold one label array per output "
            f"{file.output_names}. Received: {len(labels)} arrays"
        )
    for label in labels:
        if len(arrays[0]) != len(label):
            raise ValueError(
                "Expected `x` and `y` to hold the same number of samples. "
                f"Received: len(x)={len(arrays[0])}, len(y)={len(label)}"
            )
    scores = []
    for label, logits in zip(labels, file.run(arrays)):
        if label.ndim == 2 and label.shape[1] > 1:
            label = np.argmax(label, axis=-1)
        label = label.reshape(len(label))
        predicted = np.argmax(logits.reshape(len(logits), -1), axis=-1)
        scores.append(float(np.mean(predicted == label)))
    return file.pack(scores)


class Comparison:
    """How closely a `.tflite` file follows its Keras model on some data.

    Attributes:
        agreement: Fraction of samples whose top-1 class is the same (for
            single-value outputs: within 10% of the largest expected
            magnitude); with `positions`, the fraction of positions
            (pixels, tokens) whose top-1 class over the last axis is the
            same.
        max_abs_error: Largest absolute difference of any output value.
        mean_abs_error: Mean absolute difference of the output values.
        samples: Number of samples compared.
        positions: Number of positions compared (`compare(...,
            per_position=True)`), or `None` (one top-1 per sample).

    Example:

    >>> c = Comparison(agreement=0.998, max_abs_error=0.2,
    ...                mean_abs_error=0.01, samples=450)
    >>> print(c)
    agreement 99.80% on 450 samples, max |error| 0.2, mean |error| 0.01
    """

    def __init__(
        self, agreement, max_abs_error, mean_abs_error, samples, positions=None
    ):
        self.agreement = agreement
        self.max_abs_error = max_abs_error
        self.mean_abs_error = mean_abs_error
        self.samples = samples
        self.positions = positions

    def __repr__(self):
        positions = (
            "" if self.positions is None else f", positions={self.positions}"
        )
        return (
            f"Comparison(agreement={self.agreement:.4f}, "
            f"max_abs_error={self.max_abs_error:.4g}, "
            f"mean_abs_error={self.mean_abs_error:.4g}, "
            f"samples={self.samples}{positions})"
        )

    def summary(self):
        """Return the comparison as one line of text."""
        where = f"on {self.samples} samples"
        if self.positions is not None:
            where = f"on {self.positions} positions of {self.samples} samples"
        return (
            f"agreement {100 * self.agreement:.2f}% {where}, max |error| "
            f"{self.max_abs_error:.4g}, mean |error| {self.mean_abs_error:.4g}"
        )

    def print_summary(self):
        """Print `summary()`."""
        print(self.summary())

    def __str__(self):
        return self.summary()


def _comparison(expected, actual, per_position=False):
    error = np.abs(expected.astype("float32") - actual.astype("float32"))
    agreement = _agreement(expected, actual, per_position)
    positions = int(np.prod(expected.shape[:-1])) if per_position else None
    return Comparison(
        agreement=agreement,
        max_abs_error=float(error.max()),
        mean_abs_error=float(error.mean()),
        samples=len(expected),
        positions=positions,
    )


def compare(
    model, filepath, x, threads=None, per_position=False, kernels="xnnpack"
):
    """Compare a `.tflite` file with the Keras model it was exported from.

    The check a mobile developer runs before shipping: on the same inputs,
    how often does the file pick the same class as the Keras model, and
    how far apart are the raw outputs. Models with several inputs or
    outputs take `x` as `model.predict` does and give one `Comparison` per
    output, in a list or dict as `model.predict` returns.

    A segmentation model (one class score vector per pixel, `(n, h, w,
    classes)`) or a per-token sequence model is compared with
    `per_position=True`: the top-1 class over the last axis at every
    position. Without it, each sample has one top-1 over all its values,
    which for a dense prediction says little.

    Args:
        model: The Keras model.
        filepath: Path of the `.tflite` file.
        x: NumPy array of inputs, `(n, *input_shape)` (a list or dict of
            arrays for several inputs).
        threads: Number of CPU threads for LiteRT.
        per_position: Whether agreement is per position: the fraction of
            positions (every index but the last axis) whose top-1 class
            over the last axis is the same. Each output needs a last axis
            of at least 2 classes.
        kernels: LiteRT's CPU kernel set that runs the file, as in
            `predict`.

    Returns:
        A `Comparison` (`agreement`, `max_abs_error`, `mean_abs_error`,
        and `positions` when `per_position`); a list or dict of them for
        several outputs.

    Raises:
        TypeError: if `model` is not a Keras model, or `per_position` is
            not a bool.
        ValueError: if `x` does not match the file's input shape, the
            model's and file's outputs differ in number or shape,
            `per_position` is set for an output with no class axis, or
            `kernels` is not one of the three.

    Example:

    >>> import numpy as np
    >>> from keras_slim import export_tflite
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> _ = export_tflite(model, "m.tflite", quantization="float32")
    >>> compare(model, "m.tflite", np.random.rand(20, 4)).agreement
    1.0

    Per pixel, for a segmentation model with 3 classes:

    >>> seg = keras.Sequential(
    ...     [keras.Input((8, 8, 1)), keras.layers.Conv2D(3, 3, padding="same")]
    ... )
    >>> _ = export_tflite(seg, "seg.tflite", quantization="float32")
    >>> result = compare(seg, "seg.tflite", np.random.rand(5, 8, 8, 1),
    ...                  per_position=True)
    >>> result.agreement, result.positions
    (1.0, 320)
    """
    _validation.check_model(model)
    _validation.check_type("per_position", per_position, bool, "a bool")
    file = _File(filepath, threads=threads, kernels=kernels)
    arrays = file.arrays(x)
    keras_x = (
        x if isinstance(x, dict) else (arrays if len(arrays) > 1 else arrays[0])
    )
    expected = _flat_outputs(
        model.predict(keras_x, verbose=0, batch_size=256), file.output_names
    )
    actual = file.run(arrays)
    shapes = [e.shape for e in expected], [a.shape for a in actual]
    if shapes[0] != shapes[1]:
        raise ValueError(
            "The model's and the file's outputs differ in shape: "
            f"{shapes[0]} vs {shapes[1]}. Received: filepath={filepath!r}"
        )
    if per_position:
        for shape in shapes[0]:
            if len(shape) < 2 or shape[-1] < 2:
                raise ValueError(
                    "Expected outputs with a class axis last (at least 2 "
                    "classes) for `per_position=True`. Received: output "
                    f"shape {shape}, per_position=True"
                )
    return file.pack(
        [_comparison(e, a, per_position) for e, a in zip(expected, actual)]
    )


class Latency:
    """Host latency of one `.tflite` invocation, in milliseconds.

    Attributes:
        median_ms: Median over the timed runs.
        p90_ms: 90th percentile.
        runs: Number of timed runs (after warm-up).
        threads: LiteRT CPU threads.

    Example:

    >>> print(Latency(median_ms=0.5, p90_ms=0.6, runs=50, threads=1))
    median 0.500 ms, p90 0.600 ms (50 runs, 1 thread)
    """

    def __init__(self, median_ms, p90_ms, runs, threads):
        self.median_ms = median_ms
        self.p90_ms = p90_ms
        self.runs = runs
        self.threads = threads

    def __repr__(self):
        return (
            f"Latency(median_ms={self.median_ms:.4g}, p90_ms="
            f"{self.p90_ms:.4g}, runs={self.runs}, threads={self.threads})"
        )

    def summary(self):
        """Return the latency as one line of text."""
        s = "" if self.threads == 1 else "s"
        return (
            f"median {self.median_ms:.3f} ms, p90 {self.p90_ms:.3f} ms "
            f"({self.runs} runs, {self.threads} thread{s})"
        )

    def print_summary(self):
        """Print `summary()`."""
        print(self.summary())

    def __str__(self):
        return self.summary()


def latency(filepath, runs=50, threads=1, warmup=5):
    """Measure how long one invocation of a `.tflite` file takes here.

    Runs the file on random input with LiteRT's default CPU path (XNNPACK)
    `warmup` times untimed, then `runs` times timed.

    Args:
        filepath: Path of a `.tflite` file.
        runs: Number of timed invocations, >= 1.
        threads: Number of CPU threads, >= 1.
        warmup: Number of untimed invocations first, >= 0.

    Returns:
        A `Latency` with `median_ms` and `p90_ms`.

    Raises:
        ValueError: if the file is missing or not a `.tflite` file, or an
            argument is out of range.

    Example:

    >>> from keras_slim import export_tflite
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> _ = export_tflite(model, "m.tflite", quantization="float32")
    >>> result = latency("m.tflite", runs=10)
    >>> result.runs, result.median_ms > 0
    (10, True)
    """
    _validation.check_int("runs", runs, minimum=1)
    _validation.check_int("threads", threads, minimum=1)
    _validation.check_int("warmup", warmup, minimum=0)
    interpreter = _File(filepath, threads=threads).interpreter
    rng = np.random.default_rng(0)
    for inp in interpreter.get_input_details():
        shape = [1 if d == -1 else int(d) for d in inp["shape"]]
        dtype = inp["dtype"]
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            data = rng.integers(info.min, info.max, size=shape, dtype=dtype)
        else:
            data = rng.random(shape).astype(dtype)
        interpreter.set_tensor(inp["index"], data)
    for _ in range(warmup):
        interpreter.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        times.append((time.perf_counter() - start) * 1000.0)
    return Latency(
        median_ms=float(np.median(times)),
        p90_ms=float(np.percentile(times, 90)),
        runs=runs,
        threads=threads,
    )


__all__ = [
    "predict",
    "evaluate",
    "compare",
    "latency",
    "load_error",
    "Comparison",
    "Latency",
]
