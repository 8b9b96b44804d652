"""The capacity model: Erlang C and waiting-time quantiles against theory and a simulated queue, and fits."""

from __future__ import annotations

import heapq
import json
import math

import numpy as np
import pytest

from sidecar.engine.whatif import CPU, draw, erlang_c, fit_capacity, mean_wait_s, queueing, wait_quantile_s
from sidecar.engine.whatif.routes import fit_latency_curve, fit_line, fit_mean_latency
from sidecar.engine.whatif.samples import sustained_peak


def _erlang_c_textbook(c: int, a: float) -> float:
    top = a**c / math.factorial(c) * c / (c - a)
    return top / (sum(a**k / math.factorial(k) for k in range(c)) + top)


@pytest.mark.parametrize(("c", "a"), [(1, 0.3), (2, 1.0), (3, 2.5), (8, 6.0), (20, 15.0)])
def test_erlang_c_matches_the_textbook_formula(c: int, a: float) -> None:
    assert float(erlang_c(float(c), a)) == pytest.approx(_erlang_c_textbook(c, a), rel=1e-9)


def test_erlang_c_gamma_path_agrees_with_the_recursion(monkeypatch: pytest.MonkeyPatch) -> None:
    a = np.linspace(1.0, 79.0, 40)
    by_recursion = erlang_c(80.0, a)
    monkeypatch.setattr(queueing, "RECURSION_SERVERS", 0)
    by_gamma = erlang_c(80.0, a)
    np.testing.assert_allclose(by_gamma, by_recursion, rtol=1e-8, atol=1e-12)
    # thousands of servers stay finite and in [0, 1]
    big = erlang_c(5000.0, np.array([4000.0, 4950.0, 4999.0]))
    assert np.all((big >= 0) & (big <= 1)) and big[0] < big[1] < big[2]


def test_erlang_c_is_one_at_or_above_saturation() -> None:
    assert np.all(erlang_c(4.0, np.array([4.0, 10.0])) == 1.0)


def test_mm1_wait_quantile_closed_form() -> None:
    mu, lam = 10.0, 8.0
    # M/M/1: P(W > t) = ρ·exp(−(μ − λ)t)
    expected = math.log(0.8 / 0.01) / (mu - lam)
    assert float(wait_quantile_s(lam, mu, 1.0, 0.99)) == pytest.approx(expected, rel=1e-12)
    assert float(wait_quantile_s(lam, mu, 1.0, 0.99, variability=0.5)) == pytest.approx(expected / 2)
    assert float(wait_quantile_s(0.05, mu, 1.0, 0.99)) == 0.0       # fewer than 1% wait at all
    assert math.isinf(float(wait_quantile_s(10.0, mu, 1.0, 0.99)))


