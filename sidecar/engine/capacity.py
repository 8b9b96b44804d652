"""The capacity model a what-if simulation runs on: fitted from what the twin observed.

A service is modelled as an M/M/c queue (c = replicas × workers servers) in front of a
CPU whose usage grows linearly with throughput (the utilisation law U = a + b·λ). Up to
three routes estimate the capacity K = c·μ, and the smallest wins (the bottleneck):

* ``cpu`` — CPU seconds per request: λ_cpu = (100 − a) / b, with a (idle CPU %) and b
  (CPU % per req/s) fitted by least squares; cpu_usage is read as a percentage of the
  CPU the service may use (its limit), so 100% is saturation.
* ``mean_latency`` (when the optional ``request_latency_mean_ms`` metric is present) —
  the wall-clock service time S from T(λ) = S + k·E[W](λ; c/S, c) (Erlang C mean wait),
  K = c/S. It catches what the CPU law misses (workers blocked on I/O, CPU contention),
  and k measures the service-time variability (0.5 constant … 1 exponential), which then
  scales the waiting-time percentiles (Allen–Cunneen).
* ``latency`` — the latency percentile fitted to L(λ) = L0 + k·W_p(λ; K), W_p the M/M/c
  waiting-time quantile. A flat curve only bounds K from below and gives no candidate.

With none of them (no load variation), the service time is taken from the latency
percentile at low load under M/M/c and the fit says it is not trustworthy.

Traffic comes in four states (``CapacityFit.traffic``), because "no rate" and "a rate of
0" mean opposite things: ``observed`` (the fit above), ``zero`` (the request rate was
observed and is 0 now: every multiple of it is still 0, so a scenario's traffic changes
nothing), and ``no_query`` / ``no_data`` (no throughput metric, or one that returned
nothing: the first model, utilisation assumed proportional to traffic, rates in units of
the current load).

When the load varies but CPU does not rise clearly with it (low traffic on a mostly idle
service), the CPU law keeps the observed floor: the line through the data's centre with
the slope's upper 95% bound, not "all CPU is load-driven" (which at 0.02 req/s and 30%
idle CPU would put 5x traffic at 150% CPU).

Projections at any arrival rate follow from the fitted parameters: CPU from the
utilisation law, latency from the queueing curve, errors from their fitted trend plus
the share of traffic above capacity, memory from its own fitted load slope on top of
its forecast (both trends only when clearly positive: more traffic never frees memory).

The fit is *not trustworthy* (and the simulation widens its bounds) when there is too
little history (fewer than ``MIN_SAMPLES`` of the request rate, or of the metric the
winning route is fitted from), too little load variation, the winning route is poorly
determined (a CPU slope that is not clearly positive, a wide service-time interval),
there is no throughput metric at all, or the capacity lies far beyond anything observed
(extrapolation).

The capacity is never below what the service demonstrably served (``capacity_floor``):
the 90th percentile of the observed request rate, or the highest rate it held for
``NOW_SAMPLES`` consecutive samples, whichever is higher.

Everything here is pure and vectorised: parameters may be arrays of Monte Carlo draws
and rates may be (draws × grid) arrays.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import special

F64 = NDArray[np.float64]

CPU = "cpu_usage"
MEMORY = "memory_usage"
LATENCY = "request_latency_ms"
#: Optional: mean latency (e.g. rate(..._sum) / rate(..._count) of the same histogram), in ms.
MEAN_LATENCY = "request_latency_mean_ms"
ERRORS = "error_rate"

#: Minimum aligned samples for a fit we call trustworthy.
MIN_SAMPLES = 20
#: Minimum coefficient of variation of the observed request rate (load variation).
MIN_LOAD_CV = 0.1
#: Minimum t-statistic of the CPU-per-request slope.
MIN_SLOPE_T = 4.0
#: Capacity further than this multiple of the highest observed load is an extrapolation.
MAX_EXTRAPOLATION = 10.0
#: Samples at the end of a series that define "now" (median, robust to one odd scrape).
NOW_SAMPLES = 5
#: Service-time variability (waiting time relative to M/M/c) assumed when the data does not tell:
#: from constant service times (M/D/c, 0.5) to twice as variable as exponential (1.5).
VARIABILITY_PRIOR = (0.5, 1.5)
#: Up to this many servers Erlang B is computed by its recursion (exact, cheap); above, by gamma functions.
RECURSION_SERVERS = 32

#: What the fit knows about traffic (see the module docstring).
TRAFFIC_OBSERVED = "observed"
TRAFFIC_ZERO = "zero"
TRAFFIC_NO_QUERY = "no_query"
TRAFFIC_NO_DATA = "no_data"
#: One-sided 95% normal quantile: the CPU slope's upper bound when it is not clearly positive.
SLOPE_UPPER_Z = 1.645


def erlang_c(servers: F64 | float, offered: F64 | float) -> F64:
    """Probability an arrival waits in M/M/c (Erlang C), for offered load a = λ/μ < c.

    Uses Erlang B = Poisson pmf / Poisson cdf through the regularised incomplete
    gamma function, so it is vectorised and stable for thousands of servers (the
    textbook recursion would need a Python loop per server).
    """
    c = np.asarray(servers, dtype=np.float64)
    a = np.maximum(np.asarray(offered, dtype=np.float64), 1e-300)
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        if c.ndim == 0 and float(c) == int(c) and int(c) <= RECURSION_SERVERS:
            # few servers: the Erlang B recursion is exact and much cheaper than the gamma functions
            b = np.ones_like(a)
            for k in range(1, int(c) + 1):
                b = a * b / (k + a * b)
        else:
            log_pmf = c * np.log(a) - a - special.gammaln(c + 1.0)
            cdf = special.gammaincc(c + 1.0, a)
            b = np.where(cdf > 0, np.exp(log_pmf) / np.where(cdf > 0, cdf, 1.0), 1.0)
        rho = a / c
        out = b / (1.0 - rho * (1.0 - b))
    return np.asarray(np.where(rho < 1.0, np.clip(out, 0.0, 1.0), 1.0), dtype=np.float64)


def wait_quantile_s(rate: F64 | float, capacity: F64 | float, servers: F64 | float, p: float,
                    variability: F64 | float = 1.0) -> F64:
    """p-quantile (seconds) of the M/M/c waiting time: P(W > t) = C·exp(−(K − λ)·t).

    ``variability`` scales the wait as in the Allen–Cunneen approximation
    ((Ca² + Cs²)/2 relative to M/M/c), so 0.5 is an M/D/c service and 1 is M/M/c.
    Returns +inf at or above capacity: the steady state does not exist there.
    """
    lam = np.asarray(rate, dtype=np.float64)
    k = np.asarray(capacity, dtype=np.float64)
    c = np.asarray(servers, dtype=np.float64)
    mu = k / c
    with np.errstate(divide="ignore", invalid="ignore"):
        pw = erlang_c(c, lam / mu)
        w = np.log(np.maximum(pw, 1e-300) / (1.0 - p)) / (k - lam)
    w = np.where(pw > 1.0 - p, w, 0.0) * variability
    return np.asarray(np.where(lam < k, w, np.inf), dtype=np.float64)


def mean_wait_s(rate: F64 | float, capacity: F64 | float, servers: F64 | float,
                variability: F64 | float = 1.0) -> F64:
    """Mean M/M/c waiting time (seconds), E[W] = C/(K − λ), scaled by ``variability`` like `wait_quantile_s`.

    Returns +inf at or above capacity.
    """
    lam = np.asarray(rate, dtype=np.float64)
    k = np.asarray(capacity, dtype=np.float64)
    c = np.asarray(servers, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = erlang_c(c, lam / (k / c)) / (k - lam) * variability
    return np.asarray(np.where(lam < k, w, np.inf), dtype=np.float64)


def sustained_peak(rate: F64, window: int) -> float:
    """The highest rate held for ``window`` consecutive samples (the largest of the rolling minima).

    Throughput a service kept up for that long is throughput it served: its capacity is at least that.
    """
    x = np.asarray(rate, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return 0.0
    if x.size < window:
        return float(np.min(x))
    return float(np.max(np.lib.stride_tricks.sliding_window_view(x, window).min(axis=1)))


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


def fit_mean_latency(rate: F64, mean_ms: F64, servers: int) -> MeanLatencyFit | None:
    """Least squares over a grid of service times S and variabilities k, with profile intervals.

    The mean latency is the route to the service rate that does not depend on the shape of
    the service-time distribution: at low load it *is* the (wall-clock) service time, and
    how fast it rises with load measures k — 0.5 for constant service times (M/D/c), 1 for
    exponential ones (M/M/c) — which then scales the waiting-time percentiles.
    """
    n = int(rate.size)
    ok = np.isfinite(rate) & np.isfinite(mean_ms) & (rate > 0) & (mean_ms > 0)
    lam, t = rate[ok], mean_ms[ok] / 1000.0
    n = int(lam.size)
    if n < 5:
        return None
    base = float(np.quantile(t, 0.1))
    s_grid = base * np.geomspace(0.2, 1.2, 160)
    k_grid = np.linspace(0.25, 2.5, 19)      # (Ca² + Cs²)/2: below 0.25 needs smoother than Poisson arrivals
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


def _now(values: F64) -> float:
    return float(np.median(values[-NOW_SAMPLES:]))


def _nearest(ref_t: F64, t: F64) -> NDArray[np.int64]:
    """Per reference time, the index of another series' nearest sample within ~1.5 steps, else −1."""
    out = np.full(ref_t.shape, -1, dtype=np.int64)
    if t.size == 0 or ref_t.size == 0:
        return out
    step = float(np.median(np.diff(ref_t))) if ref_t.size > 1 else 60.0
    tol = max(1.0, 1.5 * step)
    idx = np.clip(np.searchsorted(t, ref_t), 1, max(t.size - 1, 1))
    left = np.clip(idx - 1, 0, t.size - 1)
    right = np.clip(idx, 0, t.size - 1)
    pick = np.where(np.abs(t[left] - ref_t) <= np.abs(t[right] - ref_t), left, right)
    ok = np.abs(t[pick] - ref_t) <= tol
    out[ok] = pick[ok]
    return out


