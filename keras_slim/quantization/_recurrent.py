"""`LSTM`, `GRU` and `SimpleRNN` as their int8 file computes them.

Post-training export unrolls a recurrent layer (`unroll=True`, one matmul
per gate: `keras_slim._export_rewrites.unrolled_recurrence`), so its file
runs every time step as int8 FULLY_CONNECTED, ADD, MUL, SUB, LOGISTIC and
TANH ops, the weights shared by every step. Here the layer is computed in
that form, one step after another in Python, with Keras's own cell
variables and equations (`implementation=1`): each gate's input and
recurrent matmul, their sum, the products and the new state get a range
of their own (`steps`), one range per name shared by every time step (the
file quantizes every step's tensor alike); LOGISTIC and TANH outputs sit
on their fixed int8 grids; each gate's kernel slice is fake-quantized per
output unit, as the converter stores it (`_kernel`). For an LSTM:

    x_g = FULLY_CONNECTED(x_t, kernel_g, bias_g)      g in i, f, c, o
    h_g = FULLY_CONNECTED(h, recurrent_kernel_g)
    z_g = ADD(x_g, h_g)
    i, f, o = LOGISTIC(z_i), LOGISTIC(z_f), LOGISTIC(z_o); g = TANH(z_c)
    c = ADD(MUL(f, c), MUL(i, g)); h = MUL(o, TANH(c))

The initial state is zero (a user's `initial_state` is refused), as the
unrolled file's first step sees it. A mask (`Embedding(mask_zero=True)`)
keeps the previous state where a step is masked (SELECT_V2 in the file),
as Keras's RNN does. A sequence's states keep the `h` range; a last
state returned alone is quantized once, by the layer's output range (the
converter gives that tensor one scale: quantized twice in the simulation,
it put 17% of a Bidirectional LSTM's logits a step or more off the
file's). Two measured pitfalls, handled: the converter re-quantizes a
gate's kernel slice per output unit whatever its fake quantization, and
a TANH output keeps its fixed range (a range after it is not the file's).
While training, `dropout` and `recurrent_dropout` drop the inputs and
the previous state of every step with Keras's own masks (the cell's, one
a sequence, one a gate where Keras draws one a gate); the file, which
runs inference, has none. Layers whose computation differs (`stateful`,
`return_state`, other activations, an unknown number of steps) are
refused before training (`unsupported_reason`). A `Bidirectional`
wrapper of them (merged by concatenation) runs both directions so, each
with ranges of its own, the concatenation with the layer's output range.
"""

import keras
from keras import ops

from keras_slim import _layers
from keras_slim.quantization import _quantizers

_GATES = {"LSTM": "ifco", "GRU": "zrh", "SimpleRNN": ""}
STEPS = {
    "LSTM": (
        *(f"{part}_{g}" for g in "ifco" for part in ("x", "h", "z")),
        "forget",
        "input",
        "carry",
        "h",
    ),
    "GRU": (
        *(f"{part}_{g}" for g in "zrh" for part in ("x", "h")),
        "z_z",
        "z_r",
        "reset",
        "z_h",
        "keep",
        "complement",
        "update",
        "h",
    ),
    "SimpleRNN": ("x", "h_in", "z", "h"),  # "z" or "h": see `steps`
}
_SUPPORTED = {
    "LSTM": (("tanh",), ("sigmoid",)),
    "GRU": (("tanh",), ("sigmoid",)),
    "SimpleRNN": (("tanh", "relu"), None),
}


_INITIAL_STATE = (
    "is called with an `initial_state`, which quantization-aware training "
    "does not model (its int8 file starts from zeros)"
)


def kind(layer):
    """`"LSTM"`, `"GRU"` or `"SimpleRNN"` for Keras's own classes and
    keras_slim's twins of them, else `None` (a subclass may compute
    something else)."""
    own = getattr(type(layer), "recurrent_kind", None)
    if own is not None:
        return own
    if type(layer) is keras.layers.Bidirectional:
        return "Bidirectional"
    for name in _GATES:
        if type(layer) is getattr(keras.layers, name):
            return name
    return None


