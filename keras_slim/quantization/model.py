"""quantize_model: a new, saveable quantization-aware Keras model."""

import keras

from keras_slim import _layers
from keras_slim import _validation
from keras_slim.quantization import _in_place
from keras_slim.quantization import _placement
from keras_slim.quantization import _quantizers
from keras_slim.quantization import _rules
from keras_slim.quantization import _twins


class _Builder:
    """Rebuilds a Sequential or Functional model with fake-quant layers."""

    def __init__(self, model, rows, awareness):
        self.rules = {id(layer): rule for _, layer, rule in rows}
        self.paths = {id(layer): path for path, layer, _ in rows}
        self.awareness = awareness
        self.new_to_old = {}
        self.copies = []  # (FakeQuant, the in-place range or None)

        self.names = {layer.name for _, layer, _ in rows}
        self.shared = _rules.shared_outputs(model)

    def unique(self, name):
        candidate, i = name, 1
        while candidate in self.names:
            i += 1
            candidate = f"{name}_{i}"
        self.names.add(candidate)
        return candidate

    def fake_quant(
        self, tensor, name=None, source=None, fixed=None, layer=None
    ):
        """`tensor` through a new `FakeQuant` (or `layer`, one made and
        registered already), its step noted in the placement scope."""
        if layer is None:
            layer = _twins.FakeQuant(name=self.unique(name), fixed_range=fixed)
            self.copies.append((layer, source))
        out = layer(tensor)
        sc = _placement.current_scope()
        if sc is not None:  # its step, as a node of its own when needed
            sc.note_scale(out, lambda: layer(out, step=True))
        return out

    def clone_layer(self, layer):
        if not isinstance(layer, keras.layers.Layer):  # a `keras.ops` node
            self.new_to_old[id(layer)] = layer  # stateless: called again
            return layer
        if isinstance(layer, keras.Model):
            new = self.build(layer, top=False)
        else:
            rule = self.rules[id(layer)]
            cls = type(layer)
            if rule != "skip" and cls in _twins.TWINS:
                cls = _twins.TWINS[cls]
            elif (
                rule == "output"
                and cls is keras.layers.Activation
                and _quantizers.is_swish(layer.activation)
            ):  # swish: LOGISTIC on its int8 grid, then MUL
                cls = _twins.QuantizedActivation
            config = layer.get_config()
            if rule != "skip" and _rules.splits_activation(layer, rule):
                # The activation runs after a range of its own (call_layer).
                config["activation"] = "linear"
            new = cls.from_config(config)
        self.new_to_old[id(new)] = layer
        return new

    def call_layer(self, new, *args, **kwargs):
        sc = _placement.current_scope()
        old = self.new_to_old[id(new)]
        if isinstance(new, keras.Model):
            return new(*sc.materialize(args), **kwargs)
        rule = self.rules[id(old)]
        path = self.paths[id(old)]
        source = inner = pre = None
        if self.awareness is not None:
            source = self.awareness.ranges.get(path)
            inner = self.awareness.inner.get(path, {}).get("inner")
            pre = self.awareness.pre.get(path)
        if rule == "batchnorm" and not _placement.fuses(sc, rule, args):
            new = self.standalone_batchnorm(old, inner)
        split = rule != "skip" and _rules.splits_activation(old, rule)

        def run(new_args, fused):
            if rule == "affine":
                return self.affine(old, new_args[0], inner)
            if rule == "output" and _quantizers.is_swish_operation(old):
                if isinstance(old, keras.layers.Layer):
                    return new(new_args[0])  # the QuantizedActivation
                swish = _twins.QuantizedActivation(  # an `ops.silu` node
                    "silu", name=self.unique(f"{old.name}_swish")
                )
                return swish(new_args[0])
            outputs = new(
                *new_args,
                **self.bias_inputs(new, sc, new_args, fused),
                **kwargs,
            )
            self.note_bias(new, old, rule, sc, new_args[0], outputs)
            if split:
                outputs = self.fake_quant(
                    outputs, f"{old.name}_preactivation_quant", pre
                )
                swish = _quantizers.is_swish(old.activation)
                activation = (
                    _twins.QuantizedActivation
                    if swish
                    else keras.layers.Activation
                )(old.activation, name=self.unique(f"{old.name}_activation"))
                outputs = activation(outputs)
            return outputs

        made = []  # the output's FakeQuant, made when first needed

        def output_quant():
            if not made:
                fixed = _rules.fixed_range(old, rule)
                made.append(
                    _twins.FakeQuant(
                        name=self.unique(f"{old.name}_quant"),
                        fixed_range=fixed,
                    )
                )
                self.copies.append((made[0], source))
            return made[0]

        def quantize_output(t):
            return self.fake_quant(t, layer=output_quant())

        def requantize(t, step):  # a concatenation's input on a grid
            return output_quant()(t, requantize_from=step)

        return _placement.place(
            rule,
            old,
            args,
            run,
            quantize_output,
            id(old) in self.shared,
            requantize if rule == "concat" else None,
        )

    def bias_inputs(self, new, sc, args, fused):
        """The extra inputs of a twin whose bias is rounded as the file
        stores it: a convolution's or Dense's input step, a folded
        BatchNormalization's `bias_record` (see `_intercept`)."""
        if isinstance(new, _BIASED_TWINS):
            scale = sc.scale_of(args[0])
            return {} if scale is None else {"input_scale": scale}
        if (
            fused
            and type(new) is _twins.FreezableBatchNormalization
            and _quantizers.folds_on_last_axis(new, len(args[0].shape))
        ):
            record = sc.bias_of(args[0])
            return {} if record is None else {"folded": record}
        return {}

    def note_bias(self, new, old, rule, sc, x, outputs):
        """Record a convolution's `bias_record` (a node of its own when a
        BatchNormalization folds into it) on its pending output."""
        if not _rules.records_bias(old, rule):
            return
        if isinstance(new, _INNER_BIASED_TWINS):
            sc.note_bias(outputs, lambda: new(x, bias_record=True))
        elif isinstance(new, _BIASED_TWINS):
            scale = sc.scale_of(x)
            if scale is not None:
                sc.note_bias(
                    outputs,
                    lambda: new(x, input_scale=scale, bias_record=True),
                )

    def affine(self, old, x, inner):
        """`Rescaling`/`Normalization` as two `Rescaling` layers with a
        `FakeQuant` on the product between them."""

        def constant(t):
            # As the int8 file stores it (`quantize_constant`).
            t = _quantizers.quantize_constant(t)
            return keras.ops.convert_to_numpy(t).tolist()

        scale, offset = _quantizers.affine_parameters(old, "float32")
        # A MUL by ones or an ADD of zeros is not in the file: no layer.
        mul_removed, add_removed = _quantizers.removed_ops(old)
        if not mul_removed:
            x = keras.layers.Rescaling(
                constant(scale), name=self.unique(f"{old.name}_scale")
            )(x)
        if offset is None:  # `LayerScale`: the product is the output
            return x
        if not mul_removed:
            x = self.fake_quant(x, f"{old.name}_product_quant", inner)
        if add_removed:
            return x
        return keras.layers.Rescaling(
            1.0, constant(offset), name=self.unique(f"{old.name}_offset")
        )(x)

    def standalone_batchnorm(self, old, inner):
        """The BatchNorm twin for a BatchNorm that folds into nothing."""
        new = _twins.StandaloneBatchNormalization.from_config(old.get_config())
        self.new_to_old[id(new)] = old
        return new

    def build(self, model, top):
        with _placement.scope(training=False, new=True) as sc:
            inputs = keras.tree.map_structure(
                lambda t: keras.Input(
                    batch_shape=t.shape, dtype=t.dtype, name=t.name
                ),
                model.inputs
                if isinstance(model, keras.Sequential)
                else model.input,
            )
            if isinstance(model, keras.Sequential):
                inputs = inputs[0]
            if top:
                aware = self.awareness
                source = aware.input if aware else None
                for t in keras.tree.flatten(inputs):
                    if not _rules.is_float(t):
                        continue  # integer ids (an Embedding's)
                    sc.defer(
                        t,
                        "input",
                        lambda t, s=source: self.fake_quant(
                            t, "input_quant", s
                        ),
                    )
            if isinstance(model, keras.Sequential):
                x = inputs
                for layer in model.layers:
                    x = self.call_layer(self.clone_layer(layer), x)
                outputs = x
            else:
                clone = keras.models.clone_model(
                    model,
                    input_tensors=inputs,
                    clone_function=self.clone_layer,
                    call_function=self.call_layer,
                )
                outputs = clone.outputs
                if not isinstance(model.output, (list, tuple, dict)):
                    outputs = outputs[0]
            outputs = sc.materialize(outputs)
            return keras.Model(inputs, outputs, name=model.name)


