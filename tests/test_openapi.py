"""The OpenAPI document: well-formed 3.1, in step with the routes, and true of real responses."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from sidecar.app import create_app
from sidecar.config import Settings
from sidecar.openapi import SCHEMAS, openapi_document

from .conftest import HOSTILE

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
_TYPES: dict[str, Any] = {
    "object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
}


# -- a tiny JSON-schema subset ------------------------------------------------------------------------


def _type_ok(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def validate(value: Any, schema: dict[str, Any], doc: dict[str, Any], path: str = "$") -> list[str]:
    """Errors of `value` against `schema`: type, required, properties, enum, items, $ref, additionalProperties."""
    if "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/components/schemas/"), ref
        return validate(value, doc["components"]["schemas"][ref.rsplit("/", 1)[1]], doc, path)
    errors: list[str] = []
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_type_ok(value, t) for t in types):
            return [f"{path}: {value!r:.80} is not of type {types}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, dict):
        errors += [f"{path}: missing required {k!r}" for k in schema.get("required", []) if k not in value]
        props = schema.get("properties", {})
        for key, item in value.items():
            if key in props:
                errors += validate(item, props[key], doc, f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}: unexpected property {key!r}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += validate(item, schema["additionalProperties"], doc, f"{path}.{key}")
        if "propertyNames" in schema:
            errors += [e for k in value for e in validate(k, schema["propertyNames"], doc, f"{path}<key {k!r}>")]
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += validate(item, schema["items"], doc, f"{path}[{i}]")
    return errors


def test_validator_catches_what_it_should() -> None:
    doc = openapi_document()
    good = {"error": {"code": "x", "message": "y"}}
    ref = {"$ref": "#/components/schemas/Error"}
    assert validate(good, ref, doc) == []
    assert validate({"error": {"code": "x"}}, ref, doc)
    assert validate({"error": {"code": 1, "message": "y"}}, ref, doc)
    assert validate([], ref, doc)
    assert validate(None, {"type": ["string", "null"]}, doc) == []
    assert validate(1, {"type": ["string", "null"]}, doc)
    assert validate(True, {"type": "integer"}, doc)
    assert validate(1.5, {"type": "integer"}, doc)
    assert validate(2, {"type": "number"}, doc) == []
    assert validate("z", {"enum": ["a"]}, doc)
    assert validate([1, "a"], {"type": "array", "items": {"type": "integer"}}, doc)
    assert validate({"a": 1}, {"type": "object", "additionalProperties": False}, doc)
    assert validate({"params": {}, "x": 1}, {"$ref": "#/components/schemas/RunRequest"}, doc)


# -- the document ---------------------------------------------------------------------------------------


def _walk_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _walk_refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk_refs(v)


def test_document_is_structurally_openapi_31() -> None:
    doc = openapi_document()
    assert doc["openapi"] == "3.1.0"
    assert doc["info"]["title"] and doc["info"]["version"]
    import sidecar

    assert doc["info"]["version"] == sidecar.__version__
    assert set(doc) <= {"openapi", "info", "jsonSchemaDialect", "servers", "paths", "webhooks", "components",
                        "security", "tags", "externalDocs"}
    schemas = doc["components"]["schemas"]
    assert {k: v for k, v in schemas.items() if k in SCHEMAS} == SCHEMAS and "RunRequest" in schemas
    for ref in _walk_refs(doc):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in schemas, f"dangling $ref {ref}"
    schemes = doc["components"].get("securitySchemes", {})
    op_ids: set[str] = set()
    for path, item in doc["paths"].items():
        assert path.startswith("/")
        templated = set(re.findall(r"{(\w+)}", path))
        for method, op in item.items():
            assert method in HTTP_METHODS, (path, method)
            assert op["responses"], (path, method)
            for status, resp in op["responses"].items():
                assert re.fullmatch(r"[1-5]\d\d|[1-5]XX|default", status), (path, status)
                assert isinstance(resp.get("description"), str), (path, status)
                for media in resp.get("content", {}).values():
                    assert isinstance(media, dict)
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == templated, (path, method)
            for p in op.get("parameters", []):
                assert p["in"] in {"path", "query", "header", "cookie"}
                if p["in"] == "path":
                    assert p["required"] is True
                assert "schema" in p
            for req in op.get("security", []):
                assert set(req) <= set(schemes), req
            if "operationId" in op:
                assert op["operationId"] not in op_ids
                op_ids.add(op["operationId"])
    for scheme in schemes.values():
        assert scheme["type"] in {"apiKey", "http", "mutualTLS", "oauth2", "openIdConnect"}


def test_schemas_are_consistent() -> None:
    for name, schema in SCHEMAS.items():
        props = schema.get("properties", {})
        missing = set(schema.get("required", [])) - set(props)
        assert not missing, f"{name} requires undeclared {missing}"


# -- routes and responses ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    settings = Settings(data_dir=str(tmp_path_factory.mktemp("openapi")), plugin_path=(str(HOSTILE),),
                        entry_points=False, max_body_bytes=1024)
    flask_app = create_app(settings)
    yield flask_app
    flask_app.extensions["sidecar_backend"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def _flask_routes(app: Flask) -> set[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                out.add((path, method.lower()))
    return out


def test_routes_and_paths_match(app: Flask) -> None:
    documented = {(path, method) for path, item in openapi_document()["paths"].items() for method in item}
    assert _flask_routes(app) == documented


def _schema(path: str, method: str, status: int) -> dict[str, Any]:
    resp = openapi_document()["paths"][path][method]["responses"][str(status)]
    return dict(resp["content"]["application/json"]["schema"])


def _check(resp: Any, path: str, method: str) -> Any:
    doc = openapi_document()
    assert str(resp.status_code) in doc["paths"][path][method]["responses"], (path, resp.status_code)
    body = resp.get_json()
    errors = validate(body, _schema(path, method, resp.status_code), doc)
    assert errors == [], errors
    return body


def test_run_result_success_and_error(client: FlaskClient) -> None:
    ok = _check(client.post("/plugins/hello/run"), "/plugins/{name}/run", "post")
    assert ok["outcome"] == "success" and ok["error"] is None
    bad = _check(client.post("/plugins/raises/run", json={"params": {"kind": "RuntimeError"}}),
                 "/plugins/{name}/run", "post")
    assert bad["outcome"] == "runtime" and bad["error"]["type"] == "RuntimeError"
    crash = _check(client.post("/plugins/segfault/run"), "/plugins/{name}/run", "post")
    assert crash["outcome"] == "crash"


def test_health_before_and_after_runs(client: FlaskClient) -> None:
    before = _check(client.get("/plugins/no_run/health"), "/plugins/{name}/health", "get")
    assert before["status"] == "unknown" and before["last_used"] is None and before["last_error"] is None
    client.post("/plugins/no_run/run")
    client.post("/plugins/raises/run", json={"params": {"kind": "KeyError"}})
    after = _check(client.get("/plugins/raises/health"), "/plugins/{name}/health", "get")
    assert after["status"] == "failing" and after["last_error"] is not None
    after = _check(client.get("/plugins/no_run/health"), "/plugins/{name}/health", "get")
    assert after["error_count"] >= 1 and after["errors_by_type"]


def test_plugin_and_plugin_list(client: FlaskClient) -> None:
    listing = _check(client.get("/plugins"), "/plugins", "get")
    assert len(listing["plugins"]) > 1
    assert any(p["problem"] for p in listing["plugins"])  # syntax_error is listed with its problem
    _check(client.get("/plugins/hello"), "/plugins/{name}", "get")


def test_runs_list(client: FlaskClient) -> None:
    client.post("/plugins/hello/run")
    client.post("/plugins/raises/run")
    for name in ("hello", "raises", "loop"):
        body = _check(client.get(f"/plugins/{name}/runs?limit=5"), "/plugins/{name}/runs", "get")
        assert body["plugin"] == name
    assert _check(client.get("/plugins/loop/runs"), "/plugins/{name}/runs", "get")["runs"] == []


@pytest.mark.parametrize(("method", "url", "path", "status", "kw"), [
    ("get", "/plugins/nope", "/plugins/{name}", 404, {}),
    ("get", "/plugins/nope/health", "/plugins/{name}/health", 404, {}),
    ("get", "/plugins/nope/runs", "/plugins/{name}/runs", 404, {}),
    ("get", "/plugins/hello/runs?limit=0", "/plugins/{name}/runs", 400, {}),
    ("post", "/plugins/nope/run", "/plugins/{name}/run", 404, {}),
    ("post", "/plugins/hello/run", "/plugins/{name}/run", 400, {"data": b"{"}),
    ("post", "/plugins/hello/run", "/plugins/{name}/run", 400, {"json": {"bogus": 1}}),
    ("post", "/plugins/hello/run", "/plugins/{name}/run", 413, {"data": b" " * 2048}),
])
def test_error_bodies(client: FlaskClient, method: str, url: str, path: str, status: int, kw: dict[str, Any]) -> None:
    resp = client.open(url, method=method.upper(), **kw)
    assert resp.status_code == status
    _check(resp, path, method)


def test_unauthorized_body(tmp_path: Path) -> None:
    from .test_app import FakeBackend, fake_app

    flask_app = fake_app(Settings(data_dir=str(tmp_path), api_token="t"), FakeBackend())
    resp = flask_app.test_client().post("/plugins/hello/run")
    assert resp.status_code == 401
    _check(resp, "/plugins/{name}/run", "post")


def test_request_body_schema_accepts_what_the_app_accepts() -> None:
    doc = openapi_document()
    schema = doc["paths"]["/plugins/{name}/run"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert validate({"params": {"a": 1}, "timeout_seconds": 2.5}, schema, doc) == []
    assert validate({}, schema, doc) == []
    assert validate({"params": {}, "extra": 1}, schema, doc)
