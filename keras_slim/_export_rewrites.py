"""Equivalent formulations of Keras normalization layers that the TFLite
converter can quantize to int8, in force only while `export_tflite`
converts a model.

Measured with TensorFlow 2.21 and Keras 3.15
(`benchmarks/probes/layernorm_ptq.py`):
- `keras.layers.LayerNormalization` computes `x * inv + (-mean * inv +
  beta)` (`ops.layer_normalization`). The `-mean` becomes a TFLite `NEG`
  op. The converter's `tfl.neg` (`tfl_ops.td`, TensorFlow and LiteRT
  alike) takes float32, int32 and int64 tensors only and lacks the
  `QuantizableResult` trait, so its quantization passes cannot give it an
  int8 type: calibrated int8, from the converter and the LiteRT Quantizer
  alike, keeps it float between a DEQUANTIZE and a QUANTIZE. (LiteRT's
  newest runtime NEG kernel has an int8 case, but it negates raw values,
  ignoring scale and zero point, and the converter never emits it.)
  `(x - mean) * inv + beta` is the same function written with SUB, MUL
  and ADD, all quantized. It never forms `x * inv`, whose int8 range
  dwarfs the normalized result when `x` has a large mean: with an offset
  of 20 on the input of a Dense-LayerNormalization-Dense model it agreed
  98.4% with Keras, where Keras's arrangement (NEG kept float) agreed
  94.5% and the all-int8 `x * inv + (beta - mean * inv)` 91.0%. On
  centred inputs the three agreed 99.4-99.6%, the centred form with a
  slightly larger mean error (0.041 against 0.034 on the logits).
- `keras.layers.RMSNormalization` squares with `ops.square`, a TFLite
  `SQUARE` op; `tfl.square` is float-only and not quantizable either, so
  it stays float in the same way; `x * x` (MUL) does not.
- `keras.layers.GroupNormalization` computes `x * inv + (-mean * inv +
  beta)` on its input reshaped into groups, with NEG and SQUARE ops
  (measured: both kept float in a Conv2D-GroupNormalization model); the
  LayerNormalization form on each group, reshaped back, then `* gamma +
  beta` per channel, is all-int8.
- `keras.layers.UnitNormalization` (`ops.normalize`, order 2) squares
  with SQUARE too; `x * x` (then SUM, RSQRT, MINIMUM, MUL) is all-int8.
The forms match Keras to within float rounding (at most 5e-7 measured
on unit-scale outputs for the first two; the tests hold the others to
1e-5 and 1e-6).

One op-level rewrite rides along (`batched_matmul`): Keras's TensorFlow
backend multiplies a rank-3 (or higher) input by a Dense kernel with
`tf.tensordot`, which traces as reshape to 2D, MatMul, reshape back. When
the input's batch dimension is folded away (a fixed batch of 1 after a
`Reshape` layer, as in every sequence model built from an image or a
flat vector), the converter moves that last reshape past a following
`x * x` (the MUL of `RMSNormalization` or `Multiply()([d, d])`) and then
refuses a quantization-aware model: "'tfl.reshape' op quantization
parameters violate the same scale constraint" (measured, TensorFlow 2.21:
`Reshape((8, 8))`, `Dense(8)`, `RMSNormalization()` after one QAT epoch;
post-training calibration was not affected). `tf.matmul` of the same
operands (a broadcasting batch matmul) gives the same values and the same
`FULLY_CONNECTED` op (`keep_num_dims`), with no reshape to move.

One layer-level rewrite rides along too (`unrolled_recurrence`): Keras
3's LSTM, GRU and SimpleRNN trace as a WHILE loop of float ops, whose
int8 calibration segfaults inside TensorFlow's converter (2.21). Unrolled
over the signature's fixed number of steps (`unroll=True`, Keras's own
code path), they trace as FULLY_CONNECTED, ADD, MUL, LOGISTIC and TANH
ops, which the converter calibrates and quantizes (weights shared by
every step: 24 steps of LSTM(16) give a 180 KB file). LSTM and GRU cells
also compute each gate with its own matmul (`implementation=1`): with
the one-matmul form the converter keeps the gates' SPLIT float after the
first step of a masked or sequence-returning LSTM (measured: DEQUANTIZE,
SPLIT, QUANTIZE). Same function, float rounding apart.

The user's model, its layers and variables are not changed: the class's
`call` is swapped for the converter's trace and restored on exit, and
the Keras outputs the file is verified against are Keras's own.
"""

import contextlib

import keras
from keras import ops


