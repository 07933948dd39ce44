"""Probe (issue 20): does QAT of a zoo model export an int8 file?

    nice python -m benchmarks.probes.zoo_qat_export NAME

One epoch of `QuantizationAwareTraining` from scratch on 128 training
samples of the zoo's data (`benchmarks._zoo_models`, seed 0), then
`export_tflite` from the learned ranges: prints the QAT seconds, and
int8_only and the agreement on 64 held-out samples, or the refusal.
Fast (minutes, not the zoo sweep's half hour): whether the path works,
not how accurate a trained model's file is (the model is near chance).
"""

import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from benchmarks import _zoo_models as zoo  # noqa: E402
from keras_slim import litert  # noqa: E402
from keras_slim.export import export_tflite  # noqa: E402
from keras_slim.quantization import QuantizationAwareTraining  # noqa: E402


def main(name):
    keras.utils.set_random_seed(0)
    model = zoo.compile_model(zoo.build(name), name)
    (x, y), (xt, _) = zoo.data(name, 128, 64)
    start = time.time()
    model.fit(
        x,
        y,
        epochs=1,
        batch_size=32,
        verbose=0,
        callbacks=[QuantizationAwareTraining()],
    )
    print("QAT seconds", round(time.time() - start), flush=True)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, f"{name}_qat.tflite")
        try:
            report = export_tflite(model, path)
        except ValueError as error:
            print("refused:", str(error)[:3000])
            return
        agreement = litert.compare(model, path, xt).agreement
        print("int8_only", report.info.int8_only, "agreement", agreement)


if __name__ == "__main__":
    main(sys.argv[1])
