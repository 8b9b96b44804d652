"""State prediction: forecasts per metric and horizon, said in words.

The numbers come from :class:`~sidecar.engine.forecast.ForecastBank`
(vectorised models, automatic choice, calibrated intervals; ``forecast_bank`` builds it from the
settings). This module adds
what an SRE reads: the time until a limit is crossed, contributing trends
("CPU increasing by 0.75 percentage points per minute") and risk factors ("CPU may reach 95%
in 30 minutes").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import ndtr

from ..units import horizon_words
from .forecast import ForecastBank

#: Display name, unit and verb per core metric; error_rate is shown in percent.
_DISPLAY: dict[str, tuple[str, str, str, float]] = {
    "cpu_usage": ("CPU", "%", "reach", 1.0),
    "memory_usage": ("Memory", "%", "reach", 1.0),
    "request_latency_ms": ("Latency", "ms", "exceed", 1.0),
    "error_rate": ("Error rate", "%", "exceed", 100.0),
}
#: A trend is worth saying when it would move the value by this fraction of its level in an hour.
TREND_SIGNIFICANCE = 0.05
#: z for converting a 90 % interval half-width into a normal sigma.
Z90 = 1.6448536269514722


def _fmt(v: float) -> str:
    a = abs(v)
    if a >= 100 or a == 0:
        return f"{v:.0f}"
    if a >= 1:
        return f"{v:.2f}".rstrip("0").rstrip(".")
    return f"{v:.3g}"


def _display(metric: str) -> tuple[str, str, str, float]:
    return _DISPLAY.get(metric, (metric, "", "exceed", 1.0))


def trend_text(metric: str, slope_per_s: float, level: float) -> str | None:
    """"CPU increasing by 0.75 percentage points per minute", or None when the trend is not worth saying."""
    if not np.isfinite(slope_per_s) or slope_per_s == 0:
        return None
    scale = max(abs(level), 1e-12) if np.isfinite(level) else 1e-12
    if abs(slope_per_s) * 3600.0 < TREND_SIGNIFICANCE * scale:
        return None
    name, unit, _, mult = _display(metric)
    per_min = slope_per_s * 60.0 * mult
    direction = "increasing" if per_min > 0 else "decreasing"
    # a percentage moves by percentage points: "0.75% per minute" could be read as 0.75 % of itself
    amount = f"{_fmt(abs(per_min))} percentage points" if unit == "%" else f"{_fmt(abs(per_min))}{unit}"
    return f"{name} {direction} by {amount} per minute"


def risk_text(metric: str, limit: float, eta_s: float) -> str:
    """"CPU may reach 95% in 30 minutes" (eta rounded up to a whole minute); "now" at eta 0."""
    name, unit, verb, mult = _display(metric)
    if eta_s <= 0:
        return f"{name} is at or above {_fmt(limit * mult)}{unit} now"
    minutes = max(1, int(np.ceil(eta_s / 60.0)))
    return f"{name} may {verb} {_fmt(limit * mult)}{unit} in {horizon_words(60.0 * minutes)}"


def breach_eta(last: np.ndarray, mean: np.ndarray, horizons_s: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """Seconds until the forecast path first reaches ``limit``; NaN when it does not within the horizons.

    The path runs straight from the last value (t = 0) through each horizon's point
    forecast; 0 when the last value is already at or over the limit.
    """
    n = last.shape[0]
    path = np.concatenate([last[:, None], mean], axis=1)                  # (n, H+1)
    hs = np.concatenate([[0.0], np.asarray(horizons_s, float)])
    with np.errstate(invalid="ignore"):
        at_or_over = path >= limit[:, None]
    at_or_over &= np.isfinite(path)
    any_hit = at_or_over.any(axis=1) & np.isfinite(limit)
    k = np.argmax(at_or_over, axis=1)                                      # first index at/over
    eta = np.full(n, np.nan)
    rows = np.nonzero(any_hit)[0]
    if rows.size:
        kk = k[rows]
        first = kk == 0
        eta[rows[first]] = 0.0
        r, kk = rows[~first], kk[~first]
        v0, v1 = path[r, kk - 1], path[r, kk]
        h0, h1 = hs[kk - 1], hs[kk]
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(v1 > v0, (limit[r] - v0) / (v1 - v0), 1.0)
        eta[r] = h0 + np.clip(np.nan_to_num(frac, nan=1.0), 0.0, 1.0) * (h1 - h0)
    return eta


#: A time to limit is shown only when the value or its shortest-horizon forecast is at least this share of the
#: limit, or when the short-horizon trend alone reaches the limit within the longest horizon.
FAR_BELOW = 0.5


def hide_unsupported_eta(eta: np.ndarray, last: np.ndarray, mean: np.ndarray, horizons_s: np.ndarray,
                         limit: np.ndarray, dropping: np.ndarray | None = None) -> np.ndarray:
    """NaN where a time to limit rests on long horizons alone while the series sits far below its limit.

    After a sudden drop (a cache flush: memory 80 % -> 1 %) the slow horizons still carry the old level
    for a moment; a "time to limit 46 s" then is noise an on-call engineer learns to ignore. A real
    climb shows at the short horizon first: the line through the value and the shortest forecast
    reaches the limit within the longest horizon (3 %/min from 20 % toward 95 % does at once).
    `dropping` marks series whose latest samples sit far below what the models expected (a pending
    run, `ForecastBank.pending_run`): for the samples until the models follow, even the shortest
    forecast still carries the old level, so far below the limit no time to limit is shown."""
    hs = np.asarray(horizons_s, float)
    j = int(np.argmin(hs))
    f1 = mean[:, j]
    with np.errstate(invalid="ignore", divide="ignore"):
        far = (last < FAR_BELOW * limit) & (f1 < FAR_BELOW * limit)
        rate = (f1 - last) / hs[j]
        short_eta = np.where(rate > 0, (limit - last) / rate, np.inf)
        unsupported = far & ~(short_eta <= hs.max())
        if dropping is not None:
            unsupported |= dropping & (last < FAR_BELOW * limit)
    out: np.ndarray = np.where(unsupported, np.nan, eta)
    return out


def exceed_probability(mean: np.ndarray, lower: np.ndarray, upper: np.ndarray, limit: np.ndarray,
                       level: float = 0.9) -> np.ndarray:
    """P(value ≥ limit) per forecast, reading the interval as a normal one (NaN without a limit)."""
    from scipy.special import ndtri

    z = float(ndtri(0.5 + level / 2.0)) if level != 0.9 else Z90
    with np.errstate(invalid="ignore", divide="ignore"):
        sigma = np.maximum((upper - lower) / (2.0 * z), 1e-12)
        p = 1.0 - ndtr((limit - mean) / sigma)
    return np.where(np.isfinite(limit) & np.isfinite(mean), np.nan_to_num(p, nan=0.0), np.nan)


def forecast_bank(horizons_s: Sequence[float], *, level: float = 0.9, model: str = "auto") -> ForecastBank:
    """The bank behind every series' forecasts, its horizons in ascending order (the arrays' column order);
    ``ValueError`` for no horizon or one that is not positive."""
    horizons = sorted(float(h) for h in horizons_s)
    if not horizons or horizons[0] <= 0:
        raise ValueError("horizons must be positive seconds")
    return ForecastBank(horizons, level=level, model=model)
