"""Pruning: magnitude pruning as a `fit` callback, and sparsity reports."""

from keras_slim.pruning.magnitude import MagnitudePruning
from keras_slim.pruning.report import (
    LayerSparsity,
    SparsityReport,
    sparsity_report,
)

__all__ = [
    "LayerSparsity",
    "MagnitudePruning",
    "SparsityReport",
    "sparsity_report",
]
