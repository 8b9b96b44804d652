"""``twin-sidecar``: the service and its offline tools, one subcommand each."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import replay
from .errors import InputError, SidecarError


def _open_out(path: str):  # type: ignore[no-untyped-def]
    if path == "-":
        return sys.stdout
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return open(path, "w", newline="")


def _pairs(a: argparse.Namespace) -> list[tuple[Path, Path]]:
    """Input files and where each one's output goes.

    One ``--input`` file writes to ``--output``; a directory (or several inputs) writes
    ``OUTPUT/<parent>/<name>.csv`` (``OUTPUT/<category>/<name>.csv`` for the NAB layout), with
    ``--prefix`` before the name (NAB's results want ``<detector>_<name>.csv``).
    """
    inputs: list[Path] = []
    for item in a.input:
        p = Path(item)
        inputs.extend(sorted(p.glob("*/*.csv")) + sorted(p.glob("*.csv")) if p.is_dir() else [p])
    if not inputs:
        raise InputError(f"no CSV files in {', '.join(a.input)}")
    if len(a.input) == 1 and not Path(a.input[0]).is_dir():
        return [(inputs[0], Path(a.output))]
    out = Path(a.output)
    return [(p, out / p.parent.name / f"{a.prefix}{p.name}") for p in inputs]


def _run_many(a: argparse.Namespace, what: str) -> int:
    t0 = time.perf_counter()
    pairs = _pairs(a)
    files = [replay.load(src) for src, _ in pairs]
    outs = [_open_out(str(dst)) for _, dst in pairs]
    try:
        if what == "forecast":
            counts = replay.forecast_many(files, outs, replay.parse_horizons(a.horizons), a.model)
        else:
            counts = replay.detect_many(files, outs)
    finally:
        for o in outs:
            if o is not sys.stdout:
                o.close()
    rows = sum(len(f) for f in files)
    print(f"{what}: {len(files)} file(s), {rows} rows -> {sum(counts)} output rows in "
          f"{time.perf_counter() - t0:.2f}s", file=sys.stderr)
    return 0


def _cmd_forecast(a: argparse.Namespace) -> int:
    return _run_many(a, "forecast")


def _cmd_detect(a: argparse.Namespace) -> int:
    return _run_many(a, "detect")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="twin-sidecar", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("forecast", help="replay a timestamp,value CSV and write forecasts with 90%% intervals")
    f.add_argument("--input", required=True, action="append",
                   help="CSV with columns timestamp,value; repeat, or give a directory, to replay many at once")
    f.add_argument("--output", required=True,
                   help="CSV to write (timestamp,horizon_seconds,predicted,lower,upper); a directory for many")
    f.add_argument("--prefix", default="", help="with many inputs: prefix of each output file name")
    f.add_argument("--horizons", default="5m,15m,30m,60m", help="comma-separated durations (default %(default)s)")
    f.add_argument("--model", default="auto", help="'auto' (choose per series and horizon) or one model name")
    f.set_defaults(func=_cmd_forecast)

    d = sub.add_parser("detect", help="replay a timestamp,value CSV and write anomaly scores (NAB format)")
    d.add_argument("--input", required=True, action="append",
                   help="CSV with columns timestamp,value; repeat, or give a directory, to replay many at once")
    d.add_argument("--output", required=True, help="CSV to write (timestamp,value,anomaly_score); a directory for many")
    d.add_argument("--prefix", default="", help="with many inputs: prefix of each output file name (NAB: 'twin_')")
    d.set_defaults(func=_cmd_detect)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc: int = args.func(args)
        return rc
    except SidecarError as e:
        print(f"twin-sidecar {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
