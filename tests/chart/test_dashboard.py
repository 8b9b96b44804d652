"""The Grafana dashboard: every query is PromQL over metrics the sidecar really puts on /metrics."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from sidecar.contract import EXPORTED_METRICS, METRICS_BY_NAME, MetricSpec
from sidecar.engine.core import Engine
from sidecar.exporter import install_exporter, render
from sidecar.status import ServiceStatus
from sidecar.units import horizon_label

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "twin-sidecar.json"
CHART_COPY = ROOT / "deploy" / "helm" / "twin-sidecar" / "files" / "twin-sidecar.json"

#: Values Grafana would put in for its variables (a horizon label is also a valid PromQL duration).
GRAFANA_VARS = {"horizon": "5m", "__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return doc


@pytest.fixture(scope="module")
def scraped_names() -> set[str]:
    """Metric names on a real scrape of the DEFAULT export: a real engine fed a rising metric, exported by the real
    collector."""
    engine = Engine()
    t0 = 1.7e9
    engine.create_twin("checkout-api", at=t0, limits={"cpu_usage": 95.0}, expected={"cpu_usage": 40.0})
    for i in range(60):
        engine.sync("checkout-api", {"cpu_usage": 40.0 + 0.9 * i}, at=t0 + 15.0 * i)
    status = ServiceStatus(config_loaded=True, first_round_done=True, source_up=True)
    status.query_errors[("checkout-api", "cpu_usage")] += 1
    status.simulation_failure_probability[("checkout-api", "spike_3x")] = 0.3
    status.simulation_breaking_multiplier[("checkout-api", "spike_3x")] = 2.5
    registry = CollectorRegistry()
    install_exporter(registry, view=engine.view, status=status)
    text = render(registry).decode()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(s.name for s in family.samples)
    return names


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target, annotation and variable query."""
    for p in _panels(dashboard["panels"]):
        for t in p.get("targets", []):
            yield f"panel {p['title']!r} {t['refId']}", t["expr"]
    for a in dashboard["annotations"]["list"]:
        if "expr" in a:
            yield f"annotation {a['name']!r}", a["expr"]
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            m = _LABEL_VALUES.match(v["query"]["query"])
            assert m is not None, f"variable {v['name']}: expected label_values(selector, label)"
            yield f"variable {v['name']!r}", m.group("selector")


def interpolate(expr: str) -> str:
    return _VAR.sub(lambda m: GRAFANA_VARS.get(m.group(1) or m.group(2), "x"), expr)


def metric_names(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"selector without a metric name in {expr!r}"
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(interpolate(expr)), visit)
    return names


def _option_named(description: str, option: str) -> bool:
    """True if a panel's description tells the reader the ``export:`` key a family needs."""
    return f"{option}: true" in description or f"export.{option}" in description


def test_every_query_parses_and_uses_only_exported_metrics(dashboard: dict[str, Any],
                                                           scraped_names: set[str]) -> None:
    """On the DEFAULT export: a family it leaves out may only be read by a panel that names its export: key."""
    used: dict[str, set[str]] = {}
    descriptions = {f"panel {p['title']!r}": p.get("description", "") for p in _panels(dashboard["panels"])}
    unknown: dict[str, list[str]] = {}
    for where, expr in queries(dashboard):
        try:
            names = metric_names(expr)
        except ValueError as exc:
            pytest.fail(f"{where}: {expr!r} is not PromQL: {exc}")
        for n in names:
            used.setdefault(n, set()).add(where)
            if n in scraped_names:
                continue
            spec = METRICS_BY_NAME.get(n)
            panel = where.rsplit(" ", 1)[0]
            if spec is None or spec.option is None or not _option_named(descriptions.get(panel, ""), spec.option):
                unknown.setdefault(n, []).append(where)
    assert not unknown, f"metrics the default export lacks, read where no export: key is named: {unknown}"
    assert len(used) >= 15  # the dashboard really covers the contract, not a token panel


