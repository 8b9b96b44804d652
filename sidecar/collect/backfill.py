"""Backfill: the last ``backfill`` of history loaded with range queries, so forecasts exist from the start.

Each twin's own queries run as range queries from after what the store already holds; a family's shared
queries run once for the rule and their series are dealt out by naming labels, indexed once (O(twins +
series)). A shared query asks for a whole family's series at once (10,000 twins × an hour at 15 s is 2.4 M
points, which no default timeout covers), so its range is asked in parts of about ``PART_POINTS`` points by the
family's size; the client splits further any part not answered in time, and any range past what Prometheus
accepts. A refused query is said at warning for the first few, then at debug (a source down mid-backfill fails
every query the same way).

The whole backfill is bounded by ``backfill_max_samples`` (series × steps): each step is a tick of every model
before the first round, so a fleet large enough to pass it gets the most recent part of the window that fits
(contiguous with the first live samples), decided before anything is fetched from the family sizes discovery
already gave, and the ``backfill done`` line says the window asked, the window used and the budget.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import EngineError, SourceError
from ..prometheus import MAX_RANGE_POINTS, QueryFailed, RangeMatrix, SourceUnavailable
from .context import Context
from .deal import several_series
from .naming import shared_queries
from .ownguard import OwnSeriesGuard
from .roster import Roster
from .targets import rows_by_twin

log = logging.getLogger(__name__)

#: Failed backfill queries logged at warning (with twin, metric and Prometheus' error); the rest at debug.
BACKFILL_WARNINGS = 20
#: Points (series × steps) a shared query's range part asks for: Prometheus answers this many within a second or
#: two on a loaded 2-core host, and its JSON stays a few tens of MB (under the default response limit).
PART_POINTS = 500_000


def part_steps(series: int) -> int:
    """Steps per range request for a query expected to answer `series` series."""
    return max(1, min(MAX_RANGE_POINTS, PART_POINTS // max(series, 1)))


def budget_steps(job_steps: Sequence[int], shared_series: int, full_steps: int, max_samples: int) -> int:
    """The most steps (at most ``full_steps``) the backfill keeps within ``max_samples``: each per-twin job
    asks for at most its own ``job_steps`` (a restored twin only after its newest sample), each of the
    ``shared_series`` a family's shared queries answer asks for every step kept."""
    def cost(w: int) -> int:
        return sum(min(n, w) for n in job_steps) + shared_series * w

    lo, hi = 0, max(full_steps, 0)
    if cost(hi) <= max_samples:
        return hi
    while lo < hi:                  # cost is non-decreasing in w: the largest w with cost(w) <= max_samples
        mid = (lo + hi + 1) // 2
        if cost(mid) <= max_samples:
            lo = mid
        else:
            hi = mid - 1
    return lo


def grid_steps(start: float, end: float, step: float) -> int:
    """Points ``start, start + step, ...`` up to ``end`` (a range query's answer), 0 when ``start > end``."""
    return max(0, math.floor((end - start) / step + 1e-9) + 1)

Samples = dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]
Job = tuple[str, str, str, float]           # a twin's own range query: twin, metric, query, start
Shared = tuple[str, str, str]               # a family's shared range query: rule, metric, query


