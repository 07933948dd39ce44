"""Benchmark: transfer learning on the offline digits.

1. Offline transfer: the demo CNN trained on digits 0-4 is transferred to
   digits 5-9 with 10 labelled images per class: a new head on the frozen
   body, the same then fine-tuned, and the same CNN from scratch on the 50
   images, over 3 seeds (seed = which 50 images, and the initialisation of
   the head / scratch model). Accuracy on the held-out 5-9 test images.
2. Feature caching: MobileNetV2 (alpha 0.35, 96x96, weights=None) on the
   digits resized to 96x96x3: seconds to train a Dense head with
   `extract_features` + head `fit` (extraction included) vs a frozen-body
   `fit`, the same epochs, interleaved in each repeat.

    python -m benchmarks.transfer            # writes results/transfer.md
    python -m benchmarks.transfer --quick    # smoke run
"""

import argparse
import datetime
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_slim import datasets  # noqa: E402
from keras_slim import models  # noqa: E402
from keras_slim import transfer  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results", "transfer.md")


def _compile(model, lr):
    model.compile(
        keras.optimizers.Adam(lr),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _split(x, y, classes):
    keep = np.isin(y, classes)
    return x[keep], (y[keep] - min(classes)).astype("int32")


def _accuracy(model, x, y):
    logits = model.predict(x, verbose=0, batch_size=256)
    return float(np.mean(np.argmax(logits, -1) == y))


def _fit_steps(model, x, y, steps, batch_size=50):
    """`steps` optimizer steps on a tiny set (repeated, not re-traced)."""
    reps = int(np.ceil(steps * batch_size / len(x)))
    xs, ys = np.tile(x, (reps, 1, 1, 1)), np.tile(y, reps)
    epochs = 5
    per_epoch = steps // epochs
    model.fit(
        xs,
        ys,
        batch_size=batch_size,
        epochs=epochs,
        steps_per_epoch=per_epoch,
        verbose=0,
    )


def offline_transfer(args):
    (x, y), (x_test, y_test) = datasets.load_digits(32, seed=0)
    xs, ys = _split(x, y, range(5))
    xt, yt = _split(x_test, y_test, range(5, 10))
    x59, y59 = _split(x, y, range(5, 10))
    keras.utils.set_random_seed(0)
    source = _compile(models.small_cnn(num_classes=5), 1e-3)
    source.fit(xs, ys, batch_size=64, epochs=args.source_epochs, verbose=0)
    source_acc = _accuracy(source, *_split(x_test, y_test, range(5)))
    rows = {"frozen-body head": [], "fine-tuned": [], "from scratch": []}
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        idx = np.concatenate(
            [
                rng.choice(np.flatnonzero(y59 == c), 10, replace=False)
                for c in range(5)
            ]
        )
        fx, fy = x59[idx], y59[idx]
        # Frozen body, new head.
        keras.utils.set_random_seed(seed)
        model = transfer.swap_head(source, 5, dropout=0.0)
        transfer.freeze(model, up_to="gap")
        _compile(model, 1e-2)
        _fit_steps(model, fx, fy, args.steps)
        rows["frozen-body head"].append(_accuracy(model, xt, yt))
        # Then fine-tune the whole body (BatchNorm kept frozen).
        transfer.unfreeze(model)
        model.optimizer.learning_rate.assign(3e-4)
        _fit_steps(model, fx, fy, args.steps)
        rows["fine-tuned"].append(_accuracy(model, xt, yt))
        # From scratch on the same 50 images.
        keras.utils.set_random_seed(seed)
        scratch = _compile(models.small_cnn(num_classes=5), 1e-3)
        _fit_steps(scratch, fx, fy, 2 * args.steps)
        rows["from scratch"].append(_accuracy(scratch, xt, yt))
        print(
            f"seed {seed}: "
            + ", ".join(f"{k} {v[-1]:.3f}" for k, v in rows.items()),
            flush=True,
        )
    return source_acc, rows, len(yt)


def feature_caching(args):
    (x, y), _ = datasets.load_digits(96, seed=0, channels=3)
    x, y = x[: args.images], y[: args.images]
    times = {"cached": [], "frozen": []}
    accs = {"cached": [], "frozen": []}
    for repeat in range(args.repeats):
        keras.utils.set_random_seed(repeat)
        base = keras.applications.MobileNetV2(
            input_shape=(96, 96, 3),
            alpha=0.35,
            include_top=False,
            weights=None,
            pooling="avg",
        )
        transfer.freeze(base)
        for way in (
            ("cached", "frozen") if repeat % 2 == 0 else ("frozen", "cached")
        ):
            keras.utils.set_random_seed(repeat)
            head = keras.Sequential(
                [keras.Input((base.output_shape[-1],)), keras.layers.Dense(10)]
            )
            start = time.perf_counter()
            if way == "cached":
                feats = transfer.extract_features(base, x, batch_size=64)
                _compile(head, 1e-3).fit(
                    feats, y, batch_size=32, epochs=args.epochs, verbose=0
                )
                model = transfer.attach_head(base, head)
            else:
                model = transfer.attach_head(base, head)
                _compile(model, 1e-3).fit(
                    x, y, batch_size=32, epochs=args.epochs, verbose=0
                )
            times[way].append(time.perf_counter() - start)
            accs[way].append(_accuracy(model, x, y))
        print(
            f"repeat {repeat}: cached {times['cached'][-1]:.1f}s, "
            f"frozen {times['frozen'][-1]:.1f}s",
            flush=True,
        )
    return times, accs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="head epochs of the feature-caching part (default 10)",
    )
    args = parser.parse_args(argv)
    head_epochs = args.epochs
    args.seeds = 1 if args.quick else 3
    args.source_epochs = 3 if args.quick else 15
    args.steps = 20 if args.quick else 100
    args.repeats = 1 if args.quick else 3
    args.epochs = head_epochs or (2 if args.quick else 10)
    args.images = 128 if args.quick else 512
    started = time.perf_counter()
    source_acc, rows, n_test = offline_transfer(args)
    times, accs = feature_caching(args)
    minutes = (time.perf_counter() - started) / 60

    med = {k: float(np.median(v)) for k, v in rows.items()}
    gain = min(med["frozen-body head"], med["fine-tuned"]) - med["from scratch"]
    best_gain = (
        max(med["frozen-body head"], med["fine-tuned"]) - med["from scratch"]
    )
    cached, frozen = np.median(times["cached"]), np.median(times["frozen"])
    speedup = frozen / cached
    cmd = (
        "python -m benchmarks.transfer"
        + (" --quick" if args.quick else "")
        + (f" --epochs {head_epochs}" if head_epochs else "")
    )
    lines = [
        "## Transfer learning",
        "",
        f"`{cmd}` from the repository root; date "
        f"{datetime.date.today().isoformat()}; tensorflow {tf.__version__}, "
        f"keras {keras.__version__}; {minutes:.1f} min. The machine (2 "
        "cores) was shared with other agents while this ran: absolute "
        "seconds are noisy, the ratio is measured interleaved in one run.",
        "",
        "### Offline transfer: digits 0-4 -> digits 5-9, 10 images a class",
        "",
        f"Source: the demo CNN (`keras_slim.models.small_cnn`, 5 classes) "
        f"trained {args.source_epochs} epochs on the "
        "digits 0-4 of the training split "
        f"(test accuracy on 0-4: {source_acc:.1%}). Target: 50 labelled "
        f"images of 5-9 (seeds 0..{args.seeds - 1} choose them and the new "
        f"head's initialisation); accuracy on the {n_test} held-out 5-9 "
        f"test images. Frozen-body head: `swap_head` + `freeze(up_to='gap')`"
        f", Adam 1e-2, {args.steps} steps. Fine-tuned: then `unfreeze` "
        f"(BatchNorm kept frozen), Adam 3e-4, {args.steps} more steps. From "
        f"scratch: the same CNN, random init, Adam 1e-3, {2 * args.steps} "
        "steps (as many as the fine-tuned model in total).",
        "",
        "| Model | "
        + " | ".join(f"seed {s}" for s in range(args.seeds))
        + " | median |",
        "|---|" + "---:|" * (args.seeds + 1),
    ]
    for name, values in rows.items():
        lines.append(
            f"| {name} | "
            + " | ".join(f"{v:.1%}" for v in values)
            + f" | {med[name]:.1%} |"
        )
    lines += [
        "",
        f"Transfer beats scratch by {gain * 100:+.1f} points (worse of the "
        f"two transfer rows, medians; best: {best_gain * 100:+.1f}). Goal: "
        f">= +10 points: {'met' if gain >= 0.10 else 'missed'}.",
        "",
        "### Feature caching: MobileNetV2 alpha 0.35, 96x96",
        "",
        f"`keras.applications.MobileNetV2(input_shape=(96, 96, 3), "
        f"alpha=0.35, include_top=False, pooling='avg', weights=None)`, "
        f"frozen; {args.images} digits resized to 96x96x3; a Dense(10) head,"
        f" {args.epochs} epochs, batch 32, Adam 1e-3; {args.repeats} "
        "repeats, order alternated, medians. Cached: `extract_features` "
        "(counted) then the head's `fit`, then `attach_head`. Frozen body: "
        "`fit` of the attached model with the body frozen.",
        "",
        "| Way | seconds (median) | train accuracy (median) |",
        "|---|---:|---:|",
        f"| `extract_features` + head fit | {cached:.2f} | "
        f"{np.median(accs['cached']):.1%} |",
        f"| frozen-body `fit` | {frozen:.2f} | "
        f"{np.median(accs['frozen']):.1%} |",
        "",
        f"Speed-up: {speedup:.1f}x. Goal: >= 5x: "
        f"{'met' if speedup >= 5 else 'missed'}. (Random, not pretrained, "
        "weights: the accuracy only checks that both ways train the same "
        "head; with the internet use `weights='imagenet'`.)",
        "",
    ]
    text = "\n".join(lines)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
