"""The chart's Services: one per shard reaching only that shard's pods, a headless Service giving each replica
of a StatefulSet its own DNS name, the ServiceMonitor scraping every pod once, and NOTES.txt telling the user
where state-changing calls must go."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import check_deploy  # noqa: E402
from helpers.chart import by_kind, render  # noqa: E402

SHARDS = ["-f", str(check_deploy.EXAMPLES / "shards.yaml")]
PRODUCTION = ["-f", str(check_deploy.EXAMPLES / "production.yaml")]





def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def selects(service: dict[str, Any], workload: dict[str, Any]) -> bool:
    return bool(service["spec"]["selector"].items() <= pod_labels(workload).items())


def notes(helm: str, *values: str) -> str:
    proc = subprocess.run([helm, "install", "twins", str(check_deploy.CHART), "--namespace", "monitoring",
                           "--dry-run=client", *values], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("NOTES:", 1)[1]


def test_each_shard_has_its_own_service_over_its_own_pods(helm: str) -> None:
    docs = render(helm, *SHARDS, "--set", "serviceMonitor.enabled=true")
    workloads = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    assert set(services) == {"twins-twin-sidecar-frontend", "twins-twin-sidecar-backend"}
    for name, svc in services.items():     # a Service named like its shard's Deployment, reaching only it
        assert [w for w, d in workloads.items() if selects(svc, d)] == [name]
        assert svc["spec"].get("clusterIP") != "None"      # a load-balanced API Service, not headless
        assert svc["metadata"]["labels"]["twin-sidecar.io/service"] == "api"
    assert check_deploy.check_services(docs) == []


def test_without_shards_one_service_keeps_its_name(helm: str) -> None:
    (svc,) = by_kind(render(helm), "Service")
    assert svc["metadata"]["name"] == "twins-twin-sidecar"
    assert svc["spec"]["selector"] == {"app.kubernetes.io/name": "twin-sidecar",
                                       "app.kubernetes.io/instance": "twins"}


def test_service_monitor_scrapes_every_pod_once(helm: str) -> None:
    for values in (SHARDS, PRODUCTION, [*SHARDS, "--set", "replicaCount=3", "--set", "storage.type=memory"]):
        docs = render(helm, *values, "--set", "serviceMonitor.enabled=true")
        (sm,) = by_kind(docs, "ServiceMonitor")
        scraped = [s for s in by_kind(docs, "Service")
                   if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        workloads = by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet")
        assert workloads
        for w in workloads:                 # exactly one scraped Service per workload: no pod missed or doubled
            assert len([s for s in scraped if selects(s, w)]) == 1, (values, w["metadata"]["name"])
        assert all(s["spec"].get("clusterIP") != "None" for s in scraped)
        assert check_deploy.check_service_monitor(sm, docs) == []


def test_replicas_get_a_headless_service_as_the_statefulsets_service_name(helm: str) -> None:
    docs = render(helm, *PRODUCTION)
    (sts,) = by_kind(docs, "StatefulSet")
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    assert set(services) == {"twins-twin-sidecar", "twins-twin-sidecar-pods"}
    assert sts["spec"]["serviceName"] == "twins-twin-sidecar-pods"
    pods = services["twins-twin-sidecar-pods"]["spec"]
    assert pods["clusterIP"] == "None" and pods["publishNotReadyAddresses"] is False
    assert selects(services["twins-twin-sidecar-pods"], sts) and selects(services["twins-twin-sidecar"], sts)
    assert services["twins-twin-sidecar-pods"]["metadata"]["labels"]["twin-sidecar.io/service"] == "pods"
    assert [p["name"] for p in pods["ports"]] == ["http"]
    assert check_deploy.check_services(docs) == []
    # a single pod stays a Deployment with no headless Service
    assert not [s for s in by_kind(render(helm), "Service") if s["spec"].get("clusterIP") == "None"]


def test_shards_with_replicas_get_a_headless_service_each(helm: str) -> None:
    docs = render(helm, *SHARDS, "--set", "replicaCount=2", "--set", "storage.type=memory")
    names = {s["metadata"]["name"]: s["spec"].get("clusterIP") for s in by_kind(docs, "Service")}
    assert names == {"twins-twin-sidecar-frontend": None, "twins-twin-sidecar-frontend-pods": "None",
                     "twins-twin-sidecar-backend": None, "twins-twin-sidecar-backend-pods": "None"}
    assert {d["metadata"]["name"]: d["spec"]["serviceName"] for d in by_kind(docs, "StatefulSet")} == {
        "twins-twin-sidecar-frontend": "twins-twin-sidecar-frontend-pods",
        "twins-twin-sidecar-backend": "twins-twin-sidecar-backend-pods"}
    assert check_deploy.check_services(docs) == []


def test_the_check_catches_one_service_over_two_shards() -> None:
    """check_services on the old chart's shape: a Service selecting only {name, instance} over two shards."""
    def workload(shard: str) -> dict[str, Any]:
        labels = {"app.kubernetes.io/name": "twin-sidecar", "app.kubernetes.io/instance": "t",
                  "app.kubernetes.io/part-of": "twin-sidecar", "twin-sidecar.io/shard": shard}
        return {"kind": "Deployment", "metadata": {"name": f"t-{shard}"},
                "spec": {"template": {"metadata": {"labels": labels}}}}

    svc = {"kind": "Service", "metadata": {"name": "t", "labels": {}},
           "spec": {"selector": {"app.kubernetes.io/name": "twin-sidecar", "app.kubernetes.io/instance": "t"}}}
    problems = check_deploy.check_services([svc, workload("a"), workload("b")])
    assert any("reaches the pods of ['t-a', 't-b']" in p for p in problems)


