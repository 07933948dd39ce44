"""The torch path of `fake_quant` (one autograd node) against the
`keras.ops` reference it replaces on torch: the same bits, values and
gradients, per tensor and per channel, narrow range or not, at exact
ties and on the range's edges (issue 21).

    KERAS_BACKEND=torch python -m pytest tests/fake_quant_test.py
"""

import keras
import numpy as np
import pytest

from keras_slim.quantization import _quantizers

pytestmark = pytest.mark.backends(
    "torch", reason="the torch path of fake_quant"
)


def _bits(t):
    """The float32 bit patterns of a tensor (-0.0 differs from 0.0)."""
    return keras.ops.convert_to_numpy(t).astype(np.float32).view(np.uint32)


def _run(quant, x, lo, hi, narrow_range, grad, axis=None):
    import torch

    x = torch.tensor(x, requires_grad=True)
    out = quant(x, torch.tensor(lo), torch.tensor(hi), narrow_range, axis)
    (dx,) = torch.autograd.grad(out, x, torch.tensor(grad))
    return out, dx


def _assert_same(x, lo, hi, narrow_range, axis=None, seed=0):
    x = np.asarray(x, np.float32)
    lo, hi = np.float32(lo), np.float32(hi)
    # A signed upstream gradient: outside the range the reference's
    # gradient is `grad * 0.0`, -0.0 where `grad` is negative.
    grad = np.random.default_rng(seed).normal(size=x.shape)
    grad = grad.astype(np.float32)
    ref, ref_dx = _run(
        _quantizers._fake_quant_ops, x, lo, hi, narrow_range, grad, axis
    )
    out, dx = _run(_quantizers.fake_quant, x, lo, hi, narrow_range, grad, axis)
    assert "FakeQuant" in type(out.grad_fn).__name__, out.grad_fn
    np.testing.assert_array_equal(_bits(out), _bits(ref))
    np.testing.assert_array_equal(_bits(dx), _bits(ref_dx))
    first_dx = keras.ops.convert_to_numpy(ref_dx)
    # The edges: the reference's outputs include nudged_min and
    # nudged_max exactly, where the gradient mask switches.
    edge = keras.ops.convert_to_numpy(ref)
    ref, ref_dx = _run(
        _quantizers._fake_quant_ops, edge, lo, hi, narrow_range, grad, axis
    )
    out, dx = _run(
        _quantizers.fake_quant, edge, lo, hi, narrow_range, grad, axis
    )
    np.testing.assert_array_equal(_bits(out), _bits(ref))
    np.testing.assert_array_equal(_bits(dx), _bits(ref_dx))
    return first_dx


@pytest.mark.parametrize("narrow_range", [False, True])
@pytest.mark.parametrize(
    "lo, hi",
    [
        (0.0, 1.0),  # the digits' range: ties at multiples of 1/16
        (-1.0, 1.0),  # a zero point at 127.5 before nudging
        (-6.0, 6.0),
        (-1.3, 2.7),
        (-0.2, 13.0),
        (0.1, 0.9),  # a range without zero: nudged to include it
        (-3.0, -0.5),
    ],
)
def test_per_tensor_matches_reference(lo, hi, narrow_range):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 8, 8, 4)) * (hi - lo) / 2 + (hi + lo) / 2
    # Exact ties: multiples of 1/16 and of 1/255 and 1/254 over the range.
    ties = np.concatenate(
        [
            np.arange(-64, 65) / 16.0,
            lo + (np.arange(-8, 264) + 0.5) * (hi - lo) / 255.0,
            lo + (np.arange(-8, 264) + 0.5) * (hi - lo) / 254.0,
            [lo, hi, 0.0, -0.0, 1e-30, -1e-30, 1e30, -1e30],
        ]
    )
    dx = _assert_same(x, lo, hi, narrow_range)
    assert 0 < np.count_nonzero(dx) < dx.size  # both sides of the mask
    _assert_same(ties, lo, hi, narrow_range, seed=1)


@pytest.mark.parametrize("narrow_range", [True, False])
@pytest.mark.parametrize("shape", [(3, 3, 1, 16), (3, 3, 16), (64, 10)])
def test_per_channel_matches_reference(shape, narrow_range):
    import torch

    rng = np.random.default_rng(2)
    x = (rng.normal(size=shape) * rng.uniform(0.01, 3, shape[-1])).astype(
        np.float32
    )
    # As `quantize_kernel` does: one symmetric range per output channel.
    m = np.max(np.abs(x), axis=tuple(range(len(shape) - 1)))
    m = np.maximum(m, np.float32(_quantizers.MIN_WEIGHT_RANGE))
    ref, ref_dx = _run(
        _quantizers._fake_quant_ops, x, -m, m, narrow_range, x, axis=-1
    )
    out, dx = _run(_quantizers.fake_quant, x, -m, m, narrow_range, x, -1)
    np.testing.assert_array_equal(_bits(out), _bits(ref))
    np.testing.assert_array_equal(_bits(dx), _bits(ref_dx))
    # Asymmetric per-channel ranges, values beyond them.
    lo = -m * rng.uniform(0.0, 1.0, m.shape).astype(np.float32)
    hi = m * rng.uniform(0.2, 1.0, m.shape).astype(np.float32)
    ref, ref_dx = _run(
        _quantizers._fake_quant_ops, x, lo, hi, narrow_range, x, axis=-1
    )
    out, dx = _run(_quantizers.fake_quant, x, lo, hi, narrow_range, x, -1)
    np.testing.assert_array_equal(_bits(out), _bits(ref))
    np.testing.assert_array_equal(_bits(dx), _bits(ref_dx))
    assert torch.count_nonzero(dx) < dx.numel()


