"""Backtest: replay a metric's history through the forecaster and say how good it would have been.

This is how a user decides whether to trust the forecasts on their own metrics: every
sample is fed in time order, a forecast is made after each one from the data so far, and
when the target time has arrived it is compared with what happened.  Per horizon the
report gives the mean absolute error, MASE against the last value and against
Prometheus' `predict_linear` (the `linear` model) at the same points, the coverage and
width of the interval, and how often each model was chosen.

The target of a forecast made at t for horizon h is the sample at t + h, else the
nearest sample after t within half the median sampling interval (else it is not scored).
A horizon longer than the data has nothing scored; the report says so instead of
printing a row of unknowns.

Coverage comes with its own 90 % interval (`coverage_interval`): forecasts made a sample apart share
most of their future, so two hours scored at a 30-minute horizon hold only about eight independent
outcomes, and a coverage of 0.72 or 1.00 there may be chance alone.

"Chosen" counts only real choices: the bank picks among models scored at least
``MIN_SCORED`` times at that horizon, and until one is, it falls back to the last
value. Those forecasts are counted apart (``fallback``), so a short history reads as
"mostly the last value, for lack of evidence", not as a vote for some model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats import beta

from sidecar.engine.forecast import MIN_SCORED, ForecastBank, model_names
from sidecar.errors import InputError
from sidecar.replay import parse_duration, parse_time
from sidecar.units import format_duration

#: Scores a model needs at a horizon before the bank may choose it (the bank's own rule, read from it).
MIN_SCORED = MIN_SCORED

_RELATIVE = re.compile(r"now\s*(?:([+-])\s*(\S+))?", re.IGNORECASE)
TIME_FORMS = "now, now-10m, now-2h, an RFC 3339 time (2026-11-25T14:00:00Z) or unix seconds"


def parse_time_option(option: str, text: str, *, now: float) -> float:
    """``now``, ``now-10m``, ``now-2h30m`` (``now+…`` too), RFC 3339 or ``YYYY-MM-DD HH:MM:SS`` (no zone: UTC),
    or unix seconds -> unix seconds; an ``InputError`` naming ``option`` otherwise."""
    s = text.strip()
    rel = _RELATIVE.fullmatch(s)
    if rel is not None:
        sign, amount = rel.groups()
        if sign is None:
            return now
        try:
            offset = parse_duration(amount)
        except ValueError:
            raise InputError(f"{option} {text!r}: {amount!r} is not a duration; expected {TIME_FORMS}") from None
        return now - offset if sign == "-" else now + offset
    try:
        value = parse_time(s)
    except ValueError:
        raise InputError(f"{option} {text!r}: expected {TIME_FORMS}") from None
    if not math.isfinite(value):
        raise InputError(f"{option} {text!r}: expected a finite time: {TIME_FORMS}")
    return value


def parse_bounds(text: str) -> tuple[float, float]:
    """``LO,HI`` (either side may be empty: unbounded) as the (low, high) domain of a backtest."""
    parts = text.split(",")
    if len(parts) != 2:
        raise InputError(f"--bounds {text!r}: expected LO,HI (e.g. 0,100 or 0, for not below 0)")
    try:
        lo = float(parts[0]) if parts[0].strip() else -np.inf
        hi = float(parts[1]) if parts[1].strip() else np.inf
    except ValueError:
        raise InputError(f"--bounds {text!r}: LO and HI must be numbers (or empty)") from None
    if np.isnan(lo) or np.isnan(hi) or not lo < hi:
        raise InputError(f"--bounds {text!r}: LO must be below HI")
    return lo, hi


def check_model(model: str) -> None:
    """``auto`` or one of the bank's models; an ``InputError`` naming ``--model`` and the choices otherwise."""
    if model == "auto":
        return
    names = model_names()
    if model not in names:
        raise InputError(f"--model {model!r}: choose auto or one of {', '.join(names)}")


