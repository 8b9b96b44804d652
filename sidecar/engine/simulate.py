"""What-if simulation: traffic spikes, failures and load tests on a twin's fitted capacity model.

The projection of every scenario is the twin's own forecast (what happens if nothing
changes) plus the *difference* the fitted capacity model (`capacity.py`) predicts
between the scenario's traffic and the forecast traffic.  At multiplier 1 and no fault
a simulation therefore reproduces the forecast exactly, and everything the scenario adds
comes from the queueing model.  Overload is followed in time with a fluid backlog
(arrivals above capacity queue up to a request timeout, beyond that they fail), which
gives the time to the first breach and the recovery time once a fault ends.

Uncertainty is Monte Carlo: the fit's parameter uncertainty (least-squares covariance of
the CPU law, profile interval and spread of the binding latency route), the service-time
variability (its fitted interval, or M/D/c … 1.5× M/M/c when the data does not tell), a
structural factor on the capacity (6%, 25% when the fit is not trustworthy) and the
forecast intervals.  Draw 0 is the point estimate; the others are seeded, so the same
scenario with the same seed gives the same answer.
``failure_probability`` is the share of draws in which any limit is breached during the
scenario; for a load test, the share in which the breaking point lies below the headroom the
service must have (``required_multiplier``, default 2× current traffic). "Breaks somewhere below
the highest multiplier tested" is true of every real service and says nothing about risk.

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
    MEMORY,
    TRAFFIC_NO_DATA,
    TRAFFIC_NO_QUERY,
    TRAFFIC_ZERO,
    CapacityFit,
    fit_capacity,
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
METRICS = (CPU, MEMORY, LATENCY, ERRORS)
BOTTLENECK = {CPU: "cpu", LATENCY: "latency", ERRORS: "errors", MEMORY: "memory"}
LABEL = {CPU: "CPU", MEMORY: "memory", LATENCY: "latency", ERRORS: "error rate"}
BOUNDS = {CPU: (0.0, 100.0), MEMORY: (0.0, 100.0), LATENCY: (0.0, math.inf), ERRORS: (0.0, 1.0)}

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


@dataclass(slots=True)
class SimulationResult:
    """A scenario's answer; `to_dict` is JSON-ready (no NaN or inf: None)."""

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

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = _clean(asdict(self))
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
    z: Mapping[str, F64]          # standard normal per metric: position inside its forecast interval

    @property
    def size(self) -> int:
        return int(self.capacity.shape[0])


