"""The ring buffer keeps the newest samples, in order, and slots are reused clean."""

from __future__ import annotations

import numpy as np
import pytest

from sidecar.engine.series import SeriesTable


def test_ring_keeps_newest_in_order_and_grows() -> None:
    s = SeriesTable(history_size=4, capacity=1)
    a, new = s.add("t1", "cpu_usage", 0)
    b, _ = s.add("t1", "custom", 0)
    assert new and s.capacity >= 2 and s.add("t1", "cpu_usage", 0) == (a, False)
    for k in range(6):
        s.append(np.array([a, b]), np.array([float(k), float(k)]), np.array([10.0 * k, -k]))
    t, y = s.history(a)
    assert t.tolist() == [2.0, 3.0, 4.0, 5.0] and y.tolist() == [20.0, 30.0, 40.0, 50.0]
    assert s.nonneg[a] and not s.nonneg[b]
    s.remove([a])
    c, new = s.add("t2", "cpu_usage", 1)
    assert c == a and new and s.history(c)[0].size == 0 and s.last_t[c] == -np.inf


def test_values_far_from_zero_keep_the_precision_of_their_changes_across_laps() -> None:
    s = SeriesTable(history_size=5, capacity=1)
    a, _ = s.add("t1", "boot_time_seconds", 0)
    b, _ = s.add("t1", "ratio", 0)
    assert s.values.dtype == np.float32
    t0 = 1_796_000_000.0
    for k in range(13):                                  # two laps and a bit: re-based at each
        s.append(np.array([a, b]), np.array([t0 + 15 * k] * 2), np.array([t0 + 15 * k + 0.25, 0.1 * k]))
    t, y = s.history(a)
    assert t.tolist() == [t0 + 15 * k for k in range(8, 13)]
    assert y.dtype == np.float64 and y.tolist() == [t0 + 15 * k + 0.25 for k in range(8, 13)]   # exact
    assert s.history(b)[1] == pytest.approx([0.1 * k for k in range(8, 13)], rel=1e-6)
    assert s.last_v[b] == 0.1 * 12                                                         # the latest, float64


def test_times_are_float32_offsets_with_the_newest_exact_across_laps() -> None:
    s = SeriesTable(history_size=5, capacity=1)
    a, _ = s.add("t1", "cpu_usage", 0)
    b, _ = s.add("t1", "custom", 0)
    assert s.times.dtype == np.float32
    t0 = 1_796_000_000.123456                            # a clock's time: not on any grid
    grid = 1_796_000_010.0
    for k in range(13):                                  # two laps and a bit: re-based at each
        s.append(np.array([a, b]), np.array([t0 + 15.001 * k, grid + 15 * k]), np.array([1.0, 2.0]))
    t, _ = s.history(a)
    assert t.dtype == np.float64 and t[-1] == s.last_t[a] == t0 + 15.001 * 12          # the newest: exact
    assert t == pytest.approx([t0 + 15.001 * k for k in range(8, 13)], abs=1e-3, rel=0)
    assert s.history(b)[0].tolist() == [grid + 15 * k for k in range(8, 13)]            # whole seconds: exact
