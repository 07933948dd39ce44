"""The layer kinds keras_slim knows: the data of `keras_slim.catalogue`.

One row per Keras layer class: which kernels magnitude pruning acts on
(with their output-channel and N:M input axes), how to count its MACs, its
role in channel pruning, its quantization-aware training rule, its int8
weight layout, and whether it can end a feature extractor (pooling).
Teach a new Keras kind here, once; custom layers go through
`keras_slim.catalogue.register_layer`.
"""

import math

import keras

# Classes are named as strings where some Keras versions we support lack
# them (Keras 3.12 has no ContrastLimitedAdaptiveHistogramEqualization, for
# one): a class missing from the installed Keras is left out.
L = keras.layers

# The values of the fields (documented in `keras_slim.catalogue.LayerKind`).
QUANTIZATION_RULES = (
    "conv",
    "depthwise",
    "separable",
    "transpose",
    "dense",
    "einsum",
    "batchnorm",
    "activation",
    "add",
    "concat",
    "output",
    "affine",
    "layernorm",
    "rmsnorm",
    "groupnorm",
    "unitnorm",
    "embedding",
    "attention",
    "recurrent",
    "passthrough",
    "skip",
    "quantizer",
)
CHANNEL_ROLES = (
    "producer",
    "depthwise",
    "norm",
    "pass",
    "merge",
    "input",
    "concatenate",
    "flatten",
    "reshape",
    "rescaling",
    "activation",
)
INT8_WEIGHTS = ("per_channel", "per_tensor", "folded")


# ------------------------------------------------------------------ shapes


def _shape(layer, attribute):
    try:
        return tuple(getattr(layer, attribute).shape)
    except (AttributeError, ValueError, TypeError):
        return None


def _spatial(shape):
    """Product of the dims between batch and channels, or None."""
    if shape is None or any(d is None for d in shape[1:-1]):
        return None
    return math.prod(shape[1:-1])


def _size(variable):
    return math.prod(variable.shape)


# -------------------------------------------------------------------- MACs
# Multiply-accumulates of one forward pass at batch 1, or None when the
# shapes they need are unknown (layers of subclassed models).


def no_macs(layer):
    """Layers that multiply no weights: pooling, activations, merges."""
    return 0


def dense_macs(layer):
    """Every input row times the (in, units) kernel."""
    shape = _shape(layer, "input")
    rows = 1 if shape is None else math.prod(d for d in shape[1:-1] if d)
    return rows * _size(layer.kernel)


def _einsum_parts(layer):
    """`(inputs, kernel, output)` subscripts of an EinsumDense, or None."""
    equation = getattr(layer, "equation", "")
    try:
        inputs, rest = equation.split(",")
        kernel, output = rest.split("->")
    except ValueError:
        return None
    return inputs, kernel, output


def einsum_dense_macs(layer):
    """Every output value is a sum over the contracted kernel axes."""
    parts = _einsum_parts(layer)
    out = _shape(layer, "output")
    if parts is None or out is None or "..." in parts[1]:
        return None
    inputs, kernel, output = parts
    contracted = [
        size
        for letter, size in zip(kernel, layer.kernel.shape)
        if letter in inputs and letter not in output
    ]
    return math.prod(d for d in out[1:] if d) * math.prod(contracted)


def conv_macs(layer):
    """Conv and DepthwiseConv: the kernel at every output position."""
    spatial = _spatial(_shape(layer, "output"))
    return None if spatial is None else spatial * _size(layer.kernel)


def separable_conv_macs(layer):
    """Depthwise then pointwise kernel at every output position."""
    spatial = _spatial(_shape(layer, "output"))
    if spatial is None:
        return None
    kernels = _size(layer.depthwise_kernel) + _size(layer.pointwise_kernel)
    return spatial * kernels


def conv_transpose_macs(layer):
    """The kernel scattered from every input position."""
    spatial = _spatial(_shape(layer, "input"))
    return None if spatial is None else spatial * _size(layer.kernel)


