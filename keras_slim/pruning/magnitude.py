"""Magnitude pruning as one callback added to an existing `model.fit`."""

import keras
import numpy as np

from keras_slim import _layers
from keras_slim import _validation
from keras_slim import schedules as schedules_module
from keras_slim.pruning import _masks
from keras_slim.pruning import _train_step

__all__ = ["MagnitudePruning"]

_KIND = "magnitude"  # the kind of this callback's `_masks.MaskConstraint`s


def _sample_steps(schedule):
    """Steps at which to check the schedule's targets before training."""
    begin, end = schedule.begin_step, schedule.end_step
    if end < 0:
        return [begin, begin + schedule.frequency]
    return sorted({begin, end, *np.linspace(begin, end, 101).astype(int)})


class MagnitudePruning(keras.callbacks.Callback):
    """Prune weights by magnitude while `fit` trains, following a schedule.

    Add it to the `callbacks` of an ordinary `model.fit`: it acts on the
    model object in place (no wrapper, no clone; optimizer, layer names
    and subclassed or nested structure are kept). At the mask update steps
    of `schedule` it zeroes the smallest-magnitude weights of each selected
    kernel until the target sparsity is reached; in between, a mask
    attached to each kernel as its Keras variable constraint keeps the
    pruned weights exactly zero inside the compiled train step (with Adam
    momentum, `steps_per_execution > 1`, `jit_compile=True`, mixed
    precision and `tf.distribute` strategies). Masks are computed on the
    host only at update steps, never every batch. Every Keras backend:
    on PyTorch the constraint reads the mask at each step; on JAX, whose
    jitted step sees only the model's and optimizer's state, the callback
    also wraps the model's `train_step` so that a pruned weight that was
    zero before a step is zero after it (no retrace at mask updates). A
    kernel always keeps at least one weight (its largest), as in
    tensorflow-model-optimization: a whole kernel is never zeroed.

    Pruned by default: the kernels of `Dense`, `EinsumDense`, `Conv1D/2D/3D`,
    `Conv*DTranspose`, `DepthwiseConv1D/2D`, both kernels of
    `SeparableConv1D/2D` and the kernel and recurrent kernel of `LSTM`,
    `GRU` and `SimpleRNN` (each direction of a `Bidirectional`), in
    Sequential, Functional, subclassed and nested models. Never biases or
    BatchNormalization; `Embedding` tables only when `filters` selects
    them (the list is `keras_slim.catalogue`'s; a custom layer is taught
    with `keras_slim.catalogue.register_layer`).
    `keras_slim.pruning.sparsity_report` lists what was pruned and what was
    skipped and why.

    The schedule's step is `model.optimizer.iterations`, so stopping and
    resuming `fit` continues the schedule. When training starts, the mask
    of each kernel is its pattern of non-zero weights: a resumed (or
    reloaded) model therefore keeps exactly its masks. Weights that are
    exactly zero when training starts count as pruned.

    The masks stay attached after training, so a later `fit` keeps the
    zeros. `model.save` writes an ordinary model (constraints held on
    variables are not saved) whose weights contain the zeros;
    `keras.models.load_model` needs no custom objects.

    Iterative pruning (prune, fine-tune, prune more) is the schedule: a
    `keras_slim.schedules.PolynomialDecay` raises the sparsity every
    `frequency` steps with fine-tuning in between.

    Reference:
        Han et al., "Learning both Weights and Connections for Efficient
        Neural Networks", 2015 (https://arxiv.org/abs/1506.02626);
        Zhu and Gupta, "To prune, or not to prune", 2017
        (https://arxiv.org/abs/1710.01878).

    Args:
        schedule: A `keras_slim.schedules.PruningSchedule` giving the target
            sparsity at each step and when masks are updated.
        filters: Which layers to prune: `None` (every prunable layer), a
            regex matched against the layer's path (`outer/inner/leaf`) or
            name, a list of regexes, or a callable `layer -> bool`, as
            `keras.Model.quantize(filters=...)`. Must match at least one
            prunable layer.
        pattern: `"unstructured"` (any weight), an `"N:M"` string such as
            `"2:4"` (at most `M - N` zeros in every group of `M`
            consecutive weights along the input axis: Dense axis 0, Conv
            kernels `(..., in, out)` the `in` axis; reaches its full
            pattern at sparsity `(M - N) / M`), or a block shape
            `(bh, bw)` (whole blocks of the kernel reshaped to 2D,
            `(prod(shape[:-1]), shape[-1])`, ranked by mean magnitude).
            With the default `filters`, kernels the pattern cannot apply to
            (N:M on a depthwise kernel or on an input axis that is not a
            multiple of `M`) are skipped and listed by
            `sparsity_report(model, pattern=...)`.
        scope: `"layer"` prunes each kernel to the target sparsity;
            `"global"` ranks magnitudes across all selected kernels at
            once, so layers with many small weights are pruned more. On
            small models prefer `"global"` at high sparsity: per-layer
            pruning starves thin layers (a first conv, a depthwise
            kernel). Measured on `keras_slim.models.small_cnn` fine-tuned
            to 80% on the digits: 97.1% with `"global"`, 82.7% with
            `"layer"`, 97.6% without pruning.
        verbose: 0 silent; 1 prints each mask update and skipped layers.
        log_layers: If `True`, also write `logs["sparsity/<path>/<weight>"]`
            for each pruned kernel at the end of every epoch.

    Logs:
        `logs["sparsity"]`, the fraction of zeros over all pruned kernels,
        at the end of every epoch, so History, TensorBoard and CSVLogger
        show it. (No batch-end hook: one would stop Keras from dispatching
        batch-end callbacks asynchronously and slow every step.)

    Raises:
        TypeError: `schedule` is not a `PruningSchedule`.
        ValueError: an unknown `pattern` or `scope`, a schedule target above
            what the pattern can reach, and, when training starts (before
            the first step), a model that is not built, `filters` that match
            no prunable layer, an N:M pattern on a layer selected by
            `filters` whose input axis is not a multiple of `M`, or a
            schedule whose `end_step` is already behind
            `model.optimizer.iterations` while the kernels are below its
            target (it would never update a mask: start the schedule at
            the optimizer's step for a model that trained before).

    Example:

    >>> import numpy as np
    >>> from keras_slim.schedules import PolynomialDecay
    >>> x = np.random.rand(64, 16).astype("float32")
    >>> y = (x.sum(axis=1) > 8).astype("int32")
    >>> model = keras.Sequential([keras.Input((16,)),
    ...     keras.layers.Dense(32, activation="relu"),
    ...     keras.layers.Dense(2)])
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
    ...     from_logits=True))
    >>> pruning = MagnitudePruning(
    ...     PolynomialDecay(0.0, 0.8, begin_step=0, end_step=12, frequency=4))
    >>> history = model.fit(x, y, batch_size=16, epochs=4, verbose=0,
    ...                     callbacks=[pruning])
    >>> [round(s, 2) for s in history.history["sparsity"]]
    [0.56, 0.77, 0.8, 0.8]
    >>> round(float(np.mean(model.layers[0].kernel.numpy() == 0)), 2)
    0.8
    """

    def __init__(
        self,
        schedule,
        filters=None,
        pattern="unstructured",
        scope="layer",
        verbose=0,
        log_layers=False,
    ):
        super().__init__()
        _validation.check_type(
            "schedule",
            schedule,
            schedules_module.PruningSchedule,
            "a `keras_slim.schedules.PruningSchedule` (such as "
            "`ConstantSparsity(0.8)` or `PolynomialDecay(...)`)",
        )
        self._pattern = _masks.parse_pattern(pattern)
        _validation.check_choice("scope", scope, ("layer", "global"))
        _validation.check_choice("verbose", verbose, (0, 1, 2))
        _validation.check_type("log_layers", log_layers, bool, "a bool")
        # Turn a bad `filters` into an error now, not when training starts.
        _validation.compile_filters(filters)
        limit = _masks.max_sparsity(self._pattern)
        for step in _sample_steps(schedule):
            self._check_target(schedule(step), step, limit, schedule)
        self.schedule = schedule
        self.filters = filters
        self.pattern = pattern
        self.scope = scope
        self.verbose = verbose
        self.log_layers = log_layers
        self._reset()

    def _check_target(self, target, step, limit, schedule):
        if not 0.0 <= target < 1.0 or (limit < 1.0 and target > limit + 1e-9):
            high = f"{limit:g}]" if limit < 1.0 else "1)"
            raise ValueError(
                f"Expected the target sparsity of `schedule` in [0, {high} "
                f"for pattern {_masks.describe(self._pattern)}. Received: "
                f"schedule={schedule!r}, whose target at step {step} is "
                f"{target:g}"
            )

    def _reset(self):
        self._targets = []
        self._skipped = []
        self._zeros = []
        self._last_step = 0
        self._epoch_start = 0
        self._sparsity = 0.0

    # ------------------------------------------------------------ fit hooks

    def on_train_begin(self, logs=None):
        self._reset()
        model = _layers.target_model(self.model)
        _validation.check_model(model)
        targets, self._skipped = _masks.select(
            model, self.filters, self._pattern
        )
        if not targets:
            raise ValueError(
                "Expected `filters` to select at least one prunable layer "
                f"(pattern {_masks.describe(self._pattern)}) in model "
                f"{model.name!r}. Skipped: "
                f"{dict(self._skipped) or 'no layer with weights'}. "
                f"Received: filters={self.filters!r}"
            )
        self._targets = targets
        self._check_not_over(targets)
        if self.verbose:
            for path, reason in self._skipped:
                print(f"MagnitudePruning: skipped {path}: {reason}")
        changed = self._attach_masks()
        variables = [t.variable for t in self._targets]
        released = _train_step.refresh_released(variables)
        if changed or released or _train_step.masks_are_traced():
            # `fit` built its train function before `on_train_begin`.
            _train_step.rebuild_train_function(
                self.model, reuse=not (changed or released)
            )
        step = self._step()
        self._last_step = step
        if self.schedule.updates_between(step - 1, step):
            self._update(step)

    def _check_not_over(self, targets):
        """Refuse a schedule that ended before this `fit` starts."""
        step = self._step()
        begin, end = self.schedule.begin_step, self.schedule.end_step
        if end < 0 or step <= end:
            return
        size = sum(int(np.prod(t.variable.shape)) for t in targets)
        zeros = sum(int(np.sum(t.variable.numpy() == 0)) for t in targets)
        target = self.schedule(step)
        if zeros / size >= target - 0.02:
            return  # a finished (or resumed) pruning run
        raise ValueError(
            f"`schedule` ended at step {end}, but the optimizer has already "
            f"taken {step} steps (`model.optimizer.iterations`): no mask "
            f"would ever be updated, and the model would stay at "
            f"{zeros / size:.0%} sparsity instead of {target:.0%}. Schedules "
            "count the optimizer's steps so that a resumed `fit` continues "
            "them; for a model that has trained before, start the schedule "
            f"there, e.g. begin_step={step}, end_step={step + end - begin}. "
            f"Received: schedule={self.schedule!r}"
        )

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self._step()

    def on_train_batch_begin(self, batch, logs=None):
        # Mask updates run before the next batch rather than after the
        # last one: a callback with `on_train_batch_end` makes Keras give up
        # dispatching batch-end callbacks asynchronously. `batch` is the
        # first step of the coming execution, so the optimizer has done
        # about `epoch start + batch` steps; the exact count is read from
        # `optimizer.iterations` only when that estimate reaches an update
        # step (steps skipped by a `LossScaleOptimizer` make it run ahead).
        self._maybe_update(self._epoch_start + batch)

    def on_epoch_end(self, epoch, logs=None):
        self._maybe_update(None)
        if logs is None:
            return
        logs["sparsity"] = self._sparsity
        if self.log_layers:
            for target, zeros in zip(self._targets, self._zeros):
                size = int(np.prod(target.variable.shape))
                logs[f"sparsity/{target.key}"] = zeros / size

    def on_train_end(self, logs=None):
        self._maybe_update(None)
        _train_step.restore_train_step(self.model)

    # -------------------------------------------------------------- helpers

    def _maybe_update(self, estimate):
        """Update masks if an update step passed; `None`: read the step."""
        if estimate is not None and not self.schedule.updates_between(
            self._last_step, estimate
        ):
            return
        step = self._step()
        if self.schedule.updates_between(self._last_step, step):
            self._update(step)
        self._last_step = step

    def _step(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def _attach_masks(self):
        """Give each kernel a mask constraint; masks = its non-zeros.

        Returns whether a compiled train step must be rebuilt: a new
        constraint, or (JAX, whose traced step holds the old mask) a mask
        that changed.
        """
        changed = False
        with _layers.strategy_scope(self.model):
            for target in self._targets:
                variable = target.variable
                keep = (variable.numpy() != 0).astype(np.float32)
                old = _masks.find_mask(variable, _KIND)
                if old is not None and _train_step.masks_are_traced():
                    same = np.array_equal(
                        keras.ops.convert_to_numpy(old.mask), keep
                    )
                    changed = changed or not same
                changed = _masks.hold(variable, keep, _KIND) or changed
        self._zeros = [self._count_zeros(t) for t in self._targets]
        self._refresh_sparsity()
        return changed

    def _count_zeros(self, target):
        mask = _masks.find_mask(target.variable, _KIND).mask
        return int(np.sum(keras.ops.convert_to_numpy(mask) == 0))

    def _refresh_sparsity(self):
        total = sum(int(np.prod(t.variable.shape)) for t in self._targets)
        self._sparsity = sum(self._zeros) / total

    def _update(self, step):
        target = self.schedule(step)
        limit = _masks.max_sparsity(self._pattern)
        self._check_target(target, step, limit, self.schedule)
        variables = [t.variable for t in self._targets]
        weights = [v.numpy() for v in variables]
        masks = _masks.compute_masks(
            weights,
            [t.input_axis for t in self._targets],
            self._pattern,
            target,
            self.scope,
        )
        with _layers.strategy_scope(self.model):
            for variable, w, mask in zip(variables, weights, masks):
                _masks.hold(variable, mask, _KIND)
                variable.assign((w * mask).astype(w.dtype))
        if _train_step.refresh_released(variables):
            _train_step.rebuild_train_function(self.model)
        self._zeros = [int(np.sum(m == 0)) for m in masks]
        self._refresh_sparsity()
        if self.verbose:
            print(
                f"MagnitudePruning: step {step}: sparsity "
                f"{self._sparsity:.3f} (target {target:.3f})"
            )
