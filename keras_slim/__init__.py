"""keras_slim: compression and transfer learning for Keras 3 `model.fit`,
exported as verified int8 TFLite (LiteRT) models.

The headline names are here (`export_tflite`, `inspect_tflite`,
`profile`); the rest live one level down, by capability:
`keras_slim.callbacks`, `keras_slim.schedules`, `keras_slim.pruning`,
`keras_slim.quantization`, `keras_slim.distillation`,
`keras_slim.transfer`, `keras_slim.litert`, `keras_slim.datasets`,
`keras_slim.models`; `keras_slim.catalogue` says which layer kinds each
capability handles.
"""

import os
import sys

from keras_slim import _quiet  # noqa: F401 - first: before TensorFlow loads
from keras_slim._version import __version__

# The `keras-slim` console script imports what each subcommand needs (and
# every module before it loads a model, which registers keras_slim's
# serializable classes), so that `keras-slim --help` answers in a fraction
# of a second without importing TensorFlow. Everywhere else, `import
# keras_slim` imports it all: `keras.models.load_model` then finds every
# keras_slim class with no custom scope.
_COMMAND_LINE = bool(sys.argv) and (
    os.path.basename(sys.argv[0]) == "keras-slim"
)
if not _COMMAND_LINE:
    from keras_slim import callbacks
    from keras_slim import catalogue
    from keras_slim import datasets
    from keras_slim import distillation
    from keras_slim import export
    from keras_slim import litert
    from keras_slim import models
    from keras_slim import profiling
    from keras_slim import pruning
    from keras_slim import quantization
    from keras_slim import schedules
    from keras_slim import transfer
    from keras_slim.export import ExportReport
    from keras_slim.export import TFLiteInfo
    from keras_slim.export import export_tflite
    from keras_slim.export import inspect_tflite
    from keras_slim.profiling import ModelProfile
    from keras_slim.profiling import profile

__all__ = [
    "__version__",
    "callbacks",
    "catalogue",
    "datasets",
    "distillation",
    "export",
    "litert",
    "models",
    "profiling",
    "pruning",
    "quantization",
    "schedules",
    "transfer",
    "ExportReport",
    "TFLiteInfo",
    "export_tflite",
    "inspect_tflite",
    "ModelProfile",
    "profile",
]
