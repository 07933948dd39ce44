"""Probe: why a QAT MobileNetV2 and its int8 file disagree on a few images.

Trains MobileNetV2-0.35 at SIZE x SIZE on the digits (EPOCHS float epochs, then
2 QAT epochs, freeze_bn_delay=0), exports int8 from the learned ranges and
prints agreement, logit errors and the Keras top-2 margins of the images
where Keras and the int8 file disagree.

    python -m benchmarks.probes.mobilenet_qat_agreement 48 6
"""

import json
import os
import sys
import tempfile

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras
import numpy as np

import keras_slim
from keras_slim import datasets
from keras_slim import litert
from keras_slim.callbacks import QuantizationAwareTraining

S = int(sys.argv[1]) if len(sys.argv) > 1 else 48
(x, y), (xt, yt) = datasets.load_digits(S, seed=0, channels=3)
keras.utils.set_random_seed(0)
m = keras.applications.MobileNetV2(
    input_shape=(S, S, 3),
    alpha=0.35,
    weights=None,
    classes=10,
    classifier_activation=None,
)
for layer in m.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
        layer.momentum = 0.9
m.compile(
    keras.optimizers.Adam(1e-3),
    keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
m.fit(
    x,
    y,
    batch_size=64,
    epochs=int(sys.argv[2]) if len(sys.argv) > 2 else 6,
    verbose=0,
)
print("float", m.evaluate(xt, yt, verbose=0))
m.optimizer.learning_rate.assign(1e-4)
m.fit(
    x,
    y,
    batch_size=64,
    epochs=2,
    verbose=0,
    callbacks=[QuantizationAwareTraining(freeze_bn_delay=0)],
)
k = m.predict(xt, verbose=0)
path = os.path.join(tempfile.mkdtemp(), "mq.tflite")
keras_slim.export_tflite(m, path)
t = litert.predict(path, xt)
agree = k.argmax(1) == t.argmax(1)
srt = np.sort(k, 1)
margin = srt[:, -1] - srt[:, -2]
err = np.abs(k - t)
print(
    json.dumps(
        dict(
            keras_acc=float((k.argmax(1) == yt).mean()),
            tfl_acc=float((t.argmax(1) == yt).mean()),
            agreement=float(agree.mean()),
            logit_std=float(k.std()),
            mean_abs_err=float(err.mean()),
            max_abs_err=float(err.max()),
            p99_err=float(np.percentile(err.max(1), 99)),
            margin_median_all=float(np.median(margin)),
            margin_disagree=[round(float(v), 3) for v in margin[~agree]],
            err_disagree=[round(float(v), 3) for v in err.max(1)[~agree]],
        )
    )
)
