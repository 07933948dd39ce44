"""Tests of keras_slim.transfer on real digits with tiny models."""

import keras
import numpy as np
import pytest
from conftest import BACKEND
from conftest import ZOO
from conftest import accuracy
from conftest import compile_classifier

from keras_slim import models
from keras_slim import transfer

A = keras.applications


def _weights(layer):
    return [np.array(w) for w in layer.get_weights()]


def _numpy(tensor):
    # A model called eagerly on torch returns a tensor that requires grad,
    # which NumPy cannot read directly.
    return keras.ops.convert_to_numpy(tensor)


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def _split(data, classes):
    x, y = data
    keep = np.isin(y, classes)
    return x[keep], (y[keep] - min(classes)).astype("int32")


@pytest.fixture(scope="module")
def source_weights(digits):
    """small_cnn trained on digits 0-4 only (the pretrained body)."""
    keras.utils.set_random_seed(0)
    train, _ = digits
    x, y = _split(train, range(5))
    model = compile_classifier(models.small_cnn(num_classes=5))
    model.fit(x, y, batch_size=64, epochs=8, verbose=0)
    return model.get_weights()


@pytest.fixture
def source(source_weights):
    model = models.small_cnn(num_classes=5)
    model.set_weights(source_weights)
    return model


def _few_shot(digits, per_class=10, seed=0):
    """10 labelled images per class of digits 5-9, and their test set."""
    train, test = digits
    x, y = _split(train, range(5, 10))
    rng = np.random.default_rng(seed)
    idx = np.concatenate(
        [rng.choice(np.flatnonzero(y == c), per_class, False) for c in range(5)]
    )
    return (x[idx], y[idx]), _split(test, range(5, 10))


# ------------------------------------------------------------ freeze


def test_frozen_weights_and_batchnorm_statistics_unchanged_after_fit(
    digits, source
):
    (x, y), _ = digits
    model = compile_classifier(models.small_cnn())
    model.set_weights(source.get_weights()[:-2] + model.get_weights()[-2:])
    model.fit(x[:128], y[:128], epochs=1, verbose=0)  # traces train_function
    report = transfer.freeze(model, up_to="bn4")
    assert report.recompiled
    assert "Recompiled" in report.message
    assert report.trainable_params == 650
    frozen = {n: _weights(model.get_layer(n)) for n in report.layers}
    head = _weights(model.get_layer("logits"))
    # 5 epochs: after 2, the head's accuracy was 0.17 to 0.40 depending on
    # the backend's random init (measured on TensorFlow and torch); after
    # 5, 0.57 to 0.63.
    history = model.fit(x, y, batch_size=64, epochs=5, verbose=0)
    for name, before in frozen.items():
        assert _same(before, _weights(model.get_layer(name))), name
    # BatchNorm: gamma, beta, moving mean, moving variance bit for bit.
    assert len(frozen["bn1"]) == 4
    assert not _same(head, _weights(model.get_layer("logits")))
    # Recompiled with the same optimizer, loss and metrics.
    assert type(model.optimizer).__name__ == "Adam"
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-3)
    # Only the head trains, from a body that never saw digits 5-9.
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.history["accuracy"][-1] > 0.25


def test_freeze_without_recompile_leaves_keras_on_its_old_train_step():
    # Why freeze recompiles: without it, Keras goes on with the state of
    # the last compile, and what a fit then does depends on the backend.
    x = np.random.default_rng(0).random((64, 32, 32, 1), "float32")
    y = np.arange(64) % 10
    model = compile_classifier(models.small_cnn())
    model.fit(x, y, epochs=1, verbose=0)
    report = transfer.freeze(model, up_to="bn4", recompile=False)
    assert not report.recompiled
    before = _weights(model.get_layer("conv1"))
    if BACKEND == "jax":
        # The jitted step takes the trainable variables as arguments: the
        # optimizer, built on the 14 of the compile, refuses the 2 left.
        with pytest.raises(ValueError, match="optimizer was built with 14"):
            model.fit(x, y, epochs=1, verbose=0)
        return
    model.fit(x, y, epochs=1, verbose=0)
    after = _weights(model.get_layer("conv1"))
    if BACKEND == "tensorflow":
        # The traced train function captured the weights trainable at the
        # time, and goes on training the frozen ones.
        assert not _same(before, after)
    else:
        # torch runs the train step eagerly, on `trainable_weights` as
        # they are at each step: the freeze holds at once.
        assert _same(before, after)


def test_uncompiled_model_report_says_to_compile():
    report = transfer.freeze(models.small_cnn(), fraction=0.5)
    assert not report.recompiled
    assert "not compiled" in report.message
    assert report.layers == ["conv1", "bn1", "dw2", "bn2", "pw2"]


