"""The concurrent fan-out of a round's instant queries, with a breaker for a source that is down.

Every query of a round goes out at once (the client bounds how many are in flight, each with its timeout).
The fan-out stops early when the source is clearly unreachable (a run of unreachable answers and nothing
else), when the round's deadline passes, or a few seconds after shutdown began; what did not answer is
handed back as cut off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..config import SidecarConfig
from ..errors import SourceError
from ..prometheus import InstantVector, PrometheusClient, SourceUnavailable

log = logging.getLogger(__name__)

#: Seconds a round may still take after SIGTERM before its queries are cut.
SHUTDOWN_GRACE_S = 3.0


@dataclass(frozen=True, slots=True)
class Job:
    """One instant query: for one twin, or shared by every twin of a discovery rule (``rule`` set)."""

    twin: str
    metric: str
    query: str
    rule: str | None = None


@dataclass(slots=True)
class Outcome:
    """One twin metric's answer, or why there is none."""

    twin: str
    metric: str
    result: InstantVector | None = None
    error: SourceError | None = None
    quiet: bool = False                  # a shared query's failure is logged once, for the rule
    query: str = ""


async def query_all(client: PrometheusClient, config: SidecarConfig, jobs: Sequence[Job], at: float, *,
                    stop: asyncio.Event | None = None,
                    answered: Mapping[str, InstantVector] | None = None) -> tuple[list[tuple[Job, Outcome]], list[Job]]:
    """Run the instant queries; stop early when the source is clearly unreachable or on shutdown.

    ``answered``: answers already in hand for this ``at`` by query text (the round's discovery answers; a rule
    that discovers with one of its metrics' queries would otherwise ask Prometheus the same thing twice).
    Returns the answered (or failed) jobs with their outcomes, and the jobs cut off unanswered.
    """
    known = answered or {}
    outcomes: list[tuple[Job, Outcome]] = [
        (j, Outcome(j.twin, j.metric, result=known[j.query], query=j.query)) for j in jobs if j.query in known]
    if outcomes:
        jobs = [j for j in jobs if j.query not in known]
    if not jobs:
        return outcomes, []
    loop = asyncio.get_running_loop()
    timeout = config.prometheus.timeout_s
    deadline = loop.time() + 3 * max(config.interval_s, timeout)
    breaker = max(3, config.prometheus.max_concurrency)
    tasks: dict[asyncio.Task[InstantVector], Job] = {
        asyncio.create_task(client.query(j.query, at=at)): j for j in jobs}
    pending: set[asyncio.Task[InstantVector]] = set(tasks)
    unreachable_run = 0
    stop_deadline: float | None = None
    try:
        while pending:
            if stop is not None and stop.is_set() and stop_deadline is None:
                stop_deadline = loop.time() + SHUTDOWN_GRACE_S
            limit = deadline if stop_deadline is None else min(deadline, stop_deadline)
            wait_s = limit - loop.time()
            if wait_s <= 0:
                log.warning("query round cut short", extra={"unfinished": len(pending),
                                                            "reason": "shutdown" if stop_deadline else
                                                            "round deadline"})
                break
            done, pending = await asyncio.wait(pending, timeout=min(wait_s, 0.25),
                                               return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                job = tasks[task]
                exc = task.exception()
                if exc is None:
                    outcomes.append((job, Outcome(job.twin, job.metric, result=task.result(), query=job.query)))
                    unreachable_run = 0
                elif isinstance(exc, SourceError):
                    outcomes.append((job, Outcome(job.twin, job.metric, error=exc, query=job.query)))
                    unreachable_run = unreachable_run + 1 if isinstance(exc, SourceUnavailable) else 0
                else:
                    raise exc
            if unreachable_run >= breaker and not any(o.result is not None for _, o in outcomes):
                break       # the source is down: do not wait out every remaining query's timeout
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    return outcomes, [tasks[t] for t in pending]
