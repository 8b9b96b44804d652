"""What every store guarantees (issue 4), written once and run against SQLite and PostgreSQL.

Not a test module itself: ``unit/store/test_store_sqlite.py`` and ``e2e/test_store_postgres.py``
subclass ``StoreContract`` and provide the fixtures ``store`` (open, with a
``ServiceStatus`` attached), ``make_store(replica=...)`` (another store on the
same database) and ``raw`` (direct SQL with ``?`` placeholders, and ``tamper``
to change a snapshot row behind the store's back, as bit rot or a hand edit would).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import pytest

from sidecar.engine.records import (
    CorrectionRecord,
    DigitalTwin,
    EventType,
    StateHistoryEntry,
    SystemType,
    TwinEvent,
)
from sidecar.engine.view import MetricSamples, Outbox, PredictionRows
from sidecar.errors import CorruptSnapshotError
from sidecar.store import EventQuery, LoadLimits, RetentionPolicy, Store, schema

T0 = 1_700_000_000.0


class Raw(Protocol):
    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...
    async def execute(self, sql: str, *args: Any) -> None: ...
    async def tamper(self, sql: str, *args: Any) -> None: ...


MakeStore = Callable[..., Awaitable[Store]]


# ------------------------------------------------------------------ builders


def twin(name: str, *, expected: dict[str, float] | None = None, created_at: float = T0) -> DigitalTwin:
    return DigitalTwin(twin_id=f"twin_{name}", source_system=name, system_type=SystemType.API_GATEWAY,
                       created_at=created_at, expected_state=expected, thresholds={"cpu_usage": 20.0},
                       limits={"cpu_usage": 95.0}, labels={"job": name})


def snap(twin_id: str, sid: str, ts: float, *, cpu: float = 50.0, state: dict[str, Any] | None = None,
         reason: str = "manual") -> StateHistoryEntry:
    return StateHistoryEntry.create(
        snapshot_id=sid, twin_id=twin_id, timestamp=ts,
        state_snapshot=state if state is not None else {"expected_state": {"cpu_usage": cpu}, "limits": {}},
        metrics={"cpu_usage": cpu, "memory_usage": 40.0}, health_score=97.5, change_reason=reason)


def samples(twin_id: str, metric: str, times: Sequence[float], values: Sequence[float]) -> MetricSamples:
    n = len(times)
    return MetricSamples(twin_id=(twin_id,) * n, metric=(metric,) * n, timestamp=np.asarray(times, float),
                         value=np.asarray(values, float))


def predictions(twin_id: str, metric: str, made_at: float, horizons: Sequence[float],
                predicted: Sequence[float], prob: Sequence[float]) -> PredictionRows:
    n = len(horizons)
    p = np.asarray(predicted, float)
    return PredictionRows(twin_id=(twin_id,) * n, metric=(metric,) * n, made_at=np.full(n, made_at),
                          horizon_s=np.asarray(horizons, float), predicted=p, lower=p - 1.0, upper=p + 1.0,
                          failure_probability=np.asarray(prob, float),
                          risk_factor=tuple("cpu over 95" if x > 95 else "" for x in p))


def correction(cid: str, twin_id: str, ts: str = "2026-01-01T00:00:00Z") -> CorrectionRecord:
    return CorrectionRecord(correction_id=cid, twin_id=twin_id, alert_id="a1", component="cpu",
                            action="recommend_scaling", details="scale out", applied=True, reason="cpu high",
                            timestamp=ts)


def event(eid: str, twin_id: str, ts: float, type: EventType = EventType.DRIFT_DETECTED) -> TwinEvent:
    return TwinEvent(event_id=eid, twin_id=twin_id, type=type, severity="warning",
                     message="drift", timestamp=ts, data={"metric": "cpu_usage", "n": 3})


async def count(raw: Raw, table: str, where: str = "1=1", *args: Any) -> int:
    return int((await raw.fetch(f"SELECT COUNT(*) FROM {table} WHERE {where}", *args))[0][0])


# ------------------------------------------------------------------ the contract


class StoreContract:
    """Each test names the guarantee it checks."""

    # --- snapshots: round trip, order, verification

    async def test_snapshot_round_trip_verifies(self, store: Store) -> None:
        e = snap("twin_a", "s1", T0 + 0.123456)
        await store.write(Outbox(twins=[twin("a")], snapshots=[e]))
        got = await store.get_snapshot("twin_a", "s1")
        assert got == e
        assert got is not None and got.verify()
        assert await store.get_snapshot("twin_a", "nope") is None
        assert await store.get_snapshot("twin_other", "s1") is None   # a snapshot belongs to its twin

    async def test_list_snapshots_newest_first_with_limit_and_before(self, store: Store) -> None:
        entries = [snap("twin_a", f"s{i}", T0 + i, cpu=10.0 + i) for i in range(5)]
        await store.write(Outbox(snapshots=entries))
        got = await store.list_snapshots("twin_a")
        assert [e.snapshot_id for e in got] == ["s4", "s3", "s2", "s1", "s0"]
        assert [e.snapshot_id for e in await store.list_snapshots("twin_a", limit=2)] == ["s4", "s3"]
        assert [e.snapshot_id for e in await store.list_snapshots("twin_a", before=T0 + 2)] == ["s1", "s0"]
        assert await store.list_snapshots("twin_b") == []

    async def test_values_json_databases_normalise_still_verify(self, store: Store) -> None:
        # JSONB turns 1e+20 into an integer and -0.0 into 0.0, and refuses NUL: each would break a checksum
        state = {"big": 1e20, "neg_zero": -0.0, "nul": "a\x00b", "tiny": 1e-300, "text": "é ✓ 😀",
                 "nested": [1, 2.5, {"k": None, "b": True}], "int": 2**70}
        e = snap("twin_a", "weird", T0, state=state)
        ok = snap("twin_a", "plain", T0 + 1, state={"x": 50.0, "y": 0.1})
        await store.write(Outbox(snapshots=[e, ok]))
        for sid, orig in (("weird", e), ("plain", ok)):
            got = await store.get_snapshot("twin_a", sid)
            assert got is not None and got.verify() and got.checksum == orig.checksum
            assert got.state_snapshot == orig.state_snapshot

    async def test_history_is_append_only_a_repeat_never_overwrites(self, store: Store, raw: Raw) -> None:
        first = snap("twin_a", "s1", T0, cpu=10.0)
        await store.write(Outbox(snapshots=[first]))
        impostor = snap("twin_a", "s1", T0 + 5, cpu=99.0)    # same id, other content
        await store.write(Outbox(snapshots=[impostor, first]))
        assert await count(raw, "twin_state_history") == 1
        assert await store.get_snapshot("twin_a", "s1") == first

    async def test_database_itself_refuses_to_update_a_snapshot(self, store: Store, raw: Raw) -> None:
        await store.write(Outbox(snapshots=[snap("twin_a", "s1", T0)]))
        with pytest.raises(Exception, match="append-only"):
            await raw.execute("UPDATE twin_state_history SET health_score = 1 WHERE snapshot_id = ?", "s1")
        got = await store.get_snapshot("twin_a", "s1")
        assert got is not None and got.health_score == 97.5

    async def test_corrupt_snapshot_is_logged_counted_and_refused(self, store: Store, raw: Raw,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
        good, bad = snap("twin_a", "good", T0), snap("twin_a", "bad", T0 + 1)
        await store.write(Outbox(twins=[twin("a")], snapshots=[good, bad]))
        await raw.tamper("UPDATE twin_state_history SET metrics = '{\"cpu_usage\": 1.0}' WHERE snapshot_id = ?",
                         "bad")
        caplog.set_level(logging.ERROR, logger="sidecar.store")
        with pytest.raises(CorruptSnapshotError) as err:
            await store.get_snapshot("twin_a", "bad")
        assert err.value.snapshot_id == "bad"
        assert [e.snapshot_id for e in await store.list_snapshots("twin_a")] == ["good"]   # never handed out
        (restored,) = await store.load_twins()
        assert [e.snapshot_id for e in restored.snapshots] == ["good"]
        assert store.status is not None
        assert store.status.store_corrupt_snapshots_total == 1      # one bad row, counted once
        assert store.corrupt_snapshots_total == 1
        assert any("corrupt snapshot" in r.getMessage() and "bad" in r.getMessage() for r in caplog.records)

    async def test_tampered_health_and_reason_are_caught_too(self, store: Store, raw: Raw) -> None:
        await store.write(Outbox(snapshots=[snap("twin_a", "s1", T0), snap("twin_a", "s2", T0 + 1)]))
        await raw.tamper("UPDATE twin_state_history SET health_score = 12.0 WHERE snapshot_id = ?", "s1")
        await raw.tamper("UPDATE twin_state_history SET change_reason = 'edited' WHERE snapshot_id = ?", "s2")
        for sid in ("s1", "s2"):
            with pytest.raises(CorruptSnapshotError):
                await store.get_snapshot("twin_a", sid)
        assert store.status is not None and store.status.store_corrupt_snapshots_total == 2

    # --- twins come back

    async def test_load_twins_brings_back_definition_history_samples_corrections(self, store: Store) -> None:
        a = twin("a", expected={"cpu_usage": 55.0})
        times = T0 + 15.0 * np.arange(10)
        out = Outbox(twins=[a, twin("b")], snapshots=[snap("twin_a", "s0", T0), snap("twin_a", "s1", T0 + 60)],
                     samples=[samples("twin_a", "cpu_usage", times, 40 + np.arange(10)),
                              samples("twin_a", "memory_usage", times[:4], [1, 2, 3, 4])],
                     corrections=[correction("c1", "twin_a"), correction("c2", "twin_a")])
        await store.write(out)
        a.expected_state = {"cpu_usage": 60.0}                 # a later definition change replaces the row
        await store.write(Outbox(twins=[a]))
        got = {t.twin_id: t for t in await store.load_twins()}
        assert set(got) == {"twin_a", "twin_b"}
        ra = got["twin_a"]
        assert ra.definition == a.definition() and ra.definition["expected_state"] == {"cpu_usage": 60.0}
        assert ra.name == "a"
        assert [e.snapshot_id for e in ra.snapshots] == ["s0", "s1"]          # oldest first, like the engine
        assert all(e.verify() for e in ra.snapshots)
        t, v = ra.samples["cpu_usage"]
        np.testing.assert_array_equal(t, times)
        np.testing.assert_array_equal(v, 40 + np.arange(10))
        np.testing.assert_array_equal(ra.samples["memory_usage"][1], [1, 2, 3, 4])
        assert [c.correction_id for c in ra.corrections] == ["c1", "c2"]
        assert ra.corrections[0] == correction("c1", "twin_a")
        assert got["twin_b"].snapshots == [] and got["twin_b"].samples == {}

    async def test_load_twins_reads_the_history_of_the_twins_kept_only(self, store: Store) -> None:
        """A shard reads only its own twins (``keep`` over the stored definition), and their models only."""
        times = T0 + 15.0 * np.arange(5)
        await store.write(Outbox(twins=[twin("a"), twin("b"), twin("c")],
                                 samples=[samples(f"twin_{n}", "cpu_usage", times, np.arange(5)) for n in "abc"]))
        await store.save_model_states({"twin_a": b"a", "twin_b": b"b", "twin_c": b"c"}, at=T0)
        seen: list[str] = []

        def keep(definition: Mapping[str, Any]) -> bool:
            seen.append(str(definition["source_system"]))
            return definition["source_system"] != "b"

        got = await store.load_twins(keep=keep)
        assert sorted(seen) == ["a", "b", "c"]
        assert sorted(t.name for t in got) == ["a", "c"] and all("cpu_usage" in t.samples for t in got)
        assert await store.load_model_states(["twin_a", "twin_c", "twin_x"]) == {"twin_a": b"a", "twin_c": b"c"}
        assert await store.load_model_states([]) == {}

    async def test_load_twins_limits_samples_to_recent_window_and_count(self, store: Store) -> None:
        times = T0 + 60.0 * np.arange(200)               # 200 minutes of samples
        await store.write(Outbox(twins=[twin("a")], samples=[samples("twin_a", "cpu_usage", times, times)]))
        (r,) = await store.load_twins(limits=LoadLimits(samples=30, sample_window_s=3600.0))
        t, _ = r.samples["cpu_usage"]
        np.testing.assert_array_equal(t, times[-30:])
        (r,) = await store.load_twins(limits=LoadLimits(samples=1000, sample_window_s=3600.0))
        np.testing.assert_array_equal(r.samples["cpu_usage"][0], times[times >= times[-1] - 3600.0])

    async def test_load_twins_limits_snapshots_and_corrections(self, store: Store) -> None:
        await store.write(Outbox(twins=[twin("a")],
                                 snapshots=[snap("twin_a", f"s{i}", T0 + i) for i in range(7)],
                                 corrections=[correction(f"c{i}", "twin_a") for i in range(5)]))
        (r,) = await store.load_twins(limits=LoadLimits(snapshots=3, corrections=2))
        assert [e.snapshot_id for e in r.snapshots] == ["s4", "s5", "s6"]
        assert [c.correction_id for c in r.corrections] == ["c3", "c4"]

    async def test_retired_twins_are_not_loaded_but_keep_history(self, store: Store) -> None:
        await store.write(Outbox(twins=[twin("a"), twin("b")], snapshots=[snap("twin_b", "sb", T0)]))
        await store.save_model_states({"twin_a": b"a", "twin_b": b"b"}, at=T0)
        await store.write(Outbox(retired=["twin_b"]))
        assert [t.twin_id for t in await store.load_twins()] == ["twin_a"]
        # its learnt models stay: a retired twin may still come back as it was (retired.keep_for)
        assert await store.load_model_states() == {"twin_a": b"a", "twin_b": b"b"}
        both = {t.twin_id: t for t in await store.load_twins(include_retired=True)}
        assert set(both) == {"twin_a", "twin_b"}
        assert both["twin_a"].retired_at is None
        assert both["twin_b"].retired_at is not None and [e.snapshot_id for e in both["twin_b"].snapshots] == ["sb"]
        assert await store.get_snapshot("twin_b", "sb") is not None
        await store.write(Outbox(twins=[twin("b")]))           # a target that comes back is live again
        assert {t.twin_id for t in await store.load_twins()} == {"twin_a", "twin_b"}

    async def test_many_twins_load(self, store: Store) -> None:
        n = 250   # more than one loading chunk
        twins = [twin(f"t{i:03d}") for i in range(n)]
        await store.write(Outbox(
            twins=twins, snapshots=[snap(t.twin_id, f"s-{t.twin_id}", T0) for t in twins],
            samples=[samples(t.twin_id, "cpu_usage", [T0, T0 + 15], [i, i + 1]) for i, t in enumerate(twins)]))
        got = await store.load_twins()
        assert len(got) == n
        for i, r in enumerate(sorted(got, key=lambda r: r.twin_id)):
            assert r.twin_id == f"twin_t{i:03d}"
            assert [e.snapshot_id for e in r.snapshots] == [f"s-{r.twin_id}"]
            np.testing.assert_array_equal(r.samples["cpu_usage"][1], [i, i + 1])

    # --- replicas sharing a database

    async def test_replicas_do_not_clobber_each_others_twins(self, store: Store, make_store: MakeStore) -> None:
        other = await make_store(replica="replica-b")
        mine = twin("shared", expected={"cpu_usage": 10.0})
        await store.write(Outbox(twins=[mine, twin("only-a")], snapshots=[snap("twin_shared", "sa", T0)]))
        theirs = twin("shared", expected={"cpu_usage": 99.0})   # same name -> same id on the other replica
        await other.write(Outbox(twins=[theirs, twin("only-b")], snapshots=[snap("twin_shared", "sb", T0 + 1)]))
        await other.write(Outbox(retired=["twin_shared", "twin_only-a"]))   # may not retire ours either
        a = {t.twin_id: t for t in await store.load_twins()}
        b = {t.twin_id: t for t in await other.load_twins()}
        assert set(a) == {"twin_shared", "twin_only-a"}
        assert set(b) == {"twin_only-b"}
        assert a["twin_shared"].definition["expected_state"] == {"cpu_usage": 10.0}
        # snapshots are append-only history of the twin id: both are kept, neither overwritten
        assert {e.snapshot_id for e in await store.list_snapshots("twin_shared")} == {"sa", "sb"}

    # --- the models' learnt state

    async def test_model_state_round_trip_replace_and_owner(self, store: Store, make_store: MakeStore) -> None:
        assert await store.load_model_states() == {}
        blob = bytes(range(256)) * 40                        # binary, with NUL bytes
        assert await store.save_model_states({"twin_a": blob, "twin_b": b"b1"}, at=T0) == 2
        assert await store.load_model_states() == {"twin_a": blob, "twin_b": b"b1"}
        assert await store.save_model_states({"twin_b": b"b2"}, at=T0 + 600) == 1    # replaced, not added
        assert await store.load_model_states() == {"twin_a": blob, "twin_b": b"b2"}
        other = await make_store(replica="replica-b")
        assert await other.load_model_states() == {}                              # not theirs to load
        assert await other.save_model_states({"twin_b": b"theirs", "twin_c": b"c"}, at=T0 + 700) == 1
        assert (await store.load_model_states())["twin_b"] == b"b2"              # nor to overwrite
        assert await other.load_model_states() == {"twin_c": b"c"}

    async def test_corrupt_model_state_is_logged_and_left_out(self, store: Store, raw: Raw,
                                                              caplog: pytest.LogCaptureFixture) -> None:
        await store.save_model_states({"twin_a": b"good state", "twin_b": b"other"}, at=T0)
        await raw.execute("UPDATE twin_model_state SET checksum = ? WHERE twin_id = ?", "0" * 64, "twin_a")
        with caplog.at_level(logging.ERROR):
            assert await store.load_model_states() == {"twin_b": b"other"}
        assert any("corrupt model state" in r.getMessage() and "twin_a" in r.getMessage() for r in caplog.records)

    async def test_retired_twins_loaded_by_when_they_retired_newest_first(self, store: Store, raw: Raw) -> None:
        await store.write(Outbox(twins=[twin(n) for n in "abcd"], snapshots=[snap("twin_c", "sc", T0)],
                                 samples=[samples("twin_c", "cpu_usage", [T0, T0 + 15], [1, 2])]))
        await store.write(Outbox(retired=["twin_b", "twin_c", "twin_d"]))
        for name, at in (("b", T0 + 10), ("c", T0 + 30), ("d", T0 + 20)):
            await raw.execute("UPDATE twin_definitions SET retired_at = ? WHERE twin_id = ?", at, f"twin_{name}")

        async def ids(**kw: Any) -> dict[str, float | None]:
            return {t.twin_id: t.retired_at for t in await store.load_twins(include_retired=True, **kw)}

        assert await ids() == {"twin_a": None, "twin_b": T0 + 10, "twin_c": T0 + 30, "twin_d": T0 + 20}
        assert await ids(retired_since=T0 + 20) == {"twin_a": None, "twin_c": T0 + 30, "twin_d": T0 + 20}
        assert await ids(retired_max=1) == {"twin_a": None, "twin_c": T0 + 30}     # the one retired last
        assert await ids(retired_since=T0 + 25, retired_max=5) == {"twin_a": None, "twin_c": T0 + 30}
        assert await ids(retired_max=0) == {"twin_a": None}
        (c,) = [t for t in await store.load_twins(include_retired=True, retired_max=1) if t.twin_id == "twin_c"]
        assert [e.snapshot_id for e in c.snapshots] == ["sc"] and c.samples["cpu_usage"][1].tolist() == [1, 2]
        assert [t.twin_id for t in await store.load_twins(retired_max=5)] == ["twin_a"]   # only if asked for

    async def test_model_state_of_retired_twins_forgotten_and_purged_by_owner(self, store: Store,
                                                                              make_store: MakeStore) -> None:
        other = await make_store(replica="replica-b")
        await store.write(Outbox(twins=[twin(n) for n in "abcd"]))
        await other.write(Outbox(twins=[twin("x")]))
        await store.save_model_states({f"twin_{n}": n.encode() for n in "abcde"}, at=T0)   # e: no definition
        await other.save_model_states({"twin_x": b"x", "twin_y": b"y"}, at=T0)
        await store.write(Outbox(retired=["twin_b", "twin_c", "twin_d"]))
        await other.write(Outbox(retired=["twin_x"]))
        assert await other.forget_model_states(["twin_a", "twin_b"]) == 0             # not theirs
        assert await store.forget_model_states(["twin_d", "twin_d", "twin_zz"]) == 1
        assert await store.forget_model_states([]) == 0
        assert set(await store.load_model_states()) == {"twin_a", "twin_b", "twin_c", "twin_e"}
        # retired and not kept: gone; live (a), kept (c), without a definition (e) and the other's: left alone
        assert await store.purge_retired_model_states(keep=["twin_c"]) == 1
        assert set(await store.load_model_states()) == {"twin_a", "twin_c", "twin_e"}
        assert await other.load_model_states() == {"twin_x": b"x", "twin_y": b"y"}
        assert await store.purge_retired_model_states() == 1
        assert set(await store.load_model_states()) == {"twin_a", "twin_e"}
        await store.write(Outbox(twins=[twin("b")]))             # back again: live, its next save stays
        await store.save_model_states({"twin_b": b"b2"}, at=T0 + 1)
        assert await store.purge_retired_model_states() == 0
        assert (await store.load_model_states())["twin_b"] == b"b2"

    # --- idempotence and the other tables

    async def test_rewriting_an_outbox_adds_nothing(self, store: Store, raw: Raw) -> None:
        out = Outbox(twins=[twin("a")], snapshots=[snap("twin_a", "s1", T0)],
                     samples=[samples("twin_a", "cpu_usage", [T0, T0 + 15], [1, 2])],
                     predictions=[predictions("twin_a", "cpu_usage", T0, [300, 900], [50, 96], [0.0, 0.6])],
                     corrections=[correction("c1", "twin_a")], events=[event("e1", "twin_a", T0)])
        await store.write(out)
        await store.write(out)     # a retry after a lost acknowledgement
        for table, n in (("twin_definitions", 1), ("twin_state_history", 1), ("twin_metrics_history", 2),
                         ("twin_failure_predictions", 2), ("twin_corrections", 1), ("twin_events", 1)):
            assert await count(raw, table) == n, table

    async def test_predictions_events_and_samples_are_stored(self, store: Store, raw: Raw) -> None:
        await store.write(Outbox(
            samples=[samples("twin_a", "cpu_usage", [T0, T0 + 15, T0 + 30], [1.0, math.nan, 3.0])],
            predictions=[predictions("twin_a", "cpu_usage", T0, [300, 900], [50, 96], [math.nan, 0.75])],
            events=[event("e1", "twin_a", T0)]))
        assert await count(raw, "twin_metrics_history") == 2          # NaN is not a sample
        rows = await raw.fetch("SELECT horizon_seconds, predicted, lower, upper, failure_probability, risk_factor "
                               "FROM twin_failure_predictions ORDER BY horizon_seconds")
        assert rows[0] == (300.0, 50.0, 49.0, 51.0, None, "")
        assert rows[1] == (900.0, 96.0, 95.0, 97.0, 0.75, "cpu over 95")
        (ev,) = await raw.fetch("SELECT event_id, twin_id, type, severity, timestamp FROM twin_events")
        assert ev == ("e1", "twin_a", "drift_detected", "warning", T0)

    # --- events

    async def test_events_are_listed_newest_first_with_filters(self, store: Store) -> None:
        events = [event("e1", "twin_a", T0), event("e2", "twin_b", T0 + 1),
                  event("e3", "twin_a", T0 + 2, EventType.ROLLBACK), event("e4", "twin_a", T0 + 3)]
        await store.write(Outbox(twins=[twin("a"), twin("b")], events=events))
        got = await store.list_events(EventQuery())
        assert got == events[::-1]                                     # every field round trips
        assert [e.event_id for e in await store.list_events(EventQuery(twin_id="twin_a"))] == ["e4", "e3", "e1"]
        assert [e.event_id for e in await store.list_events(EventQuery(type="rollback"))] == ["e3"]
        assert [e.event_id for e in await store.list_events(EventQuery(since=T0 + 1))] == ["e4", "e3", "e2"]
        assert [e.event_id for e in await store.list_events(EventQuery(before=T0 + 2))] == ["e2", "e1"]
        assert [e.event_id for e in await store.list_events(EventQuery(limit=1))] == ["e4"]

    async def test_event_pages_continue_inside_a_shared_timestamp(self, store: Store) -> None:
        # one round emits many events at one instant; ids that a locale-aware collation orders differently
        ids = ["evt_a_1", "evt_A_2", "evt_a-3", "evt_B", "evt_10", "evt_9", "evt_é"]
        same = [event(i, "twin_a", T0 + 5) for i in ids]
        await store.write(Outbox(twins=[twin("a")], events=[event("old", "twin_a", T0), *same,
                                                            event("new", "twin_a", T0 + 9)]))
        expected = ["new", *sorted(ids, reverse=True), "old"]          # code point order, descending
        assert [e.event_id for e in await store.list_events(EventQuery())] == expected
        walked: list[str] = []
        query = EventQuery(limit=2)
        while True:
            page = await store.list_events(query)
            walked += [e.event_id for e in page]
            if len(page) < query.limit:
                break
            query = EventQuery(limit=2, before=page[-1].timestamp, before_id=page[-1].event_id)
        assert walked == expected, "nothing skipped, nothing repeated"

    async def test_events_of_another_replicas_twins_are_not_listed(self, store: Store,
                                                                   make_store: MakeStore) -> None:
        other = await make_store(replica="replica-b")
        await store.write(Outbox(twins=[twin("mine")], events=[event("e-mine", "twin_mine", T0)]))
        await other.write(Outbox(twins=[twin("theirs")], events=[event("e-theirs", "twin_theirs", T0)]))
        assert [e.event_id for e in await store.list_events(EventQuery())] == ["e-mine"]
        assert [e.event_id for e in await other.list_events(EventQuery())] == ["e-theirs"]

    async def test_metrics_history_range(self, store: Store) -> None:
        times = T0 + 10.0 * np.arange(10)
        await store.write(Outbox(samples=[samples("twin_a", "cpu_usage", times, np.arange(10)),
                                          samples("twin_a", "memory_usage", times, -np.arange(10)),
                                          samples("twin_b", "cpu_usage", times, np.arange(10) + 100)]))
        t, v = await store.metrics_history("twin_a", "cpu_usage", T0 + 20, T0 + 50)
        np.testing.assert_array_equal(t, times[2:6])
        np.testing.assert_array_equal(v, [2, 3, 4, 5])
        t, v = await store.metrics_history("twin_a", "nope", T0, T0 + 100)
        assert t.shape == (0,) and v.shape == (0,)

    # --- retention

    async def test_retention_by_count_keeps_the_newest(self, store: Store, raw: Raw,
                                                       caplog: pytest.LogCaptureFixture) -> None:
        await store.write(Outbox(snapshots=[snap("twin_a", f"a{i}", T0 + i) for i in range(6)]
                                 + [snap("twin_b", "b0", T0)]))
        caplog.set_level(logging.INFO, logger="sidecar.store")
        report = await store.apply_retention(RetentionPolicy(snapshot_max_count=2), now=T0 + 100)
        assert report.snapshots == 4 and report.twins_touched == 1
        assert [e.snapshot_id for e in await store.list_snapshots("twin_a")] == ["a5", "a4"]
        assert [e.snapshot_id for e in await store.list_snapshots("twin_b")] == ["b0"]
        assert any("retention dropped snapshots=4" in r.getMessage() for r in caplog.records)   # logged

    async def test_retention_by_age_never_drops_a_twins_newest(self, store: Store) -> None:
        await store.write(Outbox(snapshots=[snap("twin_a", f"a{i}", T0 + i * 86400) for i in range(3)]
                                 + [snap("twin_old", "only", T0)]))
        report = await store.apply_retention(RetentionPolicy(snapshot_max_age_s=86400 * 1.5),
                                             now=T0 + 3 * 86400)
        assert report.snapshots == 2                      # a0 and a1 are older than 1.5 days
        assert [e.snapshot_id for e in await store.list_snapshots("twin_a")] == ["a2"]
        assert [e.snapshot_id for e in await store.list_snapshots("twin_old")] == ["only"]   # old, but newest
        # count zero would drop everything: it is clamped so the newest always stays
        await store.write(Outbox(snapshots=[snap("twin_a", "a3", T0 + 3 * 86400)]))
        await store.apply_retention(RetentionPolicy(snapshot_max_count=0, snapshot_max_age_s=0), now=T0 * 2)
        assert [e.snapshot_id for e in await store.list_snapshots("twin_a")] == ["a3"]
        assert [e.snapshot_id for e in await store.list_snapshots("twin_old")] == ["only"]

    async def test_retention_never_drops_a_snapshot_younger_than_the_minimum_age(self, store: Store) -> None:
        """Under sustained writes a count of 1000 dropped snapshots acknowledged with 200 seconds before: the
        count drops only snapshots older than the minimum age (the age limit never reaches them either)."""
        await store.write(Outbox(snapshots=[snap("twin_a", f"a{i}", T0 + i * 600) for i in range(10)]))
        now = T0 + 9 * 600 + 1
        policy = RetentionPolicy(snapshot_max_count=2, snapshot_max_age_s=1800, snapshot_min_age_s=3000)
        report = await store.apply_retention(policy, now=now)
        # a5..a9 are younger than 3000 s; of the older ones the count of 2 is long used up
        assert report.snapshots == 5
        assert [e.snapshot_id for e in await store.list_snapshots("twin_a")] == [f"a{i}" for i in range(9, 4, -1)]
        report = await store.apply_retention(RetentionPolicy(snapshot_max_count=1, snapshot_min_age_s=0), now=now)
        assert report.snapshots == 4
        assert [e.snapshot_id for e in await store.list_snapshots("twin_a")] == ["a9"]

    async def test_retention_drops_old_samples_predictions_events(self, store: Store, raw: Raw) -> None:
        await store.write(Outbox(
            samples=[samples("twin_a", "cpu_usage", [T0, T0 + 100, T0 + 200], [1, 2, 3])],
            predictions=[predictions("twin_a", "cpu_usage", T0, [300], [1], [0]),
                         predictions("twin_a", "cpu_usage", T0 + 200, [300], [1], [0])],
            events=[event("e0", "twin_a", T0), event("e1", "twin_a", T0 + 200)]))
        report = await store.apply_retention(
            RetentionPolicy(samples_max_age_s=150, predictions_max_age_s=150, events_max_age_s=150), now=T0 + 260)
        assert (report.samples, report.predictions, report.events, report.snapshots) == (2, 1, 1, 0)
        assert await count(raw, "twin_metrics_history") == 1
        assert await count(raw, "twin_failure_predictions") == 1
        assert await count(raw, "twin_events") == 1

    # --- schema

    async def test_schema_migrated_and_recorded_idempotently(self, store: Store, make_store: MakeStore,
                                                             raw: Raw) -> None:
        assert await store.schema_version() == schema.LATEST_VERSION
        again = await make_store()
        assert await again.schema_version() == schema.LATEST_VERSION
        rows = await raw.fetch("SELECT version FROM schema_version ORDER BY version")
        assert [r[0] for r in rows] == [m.version for m in schema.MIGRATIONS]

    # --- restart

    async def test_rollback_after_restart_to_a_snapshot_written_before_it(self, store: Store,
                                                                          make_store: MakeStore) -> None:
        from sidecar.engine.core import Engine
        from sidecar.engine.twin import TwinEngine

        now = [T0]
        eng = TwinEngine(Engine(), store=store, clock=lambda: now[0])
        t = await eng.create_twin("checkout", SystemType.API_GATEWAY)
        for i in range(60):
            now[0] = T0 + 15.0 * i
            await eng.sync_twin(t.twin_id, {"cpu_usage": 40.0 + i % 5, "memory_usage": 60.0})
        before_restart = {}
        for cpu in (50.0, 70.0, 80.0):
            now[0] += 15.0
            before_restart[cpu] = (await eng.set_expected_state(t.twin_id, {"cpu_usage": cpu}))["snapshot_id"]
        target = before_restart[70.0]            # taken before expected became 70: it holds 50
        forecasts_before = eng.engine.predictions(t.twin_id)
        await store.close()

        # --- the restart: a new store on the same database, a new engine
        store2 = await make_store()
        (restored,) = await store2.load_twins(limits=LoadLimits(snapshots=1))   # target stays in the store only
        engine2 = Engine()
        tw = engine2.restore_twin(restored.definition, snapshots=restored.snapshots, samples=restored.samples,
                                  corrections=restored.corrections)
        assert tw.twin_id == t.twin_id and tw.expected_state == {"cpu_usage": 80.0}
        times, values = engine2.history(tw.twin_id)["cpu_usage"]
        assert len(times) == 60 and values[-1] == 40.0 + 59 % 5
        assert len(engine2.predictions(tw.twin_id)) == len(forecasts_before) > 0     # forecasts resume at once
        assert engine2.find_snapshot(tw.twin_id, target) is None

        eng2 = TwinEngine(engine2, store=store2, clock=lambda: now[0] + 60)
        result = await eng2.rollback_to_snapshot(tw.twin_id, target)
        assert result["success"] is True
        assert engine2.get(tw.twin_id).expected_state == {"cpu_usage": 50.0}
        await store2.close()
        store3 = await make_store()                   # the rollback itself was persisted
        (again,) = await store3.load_twins()
        assert again.definition["expected_state"] == {"cpu_usage": 50.0}
        assert any(e.change_reason == f"rollback to {target}" for e in again.snapshots)

    async def test_corrupt_snapshot_refused_as_rollback_target(self, store: Store, raw: Raw) -> None:
        from sidecar.engine.core import Engine
        from sidecar.engine.twin import TwinEngine

        eng = TwinEngine(Engine(), store=store, clock=lambda: T0)
        t = await eng.create_twin("checkout", SystemType.API_GATEWAY)
        await eng.sync_twin(t.twin_id, {"cpu_usage": 40.0})   # expected values are for metrics the twin has
        sid = (await eng.set_expected_state(t.twin_id, {"cpu_usage": 50.0}))["snapshot_id"]
        await eng.set_expected_state(t.twin_id, {"cpu_usage": 70.0})
        t.state_history.clear()        # as after a restart: the target lives only in the store
        await raw.tamper("UPDATE twin_state_history SET health_score = 3.0 WHERE snapshot_id = ?", sid)
        with pytest.raises(CorruptSnapshotError):
            await eng.rollback_to_snapshot(t.twin_id, sid)
        assert eng.engine.get(t.twin_id).expected_state == {"cpu_usage": 70.0}
        assert store.status is not None and store.status.store_corrupt_snapshots_total == 1