def test_custom_compile_model_report_says_to_recompile():
    class CustomCompile(keras.Model):
        def compile(self, **kwargs):
            super().compile(**kwargs)

    inputs = keras.Input((4,))
    model = CustomCompile(inputs, keras.layers.Dense(2, name="d")(inputs))
    model.compile(optimizer="sgd", loss="mse")
    report = transfer.freeze(model)
    assert not report.recompiled
    assert "call `model.compile(...)` again" in report.message


def test_freeze_filters_regex_freezes_only_batchnorm():
    model = models.small_cnn()
    report = transfer.freeze(model, filters="^bn")
    assert report.layers == ["bn1", "bn2", "bn3", "bn4"]
    frozen = [layer.name for layer in model.layers if not layer.trainable]
    assert frozen == ["bn1", "bn2", "bn3", "bn4"]


def test_freeze_callable_filter_and_negative_index():
    model = models.small_cnn()
    report = transfer.freeze(
        model,
        up_to=-2,  # 'gap': everything below the head
        filters=lambda layer: isinstance(layer, keras.layers.Conv2D),
    )
    assert report.layers == ["conv1", "pw2", "conv4"]


def test_unfreezed_top_layers_really_train_and_batchnorm_stays_frozen(
    digits, source
):
    (x, y), _ = digits
    model = models.small_cnn()
    model.set_weights(source.get_weights()[:-2] + model.get_weights()[-2:])
    transfer.freeze(model)
    compile_classifier(model, 1e-3)
    report = transfer.unfreeze(model, up_to="conv4")
    assert report.recompiled
    assert report.layers == ["conv4", "logits"]
    assert [p for p, _ in report.skipped] == ["bn4"]
    before = {n: _weights(model.get_layer(n)) for n in ("conv1", "bn4")}
    conv4 = _weights(model.get_layer("conv4"))
    model.fit(x, y, batch_size=64, epochs=2, verbose=0)
    assert not _same(conv4, _weights(model.get_layer("conv4")))
    for name, weights in before.items():
        assert _same(weights, _weights(model.get_layer(name))), name


@pytest.mark.parametrize("kind", sorted(ZOO))
def test_freeze_all_then_unfreeze_all_round_trips_every_zoo_model(kind):
    model = ZOO[kind]()
    total = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert transfer.freeze(model).trainable_params == 0
    assert model.trainable_weights == []
    report = transfer.unfreeze(model, keep_batchnorm_frozen=False)
    assert report.trainable_params == total


def test_unfreeze_inside_frozen_nested_model_unfreezes_only_that_layer():
    model = ZOO["nested"]()
    model.get_layer("body").trainable = False
    model.get_layer("hidden").trainable = False
    report = transfer.unfreeze(model, filters="conv2d")
    assert len(report.layers) == 1
    trainable = [w.path for w in model.trainable_weights]
    assert len(trainable) == 4
    assert [p.split("/")[-1] for p in trainable if "conv2d" in p] == [
        "kernel",
        "bias",
    ]
    assert not model.get_layer("hidden").trainable
    assert model.get_layer("head").trainable  # was trainable, untouched


def test_trainable_summary_groups_keras_applications_blocks():
    base = A.MobileNetV2(
        input_shape=(32, 32, 3),
        alpha=0.35,
        include_top=False,
        weights=None,
        pooling="avg",
    )
    transfer.freeze(base)
    transfer.unfreeze(base, up_to="block_16_expand")
    lines = []
    transfer.trainable_summary(base, print_fn=lines.append)
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["block_15"][-1] == "frozen"
    assert rows["block_16"][-1] == "mixed"  # its BN is frozen
    assert rows["Conv_1"][-1] == "trains"
    assert rows["Conv_1_bn"][-1] == "frozen"
    assert len(lines) < 60 < len(base.layers)
    total = rows["Total"]
    assert int(total[2].replace(",", "")) == sum(
        int(np.prod(w.shape)) for w in base.trainable_weights
    )


# ------------------------------------------------------------ bad input


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_fraction_outside_unit_interval_is_refused(fraction):
    model = models.small_cnn()
    with pytest.raises(ValueError, match=r"Expected `fraction` in \[0, 1\]"):
        transfer.freeze(model, fraction=fraction)
    assert model.trainable_weights and all(
        layer.trainable for layer in model.layers
    )


def test_missing_layer_name_is_refused_before_any_change():
    model = models.small_cnn()
    transfer.freeze(model)
    with pytest.raises(ValueError, match="No layer named 'nope'.*up_to="):
        transfer.unfreeze(model, up_to="nope")
    assert model.trainable_weights == []
    with pytest.raises(ValueError, match="No layer named 'nope'"):
        transfer.swap_head(models.small_cnn(), 3, head_layer="nope")
    with pytest.raises(ValueError, match="No layer named 'nope'"):
        transfer.extract_features(model, np.zeros((1, 32, 32, 1)), "nope")


