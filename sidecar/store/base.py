"""The store interface both databases implement, and the row conversions they share.

A ``Store`` is the engine's ``HistoryStore`` (``write``, ``get_snapshot``,
``list_snapshots``) plus what the service needs around it: open and migrate,
bring twins back at start (``load_twins``), query stored metrics, and apply
retention. Everything a snapshot read returns has passed its checksum; a row
that fails is logged, counted once in ``ServiceStatus`` and never handed out.

Example::

    store = open_store(path="twins.db")
    await store.open()
    for twin in await store.load_twins():
        engine.restore_twin(twin.definition, snapshots=twin.snapshots, samples=twin.samples,
                            corrections=twin.corrections)
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..engine.records import CorrectionRecord, EventType, StateHistoryEntry, TwinEvent
from ..engine.view import MetricSamples, Outbox, PredictionRows
from ..errors import CorruptSnapshotError
from ..status import ServiceStatus

log = logging.getLogger(__name__)

#: Snapshot columns in the order every SELECT returns them.
SNAPSHOT_COLUMNS = ("snapshot_id, twin_id, timestamp, state_snapshot, metrics, health_score, change_reason, "
                    "can_rollback_to, checksum")
CORRECTION_COLUMNS = ("correction_id, twin_id, alert_id, component, action, details, applied, reason, "
                      "timestamp")
EVENT_COLUMNS = "event_id, twin_id, type, severity, message, timestamp, data"


# ---------------------------------------------------------------- records handed out


@dataclass(frozen=True, slots=True)
class RestoredTwin:
    """One twin as the store last saw it: what ``Engine.restore_twin`` takes."""

    definition: dict[str, Any]                                  # DigitalTwin.definition()
    snapshots: list[StateHistoryEntry]                          # verified, oldest first
    samples: dict[str, tuple[np.ndarray, np.ndarray]]           # metric -> (times, values), oldest first
    corrections: list[CorrectionRecord]                         # oldest first
    owner: str = ""
    retired_at: float | None = None                             # unix s; None for a live twin

    @property
    def twin_id(self) -> str:
        return str(self.definition["twin_id"])

    @property
    def name(self) -> str:
        return str(self.definition.get("source_system", ""))


#: Chooses stored twins by their definition (``DigitalTwin.definition()``) before their history is read.
KeepDefinition = Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Which stored events ``list_events`` returns: newest first, ordered by (timestamp, event_id) descending.

    ``since`` keeps events at or after it. ``before`` keeps events strictly older than it; with ``before_id``
    also the events at exactly ``before`` whose id sorts below ``before_id``, so a page that ends inside a
    group of events sharing one timestamp (a round emits many at once) continues where it stopped, with
    nothing skipped and nothing repeated. Ids compare bytewise (code point order), the same in Python,
    SQLite and PostgreSQL.
    """

    twin_id: str | None = None
    type: str | None = None
    since: float | None = None
    before: float | None = None
    before_id: str | None = None
    limit: int = 1000

    def admits(self, event: TwinEvent) -> bool:
        """Whether an event matches (the memory buffer is filtered with the same rule as the database)."""
        if self.twin_id is not None and event.twin_id != self.twin_id:
            return False
        if self.type is not None and str(event.type) != self.type:
            return False
        if self.since is not None and event.timestamp < self.since:
            return False
        return self.before is None or event_key(event) < (self.before, self.before_id or "")


