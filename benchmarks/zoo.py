"""Issue 20 benchmark: the users' models through every capability.

Every `keras.applications` family (one representative each, `weights=None`
at its smallest input) and three keras.io example architectures (a text
Transformer, an LSTM, a small U-Net), trained briefly on offline data,
then: post-training int8 export, QAT fine-tuning and export, magnitude
pruning to 50% and int8 export, channel pruning by half, `swap_head`.
Each cell is `ok` with its figure, or the refusal's reason.

    python -m benchmarks.zoo [--models MobileNet,LSTM] [--epochs N]

Each model trains with its recipe (`_zoo_models.recipe`); `--epochs`
overrides the recipe's training epochs.

Writes benchmarks/results/zoo.md.
"""

import argparse
import gzip
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from benchmarks import _zoo_models as zoo  # noqa: E402
from benchmarks._common import EpochTimer  # noqa: E402
from benchmarks._common import save_section  # noqa: E402
from benchmarks._common import steady  # noqa: E402
from keras_slim import litert  # noqa: E402
from keras_slim import profiling  # noqa: E402
from keras_slim import schedules  # noqa: E402
from keras_slim.export import export_tflite  # noqa: E402
from keras_slim.pruning import MagnitudePruning  # noqa: E402
from keras_slim.pruning import prune_channels  # noqa: E402
from keras_slim.pruning import sparsity_report  # noqa: E402
from keras_slim.quantization import QuantizationAwareTraining  # noqa: E402
from keras_slim.transfer import swap_head  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CAPABILITIES = ("ptq", "qat", "prune", "channels", "swap_head")


class Outcome:
    """One cell: `ok` with figures, or `refused` / `error` with a reason."""

    def __init__(self, status, reason="", **figures):
        self.status = status
        self.reason = reason
        self.figures = figures

    def __repr__(self):
        return f"Outcome({self.status!r}, {self.reason[:80]!r}, {self.figures})"

    def cell(self):
        if self.status != "ok":
            # Cut at a word, marked: the whole reason is in the rows file.
            reason = textwrap.shorten(self.reason, 200, placeholder=" [...]")
            return f"{self.status}: {reason}".replace("|", "/")
        return ", ".join(f"{k} {_fmt(k, v)}" for k, v in self.figures.items())


def _fmt(key, value):
    if key.endswith("_x"):  # a ratio
        return f"{value:.2f}x"
    if key in ("agreement", "sparsity"):
        return f"{100 * value:.2f}%"
    if isinstance(value, float):
        return f"{value:.0f}"
    return str(value)


def _first_line(error):
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"


def _agreement(model, path, x):
    # Dense predictions (the U-Net's logits per pixel): top-1 per position.
    per_position = len(model.output_shape) > 2
    result = litert.compare(model, path, x, per_position=per_position)
    if isinstance(result, dict):
        result = next(iter(result.values()))
    elif isinstance(result, list):
        result = result[0]
    return float(result.agreement)


def _gzip_bytes(path):
    with open(path, "rb") as f:
        return len(gzip.compress(f.read(), 9))


def _copy(model, name):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return zoo.compile_model(clone, name)


def train(name, epochs=None):
    """Build and train a zoo model with its recipe (`epochs` overrides
    the recipe's); returns (model, data, epoch seconds)."""
    plan = zoo.recipe(name)
    model = zoo.compile_model(zoo.build(name), name)
    (x, y), test = zoo.data(name, plan["n_train"], plan["n_test"])
    timer = EpochTimer()
    model.fit(
        x,
        y,
        epochs=epochs or plan["epochs"],
        batch_size=plan["batch_size"],
        verbose=0,
        callbacks=[timer],
    )
    return model, ((x, y), test), timer.times


def ptq(name, model, data, folder):
    (x, _), (xt, _) = data
    path = os.path.join(folder, f"{name}_ptq.tflite")
    report = export_tflite(model, path, representative_data=x[:128])
    return Outcome(
        "ok",
        int8_only=report.info.int8_only,
        agreement=_agreement(model, path, xt),
        kib=report.info.bytes / 1024,
    )


