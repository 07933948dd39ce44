"""Pruning: magnitude pruning (zeros) and channel pruning (a smaller model).

- `MagnitudePruning`: a `fit` callback that zeroes the smallest weights on
  a `keras_slim.schedules` schedule; `sparsity_report` tells what is zero.
- `prune_channels`: a new model with whole filters and neurons removed;
  `ChannelPruning` zeroes channels during `fit` and `shrink` removes them;
  `channel_report` compares params, MACs and sizes before and after.
"""

from keras_slim.pruning.channels import ChannelPruning
from keras_slim.pruning.channels import ChannelPruningReport
from keras_slim.pruning.channels import channel_report
from keras_slim.pruning.channels import prune_channels
from keras_slim.pruning.channels import shrink
from keras_slim.pruning.magnitude import MagnitudePruning
from keras_slim.pruning.report import LayerSparsity
from keras_slim.pruning.report import SparsityReport
from keras_slim.pruning.report import sparsity_report

__all__ = [
    "ChannelPruning",
    "ChannelPruningReport",
    "LayerSparsity",
    "MagnitudePruning",
    "SparsityReport",
    "channel_report",
    "prune_channels",
    "shrink",
    "sparsity_report",
]
