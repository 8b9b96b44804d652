"""The sidecar's HTTP server: /metrics, the Kubernetes probes and the JSON API on one aiohttp app.

``build_app`` wires the exporter into the registry it is handed (the
scheduler gets the same registry's ``twin_sync_duration_seconds`` through
``sidecar.exporter.sync_duration_histogram``) and returns the app; the service
runs it with a :class:`SidecarRunner`. A scrape is rendered in a worker thread: at tens of thousands of
series it takes a noticeable fraction of a second, and the event loop must
keep answering probes and feeding the engine meanwhile.

The runner guards the connection itself, before any handler runs: a request whose headers are not complete
``HEADER_TIMEOUT_S`` after its first byte (or after the connection opened) has its connection closed, so
connections that trickle headers (slowloris) cannot pile up, and a malformed request (a NUL byte in a
header, a line too long) is answered 400 by aiohttp and logged once per client per minute at warning,
without the traceback aiohttp would log at error for each one.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server
from prometheus_client import CollectorRegistry

from .api import ClientThrottle, TokenSource, TwinApi, error_middleware, json_response
from .engine.twin import TwinEngine
from .exporter import CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT, install_exporter, render, wants_openmetrics
from .service import FacadeService
from .status import ServiceStatus

log = logging.getLogger(__name__)

#: Request bodies beyond this are refused with 413 unless the config says otherwise (a scenario or an
#: expected state is a few hundred bytes).
DEFAULT_MAX_BODY_BYTES = 64 * 1024


def build_app(*, facade: TwinEngine, status: ServiceStatus, registry: CollectorRegistry,
              engine_lock: asyncio.Lock, auth_token: TokenSource,
              max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> web.Application:
    """The whole HTTP surface. ``engine_lock`` is the lock the scheduler holds while it feeds the engine."""
    if max_body_bytes <= 0:
        raise ValueError("max_body_bytes must be positive")
    engine = facade.engine
    install_exporter(registry, view=engine.latest_view, status=status)
    app = web.Application(client_max_size=max_body_bytes, middlewares=[error_middleware])

    async def metrics(request: web.Request) -> web.Response:
        # the scrape renders the view last built; a stale one is rebuilt first under the engine lock when the lock
        # is free (a round or an API call holding it ends by leaving a view, or the next scrape rebuilds it)
        if engine.view_stale and not engine_lock.locked():
            async with engine_lock:
                await asyncio.to_thread(engine.view)
        openmetrics = wants_openmetrics(request.headers.get("Accept"))
        compress = "gzip" in request.headers.get("Accept-Encoding", "")
        body = await asyncio.to_thread(_scrape, registry, openmetrics, compress)
        response = web.Response(body=body)
        # set directly: aiohttp's content_type argument would drop the version parameter
        response.headers["Content-Type"] = CONTENT_TYPE_OPENMETRICS if openmetrics else CONTENT_TYPE_TEXT
        if compress:
            response.headers["Content-Encoding"] = "gzip"
        response.headers["Vary"] = "Accept, Accept-Encoding"
        return response

    async def healthz(request: web.Request) -> web.Response:
        return json_response({"status": "ok", "shard": status.shard})

    async def readyz(request: web.Request) -> web.Response:
        reasons = []
        if not status.config_loaded:
            reasons.append("configuration not loaded")
        if not status.first_round_done:
            reasons.append("first query round not done")
        body = {"ready": status.ready, "reasons": reasons, "config_loaded": status.config_loaded,
                "first_round_done": status.first_round_done, "source_up": status.source_up,
                "store_up": status.store_up, "store_backlog": status.store_backlog, "shard": status.shard}
        if not status.store_up:
            body["store"] = "unavailable: history is kept in memory until it is back"
        return json_response(body, status=200 if status.ready else 503)

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.add_routes(TwinApi(FacadeService(facade, replica_signals=status.replica_signals), engine_lock=engine_lock,
                           auth_token=auth_token).routes())
    return app


def _scrape(registry: CollectorRegistry, openmetrics: bool, compress: bool) -> bytes:
    """One scrape's body. Prometheus accepts gzip; at level 1 it costs about a third of the rendering and
    shrinks the body about sevenfold (tens of MB at tens of thousands of series)."""
    body = render(registry, openmetrics=openmetrics)
    return gzip.compress(body, compresslevel=1) if compress else body


#: Seconds a request's headers may take from its first byte (or from the connection's opening) to the end of
#: the headers; a probe or a scrape sends them in one packet.
HEADER_TIMEOUT_S = 5.0


class MalformedRequestLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The logger aiohttp's connection handler is given.

    aiohttp answers a request it cannot parse (``HttpProcessingError``: a NUL byte in a header, a bad
    request line, a header too long) with 400 and logs it at error with a full traceback, once per request:
    a scanner or a broken client fills the log. Those go to one warning line per client per ``every_s``
    (``http request malformed``, with the client, aiohttp's reason without the request bytes it quotes, and
    how many requests the line stands for); every other record (a handler's unhandled exception) goes on to
    aiohttp's logger as is.
    """

    def __init__(self, logger: logging.Logger | None = None, *, throttle: ClientThrottle | None = None) -> None:
        super().__init__(logger or logging.getLogger("aiohttp.server"), {})
        self.throttle = throttle or ClientThrottle(every_s=60.0)

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            client = str(args[0]) if args and args[0] else "unknown"
            self.malformed(client, exc_info)
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)

    def malformed(self, client: str, exc: HttpProcessingError) -> None:
        count = self.throttle.admit(client)
        if count is None:
            return
        # the first line only: the lines after it quote the request's bytes, which may hold a token
        reason = (str(exc.message or "").strip().splitlines() or ["malformed"])[0].strip().rstrip(":")[:200]
        log.warning("http request malformed", extra={
            "client": client, "status": exc.code or 400, "reason": reason, "requests": count,
            "quiet_for_s": self.throttle.every_s})


class _GuardedHandler(RequestHandler):
    """aiohttp's connection handler with a deadline for each request's headers (see the module docstring)."""

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._start_header_timer()

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:                # the headers of a request are complete
            self._stop_header_timer()
        elif self._current_request is None and not self._messages and data:
            self._start_header_timer()                   # the first bytes of the next request's headers

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _start_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self._loop.call_later(HEADER_TIMEOUT_S, self._headers_too_slow)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        log.debug("connection closed: request headers not complete in time",
                  extra={"timeout_s": HEADER_TIMEOUT_S})
        self.force_close()


class _GuardedServer(Server):
    """aiohttp's protocol factory, making :class:`_GuardedHandler` connections."""

    def __call__(self) -> RequestHandler:
        return _GuardedHandler(self, loop=self._loop, **self._kwargs)


class SidecarRunner(web.AppRunner):
    """``web.AppRunner`` with the connection guards of this module (header deadline, malformed-request log)."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("logger", MalformedRequestLog())
        super().__init__(app, **kwargs)

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = _GuardedServer     # adds no state: only which handler class it makes
        return server

