"""The two record types of the catalogue, `Kernel` and `LayerKind`.

Defined here to keep `keras_slim.catalogue` (which re-exports them, and
is their documented home) to the registry and its lookups.
"""

import dataclasses

import keras

from keras_slim import _catalogue_data
from keras_slim import _validation

QUANTIZATION_RULES = _catalogue_data.QUANTIZATION_RULES
CHANNEL_ROLES = _catalogue_data.CHANNEL_ROLES
INT8_WEIGHTS = _catalogue_data.INT8_WEIGHTS


def _check_axis(name, value, allow_tuple):
    ints = (
        isinstance(value, tuple)
        and value
        and all(isinstance(a, int) and not isinstance(a, bool) for a in value)
    )
    ok = (
        value is None
        or callable(value)
        or (isinstance(value, int) and not isinstance(value, bool))
        or (allow_tuple and ints)
    )
    if not ok:
        more = ", a tuple of ints" if allow_tuple else ""
        raise TypeError(
            f"Expected `{name}` to be None, an int{more} or a callable "
            f"`layer -> axis`. Received: {name}={value!r}"
        )


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A prunable weight of a layer kind, and the axes that matter.

    Args:
        name: The variable's name (`variable.name`), e.g. `"kernel"`.
        output_axis: The axis indexing the layer's output channels: an int,
            a tuple of ints when several axes together do (a depthwise
            kernel `(..., in, multiplier)` has `(-2, -1)`), a callable
            `layer -> axes` when it depends on the layer's configuration,
            or `None`.
        input_axis: The axis the layer reduces its input over, along which
            an N:M pattern ("2:4") groups weights: an int, a callable
            `layer -> int or None`, or `None` when the kernel has none
            (N:M patterns then skip it).
        by_default: Whether magnitude pruning acts on it when `filters` is
            `None`; `False` for weights pruned only when `filters` selects
            their layer (`Embedding`).

    Example:

    >>> kernel = Kernel("kernel", output_axis=-1, input_axis=-2)
    >>> dense = keras.layers.Dense(3)
    >>> kernel.output_axes_of(dense), kernel.input_axis_of(dense)
    ((-1,), -2)
    """

    name: str
    output_axis: object = -1
    input_axis: object = None
    by_default: bool = True

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(
                "Expected `name` to be a non-empty string (a variable "
                f"name). Received: name={self.name!r}"
            )
        _check_axis("output_axis", self.output_axis, allow_tuple=True)
        _check_axis("input_axis", self.input_axis, allow_tuple=False)
        _validation.check_type("by_default", self.by_default, bool, "a bool")

    def output_axes_of(self, layer):
        """The output-channel axes of this kernel in `layer`, a tuple."""
        axes = self.output_axis
        axes = axes(layer) if callable(axes) else axes
        return (axes,) if isinstance(axes, int) else axes

    def input_axis_of(self, layer):
        """The N:M input axis of this kernel in `layer`, or `None`."""
        axis = self.input_axis
        return axis(layer) if callable(axis) else axis


@dataclasses.dataclass(frozen=True)
class LayerKind:
    """What keras_slim knows about one layer class.

    Args:
        layer_class: The `keras.layers.Layer` subclass.
        kernels: Tuple of `Kernel`: the weights magnitude pruning acts on.
        macs: Callable `layer -> int or None`, the multiply-accumulates of
            one sample (`None` when the layer's shapes are unknown), or
            `None` when they cannot be counted.
        channel_role: How channel pruning follows channels through it, one
            of `CHANNEL_ROLES`, or `None` (its channels are pinned):
            `"producer"` creates channels (a `filters` or `units` config
            entry, its last kernel's last axis); `"depthwise"` makes
            `depth_multiplier` channels of each input channel; `"norm"`
            scales each channel of the last axis (`gamma`, `beta`,
            `moving_mean`, `moving_variance`); `"pass"` keeps each channel
            where it is (activations, dropout, pooling, padding); `"merge"`
            joins inputs element-wise (residual `Add`); the other roles
            belong to one Keras class each, whose config is read.
        quantization: Its quantization-aware training rule, one of
            `QUANTIZATION_RULES`, or `None` (no rule: refused unless
            skipped with `filters`).
        pooling: Whether a classification head may start after it
            (global pooling, `Flatten`), for `keras_slim.transfer`.
        int8_weights: How an int8 TFLite file stores its weights:
            `"per_channel"` scales (convolutions), `"per_tensor"` (Dense),
            `"folded"` into the layer before (BatchNormalization), or
            `None` (a byte a weight).

    Example:

    >>> kind = get_layer_kind(keras.layers.SeparableConv2D)
    >>> kind.prunable, kind.channel_role, kind.quantization
    (('depthwise_kernel', 'pointwise_kernel'), 'producer', 'separable')
    """

    layer_class: type
    kernels: tuple = ()
    macs: object = None
    channel_role: object = None
    quantization: object = None
    pooling: bool = False
    int8_weights: object = None

    def __post_init__(self):
        _check_layer_class(self.layer_class, "layer_class")
        if not isinstance(self.kernels, tuple) or not all(
            isinstance(k, Kernel) for k in self.kernels
        ):
            raise TypeError(
                "Expected `kernels` to be a tuple of `Kernel`. "
                f"Received: kernels={self.kernels!r}"
            )
        if self.macs is not None and not callable(self.macs):
            raise TypeError(
                "Expected `macs` to be None or a callable `layer -> int or "
                f"None`. Received: macs={self.macs!r}"
            )
        for name, choices in (
            ("channel_role", CHANNEL_ROLES),
            ("quantization", QUANTIZATION_RULES),
            ("int8_weights", INT8_WEIGHTS),
        ):
            value = getattr(self, name)
            if value is not None:
                _validation.check_choice(name, value, choices)
        _validation.check_type("pooling", self.pooling, bool, "a bool")

    @property
    def name(self):
        """The class name, as model configs spell it."""
        return self.layer_class.__name__

    @property
    def prunable(self):
        """Names of the kernels pruned by default."""
        return tuple(k.name for k in self.kernels if k.by_default)

    @property
    def prunable_on_request(self):
        """Names of the kernels pruned only when `filters` selects them."""
        return tuple(k.name for k in self.kernels if not k.by_default)

    def kernel(self, name):
        """The `Kernel` called `name`, or `None`."""
        for kernel in self.kernels:
            if kernel.name == name:
                return kernel
        return None


def _check_layer_class(value, name):
    if not (isinstance(value, type) and issubclass(value, keras.layers.Layer)):
        raise TypeError(
            f"Expected `{name}` to be a `keras.layers.Layer` subclass. "
            f"Received: {name}={value!r}"
        )


# Documented, and pickled, as `keras_slim.catalogue.Kernel` / `.LayerKind`.
Kernel.__module__ = "keras_slim.catalogue"
LayerKind.__module__ = "keras_slim.catalogue"
