"""Keras layer names inside TFLite tensor names.

The converter names each op's output tensor after the TensorFlow ops it
fused, `;`-separated, each a `/`-path of name scopes that holds the Keras
layer names, the first time a layer is called suffixed `_1`:
`model_export_1/model_1/relu4_1/Relu;model_export_1/model_1/bn4_1/...`.
The first entry is the op that produces the tensor (here the ReLU, after
the folded convolution and batch normalization).
"""

import re

_SUFFIX = re.compile(r"^(.*)_\d+$")


def _layer(segment, names):
    stripped = _SUFFIX.match(segment)
    if stripped and stripped.group(1) in names:
        return stripped.group(1)
    return segment if segment in names else None


def layers_in(tensor_name, names):
    """The layer names of `names` (a set) found in `tensor_name`, in the
    order of its `;`-separated parts, each the innermost scope that is a
    layer; no duplicates."""
    found = []
    for part in str(tensor_name).split(";"):
        segments = part.split("/")[:-1]  # the last one is the TF op
        for segment in reversed(segments):
            layer = _layer(segment, names)
            if layer is not None:
                if layer not in found:
                    found.append(layer)
                break
    return found


def producer(tensor_name, names):
    """The layer whose output `tensor_name` is (its first part), or None."""
    part = str(tensor_name).split(";")[0]
    if "/" not in part and part in names:  # a file output, named by Keras
        return part
    found = layers_in(part, names)
    return found[0] if found else None
