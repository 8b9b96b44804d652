"""The generated alerting rules: structure, PromQL, and the ecosystem's own checker (promtool)."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import promql_parser
import pytest
import yaml

from sidecar.alerts import ALERT_NAMES, AlertSettings, dump_rules, render_rules, rules_main, runbook_anchor
from sidecar.config import SidecarConfig, parse_config
from sidecar.contract import EXPORTED_METRICS
from sidecar.engine.health import CRITICAL_BELOW, WARNING_BELOW, health_band
from sidecar.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
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
    assert rules["TwinDivergenceHigh"]["expr"].startswith("twin_divergence_severity >= 3 unless (")
    assert rules["TwinDivergenceCritical"]["expr"].startswith("twin_divergence_severity >= 4 unless (")
    assert rules["TwinHealthLow"]["expr"] == "twin_health_score < 70"
    assert rules["TwinHealthCritical"]["expr"] == "twin_health_score < 50"
    assert rules["TwinBreachSoon"]["expr"] == "twin_breach_eta_seconds < 900"


def test_every_expression_parses_and_selects_only_exported_metrics() -> None:
    exported = {m.name for m in EXPORTED_METRICS}
    for name, rule in _rules(render_rules(_config())).items():
        names = {sel.name for sel in _selectors(rule["expr"])}
        if name == "TwinSidecarDown":       # Prometheus' own scrape health of the sidecar's targets
            assert names == {"up"}
            continue
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


def test_health_alerts_page_on_the_engine_bands() -> None:
    """TwinHealthLow below 70 and TwinHealthCritical below 50, as the engine bands a score: exactly 50 is a warning,
    exactly 70 healthy (deploy/prometheus/rules-tests/health.yaml evaluates both bounds with promtool)."""
    assert (AlertSettings().health_warning, AlertSettings().health_critical) == (WARNING_BELOW, CRITICAL_BELOW)
    rules = _rules(render_rules(_config()))
    assert rules["TwinHealthLow"]["expr"] == "twin_health_score < 70"
    assert rules["TwinHealthCritical"]["expr"] == "twin_health_score < 50"
    assert health_band(np.array([70.0, 50.0, 49.99])).tolist() == [0, 1, 2]


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


# --------------------------------------------------------------------------- TwinSidecarDown


def _down(config: SidecarConfig, settings: AlertSettings | None = None) -> str:
    expr: str = _rules(render_rules(config, settings))["TwinSidecarDown"]["expr"]
    return expr


def test_sidecar_down_reads_up_of_the_default_job_per_instance() -> None:
    """absent(twin_source_up) is empty while any one sidecar is scraped; `up` says which instance is down."""
    rule = _rules(render_rules(_config()))["TwinSidecarDown"]
    assert rule["expr"] == 'up{job="twin-sidecar"} == 0'
    assert rule["for"] == "5m" and rule["labels"]["severity"] == "warning"
    assert "{{ $labels.instance }}" in rule["annotations"]["summary"]
    assert _rules(render_rules(_config()))["TwinSidecarAbsent"]["expr"] == "absent(twin_source_up)"   # all gone
    assert _down(_config(), AlertSettings(sidecar_job="twins")) == 'up{job="twins"} == 0'


def test_sidecar_down_follows_the_configs_own_scrape_labels() -> None:
    """prometheus.self_labels names the sidecar's own scrape target(s): the chart sets it from its ServiceMonitor."""
    one = CONFIG + "prometheus: {self_labels: {job: twins-a, namespace: mon}}\n"
    assert _down(_config(one)) == 'up{job="twins-a",namespace="mon"} == 0'
    several = CONFIG + "prometheus: {self_labels: [{job: a}, {job: b}, {job: a}]}\n"
    assert _down(_config(several)) == 'up{job="a"} == 0 or up{job="b"} == 0'
    odd = CONFIG + "prometheus: {self_labels: {job: 'we\"ird'}}\n"
    (sel,) = _selectors(_down(_config(odd)))
    assert [(m.name, m.value) for m in sel.matchers.matchers] == [("job", 'we"ird')]


def test_sidecar_down_keeps_to_the_selector() -> None:
    # a selector naming the job is the sidecar's identity; one without a job still needs the default job, or `up`
    # would match every target it selects
    assert _down(_config(), AlertSettings(selector='job="x"')) == 'up{job="x"} == 0'
    assert _down(_config(), AlertSettings(selector='namespace="mon"')) == 'up{namespace="mon",job="twin-sidecar"} == 0'
    with_labels = CONFIG + "prometheus: {self_labels: {job: twins}}\n"
    assert _down(_config(with_labels), AlertSettings(selector='cluster="eu"')) == \
        'up{cluster="eu",job="twins"} == 0'


# --------------------------------------------------------------------------- stale and never-sampled metrics


def test_divergence_alerts_skip_exactly_the_series_metric_stale_covers() -> None:
    """A stale metric's severity is frozen: the divergence alerts are `severity unless (TwinMetricStale's expr)`,
    the very same expression (so the same labels, and the same threshold, which the chart rewrites per interval)."""
    rules = _rules(render_rules(_config()))
    stale = rules["TwinMetricStale"]["expr"]
    assert stale.endswith("> 120 and twin_metric_last_sample_timestamp_seconds != 0")   # 4 x 30s; 0: never sampled
    for name, level in (("TwinDivergenceHigh", 3), ("TwinDivergenceCritical", 4)):
        expr = promql_parser.parse(rules[name]["expr"])
        assert isinstance(expr, promql_parser.BinaryExpr) and str(expr.op) == "unless"
        assert expr.modifier is None or expr.modifier.matching is None   # every label: the same series only
        lhs = expr.lhs
        assert isinstance(lhs, promql_parser.BinaryExpr)
        assert isinstance(lhs.lhs, promql_parser.VectorSelector) and isinstance(lhs.rhs, promql_parser.NumberLiteral)
        assert (lhs.lhs.name, str(lhs.op), lhs.rhs.val) == ("twin_divergence_severity", ">=", level)
        assert rules[name]["expr"].endswith(f" unless ({stale})")


def test_metric_no_data_reads_a_last_sample_of_0_and_holds_as_long_as_metric_stale() -> None:
    """The default export has no twin_metric_has_data (export.has_data): a last-sample time of 0 says the same."""
    rules = _rules(render_rules(_config()))                    # interval 30s: 4 intervals = 2m
    rule = rules["TwinMetricNoData"]
    assert rule["expr"] == ("twin_metric_last_sample_timestamp_seconds == 0 "
                            "unless ignoring (twin, metric) twin_source_up == 0")
    assert rule["for"] == "2m" and rule["labels"]["severity"] == "warning"
    assert "the sync interval is 30s and the alert fires past 2m." in rule["annotations"]["description"]
    fast = _rules(render_rules(_config(CONFIG.replace("30s", "5s"))))["TwinMetricNoData"]
    assert fast["for"] == "1m"                                 # never sooner than a minute
    sel = _rules(render_rules(_config(), AlertSettings(selector='job="x"')))["TwinMetricNoData"]["expr"]
    assert sel == ('twin_metric_last_sample_timestamp_seconds{job="x"} == 0 '
                   'unless ignoring (twin, metric) twin_source_up{job="x"} == 0')


def test_every_alert_has_its_runbook_section_in_the_readme() -> None:
    """Each rule's runbook_url points at README.md#runbook-<name>: the heading must exist, or the link is dead."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    missing = [name for name in ALERT_NAMES if f"\n### Runbook: {name}\n" not in readme]
    assert missing == []
