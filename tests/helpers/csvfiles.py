"""Replay CSVs made for a test: a minute-sampled wave with noise, written as ``timestamp,value`` rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: The first timestamp of a generated series (unix seconds).
T0 = 1_700_000_000


def series(n: int, *, seed: int = 0) -> list[str]:
    """`n` rows one minute apart from `T0`, as the lines of a replay CSV."""
    rng = np.random.default_rng(seed)
    return [f"{T0 + 60 * i},{50 + 10 * np.sin(i / 30) + rng.normal():.4f}" for i in range(n)]


def write(path: Path, rows: list[str]) -> Path:
    path.write_text("timestamp,value\n" + "\n".join(rows) + "\n")
    return path
