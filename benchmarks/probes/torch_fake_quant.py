"""Probe (issue 21): where quantization-aware training's time goes on the
torch backend, and what the torch path of `fake_quant` saves.

Part 1, `fake_quant` alone: forward + backward on torch tensors of the
demo CNN's shapes (its activations at batch 64 and its kernels), for the
`keras.ops` reference (`_quantizers._fake_quant_ops`), the torch path
(`_quantizers.fake_quant` on torch) and, as a floor, one plain torch op
(ReLU forward + backward: one pass over the tensor each way). Also
`fake_quant_activation` with its range update.

Part 2, a training step: the demo CNN (`keras_slim.models.small_cnn`) on
the digits at 32x32, batch 64, timed per batch inside `fit` (a callback
between `on_train_batch_begin` and `on_train_batch_end`), first batch of
each `fit` excluded. Variants, each a fresh model from the same weights,
one `fit` of `--batches` batches each per round, medians over rounds:
plain `fit`; QAT with the torch path; QAT with the `keras.ops` reference;
QAT with `fake_quant` replaced by the identity (keras_slim's hooks and the
range updates left); QAT with `fake_quant_activation` and
`quantize_kernel` replaced by the identity (the hooks alone); QAT with
torch's own fused `torch.fake_quantize_per_*_affine` in place of
`fake_quant` (not TensorFlow's rounding: a reference point). The
replacements are monkeypatches of `keras_slim.quantization._quantizers`.
With `--model NAME` a model of `benchmarks._zoo_models` (e.g.
MobileNetV2) instead, on its data at its recipe's batch size, and with
`--variants plain,torch` only plain `fit` and QAT with the torch path:
how the overhead moves with the work in each step (short names: plain,
torch, native, identity, hooks).

Part 3 (`--profile`): torch.profiler around one training step of each
variant of part 2: aten op calls in the step, those (and the time)
inside `fake_quant_activation`, `quantize_kernel` and `fake_quant_fixed`
(labelled with `record_function`), and the backward nodes.

Commands (from the repository root; `--threads 1` sets torch's intra-op
threads, which on a shared 2-core machine removes the waits of two
threads at every op's barrier):
    KERAS_BACKEND=torch nice -n 10 \
        python -m benchmarks.probes.torch_fake_quant --profile
    KERAS_BACKEND=torch nice -n 10 \
        python -m benchmarks.probes.torch_fake_quant --threads 1
    KERAS_BACKEND=torch nice -n 10 \
        python -m benchmarks.probes.torch_fake_quant --threads 1 \
        --skip-ops --model MobileNetV2 --variants plain,torch
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_slim.quantization import _quantizers  # noqa: E402

ACTIVATIONS = {
    "input (64,32,32,1)": (64, 32, 32, 1),
    "conv1/dw2 (64,16,16,16)": (64, 16, 16, 16),
    "pw2 (64,16,16,32)": (64, 16, 16, 32),
    "conv3 (64,8,8,64)": (64, 8, 8, 64),
    "dense (64,10)": (64, 10),
}
KERNELS = {
    "conv1 (9,16)": (3, 3, 1, 16),
    "dw2 (3,3,16)": (3, 3, 16),
    "pw2 (1,1,16,32)": (1, 1, 16, 32),
    "conv3 (3,3,32,64)": (3, 3, 32, 64),
}


def _best_us(fn, reps):
    """The fastest of `reps` calls (the machine is shared: the fastest is
    the least disturbed)."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e6 * float(np.min(times))