def event_select(query: EventQuery, owner: str, *, mark: Callable[[int], str],
                 collate: str = "") -> tuple[str, list[Any]]:
    """The SELECT of ``list_events`` and its arguments, for either database.

    ``mark(n)`` spells the n-th placeholder (``?`` or ``$n``); ``collate`` is put after ``event_id`` so ids
    compare bytewise (PostgreSQL's default collation may not). Only events of twins this replica owns are
    listed: replicas sharing a database each see their own, as they do their twins.
    """
    args: list[Any] = [owner]
    where = [f"twin_id IN (SELECT twin_id FROM twin_definitions WHERE owner = {mark(1)})"]

    def arg(value: Any) -> str:
        args.append(value)
        return mark(len(args))

    if query.twin_id is not None:
        where.append(f"twin_id = {arg(query.twin_id)}")
    if query.type is not None:
        where.append(f"type = {arg(query.type)}")
    if query.since is not None:
        where.append(f"timestamp >= {arg(float(query.since))}")
    if query.before is not None and query.before_id is None:
        where.append(f"timestamp < {arg(float(query.before))}")
    elif query.before is not None:
        where.append(f"(timestamp < {arg(float(query.before))} OR (timestamp = {arg(float(query.before))} "
                     f"AND event_id{collate} < {arg(query.before_id)}))")
    sql = (f"SELECT {EVENT_COLUMNS} FROM twin_events WHERE {' AND '.join(where)} "
           f"ORDER BY timestamp DESC, event_id{collate} DESC LIMIT {arg(int(query.limit))}")
    return sql, args


def event_key(event: TwinEvent) -> tuple[float, str]:
    """The order events are listed in (newest first = this key descending) and paged by."""
    return (event.timestamp, event.event_id)


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How much history to keep; ``None`` keeps everything of that kind.

    Snapshots go by age or by count per twin, whichever drops more, but the
    newest snapshot of every twin is always kept so each twin can still be
    rolled back to its last known state, and none younger than
    ``snapshot_min_age_s`` is dropped at all: a change the API acknowledged
    stays in the history (and a rollback target) at least that long,
    however fast snapshots come.
    """

    snapshot_max_age_s: float | None = None
    snapshot_max_count: int | None = None
    snapshot_min_age_s: float | None = None
    samples_max_age_s: float | None = None
    predictions_max_age_s: float | None = None
    events_max_age_s: float | None = None


@dataclass(frozen=True, slots=True)
class RetentionReport:
    snapshots: int = 0
    samples: int = 0
    predictions: int = 0
    events: int = 0
    twins_touched: int = 0


@dataclass(frozen=True, slots=True)
class LoadLimits:
    """How much of each twin's past ``load_twins`` brings back."""

    snapshots: int = 100          # the engine keeps the newest 100 in memory
    samples: int = 1000           # per metric: the engine's per-series history bound
    sample_window_s: float = 3600.0   # ... within this long before the twin's newest sample
    corrections: int = 100


DEFAULT_LOAD = LoadLimits()


# ---------------------------------------------------------------- JSON in columns


