"""The assembled service under test: a one-twin rules file, waiting for a condition, answers checked against
the OpenAPI document."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from sidecar.openapi import OPENAPI

_REFS = Registry().with_resource("urn:openapi", DRAFT202012.create_resource(OPENAPI))


def one_twin_rules(tmp_path: Path, prom_url: str, db: Path) -> Path:
    """A rules file: one twin ``svc`` whose cpu is the session target's ``test_gauge{k="a"}``, a round a second."""
    p = tmp_path / "rules.yaml"
    p.write_text(yaml.safe_dump({
        "prometheus": {"url": prom_url}, "interval": "1s", "backfill": "0",
        "server": {"listen": "127.0.0.1:0"}, "storage": {"path": str(db)},
        "twins": [{"name": "svc", "metrics": {"cpu_usage": 'test_gauge{k="a"}'}}],
    }))
    return p


async def wait_for(cond: Callable[[], bool], timeout: float = 30.0, poll: float = 0.05) -> None:
    """Until ``cond()`` holds, polling; fails the test after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(poll)


def schema_for(path: str, method: str, status: int) -> dict[str, Any]:
    """The OpenAPI document's response schema of one operation and status."""
    op = OPENAPI["paths"][path][method]
    schema: dict[str, Any] = op["responses"][str(status)]["content"]["application/json"]["schema"]
    return schema


def assert_matches(body: Any, path: str, method: str, status: int) -> None:
    """The body is what the OpenAPI document promises for this operation and status."""
    schema = {"$ref": "urn:openapi#" + _pointer(schema_for(path, method, status))}
    Draft202012Validator(schema, registry=_REFS).validate(body)


def _pointer(schema: dict[str, Any]) -> str:
    ref = schema["$ref"]
    assert ref.startswith("#")
    return str(ref[1:])
