"""The query loop: Prometheus -> engine, once per interval, for every twin at once.

Each round evaluates every metric query of every twin as an instant query at
one evaluation time ``at``, concurrently (the client bounds how many are in
flight, each with its timeout), and feeds all answers to the engine in ONE
vectorised ``Engine.ingest`` stamped with ``at``. Discovery rules run first in
the round: one twin per returned series, named by its labels, its queries'
``$label`` placeholders filled from that series; twins appear with their
targets and are retired once their series has been absent for a few
successful discovery rounds (never because a query failed). A retired twin
is kept aside in memory for a while (``retired.keep_for``): if its series returns
(a pod restarted under its name, a target that failed a few scrapes) the twin
comes back as it was retired, with its expected state, snapshots, corrections,
recent samples and learnt models, rather than as a new twin learning from
nothing. A restart keeps them too: the service hands the twins the store
retired within ``keep_for`` to ``park_stored``, and the store keeps a retired
twin's saved models until the scheduler lists it as no longer kept
(``take_forgotten``). Twin names are unique per distinct label set (see ``discovered_name``).

When Prometheus is down, slow or answers garbage the service stays up and
keeps serving the last state: the round stops early once it is clear the
source is unreachable (a run of unreachable answers and nothing else),
``ServiceStatus.source_up`` goes False, the failure is logged once per streak
rather than per tick, rounds back off, and the first answer that comes back
ends the streak. A single query failing while others work is counted and
logged per (twin, metric), again once per streak. A query that answers with no
series, or only NaN/Inf, for ``NO_DATA_ROUNDS`` rounds in a row is logged the
same way (one warning per streak naming twin, metric and query): it is not an
error, but a metric that never gets a sample has nothing to alert on otherwise.

CPU-heavy engine calls run in a worker thread under the ``asyncio.Lock`` the
API shares, so a big ingest neither stalls the event loop nor races a request.

Example::

    sched = Scheduler(cfg, engine, client, status, lock=asyncio.Lock(), writer=writer)
    await sched.run(stop_event)        # backfill, then rounds until stop_event is set
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from . import loopguard
from .config import ScenarioRule, SidecarConfig, TwinRule
from .engine.core import Engine
from .engine.modelstate import TwinModelState
from .engine.modelstate import decode as decode_model_state
from .engine.records import CorrectionRecord, DigitalTwin, StateHistoryEntry
from .engine.view import Outbox
from .errors import EngineError, InputError, SidecarError, SourceError
from .prometheus import InstantVector, PrometheusClient, QueryFailed, RangeMatrix, SourceUnavailable, select
from .status import ServiceStatus
from .store.base import RestoredTwin

log = logging.getLogger(__name__)

#: A discovered twin is retired after its series was absent from this many successful discovery rounds.
RETIRE_AFTER_ROUNDS = 3
#: Seconds a round may still take after SIGTERM before its queries are cut.
SHUTDOWN_GRACE_S = 3.0
#: Longest pause between attempts while the source is down.
MAX_BACKOFF_S = 120.0
DISCOVER_METRIC = "discover"        # the "metric" label of discovery query errors
#: Failed backfill queries logged at warning (with twin, metric and Prometheus' error); the rest at debug.
BACKFILL_WARNINGS = 20
#: Rounds in a row a query may answer with no series (or only NaN/Inf) before it is logged, once per streak:
#: a ``rate()`` over a fresh target is empty for a round or two, a typo'd label for ever. The same 4 intervals
#: after which the TwinMetricStale and TwinMetricNoData alerts fire (at 15 s).
NO_DATA_ROUNDS = 4


class OutboxSink(Protocol):
    """What the scheduler hands each round's changes to (``sidecar.store.StoreWriter``)."""

    def submit(self, outbox: Outbox) -> None: ...


class Observer(Protocol):
    """A histogram to observe round durations on (``twin_sync_duration_seconds``)."""

    def observe(self, amount: float) -> None: ...


