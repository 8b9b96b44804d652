"""The query loop against a real Prometheus (and a real proxy in front of it that can misbehave)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
from aiohttp import web
from helpers.prom import PromEnv

from sidecar.collect.naming import discovered_name, substitute
from sidecar.collect.roster import RETIRE_AFTER_ROUNDS
from sidecar.collect.scheduler import Scheduler
from sidecar.config import SidecarConfig, parse_config
from sidecar.engine.core import Engine
from sidecar.engine.settings import EngineSettings
from sidecar.engine.view import Outbox
from sidecar.prometheus import PrometheusClient
from sidecar.status import ServiceStatus
from sidecar.testing import free_port

pytestmark = pytest.mark.integration


def rules(url: str, twins: str, *, extra: str = "", interval: str = "1s",
          backfill: str = "0") -> SidecarConfig:
    text = f"prometheus: {{url: '{url}', timeout: 2s, max_concurrency: 4}}\ninterval: {interval}\n" \
           f"backfill: {backfill}\ntwins:\n{twins}{extra}"
    return parse_config(text, path="test.yaml", env={})


class Sink:
    def __init__(self) -> None:
        self.outboxes: list[Outbox] = []

    def submit(self, outbox: Outbox) -> None:
        self.outboxes.append(outbox)


def make(cfg: SidecarConfig, client: PrometheusClient) -> tuple[Scheduler, Engine, ServiceStatus, Sink]:
    # history for a 2 h backfill read back whole (the default keeps 1 h: limits.history)
    engine = Engine(EngineSettings(horizons_s=cfg.horizons_s, history_size=1000))
    status = ServiceStatus(config_loaded=True)
    sink = Sink()
    return Scheduler(cfg, engine, client, status, writer=sink), engine, status, sink


def last_value(engine: Engine, twin: str, metric: str) -> float:
    _times, values = engine.history(twin)[metric]
    return float(values[-1])


@pytest.fixture
async def client(prom_env: PromEnv) -> AsyncIterator[PrometheusClient]:
    async with PrometheusClient(parse_config(
            f"prometheus: {{url: '{prom_env.url}', timeout: 2s, max_concurrency: 4}}\n"
            "twins: [{name: x, metrics: {a: up}}]\n", env={}).prometheus) as c:
        yield c


# --------------------------------------------------------------------------- a normal round


async def test_round_feeds_every_twin_in_one_ingest(prom_env: PromEnv, client: PrometheusClient) -> None:
    prom_env.target.set("sched_cpu", 42.0, svc="a")
    prom_env.target.set("sched_mem", 61.0, svc="a")
    prom_env.target.set("sched_cpu", 7.0, svc="b")
    prom_env.prom.wait_for_series('sched_cpu{svc="b"}')
    cfg = rules(prom_env.url, """\
  - name: a
    metrics: {cpu_usage: 'sched_cpu{svc="a"}', memory_usage: 'sched_mem{svc="a"}'}
  - name: b
    metrics: {cpu_usage: 'sched_cpu{svc="b"}', memory_usage: 'sched_mem{svc="b"}'}
""")
    sched, engine, status, sink = make(cfg, client)
    calls: list[int] = []
    real_ingest = engine.ingest

    def counting(series: np.ndarray, values: np.ndarray, **kw: Any) -> Any:
        calls.append(len(series))
        return real_ingest(series, values, **kw)

    engine.ingest = counting  # type: ignore[method-assign]
    at = time.time()
    report = await sched.run_round(at=at)
    assert calls == [3]                       # one vectorised call; b's memory has no series (no sample)
    assert report.queries == 4 and report.answered == 4 and report.failed == 0 and report.accepted == 3
    assert report.source_up and status.source_up and status.first_round_done and status.rounds_total == 1
    assert last_value(engine, "a", "cpu_usage") == 42.0 and last_value(engine, "a", "memory_usage") == 61.0
    assert last_value(engine, "b", "cpu_usage") == 7.0
    times, _ = engine.history("a")["cpu_usage"]
    assert times[-1] == at                    # stamped with the query's evaluation time
    assert sink.outboxes and any(o.twins for o in sink.outboxes)


async def test_each_twin_gets_the_horizons_its_rule_asks_for(prom_env: PromEnv, client: PrometheusClient) -> None:
    prom_env.target.set("sched_cpu", 42.0, svc="a")
    prom_env.prom.wait_for_series('sched_cpu{svc="a"}')
    cfg = rules(prom_env.url, """\
  - name: short
    metrics: {cpu_usage: 'sched_cpu{svc="a"}'}
    horizons: [1m, 5m]
  - name: long
    metrics: {cpu_usage: 'sched_cpu{svc="a"}'}
    horizons: [5m, 1h]