def _simulate_mmc_waits(lam: float, mu: float, c: int, n: int, seed: int) -> np.ndarray:
    """First-come-first-served M/M/c by event simulation (server free times in a heap)."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / lam, n))
    services = rng.exponential(1 / mu, n)
    free = [0.0] * c
    waits = np.empty(n)
    for i in range(n):
        t_free = heapq.heappop(free)
        start = max(arrivals[i], t_free)
        waits[i] = start - arrivals[i]
        heapq.heappush(free, start + services[i])
    return waits[n // 10:]


@pytest.mark.parametrize(("lam", "mu", "c"), [(7.0, 10.0, 1), (25.0, 10.0, 3)])
def test_wait_quantile_matches_a_simulated_queue(lam: float, mu: float, c: int) -> None:
    waits = _simulate_mmc_waits(lam, mu, c, 200_000, seed=3)
    for p in (0.9, 0.99):
        theory = float(wait_quantile_s(lam, c * mu, float(c), p))
        assert np.quantile(waits, p) == pytest.approx(theory, rel=0.12)
    assert np.mean(waits > 0) == pytest.approx(float(erlang_c(float(c), lam / mu)), abs=0.02)


def test_fit_line_recovers_parameters_and_refuses_constant_x() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 10, 200)
    y = 3.0 + 2.0 * x + rng.normal(0, 0.1, 200)
    f = fit_line(x, y)
    assert f is not None
    assert f.intercept == pytest.approx(3.0, abs=0.05) and f.slope == pytest.approx(2.0, abs=0.01)
    assert f.slope_t > 100
    assert fit_line(np.full(10, 4.0), y[:10]) is None


def _service(*, n: int = 240, servers: int = 2, service_s: float = 0.01, idle: float = 5.0,
             cpu_bound: bool = True, load: float = 20.0, swing: float = 10.0, seed: int = 0
             ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    t = 1.7e9 + 15.0 * np.arange(n)
    lam = np.maximum(load + swing * np.sin(np.arange(n) / 15) + rng.normal(0, 0.05 * load, n), 0.1)
    k = servers / service_s
    cpu = idle + (100 - idle) * lam / k if cpu_bound else idle + 0.02 * lam
    lat = 1000 * (service_s + wait_quantile_s(lam, k, float(servers), 0.99))
    values = {"request_rate": lam, "cpu_usage": cpu + rng.normal(0, 0.5, n),
              "request_latency_ms": lat * rng.lognormal(0, 0.03, n), "error_rate": np.full(n, 0.001),
              "memory_usage": 40 + rng.normal(0, 0.3, n)}
    return {m: t for m in values}, values


def test_cpu_bound_service_capacity_is_recovered() -> None:
    times, values = _service()
    fit = fit_capacity(times, values, replicas=2, workers=1)
    assert fit.trustworthy, fit.reason
    assert fit.capacity_source.startswith("cpu")
    assert fit.capacity == pytest.approx(200.0, rel=0.05)
    assert fit.cpu_idle == pytest.approx(5.0, abs=1.0)
    assert fit.servers == 2


def test_io_bound_service_capacity_comes_from_the_latency_curve() -> None:
    # workers wait on I/O: CPU hardly moves, latency bends as the pool fills (load up to ~85% of capacity)
    times, values = _service(cpu_bound=False, servers=4, service_s=0.1, load=26.0, swing=8.0)
    fit = fit_capacity(times, values, replicas=4, workers=1)
    assert fit.capacity_source == "latency"
    assert fit.capacity == pytest.approx(40.0, rel=0.1)


def test_flat_latency_only_bounds_capacity_from_below() -> None:
    rng = np.random.default_rng(1)
    lam = rng.uniform(1, 5, 100)
    lf = fit_latency_curve(lam, 50 + rng.normal(0, 1, 100), 4, 0.99)
    assert lf is not None
    assert math.isinf(lf.capacity) and math.isinf(lf.high)
    assert lf.low >= lam.max()


def test_constant_load_is_not_trustworthy_and_says_why() -> None:
    times, values = _service(swing=0.0, seed=2)
    values["request_rate"] = np.full(values["request_rate"].size, 20.0)
    fit = fit_capacity(times, values, replicas=2, workers=1)
    assert not fit.trustworthy
    assert "load variation" in fit.reason
    # first model: all CPU assumed load-driven, so capacity is where CPU would reach 100%
    cpu_now = float(np.median(values["cpu_usage"][-5:]))
    assert fit.capacity == pytest.approx(100.0 / cpu_now * 20.0, rel=1e-6)


def test_no_request_rate_falls_back_to_utilisation_scaling() -> None:
    times, values = _service()
    del values["request_rate"]
    fit = fit_capacity(times, values, replicas=None, workers=None)
    assert not fit.has_rate and not fit.trustworthy
    assert "no request rate" in fit.reason and "replicas/workers not configured" in fit.reason
    assert fit.capacity == pytest.approx(100.0 / float(np.median(values["cpu_usage"][-5:])))


def test_short_history_is_not_trustworthy() -> None:
    times, values = _service(n=8)
    fit = fit_capacity(times, values, replicas=2, workers=1)
    assert not fit.trustworthy and "only 8 samples" in fit.reason


def test_params_are_json_ready() -> None:
    times, values = _service()
    params = fit_capacity(times, values, replicas=2, workers=1).params()
    assert params["rate_unit"] == "req/s"
    assert params["service_time_ms"] == pytest.approx(10.0, rel=0.05)
    assert set(params["capacity_by_route"]) == {"cpu", "latency"}
    assert json.loads(json.dumps(params, allow_nan=False)) == params


def _simulated_mean_sojourn(service: str, mu: float, rhos: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Mean time in system of a simulated single-server queue at each utilisation (Lindley recursion)."""
    rng = np.random.default_rng(seed)
    out = []
    for rho in rhos:
        gaps = rng.exponential(1 / (rho * mu), n)
        s = np.full(n, 1 / mu) if service == "constant" else rng.exponential(1 / mu, n)
        w = np.zeros(n)
        for i in range(1, n):
            w[i] = max(0.0, w[i - 1] + s[i - 1] - gaps[i])
        out.append(float(np.mean(w + s)))
    return np.array(out)


