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


def test_season_medians_follow_the_phase_and_ignore_a_spike() -> None:
    from sidecar.engine.models_bucket import BucketModels

    m = BucketModels(1)
    pattern = np.array([0.0, 10.0, 20.0, 30.0])
    idx = np.array([0])
    n = 80
    t: np.ndarray = 1.7e9 + 300.0 * np.arange(n, dtype=np.float64)
    y = pattern[np.arange(n) % 4]
    y[n - 3] = 1000.0  # a one-off spike in the phase of bucket n+1
    for r in range(n):
        m.update(Step(idx=idx, t=t[r:r + 1], y=y[r:r + 1], t_prev=t[r - 1:r] if r else np.full(1, np.nan),
                      y_prev=y[r - 1:r] if r else np.full(1, np.nan), n_prev=np.array([r]),
                      dt=np.full(1, 300.0 if r else np.nan), gap=np.zeros(1, dtype=bool)))
        if r == 20:  # five periods of 2 buckets are closed, five of 12 are not
            early = m.predict(Now(idx=idx, t=t[r:r + 1], y=y[r:r + 1], n=np.array([r + 1]), dt=np.array([300.0])),
                              np.array([[300.0]]))[0, :, 0]
            assert np.isfinite(early[m.names.index("season_median_2b")])
            assert np.isnan(early[m.names.index("season_median_12b")])
    now = Now(idx=idx, t=t[-1:], y=y[-1:], n=np.array([n]), dt=np.array([300.0]))
    h: np.ndarray = 300.0 * np.arange(1, 9, dtype=np.float64)[None, :]
    got = m.predict(now, h)[0, m.names.index("season_median_4b")]
    np.testing.assert_allclose(got, pattern[(n - 1 + np.arange(1, 9)) % 4])


