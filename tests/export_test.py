"""export_tflite and inspect_tflite on real models and the digits."""

import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import ZOO
from conftest import accuracy
from conftest import compile_classifier

from keras_slim import export_tflite
from keras_slim import inspect_tflite
from keras_slim import litert
from keras_slim import models
from keras_slim import profile
from keras_slim.quantization import QuantizationAwareTraining

# Under JAX and PyTorch each export runs in a TensorFlow child process
# (10-30 s): the tests that export many files run on TensorFlow only; the
# checks before any work, and a few exports that cross, run everywhere.
_MANY_EXPORTS = pytest.mark.backends(
    "tensorflow",
    reason="exports several files, each a TensorFlow child process under "
    "jax/torch (that route: backends_test and the tests below)",
)


@pytest.fixture
def exported(trained_cnn, digits, tmp_path):
    (x, _), _ = digits
    paths = {}
    for q in ("float32", "int8"):
        path = str(tmp_path / f"{q}.tflite")
        export_tflite(
            trained_cnn,
            path,
            quantization=q,
            representative_data=x[:300] if q == "int8" else None,
        )
        paths[q] = path
    return paths


@_MANY_EXPORTS
def test_float32_file_matches_keras_exactly(trained_cnn, digits, exported):
    _, (x_test, _) = digits
    c = litert.compare(trained_cnn, exported["float32"], x_test)
    assert c.agreement == 1.0
    assert c.max_abs_error < 1e-4


@_MANY_EXPORTS
def test_int8_file_is_int8_only_small_and_as_accurate(
    trained_cnn, digits, exported
):
    _, (x_test, y_test) = digits
    info = inspect_tflite(exported["int8"])
    float_info = inspect_tflite(exported["float32"])
    assert info.int8_only, info.float_ops
    assert info.ops["CONV_2D"] == 3
    assert info.ops["DEPTHWISE_CONV_2D"] == 1
    assert info.ops["FULLY_CONNECTED"] == 1
    assert info.bytes <= 0.36 * float_info.bytes
    assert info.gzip_bytes < info.bytes
    # profile's estimate: the weights with their quantization parameters,
    # without the graph the file adds around them.
    assert 0.7 * info.bytes <= profile(trained_cnn).int8_bytes <= info.bytes
    keras_acc = accuracy(trained_cnn.predict(x_test, verbose=0), y_test)
    int8_acc = litert.evaluate(exported["int8"], x_test, y_test)
    assert keras_acc > 0.93
    assert abs(keras_acc - int8_acc) <= 0.01
    assert litert.compare(trained_cnn, exported["int8"], x_test).agreement >= (
        0.985
    )


@_MANY_EXPORTS
def test_signature_has_batch_one_and_float_io_by_default(exported):
    info = inspect_tflite(exported["int8"])
    assert info.inputs[0]["shape"] == (1, 32, 32, 1)
    assert info.inputs[0]["dtype"] == "float32"
    assert info.outputs[0]["dtype"] == "float32"
    assert "int8_only: True" in str(info)


@pytest.mark.backends(
    "tensorflow",
    reason="exports two files (one per io_dtype), each a TensorFlow child "
    "process under jax/torch",
)
@pytest.mark.parametrize("io_dtype", ["int8", "uint8"])
def test_full_integer_io_quantizes_inputs_and_outputs(
    trained_cnn, digits, tmp_path, io_dtype
):
    (x, _), (x_test, y_test) = digits
    path = str(tmp_path / "io.tflite")
    report = export_tflite(
        trained_cnn, path, representative_data=x[:200], io_dtype=io_dtype
    )
    inp = report.info.inputs[0]
    assert inp["dtype"] == io_dtype
    assert report.info.outputs[0]["dtype"] == io_dtype
    assert inp["scale"] == pytest.approx(1 / 255, rel=1e-3)
    assert report.int8_only
    keras_acc = accuracy(trained_cnn.predict(x_test, verbose=0), y_test)
    assert abs(litert.evaluate(path, x_test, y_test) - keras_acc) <= 0.015


