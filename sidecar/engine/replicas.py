"""Replica recommendations: how many replicas keep every limit at a quantile of the forecast traffic.

A forecast says where traffic is heading (with a calibrated upper bound); the capacity model
(`whatif/capacity.py`) says what one replica carries. Joined, they give the replicas a service needs
*before* the load arrives, per horizon:

1. traffic per replica: the request rate divided by the replica count at each sample (the
   ``replicas`` metric of the twin when it has one, so history taken at other replica counts
   still fits; else the configured count). A load balancer splits requests between replicas
   and a request never moves to another pod's queue, so each replica is its own M/M/c queue
   with c = its workers; the total capacity is replicas × that of one;
2. the capacity fit of one replica on that history (``fit_capacity``, servers = workers, the
   service-time variability within ``FIT_K_BOUNDS``);
3. the traffic a horizon must be ready for: the ``quantile`` of the forecast request rate there
   (the point forecast at 0.5, the interval's upper bound at (1 + level) / 2, in between and
   beyond on the normal scale of the interval's upper half-width, taken at its narrowest over the
   last ``WIDTH_ROUNDS`` rounds by the caller: `settle_widths`), the highest of it at or
   before the horizon (and never less than the traffic now), since a replica that is needed at
   5 minutes is needed for the 10-minute horizon too. The quantile is the price of a pod
   against the price of a missed SLO: the upper bound itself buys every burst the forecast
   cannot tell from noise, which on spiky traffic costs far more pods than it saves minutes
   (``benchmarks/autoscale_offline.py`` chooses the default by cross-validation over traces);
4. the fewest replicas r in [min_replicas, max_replicas] for which the what-if's projection
   (`whatif.steady`: a level plus the model's difference, the same maths as its "Add N
   replica(s)" advice) keeps every limit at 1/r of that traffic per replica. A latency's level is
   its steady one (`latency_anchors`), not the last samples', which after a burst hold the queue
   it left. All horizons and candidate counts are one (H × R) array: no search loop.

A recommendation exists only when it can be trusted: traffic observed, the capacity fit
trustworthy, the request rate forecast warm, the workers per replica and the replica count
known, and a limit on a metric the capacity model projects. Otherwise `ReplicaAdvice.reason`
says which is missing, and the exporter shows nothing (an autoscaler then keeps its count).

`stabilise` makes the signal safe to act on: a lower recommendation takes effect only once
every recommendation of the last window was that low (the Kubernetes HPA's scale-down
stabilisation), a higher one at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from .whatif import (
    CORE_DOMAINS,
    F64,
    LATENCY,
    MEAN_LATENCY,
    METRICS,
    TRAFFIC_OBSERVED,
    CapacityFit,
    Draws,
    Fault,
    SimulationContext,
    align,
    draw,
    fit_capacity,
    mean_wait_s,
    steady,
    wait_quantile_s,
)
from .whatif.capacity import VARIABILITY_PRIOR
from .whatif.project import RHO_CAP

#: The twin metric that carries the replica count over time (e.g. kube_deployment_status_replicas_available).
REPLICAS_METRIC = "replicas"
#: Samples at the end of a series that define "now" (as in the capacity fit).
NOW_SAMPLES = 5
#: The forecast quantile replicas are sized for by default (``scale_quantile``): the cheapest quantile that halves
#: the reactive HPA's SLO-breach minutes over six NAB load shapes in ``benchmarks/autoscale_offline.py``, with the
#: half-width settled over ``WIDTH_ROUNDS`` (its leave-one-trace-out folds chose 0.75 to 0.8). The upper bound
#: (0.95) cost 1.4-1.9x the HPA's replicas there.
DEFAULT_QUANTILE = 0.8
#: The service-time variabilities k a replica's fit may choose: the capacity model's prior (0.5 is M/D/c, Poisson
#: arrivals to constant service times; 1.5 twice as variable as M/M/c). Left free (0.25-2.5, the what-if's own
#: fit), k went to 0.25 on smooth warm-ups (a replica read as carrying more than it does: the taxi trace's breaches)
#: and to 2-2.5 on spiky ones, fitted to the queue a burst left (a third less). Offline (``autoscale_offline.py
#: --fit-k-bounds``) the bounds took the pooled cost at 0.75 from 1.10 to 1.08 of the HPA's and taxi to 0 breaches.
FIT_K_BOUNDS = VARIABILITY_PRIOR
#: The forecast's upper half-width is taken at its narrowest over this many rounds (`settle_widths`; 0: as it is
#: now). Chosen with the quantile by leave-one-trace-out in ``benchmarks/autoscale_offline.py`` (``--variants
#: '0.8 hwmin120'``): 30, 60 and 120 rounds each lowered the cost at equal breach minutes, 120 the most; over 240
#: the calm width of long ago undersized the next bursts (breach 0.60 of the HPA's at 0.8, against 0.43).
WIDTH_ROUNDS = 120
#: The quantiles a policy may ask for: below the median a recommendation sizes for less than the expected traffic.
QUANTILE_RANGE = (0.5, 0.99)


@dataclass(frozen=True, slots=True)
class ReplicaPolicy:
    """A twin's scaling bounds, how long a lower recommendation must hold before it is given, and the forecast
    quantile it sizes for (``level`` is the engine's interval coverage, whose upper bound is the (1+level)/2
    quantile)."""

    min_replicas: int = 1
    max_replicas: int = 10
    scale_down_window_s: float = 300.0
    quantile: float = DEFAULT_QUANTILE
    level: float = 0.9

    def __post_init__(self) -> None:
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"replica bounds: need 1 <= min_replicas ({self.min_replicas}) <= max_replicas "
                             f"({self.max_replicas})")
        if not QUANTILE_RANGE[0] <= self.quantile <= QUANTILE_RANGE[1]:
            raise ValueError(f"quantile: need {QUANTILE_RANGE[0]} <= quantile <= {QUANTILE_RANGE[1]}, "
                             f"got {self.quantile}")
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"level: need 0 < level < 1, got {self.level}")

    @property
    def upper_share(self) -> float:
        """How much of the interval's upper half-width the quantile adds to the point forecast (0 at the
        median, 1 at the upper bound), on the normal scale."""
        z = NormalDist().inv_cdf
        return z(self.quantile) / z((1.0 + self.level) / 2.0)


@dataclass(frozen=True, slots=True)
class ReplicaAdvice:
    """One twin's recommendation per horizon; ``replicas`` is None when it is not trustworthy (``reason``)."""

    reason: str
    horizons_s: tuple[float, ...] = ()
    replicas: tuple[int, ...] | None = None          # raw (not yet stabilised), within the policy's bounds
    rate_upper: tuple[float, ...] = ()               # total req/s each horizon must be ready for
    headroom: tuple[float, ...] = ()                 # 1 - rate_upper / capacity now (<= 0: over capacity)
    capacity_rps: float | None = None                # what the replicas running now carry
    replicas_now: int | None = None
    capped: tuple[bool, ...] = ()                    # max_replicas is too few for that horizon
    fit: Mapping[str, Any] = field(default_factory=dict)

    @property
    def trustworthy(self) -> bool:
        return self.replicas is not None

    def to_dict(self) -> dict[str, Any]:
        def num(x: float | None) -> float | None:
            return round(x, 4) if x is not None and math.isfinite(x) else None
        return {"trustworthy": self.trustworthy, "reason": self.reason, "replicas_now": self.replicas_now,
                "capacity_requests_per_second": num(self.capacity_rps),
                "horizons": [{"horizon_s": h, "replicas": self.replicas[i] if self.replicas else None,
                              "request_rate_upper": num(self.rate_upper[i]) if self.rate_upper else None,
                              "headroom_ratio": num(self.headroom[i]) if self.headroom else None,
                              "capped_at_max": bool(self.capped[i]) if self.capped else False}
                             for i, h in enumerate(self.horizons_s)],
                "fit": dict(self.fit)}


