"""What the tfmot subprocesses share: the demo CNN rebuilt in tf_keras, its
compile, and an epoch timer. Imported only under TF_USE_LEGACY_KERAS=1
(by `benchmarks._tfmot_pruning` and `benchmarks._tfmot_qat`), never in a
Keras 3 process.
"""

import os
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import tf_keras as keras  # noqa: E402


class EpochTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)


def small_cnn(shape, num_classes=10, m=0.9):
    """`keras_slim.models.small_cnn` in tf_keras (same weight order)."""
    L = keras.layers
    inputs = keras.Input(shape)
    x = L.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = L.ReLU()(L.BatchNormalization(momentum=m)(x))
    x = L.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = L.ReLU()(L.BatchNormalization(momentum=m)(x))
    x = L.Conv2D(32, 1, use_bias=False)(x)
    x = L.ReLU()(L.BatchNormalization(momentum=m)(x))
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(64, 3, padding="same", use_bias=False)(x)
    x = L.ReLU()(L.BatchNormalization(momentum=m)(x))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(num_classes)(x))


def compile_(model, lr=1e-3):
    model.compile(
        keras.optimizers.Adam(lr),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
