"""The chart's PrometheusRule follows config.interval exactly as `twin-sidecar rules` does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import check_deploy  # noqa: E402
from check_deploy import Result  # noqa: E402


def chart_groups(helm: str, *values: str) -> list[dict[str, Any]]:
    docs, _ = check_deploy.render(helm, ["--set", "prometheusRule.enabled=true", *values])
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def stale_rule(groups: list[dict[str, Any]]) -> dict[str, Any]:
    (rule,) = [r for g in groups for r in g["rules"] if r["alert"] == "TwinSyncStale"]
    return rule


def cli_rules(tmp_path: Path, interval: str) -> list[dict[str, Any]]:
    """`twin-sidecar rules` itself, as a user runs it, on the chart's generic config at this interval."""
    config = tmp_path / f"generic-{interval}.yaml"
    config.write_text(check_deploy.GENERIC_CONFIG.replace("interval: 15s", f"interval: {interval}"))
    proc = subprocess.run([sys.executable, "-m", "sidecar.cli", "rules", "--config", str(config)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    groups: list[dict[str, Any]] = yaml.safe_load(proc.stdout)["groups"]
    return groups


def test_one_minute_interval_gives_the_same_threshold_as_twin_sidecar_rules(helm: str, tmp_path: Path) -> None:
    chart = stale_rule(chart_groups(helm, "--set", "config.interval=1m"))
    cli = stale_rule(cli_rules(tmp_path, "1m"))
    assert chart["expr"] == cli["expr"] == "time() - twin_last_sync_timestamp_seconds > 240"
    assert "the sync interval is 1m and the alert fires past 4m." in chart["annotations"]["description"]
    assert chart == cli


@pytest.mark.parametrize(("interval", "threshold", "said"), [
    ("15s", "60", "the sync interval is 15s and the alert fires past 1m."),
    ("2m", "480", "the sync interval is 2m and the alert fires past 8m."),
    ("2m30s", "600", "the sync interval is 150s and the alert fires past 10m."),
    ("30s", "120", "the sync interval is 30s and the alert fires past 2m."),
])
def test_threshold_and_text_follow_the_interval(helm: str, tmp_path: Path, interval: str, threshold: str,
                                                said: str) -> None:
    groups = chart_groups(helm, "--set", f"config.interval={interval}")
    rule = stale_rule(groups)
    assert rule["expr"].endswith(f"> {threshold}") and said in rule["annotations"]["description"]
    assert groups == cli_rules(tmp_path, interval)     # nothing else in the rule set differs either


def test_default_interval_renders_the_generated_file_unchanged(helm: str) -> None:
    shipped = yaml.safe_load(check_deploy.CHART_RULES.read_text())["groups"]
    assert chart_groups(helm) == shipped


def test_runbook_base_url_still_applies_with_another_interval(helm: str) -> None:
    groups = chart_groups(helm, "--set", "config.interval=1m",
                          "--set", "prometheusRule.runbookBaseUrl=https://docs.example.com/README.md")
    assert stale_rule(groups)["annotations"]["runbook_url"] == \
        "https://docs.example.com/README.md#runbook-twinsyncstale"
    assert stale_rule(groups)["expr"].endswith("> 240")


@pytest.mark.parametrize("url", ["ftp://docs.example.com/README.md", "docs.example.com/README.md",
                                 "https://docs.example.com/README.md#runbook"])
def test_a_runbook_base_url_that_is_not_http_is_refused(helm: str, url: str) -> None:
    proc = subprocess.run([helm, "template", "twins", str(check_deploy.CHART), "--set", "prometheusRule.enabled=true",
                           "--set", f"prometheusRule.runbookBaseUrl={url}"], capture_output=True, text=True)
    assert proc.returncode != 0 and "/prometheusRule/runbookBaseUrl" in proc.stderr, proc.stderr


def test_rules_given_by_the_user_are_left_as_generated(helm: str, tmp_path: Path) -> None:
    """A file from `twin-sidecar rules --config` already says its own interval; the chart does not rewrite it."""
    rules = tmp_path / "alerts.yaml"
    rules.write_text(yaml.safe_dump({"groups": cli_rules(tmp_path, "2m")}))
    groups = chart_groups(helm, "--set", "config.interval=1m", "--set-file", f"prometheusRule.rules={rules}")
    assert stale_rule(groups)["expr"].endswith("> 480")


def test_the_check_passes_and_reports_the_one_minute_threshold(helm: str) -> None:
    r = Result("helm-rules")
    check_deploy.check_helm_rules(r, helm)
    assert r.ok, "\n".join(r.failures)
    assert any("interval 1m: TwinSyncStale > 240" in n for n in r.notes)
    assert "1m" in check_deploy.RULE_INTERVALS


def test_the_chart_rule_passes_promtool(helm: str, tmp_path: Path) -> None:
    docs, _ = check_deploy.render(helm, ["--set", "prometheusRule.enabled=true", "--set", "config.interval=2m30s"])
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    if check_deploy.shutil.which("promtool") is None:
        pytest.skip("promtool not installed")
    assert check_deploy.check_prometheus_rule(rule, tmp_path) == []
