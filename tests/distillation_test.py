"""Knowledge distillation: the Distiller wrapper model, its loss, feature
distillation, the teacher cache, saving, and composition with pruning,
quantization-aware training and int8 export."""

import keras
import numpy as np
import pytest
from conftest import accuracy
from conftest import compile_classifier
from conftest import subclassed_model

from keras_slim import models
from keras_slim.distillation import Distiller
from keras_slim.distillation import cache_teacher_outputs
from keras_slim.distillation import soft_target_loss


def _student(input_shape=(32, 32, 1), seed=0, hidden=32, name="student"):
    """A tiny Dense student: 4x4 average pooling, one hidden layer."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.AveragePooling2D(4, name="pool"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(hidden, activation="relu", name="hidden"),
            keras.layers.Dense(10, name="logits"),
        ],
        name=name,
    )


def _dense(
    input_shape=(8, 8, 1),
    hidden=16,
    outputs=10,
    name="dense",
    activation=None,
):
    head = "probabilities" if activation == "softmax" else "logits"
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(hidden, activation="relu", name="hidden"),
            keras.layers.Dense(outputs, activation=activation, name=head),
        ],
        name=name,
    )


def _compile(model, learning_rate=1e-3, **kwargs):
    return compile_classifier(model, learning_rate, **kwargs)


# ------------------------------------------------------------- the loss


def test_soft_target_loss_is_t_squared_kl_of_softened_distributions():
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(5, 10)).astype("float32") * 3
    student = rng.normal(size=(5, 10)).astype("float32")

    def softmax(z):
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    p, q = softmax(teacher / 4.0), softmax(student / 4.0)
    expected = 16.0 * np.sum(p * np.log(p / q), axis=-1)
    got = np.asarray(soft_target_loss(teacher, student, temperature=4.0))
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_probability_outputs_distill_like_their_logits():
    rng = np.random.default_rng(1)
    teacher = rng.normal(size=(6, 10)).astype("float32") * 2
    student = rng.normal(size=(6, 10)).astype("float32")
    probs = keras.ops.softmax
    from_logits = soft_target_loss(teacher, student, temperature=3.0)
    from_probs = soft_target_loss(
        probs(teacher), probs(student), temperature=3.0, from_logits=False
    )
    np.testing.assert_allclose(from_probs, from_logits, rtol=1e-3, atol=1e-5)


def test_mse_loss_compares_logits_whatever_the_temperature():
    teacher = np.array([[2.0, 0.0, -2.0]], "float32")
    student = np.zeros((1, 3), "float32")
    for temperature in (1.0, 5.0):
        loss = soft_target_loss(
            teacher, student, temperature, distillation_loss="mse"
        )
        np.testing.assert_allclose(loss, [8.0 / 3.0], rtol=1e-6)


# ----------------------------------------------------------- bad input


@pytest.fixture
def pair():
    return _dense(name="teacher"), _dense(name="student")


@pytest.mark.parametrize("temperature", [0, -1.0])
def test_non_positive_temperature_is_refused(pair, temperature):
    with pytest.raises(ValueError, match="temperature"):
        Distiller(*pair, temperature=temperature)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_zero_one_is_refused(pair, alpha):
    with pytest.raises(ValueError, match=r"Expected `alpha` in \[0, 1\]"):
        Distiller(*pair, alpha=alpha)


def test_teacher_that_is_not_a_keras_model_is_refused(pair):
    with pytest.raises(TypeError, match="Expected `teacher`"):
        Distiller("teacher.keras", pair[1])
    with pytest.raises(TypeError, match="Expected `student`"):
        Distiller(pair[0], lambda x: x)


def test_unbuilt_student_is_refused(pair):
    unbuilt = keras.Sequential([keras.layers.Dense(10)])
    with pytest.raises(ValueError, match="Expected `student` to be built"):
        Distiller(pair[0], unbuilt)


def test_mismatched_output_shapes_are_refused():
    teacher = _dense(outputs=10, name="teacher")
    student = _dense(outputs=5, name="student")
    with pytest.raises(ValueError, match=r"outputs of the same shape"):
        Distiller(teacher, student)


def test_mismatched_subclassed_outputs_are_refused_before_any_update(
    digits_small,
):
    (x, y), _ = digits_small
    teacher = _dense(outputs=7, name="teacher")
    student = subclassed_model()
    before = [w.copy() for w in student.get_weights()]
    distiller = _compile(Distiller(teacher, student, from_logits=True))
    with pytest.raises(ValueError, match=r"outputs of the same shape"):
        distiller.fit(x, y, epochs=1, verbose=0)
    for a, b in zip(before, student.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_feature_pair_naming_a_missing_layer_is_refused(pair):
    with pytest.raises(ValueError, match="No layer 'nope' in teacher"):
        Distiller(*pair, feature_pairs=[("nope", "hidden")])
    with pytest.raises(ValueError, match="No layer 'nope' in student"):
        Distiller(*pair, feature_pairs=[("hidden", "nope")])
    with pytest.raises(TypeError, match="feature_pairs"):
        Distiller(*pair, feature_pairs=["hidden"])


def test_feature_pairs_on_a_subclassed_model_are_refused():
    teacher = _dense(name="teacher")
    with pytest.raises(ValueError, match="Functional or Sequential"):
        Distiller(
            teacher,
            subclassed_model(),
            from_logits=True,
            feature_pairs=[("hidden", "x")],
        )


def test_unknown_distillation_loss_is_refused(pair):
    with pytest.raises(ValueError, match="distillation_loss"):
        Distiller(*pair, distillation_loss="kld")


def test_fit_without_labels_is_refused_when_alpha_is_positive(
    pair, digits_small
):
    (x, _), _ = digits_small
    distiller = _compile(Distiller(*pair, alpha=0.1))
    before = [w.copy() for w in pair[1].get_weights()]
    with pytest.raises(ValueError, match="needs labels when `alpha` > 0"):
        distiller.fit(x, epochs=1, verbose=0)
    teacher_outputs = cache_teacher_outputs(pair[0], x)
    with pytest.raises(ValueError, match="needs labels when `alpha` > 0"):
        distiller.fit(x, {"teacher_outputs": teacher_outputs}, verbose=0)
    for a, b in zip(before, pair[1].get_weights()):
        np.testing.assert_array_equal(a, b)


def test_compile_without_loss_is_refused_when_alpha_is_positive(
    pair, digits_small
):
    (x, y), _ = digits_small
    distiller = Distiller(*pair)
    distiller.compile("adam")
    with pytest.raises(ValueError, match="Expected a `loss` in `compile"):
        distiller.fit(x, y, epochs=1, verbose=0)


def test_unknown_target_keys_are_refused(pair, digits_small):
    (x, y), _ = digits_small
    distiller = _compile(Distiller(*pair))
    with pytest.raises(ValueError, match="'labels' and/or 'teacher_outputs'"):
        distiller.fit(x, {"labels": y, "teacher": y}, verbose=0)


def test_cache_teacher_outputs_refuses_bad_batch_size(pair):
    with pytest.raises(ValueError, match="batch_size"):
        cache_teacher_outputs(pair[0], np.zeros((4, 8, 8, 1)), batch_size=0)


# ------------------------------------------------------------- behaviour


def test_teacher_is_frozen_and_runs_in_inference_mode(digits):
    (x, y), _ = digits
    teacher = models.small_cnn(name="teacher")
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    student = _student()
    distiller = _compile(Distiller(teacher, student))
    distiller.fit(x[:256], y[:256], batch_size=64, epochs=1, verbose=0)
    assert teacher.trainable is False
    # BatchNorm moving statistics included: no training-mode call.
    for a, b in zip(teacher_weights, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert {id(v) for v in distiller.trainable_variables} == {
        id(v) for v in student.trainable_variables
    }


def test_metrics_and_predictions_are_the_students(digits_small):
    (x, y), (x_test, y_test) = digits_small
    teacher = _dense(name="teacher")
    student = _dense(name="student")
    distiller = _compile(Distiller(teacher, student))
    distiller.fit(x, y, batch_size=64, epochs=3, verbose=0)
    logs = distiller.evaluate(x_test, y_test, verbose=0, return_dict=True)
    student_logits = student.predict(x_test, verbose=0)
    assert logs["accuracy"] == pytest.approx(
        accuracy(student_logits, y_test), abs=1e-6
    )
    np.testing.assert_allclose(
        distiller.predict(x_test, verbose=0), student_logits, atol=1e-6
    )
    assert set(logs) == {"loss", "accuracy", "hard_loss", "distillation_loss"}


def test_cached_teacher_outputs_give_the_same_loss_as_the_teacher(
    digits_small,
):
    (x, y), _ = digits_small
    teacher = _dense(name="teacher")
    distiller = _compile(Distiller(teacher, _dense(name="student")))
    cached = cache_teacher_outputs(teacher, x, batch_size=100)
    assert cached.shape == (len(x), 10) and cached.dtype == np.float32
    live = distiller.evaluate(x, y, verbose=0, return_dict=True)
    from_cache = distiller.evaluate(
        x,
        {"labels": y, "teacher_outputs": cached},
        verbose=0,
        return_dict=True,
    )
    for key in ("loss", "hard_loss", "distillation_loss", "accuracy"):
        assert from_cache[key] == pytest.approx(live[key], rel=1e-5)


def test_cache_teacher_outputs_reads_batched_inputs_in_order(digits_small):
    import tensorflow as tf

    (x, y), _ = digits_small
    teacher = _dense(name="teacher")
    expected = cache_teacher_outputs(teacher, x, batch_size=100)

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return -(-len(x) // 50)

        def __getitem__(self, i):
            return x[i * 50 : (i + 1) * 50]

    for batched in (
        tf.data.Dataset.from_tensor_slices(x).batch(64),
        tf.data.Dataset.from_tensor_slices((x, y)).batch(64),
        Batches(),
    ):
        got = cache_teacher_outputs(teacher, batched)
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_training_from_the_cache_never_calls_the_teacher(digits_small):
    (x, y), _ = digits_small
    teacher = _dense(name="teacher")
    cached = cache_teacher_outputs(teacher, x)
    calls = []
    original_call = teacher.call

    def counting_call(*args, **kwargs):
        calls.append(1)
        return original_call(*args, **kwargs)

    teacher.call = counting_call
    distiller = _compile(Distiller(teacher, _dense(name="student")))
    history = distiller.fit(
        x,
        {"labels": y, "teacher_outputs": cached},
        batch_size=64,
        epochs=2,
        verbose=0,
    )
    assert calls == []
    assert (
        history.history["distillation_loss"][1]
        < (history.history["distillation_loss"][0])
    )


def test_alpha_zero_learns_from_the_teacher_alone_without_labels(
    digits_small, trained_dense
):
    (x, y), (x_test, y_test) = digits_small
    teacher = trained_dense
    for targets in (
        None,
        {"teacher_outputs": cache_teacher_outputs(teacher, x)},
    ):
        student = _dense(name="student")
        distiller = Distiller(teacher, student, alpha=0.0)
        distiller.compile(keras.optimizers.Adam(3e-3))
        history = distiller.fit(x, targets, batch_size=64, epochs=15, verbose=0)
        # No labels, no hard loss: the whole loss is the distillation term.
        assert history.history["hard_loss"] == [0.0] * 15
        np.testing.assert_allclose(
            history.history["loss"],
            history.history["distillation_loss"],
            rtol=1e-5,
        )
        acc = accuracy(student.predict(x_test, verbose=0), y_test)
        assert acc > 0.85, acc


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_logged_losses_match_a_numpy_reference_for_each_alpha(
    digits_small, trained_dense, alpha
):
    (x, y), _ = digits_small
    x, y = x[:256], y[:256]
    student = _dense(name="student")
    distiller = _compile(Distiller(trained_dense, student, alpha=alpha))
    logs = distiller.evaluate(x, y, batch_size=256, verbose=0, return_dict=True)

    def log_softmax(z):
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    t = trained_dense.predict(x, verbose=0).astype("float64")
    s = student.predict(x, verbose=0).astype("float64")
    hard = -np.mean(log_softmax(s)[np.arange(len(y)), y])
    p_t, log_q = log_softmax(t / 4.0), log_softmax(s / 4.0)
    soft = 16.0 * np.mean(np.sum(np.exp(p_t) * (p_t - log_q), axis=-1))
    assert hard > 1.0 and soft > 1.0  # an untrained student: both large
    assert logs["distillation_loss"] == pytest.approx(soft, rel=1e-4)
    if alpha > 0:
        assert logs["hard_loss"] == pytest.approx(hard, rel=1e-4)
    assert logs["loss"] == pytest.approx(
        alpha * hard + (1 - alpha) * soft, rel=1e-4
    )


@pytest.fixture(scope="module")
def trained_dense_weights(digits_small):
    (x, y), _ = digits_small
    keras.utils.set_random_seed(0)
    teacher = _compile(_dense(hidden=64, name="teacher"), 3e-3)
    teacher.fit(x, y, batch_size=64, epochs=30, verbose=0)
    return teacher.get_weights()


@pytest.fixture
def trained_dense(trained_dense_weights):
    teacher = _dense(hidden=64, name="teacher")
    teacher.set_weights(trained_dense_weights)
    return teacher


def test_probability_outputs_train_like_logit_outputs(digits_small):
    (x, y), _ = digits_small
    results = []
    for from_logits in (True, False):
        keras.utils.set_random_seed(0)
        teacher = _dense(name="teacher")
        student = _dense(name="student")
        if not from_logits:
            teacher = keras.Sequential([teacher, keras.layers.Softmax()])
            student_probs = keras.Sequential([student, keras.layers.Softmax()])
        distiller = Distiller(
            teacher,
            student if from_logits else student_probs,
            from_logits=from_logits,
        )
        distiller.compile(
            keras.optimizers.Adam(1e-3),
            keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
        )
        history = distiller.fit(
            x, y, batch_size=64, epochs=2, verbose=0, shuffle=False
        )
        results.append(history.history["distillation_loss"])
    np.testing.assert_allclose(results[0], results[1], rtol=1e-3)


def _softmax_head(model, name):
    """`model` (a `_dense`) with the same weights and a softmax head."""
    hidden = model.get_layer("hidden").units
    twin = _dense(hidden=hidden, name=name, activation="softmax")
    twin.set_weights(model.get_weights())
    return twin


def test_softmax_headed_models_distill_exactly_as_their_logits(
    digits_small, trained_dense
):
    """A teacher and student ending in `Dense(10, activation="softmax")`
    learn what their logits twins learn; probabilities taken as logits
    (what `from_logits=True` did to them) give near-uniform soft targets
    and a student that stays unsure."""
    (x, _), (x_test, y_test) = digits_small
    teachers = {
        "logits": trained_dense,
        "softmax": _softmax_head(trained_dense, "teacher_probs"),
    }
    results = {}
    for run in ("logits", "softmax", "probabilities_as_logits"):
        keras.utils.set_random_seed(1)  # the same initial student each run
        student = _dense(name="student")
        if run == "softmax":
            student = _softmax_head(student, "student_probs")
        teacher = teachers["logits" if run != "softmax" else "softmax"]
        distiller = Distiller(teacher, student, alpha=0.0)
        assert distiller.student_from_logits == (run != "softmax")
        assert distiller.teacher_from_logits == (run != "softmax")
        source = teachers["softmax" if run != "logits" else "logits"]
        distiller.compile(keras.optimizers.Adam(3e-3))
        history = distiller.fit(
            x,
            {"teacher_outputs": cache_teacher_outputs(source, x)},
            batch_size=64,
            epochs=15,
            verbose=0,
            shuffle=False,
        )
        outputs = student.predict(x_test, verbose=0)
        if run != "softmax":
            outputs = keras.ops.convert_to_numpy(keras.ops.softmax(outputs))
        results[run] = {
            "accuracy": accuracy(outputs, y_test),
            "confidence": float(np.mean(outputs.max(axis=-1))),
            "loss": history.history["distillation_loss"][-1],
        }
    print(results)
    logits, softmax = results["logits"], results["softmax"]
    broken = results["probabilities_as_logits"]
    assert logits["accuracy"] > 0.88, results
    assert softmax["accuracy"] == pytest.approx(logits["accuracy"], abs=0.01)
    assert softmax["loss"] == pytest.approx(logits["loss"], rel=1e-2)
    assert softmax["confidence"] == pytest.approx(
        logits["confidence"], abs=0.01
    )
    # The failure the head detection prevents, measured by the same test:
    # a student that stays unsure. Its accuracy is no sign: over student
    # seeds 1-3 it was 0.86 to 0.95 on JAX (0.018 above the logits
    # student's for seed 1, 0.026 to 0.062 below for the others), 0.88 on
    # TensorFlow (seed 1); its confidence 0.16 to 0.20 everywhere.
    assert broken["confidence"] < 0.5 < logits["confidence"], results


def test_keras_applications_classifier_head_is_read_as_probabilities():
    teacher = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10
    )
    inputs = keras.Input((32, 32, 3))
    hidden = keras.layers.GlobalAveragePooling2D()(inputs)
    student = keras.Model(inputs, keras.layers.Dense(10)(hidden))
    distiller = Distiller(teacher, student)
    assert distiller.teacher_from_logits is False
    assert distiller.student_from_logits is True
    with pytest.raises(
        ValueError,
        match=r"teacher 'mobilenetv2_0.35_32' ends in layer 'predictions'"
        r".*applies a softmax.*from_logits=None.*"
        r"classifier_activation=None.*Received: from_logits=True",
    ):
        Distiller(teacher, student, from_logits=True)


@pytest.mark.parametrize("head", ["softmax_layer", "activation", "nested"])
def test_final_softmax_layers_are_read_as_probabilities(head):
    logits = _dense(name="teacher")
    if head == "softmax_layer":
        probs = keras.Sequential([logits, keras.layers.Softmax(name="sm")])
    elif head == "activation":
        probs = keras.Sequential(
            [logits, keras.layers.Activation("softmax", name="sm")]
        )
    else:
        inner = keras.Sequential([logits, keras.layers.Softmax(name="sm")])
        inputs = keras.Input((8, 8, 1))
        probs = keras.Model(inputs, inner(inputs), name="outer")
    distiller = Distiller(probs, _dense(name="student"))
    assert distiller.teacher_from_logits is False
    with pytest.raises(ValueError, match="ends in layer 'sm'"):
        Distiller(probs, _dense(name="student"), from_logits=True)


def test_a_sigmoid_head_is_refused_before_training(pair):
    sigmoid = _dense(name="student", activation="sigmoid")
    with pytest.raises(
        ValueError,
        match=r"student 'student' ends in layer 'logits' with a sigmoid.*"
        r"activation=None",
    ):
        Distiller(pair[0], sigmoid)


def test_from_logits_false_on_a_logits_head_is_refused(pair):
    with pytest.raises(
        ValueError,
        match=r"Expected probabilities from `teacher`.*ends in layer "
        r"'logits'.*Received: from_logits=False",
    ):
        Distiller(*pair, from_logits=False)


@pytest.mark.parametrize("head", ["softmax", "logits"])
def test_a_hard_loss_that_misreads_the_student_is_refused_before_any_update(
    pair, digits_small, head
):
    (x, y), _ = digits_small
    if head == "softmax":
        student = _dense(name="student", activation="softmax")
        teacher = _softmax_head(pair[0], "teacher_probs")
        wrong = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        match = (
            r"student 'student' ends in layer 'probabilities', which applies "
            r"a softmax, but the loss SparseCategoricalCrossentropy has "
            r"from_logits=True. Compile it with `from_logits=False`"
        )
    else:
        student, teacher = pair[1], pair[0]
        wrong = "sparse_categorical_crossentropy"
        match = (
            r"ends in layer 'logits', which applies no softmax, but the loss "
            r"sparse_categorical_crossentropy has from_logits=False"
        )
    before = [w.copy() for w in student.get_weights()]
    distiller = Distiller(teacher, student)
    distiller.compile(keras.optimizers.Adam(1e-2), wrong)
    with pytest.raises(ValueError, match=match):
        distiller.fit(x, y, epochs=1, verbose=0)
    for a, b in zip(before, student.get_weights()):
        np.testing.assert_array_equal(a, b)
    # The right loss trains; with alpha=0 the hard loss is not used at all.
    distiller.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(
            from_logits=head == "logits"
        ),
    )
    distiller.fit(x, y, epochs=1, verbose=0)
    unweighted = Distiller(
        teacher,
        _dense(
            name="s2", activation=("softmax" if head == "softmax" else None)
        ),
        alpha=0.0,
    )
    unweighted.compile("adam", wrong)
    unweighted.fit(x, y, epochs=1, verbose=0)


def test_a_single_class_output_is_refused(pair):
    one = _dense(outputs=1, name="teacher"), _dense(outputs=1, name="s")
    with pytest.raises(ValueError, match="at least 2 classes"):
        Distiller(*one)


def test_an_unreadable_head_is_refused_until_from_logits_says_it(
    digits_small,
):
    (x, y), _ = digits_small
    teacher = _dense(name="teacher")
    with pytest.raises(
        ValueError,
        match=r"Cannot tell whether `student` 'subclassed_zoo' outputs "
        r"logits or probabilities: it is a subclassed model.*"
        r"from_logits=\(teacher, student\).*Received: from_logits=None",
    ):
        Distiller(teacher, subclassed_model())
    inputs = keras.Input((8, 8, 1))
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(
        keras.layers.Conv2D(10, 1)(inputs)
    )
    with pytest.raises(
        ValueError,
        match=r"last layer 'gap' \(GlobalAveragePooling2D\) has no "
        r"activation to read",
    ):
        Distiller(keras.Model(inputs, pooled), _dense(name="student"))

    # Said for both models, or per model with None where it can be read.
    assert Distiller(teacher, subclassed_model(), from_logits=True)
    probs = keras.Sequential([_dense(name="t"), keras.layers.Softmax()])
    distiller = Distiller(probs, subclassed_model(), from_logits=(None, True))
    assert distiller.teacher_from_logits is False
    assert distiller.student_from_logits is True
    assert distiller.get_config()["from_logits"] == [None, True]
    _compile(distiller).fit(x[:128], y[:128], epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"from_logits=\(False, True\)"):
        Distiller(teacher, subclassed_model(), from_logits=(False, True))
    with pytest.raises(TypeError, match="a pair `\\(teacher, student\\)`"):
        Distiller(teacher, subclassed_model(), from_logits=(True,))
    with pytest.raises(TypeError, match="from_logits='yes'"):
        Distiller(teacher, subclassed_model(), from_logits="yes")


# --------------------------------------------------- feature distillation


def test_feature_distillation_projects_widths_and_leaves_student_alone(
    digits_small,
):
    (x, y), _ = digits_small
    teacher = _dense(hidden=64, name="teacher")
    student = _dense(hidden=16, name="student")
    params = student.count_params()
    distiller = _compile(
        Distiller(
            teacher,
            student,
            feature_pairs=[("hidden", "hidden")],
            feature_loss_weight=0.5,
        )
    )
    history = distiller.fit(x, y, batch_size=64, epochs=3, verbose=0)
    losses = history.history["feature_loss"]
    assert losses[-1] < losses[0]
    (projection,) = distiller.projections
    assert isinstance(projection, keras.layers.Dense)
    assert projection.kernel.shape == (16, 64)
    assert student.count_params() == params
    assert projection.kernel.path not in {v.path for v in student.weights}


def test_image_features_of_another_size_are_projected_and_resized(
    digits,
):
    (x, y), _ = digits
    teacher = models.small_cnn(name="teacher")  # relu1: 16x16x16
    inputs = keras.Input((32, 32, 1))
    h = keras.layers.Conv2D(4, 3, strides=4, padding="same", name="conv")(
        inputs
    )  # 8x8x4
    h = keras.layers.GlobalAveragePooling2D()(h)
    student = keras.Model(inputs, keras.layers.Dense(10)(h), name="student")
    distiller = _compile(
        Distiller(teacher, student, feature_pairs=[("relu1", "conv")])
    )
    history = distiller.fit(x[:128], y[:128], batch_size=64, verbose=0)
    assert np.isfinite(history.history["feature_loss"][0])
    (projection,) = distiller.projections
    assert [type(la).__name__ for la in projection.layers] == [
        "Conv2D",
        "Resizing",
    ]
    assert projection.compute_output_shape((None, 8, 8, 4)) == (
        None,
        16,
        16,
        16,
    )


# ------------------------------------------------------------- saving


def test_saved_distiller_reloads_with_the_student_weights(
    tmp_path, digits_small
):
    (x, y), (x_test, _) = digits_small
    teacher = _dense(hidden=64, name="teacher")
    student = _dense(name="student")
    distiller = _compile(
        Distiller(
            teacher,
            student,
            temperature=3.0,
            alpha=0.3,
            feature_pairs=[("hidden", "hidden")],
        )
    )
    distiller.fit(x, y, batch_size=64, epochs=1, verbose=0)
    path = tmp_path / "distiller.keras"
    distiller.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, Distiller)
    assert (loaded.temperature, loaded.alpha) == (3.0, 0.3)
    assert loaded.feature_pairs == [("hidden", "hidden")]
    assert loaded.teacher.trainable is False
    for a, b in zip(student.get_weights(), loaded.student.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(
        loaded.student.predict(x_test, verbose=0),
        student.predict(x_test, verbose=0),
        atol=1e-6,
    )
    # Still compiled: training resumes.
    loaded.fit(x, y, batch_size=64, epochs=1, verbose=0)


def test_config_round_trip_keeps_every_argument(pair):
    distiller = Distiller(
        *pair,
        temperature=2.5,
        alpha=0.7,
        from_logits=True,
        distillation_loss="mse",
        feature_pairs=[("hidden", "hidden")],
        feature_loss_weight=0.25,
        name="kd",
    )
    config = distiller.get_config()
    clone = Distiller.from_config(config)
    for key in (
        "temperature",
        "alpha",
        "from_logits",
        "distillation_loss",
        "feature_loss_weight",
        "name",
    ):
        assert getattr(clone, key) == getattr(distiller, key)
    assert clone.get_config() == config


# ------------------------------------------------ execution and strategy


@pytest.mark.backends(
    "tensorflow",
    "jax",
    reason="Keras refuses steps_per_execution > 1 on torch",
)
def test_steps_per_execution_gives_the_same_training(digits_small):
    (x, y), _ = digits_small
    weights = []
    for steps in (1, 4):
        keras.utils.set_random_seed(0)
        teacher = _dense(name="teacher")
        student = _dense(name="student")
        distiller = _compile(
            Distiller(teacher, student), steps_per_execution=steps
        )
        history = distiller.fit(
            x, y, batch_size=64, epochs=2, verbose=0, shuffle=False
        )
        weights.append(student.get_weights())
        assert history.history["loss"][1] < history.history["loss"][0]
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_mirrored_strategy_trains_the_student(mirrored_strategy, digits_small):
    (x, y), (x_test, y_test) = digits_small
    with mirrored_strategy.scope():
        teacher = _dense(name="teacher")
        student = _dense(name="student")
        distiller = _compile(Distiller(teacher, student, alpha=0.5))
    reference = _compile(
        Distiller(_dense(name="teacher"), _dense(name="student"), alpha=0.5)
    )
    reference.set_weights(distiller.get_weights())
    # 1280 samples: every batch splits evenly over the two replicas.
    logs = distiller.evaluate(
        x[:1280], y[:1280], batch_size=64, verbose=0, return_dict=True
    )
    ref_logs = reference.evaluate(
        x[:1280], y[:1280], batch_size=64, verbose=0, return_dict=True
    )
    # Per-replica loss scaling is undone: the same loss as on one device.
    for key in ("loss", "hard_loss", "distillation_loss"):
        assert logs[key] == pytest.approx(ref_logs[key], rel=1e-4)
    # Training on two replicas follows training on one device.
    fit = dict(batch_size=64, epochs=3, verbose=0, shuffle=False)
    history = distiller.fit(x[:1280], y[:1280], **fit)
    ref_history = reference.fit(x[:1280], y[:1280], **fit)
    assert history.history["loss"][-1] < history.history["loss"][0]
    np.testing.assert_allclose(
        history.history["loss"], ref_history.history["loss"], rtol=1e-3
    )


# ------------------------------------------------------------ composition


def test_magnitude_pruning_on_the_distiller_prunes_the_student(
    digits_small, trained_dense
):
    from keras_slim.pruning import MagnitudePruning
    from keras_slim.schedules import ConstantSparsity

    (x, y), (x_test, y_test) = digits_small
    student = _dense(hidden=32, name="student")
    teacher_before = [w.copy() for w in trained_dense.get_weights()]
    distiller = _compile(Distiller(trained_dense, student), 3e-3)
    pruning = MagnitudePruning(
        ConstantSparsity(0.5, begin_step=0, frequency=10)
    )
    history = distiller.fit(
        x, y, batch_size=64, epochs=8, verbose=0, callbacks=[pruning]
    )
    assert history.history["sparsity"][-1] == pytest.approx(0.5, abs=0.02)
    kernel = student.get_layer("hidden").kernel.numpy()
    assert np.mean(kernel == 0) == pytest.approx(0.5, abs=0.02)
    for a, b in zip(teacher_before, trained_dense.get_weights()):
        np.testing.assert_array_equal(a, b)  # the teacher is untouched
    assert accuracy(student.predict(x_test, verbose=0), y_test) > 0.7


def test_channel_pruning_on_the_distiller_prunes_the_student(
    digits_small, trained_dense
):
    from keras_slim.pruning.channels import ChannelPruning
    from keras_slim.pruning.channels import shrink

    (x, y), (x_test, y_test) = digits_small
    student = _dense(hidden=32, name="student")
    teacher_before = [w.copy() for w in trained_dense.get_weights()]
    distiller = _compile(Distiller(trained_dense, student), 3e-3)
    history = distiller.fit(
        x,
        y,
        batch_size=64,
        epochs=8,
        verbose=0,
        callbacks=[ChannelPruning(0.5)],
    )
    assert history.history["channel_sparsity"][-1] == 0.5
    hidden = student.get_layer("hidden").kernel.numpy()
    assert np.sum(np.all(hidden == 0, axis=0)) == 16  # whole units zeroed
    small = shrink(student)
    assert small.get_layer("hidden").units == 16
    np.testing.assert_allclose(
        small.predict(x_test, verbose=0),
        student.predict(x_test, verbose=0),
        atol=1e-5,
    )
    for a, b in zip(teacher_before, trained_dense.get_weights()):
        np.testing.assert_array_equal(a, b)  # the teacher is untouched
    assert accuracy(small.predict(x_test, verbose=0), y_test) > 0.7


@pytest.mark.slow
def test_quantization_aware_distilled_student_exports_int8_only(
    tmp_path, digits_small, trained_dense
):
    import keras_slim
    from keras_slim import litert
    from keras_slim.quantization import QuantizationAwareTraining

    (x, y), (x_test, y_test) = digits_small
    student = _dense(hidden=32, name="student")
    distiller = _compile(Distiller(trained_dense, student), 3e-3)
    distiller.fit(x, y, batch_size=64, epochs=10, verbose=0)
    distiller.fit(
        x,
        y,
        batch_size=64,
        epochs=2,
        verbose=0,
        callbacks=[QuantizationAwareTraining()],
    )
    from keras_slim.quantization import is_quantization_aware

    assert is_quantization_aware(student)
    assert not is_quantization_aware(trained_dense)
    path = tmp_path / "student.tflite"
    keras_slim.export_tflite(student, path)
    info = keras_slim.inspect_tflite(path)
    assert info.int8_only, info.float_ops
    keras_acc = accuracy(student.predict(x_test, verbose=0), y_test)
    int8_acc = litert.evaluate(path, x_test, y_test)
    assert keras_acc > 0.85
    assert int8_acc == pytest.approx(keras_acc, abs=0.02)


# ------------------------------------------------- distillation helps
#
# With noisy labels, not clean ones, on purpose. On the clean digits the
# demo CNN teacher (98.4% after 30 epochs) is only 1.4 points above this
# student trained alone (97.0%), and no budget or seed gave the default
# Distiller a gain larger than the spread between seeds
# (benchmarks/results/distillation.md): a clean-label "beats" assertion
# would test the seed, not the loss. Here the teacher saw clean labels
# and the student sees 40% wrong ones, so the soft targets carry
# information the labels lost: a correct loss wins by several points, and
# the test fails for a loss on raw logits (Keras's default, below), or a
# distillation term scaled so small that the noisy labels dominate.


def _noisy_subset(digits, n=300, noise=0.4, seed=0):
    """`n` training images, `noise` of their labels replaced at random.

    The teacher saw clean labels: its soft targets carry what the noisy
    labels lost, so a working distillation loss must beat training alone,
    and a broken one (or a label-only loss) cannot.
    """
    (x, y), _ = digits
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))[:n]
    xs, ys = x[idx], y[idx].copy()
    flip = rng.random(n) < noise
    ys[flip] = rng.integers(0, 10, int(flip.sum()))
    return xs, ys


@pytest.fixture(scope="module")
def head_to_head(digits, trained_cnn_weights):
    """Test accuracy of the student alone, ours and Keras's default."""
    teacher = _compile(models.small_cnn(name="teacher"))
    teacher.set_weights(trained_cnn_weights)
    xs, ys = _noisy_subset(digits)
    _, (x_test, y_test) = digits
    fit = dict(batch_size=32, epochs=60, verbose=0)
    results = {}

    alone = _compile(_student(), 3e-3)
    alone.fit(xs, ys, **fit)
    results["alone"] = accuracy(alone.predict(x_test, verbose=0), y_test)

    student = _student()
    _compile(Distiller(teacher, student), 3e-3).fit(xs, ys, **fit)
    results["ours"] = accuracy(student.predict(x_test, verbose=0), y_test)

    student = _student()
    keras_distiller = keras.distillation.Distiller(
        teacher,
        student,
        distillation_losses=keras.distillation.LogitsDistillation(),
    )
    keras_distiller.compile(
        keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    keras_distiller.fit(xs, ys, **fit)
    results["keras"] = accuracy(student.predict(x_test, verbose=0), y_test)
    return results


@pytest.mark.slow
def test_default_distillation_beats_the_student_alone_on_noisy_labels(
    head_to_head,
):
    print(head_to_head)
    assert head_to_head["ours"] > head_to_head["alone"] + 0.03, head_to_head


@pytest.mark.slow
@pytest.mark.skipif(
    not hasattr(keras, "distillation"), reason="no keras.distillation"
)
def test_keras_distiller_default_does_worse_than_ours(head_to_head):
    assert head_to_head["ours"] > head_to_head["keras"] + 0.05, head_to_head
