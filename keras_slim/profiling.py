"""Profile a Keras model: parameters, nonzeros, MACs and sizes per layer.

`profile(model)` is how you see what compression did: magnitude pruning
lowers `nonzero_params` (and the gzip size of the exported file), channel
pruning lowers `params` and `macs`, int8 export divides the bytes by about
four.
"""

import keras
import numpy as np

from keras_slim import _layers
from keras_slim import _validation
from keras_slim import catalogue


class LayerProfile:
    """One row of a `ModelProfile`: a leaf layer's figures.

    Attributes:
        path: `outer/inner/leaf` name of the layer.
        type: Class name, e.g. `"Conv2D"`.
        params: Number of weights (trainable and not).
        nonzero_params: Weights that are not exactly zero.
        macs: Multiply-accumulates of one sample, or `None` when unknown:
            the layer's shapes are unknown (layers of subclassed models) or
            `keras_slim.catalogue` does not count its kind (recurrent and
            attention layers).

    Example:

    >>> row = LayerProfile("dense", "Dense", params=10, nonzero_params=8,
    ...                    macs=8)
    >>> round(row.sparsity, 2)
    0.2
    """

    def __init__(self, path, type, params, nonzero_params, macs):
        self.path = path
        self.type = type
        self.params = params
        self.nonzero_params = nonzero_params
        self.macs = macs

    @property
    def sparsity(self):
        if not self.params:
            return 0.0
        return 1.0 - self.nonzero_params / self.params

    def __repr__(self):
        return (
            f"LayerProfile({self.path!r}, {self.type!r}, params="
            f"{self.params}, nonzero_params={self.nonzero_params}, "
            f"macs={self.macs})"
        )


class ModelProfile:
    """Parameters, nonzeros, MACs and sizes of a model; see `profile`.

    Attributes:
        name: The model's name.
        layers: List of `LayerProfile`, one per leaf layer with weights or
            MACs.
        total_params, nonzero_params: Sums over the layers.
        macs: Multiply-accumulates of one sample (layers whose MACs are
            unknown count 0; `macs_complete` tells whether any were).
        macs_complete: False when some layer's MACs could not be known.
        float32_bytes: Size of all weights in float32.
        int8_bytes: Estimated size of the weights in an int8 file: one
            byte a weight, four a bias, the per-channel scales and zero
            points of convolutions, nothing for BatchNormalization (the
            converter folds it into the preceding convolution's bias).
            The file adds its graph (about 0.3 kB a tensor: names,
            shapes, activation ranges), so it is 15-25% larger;
            `export_tflite` reports the exact size.
        sparsity: `1 - nonzero_params / total_params`.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> p = profile(model)
    >>> p.total_params, p.macs, p.float32_bytes
    (10, 8, 40)
    """

    def __init__(self, name, layers, float32_bytes, int8_bytes):
        self.name = name
        self.layers = layers
        self.total_params = sum(r.params for r in layers)
        self.nonzero_params = sum(r.nonzero_params for r in layers)
        self.macs = sum(r.macs or 0 for r in layers)
        self.macs_complete = all(r.macs is not None for r in layers)
        self.float32_bytes = float32_bytes
        self.int8_bytes = int8_bytes

    @property
    def sparsity(self):
        if not self.total_params:
            return 0.0
        return 1.0 - self.nonzero_params / self.total_params

    def __repr__(self):
        return (
            f"<ModelProfile {self.name!r} params={self.total_params} "
            f"nonzero={self.nonzero_params} macs={self.macs}>"
        )

    def summary(self):
        """Return a per-layer table and the totals, as text.

        Example:

        >>> model = keras.Sequential(
        ...     [keras.Input((4,)), keras.layers.Dense(2, name="d")])
        >>> print(profile(model).summary())  # the bias starts at zero
        layer type params nonzero sparsity MACs
        d Dense 10 8 20.0% 8
        total 10 8 20.0% 8
        float32 40 B, int8 ~40 B
        """
        rows = [("layer", "type", "params", "nonzero", "sparsity", "MACs")]
        for r in self.layers:
            rows.append(
                (
                    r.path,
                    r.type,
                    f"{r.params:,}",
                    f"{r.nonzero_params:,}",
                    f"{100 * r.sparsity:.1f}%",
                    "?" if r.macs is None else f"{r.macs:,}",
                )
            )
        rows.append(
            (
                "total",
                "",
                f"{self.total_params:,}",
                f"{self.nonzero_params:,}",
                f"{100 * self.sparsity:.1f}%",
                f"{self.macs:,}" + ("" if self.macs_complete else "+?"),
            )
        )
        widths = [max(len(row[i]) for row in rows) for i in range(6)]
        lines = [
            "  ".join(
                cell.ljust(w) if i < 2 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths))
            ).rstrip()
            for row in rows
        ]
        lines.append(
            f"float32 {_bytes(self.float32_bytes)}, "
            f"int8 ~{_bytes(self.int8_bytes)}"
        )
        return "\n".join(lines)

    def print_summary(self, print_fn=print):
        """Print `summary()`, line by line, with `print_fn` (as Keras's
        `Model.summary` does)."""
        for line in self.summary().splitlines():
            print_fn(line)

    def __str__(self):
        return self.summary()


