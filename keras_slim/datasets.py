"""Offline data for the demo, tests, notebooks and benchmarks.

Everything here is built from data that ships inside an installed package
(scikit-learn's copy of the UCI handwritten digits), so nothing is
downloaded. Users with the internet load the real datasets the usual Keras
way, for example `keras.datasets.mnist.load_data()` (MNIST, 28x28 grey),
`keras.datasets.cifar10.load_data()` (CIFAR-10, 32x32 colour) or
`tensorflow_datasets.load("tf_flowers")`.
"""

import keras
import numpy as np

from keras_slim import _validation


def load_digits(image_size=32, test_size=0.25, seed=0, channels=1):
    """Load the 8x8 handwritten digits, resized, as a stratified split.

    The 1,797 images of scikit-learn's `load_digits` (ten classes, shipped
    with scikit-learn, no download) are scaled to [0, 1] and resized with
    bilinear interpolation to `image_size` x `image_size`, so that models
    built for MNIST- or CIFAR-sized inputs can be trained offline in
    seconds. With the internet, the real thing is
    `keras.datasets.mnist.load_data()`.

    Args:
        image_size: Side of the square output images, >= 8.
        test_size: Fraction of the images held out for testing, in (0, 1).
        seed: Seed of the stratified split; the same seed gives the same
            split.
        channels: 1 (grey) or 3 (the grey image repeated, for backbones
            such as `keras.applications.MobileNetV2`).

    Returns:
        `(x_train, y_train), (x_test, y_test)`: float32 images in [0, 1] of
        shape `(n, image_size, image_size, channels)` and int32 labels.

    Raises:
        ValueError: if an argument is out of range.

    Example:

    >>> (x_train, y_train), (x_test, y_test) = load_digits()
    >>> x_train.shape, x_test.shape
    ((1347, 32, 32, 1), (450, 32, 32, 1))
    >>> float(x_train.min()), float(x_train.max())
    (0.0, 1.0)
    """
    _validation.check_int("image_size", image_size, minimum=8)
    _validation.check_range(
        "test_size",
        test_size,
        0,
        1,
        low_inclusive=False,
        high_inclusive=False,
    )
    _validation.check_int("seed", seed)
    _validation.check_choice("channels", channels, (1, 3))

    import sklearn.datasets
    import sklearn.model_selection

    digits = sklearn.datasets.load_digits()
    images = (digits.images / 16.0).astype("float32")[..., None]
    labels = digits.target.astype("int32")
    if image_size != 8:
        images = keras.ops.convert_to_numpy(
            keras.ops.image.resize(
                images, (image_size, image_size), interpolation="bilinear"
            )
        )
    images = np.clip(images, 0.0, 1.0).astype("float32")
    if channels == 3:
        images = np.repeat(images, 3, axis=-1)
    x_train, x_test, y_train, y_test = sklearn.model_selection.train_test_split(
        images,
        labels,
        test_size=test_size,
        random_state=seed,
        stratify=labels,
    )
    return (x_train, y_train), (x_test, y_test)


__all__ = ["load_digits"]
