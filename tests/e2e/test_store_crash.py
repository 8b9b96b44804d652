"""kill -9 in the middle of heavy writing: after each restart the database opens, every acknowledged snapshot
is there and verifies, nothing is half-written (SQLite file and PostgreSQL).

A handful of rounds here keeps the suite quick; ``benchmarks/crash_store.py`` runs the same harness 50+
times per database and writes ``benchmarks/results/crash_store.md``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from helpers.bench import load_benchmark

crash = load_benchmark("crash_store")


def _hit_every_phase(result: object) -> bool:
    """Kill times are random and a loaded machine shifts them: keep going until a kill landed inside a write
    (after some batches were acknowledged) and one landed during start-up and migration."""
    rounds = result.rounds  # type: ignore[attr-defined]
    return (any(r.phase == "mid-write" for r in rounds)
            and any(r.phase == "startup" for r in rounds)
            and sum(r.acked_this_round for r in rounds) > 0)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_kill_9_while_writing_loses_nothing_acknowledged(backend: str, tmp_path: Path) -> None:
    if backend == "postgres" and not crash.pg_available():
        pytest.skip(f"no PostgreSQL server answers at {crash.PG_URL}")
    result = crash.run(backend, 5, seed=7, workdir=tmp_path, log=lambda _: None,
                       until=_hit_every_phase, max_rounds=30)
    bad = [r for r in result.rounds if not r.ok]
    assert not bad, bad[0].error
    assert any(r.phase == "mid-write" for r in result.rounds), "no kill landed inside a write: nothing was tested"
    assert sum(r.acked_this_round for r in result.rounds) > 0, "nothing was acknowledged before a kill"
    assert any(r.phase == "startup" for r in result.rounds), "no kill landed during start-up and migration"


def test_the_checker_catches_a_half_written_batch(tmp_path: Path) -> None:
    """Proof the harness would notice: remove part of an acknowledged batch and it must complain."""
    path = str(tmp_path / "twins.db")

    async def write() -> None:
        store = crash.make_store("sqlite", path)
        for seq in (1, 2):
            await store.write(crash.batch_outbox(seq))
        await store.close()

    asyncio.run(write())
    asyncio.run(crash.verify("sqlite", path, {1, 2}))            # whole: passes
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM twin_metrics_history WHERE timestamp = ?", (crash.T0 + 2 * 1000.0,))
    conn.commit()
    conn.close()
    with pytest.raises(AssertionError, match="batch 2 half-written"):
        asyncio.run(crash.verify("sqlite", path, {1, 2}))
    with pytest.raises(AssertionError, match="acknowledged batches missing"):
        asyncio.run(crash.verify("sqlite", path, {1, 2, 3}))
