"""Behaviour of AnomalyBank: what it must flag, what it must leave alone, and its state handling."""

from __future__ import annotations

import numpy as np
import pytest

from sidecar.engine.anomaly import AnomalyBank


def _stream(bank: AnomalyBank, idx: np.ndarray, values: np.ndarray, *, step: float = 300.0,
            expected: np.ndarray | None = None, scale: np.ndarray | None = None) -> np.ndarray:
    """Feed values (rows = time, cols = series) one row per call; return the scores, same shape."""
    n, k = values.shape
    out = np.empty((n, k))
    nan = np.full(k, np.nan)
    for i in range(n):
        e = nan if expected is None else expected[i]
        s = nan if scale is None else scale[i]
        out[i] = bank.update(idx, np.full(k, 1.7e9 + i * step), values[i], e, nan, nan, s)
    return out


def _noise(n: int, k: int, seed: int = 0) -> np.ndarray:
    return 50.0 + np.random.default_rng(seed).normal(0.0, 2.0, size=(n, k))


def test_scores_are_in_unit_interval_and_shaped_like_input() -> None:
    bank = AnomalyBank()
    idx = bank.add(3)
    scores = _stream(bank, idx, _noise(300, 3))
    assert scores.shape == (300, 3)
    assert np.all((scores >= 0.0) & (scores <= 1.0))


def test_steady_noise_rarely_scores_high() -> None:
    bank = AnomalyBank()
    idx = bank.add(20)
    scores = _stream(bank, idx, _noise(2000, 20))[500:]
    assert np.mean(scores >= 0.99) < 0.01
    assert np.median(scores) < 0.9


def test_spike_scores_high() -> None:
    bank = AnomalyBank()
    idx = bank.add(2)
    values = _noise(1000, 2, seed=1)
    values[800, 0] += 40.0  # 20 sigma in series 0 only
    scores = _stream(bank, idx, values)
    assert scores[800, 0] >= 0.99
    assert scores[800, 1] < 0.99
    quiet_before = scores[500:800, 0]
    assert scores[800, 0] > np.quantile(quiet_before, 0.99)


def test_level_shift_detected_soon_after_it_starts() -> None:
    bank = AnomalyBank()
    idx = bank.add(1)
    values = _noise(1500, 1, seed=2)
    values[1000:, 0] += 10.0  # 5 sigma step
    scores = _stream(bank, idx, values)[:, 0]
    assert scores[1000:1010].max() >= 0.99
    assert scores[500:1000].max() < scores[1000:1010].max()


def test_variance_increase_detected() -> None:
    bank = AnomalyBank()
    idx = bank.add(1)
    values = _noise(1500, 1, seed=3)
    values[1000:, 0] = 50.0 + (values[1000:, 0] - 50.0) * 8.0
    scores = _stream(bank, idx, values)[:, 0]
    assert scores[1000:1030].max() >= 0.99


def test_long_level_keeps_a_small_lasting_shift_in_view() -> None:
    # half a standard deviation, for good: too small for the 12-sample mean to stand out, but the
    # 96-sample mean sees it clearly (a slow baseline keeps the shift from being absorbed meanwhile)
    values = _noise(2700, 20, seed=12)
    values[2500:] += 1.0
    scores = {}
    for long_samples in (96.0, 12.0):  # 12: no longer than the short level, i.e. no long view at all
        bank = AnomalyBank(baseline_samples=1000.0, long_samples=long_samples, quiet_samples=1)
        scores[long_samples] = _stream(bank, bank.add(20), values)
    assert np.quantile(scores[96.0][1000:2500], 0.99) < 0.99
    assert scores[96.0][2550:].mean() > 0.75
    assert scores[12.0][2550:].mean() < 0.65


def test_histograms_are_rescaled_and_stay_consistent() -> None:
    # with a memory of 2 samples the lazy-decay weights double every sample and are rescaled often
    bank = AnomalyBank(memory_samples=2.0)
    idx = bank.add(2)
    scores = _stream(bank, idx, _noise(1500, 2, seed=13))
    assert np.all(np.isfinite(scores)) and np.all((scores >= 0.0) & (scores <= 1.0))
    state = bank.state_dict()
    assert np.all(np.isfinite(state["hist"])) and np.all(state["hist"] >= 0.0)
    np.testing.assert_allclose(state["hist"].sum(axis=2), state["tot"], rtol=1e-9)


