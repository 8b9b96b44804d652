"""The loop guard against renamed own series: a recording rule and metric_relabel_configs, on a real Prometheus.

A real engine's exporter output is scraped twice by a real Prometheus: as is (job ``sidecar``, with a recording
rule ``job:forecast:max`` over ``twin_forecast``) and renamed ``twin_* -> sc_*`` by metric_relabel_configs (job
``sidecar_relabelled``). Queries naming those series with the sidecar's labels are refused at load; queries that
do not name them but return them with their labels are dropped at run time, counted and logged once per episode.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from prometheus_client import CollectorRegistry

from sidecar import loopguard
from sidecar.collect.scheduler import Scheduler
from sidecar.config import SidecarConfig, parse_config
from sidecar.contract import EXPORTED_METRICS, ExportOptions
from sidecar.engine.core import Engine
from sidecar.engine.settings import EngineSettings
from sidecar.errors import ConfigError
from sidecar.exporter import install_exporter, render
from sidecar.prometheus import PrometheusClient
from sidecar.status import ServiceStatus
from sidecar.testing import MetricsTarget, PrometheusServer, prometheus_available

pytestmark = pytest.mark.integration

RULES = """\
groups:
  - name: loop
    rules:
      - record: job:forecast:max
        expr: 'max by (twin, metric) (twin_forecast{horizon="5m"})'
"""
HONEST = "# TYPE rv2_honest gauge\nrv2_honest 7\n"


def exporter_body() -> str:
    """What a real sidecar with one twin ``direct`` puts on /metrics (forecasts warm), every family exported."""
    engine = Engine()
    engine.create_twin("direct", at=0.0)
    now = time.time()
    for i in range(40):
        engine.sync("direct", {"cpu_usage": 50.0 + i % 3}, at=now - 600 + 15 * i)
    registry = CollectorRegistry()
    install_exporter(registry, view=engine.view, status=ServiceStatus(), export=ExportOptions.everything())
    return render(registry).decode()


class Env:
    def __init__(self, prom: PrometheusServer, target: MetricsTarget, body: str) -> None:
        self.prom, self.target, self.body = prom, target, body

    def wait(self, promql: str, *, empty: bool = False, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while bool(self.prom.query(promql)) == empty:
            assert time.monotonic() < deadline, f"{promql} never became {'empty' if empty else 'present'}"
            time.sleep(0.3)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    if not prometheus_available():
        pytest.fail("these tests need a real Prometheus: apt-get install -y prometheus", pytrace=False)
    body = exporter_body()
    with MetricsTarget() as target:
        target.set_raw(body + HONEST)
        scrape = [
            {"job_name": "sidecar", "static_configs": [{"targets": [target.address]}]},
            {"job_name": "sidecar_relabelled", "static_configs": [{"targets": [target.address]}],
             "metric_relabel_configs": [{"source_labels": ["__name__"], "regex": "twin_(.*)",
                                         "target_label": "__name__", "replacement": "sc_$1"}]},
        ]
        with PrometheusServer(scrape_configs=scrape, rules=RULES) as prom:
            e = Env(prom, target, body)
            e.wait('job:forecast:max{twin="direct"}')
            e.wait('sc_actual{twin="direct"}')
            yield e


def rules(url: str, twins: str, *, backfill: str = "0") -> SidecarConfig:
    return parse_config(f"prometheus: {{url: '{url}', timeout: 2s}}\ninterval: 1s\nbackfill: {backfill}\n"
                        f"twins:\n{twins}", path="test.yaml", env={})


@pytest.fixture
async def client(env: Env) -> AsyncIterator[PrometheusClient]:
    async with PrometheusClient(rules(env.prom.url, "  - {name: x, metrics: {a: up}}\n").prometheus) as c:
        yield c


def guard_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("loop guard")]


@pytest.mark.parametrize("query", [
    'job:forecast:max{twin="direct",metric="cpu_usage"}',
    'max(sc_actual{twin="direct",metric="cpu_usage"})',
    'avg_over_time(sc_forecast{twin=~"d.*", horizon="5m"}[1m])',
])
def test_renamed_own_series_selected_by_their_labels_are_refused_at_load(env: Env, query: str) -> None:
    # the repro is real: Prometheus answers these with the sidecar's own numbers
    answer = env.prom.query(query)
    assert answer and float(answer[0]["value"][1]) > 0
    with pytest.raises(ConfigError, match=r"refused: .*matches on twin and (metric|horizon).*label signature"):
        rules(env.prom.url, f"  - name: t\n    metrics: {{cpu_usage: '{query}'}}\n")


def test_the_signature_labels_follow_the_exporter() -> None:
    with_twin = {label for spec in EXPORTED_METRICS if "twin" in spec.labels for label in spec.labels}
    assert loopguard.COMPANION_LABELS == with_twin - {"twin"} >= {"metric", "horizon"}
    loopguard.check_query('label_replace(up, "twin", "$1", "job", "(.*)")')     # a label named twin alone is fine
    loopguard.check_query('up{twin="", metric="a"}')                            # twin="" excludes the sidecar


async def test_returned_own_series_are_dropped_counted_and_logged_once_per_episode(
        env: Env, client: PrometheusClient, caplog: pytest.LogCaptureFixture) -> None:
    # none of these name the sidecar's series with its labels, so they pass the load-time check ...
    cfg = rules(env.prom.url, """\
  - name: victim
    metrics:
      recorded: 'max by (twin, metric) (job:forecast:max)'
      relabelled: 'sum by (twin, metric) (sc_actual)'
      honest: 'max(rv2_honest)'