@_MANY_EXPORTS
@pytest.mark.parametrize(
    "quantization,ratio", [("float16", 0.6), ("dynamic", 0.4)]
)
def test_float16_and_dynamic_shrink_and_keep_predictions(
    trained_cnn, digits, tmp_path, exported, quantization, ratio
):
    _, (x_test, _) = digits
    path = str(tmp_path / f"{quantization}.tflite")
    report = export_tflite(trained_cnn, path, quantization=quantization)
    assert not report.int8_only
    assert report.ranges is None
    assert (
        report.info.bytes <= ratio * inspect_tflite(exported["float32"]).bytes
    )
    assert litert.compare(trained_cnn, path, x_test).agreement >= 0.99


@_MANY_EXPORTS
def test_per_tensor_dense_gives_one_scale_for_fully_connected_weights(
    trained_cnn, digits, tmp_path
):
    (x, _), _ = digits

    def dense_weight_scales(per_channel):
        path = str(tmp_path / f"pc{per_channel}.tflite")
        info = export_tflite(
            trained_cnn,
            path,
            representative_data=x[:100],
            per_channel_dense=per_channel,
        ).info
        [kernel] = [
            t
            for t in info.tensors
            if t["dtype"] == "int8" and t["shape"] == (10, 64)
        ]
        return kernel["scale"]

    assert isinstance(dense_weight_scales(True), list)
    assert len(dense_weight_scales(True)) == 10
    assert isinstance(dense_weight_scales(False), float)


@_MANY_EXPORTS
def test_dynamic_batch_runs_whole_arrays(trained_cnn, digits, tmp_path):
    _, (x_test, _) = digits
    path = str(tmp_path / "dyn.tflite")
    export_tflite(trained_cnn, path, quantization="float32", batch_size=None)
    c = litert.compare(trained_cnn, path, x_test[:100])
    assert c.samples == 100 and c.agreement == 1.0


