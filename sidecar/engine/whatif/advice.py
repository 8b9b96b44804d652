"""The advice a what-if gives in words: the caveat, what the twin lacks, the notes, and the recommendations.

Replica counts come from `sizing.py` and every number is worded by `words.py`; what is said follows what
the projection found: a breach that more replicas fix, one they do not (not load-driven), the risk that
lives only in the uncertainty, and what a fault costs and how long the service takes to recover.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .capacity import MIN_SAMPLES
from .context import Run, SimulationContext
from .draws import Draws
from .fit import TRAFFIC_NO_DATA, TRAFFIC_NO_QUERY, TRAFFIC_ZERO, CapacityFit
from .metrics import CPU, ERRORS, F64, LATENCY, MEAN_LATENCY
from .project import Fault, fault_capacity
from .result import INTERVAL, output_points
from .scenario import Scenario
from .sizing import MAX_SCALE, TARGET_P, breaches, replicas_needed
from .words import (
    fmt,
    interval_text,
    metric_label,
    metric_names,
    metric_value,
    percent,
    quantile_name,
    rate_text,
)


def caveat(fit: CapacityFit) -> str | None:
    """The one line an SRE reads first when the failure probability is a guess; None for a trustworthy fit."""
    if fit.trustworthy:
        return None
    why = fit.reason
    if not fit.has_rate and fit.samples < MIN_SAMPLES:     # the first model rests on the CPU samples alone
        why = f"only {fit.samples} samples of {CPU}; {why}"
    if fit.zero_traffic:
        return (f"Not trustworthy as a capacity model ({why}); with no traffic now the answer is the current "
                "state's and does not rest on it.")
    return (f"Not trustworthy: {why}. Treat the failure probability as a guess (its bounds are widened), "
            "not as a reason to page.")


def missing_metrics(sc: Scenario, metrics: tuple[str, ...]) -> dict[str, str]:
    """The metrics a failure injection acts on that the twin does not have, with what is left out for it."""
    out: dict[str, str] = {}
    if sc.type != "failure_injection":
        return out
    if sc.added_latency_ms > 0 and LATENCY not in metrics and MEAN_LATENCY not in metrics:
        out[LATENCY] = (f"The added {fmt(sc.added_latency_ms, ' ms')} of latency is not projected: this twin has "
                        f"no {LATENCY}.")
    if sc.error_burst > 0 and ERRORS not in metrics:
        out[ERRORS] = (f"The injected error rate of {percent(sc.error_burst)} is not projected: this twin has no "
                       f"{ERRORS}.")
    return out


def traffic_note(fit: CapacityFit, ctx: SimulationContext) -> str | None:
    """What the simulation knew about traffic, when that is not simply "a request rate was observed"."""
    metric = ctx.request_rate_metric
    if fit.traffic == TRAFFIC_ZERO:
        return (f"Traffic is 0 req/s now ({metric} observed as 0): any multiple of zero traffic is still zero, so "
                "the scenario's traffic changes nothing and the projection is the current state.")
    if fit.traffic in (TRAFFIC_NO_QUERY, TRAFFIC_NO_DATA):
        why = (f"this twin has no {metric} query" if fit.traffic == TRAFFIC_NO_QUERY
               else f"the {metric} query returned no data")
        return (f"No request rate observed ({why}): traffic multipliers scale the current utilisation, CPU "
                "assumed proportional to traffic; a request rate gives a fitted capacity model.")
    return None


def with_note(model_fit: Mapping[str, Any], recs: list[str]) -> list[str]:
    """The recommendations with the traffic note (when there is one) in front."""
    note = model_fit.get("traffic_note")
    return [note, *recs] if isinstance(note, str) else recs


def held_level_notes(run: Run) -> list[str]:
    """Why a load test leaves the twin's own metrics alone, and which of them is over its limit regardless."""
    if not run.own:
        return []
    names, one = metric_names(run.own)
    notes = [f"{names} {'is' if one else 'are'} not modelled against traffic: held at {'its' if one else 'their'} "
             "current level along the ramp, and not part of the breaking point."]
    for m in run.own:
        lim = run.ctx.limits.get(m)
        now = float(np.clip(run.fit.now[m], *run.domains[m]))
        if lim is not None and math.isfinite(lim) and now > lim:
            notes.append(f"{metric_label(m)} is already over its limit ({metric_value(m, now)} against "
                         f"{metric_value(m, lim)}), whatever the traffic.")
    return notes


