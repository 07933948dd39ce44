"""Tests for keras_slim.catalogue: one table of layer kinds for every
capability, the MACs it counts, and teaching it a custom layer."""

import keras
import numpy as np
import pytest
from conftest import compile_classifier

from keras_slim import catalogue
from keras_slim import profile
from keras_slim import transfer
from keras_slim.catalogue import Kernel
from keras_slim.catalogue import register_layer
from keras_slim.pruning import MagnitudePruning
from keras_slim.pruning import sparsity_report
from keras_slim.pruning.channels import prune_channels
from keras_slim.schedules import ConstantSparsity

L = keras.layers


def _keras_layer_classes():
    classes = {}
    for name in dir(keras.layers):
        obj = getattr(keras.layers, name)
        if isinstance(obj, type) and issubclass(obj, keras.layers.Layer):
            classes[obj] = name
    return classes


# ----------------------------------------------------------------- coverage


def test_every_keras_layer_class_is_catalogued_or_unsupported_with_a_reason():
    unsupported = dict(catalogue.UNSUPPORTED)
    assert len(unsupported) == len(catalogue.UNSUPPORTED)  # no duplicates
    missing, both = [], []
    for cls, name in sorted(
        _keras_layer_classes().items(), key=lambda item: item[1]
    ):
        known = catalogue.get_layer_kind(cls, exact=True) is not None
        if known and cls in unsupported:
            both.append(name)
        elif not known and not unsupported.get(cls, "").strip():
            missing.append(name)
    assert not missing, f"neither catalogued nor unsupported: {missing}"
    assert not both, f"catalogued and unsupported: {both}"


def test_aliases_share_the_entry_of_their_class():
    conv = catalogue.get_layer_kind(L.Convolution2D)
    assert conv is catalogue.get_layer_kind(L.Conv2D)
    assert conv.name == "Conv2D"
    assert catalogue.get_layer_kind_by_name("Conv2D") is conv
    assert catalogue.get_layer_kind_by_name("Convolution2D") is None


def test_subclasses_match_their_base_except_for_exact_lookups():
    class WideConv(L.Conv2D):
        pass

    assert catalogue.get_layer_kind(WideConv).layer_class is L.Conv2D
    assert catalogue.get_layer_kind(WideConv, exact=True) is None
    assert catalogue.quantization_rule_of(WideConv) is None
    assert catalogue.get_layer_kind_by_name("WideConv") is None


# Copied from `quantization/_fake_quant._RULES` as it was before the
# catalogue: the catalogue must give the same rule to every class.
_QUANTIZATION_RULES = {
    L.Conv1D: "conv",
    L.Conv2D: "conv",
    L.DepthwiseConv1D: "depthwise",
    L.DepthwiseConv2D: "depthwise",
    L.SeparableConv1D: "separable",
    L.SeparableConv2D: "separable",
    L.Conv2DTranspose: "transpose",
    L.Dense: "dense",
    L.BatchNormalization: "batchnorm",
    L.Add: "add",
    L.Subtract: "add",
    L.Concatenate: "concat",
    L.Multiply: "output",
    L.Average: "output",
    L.Maximum: "output",
    L.Minimum: "output",
    L.GlobalAveragePooling1D: "output",
    L.GlobalAveragePooling2D: "output",
    # AVERAGE_POOL_2D's int8 kernel needs its output on its input's scale.
    L.AveragePooling1D: "passthrough",
    L.AveragePooling2D: "passthrough",
    L.Softmax: "output",
    L.Rescaling: "affine",
    L.Normalization: "affine",
    L.UpSampling1D: "passthrough",
    L.UpSampling2D: "passthrough",
    L.MaxPooling1D: "passthrough",
    L.MaxPooling2D: "passthrough",
    L.GlobalMaxPooling1D: "passthrough",
    L.GlobalMaxPooling2D: "passthrough",
    L.Flatten: "passthrough",
    L.Reshape: "passthrough",
    L.Dropout: "passthrough",
    L.SpatialDropout1D: "passthrough",
    L.SpatialDropout2D: "passthrough",
    L.GaussianNoise: "passthrough",
    L.ZeroPadding1D: "passthrough",
    L.ZeroPadding2D: "passthrough",
    L.Cropping1D: "passthrough",
    L.Cropping2D: "passthrough",
    L.Identity: "passthrough",
    L.InputLayer: "passthrough",
    L.ReLU: "activation",
    # Added with the catalogue (issue 20): int8 ops of their own.
    L.LayerNormalization: "layernorm",
    L.RMSNormalization: "rmsnorm",
    L.GroupNormalization: "groupnorm",
    L.LeakyReLU: "output",
    L.PReLU: "output",
    L.UnitNormalization: "unitnorm",
    L.Embedding: "embedding",
    L.MultiHeadAttention: "attention",
    L.LSTM: "recurrent",
    L.GRU: "recurrent",
    L.SimpleRNN: "recurrent",
    L.Bidirectional: "recurrent",
    L.EinsumDense: "einsum",
}


