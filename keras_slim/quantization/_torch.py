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
    float32 values). One difference, at infinite inputs: an infinite
    `x` gives the clipped value here, as TensorFlow's kernel does, where
    the reference's `x - x` makes it NaN. A NaN `x` gives NaN and a zero
    gradient in both.

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
            with_mask = ctx.needs_input_grad[0]
            ctx.dtype = dtype
            if lo.device.type == "cpu" and x32.device.type == "cpu":
                nudged = _cpu_nudge(lo, hi, narrow_range)
                if lo.ndim == 0:
                    # Python floats (exact float32 values): torch's CPU
                    # kernels take a scalar operand on their fast path (a
                    # 0-d tensor operand takes the broadcasting one, 6x
                    # slower here).
                    nudged = tuple(float(v[0]) for v in nudged)
                else:
                    nudged = tuple(torch.from_numpy(v) for v in nudged)
                scale, nudged_min, nudged_max = nudged
            else:
                scale, nudged_min, nudged_max = _nudge(
                    lo.detach().float(),
                    hi.detach().float(),
                    narrow_range,
                    torch,
                )
            if isinstance(scale, float):
                out = torch.clamp(x32, nudged_min, nudged_max)
            else:
                out = torch.clip(x32, min=nudged_min, max=nudged_max)
            if with_mask:
                # 1.0 where clipping left `x` as it was (inside [nudged_min,
                # nudged_max]), else 0.0 (NaN included): one comparison
                # written straight into a float tensor; a boolean result,
                # its conversion or a float-by-bool product each take 3-10x
                # longer on torch's CPU kernels (`benchmarks/probes/
                # torch_fake_quant.py`).
                keep = torch.empty_like(x32)
                torch.eq(out, x32, out=keep)
                ctx.save_for_backward(keep)
            out.sub_(nudged_min).div_(scale).add_(0.5).floor_()
            out.mul_(scale).add_(nudged_min)
            return out if dtype == torch.float32 else out.to(dtype)

        @staticmethod
        def backward(ctx, grad):
            (keep,) = ctx.saved_tensors
            grad = grad.float() * keep
            if ctx.dtype != torch.float32:
                grad = grad.to(ctx.dtype)
            return grad, None, None, None

    return FakeQuant


def _cpu_nudge(lo, hi, narrow_range):
    """`_quantizers._nudge` of CPU range tensors in NumPy float32 (the same
    IEEE float32 operations, so the same bits) instead of ~15 torch calls
    of ~4 us each on 0-d or per-channel tensors: `(scale, nudged_min,
    nudged_max)` as float32 arrays of `lo`'s shape, or of shape (1,) for a
    0-d range (never 0-d: NumPy 1.x would promote a float32 scalar
    combined with a Python float to float64)."""
    import numpy as np

    from keras_slim.quantization._quantizers import _nudge

    shape = tuple(lo.shape) or (1,)
    lo = lo.detach().float().numpy().reshape(shape)
    hi = hi.detach().float().numpy().reshape(shape)
    return _nudge(lo, hi, narrow_range, np)


def moving_range(x32, min_var, max_var, init_var, momentum, min_range):
    """The moving-average `(lo, hi)` of `_quantizers.fake_quant_activation`
    after the batch `x32`, as 0-d float32 tensors: the batch's min and max
    in one torch pass, the rest in NumPy float32 on arrays of one element
    (the same float32 values as its `keras.ops` version:
    `tests/fake_quant_test.py`; ~15 torch calls on 0-d tensors fewer)."""
    import numpy as np
    import torch

    def one(value):
        return np.asarray(value, np.float32).reshape(1)

    with torch.no_grad():
        batch_min, batch_max = torch.aminmax(x32)
        batch_min = np.minimum(one(batch_min.item()), 0.0)
        batch_max = np.maximum(one(batch_max.item()), 0.0)
        if init_var.value.item() > 0.0:
            old_min = one(min_var.value.float().item())
            old_max = one(max_var.value.float().item())
            lo = momentum * old_min + (1.0 - momentum) * batch_min
            hi = momentum * old_max + (1.0 - momentum) * batch_max
        else:
            lo, hi = batch_min, batch_max
        hi = np.maximum(hi, lo + min_range)
        device = x32.device
        return torch.tensor(lo[0], device=device), torch.tensor(
            hi[0], device=device
        )


def kernel_range(kernel, axes, min_range):
    """`max(max |kernel| over axes, min_range)`, detached: the symmetric
    range of `_quantizers.quantize_kernel`, in torch operations."""
    import torch

    with torch.no_grad():
        m = torch.abs(kernel)
        m = torch.amax(m, dim=axes) if axes is not None else torch.amax(m)
        return torch.clamp_min(m, min_range)
