"""``twin-sidecar``: the service and its offline tools, one subcommand each."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import numpy as np

from . import replay
from .errors import ConfigError, InputError, SidecarError, SourceError
from .logs import TextFormatter

#: Subcommands that set up the service's own logging (JSON or text, ``--log-format``).
_OWN_LOGGING = frozenset({"run", "demo"})


def _open_out(path: str) -> TextIO:
    if path == "-":
        return sys.stdout
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    f: TextIO = open(path, "w", newline="")   # noqa: SIM115 - the caller closes it (it may be stdout)
    return f


# ----------------------------------------------------------------- the service
def _cmd_run(a: argparse.Namespace) -> int:
    from .app import run_service
    from .config import load_config, shard_config

    config = load_config(a.config)
    if a.shard_index is not None or a.shard_count is not None:
        where = " and ".join(f for f, v in (("--shard-index", a.shard_index), ("--shard-count", a.shard_count))
                             if v is not None)
        config = dataclasses.replace(config, shard=shard_config(a.shard_index, a.shard_count, where=where,
                                                                default=config.shard))
    return asyncio.run(run_service(config, log_format=a.log_format))


def _cmd_check_config(a: argparse.Namespace) -> int:
    from .config import check_config

    print("\n".join(check_config(a.config)))
    return 0


def _cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(duration_s=a.duration, log_format=a.log_format)


def _cmd_rules(a: argparse.Namespace) -> int:
    from .alerts import AlertSettings, check_runbook_base_url, rules_main

    settings = AlertSettings() if a.runbook_base_url is None else \
        AlertSettings(runbook_url=check_runbook_base_url(a.runbook_base_url))   # before any file is written
    out = _open_out(a.output)
    try:
        return rules_main(a.config, out, settings=settings)
    finally:
        if out is not sys.stdout:
            out.close()


def _cmd_simulate(a: argparse.Namespace) -> int:
    from .api import parse_json_int

    try:
        scenario = json.loads(a.scenario, parse_int=parse_json_int)
    except json.JSONDecodeError as e:
        raise InputError(f"--scenario is not JSON: {e.msg} at column {e.colno}") from None
    except RecursionError:
        raise InputError("--scenario is nested too deeply") from None
    except ValueError as e:     # e.g. an integer literal beyond Python's digit limit
        raise InputError(f"--scenario is not usable JSON: {e}") from None
    if not isinstance(scenario, dict):
        raise InputError("--scenario must be a JSON object, e.g. '{\"type\": \"load_test\"}'")
    result = asyncio.run(_simulate(a.config, a.twin, scenario, a.seed))
    print(json.dumps(result, indent=2, allow_nan=False))
    return 0


async def _simulate(config_path: str, twin: str, scenario: dict[str, Any], seed: int) -> dict[str, Any]:
    """Load the twin's history from Prometheus (the rules' backfill window), then run the scenario."""
    from .app import engine_settings
    from .collect.scheduler import Scheduler
    from .config import load_config
    from .engine.core import Engine
    from .prometheus import PrometheusClient
    from .status import ServiceStatus

    config = load_config(config_path)
    # the whole backfill window is the scenario's history, however short limits.history keeps it in the service
    engine = Engine(engine_settings(config, history_s=max(config.limits.history_s, config.backfill_s)))
    client = PrometheusClient(config.prometheus, max_response_bytes=config.limits.max_response_bytes)
    try:
        sched = Scheduler(config, engine, client, ServiceStatus(config_loaded=True))
        await sched.backfill()
        report = await sched.run_round()
        if not report.source_up:
            raise InputError(f"cannot reach Prometheus at {config.prometheus.url}")
    finally:
        await client.aclose()
    target = sched.roster.targets.get(twin)
    if target is None:
        known = ", ".join(sorted(sched.roster.targets)) or "none"
        raise InputError(f"no twin {twin!r} in {config_path}; twins: {known}")
    return engine.simulate(twin, scenario, at=time.time(), seed=seed, replicas=target.rule.replicas,
                           workers=target.rule.workers)


# ------------------------------------------------------------- offline replay
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
    horizons = replay.parse_horizons(a.horizons) if what == "forecast" else ()
    streams = [replay.CsvStream(src) for src, _ in pairs]
    outs = [_open_out(str(dst)) for _, dst in pairs]
    try:
        if what == "forecast":
            counts = replay.forecast_many(streams, outs, horizons, a.model, sequential=a.sequential)
        else:
            counts = replay.detect_many(streams, outs, sequential=a.sequential)
    finally:
        for o in outs:
            if o is not sys.stdout:
                o.close()
    rows = sum(s.rows for s in streams)
    print(f"{what}: {len(streams)} file(s), {rows} rows -> {sum(counts)} output rows in "
          f"{time.perf_counter() - t0:.2f}s", file=sys.stderr)
    return 0


def _cmd_forecast(a: argparse.Namespace) -> int:
    return _run_many(a, "forecast")


def _cmd_detect(a: argparse.Namespace) -> int:
    return _run_many(a, "detect")


def _cmd_backtest(a: argparse.Namespace) -> int:
    from .backtest import check_model, format_report, parse_bounds, parse_time_option, run_backtest

    # every option is checked before anything is read or fetched: a mistake costs no download
    horizons = replay.parse_horizons(a.horizons)
    check_model(a.model)
    bounds = (-math.inf, math.inf) if a.bounds is None else parse_bounds(a.bounds)
    score_from = None if a.score_from is None else parse_time_option("--score-from", a.score_from, now=time.time())
    if a.input:
        given = [f"--{k}" for k in ("query", "start", "end") if getattr(a, k) is not None]
        if given:
            raise InputError(f"{', '.join(given)} go with --prometheus, not --input (a CSV is replayed whole)")
        try:
            t, y, stream = replay.read_arrays(a.input)
        except InputError as e:
            raise InputError(f"--input {e}") from None
        stream.report()
        skipped = stream.bad_values.rows + stream.backwards.rows
        source = a.input
    else:
        missing = [f"--{k}" for k in ("query", "start", "end") if not getattr(a, k)]
        if missing:
            raise InputError(f"--prometheus needs {', '.join(missing)} too "
                             "(e.g. --query 'sum(rate(http_requests_total[5m]))' --start now-2h --end now)")
        now = time.time()
        start, end = parse_time_option("--start", a.start, now=now), parse_time_option("--end", a.end, now=now)
        t, y = asyncio.run(_range(a.prometheus, a.query, start, end, a.step))
        source, skipped = f"{a.query} @ {a.prometheus}", 0
    bar = _Progress(enabled=not a.json and sys.stderr.isatty())
    try:
        rep = run_backtest(t, y, horizons_s=horizons, model=a.model, progress=bar, score_from=score_from,
                           bounds=bounds)
    except InputError as e:     # too few usable samples: the data chosen is what to change
        raise InputError(f"{'--input ' + a.input if a.input else '--start/--end'}: {e}") from None
    finally:
        bar.done()
    rep = dataclasses.replace(rep, dropped=rep.dropped + skipped)     # the rows the CSV reader skipped too
    if a.json:
        print(json.dumps(_json_ready({"source": source, **rep.to_dict()}), indent=2, allow_nan=False))
    else:
        print(f"backtest of {source}\n{format_report(rep)}")
    return 0


async def _range(url: str, query: str, start: float, end: float, step_text: str) -> tuple[np.ndarray, np.ndarray]:
    from .config import PrometheusConfig
    from .engine.records import iso
    from .prometheus import PrometheusClient, QueryFailed

    if end <= start:
        raise InputError(f"--end ({iso(end)}) must be after --start ({iso(start)})")
    try:
        step = replay.parse_duration(step_text)
    except ValueError as e:
        raise InputError(f"--step: {e}") from None
    # more than Prometheus' 11,000 points per series is fetched in consecutive parts by the client: the step
    # asked for is the step used, so the backtest judges the data asked for
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"--prometheus {url!r}: expected Prometheus' base URL, e.g. http://127.0.0.1:9090")
    client = PrometheusClient(PrometheusConfig(url=url, timeout_s=60.0))
    try:
        m = await client.query_range(query, start, end, step)
    except QueryFailed as e:
        raise InputError(f"--query {query!r}: Prometheus refused it: {_one_line(e)}") from None
    except SourceError as e:
        raise InputError(f"--prometheus {url!r}: {_one_line(e)}") from None
    finally:
        await client.aclose()
    if len(m) == 0:
        # "aggregate it" is the advice for several series; none means the selector matches nothing in the range
        raise InputError(f"--query {query!r} returned no series between {iso(start)} and {iso(end)}: check its "
                         "selector (metric name and labels) and that Prometheus holds data for that range")
    if len(m) != 1:
        raise InputError(f"--query must return exactly one series, got {len(m)}: aggregate it (e.g. sum(...))")
    return m.times, m.values[0]


def _one_line(e: Exception) -> str:
    """An error's text on one line (a server's message may span several)."""
    return " ".join(str(e).split())


def _json_ready(o: object) -> object:
    """Standard JSON: a score nothing was scored for (NaN) or an infinite one is null, not a bare ``NaN``.

    ``json.dumps``' ``default`` never sees floats (it writes ``NaN`` itself), so they are replaced first.
    """
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _json_ready(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_json_ready(v) for v in o]
    return o


class _Progress:
    """A one-line progress bar on stderr for long backtests (only on a terminal)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        width = 40
        fill = int(width * done / total)
        sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {done}/{total}")
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")


