"""kill -9 straight after a 200 loses nothing, against a real sidecar process.

The sidecar runs as its own process (``python -m sidecar.app``) on a SQLite file, fed by the session's
real Prometheus. Each run checks that the previous run's acknowledged change came back, makes a new one,
and is killed with SIGKILL the moment the 200 arrives: no shutdown, no flush.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from helpers.prom import PromEnv

from sidecar.testing import free_port, wait_ready

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RUNS = 6



def test_a_200_survives_kill_9_every_time(tmp_path: Path, prom_env: PromEnv) -> None:
    port = free_port()
    db = tmp_path / "twins.db"
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({
        "prometheus": {"url": prom_env.url}, "interval": "1s", "backfill": "0",
        "server": {"listen": f"127.0.0.1:{port}"}, "storage": {"path": str(db)},
        "twins": [{"name": "svc", "metrics": {"cpu_usage": 'test_gauge{k="a"}'}}],
    }))
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TWIN_SIDECAR_REPLICA")}
    acked: tuple[float, str] | None = None           # the last value answered 200, and its snapshot
    for run in range(RUNS):
        proc = subprocess.Popen([sys.executable, "-m", "sidecar.app", "--config", str(rules)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            wait_ready(url, proc)
            if acked is not None:
                value, snapshot_id = acked
                status = httpx.get(f"{url}/api/v1/twins/svc", timeout=5).json()
                assert status["expected_state"] == {"cpu_usage": value}, (run, status["expected_state"])
                history = httpx.get(f"{url}/api/v1/twins/svc/history", params={"limit": 1000}, timeout=5).json()
                assert snapshot_id in {s["snapshot_id"] for s in history["snapshots"]}, run
            value = 100.0 + run
            resp = httpx.put(f"{url}/api/v1/twins/svc/expected", json={"cpu_usage": value}, timeout=10)
            proc.send_signal(signal.SIGKILL)            # the moment the answer is in
            assert resp.status_code == 200 and resp.json()["stored"] is True, resp.text
            acked = (value, resp.json()["snapshot_id"])
            assert proc.wait(timeout=10) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        conn = sqlite3.connect(db)                      # and the file itself, read before any restart
        try:
            assert conn.execute("SELECT 1 FROM twin_state_history WHERE snapshot_id = ?",
                                (acked[1],)).fetchone() is not None
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            conn.close()