def _mixed_precision_cnn(weights):
    """The trained demo CNN under mixed_float16, after the usual first
    layer of a keras.io image model: Rescaling of [0, 255] pixels (an
    affine layer, which QAT computes with its own math)."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        cnn = models.small_cnn()
        model = keras.Sequential(
            [keras.Input((32, 32, 1)), keras.layers.Rescaling(1 / 255), cnn]
        )
        compile_classifier(model)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    cnn.set_weights(weights)
    return model


def _policies(model):
    return [
        layer.dtype_policy.name
        for layer in model._flatten_layers(include_self=True, recursive=True)
    ]


@pytest.mark.parametrize(
    "route",
    [
        pytest.param(
            "calibrated",
            marks=pytest.mark.backends(
                "tensorflow",
                reason="the same conversion as 'learned' in the TensorFlow "
                "child process under jax/torch, whose parity check "
                "'learned' tests",
            ),
        ),
        "learned",
    ],
)
def test_mixed_precision_model_exports_int8_and_keeps_its_policy(
    route, trained_cnn_weights, digits, tmp_path
):
    # Trained under mixed_float16, the model's layers trace float16 ops,
    # which no builtin TFLite kernel takes: every quantization was
    # refused. The export computes them in float32 and gives the layers
    # their policies back.
    (x, y), (x_test, y_test) = digits
    x, x_test = x * 255.0, x_test * 255.0
    model = _mixed_precision_cnn(trained_cnn_weights)
    policies = _policies(model)
    assert policies.count("mixed_float16") >= 10
    kwargs = {"representative_data": x[:300]}
    if route == "learned":
        model.fit(
            x,
            y,
            batch_size=64,
            epochs=1,
            verbose=0,
            callbacks=[QuantizationAwareTraining()],
        )
        kwargs = {}
    path = str(tmp_path / "mixed.tflite")
    report = export_tflite(model, path, **kwargs)
    assert report.int8_only and report.ranges == route
    assert _policies(model) == policies
    logits = model.predict(x_test, verbose=0)
    assert logits.dtype == np.float16  # it still computes in float16
    assert litert.compare(model, path, x_test).agreement >= 0.98
    keras_accuracy = accuracy(logits, y_test)
    assert keras_accuracy > 0.9
    assert litert.evaluate(path, x_test, y_test) >= keras_accuracy - 0.02


@_MANY_EXPORTS
@pytest.mark.parametrize("kind", sorted(ZOO))
def test_every_kind_of_model_exports_int8_only(kind, digits_small, tmp_path):
    (x, y), (x_test, _) = digits_small
    model = ZOO[kind]()
    path = str(tmp_path / "m.tflite")
    report = export_tflite(model, path, representative_data=x[:100])
    assert report.int8_only, report.info.float_ops
    float_path = str(tmp_path / "f.tflite")
    export_tflite(
        model, float_path, quantization="float32", input_shape=(8, 8, 1)
    )
    assert litert.compare(model, float_path, x_test[:50]).max_abs_error < 1e-4


@_MANY_EXPORTS
@pytest.mark.slow
def test_keras_applications_backbone_exports_int8_only(tmp_path):
    model = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10
    )
    data = np.random.default_rng(0).random((32, 32, 32, 3), "float32")
    report = export_tflite(
        model, str(tmp_path / "mnv2.tflite"), representative_data=data
    )
    assert report.int8_only, report.info.float_ops
    assert report.info.ops["DEPTHWISE_CONV_2D"] == 17
    estimate = profile(model).int8_bytes
    assert 0.75 * report.info.bytes <= estimate <= report.info.bytes


@pytest.mark.backends(
    "tensorflow",
    reason="a tf.data.Dataset, and three exports (children under jax/torch); "
    "generators cross: cross_backend tests below",
)
def test_representative_data_as_dataset_generator_or_function(
    trained_cnn, digits, tmp_path
):
    (x, y), _ = digits
    dataset = tf.data.Dataset.from_tensor_slices((x[:64], y[:64])).batch(16)

    def generator():
        for i in range(32):
            yield [x[i : i + 1]]

    for i, data in enumerate([dataset, generator(), generator]):
        report = export_tflite(
            trained_cnn, str(tmp_path / f"{i}.tflite"), representative_data=data
        )
        assert report.int8_only
        assert report.calibration_samples in (64, 32)


# ------------------------------------------------------------ bad input


@pytest.fixture
def existing_file(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"precious")
    return path


def _assert_untouched(path):
    assert path.read_bytes() == b"precious"
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (
            dict(quantization="int4"),
            ValueError,
            r"`quantization`.*Received: quantization='int4'",
        ),
        (
            dict(quantization="int8"),
            ValueError,
            r"needs `representative_data`.*Received: representative_data=None",
        ),
        (
            dict(representative_data=np.zeros((4, 28, 28, 1), "float32")),
            ValueError,
            r"shape \(n, 32, 32, 1\).*shape \(4, 28, 28, 1\)",
        ),
        (
            dict(representative_data=np.array([["a"] * 32] * 2)),
            ValueError,
            r"representative_data",
        ),
        (
            dict(representative_data=np.zeros((4, 32, 32, 1), "<U1")),
            ValueError,
            r"dtype <U1",
        ),
        (
            dict(representative_data=[1, 2, 3]),
            TypeError,
            r"representative_data` to be a NumPy array",
        ),
        (
            dict(quantization="float32", io_dtype="int8"),
            ValueError,
            r"`io_dtype='int8'` needs `quantization='int8'`",
        ),
        (dict(io_dtype="int4"), ValueError, r"Received: io_dtype='int4'"),
        (dict(batch_size=0), ValueError, r"Received: batch_size=0"),
        (
            dict(
                quantization="float32",
                representative_data=np.zeros((1, 32, 32, 1)),
            ),
            ValueError,
            r"only with `quantization='int8'`",
        ),
    ],
)
def test_bad_arguments_are_refused_before_any_work(
    trained_cnn, existing_file, kwargs, error, match
):
    with pytest.raises(error, match=match):
        export_tflite(trained_cnn, str(existing_file), **kwargs)
    _assert_untouched(existing_file)


def test_non_keras_and_unbuilt_models_are_refused(tmp_path):
    with pytest.raises(TypeError, match=r"Keras 3 `keras.Model`.*str"):
        export_tflite("model.keras", str(tmp_path / "m.tflite"))
    unbuilt = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match=r"to be built"):
        export_tflite(unbuilt, str(tmp_path / "m.tflite"))


def test_subclassed_model_without_input_shape_is_refused(tmp_path):
    model = ZOO["subclassed"]()
    with pytest.raises(
        ValueError,
        match=r"pass `input_shape=.*"
        r"Received: input_shape=None",
    ):
        export_tflite(model, str(tmp_path / "m.tflite"), quantization="float32")


def test_missing_folder_and_wrong_suffix_are_refused(trained_cnn, tmp_path):
    with pytest.raises(ValueError, match=r"folder of `filepath` does not"):
        export_tflite(
            trained_cnn,
            str(tmp_path / "no" / "m.tflite"),
            quantization="float32",
        )
    with pytest.raises(ValueError, match=r"end with \.tflite"):
        export_tflite(
            trained_cnn, str(tmp_path / "m.keras"), quantization="float32"
        )


@keras.saving.register_keras_serializable(package="keras_slim_tests")
class Sine(keras.layers.Layer):
    def call(self, x):
        return keras.ops.sin(x)


def test_int8_with_unquantizable_op_fails_and_keeps_existing_file(
    existing_file, tmp_path
):
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(4),
            Sine(),
            keras.layers.Dense(2),
        ]
    )
    data = np.random.default_rng(0).random((16, 4), "float32")
    with pytest.raises(ValueError, match=r"(?i)float|refused"):
        export_tflite(model, str(existing_file), representative_data=data)
    _assert_untouched(existing_file)
    mixed = str(tmp_path / "mixed.tflite")
    report = export_tflite(
        model, mixed, representative_data=data, allow_float_fallback=True
    )
    assert not report.int8_only
    assert any(op.startswith("SIN") for op in report.info.float_ops)


def test_inspect_refuses_missing_and_non_tflite_files(tmp_path):
    with pytest.raises(ValueError, match=r"No such file for `filepath`"):
        inspect_tflite(str(tmp_path / "missing.tflite"))
    text = tmp_path / "notes.tflite"
    text.write_text("not a model")
    with pytest.raises(ValueError, match=r"TFLite flatbuffer"):
        inspect_tflite(str(text))


@pytest.mark.backends(
    "tensorflow",
    reason="monkeypatches the write, which under jax/torch runs in the "
    "TensorFlow child process",
)
def test_failed_export_leaves_no_temporary_files(
    trained_cnn, tmp_path, monkeypatch
):
    from keras_slim import _safe_write

    seen = []

    def failing_replace(src, dst):
        # Fails once the temporary file is written, as a full disk or a
        # killed rename would.
        seen.extend(os.listdir(tmp_path))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_safe_write.os, "replace", failing_replace)
    with pytest.raises(OSError, match=r"No space left"):
        export_tflite(
            trained_cnn, str(tmp_path / "m.tflite"), quantization="float32"
        )
    assert len(seen) == 1 and seen[0].startswith(".keras_slim-")
    assert os.listdir(tmp_path) == []


@pytest.mark.backends(
    "tensorflow",
    reason="the converter's sparse encoding, two exports",
)
def test_sparse_int8_encoding_that_litert_cannot_run_is_refused(
    trained_cnn, digits, tmp_path
):
    (x, _), _ = digits
    for layer in trained_cnn.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            k = layer.kernel.numpy()
            cut = np.quantile(np.abs(k), 0.8)
            layer.kernel.assign(np.where(np.abs(k) < cut, 0, k))
    path = tmp_path / "sparse.tflite"
    # Measured with TF 2.21 / ai-edge-litert 2.3: DENSIFY feeding
    # FULLY_CONNECTED makes the default XNNPACK delegate fail, so the file
    # would not run on a phone. With TF 2.19 / ai-edge-litert 2.0.2 the
    # delegate takes it: then the file is written, and it runs.
    try:
        export_tflite(
            trained_cnn, str(path), representative_data=x[:100], sparse=True
        )
    except ValueError as error:
        assert re.search(r"default delegate.*sparse=True", str(error))
        assert not path.exists()
    else:
        assert litert.predict(path, x[:8]).shape == (8, 10)
        path.unlink()
    report = export_tflite(trained_cnn, str(path), representative_data=x[:100])
    assert report.int8_only
    assert report.info.gzip_bytes < 0.5 * report.info.bytes


# ------------------------------------------- JAX and PyTorch: the crossing

_CROSSING = pytest.mark.backends(
    "jax",
    "torch",
    reason="only a JAX or PyTorch export crosses to a TensorFlow process",
)


@_CROSSING
def test_subclassed_model_and_generator_cross_to_tensorflow(
    digits_small, tmp_path
):
    # The class lives in conftest, which the TensorFlow child imports; the
    # generator is drawn here, checked, and handed over as arrays.
    (x, _), _ = digits_small
    model = ZOO["subclassed"]()

    def batches():
        for i in range(0, 64, 16):
            yield x[i : i + 16]

    path = str(tmp_path / "m.tflite")
    report = export_tflite(
        model, path, representative_data=batches(), input_shape=(8, 8, 1)
    )
    assert report.int8_only and report.calibration_samples == 64


@_CROSSING
def test_classes_another_process_cannot_import_are_refused(
    tmp_path, existing_file
):
    class Local(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    for layer, match in [
        (Local(), r"class 'Local'.*inside a function.*register_keras_ser"),
        (keras.layers.Lambda(lambda t: t * 2.0), r"Lambda layer 'lambda"),
    ]:
        model = keras.Sequential([keras.Input((4,)), layer])
        with pytest.raises(ValueError, match=match):
            export_tflite(model, str(existing_file), quantization="float32")
        _assert_untouched(existing_file)


def test_parity_check_allows_one_step_on_rounding_ties_only():
    from keras_slim._cross_backend import check_parity

    # Measured under JAX: a quantization-aware model's output, on a grid
    # of step 0.0122, rebuilt under TensorFlow: 1 value of 80 one step off.
    step = 0.0122
    expected = np.round(
        np.random.default_rng(0).normal(size=(8, 10)) / step
    ).astype("float32") * np.float32(step)
    tie = expected.copy()
    tie[0, 5] += step
    check_parity(expected, tie, "jax", quantized=True)
    with pytest.raises(ValueError, match=r"difference 0\.0122"):
        check_parity(expected, tie, "jax")  # a float model: strict
    shifted = expected + step * (np.arange(80).reshape(8, 10) % 2)
    with pytest.raises(ValueError, match=r"40 of 80 values differ"):
        check_parity(expected, shifted, "jax", quantized=True)
    two_steps = tie.copy()
    two_steps[0, 5] += step
    with pytest.raises(ValueError, match=r"difference 0\.0244"):
        check_parity(expected, two_steps, "jax", quantized=True)
    nan = expected.copy()
    nan[1, 1] = np.nan
    with pytest.raises(ValueError, match=r"difference inf"):
        check_parity(expected, nan, "jax")
    check_parity(nan, nan, "jax")


def test_a_per_pixel_output_is_verified_pixel_by_pixel(tmp_path):
    # Class 0 wins at every pixel by a wide margin, but its logit (the
    # pixel, 0.95-1.0) is two int8 steps wide: one top-1 over the whole
    # map, where the largest logit sits, agreed on 6% of the samples and
    # refused this file; pixel by pixel they agree everywhere.
    rng = np.random.default_rng(0)
    x = rng.uniform(0.95, 1.0, (64, 8, 8, 1)).astype("float32")
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Conv2D(3, 1, name="pixels")]
    )
    model.layers[0].set_weights(
        [
            np.array([[[[1.0, 0.0, 0.0]]]], "float32"),
            np.array([0.0, -5.0, 0.0], "float32"),
        ]
    )
    path = str(tmp_path / "pixels.tflite")
    report = export_tflite(model, path, representative_data=x)
    assert report.agreement == {"pixels": 1.0}
    assert report.info.int8_only
    # Per pixel, the share of positions.
    result = litert.compare(model, path, x, per_position=True)
    assert result.agreement == 1.0 and result.positions == 64 * 8 * 8
