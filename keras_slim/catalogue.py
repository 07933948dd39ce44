"""The catalogue of layer kinds: what each capability needs to know.

Every Keras layer kind that keras_slim handles has one `LayerKind` entry:
the kernels magnitude pruning acts on (and their output-channel and N:M
input axes), how its MACs are counted, its role in channel pruning, its
quantization-aware training rule, how its weights are laid out in an int8
file, and whether it can end a feature extractor (global pooling,
`Flatten`). Pruning, channel pruning, quantization, `profile` and
`transfer` all read this one catalogue, so a layer kind is taught once:
a custom layer class with `register_layer`.

Lookups by class or instance (`get_layer_kind`) find the entry of the
class or of its nearest catalogued base class, as `isinstance` would;
`get_layer_kind(..., exact=True)` and `quantization_rule_of` only the
class's own entry (a subclass may compute something else). Channel
pruning reads model configs, where layers are class names:
`get_layer_kind_by_name`.

Layer kinds of `keras.layers` that are deliberately not catalogued are
listed with the reason in `UNSUPPORTED`.
"""

import dataclasses

import keras

from keras_slim import _catalogue_data
from keras_slim import _catalogue_kinds
from keras_slim import _validation

# The values each capability's field may take (see `LayerKind`).
QUANTIZATION_RULES = _catalogue_data.QUANTIZATION_RULES
CHANNEL_ROLES = _catalogue_data.CHANNEL_ROLES
# Roles a custom layer may take; the others are judged from the config of
# one Keras class each (`target_shape`, `scale`, `activation`, ...).
REGISTRABLE_CHANNEL_ROLES = CHANNEL_ROLES[:5]
INT8_WEIGHTS = _catalogue_data.INT8_WEIGHTS
UNSUPPORTED = _catalogue_data.UNSUPPORTED

Kernel = _catalogue_kinds.Kernel
LayerKind = _catalogue_kinds.LayerKind
_check_layer_class = _catalogue_kinds._check_layer_class


_KINDS = {}  # layer class -> LayerKind
_BY_NAME = {}  # class name -> LayerKind (the last registered of a name)


def _add(kind):
    _KINDS[kind.layer_class] = kind
    held = _BY_NAME.get(kind.name)
    # A custom class never takes the name of a Keras class (`Dense`).
    keras_name = held is not None and held.layer_class.__module__.startswith(
        "keras."
    )
    if not keras_name or held.layer_class is kind.layer_class:
        _BY_NAME[kind.name] = kind
    return kind


def _load():
    for classes, fields in _catalogue_data.KINDS:
        kernels = tuple(Kernel(*k) for k in fields.get("kernels", ()))
        for cls in classes:
            _add(LayerKind(cls, **{**fields, "kernels": kernels}))


_load()


def _kernels(prunable):
    if isinstance(prunable, (str, Kernel)) or not isinstance(
        prunable, (tuple, list)
    ):
        raise TypeError(
            "Expected `prunable` to be a tuple or list of variable names "
            "(str) or `keras_slim.catalogue.Kernel`. "
            f"Received: prunable={prunable!r}"
        )
    kernels = []
    for item in prunable:
        if isinstance(item, str):
            item = Kernel(item)
        if not isinstance(item, Kernel):
            raise TypeError(
                "Expected every item of `prunable` to be a variable name "
                "(str) or a `keras_slim.catalogue.Kernel`. "
                f"Received: prunable={prunable!r}"
            )
        kernels.append(item)
    names = [k.name for k in kernels]
    if len(set(names)) != len(names):
        raise ValueError(
            "Expected `prunable` to name each variable once. "
            f"Received: prunable={prunable!r}"
        )
    return tuple(kernels)


def _inherited(layer_class):
    """A new class's entry: what its nearest catalogued base gives it.

    Pruned kernels, MACs, int8 layout and pooling apply to subclasses;
    quantization rules and channel roles do not (see `get_layer_kind`).
    """
    base = get_layer_kind(layer_class)
    if base is None:
        return LayerKind(layer_class)
    return dataclasses.replace(
        base, layer_class=layer_class, quantization=None, channel_role=None
    )


