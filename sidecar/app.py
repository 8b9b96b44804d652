"""Assembly: rules -> store -> engine -> scheduler -> HTTP server, and an orderly shutdown.

``run_service`` is what ``twin-sidecar run`` calls. It opens the history
store and brings the twins back (a database that is down at start is not
fatal: the service runs and the writer catches up when it returns), hands
the scheduler the discovered twins retired less than ``retired.keep_for``
ago so that a returning series still gets its twin back after a restart, serves
/metrics, the probes and the API, runs the query rounds until SIGTERM or
SIGINT, then lets the round in progress finish, flushes the store for a few
seconds at most and exits 0 — Kubernetes sends SIGKILL 30 s after SIGTERM,
and a sidecar must be well inside that.

Example::

    cfg = load_config("config/example.yaml")
    exit_code = asyncio.run(run_service(cfg, log_format="text"))
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry

from .autoscale import ReplicaRecommender
from .collect.restore import Stored, keep_retired, late_restore, load_model_states, load_stored, restore_stored
from .collect.scheduler import Scheduler
from .config import HISTORY_MIN_SAMPLES, SidecarConfig, StorageConfig, check_config, load_config
from .engine.core import Engine
from .engine.history import HistoryStore
from .engine.modelstate import TwinModelState
from .engine.modelstate import encode as encode_model_state
from .engine.records import StateHistoryEntry, TwinEvent
from .engine.settings import EngineSettings
from .engine.twin import TwinEngine
from .engine.view import Outbox
from .errors import ConfigError, SidecarError, StoreError
from .exporter import install_exporter, sync_duration_histogram
from .logs import setup_logging
from .prometheus import PrometheusClient
from .server import SidecarRunner, build_app
from .status import ServiceStatus
from .store import EventQuery, RestoredTwin, RetentionPolicy, Store, StoreWriter, open_store
from .store.writer import Ticket

log = logging.getLogger(__name__)

__all__ = ["Service", "check_config", "run_service", "start_service"]

#: Seconds the store may take to flush at shutdown (the round in progress gets its own short grace).
FLUSH_TIMEOUT_S = 3.0
#: Twins whose model rows are copied under the engine lock at once by a model-state save (~0.1 s for 200).
SAVE_CHUNK_TWINS = 200
#: How long the shutdown's model-state save may take: with the scheduler's last round and the store's flush it
#: stays inside the chart's terminationGracePeriodSeconds (30 s); what it did not save is logged.
SHUTDOWN_SAVE_S = 15.0
#: Seconds an API state change waits for its commit before it answers 202 (applied, not yet stored), unless the
#: rules say otherwise (``storage.commit_wait``).
STORE_WAIT_S = StorageConfig().commit_wait_s
#: Environment variable naming this replica among others sharing one PostgreSQL database.
REPLICA_ENV = "TWIN_SIDECAR_REPLICA"


class _BufferedHistory:
    """The facade's view of the store: reads from the database, writes through the buffered writer.

    API calls that change state (expected state, rollback) must not fail
    because the database is slow or down; their snapshots join the writer's
    queue like everything else, in order. The API then awaits ``last_write()``
    (outside the engine lock) to say 200 only for a change already committed,
    and 202 for one that is applied and still queued.
    """

    def __init__(self, store: Store, writer: _RestoreGate, *, wait_s: float = STORE_WAIT_S) -> None:
        self.store = store
        self.writer = writer
        self.wait_s = wait_s
        self._last: Ticket | None = None

    async def write(self, outbox: Outbox) -> None:
        self.writer.submit(outbox)
        self._last = self.writer.last_ticket

    def last_write(self) -> Callable[[], Awaitable[bool]]:
        """A wait (at most ``wait_s``) for the outbox the last ``write`` queued: True once it is committed.
        Take it right after the write, under the same engine lock; await it after releasing the lock."""
        ticket, writer, wait_s = self._last, self.writer.writer, self.wait_s

        async def wait() -> bool:
            return ticket is not None and await writer.wait_written(ticket, wait_s)
        return wait

    async def get_snapshot(self, twin_id: str, snapshot_id: str) -> StateHistoryEntry | None:
        return await self.store.get_snapshot(twin_id, snapshot_id)

    async def list_snapshots(self, twin_id: str, *, limit: int = 100,
                             before: float | None = None) -> list[StateHistoryEntry]:
        return await self.store.list_snapshots(twin_id, limit=limit, before=before)

    async def list_events(self, query: EventQuery) -> list[TwinEvent]:
        """Stored events, read from the database directly (the API adds those still in memory)."""
        return await self.store.list_events(query)


class _RestoreGate:
    """Holds twin definitions back while the stored twins could not be read.

    A database that is down at start must not lose what it holds: the twins
    start afresh from the rules, and writing their fresh definitions when the
    database returns would overwrite the stored ones (hand-set expected
    states). Until the stored twins have been read and merged, everything else
    (append-only snapshots, samples, events) is written as usual, definitions
    are not; after the merge every definition is written again.
    """

    def __init__(self, writer: StoreWriter, *, pending: bool) -> None:
        self.writer = writer
        self.pending = pending
        #: the outbox last submitted; None when its definitions were held back (committing it is not enough)
        self.last_ticket: Ticket | None = None

    def submit(self, outbox: Outbox) -> None:
        held = self.pending and bool(outbox.twins or outbox.retired)
        if held:
            outbox.twins, outbox.retired = [], []
        self.writer.submit(outbox)
        self.last_ticket = None if held else self.writer.last_ticket


async def save_model_states(engine: Engine, store: Store, lock: asyncio.Lock,
                            scheduler: Scheduler | None = None, *, deadline: float | None = None) -> int:
    """Save every twin's learnt model rows; a store that is down only costs this save (logged).

    Incremental: ``SAVE_CHUNK_TWINS`` twins at a time, the engine lock held only while their rows are copied, so
    rounds and the API go on between chunks and memory grows by one chunk, not a copy of every model. With a
    ``deadline`` (``time.monotonic()``; the shutdown's) the save stops at the first chunk past it and says how
    many twins it did not save (they come back as last saved).

    With the scheduler, also the models of retired twins it keeps that are not saved yet (so a restart gives
    them back), and, once saved, the rows of retired twins it no longer keeps are deleted (given back to the
    scheduler if the store is down, for the next save).
    """
    parked: list[TwinModelState] = []
    forget: list[str] = []
    written = size = 0
    try:
        async with lock:
            twin_ids = engine.twin_ids()
            if scheduler is not None:
                parked, forget = scheduler.retired.unsaved_models(), scheduler.retired.take_forgotten()
        kept = await asyncio.to_thread(_encode_all, parked)
        size += sum(map(len, kept.values()))
        if kept:
            written += await store.save_model_states(kept, at=time.time())
        saved: set[str] = set(kept)
        for first in range(0, len(twin_ids), SAVE_CHUNK_TWINS):
            if deadline is not None and time.monotonic() > deadline:
                log.warning("model state save incomplete: the deadline passed", extra={
                    "saved": first, "unsaved": len(twin_ids) - first,
                    "hint": "the unsaved twins come back with the models of their last save"})
                break
            chunk = twin_ids[first:first + SAVE_CHUNK_TWINS]
            async with lock:
                states = await asyncio.to_thread(engine.model_states, chunk)
            blobs = await asyncio.to_thread(_encode_all, states.values())
            written += await store.save_model_states(blobs, at=time.time())
            size += sum(map(len, blobs.values()))
            saved.update(blobs)
    except StoreError as exc:
        log.warning("model state not saved", extra={"twins": written, "error": str(exc)})
        if scheduler is not None:
            scheduler.retired.forget_later(forget)
        return written
    except Exception:       # a bug here must not stop the schedule or the shutdown's flush of the store
        log.exception("model state could not be exported")
        if scheduler is not None:
            scheduler.retired.forget_later(forget)
        return written
    log.info("model state saved", extra={"twins": written, "retired_kept": len(kept), "bytes": size})
    if scheduler is not None:
        scheduler.retired.models_saved(parked)
        await _forget_model_states(store, scheduler, [t for t in forget if t not in saved])
    return written


def _encode_all(states: Iterable[TwinModelState]) -> dict[str, bytes]:
    return {st.twin_id: encode_model_state(st) for st in states}


async def _forget_model_states(store: Store, scheduler: Scheduler, twin_ids: list[str]) -> None:
    """Delete the saved models of retired twins no longer kept; kept for the next try if the store is down."""
    if not twin_ids:
        return
    try:
        await store.forget_model_states(twin_ids)
    except StoreError as exc:
        scheduler.retired.forget_later(twin_ids)
        log.warning("model state of twins no longer kept not deleted; tried again at the next save", extra={
            "twins": len(twin_ids), "error": str(exc)})


async def _model_state_loop(engine: Engine, store: Store, lock: asyncio.Lock, gate: _RestoreGate,
                            stop: asyncio.Event, interval_s: float, scheduler: Scheduler | None = None) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        if stop.is_set():
            return
        if gate.pending:        # stored twins not merged yet: their saved state must not be overwritten
            continue
        await save_model_states(engine, store, lock, scheduler)


@dataclass
class Service:
    """A running sidecar (what ``start_service`` returns; tests and the demo drive it directly)."""

    config: SidecarConfig
    engine: Engine
    facade: TwinEngine
    status: ServiceStatus
    scheduler: Scheduler
    client: PrometheusClient
    store: Store
    writer: StoreWriter
    runner: web.AppRunner
    port: int
    stop: asyncio.Event
    task: asyncio.Task[None] | None = None
    sink: _RestoreGate | None = None            # the writer as the engine's outbox sees it
    restore_task: asyncio.Task[None] | None = None
    state_task: asyncio.Task[None] | None = None
    replicas_task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = self.config.server.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    async def wait(self) -> None:
        """Until the scheduler has stopped (after ``stop`` is set)."""
        if self.task is not None:
            await self.task

    async def shutdown(self) -> None:
        """Finish the round, flush the store (bounded), close the server and the client."""
        self.stop.set()
        if self.task is not None:
            try:
                await self.task
            except Exception:
                log.exception("scheduler ended with an error")
        async with self.scheduler.lock:
            outbox = self.engine.drain()
        if outbox:
            (self.sink or self.writer).submit(outbox)
        if self.restore_task is not None:
            self.restore_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.restore_task
        if self.state_task is not None:
            await self.state_task           # returns once stop is set
        if self.replicas_task is not None:
            await self.replicas_task        # returns once stop is set
        if self.sink is None or not self.sink.pending:
            # not wait_for: a cancelled save would leave its thread running and the process alive past the grace
            await save_model_states(self.engine, self.store, self.scheduler.lock, self.scheduler,
                                    deadline=time.monotonic() + SHUTDOWN_SAVE_S)
        await self.writer.close(FLUSH_TIMEOUT_S)
        await self.runner.cleanup()
        await self.client.aclose()
        log.info("sidecar stopped", extra={"rounds": self.status.rounds_total,
                                           "store_backlog": self.writer.backlog})


@dataclass
class OpenedHistory:
    """What ``_open_history`` opened and read."""

    store: Store
    writer: StoreWriter
    loaded: bool                        # the stored twins were read (if not, they are merged later)
    retired: list[RestoredTwin] = field(default_factory=list)   # retired recently enough to be kept
    states: dict[str, bytes] = field(default_factory=dict)      # saved model states, by twin id
    elsewhere: list[str] = field(default_factory=list)          # ids of the twins other shards have


async def _open_history(config: SidecarConfig, engine: Engine, status: ServiceStatus) -> OpenedHistory:
    """Open the store and bring this replica's twins back; a database that is down is not fatal.
    The retired twins it read go to the scheduler once there is one (``collect.restore.keep_retired``)."""
    replica = os.environ.get(REPLICA_ENV, "default")
    store = open_store(path=config.storage.path, url=config.storage.url, replica=replica, status=status)
    try:
        await store.open()
        stored = await load_stored(store, config, time.time())
        loaded = True
    except StoreError as exc:
        status.store_up = False
        log.error("history store unavailable at start; stored twins will be merged when it returns", extra={
            "backend": store.backend, "error": str(exc)})
        stored, loaded = Stored(), False
    restored, retired = stored.live, stored.retired
    states = await load_model_states(store, stored.twins) if restored or retired else {}
    restore_stored(engine, restored, states)
    if restored:
        log.info("twins restored from the store", extra={"twins": len(restored), "backend": store.backend})
    engine.drain()      # what the restore produced is already stored
    days = config.storage.retention_days * 86400.0
    retention = RetentionPolicy(snapshot_max_age_s=days, snapshot_max_count=config.storage.retention_snapshots,
                                snapshot_min_age_s=config.storage.retention_min_age_s,
                                samples_max_age_s=days, predictions_max_age_s=days, events_max_age_s=days)
    writer = StoreWriter(store, status, max_items=config.storage.buffer_max_items, retention=retention,
                         samples_every_s=config.storage.sample_interval_s)
    await writer.start()
    return OpenedHistory(store, writer, loaded, retired, states, stored.elsewhere)


def engine_settings(config: SidecarConfig, *, id_namespace: str = "", history_s: float | None = None) -> EngineSettings:
    """The engine's settings from the rules: horizons, the store's forecast cadence, the limits on twins and series,
    and the history kept per series (``history_s``, else ``limits.history``, at the rules' interval, both ends)."""
    span = config.limits.history_s if history_s is None else history_s
    # never fewer samples than the capacity fit needs (the default 1h at an interval over 3 minutes would be)
    history = max(HISTORY_MIN_SAMPLES, math.ceil(span / config.interval_s) + 1)
    return EngineSettings(horizons_s=config.horizons_s, id_namespace=id_namespace,
                          forecast_store_every_s=config.storage.forecast_interval_s,
                          max_twins=config.limits.max_twins, max_series=config.limits.max_series,
                          history_size=history)


async def start_service(config: SidecarConfig, *, port: int | None = None) -> Service:
    """Build and start everything except signal handling; the scheduler runs as a task."""
    status = ServiceStatus(config_loaded=True, shard_index=config.shard.index, shard_count=config.shard.count)
    replica = os.environ.get(REPLICA_ENV, "default")
    engine = Engine(engine_settings(config, id_namespace="" if replica == "default" else replica))
    lock = asyncio.Lock()
    opened = await _open_history(config, engine, status)
    store, writer, loaded = opened.store, opened.writer, opened.loaded
    gate = _RestoreGate(writer, pending=not loaded)
    history: HistoryStore = _BufferedHistory(store, gate, wait_s=config.storage.commit_wait_s)
    facade = TwinEngine(engine, store=history)
    await facade.initialize()
    token_file = config.server.auth_token_file
    if token_file is not None:
        try:
            token_file.read()            # unreadable at start is a configuration error, not a silent lock-out
        except OSError as exc:
            raise ConfigError(f"cannot read the API token file: {exc.strerror or exc}", path=config.path,
                              key="server.auth_token_file") from exc
    token = token_file.read if token_file is not None else None
    registry = CollectorRegistry()
    # first, with the rules' export: section; build_app's own install_exporter call then returns this collector
    install_exporter(registry, view=facade.engine.latest_view, status=status, export=config.export)
    app = build_app(facade=facade, status=status, registry=registry, engine_lock=lock, auth_token=token,
                    max_body_bytes=config.server.max_body_bytes)
    runner: web.AppRunner = SidecarRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    listen_port = config.server.port if port is None else port
    try:
        site = web.TCPSite(runner, config.server.host, listen_port)
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        await writer.close(1.0)
        raise ConfigError(f"cannot listen on {config.server.host}:{listen_port}: {exc.strerror or exc}",
                          path=config.path, key="server.listen") from exc
    addresses = runner.addresses                 # the real port when 0 was asked for
    bound = int(addresses[0][1]) if addresses else listen_port
    client = PrometheusClient(config.prometheus, max_response_bytes=config.limits.max_response_bytes)
    scheduler = Scheduler(config, engine, client, status, lock=lock, writer=gate,
                          sync_histogram=sync_duration_histogram(registry),
                          own_identities=config.prometheus.self_labels)
    stop = asyncio.Event()
    service = Service(config, engine, facade, status, scheduler, client, store, writer, runner, bound, stop)
    service.sink = gate
    if loaded:
        await keep_retired(scheduler.retired, lock, store, opened.retired, opened.states, now=time.time(),
                           elsewhere=opened.elsewhere)
    service.task = asyncio.create_task(scheduler.run(stop), name="scheduler")
    if gate.pending:
        service.restore_task = asyncio.create_task(
            late_restore(store, engine, lock, gate, stop, retired=scheduler.retired), name="late-restore")
    service.state_task = asyncio.create_task(
        _model_state_loop(engine, store, lock, gate, stop, config.storage.model_state_interval_s, scheduler),
        name="model-state")
    if any(t.max_replicas is not None for t in config.twins):
        recommender = ReplicaRecommender(engine, status, lock,
                                         lambda: {n: t.rule for n, t in scheduler.roster.targets.items()},
                                         interval_s=config.interval_s)
        service.replicas_task = asyncio.create_task(recommender.run(stop), name="replicas")
    log.info("sidecar started", extra={
        "listen": f"{config.server.host}:{bound}", "prometheus": config.prometheus.url,
        "twin_rules": len(config.twins), "interval_s": config.interval_s, "store": store.backend,
        "auth": token is not None, "shard": f"{config.shard.index}/{config.shard.count}"})
    return service


async def run_service(config: SidecarConfig, *, log_format: str = "json") -> int:
    """Run until SIGTERM/SIGINT; 0 on an orderly stop, 1 if the service could not start."""
    setup_logging(log_format)
    try:
        service = await start_service(config)
    except SidecarError as exc:
        log.error("cannot start", extra={"error": str(exc)})
        return 1
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, _on_signal, service.stop, sig)
    # the usual "reload" signal killed the process outright (no flush, no model state saved): rules are read
    # at start only, so say so and keep running
    with contextlib.suppress(NotImplementedError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, _on_hangup)
    try:
        await service.stop.wait()
    finally:
        await service.shutdown()
        for sig in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", signal.SIGTERM)):
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(sig)
    return 0


def _on_hangup() -> None:
    log.warning("SIGHUP ignored: the rules are read at start only; restart the sidecar to apply a change "
                "(the Helm chart rolls the pod when its rules change)")


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    if not stop.is_set():
        log.info("stopping", extra={"signal": sig.name})
    stop.set()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sidecar.app --config F [--log-format text]`` (the CLI proper is ``twin-sidecar run``)."""
    parser = argparse.ArgumentParser(prog="python -m sidecar.app")
    parser.add_argument("--config", required=True)
    parser.add_argument("--log-format", choices=("json", "text"), default="json")
    parser.add_argument("--check", action="store_true", help="validate the rules and exit")
    args = parser.parse_args(argv)
    try:
        if args.check:
            print("\n".join(check_config(args.config)))
            return 0
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(run_service(config, log_format=args.log_format))


if __name__ == "__main__":
    sys.exit(main())
