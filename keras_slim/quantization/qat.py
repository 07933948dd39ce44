"""Quantization-aware training as a `model.fit` callback."""

import inspect

import keras

from keras_slim import _layers
from keras_slim import _validation
from keras_slim.quantization import _in_place
from keras_slim.quantization import _rules
from keras_slim.quantization import _twins


def _check_delay(name, value, allow_none):
    if value is None and allow_none:
        return None
    return _validation.check_int(name, value, minimum=0)


class QuantizationAwareTraining(keras.callbacks.Callback):
    """Train a model with simulated int8 so that its int8 file matches it.

    Added to `model.fit`, the callback makes the model's forward pass
    simulate int8 the way the TFLite converter will run it: weights
    fake-quantized symmetrically (per output channel for `Conv2D` and
    `DepthwiseConv2D`, per tensor for `Dense`), activations fake-quantized
    per tensor with moving-average ranges at the tensors the converter
    keeps (model inputs, after ReLU/ReLU6, `Add`, pooling, concatenation,
    the logits; never between a convolution and its BatchNorm or ReLU,
    which the converter folds and fuses). The weights learn to live with
    the rounding, and afterwards
    `keras_slim.export_tflite(model, filepath)` writes an all-int8 file
    from the learned ranges with no representative data, whose
    predictions agree with the Keras model's. It works on Sequential,
    Functional, subclassed and nested models, including already-trained
    (and already-compiled) ones; the optimizer, layer names and structure
    are kept.

    How it changes the model: at `on_train_begin` it adds the ranges and
    its own state (the step at which it began, the phase) as variables of
    the model (`model.add_weight`, so they are in
    `model.non_trainable_variables`), overrides the instance attribute
    `call` of the model (Keras 3 has no public hook that changes how a
    built layer computes) and rebuilds the model's train, test and predict
    functions. A Sequential or Functional model's `call` then runs its own
    Keras graph and calls each layer itself, its kernel read
    fake-quantized (Keras's `StatelessScope`) so that Keras's own layer
    math computes it; the layers are not changed. Only the layers a
    subclassed model's Python `call` reaches (and those inside a custom
    layer that owns sub-layers) get an overridden instance `call`; their
    classes, configs and weights stay untouched (where Keras computes a
    layer differently from the int8 file, e.g. a 1D convolution's kernel,
    keras_slim computes it). Ranges move only in calls with
    `training=True` (the training steps of `fit`); `evaluate`, `predict`
    and export read them.
    The change stays after `fit`, so the model keeps predicting as its
    int8 file will. Since the ranges are the model's variables,
    `save_weights`, `ModelCheckpoint` (both modes) and `BackupAndRestore`
    store them, and `load_weights` restores them into a model this
    callback has made quantization-aware. A Sequential or Functional
    model's class becomes a subclass of the same name whose config names
    each layer's rule, so `model.save` and `ModelCheckpoint("m.keras")`
    write a file that `keras.models.load_model` reloads, in a new process
    with only `import keras_slim`, quantization-aware with its ranges and
    phase (its int8 file is the same). `quantize_model(model)` gives the
    same model with visible fake-quant layers instead (this callback also
    drives its schedules). Zeros in kernels stay exact zeros under the symmetric
    weight quantizer, so pruning callbacks compose with this one.

    The schedule counts optimizer steps (`model.optimizer.iterations`)
    from the step at which quantization-aware training began on this model
    (when this callback first made it quantization-aware, a variable of
    the model; 0 for a model from `quantize_model`, which has a new
    optimizer), so a resumed `fit` continues where it stopped, and
    `steps_per_execution` shifts a phase change by less than one
    execution. Each epoch writes
    `logs["quantization_active"]`, `logs["quantization_ranges_frozen"]`
    and `logs["batchnorm_frozen"]` (1.0 or 0.0), the state of the epoch's
    last step.

    Reference: Jacob et al., "Quantization and Training of Neural Networks
    for Efficient Integer-Arithmetic-Only Inference", CVPR 2018.

    Args:
        quantize_delay: Step (counted as above) at which fake quantization
            starts (before it, training is float), >= 0.
        freeze_bn_delay: Step from which BatchNormalization
            layers use (and stop updating) their moving statistics, as the
            folded int8 file does; `None` never freezes them. To fine-tune
            an already-trained model, keep `None`: on the demo CNN, paired
            over 10 seeds, it ended 0.3 points closer to the float
            fine-tune than `0` (BatchNorm in inference mode throughout),
            which is faster per epoch (no batch statistics); freezing late
            in a short fine-tune shifts the model it has just adapted.
        freeze_ranges_after: Step from which activation ranges
            stop moving; `None` never freezes them. Must be
            >= `quantize_delay`.
        filters: Which layers to quantize: `None` (all), a regex or list
            of regexes matched against layer paths and names, or a
            callable `layer -> bool`. Layers left out stay float (export
            them with `allow_float_fallback=True`).
        verbose: 0 (silent) or 1 (print when the schedule changes).

    Raises:
        ValueError: for negative delays, `freeze_ranges_after <
            quantize_delay`, `filters` matching no layer, or (at the start
            of training, before any step) a layer type with no
            quantization rule.
        TypeError: for arguments of the wrong type.

    Example:

    >>> import numpy as np
    >>> model = keras.Sequential([
    ...     keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
    ...     keras.layers.Dense(2)])
    >>> model.compile("adam", "mse")
    >>> x, y = np.random.rand(32, 4), np.random.rand(32, 2)
    >>> qat = QuantizationAwareTraining(freeze_ranges_after=4)
    >>> history = model.fit(x, y, epochs=2, batch_size=8, verbose=0,
    ...                     callbacks=[qat])
    >>> history.history["quantization_ranges_frozen"]
    [0.0, 1.0]
    >>> from keras_slim.quantization import is_quantization_aware
    >>> is_quantization_aware(model)
    True
    """

    def __init__(
        self,
        quantize_delay=0,
        freeze_bn_delay=None,
        freeze_ranges_after=None,
        filters=None,
        verbose=0,
    ):
        super().__init__()
        _check_delay("quantize_delay", quantize_delay, allow_none=False)
        _check_delay("freeze_bn_delay", freeze_bn_delay, allow_none=True)
        _check_delay(
            "freeze_ranges_after", freeze_ranges_after, allow_none=True
        )
        if (
            freeze_ranges_after is not None
            and freeze_ranges_after < quantize_delay
        ):
            raise ValueError(
                "Expected `freeze_ranges_after` >= `quantize_delay` "
                f"(={quantize_delay}): ranges cannot freeze before they are "
                f"learned. Received: freeze_ranges_after={freeze_ranges_after}"
            )
        _validation.check_choice("verbose", verbose, (0, 1))
        self.quantize_delay = quantize_delay
        self.freeze_bn_delay = freeze_bn_delay
        self.freeze_ranges_after = freeze_ranges_after
        self.filters = filters
        self.predicate = _validation.compile_filters(filters)
        self.verbose = verbose
        self.step = 0
        self.state = None
        self.target = None
        self._fresh = False

    # ------------------------------------------------------------ schedule

    def state_at(self, step):
        """`(active, ranges_frozen, bn_frozen)` at optimizer step `step`."""
        active = step >= self.quantize_delay
        frozen = (
            self.freeze_ranges_after is not None
            and step >= self.freeze_ranges_after
        )
        bn = self.freeze_bn_delay is not None and step >= self.freeze_bn_delay
        return active, frozen, bn

    def _apply_state(self, state):
        active, frozen, bn_frozen = state
        awareness = _in_place.awareness_of(self.target)
        if awareness is not None:
            awareness.set_phase(state)
        else:
            for layer in _layers.leaf_layers(self.target):
                if isinstance(layer, _twins.FakeQuant):
                    layer.quantize_active = active
                    layer.ranges_frozen = frozen
                elif isinstance(layer, _twins.WEIGHT_TWINS):
                    layer.quantize_active = active
                    inner = getattr(layer, "depthwise_quant", None)
                    if inner is not None:
                        inner.ranges_frozen = frozen
                elif isinstance(
                    layer,
                    (
                        _twins.QuantizedEmbedding,
                        _twins.QuantizedActivation,
                        _twins.QuantizedPReLU,
                    ),
                ):
                    layer.quantize_active = active
                elif isinstance(layer, _twins.STEP_TWINS):
                    layer.quantize_active = active
                    for quant in layer.step_quants:
                        quant.quantize_active = active
                        quant.ranges_frozen = frozen
                elif isinstance(layer, _twins.StandaloneBatchNormalization):
                    layer.frozen = bn_frozen
                    layer.quantize_active = active
                    layer.product.quantize_active = active
                    layer.product.ranges_frozen = frozen
                elif isinstance(layer, _twins.FreezableBatchNormalization):
                    layer.frozen = bn_frozen
        if self.verbose and state != self.state:
            print(
                f"QuantizationAwareTraining: step {self.step}: "
                f"quantization {'on' if active else 'off'}, ranges "
                f"{'frozen' if frozen else 'learning'}, BatchNorm "
                f"{'frozen' if bn_frozen else 'learning'}"
            )
        self.state = state
        # Rebuild the functions: they were traced with the old state (or,
        # at the start, before the model changed). Tracing is lazy: the
        # test and predict functions cost nothing until they are used.
        self.model.make_train_function(force=True)
        self.model.make_test_function(force=True)
        self.model.make_predict_function(force=True)

    def _current_step(self):
        step = keras.ops.convert_to_numpy(self.model.optimizer.iterations)
        awareness = _in_place.awareness_of(self.target)
        if awareness is not None:
            step = step - keras.ops.convert_to_numpy(awareness.start_step)
        return int(step)

    def _current_state(self):
        """The state the model's functions were built with."""
        awareness = _in_place.awareness_of(self.target)
        if awareness is not None:
            return (
                awareness.active,
                awareness.ranges_frozen,
                awareness.bn_frozen,
            )
        layers = _layers.leaf_layers(self.target)
        quantizers = [x for x in layers if isinstance(x, _twins.FakeQuant)]
        if not quantizers:
            return None
        bn = any(getattr(x, "frozen", False) for x in layers)
        first = quantizers[0]
        return first.quantize_active, first.ranges_frozen, bn

    # --------------------------------------------------------------- hooks

    def set_model(self, model):
        super().set_model(model)
        # `fit` sets the model on every callback before any of them starts:
        # the ranges exist as model variables before `BackupAndRestore`
        # loads a backup in its `on_train_begin`, whatever the order of the
        # callbacks.
        target = _layers.target_model(model)
        if target.built:
            self._attach(target)

    def _attach(self, target):
        """Make `target` quantization-aware in place, once."""
        self.target = target
        _validation.check_model(target)
        if _already_quantized(target) or _in_place.awareness_of(target):
            if self.freeze_bn_delay is not None:
                _check_freezable_batchnorm(target)
            return
        rows = _rules.plan(target, self.predicate)
        _rules.check_filters_matched(rows, self.filters, target)
        _check_training_argument(target)
        start = self.model.optimizer.iterations
        awareness = _in_place.make_aware(target, rows)
        # A Python int: assigning the optimizer's own value would share its
        # buffer (JAX then donates one buffer twice).
        awareness.start_step.assign(int(keras.ops.convert_to_numpy(start)))
        self._fresh = True

    def on_train_begin(self, logs=None):
        _refuse_torch_compile(self.model)
        self._attach(_layers.target_model(self.model))
        awareness = _in_place.awareness_of(self.target)
        if awareness is not None and not awareness.owned:
            _refuse_checkpoints(self.target, _sibling_callbacks())
        self.step = self._current_step()
        # A model changed just now runs functions traced before the change.
        self.state = None if self._fresh else self._current_state()
        self._fresh = False
        state = self.state_at(self.step)
        if state != self.state:
            self._apply_state(state)

    def on_train_batch_begin(self, batch, logs=None):
        self.step = self._current_step()
        state = self.state_at(self.step)
        if state != self.state:
            self._apply_state(state)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.state is not None:
            # The state of the epoch's last step.
            active, frozen, bn_frozen = self.state
            logs["quantization_active"] = float(active)
            logs["quantization_ranges_frozen"] = float(frozen)
            logs["batchnorm_frozen"] = float(bn_frozen)


