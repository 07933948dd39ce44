"""datasets, models, profile and the public API."""

import importlib
import inspect

import keras
import numpy as np
import pytest
from conftest import ZOO

import keras_slim
from keras_slim import datasets
from keras_slim import models
from keras_slim import profile


def test_digits_are_offline_stratified_and_fixed_by_seed():
    (x, y), (xt, yt) = datasets.load_digits(image_size=16, test_size=0.2)
    assert x.shape[1:] == (16, 16, 1) and x.dtype == np.float32
    assert len(x) + len(xt) == 1797
    assert np.bincount(yt).min() >= 35  # every class in the test split
    (x2, _), _ = datasets.load_digits(image_size=16, test_size=0.2)
    np.testing.assert_array_equal(x, x2)
    (x3, _), _ = datasets.load_digits(image_size=16, test_size=0.2, seed=1)
    assert not np.array_equal(x, x3)
    (xc, _), _ = datasets.load_digits(channels=3)
    assert xc.shape[1:] == (32, 32, 3)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(image_size=4), r"image_size.*Received: image_size=4"),
        (dict(test_size=1.0), r"test_size.*Received: test_size=1.0"),
        (dict(channels=2), r"channels.*Received: channels=2"),
    ],
)
def test_load_digits_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        datasets.load_digits(**kwargs)


def test_demo_cnn_learns_the_digits(trained_cnn, digits):
    _, (x_test, y_test) = digits
    assert trained_cnn.evaluate(x_test, y_test, verbose=0)[1] >= 0.93


def test_models_refuse_bad_shapes():
    with pytest.raises(ValueError, match=r"Received: input_shape=\(32, 32\)"):
        models.small_cnn(input_shape=(32, 32))
    with pytest.raises(ValueError, match=r"num_classes=1"):
        models.residual_cnn(num_classes=1)


def test_profile_counts_params_macs_and_zeros():
    model = models.small_cnn()
    p = profile(model)
    assert p.total_params == model.count_params() == 20394
    conv4 = next(r for r in p.layers if r.path == "conv4")
    assert conv4.macs == 8 * 8 * 3 * 3 * 32 * 64
    kernel = model.get_layer("conv4").kernel
    kernel.assign(np.zeros(kernel.shape, "float32"))
    p2 = profile(model)
    assert p.nonzero_params - p2.nonzero_params == 18432
    assert p2.layers[[r.path for r in p2.layers].index("conv4")].sparsity == 1
    assert p.float32_bytes == 20394 * 4


def test_profile_walks_nested_and_subclassed_models(capsys):
    nested = profile(ZOO["nested"]())
    assert [r.path for r in nested.layers][0] == "body/conv2d"
    assert nested.macs_complete
    sub = profile(ZOO["subclassed"]())
    assert sub.total_params == 730 and not sub.macs_complete
    assert "+?" in sub.summary().splitlines()[-2]  # the totals row
    assert capsys.readouterr().out == ""  # summary() returns, never prints
    sub.print_summary()
    assert capsys.readouterr().out.splitlines() == sub.summary().splitlines()


def test_profile_refuses_non_models():
    with pytest.raises(TypeError, match=r"Received: model="):
        profile(keras.layers.Dense(2))


def _public_names():
    for module_name in ["keras_slim"] + [
        f"keras_slim.{m}"
        for m in keras_slim.__all__
        if inspect.ismodule(getattr(keras_slim, m, None))
    ]:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                yield f"{module_name}.{name}", obj


@pytest.mark.parametrize("name,obj", list(_public_names()))
def test_every_public_name_has_a_docstring_with_an_example(name, obj):
    doc = inspect.getdoc(obj) or ""
    assert doc.splitlines(), f"{name} has no docstring"
    assert ">>>" in doc, f"{name} has no runnable example"
