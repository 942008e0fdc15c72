"""The API's OpenAPI 3.1 document; a test checks real responses against its schemas.

The request schemas are generated from the types that validate the requests (`sidecar.schema`),
with this server's own limits (maximum timeout, body size) filled in, so the document states
exactly what the server enforces; schemathesis checks that against a live server in the tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import __version__, defaults, schema
from .check import DROP_REASONS, STATES
from .sandbox.outcomes import ERROR_OUTCOMES, OUTCOMES

if TYPE_CHECKING:
    from .config import Settings

__all__ = ["openapi_document"]

_NULLABLE_STR = {"type": ["string", "null"]}
_NULLABLE_NUM = {"type": ["number", "null"]}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["code", "message"],
                                 "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}},
    },
    "Stream": {
        "type": "object", "required": ["text", "truncated", "total_bytes"],
        "properties": {"text": {"type": "string"}, "truncated": {"type": "boolean"},
                       "total_bytes": {"type": "integer"}},
    },
    "RunError": {
        "type": ["object", "null"], "required": ["type", "message", "traceback"],
        "properties": {"type": {"type": "string"}, "message": {"type": "string"}, "traceback": _NULLABLE_STR},
    },
    "Check": {
        "type": "object", "required": ["state", "reason", "values", "gauges", "dropped"],
        "description": "what the run found: its check's state and the values exported from it",
        "properties": {
            "state": {"type": "string", "enum": list(STATES)}, "reason": _NULLABLE_STR,
            "values": {"type": "object", "additionalProperties": {"type": "number"},
                       "description": "numeric top-level fields of the result (sidecar_check_value)"},
            "gauges": {"type": "array", "items": {"type": "object"}, "description": "gauges the plugin reported"},
            "dropped": {"type": "object", "propertyNames": {"enum": list(DROP_REASONS)},
                        "additionalProperties": {"type": "integer"}},
        },
    },
    "RunResult": {
        "type": "object",
        "required": ["plugin", "outcome", "result", "error", "execution_time_ms", "peak_memory_bytes",
                     "started_at", "finished_at", "stdout", "stderr", "check"],
        "properties": {
            "plugin": {"type": "string"},
            "outcome": {"type": "string", "enum": list(OUTCOMES)},
            "result": {"description": "the plugin's return value (JSON), null unless success"},
            "error": {"$ref": "#/components/schemas/RunError"},
            "execution_time_ms": {"type": "number"},
            "peak_memory_bytes": {"type": "integer"},
            "started_at": {"type": "string", "description": "ISO 8601, UTC"},
            "finished_at": {"type": "string", "description": "ISO 8601, UTC"},
            "stdout": {"$ref": "#/components/schemas/Stream"},
            "stderr": {"$ref": "#/components/schemas/Stream"},
            "check": {"$ref": "#/components/schemas/Check"},
        },
    },
    "Health": {
        "type": "object",
        "required": ["plugin", "status", "success_count", "error_count", "errors_by_type", "uptime_seconds",
                     "last_used", "execution_time_ms", "avg_execution_time_ms", "last_error", "timeout_seconds",
                     "memory_limit_mb", "interval_seconds"],
        "properties": {
            "plugin": {"type": "string"},
            "status": {"type": "string", "enum": ["healthy", "degraded", "failing", "unknown"]},
            "success_count": {"type": "integer"},
            "error_count": {"type": "integer"},
            "errors_by_type": {"type": "object", "propertyNames": {"enum": list(ERROR_OUTCOMES)},
                               "additionalProperties": {"type": "integer"}},
            "uptime_seconds": {"type": "number"},
            "last_used": _NULLABLE_STR,
            "execution_time_ms": _NULLABLE_NUM,
            "avg_execution_time_ms": {**_NULLABLE_NUM, "description": "mean of the last 10 runs, any outcome"},
            "last_error": {"type": ["object", "null"]},
            "timeout_seconds": {"type": "number"},
            "memory_limit_mb": {"type": "integer"},
            "interval_seconds": _NULLABLE_NUM,
        },
    },
    "Plugin": {
        "type": "object",
        "required": ["name", "plugin", "source", "description", "version", "timeout_seconds", "memory_limit_mb",
                     "interval_seconds", "params", "loaded_at", "problem", "health"],
        "properties": {
            "name": {"type": "string"}, "plugin": {"type": "string"},
            "source": {"type": "string", "enum": ["builtin", "path", "entry_point", "check"]},
            "location": {"type": "string"}, "description": {"type": "string"}, "version": _NULLABLE_STR,
            "timeout_seconds": {"type": "number"}, "memory_limit_mb": {"type": "integer"},
            "interval_seconds": _NULLABLE_NUM, "params": {"type": "object"}, "loaded_at": {"type": "string"},
            "problem": _NULLABLE_STR, "health": {"type": "object"},
        },
    },
    "Run": {
        "type": "object",
        "required": ["id", "plugin", "outcome", "started_at", "finished_at", "execution_time_ms",
                     "peak_memory_bytes", "error_type", "error_message", "trigger", "state", "state_reason",
                     "result", "result_truncated", "error_traceback"],
        "properties": {
            "id": {"type": "integer"}, "plugin": {"type": "string"},
            "outcome": {"type": "string", "enum": list(OUTCOMES)},
            "started_at": {"type": "string"}, "finished_at": {"type": "string"},
            "execution_time_ms": {"type": "number"}, "peak_memory_bytes": {"type": "integer"},
            "error_type": _NULLABLE_STR, "error_message": _NULLABLE_STR,
            "trigger": {"type": "string", "enum": ["api", "schedule", "probe"]},
            "state": {"type": ["string", "null"], "enum": [*STATES, None],
                      "description": "the check's state after this run (null: recorded before states existed)"},
            "state_reason": _NULLABLE_STR,
            "result": {"description": "what the run returned (JSON); when result_truncated, the head of its JSON "
                                      "text as a string (SIDECAR_MAX_OUTPUT_BYTES characters)"},
            "result_truncated": {"type": "boolean"},
            "error_traceback": _NULLABLE_STR,
        },
    },
}


def _json(ref: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "bad request (a refused reload: code config)", 401: "missing or wrong bearer token",
            404: "unknown plugin",
            413: "body too large", 503: "saturated (Retry-After), runner unavailable, or stopping"}
    return {str(c): {"description": text[c], **_json("Error")} for c in codes}


_NAME = {"name": "name", "in": "path", "required": True,
         "schema": {"type": "string", "pattern": defaults.PLUGIN_NAME_PATTERN}}


def run_request_schema(max_timeout_seconds: float) -> dict[str, Any]:
    """The run body's schema, from `schema.RunBody`, with this server's maximum timeout."""
    doc = schema.json_schema(schema.RunBody)
    timeout = doc["properties"]["timeout_seconds"]
    for option in timeout.get("anyOf", [timeout]):
        if option.get("type") == "number":
            option["maximum"] = min(option.get("maximum", max_timeout_seconds), max_timeout_seconds)
    return doc


def openapi_document(settings: Settings | None = None) -> dict[str, Any]:
    max_timeout = settings.max_timeout_seconds if settings else defaults.MAX_TIMEOUT_SECONDS
    max_body = settings.max_body_bytes if settings else defaults.MAX_BODY_BYTES
    schemas = {**SCHEMAS, "RunRequest": run_request_schema(max_timeout)}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Sidecar", "version": __version__},
        "paths": {
            "/metrics": {"get": {"summary": "Prometheus metrics (OpenMetrics when asked for in Accept)",
                                 "responses": {"200": {"description": "exposition",
                                                       "content": {"text/plain": {}}}}}},
            "/healthz": {"get": {"summary": "liveness", "responses": {
                "200": {"description": "alive"}, **_errors(503)}}},
            "/readyz": {"get": {"summary": "readiness: plugins discovered, history writable", "responses": {
                "200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/plugins": {"get": {"summary": "every plugin and check with metadata and health summary",
                                 "responses": {"200": {"description": "list", "content": {"application/json": {
                                     "schema": {"type": "object", "required": ["plugins"], "properties": {
                                         "plugins": {"type": "array",
                                                     "items": {"$ref": "#/components/schemas/Plugin"}}}}}}}}}},
            "/plugins/{name}": {"get": {"parameters": [_NAME], "responses": {
                "200": {"description": "one plugin", **_json("Plugin")}, **_errors(404)}}},
            "/plugins/{name}/health": {"get": {"parameters": [_NAME], "responses": {
                "200": {"description": "health from the run history", **_json("Health")}, **_errors(404)}}},
            "/plugins/{name}/runs": {"get": {
                "parameters": [_NAME, {"name": "limit", "in": "query",
                                       "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 20}}],
                "responses": {"200": {"description": "recent runs, newest first", "content": {"application/json": {
                    "schema": {"type": "object", "required": ["plugin", "runs"], "properties": {
                        "plugin": {"type": "string"},
                        "runs": {"type": "array", "items": {"$ref": "#/components/schemas/Run"}}}}}}},
                    **_errors(400, 404)}}},
            "/plugins/{name}/run": {"post": {
                "summary": "run once in the sandbox; a plugin's failure is a 200 with its outcome",
                "parameters": [_NAME],
                "security": [{"bearer": []}, {}],
                "requestBody": {"required": False, "description": f"at most {max_body} bytes (413 above); "
                                "empty means {}", **_json("RunRequest")},
                "responses": {"200": {"description": "the run's result", **_json("RunResult")},
                              **_errors(400, 401, 404, 413, 503)}}},
            "/": {"get": {"summary": "status page (HTML) for clients that accept text/html; a JSON index for others",
                          "responses": {"200": {"description": "the page, or the index of routes", "content": {
                              "text/html": {},
                              "application/json": {"schema": {
                                  "type": "object", "required": ["name", "version", "status_page", "openapi", "routes"],
                                  "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                                 "status_page": {"type": "string"}, "openapi": {"type": "string"},
                                                 "routes": {"type": "array", "items": {"type": "string"}}}}}}}}}},
            "/probe": {"get": {
                "summary": "run a plugin or check now; Prometheus text format (sidecar_probe_success, "
                           "sidecar_probe_duration_seconds, sidecar_probe_value{field}, "
                           "sidecar_probe_values_skipped); HEAD answers 405 and runs nothing",
                "security": [{"bearer": []}, {}],
                "parameters": [
                    {"name": "target", "in": "query", "required": True, "example": "echo",
                     "schema": {"type": "string", "pattern": defaults.PLUGIN_NAME_PATTERN}},
                    {"name": "param.KEY", "in": "query", "required": False, "schema": {"type": "string"},
                     "description": "a plugin parameter (not for checks); VALUE parsed as JSON when valid; "
                                    "NaN, Infinity and numbers beyond a float's range are refused (400)"},
                    {"name": "X-Prometheus-Scrape-Timeout-Seconds", "in": "header", "required": False,
                     "schema": {"type": "number", "exclusiveMinimum": 0},
                     "description": "budget = value - 0.5 s (floor 0.5 s); 10 s without it"},
                ],
                "responses": {"200": {"description": "the probe's result; a failed or refused run is success 0",
                                      "content": {"text/plain": {}}}, **_errors(400, 401, 404)}}},
            "/-/reload": {"post": {
                "summary": "re-read the checks and plugin directories; a bad configuration is refused (400)",
                "security": [{"bearer": []}, {}],
                "responses": {"200": {"description": "what changed", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["added", "changed", "removed", "needs_restart"],
                    "properties": {k: {"type": "array", "items": {"type": "string"}}
                                   for k in ("added", "changed", "removed", "needs_restart")}}}}},
                    **_errors(400, 401)}}},
            "/openapi.json": {"get": {"responses": {"200": {"description": "this document"}}}},
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "required when SIDECAR_API_TOKEN is set"}},
        },
    }
