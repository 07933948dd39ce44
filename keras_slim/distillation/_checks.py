"""What the Distiller checks before any work: the two models, the kind of
their outputs (logits or probabilities), and the feature pairs."""

import keras

from keras_slim import _validation


def symbolic_outputs(model):
    """The symbolic outputs of a Functional/Sequential model, else None."""
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return None
    return outputs or None


def symbolic_inputs(model):
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    return inputs or None


def shape(tensor):
    return tuple(tensor.shape[1:])


def check_models(teacher, student):
    _validation.check_model(teacher, "teacher")
    _validation.check_model(student, "student")
    if teacher is student:
        raise ValueError(
            "Expected `teacher` and `student` to be different models. "
            f"Received the same model twice: {student.name!r}"
        )
    t_in, s_in = symbolic_inputs(teacher), symbolic_inputs(student)
    if t_in and s_in:
        t_shapes = [shape(t) for t in t_in]
        s_shapes = [shape(s) for s in s_in]
        if t_shapes != s_shapes:
            raise ValueError(
                "Expected `teacher` and `student` to take the same inputs. "
                f"Received: teacher inputs {t_shapes}, student inputs "
                f"{s_shapes}. Put any resizing inside the teacher (a "
                "Functional model that starts with `keras.layers.Resizing`)."
            )
    for name, model in (("teacher", teacher), ("student", student)):
        outputs = symbolic_outputs(model)
        if outputs is not None and len(outputs) != 1:
            raise ValueError(
                f"Expected `{name}` to have a single output (logits or "
                f"probabilities). Received: {name} with {len(outputs)} "
                "outputs"
            )
    t_out, s_out = symbolic_outputs(teacher), symbolic_outputs(student)
    if t_out and s_out:
        check_output_shapes(shape(t_out[0]), shape(s_out[0]))


def check_output_shapes(teacher_shape, student_shape):
    if tuple(teacher_shape) != tuple(student_shape):
        raise ValueError(
            "Expected `teacher` and `student` outputs of the same shape "
            "(the same classes). Received: teacher output shape "
            f"{tuple(teacher_shape)}, student output shape "
            f"{tuple(student_shape)}"
        )
    if teacher_shape and teacher_shape[-1] == 1:
        raise ValueError(
            "Expected outputs with at least 2 classes: the soft targets "
            "are a softmax over the last axis, which is always 1 for a "
            "single unit, so nothing would be distilled. For a binary "
            "task give both models a 2-unit logits head. Received: output "
            f"shape {tuple(teacher_shape)}"
        )


# ------------------------------------------------ logits or probabilities


def output_layer(model):
    """The layer that produces `model`'s output, inside nested models, or
    None when it cannot be read (a subclassed model, a shared layer).

    In a single-output Functional or Sequential model the output layer is
    the last of `model.layers` (they are in the order of the graph); its
    `output` confirms it."""
    while True:
        outputs = symbolic_outputs(model)
        if outputs is None or not model.layers:
            return None
        layer = model.layers[-1]
        if isinstance(layer, keras.Model):
            model = layer
            continue
        try:
            produced = layer.output
        except (AttributeError, ValueError):  # called more than once
            return None
        return layer if produced is outputs[0] else None


def _final_activation(layer):
    """ "softmax", "sigmoid", "other" (an activation that is neither), or
    None when `layer` has no activation to read (a custom layer)."""
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    if activation is keras.activations.softmax:
        return "softmax"
    if activation is keras.activations.sigmoid:
        return "sigmoid"
    return "other"


def read_head(model):
    """`(layer, activation)`: the output layer (or None) and what
    `_final_activation` reads from it."""
    layer = output_layer(model)
    return layer, None if layer is None else _final_activation(layer)


def _where(model, role, layer):
    return f"{role} {model.name!r} ends in layer {getattr(layer, 'name', '')!r}"


def split_from_logits(from_logits):
    """`(teacher, student)` flags, each None or a bool, of the Distiller's
    `from_logits`: None, a bool, or such a pair."""
    flags = (
        tuple(from_logits)
        if isinstance(from_logits, (list, tuple))
        else (from_logits, from_logits)
    )
    if len(flags) != 2 or not all(
        f is None or isinstance(f, bool) for f in flags
    ):
        raise TypeError(
            "Expected `from_logits` to be None, a bool, or a pair "
            "`(teacher, student)` of None or bools. Received: "
            f"from_logits={from_logits!r}"
        )
    return flags


def outputs_are_logits(model, role, flag, from_logits):
    """Whether `model` outputs logits, read from its last layer.

    `flag=None` decides from that layer (a softmax means probabilities,
    any other activation logits) and refuses a model whose last layer
    cannot be read; `True`/`False` must not contradict a readable layer.
    `from_logits` is the Distiller's argument, quoted in the errors.
    """
    layer, activation = read_head(model)
    where = _where(model, role, layer)
    received = f"Received: from_logits={from_logits!r}"
    if activation == "sigmoid":
        raise ValueError(
            f"Expected `{role}` to output class logits or softmax "
            f"probabilities. Received: {where} with a sigmoid activation, "
            "whose outputs are not a distribution over the classes. Build "
            "the head without the activation (`activation=None`), with "
            "one unit per class (2 for a binary task)"
        )
    if activation == "softmax":
        if flag:
            raise ValueError(
                f"Expected logits from `{role}` (from_logits=True), but "
                f"{where}, which applies a softmax: its outputs are "
                "probabilities. Leave `from_logits=None` (the default) to "
                "distill them through their logarithm, or remove the "
                "softmax (`activation=None`, or "
                "`classifier_activation=None` for `keras.applications`). "
                f"{received}"
            )
        return False
    if flag is False and activation == "other":
        raise ValueError(
            f"Expected probabilities from `{role}` (from_logits=False), "
            f"but {where}, which applies no softmax: its outputs are "
            "logits. Leave `from_logits=None` (the default) to read each "
            f"model's last layer. {received}"
        )
    if flag is None and activation is None:
        if layer is not None:
            why = (
                f"its last layer {layer.name!r} ({type(layer).__name__}) "
                "has no activation to read"
            )
        elif symbolic_outputs(model) is None:
            why = "it is a subclassed model, with no graph to read"
        else:
            why = "its last layer is called more than once"
        raise ValueError(
            f"Cannot tell whether `{role}` {model.name!r} outputs logits or "
            f"probabilities: {why}. Say it with `from_logits`: True "
            "(logits) or False (softmax probabilities), or per model, "
            f"`from_logits=(teacher, student)` with None for a model "
            f"whose last layer can be read. {received}"
        )
    return flag is not False