def _refuse_torch_compile(model):
    """torch.compile (dynamo) fails inside the in-place layer calls, at the
    first step; refuse before it."""
    if keras.backend.backend() == "torch" and getattr(
        model, "jit_compile", False
    ):
        raise ValueError(
            "QuantizationAwareTraining cannot run in place on a model "
            "compiled with `jit_compile=True` on the torch backend: "
            "torch.compile cannot trace its quantization-aware layer calls. "
            "Compile with `jit_compile=False` (the torch default). "
            f"Received: jit_compile={model.jit_compile!r} for model "
            f"{model.name!r}."
        )


def _sibling_callbacks():
    """The callbacks of the `fit` now starting, or `[]` if not found.

    A callback is not given its siblings; Keras calls `on_train_begin`
    from `CallbackList.on_train_begin`, whose frame holds the list.
    """
    frame = inspect.currentframe()
    try:
        for _ in range(8):
            frame = frame.f_back
            if frame is None:
                return []
            owner = frame.f_locals.get("self")
            if isinstance(owner, keras.callbacks.CallbackList):
                return list(owner.callbacks)
        return []
    finally:
        del frame


def _refuse_checkpoints(model, callbacks):
    """Refuse, before any step, a `fit` that would save a model whose
    ranges cannot be saved (a subclassed model: see `_in_place`)."""
    savers = (keras.callbacks.ModelCheckpoint, keras.callbacks.BackupAndRestore)
    found = [type(c).__name__ for c in callbacks if isinstance(c, savers)]
    if found:
        raise ValueError(
            _in_place.SAVE_REFUSAL.format(name=model.name)
            + f" This `fit` has {', '.join(found)}, which would fail at its "
            "first save: remove it, or write the model with the Functional "
            f"API. Received: callbacks with {', '.join(found)}"
        )


