"""Offline replay: stream a ``timestamp,value`` CSV through the same engine the service runs.

This is how forecasts and anomaly scores are measured on real history
(``twin-sidecar forecast`` / ``detect``): one twin, one custom metric, rows fed
in file order, each forecast made only from rows at or before it, so running
on a prefix of a file gives the same rows for the same timestamps.
One file alone longer than a segment runs as segments side by side, each after a warm-up
(:mod:`.replay_segments`: about 20x less CPU a row, close to the chain but not identical; ``sequential``
keeps the chain).

A file is read in chunks of ``CHUNK_ROWS`` rows parsed into arrays and checked
together (:class:`CsvStream`), so memory does not grow with the file: what is
held is one chunk per file and the engine's bounded history. A timestamp that
is not finite (or past year 9999) refuses the file at its line; a value that is
not finite or beyond ``VALUE_MAX`` and a row at or before an earlier timestamp
are skipped (the engine would drop them) and counted, and each kind is reported
once at the end with how many and the line of the first.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

import numpy as np

from .engine.core import Engine
from .engine.settings import EngineSettings
from .errors import InputError
from .replay_segments import METRIC as METRIC  # the names of a replay's series, read here by the benchmarks
from .replay_segments import TWIN as TWIN
from .replay_segments import engine_for, replay_segmented

log = logging.getLogger(__name__)

#: Rows parsed, checked and fed per chunk of a file.
CHUNK_ROWS = 16_384
#: Longest line read, in bytes: a timestamp,value row is tens of bytes, and a longer one is refused at its line
#: before it is held whole.
LINE_MAX = 1 << 20
#: Largest magnitude of a value replayed. The models keep their pending forecasts as float32 (whose range ends
#: at 3.4e38): a value, its differences and their extrapolation over an hour stay well inside below this, so
#: no arithmetic overflows (and no RuntimeWarning is printed); beyond it a value is skipped and counted.
VALUE_MAX = 1e30
#: Latest timestamp accepted (9999-12-31T23:59:59Z, the last a date can show).
TIME_MAX = 253_402_300_799.0


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
    character, so splitting before decoding is safe. A line longer than ``LINE_MAX`` is refused at its own
    line number before more of it is read."""
    line = 0
    while data := raw.readline(LINE_MAX + 1):
        line += 1
        if len(data) > LINE_MAX and not data.endswith(b"\n"):
            raise InputError(f"{p}:{line}: line longer than {LINE_MAX:,} bytes; expected a 'timestamp,value' row")
        try:
            yield data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{p}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column {e.start + 1}); "
                             "expected a 'timestamp,value' CSV") from None


def _fields(text: str) -> list[str]:
    """One line's fields: split on commas, or by the csv module when the line quotes (one line, one row)."""
    if '"' not in text:
        return text.rstrip("\r\n").split(",")
    return next(csv.reader([text]), [])


def _parsed_lines(path: str | Path) -> Iterator[tuple[int, str, float, float]]:
    """(line, timestamp as written, unix seconds, value) of every data row; ``InputError`` with file:line for a
    malformed one (columns, timestamp, value, a bad byte, a line too long)."""
    p = str(path)
    try:
        raw = open(p, "rb")  # noqa: SIM115 - closed by the with below, after the open error is reported
    except OSError as e:
        raise InputError(f"{p}: cannot open ({e.strerror})") from e
    with raw:
        lines = _decoded_lines(p, raw)
        try:
            first = next(lines)
        except StopIteration:
            raise InputError(f"{p}:1: empty file, expected a header 'timestamp,value'") from None
        try:
            header = [h.strip().lstrip("\ufeff") for h in _fields(first)]
        except csv.Error as e:
            raise InputError(f"{p}:1: {e}") from e
        if "timestamp" not in header or "value" not in header:
            raise InputError(f"{p}:1: header must contain 'timestamp' and 'value', got {','.join(header)!r}")
        it, iv = header.index("timestamp"), header.index("value")
        need = max(it, iv) + 1
        for line, text in enumerate(lines, start=2):
            try:
                rec = _fields(text)
            except csv.Error as e:
                raise InputError(f"{p}:{line}: {e}") from e
            if not rec or all(not c.strip() for c in rec):
                continue
            if len(rec) < need:
                raise InputError(f"{p}:{line}: expected {need} columns, got {len(rec)}")
            try:
                t = parse_time(rec[it])
            except ValueError as e:
                raise InputError(f"{p}:{line}: {e}") from e
            if not math.isfinite(t) or abs(t) > TIME_MAX:
                raise InputError(f"{p}:{line}: timestamp {rec[it].strip()[:40]!r} is not a time "
                                 "(not finite, or past the year 9999)")
            try:
                v = float(rec[iv])
            except ValueError:
                raise InputError(f"{p}:{line}: value {rec[iv][:40]!r} is not a number") from None
            yield line, rec[it].strip(), t, v


