"""Segmented replay of one file: rows out in file order, each segment exactly the chain over its warm-up and
its own rows, a prefix gives the same rows, bad rows reported as by the chain, short files replayed exactly."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from helpers.csvfiles import T0, series, write

from sidecar import replay
from sidecar.cli import main
from sidecar.engine.settings import EngineSettings
from sidecar.replay_segments import SEGMENT_ROWS, replay_segmented

H = (300.0, 900.0)
#: small segments so a few hundred rows span several blocks: 4 segments a block, 60 rows each, 25 warm-up
GEOMETRY = {"seg": 60, "warm": 25, "lanes": 4}


def segmented(path: Path, kind: str, **geometry: int) -> str:
    out = io.StringIO()
    h = H if kind == "forecast" else EngineSettings().horizons_s
    replay_segmented(replay.CsvStream(path), out, kind, h, **{**GEOMETRY, **geometry})
    return out.getvalue()


def sequential(path: Path, kind: str) -> str:
    out = io.StringIO()
    if kind == "forecast":
        replay.write_forecast(path, out, H, sequential=True)
    else:
        replay.write_detect(path, out, sequential=True)
    return out.getvalue()


def stamps(text: str) -> list[str]:
    return [line.split(",", 1)[0] for line in text.splitlines()[1:]]


@pytest.mark.parametrize("kind", ["forecast", "detect"])
def test_each_segment_is_the_chain_over_its_warm_up_and_its_rows(tmp_path: Path, kind: str) -> None:
    rows = series(500)
    out = segmented(write(tmp_path / "f.csv", rows), kind)
    lines = out.splitlines()
    assert lines[0] == sequential(write(tmp_path / "x.csv", rows[:1]), kind).splitlines()[0]
    got: list[str] = []
    for s in range(0, 500, GEOMETRY["seg"]):
        begin = max(0, s - GEOMETRY["warm"])
        own = set(r.split(",")[0] for r in rows[s:s + GEOMETRY["seg"]])
        chain = sequential(write(tmp_path / f"s{s}.csv", rows[begin:s + GEOMETRY["seg"]]), kind)
        got.extend(line for line in chain.splitlines()[1:] if line.split(",", 1)[0] in own)
    assert lines[1:] == got


def test_detect_writes_one_row_per_input_row_in_file_order(tmp_path: Path) -> None:
    rows = series(431)
    out = segmented(write(tmp_path / "f.csv", rows), "detect")
    assert stamps(out) == [r.split(",")[0] for r in rows]
    assert [float(line.split(",")[1]) for line in out.splitlines()[1:]] == [float(r.split(",")[1]) for r in rows]


def test_forecast_rows_follow_the_input_rows_in_order(tmp_path: Path) -> None:
    rows = series(431)
    got = stamps(segmented(write(tmp_path / "f.csv", rows), "forecast"))
    order = {r.split(",")[0]: k for k, r in enumerate(rows)}
    assert [order[s] for s in got] == sorted(order[s] for s in got)
    assert set(got) == {r.split(",")[0] for r in rows[1:]}      # every row after the first forecasts


@pytest.mark.parametrize("kind", ["forecast", "detect"])
@pytest.mark.parametrize("cut", [1, 60, 61, 85, 241, 333])
def test_a_prefix_gives_the_same_rows_for_the_same_timestamps(tmp_path: Path, kind: str, cut: int) -> None:
    rows = series(400)
    full = segmented(write(tmp_path / "full.csv", rows), kind).splitlines()
    part = segmented(write(tmp_path / "part.csv", rows[:cut]), kind).splitlines()
    assert full[: len(part)] == part
    assert set(stamps("\n".join(part))) <= {r.split(",")[0] for r in rows[:cut]}


def test_skipped_rows_are_reported_as_by_the_chain(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = series(400)
    rows.insert(130, rows[118])                     # backwards, in a warm-up and across a segment end
    rows.insert(300, rows[299])                     # a repeated timestamp
    rows[200] = rows[200].split(",")[0] + ",nan"
    rows[61] = rows[61].split(",")[0] + ",1e31"
    p = write(tmp_path / "w.csv", rows)
    messages = {}
    for label, run in (("segmented", lambda: segmented(p, "detect")), ("sequential", lambda: sequential(p, "detect"))):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="sidecar.replay"):
            out = run()
        messages[label] = [r.getMessage() for r in caplog.records if r.name == "sidecar.replay"]
        lines = out.splitlines()
        assert len(lines) == len(rows) + 1
        for k in (130, 300, 200, 61):
            assert lines[k + 1].endswith(",0.000000000"), (label, k, lines[k + 1])
    assert messages["segmented"] == messages["sequential"]
    assert len(messages["segmented"]) == 2
    assert f"{p}:63: 2 value(s) not finite" in messages["segmented"][0]
    assert f"{p}:132: 2 row(s) at or before" in messages["segmented"][1]


def test_a_malformed_row_refuses_the_file_at_its_line(tmp_path: Path) -> None:
    rows = series(300)
    rows[250] = "2023-11-14 22:13:20,abc"
    p = write(tmp_path / "bad.csv", rows)
    with pytest.raises(replay.InputError, match=f"{p}:252: value 'abc' is not a number"):
        segmented(p, "detect")
    assert main(["detect", "--input", str(p), "--output", str(tmp_path / "o.csv")]) == 2


@pytest.mark.parametrize("kind", ["forecast", "detect"])
def test_a_file_of_one_segment_is_replayed_exactly_as_the_chain(tmp_path: Path, kind: str) -> None:
    rows = series(700)
    rows.insert(400, rows[390])
    p = write(tmp_path / "f.csv", rows)
    assert len(rows) <= SEGMENT_ROWS
    assert segmented(p, kind, seg=SEGMENT_ROWS, warm=5, lanes=3) == sequential(p, kind)
    out = tmp_path / "cli.csv"
    args = ["--input", str(p), "--output", str(out)] + (["--horizons", "5m,15m"] if kind == "forecast" else [])
    assert main([kind, *args]) == 0                 # the command's default path
    assert out.read_text() == sequential(p, kind)
    assert main([kind, *args, "--sequential"]) == 0
    assert out.read_text() == sequential(p, kind)


def test_the_command_replays_a_long_file_in_segments_unless_sequential(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import sidecar.replay_segments as rs

    monkeypatch.setattr(rs, "SEGMENT_ROWS", 50)
    monkeypatch.setattr(rs, "WARMUP_ROWS", 20)
    monkeypatch.setattr(rs, "BLOCK_SEGMENTS", 3)
    p = write(tmp_path / "f.csv", series(260))
    out = tmp_path / "o.csv"
    assert main(["detect", "--input", str(p), "--output", str(out)]) == 0
    assert out.read_text() == segmented(p, "detect", seg=50, warm=20, lanes=3)
    assert out.read_text() != sequential(p, "detect")
    assert main(["detect", "--input", str(p), "--output", str(out), "--sequential"]) == 0
    assert out.read_text() == sequential(p, "detect")


def test_blocks_hold_one_block_not_the_file(tmp_path: Path) -> None:
    """Reading in blocks keeps one block and its warm-up (about 40 bytes a row), whatever the file's length."""
    import tracemalloc

    from sidecar.replay_segments import blocks

    p = write(tmp_path / "long.csv", series(120_000))
    tracemalloc.start()
    try:
        seen, first = 0, []
        for b in blocks(replay.CsvStream(p, chunk_rows=4096), 8192, 2048):
            assert b.start == seen and b.lead == min(seen, 2048) and b.t.size == b.lead + b.rows
            first.append(b.stamps(0)[0])
            seen += b.rows
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == 120_000 and first[1] == str(T0 + 60 * 8192)
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB"
