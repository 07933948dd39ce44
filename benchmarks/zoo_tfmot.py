"""Issue 20, item 7: the peer on the zoo, tfmot under legacy Keras 2.

The same `keras.applications` architectures as `benchmarks.zoo` (rebuilt
with `tf_keras.applications`, `weights=None`, the zoo's input side and 10
classes, BatchNorm momentum 0.9 as `_zoo_models._application` sets), each
in its own child process under `TF_USE_LEGACY_KERAS=1`:

- QAT: `tfmot.quantization.keras.quantize_model` (or its refusal), one
  epoch on 128 samples of `_zoo_models.data(name, 128, 64)` (batch 32,
  from scratch, as `benchmarks/probes/zoo_qat_export.py` does for
  keras_slim), then `TFLiteConverter.from_keras_model` with
  `Optimize.DEFAULT` and int8 inference input and output types (the
  tfmot QAT guide's recipe, no representative dataset). The file is read
  with `keras_slim.inspect_tflite` (`int8_only`, float ops) and run with
  LiteRT (`keras_slim.litert.predict`) on the 64 held-out samples:
  top-1 agreement with the tf_keras QAT model.
- Pruning: `tfmot.sparsity.keras.prune_low_magnitude` with
  `ConstantSparsity(0.5, begin_step=0, frequency=F)` on a fresh model (or
  its refusal), one epoch with `UpdatePruningStep`, then the sparsity of
  the kernels the wrappers prune. F is 1 by default (as the zoo's
  keras_slim `MagnitudePruning` uses): with tfmot's default frequency of
  100 the masks are first updated at step 100, after the 4 steps of this
  epoch (`--frequency 100` measures that).

The models are near chance (one epoch from scratch): this measures
whether each path runs and gives an int8 file, not accuracy.
The keras.io examples of the zoo (TextTransformer, LSTM, UNet) are Keras 3
code and are not rebuilt here.

    nice -n 19 python -m benchmarks.zoo_tfmot [--models MobileNet,VGG16]
        [--rows benchmarks/results/zoo_tfmot_rows.json] [--timeout 1200]

Rows accumulate in the `--rows` file (a model already there is not run
again); the table of every row is written to
benchmarks/results/zoo_tfmot.md.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS = os.path.join(HERE, "results", "zoo_tfmot_rows.json")
STAGES = ("qat", "prune")
N_TRAIN, N_TEST, BATCH, CLASSES = 128, 64, 32, 10
_CELL = "ZOO-TFMOT-CELL "
PACKAGES = (
    "tensorflow",
    "tf_keras",
    "tensorflow-model-optimization",
    "ai-edge-litert",
)


# --- The child: tf_keras and tfmot only (TF_USE_LEGACY_KERAS=1). ---


def _error(error, limit=200):
    text = " ".join(str(error).split())[:limit]
    return f"{type(error).__name__}: {text}"


def _build(name, shape):
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    kwargs = dict(weights=None, input_shape=shape, classes=CLASSES)
    if name.startswith("MobileNetV3"):
        kwargs["minimalistic"] = False
    model = getattr(tf_keras.applications, name)(**kwargs)
    for layer in model.layers:  # as `_zoo_models._application`
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            layer.momentum = 0.9
    return model


def _compile(model, name):
    # `_zoo_models.compile_model` in tf_keras: the applications end in
    # softmax (`_tf_keras_common.compile_` takes logits).
    import tf_keras

    model.compile(
        tf_keras.optimizers.Adam(1e-4 if name == "VGG16" else 1e-3),
        tf_keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    return model


def _fit(model, x, y, callbacks=()):
    from benchmarks._tf_keras_common import EpochTimer

    timer = EpochTimer()
    model.fit(
        x,
        y,
        epochs=1,
        batch_size=BATCH,
        verbose=0,
        callbacks=[*callbacks, timer],
    )
    return timer.times[0]


def _qat(name, data, folder):
    import numpy as np
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot

    x, y, xt, yt = data
    model = _build(name, x.shape[1:])
    try:
        model = tfmot.quantization.keras.quantize_model(model)
    except Exception as error:  # noqa: BLE001 - the table records it
        return dict(
            status="refused", step="quantize_model", reason=_error(error)
        )
    _compile(model, name)
    fit_s = _fit(model, x, y)
    keras_pred = model.predict(xt, verbose=0).argmax(-1)
    start = time.perf_counter()
    try:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        flatbuffer = converter.convert()
    except Exception as error:  # noqa: BLE001
        return dict(status="refused", step="convert", reason=_error(error, 600))
    convert_s = time.perf_counter() - start
    path = os.path.join(folder, f"{name}_tfmot_qat.tflite")
    with open(path, "wb") as f:
        f.write(flatbuffer)
    # keras_slim imports Keras 3 next to tf_keras; only after the work.
    from keras_slim import inspect_tflite
    from keras_slim import litert

    info = inspect_tflite(path)
    file_pred = litert.predict(path, xt).argmax(-1)
    return dict(
        status="ok",
        int8_only=bool(info.int8_only),
        float_ops=list(info.float_ops),
        io=[t["dtype"] for t in info.inputs + info.outputs],
        agreement=float(np.mean(file_pred == keras_pred)),
        # Classes the Keras model predicts: 1 makes agreement trivial.
        keras_classes=len(set(keras_pred.tolist())),
        keras_accuracy=float(np.mean(keras_pred == yt)),
        kib=info.bytes / 1024,
        fit_s=fit_s,
        convert_s=convert_s,
    )


def _prune(name, data, frequency):
    import numpy as np
    import tensorflow_model_optimization as tfmot

    sparsity = tfmot.sparsity.keras
    x, y, _, _ = data
    model = _build(name, x.shape[1:])
    kernels = sum(
        1
        for layer in model.layers
        if any("kernel" in w.name for w in layer.weights)
    )
    schedule = sparsity.ConstantSparsity(0.5, 0, frequency=frequency)
    try:
        model = sparsity.prune_low_magnitude(model, pruning_schedule=schedule)
    except Exception as error:  # noqa: BLE001
        return dict(
            status="refused", step="prune_low_magnitude", reason=_error(error)
        )
    _compile(model, name)
    fit_s = _fit(model, x, y, [sparsity.UpdatePruningStep()])
    per_weight = [
        np.asarray(weight.numpy() == 0)
        for layer in model.layers
        for weight, _, _ in getattr(layer, "pruning_vars", ())
    ]
    unpruned = {}  # layers with a kernel the wrappers leave dense
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        has_kernel = any("kernel" in w.name for w in inner.weights)
        if has_kernel and not getattr(layer, "pruning_vars", ()):
            kind = type(inner).__name__
            unpruned[kind] = unpruned.get(kind, 0) + 1
    zeros = sum(int(z.sum()) for z in per_weight)
    total = sum(z.size for z in per_weight)
    fractions = [float(z.mean()) for z in per_weight]
    return dict(
        status="ok",
        sparsity=zeros / total if total else 0.0,
        min_layer=min(fractions, default=0.0),
        max_layer=max(fractions, default=0.0),
        pruned_weights=len(per_weight),
        kernel_layers=kernels,
        unpruned=unpruned,
        frequency=frequency,
        fit_s=fit_s,
    )


def child(name, data_path, folder, stages, frequency):
    """Run `stages` on one model; print one `_CELL` line per stage."""
    import numpy as np

    loaded = np.load(data_path)
    data = tuple(loaded[k] for k in ("x", "y", "xt", "yt"))
    for stage in stages:
        start = time.perf_counter()
        try:
            if stage == "qat":
                cell = _qat(name, data, folder)
            else:
                cell = _prune(name, data, frequency)
        except Exception as error:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            cell = dict(status="error", reason=_error(error, 600))
        cell["seconds"] = time.perf_counter() - start
        print(_CELL + json.dumps([stage, cell]), flush=True)


# --- The parent: Keras 3 (the zoo's data), one child per model. ---


def run_model(name, timeout, frequency):
    """Each stage of one model in child processes; a child that dies or
    outlives `timeout` marks the stage it was running, and a new child
    goes on with the stages after it."""
    import numpy as np

    from benchmarks import _zoo_models as zoo

    start = time.perf_counter()
    (x, y), (xt, yt) = zoo.data(name, N_TRAIN, N_TEST)
    cells, todo = {}, list(STAGES)
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    with tempfile.TemporaryDirectory() as folder:
        data_path = os.path.join(folder, "data.npz")
        np.savez(data_path, x=x, y=y, xt=xt, yt=yt)
        while todo:
            command = [
                sys.executable,
                "-m",
                "benchmarks.zoo_tfmot",
                "--one",
                name,
                "--data",
                data_path,
                "--folder",
                folder,
                "--stages",
                ",".join(todo),
                "--frequency",
                str(frequency),
            ]
            try:
                done = subprocess.run(
                    command,
                    cwd=os.path.dirname(HERE),
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                )
                stdout, stderr = done.stdout, done.stderr
                death = f"the process died (exit code {done.returncode})"
            except subprocess.TimeoutExpired as expired:
                stdout, stderr = (
                    s.decode(errors="replace") if isinstance(s, bytes) else s
                    for s in (expired.stdout or "", expired.stderr or "")
                )
                death = f"timeout: killed after {timeout} s"
            for line in stdout.splitlines():
                if line.startswith(_CELL):
                    stage, cell = json.loads(line[len(_CELL) :])
                    cells[stage] = cell
            todo = [s for s in todo if s not in cells]
            if todo or any(c["status"] == "error" for c in cells.values()):
                print(stderr[-6000:], file=sys.stderr, flush=True)
            if todo:
                status = "timeout" if death.startswith("timeout") else "crash"
                cells[todo.pop(0)] = dict(status=status, reason=death)
    return dict(
        name=name,
        input_shape=list(x.shape[1:]),
        seconds=time.perf_counter() - start,
        date=time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        versions={p: metadata.version(p) for p in PACKAGES},
        cells=cells,
    )


def _ops(float_ops):
    counts = {}
    for op in float_ops:
        kind = op.split(":")[0]
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{k} x{n}" for k, n in sorted(counts.items()))


def _qat_cell(cell):
    if cell is None:
        return "not run", "not run"
    if cell["status"] == "refused" and cell["step"] == "quantize_model":
        return f"refused: {cell['reason']}", "-"
    if cell["status"] != "ok":
        where = f"{cell['step']}: " if "step" in cell else ""
        return "ran", f"{cell['status']}: {where}{cell['reason']}"
    floats = len(cell["float_ops"])
    file = (
        f"int8_only {cell['int8_only']}, io {'/'.join(cell['io'])}, "
        f"float ops {floats}"
        + (f" ({_ops(cell['float_ops'])})" if floats else "")
        + f", agreement {100 * cell['agreement']:.2f}%, "
        f"{cell['kib']:.0f} KiB, Keras predicts "
        f"{cell['keras_classes']} class(es)"
    )
    ran = f"ran (fit {cell['fit_s']:.0f} s, convert {cell['convert_s']:.0f} s)"
    return ran, file


def _prune_cell(cell):
    if cell is None:
        return "not run"
    if cell["status"] != "ok":
        return f"{cell['status']}: {cell['reason']}"
    return (
        f"ran, sparsity {100 * cell['sparsity']:.2f}% "
        f"(layers {100 * cell['min_layer']:.1f}-"
        f"{100 * cell['max_layer']:.1f}%), "
        f"{cell['pruned_weights']} weights pruned, "
        f"{cell['kernel_layers']} layers with a kernel"
        + (
            " (left dense: "
            + ", ".join(f"{k} x{n}" for k, n in cell["unpruned"].items())
            + ")"
            if cell["unpruned"]
            else ""
        )
        + f", fit {cell['fit_s']:.0f} s"
    )


def table(rows, names):
    versions = rows[0]["versions"] if rows else {}
    frequencies = sorted(
        {
            str(row["cells"]["prune"].get("frequency"))
            for row in rows
            if row["cells"].get("prune", {}).get("status") == "ok"
        }
    )
    lines = [
        "## Zoo under the peer: tfmot on tf_keras (legacy Keras 2)",
        "",
        "`nice -n 19 python -m benchmarks.zoo_tfmot`, "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}, on "
        f"{platform.processor() or platform.machine()}, "
        + ", ".join(f"{p} {v}" for p, v in versions.items())
        + ". Each model is `tf_keras.applications.<Name>(weights=None, "
        "input_shape=<zoo side>, classes=10)` with BatchNorm momentum "
        "0.9, in its own process under `TF_USE_LEGACY_KERAS=1`. QAT: "
        "`quantize_model`, 1 epoch from scratch on 128 digits (batch 32), "
        "`TFLiteConverter.from_keras_model` with `Optimize.DEFAULT` and "
        "int8 input/output types; the file read by "
        "`keras_slim.inspect_tflite` and its top-1 agreement with the "
        "tf_keras QAT model on 64 held-out digits. Pruning: "
        "`prune_low_magnitude(ConstantSparsity(0.5, 0, frequency="
        f"{'/'.join(frequencies) or '?'}))`, 1 epoch with "
        "`UpdatePruningStep`; sparsity over the kernels the wrappers "
        "prune. Models near chance (1 epoch from scratch): whether each "
        "path runs, not accuracy. Refusals: exception type and first "
        "200 characters (600 for conversion).",
        "",
        "| model | input | quantize_model | QAT int8 file | "
        "prune_low_magnitude 50% | s |",
        "|---|---|---|---|---|---:|",
    ]
    for row in rows:
        ran, file = _qat_cell(row["cells"].get("qat"))
        cells = [ran, file, _prune_cell(row["cells"].get("prune"))]
        side = "x".join(str(s) for s in row["input_shape"])
        lines.append(
            f"| {row['name']} | {side} | "
            + " | ".join(c.replace("|", "/") for c in cells)
            + f" | {row['seconds']:.0f} |"
        )
    left = [n for n in names if n not in {r["name"] for r in rows}]
    if left:
        lines += ["", f"Not run: {', '.join(left)}."]
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated; default: all")
    parser.add_argument("--rows", default=ROWS)
    parser.add_argument(
        "--timeout", type=int, default=1200, help="seconds per child"
    )
    parser.add_argument("--frequency", type=int, default=1)
    parser.add_argument("--note", help="a line added under the table")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--stages", default=",".join(STAGES))
    args = parser.parse_args()
    if args.one:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        child(
            args.one,
            args.data,
            args.folder,
            args.stages.split(","),
            args.frequency,
        )
        return

    from benchmarks import _zoo_models as zoo
    from benchmarks._common import save_section

    names = list(zoo.APPLICATIONS)
    wanted = args.models.split(",") if args.models else names
    rows = []
    if os.path.exists(args.rows):
        with open(args.rows) as f:
            rows = json.load(f)
    done = {row["name"] for row in rows}
    for name in wanted:
        if name in done:
            continue
        rows.append(run_model(name, args.timeout, args.frequency))
        print(name, json.dumps(rows[-1]["cells"]), flush=True)
        with open(args.rows, "w") as f:
            json.dump(rows, f, indent=1)
    rows.sort(key=lambda row: names.index(row["name"]))
    lines = table(rows, names)
    if args.note:
        lines += ["", args.note]
    save_section(os.path.join(HERE, "results", "zoo_tfmot.md"), lines)


if __name__ == "__main__":
    main()
