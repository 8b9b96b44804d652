"""The YAML rules: everything valid loads, every mistake names file, line and key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sidecar.config import (
    SecretFile,
    check_config,
    load_config,
    parse_config,
    placeholders_in,
    result_type_problem,
)
from sidecar.engine.records import SystemType
from sidecar.errors import ConfigError
from sidecar.units import format_duration, parse_duration

FULL = """\
prometheus:
  url: http://127.0.0.1:9090/
  timeout: 5s
  headers: {X-Scope-OrgID: tenant-1}
  bearer_token_file: token.txt
  max_concurrency: 4
interval: 30s
backfill: 2h
server:
  listen: 0.0.0.0:9500
  auth_token_file: api-token.txt
  max_body_bytes: 65536
storage:
  path: data/twins.db
  retention_days: 7
  retention_snapshots: 50
  buffer_max_items: 5000
twins:
  - name: checkout-api
    system_type: api_gateway
    discover: 'up{job="checkout"}'
    name_labels: [instance]
    metrics:
      cpu_usage: '100 * rate(process_cpu_seconds_total{instance="$instance"}[1m])'
      request_latency_ms: >-
        1000 * histogram_quantile(0.99, sum by (le) (rate(http_bucket{instance="${instance}"}[5m])))
    request_rate: 'sum(rate(http_requests_total{instance="$instance"}[1m]))'
    expected: {cpu_usage: 50}
    thresholds: {cpu_usage: 20}
    limits: {cpu_usage: 95, request_latency_ms: 1000}
    horizons: [5m, 15m, 1h]
    replicas: 3
    workers: 8
    auto_correction: false
  - name: db
    metrics:
      memory_usage: 'avg(node_memory_used_ratio) * 100'
scenarios:
  - name: spike_5x
    twin: checkout-api
    every: 10m
    scenario: {type: traffic_spike, traffic_multiplier: 5, duration_minutes: 30}
  - name: breaking
    scenario: {type: load_test}
