# ruff: noqa: E501  (long lines are notebook code inside strings)
"""Write the teaching notebooks of keras_slim from this one script.

The notebooks are generated (with nbformat) so that their source stays
reviewable as plain Python. Run from the repository root:

    python notebooks/_build.py            # write the six .ipynb files
    python notebooks/_build.py --execute  # and run them (stored outputs)
    python notebooks/_build.py --clean    # drop runtime noise from outputs

`--execute` runs each notebook with nbclient in a temporary directory;
`--quick` sets `QUICK = True` for that run (CI does the same in
`tests/notebooks_test.py`).
"""

import argparse
import os
import pathlib
import sys
import tempfile
import time

import nbformat
from nbformat import v4

HERE = pathlib.Path(__file__).resolve().parent
REPO = "keras-slim/keras_slim"

INSTALL = f"""\
# Install keras_slim when it is not importable yet (Colab); else a no-op.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("keras_slim") is None:
    subprocess.check_call([
        sys.executable, "-m", "pip", "install", "-q",
        "keras-slim @ git+https://github.com/{REPO}",
    ])"""

PARAMETERS = """\
QUICK = False  # True: a fast smoke run (CI); False: the real teaching run.
DATASET = "digits"  # offline, bundled with scikit-learn; no download.
# With the internet, try a real dataset instead (same code below):
# DATASET = "mnist"       # keras.datasets.mnist, 28x28 grey, resized
# DATASET = "cifar10"     # keras.datasets.cifar10, 32x32 colour
# DATASET = "tf_flowers"  # tensorflow_datasets, 5 classes of flowers"""

SETUP = """\
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tempfile

import keras
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf

import keras_slim

tf.get_logger().setLevel("ERROR")  # quieter outputs (retracing, assets)
keras.utils.set_random_seed(0)
WORKDIR = tempfile.mkdtemp()  # every file this notebook writes goes here
print("keras", keras.__version__, "| keras_slim", keras_slim.__version__)


def load_data(image_size=32, channels=1):
    \"\"\"(x_train, y_train), (x_test, y_test), float32 images in [0, 1].\"\"\"
    if DATASET == "digits":
        return keras_slim.datasets.load_digits(
            image_size=image_size, channels=channels
        )
    if DATASET == "mnist":
        (x, y), (xt, yt) = keras.datasets.mnist.load_data()
        x, xt = x[..., None], xt[..., None]
    elif DATASET == "cifar10":
        (x, y), (xt, yt) = keras.datasets.cifar10.load_data()
        y, yt = y[:, 0], yt[:, 0]
    elif DATASET == "tf_flowers":
        import tensorflow_datasets as tfds

        ds = tfds.load("tf_flowers", split="train", as_supervised=True)
        ds = ds.map(lambda im, lab: (tf.image.resize(im, (96, 96)), lab))
        x, y = (np.stack(a) for a in zip(*ds.as_numpy_iterator()))
        cut = int(0.8 * len(x))
        x, xt, y, yt = x[:cut], x[cut:], y[:cut], y[cut:]
    else:
        raise ValueError(f"Unknown DATASET={DATASET!r}")

    def prepare(images):
        images = tf.image.resize(images.astype("float32") / 255.0,
                                 (image_size, image_size)).numpy()
        if images.shape[-1] != channels:
            images = (images.mean(-1, keepdims=True) if channels == 1
                      else np.repeat(images, channels, axis=-1))
        return images

    return ((prepare(x), y.astype("int32")),
            (prepare(xt), yt.astype("int32")))


def compile_classifier(model, learning_rate=1e-3):
    model.compile(
        keras.optimizers.Adam(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))"""


def md(text):
    return v4.new_markdown_cell(text.strip("\n"))


def code(text):
    return v4.new_code_cell(text.strip("\n"))


