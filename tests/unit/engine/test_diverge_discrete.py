"""Divergence of small-integer gauges: noise must not page, a real change must, a hand-set state stays relative.

The demo's `inflight` gauge (0-2 requests in flight, no limit) was at severity critical about 70 % of 17
minutes, "inflight 1 vs expected 0 (100000000000%, critical)": the forecaster's one-step error scale had
locked at 0, so the divergence floor was 0 and the learned interval [e, e]. These tests feed such a gauge
through the real Engine.
"""

from __future__ import annotations

import numpy as np
import pytest

from sidecar.engine.anomaly import AnomalyBank
from sidecar.engine.core import Engine
from sidecar.engine.diverge import (
    EXPECTED_FLOOR,
    DivergenceDetector,
    divergence_floor,
    learned_band,
)
from sidecar.engine.forecast import ForecastBank
from sidecar.engine.records import EventType

T0 = 1_700_000_000.0
STEP = 5.0
SAMPLES = 204  # 17 minutes at a 5 s scrape, as in the demo


def inflight(lam: float, seed: int, n: int = SAMPLES) -> np.ndarray:
    """Requests in flight: Poisson counts, at most 3."""
    return np.minimum(np.random.default_rng(seed).poisson(lam, size=n), 3).astype(np.float64)


def feed(values: np.ndarray, expected: dict[str, float] | None = None) -> tuple[Engine, np.ndarray, np.ndarray]:
    """Feed one gauge through an Engine; returns it with the severity and ratio after every sample."""
    eng = Engine()
    eng.create_twin("svc", at=T0, expected=expected)
    slot = eng.series_for("svc", ["inflight"])
    s = int(slot[0])
    sev, ratio = np.zeros(values.size, np.int8), np.full(values.size, np.nan)
    for i, v in enumerate(values.tolist()):
        eng.ingest(slot, np.array([v]), at=T0 + i * STEP)
        sev[i], ratio[i] = eng.severity[s], eng.div_ratio[s]
    return eng, sev, ratio


@pytest.mark.parametrize("lam", [0.1, 0.3, 1.0])
def test_an_inflight_gauge_does_not_page_on_its_own_noise(lam: float) -> None:
    for seed in range(6):
        eng, sev, ratio = feed(inflight(lam, seed))
        # at most a low or medium divergence now and then: nothing the high/critical alert rules page on
        assert sev.max() <= 2, (lam, seed, np.flatnonzero(sev >= 3).tolist())
        assert (sev > 0).mean() < 0.05
        assert not eng.events(twin="svc", type=EventType.DIVERGENCE.value)
        # a ratio of a size a person can read (it reached 3e9): a move of one unit is about one floor
        assert np.nanmax(np.abs(ratio)) < 10.0


def test_a_real_step_of_the_gauge_still_diverges_critically() -> None:
    values = inflight(0.3, seed=2)
    values[150:] = 40.0
    eng, sev, ratio = feed(values)
    assert sev[:150].max() <= 2
    assert sev[150] == 4 and ratio[150] > 5.0
    [event] = eng.events(twin="svc", type=EventType.DIVERGENCE.value)
    assert "inflight 40 vs expected" in event.message and "critical" in event.message


def test_a_hand_set_expectation_still_reports_the_real_relative_divergence() -> None:
    values = np.full(60, 20.0)
    eng, sev, ratio = feed(values, expected={"inflight": 10.0})
    assert ratio[-1] == pytest.approx(1.0)          # 20 in flight against 10 expected: 100 % over
    assert sev[-1] == 4
    st = eng.status("svc")["metrics"]["inflight"]
    assert st["expected_source"] == "manual" and st["divergence_percent"] == pytest.approx(100.0)
    # hand-set 0 on the noisy gauge: judged against the gauge's own moves, not divided by ~0
    _, sev0, ratio0 = feed(inflight(0.3, seed=1, n=120) + 3.0, expected={"inflight": 0.0})
    assert np.isfinite(ratio0).all() and 1.0 < np.abs(ratio0[20:]).max() < 20.0
    assert (sev0[20:] == 4).all()                  # 3 or more in flight when 0 was said: always diverging


def test_the_floor_holds_between_the_moves_of_a_mostly_zero_gauge() -> None:
    """`scale` forgets in ~20 samples; `tail` (the 99th percentile of one-step moves) remembers the unit."""
    floor = divergence_floor(np.array([1e-6, 0.4, np.nan]), np.array([np.nan, np.nan, 100.0]),
                             np.array([1.0, 0.5, np.nan]))
    assert floor.tolist() == pytest.approx([1.0, 1.6, 2.0])
    assert divergence_floor(np.array([0.5]), np.array([np.nan])).tolist() == [2.0]   # without a tail: as before


