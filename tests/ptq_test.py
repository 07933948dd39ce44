"""Post-training quantization routes: the converter and the LiteRT
Quantizer, int8 and int16x8, per-layer precision."""

import os
import sys

import numpy as np
import pytest
from conftest import accuracy

from keras_slim import _tensor_names
from keras_slim import export_tflite
from keras_slim import inspect_tflite
from keras_slim import litert

pytestmark = pytest.mark.backends(
    "tensorflow", reason="post-training quantization is the TFLite converter's"
)

needs_quantizer = pytest.mark.skipif(
    not __import__("keras_slim")._litert_quantizer.available(),
    reason="the third-party package litert-quantizer is not installed "
    '(pip install "keras-slim[litert]")',
)


@needs_quantizer
def test_litert_quantizer_int8_file_is_int8_only_and_as_accurate(
    trained_cnn, digits, tmp_path
):
    (x, _), (x_test, y_test) = digits
    path = str(tmp_path / "lq.tflite")
    report = export_tflite(
        trained_cnn, path, representative_data=x[:300], quantizer="litert"
    )
    info = inspect_tflite(path)
    assert report.quantizer == "litert" and report.ranges == "calibrated"
    assert info.int8_only and info.integer_only, info.float_ops
    assert info.inputs[0]["dtype"] == "float32"
    assert [t["name"] for t in info.outputs] == ["logits"]
    assert info.io_structure["outputs"] == ["logits"]
    assert info.ops["CONV_2D"] == 3 and info.ops["FULLY_CONNECTED"] == 1
    assert (
        info.bytes
        < 0.4
        * inspect_tflite(
            export_tflite(
                trained_cnn, str(tmp_path / "f.tflite"), quantization="float32"
            ).filepath
        ).bytes
    )
    keras_acc = accuracy(trained_cnn.predict(x_test, verbose=0), y_test)
    assert abs(litert.evaluate(path, x_test, y_test) - keras_acc) <= 0.015
    assert litert.compare(trained_cnn, path, x_test).agreement >= 0.97


@needs_quantizer
def test_litert_quantizer_int8_io_file_takes_int8_inputs(
    trained_cnn, digits, tmp_path
):
    (x, _), (x_test, _) = digits
    path = str(tmp_path / "io.tflite")
    report = export_tflite(
        trained_cnn,
        path,
        representative_data=x[:200],
        quantizer="litert",
        io_dtype="int8",
    )
    assert report.info.inputs[0]["dtype"] == "int8"
    assert report.info.outputs[0]["dtype"] == "int8"
    assert "QUANTIZE" not in report.info.ops
    assert litert.compare(trained_cnn, path, x_test).agreement >= 0.97


@pytest.mark.parametrize(
    "quantizer",
    ["converter", pytest.param("litert", marks=needs_quantizer)],
)
def test_int16x8_file_is_integer_only_but_not_int8_only(
    quantizer, trained_cnn, digits, tmp_path
):
    (x, _), (x_test, _) = digits
    path = str(tmp_path / "a16.tflite")
    report = export_tflite(
        trained_cnn,
        path,
        quantization="int16x8",
        representative_data=x[:200],
        quantizer=quantizer,
    )
    info = inspect_tflite(path)
    assert info.integer_only and not info.int8_only, info.float_ops
    assert report.integer_only and not report.int8_only
    assert info.activation_dtypes.get("int16", 0) >= 6
    assert "int8" not in info.activation_dtypes
    assert "integer_only: True (int16 activations)" in info.summary()
    assert litert.compare(trained_cnn, path, x_test).agreement >= 0.97


