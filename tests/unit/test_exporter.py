"""The /metrics contract: names, labels, values from the view, absent unknowns, valid exposition."""

from __future__ import annotations

import dataclasses
import math
import shutil
import subprocess

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from sidecar.contract import EXPORTED_METRICS, EXPORTED_SERIES_NAMES, ExportOptions, is_own_series
from sidecar.engine.view import EngineView
from sidecar.exporter import (
    ArrayGaugeFamily,
    LabelRows,
    TwinCollector,
    install_exporter,
    render,
    sync_duration_histogram,
    wants_openmetrics,
)
from sidecar.status import ServiceStatus
from sidecar.units import horizon_label

HORIZONS = np.array([300.0, 900.0, 1800.0, 3600.0])


def make_view(n_twins: int = 3, metrics: tuple[str, ...] = ("cpu_usage", "request_latency_ms"), *,
              seed: int = 0, at: float = 1.7e9, twin_names: list[str] | None = None) -> EngineView:
    """A view as the engine would build it: real arrays, some values unknown (NaN)."""
    rng = np.random.default_rng(seed)
    names = twin_names or [f"svc-{i}" for i in range(n_twins)]
    st = tuple(t for t in names for _ in metrics)
    sm = tuple(m for _ in names for m in metrics)
    s, h, t = len(st), len(HORIZONS), len(names)
    mean = rng.uniform(10, 90, (s, h))
    mean[0, 1] = np.nan                                 # one forecast unknown
    eta = np.full(s, np.nan)
    eta[1] = 420.0                                      # one series forecast to cross its limit
    eta[2] = np.inf                                     # never: must be absent, not +Inf
    expected = rng.uniform(10, 90, s)
    expected[-1] = np.nan                               # nothing expected yet
    last_sync = np.full(t, at)
    last_sync[-1] = np.nan                              # never synced
    last_sample = np.full(s, at)
    last_sample[0] = at - 600.0                         # one metric left behind (its query returns NaN)
    last_sample[-1] = np.nan                            # never sampled
    return EngineView(
        at=at, horizons_s=HORIZONS, series_twin=st, series_metric=sm, last_value=rng.uniform(10, 90, s),
        forecast_mean=mean, forecast_lower=mean - 5, forecast_upper=mean + 5,
        confidence=rng.uniform(0, 1, (s, h)), expected=expected,
        divergence_ratio=rng.normal(0, 0.2, s), severity=rng.integers(0, 5, s).astype(np.int8),
        anomaly=rng.uniform(0, 1, s), limit=np.where(np.array(sm) == "cpu_usage", 95.0, 1000.0),
        breach_eta_s=eta, twin_names=tuple(names), health=rng.uniform(0, 100, t),
        drift=np.arange(t) % 2 == 0, last_sync=last_sync, series_last_sample=last_sample)


#: These tests hold every family of the contract to the view, so they scrape with every option on;
#: tests/unit/test_export_options.py covers the default set and each option alone.
EVERYTHING = ExportOptions.everything()


def scrape(view: EngineView, status: ServiceStatus | None = None, *, openmetrics: bool = False,
           export: ExportOptions = EVERYTHING) -> str:
    registry = CollectorRegistry()
    install_exporter(registry, view=lambda: view, status=status or ServiceStatus(), export=export)
    return render(registry, openmetrics=openmetrics).decode()


Key = tuple[str, frozenset[tuple[str, str]]]


def samples_of(text: str, *, openmetrics: bool = False) -> dict[Key, float]:
    parse = parse_om if openmetrics else parse_text
    return {(s.name, frozenset(s.labels.items())): s.value for f in parse(text) for s in f.samples}


def test_horizon_labels_are_minutes_when_whole_else_seconds() -> None:
    assert [horizon_label(h) for h in (300, 900, 1800, 3600)] == ["5m", "15m", "30m", "60m"]
    assert horizon_label(90) == "90s"
    assert horizon_label(2.5) == "2.5s"


