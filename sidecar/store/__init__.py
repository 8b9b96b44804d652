"""Persistence: twins, their history and forecasts survive restarts, crashes and redeploys.

``open_store`` picks the database: PostgreSQL when ``DATABASE_URL`` (or the
``storage.url`` handed in) names one, otherwise a SQLite file. The service
wraps the store in a ``StoreWriter`` so the engine never waits on it::

    store = open_store(path=cfg.storage.path, url=cfg.storage.url, replica=pod_name, status=status)
    try:
        await store.open()
        restored = await store.load_twins()
    except StoreError:          # database down at start: run without history, write when it returns
        restored = []
    writer = StoreWriter(store, status, max_items=1_000_000)
    await writer.start()
    ...
    writer.submit(engine.drain())   # after every round; never blocks
    ...
    await writer.close()            # on shutdown: flush what it can within the timeout
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError
from ..status import ServiceStatus
from .base import EventQuery, LoadLimits, RestoredTwin, RetentionPolicy, RetentionReport, Store
from .writer import StoreWriter

#: Where the SQLite file goes when nothing else is configured.
DEFAULT_PATH = "twin-sidecar.db"


def open_store(path: str | os.PathLike[str] | None = None, url: str | None = None, *,
               replica: str = "default", status: ServiceStatus | None = None, schema: str | None = None,
               env: Mapping[str, str] | None = None) -> Store:
    """Build the configured store (not yet connected: ``await store.open()`` or first use connects).

    ``DATABASE_URL`` in the environment wins over ``url`` (a deployment
    overrides the rules file, not the other way round). A ``postgres://`` or
    ``postgresql://`` URL selects PostgreSQL, ``sqlite:///path`` a SQLite
    file; with no URL at all the SQLite file at ``path`` is used. The path
    ``:memory:`` (or ``sqlite:///:memory:``) keeps the history in one database
    in memory, shared by all the store's reads and writes and gone when the
    store closes (each such store has its own).
    ``replica`` names this sidecar among others sharing a PostgreSQL
    database: each loads and updates only the twins it owns, so give every
    replica a stable, distinct name (a StatefulSet pod name). ``schema``
    (PostgreSQL only) keeps the tables in their own namespace.
    """
    environ = os.environ if env is None else env
    chosen = environ.get("DATABASE_URL") or url
    if chosen:
        scheme = urlsplit(chosen).scheme.lower()
        if scheme in ("postgres", "postgresql"):
            from .postgres import PostgresStore

            return PostgresStore(chosen, replica=replica, status=status, schema=schema)
        if scheme == "sqlite":
            prefix = "sqlite://" if chosen.lower().startswith("sqlite://") else "sqlite:"
            rest = chosen[len(prefix):]
            if not rest or rest == "/":
                raise ConfigError("sqlite URL names no file (use sqlite:///relative.db or sqlite:////abs/path.db)",
                                  key="storage.url")
            path = unquote(rest[1:] if rest.startswith("/") else rest)
        else:
            raise ConfigError(f"unsupported database URL scheme {scheme!r}: expected postgresql:// or sqlite:///",
                              key="storage.url")
    from .sqlite import SQLiteStore

    return SQLiteStore(Path(path if path is not None else DEFAULT_PATH), replica=replica, status=status)


__all__ = ["DEFAULT_PATH", "EventQuery", "LoadLimits", "RestoredTwin", "RetentionPolicy", "RetentionReport", "Store",
           "StoreWriter", "open_store"]
