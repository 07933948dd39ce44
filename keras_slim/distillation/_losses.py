"""The distillation losses: soft targets (KL or MSE) and matched features.

Backend-free: `keras.ops` only.
"""

import keras

from keras_slim import _validation

LOSSES = ("kl_divergence", "mse")
# Floor of a probability before its logarithm. Small enough that a
# confident teacher's tail (a logit gap of up to about 69) keeps its
# relative size after temperature scaling: Keras's 1e-7 epsilon would cut
# every gap beyond 16 and put e^(-16/T) of mass back into each tail class.
_PROBABILITY_FLOOR = 1e-30


def log_probabilities(outputs, from_logits):
    """Float32 logits of `outputs`: themselves, or log(p) of probabilities.

    log(p) differs from the logits that produced `p` by a per-sample
    constant, which the temperature-scaled softmax ignores, so
    `softmax(log(p) / T)` equals `softmax(logits / T)`.
    """
    outputs = keras.ops.cast(keras.ops.convert_to_tensor(outputs), "float32")
    if from_logits:
        return outputs
    return keras.ops.log(keras.ops.maximum(outputs, _PROBABILITY_FLOOR))


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
    the outputs are probabilities and their logarithms serve as logits
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
        A float32 tensor `(batch,)`: the loss of each sample.

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
    _validation.check_choice("distillation_loss", distillation_loss, LOSSES)
    teacher = log_probabilities(teacher_outputs, from_logits)
    student = log_probabilities(student_outputs, from_logits)
    return _logit_loss(teacher, student, temperature, distillation_loss)


def _logit_loss(teacher, student, temperature, distillation_loss):
    if distillation_loss == "mse":
        return keras.ops.mean(keras.ops.square(student - teacher), axis=-1)
    teacher_log_p = keras.ops.log_softmax(teacher / temperature, axis=-1)
    student_log_p = keras.ops.log_softmax(student / temperature, axis=-1)
    kl = keras.ops.sum(
        keras.ops.exp(teacher_log_p) * (teacher_log_p - student_log_p),
        axis=-1,
    )
    return kl * (temperature**2)


class SoftTargetLoss(keras.losses.Loss):
    """`soft_target_loss` as a Keras loss (weighted mean, replica-scaled),
    with the kind of output of teacher and student read separately."""

    def __init__(
        self,
        temperature,
        teacher_from_logits,
        student_from_logits,
        distillation_loss,
    ):
        super().__init__(name="distillation_loss")
        self.temperature = temperature
        self.teacher_from_logits = teacher_from_logits
        self.student_from_logits = student_from_logits
        self.distillation_loss = distillation_loss

    def call(self, y_true, y_pred):
        teacher = log_probabilities(y_true, self.teacher_from_logits)
        student = log_probabilities(y_pred, self.student_from_logits)
        return _logit_loss(
            teacher, student, self.temperature, self.distillation_loss
        )


class FeatureLoss(keras.losses.Loss):
    """Mean squared error per sample over all feature axes (FitNets)."""

    def __init__(self):
        super().__init__(name="feature_loss")

    def call(self, y_true, y_pred):
        axes = tuple(range(1, len(y_pred.shape)))
        return keras.ops.mean(keras.ops.square(y_pred - y_true), axis=axes)
