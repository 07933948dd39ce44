"""Tests for keras_slim.schedules."""

import keras
import pytest

from keras_slim import schedules
from keras_slim.schedules import ConstantSparsity
from keras_slim.schedules import PolynomialDecay


def test_constant_sparsity_is_zero_before_begin_then_target():
    schedule = ConstantSparsity(0.8, begin_step=10)
    assert [schedule(t) for t in (0, 9, 10, 10_000)] == [0.0, 0.0, 0.8, 0.8]


def test_polynomial_decay_follows_zhu_gupta_formula():
    schedule = PolynomialDecay(0.2, 0.9, begin_step=10, end_step=110, power=3)
    assert schedule(5) == 0.0
    assert schedule(10) == pytest.approx(0.2)
    # s_f + (s_i - s_f) * (1 - 0.5) ** 3
    assert schedule(60) == pytest.approx(0.9 - 0.7 * 0.125)
    assert schedule(110) == pytest.approx(0.9)
    assert schedule(500) == pytest.approx(0.9)


def test_polynomial_decay_rises_monotonically():
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=100)
    values = [schedule(t) for t in range(101)]
    assert values == sorted(values)
    assert values[0] == 0.0 and values[-1] == pytest.approx(0.8)


def test_update_steps_every_frequency_and_at_end():
    schedule = PolynomialDecay(
        0.0, 0.5, begin_step=5, end_step=27, frequency=10
    )
    updates = [t for t in range(60) if schedule.updates_between(t - 1, t)]
    # 5, 15, 25 on the frequency grid, and the end step itself.
    assert updates == [5, 15, 25, 27]


def test_update_between_sees_steps_skipped_by_steps_per_execution():
    schedule = ConstantSparsity(0.5, begin_step=0, frequency=10)
    assert schedule.updates_between(8, 12)  # crosses step 10
    assert not schedule.updates_between(10, 19)
    assert schedule.updates_between(19, 20)


def test_constant_sparsity_without_end_updates_forever():
    schedule = ConstantSparsity(0.5, frequency=100)
    assert schedule.updates_between(99_999, 100_000)


@pytest.mark.parametrize(
    "schedule",
    [
        ConstantSparsity(0.75, begin_step=3, end_step=50, frequency=7),
        PolynomialDecay(
            0.1, 0.9, begin_step=2, end_step=40, power=2, frequency=4
        ),
    ],
    ids=["constant", "polynomial"],
)
def test_config_round_trips_through_keras_serialization(schedule):
    config = schedule.get_config()
    assert type(schedule).from_config(config).get_config() == config
    serialized = keras.saving.serialize_keras_object(schedule)
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is type(schedule)
    assert restored.get_config() == config
    assert [restored(t) for t in range(60)] == [schedule(t) for t in range(60)]


def test_base_schedule_needs_call():
    with pytest.raises(NotImplementedError, match="__call__"):
        schedules.PruningSchedule()(0)


@pytest.mark.parametrize("target", [-0.1, 1.0, 1.2])
def test_constant_sparsity_outside_unit_interval_raises(target):
    with pytest.raises(ValueError, match=r"`target` in \[0, 1\)"):
        ConstantSparsity(target)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"initial_sparsity": 1.0}, r"`initial_sparsity` in \[0, 1\)"),
        ({"final_sparsity": -0.5}, r"`final_sparsity` in \[0, 1\)"),
        ({"end_step": 5}, r"`end_step` >= `begin_step` \(10\).*end_step=5"),
        ({"frequency": 0}, r"`frequency` to be an integer >= 1"),
        ({"power": 0}, r"`power` in \(0, inf\]"),
        ({"end_step": -1}, r"`end_step` >= `begin_step`"),
    ],
)
def test_polynomial_decay_bad_arguments_raise(kwargs, match):
    args = dict(
        initial_sparsity=0.0, final_sparsity=0.8, begin_step=10, end_step=20
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        PolynomialDecay(**args)


def test_end_step_before_begin_step_raises():
    with pytest.raises(ValueError, match=r"or -1 for no end.*end_step=3"):
        ConstantSparsity(0.5, begin_step=4, end_step=3)


def test_non_integer_steps_raise_type_error():
    with pytest.raises(TypeError, match="`frequency` to be an integer"):
        ConstantSparsity(0.5, frequency=2.5)
