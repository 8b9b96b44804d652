"""The generated alerting rules: structure, PromQL, and the ecosystem's own checker (promtool)."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from sidecar.alerts import ALERT_NAMES, AlertSettings, dump_rules, render_rules, rules_main, runbook_anchor
from sidecar.config import SidecarConfig, parse_config
from sidecar.errors import ConfigError
from sidecar.exporter import EXPORTED_METRICS

ROOT = Path(__file__).resolve().parent.parent
RULES_TESTS = ROOT / "deploy" / "prometheus" / "rules-tests"
FIXTURE_CONFIG = RULES_TESTS / "fixture" / "config.yaml"
FIXTURE_RULES = RULES_TESTS / "fixture" / "alerts.yaml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")

CONFIG = """
interval: 30s
twins:
  - name: checkout-api
    metrics: {cpu_usage: '100 * rate(process_cpu_seconds_total{job="checkout"}[1m])'}
  - name: payments.v2
    metrics: {cpu_usage: 'rate(process_cpu_seconds_total{job="q"}[1m])'}
  - name: workers
    discover: 'up{job="worker"}'
    metrics: {cpu_usage: 'rate(process_cpu_seconds_total{instance="$instance"}[1m])'}
"""
DISCOVERED_ONLY = """
twins:
  - name: workers
    discover: 'up{job="worker"}'
    metrics: {cpu_usage: 'rate(process_cpu_seconds_total{instance="$instance"}[1m])'}