def _now(values: F64) -> float:
    v = values[np.isfinite(values)]
    return float(np.median(v[-NOW_SAMPLES:])) if v.size else math.nan


def per_replica_history(ctx: SimulationContext) -> tuple[dict[str, F64], dict[str, F64], int | None, str | None]:
    """The twin's history with the request rate divided by the replica count at each sample.

    Returns (times, values, replicas now, why not) — the last is a reason when the count is unknown.
    """
    rm = ctx.request_rate_metric
    times = {m: np.asarray(t, dtype=np.float64) for m, t in ctx.times.items() if m != REPLICAS_METRIC}
    values = {m: np.asarray(v, dtype=np.float64) for m, v in ctx.values.items() if m != REPLICAS_METRIC}
    if rm not in values:
        return times, values, None, f"no {rm} query: the traffic a replica carries is unknown"
    rt, rv = times[rm], values[rm]
    n = min(rt.size, rv.size)
    rt, rv = rt[:n], rv[:n]
    if REPLICAS_METRIC in ctx.values:
        count = align(rt, np.asarray(ctx.times[REPLICAS_METRIC], dtype=np.float64),
                      np.asarray(ctx.values[REPLICAS_METRIC], dtype=np.float64))
        now = _now(np.asarray(ctx.values[REPLICAS_METRIC], dtype=np.float64))
    elif ctx.replicas is not None:
        count, now = np.full(n, float(ctx.replicas)), float(ctx.replicas)
    else:
        return times, values, None, f"replica count unknown: set replicas, or give the twin a {REPLICAS_METRIC} metric"
    if not math.isfinite(now) or now < 1:
        return times, values, None, f"no replica running now ({REPLICAS_METRIC} = {now:g})"
    ok = np.isfinite(count) & (count >= 1)
    times[rm], values[rm] = rt[ok], rv[ok] / count[ok]
    return times, values, max(1, round(now)), None


