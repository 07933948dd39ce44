"""swap_head, extract_features, attach_head: find and replace the head."""

import keras
import numpy as np

from keras_slim import _validation
from keras_slim import catalogue

# On the model, {(kind, index): the cut-off body}, set past Keras's
# attribute tracking (the bodies are not the model's layers nor saved with
# it). Reusing the body reuses its traced predict function: tracing a
# MobileNetV2 costs more than running 500 images through it, and a user
# extracts train, then test features.
_BODIES = "_keras_slim_feature_bodies"


def _is_pooling(layer):
    """A global pooling or Flatten layer, or a model that ends with one.

    Pooling points are the catalogue's (`LayerKind.pooling`), and a
    recurrent layer that returns its last output only (it reduces the
    time axis to one feature vector, as a sequence classifier's body
    does), alone or in `Bidirectional`.
    """
    kind = catalogue.get_layer_kind(layer)
    if kind is not None and kind.pooling:
        return True
    if isinstance(layer, keras.layers.Bidirectional):
        layer = layer.forward_layer
    if isinstance(layer, keras.layers.RNN):
        return not layer.return_sequences and not layer.return_state
    if isinstance(layer, keras.Model) and not isinstance(
        layer, keras.Sequential
    ):
        layers = [
            lay
            for lay in layer.layers
            if not isinstance(lay, keras.layers.InputLayer)
        ]
        return bool(layers) and _is_pooling(layers[-1])
    if isinstance(layer, keras.Sequential):
        return bool(layer.layers) and _is_pooling(layer.layers[-1])
    return False


def _graph(model):
    """`(inputs, outputs)` of a Sequential or Functional model, else None."""
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        return None
    if not inputs or not outputs:
        return None
    return inputs, outputs


def _output_of(layer):
    try:
        return layer.output
    except (AttributeError, ValueError):
        return None


def _produced_by(tensor, layer):
    """Whether `tensor` is an output of any call of `layer` (a loaded
    model's recurrent layer is called twice: `layer.output` is the
    first call's)."""
    for node in getattr(layer, "_inbound_nodes", None) or []:
        if any(tensor is out for out in node.output_tensors):
            return True
    return tensor is _output_of(layer)


def _input_of(layer):
    try:
        return layer.input
    except (AttributeError, ValueError):
        return None


def find_head(model):
    """Index in `model.layers` of the first layer of the head, or None.

    The head is the chain of layers after the last global pooling (or
    Flatten) layer that is followed by at least one layer with weights,
    ending at the model's single output: the `predictions` Dense of
    `keras.applications` models built with `include_top=True`, the
    Conv-Dropout-Conv top of MobileNetV3, a Dense after pooling, or a Dense
    after a nested backbone that ends in pooling.
    """
    graph = _graph(model)
    if graph is None or len(graph[1]) != 1:
        return None
    layers = model.layers
    for p in reversed(range(len(layers))):
        if not _is_pooling(layers[p]):
            continue
        head = layers[p + 1 :]
        if not any(layer.weights for layer in head):
            continue
        features = _input_of(head[0])
        pooled = _output_of(layers[p])
        if features is None or isinstance(features, (list, tuple)):
            return None
        if not _produced_by(features, layers[p]) and (
            not isinstance(layers[p], keras.Model)
            or pooled is None
            or tuple(pooled.shape) != tuple(features.shape)
        ):
            return None
        prev = _output_of(head[0])
        for layer in head[1:]:
            if prev is None or _input_of(layer) is not prev:
                return None
            prev = _output_of(layer)
        return p + 1 if prev is graph[1][0] else None
    return None


def _layer_by_name(model, layer, name):
    if isinstance(layer, bool) or not isinstance(layer, (str, int)):
        raise TypeError(
            f"Expected `{name}` to be a layer name (str) or an index into "
            f"`model.layers` (int). Received: {name}={layer!r}"
        )
    layers = model.layers
    if isinstance(layer, int):
        if not -len(layers) <= layer < len(layers):
            raise ValueError(
                f"Expected `{name}` to be an index in [{-len(layers)}, "
                f"{len(layers) - 1}]. Received: {name}={layer}"
            )
        return layer % len(layers)
    for i, lay in enumerate(layers):
        if lay.name == layer:
            return i
    names = ", ".join(repr(lay.name) for lay in layers[-6:])
    raise ValueError(
        f"No layer named {layer!r} in model {model.name!r}. Expected "
        f"`{name}` to be one of its layer names (the last ones: {names}). "
        f"Received: {name}={layer!r}"
    )