def qat(name, model, data, folder, epochs=1, float_times=None):
    (x, y), (xt, _) = data
    model = _copy(model, name)
    timer = EpochTimer()
    model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=zoo.recipe(name)["batch_size"],
        verbose=0,
        callbacks=[QuantizationAwareTraining(), timer],
    )
    path = os.path.join(folder, f"{name}_qat.tflite")
    report = export_tflite(model, path)
    figures = dict(
        int8_only=report.info.int8_only,
        agreement=_agreement(model, path, xt),
    )
    if float_times and len(timer.times) > 1:
        figures["epoch_x"] = steady(timer.times) / steady(float_times)
    return Outcome("ok", **figures)


def prune(name, model, data, folder, epochs=1, float_times=None):
    (x, y), (xt, _) = data
    dense_path = os.path.join(folder, f"{name}_ptq.tflite")
    model = _copy(model, name)
    timer = EpochTimer()
    callback = MagnitudePruning(
        schedules.ConstantSparsity(0.5, begin_step=0, frequency=1)
    )
    model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=zoo.recipe(name)["batch_size"],
        verbose=0,
        callbacks=[callback, timer],
    )
    sparsity = float(sparsity_report(model).sparsity)
    path = os.path.join(folder, f"{name}_pruned.tflite")
    report = export_tflite(
        model, path, representative_data=x[:128], allow_float_fallback=True
    )
    figures = dict(
        sparsity=sparsity,
        int8_only=report.info.int8_only,
        agreement=_agreement(model, path, xt),
    )
    if os.path.exists(dense_path):
        figures["gzip_x"] = _gzip_bytes(path) / _gzip_bytes(dense_path)
    if float_times and len(timer.times) > 1:
        figures["epoch_x"] = steady(timer.times) / steady(float_times)
    return Outcome("ok", **figures)


# Which layers channel pruning may shrink, where not all: ConvNeXt's
# LayerNormalization normalizes across the channels (no per-channel
# mapping), so only its blocks' expansion layers lose units.
CHANNEL_FILTERS = {"ConvNeXtTiny": r".*pointwise_conv_1$"}


def channels(name, model, data, folder):
    (x, y), (xt, _) = data
    pruned = prune_channels(
        model, fraction=0.5, filters=CHANNEL_FILTERS.get(name)
    )
    small = zoo.compile_model(pruned, name)
    small.fit(
        x, y, epochs=1, batch_size=zoo.recipe(name)["batch_size"], verbose=0
    )
    before, after = profiling.profile(model), profiling.profile(small)
    path = os.path.join(folder, f"{name}_channels.tflite")
    report = export_tflite(
        small, path, representative_data=x[:128], allow_float_fallback=True
    )
    return Outcome(
        "ok",
        macs_x=after.macs / before.macs if before.macs else float("nan"),
        params_x=after.total_params / before.total_params,
        int8_only=report.info.int8_only,
        agreement=_agreement(small, path, xt),
    )


# The U-Net predicts per pixel: it has no classification head to find,
# and `swap_head` given its last layer keeps the new head per pixel.
HEAD_LAYERS = {"UNet": "mask_logits"}


def transfer(name, model, data, folder):
    (x, y), _ = data
    new = swap_head(model, 5, head_layer=HEAD_LAYERS.get(name))
    new.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    labels = y % 5 if y.ndim == 1 else y
    new.fit(x[:64], labels[:64], epochs=1, verbose=0)
    return Outcome("ok", output=str(tuple(new.output_shape)))


RUNNERS = {
    "ptq": ptq,
    "qat": qat,
    "prune": prune,
    "channels": channels,
    "swap_head": transfer,
}


def run(name, capability, model, data, folder, **kwargs):
    """Run one cell; a refusal (ValueError/TypeError before the work) or a
    failure becomes an `Outcome` rather than stopping the sweep."""
    try:
        return RUNNERS[capability](name, model, data, folder, **kwargs)
    except (ValueError, TypeError, NotImplementedError) as error:
        return Outcome("refused", _first_line(error))
    except Exception as error:  # noqa: BLE001 - the table records it
        traceback.print_exc()
        return Outcome("error", _first_line(error))


