"""Benchmark: quantization-aware training on the demo CNN.

Side by side, from the same float model (the demo CNN trained on the
digits): float fine-tune, post-training int8 (PTQ) of that fine-tune, our
`QuantizationAwareTraining` fine-tune, and tfmot QAT under tf_keras (in a
subprocess), the same number of epochs at the same learning rate. Epoch
times of plain `fit` and QAT `fit` are measured in the same run, one after
the other in each repeat, as steady-state medians (first epoch, which
traces, left out).

Then the epoch time measured alternately (plain, QAT, plain, ...), and
MobileNetV2-0.35 at 96x96: PTQ vs QAT int8 accuracy.

    python -m benchmarks.qat                   # both parts, 3 repeats
    python -m benchmarks.qat --part cnn        # results/qat.md
    python -m benchmarks.qat --part mobilenet  # results/qat_mobilenet.md
    python -m benchmarks.qat --quick           # smoke run, few epochs
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_slim  # noqa: E402
from benchmarks._common import EpochTimer  # noqa: E402
from benchmarks._common import compile_classifier  # noqa: E402
from benchmarks._common import mobilenet  # noqa: E402
from benchmarks._common import save_section  # noqa: E402
from benchmarks._common import steady  # noqa: E402
from keras_slim import datasets  # noqa: E402
from keras_slim import litert  # noqa: E402
from keras_slim import models  # noqa: E402
from keras_slim.quantization import QuantizationAwareTraining  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results", "qat.md")
MOBILENET_RESULTS = os.path.join(
    os.path.dirname(__file__), "results", "qat_mobilenet.md"
)


def _file_row(model, path, xt, yt, **export_kwargs):
    keras_slim.export_tflite(model, path, **export_kwargs)
    info = keras_slim.inspect_tflite(path)
    keras_acc = float(np.mean(model.predict(xt, verbose=0).argmax(1) == yt))
    return {
        "keras_accuracy": keras_acc,
        "int8_accuracy": litert.evaluate(path, xt, yt),
        "agreement": litert.compare(model, path, xt).agreement,
        "int8_only": info.int8_only,
        "bytes": info.bytes,
    }


def run_once(seed, base_epochs, epochs, folder, data_file):
    (x, y), (xt, yt) = datasets.load_digits(32, seed=0)
    keras.utils.set_random_seed(seed)
    base = compile_classifier(models.small_cnn(), 1e-3)
    base.fit(x, y, batch_size=64, epochs=base_epochs, verbose=0)
    weights = base.get_weights()
    rows = {}

    # Float fine-tune, then PTQ of it. Every fine-tune starts from the same
    # weights with the same batch order (the RNG re-seeded before each), so
    # per-seed differences are paired.
    keras.utils.set_random_seed(seed + 1000)
    plain = compile_classifier(models.small_cnn(), 1e-4)
    plain.set_weights(weights)
    t_plain = EpochTimer()
    plain.fit(
        x, y, batch_size=64, epochs=epochs, verbose=0, callbacks=[t_plain]
    )
    float_acc = float(np.mean(plain.predict(xt, verbose=0).argmax(1) == yt))
    rows["float fine-tune"] = {
        "keras_accuracy": float_acc,
        "epoch_s": steady(t_plain.times),
    }
    ptq = _file_row(
        plain,
        os.path.join(folder, "ptq.tflite"),
        xt,
        yt,
        representative_data=x[:300],
    )
    rows["PTQ int8 of the fine-tune"] = ptq

    # Our QAT fine-tune (right after, same process: interleaved timing).
    keras.utils.set_random_seed(seed + 1000)
    qat_model = compile_classifier(models.small_cnn(), 1e-4)
    qat_model.set_weights(weights)
    t_qat = EpochTimer()
    qat = QuantizationAwareTraining()
    qat_model.fit(
        x, y, batch_size=64, epochs=epochs, verbose=0, callbacks=[t_qat, qat]
    )
    row = _file_row(qat_model, os.path.join(folder, "qat.tflite"), xt, yt)
    row["epoch_s"] = steady(t_qat.times)
    row["epoch_ratio"] = row["epoch_s"] / rows["float fine-tune"]["epoch_s"]
    rows["keras_slim QAT fine-tune"] = row

    # tfmot QAT under tf_keras, in a subprocess.
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks._tfmot_qat",
            data_file,
            "--base-epochs",
            str(base_epochs),
            "--epochs",
            str(epochs),
            "--seed",
            str(seed),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    tfmot = json.loads(out.stdout.strip().splitlines()[-1])
    tfmot["epoch_ratio"] = tfmot["qat_epoch_s"] / tfmot["plain_epoch_s"]
    rows["tfmot QAT (tf_keras)"] = tfmot
    return rows


def alternating_epochs(seed, rounds, epochs_base=5):
    """Epoch time of plain `fit` and of QAT `fit`, one epoch each in turn.

    Three models from the same weights: plain, QAT with BatchNorm frozen
    (`freeze_bn_delay=0`) and QAT with the defaults (BatchNorm learning, as
    benchmarked above). One warm-up round traces every function; then
    `rounds` rounds of one epoch each, alternating, so that a change in
    the machine's load hits all three alike. Returns per-round ratios.
    """
    (x, y), _ = datasets.load_digits(32, seed=0)
    keras.utils.set_random_seed(seed)
    base = compile_classifier(models.small_cnn(), 1e-3)
    base.fit(x, y, batch_size=64, epochs=epochs_base, verbose=0)
    variants = {
        "plain": None,
        "qat_bn_frozen": QuantizationAwareTraining(freeze_bn_delay=0),
        "qat_default": QuantizationAwareTraining(),
    }
    fitted = {}
    for name, callback in variants.items():
        model = compile_classifier(models.small_cnn(), 1e-4)
        model.set_weights(base.get_weights())
        fitted[name] = (model, [callback] if callback else [])
    times = {name: [] for name in variants}
    for round_ in range(rounds + 1):
        for name, (model, callbacks) in fitted.items():
            timer = EpochTimer()
            model.fit(
                x,
                y,
                batch_size=64,
                epochs=1,
                verbose=0,
                callbacks=[timer, *callbacks],
            )
            if round_:  # round 0 traces
                times[name].append(timer.times[0])
    plain = np.array(times["plain"])
    return {
        "rounds": rounds,
        "plain_s": float(np.median(plain)),
        **{
            name: {
                "s": float(np.median(times[name])),
                "ratio": float(np.median(np.array(times[name]) / plain)),
            }
            for name in ("qat_bn_frozen", "qat_default")
        },
    }


def run_mobilenet(seed, base_epochs, epochs, folder):
    """MobileNetV2-0.35 at 96x96: PTQ of a float fine-tune vs QAT."""
    (x, y), (xt, yt) = datasets.load_digits(96, seed=0, channels=3)
    keras.utils.set_random_seed(seed)
    base = compile_classifier(mobilenet(), 1e-3)
    base.fit(x, y, batch_size=64, epochs=base_epochs, verbose=0)
    weights = base.get_weights()
    rows = {
        "base": {
            "keras_accuracy": float(
                np.mean(base.predict(xt, verbose=0).argmax(1) == yt)
            )
        }
    }
    del base
    keras.backend.clear_session()
    plain = compile_classifier(mobilenet(), 1e-4)
    plain.set_weights(weights)
    plain.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
    rows["PTQ int8 of the fine-tune"] = _file_row(
        plain,
        os.path.join(folder, "mnv2_ptq.tflite"),
        xt,
        yt,
        representative_data=x[:300],
    )
    qat_model = compile_classifier(mobilenet(), 1e-4)
    qat_model.set_weights(weights)
    qat_model.fit(
        x,
        y,
        batch_size=64,
        epochs=epochs,
        verbose=0,
        callbacks=[QuantizationAwareTraining(freeze_bn_delay=0)],
    )
    rows["keras_slim QAT fine-tune"] = _file_row(
        qat_model, os.path.join(folder, "mnv2_qat.tflite"), xt, yt
    )
    return rows


def _median(runs, name, key):
    values = [r[name][key] for r in runs if key in r[name]]
    return float(np.median(values)) if values else None


def _fmt(value, kind):
    if value is None:
        return "-"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "ratio":
        return f"{value:.2f}x"
    if kind == "s":
        return f"{value:.2f}"
    return str(value)


def _cnn_lines(runs, timing, args, seconds):
    import tensorflow as tf

    names = [
        "float fine-tune",
        "PTQ int8 of the fine-tune",
        "keras_slim QAT fine-tune",
        "tfmot QAT (tf_keras)",
    ]
    lines = [
        "## Quantization-aware training",
        "",
        f"Command: `{args.command}` (repeats={args.repeats}, base epochs="
        f"{args.base_epochs}, fine-tune epochs={args.epochs}, timing "
        f"rounds={args.rounds}); date "
        f"{datetime.date.today().isoformat()}; tensorflow {tf.__version__}, "
        f"keras {keras.__version__}; {seconds / 60:.1f} min for the run.",
        "",
        "Demo CNN (`keras_slim.models.small_cnn`, 20,394 parameters) on the "
        "digits at 32x32 (1347 train / 450 test), trained "
        f"{args.base_epochs} epochs (Adam 1e-3, batch 64), then each "
        f"variant fine-tuned {args.epochs} epochs at Adam 1e-4 (our QAT with "
        "its defaults, `QuantizationAwareTraining()`: BatchNorm keeps "
        "learning, as in the float fine-tune). Each of our fine-tunes "
        "starts from the same weights with the same batch order (the RNG "
        "is re-seeded before each), so per-seed differences are paired; "
        "tfmot trains its own base from the same seed in tf_keras. PTQ "
        "calibrates on 300 training images. QAT exports with no "
        "representative data (learned ranges). Medians over repeats "
        "(seeds 0..n-1). Epoch times are steady-state medians (first epoch "
        "excluded); ours are relative to plain Keras 3 `fit` measured in "
        "the same process right before, tfmot's relative to plain tf_keras "
        "`fit` in its subprocess. The machine (2 cores) was shared with "
        "other agents' jobs while this ran: rely on the ratios, not on the "
        "absolute seconds.",
        "",
        "| variant | Keras acc | int8 file acc | agreement | s/epoch | "
        "epoch vs plain fit |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        epoch = _median(runs, name, "epoch_s")
        if epoch is None:
            epoch = _median(runs, name, "qat_epoch_s")
        lines.append(
            f"| {name} | {_fmt(_median(runs, name, 'keras_accuracy'), 'pct')}"
            f" | {_fmt(_median(runs, name, 'int8_accuracy'), 'pct')}"
            f" | {_fmt(_median(runs, name, 'agreement'), 'pct')}"
            f" | {_fmt(epoch, 's')}"
            f" | {_fmt(_median(runs, name, 'epoch_ratio'), 'ratio')} |"
        )
    qat_int8 = _median(runs, "keras_slim QAT fine-tune", "int8_accuracy")
    float_acc = _median(runs, "float fine-tune", "keras_accuracy")
    tfmot = _median(runs, "tfmot QAT (tf_keras)", "int8_accuracy")
    ptq = _median(runs, "PTQ int8 of the fine-tune", "int8_accuracy")
    spread = ", ".join(
        f"seed {i}: QAT int8 "
        f"{_fmt(r['keras_slim QAT fine-tune']['int8_accuracy'], 'pct')} vs "
        f"float {_fmt(r['float fine-tune']['keras_accuracy'], 'pct')}, "
        f"epoch {_fmt(r['keras_slim QAT fine-tune']['epoch_ratio'], 'ratio')}"
        for i, r in enumerate(runs)
    )
    alt = timing["qat_bn_frozen"]["ratio"]
    alt_default = timing["qat_default"]["ratio"]

    def paired(other, key):
        return statistics.median(
            100
            * (r["keras_slim QAT fine-tune"]["int8_accuracy"] - r[other][key])
            for r in runs
        )

    lines += [
        "",
        f"Per repeat ({spread}). With 450 test images one image is 0.22 "
        "points. The per-run epoch ratios above come from whole runs "
        "measured one after the other and swing with the machine's load; "
        "the alternating measurement below is the one to compare with the "
        "goal.",
        "",
        "Paired per seed, our QAT int8 minus: the float fine-tune "
        f"{paired('float fine-tune', 'keras_accuracy'):+.1f} points, PTQ "
        f"{paired('PTQ int8 of the fine-tune', 'int8_accuracy'):+.1f}, "
        f"tfmot {paired('tfmot QAT (tf_keras)', 'int8_accuracy'):+.1f} "
        "(medians of per-seed differences; tfmot's base differs).",
        "",
        f"Epoch time measured alternately ({timing['rounds']} rounds after "
        "a warm-up round; each round one epoch of plain `fit`, one of QAT "
        "with BatchNorm frozen, one of QAT with BatchNorm learning, from the "
        f"same weights): plain {_fmt(timing['plain_s'], 's')} s; QAT "
        f"(`freeze_bn_delay=0`) {_fmt(timing['qat_bn_frozen']['s'], 's')} s, "
        f"median per-round ratio {_fmt(alt, 'ratio')}; QAT with the default "
        f"(BatchNorm learning) {_fmt(timing['qat_default']['s'], 's')} s, "
        f"{_fmt(alt_default, 'ratio')}.",
        "",
        "Goals: QAT epoch <= 1.25x plain fit: "
        f"{_fmt(alt_default, 'ratio')} alternating, defaults (BatchNorm "
        f"learning, as benchmarked) "
        f"({'met' if alt_default <= 1.25 else 'missed'}); "
        f"{_fmt(alt, 'ratio')} with BatchNorm frozen "
        f"({'met' if alt <= 1.25 else 'missed'}). "
        "QAT int8 accuracy within 0.3 points of the float fine-tune: "
        f"{_fmt(qat_int8, 'pct')} vs {_fmt(float_acc, 'pct')} "
        f"({'met' if qat_int8 >= float_acc - 0.003 else 'missed'}); "
        f"at least tfmot's ({_fmt(tfmot, 'pct')}: "
        f"{'met' if qat_int8 >= tfmot else 'missed'}) and PTQ's "
        f"({_fmt(ptq, 'pct')}: {'met' if qat_int8 >= ptq else 'missed'}).",
        "",
        "Per repeat (JSON):",
        "",
        "```",
        *[json.dumps(r, sort_keys=True) for r in runs],
        json.dumps({"alternating_timing": timing}, sort_keys=True),
        "```",
        "",
    ]
    return lines


def write_markdown(runs, timing, mnv2, args, seconds):
    import tensorflow as tf

    if runs:
        save_section(RESULTS, _cnn_lines(runs, timing, args, seconds))
    if not mnv2:
        return
    lines = [
        "## Quantization-aware training: MobileNetV2 (alpha 0.35, 96x96x3, "
        "weights=None), PTQ vs QAT",
        "",
        f"Command: `{args.command}` (MobileNetV2 repeats="
        f"{args.mobilenet_repeats}, base epochs={args.mobilenet_base_epochs}"
        f", fine-tune epochs={args.mobilenet_epochs}); date "
        f"{datetime.date.today().isoformat()}; tensorflow {tf.__version__}, "
        f"keras {keras.__version__}; {seconds / 60:.1f} min for the run.",
        "",
        "`keras.applications.MobileNetV2(alpha=0.35, weights=None)` (BN "
        "momentum 0.9) on the digits resized to 96x96x3, trained "
        f"{args.mobilenet_base_epochs} epochs (Adam 1e-3, batch 64), then "
        f"fine-tuned {args.mobilenet_epochs} epochs at Adam 1e-4 either "
        "plainly (then PTQ, 300 calibration images) or with "
        "`QuantizationAwareTraining(freeze_bn_delay=0)` (then exported "
        f"from its learned ranges). Medians over {len(mnv2)} repeats "
        "(seeds 0..n-1).",
        "",
        "| variant | Keras acc | int8 file acc | agreement | int8_only |",
        "|---|---|---|---|---|",
        "| base float model | "
        f"{_fmt(_median(mnv2, 'base', 'keras_accuracy'), 'pct')} | - | - | - |",
    ]
    for name in ("PTQ int8 of the fine-tune", "keras_slim QAT fine-tune"):
        only = all(r[name]["int8_only"] for r in mnv2)
        lines.append(
            f"| {name} | {_fmt(_median(mnv2, name, 'keras_accuracy'), 'pct')}"
            f" | {_fmt(_median(mnv2, name, 'int8_accuracy'), 'pct')}"
            f" | {_fmt(_median(mnv2, name, 'agreement'), 'pct')}"
            f" | {'yes' if only else 'no'} |"
        )
    m_ptq = _median(mnv2, "PTQ int8 of the fine-tune", "int8_accuracy")
    m_qat = _median(mnv2, "keras_slim QAT fine-tune", "int8_accuracy")
    lines += [
        "",
        f"QAT int8 {_fmt(m_qat, 'pct')} vs PTQ int8 {_fmt(m_ptq, 'pct')}: "
        f"{(m_qat - m_ptq) * 100:+.1f} points.",
        "",
        "```",
        *[json.dumps(r, sort_keys=True) for r in mnv2],
        "```",
        "",
    ]
    save_section(MOBILENET_RESULTS, lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--part",
        choices=("both", "cnn", "mobilenet"),
        default="both",
        help="the demo CNN comparison (results/qat.md), the MobileNetV2 "
        "PTQ-vs-QAT rows (results/qat_mobilenet.md), or both",
    )
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--base-epochs", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--mobilenet-repeats", type=int, default=None)
    p.add_argument("--mobilenet-base-epochs", type=int, default=None)
    p.add_argument("--mobilenet-epochs", type=int, default=None)
    args = p.parse_args(argv)
    args.command = "python -m benchmarks.qat" + " ".join(
        [""] + (argv if argv is not None else sys.argv[1:])
    )
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.base_epochs = args.base_epochs or (3 if args.quick else 20)
    args.epochs = args.epochs or (2 if args.quick else 5)
    args.rounds = args.rounds or (2 if args.quick else 8)
    args.mobilenet_repeats = args.mobilenet_repeats or (1 if args.quick else 3)
    args.mobilenet_base_epochs = args.mobilenet_base_epochs or (
        1 if args.quick else 8
    )
    args.mobilenet_epochs = args.mobilenet_epochs or (1 if args.quick else 2)
    start = time.perf_counter()
    runs = []
    mnv2 = []
    with tempfile.TemporaryDirectory() as folder:
        (x, y), (xt, yt) = datasets.load_digits(32, seed=0)
        data_file = os.path.join(folder, "digits.npz")
        np.savez(data_file, x=x, y=y, xt=xt, yt=yt)
        for seed in range(args.repeats if args.part != "mobilenet" else 0):
            runs.append(
                run_once(seed, args.base_epochs, args.epochs, folder, data_file)
            )
            print(json.dumps(runs[-1]), flush=True)
        timing = None
        if args.part != "mobilenet":
            timing = alternating_epochs(0, args.rounds)
            print(json.dumps(timing), flush=True)
        for seed in range(args.mobilenet_repeats if args.part != "cnn" else 0):
            keras.backend.clear_session()
            mnv2.append(
                run_mobilenet(
                    seed,
                    args.mobilenet_base_epochs,
                    args.mobilenet_epochs,
                    folder,
                )
            )
            print(json.dumps(mnv2[-1]), flush=True)
    write_markdown(runs, timing, mnv2, args, time.perf_counter() - start)


if __name__ == "__main__":
    main()
