"""error_report and select_precision on a real trained model."""

import os

import keras
import numpy as np
import pytest

from keras_slim import _litert_quantizer
from keras_slim import export_tflite
from keras_slim import inspect_tflite
from keras_slim.quantization import error_report
from keras_slim.quantization import select_precision

pytestmark = pytest.mark.backends(
    "tensorflow", reason="reads converter files against a TensorFlow model"
)

needs_quantizer = pytest.mark.skipif(
    not _litert_quantizer.available(),
    reason="the third-party package litert-quantizer is not installed "
    '(pip install "keras-slim[litert]")',
)


@pytest.fixture
def int8_file(trained_cnn, digits, tmp_path):
    (x, _), _ = digits
    path = str(tmp_path / "int8.tflite")
    export_tflite(trained_cnn, path, representative_data=x[:300])
    return path


def test_error_report_matches_each_computed_layer_in_order(
    trained_cnn, digits, int8_file
):
    _, (x_test, _) = digits
    report = error_report(trained_cnn, int8_file, x_test, max_samples=32)
    names = [layer.name for layer in report.layers]
    assert names == ["relu1", "relu2", "relu3", "pool", "relu4", "gap"] + [
        "logits"
    ]
    assert report.samples == 32
    assert {layer.dtype for layer in report.layers} == {"int8"}
    # Convolutions and BatchNormalizations are folded into the ReLU after.
    assert {"conv1", "bn1", "conv4", "bn4"} <= set(report.unmatched)
    for layer in report.layers:
        assert 15 < layer.snr_db < 60, layer
        assert 0.99 < layer.cosine <= 1.0, layer
    # The error grows with depth: the first layer is the cleanest.
    assert report.layers[0].snr_db > report.layers[-1].snr_db
    assert report.worst_layer in names
    assert report.ranked()[0] == report.worst_layer
    text = report.summary()
    assert "<- largest drop" in text and "relu4" in text


def test_float_file_has_no_error_at_any_layer(trained_cnn, digits, tmp_path):
    _, (x_test, _) = digits
    path = str(tmp_path / "float.tflite")
    export_tflite(trained_cnn, path, quantization="float32")
    report = error_report(trained_cnn, path, x_test[:16])
    assert report.layers and all(
        layer.snr_db > 60 and layer.dtype == "float32"
        for layer in report.layers
    )


def _qat_report(model, digits, tmp_path, n, epochs):
    """Train `model` quantization-aware on `n` digits, export it and
    return `(error_report on 32 test digits, the file's path)`."""
    from keras_slim.quantization import QuantizationAwareTraining

    (x, y), (x_test, _) = digits
    model.fit(
        x[:n],
        y[:n],
        batch_size=64,
        epochs=epochs,
        verbose=0,
        callbacks=[QuantizationAwareTraining()],
    )
    path = str(tmp_path / "qat.tflite")
    export_tflite(model, path)
    return error_report(model, path, x_test, max_samples=32), path


def test_report_of_a_qat_model_compares_with_its_quantized_layers(
    trained_cnn, digits, tmp_path
):
    # A model made quantization-aware in place computes its layers with
    # fake-quantized inputs, kernels and outputs; the report compares the
    # file with those, as `litert.compare` compares the outputs. A new
    # Functional model over its layers would compute them float: the
    # report then showed 25-37 dB at every layer (34-59 dB now, mean 41)
    # on a file that agrees with the model on >= 99% of the digits.
    from keras_slim import litert

    report, path = _qat_report(trained_cnn, digits, tmp_path, 256, epochs=1)
    _, (x_test, _) = digits
    assert litert.compare(trained_cnn, path, x_test).agreement >= 0.99
    names = [layer.name for layer in report.layers]
    assert names[0] == "relu1" and names[-1] == "logits"
    snrs = [layer.snr_db for layer in report.layers]
    assert min(snrs) > 30 and np.mean(snrs) > 38, report.summary()