def test_spiky_series_learns_its_spikes_and_flags_a_new_extreme() -> None:
    bank = AnomalyBank()
    idx = bank.add(1)
    values = _noise(3000, 1, seed=8)
    rng = np.random.default_rng(9)
    values[100::50, 0] += rng.uniform(18.0, 22.0, size=len(values[100::50]))  # a batch job every 50 samples
    values[2525, 0] += 60.0  # three times the usual spike
    scores = _stream(bank, idx, values)[:, 0]
    usual = scores[2000:2500:50]
    assert np.median(usual) < 0.99
    assert scores[2525] >= 0.999
    assert scores[2525] > usual.max()


def test_forecaster_expectation_is_used_when_given() -> None:
    # a series following a steep known ramp: the own baseline lags, the forecaster does not
    n = 600
    ramp = np.linspace(0.0, 100.0, n)[:, None] + _noise(n, 1, seed=4) - 50.0
    bank = AnomalyBank(use_forecast=True)
    idx = bank.add(1)
    jump = ramp.copy()
    jump[500, 0] += 30.0
    scores = _stream(bank, idx, jump, expected=np.linspace(0.0, 100.0, n)[:, None],
                     scale=np.full((n, 1), 2.0))[:, 0]
    assert scores[500] >= 0.99


def test_constant_series_then_change() -> None:
    bank = AnomalyBank()
    idx = bank.add(1)
    values = np.full((600, 1), 7.0)
    values[500:, 0] = 9.0
    scores = _stream(bank, idx, values)[:, 0]
    assert np.all(scores[20:500] < 0.9)
    assert scores[500] >= 0.99


def test_reset_forgets_history() -> None:
    bank = AnomalyBank()
    idx = bank.add(1)
    _stream(bank, idx, _noise(500, 1))
    bank.reset(idx)
    # right after a reset, a wildly different value is the first sample, not a surprise
    s = bank.update(idx, np.array([2e9]), np.array([1e6]), *(np.full(1, np.nan),) * 4)
    assert s[0] == 0.0
    assert bank.state_dict()["count"][0] == 1


def test_growth_keeps_existing_state() -> None:
    bank = AnomalyBank(capacity=2)
    first = bank.add(2)
    _stream(bank, first, _noise(100, 2))
    before = bank.state_dict()
    more = bank.add(37)
    assert bank.size == 39
    assert more.dtype == np.int64
    np.testing.assert_array_equal(more, np.arange(2, 39))
    after = bank.state_dict()
    for key, value in before.items():
        np.testing.assert_array_equal(after[key][:2], value)
    assert np.all(after["count"][2:] == 0)


def test_state_dict_round_trip_continues_identically() -> None:
    values = _noise(400, 4, seed=5)
    a = AnomalyBank()
    ia = a.add(4)
    _stream(a, ia, values[:300])
    b = AnomalyBank()
    b.load_state_dict(a.state_dict())
    assert b.size == 4
    sa = _stream(a, ia, values[300:])
    sb = _stream(b, ia, values[300:])
    np.testing.assert_array_equal(sa, sb)


def test_update_touches_only_listed_series() -> None:
    bank = AnomalyBank()
    idx = bank.add(3)
    _stream(bank, idx, _noise(50, 3))
    before = bank.state_dict()
    bank.update(np.array([1]), np.array([2e9]), np.array([60.0]), *(np.full(1, np.nan),) * 4)
    after = bank.state_dict()
    for key in before:
        np.testing.assert_array_equal(after[key][[0, 2]], before[key][[0, 2]])
    assert after["count"][1] == before["count"][1] + 1


def test_state_from_a_differently_configured_bank_is_refused() -> None:
    a = AnomalyBank()
    a.add(2)
    with pytest.raises(ValueError):
        AnomalyBank(use_forecast=True).load_state_dict(a.state_dict())


