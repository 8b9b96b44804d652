#!/usr/bin/env python3
"""kill -9 a process in the middle of heavy writing, again and again, and check what survived.

Each round starts a child process that opens the store (SQLite file or PostgreSQL schema) and writes
outboxes back to back — twin definitions, snapshots, samples, forecast rows, events, corrections — noting
"B n" in a progress file before each write and "A n" once ``store.write`` has returned (acknowledged).
The parent SIGKILLs it at a random moment (sometimes during start-up and migration, mostly while writing),
then opens the database itself and checks:

* the database opens (and, for SQLite, ``PRAGMA integrity_check`` is ``ok``);
* every acknowledged batch is there, whole, and every snapshot verifies its checksum;
* nothing is half-written: every batch present at all has all its snapshots, samples, forecast rows,
  events and corrections, and each twin's definition row is the one from the newest committed batch.

Usage::

    python benchmarks/crash_store.py --rounds 50 --backend both     # writes benchmarks/results/crash_store.md
    python benchmarks/crash_store.py --rounds 5 --backend sqlite --no-report
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sidecar.engine.records import (  # noqa: E402
    CorrectionRecord,
    DigitalTwin,
    EventType,
    StateHistoryEntry,
    SystemType,
    TwinEvent,
)
from sidecar.engine.view import MetricSamples, Outbox, PredictionRows  # noqa: E402
from sidecar.store import Store, open_store, schema  # noqa: E402

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
T0 = 1_700_000_000.0
TWINS = 4
METRICS = ("cpu_usage", "memory_usage", "request_latency_ms", "error_rate")
TIMES = 64                 # samples per series per batch -> 4 * 4 * 64 = 1024 sample rows
HORIZONS = (300.0, 900.0, 1800.0, 3600.0)
MADE = 8                   # forecast times per batch -> 4 * 4 * 4 * 8 = 512 forecast rows
SAMPLES_PER_BATCH = TWINS * len(METRICS) * TIMES
PREDICTIONS_PER_BATCH = TWINS * len(METRICS) * len(HORIZONS) * MADE


# ------------------------------------------------------------------ the data


def batch_outbox(seq: int) -> Outbox:
    """Batch ``seq``: every row's key encodes ``seq`` so the checker can tell batches apart."""
    base = T0 + seq * 1000.0
    twins = [DigitalTwin(twin_id=f"twin_{j}", source_system=f"svc-{j}", system_type=SystemType.WEB_SERVICE,
                         created_at=T0, expected_state={"cpu_usage": float(seq)}) for j in range(TWINS)]
    snaps = [StateHistoryEntry.create(snapshot_id=f"b{seq}-t{j}", twin_id=f"twin_{j}", timestamp=base + j,
                                      state_snapshot={"expected_state": {"cpu_usage": float(seq)}, "seq": seq},
                                      metrics={"cpu_usage": 40.0 + j}, health_score=90.0,
                                      change_reason=f"batch {seq}") for j in range(TWINS)]
    tw = np.repeat([f"twin_{j}" for j in range(TWINS)], len(METRICS) * TIMES)
    me = np.tile(np.repeat(METRICS, TIMES), TWINS)
    ts = np.tile(base + np.arange(TIMES, dtype=float), TWINS * len(METRICS))
    samples = MetricSamples(twin_id=tuple(tw.tolist()), metric=tuple(me.tolist()), timestamp=ts,
                            value=np.full(ts.size, float(seq)))
    n_series = TWINS * len(METRICS)
    per = len(HORIZONS) * MADE
    ptw = np.repeat([f"twin_{j}" for j in range(TWINS)], len(METRICS) * per)
    pme = np.tile(np.repeat(METRICS, per), TWINS)
    made = np.tile(np.repeat(base + np.arange(MADE, dtype=float), len(HORIZONS)), n_series)
    hor = np.tile(np.array(HORIZONS), n_series * MADE)
    pred = np.full(made.size, float(seq))
    preds = PredictionRows(twin_id=tuple(ptw.tolist()), metric=tuple(pme.tolist()), made_at=made, horizon_s=hor,
                           predicted=pred, lower=pred - 1, upper=pred + 1,
                           failure_probability=np.full(made.size, np.nan), risk_factor=("",) * made.size)
    events = [TwinEvent(event_id=f"e{seq}-{j}", twin_id=f"twin_{j}", type=EventType.HEALTH_WARNING,
                        severity="warning", message=f"batch {seq}", timestamp=base + j) for j in range(TWINS)]
    corr = [CorrectionRecord(correction_id=f"c{seq}", twin_id="twin_0", alert_id=f"a{seq}", component="cpu",
                             action="recommend_scaling", details="scale", applied=False, reason="test",
                             timestamp="2026-01-01T00:00:00Z")]
    return Outbox(twins=twins, snapshots=snaps, samples=[samples], predictions=[preds], events=events,
                  corrections=corr)


