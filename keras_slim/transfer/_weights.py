"""transfer_weights: copy what matches from one model into another."""

import keras
import numpy as np

from keras_slim import _validation
from keras_slim.transfer import _freezing


class TransferReport:
    """What `transfer_weights` copied and what it skipped.

    Attributes:
        copied: `(target_weight, source_weight)` paths of the copied
            weights.
        skipped: `(target_weight, reason)` for every target weight left as
            it was.
        copied_params: Number of parameters copied.
        total_params: Number of parameters of the target.

    Example:

    >>> import keras
    >>> from keras_slim.transfer import transfer_weights
    >>> def mlp(width):
    ...     return keras.Sequential([keras.Input((4,)),
    ...         keras.layers.Dense(8, name="hidden"),
    ...         keras.layers.Dense(width, name="out")])
    >>> report = transfer_weights(mlp(3), mlp(5))
    >>> report.copied_params, report.total_params
    (40, 85)
    """

    def __init__(self, copied, skipped, copied_params, total_params):
        self.copied = list(copied)
        self.skipped = list(skipped)
        self.copied_params = copied_params
        self.total_params = total_params

    def __repr__(self):
        return (
            f"TransferReport(copied={len(self.copied)}, "
            f"skipped={len(self.skipped)}, copied_params="
            f"{self.copied_params}, total_params={self.total_params})"
        )

    def summary(self):
        """Return a multi-line account: one line per weight."""
        lines = [f"copied {t} <- {s}" for t, s in self.copied]
        lines += [f"skipped {t}: {r}" for t, r in self.skipped]
        lines.append(
            f"{self.copied_params:,} of {self.total_params:,} parameters copied"
        )
        return "\n".join(lines)

    def print_summary(self, print_fn=print):
        """Print `summary()`, line by line, with `print_fn`."""
        for line in self.summary().splitlines():
            print_fn(line)


def _weight_name(leaf, weight):
    return f"{leaf.path}/{weight.name}"


def _pairs(source, target, by):
    """`(target_leaf, source_leaf or None, reason)` per weighted target leaf."""
    src = [lf for lf in _freezing.leaves(source) if lf.layer.weights]
    tgt = [lf for lf in _freezing.leaves(target) if lf.layer.weights]
    if by == "name":
        by_name = {}
        for lf in src:
            by_name.setdefault(lf.layer.name, lf)
        for lf in tgt:
            match = by_name.get(lf.layer.name)
            yield (
                lf,
                match,
                (
                    None
                    if match
                    else f"no layer named {lf.layer.name!r} in the source"
                ),
            )
    else:
        for i, lf in enumerate(tgt):
            match = src[i] if i < len(src) else None
            yield (
                lf,
                match,
                (
                    None
                    if match
                    else f"the source has only {len(src)} layers with weights"
                ),
            )


def transfer_weights(source, target, by="name", strict=False):
    """Copy every weight of `source` whose shape matches into `target`.

    Structure transfer: initialise a related architecture (a wider or
    narrower variant, a new head, an extra block) from a trained model.
    Layers are paired by name or by order among the layers that hold
    weights; within a pair, each weight is copied if its shape matches and
    skipped, with the reason, if not. `target` is changed in place.

    Args:
        source: A built Keras model to copy from.
        target: A built Keras model to copy into.
        by: `"name"` pairs layers with the same name (Keras names layers
            predictably, and `keras.applications` models share names across
            widths); `"order"` pairs the i-th layer with weights of each.
        strict: If True, refuse (before copying anything) unless every
            weight of `target` finds a match.

    Returns:
        A `TransferReport` of the copied and skipped weights.

    Raises:
        ValueError: if `by` is not `"name"` or `"order"`, the models have
            no weight in common, or `strict` and some weight has no match;
            before any change.
        TypeError: if either model is not a Keras model.

    Example:

    >>> import keras, keras_slim, numpy as np
    >>> source = keras_slim.models.small_cnn(num_classes=10)
    >>> target = keras_slim.models.small_cnn(num_classes=5)
    >>> report = keras_slim.transfer.transfer_weights(source, target)
    >>> len(report.copied), report.copied_params, report.total_params
    (20, 19744, 20069)
    >>> report.skipped[0]
    ('logits/kernel', 'shape (64, 5) in the target, (64, 10) in the source')
    """
    _validation.check_model(source, name="source")
    _validation.check_model(target, name="target")
    _validation.check_choice("by", by, ("name", "order"))
    _validation.check_type("strict", strict, bool, "a bool")
    copies, copied, skipped = [], [], []
    for lf, match, reason in _pairs(source, target, by):
        t_weights = lf.layer.weights
        s_weights = match.layer.weights if match else []
        if match and len(s_weights) != len(t_weights):
            reason = (
                f"{len(t_weights)} weights in the target layer, "
                f"{len(s_weights)} in the source layer {match.path!r}"
            )
        for j, tw in enumerate(t_weights):
            name = _weight_name(lf, tw)
            if reason:
                skipped.append((name, reason))
                continue
            sw = s_weights[j]
            if tuple(sw.shape) != tuple(tw.shape):
                skipped.append(
                    (
                        name,
                        f"shape {tuple(tw.shape)} in the target, "
                        f"{tuple(sw.shape)} in the source",
                    )
                )
                continue
            copies.append((tw, sw))
            copied.append((name, _weight_name(match, sw)))
    if not copies:
        raise ValueError(
            f"Models {source.name!r} and {target.name!r} have no weight in "
            f"common when paired by={by!r} (nothing of the same name and "
            "shape). Expected `source` and `target` to share some "
            "structure; try by='order'. Received: by=" + repr(by)
        )
    if strict and skipped:
        lines = "; ".join(f"{n}: {r}" for n, r in skipped[:5])
        raise ValueError(
            f"With strict=True every weight of `target` must have a match, "
            f"but {len(skipped)} do not ({lines}). Received: strict=True"
        )
    for tw, sw in copies:
        tw.assign(keras.ops.convert_to_numpy(sw))
    total = int(sum(np.prod(w.shape) for w in target.weights))
    return TransferReport(
        copied, skipped, int(sum(np.prod(t.shape) for t, _ in copies)), total
    )
