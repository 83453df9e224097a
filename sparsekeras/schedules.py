"""Pruning schedules: when to prune, and to which sparsity, as pure functions of the step.

A schedule is called with the optimizer's iteration count (one step counter for the whole model,
not one per layer) and returns `(should_prune, sparsity)`. It holds no state, so calling it twice
with the same step gives the same answer, and restarting training from a checkpoint resumes the
schedule exactly where it was. The mask maths lives in `sparsekeras._masks`; the callback only
orchestrates the two.

Example:

```python
schedule = PolynomialDecay(initial_sparsity=0.0, final_sparsity=0.9,
                           begin_step=1000, end_step=10000, frequency=100)
schedule(1000)   # (True, 0.0)
schedule(5500)   # (True, 0.7875)
schedule(10000)  # (True, 0.9)
schedule(10050)  # (False, 0.9)
```
"""
import math
import numbers
import operator

import keras
import numpy as np

__all__ = ["PruningSchedule", "ConstantSparsity", "PolynomialDecay"]


# ---- argument validation (Keras style: the message ends with "Received: name=value") -------

def _check_sparsity(name, value):
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or not 0.0 <= value < 1.0):
        raise ValueError(f"`{name}` must be a number in [0, 1). Received: {name}={value!r}")
    return float(value)


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def _check_step(step):
    """The step as a Python int; accepts ints, NumPy integers and 0-d integer arrays/tensors."""
    if isinstance(step, bool):
        raise ValueError(f"`step` must be a non-negative integer. Received: step={step!r}")
    try:
        value = operator.index(step)
    except TypeError:
        arr = None
        try:
            arr = np.asarray(step)
        except Exception:  # noqa: BLE001 - anything that is not array-like is rejected below
            pass
        if arr is None or arr.ndim != 0 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                f"`step` must be a non-negative integer. Received: step={step!r}") from None
        value = int(arr)
    if value < 0:
        raise ValueError(f"`step` must be a non-negative integer. Received: step={step!r}")
    return value


