"""The JSON API under ``/api/v1``: read twins, their history and events; change expected state, roll back,
simulate.

Every engine call holds the engine lock the scheduler also takes, so a request
never sees a half-applied tick; calls that can take long (listing every twin,
a simulation, reading history from the store) run in a worker thread or await
I/O while holding it, so the event loop keeps serving /metrics and probes.
Requests that change state need ``Authorization: Bearer <token>`` when a token
is configured; reads stay open, as /metrics does. Each refusal is logged (client address, method, path,
reason; never the token sent), at most once per client per minute with a count. A token given as a file is re-read
when the file changes (a rotated Kubernetes Secret takes effect without a restart); a
file that cannot be read or is empty refuses every write rather than opening them. Errors are JSON
``{"error": message, "status": code}`` and never contain a secret.

A state change (expected state, rollback) is applied to the engine, then the
handler releases the engine lock and waits, bounded, for the store to commit
it: 200 with ``"stored": true`` means it survives a crash from now on; 202
with ``"stored": false`` means it is applied and queued, and is written, in
order, when the database answers (it is down, or slower than the wait).
A simulation changes nothing and stores nothing.

Events are read from the store, so they outlive a restart, merged with the engine's in-memory buffer,
which still holds the events not yet written (each event once, by id); when the store does not answer
the buffer alone is served and the answer says so. Pages follow ``next_before`` and ``next_before_id``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol, runtime_checkable

import numpy as np
from aiohttp import web

from .engine.expected import check_expected_value, value_kind
from .engine.records import EventType, TwinEvent
from .engine.twin import TwinEngine
from .errors import (
    CorruptSnapshotError,
    EngineError,
    ExpectedStateError,
    InputError,
    ScenarioError,
    StoreError,
    UnknownSnapshotError,
    UnknownTwinError,
)
from .openapi import OPENAPI
from .status import ReplicaSignal
from .store.base import EventQuery, event_key

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
HISTORY_LIMIT_MAX = 1000
EVENTS_LIMIT_MAX = 10_000
EXPECTED_KEYS_MAX = 1000
#: Deepest nesting of arrays/objects a request body may have (every route takes flat objects).
JSON_DEPTH_MAX = 32
#: Longest integer literal in a request body (beyond ~308 digits ``float()`` of it overflows).
JSON_INT_DIGITS_MAX = 300

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Longest ``before_id`` accepted (event ids are about 25 characters).
EVENT_ID_MAX = 200
#: Seconds an events request waits for the store before it answers from the memory buffer alone.
EVENTS_STORE_WAIT_S = 5.0
#: What an events answer from the memory buffer alone says.
EVENTS_FROM_MEMORY_MESSAGE = ("the history store did not answer: these are only the events this sidecar holds in "
                              "memory (those since it started, the newest 10,000 at most); stored events are "
                              "served again once the store answers")

#: What a 202 says: the change holds and will be written, the caller need not retry.
NOT_STORED_MESSAGE = ("applied in memory but not yet stored: the history database is unavailable or slow; "
                      "the change is kept in the write buffer and written, in order, when the database answers")


@runtime_checkable
class DurableWrites(Protocol):
    """A facade store that writes in the background (the service's buffered writer) and can say when the
    last write is committed."""

    def last_write(self) -> Callable[[], Awaitable[bool]]:
        """Taken under the engine lock right after the change; awaited after releasing it (bounded)."""


@runtime_checkable
class EventHistory(Protocol):
    """A facade store that can list stored events (the service's store; a library's may not)."""

    async def list_events(self, query: EventQuery) -> list[TwinEvent]:
        """Stored events matching ``query``, newest first; ``StoreError`` when the database does not answer."""


class ApiError(web.HTTPException):
    """A refusal with a JSON body; raised by handlers, rendered by ``error_middleware``."""

    def __init__(self, status: int, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        self.status_code = status
        self.message = message
        super().__init__(text=json.dumps({"error": message, "status": status}),
                         content_type="application/json", headers=headers)

    def __str__(self) -> str:
        return f"{self.status_code}: {self.message}"


# --------------------------------------------------------------------------- JSON

def jsonable(obj: Any) -> Any:
    """Plain JSON types only: non-finite floats become null (JSON has no NaN), records their ``to_dict``."""
    if obj is None or isinstance(obj, bool | int | str):
        return obj.value if isinstance(obj, Enum) else obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray | np.generic):
        return jsonable(obj.tolist())
    if isinstance(obj, Enum):
        return jsonable(obj.value)
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        return jsonable(to_dict())
    return str(obj)


def json_response(data: Any, *, status: int = 200) -> web.Response:
    body = json.dumps(jsonable(data), allow_nan=False, separators=(",", ":"))
    return web.Response(text=body, status=status, content_type="application/json")


# --------------------------------------------------------------------------- request parsing

def _query_int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if raw == "":
        raise ApiError(400, f"query parameter {name!r}: empty; give an integer from {lo} to {hi}, or leave it out")
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"query parameter {name!r}: expected an integer from {lo} to {hi}") from None
    if not lo <= value <= hi:
        raise ApiError(400, f"query parameter {name!r}: expected an integer from {lo} to {hi}, got {value}")
    return value


def _query_time(request: web.Request, name: str) -> float | None:
    """Unix seconds or an RFC 3339 timestamp (``2026-11-25T14:00:00Z``; no zone means UTC). An empty value
    (``?since=``) is refused: it is a client's bug (a variable that was never set), and read as "no bound"
    it would silently serve every event."""
    raw = request.query.get(name)
    if raw is None:
        return None
    if raw == "":
        raise ApiError(400, f"query parameter {name!r}: empty; give unix seconds or an RFC 3339 time, or leave "
                            "it out")
    try:
        value = float(raw)
    except ValueError:
        try:
            when = dt.datetime.fromisoformat(raw)
        except ValueError:
            raise ApiError(400, f"query parameter {name!r}: expected unix seconds or an RFC 3339 time"
                           ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        value = when.timestamp()
    if not math.isfinite(value):
        raise ApiError(400, f"query parameter {name!r}: expected a finite time")
    return value


class _TooLong(ValueError):
    """An integer literal with more digits than any float holds (``float()`` of it would overflow)."""


def parse_json_int(text: str) -> int:
    """``json.loads``' integer parser for scenario bodies (the API's and the CLI's): a literal longer than any
    float is refused, since the simulation's ``float()`` of it would overflow."""
    digits = len(text.lstrip("-"))
    if digits > JSON_INT_DIGITS_MAX:
        raise _TooLong(f"an integer with {digits} digits (at most {JSON_INT_DIGITS_MAX})")
    return int(text)


def _too_deep(value: Any) -> bool:
    """More than ``JSON_DEPTH_MAX`` nested arrays/objects; walked without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > JSON_DEPTH_MAX:
            return True
        stack.extend((c, depth + 1) for c in children)
    return False


def is_json_media_type(content_type: str) -> bool:
    """``application/json`` or a ``+json`` type (``application/merge-patch+json``), parameters aside."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def _json_body(request: web.Request) -> Any:
    # A cross-site HTML form can send a body as text/plain, form-encoded or multipart, never as JSON without
    # the browser asking the server first (CORS preflight, which this server never grants): refusing every
    # other type keeps a page the operator visits from changing a twin while writes are open (no token).
    content_type = request.headers.get("Content-Type", "")
    if not is_json_media_type(content_type):
        got = content_type.split(";", 1)[0].strip()[:100] or "none"
        raise ApiError(415, f"request body: Content-Type must be application/json, got {got}")
    try:
        raw = await request.read()   # refused with 413 beyond the app's client_max_size
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, f"request body too large (limit {request.client_max_size} bytes)") from None
    if not raw:
        raise ApiError(400, "request body: expected a JSON object, got an empty body")
    too_deep = f"request body: JSON nested more than {JSON_DEPTH_MAX} levels deep"
    try:
        body = json.loads(raw, parse_int=parse_json_int)
    except RecursionError:   # the decoder recurses per level: a deep body is the client's error, not a 500
        raise ApiError(400, too_deep) from None
    except _TooLong:
        raise ApiError(400, f"request body: a number with more than {JSON_INT_DIGITS_MAX} digits") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body: not valid JSON ({exc.__class__.__name__})") from None
    if _too_deep(body):   # no route takes more than two levels; deeper would only reach recursion further on
        raise ApiError(400, too_deep)
    return body


