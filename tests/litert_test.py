"""keras_slim.litert: predict, evaluate, compare, latency."""

import numpy as np
import pytest

from keras_slim import export_tflite
from keras_slim import litert

pytestmark = pytest.mark.backends(
    "tensorflow", reason="files made by the TFLite converter"
)


@pytest.fixture
def float_file(trained_cnn, tmp_path):
    path = str(tmp_path / "cnn.tflite")
    export_tflite(trained_cnn, path, quantization="float32")
    return path


def test_evaluate_matches_keras_accuracy(trained_cnn, digits, float_file):
    _, (x_test, y_test) = digits
    keras_acc = trained_cnn.evaluate(x_test, y_test, verbose=0)[1]
    assert litert.evaluate(float_file, x_test, y_test) == pytest.approx(
        keras_acc, abs=1e-6
    )
    one_hot = np.eye(10)[y_test]
    assert litert.evaluate(float_file, x_test, one_hot) == pytest.approx(
        keras_acc, abs=1e-6
    )


def test_predict_returns_one_row_per_sample(float_file, digits):
    _, (x_test, _) = digits
    out = litert.predict(float_file, x_test[:7])
    assert out.shape == (7, 10) and out.dtype == np.float32


def test_latency_grows_with_the_work_a_file_does(float_file, tmp_path):
    import keras

    tiny = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    tiny_file = str(tmp_path / "tiny.tflite")
    export_tflite(tiny, tiny_file, quantization="float32")
    cnn = litert.latency(float_file, runs=20, warmup=2)
    small = litert.latency(tiny_file, runs=20, warmup=2)
    assert cnn.runs == 20 and cnn.threads == 1
    # The CNN does ~10^5 times the MACs of a 4x3 Dense layer.
    assert cnn.median_ms > 2 * small.median_ms
    assert str(cnn).startswith(f"median {cnn.median_ms:.3f} ms")


def test_kernels_runs_the_int8_file_on_each_litert_kernel_set(
    trained_cnn, digits, tmp_path
):
    (x, _), (x_test, y_test) = digits
    path = str(tmp_path / "cnn_int8.tflite")
    export_tflite(trained_cnn, path, representative_data=x[:200])
    outputs = {
        kernels: litert.predict(path, x_test, kernels=kernels)
        for kernels in ("xnnpack", "builtin", "reference")
    }
    # The default is XNNPACK, LiteRT's own default.
    np.testing.assert_array_equal(
        litert.predict(path, x_test), outputs["xnnpack"]
    )
    # Each set rounds its own way: the same int8 file gives other outputs
    # (a step apart here and there) but the same decisions, almost always.
    top1 = outputs["xnnpack"].argmax(-1)
    for kernels in ("builtin", "reference"):
        assert np.any(outputs[kernels] != outputs["xnnpack"]), kernels
        assert np.mean(outputs[kernels].argmax(-1) == top1) >= 0.97, kernels
        assert litert.evaluate(
            path, x_test, y_test, kernels=kernels
        ) == pytest.approx(np.mean(outputs[kernels].argmax(-1) == y_test))
        result = litert.compare(trained_cnn, path, x_test, kernels=kernels)
        assert result.agreement >= 0.95, kernels


@pytest.mark.parametrize("call", ["predict", "evaluate", "compare"])
def test_unknown_kernels_are_refused_before_the_file_is_read(
    call, trained_cnn, tmp_path
):
    missing = str(tmp_path / "not_written.tflite")
    x = np.zeros((2, 32, 32, 1), "float32")
    run = {
        "predict": lambda: litert.predict(missing, x, kernels="gpu"),
        "evaluate": lambda: litert.evaluate(
            missing, x, np.zeros(2), kernels="gpu"
        ),
        "compare": lambda: litert.compare(
            trained_cnn, missing, x, kernels="gpu"
        ),
    }[call]
    with pytest.raises(
        ValueError,
        match="`kernels` to be one of 'xnnpack', 'builtin', 'reference'. "
        "Received: kernels='gpu'",
    ):
        run()


def test_compare_refuses_data_of_the_wrong_shape(trained_cnn, float_file):
    with pytest.raises(
        ValueError,
        match=r"of shape \(n, 32, 32, 1\).*"
        r"Received: x of shape \(3, 8, 8, 1\)",
    ):
        litert.compare(trained_cnn, float_file, np.zeros((3, 8, 8, 1)))


def test_evaluate_refuses_mismatched_lengths(float_file, digits):
    _, (x_test, y_test) = digits
    with pytest.raises(ValueError, match=r"len\(x\)=10, len\(y\)=5"):
        litert.evaluate(float_file, x_test[:10], y_test[:5])


def test_running_a_file_that_is_not_tflite_is_refused(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=r"TFLite flatbuffer"):
        litert.predict(str(bad), np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"latency|runs"):
        litert.latency(str(bad), runs=0)


def _pixel_classifier(threshold):
    """Two classes per pixel: class 0 where the pixel is above
    `threshold` (logits `x - threshold` and `threshold - x`)."""
    import keras

    model = keras.Sequential(
        [keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 1)]
    )
    model.set_weights(
        [np.array([[[[1.0, -1.0]]]]), np.array([-threshold, threshold])]
    )
    return model


def test_compare_per_position_counts_every_pixel(tmp_path):
    path = str(tmp_path / "seg.tflite")
    export_tflite(_pixel_classifier(0.0), path, quantization="float32")
    x = np.linspace(-1, 1, 3 * 16).reshape(3, 4, 4, 1).astype("float32")
    # The Keras model moved its threshold: the pixels in (0, 0.5] change.
    moved = _pixel_classifier(0.5)
    expected = np.mean((x > 0) == (x > 0.5))
    result = litert.compare(moved, path, x, per_position=True)
    assert 0.6 < expected < 0.9
    assert result.agreement == pytest.approx(expected)
    assert result.positions == 48 and result.samples == 3
    assert "on 48 positions of 3 samples" in str(result)
    same = litert.compare(_pixel_classifier(0.0), path, x, per_position=True)
    assert same.agreement == 1.0
    # One top-1 over all 32 values of a sample is not a per-pixel figure.
    assert litert.compare(moved, path, x).positions is None


def test_compare_per_position_refuses_outputs_without_a_class_axis(
    trained_cnn, float_file, tmp_path
):
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    path = str(tmp_path / "reg.tflite")
    export_tflite(model, path, quantization="float32")
    with pytest.raises(ValueError, match=r"class axis last.*\(20, 1\)"):
        litert.compare(model, path, np.zeros((20, 4)), per_position=True)
    with pytest.raises(TypeError, match="Expected `per_position` to be a bool"):
        litert.compare(
            trained_cnn, float_file, np.zeros((2, 32, 32, 1)), per_position=1
        )
