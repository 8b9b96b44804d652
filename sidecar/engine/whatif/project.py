"""The projection: a metric's forecast (what happens if nothing changes) plus the capacity model's difference.

`baseline` and `around` place each draw inside a metric's forecast interval; `steady` adds what the
queueing model says the scenario's traffic (and a fault: fewer replicas, a slow dependency, an error
burst) changes at that traffic, keeping every metric inside its domain. At multiplier 1 and no fault
the difference is zero, so a simulation reproduces the forecast exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .context import SimulationContext
from .draws import Draws
from .fit import CapacityFit
from .metrics import CPU, ERRORS, F64, LATENCY, MEAN_LATENCY, MEMORY
from .queueing import mean_wait_s, wait_quantile_s

#: Utilisation the steady-state queueing curve is evaluated at, at most (the backlog takes over above).
RHO_CAP = 0.98
#: Normal quantile of a two-sided 90% interval: forecast bounds -> standard deviation.
Z90 = 1.6448536269514722


def baseline(ctx: SimulationContext, metric: str, offsets: F64, now_value: float) -> tuple[F64, F64, F64]:
    """Forecast mean and its spread below and above (sd of each half) at the offsets (seconds from now).

    The current level with no spread where the forecast is not warm. The halves are separate because a
    forecast interval need not be symmetric (a rate near 0, a latency with a long upper tail).
    """
    h = np.asarray(ctx.horizons_s, dtype=np.float64)
    mean = np.asarray(ctx.forecast_mean.get(metric, np.empty(0)), dtype=np.float64)
    lo = np.asarray(ctx.forecast_lower.get(metric, np.empty(0)), dtype=np.float64)
    hi = np.asarray(ctx.forecast_upper.get(metric, np.empty(0)), dtype=np.float64)
    if h.size == 0 or mean.shape != h.shape or not np.all(np.isfinite(mean)):
        flat = np.full(offsets.shape, now_value)
        return flat, np.zeros(offsets.shape), np.zeros(offsets.shape)
    order = np.argsort(h)
    h, mean = h[order], mean[order]
    if lo.shape == h.shape and hi.shape == h.shape and np.all(np.isfinite(lo[order])) \
            and np.all(np.isfinite(hi[order])):
        sd_lo = np.maximum(mean - lo[order], 0.0) / Z90
        sd_hi = np.maximum(hi[order] - mean, 0.0) / Z90
    else:
        sd_lo = sd_hi = np.zeros_like(h)
    xs = np.concatenate([[0.0], h])
    mu = np.interp(offsets, xs, np.concatenate([[now_value], mean]))
    below = np.interp(offsets, xs, np.concatenate([[0.0], sd_lo]))
    above = np.interp(offsets, xs, np.concatenate([[0.0], sd_hi]))
    return mu, below, above


def around(base: tuple[F64, F64, F64], z: F64, domain: tuple[float, float]) -> F64:
    """(draws × times): each draw at its place ``z`` inside the forecast interval, kept inside the domain.

    A split normal: the 5% and 95% points of the draws are the forecast's own lower and upper bounds.
    """
    mu, below, above = base
    return np.clip(mu[None, :] + np.where(z < 0, z * below[None, :], z * above[None, :]), *domain)


@dataclass(frozen=True, slots=True)
class Fault:
    """What a scenario does to the service while it lasts (share = load per surviving replica)."""

    share: float = 1.0
    added_latency_ms: float = 0.0
    error_burst: float = 0.0


def fault_capacity(fit: CapacityFit, d: Draws, fault: Fault) -> tuple[F64, float]:
    """Capacity and servers during a fault: fewer replicas, or workers held longer by a slow dependency."""
    servers = max(fit.servers / fault.share, 1.0)
    cap = d.capacity / fault.share
    if fault.added_latency_ms > 0 and fit.has_rate:
        service_s = servers / cap + fault.added_latency_ms / 1000.0
        cap = servers / service_s
    return cap, servers


def steady(fit: CapacityFit, d: Draws, lam: F64, lam_ref: F64, ref: Mapping[str, F64], fault: Fault,
           domains: Mapping[str, tuple[float, float]], backlog_s: F64 | None = None,
           shed: F64 | None = None) -> dict[str, F64]:
    """Metrics at arrival rate ``lam`` as the reference values plus the model's difference.

    Only the metrics in ``ref`` (the twin's own) are projected, each kept inside its domain: overload shows
    as shed requests only on a twin with an error rate, and as a backlog only on one with a latency.
    """
    cap, servers = fault_capacity(fit, d, fault)
    lam_eff = lam * fault.share
    lam_q = np.minimum(lam, RHO_CAP * cap)
    lam_q_ref = np.minimum(lam_ref, RHO_CAP * d.capacity)
    out: dict[str, F64] = {}
    if CPU in ref:
        out[CPU] = np.clip(ref[CPU] + d.cpu_slope * (lam_eff - lam_ref), *domains[CPU])
    for metric in (LATENCY, MEAN_LATENCY):
        if metric not in ref:
            continue
        if metric == LATENCY:
            w = wait_quantile_s(lam_q, cap, servers, fit.quantile, d.variability)
            w_ref = wait_quantile_s(lam_q_ref, d.capacity, float(fit.servers), fit.quantile, d.variability)
        else:
            w = mean_wait_s(lam_q, cap, servers, d.variability)
            w_ref = mean_wait_s(lam_q_ref, d.capacity, float(fit.servers), d.variability)
        lat = ref[metric] + 1000.0 * (w - w_ref) + fault.added_latency_ms
        lat = np.where(lam < cap, lat, np.inf) if backlog_s is None else lat + 1000.0 * backlog_s
        out[metric] = np.clip(lat, *domains[metric])
    if ERRORS in ref:
        over = np.maximum(0.0, 1.0 - cap / np.maximum(lam, 1e-300)) if shed is None else shed
        err = ref[ERRORS] + d.error_slope * (lam_eff - lam_ref) + fault.error_burst + over
        out[ERRORS] = np.clip(err, *domains[ERRORS])
    if MEMORY in ref:
        out[MEMORY] = np.clip(ref[MEMORY] + d.memory_slope * (lam_eff - lam_ref), *domains[MEMORY])
    return out


def limits_of(ctx: SimulationContext, projected: Mapping[str, F64]) -> dict[str, float]:
    return {m: float(ctx.limits[m]) for m in projected if m in ctx.limits and math.isfinite(ctx.limits[m])}