def draw(fit: CapacityFit, metrics: tuple[str, ...], rng: np.random.Generator, n: int = DRAWS) -> Draws:
    """Sample the fit's uncertainty around the binding capacity route.

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
    return Draws(cap[:, None], b[:, None], variability[:, None], err_slope[:, None], mem_slope[:, None], z)


# ---------------------------------------------------------------------------------------------- baseline


#: Normal quantile of a two-sided 90% interval: forecast bounds -> standard deviation.
Z90 = 1.6448536269514722


def _baseline(ctx: SimulationContext, metric: str, offsets: F64, now_value: float) -> tuple[F64, F64]:
    """Forecast mean and sd at the offsets (seconds from now); the current level where not warm."""
    h = np.asarray(ctx.horizons_s, dtype=np.float64)
    mean = np.asarray(ctx.forecast_mean.get(metric, np.empty(0)), dtype=np.float64)
    lo = np.asarray(ctx.forecast_lower.get(metric, np.empty(0)), dtype=np.float64)
    hi = np.asarray(ctx.forecast_upper.get(metric, np.empty(0)), dtype=np.float64)
    if h.size == 0 or mean.shape != h.shape or not np.all(np.isfinite(mean)):
        return np.full(offsets.shape, now_value), np.zeros(offsets.shape)
    order = np.argsort(h)
    h, mean = h[order], mean[order]
    if lo.shape == h.shape and hi.shape == h.shape and np.all(np.isfinite(lo[order])) \
            and np.all(np.isfinite(hi[order])):
        sd = np.maximum(hi[order] - lo[order], 0.0) / (2 * Z90)
    else:
        sd = np.zeros_like(h)
    xs = np.concatenate([[0.0], h])
    mu = np.interp(offsets, xs, np.concatenate([[now_value], mean]))
    sdv = np.interp(offsets, xs, np.concatenate([[0.0], sd]))
    return mu, sdv


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
            backlog_s: F64 | None = None, shed: F64 | None = None) -> dict[str, F64]:
    """Metrics at arrival rate ``lam`` as the reference values plus the model's difference."""
    cap, servers = _fault_capacity(fit, d, fault)
    lam_eff = lam * fault.share
    out: dict[str, F64] = {}
    if CPU in ref:
        out[CPU] = np.clip(ref[CPU] + d.cpu_slope * (lam_eff - lam_ref), *BOUNDS[CPU])
    if LATENCY in ref:
        lam_q = np.minimum(lam, RHO_CAP * cap)
        w = wait_quantile_s(lam_q, cap, servers, fit.quantile, d.variability)
        w_ref = wait_quantile_s(np.minimum(lam_ref, RHO_CAP * d.capacity), d.capacity, float(fit.servers),
                                fit.quantile, d.variability)
        lat = ref[LATENCY] + 1000.0 * (w - w_ref) + fault.added_latency_ms
        lat = np.where(lam < cap, lat, np.inf) if backlog_s is None else lat + 1000.0 * backlog_s
        out[LATENCY] = np.maximum(lat, 0.0)
    if ERRORS in ref or fault.error_burst > 0 or shed is not None:
        base = ref.get(ERRORS, np.zeros_like(lam))
        over = np.maximum(0.0, 1.0 - cap / np.maximum(lam, 1e-300)) if shed is None else shed
        err = base + d.error_slope * (lam_eff - lam_ref) + fault.error_burst + over
        out[ERRORS] = np.clip(err, *BOUNDS[ERRORS])
    if MEMORY in ref:
        out[MEMORY] = np.clip(ref[MEMORY] + d.memory_slope * (lam_eff - lam_ref), *BOUNDS[MEMORY])
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
    if metric == LATENCY:
        return _fmt(x, " ms")
    if metric == ERRORS:
        return _fmt(100.0 * x, "%")
    return _fmt(x, "%")


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
              ref: Mapping[str, F64], share: float) -> dict[str, np.ndarray]:
    """Per metric, which draws breach its limit at some time when each replica carries ``share`` of its load.

    Only the metrics the projection has: without shedding (no backlog here) an error rate with no series of its
    own is not projected, and nothing breaches it.
    """
    proj = _steady(fit, d, lam, lam_ref, ref, Fault(share=share))
    return {m: np.asarray((proj[m] > lim).any(axis=1)) for m, lim in limits.items() if m in proj}


def _replicas_needed(fit: CapacityFit, d: Draws, ctx: SimulationContext, lam: F64, lam_ref: F64,
                     ref: Mapping[str, F64], replicas: int, target: float = TARGET_P) -> int | None:
    """Fewest replicas (same workers each) keeping P(breach) ≤ target at the given loads; None if none helps.

    ``lam``, ``lam_ref`` and ``ref`` are (draws × times) over the scenario, so a limit that is breached by the
    forecast itself (memory growing on its own) correctly shows that more replicas do not help.
    """
    limits = _limits(ctx, ref)
    if not limits:
        return None
    for r in range(replicas, replicas * MAX_SCALE + 1):
        breach = np.zeros(d.size, dtype=bool)
        for hit in _breaches(fit, d, limits, lam, lam_ref, ref, replicas / r).values():
            breach |= hit
        if breach[1:].mean() <= target and not breach[0]:
            return r
    return None


# ---------------------------------------------------------------------------------------------- run


def run_scenario(ctx: SimulationContext, scenario: Mapping[str, Any], *, seed: int = 0) -> SimulationResult:
    """Run one what-if scenario on the twin described by ``ctx`` (pure; seeded Monte Carlo)."""
    sc = parse_scenario(scenario, replicas=ctx.replicas)
    fit = fit_capacity(ctx.times, ctx.values, replicas=ctx.replicas, workers=ctx.workers,
                       rate_metric=ctx.request_rate_metric, quantile=ctx.latency_quantile)
    metrics = tuple(m for m in METRICS if m in fit.now)
    rng = np.random.default_rng(seed)
    d = draw(fit, (*metrics, ctx.request_rate_metric), rng)
    model_fit = {"trustworthy": fit.trustworthy, "reason": fit.reason, "traffic": fit.traffic,
                 "traffic_note": _traffic_note(fit, ctx), "params": fit.params(),
                 "model": "M/M/c (Erlang C) with utilisation law, fitted from observed history"}
    if sc.type == "load_test":
        if fit.zero_traffic:
            return _load_test_without_traffic(ctx, sc, fit, d, metrics, model_fit, seed)
        return _load_test(ctx, sc, fit, d, metrics, model_fit, seed)
    return _timeline(ctx, sc, fit, d, metrics, model_fit, seed)


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