""")
    sched, engine, _status, _sink = make(cfg, client)
    assert engine.horizons_s.tolist() == [60.0, 300.0, 3600.0]      # the union, forecast once
    await sched.run_round(at=time.time())
    assert [p.horizon_seconds for p in engine.predictions("short")] == [60.0, 300.0]
    assert [p.horizon_seconds for p in engine.predictions("long")] == [300.0, 3600.0]


async def test_a_query_returning_several_series_is_an_error_for_that_metric_only(
        prom_env: PromEnv, client: PrometheusClient) -> None:
    prom_env.target.set("sched_multi", 1.0, k="x")
    prom_env.target.set("sched_multi", 2.0, k="y")
    prom_env.prom.wait_for_series("sched_multi", count=2)
    cfg = rules(prom_env.url, """\
  - name: m
    metrics: {many: 'sched_multi', one: 'sum(sched_multi)'}
""")
    sched, engine, status, _ = make(cfg, client)
    report = await sched.run_round()
    assert report.failed == 1 and report.accepted == 1 and report.source_up
    assert status.query_errors[("m", "many")] == 1 and status.query_errors[("m", "one")] == 0
    assert last_value(engine, "m", "one") == 3.0


async def test_runtime_guard_drops_series_named_like_our_own(
        prom_env: PromEnv, client: PrometheusClient) -> None:
    prom_env.target.set("sched_renamed", 5.0)
    prom_env.prom.wait_for_series("sched_renamed")
    # label_replace can give a result any __name__: the query text passes the config guard, the result
    # carries twin_fake, and only the run-time guard can catch it
    cfg = rules(prom_env.url, """\
  - name: g
    metrics:
      sneaky: 'label_replace(sched_renamed, "__name__", "twin_fake", "", "")'
      honest: 'sched_renamed'
""")
    sched, engine, status, _ = make(cfg, client)
    report = await sched.run_round()
    assert report.dropped_own == 1 and status.dropped_own_series_total == 1
    assert "sneaky" not in engine.history("g") or engine.history("g")["sneaky"][0].size == 0
    assert last_value(engine, "g", "honest") == 5.0


# --------------------------------------------------------------------------- discovery


async def test_discovery_creates_and_retires_twins(prom_env: PromEnv, client: PrometheusClient) -> None:
    for inst in ("i1", "i2"):
        prom_env.target.set("sched_up", 1.0, inst=inst)
        prom_env.target.set("sched_load", 10.0 if inst == "i1" else 20.0, inst=inst)
    prom_env.prom.wait_for_series("sched_up", count=2)
    cfg = rules(prom_env.url, """\
  - name: fleet
    system_type: worker
    discover: 'sched_up'
    name_labels: [inst]
    metrics: {cpu_usage: 'sched_load{inst="$inst"}'}
    limits: {cpu_usage: 90}
