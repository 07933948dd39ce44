"""cache_teacher_outputs: run the teacher once, reuse its outputs."""

import keras
import numpy as np

from keras_slim import _validation


def _is_batched(x):
    """Whether `x` is already batched (a dataset, `PyDataset`, generator):
    anything that is not an array, a tensor or a structure of them."""
    if isinstance(x, (dict, list, tuple)):
        return False
    return not (hasattr(x, "shape") or keras.ops.is_tensor(x))


def cache_teacher_outputs(teacher, x, batch_size=256):
    """Run the teacher once over non-augmented inputs and return its outputs.

    Feed the result to `Distiller.fit` inside the targets,
    `fit(x, {"labels": y, "teacher_outputs": t})`, so the teacher is not
    run again at every epoch: an epoch then costs about what training the
    student alone costs, which matters when the teacher is big. Only valid
    when the inputs are the same at every epoch (no random augmentation);
    shuffling is fine, since `fit` shuffles inputs and targets together.
    A teacher that ends in a softmax gives probabilities, which the
    `Distiller` of that teacher reads as such.

    Args:
        teacher: A built `keras.Model`.
        x: Inputs: a NumPy array (or anything `teacher.predict` accepts:
            a dict of arrays, a `tf.data.Dataset` or `keras.utils.PyDataset`
            of inputs or of `(inputs, targets)` without shuffling).
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
    if _is_batched(x):
        outputs = teacher.predict(x, verbose=0)
    else:
        outputs = teacher.predict(x, batch_size=batch_size, verbose=0)
    if isinstance(outputs, (list, dict)):
        raise ValueError(
            "Expected `teacher` to have a single output. Received: "
            f"teacher={teacher.name!r} with several outputs"
        )
    return np.asarray(outputs, dtype="float32")
