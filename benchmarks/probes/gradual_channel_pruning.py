"""Probe: gradual ChannelPruning (0 -> 50% over 3 epochs, then shrink and
1 epoch) vs one-shot prune_channels(0.5) and 4 epochs, on the demo CNN.

    python -m benchmarks.probes.gradual_channel_pruning
"""

import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras

from benchmarks._common import compile_classifier
from keras_slim import datasets
from keras_slim import models
from keras_slim import schedules
from keras_slim.pruning.channels import ChannelPruning
from keras_slim.pruning.channels import prune_channels
from keras_slim.pruning.channels import shrink

(x, y), (xt, yt) = datasets.load_digits(32, seed=0)
keras.utils.set_random_seed(0)


base = compile_classifier(models.small_cnn())
base.fit(x, y, batch_size=64, epochs=20, verbose=0)
print("base", base.evaluate(xt, yt, verbose=0)[1])
w = base.get_weights()
one = prune_channels(base, fraction=0.5, min_channels=4)
compile_classifier(one, 5e-4)
print("oneshot before ft", one.evaluate(xt, yt, verbose=0)[1])
h = one.fit(x, y, batch_size=64, epochs=4, verbose=0)
print("oneshot ft", one.evaluate(xt, yt, verbose=0)[1], h.history["accuracy"])
g = compile_classifier(models.small_cnn(), 5e-4)
g.set_weights(w)
steps = 22 * 3
cb = ChannelPruning(
    schedules.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=steps),
    min_channels=4,
)
h = g.fit(x, y, batch_size=64, epochs=3, verbose=0, callbacks=[cb])
print("gradual train acc", h.history["accuracy"], h.history["channel_sparsity"])
print("gradual keras (zeroed)", g.evaluate(xt, yt, verbose=0)[1])
s = shrink(g)
compile_classifier(s, 5e-4)
print(
    "shrunk",
    s.evaluate(xt, yt, verbose=0)[1],
    s.count_params(),
    one.count_params(),
)
s.fit(x, y, batch_size=64, epochs=1, verbose=0)
print("gradual+1", s.evaluate(xt, yt, verbose=0)[1])
