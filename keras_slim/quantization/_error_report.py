"""Where a quantized file's error comes from: `error_report`.

The file is run with every intermediate tensor kept (LiteRT's reference
kernels, no delegate), each op's output tensor is matched to the Keras
layer named in it (`keras_slim._tensor_names`), dequantized with its
scale and zero point, and compared with that layer's output in Keras on
the same samples. Layers the converter fused into the next op (a
convolution and its BatchNormalization, fused into the ReLU that follows)
have no tensor of their own and are reported at that op.
"""

import math

import keras
import numpy as np

from keras_slim import _litert_file
from keras_slim import _tensor_names
from keras_slim import _tflite_file
from keras_slim import _validation


class LayerError:
    """The file's error at one Keras layer's output.

    Attributes:
        name: The Keras layer.
        class_name: Its class (`"Conv2D"`, ...).
        dtype: dtype of the file's tensor (`"int8"`, `"int16"`,
            `"float32"`).
        snr_db: Signal-to-noise ratio of the file's output against Keras's,
            in dB over every sample: `10 log10(sum(keras^2) / sum((keras -
            file)^2))`. 40 dB is a 1% error; int8 layers sit near 30-45 dB.
        cosine: Mean cosine similarity of the file's and Keras's output,
            sample by sample (1.0: same direction).
        tensor: The file's tensor name.

    Example:

    >>> LayerError("conv", "Conv2D", "int8", 34.2, 0.9995, "m/conv_1/Relu")
    <LayerError 'conv' int8 snr_db=34.2 cosine=0.9995>
    """

    def __init__(self, name, class_name, dtype, snr_db, cosine, tensor):
        self.name = name
        self.class_name = class_name
        self.dtype = dtype
        self.snr_db = snr_db
        self.cosine = cosine
        self.tensor = tensor

    def __repr__(self):
        return (
            f"<LayerError {self.name!r} {self.dtype} "
            f"snr_db={self.snr_db:.1f} cosine={self.cosine:.4f}>"
        )


