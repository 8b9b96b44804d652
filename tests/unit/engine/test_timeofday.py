"""Behaviour of TimeOfDay: the daily habits fall at once and rise slowly, the context learns each bin's
shape and speaks only after two days of it, at any sampling interval, and its state round-trips."""

from __future__ import annotations

import numpy as np
import pytest

from sidecar.engine.timeofday import DAY_S, TimeOfDay

T0 = 1.7e9 - 1.7e9 % DAY_S  # a midnight


def _tod() -> TimeOfDay:
    return TimeOfDay(capacity=1, bins=24, days=7.0, contextual=True, short_samples=12.0, clip=3.0)


def _habit_after(days: list[float]) -> float:
    """The remembered deviation of hour 3 after days whose hour 3 reached the given deviations."""
    tod = _tod()
    idx, yes = np.array([0]), np.array([True])
    for d, dev in enumerate(days):
        cells = tod.cells(idx, np.array([T0 + d * DAY_S + 3 * 3600.0]), yes)
        assert cells is not None
        tod.remember(cells, yes, np.array([dev]))
    cells = tod.cells(idx, np.array([T0 + len(days) * DAY_S + 3 * 3600.0]), yes)
    assert cells is not None
    return float(tod.habit(cells, yes)[0])


def test_a_habit_falls_at_once_on_a_quiet_day_and_rises_slowly_on_a_loud_one() -> None:
    assert _habit_after([10.0] * 5) == pytest.approx(10.0)
    assert _habit_after([10.0] * 5 + [1.0]) == pytest.approx(1.0)          # one quiet day ends the excuse
    loud = _habit_after([10.0] * 5 + [80.0])
    assert 10.0 < loud < 10.0 + 0.2 * 70.0                                 # one bad night is not a habit


def _context_run(step: float, days: int, shape: np.ndarray) -> list[tuple[float, bool]]:
    """Feed ``days`` of a deviation that follows ``shape`` (per hour) and return, per sample of the last
    day, the value distance and whether the context spoke; the last day is flat (deviation 0)."""
    tod = _tod()
    idx, yes = np.array([0]), np.array([True])
    rng = np.random.default_rng(0)
    out = []
    n = int(days * DAY_S / step)
    for i in range(n):
        t = T0 + i * step
        hour = int((t % DAY_S) // 3600)
        last_day = i >= n - int(DAY_S / step)
        dev = 0.0 if last_day else shape[hour] + rng.normal(0.0, 1.0)
        cells = tod.cells(idx, np.array([t]), yes)
        assert cells is not None
        value, _, ready, _, learn = tod.context(idx, np.array([t]), yes, cells[:, 1], np.array([dev]),
                                                np.array([dev]), np.array([1e-9]), np.array([i]))
        learn()
        if last_day:
            out.append((float(value[0]), bool(ready[0])))
    return out


@pytest.mark.parametrize("step", [300.0, 3600.0])
def test_the_context_learns_each_hours_shape_at_any_sampling_interval(step: float) -> None:
    shape = np.where((np.arange(24) >= 8) & (np.arange(24) < 18), 30.0, 0.0)    # a working day's rise
    got = _context_run(step, 6, shape)
    per_hour = int(3600.0 / step)
    day_hours = [v for k, (v, ok) in enumerate(got) if 9 * per_hour <= k < 17 * per_hour and ok]
    night = [v for k, (v, ok) in enumerate(got) if k < 7 * per_hour and ok]
    assert len(day_hours) == 8 * per_hour                                     # every hour speaks after 5 days
    assert min(day_hours) > 3.0 * max(np.median(night), 0.5)                  # a flat working day is far off
    assert np.median(night) < 1.0                                             # a flat night is what nights are


def test_the_context_is_silent_before_two_days_of_its_hour() -> None:
    got = _context_run(300.0, 2, np.zeros(24))                                # the second day: one day learnt
    assert not any(ok for _, ok in got)


def test_state_round_trips_and_refuses_other_bins() -> None:
    a = _tod()
    idx, yes = np.array([0]), np.array([True])
    cells = a.cells(idx, np.array([T0 + 5 * 3600.0]), yes)
    assert cells is not None
    a.remember(cells, yes, np.array([4.0]))
    state = a.state_dict(1)
    b = _tod()
    b.load_state_dict(state, 1, 4)
    for k, v in b.state_dict(1).items():
        np.testing.assert_array_equal(v, state[k])
    other = TimeOfDay(capacity=1, bins=12, days=7.0, contextual=True, short_samples=12.0, clip=3.0)
    with pytest.raises(ValueError, match="daily state"):
        other.load_state_dict(state, 1, 1)
