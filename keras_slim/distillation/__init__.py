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
is chosen by name, and whether each model outputs logits or probabilities
is read from its last layer (or stated with `from_logits`): nothing
dispatches on the type of a loss object. Only `keras.ops`: no backend is
imported here.
"""

from keras_slim.distillation._cache import cache_teacher_outputs
from keras_slim.distillation._distiller import LABELS
from keras_slim.distillation._distiller import TEACHER_OUTPUTS
from keras_slim.distillation._distiller import Distiller
from keras_slim.distillation._losses import soft_target_loss

__all__ = [
    "LABELS",
    "TEACHER_OUTPUTS",
    "Distiller",
    "cache_teacher_outputs",
    "soft_target_loss",
]

# Public names live here: their docstring examples run as part of this
# module, and `help()` shows where to import them from.
for _name in ("Distiller", "cache_teacher_outputs", "soft_target_loss"):
    globals()[_name].__module__ = __name__
del _name
