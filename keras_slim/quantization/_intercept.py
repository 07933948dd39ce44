"""How a model made quantization-aware in place runs its layers.

A Sequential or Functional model is a graph Keras describes: its nodes,
in Keras's order, are run here (`run_graph`, through Keras's own
`Function._run_through_graph`, as `Functional.call` does), and each
node's operation is called through its `LayerHook`, which places the
activation ranges around it. The user's layers are not changed: the
hook calls the layer itself (`layer(...)`, its own `__call__` and
`call`), or, for the layers the int8 file computes differently (a
weight layer with its fake-quantized kernel, a BatchNormalization that
folds into no convolution, `Rescaling`, `Normalization`), runs that
computation inside a `_Context` layer with the user layer's dtype
policy, so inputs and variables are cast as the layer's own call would
cast them (mixed precision). Nested graph models are run the same way.

A subclassed model's graph exists only as Python code in its `call`.
The layers it calls (and the layers of a custom layer that owns
sub-layers, which the graph sees as one node) are reached only from
inside that code: for those the layer's `call` is overridden on the
instance (`override_call`), the one place keras_slim still does so.
"""

import contextlib
import functools
import threading

import keras

from keras_slim import _layers
from keras_slim.quantization import _attention
from keras_slim.quantization import _layernorm
from keras_slim.quantization import _placement
from keras_slim.quantization import _quantizers
from keras_slim.quantization import _recurrent
from keras_slim.quantization import _rules


def is_symbolic(args):
    return any(
        isinstance(t, keras.KerasTensor) for t in keras.tree.flatten(args)
    )


class _Context(keras.layers.Layer):
    """Runs a function inside a Keras layer call made with a user layer's
    dtype policy: floating inputs cast to its compute dtype, and (mixed
    precision) variables read in it, as in the user layer's own call."""

    def __init__(self, layer):
        super().__init__(
            dtype=layer.dtype_policy, autocast=layer.autocast, name=layer.name
        )
        # Keras's `compute_mask` passes the input's mask on, as the
        # layers computed here (weights, BatchNorm, affine) do.
        self.supports_masking = layer.supports_masking
        if isinstance(layer, (keras.layers.RNN, keras.layers.Bidirectional)):
            # Its output keeps the mask only if it returns sequences.
            self.compute_mask = layer.compute_mask
        self.built = True

    def call(self, inputs, compute=None):
        return compute(inputs)


