"""Offline replay: stream a ``timestamp,value`` CSV through the same engine the service runs.

This is how forecasts and anomaly scores are measured on real history
(``twin-sidecar forecast`` / ``detect``): one twin, one custom metric, rows fed
in file order, each forecast made only from rows at or before it, so running
on a prefix of a file gives the same rows for the same timestamps.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

import numpy as np

from .engine.core import Engine
from .engine.settings import EngineSettings
from .errors import InputError

METRIC = "value"
TWIN = "replay"


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    stamp: str       # the timestamp exactly as written, echoed in outputs
    t: float         # unix seconds
    value: float


def parse_time(text: str) -> float:
    """``2014-02-14 14:30:00`` (NAB), RFC 3339, or unix seconds -> unix seconds (naive = UTC)."""
    s = text.strip()
    try:
        return float(s)
    except ValueError:
        pass
    try:
        d = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError as e:
        raise ValueError(f"timestamp {s!r} is neither 'YYYY-MM-DD HH:MM:SS', RFC 3339 nor unix seconds") from e
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    return d.timestamp()


def _decoded_lines(p: str, raw: BinaryIO) -> Iterator[str]:
    """The file's lines as text, decoded one line at a time, so a bad byte is reported at its own line and
    the file is never held in memory whole (a text stream decodes in chunks, ahead of the row being
    parsed, and would raise a bare UnicodeDecodeError there). UTF-8 never has a newline byte inside a
    character, so splitting before decoding is safe."""
    for line, data in enumerate(raw, start=1):
        try:
            yield data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{p}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column {e.start + 1}); "
                             "expected a 'timestamp,value' CSV") from None


def read_rows(path: str | Path) -> Iterator[Row]:
    """Rows of a ``timestamp,value`` CSV, streamed; a malformed row raises ``InputError`` naming file and line."""
    p = str(path)
    try:
        raw = open(p, "rb")  # noqa: SIM115 - closed by the with below, after the open error is reported
    except OSError as e:
        raise InputError(f"{p}: cannot open ({e.strerror})") from e
    with raw:
        reader = csv.reader(_decoded_lines(p, raw))
        try:
            header = [h.strip().lstrip("\ufeff") for h in next(reader)]
        except StopIteration:
            raise InputError(f"{p}:1: empty file, expected a header 'timestamp,value'") from None
        except csv.Error as e:
            raise InputError(f"{p}:1: {e}") from e
        if "timestamp" not in header or "value" not in header:
            raise InputError(f"{p}:1: header must contain 'timestamp' and 'value', got {','.join(header)!r}")
        it, iv = header.index("timestamp"), header.index("value")
        need = max(it, iv) + 1
        line = 1
        try:
            for rec in reader:
                line = reader.line_num
                if not rec or all(not c.strip() for c in rec):
                    continue
                if len(rec) < need:
                    raise InputError(f"{p}:{line}: expected {need} columns, got {len(rec)}")
                try:
                    t = parse_time(rec[it])
                except ValueError as e:
                    raise InputError(f"{p}:{line}: {e}") from e
                try:
                    v = float(rec[iv])
                except ValueError:
                    raise InputError(f"{p}:{line}: value {rec[iv]!r} is not a number") from None
                yield Row(line, rec[it].strip(), t, v)
        except csv.Error as e:
            raise InputError(f"{p}:{line}: {e}") from e


def load(path: str | Path) -> list[Row]:
    rows = list(read_rows(path))
    if not rows:
        raise InputError(f"{path}: no data rows")
    return rows


def _engine(n: int, horizons_s: Sequence[float], model: str) -> tuple[Engine, np.ndarray]:
    eng = Engine(EngineSettings(horizons_s=tuple(horizons_s), model=model))
    slots = np.empty(n, np.int64)
    for i in range(n):
        name = f"{TWIN}-{i}"
        eng.create_twin(name, at=0.0)
        slots[i] = eng.series_for(name, [METRIC])[0]
    return eng, slots


def _fmt(v: float) -> str:
    return repr(float(v)) if math.isfinite(v) else "nan"


def _steps(files: Sequence[Sequence[Row]], eng: Engine, slots: np.ndarray
           ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Feed row i of every file in one vectorised call; yield (i, files fed, accepted mask).

    Series never share state, so each file's results are exactly those of a run on it alone.
    """
    lengths = np.array([len(f) for f in files])
    for i in range(int(lengths.max(initial=0))):
        live = np.flatnonzero(lengths > i)
        idx = slots[live]
        t = np.array([files[k][i].t for k in live.tolist()])
        y = np.array([files[k][i].value for k in live.tolist()])
        before = eng.series.last_t[idx].copy()
        eng.ingest(idx, y, at=float(t.max()), times=t, quiet=True)
        accepted = (eng.series.last_t[idx] == t) & (before < t)
        yield i, live, accepted


