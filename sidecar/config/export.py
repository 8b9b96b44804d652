"""``export:``: which opt-in families and horizons ``/metrics`` carries beyond the default."""

from __future__ import annotations

import yaml

from ..contract import ExportOptions
from ..units import format_duration
from .maxima import MAX_HORIZON_S
from .reader import Reader, duration, scalar

_EXPORT_FLAGS = ("confidence", "actual", "expected", "divergence_ratio", "has_data", "last_sample", "query_errors")
_EXPORT_KEYS = ("all", "horizons", *_EXPORT_FLAGS)


def read_export(r: Reader | None, horizons_s: tuple[float, ...]) -> ExportOptions:
    """The ``export:`` section: one key turns one opt-in family on (``sidecar/contract.py``'s EXPORT_OPTIONS);
    ``horizons`` (a duration, a list of them, or ``all``) must name horizons some twin forecasts."""
    if r is None:
        return ExportOptions()
    base = ExportOptions.everything() if r.bool_("all", False) else ExportOptions()
    flags = {k: r.bool_(k, bool(getattr(base, k))) for k in _EXPORT_FLAGS}
    chosen: tuple[float, ...] | None = base.horizons_s
    all_horizons = base.all_horizons
    node = r.node_of("horizons")
    if node is not None:
        all_horizons = isinstance(node, yaml.ScalarNode) and scalar(node) == "all"
        if not all_horizons:
            listed = isinstance(node, yaml.SequenceNode)
            items = list(node.value) if listed else [node]
            if not items:
                raise r.error(node, r.key("horizons"), "expected a duration, a non-empty list of them, or all")
            picked: list[float] = []
            for i, n in enumerate(items):
                key = r.key(f"horizons[{i}]" if listed else "horizons")
                h = duration(r, n, key, maximum=MAX_HORIZON_S)
                if h not in horizons_s:
                    raise r.error(n, key, f"{format_duration(h)} is no twin's horizon (the twins forecast "
                                          f"{', '.join(map(format_duration, horizons_s))})")
                picked.append(h)
            chosen = tuple(sorted(set(picked)))
    r.finish(_EXPORT_KEYS)
    return ExportOptions(horizons_s=None if all_horizons else chosen, all_horizons=all_horizons, **flags)