async def _json_object(request: web.Request) -> dict[str, Any]:
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, f"request body: expected a JSON object, got {value_kind(body)}")
    return body


def parse_expected(body: Mapping[str, Any]) -> dict[str, float | None]:
    """``{"cpu_usage": 50, "memory_usage": null}``: a finite number sets a metric, null clears it.

    The body's own limits (at least one key, at most ``EXPECTED_KEYS_MAX``, names of 1 to 200 characters)
    are checked here; the values by the engine's rules (:mod:`sidecar.engine.expected`, which the rules file
    uses too), before the engine lock. Whether the twin has each metric the engine checks when applying.
    """
    if not body:
        raise ApiError(400, "request body: expected at least one metric, e.g. {\"cpu_usage\": 50}")
    if len(body) > EXPECTED_KEYS_MAX:
        raise ApiError(400, f"request body: at most {EXPECTED_KEYS_MAX} metrics at once")
    out: dict[str, float | None] = {}
    for key, value in body.items():
        if not key or len(key) > 200:
            raise ApiError(400, "field name: expected a metric name of 1 to 200 characters")
        try:
            out[key] = check_expected_value(key, value)
        except ExpectedStateError as exc:
            raise expected_state_refused(exc) from None
    return out


def expected_state_refused(exc: ExpectedStateError) -> ApiError:
    """The engine's refusal worded as the API words a bad field (``field 'cpu_usage': ...``)."""
    where = "field name" if exc.field is None else f"field {exc.field!r}"
    return ApiError(400, f"{where}: {exc.detail}")


