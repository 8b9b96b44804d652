"""The OpenAPI 3.1 document of the sidecar's HTTP surface, as data (served at /api/v1/openapi.json).

Schemas are JSON Schema 2020-12 (what OpenAPI 3.1 uses), so the tests
validate real responses against them: the document cannot drift from the
code without a test failing.
"""

from __future__ import annotations

from typing import Any

_NUM_OR_NULL: dict[str, Any] = {"type": ["number", "null"]}
_STR_OR_NULL: dict[str, Any] = {"type": ["string", "null"]}
_TIME = {"type": "string", "format": "date-time", "description": "RFC 3339, UTC"}
_TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
_NUM_MAP = {"type": "object", "additionalProperties": {"type": "number"}}
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str], props: dict[str, Any], *, extra: bool = True, **kw: Any) -> dict[str, Any]:
    """An object schema; ``extra`` leaves room for fields the engine adds later (readers ignore them)."""
    return {"type": "object", "required": required, "properties": props, "additionalProperties": extra, **kw}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(schema)}}}


def _scenario(kind: str, required: list[str], props: dict[str, Any]) -> dict[str, Any]:
    """One scenario type: its own fields and the common ones (name, description, seed), nothing else."""
    common = {"type": {"const": kind}, "name": {"type": "string"}, "description": {"type": "string"},
              "seed": {"type": "integer", "minimum": 0,
                       "description": "Integral numbers such as 7.0 are integers here too."}}
    return _obj(["type", *required], {**common, **props}, extra=False)


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_TWIN_PARAM = {"name": "twin", "in": "path", "required": True, "schema": {"type": "string"},
               "description": "Twin id (`twin_<hex>`) or name (its source system, e.g. `checkout-api`)."}
_TIME_QUERY = {"oneOf": [{"type": "number"}, {"type": "string", "format": "date-time"}],
               "description": "Unix seconds or RFC 3339 (no zone means UTC)."}

_WRITE_ERRORS = {
    "400": _error("The body is not JSON, not an object, or a field is invalid; the message names the field."),
    "401": _error("An auth token is configured and the request lacks `Authorization: Bearer <token>` "
                  "or carries a wrong one."),
    "404": _error("No twin with that id or name."),
    "413": _error("The body exceeds the configured size limit (`server.max_body_bytes`)."),
    "415": _error("The body is not sent as `Content-Type: application/json` (a cross-site form cannot send "
                  "that type, so it cannot change a twin even while writes are open)."),
}

_STORED = {"type": "boolean",
           "description": "True: the change is committed to the history store and survives a crash or kill. "
                          "False (with 202): applied and served, but still in the write buffer; it is written, "
                          "in order, when the database answers. False with 200 only without any store "
                          "(library use)."}


def _accepted(result: str) -> dict[str, Any]:
    """A 202 body: the 200 body with ``stored`` false and a message saying why."""
    return {"allOf": [_ref(result), {"type": "object", "required": ["stored", "message"], "properties": {
        "stored": {"const": False},
        "message": {"type": "string", "description": "Applied in memory, not yet stored: the database is "
                                                     "unavailable or slower than `storage.commit_wait`. "
                                                     "Do not retry."}}}]}


def _not_stored(result: str) -> dict[str, Any]:
    return _json(_ref(result), "Applied, but not yet stored: the history database is down or did not commit "
                               "within `storage.commit_wait` (default 3s). The change is kept in the write "
                               "buffer and written in order when the database answers; a crash before then "
                               "loses it. Do not retry.")


