"""The `keras-slim` command: demo, convert, inspect, profile.

    keras-slim demo [--quick] [--output-dir DIR]
    keras-slim convert MODEL.keras -o OUT.tflite [--quantization int8]
        [--calibration N | --representative-data FILE.npy|FILE.npz]
        [--input-shape 32,32,1] [--min-agreement 0.5]
    keras-slim inspect OUT.tflite
    keras-slim profile MODEL.keras

Every failure is one line on stderr with exit code 1 (2 for bad
arguments), never a traceback. This module imports nothing heavy at the
top, so that `--help` answers at once; TensorFlow loads only to work.
"""

import argparse
import logging
import os
import sys
import tempfile
import time
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class CLIError(Exception):
    """A one-line error for the user; `main` prints it and exits 1."""


def _one_line(text, limit=300):
    lines = [line.strip() for line in str(text).strip().splitlines()]
    first = next((line for line in lines if line), "")
    return first[:limit]


def _check_model_file(path):
    if not os.path.exists(path):
        raise CLIError(f"no such file: {path}")
    if not os.path.isfile(path):
        raise CLIError(f"not a file: {path}")
    if not path.endswith((".keras", ".h5")):
        raise CLIError(f"expected a Keras model file (.keras): {path}")
    if path.endswith(".h5"):
        with open(path, "rb") as f:
            if f.read(8) != _HDF5_SIGNATURE:
                raise CLIError(f"{path} is not a valid Keras .h5 file")
        return
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if "config.json" not in names:
                raise CLIError(
                    f"{path} is not a valid Keras file: the archive has no "
                    "config.json"
                )
    except (zipfile.BadZipFile, OSError, EOFError):
        bad = True
    else:
        bad = False
    if bad:
        raise CLIError(
            f"{path} is not a valid Keras file (a .keras file is a zip "
            "archive; this one is truncated or corrupt)"
        )


def _unregistered_classes(path):
    """Names of the custom classes in a .keras config Keras cannot find."""
    import json

    import keras

    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    missing = []

    def walk(node):
        if isinstance(node, dict):
            module = node.get("module")
            name = node.get("class_name")
            builtin = isinstance(module, str) and (
                module == "builtins" or module.startswith("keras")
            )
            if isinstance(name, str) and "config" in node and not builtin:
                key = node.get("registered_name") or name
                if keras.saving.get_registered_object(key) is None:
                    missing.append(key)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return sorted(set(missing))


def _import_package():
    """Import every public module of keras_slim, which registers its
    serializable classes: the console script may not have (see
    `keras_slim/__init__.py`), and a saved model may hold them."""
    import importlib
    import pkgutil

    import keras_slim

    for info in pkgutil.iter_modules(keras_slim.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"keras_slim.{info.name}")


def _load_model(path):
    _check_model_file(path)
    _import_package()
    import keras

    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as e:  # noqa: BLE001 - any load failure is one line
        missing = []
        if path.endswith(".keras"):
            try:
                missing = _unregistered_classes(path)
            except Exception:  # noqa: BLE001 - fall back to Keras's words
                missing = []
        if missing:
            raise CLIError(
                f"{path} uses custom classes that are not registered: "
                f"{', '.join(missing)}. Import the code that defines them "
                "(decorated with @keras.saving.register_keras_serializable) "
                "and convert from Python with keras_slim.export_tflite"
            ) from None
        raise CLIError(
            f"could not load {path} as a Keras model: {type(e).__name__}: "
            f"{_one_line(e)}"
        ) from None


def _parse_shape(text):
    import re

    if not re.fullmatch(r"\s*\d+(\s*[,x]\s*\d+)*\s*", text):
        raise argparse.ArgumentTypeError(
            f"expected positive integers like 32,32,1, got {text!r}"
        )
    shape = tuple(int(p) for p in re.split(r"[,x]", text))
    if any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(
            f"expected positive integers like 32,32,1, got {text!r}"
        )
    return shape