def fit_replica(ctx: SimulationContext) -> tuple[CapacityFit | None, int | None, str | None]:
    """The capacity fit of one replica (servers = its workers), the replica count now, and why not if none."""
    if ctx.workers is None:
        return None, None, "workers per replica not configured"
    times, values, now, why = per_replica_history(ctx)
    if why is not None:
        return None, None, why
    fit = fit_capacity(times, values, replicas=1, workers=ctx.workers, rate_metric=ctx.request_rate_metric,
                       quantile=ctx.latency_quantile, k_bounds=FIT_K_BOUNDS)
    return fit, now, None


def half_widths(ctx: SimulationContext) -> dict[float, float]:
    """The request rate forecast's upper half-width (upper bound less point forecast, at least 0) per warm
    horizon."""
    rm = ctx.request_rate_metric
    h = np.asarray(ctx.horizons_s, dtype=np.float64)
    up = np.asarray(ctx.forecast_upper.get(rm, np.empty(0)), dtype=np.float64)
    mean = np.asarray(ctx.forecast_mean.get(rm, np.full(h.shape, np.nan)), dtype=np.float64)
    if h.size == 0 or up.shape != h.shape or mean.shape != h.shape:
        return {}
    return {float(x): float(max(u - m, 0.0)) for x, u, m in zip(h, up, mean, strict=True)
            if math.isfinite(u) and math.isfinite(m)}


def rate_upper(ctx: SimulationContext, rate_now: float, upper_share: float = 1.0,
               widths: Mapping[float, float] | None = None) -> tuple[F64, F64] | None:
    """Horizons (sorted) and the traffic each must be ready for: the running maximum of the forecast quantile
    (point forecast + ``upper_share`` × the interval's upper half-width; 1 is the upper bound), never below the
    traffic now; None while the request rate forecast is not warm. ``widths`` replaces a horizon's half-width
    (`settle_widths`: the narrowest of the last rounds) where it is narrower."""
    rm = ctx.request_rate_metric
    h = np.asarray(ctx.horizons_s, dtype=np.float64)
    up = np.asarray(ctx.forecast_upper.get(rm, np.empty(0)), dtype=np.float64)
    mean = np.asarray(ctx.forecast_mean.get(rm, np.full(h.shape, np.nan)), dtype=np.float64)
    if h.size == 0 or up.shape != h.shape or mean.shape != h.shape:
        return None
    order = np.argsort(h)
    h, up, mean = h[order], up[order], mean[order]
    warm = np.isfinite(up) & np.isfinite(mean)
    if not warm.any():
        return None
    h, up, mean = h[warm], up[warm], mean[warm]
    half = np.maximum(up - mean, 0.0)
    if widths:
        half = np.minimum(half, np.array([widths.get(float(x), math.inf) for x in h]))
    ready = mean + upper_share * half
    return h, np.maximum.accumulate(np.maximum(ready, rate_now))


