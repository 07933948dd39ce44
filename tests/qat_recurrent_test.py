"""Quantization-aware training of LSTM, GRU and SimpleRNN models: trained
on the digits read row by row (8 steps of 8 pixels), exported int8 end to
end (the layers unrolled), in parity with Keras; on every backend. Also
magnitude pruning of their kernels, whose zeros reach the int8 file."""

import keras
import numpy as np
import pytest

import keras_slim
from keras_slim import datasets
from keras_slim import litert
from keras_slim import schedules
from keras_slim.pruning import MagnitudePruning
from keras_slim.pruning import sparsity_report
from keras_slim.quantization import QuantizationAwareTraining
from keras_slim.quantization import _quantizers
from keras_slim.quantization import _recurrent
from keras_slim.quantization import is_quantization_aware
from keras_slim.quantization import quantize_model

L = keras.layers


@pytest.fixture(scope="module")
def rows():
    (x, y), (xt, yt) = datasets.load_digits(image_size=8)
    return (x[..., 0], y), (xt[..., 0], yt)


def _recurrent_body(kind):
    if kind == "Bidirectional":
        return [L.Bidirectional(L.LSTM(16), name="rnn")]
    if kind == "LSTM_dropout":  # while training, one mask a gate
        return [L.LSTM(16, dropout=0.1, recurrent_dropout=0.1, name="rnn")]
    if kind == "LSTM_sequences":
        return [
            L.LSTM(16, return_sequences=True, name="rnn"),
            L.GlobalAveragePooling1D(),
        ]
    return [getattr(L, kind)(16, name="rnn")]


_WEIGHTS = {}  # kind -> trained float weights, shared by the tests


def _trained(kind, rows):
    (x, y), _ = rows
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [L.Input((8, 8)), *_recurrent_body(kind), L.Dense(10, name="head")]
    )
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    if kind in _WEIGHTS:
        model.set_weights(_WEIGHTS[kind])
    else:
        model.fit(x, y, epochs=10, batch_size=64, verbose=0)
        _WEIGHTS[kind] = model.get_weights()
    return model


def _recompile(model):
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def _fit_aware(model, x, y, epochs):
    """Fine-tune `model` quantization-aware with the callback."""
    _recompile(model)
    model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=64,
        verbose=0,
        callbacks=[QuantizationAwareTraining()],
    )


# JAX compiles the unrolled steps for 20-30 s a function and every
# backend but TensorFlow exports through a TensorFlow child process: the
# other backends run the LSTM here, and the Bidirectional twin and the
# masked LSTM below (the cells' math is checked on every backend by
# `test_unrolled_computation_is_keras_own`).
_TF_ONLY = pytest.mark.backends("tensorflow", reason="time; see above")


@pytest.mark.parametrize(
    "kind",
    [
        "LSTM",
        pytest.param("GRU", marks=_TF_ONLY),
        pytest.param("SimpleRNN", marks=_TF_ONLY),
        pytest.param("LSTM_sequences", marks=pytest.mark.slow),
        pytest.param("Bidirectional", marks=_TF_ONLY),
        pytest.param("LSTM_dropout", marks=_TF_ONLY),
    ],
)
def test_recurrent_model_trains_quantization_aware_and_exports_int8(
    kind, rows, tmp_path
):
    (x, y), (xt, yt) = rows
    model = _trained(kind, rows)
    float_accuracy = model.evaluate(xt, yt, verbose=0)[1]
    assert float_accuracy >= 0.75  # it learned (chance: 0.1)
    _fit_aware(model, x, y, epochs=2)
    assert is_quantization_aware(model)  # ranges learned on this backend
    accuracy = model.evaluate(xt, yt, verbose=0)[1]
    assert accuracy >= float_accuracy - 0.03
    path = str(tmp_path / "rnn.tflite")
    # No representative data: the file's ranges are the learned ones.
    report = keras_slim.export_tflite(model, path)
    assert report.info.int8_only, report.info.float_ops
    ops = report.info.ops
    assert "WHILE" not in ops and ops["FULLY_CONNECTED"] >= 16
    assert litert.compare(model, path, xt).agreement >= 0.99
    logits = litert.predict(path, xt)
    # Step for step: the simulation computes what the file does, but for
    # rounding ties (with the gate kernels quantized per tensor, which the
    # converter re-rounds per channel, 35-60% of the logits were off).
    off = np.abs(logits - model.predict(xt, verbose=0)) > 1e-4
    assert np.mean(off) < 0.05, np.mean(off)
    file_accuracy = np.mean(np.argmax(logits, axis=-1) == yt)
    assert abs(file_accuracy - accuracy) <= 0.02


