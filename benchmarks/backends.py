"""Per-backend benchmark: pruning and QAT epoch time vs plain `fit` on the
same backend, the int8 file's agreement after export, and each backend's
plain epoch time against tf_keras (the framework tfmot users leave).

Each backend runs in its own child process (`KERAS_BACKEND` is read once,
at import). In a child, three models are built from the same weights: the
demo CNN (`keras_slim.models.small_cnn`) on the digits at 32x32 trained
with plain `fit`, with `MagnitudePruning` (PolynomialDecay to 50%) and
with `QuantizationAwareTraining()`. Each round runs one `fit` of
`--epochs` epochs per method, one after the other; an epoch time is the
steady-state median of a `fit` (first epoch excluded: it traces), and a
ratio is method / plain in the same round. Medians over rounds. Then the
pruned and the QAT model are exported with `export_tflite` (from JAX and
torch through the TensorFlow child process) and the file's agreement
with the Keras model is measured on the 450 test images.

Plain-epoch settings: on TensorFlow also `jit_compile=True` and
`steps_per_execution=8`, on JAX `steps_per_execution=8`; tf_keras (the
same CNN, `benchmarks._tf_keras_common`) in a subprocess with
`TF_USE_LEGACY_KERAS=1`.

Usage (from the repository root):
    python -m benchmarks.backends              # 5 rounds of 4 epochs
    python -m benchmarks.backends --quick      # smoke run
"""

import argparse
import datetime
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

RESULTS = os.path.join(os.path.dirname(__file__), "results", "backends.md")
BACKENDS = ("tensorflow", "jax", "torch")
BATCH = 64


def _median(values):
    values = sorted(values)
    n = len(values)
    if not n:
        return float("nan")
    mid = n // 2
    return values[mid] if n % 2 else 0.5 * (values[mid - 1] + values[mid])