"""


def _config(text: str = CONFIG) -> SidecarConfig:
    return parse_config(text, path="test.yaml")


def _rules(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (group,) = doc["groups"]
    return {r["alert"]: r for r in group["rules"]}


def _selectors(expr: str) -> list[Any]:
    found: list[Any] = []

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def test_every_alert_is_rendered_with_labels_and_annotations() -> None:
    rules = _rules(render_rules(_config()))
    assert list(rules) == list(ALERT_NAMES)
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        ann = rule["annotations"]
        assert set(ann) == {"summary", "description", "runbook_url"}, name
        assert ann["runbook_url"] == f"README.md#{runbook_anchor(name)}"
        assert "<<" not in ann["description"] and "<<" not in ann["summary"], name


def test_severities_follow_the_issue() -> None:
    rules = _rules(render_rules(_config()))
    assert rules["TwinDivergenceCritical"]["labels"]["severity"] == "critical"
    assert rules["TwinHealthCritical"]["labels"]["severity"] == "critical"
    assert rules["TwinDivergenceHigh"]["expr"] == "twin_divergence_severity >= 3"
    assert rules["TwinHealthLow"]["expr"] == "twin_health_score < 70"
    assert rules["TwinHealthCritical"]["expr"] == "twin_health_score < 50"
    assert rules["TwinBreachSoon"]["expr"] == "twin_breach_eta_seconds < 900"


def test_every_expression_parses_and_selects_only_exported_metrics() -> None:
    exported = {m.name for m in EXPORTED_METRICS}
    for name, rule in _rules(render_rules(_config())).items():
        names = {sel.name for sel in _selectors(rule["expr"])}
        assert names and names <= exported, (name, names)


def test_simulation_alert_needs_a_trustworthy_fit_from_the_same_series() -> None:
    """An untrusted fit's probability is a guess: the rule pages only where the same sidecar's verdict is 1."""
    rule = _rules(render_rules(_config()))["TwinSimulationFailureLikely"]
    expr = promql_parser.parse(rule["expr"])
    assert isinstance(expr, promql_parser.BinaryExpr) and str(expr.op) == "and"
    # no on(...): `and` matches on every label, so another sidecar's trusted fit for the same twin and scenario
    # (an HA pair) cannot let this one's guess through
    assert expr.modifier is None or expr.modifier.matching is None
    for side, (name, op, value) in ((expr.lhs, ("twin_simulation_failure_probability", ">", 0.5)),
                                    (expr.rhs, ("twin_simulation_fit_trustworthy", "==", 1.0))):
        assert isinstance(side, promql_parser.BinaryExpr)
        assert isinstance(side.lhs, promql_parser.VectorSelector)
        assert isinstance(side.rhs, promql_parser.NumberLiteral)
        assert (side.lhs.name, str(side.op), side.rhs.val) == (name, op, value)
    assert "from a trustworthy capacity fit" in rule["annotations"]["description"]


def test_stale_threshold_follows_the_sync_interval() -> None:
    rules = _rules(render_rules(_config()))  # interval 30s -> 4 x 30s = 120s
    assert rules["TwinSyncStale"]["expr"] == "time() - twin_last_sync_timestamp_seconds > 120"
    assert "interval is 30s" in rules["TwinSyncStale"]["annotations"]["description"]
    fast = _rules(render_rules(_config(CONFIG.replace("30s", "5s"))))
    assert fast["TwinSyncStale"]["expr"].endswith("> 60")  # never sooner than a minute


def test_named_twins_get_an_absent_check_and_discovered_ones_do_not() -> None:
    expr = _rules(render_rules(_config()))["TwinMissing"]["expr"]
    twins = sorted(m.value for sel in _selectors(expr) for m in sel.matchers.matchers if m.name == "twin")
    assert twins == ["checkout-api", "payments.v2"]
    assert "unless on () absent(twin_source_up)" in expr
    assert "TwinMissing" not in _rules(render_rules(_config(DISCOVERED_ONLY)))


def test_selector_and_settings_apply_everywhere() -> None:
    settings = AlertSettings(selector='job="twin-sidecar"', health_warning=80, runbook_url="https://x/README.md",
                             extra_labels={"team": "sre"}, group_name="twins")
    doc = render_rules(_config(), settings)
    assert doc["groups"][0]["name"] == "twins"
    for name, rule in _rules(doc).items():
        for sel in _selectors(rule["expr"]):
            jobs = [m.value for m in sel.matchers.matchers if m.name == "job"]
            assert jobs == ["twin-sidecar"], (name, str(sel))
        assert rule["labels"]["team"] == "sre"
        assert rule["annotations"]["runbook_url"].startswith("https://x/README.md#runbook-")
    assert _rules(doc)["TwinHealthLow"]["expr"] == 'twin_health_score{job="twin-sidecar"} < 80'


def test_bad_selector_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="selector"):
        render_rules(_config(), AlertSettings(selector="job=="))


def test_rules_main_writes_yaml_and_reports_bad_config(tmp_path: Path) -> None:
    good = tmp_path / "rules.yaml"
    good.write_text(CONFIG)
    out = io.StringIO()
    assert rules_main(str(good), out) == 0
    text = out.getvalue()
    assert text.startswith("# Prometheus alerting rules for twin-sidecar")
    assert yaml.safe_load(text) == render_rules(_config())

    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.replace("interval: 30s", "intervall: 30s"))
    out, err = io.StringIO(), io.StringIO()
    assert rules_main(str(bad), out, err=err) == 2
    assert out.getvalue() == ""
    assert "bad.yaml:2" in err.getvalue() and "intervall" in err.getvalue()


def test_fixture_rules_are_fresh() -> None:
    """The promtool unit tests run against a committed file; it must be what the code generates now."""
    config_arg = str(FIXTURE_CONFIG.relative_to(ROOT))
    config = parse_config(FIXTURE_CONFIG.read_text(), path=config_arg)
    fresh = dump_rules(render_rules(config), source=config_arg)
    assert FIXTURE_RULES.read_text() == fresh, "regenerate with: python3 scripts/check_deploy.py --fix"


@needs_promtool
def test_promtool_accepts_the_output(tmp_path: Path) -> None:
    out = tmp_path / "alerts.yaml"
    out.write_text(dump_rules(render_rules(_config(), AlertSettings(selector='job="x"'))))
    proc = subprocess.run([str(PROMTOOL), "check", "rules", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in proc.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    files = sorted(str(p) for p in RULES_TESTS.glob("*.yaml"))
    assert len(files) >= 6
    proc = subprocess.run([str(PROMTOOL), "test", "rules", *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == len(files)


@needs_promtool
def test_every_alert_has_a_promtool_test_that_fires_it() -> None:
    firing: set[str] = set()
    for path in RULES_TESTS.glob("*.yaml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    firing.add(check["alertname"])
    assert firing == set(ALERT_NAMES)