@dataclass(frozen=True, slots=True)
class HorizonReport:
    horizon_s: float
    scored: int  # forecasts whose target was found
    mae: float
    mae_last: float  # the last-value forecast at the same points
    mae_linear: float  # predict_linear over 1 h at the same points
    mase_last: float  # mae / mae_last (< 1: better than repeating the last value)
    mase_linear: float  # mae / mae_linear
    coverage: float  # share of actuals inside [lower, upper]
    coverage_low: float  # 90 % interval of the coverage (`coverage_interval`)
    coverage_high: float
    independent: float  # scored time over the horizon: about how many outcomes do not overlap
    mean_width: float
    mean_confidence: float  # what the forecaster claimed; compare with coverage
    # model -> share of the scored forecasts it was chosen for, among models with MIN_SCORED scores or more
    chosen: dict[str, float] = field(default_factory=dict)
    fallback: float = 0.0  # share of the scored forecasts that were the last value: no model had the scores yet


@dataclass(frozen=True, slots=True)
class BacktestReport:
    samples: int  # samples replayed
    dropped: int  # non-finite values, repeated or backward timestamps
    median_interval_s: float
    level: float
    horizons: list[HorizonReport]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _clean(t: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Keep finite samples whose time is after every earlier kept one (what the engine would accept)."""
    ok = np.isfinite(t) & np.isfinite(y)
    t, y = t[ok], y[ok]
    if t.size:
        keep = np.ones(t.size, dtype=bool)
        keep[1:] = t[1:] > np.maximum.accumulate(t)[:-1]
        t, y = t[keep], y[keep]
    return t, y, int(ok.size - t.size)


def target_index(t: np.ndarray, h: float, tol: float) -> np.ndarray:
    """Index of the sample scored for a forecast made at each t for horizon h, or -1 (the shared scorer's rule:
    the sample at t + h, else the nearest one after t closer than `tol`, the earlier on a tie)."""
    n = t.size
    tgt = t + h
    j = np.searchsorted(t, tgt, side="left")
    ja = np.minimum(j, n - 1)
    d_after = np.where(j < n, t[ja] - tgt, np.inf)
    jb = np.maximum(j - 1, 0)
    d_before = np.where((j > 0) & (t[jb] > t), tgt - t[jb], np.inf)
    use_before = d_before <= d_after
    best = np.where(use_before, jb, ja)
    dist = np.where(use_before, d_before, d_after)
    return np.where((dist == 0) | (dist < tol), best, -1)


#: Independent outcomes per horizon of scored time: forecasts a horizon apart share no future, and two
#: within a horizon share part of it (calibrated on series whose true intervals are known, below).
OUTCOMES_PER_HORIZON = 2.0


def coverage_interval(coverage: float, scored: int, span_s: float, horizon_s: float,
                      level: float = 0.9) -> tuple[float, float]:
    """The `level` interval of a coverage measured on `scored` consecutive, overlapping forecasts.

    Forecasts made a sample apart share most of their future, so the hits count as about
    `OUTCOMES_PER_HORIZON` x span / horizon independent outcomes (never more than were scored), and the
    interval is Jeffreys' for a binomial share of that many. On synthetic series with known 90 % intervals
    (random walk, AR(1), white noise; two-hour windows at 15 s, `benchmarks/young_calibration.py`) it holds
    the true 0.9 in 87-100 % of the windows at 5-60 minutes. A moving-block bootstrap does not serve: two hours
    hold too few blocks of an hour to resample."""
    if scored <= 0 or not math.isfinite(coverage) or horizon_s <= 0:
        return float("nan"), float("nan")
    n = min(float(scored), max(OUTCOMES_PER_HORIZON * span_s / horizon_s, 1.0))
    k = coverage * n
    a = (1.0 - level) / 2.0
    lo = float(beta.ppf(a, k + 0.5, n - k + 0.5)) if k > 0 else 0.0
    hi = float(beta.ppf(1.0 - a, k + 0.5, n - k + 0.5)) if k < n else 1.0
    return lo, hi


def run_backtest(t: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *,
                 horizons_s: Sequence[float] = (300.0, 900.0, 1800.0, 3600.0), level: float = 0.9,
                 model: str = "auto", progress: Callable[[int, int], None] | None = None,
                 progress_every: int = 1000, score_from: float | None = None,
                 bounds: tuple[float, float] = (-np.inf, np.inf)) -> BacktestReport:
    """Replay one series (unix seconds `t`, values `y`) and score every forecast against what followed.

    `score_from` (unix seconds): every sample is replayed, but only forecasts made at or after it are scored.
    `bounds`: the metric's domain (a percentage's 0-100), as a twin gives its bank; forecasts and bounds stay in.

    `progress(done, total)` is called every `progress_every` samples and at the end (for a progress bar).
    Raises InputError when fewer than 3 usable samples remain.
    """
    t_arr, y_arr, dropped = _clean(np.asarray(t, dtype=np.float64).reshape(-1),
                                   np.asarray(y, dtype=np.float64).reshape(-1))
    n = t_arr.size
    if n < 3:
        raise InputError(f"backtest needs at least 3 usable samples, got {n}")
    bank = ForecastBank(horizons_s, level=level, model=model)
    idx = bank.add(1)
    if bounds != (-np.inf, np.inf):
        bank.set_domain(idx, [bounds[0]], [bounds[1]])
    lin = bank.model_names.index("linear")
    H = bank.horizons_s.size
    mean = np.full((n, H), np.nan)
    lo, hi, conf = mean.copy(), mean.copy(), mean.copy()
    linear = mean.copy()
    chosen = np.zeros((n, H), dtype=np.int64)
    fell_back = np.zeros((n, H), dtype=bool)
    forced = -1 if model == "auto" else bank.model_names.index(model)
    for r in range(n):
        bank.update(idx, t_arr[r:r + 1], y_arr[r:r + 1])
        fc = bank.forecast(idx)
        mean[r], lo[r], hi[r], conf[r] = fc.mean[0], fc.lower[0], fc.upper[0], fc.confidence[0]
        chosen[r] = fc.model[0]
        preds = bank.predict_models(idx)[0]
        linear[r] = preds[lin]
        # the bank's rule: a model may be chosen once scored MIN_SCORED times and with a forecast (a forced
        # model needs only the forecast); without one the forecast is the last value
        if forced < 0:
            fell_back[r] = ~((bank.core["cnt"][idx][0] >= MIN_SCORED) & np.isfinite(preds)).any(axis=0)
        else:
            fell_back[r] = ~np.isfinite(preds[forced])
        if progress is not None and ((r + 1) % progress_every == 0 or r + 1 == n):
            progress(r + 1, n)
    med_dt = float(np.median(np.diff(t_arr)))
    rows = []
    for j, h in enumerate(bank.horizons_s.tolist()):
        tj = target_index(t_arr, h, med_dt / 2.0)
        ok = (tj >= 0) & np.isfinite(mean[:, j]) & np.isfinite(lo[:, j]) & np.isfinite(hi[:, j])
        if score_from is not None:
            ok &= t_arr >= score_from
        m = int(ok.sum())
        if m == 0:
            nan = float("nan")
            rows.append(HorizonReport(h, 0, nan, nan, nan, nan, nan, coverage=nan, coverage_low=nan,
                                      coverage_high=nan, independent=0.0, mean_width=nan, mean_confidence=nan,
                                      chosen={}, fallback=0.0))
            continue
        actual = y_arr[tj[ok]]
        mae = float(np.mean(np.abs(actual - mean[ok, j])))
        mae_last = float(np.mean(np.abs(actual - y_arr[ok])))
        mae_lin = float(np.mean(np.abs(actual - linear[ok, j])))
        inside = (actual >= lo[ok, j]) & (actual <= hi[ok, j])
        cov_lo, cov_hi = coverage_interval(float(inside.mean()), m, m * med_dt, h)
        real = ~fell_back[ok, j]
        counts = np.bincount(chosen[ok, j][real], minlength=len(bank.model_names))
        share = {bank.model_names[k]: float(c) / m for k, c in enumerate(counts) if c}
        rows.append(HorizonReport(
            horizon_s=h, scored=m, mae=mae, mae_last=mae_last, mae_linear=mae_lin,
            mase_last=mae / mae_last if mae_last > 0 else float("nan"),
            mase_linear=mae / mae_lin if mae_lin > 0 else float("nan"),
            coverage=float(inside.mean()), coverage_low=cov_lo, coverage_high=cov_hi,
            independent=min(float(m), OUTCOMES_PER_HORIZON * m * med_dt / h),
            mean_width=float(np.mean(hi[ok, j] - lo[ok, j])),
            mean_confidence=float(np.mean(conf[ok, j])),
            chosen=dict(sorted(share.items(), key=lambda kv: -kv[1])), fallback=float(1.0 - real.mean()),
        ))
    return BacktestReport(samples=n, dropped=dropped, median_interval_s=med_dt, level=level, horizons=rows)


def format_report(rep: BacktestReport) -> str:
    """A plain-text table of a backtest, one line per scored horizon, then the models chosen.

    Horizons with nothing scored get no row (it would be all unknowns) but one line naming them; a number
    that cannot be computed (a MASE against a baseline that was never wrong) is shown as "—".
    """
    scored = [h for h in rep.horizons if h.scored > 0]
    unscored = [h for h in rep.horizons if h.scored == 0]
    out = [f"{rep.samples} samples ({rep.dropped} dropped), median interval {rep.median_interval_s:g}s, "
           f"{rep.level:.0%} intervals"]
    if scored:
        out.append(f"{'horizon':>8} {'scored':>7} {'MAE':>11} {'MASE/last':>9} {'MASE/linear':>11} "
                   f"{'coverage':>8} {'its 90% interval':>16} {'width':>11} {'confidence':>10}")
    for h in scored:
        band = f"{h.coverage_low:.2f}-{h.coverage_high:.2f}" if math.isfinite(h.coverage_low) else "—"
        out.append(f"{format_duration(h.horizon_s):>8} {h.scored:>7} {_num(h.mae, 11, '.4g')} "
                   f"{_num(h.mase_last, 9, '.3f')} "
                   f"{_num(h.mase_linear, 11, '.3f')} {_num(h.coverage, 8, '.3f')} {band:>16} "
                   f"{_num(h.mean_width, 11, '.4g')} {_num(h.mean_confidence, 10, '.3f')}")
    few = [h for h in scored if h.independent < 10]
    if few:
        out.append("coverage rests on few independent outcomes at " + ", ".join(
            f"{format_duration(h.horizon_s)} (~{h.independent:.0f})" for h in few)
            + ": its interval says how far it may be from the long-run share")
    if unscored:
        out.append("not scored: too little data for " + ", ".join(format_duration(h.horizon_s) for h in unscored)
                   + " (no forecast's target time falls inside the data)")
    if scored:
        out.append(f"models chosen (among models scored at least {MIN_SCORED} times at that horizon):")
    for h in scored:
        parts = [", ".join(f"{k} {_pct(v)}" for k, v in list(h.chosen.items())[:5])]
        if h.fallback > 0:
            parts.append(f"the last value as the fallback {_pct(h.fallback)} (no model had {MIN_SCORED} scores yet)")
        out.append(f"{format_duration(h.horizon_s):>8}  {'; '.join(p for p in parts if p)}")
    return "\n".join(out)


def _num(v: float, width: int, spec: str) -> str:
    return format(v, spec).rjust(width) if math.isfinite(v) else "—".rjust(width)


def _pct(share: float) -> str:
    """A share as a percentage; a small one never reads as 0 %."""
    return "<1%" if 0.0 < share < 0.005 else f"{share:.0%}"