""")
    sched, engine, status, _ = make(cfg, client)
    await sched.run_round()
    assert sorted(t.name for t in engine.twins()) == ["fleet@i1", "fleet@i2"]
    assert last_value(engine, "fleet@i1", "cpu_usage") == 10.0
    assert last_value(engine, "fleet@i2", "cpu_usage") == 20.0
    twin = engine.get("fleet@i2")
    assert twin.labels["inst"] == "i2" and twin.limits == {"cpu_usage": 90.0}
    assert twin.system_type.value == "worker"

    prom_env.target.remove("sched_up", inst="i2")
    deadline = time.monotonic() + 30
    while len(prom_env.prom.query("sched_up")) != 1:   # wait for Prometheus to mark the series stale
        assert time.monotonic() < deadline
        await asyncio.sleep(0.3)
    for i in range(RETIRE_AFTER_ROUNDS - 1):
        await sched.run_round()
        assert "fleet@i2" in {t.name for t in engine.twins()}, f"retired too early (round {i})"
    await sched.run_round()
    assert [t.name for t in engine.twins()] == ["fleet@i1"]
    assert status.source_up


def test_substitute_escapes_for_the_quote_it_sits_in() -> None:
    labels = {"instance": 'a"b\\c', "pod": "p'1", "job": "j"}
    assert substitute('up{instance="$instance"}', labels) == 'up{instance="a\\"b\\\\c"}'
    assert substitute("up{pod='${pod}'}", labels) == "up{pod='p\\'1'}"
    assert substitute("up{job=`$job`, x=\"$missing\"}", labels) == 'up{job=`j`, x=""}'
    assert substitute('up{a="$1 end$"}', labels) == 'up{a="$1 end$"}'     # regex anchors untouched
    with pytest.raises(ValueError):
        substitute("up{job=`$job`}", {"job": "a`b"})


def test_discovered_names_are_url_safe() -> None:
    cfg = rules("http://127.0.0.1:1", "  - name: r\n    discover: up\n    metrics: {c: up}\n")
    assert discovered_name(cfg.twins[0], {"__name__": "up", "job": "j", "instance": "h:80"}) == "r@h:80,j"
    # a replaced character makes the name end in a hash of the original values: h/1 and h_1 stay two twins
    slashed = discovered_name(cfg.twins[0], {"__name__": "up", "job": "j", "instance": "h/1:80"})
    assert re.fullmatch(r"r@h_1:80,j~[0-9a-f]{8}", slashed)
    assert slashed != discovered_name(cfg.twins[0], {"job": "j", "instance": "h_1:80"})


# --------------------------------------------------------------------------- backfill


async def test_backfill_loads_history_in_time_order(prom_env: PromEnv, client: PrometheusClient) -> None:
    cfg = rules(prom_env.url, """\
  - name: hist
    metrics: {ramp: 'test_history{series="ramp"}'}
