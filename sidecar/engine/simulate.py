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

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sidecar.engine.capacity import (
    CPU,
    ERRORS,
    F64,
    LATENCY,
    MEAN_LATENCY,
    MEMORY,
    MIN_SAMPLES,
    TRAFFIC_NO_DATA,
    TRAFFIC_NO_QUERY,
    TRAFFIC_ZERO,
    CapacityFit,
    fit_capacity,
    mean_wait_s,
    wait_quantile_s,
)
from sidecar.errors import ScenarioError

#: Monte Carlo draws (besides the point estimate in draw 0).
DRAWS = 1000
#: Structural log-sd of the capacity: the model is an approximation even when the fit is good.
STRUCTURAL_SD = 0.06
STRUCTURAL_SD_UNTRUSTED = 0.25
#: How much wider the parameter uncertainty is drawn when the fit is not trustworthy.
UNTRUSTED_WIDEN = 2.5
#: Interval reported for projections and breaking points.
INTERVAL = (0.05, 0.95)
#: Points of the time grid and of the multiplier grid.
TIME_STEPS = 240
MULTIPLIER_STEPS = 500
#: Points of each projected series in the JSON result.
OUTPUT_POINTS = 61
#: Utilisation the steady-state queueing curve is evaluated at, at most (the backlog takes over above).
RHO_CAP = 0.98

SCENARIO_TYPES = ("traffic_spike", "failure_injection", "load_test")
#: The metrics the capacity model projects (when the twin has them); any other metric follows its forecast.
METRICS = (CPU, MEMORY, LATENCY, ERRORS, MEAN_LATENCY)
BOTTLENECK = {CPU: "cpu", LATENCY: "latency", ERRORS: "errors", MEMORY: "memory", MEAN_LATENCY: "mean_latency"}
LABEL = {CPU: "CPU", MEMORY: "memory", LATENCY: "latency", ERRORS: "error rate", MEAN_LATENCY: "mean latency"}
#: Built-in domains of the core metrics; `SimulationContext.domains` may narrow them or give a custom metric one.
CORE_DOMAINS: Mapping[str, tuple[float, float]] = {
    CPU: (0.0, 100.0), MEMORY: (0.0, 100.0), LATENCY: (0.0, math.inf), ERRORS: (0.0, 1.0),
    MEAN_LATENCY: (0.0, math.inf)}
#: How the projection of a metric was made (``projected_metrics[m]["model"]``).
BY_CAPACITY = "capacity"
BY_FORECAST = "forecast"

_COMMON_KEYS = {"type", "name", "description", "seed"}
_KEYS = {
    "traffic_spike": {"traffic_multiplier", "duration_minutes", "ramp_minutes", "timeout_s"},
    "failure_injection": {"replicas", "replicas_lost", "added_latency_ms", "dependency_latency_ms",
                          "error_rate", "error_burst", "duration_minutes", "traffic_multiplier",
                          "component", "timeout_s"},
    "load_test": {"max_multiplier", "required_multiplier"},
}
#: How far above current traffic a load test requires the service to hold before it counts as a failure.
DEFAULT_REQUIRED_MULTIPLIER = 2.0
#: The highest multiplier a load test ramps to by default.
DEFAULT_MAX_MULTIPLIER = 20.0


@dataclass(frozen=True, slots=True)
class SimulationContext:
    """Everything a simulation needs from the twin, handed in (the engine stays pure)."""

    twin_id: str
    now: float                                  # unix s
    limits: Mapping[str, float]                 # metric -> limit
    times: Mapping[str, np.ndarray]             # metric -> (n,) sample times, oldest first
    values: Mapping[str, np.ndarray]            # metric -> (n,) observed values
    horizons_s: np.ndarray                      # (H,)
    forecast_mean: Mapping[str, np.ndarray]     # metric -> (H,) (NaN when not warm)
    forecast_lower: Mapping[str, np.ndarray]
    forecast_upper: Mapping[str, np.ndarray]
    replicas: int | None = None
    workers: int | None = None
    request_rate_metric: str = "request_rate"
    latency_quantile: float = 0.99              # which percentile request_latency_ms is
    # metric -> (low, high) its values can take; core metrics default to CORE_DOMAINS (see `metric_domain`)
    domains: Mapping[str, tuple[float, float]] = field(default_factory=dict)


def metric_domain(ctx: SimulationContext, metric: str) -> tuple[float, float]:
    """The values ``metric`` can take: the context's domain, the built-in one of a core metric, else open.

    A metric without a given or built-in domain is unbounded, except that one never observed below 0 (a
    count, a queue depth, a load average) stays at or above 0. A missing (NaN) end is open.
    """
    given = ctx.domains.get(metric)
    if given is not None:
        lo, hi = float(given[0]), float(given[1])
        lo = -math.inf if math.isnan(lo) else lo
        hi = math.inf if math.isnan(hi) else hi
        if lo > hi:
            raise ValueError(f"domain of {metric} is empty: low {lo:g} > high {hi:g}")
        return lo, hi
    if metric in CORE_DOMAINS:
        return CORE_DOMAINS[metric]
    v = np.asarray(ctx.values.get(metric, np.empty(0)), dtype=np.float64)
    v = v[np.isfinite(v)]
    return (0.0 if v.size and float(v.min()) >= 0.0 else -math.inf), math.inf


