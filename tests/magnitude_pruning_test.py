"""Tests for keras_slim.pruning: MagnitudePruning and sparsity_report."""

import gzip
import os

import keras
import numpy as np
import pytest
from conftest import ZOO
from conftest import accuracy
from conftest import compile_classifier

from keras_slim import models
from keras_slim.pruning import MagnitudePruning
from keras_slim.pruning import sparsity_report
from keras_slim.schedules import ConstantSparsity
from keras_slim.schedules import PolynomialDecay

KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel")

# Keras refuses `steps_per_execution > 1` under the torch backend.
ON_STEPS_PER_EXECUTION = pytest.mark.backends(
    "tensorflow", "jax", reason="Keras refuses steps_per_execution on torch"
)


def kernels(model):
    """`{variable path: numpy kernel}` for every pruned-by-default kernel."""
    return {v.path: v.numpy() for v in model.weights if v.name in KERNEL_NAMES}


def zero_masks(model):
    return {path: w == 0 for path, w in kernels(model).items()}


def one_shot(target):
    """Prune once, at step 0, and then only keep the masks."""
    return ConstantSparsity(target, begin_step=0, end_step=0)


# ------------------------------------------------------ real fine-tuning


@pytest.mark.slow
def test_fine_tuning_trained_cnn_to_80_percent_keeps_accuracy(
    trained_cnn, trained_cnn_weights, digits
):
    (x, y), (x_test, y_test) = digits
    steps_per_epoch = int(np.ceil(len(x) / 64))  # 22
    epochs = 10
    keras.utils.set_random_seed(1)
    plain = compile_classifier(models.small_cnn())
    plain.set_weights(trained_cnn_weights)
    plain.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
    plain_acc = accuracy(plain.predict(x_test, verbose=0), y_test)

    keras.utils.set_random_seed(1)
    schedule = PolynomialDecay(
        0.0, 0.8, begin_step=0, end_step=6 * steps_per_epoch, frequency=11
    )
    # Global ranking keeps the small first conv and depthwise layers
    # denser; per-layer 80% on this 20k-parameter CNN costs ~15 points.
    pruning = MagnitudePruning(schedule, scope="global")
    history = trained_cnn.fit(
        x, y, batch_size=64, epochs=epochs, verbose=0, callbacks=[pruning]
    )
    pruned_acc = accuracy(trained_cnn.predict(x_test, verbose=0), y_test)

    report = sparsity_report(trained_cnn)
    assert [row.path for row in report.layers] == [
        "conv1",
        "dw2",
        "pw2",
        "conv4",
        "logits",
    ]
    assert report.sparsity == pytest.approx(0.8, abs=0.001)
    for row in report.layers:  # DepthwiseConv2D included
        assert row.sparsity > 0.1, row
    assert history.history["sparsity"][-1] == pytest.approx(0.8, abs=0.001)
    assert history.history["sparsity"][0] < 0.8
    assert pruned_acc >= 0.95
    assert pruned_acc >= plain_acc - 0.02, (pruned_acc, plain_acc)


@pytest.mark.parametrize("kind", sorted(ZOO))
def test_every_model_kind_is_pruned_in_place(kind, digits_small):
    (x, y), _ = digits_small
    model = compile_classifier(ZOO[kind](), 1e-2)
    optimizer = model.optimizer
    names = [layer.name for layer in model.layers]
    history = model.fit(
        x,
        y,
        batch_size=128,
        epochs=2,
        verbose=0,
        callbacks=[MagnitudePruning(ConstantSparsity(0.5, frequency=5))],
    )
    assert model.optimizer is optimizer
    assert [layer.name for layer in model.layers] == names
    report = sparsity_report(model)
    assert len(report.layers) >= 3
    for row in report.layers:
        assert row.zeros == round(0.5 * row.size), row
    assert history.history["sparsity"] == pytest.approx([0.5, 0.5], abs=1e-3)
    # Only kernels carry masks; biases and BatchNorm are left dense.
    for v in model.weights:
        assert (v.constraint is not None) == (v.name in KERNEL_NAMES), v.path


