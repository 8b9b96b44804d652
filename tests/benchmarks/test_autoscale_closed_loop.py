"""The pieces of benchmarks/autoscale.py (the benchmark itself runs for half an hour and is not part of the suite):
the controllers follow the HPA's algorithm, the accounting counts what the README says, its rules load."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
from helpers.bench import load_benchmark

from sidecar.config import parse_config

bench = load_benchmark("autoscale")


def test_hpa_scales_up_at_most_double_or_plus_four_and_down_only_after_the_window() -> None:
    history: list[tuple[float, int]] = []
    assert bench.hpa_behaviour(2, 20, history, 0.0) == 6            # +4 beats doubling from 2
    assert bench.hpa_behaviour(10, 40, history, 1.0) == 20          # capped at max replicas
    history.clear()
    assert bench.hpa_behaviour(8, 8, history, 0.0) == 8
    assert bench.hpa_behaviour(8, 3, history, 1.0) == 8             # the 8 of the window holds
    assert bench.hpa_behaviour(8, 3, history, bench.SCALE_DOWN_WINDOW_S + 0.5) == 3


def test_utilisation_controller_counts_starting_pods_at_zero_when_scaling_up() -> None:
    assert bench.utilisation_raw(4, 4, 0.70) == 4                    # at target
    assert bench.utilisation_raw(4, 4, 0.98) == 6                    # ceil(4 x 1.4)
    assert bench.utilisation_raw(6, 4, 1.0) == 6                     # 4 busy of 6: 67 %, hold
    assert bench.utilisation_raw(4, 4, 0.35) == 2
    assert bench.utilisation_raw(4, 4, math.nan) == 4


def test_average_value_controller_sets_the_metric_and_holds_without_it() -> None:
    assert bench.average_value_raw(4, 7.0, 1.0) == 7
    assert bench.average_value_raw(10, 10.5, 1.0) == 10              # inside the 10 % tolerance
    assert bench.average_value_raw(4, math.nan, 1.0) == 4            # absent: the count holds
    assert bench.average_value_raw(3, 20.0, 5.6) == 4


def test_breach_minutes_use_the_p99_of_each_real_minute_and_failures_count_as_over() -> None:
    m = bench.MINUTE_S
    sent = np.concatenate([np.linspace(0, m * 0.99, 100), np.linspace(m, 2 * m * 0.99, 100)])
    lat = np.full(200, 100.0)
    lat[150] = math.inf
    assert bench.breach_minutes(sent, lat, 0.0, 2 * m) == (0, 2)     # 1 in 100 is the 1 % p99 leaves out
    lat[151] = math.inf
    assert bench.breach_minutes(sent, lat, 0.0, 2 * m) == (1, 2)
    assert bench.server_breach_minutes([100.0, math.nan, bench.SLO_MS + 1]) == (1, 2)


def test_replica_minutes_integrate_the_step_function_in_real_time() -> None:
    t = np.array([0.0, 1.0, 2.0, 3.0])
    r = np.array([2.0, 4.0, 4.0, 1.0])
    assert bench.replica_minutes(t, r, 0.0, 3.0) == pytest.approx(10.0 * bench.COMPRESSION / 60.0)


def test_a_segment_is_the_trace_compressed_and_scaled_to_its_peak() -> None:
    t = np.arange(0.0, 3600.0 * 10, 300.0)
    v = 100.0 + 50.0 * np.sin(t / 3600.0)
    seg = bench.segment("x", t, v, 3600.0, 180.0, 30.0)
    assert seg.times[-1] == pytest.approx(180.0)
    assert float(seg.rates.max()) == pytest.approx(30.0)
    # from 1 h to 2 h of the trace (180 s x 20): its peak 150 at sin = 1, its start 100 + 50 sin(1)
    assert seg.rate(0.0) == pytest.approx(30.0 * (100.0 + 50.0 * math.sin(1.0)) / 150.0, rel=0.01)


def test_a_scale_down_removes_a_starting_replica_first() -> None:
    async def scenario() -> list[float]:
        d = bench.Deployment()
        d.scale(2, 0.0, 0.0)
        d.scale(4, 10.0, 5.0)                # two starting until 15
        d.scale(3, 12.0, 5.0)
        return [r.ready_at for r in d.replicas]
    assert asyncio.run(scenario()) == [0.0, 0.0, 15.0]


def test_the_benchmark_rules_are_valid_sidecar_rules(tmp_path: object) -> None:
    cfg = parse_config(bench.sidecar_rules("http://127.0.0.1:9", 9, "/tmp/x.db", ["a-twin"]))
    (twin,) = cfg.twins
    assert twin.max_replicas == bench.MAX_REPLICAS and twin.workers == bench.WORKERS
    assert twin.scale_down_stabilisation_s == pytest.approx(bench.SCALE_DOWN_WINDOW_S)
