"""What /metrics promises: every metric family the sidecar exports, with its type, help and labels.

This is the contract Grafana, Alertmanager and the loop guard rely on, kept apart from the code that renders it
(``sidecar/exporter.py``) so that everything that only needs the names reads it without loading
prometheus-client:

* the exporter builds each family from its :class:`MetricSpec` (name, type, help, label names);
* the loop guard (``sidecar/loopguard.py``) refuses every query that can select one of
  :data:`EXPORTED_SERIES_NAMES`, and derives the label signature (``twin`` with a companion label) from the
  label sets here, so loading the rules never imports the exposition code;
* the alert generator (``sidecar/alerts.py``) selects only families listed here;
* the dashboard checks (``tests/chart/test_dashboard.py``) hold every panel query to these names and labels.

The ``horizon`` label's values are :func:`sidecar.units.horizon_label` of each horizon (``5m`` … ``60m``).

It imports nothing, so any part of the package may read it.

>>> METRICS_BY_NAME["twin_forecast"].labels
('twin', 'metric', 'horizon')
>>> is_own_series("twin_sync_duration_seconds_bucket"), is_own_series("up")
(True, False)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "EXPORTED_METRICS",
    "EXPORTED_SERIES_NAMES",
    "EXPORT_OPTIONS",
    "METRICS_BY_NAME",
    "SERIES_HORIZON_LABELS",
    "SERIES_LABELS",
    "ExportOptions",
    "MetricSpec",
    "is_own_series",
]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One exported metric family: the Grafana/Alertmanager contract."""

    name: str                    # as it appears on /metrics in the text format (counters end in _total)
    type: str                    # gauge | counter | histogram
    help: str
    labels: tuple[str, ...]
    #: The ``export:`` key that turns the family on; None: exported by default.
    option: str | None = None

    @property
    def family(self) -> str:
        """The name prometheus-client families use (counters without ``_total``)."""
        return self.name.removesuffix("_total") if self.type == "counter" else self.name

    @property
    def series_names(self) -> tuple[str, ...]:
        """Every sample name this family can put on /metrics."""
        if self.type == "histogram":
            return tuple(self.name + s for s in ("_bucket", "_sum", "_count", "_created"))
        if self.type == "counter":
            return (self.name, self.family + "_created")
        return (self.name,)


#: The labels of a per-series family, and of a per-series-and-horizon one.
SERIES_LABELS: tuple[str, ...] = ("twin", "metric")
SERIES_HORIZON_LABELS: tuple[str, ...] = ("twin", "metric", "horizon")
_TML, _TMH = SERIES_LABELS, SERIES_HORIZON_LABELS

#: Every metric the sidecar exports, in exposition order. The dashboards, the alert rules and the loop guard
#: (which drops any queried series carrying one of these names) all read this list.
EXPORTED_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("twin_forecast", "gauge", "Forecast value of the metric at the horizon ahead.", _TMH),
    MetricSpec("twin_forecast_lower", "gauge", "Lower bound of the forecast interval at the horizon.", _TMH),
    MetricSpec("twin_forecast_upper", "gauge", "Upper bound of the forecast interval at the horizon.", _TMH),
    MetricSpec("twin_confidence", "gauge", "Confidence (0-1) of the forecast at the horizon.", _TMH,
               "confidence"),
    MetricSpec("twin_actual", "gauge", "Latest observed value of the metric (what the twin last synced).", _TML,
               "actual"),
    MetricSpec("twin_expected", "gauge", "Expected value of the metric (hand-set or learned).", _TML, "expected"),
    MetricSpec("twin_divergence_ratio", "gauge", "(actual - expected) / max(|expected|, the series' own floor).", _TML,
               "divergence_ratio"),
    MetricSpec("twin_divergence_severity", "gauge",
               "Divergence severity: 0 none, 1 low, 2 medium, 3 high, 4 critical.", _TML),
    MetricSpec("twin_anomaly_score", "gauge", "Anomaly score (0-1) of the metric's latest sample.", _TML),
    MetricSpec("twin_breach_eta_seconds", "gauge",
               "Forecast seconds until the metric crosses its limit; absent when no crossing is forecast "
               "within the longest horizon.", ("twin", "metric", "limit")),
    MetricSpec("twin_health_score", "gauge", "Health of the twin, 0 (failing) to 100 (healthy).", ("twin",)),
    MetricSpec("twin_drift", "gauge", "1 while the twin drifts from its expected state, else 0.", ("twin",)),
    MetricSpec("twin_last_sync_timestamp_seconds", "gauge",
               "Unix time of the twin's last accepted sync.", ("twin",)),
    MetricSpec("twin_metric_last_sample_timestamp_seconds", "gauge",
               "Unix time of the metric's last accepted sample, 0 while it has none (its query returns no series, "
               "or only NaN/Inf: it then exports no forecast, severity or anomaly score). Exported only for a "
               "metric behind its twin's last sync (or without a sample) unless export.last_sample is true.",
               _TML),
    MetricSpec("twin_metric_has_data", "gauge",
               "1 once the metric has accepted a sample, 0 while its query has returned none (no series, or only "
               "NaN/Inf): such a metric exports no actual, expected, forecast or divergence.", _TML, "has_data"),
    MetricSpec("twin_twins", "gauge", "Number of twins the sidecar keeps.", ()),
    MetricSpec("twin_twins_refused_total", "counter",
               "New twins refused because limits.max_twins or limits.max_series was reached.", ("limit",)),
    MetricSpec("twin_source_up", "gauge",
               "1 if the last query round reached the metrics source (Prometheus), else 0.", ()),
    MetricSpec("twin_query_errors_total", "counter",
               "Failed metric queries, per twin and metric: only for metrics whose query has failed, unless "
               "export.query_errors is true.", _TML),
    MetricSpec("twin_dropped_own_series_total", "counter",
               "Queried series dropped because they carry the sidecar's own metric names.", ()),
    MetricSpec("twin_store_up", "gauge", "1 if the history store accepts writes, else 0.", ()),
    MetricSpec("twin_store_backlog", "gauge", "Items waiting to be written to the history store.", ()),
    MetricSpec("twin_store_dropped_samples_total", "counter",
               "Metric samples dropped because the store's write buffer was full.", ()),
    MetricSpec("twin_store_corrupt_snapshots_total", "counter",
               "Stored snapshots that failed their checksum when read back.", ()),
    MetricSpec("twin_simulation_failure_probability", "gauge",
               "Probability (0-1) that the twin fails under the scenario, from the last simulation.",
               ("twin", "scenario")),
    MetricSpec("twin_simulation_fit_trustworthy", "gauge",
               "1 if the capacity fit behind the scenario's last simulation was trustworthy, else 0 (its failure "
               "probability is then a guess and TwinSimulationFailureLikely does not fire).", ("twin", "scenario")),
    MetricSpec("twin_simulation_breaking_multiplier", "gauge",
               "Load multiplier at which the twin breaks under the scenario, from the last simulation.",
               ("twin", "scenario")),
    MetricSpec("twin_recommended_replicas", "gauge",
               "Replicas needed so that every limit holds at the scale_quantile of the request rate forecast up to "
               "the horizon, from the fitted capacity of one replica; a fall shows only after the twin's "
               "scale_down_stabilisation. Only for twins with max_replicas, and absent while the capacity fit or "
               "the forecast is not trustworthy (the API's twin status says why).", ("twin", "horizon")),
    MetricSpec("twin_capacity_requests_per_second", "gauge",
               "Requests/s the twin's running replicas carry (fitted capacity of one replica x replicas); only for "
               "twins with max_replicas and a trustworthy capacity fit.", ("twin",)),
    MetricSpec("twin_headroom_ratio", "gauge",
               "1 - (scale_quantile of the request rate forecast up to the horizon) / capacity: the share of capacity "
               "left, <= 0 when the forecast load exceeds it; exported with twin_recommended_replicas.",
               ("twin", "horizon")),
    MetricSpec("twin_sync_duration_seconds", "histogram", "Seconds one sync round of all twins took.", ()),
)

