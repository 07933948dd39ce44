"""GradualUnfreezing: unfreeze blocks from the top down within one fit."""

import collections

import keras

from keras_slim import _layers
from keras_slim import _validation
from keras_slim.transfer import _freezing


def _stage_kwargs(epoch, value):
    """Turn one schedule value into `unfreeze` keyword arguments."""
    if isinstance(value, dict):
        unknown = set(value) - {"up_to", "fraction", "filters"}
        if unknown:
            raise ValueError(
                "Expected the schedule's dict values to use the keys "
                "'up_to', 'fraction', 'filters'. Received: "
                f"schedule[{epoch}]={value!r}"
            )
        kwargs = dict(value)
    elif isinstance(value, float):
        kwargs = {"fraction": value}
    elif isinstance(value, (str, int)) and not isinstance(value, bool):
        kwargs = {"up_to": value}
    else:
        raise TypeError(
            "Expected each schedule value to be a layer name or index "
            "(`up_to`), a float (`fraction`) or a dict of `unfreeze` "
            f"arguments. Received: schedule[{epoch}]={value!r}"
        )
    kwargs.setdefault("up_to", None)
    kwargs.setdefault("fraction", None)
    kwargs.setdefault("filters", None)
    return kwargs


class GradualUnfreezing(keras.callbacks.Callback):
    """Unfreeze a model from the top down at given epochs of one `fit`.

    ULMFiT-style gradual unfreezing: train the new head on a frozen body
    first, then let ever deeper blocks train, so the pretrained features
    are not wrecked by the large early gradients of a random head. At the
    start of each scheduled epoch the callback unfreezes layers as
    `keras_slim.transfer.unfreeze` does (from the top down, keeping
    BatchNormalization frozen by default) and rebuilds the model's train
    function so the change takes effect at once.

    With `learning_rate_multiplier=m`, layers unfrozen at the k-th stage
    train at `m**k` times the optimizer's learning rate (discriminative
    fine-tuning; for optimizers whose step is proportional to the learning
    rate: SGD, Adam and its kin, RMSprop, Lion...; `Ftrl` is refused): the
    optimizer's update step passes each of their variables `m**k` times the
    learning rate, inside the train step (a jitted JAX step, a
    `tf.function`, `steps_per_execution`, a distribution strategy: every
    step). A gradient scale would be undone by Adam's normalisation. Weight
    decay, which Keras applies before the update step at the optimizer's own
    rate, is not scaled. The optimizer that trains with the factors is the
    rebuilt one described below (its config and variables are those of the
    user's optimizer; the factors hold during the callback's `fit` only and
    are not saved with it).

    A Keras 3 optimizer only updates the variables it was built with, and
    cannot take on more: `build` does nothing once it is built, and
    `apply` refuses an unknown variable. So when a stage unfreezes layers,
    the callback replaces a built optimizer by one of the same
    configuration built on the model's `trainable_variables` (exactly
    those, in the model's order), and its state carries over:
    `iterations` (learning-rate schedules and step-based callbacks go on
    from where they were), the learning rate, and every slot of the
    variables it already trained (momentum, Adam's moments, averages and
    accumulators), matched by name. Newly trainable variables start with
    zero slots. `model.optimizer` is then a new object: read it again
    rather than keeping a reference to the old one.

    Checkpoints: the optimizer always matches `trainable_variables`, which
    is what Keras rebuilds when it loads a file. A `.keras` file
    (`model.save`, `ModelCheckpoint`) saved at any step stores the
    layers' `trainable` flags too: `keras.models.load_model` needs no
    custom scope and restores weights, stage and optimizer state, and
    `fit(initial_epoch=...)` with the same callback goes on from there. A
    weights file (`save_weights`, `ModelCheckpoint(save_weights_only=True)`,
    `BackupAndRestore`) has no `trainable` flags: loaded into the model as
    the script freezes it, the weights come back, and `BackupAndRestore`
    resumes at the right epoch with the stages reapplied, but once a stage
    has unfrozen layers the optimizer holds more variables than the frozen
    model trains, so Keras skips its state (it warns "Skipping variable
    loading for optimizer") and the optimizer restarts from step 0 with
    zero slots. To keep it with `load_weights`, unfreeze the model as it
    was at the save and build the optimizer on its `trainable_variables`
    before loading.

    Reference: Howard and Ruder, "Universal Language Model Fine-tuning for
    Text Classification", ACL 2018.

    Args:
        schedule: A dict `{epoch: what}` (epochs count from 0, as in
            `fit`). `what` is a layer name or an index (unfreeze from the
            top down to that layer, as `unfreeze(up_to=...)`), a float
            (the top fraction of the layers with weights), or a dict of
            `unfreeze` arguments (`up_to`, `fraction`, `filters`). Stages
            add up: nothing is frozen again.
        learning_rate_multiplier: `None`, or a float in (0, 1]: the
            learning-rate factor per stage described above. A `fit` that
            resumes after a stage (`initial_epoch`, `BackupAndRestore`)
            replays the stages on the model frozen as the script froze
            it; one that starts on a model that stage already unfroze (a
            `.keras` file saved after it) is refused, since which layers
            the stage unfroze is not saved with the model.
        keep_batchnorm_frozen: Leave BatchNormalization layers frozen
            (inference mode), as `unfreeze` does.
        verbose: 1 prints each stage.

    Logs:
        `trainable_params`: trainable parameters at the end of each epoch.

    Raises:
        ValueError: if an epoch is negative or a value is invalid, or (at
            the start of `fit`, before any change) a layer name does not
            exist or the optimizer cannot be rebuilt (`Adafactor`: its slots
            are named after the variables' short names, so they cannot be
            matched) or, with a multiplier, its step is not proportional to
            the learning rate (`Ftrl`), or (at the first epoch of `fit`,
            before any step) a `fit` with a `learning_rate_multiplier`
            starts after a stage on a model that stage already unfroze.

    Example:

    >>> import keras, keras_slim, numpy as np
    >>> model = keras_slim.models.small_cnn((16, 16, 1), num_classes=3)
    >>> _ = keras_slim.transfer.freeze(model, up_to="bn4")
    >>> _ = model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
    ...     from_logits=True))
    >>> x, y = np.random.rand(32, 16, 16, 1), np.arange(32) % 3
    >>> callback = keras_slim.transfer.GradualUnfreezing({1: "conv4"})
    >>> history = model.fit(x, y, epochs=2, callbacks=[callback], verbose=0)
    >>> history.history["trainable_params"]
    [195, 18627]
    """

    def __init__(
        self,
        schedule,
        learning_rate_multiplier=None,
        keep_batchnorm_frozen=True,
        verbose=0,
    ):
        super().__init__()
        _validation.check_type("schedule", schedule, dict, "a dict")
        if not schedule:
            raise ValueError(
                "Expected `schedule` to have at least one epoch. "
                f"Received: schedule={schedule!r}"
            )
        stages = []
        for epoch in sorted(
            schedule, key=lambda e: (not isinstance(e, int), e)
        ):
            _validation.check_int("schedule epoch", epoch, minimum=0)
            kwargs = _stage_kwargs(epoch, schedule[epoch])
            _freezing.check_selection(**kwargs)
            stages.append((epoch, kwargs))
        if learning_rate_multiplier is not None:
            _validation.check_range(
                "learning_rate_multiplier",
                learning_rate_multiplier,
                0,
                1,
                low_inclusive=False,
            )
        _validation.check_type(
            "keep_batchnorm_frozen", keep_batchnorm_frozen, bool, "a bool"
        )
        _validation.check_int("verbose", verbose, minimum=0)
        self.schedule = dict(schedule)
        self.learning_rate_multiplier = learning_rate_multiplier
        self.keep_batchnorm_frozen = keep_batchnorm_frozen
        self.verbose = verbose
        self._stages = stages

    def _resolve(self, model):
        """Per stage, the leaves it unfreezes (names checked here)."""
        all_leaves = _freezing.leaves(model)
        resolved = []
        for epoch, kw in self._stages:
            predicate = _freezing.check_selection(**kw)
            chosen = _freezing.select(
                model,
                all_leaves,
                kw["up_to"],
                kw["fraction"],
                predicate,
                from_top=True,
            )
            if self.keep_batchnorm_frozen:
                chosen = [
                    lf
                    for lf in chosen
                    if not isinstance(lf.layer, keras.layers.BatchNormalization)
                ]
            resolved.append((epoch, chosen))
        return all_leaves, resolved

    def on_train_begin(self, logs=None):
        _check_optimizer(self.model.optimizer, self.learning_rate_multiplier)
        model = _layers.target_model(self.model)
        self._target = model
        self._leaves, self._resolved = self._resolve(model)
        self._applied = 0
        self._factors = {}  # id(variable) -> learning-rate factor
        self._started = False
        self._trainable_at_begin = {
            id(lf.layer) for lf in self._leaves if lf.effectively_trainable
        }

    def on_epoch_begin(self, epoch, logs=None):
        if not self._started:
            self._started = True
            self._check_resume(epoch)
        changed = False
        while (
            self._applied < len(self._resolved)
            and self._resolved[self._applied][0] <= epoch
        ):
            stage_epoch, chosen = self._resolved[self._applied]
            self._applied += 1
            before = {
                id(lf.layer) for lf in self._leaves if lf.effectively_trainable
            }
            _freezing.set_trainable(self._leaves, chosen, True)
            new = [lf for lf in chosen if id(lf.layer) not in before]
            if self.learning_rate_multiplier not in (None, 1.0):
                factor = self.learning_rate_multiplier**self._applied
                for lf in new:
                    for v in lf.layer.trainable_weights:
                        self._factors[id(v)] = factor
            changed = True
            if self.verbose:
                print(
                    f"GradualUnfreezing: epoch {epoch + 1}, stage "
                    f"{self._applied} unfroze {len(new)} layer(s) "
                    f"(down to {chosen[0].path if chosen else '-'})"
                )
        if changed:
            optimizer = self.model.optimizer
            if optimizer is not None and (optimizer.built or self._factors):
                # Built on exactly the trainable variables, in the model's
                # order: what `load_model` rebuilds from a checkpoint.
                with _layers.strategy_scope(self.model):
                    fresh = rebuild_optimizer(
                        optimizer,
                        list(self.model.trainable_variables),
                        self._factors,
                    )
                self.model.optimizer = fresh
                _replace_compiled_optimizer(self.model, optimizer, fresh)
            self.model.make_train_function(force=True)

    def _check_resume(self, epoch):
        """Refuse to resume past a stage that already acted on the model,
        with a learning-rate multiplier: the model (from a `.keras` file)
        does not record which of its trainable layers that stage unfroze,
        so their factor is unknown. A model frozen as the script froze it
        (`BackupAndRestore`, `load_weights`) replays the stages exactly."""
        if self.learning_rate_multiplier in (None, 1.0):
            return
        applied = [
            stage_epoch
            for stage_epoch, chosen in self._resolved
            if stage_epoch < epoch
            and chosen
            and all(id(lf.layer) in self._trainable_at_begin for lf in chosen)
        ]
        if applied:
            raise ValueError(
                "Expected a `fit` with `GradualUnfreezing("
                "learning_rate_multiplier=...)` that starts after a stage "
                "to start on the model frozen as before that stage (as "
                "`BackupAndRestore` or `load_weights` into the script's "
                "model give it): which layers the stage unfroze is not "
                "saved with the model, so their learning-rate factor is "
                "unknown. Freeze the model as the script did before "
                "loading the weights, or resume without "
                "`learning_rate_multiplier`. Received: a fit starting at "
                f"epoch {epoch} on a model whose layers the stage(s) at "
                f"epoch(s) {applied} had already unfrozen"
            )

    def on_train_end(self, logs=None):
        # The factors are this callback's: a later `fit` without it trains
        # every layer at the optimizer's own rate.
        if _unscale_learning_rates(self.model.optimizer):
            self.model.make_train_function(force=True)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["trainable_params"] = _freezing._num(
                self._target.trainable_weights
            )


