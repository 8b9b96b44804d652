"""``twins:``: one rule, a single twin or a family of discovered twins, read into a :class:`TwinRule`."""

from __future__ import annotations

import re
from types import MappingProxyType

import yaml

from ..engine.records import SystemType
from .discovery import name_labels_of
from .maxima import MAX_HORIZON_S, MAX_REPLICAS
from .per_metric import bounds, directions, metric_map
from .promql import promql
from .reader import METRIC_NAME, Reader, duration
from .records import DEFAULT_HORIZONS_S, TwinRule
from .scaling import scaling

_TWIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")   # no "@": discovered twins are "<rule>@<labels>"


def read_twin(path: str, node: yaml.Node, index: int) -> TwinRule:
    r = Reader(path, node, f"twins[{index}]")
    name = r.req_str("name")
    if not _TWIN_NAME.fullmatch(name):
        raise r.error(r.items["name"][1], r.key("name"),
                      "expected a name of letters, digits and . _ - : (it is a label value and a URL part)")
    stype = r.str_("system_type", SystemType.OTHER.value) or SystemType.OTHER.value
    try:
        system_type = SystemType(stype)
    except ValueError:
        raise r.error(r.items["system_type"][1], r.key("system_type"),
                      f"expected one of {', '.join(t.value for t in SystemType)}, got {stype!r}") from None
    discover = promql(r, "discover")
    mr = r.mapping("metrics")
    if mr is None or not mr.items:
        raise r.error(r.items["metrics"][1] if "metrics" in r.items else r.node, r.key("metrics"),
                      "required: a mapping of metric name -> PromQL, with at least one metric")
    metrics: dict[str, str] = {}
    for metric in mr.items:
        if not METRIC_NAME.fullmatch(metric):
            raise mr.error(mr.items[metric][0], mr.key(metric), "expected a metric name like cpu_usage")
        query = promql(mr, metric, required=True)
        assert query is not None
        metrics[metric] = query
    request_rate = promql(r, "request_rate")
    if request_rate is not None and "request_rate" in metrics:
        raise r.error(r.items["request_rate"][0], r.key("request_rate"),
                      "request_rate is given both here and under metrics; keep one")
    name_labels = name_labels_of(r, discover, [*metrics.values(), request_rate or ""])
    all_metrics = {**metrics, **({"request_rate": request_rate} if request_rate else {})}
    horizons: list[float] = []
    for i, n in r.sequence("horizons"):
        horizons.append(duration(r, n, r.key(f"horizons[{i}]"), maximum=MAX_HORIZON_S))
    if "horizons" in r.items and not horizons:
        raise r.error(r.items["horizons"][1], r.key("horizons"), "expected a non-empty list of durations")
    rule = TwinRule(
        name=name, metrics=MappingProxyType(metrics), system_type=system_type, discover=discover,
        name_labels=tuple(name_labels), request_rate=request_rate,
        expected=MappingProxyType(metric_map(r, "expected", all_metrics, positive=False, expected=True)),
        thresholds=MappingProxyType(metric_map(r, "thresholds", all_metrics, positive=True)),
        limits=MappingProxyType(metric_map(r, "limits", all_metrics, positive=False, limit=True)),
        horizons_s=tuple(sorted(set(horizons))) or DEFAULT_HORIZONS_S,
        directions=MappingProxyType(directions(r, all_metrics)), bounds=MappingProxyType(bounds(r, all_metrics)),
        replicas=r.int_("replicas", None, maximum=MAX_REPLICAS), workers=r.int_("workers", None, maximum=MAX_REPLICAS),
        auto_correction=r.bool_("auto_correction", True), line=node.start_mark.line + 1,
        **scaling(r, workers="workers" in r.items, request_rate="request_rate" in all_metrics))
    r.finish()
    return rule
