"""A family's shared answer dealt out to its twins by their naming labels (rounds and backfill alike), and a round's
shared answers dealt to a real roster: in the family's order, several series refused, missing values streaked."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from sidecar.collect.fanout import Job, Outcome
from sidecar.collect.naming import naming_key
from sidecar.collect.scheduler import Scheduler
from sidecar.collect.streaks import NO_DATA_ROUNDS
from sidecar.collect.targets import Target, rows_by_twin
from sidecar.config import TwinRule, parse_config
from sidecar.engine.core import Engine
from sidecar.prometheus import InstantVector, PrometheusClient
from sidecar.status import ServiceStatus

T0 = 1_700_000_000.0

RULES = """
prometheus: {url: "http://127.0.0.1:9090"}
twins:
  - name: fam
    discover: 'up{job="app"}'
    name_labels: [instance]
    metrics: {cpu_usage: 'rate(cpu_seconds_total[1m])'}
"""


def rule() -> TwinRule:
    return parse_config(RULES).twins[0]


def twin(r: TwinRule, labels: dict[str, str]) -> Target:
    return Target(f"fam@{labels.get('instance', '')}", r, {}, labels, key=naming_key(r, labels))


def test_each_series_goes_to_the_twin_whose_naming_labels_it_carries() -> None:
    r = rule()
    a, b = twin(r, {"instance": "a"}), twin(r, {"instance": "b"})
    labels = [{"instance": "b", "job": "app"}, {"instance": "x"}, {"instance": "a", "pod": "p"}, {"job": "app"}]
    assert rows_by_twin([a, b], labels, range(4)) == {"fam@a": [2], "fam@b": [0]}


def test_rows_outside_keep_are_never_dealt_and_order_is_kept() -> None:
    r = rule()
    a = twin(r, {"instance": "a"})
    labels = [{"instance": "a"}, {"instance": "a"}, {"instance": "a"}]
    assert rows_by_twin([a], labels, [2, 0]) == {"fam@a": [2, 0]}     # several rows: the caller refuses them
    assert rows_by_twin([a], labels, []) == {}


def test_a_series_without_a_naming_label_finds_no_twin_even_one_whose_value_is_empty() -> None:
    r = rule()
    empty = twin(r, {})                              # naming_key fills a missing label with ""
    assert empty.key == (("instance", ""),)
    assert rows_by_twin([empty], [{"job": "app"}, {"instance": ""}], [0, 1]) == {"fam@": [1]}


# --------------------------------------------------------------------------- a round's shared answers dealt


FAMILY_RULES = ("prometheus: {url: 'http://127.0.0.1:9'}\n"
                "twins:\n  - name: fam\n    discover: up\n    name_labels: [instance]\n"
                "    metrics: {cpu_usage: cpu, memory_usage: mem}\n")


async def test_a_family_is_dealt_in_its_order_several_series_refused_and_missing_values_streaked(
        caplog: pytest.LogCaptureFixture) -> None:
    config = parse_config(FAMILY_RULES)
    status = ServiceStatus(config_loaded=True)
    async with PrometheusClient(config.prometheus) as client:    # never asked: the answers are handed over
        sched = Scheduler(config, Engine(), client, status)
        names = ["a", "b", "c", "d"]
        up = InstantVector("up", T0, tuple({"instance": n} for n in names), np.ones(4))
        await sched.roster.reconcile(T0, {"fam": up})
        slot = {n: sched.roster.slot(f"fam@{n}", "cpu_usage") for n in names}
        # b answers twice (refused), c only NaN, d not at all; x is nobody's
        cpu = InstantVector("cpu", T0, ({"instance": "c"}, {"instance": "b"}, {"instance": "x"}, {"instance": "a"},
                                        {"instance": "b"}), np.array([np.nan, 2.0, 9.0, 1.0, 3.0]))
        mem = InstantVector("mem", T0, tuple({"instance": n} for n in names), np.array([10.0, 20.0, 30.0, 40.0]))
        raw = [(Job("", "cpu_usage", "cpu", rule="fam"), Outcome("", "cpu_usage", result=cpu, query="cpu")),
               (Job("", "memory_usage", "mem", rule="fam"), Outcome("", "memory_usage", result=mem, query="mem"))]
        dealer = sched._round.dealer
        with caplog.at_level(logging.INFO, logger="sidecar.collect.streaks"):
            for _ in range(NO_DATA_ROUNDS):
                dealt = dealer.deal(raw, [], True)
        mem_slots = [sched.roster.slot(f"fam@{n}", "memory_usage") for n in names]
        assert dealt.slots.tolist() == [slot["a"], slot["c"], *mem_slots]       # family order; NaN left to the engine
        assert dealt.values[0] == 1.0 and np.isnan(dealt.values[1]) and dealt.values[2:].tolist() == [10, 20, 30, 40]
        assert dealt.failed == 1 and status.query_errors[("fam@b", "cpu_usage")] == NO_DATA_ROUNDS
        told = {(r.__dict__.get("twin"), r.__dict__.get("answer")) for r in caplog.records
                if r.getMessage() == "query returns no data"}
        assert told == {("fam@c", "only NaN/Inf values"), ("fam@d", "no series")}
        assert any(r.getMessage() == "query failing" and r.__dict__.get("twin") == "fam@b" for r in caplog.records)
        # d answers again: its streak ends, told once
        caplog.clear()
        mem_only = [(raw[0][0], Outcome("", "cpu_usage", result=mem, query="cpu")), raw[1]]
        with caplog.at_level(logging.INFO, logger="sidecar.collect.streaks"):
            dealer.deal(mem_only, [], True)
        ended = {r.__dict__.get("twin") for r in caplog.records if r.getMessage() == "query has data again"}
        assert ended == {"fam@c", "fam@d"}
        assert any(r.getMessage() == "query recovered" and r.__dict__.get("twin") == "fam@b" for r in caplog.records)
