"""Async client for the Prometheus HTTP API (Prometheus, Thanos, Mimir, VictoriaMetrics).

The raw JSON is typed (``TypedDict``) and converted once, here, into float64
numpy arrays plus label dicts; nothing past this module sees Prometheus JSON.
Every failure becomes a :class:`~sidecar.errors.SourceError` raised from the
original and carrying the query, so the scheduler has one thing to catch:

* :class:`SourceUnavailable` — Prometheus could not be reached or did not
  answer usably (timeout, connect error, 5xx, a body that is not the API's JSON);
* :class:`QueryFailed` — Prometheus answered and refused this query
  (``status: error`` with ``errorType``/``error``), or answered with warnings,
  which may mean a partial result (Thanos/Mimir partial responses) that must
  not be taken for the whole truth unless ``accept_warnings`` says so.

Answers are read as a stream and refused past ``max_response_bytes`` (the rules' ``limits:``), so one
high-cardinality answer cannot take the process' memory; an answer of more than ``OFF_LOOP_BYTES`` is
decoded (orjson, a part at a time: `loads_in_parts`) and converted in a worker thread with the cyclic collector
paused, so the probes and the API stay responsive meanwhile.

Sample values arrive as strings: ``"NaN"``, ``"+Inf"``, ``"-Inf"`` parse to the
float they name (the engine drops and counts non-finite values); anything
unparseable (e.g. a backend's ``"stale"``) becomes NaN and is counted in the
result's ``unparseable``, never silently turned into a number.

Example::

    async with PrometheusClient(cfg.prometheus) as prom:
        vec = await prom.query('up{job="checkout"}', at=time.time())
        vec.values, vec.labels
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import math
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, NotRequired, TypedDict, TypeVar, cast

import httpx
import numpy as np
import orjson

from .config import PrometheusConfig
from .errors import SourceError

_T = TypeVar("_T")
log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- raw JSON shapes


class RawInstantSample(TypedDict):
    metric: dict[str, str]
    value: NotRequired[tuple[float, str]]
    histogram: NotRequired[Any]            # native histograms: not used by the twins


class RawRangeSeries(TypedDict):
    metric: dict[str, str]
    values: NotRequired[list[tuple[float, str]]]
    histograms: NotRequired[Any]


class RawData(TypedDict):
    resultType: Literal["vector", "matrix", "scalar", "string"]
    result: Any


class RawResponse(TypedDict):
    status: Literal["success", "error"]
    data: NotRequired[RawData]
    errorType: NotRequired[str]
    error: NotRequired[str]
    warnings: NotRequired[list[str]]
    infos: NotRequired[list[str]]


# --------------------------------------------------------------------------- typed results


class SourceUnavailable(SourceError):
    """Prometheus was not reached or did not answer with its API's JSON."""


class SourceTimeout(SourceUnavailable):
    """Prometheus did not answer within the timeout (a smaller question may still be answered in time)."""


class QueryFailed(SourceError):
    """Prometheus answered but refused the query (or warned that the result may be partial)."""

    def __init__(self, message: str, *, query: str | None = None, url: str | None = None,
                 error_type: str | None = None) -> None:
        super().__init__(message, query=query, url=url)
        self.error_type = error_type


@dataclass(frozen=True, slots=True)
class InstantVector:
    """Result of an instant query: one value per series, all evaluated at ``at``."""

    query: str
    at: float
    labels: tuple[dict[str, str], ...]          # (N,)
    values: np.ndarray                           # (N,) float64; NaN/±Inf kept as such
    unparseable: int = 0
    warnings: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True, slots=True)
class RangeMatrix:
    """Result of a range query on the step grid ``times``: NaN where a series had no sample."""

    query: str
    times: np.ndarray                            # (K,) float64 unix s: start, start+step, ... <= end
    labels: tuple[dict[str, str], ...]          # (N,)
    values: np.ndarray                           # (N, K) float64
    unparseable: int = 0
    warnings: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)


#: Largest answer read by default (``limits.max_response_bytes``): a 50,000-series instant answer is ~8 MB, an
#: hour's backfill of 10,000 series at 15 s ~60 MB.
DEFAULT_MAX_RESPONSE_BYTES = 128 * 2**20

#: Answers at least this large are decoded in a worker thread (a 10,000-series answer takes ~20 ms on the loop).
OFF_LOOP_BYTES = 256 * 2**10

#: A large answer is parsed a part of about this many bytes at a time: orjson holds the GIL for a whole call, and
#: one call on a 26 MB answer stalls the event loop (and the probes) for 200 ms.
PART_BYTES = 1 << 20

