"""Range equalisation before post-training int8: `equalize_ranges`.

A TFLite int8 file quantizes weights per output channel but activations
per tensor: one scale for every channel of a ReLU's output. A channel
whose values stay near 0.1 while its neighbours reach 6 keeps only a few
int8 steps. `equalize_ranges` rescales such channels without changing
what the model computes (Nagel et al. 2019, "Data-Free Quantization
Through Weight Equalization and Bias Correction", section 4.1, applied to
activation ranges): in a chain BatchNormalization -> ReLU -> consumer,
channel `c` of the BatchNormalization is multiplied by `1 / s_c` (gamma
and beta), and the consumer's input channel `c` by `s_c`, since
`relu(x / s) = relu(x) / s` for `s > 0`. A ReLU with `max_value` (ReLU6)
clips at a fixed value, so the identity holds only where a channel stays
below it: channels that reach the clip on the representative data keep
`s_c = 1`, and the others are only enlarged (`s_c <= 1`), to
`sqrt(m_c * M)` where `m_c` is the channel's largest value and `M` the
tensor's, the geometric middle between the channel's range and the
tensor's (it leaves the consumer's weight column a share of its range).
A DepthwiseConv2D consumer takes the scale back in its kernel's channel
`c` as well, so its output is unchanged. A linear chain
BatchNormalization -> consumer (MobileNetV2's first projection) is
rescaled the same way on absolute values, exactly for any scale.
`correct_bias` takes the mean error of int8 weights off the biases
(section 4.2 of the same paper) as a new model, measuring the input means
on a probe model of the graph; the package's own, for any model
structure, is `export_tflite(..., bias_correction=True)`
(`keras_slim/_bias_correction.py`, whose error and shift it uses).

Kept in benchmarks/, not in the package: measured on MobileNetV2-0.35 at
96x96 (3 seeds, converter int8, benchmarks/results/ptq.md), neither step
raised the median agreement with Keras (94.22% plain, 94.00% equalised,
93.78% bias corrected). The probe found the error in activations, not
weights (int8 weights with float activations agree 100%), so bias
correction has little to correct, and per-channel weight scales already
absorb what cross-layer equalisation balances for weights.
"""

import keras
import numpy as np

from keras_slim import _bias_correction
from keras_slim import _validation

_CONSUMERS = (
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.Dense,
)


class EqualizationReport:
    """What `equalize_ranges` changed.

    Attributes:
        model: The equalised model (a new model; the input is untouched).
        chains: List of `(batch_norm, relu, consumer)` layer names that
            were rescaled.
        scales: Dict of ReLU layer name to the NumPy array of `s_c`.
        skipped: Dict of layer name to the reason it was left alone.

    Example:

    >>> import numpy as np
    >>> report = EqualizationReport(None, [("bn", "relu", "conv")],
    ...                             {"relu": np.array([1.0, 0.5])}, {})
    >>> report.chains
    [('bn', 'relu', 'conv')]
    """

    def __init__(self, model, chains, scales, skipped):
        self.model = model
        self.chains = chains
        self.scales = scales
        self.skipped = skipped

    def __repr__(self):
        return (
            f"<EqualizationReport chains={len(self.chains)} "
            f"skipped={len(self.skipped)}>"
        )


def _histories(value):
    """Names of the layers whose outputs appear in a node's config."""
    if isinstance(value, dict):
        if "keras_history" in value:
            return [value["keras_history"][0]]
        return [n for v in value.values() for n in _histories(v)]
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _histories(v)]
    return []


def _graph(model):
    """(inputs, consumers): layer name to the names it reads and to the
    names that read it, from the model's public config."""
    inputs, consumers = {}, {}
    for entry in model.get_config()["layers"]:
        name = entry["config"]["name"]
        nodes = entry.get("inbound_nodes") or []
        inputs[name] = [n for node in nodes for n in _histories(node)]
        for parent in inputs[name]:
            consumers.setdefault(parent, []).append(name)
    return inputs, consumers


