"""Bias correction for post-training integer files (`export_tflite`'s
`bias_correction`).

The converter rounds each kernel to its int8 grid (symmetric, one scale
per output channel, `max|w| / 127`). The rounding error `e` of the weights
moves the mean of a layer's output by `e . mu`, where `mu` is the mean of
its inputs: a bias the float model never had, which no activation scheme
(int16 activations included) removes. Bias correction (Nagel et al. 2019,
"Data-Free Quantization Through Weight Equalization and Bias Correction",
section 4.2, here with `mu` measured on the calibration samples) takes it
off the layer's bias, or, for a layer without one whose output goes to a
BatchNormalization, off that BatchNormalization's moving mean (which the
converter folds into the same bias).

Measured (benchmarks/RESULTS.md, "Bias correction"): it helps where the
int8 weights bound the file's agreement (MobileNetV2-0.35's int16x8
files) and is noise or worse elsewhere, so it is a choice, off by default.

Layers corrected: `Conv2D` (not grouped), `DepthwiseConv2D` and `Dense`,
anywhere in the model (nested and subclassed models included), found by
running the model eagerly on the samples with each such layer's `call`
recording its inputs' mean; a bias-free layer is corrected only when the
next layer to read its output is a BatchNormalization. The model's
values are changed only inside `corrected`'s block and restored on exit.
"""

import contextlib

import keras
import numpy as np

from keras_slim import _layers

_KINDS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
_BATCH = 32


def correctable(model):
    """The leaf layers of `model` whose kernels bias correction handles."""
    return [
        layer
        for layer in _layers.leaf_layers(model)
        if type(layer) in _KINDS
        and layer.built
        and getattr(layer, "groups", 1) == 1
    ]


def _channel_axis(layer):
    if isinstance(layer, keras.layers.Dense):
        return -1
    return 1 if layer.data_format == "channels_first" else -1


def grid_scale(layer, kernel, per_channel_dense=True):
    """The converter's int8 step of `kernel` (a NumPy array of `layer`'s
    kernel), broadcastable against it: symmetric, `max|w| / 127` per
    output channel (per tensor for a Dense with `per_channel_dense=False`;
    a DepthwiseConv2D's output channel is each (channel, multiplier)
    pair)."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        axes = (0, 1)
    elif isinstance(layer, keras.layers.Dense) and not per_channel_dense:
        axes = tuple(range(kernel.ndim))
    else:
        axes = tuple(range(kernel.ndim - 1))
    scale = np.abs(kernel).max(axis=axes, keepdims=True) / 127.0
    return np.where(scale > 0, scale, 1.0).astype(kernel.dtype)


def weight_error(layer, per_channel_dense=True):
    """The int8 rounding error of `layer`'s kernel, as the converter
    rounds it (`grid_scale`)."""
    kernel = keras.ops.convert_to_numpy(layer.kernel).astype(np.float64)
    scale = grid_scale(layer, kernel, per_channel_dense)
    return np.clip(np.round(kernel / scale), -127, 127) * scale - kernel


def run_eagerly(model, sig, samples, after_batch=None):
    """Run `model` eagerly (inference) on `samples` (one array per input),
    in batches; `after_batch()` is called after each."""
    for start in range(0, len(samples[0]), _BATCH):
        batch = [s[start : start + _BATCH] for s in samples]
        if sig.input_structure is None:
            x = batch[0]
        else:
            x = keras.tree.pack_sequence_as(sig.input_structure, batch)
        model(x, training=False)
        if after_batch is not None:
            after_batch()


def output_shift(layer, error, mean):
    """The mean change of `layer`'s output per channel that the kernel
    error `error` causes on inputs whose per-channel mean is `mean`."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        # (h, w, channels, multiplier): output c * m + j reads channel c.
        return (error.sum(axis=(0, 1)) * mean[:, None]).reshape(-1)
    per_input = error.reshape(-1, error.shape[-2], error.shape[-1]).sum(0)
    return mean @ per_input


