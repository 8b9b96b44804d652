"""``limits:``: the most twins, series and answer bytes the sidecar takes on, and the history it keeps."""

from __future__ import annotations

from ..units import format_duration
from .maxima import HISTORY_MIN_SAMPLES, MAX_HISTORY_S, MAX_LIMIT_SERIES, MAX_LIMIT_TWINS, MAX_RESPONSE_BYTES
from .reader import Reader
from .records import LimitsConfig


def read_limits(r: Reader | None, interval_s: float) -> LimitsConfig:
    """The section; a ``history`` too short for the capacity fit at this ``interval`` is refused (the default 1h is
    lengthened where it must be, see `app.engine_settings`)."""
    d = LimitsConfig()
    if r is None:
        return d
    out = LimitsConfig(
        max_twins=r.int_("max_twins", d.max_twins, maximum=MAX_LIMIT_TWINS) or d.max_twins,
        max_series=r.int_("max_series", d.max_series, maximum=MAX_LIMIT_SERIES) or d.max_series,
        max_response_bytes=r.int_("max_response_bytes", d.max_response_bytes, minimum=1024,
                                  maximum=MAX_RESPONSE_BYTES) or d.max_response_bytes,
        history_s=r.duration("history", d.history_s, maximum=MAX_HISTORY_S))
    need = (HISTORY_MIN_SAMPLES - 1) * interval_s
    node = r.node_of("history")
    if node is not None and out.history_s < need:
        kept = int(out.history_s // interval_s) + 1
        raise r.error(node, r.key("history"),
                      f"keeps {kept} samples at interval {format_duration(interval_s)}; "
                      f"the capacity fit (what-if, replica advice) needs {HISTORY_MIN_SAMPLES}: at least "
                      f"{format_duration(need)}")
    r.finish()
    return out
