"""freeze, unfreeze and trainable_summary: choose which layers train."""

import math
import re

import keras
import numpy as np

from keras_slim import _layers
from keras_slim import _validation
from keras_slim.transfer._freeze_report import FreezeReport


class _Leaf:
    """A leaf layer, its path, and the containers it sits in."""

    def __init__(self, path, layer, ancestors):
        self.path = path
        self.layer = layer
        self.ancestors = ancestors

    @property
    def effectively_trainable(self):
        return self.layer.trainable and all(a.trainable for a in self.ancestors)


def leaves(model):
    """Return the `_Leaf`s of `model` in the order of `_layers.iter_layers`."""
    out = []
    for path, layer in _layers.iter_layers(model):
        # The containers on the path, found again by name from the model.
        ancestors, node = [model], model
        for name in path.split("/")[:-1]:
            node = next(c for c in node.layers if c.name == name)
            ancestors.append(node)
        out.append(_Leaf(path, layer, tuple(ancestors)))
    return out


def _num(variables):
    return int(sum(np.prod(v.shape) for v in variables))


def _names_hint(all_leaves):
    names = [lf.path for lf in all_leaves]
    hint = ", ".join(repr(n) for n in names[:6])
    return hint + (", ..." if len(names) > 6 else "")


def position(model, all_leaves, up_to, from_top, name="up_to"):
    """Index in `all_leaves` of the layer named or indexed by `up_to`.

    A name may be a leaf name, a path, or the name of a nested model (then
    its last leaf counts when freezing from the input, its first when
    unfreezing from the top).
    """
    if isinstance(up_to, bool) or not isinstance(up_to, (str, int)):
        raise TypeError(
            f"Expected `{name}` to be a layer name (str) or index (int). "
            f"Received: {name}={up_to!r} of type {type(up_to).__name__}"
        )
    n = len(all_leaves)
    if isinstance(up_to, int):
        if not -n <= up_to < n:
            raise ValueError(
                f"Expected `{name}` to be a layer index in [{-n}, {n - 1}] "
                f"(model {model.name!r} has {n} layers). "
                f"Received: {name}={up_to}"
            )
        return up_to % n
    matches = [
        i
        for i, lf in enumerate(all_leaves)
        if lf.path == up_to or up_to in lf.path.split("/")
    ]
    if not matches:
        raise ValueError(
            f"No layer named {up_to!r} in model {model.name!r}. Expected "
            f"`{name}` to be one of its layer names ({_names_hint(all_leaves)})"
            f" or an index. Received: {name}={up_to!r}"
        )
    return min(matches) if from_top else max(matches)


def check_selection(up_to, fraction, filters):
    """Refuse bad `up_to`/`fraction`/`filters` before any work."""
    if up_to is not None and fraction is not None:
        raise ValueError(
            "Expected at most one of `up_to` and `fraction`. "
            f"Received: up_to={up_to!r}, fraction={fraction!r}"
        )
    if fraction is not None:
        _validation.check_range("fraction", fraction, 0, 1)
    return _validation.compile_filters(filters)


def select(model, all_leaves, up_to, fraction, predicate, from_top):
    """The leaves with weights chosen by `up_to`/`fraction`/`filters`."""
    weighted = [i for i, lf in enumerate(all_leaves) if lf.layer.weights]
    if up_to is not None:
        pos = position(model, all_leaves, up_to, from_top)
        chosen = [i for i in weighted if (i >= pos if from_top else i <= pos)]
    elif fraction is not None:
        k = int(math.floor(fraction * len(weighted) + 0.5))
        chosen = weighted[len(weighted) - k :] if from_top else weighted[:k]
    else:
        chosen = weighted
    return [
        all_leaves[i]
        for i in chosen
        if predicate(all_leaves[i].path, all_leaves[i].layer)
    ]


def set_trainable(all_leaves, targets, value):
    """Make `targets` (effectively) trainable or frozen, nothing else.

    Unfreezing a layer inside a frozen nested model unfreezes the
    containers (Keras cascades that to every child), then re-freezes the
    other children that were frozen before.
    """
    if not value:
        for lf in targets:
            lf.layer.trainable = False
        return
    before = {id(lf.layer): lf.effectively_trainable for lf in all_leaves}
    wanted = {id(lf.layer) for lf in targets}
    for lf in targets:
        for container in lf.ancestors:
            if not container.trainable:
                container.trainable = True
    for lf in all_leaves:
        desired = id(lf.layer) in wanted or before[id(lf.layer)]
        if lf.effectively_trainable != desired:
            lf.layer.trainable = desired