class LayerHook:
    """Runs one layer (or `keras.ops` node) of a model made
    quantization-aware in place, under its rule.

    `quantizers`: the `_Range` of its output, `{name: _Range}` of its
    inner tensors, the `_Range` of the input of its own activation (each
    `None` if it has none); `shared`: its output feeds several consumers.
    """

    def __init__(self, awareness, layer, rule, quantizers, shared):
        self.awareness = awareness
        self.layer = layer
        self.rule = rule
        self.output_range, self.inner_ranges, self.pre_range = quantizers
        self.inner_ranges = self.inner_ranges or {}
        self.inner_range = self.inner_ranges.get("inner")
        self.shared = shared
        self.weighted = rule in _rules.WEIGHT_RULES
        self.split = _rules.splits_activation(layer, rule)
        self.batchnorm = isinstance(layer, keras.layers.BatchNormalization)
        # An affine layer's MUL by ones or ADD of zeros, gone from its file.
        self.removed_ops = (
            _quantizers.removed_ops(layer) if rule == "affine" else None
        )
        custom = self.weighted or rule in _CUSTOM_RULES
        # Swish runs as LOGISTIC (its fixed int8 grid) then MUL.
        self.swish = rule == "output" and _quantizers.is_swish_operation(layer)
        # PReLU runs as an int8 PRELU whose alpha the file stores per
        # tensor, symmetric (as a Dense kernel).
        self.prelu = rule == "output" and _quantizers.is_prelu(layer)
        needs_context = (custom or self.swish) and isinstance(
            layer, keras.layers.Layer
        )
        self.context = _Context(layer) if needs_context else None
        if self.context is not None and layer.activity_regularizer:
            activity_loss_per_sample()  # eagerly, not while tracing
        self.keras_math = (
            self.weighted or rule == "embedding"
        ) and _runs_keras_math(
            layer, rule, self.split or self.inner_range is not None
        )

    def _compute(
        self, x, sc, original, training, masks, input_scale=None, seen=None
    ):
        """The output of the layer on `x` (the tuple `(query, value, key)`
        for attention), computed as the int8 file does, in scope `sc`
        (`input_scale`: the int8 step of `x`, where known; `seen`: a list
        that receives a separable convolution's quantized depthwise
        output)."""
        layer, rule, awareness = self.layer, self.rule, self.awareness

        def inner(t):
            out = self.inner_range(t, sc.training, awareness)
            if seen is not None:
                seen.append(out)
            return out

        def pre(t):
            return self.pre_range(t, sc.training, awareness)

        def step(name, t):
            return self.inner_ranges[name](t, sc.training, awareness)

        if self.weighted:
            return _quantizers.weight_forward(
                layer,
                rule,
                x,
                True,
                pre if self.split else None,
                inner if self.inner_range is not None else None,
                input_scale,
                sc.scale_of,
            )
        if rule == "affine":
            return _quantizers.affine_forward(layer, x, inner, self.removed_ops)
        if rule == "layernorm":
            return _layernorm.forward(layer, x, step)
        if rule == "rmsnorm":
            return _layernorm.rms_forward(layer, x, step)
        if rule == "groupnorm":
            return _layernorm.group_forward(layer, x, step)
        if rule == "unitnorm":
            return _layernorm.unit_forward(layer, x, step)
        if rule == "embedding":
            return _quantizers.embedding_lookup(layer, x)
        if rule == "attention":
            return _attention.forward(layer, x, step, training, **masks)
        if rule == "recurrent":
            return _recurrent.forward(
                layer, x, step, masks.get("mask"), training
            )
        return _quantizers.standalone_batchnorm(
            layer, x, bool(training), inner, original
        )

    def __call__(self, original, args, kwargs, in_call):
        """Run the layer on `args`, `kwargs`.

        `original(*args, **kwargs)` runs the layer as it is; `in_call`:
        we are inside the layer's own `__call__` (an overridden `call`),
        so its computation needs no `_Context`.
        """
        sc = _placement.current_scope()
        if sc is None or is_symbolic(args):
            return original(*args, **kwargs)
        awareness = self.awareness
        if self.batchnorm and awareness.bn_frozen:
            kwargs = {**kwargs, "training": False}
        if not awareness.active:
            return original(*args, **kwargs)
        layer, rule = self.layer, self.rule

        def compute(x, fused):
            return self._compute(
                x, sc, original, training, masks, input_scale, seen
            )

        masks, training = {}, kwargs.get("training", sc.training)
        input_scale = None  # the int8 step of a weighted layer's input
        seen = []  # a separable convolution's quantized depthwise output

        def run(new_args, fused):
            nonlocal masks, training, input_scale
            context = self.context
            if context is not None and (
                context.dtype_policy is not layer.dtype_policy
            ):
                # The layer's policy changed since (a mixed precision
                # model computes in float32 while it is converted).
                context.dtype_policy = layer.dtype_policy
            if self.swish:
                if in_call or context is None:  # in its own call; an op
                    return _quantizers.swish(new_args[0])
                outputs = context(new_args[0], compute=_quantizers.swish)
                _activity_loss(layer, outputs)
                return outputs
            custom = self.weighted or rule in _CUSTOM_RULES
            custom = custom and (rule != "batchnorm" or not fused)
            if self.prelu:
                return with_quantized_kernel(
                    layer, "prelu", lambda: original(*new_args, **kwargs)
                )
            if not custom:
                outputs = original(*new_args, **kwargs)
                if rule == "batchnorm" and _quantizers.on_moving_statistics(
                    layer, training
                ):
                    outputs = _fold_bias(sc, layer, new_args[0], outputs)
                return outputs
            first = new_args[0]
            if self.weighted:
                input_scale = sc.scale_of(first)
            if rule == "attention":
                bound = _attention.bind(layer, new_args, kwargs)
                if bound is None:
                    return original(*new_args, **kwargs)
                first, masks, called_with = bound
                first = sc.materialize(first)  # `key=` or `value=` too
                if called_with is not None:
                    training = called_with
            if rule == "recurrent":
                first, masks = _recurrent.bind(layer, new_args, kwargs)
            if in_call or self.context is None:
                outputs = compute(first, fused)
            elif self.keras_math:
                bias = _quantizers.rounded_bias(layer, rule, input_scale)
                outputs = with_quantized_kernel(
                    layer, rule, lambda: original(*new_args, **kwargs), bias
                )
            else:
                outputs = context(first, compute=lambda x: compute(x, fused))
                _activity_loss(layer, outputs)
            if self.weighted:
                if rule == "separable":  # its pointwise input's step
                    input_scale = sc.scale_of(seen[-1]) if seen else None
                _note_bias(sc, layer, rule, input_scale, outputs)
            return outputs

        def quantize_output(t):
            return self.output_range(t, sc.training, awareness)

        def requantize(t, step):
            return self.output_range.requantize(t, step, awareness)

        return _placement.place(
            rule,
            layer,
            args,
            run,
            quantize_output,
            self.shared,
            requantize if rule == "concat" and self.output_range else None,
        )


_CUSTOM_RULES = (
    "affine",
    "batchnorm",
    "layernorm",
    "groupnorm",
    "rmsnorm",
    "unitnorm",
    "embedding",
    "attention",
    "recurrent",
)