def make_store(backend: str, target: str) -> Store:
    if backend == "sqlite":
        return open_store(path=target, env={})
    return open_store(url=PG_URL, schema=target, env={})


# ------------------------------------------------------------------ the child


async def child(backend: str, target: str, progress: str, first_seq: int) -> None:
    store = make_store(backend, target)
    fd = os.open(progress, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, b"O\n")                      # imports done: opening (and migrating) starts now
    t_open = time.perf_counter()
    await store.open()
    os.write(fd, f"R {time.perf_counter() - t_open:.6f}\n".encode())   # ready, and how long opening took
    seq = first_seq
    while True:
        out = batch_outbox(seq)
        os.write(fd, f"B {seq}\n".encode())
        await store.write(out)
        os.write(fd, f"A {seq}\n".encode())    # acknowledged: the store said it is durable
        seq += 1


# ------------------------------------------------------------------ the checker


async def _raw(backend: str, target: str, queries: list[tuple[str, str]], *args: Any) -> list[list[tuple[Any, ...]]]:
    """Run (sqlite, postgres) query pairs in one read transaction: one snapshot of the database.

    One snapshot matters: the server may still commit a killed child's last transaction (its COMMIT was
    already sent) while the checker reads; separate reads could then see half of a batch that is whole."""
    if backend == "sqlite":
        conn = sqlite3.connect(target)
        try:
            conn.execute("BEGIN")
            return [conn.execute(q, args[: q.count("?")]).fetchall() for q, _ in queries]
        finally:
            conn.close()
    import asyncpg

    pg = await asyncpg.connect(PG_URL, server_settings={"search_path": target})
    try:
        async with pg.transaction(isolation="repeatable_read", readonly=True):
            return [[tuple(r) for r in await pg.fetch(q, *args[: q.count("$")])] for _, q in queries]
    finally:
        await pg.close()


async def _settle(since: float) -> None:
    """Wait (up to 10 s) until the server has finished with the killed child's connections.

    A child killed right after sending COMMIT still gets that transaction committed, a moment later; the
    checks read several times and must not see the database change under them."""
    import asyncpg

    conn = await asyncpg.connect(PG_URL)
    try:
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'twin-sidecar/default' "
                "AND backend_start >= to_timestamp($1)", since):
            await asyncio.sleep(0.01)
    finally:
        await conn.close()


async def verify(backend: str, target: str, acked: set[int], since: float = 0.0) -> dict[str, int]:
    """Open the database after a crash and check every guarantee; AssertionError names a violation."""
    if backend == "postgres":
        await _settle(since)
    store = make_store(backend, target)
    await store.open()                                            # 1. it opens
    try:
        assert await store.schema_version() == schema.LATEST_VERSION, "schema not at the latest version"
        if backend == "sqlite":
            conn = sqlite3.connect(target)
            try:
                ok = conn.execute("PRAGMA integrity_check").fetchone()[0]
            finally:
                conn.close()
            assert ok == "ok", f"integrity_check: {ok}"

        def per_batch(table: str, col: str) -> tuple[str, str]:
            return (f"SELECT CAST(({col} - ?) / 1000 AS INTEGER), COUNT(*) FROM {table} GROUP BY 1",
                    f"SELECT floor(({col} - $1) / 1000)::bigint, COUNT(*) FROM {table} GROUP BY 1")

        q_snap, q_corr = "SELECT snapshot_id FROM twin_state_history", "SELECT correction_id FROM twin_corrections"
        rows = await _raw(backend, target, [per_batch("twin_metrics_history", "timestamp"),
                                            per_batch("twin_failure_predictions", "made_at"),
                                            per_batch("twin_events", "timestamp"), (q_snap, q_snap),
                                            (q_corr, q_corr)], T0)
        samples, preds, events = dict(rows[0]), dict(rows[1]), dict(rows[2])
        snap_ids = [r[0] for r in rows[3]]
        snaps = Counter(int(s.split("-")[0][1:]) for s in snap_ids)
        corr = Counter(int(r[0][1:]) for r in rows[4])
        present = set(snaps) | set(samples) | set(preds) | set(events) | set(corr)

        # 2. every acknowledged batch is there
        missing = sorted(acked - present)
        assert not missing, f"acknowledged batches missing after the crash: {missing[:10]}"
        # 3. nothing half-written: every batch present is whole
        for seq in sorted(present):
            got = (snaps.get(seq, 0), samples.get(seq, 0), preds.get(seq, 0), events.get(seq, 0), corr.get(seq, 0))
            want = (TWINS, SAMPLES_PER_BATCH, PREDICTIONS_PER_BATCH, TWINS, 1)
            assert got == want, f"batch {seq} half-written: (snapshots, samples, forecasts, events, corrections)" \
                                f" = {got}, expected {want}"
        # 4. every snapshot verifies, read back through the store
        verified = 0
        for j in range(TWINS):
            entries = await store.list_snapshots(f"twin_{j}", limit=10**9)
            verified += len(entries)
            assert all(e.verify() for e in entries)
        assert store.corrupt_snapshots_total == 0, "a snapshot failed its checksum"
        assert verified == len(snap_ids), f"{len(snap_ids) - verified} snapshots refused on read"
        # 5. each definition is the one from the newest committed batch (an upsert is never half-applied)
        newest = max(present) if present else None
        twins = {t.twin_id: t for t in await store.load_twins()}
        if newest is not None:
            for j in range(TWINS):
                exp = twins[f"twin_{j}"].definition["expected_state"]
                assert exp == {"cpu_usage": float(newest)}, f"twin_{j} definition {exp} != batch {newest}"
        return {"batches_present": len(present), "snapshots_verified": verified,
                "committed_not_acked": len(present - acked)}
    finally:
        await store.close()


