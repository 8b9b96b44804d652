"""Issue 14: a what-if projects only the metrics the twin has, inside their domains, and its failure probability
is honest: small for load the service already carried, high far beyond capacity, flagged when the fit is a guess."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest
from helpers.simulation import make_ctx

from sidecar.engine.core import Engine
from sidecar.engine.settings import EngineSettings
from sidecar.engine.whatif import MIN_SAMPLES, SimulationContext, run_scenario, wait_quantile_s

T0 = 1.7e9
HORIZONS = np.array([300.0, 900.0, 1800.0, 3600.0])


def _json(result: Any) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(result if isinstance(result, dict) else result.to_dict(),
                                                allow_nan=False))
    return out


# ------------------------------------------------------------------------------------------ only the twin's metrics


def host_engine(cpu: float = 25.0, n: int = 240, limits: dict[str, float] | None = None) -> tuple[Engine, float]:
    """An Engine twin that reports CPU, memory and a custom ``load1``: no request rate, latency or error rate."""
    rng = np.random.default_rng(0)
    eng = Engine(EngineSettings())
    eng.create_twin("host", at=T0, initial_state={"replicas": 1}, limits=limits)
    t = T0
    for i in range(n):
        t = T0 + 15.0 * i
        eng.sync("host", {"cpu_usage": cpu + 3 * np.sin(i / 20) + rng.normal(0, 0.5),
                          "memory_usage": 40 + rng.normal(0, 0.3),
                          "load1": 2.0 + 0.5 * np.sin(i / 20) + rng.normal(0, 0.05)}, at=t)
    return eng, t


def test_a_spike_on_a_twin_without_error_rate_or_latency_projects_neither() -> None:
    """The user trial: CPU, memory and load1 only; a 3x spike reported "error rate 44.9 % (limit 5.00 %)",
    breach_probability.errors 0.657 and "Add 3 replica(s)", and did not project load1 at all."""
    eng, now = host_engine()
    r = _json(eng.simulate("host", {"type": "traffic_spike", "traffic_multiplier": 3}, at=now))
    pm = r["projected_metrics"]
    assert "error_rate" not in pm and "request_latency_ms" not in pm
    assert "error_rate" not in pm["peak"] and "request_latency_ms" not in pm["peak"]
    assert set(r["breach_probability"]) <= {"cpu", "memory", "load1"}
    assert "errors" not in r["breach_probability"] and "latency" not in r["breach_probability"]
    text = " ".join(r["recommendations"])
    assert "error rate" not in text and "latency" not in text
    # load1 is projected from its own forecast, and the result says so
    assert pm["load1"]["model"] == "forecast" and pm["peak"]["load1"]["model"] == "forecast"
    assert pm["cpu_usage"]["model"] == "capacity"
    assert len(pm["load1"]["value"]) == len(pm["offset_s"])
    assert any("load1" in x and "own forecast" in x for x in r["recommendations"])
    # what risk there is comes from CPU alone (the first model's wide CPU law), and the result flags it as a guess
    assert r["failure_probability"] == r["breach_probability"]["cpu"]
    assert r["caveat"].startswith("Not trustworthy") and "no request_rate" in r["caveat"]


def test_replicas_are_recommended_only_for_a_metric_the_twin_has() -> None:
    eng, now = host_engine(cpu=55.0)
    r = _json(eng.simulate("host", {"type": "traffic_spike", "traffic_multiplier": 3}, at=now))
    add = next(x for x in r["recommendations"] if x.startswith("Add "))
    assert "CPU" in add and "error rate" not in add and "latency" not in add
    assert set(r["breach_probability"]) <= {"cpu", "memory", "load1"}


def test_a_custom_metric_with_a_limit_counts_through_its_forecast_but_never_drives_replicas() -> None:
    eng, now = host_engine(limits={"load1": 2.2})
    r = _json(eng.simulate("host", {"type": "traffic_spike", "traffic_multiplier": 3}, at=now))
    assert r["projected_metrics"]["load1"]["limit"] == 2.2
    assert r["breach_probability"]["load1"] > 0.0
    assert r["failure_probability"] >= r["breach_probability"]["load1"]
    assert not any(x.startswith("Add ") and "load1" in x for x in r["recommendations"])
    assert any("load1" in x and "replicas are not modelled to change it" in x for x in r["recommendations"])


def test_a_custom_metric_alone_at_risk_gets_no_replicas() -> None:
    """A trustworthy CPU-bound service at a tenth of its capacity; only queue_depth's forecast reaches its limit."""
    rng = np.random.default_rng(3)
    ctx = _with_metric(make_ctx(), "queue_depth", 40 + rng.normal(0, 3, 240), limit=60.0)
    ctx = _with_forecast(ctx, queue_depth=(45.0, 30.0, 70.0))
    r = _json(run_scenario(ctx, {"type": "traffic_spike", "traffic_multiplier": 2}))
    assert r["breach_probability"]["queue_depth"] > 0.1
    assert r["breach_probability"]["cpu"] == 0.0 and r["breach_probability"]["latency"] == 0.0
    assert r["failure_probability"] == r["breach_probability"]["queue_depth"]
    assert not any(x.startswith(("Add ", "Adding replicas")) for x in r["recommendations"])
    assert any(x.startswith("queue_depth: projected as its own forecast") and "whatever the traffic" in x
               for x in r["recommendations"])


