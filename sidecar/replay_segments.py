"""Segmented replay: one long file as segments that run side by side, as series of one engine.

Why: the engine is vectorised across series, and a tick of one series costs nearly as much as a tick of
sixty-four (numpy's fixed cost per call dominates), so one file fed row by row runs about 1.5 ms a row. Here
a file's rows are split at fixed positions from its start into segments of ``SEGMENT_ROWS`` rows; each
segment is one series of an engine and starts ``WARMUP_ROWS`` rows before its first row (the warm-up: the
models learn from those rows, whose outputs are discarded); ``BLOCK_SEGMENTS`` segments run in lockstep,
one vectorised tick for a row of each. A segment reads only rows before and within itself, and the
boundaries are row positions, so replaying a prefix of a file gives the same rows for the same timestamps.
The first segment has no warm-up: a file of at most ``SEGMENT_ROWS`` rows is replayed exactly as the
sequential path does (``sequential=True`` replays every file that way).

What differs from the sequential chain: a segment's models remember only its warm-up, not the whole file
before it (how much that changes forecasts and scores is measured in ``benchmarks/README.md``). The warm-up
covers what the models hold: the weekly profile's week and the daily profile's slow mean (a day's weight
0.1) at one sample a minute, the running backtest's ~150 scored forecasts per horizon and the anomaly
histograms' 2,000-sample memory, ten times over.

Memory: one block (``BLOCK_SEGMENTS`` x ``SEGMENT_ROWS`` rows and the warm-up before it) held as arrays, its
timestamps joined in pieces of ``_PIECE`` (about 40 bytes a row), whatever the file's length. The first
segment of a block writes straight to the output; the others spool to temporary files that are copied out
in file order once the block is done.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

import numpy as np

from .engine.core import Engine
from .engine.settings import EngineSettings

METRIC = "value"
TWIN = "replay"

#: Rows per segment, counted from the first data row of the file: at least the longest NAB file (22,695
#: rows), so those replay exactly as the sequential path does.
SEGMENT_ROWS = 32_768
#: Rows replayed before a segment, outputs discarded: 11.4 days at one sample a minute.
WARMUP_ROWS = 16_384
#: Segments replayed side by side (one tick of the engine carries a row of each).
BLOCK_SEGMENTS = 64
#: Timestamps kept joined in pieces of this many rows (a Python string per row would cost ~75 bytes).
_PIECE = 1024


class Rows(Protocol):
    """What a segmented replay reads: ``replay.CsvStream`` (its chunks of checked rows, and the report of the
    rows it skipped, made once they have all been read)."""

    def chunks(self) -> Iterator[Any]: ...

    def report(self) -> None: ...


def engine_for(n: int, horizons_s: Sequence[float], model: str) -> tuple[Engine, np.ndarray]:
    """An engine of ``n`` one-metric twins, and their series slots (a file, or a segment of one, each)."""
    eng = Engine(EngineSettings(horizons_s=tuple(horizons_s), model=model))
    slots = np.empty(n, np.int64)
    for i in range(n):
        name = f"{TWIN}-{i}"
        eng.create_twin(name, at=0.0)
        slots[i] = eng.series_for(name, [METRIC])[0]
    return eng, slots


@dataclass(slots=True)
class Block:
    """Rows ``start - lead .. start + rows - 1`` of a file: the warm-up (``lead`` rows) and the block's own
    rows, whose timestamps as written are kept joined in pieces of ``_PIECE``."""

    start: int
    lead: int
    rows: int
    t: np.ndarray
    y: np.ndarray
    fed: np.ndarray
    pieces: list[str]

    def stamps(self, piece: int) -> list[str]:
        return self.pieces[piece].split("\n")


class _Pieces:
    """Timestamps joined ``_PIECE`` at a time as they arrive."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.pending: list[str] = []

    def extend(self, stamps: list[str]) -> None:
        self.pending.extend(stamps)
        while len(self.pending) >= _PIECE:
            self.pieces.append("\n".join(self.pending[:_PIECE]))
            del self.pending[:_PIECE]

    def take(self) -> list[str]:
        if self.pending:
            self.pieces.append("\n".join(self.pending))
        out, self.pieces, self.pending = self.pieces, [], []
        return out


def blocks(stream: Rows, rows: int, warm: int) -> Iterator[Block]:
    """The stream's rows ``rows`` at a time, each block with up to ``warm`` rows before it, filled in place
    (read once; one block, its warm-up and one chunk are held)."""
    tail = (np.empty(0), np.empty(0), np.empty(0, bool))
    pieces = _Pieces()
    start = n = 0
    arrays: tuple[np.ndarray, ...] = ()

    def cut() -> Block:
        nonlocal tail, start, n, arrays
        lead = tail[0].size
        t, y, fed = (a[: lead + n] for a in arrays)
        block = Block(start, lead, n, t, y, fed, pieces.take())
        keep = min(warm, t.size)
        tail = (t[t.size - keep:].copy(), y[y.size - keep:].copy(), fed[fed.size - keep:].copy())
        start, n, arrays = start + n, 0, ()
        return block

    for c in stream.chunks():
        lo, m = 0, c.line.size
        while lo < m:
            if not arrays:
                lead = tail[0].size
                arrays = (np.empty(lead + rows), np.empty(lead + rows), np.empty(lead + rows, bool))
                for a, old in zip(arrays, tail, strict=True):
                    a[:lead] = old
            hi = lo + min(rows - n, m - lo)
            at = tail[0].size + n
            for a, src in zip(arrays, (c.t, c.y, c.fed), strict=True):
                a[at: at + hi - lo] = src[lo:hi]
            pieces.extend(c.stamp[lo:hi])
            n += hi - lo
            lo = hi
            if n == rows:
                yield cut()
    if n:
        yield cut()


