"""Pruning schedules (`sparsekeras.schedules`): formula, pruning steps, validation, serialization."""
import inspect
import json

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st


from sparsekeras import schedules as schedules
ConstantSparsity = schedules.ConstantSparsity
PolynomialDecay = schedules.PolynomialDecay
PruningSchedule = schedules.PruningSchedule


def _prune_steps(schedule, stop):
    return [t for t in range(stop) if schedule(t)[0]]


# ---- PolynomialDecay: the formula ---------------------------------------------------------

@pytest.mark.parametrize("step, expected", [
    (0, 0.0),
    (25, 0.8 - 0.8 * 0.75 ** 3),   # 0.4625
    (50, 0.7),                     # 0.8 - 0.8 * 0.125
    (75, 0.8 - 0.8 * 0.25 ** 3),   # 0.7875
    (99, 0.8 - 0.8 * 0.01 ** 3),
    (100, 0.8),
    (1000, 0.8),
])
def test_polynomial_decay_cubic_by_hand(step, expected):
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=100, power=3, frequency=10)
    assert schedule(step)[1] == pytest.approx(expected, abs=1e-12)
    assert schedule.sparsity_at(step) == schedule(step)[1]


@pytest.mark.parametrize("step, expected", [
    (0, 0.2), (99, 0.2), (100, 0.2), (150, 0.3), (200, 0.4), (250, 0.5), (300, 0.6), (301, 0.6),
])
def test_polynomial_decay_linear_with_offset_by_hand(step, expected):
    schedule = PolynomialDecay(0.2, 0.6, begin_step=100, end_step=300, power=1, frequency=50)
    assert schedule(step)[1] == pytest.approx(expected, abs=1e-12)


def test_polynomial_decay_fractional_power():
    schedule = PolynomialDecay(0.1, 0.5, begin_step=10, end_step=50, power=0.5)
    # t = 20: 0.5 + (0.1 - 0.5) * (1 - 10/40) ** 0.5
    assert schedule(20)[1] == pytest.approx(0.5 - 0.4 * 0.75 ** 0.5, abs=1e-12)


def test_polynomial_decay_endpoints_exact():
    schedule = PolynomialDecay(0.3, 0.95, begin_step=7, end_step=1007, power=3, frequency=13)
    assert schedule(7) == (True, 0.3)
    assert schedule(1007) == (True, 0.95)
    assert schedule(6) == (False, 0.3)
    assert schedule(0) == (False, 0.3)


# ---- when to prune ------------------------------------------------------------------------

def test_polynomial_decay_prunes_at_frequency_points_and_end_step():
    schedule = PolynomialDecay(0.1, 0.9, begin_step=10, end_step=95, frequency=20)
    assert _prune_steps(schedule, 300) == [10, 30, 50, 70, 90, 95]


def test_polynomial_decay_end_step_on_the_grid_is_pruned_once():
    schedule = PolynomialDecay(0.0, 0.5, begin_step=0, end_step=40, frequency=10)
    assert _prune_steps(schedule, 100) == [0, 10, 20, 30, 40]


def test_polynomial_decay_frequency_one():
    schedule = PolynomialDecay(0.0, 0.5, begin_step=3, end_step=8, frequency=1)
    assert _prune_steps(schedule, 20) == [3, 4, 5, 6, 7, 8]


def test_constant_sparsity_prune_steps():
    schedule = ConstantSparsity(0.5, begin_step=5, end_step=45, frequency=10)
    assert _prune_steps(schedule, 200) == [5, 15, 25, 35, 45]
    assert all(schedule(t)[1] == 0.5 for t in range(200))


def test_constant_sparsity_end_step_off_the_grid():
    schedule = ConstantSparsity(0.5, begin_step=0, end_step=25, frequency=10)
    assert _prune_steps(schedule, 100) == [0, 10, 20]


def test_constant_sparsity_forever():
    schedule = ConstantSparsity(0.75, begin_step=100, frequency=100)
    assert schedule(99) == (False, 0.75)
    assert schedule(100) == (True, 0.75)
    assert schedule(150) == (False, 0.75)
    assert schedule(10 ** 12) == (True, 0.75)
    assert _prune_steps(ConstantSparsity(0.5), 301) == [0, 100, 200, 300]