@dataclass(frozen=True, slots=True)
class Widths:
    """The request rate forecast's upper half-widths of the last rounds, per horizon, with their times."""

    times: tuple[float, ...] = ()
    widths: tuple[Mapping[float, float], ...] = ()


def settle_widths(state: Widths, at: float, now: Mapping[float, float], window_s: float
                  ) -> tuple[Widths, dict[float, float]]:
    """Per horizon the narrowest upper half-width of the last ``window_s`` (the one now included).

    The interval widens after every miss, most after a burst, and stays wide while it forgets it; sized on
    that width, the recommendation held many replicas for minutes after each burst had passed. Taken at its
    narrowest over the window, the width a burst adds counts only once it lasts the whole window (a noisier
    regime), while the point forecast and the traffic now still follow the burst itself.
    """
    keep = [i for i, t in enumerate(state.times) if at - t < window_s and t <= at]
    times = (*(state.times[i] for i in keep), at)
    widths = (*(state.widths[i] for i in keep), dict(now))
    out = {h: min(w.get(h, math.inf) for w in widths) for h in now}
    return Widths(times=times, widths=widths), out


def latency_anchors(ctx: SimulationContext, fit: CapacityFit, d: Draws, metrics: tuple[str, ...]) -> dict[str, float]:
    """Each latency metric's steady level at the fit's rate now: the model's wait there plus the median, over the
    history, of what the observed latency held beyond the model's wait at its own rate.

    The what-if projects from the level of the last samples; a replica count must not. Right after a burst the
    last samples carry the backlog the burst left (seconds of queue that drain by themselves once the rate
    falls), and projected from there no replica count keeps the limit: the recommendation went to
    ``max_replicas`` and the scale-down window held it there. The median over the history keeps what the model
    misses for good (a network hop, a slower dependency) and drops a transient queue.
    """
    times, values, _, why = per_replica_history(ctx)
    rm = ctx.request_rate_metric
    if why is not None or rm not in values:
        return {}
    rt, lam = times[rm], values[rm]
    cap = float(np.asarray(d.capacity).ravel()[0])
    k = float(np.asarray(d.variability).ravel()[0])
    servers = float(fit.servers)
    out: dict[str, float] = {}
    for m in (LATENCY, MEAN_LATENCY):
        if m not in metrics or m not in values:
            continue
        y = align(rt, times[m], values[m])
        ok = np.isfinite(y) & np.isfinite(lam) & (lam > 0) & (lam < RHO_CAP * cap)
        if int(ok.sum()) < NOW_SAMPLES:
            continue

        def wait_ms(rate: F64, metric: str = m) -> F64:
            if metric == LATENCY:
                return 1000.0 * wait_quantile_s(rate, cap, servers, fit.quantile, k)
            return 1000.0 * mean_wait_s(rate, cap, servers, k)
        held = float(np.median(y[ok] - wait_ms(lam[ok])))
        at_now = float(wait_ms(np.array([min(fit.rate_now, RHO_CAP * cap)]))[0])
        if math.isfinite(held) and math.isfinite(at_now):
            out[m] = held + at_now
    return out


