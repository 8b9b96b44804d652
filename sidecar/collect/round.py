"""One query round: discovery, every metric query at one evaluation time ``at``, then ONE vectorised ingest.

Each round evaluates every metric query of every twin as an instant query at ``at``, concurrently
(``fanout``), deals the answers out to the twins (``deal``) and feeds them all to the engine in one
``Engine.ingest`` stamped with ``at``, in a worker thread under the engine lock.

When Prometheus is down, slow or answers garbage the round says so and the service keeps serving the last
state: ``ServiceStatus.source_up`` goes False, the outage is logged once at its start and once at its end,
and while it lasts one cheap probe decides whether a full round is worth sending (the loop backs off on
``down_rounds``). A single query failing while others work is counted and logged per (twin, metric), once
per streak.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass

from ..prometheus import QueryFailed, SourceUnavailable
from .context import Context, Observer
from .deal import Dealer
from .fanout import Job, query_all
from .naming import shared_queries
from .roster import Roster
from .streaks import QueryStreaks

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RoundReport:
    at: float
    queries: int = 0
    answered: int = 0          # queries Prometheus answered (with data or not)
    failed: int = 0            # query errors, unreachable, or cut off
    accepted: int = 0          # samples the engine took
    dropped_own: int = 0       # series dropped by the loop guard
    source_up: bool = False
    duration_s: float = 0.0
    twins: int = 0


class Round:
    """Runs one round at a time and keeps the source's reachability; see the module docstring."""

    def __init__(self, ctx: Context, roster: Roster, streaks: QueryStreaks, dealer: Dealer, *,
                 sync_histogram: Observer | None = None) -> None:
        self.ctx = ctx
        self.roster = roster
        self.streaks = streaks
        self.dealer = dealer
        self.sync_histogram = sync_histogram
        #: set while the service stops: the round in progress is cut short after a brief grace
        self.stop: asyncio.Event | None = None
        self.down_rounds = 0                                 # consecutive rounds with the source down
        self._down_since: float | None = None

    async def run(self, at: float | None = None) -> RoundReport:
        """Discovery, then every metric query at one evaluation time, then one ingest."""
        ctx, roster = self.ctx, self.roster
        t0 = time.perf_counter()
        at = ctx.clock() if at is None else at
        if self.down_rounds and not await self._probe(at):
            return self._finish(RoundReport(at=at, source_up=False, twins=len(roster.targets)), t0)
        discovery_answered = await roster.refresh(at)
        jobs = [Job(name, metric, query) for name, t in roster.targets.items()
                for metric, query in t.queries.items()]
        jobs += [Job("", metric, query, rule=r.name) for r in ctx.config.twins
                 for metric, query in shared_queries(r).items()]
        raw, aborted = await query_all(ctx.client, ctx.config, jobs, at, stop=self.stop, answered=roster.answers)
        answered = sum(1 for _, o in raw if o.result is not None or isinstance(o.error, QueryFailed))
        reachable = answered > 0 or discovery_answered > 0
        dealt = self.dealer.deal(raw, aborted, reachable)
        accepted = 0
        if len(dealt):
            series, values = dealt.slots, dealt.values
            async with ctx.lock:
                tick = await asyncio.to_thread(ctx.engine.ingest, series, values, at=at)
            accepted = tick.accepted
            if tick.dropped_nonfinite or tick.dropped_stale or tick.dropped_invalid:
                log.debug("samples dropped by the engine", extra={
                    "nonfinite": tick.dropped_nonfinite, "stale": tick.dropped_stale,
                    "invalid": tick.dropped_invalid})
        first_error = next((o.error for _, o in raw if o.error is not None), None)
        self._source_state(reachable, at, first_error)
        await ctx.flush()
        return self._finish(RoundReport(
            at=at, queries=len(jobs), answered=answered, failed=dealt.failed, accepted=accepted,
            dropped_own=dealt.dropped_own, source_up=reachable, twins=len(roster.targets)), t0)

    def _finish(self, report: RoundReport, t0: float) -> RoundReport:
        duration = time.perf_counter() - t0
        status = self.ctx.status
        status.rounds_total += 1
        status.last_round_at = report.at
        status.first_round_done = True
        if self.sync_histogram is not None:
            self.sync_histogram.observe(duration)
        log.debug("query round done", extra={"at": report.at, "queries": report.queries,
                                             "answered": report.answered, "failed": report.failed,
                                             "accepted": report.accepted, "duration_s": round(duration, 4)})
        return dataclasses.replace(report, duration_s=duration)

    async def _probe(self, at: float) -> bool:
        """While down, one cheap query decides whether a full round is worth sending."""
        try:
            await self.ctx.client.query("vector(1)", at=at)
        except SourceUnavailable as exc:
            self._source_state(False, at, exc)
            for name, t in self.roster.targets.items():
                for metric in t.metrics():
                    self.streaks.failed((name, metric), "source unreachable", quiet=True)
            return False
        except QueryFailed:
            pass   # it answered: reachable
        return True

    def _source_state(self, up: bool, at: float, error: BaseException | None = None) -> None:
        """Track the source's reachability; log the start and the end of a down streak, once each."""
        self.ctx.status.source_up = up
        if up:
            if self._down_since is not None:
                log.info("Prometheus reachable again", extra={
                    "down_for_s": round(at - self._down_since, 1), "failed_rounds": self.down_rounds})
            self.down_rounds = 0
            self._down_since = None
            return
        self.down_rounds += 1
        if self._down_since is None:
            self._down_since = at
            log.error("Prometheus unreachable; serving the last state and retrying with backoff", extra={
                "url": self.ctx.config.prometheus.url, "error": str(error) if error else "no query answered"})