def _align(ref_t: F64, t: F64, v: F64) -> F64:
    """Values of another series at the reference times (nearest sample within ~1.5 steps), else NaN."""
    pick = _nearest(ref_t, t)
    out = np.full(ref_t.shape, np.nan)
    out[pick >= 0] = v[pick[pick >= 0]]
    return out


@dataclass(frozen=True, slots=True)
class CapacityFit:
    """Fitted parameters (point values and their uncertainty) of one twin's capacity model.

    Rates are in req/s when ``has_rate``; otherwise in units of the current load (1.0 = now)
    and the fit is the first model: utilisation scales with traffic. ``candidates`` holds
    every route's capacity and log-sd; the smallest is ``capacity`` (the bottleneck).
    """

    has_rate: bool
    rate_now: float
    servers: int
    quantile: float
    capacity: float                 # K = c·μ, requests/s the pool can serve
    capacity_source: str            # "cpu", "mean_latency", "latency" or "assumed"
    candidates: Mapping[str, tuple[float, float]]   # route -> (capacity, log sd)
    capacity_floor: float           # K can not be below what was served with a stable queue
    variability: float              # k: waiting time relative to M/M/c (0.5 M/D/c … 1 M/M/c)
    variability_range: tuple[float, float]
    cpu_idle: float                 # a (%)
    cpu_slope: float                # b (% per unit rate)
    cpu_cov: tuple[tuple[float, float], tuple[float, float]]
    has_cpu: bool
    error_base: float
    error_slope: float
    memory_slope: float
    memory_slope_sd: float
    now: Mapping[str, float]        # current level of every metric
    trustworthy: bool
    reasons: tuple[str, ...]
    samples: int
    rate_range: tuple[float, float]
    extra: Mapping[str, Any] = field(default_factory=dict)
    traffic: str = TRAFFIC_OBSERVED     # observed, zero, no_query or no_data

    @property
    def zero_traffic(self) -> bool:
        """The request rate was observed and is 0 now: a multiple of it is still 0."""
        return self.traffic == TRAFFIC_ZERO

    @property
    def capacity_known(self) -> bool:
        return self.capacity_source != "unknown"

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "enough history with load variation"

    def params(self) -> dict[str, Any]:
        unit = "req/s" if self.has_rate else "x current load"

        def num(x: float, nd: int = 4) -> float | None:
            return round(float(x), nd) if math.isfinite(x) else None

        known = self.capacity_known
        return {
            "traffic": self.traffic,
            "rate_unit": unit,
            "rate_now": num(self.rate_now),
            "servers": self.servers,
            "capacity": num(self.capacity) if known else None,
            "capacity_source": self.capacity_source,
            "capacity_by_route": {k: num(v[0]) for k, v in self.candidates.items()} if known else {},
            "service_time_ms": (num(1000.0 * self.servers / self.capacity)
                                if known and self.capacity > 0 else None),
            "variability": num(self.variability, 3),
            "variability_range": [num(self.variability_range[0], 3), num(self.variability_range[1], 3)],
            "cpu_idle_pct": num(self.cpu_idle) if self.has_cpu else None,
            "cpu_pct_per_unit_rate": num(self.cpu_slope, 6) if self.has_cpu else None,
            "latency_quantile": self.quantile,
            "error_base": num(self.error_base, 6),
            "memory_pct_per_unit_rate": num(self.memory_slope, 6),
            "samples": self.samples,
            "observed_rate_range": [num(self.rate_range[0]), num(self.rate_range[1])],
            **dict(self.extra.items()),
        }


