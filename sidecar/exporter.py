"""The /metrics side: one custom collector over the engine's latest view.

A scrape reads the immutable ``EngineView`` the engine built at its last tick
and the ``ServiceStatus`` the scheduler keeps; it never queries Prometheus and
never runs a model. At 40,000 series × 4 horizons a scrape holds several
hundred thousand samples, which prometheus-client's own text renderer formats
one ``Sample`` at a time (roughly 15 µs each on the project's machine), so
the large per-series families are built as arrays (``ArrayGaugeFamily``) and
rendered by ``render`` a whole column at a time. They are still ordinary
prometheus-client ``Metric`` objects: their ``samples`` materialise on demand,
so any stock consumer of the registry (``generate_latest``, a push gateway)
sees the same data, only slower.

What each family is called, its type, help and labels is the contract in
``sidecar/contract.py``; this module only renders it.

Example::

    >>> import numpy as np
    >>> from prometheus_client import CollectorRegistry
    >>> from sidecar.engine.view import EngineView
    >>> from sidecar.status import ServiceStatus
    >>> registry = CollectorRegistry()
    >>> view = EngineView.empty(np.array([300.0]))
    >>> _ = install_exporter(registry, view=lambda: view, status=ServiceStatus())
    >>> b"twin_twins 0.0" in render(registry)
    True
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import exposition as _text_exposition
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as _om_exposition
from prometheus_client.samples import Sample

from .contract import EXPORTED_METRICS, METRICS_BY_NAME, SERIES_HORIZON_LABELS, SERIES_LABELS, ExportOptions
from .engine.view import EngineView
from .status import ServiceStatus
from .units import horizon_label

__all__ = [
    "CONTENT_TYPE_OPENMETRICS",
    "CONTENT_TYPE_TEXT",
    "SYNC_DURATION_BUCKETS",
    "ArrayGaugeFamily",
    "TwinCollector",
    "install_exporter",
    "render",
    "sync_duration_histogram",
    "wants_openmetrics",
]

log = logging.getLogger(__name__)

CONTENT_TYPE_TEXT = _text_exposition.CONTENT_TYPE_PLAIN_0_0_4
CONTENT_TYPE_OPENMETRICS = _om_exposition.CONTENT_TYPE_LATEST


# --------------------------------------------------------------------------- labels

def _number_label(value: float) -> str:
    """A label value for a number: ``95`` not ``95.0``, exact otherwise."""
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _object_array(items: Iterable[str], n: int) -> np.ndarray:
    out = np.empty(n, dtype=object)
    out[:] = list(items)
    return out


@dataclass(frozen=True, slots=True)
class LabelRows:
    """Label values of every row of a family and their rendered ``k="v",…`` bodies (object arrays)."""

    names: tuple[str, ...]
    columns: tuple[np.ndarray, ...]
    bodies: np.ndarray

    @classmethod
    def build(cls, names: tuple[str, ...], columns: Sequence[Sequence[str]]) -> LabelRows:
        n = len(columns[0]) if columns else 0
        cols = tuple(_object_array(c, n) for c in columns)
        escaped = [[f'{k}="{_escape(v)}"' for v in c] for k, c in zip(names, columns, strict=True)]
        bodies = _object_array((",".join(parts) for parts in zip(*escaped, strict=True)), n)
        return cls(names, cols, bodies)

    def __len__(self) -> int:
        return len(self.bodies)

    def take(self, idx: np.ndarray) -> LabelRows:
        return LabelRows(self.names, tuple(c[idx] for c in self.columns), self.bodies[idx])

    def with_label(self, name: str, values: Sequence[str]) -> LabelRows:
        """These rows with one more label appended (e.g. ``limit``)."""
        extra = _object_array((f',{name}="{_escape(v)}"' for v in values), len(self))
        return LabelRows((*self.names, name), (*self.columns, _object_array(values, len(self))),
                         np.add(self.bodies, extra) if len(self) else self.bodies)


# --------------------------------------------------------------------------- families

class ArrayGaugeFamily(Metric):
    """A gauge family held as columns: label rows plus one value array, non-finite values already removed.

    ``render_lines`` formats the whole family at once; ``samples`` builds the
    prometheus-client ``Sample`` list only if a stock consumer asks for it.
    """

    def __init__(self, name: str, documentation: str, rows: LabelRows, values: np.ndarray) -> None:
        self._rows = rows
        self._values = values
        self._materialised: list[Sample] | None = None
        self._text: bytes | None = None
        super().__init__(name, documentation, "gauge")

    @property
    def samples(self) -> list[Sample]:
        if self._materialised is None:
            rows, names = self._rows, self._rows.names
            labels = [dict(zip(names, vals, strict=True)) for vals in zip(*rows.columns, strict=True)]
            if not names:
                labels = [{} for _ in range(len(self._values))]
            self._materialised = list(map(Sample, repeat(self.name), labels, self._values.tolist()))
        return self._materialised

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        # Metric.__init__ assigns [] here; anything else replaces the columns for good.
        self._materialised = value or None

    def render_lines(self) -> bytes:
        """HELP, TYPE and every sample line as UTF-8; the same in text and OpenMetrics format for a gauge.

        Kept once built: the family belongs to one immutable view, and every scrape of that view reuses it.
        """
        if self._text is None:
            doc = self.documentation.replace("\\", r"\\").replace("\n", r"\n")
            name = self.name
            # one %-format over the whole family (a third cheaper than a line at a time); "%.9g" and "%r" write
            # a float exactly as "{:.9g}".format and repr do
            value = "%.9g" if name in _ESTIMATES else "%r"
            values = self._values.tolist()
            n = len(values)
            if self._rows.names:
                args: list[object] = [None] * (2 * n)
                args[0::2] = self._rows.bodies.tolist()
                args[1::2] = values
                body = (f"{name}{{%s}} {value}\n" * n) % tuple(args)
            else:
                body = (f"{name} {value}\n" * n) % tuple(values)
            self._text = (f"# HELP {name} {doc}\n# TYPE {name} gauge\n" + body).encode("utf-8")
        return self._text


#: Estimates are written with 9 significant digits (far below their own error, and half the cost of an exact
#: ``repr`` per sample); counts, timestamps and scores are written exactly.
_ESTIMATES = frozenset({"twin_forecast", "twin_forecast_lower", "twin_forecast_upper", "twin_confidence", "twin_actual",
                        "twin_expected", "twin_divergence_ratio", "twin_anomaly_score"})


def _array_gauge(name: str, rows: LabelRows, values: np.ndarray) -> ArrayGaugeFamily:
    """The family over the finite values only: an unknown value is an absent series, never NaN."""
    spec = METRICS_BY_NAME[name]
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(v) != len(rows):
        # a view whose arrays disagree with its names is an engine bug; losing one family beats failing
        # the whole scrape (and with it twin_source_up and the store metrics)
        log.error("exporter: %s has %d values for %d label rows; family skipped", name, len(v), len(rows))
        return ArrayGaugeFamily(spec.name, spec.help, rows.take(np.zeros(0, np.int64)), np.zeros(0))
    finite = np.isfinite(v)
    if not finite.all():
        idx = np.flatnonzero(finite)
        rows, v = rows.take(idx), v[idx]
    return ArrayGaugeFamily(spec.name, spec.help, rows, v)


def _only_where(known: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Per-series values (S,) or (S, H) as float, NaN (so: absent) in the rows of series not ``known``.

    A metric that has never accepted a sample has no actual value, so nothing measured against it: the engine
    still holds a severity of 0 and perhaps a hand-set expected value for it, and exporting those would read as
    "on target" for a query that returns nothing (a typo'd label). ``twin_metric_has_data`` says it instead.
    """
    def mask(values: np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        if known.all() or v.ndim == 0 or v.shape[0] != known.shape[0]:
            return v
        return np.where(known.reshape((-1,) + (1,) * (v.ndim - 1)), v, np.nan)
    return mask


def _gauge(name: str, value: float | None = None) -> GaugeMetricFamily:
    spec = METRICS_BY_NAME[name]
    if value is not None and math.isfinite(value):
        return GaugeMetricFamily(spec.name, spec.help, value=value)
    return GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)


