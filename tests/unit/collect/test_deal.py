"""A family's shared answer dealt out to its twins by their naming labels (rounds and backfill alike)."""

from __future__ import annotations

from sidecar.collect.naming import naming_key
from sidecar.collect.targets import Target, rows_by_twin
from sidecar.config import TwinRule, parse_config

RULES = """
prometheus: {url: "http://127.0.0.1:9090"}
twins:
  - name: fam
    discover: 'up{job="app"}'
    name_labels: [instance]
    metrics: {cpu_usage: 'rate(cpu_seconds_total[1m])'}
"""


def rule() -> TwinRule:
    return parse_config(RULES).twins[0]


def twin(r: TwinRule, labels: dict[str, str]) -> Target:
    return Target(f"fam@{labels.get('instance', '')}", r, {}, labels, key=naming_key(r, labels))


def test_each_series_goes_to_the_twin_whose_naming_labels_it_carries() -> None:
    r = rule()
    a, b = twin(r, {"instance": "a"}), twin(r, {"instance": "b"})
    labels = [{"instance": "b", "job": "app"}, {"instance": "x"}, {"instance": "a", "pod": "p"}, {"job": "app"}]
    assert rows_by_twin([a, b], labels, range(4)) == {"fam@a": [2], "fam@b": [0]}


def test_rows_outside_keep_are_never_dealt_and_order_is_kept() -> None:
    r = rule()
    a = twin(r, {"instance": "a"})
    labels = [{"instance": "a"}, {"instance": "a"}, {"instance": "a"}]
    assert rows_by_twin([a], labels, [2, 0]) == {"fam@a": [2, 0]}     # several rows: the caller refuses them
    assert rows_by_twin([a], labels, []) == {}


def test_a_series_without_a_naming_label_finds_no_twin_even_one_whose_value_is_empty() -> None:
    r = rule()
    empty = twin(r, {})                              # naming_key fills a missing label with ""
    assert empty.key == (("instance", ""),)
    assert rows_by_twin([empty], [{"job": "app"}, {"instance": ""}], [0, 1]) == {"fam@": [1]}
