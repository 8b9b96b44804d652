"""Structured logging: one JSON object per line (for log pipelines) or one readable line (for humans).

Modules log with ``logging.getLogger(__name__)`` and put fields in ``extra``
(``log.info("twin created", extra={"twin": name})``); this module renders the
message and those fields together. Field names that look like credentials are
masked as a last line of defence: secrets are never meant to reach a log
call in the first place.

Example::

    setup_logging("json")
    logging.getLogger("sidecar.collect.round").info("round done", extra={"accepted": 12})
    # {"ts": "2026-11-25T15:00:00.000Z", "level": "info", "logger": "sidecar.collect.round",
    #  "msg": "round done", "accepted": 12}
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import sys
from typing import Any, TextIO

#: Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime",
                                                                                  "taskName"}
_SECRET_HINTS = ("password", "passwd", "secret", "token", "authorization", "api_key", "apikey", "cookie")
MASK = "***"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.__dict__.items():
        if key in _STANDARD or key.startswith("_"):
            continue
        out[key] = MASK if any(h in key.lower() for h in _SECRET_HINTS) else value
    return out


def _plain(value: Any) -> Any:
    """JSON has no NaN/inf and no numpy scalars: make the value representable."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        try:
            return _plain(value.item())
        except (TypeError, ValueError):
            return str(value)
    return value


def _ts(created: float) -> str:
    return dt.datetime.fromtimestamp(created, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the ``extra`` fields, and exc on errors."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {"ts": _ts(record.created), "level": record.levelname.lower(),
                                "logger": record.name, "msg": record.getMessage()}
        for key, value in _fields(record).items():
            body.setdefault(key, _plain(value))
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``15:00:00.000 INFO  sidecar.collect.round: round done accepted=12``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        fields = " ".join(f"{k}={_plain(v)}" for k, v in _fields(record).items())
        line = f"{ts} {record.levelname:<5} {record.name}: {record.getMessage()}"
        if fields:
            line = f"{line} {fields}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def setup_logging(fmt: str = "json", *, level: str | int = "INFO", stream: TextIO | None = None) -> None:
    """Route every logger to one stderr handler in ``fmt`` ("json" or "text"); idempotent."""
    if fmt not in ("json", "text"):
        raise ValueError(f"log format must be json or text, got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.set_name("twin-sidecar")
    root = logging.getLogger()
    for h in list(root.handlers):
        if h.get_name() == "twin-sidecar":
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    # libraries that would log every request or connection at INFO
    for noisy in ("aiohttp.access", "httpx", "httpcore", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
