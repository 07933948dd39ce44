"""Probe (issue 22): where MobileNetV2-0.35's post-training int8 error
comes from, and what reduces it.

    nice -n 10 python -m benchmarks.probes.ptq_mobilenet_error \
        --seeds 0 1 2 [--cache DIR]

Per seed (the models of `benchmarks.ptq`, cached in the same folder):
- converter int8 calibrated on 100, 300 (the benchmark's) and all 1347
  training images;
- `"dynamic"` (int8 weights, float activations) and `"int16x8"` (int8
  weights, int16 activations): how much of the error is the weights';
- `equalize_ranges` before the export (300 images): float gap and int8
  agreement;
- `correct_bias` (int8 weights' mean error taken off the biases), alone
  and after `equalize_ranges`;
- `error_report` of the 300-image int8 file: per layer class, the median
  SNR, and the layers with the largest SNR drop;
- the float top-1/top-2 logit margin of the images where int8 disagrees,
  against all images.
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
from keras_slim import litert  # noqa: E402
from keras_slim.quantization import _equalize  # noqa: E402
from keras_slim.quantization import error_report  # noqa: E402

NAME = "MobileNetV2 0.35 (96x96x3, weights=None)"


def _export(model, path, rep, **kwargs):
    kwargs.setdefault("quantization", "int8")
    keras_slim.export_tflite(
        model,
        path,
        representative_data=rep,
        calibration_steps=len(rep) if rep is not None else None,
        **kwargs,
    )
    return path


def probe(model, data, folder):
    (x, _), (xt, yt) = data
    logits = model.predict(xt, verbose=0)
    top2 = np.sort(logits, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    out = {"keras_acc": float(np.mean(logits.argmax(1) == yt))}

    def agree(path, reference=model):
        return litert.compare(reference, path, xt).agreement

    for n in (100, 300, len(x)):
        path = _export(model, f"{folder}/int8_{n}.tflite", x[:n])
        out[f"int8 cal{n}"] = agree(path)
        out[f"int8 cal{n} acc"] = litert.evaluate(path, xt, yt)
    path = _export(model, f"{folder}/dyn.tflite", None, quantization="dynamic")
    out["dynamic (w8, float act)"] = agree(path)
    path = _export(
        model, f"{folder}/i16.tflite", x[:300], quantization="int16x8"
    )
    out["int16x8"] = agree(path)

    eq = _equalize.equalize_ranges(model, x[:300])
    gap = np.abs(eq.model.predict(xt, verbose=0) - logits).max()
    out["equalized chains"] = len(eq.chains)
    out["equalized float gap"] = float(gap)
    out["equalized float agreement"] = float(
        np.mean(eq.model.predict(xt, verbose=0).argmax(1) == logits.argmax(1))
    )
    path = _export(eq.model, f"{folder}/eq.tflite", x[:300])
    out["equalized int8"] = agree(path)
    out["equalized int8 acc"] = litert.evaluate(path, xt, yt)

    bc, corrected = _equalize.correct_bias(model, x[:300])
    out["bias corrected layers"] = len(corrected)
    path = _export(bc, f"{folder}/bc.tflite", x[:300])
    out["bias corrected int8"] = agree(path)
    out["bias corrected int8 acc"] = litert.evaluate(path, xt, yt)
    both, _ = _equalize.correct_bias(eq.model, x[:300])
    path = _export(both, f"{folder}/eqbc.tflite", x[:300])
    out["equalized + bias corrected int8"] = agree(path)
    out["equalized + bias corrected int8 acc"] = litert.evaluate(path, xt, yt)

    base = f"{folder}/int8_300.tflite"
    pred = litert.predict(base, xt)
    wrong = np.asarray(pred).argmax(1) != logits.argmax(1)
    out["margin median all"] = float(np.median(margin))
    out["margin median disagreeing"] = (
        float(np.median(margin[wrong])) if wrong.any() else None
    )

    report = error_report(model, base, xt, max_samples=64)
    by_class = {}
    for layer in report.layers:
        by_class.setdefault(layer.class_name, []).append(layer.snr_db)
    out["snr by class"] = {
        k: round(statistics.median(v), 1) for k, v in by_class.items()
    }
    drops = sorted(report.drops.items(), key=lambda kv: -kv[1])[:6]
    out["largest drops"] = [(k, round(v, 1)) for k, v in drops]
    snrs = [(layer.name, round(layer.snr_db, 1)) for layer in report.layers]
    out["snr first/last"] = [snrs[0], snrs[len(snrs) // 2], snrs[-1]]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--cache", default=os.path.join(tempfile.gettempdir(), "ptq_models")
    )
    args = parser.parse_args(argv)
    rows = []
    for seed in args.seeds:
        model, data = ptq.trained(NAME, seed, False, args.cache)
        with tempfile.TemporaryDirectory() as folder:
            rows.append(probe(model, data, folder))
        print(json.dumps({"seed": seed, **rows[-1]}), flush=True)
    print("medians over seeds", args.seeds)
    for key, value in rows[0].items():
        if isinstance(value, (int, float)):
            med = statistics.median(r[key] for r in rows)
            print(f"  {key}: {med:.4f}")


if __name__ == "__main__":
    main()