def fit_capacity(times: Mapping[str, F64], values: Mapping[str, F64], *, replicas: int | None,
                 workers: int | None, rate_metric: str = "request_rate",
                 quantile: float = 0.99) -> CapacityFit:
    """Fit the capacity model from a twin's history (see the module docstring)."""
    servers = max(1, int(replicas or 1) * int(workers or 1))
    reasons: list[str] = []
    if replicas is None or workers is None:
        reasons.append(f"replicas/workers not configured: assuming {servers} server(s)")

    def series(name: str) -> tuple[F64, F64]:
        t = np.asarray(times.get(name, np.empty(0)), dtype=np.float64)
        v = np.asarray(values.get(name, np.empty(0)), dtype=np.float64)
        m = min(t.size, v.size)
        t, v = t[:m], v[:m]
        ok = np.isfinite(t) & np.isfinite(v)
        return t[ok], v[ok]

    now = {name: _now(series(name)[1]) for name in values if series(name)[1].size}
    cpu_now = now.get(CPU, math.nan)
    err_now = max(now.get(ERRORS, 0.0), 0.0)
    has_cpu = math.isfinite(cpu_now)

    rt, rv = series(rate_metric)
    rate_now = now.get(rate_metric, math.nan)
    cpu_samples = int(series(CPU)[1].size)
    if rate_metric not in values:
        return _first_model(servers, quantile, now, cpu_now, err_now, reasons, TRAFFIC_NO_QUERY, rate_metric,
                            cpu_samples)
    if rv.size == 0 or not math.isfinite(rate_now):
        return _first_model(servers, quantile, now, cpu_now, err_now, reasons, TRAFFIC_NO_DATA, rate_metric,
                            cpu_samples)

    lam = np.maximum(rv, 0.0)
    rate_now = max(rate_now, 0.0)
    traffic = TRAFFIC_OBSERVED if rate_now > 0 else TRAFFIC_ZERO
    if not np.any(lam > 0):
        return _zero_traffic_model(servers, quantile, now, cpu_now, err_now, reasons, rate_metric, int(lam.size))
    # the rate the fallbacks scale from: now, or (traffic stopped) the typical rate the history saw
    rate_ref = rate_now if rate_now > 0 else float(np.median(lam[lam > 0]))
    cols = {name: _align(rt, *series(name)) for name in (CPU, LATENCY, MEAN_LATENCY, ERRORS, MEMORY)
            if name in values}
    # which of each series' own samples every aligned value is: a sparse series repeats one sample at several
    # request-rate times, and a route is fitted from as many observations as it has distinct samples
    picked = {name: _nearest(rt, series(name)[0]) for name in cols}

    def observed(name: str, ok: np.ndarray) -> int:
        return int(np.unique(picked[name][ok]).size)
    n = int(lam.size)
    cv = float(np.std(lam) / np.mean(lam)) if np.mean(lam) > 0 else 0.0
    rate_range = (float(np.min(lam)), float(np.max(lam)))
    if n < MIN_SAMPLES:
        reasons.append(f"only {n} samples of {rate_metric} (need {MIN_SAMPLES})")
    if cv < MIN_LOAD_CV:
        reasons.append(f"too little load variation (coefficient of variation {cv:.2f} < {MIN_LOAD_CV})")
    extra: dict[str, Any] = {"load_cv": round(cv, 4)}
    candidates: dict[str, tuple[float, float]] = {}
    weak: set[str] = set()
    route_samples: dict[str, int] = {}          # samples each route was fitted from

    # CPU: the utilisation law.
    a, b = 0.0, 0.0
    cpu_cov = ((0.0, 0.0), (0.0, 0.0))
    if has_cpu:
        y = cols[CPU]
        ok = np.isfinite(y)
        route_samples["cpu"] = observed(CPU, ok)
        cpu_fit = fit_line(lam[ok], y[ok]) if cv >= MIN_LOAD_CV / 2 else None
        if cpu_fit is not None and cpu_fit.slope > 0 and cpu_fit.slope_t >= 2.0:
            a, b, cpu_cov = max(cpu_fit.intercept, 0.0), cpu_fit.slope, cpu_fit.cov
            if cpu_fit.slope_t < MIN_SLOPE_T:
                reasons.append(f"CPU per request poorly determined (t = {cpu_fit.slope_t:.1f})")
                weak.add("cpu")
        elif cpu_fit is not None:
            # the load varied and CPU hardly followed: keep the observed floor, take the slope's upper bound
            a, b, cpu_cov = _cpu_upper_law(cpu_fit, float(np.mean(lam[ok])), float(np.mean(y[ok])))
            reasons.append(f"CPU does not rise clearly with load (t = {cpu_fit.slope_t:.1f}): CPU per request "
                           f"taken at its upper 95% bound above an idle floor of {a:.1f}%")
            weak.add("cpu")
        else:
            # no load variation: idle and load-driven CPU cannot be told apart, so all CPU is assumed
            # load-driven (conservative: the lowest capacity)
            a, b = 0.0, max(cpu_now, 1e-6) / rate_ref
            cpu_cov = ((0.0, 0.0), (0.0, (0.5 * b) ** 2))
            weak.add("cpu")
        k_cpu = (100.0 - a) / b
        grad = np.array([-1.0 / b, -(100.0 - a) / b**2])               # delta method for (100 − a)/b
        sd = math.sqrt(max(float(grad @ np.array(cpu_cov) @ grad), 0.0)) / k_cpu
        candidates["cpu"] = (k_cpu, sd)
        extra["cpu_slope_t"] = round(cpu_fit.slope_t, 2) if cpu_fit is not None else None

    # Mean latency: the wall-clock service time and its variability.
    variability, var_range = 1.0, VARIABILITY_PRIOR
    if MEAN_LATENCY in cols:
        y = cols[MEAN_LATENCY]
        ok = np.isfinite(y) & (lam > 0)
        route_samples["mean_latency"] = observed(MEAN_LATENCY, ok)
        mf = fit_mean_latency(lam[ok], y[ok], servers) if ok.sum() >= 5 and cv >= MIN_LOAD_CV / 2 else None
        if mf is not None:
            candidates["mean_latency"] = (servers / mf.service_s, mf.capacity_log_sd)
            if mf.capacity_log_sd > 0.3:
                weak.add("mean_latency")
            if mf.variability_high - mf.variability_low < 1.0:
                variability, var_range = mf.variability, (mf.variability_low, mf.variability_high)
            extra["service_time_interval_ms"] = [round(1000 * mf.service_low, 3), round(1000 * mf.service_high, 3)]
            extra["service_time_spread"] = round(mf.spread, 4)
        elif ok.any():
            s = float(np.quantile(y[ok], 0.1)) / 1000.0
            if s > 0:
                candidates["mean_latency"] = (servers / s, 0.3)
                weak.add("mean_latency")

    # Latency percentile: the queueing curve.
    if LATENCY in cols:
        y = cols[LATENCY]
        ok = np.isfinite(y) & (lam > 0)
        route_samples["latency"] = observed(LATENCY, ok)
        lf = fit_latency_curve(lam[ok], y[ok], servers, quantile, variability) if ok.sum() >= 5 else None
        if lf is not None:
            hi = None if math.isinf(lf.high) else round(lf.high, 4)
            extra["latency_capacity_interval"] = [round(lf.low, 4), hi]
            if math.isfinite(lf.capacity):
                sd = max(math.log(lf.high / max(lf.low, 1e-12)) / (2 * 1.96), 0.02)
                candidates["latency"] = (lf.capacity, sd)

    # what the service demonstrably served: most of the history's load, and any load it held for a minute or more
    floor = max(float(np.quantile(lam, 0.9)), sustained_peak(lam, NOW_SAMPLES))
    if candidates:
        source = min(candidates, key=lambda k: candidates[k][0])
        capacity = candidates[source][0]
    else:
        # Nothing bends: the M/M/c service time from the latency percentile at low load, c·ln(1/(1−p))/L0.
        source = "assumed"
        lat_now = now.get(LATENCY, math.nan)
        if math.isfinite(lat_now) and lat_now > 0:
            capacity = servers * 1000.0 * math.log(1.0 / (1.0 - quantile)) / lat_now
        else:
            capacity = rate_ref / 0.3
        capacity = max(capacity, floor * 1.05)
        candidates["assumed"] = (capacity, 0.7)
        reasons.append("neither CPU nor latency reveals the capacity: assumed from latency at low load")
    if capacity < floor:
        capacity = floor * 1.02
    extrap = capacity / max(rate_range[1], 1e-12)
    if extrap > MAX_EXTRAPOLATION:
        reasons.append(f"capacity {extrap:.0f}x beyond the highest observed load: extrapolation")
    if source in weak and not any(r.startswith("CPU") for r in reasons):
        reasons.append(f"the {source.replace('_', ' ')} route is poorly determined")
    few = route_samples.get(source, n)
    if few < MIN_SAMPLES <= n:
        reasons.append(f"the {source.replace('_', ' ')} route rests on only {few} samples (need {MIN_SAMPLES})")
    extra["extrapolation"] = round(extrap, 3)

    # Errors and memory: linear trends in load, used only where they are clearly positive. A falling one is a
    # coincidence of the history (a cache flushed while traffic happened to rise), not a law: extrapolated, it
    # would project a spike freeing memory, and fewer requests per replica (scaling out) filling it.
    err_slope = 0.0
    if ERRORS in cols:
        y = cols[ERRORS]
        ok = np.isfinite(y)
        ef = fit_line(lam[ok], y[ok])
        if ef is not None and ef.slope_t >= 3.0:
            err_slope = ef.slope
    mem_slope, mem_sd = 0.0, 0.0
    if MEMORY in cols:
        y = cols[MEMORY]
        ok = np.isfinite(y)
        mfit = fit_line(lam[ok], y[ok])
        if mfit is not None and mfit.slope_t >= 3.0:
            mem_slope, mem_sd = mfit.slope, math.sqrt(max(mfit.cov[1][1], 0.0))

    trustworthy = (n >= MIN_SAMPLES and few >= MIN_SAMPLES and cv >= MIN_LOAD_CV and source not in weak
                   and source != "assumed" and extrap <= MAX_EXTRAPOLATION)
    extra["route_samples"] = route_samples.get(source, n)
    return CapacityFit(
        has_rate=True, rate_now=rate_now, servers=servers, quantile=quantile, capacity=capacity,
        capacity_source=source, candidates=candidates, capacity_floor=floor, variability=variability,
        variability_range=var_range, cpu_idle=a, cpu_slope=b, cpu_cov=cpu_cov, has_cpu=has_cpu,
        error_base=err_now, error_slope=err_slope, memory_slope=mem_slope, memory_slope_sd=mem_sd, now=now,
        trustworthy=trustworthy, reasons=tuple(reasons), samples=n, rate_range=rate_range, extra=extra,
        traffic=traffic,
    )


