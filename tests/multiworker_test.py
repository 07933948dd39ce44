"""Several machines: `tf.distribute.MultiWorkerMirroredStrategy` with two
worker processes on localhost.

Each worker gets its own `TF_CONFIG` (two free ports picked at run time),
builds the model inside the strategy's scope and trains with one
keras_slim piece: `MagnitudePruning`, `QuantizationAwareTraining`, or the
`Distiller`. Each worker saves what it ended with (masks, ranges, student
weights) and both call `export_tflite(..., quantization="int8")` (the
chief into the real folder, the other worker into its own: the export's
verification runs `predict`, a collective step every worker must join).
The test then checks that both workers hold the same arrays, bit for bit,
and that the chief's file is int8 only and agrees with its Keras model.

Checkpointing: pruning and QAT on one model with `BackupAndRestore` (a
folder per worker) and `ModelCheckpoint` (the chief's `.keras` file kept),
interrupted mid-epoch on both workers and resumed by new processes; the
resumed run must end on the uninterrupted run's arrays, bit for bit.

Run as a script, this module is one worker:
`python multiworker_test.py <kind> <index> <outdir>` (kind `checkpoint1`
or `checkpoint2` for the two phases of the checkpointing case).
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.backends("tensorflow", reason="tf.distribute")

KINDS = ["pruning", "qat", "distiller"]
SPARSITY = 0.75
EPOCHS = 4
LEARNING_RATE = 5e-3
GLOBAL_BATCH = 64
TIMEOUT = 420  # seconds for both workers, per kind


# ----------------------------------------------------------- the worker


def _small_model(name, width=32):
    import keras

    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(width, activation="relu", name="hidden"),
            keras.layers.Dense(10, name="head"),
        ],
        name=name,
    )


def _compile(model):
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _reduce_nests(strategy):
    """Patch `strategy.reduce` for Keras 3.15's `fit` (plain Keras `fit`
    under MultiWorkerMirroredStrategy fails twice without it; no keras_slim
    involved; keras-team/keras#20585).

    1. `fit` reduces its first `(x, y)` batch to build the model, but the
       strategy's `reduce` takes one value, not a tuple: "Attempt to
       convert a value (PerReplica:...) with an unsupported type".
    2. Each step reduces its scalar logs with `reduce("MEAN", v, axis=0)`:
       "Invalid reduction dimension 0 for input with 0 dimensions".

    So: reduce each value of a nest, and a scalar over replicas only.
    """
    import tensorflow as tf

    reduce = strategy.reduce

    def reduce_one(reduce_op, value, axis):
        local = strategy.experimental_local_results(value)[0]
        if axis is not None and local.shape.rank == 0:
            axis = None
        return reduce(reduce_op, value, axis=axis)

    def reduce_each(reduce_op, value, axis=None):
        return tf.nest.map_structure(
            lambda v: reduce_one(reduce_op, v, axis), value
        )

    strategy.reduce = reduce_each


def _worker(kind, index, outdir):
    """One worker: train with `kind`, save arrays, export int8."""
    import keras
    import tensorflow as tf

    from keras_slim import datasets
    from keras_slim import litert
    from keras_slim.distillation import Distiller
    from keras_slim.export import export_tflite
    from keras_slim.pruning import MagnitudePruning
    from keras_slim.quantization import QuantizationAwareTraining
    from keras_slim.quantization import is_quantization_aware
    from keras_slim.schedules import ConstantSparsity

    keras.config.disable_traceback_filtering()
    started = time.perf_counter()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    _reduce_nests(strategy)
    keras.utils.set_random_seed(0)
    (x, y), (x_test, y_test) = datasets.load_digits(image_size=8, seed=0)

    def data(labels):
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        ds = tf.data.Dataset.from_tensor_slices((x, labels))
        return ds.batch(GLOBAL_BATCH).with_options(options)

    with strategy.scope():
        if kind == "distiller":
            teacher = _compile(_small_model("teacher", width=64))
        else:
            model = _compile(_small_model("model"))
    callbacks = []
    if kind == "pruning":
        callbacks = [MagnitudePruning(ConstantSparsity(SPARSITY, 0))]
    elif kind == "qat":
        callbacks = [QuantizationAwareTraining()]
    elif kind == "distiller":
        teacher.fit(data(y), epochs=EPOCHS, verbose=0)
        with strategy.scope():
            student = _small_model("student", width=16)
            model = _compile(Distiller(teacher, student))
    history = model.fit(data(y), epochs=EPOCHS, verbose=0, callbacks=callbacks)
    trained = time.perf_counter()

    target = student if kind == "distiller" else model
    arrays = {v.path: keras.ops.convert_to_numpy(v) for v in target.variables}
    np.savez(os.path.join(outdir, f"worker{index}.npz"), **arrays)

    # Every worker exports (the verification's `predict` is collective);
    # the chief keeps its file, the other worker writes into its own folder.
    folder = os.path.join(outdir, "chief" if index == 0 else f"w{index}")
    os.makedirs(folder, exist_ok=True)
    filepath = os.path.join(folder, f"{kind}.tflite")
    representative = None if kind == "qat" else x[:200]
    report = export_tflite(
        target,
        filepath,
        quantization="int8",
        representative_data=representative,
    )
    comparison = litert.compare(target, filepath, x_test)
    logits = keras.ops.convert_to_numpy(target.predict(x_test, verbose=0))
    result = {
        "kind": kind,
        "index": index,
        "train_seconds": trained - started,
        "seconds": time.perf_counter() - started,
        "history": {
            k: [float(v) for v in vs] for k, vs in history.history.items()
        },
        "int8_only": bool(report.info.int8_only),
        "ranges": report.ranges,
        "export_agreement": report.agreement,
        "agreement": comparison.agreement,
        "samples": comparison.samples,
        "keras_accuracy": float(np.mean(np.argmax(logits, -1) == y_test)),
        "tflite_accuracy": float(litert.evaluate(filepath, x_test, y_test)),
        "quantization_aware": bool(is_quantization_aware(target)),
        "replicas": strategy.num_replicas_in_sync,
    }
    with open(os.path.join(outdir, f"worker{index}.json"), "w") as f:
        json.dump(result, f)


# ------------------------------------------- checkpointing on two workers

CHECKPOINT_EPOCHS = 2
INTERRUPT = (1, 5)  # (epoch, batch): mid-epoch, after one epoch's backup


def _interrupt(epoch, batch):
    """A callback that stops `fit` at one batch, as a preempted job."""
    import keras

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, e, logs=None):
            self.epoch = e

        def on_train_batch_end(self, b, logs=None):
            if (self.epoch, b) == (epoch, batch):
                raise RuntimeError("interrupted")

    return Interrupt()


def _first_batch():
    """A callback that records the epoch and the optimizer's step at the
    first batch of `fit` (after the callbacks before it)."""
    import keras

    class FirstBatch(keras.callbacks.Callback):
        seen = None

        def on_epoch_begin(self, e, logs=None):
            self.epoch = e

        def on_train_batch_begin(self, b, logs=None):
            if self.seen is None:
                self.seen = {
                    "epoch": self.epoch,
                    "iterations": int(
                        keras.ops.convert_to_numpy(
                            self.model.optimizer.iterations
                        )
                    ),
                }

    return FirstBatch()


def _checkpoint_worker(phase, index, outdir):
    """Pruning and QAT on one model, with `BackupAndRestore` (a folder per
    worker) and `ModelCheckpoint` (the chief's file kept).

    Phase 1: an uninterrupted `fit` (the reference), then the same `fit`
    from the same initial weights, stopped mid-epoch on every worker.
    Phase 2 (new processes): the script again; `BackupAndRestore` resumes.
    """
    import keras
    import tensorflow as tf

    from keras_slim import datasets
    from keras_slim.pruning import MagnitudePruning
    from keras_slim.quantization import QuantizationAwareTraining
    from keras_slim.schedules import ConstantSparsity

    started = time.perf_counter()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    _reduce_nests(strategy)
    (x, y), _ = datasets.load_digits(image_size=8, seed=0)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    data = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .batch(GLOBAL_BATCH)
        .with_options(options)
    )
    folder = os.path.join(outdir, "chief" if index == 0 else f"w{index}")
    os.makedirs(folder, exist_ok=True)

    def build():
        keras.utils.set_random_seed(0)
        with strategy.scope():
            return _compile(_small_model("model"))

    def callbacks():
        return [
            keras.callbacks.BackupAndRestore(
                os.path.join(outdir, f"backup{index}")
            ),
            keras.callbacks.ModelCheckpoint(os.path.join(folder, "m.keras")),
            MagnitudePruning(ConstantSparsity(SPARSITY, 0)),
            QuantizationAwareTraining(),
        ]

    def arrays(model):
        return {
            f"{v.path}:{i}": keras.ops.convert_to_numpy(v)
            for i, v in enumerate(model.variables)
        }

    result = {"index": index, "phase": phase}
    if phase == 1:
        reference = build()
        reference.fit(
            data,
            epochs=CHECKPOINT_EPOCHS,
            verbose=0,
            callbacks=[
                MagnitudePruning(ConstantSparsity(SPARSITY, 0)),
                QuantizationAwareTraining(),
            ],
        )
        result["steps"] = int(
            keras.ops.convert_to_numpy(reference.optimizer.iterations)
        )
        np.savez(
            os.path.join(outdir, f"worker{index}.npz"), **arrays(reference)
        )
        model = build()
        try:
            model.fit(
                data,
                epochs=CHECKPOINT_EPOCHS,
                verbose=0,
                callbacks=[*callbacks(), _interrupt(*INTERRUPT)],
            )
        except RuntimeError as error:
            result["interrupted"] = str(error)
    else:
        model = build()
        first = _first_batch()
        history = model.fit(
            data,
            epochs=CHECKPOINT_EPOCHS,
            verbose=0,
            callbacks=[*callbacks(), first],
        )
        result["first_batch"] = first.seen
        result["history"] = {
            k: [float(v) for v in vs] for k, vs in history.history.items()
        }
        result["steps"] = int(
            keras.ops.convert_to_numpy(model.optimizer.iterations)
        )
        np.savez(os.path.join(outdir, f"worker{index}.npz"), **arrays(model))
    result["seconds"] = time.perf_counter() - started
    with open(os.path.join(outdir, f"worker{index}.json"), "w") as f:
        json.dump(result, f)


# ------------------------------------------------------------ the test


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_workers(kind, outdir, workers=2, timeout=TIMEOUT):
    """Start `workers` processes for `kind`; return their results.

    Every process is killed if one fails or the time runs out.
    """
    ports = _free_ports(workers)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    processes = []
    try:
        _start(kind, outdir, cluster, workers, processes)
        _wait(outdir, processes, timeout)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = []
    for index in range(workers):
        with open(os.path.join(outdir, f"worker{index}.json")) as f:
            result = json.load(f)
        result["arrays"] = dict(
            np.load(os.path.join(outdir, f"worker{index}.npz"))
        )
        results.append(result)
    return results


def _start(kind, outdir, cluster, workers, processes):
    for index in range(workers):
        env = dict(os.environ)
        env["TF_CONFIG"] = json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}
        )
        env["KERAS_BACKEND"] = "tensorflow"
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        env["CUDA_VISIBLE_DEVICES"] = ""
        # The child keeps its own copy of the log's descriptor.
        with open(os.path.join(outdir, f"worker{index}.log"), "w") as log:
            processes.append(
                subprocess.Popen(
                    [sys.executable, __file__, kind, str(index), str(outdir)],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )


def _wait(outdir, processes, timeout):
    """Wait for every worker; fail at the first error or at `timeout`."""
    deadline = time.monotonic() + timeout
    pending = list(processes)
    while pending:
        for p in list(pending):
            code = p.poll()
            if code is None:
                continue
            pending.remove(p)
            if code != 0:
                index = processes.index(p)
                raise AssertionError(
                    f"worker {index} exited with {code}:\n"
                    + _tail(outdir, index)
                )
        if time.monotonic() > deadline:
            raise AssertionError(
                f"workers still running after {timeout} s:\n"
                + "\n".join(_tail(outdir, i) for i in range(len(processes)))
            )
        time.sleep(0.5)


def _tail(outdir, index, lines=30):
    path = os.path.join(outdir, f"worker{index}.log")
    with open(path) as f:
        return "".join(f.readlines()[-lines:])


def _assert_same_arrays(chief, other):
    assert sorted(chief) == sorted(other)
    for name in chief:
        np.testing.assert_array_equal(chief[name], other[name], err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_two_workers_end_with_the_same_arrays_and_chief_exports_int8(
    kind, tmp_path
):
    started = time.perf_counter()
    chief, other = run_workers(kind, tmp_path)
    elapsed = time.perf_counter() - started
    summary = {k: v for k, v in chief.items() if k != "arrays"}
    print(f"{kind}: two workers {elapsed:.1f} s, chief {summary}")

    assert chief["replicas"] == other["replicas"] == 2
    # Both workers log the same (globally reduced) numbers.
    assert chief["history"] == other["history"]
    arrays = chief["arrays"]
    if kind == "pruning":
        kernels = [a for n, a in arrays.items() if n.endswith("kernel")]
        assert len(kernels) == 3
        for kernel in kernels:
            assert np.mean(kernel == 0) == pytest.approx(SPARSITY, abs=0.01)
        assert chief["history"]["sparsity"][-1] == pytest.approx(
            SPARSITY, abs=0.01
        )
    elif kind == "qat":
        assert chief["quantization_aware"]
        initialized = [n for n in arrays if n.endswith("_initialized")]
        assert initialized
        for name in initialized:
            assert arrays[name] > 0, name
        assert chief["ranges"] == "learned"
    else:
        assert (
            chief["history"]["distillation_loss"][-1]
            < (chief["history"]["distillation_loss"][0])
        )
    assert chief["int8_only"]
    assert chief["agreement"] >= 0.97, chief["agreement"]
    assert chief["keras_accuracy"] > 0.75, chief["keras_accuracy"]
    assert chief["tflite_accuracy"] > 0.75, chief["tflite_accuracy"]
    # Last: what each worker ended with, bit for bit.
    _assert_same_arrays(chief["arrays"], other["arrays"])


@pytest.mark.slow
def test_two_workers_resume_pruning_and_qat_from_backup_and_checkpoint(
    tmp_path,
):
    """Interrupted mid-epoch on both workers, resumed by `BackupAndRestore`
    in new processes: the same masks, ranges and sparsity as an
    uninterrupted `fit`, on both workers; the chief's `.keras` file loads
    back with them."""
    import keras

    from keras_slim.quantization import is_quantization_aware

    started = time.perf_counter()
    phase1 = run_workers("checkpoint1", tmp_path)
    reference = phase1[0]["arrays"]
    for worker in phase1:
        assert worker["interrupted"] == "interrupted"
    _assert_same_arrays(reference, phase1[1]["arrays"])
    steps_per_epoch = phase1[0]["steps"] // CHECKPOINT_EPOCHS
    chief, other = run_workers("checkpoint2", tmp_path)
    print(f"checkpoint: two phases {time.perf_counter() - started:.1f} s")

    # Resumed at the start of epoch 1 (the backup of epoch 0's end), with
    # the optimizer's step, on both workers.
    for worker in (chief, other):
        assert worker["first_batch"] == {
            "epoch": INTERRUPT[0],
            "iterations": INTERRUPT[0] * steps_per_epoch,
        }
        assert worker["steps"] == phase1[0]["steps"]
    assert chief["history"] == other["history"]
    assert len(chief["history"]["loss"]) == CHECKPOINT_EPOCHS - INTERRUPT[0]
    # Both workers end on the uninterrupted run's arrays, bit for bit:
    # weights, zeros, QAT ranges and phase, optimizer step included.
    arrays = chief["arrays"]
    _assert_same_arrays(arrays, other["arrays"])
    _assert_same_arrays(arrays, reference)
    kernels = [
        a for n, a in arrays.items() if n.split(":")[0].endswith("kernel")
    ]
    assert len(kernels) == 3
    for kernel in kernels:
        assert np.mean(kernel == 0) == pytest.approx(SPARSITY, abs=0.01)
    initialized = [n for n in arrays if "_initialized" in n]
    assert initialized
    for name in initialized:
        assert arrays[name] > 0, name

    # The chief's `.keras` file (its last epoch) loads here with only
    # keras_slim imported, quantization-aware, with the same variables.
    loaded = keras.models.load_model(tmp_path / "chief" / "m.keras")
    assert is_quantization_aware(loaded)
    values = [keras.ops.convert_to_numpy(v) for v in loaded.variables]
    assert len(values) == len(arrays)
    for value, (name, array) in zip(values, arrays.items()):
        np.testing.assert_array_equal(value, array, err_msg=name)


if __name__ == "__main__":
    if sys.argv[1].startswith("checkpoint"):
        phase = int(sys.argv[1][len("checkpoint") :])
        _checkpoint_worker(phase, int(sys.argv[2]), sys.argv[3])
    else:
        _worker(sys.argv[1], int(sys.argv[2]), sys.argv[3])
