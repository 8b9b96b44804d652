"""Background writing: the scheduler hands over each round's outbox and moves on.

``submit`` only appends to an in-memory queue; one task writes the queue
in order, one outbox per transaction. When the database is unavailable
the queue is the buffer: it is bounded by ``max_items`` rows, and when it
is full the oldest time-series rows (forecast rows, then observed samples
of the same round) are dropped first and counted. Snapshots, definitions,
corrections and events are never dropped: they are small and they are the
history a rollback needs. Writes are retried with exponential backoff and
the backlog goes out, oldest first, when the database returns.

The time-series rows (observed samples and forecast rows) may be written at a cadence (``samples_every_s``,
the rules' ``storage.sample_interval``): they are held in memory and go out together, in their own
transaction, once the oldest held is that old, when they reach half of ``max_items``, and at every ``flush``
and ``close``. A row's cost in the store is mostly the B-tree page it dirties, and a batch of rounds dirties
each twin's page once instead of once a round. What a crash loses is at most that interval of them (Prometheus
holds the samples, and a backfill at start reads them back); everything else is queued at once.

A caller that must know when its change is durable (the API's state
changes) takes ``last_ticket`` right after ``submit`` and awaits
``wait_written``: True once that outbox is committed, False at once when a
write attempt fails meanwhile (the database is down: the outbox stays
queued and is written later, in order) or when the time given runs out.

Example::

    writer = StoreWriter(store, status, max_items=1_000_000)
    await writer.start()
    writer.submit(engine.drain())     # after every round, from the event loop
    ticket = writer.last_ticket       # the outbox just submitted
    durable = await writer.wait_written(ticket, timeout=3.0)
    await writer.close()              # at shutdown: flush (bounded by a timeout), then close the store
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..engine.view import MetricSamples, Outbox, PredictionRows
from ..errors import StoreError
from ..status import ServiceStatus
from .base import RetentionPolicy, Store

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class Ticket:
    """One submitted outbox's fate: ``written`` is None while it waits, True once committed, False if
    it was given up (refused as malformed, or unwritten when the writer closed)."""

    written: bool | None = None


@dataclass(slots=True)
class _Pending:
    outbox: Outbox
    items: int
    ticket: Ticket


def count_items(outbox: Outbox) -> int:
    """Rows an outbox will write (the unit of ``max_items``)."""
    return (len(outbox.twins) + len(outbox.retired) + len(outbox.snapshots) + len(outbox.corrections)
            + len(outbox.events) + sum(len(s.twin_id) for s in outbox.samples)
            + sum(len(p.twin_id) for p in outbox.predictions))


def _copy(outbox: Outbox) -> Outbox:
    """Own the lists, so trimming the queue never touches what the caller still holds."""
    return Outbox(twins=list(outbox.twins), retired=list(outbox.retired), snapshots=list(outbox.snapshots),
                  corrections=list(outbox.corrections), events=list(outbox.events),
                  samples=list(outbox.samples), predictions=list(outbox.predictions))


def _tail_samples(s: MetricSamples, k: int) -> MetricSamples:
    return MetricSamples(twin_id=s.twin_id[k:], metric=s.metric[k:], timestamp=s.timestamp[k:],
                         value=s.value[k:])


def _tail_predictions(p: PredictionRows, k: int) -> PredictionRows:
    return PredictionRows(twin_id=p.twin_id[k:], metric=p.metric[k:], made_at=p.made_at[k:],
                          horizon_s=p.horizon_s[k:], predicted=p.predicted[k:], lower=p.lower[k:],
                          upper=p.upper[k:], failure_probability=p.failure_probability[k:],
                          risk_factor=p.risk_factor[k:])


class StoreWriter:
    """Writes outboxes to a store in the background; never blocks the caller (see module docstring).

    ``submit`` must be called from the event loop's thread. ``status`` gets
    ``store_up``, ``store_backlog`` and ``store_dropped_samples_total``; the
    store reports corrupt snapshots into the same status object.
    """

    def __init__(self, store: Store, status: ServiceStatus, max_items: int = 1_000_000, *,
                 retry_initial_s: float = 0.5, retry_max_s: float = 30.0,
                 retention: RetentionPolicy | None = None, retention_interval_s: float = 3600.0,
                 samples_every_s: float = 0.0, clock: Callable[[], float] = time.time) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        if not samples_every_s >= 0:
            raise ValueError("samples_every_s must be 0 or more")
        self.store = store
        self.status = status
        self.max_items = int(max_items)
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.retention = retention
        self.retention_interval_s = retention_interval_s
        self._clock = clock
        self.samples_every_s = float(samples_every_s)
        self._held: list[MetricSamples] = []  # time-series rows waiting for their cadence (not queued yet)
        self._held_predictions: list[PredictionRows] = []
        self._held_items = 0
        self._held_since = 0.0                # when the oldest held batch was submitted
        self._held_ticket = Ticket(written=True)
        if store.status is None:
            store.status = status
        self._queue: deque[_Pending] = deque()
        self._inflight: _Pending | None = None
        self._items = 0                       # queued + in flight
        self._wake = asyncio.Event()          # something was submitted, or close() wants a retry now
        self._idle = asyncio.Event()          # nothing queued, nothing in flight
        self._idle.set()
        self._stopping = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._down_since: float | None = None
        self._over_warned = False
        self._last_retention: float | None = None
        self._progress = asyncio.Event()      # set and replaced whenever an outbox is done or a write fails
        self._failures = 0                    # write attempts that failed with the database unavailable
        self.last_ticket = Ticket(written=True)   # the last outbox submitted (nothing yet: nothing to wait for)
        self.written_outboxes = 0
        self.dropped_samples = 0
        self.dropped_predictions = 0

    @property
    def backlog(self) -> int:
        """Rows waiting to be written (queued and in flight; rows held for their cadence are not counted: they are
        fewer than half of ``max_items`` and never shed)."""
        return self._items

    # ------------------------------------------------------------ the caller's side

    async def start(self) -> None:
        """Start the background task (idempotent). Never fails because the database is down."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="store-writer")

    def submit(self, outbox: Outbox) -> None:
        """Queue an outbox for writing and return at once."""
        if self._closed:
            raise StoreError("store writer is closed")
        if not outbox:
            self.last_ticket = Ticket(written=True)
            return
        copy = _copy(outbox)
        if self.samples_every_s > 0 and (copy.samples or copy.predictions):
            self._hold(copy)
            # never more held than half the buffer: released into a full queue they would be shed
            if (self._clock() - self._held_since >= self.samples_every_s
                    or self._held_items >= self.max_items // 2):
                self._release()
            if not copy:
                self.last_ticket = self._held_ticket
                return
        self._enqueue(copy, Ticket())
        self.last_ticket = self._queue[-1].ticket

    def _enqueue(self, outbox: Outbox, ticket: Ticket) -> None:
        n = count_items(outbox)
        self._queue.append(_Pending(outbox, n, ticket))
        self._items += n
        self._idle.clear()
        self._shed()
        self._publish()
        self._wake.set()

    def _hold(self, outbox: Outbox) -> None:
        """Take the outbox's samples and forecast rows aside until their cadence comes (module docstring)."""
        if not (self._held or self._held_predictions):
            self._held_since = self._clock()
            self._held_ticket = Ticket()
        self._held.extend(outbox.samples)
        self._held_predictions.extend(outbox.predictions)
        self._held_items += (sum(len(s.twin_id) for s in outbox.samples)
                             + sum(len(p.twin_id) for p in outbox.predictions))
        outbox.samples, outbox.predictions = [], []

    def _release(self) -> None:
        """Queue the held rows as one outbox of their own (one transaction), in submission order."""
        if not (self._held or self._held_predictions):
            return
        held = Outbox(samples=self._held, predictions=self._held_predictions)
        self._held, self._held_predictions, self._held_items = [], [], 0
        self._enqueue(held, self._held_ticket)

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is written; False if ``timeout`` ran out first."""
        self._release()       # held samples are part of "everything submitted"
        if self._task is None and self._items:
            await self.start()
        self._wake.set()      # skip any backoff: try now
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def wait_written(self, ticket: Ticket, timeout: float) -> bool:
        """Wait until the ticket's outbox is committed (True), or not: False when a write attempt fails
        while waiting (the database is unavailable; the outbox stays queued and is written later, in
        order), when ``timeout`` runs out first, or when the outbox was given up.

        Never takes a lock and never blocks the writer: waiters only watch its progress, each for its
        own ticket, so any number of them may wait at once.
        """
        if ticket.written is not None:
            return ticket.written
        if self._task is None and not self._closed:
            await self.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        failures = self._failures
        while ticket.written is None:
            remaining = deadline - loop.time()
            if self._failures != failures or self._stopping or remaining <= 0:
                return False
            progress = self._progress
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(), remaining)
        return ticket.written

    async def close(self, timeout: float = 10.0, *, close_store: bool = True) -> None:
        """Flush for at most ``timeout`` seconds, stop, and close the store.

        What could not be written by then is lost and logged (a shutdown
        with the database down cannot wait forever: Kubernetes sends SIGKILL).
        """
        if self._closed:
            return
        self._closed = True
        flushed = await self.flush(timeout) if self._items or self._held or self._held_predictions else True
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if not flushed:
            log.error("store writer closed with rows unwritten: backlog=%d outboxes=%d", self._items,
                      len(self._queue) + (self._inflight is not None))
        for p in ([self._inflight] if self._inflight is not None else []) + list(self._queue):
            p.ticket.written = False
        self._pulse()
        if close_store:
            with contextlib.suppress(StoreError):
                await self.store.close()

    # ------------------------------------------------------------ the bounded buffer

    def _shed(self) -> None:
        """Drop the oldest forecast and sample rows until the backlog fits ``max_items``."""
        excess = self._items - self.max_items
        if excess <= 0:
            return
        for p in self._queue:           # oldest first; the outbox in flight is not in the queue
            if excess <= 0:
                break
            excess -= self._trim(p, excess)
        if excess > 0 and not self._over_warned:
            self._over_warned = True
            log.warning("store backlog over max_items=%d with only snapshots, definitions, corrections and "
                        "events left: keeping them (they are never dropped)", self.max_items)

    def _trim(self, p: _Pending, want: int) -> int:
        preds, dropped_p = [], 0
        for rows in p.outbox.predictions:
            n = len(rows.twin_id)
            k = min(n, want - dropped_p)
            if k < n:
                preds.append(_tail_predictions(rows, k) if k else rows)
            dropped_p += k
        samples, dropped_s = [], 0
        for batch in p.outbox.samples:
            n = len(batch.twin_id)
            k = min(n, want - dropped_p - dropped_s)
            if k < n:
                samples.append(_tail_samples(batch, k) if k else batch)
            dropped_s += k
        p.outbox.predictions, p.outbox.samples = preds, samples
        dropped = dropped_p + dropped_s
        if dropped:
            p.items -= dropped
            self._items -= dropped
            self.dropped_predictions += dropped_p
            self.dropped_samples += dropped_s
            self.status.store_dropped_samples_total += dropped
            log.warning("store buffer full: dropped oldest rows samples=%d forecasts=%d backlog=%d",
                        dropped_s, dropped_p, self._items)
        return dropped

    def _publish(self) -> None:
        self.status.store_backlog = self._items

    def _pulse(self) -> None:
        """Wake every ``wait_written`` to look at its ticket again."""
        self._progress.set()
        self._progress = asyncio.Event()

    # ------------------------------------------------------------ the background task

    async def _run(self) -> None:
        backoff = self.retry_initial_s
        while not self._stopping:
            if not self._queue:
                self._idle.set()
                await self._maybe_retain()
                if self._queue:
                    continue
                self._wake.clear()
                await self._wait(self.retention_interval_s if self.retention is not None else None)
                continue
            p = self._queue.popleft()
            self._inflight = p
            try:
                await self.store.write(p.outbox)
            except StoreError as e:
                self._inflight = None
                self._queue.appendleft(p)     # keep order; it may be trimmed now that it is queued again
                self._shed()
                self._publish()
                self._mark_down(e)
                self._failures += 1
                self._pulse()
                self._wake.clear()
                await self._wait(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2.0, self.retry_max_s)
                continue
            except Exception:
                # a bug or malformed arrays, not an outage: retrying would block every later outbox
                self._inflight = None
                self._items -= p.items
                self._publish()
                p.ticket.written = False
                self._pulse()
                log.exception("store write refused an outbox that cannot be written; dropping it items=%d",
                              p.items)
                continue
            self._inflight = None
            self._items -= p.items
            self.written_outboxes += 1
            backoff = self.retry_initial_s
            self._publish()
            self._mark_up()
            p.ticket.written = True
            self._pulse()

    async def _wait(self, seconds: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    def _mark_down(self, e: StoreError) -> None:
        if self._down_since is None:
            self._down_since = self._clock()
            log.warning("store unavailable, buffering: %s backlog=%d", e, self._items)
        else:
            log.debug("store still unavailable: %s backlog=%d", e, self._items)
        self.status.store_up = False

    def _mark_up(self) -> None:
        if self._down_since is not None:
            log.info("store available again after %.1fs; backlog remaining=%d",
                     self._clock() - self._down_since, self._items)
            self._down_since = None
            self._over_warned = False
        self.status.store_up = True

    async def _maybe_retain(self) -> None:
        if self.retention is None:
            return
        now = self._clock()
        if self._last_retention is not None and now - self._last_retention < self.retention_interval_s:
            return
        self._last_retention = now
        try:
            await self.store.apply_retention(self.retention, now=now)
        except StoreError as e:
            log.warning("retention skipped: %s", e)


__all__ = ["StoreWriter", "Ticket", "count_items"]
