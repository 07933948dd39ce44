"""Probe (issue 22): does learned weight rounding (AdaRound) lift the int8
weight bound of the 8-epoch MobileNetV2-0.35?

    nice -n 10 python -m benchmarks.probes.adaround --seeds 0 \
        [--cache DIR] [--iterations 300] [--images 256] \
        [--model mobilenet|converged|demo|residual]

`benchmarks/probes/ptq_weight_bound.py` measured that rounding every
kernel to its int8 grid (nearest) alone, activations float, leaves the
8-epoch models at 98.0% agreement (median of 3 seeds), under the issue's
98-99.5% goals. AdaRound (Nagel et al., 2020) chooses, per weight, to
round up or down so that each layer's output on calibration images
changes least. Here, layer by layer in the model's order, for every
Conv2D, DepthwiseConv2D and Dense: the kernel on its symmetric
per-output-channel int8 grid (the converter's; it commutes with folding
BatchNormalization), a rounding variable per weight (rectified sigmoid,
initialised at the fractional part), Adam on the squared error between
the layer's output with the rounded kernel on the inputs the already
rounded model gives it, and the float model's output on its float inputs,
plus the rounding regulariser (beta annealed 20 -> 2); then each weight is
rounded the way its variable chose. Printed per seed: the weights-only
agreement (nearest vs AdaRound) on the 450 test images, and the
agreement and accuracy of the converter's full-int8 file (calibrated on
the benchmark's 200 images) of the original and of the AdaRounded model
(the converter keeps grid weights exactly). TensorFlow backend.

Measured (2026-12-02, seed 0, `--iterations 300 --images 128`, 1,039 s
for the 52 kernels on a shared 2-core machine): weights-only agreement
98.89% with nearest rounding, 98.44% with AdaRound; the full-int8 file
95.78% (accuracy 92.00%) from the original model, 96.67% (92.00%) from
the AdaRounded one. Learned rounding did not lift the weight bound here
(one seed, short optimisation: the paper runs 10k iterations a layer on
1,024 images); the file's +0.9 points is within the spread bias
correction showed over seeds (+1.1 / +0.4 / -0.4). Not adopted.
"""

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import ptq  # noqa: E402
from benchmarks.probes.ptq_weight_bound import CONVERGED  # noqa: E402
from benchmarks.probes.ptq_weight_bound import NAME  # noqa: E402
from benchmarks.probes.ptq_weight_bound import _grid  # noqa: E402
from keras_slim import export_tflite  # noqa: E402
from keras_slim import litert  # noqa: E402

ZETA, GAMMA = 1.1, -0.1
# `--model`: the 8-epoch MobileNetV2 (default), or a 30-epoch model of
# `benchmarks.ptq` (cached in the same folder).
MODELS = {
    "mobilenet": NAME,
    "converged": CONVERGED,
    "demo": "demo CNN (small_cnn, 32x32x1)",
    "residual": "residual CNN (residual_cnn, 32x32x1)",
}
KINDS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)


