"""Bias correction of post-training integer files (issue 22, item 5):
`export_tflite(..., bias_correction=...)` takes the mean error of int8
weights off the biases while the converter reads the model, and gives
every value back."""

import keras
import numpy as np
import pytest
from conftest import SubclassedModel
from conftest import nested_model

from keras_slim import _bias_correction
from keras_slim import _convert
from keras_slim import _export_inputs
from keras_slim import export_tflite
from keras_slim import litert

_TF_ONLY = pytest.mark.backends(
    "tensorflow",
    reason="files from the TFLite converter; the last test crosses from "
    "JAX and PyTorch",
)


def _grid(kernel, axes):
    """`kernel` on a symmetric int8 grid, one scale over `axes`' slices."""
    scale = np.abs(kernel).max(axis=axes, keepdims=True) / 127.0
    return np.round(kernel / scale) * scale


def _options(**kwargs):
    return {"bias_correction": True, "per_channel_dense": True, **kwargs}


def _mean_output(model, x):
    return np.asarray(model.predict(x, verbose=0), np.float64).mean(axis=0)


@pytest.mark.parametrize("per_channel_dense", [True, False])
def test_dense_bias_cancels_the_mean_error_of_its_int8_kernel(
    per_channel_dense,
):
    # Linear, so the correction is exact: with the kernel on its int8 grid
    # and the corrected bias, the mean output equals the float model's.
    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(5)])
    model.layers[0].kernel.assign(rng.normal(size=(12, 5)).astype("float32"))
    x = (rng.normal(size=(256, 12)) + 2.0).astype("float32")
    float_mean = _mean_output(model, x)
    kernel = keras.ops.convert_to_numpy(model.layers[0].kernel)
    rounded = _grid(kernel, 0 if per_channel_dense else None)
    sig = _export_inputs.signature(model, None, x)
    options = _options(per_channel_dense=per_channel_dense)
    with _bias_correction.corrected(model, sig, [x], options) as notes:
        model.layers[0].kernel.assign(rounded)
        corrected_mean = _mean_output(model, x)
        model.layers[0].kernel.assign(kernel)
    uncorrected = model.layers[0].kernel
    uncorrected.assign(rounded)
    rounded_mean = _mean_output(model, x)
    assert np.abs(rounded_mean - float_mean).max() > 1e-3
    np.testing.assert_allclose(corrected_mean, float_mean, atol=2e-5)
    assert "of 1 layers" in notes[0] and "(dense" in notes[0]


def test_bias_free_layers_shift_the_batch_norm_after_them():
    # A 1x1 Conv2D and a depthwise 1x1 (multiplier 2) without biases, each
    # feeding a BatchNormalization: the correction moves the moving means
    # (linear again, so exact), and everything comes back on exit.
    rng = np.random.default_rng(1)
    inputs = keras.Input((6, 6, 4))
    x = keras.layers.Conv2D(8, 1, use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.DepthwiseConv2D(
        1, depth_multiplier=2, use_bias=False, name="dw"
    )(x)
    outputs = keras.layers.BatchNormalization(name="bn2")(x)
    model = keras.Model(inputs, outputs)
    for layer in model.layers[1:]:
        for v in layer.weights:
            v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))
    x = rng.uniform(0, 2, (64, 6, 6, 4)).astype("float32")
    before = [np.copy(w) for w in model.get_weights()]
    float_mean = _mean_output(model, x).mean(axis=(0, 1))
    conv, dw = model.get_layer("conv"), model.get_layer("dw")
    grids = {
        conv: _grid(keras.ops.convert_to_numpy(conv.kernel), (0, 1, 2)),
        dw: _grid(keras.ops.convert_to_numpy(dw.kernel), (0, 1)),
    }
    sig = _export_inputs.signature(model, None, x)
    with _bias_correction.corrected(model, sig, [x], _options()) as notes:
        shifted = keras.ops.convert_to_numpy(model.get_layer("bn1").moving_mean)
        for layer, grid in grids.items():
            layer.kernel.assign(grid)
        corrected_mean = _mean_output(model, x).mean(axis=(0, 1))
    assert "of 2 layers" in notes[0] and "conv, dw" in notes[0]
    assert not np.array_equal(shifted, before[3])  # bn1's moving mean
    # Exact up to float32 round-off over the chain.
    np.testing.assert_allclose(corrected_mean, float_mean, rtol=1e-4)
    # The test's own kernel changes undone by hand; the moving means must
    # have come back by themselves.
    conv.kernel.assign(before[0])
    dw.kernel.assign(before[5])
    for w, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(w, b)


@_TF_ONLY
def test_int16x8_file_is_corrected_on_request_and_weights_come_back(
    trained_cnn, digits, tmp_path
):
    (x, _), (x_test, _) = digits
    before = [np.copy(w) for w in trained_cnn.get_weights()]
    agreements = {}
    for choice in (False, True):
        path = str(tmp_path / f"{choice}.tflite")
        report = export_tflite(
            trained_cnn,
            path,
            quantization="int16x8",
            representative_data=x[:300],
            bias_correction=choice,
        )
        agreements[choice] = litert.compare(trained_cnn, path, x_test).agreement
        corrected = [n for n in report.notes if n.startswith("Bias correction")]
        assert len(corrected) == choice
    assert "of 5 layers" in corrected[0], corrected
    assert "(conv1, dw2, pw2, conv4, logits)" in corrected[0]
    assert report.integer_only
    for w, b in zip(trained_cnn.get_weights(), before):
        np.testing.assert_array_equal(w, b)
    # Both files close to Keras (the correction's gain is model-dependent:
    # benchmarks/RESULTS.md); the corrected one is no broken file.
    assert min(agreements.values()) >= 0.97, agreements


