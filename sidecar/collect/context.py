"""What every part of the query loop shares: the rules, the engine and its lock, the source, the status.

One ``Context`` is built by :class:`~sidecar.collect.scheduler.Scheduler` and handed to each part (the
roster, the round, backfill, standing scenarios), so a part names what it uses (``ctx.engine``,
``ctx.lock``) instead of reaching through another part. ``flush`` is here because a round and the backfill
both end by handing what changed to the store writer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..config import SidecarConfig
from ..engine.core import Engine
from ..engine.view import Outbox
from ..prometheus import PrometheusClient
from ..status import ServiceStatus


class OutboxSink(Protocol):
    """What the scheduler hands each round's changes to (``sidecar.store.StoreWriter``)."""

    def submit(self, outbox: Outbox) -> None: ...


class Observer(Protocol):
    """A histogram to observe round durations on (``twin_sync_duration_seconds``)."""

    def observe(self, amount: float) -> None: ...


@dataclass(slots=True)
class Context:
    """The handles the parts share; CPU-heavy engine calls run in a worker thread under ``lock``, which the
    API takes too, so a big ingest neither stalls the event loop nor races a request."""

    config: SidecarConfig
    engine: Engine
    client: PrometheusClient
    status: ServiceStatus
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    writer: OutboxSink | None = None
    clock: Callable[[], float] = time.time

    async def flush(self) -> None:
        """Hand what changed to the store writer (never blocks: the writer buffers)."""
        async with self.lock:
            outbox = self.engine.drain()
        if self.writer is not None and outbox:
            self.writer.submit(outbox)