def _load_test_without_traffic(ctx: SimulationContext, sc: Scenario, fit: CapacityFit, d: Draws,
                               metrics: tuple[str, ...], model_fit: dict[str, Any], seed: int) -> SimulationResult:
    """A load test at zero traffic: every multiple of it is zero, so only the current state can break a limit."""
    lam = np.zeros((d.size, 1))
    ref = {m: np.full((d.size, 1), fit.now[m]) for m in metrics}
    proj = _steady(fit, d, lam, lam, ref, Fault())
    limits = _limits(ctx, proj)
    over = {m: proj[m][:, 0] > lim for m, lim in limits.items()}
    broken = np.zeros(d.size, dtype=bool)
    for hit in over.values():
        broken |= hit
    p_fail = float(np.mean(broken[1:]))
    first = next((m for m in limits if over[m][0]), None)
    bottleneck = BOTTLENECK[first] if first is not None else None
    breach_p = {BOTTLENECK[m]: float(np.mean(hit[1:])) for m, hit in over.items()}
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
                        "limit": limits.get(m)}
    recs: list[str] = []
    if bottleneck is not None:
        assert first is not None
        recs.append(f"{LABEL[first][0].upper()}{LABEL[first][1:]} is already over its limit with no traffic "
                    f"({_metric_value(first, float(proj[first][0, 0]))} against {_metric_value(first, limits[first])})"
                    ": act now; it is not load-driven, so more replicas will not help.")
    else:
        recs.append(f"No limit breaks up to {_fmt(sc.max_multiplier)}x current traffic: "
                    f"{_fmt(sc.max_multiplier)}x of 0 req/s is still 0 req/s.")
    if fit.capacity_known:
        recs.append(f"From the history, the fitted capacity is ≈ {_fmt(fit.capacity)} req/s over {fit.servers} "
                    "server(s).")
    return SimulationResult(
        scenario=sc.describe(), failure_probability=p_fail, will_likely_fail=p_fail >= 0.5,
        projected_metrics=projected, time_to_first_breach_s=None, breaking_point=breaking,
        recommendations=_with_note(model_fit, recs), recovery_time_s=None, model_fit=model_fit,
        breach_probability=breach_p, seed=seed, samples=d.size - 1,
    )


def _load_test(ctx: SimulationContext, sc: Scenario, fit: CapacityFit, d: Draws, metrics: tuple[str, ...],
               model_fit: dict[str, Any], seed: int) -> SimulationResult:
    """Ramp the multiplier on a fine geometric grid until the first limit breaks, per draw."""
    mult = np.geomspace(0.05, sc.max_multiplier, MULTIPLIER_STEPS)
    lam = mult[None, :] * fit.rate_now
    lam_ref = np.full((d.size, 1), fit.rate_now)
    ref = {m: np.full((d.size, 1), fit.now[m]) for m in metrics}
    proj = _steady(fit, d, np.broadcast_to(lam, (d.size, mult.size)), lam_ref, ref, Fault())
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
    bottleneck = BOTTLENECK[names[int(which[0])]] if names and math.isfinite(point) else None
    shares = {}
    if names:
        finite = np.isfinite(brk[1:])
        for i, m in enumerate(names):
            shares[BOTTLENECK[m]] = float(np.mean((which[1:] == i) & finite))
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
        projected[m] = {"value": v[0, sel], "lower": plo, "upper": phi, "limit": limits.get(m)}
    # per metric, like failure_probability: the chance that this limit breaks below the required multiple
    breach_p = {BOTTLENECK[m]: float(np.mean(first[m][1:] < sc.required_multiplier)) for m in limits}
    recs = _with_note(model_fit, _load_test_recommendations(fit, point, lo, hi, bottleneck, sc, p_fail))
    return SimulationResult(
        scenario=sc.describe(), failure_probability=p_fail, will_likely_fail=p_fail >= 0.5,
        projected_metrics=projected, time_to_first_breach_s=None, breaking_point=breaking,
        recommendations=recs, recovery_time_s=None, model_fit=model_fit, breach_probability=breach_p,
        seed=seed, samples=d.size - 1,
    )


