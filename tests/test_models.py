"""The individual models and the slot arrays they live in."""

from __future__ import annotations

import numpy as np

from sidecar.engine.models import Field, LastValue, LinearRegression, Now, Slots, Step


def step(idx: np.ndarray, t: np.ndarray, y: np.ndarray) -> Step:
    k = idx.size
    return Step(idx=idx, t=t, y=y, t_prev=np.full(k, np.nan), y_prev=np.full(k, np.nan),
                n_prev=np.ones(k, dtype=np.int64), dt=np.full(k, 60.0), gap=np.zeros(k, dtype=bool))


def test_slots_grow_reset_dump_load() -> None:
    s = Slots({"a": Field((2,), np.float64, np.nan), "b": Field((), np.int64, 0)}, 2)
    s["a"][1] = [1.0, 2.0]
    s.grow(5)
    assert s["a"].shape == (5, 2)
    np.testing.assert_array_equal(s["a"][1], [1.0, 2.0])
    assert np.isnan(s["a"][4]).all()
    d = s.dump("x.", 3)
    s.reset(np.array([1]))
    assert np.isnan(s["a"][1]).all()
    s.load("x.", d, 3)
    np.testing.assert_array_equal(s["a"][1], [1.0, 2.0])


def test_last_value_repeats_the_last_sample() -> None:
    m = LastValue(4)
    now = Now(idx=np.array([0, 2]), t=np.array([0.0, 5.0]), y=np.array([3.0, -1.0]),
              n=np.array([1, 1]), dt=np.array([60.0, 60.0]))
    np.testing.assert_array_equal(m.predict(now, np.ones((2, 3)))[:, 0], [[3.0] * 3, [-1.0] * 3])


def test_linear_matches_least_squares_on_irregular_times() -> None:
    rng = np.random.default_rng(0)
    m = LinearRegression(1, window_s=3600.0, buckets=12)
    t = 1.6e9 + np.cumsum(rng.uniform(10, 50, size=400))
    y = 50.0 + rng.normal(size=400)
    idx = np.array([0])
    for r in range(400):
        m.update(step(idx, t[r:r + 1], y[r:r + 1]))
    now = Now(idx=idx, t=t[-1:], y=y[-1:], n=np.array([400]), dt=np.array([30.0]))
    got = m.predict(now, np.array([[600.0, 3600.0]]))[0, 0]
    # the live window is the buckets of width 300 s that started after now - 3600
    width = 300.0
    first = (np.floor(t[-1] / width) - 11) * width
    w = t >= first
    b, a = np.polyfit(t[w] - t[-1], y[w], 1)
    np.testing.assert_allclose(got, [a + b * 600.0, a + b * 3600.0], rtol=1e-9)
