"""tfmot QAT on the demo CNN under tf_keras (run in a subprocess).

Usage: TF_USE_LEGACY_KERAS=1 python -m benchmarks._tfmot_qat DATA.npz
    --base-epochs 20 --epochs 5 --seed 0
Prints one JSON object on stdout.
"""

import argparse
import json
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras as keras  # noqa: E402

from benchmarks._tf_keras_common import EpochTimer  # noqa: E402
from benchmarks._tf_keras_common import compile_  # noqa: E402
from benchmarks._tf_keras_common import small_cnn  # noqa: E402


def tflite_predict(data, x):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=data)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    preds = []
    for i in range(len(x)):
        it.set_tensor(inp["index"], x[i : i + 1])
        it.invoke()
        preds.append(it.get_tensor(out["index"])[0])
    return np.array(preds)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("--base-epochs", type=int, default=20)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    d = np.load(a.data)
    x, y, xt, yt = d["x"], d["y"], d["xt"], d["yt"]
    keras.utils.set_random_seed(a.seed)
    model = small_cnn(x.shape[1:])
    compile_(model, 1e-3)
    model.fit(x, y, batch_size=64, epochs=a.base_epochs, verbose=0)
    base = model.get_weights()
    # Plain fine-tune (timing reference under tf_keras).
    plain = small_cnn(x.shape[1:])
    plain.set_weights(base)
    compile_(plain, 1e-4)
    t_plain = EpochTimer()
    plain.fit(
        x, y, batch_size=64, epochs=a.epochs, verbose=0, callbacks=[t_plain]
    )
    qat = tfmot.quantization.keras.quantize_model(model)
    compile_(qat, 1e-4)
    t_qat = EpochTimer()
    qat.fit(x, y, batch_size=64, epochs=a.epochs, verbose=0, callbacks=[t_qat])
    keras_pred = qat.predict(xt, verbose=0)
    conv = tf.lite.TFLiteConverter.from_keras_model(qat)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    data = conv.convert()
    pred = tflite_predict(data, xt)
    steady = slice(1, None) if a.epochs > 1 else slice(None)
    print(
        json.dumps(
            {
                "keras_accuracy": float(np.mean(keras_pred.argmax(1) == yt)),
                "int8_accuracy": float(np.mean(pred.argmax(1) == yt)),
                "agreement": float(
                    np.mean(pred.argmax(1) == keras_pred.argmax(1))
                ),
                "plain_epoch_s": float(np.median(t_plain.times[steady])),
                "qat_epoch_s": float(np.median(t_qat.times[steady])),
                "bytes": len(data),
            }
        )
    )


if __name__ == "__main__":
    main()
