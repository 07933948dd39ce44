"""Run a converted file before it is written: a verified export is verified.

The file must load in LiteRT as a phone would run it (the default XNNPACK
delegate), produce finite outputs, and agree with the Keras model on the
calibration samples (or, without them, on a few synthetic samples) at
least `min_agreement` of the time, output by output.
"""

import re

import keras
import numpy as np

from keras_slim import _layers
from keras_slim import _litert_file
from keras_slim import _tensor_names
from keras_slim import _tflite_file
from keras_slim import litert

# Default of `export_tflite(min_agreement=...)`. int8 files of trained
# models agree 97-100% with Keras (the demo CNN: 99.8%); a MobileNetV3Small
# calibrated on [0, 1] images instead of the 0-255 its Rescaling layer
# expects agreed 24%. Untrained models with near-tied outputs land between.
MIN_AGREEMENT = 0.5
# At most this many samples are run through the file.
VERIFY_LIMIT = 64
# A Rescaling layer whose calibration inputs span less than this fraction
# of the range it expects is reported.
_SLIVER = 0.05


def check_loads(data, sparse):
    """Raise `ValueError` unless LiteRT loads `data` with its default
    delegate."""
    problem = litert.load_error(data)
    if problem:
        hint = (
            " The sparse encoding (`sparse=True`) adds DENSIFY ops whose "
            "results the XNNPACK delegate cannot take; export without it "
            "(pruning's zeros still show in the gzip size)."
            if sparse
            else ""
        )
        raise ValueError(
            "LiteRT cannot run the converted file with its default "
            f"delegate: {problem}. Nothing was written.{hint}"
        )


def _subset(samples):
    n = len(samples[0])
    index = np.unique(np.linspace(0, n - 1, min(n, VERIFY_LIMIT)).astype(int))
    return [s[index] for s in samples]


def _keras_outputs(model, sig, arrays):
    if sig.input_structure is None:
        x = arrays[0]
    else:
        x = keras.tree.pack_sequence_as(sig.input_structure, arrays)
    y = model.predict(x, verbose=0, batch_size=64)
    if isinstance(y, dict):
        return [np.asarray(y[k]) for k in sig.output_names]
    return [np.asarray(t) for t in keras.tree.flatten(y)]


def _first_bad(array):
    rows = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
    return int(np.flatnonzero(rows)[0]) if rows.any() else None


def verify(model, data, sig, samples, min_agreement, notes):
    """Run `data` on (a subset of) `samples` and return the agreement of
    each output with Keras, a dict in Keras's order.

    `samples` is a list of arrays (one per input) or None (synthetic
    samples in [0, 1) are used). Raises `ValueError` (nothing written) on
    NaN/inf outputs or an agreement below `min_agreement`; `notes` (the
    Rescaling diagnosis) are added to that message.
    """
    from keras_slim import _export_inputs

    kind = "calibration"
    if samples is None:
        samples = _export_inputs.synthetic_samples(sig)
        kind = "synthetic [0, 1)"
    arrays = _subset(samples)
    file = _litert_file.File(content=data)
    try:
        actual = file.run(arrays)
    except RuntimeError as e:  # an op LiteRT has no kernel for
        raise ValueError(_run_refusal(model, data, e)) from None
    expected = _keras_outputs(model, sig, arrays)
    agreement = {}
    for name, e, a in zip(sig.output_names, expected, actual):
        for who, values in (("The Keras model", e), ("The converted file", a)):
            bad = _first_bad(values)
            if bad is not None:
                raise ValueError(
                    f"{who} outputs NaN or inf for output {name!r} on "
                    f"sample {bad} of the {len(arrays[0])} {kind} samples; "
                    "nothing was written. Check the model's weights and "
                    "that the data is scaled as in training."
                )
        # An output with spatial or sequence axes (a segmentation map, a
        # tag per token) agrees position by position: one top-1 over the
        # whole map says where its largest logit is, which int8 rounding
        # of near-equal maxima moves at random.
        agreement[name] = _litert_file.agreement(e, a, e.ndim >= 3)
    low = {k: v for k, v in agreement.items() if v < min_agreement}
    if low:
        found = ", ".join(f"{k!r} {100 * v:.1f}%" for k, v in low.items())
        raise ValueError(
            f"Expected the converted file to agree with the Keras model on "
            f"at least {100 * min_agreement:g}% of the {len(arrays[0])} "
            f"{kind} samples (`min_agreement={min_agreement}`). Received: "
            f"agreement {found}. Nothing was written."
            + "".join(f" {n}" for n in notes)
            + " If the data is right and such a file is wanted, lower "
            "`min_agreement`."
        )
    return agreement


