"""Channel dependency analysis for structured pruning (private).

The graph is read through public API only: `keras.Model.get_config()`
("layers" and their "inbound_nodes") for Functional models, the layer list
for Sequential ones, and `layer.get_weights()`.

Every channel that a Conv/Dense layer creates is an *element*. A tensor is
an array of element ids, one per channel of its last axis. Per-channel
layers (BatchNorm, activations, pooling, DepthwiseConv2D, ...) pass their
input elements on; `Concatenate` concatenates them; `Add`, `Multiply` and
the other element-wise joins *unite* the elements they align (a union-find),
so that residual branches are pruned consistently. A *class* is a set of
united elements: it is kept or removed as a whole. Channels of the model
inputs and outputs, and of layers that `filters` leaves out, are *pinned*.
How each layer kind creates, passes or joins channels is its channel role
in `keras_slim.catalogue`; a layer without one pins its input channels.
"""

import math

import keras
import numpy as np

from keras_slim import catalogue
from keras_slim.pruning import _inline

# Element-wise `keras.ops` that appear in Functional graphs (`x + 3.0`),
# by class name; layer kinds are in `keras_slim.catalogue`.
OPS = set(
    "Add Subtract Multiply Divide TrueDivide Maximum Minimum Negative "
    "Absolute Square Sqrt Relu Relu6 Silu HardSilu Sigmoid HardSigmoid "
    "Tanh".split()
)
# Values an activation is probed with: laid out in rows of 3 and of 2, they
# give the same numbers only when it acts on each unit alone (not softmax,
# glu, sparsemax, ...).
_PROBE = np.linspace(-2.5, 2.5, 6, dtype="float32")


def elementwise(fn):
    """Whether `fn` (an activation or a layer) maps each unit on its own.

    Probed with numbers: `fn` of six values laid out as 2x3 must equal
    `fn` of the same values laid out as 3x2. A function that fails on the
    probe counts as mixing its units, so its channels are kept (never a
    wrong result).
    """
    try:
        a = keras.ops.convert_to_numpy(fn(_PROBE.reshape(2, 3)))
        b = keras.ops.convert_to_numpy(fn(_PROBE.reshape(3, 2)))
    except Exception:  # any failure: keep the units
        return False
    return (
        a.shape == (2, 3)
        and b.shape == (3, 2)
        and bool(np.allclose(a.ravel(), b.ravel(), equal_nan=True))
    )


def channel_role(class_name):
    """The catalogue's channel role of a layer class name, or None."""
    kind = catalogue.get_layer_kind_by_name(class_name)
    return None if kind is None else kind.channel_role


def is_model_layer(entry):
    return entry["class_name"] in ("Functional", "Sequential", "Model")


class Node:
    """One call of one layer (or keras op) in the graph."""

    def __init__(self, name, entry, inputs, scalars, layer):
        self.name = name
        self.entry = entry  # the layer's entry in the model config
        self.kind = entry["class_name"]
        self.is_op = str(entry.get("module", "")).startswith("keras.src.ops")
        self.inputs = inputs  # list of (key, shape)
        self.scalars = scalars  # non-tensor call arguments (numbers)
        self.layer = layer  # the live layer, None for keras ops
        self.key = (name, 0, 0)
        # How channels go through it (`keras_slim.catalogue.CHANNEL_ROLES`).
        self.role = None if self.is_op else channel_role(self.kind)

    @property
    def config(self):
        return self.entry["config"]


def _tensors(obj, out, scalars):
    """Collect keras tensors (history, shape) from a serialized call."""
    if isinstance(obj, dict) and obj.get("class_name") == "__keras_tensor__":
        cfg = obj["config"]
        out.append((tuple(cfg["keras_history"]), tuple(cfg["shape"])))
    elif isinstance(obj, dict):
        for value in obj.values():
            _tensors(value, out, scalars)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _tensors(value, out, scalars)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        scalars.append(float(obj))


