"""The OpenAPI document: valid OpenAPI 3.1, and it lists exactly the routes the server has."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from sidecar.engine.records import EventType
from sidecar.engine.twin import TwinEngine
from sidecar.openapi import OPENAPI
from sidecar.server import build_app
from sidecar.status import ServiceStatus

WRITES = {("post", "/api/v1/twins/{twin}/rollback"), ("put", "/api/v1/twins/{twin}/expected"),
          ("post", "/api/v1/twins/{twin}/simulate")}


def test_document_is_valid_openapi_3_1() -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(OPENAPI)
    assert OPENAPI["openapi"].startswith("3.1")


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    app = build_app(facade=TwinEngine(), status=ServiceStatus(), registry=CollectorRegistry(),
                    engine_lock=asyncio.Lock(), auth_token=None, max_body_bytes=1024)
    served = {(r.method.lower(), r.resource.canonical) for r in app.router.routes()
              if r.method != "HEAD" and r.resource is not None}
    documented = {(m, p) for p, ops in OPENAPI["paths"].items() for m in ops}
    assert served == documented


def test_state_changing_routes_declare_bearer_auth_and_401() -> None:
    for path, ops in OPENAPI["paths"].items():
        for method, op in ops.items():
            if (method, path) in WRITES:
                assert op["security"] == [{"bearerAuth": []}]
                assert {"400", "401", "404", "413"} <= set(op["responses"])
            else:
                assert "security" not in op, f"{method} {path} is a read and stays open"


def test_event_types_match_the_engine() -> None:
    documented = OPENAPI["components"]["schemas"]["Event"]["properties"]["type"]["enum"]
    assert set(documented) == {e.value for e in EventType}


def test_scenario_fields_match_what_the_simulator_accepts() -> None:
    from sidecar.engine.whatif import scenario
    schemas = OPENAPI["components"]["schemas"]
    mapping = schemas["Scenario"]["discriminator"]["mapping"]
    assert list(mapping) == list(scenario.SCENARIO_TYPES)
    for kind, ref in mapping.items():     # each type: exactly the fields the simulator knows for it
        schema = schemas[ref.rsplit("/", 1)[1]]
        assert set(schema["properties"]) == scenario.SCENARIO_KEYS[kind] | scenario.COMMON_KEYS, kind
        assert schema["properties"]["type"] == {"const": kind} and schema["additionalProperties"] is False
