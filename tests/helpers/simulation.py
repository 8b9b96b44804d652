"""Simulation contexts of twins whose history comes from a known service, for the what-if scenario tests."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from sidecar.engine.whatif import SimulationContext, wait_quantile_s

LIMITS = {"cpu_usage": 95.0, "memory_usage": 90.0, "request_latency_ms": 1000.0, "error_rate": 0.05}
HORIZONS = np.array([300.0, 900.0, 1800.0, 3600.0])


def make_ctx(*, n: int = 240, servers: int = 2, service_s: float = 0.01, idle: float = 5.0,
             load: float = 20.0, swing: float = 10.0, cpu_bound: bool = True, with_rate: bool = True,
             replicas: int | None = 2, workers: int | None = 1, memory: float = 40.0,
             forecast: Mapping[str, tuple[float, float, float]] | None = None,
             seed: int = 0) -> SimulationContext:
    """A twin whose history comes from a known M/M/c service (capacity = servers / service_s)."""
    rng = np.random.default_rng(seed)
    t = 1.7e9 + 15.0 * np.arange(n)
    lam = np.maximum(load + swing * np.sin(np.arange(n) / 15) + rng.normal(0, 0.05 * load, n), 0.1)
    lam[-5:] = load                                   # "now" is exactly `load`
    k = servers / service_s
    cpu = idle + (100 - idle) * lam / k if cpu_bound else idle + 0.02 * lam
    lat = 1000 * (service_s + wait_quantile_s(lam, k, float(servers), 0.99))
    values = {"cpu_usage": cpu + rng.normal(0, 0.3, n), "request_latency_ms": lat * rng.lognormal(0, 0.02, n),
              "error_rate": np.full(n, 0.001), "memory_usage": memory + rng.normal(0, 0.2, n)}
    if with_rate:
        values["request_rate"] = lam
    mean = {m: np.full(4, np.nan) for m in values}
    lower = dict(mean)
    upper = dict(mean)
    for m, (mu, lo, hi) in (forecast or {}).items():
        mean[m], lower[m], upper[m] = np.full(4, mu), np.full(4, lo), np.full(4, hi)
    return SimulationContext(twin_id="twin_test", now=float(t[-1]), limits=LIMITS,
                             times={m: t for m in values}, values=values, horizons_s=HORIZONS,
                             forecast_mean=mean, forecast_lower=lower, forecast_upper=upper,
                             replicas=replicas, workers=workers)


def with_series(ctx: SimulationContext, **series: np.ndarray) -> SimulationContext:
    """The context with these series added or replaced (their times those of cpu_usage unless it has them)."""
    values = {**ctx.values, **series}
    times = {m: ctx.times.get(m, ctx.times["cpu_usage"]) for m in values}
    return SimulationContext(ctx.twin_id, ctx.now, ctx.limits, times, values, ctx.horizons_s, ctx.forecast_mean,
                             ctx.forecast_lower, ctx.forecast_upper, replicas=ctx.replicas, workers=ctx.workers)
