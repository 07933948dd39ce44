"""Issue 22 benchmark: post-training quantization, the converter route vs
the LiteRT Quantizer route, side by side on the same trained models.

    python -m benchmarks.ptq [--seeds 0 1 2] [--models NAME ...] [--quick]
        [--no-selective] [--cache DIR] [--output FILE]

Per model and seed: int8 by each route (accuracy vs Keras, agreement,
bytes, LiteRT latency), int16x8 by each route (agreement), and the
automatic selective mode (`keras_slim.quantization.select_precision`,
target agreement 99% on the first half of the test images, reported on
the second half: layers kept in int16x8 or float32, share of int8 ops).
Trained models are cached in `--cache` (keyed by model and seed), so a
second run only measures. Writes benchmarks/results/ptq.md.
"""

import argparse
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_slim  # noqa: E402
from benchmarks import _equalize  # noqa: E402
from benchmarks._common import compile_classifier  # noqa: E402
from benchmarks._common import mobilenet  # noqa: E402
from keras_slim import datasets  # noqa: E402
from keras_slim import litert  # noqa: E402
from keras_slim import models  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CALIBRATION = 300


# name: (builder, image size, channels, epochs, quick epochs)
MODELS = {
    "demo CNN (small_cnn, 32x32x1)": (models.small_cnn, 32, 1, 30, 3),
    "residual CNN (residual_cnn, 32x32x1)": (models.residual_cnn, 32, 1, 30, 3),
    "MobileNetV2 0.35 (96x96x3, weights=None)": (mobilenet, 96, 3, 8, 1),
    # The same network trained to convergence (train accuracy ~100%):
    # 30 epochs, Adam with a cosine decay from 2e-3. The 8-epoch models
    # above are undertrained, and so sensitive that rounding only the
    # first convolution's weights flips 1-2% of their predictions
    # (benchmarks/probes/ptq_weight_bound.py).
    "MobileNetV2 0.35 converged (96x96x3, weights=None, 30 epochs cosine)": (
        mobilenet,
        96,
        3,
        30,
        1,
    ),
}