def test_quantization_rules_of_every_keras_layer_class():
    for cls in _keras_layer_classes():
        expected = _QUANTIZATION_RULES.get(cls)
        assert catalogue.quantization_rule_of(cls) == expected, cls.__name__


def test_pruned_kernels_and_their_axes():
    def kernels(cls):
        kind = catalogue.get_layer_kind(cls)
        return {k.name: (k.output_axis, k.input_axis) for k in kind.kernels}

    assert kernels(L.Dense) == {"kernel": (-1, -2)}
    assert kernels(L.DepthwiseConv1D) == {"kernel": ((-2, -1), None)}
    assert kernels(L.Conv3DTranspose) == {"kernel": (-2, -1)}
    assert kernels(L.SeparableConv1D) == {
        "depthwise_kernel": ((-2, -1), None),
        "pointwise_kernel": (-1, -2),
    }
    embedding = catalogue.get_layer_kind(L.Embedding)
    assert embedding.prunable == ()
    assert embedding.prunable_on_request == ("embeddings",)
    einsum = L.EinsumDense("abc,cde->abde", output_shape=(5, 3, 2))
    kernel = catalogue.get_layer_kind(einsum).kernel("kernel")
    assert kernel.input_axis_of(einsum) == 0
    assert kernel.output_axes_of(einsum) == (1, 2)


def test_channel_roles_and_pooling_points():
    def role(name):
        return catalogue.get_layer_kind_by_name(name).channel_role

    assert role("SeparableConv1D") == role("Conv3D") == "producer"
    assert role("DepthwiseConv1D") == "depthwise"
    assert role("BatchNormalization") == "norm"
    assert role("Add") == role("Multiply") == "merge"
    assert role("UpSampling2D") == role("GlobalMaxPooling3D") == "pass"
    assert role("Conv2DTranspose") == "producer"
    assert role("Softmax") is None
    pooling = {k.name for k in catalogue.supported_layers() if k.pooling}
    assert pooling == {
        "Flatten",
        *(f"Global{op}Pooling{d}D" for op in ("Average", "Max") for d in "123"),
    }


def test_markdown_table_lists_every_catalogued_class():
    table = catalogue.markdown_table()
    for kind in catalogue.supported_layers():
        assert f"`{kind.name}`" in table
    assert table.splitlines()[0].startswith("| Layer | Pruned weights |")


# --------------------------------------------------------------------- MACs


def _macs(layer, input_shape, dtype="float32"):
    model = keras.Sequential([keras.Input(input_shape, dtype=dtype), layer])
    (row,) = [r for r in profile(model).layers if r.path == layer.name]
    return row.macs


