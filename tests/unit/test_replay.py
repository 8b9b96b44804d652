"""Offline replay: CSV errors name file and line; no lookahead; many files = each alone."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from sidecar import replay
from sidecar.cli import main
from sidecar.errors import InputError


def _csv(path: Path, n: int, start: int = 0, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lines = ["timestamp,value"]
    for i in range(start, start + n):
        hh, mm = divmod(i * 5, 60)
        dd, hh = divmod(hh, 24)
        lines.append(f"2014-02-{14 + dd:02d} {hh:02d}:{mm:02d}:00,{50 + 10 * np.sin(i / 20) + rng.normal():.4f}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("body,msg", [
    ("", ":1: empty file"),
    ("time,value\n", "header must contain"),
    ("timestamp,value\n2014-02-14 14:30:00,1\n2014-02-14 14:35:00,abc\n", ":3: value 'abc' is not a number"),
    ("timestamp,value\n2014-02-14 14:30:00,1\nyesterday,2\n", ":3: timestamp 'yesterday'"),
    ("timestamp,value\n2014-02-14 14:30:00\n", ":2: expected 2 columns"),
])
def test_malformed_files_name_file_and_line(tmp_path: Path, body: str, msg: str) -> None:
    p = tmp_path / "bad.csv"
    p.write_text(body)
    with pytest.raises(InputError, match=msg) as e:
        replay.load(p)
    assert str(p) in str(e.value)
    assert main(["forecast", "--input", str(p), "--output", str(tmp_path / "o.csv")]) == 2


def test_no_lookahead_and_many_equals_one(tmp_path: Path) -> None:
    full = replay.load(_csv(tmp_path / "a.csv", 400))
    prefix = full[:250]
    out_full, out_pre = io.StringIO(), io.StringIO()
    replay.write_forecast(full, out_full, (300.0, 900.0))
    replay.write_forecast(prefix, out_pre, (300.0, 900.0))
    pre_lines = out_pre.getvalue().splitlines()
    assert len(pre_lines) > 100
    assert out_full.getvalue().splitlines()[: len(pre_lines)] == pre_lines
    other = replay.load(_csv(tmp_path / "b.csv", 300, seed=3))
    outs = [io.StringIO(), io.StringIO()]
    replay.forecast_many([full, other], outs, (300.0, 900.0))
    assert outs[0].getvalue() == out_full.getvalue()                # replayed together = alone


def test_warts_repeated_and_backward_timestamps(tmp_path: Path) -> None:
    p = tmp_path / "w.csv"
    rows = ["timestamp,value"] + [f"2014-02-14 10:{m:02d}:00,{m}" for m in range(0, 50, 5)]
    rows.insert(5, rows[4])                           # a repeated row
    rows.insert(8, "2014-02-14 09:00:00,7")           # a backward timestamp
    p.write_text("\n".join(rows) + "\n")
    out = tmp_path / "d.csv"
    assert main(["detect", "--input", str(p), "--output", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == len(rows)                    # one score per input row, in order
    assert lines[8] == "2014-02-14 09:00:00,7.0,0.000000000"      # dropped by the engine: score 0
    scores = [float(x.split(",")[2]) for x in lines[1:]]
    assert all(0.0 <= s <= 1.0 for s in scores)
    f_out = tmp_path / "f.csv"
    assert main(["forecast", "--input", str(p), "--output", str(f_out), "--horizons", "5m"]) == 0
    stamps = [x.split(",")[0] for x in f_out.read_text().splitlines()[1:]]
    assert len(stamps) == len(set(stamps)) and "2014-02-14 09:00:00" not in stamps


def test_horizons_and_durations() -> None:
    assert replay.parse_horizons("5m, 1h,90") == (300.0, 3600.0, 90.0)
    assert replay.parse_duration("1h30m") == 5400.0
    for bad in ("", "5x", "-5", "0s"):
        with pytest.raises((InputError, ValueError)):
            replay.parse_horizons(bad) if bad == "" else replay.parse_duration(bad)


@pytest.mark.parametrize(("data", "where"), [
    (b"\x00\x01\xff", ":1: not UTF-8 text (byte 0xff at column 3)"),
    (b"timestamp,value\n2014-02-14 14:30:00,1\n2014-02-14 14:35:00,\xe9\n", ":3: not UTF-8 text (byte 0xe9"),
])
def test_a_file_that_is_not_utf8_names_file_and_line(tmp_path: Path, data: bytes, where: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "bad.csv"
    p.write_bytes(data)
    with pytest.raises(InputError) as e:
        replay.load(p)
    assert str(e.value).startswith(f"{p}{where}")
    for cmd in (["forecast", "--output", str(tmp_path / "o.csv")], ["detect", "--output", str(tmp_path / "o.csv")],
                ["backtest"]):
        assert main([cmd[0], "--input", str(p), *cmd[1:]]) == 2
        err = capsys.readouterr().err
        assert f"{p}{where}" in err and "Traceback" not in err


def test_rows_stream_from_the_file_one_line_at_a_time(tmp_path: Path) -> None:
    """A long history is not held in memory as text: rows before a bad byte arrive before it is read."""
    p = tmp_path / "long.csv"
    p.write_bytes(b"timestamp,value\n" + b"".join(b"%d,%d\n" % (60 * k, k) for k in range(1000)) + b"99,\xe9\n")
    rows = replay.read_rows(p)
    first = [next(rows) for _ in range(1000)]
    assert [r.value for r in first[:3]] == [0.0, 1.0, 2.0] and first[-1].line == 1001
    with pytest.raises(InputError, match=r":1002: not UTF-8 text \(byte 0xe9 at column 4\)"):
        next(rows)
