"""The load test: the traffic multiplier ramped on a fine geometric grid until the first limit breaks, per draw.

A load test fails when the service breaks below the headroom it must have (``required_multiplier``,
default 2x current traffic); "breaks somewhere below the highest multiplier tested" is true of every real
service and says nothing about risk. At zero traffic every multiple of it is zero, so only the current
state can break a limit. The twin's metrics the capacity model does not know are held at their level.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .advice import held_level_notes, load_test_recommendations, with_note
from .context import Run
from .metrics import BY_CAPACITY, BY_FORECAST, F64, metric_key
from .project import Fault, limits_of, steady
from .result import INTERVAL, SimulationResult, interval_of, output_points
from .words import fmt, metric_label, metric_value

#: Points of the multiplier grid.
MULTIPLIER_STEPS = 500


def _current(run: Run, metrics: tuple[str, ...], width: int) -> dict[str, F64]:
    """(draws × width) arrays at each metric's current level, inside its domain."""
    return {m: np.full((run.d.size, width), float(np.clip(run.fit.now[m], *run.domains[m]))) for m in metrics}


def _held_level(run: Run, width: int) -> dict[str, Any]:
    """A load test's projection of the twin's own metrics: its current level (its forecast at now) throughout."""
    out: dict[str, Any] = {}
    for m, v in _current(run, run.own, 1).items():
        lim = run.ctx.limits.get(m)
        out[m] = {"value": np.full(width, v[0, 0]), "lower": np.full(width, v[0, 0]),
                  "upper": np.full(width, v[0, 0]), "limit": lim if lim is not None and math.isfinite(lim) else None,
                  "model": BY_FORECAST}
    return out


def load_test_without_traffic(run: Run) -> SimulationResult:
    """A load test at zero traffic: every multiple of it is zero, so only the current state can break a limit."""
    ctx, sc, fit, d = run.ctx, run.sc, run.fit, run.d
    lam = np.zeros((d.size, 1))
    ref = _current(run, run.metrics, 1)
    proj = steady(fit, d, lam, lam, ref, Fault(), run.domains)
    limits = limits_of(ctx, proj)
    over = {m: proj[m][:, 0] > lim for m, lim in limits.items()}
    broken = np.zeros(d.size, dtype=bool)
    for hit in over.values():
        broken |= hit
    p_fail = float(np.mean(broken[1:]))
    first = next((m for m in limits if over[m][0]), None)
    bottleneck = metric_key(first) if first is not None else None
    breach_p = {metric_key(m): float(np.mean(hit[1:])) for m, hit in over.items()}
    breaking = {
        "traffic_multiplier": 0.0 if bottleneck else None, "request_rate": 0.0 if bottleneck else None,
        "bottleneck": bottleneck, "interval": [None, None], "request_rate_interval": None,
        "bottleneck_probability": breach_p,
        "max_multiplier": sc.max_multiplier,
        "required_multiplier": sc.required_multiplier,
    }
    projected: dict[str, Any] = {"traffic_multiplier": np.array([1.0, sc.max_multiplier]),
                                 "request_rate": np.zeros(2)}
    for m, v in proj.items():
        plo, phi = interval_of(v[1:, 0])
        projected[m] = {"value": np.full(2, v[0, 0]), "lower": np.full(2, plo), "upper": np.full(2, phi),
                        "limit": limits.get(m), "model": BY_CAPACITY}
    projected.update(_held_level(run, 2))
    recs: list[str] = []
    if bottleneck is not None:
        assert first is not None
        name = metric_label(first)
        recs.append(f"{name[0].upper()}{name[1:]} is already over its limit with no traffic "
                    f"({metric_value(first, float(proj[first][0, 0]))} against {metric_value(first, limits[first])})"
                    ": act now; it is not load-driven, so more replicas will not help.")
    else:
        recs.append(f"No limit breaks up to {fmt(sc.max_multiplier)}x current traffic: "
                    f"{fmt(sc.max_multiplier)}x of 0 req/s is still 0 req/s.")
    if fit.capacity_known:
        recs.append(f"From the history, the fitted capacity is ≈ {fmt(fit.capacity)} req/s over {fit.servers} "
                    "server(s).")
    recs.extend(held_level_notes(run))
    return SimulationResult(
        scenario=sc.describe(), failure_probability=p_fail, will_likely_fail=p_fail >= 0.5,
        projected_metrics=projected, time_to_first_breach_s=None, breaking_point=breaking,
        recommendations=with_note(run.model_fit, recs), recovery_time_s=None, model_fit=run.model_fit,
        breach_probability=breach_p, seed=run.seed, samples=d.size - 1,
    )


