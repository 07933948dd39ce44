"""Export a model trained on JAX or PyTorch through the TensorFlow backend.

The TFLite converter needs the TensorFlow backend, and Keras fixes its
backend when it is first imported. `export_tflite` checks the arguments,
the calibration data and the weights in the calling process, as under
TensorFlow and with the same messages; the model is then saved to a
temporary `.keras` file and rebuilt in a child `python` process under
`KERAS_BACKEND=tensorflow`, where `keras_slim.export.export_tflite` runs
with the checked calibration samples (NumPy arrays in the model's input
structure): the same conversion, verification and atomic write, and the
same `ExportReport`. The child imports the model's custom classes from
their modules (with the parent's `sys.path`); a class it could not import
(defined in `__main__` or inside a function) and a `Lambda` layer are
refused by name before anything is saved. The child first runs the
rebuilt model on a few inputs and refuses it, before converting, unless
it computes what the trained model computed on them (a custom layer whose
`call` differs between backends would otherwise export silently wrong).
An error in the child is raised again in the parent with its type and
message."""

import importlib
import os
import pickle
import subprocess
import sys
import tempfile

import keras
import numpy as np

from keras_slim import _convert
from keras_slim import _export_inputs

# Rebuilt model vs trained model: float32 round-off across backends.
_PARITY_ATOL = 1e-3
_PROBES = 8
# A quantization-aware model's outputs may differ by one step of their
# grid, across backends, on at most this fraction of values (rounding
# ties; see `check_parity`).
_TIES = 0.25

_CHILD = """
import os, pickle, sys, traceback
request_path, result_path = sys.argv[1], sys.argv[2]
try:
    with open(request_path, "rb") as f:
        request = pickle.load(f)
    sys.path[:0] = [p for p in request["path"] if p not in sys.path]
    import keras
    import keras_slim  # registers the package's serializable objects
    from keras_slim import export
    from keras_slim import _cross_backend
    model = keras.models.load_model(
        request["model"],
        custom_objects=_cross_backend.import_classes(request["classes"]),
    )
    _cross_backend.check_parity(
        request["expected"],
        _cross_backend.float32_outputs(model, request["probes"]),
        request["backend"],
        request["quantized"],
    )
    result = {"report": export.export_tflite(model, **request["kwargs"])}
except BaseException as error:  # handed to the parent, raised there
    try:
        pickle.dumps(error)
        raised = error
    except Exception:
        raised = RuntimeError(f"{type(error).__name__}: {error}")
    result = {"error": raised, "traceback": traceback.format_exc()}
with open(result_path, "wb") as f:
    pickle.dump(result, f)
"""


def _to_numpy(data):
    """Arrays, lists and dicts of backend tensors as NumPy, or `data`."""
    return keras.tree.map_structure(
        lambda t: t if t is None else np.asarray(keras.ops.convert_to_numpy(t)),
        data,
    )


def float32_outputs(model, probes):
    """`model`'s outputs on the `probes` for the parity check, computed as
    the file is converted: eagerly, its mixed precision layers in float32
    (`_convert.float32_compute`). In float16, two backends' kernels
    differ by a round-off step, which a quantization-aware model's
    fake quantization turns into whole grid steps on many values
    (measured, torch vs TensorFlow, the demo CNN under mixed_float16:
    29 of 80 logits apart, up to 0.0586)."""
    with _convert.float32_compute(model):
        return _to_numpy(model(probes, training=False))


def _pack(sig, arrays):
    """One array per input, in the structure `model.predict` takes."""
    if sig.input_structure is None:
        return arrays[0]
    if isinstance(sig.input_structure, (list, tuple)) and len(arrays) == 1:
        return arrays[0]  # a Functional model built on `[input]`
    return keras.tree.pack_sequence_as(sig.input_structure, list(arrays))