#: How every element of a Prometheus result array starts. A bare ``{"`` cannot occur inside a JSON string (the
#: quote would be escaped), so every occurrence is an element's start.
_ELEMENT = b'{"metric":'

#: Steps per range request: Prometheus refuses more than 11,000 points per series ("exceeded maximum
#: resolution"), so longer ranges are split into consecutive requests of at most this many steps.
MAX_RANGE_POINTS = 10_000
#: How many times a range part not answered in time is asked again as its halves (parts down to 1/16).
RANGE_HALVINGS = 4

_SPECIAL: Mapping[str, float] = {"NaN": math.nan, "+Inf": math.inf, "-Inf": -math.inf, "Inf": math.inf}


def parse_value(text: Any) -> float | None:
    """A sample value string -> float; ``None`` when it is not a number at all."""
    if isinstance(text, str):
        special = _SPECIAL.get(text)
        if special is not None:
            return special
        try:
            return float(text)
        except ValueError:
            return None
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    return None


# --------------------------------------------------------------------------- client


class PrometheusClient:
    """One ``httpx.AsyncClient`` per client; at most ``max_concurrency`` queries in flight.

    Queries are POSTed form-encoded (no URL length limit for long PromQL) to
    ``<url>/api/v1/query`` and ``/query_range``, which every Prometheus-API
    backend serves; a path prefix in ``url`` (Mimir's ``/prometheus``) is kept.
    ``transport`` is the seam for tests.
    """

    def __init__(self, config: PrometheusConfig, *, transport: httpx.AsyncBaseTransport | None = None,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> None:
        self.config = config
        self.max_response_bytes = max_response_bytes
        self.base = config.url.rstrip("/")
        self._sem = asyncio.Semaphore(config.max_concurrency)
        verify: ssl.SSLContext | bool = True
        if config.tls_ca_file is not None:
            verify = ssl.create_default_context(cafile=config.tls_ca_file)
        self._http = httpx.AsyncClient(
            base_url=self.base, headers=dict(config.headers), verify=verify, transport=transport,
            timeout=httpx.Timeout(config.timeout_s), follow_redirects=False,
            limits=httpx.Limits(max_connections=config.max_concurrency,
                                max_keepalive_connections=config.max_concurrency))

    async def __aenter__(self) -> PrometheusClient:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _auth(self) -> tuple[dict[str, str], httpx.BasicAuth | None]:
        """Credentials read at request time, so a rotated token file is picked up without a restart."""
        cfg = self.config
        try:
            if cfg.bearer_token_file is not None:
                return {"Authorization": f"Bearer {cfg.bearer_token_file.read()}"}, None
            if cfg.basic_auth is not None:
                return {}, httpx.BasicAuth(cfg.basic_auth.username, cfg.basic_auth.password_file.read())
        except OSError as exc:
            raise SourceUnavailable(f"cannot read the credentials file ({exc.strerror or exc})",
                                    url=self.base) from exc
        return {}, None

    async def query(self, promql: str, at: float, *, timeout_s: float | None = None) -> InstantVector:
        """Instant query evaluated at ``at`` (unix s)."""
        return await self._request("/api/v1/query", promql, {"time": _fmt(at)}, timeout_s,
                                   lambda body: self._instant(body, promql, at))

    def _instant(self, body: RawResponse, promql: str, at: float) -> InstantVector:
        data = body["data"]
        kind = data.get("resultType")
        warnings = tuple(body.get("warnings") or ())
        if kind == "scalar":
            value = parse_value(_pair(data["result"], promql, self.base)[1])
            return InstantVector(promql, at, ({},), np.array([math.nan if value is None else value]),
                                 int(value is None), warnings)
        if kind != "vector" or not isinstance(data.get("result"), list):
            raise SourceUnavailable(f"expected a vector or scalar result, got {kind!r}", query=promql,
                                    url=self.base)
        samples: list[RawInstantSample] = data["result"]
        fast = _instant_fast(samples)
        if fast is not None:
            return InstantVector(promql, at, fast[0], fast[1], 0, warnings)
        values = np.full(len(samples), math.nan)
        labels: list[dict[str, str]] = []
        bad = 0
        for i, s in enumerate(samples):
            labels.append(_labels(s, promql, self.base))
            raw = s.get("value")
            value = parse_value(_pair(raw, promql, self.base)[1]) if raw is not None else None
            if value is None:
                bad += 1
            else:
                values[i] = value
        return InstantVector(promql, at, tuple(labels), values, bad, warnings)

    async def query_range(self, promql: str, start: float, end: float, step: float,
                          *, timeout_s: float | None = None, max_points: int = MAX_RANGE_POINTS) -> RangeMatrix:
        """Range query; the result is laid on the step grid so series line up by column.

        Prometheus refuses more than 11,000 points per series in one range
        query, so a longer grid is fetched as consecutive queries of at most
        ``max_points`` steps each (no overlap, no gap), oldest first, and joined
        back into one matrix; series are matched across the parts by their
        labels. Each part has its own timeout. A part not answered in time is
        asked again as its two halves (down to single steps): how long an answer
        takes grows with its points, which a caller can only guess, and a
        smaller question fits the same timeout. Any other failure fails the whole.
        """
        if step <= 0 or end < start:
            raise ValueError(f"bad range: start={start} end={end} step={step}")
        if max_points < 1:
            raise ValueError(f"max_points must be at least 1, got {max_points}")
        times = start + step * np.arange(math.floor((end - start) / step + 1e-9) + 1)
        parts: list[tuple[int, RangeMatrix]] = []
        for first in range(0, len(times), max_points):
            parts.extend(await self._range_halving(promql, times, first, min(first + max_points, len(times)), step,
                                                   timeout_s, RANGE_HALVINGS))
        if len(parts) == 1:
            return parts[0][1]
        return _join(promql, times, parts)

    async def _range_halving(self, promql: str, times: np.ndarray, first: int, stop: int, step: float,
                             timeout_s: float | None, halvings: int) -> list[tuple[int, RangeMatrix]]:
        """The grid columns [first, stop) as one part, or as halves (up to `halvings` deep) when it times out.

        The first half that still times out at the last depth fails the whole, so a source too slow for any
        question costs at most ``halvings + 1`` timeouts, not one per step."""
        try:
            return [(first, await self._range_part(promql, times[first:stop], step, timeout_s))]
        except SourceTimeout:
            if stop - first < 2 or halvings <= 0:
                raise
        mid = (first + stop) // 2
        log.debug("range part timed out; asking for its halves", extra={"query": promql, "steps": stop - first})
        return [*await self._range_halving(promql, times, first, mid, step, timeout_s, halvings - 1),
                *await self._range_halving(promql, times, mid, stop, step, timeout_s, halvings - 1)]

    async def _range_part(self, promql: str, times: np.ndarray, step: float,
                          timeout_s: float | None) -> RangeMatrix:
        """One ``/query_range`` request over these grid times (a slice of the whole grid when the range is split:
        recomputing a part's grid from its rounded ends could come out a column short at a fractional step)."""
        start, end = float(times[0]), float(times[-1])
        return await self._request("/api/v1/query_range", promql,
                                   {"start": _fmt(start), "end": _fmt(end), "step": _fmt(step)}, timeout_s,
                                   lambda body: self._matrix(body, promql, times, step))

    def _matrix(self, body: RawResponse, promql: str, times: np.ndarray, step: float) -> RangeMatrix:
        start = float(times[0])
        data = body["data"]
        warnings = tuple(body.get("warnings") or ())
        if data.get("resultType") != "matrix" or not isinstance(data.get("result"), list):
            raise SourceUnavailable(f"expected a matrix result, got {data.get('resultType')!r}", query=promql,
                                    url=self.base)
        series: list[RawRangeSeries] = data["result"]
        values = np.full((len(series), len(times)), math.nan)
        labels: list[dict[str, str]] = []
        bad = 0
        for i, s in enumerate(series):
            labels.append(_labels(s, promql, self.base))
            points = s.get("values") or []
            if not isinstance(points, list):
                raise SourceUnavailable("a series' values are not a list", query=promql, url=self.base)
            if not points:
                continue
            try:
                ts = np.array([float(p[0]) for p in points])
            except (TypeError, ValueError, IndexError, KeyError) as exc:
                raise SourceUnavailable("malformed sample in a range result", query=promql,
                                        url=self.base) from exc
            vs = [parse_value(p[1]) for p in points]
            cols = np.rint((ts - start) / step).astype(np.int64)
            ok = (cols >= 0) & (cols < len(times))
            bad += sum(v is None for v in vs)
            row = np.array([math.nan if v is None else v for v in vs])
            values[i, cols[ok]] = row[ok]
        return RangeMatrix(promql, times, tuple(labels), values, bad, warnings)

    async def _request(self, path: str, promql: str, params: dict[str, str], timeout_s: float | None,
                       convert: Callable[[RawResponse], _T]) -> _T:
        """POST, then decode and convert the answer: in a worker thread when it is large, so a big answer
        never holds the event loop (probes, API, /metrics) for the time it takes."""
        status, content = await self._post(path, promql, params, timeout_s)

        def work() -> _T:
            return convert(self._decode(status, content, promql))

        def work_apart() -> _T:
            with _no_collection():
                return convert(self._decode(status, content, promql, in_parts=True))

        if len(content) >= OFF_LOOP_BYTES:
            return await asyncio.to_thread(work_apart)
        return work()

    async def _post(self, path: str, promql: str, params: dict[str, str],
                    timeout_s: float | None) -> tuple[int, bytes]:
        timeout = self.config.timeout_s if timeout_s is None else timeout_s
        # the server stops work too; ours is the hard bound (covers waiting for a connection slot)
        form = {"query": promql, "timeout": f"{max(timeout, 0.001):.3f}", **params}
        headers, auth = self._auth()
        try:
            async with self._sem, asyncio.timeout(timeout):
                kwargs: dict[str, Any] = {"data": form, "headers": headers}
                if auth is not None:
                    kwargs["auth"] = auth
                async with self._http.stream("POST", path, **kwargs) as resp:
                    return resp.status_code, await self._read_bounded(resp, promql)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise SourceTimeout(f"no answer within {timeout:g}s", query=promql, url=self.base) from exc
        except httpx.HTTPError as exc:
            raise SourceUnavailable(f"cannot reach Prometheus: {type(exc).__name__}: {exc}", query=promql,
                                    url=self.base) from exc

    async def _read_bounded(self, resp: httpx.Response, promql: str) -> bytes:
        """The body, refused (``QueryFailed``, the connection closed) as soon as it exceeds the limit."""
        limit = self.max_response_bytes
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise self._too_large(promql)
        chunks: list[bytes] = []
        n = 0
        async for chunk in resp.aiter_bytes():
            n += len(chunk)
            if n > limit:
                raise self._too_large(promql)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, promql: str) -> QueryFailed:
        return QueryFailed(f"answer larger than limits.max_response_bytes ({self.max_response_bytes} bytes): "
                           "narrow the query or raise the limit", query=promql, url=self.base,
                           error_type="too_large")

    def _decode(self, status: int, content: bytes, promql: str, *, in_parts: bool = False) -> RawResponse:
        try:
            body = loads_in_parts(content) if in_parts else orjson.loads(content)
        except (ValueError, UnicodeDecodeError) as exc:
            snippet = content[:120].decode("utf-8", "replace")
            raise SourceUnavailable(f"HTTP {status}, body is not JSON: {snippet!r}", query=promql,
                                    url=self.base) from exc
        if not isinstance(body, dict) or body.get("status") not in ("success", "error"):
            raise SourceUnavailable(f"HTTP {status}, not a Prometheus API response", query=promql,
                                    url=self.base)
        if body["status"] == "error":
            error_type = str(body.get("errorType", "unknown"))
            message = f"{error_type}: {body.get('error', '(no message)')}"
            if status >= 500 and error_type not in ("execution", "timeout", "canceled"):
                raise SourceUnavailable(f"HTTP {status}: {message}", query=promql, url=self.base)
            raise QueryFailed(message, query=promql, url=self.base, error_type=error_type)
        if status >= 300:
            raise SourceUnavailable(f"HTTP {status} with a success body", query=promql, url=self.base)
        data = body.get("data")
        if not isinstance(data, dict) or "resultType" not in data or "result" not in data:
            raise SourceUnavailable("success response without data", query=promql, url=self.base)
        warnings = body.get("warnings") or []
        if warnings and not self.config.accept_warnings:
            raise QueryFailed("result came with warnings (possibly partial): "
                              + "; ".join(map(str, warnings)), query=promql, url=self.base,
                              error_type="warnings")
        return cast(RawResponse, body)   # shape checked above