def _scale(layer, kernel):
    depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
    axes = (0, 1, 3) if depthwise else tuple(range(kernel.ndim - 1))
    scale = np.abs(kernel).max(axis=axes, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    return scale.astype("float32")


def _h(v):
    return tf.clip_by_value(tf.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _adaround_layer(layer, x_in, target, iterations, rng):
    """Learned rounding of `layer.kernel`; returns the rounded kernel."""
    kernel = np.asarray(layer.kernel.numpy())
    scale = _scale(layer, kernel)
    floor = np.floor(kernel / scale)
    rest = kernel / scale - floor
    # h(v) = rest at the start.
    p = np.clip((rest - GAMMA) / (ZETA - GAMMA), 1e-4, 1 - 1e-4)
    v = tf.Variable(np.log(p / (1 - p)).astype("float32"))
    floor_t, scale_t = tf.constant(floor, "float32"), tf.constant(scale)
    optimizer = keras.optimizers.Adam(1e-2)
    others = [w for w in layer.variables if w is not layer.kernel]
    n = x_in.shape[0]
    for i in range(iterations):
        idx = rng.choice(n, size=min(32, n), replace=False)
        frac = i / iterations
        beta = 20.0 - 18.0 * max(0.0, (frac - 0.2) / 0.8)
        with tf.GradientTape() as tape:
            q = tf.clip_by_value(floor_t + _h(v), -127.0, 127.0) * scale_t
            mapping = [(layer.kernel, q)] + [(w, w.value) for w in others]
            with keras.StatelessScope(state_mapping=mapping):
                out = layer(tf.constant(x_in[idx]))
            loss = tf.reduce_mean(tf.square(out - target[idx]))
            if frac > 0.2:
                hv = _h(v)
                reg = tf.reduce_sum(1.0 - tf.pow(tf.abs(2 * hv - 1), beta))
                loss = loss + 0.01 * reg / float(np.prod(kernel.shape))
        optimizer.apply_gradients([(tape.gradient(loss, v), v)])
    up = (_h(v).numpy() >= 0.5).astype("float32")
    return np.clip(floor + up, -127, 127) * scale


def adaround(model, images, iterations, seed):
    """A copy of `model` whose kernels are AdaRounded, and a copy with
    nearest rounding."""
    rng = np.random.default_rng(seed)
    rounded = keras.models.clone_model(model)
    rounded.set_weights(model.get_weights())
    nearest = keras.models.clone_model(model)
    nearest.set_weights(model.get_weights())
    for layer in nearest.layers:
        if isinstance(layer, KINDS):
            kernel = np.asarray(layer.kernel.numpy())
            layer.kernel.assign(_grid(layer, kernel).astype(kernel.dtype))
    for layer, twin in zip(model.layers, rounded.layers):
        if not isinstance(layer, KINDS):
            continue
        start = time.time()
        float_in = keras.Model(model.inputs, layer.input).predict(
            images, verbose=0
        )
        target = layer(float_in).numpy()
        q_in = keras.Model(rounded.inputs, twin.input).predict(
            images, verbose=0
        )
        kernel = _adaround_layer(twin, q_in, target, iterations, rng)
        twin.kernel.assign(kernel.astype("float32"))
        print(layer.name, round(time.time() - start, 1), "s", flush=True)
    return rounded, nearest


def _int8(model, data, folder, tag):
    (x, _), (xt, yt) = data
    path = os.path.join(folder, f"{tag}.tflite")
    export_tflite(
        model,
        path,
        quantization="int8",
        representative_data=x[:200],
        min_agreement=0.0,
    )
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--cache", default=os.path.join(tempfile.gettempdir(), "ptq_models")
    )
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--model", choices=sorted(MODELS), default="mobilenet")
    args = parser.parse_args(argv)
    for seed in args.seeds:
        model, data = ptq.trained(MODELS[args.model], seed, False, args.cache)
        (x, _), (xt, yt) = data
        reference = model.predict(xt, verbose=0).argmax(1)
        start = time.time()
        rounded, nearest = adaround(
            model, x[: args.images], args.iterations, seed
        )
        row = {"seed": seed, "adaround_s": round(time.time() - start)}
        row["keras_acc"] = float(np.mean(reference == yt))
        for tag, m in (("nearest", nearest), ("adaround", rounded)):
            pred = m.predict(xt, verbose=0).argmax(1)
            row[f"weights_only_{tag}"] = float(np.mean(pred == reference))
        with tempfile.TemporaryDirectory() as folder:
            for tag, m in (("original", model), ("adaround", rounded)):
                path = _int8(m, data, folder, tag)
                out = np.asarray(litert.predict(path, xt)).argmax(-1)
                row[f"int8_{tag}_agreement"] = float(np.mean(out == reference))
                row[f"int8_{tag}_acc"] = float(np.mean(out == yt))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
