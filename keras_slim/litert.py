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


def _interpreter(filepath, threads=None):
    from ai_edge_litert.interpreter import Interpreter

    filepath = _validation.check_input_file("filepath", filepath)
    with open(filepath, "rb") as f:
        head = f.read(8)
    _validation.check_tflite_bytes(head, filepath)
    interpreter = Interpreter(model_path=filepath, num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


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


def _quantize(x, detail):
    dtype = detail["dtype"]
    if not np.issubdtype(dtype, np.integer):
        return x.astype(dtype)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    q = np.round(x / scale + zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def _dequantize(y, detail):
    if not np.issubdtype(detail["dtype"], np.integer):
        return y.astype("float32")
    scale, zero_point = detail["quantization"]
    return ((y.astype("float32") - zero_point) * scale).astype("float32")


def _check_x(x, interpreter, name="x"):
    x = np.asarray(x)
    detail = interpreter.get_input_details()[0]
    expected = tuple(int(d) for d in detail["shape"][1:])
    if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"Expected `{name}` of shape (n, "
            f"{', '.join(str(d) for d in expected)}) to match the file's "
            f"input. Received: {name} of shape {x.shape}"
        )
    if len(x) == 0:
        raise ValueError(f"Expected `{name}` to hold at least one sample. "
                         f"Received: {name} of shape {x.shape}")
    return x.astype("float32") if np.issubdtype(x.dtype, np.floating) else x


def predict(filepath, x, threads=None):
    """Run a `.tflite` file on every sample of `x`; return float outputs.

    Inputs are quantized with the file's input scale and zero point when
    the file takes integers; integer outputs are dequantized, so the
    result is comparable with `model.predict(x)`. A file with a fixed
    batch size of 1 (what `export_tflite` writes by default) is run one
    sample at a time; a dynamic-batch file in chunks of 64.

    Args:
        filepath: Path of a `.tflite` file with one input and one output.
        x: NumPy array of inputs, `(n, *input_shape)`.
        threads: Number of CPU threads for LiteRT (default: its own).

    Returns:
        A float32 NumPy array, `(n, *output_shape)`.

    Raises:
        ValueError: if the file is missing or not a `.tflite` file, or `x`
            does not match its input shape.

    Example:

    >>> import numpy as np
    >>> from keras_slim import export_tflite
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> _ = export_tflite(model, "m.tflite", quantization="float32")
    >>> predict("m.tflite", np.zeros((5, 4), "float32")).shape
    (5, 3)
    """
    interpreter = _interpreter(filepath, threads)
    x = _check_x(x, interpreter)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    batch = int(inp["shape_signature"][0])
    chunk = 64 if batch == -1 else batch
    results = []
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk]
        n = len(part)
        if n != chunk:
            if batch == -1:
                interpreter.resize_tensor_input(inp["index"], part.shape)
                interpreter.allocate_tensors()
            else:  # pad the last fixed-size batch
                pad = np.zeros((chunk - n, *part.shape[1:]), part.dtype)
                part = np.concatenate([part, pad])
        elif batch == -1 and tuple(inp["shape"]) != part.shape:
            interpreter.resize_tensor_input(inp["index"], part.shape)
            interpreter.allocate_tensors()
            inp = interpreter.get_input_details()[0]
        interpreter.set_tensor(inp["index"], _quantize(part, inp))
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])[:n]
        results.append(_dequantize(y, out))
    return np.concatenate(results)


def evaluate(filepath, x, y, threads=None):
    """Top-1 accuracy of a classifier `.tflite` file on `(x, y)`.

    Args:
        filepath: Path of a `.tflite` classifier (logits or probabilities
            out).
        x: NumPy array of inputs, `(n, *input_shape)`.
        y: Integer labels, `(n,)` (or one-hot, `(n, classes)`).
        threads: Number of CPU threads for LiteRT.

    Returns:
        Accuracy as a float in [0, 1].

    Raises:
        ValueError: if `x` and `y` differ in length, or `x` does not match
            the file's input.

    Example:

    >>> import numpy as np
    >>> from keras_slim import export_tflite
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    >>> model.set_weights([np.eye(2, dtype="float32"), np.zeros(2, "float32")])
    >>> _ = export_tflite(model, "m.tflite", quantization="float32")
    >>> evaluate("m.tflite", np.array([[1., 0.], [0., 1.]]), np.array([0, 1]))
    1.0
    """
    y = np.asarray(y)
    if y.ndim == 2:
        y = np.argmax(y, axis=-1)
    if len(np.asarray(x)) != len(y):
        raise ValueError(
            "Expected `x` and `y` to hold the same number of samples. "
            f"Received: len(x)={len(np.asarray(x))}, len(y)={len(y)}"
        )
    logits = predict(filepath, x, threads=threads)
    return float(np.mean(np.argmax(logits, axis=-1) == y))


