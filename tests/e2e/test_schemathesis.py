"""Schemathesis against a real sidecar (``twin-sidecar run``, a real Prometheus behind it): a few hundred
generated requests from the OpenAPI document, every check on, no server error and no answer its schema
does not allow.

The run is bounded (``--max-examples`` per operation and phase) and its seed fixed, so it takes about the
same time each run (well under a minute); its JSON report says how many cases ran and what failed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers.prom import PromEnv

from sidecar.testing import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: Cases per operation and phase (10 operations): a few hundred in all, within the time budget.
MAX_EXAMPLES = 20
#: The run takes ~20-40 s on two cores; beyond this it is stuck.
TIMEOUT_S = 180
TOKEN = "schemathesis-token"

#: Which answers a request the schema allows may get. A schema cannot know a twin's metric names (PUT
#: expected with another name is a 400 naming it), the simulation's rules across fields (a fault is needed,
#: required_multiplier <= max_multiplier) nor that events' before_id goes only with before: those three
#: operations may answer such requests 400, and only them.
CONFIG = """
[[operations]]
include-operation-id = "listEvents"
[operations.checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "404"]

[[operations]]
include-operation-id = "setExpectedState"
[operations.checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "404"]

[[operations]]
include-operation-id = "simulateScenario"
[operations.checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "404"]
"""


@pytest.fixture(scope="module")
def sidecar(prom_env: PromEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("schemathesis")
    port = free_port()
    rules = tmp / "rules.yaml"
    (tmp / "token").write_text(TOKEN)
    rules.write_text(yaml.safe_dump({
        "prometheus": {"url": prom_env.url}, "interval": "1s", "backfill": "0",
        "server": {"listen": f"127.0.0.1:{port}", "auth_token_file": str(tmp / "token")},
        "storage": {"path": str(tmp / "twins.db")},
        "twins": [{"name": "svc", "metrics": {"cpu_usage": 'test_gauge{k="a"} * 10', "load1": 'test_gauge{k="a"}'},
                   "limits": {"cpu_usage": 90}}],
    }))
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    proc = subprocess.Popen([sys.executable, "-m", "sidecar.cli", "run", "--config", str(rules), "--log-format",
                             "text"], stdout=subprocess.DEVNULL, stderr=open(tmp / "sidecar.log", "wb"),  # noqa: SIM115
                            env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp / "sidecar.log").read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the sidecar did not get ready"
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def st_binary() -> str:
    found = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if found is None:
        pytest.fail("schemathesis is not installed: pip install -e '.[dev]'", pytrace=False)
    return found


def test_schemathesis_finds_no_server_error_and_no_schema_violation(sidecar: str, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    proc = subprocess.run(
        [st_binary(), "--config-file", str(config), "run", f"{sidecar}/api/v1/openapi.json", "--checks", "all",
         "--max-examples", str(MAX_EXAMPLES), "--seed", "18", "--workers", "2",
         "--no-shrink", "--request-timeout", "20", "-H", f"Authorization: Bearer {TOKEN}",
         "--report", "json", "--report-json-path", str(report)],
        capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    data: dict[str, Any] = json.loads(report.read_text())
    cases = int(data["test_cases"]["generated"])
    print(f"schemathesis: {cases} cases, {data['running_time']:.1f}s, failures: {data['failures']}")
    assert cases >= 200, f"only {cases} cases ran\n{out[-4000:]}"
    kinds = {f["type"] for f in data["failures"]}
    assert "ServerError" not in kinds, out[-8000:]                      # no 5xx
    assert not kinds & {"JsonSchemaError", "MalformedJson", "UndefinedStatusCode", "UndefinedContentType",
                        "MissingHeaders"}, out[-8000:]                   # no answer the schema does not allow
    assert data["failures"] == [] and data["errors"] == [] and proc.returncode == 0, out[-8000:]