def test_forecasts_carry_twin_metric_horizon_and_match_the_view() -> None:
    view = make_view()
    got = samples_of(scrape(view))
    for name, arr in (("twin_forecast", view.forecast_mean), ("twin_forecast_lower", view.forecast_lower),
                      ("twin_forecast_upper", view.forecast_upper), ("twin_confidence", view.confidence)):
        for i, (twin, metric) in enumerate(zip(view.series_twin, view.series_metric, strict=True)):
            for j, h in enumerate(("5m", "15m", "30m", "60m")):
                key = (name, frozenset({("twin", twin), ("metric", metric), ("horizon", h)}))
                if math.isnan(arr[i, j]) or math.isnan(view.series_last_sample[i]):
                    assert key not in got, "an unknown forecast is absent, never NaN"
                else:
                    assert got[key] == pytest.approx(arr[i, j], rel=1e-8)   # 9 significant digits


def test_series_and_twin_gauges_match_the_view_and_skip_unknowns() -> None:
    view = make_view()
    got = samples_of(scrape(view))
    for i, (twin, metric) in enumerate(zip(view.series_twin, view.series_metric, strict=True)):
        labels = frozenset({("twin", twin), ("metric", metric)})
        if math.isnan(view.series_last_sample[i]):
            continue            # never sampled: test_a_metric_never_sampled_exports_no_values_and_has_data_0
        assert got[("twin_divergence_ratio", labels)] == pytest.approx(view.divergence_ratio[i], rel=1e-8)
        assert got[("twin_divergence_severity", labels)] == int(view.severity[i])
        assert got[("twin_anomaly_score", labels)] == pytest.approx(view.anomaly[i], rel=1e-8)
        if math.isnan(view.expected[i]):
            assert ("twin_expected", labels) not in got
        else:
            assert got[("twin_expected", labels)] == pytest.approx(view.expected[i], rel=1e-8)
    for k, twin in enumerate(view.twin_names):
        labels = frozenset({("twin", twin)})
        assert got[("twin_health_score", labels)] == view.health[k]            # exact
        assert got[("twin_drift", labels)] == float(view.drift[k])
        assert (("twin_last_sync_timestamp_seconds", labels) in got) == (not math.isnan(view.last_sync[k]))
    assert got[("twin_twins", frozenset())] == len(view.twin_names)
    assert not any(math.isnan(v) or math.isinf(v) for v in got.values())


def test_breach_eta_is_present_only_for_a_forecast_crossing_with_its_limit_label() -> None:
    view = make_view()
    etas = {k: v for k, v in samples_of(scrape(view)).items() if k[0] == "twin_breach_eta_seconds"}
    expected_labels = frozenset({("twin", view.series_twin[1]), ("metric", view.series_metric[1]),
                                 ("limit", "1000")})
    assert etas == {("twin_breach_eta_seconds", expected_labels): 420.0}


def test_status_metrics_follow_the_service_status() -> None:
    status = ServiceStatus(source_up=True, store_up=False, store_backlog=17, store_dropped_samples_total=3,
                           store_corrupt_snapshots_total=1, dropped_own_series_total=5)
    status.query_errors[("svc-0", "cpu_usage")] += 2
    status.simulation_failure_probability[("svc-0", "traffic_spike")] = 0.25
    status.simulation_breaking_multiplier[("svc-0", "traffic_spike")] = 3.5
    status.simulation_breaking_multiplier[("svc-1", "traffic_spike")] = float("nan")   # never breaks: absent
    got = samples_of(scrape(make_view(), status))
    assert got[("twin_source_up", frozenset())] == 1.0
    assert got[("twin_store_up", frozenset())] == 0.0
    assert got[("twin_store_backlog", frozenset())] == 17
    assert got[("twin_store_dropped_samples_total", frozenset())] == 3
    assert got[("twin_store_corrupt_snapshots_total", frozenset())] == 1
    assert got[("twin_dropped_own_series_total", frozenset())] == 5
    assert got[("twin_query_errors_total", frozenset({("twin", "svc-0"), ("metric", "cpu_usage")}))] == 2
    sim = frozenset({("twin", "svc-0"), ("scenario", "traffic_spike")})
    assert got[("twin_simulation_failure_probability", sim)] == 0.25
    assert got[("twin_simulation_breaking_multiplier", sim)] == 3.5
    assert not [k for k in got if k[0] == "twin_simulation_breaking_multiplier" and ("twin", "svc-1") in k[1]]


