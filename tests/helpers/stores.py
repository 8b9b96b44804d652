"""Stores under test conditions: the PostgreSQL the tests use, a relay that takes it away and brings it back,
a slow SQLite (another connection holding the write lock) and rounds of writes that name themselves."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import numpy as np

from helpers.store_contract import T0, samples, snap
from sidecar.engine.view import Outbox
from sidecar.store import open_store

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def pg_target() -> tuple[str, int]:
    """Host and port of the tests' PostgreSQL."""
    u = urlsplit(PG_URL)
    return u.hostname or "127.0.0.1", u.port or 5432


def round_outbox(i: int, n_samples: int = 10) -> Outbox:
    """One scheduler round: a snapshot and ``n_samples`` samples at times that name the round."""
    times = T0 + 1000.0 * i + np.arange(n_samples, dtype=float)
    return Outbox(snapshots=[snap("twin_a", f"s{i:03d}", T0 + 1000.0 * i)],
                  samples=[samples("twin_a", "cpu_usage", times, np.full(n_samples, float(i)))])


async def migrated_file(path: Path) -> None:
    """A SQLite file with the current schema, closed cleanly."""
    s = open_store(path=path, env={})
    await s.open()
    await s.close()
    assert not Path(f"{path}-wal").exists()       # a clean close leaves only the database file


class Relay:
    """A TCP relay to the real PostgreSQL: stopping it is "nothing listening" and cuts live connections."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._conns):
            w.close()
        self._conns.clear()

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            sr, sw = await asyncio.open_connection(*self.target)
        except OSError:
            cw.close()
            return
        self._conns |= {cw, sw}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(pipe(cr, sw), pipe(sr, cw))
        self._conns -= {cw, sw}


class WriteLockHolder:
    """Another connection holding SQLite's write lock (BEGIN IMMEDIATE) for ``seconds``: a slow database."""

    def __init__(self, path: Path, seconds: float) -> None:
        self.path, self.seconds = path, seconds
        self.held = threading.Event()
        self.thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            self.held.set()
            time.sleep(self.seconds)
            conn.execute("COMMIT")
        finally:
            conn.close()

    def __enter__(self) -> WriteLockHolder:
        self.thread.start()
        assert self.held.wait(10)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.thread.join(30)