def unknown_macs(layer):
    """MACs that depend on how the layer is called."""
    return None


# ---------------------------------------------------------- kernel axes


def einsum_input_axis(layer):
    """The last kernel axis that EinsumDense contracts with its input."""
    parts = _einsum_parts(layer)
    if parts is None or "..." in parts[1]:
        return None
    inputs, kernel, output = parts
    contracted = [
        i for i, c in enumerate(kernel) if c in inputs and c not in output
    ]
    return contracted[-1] if contracted else None


def einsum_output_axes(layer):
    """The kernel axes that appear in EinsumDense's output."""
    parts = _einsum_parts(layer)
    if parts is None or "..." in parts[1]:
        return None
    _, kernel, output = parts
    return tuple(i for i, c in enumerate(kernel) if c in output)


# Kernel rows: (variable name, output-channel axis, N:M input axis, pruned
# by default). A depthwise kernel (..., in, multiplier) has its output
# channels on two axes, (-2, -1); it reduces over no input axis.
_DENSE = (("kernel", -1, -2, True),)
_CONV = (("kernel", -1, -2, True),)
_DEPTHWISE = (("kernel", (-2, -1), None, True),)
_SEPARABLE = (
    ("depthwise_kernel", (-2, -1), None, True),
    ("pointwise_kernel", -1, -2, True),
)
_TRANSPOSE = (("kernel", -2, -1, True),)  # (..., out, in)
_EINSUM = (("kernel", einsum_output_axes, einsum_input_axis, True),)
_RECURRENT = (("kernel", -1, -2, True), ("recurrent_kernel", -1, -2, True))
_EMBEDDING = (("embeddings", -1, None, False),)
_REVERSIBLE = (*_EMBEDDING, ("reverse_embeddings", -1, None, False))


def _row(classes, **fields):
    return tuple(classes), fields


def _convnext_layer_scale():
    """ConvNeXt's `LayerScale` (`x * gamma`, one factor a channel), which
    `keras.applications.ConvNeXt*` build and `keras.layers` does not
    export; `()` where this Keras has no such class."""
    try:
        from keras.src.applications import convnext
    except ImportError:  # pragma: no cover - a Keras that moved it
        return ()
    found = getattr(convnext, "LayerScale", None)
    if not (isinstance(found, type) and issubclass(found, L.Layer)):
        return ()  # pragma: no cover
    return (found,)


