"""Where activation ranges go, decided while the forward pass runs.

The converter keeps int8 tensors at the model inputs, after ReLU/ReLU6
(fused into the convolution), after `Add` (or its fused ReLU), after
averaging pools, concatenations and the logits; never between a
convolution and its BatchNorm or ReLU. A layer whose output could still
be fused (a convolution, BN, `Add`) leaves it "pending"; the next consumer
either fuses it (BN after a convolution, ReLU after any of them) or
quantizes it first. That works the same eagerly, traced or symbolic, for
Sequential, Functional, subclassed and nested models.
"""

import contextlib
import functools
import threading

import keras

from keras_slim.quantization import _rules


class _Scope:
    """Tensors whose quantization is pending during one forward pass."""

    def __init__(self, training):
        self.training = training
        self.pending = {}  # id(tensor) -> (tensor, producer rule, quantize)
        self.done = {}  # id(tensor) -> (tensor, quantized tensor)
        # The int8 step of a quantized tensor, and of a convolution's
        # pending output its `bias_record`: what a bias needs to be rounded
        # as the file rounds it. Each is made when first read (a node of
        # the graph under `quantize_model`), at most once.
        self.scales = {}  # id(tensor) -> (tensor, make the step)
        self.biases = {}  # id(tensor) -> (tensor, make the record)

    def note_scale(self, tensor, make):
        self.scales[id(tensor)] = (tensor, functools.cache(make))

    def same_scale(self, tensor, source):
        """`tensor` is on `source`'s grid (pooling, padding, reshape)."""
        entry = self.scales.get(id(source))
        if entry and entry[0] is source:
            self.scales[id(tensor)] = (tensor, entry[1])

    def scale_of(self, tensor):
        entry = self.scales.get(id(tensor))
        return entry[1]() if entry and entry[0] is tensor else None

    def has_scale(self, tensor):
        entry = self.scales.get(id(tensor))
        return bool(entry) and entry[0] is tensor

    def note_bias(self, tensor, make):
        self.biases[id(tensor)] = (tensor, functools.cache(make))

    def bias_of(self, tensor):
        entry = self.biases.get(id(tensor))
        return entry[1]() if entry and entry[0] is tensor else None

    def defer(self, tensor, rule, quantize):
        self.pending[id(tensor)] = (tensor, rule, quantize)

    def producer(self, tensor):
        entry = self.pending.get(id(tensor))
        return entry[1] if entry and entry[0] is tensor else None

    def materialize(self, structure):
        def one(t):
            key = id(t)
            done = self.done.get(key)
            if done is not None and done[0] is t:
                return done[1]
            entry = self.pending.get(key)
            if entry is None or entry[0] is not t:
                return t
            q = entry[2](t)
            self.done[key] = (t, q)
            return q

        return keras.tree.map_structure(one, structure)

    def close(self):
        """Drop every tensor and function noted during the forward pass.
        A pending tensor's `quantize` is a closure over this scope: the
        cycle kept each step's activations alive until Python's cyclic
        garbage collector ran (on torch, ~80 MB a step of MobileNetV2 at
        batch 32, the process growing by gigabytes between collections
        and its steps up to 2.5x slower while it grew). New dicts, so a
        `Recorder` keeps the `done` of its pass."""
        self.pending, self.done, self.scales, self.biases = {}, {}, {}, {}


_local = threading.local()


def current_scope():
    return getattr(_local, "scope", None)


@contextlib.contextmanager
def scope(training, new=False):
    """Open a placement scope (reuse the enclosing one unless `new`)."""
    outer = current_scope()
    if outer is not None and not new:
        yield outer
        return
    inner = _Scope(training)
    _local.scope = inner
    try:
        yield inner
    finally:
        _local.scope = outer
        inner.close()


_FUSES_WITH = {
    "batchnorm": _rules.CONV_RULES,
    "concat": _rules.CONCAT_PRODUCERS,
    "activation": _rules.FUSING_PRODUCERS,
}


def fuses(sc, rule, args):
    """Whether a layer of `rule` fuses with the producers of `args`."""
    producers = _FUSES_WITH.get(rule)
    return producers is not None and all(
        sc.producer(t) in producers for t in keras.tree.flatten(args)
    )


def place(
    rule, layer, args, run, quantize_output, shared=False, requantize=None
):
    """Run one layer under its rule inside the current scope.

    `run(args, fused)` computes the layer's output (`fused`: whether it
    fuses with the ops that produced its inputs); `quantize_output(t)`
    returns `t` fake-quantized with this layer's output range. A
    `shared` output (several consumers) fuses into none of them.
    """
    sc = current_scope()
    if sc is None or rule == "quantizer":
        return run(args, False)
    fused = fuses(sc, rule, args)
    if not fused and rule == "concat":
        # Some inputs fuse, some do not (an input already on a grid, e.g.
        # pooled from a quantized tensor): the file's producers of the
        # former write at the concatenation's range (one rounding), the
        # others are quantized and requantized to it (a QUANTIZE op).
        args = keras.tree.map_structure(
            lambda t: (
                t
                if sc.producer(t) in _rules.CONCAT_PRODUCERS
                else _requantized(sc, sc.materialize(t), requantize)
            ),
            args,
        )
    elif not fused and rule != "embedding":  # an embedding reads ids
        args = sc.materialize(args)
    outputs = run(args, fused)
    if rule == "skip":
        return outputs
    if rule == "passthrough":
        # Pooling, padding, reshaping: the output keeps its input's scale.
        inputs = keras.tree.flatten(args)
        if len(inputs) == 1:
            sc.same_scale(outputs, inputs[0])
    if not keras.ops.is_tensor(outputs) and not isinstance(
        outputs, keras.KerasTensor
    ):
        return outputs  # several outputs: left as they are
    mode = _rules.output_mode(layer, rule)
    if mode == "quantize" and sc.has_scale(outputs):
        # Already on a grid with no op after it (an affine layer whose ADD
        # the file drops): the converter keeps that first range only.
        return outputs
    if mode == "quantize":
        return quantize_output(outputs)
    if mode == "pending":
        sc.defer(outputs, "shared" if shared else rule, quantize_output)
    return outputs


def _requantized(sc, t, requantize):
    """A concatenation's input already on a grid: moved to the
    concatenation's range by `requantize(t, step)` (the file's QUANTIZE
    op between them), when given."""
    if requantize is None or not sc.has_scale(t):
        return t
    return requantize(t, sc.scale_of(t))
