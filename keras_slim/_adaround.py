"""Learned weight rounding for post-training integer files
(`export_tflite`'s `weight_rounding="adaround"`).

The converter rounds each kernel to the nearest point of its int8 grid
(symmetric, one scale per output channel, `max|w| / 127`). AdaRound
(Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training
Quantization") chooses for each weight whether to round up or down so
that the layer's output on calibration data changes least: layer by
layer in the model's order, a rounding variable per weight (a rectified
sigmoid, started at the weight's fractional part) is fitted with Adam to
the squared error between the layer's output with the rounded kernel,
on the inputs the already-rounded layers give it, and its float output
on float inputs, plus a regulariser that pushes each variable to 0 or 1
(its exponent annealed from 20 to 2). The kernels are then exactly on
the converter's grid, which keeps them (each channel's largest weight is
held at +/-127 steps so its scale does not move).

Measured (benchmarks/RESULTS.md, "AdaRound"): the demo CNN's int8 file
agreed with Keras on 99.33% of the test images with nearest rounding and
on 99.56% with AdaRound (median of 3 seeds: 99.33 / 99.56 / 98.67% ->
100 / 99.56 / 98.89%).

Layers: `Conv2D` (not grouped), `DepthwiseConv2D` and `Dense`, anywhere
in the model, as `_bias_correction` finds them; each layer's inputs are
recorded by running the model eagerly with that layer's `call` hooked.
TensorFlow only (the export runs there). The model's kernels are changed
only inside `rounded`'s block and restored on exit.
"""

import contextlib

import keras
import numpy as np

from keras_slim import _bias_correction

ITERATIONS = 2000  # per layer (the measured setting; tests lower it)
SAMPLES = 512  # calibration samples used at most
_BATCH = 32  # samples an Adam step
_ZETA, _GAMMA = 1.1, -0.1


grid_scale = _bias_correction.grid_scale


@contextlib.contextmanager
def _inputs_of(layer, store):
    """Within the block, `layer`'s inputs are appended to `store`."""
    original = layer.call

    def call(inputs, *args, **kwargs):
        store.append(np.asarray(keras.ops.convert_to_numpy(inputs)))
        return original(inputs, *args, **kwargs)

    layer.call = call
    try:
        yield
    finally:
        vars(layer).pop("call", None)


def _layer_inputs(model, sig, samples, layer):
    """`layer`'s inputs over `samples`, or None if the model's call never
    reaches it."""
    store = []
    with _inputs_of(layer, store):
        _bias_correction.run_eagerly(model, sig, samples)
    return np.concatenate(store) if store else None


def _h(v):
    import tensorflow as tf

    return tf.clip_by_value(tf.sigmoid(v) * (_ZETA - _GAMMA) + _GAMMA, 0, 1)


def _fit_rounding(layer, kernel, scale, x_in, target, seed):
    """The rounded kernel minimising `layer`'s output error."""
    import tensorflow as tf

    steps = kernel / scale
    floor = np.floor(steps)
    rest = steps - floor
    p = np.clip((rest - _GAMMA) / (_ZETA - _GAMMA), 1e-4, 1 - 1e-4)
    v = tf.Variable(np.log(p / (1 - p)).astype(np.float32))
    floor_t = tf.constant(floor, tf.float32)
    scale_t = tf.constant(scale)
    optimizer = keras.optimizers.Adam(1e-2)
    others = [w for w in layer.variables if w is not layer.kernel]
    rng = np.random.default_rng(seed)
    n = len(x_in)
    for i in range(ITERATIONS):
        index = rng.choice(n, size=min(_BATCH, n), replace=False)
        frac = i / ITERATIONS
        beta = 20.0 - 18.0 * max(0.0, (frac - 0.2) / 0.8)
        with tf.GradientTape() as tape:
            q = tf.clip_by_value(floor_t + _h(v), -127.0, 127.0) * scale_t
            mapping = [(layer.kernel, q)] + [(w, w.value) for w in others]
            with keras.StatelessScope(state_mapping=mapping):
                out = layer(tf.constant(x_in[index]))
            loss = tf.reduce_mean(tf.square(out - target[index]))
            if frac > 0.2:
                h = _h(v)
                reg = tf.reduce_sum(1.0 - tf.pow(tf.abs(2 * h - 1), beta))
                loss = loss + 0.01 * reg / float(kernel.size)
        optimizer.apply_gradients([(tape.gradient(loss, v), v)])
    q = np.clip(floor + (_h(v).numpy() >= 0.5), -127, 127)
    # Each channel's largest weight stays at +/-127 steps, so the
    # converter finds the same scale (and the same grid) again.
    edge = np.abs(steps) >= 127.0 - 1e-3
    q = np.where(edge, np.sign(steps) * 127.0, q)
    return (q * scale).astype(kernel.dtype)


