"""The users' models (issue 20): the zoo's U-Net through channel pruning,
and the zoo's per-model sweep, cell by cell (slow)."""

import os
import sys

import keras
import numpy as np
import pytest

from keras_slim import profiling
from keras_slim.pruning import prune_channels
from keras_slim.pruning import shrink

# `benchmarks` is a package at the repository root, next to `tests`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _zoo_models as zoo  # noqa: E402
from benchmarks import zoo as zoo_benchmark  # noqa: E402

L = keras.layers


def _transposes(model):
    return [
        layer for layer in model.layers if isinstance(layer, L.Conv2DTranspose)
    ]


def test_unet_conv2d_transpose_channels_are_pruned():
    model = zoo.build("UNet")
    (x, _), _ = zoo.data("UNet", n_train=8, n_test=8)
    small = prune_channels(model, fraction=0.5, min_channels=4)
    (before,), (after,) = _transposes(model), _transposes(small)
    assert before.filters == 16 and after.filters == 8
    # Its kernel is (h, w, out, in): 8 of 16 outputs, 16 of 32 inputs.
    assert tuple(after.kernel.shape) == (3, 3, 8, 16)
    assert small.output_shape == model.output_shape
    ratio = profiling.profile(small).macs / profiling.profile(model).macs
    assert ratio < 0.4
    assert small.predict(x, verbose=0).shape == (8, 32, 32, 2)


def test_shrink_removes_zeroed_conv2d_transpose_channels_exactly():
    model = zoo.build("UNet")
    (x, _), _ = zoo.data("UNet", n_train=16, n_test=8)
    (layer,) = _transposes(model)
    kernel, bias = layer.get_weights()
    # Zero the filters of output channels 1, 5 and 6 ((h, w, out, in)),
    # and the inputs it reads from channels 0 and 3 of its producer.
    kernel[:, :, [1, 5, 6], :] = 0.0
    bias[[1, 5, 6]] = 0.0
    layer.set_weights([kernel, bias])
    (producer,) = [
        other
        for other in model.layers
        if isinstance(other, L.Conv2D) and other.filters == 32
    ]
    pk, pb = producer.get_weights()
    pk[..., [0, 3]] = 0.0
    pb[[0, 3]] = 0.0
    producer.set_weights([pk, pb])
    small = shrink(model)
    (after,) = _transposes(small)
    assert tuple(after.kernel.shape) == (3, 3, 13, 30)
    np.testing.assert_allclose(
        small.predict(x, verbose=0),
        model.predict(x, verbose=0),
        atol=1e-5,
    )


@pytest.mark.slow
def test_unet_sweep_passes_every_capability():
    # The zoo's per-model sweep, each capability in a child process as
    # `python -m benchmarks.zoo` runs it (a converter crash is a cell).
    row = zoo_benchmark.sweep_in_child("UNet", epochs=2, timeout=900)
    cells = row["cells"]
    assert set(cells) == set(zoo_benchmark.CAPABILITIES)
    # Per-pixel accuracy of the float model: 70% of the pixels are
    # background, which an untrained U-Net predicts everywhere.
    assert row["accuracy"] > 0.85
    for capability in ("ptq", "qat", "prune", "channels"):
        cell = cells[capability]
        assert cell["status"] == "ok", (capability, cell["reason"])
        assert cell["figures"]["int8_only"], capability
        # Per pixel: the top-1 of the 2 logits at each of 32 x 32 pixels.
        assert cell["figures"]["agreement"] >= 0.99, capability
    assert cells["prune"]["figures"]["sparsity"] == pytest.approx(0.5, 0.01)
    assert cells["prune"]["figures"]["gzip_x"] < 0.9
    assert cells["channels"]["figures"]["macs_x"] < 0.6
    # Given its last layer (it has no classification head to find), the
    # new head stays per pixel: 5 classes at each of 32 x 32 pixels.
    assert cells["swap_head"]["status"] == "ok", cells["swap_head"]["reason"]
    assert cells["swap_head"]["figures"]["output"] == "(None, 32, 32, 5)"
