"""Auto-correction: act only on small, safe divergences, and record every attempt.

Nothing here touches the real service: "recommend scaling" is a record for a
human or an autoscaler to act on; the only change applied is moving a
hand-set expected memory baseline to what the service really uses.
"""

from __future__ import annotations

from dataclasses import dataclass

from .records import CorrectionRecord, DivergenceAlert, iso


@dataclass(frozen=True, slots=True)
class CorrectionDecision:
    record: CorrectionRecord
    new_expected: float | None  # set when the correction updates the expected state


class AutoCorrector:
    """The design's rules, as one decision per opened alert."""

    def decide(self, alert: DivergenceAlert, *, correction_id: str, enabled: bool,
               at: float) -> CorrectionDecision:
        comp = alert.component
        exp, act = alert.expected_value, alert.actual_value
        if comp == "cpu":
            action = "recommend_scaling"
            details = (f"CPU {act:.1f}% vs expected {exp:.1f}% ({alert.divergence_percent:.0f}% divergence): "
                       + ("scale horizontally" if act > exp else "consider scaling in"))
        elif comp == "memory":
            action = "update_expected_state"
            details = f"Updated expected memory from {exp:.1f}% to {act:.1f}%"
        else:
            action = "manual_investigation"
            details = f"{alert.metric} diverges {alert.divergence_percent:.0f}%: needs a human"

        new_expected: float | None = None
        if not enabled:
            applied, reason = False, "auto-correction disabled for this twin"
        elif not alert.auto_correct_eligible:
            applied, reason = False, _why_not(alert)
        elif action == "update_expected_state":
            applied, reason, new_expected = True, "memory divergence < 25% from a hand-set baseline", act
        else:
            applied, reason = False, "recommendation only; scaling is left to the operator or autoscaler"
        record = CorrectionRecord(
            correction_id=correction_id, twin_id=alert.twin_id, alert_id=alert.alert_id, component=comp,
            action=action, details=details, applied=applied, reason=reason, timestamp=iso(at))
        return CorrectionDecision(record=record, new_expected=new_expected)


def _why_not(alert: DivergenceAlert) -> str:
    if alert.component in ("latency", "error_rate"):
        return "latency and error-rate divergences are never auto-corrected"
    if alert.component == "cpu":
        return "CPU divergence of 50% or more is not a small divergence"
    if alert.component == "memory":
        if alert.expected_source != "manual":
            return "no hand-set memory baseline to update"
        return "memory divergence of 25% or more is not a small divergence"
    return "custom metrics are never auto-corrected"