def sweep(name, epochs, capabilities=CAPABILITIES):
    """Train one model and run each capability on it; returns a dict."""
    start = time.perf_counter()
    model, data, times = train(name, epochs)
    (_, _), (xt, yt) = data
    accuracy = float(model.evaluate(xt, yt, verbose=0)[1])
    cells = {}
    with tempfile.TemporaryDirectory() as folder:
        for capability in capabilities:
            kwargs = {}
            if capability in ("qat", "prune"):
                kwargs = dict(
                    epochs=zoo.recipe(name)["fine_tune_epochs"],
                    float_times=times,
                )
            cells[capability] = run(
                name, capability, model, data, folder, **kwargs
            )
            print(
                _CELL + json.dumps([capability, vars(cells[capability])]),
                flush=True,
            )
    plan = zoo.recipe(name)
    plan.update(epochs=len(times), n_train=len(data[0][0]), n_test=len(xt))
    return dict(
        name=name,
        accuracy=accuracy,
        recipe=plan,
        seconds=time.perf_counter() - start,
        cells={c: vars(o) for c, o in cells.items()},
    )


def sweep_in_child(name, epochs, capabilities=CAPABILITIES, timeout=3600):
    """`sweep` in child processes, so that a converter crash (the LSTM
    calibration segfault) becomes a cell instead of ending the run: the
    capability that was running is marked `crash`, and a new child goes
    on with the ones after it. A child still running after `timeout`
    seconds is stopped: its capability is marked `timeout`, the ones
    after it are not run."""
    cells, row, todo = {}, None, list(capabilities)
    while todo:
        try:
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.zoo", "--one", name]
                + (["--epochs", str(epochs)] if epochs else [])
                + ["--capabilities", ",".join(todo)],
                cwd=os.path.dirname(HERE),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as stopped:
            # The cells it finished, then the one it was in: `timeout`;
            # the ones after it are not run (the table says so).
            _read_cells(stopped.stdout or "", cells)
            running = [c for c in todo if c not in cells]
            if running:
                reason = f"stopped after {timeout} s"
                cells[running[0]] = vars(Outcome("timeout", reason))
            break
        row = _read_cells(done.stdout, cells) or row
        todo = [c for c in todo if c not in cells]
        failed = todo or any(
            cells[c]["status"] in ("error", "crash") for c in cells
        )
        if failed and done.stderr:  # the child's traceback, for the record
            print(done.stderr[-6000:], file=sys.stderr, flush=True)
        if todo:
            reason = f"the process died (exit code {done.returncode})"
            cells[todo.pop(0)] = vars(Outcome("crash", reason))
    row = row or dict(name=name, accuracy=float("nan"), seconds=float("nan"))
    row["cells"] = cells
    return row


def _read_cells(stdout, cells):
    """Add the cells a child printed to `cells`; return its row or None."""
    if isinstance(stdout, bytes):
        stdout = stdout.decode(errors="replace")
    row = None
    for line in stdout.splitlines():
        if line.startswith(_CELL):
            capability, cell = json.loads(line[len(_CELL) :])
            cells[capability] = cell
        elif line.startswith(_MARK):
            row = json.loads(line[len(_MARK) :])
    return row


_MARK = "ZOO-ROW "
_CELL = "ZOO-CELL "


def _cell(data):
    if data is None:
        return "not run"
    return Outcome(data["status"], data["reason"], **data["figures"]).cell()


def _recipe(plan):
    if not plan:
        return "?"
    return (
        f"{plan['epochs']} ep, {plan['n_train']}/{plan['n_test']}, "
        f"b{plan['batch_size']}, ft {plan['fine_tune_epochs']}"
    )