"""


def write(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    (tmp_path / "token.txt").write_text("s3cret-token\n")
    (tmp_path / "api-token.txt").write_text("api-token")
    (tmp_path / "data").mkdir()                  # storage.path's directory must exist
    return tmp_path


def test_full_rules_load_into_frozen_typed_config(secrets: Path) -> None:
    cfg = load_config(write(secrets, FULL), env={})
    assert cfg.prometheus.url == "http://127.0.0.1:9090"
    assert cfg.prometheus.timeout_s == 5.0
    assert dict(cfg.prometheus.headers) == {"X-Scope-OrgID": "tenant-1"}
    assert cfg.prometheus.bearer_token_file is not None
    assert cfg.prometheus.bearer_token_file.read() == "s3cret-token"
    assert cfg.prometheus.max_concurrency == 4
    assert (cfg.interval_s, cfg.backfill_s) == (30.0, 7200.0)
    assert (cfg.server.host, cfg.server.port, cfg.server.max_body_bytes) == ("0.0.0.0", 9500, 65536)
    assert cfg.storage.path == str(secrets / "data" / "twins.db")
    assert (cfg.storage.retention_days, cfg.storage.retention_snapshots) == (7.0, 50)
    api, db = cfg.twins
    assert api.system_type is SystemType.API_GATEWAY and db.system_type is SystemType.OTHER
    assert api.discover == 'up{job="checkout"}' and api.name_labels == ("instance",)
    assert set(api.queries()) == {"cpu_usage", "request_latency_ms", "request_rate"}
    assert dict(api.limits) == {"cpu_usage": 95.0, "request_latency_ms": 1000.0}
    assert api.horizons_s == (300.0, 900.0, 3600.0)
    assert db.horizons_s == (300.0, 900.0, 1800.0, 3600.0)
    assert cfg.horizons_s == (300.0, 900.0, 1800.0, 3600.0)
    assert (api.replicas, api.workers, api.auto_correction) == (3, 8, False)
    assert api.line == 19
    spike, breaking = cfg.scenarios
    assert spike.every_s == 600.0 and dict(spike.scenario)["traffic_multiplier"] == 5
    assert breaking.twin == "all" and breaking.every_s == 300.0
    with pytest.raises(AttributeError):
        cfg.interval_s = 1.0  # type: ignore[misc]


def test_secrets_never_show_in_repr(secrets: Path) -> None:
    cfg = load_config(write(secrets, FULL), env={"DATABASE_URL": "postgresql://u:pw-xyz@db/twins"})
    shown = repr(cfg)
    assert "s3cret-token" not in shown and "api-token" not in shown.replace("api-token.txt", "")
    assert "pw-xyz" not in shown
    assert cfg.storage.url == "postgresql://u:pw-xyz@db/twins"   # DATABASE_URL overrides storage.url


def test_secret_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    f = tmp_path / "t"
    f.write_text("one")
    s = SecretFile(str(f))
    assert s.read() == "one"
    f.write_text("two")
    import os
    os.utime(f, (1, 1))                      # a different mtime, as a rotation would give
    assert s.read() == "two"


def test_minimal_rules_take_documented_defaults() -> None:
    cfg = parse_config("twins:\n  - name: a\n    metrics: {cpu_usage: 'up'}\n", env={})
    assert cfg.prometheus.url == "http://127.0.0.1:9090" and cfg.prometheus.timeout_s == 10.0
    assert (cfg.interval_s, cfg.backfill_s, cfg.backfill_max_samples) == (15.0, 3600.0, 1_000_000)
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 9464)
    assert cfg.storage.url is None and cfg.storage.path.endswith("twin-sidecar.db")
    assert cfg.twins[0].auto_correction is True and cfg.scenarios == ()


@pytest.mark.parametrize(("text", "line", "key", "expected"), [
    ("twins:\n  - name: a\n    metrics: {cpu_usage: up}\n    metric_typo: 1\n",
     4, "twins[0].metric_typo", "unknown key"),
    ("prometheus:\n  url: http://x\n  timeout: 10\ntwins: []\n", 3, "prometheus.timeout",
     "duration like 15s"),
    ("interval: fast\ntwins:\n  - name: a\n    metrics: {c: up}\n", 1, "interval", "duration like 15s"),
    ("twins:\n  - name: a\n    metrics: {c: up}\n  - name: a\n    metrics: {c: up}\n", 4,
     "twins[1].name", "duplicate twin name"),
    ("twins:\n  - name: a\n    metrics:\n      c: 'rate(up[5m]'\n", 4, "twins[0].metrics.c", "valid PromQL"),
    ("twins:\n  - name: a\n    metrics:\n      c: 'twin_forecast{twin=\"x\"}'\n", 4, "twins[0].metrics.c",
     "refused"),
    ("twins:\n  - name: a\n    discover: '{job=\"sidecar\"}'\n    metrics: {c: up}\n", 3,
     "twins[0].discover", "no metric name"),
    ("twins:\n  - name: a\n    system_type: mainframe\n    metrics: {c: up}\n", 3, "twins[0].system_type",
     "expected one of api_gateway"),
    ("twins:\n  - name: a\n    metrics: {c: up}\n    limits: {d: 3}\n", 4, "twins[0].limits.d",
     "not one of this twin's metrics"),
    ("twins:\n  - name: a\n    metrics: {c: up}\n    thresholds: {c: -1}\n", 4, "twins[0].thresholds.c",
     "number > 0"),
    ("twins:\n  - name: a\n    metrics: {c: 'up{i=\"$instance\"}'}\n", 2, "twins[0].metrics",
     "no `discover`"),
    ("twins:\n  - name: a\n    metrics: {c: up}\n    replicas: 0\n", 4, "twins[0].replicas", "integer >= 1"),
    ("twins:\n  - name: a\n    metrics: {c: up}\n    auto_correction: yes please\n", 4,
     "twins[0].auto_correction", "true or false"),
    ("twins:\n  - name: a\n    metrics: {}\n", 3, "twins[0].metrics", "at least one metric"),
    ("twins:\n  - name: a b\n    metrics: {c: up}\n", 2, "twins[0].name", "letters, digits"),
    ("server:\n  listen: nowhere\ntwins: []\n", 2, "server.listen", "HOST:PORT"),
    ("prometheus:\n  url: ftp://x\ntwins: []\n", 2, "prometheus.url", "http:// or https://"),
    ("prometheus:\n  headers: {Authorization: Bearer x}\ntwins: []\n", 2, "prometheus.headers.Authorization",
     "bearer_token_file"),
    ("prometheus:\n  bearer_token_file: /nonexistent/token\ntwins: []\n", 2, "prometheus.bearer_token_file",
     "cannot read the file"),
    ("twins: []\n", 1, "twins", "at least one twin"),
    ("backfill_max_samples: 0\ntwins: []\n", 1, "backfill_max_samples", "integer >= 1"),
    ("backfill_max_samples: 1e6\ntwins: []\n", 1, "backfill_max_samples",
     "integer >= 1 (at most 1,000,000,000), got"),
    ("backfill_max_samples: 1M\ntwins: []\n", 1, "backfill_max_samples", "got str '1M'"),
    ("backfill_max_samples: -5\ntwins: []\n", 1, "backfill_max_samples", "integer >= 1"),
    ("interval: 15s\n", 1, "twins", "required"),
    ("twins:\n  - name: a\n    metrics: {c: up}\nscenarios:\n  - name: s\n    twin: b\n"
     "    scenario: {type: traffic_spike}\n", 6, "scenarios[0].twin", "no twin rule named 'b'"),
    ("twins:\n  - name: a\n    metrics: {c: up}\nscenarios:\n  - name: s\n    scenario: {type: meteor}\n",
     6, "scenarios[0].scenario.type", "expected one of traffic_spike"),
    ("twins:\n  - name: a\n    metrics: {c: up}\ntwins: []\n", 4, "twins", "duplicate key"),
    ("stroage: {}\ntwins:\n  - name: a\n    metrics: {c: up}\n", 1, "stroage", "unknown key"),
    ("twins:\n  - name: a\n    metrics: {c: up}\n    request_rate: up\n    horizons: [5m, soon]\n", 5,
     "twins[0].horizons[1]", "duration like"),
    # PromQL that parses but can never be a number per series: it would only fail when queried
    ("twins:\n  - name: a\n    metrics:\n      custom_s: '\"hello\"'\n", 4, "twins[0].metrics.custom_s",
     "got a string"),
    ("twins:\n  - name: a\n    metrics:\n      custom_s: '((\"hello\"))'\n", 4, "twins[0].metrics.custom_s",
     "got a string"),
    ("twins:\n  - name: a\n    metrics: {c: up}\n    request_rate: 'http_requests_total[5m]'\n", 4,
     "twins[0].request_rate", "got a range vector"),
    ("twins:\n  - name: a\n    metrics:\n      c: 'rate(up[5m])[30m:1m]'\n", 4, "twins[0].metrics.c",
     "rate(...) or avg_over_time(...)"),
])
def test_every_mistake_names_file_line_and_key(text: str, line: int, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, path="rules.yaml", env={})
    err = info.value
    assert (err.path, err.line, err.key) == ("rules.yaml", line, key), str(err)
    assert expected in str(err)
    assert str(err).startswith(f"rules.yaml:{line}: {key}: ")


def test_yaml_syntax_error_has_a_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("twins:\n  - name: a\n    metrics: {c: up\n", path="r.yaml", env={})
    assert info.value.line is not None and "not valid YAML" in str(info.value)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="empty"):
        load_config(write(tmp_path, ""))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


def test_check_config_summarises_valid_rules(secrets: Path) -> None:
    lines = check_config(write(secrets, FULL))
    assert "OK: 2 twin rule(s), 2 scenario(s)" in lines[0]
    assert any("checkout-api" in line and "discovered" in line for line in lines)
    assert not any("s3cret" in line for line in lines)


def test_durations() -> None:
    assert parse_duration("15s") == 15 and parse_duration("1h30m") == 5400 and parse_duration("500ms") == 0.5
    for bad in ("", "15", "s", "1x", "5m 3s", "-1s"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert [format_duration(s) for s in (300, 900, 3600, 90, 0.5)] == ["5m", "15m", "1h", "90s", "500ms"]


def test_placeholders() -> None:
    assert placeholders_in('x{a="$instance", b="${pod}"} and y{c="end$"}') == ["instance", "pod"]


ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("name", ["example.yaml", "demo.yaml"])
def test_shipped_rules_are_valid(name: str) -> None:
    cfg = load_config(ROOT / "config" / name, env={})
    assert cfg.twins and cfg.scenarios


def test_demo_rules_shipped_in_the_package_match_config_demo() -> None:
    packaged = ROOT / "sidecar" / "demo" / "rules.yaml"
    assert packaged.read_text() == (ROOT / "config" / "demo.yaml").read_text()


def test_example_documents_every_key() -> None:
    text = (ROOT / "config" / "example.yaml").read_text()
    keys = ["url", "timeout", "headers", "bearer_token_file", "basic_auth", "tls_ca_file", "max_concurrency",
            "accept_warnings", "interval", "backfill", "backfill_max_samples", "listen", "auth_token_file",
            "max_body_bytes", "path", "retention_days", "retention_snapshots", "buffer_max_items", "name",
            "system_type", "discover",
            "name_labels", "metrics", "request_rate", "expected", "thresholds", "limits", "horizons",
            "replicas", "workers", "auto_correction", "scenarios", "twin", "every", "scenario", "self_labels",
            "model_state_interval", "commit_wait", "retired", "keep_for", "keep_max"]
    missing = [k for k in keys if f"{k}:" not in text]
    assert not missing


# --------------------------------------------------------------------------- standing scenarios (review)

SCENARIO_RULES = "twins:\n  - name: a\n    metrics: {c: up}\n{sizing}scenarios:\n  - name: s\n    scenario:\n{body}"


def scenario_rules(body: str, sizing: str = "") -> str:
    return SCENARIO_RULES.replace("{sizing}", sizing).replace("{body}", textwrap.indent(body, "      "))


@pytest.mark.parametrize(("body", "line", "key", "expected"), [
    ("type: traffic_spike\ntraffic_multipler: 5\n", 8, "scenarios[0].scenario.traffic_multipler",
     "'traffic_multipler' is not known for type 'traffic_spike'"),
    ("type: traffic_spike\ntraffic_multiplier: -5\n", 8, "scenarios[0].scenario.traffic_multiplier",
     "'traffic_multiplier' must be > 0 and <= 1000, got -5"),
    ("type: traffic_spike\nduration_minutes: 30\n", 7, "scenarios[0].scenario",
     "'traffic_multiplier' is required"),
    ("type: failure_injection\nreplicas: 3\nreplicas_lost: .inf\n", 9, "scenarios[0].scenario.replicas_lost",
     "must be a whole number"),
    ("type: failure_injection\nreplicas_lost: 1\n", 8, "scenarios[0].scenario.replicas_lost",
     "for twin rule 'a', replicas: 1"),
    ("type: traffic_spike\ntraffic_multiplier: " + "9" * 400 + "\n", 8,
     "scenarios[0].scenario.traffic_multiplier", "expected a number of a sensible size, got 400 digits"),
])
def test_a_standing_scenario_the_simulation_would_refuse_is_a_config_error(
        body: str, line: int, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(scenario_rules(body), path="rules.yaml", env={})
    err = info.value
    assert (err.path, err.line, err.key) == ("rules.yaml", line, key), str(err)
    assert expected in str(err) and str(err).startswith(f"rules.yaml:{line}: {key}: ")


def test_check_config_exits_2_on_a_scenario_typo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sidecar.cli import main

    path = write(tmp_path, scenario_rules("type: traffic_spike\ntraffic_multipler: 5\n"))
    assert main(["check-config", str(path)]) == 2
    assert "traffic_multipler" in capsys.readouterr().err


def test_valid_standing_scenarios_still_load() -> None:
    cfg = parse_config(scenario_rules("type: traffic_spike\ntraffic_multiplier: 5\nduration_minutes: 30\n"),
                       env={})
    assert dict(cfg.scenarios[0].scenario) == {"type": "traffic_spike", "traffic_multiplier": 5,
                                               "duration_minutes": 30}
    # losing one of the rule's three replicas is a fault the twin survives: valid for that rule
    cfg = parse_config(scenario_rules("type: failure_injection\nreplicas_lost: 1\n", sizing="    replicas: 3\n"),
                       env={})
    assert dict(cfg.scenarios[0].scenario)["replicas_lost"] == 1


@pytest.mark.parametrize("query", ["up", "1", "-up", "sum by (job) (rate(up[5m]))", "scalar(up)", "time()",
                                   "(up)", 'label_replace(up, "a", "$1", "b", "(.*)")', 'up{i="$instance"}'])
def test_queries_returning_numbers_have_no_result_type_problem(query: str) -> None:
    assert result_type_problem(query) is None


def test_check_config_refuses_a_string_literal_query_with_file_line_and_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sidecar.cli import main

    p = write(tmp_path, "twins:\n  - name: a\n    metrics:\n      cpu_usage: up\n      custom_s: '\"hello\"'\n")
    assert main(["check-config", str(p)]) == 2
    err = capsys.readouterr().err
    assert f"{p}:5: twins[0].metrics.custom_s: expected PromQL returning numbers" in err and "string" in err


DIRECTED = """\
twins:
  - name: a
    metrics: {cpu_usage: up, queue_fill: q, load1: l}
    direction: {cpu_usage: both, queue_fill: up}
    bounds: {queue_fill: [0, 1], load1: [0, null]}