""", interval="15s", backfill="2h")
    sched, engine, status, _ = make(cfg, client)
    accepted = await sched.backfill()
    times, values = engine.history("hist")["ramp"]
    assert accepted == times.size > 100
    assert np.all(np.diff(times) > 0)
    # the ramp rises by one per 15 s step from history_start; Prometheus' lookback repeats the last value
    # for 5 minutes after the history ends
    idx = np.minimum((times - prom_env.history_start) / prom_env.step, prom_env.points - 1)
    assert np.array_equal(values, np.floor(idx + 1e-9))
    assert not status.first_round_done          # backfill is not a round


# --------------------------------------------------------------------------- a misbehaving source


class FlakyProxy:
    """A real HTTP server in front of the real Prometheus that can be made to fail in each way."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.mode = "ok"             # ok | 503 | garbage | hang | down
        self.refuse: str | None = None   # queries equal to (or containing) this get an execution error
        self.refuse_exact = False
        self._release = asyncio.Event()
        self.requests = 0
        self.port = free_port()
        self._runner: web.AppRunner | None = None
        self._http = httpx.AsyncClient(base_url=upstream)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.mode == "503":
            return web.Response(status=503, text="<html>upstream overloaded</html>")
        if self.mode == "garbage":
            return web.Response(status=200, body=b'{"status": "success", "data": {"resultTy',
                                content_type="application/json")
        if self.mode == "hang":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), 30)
        body = await request.read()
        query = (await request.post()).get("query", "")
        if self.refuse is not None and (query == self.refuse if self.refuse_exact else self.refuse in query):
            return web.json_response({"status": "error", "errorType": "execution", "error": "refused"},
                                     status=422)
        resp = await self._http.post(request.path, content=body,
                                     headers={"Content-Type": request.headers["Content-Type"]})
        return web.Response(status=resp.status_code, body=resp.content, content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def close(self) -> None:
        self._release.set()
        await self.stop()
        await self._http.aclose()


@pytest.fixture
async def proxy(prom_env: PromEnv) -> AsyncIterator[FlakyProxy]:
    p = FlakyProxy(prom_env.url)
    await p.start()
    yield p
    await p.close()


async def test_a_family_query_without_placeholders_runs_once_and_is_dealt_out(
        prom_env: PromEnv, client: PrometheusClient) -> None:
    for inst, v in (("s1", 11.0), ("s2", 22.0), ("s3", 33.0)):
        prom_env.target.set("sched_fam_up", 1.0, inst=inst)
        prom_env.target.set("sched_fam_load", v, inst=inst, core="0")
        prom_env.target.set("sched_fam_load", 1.0, inst=inst, core="1")
    prom_env.prom.wait_for_series("sched_fam_load", count=6)
    cfg = rules(prom_env.url, """\
  - name: fam
    discover: 'sched_fam_up'
    name_labels: [inst]
    metrics:
      load: 'sum by (inst) (sched_fam_load)'
      core0: 'sched_fam_load{inst="$inst", core="0"}'
      unsplit: 'sum(sched_fam_load)'
""")
    sched, engine, status, _ = make(cfg, client)
    report = await sched.run_round()
    assert report.queries == 3 + 2          # three per-twin queries (core0) + two shared ones
    assert {t.name for t in engine.twins()} == {"fam@s1", "fam@s2", "fam@s3"}
    for inst, v in (("s1", 11.0), ("s2", 22.0), ("s3", 33.0)):
        assert last_value(engine, f"fam@{inst}", "load") == v + 1.0
        assert last_value(engine, f"fam@{inst}", "core0") == v
        assert engine.history(f"fam@{inst}")["unsplit"][0].size == 0   # no inst label: belongs to no twin
        assert status.query_errors[(f"fam@{inst}", "load")] == 0


async def test_a_metric_query_that_is_the_discovery_query_is_answered_once_a_round(
        prom_env: PromEnv, client: PrometheusClient, monkeypatch: pytest.MonkeyPatch) -> None:
    for inst, v in (("s1", 11.0), ("s2", 22.0)):
        prom_env.target.set("sched_same_busy", v, inst=inst)
        prom_env.target.set("sched_same_load", 2 * v, inst=inst)
    prom_env.prom.wait_for_series("sched_same_load", count=2)
    cfg = rules(prom_env.url, """\
  - name: same
    discover: 'sched_same_busy'
    name_labels: [inst]
    metrics:
      busy: 'sched_same_busy'
      load: 'sched_same_load'
""")
    sched, engine, status, _ = make(cfg, client)
    asked: list[str] = []
    query = client.query

    async def counted(promql: str, **kw: Any) -> Any:
        asked.append(promql)
        return await query(promql, **kw)

    monkeypatch.setattr(client, "query", counted)
    for _ in range(2):
        report = await sched.run_round()
        assert report.queries == 2 and report.answered == 2
    assert sorted(asked) == ["sched_same_busy"] * 2 + ["sched_same_load"] * 2    # the discovery's, once a round
    for inst, v in (("s1", 11.0), ("s2", 22.0)):
        assert last_value(engine, f"same@{inst}", "busy") == v
        assert last_value(engine, f"same@{inst}", "load") == 2 * v
        assert status.query_errors[(f"same@{inst}", "busy")] == 0


async def test_failed_discovery_keeps_the_twins(prom_env: PromEnv, proxy: FlakyProxy) -> None:
    prom_env.target.set("sched_up2", 1.0, inst="z")
    prom_env.prom.wait_for_series("sched_up2")
    cfg = rules(proxy.url, """\
  - name: d
    discover: 'sched_up2'
    name_labels: [inst]
    metrics: {c: 'sched_up2{inst="$inst"}'}
""")
    async with PrometheusClient(cfg.prometheus) as c:
        sched, engine, status, _ = make(cfg, c)
        await sched.run_round()
        assert [t.name for t in engine.twins()] == ["d@z"]
        proxy.refuse = "sched_up2"                       # Prometheus now refuses the discovery query
        proxy.refuse_exact = True
        for _ in range(RETIRE_AFTER_ROUNDS + 1):
            report = await sched.run_round()
            assert report.source_up
        assert [t.name for t in engine.twins()] == ["d@z"]
        assert status.query_errors[("d", "discover")] == RETIRE_AFTER_ROUNDS + 1


@pytest.mark.parametrize("mode", ["down", "503", "garbage", "hang"])
async def test_source_failure_keeps_state_logs_once_and_recovers(
        prom_env: PromEnv, proxy: FlakyProxy, mode: str, caplog: pytest.LogCaptureFixture) -> None:
    prom_env.target.set("sched_flaky", 3.0)
    prom_env.prom.wait_for_series("sched_flaky")
    twins = "".join(f"  - name: f{i}\n    metrics: {{c: 'sched_flaky + {i}'}}\n" for i in range(12))
    cfg = rules(proxy.url, twins)
    async with PrometheusClient(cfg.prometheus) as c:
        sched, engine, status, _ = make(cfg, c)
        await sched.run_round()
        assert status.source_up and last_value(engine, "f5", "c") == 8.0
        view_before = engine.view()

        if mode == "down":
            await proxy.stop()
        else:
            proxy.mode = mode
        caplog.set_level(logging.INFO, logger="sidecar.collect")
        caplog.clear()
        sent_before = proxy.requests
        for _ in range(3):
            report = await sched.run_round()
            assert not report.source_up and not status.source_up
        # the service still serves what it knew
        assert engine.view().twin_names == view_before.twin_names
        assert last_value(engine, "f5", "c") == 8.0
        assert status.query_errors[("f5", "c")] == 3
        errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(errors) == 1 and "unreachable" in errors[0].getMessage()     # once per streak
        if mode != "down":
            # the first failing round stops early (breaker), later ones send one probe each
            assert proxy.requests - sent_before < 12 + 2

        if mode == "down":
            await proxy.start()
        proxy.mode = "ok"
        report = await sched.run_round()
        assert report.source_up and status.source_up and report.accepted == 12
        assert any("reachable again" in r.getMessage() for r in caplog.records)
        # one line for the source coming back, not one per query (12 here, 100 for 20 twins in a review)
        assert not any(r.getMessage() == "query recovered" for r in caplog.records)


async def test_run_loop_stops_promptly_on_stop(prom_env: PromEnv, client: PrometheusClient) -> None:
    prom_env.target.set("sched_loop", 1.0)
    prom_env.prom.wait_for_series("sched_loop")
    cfg = rules(prom_env.url, "  - name: l\n    metrics: {c: sched_loop}\n", interval="30s")
    sched, _engine, status, sink = make(cfg, client)
    stop = asyncio.Event()
    task = asyncio.create_task(sched.run(stop))
    while not status.first_round_done:
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 5)           # does not sleep out the 30 s interval
    assert status.rounds_total == 1 and sink.outboxes