@pytest.mark.parametrize(("service", "k_low", "k_high"), [("constant", 0.3, 0.75), ("exponential", 0.75, 1.35)])
def test_mean_latency_fit_recovers_service_time_and_variability(service: str, k_low: float,
                                                                 k_high: float) -> None:
    mu = 50.0
    rhos = np.repeat(np.linspace(0.1, 0.6, 6), 4)
    mean_ms = 1000 * _simulated_mean_sojourn(service, mu, rhos, 20_000, seed=5)
    mf = fit_mean_latency(rhos * mu, mean_ms, 1)
    assert mf is not None
    assert mf.service_s == pytest.approx(0.02, rel=0.08)
    assert mf.service_low <= 0.02 * 1.02 and mf.service_high >= 0.02 * 0.98
    assert k_low <= mf.variability <= k_high


def test_mean_latency_route_catches_blocked_workers() -> None:
    # 4 workers each held 100 ms (mostly waiting on I/O): CPU says ~2000 req/s, the pool serves 40
    times, values = _service(cpu_bound=False, servers=4, service_s=0.1, load=16.0, swing=8.0)
    lam = values["request_rate"]
    pw = erlang_c(4.0, lam * 0.1)
    values["request_latency_mean_ms"] = 1000 * (0.1 + 0.5 * pw / (40.0 - lam))
    times["request_latency_mean_ms"] = times["request_rate"]
    del values["request_latency_ms"]                  # only the mean-latency route can see the pool
    fit = fit_capacity(times, values, replicas=4, workers=1)
    assert fit.capacity_source == "mean_latency", fit.params()
    assert fit.capacity == pytest.approx(40.0, rel=0.05)
    assert fit.variability == pytest.approx(0.5, abs=0.15)
    assert fit.trustworthy, fit.reason
    assert fit.candidates["cpu"][0] > 10 * fit.capacity


def test_service_time_that_moves_over_time_widens_the_capacity_spread() -> None:
    rng = np.random.default_rng(4)
    lam = rng.uniform(2.0, 12.0, 120)
    steady = 1000 * (0.03 + 0.5 * erlang_c(1.0, lam * 0.03) / (1 / 0.03 - lam))
    s_t = 0.03 * np.exp(rng.normal(0.0, 0.15, 120))             # a noisy neighbour: service time moves ±15%
    moving = 1000 * (s_t + 0.5 * erlang_c(1.0, lam * s_t) / (1 / s_t - lam))
    calm, noisy = fit_mean_latency(lam, steady, 1), fit_mean_latency(lam, moving, 1)
    assert calm is not None and noisy is not None
    assert calm.spread < 0.02
    assert 0.1 <= noisy.spread <= 0.3           # the moving service time, plus its effect on the queueing
    assert noisy.capacity_log_sd > 5 * calm.capacity_log_sd
    assert noisy.service_s == pytest.approx(0.03, rel=0.1)


# ------------------------------------------------------------------------------------------ traffic states


def test_a_rate_observed_as_zero_is_zero_traffic_not_a_missing_rate() -> None:
    """A constant counter's rate is 0: that is an observation (nothing to scale), not "no throughput metric"."""
    times, values = _service()
    values["request_rate"] = np.zeros(values["request_rate"].size)
    fit = fit_capacity(times, values, replicas=2, workers=1)
    assert fit.traffic == "zero" and fit.zero_traffic and fit.has_rate
    assert fit.rate_now == 0.0 and fit.cpu_slope == 0.0
    assert not fit.capacity_known and "was 0 over the whole history" in fit.reason
    params = fit.params()
    assert params["traffic"] == "zero" and params["capacity"] is None and params["service_time_ms"] is None
    assert json.loads(json.dumps(params, allow_nan=False)) == params


def test_traffic_that_stopped_keeps_the_capacity_fitted_from_its_history() -> None:
    times, values = _service()
    values["request_rate"][-10:] = 0.0
    values["cpu_usage"][-10:] = 5.0                                 # idle
    fit = fit_capacity(times, values, replicas=2, workers=1)
    assert fit.zero_traffic and fit.rate_now == 0.0
    assert fit.capacity_known and fit.capacity_source in ("cpu", "latency")
    assert fit.capacity == pytest.approx(200.0, rel=0.1)


@pytest.mark.parametrize(("drop", "traffic", "why"), [
    (True, "no_query", "no request_rate metric for this twin"),
    (False, "no_data", "request_rate returned no data"),
])
def test_no_rate_query_and_no_rate_data_are_told_apart(drop: bool, traffic: str, why: str) -> None:
    times, values = _service()
    if drop:
        del values["request_rate"]
    else:
        values["request_rate"] = np.full(values["request_rate"].size, np.nan)
    fit = fit_capacity(times, values, replicas=2, workers=1)
    assert fit.traffic == traffic and not fit.has_rate and not fit.zero_traffic
    assert why in fit.reason and "proportional to traffic" in fit.reason
    assert fit.capacity == pytest.approx(100.0 / float(np.median(values["cpu_usage"][-5:])))


