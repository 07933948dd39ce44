"""The drop-in promise: keras_slim's callbacks beside Keras's own callbacks
and training modes, on small models and few steps.

Each case trains a small Dense model on the 8x8 digits with
`MagnitudePruning` or `QuantizationAwareTraining` plus one Keras callback
or one training mode, then checks the invariants: pruned weights are
exact zeros at the scheduled sparsity, QAT ranges were learned, and the
callbacks' numbers reach the logs.
"""

import csv

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import compile_classifier

from keras_slim.pruning import MagnitudePruning
from keras_slim.quantization import QuantizationAwareTraining
from keras_slim.quantization import is_quantization_aware
from keras_slim.schedules import ConstantSparsity

SPARSITY = 0.75


def _model():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def _ours(kind):
    if kind == "pruning":
        return MagnitudePruning(ConstantSparsity(SPARSITY, begin_step=0))
    return QuantizationAwareTraining()


def _check(kind, model, history):
    if kind == "pruning":
        for layer in model.layers:
            if isinstance(layer, keras.layers.Dense):
                kernel = keras.ops.convert_to_numpy(layer.kernel)
                assert np.mean(kernel == 0) == pytest.approx(
                    SPARSITY, abs=0.01
                ), layer.name
        assert history.history["sparsity"][-1] == pytest.approx(
            SPARSITY, abs=0.01
        )
    else:
        assert is_quantization_aware(model)
        assert history.history["quantization_active"][-1] == 1.0


def _keras_callback(name, tmp_path):
    if name == "checkpoint_keras":
        return keras.callbacks.ModelCheckpoint(tmp_path / "m.keras")
    if name == "checkpoint_weights":
        return keras.callbacks.ModelCheckpoint(
            tmp_path / "m.weights.h5", save_weights_only=True
        )
    if name == "backup_and_restore":
        return keras.callbacks.BackupAndRestore(tmp_path / "backup")
    if name == "early_stopping_restore_best":
        return keras.callbacks.EarlyStopping(
            monitor="loss", patience=1, restore_best_weights=True
        )
    if name == "reduce_lr_on_plateau":
        return keras.callbacks.ReduceLROnPlateau(monitor="loss", patience=1)
    if name == "learning_rate_scheduler":
        return keras.callbacks.LearningRateScheduler(lambda e, lr: lr * 0.9)
    if name == "terminate_on_nan":
        return keras.callbacks.TerminateOnNaN()
    if name == "tensorboard":
        return keras.callbacks.TensorBoard(tmp_path / "logs")
    raise AssertionError(name)


KERAS_CALLBACKS = [
    "checkpoint_keras",
    "checkpoint_weights",
    "backup_and_restore",
    "early_stopping_restore_best",
    "reduce_lr_on_plateau",
    "learning_rate_scheduler",
    "terminate_on_nan",
    "tensorboard",
]


@pytest.mark.parametrize("kind", ["pruning", "qat"])
@pytest.mark.parametrize("name", KERAS_CALLBACKS)
def test_composes_with_keras_callback(kind, name, digits_small, tmp_path):
    (x, y), _ = digits_small
    model = compile_classifier(_model())
    csv_path = tmp_path / "log.csv"
    history = model.fit(
        x,
        y,
        batch_size=64,
        epochs=3,
        verbose=0,
        callbacks=[
            _keras_callback(name, tmp_path),
            _ours(kind),
            keras.callbacks.CSVLogger(str(csv_path)),
        ],
    )
    _check(kind, model, history)
    with open(csv_path) as f:
        header = next(csv.reader(f))
    assert ("sparsity" if kind == "pruning" else "quantization_active") in (
        header
    )


def _fit_kwargs(mode, x, y):
    if mode == "validation_split":
        return dict(x=x, y=y, validation_split=0.2)
    if mode == "sample_weight":
        return dict(x=x, y=y, sample_weight=np.linspace(0.5, 1.5, len(x)))
    if mode == "class_weight":
        return dict(x=x, y=y, class_weight={i: 1.0 + i / 10 for i in range(10)})
    if mode == "unknown_cardinality":
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
        data = data.filter(lambda a, b: True)  # cardinality unknown
        assert data.cardinality() == tf.data.UNKNOWN_CARDINALITY
        return dict(x=data)
    return dict(x=x, y=y)


MODES = [
    "steps_per_execution",
    "jit_compile",
    "mixed_float16",
    "validation_split",
    "sample_weight",
    "class_weight",
    "unknown_cardinality",
]


@pytest.mark.parametrize("kind", ["pruning", "qat"])
@pytest.mark.parametrize("mode", MODES)
def test_composes_with_training_mode(kind, mode, digits_small):
    (x, y), _ = digits_small
    compile_kwargs = {}
    if mode == "steps_per_execution":
        compile_kwargs["steps_per_execution"] = 4
    if mode == "jit_compile":
        compile_kwargs["jit_compile"] = True
    if mode == "mixed_float16":
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = compile_classifier(_model(), **compile_kwargs)
        fit = _fit_kwargs(mode, x, y)
        if mode != "unknown_cardinality":
            fit["batch_size"] = 64
        history = model.fit(epochs=3, verbose=0, callbacks=[_ours(kind)], **fit)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    _check(kind, model, history)
    assert np.isfinite(history.history["loss"]).all()