async def test_standing_scenarios_fill_the_status(prom_env: PromEnv, client: PrometheusClient) -> None:
    prom_env.target.set("sched_sim_cpu", 30.0)
    prom_env.prom.wait_for_series("sched_sim_cpu")
    cfg = rules(prom_env.url, "  - name: s\n    metrics: {cpu_usage: sched_sim_cpu}\n    replicas: 2\n",
                extra="scenarios:\n  - name: spike\n    twin: s\n    every: 5m\n"
                      "    scenario: {type: traffic_spike, traffic_multiplier: 3, duration_minutes: 10}\n")
    sched, _engine, status, _ = make(cfg, client)
    for i in range(3):
        await sched.run_round(at=time.time() + i)
    now = time.time()
    assert await sched.run_scenarios(now) == 1
    p = status.simulation_failure_probability[("s", "spike")]
    assert 0.0 <= p <= 1.0 and math.isfinite(p)
    assert await sched.run_scenarios(now + 1) == 0          # not due again for 5 minutes
    assert await sched.run_scenarios(now + 301) == 1


#: A twin whose history lets the capacity fit be trusted: the preloaded ramp as its request rate (20 … 259 req/s,
#: plenty of load variation) and a CPU that follows it (utilisation law, a little sin() scatter so the slope's
#: t-statistic is finite), backfilled over the hour Prometheus holds (6h back: the
#: session's history stays inside the window however late in the run the test comes).
RAMP = 'test_history{series="ramp"}'


def fitted(ramp: str = RAMP) -> str:
    return f"""\
    metrics: {{cpu_usage: '5 + 0.3 * ({ramp} + 20) + sin({ramp})'}}
    request_rate: '{ramp} + 20'
    replicas: 2
    workers: 1
"""


#: The same CPU without a request rate: the simulation still answers, but its capacity is assumed, a guess.
GUESSED = f"""\
    metrics: {{cpu_usage: '5 + 0.3 * ({RAMP} + 20) + sin({RAMP})'}}
    replicas: 2
"""
SPIKE = ("scenarios:\n  - name: spike\n    twin: all\n    every: 5m\n"
         "    scenario: {type: traffic_spike, traffic_multiplier: 3, duration_minutes: 10}\n")


