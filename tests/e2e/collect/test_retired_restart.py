"""A retired discovered twin survives a restart within ``retired.keep_for``: the real service, a real
Prometheus and both real stores (a SQLite file and PostgreSQL).

A pod restart during an incident must not give every returning series a fresh twin: the store keeps a retired
twin's learnt models until the twin is no longer kept, the service hands the twins retired within ``keep_for``
(the newest ``keep_max``) to the scheduler at start, and purges the saved models of the others.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers.prom import PromEnv

from sidecar.app import REPLICA_ENV, Service, start_service
from sidecar.collect.naming import naming_key
from sidecar.collect.scheduler import Scheduler
from sidecar.collect.targets import Target
from sidecar.config import SidecarConfig, load_config, parse_config
from sidecar.engine.core import Engine
from sidecar.engine.modelstate import TwinModelState, decode, encode
from sidecar.engine.settings import EngineSettings
from sidecar.prometheus import PrometheusClient
from sidecar.status import ServiceStatus
from sidecar.store import RestoredTwin, Store, open_store

METRIC = "cpu_usage"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which store the service uses: the rules' SQLite file, or PostgreSQL through ``DATABASE_URL``."""
    monkeypatch.delenv(REPLICA_ENV, raising=False)
    if request.param == "postgres":
        request.getfixturevalue("pg_url")          # sets DATABASE_URL to a schema of its own
    else:
        monkeypatch.delenv("DATABASE_URL", raising=False)
    return str(request.param)


def rules(tmp_path: Path, prom_url: str, tag: str, *, keep_for: str, keep_max: int,
          state_every: str = "10m", db: Path | None = None) -> SidecarConfig:
    """One discovery rule: a twin ``k@<pod>`` per ``<tag>_up`` series, its cpu from ``<tag>_load``."""
    p = tmp_path / f"rules-{keep_for}-{keep_max}-{state_every}.yaml"
    p.write_text(yaml.safe_dump({
        "prometheus": {"url": prom_url, "timeout": "2s"}, "interval": "1s", "backfill": "0",
        "server": {"listen": "127.0.0.1:0"},
        "storage": {"path": str(db or tmp_path / "twins.db"), "model_state_interval": state_every},
        "retired": {"keep_for": keep_for, "keep_max": keep_max},
        "twins": [{"name": "k", "discover": f"{tag}_up", "name_labels": ["pod"],
                   "metrics": {METRIC: f'{tag}_load{{pod="$pod"}}'}}]}))
    return load_config(p)


def store_of(tmp_path: Path) -> Store:
    """The service's store, opened beside it (``DATABASE_URL`` wins over the path, as for the service)."""
    return open_store(path=str(tmp_path / "twins.db"))


async def until(check: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = 40.0) -> None:
    end = time.monotonic() + timeout
    while True:
        got = check()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def show(prom_env: PromEnv, tag: str, pod: str, *, load: bool = True) -> None:
    prom_env.target.set(f"{tag}_up", 1.0, pod=pod)
    if load:
        prom_env.target.set(f"{tag}_load", 40.0 + len(pod), pod=pod)


def hide(prom_env: PromEnv, tag: str, pod: str) -> None:
    prom_env.target.remove(f"{tag}_up", pod=pod)
    prom_env.target.remove(f"{tag}_load", pod=pod)


def times_of(svc: Service, name: str) -> np.ndarray:
    try:
        return np.asarray(svc.engine.history(name).get(METRIC, (np.zeros(0), np.zeros(0)))[0])
    except Exception:       # not a twin (yet): no history
        return np.zeros(0)


def live(svc: Service) -> set[str]:
    return {t.source_system for t in svc.engine.twins()}


async def retire(svc: Service, prom_env: PromEnv, tag: str, pod: str) -> None:
    hide(prom_env, tag, pod)
    await until(lambda: f"k@{pod}" in svc.scheduler.retired.parked, f"k@{pod} retired")


