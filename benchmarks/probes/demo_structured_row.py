"""Probe: the demo's structured row (one-shot `prune_channels(0.5)`, l1)
against gradual `ChannelPruning` (l1 and bn_gamma, 0 -> 50% over the first
half of the fine-tune, one selection per epoch, then `shrink`), with the
demo's budget: the demo CNN trained 30 epochs, then 12 fine-tuning epochs
(Adam 1e-3, batch 64). Prints test accuracy per variant for each seed
given (seed 0 is the demo's own):

    python -m benchmarks.probes.demo_structured_row 0 1 2
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks._common import compile_classifier  # noqa: E402
from keras_slim import datasets  # noqa: E402
from keras_slim import models  # noqa: E402
from keras_slim.pruning.channels import ChannelPruning  # noqa: E402
from keras_slim.pruning.channels import prune_channels  # noqa: E402
from keras_slim.pruning.channels import shrink  # noqa: E402
from keras_slim.schedules import PolynomialDecay  # noqa: E402

EPOCHS = 12
(x, y), (xt, yt) = datasets.load_digits(image_size=32, seed=0)
steps_per_epoch = int(np.ceil(len(x) / 64))


def accuracy(model):
    return float((model.predict(xt, verbose=0).argmax(1) == yt).mean())


for seed in map(int, sys.argv[1:] or ["0"]):
    keras.utils.set_random_seed(seed)
    base = compile_classifier(models.small_cnn())
    base.fit(x, y, batch_size=64, epochs=30, verbose=0)
    row = {"base": accuracy(base)}
    one_shot = compile_classifier(prune_channels(base, fraction=0.5))
    one_shot.fit(x, y, batch_size=64, epochs=EPOCHS, verbose=0)
    row["one-shot l1"] = accuracy(one_shot)
    for criterion in ("l1", "bn_gamma"):
        model = keras.models.clone_model(base)
        model.set_weights(base.get_weights())
        compile_classifier(model)
        schedule = PolynomialDecay(
            0.0,
            0.5,
            begin_step=0,
            end_step=EPOCHS // 2 * steps_per_epoch,
            frequency=steps_per_epoch,
        )
        model.fit(
            x,
            y,
            batch_size=64,
            epochs=EPOCHS,
            verbose=0,
            callbacks=[ChannelPruning(schedule, criterion=criterion)],
        )
        row[f"gradual {criterion}"] = accuracy(shrink(model))
    print(
        f"seed {seed}: "
        + ", ".join(f"{k} {100 * v:.1f}%" for k, v in row.items()),
        flush=True,
    )