def part1(reps):
    import torch

    rng = np.random.default_rng(0)
    fast = _quantizers.fake_quant
    reference = _quantizers._fake_quant_ops
    print(f"Part 1: forward + backward, best of {reps}, microseconds")
    print("| tensor | keras.ops reference | torch path | ReLU | ref/torch |")
    print("|---|---:|---:|---:|---:|")

    def timed(quant, x, lo, hi, narrow):
        def run():
            out = quant(x, lo, hi, narrow)
            out.backward(grad)

        grad = torch.ones(x.shape)
        return run

    rows = []
    for name, shape in ACTIVATIONS.items():
        x = torch.tensor(rng.normal(size=shape), dtype=torch.float32)
        x.requires_grad_(True)
        lo, hi = torch.tensor(-1.5), torch.tensor(2.5)
        rows.append((name, x, lo, hi, False))
    for name, shape in KERNELS.items():
        x = torch.tensor(rng.normal(size=shape), dtype=torch.float32)
        x.requires_grad_(True)
        m = torch.amax(torch.abs(x.detach()), dim=tuple(range(x.ndim - 1)))
        rows.append((name + " per-channel", x, -m, m, True))
    for name, x, lo, hi, narrow in rows:
        grad = torch.ones(x.shape)

        def relu(x=x, grad=grad):
            torch.relu(x).backward(grad)

        ref = _best_us(lambda: timed(reference, x, lo, hi, narrow)(), reps)
        new = _best_us(lambda: timed(fast, x, lo, hi, narrow)(), reps)
        base = _best_us(relu, reps)
        print(
            f"| {name} | {ref:.0f} | {new:.0f} | {base:.0f} | "
            f"{ref / new:.1f}x |"
        )
    # The activation quantizer with its moving-average update.
    shape = ACTIVATIONS["pw2 (64,16,16,32)"]
    x = torch.tensor(rng.normal(size=shape), dtype=torch.float32)
    x.requires_grad_(True)
    grad = torch.ones(shape)
    lo, hi, seen = (keras.Variable(v, trainable=False) for v in (-1, 1, 1.0))

    def activation(quant):
        def run():
            saved = _quantizers.fake_quant
            _quantizers.fake_quant = quant
            try:
                out = _quantizers.fake_quant_activation(
                    x, lo, hi, seen, True, 0.99
                )
            finally:
                _quantizers.fake_quant = saved
            out.backward(grad)

        return run

    ref = _best_us(activation(reference), reps)
    new = _best_us(activation(fast), reps)
    print(
        f"| fake_quant_activation, update, pw2 | {ref:.0f} | {new:.0f} | | "
        f"{ref / new:.1f}x |"
    )
    print()


class _BatchTimer(keras.callbacks.Callback):
    """Wall time and the process's CPU time of each training batch (on a
    shared machine the CPU time moves less with the other jobs' load)."""

    def __init__(self):
        super().__init__()
        self.times = []
        self.cpu = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()
        self._cpu = time.process_time()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)
        self.cpu.append(time.process_time() - self._cpu)


def _identity(x, *args, **kwargs):
    return x


def _identity_activation(x, lo, hi, *args, with_range=False, **kwargs):
    return (x, lo, hi) if with_range else x


def _native(x, lo, hi, narrow_range=False, axis=None):
    """torch's own fused fake quantization with the nudged range: one pass
    forward (output and mask), one backward; rounds half to even and
    computes `x / scale + zero_point`, so not TensorFlow's bits (a
    reference point for what eager torch can reach, not the package's)."""
    import torch

    lo = keras.ops.convert_to_tensor(lo).detach().float()
    hi = keras.ops.convert_to_tensor(hi).detach().float()
    scale, nudged_min, _ = _quantizers._nudge(lo, hi, narrow_range, torch)
    quant_min = 1 if narrow_range else 0
    zero = torch.round(quant_min - nudged_min / scale).to(torch.int32)
    x = keras.ops.convert_to_tensor(x)
    if lo.ndim == 0:
        return torch.fake_quantize_per_tensor_affine(
            x, scale.reshape(1), zero.reshape(1), quant_min, 255
        )
    return torch.fake_quantize_per_channel_affine(
        x, scale, zero, x.ndim - 1, quant_min, 255
    )


