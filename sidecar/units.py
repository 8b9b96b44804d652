"""Durations, in one place: parsed, formatted, labelled and worded.

Every duration the sidecar reads or shows goes through here, so a horizon reads the same in the rules, the
alert rules, ``check-config``, the backtest report, the ``horizon`` label on /metrics and the API's sentences:

* :func:`parse_duration` reads the rules' syntax (``15s``, ``5m``, ``1h30m``, ``500ms``, ``2d``, ``1w``);
* :func:`format_duration` writes the shortest exact form in that syntax (``1h``, ``15m``, ``90s``,
  ``500ms``), which Prometheus reads too (alert rules' ``for:``) and which parses back to the same seconds;
* :func:`horizon_label` writes the ``horizon`` label of ``twin_forecast*`` and ``twin_confidence``: whole
  minutes as minutes even past an hour (``60m``, not ``1h``), because dashboards and alert rules match the
  label's value as text, and that text is part of the /metrics contract (``sidecar/contract.py``);
* :func:`horizon_words` says it in a sentence (``5 minutes``, ``90 seconds``).

It imports nothing from the package, so the engine, which must stay pure and may import only ``sidecar.errors``
and this module from outside ``sidecar/engine``, can use it (``tests/unit/test_layers.py`` holds both to that).

>>> parse_duration("1h30m"), format_duration(5400.0), horizon_label(3600.0), horizon_words(300.0)
(5400.0, '90m', '60m', '5 minutes')
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

__all__ = ["DURATION_UNITS", "format_duration", "horizon_label", "horizon_words", "parse_duration"]

#: The units of the rules' durations, in seconds (Prometheus' units without ``y``).
DURATION_UNITS: Mapping[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0,
                                       "w": 604800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
#: Largest unit first: the first one that divides a duration exactly names it.
_FORMAT_UNITS: tuple[tuple[str, int], ...] = (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def parse_duration(text: str) -> float:
    """``15s``, ``5m``, ``1h30m``, ``500ms`` -> seconds; ``ValueError`` otherwise."""
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos == 0 or pos != len(text) or not math.isfinite(total):
        raise ValueError(f"not a duration: {text!r}")
    return total


def format_duration(seconds: float) -> str:
    """Seconds -> the shortest exact ``1h``/``15m``/``30s`` form, else milliseconds; ``0s`` for no time at all.

    Zero is ``0s`` rather than ``0ms`` because it is how Prometheus writes it (an alert rule's ``for: 0s``),
    and a duration that is not positive has no shorter honest form.
    """
    if seconds <= 0:
        return "0s"
    for unit, size in _FORMAT_UNITS:
        if seconds >= size and float(seconds) % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000)}ms"


def horizon_label(seconds: float) -> str:
    """``300`` -> ``5m``, ``3600`` -> ``60m``, ``90`` -> ``90s``: minutes when whole, else seconds."""
    s = float(seconds)
    if s > 0 and s % 60 == 0:
        return f"{int(s // 60)}m"
    return f"{int(s)}s" if s.is_integer() else f"{s!r}s"


def horizon_words(seconds: float) -> str:
    """``300`` -> ``5 minutes``, ``60`` -> ``1 minute``, ``90`` -> ``90 seconds``: for sentences an SRE reads."""
    minutes = seconds / 60.0
    if minutes >= 1 and abs(minutes - round(minutes)) < 1e-9:
        m = round(minutes)
        return f"{m} minute" + ("s" if m != 1 else "")
    return f"{seconds:.0f} seconds"
