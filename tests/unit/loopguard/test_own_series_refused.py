"""The feedback-loop guard: refuse queries that can read twin_* back, drop such series at run time."""

from __future__ import annotations

import random

import pytest

from sidecar.loopguard import (
    OWN_METRIC_PREFIX,
    LoopError,
    check_query,
    drop_own_series,
    is_own_series,
    own_series_mask,
    regex_can_match_prefix,
)

REFUSED = [
    "twin_forecast",
    'twin_health_score{twin="a"}',
    "rate(twin_query_errors_total[5m])",
    "max_over_time(twin_health_score[1h:1m])",
    'sum by (twin) (twin_forecast{horizon="5m"}) / 2',
    'up + on(instance) group_left twin_drift',
    '{__name__=~"twin.*"}',
    '{__name__=~"twin_.+"}',
    '{__name__=~".+"}',
    '{__name__=~"(?i)TWIN_.*"}',
    '{__name__=~"t[a-z]+_forecast"}',
    '{__name__=~"node_.*|twin_forecast"}',
    '{__name__=~"[[:word:]]+"}',               # RE2 POSIX class: not analysed, so refused
    '{__name__=~"\\\\pL+"}',                     # RE2-only escape: not analysed, so refused
    '{__name__=~"tw(in|ix)_.*", job="a"}',
    '{job="sidecar"}',                           # label-only selector: matches every metric name
    '{__name__!="up", job="a"}',
    '{__name__!~"twin_.*", job="a"}',            # negative matchers alone are not trusted
    'rate({instance="$instance"}[1m])',
    '{__name__="$metric"}',                       # a discovered label must not choose the name
    '$metric{job="a"}',
    # the sidecar's label signature under another name (a recording rule, metric_relabel_configs)
    'job:forecast:max{twin="a", metric="cpu_usage"}',
    'max(sc_actual{twin="a",metric="m"})',
    'sc_breach_eta_seconds{twin!="", limit="cpu_usage"}',
    'x{twin=~".+", scenario="spike"}',
    '{__name__="up", twin="a", horizon="5m"}',
    'sc_forecast{twin="$pod", metric="m"}',
    'up or sc_actual{job="a"} or {__name__="x", metric="m", twin="b"}',
]

ALLOWED = [
    "up",
    'up{job="checkout"}',
    '100 * rate(process_cpu_seconds_total{job="checkout"}[1m])',
    '1000 * histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))',
    '{__name__="up"}',
    '{__name__=~"node_.*"}',
    '{__name__=~"process_(cpu|resident).*"}',
    '{__name__=~"tw"}',                         # full-match anchored: only "tw"
    '{__name__=~"twi.{0,1}"}',
    '{__name__=~"[^t].*"}',
    'up{instance="$instance", pod="${pod}"}',
    "vector(1)",
    "time() - process_start_time_seconds",
    'label_replace(up, "twin", "$1", "job", "(.*)")',   # a *label* named twin is fine
    'sum(rate({__name__=~"http_.*", job="a"}[1m]))',
    'up{twin="a"}',                                     # twin alone is too common a label to refuse
    'up{metric="a"}',
    'up{twin="", metric="a"}',                          # twin="" selects series without it
]


@pytest.mark.parametrize("query", REFUSED)
def test_queries_that_can_read_own_series_are_refused(query: str) -> None:
    with pytest.raises(LoopError, match="refused"):
        check_query(query)


@pytest.mark.parametrize("query", ALLOWED)
def test_queries_on_other_metrics_pass(query: str) -> None:
    check_query(query)


@pytest.mark.parametrize("query", ["rate(up[5m]", '{__name__=~".*"}'])
def test_invalid_promql_is_a_value_error_not_a_loop_error(query: str) -> None:
    with pytest.raises(ValueError) as info:
        check_query(query)
    assert not isinstance(info.value, LoopError)


@pytest.mark.parametrize(("pattern", "can"), [
    ("twin_", True), ("twi", False), ("twin_x|y", True), (".{5}", True), (".{4}", False),
    ("(twin)+_.*", True), ("(?:tw)?in_.*", True), ("a*twin_.*", True), ("a+twin_.*", False),
    ("[a-z]{0,3}.*", True), ("\\w+", True), ("\\d+", False), ("x{2000}", True), ("(", True),
])
def test_regex_prefix_analysis(pattern: str, can: bool) -> None:
    assert regex_can_match_prefix(pattern, OWN_METRIC_PREFIX) is can


def test_runtime_filter_drops_the_label_signature_and_the_scrape_identity() -> None:
    labels = [{"twin": "a", "metric": "m"}, {"twin": "a"}, {"metric": "m"}, {"twin": "a", "horizon": "5m", "job": "x"},
              {"__name__": "up", "job": "sidecar", "instance": "i"}, {"twin": "", "metric": "m"}]
    assert drop_own_series(labels) == ([1, 2, 4, 5], 2)
    assert drop_own_series(labels, identities=[{"job": "sidecar"}]) == ([1, 2, 5], 3)
    assert drop_own_series(labels, identities=[{}]) == ([1, 2, 4, 5], 2)      # an empty identity matches nothing


def test_runtime_filter_drops_series_named_with_the_prefix() -> None:
    labels = [{"__name__": "twin_forecast", "twin": "a"}, {"__name__": "up", "job": "x"}, {"job": "y"},
              {"__name__": "twinkle"}]
    keep, dropped = drop_own_series(labels)
    assert keep == [1, 2, 3] and dropped == 1


def test_the_per_answer_filter_decides_every_series_as_the_single_series_check_does() -> None:
    rng = random.Random(3)
    keys = ["__name__", "twin", "metric", "horizon", "limit", "job", "instance", "svc"]
    values = ["", "a", "twin_forecast", "twin_", "toy_cpu", "sidecar", "x", "5m"]
    identities = [{"job": "sidecar"}, {"job": "x", "instance": "a"}, {}]
    labels = [{k: rng.choice(values) for k in rng.sample(keys, rng.randint(0, len(keys)))} for _ in range(3000)]
    for ids in ([], identities[:1], identities):
        mask = own_series_mask(labels, identities=ids)
        assert mask == [is_own_series(lbl, identities=ids) for lbl in labels]
        assert 0 < sum(mask) < len(labels)
