"""Quantization-aware training in place: the state the model owns, and how
its forward pass is changed.

State. Every range (min, max, initialized) and the schedule's own state
(the optimizer step at which quantization-aware training began, and the
phase: quantization on, ranges frozen, BatchNorm frozen) are variables of
the model itself (`model.add_weight`). They are in
`model.non_trainable_variables`, so a jitted JAX step threads their
updates through, a `MirroredStrategy` mirrors them, and `save_weights`,
`ModelCheckpoint` and `BackupAndRestore` store and restore them. Keras
locks a subclassed model's state once it is built: its tracker is
unlocked for these variables and locked again, as Keras's own
`Layer.quantize` does (were that to fail, the variables would stay
outside the model: TensorFlow backend only, saving refused). The
Python side (which layers are intercepted, and the variables by layer
path) is a `QuantizationAwareness` object held by the model as its
`keras_slim_quantization` attribute: no registry outside the model.
A Sequential, Functional or subclassed model also gets a class of the
same name (a subclass of its own, `_Loadable`) whose config lists each
layer's rule: `keras.models.load_model` makes the reloaded model
quantization-aware again before loading its variables, with no custom
scope (a subclassed model: with its own class, found as Keras finds it).

Forward pass. Keras 3 has no public hook that changes how an already-built
layer computes (its quantization modes are a fixed list: int8, float8,
int4, gptq, awq, each with its own weights). The model's `call` is
overridden on the instance (its class, config and weights are
untouched) and the train, test and predict functions are rebuilt. For a
Sequential or Functional model that `call` runs the model's own Keras
graph and calls each layer through its hook (`_intercept`): the user's
layers are not changed. A subclassed model's graph exists only as
Python code, so the layers it calls have their `call` overridden per
instance instead. A model that must be rebuilt into serializable layers
instead comes from `quantize_model`.
"""

import importlib
import inspect
import re

import keras

from keras_slim import _layers
from keras_slim.quantization import _intercept
from keras_slim.quantization import _placement
from keras_slim.quantization import _quantizers
from keras_slim.quantization import _rules

ATTRIBUTE = "keras_slim_quantization"
PHASES = ("active", "ranges_frozen", "bn_frozen")


def _safe(path):
    return re.sub(r"[^A-Za-z0-9_]", "_", path)


class _Range:
    """The range variables of one activation tensor, owned by the model."""

    def __init__(self, new_variable, name, fixed=None):
        init = _quantizers.INITIAL_RANGE
        lo, hi = fixed or (-init, init)
        self.fixed = fixed
        self.min = new_variable(f"qat_{name}_min", lo)
        self.max = new_variable(f"qat_{name}_max", hi)
        self.initialized = new_variable(
            f"qat_{name}_initialized", 0.0 if fixed is None else 1.0
        )

    def __call__(self, x, training, awareness):
        if not awareness.active:
            return x
        if self.fixed is not None:
            out = _quantizers.fake_quant_fixed(x, self.fixed)
            lo, hi = self.fixed
        else:
            out, lo, hi = _quantizers.fake_quant_activation(
                x,
                self.min,
                self.max,
                self.initialized,
                bool(training) and not awareness.ranges_frozen,
                _quantizers.RANGE_MOMENTUM,
                with_range=True,
            )
        sc = _placement.current_scope()
        if sc is not None:
            sc.note_scale(out, lambda: _quantizers.step(lo, hi))
        return out

    def requantize(self, x, input_step, awareness):
        """`x` (on a grid of step `input_step`) moved to this range as the
        file's requantizing op does (`_quantizers.requantize`)."""
        if not awareness.active:
            return x
        lo, hi = self.fixed or (self.min, self.max)
        return _quantizers.requantize(x, input_step, lo, hi)


