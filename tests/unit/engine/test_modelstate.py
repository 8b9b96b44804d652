"""Saved model rows bring a twin's learnt state back in a new engine, in other slots."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from sidecar.engine.core import Engine
from sidecar.engine.modelstate import decode, encode
from sidecar.engine.settings import EngineSettings
from sidecar.errors import InputError

STEP = 300.0
DAY = 86400.0


def _daily(t: np.ndarray, phase: float) -> np.ndarray:
    """A nightly job: quiet all day, a 2-hour plateau at night."""
    hour = (t % DAY) / 3600.0
    return 20.0 + 60.0 * (((hour + phase) % 24) < 2) + np.sin(t / 977.0)


def _fed(days: float, names: tuple[str, ...] = ("a", "b")) -> tuple[Engine, np.ndarray]:
    e = Engine()
    times = np.arange(STEP, days * DAY, STEP)
    for i, n in enumerate(names):
        e.create_twin(n, at=0.0, system_type="web_service")
        slots = e.series_for(n, ["cpu_usage", "memory_usage"])
        for t in times:
            e.ingest(slots, np.array([_daily(np.array([t]), 3.0 * i)[0], 40.0 + i]), at=float(t), quiet=True)
    return e, times


def _fresh_like(src: Engine, order: tuple[str, ...]) -> Engine:
    """A new process: the same twins, registered in another order (other slots)."""
    e = Engine()
    for n in order:
        e.restore_twin(src.get(n).definition())
    e.series_for(order[0], ["request_rate"])         # shift the slots further
    return e


def test_loaded_rows_forecast_exactly_like_the_engine_that_learnt_them() -> None:
    old, times = _fed(3.0)
    blobs = old.export_model_states()
    assert set(blobs) == {old.get("a").twin_id, old.get("b").twin_id}
    new = _fresh_like(old, ("b", "a"))
    learnt = new.load_model_states(blobs)
    tid = old.get("a").twin_id
    assert learnt[(tid, "cpu_usage")] == times[-1]
    t_next = float(times[-1] + STEP)
    for e in (old, new):
        for i, n in enumerate(("a", "b")):
            slots = e.series_for(n, ["cpu_usage", "memory_usage"])
            e.ingest(slots, np.array([_daily(np.array([t_next]), 3.0 * i)[0], 40.0 + i]), at=t_next, quiet=True)
    for n in ("a", "b"):
        so, sn = old.series_for(n, ["cpu_usage", "memory_usage"]), new.series_for(n, ["cpu_usage", "memory_usage"])
        assert np.isfinite(old.fc_mean[so]).all()
        np.testing.assert_allclose(old.fc_mean[so], new.fc_mean[sn])
        np.testing.assert_allclose(old.fc_upper[so], new.fc_upper[sn])
    np.testing.assert_allclose(old.anomaly_score[old.series_for("a", ["cpu_usage"])],
                               new.anomaly_score[new.series_for("a", ["cpu_usage"])])


def test_restored_rows_keep_what_an_hour_of_replay_forgets() -> None:
    """Why the state is saved: three days taught the models a nightly job; the last hour alone does not."""
    full, times = _fed(3.0, names=("a",))
    hour = times[-12:]
    tid = full.get("a").twin_id
    saved = Engine()
    saved.restore_twin(full.get("a").definition())
    learnt = saved.load_model_states(full.export_model_states())
    saved.restore_history({(tid, "cpu_usage"): (hour, _daily(hour, 0.0))}, learnt)
    short = Engine()
    short.restore_twin(full.get("a").definition(), samples={"cpu_usage": (hour, _daily(hour, 0.0))})

    def forecast(e: Engine) -> np.ndarray:
        return e.fc_mean[e.series_for("a", ["cpu_usage"])[0]]

    t_next = float(times[-1] + STEP)
    for e in (full, saved, short):
        e.ingest(e.series_for("a", ["cpu_usage"]), _daily(np.array([t_next]), 0.0), at=t_next, quiet=True)
    np.testing.assert_allclose(forecast(saved), forecast(full))
    assert not np.allclose(forecast(short), forecast(full))
    # the hour is back in the history (what the API and the capacity fit read), once
    t_hist, _ = saved.history("a")["cpu_usage"]
    np.testing.assert_array_equal(t_hist, np.r_[hour, t_next])


def test_samples_already_learnt_are_not_learnt_twice() -> None:
    old, times = _fed(1.0, names=("a",))
    blobs = old.export_model_states()
    new = _fresh_like(old, ("a",))
    learnt = new.load_model_states(blobs)
    hour = times[-12:]
    rep = new.restore_history({("a", "cpu_usage"): (hour, _daily(hour, 0.0))}, learnt)
    assert rep.accepted == 0                                  # every stored sample was older than the state
    # a late replay of the same samples (the Prometheus backfill) is refused as stale
    slot = new.series_for("a", ["cpu_usage"])
    again = new.ingest(slot, _daily(hour[-1:], 0.0), at=float(hour[-1]), quiet=True)
    assert again.dropped_stale == 1
    np.testing.assert_array_equal(new.bank.state_dict()["core.n"][slot],
                                  old.bank.state_dict()["core.n"][old.series_for("a", ["cpu_usage"])])


def test_a_garbled_blob_is_skipped_and_the_others_load(caplog: pytest.LogCaptureFixture) -> None:
    old, _ = _fed(0.5)
    blobs = old.export_model_states()
    ta, tb = old.get("a").twin_id, old.get("b").twin_id
    blobs[ta] = b"not an npz at all"
    new = _fresh_like(old, ("a", "b"))
    with caplog.at_level(logging.ERROR):
        learnt = new.load_model_states(blobs)
    assert {k[0] for k in learnt} == {tb}
    assert any("unreadable" in r.message and getattr(r, "twin_id", "") == ta for r in caplog.records)


def test_state_from_other_horizons_keeps_the_shared_horizons_and_every_model(caplog: pytest.LogCaptureFixture) -> None:
    """One twin's rule asking for a 2-hour horizon changed the bank's horizon set, and every twin's saved
    state was refused ("saved by other forecast models or horizons"): a week of learnt habits gone."""
    old, times = _fed(3.0, names=("a",))
    new = Engine(EngineSettings(horizons_s=(300.0, 900.0, 7200.0)))      # 30 and 60 min dropped, 2 h new
    new.restore_twin(old.get("a").definition())
    with caplog.at_level(logging.WARNING):
        learnt = new.load_model_states(old.export_model_states())
    assert not any("does not fit" in r.message for r in caplog.records)
    assert learnt[(old.get("a").twin_id, "cpu_usage")] == times[-1]
    so, sn = old.series_for("a", ["cpu_usage"]), new.series_for("a", ["cpu_usage"])
    fo, fn = old.bank.state_dict(), new.bank.state_dict()
    # every model's own state and the per-horizon memories of 5 and 15 minutes came across as they were
    for k in fo:
        if k.startswith("m"):
            np.testing.assert_array_equal(fo[k][so], fn[k][sn])
    np.testing.assert_array_equal(fo["core.mae"][so][:, :, :2], fn["core.mae"][sn][:, :, :2])
    np.testing.assert_array_equal(fo["core.qhi"][so][:, :2], fn["core.qhi"][sn][:, :2])
    assert np.isnan(fn["core.mae"][sn][:, :, 2]).all() and fn["core.fcnt"][sn][0, 2] == 0   # 2 h: learns anew
    t_next = float(times[-1] + STEP)
    for e in (old, new):
        e.ingest(e.series_for("a", ["cpu_usage", "memory_usage"]), np.array([_daily(np.array([t_next]), 0.0)[0],
                                                                               40.0]), at=t_next, quiet=True)
    np.testing.assert_allclose(old.fc_mean[so][:, :2], new.fc_mean[sn][:, :2])


def test_state_saved_before_a_field_was_added_still_loads() -> None:
    """A version that adds a field to the bank must not make every twin relearn: the new field starts fresh."""
    old, _ = _fed(0.5, names=("a",))
    blobs = old.export_model_states()
    tid = old.get("a").twin_id
    st = decode(blobs[tid])
    forecast = {k: v for k, v in st.forecast.items() if k != "core.held"}   # as saved before `held` existed
    blobs[tid] = encode(type(st)(st.twin_id, st.metrics, st.learnt_until, st.forecast_config, forecast, st.anomaly))
    new = _fresh_like(old, ("a",))
    assert new.load_model_states(blobs)
    so, sn = old.series_for("a", ["cpu_usage"]), new.series_for("a", ["cpu_usage"])
    np.testing.assert_array_equal(old.bank.state_dict()["core.mae"][so],
                                  new.bank.state_dict()["core.mae"][sn])


def test_decode_names_what_is_wrong() -> None:
    old, _ = _fed(0.2, names=("a",))
    blob = next(iter(old.export_model_states().values()))
    st = decode(blob)
    assert st.metrics == ("cpu_usage", "memory_usage")
    with pytest.raises(InputError, match="npz"):
        decode(blob[: len(blob) // 2])
    broken = encode(type(st)(st.twin_id, st.metrics, st.learnt_until[:1], st.forecast_config, st.forecast,
                             st.anomaly))
    with pytest.raises(InputError, match="2 metrics but 1 times"):
        decode(broken)


def test_every_core_field_with_a_horizon_axis_is_listed_for_the_remap() -> None:
    """HORIZON_AXIS is written by hand next to the bank's fields: a field added with a horizon axis and not
    listed would be copied whole across a horizon change, its columns meaning other horizons."""
    from sidecar.engine.forecast import HORIZON_AXIS, ForecastBank

    h = 5                                         # unlike the models (17), the queue (12) or a scalar
    bank = ForecastBank([60.0 * (i + 1) for i in range(h)])
    for name, arr in bank.core.items():
        shape = arr.shape[1:]
        axis = HORIZON_AXIS.get(name)
        if axis is None:
            assert h not in shape, name
        else:
            assert shape[axis - 1] == h, name


def _saved_without_models(old: Engine, dropped: tuple[str, ...], fields: tuple[str, ...] = ()
                          ) -> tuple[dict[str, bytes], str, list[str], list[int]]:
    """Twin "a"'s saved states as a version without the `dropped` models (and the bank fields ending in `fields`)
    wrote them: (blobs, twin id, the models now, the indices of those both versions have)."""
    from sidecar.engine.forecast import MODEL_AXIS

    blobs = old.export_model_states()
    tid = old.get("a").twin_id
    st = decode(blobs[tid])
    names = [str(n) for n in st.forecast_config["model_names"].tolist()]
    gone = [names.index(n) for n in dropped]
    keep = [j for j in range(len(names)) if j not in gone]
    forecast = {k: v for k, v in st.forecast.items() if not any(k.endswith("." + f) for f in fields)}
    for f, ax in MODEL_AXIS.items():
        forecast["core." + f] = np.delete(forecast["core." + f], gone, axis=ax)
    # a chosen model that version did not have reads as "last" (0)
    old_index = {j: keep.index(j) if j in keep else 0 for j in range(len(names))}
    forecast["core.fmodel"] = np.vectorize(old_index.__getitem__)(forecast["core.fmodel"]).astype(
        st.forecast["core.fmodel"].dtype)
    config = {**st.forecast_config, "model_names": np.array([names[j] for j in keep])}
    blobs[tid] = encode(type(st)(st.twin_id, st.metrics, st.learnt_until, config, forecast, st.anomaly))
    return blobs, tid, names, keep


def test_state_saved_by_a_version_without_a_model_keeps_every_other_models_learning(
        caplog: pytest.LogCaptureFixture) -> None:
    """A release that adds a forecast model (`daily_mean`) must not make every twin relearn: the models both
    versions have keep their scores and pending forecasts, the new one starts unscored."""
    old, times = _fed(2.0, names=("a",))
    blobs, tid, names, keep = _saved_without_models(old, ("daily_mean",))
    gone = names.index("daily_mean")
    new = _fresh_like(old, ("a",))
    with caplog.at_level(logging.WARNING):
        learnt = new.load_model_states(blobs)
    assert not any("does not fit" in r.message for r in caplog.records)
    assert learnt[(tid, "cpu_usage")] == times[-1]
    so, sn = old.series_for("a", ["cpu_usage"]), new.series_for("a", ["cpu_usage"])
    fo, fn = old.bank.state_dict(), new.bank.state_dict()
    np.testing.assert_array_equal(fo["core.mae"][so][:, keep], fn["core.mae"][sn][:, keep])
    np.testing.assert_array_equal(fo["core.ppred"][so][..., keep], fn["core.ppred"][sn][..., keep])
    np.testing.assert_array_equal(fo["core.ppred"][so][..., -1], fn["core.ppred"][sn][..., -1])   # the bank's own
    assert np.isnan(fn["core.mae"][sn][:, gone]).all() and (fn["core.cnt"][sn][:, gone] == 0).all()
    chose_it = fo["core.fmodel"][so] == gone
    np.testing.assert_array_equal(fn["core.fmodel"][sn], np.where(chose_it, names.index("last"),
                                                                  fo["core.fmodel"][so]))


def test_every_core_field_with_a_model_axis_is_listed_for_the_remap() -> None:
    from sidecar.engine.forecast import MODEL_AXIS, ForecastBank

    bank = ForecastBank([60.0, 120.0, 180.0, 240.0, 300.0])
    m = len(bank.model_names)
    for name, arr in bank.core.items():
        shape = arr.shape[1:]
        axis = MODEL_AXIS.get(name)
        if axis is None:
            assert m not in shape and m + 1 not in shape, name
        else:
            assert shape[axis - 1] in (m, m + 1), name


def test_anomaly_rows_saved_with_fewer_features_load_and_keep_what_they_learnt() -> None:
    """The detector's contextual features are appended to its histograms: rows saved with the five older
    features load (no relearning after an upgrade), keep those five as learnt, and start the new ones fresh."""
    old, _ = _fed(1.0, names=("a",))
    blobs = old.export_model_states()
    tid = old.get("a").twin_id
    st = decode(blobs[tid])
    saved = dict(st.anomaly)
    assert saved["hist"].shape[1] == 7
    saved["hist"], saved["tot"] = saved["hist"][:, :5], saved["tot"][:, :5]          # as saved before the context
    saved.pop("context", None)
    blobs[tid] = encode(type(st)(st.twin_id, st.metrics, st.learnt_until, st.forecast_config, st.forecast, saved))
    new = _fresh_like(old, ("a",))
    fresh_tot = new.anomaly.state_dict()["tot"][new.series_for("a", ["cpu_usage"])].copy()
    assert new.load_model_states(blobs)
    so, sn = old.series_for("a", ["cpu_usage"]), new.series_for("a", ["cpu_usage"])
    loaded = new.anomaly.state_dict()
    np.testing.assert_array_equal(loaded["hist"][sn][:, :5], old.anomaly.state_dict()["hist"][so][:, :5])
    np.testing.assert_array_equal(loaded["tot"][sn][:, 5:], fresh_tot[:, 5:])


def test_a_blob_saved_as_npz_by_an_earlier_version_is_still_read() -> None:
    import io

    old, _ = _fed(0.2, names=("a",))
    st = decode(next(iter(old.export_model_states().values())))
    arrays = {"format": np.array(1, np.int64), "twin_id": np.array(st.twin_id),
              "metrics": np.array(st.metrics, dtype=str), "learnt_until": st.learnt_until,
              **{"fc." + k: v for k, v in st.forecast_config.items()},
              **{"f." + k: v for k, v in st.forecast.items()}, **{"a." + k: v for k, v in st.anomaly.items()}}
    buf = io.BytesIO()
    np.savez_compressed(buf, allow_pickle=False, **arrays)
    back = decode(buf.getvalue())
    assert back.twin_id == st.twin_id and back.metrics == st.metrics
    for k, v in st.forecast.items():
        np.testing.assert_array_equal(back.forecast[k], v)
    assert len(encode(st)) < len(buf.getvalue())           # the packed blob is the smaller one too


def test_state_saved_before_the_packing_loads_packed_and_scores_the_same() -> None:
    """States saved before the pending predictions, the error window and the scored counts were packed
    (float32 differences `ppred` and no `pexp`, float32 `ewin`, `cnt` and `cnt1`) load packed as the bank
    would have kept them: the rows equal the saving engine's, and the next sample scores them into the same
    error memories and interval bounds and forecasts the same."""
    from sidecar.engine.scoring import from_bf16, unpack

    old, times = _fed(0.5, names=("a",))
    blobs = old.export_model_states()
    tid = old.get("a").twin_id
    st = decode(blobs[tid])
    f = dict(st.forecast)
    e = f.pop("core.pexp")
    assert f["core.ppred"].dtype == np.float16 and np.isfinite(f["core.ppred"]).any()
    f["core.ppred"] = unpack(f["core.ppred"], e).astype(np.float32)
    f["core.ewin"] = from_bf16(f["core.ewin"])
    f["core.cnt"], f["core.cnt1"] = f["core.cnt"].astype(np.float32), f["core.cnt1"].astype(np.float32)
    assert np.isfinite(f["core.ewin"]).any()
    blobs[tid] = encode(type(st)(st.twin_id, st.metrics, st.learnt_until, st.forecast_config, f, st.anomaly))
    new = _fresh_like(old, ("a",))
    assert new.load_model_states(blobs)
    so, sn = old.series_for("a", ["cpu_usage", "memory_usage"]), new.series_for("a", ["cpu_usage", "memory_usage"])
    for k in ("core.ppred", "core.pexp", "core.ewin", "core.cnt", "core.cnt1"):
        np.testing.assert_array_equal(old.bank.state_dict()[k][so], new.bank.state_dict()[k][sn])
    t_next = float(times[-1] + STEP)
    for eng in (old, new):
        eng.ingest(eng.series_for("a", ["cpu_usage", "memory_usage"]), np.array([_daily(np.array([t_next]), 0.0)[0],
                                                                                   40.0]), at=t_next, quiet=True)
    for k in ("core.mae", "core.qwlo", "core.qwhi", "core.ewin", "core.fmean", "core.cnt"):
        np.testing.assert_array_equal(old.bank.state_dict()[k][so], new.bank.state_dict()[k][sn])


def test_state_saved_before_the_smoothed_profiles_loads_with_every_older_model_kept(
        caplog: pytest.LogCaptureFixture) -> None:
    """The release that adds the smoothed daily means and the level-moved profile (three models and the bucket
    family's `rs` field) reads a twin saved by the one before: the older models keep what they learnt, the
    new ones start unscored and the residual starts unknown."""
    added = ("daily_mean_s1", "daily_mean_s3", "daily_level")
    old, times = _fed(2.0, names=("a",))
    blobs, tid, names, keep = _saved_without_models(old, added, fields=("rs",))
    gone = [names.index(n) for n in added]
    new = _fresh_like(old, ("a",))
    with caplog.at_level(logging.WARNING):
        learnt = new.load_model_states(blobs)
    assert not any("does not fit" in r.message for r in caplog.records)
    assert learnt[(tid, "cpu_usage")] == times[-1]
    so, sn = old.series_for("a", ["cpu_usage"]), new.series_for("a", ["cpu_usage"])
    fo, fn = old.bank.state_dict(), new.bank.state_dict()
    np.testing.assert_array_equal(fo["core.mae"][so][:, keep], fn["core.mae"][sn][:, keep])
    np.testing.assert_array_equal(fo["core.ppred"][so][..., keep], fn["core.ppred"][sn][..., keep])
    assert np.isnan(fn["core.mae"][sn][:, gone]).all() and (fn["core.cnt"][sn][:, gone] == 0).all()
    rs = next(k for k in fn if k.endswith(".rs"))
    assert np.isfinite(fo[rs][so]).all() and np.isnan(fn[rs][sn]).all()
