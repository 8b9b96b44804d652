"""What-if scenarios: validation, reproducibility, consistency with the forecast, and the model's answers."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import pytest
from helpers.simulation import make_ctx, with_series

from sidecar.engine.whatif import SimulationContext, parse_scenario, run_scenario
from sidecar.errors import ScenarioError


def _json(result: Any) -> dict[str, Any]:
    d = result.to_dict()
    out: dict[str, Any] = json.loads(json.dumps(d, allow_nan=False))
    return out


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(("scenario", "field"), [
    ({"type": "meteor"}, "type"),
    ({}, "type"),
    ({"type": "traffic_spike"}, "traffic_multiplier"),
    ({"type": "traffic_spike", "traffic_multiplier": -2}, "traffic_multiplier"),
    ({"type": "traffic_spike", "traffic_multiplier": "lots"}, "traffic_multiplier"),
    ({"type": "traffic_spike", "traffic_multiplier": True}, "traffic_multiplier"),
    ({"type": "traffic_spike", "traffic_multiplier": float("nan")}, "traffic_multiplier"),
    ({"type": "traffic_spike", "traffic_multiplier": 2, "duration_minutes": 0}, "duration_minutes"),
    ({"type": "traffic_spike", "traffic_multiplier": 2, "ramp_minutes": -1}, "ramp_minutes"),
    ({"type": "traffic_spike", "traffic_multipler": 2}, "traffic_multipler"),
    ({"type": "failure_injection", "replicas": 2, "replicas_lost": 2}, "replicas_lost"),
    ({"type": "failure_injection", "replicas": 2, "replicas_lost": 1.5}, "replicas_lost"),
    ({"type": "failure_injection", "replicas": 0, "replicas_lost": 0}, "replicas"),
    ({"type": "failure_injection", "replicas": 3}, "replicas_lost"),
    ({"type": "failure_injection", "error_rate": 2}, "error_rate"),
    ({"type": "failure_injection", "dependency_latency_ms": -5}, "dependency_latency_ms"),
    ({"type": "load_test", "max_multiplier": 0.5}, "max_multiplier"),
])
def test_malformed_scenarios_name_the_field(scenario: dict[str, Any], field: str) -> None:
    with pytest.raises(ScenarioError, match=f"'{field}'"):
        run_scenario(make_ctx(), scenario)


def test_scenario_must_be_a_mapping() -> None:
    with pytest.raises(ScenarioError, match="object"):
        parse_scenario(["traffic_spike"])  # type: ignore[arg-type]


def test_defaults_and_aliases() -> None:
    spike = parse_scenario({"type": "traffic_spike", "traffic_multiplier": "3"})
    assert spike.multiplier == 3.0 and spike.duration_s == 1800.0 and spike.ramp_s == 0.0
    fault = parse_scenario({"type": "failure_injection", "dependency_latency_ms": 200, "error_burst": 0.1},
                           replicas=4)
    assert fault.replicas == 4 and fault.added_latency_ms == 200.0 and fault.error_burst == 0.1
    assert parse_scenario({"type": "load_test"}).max_multiplier == 20.0


# ------------------------------------------------------------------------------------------ general


@pytest.mark.parametrize("scenario", [
    {"type": "traffic_spike", "traffic_multiplier": 5, "duration_minutes": 30},
    {"type": "failure_injection", "replicas": 2, "replicas_lost": 1, "added_latency_ms": 20,
     "error_rate": 0.01},
    {"type": "load_test"},
])
def test_same_seed_same_answer_and_json_ready(scenario: dict[str, Any]) -> None:
    ctx = make_ctx()
    a, b = _json(run_scenario(ctx, scenario, seed=7)), _json(run_scenario(ctx, scenario, seed=7))
    assert a == b
    assert 0.0 <= a["failure_probability"] <= 1.0
    assert isinstance(a["will_likely_fail"], bool)
    assert a["will_likely_fail"] == (a["failure_probability"] >= 0.5)
    assert a["recommendations"] and all(isinstance(r, str) for r in a["recommendations"])
    assert a["model_fit"]["trustworthy"] is True
    assert set(a["projected_metrics"]) >= {"cpu_usage", "request_latency_ms", "error_rate", "memory_usage"}


def test_multiplier_one_reproduces_the_forecast() -> None:
    fc = {"cpu_usage": (30.0, 28.0, 32.0), "memory_usage": (50.0, 48.0, 52.0),
          "request_latency_ms": (20.0, 18.0, 22.0), "error_rate": (0.001, 0.0, 0.002),
          "request_rate": (20.0, 18.0, 22.0)}
    r = run_scenario(make_ctx(forecast=fc), {"type": "traffic_spike", "traffic_multiplier": 1,
                                            "duration_minutes": 60})
    pm = r.projected_metrics
    after_first = np.asarray(pm["offset_s"]) >= 300.0      # the forecast is flat from the first horizon on
    for m, (mu, _, _) in fc.items():
        if m == "request_rate":
            continue
        np.testing.assert_allclose(np.asarray(pm[m]["value"])[after_first], mu, rtol=1e-9)
    assert r.failure_probability == 0.0 and not r.will_likely_fail


def test_failure_probability_grows_with_the_multiplier() -> None:
    ctx = make_ctx()
    probs = [run_scenario(ctx, {"type": "traffic_spike", "traffic_multiplier": m}, seed=1).failure_probability
             for m in (1, 4, 8, 9, 9.5, 10, 12)]
    assert probs == sorted(probs)
    assert probs[0] == 0.0 and probs[-1] == 1.0


# ------------------------------------------------------------------------------------------ traffic spike


def test_spike_beyond_capacity_fails_with_a_replica_recommendation() -> None:
    ctx = make_ctx()                                   # capacity 200 req/s, now 20 req/s, CPU-bound
    r = run_scenario(ctx, {"type": "traffic_spike", "traffic_multiplier": 15, "duration_minutes": 30})
    assert r.will_likely_fail and r.failure_probability > 0.9
    assert r.time_to_first_breach_s is not None and r.time_to_first_breach_s < 60
    assert r.projected_metrics["peak"]["cpu_usage"]["value"] >= 95.0
    rec = next(x for x in r.recommendations if x.startswith("Add "))
    # 300 req/s with 95% CPU limit at ~0.475 %/(req/s) per replica pair → 2 → 4 replicas
    assert re.search(r"\(2 → (\d+)\)", rec) and int(re.search(r"→ (\d+)", rec).group(1)) in (4, 5)  # type: ignore[union-attr]
    assert "at 15.0x traffic" in rec


def test_ramp_delays_the_first_breach() -> None:
    ctx = make_ctx()
    sudden = run_scenario(ctx, {"type": "traffic_spike", "traffic_multiplier": 15, "duration_minutes": 30})
    ramped = run_scenario(ctx, {"type": "traffic_spike", "traffic_multiplier": 15, "duration_minutes": 30,
                                "ramp_minutes": 20})
    assert sudden.time_to_first_breach_s is not None and ramped.time_to_first_breach_s is not None
    # CPU reaches 95% at 9.5x, i.e. (9.5 − 1)/14 of the way up a 20 minute ramp
    assert ramped.time_to_first_breach_s == pytest.approx(8.5 / 14 * 1200, abs=60)
    assert sudden.time_to_first_breach_s < ramped.time_to_first_breach_s


def test_small_spike_needs_no_action() -> None:
    r = run_scenario(make_ctx(), {"type": "traffic_spike", "traffic_multiplier": 2})
    assert not r.will_likely_fail and r.failure_probability < 0.05
    assert any("No action needed" in x for x in r.recommendations)
    assert all(re.search(r"\d", x) for x in r.recommendations if not x.startswith("No action"))


def test_memory_trend_fails_regardless_of_replicas() -> None:
    fc = {"memory_usage": (95.0, 93.0, 97.0)}
    r = run_scenario(make_ctx(forecast=fc), {"type": "traffic_spike", "traffic_multiplier": 2})
    assert r.will_likely_fail
    assert r.breach_probability["memory"] > 0.9 and r.breach_probability["cpu"] == 0.0
    assert any("does not keep" in x for x in r.recommendations)


# ------------------------------------------------------------------------------------------ failure injection


def test_losing_a_replica_under_high_load_overloads_and_recovers_later() -> None:
    ctx = make_ctx(load=120.0, swing=40.0)            # 60% of 200 req/s; one replica serves only 100
    r = run_scenario(ctx, {"type": "failure_injection", "replicas": 2, "replicas_lost": 1,
                           "duration_minutes": 5})
    assert r.will_likely_fail
    assert r.breach_probability["latency"] > 0.9
    assert r.recovery_time_s is not None and r.recovery_time_s > 0
    # backlog capped at the 30 s timeout of the surviving capacity (≈100 req/s · 30 s), drained at 200 − 120
    assert r.recovery_time_s == pytest.approx(100 * 30 / 80, rel=0.35)
    assert any(x.startswith("Run ") and "replicas" in x for x in r.recommendations)
    assert any("Capacity during the fault" in x for x in r.recommendations)


def test_losing_one_of_four_replicas_at_low_load_is_harmless() -> None:
    ctx = make_ctx(servers=4, replicas=4)
    r = run_scenario(ctx, {"type": "failure_injection", "replicas_lost": 1})
    assert not r.will_likely_fail and r.recovery_time_s == 0.0


def test_error_burst_breaches_the_error_limit() -> None:
    r = run_scenario(make_ctx(), {"type": "failure_injection", "error_rate": 0.1, "duration_minutes": 5})
    assert r.will_likely_fail and r.breach_probability["errors"] == 1.0
    assert r.projected_metrics["peak"]["error_rate"]["value"] == pytest.approx(0.101, abs=1e-3)


def test_slow_dependency_exhausts_the_worker_pool() -> None:
    # 10 ms per request on 2 workers; +90 ms blocks the workers: capacity 200 → 20 req/s, load 20 req/s
    r = run_scenario(make_ctx(), {"type": "failure_injection", "added_latency_ms": 90, "duration_minutes": 5})
    assert r.will_likely_fail and r.breach_probability["latency"] > 0.5
    assert any("timeout" in x for x in r.recommendations)


# ------------------------------------------------------------------------------------------ load test


def test_load_test_finds_the_cpu_breaking_point() -> None:
    r = run_scenario(make_ctx(), {"type": "load_test"})
    bp = r.breaking_point
    assert bp is not None and bp["bottleneck"] == "cpu"
    # truth: CPU = 5 + 95·λ/200 reaches 95% at λ = 189.5 req/s = 9.47x of 20 req/s
    truth = (95 - 5) / 95 * 200 / 20
    assert bp["traffic_multiplier"] == pytest.approx(truth, rel=0.05)
    lo, hi = bp["interval"]
    assert lo <= truth <= hi and hi / lo < 1.4
    assert bp["request_rate"] == pytest.approx(bp["traffic_multiplier"] * 20, rel=1e-9)
    # breaking at ~9.5x is no failure against the default 2x headroom; it is one against 12x
    assert not r.will_likely_fail and r.failure_probability == 0.0
    assert any("Breaks at" in x and "x current traffic" in x for x in r.recommendations)
    tight = run_scenario(make_ctx(), {"type": "load_test", "required_multiplier": 12})
    assert tight.will_likely_fail and tight.failure_probability == 1.0


def test_a_precisely_fitted_cpu_law_still_carries_the_models_structural_uncertainty() -> None:
    """A CPU law fitted almost without noise at low load is still an extrapolation: the interval of a CPU
    breaking point is as wide as the model's structural uncertainty (log-sd 0.06), not the regression's."""
    ctx = make_ctx(seed=3)
    ctx.values["cpu_usage"] = 5 + 95 * ctx.values["request_rate"] / 200          # exact: no noise at all
    bp = run_scenario(ctx, {"type": "load_test"}).breaking_point
    assert bp is not None and bp["bottleneck"] == "cpu"
    lo, hi = bp["interval"]
    assert lo < bp["traffic_multiplier"] < hi
    # the regression alone gives a log-width of 0.007 here; the structural part 2·1.645·0.06 ≈ 0.20, less the
    # upper tail that the latency limit cuts off just above the CPU one
    assert 0.12 < math.log(hi / lo) < 0.25


def test_load_test_on_an_io_bound_service_breaks_on_latency() -> None:
    ctx = make_ctx(cpu_bound=False, servers=4, service_s=0.1, load=26.0, swing=8.0, replicas=4)
    bp = run_scenario(ctx, {"type": "load_test"}).breaking_point
    assert bp is not None and bp["bottleneck"] == "latency"
    # capacity 40 req/s; p99 latency reaches 1 s a little below it
    assert 30.0 <= bp["request_rate"] <= 40.0


def test_load_test_that_never_breaks() -> None:
    r = run_scenario(make_ctx(), {"type": "load_test", "max_multiplier": 3})
    assert r.breaking_point is not None and r.breaking_point["traffic_multiplier"] is None
    assert r.failure_probability == 0.0 and not r.will_likely_fail
    assert any("No limit breaks up to 3.00x" in x for x in r.recommendations)


# ------------------------------------------------------------------------------------------ little data


def test_without_request_rate_it_still_answers_but_not_trustworthy() -> None:
    r = _json(run_scenario(make_ctx(with_rate=False, replicas=None, workers=None), {"type": "load_test"}))
    assert r["model_fit"]["trustworthy"] is False
    assert "no request rate" in r["model_fit"]["reason"]
    bp = r["breaking_point"]
    assert bp["request_rate"] is None and bp["traffic_multiplier"] is not None
    assert any("not trustworthy" in x for x in r["recommendations"])


def test_untrustworthy_fit_has_wider_bounds() -> None:
    good = run_scenario(make_ctx(), {"type": "load_test"}).breaking_point
    poor = run_scenario(make_ctx(n=12), {"type": "load_test"}).breaking_point
    assert good is not None and poor is not None
    width = lambda bp: bp["interval"][1] / bp["interval"][0]  # noqa: E731
    assert width(poor) > 1.5 * width(good)


def test_a_twin_with_a_single_sample_still_answers() -> None:
    ctx = make_ctx(n=1)
    for scenario in ({"type": "traffic_spike", "traffic_multiplier": 3}, {"type": "load_test"},
                     {"type": "failure_injection", "replicas": 2, "replicas_lost": 1}):
        d = _json(run_scenario(ctx, scenario))
        assert d["model_fit"]["trustworthy"] is False
        assert 0.0 <= d["failure_probability"] <= 1.0


def test_blocked_worker_pool_breaks_on_latency_well_before_cpu() -> None:
    # 2 workers held 40 ms each (mostly a downstream wait): the pool serves 50 req/s while CPU stays low
    ctx = make_ctx(cpu_bound=False, servers=2, service_s=0.04, load=15.0, swing=8.0)
    lam = ctx.values["request_rate"]
    from sidecar.engine.whatif import erlang_c

    pw = erlang_c(2.0, lam * 0.04)
    values = dict(ctx.values)
    values["request_latency_mean_ms"] = 1000 * (0.04 + pw / (50.0 - lam))      # M/M/c, like the p99
    times = dict(ctx.times)
    times["request_latency_mean_ms"] = times["request_rate"]
    ctx = SimulationContext(ctx.twin_id, ctx.now, ctx.limits, times, values, ctx.horizons_s, ctx.forecast_mean,
                            ctx.forecast_lower, ctx.forecast_upper, replicas=1, workers=2)
    r = run_scenario(ctx, {"type": "load_test"})
    routes = r.model_fit["params"]["capacity_by_route"]
    assert routes["mean_latency"] == pytest.approx(50.0, rel=0.05) and routes["cpu"] > 500
    assert r.model_fit["params"]["capacity"] == pytest.approx(50.0, rel=0.05)
    bp = r.breaking_point
    assert bp is not None and bp["bottleneck"] == "latency"
    lo, hi = bp["request_rate_interval"]
    assert 40.0 <= bp["request_rate"] <= 50.0 and lo < bp["request_rate"] < hi
    spike = run_scenario(ctx, {"type": "traffic_spike", "traffic_multiplier": 4})
    assert spike.will_likely_fail
    assert any(re.search(r"Add \d+ replica", x) for x in spike.recommendations)


def test_an_integer_too_large_for_a_float_is_out_of_range_not_a_crash() -> None:
    with pytest.raises(ScenarioError, match="traffic_multiplier"):
        parse_scenario({"type": "traffic_spike", "traffic_multiplier": 10**400})


# ------------------------------------------------------------------------------------------ traffic observed as 0


def _idle(n: int = 240, cpu: float = 30.0) -> SimulationContext:
    """A twin whose request rate is observed as 0 (a constant counter's rate), CPU idling at ``cpu``%."""
    ctx = make_ctx(n=n)
    rng = np.random.default_rng(4)
    return with_series(ctx, request_rate=np.zeros(n), cpu_usage=cpu + rng.normal(0, 0.3, n))


def test_five_times_zero_traffic_is_still_zero() -> None:
    """An idle service (request_rate 0) under traffic_spike x5 stays idle: no failure, no CPU rise, no replicas."""
    ctx = _idle()
    r = _json(run_scenario(ctx, {"type": "traffic_spike", "traffic_multiplier": 5, "duration_minutes": 30}))
    assert r["failure_probability"] == 0.0 and r["will_likely_fail"] is False
    pm = r["projected_metrics"]
    assert set(pm["request_rate"]) == {0.0}
    for m in ("cpu_usage", "request_latency_ms", "error_rate", "memory_usage"):
        now = float(np.median(ctx.values[m][-5:]))
        np.testing.assert_allclose(pm[m]["value"], now, atol=1e-6)           # projected = current (JSON: 6 dp)
        assert pm["peak"][m]["value"] == pytest.approx(now, abs=1e-6)
    assert r["model_fit"]["traffic"] == "zero"
    note = r["model_fit"]["traffic_note"]
    assert "Traffic is 0 req/s" in note and r["recommendations"][0] == note
    assert not any("replica" in x for x in r["recommendations"])
    assert any("No action needed" in x for x in r["recommendations"])


def test_at_zero_traffic_any_multiplier_gives_the_same_answer() -> None:
    ctx = _idle()
    answers = [_json(run_scenario(ctx, {"type": "traffic_spike", "traffic_multiplier": m}, seed=3))
               for m in (0.5, 1, 5, 1000)]
    for a in answers[1:]:
        assert a["failure_probability"] == answers[0]["failure_probability"]
        for m in ("cpu_usage", "request_latency_ms", "error_rate", "memory_usage"):
            assert a["projected_metrics"][m] == answers[0]["projected_metrics"][m]


def test_at_zero_traffic_the_current_state_alone_decides_failure() -> None:
    """Memory over its limit with no traffic fails whatever the multiplier, and no replica count helps."""
    ctx = _idle()
    ctx = with_series(ctx, memory_usage=np.full(240, 93.0))
    r = run_scenario(ctx, {"type": "traffic_spike", "traffic_multiplier": 5})
    assert r.will_likely_fail and r.breach_probability["memory"] == 1.0 and r.breach_probability["cpu"] == 0.0
    assert any("Memory is over the limit with no traffic" in x for x in r.recommendations)
    assert not any(x.startswith("Add ") for x in r.recommendations)


def test_load_test_at_zero_traffic_breaks_nothing_and_says_why() -> None:
    r = _json(run_scenario(_idle(), {"type": "load_test"}))
    bp = r["breaking_point"]
    assert bp["traffic_multiplier"] is None and bp["bottleneck"] is None and bp["interval"] == [None, None]
    assert r["failure_probability"] == 0.0 and not r["will_likely_fail"]
    assert any("20.0x of 0 req/s is still 0 req/s" in x for x in r["recommendations"])
    # already over a limit at zero traffic: broken at any multiple, and not load-driven
    hot = _json(run_scenario(with_series(_idle(), memory_usage=np.full(240, 93.0)), {"type": "load_test"}))
    assert hot["breaking_point"]["bottleneck"] == "memory" and hot["breaking_point"]["traffic_multiplier"] == 0.0
    assert hot["failure_probability"] == 1.0
    assert any("already over its limit with no traffic" in x for x in hot["recommendations"])


def test_traffic_that_stopped_still_reports_the_capacity_from_history() -> None:
    ctx = make_ctx()
    rate = ctx.values["request_rate"].copy()
    rate[-10:] = 0.0
    cpu = ctx.values["cpu_usage"].copy()
    cpu[-10:] = 5.0
    r = run_scenario(with_series(ctx, request_rate=rate, cpu_usage=cpu), {"type": "load_test"})
    assert r.failure_probability == 0.0 and r.model_fit["traffic"] == "zero"
    assert any(re.search(r"fitted capacity is ≈ (19\d|20\d) req/s", x) for x in r.recommendations)


def test_failure_injection_at_zero_traffic_keeps_its_non_traffic_effects() -> None:
    r = run_scenario(_idle(), {"type": "failure_injection", "error_rate": 0.1, "duration_minutes": 5})
    assert r.will_likely_fail and r.breach_probability["errors"] == 1.0
    assert not any("Capacity during the fault" in x for x in r.recommendations)
    calm = run_scenario(_idle(), {"type": "failure_injection", "replicas": 2, "replicas_lost": 1})
    assert calm.failure_probability == 0.0 and calm.recovery_time_s == 0.0


def test_low_traffic_on_an_idle_cpu_does_not_extrapolate_to_saturation() -> None:
    """~1 request a minute with CPU flat at 30%: 5x traffic projects CPU below saturation,
    not 100% (not all CPU is load-driven)."""
    ctx = make_ctx()
    rng = np.random.default_rng(5)
    rate = rng.poisson(1.2, 240) / 60.0
    rate[-5:] = 0.02
    r = run_scenario(with_series(ctx, request_rate=rate, cpu_usage=30.0 + rng.normal(0, 1.0, 240)),
                     {"type": "traffic_spike", "traffic_multiplier": 5})
    assert r.model_fit["traffic"] == "observed" and r.model_fit["traffic_note"] is None
    assert r.failure_probability < 0.05 and not r.will_likely_fail
    assert r.projected_metrics["peak"]["cpu_usage"]["value"] < 33.0
    assert not any(x.startswith("Add ") for x in r.recommendations)


@pytest.mark.parametrize(("rate", "traffic", "why"), [
    (None, "no_query", "this twin has no request_rate query"),
    (np.full(240, np.nan), "no_data", "the request_rate query returned no data"),
])
def test_without_a_rate_the_first_model_is_explained_in_the_result(rate: np.ndarray | None, traffic: str,
                                                                    why: str) -> None:
    ctx = make_ctx(with_rate=False)
    if rate is not None:
        ctx = with_series(ctx, request_rate=rate)
    r = _json(run_scenario(ctx, {"type": "traffic_spike", "traffic_multiplier": 2}))
    assert r["model_fit"]["traffic"] == traffic and r["model_fit"]["params"]["traffic"] == traffic
    note = r["model_fit"]["traffic_note"]
    assert why in note and "CPU assumed proportional to traffic" in note
    assert r["recommendations"][0] == note
    # the first model is still what runs: 2x the load at CPU ≈ 14.5% projects ≈ 29% CPU
    assert r["projected_metrics"]["peak"]["cpu_usage"]["value"] == pytest.approx(
        2 * float(np.median(ctx.values["cpu_usage"][-5:])), rel=0.01)


def test_load_test_interval_open_above_is_worded_not_unbounded() -> None:
    """A breaking point whose upper 5% of draws never break reads "at least 1.80x", not "1.80–unboundedx"."""
    ctx = make_ctx(load=120.0, swing=40.0)
    r = run_scenario(ctx, {"type": "load_test", "max_multiplier": 1.6})
    bp = r.breaking_point
    assert bp is not None and bp["traffic_multiplier"] is not None and bp["interval"][1] is None
    line = next(x for x in r.recommendations if x.startswith("Breaks at"))
    assert "unbounded" not in line
    assert re.search(r"90% interval at least \d\.\d\dx \(the upper end lies beyond the 1\.60x tested\)", line)