""", backfill="30s")
    engine = Engine(EngineSettings(horizons_s=cfg.horizons_s))
    status = ServiceStatus(config_loaded=True)
    sched = Scheduler(cfg, engine, client, status)
    caplog.set_level(logging.WARNING, logger="sidecar.collect")
    # ... and what they return carries the sidecar's signature: the backfill and every round drop it
    env.wait("job:forecast:max offset 5s")          # the backfill's range holds some of both
    env.wait("sc_actual offset 5s")
    await sched.backfill()
    backfilled = status.dropped_own_series_total
    assert backfilled == 2, caplog.text
    for _ in range(3):
        report = await sched.run_round()
        assert report.dropped_own == 2 and report.source_up
    assert status.dropped_own_series_total == backfilled + 6
    history = engine.history("victim")
    assert "recorded" not in history or history["recorded"][0].size == 0
    assert "relabelled" not in history or history["relabelled"][0].size == 0
    assert history["honest"][1][-1] == 7.0
    warned = guard_warnings(caplog)
    assert sorted(r.__dict__["metric"] for r in warned) == ["recorded", "relabelled"]       # once each, not per round
    assert all(r.__dict__["twin"] == "victim" and r.__dict__["query"] for r in warned)

    # the episode ends when an answer no longer carries them, and a new one is logged again
    env.target.set_raw(HONEST)
    try:
        env.wait("job:forecast:max", empty=True)
        env.wait("sc_actual", empty=True)
        report = await sched.run_round()
        assert report.dropped_own == 0
        assert len(guard_warnings(caplog)) == 2
    finally:
        env.target.set_raw(env.body + HONEST)
    env.wait("job:forecast:max")
    env.wait("sc_actual")
    report = await sched.run_round()
    assert report.dropped_own == 2
    assert len(guard_warnings(caplog)) == 4


async def test_discovery_over_renamed_own_series_creates_no_twins(env: Env, client: PrometheusClient) -> None:
    cfg = rules(env.prom.url, """\
  - name: fam
    discover: 'count by (twin, metric) (sc_actual)'
    metrics: {c: 'max(rv2_honest)'}
""")
    engine = Engine(EngineSettings(horizons_s=cfg.horizons_s))
    status = ServiceStatus(config_loaded=True)
    await Scheduler(cfg, engine, client, status).run_round()
    assert engine.twins() == [] and status.dropped_own_series_total == 1


async def test_the_sidecars_scrape_identity_is_refused_when_known(env: Env, client: PrometheusClient) -> None:
    cfg = rules(env.prom.url, "  - name: t\n    metrics: {honest: 'max by (job) (rv2_honest{job=\"sidecar\"})'}\n")
    for identities, dropped in (((), 0), (({"job": "sidecar"},), 1)):
        engine = Engine(EngineSettings(horizons_s=cfg.horizons_s))
        status = ServiceStatus(config_loaded=True)
        sched = Scheduler(cfg, engine, client, status, own_identities=identities)
        report = await sched.run_round()
        assert report.dropped_own == dropped
        samples = engine.history("t").get("honest")
        assert (0 if samples is None else samples[0].size) == 1 - dropped


@pytest.mark.parametrize("name", ["sc_actual", "sc_forecast", "job:forecast:max"])
def test_a_companion_required_empty_reads_none_of_the_renamed_series_and_passes(env: Env, name: str) -> None:
    """``metric=""`` (or ``=~""``, ``!~".+"``) cannot return what carries ``metric``: every renamed sidecar series
    here does, so Prometheus answers nothing and the rules file takes the query; ``=~"|cpu_usage"`` answers
    with the sidecar's own numbers and is refused."""
    for empty in ('metric=""', 'metric=~""', 'metric!~".+"'):
        query = f'{name}{{twin!="", {empty}}}'
        assert env.prom.query(query) == [], query
        rules(env.prom.url, f"  - name: t\n    metrics: {{c: '{query}'}}\n")
    loop = f'{name}{{twin!="", metric=~"|cpu_usage"}}'
    assert env.prom.query(loop)                                # the repro is real
    with pytest.raises(ConfigError, match="label signature"):
        rules(env.prom.url, f"  - name: t\n    metrics: {{c: '{loop}'}}\n")