def read_rows(path: str | Path) -> Iterator[Row]:
    """Rows of a ``timestamp,value`` CSV, streamed; a malformed row raises ``InputError`` naming file and line."""
    for line, stamp, t, v in _parsed_lines(path):
        yield Row(line, stamp, t, v)


def load(path: str | Path) -> list[Row]:
    """Every row of a file, in memory (small files, tests); the commands stream with :class:`CsvStream`."""
    rows = list(read_rows(path))
    if not rows:
        raise InputError(f"{path}: no data rows")
    return rows


@dataclass(slots=True)
class Chunk:
    """Consecutive rows of one file as arrays; ``fed``: the rows the engine takes (the rest are skipped)."""

    line: np.ndarray        # int64
    stamp: list[str]        # the timestamps as written, echoed in outputs
    t: np.ndarray           # unix seconds
    y: np.ndarray
    fed: np.ndarray         # bool


@dataclass(slots=True)
class _Skipped:
    rows: int = 0
    first_line: int = 0

    def add(self, lines: np.ndarray) -> None:
        if lines.size:
            if not self.rows:
                self.first_line = int(lines[0])
            self.rows += int(lines.size)


class CsvStream:
    """A ``timestamp,value`` CSV (or rows already in memory) as chunks of checked rows, read once.

    Per row: a value that is not finite or beyond ``VALUE_MAX`` is skipped; so is a row at or before the
    latest timestamp taken so far (unsorted or repeated: the engine learns from time going forward). Both
    are counted; :meth:`report` logs one warning per kind with the count and the first line, once the file
    has been read.
    """

    def __init__(self, source: str | Path | Sequence[Row], *, chunk_rows: int = CHUNK_ROWS) -> None:
        self.source = source
        self.name = str(source) if isinstance(source, str | Path) else "<rows>"
        self.chunk_rows = chunk_rows
        self.rows = 0
        self.bad_values = _Skipped()
        self.backwards = _Skipped()
        self._latest = -math.inf

    def chunks(self) -> Iterator[Chunk]:
        rows: Iterator[tuple[int, str, float, float]] = (
            _parsed_lines(self.source) if isinstance(self.source, str | Path)
            else ((r.line, r.stamp, r.t, r.value) for r in self.source))
        while True:
            part = [r for _, r in zip(range(self.chunk_rows), rows, strict=False)]
            if not part:
                if self.rows == 0:
                    raise InputError(f"{self.name}: no data rows")
                return
            yield self._chunk(part)

    def _chunk(self, part: list[tuple[int, str, float, float]]) -> Chunk:
        line = np.fromiter((r[0] for r in part), np.int64, len(part))
        t = np.fromiter((r[2] for r in part), np.float64, len(part))
        y = np.fromiter((r[3] for r in part), np.float64, len(part))
        self.rows += len(part)
        with np.errstate(invalid="ignore"):
            sane = np.isfinite(y) & (np.abs(y) <= VALUE_MAX)
        # a row goes forward if its time is after every earlier sane row's (the engine's rule, as a running
        # maximum: a sane row that does not go forward never raises that maximum)
        before = np.maximum.accumulate(np.where(sane, t, -np.inf))
        prev = np.concatenate(([self._latest], np.maximum(before[:-1], self._latest)))
        forward = t > prev
        self._latest = max(self._latest, float(before[-1]))
        self.bad_values.add(line[~sane])
        self.backwards.add(line[sane & ~forward])
        return Chunk(line, [r[1] for r in part], t, y, sane & forward)

    def report(self) -> None:
        """One warning per kind of skipped row: how many, and where the first is."""
        if self.bad_values.rows:
            log.warning("%s:%d: %d value(s) not finite or beyond +-%g skipped, the first on this line (no forecast "
                        "from them; anomaly score 0)", self.name, self.bad_values.first_line, self.bad_values.rows,
                        VALUE_MAX)
        if self.backwards.rows:
            log.warning("%s:%d: %d row(s) at or before an earlier timestamp skipped, the first on this line: the "
                        "file is not sorted by time, or repeats a timestamp (no forecast from them; anomaly score "
                        "0)", self.name, self.backwards.first_line, self.backwards.rows)


def read_arrays(path: str | Path) -> tuple[np.ndarray, np.ndarray, CsvStream]:
    """The rows the engine would take, as (t, y) arrays (16 bytes a row), and the stream that counted the rest."""
    stream = CsvStream(path)
    ts, ys = [], []
    for c in stream.chunks():
        ts.append(c.t[c.fed])
        ys.append(c.y[c.fed])
    return np.concatenate(ts), np.concatenate(ys), stream


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


Source = str | Path | Sequence[Row]