KINDS = (
    _row(
        (L.Dense,),
        kernels=_DENSE,
        macs=dense_macs,
        channel_role="producer",
        quantization="dense",
        int8_weights="per_tensor",
    ),
    _row(
        (L.EinsumDense,),
        kernels=_EINSUM,
        macs=einsum_dense_macs,
        quantization="einsum",
        int8_weights="per_tensor",
    ),
    _row(
        (L.Conv1D, L.Conv2D),
        kernels=_CONV,
        macs=conv_macs,
        channel_role="producer",
        quantization="conv",
        int8_weights="per_channel",
    ),
    _row(
        (L.Conv3D,),
        kernels=_CONV,
        macs=conv_macs,
        channel_role="producer",
        int8_weights="per_channel",
    ),
    _row(
        (L.DepthwiseConv1D, L.DepthwiseConv2D),
        kernels=_DEPTHWISE,
        macs=conv_macs,
        channel_role="depthwise",
        quantization="depthwise",
        int8_weights="per_channel",
    ),
    _row(
        (L.SeparableConv1D, L.SeparableConv2D),
        kernels=_SEPARABLE,
        macs=separable_conv_macs,
        channel_role="producer",
        quantization="separable",
        int8_weights="per_channel",
    ),
    _row(
        (L.Conv2DTranspose,),
        kernels=_TRANSPOSE,
        macs=conv_transpose_macs,
        channel_role="producer",
        quantization="transpose",
        int8_weights="per_channel",
    ),
    _row(
        (L.Conv1DTranspose, L.Conv3DTranspose),
        kernels=_TRANSPOSE,
        macs=conv_transpose_macs,
        channel_role="producer",
        int8_weights="per_channel",
    ),
    _row(
        (L.Embedding,),
        kernels=_EMBEDDING,
        macs=no_macs,
        quantization="embedding",
        int8_weights="per_tensor",
    ),
    _row((L.ReversibleEmbedding,), kernels=_REVERSIBLE, macs=unknown_macs),
    # Its EinsumDense projections are its own weights, not leaves of the
    # model: not pruned yet.
    _row(
        (L.MultiHeadAttention,),
        macs=unknown_macs,
        quantization="attention",
        int8_weights="per_tensor",
    ),
    # Unrolled into int8 FULLY_CONNECTED, ADD, MUL, LOGISTIC and TANH ops
    # per time step (`keras_slim.quantization._recurrent`); MACs and
    # channels not modelled. Both kernels `(in or units, gates * units)`
    # are pruned (the cell's variables); a Bidirectional lists none, so
    # its forward and backward layers are pruned as layers of their own.
    _row(
        (L.LSTM, L.GRU, L.SimpleRNN),
        kernels=_RECURRENT,
        macs=unknown_macs,
        quantization="recurrent",
        int8_weights="per_channel",
    ),
    _row(
        (L.Bidirectional,),
        macs=unknown_macs,
        quantization="recurrent",
        int8_weights="per_channel",
    ),
    # An int8 MUL by its (constant) factors, as `Rescaling` runs.
    _row(_convnext_layer_scale(), macs=no_macs, quantization="affine"),
    _row(
        (L.BatchNormalization,),
        macs=no_macs,
        channel_role="norm",
        quantization="batchnorm",
        int8_weights="folded",
    ),
    *(
        _row(
            [getattr(L, name) for name in names.split() if hasattr(L, name)],
            macs=no_macs,
            channel_role=role,
            quantization=rule,
            pooling=pooling,
        )
        for names, role, rule, pooling in (
            # Layers that multiply no weights, so count 0 MACs:
            # (class names, channel role, quantization rule, pooling point).
            ("InputLayer", "input", "passthrough", False),
            ("Add Subtract", "merge", "add", False),
            ("Multiply Average Maximum Minimum", "merge", "output", False),
            ("Concatenate", "concatenate", "concat", False),
            ("Flatten", "flatten", "passthrough", True),
            ("Reshape", "reshape", "passthrough", False),
            ("Rescaling", "rescaling", "affine", False),
            ("Activation", "activation", None, False),
            ("ReLU", "pass", "activation", False),
            ("LeakyReLU", "pass", "output", False),
            ("ELU", "pass", None, False),
            ("Dropout SpatialDropout1D", "pass", "passthrough", False),
            ("SpatialDropout2D", "pass", "passthrough", False),
            ("GaussianNoise Identity", "pass", "passthrough", False),
            ("SpatialDropout3D AlphaDropout", "pass", None, False),
            ("GaussianDropout", "pass", None, False),
            ("ActivityRegularization", "pass", None, False),
            ("AveragePooling1D AveragePooling2D", "pass", "passthrough", False),
            ("AveragePooling3D", "pass", None, False),
            ("GlobalAveragePooling1D", "pass", "output", True),
            ("GlobalAveragePooling2D", "pass", "output", True),
            ("GlobalAveragePooling3D", "pass", None, True),
            ("MaxPooling1D MaxPooling2D", "pass", "passthrough", False),
            ("MaxPooling3D", "pass", None, False),
            ("GlobalMaxPooling1D", "pass", "passthrough", True),
            ("GlobalMaxPooling2D", "pass", "passthrough", True),
            ("GlobalMaxPooling3D", "pass", None, True),
            ("ZeroPadding1D ZeroPadding2D", "pass", "passthrough", False),
            ("Cropping1D Cropping2D", "pass", "passthrough", False),
            ("ZeroPadding3D Cropping3D", "pass", None, False),
            ("UpSampling1D UpSampling2D", "pass", "passthrough", False),
            ("UpSampling3D", "pass", None, False),
            ("Softmax", None, "output", False),
            ("LayerNormalization", None, "layernorm", False),
            ("GroupNormalization", None, "groupnorm", False),
            ("RMSNormalization", None, "rmsnorm", False),
            ("UnitNormalization", None, "unitnorm", False),
            ("Normalization", None, "affine", False),
            ("PReLU", None, "output", False),
        )
    ),
)

