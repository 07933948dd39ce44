"""The `ChannelPruning` callback (private; public in `pruning.channels`).

It zeroes whole channels during `fit`, choosing them as `prune_channels`
does (`_selection`); `shrink` then removes them.
"""

import keras
import numpy as np

from keras_slim import _layers
from keras_slim import _validation
from keras_slim import schedules
from keras_slim.pruning import _constants
from keras_slim.pruning import _graph
from keras_slim.pruning import _masks
from keras_slim.pruning import _selection
from keras_slim.pruning import _train_step

_KIND = "channel"  # the kind of this callback's `_masks.MaskConstraint`s


class ChannelPruning(keras.callbacks.Callback):
    """Zero whole channels progressively during `fit` (group sparsity).

    The callback reads the target fraction from `schedule` and, when it
    grows, zeroes the least important channels of each group of dependent
    layers (the same groups as `prune_channels`: residual branches are
    pruned together). A `keras_slim.schedules.PruningSchedule` is read at
    its update steps (`begin_step`, every `frequency` steps, `end_step`),
    as `MagnitudePruning` reads it; a plain callable at every step. A
    zeroed channel has its filter, bias, BatchNorm scale and offset and
    DepthwiseConv2D slice set to zero, and is kept at zero inside the
    compiled train step, as `MagnitudePruning` keeps its zeros (a mask
    attached to each of those variables as its Keras constraint; on JAX
    also a wrapped `train_step`, restored when `fit` ends), so the rest
    of the network learns to do without it. Nothing runs on the host
    between schedule changes.
    `shrink(model)` then removes those channels exactly.
    The callback acts on the model being trained, in place; zeroed channels
    are found again from the weights, so training can resume.

    What worked best in `benchmarks/RESULTS.md` (MobileNetV2-0.35, 50% of
    the channels, 12 fine-tuning epochs): `criterion="bn_gamma"` with
    `PolynomialDecay(0.0, 0.5, begin_step=0, end_step=<half the
    fine-tuning steps>, frequency=<steps per epoch>)`, in the `fit` of a
    `keras_slim.distillation.Distiller(teacher, model, temperature=4,
    alpha=0.5)` whose teacher is the unpruned model fine-tuned for the same
    epochs: 0.7 points below that model (median of five seeds), against
    3.3 below without the teacher and 3.6 below for one-shot
    `prune_channels(model, 0.5, criterion="bn_gamma")`. On the demo's small
    CNN the ordering changed from seed to seed: measure on your own model.

    Args:
        schedule: The fraction of channels to remove, a float in [0, 1)
            (applied from the first step) or a callable `step -> fraction`,
            such as `keras_slim.schedules.PolynomialDecay`.
        criterion: `"l1"`, `"l2"` or `"bn_gamma"`, as in `prune_channels`.
        filters: Which Conv/Dense layers may lose channels, as in
            `prune_channels`.
        min_channels: No group is pruned below this many channels.
        round_to: If set, channel counts kept are multiples of it.
        verbose: Print the fraction when it changes, if > 0.

    Logs `channel_sparsity`: the fraction of prunable channels zeroed.

    Example:

    >>> import keras, numpy as np
    >>> from keras_slim.pruning.channels import ChannelPruning, shrink
    >>> model = keras.Sequential([
    ...     keras.Input((8,)),
    ...     keras.layers.Dense(32, activation="relu"),
    ...     keras.layers.Dense(2),
    ... ])
    >>> model.compile("adam", "mse")
    >>> x, y = np.ones((16, 8)), np.ones((16, 2))
    >>> history = model.fit(x, y, epochs=1, verbose=0,
    ...                     callbacks=[ChannelPruning(0.5)])
    >>> history.history["channel_sparsity"]
    [0.5]
    >>> shrink(model).layers[0].units
    16
    """

    def __init__(
        self,
        schedule,
        criterion="l1",
        filters=None,
        min_channels=8,
        round_to=None,
        verbose=0,
    ):
        super().__init__()
        if not callable(schedule):
            _validation.check_range(
                "schedule", schedule, 0, 1, high_inclusive=False
            )
        _selection.check_args(
            0.0, criterion, min_channels, round_to, "schedule"
        )
        _validation.compile_filters(filters)
        self.schedule = schedule
        self.criterion = criterion
        self.filters = filters
        self.min_channels = min_channels
        self.round_to = round_to
        self.verbose = verbose

    def _fraction(self, step):
        if callable(self.schedule):
            return float(self.schedule(step))
        return float(self.schedule)

    def on_train_begin(self, logs=None):
        self._trained = self.model
        model = _layers.target_model(self._trained)
        self._analysis, self._scores, skipped = _selection.analyse(
            model, self.filters, self.criterion
        )
        self._prunable = list(self._analysis.classes())
        if not self._prunable:
            # Refused before the first step: the whole `fit` would
            # otherwise train with nothing pruned.
            raise _selection.nothing_to_prune(
                self._analysis, skipped, "ChannelPruning"
            )
        values = _constants.constants(self._analysis)
        live = _constants.live_roots(self._analysis, values)
        self._pruned = {r for r in self._prunable if r not in live}
        self._fraction_now = None
        self._last_step = None
        self._epoch_start = self._step()
        # Every channel variable gets its mask now, so that mask updates
        # during `fit` only assign it (no new constraint, no retrace).
        changed = self._hold(attach=True)
        self._maybe_update(self._epoch_start, exact=True)
        if changed or _train_step.masks_are_traced():
            # `fit` built its train function before `on_train_begin`.
            _train_step.rebuild_train_function(self._trained, reuse=not changed)

    def _step(self):
        # `self.model` syncs a JAX `fit`'s state into the variables: read
        # only at epoch starts and where the schedule may change.
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def _due(self, step):
        """Whether to read the schedule at `step` (always the first time)."""
        if self._last_step is None:
            return True
        if isinstance(self.schedule, schedules.PruningSchedule):
            return self.schedule.updates_between(self._last_step, step)
        return step != self._last_step

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self._step()

    def on_train_batch_begin(self, batch, logs=None):
        # `batch` is the first step of the coming execution, so the
        # optimizer has done about `epoch start + batch` steps; the exact
        # count (a host read, and a JAX state sync) is taken only when the
        # schedule would change there.
        self._maybe_update(self._epoch_start + batch, exact=False)

    def _maybe_update(self, estimate, exact):
        if not self._due(estimate):
            return
        if self._fraction(estimate) == self._fraction_now and not exact:
            self._last_step = estimate
            return
        step = estimate if exact else self._step()
        if not self._due(step):
            return
        self._last_step = step
        fraction = self._fraction(step)
        if fraction == self._fraction_now:
            return
        self._fraction_now = fraction
        analysis = self._analysis
        before = len(self._pruned)
        self._pruned = _selection.select(
            analysis,
            _selection.scores(analysis, self.criterion, analysis.norms, {}),
            fraction,
            self.min_channels,
            self.round_to,
            pruned=self._pruned,
        )
        if len(self._pruned) != before:
            self._hold(attach=False)
            if self.verbose:
                print(
                    f"ChannelPruning: step {step}, fraction "
                    f"{fraction:.3f}, {len(self._pruned)} channels zeroed"
                )

    def _channel_masks(self):
        """`[(variable, mask)]` for every channel variable of a node with
        prunable channels (mask 0 on the pruned channels, 1 elsewhere)."""
        analysis, pruned = self._analysis, self._pruned
        prunable = set(self._prunable)
        masks = {}
        for node in analysis.nodes:
            variables = _graph.channel_variables(node)
            if not variables:
                continue
            roots = [analysis.find(int(e)) for e in analysis.elems[node.key]]
            if not any(r in prunable for r in roots):
                continue
            out = np.array([r in pruned for r in roots], bool)
            for var, role in variables:
                if node.role == "norm" and not any(
                    var is getattr(node.layer, attr, None)
                    for attr in ("gamma", "beta")
                ):
                    continue
                if role == "dw" and node.role != "depthwise":
                    continue  # a separable conv's depthwise: input axis
                key = id(var)
                if key not in masks:
                    masks[key] = (var, np.ones(var.shape, np.float32))
                mask = masks[key][1]
                if role == "dw":
                    m = var.shape[-1]
                    flat = mask.reshape(-1, var.shape[-2] * m)
                    flat[:, out] = 0
                elif role == "tkernel":
                    mask[..., out, :] = 0
                else:
                    mask[..., out] = 0
        return list(masks.values())

    def _hold(self, attach):
        """Assign the masks and zero the masked weights, on the host.

        With `attach`, also give each channel variable its mask
        constraint. Then (JAX) whether the traced step releases the right
        zeros: if not, the train step is rebuilt (or, with `attach`, left
        to the caller to rebuild). Returns whether a constraint was new or
        the released zeros changed.
        """
        masks = self._channel_masks()
        model = self._trained
        changed = False
        with _layers.strategy_scope(model):
            for var, mask in masks:
                if attach or _masks.find_mask(var, _KIND) is not None:
                    changed = _masks.hold(var, mask, _KIND) or changed
                if not mask.all():
                    value = keras.ops.convert_to_numpy(var)
                    var.assign((value * mask).astype(value.dtype))
        variables = [var for var, _ in masks]
        released = _train_step.refresh_released(variables)
        if released and not attach:
            _train_step.rebuild_train_function(model)
        return changed or released

    def _log(self, logs):
        if logs is not None:
            total = max(len(self._prunable), 1)
            logs["channel_sparsity"] = len(self._pruned) / total

    def on_train_batch_end(self, batch, logs=None):
        self._log(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._log(logs)

    def on_train_end(self, logs=None):
        _train_step.restore_train_step(self._trained)

    def get_config(self):
        return {
            "schedule": self.schedule,
            "criterion": self.criterion,
            "filters": self.filters,
            "min_channels": self.min_channels,
            "round_to": self.round_to,
            "verbose": self.verbose,
        }