# --------------------------------------------------------------------------- discovery helpers

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.:@,=-]")
_PLACEHOLDER = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def naming_key(rule: TwinRule, labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The labels that identify a discovered twin (``name_labels``, or all but ``__name__``) and values."""
    keys = rule.name_labels or tuple(sorted(k for k in labels if k != "__name__"))
    return tuple((k, labels.get(k, "")) for k in keys)


#: Starts the hash suffix of a discovered name; never produced by the substitution, so a hashed name is never a
#: plain one.
HASH_MARK = "~"


def key_hash(key: Sequence[tuple[str, str]], length: int = 8) -> str:
    """A short stable hash of a naming key (label names and values, unambiguously encoded)."""
    text = json.dumps([list(kv) for kv in key], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def discovered_name(rule: TwinRule, labels: Mapping[str, str]) -> str:
    """``checkout-api@10.0.0.7:8080``: the rule's name and the naming labels' values (URL-safe).

    Characters other than letters, digits and ``_.:@,=-`` become ``_``; a name
    that needed that ends in ``~`` and a hash of the original values
    (``r@q_x~1a2b3c4d``), so ``q"x`` and ``q_x``, or ``ü`` and ``ä``, stay two
    twins. A name that needed no substitution is unchanged. The few collisions
    left (``a,b``+``c`` vs ``a``+``b,c``) are resolved when the twin is created.
    """
    key = naming_key(rule, labels)
    name = plain_name(rule, key)
    return name if name == f"{rule.name}@{_values(key)}" else f"{name}{HASH_MARK}{key_hash(key)}"


def plain_name(rule: TwinRule, key: Sequence[tuple[str, str]]) -> str:
    """The name before any hash suffix: what every version has called this label set's twin."""
    return f"{rule.name}@{_NAME_UNSAFE.sub('_', _values(key))}"


def _values(key: Sequence[tuple[str, str]]) -> str:
    return ",".join(v for _, v in key) or "_"


def shared_queries(rule: TwinRule) -> dict[str, str]:
    """A discovery rule's queries without ``$label``: run once per round for the whole family.

    Each returned series goes to the twin whose naming labels it carries, so
    ``sum by (instance) (rate(x[1m]))`` serves a thousand twins with one query.
    """
    if not rule.discover:
        return {}
    return {m: q for m, q in rule.queries().items() if not _PLACEHOLDER.search(q)}


def substitute(query: str, labels: Mapping[str, str]) -> str:
    """Fill ``$label``/``${label}`` inside the query's string literals, escaped for the quote they sit in.

    A label value is data, not PromQL: a ``"`` in it must not end the string
    (an injection), so it is escaped the way the PromQL lexer expects for
    that quote. A missing label is the empty string (Prometheus' own meaning).
    Raises ``ValueError`` for a value that a raw (backtick) string cannot hold.
    """
    out: list[str] = []
    quote: str | None = None
    i, n = 0, len(query)
    while i < n:
        c = query[i]
        if quote is None:
            if c in "\"'`":
                quote = c
            out.append(c)
            i += 1
            continue
        if c == "\\" and quote != "`":
            out.append(query[i:i + 2])
            i += 2
            continue
        if c == quote:
            quote = None
            out.append(c)
            i += 1
            continue
        m = _PLACEHOLDER.match(query, i) if c == "$" else None
        if m is None:
            out.append(c)
            i += 1
            continue
        value = labels.get(m.group(1) or m.group(2), "")
        if quote == "`":
            if "`" in value:
                raise ValueError(f"label value {value!r} cannot be placed in a `raw` string")
            out.append(value)
        else:
            out.append(value.replace("\\", "\\\\").replace(quote, "\\" + quote).replace("\n", "\\n"))
        i = m.end()
    return "".join(out)


@dataclass(slots=True)
class Target:
    """One live twin the scheduler queries: its concrete queries and where they came from."""

    name: str
    rule: TwinRule
    queries: dict[str, str]              # metric -> PromQL (placeholders filled)
    labels: dict[str, str] = field(default_factory=dict)
    absent_rounds: int = 0               # discovered twins: successful discovery rounds without the series
    key: tuple[tuple[str, str], ...] = ()   # discovered twins: the naming labels and their values
    by_labels: bool = True               # found by ``key`` (False: restored, named from other naming labels)


@dataclass(slots=True)
class _Parked:
    """A retired discovered twin, kept so that it can come back as it was (see ``RetiredConfig``)."""

    rule: str
    key: tuple[tuple[str, str], ...]
    at: float                                                  # when it was retired
    definition: dict[str, Any]
    snapshots: list[StateHistoryEntry]
    corrections: list[CorrectionRecord]
    samples: dict[str, tuple[np.ndarray, np.ndarray]]
    models: TwinModelState | None
    saved: bool = False                  # ``models`` are in the store (saved since, or read from it at start)

    @property
    def twin_id(self) -> str:
        return str(self.definition.get("twin_id", ""))


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


@dataclass(frozen=True, slots=True)
class _Job:
    """One instant query: for one twin, or shared by every twin of a discovery rule (``rule`` set)."""

    twin: str
    metric: str
    query: str
    rule: str | None = None


@dataclass(slots=True)
class _Outcome:
    twin: str
    metric: str
    result: InstantVector | None = None
    error: SourceError | None = None
    quiet: bool = False                  # a shared query's failure is logged once, for the rule
    query: str = ""


def several_series(n: int) -> str:
    """Why a twin metric's answer of ``n`` series is refused (rounds and backfill say the same)."""
    return (f"query returned {n} series; a twin metric needs exactly one "
            f"(aggregate it, e.g. sum/avg/max, or use `discover`)")


@dataclass(slots=True)
class _Streak:
    rounds: int = 0
    told: bool = False           # its warning went out (so its end is told too)


class _Streaks:
    """Once-per-streak logging per key: (twin, metric), or (rule, metric) for a query shared by a family.

    A run of bad rounds is warned about once, when it reaches ``after`` rounds (1: at once), and its end is
    logged at info only if it was warned about: one line per streak, not one per round. A bad round marked
    ``quiet`` counts but tells nothing (the whole source was down and says so itself, or a family's shared
    query is told once for the rule); a streak begun quietly that goes on for a reason of its own is told at
    its first round that is not quiet. Query failures and answers without data both use it.
    """

    def __init__(self, warning: str, recovered: str, *, after: int = 1, rounds_field: str = "rounds") -> None:
        self.warning = warning
        self.recovered = recovered
        self.after = max(1, after)
        self.rounds_field = rounds_field
        self._streaks: dict[tuple[str, str], _Streak] = {}

    def bad(self, key: tuple[str, str], *, quiet: bool = False, **fields: Any) -> None:
        s = self._streaks.get(key)
        if s is None:
            s = self._streaks[key] = _Streak()
        s.rounds += 1
        if not quiet and not s.told and s.rounds >= self.after:
            s.told = True
            extra = {"twin": key[0], "metric": key[1], **fields}
            if self.after > 1:
                extra[self.rounds_field] = s.rounds
            log.warning(self.warning, extra=extra)

    def good(self, key: tuple[str, str]) -> None:
        s = self._streaks.pop(key, None)
        if s is not None and s.told:
            log.info(self.recovered, extra={"twin": key[0], "metric": key[1], self.rounds_field: s.rounds})

    def forget(self, twin: str) -> None:
        """A retired twin's streaks end untold (it is gone, not recovered)."""
        for key in [k for k in self._streaks if k[0] == twin]:
            del self._streaks[key]


# --------------------------------------------------------------------------- scheduler


class Scheduler:
    """Runs the query rounds; see the module docstring."""

    def __init__(self, config: SidecarConfig, engine: Engine, client: PrometheusClient,
                 status: ServiceStatus, *, lock: asyncio.Lock | None = None, writer: OutboxSink | None = None,
                 sync_histogram: Observer | None = None, clock: Callable[[], float] = time.time,
                 own_identities: Sequence[Mapping[str, str]] = ()) -> None:
        self.config = config
        self.engine = engine
        self.client = client
        self.status = status
        self.lock = lock or asyncio.Lock()
        self.writer = writer
        self.sync_histogram = sync_histogram
        self.clock = clock
        #: labels of the sidecar's own scrape target(s), e.g. ``{"job": "twin-sidecar"}``: such series are refused
        self.own_identities = tuple(dict(i) for i in own_identities if i)
        self.targets: dict[str, Target] = {}
        self._slots: dict[tuple[str, str], int] = {}
        #: failing queries, told at the first failure of a streak (a streak begun with the whole source down
        #: at its first failure of its own); answers without data, told after NO_DATA_ROUNDS of them
        self._failing = _Streaks("query failing", "query recovered", rounds_field="failed_rounds")
        self._no_data = _Streaks("query returns no data", "query has data again", after=NO_DATA_ROUNDS,
                                rounds_field="empty_rounds")
        self._down_rounds = 0                                 # consecutive rounds with the source down
        self._down_since: float | None = None
        self._backfilled = config.backfill_s <= 0
        self._discovery_done = False
        self._scenario_due: dict[str, float] = {}
        self._scenario_failing: set[tuple[str, str]] = set()
        self._stop: asyncio.Event | None = None
        self._own_dropping: set[tuple[str, str]] = set()    # (twin or rule, metric) whose answers carry our own
        self._parked: dict[str, _Parked] = {}               # retired discovered twins, oldest first
        #: ids of retired twins no longer kept (or never kept), whose saved models the store may delete
        self._forgotten: list[str] = []
        #: a retired twin is kept this long, at most this many (the oldest go first): if its series returns within
        #: it, the twin is restored with everything it had (expected state, history, learnt models)
        self.keep_for_s = config.retired.keep_for_s
        self.keep_max = config.retired.keep_max

    # ------------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event) -> None:
        """Rounds every ``interval`` until ``stop`` is set; the round in progress finishes (briefly)."""
        self._stop = stop
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            interval = self.config.interval_s
            try:
                if not self._backfilled:
                    try:
                        await self.backfill()
                    except (SidecarError, ValueError):
                        self._backfilled = True      # tried once; the rounds fill history from now on
                        log.exception("backfill failed; continuing without it")
                report = await self.run_round()
                if report.duration_s > interval:
                    log.warning("query round took longer than the interval", extra={
                        "duration_s": round(report.duration_s, 3), "interval_s": interval})
                if report.source_up:
                    await self.run_scenarios()
            except asyncio.CancelledError:
                raise
            except Exception:   # a bug in one round must not end the service; it is logged with its trace
                log.exception("query round failed unexpectedly")
            elapsed = loop.time() - started
            if self._down_rounds:
                pause = min(interval * 2 ** (self._down_rounds - 1), max(interval, MAX_BACKOFF_S))
            else:
                pause = interval
            delay = pause - elapsed
            if delay > 0 and not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)

    # ------------------------------------------------------------------ one round

    async def run_round(self, at: float | None = None) -> RoundReport:
        """Discovery, then every metric query at one evaluation time, then one ingest."""
        t0 = time.perf_counter()
        at = self.clock() if at is None else at
        if self._down_rounds and not await self._probe(at):
            return self._finish_round(RoundReport(at=at, source_up=False, twins=len(self.targets)), t0)
        discovered, discovery_answered = await self._discover(at)
        await self._reconcile(at, discovered)
        jobs = [_Job(name, metric, query) for name, t in self.targets.items()
                for metric, query in t.queries.items()]
        jobs += [_Job("", metric, query, rule=r.name) for r in self.config.twins
                 for metric, query in shared_queries(r).items()]
        raw, aborted = await self._query_all(jobs, at)
        answered = sum(1 for _, o in raw if o.result is not None or isinstance(o.error, QueryFailed))
        reachable = answered > 0 or discovery_answered > 0
        outcomes, dealt_slots, dealt_values, dropped_shared = self._expand(raw, reachable)
        outcomes += self._expand_aborted(aborted)
        series, values, failed, dropped = self._collect(outcomes, reachable)
        if dealt_slots:
            series = np.concatenate([series, np.asarray(dealt_slots, np.int64)])
            values = np.concatenate([values, np.asarray(dealt_values, np.float64)])
        dropped += dropped_shared
        accepted = 0
        if series.size:
            async with self.lock:
                tick = await asyncio.to_thread(self.engine.ingest, series, values, at=at)
            accepted = tick.accepted
            if tick.dropped_nonfinite or tick.dropped_stale or tick.dropped_invalid:
                log.debug("samples dropped by the engine", extra={
                    "nonfinite": tick.dropped_nonfinite, "stale": tick.dropped_stale,
                    "invalid": tick.dropped_invalid})
        first_error = next((o.error for _, o in raw if o.error is not None), None)
        self._source_state(reachable, at, first_error)
        await self._flush()
        return self._finish_round(RoundReport(
            at=at, queries=len(jobs), answered=answered, failed=failed, accepted=accepted,
            dropped_own=dropped, source_up=reachable, twins=len(self.targets)), t0)

    def _finish_round(self, report: RoundReport, t0: float) -> RoundReport:
        duration = time.perf_counter() - t0
        self.status.rounds_total += 1
        self.status.last_round_at = report.at
        self.status.first_round_done = True
        if self.sync_histogram is not None:
            self.sync_histogram.observe(duration)
        log.debug("query round done", extra={"at": report.at, "queries": report.queries,
                                             "answered": report.answered, "failed": report.failed,
                                             "accepted": report.accepted, "duration_s": round(duration, 4)})
        return dataclasses.replace(report, duration_s=duration)

    async def _probe(self, at: float) -> bool:
        """While down, one cheap query decides whether a full round is worth sending."""
        try:
            await self.client.query("vector(1)", at=at)
        except SourceUnavailable as exc:
            self._source_state(False, at, exc)
            self._count_all_failed()
            return False
        except QueryFailed:
            pass   # it answered: reachable
        return True

    async def _query_all(self, jobs: Sequence[_Job], at: float
                         ) -> tuple[list[tuple[_Job, _Outcome]], list[_Job]]:
        """Run the instant queries; stop early when the source is clearly unreachable or on shutdown."""
        if not jobs:
            return [], []
        loop = asyncio.get_running_loop()
        timeout = self.config.prometheus.timeout_s
        deadline = loop.time() + 3 * max(self.config.interval_s, timeout)
        breaker = max(3, self.config.prometheus.max_concurrency)
        tasks: dict[asyncio.Task[InstantVector], _Job] = {
            asyncio.create_task(self.client.query(j.query, at=at)): j for j in jobs}
        pending: set[asyncio.Task[InstantVector]] = set(tasks)
        outcomes: list[tuple[_Job, _Outcome]] = []
        unreachable_run = 0
        stop_deadline: float | None = None
        try:
            while pending:
                if self._stop is not None and self._stop.is_set() and stop_deadline is None:
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
                        outcomes.append((job, _Outcome(job.twin, job.metric, result=task.result(),
                                                       query=job.query)))
                        unreachable_run = 0
                    elif isinstance(exc, SourceError):
                        outcomes.append((job, _Outcome(job.twin, job.metric, error=exc, query=job.query)))
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

    def _family(self, rule: str) -> list[Target]:
        return [t for t in self.targets.values() if t.rule.name == rule and t.rule.discover]

    def _expand(self, raw: Sequence[tuple[_Job, _Outcome]], reachable: bool
                ) -> tuple[list[_Outcome], list[int], list[float], int]:
        """Per-twin outcomes from raw ones; a shared query's series are dealt out by naming labels.

        Dealt series go straight to (slots, values): one pass over the series
        and a dict lookup each, so a family of thousands of twins costs
        milliseconds, not a result object per twin.
        """
        out: list[_Outcome] = []
        slots: list[int] = []
        values: list[float] = []
        dropped_total = 0
        for job, o in raw:
            if job.rule is None:
                out.append(o)
                continue
            family = self._family(job.rule)
            key = (job.rule, job.metric)
            if o.error is not None:
                self._streak_failed(key, str(o.error), quiet=not reachable)
                out.extend(_Outcome(t.name, job.metric, error=o.error, quiet=True) for t in family)
                continue
            self._query_ok(key)
            assert o.result is not None
            vec = o.result
            keep, dropped = self._drop_own(vec.labels, key, job.query, who="rule")
            dropped_total += dropped
            groups: dict[tuple[str, ...], dict[tuple[str, ...], Target]] = {}
            for t in family:
                groups.setdefault(tuple(k for k, _ in t.key), {})[tuple(v for _, v in t.key)] = t
            hits: dict[str, list[int]] = {}
            for names, by_value in groups.items():
                for i in keep:
                    lbl = vec.labels[i]
                    if all(k in lbl for k in names):
                        t_hit = by_value.get(tuple(lbl[k] for k in names))
                        if t_hit is not None:
                            hits.setdefault(t_hit.name, []).append(i)
            # an empty answer is told once, for the rule; each twin's streak still counts, and is told when the
            # query returns series again but none for that twin
            kept = np.asarray(vec.values, np.float64)[keep]
            self._answered(key, job.query, kept)
            for t in family:
                mine = hits.get(t.name, ())
                if len(mine) > 1:
                    out.append(_Outcome(t.name, job.metric, result=select(vec, mine)))   # reported as an error
                    continue
                self._query_ok((t.name, job.metric))
                self._answered((t.name, job.metric), job.query, np.asarray(vec.values, np.float64)[list(mine)],
                               quiet=not np.isfinite(kept).any())
                if mine:
                    slot = self._slot(t.name, job.metric)
                    if slot is not None:
                        slots.append(slot)
                        values.append(float(vec.values[mine[0]]))
        return out, slots, values, dropped_total

    def _expand_aborted(self, aborted: Sequence[_Job]) -> list[_Outcome]:
        cut = SourceUnavailable("not answered before the round was cut short")
        out: list[_Outcome] = []
        for job in aborted:
            twins = [t.name for t in self._family(job.rule)] if job.rule is not None else [job.twin]
            out.extend(_Outcome(name, job.metric, error=cut, quiet=True) for name in twins)
        return out

    def _collect(self, outcomes: Sequence[_Outcome],
                 reachable: bool) -> tuple[np.ndarray, np.ndarray, int, int]:
        """Answers -> (series slots, values); failures counted and logged once per streak."""
        slots: list[int] = []
        values: list[float] = []
        failed = 0
        dropped_total = 0
        for o in outcomes:
            key = (o.twin, o.metric)
            if o.error is not None:
                failed += 1
                self._query_failed(key, str(o.error), quiet=o.quiet or not reachable)
                continue
            assert o.result is not None
            vec = o.result
            keep, dropped = self._drop_own(vec.labels, key, o.query)
            if dropped:
                dropped_total += dropped
                vec = select(vec, keep)
            if len(vec) > 1:
                failed += 1
                self._query_failed(key, several_series(len(vec)), quiet=False)
                continue
            self._query_ok(key)
            self._answered(key, o.query, vec.values)
            if len(vec) == 1:
                slot = self._slot(o.twin, o.metric)
                if slot is not None:
                    slots.append(slot)
                    values.append(float(vec.values[0]))
        return np.asarray(slots, np.int64), np.asarray(values, np.float64), failed, dropped_total

    def _drop_own(self, labels: Sequence[Mapping[str, str]], key: tuple[str, str], query: str, *,
                  who: str = "twin") -> tuple[list[int], int]:
        """The run-time loop guard on one answer: the rows to keep.

        Dropped series are counted (``twin_dropped_own_series_total``) and
        logged once per (twin, metric) episode: at the first answer that carries
        them, again only after an answer that did not.
        """
        keep, dropped = loopguard.drop_own_series(labels, identities=self.own_identities)
        if not dropped:
            self._own_dropping.discard(key)
            return keep, 0
        self.status.dropped_own_series_total += dropped
        if key not in self._own_dropping:
            self._own_dropping.add(key)
            log.warning("loop guard: dropped series the sidecar exported itself (its metric names, its twin/metric "
                        "labels or its scrape target came back through the query)", extra={
                            who: key[0], "metric": key[1], "query": query, "dropped": dropped})
        return keep, dropped

    def _slot(self, twin: str, metric: str) -> int | None:
        """The engine's series slot; made for every target's metrics in ``_apply_targets`` (under the lock)."""
        return self._slots.get((twin, metric))

    def metrics_of(self, target: Target) -> list[str]:
        """Every metric a twin gets: its own queries and its rule's shared ones."""
        return [*target.queries, *shared_queries(target.rule)]

    def _count_all_failed(self) -> None:
        for name, t in self.targets.items():
            for metric in self.metrics_of(t):
                self._query_failed((name, metric), "source unreachable", quiet=True)

    # ------------------------------------------------------------------ error streaks

    def _query_failed(self, key: tuple[str, str], message: str, *, quiet: bool) -> None:
        self.status.query_errors[key] += 1
        self._streak_failed(key, message, quiet=quiet)

    def _streak_failed(self, key: tuple[str, str], message: str, *, quiet: bool) -> None:
        # a streak that began with the whole source down and goes on failing for a reason of its own
        # ("returned 2 series") is told like any other; one that stays the source's ends silently ("Prometheus
        # reachable again" says it came back: a line per query here was 100 lines for 20 twins after 15 s down)
        self._failing.bad(key, quiet=quiet, error=message)

    def _query_ok(self, key: tuple[str, str]) -> None:
        self._failing.good(key)

    def _answered(self, key: tuple[str, str], query: str, values: np.ndarray, *, quiet: bool = False) -> None:
        """An answered query's data streak; ``values`` are what it returned for ``key`` (none: no series).

        A finite value ends the streak; no series, or only NaN/Inf, lengthens it (the engine drops non-finite
        samples, so such a metric gets no sample either way).
        """
        v = np.asarray(values, np.float64)
        if np.isfinite(v).any():
            self._no_data.good(key)
        else:
            self._no_data.bad(key, quiet=quiet, query=query,
                              answer="no series" if v.size == 0 else "only NaN/Inf values")

    def _source_state(self, up: bool, at: float, error: BaseException | None = None) -> None:
        """Track the source's reachability; log the start and the end of a down streak, once each."""
        self.status.source_up = up
        if up:
            if self._down_since is not None:
                log.info("Prometheus reachable again", extra={
                    "down_for_s": round(at - self._down_since, 1), "failed_rounds": self._down_rounds})
            self._down_rounds = 0
            self._down_since = None
            return
        self._down_rounds += 1
        if self._down_since is None:
            self._down_since = at
            log.error("Prometheus unreachable; serving the last state and retrying with backoff", extra={
                "url": self.config.prometheus.url, "error": str(error) if error else "no query answered"})

    # ------------------------------------------------------------------ discovery and twins

    async def _discover(self, at: float) -> tuple[dict[str, InstantVector | None], int]:
        """Run every discovery query: per rule its result (None if it failed), and how many were answered."""
        rules = [r for r in self.config.twins if r.discover]
        results: dict[str, InstantVector | None] = {}
        answered = 0

        async def one(rule: TwinRule) -> None:
            nonlocal answered
            assert rule.discover is not None
            key = (rule.name, DISCOVER_METRIC)
            try:
                vec = await self.client.query(rule.discover, at=at)
            except SourceError as exc:
                results[rule.name] = None
                answered += isinstance(exc, QueryFailed)
                self._query_failed(key, str(exc), quiet=isinstance(exc, SourceUnavailable))
                return
            answered += 1
            keep, dropped = self._drop_own(vec.labels, key, rule.discover, who="rule")
            if dropped:
                vec = select(vec, keep)
            self._query_ok(key)
            results[rule.name] = vec

        await asyncio.gather(*(one(r) for r in rules))
        return results, answered

    async def _reconcile(self, at: float, discovered: Mapping[str, InstantVector | None]) -> None:
        """Create twins that appeared (or bring retired ones back), retire those gone for good."""
        if not self.targets:
            async with self.lock:
                wanted = {**self._static_targets(), **self._restored_targets()}
        else:
            wanted = dict(self.targets)
        self._expire_parked(at)
        answered_rules: set[str] = set()
        retire: list[str] = []
        for rule in self.config.twins:
            vec = discovered.get(rule.name) if rule.discover else None
            if vec is None:
                continue                      # no answer: its twins stay exactly as they are
            answered_rules.add(rule.name)
            # a series finds its twin by its naming labels: a name of an older version (restored from the store,
            # without hash), a collision-resolved one and a retired twin's are all found again; a name from other
            # naming labels (name_labels changed) is not, and that twin retires as before
            by_key = {p.key: name for name, p in self._parked.items() if p.rule == rule.name}
            by_key.update({t.key: name for name, t in wanted.items()
                           if t.rule.name == rule.name and t.rule.discover and t.by_labels})
            present: set[str] = set()
            for labels in vec.labels:
                own = {k: v for k, v in labels.items() if k != "__name__"}
                nkey = naming_key(rule, own)
                found = by_key.get(nkey)
                if found is not None and found in wanted:
                    present.add(found)
                    wanted[found].absent_rounds = 0
                    continue
                name = found if found is not None else self._fresh_name(rule, nkey, wanted)
                if name is None:
                    continue
                by_key[nkey] = name
                present.add(name)
                try:
                    queries = {m: substitute(q, labels) for m, q in rule.queries().items()
                               if m not in shared_queries(rule)}
                    for q in queries.values():
                        loopguard.check_query(q)
                except ValueError as exc:
                    self._query_failed((name, DISCOVER_METRIC), f"cannot build its queries: {exc}",
                                       quiet=False)
                    continue
                wanted[name] = Target(name, rule, queries, own, key=nkey)
            for name, t in list(wanted.items()):
                if t.rule.name == rule.name and name not in present:
                    t.absent_rounds += 1
                    if t.absent_rounds >= RETIRE_AFTER_ROUNDS:
                        retire.append(name)
                        del wanted[name]
        # once every discovery rule has answered, twins no rule accounts for (renamed or removed from the
        # rules file, restored from the store) are retired: the rules file is the source of truth
        sweep = not self._discovery_done and all(r.name in answered_rules for r in self.config.twins
                                                 if r.discover)
        self._discovery_done = self._discovery_done or sweep
        async with self.lock:
            added, retired = await asyncio.to_thread(self._apply_targets, wanted, retire, at, sweep)
        self.targets = wanted
        # counters exist from the start, so rate() sees the first error: for every twin this process now queries
        # (created, restored from the store at start or later, or back from retirement), not only new ones
        for name in added:
            for metric in self.metrics_of(wanted[name]):
                self.status.query_errors[(name, metric)] += 0
        for name in retired:
            for key in [k for k in self._slots if k[0] == name]:
                del self._slots[key]
            self._failing.forget(name)
            self._no_data.forget(name)
            for key in [k for k in self.status.query_errors if k[0] == name]:
                del self.status.query_errors[key]
            self._own_dropping = {k for k in self._own_dropping if k[0] != name}
            st = self.status
            for key in {k for d in (st.simulation_failure_probability, st.simulation_fit_trustworthy,
                                    st.simulation_breaking_multiplier) for k in d if k[0] == name}:
                self._forget_scenario_result(key)
            log.info("twin retired", extra={"twin": name,
                                            "kept_for_s": self.keep_for_s if name in self._parked else 0})

    def _fresh_name(self, rule: TwinRule, key: tuple[tuple[str, str], ...],
                    wanted: Mapping[str, Target]) -> str | None:
        """The name of a twin for a label set seen for the first time: unique, stable, logged if it collided."""
        name = discovered_name(rule, dict(key))

        def holder(n: str) -> tuple[tuple[str, str], ...] | None:
            t = wanted.get(n)
            if t is not None:
                return t.key if t.rule.discover else ()      # a configured twin's name: always taken
            p = self._parked.get(n)
            return p.key if p is not None else None

        owner = holder(name)
        if owner is None or owner == key:
            return name
        alt = f"{name.split(HASH_MARK, 1)[0]}{HASH_MARK}{key_hash(key, 16)}"
        other = holder(alt)
        if other is not None and other != key:
            log.error("discovered twin name collides even with its hash; series not twinned",
                      extra={"rule": rule.name, "twin": name, "labels": dict(key)})
            return None
        log.warning("discovered twin names collide: this series' twin gets a hash suffix", extra={
            "rule": rule.name, "twin": alt, "collides_with": name, "labels": dict(key)})
        return alt

    def _expire_parked(self, at: float) -> None:
        """Forget retired twins kept longer than ``keep_for_s``, and the oldest beyond ``keep_max``."""
        for name in [n for n, p in self._parked.items() if at - p.at > self.keep_for_s]:
            self._forget(self._parked.pop(name).twin_id)
        while len(self._parked) > self.keep_max:
            self._forget(self._parked.pop(next(iter(self._parked))).twin_id)

    def _forget(self, twin_id: str) -> None:
        """A retired twin leaves for good: its saved models are of no further use (see ``take_forgotten``)."""
        if twin_id:
            self._forgotten.append(twin_id)

    # ------------------------------------------------------------------ retired twins and the store
    # Called by the service on the event loop while it holds ``lock``: the scheduler changes what is parked only
    # under that lock or on the event loop itself.

    def park_stored(self, twins: Sequence[RestoredTwin], states: Mapping[str, bytes], *, now: float) -> list[str]:
        """Keep the twins the store has retired, as if this process had retired them; returns the ids kept.

        A restart within ``keep_for`` then gives a returning series its twin back exactly as retiring it
        here would have: same id, expected state, snapshots, corrections, recent samples and the learnt
        models read from the store (``states``: saved blobs by twin id). Only twins retired less than
        ``keep_for_s`` ago, the ``keep_max`` retired last, whose discovery rule still exists and would find
        them by their labels; a name already live or kept here is left alone. Oldest first, ahead of any
        twin retired by this process (retired later).
        """
        if self.keep_for_s <= 0 or self.keep_max <= 0:
            return []
        rules = {r.name: r for r in self.config.twins if r.discover}
        live = {t.name for t in self.engine.twins()}
        found: list[tuple[str, _Parked]] = []
        for rt in twins:
            name, at = rt.name, rt.retired_at
            if at is None or not math.isfinite(at) or now - at > self.keep_for_s:
                continue
            rule = rules.get(name.split("@", 1)[0]) if "@" in name else None
            if rule is None or name in live or name in self._parked:
                continue
            labels = {str(k): str(v) for k, v in (rt.definition.get("labels") or {}).items()}
            key = naming_key(rule, labels)
            if name.split(HASH_MARK, 1)[0] != plain_name(rule, key):
                continue                       # named from other naming labels: no series would find it
            found.append((name, _Parked(
                rule=rule.name, key=key, at=at, definition=dict(rt.definition), snapshots=list(rt.snapshots),
                corrections=list(rt.corrections), samples=dict(rt.samples),
                models=self._stored_models(rt.twin_id, states.get(rt.twin_id)), saved=True)))
        found.sort(key=lambda item: item[1].at)
        found = found[-self.keep_max:]
        self._parked = {**dict(found), **self._parked}
        self._expire_parked(now)
        kept = [p.twin_id for name, p in found if self._parked.get(name) is p]
        if found:
            log.info("retired twins kept from the store", extra={
                "twins": len(kept), "with_models": sum(1 for name, p in found
                                                       if self._parked.get(name) is p and p.models is not None),
                "keep_for_s": self.keep_for_s})
        return kept

    @staticmethod
    def _stored_models(twin_id: str, blob: bytes | None) -> TwinModelState | None:
        if blob is None:
            return None
        try:
            st = decode_model_state(blob)
            if st.twin_id != twin_id:
                raise InputError(f"model state belongs to twin {st.twin_id}")
        except InputError as exc:
            log.error("stored model state of a retired twin unreadable: it would relearn", extra={
                "twin_id": twin_id, "error": str(exc)})
            return None
        return st

    def unsaved_parked_models(self) -> list[TwinModelState]:
        """The learnt models of kept twins that are not in the store yet (retired since the last save)."""
        return [p.models for p in self._parked.values() if not p.saved and p.models is not None]

    def parked_models_saved(self, saved: Sequence[TwinModelState]) -> None:
        """These (from ``unsaved_parked_models``) are in the store now; a twin retired again meanwhile is not."""
        done = {id(st) for st in saved}
        for p in self._parked.values():
            if p.models is not None and id(p.models) in done:
                p.saved = True

    def take_forgotten(self) -> list[str]:
        """Ids of retired twins no longer kept (expired, beyond ``keep_max``, or never kept): their saved models
        can go. Handed over once; give back with ``forget_later`` what could not be deleted. A twin kept again
        since (back and retired anew, or read from the store) with models of its own is left out: its row is
        its models."""
        kept = {p.twin_id for p in self._parked.values() if p.models is not None}
        out = [t for t in dict.fromkeys(self._forgotten) if t not in kept]
        self._forgotten = []
        return out

    def forget_later(self, twin_ids: Sequence[str]) -> None:
        """Ids from ``take_forgotten`` whose rows could not be deleted (the store was down): handed over again."""
        self._forgotten[:0] = twin_ids

    def _static_targets(self) -> dict[str, Target]:
        return {r.name: Target(r.name, r, r.queries()) for r in self.config.twins if not r.discover}

    def _restored_targets(self) -> dict[str, Target]:
        """Twins the store brought back that a discovery rule owns: queried at once, from their labels."""
        out: dict[str, Target] = {}
        rules = {r.name: r for r in self.config.twins if r.discover}
        for twin in self.engine.twins():
            rule = rules.get(twin.name.split("@", 1)[0]) if "@" in twin.name else None
            if rule is None:
                continue
            try:
                queries = {m: substitute(q, twin.labels) for m, q in rule.queries().items()
                           if m not in shared_queries(rule)}
            except ValueError:
                continue
            key = naming_key(rule, twin.labels)
            out[twin.name] = Target(twin.name, rule, queries, dict(twin.labels), key=key,
                                    by_labels=twin.name.split(HASH_MARK, 1)[0] == plain_name(rule, key))
        return out

    def _apply_targets(self, wanted: Mapping[str, Target], retire: Sequence[str], at: float,
                       sweep: bool) -> tuple[list[str], list[str]]:
        """(In a worker thread, under the lock.) Make the engine's twins match the targets.

        Returns the twins newly queried (created, adopted or back from retirement) and those retired.
        """
        added: list[str] = []
        retired: list[str] = []
        gone = list(retire) + ([t.name for t in self.engine.twins() if t.name not in wanted] if sweep else [])
        self._park(retire, at)
        for name in gone:
            try:
                twin_id = self.engine.get(name).twin_id
                self.engine.retire_twin(name, at=at)
                retired.append(name)
            except EngineError:
                self._parked.pop(name, None)
                continue
            if name not in self._parked:
                self._forget(twin_id)          # not kept: nothing will bring its learnt models back
        back = [(name, p) for name in wanted if name not in self.targets
                and (p := self._parked.pop(name, None)) is not None]
        if back:
            self._unpark(back, at)
        for name, t in wanted.items():
            if name in self.targets:
                continue                       # already a twin (looking it up would rebuild its record)
            self._ensure_twin(name, t, at)
            try:
                slots = self.engine.series_for(name, self.metrics_of(t))
            except EngineError:
                continue
            added.append(name)
            for metric, slot in zip(self.metrics_of(t), slots.tolist(), strict=True):
                self._slots[(name, metric)] = int(slot)
        self._expire_parked(at)
        return added, retired

    def _park(self, names: Sequence[str], at: float) -> None:
        """(Worker thread, under the lock.) Keep what discovered twins about to be retired have, to give it back.

        The models' rows are cut out of the banks as ``Engine.export_model_states`` does, but only for these
        twins and without encoding them (a few ms per twin): they are encoded only if the twin returns.
        """
        keep: dict[str, tuple[DigitalTwin, dict[str, tuple[np.ndarray, np.ndarray]]]] = {}
        if self.keep_for_s <= 0 or self.keep_max <= 0:
            return                             # keeping disabled: not even the models' rows are cut out
        for name in names:
            t = self.targets.get(name)
            if t is None or not t.rule.discover or not t.by_labels:
                continue
            try:
                keep[name] = (self.engine.get(name), self.engine.history(name))
            except EngineError:
                continue
        if not keep:
            return
        models = self.engine.model_states([twin.twin_id for twin, _ in keep.values()])
        for name, (twin, history) in keep.items():
            t = self.targets[name]
            self._parked.pop(name, None)
            # the twin object leaves the engine at retirement: what is kept is no longer shared with it
            self._parked[name] = _Parked(
                rule=t.rule.name, key=t.key, at=at, definition=json.loads(json.dumps(twin.definition())),
                snapshots=twin.state_history, corrections=list(twin.corrections),
                samples={m: (np.array(ts), np.array(ys)) for m, (ts, ys) in history.items()},
                models=models.get(twin.twin_id))

    def _unpark(self, back: Sequence[tuple[str, _Parked]], at: float) -> None:
        """(Worker thread, under the lock.) Bring retired twins back as they were, the way a restart restores them.

        All at once: the models' rows are put back and the samples replayed in one call each, as at start-up.
        """
        returned: list[tuple[str, _Parked, DigitalTwin]] = []
        for name, p in back:
            try:
                self.engine.get(name)
            except EngineError:
                pass
            else:
                continue                       # restored from the store meanwhile: that one is adopted
            try:
                twin = self.engine.restore_twin(p.definition, snapshots=p.snapshots, corrections=p.corrections)
            except SidecarError as exc:
                log.error("could not restore a returning twin; it starts afresh", extra={
                    "twin": name, "error": str(exc)})
                self._forget(p.twin_id)
                continue
            returned.append((name, p, twin))
        if not returned:
            return
        learnt = self.engine.put_model_states([p.models for _, p, _twin in returned if p.models is not None])
        try:
            self.engine.restore_history({(twin.twin_id, m): v for _, p, twin in returned
                                         for m, v in p.samples.items()}, learnt)
        except SidecarError as exc:
            log.error("returning twins' samples could not be replayed", extra={"error": str(exc)})
        for name, p, twin in returned:
            # the store marked it retired: writing its definition again (with a snapshot saying why) un-retires
            # it, so a restart restores it too
            self.engine.set_expected_state(name, {}, at=at, reason="its series returned after retirement")
            log.info("twin returned: restored as it was retired", extra={
                "twin": name, "away_s": round(at - p.at, 1), "expected_state": bool(twin.expected_state)})

    def _ensure_twin(self, name: str, t: Target, at: float) -> bool:
        """(Worker thread, under the lock.) Create the twin, or adopt a restored one; True if created."""
        rule = t.rule
        try:
            self.engine.get(name)
        except EngineError:
            pass
        else:
            # restored from the store: the rules file wins for what it sets
            self.engine.configure(name, at=at, thresholds=dict(rule.thresholds), limits=dict(rule.limits),
                                  auto_correction=rule.auto_correction)
            self.engine.set_horizons(name, rule.horizons_s, at=at)
            self.engine.set_metric_rules(name, directions=rule.directions, bounds=rule.bounds, at=at)
            stored = self.engine.get(name).expected_state or {}
            if rule.expected and dict(rule.expected) != stored:
                # the expected state is the twin's (set by the API, corrections, rollbacks), applied from the
                # rules only when the twin is created: editing it there changed nothing, without a word
                log.warning("twin restored: its stored expected state is kept, the rules' `expected` is not applied",
                            extra={"twin": name, "stored": stored, "rules": dict(rule.expected),
                                   "hint": "PUT /api/v1/twins/<twin>/expected to change it"})
            return False
        sizing = {k: v for k, v in (("replicas", rule.replicas), ("workers", rule.workers)) if v is not None}
        try:
            self.engine.create_twin(
                name, at=at, system_type=rule.system_type, sync_frequency_seconds=self.config.interval_s,
                expected=dict(rule.expected) or None, thresholds=dict(rule.thresholds),
                limits=dict(rule.limits), auto_correction=rule.auto_correction, labels=t.labels,
                initial_state=sizing)
        except InputError as exc:
            log.error("cannot create twin", extra={"twin": name, "error": str(exc)})
            return False
        self.engine.set_horizons(name, rule.horizons_s, at=at)   # a subset of the engine's: config built both
        self.engine.set_metric_rules(name, directions=rule.directions, bounds=rule.bounds, at=at)
        return True

    # ------------------------------------------------------------------ backfill

    async def backfill(self, now: float | None = None) -> int:
        """Load the last ``backfill`` of history with range queries so forecasts exist from the start.

        Returns the samples accepted. While the source is unreachable nothing
        is loaded and the next round tries again. Series that already have
        samples (restored from the store) are only filled in after their newest.
        """
        now = self.clock() if now is None else now
        step = self.config.interval_s
        try:
            await self.client.query("vector(1)", at=now)
        except SourceUnavailable:
            return 0
        except QueryFailed:
            pass
        discovered, _ = await self._discover(now)
        await self._reconcile(now, discovered)
        async with self.lock:
            jobs = await asyncio.to_thread(self._backfill_jobs, now)

        warned = 0

        def refused(fields: Mapping[str, str], metric: str, query: str, error: str) -> None:
            # a refused backfill is otherwise invisible until forecasts stay empty: say why, at warning, for the
            # first few (a source down mid-backfill would fail every query the same way)
            nonlocal warned
            warned += 1
            level = logging.WARNING if warned <= BACKFILL_WARNINGS else logging.DEBUG
            log.log(level, "backfill query failed", extra={**fields, "metric": metric, "error": error,
                                                           "query": query})

        async def one(name: str, metric: str, query: str, start: float,
                      rule: str | None = None) -> tuple[str, str, RangeMatrix | None]:
            # the client splits a long range into requests Prometheus accepts (at most 10,000 steps each)
            try:
                return name, metric, await self.client.query_range(query, start, now - step, step)
            except SourceError as exc:
                refused({"rule": rule} if rule is not None else {"twin": name}, metric, query, str(exc))
                return name, metric, None

        start = math.ceil((now - self.config.backfill_s) / step) * step
        shared = [(r.name, metric, query) for r in self.config.twins for metric, query in shared_queries(r).items()]
        results, shared_results = await asyncio.gather(
            asyncio.gather(*(one(*j) for j in jobs)),
            asyncio.gather(*(one(rule, metric, query, start, rule) for rule, metric, query in shared)))
        samples: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        failed = 0
        queries = {(name, metric): query for name, metric, query, _ in jobs}
        queries.update({(rule, metric): query for rule, metric, query in shared})

        def take(name: str, metric: str, m: RangeMatrix, rows: Sequence[int], rule: str | None = None) -> int:
            if len(rows) > 1:
                # the same refusal as a round's ("query failing"), told here: the rounds only say it once they run
                fields = {"twin": name, **({"rule": rule} if rule is not None else {})}
                refused(fields, metric, queries.get((rule or name, metric), ""), several_series(len(rows)))
                return 1
            if not rows:
                return 0
            row = m.values[rows[0]]
            ok = np.isfinite(row)
            if ok.any():
                samples[(name, metric)] = (m.times[ok], row[ok])
            return 0

        for name, metric, m in results:
            if m is None:
                failed += 1
                continue
            keep, _ = self._drop_own(m.labels, (name, metric), queries.get((name, metric), ""))
            failed += take(name, metric, m, keep)
        for rule, metric, m in shared_results:
            if m is None:
                failed += 1
                continue
            keep, _ = self._drop_own(m.labels, (rule, metric), queries.get((rule, metric), ""), who="rule")
            for t in self._family(rule):
                names = [k for k, _ in t.key]
                want = tuple(v for _, v in t.key)
                rows = [i for i in keep if tuple(m.labels[i].get(k) for k in names) == want]
                failed += take(t.name, metric, m, rows, rule)
        accepted = 0
        if samples:
            async with self.lock:
                report = await asyncio.to_thread(self.engine.backfill, samples)
            accepted = report.accepted
        self._backfilled = True
        await self._flush()
        log.info("backfill done", extra={"queries": len(jobs) + len(shared), "failed": failed, "series": len(samples),
                                         "samples": accepted, "window_s": self.config.backfill_s})
        return accepted

    def _backfill_jobs(self, now: float) -> list[tuple[str, str, str, float]]:
        """(Worker thread, under the lock.) Per-twin range queries, each starting after what is stored."""
        step = self.config.interval_s
        jobs: list[tuple[str, str, str, float]] = []
        for name, t in self.targets.items():
            try:
                history = self.engine.history(name)
            except EngineError:
                continue
            for metric, query in t.queries.items():
                start = now - self.config.backfill_s
                times = history.get(metric, (np.zeros(0), np.zeros(0)))[0]
                if times.size:
                    start = max(start, float(times[-1]) + step)
                start = math.ceil(start / step) * step      # on the grid, so restarts line up
                if start <= now - step:
                    jobs.append((name, metric, query, start))
        return jobs

    # ------------------------------------------------------------------ standing scenarios

    async def run_scenarios(self, now: float | None = None) -> int:
        """Re-run the standing what-if scenarios that are due; results go to the status for /metrics."""
        now = self.clock() if now is None else now
        ran = 0
        for sc in self.config.scenarios:
            if now < self._scenario_due.get(sc.name, -math.inf):
                continue
            self._scenario_due[sc.name] = now + sc.every_s
            for name, target in list(self.targets.items()):
                if sc.twin != "all" and target.rule.name != sc.twin:
                    continue
                await self._simulate(sc, name, target.rule, now)
                ran += 1
        return ran

    async def _simulate(self, sc: ScenarioRule, twin: str, rule: TwinRule, now: float) -> None:
        key = (twin, sc.name)
        try:
            async with self.lock:   # one twin at a time: the API waits for one simulation, not all
                result: dict[str, Any] = await asyncio.to_thread(
                    self.engine.simulate, twin, dict(sc.scenario), at=now, seed=0, replicas=rule.replicas,
                    workers=rule.workers)
        except SidecarError as exc:
            if key not in self._scenario_failing:
                self._scenario_failing.add(key)
                log.warning("standing scenario failed", extra={"twin": twin, "scenario": sc.name,
                                                               "error": str(exc)})
            self._forget_scenario_result(key)
            return
        self._scenario_failing.discard(key)
        self._record_scenario_result(key, result)

    def _record_scenario_result(self, key: tuple[str, str], result: Mapping[str, Any]) -> None:
        """Put one run's numbers on the status; each one this run did not give is removed, so the exported
        probability, breaking point and fit verdict always come from the same run."""
        st = self.status
        p = result.get("failure_probability")
        if isinstance(p, int | float) and math.isfinite(p):
            st.simulation_failure_probability[key] = float(p)
        else:
            st.simulation_failure_probability.pop(key, None)
        raw_fit = result.get("model_fit")
        fit: Mapping[str, Any] = raw_fit if isinstance(raw_fit, Mapping) else {}
        trusted = fit.get("trustworthy")
        if isinstance(trusted, bool):
            before = st.simulation_fit_trustworthy.get(key)
            if before is not trusted and not (before is None and trusted):
                # the reason is too free-form for a label: one line when a fit is (or turns) untrusted says it
                log.info("standing scenario fit trustworthy" if trusted else "standing scenario fit not trustworthy",
                         extra={"twin": key[0], "scenario": key[1], "reason": str(fit.get("reason", ""))})
            st.simulation_fit_trustworthy[key] = trusted
        else:       # no verdict: absent, and the alert (which needs == 1) stays silent
            st.simulation_fit_trustworthy.pop(key, None)
        bp = result.get("breaking_point")
        mult = bp.get("traffic_multiplier") if isinstance(bp, Mapping) else None
        if isinstance(mult, int | float) and math.isfinite(mult):
            st.simulation_breaking_multiplier[key] = float(mult)
        else:
            st.simulation_breaking_multiplier.pop(key, None)

    def _forget_scenario_result(self, key: tuple[str, str]) -> None:
        """Remove every exported number of this (twin, scenario): its run failed, or the twin is gone."""
        self.status.simulation_failure_probability.pop(key, None)
        self.status.simulation_fit_trustworthy.pop(key, None)
        self.status.simulation_breaking_multiplier.pop(key, None)

    # ------------------------------------------------------------------ output

    async def _flush(self) -> None:
        """Hand what changed to the store writer (never blocks: the writer buffers)."""
        async with self.lock:
            outbox = self.engine.drain()
        if self.writer is not None and outbox:
            self.writer.submit(outbox)
