"""Divergence: how far the actual state is from the expected one.

Expected values come from the user (``set_expected_state``) or, when none
is set, from the twin's own forecast for *now* made from earlier data.

The percent is taken relative to |expected|, but never to less than a floor: four of the
series' typical one-step changes, the 99th percentile of its recent one-step changes, or 2 %
of the metric's limit, whichever is larger — so an expectation of zero (an error rate, a
quiet queue, 0-2 requests in flight) does not turn noise into billions of percent.

Severity follows the design: divergence > 75 % critical, > 50 % high, > 25 % medium,
otherwise low (only once the metric's threshold is exceeded). That is all for a hand-set
expectation: the user said what the value should be. A learned expectation only says what
was usual, so a sample diverges from it only as far as it is unusual for its series: it
must also lie outside the forecast interval, exceed the 99th percentile of the series'
recent one-step errors, and be surprising to the anomaly detector, and the severity is
capped by how far beyond that percentile it lies and by how surprising it is
(`learned_band`). Noise of a small-integer gauge is 100 % of its expectation every other
sample; it is not an incident.

Divergence has a direction that hurts: CPU, memory, latency and errors above what is expected
(`up`, their default), a custom metric either way (`both`) unless its rule says otherwise. A
divergence the harmless way (an idle host at 7 % CPU against an expected 55 %) is at most `low`,
never opens an alert or counts toward a drift, and its advice says what it is (spare capacity).
The anomaly score judges such a drop on its own: a service that lost its traffic is an anomaly,
not a capacity problem.
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


#: For a learned expectation, bands of u = |actual - expected| / tail, the sample's one-step error over the 99th
#: percentile of the series' recent ones (`Expectation.tail`): u <= 1 is the series' ordinary noise and does
#: not diverge; above 1, 2, 3, 4 it may be low, medium, high, critical.
TAIL_BANDS = (1.0, 2.0, 3.0, 4.0)
#: ... and of its `surprise` (1 - p, the anomaly bank's score before its one-alert-per-incident rule): below
#: 0.9 it does not diverge; from 0.9 it may be low, from 0.95 medium, and from 0.99 (the anomaly bank's alert
#: level: the series' own history calls it an anomaly) high or critical.
SURPRISE_BANDS = (0.9, 0.95, 0.99, 0.99)


def divergence_floor(scale: np.ndarray, limit: np.ndarray, tail: np.ndarray | None = None) -> np.ndarray:
    """Smallest |expected| a divergence percent is taken relative to (0 where nothing is known).

    `tail` (the forecaster's `Expectation.tail`, the 99th percentile of recent one-step errors) holds where
    `scale` does not: `scale` is a mean of the errors that forgets in about 20 samples, so on a gauge that is
    mostly 0 (requests in flight) it falls to almost nothing between two moves and a 1 read "100 billion
    percent" off; one move in a hundred is a whole unit, and `tail` forgets over hundreds of samples."""
    with np.errstate(invalid="ignore"):
        noise = np.where(np.isfinite(scale) & (scale > 0), NOISE_UNITS * scale, 0.0)
        share = np.where(np.isfinite(limit) & (limit > 0), LIMIT_SHARE * np.abs(limit), 0.0)
        out: np.ndarray = np.maximum(noise, share)
        if tail is not None:
            out = np.maximum(out, np.where(np.isfinite(tail) & (tail > 0), tail, 0.0))
    return out


def _band(x: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """How many of the ascending `edges` x is above (0..4; NaN counts as 0)."""
    v = np.where(np.isfinite(x), x, -np.inf)
    out: np.ndarray = (v[..., None] > np.asarray(edges)).sum(axis=-1).astype(np.int8)
    return out


def learned_band(actual: np.ndarray, expected: np.ndarray, tail: np.ndarray | None,
                 surprise: np.ndarray | None) -> np.ndarray:
    """Highest severity code (0..4) a sample may have against a learned expectation: the lower of what its
    size against the series' usual moves (`TAIL_BANDS`) and its surprise (`SURPRISE_BANDS`) allow. Without a
    yardstick yet (NaN tail: every one-step error so far was 0) the size allows anything."""
    allowed = np.full(np.shape(actual), 4, np.int8)
    if tail is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            u = np.abs(actual - expected) / tail
        allowed = np.where(np.isfinite(tail) & (tail > 0), _band(u, TAIL_BANDS), allowed).astype(np.int8)
    if surprise is not None:
        # `surprise >= edge`, as a score of exactly 0.999 is "one in a thousand"
        s = np.asarray(surprise, np.float64)
        allowed = np.minimum(allowed, _band(np.nextafter(s, np.inf), SURPRISE_BANDS)).astype(np.int8)
    return allowed


RECOMMENDATIONS: dict[str, str] = {
    "cpu": "Scale horizontally or investigate CPU-intensive processes",
    "memory": "Check for memory leaks or raise the memory limit; expected state may need updating",
    "latency": "Investigate slow dependencies, queueing and recent deploys (manual investigation)",
    "error_rate": "Investigate failing requests and recent changes (manual investigation)",
}
DEFAULT_RECOMMENDATION = "Investigate the change in this metric"
#: Advice for a divergence in the harmless direction (nothing pages on it).
HARMLESS: dict[str, str] = {
    "cpu": "CPU below its expected level: spare capacity, consider scaling in (the anomaly score says whether "
           "traffic was lost)",
    "memory": "Memory below its expected level: nothing to act on (a cache flush or a restart frees memory)",
    "latency": "Latency below its expected level: faster than usual, nothing to act on",
    "error_rate": "Error rate below its expected level: nothing to act on",
}
#: Direction codes per series: +1 hurts above, -1 hurts below, 0 both ways.
DIRECTION_CODE = {"up": 1, "down": -1, "both": 0}


def harmful_side(actual: np.ndarray, expected: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Whether each value lies on the side of its expectation that its metric's direction code says hurts."""
    with np.errstate(invalid="ignore"):
        out: np.ndarray = (direction == 0) | (np.sign(actual - expected) == direction)
    return out


def advice(metric: str, harmful: bool, above: bool) -> str:
    """What to do about a divergence of this metric, in the direction it went."""
    comp = component_of(metric)
    if harmful:
        return RECOMMENDATIONS.get(comp, DEFAULT_RECOMMENDATION)
    if not above and comp in HARMLESS:
        return HARMLESS[comp]
    side = "above" if above else "below"
    return f"{metric} {side} its expected level, the harmless direction for it: nothing to act on"


@dataclass(frozen=True, slots=True)
class Divergence:
    """Per-sample result arrays, aligned with the input."""

    percent: np.ndarray     # |actual - expected| / |expected| * 100 (NaN: no expectation)
    ratio: np.ndarray       # (actual - expected) / expected
    diverging: np.ndarray   # bool: above threshold (and outside the interval when learned), the harmful way
    severity: np.ndarray    # int8 0..4; at most 1 (low) the harmless way


class DivergenceDetector:
    """Vectorised divergence of actual vs expected values."""

    def compute(self, actual: np.ndarray, expected: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                manual: np.ndarray, threshold_pct: np.ndarray, floor: np.ndarray | None = None,
                tail: np.ndarray | None = None, surprise: np.ndarray | None = None,
                direction: np.ndarray | None = None) -> Divergence:
        """`floor` (see `divergence_floor`): per sample, the smallest denominator; a percent of a value near
        zero is otherwise noise divided by almost nothing.

        `tail` and `surprise` (see `learned_band`) judge the learned expectations: the twin learned only what
        is usual, so a sample diverges from it as far as it is unusual for its series, not as far as it is a
        large share of a small number (a gauge of 0-3 requests in flight is 100 % off its expectation every
        other sample). A hand-set expectation is the user's statement: judged on the percent alone."""
        den = np.maximum(np.abs(expected), EXPECTED_FLOOR)
        if floor is not None:
            den = np.maximum(den, np.where(np.isfinite(floor), floor, 0.0))
        with np.errstate(invalid="ignore"):
            diff = actual - expected
            ratio = diff / den
            # a learned expectation of about 0 for a series that never varied (each forecast so far exact, no
            # limit) gives no yardstick: its first move is as unknown a share as it is large (not 1e11 %); the
            # next sample has a scale. A hand-set 0 keeps the finite floor: the user said "exactly 0".
            ratio = np.where(~manual & (den <= EXPECTED_FLOOR) & (diff != 0), np.nan, ratio)
            percent = np.abs(ratio) * 100.0
            outside = (actual < lower) | (actual > upper)
            gate = np.where(manual, True, outside)
            diverging = (percent > threshold_pct) & gate & np.isfinite(percent)
        sev = (1 + (percent > 25.0).astype(np.int8) + (percent > 50.0) + (percent > 75.0)).astype(np.int8)
        if tail is not None or surprise is not None:
            allowed = np.where(manual, 4, learned_band(actual, expected, tail, surprise))
            diverging &= allowed > 0
            sev = np.minimum(sev, allowed).astype(np.int8)
        severity = np.where(diverging, sev, 0).astype(np.int8)
        if direction is not None:           # the harmless way: shown (low at most), never an alert or a drift
            harmful = harmful_side(actual, expected, direction)
            severity = np.where(harmful, severity, np.minimum(severity, 1)).astype(np.int8)
            diverging = diverging & harmful
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
            recommended_correction=advice(metric, True, actual > expected),
            auto_correct_eligible=self.auto_correct_eligible(metric, percent, manual),
            timestamp=iso(at), expected_source="manual" if manual else "learned",
        )
