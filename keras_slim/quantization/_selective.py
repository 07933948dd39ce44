"""Selective precision: `select_precision` keeps the fewest most sensitive
layers in int16 activations (or float) so that a file reaches a target
agreement with Keras, quantizing the rest to int8.

Sensitivity comes from `error_report` on the all-int8 file: each layer's
SNR drop (the error it adds). The k most sensitive layers are kept, k
doubling until the target is met, then bisected down to the fewest.
Every candidate is a real LiteRT Quantizer export checked on the data.
"""

import os
import tempfile

import keras
import numpy as np

from keras_slim import _tflite_file
from keras_slim import _validation
from keras_slim import litert
from keras_slim.quantization._error_report import error_report

_EDGE = ("QUANTIZE", "DEQUANTIZE")


class SelectionReport:
    """What `select_precision` kept in higher precision, and its cost.

    Attributes:
        layers: Names of the layers kept in `precision`, most sensitive
            first (empty when the all-int8 file met the target).
        precision: `"int16x8"` or `"float32"`.
        reached: Whether the written file meets `min_agreement`.
        agreement: The written file's agreement with Keras on the data.
        int8_agreement: The all-int8 file's agreement.
        bytes, int8_bytes: Size of the written and of the all-int8 file.
        latency_ms, int8_latency_ms: Host LiteRT latency (batch 1, one
            thread, median) of the written and of the all-int8 file.
        int8_op_fraction: Share of the written file's compute ops (all
            but QUANTIZE/DEQUANTIZE) whose output is int8.
        export: The `ExportReport` of the written file.
        error_report: The `ErrorReport` of the all-int8 file that ranked
            the layers (None if the all-int8 file met the target).
        tried: List of `(number of layers kept, agreement)` tried.

    Example:

    >>> result = SelectionReport(layers=["relu4"], reached=True)
    >>> result.layers, result.reached
    (['relu4'], True)
    """

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def summary(self):
        """Return the selection and its cost as text."""
        kept = ", ".join(self.layers) or "none"
        lines = [
            f"{self.export.filepath}: agreement {100 * self.agreement:.2f}% "
            f"(all-int8: {100 * self.int8_agreement:.2f}%), target "
            f"{'met' if self.reached else 'NOT met'}",
            f"  kept in {self.precision}: {kept}",
            f"  int8 ops: {100 * self.int8_op_fraction:.1f}%",
            f"  bytes: {self.bytes:,} (all-int8: {self.int8_bytes:,})",
            f"  latency: {self.latency_ms:.3f} ms (all-int8: "
            f"{self.int8_latency_ms:.3f} ms, host LiteRT, 1 thread)",
        ]
        return "\n".join(lines)

    def print_summary(self, print_fn=print):
        """Print `summary()` with `print_fn`."""
        print_fn(self.summary())

    def __str__(self):
        return self.summary()


def int8_op_fraction(data):
    """Share of a file's compute ops whose first output is int8."""
    schema = _tflite_file._schema()
    model = _tflite_file.parse(data, "<file>")
    names = {v: k for k, v in vars(schema.BuiltinOperator).items()}
    total = int8 = 0
    for graph in model.subgraphs:
        for op in graph.operators or []:
            code = model.operatorCodes[op.opcodeIndex]
            name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode))
            outs = [int(i) for i in op.outputs if i >= 0]
            if name in _EDGE or not outs:
                continue
            total += 1
            int8 += graph.tensors[outs[0]].type == schema.TensorType.INT8
    return int8 / total if total else 1.0