def notebook(filename, title, cells):
    """Install cell, title, parameters, setup, then `cells`."""
    badge = (
        f"[![Open In Colab](https://colab.research.google.com/assets/"
        f"colab-badge.svg)](https://colab.research.google.com/github/{REPO}"
        f"/blob/main/notebooks/{filename})"
    )
    params = code(PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    nb = v4.new_notebook()
    nb.cells = [
        code(INSTALL),
        md(f"# {title}\n\n{badge}"),
        params,
        code(SETUP),
        *cells,
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["colab"] = {"provenance": []}
    return filename, nb


# --------------------------------------------------------------------- 01

PRUNING = notebook(
    "01_pruning.ipynb",
    "Magnitude pruning with one callback",
    [
        md("""
**What.** Magnitude pruning sets the smallest weights of each kernel to
exactly zero and keeps them there while the rest of the network trains on.
**Why.** Most trained networks have many weights close to zero: removing
them barely changes the function. A file full of zeros compresses very well
(gzip, or a sparse-aware runtime), so the download and storage shrink.
**When.** When the size of the file matters more than speed: plain dense
kernels on a phone do not run faster because some weights are zero (for
speed, see structured pruning in notebook 05, or the 2:4 pattern on
hardware that supports it).

The method (Han et al., 2015): train, remove the smallest weights, fine-tune
the rest. Zhu and Gupta (2017) showed that raising the sparsity *gradually*
inside one training run, fast at first and slowly at the end (a polynomial
schedule), works as well as complicated multi-stage recipes.

In `keras_slim` this is one callback, `MagnitudePruning`, added to an
ordinary `model.fit`: no wrapper layers, no `strip_pruning`, the model
stays your model.

References: Han et al., *Learning both Weights and Connections for
Efficient Neural Networks*, 2015 (https://arxiv.org/abs/1506.02626);
Zhu and Gupta, *To prune, or not to prune*, 2017
(https://arxiv.org/abs/1710.01878).
"""),
        code("""
from keras_slim.pruning import MagnitudePruning, sparsity_report
from keras_slim.schedules import ConstantSparsity, PolynomialDecay

EPOCHS = 4 if QUICK else 20          # dense training
PRUNE_EPOCHS = 2 if QUICK else 10    # pruning + fine-tuning
TARGETS = [0.5, 0.9] if QUICK else [0.5, 0.7, 0.8, 0.9, 0.95]

(x_train, y_train), (x_test, y_test) = load_data()
num_classes = int(y_train.max()) + 1
print(x_train.shape, x_test.shape, num_classes, "classes")
"""),
        md("""
## 1. A dense baseline

`keras_slim.models.small_cnn` is a MobileNet-like CNN of about 20,000
parameters (Conv, DepthwiseConv, pointwise Conv, BatchNorm, ReLU, a Dense
head that outputs logits).
"""),
        code("""
dense = keras_slim.models.small_cnn(x_train.shape[1:], num_classes)
compile_classifier(dense)
dense.fit(x_train, y_train, batch_size=64, epochs=EPOCHS, verbose=0)
dense_accuracy = accuracy(dense, x_test, y_test)
print(f"dense accuracy: {dense_accuracy:.3f}")
"""),
        md("""
## 2. Prune to 80% with one callback

`PolynomialDecay(0.0, 0.8, ...)` raises the target sparsity from 0 to 80%
over the first 70% of the fine-tuning steps, recomputing the masks every
`frequency` steps; the remaining steps let the surviving weights recover.
The callback writes `logs["sparsity"]` at the end of every epoch (History,
TensorBoard and CSVLogger see it); to draw the staircase step by step we
read the kernels with `sparsity_report` after each batch. `scope="global"`
ranks weights across all layers, so the tiny first convolution and the
depthwise layer keep more of their weights than the big 3x3 convolution:
on a model this small, that is worth many points of accuracy.
"""),
        code("""
def show(report):  # the report, without the (never pruned) BatchNorm rows
    for line in report.summary().splitlines():
        if "BatchNormalization" not in line:
            print(line)


def clone(model):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return compile_classifier(copy, learning_rate=5e-4)


steps_per_epoch = int(np.ceil(len(x_train) / 64))
total_steps = PRUNE_EPOCHS * steps_per_epoch
schedule = PolynomialDecay(0.0, 0.8, begin_step=0,
                           end_step=int(0.7 * total_steps), frequency=5)
pruned = clone(dense)
per_step = []
record = keras.callbacks.LambdaCallback(
    on_train_batch_end=lambda batch, logs: per_step.append(
        sparsity_report(pruned).sparsity))
pruned.fit(x_train, y_train, batch_size=64, epochs=PRUNE_EPOCHS, verbose=0,
           callbacks=[MagnitudePruning(schedule, scope="global"), record])
print(f"pruned accuracy: {accuracy(pruned, x_test, y_test):.3f}")
show(sparsity_report(pruned))
"""),
        code("""
steps = np.arange(1, len(per_step) + 1)
plt.figure(figsize=(6, 3))
plt.plot(steps, [schedule(s) for s in steps], "--", label="schedule target")
plt.plot(steps, per_step, label="measured sparsity")
plt.xlabel("optimizer step"); plt.ylabel("sparsity")
plt.title("Gradual pruning (Zhu & Gupta): fast first, slow at the end")
plt.legend(); plt.grid(alpha=0.3); plt.show()
"""),
        md("""
The measured sparsity follows the schedule as a staircase: masks change
only at update steps (every `frequency` steps), and in between the
constraint keeps pruned weights at exactly zero while Adam updates the
others. `BatchNormalization` and biases are never pruned (the report lists
what was skipped and why).

## 3. How far can we go? Accuracy against sparsity

Each point starts from the same dense model and prunes to one target with
the same schedule and fine-tuning budget.
"""),
        code("""
curve = []
for target in TARGETS:
    model = clone(dense)
    model.fit(x_train, y_train, batch_size=64, epochs=PRUNE_EPOCHS, verbose=0,
              callbacks=[MagnitudePruning(PolynomialDecay(
                  0.0, target, 0, int(0.7 * total_steps), frequency=5),
                  scope="global")])
    curve.append((target, sparsity_report(model).sparsity,
                  accuracy(model, x_test, y_test)))
    print(f"target {target:.2f}: sparsity {curve[-1][1]:.3f}, "
          f"accuracy {curve[-1][2]:.3f}")

plt.figure(figsize=(6, 3))
plt.plot([c[1] for c in curve], [c[2] for c in curve], "o-", label="pruned")
plt.axhline(dense_accuracy, color="gray", ls="--", label="dense")
plt.xlabel("sparsity of the pruned kernels"); plt.ylabel("test accuracy")
plt.title("Accuracy vs sparsity"); plt.legend(); plt.grid(alpha=0.3)
plt.show()
"""),
        md("""
Accuracy holds up well to high sparsities and then drops: the last few
percent remove weights the network needs. Where the knee sits depends on
the model's redundancy: tiny models like this one have less to spare than
a ResNet-50, which loses little at 90%.

## 4. The 2:4 pattern

`pattern="2:4"` keeps at most 2 non-zeros in every group of 4 consecutive
input weights, the semi-structured sparsity that NVIDIA Ampere GPUs (and
some NPUs) can execute at up to twice the speed. It is 50% sparsity with a
constraint, so it costs a little more accuracy than unstructured 50%. The
report lists kernels the pattern cannot apply to: a depthwise kernel, or
an input axis that is not a multiple of 4 (the first conv reads 1 channel).
"""),
        code("""
two_four = clone(dense)
two_four.fit(x_train, y_train, batch_size=64, epochs=PRUNE_EPOCHS, verbose=0,
             callbacks=[MagnitudePruning(ConstantSparsity(0.5, frequency=10),
                                         pattern="2:4")])
print(f"2:4 accuracy: {accuracy(two_four, x_test, y_test):.3f}")
show(sparsity_report(two_four, pattern="2:4"))
kernel = two_four.get_layer("conv4").kernel.numpy()
groups = (kernel != 0).reshape(3, 3, -1, 4, kernel.shape[-1]).sum(axis=3)
print("non-zeros per group of 4 inputs:", np.unique(groups))
"""),
        md("""
## 5. What it buys: the int8 file, before and after gzip

Zeros only shrink a file once something skips them. A dense `.tflite`
stores every zero as a byte, so its raw size does not change; gzip (what
app stores and web servers apply) squeezes long runs of zeros. We export
both models to int8 with `keras_slim.export_tflite` (the converter
calibrates activation ranges on a few hundred training images) and read
the sizes with `keras_slim.inspect_tflite`.
"""),
        code("""
sizes = {}
for name, model in [("dense", dense), ("pruned 80%", pruned)]:
    path = os.path.join(WORKDIR, name.split()[0] + ".tflite")
    keras_slim.export_tflite(model, path, representative_data=x_train[:300])
    info = keras_slim.inspect_tflite(path)
    sizes[name] = (info.bytes, info.gzip_bytes)
    acc = keras_slim.litert.evaluate(path, x_test, y_test)
    print(f"{name:>11}: {info.bytes:>7,} bytes, gzip {info.gzip_bytes:>7,}"
          f" bytes, int8 only: {info.int8_only}, int8 accuracy {acc:.3f}")

labels = list(sizes)
plt.figure(figsize=(6, 3))
plt.bar(np.arange(2) - 0.2, [sizes[k][0] / 1024 for k in labels], 0.4,
        label="int8 .tflite")
plt.bar(np.arange(2) + 0.2, [sizes[k][1] / 1024 for k in labels], 0.4,
        label="after gzip")
plt.xticks(range(2), labels); plt.ylabel("KiB"); plt.legend()
plt.title("File size: zeros pay off after compression"); plt.show()
"""),
        md("""
**Takeaways.** One callback prunes in place during `fit`; sparsity goes
into `logs`; `sparsity_report` says what was pruned and skipped. The gain
is in compressed size (and in sparse-aware runtimes), not in dense CPU
speed. Combine with quantization-aware training (notebook 02) and the
zeros survive: the symmetric int8 quantizer maps 0 to 0.
"""),
    ],
)

# --------------------------------------------------------------------- 02

QAT = notebook(
    "02_quantization_aware_training.ipynb",
    "Post-training quantization vs quantization-aware training",
    [
        md("""
**What.** An int8 model stores each weight and activation as an 8-bit
integer `q` with a scale `s` and zero point `z`: `real = s * (q - z)`. The
file is 4x smaller than float32 and runs on integer-only hardware (NPUs,
DSPs, microcontrollers).

**Post-training quantization (PTQ)** converts a trained float model: the
converter runs a few hundred *representative* inputs through it to pick the
activation ranges. It is one line and usually costs little accuracy.

**Quantization-aware training (QAT)** (Jacob et al., 2018) fine-tunes with
the rounding simulated in the forward pass ("fake quantization"), with
gradients passed straight through the rounding, so the weights learn to
live with it; the ranges are learned as moving averages during training,
so no representative data is needed at export.

**When.** Start with PTQ. Use QAT when PTQ loses accuracy you care about
(small or depthwise-heavy models, unusual activations, per-tensor-only
runtimes) or when you want the Keras model to predict what the int8 file
predicts, bit for bit in class decisions.

Reference: Jacob et al., *Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference*, CVPR 2018
(https://arxiv.org/abs/1712.05877).
"""),
        code("""
from keras_slim.quantization import QuantizationAwareTraining

EPOCHS = 4 if QUICK else 20
QAT_EPOCHS = 1 if QUICK else 5

(x_train, y_train), (x_test, y_test) = load_data()
num_classes = int(y_train.max()) + 1

model = keras_slim.models.small_cnn(x_train.shape[1:], num_classes)
compile_classifier(model)
model.fit(x_train, y_train, batch_size=64, epochs=EPOCHS, verbose=0)
float_accuracy = accuracy(model, x_test, y_test)
print(f"float accuracy: {float_accuracy:.3f}")
"""),
        md("""
## 1. Post-training quantization

`export_tflite` calibrates on `representative_data`, checks that every
compute op is int8 and writes the file; `keras_slim.litert.compare` runs
it with the LiteRT interpreter and compares with the Keras model.
"""),
        code("""
ptq_path = os.path.join(WORKDIR, "ptq.tflite")
keras_slim.export_tflite(model, ptq_path, representative_data=x_train[:300])
ptq = keras_slim.litert.compare(model, ptq_path, x_test)
ptq_accuracy = keras_slim.litert.evaluate(ptq_path, x_test, y_test)
print(f"PTQ int8 accuracy {ptq_accuracy:.3f}; agreement with Keras "
      f"{ptq.agreement:.3f}; max |logit error| {ptq.max_abs_error:.3f}")
"""),
        md("""
## 2. Quantization-aware training

We fine-tune a copy of the trained model for a few epochs at a low
learning rate with the `QuantizationAwareTraining` callback. It acts in
place: afterwards the Keras model *simulates* int8, and `export_tflite`
needs no representative data. (`model.save` refuses after the callback,
because the learned ranges live outside the layers; to save and resume
QAT, start from `keras_slim.quantization.quantize_model(model)`, whose
fake-quant layers are serializable.)

`freeze_bn_delay` makes BatchNorm use its moving statistics for the last
steps, as the folded int8 file does.
"""),
        code("""
qat_model = keras.models.clone_model(model)
qat_model.set_weights(model.get_weights())
compile_classifier(qat_model, learning_rate=1e-4)
steps = QAT_EPOCHS * int(np.ceil(len(x_train) / 64))
qat_model.fit(x_train, y_train, batch_size=64, epochs=QAT_EPOCHS, verbose=0,
              callbacks=[QuantizationAwareTraining(
                  freeze_bn_delay=max(1, steps // 2))])
qat_path = os.path.join(WORKDIR, "qat.tflite")
keras_slim.export_tflite(qat_model, qat_path)  # ranges learned in training
qat = keras_slim.litert.compare(qat_model, qat_path, x_test)
qat_accuracy = keras_slim.litert.evaluate(qat_path, x_test, y_test)
print(f"QAT int8 accuracy {qat_accuracy:.3f}; agreement with Keras "
      f"{qat.agreement:.3f}; max |logit error| {qat.max_abs_error:.3f}")
print("int8 only:", keras_slim.inspect_tflite(qat_path).int8_only)
"""),
        code("""
rows = [("float Keras", float_accuracy, None),
        ("PTQ int8", ptq_accuracy, ptq.agreement),
        ("QAT int8", qat_accuracy, qat.agreement)]
print(f"{'model':<12} {'accuracy':>8} {'agreement':>10}")
for name, acc, agree in rows:
    print(f"{name:<12} {acc:8.3f} {'' if agree is None else f'{agree:10.3f}'}")
"""),
        md("""
Agreement is the fraction of test images for which the `.tflite` file and
the Keras model predict the same class. For PTQ the Keras model is the
float model, so disagreements are the price of rounding. For QAT the Keras
model already simulates the rounding, so the file should agree almost
everywhere: what you validated in Keras is what ships.

## 3. Where does the error go?

Two pictures. First, per layer: how much of each kernel is lost to int8
rounding (symmetric, per output channel for convolutions, per tensor for
Dense, as the converter does). Depthwise kernels, with few weights per
channel and wide ranges, typically lose the most; that is where PTQ hurts
MobileNets. Second, per image: the logit error of each file against its
Keras model.
"""),
        code("""
def weight_error(kernel, per_channel):
    axis = tuple(range(kernel.ndim - 1)) if per_channel else None
    if kernel.ndim == 4 and per_channel and kernel.shape[-1] == 1:
        axis = (0, 1, 3)  # depthwise: channels on axis 2
    scale = np.max(np.abs(kernel), axis=axis, keepdims=True) / 127.0
    scale = np.where(scale == 0, 1.0, scale)
    rounded = np.round(kernel / scale).clip(-127, 127) * scale
    return np.linalg.norm(rounded - kernel) / np.linalg.norm(kernel)


names, errors = [], []
for layer in model.layers:
    if hasattr(layer, "kernel"):
        names.append(f"{layer.name}\\n{type(layer).__name__}")
        errors.append(weight_error(layer.kernel.numpy(),
                                   not isinstance(layer, keras.layers.Dense)))

keras_logits = model.predict(x_test, verbose=0)
ptq_logits = keras_slim.litert.predict(ptq_path, x_test)
qat_logits = keras_slim.litert.predict(qat_path, x_test)
qat_keras = qat_model.predict(x_test, verbose=0)

fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
axes[0].bar(range(len(errors)), errors)
axes[0].set_xticks(range(len(errors)), names, fontsize=8)
axes[0].set_ylabel("relative weight error")
axes[0].set_title("int8 rounding error per kernel")
bins = np.linspace(0, max(np.abs(ptq_logits - keras_logits).max(), 1e-3), 30)
axes[1].hist(np.abs(ptq_logits - keras_logits).max(1), bins, alpha=0.7,
             label="PTQ file vs float Keras")
axes[1].hist(np.abs(qat_logits - qat_keras).max(1), bins, alpha=0.7,
             label="QAT file vs QAT Keras")
axes[1].set_xlabel("max |logit error| per test image"); axes[1].legend()
axes[1].set_title("Keras vs TFLite, per image")
plt.tight_layout(); plt.show()
"""),
        md("""
And the confusion between the float model's and the PTQ file's class
decisions: off-diagonal cells are the images where rounding changed the
answer (often between classes the model already found close, such as 3/8
or 1/7).
"""),
        code("""
confusion = np.zeros((num_classes, num_classes), int)
np.add.at(confusion, (keras_logits.argmax(1), ptq_logits.argmax(1)), 1)
plt.figure(figsize=(4, 4))
plt.imshow(np.log1p(confusion), cmap="Blues")
for i, j in zip(*np.nonzero(confusion)):
    if i != j:
        plt.text(j, i, confusion[i, j], ha="center", va="center", color="red")
plt.xlabel("PTQ int8 class"); plt.ylabel("float Keras class")
plt.title(f"{int(confusion.sum() - np.trace(confusion))} changed decisions")
plt.show()
"""),
        md("""
## 4. A MobileNetV2: where the error starts, and what to do about it

A phone model is rarely a 20k-parameter CNN. MobileNetV2 (width 0.35, at
96x96, trained here from scratch: no download) loses more to PTQ:
depthwise kernels with few weights per channel, and linear projections
whose outputs feed residual additions. `error_report` runs the int8 file
with every intermediate tensor readable and compares each layer's output
with Keras (SNR in dB, cosine): the first layer where the curve drops is
where to look.
"""),
        code("""
from keras_slim.quantization import error_report

MNV2_EPOCHS = 3 if QUICK else 30
(xm, ym), (xm_test, ym_test) = load_data(image_size=96, channels=3)
mnv2 = keras.applications.MobileNetV2(
    input_shape=(96, 96, 3), alpha=0.35, weights=None,
    classes=num_classes, classifier_activation=None)
# keras.applications' BatchNormalization layers average their statistics
# with momentum 0.999, made for ImageNet's thousands of steps an epoch. On
# 22 steps an epoch the moving statistics would still be near their start
# after 30 epochs, and the model at chance in inference: average faster.
for layer in mnv2.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
        layer.momentum = 0.9
steps = MNV2_EPOCHS * int(np.ceil(len(xm) / 64))
compile_classifier(mnv2, keras.optimizers.schedules.CosineDecay(2e-3, steps))
mnv2.fit(xm, ym, batch_size=64, epochs=MNV2_EPOCHS, verbose=0)
print(f"MobileNetV2-0.35 float accuracy {accuracy(mnv2, xm_test, ym_test):.3f}")

# A QUICK model is barely trained (near ties everywhere): accept its file.
check = dict(min_agreement=0.0) if QUICK else {}
int8_path = os.path.join(WORKDIR, "mnv2_int8.tflite")
keras_slim.export_tflite(mnv2, int8_path, representative_data=xm[:300], **check)
print("int8 agreement with Keras "
      f"{keras_slim.litert.compare(mnv2, int8_path, xm_test).agreement:.3f}")
report = error_report(mnv2, int8_path, xm_test[:64])
print("largest SNR drops:", ", ".join(
    f"{name} ({report.drops[name]:.1f} dB)" for name in report.ranked()[:4]))
report.plot(); plt.tight_layout(); plt.show()
"""),
        md("""
Two remedies that keep the file integer. **int16 activations**
(`quantization="int16x8"`, int8 weights): activations get 256x finer
steps, so what is left is the int8 *weights'* error. **Bias correction**
(`bias_correction=True`, Nagel et al. 2019, section 4.2) then removes
the mean shift that rounding the weights adds to each layer's output,
measured on the calibration data. Measured on 3 trained MobileNetV2s
(benchmarks/RESULTS.md): int16x8 agreement 99.56% without, 100% with it;
on smaller CNNs and on int8 files its effect was -0.9 to +1.3 points, so
it is off by default: compare both, as here. int16x8 kernels are slower
than int8 on most CPUs (XNNPACK has none): measure on your device.
(Reference: Nagel et al., *Data-Free Quantization Through Weight
Equalization and Bias Correction*, ICCV 2019,
https://arxiv.org/abs/1906.04721.)
"""),
        code("""
for corrected in (False, True):
    path = os.path.join(WORKDIR, f"mnv2_int16x8_{corrected}.tflite")
    export = keras_slim.export_tflite(
        mnv2, path, quantization="int16x8", representative_data=xm[:300],
        bias_correction=corrected, **check)
    agreement = keras_slim.litert.compare(mnv2, path, xm_test).agreement
    print(f"int16x8, bias_correction={corrected}: agreement {agreement:.3f}, "
          f"integer only {export.integer_only}, {export.info.bytes:,} bytes")
    for note in export.notes:
        print("  ", note[:120])
"""),
        md("""
**Takeaways.** PTQ is one call and often enough; check it with
`litert.compare` rather than trusting it. QAT costs a short fine-tune and
gives a Keras model whose decisions the int8 file reproduces. The error
concentrates in a few layers: if one layer dominates, you can also keep
only it in float (`filters=` and `allow_float_fallback=True`), at the cost
of a mixed file that integer-only hardware cannot run.
"""),
    ],
)

# --------------------------------------------------------------------- 03

DISTILLATION = notebook(
    "03_distillation.ipynb",
    "Knowledge distillation: a small student learns from a teacher",
    [
        md("""
**What.** A small *student* is trained on the labels **and** on the
output distribution of a large trained *teacher*, softened by a
temperature `T`: `softmax(logits / T)`. **Why.** The teacher's wrong-class
probabilities carry information the labels do not ("this 3 looks a bit
like an 8"), Hinton's *dark knowledge*; the student learns a smoother
function from the same data. **When.** When you need a model smaller than
pruning or quantization alone can reach, or a different architecture, and
you have a good teacher (and unlabeled data can help, since the teacher
labels it).

The loss of `keras_slim.distillation.Distiller`:
`alpha * CE(y, student) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))`.
The `T^2` keeps the gradient size independent of `T`.

Reference: Hinton, Vinyals and Dean, *Distilling the Knowledge in a Neural
Network*, 2015 (https://arxiv.org/abs/1503.02531).
"""),
        code("""
from keras_slim.distillation import Distiller, cache_teacher_outputs

TEACHER_EPOCHS = 4 if QUICK else 25
STUDENT_EPOCHS = 3 if QUICK else 30
TEMPERATURES = [1.0, 4.0] if QUICK else [1.0, 2.0, 4.0, 8.0, 16.0]

(x_train, y_train), (x_test, y_test) = load_data()
num_classes = int(y_train.max()) + 1

teacher = keras_slim.models.small_cnn(x_train.shape[1:], num_classes)
compile_classifier(teacher)
teacher.fit(x_train, y_train, batch_size=64, epochs=TEACHER_EPOCHS, verbose=0)
print(f"teacher: {teacher.count_params():,} params, "
      f"accuracy {accuracy(teacher, x_test, y_test):.3f}")


def make_student(seed=1):
    keras.utils.set_random_seed(seed)  # every student starts the same
    return keras.Sequential([
        keras.Input(x_train.shape[1:]),
        keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(num_classes),
    ], name="student")


print(f"student: {make_student().count_params():,} params")
"""),
        md("""
## 1. What the temperature does

The teacher's softmax at `T = 1` is almost one-hot; raising `T` reveals
the relative probabilities of the other classes, which is what the
student learns from.
"""),
        code("""
teacher_logits = cache_teacher_outputs(teacher, x_train)
sample = teacher_logits[np.argmax(y_train == 3)]  # a "3"
plt.figure(figsize=(7, 3))
for i, t in enumerate([1, 4, 16]):
    p = tf.nn.softmax(sample / t).numpy()
    plt.bar(np.arange(num_classes) + (i - 1) * 0.27, p, 0.27, label=f"T={t}")
plt.xticks(range(num_classes)); plt.xlabel("class"); plt.ylabel("p")
plt.title("Teacher's output for one '3', softened by T"); plt.legend()
plt.show()
"""),
        md("""
## 2. Student alone vs distilled

`cache_teacher_outputs` runs the teacher once; passing the cached logits
in the targets (`{"labels": y, "teacher_outputs": t}`) means the teacher
is not run at every step, so distillation costs about what training the
student alone costs (valid without random augmentation).
"""),
        code("""
alone = compile_classifier(make_student())
alone.fit(x_train, y_train, batch_size=64, epochs=STUDENT_EPOCHS, verbose=0)
alone_accuracy = accuracy(alone, x_test, y_test)
targets = {"labels": y_train, "teacher_outputs": teacher_logits}

results = {}
for t in TEMPERATURES:
    distiller = Distiller(teacher, make_student(), temperature=t, alpha=0.1)
    compile_classifier(distiller)
    distiller.fit(x_train, targets, batch_size=64, epochs=STUDENT_EPOCHS,
                  verbose=0)
    results[t] = accuracy(distiller.student, x_test, y_test)
    print(f"T={t:>4}: distilled student accuracy {results[t]:.3f}")
print(f"student alone: {alone_accuracy:.3f}")

plt.figure(figsize=(6, 3))
plt.plot(list(results), list(results.values()), "o-", label="distilled")
plt.axhline(alone_accuracy, color="gray", ls="--", label="student alone")
plt.xscale("log", base=2); plt.xlabel("temperature T")
plt.ylabel("student test accuracy"); plt.legend(); plt.grid(alpha=0.3)
plt.title("Effect of the temperature"); plt.show()
"""),
        md("""
Read this plot honestly: on clean labels, with a teacher only a point or
two better than the student trained alone, distillation does **not** beat
the student alone at this budget. Two reasons, both measured in
`benchmarks/RESULTS.md`: the soft targets carry little that the clean
labels do not already say, and a student matching a softened
distribution fits more slowly (there, over 3 seeds: 96.1% distilled vs
97.0% alone after 60 epochs, 97.2% vs 97.0% after 120; with a larger
`alpha`, 0.5, leaning more on the labels, 97.7%). Distillation earns its
keep when the teacher knows clearly more than the labels tell the
student, for example when the student's labels are noisy.

## 3. When the teacher knows more: noisy labels

Say the student must learn from 300 images of which 40% carry a random
label (a cheap annotation job), while the teacher was trained on clean
data. Trained alone, the student fits the wrong labels too; distilled,
most of its signal comes from the teacher's soft targets (`alpha=0.1`).
"""),
        code("""
rng = np.random.default_rng(0)
subset = rng.choice(len(x_train), 300, replace=False)
x_noisy, y_noisy = x_train[subset], y_train[subset].copy()
flip = rng.random(300) < 0.4
y_noisy[flip] = rng.integers(0, num_classes, flip.sum())
print(f"{(y_noisy != y_train[subset]).mean():.0%} of the 300 labels are wrong")
NOISY_EPOCHS = 10 if QUICK else 60

alone_noisy = compile_classifier(make_student(), learning_rate=3e-3)
alone_noisy.fit(x_noisy, y_noisy, batch_size=32, epochs=NOISY_EPOCHS,
                verbose=0)
distilled_noisy = Distiller(teacher, make_student(), temperature=4.0,
                            alpha=0.1)
compile_classifier(distilled_noisy, learning_rate=3e-3)
distilled_noisy.fit(
    x_noisy, {"labels": y_noisy, "teacher_outputs": teacher_logits[subset]},
    batch_size=32, epochs=NOISY_EPOCHS, verbose=0)
noisy = {"student alone": accuracy(alone_noisy, x_test, y_test),
         "distilled": accuracy(distilled_noisy.student, x_test, y_test)}
for name, value in noisy.items():
    print(f"{name:>14}: {value:.3f}")
"""),
        md("""

## 4. A pitfall: `keras.distillation`'s default loss

Keras 3 ships `keras.distillation.Distiller` with
`LogitsDistillation(temperature=3.0, loss="kl_divergence")`. The string
`"kl_divergence"` resolves to the plain function
`keras.losses.kl_divergence`, which expects **probabilities**; the softmax
is applied only when the loss is a `keras.losses.KLDivergence()`
*instance*. With the default string, the KL runs on raw temperature-scaled
logits: negative logits are clipped to a tiny epsilon, and the "loss" is
not a divergence between distributions at all. On this dataset we
measured a student reaching 69% with the default against 91% trained
alone (and 92% with a `KLDivergence()` instance). You can see the problem
in two lines:
"""),
        code("""
t_logits = tf.constant([[4.0, -1.0, 0.5]])
s_logits = tf.constant([[-2.0, 3.0, 0.0]])
T = 3.0
kl_fn = keras.losses.get("kl_divergence")  # what the default string gives
raw = kl_fn(t_logits / T, s_logits / T)     # KL on logits: meaningless
true = keras.losses.kl_divergence(tf.nn.softmax(t_logits / T),
                                  tf.nn.softmax(s_logits / T))
print("resolved to:", kl_fn)
print(f"KL on raw logits: {float(raw[0]):.3f}   true KL of the softmaxes: "
      f"{float(true[0]):.3f}")
"""),
        md("""
`keras_slim.distillation.Distiller` reads from each model's last layer
whether it outputs logits or softmax probabilities (`from_logits=None`,
the default; probabilities, such as a `keras.applications` head's, go
through their logarithm) and always computes the KL between softmaxes of
the temperature-scaled outputs, so this cannot happen. If you use
`keras.distillation`, pass `loss=keras.losses.KLDivergence()`.

**Takeaways.** Train or reuse a teacher clearly better than the student
alone, cache its outputs, distill with `T` around 4 and `alpha` 0.5 (the
default: it led 0.1 on clean labels over 3 seeds, and on 40% wrong labels
in one); give the student more epochs than alone, and always check the
student alone as a baseline.
The student is a plain Keras model (`distiller.student`): prune,
quantize and export it like any other (notebooks 01, 02, 06).
"""),
    ],
)

# --------------------------------------------------------------------- 04

TRANSFER = notebook(
    "04_transfer_learning.ipynb",
    "Transfer learning with few labels",
    [
        md("""
**What.** Reuse a network trained on one task as the starting point for
another. **Why.** Early layers learn generic features (edges, strokes,
textures) that transfer; with few labels, learning them from scratch
overfits. **When.** Whenever you have a related pretrained model and a
small labeled set: this is how most production vision models are built.

Three ways to use the pretrained body:
- **feature extraction**: freeze the body, train only a new head (fast,
  safe with very few labels);
- **fine-tuning**: then unfreeze the top of the body and train it too at a
  low learning rate;
- **gradual unfreezing** (ULMFiT): unfreeze from the top down, one stage
  per epoch, so the random head's large early gradients do not wreck the
  pretrained features.

Here, offline, the "pretrained" model is our own: trained on the digits
0-4, it transfers to digits 5-9 with **3 labeled images per class**
(change `LABELS_PER_CLASS` to see how the picture moves with more).

References: Yosinski et al., *How transferable are features in deep
neural networks?*, NeurIPS 2014 (https://arxiv.org/abs/1411.1792); Howard
and Ruder, *Universal Language Model Fine-tuning for Text Classification*
(ULMFiT), ACL 2018 (https://arxiv.org/abs/1801.06146).
"""),
        code("""
from keras_slim import transfer

PRETRAIN_EPOCHS = 10 if QUICK else 30
HEAD_EPOCHS = 10 if QUICK else 60
FINETUNE_EPOCHS = 6 if QUICK else 40
LABELS_PER_CLASS = 3  # try 1 or 10

(x_train, y_train), (x_test, y_test) = load_data()
source = y_train < 5
x_source, y_source = x_train[source], y_train[source]

rng = np.random.default_rng(0)
few = np.concatenate([rng.choice(np.nonzero(y_train == c)[0],
                                 LABELS_PER_CLASS, replace=False)
                      for c in range(5, 10)])
x_few, y_few = x_train[few], y_train[few] - 5
target_test = y_test >= 5
x_target_test, y_target_test = x_test[target_test], y_test[target_test] - 5
print(f"source task: {len(x_source)} images of 0-4; target task: "
      f"{len(x_few)} labeled images of 5-9, {len(x_target_test)} to test")
"""),
        code("""
pretrained = keras_slim.models.small_cnn(x_train.shape[1:], num_classes=5)
compile_classifier(pretrained)
pretrained.fit(x_source, y_source, batch_size=64, epochs=PRETRAIN_EPOCHS,
               verbose=0)
source_test = y_test < 5
print("accuracy on 0-4:",
      round(accuracy(pretrained, x_test[source_test], y_test[source_test]), 3))
"""),
        md("""
## 1. Feature extraction, with cached features

`extract_features` runs the frozen body once, we train a small head on
the cached features (many epochs cost almost nothing), and `attach_head`
joins body and head into one model, ready to export.

*Which* features matters. By default they are the input of the detected
head: here the 64 globally average-pooled channels. Pooling throws away
*where* each stroke is, and a body trained to tell 0-4 apart has no
reason to keep, in 64 averages, what tells a 5 from an 8. The 8x8x64 map
just before the pooling (`layer="relu4"`) keeps the layout. We try both.
"""),
        code("""
results = {}
for name, layer in [("head on pooled features", None),
                    ("head on the map before pooling", "relu4")]:
    features = transfer.extract_features(pretrained, x_few, layer=layer)
    head = keras.Sequential([keras.Input(features.shape[1:]),
                             keras.layers.Flatten(), keras.layers.Dense(5)],
                            name="head")
    compile_classifier(head, learning_rate=1e-2)
    head.fit(features, y_few, batch_size=16, epochs=HEAD_EPOCHS, verbose=0)
    extractor = transfer.attach_head(pretrained, head, layer=layer)
    results[name] = accuracy(extractor, x_target_test, y_target_test)
    print(f"{name} {features.shape[1:]}: {results[name]:.3f}")
"""),
        md("""
## 2. Fine-tuning with gradual unfreezing

`swap_head` copies the model with a fresh 5-way head (here on the map
before pooling: `head_layer="gap"` replaces the pooling too, and the new
head flattens the map); `freeze(up_to=...)`
freezes the body (and recompiles, since a compiled Keras model keeps
training its old set of weights otherwise). `GradualUnfreezing` then
unfreezes `conv4`, then the pointwise block, then everything, at the
epochs we give, with a lower learning rate for deeper stages
(`learning_rate_multiplier`, discriminative fine-tuning).

**BatchNorm in inference mode.** A frozen `BatchNormalization` layer in
Keras 3 normalizes with its *moving* statistics and does not update them.
That is what we want: 50 images give noisy batch statistics, and updating
the pretrained statistics with them (or normalizing with the batch's own
statistics) would shift every activation the body produces. `unfreeze`
and `GradualUnfreezing` keep BatchNorm frozen by default
(`keep_batchnorm_frozen=True`), the Keras fine-tuning recipe. Below we
check that the moving mean of a BatchNorm layer is unchanged after
fine-tuning.
"""),
        code("""
finetuned = transfer.swap_head(pretrained, num_classes=5, head_layer="gap")
compile_classifier(finetuned, learning_rate=1e-3)
transfer.freeze(finetuned, up_to="relu4")
transfer.trainable_summary(finetuned)
stage = max(1, FINETUNE_EPOCHS // 4)
schedule = {stage: "conv4", 2 * stage: "pw2", 3 * stage: 1.0}
bn_before = finetuned.get_layer("bn2").moving_mean.numpy().copy()
history = finetuned.fit(
    x_few, y_few, batch_size=16, epochs=FINETUNE_EPOCHS, verbose=0,
    callbacks=[transfer.GradualUnfreezing(schedule,
                                          learning_rate_multiplier=0.5)])
bn_after = finetuned.get_layer("bn2").moving_mean.numpy()
print("BatchNorm moving mean unchanged:", np.allclose(bn_before, bn_after))
results["gradual fine-tuning"] = accuracy(finetuned, x_target_test,
                                          y_target_test)
print(f"gradual fine-tuning: {results['gradual fine-tuning']:.3f}")
plt.figure(figsize=(6, 2.5))
plt.step(range(FINETUNE_EPOCHS), history.history["trainable_params"],
         where="post")
plt.xlabel("epoch"); plt.ylabel("trainable params")
plt.title("Gradual unfreezing: the body opens from the top down"); plt.show()
"""),
        md("""
## 3. From scratch, for comparison

The same architecture, randomly initialized, trained on the same
labeled images for as many epochs as the two stages above.
"""),
        code("""
scratch = keras_slim.models.small_cnn(x_train.shape[1:], num_classes=5)
compile_classifier(scratch)
scratch.fit(x_few, y_few, batch_size=16, epochs=FINETUNE_EPOCHS + HEAD_EPOCHS,
            verbose=0)
results["from scratch"] = accuracy(scratch, x_target_test, y_target_test)

plt.figure(figsize=(7, 3))
plt.bar([n.replace(" on ", "\\non ") for n in results],
        list(results.values()), color=["C0", "C2", "C1", "C7"])
for i, v in enumerate(results.values()):
    plt.text(i, v + 0.01, f"{v:.2f}", ha="center")
plt.ylim(0, 1.05); plt.ylabel("accuracy on digits 5-9")
plt.title(f"{LABELS_PER_CLASS} labels per class: transfer vs scratch")
plt.show()
"""),
        md("""
With very few labels the pretrained body gives a large head start, as
long as the head reads features that still hold the information (the
map before pooling, not the 64 averages). The head start shrinks as
labels grow: these 8x8 digits are easy, and with 10 labels a class a
model trained from scratch already reaches about 92% (so does a linear
model on the raw pixels). `benchmarks/RESULTS.md` has the measurements
over 3 seeds, with the learning rate of every row chosen by the same
sweep: fine-tuned 92.4% vs scratch 78.6% with 3 labels a class, 95.1% vs
92.0% with 10. Fine-tuning helps over pure feature extraction when the
target differs from the source (here, new digit shapes); with a single
label a class, feature extraction is the safer first try.

**Takeaways.** `extract_features` + `attach_head` for fast feature
extraction; `swap_head` + `freeze` + `GradualUnfreezing` for fine-tuning;
BatchNorm stays in inference mode. With a real pretrained backbone
(`keras.applications.MobileNetV2(weights="imagenet")`, with the internet),
the same calls apply.
"""),
    ],
)

# --------------------------------------------------------------------- 05

STRUCTURED = notebook(
    "05_structured_pruning.ipynb",
    "Structured (channel) pruning of a MobileNetV2",
    [
        md("""
**What.** Structured pruning removes whole convolution filters (channels)
and Dense units, with everything that depends on them: the BatchNorm that
follows, the DepthwiseConv2D that reads them, the next layer's inputs,
every branch of a residual `Add`. **Why.** Unlike zeros inside a kernel
(notebook 01), a smaller layer is smaller and faster on *every* runtime:
fewer MACs, fewer bytes, no sparse kernels needed. **When.** When you need
latency or memory savings on ordinary hardware; accept a fine-tuning run
to recover accuracy.

How channels are ranked: Li et al. (2017) remove the filters with the
smallest L1 norm (`criterion="l1"`); Network Slimming (Liu et al., 2017)
uses the BatchNorm scale `|gamma|` (`criterion="bn_gamma"`), ideally after
training with an L1 penalty on gamma. `prune_channels` prunes at once;
`ChannelPruning` (a callback) zeroes channels gradually during `fit`, and
`shrink` then removes them exactly. This notebook does both and compares
them; gradual pruning is the one to use (Zhu and Gupta, 2017, found the
same for weights).

References: Li et al., *Pruning Filters for Efficient ConvNets*, ICLR 2017
(https://arxiv.org/abs/1608.08710); Liu et al., *Learning Efficient
Convolutional Networks through Network Slimming*, ICCV 2017
(https://arxiv.org/abs/1708.06519); Zhu and Gupta, *To prune, or not to
prune*, 2017 (https://arxiv.org/abs/1710.01878).
"""),
        code("""
from keras_slim.pruning.channels import (ChannelPruning, channel_report,
                                         prune_channels, shrink)
from keras_slim.schedules import PolynomialDecay

IMAGE_SIZE = 32 if QUICK else 64
EPOCHS = 2 if QUICK else 30
FINETUNE_EPOCHS = 2 if QUICK else 15
FRACTION = 0.5

(x_train, y_train), (x_test, y_test) = load_data(IMAGE_SIZE, channels=3)
num_classes = int(y_train.max()) + 1

model = keras.applications.MobileNetV2(
    input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), alpha=0.35, weights=None,
    classes=num_classes, classifier_activation=None)
for layer in model.layers:  # few steps an epoch: let BN statistics keep up
    if isinstance(layer, keras.layers.BatchNormalization):
        layer.momentum = 0.9
compile_classifier(model)
model.fit(x_train, y_train, batch_size=32, epochs=EPOCHS, verbose=0)
base_accuracy = accuracy(model, x_test, y_test)
print(f"MobileNetV2-0.35 at {IMAGE_SIZE}x{IMAGE_SIZE}: "
      f"{model.count_params():,} params, accuracy {base_accuracy:.3f}")
"""),
        md("""
MobileNetV2 at this size trained from scratch on 1,347 images is far from
its ImageNet self, but it has all the structure that makes channel
pruning hard: inverted residual blocks joined by `Add`, depthwise
convolutions, ReLU6, BatchNorm everywhere.

## 1. Remove half the channels at once

`prune_channels` returns a new, smaller model (the original is not
modified): each group of dependent layers keeps half its channels (at
least `min_channels`, rounded to multiples of 8, which suit int8 and
float kernels), those with the smallest BatchNorm scale going first; the
classifier's units are never removed.
"""),
        code("""
small = prune_channels(model, fraction=FRACTION, criterion="bn_gamma",
                       round_to=8)
report = channel_report(model, small)
lines = report.summary().splitlines()
print("\\n".join(lines[:8] + ["..."] + lines[-4:]))
compile_classifier(small, learning_rate=5e-4)
pruned_accuracy = accuracy(small, x_test, y_test)
small.fit(x_train, y_train, batch_size=32, epochs=FINETUNE_EPOCHS, verbose=0)
finetuned_accuracy = accuracy(small, x_test, y_test)
print(f"accuracy: original {base_accuracy:.3f}, pruned {pruned_accuracy:.3f}"
      f", fine-tuned {finetuned_accuracy:.3f}")
"""),
        md("""
Right after pruning, accuracy drops to about chance: half the features
of every layer are gone at once, and fine-tuning has to re-train the
network rather than repair it.

## 2. Prune gradually while fine-tuning

`ChannelPruning` does the same selection inside `fit`, a little at a
time: the schedule raises the fraction from 0 to 50% over the first half
of the fine-tune (one step per epoch), the zeroed channels stay zero, and
the network learns to do without them while it still has the others.
`shrink` then removes the zeroed channels; the smaller model predicts
exactly as the zeroed one did. Same model, same epochs, same optimizer as
section 1.
"""),
        code("""
gradual = keras.models.clone_model(model)  # the original stays untouched
gradual.set_weights(model.get_weights())
compile_classifier(gradual, learning_rate=5e-4)
steps_per_epoch = int(np.ceil(len(x_train) / 32))
schedule = PolynomialDecay(
    0.0, FRACTION, begin_step=0,
    end_step=steps_per_epoch * max(1, FINETUNE_EPOCHS // 2),
    frequency=steps_per_epoch)
history = gradual.fit(
    x_train, y_train, batch_size=32, epochs=FINETUNE_EPOCHS, verbose=0,
    callbacks=[ChannelPruning(schedule, criterion="bn_gamma", round_to=8)])
print("fraction of channels zeroed, per epoch:",
      [round(s, 2) for s in history.history["channel_sparsity"]])
zeroed_accuracy = accuracy(gradual, x_test, y_test)
gradual_small = shrink(gradual)
gradual_accuracy = accuracy(gradual_small, x_test, y_test)
print(f"gradual: {zeroed_accuracy:.3f} zeroed, {gradual_accuracy:.3f} after "
      f"shrink; {gradual_small.count_params():,} params "
      f"(one-shot: {small.count_params():,})")
print(f"accuracy: original {base_accuracy:.3f}, one-shot + fine-tune "
      f"{finetuned_accuracy:.3f}, gradual {gradual_accuracy:.3f}")
"""),
        md("""
The benchmark (`benchmarks/RESULTS.md`: 96x96, 12 fine-tuning epochs
for every model, medians over 3 runs) measured the same ordering:
against the unpruned model fine-tuned for the same 12 epochs, gradual
pruning ended 3.1 points below, one-shot `bn_gamma` 3.6 and one-shot
`l1` 7.8 points below; gradual pruning distilled from the fine-tuned
unpruned model (see *Going further*) ended 0.2 points below, within the
1-point goal. Over five seeds it ends 0.7 points below with `alpha=0.5`
(1.1 with `alpha=0.1`), but single seeds range from 2.4 points below to
1.8 above: the seed-to-seed spread is larger than the goal, and the
teacher costs the original model's own fine-tune. Every 50%
model has 0.36x the MACs and 0.47x the float32 latency.

## 3. MACs, size and latency, before and after

MACs and parameter counts come from `keras_slim.profile`; the file size
and latency from the exported int8 files (`litert.latency`, one thread,
batch 1, median over runs). Latency is measured on this host's CPU: treat
it as a ratio, not as phone figures.
"""),
        code("""
rows = {}
for name, m in [("original", model), ("one-shot", small),
                ("gradual", gradual_small)]:
    path = os.path.join(WORKDIR, f"{name}.tflite")
    keras_slim.export_tflite(m, path, representative_data=x_train[:100])
    prof = keras_slim.profile(m)
    lat = keras_slim.litert.latency(path, runs=10 if QUICK else 100)
    rows[name] = {"MMACs": prof.macs / 1e6, "params (k)": prof.total_params / 1e3,
                  "int8 KiB": keras_slim.inspect_tflite(path).bytes / 1024,
                  "latency ms": lat.median_ms}
    print(name, {k: round(v, 2) for k, v in rows[name].items()},
          "int8 accuracy", round(keras_slim.litert.evaluate(path, x_test,
                                                            y_test), 3))

fig, axes = plt.subplots(1, 4, figsize=(12, 2.8))
for ax, key in zip(axes, rows["original"]):
    values = [rows[name][key] for name in rows]
    ax.bar(list(rows), values, color=["C7", "C0", "C2"])
    ax.set_title(f"{key}: {values[2] / values[0]:.2f}x")
plt.suptitle(f"Removing {FRACTION:.0%} of the channels"); plt.tight_layout()
plt.show()
"""),
        md("""
MACs fall faster than the fraction of channels removed in each layer,
because a convolution's cost is proportional to its input channels *times*
its output channels: halving both quarters it. Latency follows less than
proportionally on a small input (fixed overheads dominate), and more at
larger resolutions.

**Going further.** Distil the pruned model from the fine-tuned original
(notebook 03: pass `ChannelPruning` to the `Distiller`'s `fit`, it prunes
the student; the benchmark used `temperature=4`, `alpha=0.5`); train
with an L1 penalty on BatchNorm scales before pruning (Network
Slimming); combine with int8 export (notebook 06).
"""),
    ],
)

# --------------------------------------------------------------------- 06

PHONES = notebook(
    "06_int8_tflite_for_phones.ipynb",
    "From Keras to a phone: an int8 LiteRT model, verified",
    [
        md("""
**What.** The whole path: train, compress (prune + quantization-aware
training), export an all-int8 `.tflite` file, inspect it, verify it
against Keras, and run it on Android, iOS or a microcontroller.
**Why.** A phone app or a microcontroller firmware ships a `.tflite` file,
not a Keras model; every step between them is a place where accuracy can
silently go. **When.** Every time you ship.

LiteRT (formerly TensorFlow Lite) runs `.tflite` files on Android, iOS,
Linux, and, as TFLite Micro, on microcontrollers. int8 (Jacob et al.,
2018) makes the file 4x smaller than float32 and is what NPUs, DSPs and
microcontrollers execute. Pruning (Han et al., 2015; Zhu and Gupta, 2017)
makes the compressed download smaller still.

References: Jacob et al., CVPR 2018 (https://arxiv.org/abs/1712.05877);
Zhu and Gupta, 2017 (https://arxiv.org/abs/1710.01878); LiteRT docs
(https://ai.google.dev/edge/litert).
"""),
        code("""
from keras_slim.pruning import MagnitudePruning, sparsity_report
from keras_slim.quantization import QuantizationAwareTraining
from keras_slim.schedules import PolynomialDecay

EPOCHS = 4 if QUICK else 20
PRUNE_EPOCHS = 2 if QUICK else 8
QAT_EPOCHS = 1 if QUICK else 4
SPARSITY = 0.5 if QUICK else 0.75

(x_train, y_train), (x_test, y_test) = load_data()
num_classes = int(y_train.max()) + 1
"""),
        md("## 1. Train"),
        code("""
model = keras_slim.models.small_cnn(x_train.shape[1:], num_classes)
compile_classifier(model)
model.fit(x_train, y_train, batch_size=64, epochs=EPOCHS, verbose=0)
float_accuracy = accuracy(model, x_test, y_test)
print(f"float accuracy {float_accuracy:.3f}")
keras_slim.profile(model).print_summary()
"""),
        md("""
## 2. Compress: prune, then quantization-aware training

Pruning masks stay attached to the kernels after `fit`, and the symmetric
int8 weight quantizer maps 0 to 0, so the zeros survive QAT and export.
"""),
        code("""
compile_classifier(model, learning_rate=5e-4)
steps = PRUNE_EPOCHS * int(np.ceil(len(x_train) / 64))
model.fit(x_train, y_train, batch_size=64, epochs=PRUNE_EPOCHS, verbose=0,
          callbacks=[MagnitudePruning(PolynomialDecay(
              0.0, SPARSITY, 0, int(0.7 * steps), frequency=5),
              scope="global")])
compile_classifier(model, learning_rate=1e-4)
model.fit(x_train, y_train, batch_size=64, epochs=QAT_EPOCHS, verbose=0,
          callbacks=[QuantizationAwareTraining()])
print(f"sparsity {sparsity_report(model).sparsity:.2f}, "
      f"Keras (simulated int8) accuracy {accuracy(model, x_test, y_test):.3f}")
"""),
        md("""
## 3. Export int8 and inspect

The model carries its learned ranges, so no representative data is
needed. `export_tflite` checks before writing that every compute op is
integer (it fails, naming the float ops, otherwise), and never uses Flex
ops, which a plain phone runtime cannot run. The signature has batch
size 1, as phones run.
"""),
        code("""
phone_path = os.path.join(WORKDIR, "model_int8.tflite")
keras_slim.export_tflite(model, phone_path)
info = keras_slim.inspect_tflite(phone_path)
print(f"{info.bytes:,} bytes ({info.gzip_bytes:,} gzipped); "
      f"int8 only: {info.int8_only}; float ops: {info.float_ops}")
print("ops:", info.ops)
print("input:", info.inputs[0])
print("output:", info.outputs[0])
"""),
        md("""
With the default `io_dtype="float32"`, the file takes float images and
returns float logits: a `QUANTIZE` op at the input and a `DEQUANTIZE` at
the output do the conversion, everything between is int8. That is the
easiest file for an app.

## 4. Verify against Keras

`litert.compare` runs the file with the LiteRT interpreter on the test
images and compares with the Keras model: class agreement and logit error.
`litert.latency` times one inference (batch 1, one thread) on *this*
machine; x86 int8 kernels are not representative of phones, where int8 is
typically faster than float.
"""),
        code("""
check = keras_slim.litert.compare(model, phone_path, x_test)
print(f"agreement {check.agreement:.3f}, max |logit error| "
      f"{check.max_abs_error:.3f}, mean {check.mean_abs_error:.4f}")
print(f"int8 file accuracy {keras_slim.litert.evaluate(phone_path, x_test, y_test):.3f}")
lat = keras_slim.litert.latency(phone_path, runs=20 if QUICK else 100)
print(f"host latency: median {lat.median_ms:.3f} ms, p90 {lat.p90_ms:.3f} ms")

keras_logits = model.predict(x_test[:200], verbose=0)
file_logits = keras_slim.litert.predict(phone_path, x_test[:200])
plt.figure(figsize=(4, 4))
plt.scatter(keras_logits.ravel(), file_logits.ravel(), s=2)
plt.xlabel("Keras logit"); plt.ylabel("int8 .tflite logit")
plt.title("What you validated is what ships"); plt.show()
"""),
        md("""
## 5. A file for microcontrollers

Microcontrollers have no float unit to spare: the input and output
tensors should be int8 too (`io_dtype="int8"`). Many microcontroller and
NNAPI kernels accept only per-tensor `FULLY_CONNECTED` weights, hence
`per_channel_dense=False`. The app must then quantize inputs itself with
the input's scale and zero point: `q = round(x / scale) + zero_point`.
"""),
        code("""
mcu_path = os.path.join(WORKDIR, "model_mcu.tflite")
keras_slim.export_tflite(model, mcu_path, io_dtype="int8",
                         per_channel_dense=False)
mcu = keras_slim.inspect_tflite(mcu_path)
inp = mcu.inputs[0]
print(f"input {inp['dtype']} shape {inp['shape']} scale {inp['scale']:.6f} "
      f"zero point {inp['zero_point']}; ops {mcu.ops}")
print(f"int8-io accuracy {keras_slim.litert.evaluate(mcu_path, x_test, y_test):.3f}")
# What the firmware does with one image:
q = np.clip(np.round(x_test[0] / inp["scale"]) + inp["zero_point"], -128, 127)
print("first quantized pixels:", q.astype(np.int8).ravel()[:12])
"""),
        md("""
TFLite Micro reads the model from a C array in flash. On Linux/macOS,
`xxd -i model_mcu.tflite > model_data.cc` writes it; the same in Python:
"""),
        code("""
def to_c_array(path, name="g_model"):
    data = open(path, "rb").read()
    rows = [", ".join(f"0x{b:02x}" for b in data[i:i + 12])
            for i in range(0, len(data), 12)]
    return (f"alignas(16) const unsigned char {name}[] = {{\\n  "
            + ",\\n  ".join(rows)
            + f"\\n}};\\nconst unsigned int {name}_len = {len(data)};\\n")


source = to_c_array(mcu_path)
open(os.path.join(WORKDIR, "model_data.cc"), "w").write(source)
print(source[:200], "...")
# The op resolver the firmware needs, from the ops in the file:
camel = lambda op: "".join(p.capitalize() for p in op.lower().split("_"))
print("\\n".join(f"resolver.Add{camel(op).replace('2d', '2D')}();"
                 for op in sorted(mcu.ops)))
"""),
        md("""
## 6. On the device

**Android (Kotlin).** Put `model_int8.tflite` in `app/src/main/assets`
and add the LiteRT dependency (`com.google.ai.edge.litert:litert`, see the
LiteRT docs for the current version). With the classic `Interpreter` API:

```kotlin
val model = FileUtil.loadMappedFile(context, "model_int8.tflite")
val interpreter = Interpreter(model, Interpreter.Options().setNumThreads(2))
val input = Array(1) { Array(32) { Array(32) { FloatArray(1) } } }  // 0..1
val logits = Array(1) { FloatArray(10) }
interpreter.run(input, logits)
```

With LiteRT's newer `CompiledModel` API, which picks CPU, GPU or NPU
acceleration for you:

```kotlin
val model = CompiledModel.create(
    context.assets, "model_int8.tflite",
    CompiledModel.Options(Accelerator.CPU))
val inputs = model.createInputBuffers()
val outputs = model.createOutputBuffers()
inputs[0].writeFloat(pixels)           // FloatArray of 32*32*1 values
model.run(inputs, outputs)
val logits = outputs[0].readFloat()
```

**iOS (Swift).** Add the `TensorFlowLiteSwift` pod (LiteRT for iOS):

```swift
let interpreter = try Interpreter(modelPath: path)
try interpreter.allocateTensors()
try interpreter.copy(inputData, toInputAt: 0)   // Data of 32*32 Float32
try interpreter.invoke()
let logits = try interpreter.output(at: 0)
```

**Microcontrollers (TFLite Micro, C++).** Use the `io_dtype="int8"`,
`per_channel_dense=False` file, compiled in as `g_model`:

```cpp
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "model_data.h"

constexpr int kArenaSize = 40 * 1024;    // grow until AllocateTensors succeeds
alignas(16) static uint8_t arena[kArenaSize];

const tflite::Model* model = tflite::GetModel(g_model);
static tflite::MicroMutableOpResolver<8> resolver;
resolver.AddConv2D(); resolver.AddDepthwiseConv2D();  // ...printed above
static tflite::MicroInterpreter interpreter(model, resolver, arena, kArenaSize);
interpreter.AllocateTensors();
TfLiteTensor* input = interpreter.input(0);   // int8, scale/zero point above
for (int i = 0; i < 32 * 32; ++i)
  input->data.int8[i] = quantize(pixels[i], input->params.scale,
                                 input->params.zero_point);
interpreter.Invoke();
int8_t* logits = interpreter.output(0)->data.int8;  // argmax = the class
```

**Checklist before shipping:** `int8_only` is `True` (or you know which
ops stay float and the target runs them); the input scale and zero point
match how the app feeds pixels (same [0, 1] preprocessing as training);
`litert.compare` agreement is close to 1 on held-out data; latency is
measured on the target device, not on a laptop.

## 7. The same on JAX or PyTorch

keras_slim's callbacks run on every Keras 3 backend (TensorFlow, JAX,
PyTorch), and `export_tflite` gives the same verified int8 file from a
JAX or torch model: it rebuilds the model from its `.keras` file under
the TensorFlow backend in a child process and converts there. A Python
process picks its backend once, when it first imports Keras (the
`KERAS_BACKEND` environment variable), so this notebook runs the JAX
version as a script in a child process. In your own script, set
`KERAS_BACKEND=jax` (or `torch`) before `import keras`.
"""),
        code("""
import importlib.util, subprocess, sys, textwrap

JAX_SCRIPT = textwrap.dedent(f'''
    import keras, keras_slim
    from keras_slim.quantization import QuantizationAwareTraining
    (x, y), (x_test, y_test) = keras_slim.datasets.load_digits(32)
    model = keras_slim.models.small_cnn()
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=64, epochs={EPOCHS}, verbose=0)
    model.fit(x, y, batch_size=64, epochs={QAT_EPOCHS}, verbose=0,
              callbacks=[QuantizationAwareTraining()])
    path = {os.path.join(WORKDIR, "model_jax_int8.tflite")!r}
    keras_slim.export_tflite(model, path)
    info = keras_slim.inspect_tflite(path)
    check = keras_slim.litert.compare(model, path, x_test)
    print(f"trained on {{keras.backend.backend()}}; int8 only: "
          f"{{info.int8_only}}; agreement with Keras {{check.agreement:.3f}}")
''')
if importlib.util.find_spec("jax") is None:
    print("JAX is not installed here: pip install jax")
else:
    run = subprocess.run([sys.executable, "-c", JAX_SCRIPT],
                         env={**os.environ, "KERAS_BACKEND": "jax"},
                         capture_output=True, text=True)
    print(run.stdout.strip().splitlines()[-1] if run.returncode == 0
          else run.stderr[-2000:])
    assert run.returncode == 0
"""),
    ],
)

NOTEBOOKS = [PRUNING, QAT, DISTILLATION, TRANSFER, STRUCTURED, PHONES]


def write_all(names=()):
    for filename, nb in NOTEBOOKS:
        if names and not any(n in filename for n in names):
            continue
        nbformat.validate(nb)
        nbformat.write(nb, HERE / filename)
        print("wrote", HERE / filename)


def set_quick(nb):
    """Insert `QUICK = True` right after the `parameters` cell."""
    for index, cell in enumerate(nb.cells):
        if "parameters" in cell.metadata.get("tags", []):
            injected = v4.new_code_cell(
                "QUICK = True  # injected: these stored outputs are a quick run"
            )
            injected.metadata["tags"] = ["injected-parameters"]
            nb.cells.insert(index + 1, injected)
            return nb
    raise ValueError("no cell tagged `parameters`")


# Lines the TensorFlow and LiteRT runtimes print on stderr at import,
# conversion and interpreter creation: noise to a reader on GitHub.
NOISE = (
    "WARNING: All log messages before absl::InitializeLog()",
    "cudart_stub.cc",
    "cuda_platform.cc",
    "cpu_feature_guard.cc",
    "To enable the following instructions",
    "fully_quantize:",
    "INFO: Created TensorFlow Lite XNNPACK delegate",
)


def clean_outputs(nb):
    """Drop stderr lines that are runtime noise from the stored outputs."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and (
                output.get("name") == "stderr"
            ):
                lines = [
                    line
                    for line in output["text"].splitlines(keepends=True)
                    if line.strip() and not any(n in line for n in NOISE)
                ]
                if not lines:
                    continue
                output["text"] = "".join(lines)
            kept.append(output)
        cell.outputs = kept
    return nb


def execute(names, quick):
    import nbclient

    env_path = str(HERE.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (env_path, os.environ.get("PYTHONPATH")) if p
    )
    for filename, _ in NOTEBOOKS:
        if names and not any(n in filename for n in names):
            continue
        nb = nbformat.read(HERE / filename, as_version=4)
        run = set_quick(nb) if quick else nb
        start = time.time()
        with tempfile.TemporaryDirectory() as cwd:
            nbclient.NotebookClient(
                run,
                timeout=1800,
                kernel_name="python3",
                resources={"metadata": {"path": cwd}},
            ).execute()
        print(
            f"{filename}: {time.time() - start:.0f} s "
            f"({'quick' if quick else 'full'})",
            flush=True,
        )
        nbformat.write(clean_outputs(run), HERE / filename)


def clean(names):
    for filename, _ in NOTEBOOKS:
        if names and not any(n in filename for n in names):
            continue
        nb = nbformat.read(HERE / filename, as_version=4)
        nbformat.write(clean_outputs(nb), HERE / filename)
        print("cleaned", HERE / filename)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--execute", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--clean",
        action="store_true",
        help="only drop runtime noise from the stored outputs",
    )
    parser.add_argument("names", nargs="*", help="e.g. 01 03")
    args = parser.parse_args()
    if args.clean:
        clean(args.names)
        sys.exit(0)
    write_all(args.names)
    if args.execute:
        execute(args.names, args.quick)
    sys.exit(0)