@needs_quantizer
def test_layer_precision_keeps_named_layers_in_int16_or_float(
    trained_cnn, digits, tmp_path
):
    (x, _), (x_test, _) = digits
    path = str(tmp_path / "mixed16.tflite")
    export_tflite(
        trained_cnn,
        path,
        representative_data=x[:200],
        quantizer="litert",
        layer_precision={"relu4": "int16x8"},
    )
    info = inspect_tflite(path)
    assert info.integer_only and not info.int8_only
    assert info.activation_dtypes["int16"] >= 1
    assert info.activation_dtypes["int8"] >= 5

    path = str(tmp_path / "mixed_float.tflite")
    report = export_tflite(
        trained_cnn,
        path,
        representative_data=x[:200],
        quantizer="litert",
        layer_precision={"relu4": "float32"},
    )
    assert not report.integer_only
    float_layers = {
        _tensor_names.producer(name, {"relu4", "bn4", "conv4"})
        for name in report.info.float_op_tensors.values()
    }
    assert "relu4" in float_layers
    assert report.layer_precision == {"relu4": "float32"}
    assert litert.compare(trained_cnn, path, x_test).agreement >= 0.97


def test_quantizer_and_layer_precision_are_checked_before_any_work(
    trained_cnn, digits, tmp_path
):
    (x, _), _ = digits
    path = str(tmp_path / "never.tflite")
    with pytest.raises(ValueError, match="Expected `quantizer` to be one of"):
        export_tflite(trained_cnn, path, representative_data=x, quantizer="x")
    with pytest.raises(ValueError, match="`layer_precision` needs"):
        export_tflite(
            trained_cnn,
            path,
            representative_data=x,
            layer_precision={"relu4": "float32"},
        )
    with pytest.raises(ValueError, match="quantizes to 'int8' or 'int16x8'"):
        export_tflite(
            trained_cnn, path, quantization="float16", quantizer="litert"
        )
    with pytest.raises(ValueError, match="needs `representative_data`"):
        export_tflite(trained_cnn, path, quantization="int16x8")
    with pytest.raises(ValueError, match="needs `quantization='int8'`"):
        export_tflite(
            trained_cnn,
            path,
            quantization="int16x8",
            representative_data=x,
            io_dtype="int8",
        )
    assert not os.path.exists(path)


@needs_quantizer
def test_layer_precision_refuses_unknown_layers_and_precisions(
    trained_cnn, digits, tmp_path
):
    (x, _), _ = digits
    path = str(tmp_path / "never.tflite")
    for bad, match in (
        ({"nope": "int16x8"}, "Received: 'nope', not a layer"),
        ({"relu4": "int4"}, r"Expected `layer_precision\['relu4'\]`"),
        (["relu4"], "Expected `layer_precision` to be a dict"),
    ):
        with pytest.raises((ValueError, TypeError), match=match):
            export_tflite(
                trained_cnn,
                path,
                representative_data=x,
                quantizer="litert",
                layer_precision=bad,
            )
    with pytest.raises(ValueError, match="does not support `io_dtype='uint8'"):
        export_tflite(
            trained_cnn,
            path,
            representative_data=x,
            quantizer="litert",
            io_dtype="uint8",
        )
    assert not os.path.exists(path)


def test_missing_quantizer_package_is_named_and_nothing_is_written(
    trained_cnn, digits, tmp_path, monkeypatch
):
    (x, _), _ = digits
    monkeypatch.setitem(sys.modules, "litert_quantizer", None)
    path = str(tmp_path / "never.tflite")
    with pytest.raises(ImportError, match="`litert-quantizer` package"):
        export_tflite(
            trained_cnn, path, representative_data=x, quantizer="litert"
        )
    assert not os.path.exists(path)


def test_float_ops_are_refused_with_the_keras_layer_they_came_from(
    digits, tmp_path
):
    import keras

    class Negate(keras.layers.Layer):
        # TFLite's NEG is float-only in the converter (tfl_ops.td).
        def call(self, x):
            return keras.ops.negative(x)

    inputs = keras.Input((8,))
    h = keras.layers.Dense(8, name="hidden")(inputs)
    out = Negate(name="negate")(h)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(out))
    data = np.random.default_rng(0).random((64, 8), "float32")
    path = str(tmp_path / "never.tflite")
    with pytest.raises(ValueError, match="kept float ops") as refused:
        export_tflite(model, path, representative_data=data)
    assert "(layer 'negate')" in str(refused.value)
    assert not os.path.exists(path)