def read_graph(model):
    """Return `(kind, config, nodes, input_keys, output_keys)`.

    `kind` is "sequential" or "functional"; `config` is a fresh copy of
    `model.get_config()` whose layer entries the nodes point to, so that
    they can be edited and rebuilt with `from_config`.
    """
    if isinstance(model, keras.Sequential):
        config = model.get_config()
        nodes, prev = [], None
        live = {layer.name: layer for layer in model.layers}
        for entry in config["layers"]:
            name = entry["config"]["name"]
            _check_entry(entry, live.get(name))
            if entry["class_name"] == "InputLayer":
                prev = ((name, 0, 0), tuple(entry["config"]["batch_shape"]))
                nodes.append(Node(name, entry, [], [], None))
                continue
            layer = live[name]
            if prev is None:
                shape = tuple(layer.input.shape)
                prev = (("__input__", 0, 0), shape)
                entry_in = {"class_name": "InputLayer", "config": {}}
                nodes.append(Node("__input__", entry_in, [], [], None))
            nodes.append(Node(name, entry, [prev], [], layer))
            prev = ((name, 0, 0), tuple(layer.output.shape))
        return "sequential", config, nodes, [nodes[0].key], [prev[0]]

    try:
        config = model.get_config()
    except NotImplementedError:
        config = None
    if not (
        isinstance(config, dict)
        and "layers" in config
        and "input_layers" in config
        and "output_layers" in config
    ):
        raise TypeError(
            "Channel pruning supports Sequential and Functional Keras models "
            "(and keras.applications models), whose graph of layers can be "
            "read and rebuilt. Received a subclassed model "
            f"{model.name!r} of type {type(model).__name__}: rebuild it with "
            "the Functional API (`keras.Model(inputs, outputs)`) first."
        )
    live = {layer.name: layer for layer in model.layers}
    nodes = []
    for entry in config["layers"]:
        name = entry["name"]
        _check_entry(entry, live.get(name))
        inbound = entry.get("inbound_nodes") or []
        if len(inbound) > 1:
            raise ValueError(
                f"Cannot prune channels consistently: layer {name!r} "
                f"({entry['class_name']}) is shared (called {len(inbound)} "
                "times). Shared layers are not supported."
            )
        inputs, scalars = [], []
        if inbound:
            _tensors(inbound[0].get("args", []), inputs, scalars)
            kw_scalars = []
            _tensors(inbound[0].get("kwargs", {}), inputs, kw_scalars)
        nodes.append(Node(name, entry, inputs, scalars, live.get(name)))
    inputs = [tuple(k) for k in _as_list(config["input_layers"])]
    outputs = [tuple(k) for k in _as_list(config["output_layers"])]
    return "functional", config, nodes, inputs, outputs


def _as_list(keys):
    if keys and not isinstance(keys[0], (list, tuple)):
        return [keys]
    return keys


def _check_entry(entry, layer):
    if is_model_layer(entry) or isinstance(layer, keras.Model):
        name = entry.get("name") or entry["config"].get("name")
        raise ValueError(
            "Channel pruning does not support nested models: layer "
            f"{name!r} is itself a model ({entry['class_name']}). Build one "
            "flat Functional model from its layers first."
        )


