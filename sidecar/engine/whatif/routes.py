"""The routes to a service's capacity, each a fit of its own: the CPU law, the latency curve, the mean latency.

The capacity fit (`capacity.py`) runs every route the twin's metrics allow and keeps the smallest
capacity (the bottleneck); each route here only fits its curve and says how well it is determined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .metrics import F64
from .queueing import erlang_c, wait_quantile_s

#: One-sided 95% normal quantile: the CPU slope's upper bound when it is not clearly positive.
SLOPE_UPPER_Z = 1.645


@dataclass(frozen=True, slots=True)
class LinearFit:
    """y = intercept + slope·x by least squares, with the parameters' covariance."""

    intercept: float
    slope: float
    cov: tuple[tuple[float, float], tuple[float, float]]
    resid_sd: float
    n: int

    @property
    def slope_t(self) -> float:
        se = math.sqrt(max(self.cov[1][1], 0.0))
        return self.slope / se if se > 0 else (math.inf if self.slope > 0 else 0.0)


def fit_line(x: F64, y: F64) -> LinearFit | None:
    """Ordinary least squares; None when x does not vary (the slope is unidentified)."""
    n = int(x.size)
    if n < 3 or float(np.ptp(x)) <= 1e-12 * max(1.0, float(np.max(np.abs(x)))):
        return None
    design = np.column_stack([np.ones(n), x])
    coef, _, _, _ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    dof = max(n - 2, 1)
    s2 = float(resid @ resid) / dof
    cov = s2 * np.linalg.inv(design.T @ design)
    return LinearFit(float(coef[0]), float(coef[1]),
                     ((float(cov[0, 0]), float(cov[0, 1])), (float(cov[1, 0]), float(cov[1, 1]))),
                     math.sqrt(s2), n)


@dataclass(frozen=True, slots=True)
class LatencyFit:
    """Capacity from the latency curve: point, profile interval (upper may be inf), base latency."""

    capacity: float
    low: float
    high: float
    base_ms: float
    resid_sd: float


def fit_latency_curve(rate: F64, latency_ms: F64, servers: int, p: float,
                      variability: float = 1.0) -> LatencyFit | None:
    """Profile least squares of L = L0 + W_p(λ; K) over a geometric grid of capacities K.

    L0 is profiled out (mean residual) for every K, so the only search is 1-D; the
    interval is the set of K whose SSE stays within the 95% χ² profile bound. When the
    best K is at the top of the grid the latency never bent: capacity is only bounded
    below.
    """
    n = int(rate.size)
    if n < 5 or float(np.max(rate)) <= 0:
        return None
    top = float(np.max(rate))
    grid = top * np.geomspace(1.005, 200.0, 400)
    w_ms = 1000.0 * wait_quantile_s(rate[None, :], grid[:, None], float(servers), p, variability)
    resid = latency_ms[None, :] - w_ms
    base = resid.mean(axis=1)
    sse = ((resid - base[:, None]) ** 2).sum(axis=1)
    best = int(np.argmin(sse))
    sse_min = float(sse[best])
    bound = sse_min * (1.0 + 3.84 / max(n - 2, 1)) + 1e-12
    inside = np.flatnonzero(sse <= bound)
    lo = float(grid[inside[0]])
    hi = math.inf if inside[-1] >= grid.size - 1 else float(grid[inside[-1]])
    cap = math.inf if math.isinf(hi) else float(grid[best])
    return LatencyFit(cap, lo, hi, float(base[best]), math.sqrt(sse_min / max(n - 2, 1)))


@dataclass(frozen=True, slots=True)
class MeanLatencyFit:
    """Service time (and its variability) from the mean latency: T(λ) = S + k·E[W](λ; c/S, c)."""

    service_s: float
    service_low: float
    service_high: float
    variability: float
    variability_low: float
    variability_high: float
    resid_sd: float
    spread: float = 0.0             # robust log-sd of the per-sample service time over the history

    @property
    def capacity_log_sd(self) -> float:
        """Where a future window's capacity may lie: the estimate's own uncertainty and the service time's
        movement over time (noisy neighbours, a dependency slowing down), which the next window sees too."""
        estimate = max(math.log(self.service_high / self.service_low) / (2 * 1.96), 0.01)
        return math.hypot(estimate, self.spread)


