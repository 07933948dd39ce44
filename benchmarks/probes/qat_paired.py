"""Probe: QAT vs float fine-tune vs PTQ on the demo CNN, paired per seed.

Every fine-tune of one seed starts from the same base weights with the same
shuffling (the RNG is re-seeded before each `fit`), so per-seed differences
are not diluted by batch order. Seeds are given on the command line (use
seeds the benchmark does not, to choose settings out of sample):

    python -m benchmarks.probes.qat_paired 10 11 12 ...
"""

import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_slim  # noqa: E402
from benchmarks._common import compile_classifier  # noqa: E402
from keras_slim import datasets  # noqa: E402
from keras_slim import litert  # noqa: E402
from keras_slim import models  # noqa: E402
from keras_slim.quantization import QuantizationAwareTraining  # noqa: E402

VARIANTS = {
    "float": None,
    "qat_bn0": dict(freeze_bn_delay=0),
    "qat_default": dict(),
    "qat_bn0_rangefreeze": dict(freeze_bn_delay=0, freeze_ranges_after=66),
}

(x, y), (xt, yt) = datasets.load_digits(32, seed=0)
folder = tempfile.mkdtemp()
for seed in map(int, sys.argv[1:]):
    keras.utils.set_random_seed(seed)
    base = compile_classifier(models.small_cnn(), 1e-3)
    base.fit(x, y, batch_size=64, epochs=20, verbose=0)
    weights = base.get_weights()
    out = {}
    for name, kw in VARIANTS.items():
        keras.utils.set_random_seed(seed + 1000)
        m = compile_classifier(models.small_cnn(), 1e-4)
        m.set_weights(weights)
        cbs = [] if kw is None else [QuantizationAwareTraining(**kw)]
        m.fit(x, y, batch_size=64, epochs=5, verbose=0, callbacks=cbs)
        keras_acc = float(np.mean(m.predict(xt, verbose=0).argmax(1) == yt))
        path = os.path.join(folder, name + ".tflite")
        extra = {"representative_data": x[:300]} if kw is None else {}
        keras_slim.export_tflite(m, path, quantization="int8", **extra)
        out[name] = (keras_acc, litert.evaluate(path, xt, yt))
    print(
        f"RESULT seed {seed} "
        + " ".join(f"{n} {k:.4f}/{i:.4f}" for n, (k, i) in out.items()),
        flush=True,
    )