def rebuild_optimizer(optimizer, variables, factors=None):
    """A new optimizer like `optimizer`, built on `variables`, holding
    `optimizer`'s state; `factors` (`{id(variable): float}`) scale the
    learning rate of those variables in its update step.

    Keras names each slot after its model variable's path and the slot
    kind (`"dense_kernel_momentum"`), the step `"iteration"`; the new
    optimizer's variables take the values of the old ones of the same
    name (in order, should two share a name), and those the old optimizer
    did not have (slots of newly trainable variables) keep their initial
    zeros. Raises `ValueError` if a name matches a variable of another
    shape, before the model's optimizer is touched.
    """
    fresh = optimizer.__class__.from_config(optimizer.get_config())
    fresh.build(variables)
    old = collections.defaultdict(collections.deque)
    for variable in optimizer.variables:
        old[variable.name].append(variable)
    for variable in fresh.variables:
        if old[variable.name]:
            source = old[variable.name].popleft()
            if tuple(source.shape) != tuple(variable.shape):
                raise ValueError(
                    "Expected the optimizer's variables to keep their "
                    "shapes when it is rebuilt on more variables. Received: "
                    f"{variable.name!r} of shape {tuple(source.shape)} "
                    f"before and {tuple(variable.shape)} after"
                )
            # A copy, not the old buffer: JAX donates the optimizer's
            # buffers to each jitted step, which would delete the old
            # optimizer's values under it (the model's compile config
            # still reads them when it is saved).
            variable.assign(keras.ops.copy(source.value))
    if factors and any(factors.get(id(v), 1.0) != 1.0 for v in variables):
        _scale_learning_rates(fresh, variables, factors)
    return fresh


