"""Benchmark: transfer learning on the offline digits.

1. Offline transfer: the demo CNN trained on digits 0-4 is transferred to
   digits 5-9 with 10 labelled images per class (and, as extra rows, 1 and
   3): a new head on the frozen body (on the GAP features, and on the
   spatial features before GAP), the spatial head then fine-tuned, the same
   CNN from scratch, and a linear model on the raw pixels as a reference,
   over 3 seeds (seed = which images, and the initialisation). Every row
   picks its learning rate from a 4-value sweep by the median accuracy on
   the unlabelled rest of the 5-9 training split; accuracy is reported on
   the held-out 5-9 test images.
2. Feature caching: MobileNetV2 (alpha 0.35, 96x96, weights=None) on the
   digits resized to 96x96x3 (512 images, and the whole 1347-image
   training split): seconds to train a Dense head with
   `extract_features` + head `fit` (extraction included) vs a frozen-body
   `fit`, the same epochs, interleaved in each repeat; and the seconds of
   `extract_features` on train + test images before and after it reused
   its traced body and kept every batch the same shape.

    python -m benchmarks.transfer                  # both parts
    python -m benchmarks.transfer --part offline   # results/transfer.md
    python -m benchmarks.transfer --part caching   # results/transfer_caching.md
    python -m benchmarks.transfer --quick          # smoke run
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

from benchmarks._common import compile_classifier  # noqa: E402
from benchmarks._common import save_section  # noqa: E402
from keras_slim import datasets  # noqa: E402
from keras_slim import models  # noqa: E402
from keras_slim import transfer  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results", "transfer.md")
CACHING_RESULTS = os.path.join(
    os.path.dirname(__file__), "results", "transfer_caching.md"
)


def _split(x, y, classes):
    keep = np.isin(y, classes)
    return x[keep], (y[keep] - min(classes)).astype("int32")


def _accuracy(model, x, y):
    logits = model.predict(x, verbose=0, batch_size=256)
    return float(np.mean(np.argmax(logits, -1) == y))


def _fit_steps(model, x, y, steps, batch_size=50):
    """`steps` optimizer steps on a tiny set (repeated, not re-traced)."""
    reps = int(np.ceil(steps * batch_size / len(x)))
    xs = np.tile(x, (reps,) + (1,) * (x.ndim - 1))
    epochs = 5
    model.fit(
        xs,
        np.tile(y, reps),
        batch_size=batch_size,
        epochs=epochs,
        steps_per_epoch=steps // epochs,
        verbose=0,
    )


def _labelled(y59, k, seed):
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [
            rng.choice(np.flatnonzero(y59 == c), k, replace=False)
            for c in range(5)
        ]
    )


def _head_on(features, lr, seed):
    keras.utils.set_random_seed(seed)
    return compile_classifier(
        keras.Sequential(
            [keras.Input(features.shape[1:]), keras.layers.Dense(5)]
        ),
        lr,
    )


def _sweep(run, lrs, seeds):
    """{lr: ([val acc per seed], [test acc per seed])} of `run(lr, seed)`."""
    out = {}
    for lr in lrs:
        val, test = zip(*(run(lr, s) for s in seeds))
        out[lr] = (list(val), list(test))
    return out


def _pick(sweep):
    """The learning rate with the best median validation accuracy."""
    lr = max(sweep, key=lambda r: (np.median(sweep[r][0]), -r))
    return lr, sweep[lr][1]


def offline_transfer(args):
    (x, y), (x_test, y_test) = datasets.load_digits(32, seed=0)
    xs, ys = _split(x, y, range(5))
    xt, yt = _split(x_test, y_test, range(5, 10))
    x59, y59 = _split(x, y, range(5, 10))
    keras.utils.set_random_seed(0)
    source = compile_classifier(models.small_cnn(num_classes=5), 1e-3)
    source.fit(xs, ys, batch_size=64, epochs=args.source_epochs, verbose=0)
    source_acc = _accuracy(source, *_split(x_test, y_test, range(5)))
    # Features of every 5-9 image, once: GAP (the source's own head input)
    # and the spatial map before it (relu4, 8x8x64, flattened).
    feats = {}
    for name, layer in (("gap", None), ("spatial", "relu4")):
        tr = transfer.extract_features(source, x59, layer=layer, batch_size=256)
        te = transfer.extract_features(source, xt, layer=layer, batch_size=256)
        feats[name] = (tr.reshape(len(tr), -1), te.reshape(len(te), -1))
    feats["pixels"] = (x59.reshape(len(x59), -1), xt.reshape(len(xt), -1))
    seeds = range(args.seeds)
    results = {}
    for k in args.shots:
        picks = {s: _labelled(y59, k, s) for s in seeds}
        rests = {s: np.setdiff1d(np.arange(len(y59)), picks[s]) for s in seeds}

        def head_run(kind, lr, s):
            ftr, fte = feats[kind]
            idx, rest = picks[s], rests[s]
            head = _head_on(ftr, lr, s)
            _fit_steps(head, ftr[idx], y59[idx], args.steps)
            return _accuracy(head, ftr[rest], y59[rest]), _accuracy(
                head, fte, yt
            )

        rows, lrs = {}, {}
        for kind, row in (
            ("gap", "frozen body, head on GAP features"),
            ("spatial", "frozen body, head on spatial features"),
            ("pixels", "reference: linear model on raw pixels"),
        ):
            sweep = _sweep(
                lambda lr, s, kind=kind: head_run(kind, lr, s),
                args.head_lrs,
                seeds,
            )
            lrs[row], rows[row] = _pick(sweep)
        head_lr = lrs["frozen body, head on spatial features"]

        def fine_tune(lr, s):
            idx, rest = picks[s], rests[s]
            keras.utils.set_random_seed(s)
            model = transfer.swap_head(source, 5, dropout=0.0, head_layer="gap")
            transfer.freeze(model, up_to="relu4")
            compile_classifier(model, head_lr)
            _fit_steps(model, x59[idx], y59[idx], args.steps)
            transfer.unfreeze(model)  # BatchNorm stays frozen
            model.optimizer.learning_rate.assign(lr)
            _fit_steps(model, x59[idx], y59[idx], args.steps)
            return _accuracy(model, x59[rest], y59[rest]), _accuracy(
                model, xt, yt
            )

        def scratch(lr, s):
            idx, rest = picks[s], rests[s]
            keras.utils.set_random_seed(s)
            model = compile_classifier(models.small_cnn(num_classes=5), lr)
            _fit_steps(model, x59[idx], y59[idx], 2 * args.steps)
            return _accuracy(model, x59[rest], y59[rest]), _accuracy(
                model, xt, yt
            )

        row = "fine-tuned (spatial head, then whole body)"
        lrs[row], rows[row] = _pick(_sweep(fine_tune, args.tune_lrs, seeds))
        row = "from scratch"
        lrs[row], rows[row] = _pick(_sweep(scratch, args.scratch_lrs, seeds))
        results[k] = (rows, lrs)
        print(
            f"{k} a class: "
            + ", ".join(
                f"{r} {np.median(v):.3f} (lr {lrs[r]:g})"
                for r, v in rows.items()
            ),
            flush=True,
        )
    return source_acc, results, len(yt), len(y59)


class _EpochEnds(keras.callbacks.Callback):
    """perf_counter() at the end of every epoch."""

    def on_train_begin(self, logs=None):
        self.ends = []

    def on_epoch_end(self, epoch, logs=None):
        self.ends.append(time.perf_counter())


def _old_extract_features(model, x, batch_size):
    """extract_features before this change: a new body model each call."""
    body = keras.Model(model.inputs, model.outputs[0])
    return body.predict(x, batch_size=batch_size, verbose=0)


def _headless_mobilenet():
    """MobileNetV2 alpha 0.35 at 96x96, random weights, GAP features."""
    return keras.applications.MobileNetV2(
        input_shape=(96, 96, 3),
        alpha=0.35,
        include_top=False,
        weights=None,
        pooling="avg",
    )


def _time_head(base, x, y, way, repeat, epochs):
    """Seconds (total, per epoch end) and train accuracy of one head."""
    keras.utils.set_random_seed(repeat)
    head = keras.Sequential(
        [keras.Input((base.output_shape[-1],)), keras.layers.Dense(10)]
    )
    ends = _EpochEnds()
    start = time.perf_counter()
    if way == "cached":
        feats = transfer.extract_features(base, x, batch_size=64)
        compile_classifier(head, 1e-3).fit(
            feats, y, batch_size=32, epochs=epochs, verbose=0, callbacks=[ends]
        )
        model = transfer.attach_head(base, head)
    else:
        model = transfer.attach_head(base, head)
        compile_classifier(model, 1e-3).fit(
            x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=[ends]
        )
    total = time.perf_counter() - start
    return total, [e - start for e in ends.ends], _accuracy(model, x, y)


def feature_caching(args):
    (x_all, y_all), (x_test, _) = datasets.load_digits(96, seed=0, channels=3)
    runs = {n: {"cached": [], "frozen": []} for n in args.sizes}
    extract = {"before": [], "after": []}
    for repeat in range(args.repeats):
        for n in args.sizes:
            # A fresh frozen backbone per size and repeat: nothing traced
            # is shared between sizes, and each way pays its own tracing.
            keras.utils.set_random_seed(repeat)
            base = _headless_mobilenet()
            transfer.freeze(base)
            order = (
                ("cached", "frozen")
                if repeat % 2 == 0
                else ("frozen", "cached")
            )
            for way in order:
                total, ends, acc = _time_head(
                    base, x_all[:n], y_all[:n], way, repeat, args.epochs
                )
                runs[n][way].append(
                    {
                        "seconds": total,
                        "seconds_at_short": ends[args.short_epochs - 1],
                        "accuracy": acc,
                    }
                )
            print(
                f"repeat {repeat}, {n} images: cached "
                f"{runs[n]['cached'][-1]['seconds']:.1f}s, frozen "
                f"{runs[n]['frozen'][-1]['seconds']:.1f}s",
                flush=True,
            )
        # extract_features before and after the fix: train then test
        # features of the whole split (last batches smaller than 32).
        for when in ("before", "after") if repeat % 2 else ("after", "before"):
            keras.utils.set_random_seed(repeat)
            fresh = _headless_mobilenet()
            start = time.perf_counter()
            for data in (x_all[: args.split_images], x_test):
                if when == "before":
                    _old_extract_features(fresh, data, 32)
                else:
                    transfer.extract_features(fresh, data, batch_size=32)
            extract[when].append(time.perf_counter() - start)
        print(
            f"repeat {repeat}: extract before {extract['before'][-1]:.1f}s "
            f"after {extract['after'][-1]:.1f}s",
            flush=True,
        )
    return runs, extract, len(x_test)


def _pct(values):
    return " / ".join(f"{v:.1%}" for v in values)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--part",
        choices=("both", "offline", "caching"),
        default="both",
        help="which part to run: offline transfer (results/transfer.md), "
        "feature caching (results/transfer_caching.md), or both",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="head epochs of the feature-caching part (default 30)",
    )
    args = parser.parse_args(argv)
    head_epochs = args.epochs
    args.seeds = 1 if args.quick else 3
    args.source_epochs = 3 if args.quick else 15
    args.steps = 20 if args.quick else 100
    args.shots = (10,) if args.quick else (10, 3, 1)
    args.head_lrs = (1e-3, 1e-2) if args.quick else (1e-3, 3e-3, 1e-2, 3e-2)
    args.tune_lrs = (3e-4,) if args.quick else (1e-4, 3e-4, 1e-3, 3e-3)
    args.scratch_lrs = (1e-3,) if args.quick else (3e-4, 1e-3, 3e-3, 1e-2)
    args.repeats = 1 if args.quick else 3
    args.epochs = head_epochs or (3 if args.quick else 30)
    args.short_epochs = min(10, args.epochs)
    args.sizes = (128,) if args.quick else (512, 1347)
    args.split_images = 200 if args.quick else 1347
    args.cmd = (
        "python -m benchmarks.transfer"
        + (" --quick" if args.quick else "")
        + (f" --part {args.part}" if args.part != "both" else "")
        + (f" --epochs {head_epochs}" if head_epochs else "")
    )
    if args.part in ("both", "offline"):
        started = time.perf_counter()
        source_acc, results, n_test, n_59 = offline_transfer(args)
        minutes = (time.perf_counter() - started) / 60
        save_section(
            RESULTS,
            _offline_text(args, minutes, source_acc, results, n_test, n_59),
        )
    if args.part in ("both", "caching"):
        started = time.perf_counter()
        runs, extract, n_x_test = feature_caching(args)
        minutes = (time.perf_counter() - started) / 60
        save_section(
            CACHING_RESULTS,
            _caching_text(args, minutes, runs, extract, n_x_test),
        )


def _header(args, minutes):
    return (
        f"`{args.cmd}` from the repository root; date "
        f"{datetime.date.today().isoformat()}; tensorflow {tf.__version__}, "
        f"keras {keras.__version__}; {minutes:.1f} min for this part."
    )


def _offline_text(args, minutes, source_acc, results, n_test, n_59):
    lines = [
        "## Transfer learning",
        "",
        _header(args, minutes),
        "",
        "### Offline transfer: digits 0-4 -> digits 5-9",
        "",
        "Source: the demo CNN (`keras_slim.models.small_cnn`, 5 classes) "
        f"trained {args.source_epochs} epochs on the digits 0-4 of the "
        f"training split (test accuracy on 0-4: {source_acc:.1%}). Target: "
        f"k labelled images of each of 5-9 (seeds 0..{args.seeds - 1} "
        "choose them and the initialisation); accuracy on the "
        f"{n_test} held-out 5-9 test images. Rows:",
        "",
        "- *frozen body, head on GAP features*: `extract_features` of the "
        "source's own head input (global average pooling, 64 values) and a "
        f"Dense(5) head, {args.steps} steps (the same as `swap_head` + "
        "`freeze` with BatchNorm frozen and no dropout).",
        "- *frozen body, head on spatial features*: the same on "
        "`extract_features(layer='relu4')` (the 8x8x64 map before GAP, "
        "flattened: `swap_head(head_layer='gap')`).",
        f"- *fine-tuned*: `swap_head(head_layer='gap')`, `freeze(up_to="
        f"'relu4')`, {args.steps} head steps at the spatial head's learning "
        f"rate, then `unfreeze` (BatchNorm kept frozen) and {args.steps} "
        "more steps of the whole network.",
        f"- *from scratch*: the same CNN, random init, {2 * args.steps} "
        "steps (as many as the fine-tuned model in total).",
        "- *reference: linear model on raw pixels*: a Dense(5) on the "
        f"32x32 pixels, {args.steps} steps: how hard the task is.",
        "",
        f"All with Adam, batches of 50 (the k x 5 images repeated). Every "
        "row picks its learning rate the same way: from a 4-value sweep "
        f"(heads and pixels {args.head_lrs}, fine-tuning {args.tune_lrs}, "
        f"scratch {args.scratch_lrs}), the value with the best median "
        "accuracy over the seeds on the unlabelled rest of the 5-9 "
        f"training split (~{n_59} images, never trained on); the test "
        "images only score the chosen value.",
        "",
    ]
    record = {"source_test_accuracy_0_4": source_acc, "shots": {}}
    gain10 = None
    for k, (rows, lrs) in results.items():
        med = {r: float(np.median(v)) for r, v in rows.items()}
        transfer_rows = [r for r in rows if not r.startswith(("from", "ref"))]
        best = max(transfer_rows, key=med.get)
        gain = med[best] - med["from scratch"]
        label = f"#### {k} labelled images a class" + (
            " (the issue's experiment)"
            if k == 10
            else " (additional information, not the issue's experiment)"
        )
        lines += [
            label,
            "",
            "| Model | learning rate | test accuracy, seeds "
            f"0..{args.seeds - 1} | median |",
            "|---|---:|---:|---:|",
        ]
        for r, v in rows.items():
            lines.append(f"| {r} | {lrs[r]:g} | {_pct(v)} | {med[r]:.1%} |")
        lines += [
            "",
            f"Best transfer row ({best}) minus scratch: {gain * 100:+.1f} "
            "points (medians).",
            "",
        ]
        if k == 10:
            gain10 = gain
        record["shots"][k] = {
            "test_accuracy": rows,
            "learning_rate": lrs,
            "best_transfer_minus_scratch": gain,
        }
    if gain10 is not None:
        lines += [
            "Goal (10 images a class): transfer beats scratch by >= 10 "
            f"points: {'met' if gain10 >= 0.10 else 'missed'} "
            f"({gain10 * 100:+.1f}).",
            "",
        ]

    lines += [
        "Raw:",
        "",
        "```json",
        json.dumps(record, indent=1, default=float),
        "```",
        "",
    ]
    return "\n".join(lines)


def _caching_text(args, minutes, runs, extract, n_x_test):
    def med(n, way, key):
        return float(np.median([r[key] for r in runs[n][way]]))

    def med_short(n, way):
        return med(n, way, "seconds_at_short")

    e_before, e_after = (
        np.median(extract["before"]),
        np.median(extract["after"]),
    )
    lines = [
        "## Transfer learning: feature caching (MobileNetV2 alpha 0.35, 96x96)",
        "",
        _header(args, minutes),
        "",
        "`keras.applications.MobileNetV2(input_shape=(96, 96, 3), "
        "alpha=0.35, include_top=False, pooling='avg', weights=None)`, "
        "frozen; the first n digits of the training split resized to "
        f"96x96x3 (n = {', '.join(map(str, args.sizes))}); a Dense(10) "
        f"head, {args.epochs} epochs (the head budget; the time at the end "
        f"of epoch {args.short_epochs} is read from the same runs), batch "
        f"32, Adam 1e-3; {args.repeats} repeats, order alternated, a fresh "
        "backbone per size and repeat, medians. Cached: `extract_features` "
        "(batch 64, counted) then the head's `fit`, then `attach_head`. "
        "Frozen body: `fit` of the attached model with the body frozen. "
        "Both include their one-off tracing and compilation.",
        "",
        f"| images | way | seconds, {args.epochs} epochs | seconds, first "
        f"{args.short_epochs} epochs | train accuracy | speed-up, "
        f"{args.epochs} epochs ({args.short_epochs}) |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    speedups = {}
    for n in args.sizes:
        c, f = med(n, "cached", "seconds"), med(n, "frozen", "seconds")
        sc, sf = med_short(n, "cached"), med_short(n, "frozen")
        ratios = [
            fr["seconds"] / ca["seconds"]
            for ca, fr in zip(runs[n]["cached"], runs[n]["frozen"])
        ]
        speedups[n] = float(np.median(ratios))
        lines += [
            f"| {n} | `extract_features` + head fit | {c:.2f} | {sc:.2f} | "
            f"{med(n, 'cached', 'accuracy'):.1%} | |",
            f"| {n} | frozen-body `fit` | {f:.2f} | {sf:.2f} | "
            f"{med(n, 'frozen', 'accuracy'):.1%} | {speedups[n]:.1f}x "
            f"({sf / sc:.1f}x) |",
        ]
    full = max(args.sizes)
    lines += [
        "",
        "Speed-up = median over repeats of (frozen seconds / cached "
        "seconds) in the same repeat. Goal: >= 5x, same epochs, at the "
        f"{args.epochs}-epoch head budget on the whole training split "
        f"({full} images): "
        f"{'met' if speedups[full] >= 5 else 'missed'} "
        f"({speedups[full]:.1f}x). The speed-up grows with the number of "
        "images, since the one-off tracing of the body is paid by both "
        "ways and the body's forward pass is paid once by one and every "
        "epoch by the other. (Random, not pretrained, weights: the "
        "accuracy only checks that both ways train the same head; with "
        "the internet use `weights='imagenet'`.)",
        "",
        f"`extract_features` itself, train ({args.split_images}) then test "
        f"({n_x_test}) images of a fresh MobileNetV2, batch 32 (both "
        "counts leave a smaller last batch): before this change (a new "
        "body model per call, so a new trace per call, and a second trace "
        f"for the smaller last batch) {e_before:.2f} s; after (the body "
        "and its traced predict function reused, the last batch padded to "
        f"full size) {e_after:.2f} s: {e_before / e_after:.1f}x.",
        "",
        "Raw:",
        "",
        "```json",
        json.dumps(
            {
                "epochs": args.epochs,
                "runs": {str(n): r for n, r in runs.items()},
                "speedup": {str(n): v for n, v in speedups.items()},
                "extract_features_seconds": extract,
            },
            indent=1,
            default=float,
        ),
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
