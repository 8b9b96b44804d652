"""The chart's predictive autoscaling: a KEDA ScaledObject or an HPA v2 on twin_recommended_replicas, checked against
the real CRD schemas (../shared/k8s/crds), and the schema check itself catching what the API server would prune."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import check_deploy  # noqa: E402
from helpers.chart import by_kind, render  # noqa: E402

EXAMPLE = str(ROOT / "deploy" / "helm" / "examples" / "autoscaling.yaml")


@pytest.fixture(scope="module")
def schemas() -> dict[tuple[str, str], dict[str, object]]:
    if not check_deploy.CRDS.is_dir():
        pytest.skip(f"no CRD schemas at {check_deploy.CRDS}")
    return check_deploy.crd_schemas()


def test_keda_scaled_object_reads_the_twin_recommendation_and_never_an_empty_result_as_zero(
        helm: str, schemas: dict[tuple[str, str], dict[str, object]]) -> None:
    (so,) = by_kind(render(helm, "-f", EXAMPLE), "ScaledObject")
    assert check_deploy.check_custom_resource(so, schemas) == []
    assert so["metadata"]["namespace"] == "shop"
    assert so["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "checkout-api"}
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (2, 30)   # the twin's bounds
    (trigger,) = so["spec"]["triggers"]
    assert trigger["metadata"]["query"] == 'max(twin_recommended_replicas{twin="checkout-api",horizon="5m"})'
    assert trigger["metadata"]["ignoreNullValues"] == "false"
    # the HPA KEDA makes keeps the HPA's default 300 s window on top of the twin's: the benchmarked configuration
    hpa_config = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]
    assert hpa_config["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


def test_hpa_v2_external_metric_and_its_adapter_rule(helm: str) -> None:
    docs = render(helm, "-f", EXAMPLE, "--set", "autoscaling.kind=hpa")
    assert by_kind(docs, "ScaledObject") == []
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    (hpa0,) = by_kind(render(helm, "-f", EXAMPLE, "--set", "autoscaling.kind=hpa",
                             "--set", "autoscaling.scaleDownStabilizationSeconds=0"), "HorizontalPodAutoscaler")
    assert hpa0["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 0   # the twin's window alone
    (metric,) = hpa["spec"]["metrics"]
    assert metric["external"]["metric"] == {"name": "twin_recommended_replicas",
                                            "selector": {"matchLabels": {"twin": "checkout-api", "horizon": "5m"}}}
    (rules,) = [d for d in by_kind(docs, "ConfigMap") if "external-rules.yaml" in d["data"]]
    assert check_deploy.check_adapter_rules(rules) == []


def test_crd_schema_check_refuses_a_misspelt_field(helm: str,
                                                   schemas: dict[tuple[str, str], dict[str, object]]) -> None:
    docs = render(helm, "-f", EXAMPLE, "--set", "prometheusRule.enabled=true")
    (so,) = by_kind(docs, "ScaledObject")
    bad = copy.deepcopy(so)
    bad["spec"]["maxReplicas"] = bad["spec"].pop("maxReplicaCount")          # the HPA's spelling
    assert any("maxReplicas" in p for p in check_deploy.check_custom_resource(bad, schemas))
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert check_deploy.check_custom_resource(sm, schemas) == []
    sm["spec"]["endpoints"][0]["scrape_interval"] = "15s"
    assert any("scrape_interval" in p for p in check_deploy.check_custom_resource(sm, schemas))
    (rule,) = by_kind(docs, "PrometheusRule")
    assert check_deploy.check_custom_resource(rule, schemas) == []
    rule["spec"]["groups"][0]["rules"][0]["for"] = 5
    assert check_deploy.check_custom_resource(rule, schemas) != []