# ------------------------------------------------------------------ the rounds


@dataclass
class RoundResult:
    round: int
    kill_after_s: float
    phase: str                    # startup | between-writes | mid-write
    acked_this_round: int
    batches_present: int
    committed_not_acked: int
    ok: bool
    error: str = ""


@dataclass
class RunResult:
    backend: str
    rounds: list[RoundResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rounds)


def _progress(path: Path) -> tuple[bool, list[tuple[str, int]]]:
    """Whether the child got ready, and its marks in order: ("O", -1) opening, ("B"/"A", seq) batches."""
    if not path.exists():
        return False, []
    ready, marks = False, []
    for line in path.read_text().splitlines():
        if line.startswith("R"):
            ready = True
        elif line == "O":
            marks.append(("O", -1))
        elif line[:2] in ("B ", "A ") and line[2:].isdigit():
            marks.append((line[0], int(line[2:])))
    return ready, marks


def _open_seconds(path: Path) -> float | None:
    """How long the child's store.open() took, as the child measured it (None if it never got ready)."""
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.startswith("R "):
            return float(line[2:])
    return None


def run(backend: str, rounds: int, *, seed: int = 0, workdir: Path | None = None, log: Any = print,
        until: Any = None, max_rounds: int | None = None) -> RunResult:
    """``rounds`` crash-and-check rounds on one database; returns what happened in each.

    With ``until`` (a predicate on the result so far), keeps going past ``rounds`` until it holds or
    ``max_rounds`` is reached: a short test can insist on having killed at least one write in flight.
    """
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix=f"crash_{backend}_", dir=workdir))
    target = str(tmp / "twins.db") if backend == "sqlite" else f"crash_{uuid.uuid4().hex[:12]}"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = RunResult(backend)
    acked: set[int] = set()
    open_s: list[float] = []       # how long the child's store.open() took, in rounds that got that far
    started = time.perf_counter()
    try:
        r = -1
        while True:
            r += 1
            if r >= rounds and (until is None or until(result) or r >= (max_rounds or rounds)):
                break
            progress = tmp / f"progress-{r}.txt"
            first_seq = r * 100_000
            proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "child", "--backend", backend,
                                     "--target", target, "--progress", str(progress), "--first-seq",
                                     str(first_seq)], env=env, cwd=ROOT, stderr=subprocess.PIPE)
            t_spawn = time.perf_counter()
            spawned_at = time.time() - 1.0        # wall clock, for the server's backend_start (clock skew margin)
            early = r < 3 or rng.random() < 0.15          # some kills land in start-up and migration
            if early:
                # aim inside store.open(): from the child's "opening" mark, a random part of how long opening
                # took in earlier rounds (a fixed delay after spawn missed it whenever imports were quick)
                while (not any(m == "O" for m, _ in _progress(progress)[1]) and proc.poll() is None
                       and time.perf_counter() - t_spawn < 60):
                    time.sleep(0.001)
                time.sleep(rng.uniform(0.0, 1.2 * (min(open_s) if open_s else 0.05)))
            else:
                while not _progress(progress)[0] and proc.poll() is None and time.perf_counter() - t_spawn < 60:
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.5))
            ready, marks = _progress(progress)
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"child exited by itself (rc={proc.returncode}): {err[-2000:]}")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            if proc.stderr:
                proc.stderr.close()
            kill_after = time.perf_counter() - t_spawn
            _, marks = _progress(progress)   # re-read: lines written up to the kill
            if (took := _open_seconds(progress)) is not None:
                open_s.append(took)
            marks = [m for m in marks if m[0] != "O"]
            acks = {s for m, s in marks if m == "A"}
            phase = "startup" if not ready else ("mid-write" if marks and marks[-1][0] == "B" else "between-writes")
            acked |= acks
            try:
                info = asyncio.run(verify(backend, target, acked, spawned_at))
                rr = RoundResult(r, kill_after, phase, len(acks), info["batches_present"],
                                 info["committed_not_acked"], True)
            except AssertionError as e:
                rr = RoundResult(r, kill_after, phase, len(acks), -1, -1, False, str(e))
            result.rounds.append(rr)
            log(f"[{backend}] round {r + 1}: killed after {kill_after:.2f}s ({phase}), "
                f"acked {rr.acked_this_round} batches, present {rr.batches_present}, "
                f"{'OK' if rr.ok else 'VIOLATION: ' + rr.error}")
    finally:
        result.seconds = time.perf_counter() - started
        if backend == "postgres":
            asyncio.run(_drop_schema(target))
        for p in tmp.glob("*"):
            p.unlink()
        tmp.rmdir()
    return result