"""


def test_direction_and_bounds_are_read_per_metric() -> None:
    (rule,) = parse_config(DIRECTED, path="rules.yaml", env={}).twins
    assert dict(rule.directions) == {"cpu_usage": "both", "queue_fill": "up"}
    assert dict(rule.bounds) == {"queue_fill": (0.0, 1.0), "load1": (0.0, None)}


@pytest.mark.parametrize(("old", "new", "where"), [
    ("cpu_usage: both", "cpu_usage: sideways",
     "rules.yaml:4: twins[0].direction.cpu_usage: expected one of up, down, both"),
    ("queue_fill: up}", "nope: up}", "rules.yaml:4: twins[0].direction.nope: not one of this twin's metrics"),
    ("queue_fill: [0, 1]", "cpu_usage: [0, 5]",
     "rules.yaml:5: twins[0].bounds.cpu_usage: cpu_usage has a fixed domain"),
    ("queue_fill: [0, 1]", "queue_fill: [1, 0]", "rules.yaml:5: twins[0].bounds.queue_fill: expected low < high"),
    ("queue_fill: [0, 1]", "queue_fill: [0]", "rules.yaml:5: twins[0].bounds.queue_fill: expected [low, high]"),
    ("queue_fill: [0, 1]", "queue_fill: [0, .inf]", "rules.yaml:5: twins[0].bounds.queue_fill: expected a finite"),
])
def test_a_bad_direction_or_bounds_names_file_line_and_key(old: str, new: str, where: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(DIRECTED.replace(old, new), path="rules.yaml", env={})
    assert str(err.value).startswith(where), str(err.value)