def test_notes_list_each_pods_address_when_there_are_replicas(helm: str) -> None:
    text = notes(helm, *PRODUCTION)
    urls = [f"http://twins-twin-sidecar-{i}.twins-twin-sidecar-pods.monitoring.svc:9464" for i in range(2)]
    for u in urls:
        assert f"\n  {u}\n" in text
    (loop,) = [line for line in text.splitlines() if line.strip().startswith("for u in")]
    assert loop.strip().startswith(f"for u in {urls[0]} {urls[1]}; do curl")
    assert '"$u/api/v1/twins/TWIN/expected"' in loop and "-X PUT" in loop
    assert 'Authorization: Bearer $TOKEN' in loop and "get secret twin-api-token" in text   # apiAuth is on
    assert "EVERY pod" in text and "Reads and /metrics may use the Service" in text
    assert "rollback" in text
    single = notes(helm)
    assert "EVERY pod" not in single and "for u in" not in single


def test_notes_name_each_shards_service_and_pods(helm: str) -> None:
    text = notes(helm, *SHARDS)
    assert "svc/twins-twin-sidecar-frontend    shard frontend: web" in text
    assert "svc/twins-twin-sidecar-backend    shard backend: orders" in text
    assert "for u in" not in text
    both = notes(helm, *SHARDS, "--set", "replicaCount=2", "--set", "storage.type=memory")
    assert "http://twins-twin-sidecar-backend-1.twins-twin-sidecar-backend-pods.monitoring.svc:9464" in both
    assert len([line for line in both.splitlines() if line.strip().startswith("for u in")]) == 2


def test_a_shard_name_that_would_clash_with_a_pods_service_is_refused(helm: str) -> None:
    proc = subprocess.run([helm, "template", "twins", str(check_deploy.CHART), "--set", "replicaCount=2",
                           "--set", "storage.type=memory", "--set", "shards[0].name=a-pods",
                           "--set", "shards[0].twins[0].name=x", "--set", "shards[0].twins[0].metrics.cpu=up"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "ends in -pods" in proc.stderr