def recompile(model):
    """Recompile `model` from its own compile config when it can.

    Returns `(recompiled, message)`.
    """
    if not model.compiled:
        return False, (
            "The model is not compiled: the new trainable state takes "
            "effect when you compile it."
        )
    if type(model).compile is not keras.Model.compile:
        return False, (
            f"{type(model).__name__} overrides `compile()`, so it was not "
            "recompiled: call `model.compile(...)` again before `fit` for "
            "the change to take effect."
        )
    try:
        model.compile_from_config(model.get_compile_config())
    except Exception as e:  # noqa: BLE001 - unserializable compile args
        return False, (
            "The model could not be recompiled from its compile config "
            f"({type(e).__name__}: {e}): call `model.compile(...)` again "
            "before `fit` for the change to take effect."
        )
    return True, (
        "Recompiled with the same optimizer configuration, loss and "
        "metrics (`model.compile_from_config(model.get_compile_config())`)"
        "; the optimizer starts from fresh state, since a Keras optimizer "
        "cannot take on new variables."
    )


def apply(
    model,
    action,
    up_to,
    fraction,
    filters,
    keep_batchnorm_frozen,
    recompile_model,
):
    _validation.check_model(model)
    predicate = check_selection(up_to, fraction, filters)
    all_leaves = leaves(model)
    chosen = select(
        model, all_leaves, up_to, fraction, predicate, action == "unfreeze"
    )
    skipped = []
    if action == "unfreeze" and keep_batchnorm_frozen:
        bn = [
            lf
            for lf in chosen
            if isinstance(lf.layer, keras.layers.BatchNormalization)
        ]
        skipped = [
            (lf.path, "BatchNormalization kept frozen (inference mode)")
            for lf in bn
        ]
        chosen = [lf for lf in chosen if lf not in bn]
    set_trainable(all_leaves, chosen, action == "unfreeze")
    if recompile_model:
        recompiled, message = recompile(model)
    else:
        recompiled, message = False, ""
    return FreezeReport(
        action,
        [lf.path for lf in chosen],
        skipped,
        _num(model.trainable_weights),
        _num(model.non_trainable_weights),
        recompiled,
        message,
    )


def freeze(model, up_to=None, fraction=None, filters=None, recompile=True):
    """Freeze layers of a model from the input up, in place.

    Transfer learning trains a new head on a frozen pretrained body, then
    perhaps fine-tunes its top. `freeze` sets `trainable = False` on the
    chosen layers (for nested models, on the leaf layers, so the rest of
    the model is untouched). A frozen `BatchNormalization` runs in
    inference mode in Keras 3: it normalizes with its moving statistics and
    never updates them, so they do not drift on the new data.

    A compiled model keeps training its old set of weights until it is
    compiled again (Keras traces the train function once). `freeze`
    therefore recompiles a compiled model for you, with
    `model.compile_from_config(model.get_compile_config())`: the same
    optimizer configuration, loss and metrics, a fresh optimizer state. If
    that cannot be done (custom `compile()`, unserializable loss), the
    report's `message` says to recompile.

    Args:
        model: A built Keras model (Sequential, Functional, subclassed or
            nested).
        up_to: Freeze every layer from the input up to and including this
            one: a layer name (a nested model's name covers all its layers)
            or an index into the leaf layers (negative counts from the top;
            for a flat Functional model this is the `model.layers` index).
        fraction: Freeze this fraction, in [0, 1], of the layers that hold
            weights, from the input up. At most one of `up_to` and
            `fraction`; with neither, every layer is chosen.
        filters: Keep only the chosen layers that match: a regex on the
            layer path or name, a list of regexes, or a callable
            `layer -> bool`.
        recompile: Whether to recompile a compiled model.

    Returns:
        A `FreezeReport`: the layers frozen, the model's trainable and
        non-trainable parameters, whether it was recompiled, and a message.

    Raises:
        ValueError: if `fraction` is outside [0, 1], `up_to` names no layer
            or is out of range, or both are given; before any change.
        TypeError: if `model` is not a Keras model or `filters` is invalid.

    Example:

    >>> import keras, keras_slim, numpy as np
    >>> model = keras_slim.models.small_cnn()
    >>> report = keras_slim.transfer.freeze(model, up_to="bn4")
    >>> report.layers
    ['conv1', 'bn1', 'dw2', 'bn2', 'pw2', 'bn3', 'conv4', 'bn4']
    >>> report.trainable_params
    650
    >>> [l.name for l in model.layers if l.weights and l.trainable]
    ['logits']

    With the internet, the usual body is a pretrained backbone:
    `base = keras.applications.MobileNetV2(weights="imagenet",
    include_top=False, pooling="avg")`, then `freeze(base)`.
    """
    return apply(model, "freeze", up_to, fraction, filters, False, recompile)


