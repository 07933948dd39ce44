"""Quantization-aware training as a `model.fit` callback."""

import weakref

import keras

from keras_slim import _layers
from keras_slim import _validation
from keras_slim.quantization import _fake_quant


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

    How it changes the model: at `on_train_begin` it overrides the
    instance attribute `call` of the model and of its layers (their
    classes and weights are untouched) and rebuilds the model's train,
    test and predict functions. Ranges move only in calls with
    `training=True` (the training steps of `fit`); `evaluate`, `predict`
    and export read them. The change stays after `fit`, so the model keeps
    predicting as its int8 file will. The ranges live outside the layers:
    `model.save` and `save_weights` then refuse with a message (they
    could not store them); to save and resume, start from
    `keras_slim.quantization.quantize_model(model)` instead, which has
    serializable fake-quant layers (this callback also drives its
    schedules). Zeros in kernels stay exact zeros under the symmetric
    weight quantizer, so pruning callbacks compose with this one.

    The schedule counts optimizer steps (`model.optimizer.iterations`)
    from the step at which quantization-aware training began on this model
    (when this callback first made it quantization-aware; 0 for a model
    from `quantize_model`, which has a new optimizer), so a resumed `fit`
    continues where it stopped. Each epoch writes
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

    def apply_state(self, state):
        active, frozen, bn_frozen = state
        patch = _fake_quant.PATCHES.get(self.target)
        if patch is not None:
            patch.set_state(active, frozen, bn_frozen)
        else:
            for layer in _layers.leaf_layers(self.target):
                if isinstance(layer, _fake_quant.FakeQuant):
                    layer.quantize_active = active
                    layer.ranges_frozen = frozen
                elif _fake_quant.layer_rule(layer) in (
                    "conv",
                    "depthwise",
                    "dense",
                ):
                    layer.quantize_active = active
                elif isinstance(layer, keras.layers.BatchNormalization):
                    _freeze_batchnorm(layer, bn_frozen)
        if self.verbose and state != self.state:
            print(
                f"QuantizationAwareTraining: step {self.step}: "
                f"quantization {'on' if active else 'off'}, ranges "
                f"{'frozen' if frozen else 'learning'}, BatchNorm "
                f"{'frozen' if bn_frozen else 'learning'}"
            )
        self.state = state
        _APPLIED[self.target] = state

    def optimizer_step(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def rebuild(self):
        # Functions trace lazily: the test and predict functions cost
        # nothing until they are used.
        self.model.make_train_function(force=True)
        self.model.make_test_function(force=True)
        self.model.make_predict_function(force=True)

    # --------------------------------------------------------------- hooks

    def on_train_begin(self, logs=None):
        self.target = _layers.target_model(self.model)
        _validation.check_model(self.target)
        changed = False
        if not _already_quantized(self.target) and (
            self.target not in _fake_quant.PATCHES
        ):
            rows = _fake_quant.plan(self.target, self.predicate)
            if self.filters is not None and all(r[2] == "skip" for r in rows):
                raise ValueError(
                    "`filters` matched no layer of model "
                    f"{self.target.name!r}: nothing would be quantized. "
                    f"Received: filters={self.filters!r}"
                )
            _check_training_argument(self.target)
            patch = _fake_quant.patch_model(self.target, rows)
            patch.start_step = self.optimizer_step()
            changed = True
        patch = _fake_quant.PATCHES.get(self.target)
        start = patch.start_step if patch is not None else 0
        self.step = self.optimizer_step() - start
        self.state = _APPLIED.get(self.target)
        state = self.state_at(self.step)
        if changed or state != self.state:
            # Also replaces functions traced before the model changed
            # (an already-trained model's compiled train step).
            self.apply_state(state)
            self.rebuild()

    def on_train_batch_begin(self, batch, logs=None):
        state = self.state_at(self.step)
        if state != self.state:
            self.apply_state(state)
            self.rebuild()

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.state is not None:
            # The state of the epoch's last step.
            active, frozen, bn_frozen = self.state
            logs["quantization_active"] = float(active)
            logs["quantization_ranges_frozen"] = float(frozen)
            logs["batchnorm_frozen"] = float(bn_frozen)


def _already_quantized(model):
    return any(
        isinstance(
            layer,
            (
                _fake_quant.FakeQuant,
                _fake_quant.QuantizedDense,
                _fake_quant.QuantizedConv2D,
                _fake_quant.QuantizedConv1D,
                _fake_quant.QuantizedDepthwiseConv2D,
            ),
        )
        for layer in _layers.leaf_layers(model)
    )


def _check_training_argument(model):
    import inspect

    if isinstance(model, keras.Sequential) or type(model) is keras.Model:
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


_BN_ORIGINAL_CALLS = weakref.WeakKeyDictionary()
# Target model -> the (active, frozen, bn_frozen) state its functions use.
_APPLIED = weakref.WeakKeyDictionary()


def _freeze_batchnorm(layer, frozen):
    """Run a BatchNormalization layer in inference mode while `frozen`.

    Used on models from `quantize_model`; overrides the instance `call`
    (the layer's class, config and weights are untouched).
    """
    if layer not in _BN_ORIGINAL_CALLS:
        original = layer.call
        _BN_ORIGINAL_CALLS[layer] = original

        def call(*args, **kwargs):
            if getattr(call, "frozen", False):
                kwargs = {**kwargs, "training": False}
            return original(*args, **kwargs)

        layer.call = call
    layer.call.frozen = frozen
