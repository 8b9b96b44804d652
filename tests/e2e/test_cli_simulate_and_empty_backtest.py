"""The command line against a real Prometheus: a load test's required headroom from `simulate`, and a backtest
whose query matches nothing is told so (not to aggregate a series it never got)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers.prom import PromEnv

from sidecar.cli import main
from sidecar.engine.records import iso


def _rules(tmp_path: Path, url: str) -> Path:
    p = tmp_path / "rules.yaml"
    p.write_text(f"""
prometheus: {{url: "{url}"}}
interval: 15s
backfill: 1h
storage: {{path: "{tmp_path / 'db.sqlite'}"}}
twins:
  - name: ramp
    metrics:
      cpu_usage: 'test_history{{series="ramp"}} / 3'
    limits: {{cpu_usage: 95}}
    replicas: 2
""")
    return p


def test_simulate_load_test_reports_the_headroom_it_judged(tmp_path: Path, prom_env: PromEnv,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    rules = _rules(tmp_path, prom_env.url)
    assert main(["simulate", "--config", str(rules), "--twin", "ramp", "--scenario",
                 '{"type": "load_test", "max_multiplier": 10, "required_multiplier": 3}']) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["scenario"] == {"type": "load_test", "max_multiplier": 10.0, "required_multiplier": 3.0}
    assert res["breaking_point"]["required_multiplier"] == 3.0
    assert res["will_likely_fail"] == (res["failure_probability"] >= 0.5)
    assert any("the chance that it breaks below the required 3.00x current traffic" in x
               for x in res["recommendations"])
    assert main(["simulate", "--config", str(rules), "--twin", "ramp", "--scenario",
                 '{"type": "load_test", "max_multiplier": 10, "required_multiplier": 12}']) == 2
    err = capsys.readouterr().err
    assert "'required_multiplier' (12) must be at most 'max_multiplier' (10)" in err and "Traceback" not in err


def test_backtest_of_a_query_that_matches_nothing_says_so(prom_env: PromEnv,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    start = prom_env.history_start
    end = start + prom_env.step * (prom_env.points - 1)
    assert main(["backtest", "--prometheus", prom_env.url, "--query", "nope_metric",
                 "--start", str(start), "--end", str(end)]) == 2
    err = capsys.readouterr().err
    assert f"--query 'nope_metric' returned no series between {iso(start)} and {iso(end)}" in err
    assert "check its selector" in err
    assert "aggregate" not in err and "exactly one" not in err
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", err)
