"""The validation protocol's parts: the synthetic suite is deterministic, its labels are valid NAB
windows around the injected onsets, and per-kind counts add up."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from helpers.bench import load_benchmark

synthetic = load_benchmark("synthetic")
detection = load_benchmark("detection")


def test_generation_is_deterministic_and_labels_the_onset() -> None:
    base = synthetic.BASES[0]
    _, y1, o1 = synthetic.generate(base, "level_shift", np.random.default_rng(3))
    _, y2, o2 = synthetic.generate(base, "level_shift", np.random.default_rng(3))
    assert np.array_equal(y1, y2) and o1 == o2 and len(o1) == 1
    o = o1[0]
    assert np.mean(y1[o:o + 50]) - np.mean(y1[o - 50:o]) > 5.0
    _, _, none = synthetic.generate(base, "none", np.random.default_rng(3))
    assert none == []


def test_hourly_counts_are_non_negative_integers() -> None:
    base = next(b for b in synthetic.BASES if b.counts and b.step == 3600.0)
    _, y, _ = synthetic.generate(base, "stopped", np.random.default_rng(0))
    assert np.all(y >= 0) and np.all(y == np.round(y))


def test_suite_windows_match_data_rows(tmp_path: Path) -> None:
    kinds = synthetic.write_suite(tmp_path, seed=1)
    wins = json.loads((tmp_path / "windows.json").read_text())
    assert set(kinds) == set(wins) and set(kinds.values()) == set(synthetic.KINDS)
    for key, ws in wins.items():
        stamps = {line.split(",")[0] for line in (tmp_path / "data" / key).read_text().splitlines()[1:]}
        assert len(ws) == (0 if kinds[key] == "none" else 1)
        for a, b in ws:
            assert a.removesuffix(".000000") in stamps and b.removesuffix(".000000") in stamps and a < b


def test_per_kind_adds_up() -> None:
    std = {"per_file": [{"file": "a.csv", "windows_detected": 1, "windows_missed": 0, "fp": 2},
                        {"file": "b.csv", "windows_detected": 0, "windows_missed": 1, "fp": 0},
                        {"file": "c.csv", "windows_detected": 0, "windows_missed": 0, "fp": 5}]}
    got = detection.per_kind(std, {"a.csv": "spike", "b.csv": "spike", "c.csv": "none"})
    assert got["spike"] == {"detected": 1, "windows": 2, "fp": 2, "files": 2}
    assert got["none"] == {"detected": 0, "windows": 0, "fp": 5, "files": 1}