def assert_same_models(got: TwinModelState, want: TwinModelState) -> None:
    assert got.twin_id == want.twin_id and got.metrics == want.metrics
    np.testing.assert_array_equal(got.learnt_until, want.learnt_until)
    for part in ("forecast", "anomaly"):
        a, b = getattr(got, part), getattr(want, part)
        assert set(a) == set(b), part
        for k in b:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{part}.{k}")


async def set_expected(svc: Service, name: str, value: float) -> None:
    async with svc.scheduler.lock:
        await svc.facade.set_expected_state(name, {METRIC: value})


# --------------------------------------------------------------------------- the real service


@pytest.mark.integration
async def test_a_twin_retired_before_a_restart_returns_as_it_was(tmp_path: Path, prom_env: PromEnv,
                                                                 backend: str) -> None:
    """Same id, expected state, snapshots, samples and exactly the learnt model rows the in-memory park held;
    then its forecasts go on from them (one model update per new sample), not from scratch."""
    tag, name = f"rvr_back_{backend}", "k@p"
    cfg = rules(tmp_path, prom_env.url, tag, keep_for="1h", keep_max=10)
    show(prom_env, tag, "p")
    prom_env.prom.wait_for_series(f'{tag}_load{{pod="p"}}')
    first = await start_service(cfg)
    try:
        await until(lambda: times_of(first, name).size >= 4, "samples")
        await set_expected(first, name, 7.0)
        await retire(first, prom_env, tag, "p")
        async with first.scheduler.lock:
            parked = first.scheduler.retired.parked[name]
        assert parked.models is not None and parked.definition["expected_state"] == {METRIC: 7.0}
        tid, before = parked.twin_id, parked.models
        snapshot_ids = [e.snapshot_id for e in parked.snapshots]
        samples = parked.samples[METRIC]
    finally:
        await first.shutdown()
    store = store_of(tmp_path)
    try:
        saved = await store.load_model_states()
        assert tid in saved                              # retiring kept the row; the shutdown saved the park's
        assert_same_models(decode(saved[tid]), before)
        (stored,) = [t for t in await store.load_twins(include_retired=True) if t.twin_id == tid]
        assert stored.retired_at is not None

        show(prom_env, tag, "p", load=False)             # the series returns, its cpu not yet: nothing new learnt
        prom_env.prom.wait_for_series(f'{tag}_up{{pod="p"}}')
        second = await start_service(cfg)
        try:
            kept = second.scheduler.retired.parked.get(name)    # handed over at start, before the first round
            assert kept is not None and kept.models is not None and kept.twin_id == tid
            assert_same_models(kept.models, before)
            await until(lambda: name in live(second), "the twin's return")
            async with second.scheduler.lock:
                twin = second.engine.get(name)
                assert twin.twin_id == tid and twin.expected_state == {METRIC: 7.0}
                ids = [e.snapshot_id for e in twin.state_history]
                assert ids[:len(snapshot_ids)] == snapshot_ids
                assert "its series returned after retirement" in twin.state_history[-1].change_reason
                t_hist, y_hist = second.engine.history(name)[METRIC]
                np.testing.assert_array_equal(t_hist, samples[0])
                np.testing.assert_array_equal(y_hist, samples[1])
                assert_same_models(second.engine.model_states([tid])[tid], before)
            assert name not in second.scheduler.retired.parked
            await until(lambda: _live_in_store(store, tid), "un-retired in the store")

            show(prom_env, tag, "p")                      # new samples: the models go on from where they were
            await until(lambda: times_of(second, name).size >= samples[0].size + 2, "new samples")
            async with second.scheduler.lock:
                now = second.engine.model_states([tid])[tid]
                new = int((second.engine.history(name)[METRIC][0] > before.learnt_until[0]).sum())
            n_before = int(before.forecast["core.n"][0])
            assert n_before >= 4 and new >= 2
            assert int(now.forecast["core.n"][0]) == n_before + new
        finally:
            await second.shutdown()
    finally:
        hide(prom_env, tag, "p")
        await store.close()


