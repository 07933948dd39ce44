"""Probe (issue 20, the EfficientNet QAT gap): which difference between
the float32 simulation of an int8 convolution and LiteRT's kernel makes
their int8 outputs part?

    python -m benchmarks.probes.conv_requantization [--seeds 0 1 2]

Stop 30's probe found QAT's EfficientNet and its file apart on 0.02% of
the first convolution's int8 outputs (one step), then amplified. Here one
Conv2D (3x3, 1 -> 16 channels, bias, ReLU; and 3 -> 32 channels) is
exported post-training with int8 input and output, so the file's own
int8 output is read directly, on digits. From the file's own parameters
(input scale and zero point, int8 weights and per-channel scales, int32
bias, output scale and zero point), the output is recomputed in NumPy:
- `simulation`: what keras_slim's QAT computes: float32 convolution of
  the dequantized input and weights, plus the float bias, then
  `floor(y / s_y + 0.5)` (TensorFlow's fake quantization);
- the same with one difference removed at a time: the bias on its int32
  grid (`bias rounded`), the accumulation exact (float64 of the integer
  products: `exact accumulation`), rounding half to even as XNNPACK's
  fp32 requantization does (`half to even`), and all three together.
Printed: the share of output elements where each differs from the file
(LiteRT with its default XNNPACK delegate, and with the built-in kernels).
"""

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_slim import datasets  # noqa: E402
from keras_slim import export_tflite  # noqa: E402


def _interpreter(path, builtin):
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.interpreter import OpResolverType

    if builtin:
        return Interpreter(
            model_path=path,
            experimental_op_resolver_type=(
                OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            ),
        )
    return Interpreter(model_path=path)


def _file_parameters(interpreter):
    """Input/output (scale, zero point), int8 kernel (h, w, in, out), its
    per-channel scales and the int32 bias, from the file's tensors."""
    details = interpreter.get_tensor_details()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    kernel = bias = None
    for t in details:
        scales = t["quantization_parameters"]["scales"]
        # The kernel: int8, 4-D, one scale per output channel (axis 0).
        if t["dtype"] == np.int8 and len(scales) == t["shape"][0] > 1:
            kernel = (interpreter.get_tensor(t["index"]), scales)
        if t["dtype"] == np.int32 and len(t["shape"]) == 1:
            bias = interpreter.get_tensor(t["index"])
    # TFLite's CONV_2D kernel is (out, h, w, in).
    kernel = (np.transpose(kernel[0], (1, 2, 3, 0)), kernel[1])
    return (
        inp["quantization"],
        out["quantization"],
        kernel,
        bias,
    )


def _conv(x, w, dtype):
    """'same' 3x3 stride-1 convolution of NHWC `x` with HWIO `w`, the
    products and sums in `dtype` (float32 rounding per product and per
    sum, as a float32 kernel may order them differently)."""
    n, h, wd, c = x.shape
    kh, kw, _, o = w.shape
    xp = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    y = np.zeros((n, h, wd, o), dtype)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i : i + h, j : j + wd, :].astype(dtype)
            y = (
                y + np.einsum("nhwc,co->nhwo", patch, w[i, j].astype(dtype))
            ).astype(dtype)
    return y


def recompute(q_in, params, float_bias, variant):
    """The int8 output recomputed from the file's parameters: `variant`
    is one of "simulation", "bias rounded", "exact", "exact, half even"."""
    (s_x, z_x), (s_y, z_y), (q_w, s_w), q_b = params
    f32 = np.float32
    if variant.startswith("exact"):
        acc = _conv(
            q_in.astype(np.float64) - z_x, q_w.astype(np.float64), np.float64
        )
        y = (acc + q_b) * (np.float64(s_x) * s_w.astype(np.float64)) / s_y
        q = np.round(y) if variant.endswith("half even") else np.floor(y + 0.5)
        return np.clip(q + z_y, -128, 127).astype(np.int8)
    x = ((q_in.astype(f32) - f32(z_x)) * f32(s_x)).astype(f32)
    w = (q_w.astype(f32) * s_w.astype(f32)).astype(f32)
    y = _conv(x, w, f32)
    if variant == "bias rounded":
        bias = (q_b.astype(np.float64) * s_x * s_w).astype(f32)
    else:
        bias = float_bias.astype(f32)
    y = (y + bias).astype(f32)
    # TensorFlow's fake quantization on the file's output grid.
    nudged_min = f32((-128 - z_y) * f32(s_y))
    q = np.floor((y - nudged_min) / f32(s_y) + f32(0.5))
    return np.clip(q - 128, -128, 127).astype(np.int8)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    for channels, filters in ((1, 16), (3, 32)):
        (x, _), (xt, _) = datasets.load_digits(image_size=32, channels=channels)
        for seed in args.seeds:
            keras.utils.set_random_seed(seed)
            model = keras.Sequential(
                [
                    keras.Input((32, 32, channels)),
                    keras.layers.Conv2D(
                        filters,
                        3,
                        padding="same",
                        bias_initializer=keras.initializers.RandomNormal(
                            stddev=0.1
                        ),
                    ),
                ]
            )
            with tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "conv.tflite")
                export_tflite(
                    model,
                    path,
                    representative_data=x[:300],
                    io_dtype="int8",
                    min_agreement=0.0,
                )
                rows = {}
                # The parameters from the built-in kernels' interpreter
                # (XNNPACK's hands back emptied constant buffers).
                it = _interpreter(path, True)
                it.allocate_tensors()
                params = _file_parameters(it)
                for builtin in (False, True):
                    it = _interpreter(path, builtin)
                    it.allocate_tensors()
                    (s_x, z_x) = params[0]
                    q_in = np.clip(np.round(xt[:64] / s_x) + z_x, -128, 127)
                    q_in = q_in.astype(np.int8)
                    outs = []
                    for i in range(len(q_in)):
                        inp = it.get_input_details()[0]
                        it.resize_tensor_input(
                            inp["index"], (1, 32, 32, channels)
                        )
                        it.allocate_tensors()
                        it.set_tensor(inp["index"], q_in[i : i + 1])
                        it.invoke()
                        outs.append(
                            it.get_tensor(it.get_output_details()[0]["index"])
                        )
                    rows["builtin" if builtin else "xnnpack"] = np.concatenate(
                        outs
                    )
                float_bias = keras.ops.convert_to_numpy(model.layers[0].bias)
                print(f"Conv2D {channels}->{filters}, seed {seed}:")
                for variant in (
                    "simulation",
                    "bias rounded",
                    "exact",
                    "exact, half even",
                ):
                    mine = recompute(q_in, params, float_bias, variant)
                    shares = {
                        k: float(np.mean(mine != v)) for k, v in rows.items()
                    }
                    print(
                        f"  {variant:20s} differs from xnnpack "
                        f"{shares['xnnpack']:.4%}, builtin "
                        f"{shares['builtin']:.4%}",
                        flush=True,
                    )
                print(
                    "  xnnpack vs builtin: "
                    f"{float(np.mean(rows['xnnpack'] != rows['builtin'])):.4%}"
                )


if __name__ == "__main__":
    main()