def table(rows, epochs):
    names = [row["name"] for row in rows]
    models = "" if names == list(zoo.ALL) else f" --models {','.join(names)}"
    override = f" --epochs {epochs}" if epochs else ""
    left = [name for name in zoo.ALL if name not in names]
    lines = [
        "## Zoo: every keras.applications family and keras.io examples",
        "",
        f"`python -m benchmarks.zoo{models}{override}`, "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}, on "
        f"{platform.processor() or platform.machine()}, keras "
        f"{keras.__version__}. Each model is trained with its recipe "
        "(`_zoo_models.recipe`; column `recipe`: training epochs, "
        "train/test samples, batch size, epochs of QAT and pruning "
        "fine-tuning): the keras.applications on every digit of the "
        "split, the examples on 512 synthetic token sequences (text) or "
        "digit masks (U-Net). Agreement: top-1 (per pixel for the U-Net) "
        "of the int8 file vs Keras on the held-out samples. `gzip_x`: "
        "pruned-50% int8 file gzipped over the dense int8 file gzipped. "
        "`macs_x`: channel-pruned MACs over the original's. `epoch_x`: "
        "steady epoch time with the callback over plain `fit`. Each "
        "model runs in its own process; `crash` is a process killed by "
        "a signal."
        + (f" Not run this time: {', '.join(left)}." if left else ""),
        "",
        "| model | recipe | float acc | PTQ int8 | QAT int8 | pruned 50% | "
        "channels 50% | swap_head | s |",
        "|---|---|---:|---|---|---|---|---|---:|",
    ]
    untrained = []
    for row in rows:
        cells = [_cell(row["cells"].get(c)) for c in CAPABILITIES]
        at_chance = row["accuracy"] < _chance(row["name"]) + 0.05
        if at_chance:
            untrained.append(row["name"])
        lines.append(
            f"| {row['name']} | {_recipe(row.get('recipe'))} | "
            f"{100 * row['accuracy']:.1f}%"
            + (" (chance)" if at_chance else "")
            + " | "
            + " | ".join(cells)
            + f" | {row['seconds']:.0f} |"
        )
    if untrained:
        lines += [
            "",
            f"**{', '.join(untrained)}: float accuracy at chance level** "
            "after this training (one class predicted everywhere), so "
            "their agreement figures are trivially high and measure "
            "nothing; they show only that each capability runs and "
            "exports int8_only.",
        ]
    return lines


def _chance(name):
    """Accuracy of always predicting the most common class."""
    if name == "UNet":
        return 0.70  # background pixels of the digits' masks
    return 0.5 if name in ("TextTransformer", "LSTM") else 0.1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(zoo.ALL))
    parser.add_argument(
        "--epochs",
        type=int,
        help="training epochs of every model, instead of its recipe's",
    )
    parser.add_argument("--one", help="sweep one model in this process")
    parser.add_argument("--capabilities", default=",".join(CAPABILITIES))
    parser.add_argument(
        "--rows",
        help="a JSON file: rows of earlier runs are read from it (their "
        "models are not run again) and this run's rows are added to it",
    )
    parser.add_argument("--note", help="a line added under the table")
    parser.add_argument(
        "--timeout",
        type=int,
        default=3600,
        help="seconds a model's child process may run before it is stopped",
    )
    args = parser.parse_args()
    capabilities = tuple(args.capabilities.split(","))
    if args.one:
        row = sweep(args.one, args.epochs, capabilities)
        print(_MARK + json.dumps(row), flush=True)
        return
    rows = []
    if args.rows and os.path.exists(args.rows):
        with open(args.rows) as f:
            rows = json.load(f)
    done = {row["name"] for row in rows}
    for name in args.models.split(","):
        if name in done:
            continue
        rows.append(sweep_in_child(name, args.epochs, timeout=args.timeout))
        print(name, rows[-1]["cells"], flush=True)
        if args.rows:
            with open(args.rows, "w") as f:
                json.dump(rows, f)
    rows.sort(key=lambda row: zoo.ALL.index(row["name"]))
    lines = table(rows, args.epochs)
    if args.note:
        lines += ["", args.note]
    save_section(os.path.join(HERE, "results", "zoo.md"), lines)


if __name__ == "__main__":
    main()