async def _live_in_store(store: Store, twin_id: str) -> bool:
    return twin_id in {t.twin_id for t in await store.load_twins()}


@pytest.mark.integration
async def test_a_restart_after_keep_for_purges_the_models_and_the_series_gets_a_fresh_twin(
        tmp_path: Path, prom_env: PromEnv, backend: str) -> None:
    tag, name = f"rvr_late_{backend}", "k@p"
    show(prom_env, tag, "p")
    prom_env.prom.wait_for_series(f'{tag}_load{{pod="p"}}')
    first = await start_service(rules(tmp_path, prom_env.url, tag, keep_for="1h", keep_max=10))
    try:
        await until(lambda: times_of(first, name).size >= 3, "samples")
        await set_expected(first, name, 7.0)
        await retire(first, prom_env, tag, "p")
        tid = first.scheduler.retired.parked[name].twin_id
        old_snapshots = {e.snapshot_id for e in first.scheduler.retired.parked[name].snapshots}
    finally:
        await first.shutdown()
    store = store_of(tmp_path)
    try:
        assert tid in await store.load_model_states()
        (stored,) = [t for t in await store.load_twins(include_retired=True) if t.twin_id == tid]
        assert stored.retired_at is not None
        cfg = rules(tmp_path, prom_env.url, tag, keep_for="1s", keep_max=10)
        await asyncio.sleep(max(0.0, stored.retired_at + 1.5 - time.time()))      # retired longer than keep_for
        second = await start_service(cfg)
        try:
            assert second.scheduler.retired.parked == {}
            assert tid not in await store.load_model_states()           # purged at start
            assert {t.twin_id for t in await store.load_twins(include_retired=True)} == {tid}   # history stays
            show(prom_env, tag, "p")
            await until(lambda: times_of(second, name).size >= 2, "the fresh twin's samples")
            async with second.scheduler.lock:
                twin = second.engine.get(name)
                assert twin.twin_id == tid and twin.expected_state is None
                assert not old_snapshots & {e.snapshot_id for e in twin.state_history}
                t_hist = second.engine.history(name)[METRIC][0]
                n = int(second.engine.model_states([tid])[tid].forecast["core.n"][0])
            assert t_hist.min() > stored.retired_at and n == t_hist.size     # learnt from its own samples only
        finally:
            await second.shutdown()
    finally:
        hide(prom_env, tag, "p")
        await store.close()


@pytest.mark.integration
async def test_keep_max_holds_across_a_restart(tmp_path: Path, prom_env: PromEnv, backend: str) -> None:
    """Two retired and kept; restarted with keep_max 1: the one retired last comes back, the other starts afresh
    and its saved models are purged."""
    tag = f"rvr_max_{backend}"
    for pod in ("a", "b"):
        show(prom_env, tag, pod)
    prom_env.prom.wait_for_series(f"{tag}_load", count=2)
    first = await start_service(rules(tmp_path, prom_env.url, tag, keep_for="1h", keep_max=2))
    try:
        await until(lambda: min(times_of(first, f"k@{p}").size for p in "ab") >= 3, "samples")
        for pod in ("a", "b"):
            await set_expected(first, f"k@{pod}", 7.0)
        await retire(first, prom_env, tag, "a")
        await retire(first, prom_env, tag, "b")          # retired after a
        ids = {pod: first.scheduler.retired.parked[f"k@{pod}"].twin_id for pod in "ab"}
        assert list(first.scheduler.retired.parked) == ["k@a", "k@b"]
    finally:
        await first.shutdown()
    store = store_of(tmp_path)
    try:
        assert set(ids.values()) <= set(await store.load_model_states())
        for pod in ("a", "b"):
            show(prom_env, tag, pod)
        prom_env.prom.wait_for_series(f"{tag}_load", count=2)
        second = await start_service(rules(tmp_path, prom_env.url, tag, keep_for="1h", keep_max=1))
        try:
            assert list(second.scheduler.retired.parked) == ["k@b"]
            saved = await store.load_model_states()
            assert ids["b"] in saved and ids["a"] not in saved
            await until(lambda: {"k@a", "k@b"} <= live(second), "both twins")
            async with second.scheduler.lock:
                assert second.engine.get("k@b").expected_state == {METRIC: 7.0}
                assert second.engine.get("k@a").expected_state is None
                assert {second.engine.get(f"k@{p}").twin_id for p in "ab"} == set(ids.values())
        finally:
            await second.shutdown()
    finally:
        for pod in ("a", "b"):
            hide(prom_env, tag, pod)
        await store.close()