def _chains(model):
    """Chains (BatchNormalization, ReLU, consumer) that can be rescaled,
    and a dict of skipped ReLU names to reasons."""
    layers = {layer.name: layer for layer in model.layers}
    inputs, consumers = _graph(model)
    chains, skipped = [], {}
    for name, layer in layers.items():
        if (
            isinstance(layer, keras.layers.BatchNormalization)
            and layer.scale
            and layer.center
        ):
            # A linear chain (MobileNetV2's first projection): exact for
            # any scale.
            consumer, _ = _consumer_of(name, layers, consumers)
            if consumer is not None:
                chains.append((name, None, consumer.name))
            continue
        if not isinstance(layer, keras.layers.ReLU):
            continue
        if layer.negative_slope or layer.threshold:
            skipped[name] = "leaky or thresholded ReLU"
            continue
        parents = inputs.get(name, [])
        if len(parents) != 1 or not isinstance(
            layers.get(parents[0]), keras.layers.BatchNormalization
        ):
            skipped[name] = "not after a BatchNormalization"
            continue
        if not (layers[parents[0]].scale and layers[parents[0]].center):
            skipped[name] = "BatchNormalization without gamma or beta"
            continue
        if len(consumers.get(parents[0], [])) != 1:
            skipped[name] = "its BatchNormalization has other readers"
            continue
        consumer, reason = _consumer_of(name, layers, consumers)
        if consumer is None:
            skipped[name] = reason
            continue
        chains.append((parents[0], name, consumer.name))
    return chains, skipped


def _consumer_of(name, layers, consumers):
    """`(layer, None)`: the one layer reading `name`'s output, if it can
    take a scale on its input channels; else `(None, reason)`."""
    children = consumers.get(name, [])
    if len(children) != 1 or not isinstance(
        layers.get(children[0]), _CONSUMERS
    ):
        return None, (
            "not read by exactly one Conv2D, Dense or DepthwiseConv2D"
        )
    consumer = layers[children[0]]
    if isinstance(consumer, keras.layers.Conv2D) and consumer.groups != 1:
        return None, "grouped convolution"
    return consumer, None


def _scales(output, max_value, linear):
    """Per-channel `s_c` from a chain's outputs on the representative
    data (channels last): `sqrt(m_c / M)`, and for a ReLU with
    `max_value`, no less than `2 m_c / max_value` (the clip stays at
    least twice above the channel's largest value, for unseen data)."""
    axes = tuple(range(output.ndim - 1))
    output = np.abs(output) if linear else output
    m = output.max(axis=axes).astype("float64")
    top = m.max()
    s = np.ones_like(m)
    if top <= 0:
        return s
    grow = m > 0
    s[grow] = np.sqrt(m[grow] / top)
    if max_value is not None:
        s = np.maximum(s, np.minimum(1.0, 2.0 * m / float(max_value)))
    return s