def test_repeats_of_an_incident_are_damped_but_a_worse_moment_comes_through() -> None:
    bank = AnomalyBank()
    idx = bank.add(1)
    values = _noise(1200, 1, seed=6)
    values[900, 0] += 30.0
    values[905, 0] += 30.0  # the same incident again: not news
    values[930, 0] += 300.0  # far worse than its peak, once the first shock has settled: news
    scores = _stream(bank, idx, values)[:, 0]
    assert scores[900] >= 0.99
    assert scores[905] < 0.99 * scores[900]
    assert scores[930] >= 0.99


def test_noncontiguous_and_contiguous_updates_agree() -> None:
    values = _noise(300, 4, seed=7)
    a, b = AnomalyBank(), AnomalyBank()
    ia, ib = a.add(4), b.add(4)
    nan = np.full(4, np.nan)
    order = np.array([2, 0, 3, 1])
    for i in range(300):
        t = np.full(4, 1.7e9 + 60.0 * i)
        sa = a.update(ia, t, values[i], nan, nan, nan, nan)
        sb = b.update(ib[order], t, values[i][order], nan, nan, nan, nan)
        np.testing.assert_allclose(sb, sa[order], rtol=0, atol=1e-12)


def test_a_large_update_in_blocks_equals_one_series_group_at_a_time() -> None:
    # 5000 series: more than one block of the update; the 100 are few enough to be summed the other way
    n = 5000
    values = 50.0 + np.random.default_rng(14).normal(0.0, 2.0, size=(40, n))
    values[30, ::7] += 30.0
    a, b = AnomalyBank(), AnomalyBank()
    ia, ib = a.add(n), b.add(n)
    nan = np.full(n, np.nan)
    for i in range(40):
        t = np.full(n, 1.7e9 + 60.0 * i)
        sa = a.update(ia, t, values[i], nan, nan, nan, nan)
        sb = np.concatenate([b.update(ib[part], t[part], values[i][part], nan[part], nan[part], nan[part], nan[part])
                             for part in (slice(0, 100), slice(100, n))])
        np.testing.assert_array_equal(sa, sb)


def test_flatline_of_a_noisy_series_is_flagged() -> None:
    bank = AnomalyBank()
    idx = bank.add(1)
    values = _noise(1500, 1, seed=10) - 40.0  # noise of 20% around 10: well above the scale floor
    values[1000:, 0] = 10.0  # the exporter got stuck on one value
    scores = _stream(bank, idx, values)[:, 0]
    # a loss of variance is milder evidence than a spike (the spread can only fall to the scale floor),
    # but it must stand out from everything the noise did before
    assert scores[1000:1100].max() >= 0.98
    assert scores[1000:1100].max() > scores[500:1000].max()


def test_non_finite_value_scores_zero_and_leaves_state_alone() -> None:
    bank = AnomalyBank()
    idx = bank.add(2)
    _stream(bank, idx, _noise(100, 2))
    before = bank.state_dict()
    nan = np.full(2, np.nan)
    s = bank.update(idx, np.full(2, 2e9), np.array([np.nan, 51.0]), nan, nan, nan, nan)
    assert s[0] == 0.0
    after = bank.state_dict()
    for key in before:
        np.testing.assert_array_equal(after[key][0], before[key][0])
    assert after["count"][1] == before["count"][1] + 1


def test_unknown_series_index_is_rejected() -> None:
    bank = AnomalyBank(capacity=8)
    bank.add(2)
    nan = np.full(1, np.nan)
    with pytest.raises(IndexError):
        bank.update(np.array([2]), np.array([0.0]), np.array([1.0]), nan, nan, nan, nan)


def test_negative_add_is_rejected() -> None:
    with pytest.raises(ValueError):
        AnomalyBank().add(-1)


def _days_of_spikes(bank: AnomalyBank, values: np.ndarray) -> np.ndarray:
    """Stream 5-minute samples starting at a midnight (UTC), so row ``d * 288 + 36`` is 03:00 of day d."""
    n, k = values.shape
    idx = bank.add(k)
    nan = np.full(k, np.nan)
    t0 = 1.7e9 - 1.7e9 % 86400.0
    return np.array([bank.update(idx, np.full(k, t0 + 300.0 * i), values[i], nan, nan, nan, nan)
                     for i in range(n)])


