"""Export cardinality: the default /metrics set per twin, what each ``export:`` key adds, and its config errors.

Prometheus pays per series it ingests, so the default export is the set the dashboard and the shipped alerts
read (≤ 25 series per twin of 4 metrics) and everything else is one ``export:`` key away.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import promql_parser
import pytest
from helpers.bench import load_benchmark
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from sidecar.alerts import render_rules
from sidecar.config import load_config, parse_config
from sidecar.contract import EXPORT_OPTIONS, EXPORTED_METRICS, METRICS_BY_NAME, ExportOptions
from sidecar.engine.core import Engine
from sidecar.errors import ConfigError
from sidecar.exporter import install_exporter, render
from sidecar.status import ServiceStatus

T0 = 1.7e9
METRICS = ("cpu_usage", "memory_usage", "error_rate", "request_latency_ms")


def _engine(*, breach: bool = True) -> Engine:
    """A real engine with one twin of 4 metrics after 60 rounds; cpu_usage rises towards its limit (95 %), or
    stays flat far below it."""
    engine = Engine()
    engine.create_twin("checkout-api", at=T0, limits={"cpu_usage": 95.0}, expected={"cpu_usage": 40.0})
    for i in range(60):
        engine.sync("checkout-api", {"cpu_usage": 40.0 + (0.9 * i if breach else i % 2),
                                     "memory_usage": 60.0 + (i % 3),
                                     "error_rate": 0.01 * (i % 2), "request_latency_ms": 120.0 + (i % 5)},
                    at=T0 + 15.0 * i)
    return engine


def scrape_series(engine: Engine, export: ExportOptions | None = None) -> list[tuple[str, dict[str, str]]]:
    """(name, labels) of every sample of twin checkout-api on a real scrape of the real collector."""
    registry = CollectorRegistry()
    status = ServiceStatus(source_up=True)
    for metric in METRICS:                   # as the scheduler holds them: 0 for every metric it queries
        status.query_errors[("checkout-api", metric)] += 0
    install_exporter(registry, view=engine.view, status=status, export=export)
    return [(s.name, s.labels) for f in text_string_to_metric_families(render(registry).decode())
            for s in f.samples if s.labels.get("twin") == "checkout-api"]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return _engine()


def test_default_export_is_at_most_25_series_per_twin_of_4_metrics(engine: Engine) -> None:
    series = scrape_series(engine)
    per_family = Counter(name for name, _ in series)
    assert len(series) <= 25, per_family
    # forecast with its bounds at one horizon (the shortest), per metric
    for name in ("twin_forecast", "twin_forecast_lower", "twin_forecast_upper"):
        assert per_family[name] == 4 and {lab["horizon"] for n, lab in series if n == name} == {"5m"}
    assert per_family["twin_divergence_severity"] == per_family["twin_anomaly_score"] == 4
    assert per_family["twin_health_score"] == per_family["twin_drift"] == 1
    assert per_family["twin_last_sync_timestamp_seconds"] == 1
    assert per_family["twin_breach_eta_seconds"] == 1                     # cpu_usage, forecast to cross 95
    assert per_family["twin_metric_last_sample_timestamp_seconds"] == 0   # every metric syncs with its twin
    assert per_family["twin_query_errors_total"] == 0                     # no query has failed
    assert not [n for n in per_family if METRICS_BY_NAME[n].option is not None]


def test_without_a_forecast_breach_the_default_is_23(engine: Engine) -> None:
    assert len(scrape_series(_engine(breach=False))) == 23


def test_a_metric_behind_its_twin_or_without_data_adds_its_last_sample_time() -> None:
    engine = _engine(breach=False)
    at = T0 + 15.0 * 60
    before = len(scrape_series(engine))
    # the next round as before, but cpu_usage's query returned nothing
    engine.sync("checkout-api", {"memory_usage": 60.0, "error_rate": 0.0, "request_latency_ms": 120.0}, at=at)
    engine.create_twin("fresh", at=at)
    series = scrape_series(engine)
    rows = [lab["metric"] for n, lab in series if n == "twin_metric_last_sample_timestamp_seconds"]
    assert rows == ["cpu_usage"] and len(series) == before + 1 == 24


def test_a_failed_query_adds_its_error_counter(engine: Engine) -> None:
    registry = CollectorRegistry()
    status = ServiceStatus(source_up=True)
    status.query_errors[("checkout-api", "cpu_usage")] += 2
    status.query_errors[("checkout-api", "error_rate")] += 0
    install_exporter(registry, view=engine.view, status=status)
    errors = [(s.labels["metric"], s.value) for f in text_string_to_metric_families(render(registry).decode())
              for s in f.samples if s.name == "twin_query_errors_total"]
    assert errors == [("cpu_usage", 2.0)]


# one key, one family: (options, family added, series added for this 4-metric twin)
OPTIONS = [
    (ExportOptions(confidence=True), "twin_confidence", 4),
    (ExportOptions(actual=True), "twin_actual", 4),
    (ExportOptions(expected=True), "twin_expected", 4),
    (ExportOptions(divergence_ratio=True), "twin_divergence_ratio", 4),
    (ExportOptions(has_data=True), "twin_metric_has_data", 4),
    (ExportOptions(last_sample=True), "twin_metric_last_sample_timestamp_seconds", 4),
    (ExportOptions(query_errors=True), "twin_query_errors_total", 4),
]


@pytest.mark.parametrize(("options", "family", "added"), OPTIONS, ids=[o[1] for o in OPTIONS])
def test_each_option_adds_exactly_its_family(engine: Engine, options: ExportOptions, family: str,
                                             added: int) -> None:
    default = scrape_series(engine)
    more = scrape_series(engine, options)
    extra = [s for s in more if s not in default]
    assert len(more) - len(default) == added
    assert {n for n, _ in extra} == {family}
    assert all(s in more for s in default)


def test_horizons_option_adds_forecast_horizons_only(engine: Engine) -> None:
    default = scrape_series(engine)
    for options, horizons in ((ExportOptions(horizons_s=(900.0, 3600.0)), {"15m", "60m"}),
                              (ExportOptions(all_horizons=True), {"5m", "15m", "30m", "60m"})):
        more = scrape_series(engine, options)
        fc = [(n, lab) for n, lab in more if "horizon" in lab]
        assert {lab["horizon"] for _, lab in fc} == horizons
        assert len(fc) == 3 * 4 * len(horizons)
        assert [s for s in more if "horizon" not in s[1]] == [s for s in default if "horizon" not in s[1]]


def test_confidence_follows_the_exported_horizons(engine: Engine) -> None:
    series = scrape_series(engine, ExportOptions(confidence=True, horizons_s=(900.0,)))
    assert {lab["horizon"] for n, lab in series if n == "twin_confidence"} == {"15m"}


def test_all_is_the_old_export(engine: Engine) -> None:
    series = scrape_series(engine, ExportOptions.everything())
    per_family = Counter(n for n, _ in series)
    assert per_family["twin_forecast"] == per_family["twin_confidence"] == 16
    assert len(series) == 100              # 4 x (4 x 4 + 8 per metric) + health, drift, last sync + 1 eta
    assert {m.option for m in EXPORTED_METRICS if m.option} <= set(EXPORT_OPTIONS)


def test_every_option_key_is_documented_and_parsed() -> None:
    flags = {f.name for f in dataclasses.fields(ExportOptions)} - {"horizons_s", "all_horizons"}
    assert flags | {"horizons", "all"} == set(EXPORT_OPTIONS)


# --------------------------------------------------------------------------- the export: section

BASE = """\
twins:
  - name: checkout-api
    metrics:
      cpu_usage: 'rate(cpu[5m])'
