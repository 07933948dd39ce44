"""Shared fixtures: offline digits, a trained demo CNN, a model zoo, and a
`MirroredStrategy` over two virtual CPUs.

The suite runs on the backend `KERAS_BACKEND` names (TensorFlow when it is
unset): `KERAS_BACKEND=jax python -m pytest -m "not slow"`. A test that
holds on some backends only says which with
`@pytest.mark.backends("tensorflow", reason=...)` (the TFLite converter,
`tf.distribute`, `tf.function`); on the others it is skipped with that
reason.
"""

import gc
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()

if BACKEND == "tensorflow":
    import tensorflow as tf

    # Two logical CPUs so that MirroredStrategy tests have replicas to
    # mirror. This must run before TensorFlow initialises its devices.
    _cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
        )
    except RuntimeError:  # already initialised (e.g. by a plugin)
        pass


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "backends(*names, reason): runs only on these Keras backends "
        "(skipped, with the reason, on the others)",
    )


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "mirrored_strategy" in getattr(item, "fixturenames", ()):
            item.add_marker(
                pytest.mark.backends("tensorflow", reason="tf.distribute")
            )
        marker = item.get_closest_marker("backends")
        if marker is None or BACKEND in marker.args:
            continue
        reason = marker.kwargs.get("reason", "")
        item.add_marker(
            pytest.mark.skip(
                reason=f"{BACKEND} backend: runs on {', '.join(marker.args)} "
                f"only ({reason})"
            )
        )


from keras_slim import datasets  # noqa: E402
from keras_slim import models  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    yield
    # Without Python's garbage collection: a full collection of the heap a
    # TensorFlow session builds took a median 1.6 s per test (1,226 s of a
    # 2,692 s suite, measured); `_collect_garbage` runs it once per module.
    keras.backend.clear_session(free_memory=False)


@pytest.fixture(autouse=True, scope="module")
def _collect_garbage():
    yield
    gc.collect()


@pytest.fixture(scope="session")
def digits():
    """`(x_train, y_train), (x_test, y_test)` at 32x32x1, seed 0."""
    return datasets.load_digits(image_size=32, seed=0)


@pytest.fixture(scope="session")
def digits_small():
    """The digits at their native 8x8, for fast Dense models."""
    return datasets.load_digits(image_size=8, seed=0)


def compile_classifier(model, learning_rate=1e-3, **kwargs):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        **kwargs,
    )
    return model


def _train_small_cnn(digits, epochs):
    # The learning rate decays to a tenth over the run. At a constant 1e-3
    # the test accuracy of the last epochs swings by several points from
    # one epoch to the next (0.85 to 0.98 under torch and JAX, measured
    # epoch by epoch; BatchNorm's 0.9-momentum statistics follow the last
    # few batches), so which epoch a run stops at decided whether it
    # reached 93%. Decayed, the last five epochs stay within a point, at
    # 95-97% on all three backends and seeds 0 and 1.
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    steps = epochs * -(-len(x) // 64)
    decay = keras.optimizers.schedules.CosineDecay(1e-3, steps, alpha=0.1)
    model = compile_classifier(models.small_cnn(), learning_rate=decay)
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
    return model


@pytest.fixture(scope="session")
def trained_cnn_weights(digits):
    """Weights of the demo CNN trained 20 epochs (about 96% test accuracy).

    Session-scoped and returned as weights, so each test builds its own
    model object and cannot disturb another test's.
    """
    return _train_small_cnn(digits, epochs=20).get_weights()


@pytest.fixture
def trained_cnn(trained_cnn_weights):
    """A fresh, compiled demo CNN holding the trained weights."""
    model = compile_classifier(models.small_cnn())
    model.set_weights(trained_cnn_weights)
    return model


# ----------------------------------------------------------------- the zoo


def sequential_model(input_shape=(8, 8, 1), num_classes=10):
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(num_classes),
        ],
        name="sequential_zoo",
    )


def functional_model(input_shape=(8, 8, 1), num_classes=10):
    return models.residual_cnn(input_shape, num_classes)


@keras.saving.register_keras_serializable(package="keras_slim_tests")
class SubclassedModel(keras.Model):
    """A subclassed CNN with its layers as attributes."""

    def __init__(self, num_classes=10, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.conv = keras.layers.Conv2D(8, 3, padding="same")
        self.bn = keras.layers.BatchNormalization(momentum=0.9)
        self.relu = keras.layers.ReLU()
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.hidden = keras.layers.Dense(32, activation="relu")
        self.head = keras.layers.Dense(num_classes)

    def call(self, x, training=False):
        x = self.relu(self.bn(self.conv(x), training=training))
        return self.head(self.hidden(self.pool(x)))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


def subclassed_model(input_shape=(8, 8, 1), num_classes=10):
    model = SubclassedModel(num_classes, name="subclassed_zoo")
    model(np.zeros((1, *input_shape), "float32"))  # builds every sub-layer
    return model


def nested_model(input_shape=(8, 8, 1), num_classes=10):
    inner = keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
        ],
        name="body",
    )
    inputs = keras.Input(input_shape)
    x = inner(inputs)
    x = keras.layers.Dense(32, activation="relu", name="hidden")(x)
    outputs = keras.layers.Dense(num_classes, name="head")(x)
    return keras.Model(inputs, outputs, name="nested_zoo")


ZOO = {
    "sequential": sequential_model,
    "functional": functional_model,
    "subclassed": subclassed_model,
    "nested": nested_model,
}


@pytest.fixture(params=sorted(ZOO))
def zoo_model(request):
    """Each kind of model (8x8x1 in, 10 logits out), built, uncompiled."""
    return ZOO[request.param]()


@pytest.fixture(scope="session")
def mirrored_strategy():
    """A `tf.distribute.MirroredStrategy` over two virtual CPUs.

    One instance for the whole session: a second MirroredStrategy in the
    same process reuses collective instance keys, and its all-reduces then
    fail with "Shape mismatch in the collective instance".
    """
    if BACKEND != "tensorflow":
        pytest.fail(
            "mirrored_strategy needs @pytest.mark.backends('tensorflow')"
        )
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    if len(devices) < 2:
        pytest.fail("two virtual CPUs were not configured")
    return tf.distribute.MirroredStrategy(devices)


def accuracy(logits, labels):
    return float(np.mean(np.argmax(logits, axis=-1) == labels))