class Analysis:
    """Element/class bookkeeping for a model graph."""

    def __init__(self, model):
        model = _inline.inline(model)  # nested models: one flat graph
        self.model = model
        (
            self.kind,
            self.config,
            self.nodes,
            self.input_keys,
            self.output_keys,
        ) = read_graph(model)
        self.by_name = {node.name: node for node in self.nodes}
        self.parent = []
        self.pinned = []
        self.owner = []  # element -> producer name (None for inputs)
        self.elems = {}  # tensor key -> np.ndarray of element ids
        self.producers = {}  # producer name -> np.ndarray of its elements
        self.unknown = set()  # layers whose channels are all pinned
        self.deferred = []  # (node, reason, input elements) to validate
        for node in self.nodes:
            self._visit(node)
        for key in self.output_keys:
            self.pin(self.elems[key])

    # -- union-find ---------------------------------------------------------
    def _new(self, count, owner=None, pinned=False):
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        self.pinned.extend([pinned] * count)
        self.owner.extend([owner] * count)
        return np.arange(start, start + count)

    def find(self, e):
        parent = self.parent
        root = e
        while parent[root] != root:
            root = parent[root]
        while parent[e] != root:
            parent[e], e = root, parent[e]
        return root

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            self.pinned[ra] = self.pinned[ra] or self.pinned[rb]

    def pinned_node(self, node):
        """True when `node` was handled as a layer of unknown mapping."""
        return node.name in self.unknown

    def pin(self, elems):
        for e in np.asarray(elems).ravel():
            self.pinned[self.find(int(e))] = True

    def roots(self, elems):
        return np.array([self.find(int(e)) for e in elems], dtype=int)

    # -- graph walk ---------------------------------------------------------
    def _in(self, node):
        return [self.elems[key] for key, _ in node.inputs]

    def _unknown(self, node, reason, passthrough=False):
        """Handle a layer whose channel mapping is unknown or mixing.

        Its input channels must all be pinned; this is checked by
        `validate` once the outputs and `filters` have pinned theirs.
        """
        self.deferred.append((node, reason, self._in(node)))
        if passthrough:
            self.elems[node.key] = self._in(node)[0]
            return
        channels = self._out_channels(node)
        self.unknown.add(node.name)
        self.elems[node.key] = self._new(channels, pinned=True)

    def validate(self):
        """Raise if channels that may be pruned reach an unknown layer."""
        for node, reason, inputs in self.deferred:
            for elems in inputs:
                if not all(self.pinned[r] for r in self.roots(elems)):
                    raise ValueError(
                        "Cannot prune channels consistently through layer "
                        f"{node.name!r} ({node.kind}): {reason}. Exclude "
                        "the layers that feed it with `filters`, or "
                        "remove it."
                    )

    def _out_channels(self, node):
        if node.layer is not None:
            try:
                return int(node.layer.output.shape[-1])
            except (AttributeError, ValueError, TypeError):
                pass
        for other in self.nodes:
            for key, shape in other.inputs:
                if key == node.key:
                    return int(shape[-1])
        return int(self.model.outputs[0].shape[-1])

    def _visit(self, node):
        role, cfg = node.role, node.config
        if role == "input" and not node.inputs:
            shape = cfg.get("batch_shape")
            if shape is None:
                shape = self.model.inputs[0].shape
            self.elems[node.key] = self._new(int(shape[-1]), pinned=True)
            return
        if any(key not in self.elems for key, _ in node.inputs):
            self._unknown(node, "it takes a tensor this analysis cannot see")
            return
        if any(key[2] != 0 for key, _ in node.inputs):
            self._unknown(node, "it reads a second output of a layer")
            return
        ins = self._in(node)
        if node.is_op:
            self._visit_op(node, ins)
            return
        if role == "producer":
            if cfg.get("groups", 1) != 1:
                self._unknown(node, "grouped convolutions are not supported")
                return
            if cfg.get("data_format", "channels_last") == "channels_first":
                self._unknown(node, "channels_first is not supported")
                return
            n = int(cfg.get("filters") or cfg.get("units"))
            # An activation that mixes the units (softmax) gives each unit
            # a value that depends on the others: none may be removed.
            act = getattr(node.layer, "activation", None)
            mixing = act is not None and not elementwise(act)
            self.elems[node.key] = self._new(n, node.name, pinned=mixing)
            self.producers[node.name] = self.elems[node.key]
        elif role == "depthwise":
            act = getattr(node.layer, "activation", None)
            if act is not None and not elementwise(act):
                self._unknown(node, "its activation mixes the channels")
                return
            m = int(cfg.get("depth_multiplier", 1))
            self.elems[node.key] = np.repeat(ins[0], m)
        elif role == "norm":
            axis = cfg.get("axis", -1)
            axis = axis[0] if isinstance(axis, (list, tuple)) else axis
            rank = len(node.inputs[0][1])
            if axis not in (-1, rank - 1):
                self._unknown(node, f"it normalizes axis {axis}, not the last")
                return
            self.elems[node.key] = ins[0]
        elif role == "flatten":
            shape = node.inputs[0][1]
            spatial = int(np.prod(shape[1:-1])) if len(shape) > 2 else 1
            self.elems[node.key] = np.tile(ins[0], spatial)
        elif role == "reshape":
            target = list(cfg["target_shape"])
            if target[-1] != len(ins[0]):
                self._unknown(node, "it changes the channel (last) axis")
                return
            self.elems[node.key] = ins[0]
        elif role == "rescaling":
            if not all(
                np.ndim(cfg.get(k, 0)) == 0 for k in ("scale", "offset")
            ):
                self._unknown(node, "it has a per-channel scale or offset")
                return
            self.elems[node.key] = ins[0]
        elif role == "activation" and not elementwise(node.layer):
            self._unknown(node, "its activation mixes the channels", True)
        elif role == "concatenate":
            rank = len(node.inputs[0][1])
            if cfg.get("axis", -1) in (-1, rank - 1):
                self.elems[node.key] = np.concatenate(ins)
            else:
                self._merge(node, ins)
        elif role == "merge":
            self._merge(node, ins)
        elif role in ("pass", "activation"):
            if cfg.get("data_format", "channels_last") == "channels_first":
                self._unknown(node, "channels_first is not supported")
                return
            self.elems[node.key] = ins[0]
        else:
            self._unknown(node, "its channel mapping is not known")

    def _merge(self, node, ins):
        wide = [e for e in ins if len(e) > 1]
        if not wide:
            self.elems[node.key] = ins[0]
            return
        n = len(wide[0])
        if any(len(e) != n for e in wide):
            self._unknown(node, "its inputs have different channel counts")
            return
        for other in wide[1:]:
            for a, b in zip(wide[0], other):
                self.union(int(a), int(b))
        self.elems[node.key] = wide[0]

    def _visit_op(self, node, ins):
        if node.kind not in OPS or not ins:
            self._unknown(node, "this keras op's channel mapping is not known")
            return
        self._merge(node, ins)

    # -- classes and groups -------------------------------------------------
    def classes(self):
        """Return {root: [elements]} for every unpinned class."""
        out = {}
        for elems in self.producers.values():
            for e in elems:
                root = self.find(int(e))
                if not self.pinned[root]:
                    out.setdefault(root, []).append(int(e))
        return out

    def groups(self):
        """Return a list of groups: lists of unpinned class roots.

        Classes are in one group when they share a producer, so the
        producers of a group keep channel counts in step.
        """
        classes = self.classes()
        link = {}

        def find(x):
            while link.setdefault(x, x) != x:
                x = link[x]
            return x

        for members in classes.values():
            owners = {self.owner[e] for e in members}
            first = find(next(iter(owners)))
            for other in owners:
                link[find(other)] = first
        groups = {}
        for root, members in classes.items():
            groups.setdefault(find(self.owner[members[0]]), []).append(root)
        return [sorted(g) for _, g in sorted(groups.items(), key=str)]