class QuantizationAwareness:
    """What `QuantizationAwareTraining` changed on one model, and the
    model-owned variables behind it."""

    def __init__(self, model, rows):
        # Sequential and Functional models take new variables once built. A
        # subclassed model is locked by Keras once built; its tracker is
        # unlocked for these variables and locked again, as Keras's own
        # `Layer.quantize` does to add its int8 variables. Where that
        # fails, the variables stay outside the model (`owned` False;
        # TensorFlow only, saving refused).
        self.owned = True

        def new_variable(name, value, shape=(), dtype=None):
            initializer = keras.initializers.Constant(value)
            if self.owned:
                try:
                    # In the strategy's scope, averaged over replicas: a
                    # range each replica moves on its own batch stays one
                    # value (MirroredStrategy, MultiWorkerMirroredStrategy).
                    with (
                        _layers.strategy_scope(model),
                        _unlocked(model),
                        _torch_safe_name(model),
                    ):
                        return model.add_weight(
                            shape=shape,
                            dtype=dtype or "float32",
                            initializer=initializer,
                            trainable=False,
                            autocast=False,
                            aggregation="mean"
                            if dtype in (None, "float32")
                            else "only_first_replica",
                            name=name,
                        )
                except ValueError:  # "cannot add new elements of state"
                    self.owned = False
            return keras.Variable(
                initializer(shape, dtype=dtype or "float32"),
                trainable=False,
                autocast=False,
                name=name,
            )

        # The first variable tells whether the model takes new state.
        self.start_step = new_variable("qat_start_step", 0, dtype="int32")
        self.phase = new_variable("qat_phase", 0.0, shape=(len(PHASES),))
        self.input = _Range(new_variable, "input")
        # layer path -> rule: what a reloaded model is made aware with.
        self.rules = {
            path: rule
            for path, layer, rule in rows
            if isinstance(layer, keras.layers.Layer)
        }
        # id(operation) -> `_intercept.LayerHook`, for the operations the
        # model's graph calls (set by `make_aware`).
        self.hooks = {}
        self.graphs = set()  # ids of the graph models it runs itself
        self.ranges = {}  # layer path -> _Range
        # layer path -> {name: _Range} of its inner tensors
        # (`_rules.inner_names`).
        self.inner = {}
        # layer path -> _Range of the input of a weight layer's own
        # activation, when it runs as an op of its own.
        self.pre = {}
        for path, layer, rule in rows:
            if rule == "skip":
                continue
            if _rules.output_mode(layer, rule) != "none":
                fixed = _rules.fixed_range(layer, rule)
                self.ranges[path] = _Range(new_variable, _safe(path), fixed)
            names = _rules.inner_names(layer, rule)
            if names:
                self.inner[path] = {
                    n: _Range(new_variable, f"{_safe(path)}_{n}") for n in names
                }
            if _rules.splits_activation(layer, rule):
                name = f"{_safe(path)}_preactivation"
                self.pre[path] = _Range(new_variable, name)
        # Python copies of `phase`: what the traced functions were built
        # with (a change rebuilds them).
        self.active, self.ranges_frozen, self.bn_frozen = True, False, False

    def all_ranges(self):
        return [
            self.input,
            *self.ranges.values(),
            *(r for inner in self.inner.values() for r in inner.values()),
            *self.pre.values(),
        ]

    def read_phase(self):
        values = keras.ops.convert_to_numpy(self.phase)
        return tuple(bool(v > 0.5) for v in values)

    def set_phase(self, phase):
        self.active, self.ranges_frozen, self.bn_frozen = phase
        self.phase.assign([float(v) for v in phase])

    def learned(self):
        return any(
            float(keras.ops.convert_to_numpy(r.initialized)) > 0
            for r in self.all_ranges()
        )


SAVE_REFUSAL = (
    "Model {name!r} is a subclassed model made quantization-aware in place "
    "by `keras_slim.callbacks.QuantizationAwareTraining`. Keras refused it "
    "new variables (its built state is locked), so its int8 ranges live "
    "outside it, and `model.save` / `save_weights` would silently write a "
    "float model. Export the int8 file directly with "
    "`keras_slim.export_tflite(model, filepath)`, or write the model as a "
    "Functional model (then it owns its ranges and saves them)."
)


class _unlocked:
    """Let a built subclassed model take new variables, then lock it again
    (with Keras's message), as `Layer.quantize` does; a no-op for a model
    that is not locked."""

    def __init__(self, model):
        self.tracker = getattr(model, "_tracker", None)
        self.was_locked = bool(getattr(self.tracker, "locked", False))

    def __enter__(self):
        if self.was_locked:
            self.tracker.unlock()

    def __exit__(self, *exc):
        if self.was_locked:
            self.tracker.lock()


class _torch_safe_name:
    """On torch, a model name with '.' in it replaced by '_' while it adds
    a variable, then restored. Keras's torch backend registers a model's
    own variable with torch by its path (`model.name/variable`), where
    torch allows no '.': `keras.applications.MobileNet*` are named
    `mobilenet_1.00_224` and the like (before this, QAT refused them on
    torch). Only the variable's path changes (`mobilenet_1_00_224/...`);
    saving and loading follow the variables' order, not their paths."""

    def __init__(self, model):
        self.model = model
        self.name = model.name
        self.changed = keras.backend.backend() == "torch" and "." in str(
            model.name
        )

    def __enter__(self):
        if self.changed:
            self.model.name = self.name.replace(".", "_")

    def __exit__(self, *exc):
        if self.changed:
            self.model.name = self.name


def awareness_of(model):
    """The `QuantizationAwareness` of a model made QAT in place, or None."""
    found = getattr(model, ATTRIBUTE, None)
    return found if isinstance(found, QuantizationAwareness) else None


def _training_of(signature, args, kwargs):
    if "training" in kwargs:
        return kwargs["training"]
    try:
        bound = signature.bind_partial(*args, **kwargs)
    except TypeError:
        return None
    return bound.arguments.get("training")


