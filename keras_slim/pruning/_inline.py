"""Nested models seen as one flat graph, for channel pruning (private).

A transfer-learning model is usually a backbone inside another model
(`keras.Sequential([backbone, GlobalAveragePooling2D(), Dense(n)])`), and
some `keras.applications` models nest a Sequential stem (ConvNeXt).
Channel pruning reads a model's graph of layers from its config, where a
nested model is one opaque node. `inline` gives a Functional model over
the *same layer objects* with every nested Sequential or Functional model
replaced by its own layers: the same function, one graph. Masks placed on
its layers are the user's model's masks; a model rebuilt from its config
is one flat Functional model.

It walks each graph with Keras's own `_run_through_graph` (what
`Functional.call` runs): private Keras API, present in Keras 3.12 to
3.15. A `training` argument given to a nested model's call
(`backbone(x, training=False)`) is given to each of its layers that take
one, so the flat graph keeps it. Subclassed nested models are left as
they are (channel pruning then refuses them by name).
"""

import keras


def _graph(model):
    """The Functional graph of a Sequential or Functional model, or None."""
    if isinstance(model, keras.Sequential):
        model = getattr(model, "_functional", None)
    if model is None or not hasattr(model, "_run_through_graph"):
        return None
    if not isinstance(model, keras.Model) or not model.inputs:
        return None
    return model


def _nested(model):
    return any(
        isinstance(layer, keras.Model) and _graph(layer) is not None
        for layer in model.layers
    )


def _run(graph, inputs, extra):
    def operation(op):
        inner = _graph(op) if isinstance(op, keras.Model) else None
        if inner is not None:

            def call(*args, **kwargs):
                x = args[0] if len(args) == 1 else list(args)
                passed = dict(extra)
                if "training" in kwargs:
                    passed["training"] = kwargs["training"]
                return _run(inner, x, passed)

            return call
        if extra and getattr(op, "_call_has_training_arg", False):

            def with_extra(*args, **kwargs):
                return op(*args, **{**extra, **kwargs})

            return with_extra
        return op

    return graph._run_through_graph(inputs, operation_fn=operation)


def inline(model):
    """`model` with its nested Sequential/Functional models inlined.

    Returns `model` itself when it nests none (or is not a graph model).
    """
    outer = _graph(model)
    if outer is None or not _nested(model):
        return model
    inputs = [
        keras.Input(batch_shape=tuple(t.shape), dtype=t.dtype, name=f"{t.name}")
        for t in outer.inputs
    ]
    structure = inputs[0] if len(inputs) == 1 else inputs
    outputs = _run(outer, structure, {})
    return keras.Model(structure, outputs, name=model.name)