def dumps(value: Any) -> str:
    """Canonical JSON text, the same form the checksum is computed over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)


def jsonb_stable(value: Any) -> bool:
    """Would PostgreSQL's JSONB hand this back so that it re-encodes to the same text?

    JSONB keeps numbers as ``numeric``: ``1e+16`` comes back as the integer
    ``10000000000000000`` and ``-0.0`` as ``0.0``, and it refuses ``\\u0000``
    and lone surrogates. Any of these would make a good snapshot fail its
    checksum (or fail to insert), so such values are stored as a JSON string
    holding the exact text instead (see ``encode_jsonb``).
    """
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return True
    if isinstance(value, float):
        if not math.isfinite(value):
            return False
        if value == 0.0:
            return math.copysign(1.0, value) > 0
        return "e+" not in repr(value)
    if isinstance(value, str):
        return _jsonb_text_ok(value)
    if isinstance(value, Mapping):
        return all(_jsonb_text_ok(str(k)) and jsonb_stable(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(jsonb_stable(v) for v in value)
    return False   # anything else goes through default=str: store the exact text


def _jsonb_text_ok(s: str) -> bool:
    if "\x00" in s:
        return False
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:   # a lone surrogate
        return False
    return True


def encode_jsonb(value: Any) -> str:
    """JSON text for a JSONB column: the value itself, or its exact text as a JSON string."""
    text = dumps(value)
    return text if jsonb_stable(value) else json.dumps(text)


def decode_json(text: str | bytes | None) -> Any:
    """Inverse of ``encode_jsonb`` (and plain text for SQLite): a string column value holds the exact text."""
    if text is None:
        raise ValueError("NULL JSON column")
    value = json.loads(text)
    if isinstance(value, str):
        value = json.loads(value)
    return value


# ---------------------------------------------------------------- outbox -> rows


@dataclass(slots=True)
class PreparedBatch:
    """An outbox turned into plain rows on the event-loop thread.

    Definitions are serialised here because ``DigitalTwin`` objects are live
    engine state; the bulk arrays (samples, predictions) are immutable and are
    turned into rows later, off the loop.
    """

    definitions: list[tuple[str, str, str, str, float, float]]  # twin_id, name, owner, json, created, updated
    retired: list[str]
    snapshots: list[StateHistoryEntry]
    corrections: list[CorrectionRecord]
    events: list[tuple[str, str, str, str, str, float, str]]     # event_id, twin_id, type, sev, msg, ts, json
    samples: list[MetricSamples]
    predictions: list[PredictionRows]


def prepare(outbox: Outbox, *, owner: str, now: float, encode: Any = dumps) -> PreparedBatch:
    latest: dict[str, tuple[str, str, str, str, float, float]] = {}
    for twin in outbox.twins:      # one row per twin, the last one wins (an upsert may not touch a row twice)
        d = twin.definition()
        latest[twin.twin_id] = (twin.twin_id, twin.source_system, owner, encode(d), float(twin.created_at),
                                now)
    seen: set[str] = set()
    snapshots = []
    for s in outbox.snapshots:
        if s.snapshot_id not in seen:
            seen.add(s.snapshot_id)
            snapshots.append(s)
    events = [(e.event_id, e.twin_id, str(e.type), e.severity, e.message, float(e.timestamp),
               encode(dict(e.data))) for e in outbox.events]
    return PreparedBatch(definitions=list(latest.values()), retired=list(dict.fromkeys(outbox.retired)),
                         snapshots=snapshots, corrections=list(outbox.corrections), events=events,
                         samples=list(outbox.samples), predictions=list(outbox.predictions))


def snapshot_row(entry: StateHistoryEntry, owner: str, encode: Any = dumps) -> tuple[Any, ...]:
    return (entry.snapshot_id, entry.twin_id, float(entry.timestamp), encode(dict(entry.state_snapshot)),
            encode(dict(entry.metrics)), float(entry.health_score), entry.change_reason,
            bool(entry.can_rollback_to), entry.checksum, owner)


def correction_row(c: CorrectionRecord) -> tuple[Any, ...]:
    return (c.correction_id, c.twin_id, c.alert_id, c.component, c.action, c.details, bool(c.applied),
            c.reason, c.timestamp)


def sample_columns(batches: Sequence[MetricSamples]) -> tuple[list[str], list[float], list[str], list[float]]:
    """(twin_id, timestamp, metric, value) columns; non-finite samples are not history and are left out."""
    if not batches:
        return [], [], [], []
    twin = np.array([t for b in batches for t in b.twin_id], dtype=object)
    metric = np.array([m for b in batches for m in b.metric], dtype=object)
    ts = np.concatenate([np.asarray(b.timestamp, dtype=np.float64) for b in batches])
    val = np.concatenate([np.asarray(b.value, dtype=np.float64) for b in batches])
    if not (len(twin) == len(metric) == len(ts) == len(val)):
        raise ValueError("MetricSamples columns differ in length")
    ok = np.flatnonzero(np.isfinite(ts) & np.isfinite(val))
    if ok.size > 1:
        # in key order (twin_id, timestamp, metric): each insert lands beside the previous one in the primary key's
        # B-tree instead of a random page (about a fifth less CPU a row on SQLite, more when rounds are batched)
        _, tw_code = np.unique(twin[ok], return_inverse=True)
        _, me_code = np.unique(metric[ok], return_inverse=True)
        ok = ok[np.lexsort((me_code.reshape(-1), ts[ok], tw_code.reshape(-1)))]
    return twin[ok].tolist(), ts[ok].tolist(), metric[ok].tolist(), val[ok].tolist()


def prediction_columns(batches: Sequence[PredictionRows]) -> list[list[Any]]:
    """The nine prediction columns; unknown numbers (NaN) become NULL."""
    if not batches:
        return [[] for _ in range(9)]

    def strings(name: str) -> np.ndarray:
        return np.array([x for b in batches for x in getattr(b, name)], dtype=object)

    def floats(name: str) -> np.ndarray:
        return np.concatenate([np.asarray(getattr(b, name), dtype=np.float64) for b in batches])

    twin, metric, risk = strings("twin_id"), strings("metric"), strings("risk_factor")
    made_at, horizon = floats("made_at"), floats("horizon_s")
    nums = [floats(n) for n in ("predicted", "lower", "upper", "failure_probability")]
    n = len(twin)
    if any(len(c) != n for c in (metric, risk, made_at, horizon, *nums)):
        raise ValueError("PredictionRows columns differ in length")
    ok = np.flatnonzero(np.isfinite(made_at) & np.isfinite(horizon))
    if ok.size > 1:     # in key order (twin_id, made_at, metric, horizon_seconds), as the samples
        _, tw_code = np.unique(twin[ok], return_inverse=True)
        _, me_code = np.unique(metric[ok], return_inverse=True)
        ok = ok[np.lexsort((horizon[ok], me_code.reshape(-1), made_at[ok], tw_code.reshape(-1)))]
    cols: list[list[Any]] = [twin[ok].tolist(), made_at[ok].tolist(), metric[ok].tolist(),
                             horizon[ok].tolist()]
    for c in nums:
        c = c[ok]
        obj = c.astype(object)
        obj[~np.isfinite(c)] = None
        cols.append(obj.tolist())
    cols.append([str(r) for r in risk[ok].tolist()])
    return cols


# ---------------------------------------------------------------- rows -> records


def entry_from_row(row: Sequence[Any]) -> StateHistoryEntry:
    """Build the entry exactly as stored (no coercion: the checksum must see what is on disk)."""
    sid, twin_id, ts, state, metrics, health, reason, can, checksum = row[:9]
    return StateHistoryEntry(snapshot_id=str(sid), twin_id=str(twin_id), timestamp=float(ts),
                             state_snapshot=decode_json(state), metrics=decode_json(metrics),
                             health_score=float(health), change_reason=str(reason),
                             can_rollback_to=bool(can), checksum=str(checksum))


def correction_from_row(row: Sequence[Any]) -> CorrectionRecord:
    cid, twin_id, alert_id, component, action, details, applied, reason, ts = row[:9]
    return CorrectionRecord(correction_id=cid, twin_id=twin_id, alert_id=alert_id, component=component,
                            action=action, details=details, applied=bool(applied), reason=reason,
                            timestamp=ts)


def event_from_row(row: Sequence[Any]) -> TwinEvent:
    """A stored event (``EVENT_COLUMNS``); a type this build does not know is kept as its text."""
    event_id, twin_id, type_, severity, message, ts, data = row[:7]
    kind = EventType(type_) if type_ in EventType._value2member_map_ else str(type_)
    decoded = decode_json(data)
    return TwinEvent(event_id=str(event_id), twin_id=str(twin_id), type=kind,  # type: ignore[arg-type]
                     severity=str(severity), message=str(message), timestamp=float(ts),
                     data=decoded if isinstance(decoded, dict) else {"value": decoded})


def group_samples(metric: Iterable[str], ts: Iterable[float], val: Iterable[float], *,
                  limit: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Rows sorted by time -> metric -> (times, values), the newest ``limit`` of each."""
    m = np.array(list(metric), dtype=object)
    t = np.fromiter(ts, dtype=np.float64, count=len(m))
    v = np.fromiter(val, dtype=np.float64, count=len(m))
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in dict.fromkeys(m.tolist()):
        sel = m == name
        out[str(name)] = (t[sel][-limit:].copy(), v[sel][-limit:].copy())
    return out


