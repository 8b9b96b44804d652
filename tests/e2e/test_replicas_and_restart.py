"""Restart semantics: two replicas with the same rules on one PostgreSQL each keep their own twins; a restored
twin keeps its stored expected state over the rules' and says so.

The twin id was a hash of the name alone, so both replicas' twins shared one definition row and one model
state row (owned by whichever replica wrote first): the other replica's acknowledged expected state was lost
on restart, its model state never saved, its history mixed with the first's, and retention kept only one
replica's newest snapshot. Real PostgreSQL, real Prometheus, the real service.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg
import httpx
import pytest
from helpers.prom import PromEnv
from helpers.service import one_twin_rules, wait_for

from sidecar.app import REPLICA_ENV, Service, start_service
from sidecar.config import load_config
from sidecar.engine.core import stable_twin_id

pytestmark = pytest.mark.integration


async def _start(replica: str, rules_path: Path, monkeypatch: pytest.MonkeyPatch) -> Service:
    monkeypatch.setenv(REPLICA_ENV, replica)
    svc = await start_service(load_config(rules_path))
    await wait_for(lambda: svc.status.first_round_done)
    return svc


def test_each_replica_has_its_own_ids_and_a_single_replica_keeps_the_old_ones() -> None:
    assert stable_twin_id("svc") == stable_twin_id("svc", "")
    assert len({stable_twin_id("svc"), stable_twin_id("svc", "a"), stable_twin_id("svc", "b")}) == 3


async def test_two_replicas_keep_their_own_expected_state_history_and_model_state(
        tmp_path: Path, prom_env: PromEnv, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = one_twin_rules(tmp_path, prom_env.url, tmp_path / "unused.db")
    a = await _start("a", path, monkeypatch)
    b = await _start("b", path, monkeypatch)
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            ra = await http.put(f"{a.url}/api/v1/twins/svc/expected", json={"cpu_usage": 11})
            rb = await http.put(f"{b.url}/api/v1/twins/svc/expected", json={"cpu_usage": 22})
            assert ra.status_code == rb.status_code == 200 and ra.json()["stored"] and rb.json()["stored"]
            assert ra.json()["twin_id"] != rb.json()["twin_id"]
            # b's history holds b's snapshots only, and a's snapshot is no rollback target for b
            hist_b = (await http.get(f"{b.url}/api/v1/twins/svc/history")).json()
            ids_b = {e["snapshot_id"] for e in hist_b["snapshots"]}
            assert rb.json()["snapshot_id"] in ids_b and ra.json()["snapshot_id"] not in ids_b
            back = await http.post(f"{b.url}/api/v1/twins/svc/rollback", json={"snapshot_id": ra.json()["snapshot_id"]})
            assert back.status_code == 404, back.text
    finally:
        await b.shutdown()
    b = await _start("b", path, monkeypatch)          # b restarts: its acknowledged change is still there
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(f"{b.url}/api/v1/twins/svc")).json()["expected_state"] == {"cpu_usage": 22.0}
            assert (await http.get(f"{a.url}/api/v1/twins/svc")).json()["expected_state"] == {"cpu_usage": 11.0}
    finally:
        await b.shutdown()
        await a.shutdown()
    conn = await asyncpg.connect(pg_url)
    try:
        owners = await conn.fetch("SELECT owner, twin_id FROM twin_model_state ORDER BY owner")
        defs = await conn.fetch("SELECT owner FROM twin_definitions ORDER BY owner")
    finally:
        await conn.close()
    assert [r["owner"] for r in owners] == ["a", "b"] and owners[0]["twin_id"] != owners[1]["twin_id"]
    assert [r["owner"] for r in defs] == ["a", "b"]


async def test_a_changed_expected_in_the_rules_is_not_applied_to_a_restored_twin_and_says_so(
        tmp_path: Path, prom_env: PromEnv, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Editing `expected:` for an existing twin changed nothing, silently (the stored state wins, as documented)."""
    import logging

    import yaml

    monkeypatch.delenv("DATABASE_URL", raising=False)
    path = one_twin_rules(tmp_path, prom_env.url, tmp_path / "twins.db")
    doc = yaml.safe_load(path.read_text())
    doc["twins"][0]["expected"] = {"cpu_usage": 50}
    path.write_text(yaml.safe_dump(doc))
    svc = await _start("default", path, monkeypatch)
    await svc.shutdown()
    doc["twins"][0]["expected"] = {"cpu_usage": 60}
    path.write_text(yaml.safe_dump(doc))
    caplog.set_level(logging.WARNING, logger="sidecar.collect")
    svc = await _start("default", path, monkeypatch)
    try:
        assert svc.engine.get("svc").expected_state == {"cpu_usage": 50.0}
        warned = [r for r in caplog.records if "rules' `expected` is not applied" in r.getMessage()]
        assert warned and getattr(warned[0], "twin", None) == "svc"
    finally:
        await svc.shutdown()


async def test_a_twin_stored_before_replica_ids_keeps_its_id_and_state(
        tmp_path: Path, prom_env: PromEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """Upgrading: the chart has always named a single pod's replica after its instance, and that name now enters
    new twin ids; a twin the previous version stored under the name-only id (owned by that replica) is restored
    with that id and its state, not started afresh. The previous version is simulated by the rows it wrote: a
    twin with the name-only id whose rows are owned by the instance's replica name."""
    import sqlite3

    monkeypatch.delenv("DATABASE_URL", raising=False)
    db = tmp_path / "twins.db"
    path = one_twin_rules(tmp_path, prom_env.url, db)
    old = await _start("default", path, monkeypatch)
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            put = await http.put(f"{old.url}/api/v1/twins/svc/expected", json={"cpu_usage": 33})
            assert put.status_code == 200 and put.json()["twin_id"] == stable_twin_id("svc")
    finally:
        await old.shutdown()
    conn = sqlite3.connect(db)
    with conn:     # snapshots are append-only (a trigger refuses updates); ownership lives in these two
        for table in ("twin_definitions", "twin_model_state"):
            conn.execute(f"UPDATE {table} SET owner = 'rel-twin-sidecar'")
    conn.close()
    new = await _start("rel-twin-sidecar", path, monkeypatch)
    try:
        twin = new.engine.get("svc")
        assert twin.twin_id == stable_twin_id("svc") and twin.expected_state == {"cpu_usage": 33.0}
    finally:
        await new.shutdown()