@pytest.mark.slow
def test_keras_applications_backbone_is_pruned_with_its_depthwise_kernels(
    digits,
):
    (x, y), _ = digits
    x = np.repeat(x[:128], 3, axis=-1)
    backbone = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3),
        alpha=0.35,
        include_top=False,
        weights=None,
        pooling="avg",
    )
    model = keras.Sequential([backbone, keras.layers.Dense(10)])
    compile_classifier(model)
    model.fit(
        x,
        y[:128],
        epochs=1,
        batch_size=32,
        verbose=0,
        callbacks=[MagnitudePruning(one_shot(0.5))],
    )
    report = sparsity_report(model)
    depthwise = [r for r in report.layers if r.path.endswith("depthwise")]
    assert len(report.layers) == 53 and len(depthwise) == 17
    assert report.layers[0].path == "mobilenetv2_0.35_32/Conv1"
    for row in report.layers:
        assert row.sparsity == pytest.approx(0.5, abs=0.01), row


def test_nested_model_paths_and_filters_on_inner_layers(digits_small):
    (x, y), _ = digits_small
    model = compile_classifier(ZOO["nested"]())
    pruning = MagnitudePruning(one_shot(0.6), filters=r"^body/")
    model.fit(x, y, epochs=1, verbose=0, callbacks=[pruning])
    report = sparsity_report(model, filters=r"^body/")
    assert [(r.path, round(r.sparsity, 2)) for r in report.layers] == [
        ("body/conv2d", 0.6)
    ]
    assert np.all(model.get_layer("head").kernel.numpy() != 0)


def test_multi_head_attention_projections_are_pruned_and_stay_zero():
    # MultiHeadAttention's EinsumDense projections are its own sub-layers,
    # not leaves of the model: pruned at `attention/query` etc.
    rng = np.random.default_rng(0)
    x = rng.integers(1, 50, (256, 16)).astype("int32")
    y = (np.sum(x == 1, axis=1) > np.sum(x == 2, axis=1)).astype("int32")
    inputs = keras.Input((16,), dtype="int32")
    h = keras.layers.Embedding(50, 16)(inputs)
    h = h + keras.layers.MultiHeadAttention(2, 8, name="attention")(h, h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    model = compile_classifier(keras.Model(inputs, keras.layers.Dense(2)(h)))
    pruning = MagnitudePruning(one_shot(0.5), filters=r"^attention/")
    model.fit(x, y, epochs=2, verbose=0, callbacks=[pruning])
    report = sparsity_report(model, filters=r"^attention/")
    assert [(r.path, r.sparsity) for r in report.layers] == [
        (f"attention/{name}", 0.5)
        for name in ("query", "key", "value", "attention_output")
    ]
    attention = model.get_layer("attention")
    for dense in (attention.query_dense, attention.output_dense):
        assert np.mean(dense.kernel.numpy() == 0) == 0.5


def test_weights_are_untouched_before_pruning_begins(digits_small):
    (x, y), _ = digits_small
    model = ZOO["functional"]()
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = kernels(model)
    pruning = MagnitudePruning(ConstantSparsity(0.8, begin_step=1000))
    history = model.fit(
        x[:256], y[:256], epochs=1, verbose=0, callbacks=[pruning]
    )
    for path, weights in kernels(model).items():
        np.testing.assert_array_equal(weights, before[path])
    assert history.history["sparsity"] == [0.0]
    assert sparsity_report(model).sparsity == 0.0


# ----------------------------------------- zeros kept through every mode


def _train_keeping_masks(model, data):
    (x, y), _ = data
    x, y = x[:512], y[:512]
    pruning = MagnitudePruning(one_shot(0.7))
    model.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[pruning])
    masks = zero_masks(model)
    before = kernels(model)
    model.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[pruning])
    after = kernels(model)
    return masks, before, after


def _assert_masks_kept(masks, before, after):
    assert masks
    for path, mask in masks.items():
        assert mask.mean() == pytest.approx(0.7, abs=0.01), path
        assert np.all(after[path][mask] == 0), path
        assert np.all(after[path][~mask] != 0), path
        # The other weights really trained.
        assert not np.allclose(after[path][~mask], before[path][~mask])


@pytest.mark.parametrize(
    "mode",
    [
        "adam",
        pytest.param("steps_per_execution", marks=ON_STEPS_PER_EXECUTION),
        "jit_compile",
        "mixed_precision",
    ],
)
def test_masked_weights_stay_zero_under_training_mode(mode, digits_small):
    policy = keras.mixed_precision.global_policy().name
    try:
        if mode == "mixed_precision":
            keras.mixed_precision.set_global_policy("mixed_float16")
        model = models.residual_cnn((8, 8, 1))
        compile_classifier(
            model,
            1e-2,
            steps_per_execution=4 if mode == "steps_per_execution" else 1,
            jit_compile=mode == "jit_compile",
        )
        if mode == "mixed_precision":
            assert model.layers[1].compute_dtype == "float16"
        _assert_masks_kept(*_train_keeping_masks(model, digits_small))
    finally:
        keras.mixed_precision.set_global_policy(policy)