@dataclass(slots=True)
class SimulationResult:
    """A scenario's answer; `to_dict` is JSON-ready (no NaN or inf: None), its ``caveat`` first."""

    scenario: dict[str, Any]
    failure_probability: float
    will_likely_fail: bool
    projected_metrics: dict[str, Any]
    time_to_first_breach_s: float | None
    breaking_point: dict[str, Any] | None
    recommendations: list[str]
    recovery_time_s: float | None
    model_fit: dict[str, Any]
    breach_probability: dict[str, float] = field(default_factory=dict)
    recovery_time_interval_s: list[float | None] | None = None
    seed: int = 0
    samples: int = DRAWS
    # what an SRE reads first: why the probability is a guess (None when the fit is trustworthy)
    caveat: str | None = None
    # metric the scenario acts on that the twin does not have -> what of the scenario is therefore not projected
    missing_metrics: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        raw: dict[str, Any] = _clean(asdict(self))
        out = {"caveat": raw.pop("caveat")}
        out.update(raw)
        return out


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_clean(v) for v in obj.tolist()]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        x = float(obj)
        return round(x, 6) if math.isfinite(x) else None
    return obj


# ---------------------------------------------------------------------------------------------- scenarios


@dataclass(frozen=True, slots=True)
class Scenario:
    """A validated scenario with every default filled in."""

    type: str
    multiplier: float = 1.0
    duration_s: float = 0.0
    ramp_s: float = 0.0
    timeout_s: float = 30.0
    replicas: int = 1
    replicas_lost: int = 0
    added_latency_ms: float = 0.0
    error_burst: float = 0.0
    component: str | None = None
    max_multiplier: float = DEFAULT_MAX_MULTIPLIER
    required_multiplier: float = DEFAULT_REQUIRED_MULTIPLIER

    def describe(self) -> dict[str, Any]:
        if self.type == "traffic_spike":
            return {"type": self.type, "traffic_multiplier": self.multiplier,
                    "duration_minutes": self.duration_s / 60, "ramp_minutes": self.ramp_s / 60,
                    "timeout_s": self.timeout_s}
        if self.type == "failure_injection":
            return {"type": self.type, "replicas": self.replicas, "replicas_lost": self.replicas_lost,
                    "added_latency_ms": self.added_latency_ms, "error_rate": self.error_burst,
                    "duration_minutes": self.duration_s / 60, "traffic_multiplier": self.multiplier,
                    "component": self.component, "timeout_s": self.timeout_s}
        return {"type": self.type, "max_multiplier": self.max_multiplier,
                "required_multiplier": self.required_multiplier}


def _number(raw: Mapping[str, Any], key: str, default: float | None, *, low: float, high: float,
            low_open: bool = False, alias: str | None = None) -> float:
    name = key
    value = raw.get(key)
    if value is None and alias is not None and raw.get(alias) is not None:
        name, value = alias, raw.get(alias)
    if value is None:
        if default is None:
            raise ScenarioError(f"scenario field '{key}' is required for type '{raw.get('type')}'", field=key)
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            value = float(value) if isinstance(value, str) and not isinstance(value, bool) else None
        except ValueError:
            value = None
        if value is None:
            raise ScenarioError(f"scenario field '{name}' must be a number, got {raw.get(name)!r}", field=name)
    try:
        x = float(value)
    except OverflowError:       # an integer beyond any float: out of range like any other huge value
        x = math.inf
    if not math.isfinite(x) or x > high or x < low or (low_open and x <= low):
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        raise ScenarioError(f"scenario field '{name}' must be {bound} and <= {high:g}, got {value!r}", field=name)
    return x


def _integer(raw: Mapping[str, Any], key: str, default: int, *, low: int, high: int) -> int:
    value = raw.get(key)
    if value is None:
        return default
    # is_integer() rather than int(value): int() of an infinite or NaN float raises (OverflowError/ValueError)
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            isinstance(value, float) and not value.is_integer()):
        raise ScenarioError(f"scenario field '{key}' must be a whole number, got {value!r}", field=key)
    if not low <= int(value) <= high:
        raise ScenarioError(f"scenario field '{key}' must be between {low} and {high}, got {value!r}", field=key)
    return int(value)


def parse_scenario(raw: Mapping[str, Any], *, replicas: int | None = None) -> Scenario:
    """Validate a scenario mapping; every problem raises `ScenarioError` naming the field."""
    if not isinstance(raw, Mapping):
        raise ScenarioError(f"scenario must be an object, got {type(raw).__name__}")
    kind = raw.get("type")
    if kind not in SCENARIO_TYPES:
        raise ScenarioError(f"scenario field 'type' must be one of {', '.join(SCENARIO_TYPES)}; got {kind!r}",
                            field="type")
    unknown = sorted(set(raw) - _COMMON_KEYS - _KEYS[kind])
    if unknown:
        raise ScenarioError(f"scenario field '{unknown[0]}' is not known for type '{kind}' "
                            f"(known: {', '.join(sorted(_KEYS[kind]))})", field=unknown[0])
    if kind == "traffic_spike":
        return Scenario(
            type=kind,
            multiplier=_number(raw, "traffic_multiplier", None, low=0.0, high=1000.0, low_open=True),
            duration_s=60 * _number(raw, "duration_minutes", 30.0, low=0.0, high=24 * 60, low_open=True),
            ramp_s=60 * _number(raw, "ramp_minutes", 0.0, low=0.0, high=24 * 60),
            timeout_s=_number(raw, "timeout_s", 30.0, low=0.0, high=3600.0, low_open=True),
        )
    if kind == "failure_injection":
        n = _integer(raw, "replicas", replicas or 1, low=1, high=100_000)
        lost = _integer(raw, "replicas_lost", 0, low=0, high=100_000)
        if lost >= n:
            raise ScenarioError(f"scenario field 'replicas_lost' ({lost}) must be less than 'replicas' "
                                f"({n}): losing every replica is a total outage", field="replicas_lost")
        added = _number(raw, "added_latency_ms", 0.0, low=0.0, high=3_600_000.0,
                        alias="dependency_latency_ms")
        burst = _number(raw, "error_rate", 0.0, low=0.0, high=1.0, alias="error_burst")
        if lost == 0 and added == 0 and burst == 0:
            raise ScenarioError("scenario field 'replicas_lost', 'added_latency_ms' or 'error_rate' must "
                                "describe a fault (all are 0)", field="replicas_lost")
        component = raw.get("component")
        if component is not None and not isinstance(component, str):
            raise ScenarioError(f"scenario field 'component' must be a string, got {component!r}",
                                field="component")
        return Scenario(
            type=kind, replicas=n, replicas_lost=lost, added_latency_ms=added, error_burst=burst,
            duration_s=60 * _number(raw, "duration_minutes", 10.0, low=0.0, high=24 * 60, low_open=True),
            multiplier=_number(raw, "traffic_multiplier", 1.0, low=0.0, high=1000.0, low_open=True),
            timeout_s=_number(raw, "timeout_s", 30.0, low=0.0, high=3600.0, low_open=True),
            component=component,
        )
    return _load_test_scenario(raw)