@pytest.mark.parametrize(
    "kind", [pytest.param("LSTM", marks=pytest.mark.slow), "Bidirectional"]
)
def test_quantize_model_twin_saves_reloads_and_exports(kind, rows, tmp_path):
    (x, y), (xt, yt) = rows
    qmodel = quantize_model(_trained(kind, rows))
    assert type(qmodel.get_layer("rnn")).__name__ == f"Quantized{kind}"
    _recompile(qmodel)
    qmodel.fit(x, y, epochs=2, batch_size=64, verbose=0)
    qmodel.save(tmp_path / "twin.keras")
    reloaded = keras.models.load_model(tmp_path / "twin.keras")
    np.testing.assert_allclose(
        reloaded.predict(xt, verbose=0),
        qmodel.predict(xt, verbose=0),
        atol=1e-5,
    )
    path = str(tmp_path / "twin.tflite")
    report = keras_slim.export_tflite(reloaded, path)
    assert report.info.int8_only, report.info.float_ops
    assert litert.compare(reloaded, path, xt).agreement >= 0.98


def _token_sequences(n, seed):
    # Padded with 0 after a random length; label: more 1s than 2s.
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 10, size=(n, 12))
    for i, length in enumerate(rng.integers(4, 13, size=n)):
        x[i, length:] = 0
    y = ((x == 1).sum(1) > (x == 2).sum(1)).astype("int32")
    return x.astype("int32"), y


def test_masked_lstm_after_an_embedding_exports_int8(tmp_path):
    # `Embedding(mask_zero=True)`: masked steps keep the previous state
    # (SELECT_V2 in the file), as Keras's RNN does.
    (x, y), (xt, yt) = _token_sequences(1024, 0), _token_sequences(256, 1)
    keras.utils.set_random_seed(0)
    # Functional: its graph passes the mask to the LSTM as an argument.
    tokens = L.Input((12,), dtype="int32")
    embedded = L.Embedding(10, 8, mask_zero=True)(tokens)
    model = keras.Model(tokens, L.Dense(2)(L.LSTM(16, name="rnn")(embedded)))
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=6, batch_size=64, verbose=0)
    _fit_aware(model, x, y, epochs=1)
    assert model.evaluate(xt, yt, verbose=0)[1] >= 0.85
    path = str(tmp_path / "masked.tflite")
    report = keras_slim.export_tflite(model, path)
    assert report.info.int8_only, report.info.float_ops
    assert "SELECT_V2" in report.info.ops
    assert litert.compare(model, path, xt).agreement >= 0.98


_VARIANTS = [
    ("LSTM", {}),
    ("LSTM", {"return_sequences": True}),
    ("LSTM", {"go_backwards": True, "return_sequences": True}),
    ("LSTM", {"return_sequences": True, "zero_output_for_mask": True}),
    ("GRU", {"go_backwards": True}),
    ("GRU", {"return_sequences": True, "use_bias": False}),
    ("SimpleRNN", {"activation": "relu", "return_sequences": True}),
    ("SimpleRNN", {}),
    ("Bidirectional", {}),
    ("Bidirectional", {"return_sequences": True}),
    # Dropout while training: one mask a sequence (LSTM's default
    # implementation), one a gate (recurrent_dropout: implementation 1).
    ("LSTM", {"dropout": 0.3}),
    ("LSTM", {"dropout": 0.2, "recurrent_dropout": 0.3}),
    ("GRU", {"dropout": 0.2, "recurrent_dropout": 0.3}),
    ("SimpleRNN", {"dropout": 0.2, "recurrent_dropout": 0.3}),
    ("SimpleRNN", {"dropout": 1.0}),  # its cell drops all (LSTM's: none)
    ("Bidirectional", {"dropout": 0.2, "recurrent_dropout": 0.3}),
]


