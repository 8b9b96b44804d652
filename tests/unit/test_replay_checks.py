"""Replay reads its CSV in checked chunks: unsorted or repeated timestamps are reported with their first line
and count, a non-finite timestamp refuses the file at its line, an absurd value is skipped and counted (never a
RuntimeWarning), a huge field is reported at its own line, and chunking changes no output row."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers.csvfiles import T0, series, write

from sidecar import replay
from sidecar.cli import main


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "sidecar.replay" and r.levelno == logging.WARNING]


def test_unsorted_rows_are_reported_with_the_first_line_and_how_many(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """500 unsorted rows gave 28 forecast rows and no warning."""
    rows = series(500)
    rng = np.random.default_rng(1)
    shuffled = [rows[i] for i in rng.permutation(500)]
    p = write(tmp_path / "unsorted.csv", shuffled)
    t = np.array([int(r.split(",")[0]) for r in shuffled])
    backwards = int((t[1:] <= np.maximum.accumulate(t)[:-1]).sum())
    first = 2 + 1 + int(np.flatnonzero(t[1:] <= np.maximum.accumulate(t)[:-1])[0])
    with caplog.at_level(logging.WARNING, logger="sidecar.replay"):
        assert main(["forecast", "--input", str(p), "--output", str(tmp_path / "f.csv"), "--horizons", "5m"]) == 0
    [msg] = warnings_of(caplog)
    assert msg.startswith(f"{p}:{first}: {backwards} row(s) at or before an earlier timestamp skipped")


def test_a_repeated_timestamp_is_reported_too(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = series(50)
    rows.insert(10, rows[9])
    p = write(tmp_path / "repeat.csv", rows)
    with caplog.at_level(logging.WARNING, logger="sidecar.replay"):
        assert main(["detect", "--input", str(p), "--output", str(tmp_path / "d.csv")]) == 0
    assert warnings_of(caplog) == [f"{p}:12: 1 row(s) at or before an earlier timestamp skipped, the first on this "
                                   "line: the file is not sorted by time, or repeats a timestamp (no forecast from "
                                   "them; anomaly score 0)"]
    assert len((tmp_path / "d.csv").read_text().splitlines()) == 52     # one score per row, skipped ones 0


@pytest.mark.parametrize("stamp", ["nan", "inf", "-inf", "1e400", "99999999999999"])
def test_a_timestamp_that_is_no_time_refuses_the_file_at_its_line(tmp_path: Path, stamp: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    rows = series(20)
    rows[6] = f"{stamp},1.0"
    p = write(tmp_path / "t.csv", rows)
    for cmd in (["forecast", "--output", str(tmp_path / "o.csv")], ["detect", "--output", str(tmp_path / "o.csv")],
                ["backtest"]):
        assert main([cmd[0], "--input", str(p), *cmd[1:]]) == 2
        err = capsys.readouterr().err
        assert f"{p}:8: timestamp {stamp!r} is not a time" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("value", ["1e308", "-1e308", "inf", "nan", "1e31"])
def test_an_absurd_value_is_skipped_and_counted_without_runtime_warnings(tmp_path: Path, value: str) -> None:
    """1e308 printed four numpy RuntimeWarnings and wrote forecasts of about 1e308."""
    rows = series(400)
    for i in (150, 151, 300):
        rows[i] = rows[i].split(",")[0] + f",{value}"
    p = write(tmp_path / "v.csv", rows)
    for cmd in ("forecast", "detect"):
        out = tmp_path / f"{cmd}.csv"
        proc = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "sidecar.cli", cmd, "--input",
                               str(p), "--output", str(out)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "RuntimeWarning" not in proc.stderr
        assert f"{p}:152: 3 value(s) not finite or beyond +-1e+30 skipped" in proc.stderr
        if cmd == "forecast":
            predicted = np.array([float(x.split(",")[2]) for x in out.read_text().splitlines()[1:]])
            assert predicted.size and np.abs(predicted).max() < 1e3


def test_values_up_to_the_bound_give_no_runtime_warning() -> None:
    rng = np.random.default_rng(0)
    rows = [replay.Row(i + 2, str(i), T0 + 60.0 * i,
                       (1 + 0.1 * np.sin(i / 10) + 0.01 * rng.normal()) * replay.VALUE_MAX * (1 if i < 200 else -1))
            for i in range(400)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        replay.write_forecast(rows, io.StringIO(), (300.0, 3600.0))
        replay.write_detect(rows, io.StringIO())


def test_a_huge_field_is_reported_at_its_own_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 50 MB field was reported at line 1; it is on line 2."""
    p = tmp_path / "huge.csv"
    with open(p, "w") as f:
        f.write("timestamp,value\n")
        f.write(f"{T0}," + "9" * 50_000_000 + "\n")
        f.write(f"{T0 + 60},1.0\n")
    assert main(["forecast", "--input", str(p), "--output", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert f"{p}:2: line longer than 1,048,576 bytes" in err and err.count("\n") == 1
    q = tmp_path / "wide.csv"
    q.write_text("timestamp,value\n" + f"{T0},1\n" + f"{T0 + 60}," + "7" * 500_000 + "\n")
    stream = replay.CsvStream(q)                # under the line bound: a number too large, skipped at its line
    assert sum(c.fed.sum() for c in stream.chunks()) == 1
    assert (stream.bad_values.rows, stream.bad_values.first_line) == (1, 3)


def test_chunks_change_no_output_row(tmp_path: Path) -> None:
    """Files replayed side by side in chunks of 7 rows (skipped rows across chunk ends) write exactly what a
    single chunk does."""
    a = series(300)
    a.insert(100, a[98])                    # backwards across a chunk end
    a[200] = a[200].split(",")[0] + ",nan"
    b = series(130, seed=4)
    pa, pb = write(tmp_path / "a.csv", a), write(tmp_path / "b.csv", b)
    for fn in (lambda s, o: replay.forecast_many(s, o, (300.0, 900.0)), replay.detect_many):
        small = [io.StringIO(), io.StringIO()]
        whole = [io.StringIO(), io.StringIO()]
        fn([replay.CsvStream(pa, chunk_rows=7), replay.CsvStream(pb, chunk_rows=7)], small)
        fn([replay.CsvStream(pa, chunk_rows=100_000), replay.CsvStream(pb, chunk_rows=100_000)], whole)
        assert [o.getvalue() for o in small] == [o.getvalue() for o in whole]
        alone = io.StringIO()
        fn([pb], [alone])
        assert alone.getvalue() == whole[1].getvalue()


def test_reading_holds_one_chunk_not_the_file(tmp_path: Path) -> None:
    """Python objects for every row (the whole file in a list) held ~230 bytes a row; a chunk is all that lives."""
    p = write(tmp_path / "long.csv", series(120_000))
    tracemalloc.start()
    try:
        rows = sum(c.line.size for c in replay.CsvStream(p, chunk_rows=4096).chunks())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows == 120_000
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_backtest_counts_the_skipped_rows_as_dropped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = series(200)
    rows[50] = rows[50].split(",")[0] + ",1e308"
    rows.insert(80, rows[70])
    p = write(tmp_path / "b.csv", rows)
    assert main(["backtest", "--input", str(p), "--horizons", "5m"]) == 0
    out, err = capsys.readouterr()
    assert "199 samples (2 dropped)" in out                     # 201 rows, 2 skipped by the reader
    assert ":52: 1 value(s) not finite" in err and ":82: 1 row(s) at or before" in err
