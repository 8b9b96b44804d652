"""What-if simulation: traffic spikes, failures and load tests on a twin's fitted capacity model.

Only the twin's own metrics are projected. The core metrics it has (cpu_usage, memory_usage,
request_latency_ms, error_rate, and request_latency_mean_ms when given) follow the fitted
capacity model (`capacity.py`); any other metric is projected as its own forecast with its
interval, and the result says so (``"model": "forecast"``): the capacity model does not know
how it moves with traffic, so it never drives a breaking point or a replica count. A metric the
twin does not have gets no projection, no limit and no breach probability; a scenario that acts
on one (added latency on a twin without latency, an error burst on one without an error rate)
names it in ``missing_metrics`` instead of inventing it.

The projection of a core metric is its forecast (what happens if nothing changes) plus the
*difference* the capacity model predicts between the scenario's traffic and the forecast
traffic. The scenario's traffic is its multiplier times the forecast's *point* traffic: at
multiplier 1 and no fault a simulation reproduces the forecast exactly, and everything the
scenario adds comes from the queueing model. Overload is followed in time with a fluid backlog
(arrivals above capacity queue up to a request timeout, beyond that they fail), which gives the
time to the first breach and the recovery time once a fault ends.

Uncertainty is Monte Carlo: the fit's parameter uncertainty (least-squares covariance of the CPU
law, profile interval and spread of the binding latency route), the service-time variability
(its fitted interval, or M/D/c … 1.5× M/M/c when the data does not tell), a structural factor on
the capacity (6%, 25% when the fit is not trustworthy), never below the throughput the service
demonstrably served (``CapacityFit.capacity_floor``), and the forecast intervals. A metric's
forecast interval is the spread of its *baseline*: each draw sits at one place inside it (a split
normal whose 5% and 95% points are the forecast's bounds) and the model's difference is added on
top. The traffic forecast's interval is not pushed through the queueing curve: the scenario fixes
the traffic, and what traffic may do on its own already shows in the other metrics' intervals
(multiplied by the spike and run through a curve that turns vertical at capacity, a wide traffic
interval would send draws into a 30 s backlog at a load the service has already carried).
Every draw stays inside its metric's domain (``SimulationContext.domains``; 0–100 for CPU and
memory, 0–1 for the error rate, ≥ 0 for latency; a custom metric without one is unbounded, but
not below 0 if it has never been negative). Draw 0 is the point estimate; the others are seeded,
so the same scenario with the same seed gives the same answer.
``failure_probability`` is the share of draws in which any limit is breached during the
scenario; for a load test, the share in which the breaking point lies below the headroom the
service must have (``required_multiplier``, default 2× current traffic). "Breaks somewhere below
the highest multiplier tested" is true of every real service and says nothing about risk.
A result whose capacity fit is not trustworthy (a handful of samples, too little load variation,
no request rate, extrapolation) carries a ``caveat``: its probability is a guess.

Traffic observed as zero is a real observation, not a missing one: any multiple of zero
traffic is still zero, so a spike or a load test changes nothing, the projection is the
current state (its forecast where warm), the failure probability is that of the current
state alone, and no scaling is recommended. A twin without a request rate (no query, or
one that returned nothing) runs on the first model instead (utilisation proportional to
traffic), and the result says which of the two it was (``model_fit.traffic`` and a note).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .advice import caveat, missing_metrics, traffic_note
from .capacity import fit_capacity
from .context import Run, SimulationContext, metric_domain
from .draws import draw
from .loadtest import load_test, load_test_without_traffic
from .metrics import BY_CAPACITY, BY_FORECAST, METRICS
from .result import SimulationResult
from .scenario import parse_scenario
from .timeline import timeline


def run_scenario(ctx: SimulationContext, scenario: Mapping[str, Any], *, seed: int = 0) -> SimulationResult:
    """Run one what-if scenario on the twin described by ``ctx`` (pure; seeded Monte Carlo)."""
    sc = parse_scenario(scenario, replicas=ctx.replicas)
    fit = fit_capacity(ctx.times, ctx.values, replicas=ctx.replicas, workers=ctx.workers,
                       rate_metric=ctx.request_rate_metric, quantile=ctx.latency_quantile)
    metrics = tuple(m for m in METRICS if m in fit.now)
    own = tuple(m for m in ctx.values if m not in METRICS and m != ctx.request_rate_metric and m in fit.now)
    domains = {m: metric_domain(ctx, m) for m in (*metrics, *own)}
    rng = np.random.default_rng(seed)
    d = draw(fit, metrics, rng, forecast_only=own)
    model_fit = {"trustworthy": fit.trustworthy, "reason": fit.reason, "traffic": fit.traffic,
                 "traffic_note": traffic_note(fit, ctx), "params": fit.params(),
                 "model": "M/M/c (Erlang C) with utilisation law, fitted from observed history",
                 "projection": {**{m: BY_CAPACITY for m in metrics}, **{m: BY_FORECAST for m in own}}}
    run = Run(ctx, sc, fit, d, metrics, own, domains, model_fit, seed)
    if sc.type == "load_test":
        result = load_test_without_traffic(run) if fit.zero_traffic else load_test(run)
    else:
        result = timeline(run)
    result.caveat = caveat(fit)
    result.missing_metrics = missing_metrics(sc, metrics)
    notes = list(result.missing_metrics.values())
    if not metrics:
        notes.append("No metric of this twin is modelled against traffic (it has none of "
                     f"{', '.join(METRICS[:4])}): the scenario's traffic and faults move nothing projected here.")
    if notes:
        at = 1 if isinstance(model_fit.get("traffic_note"), str) else 0
        result.recommendations[at:at] = notes
    return result