def test_added_latency_on_a_twin_without_latency_is_named_not_invented() -> None:
    eng, now = host_engine()
    r = _json(eng.simulate("host", {"type": "failure_injection", "added_latency_ms": 200, "error_rate": 0.2},
                           at=now))
    assert "request_latency_ms" not in r["projected_metrics"] and "error_rate" not in r["projected_metrics"]
    missing = r["missing_metrics"]
    assert set(missing) == {"request_latency_ms", "error_rate"}
    assert "200 ms" in missing["request_latency_ms"] and "20%" in missing["error_rate"]
    assert r["failure_probability"] == 0.0
    assert any("no request_latency_ms" in x for x in r["recommendations"])
    assert not any("error burst" in x.lower() for x in r["recommendations"])


def test_a_twin_with_every_metric_the_scenario_needs_has_nothing_missing() -> None:
    r = _json(run_scenario(make_ctx(), {"type": "failure_injection", "added_latency_ms": 20, "error_rate": 0.01}))
    assert r["missing_metrics"] == {}


def test_a_load_test_does_not_break_on_a_custom_metric() -> None:
    eng, now = host_engine(limits={"load1": 1.0})             # load1 (~2) already over its limit
    r = _json(eng.simulate("host", {"type": "load_test"}, at=now))
    assert r["breaking_point"]["bottleneck"] in (None, "cpu")
    assert "load1" not in r["breach_probability"]
    assert r["projected_metrics"]["load1"]["model"] == "forecast"
    assert any("load1" in x and "not modelled against traffic" in x for x in r["recommendations"])


def test_engine_simulate_gives_no_limit_to_a_metric_the_twin_lacks() -> None:
    eng, now = host_engine()
    r = _json(eng.simulate("host", {"type": "traffic_spike", "traffic_multiplier": 1.5}, at=now))
    assert set(r["breach_probability"]) == {"cpu", "memory"}                 # load1 has no limit of its own
    assert {m: p["limit"] for m, p in r["projected_metrics"]["peak"].items()} == {
        "cpu_usage": 95.0, "memory_usage": 90.0, "load1": None}
    lt = _json(eng.simulate("host", {"type": "load_test"}, at=now))
    assert set(lt["projected_metrics"]) - {"traffic_multiplier", "request_rate"} == {
        "cpu_usage", "memory_usage", "load1"}


# ------------------------------------------------------------------------------------------ domains


def _with_forecast(ctx: SimulationContext, **fc: tuple[float, float, float]) -> SimulationContext:
    mean, lower, upper = dict(ctx.forecast_mean), dict(ctx.forecast_lower), dict(ctx.forecast_upper)
    for m, (mu, lo, hi) in fc.items():
        mean[m], lower[m], upper[m] = np.full(4, mu), np.full(4, lo), np.full(4, hi)
    return SimulationContext(ctx.twin_id, ctx.now, ctx.limits, ctx.times, ctx.values, ctx.horizons_s, mean, lower,
                             upper, replicas=ctx.replicas, workers=ctx.workers, domains=ctx.domains)


def _with_metric(ctx: SimulationContext, name: str, values: np.ndarray, limit: float | None = None,
                 domain: tuple[float, float] | None = None) -> SimulationContext:
    times = {**ctx.times, name: ctx.times["cpu_usage"]}
    limits = {**ctx.limits, **({name: limit} if limit is not None else {})}
    domains = {**ctx.domains, **({name: domain} if domain is not None else {})}
    nan = np.full(4, np.nan)
    return SimulationContext(ctx.twin_id, ctx.now, limits, times, {**ctx.values, name: values}, ctx.horizons_s,
                             {**ctx.forecast_mean, name: nan}, {**ctx.forecast_lower, name: nan},
                             {**ctx.forecast_upper, name: nan}, replicas=ctx.replicas, workers=ctx.workers,
                             domains=domains)


