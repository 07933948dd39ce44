"""keras_slim.litert: predict, evaluate, compare, latency."""

import numpy as np
import pytest

from keras_slim import export_tflite
from keras_slim import litert


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
