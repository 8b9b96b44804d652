"""Discovered twins against a real Prometheus: unique names, a flap that keeps state, counters after a restore."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers.prom import PromEnv
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from sidecar.collect.naming import HASH_MARK, discovered_name
from sidecar.collect.roster import RETIRE_AFTER_ROUNDS
from sidecar.collect.scheduler import Scheduler
from sidecar.config import RetiredConfig, ShardConfig, SidecarConfig, parse_config
from sidecar.contract import ExportOptions
from sidecar.engine.core import Engine
from sidecar.engine.modelstate import decode
from sidecar.engine.settings import EngineSettings
from sidecar.exporter import install_exporter, render
from sidecar.prometheus import PrometheusClient
from sidecar.status import ServiceStatus
from sidecar.store import StoreWriter, open_store

pytestmark = pytest.mark.integration


def rules(url: str, twins: str) -> SidecarConfig:
    return parse_config(f"prometheus: {{url: '{url}', timeout: 2s, max_concurrency: 4}}\ninterval: 1s\n"
                        f"backfill: 0\ntwins:\n{twins}", path="test.yaml", env={})


@pytest.fixture
async def client(prom_env: PromEnv) -> AsyncIterator[PrometheusClient]:
    async with PrometheusClient(rules(prom_env.url, "  - {name: x, metrics: {a: up}}\n").prometheus) as c:
        yield c


def engine_for(cfg: SidecarConfig) -> Engine:
    return Engine(EngineSettings(horizons_s=cfg.horizons_s))


def last(engine: Engine, twin: str, metric: str) -> float:
    return float(engine.history(twin)[metric][1][-1])


async def wait_count(prom_env: PromEnv, promql: str, count: int) -> None:
    deadline = time.monotonic() + 30
    while len(prom_env.prom.query(promql)) != count:
        assert time.monotonic() < deadline, f"{promql} never returned {count} series"
        await asyncio.sleep(0.3)


def collision_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "names collide" in r.getMessage()]


# --------------------------------------------------------------------------- unique names

PODS = ['q"x', "q_x", "ü", "ä", "😀", "q x", "q/x", "plain"]


async def test_every_distinct_label_set_gets_its_own_twin(prom_env: PromEnv, client: PrometheusClient,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    for i, pod in enumerate(PODS):
        prom_env.target.set("rv2_names_up", 1.0, pod=pod)
        prom_env.target.set("rv2_names_load", 10.0 + i, pod=pod)
    prom_env.prom.wait_for_series("rv2_names_load", count=len(PODS))
    cfg = rules(prom_env.url, """\
  - name: r
    discover: 'rv2_names_up'
    name_labels: [pod]
    metrics: {load: 'rv2_names_load{pod="$pod"}'}
""")
    engine = engine_for(cfg)
    sched = Scheduler(cfg, engine, client, ServiceStatus(config_loaded=True))
    for _ in range(3):
        await sched.run_round()
    twins = {t.labels["pod"]: t.name for t in engine.twins()}
    assert sorted(twins) == sorted(PODS)                                 # 8 pods, 8 twins
    for i, pod in enumerate(PODS):
        assert last(engine, twins[pod], "load") == 10.0 + i             # each twin reads its own series
        assert twins[pod] == discovered_name(cfg.twins[0], {"pod": pod})   # a function of the labels: stable
    assert twins["q_x"] == "r@q_x" and twins["plain"] == "r@plain"     # names that needed no change keep them
    for pod in ('q"x', "ü", "ä", "😀", "q x", "q/x"):
        assert re.fullmatch(r"r@[A-Za-z0-9_.:@,=-]+~[0-9a-f]{8}", twins[pod]), twins[pod]
    assert not collision_warnings(caplog)


async def test_a_name_collision_is_resolved_with_a_hash_and_logged_once(
        prom_env: PromEnv, client: PrometheusClient, caplog: pytest.LogCaptureFixture) -> None:
    prom_env.target.set("rv2_pair", 1.0, a="x,y", b="z")
    prom_env.target.set("rv2_pair", 2.0, a="x", b="y,z")
    prom_env.prom.wait_for_series("rv2_pair", count=2)
    cfg = rules(prom_env.url, """\
  - name: p
    discover: 'rv2_pair'
    name_labels: [a, b]
    metrics: {v: 'rv2_pair{a="$a", b="$b"}'}