class ErrorReport:
    """Per-layer error of a quantized file, in the model's layer order.

    Returned by `error_report`; see there.

    Attributes:
        filepath: The file.
        samples: Number of samples compared.
        layers: List of `LayerError`, in the order the file computes them.
        unmatched: Names of Keras layers with no tensor of their own in
            the file (fused into a later op, or reshaped away).

    Example:

    >>> report = ErrorReport("m.tflite", 8, [
    ...     LayerError("relu1", "ReLU", "int8", 36.0, 0.9999, "t1"),
    ...     LayerError("relu2", "ReLU", "int8", 35.0, 0.9998, "t2"),
    ...     LayerError("logits", "Dense", "int8", 24.0, 0.998, "t3"),
    ... ], unmatched=["conv1"])
    >>> report.worst_layer, report.drops["logits"]
    ('logits', 11.0)
    """

    def __init__(self, filepath, samples, layers, unmatched):
        self.filepath = filepath
        self.samples = samples
        self.layers = layers
        self.unmatched = unmatched

    @property
    def drops(self):
        """Dict of layer name to the SNR it loses against the layer
        before (the error that layer adds, in dB)."""
        out, previous = {}, None
        for layer in self.layers:
            snr = min(layer.snr_db, 100.0)
            out[layer.name] = 0.0 if previous is None else previous - snr
            previous = snr
        return out

    @property
    def worst_layer(self):
        """The layer where the SNR drops most: where the error jumps."""
        drops = self.drops
        return max(drops, key=drops.get) if drops else None

    def ranked(self):
        """Layer names, the biggest SNR drop first."""
        drops = self.drops
        return sorted(drops, key=lambda k: -drops[k])

    def summary(self):
        """Return the per-layer table as text."""
        drops = self.drops
        worst = self.worst_layer
        lines = [
            f"Error of {self.filepath} against Keras, {self.samples} samples",
            f"{'layer':<28} {'class':<22} {'dtype':<8} {'SNR dB':>7} "
            f"{'drop':>6} {'cosine':>7}",
        ]
        for layer in self.layers:
            mark = "  <- largest drop" if layer.name == worst else ""
            lines.append(
                f"{layer.name[:28]:<28} {layer.class_name[:22]:<22} "
                f"{layer.dtype:<8} {layer.snr_db:>7.1f} "
                f"{drops[layer.name]:>6.1f} {layer.cosine:>7.4f}{mark}"
            )
        if self.unmatched:
            lines.append(
                "Fused into a later op (no tensor of their own): "
                + ", ".join(self.unmatched)
            )
        return "\n".join(lines)

    def print_summary(self, print_fn=print):
        """Print `summary()` with `print_fn`."""
        print_fn(self.summary())

    def __str__(self):
        return self.summary()

    def plot(self, ax=None):
        """Plot SNR (dB) per layer with matplotlib; mark the largest drop.

        Args:
            ax: A matplotlib `Axes` to draw on (a new figure if None).

        Returns:
            The `Axes`.

        Raises:
            ImportError: if matplotlib is not installed.
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as e:
            raise ImportError(
                f"`ErrorReport.plot` needs matplotlib ({e}): "
                "pip install matplotlib"
            ) from None
        if ax is None:
            _, ax = plt.subplots(figsize=(max(6, 0.25 * len(self.layers)), 3))
        snr = [min(layer.snr_db, 100.0) for layer in self.layers]
        ax.plot(range(len(snr)), snr, marker="o", markersize=3)
        ax.set_xticks(range(len(snr)))
        ax.set_xticklabels(
            [layer.name for layer in self.layers], rotation=90, fontsize=6
        )
        ax.set_ylabel("SNR vs Keras (dB)")
        worst = self.worst_layer
        if worst is not None:
            i = [layer.name for layer in self.layers].index(worst)
            ax.axvline(i, color="red", linestyle="--", linewidth=1)
            ax.annotate(f"largest drop: {worst}", (i, snr[i]), fontsize=7)
        return ax


def _match(file, model):
    """Map each matched Keras layer to the file's tensor holding its
    output: the last op output (in execution order) named after it."""
    layers = [
        layer
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer)
    ]
    names = {layer.name for layer in layers}
    flat = _tflite_file.parse(file.content, "<file>")
    graph = flat.subgraphs[0]
    schema = _tflite_file._schema()
    edge = {
        getattr(schema.BuiltinOperator, n) for n in ("QUANTIZE", "DEQUANTIZE")
    }
    found = {}
    for op in graph.operators or []:
        code = flat.operatorCodes[op.opcodeIndex]
        # A DEQUANTIZE to the float output repeats the int8 tensor.
        converts = max(code.builtinCode, code.deprecatedBuiltinCode) in edge
        for i in [int(i) for i in op.outputs if i >= 0]:
            name = graph.tensors[i].name
            name = name.decode() if isinstance(name, bytes) else str(name)
            layer = _tensor_names.producer(name, names)
            if layer is not None and not (converts and layer in found):
                # A DEQUANTIZE's output is its int8 input, dequantized.
                source = int(op.inputs[0]) if converts else i
                found[layer] = (i, name, source)
    return layers, found


def error_report(model, filepath, data, max_samples=64):
    """Measure a quantized file's error at each Keras layer's output.

    Use it when an int8 file agrees less with Keras than it should: the
    table shows, layer by layer, how far the file's activations are from
    the Keras model's (SNR in dB and cosine similarity), so the first
    layer where the error jumps stands out. Keep such layers in higher
    precision with `keras_slim.export_tflite(..., quantizer="litert",
    layer_precision={name: "int16x8"})`, or let `select_precision` pick
    them. Works for Sequential and Functional models (layers of a nested
    model are reported as the nested model). For a model trained with
    `QuantizationAwareTraining`, the file is compared with the model's
    own quantization-aware layers (what `litert.compare` measures at the
    output), so a drop marks where the simulation and the file part.
    The file runs on LiteRT's built-in kernels here (every intermediate
    tensor readable), which can round a step apart from the XNNPACK
    kernels `litert.predict` uses: 40-60 dB where the two agree exactly.

    Args:
        model: The Keras model the file was exported from (Sequential or
            Functional).
        filepath: Path of the `.tflite` file (batch size 1 or dynamic).
        data: Inputs as `model.predict` takes them (an array, or a list
            or dict of arrays).
        max_samples: Compare on at most this many samples (evenly spread).

    Returns:
        An `ErrorReport`: `summary()`, `print_summary()`, `plot()`,
        `layers`, `worst_layer`.

    Raises:
        ValueError: if `model` is subclassed (its layers' outputs cannot
            be read), if `data` does not fit the file, or if no layer of
            `model` is named in the file.

    Example:

    >>> import numpy as np
    >>> model = keras.Sequential([
    ...     keras.Input((8, 8, 1)),
    ...     keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
    ...     keras.layers.GlobalAveragePooling2D(name="gap"),
    ...     keras.layers.Dense(10, name="logits"),
    ... ])
    >>> x = np.random.rand(32, 8, 8, 1).astype("float32")
    >>> from keras_slim import export_tflite
    >>> _ = export_tflite(model, "m.tflite", representative_data=x)
    >>> report = error_report(model, "m.tflite", x)
    >>> [layer.name for layer in report.layers]
    ['conv', 'gap', 'logits']
    >>> report.layers[-1].snr_db > 20
    True
    """
    _validation.check_model(model)
    _validation.check_int("max_samples", max_samples, minimum=1)
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ValueError(
            "`error_report` reads each layer's output, which needs a "
            "Sequential or Functional model; a subclassed model has none. "
            f"Received: model of type {type(model).__name__}"
        )
    filepath = _validation.check_input_file("filepath", filepath)
    file = _litert_file.File(filepath, preserve=True)
    arrays = file.arrays(data, "data")
    n = len(arrays[0])
    index = np.unique(np.linspace(0, n - 1, min(n, max_samples)).astype(int))
    arrays = [a[index] for a in arrays]
    layers, found = _match(file, model)
    if not found:
        raise ValueError(
            f"No layer of `model` ({model.name!r}) is named in the file's "
            "tensors; was it exported from this model by "
            f"`keras_slim.export_tflite`? Received: filepath={filepath!r}"
        )
    matched = [layer for layer in layers if layer.name in found]
    x = arrays[0] if len(arrays) == 1 else arrays
    expected = _keras_outputs(model, matched, x)
    actual = _run(file, arrays, [found[layer.name][0] for layer in matched])
    results = []
    details = {d["index"]: d for d in file.interpreter.get_tensor_details()}
    for layer, e, a in zip(matched, expected, actual):
        i, tensor, source = found[layer.name]
        e = np.asarray(e, "float64").reshape(len(index), -1)
        if a.shape != e.shape:
            continue  # the tensor holds a reshaped or partial output
        dtype = np.dtype(details[source]["dtype"]).name
        results.append(
            LayerError(
                layer.name,
                type(layer).__name__,
                dtype,
                *_snr_cosine(e, a),
                tensor,
            )
        )
    unmatched = [
        layer.name
        for layer in layers
        if layer.name not in {r.name for r in results}
    ]
    return ErrorReport(filepath, len(index), results, unmatched)


def _keras_outputs(model, layers, x, batch_size=64):
    """Each of `layers`' output on `x`, as `model` computes it.

    A model made quantization-aware in place computes its layers through
    hooks that fake-quantize their inputs, weights and outputs; a new
    Functional model over its layers would not (it would give the float
    outputs, and the report the file's distance from the float model, not
    from the QAT model `litert.compare` measures). Its outputs are
    recorded while the model itself runs, eagerly, batch by batch.
    """
    from keras_slim.quantization import _in_place
    from keras_slim.quantization import _intercept

    if _in_place.awareness_of(model) is None or not _intercept.runs_as_graph(
        model
    ):
        probe = keras.Model(model.inputs, [layer.output for layer in layers])
        out = probe.predict(x, verbose=0, batch_size=batch_size)
        return out if len(layers) > 1 else [out]
    arrays = keras.tree.flatten(x)
    n = len(arrays[0])
    names = [id(layer) for layer in layers]
    out = {name: [] for name in names}
    for start in range(0, n, batch_size):
        batch = [a[start : start + batch_size] for a in arrays]
        with _intercept.recording() as recorder:
            model(batch[0] if len(batch) == 1 else batch, training=False)
        values = recorder.values()
        for name in names:
            out[name].append(keras.ops.convert_to_numpy(values[name]))
    return [np.concatenate(out[name]) for name in names]


def _run(file, arrays, tensor_ids):
    it = file.interpreter
    details = {d["index"]: d for d in it.get_tensor_details()}
    out = [[] for _ in tensor_ids]
    for j in range(len(arrays[0])):
        for array, detail in zip(arrays, file.inputs):
            it.set_tensor(
                detail["index"], _litert_file.quantize(array[j : j + 1], detail)
            )
        it.invoke()
        for values, i in zip(out, tensor_ids):
            y = it.get_tensor(i)
            values.append(_dequantize(y, details[i]).reshape(-1))
    return [np.stack(v) for v in out]


def _dequantize(y, detail):
    params = detail.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", []), "float64")
    zeros = np.asarray(params.get("zero_points", []), "float64")
    y = np.asarray(y, "float64")
    if not np.issubdtype(detail["dtype"], np.integer) or scales.size != 1:
        return y
    return (y - zeros[0]) * scales[0]


def _snr_cosine(expected, actual):
    noise = float(np.sum((expected - actual) ** 2))
    signal = float(np.sum(expected**2))
    snr = (
        math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-30) / noise)
    )
    norms = np.linalg.norm(expected, axis=1) * np.linalg.norm(actual, axis=1)
    dots = np.sum(expected * actual, axis=1)
    cos = np.where(norms > 0, dots / np.maximum(norms, 1e-30), 1.0)
    return snr, float(np.mean(cos))
