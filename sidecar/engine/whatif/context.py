"""What a simulation works from: the twin handed in (`SimulationContext`), each metric's domain, and `Run`.

The engine stays pure: the twin's history, limits and forecasts come in as arrays, and `Run` is that
context joined with the validated scenario, the capacity fit and its draws, which every scenario type reads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .draws import Draws
from .fit import CapacityFit
from .metrics import CORE_DOMAINS
from .scenario import Scenario


@dataclass(frozen=True, slots=True)
class SimulationContext:
    """Everything a simulation needs from the twin, handed in (the engine stays pure)."""

    twin_id: str
    now: float                                  # unix s
    limits: Mapping[str, float]                 # metric -> limit
    times: Mapping[str, np.ndarray]             # metric -> (n,) sample times, oldest first
    values: Mapping[str, np.ndarray]            # metric -> (n,) observed values
    horizons_s: np.ndarray                      # (H,)
    forecast_mean: Mapping[str, np.ndarray]     # metric -> (H,) (NaN when not warm)
    forecast_lower: Mapping[str, np.ndarray]
    forecast_upper: Mapping[str, np.ndarray]
    replicas: int | None = None
    workers: int | None = None
    request_rate_metric: str = "request_rate"
    latency_quantile: float = 0.99              # which percentile request_latency_ms is
    # metric -> (low, high) its values can take; core metrics default to CORE_DOMAINS (see `metric_domain`)
    domains: Mapping[str, tuple[float, float]] = field(default_factory=dict)


def metric_domain(ctx: SimulationContext, metric: str) -> tuple[float, float]:
    """The values ``metric`` can take: the context's domain, the built-in one of a core metric, else open.

    A metric without a given or built-in domain is unbounded, except that one never observed below 0 (a
    count, a queue depth, a load average) stays at or above 0. A missing (NaN) end is open.
    """
    given = ctx.domains.get(metric)
    if given is not None:
        lo, hi = float(given[0]), float(given[1])
        lo = -math.inf if math.isnan(lo) else lo
        hi = math.inf if math.isnan(hi) else hi
        if lo > hi:
            raise ValueError(f"domain of {metric} is empty: low {lo:g} > high {hi:g}")
        return lo, hi
    if metric in CORE_DOMAINS:
        return CORE_DOMAINS[metric]
    v = np.asarray(ctx.values.get(metric, np.empty(0)), dtype=np.float64)
    v = v[np.isfinite(v)]
    return (0.0 if v.size and float(v.min()) >= 0.0 else -math.inf), math.inf


@dataclass(frozen=True, slots=True)
class Run:
    """What every scenario type works from: the context, the scenario, the fit and its draws."""

    ctx: SimulationContext
    sc: Scenario
    fit: CapacityFit
    d: Draws
    metrics: tuple[str, ...]                     # the twin's core metrics: projected by the capacity model
    own: tuple[str, ...]                         # the twin's other metrics: projected as their own forecast
    domains: Mapping[str, tuple[float, float]]
    model_fit: dict[str, Any]
    seed: int