def test_out_of_range_index_and_both_selectors_are_refused():
    with pytest.raises(ValueError, match="layer index in"):
        transfer.freeze(models.small_cnn(), up_to=99)
    with pytest.raises(ValueError, match="at most one of `up_to`"):
        transfer.freeze(models.small_cnn(), up_to="bn1", fraction=0.5)
    with pytest.raises(TypeError, match="`filters`"):
        transfer.freeze(models.small_cnn(), filters=3)
    with pytest.raises(TypeError, match="Keras 3"):
        transfer.freeze("model")


@pytest.mark.parametrize("num_classes", [0, -3])
def test_num_classes_below_one_is_refused(num_classes):
    with pytest.raises(ValueError, match="`num_classes` to be an integer >= 1"):
        transfer.swap_head(models.small_cnn(), num_classes)


def test_model_without_recognisable_head_is_refused():
    inputs = keras.Input((8,))
    x = keras.layers.Dense(16, name="a")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="b")(x))
    with pytest.raises(ValueError, match="no recognisable classification"):
        transfer.swap_head(model, 2)
    with pytest.raises(ValueError, match="no recognisable classification"):
        transfer.extract_features(model, np.zeros((2, 8)))
    # ...but head_layer makes it work.
    new = transfer.swap_head(model, 2, head_layer="b", dropout=0.0)
    assert new.output_shape == (None, 2)
    with pytest.raises(ValueError, match="Functional or Sequential"):
        transfer.swap_head(ZOO["subclassed"](), 2)


def test_bad_dropout_and_activation_are_refused():
    with pytest.raises(ValueError, match=r"`dropout` in \[0, 1\)"):
        transfer.swap_head(models.small_cnn(), 3, dropout=1.0)
    with pytest.raises(ValueError, match="`activation`"):
        transfer.swap_head(models.small_cnn(), 3, activation="nope")


def test_transfer_weights_with_nothing_in_common_is_refused():
    source = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, name="a")]
    )
    target = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(2, name="b")]
    )
    before = _weights(target.layers[0])
    with pytest.raises(ValueError, match="no weight in common"):
        transfer.transfer_weights(source, target)
    with pytest.raises(ValueError, match="no weight in common"):
        transfer.transfer_weights(source, target, by="order")
    with pytest.raises(ValueError, match="Expected `by` to be one of"):
        transfer.transfer_weights(source, target, by="shape")
    assert _same(before, _weights(target.layers[0]))


def test_gradual_unfreezing_bad_schedule_is_refused(digits):
    with pytest.raises(ValueError, match="`schedule epoch` to be an integer"):
        transfer.GradualUnfreezing({-1: "conv4"})
    with pytest.raises(ValueError, match=r"`fraction` in \[0, 1\]"):
        transfer.GradualUnfreezing({1: 1.5})
    with pytest.raises(TypeError, match="schedule value"):
        transfer.GradualUnfreezing({1: None})
    with pytest.raises(ValueError, match="learning_rate_multiplier"):
        transfer.GradualUnfreezing({1: 0.5}, learning_rate_multiplier=2.0)
    model = models.small_cnn()
    transfer.freeze(model, up_to="bn4")
    compile_classifier(model)
    (x, y), _ = digits
    callback = transfer.GradualUnfreezing({1: "nope"})
    with pytest.raises(ValueError, match="No layer named 'nope'"):
        model.fit(x[:64], y[:64], epochs=2, callbacks=[callback], verbose=0)
    assert [w.path for w in model.trainable_weights] == [
        "logits/kernel",
        "logits/bias",
    ]


# ------------------------------------------------------------ swap_head

_APPS = {
    "MobileNetV2": lambda: A.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=7
    ),
    "MobileNetV3Small": lambda: A.MobileNetV3Small(
        input_shape=(32, 32, 3),
        alpha=0.75,
        weights=None,
        classes=7,
        include_preprocessing=False,
    ),
    "EfficientNetB0": lambda: A.EfficientNetB0(
        input_shape=(32, 32, 3), weights=None, classes=7
    ),
    "ResNet50": lambda: A.ResNet50(
        input_shape=(32, 32, 3), weights=None, classes=7
    ),
}


