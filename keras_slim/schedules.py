"""Pruning schedules: the target sparsity as a function of the training step.

A schedule maps the optimizer's iteration count to the fraction of weights
that should be zero, and says at which steps the pruning masks are
recomputed (every `frequency` steps from `begin_step` to `end_step`).
`keras_slim.callbacks.MagnitudePruning` reads the step from
`model.optimizer.iterations`, so stopping and resuming `fit` (or reloading
a checkpoint with its optimizer) continues the schedule where it was.

Iterative pruning (prune, fine-tune, prune more) is the schedule itself: a
`PolynomialDecay` raises the sparsity in small steps with training in
between, which is what the seeds' prune/fine-tune loop does by hand.
"""

import math

import keras

from keras_slim import _validation

__all__ = ["PruningSchedule", "ConstantSparsity", "PolynomialDecay"]


def _check_sparsity(name, value):
    return _validation.check_range(name, value, 0, 1, high_inclusive=False)


def _check_steps(begin_step, end_step, frequency, allow_open_end):
    _validation.check_int("begin_step", begin_step, minimum=0)
    _validation.check_int("end_step", end_step)
    _validation.check_int("frequency", frequency, minimum=1)
    if allow_open_end and end_step == -1:
        return
    if end_step < begin_step:
        hint = " (or -1 for no end)" if allow_open_end else ""
        raise ValueError(
            f"Expected `end_step` >= `begin_step` ({begin_step}){hint}. "
            f"Received: end_step={end_step}"
        )


@keras.saving.register_keras_serializable(package="keras_slim")
class PruningSchedule:
    """Base class of pruning schedules: `step -> target sparsity`.

    Subclasses implement `__call__(step)`, returning the fraction of the
    pruned weights that should be zero after `step` optimizer steps (a
    float in [0, 1)), and `get_config`. The masks are recomputed at the
    update steps `begin_step, begin_step + frequency, ...` up to and
    including `end_step` (`end_step=-1`: no end), and at `end_step` itself
    so that the final sparsity is always reached.

    Args:
        begin_step: First step at which masks are computed.
        end_step: Last step at which masks are computed, or -1 for no end.
        frequency: Number of optimizer steps between mask updates, >= 1.

    Example:

    >>> class Halfway(PruningSchedule):
    ...     def __call__(self, step):
    ...         return 0.0 if step < self.begin_step else 0.5
    >>> schedule = Halfway(begin_step=10, end_step=10)
    >>> schedule(5), schedule(10)
    (0.0, 0.5)
    >>> schedule.updates_between(0, 9), schedule.updates_between(9, 12)
    (False, True)
    """

    def __init__(self, begin_step=0, end_step=-1, frequency=100):
        _check_steps(begin_step, end_step, frequency, allow_open_end=True)
        self.begin_step = begin_step
        self.end_step = end_step
        self.frequency = frequency

    def __call__(self, step):
        raise NotImplementedError(
            f"{type(self).__name__} must implement `__call__(step)`."
        )

    def updates_between(self, start, stop):
        """Return whether a mask update step lies in `(start, stop]`.

        `MagnitudePruning` calls this with the step it last saw and the
        current step, so updates are never missed when `fit` runs several
        steps per call (`steps_per_execution > 1`).
        """
        begin, end = self.begin_step, self.end_step
        low = max(start + 1, begin)
        high = stop if end < 0 else min(stop, end)
        if low > high:
            return False
        if end >= 0 and high == end:
            return True
        first = begin + math.ceil((low - begin) / self.frequency) * (
            self.frequency
        )
        return first <= high

    def get_config(self):
        return {
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="keras_slim")
class ConstantSparsity(PruningSchedule):
    """Prune to one fixed sparsity, recomputing masks every `frequency` steps.

    Use it to prune an already trained model straight to its target and
    let fine-tuning recover (one-shot pruning), or with `begin_step` to
    train dense first. Before `begin_step` the target is 0 (no pruning).

    Args:
        target: Fraction of weights set to zero, in [0, 1).
        begin_step: First step at which masks are computed, >= 0.
        end_step: Last step at which masks are computed, or -1 for no end.
        frequency: Number of optimizer steps between mask updates, >= 1.

    Raises:
        ValueError: `target` outside [0, 1), `end_step < begin_step`, or
            `frequency < 1`.

    Example:

    >>> schedule = ConstantSparsity(0.8, begin_step=100)
    >>> schedule(0), schedule(100), schedule(10_000)
    (0.0, 0.8, 0.8)
    """

    def __init__(self, target, begin_step=0, end_step=-1, frequency=100):
        _check_sparsity("target", target)
        super().__init__(begin_step, end_step, frequency)
        self.target = target

    def __call__(self, step):
        return 0.0 if step < self.begin_step else float(self.target)

    def get_config(self):
        return {"target": self.target, **super().get_config()}


@keras.saving.register_keras_serializable(package="keras_slim")
class PolynomialDecay(PruningSchedule):
    """Raise sparsity from `initial_sparsity` to `final_sparsity` gradually.

    The gradual pruning schedule of Zhu and Gupta: the sparsity rises fast
    at first, while the network has many redundant weights, and slowly
    near the end, `s(t) = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0)) **
    power`, with masks recomputed every `frequency` steps in between and at
    `end_step`. This is iterative pruning (prune, fine-tune, prune more)
    inside one `fit`. Before `begin_step` the target is 0 (no pruning);
    after `end_step` the masks stay fixed at `final_sparsity`.

    Reference:
        Zhu and Gupta, "To prune, or not to prune: exploring the efficacy
        of pruning for model compression", 2017
        (https://arxiv.org/abs/1710.01878).

    Args:
        initial_sparsity: Sparsity at `begin_step`, in [0, 1).
        final_sparsity: Sparsity at `end_step`, in [0, 1).
        begin_step: First step at which masks are computed, >= 0.
        end_step: Step at which `final_sparsity` is reached, >=
            `begin_step`.
        power: Exponent of the decay, > 0 (3 in the paper).
        frequency: Number of optimizer steps between mask updates, >= 1.

    Raises:
        ValueError: a sparsity outside [0, 1), `end_step < begin_step`,
            `frequency < 1` or `power <= 0`.

    Example:

    >>> schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=100)
    >>> [round(schedule(t), 3) for t in (0, 50, 100, 200)]
    [0.0, 0.7, 0.8, 0.8]
    """

    def __init__(
        self,
        initial_sparsity,
        final_sparsity,
        begin_step,
        end_step,
        power=3,
        frequency=100,
    ):
        _check_sparsity("initial_sparsity", initial_sparsity)
        _check_sparsity("final_sparsity", final_sparsity)
        _validation.check_range("power", power, 0, None, low_inclusive=False)
        _check_steps(begin_step, end_step, frequency, allow_open_end=False)
        super().__init__(begin_step, end_step, frequency)
        self.initial_sparsity = initial_sparsity
        self.final_sparsity = final_sparsity
        self.power = power

    def __call__(self, step):
        if step < self.begin_step:
            return 0.0
        span = self.end_step - self.begin_step
        progress = (
            1.0 if span == 0 else min(1.0, (step - self.begin_step) / span)
        )
        remaining = (1.0 - progress) ** self.power
        return float(
            self.final_sparsity
            + (self.initial_sparsity - self.final_sparsity) * remaining
        )

    def get_config(self):
        return {
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self.final_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "power": self.power,
            "frequency": self.frequency,
        }