def unfreeze(
    model,
    up_to=None,
    fraction=None,
    filters=None,
    keep_batchnorm_frozen=True,
    recompile=True,
):
    """Unfreeze layers of a model from the top down, in place.

    The fine-tuning step of transfer learning: once a new head has trained
    on a frozen body, let the top of the body train too, at a low learning
    rate. `unfreeze` works from the output down, the mirror of `freeze`.
    By default BatchNormalization layers stay frozen, so they keep running
    in inference mode with their pretrained statistics (the Keras
    fine-tuning recipe: a few batches of new data would otherwise wreck
    them). Unfreezing a layer inside a frozen nested model unfreezes only
    that layer. A compiled model is recompiled as in `freeze`.

    Args:
        model: A built Keras model.
        up_to: Unfreeze every layer from the top down to and including
            this one: a layer name or an index into the leaf layers.
        fraction: Unfreeze this fraction, in [0, 1], of the layers that
            hold weights, from the top down. At most one of `up_to` and
            `fraction`; with neither, every layer is chosen.
        filters: Keep only the chosen layers that match: a regex, a list of
            regexes or a callable `layer -> bool`.
        keep_batchnorm_frozen: Leave BatchNormalization layers frozen (in
            inference mode). They are listed in the report's `skipped`.
        recompile: Whether to recompile a compiled model.

    Returns:
        A `FreezeReport` of the layers now trainable.

    Raises:
        ValueError: if `fraction` is outside [0, 1], `up_to` names no layer
            or is out of range, or both are given; before any change.
        TypeError: if `model` is not a Keras model or `filters` is invalid.

    Example:

    >>> import keras, keras_slim, numpy as np
    >>> model = keras_slim.models.small_cnn()
    >>> _ = keras_slim.transfer.freeze(model)
    >>> report = keras_slim.transfer.unfreeze(model, up_to="conv4")
    >>> report.layers
    ['conv4', 'logits']
    >>> report.skipped
    [('bn4', 'BatchNormalization kept frozen (inference mode)')]
    >>> report.trainable_params
    19082
    """
    _validation.check_type(
        "keep_batchnorm_frozen", keep_batchnorm_frozen, bool, "a bool"
    )
    return apply(
        model,
        "unfreeze",
        up_to,
        fraction,
        filters,
        keep_batchnorm_frozen,
        recompile,
    )


_BLOCK = re.compile(
    r"^(conv\d+_block\d+|block_?\d+[a-z]?|expanded_conv(?:_\d+)?|stage\d+"
    r"|stack\d+_block\d+|layer\d+)(?=_|$)"
)


def _block(lf):
    parent, _, name = lf.path.rpartition("/")
    match = _BLOCK.match(name)
    key = match.group(1) if match else name
    return f"{parent}/{key}" if parent else key


def trainable_summary(model, print_fn=print):
    """Print a table of trainable and frozen parameters per block.

    Check what will train before calling `fit`: one row per block of
    layers that hold weights (the `block_N` / `blockNx` / `convN_blockM`
    groups of `keras.applications` models, otherwise one row per layer),
    with its trainable and non-trainable parameters and whether it trains.

    Args:
        model: A built Keras model.
        print_fn: Called with each line of the table.

    Raises:
        TypeError: if `model` is not a Keras model.

    Example:

    >>> import keras, keras_slim, numpy as np
    >>> model = keras_slim.models.small_cnn()
    >>> _ = keras_slim.transfer.freeze(model, up_to="bn3")
    >>> keras_slim.transfer.trainable_summary(model)
    Block                            Layers   Trainable  Non-trainable  State
    conv1                                 1           0            144  frozen
    bn1                                   1           0             64  frozen
    dw2                                   1           0            144  frozen
    bn2                                   1           0             64  frozen
    pw2                                   1           0            512  frozen
    bn3                                   1           0            128  frozen
    conv4                                 1      18,432              0  trains
    bn4                                   1         128            128  trains
    logits                                1         650              0  trains
    Total                                 9      19,210          1,184
    """
    _validation.check_model(model)
    if not callable(print_fn):
        raise TypeError(
            "Expected `print_fn` to be callable. "
            f"Received: print_fn={print_fn!r}"
        )
    rows = []
    for lf in leaves(model):
        if not lf.layer.weights:
            continue
        trains = lf.effectively_trainable
        tr = _num(w for w in lf.layer.weights if trains and w.trainable)
        non = _num(lf.layer.weights) - tr
        key = _block(lf)
        if rows and rows[-1][0] == key:
            row = rows[-1]
            row[1] += 1
            row[2] += tr
            row[3] += non
            row[4].add(trains)
        else:
            rows.append([key, 1, tr, non, {trains}])
    print_fn(
        f"{'Block':<32} {'Layers':>6} {'Trainable':>11} "
        f"{'Non-trainable':>14}  State"
    )
    for key, n, tr, non, states in rows:
        state = (
            "mixed"
            if len(states) > 1
            else ("trains" if True in states else "frozen")
        )
        print_fn(f"{key[:32]:<32} {n:>6} {tr:>11,} {non:>14,}  {state}")
    print_fn(
        f"{'Total':<32} {sum(r[1] for r in rows):>6} "
        f"{sum(r[2] for r in rows):>11,} {sum(r[3] for r in rows):>14,}"
    )
