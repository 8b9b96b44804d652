"""Replica recommendations (sidecar/engine/replicas.py): sized from the capacity of one replica and a quantile of
the forecast (its upper bound at the interval's level), withheld with a reason when either is not trustworthy,
and stabilised against flapping."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sidecar.engine.replicas import (
    FIT_K_BOUNDS,
    REPLICAS_METRIC,
    ReplicaAdvice,
    ReplicaPolicy,
    Stabilised,
    Widths,
    fit_replica,
    half_widths,
    recommend,
    settle_widths,
    stabilise,
)
from sidecar.engine.whatif import SimulationContext, fit_capacity, mean_wait_s

UPPER = 0.95      # the quantile of the upper bound of a 90 % interval
SERVICE_S = 0.1
WORKERS = 4
LIMIT_MS = 250.0


def _mean_ms(rate_per_replica: np.ndarray) -> np.ndarray:
    return 1000.0 * (SERVICE_S + mean_wait_s(rate_per_replica, WORKERS / SERVICE_S, WORKERS))


def _context(*, forecast_upper: list[float], replicas_series: bool = True, flat: bool = False,
             workers: int | None = WORKERS, n: int = 240) -> SimulationContext:
    """A twin whose replicas moved between 2 and 5 while its traffic varied; latency from M/M/4 per replica."""
    rng = np.random.default_rng(3)
    t = np.arange(n, dtype=np.float64) * 15.0
    replicas = np.where((np.arange(n) // 40) % 2 == 0, 2.0, 5.0) if replicas_series else np.full(n, 5.0)
    per_replica = np.full(n, 20.0) if flat else rng.uniform(8.0, 34.0, n)
    rate = per_replica * replicas
    mean = _mean_ms(per_replica) * rng.normal(1.0, 0.01, n)
    times = {"request_rate": t, "request_latency_mean_ms": t}
    values = {"request_rate": rate, "request_latency_mean_ms": mean}
    if replicas_series:
        times[REPLICAS_METRIC], values[REPLICAS_METRIC] = t, replicas
    h = np.array([300.0, 600.0])
    up = np.asarray(forecast_upper, dtype=np.float64)
    return SimulationContext(twin_id="t", now=float(t[-1]), limits={"request_latency_mean_ms": LIMIT_MS},
                             times=times, values=values, horizons_s=h, forecast_mean={"request_rate": up * 0.8},
                             forecast_lower={"request_rate": up * 0.6}, forecast_upper={"request_rate": up},
                             replicas=None if replicas_series else 5, workers=workers)


def _fewest(total_rate: float) -> int:
    """The fewest replicas whose per-replica M/M/4 mean latency stays under the limit, by brute force."""
    return next(r for r in range(1, 200) if _mean_ms(np.array(total_rate / r))[()] <= LIMIT_MS)


def test_recommends_the_fewest_replicas_that_keep_the_limit_at_the_forecast_upper_bound() -> None:
    advice = recommend(_context(forecast_upper=[150.0, 400.0]), ReplicaPolicy(1, 40, quantile=UPPER))
    assert advice.trustworthy, advice.reason
    assert advice.replicas is not None
    # the fit is within a few percent of the truth: the answer is the brute-force one, or one off at a boundary
    for got, rate in zip(advice.replicas, (150.0, 400.0), strict=True):
        assert abs(got - _fewest(rate)) <= 1
    assert advice.replicas[1] > advice.replicas[0]
    assert advice.capacity_rps == pytest.approx(5 * WORKERS / SERVICE_S, rel=0.1)
    assert advice.headroom[1] == pytest.approx(1 - 400.0 / advice.capacity_rps)


def test_a_later_horizon_is_ready_for_the_peak_before_it() -> None:
    advice = recommend(_context(forecast_upper=[400.0, 150.0]), ReplicaPolicy(1, 40, quantile=UPPER))
    assert advice.replicas is not None and advice.replicas[1] == advice.replicas[0]
    assert advice.rate_upper == (400.0, 400.0)


def test_the_quantile_sizes_between_the_point_forecast_and_the_upper_bound() -> None:
    ctx = _context(forecast_upper=[300.0, 400.0])           # point forecast 0.8 x the upper bound
    at = {q: recommend(ctx, ReplicaPolicy(1, 40, quantile=q)) for q in (0.5, 0.8, UPPER, 0.99)}
    assert at[0.5].rate_upper == pytest.approx((240.0, 320.0))
    assert at[UPPER].rate_upper == pytest.approx((300.0, 400.0))
    # 0.8 on the normal scale: z(0.8) / z(0.95) = 0.512 of the upper half-width above the point forecast
    assert at[0.8].rate_upper == pytest.approx((240.0 + 0.5117 * 60.0, 320.0 + 0.5117 * 80.0), rel=1e-3)
    assert at[0.99].rate_upper[1] > 400.0
    counts = [at[q].replicas for q in (0.5, 0.8, UPPER, 0.99)]
    assert all(c is not None for c in counts)
    assert [c[1] for c in counts if c] == sorted(c[1] for c in counts if c)   # a higher quantile never needs fewer
    for got, rate in zip(at[0.5].replicas or (), (240.0, 320.0), strict=True):
        assert abs(got - _fewest(rate)) <= 1


def test_the_point_forecast_never_sizes_below_the_traffic_now() -> None:
    ctx = _context(forecast_upper=[1.0, 1.0])                # the forecast says the traffic goes away
    advice = recommend(ctx, ReplicaPolicy(1, 40, quantile=0.5))
    now = float(np.median(ctx.values["request_rate"][-5:]))
    assert advice.rate_upper == pytest.approx((now, now))


@pytest.mark.parametrize("quantile", [0.49, 0.995])
def test_a_quantile_outside_the_point_forecast_to_099_is_refused(quantile: float) -> None:
    with pytest.raises(ValueError, match="quantile"):
        ReplicaPolicy(1, 10, quantile=quantile)


def test_bounds_clamp_the_recommendation_and_say_when_the_maximum_is_too_few() -> None:
    low = recommend(_context(forecast_upper=[10.0, 10.0]), ReplicaPolicy(8, 40))
    assert low.replicas == (8, 8)
    high = recommend(_context(forecast_upper=[5000.0, 5000.0]), ReplicaPolicy(1, 6))
    assert high.replicas == (6, 6) and high.capped == (True, True)
    assert "max_replicas" in high.reason


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"flat": True}, "not trustworthy"),
    ({"workers": None}, "workers"),
    ({"forecast_upper": [math.nan, math.nan]}, "not warm"),
])
def test_no_recommendation_without_a_trustworthy_fit_or_forecast(kwargs: dict[str, object], reason: str) -> None:
    args: dict[str, object] = {"forecast_upper": [150.0, 300.0], **kwargs}
    advice = recommend(_context(**args), ReplicaPolicy(1, 40))      # type: ignore[arg-type]
    assert advice.replicas is None and reason in advice.reason
    assert advice.to_dict()["trustworthy"] is False


def test_a_static_replica_count_stands_in_for_the_replicas_metric() -> None:
    advice = recommend(_context(forecast_upper=[150.0, 300.0], replicas_series=False), ReplicaPolicy(1, 40))
    assert advice.replicas_now == 5 and advice.replicas is not None
    assert [abs(got - _fewest(rate)) <= 1 for got, rate in zip(advice.replicas, (150.0, 300.0), strict=True)] \
        == [True, True]


def _with_backlog(ctx: SimulationContext, latency_ms: float) -> SimulationContext:
    """The same twin whose last samples carry the queue a burst left: latency far over the limit at the usual rate."""
    values = dict(ctx.values)
    mean = np.array(values["request_latency_mean_ms"], dtype=np.float64)
    mean[-5:] = latency_ms
    values["request_latency_mean_ms"] = mean
    return SimulationContext(twin_id=ctx.twin_id, now=ctx.now, limits=ctx.limits, times=ctx.times, values=values,
                             horizons_s=ctx.horizons_s, forecast_mean=ctx.forecast_mean,
                             forecast_lower=ctx.forecast_lower, forecast_upper=ctx.forecast_upper,
                             replicas=ctx.replicas, workers=ctx.workers)


def test_a_backlog_in_the_last_samples_does_not_send_the_recommendation_to_the_maximum() -> None:
    ctx = _context(forecast_upper=[150.0, 300.0])
    calm = recommend(ctx, ReplicaPolicy(1, 40, quantile=UPPER))
    after_burst = recommend(_with_backlog(ctx, 8 * LIMIT_MS), ReplicaPolicy(1, 40, quantile=UPPER))
    assert calm.replicas is not None and after_burst.replicas is not None
    # sized for the steady state the history shows, not for the queue that drains by itself once replicas come
    assert after_burst.capped == (False, False)
    for got, rate in zip(after_burst.replicas, (150.0, 300.0), strict=True):
        assert abs(got - _fewest(rate)) <= 1


def _advice(*replicas: int) -> ReplicaAdvice:
    return ReplicaAdvice(reason="ok", horizons_s=(300.0,) * len(replicas), replicas=replicas)


def test_stabilisation_scales_up_at_once_and_down_only_after_the_window() -> None:
    state, out = stabilise(Stabilised(), 0.0, _advice(4), 300.0)
    assert out == (4,)
    state, out = stabilise(state, 15.0, _advice(8), 300.0)
    assert out == (8,)
    state, out = stabilise(state, 100.0, _advice(3), 300.0)
    assert out == (8,)                        # the 8 of 85 s ago still holds
    state, out = stabilise(state, 316.0, _advice(3), 300.0)
    assert out == (3,)                        # every recommendation of the last 300 s was 3
    state, out = stabilise(state, 330.0, ReplicaAdvice(reason="fit not trustworthy"), 300.0)
    assert out is None and state == Stabilised()


def test_the_width_a_burst_adds_counts_only_once_it_has_lasted_the_window() -> None:
    state, out = settle_widths(Widths(), 0.0, {300.0: 10.0}, 60.0)
    assert out == {300.0: 10.0}
    state, out = settle_widths(state, 15.0, {300.0: 40.0}, 60.0)     # the interval widens after a burst
    assert out == {300.0: 10.0}
    state, out = settle_widths(state, 50.0, {300.0: 30.0}, 60.0)
    assert out == {300.0: 10.0}
    state, out = settle_widths(state, 62.0, {300.0: 35.0}, 60.0)     # the narrow one is older than the window
    assert out == {300.0: 30.0}
    _, out = settle_widths(state, 70.0, {300.0: 5.0}, 60.0)          # a narrower one counts at once
    assert out == {300.0: 5.0}


def test_settled_widths_size_the_quantile_where_they_are_narrower() -> None:
    ctx = _context(forecast_upper=[300.0, 400.0])           # point forecast 240 / 320, half-widths 60 / 80
    assert half_widths(ctx) == pytest.approx({300.0: 60.0, 600.0: 80.0})
    plain = recommend(ctx, ReplicaPolicy(1, 40, quantile=UPPER))
    settled = recommend(ctx, ReplicaPolicy(1, 40, quantile=UPPER), widths={300.0: 20.0, 600.0: 500.0})
    assert plain.rate_upper == pytest.approx((300.0, 400.0))
    # the settled width where it is narrower, the width now where it is not (the running maximum holds)
    assert settled.rate_upper == pytest.approx((260.0, 400.0))
    assert settled.replicas is not None and plain.replicas is not None
    assert settled.replicas[0] <= plain.replicas[0]


def test_a_replicas_fit_keeps_the_service_time_variability_within_poisson_arrivals() -> None:
    ctx = _context(forecast_upper=[150.0, 300.0])
    rate = ctx.values["request_rate"] / ctx.values[REPLICAS_METRIC]
    # queues a quarter as long as M/M/4's: the what-if's fit reads k = 0.25, arrivals smoother than Poisson
    smooth = 1000.0 * (SERVICE_S + 0.25 * mean_wait_s(rate, WORKERS / SERVICE_S, WORKERS))
    values = {**ctx.values, "request_latency_mean_ms": smooth}
    ctx = SimulationContext(twin_id="t", now=ctx.now, limits=ctx.limits, times=ctx.times, values=values,
                            horizons_s=ctx.horizons_s, forecast_mean=ctx.forecast_mean,
                            forecast_lower=ctx.forecast_lower, forecast_upper=ctx.forecast_upper, workers=WORKERS)
    per_replica = {**values, "request_rate": rate}
    free = fit_capacity(ctx.times, per_replica, replicas=1, workers=WORKERS, rate_metric="request_rate")
    fit, _, _ = fit_replica(ctx)
    assert free.variability < 0.5
    assert fit is not None and FIT_K_BOUNDS[0] <= fit.variability <= FIT_K_BOUNDS[1]
