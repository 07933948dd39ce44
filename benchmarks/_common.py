"""What the Keras 3 benchmarks share: the classifier compile, an epoch
timer and the steady-state epoch time. (The tf_keras subprocesses have
their own, in `_tf_keras_common`: a tf_keras callback is another class.)
"""

import os
import time

import keras
import numpy as np


def compile_classifier(model, lr=1e-3):
    """Adam(lr), sparse cross-entropy on logits, accuracy; returns `model`."""
    model.compile(
        keras.optimizers.Adam(lr),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


class EpochTimer(keras.callbacks.Callback):
    """Seconds of each epoch of `fit`, in `times`."""

    def on_train_begin(self, logs=None):
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)


def steady(times):
    """Median epoch time without the first epoch (which traces)."""
    return float(np.median(times[1:] if len(times) > 1 else times))


def save_section(path, lines):
    """Write a results section (a list of lines or a text) and print it."""
    text = lines if isinstance(lines, str) else "\n".join(lines)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    print(text)


def mobilenet():
    """MobileNetV2-0.35 at 96x96 for 10 classes (weights=None, logits),
    BatchNorm momentum 0.9: a few steps an epoch (see FINDINGS.md)."""
    model = keras.applications.MobileNetV2(
        input_shape=(96, 96, 3),
        alpha=0.35,
        weights=None,
        classes=10,
        classifier_activation=None,
    )
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    return model
