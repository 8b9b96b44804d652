"""How far the segmented replay of one long file is from the sequential chain (``--sequential``).

Replays two long series both ways, forecast and detect, and compares on the rows after the first segment (the
rows where the two paths can differ; the first ``SEGMENT_ROWS`` are identical by construction):

- ``synthetic``: ``replay_speed.py``'s file (one sample a minute: a daily wave, a slow trend, noise);
- ``nab``: the values of every NAB file under ``--nab`` one after another, a sample every 5 minutes.

Forecasts: MASE (against the last value) and interval coverage per horizon of both paths, on the targets both
scored; anomaly scores: mean absolute difference, share of rows differing by more than 0.01, and the rows at
or above 0.99 (an alert) of each path and how many both have. Each warm-up in ``--warm`` is a segmented run.
Writes ``benchmarks/results/replay_agreement.{json,md}``.

    python3 benchmarks/replay_agreement.py [--rows 150000] [--nab ../shared/data/nab/data] [--warm 4096,16384]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from replay_speed import generate  # noqa: E402

from sidecar import replay  # noqa: E402
from sidecar.engine.settings import EngineSettings  # noqa: E402
from sidecar.replay_segments import BLOCK_SEGMENTS, SEGMENT_ROWS, WARMUP_ROWS, replay_segmented  # noqa: E402

HORIZONS = (300.0, 900.0, 1800.0, 3600.0)


def nab_series(root: Path, path: Path) -> None:
    """Every NAB file's values one after another, 5 minutes apart from 2024-01-01."""
    vals: list[str] = []
    for f in sorted(root.glob("*/*.csv")):
        vals.extend(line.split(",")[1].strip() for line in f.read_text().splitlines()[1:] if line.strip())
    t0 = 1_704_067_200
    path.write_text("timestamp,value\n" + "".join(f"{t0 + 300 * k},{v}\n" for k, v in enumerate(vals)))


def run(path: Path, kind: str, warm: int | None) -> tuple[str, float]:
    """The replay's output text and its CPU seconds (``warm`` None: the sequential chain)."""
    out = io.StringIO()
    c0 = time.process_time()
    stream = replay.CsvStream(path)
    if warm is None:
        if kind == "forecast":
            replay.forecast_many([stream], [out], HORIZONS, sequential=True)
        else:
            replay.detect_many([stream], [out], sequential=True)
    else:
        h = HORIZONS if kind == "forecast" else EngineSettings().horizons_s
        replay_segmented(stream, out, kind, h, warm=warm)
    return out.getvalue(), time.process_time() - c0


def forecast_scores(text: str, t: np.ndarray, y: np.ndarray, start_t: float) -> dict[str, dict[str, float]]:
    """Per horizon: MASE against the last value and coverage, over forecasts made at or after ``start_t``
    whose target time is a row of the file."""
    rows = np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1, ndmin=2)
    pos = {float(x): k for k, x in enumerate(t.tolist())}
    out: dict[str, dict[str, float]] = {}
    for h in HORIZONS:
        r = rows[(rows[:, 1] == h) & (rows[:, 0] >= start_t)]
        made = np.array([pos.get(float(x), -1) for x in r[:, 0]])
        tgt = np.array([pos.get(float(x) + h, -1) for x in r[:, 0]])
        ok = (made >= 0) & (tgt >= 0)
        r, made, tgt = r[ok], made[ok], tgt[ok]
        actual, last = y[tgt], y[made]
        naive = np.mean(np.abs(actual - last))
        out[f"{h:g}"] = {"n": float(r.shape[0]), "mase": float(np.mean(np.abs(actual - r[:, 2])) / naive),
                         "coverage": float(np.mean((actual >= r[:, 3]) & (actual <= r[:, 4])))}
    return out