def make_aware(model, rows):
    """Make `model` quantization-aware in place; return its awareness.

    Creates the model-owned variables and a `LayerHook` per layer, then
    overrides the instance attribute `call` of the model; only the layers
    and nested models its graph does not reach (a subclassed model's) get
    an overridden `call` of their own (see the module docstring).
    """
    # The `keras.ops` nodes of a graph model run under rules too.
    rows = [*rows, *_rules.op_rows(model)]
    awareness = QuantizationAwareness(model, rows)
    if not awareness.owned and keras.backend.backend() != "tensorflow":
        raise ValueError(
            "QuantizationAwareTraining cannot make the subclassed model "
            f"{model.name!r} quantization-aware in place on the "
            f"{keras.backend.backend()!r} backend: Keras refused it new "
            "variables (its built state is locked), so the ranges would "
            "live outside it and a jitted step would drop their updates. "
            "Write the "
            "model with the Functional API or Sequential, or train on the "
            "TensorFlow backend."
        )
    shared = _rules.shared_outputs(model)
    graph = _intercept.runs_as_graph(model)
    ops, graphs = _intercept.graph_operations(model) if graph else ((), ())
    hooks = {}
    for path, layer, rule in rows:
        hook = _intercept.LayerHook(
            awareness,
            layer,
            rule,
            (
                awareness.ranges.get(path),
                awareness.inner.get(path),
                awareness.pre.get(path),
            ),
            id(layer) in shared,
        )
        if id(layer) in ops:
            hooks[id(layer)] = hook  # run by the graph: the layer untouched
        elif not isinstance(layer, keras.layers.InputLayer):
            _intercept.override_call(hook, layer)
    for _, sub, is_model in _rules.walk(model):
        if is_model and id(sub) not in graphs:
            _intercept.override_submodel_call(sub)
    awareness.hooks, awareness.graphs = hooks, set(graphs)
    model.call = _model_call(awareness, model, graph)
    if awareness.owned:
        _make_loadable(model)
    else:

        def refuse(*args, **kwargs):
            raise ValueError(SAVE_REFUSAL.format(name=model.name))

        model.save = refuse
        model.save_weights = refuse
        model.save_own_variables = refuse
    setattr(model, ATTRIBUTE, awareness)
    return awareness


CONFIG_KEY = "keras_slim_quantization"


class _Loadable:
    """What a Sequential or Functional model made quantization-aware in
    place adds to its class: its config names the rule of each layer, and
    `keras.models.load_model` (with only `import keras_slim`) makes the
    reloaded model quantization-aware again before its variables (ranges,
    phase) are loaded into it."""

    def get_config(self):
        config = super().get_config()
        return {**config, CONFIG_KEY: {"rules": awareness_of(self).rules}}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        saved = config.pop(CONFIG_KEY)
        rules = saved["rules"]
        if "class" in saved:  # a subclassed model: made aware once built
            base = _subclassed_base(saved["class"], custom_objects)
            model = base.from_config(config)
            _make_loadable(model)
            object.__setattr__(model, _PENDING_RULES, saved["ordered"])
            return model
        functional = "input_layers" in config
        base = keras.Model if functional else keras.Sequential
        model = base.from_config(config, custom_objects=custom_objects)
        _make_aware_with(model, rules)
        return model

    def load_own_variables(self, store):
        super().load_own_variables(store)
        awareness = awareness_of(self)
        phase = awareness.read_phase()
        awareness.active, awareness.ranges_frozen, awareness.bn_frozen = phase


class _LoadableSubclassed(_Loadable):
    """What a subclassed model made quantization-aware in place adds to its
    class: its config also names the model's own class, and
    `keras.models.load_model` rebuilds it from that class, builds it, then
    makes it quantization-aware (its ranges come after the variables its
    own `build` creates, as in the model that was saved) before its
    variables are loaded. Its class must be loadable by Keras as for any
    subclassed model (registered, or in `custom_objects`)."""

    def get_config(self):
        config = super().get_config()
        base = self._keras_slim_base
        config[CONFIG_KEY]["class"] = {
            "registered_name": keras.saving.get_registered_name(base),
            "module": base.__module__,
            "qualname": base.__qualname__,
        }
        # A subclassed model's layers are named when its `__init__` runs
        # (`conv2d_1` in a process that made a `conv2d` before): the rules
        # are matched by position, with each layer's class.
        rules = awareness_of(self).rules
        config[CONFIG_KEY]["ordered"] = [
            [type(layer).__name__, rules.get(path, "skip")]
            for path, layer, is_model in _rules.walk(self)
            if not is_model
        ]
        return config

    def build_from_config(self, config):
        super().build_from_config(config)
        saved = self.__dict__.pop(_PENDING_RULES, None)
        if saved is None or awareness_of(self) is not None:
            return
        layers = [
            (path, layer)
            for path, layer, is_model in _rules.walk(self)
            if not is_model
        ]
        kinds = [type(layer).__name__ for _, layer in layers]
        if kinds != [kind for kind, _ in saved]:
            raise ValueError(
                f"The subclassed model {self.name!r} was saved "
                "quantization-aware with the layers "
                f"{[kind for kind, _ in saved]}, but its class now builds "
                f"{kinds}: its int8 ranges cannot be matched to its layers. "
                "Load it with the class it was saved with."
            )
        rows = [
            (path, layer, rule)
            for (path, layer), (_, rule) in zip(layers, saved)
        ]
        make_aware(self, rows)