async def _drop_schema(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


def pg_available() -> bool:
    async def probe() -> None:
        import asyncpg

        conn = await asyncpg.connect(PG_URL, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception:
        return False
    return True


def report(results: list[RunResult], *, seed: int, command: str) -> str:
    lines = ["# kill -9 during heavy store writes", "",
             f"Command: `{command}`  ", f"Seed: {seed}  ", f"Machine: {platform.machine()}, {os.cpu_count()} cores, "
             f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}  ",
             f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             f"Each batch (one `store.write`, one transaction): {TWINS} definitions, {TWINS} snapshots, "
             f"{SAMPLES_PER_BATCH} samples, {PREDICTIONS_PER_BATCH} forecast rows, {TWINS} events, 1 correction.",
             "After every kill the parent opens the database and checks: it opens (SQLite: integrity_check ok), "
             "every acknowledged batch is present and whole, every snapshot verifies, every batch present is "
             "whole, and the definitions match the newest committed batch.", "",
             "| backend | rounds | killed in start-up | killed mid-write | killed between writes | batches acked "
             "| committed, ack lost | violations | wall time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        phases = Counter(r.phase for r in res.rounds)
        lines.append(f"| {res.backend} | {len(res.rounds)} | {phases['startup']} | {phases['mid-write']} | "
                     f"{phases['between-writes']} | {sum(r.acked_this_round for r in res.rounds)} | "
                     f"{res.rounds[-1].committed_not_acked if res.rounds else 0} | "
                     f"{sum(not r.ok for r in res.rounds)} | {res.seconds:.0f} s |")
    for res in results:
        bad = [r for r in res.rounds if not r.ok]
        for r in bad:
            lines.append(f"\nVIOLATION {res.backend} round {r.round}: {r.error}")
    lines += ["", "\"mid-write\": the child's last progress mark was \"B n\" (inside `store.write`) when SIGKILL "
              "arrived; \"committed, ack lost\": batches on disk whose acknowledgement the child never got to record "
              "(allowed: the guarantee is about acknowledged batches).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd")
    c = sub.add_parser("child")
    c.add_argument("--backend", required=True, choices=("sqlite", "postgres"))
    c.add_argument("--target", required=True)
    c.add_argument("--progress", required=True)
    c.add_argument("--first-seq", type=int, required=True)
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--seed", type=int, default=20261125)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "crash_store.md"))
    p.add_argument("--no-report", action="store_true")
    args = p.parse_args(argv)
    if args.cmd == "child":
        asyncio.run(child(args.backend, args.target, args.progress, args.first_seq))
        return 0
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    results = []
    for b in backends:
        if b == "postgres" and not pg_available():
            print(f"postgres: no server answers at {PG_URL}; skipped", file=sys.stderr)
            continue
        results.append(run(b, args.rounds, seed=args.seed))
    if not args.no_report:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = "python benchmarks/crash_store.py " + " ".join(argv if argv is not None else sys.argv[1:])
        out.write_text(report(results, seed=args.seed, command=cmd.strip()))
        print(f"wrote {out}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