def test_masked_weights_stay_zero_under_mirrored_strategy(
    mirrored_strategy, digits_small
):
    with mirrored_strategy.scope():
        model = compile_classifier(models.residual_cnn((8, 8, 1)), 1e-2)
    masks, before, after = _train_keeping_masks(model, digits_small)
    _assert_masks_kept(masks, before, after)
    for variable in model.weights:
        if variable.path in masks:
            replicas = mirrored_strategy.experimental_local_results(
                variable.value
            )
            assert len(replicas) == 2
            for replica in replicas:
                assert np.all(replica.numpy()[masks[variable.path]] == 0)


@ON_STEPS_PER_EXECUTION
def test_steps_per_execution_reaches_the_same_schedule(digits_small):
    (x, y), _ = digits_small
    model = compile_classifier(ZOO["sequential"](), steps_per_execution=4)
    schedule = PolynomialDecay(0.0, 0.6, begin_step=0, end_step=30, frequency=7)
    history = model.fit(
        x,
        y,
        batch_size=64,
        epochs=3,
        verbose=0,
        callbacks=[MagnitudePruning(schedule)],
    )
    assert int(model.optimizer.iterations.numpy()) == 66
    assert history.history["sparsity"][-1] == pytest.approx(0.6, abs=1e-3)
    assert sparsity_report(model).sparsity == pytest.approx(0.6, abs=1e-3)


# ------------------------------------------------------- resume and save


def test_fit_called_again_keeps_its_train_function_and_the_zeros(
    digits_small,
):
    """A loop of `fit` calls (one epoch each, as notebooks and the
    alternating benchmarks do) keeps the compiled train function: on JAX
    a rebuilt one is traced and compiled again at every call (about 6 s
    on the demo CNN, 5x a plain epoch). The zeros hold and the schedule
    goes on across the calls."""
    (x, y), _ = digits_small
    x, y = x[:256], y[:256]  # 8 steps a fit
    keras.utils.set_random_seed(0)
    model = compile_classifier(ZOO["sequential"]())
    schedule = PolynomialDecay(0.0, 0.6, begin_step=0, end_step=24, frequency=4)
    pruning = MagnitudePruning(schedule)
    kwargs = dict(batch_size=32, epochs=1, callbacks=[pruning], verbose=0)
    model.fit(x, y, **kwargs)
    first = model.train_function
    before = zero_masks(model)
    assert 0.0 < np.mean([m.mean() for m in before.values()]) < 0.6
    for _ in range(3):
        model.fit(x, y, **kwargs)
        assert model.train_function is first
    for path, mask in zero_masks(model).items():
        assert np.all(mask[before[path]]), path  # pruned weights stay pruned
        assert mask.mean() == pytest.approx(0.6, abs=0.01), path