@pytest.mark.parametrize(
    "name",
    [
        "MobileNetV2",
        "MobileNetV3Small",
        pytest.param("EfficientNetB0", marks=pytest.mark.slow),
        pytest.param("ResNet50", marks=pytest.mark.slow),
    ],
)
def test_swap_head_replaces_keras_applications_head_input_untouched(name):
    model = _APPS[name]()
    before = model.get_weights()
    new = transfer.swap_head(model, 4, activation="softmax")
    assert new.output_shape == (None, 4)
    assert model.output_shape == (None, 7)
    assert _same(before, model.get_weights())
    assert not set(map(id, new.weights)) & set(map(id, model.weights))
    # The old head (everything after the last global pooling) is gone.
    pooled = [
        i
        for i, layer in enumerate(model.layers)
        if isinstance(layer, keras.layers.GlobalAveragePooling2D)
    ][-1]
    names = {layer.name for layer in new.layers}
    assert not names & {layer.name for layer in model.layers[pooled + 1 : -1]}
    assert model.layers[pooled].name in names
    # The body's features, with its weights, are kept.
    x = np.random.default_rng(0).random((2, 32, 32, 3), "float32")
    reference = keras.Model(model.inputs, model.layers[pooled].output)
    kept = keras.Model(
        new.inputs, new.get_layer(model.layers[pooled].name).output
    )
    np.testing.assert_allclose(_numpy(kept(x)), _numpy(reference(x)), atol=1e-5)


def test_training_the_swapped_model_leaves_the_input_model_untouched(
    digits, source
):
    (x, y), _ = digits
    before = source.get_weights()
    new = transfer.swap_head(source, 10)
    compile_classifier(new)
    new.fit(x, y, batch_size=64, epochs=1, verbose=0)
    assert _same(before, source.get_weights())
    assert source.output_shape == (None, 5)
    assert [layer.name for layer in new.layers[-3:]] == [
        "gap",
        "head_dropout",
        "logits",
    ]


def test_swap_head_keeps_trainable_flags_of_the_body(source):
    transfer.freeze(source, up_to="bn4")
    new = transfer.swap_head(source, 3, dropout=0.0)
    assert [w.path for w in new.trainable_weights] == [
        "logits/kernel",
        "logits/bias",
    ]


def test_swap_head_finds_head_after_nested_backbone_and_flatten():
    base = A.MobileNetV2(
        input_shape=(32, 32, 3),
        alpha=0.35,
        include_top=False,
        weights=None,
        pooling="avg",
    )
    model = keras.Sequential(
        [keras.Input((32, 32, 3)), base, keras.layers.Dense(9, name="cls")]
    )
    new = transfer.swap_head(model, 2)
    assert new.output_shape == (None, 2)
    assert [layer.name for layer in new.layers][-1] == "cls"
    seq = transfer.swap_head(ZOO["sequential"](), 3, dropout=0.0)
    # Flatten -> Dense(32) -> Dense(10): all after Flatten is the head.
    assert [type(layer).__name__ for layer in seq.layers[-2:]] == [
        "Flatten",
        "Dense",
    ]
    nested = transfer.swap_head(ZOO["nested"](), 3)
    assert nested.output_shape == (None, 3)
    assert "hidden" not in [layer.name for layer in nested.layers]


# ------------------------------------------------- features and heads


def test_extract_features_then_attach_head_gives_one_equivalent_model(
    digits, source
):
    (x, y), (x_test, y_test) = _few_shot(digits)
    transfer.freeze(source)
    features = transfer.extract_features(source, x)
    assert features.shape == (50, 64)
    head = keras.Sequential([keras.Input((64,)), keras.layers.Dense(5)])
    compile_classifier(head, 1e-2)
    # Trained to fit its 50 images (10 epochs left it underfit, and the
    # test accuracy at the mercy of the body's random init: 0.63 to 0.83
    # over 4 seeds and 3 backends; 60 epochs: 0.78 to 0.89).
    head.fit(np.tile(features, (10, 1)), np.tile(y, 10), epochs=60, verbose=0)
    model = transfer.attach_head(source, head)
    assert model.input_shape == (None, 32, 32, 1)
    test_features = transfer.extract_features(source, x_test)
    np.testing.assert_allclose(
        model.predict(x_test, verbose=0),
        head.predict(test_features, verbose=0),
        atol=1e-4,
    )
    # Digits 5-9 from 10 images each, on a body trained on digits 0-4.
    assert accuracy(model.predict(x_test, verbose=0), y_test) > 0.7
    with pytest.raises(ValueError, match="features of shape"):
        transfer.attach_head(
            source, keras.Sequential([keras.Input((3,)), keras.layers.Dense(5)])
        )


def test_extract_features_of_headless_backbone_is_its_output():
    base = A.MobileNetV2(
        input_shape=(32, 32, 3),
        alpha=0.35,
        include_top=False,
        weights=None,
        pooling="avg",
    )
    x = np.random.default_rng(0).random((3, 32, 32, 3), "float32")
    np.testing.assert_allclose(
        transfer.extract_features(base, x, batch_size=2),
        _numpy(base(x)),
        atol=1e-5,
    )


