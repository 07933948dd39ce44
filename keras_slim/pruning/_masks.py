"""Which weights magnitude pruning acts on, how masks are computed, and
the one way pruning holds weights at zero during `fit`.

Kept free of callbacks so that `MagnitudePruning` and `sparsity_report`
select exactly the same weights and give the same skip reasons, and so
that `MagnitudePruning` and `ChannelPruning` keep zeros the same way
(`MaskConstraint`, `hold`, and `_train_step.rebuild_train_function`).
"""

import dataclasses
import re

import keras
import numpy as np

from keras_slim import _layers
from keras_slim import _validation
from keras_slim import catalogue

_NOT_PRUNED = (
    "its kind has no prunable kernels in keras_slim.catalogue (biases and "
    "BatchNormalization are never pruned; Embedding only when `filters` "
    "selects it; teach a custom layer with "
    "keras_slim.catalogue.register_layer)"
)


@dataclasses.dataclass
class Target:
    """One prunable variable: where it lives and its N:M input axis."""

    path: str
    layer: object
    variable: object
    input_axis: object  # int, or None when N:M does not apply

    @property
    def key(self):
        return f"{self.path}/{self.variable.name}"


# ---------------------------------------------------------------- patterns


def parse_pattern(pattern):
    """Return `("unstructured",)`, `("n:m", n, m)` or `("block", bh, bw)`."""
    if isinstance(pattern, str):
        if pattern == "unstructured":
            return ("unstructured",)
        match = re.fullmatch(r"(\d+):(\d+)", pattern)
        if match:
            n, m = int(match.group(1)), int(match.group(2))
            if 0 < n < m:
                return ("n:m", n, m)
    elif (
        isinstance(pattern, (tuple, list))
        and len(pattern) == 2
        and all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0
            for d in pattern
        )
    ):
        return ("block", pattern[0], pattern[1])
    raise ValueError(
        "Expected `pattern` to be 'unstructured', an 'N:M' string with "
        "0 < N < M such as '2:4', or a block shape (bh, bw) of positive "
        f"ints. Received: pattern={pattern!r}"
    )


def max_sparsity(pattern):
    """The highest sparsity a pattern can reach (N:M caps it)."""
    if pattern[0] == "n:m":
        return (pattern[2] - pattern[1]) / pattern[2]
    return 1.0


def describe(pattern):
    if pattern[0] == "n:m":
        return f"'{pattern[1]}:{pattern[2]}'"
    if pattern[0] == "block":
        return f"({pattern[1]}, {pattern[2]})"
    return "'unstructured'"


# --------------------------------------------------------------- selection


def _kernels(layer, explicit):
    """The catalogue's `Kernel`s of `layer` that may be pruned, or None."""
    kind = catalogue.get_layer_kind(layer)
    kernels = () if kind is None else kind.kernels
    kernels = [k for k in kernels if k.by_default or explicit]
    return {k.name: k for k in kernels} or None


def _parts(leaves):
    """`(path, layer)` for every leaf layer; a leaf whose kind has no
    kernels but whose sub-layers do (`MultiHeadAttention` and its
    `EinsumDense` projections, a custom layer that owns Dense layers) is
    replaced by those sub-layers, at `leaf/sub` paths, depth first."""
    for path, layer in leaves:
        kind = catalogue.get_layer_kind(layer)
        subs = []
        if kind is None or not kind.kernels:
            subs = [
                (f"{path}/{sub.name}", sub)
                for sub in layer._flatten_layers(
                    include_self=False, recursive=False
                )
            ]
        if any(sub.weights for _, sub in subs):
            yield from _parts(subs)
        else:
            yield path, layer


def pattern_reason(target_shape, input_axis, pattern):
    """Why `pattern` cannot apply to a kernel, or `None` if it can."""
    if pattern[0] != "n:m":
        return None
    n, m = pattern[1], pattern[2]
    if input_axis is None:
        return (
            f"pattern {describe(pattern)} groups weights along the input "
            "(reduction) axis, which this kernel does not have"
        )
    size = target_shape[input_axis]
    if size % m:
        return (
            f"pattern {describe(pattern)} needs the input axis (size "
            f"{size}) to be a multiple of {m}"
        )
    del n
    return None