def _child(backend, args):
    """Runs in a child process whose KERAS_BACKEND is `backend`."""
    import keras
    import numpy as np

    from benchmarks._common import EpochTimer
    from benchmarks._common import steady
    from keras_slim import datasets
    from keras_slim import litert
    from keras_slim import models
    from keras_slim.export import export_tflite
    from keras_slim.pruning import MagnitudePruning
    from keras_slim.quantization import QuantizationAwareTraining
    from keras_slim.schedules import PolynomialDecay

    assert keras.backend.backend() == backend, keras.backend.backend()
    (x, y), (xt, yt) = datasets.load_digits(32)
    keras.utils.set_random_seed(0)
    base = models.small_cnn()
    weights = base.get_weights()
    steps = -(-len(x) // BATCH)
    total = steps * args.epochs * args.rounds

    def fresh(**compile_kwargs):
        keras.utils.set_random_seed(0)
        m = models.small_cnn()
        m.set_weights(weights)
        m.compile(
            keras.optimizers.Adam(1e-3),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            **compile_kwargs,
        )
        return m

    def epoch_time(model, callbacks=()):
        timer = EpochTimer()
        model.fit(
            x,
            y,
            batch_size=BATCH,
            epochs=args.epochs,
            verbose=0,
            callbacks=[*callbacks, timer],
        )
        return steady(timer.times)

    plain, pruned, qat = fresh(), fresh(), fresh()
    pruning = MagnitudePruning(
        PolynomialDecay(0.0, 0.5, begin_step=0, end_step=total // 2),
        scope="global",
    )
    quantizing = QuantizationAwareTraining()
    variants = {}
    if backend == "tensorflow":
        variants["jit_compile=True"] = fresh(jit_compile=True)
        variants["steps_per_execution=8"] = fresh(steps_per_execution=8)
    elif backend == "jax":
        variants["steps_per_execution=8"] = fresh(steps_per_execution=8)
    rows = {"plain": [], "pruning": [], "qat": []}
    rows.update({name: [] for name in variants})
    for _ in range(args.rounds):
        rows["plain"].append(epoch_time(plain))
        rows["pruning"].append(epoch_time(pruned, [pruning]))
        rows["qat"].append(epoch_time(qat, [quantizing]))
        for name, m in variants.items():
            rows[name].append(epoch_time(m))
    out = {"backend": backend, "keras": keras.__version__, "epochs": rows}
    out["ratios"] = {
        k: [a / b for a, b in zip(rows[k], rows["plain"])]
        for k in rows
        if k != "plain"
    }
    weights_nonzero = [w for w in pruned.trainable_weights if len(w.shape) > 1]
    zeros = sum(
        int(np.sum(keras.ops.convert_to_numpy(w) == 0)) for w in weights_nonzero
    )
    size = sum(int(np.prod(w.shape)) for w in weights_nonzero)
    out["sparsity"] = zeros / size
    out["accuracy"] = {
        name: float(np.mean(np.argmax(m.predict(xt, verbose=0), -1) == yt))
        for name, m in (("plain", plain), ("pruning", pruned), ("qat", qat))
    }
    folder = tempfile.mkdtemp()
    for name, m in (("pruning", pruned), ("qat", qat)):
        path = os.path.join(folder, f"{name}.tflite")
        start = time.perf_counter()
        data = x[:200] if name == "pruning" else None  # QAT: learned
        report = export_tflite(m, path, representative_data=data)
        seconds = time.perf_counter() - start
        comparison = litert.compare(m, path, xt)
        out[f"{name}_export"] = {
            "int8_only": bool(report.info.int8_only),
            "agreement": float(comparison.agreement),
            "bytes": int(report.info.bytes),
            "seconds": seconds,
            "ranges": report.ranges,
        }
    print("RESULT " + json.dumps(out))


_TF_KERAS = """
import json, sys, time
from benchmarks import _tf_keras_common as c
import numpy as np
from keras_slim import datasets
(x, y), _ = datasets.load_digits(32)
model = c.small_cnn((32, 32, 1))
c.compile_(model)
times = []
for _ in range({rounds}):
    t = c.EpochTimer()
    model.fit(x, y, batch_size={batch}, epochs={epochs}, verbose=0,
              callbacks=[t])
    times.append(float(np.median(t.times[1:])))
print("RESULT " + json.dumps({{"epochs": times}}))
"""


def _run(env_changes, argv=None, code=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env_changes}
    cmd = [sys.executable]
    cmd += ["-c", code] if code else ["-m", "benchmarks.backends", *argv]
    done = subprocess.run(
        cmd, env=env, capture_output=True, text=True, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (done.stderr or done.stdout)[-1500:]
    return {"error": f"exit {done.returncode}: {tail}"}


def _available(backend):
    name = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
    return importlib.util.find_spec(name[backend]) is not None


def _markdown(results, tf_keras, args, seconds):
    cmd = "python -m benchmarks.backends" + (" --quick" if args.quick else "")
    lines = [
        "## Backends: pruning and QAT on TensorFlow, JAX and torch (issue 21)",
        "",
        f"Command: `{cmd}` (rounds={args.rounds}, epochs per fit="
        f"{args.epochs}); date {datetime.date.today()}; "
        f"{seconds / 60:.1f} min.",
        "",
        "The demo CNN (`keras_slim.models.small_cnn`, 20,394 parameters) "
        "on the digits at 32x32 (1347 train / 450 test images, batch 64), "
        "from the same initial weights per method. Each round runs one "
        "`fit` per method, one after the other, in one process per "
        "backend; epoch time is the steady-state median of a `fit` (first "
        "epoch excluded), a ratio is method / plain in the same round; "
        "medians over rounds. Pruning: `MagnitudePruning(PolynomialDecay("
        "0 -> 50%), scope='global')`; QAT: `QuantizationAwareTraining()`. "
        "Export: `export_tflite` (pruned: calibrated on 200 training "
        "images; QAT: its learned ranges; JAX and torch through the "
        "TensorFlow child process), agreement "
        "by `litert.compare` on the 450 test images. The machine (2 "
        "cores) was shared with other jobs: compare ratios, not seconds.",
        "",
        "| backend | plain s/epoch | pruning / plain (goal <= 1.05x) | "
        "QAT / plain (goal <= 1.10x) | sparsity | pruned int8: int8_only, "
        "agreement | QAT int8: int8_only, agreement | export s (pruned) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['backend']} | failed: {r['error'][-300:]!r} |")
            continue
        ratio = {k: _median(v) for k, v in r["ratios"].items()}
        pe, qe = r["pruning_export"], r["qat_export"]
        lines.append(
            f"| {r['backend']} | {_median(r['epochs']['plain']):.3f} | "
            f"{ratio['pruning']:.3f}x | {ratio['qat']:.3f}x | "
            f"{100 * r['sparsity']:.1f}% | {pe['int8_only']}, "
            f"{100 * pe['agreement']:.2f}% | {qe['int8_only']}, "
            f"{100 * qe['agreement']:.2f}% | {pe['seconds']:.1f} |"
        )
    lines += [
        "",
        "Plain epoch time by setting, against tf_keras (the same CNN, "
        "plain `fit`, in its own process, measured in the same run):",
        "",
        "| setting | s/epoch (median) | vs tf_keras |",
        "|---|---|---|",
    ]
    base = _median(tf_keras.get("epochs", []))
    rows = [("tf_keras 2 (TF_USE_LEGACY_KERAS=1)", base)]
    for r in results:
        if "error" in r:
            continue
        rows.append((f"Keras 3, {r['backend']}", _median(r["epochs"]["plain"])))
        for name, values in r["epochs"].items():
            if name not in ("plain", "pruning", "qat"):
                rows.append(
                    (f"Keras 3, {r['backend']}, {name}", _median(values))
                )
    for name, value in rows:
        lines.append(f"| {name} | {value:.3f} | {value / base:.2f}x |")
    lines += ["", "Per backend (JSON):", "", "```"]
    lines += [json.dumps(r, sort_keys=True) for r in results]
    lines += [json.dumps({"tf_keras": tf_keras}), "```", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--child", choices=BACKENDS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.epochs = 1, 2
    if args.child:
        _child(args.child, args)
        return
    start = time.perf_counter()
    passed = ["--rounds", str(args.rounds), "--epochs", str(args.epochs)]
    results = []
    for backend in BACKENDS:
        if not _available(backend):
            results.append({"backend": backend, "error": "not installed"})
            continue
        print(f"backend {backend} ...", flush=True)
        r = _run({"KERAS_BACKEND": backend}, ["--child", backend, *passed])
        r.setdefault("backend", backend)
        results.append(r)
    print("tf_keras ...", flush=True)
    tf_keras = _run(
        {"TF_USE_LEGACY_KERAS": "1"},
        code=_TF_KERAS.format(
            rounds=args.rounds, epochs=args.epochs, batch=BATCH
        ),
    )
    text = _markdown(results, tf_keras, args, time.perf_counter() - start)
    from benchmarks._common import save_section

    save_section(RESULTS, text)


if __name__ == "__main__":
    main()