def _no_graph(model, what):
    return ValueError(
        f"{what} needs a Functional or Sequential model (a graph of layers "
        f"to cut). Received: model={model.name!r} of type "
        f"{type(model).__name__}"
    )


def _cut(model, layer, name, allow_headless):
    """`(kind, index)`: where the body's features come from in `model`.

    kind is "input" (the input of `model.layers[index]`, the first layer
    of the head), "output" (its output, for an explicit `layer`) or
    "model" (the model's own output, a headless backbone).
    """
    if _graph(model) is None:
        raise _no_graph(model, "Cutting off the head")
    if layer is not None:
        i = _layer_by_name(model, layer, name)
        return ("output" if name == "layer" else "input"), i
    first = find_head(model)
    if first is not None:
        return "input", first
    last = model.layers[-1] if model.layers else None
    if allow_headless and last is not None and _is_pooling(last):
        return "model", None
    raise ValueError(
        f"Model {model.name!r} has no recognisable classification head "
        "(a chain of layers with weights after a global pooling or Flatten "
        "layer or a recurrent layer that returns its last output, ending "
        "at the output). "
        f"Pass `{name}=` the name of the "
        + (
            "layer whose output are the features."
            if name == "layer"
            else "first layer of the head."
        )
        + f" Received: {name}=None"
    )


def _tensor(model, kind, index):
    if kind == "model":
        return model.outputs[0]
    layer = model.layers[index]
    tensor = _output_of(layer) if kind == "output" else _input_of(layer)
    if tensor is None or isinstance(tensor, (list, tuple)):
        raise ValueError(
            f"Layer {layer.name!r} has no single {kind} tensor to cut at "
            "(it is shared, or has several inputs)."
        )
    return tensor


def _copy_trainable(source, target):
    target.trainable = source.trainable
    if hasattr(source, "layers") and hasattr(target, "layers"):
        for s, t in zip(source.layers, target.layers):
            _copy_trainable(s, t)


