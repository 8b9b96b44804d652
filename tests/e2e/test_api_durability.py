"""The assembled service: an API state change answered 200 is already in the database; 202 when it cannot be.

Real everything: Prometheus (the session's ``prom_env``), the sidecar's HTTP server, SQLite files and the
PostgreSQL at ``TEST_DATABASE_URL``. The database is read straight after the response with a blocking
connection, so nothing (the store writer included) runs between the answer and the check. A slow
database is another connection holding the lock the writer needs; a database that is down is a SQLite
file made immutable (chattr +i, root) or a PostgreSQL reached through a relay that is stopped.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
import yaml
from helpers.files import ReadOnlyFile
from helpers.prom import PromEnv
from helpers.service import assert_matches, one_twin_rules, wait_for
from helpers.stores import PG_URL, Relay, WriteLockHolder, pg_target

from sidecar.api import EVENTS_FROM_MEMORY_MESSAGE, NOT_STORED_MESSAGE
from sidecar.app import Service, _BufferedHistory, start_service
from sidecar.config import load_config
from sidecar.testing import free_port, wait_ready

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

T = TypeVar("T")


def blocking(coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on its own loop in a thread and block this one until it is done: nothing else of
    the service (the store writer included) runs meanwhile."""
    out: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.append(asyncio.run(coro()))
        except BaseException as e:      # re-raised in the test's thread
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    if errors:
        raise errors[0]
    return out[0]