def _bytes(n):
    for unit, size in (("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def profile(model):
    """Count the parameters, nonzeros and MACs of every layer of a model.

    Works on Sequential, Functional, nested and subclassed models (MACs
    need the layer's input and output shapes, which Keras knows for
    Functional and Sequential graphs; for layers of subclassed models they
    are reported as unknown).

    Args:
        model: A built Keras model.

    Returns:
        A `ModelProfile`; `.summary()` prints it as a table.

    Raises:
        TypeError: if `model` is not a Keras model.
        ValueError: if `model` is not built.

    Example:

    >>> from keras_slim.models import small_cnn
    >>> p = profile(small_cnn())
    >>> p.total_params, p.macs
    (20394, 1385088)
    """
    _validation.check_model(model)
    rows = []
    float32_bytes = 0
    int8_bytes = 0
    for path, layer in _layers.iter_layers(model):
        weights = layer.weights
        macs = catalogue.count_macs(layer)
        if not weights and not macs:
            continue
        values = [np.asarray(keras.ops.convert_to_numpy(w)) for w in weights]
        params = int(sum(v.size for v in values))
        nonzero = int(sum(np.count_nonzero(v) for v in values))
        rows.append(
            LayerProfile(path, type(layer).__name__, params, nonzero, macs)
        )
        float32_bytes += sum(v.size * v.dtype.itemsize for v in values)
        int8_bytes += _int8_bytes(layer, weights, values)
    return ModelProfile(model.name, rows, float32_bytes, int8_bytes)


# Per quantized tensor, a TFLite int8 file stores a float32 scale and an
# int64 zero point for each channel (per-channel tensors) or once.
_QUANT_PARAMS = 4 + 8


def _int8_bytes(layer, weights, values):
    """Bytes of a layer's weights in an int8 file, quantization included.

    As the catalogue's `int8_weights` says: "per_channel" (convolutions)
    an int8 kernel with per-output-channel scales and an int32 bias with
    per-channel scales (always present: the converter folds a following
    BatchNormalization into it); "per_tensor" (Dense) the same with one
    kernel scale; "folded" (BatchNormalization) nothing. Anything else: a
    byte a weight.
    """
    kind = catalogue.get_layer_kind(layer)
    layout = None if kind is None else kind.int8_weights
    if layout == "folded":
        return 0
    kernel = getattr(layer, "kernel", None)
    spec = None if kind is None else kind.kernel("kernel")
    if layout is None or kernel is None or spec is None:
        return int(sum(v.size for v in values))
    axes = spec.output_axes_of(layer)
    channels = int(np.prod([kernel.shape[a] for a in axes]))
    quantized = 1 if layout == "per_tensor" else channels
    return (
        int(np.prod(kernel.shape))
        + 4 * channels
        + 2 * quantized * _QUANT_PARAMS
    )


__all__ = ["profile", "ModelProfile", "LayerProfile"]
