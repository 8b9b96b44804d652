"""Bounded: the rules' ``limits:`` cap twins, series and answer bytes; past a limit new twins are refused with a
counter, a log line and an event, and an answer too large is a query error, never the process' memory."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from helpers.prom import PromEnv
from prometheus_client import CollectorRegistry

from sidecar.app import engine_settings
from sidecar.config import HISTORY_MIN_SAMPLES, LimitsConfig, PrometheusConfig, parse_config
from sidecar.engine.core import Engine
from sidecar.engine.settings import EngineSettings
from sidecar.engine.whatif import MIN_SAMPLES
from sidecar.errors import CapacityError, ConfigError
from sidecar.exporter import install_exporter, render
from sidecar.prometheus import DEFAULT_MAX_RESPONSE_BYTES, PrometheusClient, QueryFailed
from sidecar.status import ServiceStatus

T0 = 1_700_000_000.0
RULES = "twins:\n  - name: a\n    metrics: {cpu_usage: up}\n"


def test_limits_have_safe_defaults_and_reach_the_engine_and_the_client() -> None:
    cfg = parse_config(RULES)
    assert cfg.limits == LimitsConfig() and cfg.limits.max_response_bytes == DEFAULT_MAX_RESPONSE_BYTES
    cfg = parse_config(RULES + "limits: {max_twins: 5, max_series: 12, max_response_bytes: 4096}\n"
                              "storage: {path: ':memory:', forecast_interval: 1m}\n")
    assert (cfg.limits.max_twins, cfg.limits.max_series, cfg.limits.max_response_bytes) == (5, 12, 4096)
    settings = engine_settings(cfg)
    assert (settings.max_twins, settings.max_series, settings.forecast_store_every_s) == (5, 12, 60.0)


def test_history_kept_per_series_is_the_limit_at_the_rules_interval_both_ends() -> None:
    assert engine_settings(parse_config(RULES)).history_size == 241 == EngineSettings().history_size  # 1 h at 15 s
    cfg = parse_config("interval: 30s\nlimits: {history: 2h}\n" + RULES)
    assert cfg.limits.history_s == 7200.0 and engine_settings(cfg).history_size == 241
    assert engine_settings(cfg, history_s=4 * 3600.0).history_size == 481      # the CLI: the backfill window
    # never fewer samples than the capacity fit needs: the default 1 h at 5 minutes would be 13
    assert engine_settings(parse_config("interval: 5m\n" + RULES)).history_size == HISTORY_MIN_SAMPLES == MIN_SAMPLES
    eng = Engine(EngineSettings(history_size=5))
    slot = eng.series_for(eng.create_twin("a", at=T0).twin_id, ["cpu_usage"])
    for k in range(10):
        eng.ingest(slot, np.array([10.0 + k + 0.1]), at=T0 + 15.0 * k)
    times, values = eng.history("a")["cpu_usage"]
    assert times.tolist() == [T0 + 15.0 * k for k in range(5, 10)]              # the newest 5, oldest first
    assert values.dtype == np.float64 and values == pytest.approx([15.1, 16.1, 17.1, 18.1, 19.1], rel=1e-7)


@pytest.mark.parametrize(("text", "key", "why"), [
    ("limits: {max_twins: 0}\n", "limits.max_twins", "expected an integer >= 1"),
    ("limits: {max_series: -3}\n", "limits.max_series", "expected an integer >= 1"),
    ("limits: {max_response_bytes: 10}\n", "limits.max_response_bytes", "expected an integer >= 1024"),
    ("limits: {max_twin: 5}\n", "limits.max_twin", "unknown key"),
    ("limits: {history: 30d}\n", "limits.history", "at most"),
    ("limits: {history: 1m}\n", "limits.history", "keeps 5 samples at interval 15s; the capacity fit"),
    ("storage: {path: ':memory:', forecast_interval: 2d}\n", "storage.forecast_interval", "at most"),
])
def test_a_bad_limit_names_file_line_and_key(text: str, key: str, why: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(RULES + text, path="rules.yaml")
    assert exc.value.key == key and exc.value.line == 4 and why in str(exc.value)


def _exported(engine: Engine) -> str:
    registry = CollectorRegistry()
    install_exporter(registry, view=engine.view, status=ServiceStatus())
    return render(registry).decode()


def test_new_twins_past_max_twins_are_refused_counted_and_told_once(caplog: pytest.LogCaptureFixture) -> None:
    eng = Engine(EngineSettings(max_twins=2))
    eng.create_twin("a", at=T0)
    eng.create_twin("b", at=T0)
    with caplog.at_level(logging.WARNING, logger="sidecar.engine.core"):
        for name in ("c", "d", "c"):
            with pytest.raises(CapacityError, match=r"twin '[cd]' refused: limits.max_twins \(2\) reached"):
                eng.create_twin(name, at=T0 + 15)
    assert eng.view().twin_names == ("a", "b")
    assert eng.view().twins_refused == {"max_twins": 3}
    assert [r.getMessage() for r in caplog.records] == ["new twins refused"]      # once per episode
    refused = eng.events(type="twin_refused")
    assert len(refused) == 1 and refused[0].severity == "warning" and "limits.max_twins (2)" in refused[0].message
    assert 'twin_twins_refused_total{limit="max_twins"} 3.0' in _exported(eng)
    assert 'twin_twins_refused_total{limit="max_series"} 0.0' in _exported(eng)


def test_room_made_by_a_retirement_takes_a_new_twin_and_a_new_episode_is_told_again() -> None:
    eng = Engine(EngineSettings(max_twins=1))
    eng.create_twin("a", at=T0)
    with pytest.raises(CapacityError):
        eng.create_twin("b", at=T0)
    eng.retire_twin("a", at=T0 + 15)
    eng.create_twin("b", at=T0 + 30)
    with pytest.raises(CapacityError):
        eng.create_twin("c", at=T0 + 45)
    assert len(eng.events(type="twin_refused")) == 2 and eng.view().twins_refused == {"max_twins": 2}


def test_new_twins_are_refused_once_max_series_exist() -> None:
    eng = Engine(EngineSettings(max_series=4))
    eng.create_twin("a", at=T0)
    eng.series_for("a", ["cpu_usage", "memory_usage", "request_latency_ms", "error_rate"])
    with pytest.raises(CapacityError, match=r"limits.max_series \(4\) reached \(4 series\)") as exc:
        eng.create_twin("b", at=T0)
    assert exc.value.limit == "max_series" and eng.view().twins_refused == {"max_series": 1}


def test_forecast_rows_come_at_the_set_cadence_spread_over_the_series() -> None:
    every = 60.0
    eng = Engine(EngineSettings(forecast_store_every_s=every))
    metrics = ["cpu_usage", "memory_usage", "request_latency_ms", "error_rate"]
    slots = []
    for i in range(25):
        eng.create_twin(f"t{i}", at=T0)
        slots.append(eng.series_for(f"t{i}", metrics))
    idx = np.concatenate(slots)
    rng = np.random.default_rng(3)
    per_round: list[int] = []
    rows: dict[int, int] = {}
    for k in range(120):                                # 30 minutes at 15 s
        eng.ingest(idx, 50 + rng.normal(0, 1, idx.size), at=T0 + 15 * k)
        preds = eng.drain().predictions
        per_round.append(sum(p.twin_id.size for p in preds) // 4)       # series with a row (4 horizons each)
        for p in preds:
            for made_at in set(p.made_at.tolist()):
                rows[int(made_at)] = rows.get(int(made_at), 0) + 1
    steady = per_round[40:]
    # every series once per minute (4 rounds): 100 series a minute, about 25 a round and never all at once
    assert sum(steady) == pytest.approx(100 * len(steady) / 4, rel=0.05)
    assert max(steady) <= 40


async def test_an_answer_past_max_response_bytes_is_a_query_error(prom_env: PromEnv) -> None:
    cfg = PrometheusConfig(url=prom_env.url, timeout_s=10.0)
    end = prom_env.history_start + prom_env.step * (prom_env.points - 1)
    async with PrometheusClient(cfg, max_response_bytes=2048) as small, PrometheusClient(cfg) as default:
        full = await default.query_range("test_history", prom_env.history_start, end, prom_env.step)
        assert len(full) == 2 and np.isfinite(full.values).sum() > 300          # a real answer of several KB
        with pytest.raises(QueryFailed, match=r"answer larger than limits.max_response_bytes \(2048 bytes\)") as exc:
            await small.query_range("test_history", prom_env.history_start, end, prom_env.step)
        assert exc.value.error_type == "too_large"
        vec = await small.query('test_gauge{k="a"}', at=time.time())          # a small answer still passes
        assert vec.values.tolist() == [1.5]
