"""Probe (issue 20): where a QAT model and its int8 file part, step by step.

    nice python -m benchmarks.probes.qat_steps [--name EfficientNetB0] \
        [--pick stem_,block1a_] [--points 16] [--seed 0]

Trains a zoo model by its recipe (`benchmarks._zoo_models`, the digits at
32x32) and 2 epochs of `QuantizationAwareTraining`, then rebuilds it with
`quantize_model` (its twin predicts the same: printed). For each chosen
`FakeQuant` layer of the twin (`--pick`: those whose name holds one of
the strings; else `--points` spread over the depth), the sub-model from
the input to that range is exported int8 and run with LiteRT (XNNPACK, as
`litert.predict`) on 64 test images: printed is the share of that
tensor's elements where file and Keras model differ by more than half an
int8 step, and the largest difference in steps. The first range where
the share jumps is where the simulation and the file compute differently.
"""

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import _zoo_models as zoo  # noqa: E402
from keras_slim import litert  # noqa: E402
from keras_slim.export import export_tflite  # noqa: E402
from keras_slim.quantization import QuantizationAwareTraining  # noqa: E402
from keras_slim.quantization import _twins  # noqa: E402
from keras_slim.quantization import quantize_model  # noqa: E402


def _trained(name, seed):
    plan = zoo.recipe(name)
    model = zoo.compile_model(zoo.build(name, seed), name)
    (x, y), (xt, _) = zoo.data(name, plan["n_train"], plan["n_test"])
    batch = plan["batch_size"]
    model.fit(x, y, epochs=plan["epochs"], batch_size=batch, verbose=0)
    model.fit(
        x,
        y,
        epochs=plan["fine_tune_epochs"],
        batch_size=batch,
        verbose=0,
        callbacks=[QuantizationAwareTraining()],
    )
    return model, xt[:64]


def _step(quant):
    lo, hi = quant.fixed_range or (float(quant.min), float(quant.max))
    return (hi - lo) / 255.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="EfficientNetB0")
    parser.add_argument("--pick", help="comma-separated parts of names")
    parser.add_argument("--points", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model, x = _trained(args.name, args.seed)
    twin = quantize_model(model)
    same = np.abs(
        np.asarray(model.predict(x, verbose=0))
        - np.asarray(twin.predict(x, verbose=0))
    ).max()
    print(f"{args.name}: twin against the QAT model, max |diff| {same:.3g}")
    quants = [q for q in twin.layers if isinstance(q, _twins.FakeQuant)]
    if args.pick:
        parts = args.pick.split(",")
        quants = [q for q in quants if any(p in q.name for p in parts)]
    else:
        spread = np.linspace(0, len(quants) - 1, args.points).astype(int)
        quants = [quants[i] for i in sorted(set(spread))]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "sub.tflite")
        for quant in quants:
            sub = keras.Model(twin.input, quant.output)
            expected = np.asarray(sub.predict(x, verbose=0))
            export_tflite(sub, path)
            actual = np.asarray(litert.predict(path, x))
            steps = np.abs(actual.reshape(expected.shape) - expected)
            steps = steps / _step(quant)
            print(
                f"  {quant.name:42s} {np.mean(steps > 0.5):8.4%} of elements "
                f"off, at most {steps.max():.0f} steps",
                flush=True,
            )


if __name__ == "__main__":
    main()
