"""A metric whose query never returns a sample, on a real Prometheus: said in the log and on /metrics, never 0.

Its query returns no series (a typo'd label, a metric that does not exist) or only NaN (0/0): the engine still
holds a divergence severity of 0 for it, which must not be exported as ``twin_divergence_severity 0`` ("on
target") with nothing in the log. It exports none of its values, ``twin_metric_has_data 0`` (what the
TwinMetricNoData alert reads), and the scheduler logs one warning per streak naming twin, metric and query.
A backfill query refused because it returns several series names twin, metric and why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import pytest
from helpers.prom import PromEnv
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from sidecar.collect.scheduler import Scheduler
from sidecar.collect.streaks import NO_DATA_ROUNDS
from sidecar.config import SidecarConfig, parse_config
from sidecar.contract import ExportOptions
from sidecar.engine.core import Engine
from sidecar.engine.settings import EngineSettings
from sidecar.exporter import install_exporter, render
from sidecar.prometheus import PrometheusClient
from sidecar.status import ServiceStatus

pytestmark = pytest.mark.integration

NO_DATA = "query returns no data"
HAS_DATA = "query has data again"


def rules(url: str, twins: str, *, interval: str = "1s", backfill: str = "0") -> SidecarConfig:
    text = f"prometheus: {{url: '{url}', timeout: 2s, max_concurrency: 4}}\ninterval: {interval}\n" \
           f"backfill: {backfill}\ntwins:\n{twins}"
    return parse_config(text, path="test.yaml", env={})


def make(cfg: SidecarConfig, client: PrometheusClient) -> tuple[Scheduler, Engine]:
    engine = Engine(EngineSettings(horizons_s=cfg.horizons_s))
    return Scheduler(cfg, engine, client, ServiceStatus(config_loaded=True)), engine


@pytest.fixture
async def client(prom_env: PromEnv) -> AsyncIterator[PrometheusClient]:
    async with PrometheusClient(rules(prom_env.url, "  - {name: x, metrics: {a: up}}\n").prometheus) as c:
        yield c


def scraped(engine: Engine) -> dict[tuple[str, str, str], float]:
    """(family, twin, metric) -> value of every per-metric series on a real scrape of the real collector."""
    registry = CollectorRegistry()
    install_exporter(registry, view=engine.view, status=ServiceStatus(), export=ExportOptions.everything())
    return {(s.name, s.labels["twin"], s.labels["metric"]): s.value
            for f in text_string_to_metric_families(render(registry).decode()) for s in f.samples
            if "metric" in s.labels and "horizon" not in s.labels}


def told(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == message]


async def test_a_metric_without_data_exports_no_values_has_data_0_and_is_logged_once(
        prom_env: PromEnv, client: PrometheusClient, caplog: pytest.LogCaptureFixture) -> None:
    prom_env.target.set("nodata_cpu", 40.0, svc="a")
    prom_env.prom.wait_for_series('nodata_cpu{svc="a"}')
    typo = 'nodata_cpu{svc="typo"}'
    nan = 'nodata_cpu{svc="a"} * 0 / 0'
    late = 'nodata_late{svc="a"}'
    cfg = rules(prom_env.url, f"""\
  - name: a
    metrics: {{cpu_usage: 'nodata_cpu{{svc="a"}}', typo: '{typo}', ratio: '{nan}', late: '{late}'}}
    expected: {{typo: 10}}