_collection_lock = threading.Lock()
_collection_paused = 0
_collection_was_enabled = False


@contextlib.contextmanager
def _no_collection() -> Iterator[None]:
    """The cyclic garbage collector paused while an answer is decoded and converted in a worker thread.

    Decoding a 200,000-series answer makes millions of dicts, lists and strings; the collections their
    allocations trigger walk every object in the process while holding the GIL, which triples the decode's
    time and holds the event loop for most of it. JSON makes no reference cycles, so nothing is left for the
    collector: reference counting frees the answer."""
    global _collection_paused, _collection_was_enabled
    with _collection_lock:
        if _collection_paused == 0:
            _collection_was_enabled = gc.isenabled()
            gc.disable()
        _collection_paused += 1
    try:
        yield
    finally:
        with _collection_lock:
            _collection_paused -= 1
            if _collection_paused == 0 and _collection_was_enabled:
                gc.enable()


def loads_in_parts(content: bytes) -> Any:
    """``orjson.loads`` of a Prometheus answer, its result array parsed a part of ~PART_BYTES at a time.

    Between parts the GIL is free for the event loop, so a large answer decoded in a worker thread no longer
    stalls it for the whole parse. The answer is split only where an element starts; the envelope (status,
    resultType, warnings) is parsed around an empty array. Anything unexpected — another server's layout, a
    part that does not parse — falls back to one call on the whole answer, which raises as usual."""
    first = content.find(_ELEMENT)
    if first < 0 or len(content) < 2 * PART_BYTES or not content[:first].rstrip().endswith(b"["):
        return orjson.loads(content)
    try:
        starts = [first]
        while (nxt := content.find(_ELEMENT, starts[-1] + PART_BYTES)) >= 0:
            starts.append(nxt)
        result: list[Any] = []
        for a, b in itertools.pairwise(starts):
            result.extend(orjson.loads(b"[" + content[a:b].rstrip().removesuffix(b",") + b"]"))
        # the last part ends where the array does: the first "]" from the end after which the rest is the envelope
        end = len(content)
        while (end := content.rfind(b"]", starts[-1], end)) >= 0:
            try:
                tail = orjson.loads(b"[" + content[starts[-1]:end] + b"]")
                body = orjson.loads(content[:first] + b"]" + content[end + 1:])
            except orjson.JSONDecodeError:
                continue
            result.extend(tail)
            data = body.get("data") if isinstance(body, dict) else None
            if not isinstance(data, dict) or data.get("result") != []:
                break
            data["result"] = result
            return body
    except orjson.JSONDecodeError:
        pass
    return orjson.loads(content)


