"""Probe (issue 20): why the zoo's MobileNets and EfficientNetB0 stay at
chance after 2 epochs on 512 digits, and which recipe lifts them.

For each epoch: test accuracy in inference mode (moving BN statistics)
and with batch statistics (`training=True`), so that unconverged BN
statistics and an untrained network can be told apart.

    python -m benchmarks.probes.zoo_training_recipe MobileNetV2 \
        --n-train 1347 --epochs 8 --batch-size 32 --lr 1e-3
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import _zoo_models as zoo  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--n-train", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--momentum", type=float, default=None)
    args = parser.parse_args()
    model = zoo.build(args.name)
    if args.momentum is not None:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = args.momentum
    model.compile(
        keras.optimizers.Adam(args.lr),
        keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    (x, y), (xt, yt) = zoo.data(args.name, n_train=args.n_train, n_test=450)
    print(args, x.shape, xt.shape, flush=True)
    for epoch in range(args.epochs):
        start = time.perf_counter()
        history = model.fit(
            x, y, batch_size=args.batch_size, epochs=1, verbose=0
        )
        seconds = time.perf_counter() - start
        inference = np.mean(
            np.argmax(model.predict(xt, batch_size=128, verbose=0), -1) == yt
        )
        batch = np.mean(
            np.concatenate(
                [
                    np.argmax(model(xt[i : i + 128], training=True), -1)
                    for i in range(0, len(xt), 128)
                ]
            )
            == yt
        )
        print(
            f"epoch {epoch + 1}: train acc "
            f"{history.history['accuracy'][-1]:.3f}, test inference "
            f"{inference:.3f}, test batch-stats {batch:.3f}, {seconds:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
