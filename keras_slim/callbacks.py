"""Every keras_slim callback, in one place, as `keras.callbacks` has them.

Add any of them to an existing `model.fit`: they act on the model object
they are given (Sequential, Functional, subclassed, nested), keep its
optimizer and layer names, and write their figures into `logs` so that
History, TensorBoard and CSVLogger show them.

- `MagnitudePruning`: zero the smallest weights on a schedule
  (`keras_slim.pruning`).
- `QuantizationAwareTraining`: train with simulated int8
  (`keras_slim.quantization`).
- `ChannelPruning`: zero whole channels, then `shrink` removes them
  (`keras_slim.pruning`).
- `GradualUnfreezing`: unfreeze blocks top-down during one `fit`
  (`keras_slim.transfer`).
"""

from keras_slim.pruning.channels import ChannelPruning
from keras_slim.pruning.magnitude import MagnitudePruning
from keras_slim.quantization.qat import QuantizationAwareTraining
from keras_slim.transfer import GradualUnfreezing

__all__ = [
    "ChannelPruning",
    "GradualUnfreezing",
    "MagnitudePruning",
    "QuantizationAwareTraining",
]