""")
    engine = engine_for(cfg)
    sched = Scheduler(cfg, engine, client, ServiceStatus(config_loaded=True))
    caplog.set_level(logging.WARNING, logger="sidecar.collect")
    for _ in range(3):
        await sched.run_round()
    by_a = {t.labels["a"]: t.name for t in engine.twins()}
    assert len(by_a) == 2
    names = sorted(by_a.values())
    assert names[0] == "p@x,y,z" and re.fullmatch(r"p@x,y,z~[0-9a-f]{16}", names[1])
    assert last(engine, by_a["x,y"], "v") == 1.0 and last(engine, by_a["x"], "v") == 2.0
    warned = collision_warnings(caplog)
    assert len(warned) == 1 and warned[0].__dict__["collides_with"] == "p@x,y,z"


async def test_sharded_two_label_sets_that_join_to_one_name_never_share_it(
        prom_env: PromEnv, client: PrometheusClient) -> None:
    """Each shard sees one of the pair, so neither can see the collision: sharded, such names carry their hash."""
    prom_env.target.set("rv3_pair", 1.0, a="x,y", b="z")
    prom_env.target.set("rv3_pair", 2.0, a="x", b="y,z")
    prom_env.target.set("rv3_pair", 3.0, a="plain", b="q")
    prom_env.prom.wait_for_series("rv3_pair", count=3)
    names: dict[str, str] = {}
    for index in range(3):
        cfg = dataclasses.replace(rules(prom_env.url, """\
  - name: p
    discover: 'rv3_pair'
    name_labels: [a, b]
    metrics: {v: 'rv3_pair{a="$a", b="$b"}'}
"""), shard=ShardConfig(index, 3))
        engine = engine_for(cfg)
        await Scheduler(cfg, engine, client, ServiceStatus(config_loaded=True)).run_round()
        for t in engine.twins():
            assert t.labels["a"] not in names, "a label set twinned by two shards"
            names[t.labels["a"]] = t.name
    assert set(names) == {"x,y", "x", "plain"}
    assert len(set(names.values())) == 3 and names["plain"] == "p@plain,q"
    assert all(re.fullmatch(r"p@x,y,z~[0-9a-f]{8}", names[a]) for a in ("x,y", "x"))


async def test_a_twin_named_by_an_older_version_keeps_its_name(prom_env: PromEnv, client: PrometheusClient,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """Before hashes, ``q"x`` was named ``r@q_x``: restored from the store, it keeps that name and state."""
    prom_env.target.set("rv2_old_up", 1.0, pod='q"x')
    prom_env.target.set("rv2_old_up", 2.0, pod="q_x")
    prom_env.prom.wait_for_series("rv2_old_up", count=2)
    cfg = rules(prom_env.url, """\
  - name: r
    discover: 'rv2_old_up'
    name_labels: [pod]
    metrics: {v: 'rv2_old_up{pod="$pod"}'}
""")
    engine = engine_for(cfg)
    old = engine.create_twin("r@q_x", at=time.time() - 60, labels={"pod": 'q"x'}, expected={"v": 5.0})
    sched = Scheduler(cfg, engine, client, ServiceStatus(config_loaded=True))
    caplog.set_level(logging.WARNING, logger="sidecar.collect")
    await sched.run_round()
    await sched.run_round()
    by_pod = {t.labels["pod"]: t for t in engine.twins()}
    assert by_pod['q"x'].twin_id == old.twin_id and by_pod['q"x'].expected_state == {"v": 5.0}
    assert last(engine, "r@q_x", "v") == 1.0
    assert by_pod["q_x"].name.startswith(f"r@q_x{HASH_MARK}") and last(engine, by_pod["q_x"].name, "v") == 2.0
    assert len(collision_warnings(caplog)) == 1


