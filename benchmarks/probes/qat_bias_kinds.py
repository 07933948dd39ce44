"""Probe (issue 20): whether the QAT model's logits equal its int8 file's
for the weighted layer kinds beyond Conv2D/DepthwiseConv2D/Dense.

    python -m benchmarks.probes.qat_bias_kinds \
        [--kinds separable transpose conv1d einsum] [--seeds 0 1]

Each kind: a small model on the 8x8 digits (Conv2D, ReLU, two layers of
the kind, the first with a large bias, the second without bias and, for
the convolutions, a BatchNormalization after it; global pooling; Dense),
10 float epochs at Adam 1e-3, then 2 epochs of `QuantizationAwareTraining`
in place ("callback") or on the `quantize_model` twin, `export_tflite`
from the learned ranges. Prints the share of the 4,500 test logits where
the QAT Keras model and its file differ (by more than 1e-5) and the top-1
agreement. The file stores each bias as int32 at the step of its input
times its kernel's (a separable convolution's with its pointwise CONV_2D,
at the depthwise output's step); a bias the simulation adds unrounded
shows here as logits a step apart.
"""

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_slim  # noqa: E402
from keras_slim import datasets  # noqa: E402
from keras_slim import litert  # noqa: E402
from keras_slim.quantization import QuantizationAwareTraining  # noqa: E402
from keras_slim.quantization import quantize_model  # noqa: E402

L = keras.layers


def build(kind):
    big = keras.initializers.RandomNormal(0.0, 0.3)
    inputs = keras.Input((8, 8, 1))
    h = L.ReLU()(L.Conv2D(8, 3, padding="same", use_bias=False)(inputs))
    if kind == "separable":
        h = L.SeparableConv2D(16, 3, padding="same", bias_initializer=big)(h)
        h = L.SeparableConv2D(16, 3, padding="same", use_bias=False)(
            L.ReLU()(h)
        )
        h = L.BatchNormalization()(h)
    elif kind == "transpose":
        h = L.Conv2DTranspose(
            16, 3, strides=2, padding="same", bias_initializer=big
        )(h)
        h = L.Conv2DTranspose(16, 3, padding="same", use_bias=False)(
            L.ReLU()(h)
        )
        h = L.BatchNormalization()(h)
    elif kind == "conv1d":
        h = L.Reshape((64, 8))(h)
        h = L.Conv1D(16, 3, padding="same", bias_initializer=big)(h)
        h = L.Conv1D(16, 3, padding="same", use_bias=False)(L.ReLU()(h))
        h = L.Reshape((8, 8, 16))(L.BatchNormalization()(h))
    elif kind == "einsum":
        h = L.Reshape((64, 8))(h)
        h = L.EinsumDense(
            "abc,cd->abd",
            output_shape=(None, 16),
            bias_axes="d",
            bias_initializer=big,
        )(h)
        h = L.Reshape((8, 8, 16))(L.ReLU()(h))
    else:
        raise ValueError(f"unknown kind {kind!r}")
    h = L.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, L.Dense(10, bias_initializer=big)(h))


def compiled(model, lr=1e-3):
    model.compile(
        keras.optimizers.Adam(lr),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def run(kind, route, seed, data, folder, builder=build, lr=1e-3):
    """Train `builder(kind)`'s model, QAT by `route`, export it to
    `folder` (the file's path is in the result); figures as a dict."""
    (x, y), (xt, yt) = data
    keras.utils.set_random_seed(seed)
    model = compiled(builder(kind), lr)
    model.fit(x, y, batch_size=64, epochs=10, verbose=0)
    if route == "quantize_model":
        model = compiled(quantize_model(model), lr)
    model.fit(
        x,
        y,
        batch_size=64,
        epochs=2,
        verbose=0,
        callbacks=[QuantizationAwareTraining()],
    )
    expected = np.asarray(model.predict(xt, verbose=0))
    path = os.path.join(folder, f"{kind}_{route}_{seed}.tflite")
    report = keras_slim.export_tflite(model, path)
    actual = np.asarray(litert.predict(path, xt))
    return {
        "path": path,
        "accuracy": float(np.mean(expected.argmax(-1) == yt)),
        "int8_only": report.int8_only,
        "differ": float(np.mean(np.abs(actual - expected) > 1e-5)),
        "agreement": float(np.mean(actual.argmax(-1) == expected.argmax(-1))),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kinds",
        nargs="+",
        default=["separable", "transpose", "conv1d", "einsum"],
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args(argv)
    data = datasets.load_digits(image_size=8, seed=0)
    print(
        "| kind | route | seed | QAT acc | int8_only | logits differ "
        "| top-1 agreement |"
    )
    print("|---|---|---:|---:|---|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for kind in args.kinds:
            for route in ("callback", "quantize_model"):
                for seed in args.seeds:
                    r = run(kind, route, seed, data, folder)
                    print(
                        f"| {kind} | {route} | {seed} | {r['accuracy']:.1%} | "
                        f"{r['int8_only']} | {r['differ']:.3%} | "
                        f"{r['agreement']:.2%} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