@pytest.mark.integration
async def test_the_models_of_a_twin_kept_no_longer_are_deleted_while_running(tmp_path: Path, prom_env: PromEnv,
                                                                               backend: str) -> None:
    """Retiring keeps the saved row; the twin's keep_for running out deletes it at the next save."""
    tag, name = f"rvr_expire_{backend}", "k@p"
    show(prom_env, tag, "p")
    prom_env.prom.wait_for_series(f'{tag}_load{{pod="p"}}')
    svc = await start_service(rules(tmp_path, prom_env.url, tag, keep_for="3s", keep_max=10, state_every="1s"))
    store = store_of(tmp_path)
    try:
        await until(lambda: name in live(svc), "the twin")
        tid = svc.engine.get(name).twin_id

        async def saved() -> bool:
            return tid in await store.load_model_states()

        await until(saved, "its models saved")
        await retire(svc, prom_env, tag, "p")
        assert await saved()                             # retired, still kept: its models stay
        await until(lambda: name not in svc.scheduler.retired.parked, "keep_for to run out")
        await until(lambda: _not(saved()), "its models deleted")
    finally:
        await svc.shutdown()
        hide(prom_env, tag, "p")
        await store.close()
    assert tid not in await _reopened_states(tmp_path)     # the shutdown did not write them back