@contextlib.contextmanager
def _recording(model, layers):
    """Within the block each layer of `layers` sums its inputs per channel
    (`sums[layer]`, `counts[layer]`), and `followers[layer]` is set to the
    BatchNormalization that reads its output, if one does."""
    sums, counts, followers, producers = {}, {}, {}, {}
    batch_norms = [
        layer
        for layer in _layers.leaf_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]

    def recorder(layer, original):
        def call(inputs, *args, **kwargs):
            x = np.asarray(keras.ops.convert_to_numpy(inputs), np.float64)
            x = np.moveaxis(x, _channel_axis(layer), -1)
            x = x.reshape(-1, x.shape[-1])
            sums[id(layer)] = sums.get(id(layer), 0.0) + x.sum(axis=0)
            counts[id(layer)] = counts.get(id(layer), 0) + len(x)
            outputs = original(inputs, *args, **kwargs)
            producers[id(outputs)] = (layer, outputs)
            return outputs

        return call

    def follower(layer, original):
        def call(inputs, *args, **kwargs):
            producer = producers.get(id(inputs))
            if producer is not None and producer[1] is inputs:
                followers.setdefault(id(producer[0]), layer)
            return original(inputs, *args, **kwargs)

        return call

    hooked = [(layer, recorder(layer, layer.call)) for layer in layers]
    hooked += [(bn, follower(bn, bn.call)) for bn in batch_norms]
    try:
        for layer, call in hooked:
            layer.call = call
        yield sums, counts, followers, producers
    finally:
        for layer, _ in hooked:
            vars(layer).pop("call", None)


def _measure(model, sig, samples, layers):
    """Per layer of `layers`: the mean of its inputs per channel over
    `samples`, and the BatchNormalization that reads its output."""
    with _recording(model, layers) as (sums, counts, followers, producers):
        run_eagerly(model, sig, samples, producers.clear)
    means = {
        id(layer): sums[id(layer)] / counts[id(layer)]
        for layer in layers
        if counts.get(id(layer))
    }
    return means, followers


@contextlib.contextmanager
def corrected(model, sig, samples, options):
    """Within the block, with `options["bias_correction"]`, `model`'s
    biases (or the moving means of the BatchNormalizations after its
    bias-free layers) are shifted by the mean error of int8 kernels on
    `samples`; yields a list of notes for the export report (one naming
    the layers corrected, or none). Every value is restored on exit."""
    if not options.get("bias_correction"):
        yield []
        return
    layers = correctable(model)
    means, followers = _measure(model, sig, samples, layers)
    saved, names = [], []
    try:
        for layer in layers:
            if id(layer) not in means:
                continue  # not reached by the model's call
            error = weight_error(layer, options["per_channel_dense"])
            shift = output_shift(layer, error, means[id(layer)])
            if layer.use_bias:
                target, sign = layer.bias, -1.0
            elif id(layer) in followers:
                target, sign = followers[id(layer)].moving_mean, 1.0
            else:
                continue
            value = keras.ops.convert_to_numpy(target)
            saved.append((target, value))
            target.assign((value + sign * shift).astype(value.dtype))
            names.append(layer.name)
        shown = ", ".join(names[:8]) + (
            f" and {len(names) - 8} more" if len(names) > 8 else ""
        )
        yield [
            f"Bias correction: the biases of {len(names)} layers shifted by "
            "the mean error of their int8 weights on "
            f"{len(samples[0])} calibration samples ({shown or 'none'})."
        ]
    finally:
        for target, value in reversed(saved):
            target.assign(value)


def check(model, value, quantization, learned):
    """Whether `export_tflite(bias_correction=value)` corrects `model`;
    refuses a value or a combination that cannot be honoured, before any
    work."""
    if not isinstance(value, bool):
        raise ValueError(
            "Expected `bias_correction` to be True or False. "
            f"Received: bias_correction={value!r}"
        )
    if value and (learned or quantization not in ("int8", "int16x8")):
        what = (
            "a model with learned ranges from quantization-aware training "
            "(its weights were trained on their int8 grid)"
            if learned
            else f"quantization={quantization!r}"
        )
        raise ValueError(
            "`bias_correction=True` corrects post-training 'int8' and "
            f"'int16x8' files from calibration data, not {what}. "
            "Received: bias_correction=True"
        )
    if value and not correctable(model):
        raise ValueError(
            "`bias_correction=True` found no Conv2D, DepthwiseConv2D or "
            f"Dense layer to correct in model {model.name!r}. "
            "Received: bias_correction=True"
        )
    return value
