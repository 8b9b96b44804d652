"""Divergence: how far the actual state is from the expected one.

Expected values come from the user (``set_expected_state``) or, when none
is set, from the twin's own forecast for *now* made from earlier data. With a
learned expectation a sample must also fall outside the forecast interval to
diverge, so ordinary noise around a noisy series never raises an alert.

The percent is taken relative to |expected|, but never to less than a floor: four of the
series' typical one-step changes, or 2 % of the metric's limit, whichever is larger —
so an expectation of zero (an error rate, a quiet queue) does not turn noise into
billions of percent.

Severity follows the design: divergence > 75 % critical, > 50 % high,
> 25 % medium, otherwise low (only once the metric's threshold is exceeded).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .records import DivergenceAlert, Severity, component_of, iso

#: |expected| below this is treated as this, so a zero baseline gives a large but finite percent.
EXPECTED_FLOOR = 1e-9
#: The denominator is at least this many of the series' typical one-step changes ...
NOISE_UNITS = 4.0
#: ... and at least 2 % of the metric's limit: an error rate expected at 0 is compared with the
#: scale it is judged on, not with zero (which made 0.3 req/s "32 billion percent" off).
LIMIT_SHARE = 0.02


def divergence_floor(scale: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """Smallest |expected| a divergence percent is taken relative to (0 where nothing is known)."""
    with np.errstate(invalid="ignore"):
        noise = np.where(np.isfinite(scale) & (scale > 0), NOISE_UNITS * scale, 0.0)
        share = np.where(np.isfinite(limit) & (limit > 0), LIMIT_SHARE * np.abs(limit), 0.0)
    out: np.ndarray = np.maximum(noise, share)
    return out

RECOMMENDATIONS: dict[str, str] = {
    "cpu": "Scale horizontally or investigate CPU-intensive processes",
    "memory": "Check for memory leaks or raise the memory limit; expected state may need updating",
    "latency": "Investigate slow dependencies, queueing and recent deploys (manual investigation)",
    "error_rate": "Investigate failing requests and recent changes (manual investigation)",
}
DEFAULT_RECOMMENDATION = "Investigate the change in this metric"


@dataclass(frozen=True, slots=True)
class Divergence:
    """Per-sample result arrays, aligned with the input."""

    percent: np.ndarray     # |actual - expected| / |expected| * 100 (NaN: no expectation)
    ratio: np.ndarray       # (actual - expected) / expected
    diverging: np.ndarray   # bool: above threshold (and outside the interval when learned)
    severity: np.ndarray    # int8 0..4


class DivergenceDetector:
    """Vectorised divergence of actual vs expected values."""

    def compute(self, actual: np.ndarray, expected: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                manual: np.ndarray, threshold_pct: np.ndarray, floor: np.ndarray | None = None) -> Divergence:
        """`floor` (see `divergence_floor`): per sample, the smallest denominator; a percent of a value near
        zero is otherwise noise divided by almost nothing."""
        den = np.maximum(np.abs(expected), EXPECTED_FLOOR)
        if floor is not None:
            den = np.maximum(den, np.where(np.isfinite(floor), floor, 0.0))
        with np.errstate(invalid="ignore"):
            diff = actual - expected
            ratio = diff / den
            percent = np.abs(ratio) * 100.0
            outside = (actual < lower) | (actual > upper)
            gate = np.where(manual, True, outside)
            diverging = (percent > threshold_pct) & gate & np.isfinite(percent)
        sev = (1 + (percent > 25.0).astype(np.int8) + (percent > 50.0) + (percent > 75.0)).astype(np.int8)
        severity = np.where(diverging, sev, 0).astype(np.int8)
        return Divergence(percent=percent, ratio=ratio, diverging=diverging, severity=severity)

    @staticmethod
    def severity_of(percent: float) -> Severity:
        if percent > 75.0:
            return Severity.CRITICAL
        if percent > 50.0:
            return Severity.HIGH
        if percent > 25.0:
            return Severity.MEDIUM
        return Severity.LOW

    @staticmethod
    def auto_correct_eligible(metric: str, percent: float, manual: bool) -> bool:
        """The design's rules: small CPU divergences (< 50 %) and small memory ones (< 25 %, only
        against a hand-set expectation there is something to update) are safe; latency, errors
        and custom metrics always need a human."""
        comp = component_of(metric)
        if comp == "cpu":
            return percent < 50.0
        if comp == "memory":
            return manual and percent < 25.0
        return False

    def alert(self, *, alert_id: str, twin_id: str, metric: str, expected: float, actual: float,
              percent: float, severity_code: int, manual: bool, at: float) -> DivergenceAlert:
        comp = component_of(metric)
        return DivergenceAlert(
            alert_id=alert_id, twin_id=twin_id, component=comp, metric=metric,
            expected_value=float(expected), actual_value=float(actual),
            divergence_percent=round(float(percent), 3),
            severity=str(Severity.from_code(severity_code)),
            recommended_correction=RECOMMENDATIONS.get(comp, DEFAULT_RECOMMENDATION),
            auto_correct_eligible=self.auto_correct_eligible(metric, percent, manual),
            timestamp=iso(at), expected_source="manual" if manual else "learned",
        )
