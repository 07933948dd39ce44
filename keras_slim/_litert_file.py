"""The interpreter side of `keras_slim.litert`: one `.tflite` file (path or
bytes) with its inputs and outputs in the Keras model's order and
structure, run on whole arrays."""

import numpy as np

from keras_slim import _validation


def quantize(x, detail):
    dtype = detail["dtype"]
    if not np.issubdtype(dtype, np.integer):
        return x.astype(dtype)
    scale, zero_point = detail["quantization"]
    if not scale:  # an integer input that is not quantized (token ids)
        return x.astype(dtype)
    info = np.iinfo(dtype)
    q = np.round(x / scale + zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(y, detail):
    if not np.issubdtype(detail["dtype"], np.integer):
        return y.astype("float32")
    scale, zero_point = detail["quantization"]
    if not scale:
        return y
    return ((y.astype("float32") - zero_point) * scale).astype("float32")


def _structure(data):
    """The `keras_slim_io` metadata of a file's bytes, or None."""
    from keras_slim import _tflite_file

    return _tflite_file.read_io_structure(data)


# LiteRT's CPU kernel sets, by the name `keras_slim.litert` takes: the
# XNNPACK delegate (LiteRT's default, what an app gets), LiteRT's built-in
# optimized kernels without it, and its reference kernels (the plain
# integer arithmetic that TensorFlow Lite Micro's kernels follow).
KERNELS = {
    "xnnpack": "AUTO",
    "builtin": "BUILTIN_WITHOUT_DEFAULT_DELEGATES",
    "reference": "BUILTIN_REF",
}


class File:
    """An interpreter with the file's inputs/outputs and their structure."""

    def __init__(
        self,
        filepath=None,
        content=None,
        threads=None,
        preserve=False,
        kernels="xnnpack",
    ):
        from ai_edge_litert.interpreter import Interpreter
        from ai_edge_litert.interpreter import OpResolverType

        _validation.check_choice("kernels", kernels, tuple(KERNELS))
        if content is None:
            filepath = _validation.check_input_file("filepath", filepath)
            with open(filepath, "rb") as f:
                content = f.read()
            _validation.check_tflite_bytes(content[:8], filepath)
        self.content = bytes(content)
        extra = {}
        if kernels != "xnnpack":
            extra["experimental_op_resolver_type"] = getattr(
                OpResolverType, KERNELS[kernels]
            )
        if preserve:  # every intermediate tensor readable after `invoke`
            extra = dict(
                experimental_preserve_all_tensors=True,
                experimental_op_resolver_type=(
                    OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
                ),
            )
        self.interpreter = Interpreter(
            model_content=self.content, num_threads=threads, **extra
        )
        self.interpreter.allocate_tensors()
        self.inputs = self.interpreter.get_input_details()
        self.outputs = self.interpreter.get_output_details()
        meta = _structure(content) or {}
        self.input_names = meta.get("inputs") or [
            d["name"] for d in self.inputs
        ]
        self.output_names = meta.get("outputs") or [
            d["name"] for d in self.outputs
        ]
        single = "single" if len(self.outputs) == 1 else "list"
        self.output_structure = meta.get("output_structure", single)

    def arrays(self, x, name="x"):
        """`x` (array, list or dict) as a list of arrays, file order."""
        n = len(self.inputs)
        if isinstance(x, dict):
            missing = [k for k in self.input_names if k not in x]
            if missing:
                raise ValueError(
                    f"Expected `{name}` to hold the file's inputs "
                    f"{self.input_names}. Received: {name} with keys "
                    f"{sorted(x)}"
                )
            parts = [x[k] for k in self.input_names]
        elif isinstance(x, (list, tuple)) and n > 1:
            if len(x) != n:
                raise ValueError(
                    f"Expected `{name}` to hold {n} arrays, one per input "
                    f"{self.input_names}. Received: {len(x)} arrays"
                )
            parts = list(x)
        elif n > 1:
            raise ValueError(
                f"Expected `{name}` to be a list or dict of {n} arrays, one "
                f"per input {self.input_names}. Received: {name} of type "
                f"{type(x).__name__}"
            )
        elif (
            isinstance(x, (list, tuple))
            and len(x) == 1
            and isinstance(x[0], np.ndarray)
        ):
            parts = list(x)  # a list of one array, as Keras accepts
        else:
            parts = [x]
        arrays = []
        for part, detail, label in zip(parts, self.inputs, self.input_names):
            part = np.asarray(part)
            expected = tuple(int(d) for d in detail["shape"][1:])
            which = name if n == 1 else f"{name}[{label!r}]"
            if part.ndim != len(expected) + 1 or part.shape[1:] != expected:
                raise ValueError(
                    f"Expected `{which}` of shape (n, "
                    f"{', '.join(str(d) for d in expected)}) to match the "
                    f"file's input. Received: {which} of shape {part.shape}"
                )
            if len(part) == 0:
                raise ValueError(
                    f"Expected `{which}` to hold at least one sample. "
                    f"Received: {which} of shape {part.shape}"
                )
            if np.issubdtype(part.dtype, np.floating):
                part = part.astype("float32")
            arrays.append(part)
        if len({len(a) for a in arrays}) != 1:
            raise ValueError(
                f"Expected every input in `{name}` to hold the same number "
                f"of samples. Received: {[len(a) for a in arrays]}"
            )
        return arrays

    def run(self, arrays):
        """Outputs (list, file order) of running every sample."""
        it = self.interpreter
        batch = int(self.inputs[0]["shape_signature"][0])
        chunk = 64 if batch == -1 else batch
        total = len(arrays[0])
        results = [[] for _ in self.outputs]
        for start in range(0, total, chunk):
            parts = [a[start : start + chunk] for a in arrays]
            n = len(parts[0])
            if batch == -1:
                for part, detail in zip(parts, self.inputs):
                    if tuple(detail["shape"]) != part.shape:
                        it.resize_tensor_input(detail["index"], part.shape)
                it.allocate_tensors()
                self.inputs = it.get_input_details()
            elif n != chunk:  # pad the last fixed-size batch
                parts = [
                    np.concatenate(
                        [p, np.zeros((chunk - n, *p.shape[1:]), p.dtype)]
                    )
                    for p in parts
                ]
            for part, detail in zip(parts, self.inputs):
                it.set_tensor(detail["index"], quantize(part, detail))
            it.invoke()
            for out, detail in zip(results, self.outputs):
                out.append(
                    dequantize(it.get_tensor(detail["index"])[:n], detail)
                )
        return [np.concatenate(r) for r in results]

    def pack(self, flat):
        """`flat` outputs in the structure `model.predict` returns."""
        if self.output_structure == "single" and len(flat) == 1:
            return flat[0]
        if self.output_structure == "dict":
            return dict(zip(self.output_names, flat))
        return list(flat)


def flat_outputs(structure, names):
    """A `model.predict` result (array, list or dict) as a list."""
    if isinstance(structure, dict):
        return [np.asarray(structure[k]) for k in names]
    if isinstance(structure, (list, tuple)):
        return [np.asarray(s) for s in structure]
    return [np.asarray(structure)]


def agreement(expected, actual, per_position=False):
    """Per-output agreement of two `(n, ...)` arrays.

    Outputs with several values per sample agree when their top-1 index
    (over the flattened sample) is the same; single-value outputs
    (regression) when they differ by at most 10% of the largest
    magnitude of the expected values. With `per_position`, the share of
    positions (every index but the last axis) that agree: same top-1
    over the last axis, or, for a last axis of 1, within that 10%.
    """
    if per_position:
        e = expected.astype("float32")
        a = actual.astype("float32")
        if e.shape[-1] > 1:
            return float(np.mean(np.argmax(e, -1) == np.argmax(a, -1)))
        tolerance = 0.1 * max(float(np.abs(e).max()), 1e-6)
        return float(np.mean(np.abs(e - a) <= tolerance))
    n = len(expected)
    e = expected.reshape(n, -1).astype("float32")
    a = actual.reshape(n, -1).astype("float32")
    if e.shape[1] > 1:
        return float(np.mean(np.argmax(e, -1) == np.argmax(a, -1)))
    tolerance = 0.1 * max(float(np.abs(e).max()), 1e-6)
    return float(np.mean(np.abs(e - a)[:, 0] <= tolerance))