def test_int16x8_op_litert_cannot_run_is_refused_naming_op_and_layer(
    tmp_path,
):
    """A file that loads but that LiteRT cannot run (here an int16
    SQUARED_DIFFERENCE: LiteRT's kernel takes float32 and int32 only) is
    refused as a ValueError naming the op and its Keras layer, not a raw
    RuntimeError; nothing is written, an existing file is left as it was,
    and the remedy the message gives works."""
    import keras

    class SquaredDeviation(keras.layers.Layer):
        def call(self, x):
            mean = keras.ops.mean(x, axis=-1, keepdims=True)
            return keras.ops.square(x - mean)

    inputs = keras.Input((8,))
    h = keras.layers.Dense(8, name="hidden")(inputs)
    h = SquaredDeviation(name="deviation")(h)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(h))
    data = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    path = tmp_path / "kept.tflite"
    path.write_bytes(b"the user's file")
    with pytest.raises(ValueError, match="LiteRT cannot run") as refused:
        export_tflite(
            model, str(path), quantization="int16x8", representative_data=data
        )
    message = str(refused.value)
    assert "SQUARED_DIFFERENCE" in message
    assert "from layer 'deviation'" in message
    assert "Nothing was written" in message
    assert path.read_bytes() == b"the user's file"
    # The first remedy the message names.
    report = export_tflite(model, str(path), representative_data=data)
    assert report.info.int8_only
    assert report.info.ops["SQUARED_DIFFERENCE"] == 1


def test_tensor_names_give_the_layer_that_produced_them():
    names = {"relu4", "bn4", "conv4", "dense_1", "dense", "logits"}
    fused = (
        "m_export_1/m_1/relu4_1/Relu;m_export_1/m_1/bn4_1/batchnorm/add_1;"
        "m_export_1/m_1/conv4_1/convolution"
    )
    assert _tensor_names.producer(fused, names) == "relu4"
    assert _tensor_names.layers_in(fused, names) == ["relu4", "bn4", "conv4"]
    assert _tensor_names.producer("m_1/dense_1_1/MatMul", names) == "dense_1"
    assert _tensor_names.producer("m_1/dense_1/MatMul", names) == "dense"
    assert _tensor_names.producer("logits", names) == "logits"
    assert _tensor_names.producer("image_quantized", names) is None


def _recurrent(kind):
    import keras

    if kind == "Bidirectional":
        return [keras.layers.Bidirectional(keras.layers.LSTM(16), name="rnn")]
    if kind == "LSTM_sequences":
        return [
            keras.layers.LSTM(16, return_sequences=True, name="rnn"),
            keras.layers.GlobalAveragePooling1D(),
        ]
    if kind == "GRU_dropout":  # Keras draws its masks at inference too
        return [
            keras.layers.GRU(16, dropout=0.1, recurrent_dropout=0.1, name="rnn")
        ]
    return [getattr(keras.layers, kind)(16, name="rnn")]