#: Each family by its name on /metrics.
METRICS_BY_NAME: Mapping[str, MetricSpec] = MappingProxyType({m.name: m for m in EXPORTED_METRICS})

#: What an ``export:`` key adds to the default set, in the order the README's table lists them. A key naming a
#: family (``MetricSpec.option``) turns that family on; ``horizons`` and ``last_sample`` widen a default family.
EXPORT_OPTIONS: Mapping[str, str] = MappingProxyType({
    "horizons": "twin_forecast, twin_forecast_lower and twin_forecast_upper at these horizons (a list, or all) "
                "instead of each metric's shortest",
    "confidence": "twin_confidence, at each exported horizon",
    "actual": "twin_actual",
    "expected": "twin_expected",
    "divergence_ratio": "twin_divergence_ratio",
    "has_data": "twin_metric_has_data",
    "last_sample": "twin_metric_last_sample_timestamp_seconds for every metric, not only one behind its twin",
    "query_errors": "twin_query_errors_total from 0 for every metric (so rate() sees a first error), not only "
                    "for metrics whose query has failed",
    "all": "every family and horizon (what the sidecar exported before the export: section existed)",
})


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """The rules file's ``export:`` section: which opt-in families and horizons /metrics carries.

    The default (every flag off, ``horizons_s`` None) is the set an SRE needs on the dashboard and for the shipped
    alerts, ~23 series per twin of 4 metrics; each flag adds one family (``EXPORT_OPTIONS``).
    ``horizons_s`` None exports each metric's shortest horizon; ``all_horizons`` every one the engine forecasts.

    >>> ExportOptions().enabled("twin_actual"), ExportOptions(actual=True).enabled("twin_actual")
    (False, True)
    >>> ExportOptions.everything().enabled("twin_metric_has_data")
    True
    """

    horizons_s: tuple[float, ...] | None = None
    all_horizons: bool = False
    confidence: bool = False
    actual: bool = False
    expected: bool = False
    divergence_ratio: bool = False
    has_data: bool = False
    last_sample: bool = False
    query_errors: bool = False

    @classmethod
    def everything(cls) -> ExportOptions:
        """Every family at every horizon (``export: {all: true}``)."""
        return cls(all_horizons=True, confidence=True, actual=True, expected=True, divergence_ratio=True,
                   has_data=True, last_sample=True, query_errors=True)

    def enabled(self, name: str) -> bool:
        """True if the family ``name`` is on /metrics under these options (default families always are)."""
        option = METRICS_BY_NAME[name].option
        return option is None or bool(getattr(self, option))

#: Every sample name that can appear on the sidecar's /metrics (histogram and counter suffixes included).
EXPORTED_SERIES_NAMES: frozenset[str] = frozenset(n for m in EXPORTED_METRICS for n in m.series_names)


def is_own_series(name: str) -> bool:
    """True for a series name the sidecar itself exports (the loop guard's test)."""
    return name in EXPORTED_SERIES_NAMES
