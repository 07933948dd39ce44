"""Probe: two routes from a PyTorch-backend Keras model to an int8 LiteRT file.

(a) keras_slim's `export_tflite`, which on torch rebuilds the model under
    the TensorFlow backend in a child process and converts it there;
(b) Keras's own `model.export(path, format="litert")` through `litert-torch`
    (float32 file), then full int8 with `litert-quantizer`, calibrated on the
    same representative samples (keras_slim's `_litert_quantizer` recipe).

On the demo CNN (`keras_slim.models.small_cnn`, trained 3 epochs on the
digits): is the file int8-only, its top-1 agreement with the Keras model
on the test split, its bytes, and the wall time of each route.

Run in a venv with torch 2.13.0 (CPU) and `litert-torch` (route b):

    KERAS_BACKEND=torch python benchmarks/probes/torch_export_route.py

Prints one JSON line per route. Measured 2026-11-30 (2 shared CPU cores,
torch 2.13.0 CPU, litert-torch 0.10.0, litert-quantizer 0.11.0, 450 test
images):

    route                                int8_only  agreement  bytes   s
    (a) TF child process (export_tflite)   yes       97.8%     29,600  28.9
    (b) litert-torch + litert-quantizer    yes       95.6%     30,808  10.4
        (its float file: 86,304 bytes in 9.9 s)

Route (a)'s time includes starting TensorFlow in the child and
keras_slim's verification; route (b) verifies nothing.
"""

import json
import os
import sys
import time
import traceback

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_slim import datasets  # noqa: E402
from keras_slim import litert  # noqa: E402
from keras_slim import models  # noqa: E402
from keras_slim.export import export_tflite  # noqa: E402
from keras_slim.export import inspect_tflite  # noqa: E402


def describe(route, path, seconds, model, x_test, error=None):
    out = {"route": route, "backend": keras.backend.backend()}
    if error is not None:
        out["error"] = error
        print(json.dumps(out), flush=True)
        return
    info = inspect_tflite(path)
    keras_top = keras.ops.convert_to_numpy(
        model.predict(x_test, verbose=0)
    ).argmax(-1)
    file_top = np.asarray(litert.predict(path, x_test)).argmax(-1)
    out.update(
        int8_only=bool(info.int8_only),
        agreement=float(np.mean(keras_top == file_top)),
        bytes=os.path.getsize(path),
        seconds=round(seconds, 2),
        ops=sorted(set(info.ops)) if hasattr(info, "ops") else None,
    )
    print(json.dumps(out, default=str), flush=True)


def route_a(model, x_train, x_test):
    start = time.perf_counter()
    export_tflite(model, "route_a.tflite", representative_data=x_train[:256])
    describe("a: TF child process", "route_a.tflite",
             time.perf_counter() - start, model, x_test)  # fmt: skip


def route_b(model, x_train, x_test):
    from litert_quantizer import quantizer

    from keras_slim import _litert_quantizer

    start = time.perf_counter()
    model.export("route_b_float.tflite", format="litert")
    float_seconds = time.perf_counter() - start
    with open("route_b_float.tflite", "rb") as f:
        float_data = f.read()
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=float_data)
    [key] = list(interpreter.get_signature_list())
    [name] = interpreter.get_signature_list()[key]["inputs"]
    calibration = {key: [{name: x_train[i : i + 1]} for i in range(256)]}
    entries = _litert_quantizer.recipe("int8", "float32", True, None)
    q = quantizer.Quantizer(bytearray(float_data), entries)
    qsvs = q.calibrate(calibration)
    result = q.quantize(qsvs, enable_progress_report=False)
    with open("route_b.tflite", "wb") as f:
        f.write(bytes(result.quantized_model))
    seconds = time.perf_counter() - start
    print(json.dumps({"route": "b: float file", "seconds": float_seconds,
                      "bytes": len(float_data)}), flush=True)  # fmt: skip
    describe("b: litert-torch + litert-quantizer", "route_b.tflite",
             seconds, model, x_test)  # fmt: skip


def main():
    (x_train, y_train), (x_test, y_test) = datasets.load_digits()
    keras.utils.set_random_seed(0)
    model = models.small_cnn()
    model.compile(
        "adam",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, batch_size=64, epochs=3, verbose=0)
    for route in (route_a, route_b):
        try:
            route(model, x_train, x_test)
        except Exception as e:  # noqa: BLE001 - report, then go on
            traceback.print_exc(file=sys.stderr)
            describe(route.__name__, None, 0, model, x_test,
                     error=f"{type(e).__name__}: {str(e)[:400]}")  # fmt: skip


if __name__ == "__main__":
    main()