# ---------------------------------------------------------------- the interface


class Store(abc.ABC):
    """Persistent history for the engine (see module docstring)."""

    backend: ClassVar[str]

    def __init__(self, *, replica: str = "default", status: ServiceStatus | None = None) -> None:
        self.replica = replica
        self.status = status
        self.corrupt_snapshots_total = 0
        self._corrupt_seen: set[str] = set()

    # -- lifecycle
    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and migrate now; ``StoreError`` when the database is unavailable.

        Optional: every other method opens on first use, and retries the
        connection after a failure, so a store created while its database is
        down starts working when it comes back.
        """

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def schema_version(self) -> int: ...

    # -- HistoryStore
    @abc.abstractmethod
    async def write(self, outbox: Outbox) -> None:
        """Persist an outbox in one transaction: all of it or none of it.

        Idempotent, so a batch whose acknowledgement was lost can be written
        again: snapshots, samples, predictions, corrections and events are
        inserted with ON CONFLICT DO NOTHING; a twin definition is replaced
        only by the replica that owns it. Raises ``StoreError``.
        """

    @abc.abstractmethod
    async def get_snapshot(self, twin_id: str, snapshot_id: str) -> StateHistoryEntry | None:
        """The verified snapshot, ``None`` if absent; ``CorruptSnapshotError`` if it fails its checksum."""

    @abc.abstractmethod
    async def list_snapshots(self, twin_id: str, *, limit: int = 100,
                             before: float | None = None) -> list[StateHistoryEntry]:
        """Newest first, verified; a corrupt row is reported and left out, never handed back."""

    # -- service
    @abc.abstractmethod
    async def load_twins(self, *, limits: LoadLimits = DEFAULT_LOAD, include_retired: bool = False,
                         retired_since: float | None = None, retired_max: int | None = None,
                         keep: KeepDefinition | None = None) -> list[RestoredTwin]:
        """This replica's twins with their recent past, so forecasts resume at once after a restart.

        ``include_retired`` adds retired twins (``RestoredTwin.retired_at`` set): only those retired at or
        after ``retired_since`` if given, and of those the ``retired_max`` retired last if given, so a
        start-up reads the few a returning series may still claim, not every twin ever retired.
        ``keep`` (a stored definition -> bool) chooses among them before their history is read: a shard reads
        only its own twins' history.
        """

    @abc.abstractmethod
    async def list_events(self, query: EventQuery) -> list[TwinEvent]:
        """Stored events of this replica's twins matching ``query``, newest first, at most ``query.limit``.

        Raises ``StoreError`` when the database does not answer.
        """

    @abc.abstractmethod
    async def metrics_history(self, twin_id: str, metric: str, start: float,
                              end: float) -> tuple[np.ndarray, np.ndarray]:
        """Stored samples with start <= t <= end, oldest first."""

    @abc.abstractmethod
    async def apply_retention(self, policy: RetentionPolicy, *, now: float) -> RetentionReport:
        """Drop whole old rows per the policy; never a twin's newest snapshot; logs what it dropped."""

    @abc.abstractmethod
    async def save_model_states(self, states: Mapping[str, bytes], *, at: float) -> int:
        """Replace this replica's saved model state of the given twins (one transaction); returns how many
        rows were written (a twin owned by another replica is left alone)."""

    @abc.abstractmethod
    async def load_model_states(self, twin_ids: Collection[str] | None = None) -> dict[str, bytes]:
        """This replica's saved model states by twin id (of ``twin_ids`` only, if given); a row failing its
        checksum is logged and left out."""

    @abc.abstractmethod
    async def forget_model_states(self, twin_ids: Sequence[str]) -> int:
        """Delete this replica's saved model state of these twins; returns the rows deleted.

        Retiring a twin keeps its row: a retired twin is kept (``retired.keep_for``), across a restart too,
        and returns with its learnt models. The row goes when the twin is no longer kept (this call), or at
        start-up for twins retired too long ago (``purge_retired_model_states``).
        """

    @abc.abstractmethod
    async def purge_retired_model_states(self, *, keep: Collection[str] = ()) -> int:
        """Delete this replica's saved model state of every twin it retired, except the twins in ``keep``
        (those still kept to come back); returns the rows deleted. Rows of live twins, of twins without a
        stored definition and of other replicas are left alone."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise ``StoreError`` unless the database answers."""

    # -- shared helpers
    def _model_state_rows(self, rows: Iterable[Sequence[Any]]) -> dict[str, bytes]:
        """(twin_id, state, checksum) rows that verify, by twin id."""
        out: dict[str, bytes] = {}
        for twin_id, blob, checksum in rows:
            data = bytes(blob)
            if hashlib.sha256(data).hexdigest() != checksum:
                log.error("corrupt model state ignored: twin=%s store=%s (checksum does not verify)",
                          twin_id, self.backend)
                continue
            out[str(twin_id)] = data
        return out

    def _verified(self, row: Sequence[Any]) -> StateHistoryEntry | None:
        """The entry if the row decodes and its checksum holds; otherwise report it and return None."""
        try:
            entry = entry_from_row(row)
            ok = entry.verify()
        except (ValueError, TypeError, KeyError) as e:   # undecodable JSON is corruption too
            ok, entry = False, None
            log.debug("snapshot row does not decode: %s", e)
        if ok:
            return entry
        self._report_corrupt(str(row[1]), str(row[0]))
        return None

    def _report_corrupt(self, twin_id: str, snapshot_id: str) -> None:
        if snapshot_id in self._corrupt_seen:
            return
        if len(self._corrupt_seen) < 100_000:
            self._corrupt_seen.add(snapshot_id)
        self.corrupt_snapshots_total += 1
        if self.status is not None:
            self.status.store_corrupt_snapshots_total += 1
        log.error("corrupt snapshot refused: twin=%s snapshot=%s store=%s (checksum does not verify)",
                  twin_id, snapshot_id, self.backend)

    def _get_verified(self, row: Sequence[Any] | None, twin_id: str,
                      snapshot_id: str) -> StateHistoryEntry | None:
        if row is None:
            return None
        entry = self._verified(row)
        if entry is None:
            raise CorruptSnapshotError(
                f"snapshot {snapshot_id} of twin {twin_id} fails its checksum; refusing to use it",
                snapshot_id=snapshot_id)
        return entry

    def _log_retention(self, policy: RetentionPolicy, report: RetentionReport) -> None:
        if report == RetentionReport():
            log.debug("retention: nothing to drop (%s)", self.backend)
            return
        log.info("retention dropped snapshots=%d (twins=%d) samples=%d predictions=%d events=%d "
                 "policy=%s store=%s", report.snapshots, report.twins_touched, report.samples,
                 report.predictions, report.events, policy, self.backend)


