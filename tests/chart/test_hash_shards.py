"""`shards: N` in the chart: a StatefulSet of N pods, each told the count and its pod name (whose ordinal the
sidecar reads as its shard), all writing as one replica so a twin that changes shard keeps its rows; `shards: 1`
(the default) stays the single Deployment it always was."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import check_deploy  # noqa: E402
from helpers.chart import by_kind, render  # noqa: E402

from sidecar.config import SHARD_COUNT_ENV, SHARD_INDEX_ENV, ShardConfig, parse_config  # noqa: E402

POSTGRES = ["--set", "storage.type=postgres", "--set", "storage.postgres.url=postgresql://twins@db:5432/twins"]


def env_of(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_shards_n_is_a_statefulset_of_n_pods_each_told_its_shard(helm: str) -> None:
    docs = render(helm, "--set", "shards=3", *POSTGRES, "--set", "serviceMonitor.enabled=true")
    assert by_kind(docs, "Deployment") == []
    (sts,) = by_kind(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 3 and sts["spec"]["podManagementPolicy"] == "Parallel"
    env = env_of(sts)
    assert env[SHARD_COUNT_ENV] == "3"
    assert env[SHARD_INDEX_ENV] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # one replica name for every shard (not the pod's): the same twin ids, whichever pod has the twin
    assert env["TWIN_SIDECAR_REPLICA"] == "twins-twin-sidecar"
    assert check_deploy.check_services(docs) == []
    # what the pod name gives the sidecar's own loader: pod twins-twin-sidecar-2 is shard 2 of 3
    (rules,) = [d["data"]["rules.yaml"] for d in by_kind(docs, "ConfigMap") if "rules.yaml" in d.get("data", {})]
    for i in range(3):
        cfg = parse_config(rules, env={SHARD_COUNT_ENV: "3", SHARD_INDEX_ENV: f"twins-twin-sidecar-{i}",
                                       "DATABASE_URL": "postgresql://twins@db:5432/twins"})
        assert cfg.shard == ShardConfig(i, 3)


def test_one_shard_is_the_deployment_without_shard_settings(helm: str) -> None:
    for values in ([], ["--set", "shards=1"]):
        docs = render(helm, *values)
        (deploy,) = by_kind(docs, "Deployment")
        assert by_kind(docs, "StatefulSet") == [] and deploy["spec"]["replicas"] == 1
        assert SHARD_COUNT_ENV not in env_of(deploy) and SHARD_INDEX_ENV not in env_of(deploy)


def test_notes_say_where_a_twin_is_and_what_moves(helm: str) -> None:
    proc = subprocess.run([helm, "install", "twins", str(check_deploy.CHART), "--namespace", "monitoring",
                           "--dry-run=client", "--set", "shards=3", *POSTGRES], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "3 shards" in notes and "http://twins-twin-sidecar-$i.twins-twin-sidecar-pods.monitoring.svc:9464" in notes
    assert "seq 0 2" in notes and "another pod" in notes