def swap_head(
    model, num_classes, activation=None, dropout=0.2, head_layer=None
):
    """Return a copy of a classifier with a new head for `num_classes`.

    Transfer learning keeps a trained body and replaces its classification
    head. `swap_head` finds the head (for `keras.applications` models built
    with `include_top=True`, the layers after the final global pooling;
    for Sequential and Functional models, a chain of layers after a global
    pooling or Flatten layer, or after an LSTM/GRU/SimpleRNN that returns
    its last output only), clones the model with its weights and
    trainable flags, cuts the head off and adds `Dropout(dropout)` and a
    fresh `Dense(num_classes, activation)` (a `Flatten` first when the
    features are not flat). A model that predicts per position (its
    output keeps spatial or sequence axes: a U-Net, a token tagger) gets
    a 1x1 `Conv1D/2D/3D(num_classes)` instead, so the new output keeps
    those axes (give `head_layer`: such a model has no classification
    head to find). Combine with `keras_slim.transfer.freeze` to train
    only the new head.

    Args:
        model: A built Sequential or Functional Keras model, for example
            `keras.applications.MobileNetV2(weights="imagenet")` (with the
            internet) or any model ending in pooling and Dense.
        num_classes: Units of the new Dense layer, >= 1.
        activation: Activation of the new Dense layer; `None` gives logits
            (compile with `from_logits=True`).
        dropout: Dropout rate before the new Dense, in [0, 1); 0 for none.
        head_layer: The first layer of the head to replace, by name or
            index into `model.layers`, when it cannot be found
            automatically. The new head takes this layer's input.

    Returns:
        A new Functional `keras.Model`; `model` itself is not changed and
        shares no layers or weights with the result.

    Raises:
        ValueError: if `num_classes < 1`, `dropout` is outside [0, 1),
            `head_layer` names no layer, there is no recognisable head
            and no `head_layer`, or a per-position model's `head_layer`
            takes features of another rank than its output; before any
            work.
        TypeError: if `model` is not a Keras model.

    Example:

    >>> import keras, keras_slim, numpy as np
    >>> model = keras_slim.models.small_cnn()
    >>> new = keras_slim.transfer.swap_head(model, num_classes=5)
    >>> new.output_shape, model.output_shape
    ((None, 5), (None, 10))
    >>> [layer.name for layer in new.layers[-3:]]
    ['gap', 'head_dropout', 'logits']
    """
    _validation.check_model(model)
    _validation.check_int("num_classes", num_classes, minimum=1)
    _validation.check_range("dropout", dropout, 0, 1, high_inclusive=False)
    try:
        keras.activations.get(activation)
    except (ValueError, TypeError) as e:
        raise ValueError(
            "Expected `activation` to be None, an activation name or a "
            f"callable. Received: activation={activation!r} ({e})"
        ) from None
    kind, index = _cut(model, head_layer, "head_layer", allow_headless=False)
    rank = _per_position_rank(model)
    if rank:
        features = _tensor(model, kind, index)
        if len(features.shape) != rank:
            raise ValueError(
                f"Model {model.name!r} predicts per position (output shape "
                f"{tuple(model.outputs[0].shape)}), and the input of "
                f"`head_layer` {model.layers[index].name!r} has shape "
                f"{tuple(features.shape)}: a new head would lose those "
                "axes. Expected `head_layer` to be a layer whose input has "
                f"{rank} axes, as the output has. Received: "
                f"head_layer={head_layer!r}"
            )

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    _copy_trainable(model, clone)
    features = _tensor(clone, kind, index)
    stop = index + 1 if kind == "output" else index
    kept = {layer.name for layer in clone.layers[:stop]}
    x = features
    if len(x.shape) > 2 and not rank:
        x = keras.layers.Flatten(name=_unique("head_flatten", kept))(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name=_unique("head_dropout", kept))(x)
    name = _unique(model.layers[-1].name, kept)
    if rank:
        conv = {3: keras.layers.Conv1D, 4: keras.layers.Conv2D}.get(
            rank, keras.layers.Conv3D
        )
        head = conv(num_classes, 1, activation=activation, name=name)
    else:
        head = keras.layers.Dense(num_classes, activation=activation, name=name)
    return keras.Model(clone.inputs, head(x), name=model.name)


def _per_position_rank(model):
    """The rank of a single-output model's output when it keeps spatial or
    sequence axes (3 to 5: a per-pixel or per-token prediction), else 0."""
    outputs = getattr(model, "outputs", None) or []
    if len(outputs) != 1:
        return 0
    rank = len(outputs[0].shape)
    return rank if 3 <= rank <= 5 else 0


def _unique(name, taken):
    return name if name not in taken else f"{name}_new"


def extract_features(model, x, layer=None, batch_size=32, verbose=0):
    """Run the frozen body of a model once and return its features.

    Training a head on a frozen body repeats the body's forward pass every
    epoch for nothing. Compute the features once with `extract_features`,
    train a small head on them (many times faster), then join head and body
    with `attach_head` into one model for export.

    The forward pass is traced once per model and `layer`: later calls
    (test features after train features) reuse it, and an array whose
    length is not a multiple of `batch_size` has its last batch padded to
    full size (then dropped) rather than traced a second time.

    Args:
        model: A built Sequential or Functional model: a classifier (its
            head is found as in `swap_head` and left out), a headless
            backbone ending in global pooling (for example
            `keras.applications.MobileNetV2(weights="imagenet",
            include_top=False, pooling="avg")`), or any model with `layer`.
        x: Input data, as `model.predict` takes it (array or dataset).
        layer: Name or index in `model.layers` of the layer whose output
            are the features; by default the input of the detected head or
            the output of a headless backbone.
        batch_size: Batch size of the forward pass, >= 1.
        verbose: Verbosity of `predict`.

    Returns:
        A NumPy array of features, one row per input.

    Raises:
        ValueError: if `layer` names no layer, or the model has no
            recognisable head, does not end in pooling, and no `layer` is
            given.
        TypeError: if `model` is not a Keras model.

    Example:

    >>> import keras, keras_slim, numpy as np
    >>> model = keras_slim.models.small_cnn()
    >>> x = np.zeros((4, 32, 32, 1), "float32")
    >>> keras_slim.transfer.extract_features(model, x).shape
    (4, 64)
    >>> keras_slim.transfer.extract_features(model, x, layer="pool").shape
    (4, 8, 8, 32)
    """
    _validation.check_model(model)
    _validation.check_int("batch_size", batch_size, minimum=1)
    kind, index = _cut(model, layer, "layer", allow_headless=True)
    bodies = model.__dict__.get(_BODIES)
    if bodies is None:
        bodies = {}
        object.__setattr__(model, _BODIES, bodies)
    if (kind, index) not in bodies:
        bodies[(kind, index)] = keras.Model(
            model.inputs, _tensor(model, kind, index)
        )
    body = bodies[(kind, index)]
    return _predict_whole_batches(body, x, batch_size, verbose)