def _read_data(path):
    import numpy as np

    if not os.path.isfile(path):
        raise CLIError(f"no such file: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any read failure is one line
        raise CLIError(
            f"could not read {path} as a .npy or .npz array: {_one_line(e)}"
        ) from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            arrays = {k: data[k] for k in data.files}
        if not arrays:
            raise CLIError(f"{path} holds no arrays")
        return next(iter(arrays.values())) if len(arrays) == 1 else arrays
    return data


def _data_for(model, args):
    if args.representative_data:
        return _read_data(args.representative_data)
    shape = args.input_shape[0] if len(args.input_shape or []) == 1 else None
    data = _digits_for(model, shape)
    if data is None:
        try:
            shapes = [tuple(t.shape[1:]) for t in model.inputs]
        except (AttributeError, ValueError):
            shapes = []
        if shape is None and any(None in s for s in shapes):
            raise CLIError(
                f"the model's input shape {shapes} has None dimensions: "
                "pass --input-shape (e.g. --input-shape 32,32,1) to fix "
                "them, and --representative-data unless the shape fits "
                "the offline digits"
            )
        raise CLIError(
            f"the model's inputs {shapes or 'unknown'} do not fit the "
            "offline digits; pass --representative-data FILE.npy with a "
            "few hundred inputs (FILE.npz with one array per input name "
            "for several inputs)"
        )
    return data


def _convert(args):
    from keras_slim import _safe_write
    from keras_slim import _validation

    try:
        _validation.check_output_path("-o", args.output, (".tflite",))
        _safe_write.check_writable(args.output, "-o")
    except (TypeError, ValueError) as e:
        raise CLIError(str(e)) from None
    if args.representative_data and not os.path.isfile(
        args.representative_data
    ):
        raise CLIError(f"no such file: {args.representative_data}")
    model = _load_model(args.model)
    calibrated = args.quantization in ("int8", "int16x8")
    data = _data_for(model, args) if calibrated else None
    shapes = args.input_shape
    from keras_slim import export

    try:
        report = export.export_tflite(
            model,
            args.output,
            quantization=args.quantization,
            representative_data=data,
            io_dtype=args.io_dtype,
            allow_float_fallback=args.allow_float_fallback,
            per_channel_dense=not args.per_tensor_dense,
            calibration_steps=args.calibration,
            input_shape=shapes[0] if shapes and len(shapes) == 1 else shapes,
            min_agreement=args.min_agreement,
            bias_correction=args.bias_correction,
            weight_rounding=args.weight_rounding,
        )
    except (ValueError, TypeError) as e:
        raise CLIError(" ".join(str(e).split())) from None
    print(report.summary())


def _digits_for(model, shape=None):
    """Offline digits shaped for `model`'s input, or None if none fit."""
    from keras_slim import datasets

    if shape is None:
        try:
            if len(model.inputs) != 1:
                return None
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
    print(info.summary())


def _profile(args):
    from keras_slim import profiling

    model = _load_model(args.model)
    print(profiling.profile(model).summary())


def _check_output_dir(folder):
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise CLIError(f"--output-dir {folder} exists and is not a folder")
    parent = os.path.dirname(os.path.abspath(folder))
    if not os.path.isdir(folder) and not os.path.isdir(parent):
        raise CLIError(
            f"--output-dir {folder}: its parent folder {parent} does not exist"
        )
    target = folder if os.path.isdir(folder) else parent

    try:
        fd, probe = tempfile.mkstemp(prefix=".keras_slim-", dir=target)
    except OSError as e:
        raise CLIError(
            f"--output-dir {folder}: cannot write in {target} "
            f"({e.strerror or e})"
        ) from None
    os.close(fd)
    os.remove(probe)


def _demo(args):
    _check_output_dir(args.output_dir)
    from keras_slim import _demo

    # The demo predicts with seven models on arrays of several sizes:
    # TensorFlow's "N out of the last M calls ... triggered tf.function
    # retracing" warnings say nothing about a user's script there.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    ok = _demo.run(quick=args.quick, output_dir=args.output_dir)
    if not ok:
        raise CLIError("demo verification failed (see the table above)")


def _add_convert(sub):
    convert = sub.add_parser("convert", help="convert a .keras model")
    convert.add_argument("model", help="a .keras model file")
    convert.add_argument(
        "-o", "--output", required=True, help="the .tflite file to write"
    )
    convert.add_argument(
        "--quantization",
        default="int8",
        choices=["float32", "float16", "dynamic", "int8", "int16x8"],
        help="int16x8: int8 weights, int16 activations (integer end to "
        "end, closer to Keras, slower on most CPUs)",
    )
    convert.add_argument(
        "--calibration",
        type=int,
        default=500,
        help="number of calibration samples (int8, int16x8)",
    )
    convert.add_argument(
        "--representative-data",
        help="inputs to calibrate int8 or int16x8: a .npy array, or a .npz "
        "with one array per input name",
    )
    convert.add_argument(
        "--input-shape",
        type=_parse_shape,
        action="append",
        help="input shape without the batch size, e.g. 32,32,1, for "
        "models with None dimensions (once per input)",
    )
    convert.add_argument(
        "--min-agreement",
        type=float,
        default=0.5,
        help="refuse the file if it agrees with Keras on fewer of the "
        "verification samples (0-1, default 0.5)",
    )
    convert.add_argument(
        "--io-dtype", default="float32", choices=["float32", "int8", "uint8"]
    )
    convert.add_argument("--allow-float-fallback", action="store_true")
    convert.add_argument(
        "--bias-correction",
        action="store_true",
        help="take the mean error of the int8 weights off the biases "
        "(int8, int16x8; compare with and without)",
    )
    convert.add_argument(
        "--weight-rounding",
        default="nearest",
        choices=["nearest", "adaround"],
        help="adaround: round each kernel to fit its layer's output on the "
        "calibration data (int8, int16x8; ~25 s a layer)",
    )
    convert.add_argument(
        "--per-tensor-dense",
        action="store_true",
        help="per-tensor Dense weights (microcontrollers)",
    )
    convert.set_defaults(func=_convert)


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
    demo.add_argument(
        "--quick", action="store_true", help="a fast run with fewer epochs"
    )
    demo.add_argument(
        "--output-dir",
        default="keras_slim_demo",
        help="folder for the .keras and .tflite files",
    )
    demo.set_defaults(func=_demo)
    _add_convert(sub)

    inspect = sub.add_parser("inspect", help="show what a .tflite holds")
    inspect.add_argument("file")
    inspect.set_defaults(func=_inspect)

    profile = sub.add_parser("profile", help="params, MACs, sizes per layer")
    profile.add_argument("model")
    profile.set_defaults(func=_profile)
    return parser


def _check_usage(parser, args):
    if args.command != "convert":
        return
    if args.calibration < 1:
        parser.error(f"--calibration must be >= 1, got {args.calibration}")
    if not 0 <= args.min_agreement <= 1:
        parser.error(
            f"--min-agreement must be in [0, 1], got {args.min_agreement}"
        )
    calibrated = args.quantization in ("int8", "int16x8")
    if args.representative_data and not calibrated:
        parser.error(
            "--representative-data is used only with --quantization int8 "
            f"or int16x8, got --quantization {args.quantization}"
        )
    if args.weight_rounding != "nearest" and not calibrated:
        parser.error(
            "--weight-rounding adaround is used only with --quantization "
            f"int8 or int16x8, got --quantization {args.quantization}"
        )
    if args.bias_correction and not calibrated:
        parser.error(
            "--bias-correction is used only with --quantization int8 or "
            f"int16x8, got --quantization {args.quantization}"
        )


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
    # Imported here: `--help` must not import the package (TensorFlow).
    from keras_slim._native_stderr import native_stderr_held

    _check_usage(parser, args)
    start = time.perf_counter()
    try:
        with native_stderr_held() as replay:
            args.func(args)
            replay()
    except CLIError as e:
        print(f"keras-slim: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("keras-slim: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one-line promise holds
        print(
            f"keras-slim: error: {type(e).__name__}: {_one_line(e)}",
            file=sys.stderr,
        )
        return 1
    if args.command == "demo":
        print(f"done in {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
