"""Probe: post-training int8 of recurrent models, now that the export
unrolls them (`_export_rewrites.unrolled_recurrence`).

Each 8x8 digit is read row by row (8 steps of 8 pixels); a recurrent
layer of 16 units, then `Dense(10)`; 10 epochs of Adam 1e-2, batch 64,
seed 0; `export_tflite` calibrated on 300 training images, compared with
`litert.compare` on the 450 test images. Printed per kind and
quantization: Keras accuracy, whether the file is integer end to end,
agreement, file accuracy, bytes and export seconds. `--no-unroll` and
`--fused-gates` switch the rewrite's two parts off, to show why each is
there (without unrolling, the converter's calibrator segfaults: run that
one kind at a time).

Run: TF_CPP_MIN_LOG_LEVEL=3 python -m benchmarks.probes.rnn_ptq
"""

import argparse
import contextlib
import os
import tempfile
import time

import keras
import numpy as np

from keras_slim import _export_rewrites
from keras_slim import datasets
from keras_slim import litert
from keras_slim.export import export_tflite

KINDS = ("LSTM", "GRU", "SimpleRNN", "LSTM_sequences", "Bidirectional")


def recurrent(kind):
    if kind == "Bidirectional":
        return [keras.layers.Bidirectional(keras.layers.LSTM(16))]
    if kind == "LSTM_sequences":
        return [
            keras.layers.LSTM(16, return_sequences=True),
            keras.layers.GlobalAveragePooling1D(),
        ]
    if kind.endswith("_dropout"):  # e.g. "GRU_dropout": rates of 0.2
        layer = getattr(keras.layers, kind[: -len("_dropout")])
        return [layer(16, dropout=0.2, recurrent_dropout=0.2)]
    return [getattr(keras.layers, kind)(16)]


@contextlib.contextmanager
def variant(unroll, fused_gates):
    """The rewrite with a part switched off (module-level, probe only)."""
    original = _export_rewrites.unrolled_recurrence

    @contextlib.contextmanager
    def partial(model):
        changed = []
        for rnn in _export_rewrites.recurrent_layers(model):
            changed.append((rnn, "unroll", rnn.unroll))
            rnn.unroll = unroll
            cell = rnn.cell
            if not fused_gates and getattr(cell, "implementation", 0) == 2:
                changed.append((cell, "implementation", 2))
                cell.implementation = 1
        try:
            yield
        finally:
            for obj, name, value in reversed(changed):
                setattr(obj, name, value)

    _export_rewrites.unrolled_recurrence = partial
    try:
        yield
    finally:
        _export_rewrites.unrolled_recurrence = original


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--no-unroll", action="store_true")
    parser.add_argument("--fused-gates", action="store_true")
    args = parser.parse_args()
    (x, y), (xt, yt) = datasets.load_digits(image_size=8)
    x, xt = x[..., 0], xt[..., 0]
    folder = tempfile.mkdtemp()
    for kind in args.kinds.split(","):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((8, 8)), *recurrent(kind), keras.layers.Dense(10)]
        )
        model.compile(
            keras.optimizers.Adam(1e-2),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        model.fit(x, y, epochs=10, batch_size=64, verbose=0)
        accuracy = model.evaluate(xt, yt, verbose=0)[1]
        for quantization in ("int8", "int16x8"):
            path = os.path.join(folder, f"{kind}_{quantization}.tflite")
            start = time.perf_counter()
            try:
                with variant(not args.no_unroll, args.fused_gates):
                    report = export_tflite(
                        model,
                        path,
                        quantization=quantization,
                        representative_data=x[:300],
                    )
            except ValueError as e:
                print(f"{kind:15s} {quantization:8s} refused: {str(e)[:160]}")
                continue
            seconds = time.perf_counter() - start
            agreement = litert.compare(model, path, xt).agreement
            predicted = np.argmax(litert.predict(path, xt), axis=-1)
            print(
                f"{kind:15s} {quantization:8s} keras {accuracy:.3f} "
                f"integer_only {report.info.integer_only} "
                f"agreement {agreement:.4f} "
                f"file acc {np.mean(predicted == yt):.3f} "
                f"bytes {report.info.bytes} export {seconds:.1f}s",
                flush=True,
            )


if __name__ == "__main__":
    main()