def select_precision(
    model,
    filepath,
    representative_data,
    min_agreement=0.99,
    precision="int16x8",
    validation_data=None,
    max_layers=None,
):
    """Export an int8 file that keeps its most sensitive layers in higher
    precision, as few as reach `min_agreement`.

    For a model whose all-int8 file agrees too little with Keras: the
    all-int8 file's `error_report` ranks the layers by the error each adds,
    and the fewest top-ranked layers are kept in int16 activations
    (`"int16x8"`: the file stays integer end to end, `int8_only` False) or
    float (`"float32"`: a mixed file). Uses the LiteRT Quantizer
    (`pip install "keras-slim[litert]"`). Calling it is the explicit
    choice of a file that is not all-int8; if the all-int8 file already
    meets the target, that is what is written.

    Args:
        model: A trained Sequential or Functional Keras model.
        filepath: Path of the `.tflite` file to write.
        representative_data: Calibration inputs (an array, or a list or
            dict of arrays), as for `keras_slim.export_tflite`.
        min_agreement: Target share of samples on which the file's top-1
            matches Keras's, in (0, 1].
        precision: `"int16x8"` or `"float32"` for the kept layers.
        validation_data: Inputs on which agreement is measured (default:
            `representative_data`).
        max_layers: Keep at most this many layers (default: no limit).

    Returns:
        A `SelectionReport` (`layers`, `agreement`, `reached`, `bytes`,
        `latency_ms`, `int8_op_fraction`, `summary()`); the file is
        written even when the target is not reached (`reached` False).

    Raises:
        ImportError: if `litert-quantizer` is not installed.
        ValueError: if an argument is invalid, or the export fails.

    Example:

    >>> import numpy as np
    >>> model = keras.Sequential([
    ...     keras.Input((8, 8, 1)),
    ...     keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
    ...     keras.layers.GlobalAveragePooling2D(name="gap"),
    ...     keras.layers.Dense(10, name="logits"),
    ... ])
    >>> x = np.random.rand(64, 8, 8, 1).astype("float32")
    >>> result = select_precision(model, "mixed.tflite", x, min_agreement=0.9)
    >>> result.reached, result.export.integer_only
    (True, True)
    """
    from keras_slim import export_tflite

    _validation.check_model(model)
    _validation.check_range(
        "min_agreement", min_agreement, 0, 1, low_inclusive=False
    )
    _validation.check_choice("precision", precision, ("int16x8", "float32"))
    if max_layers is not None:
        _validation.check_int("max_layers", max_layers, minimum=1)
    data = representative_data if validation_data is None else validation_data
    folder = tempfile.mkdtemp(prefix="keras_slim_select_")

    def build(layers, path):
        report = export_tflite(
            model,
            path,
            quantizer="litert",
            representative_data=representative_data,
            layer_precision=dict.fromkeys(layers, precision) or None,
            min_agreement=0,
        )
        return report, _agreement(model, path, data)

    base_path = os.path.join(folder, "int8.tflite")
    base, base_agreement = build([], base_path)
    ranked, tried, errors = [], [(0, base_agreement)], None
    best = []
    if base_agreement < min_agreement:
        errors = error_report(model, base_path, data)
        ranked = errors.ranked()[: max_layers or None]
        best = _search(ranked, min_agreement, folder, build, tried)
    report, agreement = build(best, filepath)
    with open(filepath, "rb") as f:
        content = f.read()
    result = SelectionReport(
        layers=best,
        precision=precision,
        reached=agreement >= min_agreement,
        agreement=agreement,
        int8_agreement=base_agreement,
        bytes=report.info.bytes,
        int8_bytes=base.info.bytes,
        latency_ms=litert.latency(filepath, runs=30).median_ms,
        int8_latency_ms=litert.latency(base_path, runs=30).median_ms,
        int8_op_fraction=int8_op_fraction(content),
        export=report,
        error_report=errors,
        tried=tried,
    )
    for name in os.listdir(folder):
        os.remove(os.path.join(folder, name))
    os.rmdir(folder)
    return result


def _search(ranked, target, folder, build, tried):
    """The fewest top layers of `ranked` reaching `target`: double, then
    bisect; all of them if none does."""
    scores = {}

    def score(k):
        if k not in scores:
            path = os.path.join(folder, f"top{k}.tflite")
            scores[k] = build(ranked[:k], path)[1]
            tried.append((k, scores[k]))
        return scores[k]

    low, k = 0, 1
    while k < len(ranked) and score(k) < target:
        low, k = k, 2 * k
    k = min(k, len(ranked))
    if k == 0 or score(k) < target:
        return ranked[:k]
    high = k
    while high - low > 1:
        mid = (low + high) // 2
        if score(mid) >= target:
            high = mid
        else:
            low = mid
    return ranked[:high]


def _agreement(model, path, data):
    result = litert.compare(model, path, data)
    values = keras.tree.flatten(result)
    return float(np.min([c.agreement for c in values]))