# --------------------------------------------------------------------------- a flap keeps the twin's state


async def test_a_twin_back_after_retirement_has_its_state_back(prom_env: PromEnv, client: PrometheusClient,
                                                               tmp_path: Path) -> None:
    for pod in ("a", "b"):
        prom_env.target.set("rv2_flap_up", 1.0, pod=pod)
        prom_env.target.set("rv2_flap_load", 50.0, pod=pod)
    prom_env.prom.wait_for_series("rv2_flap_load", count=2)
    cfg = rules(prom_env.url, """\
  - name: f
    discover: 'rv2_flap_up'
    name_labels: [pod]
    metrics: {cpu_usage: 'rv2_flap_load{pod="$pod"}'}
""")
    engine = engine_for(cfg)
    status = ServiceStatus(config_loaded=True)
    store = open_store(path=str(tmp_path / "twins.db"), env={})
    await store.open()
    writer = StoreWriter(store, status)
    await writer.start()
    try:
        sched = Scheduler(cfg, engine, client, status, writer=writer)
        for i in range(12):
            prom_env.target.set("rv2_flap_load", 50.0 + i % 3, pod="a")
            await sched.run_round()
            await asyncio.sleep(0.05)
        engine.set_expected_state("f@a", {"cpu_usage": 40.0}, at=time.time())    # what PUT …/expected does
        tid = engine.get("f@a").twin_id
        samples_before = engine.history("f@a")["cpu_usage"][0].size
        learnt_before = int(decode(engine.export_model_states()[tid]).forecast["core.n"][0])
        assert learnt_before >= 10

        prom_env.target.remove("rv2_flap_up", pod="a")
        prom_env.target.remove("rv2_flap_load", pod="a")
        await wait_count(prom_env, "rv2_flap_up", 1)
        for _ in range(RETIRE_AFTER_ROUNDS):
            await sched.run_round()
        assert [t.name for t in engine.twins()] == ["f@b"]
        await writer.flush(10)
        assert {t.name for t in await store.load_twins()} == {"f@b"}            # the store marked it retired

        prom_env.target.set("rv2_flap_up", 1.0, pod="a")
        prom_env.target.set("rv2_flap_load", 51.0, pod="a")
        await wait_count(prom_env, "rv2_flap_up", 2)
        await sched.run_round()
        back = engine.get("f@a")
        assert back.twin_id == tid and back.expected_state == {"cpu_usage": 40.0}
        times, values = engine.history("f@a")["cpu_usage"]
        assert times.size == samples_before + 1 and values[-1] == 51.0      # its history, and the new sample
        # the models go on from what they had learnt (a fresh twin would have learnt one sample)
        assert int(decode(engine.export_model_states()[tid]).forecast["core.n"][0]) == learnt_before + 1
        reasons = [s.change_reason for s in back.state_history]
        assert "retired" in reasons and any("returned" in r for r in reasons)
        assert status.query_errors[("f@a", "cpu_usage")] == 0

        # and the store has it back, so a restart restores it too
        await writer.flush(10)
        stored = {t.name: t for t in await store.load_twins()}
        assert set(stored) == {"f@a", "f@b"}
        assert stored["f@a"].definition["expected_state"] == {"cpu_usage": 40.0}
    finally:
        await writer.close()


# --------------------------------------------------------------------------- counters of restored twins