def test_season_medians_with_a_number_of_periods_each_match_a_direct_median() -> None:
    from sidecar.engine.models_bucket import BucketModels

    periods, ks = (2, 5, 12), (3, 4, 9)
    m = BucketModels(1, median_periods=periods, median_periods_k=ks)
    rng = np.random.default_rng(2)
    idx = np.array([0])
    n = 130
    t: np.ndarray = 1.7e9 + 300.0 * np.arange(n, dtype=np.float64)
    y = rng.normal(size=n)
    for r in range(n):
        m.update(Step(idx=idx, t=t[r:r + 1], y=y[r:r + 1], t_prev=t[r - 1:r] if r else np.full(1, np.nan),
                      y_prev=y[r - 1:r] if r else np.full(1, np.nan), n_prev=np.array([r]),
                      dt=np.full(1, 300.0 if r else np.nan), gap=np.zeros(1, dtype=bool)))
    # one sample per 5-minute bucket, each closing its bucket: bucket b holds y[b], the last closed is n - 1
    for s_i, (p, k) in enumerate(zip(periods, ks, strict=True)):
        for d in range(1, m.sm_d + 1):
            newest = n - 1 + d - -(-d // p) * p
            want = np.median(y[newest - p * np.arange(k)])
            np.testing.assert_allclose(m.slots["smc"][0, s_i, d - 1], want, rtol=1e-6, atol=1e-6)


def test_robust_level_shrugs_off_a_spike_and_follows_a_shift() -> None:
    from sidecar.engine.models_smooth import RobustLevel

    m = RobustLevel(1, rates=(0.1,), clip=3.0)
    rng = np.random.default_rng(1)
    idx = np.array([0])
    y = np.concatenate([10.0 + rng.normal(0, 0.5, 200), [1000.0], 10.0 + rng.normal(0, 0.5, 5),
                        30.0 + rng.normal(0, 0.5, 100)])
    levels = []
    for r, v in enumerate(y):
        s = step(idx, np.array([60.0 * r]), np.array([v]))
        if r == 0:
            s = Step(idx=idx, t=s.t, y=s.y, t_prev=s.t_prev, y_prev=s.y_prev, n_prev=np.zeros(1, dtype=np.int64),
                     dt=np.full(1, np.nan), gap=s.gap)
        m.update(s)
        now = Now(idx=idx, t=np.array([60.0 * r]), y=np.array([v]), n=np.array([r + 1]), dt=np.array([60.0]))
        levels.append(m.predict(now, np.array([[300.0, 3600.0]]))[0, 0])
    lv = np.array(levels)
    assert (lv[:, 0] == lv[:, 1]).all()  # a level: the same at every horizon
    assert abs(lv[199, 0] - 10.0) < 0.5
    # a plain moving average at rate 0.1 would jump by about 99 on the spike; the clipped step is a few deviations
    assert lv[200, 0] - lv[199, 0] < 1.0
    # a lasting shift is followed: within 60 samples the level is at the new value
    assert abs(lv[-1, 0] - 30.0) < 1.0
    assert np.isfinite(lv).all() and lv.min() >= y.min() and lv.max() <= y.max()


def test_the_daily_mean_forecasts_a_noisy_daily_cycle_better_than_any_copy_of_the_last_value() -> None:
    """Noise around a daily cycle: the last value, yesterday's value and the last value moved by the profile all
    carry one sample's noise into the forecast; the profile's own slow mean at the target's phase averages it
    away (about 1/sqrt(2) of the last value's error on white noise)."""
    from sidecar.engine.forecast import ForecastBank

    rng = np.random.default_rng(4)
    step_s, days = 300.0, 8
    t = 1_700_006_400.0 + step_s * np.arange(int(days * 86400 / step_s))
    cycle = 50.0 + 20.0 * np.sin(2 * np.pi * (t % 86400.0) / 86400.0)
    y = cycle + rng.normal(0, 5.0, t.size)
    bank = ForecastBank([300.0])
    idx = bank.add(1)
    names = bank.model_names
    pred = np.full((t.size, len(names)), np.nan)
    for r in range(t.size):
        bank.update(idx, t[r:r + 1], y[r:r + 1])
        pred[r] = bank.predict_models(idx)[0][:, 0]
    late = slice(t.size // 2, t.size - 1)                 # after four days: every phase seen often
    actual = y[1:][late.start:late.stop]

    def mae(name: str) -> float:
        return float(np.mean(np.abs(actual - pred[late, names.index(name)])))

    assert mae("daily_mean") < 0.8 * mae("last")
    assert mae("daily_mean") < min(mae("daily"), mae("daily_delta"))


def _replay_one_step(t: np.ndarray, y: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """Every model's forecast one sample (5 minutes) ahead, after each sample of one series."""
    from sidecar.engine.forecast import ForecastBank

    bank = ForecastBank([300.0])
    idx = bank.add(1)
    pred = np.full((t.size, len(bank.model_names)), np.nan)
    for r in range(t.size):
        bank.update(idx, t[r:r + 1], y[r:r + 1])
        pred[r] = bank.predict_models(idx)[0][:, 0]
    return bank.model_names, pred


def test_the_smoothed_daily_mean_averages_away_the_noise_a_few_days_leave_in_the_profile() -> None:
    """Three days of a smooth noisy cycle leave each phase's slow mean with a third of a sample's noise; the
    neighbouring phases hold independent noise around nearly the same value, so averaging them forecasts
    better, the wider kernel more."""
    rng = np.random.default_rng(5)
    step_s, days = 300.0, 4
    t = 1_700_006_400.0 + step_s * np.arange(int(days * 86400 / step_s))
    cycle = 50.0 + 20.0 * np.sin(2 * np.pi * (t % 86400.0) / 86400.0)
    names, pred = _replay_one_step(t, cycle + rng.normal(0, 5.0, t.size))
    late = slice(3 * 288, t.size - 1)                    # the fourth day, forecast from three

    def miss(name: str) -> float:
        """Mean distance of the forecasts from the cycle itself (what the noise hides)."""
        return float(np.mean(np.abs(cycle[late.start + 1:late.stop + 1] - pred[late, names.index(name)])))

    assert miss("daily_mean_s1") < 0.7 * miss("daily_mean")
    assert miss("daily_mean_s3") < miss("daily_mean_s1")


def test_the_smallest_smoothing_keeps_a_steep_daily_edge_that_a_wide_one_blurs() -> None:
    """A square daily cycle without noise: the one-bucket kernel's error at the edges stays a fraction of the
    widest one's, which is why the bank keeps several widths and lets the backtest choose."""
    step_s, days = 300.0, 3
    t = 1_700_006_400.0 + step_s * np.arange(int(days * 86400 / step_s))
    hours = (t % 86400.0) / 3600.0
    y = np.where((hours >= 8.0) & (hours < 18.0), 80.0, 20.0)
    names, pred = _replay_one_step(t, y)
    late = slice(2 * 288, t.size - 1)

    def mae(name: str) -> float:
        return float(np.mean(np.abs(y[late.start + 1:late.stop + 1] - pred[late, names.index(name)])))

    assert mae("daily_mean_s1") < 0.6 * mae("daily_mean_s3")


def test_the_daily_level_follows_a_day_that_runs_above_the_profile() -> None:
    """After a level shift the profile's slow mean still forecasts the old days for a week; the profile moved
    by the recent residual is back within the noise after a few buckets, and keeps the cycle's shape."""
    rng = np.random.default_rng(6)
    step_s, days = 300.0, 5
    t = 1_700_006_400.0 + step_s * np.arange(int(days * 86400 / step_s))
    y = 50.0 + 20.0 * np.sin(2 * np.pi * (t % 86400.0) / 86400.0) + rng.normal(0, 2.0, t.size)
    y[4 * 288:] += 30.0
    names, pred = _replay_one_step(t, y)
    after = slice(4 * 288 + 12, t.size - 1)               # an hour after the shift, to the end

    def mae(name: str) -> float:
        return float(np.mean(np.abs(y[after.start + 1:after.stop + 1] - pred[after, names.index(name)])))

    assert mae("daily_level") < 0.2 * mae("daily_mean_s1")
    assert mae("daily_level") < mae("median_3")
