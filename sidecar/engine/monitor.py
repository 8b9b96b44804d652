"""Monitor events: kept in a bounded buffer, queryable by twin, type and time."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Mapping
from typing import Any

from .records import EventType, TwinEvent


class Monitor:
    def __init__(self, capacity: int = 10_000) -> None:
        self._events: deque[TwinEvent] = deque(maxlen=capacity)
        self._seq = itertools.count(1)
        self._pending: list[TwinEvent] = []

    def emit(self, twin_id: str, type: EventType, severity: str, message: str, at: float,
             data: Mapping[str, Any] | None = None) -> TwinEvent:
        ev = TwinEvent(event_id=f"evt_{int(at * 1000):x}_{next(self._seq)}", twin_id=twin_id, type=type,
                       severity=severity, message=message, timestamp=at, data=dict(data or {}))
        self._events.append(ev)
        self._pending.append(ev)
        return ev

    def query(self, *, twin: str | None = None, type: str | None = None, since: float | None = None,
              limit: int = 1000) -> list[TwinEvent]:
        """Newest first."""
        out: list[TwinEvent] = []
        for ev in reversed(self._events):
            if since is not None and ev.timestamp < since:
                continue
            if twin is not None and ev.twin_id != twin:
                continue
            if type is not None and str(ev.type) != type:
                continue
            out.append(ev)
            if len(out) >= limit:
                break
        return out

    def take_pending(self) -> list[TwinEvent]:
        out, self._pending = self._pending, []
        return out
