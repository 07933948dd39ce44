"""Quantization-aware training layer kind by layer kind: each tiny model
trains a few steps with `QuantizationAwareTraining` (or `quantize_model`),
exports an all-int8 file and agrees with Keras."""

import keras
import numpy as np
import pytest

import keras_slim
from keras_slim import litert
from keras_slim.quantization import QuantizationAwareTraining
from keras_slim.quantization import quantize_model

L = keras.layers


def _fit_export(model, data, path, route="callback", epochs=1, probs=False):
    """Train `model` quantization-aware, export int8, return the agreement
    of the file with Keras on the test images."""
    (x, y), (x_test, _) = data
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=not probs)
    model.compile(keras.optimizers.Adam(1e-3), loss)
    callbacks = [QuantizationAwareTraining()]
    if route == "quantize_model":
        model = quantize_model(model)
        callbacks = []
    model.fit(
        x, y, batch_size=64, epochs=epochs, verbose=0, callbacks=callbacks
    )
    keras_slim.export_tflite(model, path, input_shape=tuple(x.shape[1:]))
    info = keras_slim.inspect_tflite(path)
    assert info.int8_only, info.float_ops
    return litert.compare(model, path, x_test).agreement


def _head_model(head):
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(8, 3, activation="relu")(inputs)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(16, activation="relu")(x)
    return keras.Model(inputs, head(x))


HEADS = {
    "dense_softmax": lambda x: L.Dense(10, activation="softmax")(x),
    "dense_sigmoid": lambda x: L.Dense(10, activation="sigmoid")(x),
    "dense_tanh": lambda x: L.Dense(10, activation="tanh")(x),
    "softmax_layer": lambda x: L.Softmax()(L.Dense(10)(x)),
    "sigmoid_activation_layer": lambda x: L.Activation("sigmoid")(
        L.Dense(10)(x)
    ),
    "dense_then_batchnorm": lambda x: L.BatchNormalization()(L.Dense(10)(x)),
}


@pytest.mark.parametrize("route", ["callback", "quantize_model"])
@pytest.mark.parametrize("head", sorted(HEADS))
def test_classifier_head_exports_all_int8_in_parity(
    head, route, digits_small, tmp_path
):
    model = _head_model(HEADS[head])
    probs = head in ("dense_softmax", "softmax_layer")
    agreement = _fit_export(
        model, digits_small, tmp_path / "m.tflite", route, probs=probs
    )
    assert agreement >= 0.99


def test_bounded_activations_use_the_fixed_ranges_of_tflite_kernels():
    model = _head_model(HEADS["dense_softmax"])
    qmodel = quantize_model(model)
    ranges = {
        layer.name: layer.fixed_range
        for layer in qmodel.layers
        if type(layer).__name__ == "FakeQuant"
    }
    assert ranges[f"{model.layers[-1].name}_quant"] == (0.0, 255.0 / 256.0)
    assert ranges[f"{model.layers[-1].name}_preactivation_quant"] is None


def test_pre_activation_batchnorm_not_after_a_conv_exports_int8(
    digits_small, tmp_path
):
    # ResNet50V2's pre-activation unit: BN -> ReLU -> Conv, BN after Add.
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(8, 3, padding="same")(inputs)
    y = L.ReLU()(L.BatchNormalization()(x))
    y = L.Conv2D(8, 3, padding="same")(y)
    x = L.Add()([x, y])
    x = L.ReLU()(L.BatchNormalization()(x))
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, L.Dense(10)(x))
    agreement = _fit_export(model, digits_small, tmp_path / "m.tflite")
    assert agreement >= 0.99


def test_unsupported_layers_are_all_named_before_training(digits_small):
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Flatten(),
            L.Dense(16, activation="softplus", name="soft"),
            L.LayerNormalization(name="norm"),
            L.Dense(10),
        ]
    )
    model.compile("adam", "mse")
    weights = model.get_weights()
    (x, y), _ = digits_small
    with pytest.raises(
        ValueError,
        match=r"(?s)2 layer.*'soft' of type `Dense` has activation "
        r"'softplus'.*'norm' of type `LayerNormalization`",
    ):
        model.fit(
            x,
            np.eye(10)[y],
            epochs=1,
            verbose=0,
            callbacks=[QuantizationAwareTraining()],
        )
    assert model.optimizer.iterations.numpy() == 0
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)
    with pytest.raises(ValueError, match="'soft' of type `Dense`"):
        quantize_model(model)