def trained(name, seed, quick, cache):
    """The model trained from seed `seed` (cached) and its data."""
    build, size, channels, epochs, quick_epochs = MODELS[name]
    data = datasets.load_digits(image_size=size, channels=channels)
    epochs = quick_epochs if quick else epochs
    key = name.split(" (")[0].replace(" ", "_").replace(".", "")
    path = os.path.join(cache, f"{key}_e{epochs}_s{seed}.keras")
    if os.path.exists(path):
        return keras.models.load_model(path), data
    keras.utils.set_random_seed(seed)
    (x, y), _ = data
    lr = 1e-3
    if "cosine" in name:
        steps = -(-len(x) // 64) * epochs
        lr = keras.optimizers.schedules.CosineDecay(2e-3, steps)
    model = compile_classifier(build(), lr)
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
    os.makedirs(cache, exist_ok=True)
    model.save(path)
    return model, data


def _latency(path, repeats=3):
    return statistics.median(
        litert.latency(path, runs=50).median_ms for _ in range(repeats)
    )


def _row(model, path, report, xt, yt, keras_acc):
    acc = litert.evaluate(path, xt, yt)
    return dict(
        acc=acc,
        delta=acc - keras_acc,
        agreement=litert.compare(model, path, xt).agreement,
        bytes=report.info.bytes,
        int8_only=report.info.int8_only,
        latency=_latency(path),
        seconds=report.seconds,
    )


def _prepared(model, rep):
    """The model after each pre-conversion step (issue 22, item 5)."""
    equalized = _equalize.equalize_ranges(model, rep).model
    return {
        "equalize_ranges": equalized,
        "correct_bias": _equalize.correct_bias(model, rep)[0],
        "equalize_ranges + correct_bias": _equalize.correct_bias(
            equalized, rep
        )[0],
    }


def measure(model, data, folder, selective=True):
    """Every route and precision on one trained model."""
    (x, _), (xt, yt) = data
    rep = x[:CALIBRATION]
    keras_acc = float(model.evaluate(xt, yt, verbose=0)[1])
    out = {"keras_acc": keras_acc}
    for quantizer in ("converter", "litert"):
        for q in ("int8", "int16x8"):
            path = os.path.join(folder, f"{quantizer}_{q}.tflite")
            report = keras_slim.export_tflite(
                model,
                path,
                quantization=q,
                representative_data=rep,
                quantizer=quantizer,
            )
            out[f"{quantizer} {q}"] = _row(
                model, path, report, xt, yt, keras_acc
            )
    # Pre-conversion steps, converter int8; compared with the original
    # model (not the rescaled one).
    for step, prepared in _prepared(model, rep).items():
        path = os.path.join(folder, "prepared.tflite")
        report = keras_slim.export_tflite(
            prepared, path, representative_data=rep
        )
        out[f"{step}, converter int8"] = _row(
            model, path, report, xt, yt, keras_acc
        )
    if not selective:
        return out
    # Select on the first half of the test images, report the second.
    half = len(xt) // 2
    keras_half = float(model.evaluate(xt[half:], yt[half:], verbose=0)[1])
    for precision in ("int16x8", "float32"):
        path = os.path.join(folder, f"selective_{precision}.tflite")
        start = time.perf_counter()
        sel = keras_slim.quantization.select_precision(
            model,
            path,
            rep,
            min_agreement=0.99,
            precision=precision,
            validation_data=xt[:half],
        )
        row = _row(model, path, sel.export, xt[half:], yt[half:], keras_half)
        row["seconds"] = time.perf_counter() - start
        row["layers"] = len(sel.layers)
        row["int8_ops"] = sel.int8_op_fraction
        row["selection_agreement"] = sel.agreement
        out[f"selective {precision}"] = row
        print(sel.summary(), flush=True)
    return out


def _median(rows, key):
    values = [r[key] for r in rows]
    return statistics.median(values)


def to_markdown(results, command, seeds):
    lines = [
        "## Post-training quantization: converter vs LiteRT Quantizer "
        "(issue 22)",
        "",
        f"Command: `{command}`  ",
        f"Date: {time.strftime('%Y-%m-%d')}; Python "
        f"{platform.python_version()}, TensorFlow "
        f"{__import__('tensorflow').__version__}, Keras {keras.__version__},"
        " ai-edge-litert 2.3.0, litert-quantizer 0.11.0; 2-core x86 host "
        "shared with other jobs. Digits (1347 train / 450 test); "
        f"{CALIBRATION} training images calibrate both routes. Medians over "
        f"seeds {seeds}. Agreement: same top-1 as the Keras model on the "
        "450 test images. Latency: LiteRT, 1 thread, batch 1, median of 3 "
        "medians of 50 runs (x86 host: int8 is not faster than float here). "
        "Selective rows: layers chosen by `select_precision(min_agreement="
        "0.99)` on test images 0-224; their accuracy and agreement are on "
        "test images 225-449 ('vs Keras': against Keras on those).",
        "",
    ]
    for name, per_seed in results.items():
        keras_acc = statistics.median(r["keras_acc"] for r in per_seed)
        lines += [
            f"### {name}: Keras accuracy {100 * keras_acc:.2f}%",
            "",
            "| file | TFLite acc | vs Keras | agreement | bytes | int8_only "
            "| latency ms | layers kept | int8 ops |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for key in [k for k in per_seed[0] if k != "keras_acc"]:
            rows = [r[key] for r in per_seed]
            kept = (
                f"{_median(rows, 'layers'):g}" if "layers" in rows[0] else "-"
            )
            ops = (
                f"{100 * _median(rows, 'int8_ops'):.1f}%"
                if "int8_ops" in rows[0]
                else "-"
            )
            lines.append(
                f"| {key} | {100 * _median(rows, 'acc'):.2f}% | "
                f"{100 * _median(rows, 'delta'):+.2f} | "
                f"{100 * _median(rows, 'agreement'):.2f}% | "
                f"{_median(rows, 'bytes'):,.0f} | "
                f"{'yes' if all(r['int8_only'] for r in rows) else 'no'} | "
                f"{_median(rows, 'latency'):.3f} | {kept} | {ops} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--train-only", action="store_true")
    parser.add_argument(
        "--no-selective",
        action="store_true",
        help="skip select_precision (the slowest rows)",
    )
    parser.add_argument("--output", default=None)
    parser.add_argument(
        "--cache", default=os.path.join(tempfile.gettempdir(), "ptq_models")
    )
    args = parser.parse_args(argv)
    names = [
        n for n in MODELS if not args.models or any(m in n for m in args.models)
    ]
    command = "python -m benchmarks.ptq --seeds " + " ".join(
        str(s) for s in args.seeds
    )
    command += " --quick" if args.quick else ""
    command += " --no-selective" if args.no_selective else ""
    if args.models:
        command += " --models " + " ".join(args.models)
    results = {}
    for name in names:
        results[name] = []
        for seed in args.seeds:
            model, data = trained(name, seed, args.quick, args.cache)
            if args.train_only:
                continue
            with tempfile.TemporaryDirectory() as folder:
                results[name].append(
                    measure(model, data, folder, not args.no_selective)
                )
            print(name, seed, results[name][-1], flush=True)
    if args.train_only:
        return
    text = to_markdown(results, command, args.seeds)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    output = args.output or os.path.join(HERE, "results", "ptq.md")
    with open(output, "w") as f:
        f.write(text)
    print(text)
    np.set_printoptions()


if __name__ == "__main__":
    main()
