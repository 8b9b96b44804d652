"""Series registry and bounded metric history, in arrays.

A series is one metric of one twin. Every per-series number the engine keeps
lives in a column of a preallocated array indexed by the series slot, so a
tick over thousands of twins is a handful of numpy calls, not a Python loop.
Slots of retired twins are reused.

The history ring is what the capacity fit, the what-if simulation, the replica advice and a retired twin's
return read (no forecast model does: each keeps its own state). Its length is ``history_size`` samples (the
rules' ``limits.history``, one hour by default). Its values and times are float32 offsets from a float64
reference per series (the first value and time of each lap of the ring), so a metric far from zero (a
timestamp, a counter) keeps the precision of its changes, not seven digits of its size, and a time keeps
2^-24 of the lap's span (0.2 ms in an hour's lap, 0.06 s in a week's; whole seconds exactly). The latest
sample of each series (``last_t``, ``last_v``) stays float64, and the history's newest time is ``last_t``
itself: a retired twin's return matches it exactly against ``learnt_until``.
"""

from __future__ import annotations

import numpy as np

from .models_base import grown_capacity
from .records import CORE_METRICS

#: Less apart than this, the newest stored time is the series' last time (float32 offsets round to ~0.2 ms
#: within an hour; samples are seconds apart).
_SAME_S = 0.01


def _grow(a: np.ndarray, n: int, fill: float | int | bool) -> np.ndarray:
    out = np.full((n, *a.shape[1:]), fill, dtype=a.dtype)
    out[: a.shape[0]] = a
    return out


class SeriesTable:
    """Slots, names and a ring buffer of the last ``history_size`` samples per series."""

    def __init__(self, history_size: int = 1000, capacity: int = 16) -> None:
        if history_size < 2:
            raise ValueError("history_size must be at least 2")
        self.history_size = history_size
        self._cap = max(1, capacity)
        self.keys: list[tuple[str, str] | None] = []          # slot -> (twin_id, metric)
        self.index: dict[tuple[str, str], int] = {}
        self.by_twin: dict[str, list[int]] = {}                # twin_id -> its slots, in creation order
        self._free: list[int] = []
        self.active = np.zeros(self._cap, bool)
        self.twin_slot = np.full(self._cap, -1, np.int64)      # slot -> twin ordinal
        self.nonneg = np.zeros(self._cap, bool)                # core metrics cannot be negative
        self.times = np.full((self._cap, history_size), np.nan, np.float32)    # minus tref
        self.tref = np.zeros(self._cap)
        self.values = np.full((self._cap, history_size), np.nan, np.float32)   # minus vref
        self.vref = np.zeros(self._cap)
        self.head = np.zeros(self._cap, np.int64)
        self.count = np.zeros(self._cap, np.int64)
        self.last_t = np.full(self._cap, -np.inf)
        self.last_v = np.full(self._cap, np.nan)

    @property
    def capacity(self) -> int:
        return self._cap

    def __len__(self) -> int:
        return len(self.keys)

    def _ensure(self, n: int) -> None:
        if n <= self._cap:
            return
        cap = grown_capacity(self._cap, n)
        self.active = _grow(self.active, cap, False)
        self.twin_slot = _grow(self.twin_slot, cap, -1)
        self.nonneg = _grow(self.nonneg, cap, False)
        self.times = _grow(self.times, cap, np.nan)
        self.tref = _grow(self.tref, cap, 0.0)
        self.values = _grow(self.values, cap, np.nan)
        self.vref = _grow(self.vref, cap, 0.0)
        self.head = _grow(self.head, cap, 0)
        self.count = _grow(self.count, cap, 0)
        self.last_t = _grow(self.last_t, cap, -np.inf)
        self.last_v = _grow(self.last_v, cap, np.nan)
        self._cap = cap

    def add(self, twin_id: str, metric: str, twin_slot: int) -> tuple[int, bool]:
        """The slot of (twin, metric), and whether it is new (a fresh or reused slot)."""
        key = (twin_id, metric)
        slot = self.index.get(key)
        if slot is not None:
            return slot, False
        if self._free:
            slot = self._free.pop()
            self.keys[slot] = key
        else:
            slot = len(self.keys)
            self._ensure(slot + 1)
            self.keys.append(key)
        self.index[key] = slot
        self.by_twin.setdefault(twin_id, []).append(slot)
        self.active[slot] = True
        self.twin_slot[slot] = twin_slot
        self.nonneg[slot] = metric in CORE_METRICS
        self._clear(np.array([slot]))
        return slot, True

    def _clear(self, idx: np.ndarray) -> None:
        self.times[idx] = np.nan
        self.tref[idx] = 0.0
        self.values[idx] = np.nan
        self.vref[idx] = 0.0
        self.head[idx] = 0
        self.count[idx] = 0
        self.last_t[idx] = -np.inf
        self.last_v[idx] = np.nan

    def remove(self, slots: list[int]) -> None:
        for slot in slots:
            key = self.keys[slot]
            if key is None:
                continue
            del self.index[key]
            owned = self.by_twin.get(key[0])
            if owned is not None:
                owned.remove(slot)
                if not owned:
                    del self.by_twin[key[0]]
            self.keys[slot] = None
            self.active[slot] = False
            self.twin_slot[slot] = -1
            self._free.append(slot)
        if slots:
            self._clear(np.asarray(slots, np.int64))

    def slots_of(self, twin_id: str) -> list[int]:
        return list(self.by_twin.get(twin_id, ()))

    def append(self, idx: np.ndarray, t: np.ndarray, y: np.ndarray) -> None:
        """Add one sample per listed slot (idx unique; caller has validated t and y)."""
        pos = self.head[idx]
        y = np.asarray(y, np.float64)
        t = np.asarray(t, np.float64)
        # a new lap (or the first sample): the references move to this sample and the lap before is re-based
        lap = (pos == 0) & np.isfinite(y)
        if lap.any():
            rows, ref, tref = idx[lap], y[lap], t[lap]
            full = self.count[rows] > 0           # a series' first sample has no lap before it
            if full.any():
                self.values[rows[full]] += (self.vref[rows[full]] - ref[full])[:, None]
                self.times[rows[full]] += (self.tref[rows[full]] - tref[full])[:, None]
            self.vref[rows] = ref
            self.tref[rows] = tref
        self.times[idx, pos] = t - self.tref[idx]
        self.values[idx, pos] = y - self.vref[idx]
        self.head[idx] = (pos + 1) % self.history_size
        self.count[idx] = np.minimum(self.count[idx] + 1, self.history_size)
        self.last_t[idx] = t
        self.last_v[idx] = y

    def history(self, slot: int) -> tuple[np.ndarray, np.ndarray]:
        """(times, values) of one series, oldest first (float64 copies)."""
        n = int(self.count[slot])
        order = (int(self.head[slot]) - n + np.arange(n)) % self.history_size
        times = self.times[slot, order] + self.tref[slot]
        last = float(self.last_t[slot])
        if n and abs(times[-1] - last) < _SAME_S:     # the newest sample, exact (not after a restore's cut)
            times[-1] = last
        return times, self.values[slot, order] + self.vref[slot]