def _seed_generators(layer):
    subs = [layer]
    if isinstance(layer, L.Bidirectional):
        subs = [layer.forward_layer, layer.backward_layer]
    return [sub.cell.seed_generator for sub in subs]


@pytest.mark.parametrize("kind, kwargs", _VARIANTS)
@pytest.mark.parametrize("masked", [False, True])
def test_unrolled_computation_is_keras_own(kind, kwargs, masked, monkeypatch):
    # With the fake quantization taken out, the int8 simulation's unrolled
    # computation equals the Keras layer's on the same weights, masked or
    # not (a wrong gate order, bias row or mask rule fails this); with
    # dropout, while training, on Keras's own masks (the cells' seed
    # generators and the global seed set back between the two calls draw
    # the same ones).
    monkeypatch.setattr(_quantizers, "quantize_kernel", lambda k, rule: k)
    monkeypatch.setattr(_quantizers, "fake_quant_fixed", lambda t, r: t)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6, 5)).astype("float32")
    mask = None
    if masked:
        mask = np.ones((4, 6), bool)
        mask[0, 4:] = False
        mask[1, :2] = False
    keras.utils.set_random_seed(1)
    if kind == "Bidirectional":
        layer = L.Bidirectional(L.GRU(7, **kwargs))
    else:
        layer = getattr(L, kind)(7, **kwargs)
    training = "dropout" in kwargs
    layer.build(x.shape)
    seeds = [
        keras.ops.convert_to_numpy(g.state) for g in _seed_generators(layer)
    ]
    keras.utils.set_random_seed(2)  # torch draws unseeded masks globally
    try:
        expected = layer(x, mask=mask, training=training)
    except ValueError as error:  # Keras 3.12 on TensorFlow: a rate < 1 only
        if "`rate` must be" not in str(error):
            raise
        pytest.skip("this Keras refuses a dropout rate of 1 itself")
    expected = keras.ops.convert_to_numpy(expected)
    for generator, seed in zip(_seed_generators(layer), seeds):
        generator.state.assign(seed)
    keras.utils.set_random_seed(2)
    got = _recurrent.forward(
        layer,
        keras.ops.convert_to_tensor(x),
        lambda name, t: t,
        None if mask is None else keras.ops.convert_to_tensor(mask),
        training,
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(got), expected, atol=1e-5
    )
    if training:  # the masks dropped something
        inference = layer(x, mask=mask, training=False)
        assert not np.allclose(keras.ops.convert_to_numpy(inference), expected)


def _assert_refused_before_training(model, x, match):
    """QAT refuses `model` with `match` before a step: weights unchanged."""
    model.compile("adam", "mse")
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match=match):
        model.fit(
            x,
            np.zeros((8, 2), "float32"),
            verbose=0,
            callbacks=[QuantizationAwareTraining()],
        )
    assert int(model.optimizer.iterations) == 0
    for w, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(w, b)


@pytest.mark.parametrize(
    "layer, match",
    [
        (L.GRU(4, reset_after=False, name="rnn"), "reset_after=False"),
        (L.SimpleRNN(4, activation="elu", name="rnn"), "activation 'elu'"),
        (
            L.LSTM(4, recurrent_activation="hard_sigmoid", name="rnn"),
            "recurrent_activation 'hard_sigmoid'",
        ),
        (L.ConvLSTM1D(4, 3, name="rnn"), "`ConvLSTM1D` has no int8"),
        (
            L.Bidirectional(L.LSTM(4), merge_mode="sum", name="rnn"),
            "merge_mode='sum'",
        ),
        (
            L.Bidirectional(L.LSTM(4, activation="relu"), name="rnn"),
            "wraps a `LSTM` that has activation 'relu'",
        ),
    ],
    ids=[
        "reset_before",
        "elu",
        "hard_sigmoid",
        "conv_lstm",
        "bidirectional_sum",
        "bidirectional_relu",
    ],
)
def test_recurrent_layers_not_modelled_are_refused_before_training(
    layer, match
):
    shape = (6, 5, 3) if isinstance(layer, L.ConvLSTM1D) else (6, 3)
    model = keras.Sequential([L.Input(shape), layer, L.Flatten(), L.Dense(2)])
    _assert_refused_before_training(
        model, np.zeros((8, *shape), "float32"), f"'rnn'.*{match}"
    )


