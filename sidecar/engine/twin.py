"""``TwinEngine``: the old design's async calling surface over the pure engine.

Code written against the in-process design (``await engine.sync_twin(...)``)
keeps working. This layer adds what needs ``await``: the per-twin sync lock
and looking up snapshots in the store for rollbacks past the in-memory ones.
It reads the clock it is handed, never the system one directly.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import InputError, UnknownSnapshotError
from .core import Engine
from .history import HistoryStore, verified
from .records import DigitalTwin, StateHistoryEntry, SystemMetrics, SystemType
from .view import Outbox

log = logging.getLogger(__name__)

SYNC_IN_PROGRESS = "sync already in progress"


class TwinEngine:
    """Async facade; see the module docstring.

    >>> import asyncio
    >>> async def demo():
    ...     eng = TwinEngine(clock=lambda: 1_700_000_000.0)
    ...     twin = await eng.create_twin("api", SystemType.API_GATEWAY)
    ...     return (await eng.sync_twin(twin.twin_id, SystemMetrics(cpu_usage=40.0)))["synced"]
    >>> asyncio.run(demo())
    True
    """

    def __init__(self, engine: Engine | None = None, *, store: HistoryStore | None = None,
                 clock: Callable[[], float] = time.time, sink: Callable[[Outbox], Any] | None = None) -> None:
        """``store`` is where older snapshots are looked up. What changed is handed to ``sink``
        (the service's buffered writer, so a database outage never fails an API call); without
        a sink it is written to ``store`` directly (library use)."""
        self.engine = engine or Engine()
        self.store = store
        self.clock = clock
        self.sink = sink
        self._sync_in_progress: set[str] = set()
        self.initialized = False

    async def initialize(self) -> None:
        self.initialized = True

    async def create_twin(self, source_system: str, system_type: SystemType | str = SystemType.OTHER,
                          initial_state: Mapping[str, Any] | None = None,
                          sync_frequency_seconds: float = 60.0, **kwargs: Any) -> DigitalTwin:
        twin = self.engine.create_twin(source_system, at=self.clock(), system_type=system_type,
                                       initial_state=initial_state,
                                       sync_frequency_seconds=sync_frequency_seconds, **kwargs)
        await self._persist()
        return twin

    async def sync_twin(self, twin_id: str, metrics: SystemMetrics | Mapping[str, float],
                        source: str = "external", at: float | None = None) -> dict[str, Any]:
        """Feed one observation. Never calls out; a concurrent second sync of the same twin is refused,
        never queued and never re-entered."""
        twin = self.engine.get(twin_id)
        if twin.twin_id in self._sync_in_progress:
            log.warning("sync refused: already in progress", extra={"twin_id": twin.twin_id})
            return {"error": SYNC_IN_PROGRESS, "twin_id": twin.twin_id, "synced": False}
        self._sync_in_progress.add(twin.twin_id)
        try:
            result = self.engine.sync(twin.twin_id, metrics, at=self.clock() if at is None else at,
                                      source=source)
            await self._persist()
            return result
        finally:
            self._sync_in_progress.discard(twin.twin_id)

    async def set_expected_state(self, twin_id: str, expected_state: Mapping[str, float | None]) -> dict[str, Any]:
        snap = self.engine.set_expected_state(twin_id, expected_state, at=self.clock())
        await self._persist()
        t = self.engine.get(twin_id)
        return {"success": True, "twin_id": t.twin_id, "expected_state": t.expected_state,
                "snapshot_id": snap.snapshot_id}

    async def simulate_scenario(self, twin_id: str, scenario: Mapping[str, Any], *,
                                seed: int = 0) -> dict[str, Any]:
        return self.engine.simulate(twin_id, scenario, at=self.clock(), seed=seed)

    async def find_snapshot(self, twin_id: str, snapshot_id: str) -> StateHistoryEntry:
        t = self.engine.get(twin_id)
        entry = self.engine.find_snapshot(t.twin_id, snapshot_id)
        if entry is None and self.store is not None:
            entry = await self.store.get_snapshot(t.twin_id, snapshot_id)
        if entry is None:
            raise UnknownSnapshotError(f"twin {t.source_system} has no snapshot {snapshot_id!r}")
        return verified(entry)

    async def rollback_to_snapshot(self, twin_id: str, snapshot_id: str) -> dict[str, Any]:
        if not isinstance(snapshot_id, str) or not snapshot_id:
            raise InputError("snapshot_id must be a non-empty string")
        entry = await self.find_snapshot(twin_id, snapshot_id)
        result = self.engine.rollback(twin_id, entry, at=self.clock())
        await self._persist()
        return result

    async def history(self, twin_id: str, *, limit: int = 100,
                      before: float | None = None) -> list[StateHistoryEntry]:
        """Newest first: the in-memory snapshots, then older ones from the store."""
        t = self.engine.get(twin_id)
        mem = [e for e in reversed(t.state_history) if before is None or e.timestamp < before]
        out = [verified(e) for e in mem[:limit]]
        if len(out) < limit and self.store is not None:
            oldest = out[-1].timestamp if out else before
            seen = {e.snapshot_id for e in out}
            more = await self.store.list_snapshots(t.twin_id, limit=limit - len(out) + len(seen),
                                                   before=oldest)
            out.extend(e for e in more if e.snapshot_id not in seen)
        return out[:limit]

    def get_twin_status(self, twin_id: str) -> dict[str, Any]:
        return self.engine.status(twin_id)

    def list_twins(self) -> list[dict[str, Any]]:
        return self.engine.list_status()

    async def _persist(self) -> None:
        if self.sink is None and self.store is None:
            return                      # nothing to write to: the outbox waits for whoever drains it
        outbox = self.engine.drain()
        if not outbox:
            return
        if self.sink is not None:
            res = self.sink(outbox)
            if inspect.isawaitable(res):
                await res
        elif self.store is not None:
            await self.store.write(outbox)
