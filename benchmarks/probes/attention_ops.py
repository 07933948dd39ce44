"""Probe (issue 20): where a QAT MultiHeadAttention's int8 file parts from
the arithmetic the simulation assumes.

    python -m benchmarks.probes.attention_ops [--seed 0] [--samples 64]

A small attention model on the 8x8 digits (each image as 8 tokens of 8
pixels; `MultiHeadAttention(2 heads, key_dim 4)` with biases drawn from
N(0, 0.3), global average pooling, Dense(10)), 10 float epochs at Adam
3e-3, then 2 epochs of `QuantizationAwareTraining`, `export_tflite` from
the learned ranges (`qat_bias_kinds.run`). Prints the share of the 4,500
test logits where the QAT Keras model and its file (LiteRT's default
path, XNNPACK where it delegates) differ, and the top-1 agreement. Then,
running the file with the built-in kernels and every tensor kept, each
FULLY_CONNECTED, MUL, BATCH_MATMUL and SOFTMAX output is recomputed from
the op's own int8 inputs and scales as the simulation computes it (exact
integer products, one float rescale, rounded half up; the softmax of the
dequantized input) and compared with the file's.
"""

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.probes import qat_bias_kinds  # noqa: E402
from keras_slim import datasets  # noqa: E402

OPS = ("FULLY_CONNECTED", "MUL", "BATCH_MATMUL", "SOFTMAX")


def build(kind=None):
    L = keras.layers
    big = keras.initializers.RandomNormal(0.0, 0.3)
    inputs = keras.Input((8, 8, 1))
    h = L.Reshape((8, 8))(inputs)
    h = L.MultiHeadAttention(2, 4, bias_initializer=big)(h, h)
    h = L.GlobalAveragePooling1D()(h)
    return keras.Model(inputs, L.Dense(10)(h))


def formula(name, inputs, scales, out_scale):
    """The op's int8 output (before the zero point) as the simulation's
    arithmetic gives it, from its int8 inputs (zero points removed)."""
    if name == "SOFTMAX":
        x = inputs[0] * scales[0]
        e = np.exp(x - x.max(-1, keepdims=True))
        return np.floor(e / e.sum(-1, keepdims=True) / out_scale + 0.5)
    if name == "FULLY_CONNECTED":
        acc = np.matmul(inputs[0], inputs[1].T)
        if len(inputs) > 2:
            acc = acc + inputs[2]
    elif name == "MUL":
        acc = inputs[0] * inputs[1]
    else:
        acc = np.matmul(inputs[0], inputs[1])
    return np.floor(acc * (scales[0] * scales[1] / out_scale) + 0.5)


def compare_ops(path, x):
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.interpreter import OpResolverType

    interpreter = Interpreter(
        model_path=path,
        experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=(
            OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        ),
    )
    interpreter.allocate_tensors()
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    given = interpreter.get_input_details()[0]
    stats = {}
    for sample in x:
        interpreter.set_tensor(given["index"], sample[None].astype("float32"))
        interpreter.invoke()
        for op in interpreter._get_ops_details():
            if op["op_name"] not in OPS:
                continue
            indices = [i for i in op["inputs"] if i >= 0]
            out = op["outputs"][0]
            inputs, scales = [], []
            for i in indices:
                params = details[i]["quantization_parameters"]
                zero = params["zero_points"]
                value = interpreter.get_tensor(i).astype(np.int64)
                inputs.append(value - (zero[0] if len(zero) == 1 else 0))
                scales.append(params["scales"] if len(params["scales"]) else 1)
            out_scale, out_zero = details[out]["quantization"]
            want = np.clip(
                formula(op["op_name"], inputs, scales, out_scale) + out_zero,
                -128,
                127,
            )
            got = interpreter.get_tensor(out).astype(np.int64)
            key = f"{op['op_name']} -> {details[out]['name'][-36:]}"
            entry = stats.setdefault(key, [0, 0, 0])
            entry[0] += int(np.sum(want != got))
            entry[1] += got.size
            entry[2] = max(entry[2], int(np.abs(want - got).max()))
    return stats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args(argv)
    data = datasets.load_digits(image_size=8, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        r = qat_bias_kinds.run(
            "attention", "callback", args.seed, data, folder, build, lr=3e-3
        )
        stats = compare_ops(r["path"], data[1][0][: args.samples])
    print(
        f"seed {args.seed}: QAT accuracy {r['accuracy']:.3f}, int8_only "
        f"{r['int8_only']}, logits apart from the file {r['differ']:.2%}, "
        f"top-1 agreement {r['agreement']:.2%}"
    )
    print(
        f"Each op's output against the simulation's arithmetic "
        f"({args.samples} test images, built-in kernels):"
    )
    for key, (bad, total, largest) in stats.items():
        print(
            f"  {key}: {bad}/{total} = {bad / total:.2%} differ, "
            f"largest {largest} step(s)"
        )


if __name__ == "__main__":
    main()