_PREPROCESSING = (
    "preprocessing: no weights to compress and no int8 kernel; run it "
    "outside the model that is compressed and exported"
)
_RECURRENT = (
    "recurrent: a cell or a recurrent layer keras_slim does not model "
    "(QAT models the layers LSTM, GRU and SimpleRNN; post-training "
    "export_tflite(..., quantization='int8') unrolls those three)"
)
_ATTENTION = "attention: MACs depend on sequence lengths; not modelled"

UNSUPPORTED = (
    *(
        (getattr(L, name), _PREPROCESSING)
        for name in (
            "AugMix AutoContrast CategoryEncoding CenterCrop "
            "ContrastLimitedAdaptiveHistogramEqualization CutMix "
            "Discretization Equalization HashedCrossing Hashing "
            "IntegerLookup MaxNumBoundingBoxes MelSpectrogram MixUp "
            "Pipeline RandAugment RandomBrightness RandomColorDegeneration "
            "RandomColorJitter RandomContrast RandomCrop "
            "RandomElasticTransform RandomErasing RandomFlip "
            "RandomGaussianBlur RandomGrayscale RandomHue RandomInvert "
            "RandomPerspective RandomPosterization RandomRotation "
            "RandomSaturation RandomSharpness RandomShear "
            "RandomTranslation RandomZoom Resizing Solarization "
            "STFTSpectrogram StringLookup TextVectorization"
        ).split()
        if hasattr(L, name)
    ),
    *(
        (getattr(L, name), _RECURRENT)
        for name in (
            "RNN SimpleRNNCell GRUCell LSTMCell StackedRNNCells "
            "ConvLSTM1D ConvLSTM2D ConvLSTM3D"
        ).split()
        if hasattr(L, name)
    ),
    *(
        (getattr(L, name), _ATTENTION)
        for name in ("Attention AdditiveAttention GroupQueryAttention").split()
        if hasattr(L, name)
    ),
    *(
        (getattr(L, name), "wraps another layer, which it calls its own way")
        for name in ("Wrapper TimeDistributed SpectralNormalization").split()
        if hasattr(L, name)
    ),
    *(
        (getattr(L, name), "runs code of another framework, not Keras layers")
        for name in "JaxLayer FlaxLayer TorchModuleWrapper TFSMLayer".split()
        if hasattr(L, name)
    ),
    (L.Layer, "the base class: teach a custom layer with register_layer"),
    (L.Lambda, "an arbitrary function: nothing about it can be known"),
    (L.Dot, "MACs depend on its axes and inputs; not modelled"),
    (L.Masking, "changes the mask, not the values; not modelled"),
    (L.Permute, "moves the channel axis: channels cannot be followed"),
    (L.RepeatVector, "adds an axis: channels cannot be followed"),
    *(
        (getattr(L, name), "adaptive pooling is not modelled yet")
        for name in (
            "AdaptiveAveragePooling1D AdaptiveAveragePooling2D "
            "AdaptiveAveragePooling3D AdaptiveMaxPooling1D "
            "AdaptiveMaxPooling2D AdaptiveMaxPooling3D"
        ).split()
        if hasattr(L, name)
    ),
)
