"""A twin rule's replica recommendations: ``min_replicas``, ``max_replicas``, ``scale_down_stabilisation``,
``scale_quantile``."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..engine.replicas import DEFAULT_QUANTILE, QUANTILE_RANGE
from .maxima import MAX_REPLICAS, MAX_SCALE_DOWN_STABILISATION_S
from .reader import Reader
from .records import DEFAULT_SCALE_DOWN_STABILISATION_S, TwinRule


def scaling(r: Reader, *, workers: bool, request_rate: bool) -> dict[str, Any]:
    """``min_replicas``, ``max_replicas``, ``scale_down_stabilisation`` and ``scale_quantile`` (the forecast
    quantile of the request rate replicas are sized for) of a twin rule (replica recommendations)."""
    optional = ("min_replicas", "scale_down_stabilisation", "scale_quantile")
    top = r.int_("max_replicas", None, maximum=MAX_REPLICAS)
    if top is None:
        r.used.update(optional)     # known keys, listed on a typo
        for key in optional:
            if key in r.items:
                raise r.error(r.items[key][0], r.key(key), "only meaningful with `max_replicas` (which turns replica "
                                                           "recommendations on)")
        return {}
    for needed, have in (("workers", workers), ("request_rate", request_rate)):
        if not have:
            raise r.error(r.items["max_replicas"][0], r.key("max_replicas"),
                          f"replica recommendations need `{needed}` (the capacity of one replica is fitted from "
                          "its request rate and its workers)")
    low = r.int_("min_replicas", 1, maximum=MAX_REPLICAS)
    assert low is not None
    if low > top:
        raise r.error(r.items["min_replicas"][1], r.key("min_replicas"),
                      f"expected at most max_replicas ({top}), got {low}")
    window = r.duration("scale_down_stabilisation", DEFAULT_SCALE_DOWN_STABILISATION_S,
                        maximum=MAX_SCALE_DOWN_STABILISATION_S, allow_zero=True)
    quantile = r.number("scale_quantile", DEFAULT_QUANTILE, maximum=QUANTILE_RANGE[1])
    if quantile < QUANTILE_RANGE[0]:
        raise r.error(r.items["scale_quantile"][1], r.key("scale_quantile"),
                      f"expected at least {QUANTILE_RANGE[0]:g} (the point forecast; below it replicas are sized for "
                      f"less traffic than expected), got {quantile:g}")
    return {"min_replicas": low, "max_replicas": top, "scale_down_stabilisation_s": window,
            "scale_quantile": quantile}


def drives_itself(rule: TwinRule, identities: Sequence[Mapping[str, str]]) -> Mapping[str, str] | None:
    """The sidecar's own scrape identity a scaled twin's queries select, if any: a twin never drives the
    sidecar that computes its recommendation (scaling it would move the numbers the scaling is based on)."""
    for ident in identities:
        if ident and any(all(re.search(rf'\b{re.escape(k)}\s*=~?\s*"{re.escape(v)}"', q) for k, v in ident.items())
                         for q in rule.queries().values()):
            return ident
    return None
