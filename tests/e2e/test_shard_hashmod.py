"""A twin's shard is the one Prometheus' own ``hashmod`` relabelling gives its naming labels: a real Prometheus
relabels targets carrying the same labels, and the shard it writes on each is the sidecar's."""

from __future__ import annotations

import time

import httpx
import pytest
from helpers.prom import require_prometheus

from sidecar.collect.shard import shard_of_key
from sidecar.testing import PrometheusServer

pytestmark = pytest.mark.integration

COUNT = 5
LABELS = [{"namespace": f"ns-{n % 3}", "pod": f"checkout-{n:03d}-x{n * 7919 % 1000}"} for n in range(60)]


def test_the_shard_is_prometheus_hashmod_of_the_naming_label_values() -> None:
    require_prometheus()
    job = {"job_name": "shards", "scrape_interval": "1h",
           "static_configs": [{"targets": ["127.0.0.1:9"], "labels": lbl} for lbl in LABELS],
           "relabel_configs": [
               {"source_labels": ["namespace", "pod"], "modulus": COUNT, "target_label": "__tmp_shard",
                "action": "hashmod"},
               {"source_labels": ["__tmp_shard"], "target_label": "shard"}]}
    with PrometheusServer(scrape_configs=[job]) as prom:
        deadline = time.monotonic() + 30
        while True:
            active = httpx.get(f"{prom.url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            if len(active) == len(LABELS):
                break
            assert time.monotonic() < deadline, len(active)
            time.sleep(0.2)
    theirs = {(t["labels"]["namespace"], t["labels"]["pod"]): int(t["labels"]["shard"]) for t in active}
    ours = {(lbl["namespace"], lbl["pod"]): shard_of_key(tuple(lbl.items()), COUNT) for lbl in LABELS}
    assert ours == theirs
    assert set(ours.values()) == set(range(COUNT))