def _counter(name: str, value: float | None = None) -> CounterMetricFamily:
    spec = METRICS_BY_NAME[name]
    if value is not None:
        return CounterMetricFamily(spec.family, spec.help, value=value)
    return CounterMetricFamily(spec.family, spec.help, labels=spec.labels)


# --------------------------------------------------------------------------- the collector

@dataclass(frozen=True, slots=True)
class _Layout:
    """Label rows for one arrangement of series and twins, reused until the engine's series change."""

    series_twin: tuple[str, ...]
    series_metric: tuple[str, ...]
    horizons: tuple[str, ...]
    twin_names: tuple[str, ...]
    series: LabelRows           # (S,) twin, metric
    series_horizon: LabelRows   # (S*H,) twin, metric, horizon — row-major, matching forecast.reshape(-1)
    twins: LabelRows            # (T,) twin
    series_twin_index: np.ndarray   # (S,) each series' twin's row in ``twins`` (-1: none)

    def fits(self, view: EngineView, horizons: tuple[str, ...]) -> bool:
        return (horizons == self.horizons
                and (view.series_twin is self.series_twin or view.series_twin == self.series_twin)
                and (view.series_metric is self.series_metric or view.series_metric == self.series_metric)
                and (view.twin_names is self.twin_names or view.twin_names == self.twin_names))

    @classmethod
    def of(cls, view: EngineView, horizons: tuple[str, ...]) -> _Layout:
        h = len(horizons)
        st, sm = view.series_twin, view.series_metric
        rep_t = [t for t in st for _ in range(h)]
        rep_m = [m for m in sm for _ in range(h)]
        row_of = {name: i for i, name in enumerate(view.twin_names)}
        twin_index = np.fromiter((row_of.get(t, -1) for t in st), dtype=np.int64, count=len(st))
        return cls(series_twin=st, series_metric=sm, horizons=horizons, twin_names=view.twin_names,
                   series=LabelRows.build(SERIES_LABELS, [st, sm]),
                   series_horizon=LabelRows.build(SERIES_HORIZON_LABELS, [rep_t, rep_m, list(horizons) * len(st)]),
                   twins=LabelRows.build(("twin",), [view.twin_names]), series_twin_index=twin_index)