def float32_or_wider(x):
    return ops.cast(x, keras.backend.result_type(x.dtype, "float32"))


def normalization_axes(layer, x):
    """`(axes, broadcast)` of a LayerNormalization on `x`: the sorted
    axes it normalizes over and a function that casts `gamma` or `beta`
    to `x`'s dtype and shape for broadcasting, as Keras's call does."""
    ndims = len(x.shape)
    axes = [layer.axis] if isinstance(layer.axis, int) else list(layer.axis)
    axes = sorted(a % ndims for a in axes)
    shape = [1] * ndims
    for a in axes:
        shape[a] = x.shape[a]

    def broadcast(v):
        v = ops.cast(v, x.dtype)
        if len(v.shape) != ndims and axes != [ndims - 1]:
            v = ops.reshape(v, shape)
        return v

    return axes, broadcast


def _layer_normalization(self, x):
    """`LayerNormalization.call` as `(x - mean) * inv + beta`."""
    x = float32_or_wider(x)
    axes, broadcast = normalization_axes(self, x)
    mean, variance = ops.moments(x, axes=axes, keepdims=True)
    inv = ops.rsqrt(variance + self.epsilon)
    if self.gamma is not None:
        inv = inv * broadcast(self.gamma)
    outputs = (x - mean) * inv
    if self.beta is not None:
        outputs = outputs + broadcast(self.beta)
    return ops.cast(outputs, self.compute_dtype)


def _rms_normalization(self, x):
    """`RMSNormalization.call` with `x * x` for `ops.square(x)`."""
    dtype = x.dtype
    x = float32_or_wider(x)
    mean_square = ops.mean(x * x, axis=self.axis, keepdims=True)
    outputs = x * ops.rsqrt(mean_square + self.epsilon)
    if self.scale is not None:
        outputs = outputs * ops.cast(self.scale, x.dtype)
    return ops.cast(outputs, dtype)


def group_view(layer, x):
    """`(grouped, axes, restore)` of a GroupNormalization on `x`, as
    Keras computes them: `x` reshaped with its channel axis split into
    `(groups, channels // groups)`, the axes each group's moments run
    over (all but batch and groups), and a function reshaping a tensor of
    `grouped`'s shape back to `x`'s."""
    ndims = len(x.shape)
    axis = layer.axis % ndims
    dynamic = ops.shape(x)
    shape = [d if d is not None else dynamic[i] for i, d in enumerate(x.shape)]
    shape[0] = -1
    shape[axis] = shape[axis] // layer.groups
    shape.insert(axis, layer.groups)
    axes = [a for a in range(1, ndims + 1) if a != axis]
    return ops.reshape(x, shape), axes, lambda t: ops.reshape(t, dynamic)


def _group_normalization(self, x):
    """`GroupNormalization.call` as `(x - mean) * inv`, then `* gamma +
    beta` per channel: the LayerNormalization form on each group."""
    grouped, axes, restore = group_view(self, x)
    grouped = float32_or_wider(grouped)
    mean = ops.mean(grouped, axis=axes, keepdims=True)
    centered = grouped - mean
    variance = ops.mean(centered * centered, axis=axes, keepdims=True)
    outputs = restore(centered * ops.rsqrt(variance + self.epsilon))
    _, broadcast = normalization_axes(self, outputs)
    if self.scale:
        outputs = outputs * broadcast(self.gamma)
    if self.center:
        outputs = outputs + broadcast(self.beta)
    return ops.cast(outputs, self.compute_dtype)


def _unit_normalization(self, x):
    """`UnitNormalization.call` (`ops.normalize`, order 2) with `x * x`
    for `ops.square(x)`."""
    dtype = x.dtype
    x = float32_or_wider(x)
    square_sum = ops.sum(x * x, axis=self.axis, keepdims=True)
    inv_norm = ops.minimum(ops.rsqrt(square_sum), 1.0 / 1e-12)
    return ops.cast(x * inv_norm, dtype)


def _applies_to_layer_normalization(layer):
    # Keras's deprecated `rms_scaling` branch has no NEG op.
    return not layer.rms_scaling


def _rewrites():
    """`(class, rewritten call, whether it applies to a layer)`."""
    found = [
        (
            keras.layers.LayerNormalization,
            _layer_normalization,
            _applies_to_layer_normalization,
        )
    ]
    rms = getattr(keras.layers, "RMSNormalization", None)  # Keras >= 3.9
    if rms is not None:
        found.append((rms, _rms_normalization, _always))
    found.append(
        (keras.layers.GroupNormalization, _group_normalization, _always)
    )
    found.append((keras.layers.UnitNormalization, _unit_normalization, _always))
    return found