def _ragged_extraction():
    """A model and its body after two extractions with ragged batches."""
    from keras_slim.transfer import _heads

    keras.utils.set_random_seed(0)
    model = models.small_cnn()
    x = np.random.default_rng(0).random((12, 32, 32, 1), "float32")
    # 7 = 2 batches of 3 + 1, then 5 = 3 + 2: last batches are smaller.
    first = transfer.extract_features(model, x[:7], batch_size=3)
    second = transfer.extract_features(model, x[7:], batch_size=3)
    gap = keras.Model(model.inputs[0], model.get_layer("gap").output)
    np.testing.assert_allclose(
        np.concatenate([first, second]), _numpy(gap(x)), atol=1e-5
    )
    [body] = getattr(model, _heads._BODIES).values()
    return model, body


def test_extract_features_of_ragged_batches_and_repeat_calls():
    import gc
    import weakref

    model, body = _ragged_extraction()
    # The cache does not keep the model alive.
    ref = weakref.ref(model)
    del model, body
    gc.collect()
    assert ref() is None


@pytest.mark.backends("tensorflow", reason="counts the traces of a tf.function")
def test_extract_features_traces_once_for_ragged_batches_and_repeat_calls():
    _, body = _ragged_extraction()
    assert body.predict_function.experimental_get_tracing_count() == 1


# ------------------------------------------------------ transfer_weights


def test_transfer_weights_by_name_copies_matching_shapes_and_says_why_not(
    source,
):
    target = models.small_cnn(num_classes=10)
    report = transfer.transfer_weights(source, target)
    assert report.copied_params == 19744
    assert [n for n, _ in report.skipped] == ["logits/kernel", "logits/bias"]
    assert (
        "(64, 10) in the target, (64, 5) in the source"
        in (report.skipped[0][1])
    )
    for name in ("conv1", "bn2", "conv4"):
        assert _same(
            _weights(source.get_layer(name)), _weights(target.get_layer(name))
        )
    with pytest.raises(ValueError, match="strict=True"):
        transfer.transfer_weights(source, models.small_cnn(), strict=True)


def test_transfer_weights_by_order_between_renamed_and_wider_models(source):
    target = models.residual_cnn(num_classes=5)  # other names, other sizes
    by_name = transfer.transfer_weights(source, models.small_cnn(), by="name")
    assert by_name.copied_params == 19744
    report = transfer.transfer_weights(source, target, by="order")
    # stem conv (3x3x1x16) and its BN match the source's conv1/bn1.
    assert report.copied[0] == ("stem_conv/kernel", "conv1/kernel")
    assert _same(
        _weights(source.get_layer("conv1")),
        _weights(target.get_layer("stem_conv")),
    )
    assert any("shape" in reason for _, reason in report.skipped)
    assert 0 < report.copied_params < report.total_params


# ------------------------------------------------------ GradualUnfreezing


class _Snapshots(keras.callbacks.Callback):
    def __init__(self, names):
        super().__init__()
        self.names = names
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(
            {n: _weights(self.model.get_layer(n)) for n in self.names}
        )