def select(model, filters, pattern, filters_name="filters"):
    """Return `(targets, skipped)`: prunable variables, `(path, reason)`s.

    Layers without weights are not listed. A layer that `filters`
    explicitly selects but that cannot be pruned with `pattern` raises a
    `ValueError`; with the default `filters=None` it is skipped.
    """
    predicate = _validation.compile_filters(filters, name=filters_name)
    explicit = filters is not None
    targets, skipped = [], []
    for path, layer in _parts(_layers.iter_layers(model)):
        if not layer.weights:
            continue
        if not predicate(path, layer):
            skipped.append((path, f"not selected by `{filters_name}`"))
            continue
        kernels = _kernels(layer, explicit)
        if kernels is None:
            kind = type(layer).__name__
            skipped.append((path, f"{kind}: {_NOT_PRUNED}"))
            continue
        for variable in layer.weights:
            if variable.name not in kernels:
                continue
            if "float" not in str(variable.dtype):
                skipped.append(
                    (path, f"{variable.name} is {variable.dtype}, not float")
                )
                continue
            axis = kernels[variable.name].input_axis_of(layer)
            reason = pattern_reason(tuple(variable.shape), axis, pattern)
            if reason is None:
                targets.append(Target(path, layer, variable, axis))
            elif explicit:
                raise ValueError(
                    f"Layer {path!r} selected by `{filters_name}` cannot be "
                    f"pruned: {reason}. Exclude it from `{filters_name}` or "
                    f"use another pattern. Received: pattern="
                    f"{_pattern_arg(pattern)}"
                )
            else:
                skipped.append((f"{path}/{variable.name}", reason))
    return targets, skipped


def _pattern_arg(pattern):
    if pattern[0] == "block":
        return repr((pattern[1], pattern[2]))
    return describe(pattern)


# ------------------------------------------------------------------- masks


