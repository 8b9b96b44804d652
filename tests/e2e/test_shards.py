"""Shards over one Prometheus and one PostgreSQL: three real sidecar processes twin every twin exactly once, and
restarted as two, every twin carries on where it was (same id, its history, hand-set expected state and learnt
models), none retired along the way.

The processes are what the chart runs: ``python -m sidecar.app``, one ``TWIN_SIDECAR_REPLICA`` for all, the
shard from ``TWIN_SIDECAR_SHARD_INDEX`` (a StatefulSet pod name) and ``TWIN_SIDECAR_SHARD_COUNT``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from helpers.prom import PromEnv

from sidecar.collect.shard import shard_of_key, shard_of_name
from sidecar.config import SHARD_COUNT_ENV, SHARD_INDEX_ENV
from sidecar.testing import free_port, wait_ready

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PODS = [f"p{n:02d}" for n in range(24)]
STATIC = ["static-a", "static-b", "static-c"]
NAMES = {*(f"pods@{p}" for p in PODS), *STATIC}
HAND_SET = ["pods@p00", "pods@p01", "pods@p02", "pods@p03", "static-a"]


def _rules(tmp_path: Path, prom_url: str, port: int) -> Path:
    path = tmp_path / f"rules-{port}.yaml"
    path.write_text(yaml.safe_dump({
        "prometheus": {"url": prom_url}, "interval": "1s", "backfill": "0",
        "server": {"listen": f"127.0.0.1:{port}"},
        "twins": [{"name": "pods", "discover": "shard_load", "name_labels": ["pod"],
                   "metrics": {"cpu_usage": "max by (pod) (shard_load)"}},
                  *({"name": n, "metrics": {"cpu_usage": 'test_gauge{k="a"}'}} for n in STATIC)],
    }))
    return path


class Shards:
    """``count`` sidecar processes, shard i of count each, their stderr (JSON logs) kept in files."""

    def __init__(self, tmp_path: Path, prom_url: str, db_url: str, count: int, run: str) -> None:
        self.count = count
        self.procs: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []
        self.logs: list[Path] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_SIDECAR_")}
        env.update({"DATABASE_URL": db_url, "TWIN_SIDECAR_REPLICA": "twins", SHARD_COUNT_ENV: str(count)})
        for i in range(count):
            port = free_port()
            log = tmp_path / f"{run}-{i}.log"
            self.logs.append(log)
            self.urls.append(f"http://127.0.0.1:{port}")
            with log.open("wb") as err:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "sidecar.app", "--config", str(_rules(tmp_path, prom_url, port))],
                    cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
                    env={**env, SHARD_INDEX_ENV: f"twins-{i}"}))       # the pod name; its ordinal is the index

    def wait_ready(self) -> None:
        for url, proc in zip(self.urls, self.procs, strict=True):
            wait_ready(url, proc)

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        assert [proc.wait(timeout=30) for proc in self.procs] == [0] * self.count

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def logged(self, msg: str) -> list[dict[str, Any]]:
        out = []
        for log in self.logs:
            for line in log.read_text().splitlines():
                if line.startswith("{") and (rec := json.loads(line)).get("msg") == msg:
                    out.append(rec)
        return out


@contextmanager
def running(shards: Shards) -> Iterator[Shards]:
    try:
        shards.wait_ready()
        yield shards
    finally:
        shards.kill()


async def _twins_by_shard(http: httpx.AsyncClient, shards: Shards) -> list[dict[str, dict[str, Any]]]:
    out = []
    for url in shards.urls:
        listed = (await http.get(f"{url}/api/v1/twins")).json()
        out.append({t["name"]: t for t in listed["twins"]})
    return out


async def _all_twinned(http: httpx.AsyncClient, shards: Shards, samples: int) -> list[dict[str, dict[str, Any]]]:
    """Every twin on some shard with at least ``samples`` samples; the shards' twins as each lists them."""
    deadline = time.monotonic() + 30
    while True:
        per = await _twins_by_shard(http, shards)
        found = {n for p in per for n in p}
        if found >= NAMES:
            full = [(await http.get(f"{shards.urls[i]}/api/v1/twins/{n}")).json() for i, p in enumerate(per)
                    for n in p]
            if all(t["metrics"]["cpu_usage"]["samples"] >= samples for t in full):
                return per
        assert time.monotonic() < deadline, (sorted(NAMES - found), [sorted(p) for p in per])
        await asyncio.sleep(0.3)


