"""The chart's PrometheusRule: TwinSidecarDown reads `up` of the chart's own scrape targets, and the interval-bound
parts of the new rules (TwinMetricNoData's hold, the stale threshold inside TwinDivergence*) follow config.interval,
each exactly as `twin-sidecar rules` writes them for the same config."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from helpers.chart import by_kind, render

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import check_deploy  # noqa: E402

from sidecar.alerts import render_rules  # noqa: E402
from sidecar.config import parse_config  # noqa: E402

SHARDS = str(ROOT / "deploy" / "helm" / "examples" / "shards.yaml")


def chart_rules(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    (rule,) = by_kind(docs, "PrometheusRule")
    return {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}


def self_labels(docs: list[dict[str, Any]]) -> list[dict[str, str]]:
    """prometheus.self_labels of every rendered rules ConfigMap, in the order of the instances."""
    out: list[dict[str, str]] = []
    for cm in by_kind(docs, "ConfigMap"):
        if "rules.yaml" in cm.get("data", {}):
            labels = yaml.safe_load(cm["data"]["rules.yaml"]).get("prometheus", {}).get("self_labels")
            out.extend(labels if isinstance(labels, list) else [labels] if labels else [])
    return out


def cli_rule(alert: str, *, interval: str = "15s", labels: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """What `twin-sidecar rules` writes for the chart's generic config with these scrape labels."""
    text = check_deploy.GENERIC_CONFIG.replace("interval: 15s", f"interval: {interval}")
    if labels:
        text += "prometheus: " + yaml.safe_dump({"self_labels": labels}, default_flow_style=True)
    (group,) = render_rules(parse_config(text, path="generic"))["groups"]
    (rule,) = [r for r in group["rules"] if r["alert"] == alert]
    found: dict[str, Any] = rule
    return found


def test_sharded_release_alerts_on_up_of_each_shards_service_monitor_job(helm: str) -> None:
    """One scrape job per shard (the operator names it after the Service): a dead pod of either shard fires."""
    docs = render(helm, "-f", SHARDS, "--set", "prometheusRule.enabled=true", "--set", "storage.type=memory")
    labels = self_labels(docs)
    assert labels == [{"job": "twins-twin-sidecar-frontend"}, {"job": "twins-twin-sidecar-backend"}]
    down = chart_rules(docs)["TwinSidecarDown"]
    assert down["expr"] == 'up{job="twins-twin-sidecar-frontend"} == 0 or up{job="twins-twin-sidecar-backend"} == 0'
    assert down == cli_rule("TwinSidecarDown", labels=labels)


def test_a_fixed_job_relabeling_is_followed_once(helm: str) -> None:
    docs = render(helm, "-f", SHARDS, "--set", "prometheusRule.enabled=true", "--set", "storage.type=memory",
                  "--set", "serviceMonitor.relabelings[0].targetLabel=job",
                  "--set", "serviceMonitor.relabelings[0].replacement=twins")
    assert chart_rules(docs)["TwinSidecarDown"]["expr"] == 'up{job="twins"} == 0'


def test_without_a_service_monitor_the_configured_labels_or_the_default_job_are_used(helm: str) -> None:
    default = chart_rules(render(helm, "--set", "prometheusRule.enabled=true"))["TwinSidecarDown"]
    assert default == cli_rule("TwinSidecarDown") and default["expr"] == 'up{job="twin-sidecar"} == 0'
    # sidecar mode: the pod is scraped by the service's own job; the user names it in config.prometheus.self_labels
    docs = render(helm, "--set", "prometheusRule.enabled=true", "--set", "mode=sidecar",
                  "--set", "config.prometheus.self_labels.job=checkout",
                  "--set", "config.prometheus.self_labels.container=twin-sidecar")
    down = chart_rules(docs)["TwinSidecarDown"]
    assert down["expr"] == 'up{container="twin-sidecar",job="checkout"} == 0'
    assert down == cli_rule("TwinSidecarDown", labels=[{"job": "checkout", "container": "twin-sidecar"}])


def test_rules_given_by_the_user_are_used_as_given(helm: str, tmp_path: Path) -> None:
    text = check_deploy.CHART_RULES.read_text().replace('up{job="twin-sidecar"}', 'up{job="mine"}')
    given = tmp_path / "alerts.yaml"
    given.write_text(text)
    docs = render(helm, "--set", "prometheusRule.enabled=true", "--set", "serviceMonitor.enabled=true",
                  "--set-file", f"prometheusRule.rules={given}")
    assert chart_rules(docs)["TwinSidecarDown"]["expr"] == 'up{job="mine"} == 0'


def test_no_data_hold_and_the_divergence_stale_threshold_follow_the_interval(helm: str) -> None:
    rules = chart_rules(render(helm, "--set", "prometheusRule.enabled=true", "--set", "config.interval=1m"))
    assert rules["TwinMetricNoData"]["for"] == "4m"
    assert "the sync interval is 1m and the alert fires past 4m." in rules["TwinMetricNoData"]["annotations"][
        "description"]
    for alert in ("TwinDivergenceHigh", "TwinDivergenceCritical", "TwinMetricStale", "TwinMetricNoData"):
        assert rules[alert] == cli_rule(alert, interval="1m"), alert
    assert rules["TwinDivergenceHigh"]["expr"].endswith(
        "twin_metric_last_sample_timestamp_seconds > 240 and twin_metric_last_sample_timestamp_seconds != 0)")
