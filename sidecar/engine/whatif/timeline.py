"""A traffic spike or a failure injection followed in time, with a fluid backlog for overload.

Arrivals above capacity queue up to the request timeout and beyond it they fail, which gives the
time to the first breach and, once the spike or fault ends, the recovery time (the backlog drained at
full capacity). Each draw sits at its own place inside every forecast interval.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .advice import timeline_recommendations, with_note
from .context import Run
from .metrics import BY_CAPACITY, BY_FORECAST, F64, metric_key
from .project import Fault, around, baseline, fault_capacity, limits_of, steady
from .result import INTERVAL, SimulationResult, interval_of, output_points

#: Points of the time grid.
TIME_STEPS = 240


def timeline(run: Run) -> SimulationResult:
    """Traffic spike or failure injection over time, with a fluid backlog for overload."""
    ctx, sc, fit, d = run.ctx, run.sc, run.fit, run.d
    active = sc.ramp_s + sc.duration_s
    tail = max(300.0, 0.5 * active)
    span = active + tail
    dt = max(span / TIME_STEPS, 1.0)
    offsets = np.arange(0.0, span + dt / 2, dt)
    t_n = offsets.size
    if sc.type == "traffic_spike":
        ramp = np.clip(offsets / sc.ramp_s, 0.0, 1.0) if sc.ramp_s > 0 else np.ones(t_n)
        mult = np.where(offsets < active, 1.0 + (sc.multiplier - 1.0) * ramp, 1.0)
        in_fault = np.zeros(t_n, dtype=bool)
        fault = Fault()
    else:
        mult = np.where(offsets < active, sc.multiplier, 1.0)
        in_fault = offsets < active
        fault = Fault(share=sc.replicas / (sc.replicas - sc.replicas_lost),
                      added_latency_ms=sc.added_latency_ms, error_burst=sc.error_burst)
    s = d.size
    # forecast baselines, each draw at its own place inside the forecast interval
    ref = {m: around(baseline(ctx, m, offsets, fit.now[m]), d.z[m], run.domains[m]) for m in run.metrics}
    if fit.zero_traffic:
        lam_ref = np.zeros((s, t_n))             # observed zero: the scenario's multiple of it is zero too
    elif fit.has_rate:
        # the forecast's point traffic: the scenario fixes the traffic, and the traffic forecast's interval is
        # already part of the other metrics' intervals (see run.py's docstring)
        mu = baseline(ctx, ctx.request_rate_metric, offsets, fit.rate_now)[0]
        lam_ref = np.tile(np.maximum(mu, 0.0), (s, 1))
    else:
        lam_ref = np.ones((s, t_n))
    lam = lam_ref * mult[None, :]
    # fluid backlog: requests above capacity queue until the timeout, beyond it they fail
    cap_fault, _ = fault_capacity(fit, d, fault)
    cap_t = np.where(in_fault[None, :], cap_fault, d.capacity)
    backlog = np.zeros(s)
    wait = np.zeros((s, t_n))
    shed = np.zeros((s, t_n))
    for i in range(t_n):
        c_i = cap_t[:, i]
        q = backlog + (lam[:, i] - c_i) * dt
        limit_q = c_i * sc.timeout_s
        over = np.maximum(q - limit_q, 0.0)
        shed[:, i] = np.where(lam[:, i] > 0, over / np.maximum(lam[:, i] * dt, 1e-300), 0.0)
        backlog = np.clip(q, 0.0, limit_q)
        wait[:, i] = backlog / c_i
    shed = np.minimum(shed, 1.0)
    proj = steady(fit, d, lam, lam_ref, ref, Fault(), run.domains, backlog_s=wait, shed=shed)
    if in_fault.any():
        cols = np.flatnonzero(in_fault)
        during = steady(fit, d, lam[:, cols], lam_ref[:, cols], {m: v[:, cols] for m, v in ref.items()},
                        fault, run.domains, backlog_s=wait[:, cols], shed=shed[:, cols])
        for m, v in during.items():
            proj[m][:, cols] = v
    for m in run.own:       # the twin's other metrics: their own forecast, which the scenario does not move
        proj[m] = around(baseline(ctx, m, offsets, fit.now[m]), d.z[m], run.domains[m])
    limits = limits_of(ctx, proj)
    breach_t = np.zeros((s, t_n), dtype=bool)
    load_breach_t = np.zeros((s, t_n), dtype=bool)
    first_by: dict[str, F64] = {}
    for m, lim in limits.items():
        hit: np.ndarray = np.asarray(proj[m] > lim)
        breach_t |= hit
        if m in ref:
            load_breach_t |= hit
        first_by[m] = np.where(hit.any(axis=1), offsets[np.argmax(hit, axis=1)], np.inf)
    any_breach: np.ndarray = np.asarray(breach_t.any(axis=1))
    p_fail = float(np.mean(any_breach[1:]))
    first = np.where(any_breach, offsets[np.argmax(breach_t, axis=1)], np.inf)
    ttfb = float(np.quantile(first[1:], 0.5, method="inverted_cdf"))
    # recovery: drain the backlog left when the spike / fault ends, at full capacity
    end = int(np.searchsorted(offsets, active, side="left"))
    end = min(max(end - 1, 0), t_n - 1)
    left = wait[:, end] * cap_t[:, end]
    after = lam[:, min(end + 1, t_n - 1)]
    drain = d.capacity[:, 0] - after
    with np.errstate(divide="ignore", invalid="ignore"):
        recovery = np.where(left <= 0, 0.0, np.where(drain > 0, left / np.maximum(drain, 1e-300), np.inf))
    # the service's own state after the fault: a metric that follows only its forecast is no part of it
    tail_breach = load_breach_t[:, offsets > active + dt].any(axis=1) if np.any(offsets > active + dt) else \
        np.zeros(s, dtype=bool)
    settled = load_breach_t[:, -1]
    recovery = np.where(settled & tail_breach, np.inf, recovery)
    rec_point = float(np.quantile(recovery[1:], 0.5, method="inverted_cdf"))
    rec_lo, rec_hi = (float(x) for x in np.quantile(recovery[1:], INTERVAL, method="inverted_cdf"))
    # output
    sel = output_points(t_n)
    projected: dict[str, Any] = {"offset_s": offsets[sel], "time": ctx.now + offsets[sel],
                                 "traffic_multiplier": mult[sel],
                                 "request_rate": lam[0, sel] if fit.has_rate else None,
                                 "peak": {}}
    for m, v in proj.items():
        how = BY_CAPACITY if m in ref else BY_FORECAST
        plo, phi = interval_of(v[1:, sel])
        projected[m] = {"value": v[0, sel], "lower": plo, "upper": phi, "limit": limits.get(m), "model": how}
        peaks = v.max(axis=1)
        pk_lo, pk_hi = interval_of(peaks[1:])
        projected["peak"][m] = {"value": float(peaks[0]), "lower": float(pk_lo), "upper": float(pk_hi),
                                "at_s": float(offsets[int(np.argmax(v[0]))]), "limit": limits.get(m), "model": how}
    breach_p = {metric_key(m): float(np.mean(np.isfinite(first_by[m][1:]))) for m in limits}
    load_any: np.ndarray = np.asarray(load_breach_t.any(axis=1))
    p_load = float(np.mean(load_any[1:]))
    recs = with_note(run.model_fit, timeline_recommendations(run, proj, limits, p_fail, p_load, lam, lam_ref, ref,
                                                             rec_point))
    return SimulationResult(
        scenario=sc.describe(), failure_probability=p_fail, will_likely_fail=p_fail >= 0.5,
        projected_metrics=projected, time_to_first_breach_s=ttfb if math.isfinite(ttfb) else None,
        breaking_point=None, recommendations=recs,
        recovery_time_s=rec_point if math.isfinite(rec_point) else None, model_fit=run.model_fit,
        breach_probability=breach_p,
        recovery_time_interval_s=[rec_lo, rec_hi if math.isfinite(rec_hi) else None], seed=run.seed,
        samples=s - 1,
    )