@pytest.mark.parametrize(
    "layer,input_shape,expected",
    [
        # 8 positions x (depthwise 3*4 + pointwise 4*8)
        (L.SeparableConv1D(8, 3), (10, 4), 8 * (3 * 4 + 4 * 8)),
        # 8*8 positions x (3*3*3*2 + 6*16)
        (
            L.SeparableConv2D(16, 3, padding="same", depth_multiplier=2),
            (8, 8, 3),
            64 * (54 + 96),
        ),
        # 5 input positions x kernel 3*6*4
        (L.Conv1DTranspose(6, 3, strides=2), (5, 4), 5 * 72),
        (L.Conv2DTranspose(2, 3, strides=2), (4, 4, 3), 16 * 3 * 3 * 2 * 3),
        (L.Conv3DTranspose(2, 2), (2, 2, 2, 1), 8 * 2 * 2 * 2 * 2),
        # 8 positions x 3 taps x 4 channels x multiplier 2
        (L.DepthwiseConv1D(3, depth_multiplier=2), (10, 4), 8 * 3 * 4 * 2),
        (L.DepthwiseConv2D(3), (6, 6, 3), 4 * 4 * 3 * 3 * 3),
        (L.Conv3D(3, 3), (4, 4, 4, 2), 8 * 27 * 2 * 3),
        # groups=2: each output channel reads 2 of the 4 input channels
        (L.Conv1D(8, 3, groups=2), (10, 4), 8 * 8 * 3 * 2),
        (L.Dense(3), (5, 4), 5 * 4 * 3),
        # 5*3 outputs, each a sum over c=4
        (L.EinsumDense("abc,cd->abd", output_shape=(5, 3)), (5, 4), 60),
        # 3 outputs, each a sum over b=5 and c=4
        (L.EinsumDense("abc,bcd->ad", output_shape=(3,)), (5, 4), 3 * 20),
        (L.BatchNormalization(), (4, 3), 0),
    ],
)
def test_profile_macs_match_hand_counts(layer, input_shape, expected):
    assert _macs(layer, input_shape) == expected


def test_embedding_counts_no_macs():
    assert _macs(L.Embedding(10, 4), (5,), dtype="int32") == 0


def test_pooling_counts_no_macs_and_is_left_out_of_the_profile():
    pool = L.MaxPooling2D()
    model = keras.Sequential([keras.Input((4, 4, 3)), pool])
    assert catalogue.count_macs(pool) == 0
    assert profile(model).layers == []


def test_count_macs_is_none_for_unbuilt_and_unknown_layers():
    assert catalogue.count_macs(L.Dense(3)) is None
    lstm = keras.Sequential([keras.Input((5, 4)), L.LSTM(3)]).layers[0]
    assert catalogue.count_macs(lstm) is None


# --------------------------------------------------------------- registration