def test_every_projection_stays_inside_the_core_domains() -> None:
    """Forecast intervals that leave the domain (CPU to 130 %, an error rate below 0) are cut at its edges: a limit
    at the edge of the domain is then never breached, so no single draw lies beyond it."""
    ctx = make_ctx()
    ctx = SimulationContext(ctx.twin_id, ctx.now, {**ctx.limits, "cpu_usage": 100.0, "error_rate": 1.0}, ctx.times,
                            ctx.values, ctx.horizons_s, ctx.forecast_mean, ctx.forecast_lower, ctx.forecast_upper,
                            replicas=ctx.replicas, workers=ctx.workers)
    ctx = _with_forecast(ctx, cpu_usage=(90.0, 40.0, 130.0), error_rate=(0.01, -0.5, 0.4),
                         request_latency_ms=(15.0, -40.0, 60.0), memory_usage=(60.0, -10.0, 140.0))
    for scenario in ({"type": "traffic_spike", "traffic_multiplier": 30},
                     {"type": "failure_injection", "replicas": 2, "replicas_lost": 1, "error_rate": 0.9},
                     {"type": "load_test"}):
        r = _json(run_scenario(ctx, scenario))
        assert r["breach_probability"]["cpu"] == 0.0 and r["breach_probability"]["errors"] == 0.0
        pm = r["projected_metrics"]
        for m, (lo, hi) in {"cpu_usage": (0, 100), "memory_usage": (0, 100), "error_rate": (0, 1),
                            "request_latency_ms": (0, np.inf)}.items():
            for key in ("value", "lower", "upper"):
                xs = np.array([np.inf if x is None else x for x in pm[m][key]], dtype=float)
                assert np.all((xs >= lo) & (xs <= hi)), (scenario["type"], m, key)


def test_a_custom_metric_keeps_to_its_domain_and_to_zero_when_never_negative() -> None:
    ctx = make_ctx()
    rng = np.random.default_rng(2)
    ctx = _with_metric(ctx, "queue_depth", 3.0 + np.abs(rng.normal(0, 1, 240)), limit=10.0, domain=(0.0, 10.0))
    ctx = _with_metric(ctx, "free_slots", 2.0 + np.abs(rng.normal(0, 1, 240)))
    ctx = _with_metric(ctx, "temperature_c", rng.normal(-1.0, 2.0, 240))
    ctx = _with_forecast(ctx, queue_depth=(6.0, 0.0, 40.0), free_slots=(1.0, -30.0, 5.0),
                         temperature_c=(-1.0, -30.0, 28.0))
    r = _json(run_scenario(ctx, {"type": "traffic_spike", "traffic_multiplier": 2}))
    pm = r["projected_metrics"]
    assert r["breach_probability"]["queue_depth"] == 0.0          # capped at 10: never above its limit
    assert max(pm["queue_depth"]["upper"]) == pytest.approx(10.0)
    assert min(pm["free_slots"]["lower"]) == 0.0                  # never negative in its history: floored at 0
    assert min(pm["temperature_c"]["lower"]) < -20.0               # it has been negative: unbounded below
    for m in ("queue_depth", "free_slots", "temperature_c"):
        assert pm[m]["model"] == "forecast"
    # the forecast interval's ends are the projection's 90% interval where the domain does not cut them
    after = np.asarray(pm["offset_s"]) >= 300.0
    np.testing.assert_allclose(np.asarray(pm["temperature_c"]["upper"])[after], 28.0, rtol=0.08)


# ------------------------------------------------------------------------------------------ the reported case