_SCHEMAS: dict[str, Any] = {
    "Error": _obj(["error", "status"], {
        "error": {"type": "string", "description": "What went wrong; names the field for a bad request."},
        "status": {"type": "integer"},
    }, extra=False),
    "TwinSummary": _obj(
        ["twin_id", "name", "system_type", "health_score", "health_status", "drift_detected", "last_sync",
         "active_alerts", "labels"], {
            "twin_id": {"type": "string"}, "name": {"type": "string"}, "system_type": {"type": "string"},
            "health_score": {"type": "number", "minimum": 0, "maximum": 100},
            "health_status": {"enum": ["healthy", "warning", "critical"]},
            "drift_detected": {"type": "boolean"}, "last_sync": _TIME_OR_NULL,
            "active_alerts": {"type": "integer", "minimum": 0}, "labels": _STR_MAP,
        }),
    "TwinList": _obj(["twins", "count"], {
        "twins": {"type": "array", "items": _ref("TwinSummary")}, "count": {"type": "integer"}}, extra=False),
    "MetricState": _obj(
        ["value", "expected", "expected_source", "divergence_percent", "divergence_ratio", "severity",
         "anomaly_score", "limit", "breach_eta_seconds"], {
            "value": _NUM_OR_NULL,
            "expected": {"type": ["number", "null"], "description": "Hand-set, or learned from the forecast"},
            "expected_source": {"enum": ["manual", "learned"]},
            "divergence_percent": _NUM_OR_NULL,
            "divergence_ratio": {"type": ["number", "null"],
                                 "description": "(actual - expected) / max(|expected|, floor): the floor is the "
                                                "series' own typical move or 2 % of its limit"},
            "severity": {"enum": ["none", "low", "medium", "high", "critical"]},
            "anomaly_score": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "limit": _NUM_OR_NULL, "threshold_percent": _NUM_OR_NULL,
            "breach_eta_seconds": {"type": ["number", "null"],
                                   "description": "Forecast time until the limit is crossed; null: none "
                                                  "within the longest horizon."},
            "samples": {"type": "integer"},
            "direction": {"enum": ["up", "down", "both"],
                          "description": "Which way a divergence of this metric hurts (the rules' `direction`)"},
            "divergence_harmful": {"type": ["boolean", "null"],
                                   "description": "Whether the divergence lies the way that hurts (false: at most "
                                                  "low, no alert); null without a divergence"},
            "advice": {"type": ["string", "null"],
                       "description": "What to do about the divergence, in the direction it went"},
        }),
    "MetricForecast": _obj(["predicted", "lower", "upper", "confidence", "model"], {
        "predicted": _NUM_OR_NULL, "lower": _NUM_OR_NULL, "upper": _NUM_OR_NULL,
        "confidence": {"type": ["number", "null"], "minimum": 0, "maximum": 1}, "model": {"type": "string"},
        "regime": {"enum": ["backtested", "cold_start", "level_shift"],
                   "description": "What the forecast rests on: its horizon's own running backtest, a cold start "
                                  "(shorter horizons' or one-step scores, wider bounds), or a level shift (the "
                                  "new level, until the models have learnt it)"},
    }),
    "StatePrediction": _obj(
        ["prediction_time", "horizon_seconds", "predicted_metrics", "confidence", "contributing_trends",
         "risk_factors", "metrics"], {
            "prediction_time": _TIME, "horizon_seconds": {"type": "number"},
            "predicted_metrics": _NUM_MAP,
            "confidence": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "contributing_trends": {"type": "array", "items": {"type": "string"},
                                    "examples": [["CPU increasing by 0.75 percentage points per minute"]]},
            "risk_factors": {"type": "array", "items": {"type": "string"},
                             "examples": [["CPU may reach 95% in 30 minutes"]]},
            "metrics": {"type": "object", "additionalProperties": _ref("MetricForecast")},
        }),
    "DivergenceAlert": _obj(
        ["alert_id", "twin_id", "component", "metric", "expected_value", "actual_value", "divergence_percent",
         "severity", "recommended_correction", "auto_correct_eligible", "timestamp"], {
            "alert_id": {"type": "string"}, "twin_id": {"type": "string"}, "component": {"type": "string"},
            "metric": {"type": "string"}, "expected_value": _NUM_OR_NULL, "actual_value": _NUM_OR_NULL,
            "divergence_percent": _NUM_OR_NULL, "severity": {"enum": ["low", "medium", "high", "critical"]},
            "recommended_correction": {"type": "string"}, "auto_correct_eligible": {"type": "boolean"},
            "timestamp": _TIME, "expected_source": {"enum": ["manual", "learned"]},
        }),
    "CorrectionRecord": _obj(
        ["correction_id", "twin_id", "alert_id", "component", "action", "details", "applied", "reason",
         "timestamp"], {
            "correction_id": {"type": "string"}, "twin_id": {"type": "string"},
            "alert_id": {"type": "string"},
            "component": {"type": "string"},
            "action": {"type": "string", "examples": ["recommend_scaling", "update_expected_state",
                                                      "manual_investigation"]},
            "details": {"type": "string"}, "applied": {"type": "boolean"}, "reason": {"type": "string"},
            "timestamp": _TIME,
        }),
    "TwinStatus": _obj(
        ["twin_id", "name", "system_type", "health_score", "health_status", "drift_detected", "last_sync",
         "current_metrics", "expected_state", "metrics", "state_predictions", "divergence_alerts",
         "corrections"], {
            "twin_id": {"type": "string"}, "name": {"type": "string"}, "source_system": {"type": "string"},
            "system_type": {"type": "string"}, "labels": _STR_MAP, "created_at": _TIME,
            "last_sync": _TIME_OR_NULL, "last_source": _STR_OR_NULL,
            "sync_counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "refused_syncs": {"type": "integer"}, "metrics_count": {"type": "integer"},
            "health_score": {"type": "number", "minimum": 0, "maximum": 100},
            "health_status": {"enum": ["healthy", "warning", "critical"]},
            "drift_detected": {"type": "boolean"},
            "current_metrics": _NUM_MAP,
            "expected_state": {"oneOf": [_NUM_MAP, {"type": "null"}],
                               "description": "Hand-set expected values (null: all learned)."},
            "auto_correction_enabled": {"type": "boolean"},
            "thresholds": _NUM_MAP, "limits": _NUM_MAP,
            "metrics": {"type": "object", "additionalProperties": _ref("MetricState")},
            "state_predictions": {"type": "array", "items": _ref("StatePrediction"),
                                  "description": "One per horizon, with trends and risk factors."},
            "active_predictions": {"type": "integer"}, "active_risk_predictions": {"type": "integer"},
            "divergence_alerts": {"type": "array", "items": _ref("DivergenceAlert")},
            "corrections": {"type": "array", "items": _ref("CorrectionRecord"),
                            "description": "The newest correction attempts, applied or not."},
            "snapshots": {"type": "integer", "description": "Snapshots kept in memory."},
            "latest_snapshot_id": _STR_OR_NULL,
            "replicas": {**_ref("ReplicaAdvice"), "description": "Only for a twin with max_replicas."},
        }),
    "ReplicaAdvice": _obj(
        ["trustworthy", "reason", "horizons"], {
            "trustworthy": {"type": "boolean", "description": "false: twin_recommended_replicas is not exported"},
            "reason": {"type": "string", "description": "Why the recommendation is withheld, or what it rests on."},
            "replicas_now": {"type": ["integer", "null"]},
            "capacity_requests_per_second": _NUM_OR_NULL,
            "scale_down_stabilisation_s": {"type": "number"},
            "scale_quantile": {"type": "number", "description": "The forecast quantile the replicas are sized for."},
            "horizons": {"type": "array", "items": _obj(["horizon_s", "replicas"], {
                "horizon_s": {"type": "number"}, "replicas": {"type": ["integer", "null"]},
                "replicas_stabilised": {"type": "integer", "description": "What /metrics exports."},
                "request_rate_upper": {"type": ["number", "null"],
                                       "description": "The request rate sized for: the scale_quantile of the "
                                                      "forecast up to the horizon (its interval's upper "
                                                      "half-width at the narrowest of the last 120 rounds), at "
                                                      "least the rate now."},
                "headroom_ratio": _NUM_OR_NULL,
                "capped_at_max": {"type": "boolean"}})},
            "fit": {"type": "object", "description": "The capacity fit of one replica (the what-if's params)."},
        }, description="A twin's replica recommendation, or why there is none (README, Predictive autoscaling)."),
    "Snapshot": _obj(
        ["snapshot_id", "twin_id", "timestamp", "timestamp_unix", "state_snapshot", "metrics", "health_score",
         "change_reason", "can_rollback_to", "checksum"], {
            "snapshot_id": {"type": "string"}, "twin_id": {"type": "string"}, "timestamp": _TIME,
            "timestamp_unix": {"type": "number"},
            "state_snapshot": {"type": "object",
                               "description": "What a rollback restores: expected state, thresholds, limits, "
                                              "auto-correction, definition."},
            "metrics": _NUM_MAP, "health_score": {"type": "number"},
            "change_reason": {"type": "string"}, "can_rollback_to": {"type": "boolean"},
            "checksum": {"type": "string", "description": "SHA-256 of the content, verified on every read."},
        }, extra=False),
    "SnapshotPage": _obj(["twin_id", "snapshots", "count", "next_before"], {
        "twin_id": {"type": "string"},
        "snapshots": {"type": "array", "items": _ref("Snapshot"), "description": "Newest first."},
        "count": {"type": "integer"},
        "next_before": {"type": ["number", "null"],
                        "description": "Pass as `before` for the next, older page; null on the last page."},
    }, extra=False),
    "RollbackRequest": _obj(["snapshot_id"], {"snapshot_id": {"type": "string", "minLength": 1}},
                            extra=False),
    "RollbackResult": _obj(["success", "twin_id", "snapshot_id", "undo_snapshot_id", "stored"], {
        "success": {"const": True}, "twin_id": {"type": "string"}, "snapshot_id": {"type": "string"},
        "restored_from": _TIME,
        "undo_snapshot_id": {"type": "string", "description": "Snapshot taken just before the rollback: "
                                                              "roll back to it to undo."},
        "expected_state": {"oneOf": [_NUM_MAP, {"type": "null"}]},
        "stored": _STORED,
    }),
    "RollbackAccepted": _accepted("RollbackResult"),
    "ExpectedRequest": {
        "type": "object", "minProperties": 1, "maxProperties": 1000,
        "propertyNames": {"minLength": 1, "maxLength": 200},
        "additionalProperties": {"type": ["number", "null"]},
        "description": "Metric name -> expected value; null clears that metric (it is learned again). "
                       "Only the twin's own metrics (400 naming the field otherwise); a core metric's value "
                       "cannot be negative. Design-era keys (`cpu`, `latency_ms`, …) are accepted too.",
        "examples": [{"cpu_usage": 50, "request_latency_ms": 200, "memory_usage": None}],
    },
    "ExpectedResult": _obj(["success", "twin_id", "expected_state", "snapshot_id", "stored"], {
        "success": {"const": True}, "twin_id": {"type": "string"},
        "expected_state": {"oneOf": [_NUM_MAP, {"type": "null"}]},
        "snapshot_id": {"type": "string", "description": "Snapshot of the state before the change."},
        "stored": _STORED,
    }),
    "ExpectedAccepted": _accepted("ExpectedResult"),
    "Scenario": {
        "description": "A what-if scenario, one of three types, each with its own fields; unknown fields are "
                       "refused. `seed` makes the Monte Carlo reproducible (same scenario and seed, same answer). "
                       "Rules across fields are checked by the simulation (400 naming the field): "
                       "failure_injection needs a fault (replicas_lost, added_latency_ms or error_rate above 0) and "
                       "replicas_lost below replicas; a load test's required_multiplier is at most its "
                       "max_multiplier; an alias and its field are not given together.",
        "oneOf": [_ref("TrafficSpike"), _ref("FailureInjection"), _ref("LoadTest")],
        "discriminator": {"propertyName": "type", "mapping": {
            "traffic_spike": "#/components/schemas/TrafficSpike",
            "failure_injection": "#/components/schemas/FailureInjection",
            "load_test": "#/components/schemas/LoadTest"}},
        "examples": [{"type": "traffic_spike", "traffic_multiplier": 5, "duration_minutes": 30},
                     {"type": "failure_injection", "replicas": 3, "replicas_lost": 1},
                     {"type": "load_test", "max_multiplier": 20, "required_multiplier": 2}],
    },
    "TrafficSpike": _scenario("traffic_spike", ["traffic_multiplier"], {
        "traffic_multiplier": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
        "duration_minutes": {"type": "number", "exclusiveMinimum": 0, "maximum": 1440, "default": 30},
        "ramp_minutes": {"type": "number", "minimum": 0, "maximum": 1440, "default": 0},
        "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600, "default": 30},
    }),
    "FailureInjection": _scenario("failure_injection", [], {
        "replicas": {"type": "integer", "minimum": 1, "maximum": 100000,
                     "description": "Default: the twin's `replicas` from the rules, else 1."},
        "replicas_lost": {"type": "integer", "minimum": 0, "maximum": 100000, "default": 0},
        "added_latency_ms": {"type": "number", "minimum": 0, "maximum": 3600000, "default": 0},
        "dependency_latency_ms": {"type": "number", "minimum": 0, "maximum": 3600000,
                                  "description": "Alias of added_latency_ms."},
        "error_rate": {"type": "number", "minimum": 0, "maximum": 1, "default": 0},
        "error_burst": {"type": "number", "minimum": 0, "maximum": 1, "description": "Alias of error_rate."},
        "duration_minutes": {"type": "number", "exclusiveMinimum": 0, "maximum": 1440, "default": 10},
        "traffic_multiplier": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000, "default": 1},
        "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600, "default": 30},
        "component": {"type": "string"},
    }),
    "LoadTest": _scenario("load_test", [], {
        "max_multiplier": {"type": "number", "exclusiveMinimum": 1, "maximum": 1000, "default": 20,
                           "description": "The highest multiple of current traffic the ramp reaches."},
        "required_multiplier": {
            "type": "number", "minimum": 1, "maximum": 1000,
            "description": "The headroom the service must have, as a multiple of current traffic; "
                           "failure_probability is the chance that the breaking point lies below it. At most "
                           "max_multiplier. Default 2 (max_multiplier when lower)."},
    }),
    "SimulationResult": _obj(
        ["scenario", "failure_probability", "will_likely_fail", "projected_metrics", "recommendations"], {
            "twin_id": {"type": "string"}, "scenario": {"type": "object"},
            "failure_probability": {"type": "number", "minimum": 0, "maximum": 1,
                                    "description": "Share of the draws in which a limit is breached during the "
                                                   "scenario; load_test: in which the breaking point lies below "
                                                   "required_multiplier."},
            "will_likely_fail": {"type": "boolean"},
            "caveat": {"type": ["string", "null"],
                       "description": "Set when the capacity fit is not trustworthy (a handful of samples, too "
                                      "little load variation, no request rate, extrapolation): why the failure "
                                      "probability is a guess. The first key of the result; null otherwise."},
            "projected_metrics": {"type": "object",
                                  "description": "Only the twin's own metrics, each with value, lower, upper, "
                                                 "limit and model: 'capacity' (the core metrics, through the "
                                                 "fitted capacity model) or 'forecast' (any other metric: its "
                                                 "own forecast, which the scenario does not move)."},
            "missing_metrics": {"type": "object", "additionalProperties": {"type": "string"},
                                "description": "Metrics the scenario acts on that the twin does not have (added "
                                               "latency without request_latency_ms, an error burst without "
                                               "error_rate), with what is therefore not projected."},
            "time_to_first_breach_s": _NUM_OR_NULL,
            "breaking_point": {"type": ["object", "null"],
                               "description": "load_test: traffic_multiplier, request_rate, bottleneck, "
                                              "interval [low, high], max_multiplier (the ramp's top) and "
                                              "required_multiplier (the headroom failure_probability is "
                                              "judged against)."},
            "recommendations": {"type": "array", "items": {"type": "string"}},
            "recovery_time_s": _NUM_OR_NULL, "model_fit": {"type": "object"},
            "breach_probability": {"type": "object", "additionalProperties": {"type": "number"},
                                   "description": "Per limit the twin has (cpu, latency, errors, memory, "
                                                  "mean_latency, or a custom metric's name): the share of the "
                                                  "draws in which it is breached; load_test: breached below "
                                                  "required_multiplier."},
            "seed": {"type": "integer"}, "samples": {"type": "integer"},
            "source": {"const": "simulation", "description": "Never ingested back into a twin."},
        }),
    "Event": _obj([
        "event_id", "twin_id", "type", "severity", "message", "timestamp", "timestamp_unix", "data"], {
        "event_id": {"type": "string"}, "twin_id": {"type": "string"},
        "type": {"enum": ["health_warning", "health_critical", "health_recovered", "drift_detected",
                          "drift_cleared", "risk_warning", "divergence", "correction", "rollback",
                          "twin_created", "twin_retired", "twin_refused"]},
        "severity": {"enum": ["info", "warning", "critical"]}, "message": {"type": "string"},
        "timestamp": _TIME, "timestamp_unix": {"type": "number"}, "data": {"type": "object"},
    }, extra=False),
    "EventList": _obj(["events", "count", "next_before", "next_before_id", "source"], {
        "events": {"type": "array", "items": _ref("Event"),
                   "description": "Newest first: by `timestamp_unix`, then by `event_id` (bytewise), both "
                                  "descending."},
        "count": {"type": "integer", "description": "Events on this page."},
        "next_before": {"type": ["number", "null"],
                        "description": "Pass as `before`, with `next_before_id` as `before_id`, for the next, "
                                       "older page; null on the last page."},
        "next_before_id": {"type": ["string", "null"],
                           "description": "Pass as `before_id` together with `next_before`; null on the last "
                                          "page."},
        "source": {"enum": ["store", "memory"],
                   "description": "`store`: the history store's events (they outlive restarts) with those not "
                                  "yet written to it, each once. `memory`: only the events this sidecar holds in "
                                  "memory, since it started — the store did not answer (see `message`), or "
                                  "there is none."},
        "message": {"type": "string", "description": "Present when the store did not answer: what is missing."},
    }, extra=False),
    "Health": _obj(["status"], {"status": {"const": "ok"}, "shard": _ref("Shard")}),
    "Shard": _obj(["index", "count"], {
        "index": {"type": "integer", "minimum": 0, "description": "This process's shard, 0 to count - 1."},
        "count": {"type": "integer", "minimum": 1, "description": "How many processes split the twins between "
                                                                  "them by a hash of their naming labels (1: "
                                                                  "unsharded, every twin here)."},
    }),
    "Readiness": _obj(["ready", "reasons", "config_loaded", "first_round_done", "source_up", "store_up"], {
        "ready": {"type": "boolean"},
        "reasons": {"type": "array", "items": {"type": "string"},
                    "description": "Why not ready (empty when ready)."},
        "config_loaded": {"type": "boolean"}, "first_round_done": {"type": "boolean"},
        "source_up": {"type": "boolean"},
        "store_up": {"type": "boolean", "description": "Reported, but a store outage alone does not make the "
                                                       "sidecar unready: it keeps serving the last state."},
        "store_backlog": {"type": "integer"},
        "store": {"type": "string", "description": "Present while the history store is unavailable."},
        "shard": _ref("Shard"),
    }),
}