def test_fit_trustworthy_gauge_says_1_for_a_trustworthy_fit_and_0_for_a_guess_beside_each_probability() -> None:
    status = ServiceStatus()
    trusted, guessed = ("svc-0", "spike"), ("svc-1", "spike")
    for key, p, verdict in ((trusted, 0.8, True), (guessed, 0.9, False)):
        status.simulation_failure_probability[key] = p
        status.simulation_fit_trustworthy[key] = verdict
    got = samples_of(scrape(make_view(), status))

    def labels(key: tuple[str, str]) -> frozenset[tuple[str, str]]:
        return frozenset({("twin", key[0]), ("scenario", key[1])})

    assert got[("twin_simulation_fit_trustworthy", labels(trusted))] == 1.0
    assert got[("twin_simulation_fit_trustworthy", labels(guessed))] == 0.0
    # exactly the probability's label sets, so the alert's `and` pairs each probability with its own verdict
    fit = {k[1] for k in got if k[0] == "twin_simulation_fit_trustworthy"}
    prob = {k[1] for k in got if k[0] == "twin_simulation_failure_probability"}
    assert fit == prob == {labels(trusted), labels(guessed)}
    help_line = next(x for x in scrape(make_view(), status).splitlines()
                     if x.startswith("# HELP twin_simulation_fit_trustworthy "))
    assert "TwinSimulationFailureLikely does not fire" in help_line


def test_sync_histogram_is_one_per_registry_and_appears_on_the_scrape() -> None:
    registry = CollectorRegistry()
    install_exporter(registry, view=lambda: make_view(), status=ServiceStatus())
    hist = sync_duration_histogram(registry)
    assert sync_duration_histogram(registry) is hist
    hist.observe(0.3)
    got = samples_of(render(registry).decode())
    assert got[("twin_sync_duration_seconds_count", frozenset())] == 1
    assert got[("twin_sync_duration_seconds_bucket", frozenset({("le", "0.5")}))] == 1
    assert got[("twin_sync_duration_seconds_bucket", frozenset({("le", "0.25")}))] == 0


def test_install_is_idempotent_and_a_second_collector_is_refused() -> None:
    registry = CollectorRegistry()
    status = ServiceStatus()
    first = install_exporter(registry, view=lambda: make_view(), status=status)
    assert install_exporter(registry, view=lambda: make_view(), status=status) is first
    with pytest.raises(ValueError, match="Duplicated"):
        registry.register(TwinCollector(lambda: make_view(), status))


def test_fast_render_says_exactly_what_prometheus_client_would() -> None:
    registry = CollectorRegistry()
    install_exporter(registry, view=lambda: make_view(), status=ServiceStatus(source_up=True))
    sync_duration_histogram(registry).observe(1.2)
    fast, stock = samples_of(render(registry).decode()), samples_of(generate_latest(registry).decode())
    assert fast == pytest.approx(stock, rel=1e-8)
    om_fast = render(registry, openmetrics=True).decode()
    om_stock = om_exposition.generate_latest(registry).decode()
    assert om_fast.endswith("# EOF\n") and om_fast.count("# EOF") == 1
    assert samples_of(om_fast, openmetrics=True) == pytest.approx(samples_of(om_stock, openmetrics=True),
                                                                  rel=1e-8)


def test_a_family_writes_estimates_to_9_digits_and_every_other_value_exactly() -> None:
    rng = np.random.default_rng(7)
    values = np.r_[rng.standard_normal(200) * 10.0 ** rng.integers(-12, 13, 200), -0.0, 1e300, 5e-324,
                   1765133400.0, 0.1 + 0.2]
    names = [f'tw"in\\{i}%s' for i in range(values.size)]   # quotes, backslashes and a "%s" in label values
    rows = LabelRows.build(("twin",), [names])
    for name in ("twin_forecast", "twin_last_sync_timestamp_seconds"):
        fmt = "{:.9g}".format if name == "twin_forecast" else repr
        bodies = rows.bodies.tolist()
        lines = "".join(f"{name}{{{b}}} {fmt(v)}\n" for b, v in zip(bodies, values.tolist(), strict=True))
        text = ArrayGaugeFamily(name, "help", rows, values).render_lines().decode()
        assert text == f"# HELP {name} help\n# TYPE {name} gauge\n" + lines
        if name != "twin_forecast":     # exact: every value reads back as the same float
            assert [float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()[2:]] == values.tolist()
    plain = ArrayGaugeFamily("twin_twins", "help", LabelRows.build((), []), np.array([3.0]))
    assert plain.render_lines().decode().endswith("twin_twins 3.0\n")


