"""Probe (issue 20): can a quantization-aware LayerNormalization become
all-int8 ops in a TFLite file?

    python -m benchmarks.probes.layernorm_qat

A Dense-LayerNormalization-pool-Dense model is trained (2 epochs, float)
on synthetic sequences with an offset of 3 (a large mean, as after a
Dense). Its forward pass is then written with TensorFlow ops, the
LayerNormalization decomposed as MEAN, SUB, MUL, MEAN, ADD, RSQRT, MUL,
MUL (gamma), ADD (beta), with `fake_quant_with_min_max_vars` after every
op at ranges measured on the training data (no QAT training), and
converted from those ranges alone (no representative dataset), as
`export_tflite` converts a QAT model. Prints the file's ops, whether it is
int8 end to end, and the top-1 agreement with Keras on 200 samples.

Measured (TensorFlow 2.21, 2026-12-02): int8_only True, ops
FULLY_CONNECTED x2, MEAN x3 (two in the norm, the pool), SUB x1, MUL x3
(square, normalize, gamma), ADD x2 (epsilon, beta), RSQRT x1; agreement
96.5% (ranges from one float pass, no QAT: the point is the int8 path).
`keras_slim.quantization._layernorm` is this decomposition.
"""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from keras import ops  # noqa: E402

from keras_slim import inspect_tflite  # noqa: E402


def _range(t):
    t = np.asarray(t)
    return float(min(t.min(), 0.0)), float(max(t.max(), 0.0))


def _fq(t, r):
    return tf.quantization.fake_quant_with_min_max_vars(t, r[0], r[1])


def _weight(w):
    m = float(np.abs(w.numpy()).max())
    w = tf.constant(w.numpy())
    return tf.quantization.fake_quant_with_min_max_vars(
        w, -m, m, narrow_range=True
    )


def main():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8, 16)).astype("float32") + 3.0
    y = (x[:, :, 0].mean(1) > 3).astype("int32")
    inputs = keras.Input((8, 16))
    hidden = keras.layers.Dense(32)(inputs)
    norm = keras.layers.LayerNormalization()
    pooled = keras.layers.GlobalAveragePooling1D()(norm(hidden))
    model = keras.Model(inputs, keras.layers.Dense(2)(pooled))
    model.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(x, y, epochs=2, verbose=0)
    dense1, dense2 = model.layers[1], model.layers[-1]
    h = keras.Model(inputs, hidden)(x)

    def steps(h):
        mean = ops.mean(h, -1, keepdims=True)
        d = h - mean
        var = ops.mean(d * d, -1, keepdims=True)
        inv = ops.rsqrt(var + norm.epsilon)
        n = d * inv
        s = n * norm.gamma
        return [
            mean,
            d,
            d * d,
            var,
            var + norm.epsilon,
            inv,
            n,
            s,
            s + norm.beta,
        ]

    r = [_range(t) for t in steps(h)]
    r_in, r_h = _range(x), _range(h)
    logits = np.asarray(model(x))
    r_pool = _range(keras.Model(inputs, pooled)(x))
    r_out = _range(logits)
    w1, w2 = _weight(dense1.kernel), _weight(dense2.kernel)
    gamma, beta, eps = norm.gamma, norm.beta, norm.epsilon

    def forward(t):
        t = _fq(t, r_in)
        h = _fq(tf.matmul(t, w1) + dense1.bias, r_h)
        mean = _fq(tf.reduce_mean(h, -1, keepdims=True), r[0])
        d = _fq(h - mean, r[1])
        var = _fq(tf.reduce_mean(_fq(d * d, r[2]), -1, keepdims=True), r[3])
        inv = _fq(tf.math.rsqrt(_fq(var + eps, r[4])), r[5])
        o = _fq(_fq(_fq(d * inv, r[6]) * gamma, r[7]) + beta, r[8])
        p = _fq(tf.reduce_mean(o, 1), r_pool)
        return _fq(tf.matmul(p, w2) + dense2.bias, r_out)

    class Probe(keras.layers.Layer):
        def call(self, t):
            return forward(t)

    probe = keras.Sequential([keras.Input((8, 16), batch_size=1), Probe()])
    converter = tf.lite.TFLiteConverter.from_keras_model(probe)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "layernorm_qat.tflite")
        with open(path, "wb") as f:
            f.write(converter.convert())
        info = inspect_tflite(path)
        print("int8_only", info.int8_only, "ops", info.ops)
        interpreter = Interpreter(model_path=path)
        interpreter.allocate_tensors()
        i = interpreter.get_input_details()[0]
        o = interpreter.get_output_details()[0]
        scale, zero = i["quantization"]
        agree = 0
        for k in range(200):
            q = np.round(x[k : k + 1] / scale + zero)
            interpreter.set_tensor(
                i["index"], np.clip(q, -128, 127).astype(np.int8)
            )
            interpreter.invoke()
            out = interpreter.get_tensor(o["index"])
            agree += int(np.argmax(out) == np.argmax(logits[k]))
        print("agreement", agree / 200)


if __name__ == "__main__":
    main()
