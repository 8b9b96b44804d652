"""A restart keeps what the models learnt: saved to the real store, loaded at start, never learnt twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers.prom import PromEnv

from sidecar.app import _open_history, save_model_states, start_service
from sidecar.config import load_config
from sidecar.engine.core import Engine
from sidecar.engine.modelstate import decode
from sidecar.engine.view import MetricSamples, Outbox
from sidecar.status import ServiceStatus
from sidecar.store import open_store

STEP = 300.0
DAY = 86400.0


def _nightly(t: np.ndarray) -> np.ndarray:
    return 20.0 + 60.0 * (((t % DAY) / 3600.0) < 2) + np.sin(t / 977.0)


def _rules(tmp_path: Path, db: Path, prom_url: str = "http://127.0.0.1:9") -> Path:
    p = tmp_path / "rules.yaml"
    p.write_text(yaml.safe_dump({
        "prometheus": {"url": prom_url}, "interval": "1s", "backfill": "0",
        "server": {"listen": "127.0.0.1:0"},
        "storage": {"path": str(db), "model_state_interval": "1s"},
        "twins": [{"name": "svc", "metrics": {"cpu_usage": 'test_gauge{k="a"}'}}],
    }))
    return p


async def test_a_restarted_engine_forecasts_as_the_one_that_learnt(tmp_path: Path) -> None:
    """Three days taught the models a nightly job; after the restart the forecasts are the same as if the
    process had never stopped, which an hour of stored samples alone could not give."""
    db = tmp_path / "twins.db"
    cfg = load_config(_rules(tmp_path, db))
    first = Engine()
    first.create_twin("svc", at=0.0, system_type="web_service")
    slot = first.series_for("svc", ["cpu_usage"])
    times = np.arange(STEP, 3 * DAY, STEP)
    for t in times:
        first.ingest(slot, _nightly(np.array([t])), at=float(t), quiet=True)
    store = open_store(path=str(db))
    await store.open()
    outbox = first.drain()
    outbox.twins.append(first.get("svc"))
    await store.write(outbox)
    hour = times[-12:]                                  # the last hour of samples, as the writer stores them
    await store.write(Outbox(samples=[MetricSamples(
        np.array([first.get("svc").twin_id] * hour.size, dtype=object),
        np.array(["cpu_usage"] * hour.size, dtype=object), hour, _nightly(hour))]))
    assert await save_model_states(first, store, asyncio.Lock()) == 1
    await store.close()

    second = Engine()
    opened = await _open_history(cfg, second, ServiceStatus())
    await opened.writer.close(1.0)
    assert opened.loaded
    t_next = float(times[-1] + STEP)
    for e in (first, second):
        e.ingest(e.series_for("svc", ["cpu_usage"]), _nightly(np.array([t_next])), at=t_next, quiet=True)
    np.testing.assert_allclose(second.fc_mean[second.series_for("svc", ["cpu_usage"])],
                               first.fc_mean[slot])
    t_hist, _ = second.history("svc")["cpu_usage"]
    np.testing.assert_array_equal(t_hist, np.r_[hour, t_next])


@pytest.mark.integration
async def test_the_service_saves_model_state_on_schedule_and_at_shutdown(tmp_path: Path,
                                                                         prom_env: PromEnv) -> None:
    db = tmp_path / "twins.db"
    cfg = load_config(_rules(tmp_path, db, prom_env.url))
    svc = await start_service(cfg)
    store = open_store(path=str(db))
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + 20
        while not await store.load_model_states():           # the 1 s schedule
            assert loop.time() < end, "no model state saved"
            await asyncio.sleep(0.2)
    finally:
        await svc.shutdown()
    saved = await store.load_model_states()
    tid = svc.engine.get("svc").twin_id
    st = decode(saved[tid])
    assert st.metrics == ("cpu_usage",)
    # the shutdown save holds everything learnt up to the last round
    assert st.learnt_until[0] == svc.engine.series.last_t[svc.engine.series_for("svc", ["cpu_usage"])[0]]
    again = await start_service(cfg)
    try:
        slot = again.engine.series_for("svc", ["cpu_usage"])[0]
        assert again.engine.series.last_t[slot] >= st.learnt_until[0]
        n_saved = int(st.forecast["core.n"][0])
        assert int(again.engine.bank.state_dict()["core.n"][slot]) >= n_saved
    finally:
        await again.shutdown()
        await store.close()


async def test_an_export_that_fails_is_logged_and_costs_only_the_save(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A bug in the export must not stop the schedule or the shutdown (which still flushes the store)."""
    db = tmp_path / "twins.db"
    engine = Engine()
    engine.create_twin("svc", at=0.0)

    def broken(twin_ids: object) -> dict[str, bytes]:
        raise RuntimeError("export bug")

    engine.model_states = broken                   # type: ignore[method-assign,assignment]
    store = open_store(path=str(db))
    await store.open()
    try:
        assert await save_model_states(engine, store, asyncio.Lock()) == 0
        assert await store.load_model_states() == {}
    finally:
        await store.close()
    assert any("could not be exported" in r.getMessage() for r in caplog.records)


async def test_the_save_goes_a_chunk_at_a_time_and_a_passed_deadline_says_what_it_left(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine lock is free between chunks (a round can run), and a shutdown past its deadline logs the
    twins it did not save instead of leaving a thread that keeps the process alive."""
    import time

    import sidecar.app as app

    monkeypatch.setattr(app, "SAVE_CHUNK_TWINS", 2)
    engine = Engine()
    for i in range(5):
        engine.create_twin(f"svc{i}", at=0.0)
        slot = engine.series_for(f"svc{i}", ["cpu_usage"])
        for k in range(3):
            engine.ingest(slot, np.array([10.0 + k]), at=15.0 * (k + 1), quiet=True)
    lock = asyncio.Lock()
    held: list[bool] = []
    real = engine.model_states

    def watched(twin_ids: object) -> object:
        held.append(lock.locked())
        return real(twin_ids)  # type: ignore[arg-type]

    engine.model_states = watched                  # type: ignore[method-assign,assignment]
    store = open_store(path=str(tmp_path / "twins.db"))
    await store.open()
    try:
        assert await save_model_states(engine, store, lock) == 5
        assert held == [True, True, True] and not lock.locked()        # 3 chunks of at most 2, each under the lock
        assert len(await store.load_model_states()) == 5
        assert await save_model_states(engine, store, lock, deadline=time.monotonic() - 1) == 0
    finally:
        await store.close()
    incomplete = [r for r in caplog.records if r.getMessage() == "model state save incomplete: the deadline passed"]
    assert len(incomplete) == 1 and (incomplete[0].saved, incomplete[0].unsaved) == (0, 5)  # type: ignore[attr-defined]
