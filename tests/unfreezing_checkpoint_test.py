"""GradualUnfreezing in a training script that checkpoints and resumes.

A `.keras` file saved at any epoch of a `fit` under `GradualUnfreezing`
loads in a fresh process with only `import keras_slim`, its optimizer state
included, and `fit(initial_epoch=...)` ends on the same weights as a `fit`
that was never interrupted. A weights file (`BackupAndRestore`) brings back
the weights, the epoch and the stages, but not the optimizer's state once a
stage has unfrozen layers (Keras matches optimizer variables by position
and count, and the frozen model trains fewer): that reset is documented in
the callback and pinned here.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from conftest import compile_classifier

from keras_slim.transfer import GradualUnfreezing
from keras_slim.transfer import freeze
from keras_slim.transfer import unfreeze

SCHEDULE = {1: "hidden2", 2: "hidden"}
BATCH = 64
EPOCHS = 3


def _model():
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu", name="hidden"),
            keras.layers.Dense(16, activation="relu", name="hidden2"),
            keras.layers.Dense(10, name="head"),
        ],
        name="model",
    )
    freeze(model, up_to="hidden2")
    return compile_classifier(model)


def _optimizer_state(model):
    """The optimizer's variables in order (Keras saves and loads them by
    position)."""
    return [
        (v.name, keras.ops.convert_to_numpy(v))
        for v in model.optimizer.variables
    ]


class _EpochState(keras.callbacks.Callback):
    """The optimizer's variables at the end of each epoch (what the
    checkpoint of that epoch holds)."""

    def __init__(self):
        super().__init__()
        self.optimizer = []

    def on_epoch_end(self, epoch, logs=None):
        self.optimizer.append(_optimizer_state(self.model))


_RESUME = textwrap.dedent(
    """
    import json, sys, warnings
    import numpy as np
    import keras
    import keras_slim
    from keras_slim.transfer import GradualUnfreezing

    folder, schedule = sys.argv[1], json.loads(sys.argv[2])
    batch, epochs = int(sys.argv[3]), int(sys.argv[4])
    schedule = {int(k): v for k, v in schedule.items()}
    data = np.load(f"{folder}/data.npz")
    out = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*variable loading")
        for epoch in (1, 2):
            model = keras.models.load_model(f"{folder}/m-{epoch}.keras")
            np.savez(
                f"{folder}/loaded-{epoch}.npz",
                *[keras.ops.convert_to_numpy(v)
                  for v in model.optimizer.variables],
            )
            out[f"trainable_{epoch}"] = [
                "/".join(v.path.split("/")[-2:])
                for v in model.trainable_variables
            ]
    history = model.fit(
        data["x"], data["y"], batch_size=batch, epochs=epochs, initial_epoch=2,
        shuffle=False, verbose=0, callbacks=[GradualUnfreezing(schedule)],
    )
    out["trainable_params"] = history.history["trainable_params"]
    out["iterations"] = int(model.optimizer.iterations)
    np.savez(f"{folder}/resumed.npz", *model.get_weights())
    with open(f"{folder}/resumed.json", "w") as f:
        json.dump(out, f)
    """
)


def _run_fresh_process(script, *args):
    # The fresh process runs on this process's backend: the resumed fit
    # must end on the weights of the uninterrupted one, to the last bits.
    env = dict(
        os.environ,
        KERAS_BACKEND=keras.backend.backend(),
        CUDA_VISIBLE_DEVICES="",
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_keras_checkpoint_loads_in_fresh_process_and_fit_resumes(
    digits_small, tmp_path
):
    (x, y), _ = digits_small
    steps = -(-len(x) // BATCH)
    np.savez(tmp_path / "data.npz", x=x, y=y)

    # The interrupted run: two epochs (stage 1 applied, stage 2 pending),
    # a `.keras` file per epoch.
    keras.utils.set_random_seed(0)
    model = _model()
    initial = model.get_weights()
    state = _EpochState()
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[
            GradualUnfreezing(SCHEDULE),
            keras.callbacks.ModelCheckpoint(tmp_path / "m-{epoch}.keras"),
            state,
        ],
    )
    # The uninterrupted run from the same initial weights.
    keras.utils.set_random_seed(0)
    reference = _model()
    reference.set_weights(initial)
    history = reference.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=[GradualUnfreezing(SCHEDULE)],
    )

    _run_fresh_process(
        _RESUME, str(tmp_path), json.dumps(SCHEDULE), str(BATCH), str(EPOCHS)
    )
    with open(tmp_path / "resumed.json") as f:
        resumed = json.load(f)

    # Each file brings back its epoch's trainable layers and the optimizer
    # state of that epoch, bit for bit (step, moments of each variable).
    assert resumed["trainable_1"] == ["head/kernel", "head/bias"]
    assert resumed["trainable_2"] == [
        "hidden2/kernel",
        "hidden2/bias",
        "head/kernel",
        "head/bias",
    ]
    for epoch, saved in enumerate(state.optimizer, start=1):
        # iteration, learning rate, two Adam slots per trainable variable
        assert len(saved) == 2 + 2 * len(resumed[f"trainable_{epoch}"])
        loaded = np.load(tmp_path / f"loaded-{epoch}.npz")
        assert len(loaded.files) == len(saved)
        for i, (name, value) in enumerate(saved):
            np.testing.assert_array_equal(
                loaded[f"arr_{i}"], value, err_msg=name
            )
        assert saved[0][0] == "iteration"
        assert saved[0][1] == epoch * steps
    # The resumed fit goes on with stage 2 and the optimizer's step, and
    # ends where the uninterrupted one ends.
    assert (
        resumed["trainable_params"] == history.history["trainable_params"][2:]
    )
    assert resumed["iterations"] == EPOCHS * steps
    weights = np.load(tmp_path / "resumed.npz")
    ends = reference.get_weights()
    assert len(weights.files) == len(ends)
    for i, end in enumerate(ends):
        np.testing.assert_allclose(weights[f"arr_{i}"], end, atol=1e-6)


class _EpochWeights(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())


class _FirstBatch(keras.callbacks.Callback):
    """The epoch, weights and optimizer step at the first batch."""

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if not hasattr(self, "weights"):
            self.epoch = self.current
            self.weights = self.model.get_weights()
            self.iterations = int(self.model.optimizer.iterations)


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise RuntimeError("interrupted")


def test_backup_and_restore_resumes_epoch_and_stages_but_resets_optimizer(
    digits_small, tmp_path
):
    """Documented: a weights file has no `trainable` flags, so once a stage
    has unfrozen layers the frozen model's optimizer cannot take the saved
    state (Keras warns and skips it); weights, epoch and stages resume."""
    (x, y), _ = digits_small
    steps = -(-len(x) // BATCH)
    backup = tmp_path / "backup"
    model = _model()
    ends = _EpochWeights()
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(
            x,
            y,
            batch_size=BATCH,
            epochs=EPOCHS,
            verbose=0,
            callbacks=[
                keras.callbacks.BackupAndRestore(backup),
                GradualUnfreezing(SCHEDULE),
                ends,
                _Interrupt(epoch=2, batch=3),
            ],
        )
    assert len(ends.weights) == 2  # the backup holds epoch 1's end

    fresh = _model()  # the script again: frozen up to hidden2
    first = _FirstBatch()
    with pytest.warns(UserWarning, match="Skipping variable loading"):
        history = fresh.fit(
            x,
            y,
            batch_size=BATCH,
            epochs=EPOCHS,
            verbose=0,
            callbacks=[
                keras.callbacks.BackupAndRestore(backup),
                GradualUnfreezing(SCHEDULE),
                first,
            ],
        )
    # Resumed at epoch 2 with stage 2 applied, from epoch 1's weights.
    assert first.epoch == 2
    assert history.history["trainable_params"] == [170 + 528 + 2080]
    for a, b in zip(first.weights, ends.weights[1]):
        np.testing.assert_array_equal(a, b)
    # The optimizer restarted: step 0 at the first batch, one epoch after.
    assert first.iterations == 0
    assert int(fresh.optimizer.iterations) == steps


def test_multiplier_resume_on_a_model_a_stage_already_unfroze_is_refused(
    digits_small,
):
    """As a `.keras` file saved after stage 1 loads: hidden2 trainable.
    Whether hidden2 was trainable from the start or unfrozen by stage 1
    (factor 0.5) is not in the model: refused before any step."""
    (x, y), _ = digits_small
    model = _model()
    unfreeze(model, up_to="hidden2")
    before = model.get_weights()
    callback = GradualUnfreezing(SCHEDULE, learning_rate_multiplier=0.5)
    with pytest.raises(ValueError, match=r"stage\(s\) at epoch\(s\) \[1\]"):
        model.fit(
            x[:128],
            y[:128],
            batch_size=BATCH,
            epochs=3,
            initial_epoch=2,
            verbose=0,
            callbacks=[callback],
        )
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    # Without the multiplier the same resume trains.
    history = model.fit(
        x[:128],
        y[:128],
        batch_size=BATCH,
        epochs=3,
        initial_epoch=2,
        verbose=0,
        callbacks=[GradualUnfreezing(SCHEDULE)],
    )
    assert history.history["trainable_params"] == [170 + 528 + 2080]


def test_multiplier_resume_on_the_scripts_frozen_model_replays_the_factors(
    digits_small,
):
    """`BackupAndRestore` resumes on the model frozen as the script froze
    it: starting at epoch 2 applies stage 1 (factor 0.5 for hidden2) and
    stage 2 (0.25 for hidden), as the uninterrupted fit did."""
    (x, y), _ = digits_small
    deltas = {}
    for multiplier in (None, 0.5):
        keras.utils.set_random_seed(0)
        model = _model()
        model.compile(
            keras.optimizers.SGD(0.1),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        before = {n: _kernel(model, n) for n in ("hidden", "hidden2", "head")}
        model.fit(
            x[:BATCH],
            y[:BATCH],
            batch_size=BATCH,
            epochs=3,
            initial_epoch=2,  # one step
            verbose=0,
            callbacks=[
                GradualUnfreezing(SCHEDULE, learning_rate_multiplier=multiplier)
            ],
        )
        deltas[multiplier] = {n: _kernel(model, n) - before[n] for n in before}
    plain, scaled = deltas[None], deltas[0.5]
    for name, factor in (("head", 1.0), ("hidden2", 0.5), ("hidden", 0.25)):
        assert np.abs(plain[name]).max() > 0, name
        np.testing.assert_allclose(
            scaled[name], factor * plain[name], rtol=1e-4, atol=1e-7
        )


def _kernel(model, name):
    return keras.ops.convert_to_numpy(model.get_layer(name).kernel).copy()