def load_test_recommendations(fit: CapacityFit, point: float, lo: float, hi: float, bottleneck: str | None,
                              sc: Scenario, p_fail: float, has_limits: bool = True) -> list[str]:
    """A load test's advice: where it breaks and on what, how likely below the required headroom, what to do."""
    recs: list[str] = []
    need = f"the required {fmt(sc.required_multiplier)}x current traffic{rate_text(fit, sc.required_multiplier)}"
    if not has_limits:
        recs.append("No metric of this twin with a limit is modelled against traffic: the load test has nothing "
                    "that can break.")
    elif not math.isfinite(point):
        recs.append(f"No limit breaks up to {fmt(sc.max_multiplier)}x current traffic"
                    f"{rate_text(fit, sc.max_multiplier)}.")
    else:
        recs.append(f"Breaks at {fmt(point)}x current traffic{rate_text(fit, point)}, 90% interval "
                    f"{interval_text(lo, hi, sc.max_multiplier)}; the bottleneck is {bottleneck}.")
    recs.append(f"Failure probability {percent(p_fail)}: the chance that it breaks below {need}.")
    if math.isfinite(point):
        if point < 1.0:
            recs.append("A limit is already breached at the current load: act now.")
        elif point < sc.required_multiplier:
            recs.append(f"The breaking point is below {need}: add about {fmt(sc.required_multiplier / point)}x "
                        f"the current capacity ({bottleneck} is the bottleneck) before traffic grows.")
        else:
            safe = 0.7 * point
            recs.append(f"Scale out before traffic reaches {fmt(safe)}x{rate_text(fit, safe)} "
                        "to keep 30% headroom below the breaking point.")
        if bottleneck in ("cpu", "latency", "mean_latency") and fit.has_rate:
            recs.append(f"Fitted capacity ≈ {fmt(fit.capacity)} req/s over {fit.servers} server(s) "
                        f"(service time ≈ {fmt(1000 * fit.servers / fit.capacity, ' ms')}).")
    if not fit.trustworthy:
        recs.append(f"The capacity model is not trustworthy ({fit.reason}): treat the interval as a guess "
                    "and drive more varied load before relying on it.")
    return recs


def timeline_recommendations(run: Run, proj: Mapping[str, F64], limits: Mapping[str, float], p_fail: float,
                             p_load: float, lam: F64, lam_ref: F64, ref: Mapping[str, F64],
                             recovery_s: float) -> list[str]:
    """Advice for a spike or a fault. Replicas are sized on the core metrics only (``ref``): the twin's other
    metrics follow their own forecast, which more replicas are not modelled to change."""
    ctx, sc, fit, d = run.ctx, run.sc, run.fit, run.d
    recs: list[str] = []
    worst = [m for m in limits if proj[m][0].max() > limits[m]]
    load_worst = [m for m in worst if m in ref]
    own_risk = [m for m in limits if m not in ref and (m in worst or bool((proj[m][1:] > limits[m]).any()))]
    peaks = ", ".join(f"{metric_label(m)} {metric_value(m, float(proj[m][0].max()))} (limit "
                      f"{metric_value(m, limits[m])})" for m in limits)
    what = (f"{fmt(sc.multiplier)}x traffic" if sc.type == "traffic_spike"
            else f"losing {sc.replicas_lost} of {sc.replicas} replicas" if sc.replicas_lost
            else "the fault")
    if peaks:
        recs.append(f"At {what}: peak {peaks}; failure probability {percent(p_fail)}.")
    cols = output_points(lam.shape[1])
    ref_t = {m: ref[m][:, cols] for m in ref}
    lam_t, lam_ref_t = lam[:, cols], lam_ref[:, cols]
    replicas = ctx.replicas or 1
    at_risk = bool(worst) or p_fail >= TARGET_P
    load_risk = bool(load_worst) or p_load >= TARGET_P
    if at_risk and not worst:
        recs.append(_uncertainty_text(proj, limits, p_fail))
    if fit.zero_traffic and worst:
        which, one = metric_names(worst)
        recs.append(f"{which[0].upper()}{which[1:]} {'is' if one else 'are'} over the limit with no "
                    "traffic at all: not load-driven, so more replicas will not help.")
    elif sc.type == "traffic_spike" and load_risk:
        need = replicas_needed(fit, d, ctx, lam_t, lam_ref_t, ref_t, replicas, run.domains)
        share = "the load-driven failure probability" if own_risk else "the failure probability"
        goal = (f"keep {_keep_text(fit, load_worst, limits)}" if load_worst
                else f"bring {share} under {percent(TARGET_P)}")
        if need is None:
            recs.append(_no_replicas_text(fit, d, limits, lam_t, lam_ref_t, ref_t, goal, what, run.domains))
        elif need > replicas:
            recs.append(f"Add {need - replicas} replica(s) ({replicas} → {need}) to {goal} at {what}"
                        f"{rate_text(fit, sc.multiplier)}.")
    if sc.type == "failure_injection":
        survivors = sc.replicas - sc.replicas_lost
        cap_during = float(fault_capacity(fit, d, Fault(share=sc.replicas / survivors,
                                                        added_latency_ms=sc.added_latency_ms))[0][0, 0])
        if fit.has_rate and not fit.zero_traffic:
            recs.append(f"Capacity during the fault ≈ {fmt(cap_during)} req/s against "
                        f"{fmt(sc.multiplier * fit.rate_now)} req/s of traffic.")
        if load_risk:
            if sc.replicas_lost and not fit.zero_traffic:
                need = replicas_needed(fit, d, ctx, lam_t * sc.replicas / survivors, lam_ref_t, ref_t,
                                       sc.replicas, run.domains)
                if need is not None and need > sc.replicas:
                    recs.append(f"Run {need} replicas (+{need - sc.replicas}) so that losing "
                                f"{sc.replicas_lost} still keeps every metric under its limit.")
            if sc.added_latency_ms:
                recs.append("Bound the dependency with a timeout well under "
                            f"{fmt(sc.added_latency_ms, ' ms')} or call it asynchronously: blocked workers "
                            "are what exhaust the pool.")
            if sc.error_burst and ERRORS in ref:
                recs.append(f"An error burst of {fmt(100 * sc.error_burst, '%')} alone exceeds the error "
                            "budget; add retries with backoff or a circuit breaker.")
        if math.isfinite(recovery_s):
            recs.append(f"Recovery after the fault ends ≈ {fmt(recovery_s, ' s')} (backlog drain).")
        else:
            recs.append("The service does not recover after the fault within the projection: its baseline "
                        "itself breaches a limit.")
    if not at_risk:
        recs.append("No action needed for this scenario.")
    if run.own:
        names, one = metric_names(run.own)
        its, it = ("its", "it") if one else ("their", "them")
        line = (f"{names}: projected as {its} own forecast (with {its} 90% interval), not by the capacity model; "
                f"the scenario's traffic does not move {it}")
        if own_risk:
            risky, one_risky = metric_names(own_risk)
            line += (f". The risk of {risky} going over {'its limit' if one_risky else 'their limits'} is there "
                     "whatever the traffic, and more replicas are not modelled to change it")
        recs.append(line + ".")
    if not fit.trustworthy and not fit.zero_traffic:     # at zero traffic the capacity model is not used
        recs.append(f"The capacity model is not trustworthy ({fit.reason}); bounds were widened.")
    return recs


