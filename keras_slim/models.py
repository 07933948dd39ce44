"""Small reference models used by the demo, tests, notebooks and benchmarks.

Both are ordinary Functional Keras models: nothing in them is specific to
keras_slim, so what works on them works on your own models. They are sized
for the offline digits (`keras_slim.datasets.load_digits`) and train in
seconds on a laptop CPU.
"""

import keras

from keras_slim import _validation


def _check(input_shape, num_classes, bn_momentum):
    if not (
        isinstance(input_shape, (tuple, list))
        and len(input_shape) == 3
        and all(isinstance(d, int) and d > 0 for d in input_shape)
    ):
        raise ValueError(
            "Expected `input_shape` to be a tuple of three positive ints "
            f"(height, width, channels). Received: input_shape={input_shape!r}"
        )
    _validation.check_int("num_classes", num_classes, minimum=2)
    _validation.check_range(
        "bn_momentum", bn_momentum, 0, 1, high_inclusive=False
    )


def small_cnn(
    input_shape=(32, 32, 1), num_classes=10, bn_momentum=0.9, name="small_cnn"
):
    """Build the demo CNN: 20,394 parameters, logits out.

    Conv3x3/16 stride 2 - BN - ReLU, DepthwiseConv3x3 - BN - ReLU,
    Conv1x1/32 - BN - ReLU, MaxPool, Conv3x3/64 - BN - ReLU,
    GlobalAveragePooling, Dense(`num_classes`) logits: a MobileNet-like
    block small enough to train on the digits in seconds. BatchNorm
    momentum defaults to 0.9 because the digits give only ~21 batches an
    epoch, too few for Keras's default 0.99 moving statistics to catch up.

    Args:
        input_shape: `(height, width, channels)`.
        num_classes: Number of output logits, >= 2.
        bn_momentum: BatchNormalization momentum, in [0, 1).
        name: Name of the model.

    Returns:
        An uncompiled Functional `keras.Model` that outputs logits.

    Example:

    >>> model = small_cnn()
    >>> model.count_params()
    20394
    >>> model.output_shape
    (None, 10)
    """
    _check(input_shape, num_classes, bn_momentum)
    layers = keras.layers
    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(
        16, 3, strides=2, padding="same", use_bias=False, name="conv1"
    )(inputs)
    x = layers.BatchNormalization(momentum=bn_momentum, name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw2")(x)
    x = layers.BatchNormalization(momentum=bn_momentum, name="bn2")(x)
    x = layers.ReLU(name="relu2")(x)
    x = layers.Conv2D(32, 1, use_bias=False, name="pw2")(x)
    x = layers.BatchNormalization(momentum=bn_momentum, name="bn3")(x)
    x = layers.ReLU(name="relu3")(x)
    x = layers.MaxPooling2D(name="pool")(x)
    x = layers.Conv2D(64, 3, padding="same", use_bias=False, name="conv4")(x)
    x = layers.BatchNormalization(momentum=bn_momentum, name="bn4")(x)
    x = layers.ReLU(name="relu4")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def residual_cnn(
    input_shape=(32, 32, 1),
    num_classes=10,
    bn_momentum=0.9,
    name="residual_cnn",
):
    """Build a small residual CNN with Add and Concatenate joins.

    Conv-BN-ReLU6 stem, an inverted-residual block (1x1 expand,
    DepthwiseConv2D, 1x1 project, residual `Add`), a two-branch
    `Concatenate`, GlobalAveragePooling and a Dense logits head: the
    patterns (residual adds, concatenations, depthwise convolutions,
    ReLU6) that MobileNet-style models use and that pruning, quantization
    and export must handle.

    Args:
        input_shape: `(height, width, channels)`.
        num_classes: Number of output logits, >= 2.
        bn_momentum: BatchNormalization momentum, in [0, 1).
        name: Name of the model.

    Returns:
        An uncompiled Functional `keras.Model` that outputs logits.

    Example:

    >>> model = residual_cnn()
    >>> [type(l).__name__ for l in model.layers if type(l).__name__ in
    ...  ("Add", "Concatenate")]
    ['Add', 'Concatenate']
    >>> model.output_shape
    (None, 10)
    """
    _check(input_shape, num_classes, bn_momentum)
    layers = keras.layers

    def conv_bn(x, filters, kernel, strides, name, act=True):
        x = layers.Conv2D(
            filters,
            kernel,
            strides=strides,
            padding="same",
            use_bias=False,
            name=f"{name}_conv",
        )(x)
        x = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(
            x
        )
        return layers.ReLU(6.0, name=f"{name}_relu")(x) if act else x

    inputs = keras.Input(input_shape, name="image")
    x = conv_bn(inputs, 16, 3, 2, "stem")
    # Inverted residual block with an identity shortcut.
    y = conv_bn(x, 32, 1, 1, "expand")
    y = layers.DepthwiseConv2D(
        3, padding="same", use_bias=False, name="block_dw"
    )(y)
    y = layers.BatchNormalization(momentum=bn_momentum, name="block_dw_bn")(y)
    y = layers.ReLU(6.0, name="block_dw_relu")(y)
    y = conv_bn(y, 16, 1, 1, "project", act=False)
    x = layers.Add(name="residual_add")([x, y])
    x = layers.MaxPooling2D(name="pool")(x)
    # Two branches joined by concatenation.
    a = conv_bn(x, 24, 1, 1, "branch_a")
    b = conv_bn(x, 24, 3, 1, "branch_b")
    x = layers.Concatenate(name="concat")([a, b])
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


__all__ = ["small_cnn", "residual_cnn"]