# --------------------------------------------------------------------- parser
#: What ``--horizons`` takes, for every command that has it.
_HORIZONS_HELP = "comma-separated durations, e.g. 5m,15m,1h or plain seconds (default %(default)s)"
_SEQUENTIAL_HELP = ("replay a file as one chain, row after row (exact, about 1.5 ms a row); by default one file longer "
                    "than 32,768 rows runs as segments side by side, each after a warm-up of the 16,384 rows before "
                    "it (faster, close but not identical)")


def _model_help() -> str:
    """``--model``'s help: the choices, read from the forecast bank (no bank is built, nothing is forecast)."""
    from .engine.forecast import model_names

    return ("'auto' (the bank chooses per series and horizon) or one model forced for every forecast: "
            + ", ".join(model_names()) + " (default %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="twin-sidecar", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    model_help = _model_help()

    r = sub.add_parser("run", help="run the sidecar service (query rounds, /metrics, JSON API)")
    r.add_argument("--config", required=True, help="YAML rules file")
    r.add_argument("--log-format", choices=("json", "text"), default="json",
                   help="json: one JSON object per line, for log pipelines; text: one readable line "
                        "(default %(default)s)")
    r.add_argument("--shard-index", metavar="I",
                   help="this process's shard, 0 to count-1, or a StatefulSet pod name ending in -<ordinal> "
                        "(wins over TWIN_SIDECAR_SHARD_INDEX and the rules' shard.index)")
    r.add_argument("--shard-count", metavar="N",
                   help="how many processes split the twins by a hash of their naming labels (wins over "
                        "TWIN_SIDECAR_SHARD_COUNT and the rules' shard.count; default 1)")
    r.set_defaults(func=_cmd_run)

    c = sub.add_parser("check-config", help="validate a rules file without running")
    c.add_argument("config", help="YAML rules file; errors name file:line: key, exit 2")
    c.set_defaults(func=_cmd_check_config)

    dm = sub.add_parser("demo", help="real Prometheus + a demo service + the sidecar, until Ctrl-C")
    dm.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    dm.add_argument("--log-format", choices=("json", "text"), default="text",
                    help="format of the sidecar's log lines (default %(default)s)")
    dm.set_defaults(func=_cmd_demo)

    ru = sub.add_parser("rules", help="write Prometheus alerting rules generated from the rules file")
    ru.add_argument("--config", required=True, help="YAML rules file the alerts are generated for")
    ru.add_argument("--output", default="-", help="file to write (default stdout)")
    ru.add_argument("--runbook-base-url", metavar="URL",
                    help="http(s) URL of your copy of the README; each alert's runbook_url becomes "
                         "URL#runbook-<alert> (default: the relative README.md#runbook-<alert>)")
    ru.set_defaults(func=_cmd_rules)

    si = sub.add_parser("simulate", help="run a what-if scenario on a twin, from Prometheus history")
    si.add_argument("--config", required=True, help="YAML rules file: the twin's queries and the Prometheus URL")
    si.add_argument("--twin", required=True, help="name of a twin in the rules (its history is read from "
                                                   "Prometheus)")
    si.add_argument("--scenario", required=True, help='JSON, e.g. \'{"type": "traffic_spike", '
                                                      '"traffic_multiplier": 5, "duration_minutes": 30}\'')
    si.add_argument("--seed", type=int, default=0,
                    help="seed of the Monte Carlo draws: the same seed gives the same answer (default %(default)s)")
    si.set_defaults(func=_cmd_simulate)

    f = sub.add_parser("forecast", help="replay a timestamp,value CSV and write forecasts with 90%% intervals")
    f.add_argument("--input", required=True, action="append",
                   help="CSV with columns timestamp,value; repeat, or give a directory, to replay many at once")
    f.add_argument("--output", required=True,
                   help="CSV to write (timestamp,horizon_seconds,predicted,lower,upper); a directory for many")
    f.add_argument("--horizons", default="5m,15m,30m,60m", help=_HORIZONS_HELP)
    f.add_argument("--model", default="auto", help=model_help)
    f.add_argument("--prefix", default="", help="with many inputs: prefix of each output file name")
    f.add_argument("--sequential", action="store_true", help=_SEQUENTIAL_HELP)
    f.set_defaults(func=_cmd_forecast)

    d = sub.add_parser("detect", help="replay a timestamp,value CSV and write anomaly scores (NAB format)")
    d.add_argument("--input", required=True, action="append",
                   help="CSV with columns timestamp,value; repeat, or give a directory, to replay many at once")
    d.add_argument("--output", required=True, help="CSV to write (timestamp,value,anomaly_score); a directory for many")
    d.add_argument("--prefix", default="", help="with many inputs: prefix of each output file name (NAB: 'twin_')")
    d.add_argument("--sequential", action="store_true", help=_SEQUENTIAL_HELP)
    d.set_defaults(func=_cmd_detect)

    b = sub.add_parser("backtest", help="replay history through the forecasters and score them")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="CSV with columns timestamp,value")
    src.add_argument("--prometheus", help="Prometheus base URL, with --query --start --end")
    b.add_argument("--query", help="PromQL returning one series")
    b.add_argument("--start", help="now-2h, now-10m, RFC 3339 (2026-11-25T14:00:00Z) or unix seconds")
    b.add_argument("--end", help="now, now-5m, RFC 3339 or unix seconds")
    b.add_argument("--step", default="15s", help="range-query step (default %(default)s; long ranges are fetched in "
                   "parts of 10,000 steps)")
    b.add_argument("--horizons", default="5m,15m,30m,60m", help=_HORIZONS_HELP)
    b.add_argument("--model", default="auto", help=model_help)
    b.add_argument("--json", action="store_true", help="machine-readable output")
    b.add_argument("--bounds", metavar="LO,HI", help="the metric's domain, as a twin's `bounds:` gives it (0,100 for a "
                   "percentage, 0, for not below 0): forecasts and intervals stay inside it")
    b.add_argument("--score-from", help="score only forecasts made at or after this time (RFC 3339 or unix "
                   "seconds); every sample is still replayed")
    b.set_defaults(func=_cmd_backtest)
    return p


