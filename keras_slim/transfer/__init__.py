"""Transfer learning: freeze, swap heads, cache features, copy weights.

Feature extraction (a frozen pretrained body feeding a new head),
parameter transfer (reuse the trained weights, fine-tune some of them) and
structure transfer (initialise a related architecture from what matches)
with the pieces a Keras guide leaves to the user: frozen BatchNorm in
inference mode, recompiling after a change of `trainable`, finding the
right layer to cut, and unfreezing gradually inside one `fit`.
"""

from keras_slim.transfer._freeze_report import FreezeReport
from keras_slim.transfer._freezing import freeze
from keras_slim.transfer._freezing import trainable_summary
from keras_slim.transfer._freezing import unfreeze
from keras_slim.transfer._heads import attach_head
from keras_slim.transfer._heads import extract_features
from keras_slim.transfer._heads import swap_head
from keras_slim.transfer._unfreezing import GradualUnfreezing
from keras_slim.transfer._weights import TransferReport
from keras_slim.transfer._weights import transfer_weights

__all__ = [
    "FreezeReport",
    "GradualUnfreezing",
    "TransferReport",
    "attach_head",
    "extract_features",
    "freeze",
    "swap_head",
    "trainable_summary",
    "transfer_weights",
    "unfreeze",
]

# Public names live here: their docstring examples run as part of this
# module, and `help()` shows where to import them from.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