def register_layer(
    layer_class,
    *,
    prunable=None,
    quantization=None,
    channel_role=None,
    macs=None,
    pooling=None,
):
    """Teach keras_slim a custom layer class, once for every capability.

    Pruning, channel pruning, quantization-aware training, `profile` and
    `keras_slim.transfer` then treat `layer_class` (and, except for
    quantization and channel pruning, its subclasses) as described. An
    argument left at `None` keeps what the catalogue already says about
    the class, so calls can add one capability at a time; a class new to
    the catalogue starts with what its nearest catalogued base class gives
    its subclasses (pruned kernels, MACs, pooling), with no quantization
    rule and no channel role. Channel pruning finds layers by class name
    (model configs name them so): a custom class named like a Keras layer
    class (`Dense`) is not found by name, and its channels are kept whole.

    Args:
        layer_class: A `keras.layers.Layer` subclass.
        prunable: Weights magnitude pruning acts on: a tuple of variable
            names, which get output axis -1 and no N:M input axis, or of
            `Kernel`s stating their axes (`Kernel("kernel",
            input_axis=-2)` for a Dense-like kernel that N:M may prune).
        quantization: Its quantization-aware training rule, one of
            `QUANTIZATION_RULES`: for a layer without weights, usually
            `"output"` (a new value: inputs and output get int8 ranges),
            `"passthrough"` (reshapes or selects values), `"activation"`
            (ReLU-like, fused into the op before it), `"add"` or `"skip"`
            (left float).
        channel_role: How channel pruning follows channels through it, one
            of `REGISTRABLE_CHANNEL_ROLES` (see `LayerKind`): most often
            `"pass"` (each channel stays where it is) or `"merge"`.
        macs: Callable `layer -> int or None` counting the
            multiply-accumulates of one sample.
        pooling: Whether a classification head may start after it.

    Returns:
        The class's new `LayerKind`.

    Raises:
        TypeError: if `layer_class` is not a Keras layer class, `prunable`
            is not a tuple of names or `Kernel`s, `macs` is not callable
            or `pooling` not a bool.
        ValueError: if `quantization` or `channel_role` is not an allowed
            value, `prunable` names a variable twice, or `channel_role`
            is `"producer"` or `"depthwise"` for a class with no kernel
            (given in `prunable` or from a catalogued base class).

    Example:

    >>> class Double(keras.layers.Layer):
    ...     def call(self, x):
    ...         return x * 2.0
    >>> kind = register_layer(Double, quantization="output")
    >>> kind = register_layer(Double, channel_role="pass",
    ...                       macs=lambda layer: 0)
    >>> kind.quantization, kind.channel_role
    ('output', 'pass')
    >>> get_layer_kind_by_name("Double") is kind
    True
    """
    _check_layer_class(layer_class, "layer_class")
    if channel_role is not None:
        _validation.check_choice(
            "channel_role", channel_role, REGISTRABLE_CHANNEL_ROLES
        )
    fields = {
        "kernels": None if prunable is None else _kernels(prunable),
        "quantization": quantization,
        "channel_role": channel_role,
        "macs": macs,
        "pooling": pooling,
    }
    kind = _KINDS.get(layer_class) or _inherited(layer_class)
    changes = {k: v for k, v in fields.items() if v is not None}
    kind = dataclasses.replace(kind, **changes)
    if kind.channel_role in ("producer", "depthwise") and not kind.kernels:
        raise ValueError(
            f"Expected `prunable` to name the kernel of a layer with "
            f"channel_role={kind.channel_role!r} (its last axis holds the "
            f"output channels). Received: prunable={prunable!r}"
        )
    return _add(kind)


def get_layer_kind(layer, exact=False):
    """Return the catalogue entry of a layer or layer class, or `None`.

    Args:
        layer: A Keras layer, or a `keras.layers.Layer` subclass.
        exact: If `False` (default), the entry of the class or of its
            nearest catalogued base class (as `isinstance` would match);
            if `True`, only the class's own entry.

    Returns:
        A `LayerKind`, or `None` when the catalogue does not know it.

    Raises:
        TypeError: if `layer` is neither a Keras layer nor a layer class.

    Example:

    >>> class MyConv(keras.layers.Conv2D):
    ...     pass
    >>> get_layer_kind(MyConv(4, 3)).name
    'Conv2D'
    >>> get_layer_kind(MyConv, exact=True) is None
    True
    """
    cls = layer if isinstance(layer, type) else type(layer)
    if not issubclass(cls, keras.layers.Layer):
        raise TypeError(
            "Expected `layer` to be a Keras layer or a `keras.layers.Layer` "
            f"subclass. Received: layer={layer!r}"
        )
    if exact:
        return _KINDS.get(cls)
    for base in cls.__mro__:
        kind = _KINDS.get(base)
        if kind is not None:
            return kind
    return None