_WRITE_SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}]

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Digital Twin Sidecar API",
        "version": "1.0.0",
        "description": "Digital twins of services fed from Prometheus: forecasts, divergence, health, "
                       "history and what-if simulation. Reads are open; requests that change state need a "
                       "bearer token when `server.auth_token_file` is set. Responses never contain NaN: "
                       "an unknown number is null.",
    },
    "servers": [{"url": "/"}],
    "components": {
        "schemas": _SCHEMAS,
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                           "description": "The token in `server.auth_token_file`."}},
    },
    "paths": {
        "/api/v1/twins": {"get": {
            "operationId": "listTwins", "summary": "Every twin with its health",
            "responses": {"200": _json(_ref("TwinList"), "All twins.")},
        }},
        "/api/v1/twins/{twin}": {"get": {
            "operationId": "getTwin",
            "summary": "A twin's status: metrics, predictions with trends and risk factors, divergence "
                       "alerts, corrections",
            "parameters": [_TWIN_PARAM],
            "responses": {"200": _json(_ref("TwinStatus"), "The twin's full status."),
                          "404": _error("No twin with that id or name.")},
        }},
        "/api/v1/twins/{twin}/history": {"get": {
            "operationId": "getTwinHistory",
            "summary": "Snapshots, newest first: those in memory, then older ones from the store",
            "parameters": [
                _TWIN_PARAM,
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                {"name": "before", "in": "query", "required": False, "schema": _TIME_QUERY,
                 "description": "Only snapshots strictly older than this (the previous page's next_before)."},
            ],
            "responses": {"200": _json(_ref("SnapshotPage"), "A page of snapshots."),
                          "400": _error("`limit` or `before` is malformed."),
                          "404": _error("No twin with that id or name."),
                          "409": _error("A stored snapshot fails its checksum."),
                          "503": _error("The history store is unavailable.")},
        }},
        "/api/v1/twins/{twin}/rollback": {"post": {
            "operationId": "rollbackTwin",
            "summary": "Restore expected state and configuration from a snapshot (itself recorded)",
            "security": _WRITE_SECURITY, "parameters": [_TWIN_PARAM],
            "requestBody": _body("RollbackRequest"),
            "responses": {"200": _json(_ref("RollbackResult"), "Rolled back and stored."),
                          "202": _not_stored("RollbackAccepted"), **_WRITE_ERRORS,
                          "404": _error("No twin, or no snapshot with that id for the twin."),
                          "409": _error("The snapshot fails its checksum or is not a rollback target."),
                          "503": _error("The history store is unavailable.")},
        }},
        "/api/v1/twins/{twin}/expected": {"put": {
            "operationId": "setExpectedState",
            "summary": "Set (or with null clear) expected values per metric",
            "security": _WRITE_SECURITY, "parameters": [_TWIN_PARAM],
            "requestBody": _body("ExpectedRequest"),
            "responses": {"200": _json(_ref("ExpectedResult"), "Changed (a snapshot was taken first) and stored."),
                          "202": _not_stored("ExpectedAccepted"), **_WRITE_ERRORS},
        }},
        "/api/v1/twins/{twin}/simulate": {"post": {
            "operationId": "simulateScenario",
            "summary": "Run a what-if scenario on the twin (never changes it, stores nothing)",
            "security": _WRITE_SECURITY, "parameters": [_TWIN_PARAM],
            "requestBody": _body("Scenario"),
            "responses": {"200": _json(_ref("SimulationResult"), "The scenario's projected outcome."),
                          **_WRITE_ERRORS},
        }},
        "/api/v1/events": {"get": {
            "operationId": "listEvents",
            "summary": "Monitor events, newest first, from the history store (across restarts) and memory",
            "parameters": [
                {"name": "twin", "in": "query", "required": False, "schema": {"type": "string"},
                 "description": "Twin id or name."},
                {"name": "type", "in": "query", "required": False,
                 "schema": {"$ref": "#/components/schemas/Event/properties/type"}},
                {"name": "since", "in": "query", "required": False, "schema": _TIME_QUERY,
                 "description": "Only events at or after this time."},
                {"name": "before", "in": "query", "required": False, "schema": _TIME_QUERY,
                 "description": "Only events strictly older than this (the previous page's `next_before`); "
                                "with `before_id`, also those at exactly this time whose id sorts below it."},
                {"name": "before_id", "in": "query", "required": False,
                 "schema": {"type": "string", "maxLength": 200},
                 "description": "The previous page's `next_before_id`; only together with `before`. Events "
                                "of one round share a timestamp: the pair continues a page inside such a group "
                                "with nothing skipped or repeated."},
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1000}},
            ],
            "responses": {"200": _json(_ref("EventList"), "A page of matching events."),
                          "400": _error("A query parameter is malformed, or `before_id` comes without `before`."),
                          "404": _error("No twin with that id or name.")},
        }},
        "/api/v1/openapi.json": {"get": {
            "operationId": "getOpenApi", "summary": "This document",
            "responses": {"200": _json({"type": "object"}, "The OpenAPI 3.1 document.")},
        }},
        "/metrics": {"get": {
            "operationId": "getMetrics",
            "summary": "Prometheus exposition of every twin (text 0.0.4, or OpenMetrics when accepted)",
            "responses": {"200": {"description": "Metrics.", "content": {
                "text/plain; version=0.0.4": {"schema": {"type": "string"}},
                "application/openmetrics-text; version=1.0.0": {"schema": {"type": "string"}}}}},
        }},
        "/healthz": {"get": {
            "operationId": "getHealthz", "summary": "Liveness: the process serves requests",
            "responses": {"200": _json(_ref("Health"), "Alive.")},
        }},
        "/readyz": {"get": {
            "operationId": "getReadyz", "summary": "Readiness: config loaded and the first query round done",
            "responses": {"200": _json(_ref("Readiness"), "Ready."),
                          "503": _json(_ref("Readiness"), "Not ready; `reasons` says why.")},
        }},
    },
}
