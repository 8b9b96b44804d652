"""The query loop: Prometheus -> engine, once per interval, for every twin at once; the parts composed.

``Scheduler`` builds the parts over one shared :class:`~.context.Context` and runs the loop: the backfill
once, then a round every ``interval`` (``round``), then the standing scenarios that are due
(``scenarios``). While the source is down the rounds back off, doubling the pause up to
``MAX_BACKOFF_S``, and the first answer that comes back ends the streak. A bug in one round is logged with
its trace and never ends the service.

Example::

    sched = Scheduler(cfg, engine, client, status, lock=asyncio.Lock(), writer=writer)
    await sched.run(stop_event)        # backfill, then rounds until stop_event is set
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from ..config import SidecarConfig
from ..engine.core import Engine
from ..errors import SidecarError
from ..prometheus import PrometheusClient
from ..status import ServiceStatus
from .backfill import Backfill
from .context import Context, Observer, OutboxSink
from .deal import Dealer
from .ownguard import OwnSeriesGuard
from .restore import RetiredTwins
from .roster import Roster
from .round import Round, RoundReport
from .scenarios import StandingScenarios
from .streaks import QueryStreaks

log = logging.getLogger(__name__)

#: Longest pause between attempts while the source is down.
MAX_BACKOFF_S = 120.0


class Scheduler:
    """Runs the query rounds; see the module docstring. ``roster`` holds the live twins, ``retired`` the
    retired ones kept to come back (the service saves and restores them through it)."""

    def __init__(self, config: SidecarConfig, engine: Engine, client: PrometheusClient,
                 status: ServiceStatus, *, lock: asyncio.Lock | None = None, writer: OutboxSink | None = None,
                 sync_histogram: Observer | None = None, clock: Callable[[], float] = time.time,
                 own_identities: Sequence[Mapping[str, str]] = ()) -> None:
        self.ctx = Context(config, engine, client, status, lock or asyncio.Lock(), writer, clock)
        self.config, self.engine, self.lock = config, engine, self.ctx.lock
        self.streaks = QueryStreaks(status)
        #: labels of the sidecar's own scrape target(s), e.g. ``{"job": "twin-sidecar"}``: such series are refused
        self.guard = OwnSeriesGuard(status, own_identities)
        self.retired = RetiredTwins(config, engine)
        self.roster = Roster(self.ctx, self.streaks, self.guard, self.retired)
        self._round = Round(self.ctx, self.roster, self.streaks, Dealer(self.roster, self.streaks, self.guard),
                            sync_histogram=sync_histogram)
        self._backfill = Backfill(self.ctx, self.roster, self.guard)
        self._scenarios = StandingScenarios(self.ctx, self.roster)
        self.roster.on_retired.append(self._scenarios.forget_twin)

    async def run(self, stop: asyncio.Event) -> None:
        """Rounds every ``interval`` until ``stop`` is set; the round in progress finishes (briefly)."""
        self._round.stop = stop
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            interval = self.config.interval_s
            try:
                if not self._backfill.done:
                    try:
                        await self._backfill.run()
                    except (SidecarError, ValueError):
                        self._backfill.done = True      # tried once; the rounds fill history from now on
                        log.exception("backfill failed; continuing without it")
                report = await self._round.run()
                if report.duration_s > interval:
                    log.warning("query round took longer than the interval", extra={
                        "duration_s": round(report.duration_s, 3), "interval_s": interval})
                if report.source_up:
                    await self._scenarios.run()
            except asyncio.CancelledError:
                raise
            except Exception:   # a bug in one round must not end the service; it is logged with its trace
                log.exception("query round failed unexpectedly")
            elapsed = loop.time() - started
            down = self._round.down_rounds
            pause = min(interval * 2 ** (down - 1), max(interval, MAX_BACKOFF_S)) if down else interval
            delay = pause - elapsed
            if delay > 0 and not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)

    async def run_round(self, at: float | None = None) -> RoundReport:
        """One round now (or at ``at``): discovery, every metric query, one ingest."""
        return await self._round.run(at)

    async def backfill(self, now: float | None = None) -> int:
        """Load the last ``backfill`` of history with range queries; returns the samples accepted."""
        return await self._backfill.run(now)

    async def run_scenarios(self, now: float | None = None) -> int:
        """Re-run the standing what-if scenarios that are due; results go to the status for /metrics."""
        return await self._scenarios.run(now)
