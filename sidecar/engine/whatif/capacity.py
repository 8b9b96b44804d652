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
and rates may be (draws × grid) arrays. The queueing maths is `queueing.py`, each route's
fit `routes.py`, the alignment of series in time `samples.py`, and the fitted record `fit.py`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .fit import TRAFFIC_NO_DATA, TRAFFIC_NO_QUERY, TRAFFIC_OBSERVED, TRAFFIC_ZERO, CapacityFit
from .metrics import CPU, ERRORS, F64, LATENCY, MEAN_LATENCY, MEMORY
from .routes import cpu_upper_law, fit_latency_curve, fit_line, fit_mean_latency
from .samples import NOW_SAMPLES, align, nearest, now_level, sustained_peak

#: Minimum aligned samples for a fit we call trustworthy.
MIN_SAMPLES = 20
#: Minimum coefficient of variation of the observed request rate (load variation).
MIN_LOAD_CV = 0.1
#: Minimum t-statistic of the CPU-per-request slope.
MIN_SLOPE_T = 4.0
#: Capacity further than this multiple of the highest observed load is an extrapolation.
MAX_EXTRAPOLATION = 10.0
#: Service-time variability (waiting time relative to M/M/c) assumed when the data does not tell:
#: from constant service times (M/D/c, 0.5) to twice as variable as exponential (1.5).
VARIABILITY_PRIOR = (0.5, 1.5)


def fit_capacity(times: Mapping[str, F64], values: Mapping[str, F64], *, replicas: int | None,
                 workers: int | None, rate_metric: str = "request_rate",
                 quantile: float = 0.99, k_bounds: tuple[float, float] = (0.25, 2.5)) -> CapacityFit:
    """Fit the capacity model from a twin's history (see the module docstring); ``k_bounds`` limits the
    service-time variability the mean latency route may choose (`routes.fit_mean_latency`)."""
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

    now = {name: now_level(series(name)[1]) for name in values if series(name)[1].size}
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
    cols = {name: align(rt, *series(name)) for name in (CPU, LATENCY, MEAN_LATENCY, ERRORS, MEMORY)
            if name in values}
    # which of each series' own samples every aligned value is: a sparse series repeats one sample at several
    # request-rate times, and a route is fitted from as many observations as it has distinct samples
    picked = {name: nearest(rt, series(name)[0]) for name in cols}

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
            a, b, cpu_cov = cpu_upper_law(cpu_fit, float(np.mean(lam[ok])), float(np.mean(y[ok])))
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
        enough = ok.sum() >= 5 and cv >= MIN_LOAD_CV / 2
        mf = fit_mean_latency(lam[ok], y[ok], servers, k_bounds) if enough else None
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
