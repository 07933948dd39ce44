"""The `keras-slim` command: demo, convert, inspect, profile.

    keras-slim demo [--quick] [--output-dir DIR]
    keras-slim convert MODEL.keras -o OUT.tflite [--quantization int8]
        [--calibration N | --representative-data FILE.npy]
    keras-slim inspect OUT.tflite
    keras-slim profile MODEL.keras

A missing, corrupt or wrong-kind file is refused with a one-line message
on stderr and exit code 1 (2 for bad arguments), never a traceback.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class CLIError(Exception):
    """A one-line error for the user; `main` prints it and exits 1."""


def _load_model(path):
    import keras

    if not os.path.isfile(path):
        raise CLIError(f"no such file: {path}")
    if not path.endswith((".keras", ".h5")):
        raise CLIError(f"expected a Keras model file (.keras): {path}")
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as e:  # noqa: BLE001 - any load failure is one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CLIError(
            f"could not load {path} as a Keras model: {type(e).__name__}: "
            f"{first[:300]}"
        ) from None


def _convert(args):
    import numpy as np

    from keras_slim import export

    model = _load_model(args.model)
    data = None
    if args.quantization == "int8":
        if args.representative_data:
            if not os.path.isfile(args.representative_data):
                raise CLIError(f"no such file: {args.representative_data}")
            try:
                data = np.load(args.representative_data, allow_pickle=False)
            except Exception as e:  # noqa: BLE001
                raise CLIError(
                    f"could not read {args.representative_data} as a .npy "
                    f"array: {e}"
                ) from None
        else:
            data = _digits_for(model)
            if data is None:
                shape = tuple(model.inputs[0].shape[1:])
                raise CLIError(
                    f"the model's input {shape} does not fit the offline "
                    "digits; pass --representative-data FILE.npy with a few "
                    f"hundred inputs of shape (n, {', '.join(map(str, shape))})"
                )
        data = data[: args.calibration]
    try:
        report = export.export_tflite(
            model,
            args.output,
            quantization=args.quantization,
            representative_data=data,
            io_dtype=args.io_dtype,
            allow_float_fallback=args.allow_float_fallback,
            per_channel_dense=not args.per_tensor_dense,
        )
    except (ValueError, TypeError) as e:
        raise CLIError(str(e)) from None
    print(report)


def _digits_for(model):
    """Offline digits shaped for `model`'s input, or None if none fit."""
    from keras_slim import datasets

    try:
        shape = tuple(model.inputs[0].shape[1:])
    except (AttributeError, ValueError, IndexError):
        return None
    if len(shape) != 3 or shape[0] != shape[1] or shape[2] not in (1, 3):
        return None
    if shape[0] is None or shape[0] < 8:
        return None
    (x, _), _ = datasets.load_digits(image_size=shape[0], channels=shape[2])
    return x


def _inspect(args):
    from keras_slim import export

    try:
        info = export.inspect_tflite(args.file)
    except ValueError as e:
        raise CLIError(str(e)) from None
    print(info)


def _profile(args):
    from keras_slim import profiling

    model = _load_model(args.model)
    profiling.profile(model).summary()


def _demo(args):
    from keras_slim import _demo

    ok = _demo.run(quick=args.quick, output_dir=args.output_dir)
    if not ok:
        raise CLIError("demo verification failed (see the table above)")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-slim",
        description="Compress Keras 3 models and export verified int8 "
        "TFLite files.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        help="train a CNN on the offline digits, compress it, export int8 "
        "TFLite and verify it",
    )
    demo.add_argument("--quick", action="store_true",
                      help="a fast run with fewer epochs")
    demo.add_argument("--output-dir", default="keras_slim_demo",
                      help="folder for the .keras and .tflite files")
    demo.set_defaults(func=_demo)

    convert = sub.add_parser("convert", help="convert a .keras model")
    convert.add_argument("model", help="a .keras model file")
    convert.add_argument("-o", "--output", required=True,
                         help="the .tflite file to write")
    convert.add_argument("--quantization", default="int8",
                         choices=["float32", "float16", "dynamic", "int8"])
    convert.add_argument("--calibration", type=int, default=500,
                         help="number of calibration samples (int8)")
    convert.add_argument("--representative-data",
                         help=".npy array of inputs to calibrate int8")
    convert.add_argument("--io-dtype", default="float32",
                         choices=["float32", "int8", "uint8"])
    convert.add_argument("--allow-float-fallback", action="store_true")
    convert.add_argument("--per-tensor-dense", action="store_true",
                         help="per-tensor Dense weights (microcontrollers)")
    convert.set_defaults(func=_convert)

    inspect = sub.add_parser("inspect", help="show what a .tflite holds")
    inspect.add_argument("file")
    inspect.set_defaults(func=_inspect)

    profile = sub.add_parser("profile", help="params, MACs, sizes per layer")
    profile.add_argument("model")
    profile.set_defaults(func=_profile)
    return parser


def main(argv=None):
    """Entry point of the `keras-slim` command.

    Args:
        argv: Arguments without the program name (default `sys.argv[1:]`).

    Returns:
        The exit code: 0 on success, 1 on a refused file or failed
        verification, 2 on bad arguments.

    Example:

    >>> import keras
    >>> from keras_slim import export_tflite
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> _ = export_tflite(model, "m.tflite", quantization="float32")
    >>> main(["inspect", "m.tflite"])
    m.tflite
      bytes: ...
    0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "calibration", 1) < 1:
        parser.error(f"--calibration must be >= 1, got {args.calibration}")
    start = time.perf_counter()
    try:
        args.func(args)
    except CLIError as e:
        print(f"keras-slim: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("keras-slim: interrupted", file=sys.stderr)
        return 130
    if args.command == "demo":
        print(f"done in {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