class TwinCollector:
    """The sidecar's one custom collector: engine view + service status -> metric families.

    ``view`` returns the engine's latest immutable ``EngineView`` (a reference,
    so calling it is free and needs no engine lock). Families built from one
    view are kept until the view changes, so several scrapes between two ticks
    (an HA pair of Prometheus servers) format the big families only once.

    ``export`` (the rules file's ``export:`` section) says which opt-in families and horizons go out; the
    default is the small set the dashboard and the shipped alerts read (``sidecar/contract.py``).
    """

    def __init__(self, view: Callable[[], EngineView], status: ServiceStatus,
                 export: ExportOptions | None = None) -> None:
        self._view = view
        self._status = status
        self._export = export or ExportOptions()
        self._layout: _Layout | None = None
        self._cached: tuple[EngineView, tuple[ArrayGaugeFamily, ...]] | None = None
        self._lock = threading.Lock()

    def describe(self) -> Iterator[Metric]:
        """Names only, so the registry refuses a second collector exporting the same metrics."""
        for spec in EXPORTED_METRICS:
            if spec.type != "histogram":
                yield Metric(spec.family, spec.help, spec.type)

    def collect(self) -> Iterator[Metric]:
        view = self._view()
        yield from self._view_families(view)
        yield from self._status_families(view)

    def _layout_for(self, view: EngineView) -> _Layout:
        horizons = tuple(horizon_label(h) for h in np.asarray(view.horizons_s).tolist())
        layout = self._layout
        if layout is None or not layout.fits(view, horizons):
            layout = _Layout.of(view, horizons)
            self._layout = layout
        return layout

    def _view_families(self, view: EngineView) -> tuple[ArrayGaugeFamily, ...]:
        cached = self._cached
        if cached is not None and cached[0] is view:
            return cached[1]
        with self._lock:  # concurrent scrapes of a new view build it once
            cached = self._cached
            if cached is not None and cached[0] is view:
                return cached[1]
            families = self._build(view)
            self._cached = (view, families)
            return families

    def _build(self, view: EngineView) -> tuple[ArrayGaugeFamily, ...]:
        lay = self._layout_for(view)
        opts = self._export
        s, t = lay.series, lay.twins
        last_sample = np.asarray(view.series_last_sample, dtype=np.float64).reshape(-1)
        has_data = np.isfinite(last_sample)
        # a view whose arrays disagree loses the has_data family in _array_gauge and masks nothing
        per_series = _only_where(has_data if len(has_data) == len(s) else np.ones(len(s), dtype=bool))
        eta = per_series(view.breach_eta_s)
        limit = np.asarray(view.limit, dtype=np.float64)
        has_eta = np.flatnonzero(np.isfinite(eta) & np.isfinite(limit))
        eta_rows = s.take(has_eta).with_label("limit", [_number_label(x) for x in limit[has_eta].tolist()])
        sh, at_horizons = _horizon_columns(view, lay, opts)
        on = opts.enabled
        families = [
            _array_gauge("twin_forecast", sh, at_horizons(per_series(view.forecast_mean))),
            _array_gauge("twin_forecast_lower", sh, at_horizons(per_series(view.forecast_lower))),
            _array_gauge("twin_forecast_upper", sh, at_horizons(per_series(view.forecast_upper))),
            *([_array_gauge("twin_confidence", sh, at_horizons(per_series(view.confidence)))]
              if on("twin_confidence") else []),
            *([_array_gauge("twin_actual", s, per_series(view.last_value))] if on("twin_actual") else []),
            *([_array_gauge("twin_expected", s, per_series(view.expected))] if on("twin_expected") else []),
            *([_array_gauge("twin_divergence_ratio", s, per_series(view.divergence_ratio))]
              if on("twin_divergence_ratio") else []),
            _array_gauge("twin_divergence_severity", s, per_series(view.severity)),
            _array_gauge("twin_anomaly_score", s, per_series(view.anomaly)),
            _array_gauge("twin_breach_eta_seconds", eta_rows, eta[has_eta]),
            _array_gauge("twin_health_score", t, view.health),
            _array_gauge("twin_drift", t, np.asarray(view.drift, dtype=np.float64)),
            _array_gauge("twin_last_sync_timestamp_seconds", t, view.last_sync),
            _last_sample_family(lay, view, last_sample, has_data, every=opts.last_sample),
        ]
        if on("twin_metric_has_data"):
            families.append(_array_gauge("twin_metric_has_data", s, has_data.astype(np.float64)))
        return tuple(families)

    def _status_families(self, view: EngineView) -> Iterator[Metric]:
        st = self._status
        yield _gauge("twin_twins", float(len(view.twin_names)))
        refused = _counter("twin_twins_refused_total")
        for limit in ("max_twins", "max_series"):
            refused.add_metric([limit], float(view.twins_refused.get(limit, 0)))
        yield refused
        yield _gauge("twin_source_up", 1.0 if st.source_up else 0.0)
        errors = _counter("twin_query_errors_total")
        # dict() of a dict is one C call under the GIL: a consistent copy even while the scheduler writes. The
        # scheduler holds a 0 for every metric it queries; by default only failed ones are exported (a series per
        # metric that never fails is a cost Prometheus pays for nothing), with export.query_errors all of them
        every = self._export.query_errors
        for (twin, metric), n in sorted(dict(st.query_errors).items()):
            if n or every:
                errors.add_metric([twin, metric], float(n))
        yield errors
        yield _counter("twin_dropped_own_series_total", float(st.dropped_own_series_total))
        yield _gauge("twin_store_up", 1.0 if st.store_up else 0.0)
        yield _gauge("twin_store_backlog", float(st.store_backlog))
        yield _counter("twin_store_dropped_samples_total", float(st.store_dropped_samples_total))
        yield _counter("twin_store_corrupt_snapshots_total", float(st.store_corrupt_snapshots_total))
        yield _scenario_gauge("twin_simulation_failure_probability", st.simulation_failure_probability)
        # beside the probability, from the same run: the alert pages only when this is 1 (not on a guess)
        yield _scenario_gauge("twin_simulation_fit_trustworthy",
                              {k: 1.0 if v else 0.0 for k, v in dict(st.simulation_fit_trustworthy).items()})
        yield _scenario_gauge("twin_simulation_breaking_multiplier", st.simulation_breaking_multiplier)
        yield from _replica_families(st)


