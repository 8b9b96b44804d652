"""Three knobs that were constants: storage.commit_wait, retired.keep_for/keep_max, prometheus.self_labels."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from helpers.chart import by_kind, render
from helpers.prom import PromEnv

from sidecar.app import STORE_WAIT_S, Service, _BufferedHistory, start_service
from sidecar.collect.naming import naming_key
from sidecar.collect.restore import Parked
from sidecar.collect.scheduler import Scheduler
from sidecar.collect.targets import Target
from sidecar.config import RetiredConfig, SidecarConfig, load_config, parse_config
from sidecar.engine.core import Engine
from sidecar.engine.settings import EngineSettings
from sidecar.errors import ConfigError
from sidecar.prometheus import PrometheusClient
from sidecar.status import ServiceStatus

TWIN = "twins:\n  - name: a\n    metrics: {c: up}\n"


# --------------------------------------------------------------------------- parsing


def test_the_three_knobs_default_to_the_old_constants() -> None:
    cfg = parse_config(TWIN, env={})
    assert cfg.storage.commit_wait_s == 3.0 == STORE_WAIT_S
    assert cfg.retired == RetiredConfig(keep_for_s=3600.0, keep_max=500)
    assert cfg.prometheus.self_labels == ()


def test_the_three_knobs_parse() -> None:
    cfg = parse_config("prometheus: {self_labels: {job: twin-sidecar, namespace: monitoring}}\n"
                       "storage: {commit_wait: 500ms}\nretired: {keep_for: 10m, keep_max: 0}\n" + TWIN, env={})
    assert cfg.storage.commit_wait_s == 0.5
    assert (cfg.retired.keep_for_s, cfg.retired.keep_max) == (600.0, 0)
    assert [dict(i) for i in cfg.prometheus.self_labels] == [{"job": "twin-sidecar", "namespace": "monitoring"}]
    listed = parse_config("prometheus:\n  self_labels:\n    - {job: a}\n    - {job: b, shard: 7}\n"
                          "storage: {commit_wait: 0s}\nretired: {keep_for: 0}\n" + TWIN, env={})
    assert [dict(i) for i in listed.prometheus.self_labels] == [{"job": "a"}, {"job": "b", "shard": "7"}]
    assert listed.storage.commit_wait_s == 0.0 and listed.retired == RetiredConfig(keep_for_s=0.0, keep_max=500)
    assert parse_config("storage: {commit_wait: 1m}\n" + TWIN, env={}).storage.commit_wait_s == 60.0


@pytest.mark.parametrize(("text", "line", "key", "expected"), [
    ("storage:\n  commit_wait: 61s\n", 2, "storage.commit_wait", "expected at most 1m, got 61s"),
    ("storage:\n  commit_wait: 3\n", 2, "storage.commit_wait", "duration like 15s"),
    ("storage:\n  commit_wait: soon\n", 2, "storage.commit_wait", "duration like 15s"),
    ("retired:\n  keep_for: forever\n", 2, "retired.keep_for", "duration like 15s"),
    ("retired:\n  keep_max: -1\n", 2, "retired.keep_max", "integer >= 0"),
    ("retired:\n  keep_max: 1.5\n", 2, "retired.keep_max", "integer >= 0"),
    ("retired:\n  keep_maxx: 5\n", 2, "retired.keep_maxx", "unknown key (known keys here: keep_for, keep_max)"),
    ("retired: 1h\n", 1, "retired", "expected a mapping"),
    ("prometheus:\n  self_labels: twin-sidecar\n", 2, "prometheus.self_labels", "expected a mapping"),
    ("prometheus:\n  self_labels: {}\n", 2, "prometheus.self_labels", "at least one label"),
    ("prometheus:\n  self_labels:\n    job-name: x\n", 3, "prometheus.self_labels.job-name",
     "Prometheus label name"),
    ("prometheus:\n  self_labels:\n    __name__: up\n", 3, "prometheus.self_labels.__name__", "not starting with __"),
    ("prometheus:\n  self_labels:\n    job: ''\n", 3, "prometheus.self_labels.job", "non-empty label value"),
    ("prometheus:\n  self_labels:\n    job: [a]\n", 3, "prometheus.self_labels.job", "non-empty label value"),
    ("prometheus:\n  self_labels:\n    - {job: a}\n    - job\n", 4, "prometheus.self_labels[1]",
     "expected a mapping"),
    ("prometheus:\n  self_labels:\n    - {job: a}\n    - {job: b, job: c}\n", 4, "prometheus.self_labels[1].job",
     "duplicate key"),
])
def test_a_bad_knob_names_file_line_and_key(text: str, line: int, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text + TWIN, path="rules.yaml", env={})
    err = info.value
    assert (err.path, err.line, err.key) == ("rules.yaml", line, key), str(err)
    assert expected in str(err) and str(err).startswith(f"rules.yaml:{line}: {key}: ")


# --------------------------------------------------------------------------- retired twins kept (scheduler logic)

FAMILY = "  - name: fam\n    discover: 'up'\n    name_labels: [pod]\n    metrics: {c: 'up{pod=\"$pod\"}'}\n"


@pytest.fixture
async def unused_client() -> AsyncIterator[PrometheusClient]:
    """A client the unit tests below hand to the scheduler and never use (nothing listens there)."""
    async with PrometheusClient(parse_config(TWIN, env={}).prometheus) as c:
        yield c


def scheduler_with(retired: str, client: PrometheusClient) -> tuple[Scheduler, SidecarConfig]:
    cfg = parse_config(f"retired: {retired}\nbackfill: 0\ntwins:\n{FAMILY}", env={})
    engine = Engine(EngineSettings(horizons_s=cfg.horizons_s))
    return Scheduler(cfg, engine, client, ServiceStatus(config_loaded=True)), cfg


def parked(pod: str, at: float) -> Parked:
    return Parked(rule="fam", key=(("pod", pod),), at=at, definition={}, snapshots=[], corrections=[],
                   samples={}, models=None)


async def test_retired_twins_are_forgotten_after_keep_for_and_beyond_keep_max(
        unused_client: PrometheusClient) -> None:
    sched, _ = scheduler_with("{keep_for: 10s, keep_max: 2}", unused_client)
    assert (sched.retired.keep_for_s, sched.retired.keep_max) == (10.0, 2)
    for i, pod in enumerate("abc"):
        sched.retired.parked[f"fam@{pod}"] = parked(pod, at=100.0 + i)
    sched.retired.expire(105.0)
    assert list(sched.retired.parked) == ["fam@b", "fam@c"]            # the oldest beyond keep_max goes first
    sched.retired.expire(111.0)
    assert list(sched.retired.parked) == ["fam@b", "fam@c"]            # b retired 10 s ago: still within keep_for
    sched.retired.expire(111.5)
    assert list(sched.retired.parked) == ["fam@c"]
    sched.retired.expire(112.5)
    assert sched.retired.parked == {}


@pytest.mark.parametrize(("retired", "kept"), [
    ("{keep_for: 1h, keep_max: 1}", True), ("{keep_for: 0s}", False), ("{keep_max: 0}", False)])
async def test_retiring_keeps_the_twin_only_when_keeping_is_enabled(
        unused_client: PrometheusClient, retired: str, kept: bool) -> None:
    sched, cfg = scheduler_with(retired, unused_client)
    rule, at = cfg.twins[0], time.time()
    labels = {"pod": "p1", "job": "x"}
    target = Target("fam@p1", rule, {"c": 'up{pod="p1"}'}, labels, key=naming_key(rule, labels))
    assert sched.roster.ensure_twin(target.name, target, at)
    sched.engine.sync(target.name, {"c": 2.0}, at=at)           # expected values are for metrics the twin has
    sched.engine.set_expected_state(target.name, {"c": 1.0}, at=at)
    sched.roster.targets[target.name] = target
    sched.retired.park(sched.roster.targets, [target.name], at)
    assert (target.name in sched.retired.parked) is kept
    if kept:
        assert sched.retired.parked[target.name].definition["expected_state"] == {"c": 1.0}   # what comes back


# --------------------------------------------------------------------------- through start_service


async def wait_for(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.05)


@pytest.fixture
async def started() -> AsyncIterator[list[Service]]:
    services: list[Service] = []
    yield services
    for svc in services:
        await svc.shutdown()


@pytest.mark.integration
async def test_commit_wait_reaches_the_api_wrapper(tmp_path: Path, prom_env: PromEnv,
                                                   started: list[Service]) -> None:
    """0s: the PUT answers before its commit (202, stored false); the default waits for it (200)."""
    for wait, status in (("0s", 202), (None, 200)):
        path = tmp_path / f"wait-{wait}"
        path.mkdir()
        storage = f"{{path: '{path / 'twins.db'}'" + (f", commit_wait: {wait}}}" if wait else "}")
        cfg = parse_config(f"prometheus: {{url: '{prom_env.url}', timeout: 2s}}\ninterval: 1s\nbackfill: 0\n"
                           f"storage: {storage}\ntwins:\n  - name: svc\n    metrics: {{c: 'max(up)'}}\n", env={})
        svc = await start_service(cfg, port=0)
        started.append(svc)
        history = svc.facade.store
        assert isinstance(history, _BufferedHistory)
        assert history.wait_s == (0.0 if wait else STORE_WAIT_S)
        await wait_for(lambda s=svc: s.status.first_round_done and s.status.store_backlog == 0)
        async with httpx.AsyncClient(base_url=svc.url, timeout=10) as http:
            resp = await http.put("/api/v1/twins/svc/expected", json={"c": 2.0})
        assert resp.status_code == status, resp.text
        assert resp.json()["stored"] is (status == 200)


# --------------------------------------------------------------------------- the loop guard's scrape identity


@pytest.mark.integration
async def test_self_labels_drop_a_real_series_carrying_that_job(tmp_path: Path, prom_env: PromEnv,
                                                                started: list[Service]) -> None:
    """The session Prometheus scrapes its target as job="target": named in self_labels, that target is "us"."""
    assert {s["metric"].get("job") for s in prom_env.prom.query('test_gauge{k="a"}')} == {"target"}
    metrics = "{own: 'test_gauge{k=\"a\"}', other: 'sum(test_gauge{k=\"a\"})'}"
    counts = []
    for extra in ("", ", self_labels: {job: target}"):
        path = tmp_path / f"run{len(counts)}"
        path.mkdir()
        cfg = parse_config(f"prometheus: {{url: '{prom_env.url}', timeout: 2s{extra}}}\ninterval: 1s\nbackfill: 0\n"
                           f"storage: {{path: '{path / 'twins.db'}'}}\n"
                           f"twins:\n  - name: svc\n    metrics: {metrics}\n", env={})
        svc = await start_service(cfg, port=0)
        started.append(svc)
        assert svc.scheduler.guard.identities == tuple(dict(i) for i in cfg.prometheus.self_labels)
        await wait_for(lambda s=svc: s.status.first_round_done)
        history = svc.engine.history("svc")
        own = history.get("own")
        assert float(history["other"][1][-1]) == 1.5        # the aggregate carries no job label: kept
        counts.append((0 if own is None else int(np.asarray(own[1]).size), svc.status.dropped_own_series_total))
        async with httpx.AsyncClient(base_url=svc.url, timeout=10) as http:
            exported = (await http.get("/metrics")).text
        dropped = [line for line in exported.splitlines() if line.startswith("twin_dropped_own_series_total")]
        assert dropped and float(dropped[0].split()[-1]) == svc.status.dropped_own_series_total
    (kept_samples, kept_dropped), (own_samples, own_dropped) = counts
    assert kept_samples >= 1 and kept_dropped == 0
    assert own_samples == 0 and own_dropped >= 1


# --------------------------------------------------------------------------- the chart sets self_labels


def rules_of(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: yaml.safe_load(d["data"]["rules.yaml"]) for d in by_kind(docs, "ConfigMap")
            if "rules.yaml" in d.get("data", {})}


def test_the_chart_names_each_instance_by_the_job_its_service_monitor_gives(helm: str) -> None:
    chart = Path(__file__).resolve().parents[2] / "deploy" / "helm"
    on = ("--set", "serviceMonitor.enabled=true")
    assert all("self_labels" not in r["prometheus"] for r in rules_of(render(helm)).values())  # nothing scrapes it
    docs = render(helm, *on, "-f", str(chart / "examples" / "shards.yaml"))
    services = {s["metadata"]["name"] for s in by_kind(docs, "Service")}
    jobs = {name: r["prometheus"]["self_labels"] for name, r in rules_of(docs).items()}
    assert len(jobs) == 2 and all(list(j) == ["job"] for j in jobs.values())
    assert {f"{j['job']}-rules" for j in jobs.values()} == set(jobs) and {j["job"] for j in jobs.values()} <= services
    fixed = rules_of(render(helm, *on, "--set", "serviceMonitor.relabelings[0].targetLabel=job",
                           "--set", "serviceMonitor.relabelings[0].replacement=sidecars"))
    assert [r["prometheus"]["self_labels"] for r in fixed.values()] == [{"job": "sidecars"}]
    unknown = rules_of(render(helm, *on, "--set", "serviceMonitor.relabelings[0].targetLabel=job",
                             "--set", "serviceMonitor.relabelings[0].sourceLabels[0]=__meta_kubernetes_pod_name"))
    assert all("self_labels" not in r["prometheus"] for r in unknown.values())
    own = rules_of(render(helm, *on, "--set", "config.prometheus.self_labels.team=mine"))
    assert [r["prometheus"]["self_labels"] for r in own.values()] == [{"team": "mine"}]


def test_a_backfill_of_more_than_80640_intervals_is_refused_at_load(tmp_path: Path) -> None:
    """Split into parts a long backfill is fetched, but every step is a tick of every model before the first round."""
    p = tmp_path / "rules.yaml"
    p.write_text("interval: 1s\nbackfill: 30d\ntwins:\n  - name: a\n    metrics: {cpu_usage: up}\n")
    with pytest.raises(ConfigError, match=r"rules.yaml:2: backfill: at most 80,640 intervals"):
        load_config(p, env={})
    p.write_text("interval: 15s\nbackfill: 14d\ntwins:\n  - name: a\n    metrics: {cpu_usage: up}\n")
    assert load_config(p, env={}).backfill_s == 14 * 86400