def forecast_many(files: Sequence[Sequence[Row]], outs: Sequence[TextIO], horizons_s: Sequence[float],
                  model: str = "auto") -> list[int]:
    """Write ``timestamp,horizon_seconds,predicted,lower,upper`` per file: after each accepted row, once
    warm, one row per horizon (repeated or backward timestamps add nothing, so they get no row)."""
    eng, slots = _engine(len(files), horizons_s, model)
    hs = [f"{h:g}" for h in eng.horizons_s.tolist()]
    writers = [csv.writer(o, lineterminator="\n") for o in outs]
    for w in writers:
        w.writerow(["timestamp", "horizon_seconds", "predicted", "lower", "upper"])
    counts = [0] * len(files)
    for i, live, accepted in _steps(files, eng, slots):
        for k, ok in zip(live.tolist(), accepted.tolist(), strict=True):
            if not ok:
                continue
            s = int(slots[k])
            mean, lo, hi = eng.fc_mean[s], eng.fc_lower[s], eng.fc_upper[s]
            stamp = files[k][i].stamp
            for j, h in enumerate(hs):
                if math.isfinite(mean[j]) and math.isfinite(lo[j]) and math.isfinite(hi[j]):
                    writers[k].writerow([stamp, h, _fmt(mean[j]), _fmt(lo[j]), _fmt(hi[j])])
                    counts[k] += 1
    return counts


def detect_many(files: Sequence[Sequence[Row]], outs: Sequence[TextIO]) -> list[int]:
    """Write ``timestamp,value,anomaly_score`` for every input row (0 where the engine dropped the row)."""
    eng, slots = _engine(len(files), EngineSettings().horizons_s, "auto")
    writers = [csv.writer(o, lineterminator="\n") for o in outs]
    for w in writers:
        w.writerow(["timestamp", "value", "anomaly_score"])
    for i, live, accepted in _steps(files, eng, slots):
        scores = eng.anomaly_score[slots[live]]
        for k, ok, sc in zip(live.tolist(), accepted.tolist(), scores.tolist(), strict=True):
            row = files[k][i]
            score = min(max(sc, 0.0), 1.0) if ok and math.isfinite(sc) else 0.0
            writers[k].writerow([row.stamp, repr(row.value), f"{score:.9f}"])
    return [len(f) for f in files]


def write_forecast(rows: Sequence[Row], out: TextIO, horizons_s: Sequence[float], model: str = "auto") -> int:
    return forecast_many([rows], [out], horizons_s, model)[0]


def write_detect(rows: Sequence[Row], out: TextIO) -> int:
    return detect_many([rows], [out])[0]


def parse_horizons(text: str) -> tuple[float, ...]:
    """``5m,15m,30m,60m`` / ``300,900`` / ``1h`` -> seconds."""
    out = []
    for part in text.split(","):
        p = part.strip()
        if not p:
            continue
        try:
            out.append(parse_duration(p))
        except ValueError as e:
            raise InputError(f"--horizons: {e}") from None
    if not out:
        raise InputError("--horizons: give at least one horizon, e.g. 5m,15m,30m,60m")
    return tuple(out)


def parse_duration(text: str) -> float:
    """A rules-file duration (``15s``, ``5m``, ``1h30m``) or plain seconds -> seconds (> 0)."""
    from .units import parse_duration as rules_duration

    s = str(text).strip()
    try:
        v = float(s)
    except ValueError:
        v = rules_duration(s)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{text!r} must be a positive duration")
    return v