def recommend(ctx: SimulationContext, policy: ReplicaPolicy, fitted: tuple[CapacityFit | None, int | None,
              str | None] | None = None, widths: Mapping[float, float] | None = None) -> ReplicaAdvice:
    """The replicas each horizon needs (see the module docstring). ``fitted`` reuses a `fit_replica` result:
    the fit reads the whole history and may be refreshed less often than the forecast moves; ``widths`` are
    the settled upper half-widths per horizon (`settle_widths`)."""
    fit, now, why = fit_replica(ctx) if fitted is None else fitted
    if fit is None or now is None:
        return ReplicaAdvice(reason=why or "no capacity fit")
    params = {"per_replica": fit.params(), "trustworthy": fit.trustworthy}
    if fit.traffic != TRAFFIC_OBSERVED:
        return ReplicaAdvice(reason=f"traffic {fit.traffic.replace('_', ' ')}: nothing to size replicas on",
                             replicas_now=now, fit=params)
    capacity = fit.capacity * now
    if not fit.trustworthy:
        return ReplicaAdvice(reason=f"capacity fit not trustworthy: {fit.reason}", replicas_now=now,
                             capacity_rps=None, fit=params)
    rm = ctx.request_rate_metric
    total_now = _now(np.asarray(ctx.values[rm], dtype=np.float64))
    ready = rate_upper(ctx, max(total_now, 0.0), policy.upper_share, widths)
    if ready is None:
        return ReplicaAdvice(reason=f"the {rm} forecast is not warm yet", replicas_now=now, capacity_rps=capacity,
                             fit=params)
    horizons, lam_up = ready
    metrics = tuple(m for m in METRICS if m in fit.now)
    limits = {m: float(ctx.limits[m]) for m in metrics if m in ctx.limits and math.isfinite(ctx.limits[m])}
    if not limits:
        return ReplicaAdvice(reason="no limit on a metric the capacity model projects (cpu_usage, memory_usage, "
                                    "request_latency_ms, request_latency_mean_ms, error_rate)",
                             replicas_now=now, capacity_rps=capacity, fit=params)
    candidates = np.arange(policy.min_replicas, policy.max_replicas + 1, dtype=np.float64)
    lam = lam_up[:, None] / candidates[None, :]                      # (H, R) per-replica traffic
    d = draw(fit, metrics, np.random.default_rng(0), n=0)             # the point estimate only
    anchors = latency_anchors(ctx, fit, d, metrics)
    ref = {m: np.array([[anchors.get(m, fit.now[m])]]) for m in metrics}
    domains = {m: CORE_DOMAINS[m] for m in metrics}
    proj = steady(fit, d, lam, np.array([[fit.rate_now]]), ref, Fault(), domains)
    ok = np.ones(lam.shape, dtype=bool)
    for m, lim in limits.items():
        ok &= np.asarray(proj[m] <= lim)
    # more replicas never raise a projection, so the first candidate that holds is the fewest
    capped: np.ndarray = np.asarray(~ok.any(axis=1))
    need = np.where(capped, policy.max_replicas, candidates[np.argmax(ok, axis=1)].astype(np.int64))
    headroom = 1.0 - lam_up / capacity
    reason = "enough history with load variation" if not capped.any() else \
        "max_replicas is too few for the forecast quantile at some horizon"
    return ReplicaAdvice(reason=reason, horizons_s=tuple(float(x) for x in horizons),
                         replicas=tuple(int(x) for x in need), rate_upper=tuple(float(x) for x in lam_up),
                         headroom=tuple(float(x) for x in headroom), capacity_rps=capacity, replicas_now=now,
                         capped=tuple(bool(x) for x in capped), fit=params)


@dataclass(frozen=True, slots=True)
class Stabilised:
    """Raw recommendations of the last window, per horizon, with their times (oldest first)."""

    times: tuple[float, ...] = ()
    raw: tuple[tuple[int, ...], ...] = ()
    horizons_s: tuple[float, ...] = ()


def stabilise(state: Stabilised, at: float, advice: ReplicaAdvice, window_s: float
              ) -> tuple[Stabilised, tuple[int, ...] | None]:
    """The replicas to export: per horizon the highest raw recommendation of the last ``window_s``.

    A rise shows at once, a fall only once it has held for the whole window, so a forecast that dips for
    a tick does not take replicas away that the next tick wants back. The window starts afresh when the
    horizons change or the advice is not trustworthy.
    """
    if advice.replicas is None:
        return Stabilised(), None
    if state.horizons_s != advice.horizons_s:
        state = Stabilised(horizons_s=advice.horizons_s)
    keep = [i for i, t in enumerate(state.times) if at - t < window_s and t <= at]
    times = (*(state.times[i] for i in keep), at)
    raw = (*(state.raw[i] for i in keep), advice.replicas)
    out = tuple(int(x) for x in np.max(np.asarray(raw, dtype=np.int64), axis=0))
    return Stabilised(times=times, raw=raw, horizons_s=advice.horizons_s), out