@contextlib.contextmanager
def rounded(model, sig, samples, options):
    """Within the block, with `options["weight_rounding"] == "adaround"`,
    `model`'s Conv2D, DepthwiseConv2D and Dense kernels are AdaRounded on
    `samples` (at most `SAMPLES` of them); yields a list of notes for the
    export report. Every kernel is restored on exit."""
    if options.get("weight_rounding", "nearest") != "adaround":
        yield []
        return
    layers = [
        layer
        for layer in _bias_correction.correctable(model)
        if isinstance(layer.kernel, keras.Variable)  # not LoRA's sum
    ]
    samples = [s[:SAMPLES] for s in samples]
    saved = [
        (layer, keras.ops.convert_to_numpy(layer.kernel)) for layer in layers
    ]
    done = []
    progbar = keras.utils.Progbar(len(layers), unit_name="layer")
    try:
        for i, (layer, kernel) in enumerate(saved):
            # Float inputs (every kernel as it was), then the inputs the
            # already-rounded layers give this one.
            for earlier, original in saved[:i]:
                earlier.kernel.assign(original)
            x_float = _layer_inputs(model, sig, samples, layer)
            if x_float is None:  # not reached by the model's call
                progbar.update(i + 1)
                continue
            target = np.asarray(layer(x_float))
            for earlier, value in done:
                earlier.kernel.assign(value)
            x_rounded = _layer_inputs(model, sig, samples, layer)
            scale = grid_scale(layer, kernel, options["per_channel_dense"])
            value = _fit_rounding(layer, kernel, scale, x_rounded, target, i)
            done.append((layer, value))
            progbar.update(i + 1)
        for layer, value in done:
            layer.kernel.assign(value)
        names = [layer.name for layer, _ in done]
        shown = ", ".join(names[:8]) + (
            f" and {len(names) - 8} more" if len(names) > 8 else ""
        )
        yield [
            f"AdaRound: the kernels of {len(names)} layers rounded to their "
            f"int8 grid by {ITERATIONS} steps each on "
            f"{len(samples[0])} calibration samples ({shown or 'none'})."
        ]
    finally:
        for layer, kernel in saved:
            layer.kernel.assign(kernel)


def check(model, value, quantization, learned, bias_correction):
    """Refuse `export_tflite(weight_rounding=value)` where it cannot be
    honoured, before any work."""
    if value not in ("nearest", "adaround"):
        raise ValueError(
            "Expected `weight_rounding` to be 'nearest' or 'adaround'. "
            f"Received: weight_rounding={value!r}"
        )
    if value == "nearest":
        return
    if learned or quantization not in ("int8", "int16x8"):
        what = (
            "a model with learned ranges from quantization-aware training"
            if learned
            else f"quantization={quantization!r}"
        )
        raise ValueError(
            "`weight_rounding='adaround'` rounds the kernels of "
            "post-training 'int8' and 'int16x8' files from calibration "
            f"data, not {what}. Received: weight_rounding='adaround'"
        )
    if bias_correction:
        raise ValueError(
            "`weight_rounding='adaround'` already fits each layer's output, "
            "its mean included: use it without `bias_correction`. "
            "Received: bias_correction=True"
        )
    if not _bias_correction.correctable(model):
        raise ValueError(
            "`weight_rounding='adaround'` found no Conv2D, DepthwiseConv2D or "
            f"Dense layer in model {model.name!r}. "
            "Received: weight_rounding='adaround'"
        )
