"""The drop-in promise: keras_slim's callbacks beside Keras's own callbacks
and training modes, on small models and few steps.

Each case trains a small Dense model on the 8x8 digits with one keras_slim
piece (`MagnitudePruning`, `ChannelPruning`, `QuantizationAwareTraining`,
`GradualUnfreezing`, or the `Distiller` model) plus one Keras callback or
one training mode, then checks the invariants: pruned weights are exact
zeros at the scheduled sparsity, whole channels are zero, QAT ranges were
learned (and are the same on every replica), unfreezing stages happened at
their epochs with the optimizer's step and learning rate carried over, the
teacher stayed frozen, restored best weights keep their zeros, checkpoint
files load back, and the callbacks' numbers reach CSVLogger and
TensorBoard.

The matrix: every piece x every Keras callback (with a CSVLogger beside
it), and every piece x every training mode (MirroredStrategy runs on the
two virtual CPUs that conftest configures before TensorFlow starts).
"""

import csv
import glob
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import BACKEND
from conftest import compile_classifier

from keras_slim import litert
from keras_slim.distillation import Distiller
from keras_slim.export import export_tflite
from keras_slim.export import inspect_tflite
from keras_slim.pruning import ChannelPruning
from keras_slim.pruning import MagnitudePruning
from keras_slim.pruning import shrink
from keras_slim.pruning import sparsity_report
from keras_slim.quantization import QuantizationAwareTraining
from keras_slim.quantization import is_quantization_aware
from keras_slim.quantization import quantize_model
from keras_slim.schedules import ConstantSparsity
from keras_slim.schedules import PolynomialDecay
from keras_slim.transfer import GradualUnfreezing
from keras_slim.transfer import freeze

SPARSITY = 0.75
CHANNEL_FRACTION = 0.5
EPOCHS = 3
BATCH = 64
LEARNING_RATE = 1e-3
# GradualUnfreezing: head only (10 * 16 + 10), then hidden2 (32 * 16 + 16),
# then hidden (64 * 32 + 32).
UNFREEZE_SCHEDULE = {1: "hidden2", 2: "hidden"}
TRAINABLE_PARAMS = [170, 170 + 528, 170 + 528 + 2080]

KINDS = ["pruning", "channel_pruning", "qat", "unfreezing", "distiller"]
LOGGED = {
    "pruning": "sparsity",
    "channel_pruning": "channel_sparsity",
    "qat": "quantization_active",
    "unfreezing": "trainable_params",
    "distiller": "distillation_loss",
}


def _model(name="model"):
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu", name="hidden"),
            keras.layers.Dense(16, activation="relu", name="hidden2"),
            keras.layers.Dense(10, name="head"),
        ],
        name=name,
    )


def _student():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu", name="hidden"),
            keras.layers.Dense(10, name="head"),
        ],
        name="student",
    )


def _callbacks(kind):
    """The keras_slim callbacks of a piece (the Distiller is a model)."""
    if kind == "pruning":
        return [MagnitudePruning(ConstantSparsity(SPARSITY, begin_step=0))]
    if kind == "channel_pruning":
        return [ChannelPruning(CHANNEL_FRACTION, min_channels=4)]
    if kind == "qat":
        return [QuantizationAwareTraining()]
    if kind == "unfreezing":
        # The multiplier scales learning rates inside the optimizer's step:
        # every training mode runs it (mirrored: the replicas stay equal).
        return [
            GradualUnfreezing(UNFREEZE_SCHEDULE, learning_rate_multiplier=0.5)
        ]
    return []


