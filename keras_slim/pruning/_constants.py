"""The constant value of each channel, for exact shrinking (private).

A channel whose filter is all zero does not output zero: it outputs
`activation(bias)` (0.5 for a sigmoid), a BatchNormalization after it
adds its offset, and so on. `constants(analysis)` follows those values
through the graph: for every tensor, one float per channel, the value the
channel holds at every position for every input, or NaN when it varies or
is not known.

The rule `shrink` follows: a class of channels is removed when every
Conv/Dense that reads it sees a constant, and a non-zero constant is folded
into that layer's bias (`fold`). Folding is exact only where every output
position sees the whole kernel inside the input: a `Dense`, and a
`Conv1D/2D/3D` with `padding="valid"` or 1x1 kernels. A padded Conv reads
the constant at inner positions and zeros at its borders, so a channel
whose non-zero constant reaches one is kept, as is one that reaches any
other reader (a separable conv). Through layers that change positions, a
constant stays one only where that is certain (no padding); otherwise
only zero is followed.
"""

import keras
import numpy as np

from keras_slim.pruning import _graph

NAN = float("nan")

# "pass" layers that map each value on its own: evaluated on the constants.
ELEMENTWISE = set(
    "ReLU LeakyReLU ELU Activation Dropout SpatialDropout1D "
    "SpatialDropout2D SpatialDropout3D AlphaDropout GaussianDropout "
    "GaussianNoise Identity ActivityRegularization".split()
)
# "pass" layers that keep a constant channel constant whatever the input.
UNIFORM = set(
    "GlobalAveragePooling1D GlobalAveragePooling2D GlobalAveragePooling3D "
    "GlobalMaxPooling1D GlobalMaxPooling2D GlobalMaxPooling3D Cropping1D "
    "Cropping2D Cropping3D UpSampling1D UpSampling2D UpSampling3D".split()
)
# Spatial layers that keep a constant only without padding.
POOLING = set(
    "AveragePooling1D AveragePooling2D AveragePooling3D MaxPooling1D "
    "MaxPooling2D MaxPooling3D".split()
)
# Element-wise keras ops f with f(0) == 0.
ZERO_PRESERVING_OPS = set(
    "Negative Absolute Square Sqrt Relu Relu6 Silu HardSilu Tanh".split()
)
# Readers whose bias can take a constant input channel, when unpadded.
FOLDING = {"Dense", "Conv1D", "Conv2D", "Conv3D"}


def _zero_only(values):
    return np.where(values == 0, 0.0, NAN)


def _evaluate(fn, values, rank=2):
    """`fn` of the finite `values`, shaped as one position of a tensor."""
    values = np.asarray(values, "float32")
    finite = np.isfinite(values)
    if not finite.any():
        return np.full(values.shape, NAN)
    x = np.where(finite, values, 0.0).astype("float32")
    x = x.reshape((1,) * (max(rank, 2) - 1) + (-1,))
    try:
        out = keras.ops.convert_to_numpy(fn(x)).astype("float64").reshape(-1)
    except Exception:  # any failure: the values are not known, keep them
        return np.full(values.shape, NAN)
    if out.shape != values.shape:  # not element-wise: nothing is known
        return np.full(values.shape, NAN)
    return np.where(finite, out, NAN)


def unpadded(node):
    """Whether every output position of `node` sees its whole kernel."""
    cfg = node.config
    if "kernel_size" not in cfg and "pool_size" not in cfg:
        return True
    size = cfg.get("kernel_size", cfg.get("pool_size"))
    size = (size,) if isinstance(size, int) else tuple(size)
    return cfg.get("padding", "valid") == "valid" or all(k == 1 for k in size)


def _activation(node, values):
    act = getattr(node.layer, "activation", None)
    return values if act is None else _evaluate(act, values)


def _producer(node, n):
    kernel = _graph.producer_kernel(node)
    zero = np.all(kernel.reshape(-1, n) == 0, axis=0)
    out = np.full(n, NAN)
    if zero.any():
        bias = bias_of(node.layer, n)
        out[zero] = _activation(node, np.where(zero, bias, NAN))[zero]
    return out


def _depthwise(node, values, n):
    kernel = _graph.producer_kernel(node)
    m = kernel.shape[-1]
    k = kernel.reshape(-1, kernel.shape[-2] * m)
    values = np.repeat(values, m)
    # A zero input stays uniform through zero padding; a constant does not.
    pre = np.where(values == 0, 0.0, NAN)
    if unpadded(node):
        pre = values * k.sum(axis=0, dtype="float64")
    pre = np.where(np.all(k == 0, axis=0), 0.0, pre)
    return _activation(node, pre + bias_of(node.layer, n))


def bias_of(layer, n):
    if getattr(layer, "use_bias", False) and layer.bias is not None:
        return np.asarray(layer.bias, "float64")
    return np.zeros(n)


def _norm(node, values, n):
    layer = node.layer
    gamma, beta = (
        np.asarray(v, "float64") if v is not None else np.full(n, d)
        for v, d in (
            (getattr(layer, "gamma", None), 1.0),
            (getattr(layer, "beta", None), 0.0),
        )
    )
    if node.kind != "BatchNormalization":
        return np.where((gamma == 0) & (beta == 0), 0.0, NAN)
    mean = np.asarray(layer.moving_mean, "float64")
    var = np.asarray(layer.moving_variance, "float64")
    scale = gamma / np.sqrt(var + layer.epsilon)
    return np.where(gamma == 0, beta, (values - mean) * scale + beta)


