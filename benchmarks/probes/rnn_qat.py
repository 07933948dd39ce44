"""Probe: quantization-aware training of recurrent models
(`keras_slim.quantization._recurrent`), side by side with post-training
int8 of the same float model.

Each 8x8 digit is read row by row (8 steps of 8 pixels); a recurrent
layer of 16 units, then `Dense(10)`; 10 epochs of Adam 1e-2, batch 64.
From that float model, in one process: (a) post-training int8
(`export_tflite` calibrated on 300 training images); (b) 2 epochs of
`QuantizationAwareTraining` at Adam 1e-3, exported from the learned
ranges. Agreement by `litert.compare` on the 450 test images; per seed
and the median over seeds. Epoch ratio: the second QAT epoch over a
plain second epoch of the same model (one-epoch `fit` calls, one after
the other; the first of each traces its function), medians over seeds.

Run: TF_CPP_MIN_LOG_LEVEL=3 python -m benchmarks.probes.rnn_qat
"""

import argparse
import os
import statistics
import tempfile
import time

import keras

from benchmarks.probes import rnn_ptq
from keras_slim import datasets
from keras_slim import litert
from keras_slim.export import export_tflite
from keras_slim.quantization import QuantizationAwareTraining

KINDS = rnn_ptq.KINDS
recurrent = rnn_ptq.recurrent


def _compile(model, rate):
    model.compile(
        keras.optimizers.Adam(rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def _epoch_seconds(model, x, y, callbacks=()):
    start = time.perf_counter()
    model.fit(
        x, y, epochs=1, batch_size=64, verbose=0, callbacks=list(callbacks)
    )
    return time.perf_counter() - start


def one(kind, seed, data, folder):
    (x, y), (xt, yt) = data
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((8, 8)), *recurrent(kind), keras.layers.Dense(10)]
    )
    _compile(model, 1e-2)
    model.fit(x, y, epochs=10, batch_size=64, verbose=0)
    row = {"float": model.evaluate(xt, yt, verbose=0)[1]}
    ptq = os.path.join(folder, f"{kind}_{seed}_ptq.tflite")
    report = export_tflite(model, ptq, representative_data=x[:300])
    row["ptq_int8_only"] = report.info.int8_only
    row["ptq"] = litert.compare(model, ptq, xt).agreement
    weights = model.get_weights()
    _compile(model, 1e-3)
    _epoch_seconds(model, x, y)  # the first `fit` traces its function
    plain = _epoch_seconds(model, x, y)
    model.set_weights(weights)  # QAT starts from the float model
    _compile(model, 1e-3)
    callback = QuantizationAwareTraining()
    _epoch_seconds(model, x, y, [callback])
    row["epoch_x"] = _epoch_seconds(model, x, y, [callback]) / plain
    row["qat_accuracy"] = model.evaluate(xt, yt, verbose=0)[1]
    qat = os.path.join(folder, f"{kind}_{seed}_qat.tflite")
    report = export_tflite(model, qat)
    row["qat_int8_only"] = report.info.int8_only
    row["qat"] = litert.compare(model, qat, xt).agreement
    return row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kinds", default=",".join(KINDS))
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
        "| model | float acc | PTQ int8: int8_only, agreement | "
        "QAT int8: int8_only, agreement | QAT acc | QAT epoch / plain |"
    )
    print("|---|---:|---|---|---:|---:|")
    for kind in args.kinds.split(","):
        rows = [one(kind, seed, data, folder) for seed in range(args.seeds)]

        def median(key, rows=rows):
            return statistics.median(r[key] for r in rows)

        def each(key, rows=rows):
            return "/".join(f"{100 * r[key]:.2f}" for r in rows)

        print(
            f"| {kind} | {100 * median('float'):.1f}% | "
            f"{all(r['ptq_int8_only'] for r in rows)}, "
            f"{100 * median('ptq'):.2f}% ({each('ptq')}) | "
            f"{all(r['qat_int8_only'] for r in rows)}, "
            f"{100 * median('qat'):.2f}% ({each('qat')}) | "
            f"{100 * median('qat_accuracy'):.1f}% | "
            f"{median('epoch_x'):.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