def _load_test_scenario(raw: Mapping[str, Any]) -> Scenario:
    """A load test ramps up to ``max_multiplier`` and fails when it breaks below ``required_multiplier``.

    The required multiple defaults to 2x (or ``max_multiplier`` when that is lower) and may not exceed
    ``max_multiplier``: beyond the ramp the test cannot tell whether the service holds.
    """
    top = _number(raw, "max_multiplier", DEFAULT_MAX_MULTIPLIER, low=1.0, high=1000.0, low_open=True)
    required = _number(raw, "required_multiplier", min(DEFAULT_REQUIRED_MULTIPLIER, top), low=1.0, high=1000.0)
    if required > top:
        raise ScenarioError(f"scenario field 'required_multiplier' ({required:g}) must be at most "
                            f"'max_multiplier' ({top:g}): the load test only ramps that far",
                            field="required_multiplier")
    return Scenario(type="load_test", max_multiplier=top, required_multiplier=required)


# ---------------------------------------------------------------------------------------------- draws


@dataclass(frozen=True, slots=True)
class Draws:
    """Model parameters, one row per draw (row 0 = the point estimate), shaped (S, 1) to broadcast."""

    capacity: F64
    cpu_slope: F64
    variability: F64
    error_slope: F64
    memory_slope: F64
    z: Mapping[str, F64]          # standard normal per metric: its place inside the forecast interval

    @property
    def size(self) -> int:
        return int(self.capacity.shape[0])


def draw(fit: CapacityFit, metrics: tuple[str, ...], rng: np.random.Generator, n: int = DRAWS,
         forecast_only: tuple[str, ...] = ()) -> Draws:
    """Sample the fit's uncertainty around the binding capacity route.

    ``metrics`` are the core metrics the model projects, ``forecast_only`` the twin's other metrics; each
    gets its place inside its forecast interval (those of ``forecast_only`` drawn last, so that adding a
    custom metric to a twin leaves every other draw as it was).

    Only the route that binds (the smallest capacity) is drawn: another route consistent with it
    measures the same bottleneck, and taking the minimum of two noisy draws of one quantity would
    bias the capacity low; a route clearly above it never binds. The CPU law is drawn through
    (a, b) jointly, so capacity and projected CPU stay consistent when CPU binds.
    """
    widen = 1.0 if fit.trustworthy else UNTRUSTED_WIDEN
    structural = STRUCTURAL_SD if fit.trustworthy else STRUCTURAL_SD_UNTRUSTED
    s = n + 1
    b = np.full(s, fit.cpu_slope)
    a_s = np.full(s, fit.cpu_idle)
    if fit.has_cpu and fit.has_rate:
        cov = np.asarray(fit.cpu_cov) * widen**2
        ab = rng.multivariate_normal([fit.cpu_idle, fit.cpu_slope], cov, size=s, method="eigh")
        ab[0] = (fit.cpu_idle, fit.cpu_slope)
        b = np.maximum(ab[:, 1], fit.cpu_slope * 0.05)
        a_s = np.clip(ab[:, 0], 0.0, 99.0)
    elif fit.has_cpu:
        sd = math.sqrt(max(fit.cpu_cov[1][1], 0.0)) * widen
        b = np.maximum(fit.cpu_slope + rng.normal(0.0, sd, s), fit.cpu_slope * 0.05)
        b[0] = fit.cpu_slope
    sd = fit.candidates[fit.capacity_source][1]
    if fit.capacity_source == "cpu" and fit.has_rate:
        cap = (100.0 - a_s) / b * (fit.capacity / ((100.0 - fit.cpu_idle) / fit.cpu_slope))
    else:
        cap = fit.capacity * np.exp(rng.normal(0.0, sd * widen, s))
    cap_structural = np.exp(rng.normal(0.0, structural, s))
    cap_structural[0] = 1.0
    cap *= cap_structural
    cap[0] = fit.capacity
    cap = np.maximum(cap, fit.capacity_floor)
    variability = rng.uniform(*fit.variability_range, s)
    variability[0] = fit.variability
    err_slope = np.full(s, fit.error_slope)
    mem_slope = fit.memory_slope + rng.normal(0.0, fit.memory_slope_sd * widen, s)
    mem_slope[0] = fit.memory_slope
    z = {}
    for m in metrics:
        zm = rng.normal(0.0, 1.0, s)
        zm[0] = 0.0
        z[m] = zm[:, None]
    # The CPU law is the same approximation as the capacity: CPU per request carries the structural
    # uncertainty too, or a CPU limit would be projected far more precisely than the fit deserves.
    # When CPU binds it moves with the capacity's own factor (CPU at capacity stays 100%); otherwise it
    # gets its own factor, drawn last so every other draw stays as it was.
    if fit.capacity_source == "cpu" and fit.has_rate:
        b = b / cap_structural
    else:
        b_structural = np.exp(rng.normal(0.0, structural, s))
        b_structural[0] = 1.0
        b = b * b_structural
    for m in forecast_only:
        zm = rng.normal(0.0, 1.0, s)
        zm[0] = 0.0
        z[m] = zm[:, None]
    return Draws(cap[:, None], b[:, None], variability[:, None], err_slope[:, None], mem_slope[:, None], z)


