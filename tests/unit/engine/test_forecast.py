"""ForecastBank: forecasts, intervals, running backtest, slots and persistence."""

from __future__ import annotations

import numpy as np
import pytest

from sidecar.engine.forecast import Expectation, Forecast, ForecastBank
from sidecar.errors import InputError

H = [300.0, 900.0, 1800.0, 3600.0]


def feed(bank: ForecastBank, idx: np.ndarray, t: np.ndarray, y: np.ndarray) -> list[Expectation]:
    """Feed rows of (k,) samples, one update per time step; t, y are (T, k)."""
    return [bank.update(idx, t[r], y[r]) for r in range(t.shape[0])]


def test_model_names_include_baselines() -> None:
    bank = ForecastBank(H)
    assert "last" in bank.model_names
    assert "linear" in bank.model_names


def test_empty_series_have_no_forecast() -> None:
    bank = ForecastBank(H)
    idx = bank.add(3)
    fc = bank.forecast(idx)
    assert isinstance(fc, Forecast)
    assert fc.mean.shape == (3, 4)
    assert np.isnan(fc.mean).all()
    assert (fc.confidence == 0).all()
    assert fc.model.dtype == np.int8


def test_first_expectation_is_nan_then_defined() -> None:
    bank = ForecastBank(H)
    idx = bank.add(1)
    e0 = bank.update(idx, np.array([0.0]), np.array([5.0]))
    assert np.isnan(e0.expected).all()
    e1 = bank.update(idx, np.array([60.0]), np.array([6.0]))
    assert e1.expected[0] == 5.0  # nothing scored yet: the last value
    assert np.isnan(e1.scale[0])
    e2 = bank.update(idx, np.array([120.0]), np.array([7.0]))
    assert e2.scale[0] > 0


def test_forced_last_value() -> None:
    bank = ForecastBank(H, model="last")
    idx = bank.add(2)
    rng = np.random.default_rng(1)
    t = np.arange(200)[:, None] * 60.0 + np.zeros((1, 2))
    y = rng.normal(size=(200, 2)).cumsum(0)
    feed(bank, idx, t, y)
    fc = bank.forecast(idx)
    np.testing.assert_array_equal(fc.mean, np.repeat(y[-1][:, None], 4, axis=1))
    assert (fc.model == bank.model_names.index("last")).all()