"""


def _parse(export: str) -> ExportOptions:
    return parse_config(BASE + export, path="rules.yaml").export


def test_the_section_parses_each_key() -> None:
    assert _parse("") == ExportOptions()
    assert _parse("export:\n  actual: true\n  divergence_ratio: true\n") == ExportOptions(actual=True,
                                                                                          divergence_ratio=True)
    assert _parse("export: {horizons: [60m, 15m]}").horizons_s == (900.0, 3600.0)
    assert _parse("export: {horizons: 30m}").horizons_s == (1800.0,)
    assert _parse("export: {horizons: all}") == ExportOptions(all_horizons=True)
    assert _parse("export: {all: true}") == ExportOptions.everything()
    assert _parse("export: {all: true, has_data: false}") == dataclasses.replace(ExportOptions.everything(),
                                                                                  has_data=False)


@pytest.mark.parametrize(("export", "line", "key", "message"), [
    ("export:\n  actual: yes please\n", 6, "export.actual", "expected true or false"),
    ("export:\n  confidence: true\n  forecast_all: true\n", 7, "export.forecast_all", "unknown key"),
    ("export:\n  horizons: [5m, 2h]\n", 6, "export.horizons[1]", "2h is no twin's horizon"),
    ("export:\n  horizons: []\n", 6, "export.horizons", "expected a duration"),
    ("export:\n  horizons: soon\n", 6, "export.horizons", "expected a duration like"),
    ("export: [actual]\n", 5, "export", "expected a mapping"),
])
def test_a_mistake_names_file_line_and_key(export: str, line: int, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _parse(export)
    assert (err.value.path, err.value.line, err.value.key) == ("rules.yaml", line, key)
    assert str(err.value).startswith(f"rules.yaml:{line}: {key}: ") and message in str(err.value)


# --------------------------------------------------------------------------- the alerts read the default set

def test_every_shipped_alert_reads_default_families_only() -> None:
    """The rules must work on the default export. (The divergence alerts' description looks the ratio up with a
    template query and says "diverging" without it: export.divergence_ratio only makes the text richer.)"""
    doc = render_rules(load_config("config/example.yaml"))
    needs: dict[str, set[str]] = {}
    for rule in doc["groups"][0]["rules"]:
        def visit(node: object, alert: str = rule["alert"]) -> bool:
            if isinstance(node, promql_parser.VectorSelector) and node.name in METRICS_BY_NAME:
                option = METRICS_BY_NAME[node.name].option
                if option is not None:
                    needs.setdefault(alert, set()).add(f"{node.name} (export.{option})")
            return True

        promql_parser.walk(promql_parser.parse(rule["expr"]), visit)
    assert not needs


def test_the_cardinality_benchmark_runs_and_reports_the_default_within_budget(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_benchmark("export_cardinality")
    out = tmp_path / "export_cardinality.md"
    monkeypatch.setattr("sys.argv", ["export_cardinality.py", "--twins", "20", "--warmup", "5", "--repeat", "1",
                                     "--out", str(out)])
    assert bench.main() == 0
    rows = {line.split("|")[1].strip(): float(line.split("|")[2]) for line in out.read_text().splitlines()
            if line.startswith("| `")}
    assert rows["`default`"] <= 25 and rows["`all: true`"] > 90
    assert set(rows) == {f"`{label}`" for label, _ in bench.CASES}