# ---------------------------------------------------------------------------------------------- baseline


#: Normal quantile of a two-sided 90% interval: forecast bounds -> standard deviation.
Z90 = 1.6448536269514722


def _baseline(ctx: SimulationContext, metric: str, offsets: F64, now_value: float) -> tuple[F64, F64, F64]:
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


def _around(baseline: tuple[F64, F64, F64], z: F64, domain: tuple[float, float]) -> F64:
    """(draws × times): each draw at its place ``z`` inside the forecast interval, kept inside the domain.

    A split normal: the 5% and 95% points of the draws are the forecast's own lower and upper bounds.
    """
    mu, below, above = baseline
    return np.clip(mu[None, :] + np.where(z < 0, z * below[None, :], z * above[None, :]), *domain)


# ---------------------------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class Fault:
    """What a scenario does to the service while it lasts (share = load per surviving replica)."""

    share: float = 1.0
    added_latency_ms: float = 0.0
    error_burst: float = 0.0


def _fault_capacity(fit: CapacityFit, d: Draws, fault: Fault) -> tuple[F64, float]:
    """Capacity and servers during a fault: fewer replicas, or workers held longer by a slow dependency."""
    servers = max(fit.servers / fault.share, 1.0)
    cap = d.capacity / fault.share
    if fault.added_latency_ms > 0 and fit.has_rate:
        service_s = servers / cap + fault.added_latency_ms / 1000.0
        cap = servers / service_s
    return cap, servers


def _steady(fit: CapacityFit, d: Draws, lam: F64, lam_ref: F64, ref: Mapping[str, F64], fault: Fault,
            domains: Mapping[str, tuple[float, float]], backlog_s: F64 | None = None,
            shed: F64 | None = None) -> dict[str, F64]:
    """Metrics at arrival rate ``lam`` as the reference values plus the model's difference.

    Only the metrics in ``ref`` (the twin's own) are projected, each kept inside its domain: overload shows
    as shed requests only on a twin with an error rate, and as a backlog only on one with a latency.
    """
    cap, servers = _fault_capacity(fit, d, fault)
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


def _limits(ctx: SimulationContext, projected: Mapping[str, F64]) -> dict[str, float]:
    return {m: float(ctx.limits[m]) for m in projected if m in ctx.limits and math.isfinite(ctx.limits[m])}


# ---------------------------------------------------------------------------------------------- helpers


def _q(x: F64, axis: int = 0) -> tuple[F64, F64]:
    lo, hi = np.quantile(x, INTERVAL, axis=axis, method="inverted_cdf")
    return np.asarray(lo), np.asarray(hi)


def _pick(n: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, OUTPUT_POINTS)).round().astype(int))


def _fmt(x: float, unit: str = "") -> str:
    if not math.isfinite(x):
        return "unbounded"
    if abs(x) >= 100:
        s = f"{x:.0f}"
    elif abs(x) >= 10:
        s = f"{x:.1f}"
    elif abs(x) >= 1:
        s = f"{x:.2f}"
    else:
        s = f"{x:.3g}"
    return f"{s}{unit}"


def _percent(p: float) -> str:
    """A probability in whole percent, except that a small non-zero one is never shown as 0%."""
    if 0.0 < p < 0.005:
        return "<1%"
    return f"{100 * p:.0f}%"


def _metric_value(metric: str, x: float) -> str:
    if metric in (LATENCY, MEAN_LATENCY):
        return _fmt(x, " ms")
    if metric == ERRORS:
        return _fmt(100.0 * x, "%")
    if metric in (CPU, MEMORY):
        return _fmt(x, "%")
    return _fmt(x)                  # a custom metric: its own unit


def _label(metric: str) -> str:
    return LABEL.get(metric, metric)


def _key(metric: str) -> str:
    """A metric's key in ``breach_probability`` (and a load test's bottleneck): cpu, latency, …, or its name."""
    return BOTTLENECK.get(metric, metric)


def _names(metrics: list[str] | tuple[str, ...]) -> tuple[str, bool]:
    """"load1 and queue_depth", and whether that is one metric."""
    return " and ".join(_label(m) for m in metrics), len(metrics) == 1


def _interval_text(lo: float, hi: float, tested: float) -> str:
    """A breaking point's interval; an end beyond the multipliers tested is open, not a number."""
    if math.isfinite(lo) and math.isfinite(hi):
        return f"{_fmt(lo)}–{_fmt(hi)}x"
    if math.isfinite(lo):
        return f"at least {_fmt(lo)}x (the upper end lies beyond the {_fmt(tested)}x tested)"
    return f"beyond the {_fmt(tested)}x tested"


def _rate_text(fit: CapacityFit, multiplier: float) -> str:
    if fit.has_rate and math.isfinite(multiplier):
        return f" (≈ {_fmt(multiplier * fit.rate_now)} req/s)"
    return ""


def _quantile_name(fit: CapacityFit) -> str:
    return f"p{fit.quantile * 100:g}"


#: Most replicas a recommendation searches, as a multiple of the current count.
MAX_SCALE = 64
#: Failure probability a recommendation aims to bring the scenario under.
TARGET_P = 0.1


def _breaches(fit: CapacityFit, d: Draws, limits: Mapping[str, float], lam: F64, lam_ref: F64,
              ref: Mapping[str, F64], share: float, domains: Mapping[str, tuple[float, float]]
              ) -> dict[str, np.ndarray]:
    """Per metric, which draws breach its limit at some time when each replica carries ``share`` of its load.

    Only the core metrics the twin has (``ref``): a metric it lacks, or one projected as its own forecast,
    never decides how many replicas are needed.
    """
    proj = _steady(fit, d, lam, lam_ref, ref, Fault(share=share), domains)
    return {m: np.asarray((proj[m] > lim).any(axis=1)) for m, lim in limits.items() if m in proj}