def test_resumed_fit_gives_identical_masks_and_weights(digits_small):
    (x, y), _ = digits_small
    # 43 steps an epoch: the run stops at step 86, mid-schedule.
    schedule = PolynomialDecay(
        0.0, 0.8, begin_step=0, end_step=130, frequency=9
    )
    kwargs = dict(batch_size=32, shuffle=False, verbose=0)

    keras.utils.set_random_seed(0)
    straight = compile_classifier(ZOO["sequential"]())
    straight.fit(
        x, y, epochs=4, callbacks=[MagnitudePruning(schedule)], **kwargs
    )

    keras.utils.set_random_seed(0)
    resumed = compile_classifier(ZOO["sequential"]())
    resumed.fit(
        x, y, epochs=2, callbacks=[MagnitudePruning(schedule)], **kwargs
    )
    stopped = zero_masks(resumed)
    # A new callback (as after a restart) picks the masks up again.
    second = MagnitudePruning(schedule)
    second.set_model(resumed)
    second.on_train_begin()
    for target, mask in zip(second._targets, stopped.values()):
        np.testing.assert_array_equal(
            target.variable.constraint.mask.numpy() == 0, mask
        )
    resumed.fit(x, y, epochs=4, initial_epoch=2, callbacks=[second], **kwargs)

    final = list(zero_masks(straight).values())
    for mask, done, before in zip(
        zero_masks(resumed).values(), final, stopped.values()
    ):
        np.testing.assert_array_equal(mask, done)
        assert np.all(mask[before])  # pruned weights stay pruned
        assert mask.mean() == pytest.approx(0.8, abs=0.01)
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_save_and_load_keep_zeros_and_resume(tmp_path, digits_small):
    (x, y), (x_test, _) = digits_small
    x, y = x[:512], y[:512]
    model = compile_classifier(models.residual_cnn((8, 8, 1)))
    schedule = PolynomialDecay(0.0, 0.7, begin_step=0, end_step=16, frequency=4)
    model.fit(
        x,
        y,
        batch_size=64,
        epochs=1,
        verbose=0,
        callbacks=[MagnitudePruning(schedule)],
    )
    path = os.path.join(tmp_path, "pruned.keras")
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom objects needed
    assert all(v.constraint is None for v in loaded.weights)
    masks = zero_masks(model)
    for p, mask in zero_masks(loaded).items():
        np.testing.assert_array_equal(mask, masks[p])
    np.testing.assert_allclose(
        loaded.predict(x_test, verbose=0),
        model.predict(x_test, verbose=0),
        atol=1e-5,
    )
    # The reloaded optimizer resumes the schedule at step 8.
    assert int(loaded.optimizer.iterations.numpy()) == 8
    history = loaded.fit(
        x,
        y,
        batch_size=64,
        epochs=2,
        verbose=0,
        callbacks=[MagnitudePruning(schedule)],
    )
    assert history.history["sparsity"][-1] == pytest.approx(0.7, abs=1e-3)
    for p, mask in zero_masks(loaded).items():
        assert np.all(mask[masks[p]]), p


# ------------------------------------------------------------- patterns


def dense_model():
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu", name="hidden"),
            keras.layers.Dense(10, name="head"),
        ]
    )


def test_two_four_pattern_prunes_two_of_every_four_inputs(digits_small):
    (x, y), _ = digits_small
    x = x.reshape(len(x), -1)
    conv = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, name="stem"),  # input axis 1: skipped
            keras.layers.Conv2D(12, 3, name="conv"),  # input axis 8
            keras.layers.Flatten(),
            keras.layers.Dense(10, name="head"),  # input axis 192
        ]
    )
    for model, data in ((dense_model(), x), (conv, x.reshape(-1, 8, 8, 1))):
        compile_classifier(model, 1e-2)
        model.fit(
            data,
            y,
            epochs=2,
            verbose=0,
            callbacks=[
                MagnitudePruning(
                    PolynomialDecay(0.0, 0.5, 0, 20, frequency=5), pattern="2:4"
                )
            ],
        )
        report = sparsity_report(model, pattern="2:4")
        for layer in model.layers:
            if not any(r.path == layer.name for r in report.layers):
                continue
            kernel = layer.kernel.numpy()
            groups = np.moveaxis(kernel, -2, -1).reshape(-1, 4)
            assert np.all(np.sum(groups == 0, axis=1) == 2), layer.name
    assert [r.path for r in report.layers] == ["conv", "head"]
    assert report.skipped == [
        (
            "stem/kernel",
            "pattern '2:4' needs the input axis (size 1) to be a multiple of 4",
        )
    ]
    assert np.all(conv.get_layer("stem").kernel.numpy() != 0)


def test_two_four_pattern_skips_depthwise_kernels_in_the_report():
    model = models.small_cnn()
    report = sparsity_report(model, pattern="2:4")
    skipped = dict(report.skipped)
    assert "reduction" in skipped["dw2/kernel"]
    assert "multiple of 4" in skipped["conv1/kernel"]
    assert [r.path for r in report.layers] == ["pw2", "conv4", "logits"]


