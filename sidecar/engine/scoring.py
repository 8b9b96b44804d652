"""The forecast bank's running backtest: every forecast is filed with its target time and scored when the
sample at that time arrives, out of sample, so model choice and intervals rest on measured errors.

Pending forecasts are kept in a small ring per series and horizon (`queue` entries, issued at most every
h/queue seconds), which bounds memory whatever the sampling rate. Each one keeps every model's prediction,
the combined forecast and the interval that was issued, relative to the value at issue (float32 suffices
for a difference); the predictions, the engine's largest array, as float16 scaled by a power of two per
entry (`pack`): every difference within 2^-11 of itself, whatever its size and whatever the entry's
largest, in half the bytes. (The bounds stay float32: an actual exactly on a bound, a count at its floor
of 0, is a hit or a miss by their rounding, and float16's coarser rounding moved the hit rates and so the
adaptive widths by 5-10 %, rounding outward by -6 %.) A score updates, per series and horizon: each model's
forgetting mean absolute error (which picks the models), the combined forecast's error scale and tracked
quantiles (which size the interval), the measured hit rate (`confidence`) and the adaptive width (which
calibrates the interval on that hit rate).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from sidecar.engine.intervals import HIT_RATE, adapt_width, ewm_rate, track_quantiles
from sidecar.engine.models_base import F64, I64, Slots

ERR_RATE = 0.007  # forgetting of the running backtest errors (about the last 150 scored forecasts)
WINDOW = 64  # scored errors per series and horizon kept for the interval's recent order statistics
WINDOW_MIN = 5  # errors the window needs before its order statistics count
ERR_CAP = 50.0  # an error counts at most this many times the bank's recent error at that horizon (one bad
#                 sample, say 1e9 in a series near 50, otherwise blew the intervals up for days)


#: float16 holds up to 65504: an entry is scaled so its largest difference is below 2^PACK_TOP
PACK_TOP = 15


def pack(d: F64) -> tuple[NDArray[np.float16], NDArray[np.int8]]:
    """Differences (n, k) as float16 times 2^-e with one exponent e per row (int8), so the row's largest
    magnitude sits in [2^14, 2^15): each value keeps float16's 11 significant bits (rounded within 2^-11 of
    itself, down to 2^-24 of the row's largest), NaN stays NaN. One wild model (a blown-up extrapolation)
    makes no other value of its row coarser, as a shared fixed-point scale would."""
    with np.errstate(invalid="ignore"):
        big = np.max(np.where(np.isfinite(d), np.abs(d), 0.0), axis=1) if d.shape[1] else np.zeros(d.shape[0])
    e = np.frexp(big)[1].astype(np.int64) - PACK_TOP                 # big < 2^frexp; 0 -> frexp 0
    e = np.clip(np.where(big > 0, e, 0), -128, 127)
    with np.errstate(over="ignore"):
        vals = np.ldexp(d, -e[:, None]).astype(np.float16)
    return vals, e.astype(np.int8)


def unpack(vals: NDArray[np.float16], e: NDArray[np.int8]) -> F64:
    """The differences `pack` stored: (n, k) float64 from float16 values and their rows' exponents."""
    out: F64 = np.ldexp(vals.astype(np.float64), e.astype(np.int64)[..., None])
    return out


#: where the scored counts stop: past 1 / ERR_RATE a count no longer changes any rate (`ewm_rate`)
COUNT_MAX = 65535


def count_up(cnt: NDArray[np.uint16], scored: NDArray[np.bool_]) -> NDArray[np.uint16]:
    """Scored counts (uint16) plus one where a forecast was scored, saturating at COUNT_MAX: counts only
    matter up to MIN_SCORED and 1 / ERR_RATE, and uint16 holds them in half float32's bytes."""
    out: NDArray[np.uint16] = np.minimum(cnt.astype(np.int32) + scored, COUNT_MAX).astype(np.uint16)
    return out


#: bfloat16's NaN: the empty places of the error window
BF16_NAN = 0x7FC0


