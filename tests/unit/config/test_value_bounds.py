"""Rules that are out of every sane range are refused with one line naming file, line and key (exit 2):
any depth of YAML nesting, durations and sizes beyond their bounds, a storage.path SQLite cannot open."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.cli import main
from sidecar.config import MAX_YAML_DEPTH, parse_config
from sidecar.errors import ConfigError

TWIN = "twins:\n  - name: a\n    metrics: {c: up}\n"


@pytest.mark.parametrize("depth", [MAX_YAML_DEPTH + 1, 400, 600, 5_000, 200_000])
def test_nesting_of_any_depth_is_one_line_exit_2(tmp_path: Path, depth: int) -> None:
    """500 levels were a RecursionError traceback and exit 1 in check-config and run."""
    p = tmp_path / "deep.yaml"
    p.write_text("a: " + "[" * depth + "]" * depth + "\n" + TWIN)
    for argv in (["check-config", str(p)], ["run", "--config", str(p)]):
        proc = subprocess.run([sys.executable, "-m", "sidecar.cli", *argv], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.splitlines() == [
            f"twin-sidecar {argv[0]}: {p}:1: nested more than {MAX_YAML_DEPTH} levels deep (mappings and lists); "
            "the rules need a handful"]


def test_block_nesting_names_its_line() -> None:
    text = "".join(f"{'  ' * i}k{i}:\n" for i in range(MAX_YAML_DEPTH + 5)) + "x: 1\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, path="r.yaml", env={})
    assert info.value.line == MAX_YAML_DEPTH + 1


def test_nesting_up_to_the_bound_is_only_judged_by_the_keys() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config("a: " + "[" * (MAX_YAML_DEPTH - 1) + "]" * (MAX_YAML_DEPTH - 1) + "\n" + TWIN, path="r.yaml",
                     env={})


@pytest.mark.parametrize("text,line,key,expected", [
    ("interval: 99999999999999999999d\n", 1, "interval", "expected at most 1h, got 99999999999999999999d"),
    ("interval: 2h\n", 1, "interval", "expected at most 1h"),
    ("interval: " + "9" * 400 + "s\n", 1, "interval", "(403 characters)"),
    ("backfill: 31d\n", 1, "backfill", "expected at most 30d"),
    ("backfill_max_samples: 2000000000\n", 1, "backfill_max_samples", "at most 1,000,000,000"),
    ("prometheus:\n  timeout: 6m\n", 2, "prometheus.timeout", "expected at most 5m"),
    ("prometheus:\n  max_concurrency: 5000\n", 2, "prometheus.max_concurrency", "at most 1,024"),
    ("server:\n  max_body_bytes: 1e32\n", 2, "server.max_body_bytes", "at most 67,108,864"),
    ("server:\n  max_body_bytes: 100000000000000000000000000000000\n", 2, "server.max_body_bytes",
     "at most 67,108,864"),
    ("server:\n  max_body_bytes: " + "1" * 5000 + "\n", 2, "server.max_body_bytes", "(5,002 characters)"),
    ("storage:\n  retention_days: 100000\n", 2, "storage.retention_days", "at most 3650"),
    ("storage:\n  retention_snapshots: 10000000\n", 2, "storage.retention_snapshots", "at most 1,000,000"),
    ("storage:\n  buffer_max_items: 100000000\n", 2, "storage.buffer_max_items", "at most 10,000,000"),
    ("storage:\n  model_state_interval: 2d\n", 2, "storage.model_state_interval", "at most 1d"),
    ("storage:\n  retention_min_age: 400d\n", 2, "storage.retention_min_age", "at most 365d"),
    ("storage:\n  retention_days: 1\n  retention_min_age: 2d\n", 3, "storage.retention_min_age",
     "longer than retention_days"),
    ("storage:\n  retention_days: 0.5\n", 2, "storage.retention_days", "retention_min_age (1d) is longer"),
    ("retired:\n  keep_for: 31d\n", 2, "retired.keep_for", "at most 30d"),
    ("retired:\n  keep_max: 1000000\n", 2, "retired.keep_max", "at most 100,000"),
])
def test_values_beyond_their_bound_are_refused(text: str, line: int, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text + TWIN, path="rules.yaml", env={})
    err = info.value
    assert (err.line, err.key) == (line, key), str(err)
    assert expected in str(err) and "\n" not in str(err)


@pytest.mark.parametrize("twin,key,expected", [
    ("    horizons: [5m, 8d]\n", "twins[0].horizons[1]", "at most 1w"),
    ("    replicas: 100001\n", "twins[0].replicas", "at most 100,000"),
    ("    workers: 100001\n", "twins[0].workers", "at most 100,000"),
])
def test_twin_values_beyond_their_bound_are_refused(twin: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        parse_config(TWIN + twin, path="rules.yaml", env={})
    assert info.value.key == key


def test_a_scenario_every_beyond_a_day_is_refused() -> None:
    text = TWIN + "scenarios:\n  - name: s\n    every: 2d\n    scenario: {type: load_test}\n"
    with pytest.raises(ConfigError, match="at most 1d") as info:
        parse_config(text, path="rules.yaml", env={})
    assert (info.value.line, info.value.key) == (6, "scenarios[0].every")


def test_the_bounds_themselves_are_accepted(tmp_path: Path) -> None:
    cfg = parse_config("interval: 1h\nbackfill: 30d\nprometheus: {timeout: 5m, max_concurrency: 1024}\n"
                       "server: {max_body_bytes: 67108864}\n"
                       f"storage: {{path: {tmp_path / 'db'}, retention_days: 3650, retention_snapshots: 1000000, "
                       "buffer_max_items: 10000000, model_state_interval: 1d, retention_min_age: 365d}\n"
                       "retired: {keep_for: 30d, keep_max: 100000}\nbackfill_max_samples: 1000000000\n" + TWIN
                       + "    horizons: [7d]\n", path="rules.yaml", env={})
    assert (cfg.interval_s, cfg.server.max_body_bytes) == (3600.0, 2**26)
    assert cfg.backfill_max_samples == 10**9
    assert cfg.storage.retention_min_age_s == 365 * 86400.0


def test_storage_path_sqlite_cannot_open_is_refused_at_load(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A directory passed check-config and run, which then started with its store down."""
    rules = tmp_path / "rules.yaml"
    cases = {str(tmp_path): "is a directory", str(tmp_path / "missing" / "t.db"): "does not exist"}
    if os.geteuid() != 0:   # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cases[str(locked / "t.db")] = "is not writable"
    for path, problem in cases.items():
        rules.write_text(f"storage:\n  path: {path}\n" + TWIN)
        for argv in (["check-config", str(rules)], ["run", "--config", str(rules)]):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"twin-sidecar {argv[0]}: {rules}:2: storage.path: ") and problem in err, err
            assert err.count("\n") == 1


def test_storage_path_is_not_checked_when_postgres_is_used(tmp_path: Path) -> None:
    text = f"storage:\n  path: {tmp_path}\n" + TWIN
    cfg = parse_config(text, path="rules.yaml", env={"DATABASE_URL": "postgresql://u@h/db"})
    assert cfg.storage.url == "postgresql://u@h/db"
    parse_config("storage:\n  path: ':memory:'\n" + TWIN, path="rules.yaml", env={})