def _expected_shard(name: str, count: int) -> int:
    if name.startswith("pods@"):
        return shard_of_key((("pod", name.split("@", 1)[1]),), count)
    return shard_of_name(name, count)


def _check_split(per: list[dict[str, dict[str, Any]]], count: int) -> None:
    """Each twin exactly once, on the shard its naming labels (or name) hash to."""
    names = [n for p in per for n in p]
    assert sorted(names) == sorted(NAMES), "a twin twinned twice, or not at all"
    for i, p in enumerate(per):
        assert all(_expected_shard(n, count) == i for n in p), (i, sorted(p))
    assert all(p for p in per), "a shard without twins: 27 twins should reach all"


async def test_three_shards_twin_each_twin_once_and_two_carry_every_twin_on(
        tmp_path: Path, prom_env: PromEnv, pg_url: str) -> None:
    for n, pod in enumerate(PODS):
        prom_env.target.set("shard_load", 10.0 + n, pod=pod)
    prom_env.prom.wait_for_series("shard_load")
    try:
        await _run(tmp_path, prom_env, pg_url)
    finally:
        for pod in PODS:
            prom_env.target.remove("shard_load", pod=pod)


async def _run(tmp_path: Path, prom_env: PromEnv, pg_url: str) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        with running(Shards(tmp_path, prom_env.url, pg_url, 3, "three")) as three:
            for i, url in enumerate(three.urls):
                assert (await http.get(f"{url}/healthz")).json()["shard"] == {"index": i, "count": 3}
                assert (await http.get(f"{url}/readyz")).json()["shard"] == {"index": i, "count": 3}
            per = await _all_twinned(http, three, samples=4)
            _check_split(per, 3)
            where = {n: i for i, p in enumerate(per) for n in p}
            for n, name in enumerate(HAND_SET):
                r = await http.put(f"{three.urls[where[name]]}/api/v1/twins/{name}/expected",
                                   json={"cpu_usage": 40.0 + n})
                assert r.status_code == 200 and r.json()["stored"], r.text
                other = three.urls[(where[name] + 1) % 3]          # another shard does not have it
                assert (await http.get(f"{other}/api/v1/twins/{name}")).status_code == 404
            before = {n: (await http.get(f"{three.urls[i]}/api/v1/twins/{n}")).json() for n, i in where.items()}
            three.stop()
        stopped_at = time.time()
        conn = await asyncpg.connect(pg_url)
        try:
            defs = await conn.fetch("SELECT twin_id, owner, retired_at FROM twin_definitions")
            states = await conn.fetchval("SELECT count(*) FROM twin_model_state")
        finally:
            await conn.close()
        assert len(defs) == len(NAMES) and {r["owner"] for r in defs} == {"twins"}
        assert all(r["retired_at"] is None for r in defs), "a shard retired another shard's twin"
        assert states == len(NAMES), "every twin's models saved at shutdown, by the shard that had it"

        with running(Shards(tmp_path, prom_env.url, pg_url, 2, "two")) as two:
            per = await _all_twinned(http, two, samples=1)
            _check_split(per, 2)
            moved = [n for n in NAMES if _expected_shard(n, 2) != where[n]]
            assert moved, "some twins change process from three shards to two"
            restored = two.logged("model state restored")
            assert sum(r["saved"] for r in restored) == len(NAMES)      # each twin's saved models, read once
            assert sum(r["twins"] for r in restored) == len(NAMES)      # and put back into its models
            for i, p in enumerate(per):
                for name in p:
                    now = (await http.get(f"{two.urls[i]}/api/v1/twins/{name}")).json()
                    was = before[name]
                    assert (now["twin_id"], now["created_at"]) == (was["twin_id"], was["created_at"]), name
                    assert now["expected_state"] == was["expected_state"], name
                    # the stored samples came back: more than the new process has taken itself
                    assert now["metrics"]["cpu_usage"]["samples"] >= was["metrics"]["cpu_usage"]["samples"], name
                    assert now["snapshots"] >= was["snapshots"], name
            assert {n for n in HAND_SET if before[n]["expected_state"]} == set(HAND_SET)
            two.stop()
    conn = await asyncpg.connect(pg_url)
    try:
        defs = await conn.fetch("SELECT retired_at FROM twin_definitions")
        saved = await conn.fetch("SELECT saved_at FROM twin_model_state")
    finally:
        await conn.close()
    assert len(defs) == len(NAMES) and all(r["retired_at"] is None for r in defs)
    assert len(saved) == len(NAMES) and all(r["saved_at"] > stopped_at for r in saved), \
        "every twin's models saved again, by its new shard"