#: The service-time variabilities k the mean-latency fit chooses from: (Ca² + Cs²)/2 over a grid of 0.125.
K_GRID = np.linspace(0.25, 2.5, 19)


def fit_mean_latency(rate: F64, mean_ms: F64, servers: int,
                     k_bounds: tuple[float, float] = (0.25, 2.5)) -> MeanLatencyFit | None:
    """Least squares over a grid of service times S and variabilities k, with profile intervals.

    The mean latency is the route to the service rate that does not depend on the shape of
    the service-time distribution: at low load it *is* the (wall-clock) service time, and
    how fast it rises with load measures k — 0.5 for constant service times (M/D/c), 1 for
    exponential ones (M/M/c) — which then scales the waiting-time percentiles. ``k_bounds``
    limits k to part of the grid (0.25-2.5; below 0.5 arrivals would be smoother than Poisson).
    """
    ok = np.isfinite(rate) & np.isfinite(mean_ms) & (rate > 0) & (mean_ms > 0)
    k_grid = K_GRID[np.abs(np.clip(K_GRID, *k_bounds) - K_GRID) < 1e-9]
    return _mean_latency_grid(rate[ok], mean_ms[ok] / 1000.0, servers, k_grid)


def _mean_latency_grid(lam: F64, t: F64, servers: int, k_grid: F64) -> MeanLatencyFit | None:
    """`fit_mean_latency` on clean samples (rates > 0, latencies in s)."""
    n = int(lam.size)
    if n < 5:
        return None
    base = float(np.quantile(t, 0.1))
    s_grid = base * np.geomspace(0.2, 1.2, 160)
    cap = servers / s_grid                                            # (S,)
    stable = cap > float(np.max(lam)) * 1.001
    with np.errstate(divide="ignore", invalid="ignore"):
        pw = erlang_c(float(servers), lam[None, :] * s_grid[:, None])  # (S, n)
        wait = np.where(lam[None, :] < cap[:, None], pw / (cap[:, None] - lam[None, :]), np.inf)
    model = s_grid[:, None, None] + k_grid[None, :, None] * wait[:, None, :]   # (S, k, n)
    sse = ((t[None, None, :] - model) ** 2).sum(axis=2)
    sse[~stable, :] = np.inf
    if not np.isfinite(sse).any():
        return None
    i, j = np.unravel_index(int(np.argmin(sse)), sse.shape)
    sse_min = float(sse[i, j])
    bound = sse_min * (1.0 + 3.84 / max(n - 2, 1)) + 1e-18
    s_in = np.flatnonzero(sse.min(axis=1) <= bound)
    k_in = np.flatnonzero(sse.min(axis=0) <= bound)
    # each sample's own service time (its mean latency less the fitted queueing): how much it moves over time
    own = t - k_grid[j] * wait[i]
    own = np.log(own[own > 0])
    spread = 1.4826 * float(np.median(np.abs(own - np.median(own)))) if own.size >= 5 else 0.0
    return MeanLatencyFit(float(s_grid[i]), float(s_grid[s_in[0]]), float(s_grid[s_in[-1]]),
                          float(k_grid[j]), float(k_grid[k_in[0]]), float(k_grid[k_in[-1]]),
                          1000.0 * math.sqrt(sse_min / max(n - 2, 1)), spread)


def cpu_upper_law(cpu_fit: LinearFit, x_mean: float, y_mean: float
                  ) -> tuple[float, float, tuple[tuple[float, float], tuple[float, float]]]:
    """CPU law for a slope that is not clearly positive: pivot at the data's centre, slope at its upper bound.

    The line still passes through the CPU observed at the load observed (so the idle floor stays what it
    was), and only the load-driven part is made conservative. Its covariance pivots the same way:
    a = ȳ − b·x̄, so var(a) = x̄²·var(b) and cov(a, b) = −x̄·var(b).
    """
    var_b = max(cpu_fit.cov[1][1], 0.0)
    se = math.sqrt(var_b)
    b = max(max(cpu_fit.slope, 0.0) + SLOPE_UPPER_Z * se, 1e-9)
    a = min(max(y_mean - b * x_mean, 0.0), 99.0)
    if se == 0.0:
        var_b = (0.5 * b) ** 2
    return a, b, ((x_mean**2 * var_b, -x_mean * var_b), (-x_mean * var_b, var_b))