def _load_test_recommendations(fit: CapacityFit, point: float, lo: float, hi: float, bottleneck: str | None,
                               sc: Scenario, p_fail: float) -> list[str]:
    recs: list[str] = []
    need = f"the required {_fmt(sc.required_multiplier)}x current traffic{_rate_text(fit, sc.required_multiplier)}"
    if not math.isfinite(point):
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
        if bottleneck in ("cpu", "latency") and fit.has_rate:
            recs.append(f"Fitted capacity ≈ {_fmt(fit.capacity)} req/s over {fit.servers} server(s) "
                        f"(service time ≈ {_fmt(1000 * fit.servers / fit.capacity, ' ms')}).")
    if not fit.trustworthy:
        recs.append(f"The capacity model is not trustworthy ({fit.reason}): treat the interval as a guess "
                    "and drive more varied load before relying on it.")
    return recs


def _timeline(ctx: SimulationContext, sc: Scenario, fit: CapacityFit, d: Draws, metrics: tuple[str, ...],
              model_fit: dict[str, Any], seed: int) -> SimulationResult:
    """Traffic spike or failure injection over time, with a fluid backlog for overload."""
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
    ref: dict[str, F64] = {}
    for m in metrics:
        mu, sd = _baseline(ctx, m, offsets, fit.now[m])
        ref[m] = np.clip(mu[None, :] + d.z[m] * sd[None, :], *BOUNDS[m])
    if fit.zero_traffic:
        lam_ref = np.zeros((s, t_n))             # observed zero: the scenario's multiple of it is zero too
    elif fit.has_rate:
        mu, sd = _baseline(ctx, ctx.request_rate_metric, offsets, fit.rate_now)
        lam_ref = np.maximum(mu[None, :] + d.z[ctx.request_rate_metric] * sd[None, :], 0.0)
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
    proj = _steady(fit, d, lam, lam_ref, ref, Fault(), backlog_s=wait, shed=shed)
    if in_fault.any():
        cols = np.flatnonzero(in_fault)
        during = _steady(fit, d, lam[:, cols], lam_ref[:, cols], {m: v[:, cols] for m, v in ref.items()},
                         fault, backlog_s=wait[:, cols], shed=shed[:, cols])
        for m, v in during.items():
            proj[m][:, cols] = v
    limits = _limits(ctx, proj)
    breach_t = np.zeros((s, t_n), dtype=bool)
    first_by: dict[str, F64] = {}
    for m, lim in limits.items():
        hit: np.ndarray = np.asarray(proj[m] > lim)
        breach_t |= hit
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
    tail_breach = breach_t[:, offsets > active + dt].any(axis=1) if np.any(offsets > active + dt) else \
        np.zeros(s, dtype=bool)
    settled = breach_t[:, -1]
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
        plo, phi = _q(v[1:, sel])
        projected[m] = {"value": v[0, sel], "lower": plo, "upper": phi, "limit": limits.get(m)}
        peaks = v.max(axis=1)
        pk_lo, pk_hi = _q(peaks[1:])
        projected["peak"][m] = {"value": float(peaks[0]), "lower": float(pk_lo), "upper": float(pk_hi),
                                "at_s": float(offsets[int(np.argmax(v[0]))]), "limit": limits.get(m)}
    breach_p = {BOTTLENECK[m]: float(np.mean(np.isfinite(first_by[m][1:]))) for m in limits}
    recs = _with_note(model_fit, _timeline_recommendations(ctx, sc, fit, d, proj, limits, p_fail, lam, lam_ref,
                                                           ref, rec_point))
    return SimulationResult(
        scenario=sc.describe(), failure_probability=p_fail, will_likely_fail=p_fail >= 0.5,
        projected_metrics=projected, time_to_first_breach_s=ttfb if math.isfinite(ttfb) else None,
        breaking_point=None, recommendations=recs,
        recovery_time_s=rec_point if math.isfinite(rec_point) else None, model_fit=model_fit,
        breach_probability=breach_p,
        recovery_time_interval_s=[rec_lo, rec_hi if math.isfinite(rec_hi) else None], seed=seed,
        samples=s - 1,
    )


