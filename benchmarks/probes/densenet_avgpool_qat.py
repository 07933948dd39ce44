"""Probe: why quantization-aware training of DenseNet121 failed at export
with "'tfl.average_pool_2d' op quantization parameters violate the same
scale constraint" (keras_slim issue 20), and what the fix leaves.

Cause. The int8 AVERAGE_POOL_2D kernel needs its output on its input's
scale (the converter's same-scale constraint). The catalogue gives
`AveragePooling2D` the quantization rule "output": its input was
quantized with the range of the op before it (in DenseNet's transition
the 1x1 `Conv2D` without activation, whose pending output the pool
quantized with the conv's range) and its output with a range of its own,
learned separately. With a plain consumer the converter mends the
mismatch with a requantizing QUANTIZE after the pool ("pool_only": the
file rounds twice where Keras rounds once); when a `Concatenate` reads
the pool's output (DenseNet's next dense block), the concatenation's
one-scale propagation reaches the pool and the converter refuses the
model ("pool_then_concat", DenseNet121's `pool2_pool`). MaxPooling
("passthrough") and `GlobalAveragePooling2D` (MEAN, which rescales: its
output has a scale of its own in the file) are not affected.

Fix (`_rules.layer_rule`): `AveragePooling1D`/`2D` take the rule
"passthrough", as MaxPooling: the output keeps the input's range and
gets none of its own. Rounding the output to the input's range in Keras
was tried and left out: a 2x2 average of values on the grid is an exact
rounding tie once in four, which float noise settles differently on
each backend; the JAX export's cross-backend check then failed (30% of
logits one step apart).

What is left (measured below): the converter runs CONCATENATION on one
scale. When the pooled tensor (range P) is also read by the next
BatchNormalization, it requantizes the tensor itself to the scale it
picked for the concatenation, and the BatchNormalization reads the
requantized values where Keras reads the pool's own: 1-LSB errors on
~27% of that tensor, the main source of the 1-2% disagreement of the
DenseNet-style models. Every DenseNet concatenation has that shape.

Variants (tiny Functional models on the 8x8 digits, 3 epochs QAT, Adam
1e-2, batch 64): "pool_only" (conv 1x1 -> pool -> Flatten),
"pool_then_concat" (pool -> DenseNet conv block with Concatenate),
"dense_block_transition_block". `--before` restores the old rule
("output") for comparison; `--densenet` also runs
keras.applications.DenseNet121 (32x32x3 digits, weights=None) trained
plain, then with `QuantizationAwareTraining`, then exported.

Measured (TF 2.21, Keras 3.15.1, 2 shared CPU cores), both routes
(callback and quantize_model) alike:
- before: pool_only exports (100.0%, QUANTIZE after the pool);
  pool_then_concat and dense_block_transition_block are refused with the
  same-scale error.
- after: all export int8_only, AVERAGE_POOL_2D with equal input and
  output scales: pool_only 99.6% agreement (Keras accuracy 0.88),
  pool_then_concat 98.4% (0.86), dense_block_transition_block 96.0%
  (0.37, under-trained).
- DenseNet121, callback route (`--densenet --skip-tiny --route
  callback`: 5 plain epochs, 473 s; 2 QAT epochs, 444 s): before, refused
  at `pool2_pool` (the issue's report); after, int8_only, agreement 97.8%
  on the 450 test digits, mean |logit error| 0.125, its three transition
  pools with equal input and output scales. The run's Keras accuracy was
  0.12 (near chance: 5 epochs of this recipe do not train DenseNet121 on
  the digits), so the agreement says little beyond "exports".
  quantize_model route (`--route quantize_model --qat-epochs 1`: 1 QAT
  epoch, 87 s): int8_only, agreement 100.0% (Keras accuracy 0.096: one
  class everywhere), mean |logit error| 0.096.

Run: TF_CPP_MIN_LOG_LEVEL=3 python benchmarks/probes/densenet_avgpool_qat.py
    [--before] [--densenet [--plain-epochs 5 --qat-epochs 2] [--skip-tiny]]
    [--route callback|quantize_model]
"""

import argparse
import os
import tempfile
import time

import keras
import numpy as np

import keras_slim
from keras_slim import litert
from keras_slim.quantization import QuantizationAwareTraining
from keras_slim.quantization import _rules
from keras_slim.quantization import quantize_model

L = keras.layers


def conv_block(x):
    """DenseNet's conv block: x ++ BN-ReLU-Conv1x1-BN-ReLU-Conv3x3(x)."""
    y = L.ReLU()(L.BatchNormalization()(x))
    y = L.Conv2D(8, 1, use_bias=False)(y)
    y = L.ReLU()(L.BatchNormalization()(y))
    y = L.Conv2D(4, 3, padding="same", use_bias=False)(y)
    return L.Concatenate()([x, y])