def steps(layer):
    """The names of the ranges of `layer`'s inner tensors."""
    if kind(layer) == "Bidirectional":
        return tuple(
            f"{direction}_{name}"
            for direction, sub in (
                ("forward", layer.forward_layer),
                ("backward", layer.backward_layer),
            )
            for name in steps(sub)
        )
    name = kind(layer)
    if name == "SimpleRNN":
        # TANH's output has its fixed range (the layer's output); a ReLU
        # fuses into the ADD, whose output is the new state.
        tanh = _activation_name(layer.cell.activation) == "tanh"
        return ("x", "h_in", "z") if tanh else ("x", "h_in", "h")
    return STEPS[name]


def _activation_name(fn):
    from keras_slim.quantization import _rules

    return _rules.activation_name(fn)


def unsupported_reason(layer):
    """Why `layer`'s computation is not modelled here, or `None`."""
    name = kind(layer)
    if name is None:
        return "is a recurrent layer keras_slim does not model"
    if any(_called_with_state(node) for node in layer._inbound_nodes):
        return _INITIAL_STATE
    if name == "Bidirectional":
        return _bidirectional_reason(layer)
    cell = layer.cell
    if layer.stateful:
        return (
            "is stateful (`stateful=True`): its state outlives a batch, "
            "which the int8 file cannot keep"
        )
    if layer.return_state:
        return "returns its states (`return_state=True`), not modelled"
    if name == "GRU" and not cell.reset_after:
        return "uses `reset_after=False`, not modelled"
    activations, recurrent = _SUPPORTED[name]
    if _activation_name(cell.activation) not in activations:
        return (
            f"has activation {_activation_name(cell.activation)!r}; "
            f"keras_slim models {list(activations)}"
        )
    if recurrent is not None and (
        _activation_name(cell.recurrent_activation) not in recurrent
    ):
        return (
            "has recurrent_activation "
            f"{_activation_name(cell.recurrent_activation)!r}; keras_slim "
            f"models {list(recurrent)}"
        )
    shape = getattr(layer, "_build_shapes_dict", None) or {}
    shape = next(iter(shape.values()), None)
    if shape is not None and (len(shape) != 3 or shape[1] is None):
        return (
            f"takes inputs of shape {tuple(shape)}: its int8 file unrolls "
            "a fixed number of time steps, so the input needs one "
            "(e.g. keras.Input((steps, features)))"
        )
    return None


def _called_with_state(node):
    """Whether a graph node calls its layer with an initial state (a
    subclassed model's calls are seen only while they run: `bind`)."""
    arguments = getattr(node, "arguments", None)
    args = getattr(arguments, "args", ())
    kwargs = getattr(arguments, "kwargs", {})
    return len(args) > 1 or kwargs.get("initial_state") is not None


def _bidirectional_reason(layer):
    if layer.merge_mode != "concat":
        return (
            f"merges its directions with merge_mode={layer.merge_mode!r}; "
            "keras_slim models 'concat'"
        )
    if layer.return_state:
        return "returns its states (`return_state=True`), not modelled"
    for sub in (layer.forward_layer, layer.backward_layer):
        if kind(sub) in (None, "Bidirectional"):
            return (
                f"wraps a `{type(sub).__name__}`; keras_slim models LSTM, "
                "GRU and SimpleRNN"
            )
        why = unsupported_reason(sub)
        if why is not None:
            return f"wraps a `{type(sub).__name__}` that {why}"
    return None


def bind(layer, args, kwargs):
    """`(sequences, {"mask": mask})` of a call of `layer`; refuses an
    `initial_state` (the int8 file starts from zeros)."""
    sequences = args[0] if args else kwargs.get("sequences")
    rest = list(args[1:])
    initial_state = kwargs.get("initial_state", rest[0] if rest else None)
    if initial_state is not None:
        raise ValueError(
            f"Layer {layer.name!r} of type `{type(layer).__name__}` "
            f"{_INITIAL_STATE}."
        )
    mask = kwargs.get("mask", rest[1] if len(rest) > 1 else None)
    if mask is None:
        mask = _layers.get_keras_mask(sequences)
    return sequences, {"mask": mask}


def _kernel(kernel, start, stop):
    # Per output unit: the slice reaches the converter as a float
    # constant (its fake quantization folded in), which it quantizes per
    # channel; a per-channel grid is one it keeps exactly. (A per-tensor
    # one it re-rounded onto per-channel scales: 35% of the logits of a
    # 2-step LSTM off by up to 5 steps, agreement 98.9%.)
    return _quantizers.quantize_kernel(kernel[:, start:stop], "conv")


