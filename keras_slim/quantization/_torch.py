"""The int8 simulation's hot loop on the torch backend.

Eager torch runs `_quantizers`' `keras.ops` code as separate operations,
each with `keras.ops`'s conversions (~5-15 us a call on a 0-d tensor) and
its own pass over the tensor. Here the same float32 operations, in the
same order (so the same bits: `tests/fake_quant_test.py`), in torch: the
fake quantization as one autograd node (`fake_quant`), the moving-average
activation range (`moving_range`) and the symmetric kernel range
(`kernel_range`). `benchmarks/probes/torch_fake_quant.py` measures them.
Imported by `_quantizers`; torch itself only when called.
"""

import functools

from keras import ops


def fake_quant(x, lo, hi, narrow_range):
    """`_quantizers._fake_quant_ops` on torch as one autograd node.

    The same float32 torch operations in the same order, so the same bits
    (`tests/fake_quant_test.py`), with no graph of ~20 eager ops: the
    forward pass works in place on one new tensor and keeps a float mask
    (1.0 inside the nudged range, 0.0 outside), the backward pass is one
    product, `grad * keep` (a product, as the reference's, so a negative
    gradient outside the range is -0.0 there too). A per-tensor range on
    the CPU enters the elementwise operations as Python floats (exact
    float32 values). Two differences, both at non-finite inputs: an
    infinite `x` gives the clipped value here, as TensorFlow's kernel
    does, where the reference's `x - x` makes it NaN; a NaN `x` (NaN out
    in both) passes the gradient here (torch's `sign(NaN)` is 0) where
    the reference's is 0.

    Example (torch backend; the range is [0, 1], 255 steps):

    >>> import torch
    >>> x = torch.tensor([0.3, 1.2], requires_grad=True)
    >>> fake_quant(x, torch.tensor(0.0), torch.tensor(1.0), False)
    tensor([0.3020, 1.0000], grad_fn=<FakeQuantBackward>)
    """
    function = _torch_function()
    x = ops.convert_to_tensor(x)
    lo = ops.convert_to_tensor(lo)
    hi = ops.convert_to_tensor(hi)
    return function.apply(x, lo, hi, narrow_range)


@functools.cache
def _torch_function():
    import torch

    from keras_slim.quantization._quantizers import _nudge

    class FakeQuant(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, lo, hi, narrow_range):
            dtype = x.dtype
            x32 = x.float()
            scale, nudged_min, nudged_max = _nudge(
                lo.detach().float(), hi.detach().float(), narrow_range, torch
            )
            if scale.ndim == 0 and x32.device.type == "cpu":
                # Python floats (exact float32 values): torch's CPU kernels
                # take a scalar operand on their fast path (a 0-d tensor
                # operand takes the broadcasting one, 6x slower here).
                scale = scale.item()
                nudged_min, nudged_max = nudged_min.item(), nudged_max.item()
                out = torch.clamp(x32, nudged_min, nudged_max)
            else:
                out = torch.clip(x32, min=nudged_min, max=nudged_max)
            if ctx.needs_input_grad[0]:
                # 1.0 inside [nudged_min, nudged_max] exactly where clipping
                # left `x` as it was (`sign(|out - x|)` is 0 there), else
                # 0.0: a float mask, as torch's boolean comparisons and
                # float-by-bool products take 4-5x longer on the CPU.
                keep = out - x32
                keep.abs_().sign_().neg_().add_(1.0)
                ctx.save_for_backward(keep)
            out.sub_(nudged_min).div_(scale).add_(0.5).floor_()
            out.mul_(scale).add_(nudged_min)
            ctx.dtype = dtype
            return out if dtype == torch.float32 else out.to(dtype)

        @staticmethod
        def backward(ctx, grad):
            (keep,) = ctx.saved_tensors
            grad = grad.float() * keep
            if ctx.dtype != torch.float32:
                grad = grad.to(ctx.dtype)
            return grad, None, None, None

    return FakeQuant


def moving_range(x32, min_var, max_var, init_var, momentum, min_range):
    """The moving-average `(lo, hi)` of `_quantizers.fake_quant_activation`
    after the batch `x32`, in torch operations (the same float32 values
    as its `keras.ops` version: `tests/fake_quant_test.py`)."""
    import torch

    with torch.no_grad():
        zero = torch.zeros((), dtype=torch.float32, device=x32.device)
        batch_min, batch_max = torch.aminmax(x32)
        batch_min = torch.minimum(batch_min, zero)
        batch_max = torch.maximum(batch_max, zero)
        seen = init_var.value > 0.0
        old_min = min_var.value.float()
        old_max = max_var.value.float()
        lo = torch.where(
            seen, momentum * old_min + (1.0 - momentum) * batch_min, batch_min
        )
        hi = torch.where(
            seen, momentum * old_max + (1.0 - momentum) * batch_max, batch_max
        )
        return lo, torch.maximum(hi, lo + min_range)


def kernel_range(kernel, axes, min_range):
    """`max(max |kernel| over axes, min_range)`, detached: the symmetric
    range of `_quantizers.quantize_kernel`, in torch operations."""
    import torch

    with torch.no_grad():
        m = torch.abs(kernel)
        m = torch.amax(m, dim=axes) if axes is not None else torch.amax(m)
        return torch.clamp_min(m, min_range)
