"""Benchmark: channel pruning of MobileNetV2 (alpha 0.35, 96x96) on digits.

Per run: train the model from scratch, then fine-tune the same weights
with the same budget (epochs, Adam with cosine decay) several ways: as is
(unpruned); after one-shot `prune_channels(fraction=0.5)` with the `l1`
and the `bn_gamma` criterion (plain fine-tune, the literal rows); and the
recommended recipe, gradual pruning: `ChannelPruning` raises the fraction
from 0 to 0.5 during the first half of the same fine-tune, then `shrink`
removes the zeroed channels. Optional rows (`--variants`): one-shot
bn_gamma 50% fine-tuned by distillation from the unpruned base (`kd_base`)
or from the fine-tuned unpruned model (`kd_unpruned`). Measure MACs,
params, int8 bytes, LiteRT latency (float32 and int8), accuracy and
fine-tuning time of each. Medians over the runs; ratios pruned / unpruned.

    python -m benchmarks.channel_pruning [--quick] [--repeats N]
        [--variants l1,bn_gamma,gradual,kd_base,kd_unpruned]
        [--kd-alpha A] [--kd-temperature T] [--out NAME]
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks._common import EpochTimer  # noqa: E402
from benchmarks._common import compile_classifier  # noqa: E402
from benchmarks._common import steady  # noqa: E402
from keras_slim import datasets  # noqa: E402
from keras_slim import export_tflite  # noqa: E402
from keras_slim import litert  # noqa: E402
from keras_slim import profile  # noqa: E402
from keras_slim.distillation import Distiller  # noqa: E402
from keras_slim.distillation import cache_teacher_outputs  # noqa: E402
from keras_slim.pruning.channels import ChannelPruning  # noqa: E402
from keras_slim.pruning.channels import prune_channels  # noqa: E402
from keras_slim.pruning.channels import shrink  # noqa: E402
from keras_slim.schedules import PolynomialDecay  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def _model(size):
    return keras.applications.MobileNetV2(
        input_shape=(size, size, 3),
        alpha=0.35,
        weights=None,
        classes=10,
        classifier_activation=None,
    )


def _bn_momentum(model, momentum):
    # Few batches an epoch (FINDINGS): faster moving statistics.
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "BatchNormalization":
            layer["config"]["momentum"] = momentum
    return keras.Model.from_config(config)


def _acc(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


def _measure(model, x_cal, x_test, y_test, folder, tag):
    p = profile(model)
    row = {
        "macs": p.macs,
        "params": p.total_params,
        "accuracy": _acc(model, x_test, y_test),
    }
    f32 = os.path.join(folder, f"{tag}_f32.tflite")
    i8 = os.path.join(folder, f"{tag}_i8.tflite")
    export_tflite(model, f32, quantization="float32")
    report = export_tflite(model, i8, representative_data=x_cal)
    row["int8_bytes"] = report.info.bytes
    row["int8_only"] = report.info.int8_only
    row["int8_accuracy"] = litert.evaluate(i8, x_test, y_test)
    return row, f32, i8


# The recommended recipe (probes: benchmarks/probes/channel_pruning_recipes.py
# and the notes in results/channel_pruning.md): gradual bn_gamma pruning
# inside the fine-tune, then shrink. The distillation rows (one-shot
# bn_gamma 50% as the student of the unpruned base, `kd_base`, or of the
# unpruned model after its own fine-tune, `kd_unpruned`) are optional.
ONE_SHOT = dict(fraction=0.5, criterion="bn_gamma")
RECIPE_TEXT = (
    "`ChannelPruning(PolynomialDecay(0.0, 0.5, begin_step=0, "
    "end_step=<half the fine-tuning steps>, frequency=<steps per epoch>), "
    'criterion="bn_gamma")` in the `fit` of the fine-tune (the fraction rises '
    "from 0 to 0.5 over the first half, one selection per epoch; zeroed "
    "channels stay zero), then `shrink(model)` removes them (the shrunk "
    "model predicts exactly as the zeroed one)."
)
KD_TEXT = (
    " Distillation rows (`kd_*`: one-shot bn_gamma 50%, `gradual_kdu`: the "
    "recipe) fine-tune through "
    "`keras_slim.distillation.Distiller(teacher, student=pruned)` "
    "(temperature {temperature:g}, alpha {alpha:g}, teacher outputs cached "
    "once), the teacher "
    "being the unpruned base (`kd_base`) or the unpruned model after its "
    "own fine-tune (`kd_unpruned`, `gradual_kdu`: the pruned model gets "
    "the same epochs, but the pipeline also spends the unpruned row's "
    "fine-tune to make its teacher); fine-tuning time includes the "
    "teacher's one pass over the training images."
)

# tag -> (prune_channels arguments (None: gradual ChannelPruning),
#         teacher (None: plain fine-tune), label)
VARIANTS = {
    "l1": (dict(fraction=0.5, criterion="l1"), None, "pruned 50% (l1)"),
    "bn_gamma": (ONE_SHOT, None, "pruned 50% (bn_gamma)"),
    "gradual": (None, None, "recipe: gradual bn_gamma 50% + shrink"),
    "gradual_kdu": (
        None,
        "unpruned",
        "gradual bn_gamma 50% + KD from fine-tuned unpruned",
    ),
    "kd_base": (ONE_SHOT, "base", "bn_gamma 50% + KD from base"),
    "kd_unpruned": (
        ONE_SHOT,
        "unpruned",
        "bn_gamma 50% + KD from fine-tuned unpruned",
    ),
}
DEFAULT_VARIANTS = ("l1", "bn_gamma", "gradual", "gradual_kdu")


def _gradual(x, epochs):
    per_epoch = int(np.ceil(len(x) / 64))
    # The last update must fall inside the fit (`--quick`: one epoch).
    end = max(1, min(per_epoch * max(1, epochs // 2), per_epoch * epochs - 1))
    schedule = PolynomialDecay(
        0.0, 0.5, begin_step=0, end_step=end, frequency=min(per_epoch, end)
    )
    return ChannelPruning(schedule, criterion="bn_gamma")


def _finetune(
    model,
    x,
    y,
    epochs,
    lr,
    teacher_outputs=None,
    teacher=None,
    callbacks=(),
    kd=(0.1, 4.0),
):
    # Same optimizer for every row: Adam, cosine decay from `lr` to 0; the
    # KD rows train through a Distiller (labels and the teacher's outputs).
    steps = epochs * int(np.ceil(len(x) / 64))
    schedule = keras.optimizers.schedules.CosineDecay(lr, steps)
    timer = EpochTimer()
    if teacher is None:
        compile_classifier(model, schedule)
        model.fit(
            x,
            y,
            batch_size=64,
            epochs=epochs,
            verbose=0,
            callbacks=[timer, *callbacks],
        )
    else:
        alpha, temperature = kd
        distiller = compile_classifier(
            Distiller(teacher, model, temperature=temperature, alpha=alpha),
            schedule,
        )
        distiller.fit(
            x,
            {"labels": y, "teacher_outputs": teacher_outputs},
            batch_size=64,
            epochs=epochs,
            verbose=0,
            callbacks=[timer, *callbacks],
        )
    return steady(timer.times)


def run(
    repeats, epochs, finetune_epochs, size, latency_runs, lr, tags, kd=(0.1, 4)
):
    (x, y), (x_test, y_test) = datasets.load_digits(
        image_size=size, channels=3, seed=0
    )
    rows = []
    for repeat in range(repeats):
        keras.utils.set_random_seed(repeat)
        base = compile_classifier(_bn_momentum(_model(size), 0.9), 1e-3)
        t0 = time.time()
        base.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
        weights = base.get_weights()
        results = {"base_accuracy": _acc(base, x_test, y_test)}
        # Teachers of the recipe, run once over the (non-augmented)
        # training images; that pass counts in the fine-tuning time.
        teachers = {}

        def _teach(name, model):
            t1 = time.time()
            outputs = cache_teacher_outputs(model, x)
            teachers[name] = (model, outputs, time.time() - t1)

        teachers_needed = {VARIANTS[t][1] for t in tags}
        if "base" in teachers_needed:
            _teach("base", base)
        with tempfile.TemporaryDirectory() as folder:
            files = {}
            for tag in ("unpruned", *tags):
                keras.utils.set_random_seed(100 + repeat)
                model = _bn_momentum(_model(size), 0.9)
                model.set_weights(weights)
                pruned_accuracy, zeroed_accuracy = None, None
                teacher, outputs, seconds = None, None, 0.0
                callbacks = []
                if tag != "unpruned":
                    arguments, name, _ = VARIANTS[tag]
                    if arguments is None:
                        callbacks = [_gradual(x, finetune_epochs)]
                    else:
                        model = prune_channels(model, **arguments)
                        pruned_accuracy = _acc(model, x_test, y_test)
                    if name is not None:
                        teacher, outputs, seconds = teachers[name]
                t1 = time.time()
                epoch = _finetune(
                    model,
                    x,
                    y,
                    finetune_epochs,
                    lr,
                    outputs,
                    teacher,
                    callbacks,
                    kd,
                )
                if callbacks:
                    zeroed_accuracy = _acc(model, x_test, y_test)
                    model = shrink(model)
                seconds += time.time() - t1
                results[tag], f32, i8 = _measure(
                    model, x[:200], x_test, y_test, folder, tag
                )
                results[tag]["finetune_seconds"] = seconds
                results[tag]["epoch_seconds"] = epoch
                results[tag]["accuracy_before_finetune"] = pruned_accuracy
                if zeroed_accuracy is not None:
                    # Before shrink (channels zeroed, not removed).
                    results[tag]["accuracy_zeroed"] = zeroed_accuracy
                if tag == "unpruned" and "unpruned" in teachers_needed:
                    _teach("unpruned", model)
                files[tag] = (f32, i8)
            # Latency interleaved, every model in turn.
            lat = {t: {"f32": [], "i8": []} for t in files}
            for _ in range(3):
                for tag, (f32, i8) in files.items():
                    lat[tag]["f32"].append(
                        litert.latency(f32, runs=latency_runs).median_ms
                    )
                    lat[tag]["i8"].append(
                        litert.latency(i8, runs=latency_runs).median_ms
                    )
            for tag in files:
                results[tag]["f32_ms"] = statistics.median(lat[tag]["f32"])
                results[tag]["i8_ms"] = statistics.median(lat[tag]["i8"])
        print(
            f"run {repeat}: {time.time() - t0:.0f}s {json.dumps(results)}",
            file=sys.stderr,
            flush=True,
        )
        rows.append(results)
    return rows


def _median(rows, tag, key):
    return statistics.median(r[tag][key] for r in rows)


def _ratio(rows, tag, key):
    return statistics.median(r[tag][key] / r["unpruned"][key] for r in rows)


def _delta(rows, tag):
    return statistics.median(
        100 * (r[tag]["accuracy"] - r["unpruned"]["accuracy"]) for r in rows
    )


def write(rows, args, seconds):
    tags = args.variants
    goal = lambda ok: "met" if ok else "**missed**"  # noqa: E731
    lines = [
        "## Channel pruning: MobileNetV2 (alpha 0.35) on digits"
        + ("" if args.out == "channel_pruning" else f", {len(rows)} runs"),
        "",
        "Command: `"
        + " ".join(["python -m benchmarks.channel_pruning", *args.argv])
        + "` "
        f"({datetime.date.today().isoformat()}, {seconds / 60:.0f} min). "
        f"Python {platform.python_version()}, TensorFlow {tf.__version__}, "
        f"Keras {keras.__version__}.",
        "",
        f"MobileNetV2(alpha=0.35, {args.size}x{args.size}x3, weights=None, "
        "BN momentum 0.9), digits resized to "
        f"{args.size} (1347 train / 450 test), trained {args.epochs} epochs "
        "from scratch (Adam 1e-3, batch 64). Then the same weights are "
        f"fine-tuned {args.finetune_epochs} epochs with the same optimizer "
        f"(Adam, cosine decay from {args.lr:g} to 0, batch 64), "
        "the same budget for every row: as is (unpruned); after one-shot "
        "`prune_channels(model, fraction=0.5, criterion=...)` with "
        "criterion `l1` and `bn_gamma` (min_channels 8), plain fine-tune "
        "(the literal uniform 50% rows); and the recommended recipe, "
        "gradual pruning during the fine-tune: "
        + RECIPE_TEXT
        + (
            KD_TEXT.format(alpha=args.kd_alpha, temperature=args.kd_temperature)
            if any(VARIANTS[t][1] for t in tags)
            else ""
        )
        + " Epoch time is the median epoch after the first. "
        f"Medians over {len(rows)} runs (seeds 0..{len(rows) - 1}); "
        "ratios and accuracy differences are medians of per-run values. "
        "LiteRT latency: batch 1, 1 thread, XNNPACK, "
        f"{args.latency_runs} runs x 3 interleaved. The machine (2 cores) "
        "was shared with other jobs while this ran: absolute times are "
        "noisy, the ratios were measured interleaved in one process.",
        "",
    ]
    if len(rows) < 3:
        lines += [
            f"Reduced budget: {len(rows)} run(s) instead of 3, to fit the "
            "time available on the shared machine.",
            "",
        ]
    head = "| | unpruned |"
    rule = "|---|---:|"
    for tag in tags:
        head += f" {VARIANTS[tag][2]} | ratio |"
        rule += "---:|---:|"
    lines += [head + " goal |", rule + "---|"]

    def row(label, key, fmt, goal_text=None, limit=None):
        text = f"| {label} | {fmt(_median(rows, 'unpruned', key))} |"
        verdicts = []
        for tag in tags:
            r = _ratio(rows, tag, key)
            text += f" {fmt(_median(rows, tag, key))} | {r:.2f}x |"
            if limit is not None:
                verdicts.append(f"{tag} {goal(r <= limit)}")
        return text + (
            f" {goal_text}: {', '.join(verdicts)} |" if goal_text else " |"
        )

    integer = lambda v: f"{v:,.0f}"  # noqa: E731
    ms = lambda v: f"{v:.2f}"  # noqa: E731
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    acc = (
        "| Keras accuracy after fine-tuning | "
        + pct(_median(rows, "unpruned", "accuracy"))
        + " |"
    )
    verdicts = []
    for tag in tags:
        d = _delta(rows, tag)
        acc += f" {pct(_median(rows, tag, 'accuracy'))} | {d:+.1f} pt |"
        verdicts.append(f"{tag} {goal(d >= -1.0)}")
    acc += f" within 1 pt: {', '.join(verdicts)} |"
    before = "| Keras accuracy right after pruning | |"
    i8acc = (
        "| int8 LiteRT accuracy | "
        + pct(_median(rows, "unpruned", "int8_accuracy"))
        + " |"
    )
    only = (
        "| int8 file all-integer | "
        + str(all(r["unpruned"]["int8_only"] for r in rows))
        + " |"
    )
    for tag in tags:
        if rows[0][tag]["accuracy_before_finetune"] is None:
            before += " (gradual) | |"
        else:
            b = _median(rows, tag, "accuracy_before_finetune")
            before += f" {pct(b)} | |"
        i8acc += f" {pct(_median(rows, tag, 'int8_accuracy'))} | |"
        only += f" {all(r[tag]['int8_only'] for r in rows)} | |"
    lines += [
        row("MACs", "macs", integer, "<= 0.5x", 0.5),
        row("params", "params", integer),
        row("int8 bytes", "int8_bytes", integer),
        row("LiteRT float32 latency (ms)", "f32_ms", ms, "<= 0.6x", 0.6),
        row("LiteRT int8 latency (ms)", "i8_ms", ms),
        before + " |",
        acc,
        i8acc + " |",
        only + " |",
        row("fine-tuning time (s)", "finetune_seconds", integer),
        row("fine-tuning epoch time (s)", "epoch_seconds", ms),
        "",
        "Per run (base after training; unpruned, "
        + ", ".join(tags)
        + " after fine-tuning): "
        + "; ".join(
            f"seed {i}: {pct(r['base_accuracy'])}; "
            + ", ".join(pct(r[t]["accuracy"]) for t in ("unpruned", *tags))
            for i, r in enumerate(rows)
        )
        + ".",
        "",
        "Raw results:",
        "",
        "```json",
        json.dumps(rows, indent=1),
        "```",
        "",
    ]
    text = "\n".join(lines)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, args.out + ".md"), "w") as f:
        f.write(text)
    print(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one run, 1 epoch each, 48x48: a smoke test",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--finetune-epochs", type=int, default=12)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--latency-runs", type=int, default=50)
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help="comma-separated rows besides unpruned, from "
        + ", ".join(VARIANTS),
    )
    parser.add_argument(
        "--kd-alpha",
        type=float,
        default=0.1,
        help="the Distiller's alpha (weight of the label loss) in KD rows",
    )
    parser.add_argument("--kd-temperature", type=float, default=4.0)
    parser.add_argument(
        "--out",
        default="channel_pruning",
        help="results file name in benchmarks/results/, without .md",
    )
    args = parser.parse_args(argv)
    args.variants = tuple(v for v in args.variants.split(",") if v)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        parser.error(
            f"--variants: expected names from {', '.join(VARIANTS)}; "
            f"received {unknown or args.variants}"
        )
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.quick:
        args.repeats, args.epochs, args.finetune_epochs = 1, 1, 1
        args.size, args.latency_runs = 48, 10
    t0 = time.time()
    rows = run(
        args.repeats,
        args.epochs,
        args.finetune_epochs,
        args.size,
        args.latency_runs,
        args.lr,
        args.variants,
        (args.kd_alpha, args.kd_temperature),
    )
    write(rows, args, time.time() - t0)


if __name__ == "__main__":
    main()
