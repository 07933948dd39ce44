"""Structured pruning: remove whole channels and neurons.

Magnitude pruning makes zeros that only sparse-aware runtimes can skip;
channel pruning removes filters of `Conv` layers and units of `Dense`
layers, so the model gets smaller and faster on every runtime.

- `prune_channels(model, fraction)` returns a new, smaller model at once.
- `ChannelPruning(schedule)` zeroes whole channels progressively during
  `fit` (group sparsity), and `shrink(model)` then removes them exactly:
  what a zeroed channel still outputs (`activation(bias)`, a
  BatchNormalization's offset) goes into the next layer's bias, or the
  channel is kept where that would not be exact (zero padding).
- `channel_report(model, pruned)` compares the two: channels kept per
  layer, parameters, MACs, float32 and int8 sizes.

Channels are pruned consistently along their dependencies: the BatchNorm
after a Conv, a DepthwiseConv2D that reads them, the next Conv/Dense input
axis, every branch joined by an `Add` or `Multiply` (residual and
squeeze-excite blocks), `Concatenate` offsets, and `Flatten` before a
`Dense`. Model inputs and outputs (the classifier's units) are never pruned.
"""

import warnings

import keras
import numpy as np

from keras_slim import _layers
from keras_slim import _validation
from keras_slim.pruning import _constants
from keras_slim.pruning import _graph
from keras_slim.pruning import _selection
from keras_slim.pruning._channel_callback import ChannelPruning

# Public here: `keras_slim.pruning.channels.ChannelPruning` (and its
# docstring example is run with this module's).
ChannelPruning.__module__ = __name__


def _rebuild(analysis, remove, values):
    """Build the model without the channels of the classes in `remove`.

    A removed channel with a constant value (`values`, from
    `_constants.constants`) is folded into the bias of the Conv/Dense that
    reads it, which gets a bias if it had none.
    """
    keep = {}
    for key, elems in analysis.elems.items():
        keep[key] = np.array(
            [analysis.find(int(e)) not in remove for e in elems], bool
        )
    folds = {}
    for node in analysis.nodes:
        extra = _constants.fold(analysis, node, remove, values)
        if extra is not None:
            folds[node.name] = extra
    for node in analysis.nodes:
        entry, out = node.entry, keep[node.key]
        entry.pop("build_config", None)
        if node.is_op or node.layer is None:
            continue
        cfg = entry["config"]
        if node.role == "producer":
            cfg["filters" if "filters" in cfg else "units"] = int(out.sum())
            if node.name in folds:
                cfg["use_bias"] = True
        elif node.role == "reshape":
            target = list(cfg["target_shape"])
            target[-1] = int(out.sum())
            cfg["target_shape"] = tuple(target)
    if analysis.kind == "sequential":
        new = keras.Sequential.from_config(analysis.config)
    else:
        new = keras.Model.from_config(analysis.config)
    for node in analysis.nodes:
        if node.is_op or node.layer is None or not node.layer.weights:
            continue
        target = new.get_layer(node.name)
        in_keep = keep[node.inputs[0][0]] if node.inputs else None
        pairs = list(
            zip(
                _graph.channel_variables(node),
                _graph.channel_variables(_Shadow(node, target)),
            )
        )
        if not pairs or analysis.pinned_node(node):
            # Nothing of it changes (a pinned layer, such as a grouped
            # convolution, whose kernel's input axis is not its inputs').
            target.set_weights(node.layer.get_weights())
            continue
        for (old, role), (var, _) in pairs:
            var.assign(_slice(np.asarray(old), role, in_keep, keep[node.key]))
        if node.name in folds:
            bias = _constants.bias_of(node.layer, len(keep[node.key]))
            bias = bias + folds[node.name]
            target.bias.assign(bias[keep[node.key]].astype(target.bias.dtype))
    return new


class _Shadow:
    """A node view of the rebuilt layer (same kind, new layer)."""

    def __init__(self, node, layer):
        self.kind, self.layer = node.kind, layer


def _slice(value, role, in_keep, out_keep):
    if role == "vec":
        return value[out_keep]
    if role == "kernel":
        return value[..., in_keep, :][..., out_keep]
    if role == "tkernel":  # (..., out, in)
        return value[..., out_keep, :][..., in_keep]
    if role == "dw":
        return value[..., in_keep, :]
    # "pw": the expanded input axis of a separable conv's pointwise kernel.
    m = value.shape[-2] // len(in_keep)
    return value[..., np.repeat(in_keep, m), :][..., out_keep]


