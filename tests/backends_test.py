"""Training-side behaviour on the other Keras backends, each in a child
process (the backend is fixed when Keras is first imported; conftest.py
sets TensorFlow for this process).

The PyTorch cases run where `torch` is importable: install the CPU wheel
(`pip install torch==2.13.0`) in the test environment to run them.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

# Slow as a whole (235 s of the fast suite before): CI runs it in its slow
# lane; CI's fast lanes run most of the suite in process on JAX and torch.
pytestmark = [
    pytest.mark.backends(
        "tensorflow", reason="starts a child process per other backend"
    ),
    pytest.mark.slow,
]

_HAS_TORCH = importlib.util.find_spec("torch") is not None
BACKENDS = [
    "jax",
    pytest.param(
        "torch",
        marks=pytest.mark.skipif(
            not _HAS_TORCH,
            reason="torch is not installed (pip install torch==2.13.0)",
        ),
    ),
]

# Shared by the child programs: tiny data and a small CNN, seeded. JAX
# compiles its train step (jit_compile defaults to True there); PyTorch
# runs eagerly (its default).
_PRELUDE = textwrap.dedent(
    """
    import json
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random((128, 8, 8, 1)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype("int32")
    LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def cnn(classes=2, seed=0):
        keras.utils.set_random_seed(seed)
        return keras.Sequential([
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, name="c1"),
            keras.layers.BatchNormalization(momentum=0.9, name="bn1"),
            keras.layers.ReLU(),
            keras.layers.Conv2D(16, 3, activation="relu", name="c2"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(classes, name="head"),
        ])

    def numpy(v):
        return keras.ops.convert_to_numpy(v)
    """
)

_QAT_UNDER_JIT = textwrap.dedent(
    """
    import json
    import keras
    import numpy as np
    from keras_slim.quantization import QuantizationAwareTraining
    from keras_slim.quantization import is_quantization_aware
    from keras_slim.quantization import quantize_model

    rng = np.random.default_rng(0)
    x = rng.random((256, 8, 8, 1)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype("int32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(2),
    ])
    model.compile(
        "adam",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=keras.backend.backend() == "jax",
    )
    model.fit(x, y, epochs=2, batch_size=32, verbose=0,
              callbacks=[QuantizationAwareTraining()])
    state = {v.name: keras.ops.convert_to_numpy(v).tolist()
             for v in model.non_trainable_variables
             if v.name.startswith("qat_")}
    twin = quantize_model(model)
    diff = np.abs(twin.predict(x[:64], verbose=0)
                  - model.predict(x[:64], verbose=0)).max()
    model.save_weights("m.weights.h5")
    saved = dict(state)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0,
              callbacks=[QuantizationAwareTraining()])
    moved = keras.ops.convert_to_numpy(
        [v for v in model.non_trainable_variables
         if v.name == "qat_input_max"][0]).tolist()
    model.load_weights("m.weights.h5")
    restored = {v.name: keras.ops.convert_to_numpy(v).tolist()
                for v in model.non_trainable_variables
                if v.name.startswith("qat_")}
    print(json.dumps({
        "backend": keras.backend.backend(),
        "aware": bool(is_quantization_aware(model)),
        "state": state,
        "twin_diff": float(diff),
        "restored_equal": restored == saved,
        "moved": moved != saved["qat_input_max"],
    }))
    """
)


def _run(backend, code, tmp_path, timeout=600):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_qat_ranges_are_learned_inside_a_jitted_step(backend, tmp_path):
    result = _run(backend, _QAT_UNDER_JIT, tmp_path)
    assert result["backend"] == backend
    # A jitted JAX step threads the model's variables through: the ranges
    # moved off their (-6, 6) start and are marked learned.
    state = result["state"]
    assert result["aware"]
    assert state["qat_input_initialized"] == 1.0
    assert 0.9 < state["qat_input_max"] <= 1.0  # the inputs are in [0, 1)
    assert state["qat_input_min"] == 0.0
    assert state["qat_phase"] == [1.0, 0.0, 0.0]
    # quantize_model copies them exactly.
    assert result["twin_diff"] < 1e-5
    # save_weights / load_weights carry them.
    assert result["moved"] and result["restored_equal"]


_MAGNITUDE = _PRELUDE + textwrap.dedent(
    """
    from keras_slim.pruning import MagnitudePruning, sparsity_report
    from keras_slim.profiling import profile
    from keras_slim.schedules import PolynomialDecay

    model = cnn()
    model.compile("adam", LOSS)
    kernels = [model.get_layer(n).kernel for n in ("c1", "c2", "head")]
    seen = []

    class Check(keras.callbacks.Callback):
        # After each epoch: weights that are masked must be exactly zero.
        def on_epoch_end(self, epoch, logs=None):
            leaked = 0
            for k in kernels:
                mask = numpy(k.constraint.mask)
                leaked += int(np.sum((mask == 0) & (numpy(k) != 0)))
            seen.append(leaked)

    # 4 steps an epoch: masks update every 2 steps up to step 8, then 4
    # more epochs (16 optimizer steps) with no update: the compiled step
    # alone keeps the zeros.
    schedule = PolynomialDecay(0.0, 0.75, begin_step=0, end_step=8,
                               frequency=2)
    history = model.fit(x, y, batch_size=32, epochs=6, verbose=0,
                        callbacks=[MagnitudePruning(schedule), Check()])
    zeros = sum(int(np.sum(numpy(k) == 0)) for k in kernels)
    size = sum(int(np.prod(k.shape)) for k in kernels)
    model.save("pruned.keras")
    reloaded = keras.models.load_model("pruned.keras")
    same = all(
        np.array_equal(numpy(a), numpy(b))
        for a, b in zip(model.weights, reloaded.weights)
    )
    report = sparsity_report(model)

    # A falling target (0.8 -> 0.4) releases pruned weights: they must
    # train again (on JAX the step is retraced for them).
    keras.utils.set_random_seed(0)
    dense = keras.Sequential([keras.Input((64,)),
                              keras.layers.Dense(32, activation="tanh"),
                              keras.layers.Dense(2)])
    dense.compile("adam", LOSS)
    falling = PolynomialDecay(0.8, 0.4, begin_step=0, end_step=8,
                              frequency=4)
    dense.fit(x.reshape(len(x), -1), y, batch_size=32, epochs=4, verbose=0,
              callbacks=[MagnitudePruning(falling)])
    hidden = numpy(dense.layers[0].kernel)
    print(json.dumps({
        "backend": keras.backend.backend(),
        "released_zeros": float(np.mean(hidden == 0)),
        "sparsity_log": history.history["sparsity"],
        "leaked": seen,
        "sparsity": zeros / size,
        "report_sparsity": float(report.sparsity),
        "reloaded_equal": same,
        "params": int(profile(model).total_params),
    }))
    """
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_magnitude_pruning_keeps_exact_zeros_inside_the_compiled_step(
    backend, tmp_path
):
    result = _run(backend, _MAGNITUDE, tmp_path)
    assert result["backend"] == backend
    # No masked weight ever moved, including the 16 steps after the last
    # mask update (a traced JAX step sees no mask update).
    assert result["leaked"] == [0] * 6
    # The schedule's 0.75, reached at step 8 (end of epoch 2), and kept.
    assert result["sparsity_log"][2:] == [pytest.approx(0.75, abs=0.002)] * 4
    assert result["sparsity"] == pytest.approx(0.75, abs=0.002)
    assert result["report_sparsity"] == pytest.approx(0.75, abs=0.002)
    assert result["reloaded_equal"]
    assert result["params"] == 2578
    # Released weights moved off zero (0.54 on TensorFlow; a step that
    # kept its trace-time masks would stay at 0.8).
    assert result["released_zeros"] < 0.6


_CHANNELS = _PRELUDE + textwrap.dedent(
    """
    from keras_slim.pruning import ChannelPruning, shrink

    model = cnn()
    model.compile("adam", LOSS)
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0,
                        callbacks=[ChannelPruning(0.5, min_channels=4)])
    c1 = numpy(model.get_layer("c1").kernel)
    dead = int(np.sum(np.all(c1 == 0, axis=(0, 1, 2))))
    small = shrink(model)
    gap = np.abs(small.predict(x[:32], verbose=0)
                 - model.predict(x[:32], verbose=0)).max()
    print(json.dumps({
        "backend": keras.backend.backend(),
        "channel_sparsity": history.history["channel_sparsity"],
        "dead_c1": dead,
        "c1": small.get_layer("c1").filters,
        "c2": small.get_layer("c2").filters,
        "gap": float(gap),
    }))
    """
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_channel_pruning_then_shrink_gives_the_same_outputs(backend, tmp_path):
    result = _run(backend, _CHANNELS, tmp_path)
    assert result["backend"] == backend
    assert result["channel_sparsity"] == [0.5, 0.5]
    # Half the filters of c1 stayed exactly zero through the jitted steps.
    assert result["dead_c1"] == 8
    assert (result["c1"], result["c2"]) == (8, 8)
    assert result["gap"] < 1e-5


_CHANNEL_SCHEDULE = _PRELUDE + textwrap.dedent(
    """
    from keras_slim.pruning import ChannelPruning
    from keras_slim.schedules import PolynomialDecay

    def channel_weights(model):
        layer, bn = model.get_layer("c1"), model.get_layer("bn1")
        kernel = numpy(layer.kernel).reshape(-1, 16)
        return kernel, numpy(layer.bias), numpy(bn.gamma), numpy(bn.beta)

    def dead(model):
        return np.flatnonzero(np.all(channel_weights(model)[0] == 0, axis=0))

    class Check(keras.callbacks.Callback):
        # After every execution (2 steps, 1 on PyTorch): a channel once
        # zeroed stays zeroed in c1's kernel and bias, bn1's gamma, beta.
        def __init__(self):
            super().__init__()
            self.dead, self.leaked, self.snapshots = set(), 0, []

        def on_train_batch_end(self, batch, logs=None):
            kernel, *vectors = channel_weights(self.model)
            now = set(dead(self.model).tolist())
            self.leaked += len(self.dead - now)
            for v in vectors:
                self.leaked += int(np.sum(v[sorted(now)] != 0))
            self.dead = now

        def on_epoch_end(self, epoch, logs=None):
            self.snapshots.append([numpy(w) for w in self.model.weights])
            logs["rank"] = -epoch  # for EarlyStopping: epoch 0 is best

    def schedule():
        # 8 steps an epoch: the target rises at steps 0, 4, 8 and 12.
        return PolynomialDecay(0.0, 0.5, begin_step=0, end_step=12,
                               frequency=4)

    model = cnn()
    # PyTorch takes one step an execution.
    torch = keras.backend.backend() == "torch"
    model.compile("adam", LOSS, steps_per_execution=1 if torch else 2)
    check = Check()
    # The best epoch is the first, so training stops after three epochs
    # and epoch 0's weights come back.
    stop = keras.callbacks.EarlyStopping(
        monitor="rank", mode="max", patience=2, restore_best_weights=True)
    history = model.fit(
        x, y, batch_size=16, epochs=4, verbose=0,
        callbacks=[ChannelPruning(schedule(), min_channels=4), check, stop])
    restored = all(np.array_equal(numpy(a), b)
                   for a, b in zip(model.weights, check.snapshots[0]))

    # The same run without observers: state syncs only at epoch starts
    # and schedule changes, not at every batch (counted against plain fit).
    def count_syncs(model, callbacks):
        model.compile("adam", LOSS)
        syncs = [0]
        if hasattr(model, "jax_state_sync"):
            sync = model.jax_state_sync

            def counting():
                syncs[0] += 1
                sync()

            model.jax_state_sync = counting
        history = model.fit(x, y, batch_size=16, epochs=3, verbose=0,
                            callbacks=callbacks)
        return history, syncs[0]

    _, plain_syncs = count_syncs(cnn(), [])
    quiet = cnn()
    quiet_history, syncs = count_syncs(
        quiet, [ChannelPruning(schedule(), min_channels=4)])
    kernel, bias, gamma, beta = channel_weights(quiet)
    live = np.any(kernel != 0, axis=0)
    print(json.dumps({
        "backend": keras.backend.backend(),
        "sparsity": history.history["channel_sparsity"],
        "epochs": len(history.history["loss"]),
        "leaked": check.leaked,
        "restored": restored,
        "quiet_sparsity": quiet_history.history["channel_sparsity"],
        "quiet_dead": int(np.sum(~live)),
        "quiet_dead_zero": bool(np.all(bias[~live] == 0)
                                and np.all(gamma[~live] == 0)
                                and np.all(beta[~live] == 0)),
        "live_bias_moved": bool(np.all(bias[live] != 0)),
        "extra_syncs": syncs - plain_syncs,
        "wrapped_after": "train_step" in vars(quiet),
    }))
    """
)


@pytest.mark.parametrize("backend", ["tensorflow", *BACKENDS])
def test_channel_pruning_holds_zeros_on_schedule_without_per_batch_syncs(
    backend, tmp_path
):
    result = _run(backend, _CHANNEL_SCHEDULE, tmp_path)
    assert result["backend"] == backend
    # Epochs end at steps 8, 16, 24: the targets 0.5 * (1 - (1 - s/12)^3)
    # at steps 4, 8 and 12 (c1 and c2 are two groups of 16).
    assert result["sparsity"] == pytest.approx([0.3125, 0.5, 0.5])
    assert result["epochs"] == 3
    # No zeroed channel ever moved, across schedule updates, two steps an
    # execution and the jitted JAX step; EarlyStopping's best weights
    # (epoch 0) came back exactly.
    assert result["leaked"] == 0
    assert result["restored"]
    assert result["quiet_sparsity"] == pytest.approx([0.3125, 0.5, 0.5])
    assert result["quiet_dead"] == 8 and result["quiet_dead_zero"]
    # Biases start at zero; those of live channels trained (a step that
    # held every zero would have kept them).
    assert result["live_bias_moved"]
    # 24 steps: at most one sync when training starts, one each epoch
    # start and one per schedule change (a sync every batch: >= 24).
    assert result["extra_syncs"] <= 8
    assert not result["wrapped_after"]


_DISTILL_AND_TRANSFER = _PRELUDE + textwrap.dedent(
    """
    from keras_slim import distillation, transfer

    def dense(seed):
        keras.utils.set_random_seed(seed)
        return keras.Sequential([
            keras.Input((8, 8, 1)), keras.layers.Flatten(),
            keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2),
        ])

    teacher, student = dense(1), dense(2)
    distiller = distillation.Distiller(teacher, student, temperature=3.0,
                                       alpha=0.25)
    distiller.compile("adam", LOSS)
    logs = distiller.evaluate(x, y, batch_size=len(x), verbose=0,
                              return_dict=True)
    t = numpy(teacher.predict(x, verbose=0)).astype("float64")
    s = numpy(student.predict(x, verbose=0)).astype("float64")
    history = distiller.fit(x, y, batch_size=32, epochs=1, verbose=0)
    cached = distillation.cache_teacher_outputs(teacher, x)
    again = distillation.Distiller(teacher, dense(2), temperature=3.0,
                                   alpha=0.25)
    again.compile("adam", LOSS)
    history_cached = again.fit(
        x, {distillation.LABELS: y, distillation.TEACHER_OUTPUTS: cached},
        batch_size=32, epochs=1, verbose=0, shuffle=False)

    model = cnn()
    model.compile("adam", LOSS)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    swapped = transfer.swap_head(model, 5)
    features = transfer.extract_features(model, x[:8])
    frozen = transfer.freeze(model, fraction=0.5)
    unfrozen = transfer.unfreeze(model)
    target = cnn(classes=3, seed=1)
    copied = transfer.transfer_weights(model, target)
    c1_copied = np.array_equal(numpy(target.get_layer("c1").kernel),
                               numpy(model.get_layer("c1").kernel))
    lines = []
    transfer.trainable_summary(model, print_fn=lines.append)
    gradual = cnn()
    transfer.freeze(gradual, up_to="c2")
    gradual.compile("adam", LOSS)
    c2_before = numpy(gradual.get_layer("c2").kernel).copy()
    steps = gradual.fit(
        x, y, batch_size=32, epochs=2, verbose=0,
        callbacks=[transfer.GradualUnfreezing(
            {1: "c2"}, learning_rate_multiplier=0.5)])
    c2_moved = not np.array_equal(
        c2_before, numpy(gradual.get_layer("c2").kernel))
    print(json.dumps({
        "backend": keras.backend.backend(),
        "teacher": t.tolist(), "student": s.tolist(),
        "loss": logs["loss"],
        "distillation_loss": logs["distillation_loss"],
        "fit_loss": history.history["loss"],
        "cached_loss": history_cached.history["loss"],
        "swap_shape": list(swapped.output_shape),
        "features_shape": list(np.shape(features)),
        "c1_copied": c1_copied,
        "summary_lines": len(lines),
        "trainable_params": steps.history["trainable_params"],
        "c2_moved": c2_moved,
        "frozen_type": type(frozen).__name__,
        "copied_type": type(copied).__name__,
        "unfrozen_type": type(unfrozen).__name__,
    }))
    """
)


def _reference_distillation(teacher, student, labels, temperature, alpha):
    """NumPy: (1 - alpha) T^2 KL(p_t || p_s) + alpha CE(labels, student)."""

    def log_softmax(z):
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    log_t = log_softmax(teacher / temperature)
    log_s = log_softmax(student / temperature)
    kl = (np.exp(log_t) * (log_t - log_s)).sum(axis=-1).mean()
    soft = kl * temperature**2
    hard = -log_softmax(student)[np.arange(len(labels)), labels].mean()
    return soft, (1 - alpha) * soft + alpha * hard


@pytest.mark.parametrize("backend", BACKENDS)
def test_distillation_loss_and_transfer_utilities(backend, tmp_path):
    result = _run(backend, _DISTILL_AND_TRANSFER, tmp_path)
    assert result["backend"] == backend
    rng = np.random.default_rng(0)
    x = rng.random((128, 8, 8, 1)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype("int32")
    soft, total = _reference_distillation(
        np.array(result["teacher"]), np.array(result["student"]), y, 3.0, 0.25
    )
    assert result["distillation_loss"] == pytest.approx(soft, rel=1e-4)
    assert result["loss"] == pytest.approx(total, rel=1e-4)
    # The cached teacher outputs give the same training as the live teacher.
    assert result["cached_loss"][0] == pytest.approx(
        result["fit_loss"][0], rel=0.05
    )
    assert result["swap_shape"] == [None, 5]
    assert result["features_shape"] == [8, 16]
    assert result["c1_copied"]
    assert result["summary_lines"] > 3
    # Head and c2 trainable from epoch 1 (bn1 and c1 stay frozen).
    assert result["trainable_params"] == [34, 2354]
    assert result["c2_moved"]
    assert (
        result["frozen_type"],
        result["unfrozen_type"],
        result["copied_type"],
    ) == ("FreezeReport", "FreezeReport", "TransferReport")


_EXPORT = _PRELUDE + textwrap.dedent(
    """
    import time
    from keras_slim import litert
    from keras_slim.export import export_tflite
    from keras_slim.quantization import quantize_model

    model = cnn()
    model.compile("adam", LOSS)
    model.fit(x, y, batch_size=32, epochs=3, verbose=0)
    start = time.perf_counter()
    report = export_tflite(
        model, "model.tflite", representative_data=x[:64])
    seconds = time.perf_counter() - start
    keras_top = numpy(model.predict(x, verbose=0)).argmax(-1)
    file_top = np.asarray(
        litert.predict("model.tflite", x)).argmax(-1)
    try:
        export_tflite(model, "bad.tflite", quantization="int9")
        error = None
    except ValueError as e:
        error = str(e)
    twin = quantize_model(model)
    twin.compile("adam", LOSS)
    twin.fit(x, y, batch_size=32, epochs=1, verbose=0)
    learned = export_tflite(twin, "qat.tflite")
    print(json.dumps({
        "backend": keras.backend.backend(),
        "int8_only": bool(report.int8_only),
        "agreement": report.agreement,
        "parity": float(np.mean(keras_top == file_top)),
        "seconds": seconds,
        "error": error,
        "bad_written": __import__("os").path.exists("bad.tflite"),
        "learned_int8_only": bool(learned.int8_only),
        "learned_ranges": learned.ranges,
    }))
    """
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_export_from_another_backend_gives_a_verified_int8_file(
    backend, tmp_path
):
    result = _run(backend, _EXPORT, tmp_path, timeout=900)
    assert result["backend"] == backend
    assert result["int8_only"]
    assert min(result["agreement"].values()) >= 0.9
    assert result["parity"] >= 0.9
    assert result["error"].startswith("Expected `quantization` to be one of")
    assert not result["bad_written"]
    assert result["learned_int8_only"]
    assert result["learned_ranges"] == "learned"


_DATA_PARALLEL = (
    'import os\nos.environ["XLA_FLAGS"] = '
    '"--xla_force_host_platform_device_count=2"\n'
    + _PRELUDE
    + textwrap.dedent(
        """
    import jax
    from keras_slim import litert
    from keras_slim.export import export_tflite
    from keras_slim.pruning import MagnitudePruning
    from keras_slim.quantization import QuantizationAwareTraining
    from keras_slim.quantization import is_quantization_aware
    from keras_slim.schedules import PolynomialDecay

    x = rng.random((256, 8, 8, 1)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype("int32")
    NAMES = ("c1", "c2", "head")

    def train(devices):
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices)
            if len(devices) > 1 else None)
        model = cnn()
        model.compile("adam", LOSS)
        kernels = [model.get_layer(n).kernel for n in NAMES]
        leaked = []

        class Check(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                leaked.append(sum(
                    int(np.sum((numpy(k.constraint.mask) == 0)
                               & (numpy(k) != 0)))
                    for k in kernels))

        # 8 steps an epoch; masks update every 4 steps up to step 16.
        schedule = PolynomialDecay(0.0, 0.75, begin_step=0, end_step=16,
                                   frequency=4)
        history = model.fit(
            x, y, batch_size=32, epochs=4, verbose=0,
            callbacks=[MagnitudePruning(schedule),
                       QuantizationAwareTraining(), Check()])
        ranges = {v.name: v for v in model.non_trainable_variables
                  if v.name.startswith("qat_") and v.name.endswith("max")}
        return model, history, leaked, kernels, ranges

    devices = jax.devices()
    one, one_history, _, one_kernels, one_ranges = train(devices[:1])
    model, history, leaked, kernels, ranges = train(devices)
    # Each range variable: its value on every device.
    shards = {
        name: [float(numpy(s.data)) for s in v.value.addressable_shards]
        for name, v in ranges.items()
    }
    one_values = [float(numpy(v)) for v in one_ranges.values()]
    values = [float(numpy(v)) for v in ranges.values()]
    report = export_tflite(model, "model.tflite")
    keras_top = numpy(model.predict(x, verbose=0)).argmax(-1)
    file_top = np.asarray(litert.predict("model.tflite", x)).argmax(-1)
    print(json.dumps({
        "devices": len(devices),
        "sharded": "batch" in str(kernels[0].value.sharding),
        "sparsity": history.history["sparsity"],
        "one_sparsity": one_history.history["sparsity"],
        "leaked": leaked,
        "same_zeros": all(
            np.array_equal(numpy(a) == 0, numpy(b) == 0)
            for a, b in zip(kernels, one_kernels)),
        "aware": bool(is_quantization_aware(model)),
        "input_max": shards["qat_input_max"],
        "learned": sum(1 for v in values if v != 6.0),
        "shards_equal": all(len(set(v)) == 1 for v in shards.values()),
        "range_gap": float(np.max(np.abs(np.subtract(values, one_values)))),
        "int8_only": bool(report.int8_only),
        "agreement": min(report.agreement.values()),
        "parity": float(np.mean(keras_top == file_top)),
    }))
    """
    )
)


def test_data_parallel_on_two_jax_devices_prunes_learns_ranges_exports(
    tmp_path,
):
    result = _run("jax", _DATA_PARALLEL, tmp_path, timeout=900)
    assert result["devices"] == 2
    # The variables live on a mesh of two devices, replicated.
    assert result["sharded"]
    # Masks exact: no masked weight moved, the schedule's 0.75 reached on
    # time, and the same weights pruned as on one device.
    assert result["leaked"] == [0, 0, 0, 0]
    assert result["sparsity"] == result["one_sparsity"]
    assert result["sparsity"][1:] == [pytest.approx(0.75, abs=0.002)] * 3
    assert result["same_zeros"]
    # Ranges learned (the inputs are in [0, 1)), identical on both
    # devices, and those of one device up to the order of the sums.
    assert result["aware"]
    assert 0.9 < result["input_max"][0] <= 1.0
    assert result["learned"] >= 5
    assert result["shards_equal"]
    assert result["range_gap"] < 1e-2
    assert result["int8_only"]
    assert result["agreement"] >= 0.99
    assert result["parity"] >= 0.99