@keras.saving.register_keras_serializable(package="catalogue_test")
class _Scale(L.Layer):
    """A Dense without bias that keras_slim does not know."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=(input_shape[-1], self.units), name="kernel"
        )

    def call(self, x):
        return keras.ops.matmul(x, self.kernel)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="catalogue_test")
class _Twice(L.Layer):
    """Doubles its input: each channel stays where it is."""

    def call(self, x):
        return x * 2.0


@keras.saving.register_keras_serializable(package="catalogue_test")
class _GlobalMean(L.Layer):
    """A global average pooling that keras_slim does not know."""

    def call(self, x):
        return keras.ops.mean(x, axis=(1, 2))


def _scale_model():
    return keras.Sequential(
        [keras.Input((8,)), _Scale(16, name="scale"), L.Dense(2, name="out")]
    )


def test_registered_layer_is_pruned_and_profiled():
    model = _scale_model()
    assert "scale" in dict(sparsity_report(model).skipped)
    before = next(r for r in profile(model).layers if r.path == "scale")
    assert before.macs is None

    kind = register_layer(
        _Scale,
        prunable=[Kernel("kernel", input_axis=-2)],
        macs=lambda layer: int(np.prod(layer.kernel.shape)),
    )
    assert kind.prunable == ("kernel",)
    p = profile(model)
    assert next(r for r in p.layers if r.path == "scale").macs == 8 * 16
    assert p.macs_complete and p.macs == 8 * 16 + 16 * 2

    compile_classifier(model)
    x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
    y = np.arange(32) % 2
    schedule = ConstantSparsity(0.5, begin_step=0, end_step=0)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[MagnitudePruning(schedule)])
    rows = {r.path: r for r in sparsity_report(model).layers}
    assert rows["scale"].zeros == 64 and rows["scale"].size == 128
    assert rows["out"].zeros == 16
    # N:M sees the input axis the registration gave.
    report = sparsity_report(model, pattern="2:4")
    assert [r.path for r in report.layers] == ["scale", "out"]


def test_registered_pass_layer_lets_channels_be_pruned_through_it():
    model = keras.Sequential(
        [
            keras.Input((8,)),
            L.Dense(32, name="hidden"),
            _Twice(name="twice"),
            L.Dense(2, name="out"),
        ]
    )
    with pytest.raises(ValueError, match="'twice'"):
        prune_channels(model, 0.5)
    register_layer(_Twice, channel_role="pass", quantization="output")
    small = prune_channels(model, 0.5)
    assert small.get_layer("hidden").units == 16
    x = np.ones((1, 8), "float32")
    assert small.predict(x, verbose=0).shape == (1, 2)
    assert catalogue.quantization_rule_of(_Twice) == "output"


def test_registered_pooling_layer_lets_swap_head_find_the_head():
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(4, 3)(inputs)
    x = _GlobalMean(name="mean")(x)
    model = keras.Model(inputs, L.Dense(3, name="logits")(x))
    with pytest.raises(ValueError, match="no recognisable classification"):
        transfer.swap_head(model, num_classes=5)
    register_layer(_GlobalMean, pooling=True, macs=lambda layer: 0)
    new = transfer.swap_head(model, num_classes=5)
    assert new.output_shape == (None, 5)


@keras.saving.register_keras_serializable(package="catalogue_test")
class _NamedConv(L.Conv2D):
    """A Conv2D under another class name, as a custom layer often is."""


def test_registered_subclass_keeps_its_base_kernels_and_becomes_a_producer():
    def model():
        return keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                _NamedConv(16, 3, name="conv"),
                L.GlobalAveragePooling2D(),
                L.Dense(2, name="out"),
            ]
        )

    with pytest.raises(ValueError, match=r"Conv or Dense layer .* \(out\)"):
        prune_channels(model(), 0.5, filters="conv")
    kind = register_layer(_NamedConv, channel_role="producer")
    assert kind.prunable == ("kernel",) and kind.quantization is None
    small = prune_channels(model(), 0.5)
    assert small.get_layer("conv").filters == 8
    assert small.get_layer("out").kernel.shape == (8, 2)
    assert [r.path for r in sparsity_report(small).layers] == ["conv", "out"]


def test_registration_keeps_what_an_earlier_call_said():
    class Probe(L.Layer):
        pass

    register_layer(Probe, quantization="skip")
    kind = register_layer(Probe, pooling=True)
    assert (kind.quantization, kind.pooling) == ("skip", True)
    assert catalogue.supported_layers()[-1] is kind


def test_a_custom_class_named_like_a_keras_class_keeps_the_name_to_keras():
    class Dense(L.Layer):
        pass

    kind = register_layer(Dense, channel_role="pass")
    assert catalogue.get_layer_kind(Dense) is kind
    assert catalogue.get_layer_kind_by_name("Dense").layer_class is L.Dense


# ------------------------------------------------------------------- errors


class _Refused(L.Layer):
    pass


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (
            dict(layer_class="Dense"),
            TypeError,
            r"Expected `layer_class` to be a `keras.layers.Layer` subclass. "
            r"Received: layer_class='Dense'",
        ),
        (
            dict(layer_class=L.Dense(2)),
            TypeError,
            r"Received: layer_class=<Dense",
        ),
        (
            dict(quantization="int8"),
            ValueError,
            r"Expected `quantization` to be one of 'conv', .*'skip'.* "
            r"Received: quantization='int8'",
        ),
        (
            dict(channel_role="concatenate"),
            ValueError,
            r"Expected `channel_role` to be one of 'producer', 'depthwise', "
            r"'norm', 'pass', 'merge'. Received: channel_role='concatenate'",
        ),
        (
            dict(channel_role="producer"),
            ValueError,
            r"Expected `prunable` to name the kernel .*"
            r"channel_role='producer'.* Received: prunable=None",
        ),
        (
            dict(prunable="kernel"),
            TypeError,
            r"Expected `prunable` to be a tuple or list .* "
            r"Received: prunable='kernel'",
        ),
        (
            dict(prunable=[3]),
            TypeError,
            r"Expected every item of `prunable` .* Received: prunable=\[3\]",
        ),
        (
            dict(prunable=("kernel", "kernel")),
            ValueError,
            r"name each variable once. "
            r"Received: prunable=\('kernel', 'kernel'\)",
        ),
        (
            dict(macs=5),
            TypeError,
            r"Expected `macs` to be None or a callable .* Received: macs=5",
        ),
        (
            dict(pooling="yes"),
            TypeError,
            r"Expected `pooling` to be a bool. Received: pooling='yes'",
        ),
    ],
)
def test_register_layer_refuses_bad_arguments(kwargs, error, match):
    kwargs = {"layer_class": _Refused, **kwargs}
    layer_class = kwargs.pop("layer_class")
    with pytest.raises(error, match=match):
        register_layer(layer_class, **kwargs)
    assert catalogue.get_layer_kind(_Refused) is None


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(name=""), r"Expected `name` to be a non-empty string"),
        (
            dict(name="kernel", output_axis="last"),
            r"Expected `output_axis` to be None, an int, a tuple of ints or "
            r"a callable `layer -> axis`. Received: output_axis='last'",
        ),
        (
            dict(name="kernel", input_axis=(0, 1)),
            r"Expected `input_axis` to be None, an int or a callable "
            r"`layer -> axis`. Received: input_axis=\(0, 1\)",
        ),
        (
            dict(name="kernel", by_default=1),
            r"Expected `by_default` to be a bool. Received: by_default=1",
        ),
    ],
)
def test_kernel_refuses_bad_arguments(kwargs, match):
    with pytest.raises(TypeError, match=match):
        Kernel(**kwargs)


def test_lookups_refuse_what_is_not_a_layer():
    with pytest.raises(TypeError, match=r"Received: layer='Conv2D'"):
        catalogue.get_layer_kind("Conv2D")
    with pytest.raises(TypeError, match=r"Expected `class_name` to be a str"):
        catalogue.get_layer_kind_by_name(L.Conv2D)
    with pytest.raises(TypeError, match=r"Received: layer_class=<Conv2D"):
        catalogue.quantization_rule_of(L.Conv2D(2, 3))
    with pytest.raises(TypeError, match=r"Expected `layer` to be a Keras"):
        catalogue.count_macs(L.Conv2D)


def test_readme_lists_the_catalogue_as_it_is():
    import pathlib
    import subprocess
    import sys

    readme = pathlib.Path(__file__).parent.parent / "README.md"
    # A fresh interpreter: other tests here register custom layers.
    table = subprocess.run(
        [
            sys.executable,
            "-c",
            "from keras_slim import catalogue; "
            "print(catalogue.markdown_table())",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.strip()
    assert table in readme.read_text(), (
        "README's 'Supported layer kinds' table differs from "
        "keras_slim.catalogue.markdown_table(): paste the new one."
    )