def reported_service(n: int = 400, seed: int = 0) -> SimulationContext:
    """The user's service: capacity ≈ 360 req/s (8 servers, M/M/c), its request rate ramping up to 164 req/s,
    95 now; a trustworthy fit, and a request-rate forecast whose 90 % interval widens to 0–800 req/s."""
    rng = np.random.default_rng(seed)
    i = np.arange(n)
    lam = np.clip(20 + 144 * np.minimum(i / (0.8 * n), 1) + rng.normal(0, 15, n), 1.0, 164.0)
    lam[-5:] = 95.0
    t = T0 + 15.0 * i
    cap, servers = 360.0, 8
    latency = 1000 * (servers / cap + wait_quantile_s(lam, cap, float(servers), 0.99))
    values = {"request_rate": lam, "cpu_usage": 4 + 96 * lam / cap + rng.normal(0, 0.8, n),
              "request_latency_ms": latency * rng.lognormal(0, 0.03, n),
              "error_rate": np.abs(0.002 + rng.normal(0, 0.0005, n)), "memory_usage": 45 + rng.normal(0, 0.4, n)}
    forecast = {"request_rate": ([95, 97, 100, 104], [30, 0, 0, 0], [200, 420, 620, 800]),
                "cpu_usage": ([29.5, 29.8, 30.0, 30.2], [22, 20, 18, 16], [37, 40, 42, 44]),
                "request_latency_ms": ([24, 24, 24, 24], [20, 19.5, 19, 18], [29, 30, 31, 32]),
                "error_rate": ([0.002] * 4, [0.001] * 4, [0.003] * 4),
                "memory_usage": ([45] * 4, [44] * 4, [46] * 4)}

    def column(k: int) -> dict[str, np.ndarray]:
        return {m: np.asarray(v[k], dtype=float) for m, v in forecast.items()}

    limits = {"cpu_usage": 95.0, "memory_usage": 90.0, "request_latency_ms": 500.0, "error_rate": 0.05}
    return SimulationContext("api", float(t[-1]), limits, {m: t for m in values}, values, HORIZONS, column(0),
                             column(1), column(2), replicas=2, workers=4)


def test_a_spike_within_the_load_already_carried_is_not_a_risk() -> None:
    """1.2x of 95 req/s is 114 req/s, less than the 164 req/s the service carried, at a third of its capacity.
    The traffic forecast's wide interval was multiplied by the spike and run through the queueing curve and the
    backlog: "latency goes over 500 ms in 12% of the draws (its peak's 90% interval reaches 30029 ms)"."""
    ctx = reported_service()
    r = run_scenario(ctx, {"type": "traffic_spike", "traffic_multiplier": 1.2})
    assert r.model_fit["trustworthy"] is True and r.caveat is None
    assert r.model_fit["params"]["capacity"] == pytest.approx(360.0, rel=0.05)
    assert r.failure_probability <= 0.05 and not r.will_likely_fail
    peak = r.projected_metrics["peak"]["request_latency_ms"]
    assert peak["upper"] < 100.0                                  # not the 30 s request timeout
    assert not any(x.startswith("Add ") for x in r.recommendations)
    assert any("No action needed" in x for x in r.recommendations)


def test_the_reported_service_fails_a_spike_far_beyond_its_capacity() -> None:
    ctx = reported_service()
    probs = {m: run_scenario(ctx, {"type": "traffic_spike", "traffic_multiplier": m}).failure_probability
             for m in (1.2, 2.0, 3.0, 5.0)}
    assert list(probs.values()) == sorted(probs.values())
    assert probs[2.0] <= 0.05                                     # 190 req/s: about half the capacity
    assert probs[5.0] >= 0.95                                     # 475 req/s against 360
    spike = run_scenario(ctx, {"type": "traffic_spike", "traffic_multiplier": 5})
    assert spike.will_likely_fail and any(re.match(r"Add \d+ replica", x) for x in spike.recommendations)


# ------------------------------------------------------------------------------------------ untrusted fits


def test_a_handful_of_samples_is_never_trustworthy_and_the_result_says_so_first() -> None:
    for n in (3, 5, MIN_SAMPLES - 1):
        r = _json(run_scenario(make_ctx(n=n), {"type": "traffic_spike", "traffic_multiplier": 3}))
        assert r["model_fit"]["trustworthy"] is False
        assert next(iter(r)) == "caveat"
        assert r["caveat"].startswith("Not trustworthy") and f"only {n} samples" in r["caveat"]
        assert "guess" in r["caveat"]


def test_a_load_test_on_an_untrusted_fit_carries_the_caveat() -> None:
    r = _json(run_scenario(make_ctx(n=12), {"type": "load_test"}))
    assert r["model_fit"]["trustworthy"] is False and r["caveat"].startswith("Not trustworthy")
    good = _json(run_scenario(make_ctx(), {"type": "load_test"}))
    assert good["model_fit"]["trustworthy"] is True and good["caveat"] is None