def test_opt_in_families_are_read_only_by_panels_that_say_which_option(dashboard: dict[str, Any]) -> None:
    """Variables and annotations drive the whole dashboard: they read default families only."""
    for where, expr in queries(dashboard):
        for n in metric_names(expr):
            spec = METRICS_BY_NAME.get(n)
            if spec is not None and spec.option is not None:
                assert where.startswith("panel "), f"{where} reads {n}, which needs export.{spec.option}"


def _family(series: str) -> MetricSpec | None:
    """The contract's family a sample name belongs to (``twin_sync_duration_seconds_bucket`` is the histogram's)."""
    return next((m for m in EXPORTED_METRICS if series in m.series_names), None)


def test_every_selector_names_a_contract_family_and_only_its_labels(dashboard: dict[str, Any]) -> None:
    """The dashboard against ``sidecar/contract.py`` alone: a renamed family or label fails here, scrape or not."""
    problems = []
    for where, expr in queries(dashboard):
        def visit(node: Any, where: str = where) -> bool:
            if isinstance(node, promql_parser.VectorSelector):
                spec = _family(node.name)
                if spec is None:
                    problems.append(f"{where}: {node.name} is not in the contract")
                    return True
                allowed = set(spec.labels) | ({"le"} if spec.type == "histogram" else set())
                problems.extend(f"{where}: {node.name} has no label {m.name!r} in the contract"
                                for m in node.matchers.matchers if m.name not in allowed)
            return True

        promql_parser.walk(promql_parser.parse(interpolate(expr)), visit)
    assert not problems, problems
    # the horizon variable's stand-in is a label value the exporter really writes
    assert GRAFANA_VARS["horizon"] == horizon_label(300)


def test_templated_on_datasource_and_twin(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["twin"]["type"] == "query"
    for p in _panels(dashboard["panels"]):
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            for t in p["targets"]:
                assert t["datasource"]["uid"] == "${datasource}", p["title"]
    per_twin = [t["expr"] for p in _panels(dashboard["panels"]) for t in p.get("targets", [])
                if 'twin="$twin"' in t["expr"]]
    assert len(per_twin) >= 10


def test_forecast_panel_shows_actual_forecast_and_interval_band_per_horizon(dashboard: dict[str, Any]) -> None:
    (panel,) = [p for p in _panels(dashboard["panels"]) if p.get("repeat") == "horizon"]
    exprs = {t["legendFormat"]: t["expr"] for t in panel["targets"]}
    assert metric_names(exprs["actual"]) == {"twin_actual"}
    for legend, metric in (("lower", "twin_forecast_lower"), ("upper", "twin_forecast_upper")):
        assert metric_names(exprs[legend]) == {metric}
        assert exprs[legend].endswith("offset $horizon")  # shown at the time it forecast, next to the actual
    fill = [prop["value"] for o in panel["fieldConfig"]["overrides"] if o["matcher"]["options"] == "upper"
            for prop in o["properties"] if prop["id"] == "custom.fillBelowTo"]
    assert fill == ["lower"]
    rows = [p for p in dashboard["panels"] if p["type"] == "row" and p.get("repeat") == "metric"]
    assert rows, "one row per metric of the twin"


def test_overview_sorts_twins_by_health_and_events_are_annotations(dashboard: dict[str, Any]) -> None:
    (overview,) = [p for p in _panels(dashboard["panels"]) if p["title"].startswith("Twins by health")]
    assert overview["targets"][0]["expr"] == "sort(twin_health_score)"
    sort = [t for t in overview["transformations"] if t["id"] == "sortBy"]
    assert sort[0]["options"]["sort"] == [{"field": "Health", "desc": False}]
    names = {a["name"] for a in dashboard["annotations"]["list"] if "expr" in a}
    assert {"Divergence became high", "Health fell below 70", "Drift started"} <= names


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
    ids = [p["id"] for p in _panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))


def test_chart_ships_the_same_dashboard() -> None:
    assert json.loads(CHART_COPY.read_text()) == json.loads(DASHBOARD.read_text())
