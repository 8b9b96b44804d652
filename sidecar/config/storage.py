"""``storage:``: SQLite or PostgreSQL (``DATABASE_URL`` wins), retention, the write buffer, save intervals."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from ..units import format_duration
from .maxima import (
    MAX_BUFFER_ITEMS,
    MAX_COMMIT_WAIT_S,
    MAX_FORECAST_INTERVAL_S,
    MAX_MODEL_STATE_INTERVAL_S,
    MAX_RETENTION_DAYS,
    MAX_RETENTION_MIN_AGE_S,
    MAX_RETENTION_SNAPSHOTS,
    MAX_SAMPLE_INTERVAL_S,
)
from .reader import Reader, resolve
from .records import StorageConfig


def read_storage(r: Reader | None, env: Mapping[str, str]) -> StorageConfig:
    d = StorageConfig()
    if r is None:
        return StorageConfig(url=env.get("DATABASE_URL") or None)
    path = r.str_("path", d.path)
    assert path is not None
    url = r.str_("url")
    if url is not None and not re.match(r"postgres(ql)?://", url):
        raise r.error(r.items["url"][1], r.key("url"), "expected a postgresql:// URL")
    out = StorageConfig(
        path=path if path == ":memory:" else resolve(r.path, path),
        url=env.get("DATABASE_URL") or url,
        retention_days=r.number("retention_days", d.retention_days, maximum=MAX_RETENTION_DAYS),
        retention_snapshots=r.int_("retention_snapshots", d.retention_snapshots, maximum=MAX_RETENTION_SNAPSHOTS)
        or d.retention_snapshots,
        buffer_max_items=r.int_("buffer_max_items", d.buffer_max_items, minimum=100, maximum=MAX_BUFFER_ITEMS)
        or d.buffer_max_items,
        model_state_interval_s=r.duration("model_state_interval", d.model_state_interval_s,
                                          maximum=MAX_MODEL_STATE_INTERVAL_S),
        forecast_interval_s=r.duration("forecast_interval", d.forecast_interval_s, maximum=MAX_FORECAST_INTERVAL_S),
        sample_interval_s=r.duration("sample_interval", d.sample_interval_s, maximum=MAX_SAMPLE_INTERVAL_S,
                                     allow_zero=True),
        commit_wait_s=r.duration("commit_wait", d.commit_wait_s, maximum=MAX_COMMIT_WAIT_S, allow_zero=True),
        retention_min_age_s=r.duration("retention_min_age", d.retention_min_age_s, maximum=MAX_RETENTION_MIN_AGE_S,
                                       allow_zero=True))
    if out.retention_min_age_s > out.retention_days * 86400.0:
        node = r.items["retention_min_age"][1] if "retention_min_age" in r.items else r.items["retention_days"][1]
        key = r.key("retention_min_age" if "retention_min_age" in r.items else "retention_days")
        raise r.error(node, key, f"retention_min_age ({format_duration(out.retention_min_age_s)}) is longer than "
                                 f"retention_days ({out.retention_days:g}): lower the one or raise the other")
    if out.url is None and "path" in r.items and out.path != ":memory:":
        problem = _sqlite_path_problem(Path(out.path))
        if problem is not None:
            raise r.error(r.items["path"][1], r.key("path"), problem)
    r.finish()
    return out


def _sqlite_path_problem(path: Path) -> str | None:
    """Why the SQLite store could not open ``path``, or ``None``: checked at load, since a store that cannot
    open only shows as a service running with its store down (snapshots kept in memory, then lost)."""
    if path.is_dir():
        return f"{path} is a directory; expected the database file's path, e.g. {path / 'twin-sidecar.db'}"
    if path.exists() and not path.is_file():
        return f"{path} is not a regular file"
    parent = path.parent
    if not parent.is_dir():
        return f"the directory {parent} does not exist (create it, or put the database in an existing directory)"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"the directory {parent} is not writable (SQLite writes its journal beside the database)"
    return None
