"""The train step that keeps pruned zeros at zero on every backend.

`fit` builds its train function before `on_train_begin`, so a mask
attached by a callback (`_masks.hold`) needs a new one; on JAX, whose
traced step holds the masks as constants, the new step also keeps zeros
at zero itself. Used by `MagnitudePruning` and `ChannelPruning`.
"""

import keras
import numpy as np

from keras_slim.pruning._masks import mask_constraints


def masks_are_traced():
    """Whether the compiled train step holds the masks as constants (JAX)."""
    return keras.backend.backend() == "jax"


def refresh_released(variables):
    """Record, on JAX, which zero weights the next trace must let move.

    A weight that is exactly zero and unmasked (by every mask on it) is
    released; the traced step keeps every other zero at zero. Returns
    `True` when the current trace disagrees with the masks on a weight
    that is zero now (a newly masked weight it releases, or a newly
    released one it holds): the train step must then be rebuilt.
    Released weights that have moved off zero since need no retrace.
    Always `False` on TensorFlow and PyTorch.
    """
    if not masks_are_traced():
        return False
    retrace = False
    for variable in variables:
        chain = mask_constraints(variable)
        if not chain:
            continue
        zero = keras.ops.convert_to_numpy(variable) == 0
        for constraint in chain:
            masked = keras.ops.convert_to_numpy(constraint.mask) == 0
            wanted = zero & ~masked
            traced = constraint.released
            if traced is None:
                traced = np.zeros_like(wanted)
            if np.any(zero & (traced != wanted)):
                constraint.released = wanted
                retrace = True
    return retrace


_WRAPPED = "_keras_slim_keeps_zeros"


def _keep_zeros_step(model, step):
    """`model.train_step` (JAX: state in, state out) keeping zeros at zero.

    Each trainable variable with a `MaskConstraint` that was exactly zero
    before the optimizer's step is zero after it (`where(old == 0, 0,
    new)`), except the weights its constraints mark as released (a
    trace-time constant: `refresh_released` asks for a retrace when they
    change). The masks themselves are not in the traced state.
    """

    def train_step(state, data):
        logs, new_state = step(state, data)
        old, new = state[0], list(new_state[0])
        for i, variable in enumerate(model.trainable_variables):
            chain = mask_constraints(variable)
            if not chain:
                continue
            frozen = keras.ops.equal(old[i], 0)
            released = [c.released for c in chain]
            if all(r is not None and r.any() for r in released):
                free = np.logical_and.reduce(released)
                frozen = keras.ops.logical_and(
                    frozen, keras.ops.convert_to_tensor(~free)
                )
            new[i] = keras.ops.where(
                frozen, keras.ops.zeros_like(new[i]), new[i]
            )
        return logs, (new, *new_state[1:])

    setattr(train_step, _WRAPPED, True)
    train_step.wrapped = step
    return train_step


_BUILT = "_keras_slim_masked_train_function"


def rebuild_train_function(model, reuse=False):
    """Make `fit` use a new train function that sees the current masks.

    `fit` builds its train function before `on_train_begin`; a constraint
    attached later is not in it. On JAX the new function also keeps zeros
    at zero (`_keep_zeros_step`), and it is a new Python function each
    time, as JAX caches a trace per function. Tracing happens at the next
    step, so rebuilding twice before it costs nothing.

    With `reuse` (nothing was attached or released since), a JAX `fit`
    that finds the train function this module built for the previous
    `fit` keeps it: it already keeps the zeros of the same variables, and
    a new one would be traced and compiled again (about 6 s on the demo
    CNN, at every `fit` call).
    """
    traced = masks_are_traced()
    if traced:
        step = model.train_step
        step = getattr(step, "wrapped", step)
        model.train_step = _keep_zeros_step(model, step)
        current = getattr(model, "train_function", None)
        if (
            reuse
            and current is not None
            and getattr(model, _BUILT, None) is current
        ):
            return
    model.make_train_function(force=True)
    if traced:
        object.__setattr__(model, _BUILT, model.train_function)


def restore_train_step(model):
    """Give `model` back its own `train_step` once `fit` ends.

    The compiled step of this `fit` keeps the zeros; a later `fit` builds
    a new one, whose constraints read the masks afresh. Does nothing if
    the step is not wrapped (another callback restored it already).
    """
    step = model.train_step
    if not getattr(step, _WRAPPED, False):
        return
    del model.train_step  # the class's method again, unless the
    if model.train_step != step.wrapped:  # user had set their own
        model.train_step = step.wrapped