def _always(layer):
    return True


def _int8_call(original, rewritten, applies):
    def call(self, inputs, *args, **kwargs):
        if args or kwargs or not applies(self):
            return original(self, inputs, *args, **kwargs)
        return rewritten(self, inputs)

    return call


def _broadcast_matmul(original):
    import tensorflow as tf

    def matmul(x1, x2):
        if isinstance(x1, tf.SparseTensor) or isinstance(x2, tf.SparseTensor):
            return original(x1, x2)
        # A Keras variable (the kernel) converts as its value.
        a = tf.convert_to_tensor(x1)
        b = tf.convert_to_tensor(x2)
        if (
            a.shape.rank is not None
            and a.shape.rank > 2
            and b.shape.rank == 2
            and a.dtype == b.dtype
            and a.dtype.is_floating
        ):
            return tf.matmul(a, b)
        return original(x1, x2)

    return matmul


@contextlib.contextmanager
def batched_matmul():
    """Within the block, Keras's TensorFlow `ops.matmul` of a rank > 2
    float tensor by a matrix traces as one broadcasting `tf.matmul`
    instead of `tf.tensordot` (see the module docstring). Process-wide
    while it lasts, like `int8_normalization`; a no-op where Keras's
    TensorFlow backend module is not where this Keras keeps it."""
    try:
        from keras.src.backend.tensorflow import numpy as backend_numpy
    except ImportError:  # pragma: no cover - a Keras that moved it
        yield
        return
    original = vars(backend_numpy).get("matmul")
    if original is None:  # pragma: no cover
        yield
        return
    backend_numpy.matmul = _broadcast_matmul(original)
    try:
        yield
    finally:
        backend_numpy.matmul = original


@contextlib.contextmanager
def int8_normalization():
    """Within the block, Keras's normalization layers compute their
    int8-friendly form (see the module docstring).

    Every class is swapped, not only those `model` visibly holds: a
    custom layer may own a LayerNormalization that no public listing of
    the model's layers shows. The swap is process-wide while it lasts
    (the conversion only): another thread running these layers meanwhile
    would compute the same function in the other form.
    """
    swapped = []
    try:
        for cls, rewritten, applies in _rewrites():
            original = vars(cls).get("call")
            if original is None:  # a Keras that moved `call` elsewhere
                continue
            cls.call = _int8_call(original, rewritten, applies)
            swapped.append((cls, original))
        yield
    finally:
        for cls, original in reversed(swapped):
            cls.call = original


def recurrent_layers(model):
    """Every `keras.layers.RNN` in `model`, nested ones, the two halves
    of a `Bidirectional` and those inside custom layers included."""
    flatten = getattr(model, "_flatten_layers", None)
    if flatten is not None:
        layers = flatten(include_self=False, recursive=True)
    else:  # pragma: no cover - a Keras without the tracker walk
        from keras_slim import _layers

        layers = [layer for _, layer in _layers.iter_layers(model)]
    return [layer for layer in layers if isinstance(layer, keras.layers.RNN)]


def _cells(rnn):
    cell = rnn.cell
    return list(getattr(cell, "cells", None) or [cell])


@contextlib.contextmanager
def _attributes(changes):
    """Within the block each `(obj, name, value)` of `changes` is set; the
    old values come back on exit, whatever happens."""
    saved = []
    try:
        for obj, name, value in changes:
            saved.append((obj, name, getattr(obj, name)))
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)


def unrolled_recurrence(model):
    """Within the block, `model`'s recurrent layers run unrolled, their
    LSTM and GRU cells one matmul per gate (see the module docstring)."""
    changes = []
    for rnn in recurrent_layers(model):
        changes.append((rnn, "unroll", True))
        for cell in _cells(rnn):
            if getattr(cell, "implementation", None) == 2:
                changes.append((cell, "implementation", 1))
    return _attributes(changes)


def inference_dropout(model):
    """Within the block, `model`'s recurrent cells have no dropout: Keras's
    RNN draws its dropout masks at inference too (from the cell's seed
    generator), which a file of any flavour would keep as variable ops
    (VAR_HANDLE, READ_VARIABLE, ASSIGN_VARIABLE) run at every invoke."""
    return _attributes(
        (cell, name, 0.0)
        for rnn in recurrent_layers(model)
        for cell in _cells(rnn)
        for name in ("dropout", "recurrent_dropout")
        if getattr(cell, name, 0.0)
    )
