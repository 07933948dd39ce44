"""`keras-slim demo`: train, compress, export int8 TFLite and verify.

Every step runs on the offline digits, so the demo needs no network. Each
row of the final table is one way to get a small model; each is exported
to int8 and checked against its Keras model (int8_only, accuracy,
agreement). The demo fails (exit code 1) if any int8 file is not int8 end
to end or agrees with its Keras model on fewer than 97% of the test
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
from keras_slim import profiling

MIN_AGREEMENT = 0.97


class _EpochBar(keras.callbacks.Callback):
    """One progress bar over the epochs of a `fit`, not one per epoch."""

    def __init__(self, epochs, title):
        super().__init__()
        self.epochs = epochs
        self.title = title

    def on_train_begin(self, logs=None):
        print(f"  {self.title}")
        self.bar = keras.utils.Progbar(
            self.epochs,
            unit_name="epoch",
            stateful_metrics=["loss", "accuracy", "sparsity"],
        )

    def on_epoch_end(self, epoch, logs=None):
        values = [
            (k, v)
            for k, v in (logs or {}).items()
            if k in ("loss", "accuracy", "sparsity")
        ]
        self.bar.update(epoch + 1, values=values)


def compile_classifier(model, learning_rate=1e-3):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


class Row:
    def __init__(
        self,
        name,
        keras_acc,
        tflite_acc,
        agreement,
        info,
        latency_ms,
        int8_only,
        params,
    ):
        self.params = params
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
    if quantization == "int8" and "representative_data" not in (export_kwargs):
        export_kwargs["representative_data"] = x[:500]
    report = export.export_tflite(
        model, path, quantization=quantization, **export_kwargs
    )
    keras_acc = float(
        np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test)
    )
    tflite_acc = litert.evaluate(path, x_test, y_test)
    agreement = litert.compare(model, path, x_test).agreement
    ms = litert.latency(path, runs=50).median_ms
    p = profiling.profile(model)
    return Row(
        name,
        keras_acc,
        tflite_acc,
        agreement,
        report.info,
        ms,
        report.int8_only,
        f"{p.nonzero_params:,}/{p.total_params:,}",
    )


def _table(rows):
    head = (
        "model",
        "nonzero/params",
        "Keras acc",
        "TFLite acc",
        "agreement",
        "bytes",
        "gzip",
        "int8_only",
        "latency",
    )
    lines = [head]
    for r in rows:
        lines.append(
            (
                r.name,
                r.params,
                f"{100 * r.keras_acc:.2f}%",
                f"{100 * r.tflite_acc:.2f}%",
                f"{100 * r.agreement:.2f}%",
                f"{r.info.bytes:,}",
                f"{r.info.gzip_bytes:,}",
                "yes" if r.int8_only else "no",
                f"{r.latency_ms:.3f} ms",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for i, line in enumerate(lines):
        out.append(
            "  ".join(
                c.ljust(w) if j == 0 else c.rjust(w)
                for j, (c, w) in enumerate(zip(line, widths))
            )
        )
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
    print(
        f"Digits: {len(x)} train / {len(x_test)} test images, 32x32 "
        "(offline, from scikit-learn)"
    )
    epochs = 12 if quick else 30

    model = compile_classifier(models.small_cnn())
    model.fit(
        x,
        y,
        batch_size=64,
        epochs=epochs,
        verbose=0,
        callbacks=[_EpochBar(epochs, f"[1] train the CNN ({epochs} epochs)")],
    )
    model.save(os.path.join(output_dir, "cnn.keras"))

    print("  export and verify float32 and int8 TFLite files")
    rows = [
        verify(
            "float32",
            model,
            os.path.join(output_dir, "cnn_f32.tflite"),
            data,
            quantization="float32",
        ),
        verify(
            "int8 (post-training)",
            model,
            os.path.join(output_dir, "cnn_int8.tflite"),
            data,
        ),
    ]
    for step in _extra_steps():
        rows.extend(step(model, data, output_dir, quick))

    print()
    print(_table(rows))
    failed = [
        r.name
        for r in rows
        if r.name != "float32"
        and (not r.int8_only or r.agreement < MIN_AGREEMENT)
    ]
    print()
    if failed:
        print(
            f"NOT VERIFIED: {', '.join(failed)} (int8_only must be yes "
            f"and agreement >= {100 * MIN_AGREEMENT:.0f}%)"
        )
    else:
        print(
            "Verified: every int8 file is int8 end to end and agrees "
            f"with its Keras model on >= {100 * MIN_AGREEMENT:.0f}% of "
            "the test images."
        )
    print(
        f"Files in {os.path.abspath(output_dir)} "
        f"({time.perf_counter() - start:.0f}s)"
    )
    return not failed


def _copy(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def _pruned_rows(model, data, output_dir, quick):
    from keras_slim.callbacks import MagnitudePruning
    from keras_slim.schedules import PolynomialDecay

    (x, y), _ = data
    epochs = 4 if quick else 10
    steps = epochs * int(np.ceil(len(x) / 64))
    pruned = compile_classifier(_copy(model))
    schedule = PolynomialDecay(
        0.0, 0.8, begin_step=0, end_step=int(0.6 * steps), frequency=10
    )
    # scope="global" ranks weights across layers: on a model this small,
    # pruning every layer to 80% starves the first conv and the depthwise.
    pruned.fit(
        x,
        y,
        batch_size=64,
        epochs=epochs,
        verbose=0,
        callbacks=[
            MagnitudePruning(schedule, scope="global"),
            _EpochBar(epochs, "[2] magnitude pruning to 80% while fine-tuning"),
        ],
    )
    return [
        verify(
            "pruned 80% (int8)",
            pruned,
            os.path.join(output_dir, "pruned_int8.tflite"),
            data,
        )
    ]


def _qat_rows(model, data, output_dir, quick):
    from keras_slim.callbacks import QuantizationAwareTraining

    (x, y), _ = data
    epochs = 2 if quick else 5
    qat = compile_classifier(_copy(model), 1e-4)
    qat.fit(
        x,
        y,
        batch_size=64,
        epochs=epochs,
        verbose=0,
        callbacks=[
            QuantizationAwareTraining(),
            _EpochBar(epochs, "[3] quantization-aware fine-tuning"),
        ],
    )
    # The learned ranges replace representative data.
    return [
        verify(
            "QAT (int8, learned ranges)",
            qat,
            os.path.join(output_dir, "qat_int8.tflite"),
            data,
            representative_data=None,
        )
    ]


def _distilled_rows(model, data, output_dir, quick):
    from keras_slim.distillation import Distiller
    from keras_slim.distillation import cache_teacher_outputs

    (x, y), _ = data
    epochs = 10 if quick else 40
    student = keras.Sequential(
        [
            keras.Input((32, 32, 1)),
            keras.layers.AveragePooling2D(4),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10),
        ],
        name="student",
    )
    teacher = _copy(model)  # the Distiller freezes its teacher
    teacher_logits = cache_teacher_outputs(teacher, x)
    distiller = Distiller(teacher, student)
    compile_classifier(distiller, 3e-3)
    distiller.fit(
        x,
        {"labels": y, "teacher_outputs": teacher_logits},
        batch_size=64,
        epochs=epochs,
        verbose=0,
        callbacks=[
            _EpochBar(epochs, "[4] distil the CNN into a small Dense student")
        ],
    )
    return [
        verify(
            "distilled student (int8)",
            distiller.student,
            os.path.join(output_dir, "student_int8.tflite"),
            data,
        )
    ]


def _structured_rows(model, data, output_dir, quick):
    from keras_slim.pruning.channels import prune_channels

    (x, y), _ = data
    epochs = 8 if quick else 12
    small = compile_classifier(prune_channels(model, fraction=0.5))
    small.fit(
        x,
        y,
        batch_size=64,
        epochs=epochs,
        verbose=0,
        callbacks=[
            _EpochBar(epochs, "[5] remove 50% of the channels, fine-tune")
        ],
    )
    return [
        verify(
            "50% channels removed (int8)",
            small,
            os.path.join(output_dir, "structured_int8.tflite"),
            data,
        )
    ]


def _transfer_rows(model, data, output_dir, quick):
    from keras_slim import transfer

    (x, y), (x_test, y_test) = data
    print("  [6] transfer: frozen CNN body, new head trained on its features")
    body = _copy(model)
    transfer.freeze(body)
    # A 5-class task on digits 5-9 (the CNN has seen them: this row shows
    # the mechanics; benchmarks/RESULTS.md has the few-label experiment).
    k, kt = y >= 5, y_test >= 5
    features = transfer.extract_features(body, x[k])
    head = compile_classifier(
        keras.Sequential(
            [keras.Input(features.shape[1:]), keras.layers.Dense(5)]
        ),
        1e-2,
    )
    head.fit(features, y[k] - 5, epochs=5 if quick else 30, verbose=0)
    new = transfer.attach_head(body, head, name="transfer")
    subset = ((x[k], y[k] - 5), (x_test[kt], y_test[kt] - 5))
    return [
        verify(
            "transfer: digits 5-9 head (int8)",
            new,
            os.path.join(output_dir, "transfer_int8.tflite"),
            subset,
        )
    ]


def _extra_steps():
    """Demo rows contributed by the compression modules."""
    return [
        _pruned_rows,
        _qat_rows,
        _distilled_rows,
        _structured_rows,
        _transfer_rows,
    ]