class _Case:
    """One keras_slim piece: the model `fit` runs on, our callbacks, and
    what must hold afterwards."""

    def __init__(self, kind, **compile_kwargs):
        self.kind = kind
        if kind == "distiller":
            self.teacher = _model("teacher")
            self.teacher_weights = self.teacher.get_weights()
            self.student = _student()
            self.student_weights = self.student.get_weights()
            self.model = Distiller(self.teacher, self.student)
        else:
            self.model = _model()
            if kind == "unfreezing":
                freeze(self.model, up_to="hidden2")
        compile_classifier(self.model, LEARNING_RATE, **compile_kwargs)

    def callbacks(self):
        return _callbacks(self.kind)

    def check(self, history, epochs=EPOCHS):
        """The piece's invariants after `epochs` epochs of `fit`."""
        logs = history.history
        assert len(logs["loss"]) == epochs
        assert np.isfinite(logs["loss"]).all()
        model = self.model
        if self.kind == "pruning":
            assert_pruned(model)
            assert logs["sparsity"][-1] == pytest.approx(SPARSITY, abs=0.01)
        elif self.kind == "channel_pruning":
            assert_channels_zeroed(model)
            assert logs["channel_sparsity"][-1] == CHANNEL_FRACTION
        elif self.kind == "qat":
            assert is_quantization_aware(model)
            assert logs["quantization_active"][-1] == 1.0
            assert_ranges_learned(model)
        elif self.kind == "unfreezing":
            assert logs["trainable_params"] == TRAINABLE_PARAMS[:epochs]
            # The optimizer may be replaced when a stage starts; its step
            # goes on from where it was.
            steps = int(model.optimizer.iterations.numpy())
            assert steps == epochs * self.steps_per_epoch
        else:
            for before, after in zip(
                self.teacher_weights, self.teacher.get_weights()
            ):
                np.testing.assert_array_equal(before, after)
            changed = [
                not np.array_equal(b, a)
                for b, a in zip(
                    self.student_weights, self.student.get_weights()
                )
            ]
            assert all(changed)
            assert np.isfinite(logs["hard_loss"]).all()
            assert np.isfinite(logs["distillation_loss"]).all()

    steps_per_epoch = None


def assert_pruned(model, sparsity=SPARSITY):
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            kernel = keras.ops.convert_to_numpy(layer.kernel)
            assert np.mean(kernel == 0) == pytest.approx(sparsity, abs=0.01), (
                layer.name
            )


def assert_channels_zeroed(model):
    """Half the 32 + 16 hidden units are zero, kernel column and bias."""
    zeroed = 0
    for name in ("hidden", "hidden2"):
        layer = model.get_layer(name)
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        bias = keras.ops.convert_to_numpy(layer.bias)
        dead = np.all(kernel == 0, axis=0)
        assert np.all(bias[dead] == 0), name
        zeroed += int(dead.sum())
    assert zeroed == int(CHANNEL_FRACTION * (32 + 16))


def _qat_variables(model):
    return {
        v.path.split("/")[-1]: keras.ops.convert_to_numpy(v)
        for v in model.non_trainable_variables
        if "qat_" in v.path
    }


def assert_ranges_learned(model):
    values = _qat_variables(model)
    initialized = [k for k in values if k.endswith("_initialized")]
    assert initialized, sorted(values)
    for key in initialized:
        assert values[key] > 0, key
        stem = key[: -len("_initialized")]
        assert values[f"{stem}_min"] < values[f"{stem}_max"], stem


def _keras_callback(name, tmp_path):
    if name == "checkpoint_keras":
        return keras.callbacks.ModelCheckpoint(tmp_path / "m.keras")
    if name == "checkpoint_weights":
        return keras.callbacks.ModelCheckpoint(
            tmp_path / "m.weights.h5", save_weights_only=True
        )
    if name == "backup_and_restore":
        return keras.callbacks.BackupAndRestore(tmp_path / "backup")
    if name == "early_stopping_restore_best":
        # mode="max" on the falling loss: the best epoch is the first, so
        # training stops after two epochs and epoch 0's weights come back.
        return keras.callbacks.EarlyStopping(
            monitor="loss", mode="max", patience=1, restore_best_weights=True
        )
    if name == "reduce_lr_on_plateau":
        # mode="max" on the falling loss: every epoch after the first is a
        # plateau, so the learning rate halves twice.
        return keras.callbacks.ReduceLROnPlateau(
            monitor="loss", mode="max", patience=1, factor=0.5
        )
    if name == "learning_rate_scheduler":
        return keras.callbacks.LearningRateScheduler(
            lambda epoch, lr: LEARNING_RATE * 0.5**epoch
        )
    if name == "terminate_on_nan":
        return keras.callbacks.TerminateOnNaN()
    if name == "tensorboard":
        return keras.callbacks.TensorBoard(tmp_path / "logs")
    raise AssertionError(name)