def test_learned_severity_is_capped_by_how_unusual_the_sample_is() -> None:
    d = DivergenceDetector()
    actual = np.array([3.0, 3.0, 3.0, 40.0, 40.0])
    expected = np.array([0.3, 0.3, 0.3, 0.3, 0.3])
    lower, upper = expected - 0.5, expected + 1.0
    tail = np.array([2.0, 2.0, 2.0, 2.0, np.nan])        # the gauge moves by up to 2 in a hundred steps
    surprise = np.array([0.999, 0.5, 0.999, 0.97, 0.9995])
    manual = np.array([False, False, True, False, False])
    thr = np.full(5, 50.0)
    r = d.compute(actual, expected, lower, upper, manual, thr, divergence_floor(np.full(5, 0.5), thr * np.nan, tail),
                  tail, surprise)
    # 2.7 against a tail of 2: u = 1.35 -> at most low; not surprising -> nothing; hand-set -> the percent alone
    # (2.7 / 2 = 135 % -> critical); a step of 39.7 (u ~ 20) with surprise 0.97 -> medium; no tail: surprise alone
    assert r.severity.tolist() == [1, 0, 4, 2, 4]
    assert r.percent[0] == pytest.approx(135.0)
    assert learned_band(actual, expected, None, None).tolist() == [4] * 5


def test_a_learned_zero_of_a_series_that_never_moved_has_no_percent_but_a_hand_set_one_does() -> None:
    d = DivergenceDetector()
    actual, expected = np.array([1.0, 1.0, 0.0]), np.zeros(3)
    manual = np.array([False, True, False])
    r = d.compute(actual, expected, expected, expected, manual, np.full(3, 50.0), np.zeros(3), np.full(3, np.nan),
                  np.ones(3))
    assert np.isnan(r.ratio[0]) and not r.diverging[0]          # no yardstick at all: unknown, not 1e11 %
    assert r.percent[1] == pytest.approx(1.0 / EXPECTED_FLOOR * 100) and r.severity[1] == 4
    assert r.ratio[2] == 0.0                                      # on its expectation: 0, known


def test_the_yardstick_of_a_gauge_that_sat_at_zero_settles_at_its_unit() -> None:
    """The one-step scale of such a gauge is 0 for good (its first errors were exactly 0, see the report);
    `tail` starts at the first move and settles at the size of the gauge's moves."""
    bank = ForecastBank([300.0])
    idx = bank.add(1)
    values = np.r_[np.zeros(30), inflight(0.3, seed=4, n=200)]
    exps = [bank.update(idx, np.array([T0 + i * STEP]), np.array([v])) for i, v in enumerate(values.tolist())]
    tail = np.array([float(e.tail[0]) for e in exps])
    assert np.isnan(tail[:30]).all()              # no move yet: no yardstick
    assert (tail[60:] >= 0.5).all() and (tail[60:] <= 4.0).all()


def test_tail_is_about_the_99th_percentile_of_one_step_errors() -> None:
    rng = np.random.default_rng(5)
    k, n = 20, 3000
    bank = ForecastBank([300.0])
    idx = bank.add(k)
    y = 40.0 + rng.normal(size=(n, k))
    over = []
    for r in range(n):
        e = bank.update(idx, np.full(k, T0 + 15.0 * r), y[r])
        if r > 500:
            over.append(np.abs(y[r] - e.expected) > e.tail)
    assert 0.004 < np.mean(over) < 0.025


def test_surprise_is_the_score_before_one_alert_per_incident() -> None:
    bank = AnomalyBank()
    idx = bank.add(1)
    nan = np.full(1, np.nan)
    rng = np.random.default_rng(0)
    for i in range(300):
        bank.update(idx, np.array([T0 + 300.0 * i]), np.array([50.0 + rng.normal()]), nan, nan, nan, nan)
    step = [bank.score_and_learn(idx, np.array([T0 + 300.0 * (300 + i)]), np.array([100.0]), nan, nan, nan, nan)
            for i in range(3)]
    assert step[0].score[0] == step[0].surprise[0] > 0.99
    # the incident's later samples are damped in the score, not in the surprise
    assert step[1].score[0] < 0.6 < 0.99 < step[1].surprise[0]
