"""`keras-slim demo`: train, compress, export int8 TFLite and verify.

Every step runs on the offline digits, so the demo needs no network. Each
row of the final table is one way to get a small model; each is exported
to int8 and checked against its Keras model (int8_only, accuracy,
agreement). The demo fails (exit code 1) if any int8 file is not int8 end
to end or agrees with its Keras model on fewer than 98% of the test
images.
"""

import os
import time

import keras
import numpy as np

from keras_slim import datasets
from keras_slim import export
from keras_slim import litert
from keras_slim import models

MIN_AGREEMENT = 0.98


class _EpochBar(keras.callbacks.Callback):
    """One progress bar over the epochs of a `fit`, not one per epoch."""

    def __init__(self, epochs, title):
        super().__init__()
        self.epochs = epochs
        self.title = title

    def on_train_begin(self, logs=None):
        print(f"  {self.title}")
        self.bar = keras.utils.Progbar(
            self.epochs, unit_name="epoch",
            stateful_metrics=["loss", "accuracy", "sparsity"],
        )

    def on_epoch_end(self, epoch, logs=None):
        values = [(k, v) for k, v in (logs or {}).items()
                  if k in ("loss", "accuracy", "sparsity")]
        self.bar.update(epoch + 1, values=values)


def compile_classifier(model, learning_rate=1e-3):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


class Row:
    def __init__(self, name, keras_acc, tflite_acc, agreement, info,
                 latency_ms, int8_only):
        self.name = name
        self.keras_acc = keras_acc
        self.tflite_acc = tflite_acc
        self.agreement = agreement
        self.info = info
        self.latency_ms = latency_ms
        self.int8_only = int8_only


def verify(name, model, path, data, quantization="int8", **export_kwargs):
    """Export `model`, run the file on the test split, return a `Row`."""
    (x, _), (x_test, y_test) = data
    if quantization == "int8" and "representative_data" not in export_kwargs:
        export_kwargs["representative_data"] = x[:500]
    report = export.export_tflite(model, path, quantization=quantization,
                                  **export_kwargs)
    keras_acc = float(np.mean(
        np.argmax(model.predict(x_test, verbose=0), -1) == y_test))
    tflite_acc = litert.evaluate(path, x_test, y_test)
    agreement = litert.compare(model, path, x_test).agreement
    ms = litert.latency(path, runs=50).median_ms
    return Row(name, keras_acc, tflite_acc, agreement, report.info, ms,
               report.int8_only)


def _table(rows):
    head = ("model", "Keras acc", "TFLite acc", "agreement", "bytes",
            "gzip", "int8_only", "latency")
    lines = [head]
    for r in rows:
        lines.append((
            r.name, f"{100 * r.keras_acc:.2f}%", f"{100 * r.tflite_acc:.2f}%",
            f"{100 * r.agreement:.2f}%", f"{r.info.bytes:,}",
            f"{r.info.gzip_bytes:,}", "yes" if r.int8_only else "no",
            f"{r.latency_ms:.3f} ms",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for i, line in enumerate(lines):
        out.append("  ".join(
            c.ljust(w) if j == 0 else c.rjust(w)
            for j, (c, w) in enumerate(zip(line, widths))))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def run(quick=False, output_dir="keras_slim_demo"):
    """Run the demo; return True when every int8 file verified."""
    start = time.perf_counter()
    os.makedirs(output_dir, exist_ok=True)
    keras.utils.set_random_seed(0)
    data = datasets.load_digits(image_size=32, seed=0)
    (x, y), (x_test, y_test) = data
    print(f"Digits: {len(x)} train / {len(x_test)} test images, 32x32 "
          "(offline, from scikit-learn)")
    epochs = 6 if quick else 30

    model = compile_classifier(models.small_cnn())
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=0,
              callbacks=[_EpochBar(epochs, f"[1] train the CNN ({epochs} "
                                   "epochs)")])
    model.save(os.path.join(output_dir, "cnn.keras"))

    print("  export and verify float32 and int8 TFLite files")
    rows = [
        verify("float32", model, os.path.join(output_dir, "cnn_f32.tflite"),
               data, quantization="float32"),
        verify("int8 (post-training)", model,
               os.path.join(output_dir, "cnn_int8.tflite"), data),
    ]
    for step in _extra_steps():
        rows.extend(step(model, data, output_dir, quick))

    print()
    print(_table(rows))
    failed = [r.name for r in rows if r.name != "float32" and (
        not r.int8_only or r.agreement < MIN_AGREEMENT)]
    print()
    if failed:
        print(f"NOT VERIFIED: {', '.join(failed)} (int8_only must be yes "
              f"and agreement >= {100 * MIN_AGREEMENT:.0f}%)")
    else:
        print("Verified: every int8 file is int8 end to end and agrees "
              f"with its Keras model on >= {100 * MIN_AGREEMENT:.0f}% of "
              "the test images.")
    print(f"Files in {os.path.abspath(output_dir)} "
          f"({time.perf_counter() - start:.0f}s)")
    return not failed


def _extra_steps():
    """Demo rows contributed by the compression modules."""
    return []
