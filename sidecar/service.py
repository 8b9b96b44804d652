"""``TwinService``: the narrow interface the JSON API talks to, and ``FacadeService``, its implementation over
the engine's async facade (``TwinEngine``) and the store behind it.

The API names what it needs (a twin's status, its history, the events held and stored, a change and the wait
for its commit, a simulation) and nothing more; how the facade, the engine and the store provide it is known
here only, so neither side reaches through the other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from .engine.records import StateHistoryEntry, TwinEvent
from .engine.twin import TwinEngine
from .status import ReplicaSignal
from .store.base import EventQuery

#: A wait (bounded) for the last change to be committed: True once it is.
CommitWait = Callable[[], Awaitable[bool]]


@runtime_checkable
class DurableWrites(Protocol):
    """A facade store that writes in the background (the service's buffered writer) and can say when the
    last write is committed."""

    def last_write(self) -> CommitWait:
        """Taken under the engine lock right after the change; awaited after releasing it (bounded)."""


@runtime_checkable
class EventHistory(Protocol):
    """A facade store that can list stored events (the service's store; a library's may not)."""

    async def list_events(self, query: EventQuery) -> list[TwinEvent]:
        """Stored events matching ``query``, newest first; ``StoreError`` when the database does not answer."""


class TwinService(Protocol):
    """What the API asks of the sidecar. Every call but the awaited store reads runs under the engine lock."""

    def list_twins(self) -> list[dict[str, Any]]: ...

    def twin_status(self, twin: str) -> dict[str, Any]: ...

    def twin_id(self, twin: str) -> str: ...

    async def history(self, twin: str, *, limit: int, before: float | None) -> list[StateHistoryEntry]: ...

    def held_events(self, *, twin_id: str | None, type: str | None, since: float | None) -> list[TwinEvent]:
        """The events still in memory (every one the buffer holds that matches)."""

    @property
    def stores_events(self) -> bool:
        """Whether there is a store that lists events (``stored_events`` then reads it)."""

    async def stored_events(self, query: EventQuery) -> list[TwinEvent]: ...

    async def rollback(self, twin: str, snapshot_id: str) -> dict[str, Any]: ...

    async def set_expected(self, twin: str, expected: Mapping[str, float | None]) -> dict[str, Any]: ...

    def commit_wait(self) -> CommitWait | None:
        """(Under the engine lock, right after the change.) The wait for its commit; None when the change was
        written before the call returned, or there is nowhere to write it (``stored_on_return`` says which)."""

    @property
    def stored_on_return(self) -> bool: ...

    def simulate(self, twin: str, scenario: Mapping[str, Any], *, seed: int) -> dict[str, Any]:
        """A what-if run (CPU-heavy: the API calls it in a worker thread, under the engine lock)."""


class FacadeService:
    """``TwinService`` over a ``TwinEngine``: its engine for reads and simulations, its store for events and
    commits."""

    def __init__(self, facade: TwinEngine, *, replica_signals: Mapping[str, ReplicaSignal] | None = None) -> None:
        self._facade = facade
        self._replicas = replica_signals if replica_signals is not None else {}

    def list_twins(self) -> list[dict[str, Any]]:
        return self._facade.list_twins()

    def twin_status(self, twin: str) -> dict[str, Any]:
        status = self._facade.get_twin_status(twin)
        signal = self._replicas.get(str(status.get("name")))
        if signal is not None:          # a twin with max_replicas: its recommendation, or why there is none
            status["replicas"] = signal.advice
        return status

    def twin_id(self, twin: str) -> str:
        return self._facade.engine.get(twin).twin_id

    async def history(self, twin: str, *, limit: int, before: float | None) -> list[StateHistoryEntry]:
        return await self._facade.history(twin, limit=limit, before=before)

    def held_events(self, *, twin_id: str | None, type: str | None, since: float | None) -> list[TwinEvent]:
        engine = self._facade.engine
        return engine.events(twin=twin_id, type=type, since=since, limit=max(1, engine.settings.event_buffer))

    @property
    def stores_events(self) -> bool:
        return isinstance(self._facade.store, EventHistory)

    async def stored_events(self, query: EventQuery) -> list[TwinEvent]:
        store = self._facade.store
        return await store.list_events(query) if isinstance(store, EventHistory) else []

    async def rollback(self, twin: str, snapshot_id: str) -> dict[str, Any]:
        return await self._facade.rollback_to_snapshot(twin, snapshot_id)

    async def set_expected(self, twin: str, expected: Mapping[str, float | None]) -> dict[str, Any]:
        return await self._facade.set_expected_state(twin, expected)

    def commit_wait(self) -> CommitWait | None:
        store = self._facade.store
        return store.last_write() if isinstance(store, DurableWrites) else None

    @property
    def stored_on_return(self) -> bool:
        # the facade awaited its store's write (an outage would have raised: 503); no store, nothing stored
        return self._facade.store is not None and self._facade.sink is None

    def simulate(self, twin: str, scenario: Mapping[str, Any], *, seed: int) -> dict[str, Any]:
        return self._facade.engine.simulate(twin, scenario, at=self._facade.clock(), seed=seed)