class Backfill:
    """Loads history once before the first round; ``done`` once it ran (or when there is none to load)."""

    def __init__(self, ctx: Context, roster: Roster, guard: OwnSeriesGuard) -> None:
        self.ctx = ctx
        self.roster = roster
        self.guard = guard
        self.done = ctx.config.backfill_s <= 0
        self._warned = 0

    async def run(self, now: float | None = None) -> int:
        """Load the last ``backfill`` of history; returns the samples accepted.

        While the source is unreachable nothing is loaded and the next round tries again. Series that
        already have samples (restored from the store) are only filled in after their newest.
        """
        ctx = self.ctx
        now = ctx.clock() if now is None else now
        step = ctx.config.interval_s
        try:
            await ctx.client.query("vector(1)", at=now)
        except SourceUnavailable:
            return 0
        except QueryFailed:
            pass
        await self.roster.refresh(now)
        async with ctx.lock:
            jobs = await asyncio.to_thread(self._jobs, now)
        self._warned = 0

        async def one(name: str, metric: str, query: str, start: float, rule: str | None = None,
                      series: int = 1) -> tuple[str, str, RangeMatrix | None]:
            try:
                return name, metric, await ctx.client.query_range(query, start, now - step, step,
                                                                  max_points=part_steps(series))
            except SourceError as exc:
                self._refused({"rule": rule} if rule is not None else {"twin": name}, metric, query, str(exc))
                return name, metric, None

        start = math.ceil((now - ctx.config.backfill_s) / step) * step
        shared = [(r.name, metric, query) for r in ctx.config.twins for metric, query in shared_queries(r).items()]
        shrunk, jobs, shared, start = self._within_budget(jobs, shared, start, now)
        fetch_from = time.monotonic()
        results, shared_results = await asyncio.gather(
            asyncio.gather(*(one(*j) for j in jobs)),
            asyncio.gather(*(one(rule, metric, query, start, rule, len(self.roster.family(rule)))
                             for rule, metric, query in shared)))
        samples: Samples = {}
        failed = 0
        queries = {(name, metric): query for name, metric, query, _ in jobs}
        queries.update({(rule, metric): query for rule, metric, query in shared})
        for name, metric, m in results:
            if m is None:
                failed += 1
                continue
            query = queries.get((name, metric), "")
            keep, _ = self.guard.keep(m.labels, (name, metric), query)
            failed += self._take(samples, name, metric, m, keep, query)
        for rule, metric, m in shared_results:
            if m is None:
                failed += 1
                continue
            query = queries.get((rule, metric), "")
            keep, _ = self.guard.keep(m.labels, (rule, metric), query, who="rule")
            family = self.roster.family(rule)
            rows = rows_by_twin(family, m.labels, keep)
            for t in family:
                failed += self._take(samples, t.name, metric, m, rows.get(t.name, []), query, rule)
        fetch_s = time.monotonic() - fetch_from
        replay_from = time.monotonic()
        accepted = 0
        if samples:
            async with ctx.lock:
                report = await asyncio.to_thread(ctx.engine.backfill, samples)
            accepted = report.accepted
        self.done = True
        await ctx.flush()
        log.info("backfill done", extra={"queries": len(jobs) + len(shared), "failed": failed,
                                         "series": len(samples), "samples": accepted,
                                         "window_s": ctx.config.backfill_s, "fetch_s": round(fetch_s, 2),
                                         "replay_s": round(time.monotonic() - replay_from, 2), **shrunk})
        return accepted

    def _within_budget(self, jobs: list[Job], shared: list[Shared], start: float,
                       now: float) -> tuple[dict[str, object], list[Job], list[Shared], float]:
        """Jobs and the shared start moved later, on the same grid, so the samples asked stay within
        ``backfill_max_samples`` (none left when not even a step fits); with the fields the ``backfill done``
        line adds: none when everything fits, so the line and the fetch are then as without a budget."""
        ctx = self.ctx
        step = ctx.config.interval_s
        budget = ctx.config.backfill_max_samples
        job_steps = [grid_steps(s, now - step, step) for _, _, _, s in jobs]
        shared_series = sum(len(self.roster.family(rule)) for rule, _, _ in shared)
        full = grid_steps(start, now - step, step)
        asked = sum(job_steps) + shared_series * full
        if asked <= budget:
            return {}, jobs, shared, start
        keep = budget_steps(job_steps, shared_series, full, budget)
        first = start + (full - keep) * step            # the newest `keep` points of the shared range's grid
        kept = [(name, metric, query, max(s, first)) for name, metric, query, s in jobs] if keep else []
        return ({"window_s": keep * step, "window_asked_s": ctx.config.backfill_s, "reason": "backfill_max_samples",
                 "backfill_max_samples": budget, "samples_asked": asked,
                 "series_asked": len(jobs) + shared_series}, kept, shared if keep else [], first)

    def _refused(self, fields: Mapping[str, str], metric: str, query: str, error: str) -> None:
        # a refused backfill is otherwise invisible until forecasts stay empty: say why, at warning, for the
        # first few (a source down mid-backfill would fail every query the same way)
        self._warned += 1
        level = logging.WARNING if self._warned <= BACKFILL_WARNINGS else logging.DEBUG
        log.log(level, "backfill query failed", extra={**fields, "metric": metric, "error": error, "query": query})

    def _take(self, samples: Samples, name: str, metric: str, m: RangeMatrix, rows: Sequence[int], query: str,
              rule: str | None = None) -> int:
        """One twin metric's rows of a range answer into ``samples``; returns 1 if refused (several series)."""
        if len(rows) > 1:
            # the same refusal as a round's ("query failing"), told here: the rounds only say it once they run
            fields = {"twin": name, **({"rule": rule} if rule is not None else {})}
            self._refused(fields, metric, query, several_series(len(rows)))
            return 1
        if not rows:
            return 0
        row = m.values[rows[0]]
        ok = np.isfinite(row)
        if ok.any():
            samples[(name, metric)] = (m.times[ok], row[ok])
        return 0

    def _jobs(self, now: float) -> list[tuple[str, str, str, float]]:
        """(Worker thread, under the lock.) Per-twin range queries, each starting after what is stored."""
        ctx = self.ctx
        step = ctx.config.interval_s
        jobs: list[tuple[str, str, str, float]] = []
        for name, t in self.roster.targets.items():
            try:
                history = ctx.engine.history(name)
            except EngineError:
                continue
            for metric, query in t.queries.items():
                start = now - ctx.config.backfill_s
                times = history.get(metric, (np.zeros(0), np.zeros(0)))[0]
                if times.size:
                    start = max(start, float(times[-1]) + step)
                start = math.ceil(start / step) * step      # on the grid, so restarts line up
                if start <= now - step:
                    jobs.append((name, metric, query, start))
        return jobs
