"""Benchmark: knowledge distillation on the digits.

Side by side, for each seed: a small student trained alone, the same
student distilled by Keras 3's `keras.distillation.Distiller` with its
default logits loss (`LogitsDistillation()`), and by
`keras_slim.distillation.Distiller` with its defaults (T=4, alpha=0.1),
from the demo CNN teacher. Then seconds per epoch, measured interleaved
(one epoch of each variant per repeat, steady-state medians), relative
to the student alone: distillation with the teacher run at every step,
and from `cache_teacher_outputs`; with the demo CNN teacher and with a
MobileNetV2(alpha=0.35) teacher at 96x96 (briefly trained), where the
cache matters.

    python -m benchmarks.distillation          # writes results/distillation.md
    python -m benchmarks.distillation --quick  # smoke run
"""

import argparse
import datetime
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_slim import datasets  # noqa: E402
from keras_slim import models  # noqa: E402
from keras_slim.distillation import Distiller  # noqa: E402
from keras_slim.distillation import cache_teacher_outputs  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results", "distillation.md")
BATCH = 32


def _compile(model, lr):
    model.compile(
        keras.optimizers.Adam(lr),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _student(seed):
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((32, 32, 1)),
            layers.AveragePooling2D(4),
            layers.Flatten(),
            layers.Dense(32, activation="relu"),
            layers.Dense(10),
        ],
        name="student",
    )


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


def _subset(x, y, n, noise, seed):
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))[:n]
    xs, ys = x[idx], y[idx].copy()
    flip = rng.random(len(ys)) < noise
    ys[flip] = rng.integers(0, 10, int(flip.sum()))
    return xs, ys