def _instant_fast(samples: list[RawInstantSample]) -> tuple[tuple[dict[str, str], ...], np.ndarray] | None:
    """(labels, values) of a well-formed vector in a few vectorised steps; ``None`` sends any odd answer
    (a missing value, a non-string label or value, a value that is not a number) the careful way."""
    try:
        labels = tuple(s["metric"] for s in samples)
        raw = [s["value"][1] for s in samples]
        if not all(type(m) is dict for m in labels) or not all(type(v) is str for v in raw):
            return None
        if any(len(s["value"]) != 2 for s in samples) or any(type(v) is not str for m in labels
                                                               for v in m.values()):
            return None
        return labels, np.array(raw, dtype=np.float64)
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def _pair(raw: Any, promql: str, url: str) -> tuple[float, Any]:
    if not isinstance(raw, list | tuple) or len(raw) != 2:
        raise SourceUnavailable(f"malformed sample {str(raw)[:60]!r}", query=promql, url=url)
    return raw[0], raw[1]


def _labels(s: Any, promql: str, url: str) -> dict[str, str]:
    metric = s.get("metric") if isinstance(s, dict) else None
    if metric is None:
        return {}
    if not isinstance(metric, dict):
        raise SourceUnavailable("a series' labels are not an object", query=promql, url=url)
    return {str(k): str(v) for k, v in metric.items()}


