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
