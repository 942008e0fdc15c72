"""The API's OpenAPI 3.1 document; a test checks real responses against its schemas.

The request schemas are generated from the types that validate the requests (`sidecar.schema`),
with this server's own limits (maximum timeout, body size) filled in, so the document states
exactly what the server enforces; schemathesis checks that against a live server in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import __version__, defaults, schema
from .check import DROP_REASONS, STATES
from .sandbox.outcomes import ERROR_OUTCOMES, OUTCOMES

if TYPE_CHECKING:
    from .config import Settings

__all__ = ["ERROR_ANSWERS", "ErrorAnswer", "openapi_document"]

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


@dataclass(frozen=True)
class ErrorAnswer:
    """One kind of error answer: its status, the `error.code`s it carries, and when it is given."""

    status: int
    codes: tuple[str, ...]
    when: str


#: Every error answer of the API, declared once: the document's error responses and `x-error-answers` come
#: from it, and the docs' error table is generated from the document. A test checks that every code the app,
#: the worker and the exception tree can answer is here.
ERROR_ANSWERS: tuple[ErrorAnswer, ...] = (
    ErrorAnswer(400, ("bad_request",),
                "the run body is not valid JSON (`NaN`/`Infinity` are not JSON), is not an object, has a key other "
                "than `params` and `timeout_seconds`, `params` is not an object or is nested more than 32 deep, a "
                "number does not fit (`1e999`, a 400-digit `timeout_seconds`), `timeout_seconds` is not a number > 0 "
                "or is above `SIDECAR_MAX_TIMEOUT_SECONDS`, the body could not be read (a malformed chunked body), or "
                "`limit` is not 1–1000; `params` for a check (a check runs with its configured params, whoever "
                "calls it); a `/probe` query other than `target` and `param.*`, repeated keys, `param.*` for a "
                "check, a `param.*` value a body could not carry (`NaN`, `Infinity`, `1e999`, nested more than 32 "
                "deep), a bad `X-Prometheus-Scrape-Timeout-Seconds`; a malformed request line, header or chunk "
                "(answered by gunicorn)"),
    ErrorAnswer(400, ("config", "config_file_missing"),
                "`POST /-/reload` refused a bad configuration, or its file is missing (the running one is kept)"),
    ErrorAnswer(401, ("unauthorized",),
                "missing or wrong bearer token on `POST` and `/probe` when `SIDECAR_API_TOKEN` is set (compared in "
                "constant time)"),
    ErrorAnswer(403, ("forbidden",),
                "refused by gunicorn before the app: a PROXY-protocol line from an address not allowed to send one, "
                "a failed TLS handshake where TLS is configured"),
    ErrorAnswer(404, ("unknown_plugin", "not_found"), "unknown plugin (whatever the body), unknown route"),
    ErrorAnswer(405, ("method_not_allowed",),
                "wrong method; the `Allow` header lists the right ones (`HEAD /probe` too: a probe's answer is a "
                "run, and a HEAD runs nothing)"),
    ErrorAnswer(413, ("payload_too_large",), "body over `SIDECAR_MAX_BODY_BYTES` (with or without `Content-Length`)"),
    ErrorAnswer(414, ("uri_too_long",), "a request line over 4094 bytes (answered by gunicorn, before the app)"),
    ErrorAnswer(417, ("expectation_failed",), "an `Expect` header other than `100-continue` (answered by gunicorn)"),
    ErrorAnswer(431, ("request_header_fields_too_large",),
                "too many or too large header fields (answered by gunicorn, before the app)"),
    ErrorAnswer(500, ("internal",), "a fault of the sidecar itself, logged with its traceback (never an answer to "
                "input)"),
    ErrorAnswer(501, ("not_implemented",), "a `Transfer-Encoding` gunicorn does not implement (answered by gunicorn)"),
    ErrorAnswer(503, ("saturated", "runner_unavailable", "store_unavailable", "stopping"),
                "all sandbox slots busy (with `Retry-After`), the runner process is gone, the history is unreadable "
                "or did not answer within 2 s, or the sidecar is stopping (runs and probes only)"),
)


def _errors(*statuses: int) -> dict[str, Any]:
    """The error responses of one operation, described by the codes each status carries."""
    out = {}
    for status in statuses:
        codes = [code for answer in ERROR_ANSWERS if answer.status == status for code in answer.codes]
        out[str(status)] = {"description": "error code " + ", ".join(codes), **_json("Error")}
    return out


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
                                 "description": "Prometheus text format, or OpenMetrics when the scraper's `Accept` "
                                                "asks for it; gzip-compressed when it sends `Accept-Encoding: gzip`",
                                 "responses": {"200": {"description": "exposition",
                                                       "content": {"text/plain": {}}}}}},
            "/healthz": {"get": {"summary": "liveness",
                                 "description": "liveness: the worker answers and reaches the runner",
                                 "responses": {
                "200": {"description": "alive"}, **_errors(503)}}},
            "/readyz": {"get": {
                "summary": "readiness: plugins discovered, history writable",
                "description": "readiness: plugins discovered, history writable — a real write each time, within 2 "
                               "s — and the launcher answering; 503 with `reason` otherwise (disk full, read-only, "
                               "corrupt, stalled, a launcher not answering, stopping)",
                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/plugins": {"get": {"summary": "every plugin and check with metadata and health summary",
                                 "description": "every plugin and check with its metadata, any `problem` and a "
                                                "health summary",
                                 "responses": {"200": {"description": "list", "content": {"application/json": {
                                     "schema": {"type": "object", "required": ["plugins"], "properties": {
                                         "plugins": {"type": "array",
                                                     "items": {"$ref": "#/components/schemas/Plugin"}}}}}}}}}},
            "/plugins/{name}": {"get": {"summary": "one plugin or check", "parameters": [_NAME], "responses": {
                "200": {"description": "one plugin", **_json("Plugin")}, **_errors(404)}}},
            "/plugins/{name}/health": {"get": {
                "summary": "health from the run history",
                "description": "`status` (`unknown` before the first run, `failing` when the last run failed, "
                               "`degraded` when one of the last 10 failed, else `healthy`), `success_count`, "
                               "`error_count`, `errors_by_type`, `uptime_seconds`, `last_used`, "
                               "`execution_time_ms`, `avg_execution_time_ms` (mean of the last 10 runs, any "
                               "outcome), `last_error` (outcome, type, message and time of the last failed run; its "
                               "traceback is in `/runs`), `timeout_seconds`, `memory_limit_mb`, `interval_seconds`",
                "parameters": [_NAME], "responses": {
                "200": {"description": "health from the run history", **_json("Health")}, **_errors(404)}}},
            "/plugins/{name}/runs": {"get": {
                "summary": "recent runs, newest first",
                "description": "recent runs, newest first (1 ≤ `limit` ≤ 1000, default 20), each with its `outcome`, "
                               "times, `error_type`, `error_message`, `error_traceback`, `trigger` (api, schedule, "
                               "probe), `state`, `state_reason` and `result` (the head of its JSON text past "
                               "`SIDECAR_MAX_OUTPUT_BYTES`, flagged `result_truncated`); a run's stdout and stderr "
                               "are not kept (a run's own answer has them)",
                "parameters": [_NAME, {"name": "limit", "in": "query",
                                       "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 20}}],
                "responses": {"200": {"description": "recent runs, newest first", "content": {"application/json": {
                    "schema": {"type": "object", "required": ["plugin", "runs"], "properties": {
                        "plugin": {"type": "string"},
                        "runs": {"type": "array", "items": {"$ref": "#/components/schemas/Run"}}}}}}},
                    **_errors(400, 404)}}},
            "/plugins/{name}/run": {"post": {
                "summary": "run once in the sandbox; a plugin's failure is a 200 with its outcome",
                "description": "body `{\"params\": {...}, \"timeout_seconds\": n}` (both optional); answers the "
                               "run's result (outcome, result, error with traceback, times, peak memory, captured "
                               "stdout and stderr) and `check` (state, reason, the values exported, what was "
                               "dropped). A plugin's failure is a 200 with its `outcome`",
                "parameters": [_NAME],
                "security": [{"bearer": []}, {}],
                "requestBody": {"required": False, "description": f"at most {max_body} bytes (413 above); "
                                "empty means {}", **_json("RunRequest")},
                "responses": {"200": {"description": "the run's result", **_json("RunResult")},
                              **_errors(400, 401, 404, 413, 503)}}},
            "/": {"get": {"summary": "status page (HTML) for clients that accept text/html; a JSON index for others",
                          "description": "the status page for browsers (`Accept: text/html`); other clients get a "
                                         "JSON index: `name`, `version`, `status_page`, `openapi` and `routes` (the "
                                         "paths of this document)",
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
                "description": "runs a plugin or check now and answers in the Prometheus text format; a failed or "
                               "refused run is a 200 with `sidecar_probe_success 0`",
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
                "description": "re-reads the checks and plugin directories; answers what was added, changed, "
                               "removed and which changed settings need a restart (`needs_restart`); a bad "
                               "configuration is refused with 400 (`config`)",
                "security": [{"bearer": []}, {}],
                "responses": {"200": {"description": "what changed", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["added", "changed", "removed", "needs_restart"],
                    "properties": {k: {"type": "array", "items": {"type": "string"}}
                                   for k in ("added", "changed", "removed", "needs_restart")}}}}},
                    **_errors(400, 401)}}},
            "/openapi.json": {"get": {"summary": "this document",
                                      "description": "the OpenAPI 3.1 document of this API, with this server's "
                                                     "limits (its maximum timeout and body size)",
                                      "responses": {"200": {"description": "this document"}}}},
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "required when SIDECAR_API_TOKEN is set"}},
            "x-error-answers": [{"status": a.status, "codes": list(a.codes), "when": a.when} for a in ERROR_ANSWERS],
        },
    }