def _horizon_columns(view: EngineView, lay: _Layout,
                     opts: ExportOptions) -> tuple[LabelRows, Callable[[np.ndarray], np.ndarray]]:
    """The (twin, metric, horizon) rows the forecast families go out on, and how to pick their values out of an
    (S, H) array: every horizon, the configured ones, or by default each series' shortest horizon with a
    forecast (its twin's shortest: a horizon the twin does not ask for is NaN in the view)."""
    n_s, n_h = len(lay.series), len(lay.horizons)
    if opts.all_horizons or n_h == 0:
        return lay.series_horizon, lambda a: np.asarray(a, dtype=np.float64).reshape(-1)
    if opts.horizons_s is not None:
        cols = np.array([j for j, h in enumerate(np.asarray(view.horizons_s).tolist()) if h in opts.horizons_s],
                        dtype=np.int64)
        flat = (np.arange(n_s, dtype=np.int64)[:, None] * n_h + cols[None, :]).reshape(-1)
    else:
        mean = np.asarray(view.forecast_mean, dtype=np.float64)
        if mean.size == n_s * n_h:
            finite = np.isfinite(mean.reshape(n_s, n_h))
            first = finite.argmax(axis=1)        # 0 (the shortest) where none is finite: absent anyway
        else:
            first = np.zeros(n_s, dtype=np.int64)
        flat = np.arange(n_s, dtype=np.int64) * n_h + first

    def pick(values: np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        return v[flat] if v.size == n_s * n_h else v    # a misshapen array: _array_gauge drops the family
    return lay.series_horizon.take(flat), pick


def _last_sample_family(lay: _Layout, view: EngineView, last_sample: np.ndarray, has_data: np.ndarray, *,
                        every: bool) -> ArrayGaugeFamily:
    """``twin_metric_last_sample_timestamp_seconds``: 0 for a metric without a sample (the has-data signal in the
    same series), and by default only for metrics whose last sample is behind their twin's last sync or missing:
    a metric that syncs with its twin says nothing its ``twin_last_sync_timestamp_seconds`` does not."""
    name = "twin_metric_last_sample_timestamp_seconds"
    s = lay.series
    if len(last_sample) != len(s):
        return _array_gauge(name, s, last_sample)                  # logged and dropped there
    values = np.where(has_data, last_sample, 0.0)
    if every:
        return _array_gauge(name, s, values)
    sync = np.asarray(view.last_sync, dtype=np.float64).reshape(-1)
    idx = lay.series_twin_index
    if len(sync) == len(lay.twins) and len(idx) == len(s):
        twin_sync = np.where(idx >= 0, sync[np.clip(idx, 0, None)] if len(sync) else np.nan, np.nan)
    else:
        twin_sync = np.full(len(s), np.nan)
    with np.errstate(invalid="ignore"):
        behind = ~has_data | (last_sample < twin_sync)
    keep = np.flatnonzero(behind)
    return _array_gauge(name, s.take(keep), values[keep])


def _scenario_gauge(name: str, values: Mapping[tuple[str, str], float]) -> GaugeMetricFamily:
    """A standing-scenario family: one series per (twin, scenario) with a finite value, sorted."""
    fam = _gauge(name)
    # dict() of a dict is one C call under the GIL: a consistent copy even while the scheduler writes
    for (twin, scenario), v in sorted(dict(values).items()):
        if v is not None and math.isfinite(v):
            fam.add_metric([twin, scenario], float(v))
    return fam


def _replica_families(st: ServiceStatus) -> Iterator[Metric]:
    """``twin_recommended_replicas``, ``twin_headroom_ratio`` and ``twin_capacity_requests_per_second``: only the
    trustworthy ones (a ``ReplicaSignal`` leaves out what is not)."""
    replicas, headroom, capacity = (_gauge("twin_recommended_replicas"), _gauge("twin_headroom_ratio"),
                                    _gauge("twin_capacity_requests_per_second"))
    for twin, sig in sorted(dict(st.replica_signals).items()):
        for horizon, r, h in zip(sig.horizons, sig.replicas, sig.headroom, strict=False):
            replicas.add_metric([twin, horizon], float(r))
            if math.isfinite(h):
                headroom.add_metric([twin, horizon], float(h))
        if sig.capacity_rps is not None and math.isfinite(sig.capacity_rps):
            capacity.add_metric([twin], float(sig.capacity_rps))
    yield replicas
    yield capacity
    yield headroom


# --------------------------------------------------------------------------- registry wiring

#: Round durations from a few milliseconds (a handful of twins) to a minute (a slow source at scale).
SYNC_DURATION_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                                            30.0, 60.0)