def test_unknown_number_of_time_steps_is_refused_by_quantize_model():
    model = keras.Sequential(
        [L.Input((None, 3)), L.LSTM(4, name="rnn"), L.Dense(2)]
    )
    with pytest.raises(ValueError, match="'rnn'.*fixed number of time steps"):
        quantize_model(model)


def test_initial_state_is_refused_with_the_layer_named():
    inputs = L.Input((6, 3))
    state = L.Input((4,))
    outputs = L.GRU(4, name="rnn")(inputs, initial_state=state)
    model = keras.Model([inputs, state], L.Dense(2)(outputs))
    data = [np.zeros((8, 6, 3), "float32"), np.zeros((8, 4), "float32")]
    _assert_refused_before_training(model, data, "'rnn'.*`initial_state`")


def test_per_tensor_dense_export_of_a_recurrent_qat_model_is_refused(
    rows, tmp_path
):
    # Its gate kernels learned per output unit, as the file stores them by
    # default; a per-tensor file would not be what it was trained for.
    (x, y), _ = rows
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [L.Input((8, 8)), L.SimpleRNN(8, name="rnn"), L.Dense(10)]
    )
    _fit_aware(model, x[:128], y[:128], epochs=1)
    path = tmp_path / "never.tflite"
    with pytest.raises(ValueError, match=r"\['rnn'\].*per_channel_dense=False"):
        keras_slim.export_tflite(model, str(path), per_channel_dense=False)
    assert not path.exists()


def _int8_weight_zeros(path):
    """The fraction of zeros over the file's 2-D int8 constant tensors
    (FULLY_CONNECTED weights: the unrolled gate kernels and the head)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    interpreter.allocate_tensors()
    zeros = size = 0
    for detail in interpreter.get_tensor_details():
        if detail["dtype"] != np.int8 or len(detail["shape"]) != 2:
            continue
        try:
            values = interpreter.get_tensor(detail["index"])
        except ValueError:  # an activation, not a constant
            continue
        zeros, size = zeros + np.sum(values == 0), size + values.size
    return zeros / size


@pytest.mark.parametrize("kind", ["LSTM", "Bidirectional"])
def test_recurrent_kernels_are_pruned_and_their_zeros_reach_the_file(
    kind, rows, tmp_path
):
    (x, y), (xt, yt) = rows
    model = _trained(kind, rows)
    float_accuracy = model.evaluate(xt, yt, verbose=0)[1]
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    # 0 to 50% over the first two epochs (22 steps each), two more at 50%.
    schedule = schedules.PolynomialDecay(0.0, 0.5, 0, end_step=44, frequency=2)
    pruning = MagnitudePruning(schedule)
    model.fit(x, y, epochs=4, batch_size=64, verbose=0, callbacks=[pruning])
    report = sparsity_report(model)
    pruned = {(row.path, row.weight): row for row in report.layers}
    directions = ("forward_lstm", "backward_lstm") if kind != "LSTM" else ()
    paths = [f"rnn/{d}" for d in directions] or ["rnn"]
    for path in paths:
        for weight in ("kernel", "recurrent_kernel"):
            row = pruned[(path, weight)]  # each cell's two kernels
            assert row.zeros == round(0.5 * row.size), row
    assert model.evaluate(xt, yt, verbose=0)[1] >= float_accuracy - 0.05
    if keras.backend.backend() != "tensorflow":
        return  # the file comes from the same converter (export_test)
    path = str(tmp_path / "pruned_rnn.tflite")
    report = keras_slim.export_tflite(model, path, representative_data=x[:200])
    assert report.info.int8_only, report.info.float_ops
    assert litert.compare(model, path, xt).agreement >= 0.97
    # The gate kernels are sliced per gate in the file; their zeros stay
    # zeros (symmetric int8), about 1% of an unpruned model's are.
    assert _int8_weight_zeros(path) >= 0.48