class _Lanes:
    """The segments of one block: where each one's rows start and end in the block's arrays, and which of
    them produce output (the rest is warm-up)."""

    def __init__(self, block: Block, seg: int, warm: int) -> None:
        k = -(-block.rows // seg)
        first = block.start + seg * np.arange(k)            # file row of each segment's first output row
        self.out0 = first - block.start + block.lead        # its place in the block's arrays
        self.begin = np.maximum(self.out0 - warm, 0)
        self.end = np.minimum(self.out0 + seg, block.lead + block.rows)
        self.k = k
        # lanes start together and a lane with less warm-up (the file's first) starts later; all end together
        self.offset = (self.end - self.begin).max() - (self.end - self.begin)
        self.ticks = int((self.end - self.begin).max())


def _spools(k: int, out: TextIO) -> list[TextIO]:
    """Where each lane writes: the first lane to the output, the others to temporary files."""
    return [out, *(tempfile.TemporaryFile("w+", encoding="utf-8", newline="") for _ in range(k - 1))]


def _drain(spools: Sequence[TextIO], out: TextIO) -> None:
    for f in spools[1:]:
        f.seek(0)
        shutil.copyfileobj(f, out)
        f.close()


def _run(block: Block, lanes: _Lanes, horizons_s: Sequence[float], model: str, out: TextIO, kind: str) -> int:
    """Replay one block's lanes in lockstep, writing each lane's rows in file order; rows written."""
    eng, slots = engine_for(lanes.k, horizons_s, model)
    spools = _spools(lanes.k, out)
    writers = [csv.writer(f, lineterminator="\n") for f in spools]
    hs = [f"{h:g}" for h in eng.horizons_s.tolist()]
    cache: list[tuple[int, list[str]]] = [(-1, [])] * lanes.k
    count = 0
    lane_ids = np.arange(lanes.k)
    try:
        for tick in range(lanes.ticks):
            rel = tick - lanes.offset
            live = (rel >= 0) & (lanes.begin + rel < lanes.end)
            ln = lane_ids[live]
            r = lanes.begin[ln] + rel[ln]
            fed = block.fed[r]
            taken = np.zeros(ln.size, bool)
            if fed.any():
                idx = slots[ln[fed]]
                t = block.t[r[fed]]
                eng.ingest(idx, block.y[r[fed]], at=float(t.max()), times=t, quiet=True)
                taken[fed] = eng.series.last_t[idx] == t
            shown = r >= lanes.out0[ln]
            if not shown.any():
                continue
            ln, r, taken = ln[shown], r[shown], taken[shown]
            o = (r - block.lead).tolist()                    # the row's place among the block's own rows
            if kind == "detect":
                sc = np.where(taken, eng.anomaly_score[slots[ln]], 0.0)
                sc = np.where(np.isfinite(sc), np.clip(sc, 0.0, 1.0), 0.0)
                for lane, row, s, y in zip(ln.tolist(), o, sc.tolist(), block.y[r].tolist(), strict=True):
                    writers[lane].writerow([_stamp(block, cache, lane, row), repr(y), f"{s:.9f}"])
                    count += 1
                continue
            if not taken.any():
                continue
            ln, o = ln[taken], [x for x, ok in zip(o, taken.tolist(), strict=True) if ok]
            s = slots[ln]
            mean, lo, hi = eng.fc_mean[s], eng.fc_lower[s], eng.fc_upper[s]
            ok = (np.isfinite(mean) & np.isfinite(lo) & np.isfinite(hi)).tolist()
            for lane, row, m, a, b, good in zip(ln.tolist(), o, mean.tolist(), lo.tolist(), hi.tolist(), ok,
                                                strict=True):
                stamp = _stamp(block, cache, lane, row)
                w = writers[lane]
                for j, h in enumerate(hs):
                    if good[j]:
                        w.writerow([stamp, h, repr(m[j]), repr(a[j]), repr(b[j])])
                        count += 1
        _drain(spools, out)
    finally:
        for f in spools[1:]:
            f.close()
    return count


def _stamp(block: Block, cache: list[tuple[int, list[str]]], lane: int, row: int) -> str:
    """The timestamp as written of the block's row ``row``, the lane's current piece split once."""
    piece, off = divmod(row, _PIECE)
    if cache[lane][0] != piece:
        cache[lane] = (piece, block.stamps(piece))
    return cache[lane][1][off]


def replay_segmented(stream: Rows, out: TextIO, kind: str, horizons_s: Sequence[float] = (),
                     model: str = "auto", *, seg: int | None = None, warm: int | None = None,
                     lanes: int | None = None) -> int:
    """Write a ``forecast`` or ``detect`` replay of one file (its header first); returns the rows written.
    ``seg``, ``warm``, ``lanes``: the segment's rows, its warm-up's and the segments side by side (by default
    ``SEGMENT_ROWS``, ``WARMUP_ROWS``, ``BLOCK_SEGMENTS``)."""
    seg = SEGMENT_ROWS if seg is None else seg
    warm = WARMUP_ROWS if warm is None else warm
    lanes = BLOCK_SEGMENTS if lanes is None else lanes
    header: dict[str, list[Any]] = {"forecast": ["timestamp", "horizon_seconds", "predicted", "lower", "upper"],
                                    "detect": ["timestamp", "value", "anomaly_score"]}
    csv.writer(out, lineterminator="\n").writerow(header[kind])
    settings_h = tuple(horizons_s)
    count = 0
    for block in blocks(stream, seg * lanes, warm):
        count += _run(block, _Lanes(block, seg, warm), settings_h, model, out, kind)
    stream.report()
    return count

