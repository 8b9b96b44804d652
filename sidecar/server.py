"""The sidecar's HTTP server: /metrics, the Kubernetes probes and the JSON API on one aiohttp app.

``build_app`` wires the exporter into the registry it is handed (the
scheduler gets the same registry's ``twin_sync_duration_seconds`` through
``sidecar.exporter.sync_duration_histogram``) and returns the app; the service
runs it. A scrape is rendered in a worker thread: at tens of thousands of
series it takes a noticeable fraction of a second, and the event loop must
keep answering probes and feeding the engine meanwhile.
"""

from __future__ import annotations

import asyncio
import gzip
import logging

from aiohttp import web
from prometheus_client import CollectorRegistry

from .api import TokenSource, TwinApi, error_middleware, json_response
from .engine.twin import TwinEngine
from .exporter import CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT, install_exporter, render, wants_openmetrics
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
    install_exporter(registry, view=facade.engine.view, status=status)
    app = web.Application(client_max_size=max_body_bytes, middlewares=[error_middleware])

    async def metrics(request: web.Request) -> web.Response:
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
        return json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        reasons = []
        if not status.config_loaded:
            reasons.append("configuration not loaded")
        if not status.first_round_done:
            reasons.append("first query round not done")
        body = {"ready": status.ready, "reasons": reasons, "config_loaded": status.config_loaded,
                "first_round_done": status.first_round_done, "source_up": status.source_up,
                "store_up": status.store_up, "store_backlog": status.store_backlog}
        if not status.store_up:
            body["store"] = "unavailable: history is kept in memory until it is back"
        return json_response(body, status=200 if status.ready else 503)

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.add_routes(TwinApi(facade, engine_lock=engine_lock, auth_token=auth_token).routes())
    return app


def _scrape(registry: CollectorRegistry, openmetrics: bool, compress: bool) -> bytes:
    """One scrape's body. Prometheus accepts gzip; at level 1 it costs about a third of the rendering and
    shrinks the body about sevenfold (tens of MB at tens of thousands of series)."""
    body = render(registry, openmetrics=openmetrics)
    return gzip.compress(body, compresslevel=1) if compress else body