def prune_channels(
    model,
    fraction=0.5,
    criterion="l1",
    filters=None,
    min_channels=8,
    round_to=None,
):
    """Remove the least important channels and units of a model.

    Returns a new, smaller model with the same inputs and outputs, holding
    the surviving weights: Conv filters and Dense units are removed, with
    everything that depends on them (BatchNorm, DepthwiseConv2D, the next
    layer's input axis, every branch of a residual `Add`, `Concatenate`
    offsets, `Flatten` before a `Dense`). Each group of dependent layers
    keeps `ceil((1 - fraction) * channels)` channels, at least
    `min_channels`, rounded up to a multiple of `round_to`. Channels of
    layers joined by an `Add` are ranked by their summed importance.
    Channels that reach a model output (the classifier's units) are never
    removed, nor are the units of a layer whose activation mixes them
    (softmax). A removed channel that holds a constant (a zeroed filter
    outputs `activation(bias)`) is folded into the next layer's bias where
    that is exact, as `shrink` does; the others are simply dropped.
    Fine-tune the result to recover accuracy.

    Reference: Li et al., "Pruning Filters for Efficient ConvNets", 2017
    (`"l1"`); Liu et al., "Learning Efficient Convolutional Networks through
    Network Slimming", 2017 (`"bn_gamma"`).

    Args:
        model: A built Sequential or Functional Keras model (including
            `keras.applications` models). Not modified. Nested Sequential
            or Functional models (a backbone inside a transfer-learning
            model) are inlined: their layers join the one graph, and a
            `training=False` given to the nested call is kept.
        fraction: Fraction of the channels to remove in each group, in
            [0, 1).
        criterion: `"l1"` or `"l2"` norm of each filter's weights, or
            `"bn_gamma"`, the absolute scale of the BatchNormalization that
            follows it (layers without one are left whole).
        filters: Which Conv/Dense layers may lose channels: `None` (all),
            a regex or list of regexes on layer names, or a callable
            `layer -> bool`.
        min_channels: No group is pruned below this many channels.
        round_to: If set, channel counts kept are multiples of it (4 or 8
            suit fast int8 and float kernels).

    Returns:
        A new Keras model (Sequential stays Sequential, otherwise a
        Functional model; one flat Functional model where `model` nests
        models), uncompiled.

    Raises:
        TypeError: For a model that is not Sequential or Functional (such
            as a subclassed model), or arguments of the wrong type.
        ValueError: For `fraction` outside [0, 1), an unknown `criterion`,
            `filters` that match no Conv or Dense layer, an unbuilt model,
            a nested subclassed model, or a layer through which channels
            cannot be pruned consistently (named in the message).

    Example:

    >>> import keras
    >>> from keras_slim.pruning.channels import prune_channels
    >>> model = keras.Sequential([
    ...     keras.Input((8, 8, 1)),
    ...     keras.layers.Conv2D(32, 3, activation="relu"),
    ...     keras.layers.BatchNormalization(),
    ...     keras.layers.GlobalAveragePooling2D(),
    ...     keras.layers.Dense(10),
    ... ])
    >>> small = prune_channels(model, fraction=0.5)
    >>> small.layers[0].filters, small.output_shape
    (16, (None, 10))
    >>> model.count_params(), small.count_params()
    (778, 394)
    """
    _selection.check_args(
        fraction, criterion, min_channels, round_to, "fraction"
    )
    analysis, scores, skipped = _selection.analyse(model, filters, criterion)
    if fraction > 0 and not analysis.classes():
        raise _selection.nothing_to_prune(analysis, skipped, "prune_channels")
    remove = _selection.select(
        analysis, scores, fraction, min_channels, round_to
    )
    if fraction > 0 and not remove:
        warnings.warn(
            f"prune_channels(fraction={fraction}) removed no channel of "
            f"model {model.name!r}: each group of layers that may lose "
            f"channels keeps them all at min_channels={min_channels}"
            + (f" and round_to={round_to}" if round_to else "")
            + ". Lower `min_channels`.",
            stacklevel=2,
        )
    return _rebuild(analysis, remove, _constants.constants(analysis))


def shrink(model):
    """Remove the channels that hold a constant, with identical predictions.

    After `ChannelPruning` (or any training that drove whole filters to
    zero), the zeroed channels still cost memory and time. A zeroed filter
    does not output zero, though: it outputs `activation(bias)` (0.5 for a
    sigmoid, log 2 for a softplus), and a BatchNormalization after it adds
    its offset. `shrink` follows that constant through the graph and
    removes the channel when every Conv or Dense that reads it can take the
    constant into its bias (a bias is added if the layer had none), so the
    smaller model computes the same function:

    - a `Dense`, and a `Conv1D/2D/3D` with `padding="valid"` or 1x1
      kernels, fold it: their bias gains the constant times the kernel
      rows it multiplied (summed over the kernel's positions);
    - a Conv with zero padding reads the constant inside and zeros at the
      borders, a pooling with padding averages it with them, and an
      activation that mixes the units (softmax) depends on every unit:
      such a channel is kept unless its constant is exactly zero.

    Args:
        model: A built Sequential or Functional Keras model. Not modified.
            Nested models are inlined, as in `prune_channels`.

    Returns:
        A new, smaller Keras model with the same inputs and outputs.

    Raises:
        TypeError, ValueError: As `prune_channels`.

    Example:

    >>> import keras, numpy as np
    >>> from keras_slim.pruning.channels import shrink
    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dense(16, activation="sigmoid"),
    ...     keras.layers.Dense(2),
    ... ])
    >>> kernel, bias = model.layers[0].get_weights()
    >>> kernel[:, :10] = 0.0  # ten units now output sigmoid(bias)
    >>> model.layers[0].set_weights([kernel, bias])
    >>> small = shrink(model)
    >>> small.layers[0].units
    6
    >>> x = np.random.default_rng(0).normal(size=(8, 4))
    >>> bool(np.allclose(model.predict(x, verbose=0),
    ...                  small.predict(x, verbose=0), atol=1e-6))
    True
    """
    analysis, _, _ = _selection.analyse(model, None, "l1")
    values = _constants.constants(analysis)
    live = _constants.live_roots(analysis, values)
    remove = {r for r in analysis.classes() if r not in live}
    return _rebuild(analysis, remove, values)