def detect_compare(a: str, b: str, skip: int) -> dict[str, float]:
    sa = np.loadtxt(io.StringIO(a), delimiter=",", skiprows=1, usecols=2)[skip:]
    sb = np.loadtxt(io.StringIO(b), delimiter=",", skiprows=1, usecols=2)[skip:]
    d = np.abs(sa - sb)
    ha, hb = sa >= 0.99, sb >= 0.99
    return {"rows": float(sa.size), "mean_abs_diff": float(d.mean()), "share_over_0.01": float((d > 0.01).mean()),
            "alerts_sequential": float(ha.sum()), "alerts_segmented": float(hb.sum()),
            "alerts_both": float((ha & hb).sum())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=150_000, help="rows of the synthetic file")
    ap.add_argument("--nab", default=str(ROOT.parent / "shared" / "data" / "nab" / "data"))
    ap.add_argument("--warm", default=str(WARMUP_ROWS), help="warm-up rows of the segmented runs, comma-separated")
    ap.add_argument("--data", default="/tmp/replay-agreement", help="directory for the files and outputs")
    ap.add_argument("--kinds", default="forecast,detect", help="which replays to compare")
    ap.add_argument("--series", default="synthetic,nab",
                    help="series replayed in this run (the others' results are read from --data, if there)")
    a = ap.parse_args()
    data = Path(a.data)
    data.mkdir(parents=True, exist_ok=True)
    files = {"synthetic": data / f"synthetic-{a.rows}.csv", "nab": data / "nab-concatenated.csv"}
    if not files["synthetic"].exists():
        generate(files["synthetic"], a.rows)
    if not files["nab"].exists() and Path(a.nab).is_dir():
        nab_series(Path(a.nab), files["nab"])
    warms = [int(w) for w in a.warm.split(",")]
    res: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                           "machine": f"{platform.machine()}, {os.cpu_count()} cores", "segment_rows": SEGMENT_ROWS,
                           "block_segments": BLOCK_SEGMENTS, "series": {}}
    for name, path in files.items():
        done = data / f"{name}-result.json"
        if name not in a.series.split(","):
            if done.exists():
                res["series"][name] = json.loads(done.read_text())
            continue
        if not path.exists():
            continue
        t, y, _ = replay.read_arrays(path)
        start_t = float(t[SEGMENT_ROWS]) if t.size > SEGMENT_ROWS else float("inf")
        entry: dict[str, Any] = {"rows": int(t.size), "sequential": {}, "segmented": {}}
        for kind in a.kinds.split(","):
            cached = data / f"{name}-{kind}-sequential.csv"
            if cached.exists():
                seq_text, seq_cpu = cached.read_text(), float((data / f"{cached.name}.cpu").read_text())
            else:
                seq_text, seq_cpu = run(path, kind, None)
                cached.write_text(seq_text)
                (data / f"{cached.name}.cpu").write_text(str(seq_cpu))
            entry["sequential"][f"{kind}_cpu_s"] = seq_cpu
            if kind == "forecast":
                entry["sequential"]["forecast"] = forecast_scores(seq_text, t, y, start_t)
            for w in warms:
                text, cpu = run(path, kind, w)
                seg = entry["segmented"].setdefault(str(w), {})
                seg[f"{kind}_cpu_s"] = cpu
                seg["identical_first_segment"] = seg.get("identical_first_segment", True) and (
                    _head(text, start_t) == _head(seq_text, start_t))
                if kind == "forecast":
                    seg["forecast"] = forecast_scores(text, t, y, start_t)
                else:
                    seg["detect"] = detect_compare(seq_text, text, SEGMENT_ROWS)
            print(name, kind, "done", flush=True)
        res["series"][name] = entry
        done.write_text(json.dumps(entry, indent=2) + "\n")
    dest = ROOT / "benchmarks" / "results" / "replay_agreement"
    dest.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    dest.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))
    return 0


def _head(text: str, start_t: float) -> list[str]:
    """The output rows of the first segment (the files' timestamps are unix seconds)."""
    return [line for line in text.splitlines()[1:] if float(line.split(",", 1)[0]) < start_t]


def markdown(r: dict[str, Any]) -> str:
    out = [f"# Segmented against sequential replay ({r['date']})", "",
           f"{r['machine']}; segments of {r['segment_rows']:,} rows, {r['block_segments']} side by side. Compared on "
           "the rows after the first segment (the first is identical by construction; checked below).", ""]
    for name, e in r["series"].items():
        out += [f"## {name} ({e['rows']:,} rows)", "",
                "| path | horizon | forecasts | MASE | coverage |", "|---|---|---|---|---|"]
        paths = [("sequential", e["sequential"])] + [(f"segmented, warm-up {w}", s) for w, s in e["segmented"].items()]
        for label, p in paths:
            for h, m in p["forecast"].items():
                out.append(f"| {label} | {float(h) / 60:g} min | {m['n']:,.0f} | {m['mase']:.3f} | "
                           f"{m['coverage']:.3f} |")
        cpu = e["sequential"]
        out += ["", "| path | rows | mean abs score diff | rows diff > 0.01 | alerts seq / seg / both | first segment "
                "identical | CPU forecast / detect |", "|---|---|---|---|---|---|---|",
                f"| sequential | | | | | | {_s(cpu.get('forecast_cpu_s'))} / {_s(cpu.get('detect_cpu_s'))} |"]
        for w, s in e["segmented"].items():
            d = s.get("detect")
            cells = (f"{d['rows']:,.0f} | {d['mean_abs_diff']:.4f} | {100 * d['share_over_0.01']:.2f} % | "
                     f"{d['alerts_sequential']:.0f} / {d['alerts_segmented']:.0f} / {d['alerts_both']:.0f}"
                     if d else "not measured | | |")
            out.append(f"| segmented, warm-up {w} | {cells} | {s['identical_first_segment']} | "
                       f"{_s(s.get('forecast_cpu_s'))} / {_s(s.get('detect_cpu_s'))} |")
        out.append("")
    return "\n".join(out)


def _s(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:.0f} s"


if __name__ == "__main__":
    sys.exit(main())
