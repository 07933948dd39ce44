"""Probe: recipes to close the accuracy gap of channel-pruned MobileNetV2.

Seed 0, the benchmark's setup (MobileNetV2 alpha 0.35, 96x96 digits, 8-epoch
base, Adam cosine fine-tune). Variants, run in the order given:

    python -m benchmarks.probes.channel_pruning_recipes [--seed N] VARIANT ...

--seed N (default 0) trains the base with seed N and fine-tunes with seed
100 + N, as run N of the benchmark does.

VARIANT is `name:epochs` (for the distillation variants optionally
`name:epochs:alpha:temperature`, the `Distiller`'s, defaults 0.1 and 4),
name one of
  unpruned          plain fine-tune of the base
  bn / l1           prune_channels(0.5, bn_gamma / l1), plain fine-tune
  bn_kd / l1_kd     the same, fine-tuned with Distiller(teacher=base)
  bn_kdu            bn, Distiller(teacher=the model of the last `unpruned`
                    variant of this invocation, i.e. after its fine-tune)
  exp60 / exp60_kd  bn_gamma, 0.6 of `_expand$` and `^Conv_1$` only
  u40 / u40_kd      bn_gamma, uniform fraction 0.4
  u35r8 / u40r8 / u45r8 / u50r8
                    bn_gamma, uniform fraction 0.35-0.5, round_to=8
  gbn / gl1         gradual: ChannelPruning(PolynomialDecay(0 -> 0.5 over
                    the first half of the epochs, an update per epoch),
                    bn_gamma / l1) during the fine-tune, then shrink
and `recal` (no epochs): accuracy right after pruning, before and after
re-estimating the BatchNorm statistics; `latency`: untrained float32
LiteRT latency of each pruned shape against the unpruned one. The base is
cached in /tmp/cp/ between invocations.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks._common import compile_classifier  # noqa: E402
from benchmarks.channel_pruning import _acc  # noqa: E402
from benchmarks.channel_pruning import _bn_momentum  # noqa: E402
from benchmarks.channel_pruning import _model  # noqa: E402
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

SIZE = 96
SHAPES = {
    "bn": dict(fraction=0.5, criterion="bn_gamma"),
    "l1": dict(fraction=0.5, criterion="l1"),
    "exp60": dict(
        fraction=0.6, criterion="bn_gamma", filters=["_expand$", "^Conv_1$"]
    ),
    "u40": dict(fraction=0.4, criterion="bn_gamma"),
    "u40r8": dict(fraction=0.4, criterion="bn_gamma", round_to=8),
    "u45r8": dict(fraction=0.45, criterion="bn_gamma", round_to=8),
    "u35r8": dict(fraction=0.35, criterion="bn_gamma", round_to=8),
    "u50r8": dict(fraction=0.5, criterion="bn_gamma", round_to=8),
}

args = sys.argv[1:]
SEED = 0
if args[:1] == ["--seed"]:
    SEED, args = int(args[1]), args[2:]
(x, y), (xt, yt) = datasets.load_digits(image_size=SIZE, channels=3, seed=0)
path = f"/tmp/cp/base_seed{SEED}.weights.h5"
keras.utils.set_random_seed(SEED)
base = compile_classifier(_bn_momentum(_model(SIZE), 0.9), 1e-3)
if os.path.exists(path):
    base.load_weights(path)
else:
    base.fit(x, y, batch_size=64, epochs=8, verbose=0)
    base.save_weights(path)
print("base", _acc(base, xt, yt), flush=True)
MACS = profile(base).macs


def fresh():
    keras.utils.set_random_seed(100 + SEED)
    m = _bn_momentum(_model(SIZE), 0.9)
    m.set_weights(base.get_weights())
    return m


def recalibrate(m, batches=21):
    # Re-estimate BatchNorm moving statistics: forward passes in training
    # mode, no weight update.
    for i in range(batches):
        xb = x[(i * 64) % len(x) :][:64]
        m(xb, training=True)
    return m


class Log(keras.callbacks.Callback):
    def __init__(self, model):
        super().__init__()
        self.m = model
        self.t = time.time()

    def on_epoch_end(self, epoch, logs=None):
        print(
            f"  ep {epoch + 1} train {logs.get('accuracy', 0):.3f} "
            f"test {_acc(self.m, xt, yt):.3f} {time.time() - self.t:.0f}s",
            flush=True,
        )


def finetune(m, epochs, kd, teacher=None, callbacks=(), alpha=0.1, temp=4.0):
    teacher = base if teacher is None else teacher
    steps = epochs * int(np.ceil(len(x) / 64))
    lr = keras.optimizers.schedules.CosineDecay(1e-3, steps)
    if kd:
        t = cache_teacher_outputs(teacher, x)
        d = Distiller(teacher, m, temperature=temp, alpha=alpha)
        d.compile(
            keras.optimizers.Adam(lr),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        d.fit(
            x,
            {"labels": y, "teacher_outputs": t},
            batch_size=64,
            epochs=epochs,
            verbose=0,
            callbacks=[Log(m), *callbacks],
        )
    else:
        compile_classifier(m, lr)
        m.fit(
            x,
            y,
            batch_size=64,
            epochs=epochs,
            verbose=0,
            callbacks=[Log(m), *callbacks],
        )
    return m


tuned = None  # the last fine-tuned unpruned model, teacher of bn_kdu
for arg in args:
    if arg == "recal":
        for name, kw in SHAPES.items():
            m = prune_channels(fresh(), **kw)
            a0 = _acc(m, xt, yt)
            a1 = _acc(recalibrate(m), xt, yt)
            print(f"recal {name}: {a0:.3f} -> {a1:.3f}", flush=True)
        continue
    if arg == "latency":
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            files = {}
            for name, kw in [("unpruned", None), *SHAPES.items()]:
                m = fresh() if kw is None else prune_channels(fresh(), **kw)
                f = os.path.join(folder, name + ".tflite")
                export_tflite(m, f, quantization="float32")
                files[name] = (f, profile(m).macs)
            lat = {n: [] for n in files}
            for _ in range(3):
                for n, (f, _m) in files.items():
                    lat[n].append(litert.latency(f, runs=50).median_ms)
            u = np.median(lat["unpruned"])
            for n, (f, macs) in files.items():
                print(
                    f"latency {n}: {np.median(lat[n]):.3f} ms "
                    f"{np.median(lat[n]) / u:.2f}x, MACs {macs / MACS:.3f}x",
                    flush=True,
                )
        continue
    name, epochs, *kd_args = arg.split(":")
    epochs = int(epochs)
    alpha, temp = (float(v) for v in (kd_args or ["0.1", "4"]))
    kd = name.endswith(("_kd", "_kdu"))
    if name.endswith("_kdu") and tuned is None:
        sys.exit(f"{arg}: needs an `unpruned:E` variant before it")
    teacher = tuned if name.endswith("_kdu") else None
    shape = name.removesuffix("_kdu").removesuffix("_kd")
    shape = shape.removesuffix("_recal")
    m = fresh()
    callbacks = []
    if shape in ("gbn", "gl1"):
        per_epoch = int(np.ceil(len(x) / 64))
        ramp = PolynomialDecay(
            0.0,
            0.5,
            begin_step=0,
            end_step=per_epoch * (epochs // 2),
            frequency=per_epoch,
        )
        criterion = "bn_gamma" if shape == "gbn" else "l1"
        callbacks = [ChannelPruning(ramp, criterion=criterion)]
    elif shape != "unpruned":
        m = prune_channels(m, **SHAPES[shape])
    if "_recal" in name:
        recalibrate(m)
    t0 = time.time()
    finetune(m, epochs, kd, teacher, callbacks, alpha, temp)
    if callbacks:
        zeroed = _acc(m, xt, yt)
        m = shrink(m)
        print(f"  zeroed {zeroed:.4f} shrunk {_acc(m, xt, yt):.4f}")
    if shape == "unpruned":
        tuned = m
    print(
        f"RESULT seed {SEED} {arg}: test {_acc(m, xt, yt):.4f} "
        f"MACs {profile(m).macs / MACS:.3f}x {time.time() - t0:.0f}s",
        flush=True,
    )