def test_linear_recovers_noiseless_line() -> None:
    bank = ForecastBank(H, model="linear")
    idx = bank.add(2)
    t0 = 1.7e9  # unix seconds: the centred sums must stay exact
    t = t0 + np.arange(300)[:, None] * 15.0 + np.zeros((1, 2))
    slope = np.array([0.01, -3.0])
    y = 100_000.0 + (t - t0) * slope   # stays positive: a series never negative is not forecast below 0
    feed(bank, idx, t, y)
    fc = bank.forecast(idx)
    want = y[-1][:, None] + slope[:, None] * np.array(H)[None, :]
    np.testing.assert_allclose(fc.mean, want, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(fc.slope_per_s, slope, rtol=1e-9)
    # noiseless: the out-of-sample errors are zero so the interval collapses onto the line
    np.testing.assert_allclose(fc.upper - fc.lower, 0.0, atol=1e-6)


def test_linear_window_forgets_old_samples() -> None:
    """predict_linear over 1 h: a ramp that stopped over an hour ago leaves no slope."""
    bank = ForecastBank(H, model="linear")
    idx = bank.add(1)
    t = np.arange(400) * 60.0
    y = np.where(t < 200 * 60.0, t * 0.5, 200 * 60.0 * 0.5)
    feed(bank, idx, t[:, None], y[:, None])
    fc = bank.forecast(idx)
    assert fc.slope_per_s[0] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(fc.mean[0], y[-1])


def test_interval_coverage_on_gaussian_noise() -> None:
    rng = np.random.default_rng(7)
    k, T = 50, 1500
    bank = ForecastBank([300.0, 900.0], model="last")
    idx = bank.add(k)
    t = np.arange(T)[:, None] * 300.0 + np.zeros((1, k))
    y = 10.0 + rng.normal(size=(T, k))
    los, his = [], []
    for r in range(T):
        bank.update(idx, t[r], y[r])
        fc = bank.forecast(idx)
        los.append(fc.lower)
        his.append(fc.upper)
    lo, hi = np.array(los), np.array(his)  # (T, k, H)
    for j, steps in enumerate((1, 3)):
        actual = y[500 + steps:]
        inside = (actual >= lo[500:-steps, :, j]) & (actual <= hi[500:-steps, :, j])
        assert 0.87 <= inside.mean() <= 0.93
    # a Gaussian difference of two N(0,1): the 90% interval is about ±1.645·√2 wide
    width = (hi[500:, :, 0] - lo[500:, :, 0]).mean()
    assert 2 * 1.645 * np.sqrt(2) * 0.8 < width < 2 * 1.645 * np.sqrt(2) * 1.25
    conf = bank.forecast(idx).confidence
    assert np.all((conf > 0.75) & (conf < 1.0))


def test_expectation_interval_covers_one_step() -> None:
    rng = np.random.default_rng(3)
    k, T = 40, 800
    bank = ForecastBank(H)
    idx = bank.add(k)
    t = np.arange(T)[:, None] * 60.0 + np.zeros((1, k))
    y = 5.0 + 0.5 * rng.normal(size=(T, k))
    exps = feed(bank, idx, t, y)
    lo = np.array([e.lower for e in exps[300:]])
    hi = np.array([e.upper for e in exps[300:]])
    inside = (y[300:] >= lo) & (y[300:] <= hi)
    assert 0.86 <= inside.mean() <= 0.94
    scale = exps[-1].scale
    assert np.all((scale > 0.2) & (scale < 1.5))


def test_auto_prefers_linear_on_a_trend_and_last_on_a_random_walk() -> None:
    rng = np.random.default_rng(11)
    T = 600
    bank = ForecastBank(H)
    idx = bank.add(2)
    t = np.arange(T)[:, None] * 300.0 + np.zeros((1, 2))
    trend = 0.02 * t[:, 0] + 0.05 * rng.normal(size=T)
    walk = rng.normal(size=T).cumsum()
    feed(bank, idx, t, np.stack([trend, walk], axis=1))
    fc = bank.forecast(idx)
    assert (fc.model[0] == bank.model_names.index("linear")).all()
    assert (fc.model[1] != bank.model_names.index("linear")).all()


def test_irregular_sampling_and_gaps() -> None:
    rng = np.random.default_rng(5)
    dt = rng.uniform(40.0, 80.0, size=500)
    dt[250] = 6 * 3600.0  # six hours missing
    t = np.cumsum(dt)
    y = 3.0 + 0.001 * t
    bank = ForecastBank(H)
    idx = bank.add(1)
    exps = feed(bank, idx, t[:, None], y[:, None])
    fc = bank.forecast(idx)
    assert np.isfinite(fc.mean).all() and np.isfinite(fc.lower).all()
    np.testing.assert_allclose(fc.mean[0], y[-1] + 0.001 * np.array(H), rtol=1e-3)
    # the sample after the gap did not spoil the one-step error scale
    assert exps[-1].scale[0] < 0.05
    assert np.isfinite(exps[251].expected[0])


def test_reset_forgets_a_slot_only() -> None:
    bank = ForecastBank(H)
    idx = bank.add(2)
    t = np.arange(50)[:, None] * 60.0 + np.zeros((1, 2))
    y = np.stack([np.arange(50.0), -np.arange(50.0)], axis=1)
    feed(bank, idx, t, y)
    before = bank.forecast(idx)
    bank.reset(idx[:1])
    after = bank.forecast(idx)
    assert np.isnan(after.mean[0]).all()
    np.testing.assert_array_equal(after.mean[1], before.mean[1])
    # the slot is usable again, from scratch, at any time (even earlier than before)
    e = bank.update(idx[:1], np.array([10.0]), np.array([1.0]))
    assert np.isnan(e.expected[0])
    assert bank.forecast(idx[:1]).mean[0, 0] == 1.0


def test_add_grows_and_keeps_state() -> None:
    bank = ForecastBank(H, capacity=2)
    a = bank.add(2)
    for r in range(10):
        bank.update(a, np.full(2, 60.0 * r), np.array([1.0, 2.0]))
    before = bank.forecast(a)
    b = bank.add(37)
    assert bank.size == 39
    np.testing.assert_array_equal(b, np.arange(2, 39))
    np.testing.assert_array_equal(bank.forecast(a).mean, before.mean)
    assert np.isnan(bank.forecast(b).mean).all()


def test_state_dict_round_trip_gives_identical_forecasts() -> None:
    rng = np.random.default_rng(2)
    T, k = 300, 3
    t = np.arange(T)[:, None] * 300.0 + np.zeros((1, k))
    y = rng.normal(size=(T, k)).cumsum(0)
    a = ForecastBank(H)
    idx = a.add(k)
    feed(a, idx, t[:200], y[:200])
    b = ForecastBank(H)
    b.load_state_dict(a.state_dict())
    assert b.size == k
    for r in range(200, T):
        ea, eb = a.update(idx, t[r], y[r]), b.update(idx, t[r], y[r])
        np.testing.assert_array_equal(ea.expected, eb.expected)
    fa, fb = a.forecast(), b.forecast()
    for name in ("mean", "lower", "upper", "confidence", "model", "slope_per_s"):
        np.testing.assert_array_equal(getattr(fa, name), getattr(fb, name))


def test_a_state_saved_with_int64_ring_counters_loads_into_the_int16_ones_unchanged() -> None:
    """The pending ring's head and count were int64 in saved states; they load and score as before."""
    rng = np.random.default_rng(3)
    t = np.arange(120)[:, None] * 60.0 + np.zeros((1, 2))
    y = rng.normal(size=(120, 2)).cumsum(0)
    a = ForecastBank(H)
    idx = a.add(2)
    feed(a, idx, t[:80], y[:80])
    old = a.state_dict()
    old["core.phead"], old["core.pcnt"] = old["core.phead"].astype(np.int64), old["core.pcnt"].astype(np.int64)
    b = ForecastBank(H)
    b.load_state_dict(old)
    assert b.core["phead"].dtype == b.core["pcnt"].dtype == np.int16 and b.core["pcnt"].any()
    feed(a, idx, t[80:], y[80:])
    feed(b, idx, t[80:], y[80:])
    np.testing.assert_array_equal(a.forecast().upper, b.forecast().upper)
    with pytest.raises(InputError):
        ForecastBank(H, queue=1 << 15)


def test_load_rejects_other_configuration() -> None:
    a = ForecastBank(H)
    a.add(1)
    with pytest.raises(InputError):
        ForecastBank([300.0]).load_state_dict(a.state_dict())


def test_no_lookahead_prefix_gives_identical_forecasts() -> None:
    rng = np.random.default_rng(9)
    T = 400
    t = np.arange(T) * 300.0
    y = np.sin(t / 5000.0) + 0.1 * rng.normal(size=T)
    full, part = ForecastBank(H), ForecastBank(H)
    fi, pi = full.add(1), part.add(1)
    got_full = []
    for r in range(T):
        full.update(fi, t[r:r + 1], y[r:r + 1])
        got_full.append(full.forecast(fi).mean[0])
    for r in range(250):
        part.update(pi, t[r:r + 1], y[r:r + 1])
        np.testing.assert_array_equal(part.forecast(pi).mean[0], got_full[r])


def test_series_with_different_times_in_one_call() -> None:
    """Offline replay feeds series whose clocks differ; each must match a bank of its own."""
    rng = np.random.default_rng(4)
    T = 300
    t1, t2 = np.arange(T) * 300.0, 1e6 + np.arange(T) * 60.0
    y1, y2 = rng.normal(size=T).cumsum(), rng.normal(size=T)
    both = ForecastBank(H)
    idx = both.add(2)
    alone = ForecastBank(H)
    j = alone.add(1)
    for r in range(T):
        both.update(idx, np.array([t1[r], t2[r]]), np.array([y1[r], y2[r]]))
        alone.update(j, t2[r:r + 1], y2[r:r + 1])
    np.testing.assert_array_equal(both.forecast(idx[1:]).mean, alone.forecast(j).mean)


def test_a_batch_updated_in_blocks_gives_what_one_call_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tick over more series than a block is cut into blocks, and a bucket close's sort too (their temporaries
    stay a fixed size): every expectation, forecast and learnt array is the same as from one call over the whole
    batch."""
    import sidecar.engine.forecast as forecast
    import sidecar.engine.models_bucket as models_bucket

    rng = np.random.default_rng(11)
    k, T = 23, 160                      # 5-minute samples: the bucket models close buckets and fill seasons
    t = np.arange(T)[:, None] * 300.0 + rng.uniform(0.0, 30.0, k)[None, :]
    y = 50.0 + rng.normal(size=(T, k)).cumsum(axis=0) + 5.0 * np.sin(t / 3000.0)
    one, blocks = ForecastBank(H), ForecastBank(H)
    i1, i2 = one.add(k), blocks.add(k)
    monkeypatch.setattr(forecast, "_BLOCK", 10 ** 9)
    whole = feed(one, i1, t, y)
    monkeypatch.setattr(forecast, "_BLOCK", 5)
    monkeypatch.setattr(models_bucket, "_SORT_BLOCK", 2)     # a bucket close's season medians, sorted in blocks
    cut = feed(blocks, i2, t, y)
    for a, b in zip(whole, cut, strict=True):
        for f in ("expected", "lower", "upper", "scale", "tail", "learned"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    sa, sb = one.state_dict(), blocks.state_dict()
    for key in sa:
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)
    with pytest.raises(InputError):     # one stale sample refuses the whole batch before any block is learnt
        blocks.update(i2, np.where(np.arange(k) == 17, t[-1], t[-1] + 300.0), y[-1])
    np.testing.assert_array_equal(blocks.state_dict()["core.n"], sb["core.n"])


def test_bad_input_is_rejected() -> None:
    bank = ForecastBank(H)
    idx = bank.add(1)
    bank.update(idx, np.array([10.0]), np.array([1.0]))
    with pytest.raises(InputError):
        bank.update(idx, np.array([10.0]), np.array([1.0]))  # not after the previous sample
    with pytest.raises(InputError):
        bank.update(np.array([5]), np.array([20.0]), np.array([1.0]))
    with pytest.raises(InputError):
        ForecastBank(H, model="nope")
    with pytest.raises(InputError):
        ForecastBank([0.0])


def test_auto_forecast_is_a_weighted_average_of_the_models() -> None:
    """The forecast is a convex combination of the models' own forecasts, led by the model with most weight."""
    rng = np.random.default_rng(3)
    bank = ForecastBank(H)
    idx = bank.add(2)
    n = 400
    t = 1.7e9 + 300.0 * np.arange(n)[:, None] + np.zeros((1, 2))
    y = np.stack([10.0 + 5.0 * (np.arange(n) % 6 < 3) + rng.normal(0, 1, n), rng.normal(0, 1, n).cumsum()], 1)
    feed(bank, idx, t, y)
    fc = bank.forecast(idx)
    models = bank.predict_models(idx)  # (2, M, H)
    lo = np.nanmin(models, axis=1)
    hi = np.nanmax(models, axis=1)
    assert np.all((fc.mean >= lo - 1e-9) & (fc.mean <= hi + 1e-9))
    assert np.all(np.isfinite(models[np.arange(2)[:, None], fc.model.astype(np.int64), np.arange(4)[None, :]]))