def _lockstep(streams: Sequence[CsvStream], eng: Engine, slots: np.ndarray
              ) -> Iterator[tuple[int, Chunk, int, bool]]:
    """Feed row i of every file in one vectorised call; yield (file, chunk, row in chunk, taken) per row.

    Series never share state, so each file's results are exactly those of a run on it alone. Only the rows
    a stream marks ``fed`` reach the engine (the rest it would drop); each file holds one chunk at a time.
    """
    its = [s.chunks() for s in streams]
    chunks: list[Chunk | None] = [next(it, None) for it in its]
    pos = [0] * len(streams)
    live = [k for k, c in enumerate(chunks) if c is not None]
    while live:
        now = []
        for k in live:
            c = chunks[k]
            assert c is not None
            now.append((k, c, pos[k]))
        fed = [(k, c, i) for k, c, i in now if c.fed[i]]
        taken: set[int] = set()
        if fed:
            idx = slots[[k for k, _, _ in fed]]
            t = np.array([c.t[i] for _, c, i in fed])
            y = np.array([c.y[i] for _, c, i in fed])
            eng.ingest(idx, y, at=float(t.max()), times=t, quiet=True)
            ok = eng.series.last_t[idx] == t
            taken = {k for (k, _, _), good in zip(fed, ok.tolist(), strict=True) if good}
        for k, c, i in now:
            yield k, c, i, k in taken
        still = []
        for k in live:
            pos[k] += 1
            c = chunks[k]
            assert c is not None
            if pos[k] >= c.line.size:
                chunks[k], pos[k] = next(its[k], None), 0
            if chunks[k] is not None:
                still.append(k)
        live = still
    for stream in streams:
        stream.report()


def _streams(sources: Sequence[Source | CsvStream]) -> list[CsvStream]:
    return [s if isinstance(s, CsvStream) else CsvStream(s) for s in sources]


def forecast_many(sources: Sequence[Source | CsvStream], outs: Sequence[TextIO], horizons_s: Sequence[float],
                  model: str = "auto", *, sequential: bool = False) -> list[int]:
    """Write ``timestamp,horizon_seconds,predicted,lower,upper`` per file: after each row the engine takes, once
    warm, one row per horizon (skipped rows, repeated or backward timestamps add nothing, so they get no row).
    Files (paths, streamed) or rows in memory; returns the rows written per file. One file alone is replayed
    in segments side by side (:mod:`.replay_segments`) unless ``sequential``; several files side by side,
    each as one chain."""
    streams = _streams(sources)
    if len(streams) == 1 and not sequential:
        return [replay_segmented(streams[0], outs[0], "forecast", horizons_s, model)]
    eng, slots = engine_for(len(streams), horizons_s, model)
    hs = [f"{h:g}" for h in eng.horizons_s.tolist()]
    writers = [csv.writer(o, lineterminator="\n") for o in outs]
    for w in writers:
        w.writerow(["timestamp", "horizon_seconds", "predicted", "lower", "upper"])
    counts = [0] * len(streams)
    for k, chunk, i, taken in _lockstep(streams, eng, slots):
        if not taken:
            continue
        s = int(slots[k])
        mean, lo, hi = eng.fc_mean[s], eng.fc_lower[s], eng.fc_upper[s]
        stamp = chunk.stamp[i]
        for j, h in enumerate(hs):
            if math.isfinite(mean[j]) and math.isfinite(lo[j]) and math.isfinite(hi[j]):
                writers[k].writerow([stamp, h, _fmt(mean[j]), _fmt(lo[j]), _fmt(hi[j])])
                counts[k] += 1
    return counts


def detect_many(sources: Sequence[Source | CsvStream], outs: Sequence[TextIO], *,
                sequential: bool = False) -> list[int]:
    """Write ``timestamp,value,anomaly_score`` for every input row (0 where the row was skipped); one file
    alone in segments unless ``sequential`` (as :func:`forecast_many`)."""
    streams = _streams(sources)
    if len(streams) == 1 and not sequential:
        return [replay_segmented(streams[0], outs[0], "detect", EngineSettings().horizons_s)]
    eng, slots = engine_for(len(streams), EngineSettings().horizons_s, "auto")
    writers = [csv.writer(o, lineterminator="\n") for o in outs]
    for w in writers:
        w.writerow(["timestamp", "value", "anomaly_score"])
    counts = [0] * len(streams)
    for k, chunk, i, taken in _lockstep(streams, eng, slots):
        sc = float(eng.anomaly_score[slots[k]]) if taken else 0.0
        score = min(max(sc, 0.0), 1.0) if math.isfinite(sc) else 0.0
        writers[k].writerow([chunk.stamp[i], repr(float(chunk.y[i])), f"{score:.9f}"])
        counts[k] += 1
    return counts


def write_forecast(rows: Source, out: TextIO, horizons_s: Sequence[float], model: str = "auto", *,
                   sequential: bool = False) -> int:
    return forecast_many([rows], [out], horizons_s, model, sequential=sequential)[0]


def write_detect(rows: Source, out: TextIO, *, sequential: bool = False) -> int:
    return detect_many([rows], [out], sequential=sequential)[0]


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