def to_bf16(x: NDArray[np.floating]) -> NDArray[np.uint16]:
    """Values as bfloat16 codes (uint16: float32's upper half, rounded to nearest even): float32's range
    with 8 significant bits (within 2^-8 of the value), NaN kept. For the error window, whose order
    statistics only need to be that close: half its bytes, and no scale to keep beside it."""
    bits = np.asarray(x, np.float32).astype(np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    out: NDArray[np.uint16] = np.where(np.isnan(x), BF16_NAN, rounded).astype(np.uint16)
    return out


def from_bf16(code: NDArray[np.uint16]) -> NDArray[np.float32]:
    """The float32 values of bfloat16 codes."""
    out: NDArray[np.float32] = (code.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return out


def pack_saved(state: dict[str, np.ndarray], prefix: str = "core.") -> dict[str, np.ndarray]:
    """A saved bank's state in this layout: states saved before `pack` hold `ppred` as float32 differences and
    no exponents (`pexp`), the error window `ewin` and the scored counts `cnt`/`cnt1` as float32; they are
    packed as `issue`, `_window` and `count_up` would have. A state already packed (or without these fields)
    is returned as it is."""
    kp, ke, kw = prefix + "ppred", prefix + "pexp", prefix + "ewin"
    out = dict(state)
    if kp in state and ke not in state:
        pp = np.asarray(state[kp], np.float64)
        vals, e = pack(pp.reshape(-1, pp.shape[-1]))
        out[kp] = vals.reshape(pp.shape)
        out[ke] = e.reshape(pp.shape[:-1])
    if kw in state and np.asarray(state[kw]).dtype.kind == "f":
        out[kw] = to_bf16(np.asarray(state[kw]))
    for kc in (prefix + "cnt", prefix + "cnt1"):        # float32 counts before
        if kc in state and np.asarray(state[kc]).dtype.kind == "f":
            out[kc] = np.clip(np.nan_to_num(np.asarray(state[kc], np.float64)), 0, COUNT_MAX).astype(np.uint16)
    return out


def cap_error(ref: NDArray[np.float64], level: NDArray[np.float64]) -> F64:
    """Largest error an update may count, from a running error scale (none while the scale is unknown).

    Winsorising keeps one absurd sample from owning the error memories that pick models and size intervals; a
    real change still gets through, growing them by up to (ERR_CAP - 1) x rate a sample. The scale counts as
    at least a thousandth of the level before the sample (never the sample's own, which may be the absurd
    one): on a near-exact fit the scale is rounding, and a cap that small would make every model's error
    equal."""
    with np.errstate(invalid="ignore"):
        r = np.maximum(ref, 1e-3 * np.abs(level))
        out: F64 = np.where(np.isfinite(r) & (r > 0), ERR_CAP * r, np.inf)
        return out


class RunningBacktest:
    """Files and scores the pending forecasts of a bank's core arrays (`ptgt`, `py`, `ppred`, ...)."""

    def __init__(self, core: Slots, horizons_s: F64, queue: int, n_models: int, level: float,
                 adaptive: bool) -> None:
        self.core = core
        self.horizons_s = horizons_s
        self.queue = queue
        self.n_models = n_models
        self.level = level
        self.adaptive = adaptive   # a baseline model's intervals stay as tracked: no adaptive width

    def horizons(self, dt: F64) -> F64:
        """(k, H) horizon used for scoring: at least one sampling interval, else nothing ever matches."""
        d = np.where(np.isfinite(dt), dt, 0.0)
        return np.maximum(self.horizons_s[None, :], d[:, None])

    def score_due(self, i: I64, t: F64, y: F64, dt_prev: F64) -> None:
        """Score the pending forecasts whose target time has come (or drop the ones a gap skipped)."""
        c = self.core
        H, Q = self.horizons_s.size, self.queue
        tol = np.where(np.isfinite(dt_prev), 0.5 * dt_prev, 0.0)[:, None]
        hh = np.arange(H)[None, :]
        for _ in range(Q):
            pc = c["pcnt"][i]
            if not pc.any():
                return
            head = c["phead"][i]
            tgt = c["ptgt"][i[:, None], hh, head]
            due = (pc > 0) & (tgt <= t[:, None] + tol)
            if not due.any():
                return
            hit_now = due & (np.abs(t[:, None] - tgt) < np.maximum(tol, 1e-9))
            if hit_now.any():
                r, hcol = np.nonzero(hit_now)
                self._score(i[r], hcol, head[r, hcol], y[r])
            r, hcol = np.nonzero(due)
            si = i[r]
            c["phead"][si, hcol] = (head[r, hcol] + 1) % Q
            c["pcnt"][si, hcol] = pc[r, hcol] - 1

    def _score(self, si: I64, hcol: I64, q: I64, actual: F64) -> None:
        c, M = self.core, self.n_models
        ex = c["pexp"][si, hcol, q]
        preds = c["py"][si, hcol, q][:, None] + unpack(c["ppred"][si, hcol, q], ex)  # (n, M+1)
        err = np.abs(actual[:, None] - preds[:, :M])
        fin = np.isfinite(err)
        err = np.minimum(err, cap_error(c["fmae"][si, hcol], c["py"][si, hcol, q])[:, None])
        cnt = count_up(c["cnt"][si, :, hcol], fin)
        rate = ewm_rate(cnt, ERR_RATE)
        m0 = c["mae"][si, :, hcol]
        c["mae"][si, :, hcol] = np.where(fin, np.where(np.isfinite(m0), m0 + rate * (err - m0), err), m0)
        c["cnt"][si, :, hcol] = cnt
        e = actual - preds[:, M]
        if not np.isfinite(e).any():
            return
        ok = np.isfinite(e)
        si, hcol, q, e, actual = si[ok], hcol[ok], q[ok], e[ok], actual[ok]
        fc = c["fcnt"][si, hcol] + 1.0
        c["fcnt"][si, hcol] = fc
        fr = ewm_rate(fc, ERR_RATE)
        f0 = c["fmae"][si, hcol]
        ae = np.minimum(np.abs(e), cap_error(f0, c["py"][si, hcol, q]))
        f1 = np.where(np.isfinite(f0), f0 + fr * (ae - f0), ae)
        c["fmae"][si, hcol] = f1
        lo, hi = track_quantiles(c["qlo"][si, hcol], c["qhi"][si, hcol], e, f1, fc, self.level)
        c["qwlo"][si, hcol], c["qwhi"][si, hcol] = self._window(si, hcol, e)
        c["qlo"][si, hcol] = lo
        c["qhi"][si, hcol] = hi
        base = c["py"][si, hcol, q]
        plo = base + c["plo"][si, hcol, q]
        phi = base + c["phi"][si, hcol, q]
        known = np.isfinite(plo) & np.isfinite(phi)
        if known.any():
            inside = ((actual >= plo) & (actual <= phi)).astype(np.float64)
            h0 = c["hit"][si, hcol]
            hr = ewm_rate(fc, HIT_RATE)
            c["hit"][si, hcol] = np.where(known, np.where(np.isfinite(h0), h0 + hr * (inside - h0), inside), h0)
            if self.adaptive:
                w0 = c["wmul"][si, hcol]
                c["wmul"][si, hcol] = np.where(known, adapt_width(w0, inside, self.level), w0)

    def _window(self, si: I64, hcol: I64, e: F64) -> tuple[F64, F64]:
        """File the error in its ring of the last WINDOW, and return the ring's split-conformal bounds: the
        order statistics ceil((n + 1)(1 - a)) and floor((n + 1) a), a = (1 - level) / 2 (NaN below WINDOW_MIN)."""
        c = self.core
        pos = c["epos"][si, hcol].astype(np.int64)
        c["ewin"][si, hcol, pos % WINDOW] = to_bf16(e)
        # errors written so far, saturated at WINDOW + (the next place) so it fits an int16 for good
        n = np.minimum(pos + 1, WINDOW)
        c["epos"][si, hcol] = np.where(pos + 1 >= WINDOW, WINDOW + (pos + 1) % WINDOW, pos + 1)
        win = np.sort(from_bf16(c["ewin"][si, hcol]).astype(np.float64), axis=1)   # NaN (empty places) sort last
        a = (1.0 - self.level) / 2.0
        hi_k = np.minimum(np.ceil((n + 1) * (1.0 - a)).astype(np.int64), n) - 1
        lo_k = np.maximum(np.floor((n + 1) * a).astype(np.int64), 1) - 1
        rows = np.arange(si.size)
        enough = n >= WINDOW_MIN
        return np.where(enough, win[rows, lo_k], np.nan), np.where(enough, win[rows, hi_k], np.nan)

    def issue(self, i: I64, t: F64, pred_h: F64) -> None:
        """File the forecasts just made (every model's `pred_h` (k, M, H) and the bank's combined one)."""
        c = self.core
        Q = self.queue
        dt = c["dt"][i]
        hs = self.horizons(dt)
        pc = c["pcnt"][i]
        due = np.isfinite(dt)[:, None] & (pc < Q) & (t[:, None] - c["plast"][i] >= hs / Q - 1e-9)
        if not due.any():
            return
        r, hcol = np.nonzero(due)
        si = i[r]
        slot = (c["phead"][si, hcol] + pc[r, hcol]) % Q
        base = c["y"][si]
        c["ptgt"][si, hcol, slot] = t[r] + hs[r, hcol]
        c["py"][si, hcol, slot] = base
        M = self.n_models
        d = np.empty((r.size, M + 1))
        d[:, :M] = pred_h[r, :, hcol] - base[:, None]
        d[:, M] = c["fmean"][si, hcol] - base
        c["ppred"][si, hcol, slot], c["pexp"][si, hcol, slot] = pack(d)
        c["plo"][si, hcol, slot] = c["flo"][si, hcol] - base
        c["phi"][si, hcol, slot] = c["fhi"][si, hcol] - base
        c["pcnt"][si, hcol] = pc[r, hcol] + 1
        c["plast"][si, hcol] = t[r]