# --------------------------------------------------------------------------- refused authentications

#: The entry shared by clients beyond ``ClientThrottle.max_clients`` (not an address: it has no port or dots).
_OTHER_CLIENTS = "<other clients>"


@dataclass(slots=True)
class _Client:
    logged_at: float          # when this client's last line was written (monotonic seconds)
    unlogged: int = 0         # events since then that wrote no line


class ClientThrottle:
    """At most one log line per client per ``every_s``, each saying how many events it stands for.

    A client's first event is logged at once, the ones within ``every_s`` after a line are only counted, and
    the next line after that stands for them too. At most ``max_clients`` addresses are remembered (those
    idle longer than ``every_s`` are forgotten first); beyond them the other addresses share one entry, so
    neither many addresses nor one can grow memory or the log without bound.

    >>> throttle = ClientThrottle(every_s=60.0)
    >>> throttle.admit("10.0.0.7"), throttle.admit("10.0.0.7")
    (1, None)
    """

    def __init__(self, *, every_s: float = 60.0, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.max_clients = max_clients
        self._clock = clock
        self._clients: dict[str, _Client] = {}

    def admit(self, client: str) -> int | None:
        """The number of events a line written now stands for, or ``None``: counted, not to be logged."""
        now = self._clock()
        key = self._key(client, now)
        seen = self._clients.get(key)
        if seen is not None and now - seen.logged_at < self.every_s:
            seen.unlogged += 1
            return None
        self._clients[key] = _Client(logged_at=now)
        return 1 + (seen.unlogged if seen is not None else 0)

    def _key(self, client: str, now: float) -> str:
        """The client's own entry, or, with ``max_clients`` remembered and none idle, one shared by the rest."""
        if client in self._clients or len(self._clients) < self.max_clients:
            return client
        for key in [k for k, c in self._clients.items() if now - c.logged_at >= self.every_s]:
            del self._clients[key]
        return client if len(self._clients) < self.max_clients else _OTHER_CLIENTS


class RefusalLog:
    """One warning line per refused authentication, at most one per client per ``every_s``.

    A refusal is worth a line (someone is trying writes without the token, or a client still has an old
    one), but a client retrying in a loop must not fill the log: a :class:`ClientThrottle` decides, and a
    line says how many refusals it stands for (``refused``). The line names the client's address, the
    method, the path and why; never the token that was sent nor any part of it.

    >>> refusals = RefusalLog(every_s=60.0)
    >>> refusals.refused("10.0.0.7", "PUT", "/api/v1/twins/svc/expected", "wrong token")   # logs one line
    """

    def __init__(self, *, every_s: float = 60.0, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.throttle = ClientThrottle(every_s=every_s, max_clients=max_clients, clock=clock)
        self.every_s = every_s

    def refused(self, client: str, method: str, path: str, reason: str) -> None:
        refused = self.throttle.admit(client)
        if refused is None:
            return
        log.warning("api authentication refused", extra={
            "client": client, "method": method, "path": path, "reason": reason, "refused": refused,
            "quiet_for_s": self.every_s})


def _refusal_reason(header: str | None, expected: bytes) -> str:
    """Why an ``Authorization`` header does not pass, in words that quote nothing of it."""
    if not expected:
        return "token file unreadable or empty"
    if header is None or not header.strip():
        return "missing"
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return "not a bearer token"
    if not given.strip():
        return "empty bearer token"
    return "wrong token"


# --------------------------------------------------------------------------- the API

#: The bearer token: fixed, read on demand (a ``SecretFile``'s ``read``), or none (writes open).
TokenSource = str | Callable[[], str] | None


class TwinApi:
    """Handlers over one ``TwinEngine``; ``routes()`` lists them for ``app.add_routes``."""

    def __init__(self, facade: TwinEngine, *, engine_lock: asyncio.Lock, auth_token: TokenSource,
                 refusals: RefusalLog | None = None, replica_signals: Mapping[str, ReplicaSignal] | None = None
                 ) -> None:
        self._facade = facade
        self._replicas = replica_signals if replica_signals is not None else {}
        self._lock = engine_lock
        self._token_source = auth_token
        self._token_failed = False
        self._events_store_failed = False
        self.refusals = refusals or RefusalLog()

    def _token(self) -> bytes | None:
        """The token now, or ``b""`` (matches nothing) when its file is unreadable or empty: fail closed."""
        src = self._token_source
        if src is None or isinstance(src, str):
            return src.encode() if src else None
        try:
            value = src()
        except OSError as exc:
            if not self._token_failed:
                log.error("api token file unreadable: writes refused", extra={"error": exc.strerror or str(exc)})
            self._token_failed = True
            return b""
        if self._token_failed:
            log.info("api token file readable again")
        self._token_failed = False
        return value.encode()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(f"{PREFIX}/openapi.json", self.openapi),
            web.get(f"{PREFIX}/twins", self.list_twins),
            web.get(f"{PREFIX}/twins/{{twin}}", self.twin_status),
            web.get(f"{PREFIX}/twins/{{twin}}/history", self.history),
            web.post(f"{PREFIX}/twins/{{twin}}/rollback", self._write(self.rollback)),
            web.put(f"{PREFIX}/twins/{{twin}}/expected", self._write(self.set_expected)),
            web.post(f"{PREFIX}/twins/{{twin}}/simulate", self._write(self.simulate)),
            web.get(f"{PREFIX}/events", self.events),
        ]

    # -- auth

    def _write(self, handler: Handler) -> Handler:
        """State-changing routes: check the bearer token (constant time) before anything else."""
        async def guarded(request: web.Request) -> web.StreamResponse:
            token = self._token()
            if token is not None:
                header = request.headers.get("Authorization")
                scheme, _, given = (header or "").partition(" ")
                if scheme.lower() != "bearer" or not token or not hmac.compare_digest(given.strip().encode(), token):
                    self.refusals.refused(request.remote or "unknown", request.method, request.path,
                                          _refusal_reason(header, token))
                    raise ApiError(401, "missing or invalid bearer token",
                                   headers={"WWW-Authenticate": 'Bearer realm="twin-sidecar"'})
            return await handler(request)
        guarded.__name__ = handler.__name__
        return guarded

    # -- reads

    async def openapi(self, request: web.Request) -> web.Response:
        return json_response(OPENAPI)

    async def list_twins(self, request: web.Request) -> web.Response:
        async with self._lock:
            twins = await asyncio.to_thread(self._facade.list_twins)
        return json_response({"twins": twins, "count": len(twins)})

    async def twin_status(self, request: web.Request) -> web.Response:
        twin = request.match_info["twin"]
        async with self._lock:
            status = self._facade.get_twin_status(twin)
        signal = self._replicas.get(str(status.get("name")))
        if signal is not None:          # a twin with max_replicas: its recommendation, or why there is none
            status["replicas"] = signal.advice
        return json_response(status)

    async def history(self, request: web.Request) -> web.Response:
        twin = request.match_info["twin"]
        limit = _query_int(request, "limit", 100, 1, HISTORY_LIMIT_MAX)
        before = _query_time(request, "before")
        async with self._lock:
            twin_id = self._facade.engine.get(twin).twin_id
            # one more than asked for: whether another page follows is then known, not guessed
            entries = await self._facade.history(twin, limit=limit + 1, before=before)
        more = len(entries) > limit
        entries = entries[:limit]
        return json_response({
            "twin_id": twin_id,
            "snapshots": [e.to_dict() for e in entries],
            "count": len(entries),
            # pass as ?before= for the next (older) page; null when this page is the last
            "next_before": entries[-1].timestamp if more else None,
        })

    async def events(self, request: web.Request) -> web.Response:
        twin = request.query.get("twin") or None
        type_ = request.query.get("type") or None
        if type_ is not None and type_ not in {e.value for e in EventType}:
            raise ApiError(400, "query parameter 'type': expected one of "
                                + ", ".join(sorted(e.value for e in EventType)))
        since = _query_time(request, "since")
        before = _query_time(request, "before")
        before_id = request.query.get("before_id") or None
        if before_id is not None and before is None:
            raise ApiError(400, "query parameter 'before_id': only together with 'before' (pass the previous "
                                "page's next_before and next_before_id)")
        if before_id is not None and len(before_id) > EVENT_ID_MAX:
            raise ApiError(400, f"query parameter 'before_id': at most {EVENT_ID_MAX} characters")
        limit = _query_int(request, "limit", 1000, 1, EVENTS_LIMIT_MAX)
        engine = self._facade.engine
        async with self._lock:
            twin_id = engine.get(twin).twin_id if twin is not None else None
            held = engine.events(twin=twin_id, type=type_, since=since, limit=max(1, engine.settings.event_buffer))
        # one more than asked for: whether another page follows is then known, not guessed
        query = EventQuery(twin_id=twin_id, type=type_, since=since, before=before, before_id=before_id,
                           limit=limit + 1)
        # read after the buffer: an event written meanwhile is in the store, one emitted meanwhile is newer
        stored, source = await self._stored_events(query)
        by_id = {e.event_id: e for e in stored}
        by_id.update((e.event_id, e) for e in held if query.admits(e))   # not yet written, or written: once
        page = sorted(by_id.values(), key=event_key, reverse=True)[:limit + 1]
        more = len(page) > limit
        page = page[:limit]
        body: dict[str, Any] = {
            "events": page, "count": len(page),
            # pass both as ?before=&before_id= for the next (older) page; null when this page is the last
            "next_before": page[-1].timestamp if more else None,
            "next_before_id": page[-1].event_id if more else None,
            "source": source,
        }
        if source == "memory" and isinstance(self._facade.store, EventHistory):
            body["message"] = EVENTS_FROM_MEMORY_MESSAGE
        return json_response(body)

    async def _stored_events(self, query: EventQuery) -> tuple[list[TwinEvent], str]:
        """The store's events and ``"store"``; none and ``"memory"`` without a store that lists events, or when
        it fails or takes longer than ``EVENTS_STORE_WAIT_S`` (logged once per outage)."""
        store = self._facade.store
        if not isinstance(store, EventHistory):
            return [], "memory"
        try:
            stored = await asyncio.wait_for(store.list_events(query), EVENTS_STORE_WAIT_S)
        except (StoreError, TimeoutError) as exc:
            if not self._events_store_failed:
                log.warning("events served from memory only: the history store did not answer",
                            extra={"error": str(exc) or type(exc).__name__})
            self._events_store_failed = True
            return [], "memory"
        if self._events_store_failed:
            log.info("events served from the history store again")
        self._events_store_failed = False
        return stored, "store"

    # -- writes

    async def rollback(self, request: web.Request) -> web.Response:
        twin = request.match_info["twin"]
        body = await _json_object(request)
        unknown = sorted(k for k in body if k != "snapshot_id")
        if unknown:
            raise ApiError(400, f"field {unknown[0][:100]!r}: not known (the body is {{\"snapshot_id\": ...}})")
        snapshot_id = body.get("snapshot_id")
        if not isinstance(snapshot_id, str) or not snapshot_id:
            raise ApiError(400, "field 'snapshot_id': required, a non-empty string")
        async with self._lock:
            result = await self._facade.rollback_to_snapshot(twin, snapshot_id)
            written = self._last_write()
        log.info("rollback twin=%s snapshot=%s", twin, snapshot_id)
        return await self._stored_response(result, written)

    async def set_expected(self, request: web.Request) -> web.Response:
        twin = request.match_info["twin"]
        expected = parse_expected(await _json_object(request))
        async with self._lock:
            try:   # the engine refuses a metric the twin has no series for (and changes nothing then)
                result = await self._facade.set_expected_state(twin, expected)
            except ExpectedStateError as exc:
                raise expected_state_refused(exc) from None
            written = self._last_write()
        log.info("expected state set twin=%s metrics=%s", twin, ",".join(sorted(expected)))
        return await self._stored_response(result, written)

    def _last_write(self) -> Callable[[], Awaitable[bool]] | None:
        """(Under the engine lock, right after the change.) The wait for its commit; None when the facade
        wrote it itself before returning (a store without a writer) or has no store."""
        store = self._facade.store
        return store.last_write() if isinstance(store, DurableWrites) else None

    async def _stored_response(self, result: Mapping[str, Any],
                               written: Callable[[], Awaitable[bool]] | None) -> web.Response:
        """200 once the change is committed; 202 if it is only applied (store down or slow). Awaited
        outside the engine lock: the writer never takes it, and a slow database holds up no round."""
        if written is None:
            # the facade awaited its store's write (an outage would have raised: 503); no store, nothing stored
            return json_response({**result, "stored": self._facade.store is not None and self._facade.sink is None})
        if await written():
            return json_response({**result, "stored": True})
        log.warning("api change applied, not yet stored twin=%s snapshot=%s", result.get("twin_id"),
                    result.get("snapshot_id"))
        return json_response({**result, "stored": False, "message": NOT_STORED_MESSAGE}, status=202)

    async def simulate(self, request: web.Request) -> web.Response:
        twin = request.match_info["twin"]
        scenario = await _json_object(request)
        nulls = sorted(k for k, v in scenario.items() if v is None)
        if nulls:       # null is no number nor string: a field left out takes its default
            raise ApiError(400, f"field {nulls[0][:100]!r}: expected a value, got null (leave the field out for "
                                "its default)")
        for text in ("name", "description"):
            if text in scenario and not isinstance(scenario[text], str):
                raise ApiError(400, f"field {text!r}: expected a string, got {value_kind(scenario[text])}")
        if not isinstance(scenario.get("type"), str):
            raise ApiError(400, "field 'type': required, the scenario type as a string, e.g. traffic_spike")
        seed = scenario.get("seed", 0)
        if isinstance(seed, float) and seed.is_integer():    # 3179181.0 is the integer JSON Schema says it is
            seed = int(seed)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ApiError(400, "field 'seed': expected a whole number >= 0")
        scenario = {**scenario, "seed": seed} if "seed" in scenario else scenario
        facade = self._facade
        async with self._lock:
            # the facade's simulate_scenario runs the Monte Carlo on the event loop; a worker thread keeps
            # /metrics and the probes answering while it runs (the lock keeps the engine still meanwhile)
            result = await asyncio.to_thread(facade.engine.simulate, twin, scenario, at=facade.clock(),
                                             seed=seed)
        return json_response(result)


# --------------------------------------------------------------------------- errors

_STATUS_OF: tuple[tuple[type[Exception], int], ...] = (
    (UnknownTwinError, 404),
    (UnknownSnapshotError, 404),
    (CorruptSnapshotError, 409),
    (ScenarioError, 400),
    (InputError, 400),
    (StoreError, 503),
    (EngineError, 409),
)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Package errors -> status codes, every error under /api as JSON, no tracebacks to the client."""
    try:
        return await handler(request)
    except ApiError:
        raise
    except web.HTTPException as exc:
        if not request.path.startswith(PREFIX) or exc.status_code < 400:
            raise
        message = exc.reason if exc.status_code != 413 else "request body too large"
        # a 405 must say which methods the route has (RFC 9110); the JSON error keeps aiohttp's Allow header
        allow = exc.headers.get("Allow") if exc.status_code == 405 else None
        raise ApiError(exc.status_code, message, headers={"Allow": allow} if allow is not None else None) from None
    except Exception as exc:
        for kind, status in _STATUS_OF:
            if isinstance(exc, kind):
                if status >= 500:
                    log.warning("api %s %s: %s", request.method, request.path, exc)
                raise ApiError(status, str(exc)) from None
        log.exception("api %s %s failed", request.method, request.path)
        raise ApiError(500, "internal error; see the sidecar's log") from None