def test_report_of_a_qat_model_reads_concatenated_branches(digits, tmp_path):
    # An Inception-style concatenation: the converter gives its inputs the
    # concatenation's range, so the branches' own ranges never see data.
    # The recorded outputs are those the pass used (never quantized
    # afterwards with a range that saw no data); every layer the file
    # names stays within a step or so of the QAT model.
    (x, _), _ = digits
    keras.utils.set_random_seed(0)
    inputs = keras.Input(x.shape[1:])
    a = keras.layers.Conv2D(8, 3, activation="relu", name="branch_a")(inputs)
    b = keras.layers.Conv2D(8, 3, activation="relu", name="branch_b")(inputs)
    h = keras.layers.Concatenate(name="concat")([a, b])
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))
    model.compile(
        "adam",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    report, _ = _qat_report(model, digits, tmp_path, 512, epochs=2)
    assert {"concat", "logits"} <= {layer.name for layer in report.layers}
    for layer in report.layers:
        assert layer.snr_db > 35, report.summary()


def test_int16_file_has_higher_snr_than_int8(
    trained_cnn, digits, int8_file, tmp_path
):
    (x, _), (x_test, _) = digits
    path = str(tmp_path / "a16.tflite")
    export_tflite(
        trained_cnn, path, quantization="int16x8", representative_data=x[:300]
    )
    a8 = error_report(trained_cnn, int8_file, x_test, max_samples=32)
    a16 = error_report(trained_cnn, path, x_test, max_samples=32)
    assert a16.layers[0].dtype == "int16"
    gains = [b.snr_db - a.snr_db for a, b in zip(a8.layers, a16.layers)]
    # int8 weights bound both; int16 activations still gain at every layer.
    assert min(gains) > 0 and np.mean(gains) > 1, gains


def test_error_report_plots_snr_and_marks_the_jump(
    trained_cnn, digits, int8_file
):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    _, (x_test, _) = digits
    report = error_report(trained_cnn, int8_file, x_test[:16])
    ax = report.plot()
    assert len(ax.lines[0].get_xdata()) == len(report.layers)
    assert ax.get_ylabel() == "SNR vs Keras (dB)"
    lines = []
    report.print_summary(print_fn=lines.append)
    assert lines == [report.summary()]


def test_error_report_refuses_subclassed_models_and_foreign_files(
    digits, int8_file, tmp_path
):
    _, (x_test, _) = digits

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.flat = keras.layers.Flatten()
            self.out = keras.layers.Dense(10)

        def call(self, x):
            return self.out(self.flat(x))

    net = Net()
    net(x_test[:1])
    with pytest.raises(ValueError, match="Sequential or Functional"):
        error_report(net, int8_file, x_test)
    other = keras.Sequential(
        [keras.Input((32, 32, 1)), keras.layers.Flatten(name="f")]
    )
    with pytest.raises(ValueError, match="No layer of `model`"):
        error_report(other, int8_file, x_test)
    with pytest.raises(ValueError, match="max_samples"):
        error_report(other, int8_file, x_test, max_samples=0)


@needs_quantizer
def test_select_precision_keeps_fewest_layers_to_reach_the_target(
    trained_cnn, digits, tmp_path
):
    (x, _), (x_test, _) = digits
    path = str(tmp_path / "selected.tflite")
    result = select_precision(
        trained_cnn,
        path,
        x[:200],
        min_agreement=0.99,
        validation_data=x_test[:200],
    )
    assert os.path.exists(path)
    info = inspect_tflite(path)
    assert result.agreement >= result.int8_agreement - 0.01
    if result.int8_agreement >= 0.99:
        assert result.layers == [] and info.int8_only
    else:
        assert result.layers, result.tried
        assert info.integer_only and not info.int8_only
    assert result.reached == (result.agreement >= 0.99)
    assert 0 < result.int8_op_fraction <= 1
    assert result.bytes >= result.int8_bytes * 0.95
    assert "int8 ops:" in result.summary()
    assert result.tried[0][0] == 0


def test_select_precision_checks_its_arguments(trained_cnn, tmp_path):
    x = np.zeros((4, 32, 32, 1), "float32")
    path = str(tmp_path / "never.tflite")
    with pytest.raises(ValueError, match="min_agreement"):
        select_precision(trained_cnn, path, x, min_agreement=0)
    with pytest.raises(ValueError, match="Expected `precision`"):
        select_precision(trained_cnn, path, x, precision="int4")
    with pytest.raises(ValueError, match="max_layers"):
        select_precision(trained_cnn, path, x, max_layers=0)
    assert not os.path.exists(path)