def test_before_begin_step_never_prunes():
    for schedule in (ConstantSparsity(0.5, begin_step=50, frequency=1),
                     PolynomialDecay(0.0, 0.5, begin_step=50, end_step=60, frequency=1)):
        assert not any(schedule(t)[0] for t in range(50))


def test_call_returns_python_types():
    for schedule in (ConstantSparsity(0.5), PolynomialDecay(0.0, 0.5, 0, 10)):
        should_prune, sparsity = schedule(np.int64(5))
        assert type(should_prune) is bool and type(sparsity) is float


@pytest.mark.parametrize("step", [np.int32(20), np.array(20), np.array(20, np.int64)])
def test_numpy_steps(step):
    schedule = PolynomialDecay(0.0, 0.5, begin_step=0, end_step=40, frequency=10)
    assert schedule(step) == schedule(20)


@pytest.mark.parametrize("step", [-1, 2.0, True, "3", None, np.array([1, 2])])
def test_bad_step(step):
    with pytest.raises(ValueError, match="step"):
        ConstantSparsity(0.5)(step)


# ---- pure function of the step ------------------------------------------------------------

def test_pure_function_of_step():
    schedule = PolynomialDecay(0.0, 0.9, begin_step=0, end_step=1000, frequency=7)
    forward = [schedule(t) for t in range(0, 1200, 3)]
    backward = [schedule(t) for t in reversed(range(0, 1200, 3))][::-1]
    assert forward == backward


@settings(max_examples=200, deadline=None)
@given(s_i=st.floats(0.0, 0.999), delta=st.floats(0.0, 1.0), begin=st.integers(0, 10 ** 6),
       span=st.integers(1, 10 ** 6), power=st.floats(0.01, 10.0), frequency=st.integers(1, 10 ** 4),
       fractions=st.lists(st.floats(-0.5, 1.5), min_size=2, max_size=50))
def test_polynomial_decay_monotone(s_i, delta, begin, span, power, frequency, fractions):
    s_f = min(s_i + delta * (1.0 - s_i), 0.999)
    schedule = PolynomialDecay(s_i, s_f, begin_step=begin, end_step=begin + span, power=power,
                               frequency=frequency)
    steps = sorted({max(0, begin + int(f * span)) for f in fractions} | {begin, begin + span})
    values = [schedule(t)[1] for t in steps]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert all(s_i <= v <= s_f for v in values)
    assert schedule(begin + span) == (True, s_f)
    assert schedule(begin) == (True, s_i)


@settings(max_examples=50, deadline=None)
@given(target=st.floats(0.0, 0.999), begin=st.integers(0, 1000), frequency=st.integers(1, 50))
def test_constant_sparsity_monotone_and_periodic(target, begin, frequency):
    schedule = ConstantSparsity(target, begin_step=begin, frequency=frequency)
    assert _prune_steps(schedule, begin + 5 * frequency + 1) == [begin + k * frequency
                                                                  for k in range(6)]
    assert {schedule(t)[1] for t in range(0, begin + 200, 7)} == {target}


# ---- serialization ------------------------------------------------------------------------

