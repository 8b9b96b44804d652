"""Shards split the twins by a hash of their naming labels: every twin to exactly one shard, the same answer for
a series and for its twin restored from the store, the rules file's twins by name; and ``shard:`` set by the
rules, the environment (a StatefulSet pod name included) or the command line, refused when out of range."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest

from sidecar.cli import main
from sidecar.collect.naming import discovered_name, naming_key
from sidecar.collect.shard import ShardFilter, hashmod, shard_of_key
from sidecar.config import SHARD_COUNT_ENV, SHARD_INDEX_ENV, ShardConfig, parse_config, shard_config
from sidecar.errors import ConfigError

RULES = """twins:
  - name: web
    discover: 'up{job="web"}'
    name_labels: [namespace, pod]
    metrics: {cpu_usage: 'rate(cpu{pod="$pod"}[1m])'}
  - name: db
    metrics: {cpu_usage: 'up'}
"""


def filters(count: int) -> list[ShardFilter]:
    cfg = parse_config(RULES, env={})
    return [ShardFilter(ShardConfig(i, count), cfg.twins) for i in range(count)]


def test_every_series_belongs_to_exactly_one_shard_and_the_shards_are_even() -> None:
    shards = filters(3)
    owners: Counter[int] = Counter()
    for n in range(6000):
        key = (("namespace", f"ns{n % 7}"), ("pod", f"web-{n}"))
        mine = [f.index for f in shards if f.owns_key(key)]
        assert len(mine) == 1, key
        owners[mine[0]] += 1
    assert all(1800 < owners[i] < 2200 for i in range(3)), owners


def test_a_restored_twin_goes_to_the_shard_its_series_go_to() -> None:
    cfg = parse_config(RULES, env={})
    rule = cfg.twins[0]
    for count in (2, 3, 5):
        shards = [ShardFilter(ShardConfig(i, count), cfg.twins) for i in range(count)]
        for n in range(200):
            labels = {"namespace": "shop", "pod": f"web-{n}", "instance": f"10.0.0.{n}:80", "job": "web"}
            key = naming_key(rule, labels)
            name = discovered_name(rule, labels)
            for f in shards:
                # labels beyond name_labels (the instance moved) do not move the twin
                assert f.owns_twin(name, {**labels, "instance": "elsewhere"}) == f.owns_key(key)
                assert f.owns_definition({"source_system": name, "labels": labels}) == f.owns_key(key)


def test_the_hash_is_of_the_naming_label_values_joined_by_semicolons() -> None:
    """The hashmod of Prometheus' relabelling (source_labels: [namespace, pod], separator ';')."""
    key = (("namespace", "shop"), ("pod", "web-1"))
    assert shard_of_key(key, 7) == hashmod(["shop", "web-1"], 7) == hashmod(["shop;web-1"], 7)
    assert {hashmod([f"v{n}"], 1) for n in range(50)} == {0}


def test_a_twin_of_the_rules_file_belongs_to_one_shard_by_its_name() -> None:
    shards = filters(4)
    assert sum(f.owns_name("db") for f in shards) == 1
    assert [f.owns_twin("db", {}) for f in shards] == [f.owns_name("db") for f in shards]
    # a stored twin no rule accounts for (its rule removed) still has one shard, which retires it
    assert sum(f.owns_twin("gone@x", {"pod": "x"}) for f in shards) == 1


def test_unsharded_owns_everything() -> None:
    (only,) = filters(1)
    assert only.whole
    assert all(only.owns_key((("pod", str(n)),)) and only.owns_name(str(n)) for n in range(100))


# ----------------------------------------------------------------- shard: in the rules, env, flags

def test_the_rules_set_the_shard_and_the_environment_wins() -> None:
    text = RULES + "shard: {index: 1, count: 3}\n"
    assert parse_config(text, env={}).shard == ShardConfig(1, 3)
    assert parse_config(RULES, env={}).shard == ShardConfig(0, 1)
    assert parse_config(text, env={SHARD_INDEX_ENV: "2"}).shard == ShardConfig(2, 3)
    assert parse_config(RULES, env={SHARD_INDEX_ENV: "twins-4", SHARD_COUNT_ENV: "5"}).shard == ShardConfig(4, 5)
    assert parse_config(text, env={SHARD_COUNT_ENV: "2", SHARD_INDEX_ENV: ""}).shard == ShardConfig(1, 2)


@pytest.mark.parametrize(("shard", "env", "why"), [
    ("shard: {index: 3, count: 3}", {}, "shard.index: expected 0 to 2 (count 3), got 3"),
    ("shard: {count: 0}", {}, "shard.count: expected an integer >= 1"),
    ("shard: {index: 0, count: 2, of: 3}", {}, "shard.of: unknown key"),
    ("", {SHARD_INDEX_ENV: "1"}, "TWIN_SIDECAR_SHARD_INDEX: the shard index must be 0 to 0 (count 1), got 1"),
    ("", {SHARD_INDEX_ENV: "twins", SHARD_COUNT_ENV: "2"}, "index must be an integer or a StatefulSet pod name"),
    ("", {SHARD_COUNT_ENV: "two"}, "TWIN_SIDECAR_SHARD_COUNT: count must be an integer"),
    ("", {SHARD_COUNT_ENV: "1001"}, "the shard count must be 1 to 1000, got 1001"),
])
def test_a_shard_out_of_range_is_refused_naming_where(shard: str, env: dict[str, str], why: str) -> None:
    with pytest.raises(ConfigError, match=why.replace("(", r"\(").replace(")", r"\)")):
        parse_config(RULES + shard + "\n", env=env)


def test_the_pod_ordinal_is_the_index() -> None:
    for ordinal, count in itertools.product(range(3), (3, 4)):
        assert shard_config(f"my-release-twin-sidecar-{ordinal}", count, where="x") == ShardConfig(ordinal, count)


def test_run_refuses_a_shard_flag_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    assert main(["run", "--config", str(rules), "--shard-index", "2", "--shard-count", "2"]) == 2
    assert "--shard-index and --shard-count: the shard index must be 0 to 1 (count 2), got 2" in capsys.readouterr().err
