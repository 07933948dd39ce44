"""Pruning: magnitude pruning as a `fit` callback, and sparsity reports."""

from keras_slim.pruning.magnitude import MagnitudePruning
from keras_slim.pruning.report import LayerSparsity
from keras_slim.pruning.report import SparsityReport
from keras_slim.pruning.report import sparsity_report

__all__ = [
    "LayerSparsity",
    "MagnitudePruning",
    "SparsityReport",
    "sparsity_report",
]