def equalize_ranges(model, representative_data, batch_size=32):
    """Equalise the channel ranges of ReLU outputs before int8 export.

    For post-training int8 of models whose ReLU outputs feed a
    convolution (MobileNet-style blocks): channels with small ranges are
    enlarged and the next layer's weights shrunk to match, so the
    per-tensor int8 scale of the activation serves every channel. The
    float model computes the same outputs (up to float rounding, and
    exactly where ReLU6 channels stay below 6, which is checked on
    `representative_data`). Export the returned model as usual with
    `keras_slim.export_tflite`. Reference: Nagel et al. 2019, "Data-Free
    Quantization Through Weight Equalization and Bias Correction".

    Only Functional and Sequential models, with chains BatchNormalization
    -> ReLU (or ReLU6) -> Conv2D, Dense or DepthwiseConv2D, each link
    read by one layer only.

    Args:
        model: A built Functional or Sequential Keras model.
        representative_data: NumPy array of typical inputs (the
            calibration data of the export).
        batch_size: Batch size used to run the model on it.

    Returns:
        An `EqualizationReport`; `report.model` is a new model with the
        rescaled weights. `model` is not modified.

    Raises:
        TypeError: if `model` is not a Keras model.
        ValueError: if `model` is subclassed, or `representative_data` is
            not an array of the model's input shape.

    Example:

    >>> import numpy as np
    >>> inputs = keras.Input((8, 8, 1))
    >>> x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    >>> x = keras.layers.BatchNormalization()(x)
    >>> x = keras.layers.ReLU(6.0)(x)
    >>> outputs = keras.layers.Conv2D(2, 1)(x)
    >>> model = keras.Model(inputs, outputs)
    >>> images = np.random.rand(16, 8, 8, 1).astype("float32")
    >>> report = equalize_ranges(model, images)
    >>> len(report.chains)
    1
    >>> bool(np.allclose(report.model.predict(images, verbose=0),
    ...                  model.predict(images, verbose=0), atol=1e-4))
    True
    """
    _validation.check_model(model)
    try:
        model.get_config()["layers"]
    except (NotImplementedError, KeyError, TypeError):
        raise ValueError(
            "`equalize_ranges` needs a Functional or Sequential model. "
            f"Received: a subclassed model of type {type(model).__name__}"
        ) from None
    shape = tuple(model.inputs[0].shape[1:]) if model.inputs else None
    if (
        not isinstance(representative_data, np.ndarray)
        or len(model.inputs) != 1
        or tuple(representative_data.shape[1:]) != shape
    ):
        raise ValueError(
            "Expected `representative_data` to be a NumPy array of shape "
            f"(n, {', '.join(str(d) for d in shape or ())}) for a "
            "single-input model. Received: representative_data of type "
            f"{type(representative_data).__name__}"
            + (
                f" and shape {representative_data.shape}"
                if hasattr(representative_data, "shape")
                else ""
            )
        )
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    chains, skipped = _chains(clone)
    if not chains:
        return EqualizationReport(clone, [], {}, skipped)
    layers = {layer.name: layer for layer in clone.layers}
    probe = keras.Model(
        clone.inputs,
        [layers[relu or bn].output for bn, relu, _ in chains],
    )
    outputs = probe.predict(
        representative_data, batch_size=batch_size, verbose=0
    )
    if len(chains) == 1:
        outputs = [outputs]
    scales = {}
    for (bn_name, relu_name, consumer_name), out in zip(chains, outputs):
        linear = relu_name is None
        s = _scales(
            np.asarray(out),
            None if linear else layers[relu_name].max_value,
            linear,
        )
        scales[relu_name or bn_name] = s
        _rescale_bn_output(layers[bn_name], 1.0 / s)
        consumer = layers[consumer_name]
        # The consumer's input channel c (a DepthwiseConv2D's too: axis
        # -2 of its (h, w, channels, multiplier) kernel) takes s_c back.
        kernel = consumer.kernel.numpy()
        shape = [1] * kernel.ndim
        shape[-2] = -1
        consumer.kernel.assign(kernel * s.reshape(shape).astype(kernel.dtype))
    return EqualizationReport(clone, chains, scales, skipped)


def _rescale_bn_output(bn, factor):
    """Multiply a BatchNormalization's output channels by `factor`."""
    bn.gamma.assign(bn.gamma.numpy() * factor)
    bn.beta.assign(bn.beta.numpy() * factor)


def correct_bias(model, representative_data, batch_size=32):
    """Shift biases by the mean error int8 weights will add (Nagel et
    al. 2019, section 4.2, with the input means measured on
    `representative_data`); return `(new model, names of the corrected
    layers)`. A layer without a bias followed by a BatchNormalization
    gets the shift in the BatchNormalization's moving mean."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    layers = {layer.name: layer for layer in clone.layers}
    inputs, consumers = _graph(clone)
    targets = []
    for name, layer in layers.items():
        if not isinstance(layer, _CONSUMERS) or len(inputs.get(name, [])) != 1:
            continue
        if isinstance(layer, keras.layers.Conv2D) and layer.groups != 1:
            continue
        after = consumers.get(name, [])
        if layer.use_bias or (
            len(after) == 1
            and isinstance(layers[after[0]], keras.layers.BatchNormalization)
        ):
            targets.append(name)
    if not targets:
        return clone, []
    probe = keras.Model(clone.inputs, [layers[name].input for name in targets])
    feeds = probe.predict(representative_data, batch_size=batch_size, verbose=0)
    if len(targets) == 1:
        feeds = [feeds]
    for name, feed in zip(targets, feeds):
        layer = layers[name]
        mean = np.asarray(feed).reshape(-1, feed.shape[-1]).mean(axis=0)
        error = _bias_correction.weight_error(layer)
        shift = _bias_correction.output_shift(layer, error, mean)
        if layer.use_bias:
            layer.bias.assign(layer.bias.numpy() - shift)
        else:
            [after] = consumers[name]
            bn = layers[after]
            bn.moving_mean.assign(bn.moving_mean.numpy() + shift)
    return clone, targets