def scraped(status: ServiceStatus, engine: Engine, name: str) -> dict[tuple[str, str], float]:
    """(twin, scenario) -> value of ``name`` on a real scrape of the real collector over this status."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.parser import text_string_to_metric_families

    from sidecar.exporter import install_exporter, render

    registry = CollectorRegistry()
    install_exporter(registry, view=engine.view, status=status)
    return {(s.labels["twin"], s.labels["scenario"]): s.value
            for f in text_string_to_metric_families(render(registry).decode()) for s in f.samples if s.name == name}


async def test_standing_scenarios_export_whether_the_fit_behind_them_is_trustworthy(
        prom_env: PromEnv, client: PrometheusClient, caplog: pytest.LogCaptureFixture) -> None:
    cfg = rules(prom_env.url, f"  - name: fitted\n{fitted()}  - name: guessed\n{GUESSED}", extra=SPIKE,
                interval="15s", backfill="6h")
    sched, engine, status, _ = make(cfg, client)
    assert await sched.backfill() > 0
    caplog.set_level(logging.INFO, logger="sidecar.collect")
    now = time.time()
    assert await sched.run_scenarios(now) == 2
    # the engine's own verdict on the same history, for the same scenario: what the gauge must say
    verdicts = {twin: engine.simulate(twin, dict(cfg.scenarios[0].scenario), at=now, seed=0, replicas=2,
                                      workers=1 if twin == "fitted" else None)["model_fit"]
                for twin in ("fitted", "guessed")}
    assert verdicts["fitted"]["trustworthy"] is True, verdicts["fitted"]["reason"]
    assert verdicts["guessed"]["trustworthy"] is False
    assert status.simulation_fit_trustworthy == {("fitted", "spike"): True, ("guessed", "spike"): False}
    assert set(status.simulation_failure_probability) == set(status.simulation_fit_trustworthy)
    assert scraped(status, engine, "twin_simulation_fit_trustworthy") == {("fitted", "spike"): 1.0,
                                                                         ("guessed", "spike"): 0.0}
    # the untrusted verdict is logged once with the fit's reason (the gauge cannot carry it), a trusted one not
    lines = [r for r in caplog.records if r.getMessage().startswith("standing scenario fit")]
    assert [(r.getMessage(), getattr(r, "twin", None)) for r in lines] == [
        ("standing scenario fit not trustworthy", "guessed")]
    assert getattr(lines[0], "reason", "") == verdicts["guessed"]["reason"]
    assert await sched.run_scenarios(now + 301) == 2
    assert len([r for r in caplog.records if r.getMessage().startswith("standing scenario fit")]) == 1


async def test_a_retired_twin_takes_its_fit_verdict_with_its_scenario_results(
        prom_env: PromEnv, client: PrometheusClient) -> None:
    for inst in ("i1", "i2"):
        prom_env.target.set("sched_fit_up", 1.0, inst=inst)
    prom_env.prom.wait_for_series("sched_fit_up", count=2)
    # each member's own copy of the ramp, labelled with its inst (a family's queries are matched by its labels)
    ramp = f'label_replace({RAMP}, "inst", "$inst", "", "")'
    cfg = rules(prom_env.url, f"  - name: fleet\n    discover: 'sched_fit_up'\n    name_labels: [inst]\n{fitted(ramp)}",
                extra=SPIKE.replace("twin: all", "twin: fleet"), interval="15s", backfill="6h")
    sched, engine, status, _ = make(cfg, client)
    assert await sched.backfill() > 0
    assert await sched.run_scenarios(time.time()) == 2
    keys = {("fleet@i1", "spike"), ("fleet@i2", "spike")}
    assert set(status.simulation_fit_trustworthy) == set(status.simulation_failure_probability) == keys
    assert set(scraped(status, engine, "twin_simulation_fit_trustworthy")) == keys

    prom_env.target.remove("sched_fit_up", inst="i2")
    deadline = time.monotonic() + 30
    while len(prom_env.prom.query("sched_fit_up")) != 1:   # wait for Prometheus to mark the series stale
        assert time.monotonic() < deadline
        await asyncio.sleep(0.3)
    for _ in range(RETIRE_AFTER_ROUNDS):
        await sched.run_round()
    assert [t.name for t in engine.twins()] == ["fleet@i1"]
    gone = ("fleet@i2", "spike")
    for d in (status.simulation_fit_trustworthy, status.simulation_failure_probability,
              status.simulation_breaking_multiplier):
        assert gone not in d
    assert set(scraped(status, engine, "twin_simulation_fit_trustworthy")) == {("fleet@i1", "spike")}
    assert set(scraped(status, engine, "twin_simulation_failure_probability")) == {("fleet@i1", "spike")}