def test_block_pattern_zeroes_whole_blocks(digits_small):
    (x, y), _ = digits_small
    model = compile_classifier(dense_model(), 1e-2)
    model.fit(
        x.reshape(len(x), -1),
        y,
        epochs=2,
        verbose=0,
        callbacks=[MagnitudePruning(one_shot(0.5), pattern=(4, 2))],
    )
    kernel = model.get_layer("hidden").kernel.numpy()  # (64, 32)
    blocks = kernel.reshape(16, 4, 16, 2).transpose(0, 2, 1, 3)
    zeros = np.all(blocks == 0, axis=(2, 3))
    nonzero = np.all(blocks != 0, axis=(2, 3))
    assert np.all(zeros | nonzero)  # never a partial block
    assert zeros.mean() == pytest.approx(0.5)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_very_high_sparsity_never_zeroes_a_whole_kernel(scope):
    # 0.99 of a 40-weight kernel rounds to all 40: the largest weight stays,
    # as in tensorflow-model-optimization.
    model = keras.Sequential(
        [
            keras.Input((10,)),
            keras.layers.Dense(4, name="thin"),
            keras.layers.Dense(400, name="wide"),
        ]
    )
    model.compile("sgd", "mse")
    thin = model.get_layer("thin").kernel
    thin.assign(thin.numpy() * 1e-3)  # globally, the smallest weights
    largest = np.unravel_index(np.argmax(np.abs(thin.numpy())), thin.shape)
    x, y = np.ones((8, 10)), np.zeros((8, 400))
    model.fit(
        x,
        y,
        epochs=1,
        verbose=0,
        callbacks=[MagnitudePruning(one_shot(0.99), scope=scope)],
    )
    kept = thin.numpy() != 0
    assert kept.sum() == 1 and kept[largest]
    assert np.sum(model.get_layer("wide").kernel.numpy() != 0) >= 1


def test_global_scope_ranks_across_layers(digits_small):
    (x, y), _ = digits_small
    model = compile_classifier(dense_model())
    model.build((None, 64))
    # Make the head's weights ten times larger than the hidden layer's.
    head = model.get_layer("head").kernel
    head.assign(head.numpy() * 10)
    model.fit(
        x.reshape(len(x), -1),
        y,
        epochs=1,
        verbose=0,
        callbacks=[MagnitudePruning(one_shot(0.6), scope="global")],
    )
    report = sparsity_report(model)
    assert report.sparsity == pytest.approx(0.6, abs=1e-3)
    by_path = {r.path: r.sparsity for r in report.layers}
    assert by_path["hidden"] > 0.65 and by_path["head"] < 0.3


def test_logs_sparsity_per_layer_when_asked_and_prints_when_verbose(
    digits_small, capsys, tmp_path
):
    (x, y), _ = digits_small
    model = compile_classifier(ZOO["sequential"]())
    csv = os.path.join(tmp_path, "log.csv")
    pruning = MagnitudePruning(one_shot(0.5), log_layers=True)
    history = model.fit(
        x,
        y,
        epochs=1,
        verbose=0,
        callbacks=[pruning, keras.callbacks.CSVLogger(csv)],
    )
    assert history.history["sparsity/dense/kernel"] == [pytest.approx(0.5)]
    assert history.history["sparsity/conv2d/kernel"] == [pytest.approx(0.5)]
    with open(csv) as f:
        assert "sparsity" in f.readline()
    assert capsys.readouterr().out == ""
    model.fit(
        x,
        y,
        epochs=1,
        verbose=0,
        callbacks=[MagnitudePruning(one_shot(0.5), verbose=1)],
    )
    assert capsys.readouterr().out == ""  # no update step past step 0
    model.fit(
        x,
        y,
        epochs=1,
        verbose=0,
        callbacks=[
            MagnitudePruning(ConstantSparsity(0.6, frequency=5), verbose=1)
        ],
    )
    out = capsys.readouterr().out
    assert "MagnitudePruning: step 90: sparsity 0.600 (target 0.600)" in out


# -------------------------------------------------------------- export


@pytest.mark.slow
def test_pruned_model_exports_to_smaller_int8_tflite(
    trained_cnn, digits, tmp_path
):
    export = pytest.importorskip("keras_slim.export")
    (x, y), _ = digits
    paths = {
        name: os.path.join(tmp_path, f"{name}.tflite")
        for name in ("float32", "dense_int8", "pruned_int8")
    }
    export.export_tflite(trained_cnn, paths["float32"], quantization="float32")
    export.export_tflite(
        trained_cnn, paths["dense_int8"], representative_data=x[:100]
    )
    trained_cnn.fit(
        x,
        y,
        batch_size=64,
        epochs=2,
        verbose=0,
        callbacks=[MagnitudePruning(one_shot(0.8), scope="global")],
    )
    export.export_tflite(
        trained_cnn,
        paths["pruned_int8"],
        quantization="int8",
        representative_data=x[:100],
    )
    info = {name: export.inspect_tflite(p) for name, p in paths.items()}
    assert info["pruned_int8"].int8_only, info["pruned_int8"].float_ops
    with open(paths["pruned_int8"], "rb") as f:
        assert info["pruned_int8"].gzip_bytes == pytest.approx(
            len(gzip.compress(f.read())), rel=0.05
        )
    pruned = info["pruned_int8"].gzip_bytes
    # Measured: float32 ~85 kB, dense int8 gzip ~0.27x of it, pruned ~0.14x.
    assert pruned < 0.6 * info["dense_int8"].gzip_bytes
    assert pruned / info["float32"].bytes < 0.16


