"""Snapshot history: the small interface a store plugs into, and its in-memory form.

The engine keeps the newest snapshots per twin in memory and emits every new
one through its outbox; a store persists them and can hand older ones back
for a rollback after a restart. Entries are immutable and carry a checksum
that is verified whenever one is read back.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Protocol, runtime_checkable

from ..errors import CorruptSnapshotError
from .records import StateHistoryEntry
from .view import Outbox


@runtime_checkable
class HistoryStore(Protocol):
    """What the engine facade needs from persistence."""

    async def write(self, outbox: Outbox) -> None:
        """Persist everything in the outbox (snapshots are append-only)."""

    async def get_snapshot(self, twin_id: str, snapshot_id: str) -> StateHistoryEntry | None:
        """The snapshot, checksum-verified; ``CorruptSnapshotError`` if it does not verify."""

    async def list_snapshots(self, twin_id: str, *, limit: int = 100,
                             before: float | None = None) -> list[StateHistoryEntry]:
        """Newest first, at most ``limit``, strictly older than ``before`` when given."""


def verified(entry: StateHistoryEntry) -> StateHistoryEntry:
    """Return the entry if its checksum holds; refuse it loudly otherwise."""
    if not entry.verify():
        raise CorruptSnapshotError(
            f"snapshot {entry.snapshot_id} of twin {entry.twin_id} fails its checksum; refusing to use it",
            snapshot_id=entry.snapshot_id)
    return entry


class MemoryHistoryStore:
    """Unbounded in-process store: the default when no database is configured in tests."""

    def __init__(self) -> None:
        self._by_twin: dict[str, list[StateHistoryEntry]] = defaultdict(list)
        self._ids: set[str] = set()
        self._seq = itertools.count()

    async def write(self, outbox: Outbox) -> None:
        for entry in outbox.snapshots:
            if entry.snapshot_id in self._ids:  # append-only: a repeat is ignored, never overwritten
                continue
            self._ids.add(entry.snapshot_id)
            self._by_twin[entry.twin_id].append(entry)

    async def get_snapshot(self, twin_id: str, snapshot_id: str) -> StateHistoryEntry | None:
        for entry in self._by_twin.get(twin_id, ()):
            if entry.snapshot_id == snapshot_id:
                return verified(entry)
        return None

    async def list_snapshots(self, twin_id: str, *, limit: int = 100,
                             before: float | None = None) -> list[StateHistoryEntry]:
        rows = [e for e in reversed(self._by_twin.get(twin_id, ())) if before is None or e.timestamp < before]
        return [verified(e) for e in rows[:limit]]