def _keep_text(fit: CapacityFit, metrics: list[str], limits: Mapping[str, float]) -> str:
    """"p99 latency under 120 ms and memory under 90.0%"."""
    return " and ".join(f"{quantile_name(fit) + ' latency' if m == LATENCY else metric_label(m)} under "
                        f"{metric_value(m, limits[m])}" for m in metrics)


def _uncertainty_text(proj: Mapping[str, F64], limits: Mapping[str, float], p_fail: float) -> str:
    """Every point projection is under its limit, yet some draws breach: say which metrics, how often, how far.

    The risk then lives in the uncertainty (a forecast interval, the capacity fit), and a reader must see
    where, or the failure probability contradicts the numbers printed next to it.
    """
    share = {m: float(np.mean((proj[m][1:] > lim).any(axis=1))) for m, lim in limits.items()}
    drivers = sorted((m for m in limits if share[m] > 0), key=lambda m: -share[m])
    parts = []
    for m in drivers:
        high = float(np.quantile(proj[m][1:].max(axis=1), INTERVAL[1], method="inverted_cdf"))
        bound = f" (its peak's 90% interval reaches {metric_value(m, high)})" if high > limits[m] else ""
        parts.append(f"{metric_label(m)} goes over {metric_value(m, limits[m])} in {percent(share[m])} of the "
                     f"draws{bound}")
    return (f"Every projected peak is under its limit; the {percent(p_fail)} failure probability comes from "
            f"the uncertainty around them: {'; '.join(parts)}.")


def _no_replicas_text(fit: CapacityFit, d: Draws, limits: Mapping[str, float], lam: F64, lam_ref: F64,
                      ref: Mapping[str, F64], goal: str, what: str, domains: Mapping[str, tuple[float, float]]
                      ) -> str:
    """Why no number of replicas reaches the goal: the metrics that still breach with 64x the capacity.

    Those breaches do not come from the traffic (a forecast that reaches the limit by itself, or its interval),
    so they are named with how often they remain; only when none remains is more than 64x capacity the answer.
    """
    left = breaches(fit, d, limits, lam, lam_ref, ref, 1.0 / MAX_SCALE, domains)
    stays = sorted((m for m in left if left[m][0] or left[m][1:].mean() > 0), key=lambda m: -left[m][1:].mean())
    if not stays:
        return f"Adding replicas does not {goal} at {what}: it needs more than {MAX_SCALE}x the current capacity."
    parts = " and ".join(f"{metric_label(m)} (in {percent(float(left[m][1:].mean()))} of the draws)" for m in stays)
    one = len(stays) == 1
    return (f"Adding replicas does not {goal} at {what}: {parts} still {'goes' if one else 'go'} over "
            f"{'its limit' if one else 'their limits'} with {MAX_SCALE}x the capacity, so that risk is not "
            f"load-driven: {'its' if one else 'their'} own forecast or its interval reaches the limit.")
