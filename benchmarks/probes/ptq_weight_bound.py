"""Probe (issue 22): how much of MobileNetV2-0.35's int8 disagreement do
the int8 *weights* alone cause, with every activation left in float?

    nice -n 10 python -m benchmarks.probes.ptq_weight_bound \
        --seeds 0 1 2 [--cache DIR] [--converged]

Per seed (the models of `benchmarks.ptq`, cached in the same folder: the
8-epoch MobileNetV2, or with `--converged` the 30-epoch one), each
kernel is rounded to the grid the converter uses for it (symmetric int8,
one scale per output channel: the depthwise kernels' channel axis is 2),
in the float Keras model, and the top-1 agreement with the unrounded model
is measured on the 450 test images, for:
- every kernel; only the first convolution (`Conv1`); only the depthwise
  kernels; every kernel but those;
- Gaussian noise of the same per-channel size as the rounding error on
  `Conv1` alone (5 draws): whether a flip is the rounding or the model's
  sensitivity to any perturbation that small.
Per-channel rounding commutes with folding a BatchNormalization into the
kernel (the fold scales each output channel, and so its grid), so this
is the file's weight error, without its activations'.
Prints one JSON line per seed and medians at the end.
"""

import argparse
import json
import os
import statistics
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import ptq  # noqa: E402

NAME = "MobileNetV2 0.35 (96x96x3, weights=None)"
CONVERGED = (
    "MobileNetV2 0.35 converged (96x96x3, weights=None, 30 epochs cosine)"
)


def _grid(layer, kernel):
    """`kernel` rounded to its symmetric per-channel int8 grid."""
    depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
    axes = (0, 1, 3) if depthwise else tuple(range(kernel.ndim - 1))
    scale = np.abs(kernel).max(axis=axes, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    return np.round(kernel / scale) * scale


def _agreement(model, xt, reference, chosen, noise_seed=None):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    for layer in clone.layers:
        if not hasattr(layer, "kernel") or not chosen(layer):
            continue
        kernel = np.asarray(keras.ops.convert_to_numpy(layer.kernel))
        rounded = _grid(layer, kernel)
        if noise_seed is not None:
            # Same per-channel RMS as the rounding error, random direction.
            error = rounded - kernel
            axes = tuple(range(kernel.ndim - 1))
            rms = np.sqrt(np.mean(error**2, axis=axes, keepdims=True))
            rng = np.random.default_rng(noise_seed)
            rounded = kernel + rng.normal(size=kernel.shape) * rms
        layer.kernel.assign(rounded.astype(kernel.dtype))
    predicted = clone.predict(xt, verbose=0).argmax(1)
    return float(np.mean(predicted == reference))


def probe(model, data):
    _, (xt, yt) = data
    logits = model.predict(xt, verbose=0)
    reference = logits.argmax(1)
    depthwise = keras.layers.DepthwiseConv2D
    out = {"keras_acc": float(np.mean(reference == yt))}
    choices = {
        "every kernel": lambda layer: True,
        "only Conv1": lambda layer: layer.name == "Conv1",
        "only depthwise": lambda layer: isinstance(layer, depthwise),
        "all but Conv1 and depthwise": lambda layer: (
            layer.name != "Conv1" and not isinstance(layer, depthwise)
        ),
    }
    for label, chosen in choices.items():
        out[label] = _agreement(model, xt, reference, chosen)
    draws = [
        _agreement(model, xt, reference, choices["only Conv1"], seed)
        for seed in range(5)
    ]
    out["Conv1 Gaussian noise, median of 5"] = statistics.median(draws)
    out["Conv1 Gaussian noise, min/max"] = [min(draws), max(draws)]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--cache", default=os.path.join(tempfile.gettempdir(), "ptq_models")
    )
    parser.add_argument("--converged", action="store_true")
    args = parser.parse_args(argv)
    name = CONVERGED if args.converged else NAME
    rows = []
    for seed in args.seeds:
        model, data = ptq.trained(name, seed, False, args.cache)
        row = probe(model, data)
        row["seed"] = seed
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = [k for k in rows[0] if k not in ("seed", "keras_acc")]
    medians = {
        key: statistics.median(row[key] for row in rows)
        for key in keys
        if not isinstance(rows[0][key], list)
    }
    print(json.dumps({"median": medians}))


if __name__ == "__main__":
    main()