def _already_quantized(model):
    twins = (_twins.FakeQuant, *_twins.WEIGHT_TWINS)
    return any(isinstance(x, twins) for x in _layers.leaf_layers(model))


def _check_freezable_batchnorm(model):
    if _in_place.awareness_of(model) is not None:
        return
    for path, layer in _layers.iter_layers(model):
        if type(layer) is keras.layers.BatchNormalization:
            raise ValueError(
                f"`freeze_bn_delay` needs the BatchNormalization layers of a "
                f"model from `quantize_model` to be its "
                f"`FreezableBatchNormalization`, but {path!r} is a plain "
                "`BatchNormalization` (a model saved by an older keras_slim). "
                "Call `quantize_model` on the float model again, or pass "
                "`freeze_bn_delay=None`."
            )


def _check_training_argument(model):
    if _layers.is_graph_model(model):
        return
    try:
        params = inspect.signature(model.call).parameters
    except (TypeError, ValueError):
        return
    if "training" not in params and not any(
        p.kind == p.VAR_KEYWORD for p in params.values()
    ):
        raise ValueError(
            f"QuantizationAwareTraining needs `{type(model).__name__}.call` "
            "to accept a `training` argument: it is how the callback tells "
            "training steps (ranges move) from evaluation, prediction and "
            "export (ranges are read). Add `training=None` to `call` and "
            "pass it on."
        )