def sqlite_state(db: Path, twin_id: str, snapshot_id: str) -> tuple[bool, Any]:
    """(is the snapshot in the file, the stored definition's expected state), read with a new connection."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        found = conn.execute("SELECT 1 FROM twin_state_history WHERE snapshot_id = ?", (snapshot_id,)).fetchone()
        row = conn.execute("SELECT definition FROM twin_definitions WHERE twin_id = ?", (twin_id,)).fetchone()
    finally:
        conn.close()
    return found is not None, json.loads(row[0]).get("expected_state") if row else None


def pg_state(url: str, twin_id: str, snapshot_id: str) -> tuple[bool, Any]:
    async def read() -> tuple[bool, Any]:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            found = await conn.fetchval("SELECT 1 FROM twin_state_history WHERE snapshot_id = $1", snapshot_id)
            definition = await conn.fetchval("SELECT definition FROM twin_definitions WHERE twin_id = $1", twin_id)
        finally:
            await conn.close()
        return found is not None, json.loads(definition).get("expected_state") if definition else None
    return blocking(read)


def history_of(svc: Service) -> _BufferedHistory:
    store = svc.facade.store
    assert isinstance(store, _BufferedHistory)
    return store


@pytest.fixture
async def sqlite_service(tmp_path: Path, prom_env: PromEnv) -> AsyncIterator[tuple[Service, Path]]:
    db = tmp_path / "twins.db"
    svc = await start_service(load_config(one_twin_rules(tmp_path, prom_env.url, db)))
    try:
        await wait_for(lambda: svc.status.first_round_done)
        yield svc, db
    finally:
        await svc.shutdown()


# ------------------------------------------------------------------------------------------- 200: on disk


async def test_sqlite_a_200_is_on_disk_when_the_response_arrives(sqlite_service: tuple[Service, Path]) -> None:
    svc, db = sqlite_service
    async with httpx.AsyncClient(base_url=svc.url, timeout=10) as http:
        for value in (105.0, 7.5, 60.0):
            resp = await http.put("/api/v1/twins/svc/expected", json={"cpu_usage": value})
            found, expected = sqlite_state(db, resp.json()["twin_id"], resp.json()["snapshot_id"])
            assert resp.status_code == 200, resp.text
            assert resp.json()["stored"] is True
            assert found and expected == {"cpu_usage": value}
            assert_matches(resp.json(), "/api/v1/twins/{twin}/expected", "put", 200)


async def test_sqlite_a_slow_commit_is_waited_for_then_200_and_on_disk(
        sqlite_service: tuple[Service, Path]) -> None:
    """Another connection holds the write lock for 1 s: the old API answered before the commit."""
    svc, db = sqlite_service
    async with httpx.AsyncClient(base_url=svc.url, timeout=10) as http:
        with WriteLockHolder(db, 1.0):
            t0 = time.monotonic()
            resp = await http.put("/api/v1/twins/svc/expected", json={"cpu_usage": 105})
            took = time.monotonic() - t0
            found, expected = sqlite_state(db, resp.json()["twin_id"], resp.json()["snapshot_id"])
        assert resp.status_code == 200 and resp.json()["stored"] is True
        assert found and expected == {"cpu_usage": 105.0}
        assert 0.5 < took < 3.0, took              # it waited for the lock, and no longer


async def test_sqlite_rollback_200_is_on_disk(sqlite_service: tuple[Service, Path]) -> None:
    svc, db = sqlite_service
    async with httpx.AsyncClient(base_url=svc.url, timeout=10) as http:
        first = (await http.put("/api/v1/twins/svc/expected", json={"cpu_usage": 10})).json()
        second = (await http.put("/api/v1/twins/svc/expected", json={"cpu_usage": 20})).json()
        assert first["stored"] and second["stored"]
        resp = await http.post("/api/v1/twins/svc/rollback", json={"snapshot_id": second["snapshot_id"]})
        body = resp.json()
        found, expected = sqlite_state(db, body["twin_id"], body["undo_snapshot_id"])
        assert resp.status_code == 200 and body["stored"] is True, resp.text
        assert found and expected == {"cpu_usage": 10.0}      # the state the snapshot held
        assert_matches(body, "/api/v1/twins/{twin}/rollback", "post", 200)


async def test_concurrent_changes_each_wait_for_their_own_commit(sqlite_service: tuple[Service, Path]) -> None:
    svc, db = sqlite_service
    async with httpx.AsyncClient(base_url=svc.url, timeout=15) as http:
        with WriteLockHolder(db, 0.8):
            resps = await asyncio.gather(*(http.put("/api/v1/twins/svc/expected", json={"cpu_usage": v})
                                           for v in range(1, 9)))
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            ids = {r[0] for r in conn.execute("SELECT snapshot_id FROM twin_state_history")}
        finally:
            conn.close()
    assert [r.status_code for r in resps] == [200] * 8
    assert all(r.json()["stored"] is True for r in resps)
    assert {r.json()["snapshot_id"] for r in resps} <= ids
    assert len({r.json()["snapshot_id"] for r in resps}) == 8


# ------------------------------------------------------------------------------------------- 202: not yet


async def test_sqlite_down_gives_202_and_the_change_is_written_when_it_returns(
        sqlite_service: tuple[Service, Path]) -> None:
    svc, db = sqlite_service
    wal = Path(f"{db}-wal")
    assert wal.exists()
    locks = [ReadOnlyFile(db), ReadOnlyFile(wal)]
    try:
        for lock in locks:
            lock.lock()
        async with httpx.AsyncClient(base_url=svc.url, timeout=10) as http:
            t0 = time.monotonic()
            first = await http.put("/api/v1/twins/svc/expected", json={"cpu_usage": 105})
            second = await http.put("/api/v1/twins/svc/expected", json={"cpu_usage": 50})
            took = time.monotonic() - t0
            for resp in (first, second):
                assert resp.status_code == 202, resp.text
                body = resp.json()
                assert body["stored"] is False and body["message"] == NOT_STORED_MESSAGE
                assert_matches(body, "/api/v1/twins/{twin}/expected", "put", 202)
            assert took < 3.0, took                   # a failed attempt answers; nobody waits for the timeout
            assert svc.status.store_up is False
            # applied all the same: the API serves the new state
            assert (await http.get("/api/v1/twins/svc")).json()["expected_state"] == {"cpu_usage": 50.0}
            assert sqlite_state(db, first.json()["twin_id"], first.json()["snapshot_id"])[0] is False
    finally:
        for lock in locks:
            lock.unlock()
    await wait_for(lambda: svc.status.store_up and svc.status.store_backlog == 0)
    twin_id = first.json()["twin_id"]
    assert sqlite_state(db, twin_id, first.json()["snapshot_id"]) == (True, {"cpu_usage": 50.0})
    assert sqlite_state(db, twin_id, second.json()["snapshot_id"])[0] is True


async def test_sqlite_slower_than_the_wait_gives_202_and_is_written_later(
        sqlite_service: tuple[Service, Path]) -> None:
    svc, db = sqlite_service
    history_of(svc).wait_s = 0.3
    async with httpx.AsyncClient(base_url=svc.url, timeout=10) as http:
        with WriteLockHolder(db, 1.5):
            resp = await http.put("/api/v1/twins/svc/expected", json={"cpu_usage": 33})
            assert resp.status_code == 202 and resp.json()["stored"] is False
            assert sqlite_state(db, resp.json()["twin_id"], resp.json()["snapshot_id"])[0] is False
    await wait_for(lambda: svc.status.store_backlog == 0)
    assert sqlite_state(db, resp.json()["twin_id"], resp.json()["snapshot_id"]) == (True, {"cpu_usage": 33.0})


async def test_simulate_changes_and_stores_nothing(sqlite_service: tuple[Service, Path]) -> None:
    svc, _ = sqlite_service
    async with httpx.AsyncClient(base_url=svc.url, timeout=30) as http:
        before = (await http.get("/api/v1/twins/svc/history")).json()
        resp = await http.post("/api/v1/twins/svc/simulate",
                               json={"type": "traffic_spike", "traffic_multiplier": 2, "seed": 1})
        after = (await http.get("/api/v1/twins/svc/history")).json()
    assert resp.status_code == 200, resp.text
    assert "stored" not in resp.json() and resp.json()["source"] == "simulation"
    assert after["snapshots"] == before["snapshots"]


# ------------------------------------------------------------------------------------------- PostgreSQL


async def test_postgres_a_200_is_committed_when_the_response_arrives(
        tmp_path: Path, prom_env: PromEnv, pg_url: str) -> None:
    svc = await start_service(load_config(one_twin_rules(tmp_path, prom_env.url, tmp_path / "unused.db")))
    try:
        assert svc.store.backend == "postgres"
        await wait_for(lambda: svc.status.first_round_done)
        async with httpx.AsyncClient(base_url=svc.url, timeout=10) as http:
            for value in (105.0, 7.5):
                resp = await http.put("/api/v1/twins/svc/expected", json={"cpu_usage": value})
                found, expected = pg_state(pg_url, resp.json()["twin_id"], resp.json()["snapshot_id"])
                assert resp.status_code == 200 and resp.json()["stored"] is True, resp.text
                assert found and expected == {"cpu_usage": value}
            # a slow commit: another transaction holds a lock every write of a snapshot needs, for 1 s
            holder = await asyncpg.connect(pg_url)
            tx = holder.transaction()
            await tx.start()
            await holder.execute("LOCK TABLE twin_state_history IN SHARE MODE")
            release = asyncio.get_running_loop().call_later(1.0, lambda: asyncio.ensure_future(tx.commit()))
            t0 = time.monotonic()
            resp = await http.put("/api/v1/twins/svc/expected", json={"cpu_usage": 66})
            took = time.monotonic() - t0
            found, expected = pg_state(pg_url, resp.json()["twin_id"], resp.json()["snapshot_id"])
            release.cancel()
            await holder.close()
            assert resp.status_code == 200 and resp.json()["stored"] is True, resp.text
            assert found and expected == {"cpu_usage": 66.0}
            assert 0.5 < took < 3.0, took
    finally:
        await svc.shutdown()


async def test_postgres_down_gives_202_then_the_change_is_written_in_order(
        tmp_path: Path, prom_env: PromEnv, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    relay = Relay(pg_target())
    await relay.start()
    schema = pg_url.rsplit("search_path=", 1)[1]
    host, port = pg_target()
    monkeypatch.setenv("DATABASE_URL", pg_url.replace(f"{host}:{port}", f"127.0.0.1:{relay.port}"))
    svc = await start_service(load_config(one_twin_rules(tmp_path, prom_env.url, tmp_path / "unused.db")))
    try:
        await wait_for(lambda: svc.status.first_round_done and svc.status.store_backlog == 0)
        await relay.stop()                                  # the database goes away, cutting live connections
        async with httpx.AsyncClient(base_url=svc.url, timeout=15) as http:
            first = await http.put("/api/v1/twins/svc/expected", json={"cpu_usage": 105})
            second = await http.post("/api/v1/twins/svc/rollback", json={"snapshot_id": first.json()["snapshot_id"]})
            assert first.status_code == 202 and first.json()["stored"] is False, first.text
            assert second.status_code == 202 and second.json()["stored"] is False, second.text
            assert second.json()["message"] == NOT_STORED_MESSAGE
            assert_matches(second.json(), "/api/v1/twins/{twin}/rollback", "post", 202)
            assert pg_state(pg_url, first.json()["twin_id"], first.json()["snapshot_id"])[0] is False
            await relay.start()                             # and comes back
            await wait_for(lambda: svc.status.store_up and svc.status.store_backlog == 0)
            third = await http.put("/api/v1/twins/svc/expected", json={"cpu_usage": 77})
            assert third.status_code == 200 and third.json()["stored"] is True
        twin_id = first.json()["twin_id"]
        assert pg_state(pg_url, twin_id, first.json()["snapshot_id"])[0]
        assert pg_state(pg_url, twin_id, second.json()["undo_snapshot_id"]) == (True, {"cpu_usage": 77.0})
        conn = await asyncpg.connect(PG_URL)
        try:
            order = [r[0] for r in await conn.fetch(
                f'SELECT snapshot_id FROM "{schema}".twin_state_history WHERE twin_id = $1 ORDER BY id', twin_id)]
        finally:
            await conn.close()
        ours = [first.json()["snapshot_id"], second.json()["undo_snapshot_id"], third.json()["snapshot_id"]]
        assert [s for s in order if s in ours] == ours          # written in the order they were made
    finally:
        await svc.shutdown()
        await relay.stop()


# ------------------------------------------------------------------------------------------- events across a restart


def _start_sidecar(rules_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "sidecar.app", "--config", str(rules_path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def _stop_sidecar(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=30) == 0, "an orderly stop exits 0"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _event_ids(body: dict[str, Any]) -> list[str]:
    return [e["event_id"] for e in body["events"]]


def _events_across_a_restart(tmp_path: Path, prom_url: str, env: dict[str, str],
                             stored_ids: Callable[[], set[str]]) -> None:
    """Run a real sidecar process, make events, stop it (SIGTERM), start it again on the same store: the
    events API serves what the store holds, each event once, and pages through it."""
    port = free_port()
    rules_path = tmp_path / "rules.yaml"
    rules_path.write_text(yaml.safe_dump({
        "prometheus": {"url": prom_url}, "interval": "1s", "backfill": "0",
        "server": {"listen": f"127.0.0.1:{port}"}, "storage": {"path": str(tmp_path / "twins.db")},
        "twins": [{"name": "svc", "metrics": {"cpu_usage": 'test_gauge{k="a"}'}}],
    }))
    url = f"http://127.0.0.1:{port}"
    proc = _start_sidecar(rules_path, env)
    try:
        wait_ready(url, proc)
        with httpx.Client(base_url=url, timeout=10) as http:
            snapshot = http.put("/api/v1/twins/svc/expected", json={"cpu_usage": 50}).json()["snapshot_id"]
            for _ in range(3):
                assert http.post("/api/v1/twins/svc/rollback", json={"snapshot_id": snapshot}).status_code == 200
            first = http.get("/api/v1/events").json()
    finally:
        _stop_sidecar(proc)
    rows = stored_ids()
    assert set(_event_ids(first)) <= rows, "every event served before the stop is stored"

    proc = _start_sidecar(rules_path, env)
    try:
        wait_ready(url, proc)
        with httpx.Client(base_url=url, timeout=10) as http:
            after = http.get("/api/v1/events").json()
            assert_matches(after, "/api/v1/events", "get", 200)
            ids = _event_ids(after)
            assert after["source"] == "store"
            assert len(ids) == len(set(ids)), "each event once"
            assert rows <= set(ids), "every stored event is served after the restart"
            assert [e["type"] for e in after["events"]].count("rollback") == 3
            assert http.post("/api/v1/twins/svc/rollback", json={"snapshot_id": snapshot}).status_code == 200
            rollbacks = http.get("/api/v1/events", params={"type": "rollback", "twin": "svc"}).json()
            assert rollbacks["count"] == 4 and len(set(_event_ids(rollbacks))) == 4
            walked: list[str] = []
            params: dict[str, Any] = {"type": "rollback", "limit": 1}
            while True:
                page = http.get("/api/v1/events", params=params).json()
                walked += _event_ids(page)
                if page["next_before"] is None:
                    break
                params.update(before=repr(page["next_before"]), before_id=page["next_before_id"])
            assert walked == _event_ids(rollbacks)
    finally:
        _stop_sidecar(proc)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TWIN_SIDECAR_REPLICA")}
    return {**env, **extra}


def test_sqlite_events_outlive_a_restart_of_the_sidecar_process(tmp_path: Path, prom_env: PromEnv) -> None:
    def stored() -> set[str]:
        conn = sqlite3.connect(f"file:{tmp_path / 'twins.db'}?mode=ro", uri=True)
        try:
            return {r[0] for r in conn.execute("SELECT event_id FROM twin_events")}
        finally:
            conn.close()

    _events_across_a_restart(tmp_path, prom_env.url, _env(), stored)


async def test_postgres_events_outlive_a_restart_of_the_sidecar_process(tmp_path: Path, prom_env: PromEnv,
                                                                        pg_url: str) -> None:
    async def read() -> set[str]:
        conn = await asyncpg.connect(pg_url, timeout=5)
        try:
            return {r[0] for r in await conn.fetch("SELECT event_id FROM twin_events")}
        finally:
            await conn.close()

    await asyncio.to_thread(_events_across_a_restart, tmp_path, prom_env.url, _env(DATABASE_URL=pg_url),
                            lambda: blocking(read))


async def test_events_are_served_from_memory_while_postgres_is_down_and_say_so(
        tmp_path: Path, prom_env: PromEnv, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    relay = Relay(pg_target())
    await relay.start()
    host, port = pg_target()
    monkeypatch.setenv("DATABASE_URL", pg_url.replace(f"{host}:{port}", f"127.0.0.1:{relay.port}"))
    svc = await start_service(load_config(one_twin_rules(tmp_path, prom_env.url, tmp_path / "unused.db")))
    try:
        await wait_for(lambda: svc.status.first_round_done and svc.status.store_backlog == 0)
        async with httpx.AsyncClient(base_url=svc.url, timeout=15) as http:
            up = (await http.get("/api/v1/events")).json()
            assert up["source"] == "store" and "message" not in up
            await relay.stop()                              # the database goes away
            down = (await http.get("/api/v1/events")).json()
            assert_matches(down, "/api/v1/events", "get", 200)
            assert down["source"] == "memory" and down["message"] == EVENTS_FROM_MEMORY_MESSAGE
            assert set(_event_ids(up)) <= set(_event_ids(down)), "this run's events are all in memory"
            await relay.start()                             # and comes back
            back = (await http.get("/api/v1/events")).json()
            assert back["source"] == "store" and "message" not in back
    finally:
        await svc.shutdown()
        await relay.stop()