@keras.saving.register_keras_serializable(package="sparsekeras")
class PruningSchedule:
    """Base class of pruning schedules.

    Subclasses implement `__call__(step)` as a pure function of the step and `get_config()`
    returning every constructor argument; `from_config(config)` then rebuilds an equal schedule.
    Schedules are registered with Keras (`package="sparsekeras"`), so
    `keras.saving.serialize_keras_object` / `deserialize_keras_object` round-trip them and a saved
    `.keras` file loads without a custom-object scope.
    """

    def __call__(self, step):
        """Whether to prune at `step`, and the target sparsity there.

        Args:
            step: the optimizer's iteration count, a non-negative int.

        Returns:
            A tuple `(should_prune, sparsity)` of a Python bool and a Python float in [0, 1).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(step).")

    def sparsity_at(self, step):
        """The target sparsity at `step` (the second element of `self(step)`).

        Args:
            step: the optimizer's iteration count, a non-negative int.

        Returns:
            A Python float in [0, 1).
        """
        return self(step)[1]

    def get_config(self):
        """Every constructor argument, as a JSON-serializable dict."""
        raise NotImplementedError(f"{type(self).__name__} must implement get_config().")

    @classmethod
    def from_config(cls, config):
        """Rebuild a schedule from the output of `get_config()`."""
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="sparsekeras")
class ConstantSparsity(PruningSchedule):
    """Prune to a fixed sparsity every `frequency` steps.

    Pruning happens at steps `begin_step, begin_step + frequency, ...` while
    `step <= end_step` (`end_step=-1` prunes forever). The returned sparsity is `target_sparsity`
    at every step: it is the sparsity a mask has whenever pruning is applied (before `begin_step`
    no pruning happens, so the weights stay dense).

    Args:
        target_sparsity: fraction of weights to prune, in [0, 1).
        begin_step: first step at which to prune, >= 0.
        end_step: last step at which pruning may happen, > begin_step, or -1 for no end.
        frequency: prune every this many steps, >= 1.

    Example:

    ```python
    schedule = ConstantSparsity(0.5, begin_step=100, frequency=50)
    schedule(100)  # (True, 0.5)
    schedule(120)  # (False, 0.5)
    ```
    """

    def __init__(self, target_sparsity, begin_step=0, end_step=-1, frequency=100):
        self.target_sparsity = _check_sparsity("target_sparsity", target_sparsity)
        self.begin_step = _check_int("begin_step", begin_step, 0)
        if isinstance(end_step, bool) or not isinstance(end_step, numbers.Integral) or (
                end_step != -1 and end_step <= self.begin_step):
            raise ValueError(
                "`end_step` must be -1 (no end) or an integer > begin_step "
                f"(begin_step={self.begin_step}). Received: end_step={end_step!r}")
        self.end_step = int(end_step)
        self.frequency = _check_int("frequency", frequency, 1)

    def __call__(self, step):
        step = _check_step(step)
        in_range = step >= self.begin_step and (self.end_step == -1 or step <= self.end_step)
        should_prune = in_range and (step - self.begin_step) % self.frequency == 0
        return bool(should_prune), self.target_sparsity

    def get_config(self):
        return {"target_sparsity": self.target_sparsity, "begin_step": self.begin_step,
                "end_step": self.end_step, "frequency": self.frequency}


@keras.saving.register_keras_serializable(package="sparsekeras")
class PolynomialDecay(PruningSchedule):
    """Gradual pruning of Zhu & Gupta (2017), "To prune, or not to prune".

    The sparsity rises from `initial_sparsity` to `final_sparsity` between `begin_step` (t0) and
    `end_step` (t1), fast at first and slowly at the end:

        s(t) = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0)) ** power    for t0 <= t <= t1,

    `s_i` before t0 and `s_f` after t1. It never decreases with the step (masks only ever lose
    entries). Pruning happens at `t0, t0 + frequency, ...` and at `t1` exactly, so the final
    sparsity is always reached, and only within [t0, t1].

    Args:
        initial_sparsity: sparsity at `begin_step`, in [0, 1).
        final_sparsity: sparsity from `end_step` on, in [0, 1) and >= `initial_sparsity`.
        begin_step: first pruning step, >= 0.
        end_step: last pruning step, > begin_step.
        power: exponent of the decay, > 0 (3 in the paper).
        frequency: prune every this many steps, >= 1.

    Example:

    ```python
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=100, power=3, frequency=10)
    schedule(50)   # (True, 0.7): 0.8 - 0.8 * 0.5 ** 3
    schedule(55)   # (False, ...)
    schedule(100)  # (True, 0.8)
    ```
    """

    def __init__(self, initial_sparsity, final_sparsity, begin_step, end_step, power=3,
                 frequency=100):
        self.initial_sparsity = _check_sparsity("initial_sparsity", initial_sparsity)
        self.final_sparsity = _check_sparsity("final_sparsity", final_sparsity)
        if self.final_sparsity < self.initial_sparsity:
            raise ValueError(
                "`final_sparsity` must be >= `initial_sparsity` (pruning never grows weights "
                f"back). Received: initial_sparsity={initial_sparsity!r}, "
                f"final_sparsity={final_sparsity!r}")
        self.begin_step = _check_int("begin_step", begin_step, 0)
        if (isinstance(end_step, bool) or not isinstance(end_step, numbers.Integral)
                or end_step <= self.begin_step):
            raise ValueError(f"`end_step` must be an integer > begin_step "
                             f"(begin_step={self.begin_step}). Received: end_step={end_step!r}")
        self.end_step = int(end_step)
        if (isinstance(power, bool) or not isinstance(power, numbers.Real)
                or not math.isfinite(power) or power <= 0):
            raise ValueError(f"`power` must be a finite number > 0. Received: power={power!r}")
        self.power = power if isinstance(power, int) else float(power)
        self.frequency = _check_int("frequency", frequency, 1)

    def __call__(self, step):
        step = _check_step(step)
        t0, t1 = self.begin_step, self.end_step
        s_i, s_f = self.initial_sparsity, self.final_sparsity
        if step < t0:
            return False, s_i
        if step >= t1:
            return step == t1, s_f
        if step == t0:
            return True, s_i  # exactly: s_f + (s_i - s_f) need not round back to s_i
        remaining = 1.0 - (step - t0) / (t1 - t0)
        sparsity = s_f + (s_i - s_f) * remaining ** self.power
        # Clamp, so that rounding can never take the sparsity outside [s_i, s_f] (monotonicity).
        sparsity = min(max(sparsity, s_i), s_f)
        return (step - t0) % self.frequency == 0, sparsity

    def get_config(self):
        return {"initial_sparsity": self.initial_sparsity, "final_sparsity": self.final_sparsity,
                "begin_step": self.begin_step, "end_step": self.end_step, "power": self.power,
                "frequency": self.frequency}