""")
    sched, engine = make(cfg, client)
    caplog.set_level(logging.INFO, logger="sidecar.collect")
    for _ in range(NO_DATA_ROUNDS - 1):
        await sched.run_round()
    assert not told(caplog, NO_DATA)                      # a fresh rate() may be empty for a round or two

    await sched.run_round()
    lines = {r.__dict__["metric"]: r.__dict__ for r in told(caplog, NO_DATA)}
    assert set(lines) == {"typo", "ratio", "late"}
    assert all(r.levelno == logging.WARNING for r in told(caplog, NO_DATA))
    assert lines["typo"]["twin"] == "a" and lines["typo"]["query"] == typo
    assert lines["typo"]["answer"] == "no series" and lines["typo"]["empty_rounds"] == NO_DATA_ROUNDS
    assert lines["ratio"]["query"] == nan and lines["ratio"]["answer"] == "only NaN/Inf values"

    got = scraped(engine)
    assert got[("twin_metric_has_data", "a", "cpu_usage")] == 1.0
    for metric in ("typo", "ratio", "late"):
        assert got[("twin_metric_has_data", "a", metric)] == 0.0
        assert got[("twin_metric_last_sample_timestamp_seconds", "a", metric)] == 0.0   # the default's has-data
        # nothing measured against a value never seen: no "severity 0", not even the hand-set expected value
        assert not [k for k in got if k[2] == metric and k[0] not in (
            "twin_metric_has_data", "twin_metric_last_sample_timestamp_seconds")], metric
    assert ("twin_divergence_severity", "a", "cpu_usage") in got and ("twin_actual", "a", "cpu_usage") in got

    for _ in range(3):
        await sched.run_round()
    assert len(told(caplog, NO_DATA)) == 3                # once per streak, not per round

    prom_env.target.set("nodata_late", 7.0, svc="a")       # the series appears: the streak ends, said at info
    prom_env.prom.wait_for_series(late)
    await sched.run_round()
    (back,) = told(caplog, HAS_DATA)
    assert back.levelno == logging.INFO and back.__dict__["metric"] == "late"
    assert back.__dict__["empty_rounds"] >= NO_DATA_ROUNDS + 3
    got = scraped(engine)
    assert got[("twin_metric_has_data", "a", "late")] == 1.0 and got[("twin_actual", "a", "late")] == 7.0
    assert ("twin_divergence_severity", "a", "late") in got
    assert got[("twin_metric_has_data", "a", "typo")] == 0.0


async def test_a_family_query_without_data_is_told_once_for_the_rule_and_per_twin_when_it_misses_one(
        prom_env: PromEnv, client: PrometheusClient, caplog: pytest.LogCaptureFixture) -> None:
    for inst in ("n1", "n2"):
        prom_env.target.set("nodata_fam_up", 1.0, inst=inst)
    prom_env.target.set("nodata_fam_load", 5.0, inst="n1")      # n2 has none
    prom_env.prom.wait_for_series("nodata_fam_load")
    prom_env.prom.wait_for_series("nodata_fam_up", count=2)
    cfg = rules(prom_env.url, """\
  - name: fam
    discover: 'nodata_fam_up'
    name_labels: [inst]
    metrics:
      load: 'sum by (inst) (nodata_fam_load)'
      gone: 'sum by (inst) (nodata_fam_nothing)'
""")
    sched, engine = make(cfg, client)
    caplog.set_level(logging.INFO, logger="sidecar.collect")
    for _ in range(NO_DATA_ROUNDS + 2):
        await sched.run_round()
    lines = sorted((r.__dict__["twin"], r.__dict__["metric"]) for r in told(caplog, NO_DATA))
    # "gone" returns nothing at all: one line for the rule, not one per twin; "load" misses n2 alone
    assert lines == [("fam", "gone"), ("fam@n2", "load")]
    got = scraped(engine)
    assert got[("twin_metric_has_data", "fam@n1", "load")] == 1.0
    assert got[("twin_metric_has_data", "fam@n2", "load")] == 0.0
    assert got[("twin_metric_has_data", "fam@n1", "gone")] == 0.0
    assert ("twin_divergence_severity", "fam@n2", "load") not in got


async def test_a_backfill_query_returning_several_series_names_twin_metric_and_why(
        prom_env: PromEnv, client: PrometheusClient, caplog: pytest.LogCaptureFixture) -> None:
    """The log says why, not `backfill done queries=1 failed=1` alone."""
    cfg = rules(prom_env.url, "  - name: many\n    metrics: {hist: 'test_history'}\n", interval="15s", backfill="6h")
    sched, _ = make(cfg, client)
    caplog.set_level(logging.INFO, logger="sidecar.collect")
    assert await sched.backfill(now=time.time()) == 0
    (line,) = told(caplog, "backfill query failed")
    rec = line.__dict__
    assert line.levelno == logging.WARNING
    assert rec["twin"] == "many" and rec["metric"] == "hist" and rec["query"] == "test_history"
    assert rec["error"].startswith("query returned 2 series; a twin metric needs exactly one")
    (done,) = told(caplog, "backfill done")
    assert done.__dict__["failed"] == 1


async def test_a_family_member_with_several_series_in_a_shared_backfill_query_is_named(
        prom_env: PromEnv, client: PrometheusClient, caplog: pytest.LogCaptureFixture) -> None:
    prom_env.target.set("nodata_bf_up", 1.0, inst="b1")
    prom_env.prom.wait_for_series("nodata_bf_up")
    # every history series gets inst="b1": twin fam@b1 gets two series from the shared query
    shared = 'label_replace(test_history, "inst", "b1", "", "")'
    cfg = rules(prom_env.url, f"""\
  - name: fam
    discover: 'nodata_bf_up'
    name_labels: [inst]
    metrics: {{hist: '{shared}'}}
""", interval="15s", backfill="6h")
    sched, _ = make(cfg, client)
    caplog.set_level(logging.INFO, logger="sidecar.collect")
    await sched.backfill(now=time.time())
    (line,) = told(caplog, "backfill query failed")
    rec = line.__dict__
    assert rec["twin"] == "fam@b1" and rec["rule"] == "fam" and rec["metric"] == "hist"
    assert rec["query"] == shared and rec["error"].startswith("query returned 2 series")
