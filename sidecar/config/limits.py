"""``limits:``: the most twins, series and answer bytes the sidecar takes on, and the history it keeps."""

from __future__ import annotations

from .maxima import MAX_HISTORY_S, MAX_LIMIT_SERIES, MAX_LIMIT_TWINS, MAX_RESPONSE_BYTES
from .reader import Reader
from .records import LimitsConfig


def read_limits(r: Reader | None) -> LimitsConfig:
    d = LimitsConfig()
    if r is None:
        return d
    out = LimitsConfig(
        max_twins=r.int_("max_twins", d.max_twins, maximum=MAX_LIMIT_TWINS) or d.max_twins,
        max_series=r.int_("max_series", d.max_series, maximum=MAX_LIMIT_SERIES) or d.max_series,
        max_response_bytes=r.int_("max_response_bytes", d.max_response_bytes, minimum=1024,
                                  maximum=MAX_RESPONSE_BYTES) or d.max_response_bytes,
        history_s=r.duration("history", d.history_s, maximum=MAX_HISTORY_S))
    r.finish()
    return out
