"""Models on a fixed time grid: robust recent levels and seasonal profiles.

Samples are averaged into buckets of the series' *resolution* `w` (5 minutes, or the
sampling interval when that is longer, fixed from the first interval).  On that grid:

* **medians** of the last 3, 7 and 61 buckets: a level that ignores spikes and
  minimises the absolute error on noisy series (MAE is what is scored);
* **seasonal medians** for short periods of 2, 4, 6, 8 and 12 buckets (cron jobs, batch
  cycles): the median of the last 5 buckets in the target's phase (9 for the 12-bucket
  period, an hour at 5 minutes: hourly jobs are common and more periods average out more
  noise), taken from the ring;
* a **daily** profile (per phase: last value, and a slow mean — the plain mean of the days seen
  until there are ten, forgetting a tenth a day after — used as it is, which averages a noisy
  cycle's noise away, and as a *delta*: the last value plus the change the profile expects between
  now and the target) and a
  **weekly** one (phases of at least 30 minutes, the delta only: its last value per phase
  was almost never among the best models and costs the most memory);
* the daily slow mean **smoothed over neighbouring phases** (triangular weights, half-widths 1 and 3
  buckets): a profile learnt from a few noisy days carries each day's noise at every phase, and the
  neighbours average it away where the cycle is smooth; the backtest picks the width that suits the
  series (a steep edge wants 1, counts with heavy noise 3);
* that profile **moved by the recent residual**: the forgetting mean (rate 0.3 a bucket) of each
  closed bucket's offset from the smoothed profile at its phase, added to the profile at the target,
  so a day that runs above or below the usual one (a weekend, a level shift, a drift) is followed
  within a few buckets while the cycle's shape still comes from the profile.

A profile phase without history yields NaN, so a season is only used once the history
covers it; the bank then falls back to other models.  Updating is O(1) per sample: a
sample adds to the current bucket; closing a bucket shifts a ring and updates one phase
per profile.  The bucket in progress is blended in at prediction time ("virtual
update"), so forecasts use the latest sample without waiting for its bucket to close.
The seasonal medians only change when a bucket closes, so they are computed then, for
every target 1..13 buckets ahead, and read at prediction time.  Memory is fixed: 108 ring
entries, 912 float32 profile cells, 65 cached medians and one residual, about 4.9 KB a series.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from sidecar.engine.models_base import F64, I64, Field, Model, Now, Step

_DAY = 86400.0
_SORT_BLOCK = 1024  # rows whose seasonal medians are sorted together
_WEEK = 7 * _DAY
#: Half-widths (in buckets) of the triangular kernels that smooth the daily slow mean over neighbouring phases.
SMOOTH_HALF = (1, 3)
#: Forgetting of the residual from the smoothed profile that moves the profile to the recent level, a bucket.
RESIDUAL_RATE = 0.3


class BucketModels(Model):
    """Medians, seasonal medians of short periods and daily/weekly profiles over time buckets."""

    # every variant combines observed bucket means (no extrapolation, no division): nothing can blow up
    bounded = True

    def __init__(self, capacity: int, *, base_s: float = 300.0, ring: int = 108,
                 windows: tuple[int, ...] = (3, 7, 61),
                 daily_gamma: float = 0.1, weekly_gamma: float = 0.5, weekly_phase_s: float = 1800.0,
                 median_periods: tuple[int, ...] = (2, 4, 6, 8, 12),
                 median_periods_k: tuple[int, ...] = (5, 5, 5, 5, 9),
                 median_reach: int = 13) -> None:
        self.base = float(base_s)
        self.R = int(ring)
        self.windows = tuple(int(w) for w in windows)
        if max(self.windows) > self.R + 1:
            raise ValueError("median window longer than the ring")
        self.g_day = float(daily_gamma)
        self.g_week = float(weekly_gamma)
        self.week_phase = float(weekly_phase_s)
        self.nday = round(_DAY / self.base)
        self.nweek = round(_WEEK / max(self.week_phase, self.base))
        wv = np.asarray(self.windows)
        self._wmax = int(wv.max())
        self._pad = (np.arange(self._wmax)[None, :] < (self._wmax - wv)[:, None])[None]  # (1, V, wmax)
        self._wrow = np.arange(wv.size)
        self._wlo = (wv - 1) // 2
        self._whi = wv // 2
        self._wfirst = -wv
        self.sm_p = np.asarray(median_periods, dtype=np.int64)
        self.sm_k = np.asarray(median_periods_k, dtype=np.int64)
        if self.sm_k.shape != self.sm_p.shape or self.sm_k.min() < 1:
            raise ValueError("one positive number of periods per seasonal-median period")
        self.sm_d = int(median_reach)  # seasonal medians are kept for targets 1..sm_d buckets ahead
        # ring positions of the K same-phase buckets, per period and target: bucket lb - j is ring[R-1-j],
        # and the newest closed bucket in the phase of lb + d is ceil(d / P) periods before the target
        per = self.sm_p[:, None, None]
        dd = np.arange(1, self.sm_d + 1)[None, :, None]
        kk = np.arange(int(self.sm_k.max()))[None, None, :]
        back = (-(-dd // per) + kk) * per - dd  # (S, D, Kmax)
        pos = self.R - 1 - back
        self._sm_shape = pos.shape
        self._sm_pad = np.broadcast_to(kk >= self.sm_k[:, None, None], pos.shape)  # beyond a period's K
        self._sm_short = np.where(self._sm_pad, 0, pos).min(axis=2) < 0  # (S, D): reaches beyond the ring
        self._sm_pos = np.maximum(pos, 0).ravel()
        # sorted, the K real values come first (padding is +inf): the median sits at (K-1)//2 and K//2
        self._sm_lo = ((self.sm_k - 1) // 2)[:, None]
        self._sm_hi = (self.sm_k // 2)[:, None]
        self.names = (
            *(f"median_{w}" for w in self.windows),
            "daily", "daily_delta", "daily_mean", *(f"daily_mean_s{k}" for k in SMOOTH_HALF), "daily_level",
            "weekly_delta",
            *(f"season_median_{int(p)}b" for p in self.sm_p),
        )
        super().__init__(capacity)

    def fields(self) -> dict[str, Field]:
        f32 = np.float32
        return {
            "w": Field((), np.float64, np.nan),  # resolution (s), fixed from the first interval
            "org": Field((), np.float64, 0.0),  # time origin of the bucket grid (s)
            "cb": Field((), np.int64, -1),  # bucket in progress (or the last one, once closed)
            "lb": Field((), np.int64, -1),  # last closed bucket
            "csum": Field((), np.float64, 0.0),
            "ccnt": Field((), np.float64, 0.0),  # samples in the bucket in progress (0: none open)
            "ring": Field((self.R,), np.float64, np.nan),  # closed buckets, newest last
            "med": Field((len(self.windows),), np.float64, np.nan),  # medians, refreshed at each close
            "smc": Field((self.sm_p.size, self.sm_d), f32, np.nan),  # seasonal medians, refreshed at each close
            "md": Field((), np.int64, 0),
            "wk": Field((), np.float64, np.nan),
            "mw": Field((), np.int64, 0),
            "d1": Field((self.nday,), f32, np.nan),  # daily: last value per phase
            "d2": Field((self.nday,), f32, np.nan),  # daily: slow mean per phase
            "w2": Field((self.nweek,), f32, np.nan),
            # the recent offset from the smoothed daily profile (forgetting mean of the closed buckets')
            "rs": Field((), np.float64, np.nan, optional=True),
        }

    # -------------------------------------------------------------- geometry
    def _geometry(self, w: F64) -> tuple[I64, F64, I64]:
        """Per series: phases of the day, weekly phase width and phases (0 phases: season unusable)."""
        ok = np.isfinite(w)
        ww = np.where(ok, w, self.base)
        md = np.round(_DAY / ww).astype(np.int64)
        md = np.where(np.abs(md * ww - _DAY) < 1e-6 * _DAY, md, 0)
        md = np.where(md >= 2, md, 0)
        wk = ww * np.maximum(np.round(self.week_phase / ww), 1.0)
        mw = np.round(_WEEK / wk).astype(np.int64)
        mw = np.where((np.abs(mw * wk - _WEEK) < 1e-6 * _WEEK) & (mw >= 2), mw, 0)
        return md, wk, mw

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
            si = i[setw]
            wn = self.base * np.maximum(np.round(s.dt[setw] / self.base), 1.0)
            a["w"][si] = wn
            # the first sample sits in the middle of its bucket, so regular samples never straddle an edge
            org = s.t_prev[setw] - 0.5 * wn
            a["org"][si] = org
            a["cb"][si] = 0
            md, wk, mw = self._geometry(wn)
            a["md"][si] = md
            a["wk"][si] = wk
            a["mw"][si] = mw
            w = a["w"][i]
        live = ~first & np.isfinite(w)
        if not live.any():
            return
        li = i[live]
        y, wl, dt = s.y[live], w[live], s.dt[live]
        u = s.t[live] - a["org"][li]
        b = np.floor(u / wl).astype(np.int64)
        cb = a["cb"][li]
        cc = a["ccnt"][li]
        late = (cc > 0) & (b != cb)  # a bucket left open by a missing last sample
        join = (cc > 0) & (b == cb)
        # close as soon as the next sample is expected in a later bucket, so the newest sample counts at once
        done = u + 0.75 * np.where(np.isfinite(dt), dt, 0.0) >= (b + 1) * wl
        if join.any():
            ji = li[join]
            a["csum"][ji] += y[join]
            a["ccnt"][ji] += 1.0
        start = ~join & ~late
        if start.any():
            st = li[start]
            a["csum"][st] = y[start]
            a["ccnt"][st] = 1.0
            a["cb"][st] = b[start]
        # one close for the late buckets and the buckets this sample completes (the common case)
        first_close = late | done
        if first_close.any():
            self._close(li[first_close], np.where(late, cb, b)[first_close], wl[first_close])
        if late.any():
            st = li[late]
            a["csum"][st] = y[late]
            a["ccnt"][st] = 1.0
            a["cb"][st] = b[late]
            again = late & done
            if again.any():
                self._close(li[again], b[again], wl[again])

    def _close(self, i: I64, cb: I64, w: F64) -> None:
        """Commit the bucket `cb` of each series: ring, medians and one phase of every profile."""
        a = self.slots
        v = a["csum"][i] / a["ccnt"][i]
        a["ccnt"][i] = 0.0
        R = self.R
        lb = a["lb"][i]
        g = np.where(lb >= 0, cb - lb, 1)
        a["lb"][i] = cb
        ring = a["ring"][i]
        if np.all(g == 1):
            ring = np.concatenate([ring[:, 1:], v[:, None]], axis=1)
        else:  # a gap: skipped buckets carry the level forward; g == 0 rewrites the newest entry
            gg = np.clip(g, 0, R)
            src = np.arange(R)[None, :] + gg[:, None]
            ring = np.where(src < R, np.take_along_axis(ring, np.minimum(src, R - 1), axis=1), v[:, None])
            ring[:, -1] = v
        a["ring"][i] = ring
        # every median in one sort: window j is the last windows[j] entries, padded with NaN (sorted last)
        srt = np.sort(np.where(self._pad, np.nan, ring[:, None, -self._wmax:]), axis=2)
        med = 0.5 * (srt[:, self._wrow, self._wlo] + srt[:, self._wrow, self._whi])
        # a window reaching into never-filled entries (the ring fills from the right) has no median yet
        a["med"][i] = np.where(np.isnan(ring[:, self._wfirst]), np.nan, med)
        # seasonal medians only change when a bucket closes: computed here for every target 1..sm_d ahead, a
        # block of rows at a time (the sort's temporaries are 14 KB a series, and every series closes at once)
        for j in range(0, i.size, _SORT_BLOCK):
            a["smc"][i[j:j + _SORT_BLOCK]] = self._season_medians(ring[j:j + _SORT_BLOCK])
        md, wk, mw = a["md"][i], a["wk"][i], a["mw"][i]
        dk = md > 0
        if dk.any():
            r, ph = i[dk], cb[dk] % md[dk]
            vv = v[dk]
            # the offset from the profile as it stood before this bucket (smoothed like the forecast's)
            mdk = md[dk][:, None]
            res = vv - self._smoothed(a["d2"], r, ph[:, None], mdk, (SMOOTH_HALF[0],))[:, 0, 0]
            rs0 = a["rs"][r]
            a["rs"][r] = np.where(np.isfinite(res), np.where(np.isfinite(rs0), rs0 + RESIDUAL_RATE * (res - rs0), res),
                                  rs0)
            a["d1"][r, ph] = vv
            o2 = a["d2"][r, ph].astype(np.float64)
            # the plain mean of the days seen until there are 1/gamma of them, forgetting after: a profile started
            # from its first day's values would carry that one day's noise for weeks
            rate = np.maximum(1.0 / (cb[dk] // md[dk] + 1), self.g_day)
            a["d2"][r, ph] = np.where(np.isfinite(o2), o2 + rate * (vv - o2), vv)
        wkk = mw > 0
        if wkk.any():
            r = i[wkk]
            ph = np.floor(cb[wkk] * w[wkk] / wk[wkk] + 1e-9).astype(np.int64) % mw[wkk]
            vv = v[wkk]
            o2 = a["w2"][r, ph].astype(np.float64)
            a["w2"][r, ph] = np.where(np.isfinite(o2), o2 + self.g_week * (vv - o2), vv)

    # --------------------------------------------------------------- predict
    def predict(self, now: Now, h_s: F64) -> F64:
        a = self.slots
        i = now.idx
        k, Hh = h_s.shape
        w = a["w"][i]
        ok = np.isfinite(w)
        if not ok.all():
            out = np.full((k, len(self.names), Hh), np.nan)
            if ok.any():
                sub = Now(idx=i[ok], t=now.t[ok], y=now.y[ok], n=now.n[ok], dt=now.dt[ok])
                out[ok] = self.predict(sub, h_s[ok])
            return out
        out = np.empty((k, len(self.names), Hh))
        nw = len(self.windows)
        out[:, :nw, :] = a["med"][i][:, :, None]
        cc = a["ccnt"][i]
        is_open = cc > 0
        cur = a["csum"][i] / np.where(is_open, cc, 1.0)
        cb = a["cb"][i]
        tb = np.floor((now.t[:, None] - a["org"][i][:, None] + h_s) / w[:, None] + 1e-9).astype(np.int64)
        md, wk, mw = a["md"][i], a["wk"][i], a["mw"][i]
        rows = i[:, None]
        j = nw
        # daily and weekly: the target phases and the current phase gathered together
        mdd = np.maximum(md, 1)[:, None]
        pc = cb[:, None] % mdd
        pt2 = np.concatenate([tb % mdd, pc], axis=1)
        here2 = is_open[:, None] & np.concatenate([pt2[:, :-1] == pc, np.ones_like(pc, dtype=bool)], axis=1)
        d2 = self._virtual(a["d2"][rows, pt2], here2, cur[:, None], self.g_day)
        d1 = a["d1"][rows, pt2[:, :-1]].astype(np.float64)
        dok = (md > 0)[:, None]
        out[:, j, :] = np.where(dok, np.where(here2[:, :-1], cur[:, None], d1), np.nan)
        out[:, j + 1, :] = np.where(dok, now.y[:, None] + d2[:, :-1] - d2[:, -1:], np.nan)
        out[:, j + 2, :] = np.where(dok, d2[:, :-1], np.nan)
        j += 3
        ns = len(SMOOTH_HALF)
        sm = self._smoothed(a["d2"], i, pt2[:, :-1], mdd, SMOOTH_HALF, d2[:, :-1])   # (k, H, ns)
        out[:, j:j + ns, :] = np.where(dok[:, :, None], np.moveaxis(sm, 2, 1), np.nan)
        j += ns
        out[:, j, :] = np.where(dok, sm[:, :, 0] + a["rs"][i][:, None], np.nan)
        j += 1
        mwd = np.maximum(mw, 1)[:, None]
        scale = (w / wk)[:, None]
        wt2 = np.floor(np.concatenate([tb, cb[:, None]], axis=1) * scale + 1e-9).astype(np.int64) % mwd
        wc = wt2[:, -1:]
        here2 = is_open[:, None] & (wt2 == wc)
        w2 = self._virtual(a["w2"][rows, wt2], here2, cur[:, None], self.g_week)
        wok = (mw > 0)[:, None]
        out[:, j, :] = np.where(wok, now.y[:, None] + w2[:, :-1] - w2[:, -1:], np.nan)
        d = tb - a["lb"][i][:, None]
        col = np.clip(d, 1, self.sm_d) - 1
        sm = a["smc"][i[:, None, None], np.arange(self.sm_p.size)[None, :, None], col[:, None, :]]
        out[:, j + 1:, :] = np.where((d <= self.sm_d)[:, None, :], sm, np.nan)
        return out

    def _season_medians(self, ring: F64) -> F64:
        """(k, S, D): per period P (in buckets) and target d = 1..D buckets after the last closed one,
        the median of the last K closed buckets in the target's phase.

        A median over a few past periods ignores the one-off spikes that an exponentially weighted
        profile keeps for a while, and needs no state beyond the ring.  The ring positions are the
        same for every series (`_sm_pos`, fixed at construction), so this is one gather and one
        sort.  NaN where the ring does not reach back far enough or was never filled there.
        """
        k = ring.shape[0]
        vals = np.sort(np.where(self._sm_pad, np.inf, ring[:, self._sm_pos].reshape(k, *self._sm_shape)), axis=3)
        s, d = np.arange(self.sm_p.size)[:, None], np.arange(self.sm_d)[None, :]
        med = 0.5 * (vals[:, s, d, self._sm_lo] + vals[:, s, d, self._sm_hi])
        # NaN sorts after +inf: a never-filled entry among the K shows at the end
        out: F64 = np.where(self._sm_short | np.isnan(vals[..., -1]), np.nan, med)
        return out

    @staticmethod
    def _smoothed(d2: NDArray[np.float32], i: I64, pt: I64, md: I64, halves: tuple[int, ...],
                  centre: F64 | None = None) -> F64:
        """(k, H, len(halves)): the daily slow mean of rows `i` at phases `pt` (k, H) averaged with its
        neighbours, one triangular kernel per half-width (weights kh + 1 - |offset|); phases not yet seen are
        left out of the average, and a phase without a value of its own has none. `centre` replaces the
        phase's own value (the bucket in progress blended in).

        One read serves every kernel. A row whose day fills the profile (5-minute buckets) is read as
        sliding windows over the row wrapped at midnight: a contiguous copy of the row costs less than
        gathering every neighbour of every target one by one (1.2 against 1.8 ms for 4,096 series and 5
        targets); other rows (longer buckets, fewer phases) gather each neighbour modulo their own day.
        """
        kmax = max(halves)
        off = np.arange(-kmax, kmax + 1)
        nday = d2.shape[1]
        k, h = pt.shape
        md = md.reshape(k)
        full = md == nday
        if kmax > 1 and full.all():
            rows = d2[i]
            ext = np.concatenate([rows[:, nday - kmax:], rows, rows[:, :kmax]], axis=1)
            vals = sliding_window_view(ext, 2 * kmax + 1, axis=1)[np.arange(k)[:, None], pt % nday]
        else:
            vals = d2[i[:, None, None], (pt[..., None] + off) % md[:, None, None]]
        if centre is not None:       # an index array's read is a copy already
            vals[..., kmax] = centre
        wts = np.maximum(np.asarray(halves)[None, :] + 1 - np.abs(off)[:, None], 0).astype(np.float32)  # (2K+1, V)
        flat = vals.reshape(k * h, 2 * kmax + 1)
        miss = np.isnan(flat)
        gaps = bool(miss.any())                 # after the first day, never: the sums need no masks
        seen = np.where(miss, np.float32(0.0), flat) if gaps else flat
        # weighted sums offset by offset, elementwise (a matrix product's blocking depends on how many rows share
        # the call, and its last bits with it): a series forecasts the same alone as beside others; the weights
        # are small integers, so a row's sum of them is exact whichever way it is taken
        out = np.empty((k * h, len(halves)))
        for v in range(len(halves)):
            taps = np.nonzero(wts[:, v])[0].tolist()
            num = wts[taps[0], v] * seen[:, taps[0]]
            for j in taps[1:]:
                num += wts[j, v] * seen[:, j]
            if gaps:
                den = (~miss[:, taps]) @ wts[taps, v]
                out[:, v] = np.where(miss[:, kmax], np.nan, num / np.where(den > 0, den, 1.0))
            else:
                out[:, v] = num / wts[taps, v].sum()
        return out.reshape(k, h, len(halves))

    @staticmethod
    def _virtual(prof: NDArray[np.float32], here: NDArray[np.bool_], c: F64, gamma: float) -> F64:
        """Profile values with the bucket in progress blended into its own phase (not yet committed)."""
        p = prof.astype(np.float64)
        blended = np.where(np.isfinite(p), p + gamma * (c - p), c)
        out: F64 = np.where(here, blended, p)
        return out
