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
from keras_slim.pruning import _selection


class ChannelPruning(keras.callbacks.Callback):
    """Zero whole channels progressively during `fit` (group sparsity).

    The callback reads the target fraction from `schedule` and, when it
    grows, zeroes the least important channels of each group of dependent
    layers (the same groups as `prune_channels`: residual branches are
    pruned together). A `keras_slim.schedules.PruningSchedule` is read at
    its update steps (`begin_step`, every `frequency` steps, `end_step`),
    as `MagnitudePruning` reads it; a plain callable at every step. A
    zeroed channel has its filter, bias, BatchNorm scale and offset and
    DepthwiseConv2D slice set to zero, and is kept at zero after every
    batch, so the rest of the network learns to do without it.
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
        model = _layers.target_model(self.model)
        self._analysis, self._scores, _ = _selection.analyse(
            model, self.filters, self.criterion
        )
        values = _constants.constants(self._analysis)
        live = _constants.live_roots(self._analysis, values)
        self._prunable = list(self._analysis.classes())
        self._pruned = {r for r in self._prunable if r not in live}
        self._fraction_now = None
        self._last_step = None
        self._masks = []
        self._update_masks()

    def _step(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def _due(self, step):
        """Whether to read the schedule at `step` (always the first time)."""
        if self._last_step is None:
            return True
        if isinstance(self.schedule, schedules.PruningSchedule):
            return self.schedule.updates_between(self._last_step, step)
        return True

    def on_train_batch_begin(self, batch, logs=None):
        step = self._step()
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
            self._update_masks()
            self._apply()
            if self.verbose:
                print(
                    f"ChannelPruning: step {self._step()}, fraction "
                    f"{fraction:.3f}, {len(self._pruned)} channels zeroed"
                )

    def _update_masks(self):
        analysis, pruned = self._analysis, self._pruned
        self._masks = []
        for node in analysis.nodes:
            variables = _graph.channel_variables(node)
            if not variables:
                continue
            out = np.array(
                [
                    analysis.find(int(e)) in pruned
                    for e in analysis.elems[node.key]
                ],
                bool,
            )
            if not out.any():
                continue
            for var, role in variables:
                if node.role == "norm" and not any(
                    var is getattr(node.layer, attr, None)
                    for attr in ("gamma", "beta")
                ):
                    continue
                mask = np.ones(var.shape, var.dtype)
                if role == "dw" and node.role == "depthwise":
                    m = var.shape[-1]
                    flat = mask.reshape(-1, var.shape[-2] * m)
                    flat[:, out] = 0
                    mask = flat.reshape(var.shape)
                elif role == "dw" and node.role != "depthwise":
                    continue  # a separable conv's depthwise: input axis
                else:
                    mask[..., out] = 0
                self._masks.append((var, mask))

    def _apply(self):
        # `self.model` syncs a JAX `fit`'s state back into the variables,
        # which it otherwise leaves detached until the epoch ends.
        _layers.sync_state(self.model)
        for var, mask in self._masks:
            var.assign(keras.ops.multiply(var.value, mask))

    def _log(self, logs):
        if logs is not None:
            total = max(len(self._prunable), 1)
            logs["channel_sparsity"] = len(self._pruned) / total

    def on_train_batch_end(self, batch, logs=None):
        self._apply()
        self._log(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._log(logs)

    def on_train_end(self, logs=None):
        self._apply()

    def get_config(self):
        return {
            "schedule": self.schedule,
            "criterion": self.criterion,
            "filters": self.filters,
            "min_channels": self.min_channels,
            "round_to": self.round_to,
            "verbose": self.verbose,
        }