def _replicas_needed(fit: CapacityFit, d: Draws, ctx: SimulationContext, lam: F64, lam_ref: F64,
                     ref: Mapping[str, F64], replicas: int, domains: Mapping[str, tuple[float, float]],
                     target: float = TARGET_P) -> int | None:
    """Fewest replicas (same workers each) keeping P(breach) ≤ target at the given loads; None if none helps.

    ``lam``, ``lam_ref`` and ``ref`` are (draws × times) over the scenario, so a limit that is breached by the
    forecast itself (memory growing on its own) correctly shows that more replicas do not help.

    More replicas give each a smaller share of the load, and no projection grows as its share shrinks, so
    whether ``r`` replicas suffice is monotone in ``r``: a bisection finds the fewest in about
    log2(63 × replicas) projections (one per candidate took minutes for tens of thousands of replicas, with
    the engine lock held).
    """
    limits = _limits(ctx, ref)
    if not limits:
        return None

    def enough(r: int) -> bool:
        breach = np.zeros(d.size, dtype=bool)
        for hit in _breaches(fit, d, limits, lam, lam_ref, ref, replicas / r, domains).values():
            breach |= hit
        return bool(breach[1:].mean() <= target and not breach[0])

    lo, hi = replicas, replicas * MAX_SCALE
    if enough(lo):
        return lo
    if not enough(hi):
        return None
    while hi - lo > 1:              # enough(hi) and not enough(lo)
        mid = (lo + hi) // 2
        if enough(mid):
            hi = mid
        else:
            lo = mid
    return hi


# ---------------------------------------------------------------------------------------------- run


@dataclass(frozen=True, slots=True)
class _Run:
    """What every scenario type works from: the context, the scenario, the fit and its draws."""

    ctx: SimulationContext
    sc: Scenario
    fit: CapacityFit
    d: Draws
    metrics: tuple[str, ...]                     # the twin's core metrics: projected by the capacity model
    own: tuple[str, ...]                         # the twin's other metrics: projected as their own forecast
    domains: Mapping[str, tuple[float, float]]
    model_fit: dict[str, Any]
    seed: int


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
                 "traffic_note": _traffic_note(fit, ctx), "params": fit.params(),
                 "model": "M/M/c (Erlang C) with utilisation law, fitted from observed history",
                 "projection": {**{m: BY_CAPACITY for m in metrics}, **{m: BY_FORECAST for m in own}}}
    run = _Run(ctx, sc, fit, d, metrics, own, domains, model_fit, seed)
    if sc.type == "load_test":
        result = _load_test_without_traffic(run) if fit.zero_traffic else _load_test(run)
    else:
        result = _timeline(run)
    result.caveat = _caveat(fit)
    result.missing_metrics = _missing_metrics(sc, metrics)
    notes = list(result.missing_metrics.values())
    if not metrics:
        notes.append("No metric of this twin is modelled against traffic (it has none of "
                     f"{', '.join(METRICS[:4])}): the scenario's traffic and faults move nothing projected here.")
    if notes:
        at = 1 if isinstance(model_fit.get("traffic_note"), str) else 0
        result.recommendations[at:at] = notes
    return result


def _caveat(fit: CapacityFit) -> str | None:
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


def _missing_metrics(sc: Scenario, metrics: tuple[str, ...]) -> dict[str, str]:
    """The metrics a failure injection acts on that the twin does not have, with what is left out for it."""
    out: dict[str, str] = {}
    if sc.type != "failure_injection":
        return out
    if sc.added_latency_ms > 0 and LATENCY not in metrics and MEAN_LATENCY not in metrics:
        out[LATENCY] = (f"The added {_fmt(sc.added_latency_ms, ' ms')} of latency is not projected: this twin has "
                        f"no {LATENCY}.")
    if sc.error_burst > 0 and ERRORS not in metrics:
        out[ERRORS] = (f"The injected error rate of {_percent(sc.error_burst)} is not projected: this twin has no "
                       f"{ERRORS}.")
    return out


def _traffic_note(fit: CapacityFit, ctx: SimulationContext) -> str | None:
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


def _with_note(model_fit: Mapping[str, Any], recs: list[str]) -> list[str]:
    note = model_fit.get("traffic_note")
    return [note, *recs] if isinstance(note, str) else recs


def _current(run: _Run, metrics: tuple[str, ...], width: int) -> dict[str, F64]:
    """(draws × width) arrays at each metric's current level, inside its domain."""
    return {m: np.full((run.d.size, width), float(np.clip(run.fit.now[m], *run.domains[m]))) for m in metrics}


def _held_level(run: _Run, width: int) -> dict[str, Any]:
    """A load test's projection of the twin's own metrics: its current level (its forecast at now) throughout."""
    out: dict[str, Any] = {}
    for m, v in _current(run, run.own, 1).items():
        lim = run.ctx.limits.get(m)
        out[m] = {"value": np.full(width, v[0, 0]), "lower": np.full(width, v[0, 0]),
                  "upper": np.full(width, v[0, 0]), "limit": lim if lim is not None and math.isfinite(lim) else None,
                  "model": BY_FORECAST}
    return out


def _held_level_notes(run: _Run) -> list[str]:
    """Why a load test leaves the twin's own metrics alone, and which of them is over its limit regardless."""
    if not run.own:
        return []
    names, one = _names(run.own)
    notes = [f"{names} {'is' if one else 'are'} not modelled against traffic: held at {'its' if one else 'their'} "
             "current level along the ramp, and not part of the breaking point."]
    for m in run.own:
        lim = run.ctx.limits.get(m)
        now = float(np.clip(run.fit.now[m], *run.domains[m]))
        if lim is not None and math.isfinite(lim) and now > lim:
            notes.append(f"{_label(m)} is already over its limit ({_metric_value(m, now)} against "
                         f"{_metric_value(m, lim)}), whatever the traffic.")
    return notes