_CROSSENTROPY_NAMES = (
    "sparse_categorical_crossentropy",
    "categorical_crossentropy",
    "SparseCategoricalCrossentropy",
    "CategoricalCrossentropy",
)


def _loss_from_logits(loss):
    """The `from_logits` of a compiled loss, or None when it cannot be
    read (a function, a structure of losses, a loss without it)."""
    if isinstance(loss, str):
        return False if loss in _CROSSENTROPY_NAMES else None
    if isinstance(loss, keras.losses.Loss):
        return loss.get_config().get("from_logits")
    return None


def check_hard_loss(loss, student):
    """Refuse a compiled `loss` whose `from_logits` contradicts the
    student's readable last layer (cross-entropy of logits read as
    probabilities, or of probabilities read as logits, trains silently
    wrong)."""
    layer, activation = read_head(student)
    from_logits = _loss_from_logits(loss)
    if activation not in ("softmax", "other") or from_logits is None:
        return
    if from_logits == (activation == "other"):
        return
    kind = "a softmax" if activation == "softmax" else "no softmax"
    name = loss if isinstance(loss, str) else type(loss).__name__
    raise ValueError(
        "Expected the hard loss given to `compile` to read the student's "
        f"outputs as they are: {_where(student, 'student', layer)}, which "
        f"applies {kind}, but the loss {name} has from_logits={from_logits}. "
        f"Compile it with `from_logits={not from_logits}`. Received: "
        f"loss={loss!r}"
    )


# ------------------------------------------------------- feature pairs


def check_feature_pairs(feature_pairs, teacher, student):
    if feature_pairs is None:
        return []
    ok = isinstance(feature_pairs, (list, tuple)) and all(
        isinstance(p, (list, tuple))
        and len(p) == 2
        and all(isinstance(n, str) for n in p)
        for p in feature_pairs
    )
    if not ok:
        raise TypeError(
            "Expected `feature_pairs` to be a list of "
            "`(teacher_layer_name, student_layer_name)` string pairs. "
            f"Received: feature_pairs={feature_pairs!r}"
        )
    pairs = [tuple(p) for p in feature_pairs]
    if not pairs:
        return pairs
    for role, model in (("teacher", teacher), ("student", student)):
        if symbolic_inputs(model) is None:
            raise ValueError(
                "Feature distillation reads intermediate layers, which "
                f"needs a Functional or Sequential `{role}`. Received: "
                f"subclassed {role}={model.name!r} with "
                f"feature_pairs={feature_pairs!r}"
            )
    for t_name, s_name in pairs:
        for role, model, name in (
            ("teacher", teacher, t_name),
            ("student", student, s_name),
        ):
            names = [layer.name for layer in model.layers]
            if name not in names:
                raise ValueError(
                    f"Expected `feature_pairs` to name layers of the {role}. "
                    f"No layer {name!r} in {role} {model.name!r} (layers: "
                    f"{', '.join(names)}). "
                    f"Received: feature_pairs={feature_pairs!r}"
                )
    return pairs


def projection(index, teacher_shape, student_shape):
    """A learnable map from a student feature to the teacher's shape."""
    name = f"feature_projection_{index}"
    if len(teacher_shape) != len(student_shape) or len(teacher_shape) not in (
        1,
        3,
    ):
        raise ValueError(
            "Expected each feature pair to be two vectors `(batch, width)` "
            "or two image features `(batch, height, width, channels)`. "
            f"Received: teacher feature shape {teacher_shape}, student "
            f"feature shape {student_shape} (pair {index})"
        )
    if len(teacher_shape) == 1:
        if teacher_shape == student_shape:
            return keras.layers.Identity(name=name)
        return keras.layers.Dense(teacher_shape[0], name=name)
    if None in teacher_shape[:2] or None in student_shape[:2]:
        raise ValueError(
            "Expected feature pairs with static spatial sizes. Received: "
            f"teacher feature shape {teacher_shape}, student feature shape "
            f"{student_shape} (pair {index})"
        )
    layers = []
    if teacher_shape[-1] != student_shape[-1]:
        layers.append(
            keras.layers.Conv2D(teacher_shape[-1], 1, name=f"{name}_conv")
        )
    if teacher_shape[:2] != student_shape[:2]:
        layers.append(
            keras.layers.Resizing(
                *teacher_shape[:2],
                interpolation="bilinear",
                name=f"{name}_resize",
            )
        )
    if not layers:
        return keras.layers.Identity(name=name)
    return keras.Sequential(layers, name=name)