# LiteRT's message when an op fails: "... Node number 3 (SQUARED_DIFFERENCE)
# failed to invoke."
_NODE = re.compile(r"Node number (\d+) \((\w+)\)")


def _run_refusal(model, data, error):
    """The message for a file that loads but that LiteRT cannot run (an op
    kept with tensor types it has no kernel for, such as an int16
    SQUARED_DIFFERENCE in an int16x8 file), naming the op and, from its
    output tensor's name, the Keras layer it came from."""
    text = " ".join(str(error).split()).replace(".Node number", ". Node number")
    where = ""
    found = _NODE.search(text)
    if found:
        index, op = int(found.group(1)), found.group(2)
        graph = _tflite_file.parse(data, "<converted>").subgraphs[0]
        layer = None
        if index < len(graph.operators or []):
            ops = graph.operators[index]
            outputs = [i for i in _tflite_file._ids(ops.outputs) if i >= 0]
            if outputs:
                name = graph.tensors[outputs[0]].name
                names = {layer.name for _, layer in _layers.iter_layers(model)}
                layer = _tensor_names.producer(
                    name.decode() if isinstance(name, bytes) else name, names
                )
        where = f" The op is {op} (node {index}" + (
            f", from layer {layer!r})." if layer else ")."
        )
    return (
        f"LiteRT cannot run the converted file: {text}{where} Nothing was "
        "written. LiteRT has no kernel for that op with these tensor "
        "types (int16 activations have fewer kernels than int8): export "
        "with `quantization='int8'`, or keep that layer float with "
        "`quantizer='litert', layer_precision={name: 'float32'}`."
    )


def rescaling_notes(model, sig, samples):
    """Notes on `Rescaling` layers fed by a model input whose calibration
    data spans a sliver of the range the layer expects."""
    notes = []
    inputs = {}
    for _, layer in [("", model), *_layers.iter_layers(model, models=True)]:
        if isinstance(layer, keras.Model):
            try:
                for t in layer.inputs:
                    inputs[id(t)] = t
            except (AttributeError, ValueError):
                continue
    for path, layer in _layers.iter_layers(model):
        if not isinstance(layer, keras.layers.Rescaling):
            continue
        try:
            source = layer.input
        except (AttributeError, ValueError):
            continue
        if id(source) not in inputs:
            continue
        shape = tuple(source.shape[1:])
        matches = [s for s, sh in zip(samples, sig.shapes) if sh == shape]
        if len(matches) != 1:
            continue
        low, high = _expected_range(layer)
        data = matches[0]
        span = float(data.max() - data.min())
        if high > low and span < _SLIVER * (high - low):
            notes.append(
                f"Layer {path!r} (Rescaling, scale={layer.scale}, "
                f"offset={layer.offset}) expects inputs in about "
                f"[{low:g}, {high:g}], but the calibration data spans "
                f"[{float(data.min()):.4g}, {float(data.max()):.4g}], "
                f"{100 * span / (high - low):.2g}% of it: int8 keeps only "
                "a few levels. Feed inputs as the model expects them (for "
                "keras.applications models, 0-255 pixels)."
            )
    return notes


def _expected_range(layer):
    """The input range a Rescaling maps onto [0, 1] (offset 0) or [-1, 1]
    (negative offset)."""
    scale = float(np.mean(np.abs(np.asarray(layer.scale, "float64"))))
    offset = float(np.mean(np.asarray(layer.offset, "float64")))
    if scale == 0:
        return 0.0, 0.0
    low_out, high_out = (-1.0, 1.0) if offset < 0 else (0.0, 1.0)
    return (low_out - offset) / scale, (high_out - offset) / scale
