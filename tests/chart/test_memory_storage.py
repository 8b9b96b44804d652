"""The chart's storage.type=memory end to end: rendered rules accepted by `twin-sidecar check-config`, and the
sidecar run on exactly those rules keeps and serves history (its first read finds the schema, no "no such table")."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers.prom import PromEnv

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import check_deploy  # noqa: E402


@pytest.fixture(scope="module")
def memory_docs(helm: str) -> list[dict[str, Any]]:
    docs, _ = check_deploy.render(helm, ["--set", "storage.type=memory"])
    return docs


def rendered_rules(docs: list[dict[str, Any]]) -> str:
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and "rules.yaml" in d.get("data", {})]
    text: str = cm["data"]["rules.yaml"]
    return text


def test_memory_mode_renders_an_in_memory_store_and_no_volume_claim(memory_docs: list[dict[str, Any]]) -> None:
    rules = yaml.safe_load(rendered_rules(memory_docs))
    assert rules["storage"] == {"path": ":memory:"}
    assert not [d for d in memory_docs if d["kind"] == "PersistentVolumeClaim"]
    (deployment,) = [d for d in memory_docs if d["kind"] == "Deployment"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["twin-sidecar-data"]      # nothing is written there: the database is in memory


def test_twin_sidecar_check_config_accepts_the_rendered_rules(memory_docs: list[dict[str, Any]],
                                                              tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(rendered_rules(memory_docs))
    proc = subprocess.run([sys.executable, "-m", "sidecar.cli", "check-config", str(path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stdout


async def test_the_store_of_the_rendered_rules_keeps_what_it_is_given(memory_docs: list[dict[str, Any]],
                                                                       tmp_path: Path) -> None:
    from helpers.store_contract import T0, snap, twin

    from sidecar.config import load_config
    from sidecar.engine.view import Outbox
    from sidecar.store import open_store, schema

    path = tmp_path / "rules.yaml"
    path.write_text(rendered_rules(memory_docs))
    cfg = load_config(path, env={})
    store = open_store(path=cfg.storage.path, url=cfg.storage.url, env={})
    try:
        await store.open()
        assert await store.schema_version() == schema.LATEST_VERSION
        await store.write(Outbox(twins=[twin("a")], snapshots=[snap("twin_a", "s1", T0)]))
        assert [e.snapshot_id for e in await store.list_snapshots("twin_a")] == ["s1"]
    finally:
        await store.close()


@pytest.mark.integration
async def test_sidecar_on_the_rendered_memory_rules_serves_history(memory_docs: list[dict[str, Any]],
                                                                   prom_env: PromEnv, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    from sidecar.app import start_service
    from sidecar.config import load_config

    rules = yaml.safe_load(rendered_rules(memory_docs))
    rules["prometheus"]["url"] = prom_env.url        # what the pod would reach, here a real local Prometheus
    rules["server"]["listen"] = "127.0.0.1:0"        # loopback only
    rules["interval"] = "1s"
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    caplog.set_level(logging.INFO)
    svc = await start_service(load_config(path, env={}))
    try:
        async with httpx.AsyncClient(base_url=svc.url, timeout=10) as http:
            while not svc.status.first_round_done:
                await asyncio.sleep(0.1)
            put = await http.put("/api/v1/twins/example-api/expected", json={"cpu_usage": 40.0})
            assert put.status_code == 200, put.text
            twin_id = (await http.get("/api/v1/twins/example-api")).json()["twin_id"]
            for _ in range(100):
                if await svc.store.list_snapshots(twin_id):
                    break
                await asyncio.sleep(0.1)
            assert await svc.store.list_snapshots(twin_id), "nothing reached the memory store"
            hist = await http.get("/api/v1/twins/example-api/history")
            assert hist.status_code == 200, hist.text
            assert hist.json()["count"] >= 1
            assert "twin_store_up 1.0" in (await http.get("/metrics")).text
    finally:
        await svc.shutdown()
    messages = [r.getMessage() for r in caplog.records]
    assert not any("history store unavailable" in m or "no such table" in m for m in messages)