@pytest.mark.integration
async def test_a_store_down_at_start_hands_the_retired_twins_over_once_it_returns(
        tmp_path: Path, prom_env: PromEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """As before, the service starts without the stored twins; when the store returns the retired twin still
    within keep_for is kept after all, and its series gets it back."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv(REPLICA_ENV, raising=False)
    tag, name = "rvr_store_down", "k@p"
    dbdir = tmp_path / "db"
    dbdir.mkdir()
    cfg = rules(tmp_path, prom_env.url, tag, keep_for="1h", keep_max=10, db=dbdir / "twins.db")
    show(prom_env, tag, "p")
    prom_env.prom.wait_for_series(f'{tag}_load{{pod="p"}}')
    first = await start_service(cfg)
    try:
        await until(lambda: times_of(first, name).size >= 3, "samples")
        await set_expected(first, name, 7.0)
        await retire(first, prom_env, tag, "p")
        tid = first.scheduler.retired.parked[name].twin_id
    finally:
        await first.shutdown()
    away = tmp_path / "db.away"
    dbdir.rename(away)                                   # the database is unreachable at start:
    dbdir.write_text("not a directory")                  # a file where its directory should be
    second = await start_service(cfg)
    try:
        await until(lambda: second.status.first_round_done, "a round")
        assert second.sink is not None and second.sink.pending and second.scheduler.retired.parked == {}
        dbdir.unlink()
        away.rename(dbdir)                               # the database returns
        await until(lambda: name in second.scheduler.retired.parked, "the retired twin kept")
        kept = second.scheduler.retired.parked[name]
        assert kept.twin_id == tid and kept.models is not None
        show(prom_env, tag, "p")
        await until(lambda: name in live(second), "the twin's return")
        async with second.scheduler.lock:
            twin = second.engine.get(name)
            assert twin.twin_id == tid and twin.expected_state == {METRIC: 7.0}
    finally:
        await second.shutdown()
        hide(prom_env, tag, "p")


async def _not(check: Awaitable[bool]) -> bool:
    return not await check


async def _reopened_states(tmp_path: Path) -> dict[str, bytes]:
    store = store_of(tmp_path)
    try:
        return await store.load_model_states()
    finally:
        await store.close()


# --------------------------------------------------------------------------- the scheduler's side, alone

FAMILY = "  - name: fam\n    discover: 'up'\n    name_labels: [pod]\n    metrics: {c: 'up{pod=\"$pod\"}'}\n"


@pytest.fixture
async def unused_client() -> AsyncIterator[PrometheusClient]:
    """A client handed to the scheduler and never used (nothing listens there)."""
    async with PrometheusClient(parse_config(f"twins:\n{FAMILY}", env={}).prometheus) as c:
        yield c


def scheduler(client: PrometheusClient, retired: str = "{keep_for: 1h, keep_max: 10}") -> Scheduler:
    cfg = parse_config(f"retired: {retired}\nbackfill: 0\ntwins:\n{FAMILY}", env={})
    return Scheduler(cfg, Engine(EngineSettings(horizons_s=cfg.horizons_s)), client, ServiceStatus(config_loaded=True))


def stored(name: str, retired_at: float | None, *, labels: dict[str, str] | None = None,
           learnt: bool = True) -> tuple[RestoredTwin, bytes | None]:
    """A twin as the store hands it back (built by a real engine), and its saved models."""
    eng = Engine()
    pod = name.split("@", 1)[1]
    twin = eng.create_twin(name, at=100.0, labels=labels if labels is not None else {"pod": pod, "job": "x"},
                           expected={"c": 1.0})
    blob = None
    if learnt:
        slot = eng.series_for(name, ["c"])
        for i in range(5):
            eng.ingest(slot, np.array([2.0 + i]), at=101.0 + i)
        blob = encode(eng.model_states([twin.twin_id])[twin.twin_id])
    return RestoredTwin(definition=twin.definition(), snapshots=list(twin.state_history),
                        samples={"c": (np.array([104.0]), np.array([6.0]))}, corrections=[],
                        retired_at=retired_at), blob


async def test_park_stored_keeps_only_what_a_series_could_still_claim(unused_client: PrometheusClient) -> None:
    sched = scheduler(unused_client, "{keep_for: 1h, keep_max: 3}")
    now = 10_000.0
    items = [stored("fam@old", now - 3601), stored("fam@a", now - 30), stored("fam@b", now - 20),
             stored("fam@c", now - 10), stored("fam@d", now - 40), stored("fam@live", None),
             stored("gone@x", now - 5),                                       # its rule is no more
             stored("fam@y", now - 5, labels={"instance": "y"}),             # named from other naming labels
             stored("fam@e", now - 1, learnt=False)]
    twins = [rt for rt, _ in items]
    states = {rt.twin_id: blob for rt, blob in items if blob is not None}
    kept = sched.retired.park_stored(twins, states, now=now)
    # the keep_max (3) retired last, oldest first; a twin without saved models is kept without them
    assert list(sched.retired.parked) == ["fam@b", "fam@c", "fam@e"]
    assert kept == [sched.retired.parked[n].twin_id for n in ("fam@b", "fam@c", "fam@e")]
    b = sched.retired.parked["fam@b"]
    assert b.at == now - 20 and b.key == (("pod", "b"),) and b.rule == "fam" and b.saved
    assert b.models is not None and b.models.twin_id == b.twin_id and sched.retired.parked["fam@e"].models is None
    assert b.definition["expected_state"] == {"c": 1.0} and b.samples["c"][1].tolist() == [6.0]
    assert sched.retired.unsaved_models() == []           # read from the store: nothing to save again
    assert sched.retired.take_forgotten() == []                  # never kept here: the start-up purge deals with those
    # a name kept already (retired by this process since) or running is left alone
    c = sched.retired.parked["fam@c"]
    sched.engine.create_twin("fam@z", at=now, labels={"pod": "z"})
    assert sched.retired.park_stored([stored("fam@c", now - 2)[0], stored("fam@z", now - 2)[0]], {}, now=now) == []
    assert sched.retired.parked["fam@c"] is c and "fam@z" not in sched.retired.parked


async def test_models_of_a_stored_twin_that_do_not_decode_are_left_out(unused_client: PrometheusClient) -> None:
    sched = scheduler(unused_client)
    rt, blob = stored("fam@a", 100.0)
    other, other_blob = stored("fam@b", 100.0)
    assert blob is not None and other_blob is not None
    sched.retired.park_stored([rt, other], {rt.twin_id: b"not a model state", other.twin_id: blob}, now=200.0)
    assert sched.retired.parked["fam@a"].models is None          # unreadable: it relearns
    assert sched.retired.parked["fam@b"].models is None          # another twin's: refused


async def test_twins_no_longer_kept_are_listed_once_for_their_models_to_go(unused_client: PrometheusClient) -> None:
    sched = scheduler(unused_client, "{keep_for: 10s, keep_max: 2}")
    items = [stored(f"fam@{p}", 100.0 + i) for i, p in enumerate("abc")]
    ids = {rt.name: rt.twin_id for rt, _ in items}
    sched.retired.park_stored([rt for rt, _ in items], {}, now=105.0)       # three for two places: a is not kept
    assert list(sched.retired.parked) == ["fam@b", "fam@c"]
    assert sched.retired.take_forgotten() == []                  # a was never kept here: the start-up purge takes it
    sched.retired.expire(111.5)                          # b retired 11.5 s ago
    assert sched.retired.take_forgotten() == [ids["fam@b"]]
    sched.retired.forget_later([ids["fam@b"]])                   # the store was down: again at the next save
    sched.retired.expire(200.0)
    assert sched.retired.take_forgotten() == [ids["fam@b"], ids["fam@c"]]


async def test_a_twin_kept_again_with_models_keeps_its_row(unused_client: PrometheusClient) -> None:
    """Gone from the park, then kept again before the rows were deleted (read from the store when it came back):
    its row holds the models it is kept with, and stays; one kept without models has nothing to keep."""
    sched = scheduler(unused_client, "{keep_for: 10s, keep_max: 5}")
    (a, blob), (b, _) = stored("fam@a", 100.0), stored("fam@b", 100.0, learnt=False)
    assert blob is not None
    sched.retired.park_stored([a, b], {a.twin_id: blob}, now=101.0)
    sched.retired.expire(200.0)
    sched.retired.park_stored([dataclasses.replace(t, retired_at=195.0) for t in (a, b)], {a.twin_id: blob}, now=200.0)
    assert set(sched.retired.parked) == {"fam@a", "fam@b"}
    assert sched.retired.take_forgotten() == [b.twin_id]


@pytest.mark.parametrize("retired", ["{keep_for: 1h, keep_max: 5}", "{keep_for: 0s}"])
async def test_retiring_saves_the_kept_models_once_or_forgets_them(unused_client: PrometheusClient,
                                                                   retired: str) -> None:
    """A kept twin's models are offered for saving until saved; a twin not kept is listed to be forgotten."""
    sched = scheduler(unused_client, retired)
    rule, at = sched.config.twins[0], 1_000.0
    labels = {"pod": "p1", "job": "x"}
    target = Target("fam@p1", rule, {"c": 'up{pod="p1"}'}, labels, key=naming_key(rule, labels))
    sched.roster.apply({target.name: target}, [], at, False)
    sched.roster.targets = {target.name: target}
    slot = sched.engine.series_for(target.name, ["c"])
    sched.engine.ingest(slot, np.array([3.0]), at=at + 1)
    tid = sched.engine.get(target.name).twin_id
    sched.roster.apply({}, [target.name], at + 2, False)
    if retired.startswith("{keep_for: 0s"):
        assert sched.retired.parked == {} and sched.retired.take_forgotten() == [tid]
        return
    assert sched.retired.take_forgotten() == []
    unsaved = sched.retired.unsaved_models()
    assert [st.twin_id for st in unsaved] == [tid]
    sched.retired.models_saved(unsaved)
    assert sched.retired.unsaved_models() == []