class Comparison:
    """How closely a `.tflite` file follows its Keras model on some data.

    Attributes:
        agreement: Fraction of samples whose top-1 class is the same.
        max_abs_error: Largest absolute difference of any output value.
        mean_abs_error: Mean absolute difference of the output values.
        samples: Number of samples compared.

    Example:

    >>> c = Comparison(agreement=0.998, max_abs_error=0.2,
    ...                mean_abs_error=0.01, samples=450)
    >>> print(c)
    agreement 99.80% on 450 samples, max |error| 0.2, mean |error| 0.01
    """

    def __init__(self, agreement, max_abs_error, mean_abs_error, samples):
        self.agreement = agreement
        self.max_abs_error = max_abs_error
        self.mean_abs_error = mean_abs_error
        self.samples = samples

    def __repr__(self):
        return (
            f"Comparison(agreement={self.agreement:.4f}, "
            f"max_abs_error={self.max_abs_error:.4g}, "
            f"mean_abs_error={self.mean_abs_error:.4g}, "
            f"samples={self.samples})"
        )

    def __str__(self):
        return (
            f"agreement {100 * self.agreement:.2f}% on {self.samples} "
            f"samples, max |error| {self.max_abs_error:.4g}, mean |error| "
            f"{self.mean_abs_error:.4g}"
        )


def compare(model, filepath, x, threads=None):
    """Compare a `.tflite` file with the Keras model it was exported from.

    The check a mobile developer runs before shipping: on the same inputs,
    how often does the file pick the same class as the Keras model, and
    how far apart are the raw outputs.

    Args:
        model: The Keras model.
        filepath: Path of the `.tflite` file.
        x: NumPy array of inputs, `(n, *input_shape)`.
        threads: Number of CPU threads for LiteRT.

    Returns:
        A `Comparison` (`agreement`, `max_abs_error`, `mean_abs_error`).

    Raises:
        TypeError: if `model` is not a Keras model.
        ValueError: if `x` does not match the file's input shape, or the
            model's and file's outputs differ in shape.

    Example:

    >>> import numpy as np
    >>> from keras_slim import export_tflite
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> _ = export_tflite(model, "m.tflite", quantization="float32")
    >>> compare(model, "m.tflite", np.random.rand(20, 4)).agreement
    1.0
    """
    _validation.check_model(model)
    interpreter = _interpreter(filepath, threads)
    x = _check_x(x, interpreter)
    del interpreter
    expected = np.asarray(model.predict(x, verbose=0, batch_size=256))
    actual = predict(filepath, x, threads=threads)
    if expected.shape != actual.shape:
        raise ValueError(
            "The model's and the file's outputs differ in shape: "
            f"{expected.shape} vs {actual.shape}. Received: "
            f"filepath={filepath!r}"
        )
    error = np.abs(expected.astype("float32") - actual)
    agreement = np.mean(
        np.argmax(expected.reshape(len(x), -1), -1)
        == np.argmax(actual.reshape(len(x), -1), -1)
    )
    return Comparison(
        agreement=float(agreement),
        max_abs_error=float(error.max()),
        mean_abs_error=float(error.mean()),
        samples=len(x),
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

    def __str__(self):
        s = "" if self.threads == 1 else "s"
        return (
            f"median {self.median_ms:.3f} ms, p90 {self.p90_ms:.3f} ms "
            f"({self.runs} runs, {self.threads} thread{s})"
        )


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
    interpreter = _interpreter(filepath, threads)
    inp = interpreter.get_input_details()[0]
    shape = [1 if d == -1 else int(d) for d in inp["shape"]]
    rng = np.random.default_rng(0)
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


__all__ = ["predict", "evaluate", "compare", "latency", "load_error",
           "Comparison", "Latency"]