def _scale_learning_rates(optimizer, variables, factors):
    """Make `optimizer` (a built Keras optimizer we created) pass each
    variable's factor times the learning rate to its `update_step`.

    `update_step(gradient, variable, learning_rate)` is the per-variable
    step every Keras optimizer implements; TensorFlow (under its
    distribution strategy's update) and JAX call it for each variable. The
    torch backend's optimizers update all variables in one fused call
    instead; there the per-variable loop of the optimizer's
    backend-independent class runs (slower, the same arithmetic).
    """
    # A LossScaleOptimizer (mixed precision) steps through its inner one.
    target = getattr(optimizer, "inner_optimizer", optimizer)
    by_index = [float(factors.get(id(v), 1.0)) for v in variables]
    step = type(target).update_step

    def update_step(gradient, variable, learning_rate):
        factor = by_index[target._get_variable_index(variable)]
        if factor != 1.0:
            learning_rate = learning_rate * factor
        return step(target, gradient, variable, learning_rate)

    target.update_step = update_step
    fused = _torch_fused_class(type(target))
    if fused is not None:
        # The next class after the torch one that defines the step (the
        # optimizer's own, e.g. Nadam's, or the base class's loop).
        mro = type(target).__mro__
        later = mro[mro.index(fused) + 1 :]
        owner = next(c for c in later if "_backend_update_step" in vars(c))
        loop = owner._backend_update_step
        target._backend_update_step = lambda g, v, lr: loop(target, g, v, lr)


