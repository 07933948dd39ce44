"""Walk the leaf layers of any Keras model through public API only."""

import contextlib

import keras


def iter_layers(model, prefix="", models=False):
    """Yield `(path, layer)` for every leaf layer of `model`, depth first.

    With `models=True`, nested models are yielded too, each right before
    its own layers.

    Works for Sequential, Functional, subclassed and nested models: it
    follows the public `layers` property of every model it meets (Keras
    fills it with the tracked sub-layers of subclassed models too). A
    custom non-model layer that owns sub-layers is one leaf. Paths are
    `outer/inner/leaf` layer names; a layer shared in several places is
    yielded once.
    """
    seen = set()

    def walk(layer, path):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        children = []
        if isinstance(layer, keras.Model) or hasattr(layer, "layers"):
            try:
                children = list(layer.layers)
            except Exception:  # noqa: BLE001 - a custom `layers` property
                children = []
        is_model = isinstance(layer, keras.Model)
        if is_model and models:
            yield path or layer.name, layer
        if children:
            for child in children:
                yield from walk(child, f"{path}/{child.name}")
        elif not is_model:
            yield path or layer.name, layer

    for child in model.layers:
        yield from walk(child, f"{prefix}{child.name}")


def is_graph_model(model):
    """Whether `model` is a Sequential or Functional model (a graph of
    layers Keras can describe in its config), not a subclassed one."""
    if isinstance(model, keras.Sequential):
        return True
    try:
        return "input_layers" in model.get_config()
    except Exception:  # noqa: BLE001 - a subclassed model's get_config
        return False


def leaf_layers(model):
    """Return a list of the leaf layers of `model` (see `iter_layers`)."""
    return [layer for _, layer in iter_layers(model)]


TARGET_METHOD = "compression_target"


def target_model(model):
    """Return the model that compression callbacks should act on.

    The protocol: a wrapper model that trains another model (its training
    loop, losses or frozen parts being no business of a compression
    callback) defines a method `compression_target()` returning that
    inner `keras.Model`; callbacks then act on it. Any other model is its
    own target.
    """
    method = getattr(model, TARGET_METHOD, None)
    if callable(method):
        target = method()
        if isinstance(target, keras.Model):
            return target
    return model


def strategy_scope(model):
    """The model's `tf.distribute` strategy scope on TensorFlow, else none.

    `Model.distribute_strategy` exists only on the TensorFlow trainer; on
    JAX and PyTorch variables are created and assigned without a scope.
    """
    strategy = None
    if keras.backend.backend() == "tensorflow":
        strategy = getattr(model, "distribute_strategy", None)
    if strategy is None:
        return contextlib.nullcontext()
    return strategy.scope()


def sync_state(model):
    """Attach a running JAX `fit`'s state to `model`'s variables.

    JAX's trainer keeps the variables' values outside them during an
    epoch; `Callback.model` syncs them back, but a callback holding a
    variable directly must sync first. Nothing to do on other backends.
    """
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()


def get_keras_mask(t):
    """The Keras mask attached to tensor `t` (`Embedding(mask_zero=True)`
    downstream), or None. Keras's own accessor is not public API; it
    keeps the masks of JAX arrays, which take no attributes, aside."""
    from keras.src import backend

    return backend.get_keras_mask(t)


def set_keras_mask(t, mask):
    """Attach `mask` to tensor `t`, as Keras's layers do."""
    from keras.src import backend

    backend.set_keras_mask(t, mask)
