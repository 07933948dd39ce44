"""Read and relabel `.tflite` flatbuffers (no converter, no interpreter).

`TFLiteInfo` parses a file with the flatbuffer object API of
`ai_edge_litert`'s schema, over every subgraph (control-flow bodies
included). `relabel` rewrites a converted file so that its inputs and
outputs follow Keras's order and names: the converter orders them by its
own rules (a two-output model came out reversed), and only the signature
knows which is which.
"""

import gzip
import json
import os

import numpy as np

# Ops that only move data between float and integer at the model's edges.
_EDGE_OPS = ("QUANTIZE", "DEQUANTIZE")
_INTEGER_DTYPES = ("int8", "uint8", "int16", "int32", "int64", "bool")
# Name of the metadata entry that records the Keras input/output structure.
IO_METADATA = "keras_slim_io"


def _schema():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def _names(enum):
    return {v: k for k, v in vars(enum).items() if not k.startswith("_")}


def parse(data, filepath):
    """Return the flatbuffer object (`ModelT`) of `data`, or raise
    `ValueError` naming `filepath` if it is truncated or corrupt."""
    schema = _schema()
    try:
        model = schema.ModelT.InitFromPackedBuf(bytes(data), 0)
        if not model.subgraphs:
            raise ValueError("it has no subgraph")
        for graph in model.subgraphs:
            for i in [*_ids(graph.inputs), *_ids(graph.outputs)]:
                graph.tensors[i]  # noqa: B018 - an index check
    except Exception as e:  # noqa: BLE001 - struct.error, IndexError, ...
        raise ValueError(
            "Expected `filepath` to be a complete TFLite file, but its "
            f"flatbuffer cannot be read (truncated or corrupt: "
            f"{type(e).__name__}: {e}). Export or copy it again. "
            f"Received: filepath={filepath!r}"
        ) from None
    return model


def _ids(array):
    return [] if array is None else [int(i) for i in array]


def _tensor(t, dtype_names):
    q = t.quantization
    scale = [] if q is None or q.scale is None else list(q.scale)
    zero = [] if q is None or q.zeroPoint is None else list(q.zeroPoint)
    return {
        "name": t.name.decode() if isinstance(t.name, bytes) else t.name,
        "dtype": dtype_names.get(t.type, str(t.type)).lower(),
        "shape": tuple(int(d) for d in t.shape) if t.shape is not None else (),
        "scale": float(scale[0])
        if len(scale) == 1
        else ([float(s) for s in scale] if scale else 0.0),
        "zero_point": int(zero[0])
        if len(zero) == 1
        else ([int(z) for z in zero] if zero else 0),
    }