def _variants():
    fast = _quantizers.fake_quant
    return {
        "plain": None,
        "QAT, torch path": {"fake_quant": fast},
        "QAT, torch's fused fake_quantize": {"fake_quant": _native},
        "QAT, keras.ops reference": {"fake_quant": _quantizers._fake_quant_ops},
        "QAT, fake_quant = identity": {"fake_quant": _identity},
        "QAT, hooks only": {
            "fake_quant_activation": _identity_activation,
            "quantize_kernel": _identity,
        },
    }


def _patched(patches):
    class Patch:
        def __enter__(self):
            self.saved = {k: getattr(_quantizers, k) for k in patches}
            for k, v in patches.items():
                setattr(_quantizers, k, v)

        def __exit__(self, *exc):
            for k, v in self.saved.items():
                setattr(_quantizers, k, v)

    return Patch()


def _model_and_data(model, batches):
    """`(build, compile, x, y, batch)`: the demo CNN on the digits at
    32x32, batch 64, or a zoo model (`benchmarks._zoo_models`) on its
    data at its recipe's batch size."""
    from keras_slim import datasets
    from keras_slim import models

    if model == "small_cnn":
        (x, y), _ = datasets.load_digits(32)
        batch = 64

        def build():
            return models.small_cnn()

        def compile_(m):
            m.compile(
                keras.optimizers.Adam(1e-3),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )

    else:
        from benchmarks import _zoo_models as zoo

        (x, y), _ = zoo.data(model, None, None)
        batch = zoo.recipe(model)["batch_size"]

        def build():
            return zoo.build(model)

        def compile_(m):
            zoo.compile_model(m, model)

    return build, compile_, x[: batch * batches], y[: batch * batches], batch