def _timeline_recommendations(ctx: SimulationContext, sc: Scenario, fit: CapacityFit, d: Draws,
                              proj: Mapping[str, F64], limits: Mapping[str, float], p_fail: float,
                              lam: F64, lam_ref: F64, ref: Mapping[str, F64], recovery_s: float) -> list[str]:
    recs: list[str] = []
    worst = [m for m in limits if proj[m][0].max() > limits[m]]
    peaks = ", ".join(f"{LABEL[m]} {_metric_value(m, float(proj[m][0].max()))} (limit "
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
    if at_risk and not worst:
        recs.append(_uncertainty_text(proj, limits, p_fail))
    if fit.zero_traffic and worst:
        which = " and ".join(LABEL[m] for m in worst)
        recs.append(f"{which[0].upper()}{which[1:]} {'is' if len(worst) == 1 else 'are'} over the limit with no "
                    "traffic at all: not load-driven, so more replicas will not help.")
    elif sc.type == "traffic_spike" and at_risk:
        need = _replicas_needed(fit, d, ctx, lam_t, lam_ref_t, ref_t, replicas)
        goal = (f"keep {_keep_text(fit, worst, limits)}" if worst
                else f"bring the failure probability under {_percent(TARGET_P)}")
        if need is None:
            recs.append(_no_replicas_text(fit, d, limits, lam_t, lam_ref_t, ref_t, goal, what))
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
        if at_risk:
            if sc.replicas_lost and not fit.zero_traffic:
                need = _replicas_needed(fit, d, ctx, lam_t * sc.replicas / survivors, lam_ref_t, ref_t,
                                        sc.replicas)
                if need is not None and need > sc.replicas:
                    recs.append(f"Run {need} replicas (+{need - sc.replicas}) so that losing "
                                f"{sc.replicas_lost} still keeps every metric under its limit.")
            if sc.added_latency_ms:
                recs.append("Bound the dependency with a timeout well under "
                            f"{_fmt(sc.added_latency_ms, ' ms')} or call it asynchronously: blocked workers "
                            "are what exhaust the pool.")
            if sc.error_burst:
                recs.append(f"An error burst of {_fmt(100 * sc.error_burst, '%')} alone exceeds the error "
                            "budget; add retries with backoff or a circuit breaker.")
        if math.isfinite(recovery_s):
            recs.append(f"Recovery after the fault ends ≈ {_fmt(recovery_s, ' s')} (backlog drain).")
        else:
            recs.append("The service does not recover after the fault within the projection: its baseline "
                        "itself breaches a limit.")
    if not at_risk:
        recs.append("No action needed for this scenario.")
    if not fit.trustworthy and not fit.zero_traffic:     # at zero traffic the capacity model is not used
        recs.append(f"The capacity model is not trustworthy ({fit.reason}); bounds were widened.")
    return recs


def _keep_text(fit: CapacityFit, metrics: list[str], limits: Mapping[str, float]) -> str:
    """"p99 latency under 120 ms and memory under 90.0%"."""
    return " and ".join(f"{_quantile_name(fit) + ' latency' if m == LATENCY else LABEL[m]} under "
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
        parts.append(f"{LABEL[m]} goes over {_metric_value(m, limits[m])} in {_percent(share[m])} of the "
                     f"draws{bound}")
    return (f"Every projected peak is under its limit; the {_percent(p_fail)} failure probability comes from "
            f"the uncertainty around them: {'; '.join(parts)}.")


def _no_replicas_text(fit: CapacityFit, d: Draws, limits: Mapping[str, float], lam: F64, lam_ref: F64,
                      ref: Mapping[str, F64], goal: str, what: str) -> str:
    """Why no number of replicas reaches the goal: the metrics that still breach with 64x the capacity.

    Those breaches do not come from the traffic (a forecast that reaches the limit by itself, or its interval),
    so they are named with how often they remain; only when none remains is more than 64x capacity the answer.
    """
    left = _breaches(fit, d, limits, lam, lam_ref, ref, 1.0 / MAX_SCALE)
    stays = sorted((m for m in left if left[m][0] or left[m][1:].mean() > 0), key=lambda m: -left[m][1:].mean())
    if not stays:
        return f"Adding replicas does not {goal} at {what}: it needs more than {MAX_SCALE}x the current capacity."
    parts = " and ".join(f"{LABEL[m]} (in {_percent(float(left[m][1:].mean()))} of the draws)" for m in stays)
    one = len(stays) == 1
    return (f"Adding replicas does not {goal} at {what}: {parts} still {'goes' if one else 'go'} over "
            f"{'its limit' if one else 'their limits'} with {MAX_SCALE}x the capacity, so that risk is not "
            f"load-driven: {'its' if one else 'their'} own forecast or its interval reaches the limit.")