def _channels(model):
    out = {}
    for _, layer in _layers.iter_layers(model):
        if _graph.channel_role(type(layer).__name__) != "producer":
            continue
        cfg = layer.get_config()
        for key in ("filters", "units"):
            if key in cfg:
                out[layer.name] = int(cfg[key])
    return out


def _measure(model):
    try:
        from keras_slim import profiling
    except ImportError:
        profiling = None
    if profiling is not None and hasattr(profiling, "profile"):
        p = profiling.profile(model)
        return {
            "params": int(p.total_params),
            "macs": int(p.macs),
            "float32_bytes": int(p.float32_bytes),
            "int8_bytes": int(p.int8_bytes),
        }
    params = int(model.count_params())
    return {
        "params": params,
        "macs": None,
        "float32_bytes": 4 * params,
        "int8_bytes": params,
    }


class ChannelPruningReport:
    """Channels kept per layer and model costs before and after pruning.

    Returned by `channel_report`; `summary()` prints it as a table.

    Attributes:
        layers: List of `(layer_name, channels_before, channels_after)`
            for every Conv and Dense layer.
        before, after: Dicts with `params`, `macs`, `float32_bytes` and
            `int8_bytes` (from `keras_slim.profile`).

    Example:

    >>> report = ChannelPruningReport(
    ...     [("conv", 32, 16)],
    ...     {"params": 100, "macs": 1000, "float32_bytes": 400,
    ...      "int8_bytes": 100},
    ...     {"params": 50, "macs": 400, "float32_bytes": 200,
    ...      "int8_bytes": 50},
    ... )
    >>> report.ratio("macs")
    0.4
    """

    def __init__(self, layers, before, after):
        self.layers = layers
        self.before = before
        self.after = after

    def ratio(self, key):
        """`after[key] / before[key]`, e.g. `report.ratio("macs")`."""
        if not self.before.get(key):
            return None
        return self.after[key] / self.before[key]

    def summary(self):
        """Return the per-layer channels and the totals, as text."""
        lines = [f"{'layer':<32}{'before':>8}{'after':>8}"]
        for name, b, a in self.layers:
            lines.append(f"{name:<32}{b:>8}{a:>8}")
        for key in ("params", "macs", "float32_bytes", "int8_bytes"):
            b, a = self.before[key], self.after[key]
            if b is None:
                continue
            lines.append(f"{key:<24}{b:>12,}{a:>12,}  {a / b:.2f}x")
        return "\n".join(lines)

    def print_summary(self, print_fn=print):
        """Print `summary()`, line by line, with `print_fn`."""
        for line in self.summary().splitlines():
            print_fn(line)

    def __repr__(self):
        return (
            f"<ChannelPruningReport layers={len(self.layers)} "
            f"params={self.before['params']}->{self.after['params']}>"
        )


def channel_report(model, pruned_model):
    """Compare a model with its channel-pruned version.

    Args:
        model: The original model.
        pruned_model: The result of `prune_channels` or `shrink`.

    Returns:
        A `ChannelPruningReport`: channels per Conv/Dense layer (matched by
        name), parameters, MACs, float32 and int8 sizes before and after.

    Example:

    >>> import keras
    >>> from keras_slim.pruning.channels import channel_report
    >>> from keras_slim.pruning.channels import prune_channels
    >>> model = keras.Sequential([
    ...     keras.Input((8,)),
    ...     keras.layers.Dense(32, activation="relu", name="hidden"),
    ...     keras.layers.Dense(2, name="head"),
    ... ])
    >>> report = channel_report(model, prune_channels(model, 0.75))
    >>> report.layers
    [('hidden', 32, 8), ('head', 2, 2)]
    >>> report.after["params"]
    90
    """
    _validation.check_model(model)
    _validation.check_model(pruned_model, "pruned_model")
    before, after = _channels(model), _channels(pruned_model)
    layers = [(n, c, after.get(n, 0)) for n, c in before.items()]
    return ChannelPruningReport(layers, _measure(model), _measure(pruned_model))
