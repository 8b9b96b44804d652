"""What each time of day looks like for many series: the anomaly detector's daily habits and its context.

Per series and per time-of-day bin (an hour by default) two memories, both O(1) per sample and vectorised
across series:

- **Daily habits**: the deviation from the baseline that bin has reached on *every* recent day (each day's
  largest deviation within a bin either side: jobs do not start to the minute). When the day changes, the
  remembered value falls at once to that day's if smaller (one quiet day is enough to stop excusing) and
  rises only slowly, over ``days`` days, if larger (one bad night is not a habit). A deviation that
  recurs daily (a nightly backup, a morning batch) is then judged against it and counts as ordinary.
- **Context**: the deviation from the baseline the bin usually shows (the cycle's shape, not its level: a
  new level moves the baseline and leaves the shape alone) and its spread, a Huber-clipped mean and mean
  absolute deviation over about ``days`` days of that bin. A value ordinary in magnitude and wrong
  for its place in the day (a day whose cycle stays flat, skips its rise or comes hours late) is far from
  it. Brief and lasting are told apart by time: a change that persists at that hour is learnt into the
  bin over days (clipped per sample, so one bad day moves it by a few spreads).
- **Weekdays**: the amplitude each weekday's days usually show against that shape (a least-squares factor
  of the shape, from the clipped deviations of that weekday's samples), so a day is judged against what its
  weekday usually shows, not against a shape averaged with shallower weekends (whose spread would hide a
  weekday that stays flat). A day is folded into its
  weekday's memory when it ends (over ``days`` of that weekday), so a day never excuses itself; a weekday
  speaks once two days of it (each with a context for at least half its samples) have been seen, as a bin
  speaks after two days; until then its factor is 1.
- **Bursts at any hour**: per series, the largest miss of the context reached on *every* recent day (falls at
  once, rises over ``days`` days, as the habits do). Bursts that recur a few times a day at random hours (event
  counts, ad clicks) reach it every day, so the detector can count one as large as that as ordinary.

The bin's sample rate comes from the series' own sampling interval, so an hourly series (one sample per
bin a day) learns in days, like a 1-minute one. ``t`` only places a sample in its day; a sample without a
time (NaN) closes no day and teaches nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
B = NDArray[np.bool_]

DAY_S = 86400.0
MAD_TO_SD = 1.2533  # standard deviation / mean absolute deviation for a normal law
# w*: today's sums for its weekday's amplitude, folded in when the day ends
# m*: today's largest miss of the context, the one reached on every recent day, and today's samples with a context
SCALARS = ("day", "tlast", "gap", "rs", "wxy", "wxx", "wn", "mtoday", "mdaily", "mn")
WEEKDAY_OF_DAY_0 = 3  # 1970-01-01 was a Thursday (Monday is 0)


class TimeOfDay:
    """Daily habits and contextual expectation per (series, time-of-day bin); rows grow with the bank.

    >>> tod = TimeOfDay(capacity=2, bins=24, days=7.0, contextual=True, short_samples=12.0, clip=3.0)
    >>> idx = np.arange(2)
    >>> cells = tod.cells(idx, np.array([0.0, 3600.0]), np.array([True, True]))
    >>> cells[:, 1].tolist()   # each sample's own bin, flat: series 0 hour 0, series 1 hour 1
    [0, 25]
    """

    def __init__(self, *, capacity: int, bins: int, days: float, contextual: bool, short_samples: float,
                 clip: float, weekdays: bool = True) -> None:
        self.bins = max(int(bins), 0)
        self.contextual = self.bins > 0 and contextual
        self._days = days
        self._a_day = 1.0 / days
        self._a_short = 1.0 / short_samples
        self._level_gain = float(np.sqrt(2.0 * short_samples - 1.0) / 2.0)
        self._clip = clip
        self._f: dict[str, F64] = {k: np.zeros(capacity) for k in SCALARS}
        # today's largest deviation, and the one reached on every recent day (-1: none yet); float32 is
        # precise enough for an excuse and keeps a series near 1 kB
        self._today = np.full((capacity, self.bins), -1.0, dtype=np.float32)
        self._daily = np.full((capacity, self.bins), -1.0, dtype=np.float32)
        # per bin: the expected deviation from the baseline there, its typical spread and the visits that taught it
        self._cstate = np.zeros((capacity, 3, self.bins if self.contextual else 0), dtype=np.float32)
        # per weekday: decayed means of (deviation x shape) and (shape x shape), and the samples that taught them
        self._wstate = np.zeros((capacity, 3, 7 if self.contextual and weekdays else 0), dtype=np.float32)

    def grow(self, n: int, cap: int) -> None:
        """Room for ``cap`` series, the first ``n`` kept."""
        self._f = {k: _grown(v, n, cap) for k, v in self._f.items()}
        self._today = _grown_rows(self._today, n, cap)
        self._daily = _grown_rows(self._daily, n, cap)
        cstate = np.zeros((cap, *self._cstate.shape[1:]), dtype=np.float32)
        cstate[:n] = self._cstate[:n]
        self._cstate = cstate
        wstate = np.zeros((cap, *self._wstate.shape[1:]), dtype=np.float32)
        wstate[:n] = self._wstate[:n]
        self._wstate = wstate

    def reset(self, idx: I64) -> None:
        for v in self._f.values():
            v[idx] = 0.0
        self._today[idx] = -1.0
        self._daily[idx] = -1.0
        self._cstate[idx] = 0.0
        self._wstate[idx] = 0.0

    def cells(self, idx: I64, t: F64, timed: B) -> I64 | None:
        """Flat indices of each sample's time-of-day bin and its two neighbours (column 1 is its own),
        after closing the day of every series whose day has changed; None when the memory is off.
        Samples without a time (``timed`` false) close no day; the caller ignores their cells."""
        nb = self.bins
        if nb == 0:
            return None
        day = np.floor(t / DAY_S)
        new = np.flatnonzero((day != self._f["day"][idx]) & timed)
        if new.size:
            s = idx[new]
            self._fold_weekday(s)
            seen, daily = self._today[s], self._daily[s]
            # falls at once (one quiet day ends the excuse), rises over ``days`` days
            rise = daily + np.float32(self._a_day) * (seen - daily)
            self._daily[s] = np.where(seen < 0.0, daily, np.where((daily < 0.0) | (seen < daily), seen, rise))
            self._today[s] = -1.0
            self._fold_miss(s)
            self._f["day"][s] = day[new]
        h = np.minimum((t - day * DAY_S) * (nb / DAY_S), nb - 1).astype(np.int64)
        return idx[:, None] * nb + (h[:, None] + np.arange(-1, 2)) % nb

    def _fold_miss(self, s: I64) -> None:
        """The day just ended's largest miss of the context becomes the one reached every day if smaller (or
        the first), and moves toward it over ``days`` days if larger; a day without a context leaves it."""
        f = self._f
        seen, daily = f["mtoday"][s], f["mdaily"][s]
        rise = daily + self._a_day * (seen - daily)
        f["mdaily"][s] = np.where(f["mn"][s] > 0.0, np.where((daily <= 0.0) | (seen < daily), seen, rise), daily)
        f["mtoday"][s] = 0.0
        f["mn"][s] = 0.0

    def miss_habit(self, idx: I64) -> F64:
        """The miss of the context each series has reached on every recent day (bursts that recur at random
        hours, a few a day: 0 until a day with a context has ended)."""
        return self._f["mdaily"][idx]

    def _fold_weekday(self, s: I64) -> None:
        """Fold the day just ended of series ``s`` into its weekday's amplitude (a day with a context for at
        least half of its samples), and start today's sums afresh."""
        if self._wstate.shape[2] == 0:
            return
        f = self._f
        n, gap = f["wn"][s], f["gap"][s]
        full = np.flatnonzero((n > 0.0) & (n >= 0.5 * DAY_S / np.where(gap > 0.0, gap, DAY_S)))
        if full.size:
            r = s[full]
            cell = r * 21 + (f["day"][r].astype(np.int64) + WEEKDAY_OF_DAY_0) % 7
            flat = self._wstate.reshape(-1)
            k = flat[cell + 14].astype(np.float64)
            b = np.maximum(1.0 / (k + 1.0), self._a_day)
            for j, key in ((0, "wxy"), (7, "wxx")):
                old = flat[cell + j].astype(np.float64)
                flat[cell + j] = old + b * (f[key][r] / n[full] - old)
            flat[cell + 14] = k + 1.0
        for key in ("wxy", "wxx", "wn"):
            f[key][s] = 0.0

    def habit(self, cells: I64, timed: B) -> F64:
        """The deviation each sample's bin has reached on every recent day (0 when none or untimed)."""
        return np.where(timed, self._daily.reshape(-1)[cells[:, 1]], 0.0)

    def remember(self, cells: I64, timed: B, deviation: F64) -> None:
        """Today's largest deviation, spread a bin either side."""
        today = self._today.reshape(-1)
        today[cells] = np.maximum(today[cells], np.where(timed, deviation, -1.0)[:, None])

    def context(self, idx: I64, t: F64, timed: B, own: I64, dx: F64, dxs: F64, floor: F64,
                cnt: I64) -> tuple[F64, F64, B, F64, Callable[[], None]]:
        """One sample's distance from its bin's expectation and the mean distance over the last
        ``short_samples`` (both in the bin's spreads), which samples' contexts can speak yet, the spread of
        each sample's context, and the function that then learns the sample.

        ``dx`` is the deviation from the baseline scored, ``dxs`` the one learnt (a glitch held back). A bin
        speaks after two days, and until then its features are 0 (the caller keeps them out of its
        histograms: a histogram of zeros would make its first real values look extreme)."""
        f = self._f
        nb = self.bins
        tlast, gap = f["tlast"][idx], f["gap"][idx]
        step = t - tlast
        ok = timed & (tlast > 0.0) & (step > 0.0)
        gap = np.where(ok, np.where(gap > 0.0, gap + 0.05 * (np.where(ok, step, gap) - gap), step), gap)
        f["tlast"][idx] = np.where(timed, t, tlast)
        f["gap"][idx] = gap
        per_bin = np.maximum(DAY_S / nb / np.where(gap > 0.0, gap, DAY_S), 1.0)
        day_cell = idx * (3 * nb) + own % nb
        flat = self._cstate.reshape(-1)
        cw_d = flat[day_cell + 2 * nb].astype(np.float64)
        cm = flat[day_cell].astype(np.float64)
        cd = flat[day_cell + nb].astype(np.float64)

        ready = timed & (cw_d >= 2.0 * per_bin)
        csig = np.maximum(MAD_TO_SD * cd, floor)
        amp, learn_amp = self._weekday(idx, t, timed & ready, cm, csig)
        expect = amp * cm
        rs = f["rs"][idx]
        # each residual in its own bin's spread: a window spans hours of different spreads (an hourly
        # series' short window is half a day), and a busy afternoon's burst must not count at night's scale
        rs_new = np.where(ready, rs + self._a_short * ((dxs - expect) / csig - rs), 0.0)
        f["rs"][idx] = rs_new
        value = np.where(ready, np.abs(dx - expect) / csig, 0.0)
        level = np.where(ready, np.abs(rs_new) * self._level_gain, 0.0)

        def learn() -> None:
            learn_amp(dxs)
            go = timed & (cnt >= 1)
            c = day_cell[go]
            w = cw_d[go]
            clip = np.where(w >= per_bin[go], self._clip * csig[go], np.inf)
            # the shape learns every day's deviation; the spread, the miss of this weekday's expectation
            e = np.clip(dxs[go] - cm[go], -clip, clip)
            miss = np.clip(dxs[go] - expect[go], -clip, clip)
            a = np.maximum(1.0 / (w + 1.0), 1.0 / (per_bin[go] * self._days))
            flat[c] = cm[go] + a * e
            flat[c + nb] = cd[go] + a * (np.abs(miss) - cd[go])
            flat[c + 2 * nb] = w + 1.0
            r = idx[ready]
            f["mtoday"][r] = np.maximum(f["mtoday"][r], np.abs(dxs - expect)[ready])
            f["mn"][r] += 1.0
        return value, level, ready, csig, learn

    def _weekday(self, idx: I64, t: F64, ready: B, cm: F64, csig: F64) -> tuple[F64, Callable[[F64], None]]:
        """Each sample's weekday amplitude (1 where off or not yet learnt), and the function that adds the
        deviations then scored to today's sums (each clipped to a few of its bin's spreads around the
        expectation, so one odd hour moves the day's amplitude little)."""
        if self._wstate.shape[2] == 0:
            return np.ones(idx.size), lambda dxs: None
        wd = (np.floor(np.where(ready, t, 0.0) / DAY_S).astype(np.int64) + WEEKDAY_OF_DAY_0) % 7
        cell = idx * 21 + wd
        flat = self._wstate.reshape(-1)
        sxy, sxx, k = (flat[cell + j].astype(np.float64) for j in (0, 7, 14))
        amp = np.where((k >= 2.0) & (sxx > 0.0), sxy / np.where(sxx > 0.0, sxx, 1.0), 1.0)

        def learn(dxs: F64) -> None:
            go = np.flatnonzero(ready)
            r = idx[go]
            expect = amp[go] * cm[go]
            got = expect + np.clip(dxs[go] - expect, -self._clip * csig[go], self._clip * csig[go])
            f = self._f
            f["wxy"][r] += got * cm[go]
            f["wxx"][r] += cm[go] * cm[go]
            f["wn"][r] += 1.0
        return amp, learn

    def state_dict(self, n: int, *, copy: bool = True) -> dict[str, np.ndarray]:
        """The first ``n`` series' rows: copies, or views with ``copy=False`` (a caller taking a few rows)."""
        out: dict[str, np.ndarray] = {k: v[:n] for k, v in self._f.items()}
        out["today"] = self._today[:n]
        out["daily"] = self._daily[:n]
        out["context"] = self._cstate[:n]
        out["weekday"] = self._wstate[:n]
        return {k: v.copy() for k, v in out.items()} if copy else out

    def load_state_dict(self, state: dict[str, np.ndarray], n: int, cap: int) -> None:
        """Rows of ``n`` series; the time scalars, the context and the weekdays of a state saved before them
        start afresh."""
        today = np.asarray(state["today"], dtype=np.float32)
        if today.shape != (n, self.bins):
            raise ValueError(f"daily state has shape {today.shape}, this bank needs {(n, self.bins)}")
        shape = (n, *self._cstate.shape[1:])
        ctx = np.asarray(state["context"], dtype=np.float32) if "context" in state else np.zeros(shape, np.float32)
        if ctx.shape != shape:
            raise ValueError(f"context state has shape {ctx.shape}, this bank needs {shape}")
        self._f = {k: _grown(np.asarray(state[k], dtype=np.float64) if k in state else np.zeros(n), n, cap)
                   for k in SCALARS}
        self._today = _grown_rows(today, n, cap)
        self._daily = _grown_rows(np.asarray(state["daily"], dtype=np.float32), n, cap)
        self._cstate = np.zeros((cap, *shape[1:]), dtype=np.float32)
        self._cstate[:n] = ctx
        wshape = (n, *self._wstate.shape[1:])
        week = np.asarray(state["weekday"], dtype=np.float32) if "weekday" in state else np.zeros(wshape, np.float32)
        if week.shape != wshape:
            raise ValueError(f"weekday state has shape {week.shape}, this bank needs {wshape}")
        self._wstate = np.zeros((cap, *wshape[1:]), dtype=np.float32)
        self._wstate[:n] = week


def _grown(v: F64, n: int, cap: int) -> F64:
    out = np.zeros(cap, dtype=v.dtype)
    out[:n] = v[:n]
    return out


def _grown_rows(v: NDArray[np.float32], n: int, cap: int, fill: float = -1.0) -> NDArray[np.float32]:
    """Daily-bin rows for ``cap`` series, the first ``n`` kept and the rest ``fill`` ("none yet")."""
    out = np.full((cap, v.shape[1]), fill, dtype=np.float32)
    out[:n] = v[:n]
    return out