KERAS_CALLBACKS = [
    "checkpoint_keras",
    "checkpoint_weights",
    "backup_and_restore",
    "early_stopping_restore_best",
    "reduce_lr_on_plateau",
    "learning_rate_scheduler",
    "terminate_on_nan",
    "tensorboard",
]


class _Snapshots(keras.callbacks.Callback):
    """The model's weights at the end of each epoch (after ours acted)."""

    def on_train_begin(self, logs=None):
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())


def _predict(model, x):
    return keras.ops.convert_to_numpy(model.predict(x, verbose=0))


def _load_weights_into_fresh(case, path, x):
    fresh = _Case(case.kind)
    if case.kind == "qat":
        # `load_weights` restores ranges into a model this callback has
        # made quantization-aware (the documented route).
        fresh.model.fit(
            x[:8],
            np.zeros(8, "int32"),
            epochs=1,
            verbose=0,
            callbacks=fresh.callbacks(),
        )
    fresh.model.load_weights(path)
    return fresh.model


def _tensorboard_tags(logdir):
    tags = set()
    for path in glob.glob(str(logdir / "train" / "events.out.tfevents*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    return tags


# (kind, Keras callback) -> reason, for a strict xfail while a bug is open.
KNOWN_BUGS = {}


def _params(kinds, names):
    out = []
    for kind in kinds:
        for name in names:
            marks = []
            if (kind, name) in KNOWN_BUGS:
                marks.append(
                    pytest.mark.xfail(
                        strict=True, reason=KNOWN_BUGS[kind, name]
                    )
                )
            out.append(pytest.param(kind, name, marks=marks))
    return out


def _in_order(name, theirs, ours, csv_logger):
    """Keras's callback first, as in a script that gains one of ours;
    loggers after ours: a callback sees only the logs written by the
    callbacks listed before it (TensorBoard or CSVLogger listed first
    would miss `sparsity` and friends)."""
    if name == "tensorboard":
        return [*ours, theirs, csv_logger]
    return [theirs, *ours, csv_logger]


@pytest.mark.parametrize("kind,name", _params(KINDS, KERAS_CALLBACKS))
def test_composes_with_keras_callback(kind, name, digits_small, tmp_path):
    (x, y), _ = digits_small
    case = _Case(kind)
    case.steps_per_epoch = -(-len(x) // BATCH)
    csv_path = tmp_path / "log.csv"
    snapshots = _Snapshots()
    history = case.model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=EPOCHS,
        verbose=0,
        callbacks=_in_order(
            name,
            _keras_callback(name, tmp_path),
            [*case.callbacks(), snapshots],
            keras.callbacks.CSVLogger(str(csv_path)),
        ),
    )
    model = case.model
    epochs = 2 if name == "early_stopping_restore_best" else EPOCHS
    case.check(history, epochs)
    with open(csv_path) as f:
        header = next(csv.reader(f))
    assert LOGGED[kind] in header

    if name == "checkpoint_keras":
        loaded = keras.models.load_model(tmp_path / "m.keras")
        np.testing.assert_allclose(
            _predict(loaded, x[:64]), _predict(model, x[:64]), atol=1e-6
        )
        if kind == "pruning":
            assert_pruned(loaded)
        if kind == "qat":
            assert is_quantization_aware(loaded)
        if kind == "unfreezing":
            # The optimizer's state came back (Keras skips it, with a
            # warning, when its variables do not match the trainable ones).
            # Keras loads them by position.
            assert len(loaded.optimizer.variables) == len(
                model.optimizer.variables
            )
            for a, b in zip(
                loaded.optimizer.variables, model.optimizer.variables
            ):
                np.testing.assert_array_equal(a, b, b.path)
            assert int(loaded.optimizer.iterations) == EPOCHS * (
                case.steps_per_epoch
            )
    elif name == "checkpoint_weights":
        loaded = _load_weights_into_fresh(case, tmp_path / "m.weights.h5", x)
        for a, b in zip(loaded.get_weights(), model.get_weights()):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(
            _predict(loaded, x[:64]), _predict(model, x[:64]), atol=1e-6
        )
    elif name == "early_stopping_restore_best":
        # The first epoch's weights are back, zeros and ranges included.
        for a, b in zip(model.get_weights(), snapshots.weights[0]):
            np.testing.assert_array_equal(a, b)
    elif name == "reduce_lr_on_plateau":
        lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        assert lr == pytest.approx(LEARNING_RATE / 4)
    elif name == "learning_rate_scheduler":
        lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        assert lr == pytest.approx(LEARNING_RATE / 4)
        assert history.history["learning_rate"] == pytest.approx(
            [LEARNING_RATE, LEARNING_RATE / 2, LEARNING_RATE / 4]
        )
    elif name == "tensorboard":
        assert f"epoch_{LOGGED[kind]}" in _tensorboard_tags(tmp_path / "logs")


def test_qat_on_quantize_model_checkpoints_a_loadable_keras_file(
    digits_small, tmp_path
):
    """The documented route to a `.keras` file: QAT on `quantize_model`."""
    (x, y), _ = digits_small
    model = compile_classifier(quantize_model(_model()))
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=2,
        verbose=0,
        callbacks=[
            QuantizationAwareTraining(),
            keras.callbacks.ModelCheckpoint(tmp_path / "m.keras"),
        ],
    )
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert is_quantization_aware(loaded)
    np.testing.assert_allclose(
        _predict(loaded, x[:64]), _predict(model, x[:64]), atol=1e-6
    )


def _fit_kwargs(mode, x, y):
    if mode == "validation_split":
        return dict(x=x, y=y, validation_split=0.2, batch_size=BATCH)
    if mode == "sample_weight":
        return dict(
            x=x,
            y=y,
            sample_weight=np.linspace(0.5, 1.5, len(x)),
            batch_size=BATCH,
        )
    if mode == "class_weight":
        return dict(
            x=x,
            y=y,
            class_weight={i: 1.0 + i / 10 for i in range(10)},
            batch_size=BATCH,
        )
    if mode == "unknown_cardinality":
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
        data = data.filter(lambda a, b: True)  # cardinality unknown
        assert data.cardinality() == tf.data.UNKNOWN_CARDINALITY
        return dict(x=data)
    return dict(x=x, y=y, batch_size=BATCH)


MODES = [
    "steps_per_execution",
    "jit_compile",
    "mixed_float16",
    "mirrored",
    "validation_split",
    "sample_weight",
    "class_weight",
    "unknown_cardinality",
]


def _replica_values(variable):
    """Each replica's value of a variable (one value if not mirrored)."""
    values = getattr(variable.value, "values", None)
    if values is None:
        return [keras.ops.convert_to_numpy(variable)]
    return [v.numpy() for v in values]


def assert_synced_across_replicas(model, expect_mirrored=True):
    mirrored = 0
    for variable in model.variables:
        values = _replica_values(variable)
        mirrored += len(values) > 1
        for other in values[1:]:
            np.testing.assert_array_equal(values[0], other, variable.path)
    if expect_mirrored:
        assert mirrored, "no variable is mirrored"


def _mode_params():
    out = []
    for mode in MODES:
        for kind in KINDS:
            heavy = mode == "jit_compile" and kind in (
                "unfreezing",
                "distiller",
            )
            marks = [pytest.mark.slow] if heavy else []
            if mode == "mirrored":
                marks.append(
                    pytest.mark.backends("tensorflow", reason="tf.distribute")
                )
            if mode == "jit_compile" and kind == "qat":
                marks.append(
                    pytest.mark.backends(
                        "tensorflow",
                        "jax",
                        reason="QAT refuses jit_compile=True on torch "
                        "(test_qat_refuses_torch_compile)",
                    )
                )
            if mode == "steps_per_execution":
                marks.append(
                    pytest.mark.backends(
                        "tensorflow",
                        "jax",
                        reason="Keras refuses steps_per_execution on torch",
                    )
                )
            out.append(pytest.param(mode, kind, marks=marks))
    return out


@pytest.mark.parametrize("mode,kind", _mode_params())
def test_composes_with_training_mode(kind, mode, digits_small, request):
    (x, y), _ = digits_small
    compile_kwargs = {}
    if mode == "steps_per_execution":
        compile_kwargs["steps_per_execution"] = 4
    if mode == "jit_compile":
        compile_kwargs["jit_compile"] = True
    if mode == "mixed_float16":
        keras.mixed_precision.set_global_policy("mixed_float16")
    strategy = None
    if mode == "mirrored":
        strategy = request.getfixturevalue("mirrored_strategy")
    try:
        if strategy is None:
            case = _Case(kind, **compile_kwargs)
        else:
            with strategy.scope():
                case = _Case(kind)
        fit = _fit_kwargs(mode, x, y)
        n = int(len(x) * 0.8) if mode == "validation_split" else len(x)
        case.steps_per_epoch = -(-n // BATCH)
        if mode == "unknown_cardinality" and BACKEND == "tensorflow":
            # Keras on TensorFlow counts one more optimizer step per epoch
            # on an input of unknown cardinality (plain `fit` too: 23 for
            # 22 batches); on JAX and torch it counts the 22 batches.
            case.steps_per_epoch += 1
        history = case.model.fit(
            epochs=EPOCHS, verbose=0, callbacks=case.callbacks(), **fit
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")
    case.check(history)
    if mode == "mirrored":
        assert case.model.distribute_strategy is strategy
        assert_synced_across_replicas(case.model)
    if mode == "validation_split":
        assert np.isfinite(history.history["val_loss"]).all()


def test_qat_ranges_are_mirrored_under_mirrored_strategy(
    digits_small, mirrored_strategy
):
    (x, y), _ = digits_small
    with mirrored_strategy.scope():
        model = compile_classifier(_model())
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=1,
        verbose=0,
        callbacks=[QuantizationAwareTraining()],
    )
    assert_ranges_learned(model)
    ranges = [v for v in model.non_trainable_variables if "qat_" in v.path]
    kinds = {v.path: type(v.value).__name__ for v in ranges}
    assert all(len(_replica_values(v)) == 2 for v in ranges), kinds
    assert_synced_across_replicas(model)


@pytest.mark.parametrize("kind", ["pruning", "channel_pruning", "qat"])
def test_distiller_fit_drives_compression_callbacks_on_the_student(
    kind, digits_small
):
    (x, y), _ = digits_small
    teacher = _model("teacher")
    student = _model("student")
    distiller = compile_classifier(Distiller(teacher, student))
    callback = _callbacks(kind)
    history = distiller.fit(
        x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=callback
    )
    assert np.isfinite(history.history["distillation_loss"]).all()
    if kind == "pruning":
        assert_pruned(student)
    elif kind == "channel_pruning":
        assert_channels_zeroed(student)
        small = shrink(student)
        np.testing.assert_allclose(
            _predict(small, x[:64]), _predict(student, x[:64]), atol=1e-4
        )
    else:
        assert is_quantization_aware(student)
        assert_ranges_learned(student)
    # The teacher is untouched by the student's callbacks.
    assert_no_zeros = [
        np.mean(keras.ops.convert_to_numpy(layer.kernel) == 0)
        for layer in teacher.layers
        if isinstance(layer, keras.layers.Dense)
    ]
    assert max(assert_no_zeros) < 0.05


@pytest.mark.backends(
    "tensorflow", "jax", reason="Keras refuses steps_per_execution on torch"
)
@pytest.mark.parametrize("kind", ["pruning", "channel_pruning", "qat"])
def test_schedules_count_optimizer_steps_with_steps_per_execution(
    kind, digits_small
):
    """With `steps_per_execution=4` each epoch (22 steps) ends on the
    schedule's value at the optimizer's step, not at the callback-call
    count (6 calls an epoch)."""
    (x, y), _ = digits_small
    steps = -(-len(x) // BATCH)
    model = compile_classifier(_model(), steps_per_execution=4)
    end = 2 * steps
    if kind == "pruning":
        schedule = PolynomialDecay(
            0.0, SPARSITY, begin_step=0, end_step=end, frequency=4
        )
        callback = MagnitudePruning(schedule)
    elif kind == "channel_pruning":
        schedule = PolynomialDecay(
            0.0, CHANNEL_FRACTION, begin_step=0, end_step=end
        )
        callback = ChannelPruning(schedule, min_channels=4)
    else:
        # Float for the first epoch and a half, quantized after.
        callback = QuantizationAwareTraining(quantize_delay=steps + steps // 2)
    history = model.fit(
        x, y, batch_size=BATCH, epochs=3, verbose=0, callbacks=[callback]
    )
    assert int(model.optimizer.iterations.numpy()) == 3 * steps
    if kind == "pruning":
        first, second, third = history.history["sparsity"]
        # Step 20 (the last execution's start in epoch 0): 0.75 * (1 -
        # (1 - 20/44)**3) = 0.63; not 0.75 * (1 - (1 - 5/44)**3) = 0.23,
        # the value at the count of callback calls.
        assert first == pytest.approx(schedule(20), abs=0.01)
        assert 0.5 < first < second
        assert second == third == pytest.approx(SPARSITY, abs=0.01)
        assert_pruned(model)
    elif kind == "channel_pruning":
        assert history.history["channel_sparsity"][-1] == CHANNEL_FRACTION
        assert_channels_zeroed(model)
    else:
        assert history.history["quantization_active"] == [0.0, 1.0, 1.0]
        assert_ranges_learned(model)


class _Interrupt(keras.callbacks.Callback):
    """Stops `fit` at one batch of one epoch, as a preempted job."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise RuntimeError("interrupted")


def _variables(case):
    """Every variable of the trained model (the student for the
    Distiller), QAT ranges and phase included, and the optimizer's."""
    model = case.student if case.kind == "distiller" else case.model
    return [keras.ops.convert_to_numpy(v) for v in model.variables] + [
        keras.ops.convert_to_numpy(v) for v in case.model.optimizer.variables
    ]


@pytest.mark.parametrize(
    "kind", ["pruning", "channel_pruning", "qat", "distiller"]
)
def test_interrupted_fit_resumed_by_backup_ends_like_an_uninterrupted_one(
    kind, digits_small, tmp_path
):
    """`BackupAndRestore` (a backup per epoch), interrupted in the middle
    of epoch 1, run again on a new model object: the same weights, zeros,
    ranges and optimizer state as a `fit` never interrupted. (Keras 3's
    `BackupAndRestore(save_freq=<steps>)` restarts the saved epoch from its
    first batch with mid-epoch weights, so only a per-epoch backup can end
    the same. GradualUnfreezing: tests/unfreezing_checkpoint_test.py.)"""
    (x, y), _ = digits_small
    x, y = x[:640], y[:640]  # 10 steps an epoch

    def run(*extra, backup=True):
        keras.utils.set_random_seed(0)
        case = _Case(kind)
        callbacks = list(extra)
        if backup:
            callbacks.insert(
                0, keras.callbacks.BackupAndRestore(tmp_path / "backup")
            )
        history = case.model.fit(
            x,
            y,
            batch_size=BATCH,
            epochs=EPOCHS,
            shuffle=False,
            verbose=0,
            callbacks=[*callbacks, *case.callbacks()],
        )
        return case, history

    reference, _ = run(backup=False)
    with pytest.raises(RuntimeError, match="interrupted"):
        run(_Interrupt(epoch=1, batch=4))
    resumed, history = run()
    assert len(history.history["loss"]) == EPOCHS - 1  # from epoch 1
    assert int(resumed.model.optimizer.iterations.numpy()) == EPOCHS * 10
    ends, expected = _variables(resumed), _variables(reference)
    assert len(ends) == len(expected)
    for a, b in zip(ends, expected):
        np.testing.assert_array_equal(a, b)
    if kind == "pruning":
        assert_pruned(resumed.model)
    elif kind == "channel_pruning":
        assert_channels_zeroed(resumed.model)
    elif kind == "qat":
        assert_ranges_learned(resumed.model)


_EXPORT_RELOADED = """
import sys
import numpy as np
import keras
import keras_slim
folder = sys.argv[1]
data = np.load(folder + "/calibration.npy")
for kind in sys.argv[2:]:
    model = keras.models.load_model(f"{folder}/{kind}.keras")
    keras_slim.export_tflite(
        model,
        f"{folder}/{kind}.reloaded.tflite",
        representative_data=None if kind == "qat" else data,
    )
"""


@pytest.mark.slow
def test_int8_file_of_a_checkpoint_reloaded_in_a_new_process_is_the_same(
    digits_small, tmp_path
):
    # Issue 18: the int8 file exported from a `.keras` checkpoint loaded in
    # a fresh process (only `import keras_slim`) equals the file exported
    # from the model in training: the same ops, the same outputs.
    (x, y), (x_test, _) = digits_small
    kinds = ["pruning", "channel_pruning", "qat"]
    np.save(tmp_path / "calibration.npy", x[:100])
    for kind in kinds:
        case = _Case(kind)
        case.model.fit(
            x,
            y,
            batch_size=BATCH,
            epochs=2,
            verbose=0,
            callbacks=[
                *case.callbacks(),
                keras.callbacks.ModelCheckpoint(tmp_path / f"{kind}.keras"),
            ],
        )
        report = export_tflite(
            case.model,
            tmp_path / f"{kind}.tflite",
            representative_data=None if kind == "qat" else x[:100],
        )
        assert report.info.int8_only
    done = subprocess.run(
        [sys.executable, "-c", _EXPORT_RELOADED, str(tmp_path), *kinds],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for kind in kinds:
        before, after = (
            tmp_path / f"{kind}.tflite",
            tmp_path / f"{kind}.reloaded.tflite",
        )
        # Same ops and the same outputs, bit for bit (the bytes may differ
        # in names and metadata the converter writes).
        assert inspect_tflite(before).ops == inspect_tflite(after).ops
        np.testing.assert_array_equal(
            litert.predict(before, x_test),
            litert.predict(after, x_test),
            err_msg=kind,
        )
        comparison = litert.compare(
            keras.models.load_model(tmp_path / f"{kind}.keras"),
            tmp_path / f"{kind}.reloaded.tflite",
            x_test,
        )
        # Post-training int8 of these small Dense models after 2 epochs
        # agrees on 96.7-98% of the digits; QAT's file on 100%.
        assert comparison.agreement >= (1.0 if kind == "qat" else 0.95), (
            kind,
            comparison,
        )


@pytest.mark.parametrize("start_from_epoch", [0, 2])
def test_early_stopping_restores_a_pruned_model_from_the_schedules_end(
    digits_small, start_from_epoch
):
    """README: `restore_best_weights` brings back the best epoch, which on a
    trained model being pruned is an early, less sparse one; with
    `start_from_epoch` set to the epochs the schedule spans, the restored
    model is at the target sparsity."""
    (x, y), _ = digits_small
    model = compile_classifier(_model())
    model.fit(x, y, batch_size=BATCH, epochs=30, verbose=0)
    compile_classifier(model)  # a new optimizer: the schedule counts from 0
    steps = -(-int(len(x) * 0.8) // BATCH)
    target = 0.9
    pruning = MagnitudePruning(
        PolynomialDecay(
            0.0, target, begin_step=0, end_step=2 * steps, frequency=4
        )
    )
    stop = keras.callbacks.EarlyStopping(
        "val_loss",
        patience=10,
        restore_best_weights=True,
        start_from_epoch=start_from_epoch,
    )
    history = model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=4,
        validation_split=0.2,
        verbose=0,
        callbacks=[pruning, stop],
    )
    assert history.history["sparsity"][1] == pytest.approx(target, abs=0.01)
    restored = sparsity_report(model).sparsity
    if start_from_epoch:
        assert restored == pytest.approx(target, abs=0.01)
    else:  # the first epoch, half-way through the schedule, had the best loss
        assert restored < target - 0.05


@pytest.mark.backends("torch", reason="torch.compile")
def test_qat_refuses_torch_compile_before_the_first_step(digits_small):
    """torch.compile cannot trace the in-place QAT calls (dynamo fails in
    `Dense.call`, measured): refused before any step."""
    (x, y), _ = digits_small
    model = compile_classifier(_model(), jit_compile=True)
    with pytest.raises(ValueError, match="jit_compile=True.*torch"):
        model.fit(
            x,
            y,
            batch_size=BATCH,
            epochs=1,
            verbose=0,
            callbacks=[QuantizationAwareTraining()],
        )
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 0
