"""`sparsity_report`: how sparse each prunable kernel of a model is."""

import dataclasses

import numpy as np

from keras_slim import _validation
from keras_slim.pruning import _masks

__all__ = ["LayerSparsity", "SparsityReport", "sparsity_report"]


@dataclasses.dataclass(frozen=True)
class LayerSparsity:
    """One row of a `SparsityReport`: a prunable kernel and its zeros.

    Example:

    >>> row = LayerSparsity("dense", "kernel", (8, 4), size=32, zeros=8)
    >>> row.sparsity
    0.25
    """

    path: str
    weight: str
    shape: tuple
    size: int
    zeros: int

    @property
    def sparsity(self):
        return self.zeros / self.size if self.size else 0.0


@dataclasses.dataclass(frozen=True)
class SparsityReport:
    """Per-kernel and total sparsity of a model, and what was skipped.

    Attributes:
        layers: List of `LayerSparsity` rows (`path`, `weight`, `shape`,
            `size`, `zeros`, `sparsity`), one per prunable kernel.
        skipped: List of `(path, reason)` for layers with weights that
            `MagnitudePruning` with the same `filters` and `pattern` leaves
            alone.
        zeros: Number of zero weights over all `layers`.
        size: Number of weights over all `layers`.
        sparsity: `zeros / size`.

    Example:

    >>> rows = [LayerSparsity("a", "kernel", (4, 4), 16, 8),
    ...         LayerSparsity("b", "kernel", (4, 2), 8, 4)]
    >>> report = SparsityReport(layers=rows, skipped=[])
    >>> report.zeros, report.size, report.sparsity
    (12, 24, 0.5)
    """

    layers: list
    skipped: list

    @property
    def zeros(self):
        return sum(row.zeros for row in self.layers)

    @property
    def size(self):
        return sum(row.size for row in self.layers)

    @property
    def sparsity(self):
        return self.zeros / self.size if self.size else 0.0

    def summary(self):
        """Return the report as a text table."""
        width = max([len(f"{r.path}/{r.weight}") for r in self.layers] + [6])
        lines = [f"{'kernel':<{width}}  {'shape':<18} {'zeros':>9} sparsity"]
        for r in self.layers:
            lines.append(
                f"{r.path + '/' + r.weight:<{width}}  {str(r.shape):<18} "
                f"{r.zeros:>9,} {r.sparsity:8.3f}"
            )
        lines.append(
            f"{'total':<{width}}  {'':<18} {self.zeros:>9,} "
            f"{self.sparsity:8.3f}"
        )
        for path, reason in self.skipped:
            lines.append(f"skipped {path}: {reason}")
        return "\n".join(lines)

    def print_summary(self, print_fn=print):
        """Print `summary()`, line by line, with `print_fn`."""
        for line in self.summary().splitlines():
            print_fn(line)

    def __str__(self):
        return self.summary()


def sparsity_report(model, filters=None, pattern="unstructured"):
    """Report the sparsity of each prunable kernel of `model`.

    Use it after `keras_slim.callbacks.MagnitudePruning` (or on any model)
    to see per-kernel and total sparsity, zero counts, and which layers
    with weights are not pruned and why (BatchNormalization, layers not
    selected by `filters`, kernels a pattern cannot apply to). Pass the
    callback's `filters` and `pattern` to see exactly what it acts on.
    Counts exact zeros in the current weights; biases are never counted.

    Args:
        model: A built Keras 3 model (Sequential, Functional, subclassed or
            nested).
        filters: Layer selection, as in `MagnitudePruning`.
        pattern: Pruning pattern, as in `MagnitudePruning`; decides which
            kernels are skipped (N:M needs an input axis that is a
            multiple of M).

    Returns:
        A `SparsityReport` with `.layers` (rows with `path`, `weight`,
        `shape`, `size`, `zeros`, `sparsity`), `.skipped` (`(path,
        reason)` pairs), `.zeros`, `.size`, `.sparsity` and `.summary()`.

    Raises:
        TypeError: `model` is not a Keras 3 model, or a bad `filters` type.
        ValueError: `model` is not built, an unknown `pattern`, or a layer
            explicitly selected by `filters` that `pattern` cannot apply to.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> model = keras.Sequential([keras.Input((8,)),
    ...     keras.layers.Dense(4), keras.layers.BatchNormalization()])
    >>> weights = np.ones((8, 4), dtype="float32")
    >>> weights[::4] = 0.0  # two input rows of zeros
    >>> _ = model.layers[0].kernel.assign(weights)
    >>> report = sparsity_report(model)
    >>> report.sparsity, report.zeros, report.size
    (0.25, 8, 32)
    >>> report.skipped[0][0]
    'batch_normalization'
    """
    _validation.check_model(model)
    parsed = _masks.parse_pattern(pattern)
    targets, skipped = _masks.select(model, filters, parsed)
    rows = []
    for target in targets:
        weights = target.variable.numpy()
        rows.append(
            LayerSparsity(
                path=target.path,
                weight=target.variable.name,
                shape=tuple(weights.shape),
                size=int(weights.size),
                zeros=int(np.sum(weights == 0)),
            )
        )
    return SparsityReport(layers=rows, skipped=skipped)