def _fc(x, kernel, bias=None):
    y = ops.matmul(x, ops.cast(kernel, x.dtype))
    return y if bias is None else y + ops.cast(bias, y.dtype)


def _sigmoid(t):
    return _quantizers.fake_quant_fixed(
        ops.sigmoid(t), _quantizers.FIXED_RANGES["sigmoid"]
    )


def _tanh(t):
    return _quantizers.fake_quant_fixed(
        ops.tanh(t), _quantizers.FIXED_RANGES["tanh"]
    )


class _Weights:
    """A cell's gate weights, fake-quantized once a forward pass."""

    def __init__(self, cell, gates):
        units = cell.units
        n = max(len(gates), 1)
        self.kernel = [
            _kernel(cell.kernel, j * units, (j + 1) * units) for j in range(n)
        ]
        self.recurrent = [
            _kernel(cell.recurrent_kernel, j * units, (j + 1) * units)
            for j in range(n)
        ]
        self.bias = [None] * n
        self.recurrent_bias = [None] * n
        if cell.use_bias:
            bias = cell.bias
            if len(bias.shape) == 2:  # GRU with reset_after: two rows
                bias, recurrent_bias = bias[0], bias[1]
                self.recurrent_bias = [
                    recurrent_bias[j * units : (j + 1) * units]
                    for j in range(n)
                ]
            self.bias = [bias[j * units : (j + 1) * units] for j in range(n)]


def _dropout_masks(cell, x, zeros, gates, training):
    """`(inputs, recurrent)`: a list of `gates` dropout masks each (or
    `None`s), drawn as Keras's RNN draws them for a sequence (the cell's
    own `get_dropout_mask`, `get_recurrent_dropout_mask`, from its seed
    generator: one mask, or one a gate where the cell draws several)."""
    masks = [[None] * gates, [None] * gates]
    if not training:
        return masks
    cell.reset_dropout_mask()  # a mask a call left cached is stale
    cell.reset_recurrent_dropout_mask()
    for i, (rate, draw, shape_of) in enumerate(
        (
            (cell.dropout, cell.get_dropout_mask, x[:, 0, :]),
            (cell.recurrent_dropout, cell.get_recurrent_dropout_mask, zeros),
        )
    ):
        # LSTM and GRU cells drop below a rate of 1 only; SimpleRNN's
        # applies whatever mask it draws (all zeros at 1).
        simple = isinstance(cell, keras.layers.SimpleRNNCell)
        if 0.0 < rate < 1.0 or (rate and simple):
            drawn = draw(shape_of)
            single = not isinstance(drawn, (list, tuple))
            masks[i] = [drawn] * gates if single else list(drawn)
    cell.reset_dropout_mask()
    cell.reset_recurrent_dropout_mask()
    return masks


def _dropped(t, mask):
    return t if mask is None else t * mask


def _lstm_step(w, x, state, step, drop):
    h, c = state
    z = []
    for j, g in enumerate("ifco"):
        x_j, h_j = _dropped(x, drop[0][j]), _dropped(h, drop[1][j])
        x_g = step(f"x_{g}", _fc(x_j, w.kernel[j], w.bias[j]))
        h_g = step(f"h_{g}", _fc(h_j, w.recurrent[j]))
        z.append(step(f"z_{g}", x_g + h_g))
    i, f, o = _sigmoid(z[0]), _sigmoid(z[1]), _sigmoid(z[3])
    forget = step("forget", f * c)
    new = step("input", i * _tanh(z[2]))
    c = step("carry", forget + new)
    h = step("h", o * _tanh(c))
    return h, (h, c)


def _gru_step(w, x, state, step, drop):
    (h,) = state
    x_g, h_g = [], []
    for j, g in enumerate("zrh"):
        x_j, h_j = _dropped(x, drop[0][j]), _dropped(h, drop[1][j])
        x_g.append(step(f"x_{g}", _fc(x_j, w.kernel[j], w.bias[j])))
        h_g.append(
            step(f"h_{g}", _fc(h_j, w.recurrent[j], w.recurrent_bias[j]))
        )
    z = _sigmoid(step("z_z", x_g[0] + h_g[0]))
    r = _sigmoid(step("z_r", x_g[1] + h_g[1]))
    reset = step("reset", r * h_g[2])
    hh = _tanh(step("z_h", x_g[2] + reset))
    keep = step("keep", z * h)
    complement = step("complement", 1.0 - z)
    update = step("update", complement * hh)
    h = step("h", keep + update)
    return h, (h,)


