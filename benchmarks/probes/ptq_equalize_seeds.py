"""Probe (issue 22, item 5): converter int8 of MobileNetV2-0.35 at 96x96
with and without `equalize_ranges` and `correct_bias`, one seed per
process (the lean rows of `benchmarks.ptq`, which did not fit the time
on a shared machine).

    nice -n 10 python -m benchmarks.probes.ptq_equalize_seeds --seed S

Prints one JSON line: Keras accuracy, and per file its accuracy and its
agreement with the original Keras model on the 450 test images.
"""

import argparse
import json
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras_slim  # noqa: E402
from benchmarks import _equalize  # noqa: E402
from benchmarks import ptq  # noqa: E402
from keras_slim import litert  # noqa: E402

NAME = "MobileNetV2 0.35 (96x96x3, weights=None)"


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache", default=os.path.join(tempfile.gettempdir(), "ptq_models")
    )
    args = parser.parse_args(argv)
    model, ((x, _), (xt, yt)) = ptq.trained(NAME, args.seed, False, args.cache)
    rep = x[: ptq.CALIBRATION]
    out = {"seed": args.seed}
    out["keras_acc"] = float(model.evaluate(xt, yt, verbose=0)[1])
    prepared = {
        "plain": model,
        "equalize_ranges": _equalize.equalize_ranges(model, rep).model,
        "correct_bias": _equalize.correct_bias(model, rep)[0],
    }
    with tempfile.TemporaryDirectory() as folder:
        for key, m in prepared.items():
            path = os.path.join(folder, f"{key}.tflite")
            keras_slim.export_tflite(m, path, representative_data=rep)
            out[key] = {
                "acc": litert.evaluate(path, xt, yt),
                "agreement": litert.compare(model, path, xt).agreement,
            }
            print(key, out[key], flush=True)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