def _predict_whole_batches(body, x, batch_size, verbose):
    """`body.predict(x)` with every batch of one shape, so traced once.

    Keras traces its predict function again for a last, smaller batch (a
    second full trace of the body). For arrays, predict the whole batches,
    then the remainder padded to a full batch, and drop the padding rows
    (inference mode: rows do not affect each other).
    """
    leaves = keras.tree.flatten(x)
    if not leaves or not all(isinstance(a, np.ndarray) for a in leaves):
        return body.predict(x, batch_size=batch_size, verbose=verbose)
    n = len(leaves[0])
    rest = n % batch_size
    if n <= batch_size or not rest or any(len(a) != n for a in leaves):
        return body.predict(x, batch_size=batch_size, verbose=verbose)
    cut = n - rest
    whole = body.predict(
        keras.tree.map_structure(lambda a: a[:cut], x),
        batch_size=batch_size,
        verbose=verbose,
    )
    tail = body.predict(
        keras.tree.map_structure(
            lambda a: np.concatenate(
                [a[cut:], np.repeat(a[-1:], batch_size - rest, axis=0)]
            ),
            x,
        ),
        batch_size=batch_size,
        verbose=verbose,
    )
    return keras.tree.map_structure(
        lambda w, t: np.concatenate([w, t[:rest]]), whole, tail
    )


def attach_head(body, head, layer=None, name=None):
    """Join a body and a head trained on its features into one model.

    The last step of feature caching: `head` was trained on
    `extract_features(body, x, layer)`; `attach_head` feeds the same
    features of `body` into `head` and returns one Keras model from images
    to predictions, ready to fine-tune, save or export to TFLite.

    Args:
        body: The model given to `extract_features`.
        head: A built Keras model (or layer) whose input matches the
            features.
        layer: The same `layer` given to `extract_features`.
        name: Name of the returned model; by default `"<body>_transfer"`.

    Returns:
        A Functional `keras.Model` that shares the layers and weights of
        `body` (up to the features) and `head`.

    Raises:
        ValueError: if `head`'s input shape does not match the features, or
            as `extract_features`.
        TypeError: if `body` is not a Keras model or `head` not a layer.

    Example:

    >>> import keras, keras_slim, numpy as np
    >>> body = keras_slim.models.small_cnn()
    >>> head = keras.Sequential([keras.Input((64,)), keras.layers.Dense(5)])
    >>> model = keras_slim.transfer.attach_head(body, head)
    >>> model.input_shape, model.output_shape
    ((None, 32, 32, 1), (None, 5))
    """
    _validation.check_model(body, name="body")
    _validation.check_type(
        "head", head, keras.layers.Layer, "a Keras layer or model"
    )
    if name is not None:
        _validation.check_type("name", name, str, "a string")
    kind, index = _cut(body, layer, "layer", allow_headless=True)
    features = _tensor(body, kind, index)
    expected = getattr(head, "input_shape", None) if head.built else None
    if (
        isinstance(expected, tuple)
        and expected
        and not isinstance(expected[0], tuple)
    ):
        got = tuple(features.shape[1:])
        if tuple(expected[1:]) != got:
            raise ValueError(
                f"Expected `head` to take features of shape {got} (the "
                f"output of the body). Received: head with input shape "
                f"{tuple(expected[1:])}"
            )
    outputs = head(features)
    return keras.Model(
        body.inputs, outputs, name=name or f"{body.name}_transfer"
    )