# The twins whose bias the int8 file stores as int32 at `s_x * s_w`.
_BIASED_TWINS = (
    _twins.QuantizedConv1D,
    _twins.QuantizedConv2D,
    _twins.QuantizedConv2DTranspose,
    _twins.QuantizedDepthwiseConv1D,
    _twins.QuantizedDepthwiseConv2D,
    _twins.QuantizedDense,
    _twins.QuantizedEinsumDense,
)
# Twins that round their bias at a step of their own (a separable
# convolution's depthwise output), so need no input step.
_INNER_BIASED_TWINS = (
    _twins.QuantizedSeparableConv1D,
    _twins.QuantizedSeparableConv2D,
)


def _copy_weights(new_layer, old, builder):
    """Copy `old`'s weights into its twin; return the `(FakeQuant, in-place
    range)` pairs of the twin's own range sublayer, if it has one."""
    inner = [
        (getattr(new_layer, name), "inner")
        for name in ("depthwise_quant", "product")
        if hasattr(new_layer, name)
    ]
    inner += zip(
        getattr(new_layer, "step_quants", ()),
        getattr(new_layer, "step_names", ()),
    )
    skip = {id(v) for layer, _ in inner for v in layer.weights}
    own = [v for v in new_layer.weights if id(v) not in skip]
    for variable, value in zip(own, old.get_weights(), strict=True):
        variable.assign(value)
    sources = {}
    if builder.awareness is not None:
        sources = builder.awareness.inner.get(builder.paths[id(old)], {})
    return [(layer, sources.get(name)) for layer, name in inner]