def transition(x):
    """DenseNet's transition: BN-ReLU-Conv1x1-AveragePooling2D."""
    x = L.ReLU()(L.BatchNormalization()(x))
    x = L.Conv2D(8, 1, use_bias=False)(x)
    return L.AveragePooling2D(2, strides=2)(x)


VARIANTS = {
    "pool_only": lambda x: transition(x),
    "pool_then_concat": lambda x: conv_block(transition(x)),
    "dense_block_transition_block": lambda x: conv_block(
        transition(conv_block(x))
    ),
}


def tiny(variant):
    inputs = keras.Input((8, 8, 1))
    x = VARIANTS[variant](L.Conv2D(8, 3, padding="same")(inputs))
    x = L.Flatten()(x)
    return keras.Model(inputs, L.Dense(10)(x))


def pool_scales(path):
    """(input scale, output scale, op after) of each AVERAGE_POOL_2D."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(str(path))
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    found = []
    for op in ops:
        if op["op_name"] != "AVERAGE_POOL_2D":
            continue
        (i,), (o,) = op["inputs"], op["outputs"]
        after = [p["op_name"] for p in ops if o in p["inputs"]]
        scale = details[i]["quantization_parameters"]["scales"]
        out = details[o]["quantization_parameters"]["scales"]
        found.append((float(scale[0]), float(out[0]), after))
    return found


def qat_export(model, data, path, route, epochs, batch_size, lr):
    (x, y), (x_test, y_test) = data
    model.compile(
        keras.optimizers.Adam(lr),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    callbacks = [QuantizationAwareTraining()]
    if route == "quantize_model":
        model, callbacks = quantize_model(model), []
    start = time.perf_counter()
    model.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=epochs,
        verbose=0,
        callbacks=callbacks,
    )
    fit_s = time.perf_counter() - start
    try:
        keras_slim.export_tflite(model, path, input_shape=tuple(x.shape[1:]))
    except Exception as error:  # noqa: BLE001 - the refusal is the finding
        text = str(error)
        at = text.find("'tfl.")
        return f"REFUSED: {text[at : at + 160] if at >= 0 else text[:160]}"
    info = keras_slim.inspect_tflite(path)
    comparison = litert.compare(model, path, x_test)
    predicted = model.predict(x_test, verbose=0).argmax(-1)
    accuracy = float(np.mean(predicted == y_test))
    return (
        f"int8_only={info.int8_only} {comparison} keras accuracy "
        f"{accuracy:.3f}; pools (in, out, next op): {pool_scales(path)}; "
        f"QAT fit {fit_s:.0f} s"
    )


def densenet(route, workdir, plain_epochs, qat_epochs):
    data = keras_slim.datasets.load_digits(32, channels=3, seed=0)
    (x, y), test = data
    keras.utils.set_random_seed(0)
    model = keras.applications.DenseNet121(
        weights=None,
        input_shape=(32, 32, 3),
        classes=10,
        classifier_activation=None,
    )
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    start = time.perf_counter()
    model.fit(x, y, batch_size=32, epochs=plain_epochs, verbose=0)
    print(f"DenseNet121 plain fit: {time.perf_counter() - start:.0f} s")
    path = os.path.join(workdir, f"densenet121_{route}.tflite")
    result = qat_export(
        model, ((x, y), test), path, route, qat_epochs, 32, 1e-4
    )
    print(f"DenseNet121 {route}: {result}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", action="store_true")
    parser.add_argument("--densenet", action="store_true")
    parser.add_argument("--plain-epochs", type=int, default=5)
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument(
        "--route", choices=("callback", "quantize_model"), default=None
    )
    args = parser.parse_args()
    if args.before:
        _rules._SAME_SCALE = ()  # averaging pools back to "output"
    routes = [args.route] if args.route else ["callback", "quantize_model"]
    data = keras_slim.datasets.load_digits(8, seed=0)
    with tempfile.TemporaryDirectory() as workdir:
        for route in routes:
            for variant in [] if args.skip_tiny else VARIANTS:
                keras.utils.set_random_seed(0)
                path = os.path.join(workdir, f"{variant}.tflite")
                result = qat_export(
                    tiny(variant), data, path, route, 3, 64, 1e-2
                )
                print(f"{variant} {route}: {result}")
            if args.densenet:
                densenet(route, workdir, args.plain_epochs, args.qat_epochs)


if __name__ == "__main__":
    main()
