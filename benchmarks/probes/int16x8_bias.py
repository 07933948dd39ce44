"""Probe (issue 22): does bias correction lift the int16x8 file above the
int8-weight bound on the converged MobileNetV2-0.35?

    nice -n 5 python -m benchmarks.probes.int16x8_bias --seeds 0 1 2 \
        [--cache DIR] [--model mobilenet|demo|residual]

int16x8 files (int16 activations, int8 weights) agree with Keras exactly
as often as rounding the weights alone does (99.33% median,
`ptq_weight_bound.py --converged`): the weights are the bound. Bias
correction (`export_tflite(..., bias_correction=True)`, Nagel et al.
2019; `keras_slim/_bias_correction.py`)
removes the mean output error the int8 weights add, which int8
activations drowned (RESULTS.md: -0.44 to +1.11 points on int8 files).
Per seed (the 30-epoch models of `benchmarks.ptq`, cached in the same
folder), top-1 agreement with the original Keras model on the 450 test
images of:
- the float model with every kernel on its int8 grid, without and with
  the correction (the bound itself);
- the converter's int16x8 file, without and with the correction;
- the converter's int8 file, without and with the correction.
`--adaround`: only the int8 file with nearest rounding and with
`export_tflite(..., weight_rounding="adaround")`.
`--model demo` (or `residual`) runs the same on `benchmarks.ptq`'s demo
(residual) CNN instead (30 epochs, cached too).
Prints one JSON line per seed and medians at the end.
"""

import argparse
import json
import os
import statistics
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

import keras_slim  # noqa: E402
from benchmarks import ptq  # noqa: E402
from benchmarks.probes import ptq_weight_bound  # noqa: E402
from keras_slim import _bias_correction  # noqa: E402
from keras_slim import _export_inputs  # noqa: E402
from keras_slim import litert  # noqa: E402

MODELS = {
    "mobilenet": ptq_weight_bound.CONVERGED,
    "mobilenet8": ptq_weight_bound.NAME,  # the 8-epoch models
    "demo": "demo CNN (small_cnn, 32x32x1)",
    "residual": "residual CNN (residual_cnn, 32x32x1)",
}


def probe(model, data, folder, adaround=False):
    (x, _), (xt, _) = data
    rep = x[: ptq.CALIBRATION]
    reference = model.predict(xt, verbose=0).argmax(1)
    sig = _export_inputs.signature(model, None, rep)
    options = {"bias_correction": True, "per_channel_dense": True}

    def rounded(corrected):
        if not corrected:
            return ptq_weight_bound._agreement(
                model, xt, reference, lambda layer: True
            )
        # The package's correction, applied inside its block.
        with _bias_correction.corrected(model, sig, [rep], options):
            return ptq_weight_bound._agreement(
                model, xt, reference, lambda layer: True
            )

    def exported(quantization, corrected, rounding="nearest"):
        path = os.path.join(folder, f"{quantization}.tflite")
        keras_slim.export_tflite(
            model,
            path,
            quantization=quantization,
            representative_data=rep,
            bias_correction=corrected,
            weight_rounding=rounding,
        )
        predicted = litert.predict(path, xt).argmax(1)
        return float(np.mean(predicted == reference))

    if adaround:  # the package's AdaRound (~25 s a layer)
        return {
            "int8": exported("int8", False),
            "int8, adaround": exported("int8", False, "adaround"),
        }
    return {
        "weights rounded": rounded(False),
        "weights rounded, corrected": rounded(True),
        "int16x8": exported("int16x8", False),
        "int16x8, corrected": exported("int16x8", True),
        "int8": exported("int8", False),
        "int8, corrected": exported("int8", True),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--cache", default=os.path.join(tempfile.gettempdir(), "ptq_models")
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="mobilenet")
    parser.add_argument(
        "--adaround",
        action="store_true",
        help="only the int8 file with nearest rounding and with "
        "`weight_rounding='adaround'`",
    )
    args = parser.parse_args(argv)
    rows = []
    for seed in args.seeds:
        model, data = ptq.trained(MODELS[args.model], seed, False, args.cache)
        with tempfile.TemporaryDirectory() as folder:
            row = probe(model, data, folder, args.adaround)
        row["seed"] = seed
        rows.append(row)
        print(json.dumps(row), flush=True)
    medians = {
        key: statistics.median(row[key] for row in rows)
        for key in rows[0]
        if key != "seed"
    }
    print(json.dumps({"median": medians}))


if __name__ == "__main__":
    main()