class TFLiteInfo:
    """What a `.tflite` file holds, as read from its flatbuffer.

    Returned by `keras_slim.inspect_tflite`; see there.

    Attributes:
        filepath: The file that was read.
        bytes: Size of the file in bytes.
        gzip_bytes: Size after `gzip -9`: what an app download carries,
            and the figure where pruning's zeros show.
        ops: Dict of op name to count over every subgraph, e.g.
            `{"CONV_2D": 4, ...}`.
        subgraphs: Number of subgraphs (more than 1 with control flow).
        tensors: List of dicts with `name`, `dtype` and `shape` of every
            tensor in the main graph.
        inputs, outputs: Lists of dicts with `name`, `shape`, `dtype`,
            `scale` and `zero_point` (`scale` 0.0 when not quantized), in
            the order of the Keras model for files `export_tflite` wrote.
        float_ops: Ops (`"OP_NAME:index"`, `"OP_NAME:subgraph/index"`
            outside the main graph) that read or write a float tensor, and
            QUANTIZE / DEQUANTIZE ops that convert between float and
            integer inside the graph (those at the inputs and outputs are
            expected, and an integer-to-integer QUANTIZE is integer).
        integer_only: True when every compute op of every subgraph is
            integer (int8, or int16 activations with int8 weights) and
            float conversions happen only at the inputs and outputs.
        int8_only: `integer_only`, and every activation is int8 (no int16
            activation tensor, as `"int16x8"` files have).
        activation_dtypes: Dict of dtype to the number of op output
            tensors of that dtype, e.g. `{"int8": 7, "float32": 1}`.
        float_op_tensors: Dict of each entry of `float_ops` to the name of
            the op's first output tensor (the converter keeps the Keras
            layer names in it: `"model/bn5_1/batchnorm/mul"`).
        io_structure: For files `export_tflite` wrote, a dict with the
            Keras `inputs` and `outputs` names and whether the model takes
            and returns a single array, a list or a dict (what
            `keras_slim.litert` follows); `None` for other files.

    Example:

    >>> import numpy as np
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> data = np.random.rand(32, 4).astype("float32")
    >>> _ = export_tflite(model, "tiny.tflite", representative_data=data)
    >>> info = inspect_tflite("tiny.tflite")
    >>> info.int8_only, info.ops["FULLY_CONNECTED"]
    (True, 1)
    """

    def __init__(self, filepath, data):
        schema = _schema()
        self.filepath = filepath
        self.bytes = len(data)
        self.gzip_bytes = len(gzip.compress(bytes(data), compresslevel=9))
        model = parse(data, filepath)
        dtype_names = _names(schema.TensorType)
        op_names = _names(schema.BuiltinOperator)
        self.subgraphs = len(model.subgraphs)
        self.ops = {}
        self.float_ops = []
        self.float_op_tensors = {}
        self.activation_dtypes = {}
        for g, graph in enumerate(model.subgraphs):
            tensors = [_tensor(t, dtype_names) for t in graph.tensors or []]
            if g == 0:
                self.tensors = tensors
                self.inputs = [tensors[i] for i in _ids(graph.inputs)]
                self.outputs = [tensors[i] for i in _ids(graph.outputs)]
            edges = (set(_ids(graph.inputs)), set(_ids(graph.outputs)))
            for index, op in enumerate(graph.operators or []):
                code = model.operatorCodes[op.opcodeIndex]
                builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
                name = op_names.get(builtin, f"OP_{builtin}")
                if name == "CUSTOM":
                    custom = code.customCode or b""
                    name = f"CUSTOM:{bytes(custom).decode(errors='replace')}"
                self.ops[name] = self.ops.get(name, 0) + 1
                where = f"{name}:{index}" if g == 0 else f"{name}:{g}/{index}"
                outs = [i for i in _ids(op.outputs) if i >= 0]
                for i in outs:
                    dtype = tensors[i]["dtype"]
                    count = self.activation_dtypes.get(dtype, 0)
                    self.activation_dtypes[dtype] = count + 1
                if _is_float_op(name, op, tensors, edges, g == 0):
                    self.float_ops.append(where)
                    if outs:
                        self.float_op_tensors[where] = tensors[outs[0]]["name"]
        self.integer_only = not self.float_ops and not any(
            n.startswith("CUSTOM") for n in self.ops
        )
        self.int8_only = self.integer_only and not self.activation_dtypes.get(
            "int16"
        )
        self.io_structure = _read_io_metadata(model)

    def __repr__(self):
        return (
            f"<TFLiteInfo {os.path.basename(self.filepath)!r} "
            f"bytes={self.bytes} int8_only={self.int8_only}>"
        )

    def summary(self):
        """Return a readable multi-line description of the file."""

        def io_line(kind, t):
            q = (
                f" scale={t['scale']:.6g} zero_point={t['zero_point']}"
                if isinstance(t["scale"], float) and t["scale"]
                else ""
            )
            return f"  {kind} {t['name']}: {t['dtype']} {list(t['shape'])}{q}"

        lines = [
            f"{self.filepath}",
            f"  bytes: {self.bytes:,}  gzip: {self.gzip_bytes:,}",
            f"  int8_only: {self.int8_only}"
            + (
                ""
                if self.int8_only or not self.integer_only
                else "  integer_only: True (int16 activations)"
            ),
        ]
        lines += [io_line("input ", t) for t in self.inputs]
        lines += [io_line("output", t) for t in self.outputs]
        ops = ", ".join(f"{k} x{v}" for k, v in sorted(self.ops.items()))
        lines.append(f"  ops: {ops}")
        if self.subgraphs > 1:
            lines.append(f"  subgraphs: {self.subgraphs}")
        if self.float_ops:
            lines.append("  float ops: " + ", ".join(self.float_ops))
        return "\n".join(lines)

    def print_summary(self, print_fn=print):
        """Print `summary()`, line by line, with `print_fn`."""
        for line in self.summary().splitlines():
            print_fn(line)

    def __str__(self):
        return self.summary()