SCHEDULES = [
    ConstantSparsity(0.5),
    ConstantSparsity(0.25, begin_step=10, end_step=1000, frequency=7),
    PolynomialDecay(0.0, 0.9, begin_step=100, end_step=10000),
    PolynomialDecay(0.1, 0.5, begin_step=0, end_step=50, power=1.5, frequency=1),
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_get_config_from_config_round_trip(schedule):
    config = schedule.get_config()
    params = set(inspect.signature(type(schedule).__init__).parameters) - {"self"}
    assert set(config) == params  # every constructor argument, nothing else
    json.dumps(config)
    clone = type(schedule).from_config(config)
    assert clone == schedule and clone is not schedule
    assert clone.get_config() == config
    assert [clone(t) for t in range(0, 12000, 37)] == [schedule(t) for t in range(0, 12000, 37)]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_keras_serialization_round_trip(schedule):
    serialized = keras.saving.serialize_keras_object(schedule)
    assert serialized["registered_name"] == f"sparsekeras>{type(schedule).__name__}"
    serialized = json.loads(json.dumps(serialized))
    clone = keras.saving.deserialize_keras_object(serialized)
    assert type(clone) is type(schedule)
    assert clone.get_config() == schedule.get_config()
    assert [clone(t) for t in range(0, 12000, 37)] == [schedule(t) for t in range(0, 12000, 37)]


def test_registered_names():
    for cls in (PruningSchedule, ConstantSparsity, PolynomialDecay):
        assert keras.saving.get_registered_name(cls) == f"sparsekeras>{cls.__name__}"
        assert keras.saving.get_registered_object(f"sparsekeras>{cls.__name__}") is cls


def test_repr():
    assert repr(ConstantSparsity(0.5, begin_step=3)) == (
        "ConstantSparsity(target_sparsity=0.5, begin_step=3, end_step=-1, frequency=100)")
    assert repr(PolynomialDecay(0.0, 0.9, 1, 2)) == (
        "PolynomialDecay(initial_sparsity=0.0, final_sparsity=0.9, begin_step=1, end_step=2, "
        "power=3, frequency=100)")


def test_base_class_is_abstract():
    with pytest.raises(NotImplementedError):
        PruningSchedule()(0)
    with pytest.raises(NotImplementedError):
        PruningSchedule().get_config()


# ---- validation ---------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(target_sparsity=1.0), "Received: target_sparsity=1.0"),
    (dict(target_sparsity=-0.1), "Received: target_sparsity=-0.1"),
    (dict(target_sparsity=float("nan")), "Received: target_sparsity=nan"),
    (dict(target_sparsity="0.5"), "Received: target_sparsity='0.5'"),
    (dict(target_sparsity=True), "Received: target_sparsity=True"),
    (dict(target_sparsity=0.5, begin_step=-1), "Received: begin_step=-1"),
    (dict(target_sparsity=0.5, begin_step=1.5), "Received: begin_step=1.5"),
    (dict(target_sparsity=0.5, begin_step=10, end_step=10), "Received: end_step=10"),
    (dict(target_sparsity=0.5, end_step=-2), "Received: end_step=-2"),
    (dict(target_sparsity=0.5, frequency=0), "Received: frequency=0"),
    (dict(target_sparsity=0.5, frequency=2.0), "Received: frequency=2.0"),
])
def test_constant_sparsity_bad_args(kwargs, message):
    with pytest.raises(ValueError) as info:
        ConstantSparsity(**kwargs)
    assert message in str(info.value)


_GOOD = dict(initial_sparsity=0.0, final_sparsity=0.5, begin_step=0, end_step=10)


@pytest.mark.parametrize("override, message", [
    (dict(final_sparsity=1.2), "Received: final_sparsity=1.2"),
    (dict(final_sparsity=1.0), "Received: final_sparsity=1.0"),
    (dict(initial_sparsity=-0.5), "Received: initial_sparsity=-0.5"),
    (dict(initial_sparsity=0.6), "final_sparsity=0.5"),
    (dict(begin_step=-3), "Received: begin_step=-3"),
    (dict(end_step=0), "Received: end_step=0"),
    (dict(end_step=-1), "Received: end_step=-1"),
    (dict(begin_step=20, end_step=10), "Received: end_step=10"),
    (dict(power=0), "Received: power=0"),
    (dict(power=-1.0), "Received: power=-1.0"),
    (dict(power=float("inf")), "Received: power=inf"),
    (dict(frequency=0), "Received: frequency=0"),
])
def test_polynomial_decay_bad_args(override, message):
    with pytest.raises(ValueError) as info:
        PolynomialDecay(**{**_GOOD, **override})
    assert message in str(info.value)


def test_numpy_scalar_arguments_are_normalized():
    schedule = PolynomialDecay(np.float32(0.25), np.float64(0.5), np.int64(0), np.int32(10))
    config = schedule.get_config()
    assert all(type(v) in (int, float) for v in config.values())
    json.dumps(config)