def test_a_spike_that_recurs_daily_is_learnt_but_not_at_other_hours_or_after_one_night() -> None:
    day = 288
    values = _noise(14 * day, 3, seed=11)
    rng = np.random.default_rng(12)
    at_three = np.arange(14) * day + 36
    values[at_three, 0] += rng.uniform(18.0, 22.0, 14)  # a nightly job, every day at 03:00
    values[at_three[:-1], 1] += rng.uniform(18.0, 22.0, 13)  # the same job, but on the last day ...
    values[13 * day + 180, 1] += 20.0  # ... it runs at 15:00 instead
    values[at_three[-2:], 2] += 20.0  # two bad nights in a row are not yet a habit
    scores = _days_of_spikes(AnomalyBank(quiet_samples=100), values)
    habit = np.median(scores[at_three[7:], 0])
    assert habit < 0.99
    assert scores[13 * day + 180, 1] >= 0.99
    assert scores[at_three[-1], 2] >= 0.99
    # without the daily memory the same nightly job keeps alerting
    plain = _days_of_spikes(AnomalyBank(quiet_samples=100, daily_bins=0), values)
    assert np.median(plain[at_three[7:], 0]) >= 0.99


def test_state_with_other_daily_bins_is_refused() -> None:
    a = AnomalyBank()
    a.add(2)
    with pytest.raises(ValueError):
        AnomalyBank(daily_bins=12).load_state_dict(a.state_dict())


def test_a_sample_without_a_time_leaves_the_daily_memory_alone() -> None:
    bank = AnomalyBank()
    idx = bank.add(1)
    _stream(bank, idx, _noise(600, 1))
    before = bank.state_dict()
    s = bank.update(idx, np.array([np.nan]), np.array([51.0]), *(np.full(1, np.nan),) * 4)
    assert 0.0 <= s[0] <= 1.0
    after = bank.state_dict()
    for key in ("today", "daily", "day"):
        np.testing.assert_array_equal(after[key], before[key])


def test_an_absurd_glitch_does_not_silence_the_detector_for_days() -> None:
    """Learning 1e9 in a series near 50 raised the typical magnitude and the smoothed levels so far that a
    real spike two days later scored nothing; with the forecaster's held-back value it still stands out."""
    rng = np.random.default_rng(5)
    n = 1500
    k = np.arange(n)
    ys = 50.0 + 10.0 * np.sin(2 * np.pi * k / 288) + rng.normal(0.0, 0.3, n)
    ys[900] = 1e9
    ys[1400] += 100.0                                            # a real spike, far beyond the wave
    learn = ys.copy()
    learn[900] = 52.0                                            # what the forecaster let the models learn

    def scores(with_learn: bool) -> np.ndarray:
        bank = AnomalyBank()
        idx = bank.add(1)
        nan = np.full(1, np.nan)
        out = np.empty(n)
        for j in range(n):
            out[j] = bank.update(idx, np.array([300.0 * j]), ys[j:j + 1], nan, nan, nan, nan,
                                 learn[j:j + 1] if with_learn else None)[0]
        return out

    guarded, plain = scores(True), scores(False)
    assert guarded[900] > 0.999 and plain[900] > 0.999          # the glitch itself is an anomaly either way
    assert guarded[1400] > 0.99
    assert plain[1400] < 0.5                                     # what the guard prevents (0 here)