def _runs_keras_math(layer, rule, split):
    """Whether the layer's own call computes what the int8 file does once
    its kernel is fake-quantized: a Dense or 2D/3D convolution whose
    activation fuses (or is linear). A 1D convolution's kernel must be
    fake-quantized expanded to 2D (`weight_forward`), a separable one has
    a range between its two convolutions, and an activation that runs as
    an op of its own needs a range before it."""
    if rule == "embedding":
        return isinstance(getattr(layer, "embeddings", None), keras.Variable)
    if split or rule not in (
        "conv",
        "depthwise",
        "dense",
        "einsum",
        "transpose",
    ):
        return False
    kernel = getattr(layer, "kernel", None)
    if not isinstance(kernel, keras.Variable):
        return False  # e.g. a LoRA-enabled Dense computes its kernel
    return rule in ("dense", "einsum") or len(kernel.shape) >= 4


def with_quantized_kernel(layer, rule, call, bias=None):
    """`call()` (the layer's own call) with its kernel read as its
    fake-quantized value: Keras's `StatelessScope` maps each of the
    layer's variables to its current value, the kernel to the quantized
    one (the gradient reaches the kernel through the straight-through
    estimator), and the bias to `bias` where given."""
    quantize = functools.partial(_quantizers.quantize_kernel, rule=rule)
    if rule == "embedding":  # a table quantized per tensor, as a Dense
        kernel = layer.embeddings
        quantize = functools.partial(_quantizers.quantize_kernel, rule="dense")
    elif rule == "prelu":
        kernel = layer.alpha
    else:
        kernel = layer.kernel
    own_bias = getattr(layer, "bias", None) if bias is not None else None

    def value(v):
        if v is kernel:
            return quantize(v)
        return bias if v is own_bias else v.value

    mapping = [(v, value(v)) for v in layer.variables]
    with keras.StatelessScope(
        state_mapping=mapping, collect_losses=True, initialize_variables=False
    ) as scope:
        outputs = call()
    for loss in scope.losses:  # an activity regularizer's loss
        layer.add_loss(loss)
    return outputs


def _note_bias(sc, layer, rule, input_scale, outputs):
    """Record on a convolution's pending output the bias it added, for a
    BatchNormalization that folds into it (made only if one reads it)."""
    if input_scale is not None and _rules.records_bias(layer, rule):
        sc.note_bias(
            outputs,
            lambda: _quantizers.bias_record(layer, rule, input_scale),
        )


def _fold_bias(sc, layer, x, outputs):
    """A BatchNormalization folded into the convolution before it: its
    output with the folded bias rounded as the file rounds it."""
    record = sc.bias_of(x)
    if record is None or not _quantizers.folds_on_last_axis(
        layer, len(x.shape)
    ):
        return outputs
    correction = _quantizers.folded_bias_correction(layer, record)
    return outputs + keras.ops.cast(correction, outputs.dtype)


def _activity_loss(layer, outputs):
    """What `Layer.__call__` adds for an activity regularizer, for a
    layer whose computation ran outside its own call."""
    regularizer = getattr(layer, "activity_regularizer", None)
    if regularizer is None:
        return
    for t in keras.tree.flatten(outputs):
        if keras.ops.is_tensor(t):
            loss = regularizer(t)
            if activity_loss_per_sample() and len(t.shape) > 0:
                batch = keras.ops.cast(keras.ops.shape(t)[0], loss.dtype)
                loss = keras.ops.divide_no_nan(loss, batch)
            layer.add_loss(loss)


@functools.cache
def activity_loss_per_sample():
    """Whether this Keras divides an activity regularizer's loss by the
    batch size (newer versions do, 3.12 does not), measured once."""
    probe = keras.layers.Identity(activity_regularizer=keras.ops.sum)
    probe(keras.ops.ones((2, 1)))
    return float(keras.ops.convert_to_numpy(probe.losses[0])) < 1.5


def override_call(hook, layer):
    """Route `layer`'s own `call` through `hook` (instance attribute; for
    the layers a subclassed model's Python code calls)."""
    original = layer.call

    def call(*args, **kwargs):
        return hook(original, args, kwargs, in_call=True)

    layer.call = call


def override_submodel_call(model):
    """A model nested in a subclassed model: its output tensors may still
    be pending a range when it returns; materialize them."""
    original = model.call

    def call(*args, **kwargs):
        sc = _placement.current_scope()
        if sc is None or is_symbolic(args):
            return original(*args, **kwargs)
        args = sc.materialize(args)
        return sc.materialize(original(*args, **kwargs))

    model.call = call


# Running a graph model ------------------------------------------------------


def _functional_base(cls):
    for c in cls.__mro__:
        if c.__name__ == "Functional" and c.__module__.startswith("keras"):
            return c
    return None