def _load_test_without_traffic(run: _Run) -> SimulationResult:
    """A load test at zero traffic: every multiple of it is zero, so only the current state can break a limit."""
    ctx, sc, fit, d = run.ctx, run.sc, run.fit, run.d
    lam = np.zeros((d.size, 1))
    ref = _current(run, run.metrics, 1)
    proj = _steady(fit, d, lam, lam, ref, Fault(), run.domains)
    limits = _limits(ctx, proj)
    over = {m: proj[m][:, 0] > lim for m, lim in limits.items()}
    broken = np.zeros(d.size, dtype=bool)
    for hit in over.values():
        broken |= hit
    p_fail = float(np.mean(broken[1:]))
    first = next((m for m in limits if over[m][0]), None)
    bottleneck = _key(first) if first is not None else None
    breach_p = {_key(m): float(np.mean(hit[1:])) for m, hit in over.items()}
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
        plo, phi = _q(v[1:, 0])
        projected[m] = {"value": np.full(2, v[0, 0]), "lower": np.full(2, plo), "upper": np.full(2, phi),
                        "limit": limits.get(m), "model": BY_CAPACITY}
    projected.update(_held_level(run, 2))
    recs: list[str] = []
    if bottleneck is not None:
        assert first is not None
        recs.append(f"{_label(first)[0].upper()}{_label(first)[1:]} is already over its limit with no traffic "
                    f"({_metric_value(first, float(proj[first][0, 0]))} against {_metric_value(first, limits[first])})"
                    ": act now; it is not load-driven, so more replicas will not help.")
    else:
        recs.append(f"No limit breaks up to {_fmt(sc.max_multiplier)}x current traffic: "
                    f"{_fmt(sc.max_multiplier)}x of 0 req/s is still 0 req/s.")
    if fit.capacity_known:
        recs.append(f"From the history, the fitted capacity is ≈ {_fmt(fit.capacity)} req/s over {fit.servers} "
                    "server(s).")
    recs.extend(_held_level_notes(run))
    return SimulationResult(
        scenario=sc.describe(), failure_probability=p_fail, will_likely_fail=p_fail >= 0.5,
        projected_metrics=projected, time_to_first_breach_s=None, breaking_point=breaking,
        recommendations=_with_note(run.model_fit, recs), recovery_time_s=None, model_fit=run.model_fit,
        breach_probability=breach_p, seed=run.seed, samples=d.size - 1,
    )


def _load_test(run: _Run) -> SimulationResult:
    """Ramp the multiplier on a fine geometric grid until the first limit breaks, per draw."""
    ctx, sc, fit, d = run.ctx, run.sc, run.fit, run.d
    mult = np.geomspace(0.05, sc.max_multiplier, MULTIPLIER_STEPS)
    lam = mult[None, :] * fit.rate_now
    lam_ref = np.full((d.size, 1), fit.rate_now)
    ref = _current(run, run.metrics, 1)
    proj = _steady(fit, d, np.broadcast_to(lam, (d.size, mult.size)), lam_ref, ref, Fault(), run.domains)
    limits = _limits(ctx, proj)
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
    bottleneck = _key(names[int(which[0])]) if names and math.isfinite(point) else None
    shares = {}
    if names:
        finite = np.isfinite(brk[1:])
        for i, m in enumerate(names):
            shares[_key(m)] = float(np.mean((which[1:] == i) & finite))
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
    sel = sel[_pick(sel.size)]
    projected: dict[str, Any] = {"traffic_multiplier": mult[sel],
                                 "request_rate": mult[sel] * fit.rate_now if fit.has_rate else None}
    for m, v in proj.items():
        plo, phi = _q(v[1:, sel])
        projected[m] = {"value": v[0, sel], "lower": plo, "upper": phi, "limit": limits.get(m),
                        "model": BY_CAPACITY}
    projected.update(_held_level(run, int(sel.size)))
    # per metric, like failure_probability: the chance that this limit breaks below the required multiple
    breach_p = {_key(m): float(np.mean(first[m][1:] < sc.required_multiplier)) for m in limits}
    recs = _load_test_recommendations(fit, point, lo, hi, bottleneck, sc, p_fail, bool(limits))
    recs = _with_note(run.model_fit, [*recs, *_held_level_notes(run)])
    return SimulationResult(
        scenario=sc.describe(), failure_probability=p_fail, will_likely_fail=p_fail >= 0.5,
        projected_metrics=projected, time_to_first_breach_s=None, breaking_point=breaking,
        recommendations=recs, recovery_time_s=None, model_fit=run.model_fit, breach_probability=breach_p,
        seed=run.seed, samples=d.size - 1,
    )


