"""Probe: which part of a LayerNormalization leaves float ops in a
post-training int8 file, and which formulation the converter quantizes.

Dense -> LayerNormalization -> Dense on random data, converted with
`export_tflite(..., quantization="int8", allow_float_fallback=True)` so
the file is kept and its ops can be read. Each variant replaces the
LayerNormalization by a layer computing the same function another way
(the export's own rewrite is switched off for the run). The "offset"
model adds 20 to the LayerNormalization's input, where `x * inv` and
`mean * inv` are large and cancel.

Measured (TF 2.21, Keras 3.15.1; agreement on 512 held-out samples):
- "keras": NEG stays float (DEQUANTIZE, NEG, QUANTIZE); so does a bare
  `ops.negative`. Every form without NEG is int8 end to end.
- no offset: keras (mixed file) 99.6%, mean |error| 0.034; centered
  99.4%, 0.041; sub 99.4%, 0.034; times_minus_one 99.6%, 0.034.
- offset 20: keras (mixed file) 94.5%, 0.25; centered 98.4%, 0.11; sub
  91.0%, 0.39; times_minus_one 94.5%, 0.25.
`_export_rewrites` uses the centered form: slightly noisier on centred
inputs, much better where the input has an offset.

Run: TF_CPP_MIN_LOG_LEVEL=3 python benchmarks/probes/layernorm_ptq.py
"""

import contextlib
import os
import tempfile

import keras
import numpy as np
from keras import ops

import keras_slim
from keras_slim import _export_rewrites
from keras_slim import litert

FORMS = {
    # Keras 3.15 `ops.layer_normalization`: x * inv + (-mean * inv + beta)
    "keras": None,
    # x * inv + (beta - mean * inv)
    "sub": lambda x, m, inv, b: x * inv + (b - m * inv),
    # (x - mean) * inv + beta
    "centered": lambda x, m, inv, b: (x - m) * inv + b,
    # -mean written as mean * -1
    "times_minus_one": lambda x, m, inv, b: x * inv + (m * -1.0 * inv + b),
    # only ops.negative on its own
    "negative": lambda x, m, inv, b: ops.negative(x),
}


class Form(keras.layers.Layer):
    def __init__(self, norm, form, **kwargs):
        super().__init__(**kwargs)
        self.norm, self.form = norm, form

    def call(self, x):
        mean, var = ops.moments(x, axes=[-1], keepdims=True)
        inv = ops.rsqrt(var + self.norm.epsilon) * self.norm.gamma
        return FORMS[self.form](x, mean, inv, self.norm.beta)


def data(n, seed):
    x = np.random.default_rng(seed).normal(size=(n, 16)).astype("float32")
    w = np.random.default_rng(99).normal(size=(16, 4))
    return x, (x @ w).argmax(-1)


def build(offset):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16,))
    h = keras.layers.Dense(32, activation="relu", name="dense_in")(inputs)
    norm = keras.layers.LayerNormalization(name="norm_1")
    y = norm(keras.layers.Rescaling(1.0, offset=offset)(h))
    outputs = keras.layers.Dense(4, name="dense_out")(y)
    model = keras.Model(inputs, outputs)
    x, labels = data(1024, 0)
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, labels, epochs=5, batch_size=64, verbose=0)
    return model, norm, x


def variant(model, norm, form):
    if FORMS[form] is None:
        return model
    inputs = keras.Input((16,))
    h = model.get_layer("dense_in")(inputs)
    h = model.layers[2](h)  # the Rescaling
    y = Form(norm, form, name="norm_1")(h)
    return keras.Model(inputs, model.get_layer("dense_out")(y))


def main():
    # Keras's own LayerNormalization as it is, not the export's rewrite.
    _export_rewrites.int8_normalization = contextlib.nullcontext
    x_test = data(512, 1)[0]
    for offset in (0.0, 20.0):
        model, norm, x = build(offset)
        reference = model.predict(x, verbose=0)
        for form in FORMS:
            m = variant(model, norm, form)
            gap = float(np.abs(m.predict(x, verbose=0) - reference).max())
            path = os.path.join(tempfile.mkdtemp(), f"{form}.tflite")
            report = keras_slim.export_tflite(
                m,
                path,
                quantization="int8",
                representative_data=x[:256],
                allow_float_fallback=True,
                min_agreement=0,
            )
            info = report.info
            found = litert.compare(m, path, x_test)
            print(
                f"offset {offset:g} {form:16s} float gap {gap:.2e} "
                f"int8_only={info.int8_only} float_ops={info.float_ops} "
                f"agreement={found.agreement:.4f} "
                f"mean|err|={found.mean_abs_error:.4f} bytes={info.bytes} "
                f"ops={dict(sorted(info.ops.items()))}"
            )


if __name__ == "__main__":
    main()