class _Units:
    """A kernel cut into pruning units (weights or blocks) with scores.

    `scores[i]` is the mean |w| of unit `i`, `sizes[i]` its number of
    weights, `eligible[i]` whether the pattern allows pruning it.
    """

    def __init__(self, weights, input_axis, pattern):
        self.shape = weights.shape
        magnitude = np.abs(weights.astype(np.float32))
        if pattern[0] == "block":
            self._init_blocks(magnitude, pattern[1], pattern[2])
            return
        self.scores = magnitude.reshape(-1)
        self.sizes = np.ones(self.scores.size, dtype=np.int64)
        self.eligible = np.ones(self.scores.size, dtype=bool)
        self._expand = None
        if pattern[0] == "n:m":
            self.eligible = _n_m_eligible(
                magnitude, input_axis, pattern[1], pattern[2]
            ).reshape(-1)

    def _init_blocks(self, magnitude, bh, bw):
        rows = int(np.prod(self.shape[:-1])) if len(self.shape) > 1 else 1
        cols = self.shape[-1]
        matrix = magnitude.reshape(rows, cols)
        nr, nc = -(-rows // bh), -(-cols // bw)
        padded = np.zeros((nr * bh, nc * bw), np.float32)
        padded[:rows, :cols] = matrix
        count = np.zeros_like(padded)
        count[:rows, :cols] = 1.0
        sums = padded.reshape(nr, bh, nc, bw).sum(axis=(1, 3))
        sizes = count.reshape(nr, bh, nc, bw).sum(axis=(1, 3))
        self.scores = (sums / sizes).reshape(-1)
        self.sizes = sizes.reshape(-1).astype(np.int64)
        self.eligible = np.ones(self.scores.size, dtype=bool)
        self._expand = (rows, cols, nr, nc, bh, bw)

    def mask(self, pruned_units):
        """Weight mask (1 keep, 0 prune) from a boolean per-unit array."""
        keep = (~pruned_units).astype(np.float32)
        if self._expand is None:
            return keep.reshape(self.shape)
        rows, cols, nr, nc, bh, bw = self._expand
        full = np.repeat(np.repeat(keep.reshape(nr, nc), bh, 0), bw, 1)
        return full[:rows, :cols].reshape(self.shape)


def _n_m_eligible(magnitude, axis, n, m):
    """In each group of `m` along `axis`, the `m - n` smallest weights."""
    moved = np.moveaxis(magnitude, axis, -1)
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    ranks = np.argsort(np.argsort(groups, axis=-1, kind="stable"), axis=-1)
    eligible = (ranks < m - n).reshape(moved.shape)
    return np.moveaxis(eligible, -1, axis)


def _prune_lowest(units_list, target_count):
    """Mark the lowest-scoring eligible units until `target_count` weights.

    Units are taken in order of score (ties by position) while the
    cumulative number of weights stays <= `target_count`, across all of
    `units_list` at once (global scope passes several kernels).
    """
    scores = np.concatenate([u.scores for u in units_list])
    sizes = np.concatenate([u.sizes for u in units_list])
    eligible = np.concatenate([u.eligible for u in units_list])
    candidates = np.flatnonzero(eligible)
    order = candidates[np.argsort(scores[candidates], kind="stable")]
    cumulative = np.cumsum(sizes[order])
    count = int(np.searchsorted(cumulative, target_count, side="right"))
    pruned = np.zeros(scores.size, dtype=bool)
    pruned[order[:count]] = True
    out, start = [], 0
    for units in units_list:
        stop = start + units.scores.size
        out.append(units.mask(pruned[start:stop]))
        start = stop
    return out


def _keep_one(units, mask):
    """`mask`, or, if it prunes every weight, one keeping the largest unit.

    A kernel with no weight left silences its layer; like
    tensorflow-model-optimization, pruning always keeps at least one
    (0.99 of a 40-weight kernel rounds to all 40).
    """
    if mask.any():
        return mask
    pruned = np.ones(units.scores.size, dtype=bool)
    pruned[int(np.argmax(units.scores))] = False
    return units.mask(pruned)


def compute_masks(weights, input_axes, pattern, sparsity, scope):
    """New masks (float32 arrays of 0/1) for `weights` at `sparsity`.

    Each kernel keeps at least its largest weight (or block).
    """
    units = [_Units(w, axis, pattern) for w, axis in zip(weights, input_axes)]
    if scope == "global":
        total = sum(int(w.size) for w in weights)
        masks = _prune_lowest(units, int(round(sparsity * total)))
    else:
        masks = [
            _prune_lowest([u], int(round(sparsity * w.size)))[0]
            for u, w in zip(units, weights)
        ]
    return [_keep_one(u, m) for u, m in zip(units, masks)]


# ------------------------------------------------------------ holding zeros
#
# One mechanism on every backend. A mask is attached to each held variable
# as its Keras constraint (`MaskConstraint`), which the optimizer applies
# right after each update inside the compiled train step: TensorFlow's
# `tf.function` and PyTorch read the mask variable at every step. A jitted
# JAX step is a pure function of the model's and the optimizer's state and
# reads the mask only when traced, so on JAX
# `_train_step.rebuild_train_function` also wraps the model's
# `train_step`: a held weight that was exactly zero
# before a step is zero after it. Masks then change on the host only at
# mask updates (the caller assigns the newly masked weights to zero there)
# and never need a retrace, except when a zero weight is released (see
# `refresh_released`). Nothing runs on the host between updates.


class MaskConstraint(keras.constraints.Constraint):
    """`w -> inner(w) * mask`: applied by the optimizer after each update.

    Keras 3 optimizers apply `variable.constraint` to every trainable
    variable right after its update, inside the compiled train step, so the
    masked weights stay exactly zero with any optimizer state, under
    `steps_per_execution > 1`, XLA, mixed precision and distribution.
    A `keras.constraints.Constraint`: Keras 3.12-3.14 accept nothing else
    as `variable.constraint`. `kind` names who holds the mask
    (`"magnitude"`, `"channel"`); masks of several kinds chain through
    `inner`. `released` (JAX only) marks the unmasked weights that were
    exactly zero when the train step was last traced: the traced step lets
    those move.
    """

    def __init__(self, mask, inner=None, kind="magnitude"):
        self.mask = mask
        self.inner = inner
        self.kind = kind
        self.released = None

    def __call__(self, w):
        if self.inner is not None:
            w = self.inner(w)
        return keras.ops.multiply(w, keras.ops.cast(self.mask, w.dtype))


def mask_constraints(variable):
    """The `MaskConstraint`s chained on `variable`, outermost first."""
    out = []
    constraint = getattr(variable, "constraint", None)
    while isinstance(constraint, MaskConstraint):
        out.append(constraint)
        constraint = constraint.inner
    return out


def find_mask(variable, kind):
    """`variable`'s `MaskConstraint` of `kind`, or `None`."""
    for constraint in mask_constraints(variable):
        if constraint.kind == kind:
            return constraint
    return None


def hold(variable, keep, kind):
    """Attach (or update) `variable`'s mask of `kind` to `keep` (0/1).

    Call it in the model's strategy scope. Returns `True` when a new
    constraint was attached (a compiled train step must be rebuilt to see
    it), `False` when an existing mask variable was assigned.
    """
    keep = np.asarray(keep, dtype=np.float32)
    constraint = find_mask(variable, kind)
    if constraint is not None:
        constraint.mask.assign(keep)
        return False
    mask = keras.Variable(
        keep,
        trainable=False,
        dtype="float32",
        name=f"{variable.name}_{kind}_mask",
    )
    variable.constraint = MaskConstraint(mask, variable.constraint, kind)
    return True