async def test_query_error_counters_exist_for_restored_twins(prom_env: PromEnv, client: PrometheusClient,
                                                             tmp_path: Path) -> None:
    prom_env.target.set("rv2_cnt_up", 1.0, inst="x")
    prom_env.target.set("rv2_cnt_static", 3.0)
    prom_env.prom.wait_for_series("rv2_cnt_up")
    prom_env.prom.wait_for_series("rv2_cnt_static")
    cfg = rules(prom_env.url, """\
  - name: s
    metrics: {c: 'rv2_cnt_static'}
  - name: d
    discover: 'rv2_cnt_up'
    name_labels: [inst]
    metrics: {c: 'rv2_cnt_up{inst="$inst"}'}
""")
    db = str(tmp_path / "twins.db")
    # a first run creates the twins (and d@y, whose series is gone by the restart) and stores them
    first = engine_for(cfg)
    first.create_twin("d@y", at=time.time(), labels={"inst": "y"})
    status = ServiceStatus(config_loaded=True)
    store = open_store(path=db, env={})
    writer = StoreWriter(store, status)
    await writer.start()
    await Scheduler(cfg, first, client, status, writer=writer).run_round()
    await writer.flush(10)
    await writer.close()

    # the restart: every stored twin is restored before the first round, as the service does
    store = open_store(path=db, env={})
    await store.open()
    try:
        restored = await store.load_twins()
        assert {t.name for t in restored} == {"s", "d@x", "d@y"}
        engine = engine_for(cfg)
        for rt in restored:
            if rt.name != "d@y":
                engine.restore_twin(rt.definition, snapshots=rt.snapshots, corrections=rt.corrections)
        status = ServiceStatus(config_loaded=True)
        sched = Scheduler(cfg, engine, client, status)
        await sched.run_round()
        assert status.query_errors[("s", "c")] == 0 and ("s", "c") in status.query_errors
        assert ("d@x", "c") in status.query_errors

        # a twin restored later (the store came back after the start), whose series then appears
        late = next(rt for rt in restored if rt.name == "d@y")
        engine.restore_twin(late.definition, snapshots=late.snapshots, corrections=late.corrections)
        prom_env.target.set("rv2_cnt_up", 1.0, inst="y")
        try:
            await wait_count(prom_env, "rv2_cnt_up", 2)
            await sched.run_round()
        finally:
            prom_env.target.remove("rv2_cnt_up", inst="y")
        assert engine.get("d@y").twin_id == late.twin_id
        registry = CollectorRegistry()
        install_exporter(registry, view=engine.view, status=status, export=ExportOptions(query_errors=True))
        errors = {(smp.labels["twin"], smp.labels["metric"]): smp.value
                  for fam in text_string_to_metric_families(render(registry).decode())
                  for smp in fam.samples if smp.name == "twin_query_errors_total"}
        assert errors == {("s", "c"): 0.0, ("d@x", "c"): 0.0, ("d@y", "c"): 0.0}
    finally:
        await store.close()


async def test_retired_twins_are_kept_only_so_long_and_so_many(prom_env: PromEnv, client: PrometheusClient) -> None:
    pods = ("a", "b")
    for pod in pods:
        prom_env.target.set("rv2_keep_up", 1.0, pod=pod)
    prom_env.prom.wait_for_series("rv2_keep_up", count=2)
    cfg = rules(prom_env.url, """\
  - name: k
    discover: 'rv2_keep_up'
    name_labels: [pod]
    metrics: {c: 'rv2_keep_up{pod="$pod"}'}
""")
    cfg = dataclasses.replace(cfg, retired=RetiredConfig(keep_for_s=2.0, keep_max=1))
    engine = engine_for(cfg)
    sched = Scheduler(cfg, engine, client, ServiceStatus(config_loaded=True))

    async def flap(pause: float) -> dict[str, bool]:
        """Both series go, both twins retire, both come back after ``pause``: which got their state back?"""
        await sched.run_round()
        for pod in pods:
            engine.set_expected_state(f"k@{pod}", {"c": 1.0}, at=time.time())
            prom_env.target.remove("rv2_keep_up", pod=pod)
        await wait_count(prom_env, "rv2_keep_up", 0)
        for _ in range(RETIRE_AFTER_ROUNDS):
            await sched.run_round()
        assert engine.twins() == []
        await asyncio.sleep(pause)
        for pod in pods:
            prom_env.target.set("rv2_keep_up", 1.0, pod=pod)
        await wait_count(prom_env, "rv2_keep_up", 2)
        await sched.run_round()
        return {pod: engine.get(f"k@{pod}").expected_state is not None for pod in pods}

    assert sorted((await flap(0.0)).values()) == [False, True]      # only one kept (retired.keep_max)
    assert await flap(2.5) == {"a": False, "b": False}              # kept no longer than retired.keep_for