def load_test(run: Run) -> SimulationResult:
    """Ramp the multiplier on a fine geometric grid until the first limit breaks, per draw."""
    ctx, sc, fit, d = run.ctx, run.sc, run.fit, run.d
    mult = np.geomspace(0.05, sc.max_multiplier, MULTIPLIER_STEPS)
    lam = mult[None, :] * fit.rate_now
    lam_ref = np.full((d.size, 1), fit.rate_now)
    ref = _current(run, run.metrics, 1)
    proj = steady(fit, d, np.broadcast_to(lam, (d.size, mult.size)), lam_ref, ref, Fault(), run.domains)
    limits = limits_of(ctx, proj)
    first: dict[str, F64] = {}
    for m, lim in limits.items():
        v = proj[m]
        over = v > lim
        has = over.any(axis=1)
        idx = np.argmax(over, axis=1)
        prev = np.maximum(idx - 1, 0)
        rows = np.arange(d.size)
        v0, v1 = v[rows, prev], v[rows, idx]
        m0, m1 = mult[prev], mult[idx]
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(np.isfinite(v1) & (v1 > v0), (lim - v0) / (v1 - v0), 0.5)
        cross = np.where(idx == 0, mult[0], m0 + np.clip(frac, 0.0, 1.0) * (m1 - m0))
        first[m] = np.where(has, cross, np.inf)
    if first:
        stack = np.vstack([first[m] for m in limits])
        brk = stack.min(axis=0)
        which = np.argmin(stack, axis=0)
    else:
        brk = np.full(d.size, np.inf)
        which = np.zeros(d.size, dtype=int)
    names = list(limits)
    # failing = breaking below the headroom the service must have, not "somewhere below max_multiplier"
    p_fail = float(np.mean(brk[1:] < sc.required_multiplier))
    lo, hi = (float(x) for x in np.quantile(brk[1:], INTERVAL, method="inverted_cdf"))
    point = float(brk[0])
    bottleneck = metric_key(names[int(which[0])]) if names and math.isfinite(point) else None
    shares = {}
    if names:
        finite = np.isfinite(brk[1:])
        for i, m in enumerate(names):
            shares[metric_key(m)] = float(np.mean((which[1:] == i) & finite))
    breaking = {
        "traffic_multiplier": point if math.isfinite(point) else None,
        "request_rate": point * fit.rate_now if fit.has_rate and math.isfinite(point) else None,
        "bottleneck": bottleneck,
        "interval": [lo, hi if math.isfinite(hi) else None],
        "request_rate_interval": ([lo * fit.rate_now, hi * fit.rate_now if math.isfinite(hi) else None]
                                  if fit.has_rate else None),
        "bottleneck_probability": shares,
        "max_multiplier": sc.max_multiplier,
        "required_multiplier": sc.required_multiplier,
    }
    # projections along the ramp, up to a bit past the break
    top = min(sc.max_multiplier, 1.5 * point) if math.isfinite(point) else sc.max_multiplier
    sel = np.flatnonzero((mult >= 1.0 - 1e-9) & (mult <= top))
    if sel.size == 0:
        sel = np.array([mult.size - 1])
    sel = sel[output_points(sel.size)]
    projected: dict[str, Any] = {"traffic_multiplier": mult[sel],
                                 "request_rate": mult[sel] * fit.rate_now if fit.has_rate else None}
    for m, v in proj.items():
        plo, phi = interval_of(v[1:, sel])
        projected[m] = {"value": v[0, sel], "lower": plo, "upper": phi, "limit": limits.get(m),
                        "model": BY_CAPACITY}
    projected.update(_held_level(run, int(sel.size)))
    # per metric, like failure_probability: the chance that this limit breaks below the required multiple
    breach_p = {metric_key(m): float(np.mean(first[m][1:] < sc.required_multiplier)) for m in limits}
    recs = load_test_recommendations(fit, point, lo, hi, bottleneck, sc, p_fail, bool(limits))
    recs = with_note(run.model_fit, [*recs, *held_level_notes(run)])
    return SimulationResult(
        scenario=sc.describe(), failure_probability=p_fail, will_likely_fail=p_fail >= 0.5,
        projected_metrics=projected, time_to_first_breach_s=None, breaking_point=breaking,
        recommendations=recs, recovery_time_s=None, model_fit=run.model_fit, breach_probability=breach_p,
        seed=run.seed, samples=d.size - 1,
    )