def get_layer_kind_by_name(class_name):
    """Return the entry of the layer class called `class_name`, or `None`.

    For layers seen through a model config (`"class_name"` entries), as
    channel pruning reads them. Only the exact name matches.

    Args:
        class_name: A layer class name, e.g. `"Conv2D"`.

    Returns:
        A `LayerKind`, or `None`.

    Raises:
        TypeError: if `class_name` is not a string.

    Example:

    >>> get_layer_kind_by_name("BatchNormalization").channel_role
    'norm'
    >>> get_layer_kind_by_name("Lambda") is None
    True
    """
    _validation.check_type("class_name", class_name, str, "a string")
    return _BY_NAME.get(class_name)


def quantization_rule_of(layer_class):
    """Return the quantization-aware training rule of a layer class.

    Only the class's own entry counts (not a base class's): a subclass may
    compute something else, so it needs its own rule. `ReLU` and
    `Activation` are judged further by the quantization code (a ReLU with
    a threshold or slope, a softmax activation).

    Args:
        layer_class: A `keras.layers.Layer` subclass.

    Returns:
        One of `QUANTIZATION_RULES`, or `None` when the class has no rule.

    Raises:
        TypeError: if `layer_class` is not a Keras layer class.

    Example:

    >>> quantization_rule_of(keras.layers.Conv2D)
    'conv'
    >>> quantization_rule_of(keras.layers.Conv3D) is None
    True
    """
    _check_layer_class(layer_class, "layer_class")
    kind = _KINDS.get(layer_class)
    return None if kind is None else kind.quantization


def count_macs(layer):
    """Multiply-accumulates of one sample through a built layer, or `None`.

    Counts the multiplications by weights: convolutions (depthwise,
    separable and transposed too), Dense and EinsumDense; pooling,
    activations, normalization, merges and reshapes count 0. `None` when
    the layer is not built, its shapes are unknown (layers of subclassed
    models) or its kind is not catalogued.

    Args:
        layer: A Keras layer.

    Returns:
        An int, or `None`.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((10, 4)),
    ...     keras.layers.SeparableConv1D(8, 3),
    ... ])
    >>> count_macs(model.layers[0])  # 8 positions x (3*4 + 4*8)
    352
    """
    _validation.check_type("layer", layer, keras.layers.Layer, "a Keras layer")
    kind = get_layer_kind(layer)
    if not layer.built or kind is None or kind.macs is None:
        return None
    return kind.macs(layer)


def supported_layers():
    """Return the catalogue: one `LayerKind` per layer class it knows.

    Returns:
        A list of `LayerKind`, Keras's own kinds first (weighted ones
        first), then registered custom classes, in registration order.

    Example:

    >>> kinds = supported_layers()
    >>> [kind.name for kind in kinds][:3]
    ['Dense', 'EinsumDense', 'Conv1D']
    """
    return list(_KINDS.values())


_MACS_TEXT = {_catalogue_data.no_macs: "0", _catalogue_data.unknown_macs: "-"}


def _markdown_cells(kind):
    weights = [f"`{name}`" for name in kind.prunable]
    weights += [f"`{name}` (on request)" for name in kind.prunable_on_request]
    macs = "-" if kind.macs is None else _MACS_TEXT.get(kind.macs, "counted")
    return (
        ", ".join(weights) or "-",
        macs,
        kind.channel_role or "-",
        kind.quantization or "-",
        "yes" if kind.pooling else "-",
    )


def markdown_table():
    """Return the catalogue as a Markdown table (for the README).

    Layer classes with the same cells share a row. "-" means not handled:
    no pruned weights, MACs not counted, channels pinned (channel pruning
    keeps them whole), no quantization rule.

    Returns:
        A string, one table row a line.

    Example:

    >>> print(markdown_table().splitlines()[2])
    | `Dense` | `kernel` | counted | producer | dense | - |
    """
    rows = {}
    for kind in supported_layers():
        rows.setdefault(_markdown_cells(kind), []).append(kind.name)
    lines = [
        "| Layer | Pruned weights | MACs | Channel pruning "
        "| Quantization rule | Head after it |",
        "|---|---|---|---|---|---|",
    ]
    for cells, names in rows.items():
        layer = ", ".join(f"`{name}`" for name in names)
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = [
    "CHANNEL_ROLES",
    "INT8_WEIGHTS",
    "QUANTIZATION_RULES",
    "REGISTRABLE_CHANNEL_ROLES",
    "UNSUPPORTED",
    "Kernel",
    "LayerKind",
    "count_macs",
    "get_layer_kind",
    "get_layer_kind_by_name",
    "markdown_table",
    "quantization_rule_of",
    "register_layer",
    "supported_layers",
]
