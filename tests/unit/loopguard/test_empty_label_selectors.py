"""A matcher that accepts only the empty value selects series *without* that label: no evidence of a loop.

The sidecar's series carry ``twin`` and a companion label (``metric``, ``horizon``, ``limit``, ``scenario``) with
non-empty values, and Prometheus treats an empty value as no label. So ``metric=""``, ``metric=~""`` or
``metric!~".+"`` rule a series that has ``metric`` out, and do not make a selector the sidecar's signature;
a regex that matches the empty string *and* something else (``=~"|x"``, ``=~"x?"``, ``=~".*"``) still admits
the sidecar's values and does.
"""

from __future__ import annotations

import pytest

from sidecar.config import parse_config
from sidecar.errors import ConfigError
from sidecar.loopguard import LoopError, check_query, regex_can_match_nonempty, regex_matches_every_nonempty

SAFE = [
    'foo{twin!="", metric=""}',
    'foo{twin!="", metric=~""}',
    'foo{twin=~".+", metric=~"()"}',
    'foo{twin!="", metric=~"^$"}',
    'foo{twin!="", metric=~"(|)"}',
    'foo{twin!="", metric!~".+"}',
    'foo{twin!="", metric!~".*"}',
    'foo{twin!="", metric!~"(?s).+"}',
    'foo{twin!="", metric="", horizon="", limit=~"", scenario!~".+"}',
    'foo{twin="a", limit=""}',
    'foo{twin!="", metric=~".+", metric=""}',             # two on one label: the empty one wins
    'max by (twin) (foo{twin!="", metric=""})',
    'foo{twin!~".+", metric="cpu_usage"}',                # twin absent: the user's own metric label
    'foo{twin=~"^$", metric="cpu_usage"}',
    'foo{twin!="", metric="" or job="x", metric="m"}',     # neither branch has the signature
]

REFUSED = [
    'foo{twin!="", metric!=""}',
    'foo{twin=~".+", metric!=""}',
    'foo{twin!="", metric=~"|x"}',                         # matches the empty string, and "x"
    'foo{twin!="", metric=~"x|"}',
    'foo{twin!="", metric=~"x?"}',
    'foo{twin!="", metric=~".*"}',
    'foo{twin!="", metric=~"(|cpu_usage)"}',
    'foo{twin!="", metric!~"x"}',
    'foo{twin!="", metric!~".+x"}',
    'foo{twin!="", metric!~"|.+x"}',
    'foo{twin!="", metric!~"[a-z]+"}',                     # "A1" gets through
    'foo{twin!="", metric="", horizon="5m"}',               # another companion with a value
    'foo{twin!="", metric=~"\\\\pL*"}',                     # RE2-only syntax: not understood, so refused
    'foo{twin!="", metric="" or twin!="", metric="cpu_usage"}',
    'foo{twin!~"x", metric="cpu_usage"}',                   # twin!~"x" admits every other twin
    'foo{twin=~"|a", metric="cpu_usage"}',
    # a twin_ name is refused whatever its labels say
    'twin_forecast{twin=~".+"}',
    'twin_forecast{twin!="", metric=""}',
    'twin_actual{metric=""}',
]


@pytest.mark.parametrize("query", SAFE)
def test_a_companion_label_required_to_be_empty_is_not_the_signature(query: str) -> None:
    check_query(query)


@pytest.mark.parametrize("query", REFUSED)
def test_a_companion_label_that_can_hold_a_value_is_still_the_signature(query: str) -> None:
    with pytest.raises(LoopError, match="refused"):
        check_query(query)


def test_the_rules_file_takes_the_empty_label_selector_and_still_refuses_the_loop() -> None:
    ok = "twins:\n  - name: a\n    metrics: {c: 'foo{twin!=\"\",metric=\"\"}'}\n"
    assert parse_config(ok, path="r.yaml", env={}).twins[0].metrics["c"] == 'foo{twin!="",metric=""}'
    with pytest.raises(ConfigError, match=r"r\.yaml:3: twins\[0\]\.metrics\.c: refused: .*label signature"):
        parse_config(ok.replace('metric=""', 'metric!=""'), path="r.yaml", env={})


@pytest.mark.parametrize(("pattern", "can"), [
    ("", False), ("()", False), ("(|)", False), ("^$", False), ("(?:)*", False), ("x{0}", False),
    ("|x", True), ("x?", True), (".*", True), ("a", True), ("[^a]", True), ("(", True), ("\\pL", True),
    ("\\b", False), ("(?i)", False),
])
def test_regex_nonempty_analysis(pattern: str, can: bool) -> None:
    assert regex_can_match_nonempty(pattern) is can


@pytest.mark.parametrize(("pattern", "every"), [
    (".+", True), (".*", True), ("(?s).+", True), ("(.+)", True), ("(?:.*)", True), (".+?", True),
    (".{1,}", True), (".{2,}", False), ("[a-z]+", False), ("|.+x", False), ("x", False),
    ("", False), ("(", False),
])
def test_regex_universality_analysis(pattern: str, every: bool) -> None:
    assert regex_matches_every_nonempty(pattern) is every
