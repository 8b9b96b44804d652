"""The command line: each subcommand end to end, against a real Prometheus where it needs one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.prom import PromEnv

from sidecar.cli import main


def _rules(tmp_path: Path, url: str, query: str) -> Path:
    p = tmp_path / "rules.yaml"
    p.write_text(f"""
prometheus: {{url: "{url}"}}
interval: 15s
backfill: 1h
storage: {{path: "{tmp_path / 'db.sqlite'}"}}
twins:
  - name: ramp
    metrics:
      cpu_usage: '{query}'
    limits: {{cpu_usage: 100}}
    replicas: 2
""")
    return p


def test_check_config_ok_and_error_names_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _rules(tmp_path, "http://127.0.0.1:9", "up")
    assert main(["check-config", str(good)]) == 0
    assert "OK: 1 twin rule(s)" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("twins:\n  - name: x\n    metrics: {cpu_usage: up}\n    colour: red\n")
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:4" in err and "colour" in err


def test_rules_command_writes_rule_groups(tmp_path: Path) -> None:
    out = tmp_path / "alerts.yaml"
    assert main(["rules", "--config", str(_rules(tmp_path, "http://127.0.0.1:9", "up")),
                 "--output", str(out)]) == 0
    import yaml

    doc = yaml.safe_load(out.read_text())
    alerts = {r["alert"] for g in doc["groups"] for r in g["rules"] if "alert" in r}
    assert {"TwinDivergenceCritical", "TwinHealthCritical", "TwinPrometheusUnreachable"} <= alerts


def test_rules_runbook_links_start_with_the_base_url_given(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    config = str(_rules(tmp_path, "http://127.0.0.1:9", "up"))
    base = "https://git.example.com/sre/twin-sidecar/blob/main/README.md"
    assert main(["rules", "--config", config, "--runbook-base-url", base]) == 0
    out, err = capsys.readouterr()
    urls = {r["alert"]: r["annotations"]["runbook_url"] for g in yaml.safe_load(out)["groups"] for r in g["rules"]}
    assert urls and all(u == f"{base}#runbook-{a.lower()}" for a, u in urls.items())
    assert err == ""
    assert main(["rules", "--config", config]) == 0          # without it: relative links, and a note saying so
    out, err = capsys.readouterr()
    assert "runbook_url: README.md#runbook-twinhealthlow" in out
    assert "--runbook-base-url" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("url", ["ftp://docs.example.com/README.md", "README.md", "https://", "",
                                 "https://docs.example.com/README.md#top", "javascript:alert(1)"])
def test_rules_refuse_a_runbook_base_url_that_is_not_http_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str) -> None:
    out = tmp_path / "alerts.yaml"
    rc = main(["rules", "--config", str(_rules(tmp_path, "http://127.0.0.1:9", "up")), "--output", str(out),
               "--runbook-base-url", url])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("twin-sidecar rules: --runbook-base-url") and len(err.strip().splitlines()) == 1, err
    assert not out.exists(), "nothing is written"


def test_backtest_from_csv_and_from_prometheus(tmp_path: Path, prom_env: PromEnv,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "s.csv"
    csv.write_text("timestamp,value\n" + "".join(f"{1_700_000_000 + 60 * i},{i % 7}\n" for i in range(400)))
    assert main(["backtest", "--input", str(csv), "--json", "--horizons", "5m,15m"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["samples"] == 400 and [h["horizon_s"] for h in rep["horizons"]] == [300.0, 900.0]
    assert all(0.0 <= h["coverage"] <= 1.0 and h["scored"] > 300 for h in rep["horizons"])

    start = prom_env.history_start
    end = start + prom_env.step * (prom_env.points - 1)
    assert main(["backtest", "--prometheus", prom_env.url, "--query", 'test_history{series="ramp"}',
                 "--start", str(start), "--end", str(end), "--horizons", "5m"]) == 0
    text = capsys.readouterr().out
    assert "backtest of test_history" in text and "MASE/linear" in text
    # a query returning several series is refused with what to do about it
    assert main(["backtest", "--prometheus", prom_env.url, "--query", "test_history",
                 "--start", str(start), "--end", str(end)]) == 2
    assert "exactly one series" in capsys.readouterr().err


def test_simulate_from_prometheus_history(tmp_path: Path, prom_env: PromEnv,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    rules = _rules(tmp_path, prom_env.url, 'test_history{series="ramp"}')
    assert main(["simulate", "--config", str(rules), "--twin", "ramp", "--scenario",
                 '{"type": "traffic_spike", "traffic_multiplier": 3, "duration_minutes": 10}']) == 0
    res = json.loads(capsys.readouterr().out)
    assert 0.0 <= res["failure_probability"] <= 1.0 and isinstance(res["will_likely_fail"], bool)
    assert res["source"] == "simulation" and res["recommendations"]
    assert main(["simulate", "--config", str(rules), "--twin", "nope", "--scenario", '{"type": "load_test"}']) == 2
    assert "twins: ramp" in capsys.readouterr().err
    assert main(["simulate", "--config", str(rules), "--twin", "ramp", "--scenario", "{nope"]) == 2
    assert "--scenario is not JSON" in capsys.readouterr().err


def strict_json(text: str) -> object:
    def refuse(name: str) -> object:
        raise AssertionError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def test_backtest_json_is_standard_json_when_nothing_was_scored(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "short.csv"
    csv.write_text("timestamp,value\n1700000000,1\n1700000060,2\n1700000120,3\n")
    assert main(["backtest", "--input", str(csv), "--json", "--horizons", "5m,1h"]) == 0
    rep = strict_json(capsys.readouterr().out)
    assert isinstance(rep, dict) and rep["samples"] == 3
    for h in rep["horizons"]:
        assert h["scored"] == 0 and h["mae"] is None and h["coverage"] is None and h["mase_last"] is None


@pytest.mark.parametrize(("scenario", "needle"), [
    ('{"type":"failure_injection","replicas":Infinity,"replicas_lost":1}', "'replicas' must be a whole number"),
    ('{"type":"failure_injection","replicas":NaN,"replicas_lost":1}', "'replicas' must be a whole number"),
    ('{"type":"failure_injection","replicas_lost":-Infinity}', "'replicas_lost' must be a whole number"),
    ('{"type":"load_test","description":' + "[" * 5000 + "]" * 5000 + "}", "nested too deeply"),
    ('{"type":"traffic_spike","traffic_multiplier":' + "9" * 400 + "}", "400 digits"),
])
def test_simulate_refuses_bad_numbers_with_exit_2_not_a_traceback(
        tmp_path: Path, prom_env: PromEnv, capsys: pytest.CaptureFixture[str], scenario: str, needle: str) -> None:
    rules = _rules(tmp_path, prom_env.url, 'test_history{series="ramp"}')
    assert main(["simulate", "--config", str(rules), "--twin", "ramp", "--scenario", scenario]) == 2
    err = capsys.readouterr().err
    assert err.startswith("twin-sidecar simulate: ") and needle in err and "Traceback" not in err


def test_backtest_uses_the_step_asked_for_beyond_prometheus_point_limit(prom_env: PromEnv,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """12,000 steps is more than one range query may return: the client fetches it in parts, and the backtest
    judges the data at the step asked for, not at a coarser one."""
    start = prom_env.history_start
    end = start + 3599.7
    assert main(["backtest", "--prometheus", prom_env.url, "--query", 'test_history{series="ramp"}',
                 "--start", str(start), "--end", str(end), "--step", "300ms", "--horizons", "5m", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["samples"] == 12_000


def test_backtest_takes_times_relative_to_now(prom_env: PromEnv, capsys: pytest.CaptureFixture[str]) -> None:
    """``--start now-3h --end now`` reads the last three hours; a horizon longer than the data is named once
    as not scored, with no row of unknowns."""
    assert main(["backtest", "--prometheus", prom_env.url, "--query", 'test_history{series="ramp"}',
                 "--start", "now-3h", "--end", "now", "--horizons", "5m,2h"]) == 0
    out, err = capsys.readouterr()
    assert "backtest of test_history" in out and err == ""
    assert out.count("not scored: too little data for 2h") == 1
    assert "nan" not in out.lower()
    (row,) = [line for line in out.splitlines() if line.split()[:1] == ["5m"] and "%" not in line]
    assert int(row.split()[1]) > 100
    assert main(["backtest", "--prometheus", prom_env.url, "--query", 'test_history{series="ramp"}',
                 "--start", str(prom_env.history_start), "--end", "now", "--horizons", "5m"]) == 0


BAD_BACKTEST = [
    (["--start", "now-10x", "--end", "now"], "--start"),
    (["--start", "yesterday", "--end", "now"], "--start"),
    (["--start", "nan", "--end", "now"], "--start"),
    (["--start", "now-1h", "--end", "2026-13-45T00:00:00Z"], "--end"),
    (["--start", "now", "--end", "now-10m"], "--end"),
    (["--start", "now-1h", "--end", "now", "--step", "0s"], "--step"),
    (["--start", "now-1h", "--end", "now", "--step", "fast"], "--step"),
    (["--start", "now-1h", "--end", "now", "--horizons", "5m,-1m"], "--horizons"),
    (["--start", "now-1h", "--end", "now", "--model", "magic"], "--model"),
    (["--start", "now-1h", "--end", "now", "--query", "sum("], "--query"),
    (["--start", "now-1h"], "--end"),
    (["--start", "{t0}", "--end", "{t1}", "--step", "10s"], "--start/--end"),
]


@pytest.mark.parametrize(("args", "option"), BAD_BACKTEST)
def test_backtest_bad_input_is_one_line_naming_the_option_and_exit_2(
        prom_env: PromEnv, capsys: pytest.CaptureFixture[str], args: list[str], option: str) -> None:
    t0 = prom_env.history_start + prom_env.step * 10      # a 10 s window inside the fixture's data, whenever it runs
    args = [a.format(t0=t0, t1=t0 + 10) for a in args]
    rc = main(["backtest", "--prometheus", prom_env.url, "--query", 'test_history{series="ramp"}', *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("twin-sidecar backtest: ") and option in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(("args", "option"), [
    (["--prometheus", "notaurl", "--query", "up", "--start", "now-1h", "--end", "now"], "--prometheus"),
    (["--prometheus", "http://127.0.0.1:9", "--query", "up", "--start", "now-1h", "--end", "now"], "--prometheus"),
    (["--input", "/nonexistent/series.csv"], "--input"),
    (["--input", "{csv}", "--start", "now-1h"], "--start"),
    (["--input", "{short}"], "--input"),
])
def test_backtest_bad_source_is_one_line_naming_the_option_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], option: str) -> None:
    csv, short = tmp_path / "s.csv", tmp_path / "short.csv"
    csv.write_text("timestamp,value\n" + "".join(f"{1_700_000_000 + 60 * i},{i}\n" for i in range(10)))
    short.write_text("timestamp,value\n1700000000,1\n1700000060,2\n")
    rc = main(["backtest", *(a.format(csv=csv, short=short) for a in args)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("twin-sidecar backtest: ") and option in err and len(err.strip().splitlines()) == 1, err