@_TF_ONLY
def test_files_are_corrected_only_on_request(trained_cnn, digits, tmp_path):
    (x, _), _ = digits
    for quantization in ("int8", "int16x8"):
        report = export_tflite(
            trained_cnn,
            str(tmp_path / "a.tflite"),
            quantization=quantization,
            representative_data=x[:64],
        )
        assert not any(n.startswith("Bias correction") for n in report.notes)
    report = export_tflite(
        trained_cnn,
        str(tmp_path / "b.tflite"),
        representative_data=x[:64],
        bias_correction=True,
    )
    assert report.int8_only
    assert any("of 5 layers" in n for n in report.notes), report.notes


@_TF_ONLY
@pytest.mark.parametrize(
    "build",
    [lambda: SubclassedModel(name="sub"), nested_model],
    ids=["subclassed", "nested"],
)
def test_subclassed_and_nested_models_are_corrected(build, tmp_path):
    # Their conv (inside the nested model's body, or an attribute of the
    # subclassed one) and two Dense layers.
    model = build()
    x = np.random.default_rng(2).uniform(0, 1, (64, 8, 8, 1))
    x = x.astype("float32")
    model(x[:1])
    before = [np.copy(w) for w in model.get_weights()]
    report = export_tflite(
        model,
        str(tmp_path / "m.tflite"),
        quantization="int16x8",
        representative_data=x,
        input_shape=(8, 8, 1),
        bias_correction=True,
    )
    [note] = [n for n in report.notes if n.startswith("Bias correction")]
    assert "of 3 layers" in note, note
    for w, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(w, b)


@_TF_ONLY
def test_failed_conversion_writes_nothing_and_restores_the_weights(
    trained_cnn, digits, tmp_path, monkeypatch
):
    (x, _), _ = digits
    before = [np.copy(w) for w in trained_cnn.get_weights()]
    seen = []

    def failing(model, *args, **kwargs):
        seen.append([np.copy(w) for w in model.get_weights()])
        raise RuntimeError("converter failed")

    monkeypatch.setattr(_convert, "convert", failing)
    path = tmp_path / "m.tflite"
    with pytest.raises(RuntimeError, match="converter failed"):
        export_tflite(
            trained_cnn,
            str(path),
            quantization="int16x8",
            representative_data=x[:64],
            bias_correction=True,
        )
    assert not path.exists()
    # The converter saw corrected values; the model has its own back.
    assert any(not np.array_equal(a, b) for a, b in zip(seen[0], before))
    for w, b in zip(trained_cnn.get_weights(), before):
        np.testing.assert_array_equal(w, b)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"bias_correction": "yes"},
            r"True or False\. Received: bias_correction='yes'",
        ),
        (
            {"bias_correction": 1},
            r"True or False\. Received: bias_correction=1",
        ),
        (
            {"bias_correction": "auto"},
            r"True or False\. Received: bias_correction='auto'",
        ),
        (
            {"bias_correction": True, "quantization": "float16"},
            r"not quantization='float16'\. Received: bias_correction=True",
        ),
        (
            {"bias_correction": True, "quantization": "dynamic"},
            r"not quantization='dynamic'",
        ),
    ],
)
def test_bad_bias_correction_is_refused_before_any_work(
    kwargs, message, tmp_path, monkeypatch
):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    monkeypatch.setattr(_bias_correction, "_measure", None)  # never reached
    data = np.ones((8, 4), "float32")
    if kwargs.get("quantization") in ("float16", "dynamic"):
        data = None
    with pytest.raises(ValueError, match=message):
        export_tflite(
            model,
            str(tmp_path / "m.tflite"),
            representative_data=data,
            **kwargs,
        )
    assert not (tmp_path / "m.tflite").exists()


def test_a_model_without_kernels_to_correct_is_refused(tmp_path):
    model = keras.Sequential(
        [keras.Input((4, 4, 1)), keras.layers.AveragePooling2D(2)]
    )
    with pytest.raises(ValueError, match="found no Conv2D, DepthwiseConv2D"):
        export_tflite(
            model,
            str(tmp_path / "m.tflite"),
            representative_data=np.ones((8, 4, 4, 1), "float32"),
            bias_correction=True,
        )


@pytest.mark.backends(
    "jax",
    "torch",
    reason="only a JAX or PyTorch export crosses to a TensorFlow process",
)
def test_jax_and_torch_exports_are_corrected_in_the_tensorflow_child(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(3),
        ]
    )
    x = np.random.default_rng(3).uniform(0, 1, (64, 6)).astype("float32")
    before = [np.copy(w) for w in model.get_weights()]
    report = export_tflite(
        model,
        str(tmp_path / "m.tflite"),
        quantization="int16x8",
        representative_data=x,
        bias_correction=True,
    )
    assert any("of 2 layers" in n for n in report.notes), report.notes
    for w, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(w, b)