def test_quantize_kernel_matches_reference(monkeypatch):
    import torch

    rng = np.random.default_rng(3)
    for rule, shape in (
        ("conv", (3, 3, 8, 16)),
        ("depthwise", (3, 3, 16, 2)),
        ("dense", (32, 10)),
    ):
        values = rng.normal(size=shape).astype(np.float32)
        results = []
        for quant in (_quantizers.fake_quant, _quantizers._fake_quant_ops):
            monkeypatch.setattr(_quantizers, "fake_quant", quant)
            kernel = torch.tensor(values, requires_grad=True)
            out = _quantizers.quantize_kernel(kernel, rule)
            (dk,) = torch.autograd.grad(out, kernel, torch.tensor(values))
            results.append((_bits(out), _bits(dk)))
            monkeypatch.undo()
        np.testing.assert_array_equal(results[0][0], results[1][0])
        np.testing.assert_array_equal(results[0][1], results[1][1])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_input_matches_reference(dtype):
    import torch

    rng = np.random.default_rng(4)
    x32 = rng.normal(size=(16, 8, 8, 4)).astype(np.float32)
    lo, hi = torch.tensor(-1.7), torch.tensor(2.2)
    outs = []
    for quant in (_quantizers.fake_quant, _quantizers._fake_quant_ops):
        x = torch.tensor(x32).to(getattr(torch, dtype)).requires_grad_(True)
        out = quant(x, lo, hi, False)
        (dx,) = torch.autograd.grad(out, x, torch.ones_like(out))
        assert out.dtype == x.dtype and dx.dtype == x.dtype
        outs.append((out.float().detach().numpy(), dx.float().numpy()))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("narrow_range", [False, True])
def test_nan_input_has_nan_value_and_zero_gradient_as_reference(narrow_range):
    # A NaN stays NaN and stops its gradient in both (before the float
    # mask became one comparison, torch's sign(NaN) = 0 passed it here).
    x = np.array([np.nan, 0.25, np.nan, -3.0, 9.0], np.float32)
    grad = np.array([1.5, -2.0, -0.5, 1.0, -1.0], np.float32)
    ref, ref_dx = _run(
        _quantizers._fake_quant_ops, x, -1.0, 2.0, narrow_range, grad
    )
    out, dx = _run(_quantizers.fake_quant, x, -1.0, 2.0, narrow_range, grad)
    assert np.isnan(keras.ops.convert_to_numpy(out)[[0, 2]]).all()
    np.testing.assert_array_equal(_bits(out), _bits(ref))
    np.testing.assert_array_equal(_bits(dx), _bits(ref_dx))
    assert keras.ops.convert_to_numpy(dx)[[0, 2]].tolist() == [0.0, 0.0]


def test_activation_range_update_matches_reference():
    rng = np.random.default_rng(5)
    momentum = _quantizers.RANGE_MOMENTUM
    lo_var = keras.Variable(-6.0, trainable=False)
    hi_var = keras.Variable(6.0, trainable=False)
    seen = keras.Variable(0.0, trainable=False)
    expected_lo, expected_hi = None, None
    for step in range(20):
        x = keras.ops.convert_to_tensor(
            rng.normal(size=(8, 4, 4, 3)).astype(np.float32) * (1 + step % 3)
            + step % 5
        )
        ops = keras.ops
        batch_min = ops.minimum(ops.min(x), 0.0)
        batch_max = ops.maximum(ops.max(x), 0.0)
        if expected_lo is None:
            expected_lo, expected_hi = batch_min, batch_max
        else:
            expected_lo = momentum * expected_lo + (1.0 - momentum) * batch_min
            expected_hi = momentum * expected_hi + (1.0 - momentum) * batch_max
        expected_hi = ops.maximum(
            expected_hi, expected_lo + _quantizers.MIN_ACTIVATION_RANGE
        )
        out = _quantizers.fake_quant_activation(
            x, lo_var, hi_var, seen, True, momentum
        )
        assert _bits(lo_var) == _bits(expected_lo)
        assert _bits(hi_var) == _bits(expected_hi)
        ref = _quantizers._fake_quant_ops(x, expected_lo, expected_hi)
        np.testing.assert_array_equal(_bits(out), _bits(ref))


@pytest.mark.parametrize(
    "shape, axes",
    [((3, 3, 8, 16), (0, 1, 2)), ((3, 3, 32), (0, 1)), ((32, 10), None)],
)
def test_kernel_range_matches_reference(shape, axes):
    from keras_slim.quantization import _torch

    ops = keras.ops
    values = np.random.default_rng(6).normal(size=shape).astype(np.float32)
    values[..., 0] = 0.0  # an all-zero channel: the minimum range applies
    kernel = ops.convert_to_tensor(values)
    floor = _quantizers.MIN_WEIGHT_RANGE
    expected = ops.maximum(ops.max(ops.abs(kernel), axis=axes), floor)
    got = _torch.kernel_range(kernel, axes, floor)
    np.testing.assert_array_equal(_bits(got), _bits(expected))
    if axes is not None:
        assert _bits(got)[0] == _bits(np.float32(floor))
