"""Learned weight rounding for post-training integer files (issue 22):
`export_tflite(..., weight_rounding="adaround")` rounds each kernel up or
down, weight by weight, on the converter's int8 grid, while the converter
reads the model, and gives every kernel back."""

import keras
import numpy as np
import pytest

from keras_slim import _adaround
from keras_slim import _convert
from keras_slim import _export_inputs
from keras_slim import export_tflite
from keras_slim import litert

pytestmark = pytest.mark.backends(
    "tensorflow",
    reason="AdaRound fits its rounding with TensorFlow, where the export "
    "runs (a JAX or PyTorch export crosses to a TensorFlow process with "
    "the same options: bias_correction_test)",
)


@pytest.fixture
def few_steps(monkeypatch):
    monkeypatch.setattr(_adaround, "ITERATIONS", 150)


def _small_model():
    return keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            keras.layers.Conv2D(6, 3, activation="relu", name="conv"),
            keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw"),
            keras.layers.Flatten(),
            keras.layers.Dense(5, name="head"),
        ]
    )


def _options():
    return {"weight_rounding": "adaround", "per_channel_dense": True}


def test_kernels_sit_on_their_int8_grid_inside_the_block_and_come_back(
    few_steps,
):
    model = _small_model()
    x = np.random.default_rng(0).uniform(0, 1, (96, 8, 8, 2))
    x = x.astype("float32")
    before = [np.copy(w) for w in model.get_weights()]
    sig = _export_inputs.signature(model, None, x)
    with _adaround.rounded(model, sig, [x], _options()) as notes:
        layers = [model.get_layer(n) for n in ("conv", "dw", "head")]
        for layer, original in zip(layers, before[::2]):
            kernel = keras.ops.convert_to_numpy(layer.kernel)
            # The converter's grid, from the float kernel.
            scale = _adaround.grid_scale(layer, original)
            steps = kernel / scale
            np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
            assert np.abs(steps).max() <= 127.0 + 1e-3
            # Each channel keeps its largest weight, so its scale.
            np.testing.assert_allclose(
                _adaround.grid_scale(layer, kernel), scale, rtol=1e-5
            )
            assert not np.array_equal(kernel, original)
    assert "of 3 layers" in notes[0] and "(conv, dw, head)" in notes[0]
    for w, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(w, b)


def test_learned_rounding_fits_a_layer_better_than_nearest(few_steps):
    # Correlated inputs, as a layer's inputs are: where nearest rounding
    # errs together along correlated weights, learned rounding offsets.
    rng = np.random.default_rng(1)
    model = keras.Sequential([keras.Input((24,)), keras.layers.Dense(8)])
    layer = model.layers[0]
    layer.kernel.assign(rng.normal(size=(24, 8)).astype("float32"))
    mixing = rng.normal(size=(6, 24)) + 1.0
    x = (rng.normal(size=(256, 6)) @ mixing).astype("float32")
    target = np.asarray(model(x))
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    scale = _adaround.grid_scale(layer, kernel)
    nearest = np.clip(np.round(kernel / scale), -127, 127) * scale
    learned = _adaround._fit_rounding(layer, kernel, scale, x, target, 0)

    def error(k):
        return float(np.mean((x @ k + layer.bias.numpy() - target) ** 2))

    assert not np.array_equal(learned, nearest)
    assert error(learned) < 0.9 * error(nearest)


def test_export_writes_a_verified_int8_file_and_restores_the_model(
    few_steps, trained_cnn, digits, tmp_path
):
    (x, _), (x_test, _) = digits
    before = [np.copy(w) for w in trained_cnn.get_weights()]
    path = str(tmp_path / "ada.tflite")
    report = export_tflite(
        trained_cnn,
        path,
        representative_data=x[:128],
        weight_rounding="adaround",
    )
    [note] = [n for n in report.notes if n.startswith("AdaRound")]
    assert "of 5 layers" in note and "(conv1, dw2, pw2, conv4, logits)" in note
    assert report.int8_only
    assert litert.compare(trained_cnn, path, x_test).agreement >= 0.97
    for w, b in zip(trained_cnn.get_weights(), before):
        np.testing.assert_array_equal(w, b)


def test_failed_conversion_writes_nothing_and_restores_the_kernels(
    few_steps, tmp_path, monkeypatch
):
    model = _small_model()
    x = np.random.default_rng(2).uniform(0, 1, (64, 8, 8, 2))
    x = x.astype("float32")
    before = [np.copy(w) for w in model.get_weights()]

    def failing(*args, **kwargs):
        raise RuntimeError("converter failed")

    monkeypatch.setattr(_convert, "convert", failing)
    path = tmp_path / "m.tflite"
    with pytest.raises(RuntimeError, match="converter failed"):
        export_tflite(
            model,
            str(path),
            representative_data=x,
            weight_rounding="adaround",
        )
    assert not path.exists()
    for w, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(w, b)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"weight_rounding": "up"},
            r"'nearest' or 'adaround'\. Received: weight_rounding='up'",
        ),
        (
            {"weight_rounding": "adaround", "quantization": "float16"},
            r"not quantization='float16'\. Received: weight_rounding=",
        ),
        (
            {"weight_rounding": "adaround", "bias_correction": True},
            r"without `bias_correction`\. Received: bias_correction=True",
        ),
    ],
)
def test_bad_weight_rounding_is_refused_before_any_work(
    kwargs, message, tmp_path, monkeypatch
):
    model = _small_model()
    monkeypatch.setattr(_adaround, "_fit_rounding", None)  # never reached
    data = np.ones((8, 8, 8, 2), "float32")
    if kwargs.get("quantization") == "float16":
        data = None
    with pytest.raises(ValueError, match=message):
        export_tflite(
            model,
            str(tmp_path / "m.tflite"),
            representative_data=data,
            **kwargs,
        )
    assert not (tmp_path / "m.tflite").exists()


class _WithSpareLayer(keras.Model):
    """Calls one Dense of its two: the other is built but never reached."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.used = keras.layers.Dense(3, name="used")
        self.spare = keras.layers.Dense(3, name="spare")

    def call(self, x):
        return self.used(x)


def test_a_layer_the_call_never_reaches_is_left_as_it_is(few_steps):
    model = _WithSpareLayer()
    x = np.random.default_rng(3).uniform(0, 1, (64, 4)).astype("float32")
    model(x[:1])
    model.spare.build((None, 4))
    spare = np.copy(model.spare.kernel.numpy())
    used = np.copy(model.used.kernel.numpy())
    sig = _export_inputs.signature(model, (4,), x)
    with _adaround.rounded(model, sig, [x], _options()) as notes:
        np.testing.assert_array_equal(model.spare.kernel.numpy(), spare)
        assert not np.array_equal(model.used.kernel.numpy(), used)
    assert "of 1 layers" in notes[0] and "(used)" in notes[0]
    np.testing.assert_array_equal(model.spare.kernel.numpy(), spare)