def _custom_classes(model):
    """`(module, qualname)` of every class of `model` and of its layers
    that Keras cannot import by itself; refuse those a child process
    cannot import either, and Lambda layers."""
    classes = {}
    for layer in model._flatten_layers(include_self=True, recursive=True):
        # A model made quantization-aware in place has a class of
        # keras_slim's over its own (`_in_place._make_loadable`).
        cls = getattr(type(layer), "_keras_slim_base", type(layer))
        if isinstance(layer, keras.layers.Lambda):
            raise ValueError(
                f"`export_tflite` under the {keras.backend.backend()} "
                "backend rebuilds the model under TensorFlow from a `.keras` "
                f"file, and the Lambda layer {layer.name!r} cannot cross it: "
                "Keras saves its Python function as bytecode and refuses to "
                "load it (`safe_mode`). Write it as a `keras.layers.Layer` "
                "subclass decorated with "
                "`@keras.saving.register_keras_serializable()` in an "
                "importable module, or export under "
                "`KERAS_BACKEND=tensorflow`. Nothing was converted."
            )
        if cls.__module__.split(".")[0] in ("keras", "keras_slim"):
            continue
        if not _importable(cls):
            where = (
                "in the script being run (`__main__`)"
                if cls.__module__ == "__main__"
                else f"inside a function ({cls.__qualname__})"
                if "<locals>" in cls.__qualname__
                else f"where it cannot be imported ({cls.__module__})"
            )
            raise ValueError(
                f"`export_tflite` under the {keras.backend.backend()} "
                "backend rebuilds the model in a TensorFlow child process, "
                f"which must import its class {cls.__name__!r} (layer "
                f"{layer.name!r}); that class is defined {where}. Move it "
                "to a module the script imports (at its top level, "
                "decorated with `@keras.saving.register_keras_serializable"
                "()`), or export under `KERAS_BACKEND=tensorflow`. Nothing "
                "was converted."
            )
        classes[keras.saving.get_registered_name(cls)] = (
            cls.__module__,
            cls.__qualname__,
        )
    return classes


def _importable(cls):
    """Whether another process can import `cls` by its module and name."""
    module = sys.modules.get(cls.__module__)
    if cls.__module__ == "__main__" or module is None:
        return False
    if getattr(module, "__spec__", None) is None:
        return False
    target = module
    for part in cls.__qualname__.split("."):
        target = getattr(target, part, None)
    return target is cls


def import_classes(classes):
    """Import the classes `_custom_classes` named: Keras's
    `custom_objects`."""
    found = {}
    for name, (module, qualname) in classes.items():
        target = importlib.import_module(module)
        for part in qualname.split("."):
            target = getattr(target, part)
        found[name] = target
    return found


def _grid_step(values):
    """The step of the grid `values` lie on (a fake-quantized output), or
    0.0 when they lie on none."""
    unique = np.unique(values.ravel())
    if unique.size < 2:
        return 0.0
    step = float(np.min(np.diff(unique)))
    units = (unique - unique[0]) / step
    if np.abs(units - np.round(units)).max() > 0.01:
        return 0.0
    return step


def _outside(expected, received, tolerance, quantized):
    """Elements of one output beyond `tolerance`, or the message saying
    why a quantization-aware output's differences are not round-off."""
    gap = np.abs(expected - received)
    same_nan = np.isnan(expected) & np.isnan(received)
    gap = np.where(same_nan, 0.0, np.nan_to_num(gap, nan=np.inf))
    if not quantized or not (gap > tolerance).any():
        return gap.max(initial=0.0), None
    step = _grid_step(expected)
    off = gap > tolerance
    if step and gap.max() <= step + tolerance and off.mean() <= _TIES:
        return 0.0, None
    return gap.max(), (
        f" ({int(off.sum())} of {off.size} values differ; a "
        "quantization-aware model may differ by one step of its output "
        f"grid ({step:.3g}) on at most {_TIES:.0%} of them, where a value "
        "sits on a rounding tie)"
    )