def _cycle_days(days: int, step: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Times from a midnight and a working-day cycle (night 50, day 80) with small noise, one column."""
    t = 1.7e9 - 1.7e9 % 86400.0 + step * np.arange(int(days * 86400.0 / step))
    h = (t % 86400.0) / 3600.0
    shape = 1.0 / (1.0 + np.exp(-(h - 8.5) * 2.0)) / (1.0 + np.exp((h - 19.0) * 1.5))
    return t, (50.0 + 30.0 * shape + np.random.default_rng(seed).normal(0.0, 1.5, t.size))[:, None]


def _scores_at(bank: AnomalyBank, t: np.ndarray, values: np.ndarray) -> np.ndarray:
    idx = bank.add(values.shape[1])
    nan = np.full(values.shape[1], np.nan)
    return np.array([bank.update(idx, np.full(values.shape[1], t[i]), values[i], nan, nan, nan, nan)
                     for i in range(t.size)])


@pytest.mark.parametrize("step", [300.0, 3600.0])
def test_a_day_whose_cycle_stays_flat_is_flagged_by_its_context(step: float) -> None:
    # every value of the flat day is one the series shows each night: only its place in the day is wrong
    t, values = _cycle_days(12, step, seed=5)
    per_day = int(86400.0 / step)
    day = slice(10 * per_day, 11 * per_day)
    values[day] = 50.0 + np.random.default_rng(6).normal(0.0, 1.5, (per_day, 1))
    with_context = _scores_at(AnomalyBank(), t, values)
    without = _scores_at(AnomalyBank(contextual=False), t, values)
    assert with_context[day].max() >= 0.99
    assert without[day].max() < with_context[day].max()
    assert with_context[2 * per_day:10 * per_day].max() < 0.99  # ordinary days are not surprising


def test_a_new_level_does_not_keep_the_context_surprised() -> None:
    t, values = _cycle_days(14, 300.0, seed=7)
    per_day = 288
    values[8 * per_day:] += 20.0  # a lasting new level, same cycle
    scores = _scores_at(AnomalyBank(), t, values)
    assert scores[8 * per_day:9 * per_day].max() >= 0.99
    assert scores[11 * per_day:].max() < 0.99


@pytest.mark.parametrize(("added", "zeroed"), [
    (("context", "tlast", "gap", "rs"), "context"),
    (("weekday", "wxy", "wxx", "wn"), "weekday"),
    (("uncounted", "mtoday", "mdaily", "mn"), "mdaily"),
], ids=["context", "weekdays", "bursts"])
def test_state_saved_before_a_later_feature_still_loads(added: tuple[str, ...], zeroed: str) -> None:
    a = AnomalyBank()
    a.add(2)
    state = {k: v for k, v in a.state_dict().items() if k not in added}
    b = AnomalyBank()
    b.load_state_dict(state)
    assert b.size == 2 and np.all(b.state_dict()[zeroed] == 0.0)


def _weekly_hours(weeks: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hourly times from a Monday midnight and a working-day cycle 30 deep on weekdays, 12 at weekends."""
    t0 = 1.7e9 - 1.7e9 % 86400.0
    t0 += 86400.0 * ((7 - (int(t0 // 86400) + 3) % 7) % 7)  # 1970-01-01 was a Thursday
    t = t0 + 3600.0 * np.arange(weeks * 168)
    h = (t % 86400.0) / 3600.0
    weekend = ((t // 86400.0).astype(np.int64) + 3) % 7 >= 5
    shape = 1.0 / (1.0 + np.exp(-(h - 8.5) * 2.0)) / (1.0 + np.exp((h - 19.0) * 1.5))
    depth = np.where(weekend, 12.0, 30.0)
    return t, (50.0 + depth * shape + np.random.default_rng(seed).normal(0.0, 1.5, t.size))[:, None]


def test_a_flat_weekday_stands_out_against_what_its_weekday_usually_shows() -> None:
    # hourly, five weeks of deep weekdays and shallow weekends: one cycle for every day is too shallow for a
    # Monday and too deep for a Sunday, and its spread has to cover both
    t, values = _weekly_hours(6, seed=11)
    flat_monday = slice(5 * 168, 5 * 168 + 24)
    values[flat_monday] = 50.0 + np.random.default_rng(12).normal(0.0, 1.5, (24, 1))
    by_weekday = _scores_at(AnomalyBank(), t, values)
    one_shape = _scores_at(AnomalyBank(weekdays=False), t, values)
    assert by_weekday[flat_monday].max() >= 0.99 > one_shape[flat_monday].max()
    assert max(by_weekday[w * 168:w * 168 + 120].max() for w in range(2, 5)) < 0.99  # ordinary weekdays


def _bursty_counts(days: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """5-minute event counts near 5 per sample with bursts of 4-8 times that for two samples, about three a
    day per series at random times; returns times, values (rows = time) and where bursts start."""
    rng = np.random.default_rng(seed)
    n = days * 288
    burst = np.ones((n, k))
    onset = rng.random((n, k)) < 3.0 / 288
    for i, j in zip(*np.nonzero(onset), strict=True):
        burst[i:i + 2, j] *= rng.uniform(4.0, 8.0)
    t = 1.7e9 - 1.7e9 % 86400.0 + 300.0 * np.arange(n)
    return t, rng.poisson(5.0 * burst).astype(np.float64), onset


def _scores_of(bank: AnomalyBank, t: np.ndarray, values: np.ndarray) -> np.ndarray:
    idx = bank.add(values.shape[1])
    nan = np.full(values.shape[1], np.nan)
    return np.array([bank.update(idx, np.full(values.shape[1], t[i]), values[i], nan, nan, nan, nan)
                     for i in range(t.size)])


def _decades(scores: np.ndarray) -> np.ndarray:
    return -np.log10(np.maximum(1.0 - scores, 1e-12))


def test_a_count_series_learns_bursts_that_recur_at_random_hours() -> None:
    t, values, onset = _bursty_counts(14, 8, seed=0)
    late = onset.copy()
    late[:7 * 288] = False  # a week in: every recent day has shown bursts
    on = _scores_of(AnomalyBank(), t, values)
    off = _scores_of(AnomalyBank(bursts=False), t, values)
    # how surprising the bursts are, in decades of p
    assert _decades(on[late]).mean() < 0.8 * _decades(off[late]).mean()
    assert np.count_nonzero(on[late] >= 0.99) < np.count_nonzero(off[late] >= 0.99)
    assert np.count_nonzero(on[7 * 288:] >= 0.99) <= 0.001 * on[7 * 288:].size


def test_a_burst_far_beyond_a_count_series_history_still_scores() -> None:
    t, values, _ = _bursty_counts(14, 4, seed=1)
    at = 12 * 288 + 150
    values[at] = 10.0 * values[:at].max(axis=0)
    scores = _scores_of(AnomalyBank(), t, values)
    assert np.all(scores[at] >= 0.99)


def test_a_series_with_fractions_is_not_excused_its_bursts() -> None:
    t, values, _ = _bursty_counts(10, 2, seed=2)
    values += 0.5  # not events per interval: the burst excuse must not apply
    on = _scores_of(AnomalyBank(), t, values)
    off = _scores_of(AnomalyBank(bursts=False), t, values)
    np.testing.assert_array_equal(on, off)


def test_histograms_saved_as_float64_past_float32s_range_load_and_score_the_same() -> None:
    """States saved while the histograms were float64 (rescaled only at a decay factor of 1e150) load into the
    float32 histograms rescaled, as an update rescales them: the next scores are the same."""
    values = _noise(400, 3, seed=21)
    a = AnomalyBank()
    ia = a.add(3)
    nan = np.full(3, np.nan)
    for i in range(399):
        a.update(ia, np.full(3, 1.7e9 + 60.0 * i), values[i], nan, nan, nan, nan)
    old = {k: np.array(v, np.float64) if k in ("hist", "tot", "grow") else v for k, v in a.state_dict().items()}
    factor = np.array([1e100, 1.0, 1e140])                  # a common factor per row, as lazy decay leaves
    old["hist"] *= factor[:, None, None]
    old["tot"] *= factor[:, None]
    old["grow"] *= factor
    assert old["hist"].max() > np.finfo(np.float32).max
    b = AnomalyBank()
    b.load_state_dict(old)
    assert np.isfinite(b.state_dict()["hist"]).all()
    t = np.full(3, 1.7e9 + 60.0 * 399)
    np.testing.assert_allclose(b.update(ia, t, values[399] + 5.0, nan, nan, nan, nan),
                               a.update(ia, t, values[399] + 5.0, nan, nan, nan, nan), rtol=1e-6)
