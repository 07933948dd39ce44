"""Knowledge distillation: train a small student on a frozen teacher's
softened outputs with plain `compile`/`fit`/`evaluate`.

`Distiller` is a `keras.Model` that wraps a trained teacher and a student
and overrides only `compute_loss`, so callbacks, compiled metrics,
`steps_per_execution` and distribution strategies keep working. After
training, `distiller.student` is an ordinary Keras model to save, prune,
quantize and export. `cache_teacher_outputs` runs the teacher once so that
each epoch costs about what training the student alone costs.

Unlike `keras.distillation.LogitsDistillation`, whose default
`"kl_divergence"` string resolves to a plain function that skips its
softmax branch and compares temperature-scaled raw logits, the loss here
is chosen by name and whether outputs are logits is an explicit
`from_logits` argument: nothing dispatches on the type of a loss object.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_slim import _validation

LABELS = "labels"
TEACHER_OUTPUTS = "teacher_outputs"
_LOSSES = ("kl_divergence", "mse")
_EPSILON = 1e-7


def _log_probabilities(outputs, from_logits):
    """Log-probabilities (up to a constant) of logits or probabilities."""
    outputs = keras.ops.convert_to_tensor(outputs)
    if from_logits:
        return outputs
    return keras.ops.log(keras.ops.clip(outputs, _EPSILON, 1.0))


def soft_target_loss(
    teacher_outputs,
    student_outputs,
    temperature=4.0,
    from_logits=True,
    distillation_loss="kl_divergence",
):
    """Per-sample distillation loss between teacher and student outputs.

    With `distillation_loss="kl_divergence"` (Hinton et al., 2015,
    "Distilling the Knowledge in a Neural Network"), this is
    `T^2 * KL(softmax(teacher / T) || softmax(student / T))`; the `T^2`
    factor keeps the gradient scale independent of the temperature. With
    `"mse"` it is the mean squared difference of the logits (Ba and
    Caruana, 2014), which does not depend on `T`. When `from_logits=False`
    the outputs are probabilities and are turned into log-probabilities
    before temperature scaling, so both kinds of model distill the same
    way.

    Args:
        teacher_outputs: Tensor `(batch, classes)` of teacher logits, or
            probabilities when `from_logits=False`.
        student_outputs: Tensor of the same shape from the student.
        temperature: Softmax temperature `T > 0`.
        from_logits: Whether the outputs are logits (`True`) or
            probabilities (`False`).
        distillation_loss: `"kl_divergence"` or `"mse"`.

    Returns:
        A float tensor `(batch,)`: the loss of each sample.

    Raises:
        ValueError: If `temperature <= 0` or `distillation_loss` is not
            one of the names above.

    Example:

    >>> import numpy as np
    >>> teacher = np.array([[4.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    >>> same = soft_target_loss(teacher, teacher)
    >>> [round(float(v), 4) for v in same]
    [0.0, 0.0]
    >>> other = soft_target_loss(teacher, np.zeros((2, 3)))
    >>> bool(np.all(np.asarray(other) > 0))
    True
    """
    _validation.check_range(
        "temperature", temperature, low=0, low_inclusive=False
    )
    _validation.check_choice("distillation_loss", distillation_loss, _LOSSES)
    teacher = _log_probabilities(teacher_outputs, from_logits)
    student = _log_probabilities(student_outputs, from_logits)
    student = keras.ops.cast(student, "float32")
    teacher = keras.ops.cast(teacher, "float32")
    if distillation_loss == "mse":
        return keras.ops.mean(keras.ops.square(student - teacher), axis=-1)
    teacher_log_p = keras.ops.log_softmax(teacher / temperature, axis=-1)
    student_log_p = keras.ops.log_softmax(student / temperature, axis=-1)
    kl = keras.ops.sum(
        keras.ops.exp(teacher_log_p) * (teacher_log_p - student_log_p),
        axis=-1,
    )
    return kl * (temperature**2)


class _SoftTargetLoss(keras.losses.Loss):
    """`soft_target_loss` as a Keras loss: weighted mean, replica-scaled."""

    def __init__(self, temperature, from_logits, distillation_loss):
        super().__init__(name="distillation_loss")
        self.temperature = temperature
        self.from_logits = from_logits
        self.distillation_loss = distillation_loss

    def call(self, y_true, y_pred):
        return soft_target_loss(
            y_true,
            y_pred,
            self.temperature,
            self.from_logits,
            self.distillation_loss,
        )


class _FeatureLoss(keras.losses.Loss):
    """Mean squared error per sample over all feature axes (FitNets)."""

    def __init__(self):
        super().__init__(name="feature_loss")

    def call(self, y_true, y_pred):
        axes = tuple(range(1, len(y_pred.shape)))
        return keras.ops.mean(keras.ops.square(y_pred - y_true), axis=axes)


def _replicas():
    return tf.distribute.get_strategy().num_replicas_in_sync


def _symbolic_outputs(model):
    """The symbolic outputs of a Functional/Sequential model, else None."""
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return None
    return outputs or None


def _symbolic_inputs(model):
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    return inputs or None


def _shape(tensor):
    return tuple(tensor.shape[1:])


def _check_models(teacher, student):
    _validation.check_model(teacher, "teacher")
    _validation.check_model(student, "student")
    if teacher is student:
        raise ValueError(
            "Expected `teacher` and `student` to be different models. "
            f"Received the same model twice: {student.name!r}"
        )
    t_in, s_in = _symbolic_inputs(teacher), _symbolic_inputs(student)
    if t_in and s_in:
        t_shapes = [_shape(t) for t in t_in]
        s_shapes = [_shape(s) for s in s_in]
        if t_shapes != s_shapes:
            raise ValueError(
                "Expected `teacher` and `student` to take the same inputs. "
                f"Received: teacher inputs {t_shapes}, student inputs "
                f"{s_shapes}. Put any resizing inside the teacher (a "
                "Functional model that starts with `keras.layers.Resizing`)."
            )
    for name, model in (("teacher", teacher), ("student", student)):
        outputs = _symbolic_outputs(model)
        if outputs is not None and len(outputs) != 1:
            raise ValueError(
                f"Expected `{name}` to have a single output (logits or "
                f"probabilities). Received: {name} with {len(outputs)} "
                "outputs"
            )
    t_out, s_out = _symbolic_outputs(teacher), _symbolic_outputs(student)
    if t_out and s_out:
        _check_output_shapes(_shape(t_out[0]), _shape(s_out[0]))


def _check_output_shapes(teacher_shape, student_shape):
    if tuple(teacher_shape) != tuple(student_shape):
        raise ValueError(
            "Expected `teacher` and `student` outputs of the same shape "
            "(the same classes). Received: teacher output shape "
            f"{tuple(teacher_shape)}, student output shape "
            f"{tuple(student_shape)}"
        )


def _check_feature_pairs(feature_pairs, teacher, student):
    if feature_pairs is None:
        return []
    ok = isinstance(feature_pairs, (list, tuple)) and all(
        isinstance(p, (list, tuple))
        and len(p) == 2
        and all(isinstance(n, str) for n in p)
        for p in feature_pairs
    )
    if not ok:
        raise TypeError(
            "Expected `feature_pairs` to be a list of "
            "`(teacher_layer_name, student_layer_name)` string pairs. "
            f"Received: feature_pairs={feature_pairs!r}"
        )
    pairs = [tuple(p) for p in feature_pairs]
    if not pairs:
        return pairs
    for role, model in (("teacher", teacher), ("student", student)):
        if _symbolic_inputs(model) is None:
            raise ValueError(
                "Feature distillation reads intermediate layers, which "
                f"needs a Functional or Sequential `{role}`. Received: "
                f"subclassed {role}={model.name!r} with "
                f"feature_pairs={feature_pairs!r}"
            )
    for t_name, s_name in pairs:
        for role, model, name in (
            ("teacher", teacher, t_name),
            ("student", student, s_name),
        ):
            names = [layer.name for layer in model.layers]
            if name not in names:
                raise ValueError(
                    f"Expected `feature_pairs` to name layers of the {role}. "
                    f"No layer {name!r} in {role} {model.name!r} (layers: "
                    f"{', '.join(names)}). "
                    f"Received: feature_pairs={feature_pairs!r}"
                )
    return pairs


def _projection(index, teacher_shape, student_shape):
    """A learnable map from a student feature to the teacher's shape."""
    name = f"feature_projection_{index}"
    if len(teacher_shape) != len(student_shape) or len(teacher_shape) not in (
        1,
        3,
    ):
        raise ValueError(
            "Expected each feature pair to be two vectors `(batch, width)` "
            "or two image features `(batch, height, width, channels)`. "
            f"Received: teacher feature shape {teacher_shape}, student "
            f"feature shape {student_shape} (pair {index})"
        )
    if len(teacher_shape) == 1:
        if teacher_shape == student_shape:
            return keras.layers.Identity(name=name)
        return keras.layers.Dense(teacher_shape[0], name=name)
    if None in teacher_shape[:2] or None in student_shape[:2]:
        raise ValueError(
            "Expected feature pairs with static spatial sizes. Received: "
            f"teacher feature shape {teacher_shape}, student feature shape "
            f"{student_shape} (pair {index})"
        )
    layers = []
    if teacher_shape[-1] != student_shape[-1]:
        layers.append(
            keras.layers.Conv2D(teacher_shape[-1], 1, name=f"{name}_conv")
        )
    if teacher_shape[:2] != student_shape[:2]:
        layers.append(
            keras.layers.Resizing(
                *teacher_shape[:2],
                interpolation="bilinear",
                name=f"{name}_resize",
            )
        )
    if not layers:
        return keras.layers.Identity(name=name)
    return keras.Sequential(layers, name=name)


@keras.saving.register_keras_serializable(package="keras_slim")
class Distiller(keras.Model):
    """Train a student on a frozen teacher's softened outputs.

    Knowledge distillation (Hinton et al., 2015) trains a small student to
    match both the labels and the temperature-softened class distribution
    of a large trained teacher, which carries how similar the classes look
    ("dark knowledge"). The loss is

    `alpha * hard_loss(y, student) + (1 - alpha) * T^2 *
    KL(softmax(teacher / T) || softmax(student / T))`

    plus `feature_loss_weight` times the mean squared error of matched
    intermediate layers when `feature_pairs` is given (FitNets, Romero et
    al., 2015). `hard_loss` is the `loss` given to `compile`.

    Use it like any Keras model: `compile(optimizer, loss, metrics)`,
    `fit`, `evaluate`. Calling the distiller (and `predict`) returns the
    student's outputs, compiled metrics compare the labels with the
    student's outputs, and `fit` logs `hard_loss`, `distillation_loss`
    (and `feature_loss`) beside `loss`. The teacher is frozen
    (`teacher.trainable` is set to `False`) and always runs in inference
    mode. After training, `distiller.student` is the trained student, a
    plain Keras model; compression callbacks given to the distiller's
    `fit` (`MagnitudePruning`, `QuantizationAwareTraining`) act on it.

    What to expect: the soft targets carry what the teacher knows beyond
    the labels, so distillation gains most when the teacher is clearly
    better than the student trained alone, or the labels are noisy or
    few. A student matching a softened distribution also fits more
    slowly than one fitting labels: give it more epochs than you would
    train it alone. When the teacher is barely better than the student
    alone, a larger `alpha` (0.5) leans on the labels more;
    `benchmarks/results/distillation.md` has the measurements.

    Teacher cache: for non-augmented data, compute the teacher's outputs
    once with `cache_teacher_outputs` and pass them inside the targets,
    `fit(x, {"labels": y, "teacher_outputs": t})` (a `tf.data.Dataset`
    may yield the same dict as its targets). The teacher is then not run
    during training, so an epoch costs about what training the student
    alone costs. Plain labels `fit(x, y)` run the teacher at every step.
    With `alpha=0` the labels may be left out:
    `fit(x, {"teacher_outputs": t})` or, without a cache, `fit(x)`.

    Args:
        teacher: A trained, built `keras.Model` with a single output.
        student: A built `keras.Model` whose output has the teacher's
            shape (and that takes the same inputs).
        temperature: Softmax temperature `T > 0`. Higher values soften
            the teacher's distribution. Defaults to 4.0.
        alpha: Weight of the hard (label) loss, in [0, 1]; the
            distillation term gets `1 - alpha`. Defaults to 0.1.
        from_logits: Whether teacher and student output logits (`True`)
            or probabilities (`False`, converted to log-probabilities
            before temperature scaling). Defaults to `True`.
        distillation_loss: `"kl_divergence"` (the `T^2`-scaled KL above)
            or `"mse"` (mean squared error of the logits).
        feature_pairs: `None` or a list of
            `(teacher_layer_name, student_layer_name)`: layers of
            Functional/Sequential models whose outputs the student learns
            to match. When widths differ, a learnable `Dense` (vectors) or
            1x1 `Conv2D` (images) projects the student's feature to the
            teacher's width, and student image features of another spatial
            size are resized (bilinear) to the teacher's. Projections
            belong to the distiller, not to `distiller.student`.
        feature_loss_weight: Weight `>= 0` of the feature loss. Defaults
            to 1.0.
        name: Name of the distiller.
        **kwargs: Passed to `keras.Model`.

    Raises:
        TypeError: If `teacher` or `student` is not a Keras 3 model, or
            `feature_pairs` is not a list of name pairs.
        ValueError: If a model is not built, `temperature <= 0`, `alpha`
            is outside [0, 1], the output shapes differ, or a feature
            pair names a layer that does not exist. `fit` raises before
            the first update when `alpha > 0` and no labels (or no
            compiled `loss`) are given.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> x = np.random.default_rng(0).random((64, 8)).astype("float32")
    >>> y = (x[:, 0] > 0.5).astype("int32")
    >>> teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    >>> student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    >>> distiller = Distiller(teacher, student)
    >>> distiller.compile(
    ...     optimizer="adam",
    ...     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ...     metrics=["accuracy"],
    ... )
    >>> history = distiller.fit(x, y, epochs=2, verbose=0)
    >>> sorted(history.history)
    ['accuracy', 'distillation_loss', 'hard_loss', 'loss']
    >>> distiller.student is student, teacher.trainable
    (True, False)
    >>> t = cache_teacher_outputs(teacher, x)
    >>> history = distiller.fit(
    ...     x, {"labels": y, "teacher_outputs": t}, epochs=1, verbose=0
    ... )
    >>> distiller.predict(x[:3], verbose=0).shape
    (3, 2)
    """

    def __init__(
        self,
        teacher,
        student,
        temperature=4.0,
        alpha=0.1,
        from_logits=True,
        distillation_loss="kl_divergence",
        feature_pairs=None,
        feature_loss_weight=1.0,
        name="distiller",
        **kwargs,
    ):
        _check_models(teacher, student)
        _validation.check_range(
            "temperature", temperature, low=0, low_inclusive=False
        )
        _validation.check_range("alpha", alpha, 0, 1)
        _validation.check_type("from_logits", from_logits, bool, "a bool")
        _validation.check_choice(
            "distillation_loss", distillation_loss, _LOSSES
        )
        _validation.check_range(
            "feature_loss_weight", feature_loss_weight, low=0
        )
        pairs = _check_feature_pairs(feature_pairs, teacher, student)
        super().__init__(name=name, **kwargs)
        self.teacher = teacher
        self.student = student
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.from_logits = from_logits
        self.distillation_loss = distillation_loss
        self.feature_pairs = pairs
        self.feature_loss_weight = float(feature_loss_weight)
        teacher.trainable = False

        self.soft_loss_fn = _SoftTargetLoss(
            self.temperature, from_logits, distillation_loss
        )
        self.hard_loss_tracker = keras.metrics.Mean(name="hard_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(
            name="distillation_loss"
        )
        if pairs:
            self._build_feature_extractors(teacher, student, pairs)
        self.built = True

    def _build_feature_extractors(self, teacher, student, pairs):
        t_feats = [teacher.get_layer(t).output for t, _ in pairs]
        s_feats = [student.get_layer(s).output for _, s in pairs]
        self.teacher_features = keras.Model(
            teacher.inputs,
            [teacher.outputs[0], *t_feats],
            name=f"{teacher.name}_features",
        )
        self.student_features = keras.Model(
            student.inputs, s_feats, name=f"{student.name}_features"
        )
        projections = []
        for i, (t, s) in enumerate(zip(t_feats, s_feats)):
            projection = _projection(i, _shape(t), _shape(s))
            projection.build((None, *_shape(s)))
            projections.append(projection)
        self.projections = projections
        self.feature_loss_fn = _FeatureLoss()
        self.feature_loss_tracker = keras.metrics.Mean(name="feature_loss")

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def _split_targets(self, y):
        if not isinstance(y, dict):
            return y, None
        unknown = set(y) - {LABELS, TEACHER_OUTPUTS}
        if unknown:
            raise ValueError(
                f"Expected the targets to be labels, or a dict with keys "
                f"{LABELS!r} and/or {TEACHER_OUTPUTS!r}. Received a dict "
                f"with keys {sorted(y)}"
            )
        return y.get(LABELS), y.get(TEACHER_OUTPUTS)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        labels, teacher_outputs = self._split_targets(y)
        if self.alpha > 0 and labels is None:
            raise ValueError(
                f"`fit` needs labels when `alpha` > 0 (the hard loss has "
                f"weight alpha). Pass `y` (or `{{'{LABELS}': y, ...}}`), "
                f"or set alpha=0. Received: alpha={self.alpha}, no labels"
            )
        if self.alpha > 0 and self.loss is None:
            raise ValueError(
                "Expected a `loss` in `compile()` for the hard (label) "
                f"loss, which has weight alpha={self.alpha}. Received: "
                "loss=None"
            )
        if y_pred is None:
            y_pred = self(x, training=training)
        if keras.tree.is_nested(y_pred):
            raise ValueError(
                "Expected the student to return a single tensor. Received "
                f"outputs {keras.tree.map_structure(lambda t: t.shape, y_pred)}"
            )
        teacher_feats = []
        if teacher_outputs is None or self.feature_pairs:
            if self.feature_pairs:
                outs = self.teacher_features(x, training=False)
                if teacher_outputs is None:
                    teacher_outputs = outs[0]
                teacher_feats = outs[1:]
            else:
                teacher_outputs = self.teacher(x, training=False)
        if keras.tree.is_nested(teacher_outputs):
            raise ValueError(
                "Expected the teacher to return a single tensor. Received "
                "nested outputs"
            )
        teacher_outputs = keras.ops.stop_gradient(teacher_outputs)
        _check_output_shapes(_shape(teacher_outputs), _shape(y_pred))

        replicas = _replicas()
        regularization = [
            keras.ops.sum(keras.ops.cast(loss, "float32")) / replicas
            for loss in self.losses
        ]
        soft = self.soft_loss_fn(teacher_outputs, y_pred, sample_weight)
        total = (1.0 - self.alpha) * soft
        self.distillation_loss_tracker.update_state(soft * replicas)
        if self.alpha > 0:
            # Includes the regularization losses, once, weighted alpha.
            hard = super().compute_loss(
                x, labels, y_pred, sample_weight, training=training
            )
            total = total + self.alpha * hard
            if regularization:
                total = total + (1.0 - self.alpha) * keras.ops.sum(
                    keras.ops.stack(regularization)
                )
                hard = hard - keras.ops.sum(keras.ops.stack(regularization))
            self.hard_loss_tracker.update_state(hard * replicas)
        elif regularization:
            total = total + keras.ops.sum(keras.ops.stack(regularization))
        if self.feature_pairs:
            student_feats = self.student_features(x, training=training)
            if not isinstance(student_feats, (list, tuple)):
                student_feats = [student_feats]
            feature = 0.0
            for projection, t, s in zip(
                self.projections, teacher_feats, student_feats
            ):
                t = keras.ops.stop_gradient(t)
                feature = feature + self.feature_loss_fn(
                    t, projection(s), sample_weight
                )
            self.feature_loss_tracker.update_state(feature * replicas)
            total = total + self.feature_loss_weight * feature
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        labels, _ = self._split_targets(y)
        if labels is None:
            return self.get_metrics_result()
        return super().compute_metrics(x, labels, y_pred, sample_weight)

    def get_config(self):
        return {
            **super().get_config(),
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "student": keras.saving.serialize_keras_object(self.student),
            "temperature": self.temperature,
            "alpha": self.alpha,
            "from_logits": self.from_logits,
            "distillation_loss": self.distillation_loss,
            "feature_pairs": [list(p) for p in self.feature_pairs] or None,
            "feature_loss_weight": self.feature_loss_weight,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["teacher"] = keras.saving.deserialize_keras_object(
            config["teacher"]
        )
        config["student"] = keras.saving.deserialize_keras_object(
            config["student"]
        )
        return cls(**config)


def cache_teacher_outputs(teacher, x, batch_size=256):
    """Run the teacher once over non-augmented inputs and return its outputs.

    Feed the result to `Distiller.fit` inside the targets,
    `fit(x, {"labels": y, "teacher_outputs": t})`, so the teacher is not
    run again at every epoch: an epoch then costs about what training the
    student alone costs, which matters when the teacher is big. Only valid
    when the inputs are the same at every epoch (no random augmentation);
    shuffling is fine, since `fit` shuffles inputs and targets together.

    Args:
        teacher: A built `keras.Model`.
        x: Inputs: a NumPy array (or anything `teacher.predict` accepts:
            a dict of arrays, a `tf.data.Dataset` of inputs or of
            `(inputs, targets)` without shuffling).
        batch_size: Batch size of the teacher's inference pass, >= 1.
            Ignored for a dataset, which is already batched.

    Returns:
        A float32 NumPy array with one row of teacher outputs per sample,
        in the order of `x`.

    Raises:
        TypeError: If `teacher` is not a Keras 3 model.
        ValueError: If `teacher` is not built or `batch_size < 1`.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> x = np.ones((10, 4), "float32")
    >>> cache_teacher_outputs(teacher, x).shape
    (10, 3)
    """
    _validation.check_model(teacher, "teacher")
    _validation.check_int("batch_size", batch_size, minimum=1)
    if isinstance(x, tf.data.Dataset):
        outputs = teacher.predict(x, verbose=0)
    else:
        outputs = teacher.predict(x, batch_size=batch_size, verbose=0)
    if isinstance(outputs, (list, dict)):
        raise ValueError(
            "Expected `teacher` to have a single output. Received: "
            f"teacher={teacher.name!r} with several outputs"
        )
    return np.asarray(outputs, dtype="float32")