def _is_float_op(name, op, tensors, edges, main):
    ins = [i for i in _ids(op.inputs) if i >= 0]
    outs = [i for i in _ids(op.outputs) if i >= 0]
    dtypes = {tensors[i]["dtype"] for i in ins + outs}
    integer = dtypes <= set(_INTEGER_DTYPES)
    if name in _EDGE_OPS:
        if integer:  # int8 -> int8 requantize: integer arithmetic
            return False
        at_edge = main and (
            all(i in edges[0] for i in ins) or all(o in edges[1] for o in outs)
        )
        return not at_edge
    return not integer


def _read_io_metadata(model):
    for entry in model.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else ""
        if name == IO_METADATA:
            try:
                raw = model.buffers[entry.buffer].data
                return json.loads(bytes(np.asarray(raw, "uint8")).decode())
            except (IndexError, TypeError, ValueError):
                return None
    return None


def read_io_structure(data):
    """The `keras_slim_io` metadata of a file's bytes (a dict), or None;
    reads only the metadata table, not the whole model."""
    try:
        model = _schema().Model.GetRootAsModel(bytes(data), 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() == IO_METADATA.encode():
                raw = model.Buffers(entry.Buffer()).DataAsNumpy()
                return json.loads(bytes(raw).decode())
    except Exception:  # noqa: BLE001 - no usable metadata
        return None
    return None


def _inline_buffers(model, data):
    """Move constant buffers stored after the flatbuffer (`offset`/`size`,
    as the LiteRT Quantizer writes them) back into it, so that repacking
    the model keeps them."""
    for buffer in model.buffers or []:
        offset, size = int(buffer.offset or 0), int(buffer.size or 0)
        if offset > 1 and size:
            buffer.data = np.frombuffer(
                bytes(data[offset : offset + size]), np.uint8
            )
            buffer.offset = 0
            buffer.size = 0


def relabel(
    data, input_keys, output_keys, input_names, output_names, structure
):
    """Put a converted file's inputs and outputs in Keras's order and names.

    Args:
        data: The converter's bytes.
        input_keys, output_keys: The signature's keys, in Keras's order.
        input_names, output_names: The Keras names they become (in the
            signature and as the names of the file's tensors).
        structure: JSON-able dict stored as the `keras_slim_io` metadata,
            so that `keras_slim.litert` returns what `model.predict`
            returns (a single array, a list or a dict).

    Returns:
        The rewritten bytes.
    """
    import flatbuffers

    schema = _schema()
    model = parse(data, "<converted>")
    _inline_buffers(model, data)
    [signature] = model.signatureDefs
    graph = model.subgraphs[signature.subgraphIndex]
    for maps, keys, names, attr in (
        (signature.inputs, input_keys, input_names, "inputs"),
        (signature.outputs, output_keys, output_names, "outputs"),
    ):
        by_key = {m.name.decode(): m for m in maps}
        if sorted(by_key) != sorted(keys):
            raise ValueError(
                f"The converted file's signature {attr} {sorted(by_key)} do "
                f"not match the model's {list(keys)}."
            )
        ordered = [by_key[k] for k in keys]
        for m, name in zip(ordered, names):
            m.name = name.encode()
            graph.tensors[m.tensorIndex].name = name.encode()
        setattr(signature, attr, ordered)
        setattr(graph, attr, [int(m.tensorIndex) for m in ordered])
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(structure).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = IO_METADATA.encode()
    entry.buffer = len(model.buffers) - 1
    kept = [  # a relabeled file relabeled again keeps one entry
        m for m in model.metadata or [] if m.name != IO_METADATA.encode()
    ]
    model.metadata = [*kept, entry]
    builder = flatbuffers.Builder(len(data) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
