"""tfmot magnitude pruning on the demo CNN under tf_keras (in a subprocess).

Usage: TF_USE_LEGACY_KERAS=1 python -m benchmarks._tfmot_pruning DATA.npz
    --epochs 10 --end-step 154 --frequency 11 --sparsities 0.5 0.8 0.9
    --seed 0
DATA.npz holds x_train, y_train, x_test, y_test and the pretrained Keras 3
weights (w0, w1, ...; same order as tf_keras `get_weights`). Prints one
JSON object on stdout.
"""

import argparse
import gzip
import json
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras as keras  # noqa: E402

from benchmarks._tf_keras_common import EpochTimer  # noqa: E402
from benchmarks._tf_keras_common import compile_  # noqa: E402
from benchmarks._tf_keras_common import small_cnn  # noqa: E402


def steady(times):
    return float(np.median(times[1:] if len(times) > 1 else times))


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


def int8_gzip_bytes(model, x):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: (
        [x[i : i + 1]] for i in range(200)
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    return len(gzip.compress(converter.convert(), 9))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--end-step", type=int, required=True)
    parser.add_argument("--frequency", type=int, required=True)
    parser.add_argument("--sparsities", type=float, nargs="+", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--export", action="store_true")
    args = parser.parse_args()
    data = np.load(args.data)
    x, y, xt, yt = (data[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    weights = [data[f"w{i}"] for i in range(len(data.files) - 4)]
    result = {}

    keras.utils.set_random_seed(args.seed)
    plain = small_cnn(x.shape[1:])
    plain.set_weights(weights)
    compile_(plain)
    timer = EpochTimer()
    plain.fit(
        x, y, batch_size=64, epochs=args.epochs, verbose=0, callbacks=[timer]
    )
    result["plain"] = {
        "accuracy": accuracy(plain, xt, yt),
        "epoch_s": steady(timer.times),
    }

    sparsity = tfmot.sparsity.keras
    for target in args.sparsities:
        keras.utils.set_random_seed(args.seed)
        base = small_cnn(x.shape[1:])
        base.set_weights(weights)
        schedule = sparsity.PolynomialDecay(
            0.0,
            target,
            begin_step=0,
            end_step=args.end_step,
            frequency=args.frequency,
        )
        model = sparsity.prune_low_magnitude(base, pruning_schedule=schedule)
        compile_(model)
        timer = EpochTimer()
        model.fit(
            x,
            y,
            batch_size=64,
            epochs=args.epochs,
            verbose=0,
            callbacks=[sparsity.UpdatePruningStep(), timer],
        )
        stripped = sparsity.strip_pruning(model)
        per_layer = {
            layer.__class__.__name__ + ":" + layer.name: float(
                np.mean(layer.get_weights()[0] == 0)
            )
            for layer in stripped.layers
            if layer.get_weights() and layer.get_weights()[0].ndim > 1
        }
        row = {
            "accuracy": accuracy(stripped, xt, yt),
            "epoch_s": steady(timer.times),
            "epoch_ratio": steady(timer.times) / result["plain"]["epoch_s"],
            "layer_sparsity": per_layer,
        }
        if args.export:
            row["int8_gzip_bytes"] = int8_gzip_bytes(stripped, x)
        result[f"{target:g}"] = row
    print(json.dumps(result))


if __name__ == "__main__":
    main()
