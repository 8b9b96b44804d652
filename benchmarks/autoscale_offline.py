"""Which forecast quantile should twin_recommended_replicas size for?  An offline evaluator (issue 19).

The closed loop (``benchmarks/autoscale.py``) takes ~10 minutes a run on two traces; a policy parameter chosen
on it is chosen on two traces. This evaluator replays many NAB load shapes in seconds, with the same parts where
it matters and a queueing model where the closed loop has a real service:

* **load**: a NAB series, a 3-hour stretch at a random place compressed 20x and scaled to the same peak as the
  closed loop (its own ``segment``); observed request rate = Poisson counts per benchmark second over the
  closed loop's 3-second ``rate()`` window;
* **the twin**: the real engine (``sidecar.engine``) fed every benchmark second with that request rate, the
  replica count, and the p99 / mean latency of the requests of the last 3 seconds (drawn from the model below),
  with the closed loop's horizons (15 s and 30 s); at the end of the warm-up the real capacity fit of one
  replica (``fit_replica``), and the real ``recommend`` turning a forecast quantile into replicas (tabulated
  once per segment over request rates, exact because the recommendation only depends on the traffic it is
  ready for), stabilised by the real ``stabilise``;
* **the service**: each replica is an M/G/4 queue (the closed loop's log-normal 500 ms service time, Erlang C
  waiting with the Allen-Cunneen correction), random routing between ready replicas, a fluid backlog when the
  ready replicas are overloaded, a start-up of 90 s (real) for a new replica;
* **the actuators**: the closed loop's own HPA functions (``utilisation_raw``, ``average_value_raw``,
  ``hpa_behaviour``) at its sync and poll periods; the warm-up runs the HPA on every lane.

Scored as the closed loop: real minutes whose p99 latency exceeds 2000 ms (the share of requests over it
above 1 %), and replica-minutes, against the HPA on the same segment.

Beside the plain quantiles (the sidecar's own policy at its defaults) ``--variants`` scores other policies on the
same segments: the interval's upper half-width as it is (``hwnow``), at its minimum or median over N ticks
(``hwminN``, ``hwmedianN``), another scale-down window of the sidecar (``downN``) or of KEDA's HPA (``kedaN``),
sizing on the 30 s horizon too (``h30``); ``--fit-k-bounds`` another range of the replica fit's variability.

The quantile is chosen by leave-one-trace-out: for each trace, on the other traces pooled, the cheapest
quantile whose breach minutes are at most ``BREACH_TARGET`` x the HPA's (the lowest breach if none is); scored
on the held-out trace. Every fold is reported. A segment on which the twin never recommends (no trustworthy
capacity fit after the warm-up: traffic zero, too little variation) is left out of the choice and the scores:
the quantile does not act there, and what the deployment does then is the fallback's (KEDA's
``fallbackReplicas`` or a CPU trigger beside it), not the twin's; they are counted in the report.

    python benchmarks/autoscale_offline.py --segments 6 --output benchmarks/results/autoscale-offline.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import autoscale as closed  # noqa: E402  (the closed loop's constants, segments and actuators)

from sidecar.engine import replicas as replicas_module  # noqa: E402
from sidecar.engine.core import Engine  # noqa: E402
from sidecar.engine.replicas import (  # noqa: E402
    ReplicaAdvice,
    ReplicaPolicy,
    Stabilised,
    Widths,
    fit_replica,
    recommend,
    settle_widths,
    stabilise,
)
from sidecar.engine.settings import EngineSettings  # noqa: E402
from sidecar.engine.whatif import SimulationContext  # noqa: E402

AWS = closed.NAB / "realAWSCloudwatch"
TRACES = {
    "elb": closed.TRACES["elb"],
    "taxi": closed.TRACES["taxi"],
    "net_257a54": AWS / "ec2_network_in_257a54.csv",
    "net_5abac7": AWS / "ec2_network_in_5abac7.csv",
    "disk_1ef3de": AWS / "ec2_disk_write_bytes_1ef3de.csv",
    "disk_c0d644": AWS / "ec2_disk_write_bytes_c0d644.csv",
    "grok_asg": AWS / "grok_asg_anomaly.csv",
}
QUANTILES = (0.5, 0.55, 0.6, 0.65, 0.7, 0.725, 0.75, 0.775, 0.8, 0.825, 0.85, 0.9, 0.95)
BREACH_TARGET = 0.5                   # the goal's breach ratio; the cheapest quantile under it is chosen
DT = 0.25                             # simulation step (benchmark seconds)
TICK = 1.0                            # the sidecar's interval and Prometheus' scrape (benchmark seconds)
RATE_TICKS = 3                        # the closed loop's rate() window, in ticks
LAG_TICKS = 1                         # a recommendation reaches the controller this many ticks after its tick
SERVICE_CS2 = math.exp(closed.SERVICE_SIGMA ** 2) - 1.0      # squared coefficient of variation of service time
SERVICE_MU = math.log(closed.SERVICE_S) - closed.SERVICE_SIGMA ** 2 / 2
#: service-time quantiles (midpoints) the tail probability averages over
SERVICE_POINTS = np.exp(SERVICE_MU + closed.SERVICE_SIGMA * np.array(
    [math.sqrt(2) * float(x) for x in np.polynomial.hermite.hermgauss(24)[0]]))
SERVICE_WEIGHTS = np.polynomial.hermite.hermgauss(24)[1] / math.sqrt(math.pi)
SLO_S = closed.SLO_MS / 1000.0
RATE_GRID = np.arange(0.0, 120.0, 0.05)      # request rates the recommendation is tabulated at


# ------------------------------------------------------------------------------------------------ the queue


def erlang_c(a: float, c: int) -> float:
    """Probability that a request waits in an M/M/c queue with offered load ``a`` (Erlangs)."""
    if a >= c:
        return 1.0
    term, total = 1.0, 1.0
    for k in range(1, c):
        term *= a / k
        total += term
    top = term * a / c / (1.0 - a / c)
    return top / (total + top)


def wait_tail(rate_per_replica: float) -> tuple[float, float]:
    """(probability of waiting, decay rate of the wait per second) of one replica: M/G/c, Allen-Cunneen."""
    c = closed.WORKERS
    a = rate_per_replica * closed.SERVICE_S
    if a >= c * 0.999:
        return 1.0, 1e-3
    return erlang_c(a, c), (c / closed.SERVICE_S - rate_per_replica) * 2.0 / (1.0 + SERVICE_CS2)


def share_over(rate_per_replica: float, delay_s: float, limit_s: float = SLO_S) -> float:
    """Share of requests whose time in the service (backlog delay, wait, service) exceeds ``limit_s``."""
    p_wait, theta = wait_tail(rate_per_replica)
    slack = limit_s - delay_s - SERVICE_POINTS
    tail = np.where(slack <= 0, 1.0, p_wait * np.exp(-theta * np.maximum(slack, 0.0)))
    return float(np.dot(SERVICE_WEIGHTS, tail))


def latency_sample(rng: np.random.Generator, n: int, rate_per_replica: float, delay_s: float) -> np.ndarray:
    """Times in the service (s) of ``n`` requests: backlog delay, Erlang C wait, log-normal service."""
    p_wait, theta = wait_tail(rate_per_replica)
    waits = np.where(rng.random(n) < p_wait, rng.exponential(1.0 / theta, n), 0.0)
    return delay_s + np.minimum(waits, 60.0) + rng.lognormal(SERVICE_MU, closed.SERVICE_SIGMA, n)


@dataclass(slots=True)
class Lane:
    """One deployment's state: its replicas' ready times, its spec, its backlog and its controller history."""

    ready_at: list[float]
    spec: int
    backlog: float = 0.0
    history: list[tuple[float, int]] | None = None

    def ready(self, t: float) -> int:
        return sum(1 for r in self.ready_at if r <= t)

    def scale(self, n: int, t: float) -> None:
        n = max(1, n)
        while len(self.ready_at) < n:
            self.ready_at.append(t + closed.STARTUP_S)
        while len(self.ready_at) > n:
            unready = [i for i, r in enumerate(self.ready_at) if r > t]
            self.ready_at.pop(unready[-1] if unready else len(self.ready_at) - 1)
        self.spec = n


@dataclass(frozen=True, slots=True)
class Outcome:
    breach_minutes: int
    minutes: int
    replica_minutes: float


def run_lane(lam: np.ndarray, warm_s: float, twin_rec: np.ndarray | None, twin_window_s: float,
             trace_ticks: list[tuple[int, float, float]] | None = None,
             served: np.ndarray | None = None, sampled: int | None = None) -> Outcome:
    """One deployment through the segment: the HPA throughout (``twin_rec`` None) or from the end of the warm-up
    KEDA on ``twin_rec`` (stabilised replicas per tick, NaN when withheld). ``trace_ticks`` collects, per tick of
    the warm-up, (ready replicas, per-replica rate, backlog delay) for the twin's latency history, and
    ``served`` the rate of completed requests per step (what the service's request counter shows). ``sampled``
    (a seed) scores a minute as the closed loop does, by the p99 of the requests it had (a Poisson count, each
    over the SLO with the minute's share), not by the expected share: with 80-200 requests a minute, a lane run
    where p99 is the SLO breaches about half its minutes."""
    n = lam.size
    r0 = max(closed.MIN_REPLICAS, math.ceil(lam[0] / (closed.TARGET_UTILISATION * closed.WORKERS / closed.SERVICE_S)))
    lane = Lane([-closed.STARTUP_S] * r0, r0, history=[])
    assert lane.history is not None
    util = np.zeros(n)
    weight = np.zeros(n)
    over = np.zeros(n)
    spec = np.zeros(n)
    next_sync = 0.0
    per_tick = round(TICK / DT)
    mu = closed.WORKERS / closed.SERVICE_S
    for i in range(n):
        t = i * DT
        ready = max(lane.ready(t), 0)
        cap = ready * mu
        lane.backlog = max(0.0, lane.backlog + (lam[i] - cap) * DT)
        if served is not None:
            served[i] = cap if lane.backlog > 0 else lam[i]
        if ready == 0:
            util[i], over[i] = 0.0, 1.0
        else:
            delay = lane.backlog / cap
            util[i] = 1.0 if lane.backlog > 0 else min(lam[i] / cap, 1.0)
            over[i] = share_over(lam[i] / ready, delay)
            if trace_ticks is not None and i % per_tick == per_tick - 1 and t < warm_s:
                trace_ticks.append((ready, min(lam[i], cap) / ready, delay))
        weight[i] = lam[i] * DT
        spec[i] = lane.spec
        if t + 1e-9 < next_sync:
            continue
        twin = twin_rec is not None and t >= warm_s
        if twin:
            assert twin_rec is not None
            k = int(t // TICK) - LAG_TICKS
            metric = float(twin_rec[k]) if 0 <= k < twin_rec.size else math.nan
            raw = closed.average_value_raw(lane.spec, metric, 1.0)
            window = twin_window_s
            next_sync = t + closed.KEDA_POLL_S
        else:
            lo = max(0, i - 2 * per_tick - RATE_TICKS * per_tick)
            u = float(util[lo:max(lo + 1, i - 2 * per_tick)].mean())
            raw = closed.utilisation_raw(lane.spec, ready, u)
            window = closed.SCALE_DOWN_WINDOW_S
            next_sync = t + closed.HPA_SYNC_S
        desired = closed.hpa_behaviour(lane.spec, raw, lane.history, t, window)
        if desired != lane.spec:
            lane.scale(desired, t)
    measured = np.arange(n) * DT >= warm_s
    per_min = round(closed.MINUTE_S / DT)
    w, o = weight[measured], over[measured]
    m = w.size // per_min
    w, o = w[:m * per_min].reshape(m, per_min), o[:m * per_min].reshape(m, per_min)
    seen = w.sum(axis=1) > 0
    share = (w * o).sum(axis=1)[seen] / w.sum(axis=1)[seen]
    rm = float(spec[measured].sum() * DT * closed.COMPRESSION / 60.0)
    if sampled is not None:
        draws = np.random.default_rng(sampled)
        count = draws.poisson(w.sum(axis=1)[seen])
        over = draws.binomial(count, np.clip(share, 0.0, 1.0))
        return Outcome(int((over > 0.01 * count).sum()), int(seen.sum()), rm)
    return Outcome(int((share > 0.01).sum()), int(seen.sum()), rm)


# ------------------------------------------------------------------------------------------------ the twin


@dataclass(frozen=True, slots=True)
class TwinView:
    """Per sidecar tick: the rate now (median of the last 5), the point forecast and upper bound at 15 s; and
    the recommendation per total request rate (``RATE_GRID``) from the fit at the end of the warm-up."""

    rate_now: np.ndarray
    mean: np.ndarray
    upper: np.ndarray
    table: np.ndarray | None          # replicas per RATE_GRID entry; None: the fit was not trustworthy
    fit: dict[str, Any]
    mean_30: np.ndarray | None = None     # the same at the 30 s horizon
    upper_30: np.ndarray | None = None


def observe(lam: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The request rate the sidecar reads at each tick: Poisson counts per second over the rate window."""
    per_tick = round(TICK / DT)
    ticks = lam.size // per_tick
    counts = rng.poisson(lam[:ticks * per_tick].reshape(ticks, per_tick).mean(axis=1) * TICK)
    csum = np.concatenate([[0], np.cumsum(counts)])
    k = np.arange(1, ticks + 1)
    lo = np.maximum(k - RATE_TICKS, 0)
    return (csum[k] - csum[lo]) / ((k - lo) * TICK)


def twin_view(lam: np.ndarray, warm_s: float, hpa_ticks: list[tuple[int, float, float]],
              rng: np.random.Generator, true_capacity: bool = False) -> TwinView:
    """Feed the engine as the sidecar would be fed (``lam``: the served rate), fit one replica at the end of the
    warm-up, tabulate."""
    rate = observe(lam, rng)
    eng = Engine(EngineSettings(horizons_s=(15.0, 30.0), history_size=3601))
    eng.create_twin("lane", at=0.0)
    idx = eng.series_for("lane", ["request_rate", "request_latency_ms", "request_latency_mean_ms", "replicas"])
    warm_ticks = len(hpa_ticks)
    mean = np.full(rate.size, np.nan)
    upper = np.full(rate.size, np.nan)
    mean_30 = np.full(rate.size, np.nan)
    upper_30 = np.full(rate.size, np.nan)
    now = np.zeros(rate.size)
    table = None
    fit_info: dict[str, Any] = {}
    for k in range(rate.size):
        at = (k + 1) * TICK
        if k < warm_ticks:
            ready, per_replica, delay = hpa_ticks[k]
            n = int(rng.poisson(max(rate[k], 0.0) * RATE_TICKS * TICK))
            lat = latency_sample(rng, n, per_replica, delay) if n else np.empty(0)
            p99 = 1000.0 * float(np.quantile(lat, 0.99)) if n else math.nan
            avg = 1000.0 * float(lat.mean()) if n else math.nan
            eng.ingest(idx, np.array([rate[k], p99, avg, float(ready)]), at=at, quiet=True)
        else:
            eng.ingest(idx[:1], np.array([rate[k]]), at=at, quiet=True)
        if k == warm_ticks - 1:
            ctx = eng.context("lane", at=at, workers=closed.WORKERS)
            ctx = SimulationContext(
                twin_id=ctx.twin_id, now=ctx.now, limits={"request_latency_ms": closed.SLO_MS},
                times=ctx.times, values=ctx.values, horizons_s=ctx.horizons_s, forecast_mean=ctx.forecast_mean,
                forecast_lower=ctx.forecast_lower, forecast_upper=ctx.forecast_upper, workers=closed.WORKERS)
            fitted = fit_replica(ctx)
            table, fit_info = tabulate(ctx, fitted)
            if true_capacity and table is not None:     # the fit's error taken out: what the quantile alone does
                table = np.clip(np.ceil(RATE_GRID / truth_slo_rate()), closed.MIN_REPLICAS, closed.MAX_REPLICAS)
        fm, fu = eng.fc_mean[int(idx[0])], eng.fc_upper[int(idx[0])]
        mean[k], upper[k] = float(fm[0]), float(fu[0])
        mean_30[k], upper_30[k] = float(fm[1]), float(fu[1])
        now[k] = float(np.median(rate[max(0, k - 4):k + 1]))
    return TwinView(now, mean, upper, table, fit_info, mean_30, upper_30)


def tabulate(ctx: SimulationContext, fitted: Any) -> tuple[np.ndarray | None, dict[str, Any]]:
    """The real recommendation at every rate of RATE_GRID, in one call (the grid as horizons)."""
    grid = {"request_rate": RATE_GRID.copy()}
    # the history as it was (the recommendation reads its latency levels from it) with 5 samples of no traffic
    # after it, so that "the traffic now" floors no entry of the grid
    values = dict(ctx.values)
    times = dict(ctx.times)
    t_rate = np.asarray(times["request_rate"], dtype=np.float64)
    last = float(t_rate[-1]) if t_rate.size else 0.0
    values["request_rate"] = np.concatenate([np.asarray(values["request_rate"], dtype=np.float64), np.zeros(5)])
    times["request_rate"] = np.concatenate([t_rate, last + 1000.0 + np.arange(5.0)])
    flat = SimulationContext(twin_id=ctx.twin_id, now=ctx.now, limits=ctx.limits, times=times, values=values,
                             horizons_s=RATE_GRID + 1.0, forecast_mean=grid, forecast_lower=grid,
                             forecast_upper=grid, workers=ctx.workers)
    advice: ReplicaAdvice = recommend(flat, ReplicaPolicy(closed.MIN_REPLICAS, closed.MAX_REPLICAS, quantile=0.5),
                                      fitted)
    info = {"reason": advice.reason, "per_replica": dict(advice.fit.get("per_replica", {}))}
    if advice.replicas is None:
        return None, info
    table = np.asarray(advice.replicas, dtype=np.float64)
    # the highest per-replica rate the fit keeps within the SLO, for the report
    one = table <= 1
    info["slo_rate_per_replica"] = float(RATE_GRID[one][-1]) if one.any() else None
    return table, info


@dataclass(frozen=True, slots=True)
class Variant:
    """A policy tried beside the sidecar's own: ``hw_window`` ticks over which the interval's upper half-width is
    taken at its ``hw_stat`` ("min" or "median", never above the half-width now; "now": the half-width as it is;
    none: the sidecar's ``WIDTH_ROUNDS``); the sidecar's scale-down window; sizing on the 30 s horizon as well;
    KEDA's HPA's own scale-down window."""

    quantile: float
    hw_stat: str = ""
    hw_window: int = 0
    window_s: float | None = None
    lead: bool = False
    keda_window_s: float | None = None

    @property
    def key(self) -> str:
        parts = [f"{self.quantile:g}"]
        if self.hw_stat == "now":
            parts.append("hwnow")
        elif self.hw_stat:
            parts.append(f"hw{self.hw_stat}{self.hw_window}")
        if self.window_s is not None:
            parts.append(f"down{self.window_s:g}")
        if self.lead:
            parts.append("h30")
        if self.keda_window_s is not None:
            parts.append(f"keda{self.keda_window_s:g}")
        return " ".join(parts)

    @staticmethod
    def parse(key: str) -> Variant:
        q, *rest = key.split()
        kw: dict[str, Any] = {}
        for tok in rest:
            if tok == "hwnow":
                kw["hw_stat"] = "now"
            elif tok.startswith("hwmin") or tok.startswith("hwmedian"):
                stat = "min" if tok.startswith("hwmin") else "median"
                kw["hw_stat"], kw["hw_window"] = stat, int(tok[len("hw" + stat):])
            elif tok.startswith("down"):
                kw["window_s"] = float(tok[4:])
            elif tok == "h30":
                kw["lead"] = True
            elif tok.startswith("keda"):
                kw["keda_window_s"] = float(tok[4:])
            else:
                raise ValueError(f"unknown variant token {tok!r}")
        return Variant(float(q), **kw)


def settled_half_width(hw: np.ndarray, stat: str, window: int) -> np.ndarray:
    """The half-width per tick as the ``stat`` of the last ``window`` ticks, never above the one now ("min" is
    the sidecar's own `settle_widths`; no ``stat``: the sidecar's own over its ``WIDTH_ROUNDS``)."""
    if not stat:
        stat, window = "min", replicas_module.WIDTH_ROUNDS
    if stat == "now" or window <= 1:
        return hw
    out = hw.copy()
    if stat == "min":
        state = Widths()
        for k in range(hw.size):
            if math.isfinite(hw[k]):
                state, settled = settle_widths(state, (k + 1) * TICK, {15.0: float(hw[k])}, window * TICK)
                out[k] = settled[15.0]
        return out
    for k in range(hw.size):
        w = hw[max(0, k - window + 1):k + 1]
        w = w[np.isfinite(w)]
        if w.size:
            out[k] = min(hw[k], float(np.min(w) if stat == "min" else np.median(w)))
    return out


def twin_recommendations(view: TwinView, quantile: float | Variant, window_s: float) -> np.ndarray:
    """Stabilised replicas per tick for a quantile or variant (NaN before the forecast is warm or without a fit)."""
    out = np.full(view.mean.size, np.nan)
    if view.table is None:
        return out
    v = quantile if isinstance(quantile, Variant) else Variant(quantile)
    window_s = v.window_s if v.window_s is not None else window_s
    share = ReplicaPolicy(quantile=v.quantile).upper_share
    hw = settled_half_width(np.maximum(view.upper - view.mean, 0.0), v.hw_stat, v.hw_window)
    ready = np.maximum(view.mean + share * hw, view.rate_now)
    if v.lead and view.mean_30 is not None and view.upper_30 is not None:
        hw30 = settled_half_width(np.maximum(view.upper_30 - view.mean_30, 0.0), v.hw_stat, v.hw_window)
        ready = np.maximum(ready, view.mean_30 + share * hw30)
    state = Stabilised()
    for k in range(ready.size):
        if not math.isfinite(ready[k]):
            state = Stabilised()
            continue
        j = min(int(np.searchsorted(RATE_GRID, ready[k])), RATE_GRID.size - 1)
        advice = ReplicaAdvice(reason="", horizons_s=(15.0,), replicas=(int(view.table[j]),))
        state, stab = stabilise(state, (k + 1) * TICK, advice, window_s)
        out[k] = stab[0] if stab else math.nan
    return out


# ------------------------------------------------------------------------------------------------ segments


def segments(name: str, count: int, warm_s: float, measure_s: float, seed: int) -> list[closed.Segment]:
    """``count`` stretches of a trace at random places (a stretch without load is drawn again)."""
    t, v = closed.load_trace(TRACES[name])
    rng = np.random.default_rng(seed)
    peak = closed.PEAK_REPLICAS * closed.TARGET_UTILISATION * closed.WORKERS / closed.SERVICE_S
    out: list[closed.Segment] = []
    length_real = (warm_s + measure_s) * closed.COMPRESSION
    for _ in range(count * 20):
        if len(out) == count:
            break
        start = float(rng.uniform(0.0, float(t[-1]) - length_real))
        inside = (t >= start) & (t <= start + length_real)
        if not inside.any() or float(np.max(v[inside])) <= 0:
            continue
        out.append(closed.segment(name, t, v, start, warm_s + measure_s, peak))
    return out


def evaluate(name: str, seg: closed.Segment, warm_s: float, measure_s: float, seed: int,
             quantiles: Sequence[float], window_s: float, true_capacity: bool = False,
             variants: Sequence[str] = (), sampled: bool = False) -> dict[str, Any]:
    """The HPA and every quantile on one segment."""
    rng = np.random.default_rng(seed)
    steps = round((warm_s + measure_s) / DT)
    lam = np.interp(np.arange(steps) * DT, seg.times, seg.rates)
    ticks: list[tuple[int, float, float]] = []
    served = np.zeros_like(lam)
    score = seed if sampled else None         # every lane of a segment draws its minutes alike
    hpa = run_lane(lam, warm_s, None, 0.0, ticks, served, score)
    seen = np.where(np.arange(lam.size) * DT < warm_s, served, lam)     # the twin lane runs the HPA until then
    view = twin_view(seen, warm_s, ticks, rng, true_capacity)
    out: dict[str, Any] = {"trace": name, "start_real_s": seg.start_real_s, "fit": view.fit, "hpa": _od(hpa),
                           "twin": {}}
    for q in quantiles:
        rec = twin_recommendations(view, q, window_s)
        res = run_lane(lam, warm_s, rec, closed.SCALE_DOWN_WINDOW_S, sampled=score)
        out["twin"][f"{q:g}"] = _od(res)
    for key in variants:
        v = Variant.parse(key)
        rec = twin_recommendations(view, v, window_s)
        keda = v.keda_window_s if v.keda_window_s is not None else closed.SCALE_DOWN_WINDOW_S
        out["twin"][v.key] = _od(run_lane(lam, warm_s, rec, keda, sampled=score))
    return out


def _od(o: Outcome) -> dict[str, float]:
    return {"breach_minutes": o.breach_minutes, "minutes": o.minutes, "replica_minutes": round(o.replica_minutes, 2)}


# ------------------------------------------------------------------------------------------------ choice


def pooled(rows: Sequence[dict[str, Any]], q: str) -> tuple[float, float]:
    """(breach ratio, replica-minutes ratio) of quantile ``q`` against the HPA, summed over ``rows``."""
    hb = sum(r["hpa"]["breach_minutes"] for r in rows)
    hr = sum(r["hpa"]["replica_minutes"] for r in rows)
    tb = sum(r["twin"][q]["breach_minutes"] for r in rows)
    tr = sum(r["twin"][q]["replica_minutes"] for r in rows)
    breach = tb / hb if hb else (0.0 if tb == 0 else math.inf)
    return breach, tr / hr if hr else math.nan


def choose(rows: Sequence[dict[str, Any]], qs: Sequence[str]) -> str:
    """The cheapest quantile whose pooled breach ratio meets BREACH_TARGET; else the one with the fewest breaches."""
    scored = {q: pooled(rows, q) for q in qs}
    ok = [q for q in qs if scored[q][0] <= BREACH_TARGET]
    if ok:
        return min(ok, key=lambda q: (scored[q][1], -float(q.split()[0])))
    return min(qs, key=lambda q: (scored[q][0], scored[q][1]))


def goal(b: float, r: float) -> str:
    return "met" if b <= 0.5 and r <= 1.1 else "not met"


def report(every: Sequence[dict[str, Any]], args: argparse.Namespace, cpu_s: float) -> tuple[str, dict[str, Any]]:
    plain = [f"{q:g}" for q in args.quantiles]
    qs = plain + [Variant.parse(k).key for k in getattr(args, "variants", [])]
    among = qs if getattr(args, "choose_among_variants", False) else plain
    rows = [r for r in every if r["fit"].get("slo_rate_per_replica") is not None]
    withheld = {t: sum(1 for r in every if r["trace"] == t and r not in rows) for t in dict.fromkeys(
        r["trace"] for r in every)}
    traces = list(dict.fromkeys(r["trace"] for r in rows))
    folds = []
    for held in traces:
        train = [r for r in rows if r["trace"] != held]
        test = [r for r in rows if r["trace"] == held]
        q = choose(train, among)
        folds.append({"held_out": held, "chosen": q, "train": pooled(train, q), "test": pooled(test, q),
                      "test_hpa_breach": sum(r["hpa"]["breach_minutes"] for r in test),
                      "test_twin_breach": sum(r["twin"][q]["breach_minutes"] for r in test)})
    lines = [f"# Offline autoscaling evaluator ({datetime.now().strftime('%Y-%m-%d %H:%M')} UTC, "
             f"{os.cpu_count()} shared cores, {cpu_s:.0f} s CPU)", "",
             f"`python benchmarks/autoscale_offline.py --segments {args.segments} --seed {args.seed}"
             + (f" --fit-k-bounds {args.fit_k_bounds[0]:g} {args.fit_k_bounds[1]:g}"
                if getattr(args, "fit_k_bounds", None) else "")
             + (" --variants " + " ".join(f"'{k}'" for k in args.variants) if getattr(args, "variants", None) else "")
             + (" --sampled-minutes" if getattr(args, "sampled_minutes", False) else "")
             + (" --true-capacity` (sized with the queueing model's true capacity, not the fit)"
                if getattr(args, "true_capacity", False) else "`") + ": "
             f"{len(every)} segments of {args.warmup_s:g} + {args.measure_s:g} benchmark seconds (3 hours real, "
             f"compressed {closed.COMPRESSION:g}x as the closed loop) over {len(withheld)} NAB traces; the real "
             "engine, capacity fit and recommendation; an M/G/4 queue per replica; the closed loop's HPA "
             "functions as actuators. Ratios are against the HPA on the same segments. A policy is a "
             "quantile with the sidecar's defaults (the upper half-width settled over "
             f"{args.width_rounds} rounds, a replica's variability within "
             f"{args.k_bounds[0]:g}-{args.k_bounds[1]:g}), or a variant: `hwnow` the half-width as it is, "
             "`hwminN` / `hwmedianN` its minimum / median over N ticks, `downN` the sidecar's scale-down window "
             "(s), `h30` sized on the 30 s horizon too, `kedaN` KEDA's HPA's window (s).", "",
             "Left out (no trustworthy capacity fit after the warm-up, so no recommendation to size): "
             + ", ".join(f"{t} {n}" for t, n in withheld.items()) + f" of {args.segments} segments each; "
             f"{len(rows)} segments scored.", "",
             "## Leave-one-trace-out", "",
             "| held-out trace | policy chosen on the others | train breach vs HPA | train replica-min vs HPA | "
             "held-out breach (twin / HPA) | held-out breach vs HPA | held-out replica-min vs HPA | goal |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for f in folds:
        lines.append(f"| {f['held_out']} | {f['chosen']} | {f['train'][0]:.2f} | {f['train'][1]:.2f} | "
                     f"{f['test_twin_breach']} / {f['test_hpa_breach']} | {f['test'][0]:.2f} | {f['test'][1]:.2f} | "
                     f"{goal(*f['test'])} |")
    tb = sum(f["test_twin_breach"] for f in folds)
    hb = sum(f["test_hpa_breach"] for f in folds)
    tr = sum(sum(r["twin"][f["chosen"]]["replica_minutes"] for r in rows if r["trace"] == f["held_out"])
             for f in folds)
    hr = sum(r["hpa"]["replica_minutes"] for r in rows)
    cv = (tb / hb if hb else math.inf, tr / hr)
    final = choose(rows, among)
    lines += ["", f"Pooled over the held-out folds: breach {tb} / {hb} HPA minutes ({cv[0]:.2f}), replica-minutes "
                  f"{cv[1]:.2f} x the HPA's: goal {goal(*cv)}. Chosen the same way on every trace: **{final}** "
                  "(the sidecar's default is the plain quantile of `scale_quantile`).", "",
              "## Every policy, per trace (breach vs HPA / replica-minutes vs HPA)", "",
              "| policy | " + " | ".join(traces) + " | all |", "|---:|" + "---:|" * (len(traces) + 1)]
    for q in qs:
        cells = [pooled([r for r in rows if r["trace"] == tr_], q) for tr_ in traces] + [pooled(rows, q)]
        lines.append(f"| {q} | " + " | ".join(f"{b:.2f} / {r:.2f}" for b, r in cells) + " |")
    lines += ["", "HPA breach minutes / minutes / replica-minutes per trace: " + "; ".join(
        f"{tr_} {sum(r['hpa']['breach_minutes'] for r in rows if r['trace'] == tr_)} / "
        f"{sum(r['hpa']['minutes'] for r in rows if r['trace'] == tr_)} / "
        f"{sum(r['hpa']['replica_minutes'] for r in rows if r['trace'] == tr_):.0f}" for tr_ in traces) + "."]
    known = [r["fit"]["slo_rate_per_replica"] for r in rows]
    lines += ["", f"Capacity fits of the scored segments: the highest per-replica rate they keep "
                  f"within the SLO: median {np.median(known) if known else math.nan:.2f} req/s, range "
                  f"{min(known, default=math.nan):.2f}-{max(known, default=math.nan):.2f} (the queueing model's truth "
                  f"{truth_slo_rate():.2f})."]
    return "\n".join(lines) + "\n", {"folds": folds, "pooled_cv": cv, "chosen_on_all": final}


def truth_slo_rate() -> float:
    """The highest per-replica rate at which the queueing model's p99 stays within the SLO."""
    grid = np.arange(0.05, closed.WORKERS / closed.SERVICE_S, 0.01)
    ok = [x for x in grid if share_over(float(x), 0.0) <= 0.01]
    return float(ok[-1]) if ok else math.nan


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--traces", nargs="+", default=list(TRACES), choices=list(TRACES))
    ap.add_argument("--segments", type=int, default=6, help="random stretches per trace")
    ap.add_argument("--quantiles", type=float, nargs="+", default=list(QUANTILES))
    ap.add_argument("--window-s", type=float, default=closed.SCALE_DOWN_WINDOW_S,
                    help="the sidecar's scale_down_stabilisation (benchmark seconds)")
    ap.add_argument("--warmup-s", type=float, default=180.0)
    ap.add_argument("--measure-s", type=float, default=360.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", default=str(HERE / "results" / "autoscale-offline.md"))
    ap.add_argument("--true-capacity", action="store_true",
                    help="size with the queueing model's true capacity instead of the fit (where the fit is "
                         "trustworthy): how much of the cost is the fit's")
    ap.add_argument("--variants", nargs="*", default=[],
                    help="policies beside the plain quantiles, e.g. '0.75 hwmin30' (the upper half-width at its "
                         "minimum over 30 ticks), '0.75 hwmedian60', '0.75 down8' (the sidecar's scale-down window, "
                         "s), '0.75 h30' (sized on the 30 s horizon too), '0.75 keda0' (KEDA's HPA window, s)")
    ap.add_argument("--fit-k-bounds", type=float, nargs=2, default=None,
                    help="the replica fit's FIT_K_BOUNDS (service-time variabilities it may choose)")
    ap.add_argument("--sampled-minutes", action="store_true",
                    help="score a minute by the p99 of the requests it had (as the closed loop), not the expected "
                         "share over the SLO")
    ap.add_argument("--choose-among-variants", action="store_true",
                    help="leave-one-trace-out chooses among the variants too (default: among the plain quantiles, "
                         "the sidecar's own policy; the variants are reported beside them)")
    ap.add_argument("--report-only", metavar="JSON",
                    help="rewrite --output from an earlier run's JSON, running nothing")
    args = ap.parse_args(argv)
    if args.report_only:
        saved = json.loads(Path(args.report_only).read_text())
        args.segments, args.seed, args.quantiles = (saved["args"][k] for k in ("segments", "seed", "quantiles"))
        args.warmup_s, args.measure_s = saved["args"]["warmup_s"], saved["args"]["measure_s"]
        args.true_capacity = saved["args"].get("true_capacity", False)
        args.variants = saved["args"].get("variants", [])
        args.choose_among_variants = saved["args"].get("choose_among_variants", False)
        args.sampled_minutes = saved["args"].get("sampled_minutes", False)
        args.fit_k_bounds = saved["args"].get("fit_k_bounds")
        args.width_rounds = saved["args"].get("width_rounds", 0)
        args.k_bounds = saved["args"].get("k_bounds", (0.25, 2.5))
        text, _ = report(saved["rows"], args, saved.get("cpu_s", math.nan))
        Path(args.output).write_text(text)
        return
    if args.fit_k_bounds is not None:
        replicas_module.FIT_K_BOUNDS = (args.fit_k_bounds[0], args.fit_k_bounds[1])
    args.width_rounds, args.k_bounds = replicas_module.WIDTH_ROUNDS, replicas_module.FIT_K_BOUNDS
    cpu0 = time.process_time()
    rows = []
    for ti, name in enumerate(args.traces):
        for si, seg in enumerate(segments(name, args.segments, args.warmup_s, args.measure_s, args.seed * 100 + ti)):
            rows.append(evaluate(name, seg, args.warmup_s, args.measure_s, args.seed * 1000 + ti * 10 + si,
                                 args.quantiles, args.window_s, args.true_capacity, args.variants,
                                 args.sampled_minutes))
            print(f"{name} {si}: hpa {rows[-1]['hpa']} fit {rows[-1]['fit'].get('slo_rate_per_replica')}", flush=True)
    cpu_s = time.process_time() - cpu0
    text, summary = report(rows, args, cpu_s)
    Path(args.output).write_text(text)
    Path(args.output).with_suffix(".json").write_text(json.dumps(
        {"args": vars(args), "rows": rows, "cpu_s": cpu_s, **summary}, separators=(",", ":")))
    print(text)


if __name__ == "__main__":
    main()