def _cpu_upper_law(cpu_fit: LinearFit, x_mean: float, y_mean: float
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


def _zero_traffic_model(servers: int, quantile: float, now: Mapping[str, float], cpu_now: float, err_now: float,
                        reasons: list[str], rate_metric: str, samples: int) -> CapacityFit:
    """The request rate was observed and was 0 throughout: the state is real, the capacity unknowable.

    Nothing scales with a multiple of zero traffic, so the capacity never binds; it is kept finite (one
    placeholder req/s, reported as unknown) only so the arithmetic of a scenario stays plain.
    """
    reasons = [*reasons, f"{rate_metric} was 0 over the whole history: no load to fit the capacity from"]
    has_cpu = math.isfinite(cpu_now)
    return CapacityFit(
        has_rate=True, rate_now=0.0, servers=servers, quantile=quantile, capacity=1.0,
        capacity_source="unknown", candidates={"unknown": (1.0, 0.0)}, capacity_floor=0.0,
        variability=1.0, variability_range=VARIABILITY_PRIOR,
        cpu_idle=cpu_now if has_cpu else 0.0, cpu_slope=0.0, cpu_cov=((0.0, 0.0), (0.0, 0.0)), has_cpu=has_cpu,
        error_base=err_now, error_slope=0.0, memory_slope=0.0, memory_slope_sd=0.0, now=now,
        trustworthy=False, reasons=tuple(reasons), samples=samples, rate_range=(0.0, 0.0), traffic=TRAFFIC_ZERO,
    )


def _first_model(servers: int, quantile: float, now: Mapping[str, float], cpu_now: float, err_now: float,
                 reasons: list[str], traffic: str, rate_metric: str, samples: int) -> CapacityFit:
    """No throughput observed: utilisation scales with traffic, rates in units of the current load.

    ``samples`` counts the CPU samples the current utilisation comes from; the fit is never trustworthy.
    """
    why = (f"no {rate_metric} metric for this twin" if traffic == TRAFFIC_NO_QUERY
           else f"{rate_metric} returned no data")
    reasons = [*reasons, f"{why}: utilisation assumed proportional to traffic (no request rate observed)"]
    has_cpu = math.isfinite(cpu_now)
    if has_cpu and cpu_now > 0:
        capacity, source = 100.0 / cpu_now, "cpu"
    else:
        capacity, source = 1.0 / 0.3, "assumed"       # utilisation unknown: assume 30% busy now
    capacity = max(capacity, 1.02)
    return CapacityFit(
        has_rate=False, rate_now=1.0, servers=servers, quantile=quantile, capacity=capacity,
        capacity_source=source, candidates={source: (capacity, 0.5)}, capacity_floor=1.0,
        variability=1.0, variability_range=VARIABILITY_PRIOR,
        cpu_idle=0.0, cpu_slope=cpu_now if has_cpu else 0.0,
        cpu_cov=((0.0, 0.0), (0.0, (0.3 * cpu_now) ** 2 if has_cpu else 0.0)), has_cpu=has_cpu,
        error_base=err_now, error_slope=0.0, memory_slope=0.0, memory_slope_sd=0.0, now=now,
        trustworthy=False, reasons=tuple(reasons), samples=samples, rate_range=(1.0, 1.0), traffic=traffic,
    )