def quantize_model(model, filters=None):
    """Return a new quantization-aware model with serializable layers.

    Builds a copy of a Sequential or Functional model (nested ones
    included) in which `Conv1D`/`Conv2D`, `DepthwiseConv1D`/`2D`,
    `SeparableConv1D`/`2D`, `Conv2DTranspose` and `Dense` become
    `QuantizedConv2D`, ... (the same layer, same config and
    weights, with its kernel fake-quantized to int8) and `FakeQuant`
    layers holding moving-average activation ranges are inserted where
    the TFLite converter keeps int8 tensors (see
    `keras_slim.callbacks.QuantizationAwareTraining` for the placement).
    All of them are registered Keras serializables, so `model.save` and
    `keras.models.load_model` round-trip the model with its learned
    ranges, with no custom scope: this is the way to save, reload and
    resume quantization-aware training. Train it with plain `fit` (ranges
    move in `training=True` calls) or with the `QuantizationAwareTraining`
    callback for its delays; export it with `keras_slim.export_tflite`.

    Given a model already made quantization-aware in place by the
    callback, the new model starts from the ranges that model learned,
    and predicts the same.

    Args:
        model: A built Sequential or Functional `keras.Model`. It is not
            modified.
        filters: Which layers to quantize: `None` (all), a regex or list of
            regexes matched against layer paths and names, or a callable
            `layer -> bool`. Layers left out stay float.

    Returns:
        A new Functional `keras.Model` (a Sequential input comes back
        Functional) with the input model's weights, compiled like it (with
        a new optimizer) when it was compiled.

    Raises:
        TypeError: if `model` is not a Keras model.
        ValueError: for a subclassed model, a layer type with no
            quantization rule (named, with the way to skip it or add a
            rule), or `filters` matching no layer.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((8, 8, 1)),
    ...     keras.layers.Conv2D(4, 3, activation="relu"),
    ...     keras.layers.GlobalAveragePooling2D(),
    ...     keras.layers.Dense(3)])
    >>> qmodel = quantize_model(model)
    >>> [type(layer).__name__ for layer in qmodel.layers[1:]]
    ['FakeQuant', 'QuantizedConv2D', 'FakeQuant', 'GlobalAveragePooling2D', \
'FakeQuant', 'QuantizedDense', 'FakeQuant']
    >>> qmodel.save("qat.keras")
    >>> type(keras.models.load_model("qat.keras").layers[2]).__name__
    'QuantizedConv2D'
    """
    _validation.check_model(model)
    if not _layers.is_graph_model(model):
        raise ValueError(
            "`quantize_model` rebuilds the model's graph, which needs a "
            "Sequential or Functional model (nested ones included). For a "
            f"subclassed model ({type(model).__name__}), train with the "
            "`keras_slim.callbacks.QuantizationAwareTraining` callback "
            "and export with `keras_slim.export_tflite`, or write it with "
            "the Functional API. Received: model of type "
            f"{type(model).__name__}"
        )
    predicate = _validation.compile_filters(filters)
    rows = _rules.plan(model, predicate)
    _rules.check_filters_matched(rows, filters, model)
    # The `keras.ops` nodes of the graph (MobileNetV3's hard-swish, a
    # residual `x + y`) run under rules too, as in place.
    rows += _rules.op_rows(model)
    for _, layer, _ in rows:
        if isinstance(layer, _twins.FakeQuant):
            raise ValueError(
                f"Model {model.name!r} is already quantization-aware: it "
                f"contains the FakeQuant layer {layer.name!r} from "
                "`quantize_model`. Train or export it as it is."
            )
    builder = _Builder(model, rows, _in_place.awareness_of(model))
    new = builder.build(model, top=True)
    by_id = {id(layer): layer for _, layer, _ in _rules.walk(new)}
    copies = builder.copies
    for new_id, old in builder.new_to_old.items():
        new_layer = by_id.get(new_id)
        if new_layer is not None and not isinstance(old, keras.Model):
            copies += _copy_weights(new_layer, old, builder)
    for fq, source in copies:
        if source is not None:
            # NumPy copies: sharing a buffer breaks JAX's donated state.
            for name in ("min", "max", "initialized"):
                value = keras.ops.convert_to_numpy(getattr(source, name))
                getattr(fq, name).assign(value)
    if model.compiled:
        new.compile_from_config(model.get_compile_config())
    return new
