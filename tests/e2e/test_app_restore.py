"""A database that is down at start loses nothing: the stored twins are merged when it returns."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from helpers.prom import PromEnv
from helpers.service import one_twin_rules, wait_for

from sidecar.app import start_service
from sidecar.config import load_config
from sidecar.store import open_store

pytestmark = pytest.mark.integration


async def test_store_down_at_start_then_back(tmp_path: Path, prom_env: PromEnv) -> None:
    dbdir = tmp_path / "db"
    dbdir.mkdir()
    cfg = load_config(one_twin_rules(tmp_path, prom_env.url, dbdir / "twins.db"))

    first = await start_service(cfg)
    await wait_for(lambda: first.status.first_round_done)
    await first.facade.set_expected_state("svc", {"cpu_usage": 42.0})
    await first.shutdown()

    away = tmp_path / "db.away"
    dbdir.rename(away)                                   # the database is unreachable at start:
    dbdir.write_text("not a directory")                  # a file where its directory should be
    second = await start_service(cfg)
    try:
        await wait_for(lambda: second.status.first_round_done)
        assert second.engine.get("svc").expected_state is None      # started afresh from the rules
        assert second.sink is not None and second.sink.pending
        await asyncio.sleep(1.5)                                      # rounds run; definitions are held back
        dbdir.unlink()
        away.rename(dbdir)                                            # the database returns
        await wait_for(lambda: second.sink is not None and not second.sink.pending, timeout=30)
        twin = second.engine.get("svc")
        assert twin.expected_state == {"cpu_usage": 42.0}            # nothing stored was lost
        assert twin.state_history[-1].change_reason.endswith("restored from the store after an outage)")
        await wait_for(lambda: second.status.store_backlog == 0 and second.status.store_up, timeout=30)
    finally:
        await second.shutdown()

    store = open_store(path=str(dbdir / "twins.db"), url=None, replica="default")
    try:
        [stored] = await store.load_twins()
        assert stored.definition["expected_state"] == {"cpu_usage": 42.0}
        reasons = [s.change_reason for s in stored.snapshots]
        assert reasons.count("created") == 2 and any("restored from the store" in r for r in reasons)
    finally:
        await store.close()
