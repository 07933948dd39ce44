"""What enters an export, checked before the converter sees it.

The model's input and output signature (Keras's order and names, lists and
dicts), the calibration samples (shape, dtype, finite, sane range) and the
model's weights (finite). The TFLite converter is C++ that trusts its
input: a single `inf` in the calibration data crashes the process
("scale out of expressed type range", exit 139), so no such array may
reach it.
"""

import itertools
import sys

import keras
import numpy as np

# Calibration values beyond this magnitude are refused: int8 calibration of
# such ranges keeps no precision, and activations computed from them soon
# overflow float32 (which crashes the converter).
MAX_ABS_INPUT = 1e9
# Synthetic samples used to verify exports made without representative data.
VERIFY_SAMPLES = 8


class Signature:
    """Inputs and outputs of a model as the export sees them.

    `input_names`/`output_names` are in Keras's order (`model.inputs`,
    `model.outputs`); `input_structure` is the model's own `model.input`
    (tensor, list or dict) so that the export calls the model as Keras
    does, or `None` for a subclassed model with one input.
    """

    def __init__(self, input_names, shapes, dtypes, input_structure):
        self.input_names = input_names
        self.shapes = shapes
        self.dtypes = dtypes
        self.input_structure = input_structure
        self.output_names = None
        self.output_structure = None

    @property
    def single_input(self):
        return len(self.input_names) == 1


def _has_inputs(model):
    try:
        return bool(model.inputs)
    except (AttributeError, ValueError):
        return False


def _check_shape_argument(input_shape):
    if not (
        isinstance(input_shape, (tuple, list))
        and all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0
            for d in input_shape
        )
    ):
        raise ValueError(
            "Expected `input_shape` to be a tuple of positive ints without "
            f"the batch size. Received: input_shape={input_shape!r}"
        )
    return tuple(input_shape)


def _is_shape(value):
    return isinstance(value, (tuple, list)) and all(
        d is None or (isinstance(d, int) and not isinstance(d, bool))
        for d in value
    )


def _fill(model_shape, given, name):
    """`model_shape` with its `None` dimensions taken from `given`."""
    if given is None:
        return model_shape
    given = _check_shape_argument(given)
    compatible = len(given) == len(model_shape) and all(
        m is None or m == g for m, g in zip(model_shape, given)
    )
    if not compatible:
        raise ValueError(
            f"`input_shape` must match the model's input shape {model_shape}"
            f" for input {name!r} (only its `None` dimensions can be set). "
            f"Received: input_shape={given!r}"
        )
    return given


def signature(model, input_shape, representative_data):
    """Return the `Signature` of `model`, every dimension but the batch
    fixed, or raise `ValueError` naming the input to fix."""
    if _has_inputs(model):
        try:
            structure = model.input
        except (AttributeError, ValueError):  # a Sequential never called
            structure = model.inputs
            structure = structure[0] if len(structure) == 1 else structure
        tensors = keras.tree.flatten(structure)
        if isinstance(structure, dict):
            names = keras.tree.flatten({k: k for k in structure})
        else:
            names = [t.name for t in tensors]
            if len(set(names)) != len(names):
                names = [f"input_{i}" for i in range(len(tensors))]
        shapes = [tuple(t.shape[1:]) for t in tensors]
        given = _per_input(input_shape, names)
        shapes = [_fill(s, g, n) for s, g, n in zip(shapes, given, names)]
        dtypes = [str(t.dtype) for t in tensors]
        sig = Signature(names, shapes, dtypes, structure)
    elif input_shape is not None:
        sig = Signature(
            ["input_0"],
            [_check_shape_argument(input_shape)],
            ["float32"],
            None,
        )
    elif isinstance(representative_data, np.ndarray) and (
        representative_data.ndim >= 2
    ):
        shape = tuple(representative_data.shape[1:])
        sig = Signature(["input_0"], [shape], ["float32"], None)
    else:
        # Subclassed models do not record their input shape publicly.
        raise ValueError(
            "`model` does not record its input shape (a subclassed model?): "
            "pass `input_shape=(height, width, channels)` (without the "
            f"batch size). Received: input_shape=None for model={model.name!r}"
        )
    for name, shape in zip(sig.input_names, sig.shapes):
        if any(d is None for d in shape):
            raise ValueError(
                "`export_tflite` needs a fixed input shape (besides the "
                f"batch size); input {name!r} has shape {shape}: pass "
                "`input_shape` with its `None` dimensions set (command "
                f"line: --input-shape). Received: input_shape={input_shape!r}"
            )
    return sig