def test_low_traffic_on_an_idle_cpu_keeps_the_idle_floor() -> None:
    """~1 request a minute, CPU flat at 30%: the CPU law keeps the 30% floor and a bounded slope, where "all
    CPU is load-driven" would put 1500 %/(req/s) on it and 5x traffic at 150% CPU."""
    times, values = _service()
    rng = np.random.default_rng(5)
    n = values["request_rate"].size
    values["request_rate"] = rng.poisson(1.2, n) / 60.0
    values["request_rate"][-5:] = 0.02
    values["cpu_usage"] = 30.0 + rng.normal(0, 1.0, n)
    fit = fit_capacity(times, values, replicas=2, workers=1)
    assert fit.traffic == "observed" and not fit.trustworthy
    assert "CPU does not rise clearly with load" in fit.reason and "idle floor" in fit.reason
    assert fit.cpu_idle == pytest.approx(30.0, abs=1.0)
    # the slope is the upper bound of one that is really 0: small against 30% / 0.02 req/s = 1500
    assert 0.0 < fit.cpu_slope < 50.0
    assert fit.cpu_idle + fit.cpu_slope * 5 * 0.02 < 32.0           # CPU at 5x traffic
    # the covariance pivots at the data's centre: drawn slopes move CPU at higher loads, not where it was seen
    x = float(np.mean(values["request_rate"]))
    g = np.array([1.0, x])
    assert fit.cpu_cov[1][1] > 0 and float(g @ np.array(fit.cpu_cov) @ g) == pytest.approx(0.0, abs=1e-9)


def test_a_capacity_route_with_few_samples_of_its_own_is_not_trustworthy() -> None:
    """Plenty of request-rate samples, but only eight of CPU (one every 30) to fit the utilisation law from: the
    eight repeat at the request-rate times around them, and count as eight."""
    times, values = _service()
    values.pop("request_latency_ms")
    sparse_t = {**times, "cpu_usage": times["cpu_usage"][::30]}
    sparse_v = {**values, "cpu_usage": values["cpu_usage"][::30]}
    fit = fit_capacity(sparse_t, sparse_v, replicas=2, workers=1)
    assert fit.capacity_source == "cpu" and not fit.trustworthy
    assert fit.reason == "the cpu route rests on only 8 samples (need 20)"
    assert fit.params()["route_samples"] == 8
    full = fit_capacity(times, values, replicas=2, workers=1)
    assert full.capacity_source == "cpu" and full.trustworthy and full.params()["route_samples"] == 240


def test_the_capacity_is_never_below_the_throughput_the_service_sustained() -> None:
    """Mostly 30 req/s, but 160 req/s held for two minutes: the capacity is at least that in every draw of a
    simulation, though the 90th percentile of the history is about 33 req/s."""
    rng = np.random.default_rng(4)
    n = 240
    lam = 30 + rng.normal(0, 2, n)
    lam[100:108] = 160 + rng.normal(0, 2, 8)
    t = 1.7e9 + 15.0 * np.arange(n)
    values = {"request_rate": lam, "cpu_usage": 4 + 96 * lam / 360 + rng.normal(0, 0.8, n)}
    fit = fit_capacity({m: t for m in values}, values, replicas=2, workers=4)
    assert float(np.quantile(lam, 0.9)) < 40.0
    assert 150.0 <= fit.capacity_floor <= float(lam.max())
    d = draw(fit, (CPU,), np.random.default_rng(0))
    assert float(d.capacity.min()) >= fit.capacity_floor


def test_sustained_peak_is_the_highest_level_held_for_the_window() -> None:
    x = np.array([1.0, 9.0, 2.0, 5.0, 6.0, 5.5, 7.0, 1.0])
    assert sustained_peak(x, 3) == 5.5
    assert sustained_peak(x, 1) == 9.0
    assert sustained_peak(x[:2], 5) == 1.0 and sustained_peak(np.empty(0), 5) == 0.0


def test_mean_wait_is_the_erlang_c_mean() -> None:
    # M/M/1: E[W] = ρ/(μ − λ)
    assert float(mean_wait_s(8.0, 10.0, 1.0)) == pytest.approx(0.8 / 2.0, rel=1e-12)
    assert float(mean_wait_s(25.0, 30.0, 3.0)) == pytest.approx(
        float(erlang_c(3.0, 2.5)) / 5.0, rel=1e-12)
    assert math.isinf(float(mean_wait_s(10.0, 10.0, 1.0)))