# ------------------------------------------------------------ bad input


def test_unknown_pattern_raises():
    with pytest.raises(ValueError, match=r"`pattern`.*pattern='3x3'"):
        MagnitudePruning(one_shot(0.5), pattern="3x3")
    with pytest.raises(ValueError, match=r"pattern=\(0, 4\)"):
        MagnitudePruning(one_shot(0.5), pattern=(0, 4))
    with pytest.raises(ValueError, match=r"pattern='4:2'"):
        MagnitudePruning(one_shot(0.5), pattern="4:2")


def test_unknown_scope_and_bad_schedule_raise():
    with pytest.raises(ValueError, match=r"`scope`.*scope='model'"):
        MagnitudePruning(one_shot(0.5), scope="model")
    with pytest.raises(TypeError, match=r"`schedule`.*schedule=0.5"):
        MagnitudePruning(0.5)
    with pytest.raises(TypeError, match=r"`filters`"):
        MagnitudePruning(one_shot(0.5), filters=3)


def test_schedule_beyond_what_two_four_reaches_raises():
    with pytest.raises(ValueError, match=r"\[0, 0.5\] for pattern '2:4'"):
        MagnitudePruning(PolynomialDecay(0.0, 0.8, 0, 100), pattern="2:4")


def _fit_raises(model, digits_small, pruning, match):
    (x, y), _ = digits_small
    weights = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match=match):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[pruning])
    assert int(model.optimizer.iterations.numpy()) == 0  # before training
    for a, b in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_filters_matching_nothing_raise_before_training(digits_small):
    model = compile_classifier(ZOO["sequential"]())
    _fit_raises(
        model,
        digits_small,
        MagnitudePruning(one_shot(0.5), filters="no_such_layer"),
        r"select at least one prunable layer.*filters='no_such",
    )
    _fit_raises(
        model,
        digits_small,
        MagnitudePruning(one_shot(0.5), filters="flatten"),
        r"select at least one prunable layer",
    )


def test_two_four_on_selected_layer_with_bad_input_axis_raises(digits_small):
    model = compile_classifier(ZOO["sequential"]())  # conv2d has 1 input
    _fit_raises(
        model,
        digits_small,
        MagnitudePruning(one_shot(0.5), filters="conv2d", pattern="2:4"),
        r"'conv2d'.*multiple of 4.*pattern='2:4'",
    )


def test_unbuilt_model_raises():
    model = keras.Sequential([keras.layers.Dense(4)])
    with pytest.raises(ValueError, match="to be built"):
        sparsity_report(model)
    pruning = MagnitudePruning(one_shot(0.5))
    pruning.set_model(model)
    with pytest.raises(ValueError, match="to be built"):
        pruning.on_train_begin()


def test_sparsity_report_rejects_non_keras_models():
    with pytest.raises(TypeError, match="Keras 3"):
        sparsity_report("model.keras")


def test_schedule_that_ended_before_fit_is_refused_not_silently_skipped(
    digits_small,
):
    (x, y), _ = digits_small
    model = compile_classifier(ZOO["sequential"]())
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)  # 22 steps taken
    weights = [w.copy() for w in model.get_weights()]
    late = MagnitudePruning(PolynomialDecay(0.0, 0.8, 0, 10, frequency=5))
    with pytest.raises(
        ValueError,
        match=r"ended at step 10.*already taken "
        r"22 steps.*begin_step=22, end_step=32",
    ):
        model.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=[late])
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)
    start = int(model.optimizer.iterations)
    on_time = MagnitudePruning(
        PolynomialDecay(0.0, 0.8, start, start + 10, frequency=5)
    )
    model.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=[on_time])
    assert sparsity_report(model).sparsity == pytest.approx(0.8, abs=0.01)
