"""Error helpers: refuse bad input before any work, in Keras words.

Every message names the argument, what is allowed and what was received:
"Expected `sparsity` in [0, 1). Received: sparsity=1.2".
"""

import os
import re

import keras


def _received(name, value):
    return f"Received: {name}={value!r}"


def check_type(name, value, types, expected):
    """Raise `TypeError` unless `value` is an instance of `types`."""
    if not isinstance(value, types):
        raise TypeError(
            f"Expected `{name}` to be {expected}. "
            f"Received: {name}={value!r} of type {type(value).__name__}"
        )
    return value


def check_choice(name, value, choices):
    """Raise `ValueError` unless `value` is one of `choices`."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(
            f"Expected `{name}` to be one of {allowed}. "
            f"{_received(name, value)}"
        )
    return value


def check_range(
    name, value, low=None, high=None, low_inclusive=True, high_inclusive=True
):
    """Raise `ValueError` unless `low <=/< value <=/< high`.

    Booleans and non-numbers are refused with a `TypeError`.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"Expected `{name}` to be a number. {_received(name, value)}"
        )
    ok = True
    if low is not None:
        ok &= value >= low if low_inclusive else value > low
    if high is not None:
        ok &= value <= high if high_inclusive else value < high
    if not ok:
        left = "[" if low_inclusive else "("
        right = "]" if high_inclusive else ")"
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(
            f"Expected `{name}` in {left}{lo}, {hi}{right}. "
            f"{_received(name, value)}"
        )
    return value


def check_int(name, value, minimum=None):
    """Raise unless `value` is an int (not a bool) and `>= minimum`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"Expected `{name}` to be an integer. {_received(name, value)}"
        )
    if minimum is not None and value < minimum:
        raise ValueError(
            f"Expected `{name}` to be an integer >= {minimum}. "
            f"{_received(name, value)}"
        )
    return value


def check_model(model, name="model", built=True):
    """Raise unless `model` is a Keras 3 model (and built, when asked)."""
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"Expected `{name}` to be a Keras 3 `keras.Model`. "
            f"Received: {name}={model!r} of type {type(model).__name__}. "
            "(Models from `tf_keras`/`tf.keras` under Keras 2 are not "
            "supported.)"
        )
    if built and not model.built:
        raise ValueError(
            f"Expected `{name}` to be built (to have weights). Call it on "
            "data, call `model.build(input_shape)`, or give it a "
            f"`keras.Input`. Received: unbuilt {name}={model.name!r}"
        )
    return model


def check_output_path(name, filepath, suffixes=None):
    """Return `filepath` as `str` after checking its folder exists.

    Raises before any work so that a long job never fails at the end.
    """
    if not isinstance(filepath, (str, os.PathLike)):
        raise TypeError(
            f"Expected `{name}` to be a path (str or os.PathLike). "
            f"{_received(name, filepath)}"
        )
    filepath = os.fspath(filepath)
    folder = os.path.dirname(os.path.abspath(filepath))
    if not os.path.isdir(folder):
        raise ValueError(
            f"The folder of `{name}` does not exist: {folder!r}. Create it "
            f"first. {_received(name, filepath)}"
        )
    if os.path.isdir(filepath):
        raise ValueError(
            f"Expected `{name}` to be a file path, but it is a folder. "
            f"{_received(name, filepath)}"
        )
    if suffixes and not filepath.endswith(tuple(suffixes)):
        raise ValueError(
            f"Expected `{name}` to end with {' or '.join(suffixes)}. "
            f"{_received(name, filepath)}"
        )
    return filepath


def check_input_file(name, filepath, suffixes=None):
    """Return `filepath` as `str` after checking it is an existing file."""
    if not isinstance(filepath, (str, os.PathLike)):
        raise TypeError(
            f"Expected `{name}` to be a path (str or os.PathLike). "
            f"{_received(name, filepath)}"
        )
    filepath = os.fspath(filepath)
    if not os.path.isfile(filepath):
        raise ValueError(
            f"No such file for `{name}`. {_received(name, filepath)}"
        )
    if suffixes and not filepath.endswith(tuple(suffixes)):
        raise ValueError(
            f"Expected `{name}` to end with {' or '.join(suffixes)}. "
            f"{_received(name, filepath)}"
        )
    return filepath


def compile_filters(filters, name="filters"):
    """Turn `filters` into a predicate `(path, layer) -> bool`.

    `filters` is `None` (everything), a regex string matched with
    `re.search` against the layer's path and name, a list of such regexes
    (any may match), or a callable `filters(layer) -> bool`, as
    `keras.Model.quantize(filters=...)` accepts.
    """
    if filters is None:
        return lambda path, layer: True
    if isinstance(filters, str):
        filters = [filters]
    if callable(filters):
        fn = filters
        return lambda path, layer: bool(fn(layer))
    if isinstance(filters, (list, tuple)) and all(
        isinstance(f, str) for f in filters
    ):
        try:
            patterns = [re.compile(f) for f in filters]
        except re.error as e:
            raise ValueError(
                f"Invalid regular expression in `{name}`: {e}. "
                f"{_received(name, filters)}"
            ) from None
        return lambda path, layer: any(
            p.search(path) or p.search(layer.name) for p in patterns
        )
    raise TypeError(
        f"Expected `{name}` to be None, a regex string, a list of regex "
        f"strings or a callable `layer -> bool`. {_received(name, filters)}"
    )


def check_tflite_bytes(data, filepath):
    """Raise unless `data` (a file's bytes, or its first 8) is a TFLite
    flatbuffer: its file identifier, bytes 4-8, is `TFL3`."""
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError(
            "Expected `filepath` to be a TFLite flatbuffer (file identifier "
            f"'TFL3'), but it is not. Received: filepath={filepath!r}"
        )