def _load_test_recommendations(fit: CapacityFit, point: float, lo: float, hi: float, bottleneck: str | None,
                               sc: Scenario, p_fail: float, has_limits: bool = True) -> list[str]:
    recs: list[str] = []
    need = f"the required {_fmt(sc.required_multiplier)}x current traffic{_rate_text(fit, sc.required_multiplier)}"
    if not has_limits:
        recs.append("No metric of this twin with a limit is modelled against traffic: the load test has nothing "
                    "that can break.")
    elif not math.isfinite(point):
        recs.append(f"No limit breaks up to {_fmt(sc.max_multiplier)}x current traffic"
                    f"{_rate_text(fit, sc.max_multiplier)}.")
    else:
        recs.append(f"Breaks at {_fmt(point)}x current traffic{_rate_text(fit, point)}, 90% interval "
                    f"{_interval_text(lo, hi, sc.max_multiplier)}; the bottleneck is {bottleneck}.")
    recs.append(f"Failure probability {_percent(p_fail)}: the chance that it breaks below {need}.")
    if math.isfinite(point):
        if point < 1.0:
            recs.append("A limit is already breached at the current load: act now.")
        elif point < sc.required_multiplier:
            recs.append(f"The breaking point is below {need}: add about {_fmt(sc.required_multiplier / point)}x "
                        f"the current capacity ({bottleneck} is the bottleneck) before traffic grows.")
        else:
            safe = 0.7 * point
            recs.append(f"Scale out before traffic reaches {_fmt(safe)}x{_rate_text(fit, safe)} "
                        "to keep 30% headroom below the breaking point.")
        if bottleneck in ("cpu", "latency", "mean_latency") and fit.has_rate:
            recs.append(f"Fitted capacity ≈ {_fmt(fit.capacity)} req/s over {fit.servers} server(s) "
                        f"(service time ≈ {_fmt(1000 * fit.servers / fit.capacity, ' ms')}).")
    if not fit.trustworthy:
        recs.append(f"The capacity model is not trustworthy ({fit.reason}): treat the interval as a guess "
                    "and drive more varied load before relying on it.")
    return recs