def test_label_values_are_escaped() -> None:
    odd = 'we"ird\\name\nx'
    got = samples_of(scrape(make_view(twin_names=[odd, "plain"])))
    assert got[("twin_health_score", frozenset({("twin", odd)}))] >= 0


def test_every_scraped_name_is_in_the_exported_list() -> None:
    """The loop guard and the dashboards rely on EXPORTED_METRICS being complete."""
    registry = CollectorRegistry()
    install_exporter(registry, view=lambda: make_view(), status=ServiceStatus(), export=EVERYTHING)
    sync_duration_histogram(registry).observe(0.1)
    names = {s.name for f in parse_text(render(registry).decode()) for s in f.samples}
    assert names <= EXPORTED_SERIES_NAMES
    assert {m.name for m in EXPORTED_METRICS if m.type != "histogram"} <= names | {
        "twin_breach_eta_seconds", "twin_query_errors_total", "twin_simulation_failure_probability",
        "twin_simulation_breaking_multiplier", "twin_simulation_fit_trustworthy", "twin_recommended_replicas",
        "twin_capacity_requests_per_second", "twin_headroom_ratio"}  # empty until something happens
    assert is_own_series("twin_sync_duration_seconds_bucket") and not is_own_series("up")


def test_families_are_built_once_per_view() -> None:
    views = [make_view(seed=0)]
    collector = TwinCollector(lambda: views[-1], ServiceStatus())
    first = [f for f in collector.collect() if isinstance(f, ArrayGaugeFamily)]
    again = [f for f in collector.collect() if isinstance(f, ArrayGaugeFamily)]
    assert all(a is b for a, b in zip(first, again, strict=True))
    views.append(make_view(seed=1))
    fresh = [f for f in collector.collect() if isinstance(f, ArrayGaugeFamily)]
    assert not any(a is b for a, b in zip(first, fresh, strict=True))
    new_value = views[-1].health[0]
    health = next(f for f in fresh if f.name == "twin_health_score")
    assert health.samples[0].value == new_value


def test_empty_engine_scrapes_cleanly() -> None:
    got = samples_of(scrape(EngineView.empty(HORIZONS)))
    assert got[("twin_twins", frozenset())] == 0
    assert not [k for k in got if k[0] == "twin_forecast"]


def test_wants_openmetrics_reads_the_prometheus_accept_header() -> None:
    prom = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
            "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    assert wants_openmetrics(prom)
    assert not wants_openmetrics("text/plain")
    assert not wants_openmetrics(None)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_scrape() -> None:
    status = ServiceStatus(source_up=True)
    status.query_errors[("svc-0", "cpu_usage")] = 1
    status.simulation_failure_probability[("svc-0", "spike")] = 0.5
    status.simulation_fit_trustworthy[("svc-0", "spike")] = False
    registry = CollectorRegistry()
    install_exporter(registry, view=lambda: make_view(), status=status)
    sync_duration_histogram(registry).observe(0.2)
    body = render(registry)
    proc = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert proc.stdout.decode().strip() == "" and proc.stderr.decode().strip() == "", "no lint findings"


def test_every_exported_name_carries_the_loop_guard_prefix() -> None:
    assert all(name.startswith("twin_") for name in EXPORTED_SERIES_NAMES)


def test_a_scrape_reads_the_view_once_and_nothing_else() -> None:
    calls: list[int] = []
    view = make_view()

    def current() -> EngineView:
        calls.append(1)
        return view

    registry = CollectorRegistry()
    install_exporter(registry, view=current, status=ServiceStatus())
    render(registry)
    assert len(calls) == 1