def _pass(node, values):
    if node.kind in ELEMENTWISE or node.role == "activation":
        rank = len(node.inputs[0][1])
        return _evaluate(node.layer, values, rank)
    if node.kind in UNIFORM or (node.kind in POOLING and unpadded(node)):
        return values
    return _zero_only(values)


def _wide(ins, n):
    """Inputs broadcast to `n` channels (NaN when they cannot be)."""
    out = []
    for values in ins:
        if len(values) == n:
            out.append(values)
        elif len(values) == 1:
            out.append(np.full(n, values[0]))
        else:
            out.append(np.full(n, NAN))
    return out


def _merge(kind, ins, n):
    wide = _wide(ins, n)
    stack = np.stack(wide)
    if kind == "Multiply":
        return np.where(np.any(stack == 0, axis=0), 0.0, np.prod(stack, 0))
    if kind in ("Add", "Subtract", "Average", "Maximum", "Minimum"):
        combine = {
            "Add": lambda s: np.sum(s, 0),
            "Subtract": lambda s: s[0] - s[1],
            "Average": lambda s: np.mean(s, 0),
            "Maximum": lambda s: np.max(s, 0),
            "Minimum": lambda s: np.min(s, 0),
        }[kind]
        return combine(stack)
    # Inputs joined along positions (or an unknown join): equal values.
    same = np.all(stack == stack[0], axis=0)
    return np.where(same, stack[0], NAN)


def _op(node, ins, n):
    """A keras op in the graph: only zeros are followed through it."""
    wide = [values == 0 for values in _wide(ins, n)]
    kind = node.kind
    if kind == "Multiply":
        zero = np.any(wide, axis=0)
    elif kind in ("Divide", "TrueDivide"):
        zero = wide[0]
    elif kind in ("Add", "Subtract", "Maximum", "Minimum"):
        zero = np.all(wide, axis=0) & (not any(s != 0 for s in node.scalars))
    elif kind in ZERO_PRESERVING_OPS:
        zero = wide[0]
    else:
        zero = np.zeros(n, bool)
    return np.where(zero, 0.0, NAN)


def constants(analysis):
    """For every tensor key, the constant value of each channel, or NaN."""
    values = {}
    # Layers whose channel mapping is unknown or mixing: nothing is known.
    opaque = {node.name for node, _, _ in analysis.deferred}
    for node in analysis.nodes:
        n = len(analysis.elems[node.key])
        ins = [values[key] for key, _ in node.inputs if key in values]
        role = node.role
        if not node.inputs or node.name in opaque or not ins:
            out = np.full(n, NAN)
        elif node.is_op:
            out = _op(node, ins, n)
        elif role == "producer" and not _pinned(analysis, node):
            out = _producer(node, n)
        elif role == "depthwise":
            out = _depthwise(node, ins[0], n)
        elif role == "norm":
            out = _norm(node, ins[0], n)
        elif role == "flatten":
            out = np.tile(ins[0], n // max(len(ins[0]), 1))
        elif role == "rescaling":
            cfg = node.config
            scale, offset = cfg.get("scale", 1.0), cfg.get("offset", 0.0)
            out = ins[0] * float(scale) + float(offset)
        elif role == "concatenate" and n == sum(len(v) for v in ins):
            out = np.concatenate(ins)
        elif role in ("merge", "concatenate"):
            out = _merge(node.kind, ins, n)
        elif role in ("pass", "activation"):
            out = _pass(node, ins[0])
        elif role == "reshape":
            out = ins[0]
        else:
            out = np.full(n, NAN)
        values[node.key] = np.asarray(out, "float64")
    return values


def _pinned(analysis, node):
    """Whether no channel of `node` may be removed (its value is moot)."""
    return all(
        analysis.pinned[analysis.find(int(e))] for e in analysis.elems[node.key]
    )


def _readers(analysis):
    """(node, input key) for every Conv/Dense input."""
    for node in analysis.nodes:
        if node.role == "producer" and not node.is_op:
            for key, _ in node.inputs:
                yield node, key


def folds(node):
    """Whether `node` can take a non-zero constant input into its bias."""
    return node.kind in FOLDING and unpadded(node)


def live_roots(analysis, values):
    """Roots of the classes that `shrink` must keep.

    A class is kept when some Conv/Dense reads it with a value that varies
    (NaN), or with a non-zero constant it cannot fold into its bias.
    """
    live = set()
    for node, key in _readers(analysis):
        elems, const = analysis.elems[key], values[key]
        keep = np.isnan(const)
        if not folds(node):
            keep |= const != 0
        for e in elems[keep]:
            live.add(analysis.find(int(e)))
    return live


def fold(analysis, node, remove, values):
    """What the removed constant inputs add to `node`'s outputs, or None.

    `remove` is the set of class roots removed. For a Dense, the sum over
    removed input channels c of `value_c * kernel[c, :]`; for an unpadded
    Conv, the same with the kernel summed over its positions.
    """
    if node.is_op or node.role != "producer" or not folds(node):
        return None
    key = node.inputs[0][0]
    elems, const = analysis.elems[key], values[key]
    gone = np.array([analysis.find(int(e)) in remove for e in elems], bool)
    gone &= np.isfinite(const) & (const != 0)
    if not gone.any():
        return None
    kernel = np.asarray(node.layer.kernel, "float64")
    kernel = kernel.reshape(-1, *kernel.shape[-2:]).sum(axis=0)
    return const[gone] @ kernel[gone]