def _simple_step(w, x, state, step, drop, activation):
    (h,) = state
    x_in = step("x", _fc(_dropped(x, drop[0][0]), w.kernel[0], w.bias[0]))
    h_in = step("h_in", _fc(_dropped(h, drop[1][0]), w.recurrent[0]))
    z = x_in + h_in
    # A ReLU fuses into the ADD, whose output is the new state; TANH's
    # output has its fixed range.
    relu = activation != "tanh"
    h = step("h", ops.relu(z)) if relu else _tanh(step("z", z))
    return h, (h,)


def final_output_pending(layer):
    """Whether the layer's output is its last state alone, left to be
    quantized by its consumer with the layer's output range (or to take
    a concatenation's). Not so for a sequence (every step's state is
    also the next step's input, in the `h` range) nor for a tanh
    SimpleRNN (TANH's fixed range)."""
    if kind(layer) == "Bidirectional" or layer.return_sequences:
        return False
    return "h" in steps(layer)


def forward(layer, inputs, step, mask=None, training=False):
    """The output of recurrent `layer` on `inputs` (batch, steps,
    features), with `step(name, t)` fake-quantizing each inner tensor of
    `steps(layer)` (and, with `training`, the layer's dropout); the output
    is left unquantized when
    `final_output_pending` (and no mask: a masked last state is a
    selection between two `h` values). A `Bidirectional` layer's
    concatenation has the layer's output range."""
    name = kind(layer)
    if name == "Bidirectional":
        y, y_rev = (
            forward(
                sub,
                inputs,
                lambda n, t, d=direction: step(f"{d}_{n}", t),
                mask,
                training,
            )
            for direction, sub in (
                ("forward", layer.forward_layer),
                ("backward", layer.backward_layer),
            )
        )
        if layer.return_sequences:
            y_rev = ops.flip(y_rev, axis=1)
        return ops.concatenate(
            [
                ops.cast(y, layer.compute_dtype),
                ops.cast(y_rev, layer.compute_dtype),
            ],
            axis=-1,
        )
    cell = layer.cell
    x = ops.cast(inputs, layer.compute_dtype)
    w = _Weights(cell, _GATES[name])
    activation = _activation_name(cell.activation)
    batch = ops.shape(x)[0]
    zeros = ops.zeros((batch, cell.units), dtype=x.dtype)
    state = (zeros, zeros) if name == "LSTM" else (zeros,)
    drop = _dropout_masks(cell, x, zeros, max(len(_GATES[name]), 1), training)
    times = range(x.shape[1])
    if layer.go_backwards:
        times = reversed(times)
    outputs = []
    times = list(times)
    for t in times:
        x_t = x[:, t, :]
        step_t = step
        if t == times[-1] and final_output_pending(layer) and mask is None:
            # The last state is the output only: its range is the
            # layer's output range (or a concatenation's), not `h`'s.
            def step_t(n, v):
                return v if n == "h" else step(n, v)

        if name == "LSTM":
            h, new_state = _lstm_step(w, x_t, state, step_t, drop)
        elif name == "GRU":
            h, new_state = _gru_step(w, x_t, state, step_t, drop)
        else:
            h, new_state = _simple_step(w, x_t, state, step_t, drop, activation)
        if mask is not None:
            keep = ops.expand_dims(ops.cast(mask[:, t], "bool"), -1)
            new_state = tuple(
                ops.where(keep, new, old) for new, old in zip(new_state, state)
            )
            # A masked step outputs the carried output, or zeros.
            h = new_state[0]
            if layer.zero_output_for_mask:
                h = ops.where(keep, h, ops.zeros_like(h))
        state = new_state
        outputs.append(h)
    if layer.return_sequences:
        return ops.stack(outputs, axis=1)
    return state[0]


def refuse_per_tensor_export(model):
    """Quantization-aware recurrent layers learned their gate kernels per
    output unit, as the converter stores them by default."""
    from keras_slim import _export_rewrites

    names = [layer.name for layer in _export_rewrites.recurrent_layers(model)]
    if names:
        raise ValueError(
            f"The recurrent layers {names} were trained quantization-aware "
            "with their gate kernels quantized per output unit, as the "
            "file stores them by default; `per_channel_dense=False` would "
            "store them per tensor, which their ranges were not trained "
            "for. Received: per_channel_dense=False"
        )