def check_parity(expected, received, backend, quantized=False):
    """Refuse a rebuilt model whose outputs differ from the trained one's.

    Float models must agree within float32 round-off. In a
    quantization-aware model (`quantized`) a value that sits on a
    rounding tie may round one way on one backend and the other way on
    the other (measured under JAX, channel_pruning_test's QAT model on 8
    random inputs: 1 value of 80 one output step, 0.0122, apart); such
    one-step differences on a few values are accepted.
    """
    expected = keras.tree.flatten(_to_numpy(expected))
    received = keras.tree.flatten(_to_numpy(received))
    scale = max(
        1.0,
        *(float(np.abs(e[np.isfinite(e)]).max(initial=0.0)) for e in expected),
    )
    tolerance = _PARITY_ATOL * scale
    gap, why = 0.0, ""
    for e, r in zip(expected, received):
        if e.size:
            g, reason = _outside(e, r, tolerance, quantized)
            if g > gap:
                gap, why = g, reason or ""
    if gap > tolerance:
        raise ValueError(
            "The model rebuilt under the TensorFlow backend from its "
            f"`.keras` file does not compute what the {backend} model "
            f"computes (largest output difference {gap:.3g} on {_PROBES} "
            f"inputs{why}): a layer's `call` or `get_config` differs "
            "between backends. Nothing was written."
        )


def export_tflite_in_tensorflow(
    model, filepath, sig, samples, learned=False, **kwargs
):
    """`export_tflite` of a JAX or PyTorch model, run under TensorFlow.

    The arguments were checked by `export_tflite` already, with the
    model's `Signature` `sig` and its calibration `samples` (one checked
    NumPy array per input, or `None`). Saves `model` to a temporary
    `.keras` file, runs `keras_slim.export.export_tflite(model, filepath,
    representative_data=samples, **kwargs)` in a child process with
    `KERAS_BACKEND=tensorflow`, the parent's working directory and
    `sys.path`, and returns its `ExportReport`. `learned`: the model
    carries quantization-aware ranges. Raises what the child raised.

    Example:

    >>> import keras, numpy as np
    >>> from keras_slim import export_tflite
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> report = export_tflite(
    ...     model, "model.tflite", representative_data=np.random.rand(
    ...         16, 4).astype("float32"))
    >>> report.int8_only
    True
    """
    classes = _custom_classes(model)
    probes = (
        [a[:_PROBES] for a in samples]
        if samples is not None
        else _export_inputs.synthetic_samples(sig, _PROBES)
    )
    probes = _pack(sig, probes)
    expected = float32_outputs(model, probes)
    if samples is not None:
        kwargs["representative_data"] = _pack(sig, samples)
    with tempfile.TemporaryDirectory(prefix="keras_slim_export_") as tmp:
        model_path = os.path.join(tmp, "model.keras")
        model.save(model_path)
        request_path = os.path.join(tmp, "request.pkl")
        result_path = os.path.join(tmp, "result.pkl")
        request = {
            "model": model_path,
            "classes": classes,
            "path": [p for p in sys.path if p],
            "probes": probes,
            "expected": expected,
            "quantized": learned,
            "backend": keras.backend.backend(),
            "kwargs": {"filepath": filepath, **kwargs},
        }
        with open(request_path, "wb") as f:
            pickle.dump(request, f)
        result = _run_child(request_path, result_path)
    if "error" in result:
        raise result["error"]
    return result["report"]


def _run_child(request_path, result_path):
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, request_path, result_path],
        env=env,
        cwd=os.getcwd(),
        capture_output=True,
        text=True,
    )
    if not os.path.exists(result_path):
        raise RuntimeError(
            "The TensorFlow export process ended without a result (exit "
            f"code {child.returncode}). Its last output:\n"
            f"{child.stderr[-3000:]}"
        )
    with open(result_path, "rb") as f:
        return pickle.load(f)
