"""Helpers of benchmarks/live_calibration.py: the stress schedule a collection runs and the report it writes."""

from __future__ import annotations

import itertools

import pytest
from helpers.bench import load_benchmark

lc = load_benchmark("live_calibration")


@pytest.mark.parametrize("minutes", [2, 100])
def test_plan_fills_the_collection_with_at_most_one_cpu_worker(minutes: int) -> None:
    total = minutes * 60.0
    steps = lc.plan(total)
    assert steps[0].offset_s == 0.0
    for a, b in itertools.pairwise(steps):
        assert b.offset_s == pytest.approx(a.offset_s + a.duration_s)
    assert steps[-1].offset_s + steps[-1].duration_s == pytest.approx(total)
    kinds = {s.kind for s in steps}
    assert {"idle", "cpu", "ramp", "mem"} <= kinds
    ramp = [s.cpu_load for s in steps if s.kind == "ramp"]
    assert len(ramp) >= 2 and ramp == sorted(ramp) and ramp[0] < ramp[-1]
    for s in steps:
        cmd = s.command()
        if s.kind == "idle":
            assert cmd is None
            continue
        assert cmd is not None and "--timeout" in cmd
        if "--cpu" in cmd:
            assert cmd[cmd.index("--cpu") + 1] == "1" and 0 < int(cmd[cmd.index("--cpu-load") + 1]) <= 100
        if "--vm" in cmd:      # memory is held by a worker that touches its pages once, then sleeps
            assert cmd[cmd.index("--vm") + 1] == "1" and cmd[cmd.index("--vm-hang") + 1] == "0"


def test_plan_steps_cpu_up_and_down_and_takes_and_releases_memory() -> None:
    steps = lc.plan(6000.0)
    loads = [s.cpu_load for s in steps]
    assert max(loads) >= 60 and any(0 < x <= 10 for x in loads)
    mem = [s.vm_bytes for s in steps]
    assert any(mem) and mem[-1] is None
    assert sum(s.duration_s for s in steps if s.kind == "ramp") >= 600


def test_render_reports_every_query_and_horizon_and_errors() -> None:
    h = {"horizon_s": 300.0, "scored": 10, "coverage": 0.9, "mase_last": 0.8, "mean_width": 2.0,
         "coverage_low": 0.8, "coverage_high": 1.0, "independent": 0.5}
    res = {
        "machine": {"host": "h", "nproc": 2, "cpu_model": "cpu", "mem_total_mib": 1, "python": "3"},
        "collection": {"started_at_iso": "2026-01-01T00:00:00Z", "minutes": 100}, "git_commit": "abc",
        "measured_at": "2026-01-01T02:00:00Z", "collected_minutes": 100.0, "complete": True,
        "score_from": 1.8e9, "goal_coverage": [0.85, 0.95],
        "results": {"a": {"query": "up", "horizons": [h, {**h, "horizon_s": 3600.0, "scored": 0, "coverage": None,
                                                          "mase_last": None, "mean_width": None,
                                                          "coverage_low": None, "coverage_high": None,
                                                          "independent": 0.0}]},
                    "c": {"query": "x", "horizons": [{**h, "coverage": 0.72, "coverage_low": 0.6,
                                                      "coverage_high": 0.8}]},
                    "b": {"query": "down", "error": "twin-sidecar backtest: no series"}},
        "schedule": [{"offset_s": 0, "duration_s": 60, "kind": "idle", "cpu_load": 0, "vm_bytes": None},
                     {"offset_s": 60, "duration_s": 30, "kind": "ramp", "cpu_load": 10, "vm_bytes": None},
                     {"offset_s": 90, "duration_s": 30, "kind": "ramp", "cpu_load": 80, "vm_bytes": None}],
    }
    md = lc.render(res)
    assert "| a | 5 min | 10 | 0.5 | 0.900 | 0.80-1.00 | yes | yes | 0.800 |" in md
    assert "| a | 60 min | 0 | 0.0 | n/a | n/a | n/a | n/a | n/a |" in md
    assert "| c | 5 min | 10 | 0.5 | 0.720 | 0.60-0.80 | no | no |" in md     # its interval misses 0.85-0.95
    assert "| b | - | - | - | error: twin-sidecar backtest: no series" in md
    assert "| 5 min | 20 | 0.810 | 1 of 2 | 1 of 2 |" in md
    assert "| 1.0 min | 1.0 | ramp | 10 -> 80 % | - |" in md