_PENDING_RULES = "_keras_slim_pending_rules"


def _make_aware_with(model, rules):
    """Make a reloaded model quantization-aware with its saved rules."""
    rows = [
        (path, layer, rules.get(path, "skip"))
        for path, layer, is_model in _rules.walk(model)
        if not is_model
    ]
    make_aware(model, rows)


def _subclassed_base(saved, custom_objects):
    """The user's model class a saved subclassed model names: registered
    with Keras, in `custom_objects`, or importable from its module."""
    found = keras.saving.get_registered_object(
        saved["registered_name"], custom_objects
    )
    if found is None and custom_objects:
        found = custom_objects.get(saved["qualname"].split(".")[-1])
    if found is None and saved["module"] != "__main__":
        try:
            found = importlib.import_module(saved["module"])
            for part in saved["qualname"].split("."):
                found = getattr(found, part)
        except (ImportError, AttributeError):
            found = None
    if not (isinstance(found, type) and issubclass(found, keras.Model)):
        raise ValueError(
            "This quantization-aware model is an instance of the subclassed "
            f"model class {saved['qualname']!r} (module "
            f"{saved['module']!r}), which Keras cannot find: decorate it "
            "with `@keras.saving.register_keras_serializable()` and import "
            "its module before loading, or pass it in `custom_objects`. "
            f"Received: custom_objects={sorted(custom_objects or {})}"
        )
    return found


# The name a saved model's config refers to; each Keras model class gets
# its own subclass (`_make_loadable`), registered under the same name.
_REGISTERED = "QuantizationAwareModel"
keras.saving.register_keras_serializable("keras_slim", _REGISTERED)(
    type(_REGISTERED, (_Loadable,), {})
)
_LOADABLE = {}  # Keras model class -> its loadable subclass


def _make_loadable(model):
    """Give a Sequential, Functional or subclassed model a class of the
    same name and behaviour whose config reloads it quantization-aware."""
    base = type(model)
    if base in _LOADABLE.values():
        return
    if base is keras.Sequential or _is_keras_functional(base):
        mixin = _Loadable
    elif _layers.is_graph_model(model):
        return  # a user's subclass of either: it saves as it did
    else:
        mixin = _LoadableSubclassed
    if base not in _LOADABLE:
        loadable = type(
            base.__name__, (mixin, base), {"_keras_slim_base": base}
        )
        loadable.__module__ = __name__
        keras.saving.register_keras_serializable("keras_slim", _REGISTERED)(
            loadable
        )
        _LOADABLE[base] = loadable
    model.__class__ = _LOADABLE[base]


def _is_keras_functional(cls):
    return cls.__name__ == "Functional" and cls.__module__.startswith("keras")


def _model_call(awareness, model, graph):
    original = model.call
    signature = inspect.signature(original)

    def call(*args, **kwargs):
        if _intercept.is_symbolic(args):
            return original(*args, **kwargs)
        if graph:
            bound = _intercept.call_arguments(signature, args, kwargs)
            if bound is None:
                return original(*args, **kwargs)  # let Keras raise its error
            training = bound[1] is True
        else:
            training = _training_of(signature, args, kwargs) is True

        def quantize_inputs(inputs):
            if not awareness.active:
                return inputs
            return keras.tree.map_structure(
                lambda t: (
                    awareness.input(t, training, awareness)
                    if _rules.is_float(t)
                    else t
                ),  # integer ids (an Embedding's) stay as they are
                inputs,
            )

        with _placement.scope(training, new=True) as sc:
            recorder = _intercept.current_recorder()
            if recorder is not None:
                recorder.done = sc.done
            if graph:
                inputs, training_arg, mask, rest = bound
                outputs = _intercept.run_graph(
                    model,
                    quantize_inputs(inputs),
                    awareness.hooks,
                    awareness.graphs,
                    training_arg,
                    mask,
                    **rest,
                )
            else:
                if args:
                    args = (quantize_inputs(args[0]), *args[1:])
                outputs = original(*args, **kwargs)
            return sc.materialize(outputs)

    return call