@pytest.mark.parametrize(
    "kind",
    [
        "LSTM",
        "GRU",
        "SimpleRNN",
        "Bidirectional",
        "LSTM_sequences",
        "GRU_dropout",
    ],
)
def test_recurrent_models_export_int8_in_parity(kind, tmp_path):
    # Each 8x8 digit read row by row: 8 steps of 8 pixels. Keras 3's
    # recurrent layers trace as a WHILE loop whose calibration segfaults
    # inside the converter; the export unrolls them (and computes LSTM
    # and GRU gates one matmul each), and leaves the user's layers as
    # they were.
    import keras

    from keras_slim import datasets
    from keras_slim import litert

    (x, y), (xt, yt) = datasets.load_digits(image_size=8)
    x, xt = x[..., 0], xt[..., 0]
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8, 8)), *_recurrent(kind), keras.layers.Dense(10)]
    )
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=10, batch_size=64, verbose=0)
    accuracy = model.evaluate(xt, yt, verbose=0)[1]
    assert accuracy >= 0.75  # it learned (chance: 0.1)
    path = str(tmp_path / "rnn.tflite")
    report = export_tflite(model, path, representative_data=x[:300])
    assert report.info.int8_only, report.info.float_ops
    ops = report.info.ops
    assert "WHILE" not in ops and ops["FULLY_CONNECTED"] >= 8
    comparison = litert.compare(model, path, xt)
    assert comparison.agreement >= 0.98
    file_accuracy = np.mean(np.argmax(litert.predict(path, xt), axis=-1) == yt)
    assert abs(file_accuracy - accuracy) <= 0.02
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.RNN):
            assert layer.unroll is False
            if hasattr(layer.cell, "implementation"):
                implementation = 1 if kind == "GRU_dropout" else 2
                assert layer.cell.implementation == implementation
            if kind == "GRU_dropout":  # set back after the export
                assert layer.cell.dropout == layer.cell.recurrent_dropout == 0.1
    if kind == "GRU_dropout":  # a float file has no dropout state either
        path = str(tmp_path / "rnn_float.tflite")
        report = export_tflite(model, path, quantization="float32")
        assert not {"VAR_HANDLE", "ASSIGN_VARIABLE"} & set(report.info.ops)


def test_stateful_recurrent_layer_is_refused_before_conversion(tmp_path):
    import keras

    model = keras.Sequential(
        [
            keras.Input((10, 4), batch_size=1),
            keras.layers.LSTM(8, stateful=True, name="rnn"),
            keras.layers.Dense(3, name="head"),
        ]
    )
    data = np.random.default_rng(0).random((16, 10, 4), "float32")
    path = str(tmp_path / "never.tflite")
    with pytest.raises(ValueError, match="stateful recurrent layer 'rnn'"):
        export_tflite(model, path, representative_data=data)
    assert not os.path.exists(path)


def test_relabel_keeps_constant_buffers_stored_after_the_flatbuffer(
    tmp_path,
):
    # The LiteRT Quantizer stores large constants after the flatbuffer
    # (`offset`/`size`); repacking must bring them back in.
    import flatbuffers
    import keras

    from keras_slim import _tflite_file

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    path = str(tmp_path / "f.tflite")
    export_tflite(model, path, quantization="float32")
    with open(path, "rb") as f:
        data = f.read()
    flat = _tflite_file.parse(data, path)
    [moved] = [  # the Dense kernel's buffer
        t.buffer for t in flat.subgraphs[0].tensors if list(t.shape) == [3, 4]
    ]
    payload = bytes(np.asarray(flat.buffers[moved].data, np.uint8))
    flat.buffers[moved].data = None
    flat.buffers[moved].size = len(payload)

    def pack(offset):
        flat.buffers[moved].offset = offset
        builder = flatbuffers.Builder(len(data) + 4096)
        builder.Finish(flat.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())

    head = pack(2**40)  # same field width as the real offset
    external = pack(len(head)) + payload
    assert len(pack(len(head))) == len(head)
    io = inspect_tflite(path).io_structure
    names = io["inputs"], io["outputs"]
    relabeled = _tflite_file.relabel(external, *names, *names, io)
    x = np.random.default_rng(0).random((5, 4), "float32")
    out = litert_file_run(relabeled, x)
    np.testing.assert_allclose(out, model.predict(x, verbose=0), atol=1e-5)


def litert_file_run(data, x):
    from keras_slim import _litert_file

    file = _litert_file.File(content=data)
    return file.run([x])[0]
