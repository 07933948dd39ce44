"""Probe: which QAT models the converter refuses with "'tfl.reshape' op
quantization parameters violate the same scale constraint", and whether
tracing Keras's rank-3 matmul as one broadcasting `tf.matmul` (the
export's `_export_rewrites.batched_matmul`) avoids it.

Each variant: digits at 8x8 (or a rank-3 input / tokens where named),
one QAT epoch with `QuantizationAwareTraining()`, then `export_tflite`
from the learned ranges; printed: exported (int8_only) or the refusal's
first words. `--tensordot` switches the rewrite off (Keras's own trace).

Measured (TF 2.21, Keras 3.15.1, 2026-12-02), with `--tensordot`:
refused: `Reshape((8, 8))` -> `Dense(8)` -> `RMSNormalization()`, the
same with `Multiply()([d, d])`, with `Dense(activation="relu")`, and
`Reshape` -> `Dense(relu)` -> `Dense` -> `RMSNormalization`. Exported
(int8_only): the Dense on a rank-3 model input (no Reshape before it),
after Embedding, or followed by LayerNormalization, Add, sigmoid, swish,
MultiHeadAttention or another Dense; `EinsumDense` or `Conv1D(1)` in
the Dense's place; calibrated PTQ of the refused models. So: a Reshape
that lets the converter fold the batch-1 dimension away, a Dense
(`tf.tensordot`: reshape, MatMul, reshape back), then `x * x`.
Without `--tensordot` every variant exports int8_only.

Run: TF_CPP_MIN_LOG_LEVEL=3 python benchmarks/probes/dense_square_qat.py
"""

import argparse
import contextlib
import os
import tempfile

import keras

from keras_slim import _export_rewrites
from keras_slim import datasets
from keras_slim import export_tflite
from keras_slim.callbacks import QuantizationAwareTraining

L = keras.layers


def _square(x):
    return L.Multiply()([x, x])


VARIANTS = {
    "reshape_dense_rms": lambda s: L.RMSNormalization()(L.Dense(8)(s)),
    "reshape_dense_square": lambda s: _square(L.Dense(8)(s)),
    "reshape_dense_relu_rms": lambda s: L.RMSNormalization()(
        L.Dense(8, activation="relu")(s)
    ),
    "reshape_dense_dense_rms": lambda s: L.RMSNormalization()(
        L.Dense(8)(L.Dense(8, activation="relu")(s))
    ),
    "reshape_dense_layernorm": lambda s: L.LayerNormalization()(L.Dense(8)(s)),
    "reshape_dense_swish": lambda s: L.Activation("swish")(L.Dense(8)(s)),
    "reshape_einsum_rms": lambda s: L.RMSNormalization()(
        L.EinsumDense("abc,cd->abd", (8, 8), bias_axes="d")(s)
    ),
    "reshape_conv1d_rms": lambda s: L.RMSNormalization()(L.Conv1D(8, 1)(s)),
}


def _model(variant):
    inputs = keras.Input((8, 8, 1))
    x = VARIANTS[variant](L.Reshape((8, 8))(inputs))
    return keras.Model(inputs, L.Dense(10)(L.Flatten()(x)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tensordot", action="store_true")
    args = parser.parse_args()
    (x, y), _ = datasets.load_digits(image_size=8)
    if args.tensordot:
        _export_rewrites.batched_matmul = contextlib.nullcontext
    for variant in VARIANTS:
        keras.utils.set_random_seed(0)
        model = _model(variant)
        model.compile(
            "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        model.fit(
            x, y, epochs=1, verbose=0, callbacks=[QuantizationAwareTraining()]
        )
        path = os.path.join(tempfile.mkdtemp(), "m.tflite")
        try:
            report = export_tflite(model, path)
            result = f"exported, int8_only {report.int8_only}"
        except ValueError as e:
            text = str(e)
            at = text.find("'tfl.")
            result = "refused: " + (
                text[at : at + 90] if at >= 0 else text[:90]
            )
        print(f"{variant:26s} {result}", flush=True)


if __name__ == "__main__":
    main()