def test_concurrent_scrapes_of_a_new_view_agree() -> None:
    from concurrent.futures import ThreadPoolExecutor

    registry = CollectorRegistry()
    view = make_view(n_twins=200)
    install_exporter(registry, view=lambda: view, status=ServiceStatus())
    with ThreadPoolExecutor(4) as pool:
        bodies = list(pool.map(lambda _: render(registry), range(8)))
    assert len(set(bodies)) == 1


def test_a_view_whose_arrays_disagree_loses_that_family_not_the_scrape(
        caplog: pytest.LogCaptureFixture) -> None:
    view = make_view()
    broken = dataclasses.replace(view, anomaly=view.anomaly[:-1])
    got = samples_of(scrape(broken))
    assert not [k for k in got if k[0] == "twin_anomaly_score"]
    assert [k for k in got if k[0] == "twin_forecast"]
    assert "twin_anomaly_score" in caplog.text


def test_help_texts_need_no_escaping() -> None:
    """Array families are rendered once for both formats; OpenMetrics would need '"' escaped in HELP."""
    for spec in EXPORTED_METRICS:
        assert not set(spec.help) & {'"', "\\", "\n"}, spec.name
        assert spec.help and spec.name == spec.name.lower()


def test_each_metric_exports_when_it_last_got_a_sample() -> None:
    """A metric whose query returns only NaN froze its values while the twin's sync time moved on; its own
    last-sample time is what TwinMetricStale compares with the twin's. One never sampled says 0 (the has-data
    signal in the same series: TwinMetricNoData reads it)."""
    got = samples_of(scrape(make_view()))
    key = "twin_metric_last_sample_timestamp_seconds"
    rows = {dict(labels)["twin"] + "/" + dict(labels)["metric"]: v for (n, labels), v in got.items() if n == key}
    assert rows["svc-0/cpu_usage"] == 1.7e9 - 600.0 and rows["svc-0/request_latency_ms"] == 1.7e9
    assert rows["svc-2/request_latency_ms"] == 0.0 and len(rows) == 6


#: Every family of per-metric values: a metric that has never accepted a sample exports none of them.
PER_METRIC_VALUES = ("twin_forecast", "twin_forecast_lower", "twin_forecast_upper", "twin_confidence", "twin_actual",
                     "twin_expected", "twin_divergence_ratio", "twin_divergence_severity", "twin_anomaly_score",
                     "twin_breach_eta_seconds")


def test_a_metric_never_sampled_exports_no_values_and_has_data_0() -> None:
    """The engine holds severity 0 (and maybe a hand-set expected value) for a metric whose query never returned a
    sample; exported, that read as "on target". It is absent instead, and twin_metric_has_data says why."""
    view = make_view()
    i = len(view.series_twin) - 1                      # make_view's never-sampled series
    assert math.isnan(view.series_last_sample[i]) and view.severity[i] >= 0
    never = (view.series_twin[i], view.series_metric[i])
    view = dataclasses.replace(view, expected=np.full(len(view.series_twin), 50.0),  # hand-set for every metric
                               breach_eta_s=np.full(len(view.series_twin), 60.0))
    got = samples_of(scrape(view))

    def rows(name: str) -> set[tuple[str, str]]:
        return {(dict(labels)["twin"], dict(labels)["metric"]) for n, labels in got if n == name}

    sampled = {(t, m) for t, m in zip(view.series_twin, view.series_metric, strict=True)} - {never}
    for name in PER_METRIC_VALUES:
        assert rows(name) == sampled, name
    has_data = {(dict(labels)["twin"], dict(labels)["metric"]): v for (n, labels), v in got.items()
                if n == "twin_metric_has_data"}
    assert has_data == {**dict.fromkeys(sampled, 1.0), never: 0.0}


def test_every_metric_has_data_when_all_were_sampled() -> None:
    view = make_view()
    view = dataclasses.replace(view, series_last_sample=np.full(len(view.series_twin), 1.7e9))
    got = samples_of(scrape(view))
    flags = [v for (n, _), v in got.items() if n == "twin_metric_has_data"]
    assert flags == [1.0] * len(view.series_twin)
    severities = [k for k in got if k[0] == "twin_divergence_severity"]
    assert len(severities) == len(view.series_twin)