def accuracy_runs(teacher, data, args):
    (x, y), (x_test, y_test) = data
    rows = {
        "student alone": [],
        "Keras Distiller default": [],
        "keras_slim Distiller": [],
    }
    for seed in range(args.seeds):
        xs, ys = _subset(x, y, args.train_samples, args.label_noise, seed)
        fit = dict(batch_size=BATCH, epochs=args.epochs, verbose=0)

        alone = _compile(_student(seed), args.lr)
        alone.fit(xs, ys, **fit)
        rows["student alone"].append(_accuracy(alone, x_test, y_test))

        student = _student(seed)
        kd = keras.distillation.Distiller(
            teacher,
            student,
            distillation_losses=keras.distillation.LogitsDistillation(),
        )
        kd.compile(
            keras.optimizers.Adam(args.lr),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        kd.fit(xs, ys, **fit)
        rows["Keras Distiller default"].append(
            _accuracy(student, x_test, y_test)
        )

        student = _student(seed)
        ours = _compile(Distiller(teacher, student), args.lr)
        ours.fit(xs, ys, **fit)
        rows["keras_slim Distiller"].append(_accuracy(student, x_test, y_test))
        print(seed, {k: v[-1] for k, v in rows.items()}, flush=True)
    return rows


def _timed_epoch(model, x, targets):
    start = time.perf_counter()
    model.fit(x, targets, batch_size=BATCH, epochs=1, verbose=0)
    return time.perf_counter() - start


def timing_runs(teacher, x, y, repeats, lr):
    """Seconds per epoch of each variant, one epoch each per repeat."""
    start = time.perf_counter()
    cached = cache_teacher_outputs(teacher, x)
    cache_s = time.perf_counter() - start
    variants = {
        "student alone": (_compile(_student(0), lr), y),
        "keras_slim Distiller, teacher every step": (
            _compile(Distiller(teacher, _student(0)), lr),
            y,
        ),
        "keras_slim Distiller, cached teacher": (
            _compile(Distiller(teacher, _student(0)), lr),
            {"labels": y, "teacher_outputs": cached},
        ),
    }
    for model, targets in variants.values():
        _timed_epoch(model, x, targets)  # traces: not measured
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, (model, targets) in variants.items():
            times[name].append(_timed_epoch(model, x, targets))
    medians = {name: float(np.median(t)) for name, t in times.items()}
    base = medians["student alone"]
    return {
        name: {"s_per_epoch": m, "ratio": m / base, "all": times[name]}
        for name, m in medians.items()
    }, cache_s


def mobilenet_teacher(x, y, epochs, lr):
    """MobileNetV2(alpha=0.35) at 96x96x3, fed the 32x32x1 digits."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 1))
    h = keras.layers.Resizing(96, 96)(inputs)
    h = keras.layers.Concatenate()([h, h, h])
    backbone = keras.applications.MobileNetV2(
        input_shape=(96, 96, 3),
        alpha=0.35,
        weights=None,
        classes=10,
        classifier_activation=None,
    )
    model = keras.Model(inputs, backbone(h), name="mobilenet_teacher")
    _compile(model, lr).fit(x, y, batch_size=64, epochs=epochs, verbose=0)
    return model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    args.seeds = 1 if args.quick else 3
    args.teacher_epochs = 5 if args.quick else 20
    args.train_samples = 300
    args.label_noise = 0.4
    args.epochs = 10 if args.quick else 60
    args.lr = 3e-3
    repeats = 2 if args.quick else 5
    mobilenet_epochs = 1 if args.quick else 3
    started = time.perf_counter()

    data = datasets.load_digits(image_size=32, seed=0)
    (x, y), (x_test, y_test) = data
    keras.utils.set_random_seed(0)
    teacher = _compile(models.small_cnn(name="teacher"), 1e-3)
    teacher.fit(x, y, batch_size=64, epochs=args.teacher_epochs, verbose=0)
    teacher_acc = _accuracy(teacher, x_test, y_test)
    print("teacher", teacher_acc, flush=True)

    rows = accuracy_runs(teacher, data, args)
    cnn_times, cnn_cache_s = timing_runs(teacher, x, y, repeats, args.lr)
    print(cnn_times, flush=True)
    big = mobilenet_teacher(x, y, mobilenet_epochs, 1e-3)
    big_acc = _accuracy(big, x_test, y_test)
    big_times, big_cache_s = timing_runs(big, x, y, repeats, args.lr)
    print(big_times, flush=True)
    minutes = (time.perf_counter() - started) / 60
    _write(
        args,
        repeats,
        mobilenet_epochs,
        teacher_acc,
        rows,
        cnn_times,
        cnn_cache_s,
        big,
        big_acc,
        big_times,
        big_cache_s,
        minutes,
    )


def _pct(v):
    return f"{100 * v:.1f}%"


def _write(
    args,
    repeats,
    mobilenet_epochs,
    teacher_acc,
    rows,
    cnn_times,
    cnn_cache_s,
    big,
    big_acc,
    big_times,
    big_cache_s,
    minutes,
):
    command = "python -m benchmarks.distillation" + (
        " --quick" if args.quick else ""
    )
    means = {k: float(np.mean(v)) for k, v in rows.items()}
    lines = [
        "## Knowledge distillation",
        "",
        f"Command: `{command}`; date {datetime.date.today()}; tensorflow "
        f"{tf.__version__}, keras {keras.__version__}; {minutes:.1f} min.",
        "",
        "Teacher: the demo CNN (`keras_slim.models.small_cnn`, 20,394 "
        f"parameters) trained {args.teacher_epochs} epochs on the 1347 "
        f"digits at 32x32: {_pct(teacher_acc)} test accuracy. Student: 4x4 "
        "average pooling, Dense(32, relu), Dense(10) (2,410 parameters). "
        f"Each student trains on {args.train_samples} training images"
        + (
            f" with {_pct(args.label_noise)} of labels replaced at random"
            if args.label_noise
            else ""
        )
        + f" (a different subset per seed), {args.epochs} epochs, Adam "
        f"{args.lr:g}, batch {BATCH}; test accuracy on the 450 test images. "
        "Keras Distiller default: `keras.distillation.Distiller(teacher, "
        "student, distillation_losses=LogitsDistillation())` "
        '(T=3, `"kl_divergence"` string, student_loss_weight=0.5). '
        "keras_slim Distiller: `Distiller(teacher, student)` (T=4, "
        "alpha=0.1, from_logits=True).",
        "",
        "| variant | mean of "
        f"{args.seeds} seeds | "
        + " | ".join(f"seed {s}" for s in range(args.seeds))
        + " |",
        "|---|---|" + "---|" * args.seeds,
    ]
    for name, values in rows.items():
        lines.append(
            f"| {name} | {_pct(means[name])} | "
            + " | ".join(_pct(v) for v in values)
            + " |"
        )
    gain = means["keras_slim Distiller"] - means["student alone"]
    lines += [
        "",
        "Goal: distilled student above the student alone on the mean of "
        f"{args.seeds} seeds: {100 * gain:+.1f} points "
        f"({'met' if gain > 0 else 'missed'}).",
        "",
        "Seconds per epoch over all 1347 training images (batch "
        f"{BATCH}), medians of {repeats} repeats measured interleaved (one "
        "epoch of each variant per repeat, after a first traced epoch), "
        "relative to the student alone. The machine (2 cores) was shared "
        "with other agents' jobs while this ran: rely on the ratios, not "
        "on the absolute seconds.",
        "",
        "| teacher | variant | s/epoch | vs student alone |",
        "|---|---|---|---|",
    ]
    big_name = (
        f"MobileNetV2 0.35, 96x96 ({big.count_params():,} params, "
        f"{mobilenet_epochs} epochs, {_pct(big_acc)})"
    )
    for teacher_name, times, cache_s in (
        ("demo CNN", cnn_times, cnn_cache_s),
        (big_name, big_times, big_cache_s),
    ):
        for name, t in times.items():
            lines.append(
                f"| {teacher_name} | {name} | {t['s_per_epoch']:.2f} | "
                f"{t['ratio']:.2f}x |"
            )
        lines.append(
            f"| {teacher_name} | one-off `cache_teacher_outputs` | "
            f"{cache_s:.2f} | - |"
        )
    cached = [
        t["keras_slim Distiller, cached teacher"]["ratio"]
        for t in (cnn_times, big_times)
    ]
    lines += [
        "",
        "Goal: with the cache, epoch <= 1.1x the student alone: "
        f"{cached[0]:.2f}x (demo CNN teacher), {cached[1]:.2f}x "
        f"(MobileNetV2 teacher) "
        f"({'met' if max(cached) <= 1.1 else 'missed'}).",
        "",
        "Raw figures (JSON):",
        "",
        "```",
        json.dumps(
            {
                "accuracy": rows,
                "epoch_cnn": cnn_times,
                "epoch_mobilenet": big_times,
            },
            sort_keys=True,
        ),
        "```",
        "",
    ]
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