def keep_count(total, fraction, min_channels, round_to):
    """Number of classes a group of `total` keeps."""
    if total <= min_channels:
        return total
    keep = math.ceil(total * (1.0 - fraction) - 1e-9)
    keep = max(keep, min_channels, 1)
    if round_to:
        keep = math.ceil(keep / round_to) * round_to
    return min(keep, total)


# -- per-channel variables -----------------------------------------------------


def channel_variables(node):
    """Return `[(variable, role)]` for the per-channel weights of `node`.

    Roles: "kernel" (input axis -2, output axis -1), "tkernel" (a
    transposed convolution's `(..., out, in)` kernel: output axis -2,
    input axis -1), "dw" (depthwise
    kernel: input axis -2, multiplier axis -1), "pw" (pointwise kernel of
    a separable conv: expanded input axis -2, output axis -1) and "vec"
    (one value per output channel). The kernels are the catalogue's, in
    order: the kernel of a depthwise layer, or one whose output channels
    span two axes (in, multiplier), is a depthwise stage, and a kernel
    after it reads its expanded channels.
    """
    layer, role = node.layer, channel_role(node.kind)
    if layer is None or role not in ("producer", "depthwise", "norm"):
        return []
    out = []
    if role == "norm":
        for attr in ("gamma", "beta", "moving_mean", "moving_variance"):
            var = getattr(layer, attr, None)
            if var is not None:
                out.append((var, "vec"))
        return out
    depthwise = False
    for kernel in catalogue.get_layer_kind_by_name(node.kind).kernels:
        var = getattr(layer, kernel.name)
        if _transposed(kernel):
            out.append((var, "tkernel"))
        elif role == "depthwise" or isinstance(kernel.output_axis, tuple):
            out.append((var, "dw"))
            depthwise = True
        else:
            out.append((var, "pw" if depthwise else "kernel"))
    if getattr(layer, "use_bias", False) and layer.bias is not None:
        out.append((layer.bias, "vec"))
    return out


def producer_kernel(node):
    """The kernel whose last axis indexes the producer's output channels.

    The catalogue's last kernel of the layer kind (the pointwise kernel of
    a separable conv; the multiplier axis of a depthwise kernel; a
    transposed convolution's kernel with its last two axes swapped).
    """
    kind = catalogue.get_layer_kind_by_name(node.kind)
    kernel = np.asarray(getattr(node.layer, kind.kernels[-1].name))
    if _transposed(kind.kernels[-1]):
        kernel = np.swapaxes(kernel, -1, -2)
    return kernel


def _transposed(kernel):
    """Whether a catalogue kernel has its output channels on axis -2 and
    its input channels on -1 (Conv1D/2D/3DTranspose)."""
    return kernel.output_axis == -2 and kernel.input_axis == -1