def _join(promql: str, times: np.ndarray, parts: Sequence[tuple[int, RangeMatrix]]) -> RangeMatrix:
    """Consecutive range parts (each with its first column in ``times``) as one matrix on the whole grid.

    A series is matched across parts by its full label set; one that is
    absent from a part (not yet born, or gone) is NaN there, as in a single query.
    """
    rows: dict[tuple[tuple[str, str], ...], int] = {}
    labels: list[dict[str, str]] = []
    for _, m in parts:
        for lbl in m.labels:
            key = tuple(sorted(lbl.items()))
            if key not in rows:
                rows[key] = len(labels)
                labels.append(lbl)
    values = np.full((len(labels), len(times)), math.nan)
    warnings: dict[str, None] = {}
    for first, m in parts:
        idx = [rows[tuple(sorted(lbl.items()))] for lbl in m.labels]
        if idx:
            values[idx, first:first + m.values.shape[1]] = m.values
        warnings.update(dict.fromkeys(m.warnings))
    return RangeMatrix(promql, times, tuple(labels), values, sum(m.unparseable for _, m in parts),
                       tuple(warnings))


def select(vector: InstantVector, keep: Sequence[int]) -> InstantVector:
    """The same result restricted to the series at ``keep`` (used by the loop guard)."""
    idx = np.asarray(keep, dtype=np.int64)
    return InstantVector(vector.query, vector.at, tuple(vector.labels[i] for i in keep), vector.values[idx],
                         vector.unparseable, vector.warnings)