def test_gradual_unfreezing_starts_training_layers_at_scheduled_epoch(
    digits, source
):
    (x, y), _ = digits
    model = models.small_cnn()
    model.set_weights(source.get_weights()[:-2] + model.get_weights()[-2:])
    transfer.freeze(model, up_to="bn4")
    compile_classifier(model)
    start = {n: _weights(model.get_layer(n)) for n in ("conv4", "pw2", "bn4")}
    snaps = _Snapshots(["conv4", "pw2", "bn4"])
    callback = transfer.GradualUnfreezing({1: "conv4", 2: "pw2"})
    history = model.fit(
        x, y, batch_size=64, epochs=3, callbacks=[callback, snaps], verbose=0
    )
    e0, e1, e2 = snaps.epochs
    assert _same(start["conv4"], e0["conv4"])  # frozen in epoch 0
    assert not _same(e0["conv4"], e1["conv4"])  # trains from epoch 1
    assert _same(start["pw2"], e1["pw2"])
    assert not _same(e1["pw2"], e2["pw2"])  # trains from epoch 2
    assert _same(start["bn4"], e2["bn4"])  # BatchNorm kept frozen
    assert history.history["trainable_params"] == [650, 19082, 19594]
    assert history.history["accuracy"][-1] > 0.4  # chance: 0.1


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda: keras.optimizers.SGD(0.1),
        lambda: keras.optimizers.Adam(1e-3),
        # Nadam keeps a product of its own per step: on torch the scaled
        # step runs the per-variable loop that advances it once.
        lambda: keras.optimizers.Nadam(1e-3),
    ],
    ids=["sgd", "adam", "nadam"],
)
def test_gradual_unfreezing_scales_updates_of_unfrozen_layers(make_optimizer):
    """One step: the layer unfrozen at stage 1 moves by 0.25 times its
    step without the multiplier, for any optimizer (a learning-rate scale
    in the optimizer's step, not a gradient scale, which Adam would undo);
    the head, trainable from the start, moves as without it."""
    x = np.random.default_rng(0).random((32, 32, 32, 1), "float32")
    y = np.arange(32) % 10
    deltas, head = {}, {}
    for multiplier in (None, 0.25):
        keras.utils.set_random_seed(0)
        model = models.small_cnn()
        transfer.freeze(model, up_to="bn4")
        model.compile(
            make_optimizer(),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        head_before = _weights(model.layers[-1])[0]
        before = _weights(model.get_layer("conv4"))[0]
        callback = transfer.GradualUnfreezing(
            {0: "conv4"}, learning_rate_multiplier=multiplier
        )
        model.fit(
            x, y, batch_size=32, epochs=1, callbacks=[callback], verbose=0
        )
        deltas[multiplier] = _weights(model.get_layer("conv4"))[0] - before
        head[multiplier] = _weights(model.layers[-1])[0] - head_before
    assert np.abs(deltas[None]).max() > 0
    np.testing.assert_allclose(
        deltas[0.25], 0.25 * deltas[None], rtol=1e-4, atol=1e-8
    )
    np.testing.assert_allclose(head[0.25], head[None], rtol=1e-4, atol=1e-8)


def test_gradual_unfreezing_factors_end_with_its_fit():
    """A later `fit` without the callback trains the unfrozen layer at the
    optimizer's own rate again."""
    x = np.random.default_rng(0).random((32, 32, 32, 1), "float32")
    y = np.arange(32) % 10
    deltas = {}
    for multiplier in (None, 0.25):
        keras.utils.set_random_seed(0)
        model = models.small_cnn()
        transfer.freeze(model, up_to="bn4")
        model.compile(
            keras.optimizers.SGD(0.1),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        callback = transfer.GradualUnfreezing(
            {0: "conv4"}, learning_rate_multiplier=multiplier
        )
        model.fit(x, y, batch_size=32, epochs=1, callbacks=[callback])
        before = _weights(model.get_layer("conv4"))[0]
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)
        deltas[multiplier] = _weights(model.get_layer("conv4"))[0] - before
    assert np.abs(deltas[None]).max() > 0
    # Not 0.25x: the same step size (the weights differ slightly after the
    # first fit, so the steps are close, not equal).
    ratio = np.abs(deltas[0.25]).sum() / np.abs(deltas[None]).sum()
    assert 0.8 < ratio < 1.25


@pytest.mark.parametrize(
    "optimizer,multiplier,match",
    [
        ("ftrl", 0.5, "Ftrl"),
        ("adafactor", None, "Adafactor"),
    ],
)
def test_gradual_unfreezing_refuses_optimizers_it_cannot_handle(
    optimizer, multiplier, match
):
    model = models.small_cnn()
    transfer.freeze(model, up_to="bn4")
    model.compile(
        optimizer,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = [w.copy() for w in model.get_weights()]
    callback = transfer.GradualUnfreezing(
        {1: "conv4"}, learning_rate_multiplier=multiplier
    )
    x = np.random.default_rng(0).random((32, 32, 32, 1), "float32")
    with pytest.raises(ValueError, match=match):
        model.fit(x, np.arange(32) % 10, epochs=2, callbacks=[callback])
    assert int(model.optimizer.iterations) == 0  # refused before any step
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


class _OptimizerState(keras.callbacks.Callback):
    """The optimizer's step and variables at `on_train_begin`, at the end
    of the first batch and of each epoch, and at the start of each epoch
    (after the callbacks before it in the list)."""

    def on_train_begin(self, logs=None):
        self.begin = self._state()
        self.epoch_begin, self.epoch_end = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_begin.append(self._state())

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_end.append(self._state())

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0 and not hasattr(self, "first_batch"):
            self.first_batch = self._state()

    def _state(self):
        optimizer = self.model.optimizer
        return int(optimizer.iterations), {
            v.name: v.numpy() for v in optimizer.variables
        }


@pytest.mark.parametrize(
    "optimizer, slots",
    [
        (lambda: keras.optimizers.Adam(1e-3), ("momentum", "velocity")),
        (lambda: keras.optimizers.SGD(0.01, momentum=0.9), ("momentum",)),
    ],
)
def test_gradual_unfreezing_keeps_optimizer_state_from_an_earlier_fit(
    digits, optimizer, slots
):
    (x, y), _ = digits
    model = models.small_cnn()
    transfer.freeze(model, up_to="bn4")
    model.compile(
        optimizer(),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x[:256], y[:256], batch_size=64, epochs=1, verbose=0)
    old = model.optimizer
    steps, before = (
        int(old.iterations),
        {v.name: v.numpy() for v in old.variables},
    )
    head = [
        f"{v.path.replace('/', '_')}_{s}"
        for v in model.get_layer("logits").trainable_weights
        for s in slots
    ]
    body = [  # conv4 is frozen: its `weights`, not `trainable_weights`
        f"{v.path.replace('/', '_')}_{s}"
        for v in model.get_layer("conv4").weights
        for s in slots
    ]
    assert steps == 4
    assert len(body) == len(slots)  # conv4: a kernel, no bias
    assert set(head) <= set(before) and not set(body) & set(before)
    assert all(np.abs(before[n]).max() > 0 for n in head)  # real state

    snaps = _Snapshots(["conv4"])
    state = _OptimizerState()
    callback = transfer.GradualUnfreezing({1: "conv4"})
    model.fit(
        x[:256],
        y[:256],
        batch_size=64,
        epochs=2,
        callbacks=[callback, state, snaps],
        verbose=0,
    )
    assert model.optimizer is not old
    assert type(model.optimizer) is type(old)
    # The fit starts on the earlier fit's optimizer, state and all.
    begin_steps, begin = state.begin
    assert begin_steps == steps
    assert sorted(begin) == sorted(before)
    for name, value in before.items():
        np.testing.assert_array_equal(begin[name], value, err_msg=name)
    # At the stage (epoch 1) the replacement carries over the step and
    # every slot as epoch 0 left them, and adds zero slots for conv4.
    (end_steps, end), (stage_steps, stage) = (
        state.epoch_end[0],
        state.epoch_begin[1],
    )
    assert stage_steps == end_steps == steps + 4
    assert set(stage) == set(end) | set(body)
    for name, value in end.items():
        np.testing.assert_array_equal(stage[name], value, err_msg=name)
    for name in body:
        assert not np.any(stage[name]), name
    # The step counts on from where the earlier fit left it.
    assert state.first_batch[0] == steps + 1
    assert int(model.optimizer.iterations) == steps + 8
    for name in body:
        assert (
            np.abs(
                np.array(
                    [v for v in model.optimizer.variables if v.name == name][0]
                )
            ).max()
            > 0
        ), name
    assert not _same(snaps.epochs[0]["conv4"], snaps.epochs[1]["conv4"])


def test_optimizer_is_rebuilt_with_its_state_in_keras_3_terms():
    """Why the callback must replace a built optimizer: Keras 3 neither
    extends it (`build` on a superset does nothing) nor applies it to a
    variable it was not built with."""
    from keras_slim.transfer._unfreezing import rebuild_optimizer

    a = keras.Variable(np.ones(3, "float32"), name="a")
    b = keras.Variable(np.ones(2, "float32"), name="b")
    # Gradients as backend tensors (the torch optimizer takes no arrays).
    ones = keras.ops.ones
    optimizer = keras.optimizers.Adam(0.1)
    optimizer.build([a])
    optimizer.apply([ones(3)], [a])
    names = [v.name for v in optimizer.variables]
    optimizer.build([a, b])
    assert [v.name for v in optimizer.variables] == names
    with pytest.raises(ValueError, match="Unknown variable"):
        optimizer.apply([ones(3), ones(2)], [a, b])

    fresh = rebuild_optimizer(optimizer, [a, b])
    old = {v.name: v.numpy() for v in optimizer.variables}
    new = {v.name: v.numpy() for v in fresh.variables}
    assert int(fresh.iterations) == 1
    for name, value in old.items():
        np.testing.assert_array_equal(new[name], value, err_msg=name)
    assert not np.any(new["b_momentum"]) and not np.any(new["b_velocity"])
    fresh.apply([ones(3), ones(2)], [a, b])
    assert int(fresh.iterations) == 2


def test_gradual_unfreezing_under_mirrored_strategy(digits, mirrored_strategy):
    (x, y), _ = digits
    with mirrored_strategy.scope():
        model = models.small_cnn()
        transfer.freeze(model, up_to="bn4")
        compile_classifier(model)
    snaps = _Snapshots(["conv4"])
    callback = transfer.GradualUnfreezing({1: "conv4"})
    model.fit(
        x[:256],
        y[:256],
        batch_size=64,
        epochs=2,
        callbacks=[callback, snaps],
        verbose=0,
    )
    assert not _same(snaps.epochs[0]["conv4"], snaps.epochs[1]["conv4"])


# ------------------------------------------------------------ export


def test_transferred_model_exports_to_int8_only(digits, source, tmp_path):
    import keras_slim

    (x, y), (x_test, y_test) = _few_shot(digits)
    transfer.freeze(source)
    head = keras.Sequential([keras.Input((64,)), keras.layers.Dense(5)])
    compile_classifier(head, 1e-2)
    features = transfer.extract_features(source, x)
    head.fit(np.tile(features, (10, 1)), np.tile(y, 10), epochs=10, verbose=0)
    model = transfer.attach_head(source, head)
    path = str(tmp_path / "transfer.tflite")
    keras_slim.export_tflite(model, path, representative_data=x_test[:100])
    info = keras_slim.inspect_tflite(path)
    assert info.int8_only, info.float_ops
    keras_acc = accuracy(model.predict(x_test, verbose=0), y_test)
    assert keras_slim.litert.evaluate(path, x_test, y_test) > keras_acc - 0.03


def test_swap_head_of_a_sequence_classifier_keeps_its_recurrent_body():
    # An LSTM that returns its last output reduces the time axis to one
    # feature vector: the head after it is swapped (it was refused: "no
    # recognisable classification head"). Digits read row by row; the
    # body learns digits 0-4, the new head 5-9.
    from keras_slim import datasets

    (x, y), (xt, yt) = datasets.load_digits(image_size=8)
    x, xt = x[..., 0], xt[..., 0]
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8)),
            keras.layers.Bidirectional(keras.layers.LSTM(16), name="rnn"),
            keras.layers.Dense(5, name="head"),
        ]
    )
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x[y < 5], y[y < 5], epochs=8, batch_size=64, verbose=0)
    new = transfer.swap_head(model, 5)
    assert new.output_shape == (None, 5)
    assert "rnn" in [layer.name for layer in new.layers]
    np.testing.assert_array_equal(
        new.get_layer("rnn").get_weights()[0],
        model.get_layer("rnn").get_weights()[0],
    )
    new.get_layer("rnn").trainable = False
    new.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    new.fit(x[y >= 5], y[y >= 5] - 5, epochs=20, batch_size=32, verbose=0)
    predicted = np.argmax(new.predict(xt[yt >= 5], verbose=0), axis=-1)
    assert np.mean(predicted == yt[yt >= 5] - 5) >= 0.7
    assert transfer.extract_features(model, xt[:3]).shape == (3, 32)