def _check_optimizer(optimizer, multiplier):
    """Refuse, before any step, an optimizer the stages cannot handle."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    name = type(inner).__name__
    if name == "Adafactor":
        raise ValueError(
            "GradualUnfreezing cannot carry an `Adafactor` optimizer's "
            "state over when a stage unfreezes layers: Adafactor names its "
            "slots after the variables' short names (`kernel`, `bias`), so "
            "the rebuilt optimizer's slots cannot be matched to the old "
            "ones. Use another optimizer (e.g. `keras.optimizers.AdamW`) "
            "or unfreeze with `keras_slim.transfer.unfreeze` between fits. "
            f"Received: optimizer={name}"
        )
    if name == "Ftrl" and multiplier not in (None, 1.0):
        raise ValueError(
            "GradualUnfreezing's `learning_rate_multiplier` scales the "
            "learning rate of each stage's variables, which scales their "
            "step only for optimizers whose step is proportional to the "
            "learning rate; `Ftrl`'s is not. Use another optimizer or "
            "`learning_rate_multiplier=None`. Received: optimizer=Ftrl, "
            f"learning_rate_multiplier={multiplier}"
        )


def _unscale_learning_rates(optimizer):
    """Undo `_scale_learning_rates` (the class's own step again); whether
    there was anything to undo."""
    if optimizer is None:
        return False
    target = getattr(optimizer, "inner_optimizer", optimizer)
    found = False
    for name in ("update_step", "_backend_update_step"):
        found = target.__dict__.pop(name, None) is not None or found
    return found


def _torch_fused_class(cls):
    """The torch backend's fused-update base class in `cls`'s MRO, if any."""
    for c in cls.__mro__:
        if c.__name__ == "TorchParallelOptimizer":
            return c
    return None


def _replace_compiled_optimizer(model, old, new):
    """Make the model's compile config (what `model.save` writes and
    `load_model` compiles with) name the optimizer that now trains it."""
    config = getattr(model, "_compile_config", None)
    config = getattr(config, "config", None)
    if isinstance(config, dict) and config.get("optimizer") is old:
        config["optimizer"] = new