def _per_input(input_shape, names):
    if input_shape is None:
        return [None] * len(names)
    if isinstance(input_shape, dict):
        unknown = sorted(set(input_shape) - set(names))
        if unknown:
            raise ValueError(
                f"Expected `input_shape` keys among the model's inputs "
                f"{names}. Received: input_shape={input_shape!r}"
            )
        return [input_shape.get(n) for n in names]
    if len(names) == 1 and _is_shape(input_shape):
        return [input_shape]
    if (
        isinstance(input_shape, (tuple, list))
        and len(input_shape) == len(names)
        and all(s is None or _is_shape(s) for s in input_shape)
    ):
        return list(input_shape)
    raise ValueError(
        f"Expected `input_shape` to give one shape per model input "
        f"({len(names)}: {names}), as a list or a dict. "
        f"Received: input_shape={input_shape!r}"
    )


# ------------------------------------------------------------ samples


def samples(data, sig, limit):
    """Return a list (one per input, Keras's order) of arrays `(n, *shape)`
    holding at most `limit` calibration samples, checked."""
    if _is_dataset(data):
        batches = _from_dataset(data, sig, limit)
    else:
        if callable(data) and not isinstance(data, np.ndarray):
            data = data()
        data = _as_array(data)
        if not isinstance(data, (np.ndarray, list, tuple, dict)) and hasattr(
            data, "__next__"
        ):
            batches = _from_generator(data, sig, limit)
        else:
            batches = [_as_inputs(data, sig, "")]
    arrays = [
        np.concatenate([b[i] for b in batches])[:limit]
        for i in range(len(sig.input_names))
    ]
    counts = {len(a) for a in arrays}
    if len(counts) != 1:
        _fail(sig, f"inputs with different numbers of samples {sorted(counts)}")
    if not counts.pop():
        _fail(sig, "no samples")
    for name, array in zip(sig.input_names, arrays):
        check_finite_samples(array, None if sig.single_input else name)
    return [a.astype(d) for a, d in zip(arrays, sig.dtypes)]


def _is_dataset(data):
    """Whether `data` is a `tf.data.Dataset` (without importing TensorFlow
    under another backend: a dataset's owner has imported it)."""
    tf = sys.modules.get("tensorflow")
    data_module = getattr(tf, "data", None)
    return data_module is not None and isinstance(data, data_module.Dataset)


def _as_array(value):
    """A TensorFlow, JAX or PyTorch tensor as a NumPy array, or `value`."""
    if isinstance(value, (np.ndarray, list, tuple, dict)) or not (
        hasattr(value, "shape") and hasattr(value, "dtype")
    ):
        return value
    if hasattr(value, "detach"):  # a torch tensor, maybe on a device
        return value.detach().cpu().numpy()
    if hasattr(value, "numpy"):
        return value.numpy()
    return np.asarray(value)


def _expected(sig):
    parts = [
        f"{n!r}: (n, {', '.join(str(d) for d in s)}) {t}"
        for n, s, t in zip(sig.input_names, sig.shapes, sig.dtypes)
    ]
    if sig.single_input:
        shape = ", ".join(str(d) for d in sig.shapes[0])
        return f"model inputs of shape (n, {shape}) and dtype {sig.dtypes[0]}"
    return "one array per model input (a list in order, or a dict), " + (
        "; ".join(parts)
    )


def _fail(sig, received):
    raise ValueError(
        f"Expected `representative_data` to hold {_expected(sig)}. "
        f"Received: {received}"
    )


def _as_inputs(element, sig, where):
    """Turn one batch (array, list or dict) into a list of arrays."""
    element = _as_array(element)
    if isinstance(element, dict):
        missing = [n for n in sig.input_names if n not in element]
        if missing:
            _fail(sig, f"{where}a dict with keys {sorted(element)}")
        parts = [element[n] for n in sig.input_names]
    elif isinstance(element, (list, tuple)) and not sig.single_input:
        if len(element) != len(sig.input_names):
            _fail(sig, f"{where}a {type(element).__name__} of {len(element)}")
        parts = list(element)
    elif isinstance(element, np.ndarray) and sig.single_input:
        parts = [element]
    elif sig.single_input:
        raise TypeError(
            "Expected `representative_data` to be a NumPy array, a "
            "`tf.data.Dataset` or a generator of input batches. Received: "
            f"representative_data of type {type(element).__name__}"
        )
    else:
        _fail(sig, f"{where}a {type(element).__name__}")
    arrays = []
    for name, shape, dtype, part in zip(
        sig.input_names, sig.shapes, sig.dtypes, parts
    ):
        part = np.asarray(_as_array(part))
        if part.shape == shape:
            part = part[None]
        label = "" if sig.single_input else f"input {name!r}: "
        if part.ndim != len(shape) + 1 or tuple(part.shape[1:]) != shape:
            _fail(sig, f"{where}{label}an array of shape {part.shape}")
        if not (np.issubdtype(part.dtype, np.floating) or part.dtype == dtype):
            _fail(sig, f"{where}{label}an array of dtype {part.dtype}")
        arrays.append(part)
    return arrays