def part2(rounds, batches, profile, model="small_cnn", variant_names=None):
    from keras_slim.quantization import QuantizationAwareTraining

    build, compile_, x, y, batch = _model_and_data(model, batches)
    keras.utils.set_random_seed(0)
    weights = build().get_weights()
    variants = _variants()
    if variant_names:
        variants = {k: variants[k] for k in variant_names}
    built = {}
    for name, patches in variants.items():
        keras.utils.set_random_seed(0)
        m = build()
        m.set_weights(weights)
        compile_(m)
        callbacks = [] if patches is None else [QuantizationAwareTraining()]
        built[name] = (m, callbacks, patches or {})
    times = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    for name, (m, callbacks, patches) in built.items():  # warm-up fits
        with _patched(patches):
            m.fit(
                x[: 2 * batch],
                y[: 2 * batch],
                batch_size=batch,
                verbose=0,
                callbacks=callbacks,
            )
    for _ in range(rounds):
        for name, (m, callbacks, patches) in built.items():
            timer = _BatchTimer()
            with _patched(patches):
                m.fit(
                    x,
                    y,
                    batch_size=batch,
                    epochs=1,
                    verbose=0,
                    callbacks=[*callbacks, timer],
                )
            times[name].append(float(np.median(timer.times[1:])))
            cpu[name].append(float(np.median(timer.cpu[1:])))
    print(
        f"Part 2: {model}, one training step (batch {batch}), ms; median "
        f"over {rounds} "
        f"rounds of the median step of a {batches}-batch fit; wall time "
        "and the process's CPU time"
    )
    print(
        "| variant | wall ms/step | wall / plain | per-round wall ratios | "
        "CPU ms/step | CPU / plain | per-round CPU ratios |"
    )
    print("|---|---:|---:|---|---:|---:|---|")
    for name in variants:
        cells = []
        for table in (times, cpu):
            values, plain = table[name], table["plain"]
            ratios = [a / b for a, b in zip(values, plain)]
            cells += [
                f"{1e3 * np.median(values):.1f}",
                f"{np.median(ratios):.2f}x",
                ", ".join(f"{r:.2f}" for r in ratios),
            ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    for name in variants:
        rounds_ms = ", ".join(f"{1e3 * t:.1f}" for t in times[name])
        print(f"{name}: wall ms/step per round: {rounds_ms}")
    print()
    if profile:
        part3(built, x, y)


class _StepProfiler(keras.callbacks.Callback):
    """torch.profiler around one training batch (the second of the fit)."""

    def __init__(self, batch=1):
        super().__init__()
        self.batch = batch
        self.prof = None

    def on_train_batch_begin(self, batch, logs=None):
        import torch

        if batch == self.batch:
            self.prof = torch.profiler.profile()
            self.prof.__enter__()

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.batch:
            self.prof.__exit__(None, None, None)


LABELS = ("fake_quant_activation", "quantize_kernel", "fake_quant_fixed")


def _labelled(patches):
    """`patches` plus a `record_function` label around each quantizer."""
    import torch

    out = dict(patches)
    for name in LABELS:
        inner = out.get(name, getattr(_quantizers, name))

        def wrapped(*args, _inner=inner, _name=name, **kwargs):
            with torch.profiler.record_function("ks::" + _name):
                return _inner(*args, **kwargs)

        out[name] = wrapped
    return out


def _descendants(event):
    stack, found = list(event.cpu_children), []
    while stack:
        e = stack.pop()
        found.append(e)
        stack.extend(e.cpu_children)
    return found


def part3(built, x, y):
    print("Part 3: torch.profiler, one training step (batch 64)")
    print(
        "| variant | wall ms | aten ops | quantizers fwd: ops, ms | "
        "quantizer backward nodes: ms | other backward: ms |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, (m, callbacks, patches) in built.items():
        profiler = _StepProfiler()
        timer = _BatchTimer()
        with _patched(_labelled(patches)):
            m.fit(
                x[:192],
                y[:192],
                batch_size=64,
                epochs=1,
                verbose=0,
                callbacks=[*callbacks, timer, profiler],
            )
        events = profiler.prof.events()
        aten = [e for e in events if e.name.startswith("aten::")]
        labelled = [e for e in events if e.name.startswith("ks::")]
        inner = [
            d
            for e in labelled
            for d in _descendants(e)
            if d.name.startswith("aten::")
        ]
        label_ms = sum(e.cpu_time_total for e in labelled) / 1e3
        backward = [
            e
            for e in events
            if e.name.startswith("autograd::engine::evaluate_function")
        ]
        quant_nodes = (
            "FakeQuant",
            "MulBackward",
            "SubBackward",
            "AddBackward",
            "ToCopyBackward",
        )
        qb = sum(
            e.cpu_time_total
            for e in backward
            if any(k in e.name for k in quant_nodes)
        )
        ob = sum(e.cpu_time_total for e in backward) - qb
        print(
            f"| {name} | {1e3 * timer.times[1]:.0f} | {len(aten)} | "
            f"{len(inner)}, {label_ms:.0f} | {qb / 1e3:.0f} | "
            f"{ob / 1e3:.0f} |"
        )
    print(
        "(backward nodes Mul/Sub/Add/ToCopy/FakeQuant are counted as the "
        "quantizers'; a plain step has a few of them too)"
    )
    print()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--skip-ops", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--model",
        default="small_cnn",
        help="the demo CNN, or a model of benchmarks._zoo_models "
        "(e.g. MobileNetV2) on its data at its recipe's batch size",
    )
    parser.add_argument(
        "--variants",
        help="comma-separated variants of part 2 (default: all), e.g. "
        "'plain,QAT, torch path' is written plain,torch",
    )
    args = parser.parse_args(argv)
    assert keras.backend.backend() == "torch", keras.backend.backend()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"keras {keras.__version__}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    if not args.skip_ops:
        part1(args.reps)
    names = None
    if args.variants:
        short = {
            "plain": "plain",
            "torch": "QAT, torch path",
            "native": "QAT, torch's fused fake_quantize",
            "identity": "QAT, fake_quant = identity",
            "hooks": "QAT, hooks only",
        }
        names = [short.get(v, v) for v in args.variants.split(",")]
    part2(args.rounds, args.batches, args.profile, args.model, names)


if __name__ == "__main__":
    main()