def runs_as_graph(model):
    """Whether `model`'s forward pass is its Keras graph: a Sequential or
    Functional model whose class keeps Keras's own `call`."""
    if isinstance(model, keras.Sequential):
        return type(model).call is keras.Sequential.call
    functional = _functional_base(type(model))
    if functional is None or not _layers.is_graph_model(model):
        return False
    return type(model).call is functional.call


def graph_operations(model):
    """The operations (layers and `keras.ops` nodes) `run_graph` calls for
    `model`, and the graph models among them it runs itself: `(ops,
    graphs)`, sets of ids."""
    ops, graphs = set(), set()

    def visit(graph):
        graphs.add(id(graph))
        functional = _graph_of(graph)
        members = graph.layers if functional is None else functional.operations
        for op in members:
            if isinstance(op, keras.layers.InputLayer):
                continue
            ops.add(id(op))
            if isinstance(op, keras.Model) and runs_as_graph(op):
                visit(op)

    visit(model)
    return ops, graphs


def _graph_of(model):
    """The Functional graph `model` runs (a Sequential's inner one), or
    None for a Sequential that loops over its layers."""
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    return model


def _context_kwargs(op, context):
    names = getattr(op, "_call_context_args", ())
    return {k: v for k, v in context.items() if k in names and v is not None}


_local = threading.local()


class Recorder:
    """The output of each operation of the graph passes run while it is
    open (`recording`): `outputs`, `(id(operation), tensor)` in call
    order."""

    def __init__(self):
        self.outputs = []
        self.done = {}  # the placement scope's, of the last pass

    def values(self):
        """Dict of `id(operation)` to its output as the pass used it: a
        pending output (see `_placement`) quantized where a consumer
        quantized it, else as computed (fused into the next op, or
        taking a concatenation's range); the last call of each operation
        wins. Nothing is quantized after the pass."""

        def used(t):
            entry = self.done.get(id(t))
            return entry[1] if entry is not None and entry[0] is t else t

        return {
            key: keras.tree.map_structure(used, t) for key, t in self.outputs
        }


@contextlib.contextmanager
def recording():
    """Record the operations' outputs of the model calls made inside
    (eager calls of a model made quantization-aware in place)."""
    outer = getattr(_local, "recorder", None)
    recorder = Recorder()
    _local.recorder = recorder
    try:
        yield recorder
    finally:
        _local.recorder = outer


def current_recorder():
    return getattr(_local, "recorder", None)


def run_graph(model, inputs, hooks, graphs, training=None, mask=None, **kwargs):
    """`model.call(inputs, training, mask, **kwargs)` for a graph model,
    each operation called through its hook in `hooks` (by id), each
    nested graph model in `graphs` (ids) run the same way."""
    context = {"training": training, **kwargs}

    def operation_fn(op):
        def call(*args, **kw):
            kw = {**kw, **_context_kwargs(op, context)}
            sc = _placement.current_scope()
            if id(op) in graphs:
                if sc is not None:
                    args = sc.materialize(args)
                # `Functional.call(inputs, training, mask, **kwargs)`.
                positional = dict(zip(("training", "mask"), args[1:3]))
                kw = {**positional, **kw}
                training_arg = kw.pop("training", training)
                out = run_graph(op, args[0], hooks, graphs, training_arg, **kw)
                out = out if sc is None else sc.materialize(out)
            else:
                hook = hooks.get(id(op))
                if hook is None:
                    out = op(*args, **kw)
                else:
                    out = hook(op, args, kw, in_call=False)
            recorder = current_recorder()
            if recorder is not None:
                recorder.outputs.append((id(op), out))
            return out

        return call

    functional = _graph_of(model)
    if functional is None:  # a Sequential without a graph
        outputs = inputs
        for layer in model.layers:
            kw = {}
            if layer._call_has_mask_arg:
                kw["mask"] = mask
            outputs = operation_fn(layer)(outputs, **kw)
            mask = keras.tree.map_structure(_layers.get_keras_mask, outputs)
        return outputs
    inputs = functional._standardize_inputs(inputs)
    if mask is not None:
        for x, m in zip(inputs, keras.tree.flatten(mask)):
            if m is not None:
                _layers.set_keras_mask(x, m)
    outputs = functional._run_through_graph(inputs, operation_fn=operation_fn)
    if isinstance(outputs, (list, tuple)) and len(outputs) == 1:
        return outputs[0]
    return outputs


def call_arguments(signature, args, kwargs):
    """`(inputs, training, mask, rest)` of a call of a model's `call`
    (`signature`)."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return None
    arguments = dict(bound.arguments)
    rest = arguments.pop("kwargs", {})
    inputs = arguments.pop("inputs", None)
    training = arguments.pop("training", None)
    mask = arguments.pop("mask", None)
    return inputs, training, mask, {**arguments, **rest}