_histograms: weakref.WeakKeyDictionary[CollectorRegistry, Histogram] = weakref.WeakKeyDictionary()
_collectors: weakref.WeakKeyDictionary[CollectorRegistry, TwinCollector] = weakref.WeakKeyDictionary()
_histograms_lock = threading.Lock()


def sync_duration_histogram(registry: CollectorRegistry) -> Histogram:
    """The ``twin_sync_duration_seconds`` histogram of this registry, created on first use.

    The scheduler observes each round's duration on it; calling again with the
    same registry returns the same histogram.
    """
    with _histograms_lock:
        hist = _histograms.get(registry)
        if hist is None:
            spec = METRICS_BY_NAME["twin_sync_duration_seconds"]
            hist = Histogram(spec.name, spec.help, registry=registry, buckets=SYNC_DURATION_BUCKETS)
            _histograms[registry] = hist
        return hist


def install_exporter(registry: CollectorRegistry, *, view: Callable[[], EngineView],
                     status: ServiceStatus, export: ExportOptions | None = None) -> TwinCollector:
    """Register the collector and the sync histogram in ``registry`` (once; later calls return the first).

    ``export`` is the rules file's ``export:`` section (None: the default set)."""
    with _histograms_lock:
        existing = _collectors.get(registry)
        if existing is None:
            existing = TwinCollector(view, status, export)
            registry.register(existing)
            _collectors[registry] = existing
    sync_duration_histogram(registry)
    return existing


# --------------------------------------------------------------------------- exposition

class _One:
    def __init__(self, family: Metric) -> None:
        self._family = family

    def collect(self) -> Iterable[Metric]:
        return (self._family,)


def wants_openmetrics(accept: str | None) -> bool:
    """True when the scraper accepts OpenMetrics (Prometheus asks for it first)."""
    return any(part.split(";")[0].strip() == "application/openmetrics-text"
               for part in (accept or "").split(","))


def render(registry: Any, *, openmetrics: bool = False) -> bytes:
    """The registry in the Prometheus text format 0.0.4, or OpenMetrics 1.0.0.

    Array families are formatted a column at a time; every other family (the
    histogram, counters, anything else registered) goes through
    prometheus-client's own exposition, so its format rules stay theirs.
    """
    stock = _om_exposition.generate_latest if openmetrics else _text_exposition.generate_latest
    parts: list[bytes] = []
    for family in registry.collect():
        if isinstance(family, ArrayGaugeFamily):
            parts.append(family.render_lines())
        else:
            text = stock(_One(family))
            parts.append(text.removesuffix(b"# EOF\n") if openmetrics else text)
    if openmetrics:
        parts.append(b"# EOF\n")
    return b"".join(parts)
