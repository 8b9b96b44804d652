"""Models on a fixed time grid: robust recent levels and seasonal profiles.

Samples are averaged into buckets of the series' *resolution* `w` (5 minutes, or the
sampling interval when that is longer, fixed from the first interval).  On that grid:

* **medians** of the last 3, 7, 15, 31 and 61 buckets: a level that ignores spikes and
  minimises the absolute error on noisy series (MAE is what is scored);
* **short seasonal profiles** with periods of 10 min, 30 min, 1 h and 2 h (cron jobs,
  batch cycles): per phase, an exponentially weighted mean over past periods;
* a **daily** profile (per phase: last value, and a slow mean used as a *delta* — the
  last value plus the change the profile expects between now and the target) and a
  **weekly** one (phases of at least 30 minutes, same two variants).

A profile phase without history yields NaN, so a season is only used once the history
covers it; the bank then falls back to other models.  Updating is O(1) per sample: a
sample adds to the current bucket; closing a bucket shifts a ring and updates one phase
per profile.  The bucket in progress is blended in at prediction time ("virtual
update"), so forecasts use the latest sample without waiting for its bucket to close.
Memory is fixed: 64 ring entries plus 1,292 float32 profile cells, about 5.7 KB a series.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from sidecar.engine.models import F64, I64, Field, Model, Now, Step

_DAY = 86400.0
_WEEK = 7 * _DAY


class BucketModels(Model):
    """Medians, short seasonal profiles and daily/weekly profiles over time buckets."""

    def __init__(self, capacity: int, *, base_s: float = 300.0, ring: int = 64,
                 windows: tuple[int, ...] = (3, 7, 15, 31, 61),
                 short_periods_s: tuple[float, ...] = (600.0, 1800.0, 3600.0, 7200.0), short_gamma: float = 0.3,
                 daily_gamma: float = 0.1, weekly_gamma: float = 0.5, weekly_phase_s: float = 1800.0) -> None:
        self.base = float(base_s)
        self.R = int(ring)
        self.windows = tuple(int(w) for w in windows)
        if max(self.windows) > self.R + 1:
            raise ValueError("median window longer than the ring")
        self.periods = np.asarray(short_periods_s, dtype=np.float64)
        mmax = np.maximum(np.round(self.periods / self.base), 1).astype(np.int64)
        self.off = np.concatenate([[0], np.cumsum(mmax)[:-1]]).astype(np.int64)
        self.nshort = int(mmax.sum())
        self.g_short = float(short_gamma)
        self.g_day = float(daily_gamma)
        self.g_week = float(weekly_gamma)
        self.week_phase = float(weekly_phase_s)
        self.nday = int(round(_DAY / self.base))
        self.nweek = int(round(_WEEK / max(self.week_phase, self.base)))
        self.names = (
            *(f"median_{w}" for w in self.windows),
            *(f"season_{int(p // 60)}m" for p in self.periods),
            "daily", "daily_delta", "weekly", "weekly_delta",
        )
        super().__init__(capacity)

    def fields(self) -> dict[str, Field]:
        f32 = np.float32
        return {
            "w": Field((), np.float64, np.nan),  # resolution (s), fixed from the first interval
            "cb": Field((), np.int64, -1),  # bucket in progress
            "csum": Field((), np.float64, 0.0),
            "ccnt": Field((), np.float64, 0.0),
            "ring": Field((self.R,), np.float64, np.nan),  # closed buckets, newest last
            "sp": Field((self.nshort,), f32, np.nan),  # short profiles, concatenated
            "d1": Field((self.nday,), f32, np.nan),  # daily: last value per phase
            "d2": Field((self.nday,), f32, np.nan),  # daily: slow mean per phase
            "w1": Field((self.nweek,), f32, np.nan),
            "w2": Field((self.nweek,), f32, np.nan),
        }

    # -------------------------------------------------------------- geometry
    def _geometry(self, w: F64) -> tuple[I64, I64, F64, I64]:
        """Per series: phases of each short period (k, P), of the day, weekly phase width and phases."""
        ok = np.isfinite(w)
        ww = np.where(ok, w, self.base)
        ms = np.round(self.periods[None, :] / ww[:, None]).astype(np.int64)
        exact = np.abs(ms * ww[:, None] - self.periods[None, :]) < 1e-6 * self.periods[None, :]
        ms = np.where(exact & (ms >= 2), ms, 0)
        md = np.round(_DAY / ww).astype(np.int64)
        md = np.where(np.abs(md * ww - _DAY) < 1e-6 * _DAY, md, 0)
        md = np.where(md >= 2, md, 0)
        wk = ww * np.maximum(np.round(self.week_phase / ww), 1.0)
        mw = np.round(_WEEK / wk).astype(np.int64)
        mw = np.where((np.abs(mw * wk - _WEEK) < 1e-6 * _WEEK) & (mw >= 2), mw, 0)
        return ms, md, wk, mw

    # ---------------------------------------------------------------- update
    def update(self, s: Step) -> None:
        a = self.slots
        i = s.idx
        w = a["w"][i]
        first = s.n_prev == 0
        if first.any():
            fi = i[first]
            a["csum"][fi] = s.y[first]
            a["ccnt"][fi] = 1.0
            a["cb"][fi] = -1
        setw = ~first & ~np.isfinite(w) & np.isfinite(s.dt)
        if setw.any():
            d = s.dt[setw]
            wn = self.base * np.maximum(np.round(d / self.base), 1.0)
            a["w"][i[setw]] = wn
            a["cb"][i[setw]] = np.floor(s.t_prev[setw] / wn).astype(np.int64)
            w = a["w"][i]
        live = ~first & np.isfinite(w)
        if not live.any():
            return
        li = i[live]
        t, y, wl = s.t[live], s.y[live], w[live]
        b = np.floor(t / wl).astype(np.int64)
        cb = a["cb"][li]
        same = b == cb
        if same.any():
            si = li[same]
            a["csum"][si] += y[same]
            a["ccnt"][si] += 1.0
        new = ~same
        if new.any():
            ni = li[new]
            self._close(ni, cb[new], b[new] - cb[new], wl[new])
            a["csum"][ni] = y[new]
            a["ccnt"][ni] = 1.0
            a["cb"][ni] = b[new]

    def _close(self, i: I64, cb: I64, g: I64, w: F64) -> None:
        """Commit the bucket `cb` of each series (g buckets passed since it began)."""
        a = self.slots
        v = a["csum"][i] / a["ccnt"][i]
        R = self.R
        ring = a["ring"][i]
        if np.all(g == 1):
            ring = np.concatenate([ring[:, 1:], v[:, None]], axis=1)
        else:  # a gap: skipped buckets carry the last level forward
            src = np.arange(R)[None, :] + np.minimum(g, R)[:, None]
            ring = np.where(src < R, np.take_along_axis(ring, np.minimum(src, R - 1), axis=1), v[:, None])
        a["ring"][i] = ring
        ms, md, wk, mw = self._geometry(w)
        rows = i[:, None]
        # short profiles
        ok = ms > 0
        col = self.off[None, :] + np.where(ok, cb[:, None] % np.maximum(ms, 1), 0)
        old = a["sp"][rows, col].astype(np.float64)
        upd = np.where(np.isfinite(old), old + self.g_short * (v[:, None] - old), v[:, None])
        a["sp"][rows, col] = np.where(ok, upd, old)
        # daily
        dk = md > 0
        if dk.any():
            r, ph = i[dk], cb[dk] % md[dk]
            vv = v[dk]
            a["d1"][r, ph] = vv
            o2 = a["d2"][r, ph].astype(np.float64)
            a["d2"][r, ph] = np.where(np.isfinite(o2), o2 + self.g_day * (vv - o2), vv)
        wkk = mw > 0
        if wkk.any():
            r = i[wkk]
            ph = np.floor(cb[wkk] * w[wkk] / wk[wkk] + 1e-9).astype(np.int64) % mw[wkk]
            vv = v[wkk]
            a["w1"][r, ph] = vv
            o2 = a["w2"][r, ph].astype(np.float64)
            a["w2"][r, ph] = np.where(np.isfinite(o2), o2 + self.g_week * (vv - o2), vv)

    # --------------------------------------------------------------- predict
    def predict(self, now: Now, h_s: F64) -> F64:
        a = self.slots
        i = now.idx
        k, Hh = h_s.shape
        out = np.full((k, len(self.names), Hh), np.nan)
        w = a["w"][i]
        ok = np.isfinite(w)
        if not ok.any():
            return out
        if not ok.all():
            sub = Now(idx=i[ok], t=now.t[ok], y=now.y[ok], n=now.n[ok], dt=now.dt[ok])
            out[ok] = self.predict(sub, h_s[ok])
            return out
        cur = a["csum"][i] / a["ccnt"][i]
        cb = a["cb"][i]
        tb = np.floor((now.t[:, None] + h_s) / w[:, None] + 1e-9).astype(np.int64)
        # medians over the ring and the bucket in progress (NaN until the window is covered)
        allv = np.concatenate([a["ring"][i], cur[:, None]], axis=1)
        j = 0
        for win in self.windows:
            out[:, j, :] = np.median(allv[:, -win:], axis=1)[:, None]
            j += 1
        ms, md, wk, mw = self._geometry(w)
        rows = i[:, None]
        for p in range(self.periods.size):
            m = ms[:, p]
            mm = np.maximum(m, 1)[:, None]
            pt = tb % mm
            val = a["sp"][rows, self.off[p] + pt].astype(np.float64)
            here = pt == (cb[:, None] % mm)
            val = np.where(here, np.where(np.isfinite(val), val + self.g_short * (cur[:, None] - val),
                                          cur[:, None]), val)
            out[:, j, :] = np.where((m > 0)[:, None], val, np.nan)
            j += 1
        mdd = np.maximum(md, 1)[:, None]
        pt = tb % mdd
        pc = cb[:, None] % mdd
        here = pt == pc
        d1 = a["d1"][rows, pt].astype(np.float64)
        out[:, j, :] = np.where((md > 0)[:, None], np.where(here, cur[:, None], d1), np.nan)
        d2t = self._virtual(a["d2"][rows, pt], here, cur, self.g_day)
        d2c = self._virtual(a["d2"][rows, pc], np.ones_like(here), cur, self.g_day)
        out[:, j + 1, :] = np.where((md > 0)[:, None], now.y[:, None] + d2t - d2c, np.nan)
        j += 2
        mwd = np.maximum(mw, 1)[:, None]
        wt = np.floor(tb * w[:, None] / wk[:, None] + 1e-9).astype(np.int64) % mwd
        wc = np.floor(cb[:, None] * w[:, None] / wk[:, None] + 1e-9).astype(np.int64) % mwd
        here = wt == wc
        w1 = a["w1"][rows, wt].astype(np.float64)
        out[:, j, :] = np.where((mw > 0)[:, None], np.where(here, cur[:, None], w1), np.nan)
        w2t = self._virtual(a["w2"][rows, wt], here, cur, self.g_week)
        w2c = self._virtual(a["w2"][rows, wc], np.ones_like(here), cur, self.g_week)
        out[:, j + 1, :] = np.where((mw > 0)[:, None], now.y[:, None] + w2t - w2c, np.nan)
        return out

    @staticmethod
    def _virtual(prof: NDArray[np.float32], here: NDArray[np.bool_], cur: F64, gamma: float) -> F64:
        """Profile values with the bucket in progress blended into its own phase (not yet committed)."""
        p = prof.astype(np.float64)
        c = cur[:, None]
        blended = np.where(np.isfinite(p), p + gamma * (c - p), c)
        out: F64 = np.where(here, blended, p)
        return out
