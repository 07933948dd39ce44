"""Probe: magnitude pruning of recurrent models' kernels (the kernel and
recurrent kernel of LSTM, GRU and SimpleRNN; each direction of a
Bidirectional), then post-training int8.

The models and data of `rnn_qat` (each 8x8 digit read row by row; a
recurrent layer of 16 units, then `Dense(10)`; 10 epochs of Adam 1e-2).
From that float model: its post-training int8 file (calibrated on 300
training images), then 4 epochs of `MagnitudePruning` at Adam 1e-2
(`PolynomialDecay` 0 -> 50% over the first 2 epochs, every 2 steps) and
the pruned model's int8 file. Agreement by `litert.compare` on the 450
test images; gzip bytes of the pruned file over the unpruned one; epoch
ratio: a pruning epoch over a plain epoch of the same model (one-epoch
`fit`s, the first of each traced first). Per seed, medians over seeds.

Run: TF_CPP_MIN_LOG_LEVEL=3 python -m benchmarks.probes.rnn_pruning
"""

import argparse
import os
import statistics
import tempfile

import keras

from benchmarks.probes import rnn_qat
from keras_slim import datasets
from keras_slim import litert
from keras_slim import schedules
from keras_slim.export import export_tflite
from keras_slim.pruning import MagnitudePruning
from keras_slim.pruning import sparsity_report


def one(kind, seed, data, folder):
    (x, y), (xt, yt) = data
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((8, 8)), *rnn_qat.recurrent(kind), keras.layers.Dense(10)]
    )
    rnn_qat._compile(model, 1e-2)
    model.fit(x, y, epochs=10, batch_size=64, verbose=0)
    row = {"float": model.evaluate(xt, yt, verbose=0)[1]}
    dense = os.path.join(folder, f"{kind}_{seed}_dense.tflite")
    dense_gzip = export_tflite(
        model, dense, representative_data=x[:300]
    ).info.gzip_bytes
    weights = model.get_weights()
    rnn_qat._epoch_seconds(model, x, y)  # the first `fit` traces
    plain = rnn_qat._epoch_seconds(model, x, y)
    model.set_weights(weights)
    rnn_qat._compile(model, 1e-2)
    schedule = schedules.PolynomialDecay(0.0, 0.5, 0, end_step=44, frequency=2)
    pruning = MagnitudePruning(schedule)
    rnn_qat._epoch_seconds(model, x, y, [pruning])
    row["epoch_x"] = rnn_qat._epoch_seconds(model, x, y, [pruning]) / plain
    for _ in range(2):
        rnn_qat._epoch_seconds(model, x, y, [pruning])
    report = sparsity_report(model)
    recurrent = [r for r in report.layers if "kernel" in r.weight]
    row["kernels"] = len(recurrent) - 1  # the Dense head's kernel aside
    row["sparsity"] = report.sparsity
    row["accuracy"] = model.evaluate(xt, yt, verbose=0)[1]
    pruned = os.path.join(folder, f"{kind}_{seed}_pruned.tflite")
    info = export_tflite(model, pruned, representative_data=x[:300]).info
    row["int8_only"] = info.int8_only
    row["agreement"] = litert.compare(model, pruned, xt).agreement
    row["gzip_x"] = info.gzip_bytes / dense_gzip
    return row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kinds", default=",".join(rnn_qat.KINDS))
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    (x, y), (xt, yt) = datasets.load_digits(image_size=8)
    data = (x[..., 0], y), (xt[..., 0], yt)
    folder = tempfile.mkdtemp()
    print(
        f"keras {keras.__version__}, backend {keras.backend.backend()}, "
        f"{args.seeds} seeds"
    )
    print(
        "| model | recurrent kernels pruned | float acc | pruned acc | "
        "sparsity | int8: int8_only, agreement | gzip / unpruned int8 | "
        "epoch / plain |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    for kind in args.kinds.split(","):
        rows = [one(kind, seed, data, folder) for seed in range(args.seeds)]

        def median(key, rows=rows):
            return statistics.median(r[key] for r in rows)

        agreements = "/".join(f"{100 * r['agreement']:.2f}" for r in rows)
        print(
            f"| {kind} | {rows[0]['kernels']} | "
            f"{100 * median('float'):.1f}% | "
            f"{100 * median('accuracy'):.1f}% | "
            f"{100 * median('sparsity'):.1f}% | "
            f"{all(r['int8_only'] for r in rows)}, "
            f"{100 * median('agreement'):.2f}% ({agreements}) | "
            f"{median('gzip_x'):.2f}x | {median('epoch_x'):.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