def retention_bounds(policy: RetentionPolicy, now: float) -> dict[str, float | int]:
    """Cut-off times (-inf: keep all), the per-twin snapshot count (never below 1) and the time from which
    snapshots are young enough to be kept whatever the count."""
    def cutoff(age: float | None) -> float:
        return -math.inf if age is None else now - float(age)

    count = policy.snapshot_max_count
    young = policy.snapshot_min_age_s
    return {
        "snapshot_cutoff": cutoff(policy.snapshot_max_age_s),
        # snapshots at or after this time are never dropped (+inf: no minimum age)
        "snapshot_young": math.inf if young is None else now - float(young),
        "snapshot_keep": 2**62 if count is None else max(1, int(count)),
        "samples_cutoff": cutoff(policy.samples_max_age_s),
        "predictions_cutoff": cutoff(policy.predictions_max_age_s),
        "events_cutoff": cutoff(policy.events_max_age_s),
    }


__all__ = [
    "CORRECTION_COLUMNS", "DEFAULT_LOAD", "EVENT_COLUMNS", "SNAPSHOT_COLUMNS", "EventQuery", "LoadLimits",
    "PreparedBatch", "RestoredTwin", "RetentionPolicy", "RetentionReport", "Store", "correction_from_row",
    "correction_row", "decode_json", "dumps", "encode_jsonb", "entry_from_row", "event_from_row", "event_key",
    "event_select",
    "group_samples", "jsonb_stable", "prediction_columns", "prepare", "retention_bounds", "sample_columns",
    "snapshot_row",
]
