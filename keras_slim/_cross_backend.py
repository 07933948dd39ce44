"""Export a model trained on JAX or PyTorch through the TensorFlow backend.

The TFLite converter needs the TensorFlow backend, and Keras fixes its
backend when it is first imported. A model trained under
`KERAS_BACKEND=jax` or `torch` is therefore saved to a temporary `.keras`
file and rebuilt in a child `python` process under
`KERAS_BACKEND=tensorflow`, where `keras_slim.export.export_tflite` runs
with the same arguments: the same checks, verification and atomic write,
and the same `ExportReport`. The child first runs the rebuilt model on a few
inputs and refuses it, before converting, unless it computes what the
trained model computed on them (a custom layer whose `call` differs
between backends would otherwise export silently wrong). An error in the
child is raised again in the parent with its type and message.
"""

import os
import pickle
import subprocess
import sys
import tempfile

import keras
import numpy as np

# Rebuilt model vs trained model: float32 round-off across backends.
_PARITY_ATOL = 1e-3
_PROBES = 8

_CHILD = """
import os, pickle, sys, traceback
request_path, result_path = sys.argv[1], sys.argv[2]
try:
    with open(request_path, "rb") as f:
        request = pickle.load(f)
    import keras
    import keras_slim  # registers the package's serializable objects
    from keras_slim import export
    from keras_slim import _cross_backend
    model = keras.models.load_model(request["model"])
    if request["probes"] is not None:
        _cross_backend.check_parity(
            request["expected"],
            model.predict(request["probes"], verbose=0),
            request["backend"],
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


def _materialize(data, limit):
    """Representative data as NumPy (a generator is drawn, up to `limit`).

    Arrays, lists and dicts of arrays go as they are; a generator, or a
    function returning one, is read in the parent (it cannot cross a
    process) into one array per input.
    """
    if data is None:
        return None
    if callable(data) and not hasattr(data, "shape"):
        data = data()
    if isinstance(data, (np.ndarray, list, tuple, dict)) or hasattr(
        data, "shape"
    ):
        return _to_numpy(data)
    batches, count = [], 0
    for batch in data:
        if isinstance(batch, tuple) and len(batch) == 2:
            batch = batch[0]  # (inputs, labels)
        batch = _to_numpy(batch)
        batches.append(batch)
        count += len(keras.tree.flatten(batch)[0])
        if count >= limit:
            break
    if not batches:
        return None
    return keras.tree.map_structure(
        lambda *parts: np.concatenate(parts), *batches
    )


def _probes(model, data):
    """A few inputs to compare the trained and rebuilt models on."""
    if data is not None:
        return keras.tree.map_structure(lambda a: a[:_PROBES], data)
    shapes = [tuple(t.shape) for t in getattr(model, "inputs", None) or []]
    if not shapes or any(d is None for s in shapes for d in s[1:]):
        return None
    rng = np.random.default_rng(0)
    arrays = [rng.random((_PROBES, *s[1:])).astype("float32") for s in shapes]
    return arrays[0] if len(arrays) == 1 else arrays


def check_parity(expected, received, backend):
    """Refuse a rebuilt model whose outputs differ from the trained one's."""
    expected = keras.tree.flatten(_to_numpy(expected))
    received = keras.tree.flatten(_to_numpy(received))
    gap = max(
        float(np.max(np.abs(e - r))) if e.size else 0.0
        for e, r in zip(expected, received)
    )
    scale = max(1.0, *(float(np.abs(e).max()) for e in expected if e.size))
    if gap > _PARITY_ATOL * scale:
        raise ValueError(
            "The model rebuilt under the TensorFlow backend from its "
            f"`.keras` file does not compute what the {backend} model "
            f"computes (largest output difference {gap:.3g} on {_PROBES} "
            "inputs): a layer's `call` or `get_config` differs between "
            "backends. Nothing was written."
        )


def export_tflite_in_tensorflow(model, filepath, **kwargs):
    """`export_tflite` of a JAX or PyTorch model, run under TensorFlow.

    Saves `model` to a temporary `.keras` file, runs
    `keras_slim.export.export_tflite(model, filepath, **kwargs)` in a child
    process with `KERAS_BACKEND=tensorflow` and the parent's working
    directory, and returns its `ExportReport`. `representative_data` is
    passed as NumPy (a generator is read here first, up to
    `calibration_steps` or 500 samples). Raises what the child raised.

    Example:

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> report = export_tflite_in_tensorflow(
    ...     model, "model.tflite", representative_data=np.random.rand(
    ...         16, 4).astype("float32"))
    >>> report.int8_only
    True
    """
    limit = kwargs.get("calibration_steps") or 500
    data = _materialize(kwargs.get("representative_data"), limit)
    if data is not None:
        kwargs["representative_data"] = data
    probes = _probes(model, data)
    expected = None
    if probes is not None:
        expected = _to_numpy(model.predict(probes, verbose=0))
    with tempfile.TemporaryDirectory(prefix="keras_slim_export_") as tmp:
        model_path = os.path.join(tmp, "model.keras")
        model.save(model_path)
        request_path = os.path.join(tmp, "request.pkl")
        result_path = os.path.join(tmp, "result.pkl")
        request = {
            "model": model_path,
            "probes": probes,
            "expected": expected,
            "backend": keras.backend.backend(),
            "kwargs": {"filepath": filepath, **kwargs},
        }
        with open(request_path, "wb") as f:
            pickle.dump(request, f)
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
            result = pickle.load(f)
    if "error" in result:
        raise result["error"]
    return result["report"]
