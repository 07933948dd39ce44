"""keras_slim: compression and transfer learning for Keras 3 `model.fit`,
exported as verified int8 TFLite (LiteRT) models."""

from keras_slim._version import __version__
from keras_slim import datasets
from keras_slim import models

__all__ = ["__version__", "datasets", "models"]