def _small_unet():
    inputs = keras.Input((16, 16, 1))
    d1 = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    d2 = keras.layers.Conv2D(
        16, 3, strides=2, padding="same", activation="relu", name="down"
    )(d1)
    up = keras.layers.UpSampling2D(2)(d2)
    x = keras.layers.Concatenate()([up, d1])
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    outputs = keras.layers.Conv2D(2, 1, name="mask_logits")(x)
    return keras.Model(inputs, outputs, name="unet")


def test_swap_head_of_a_segmentation_model_keeps_it_per_pixel():
    # It used to flatten the features and end in Dense(num_classes): the
    # U-Net became an image classifier without a word.
    from keras_slim import datasets

    (x, _), (xt, _) = datasets.load_digits(image_size=16, seed=0)
    masks, masks_t = (x > 0.5)[..., 0], (xt > 0.5)[..., 0]
    keras.utils.set_random_seed(0)
    model = _small_unet()
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, masks.astype("int32"), epochs=3, batch_size=64, verbose=0)
    with pytest.raises(ValueError, match="no recognisable classification"):
        transfer.swap_head(model, 3)
    three = transfer.swap_head(model, 3, head_layer="mask_logits")
    assert three.output_shape == (None, 16, 16, 3)
    new = transfer.swap_head(model, 2, head_layer="mask_logits")
    head = new.layers[-1]
    assert isinstance(head, keras.layers.Conv2D)
    assert head.kernel_size == (1, 1) and head.name == "mask_logits"
    np.testing.assert_array_equal(
        new.get_layer("down").get_weights()[0],
        model.get_layer("down").get_weights()[0],
    )
    for layer in new.layers[:-1]:
        layer.trainable = False
    new.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    new.fit(x, masks.astype("int32"), epochs=3, batch_size=64, verbose=0)
    predicted = np.argmax(new.predict(xt, verbose=0), axis=-1)
    background = 1.0 - np.mean(masks_t)
    assert np.mean(predicted == masks_t) >= max(0.9, background + 0.1)


def test_swap_head_of_a_per_pixel_model_refuses_flat_features():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(keras.layers.Conv2D(4, 3)(inputs))
    x = keras.layers.Dense(64, name="dense")(x)
    model = keras.Model(inputs, keras.layers.Reshape((8, 8, 1))(x))
    with pytest.raises(ValueError, match="predicts per position.*'dense'"):
        transfer.swap_head(model, 3, head_layer="dense")


def test_swap_head_of_a_reloaded_sequence_classifier(tmp_path):
    # Loading calls a recurrent layer twice: its `output` is the first
    # call's, not the tensor its head reads (was: "no recognisable
    # classification head" after `load_model`, on every backend).
    model = keras.Sequential(
        [
            keras.Input((8, 8)),
            keras.layers.GRU(16, name="rnn"),
            keras.layers.Dense(10, activation="softmax", name="head"),
        ]
    )
    path = str(tmp_path / "gru.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    new = transfer.swap_head(loaded, 3)
    assert new.output_shape == (None, 3)
    np.testing.assert_array_equal(
        new.get_layer("rnn").get_weights()[0],
        model.get_layer("rnn").get_weights()[0],
    )