def _wave(n: int, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = np.arange(n)
    return 50.0 + 10.0 * np.sin(2 * np.pi * k / 288) + rng.normal(0.0, 0.3, n)


def _run(bank: ForecastBank, ys: np.ndarray) -> tuple[list[Forecast], list[Expectation]]:
    idx = bank.add(1)
    fcs, exps = [], []
    for k, v in enumerate(ys):
        exps.append(bank.update(idx, np.array([300.0 * k]), np.array([v])))
        fcs.append(bank.forecast(idx))
    return fcs, exps


@pytest.mark.parametrize("glitch", [1e9, -1e15])
def test_one_absurd_sample_neither_poisons_the_forecasts_nor_blows_up_the_intervals(glitch: float) -> None:
    """One bad scrape (1e9 in a series near 50) left the 5-minute interval at [0, 3.7 million] 10 samples
    later and about [0, 150] five days later; the forecasts after it matched a clean run's to within noise."""
    ys = _wave(1500)
    bad = ys.copy()
    bad[900] = glitch
    clean_fc, _ = _run(ForecastBank([300.0, 3600.0]), ys)
    bad_fc, bad_exp = _run(ForecastBank([300.0, 3600.0]), bad)
    learned = bad_exp[900].learned
    assert learned is not None and learned[0] == bad_exp[900].expected[0]       # not learnt at all
    width = np.max([f.upper[0] - f.lower[0] for f in clean_fc[800:900]], axis=0)
    for k in range(901, 1500):
        assert np.all(bad_fc[k].upper[0] - bad_fc[k].lower[0] < 3.0 * width), k
        assert np.all(np.abs(bad_fc[k].mean[0] - clean_fc[k].mean[0]) < 1.0), k


def test_a_change_that_persists_is_learnt_at_once() -> None:
    """The glitch guard holds back a lone sample only: from the second far sample on, the models see the
    real values, so a genuine jump (a deploy that doubles memory) is followed as before."""
    ys = _wave(1000)
    ys[700:] += 1e4
    fc, exps = _run(ForecastBank([300.0, 3600.0]), ys)
    assert exps[700].learned is not None and exps[700].learned[0] < 1e3        # the first one is held
    assert exps[701].learned is not None and exps[701].learned[0] == ys[701]   # the second goes through
    assert abs(fc[720].mean[0, 0] - ys[721]) < 0.05 * 1e4
    assert abs(fc[760].mean[0, 1] - ys[772]) < 0.01 * 1e4


def test_a_forced_baseline_learns_every_sample_as_it_is() -> None:
    """`--model last` is the yardstick of MASE: with the glitch guard it read 0.97-0.995 against itself."""
    ys = _wave(400)
    ys[300] = 1e9
    bank = ForecastBank([300.0], model="last")
    fc, exps = _run(bank, ys)
    assert exps[300].learned is not None and exps[300].learned[0] == 1e9
    assert fc[300].mean[0, 0] == 1e9
