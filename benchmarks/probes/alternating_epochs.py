"""Epoch time of pruning and QAT against plain `fit`, one-epoch fits in
turn (issue 21).

Four models of the demo CNN from the same weights (plain, MagnitudePruning
to 50%, QuantizationAwareTraining with the defaults, and with BatchNorm
frozen) each run a one-epoch `fit`, one after the other, for `rounds`
rounds after a warm-up round; a ratio is the median over rounds of the
method's epoch over the plain epoch of the same round, so a change in the
machine's load hits all four alike. Each `fit` call is timed whole: a
callback that retraces at every `fit` shows here (pruning on JAX did, 5.4x,
until e3b6ab4).

    python -m benchmarks.probes.alternating_epochs [rounds]
    KERAS_BACKEND=jax python -m benchmarks.probes.alternating_epochs 10

Prints one JSON line.
"""

import json
import sys
import time

import keras
import numpy as np

from keras_slim import datasets
from keras_slim import models
from keras_slim.pruning import MagnitudePruning
from keras_slim.quantization import QuantizationAwareTraining
from keras_slim.schedules import PolynomialDecay


def main(rounds=12):
    (x, y), _ = datasets.load_digits(32)
    keras.utils.set_random_seed(0)
    weights = models.small_cnn().get_weights()

    def fresh():
        m = models.small_cnn()
        m.set_weights(weights)
        m.compile(
            keras.optimizers.Adam(1e-3),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        return m

    steps = -(-len(x) // 64)
    schedule = PolynomialDecay(0.0, 0.5, begin_step=0, end_step=steps * rounds)
    variants = {
        "plain": (fresh(), []),
        "pruning": (fresh(), [MagnitudePruning(schedule, scope="global")]),
        "qat": (fresh(), [QuantizationAwareTraining()]),
        "qat_bn_frozen": (
            fresh(),
            [QuantizationAwareTraining(freeze_bn_delay=0)],
        ),
    }
    times = {k: [] for k in variants}
    for r in range(rounds + 1):
        for k, (m, callbacks) in variants.items():
            start = time.perf_counter()
            m.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=callbacks)
            if r:  # round 0 traces
                times[k].append(time.perf_counter() - start)
    plain = np.array(times["plain"])
    out = {"backend": keras.backend.backend(), "rounds": rounds}
    out["plain_s"] = round(float(np.median(plain)), 3)
    for k in variants:
        if k != "plain":
            ratio = np.median(np.array(times[k]) / plain)
            out[k] = round(float(ratio), 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 12)