def _timeline(run: _Run) -> SimulationResult:
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
    ref = {m: _around(_baseline(ctx, m, offsets, fit.now[m]), d.z[m], run.domains[m]) for m in run.metrics}
    if fit.zero_traffic:
        lam_ref = np.zeros((s, t_n))             # observed zero: the scenario's multiple of it is zero too
    elif fit.has_rate:
        # the forecast's point traffic: the scenario fixes the traffic, and the traffic forecast's interval is
        # already part of the other metrics' intervals (see the module docstring)
        mu = _baseline(ctx, ctx.request_rate_metric, offsets, fit.rate_now)[0]
        lam_ref = np.tile(np.maximum(mu, 0.0), (s, 1))
    else:
        lam_ref = np.ones((s, t_n))
    lam = lam_ref * mult[None, :]
    # fluid backlog: requests above capacity queue until the timeout, beyond it they fail
    cap_fault, _ = _fault_capacity(fit, d, fault)
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
    proj = _steady(fit, d, lam, lam_ref, ref, Fault(), run.domains, backlog_s=wait, shed=shed)
    if in_fault.any():
        cols = np.flatnonzero(in_fault)
        during = _steady(fit, d, lam[:, cols], lam_ref[:, cols], {m: v[:, cols] for m, v in ref.items()},
                         fault, run.domains, backlog_s=wait[:, cols], shed=shed[:, cols])
        for m, v in during.items():
            proj[m][:, cols] = v
    for m in run.own:       # the twin's other metrics: their own forecast, which the scenario does not move
        proj[m] = _around(_baseline(ctx, m, offsets, fit.now[m]), d.z[m], run.domains[m])
    limits = _limits(ctx, proj)
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
    sel = _pick(t_n)
    projected: dict[str, Any] = {"offset_s": offsets[sel], "time": ctx.now + offsets[sel],
                                 "traffic_multiplier": mult[sel],
                                 "request_rate": lam[0, sel] if fit.has_rate else None,
                                 "peak": {}}
    for m, v in proj.items():
        how = BY_CAPACITY if m in ref else BY_FORECAST
        plo, phi = _q(v[1:, sel])
        projected[m] = {"value": v[0, sel], "lower": plo, "upper": phi, "limit": limits.get(m), "model": how}
        peaks = v.max(axis=1)
        pk_lo, pk_hi = _q(peaks[1:])
        projected["peak"][m] = {"value": float(peaks[0]), "lower": float(pk_lo), "upper": float(pk_hi),
                                "at_s": float(offsets[int(np.argmax(v[0]))]), "limit": limits.get(m), "model": how}
    breach_p = {_key(m): float(np.mean(np.isfinite(first_by[m][1:]))) for m in limits}
    load_any: np.ndarray = np.asarray(load_breach_t.any(axis=1))
    p_load = float(np.mean(load_any[1:]))
    recs = _with_note(run.model_fit, _timeline_recommendations(run, proj, limits, p_fail, p_load, lam, lam_ref, ref,
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


def _timeline_recommendations(run: _Run, proj: Mapping[str, F64], limits: Mapping[str, float], p_fail: float,
                              p_load: float, lam: F64, lam_ref: F64, ref: Mapping[str, F64],
                              recovery_s: float) -> list[str]:
    """Advice for a spike or a fault. Replicas are sized on the core metrics only (``ref``): the twin's other
    metrics follow their own forecast, which more replicas are not modelled to change."""
    ctx, sc, fit, d = run.ctx, run.sc, run.fit, run.d
    recs: list[str] = []
    worst = [m for m in limits if proj[m][0].max() > limits[m]]
    load_worst = [m for m in worst if m in ref]
    own_risk = [m for m in limits if m not in ref and (m in worst or bool((proj[m][1:] > limits[m]).any()))]
    peaks = ", ".join(f"{_label(m)} {_metric_value(m, float(proj[m][0].max()))} (limit "
                      f"{_metric_value(m, limits[m])})" for m in limits)
    what = (f"{_fmt(sc.multiplier)}x traffic" if sc.type == "traffic_spike"
            else f"losing {sc.replicas_lost} of {sc.replicas} replicas" if sc.replicas_lost
            else "the fault")
    if peaks:
        recs.append(f"At {what}: peak {peaks}; failure probability {_percent(p_fail)}.")
    cols = _pick(lam.shape[1])
    ref_t = {m: ref[m][:, cols] for m in ref}
    lam_t, lam_ref_t = lam[:, cols], lam_ref[:, cols]
    replicas = ctx.replicas or 1
    at_risk = bool(worst) or p_fail >= TARGET_P
    load_risk = bool(load_worst) or p_load >= TARGET_P
    if at_risk and not worst:
        recs.append(_uncertainty_text(proj, limits, p_fail))
    if fit.zero_traffic and worst:
        which, one = _names(worst)
        recs.append(f"{which[0].upper()}{which[1:]} {'is' if one else 'are'} over the limit with no "
                    "traffic at all: not load-driven, so more replicas will not help.")
    elif sc.type == "traffic_spike" and load_risk:
        need = _replicas_needed(fit, d, ctx, lam_t, lam_ref_t, ref_t, replicas, run.domains)
        share = "the load-driven failure probability" if own_risk else "the failure probability"
        goal = (f"keep {_keep_text(fit, load_worst, limits)}" if load_worst
                else f"bring {share} under {_percent(TARGET_P)}")
        if need is None:
            recs.append(_no_replicas_text(fit, d, limits, lam_t, lam_ref_t, ref_t, goal, what, run.domains))
        elif need > replicas:
            recs.append(f"Add {need - replicas} replica(s) ({replicas} → {need}) to {goal} at {what}"
                        f"{_rate_text(fit, sc.multiplier)}.")
    if sc.type == "failure_injection":
        survivors = sc.replicas - sc.replicas_lost
        cap_during = float(_fault_capacity(fit, d, Fault(share=sc.replicas / survivors,
                                                         added_latency_ms=sc.added_latency_ms))[0][0, 0])
        if fit.has_rate and not fit.zero_traffic:
            recs.append(f"Capacity during the fault ≈ {_fmt(cap_during)} req/s against "
                        f"{_fmt(sc.multiplier * fit.rate_now)} req/s of traffic.")
        if load_risk:
            if sc.replicas_lost and not fit.zero_traffic:
                need = _replicas_needed(fit, d, ctx, lam_t * sc.replicas / survivors, lam_ref_t, ref_t,
                                        sc.replicas, run.domains)
                if need is not None and need > sc.replicas:
                    recs.append(f"Run {need} replicas (+{need - sc.replicas}) so that losing "
                                f"{sc.replicas_lost} still keeps every metric under its limit.")
            if sc.added_latency_ms:
                recs.append("Bound the dependency with a timeout well under "
                            f"{_fmt(sc.added_latency_ms, ' ms')} or call it asynchronously: blocked workers "
                            "are what exhaust the pool.")
            if sc.error_burst and ERRORS in ref:
                recs.append(f"An error burst of {_fmt(100 * sc.error_burst, '%')} alone exceeds the error "
                            "budget; add retries with backoff or a circuit breaker.")
        if math.isfinite(recovery_s):
            recs.append(f"Recovery after the fault ends ≈ {_fmt(recovery_s, ' s')} (backlog drain).")
        else:
            recs.append("The service does not recover after the fault within the projection: its baseline "
                        "itself breaches a limit.")
    if not at_risk:
        recs.append("No action needed for this scenario.")
    if run.own:
        names, one = _names(run.own)
        its, it = ("its", "it") if one else ("their", "them")
        line = (f"{names}: projected as {its} own forecast (with {its} 90% interval), not by the capacity model; "
                f"the scenario's traffic does not move {it}")
        if own_risk:
            risky, one_risky = _names(own_risk)
            line += (f". The risk of {risky} going over {'its limit' if one_risky else 'their limits'} is there "
                     "whatever the traffic, and more replicas are not modelled to change it")
        recs.append(line + ".")
    if not fit.trustworthy and not fit.zero_traffic:     # at zero traffic the capacity model is not used
        recs.append(f"The capacity model is not trustworthy ({fit.reason}); bounds were widened.")
    return recs


def _keep_text(fit: CapacityFit, metrics: list[str], limits: Mapping[str, float]) -> str:
    """"p99 latency under 120 ms and memory under 90.0%"."""
    return " and ".join(f"{_quantile_name(fit) + ' latency' if m == LATENCY else _label(m)} under "
                        f"{_metric_value(m, limits[m])}" for m in metrics)


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
        bound = f" (its peak's 90% interval reaches {_metric_value(m, high)})" if high > limits[m] else ""
        parts.append(f"{_label(m)} goes over {_metric_value(m, limits[m])} in {_percent(share[m])} of the "
                     f"draws{bound}")
    return (f"Every projected peak is under its limit; the {_percent(p_fail)} failure probability comes from "
            f"the uncertainty around them: {'; '.join(parts)}.")


def _no_replicas_text(fit: CapacityFit, d: Draws, limits: Mapping[str, float], lam: F64, lam_ref: F64,
                      ref: Mapping[str, F64], goal: str, what: str, domains: Mapping[str, tuple[float, float]]
                      ) -> str:
    """Why no number of replicas reaches the goal: the metrics that still breach with 64x the capacity.

    Those breaches do not come from the traffic (a forecast that reaches the limit by itself, or its interval),
    so they are named with how often they remain; only when none remains is more than 64x capacity the answer.
    """
    left = _breaches(fit, d, limits, lam, lam_ref, ref, 1.0 / MAX_SCALE, domains)
    stays = sorted((m for m in left if left[m][0] or left[m][1:].mean() > 0), key=lambda m: -left[m][1:].mean())
    if not stays:
        return f"Adding replicas does not {goal} at {what}: it needs more than {MAX_SCALE}x the current capacity."
    parts = " and ".join(f"{_label(m)} (in {_percent(float(left[m][1:].mean()))} of the draws)" for m in stays)
    one = len(stays) == 1
    return (f"Adding replicas does not {goal} at {what}: {parts} still {'goes' if one else 'go'} over "
            f"{'its limit' if one else 'their limits'} with {MAX_SCALE}x the capacity, so that risk is not "
            f"load-driven: {'its' if one else 'their'} own forecast or its interval reaches the limit.")
