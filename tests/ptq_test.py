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

    inputs = keras.Input((8,))
    h = keras.layers.Dense(8, name="hidden")(inputs)
    out = keras.layers.LayerNormalization(name="norm")(h)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(out))
    data = np.random.default_rng(0).random((64, 8), "float32")
    path = str(tmp_path / "never.tflite")
    try:
        export_tflite(model, path, representative_data=data)
    except ValueError as e:
        message = str(e)
    else:
        pytest.skip("this converter quantizes LayerNormalization fully")
    assert "kept float ops" in message
    assert "(layer 'norm')" in message
    assert not os.path.exists(path)


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


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "SimpleRNN"])
def test_recurrent_layers_are_refused_before_the_calibrator_crashes(
    kind, tmp_path
):
    import keras

    model = keras.Sequential(
        [
            keras.Input((10, 4)),
            getattr(keras.layers, kind)(8, name="rnn"),
            keras.layers.Dense(3, name="head"),
        ]
    )
    data = np.random.default_rng(0).random((16, 10, 4), "float32")
    path = str(tmp_path / "never.tflite")
    with pytest.raises(ValueError, match=f"recurrent layer 'rnn' \\({kind}\\)"):
        export_tflite(model, path, representative_data=data)
    assert not os.path.exists(path)
    report = export_tflite(model, path, quantization="dynamic")
    assert report.agreement["head"] >= 0.9


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


# ------------------------------------------- range equalisation (issue 22)


def _mobile_block_model():
    """A small MobileNetV2-style model: Conv-BN-ReLU6, an inverted
    residual block (expand, depthwise, linear projection, Add), GAP,
    Dense."""
    import keras

    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(16, 3, strides=2, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    h = keras.layers.Conv2D(48, 1, use_bias=False)(x)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU(6.0, name="expand_relu")(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(h)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU(6.0, name="depthwise_relu")(h)
    h = keras.layers.Conv2D(16, 1, use_bias=False)(h)
    h = keras.layers.BatchNormalization()(h)
    x = keras.layers.Add()([x, h])
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def trained_block_weights(digits):
    import keras
    from conftest import compile_classifier

    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    model = compile_classifier(_mobile_block_model())
    model.fit(x, y, batch_size=64, epochs=6, verbose=0)
    return model.get_weights()


@pytest.fixture
def trained_block(trained_block_weights):
    model = _mobile_block_model()
    model.set_weights(trained_block_weights)
    return model


def test_equalized_model_gives_the_same_float_outputs_and_evener_ranges(
    trained_block, digits
):
    import keras

    from keras_slim.quantization._equalize import equalize_ranges

    (x, _), (x_test, _) = digits
    before = trained_block.get_weights()
    report = equalize_ranges(trained_block, x[:300])
    assert [relu for _, relu, _ in report.chains] == [
        "expand_relu",
        "depthwise_relu",
    ]
    # The stem's ReLU also feeds the residual Add: not rescaled.
    assert "stem_relu" in report.skipped
    # The input model is untouched; the new one computes the same.
    for a, b in zip(before, trained_block.get_weights()):
        np.testing.assert_array_equal(a, b)
    expected = trained_block.predict(x_test, verbose=0)
    np.testing.assert_allclose(
        report.model.predict(x_test, verbose=0), expected, atol=1e-4
    )

    def spread(model, name):
        out = keras.Model(model.inputs, model.get_layer(name).output)
        m = out.predict(x[:300], verbose=0).max(axis=(0, 1, 2))
        m = m[m > 0]
        return float(m.min() / m.max())

    for name in ("expand_relu", "depthwise_relu"):
        s = report.scales[name]
        assert s.min() > 0 and s.max() <= 1.0
        assert spread(report.model, name) > spread(trained_block, name)


def test_equalized_model_int8_file_agrees_at_least_as_often(
    trained_block, digits, tmp_path
):
    from keras_slim.quantization._equalize import equalize_ranges

    (x, _), (x_test, _) = digits
    plain = export_tflite(
        trained_block, str(tmp_path / "plain.tflite"), representative_data=x
    )
    equalized = equalize_ranges(trained_block, x[:300]).model
    report = export_tflite(
        equalized, str(tmp_path / "eq.tflite"), representative_data=x[:300]
    )
    assert report.int8_only
    # Compared with the original model, not the rescaled one.
    base = litert.compare(trained_block, plain.filepath, x_test).agreement
    eq = litert.compare(trained_block, report.filepath, x_test).agreement
    assert eq >= base and eq >= 0.97, (eq, base)


def test_equalize_ranges_refuses_subclassed_models_and_bad_data(digits):
    from conftest import subclassed_model

    from keras_slim.quantization._equalize import equalize_ranges

    model = subclassed_model()
    model(np.zeros((1, 8, 8, 1), "float32"))
    with pytest.raises(ValueError, match="Functional or Sequential"):
        equalize_ranges(model, np.zeros((4, 8, 8, 1), "float32"))
    functional = _mobile_block_model()
    with pytest.raises(ValueError, match=r"representative_data.*shape"):
        equalize_ranges(functional, np.zeros((4, 8, 8, 1), "float32"))
    with pytest.raises(TypeError):
        equalize_ranges("model", np.zeros((4, 8, 8, 1), "float32"))


def test_linear_batch_norm_to_conv_chain_is_equalized_exactly():
    import keras

    from keras_slim.quantization._equalize import equalize_ranges

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.BatchNormalization(name="bn")(inputs)
    outputs = keras.layers.Conv2D(4, 1, name="conv")(x)
    model = keras.Model(inputs, outputs)
    bn = model.get_layer("bn")
    bn.gamma.assign(np.array([1.0, 0.05, -0.5], "float32"))
    bn.beta.assign(np.array([0.1, 0.0, 0.2], "float32"))
    data = np.random.default_rng(0).random((32, 8, 8, 3), "float32")
    report = equalize_ranges(model, data)
    assert report.chains == [("bn", None, "conv")]
    s = report.scales["bn"]
    # The widest channel keeps its scale; the narrow ones are enlarged.
    assert s[0] == 1.0 and s[1] < s[2] < 1.0
    np.testing.assert_allclose(
        report.model.predict(data, verbose=0),
        model.predict(data, verbose=0),
        atol=1e-5,
    )
