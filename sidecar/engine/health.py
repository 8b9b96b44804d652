"""Health score (0–100) and drift, for all twins at once.

Health = 100 − Σ penalties, clipped to [0, 100]:

* load: for each metric with a limit L and latest value v,
  ``25 · clip((v/L − 0.8) / 0.2, 0, 1)`` — nothing below 80 % of the limit,
  25 points at or over the limit;
* divergence: per metric by severity, low 2, medium 5, high 10, critical 20.

So one metric at its limit gives 75 (a warning below 70 needs more), two
metrics at their limits or one at the limit and critically divergent give
≤ 55, and it takes real trouble to go under 50 (critical).

The bands, one rule for the engine, its events, the API, the alert rules and the
README: warning below 70, critical below 50. A score of exactly 70 is healthy and
one of exactly 50 is a warning. The score is kept to two decimals, the precision
every display of it uses, so the band is decided on the number shown: penalties
that add up to 50 in floating point (49.99999999999999) give 50.00, a warning,
never a critical score that reads 50.

Drift is a sustained divergence: one metric diverging for ``drift_samples``
consecutive samples — a single noisy sample is never a drift.
"""

from __future__ import annotations

import numpy as np

LOAD_KNEE = 0.8
LOAD_PENALTY = 25.0
SEVERITY_PENALTY = np.array([0.0, 2.0, 5.0, 10.0, 20.0])
WARNING_BELOW = 70.0     # a score below this is a warning (70 itself is healthy)
CRITICAL_BELOW = 50.0    # a score below this is critical (50 itself is a warning)
SCORE_DECIMALS = 2       # the score's precision (see the module docstring)


def series_penalty(last_value: np.ndarray, limit: np.ndarray, severity: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        load = np.clip((last_value / limit - LOAD_KNEE) / (1.0 - LOAD_KNEE), 0.0, 1.0)
    load = np.where(np.isfinite(load), load, 0.0)
    out: np.ndarray = LOAD_PENALTY * load + SEVERITY_PENALTY[np.clip(severity, 0, 4)]
    return out


def health_scores(penalty: np.ndarray, twin_slot: np.ndarray, n_twins: int) -> np.ndarray:
    """Per twin, from per-series penalties; series with twin_slot < 0 are ignored."""
    ok = twin_slot >= 0
    total = np.bincount(twin_slot[ok], weights=penalty[ok], minlength=n_twins)[:n_twins]
    out: np.ndarray = np.round(np.clip(100.0 - total, 0.0, 100.0), SCORE_DECIMALS)
    return out


def health_band(health: np.ndarray) -> np.ndarray:
    """0 healthy (70 and above), 1 warning (below 70, 50 included), 2 critical (below 50)."""
    return (health < WARNING_BELOW).astype(np.int8) + (health < CRITICAL_BELOW)


def format_score(score: float) -> str:
    """A score as text, exactly (it has two decimals at most) without trailing zeros: ``50``, ``49.99``,
    ``67.5``. A message that compares a score with a band's bound must not round it across the bound (with
    ``.0f``, 49.6 reads "health 50 is below 50")."""
    return f"{round(float(score), SCORE_DECIMALS):.{SCORE_DECIMALS}f}".rstrip("0").rstrip(".")


def drift_flags(run_length: np.ndarray, twin_slot: np.ndarray, n_twins: int, drift_samples: int) -> np.ndarray:
    ok = twin_slot >= 0
    hit = (run_length >= drift_samples) & ok
    return np.bincount(twin_slot[hit], minlength=n_twins)[:n_twins] > 0