def _from_dataset(data, sig, limit):
    batches, count = [], 0
    for element in data:
        if isinstance(element, tuple) and (
            sig.single_input or len(element) in (2, 3)
        ):
            element = element[0]  # (x, y) or (x, y, sample_weight)
        batches.append(_as_inputs(element, sig, "a dataset element with "))
        count += len(batches[-1][0])
        if count >= limit:
            break
    if not batches:
        _fail(sig, "an empty dataset")
    return batches


def _from_generator(data, sig, limit):
    batches, count = [], 0
    for element in itertools.islice(data, limit):
        if isinstance(element, (list, tuple)) and (
            sig.single_input or isinstance(element[0], (list, tuple, dict))
        ):
            element = element[0]
        batches.append(_as_inputs(element, sig, "a generator yielding "))
        count += len(batches[-1][0])
        if count >= limit:
            break
    if not batches:
        _fail(sig, "an empty generator")
    return batches


def check_finite_samples(array, name=None, argument="representative_data"):
    """Raise `ValueError` naming the first sample of `array` with a NaN,
    an inf or a value beyond `MAX_ABS_INPUT` (`name`: the input's)."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    flat = array.reshape(len(array), -1)
    bad = ~np.isfinite(flat)
    kind, fix = (
        "NaN or inf values",
        (
            "Remove those samples (keep `x[np.isfinite(x).reshape(len(x), "
            "-1).all(axis=1)]`) or fix the preprocessing"
        ),
    )
    if not bad.any():
        bad = np.abs(flat) > MAX_ABS_INPUT
        kind = f"values beyond +/-{MAX_ABS_INPUT:g}"
        fix = "Scale the inputs as the model was trained"
    if not bad.any():
        return
    rows = np.flatnonzero(bad.any(axis=1))
    first = float(flat[rows[0]][bad[rows[0]]][0])
    where = f"of input {name!r}" if name else f"of `{argument}`"
    raise ValueError(
        f"Expected `{argument}` to hold finite values within "
        f"+/-{MAX_ABS_INPUT:g}. Received: {kind} in {len(rows)} sample(s) "
        f"{where}, the first at index {int(rows[0])} ({first!r}). {fix}: "
        "the TFLite converter crashes or calibrates nothing on such values."
    )


def synthetic_samples(sig, count=VERIFY_SAMPLES):
    """Deterministic samples in [0, 1) (zeros for integer inputs)."""
    rng = np.random.default_rng(0)
    return [
        rng.random((count, *s)).astype(d)
        if np.issubdtype(np.dtype(d), np.floating)
        else np.zeros((count, *s), d)
        for s, d in zip(sig.shapes, sig.dtypes)
    ]


# ------------------------------------------------------------ weights


def check_weights(model):
    """Raise `ValueError` naming the first variable of `model` (weights,
    BatchNorm statistics, quantization ranges) that holds NaN or inf."""
    for variable in model.weights:
        value = keras.ops.convert_to_numpy(variable)
        if not np.issubdtype(value.dtype, np.floating):
            continue
        bad = ~np.isfinite(value)
        if bad.any():
            path = getattr(variable, "path", None) or variable.name
            raise ValueError(
                "Expected every weight of `model` to be finite. Received: "
                f"{int(bad.sum())} NaN/inf value(s) of {value.size} in "
                f"{path!r} of model={model.name!r}. The training diverged "
                "or the file is damaged: restore a good checkpoint "
                "(`keras.callbacks.TerminateOnNaN` stops training at the "
                "first NaN). Nothing was converted."
            )


def check_calibratable(model, quantization):
    """Refuse calibrated quantization of stateful recurrent layers before
    the converter sees them.

    Keras 3's LSTM, GRU and SimpleRNN trace as a WHILE loop whose int8
    calibration segfaults inside TensorFlow's converter (2.21), killing
    the process; the conversion unrolls them over the signature's fixed
    steps instead (`_export_rewrites.unrolled_recurrence`). A stateful
    layer carries its state in variables from one call to the next,
    which a file run one batch at a time cannot reproduce as Keras
    computes it: refused here, as before any conversion.
    """
    from keras_slim import _export_rewrites

    if quantization not in ("int8", "int16x8"):
        return
    for layer in _export_rewrites.recurrent_layers(model):
        if layer.stateful:
            raise ValueError(
                f"Post-training `quantization={quantization!r}` cannot "
                f"calibrate the stateful recurrent layer {layer.name!r} "
                f"({type(layer).__name__}, stateful=True): its state "
                "lives in variables across calls, which the file cannot "
                "follow. Rebuild it with `stateful=False` and the same "
                "weights, or export with `quantization='dynamic'` (int8 "
                "weights, float activations) or `'float16'`. Nothing was "
                "converted."
            )
