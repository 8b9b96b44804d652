"""The pieces of benchmarks/autoscale_offline.py (the evaluator itself takes minutes and is not part of the suite):
its queue is the M/G/c the closed loop's service is, its twin recommends through the real engine functions, and
the cross-validation chooses the cheapest quantile that meets the breach target."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers.bench import load_benchmark

offline = load_benchmark("autoscale_offline")


def test_erlang_c_is_the_utilisation_for_one_server_and_certain_waiting_at_saturation() -> None:
    assert offline.erlang_c(0.6, 1) == pytest.approx(0.6)
    assert offline.erlang_c(2.0, 4) == pytest.approx(0.1739, abs=1e-4)      # the M/M/4 table value
    assert offline.erlang_c(4.0, 4) == 1.0


def test_the_share_of_requests_over_the_slo_rises_with_load_and_backlog() -> None:
    low, slo, high = (offline.share_over(r, 0.0) for r in (3.0, offline.truth_slo_rate(), 7.5))
    assert low < 1e-4 < slo <= 0.01 < high
    assert offline.share_over(3.0, 1.5) > 0.5                              # a queue ahead adds its delay


def test_a_lane_at_a_steady_load_holds_the_replicas_the_hpa_target_needs() -> None:
    rate = 3.5 * offline.closed.TARGET_UTILISATION * offline.closed.WORKERS / offline.closed.SERVICE_S
    lam = np.full(round(120 / offline.DT), rate)
    out = offline.run_lane(lam, 30.0, None, 0.0)
    assert out.breach_minutes == 0
    # 4 replicas (3.5 rounded up) for 90 benchmark seconds = 30 real minutes
    assert out.replica_minutes == pytest.approx(4 * 90 * offline.closed.COMPRESSION / 60, rel=0.02)


def test_the_twin_lane_follows_the_recommendation_and_holds_when_it_is_withheld() -> None:
    lam = np.full(round(120 / offline.DT), 10.0)
    rec = np.full(120, 6.0)
    assert offline.run_lane(lam, 30.0, rec, 0.0).replica_minutes > \
        offline.run_lane(lam, 30.0, np.full(120, math.nan), 0.0).replica_minutes


def _row(trace: str, hpa: int, twin: dict[str, tuple[int, float]]) -> dict[str, object]:
    return {"trace": trace, "hpa": {"breach_minutes": hpa, "replica_minutes": 100.0},
            "twin": {q: {"breach_minutes": b, "replica_minutes": r} for q, (b, r) in twin.items()}}


def test_the_choice_is_the_cheapest_quantile_within_the_breach_target_else_the_fewest_breaches() -> None:
    rows = [_row("a", 10, {"0.5": (8, 90.0), "0.75": (5, 105.0), "0.95": (1, 150.0)})]
    assert offline.choose(rows, ["0.5", "0.75", "0.95"]) == "0.75"
    rows = [_row("a", 10, {"0.5": (9, 90.0), "0.95": (7, 150.0)})]
    assert offline.choose(rows, ["0.5", "0.95"]) == "0.95"


def test_a_variant_key_reads_back_as_the_same_policy() -> None:
    for key in ("0.8", "0.75 hwnow", "0.8 hwmin120 h30", "0.7 hwmedian60 down8 keda0"):
        assert offline.Variant.parse(key).key == key
    with pytest.raises(ValueError, match="unknown"):
        offline.Variant.parse("0.8 wider")


def test_the_settled_half_width_is_the_sidecars_minimum_over_the_window() -> None:
    hw = np.array([10.0, 40.0, 30.0, 35.0, 5.0, 50.0])
    assert offline.settled_half_width(hw, "min", 3).tolist() == [10.0, 10.0, 10.0, 30.0, 5.0, 5.0]
    assert offline.settled_half_width(hw, "now", 3).tolist() == hw.tolist()
    assert offline.settled_half_width(hw, "median", 3).tolist() == [10.0, 25.0, 30.0, 35.0, 5.0, 35.0]


def test_sampled_minutes_breach_at_the_slos_edge_where_the_expected_share_does_not() -> None:
    # a steady load whose share over the SLO is just under 1 %: never a breach by the expected share, often by the
    # p99 of the few requests a minute has
    per_replica = offline.truth_slo_rate()
    lam = np.full(round(150 / offline.DT), 3 * per_replica)
    rec = np.full(150, 3.0)
    expected = offline.run_lane(lam, 30.0, rec, 0.0)
    sampled = offline.run_lane(lam, 30.0, rec, 0.0, sampled=1)
    assert expected.breach_minutes == 0
    assert sampled.breach_minutes > 0 and sampled.minutes == expected.minutes