@contextlib.contextmanager
def _stderr_logging() -> Iterator[None]:
    """Warnings of an offline command on stderr, one readable line each with its fields (``key=value``).

    Without a handler Python's last resort prints the bare message, and "query failing" then names neither
    the twin, the metric nor the error (they are ``extra`` fields). The handler is the service's text
    format, added for the command and removed after it (``main`` may run many times in one process).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter())
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


#: The exit code of a command whose standard output was closed under it (128 + SIGPIPE, as the shell reports
#: any program a closed pipe stops).
EXIT_STDOUT_CLOSED = 141


def _stdout_closed() -> int:
    """Standard output was closed (``twin-sidecar check-config F | head -1``): stop without a traceback.

    What is still buffered for it can never be written; pointing the descriptor at /dev/null keeps the
    interpreter's last flush at exit from raising a second time."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return EXIT_STDOUT_CLOSED


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:      # --help, or a usage error: what argparse printed must reach its reader
            sys.stdout.flush()
            raise
        logs = contextlib.nullcontext() if args.command in _OWN_LOGGING else _stderr_logging()
        with logs:
            rc: int = args.func(args)
        sys.stdout.flush()          # a closed pipe shows here rather than in the interpreter's last flush
        return rc
    except BrokenPipeError:
        return _stdout_closed()
    except ConfigError as e:
        print(f"twin-sidecar {args.command}: {e}", file=sys.stderr)
        return 2
    except SidecarError as e:
        print(f"twin-sidecar {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
