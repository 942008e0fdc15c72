"""The Flask app through its test client: every route, every error shape, the guards."""

from __future__ import annotations

import gzip
import inspect
import io
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from sidecar.app import create_app
from sidecar.config import Settings
from sidecar.errors import ConfigError, PluginNotFound, SidecarError
from sidecar.metrics import CONTENT_TYPE_TEXT, OPENMETRICS_CONTENT_TYPE
from sidecar.rpc import OPERATIONS
from sidecar.runner import Runner
from sidecar.sandbox.client import RunRequest
from sidecar.sandbox.result import Outcome, PluginSandboxResult

from .conftest import HOSTILE

MAX_BODY = 1024


def _settings(data_dir: Path, **kw: Any) -> Settings:
    return Settings(data_dir=str(data_dir), plugin_path=(str(HOSTILE),), entry_points=False,
                    max_body_bytes=MAX_BODY, **kw)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    flask_app = create_app(_settings(tmp_path_factory.mktemp("app"), max_timeout_seconds=30.0,
                                     default_timeout_seconds=20.0))
    yield flask_app
    flask_app.extensions["sidecar_backend"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def _error(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    doc = resp.get_json()
    assert set(doc) == {"error"}
    assert set(doc["error"]) == {"code", "message"}
    assert doc["error"]["code"] == code
    assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
    return dict(doc["error"])


class FakeBackend:
    """A Backend whose `run` blocks until released; everything else canned."""

    def __init__(self, ready: bool = True) -> None:
        self.is_ready = ready
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls: list[tuple[str, Any, Any]] = []

    def plugins(self) -> list[dict[str, Any]]:
        return [self.plugin("hello")]

    def plugin(self, name: str) -> dict[str, Any]:
        if name != "hello":
            raise PluginNotFound(f"unknown plugin {name!r}")
        return {"name": name}

    def health(self, name: str) -> dict[str, Any]:
        return {"plugin": self.plugin(name)["name"]}

    def runs(self, name: str, limit: int = 20) -> list[dict[str, Any]]:
        self.plugin(name)
        return []

    def run(self, name: str, params: Any = None, timeout_seconds: Any = None) -> dict[str, Any]:
        self.plugin(name)
        self.calls.append((name, params, timeout_seconds))
        return {"plugin": name, "outcome": "success"}

    def reject(self, name: str, reason: str) -> None:
        self.plugin(name)
        self.calls.append((name, "rejected", reason))

    def render_metrics(self, openmetrics: bool = False) -> tuple[bytes, str]:
        return (b"# EOF\n", OPENMETRICS_CONTENT_TYPE) if openmetrics else (b"", CONTENT_TYPE_TEXT)

    def ready(self) -> dict[str, Any]:
        return {"ready": self.is_ready, "checks": {"plugins_discovered": self.is_ready, "store_writable": True}}

    def ping(self) -> bool:
        return True

    def probe(self, name: str, params: Any = None, budget_seconds: float = 10.0) -> dict[str, Any]:
        self.plugin(name)
        self.calls.append((name, params, budget_seconds))
        return {"plugin": name, "outcome": "success", "result": {"x": 1}, "duration_seconds": 0.1}

    def reload(self) -> dict[str, Any]:
        if self.reload_error is not None:
            raise self.reload_error
        return {"added": [], "changed": [], "removed": [], "needs_restart": []}

    def status(self) -> dict[str, Any]:
        return {"entries": [], "generated_at": "now"}

    reload_error: SidecarError | None = None


def fake_app(settings: Settings, fake: FakeBackend) -> Flask:
    """`create_app` over a fake: typed as the runner's interface, which the test below checks it implements."""
    return create_app(settings, cast(Runner, fake))


def test_fake_backend_implements_every_runner_operation() -> None:
    for name in OPERATIONS:
        ours = inspect.signature(getattr(Runner, name))
        fake = inspect.signature(getattr(FakeBackend, name))
        assert list(fake.parameters) == list(ours.parameters), name


# -- happy paths ------------------------------------------------------------------------------------


def test_healthz(client: FlaskClient) -> None:
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.get_json() == {"status": "ok"}


def test_readyz_ready(client: FlaskClient) -> None:
    resp = client.get("/readyz")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body.pop("containment")  # what bounds a run on this host, said by the sandbox
    assert body == {"ready": True, "checks": {"plugins_discovered": True, "store_writable": True,
                                              "launcher_answers": True}}


def test_plugins_list(client: FlaskClient) -> None:
    resp = client.get("/plugins")
    assert resp.status_code == 200
    plugins = resp.get_json()["plugins"]
    names = [p["name"] for p in plugins]
    assert {"hello", "raises", "loop", "segfault"} <= set(names)
    assert len(names) == len(set(names))
    hello = next(p for p in plugins if p["name"] == "hello")
    assert hello["source"] == "path" and hello["description"] == "says hello" and hello["version"] == "1.0"


def test_plugin_detail(client: FlaskClient) -> None:
    resp = client.get("/plugins/hello")
    assert resp.status_code == 200
    doc = resp.get_json()
    assert doc["name"] == doc["plugin"] == "hello"
    assert doc["timeout_seconds"] == 20.0
    assert doc["loaded_at"].endswith("Z")
    assert set(doc["health"]) == {"status", "success_count", "error_count", "last_used"}


def test_run_success_then_health_and_runs(client: FlaskClient) -> None:
    before = client.get("/plugins/hello/health").get_json()["success_count"]
    resp = client.post("/plugins/hello/run", json={"params": {"name": "tests"}, "timeout_seconds": 10})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    doc = resp.get_json()
    assert doc["plugin"] == "hello" and doc["outcome"] == "success" and doc["error"] is None
    assert doc["result"] == {"greeting": "hello tests"}
    assert doc["stdout"]["text"] == "hello tests\n"

    health = client.get("/plugins/hello/health").get_json()
    assert health["plugin"] == "hello"
    assert health["status"] == "healthy"
    assert health["success_count"] == before + 1
    assert health["last_error"] is None

    runs = client.get("/plugins/hello/runs?limit=1").get_json()
    assert runs["plugin"] == "hello"
    assert len(runs["runs"]) == 1
    assert runs["runs"][0]["outcome"] == "success" and runs["runs"][0]["trigger"] == "api"


def test_run_without_body_uses_default_params(client: FlaskClient) -> None:
    resp = client.post("/plugins/hello/run")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.get_json()["result"] == {"greeting": "hello world"}
    resp = client.post("/plugins/hello/run", data=b"  \n", content_type="application/json")
    assert resp.status_code == 200
    resp = client.post("/plugins/hello/run", json={"params": None})
    assert resp.get_json()["result"] == {"greeting": "hello world"}


def test_run_plugin_error_is_200_with_outcome(client: FlaskClient) -> None:
    resp = client.post("/plugins/raises/run", json={"params": {"kind": "ValueError"}})
    assert resp.status_code == 200
    doc = resp.get_json()
    assert doc["outcome"] == "value"
    assert doc["error"]["type"] == "ValueError" and doc["error"]["message"] == "boom: ValueError"
    health = client.get("/plugins/raises/health").get_json()
    assert health["status"] == "failing"
    assert health["errors_by_type"].get("value", 0) >= 1
    assert health["last_error"]["type"] == "ValueError"


def test_runs_default_limit_and_order(client: FlaskClient) -> None:
    for _ in range(2):
        assert client.post("/plugins/hello/run").status_code == 200
    runs = client.get("/plugins/hello/runs").get_json()["runs"]
    assert 2 <= len(runs) <= 20
    ids = [r["id"] for r in runs]
    assert ids == sorted(ids, reverse=True)


def test_metrics_text_and_openmetrics(client: FlaskClient) -> None:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == CONTENT_TYPE_TEXT
    text = resp.get_data(as_text=True)
    assert "# TYPE sidecar_plugin_success_total counter" in text
    assert not text.endswith("# EOF\n")

    resp = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == OPENMETRICS_CONTENT_TYPE
    body = resp.get_data(as_text=True)
    assert "# TYPE sidecar_plugin_success counter" in body
    assert body.endswith("# EOF\n")


def test_openapi_route(client: FlaskClient) -> None:
    resp = client.get("/openapi.json")
    assert resp.status_code == 200
    assert resp.get_json()["openapi"].startswith("3.1")


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/plugins/nope", "/plugins/nope/health", "/plugins/nope/runs"])
def test_unknown_plugin_get_404(client: FlaskClient, path: str) -> None:
    err = _error(client.get(path), 404, "unknown_plugin")
    assert "nope" in err["message"]


def test_unknown_plugin_run_404(client: FlaskClient) -> None:
    _error(client.post("/plugins/nope/run", json={}), 404, "unknown_plugin")


def test_unknown_route_404_is_json(client: FlaskClient) -> None:
    _error(client.get("/no/such/route"), 404, "not_found")


def test_wrong_method_405_is_json(client: FlaskClient) -> None:
    _error(client.get("/plugins/hello/run"), 405, "method_not_allowed")


@pytest.mark.parametrize(("body", "needle"), [
    (b"{", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1, 2]", "expected an object (table), got an array"),
    (b'"params"', "expected an object (table), got a string"),
    (b"null", "expected an object (table), got null"),
    (b'{"params": {}, "timeout": 5}', "unknown key 'timeout'; allowed: params, timeout_seconds"),
    (b'{"params": [1]}', "params"),
    (b'{"params": "x"}', "params"),
    (b'{"timeout_seconds": 0}', "timeout_seconds"),
    (b'{"timeout_seconds": -1}', "timeout_seconds"),
    (b'{"timeout_seconds": "5"}', "timeout_seconds"),
    (b'{"timeout_seconds": true}', "timeout_seconds"),
    (b'{"timeout_seconds": 31}', "exceeds"),
    (b'{"timeout_seconds": Infinity}', "not valid JSON"),
    (b'{"timeout_seconds": NaN}', "not valid JSON"),
    (b'{"timeout_seconds": -Infinity}', "not valid JSON"),
    (b'{"timeout_seconds": 1' + b"0" * 400 + b"}", "timeout_seconds = "),
    (b'{"timeout_seconds": 1e999}', "number out of range"),
    (b'{"params": {"a": 1e999}}', "out of range"),
    (b'{"params": {"a": "\\ud800"}}', "not valid JSON"),
    (b'{"params": ' + b'{"a": ' * 33 + b"1" + b"}" * 33 + b"}", "nested more than 32 deep"),
    (b'{"params": {"a": ' + b"[" * 500 + b"]" * 500 + b"}}", "nested more than 32 deep"),
    (b"[" * 500 + b"]" * 500, "expected an object (table), got an array"),
])
def test_run_bad_request(client: FlaskClient, body: bytes, needle: str) -> None:
    err = _error(client.post("/plugins/hello/run", data=body, content_type="application/json"), 400, "bad_request")
    assert needle in err["message"]


def test_bad_requests_are_counted_as_rejected_invalid(client: FlaskClient) -> None:
    def invalid() -> float:
        for line in client.get("/metrics").get_data(as_text=True).splitlines():
            if line.startswith('sidecar_plugin_rejected_total{plugin="echo",reason="invalid"}'):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError("no rejected series for echo")

    before = invalid()
    _error(client.post("/plugins/echo/run", json={"timeout_seconds": 10_000}), 400, "bad_request")
    assert invalid() == before + 1


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "abc", "1.5", "", "%201"])
def test_runs_bad_limit(client: FlaskClient, limit: str) -> None:
    err = _error(client.get(f"/plugins/hello/runs?limit={limit}"), 400, "bad_request")
    assert "limit" in err["message"]


def test_runs_unicode_digit_limit_is_400(client: FlaskClient) -> None:
    _error(client.get("/plugins/hello/runs", query_string={"limit": "\u00b2"}), 400, "bad_request")


def test_deeply_nested_body_is_400(client: FlaskClient) -> None:
    _error(client.post("/plugins/hello/run", data=b"[" * (MAX_BODY - 1)), 400, "bad_request")


def test_nan_timeout_is_400(client: FlaskClient) -> None:
    _error(client.post("/plugins/hello/run", data=b'{"timeout_seconds": NaN}',
                       content_type="application/json"), 400, "bad_request")


def test_body_over_max_is_413(client: FlaskClient) -> None:
    body = b'{"params": {"name": "' + b"x" * MAX_BODY + b'"}}'
    _error(client.post("/plugins/hello/run", data=body, content_type="application/json"), 413,
           "payload_too_large")


def test_body_at_max_is_accepted(client: FlaskClient) -> None:
    prefix, suffix = b'{"params": {"name": "', b'"}}'
    body = prefix + b"x" * (MAX_BODY - len(prefix) - len(suffix)) + suffix
    assert len(body) == MAX_BODY
    resp = client.post("/plugins/hello/run", data=body, content_type="application/json")
    assert resp.status_code == 200, resp.get_data(as_text=True)


def test_chunked_body_over_max_is_413(client: FlaskClient) -> None:
    # No Content-Length (gunicorn sets wsgi.input_terminated): the limit must hold while reading the stream.
    body = b'{"params": {}}' + b" " * (2 * MAX_BODY)
    resp = client.post("/plugins/hello/run", input_stream=io.BytesIO(body), content_type="application/json",
                       headers={"Transfer-Encoding": "chunked"}, environ_overrides={"wsgi.input_terminated": True})
    _error(resp, 413, "payload_too_large")


def test_chunked_body_under_max_is_read(client: FlaskClient) -> None:
    body = b'{"params": {"name": "chunked"}}' + b" " * (MAX_BODY - 40)
    resp = client.post("/plugins/hello/run", input_stream=io.BytesIO(body), content_type="application/json",
                       headers={"Transfer-Encoding": "chunked"}, environ_overrides={"wsgi.input_terminated": True})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.get_json()["result"] == {"greeting": "hello chunked"}


# -- bearer token ----------------------------------------------------------------------------------


@pytest.fixture
def token_client(tmp_path: Path) -> tuple[FlaskClient, FakeBackend]:
    backend = FakeBackend()
    flask_app = fake_app(_settings(tmp_path, api_token="s3cret"), backend)
    return flask_app.test_client(), backend


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong"},
    {"Authorization": "s3cret"},
    {"Authorization": "Basic s3cret"},
    {"Authorization": "Bearer s3cret "},
    {"Authorization": "bearer s3cret"},
])
def test_run_requires_bearer(token_client: tuple[FlaskClient, FakeBackend], headers: dict[str, str]) -> None:
    client, backend = token_client
    resp = client.post("/plugins/hello/run", json={}, headers=headers)
    _error(resp, 401, "unauthorized")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert backend.calls == []


def test_run_with_bearer(token_client: tuple[FlaskClient, FakeBackend]) -> None:
    client, backend = token_client
    resp = client.post("/plugins/hello/run", json={"params": {"a": 1}, "timeout_seconds": 2},
                       headers={"Authorization": "Bearer s3cret"})
    assert resp.status_code == 200
    assert backend.calls == [("hello", {"a": 1}, 2)]


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/plugins", "/plugins/hello",
                                  "/plugins/hello/health", "/plugins/hello/runs", "/openapi.json"])
def test_get_routes_open_with_token_set(token_client: tuple[FlaskClient, FakeBackend], path: str) -> None:
    client, _ = token_client
    assert client.get(path).status_code == 200


# -- readiness with a fake backend -------------------------------------------------------------------


def test_readyz_not_ready_is_503(tmp_path: Path) -> None:
    client = fake_app(_settings(tmp_path), FakeBackend(ready=False)).test_client()
    resp = client.get("/readyz")
    assert resp.status_code == 503
    assert resp.get_json()["ready"] is False
    assert client.get("/healthz").status_code == 200


def test_fake_backend_openmetrics_negotiation(tmp_path: Path) -> None:
    client = fake_app(_settings(tmp_path), FakeBackend()).test_client()
    assert client.get("/metrics").headers["Content-Type"] == CONTENT_TYPE_TEXT
    resp = client.get("/metrics", headers={"Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"})
    assert resp.headers["Content-Type"] == OPENMETRICS_CONTENT_TYPE


# -- /metrics: gzip, and values no scrape may fail on -------------------------------------------------


class MetricsBackend(FakeBackend):
    BODY = b"# HELP x_total a counter\n# TYPE x_total counter\nx_total 1.0\n" * 50

    def render_metrics(self, openmetrics: bool = False) -> tuple[bytes, str]:
        return self.BODY, CONTENT_TYPE_TEXT


@pytest.mark.parametrize("accept_encoding", ["gzip", "gzip, deflate", "deflate, GZIP;q=0.5", "br;q=1, gzip;q=0.1"])
def test_metrics_gzip_when_asked(tmp_path: Path, accept_encoding: str) -> None:
    client = fake_app(_settings(tmp_path), MetricsBackend()).test_client()
    resp = client.get("/metrics", headers={"Accept-Encoding": accept_encoding})
    assert resp.status_code == 200
    assert resp.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in resp.headers["Vary"]
    raw = resp.get_data()
    assert len(raw) < len(MetricsBackend.BODY)
    assert gzip.decompress(raw) == MetricsBackend.BODY
    assert resp.headers["Content-Type"] == CONTENT_TYPE_TEXT


@pytest.mark.parametrize("headers", [{}, {"Accept-Encoding": "identity"}, {"Accept-Encoding": "gzip;q=0"},
                                     {"Accept-Encoding": "deflate, br"}])
def test_metrics_not_gzipped_unless_asked(tmp_path: Path, headers: dict[str, str]) -> None:
    client = fake_app(_settings(tmp_path), MetricsBackend()).test_client()
    resp = client.get("/metrics", headers=headers)
    assert resp.status_code == 200
    assert "Content-Encoding" not in resp.headers
    assert resp.get_data() == MetricsBackend.BODY
    assert "Accept-Encoding" in resp.headers["Vary"]


def test_metrics_stay_200_and_parse_with_nan_and_infinities(app: Flask, client: FlaskClient,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    runner = app.extensions["sidecar_backend"]
    assert isinstance(runner, Runner)
    series = runner.metrics._plugins
    monkeypatch.setattr(series["hello"], "interval", math.nan)
    monkeypatch.setattr(series["echo"], "interval", math.inf)
    monkeypatch.setattr(series["raises"], "loaded_at", -math.inf)
    monkeypatch.setattr(series["hello"], "cache", None)
    monkeypatch.setattr(series["echo"], "cache", None)
    monkeypatch.setattr(series["raises"], "cache", None)
    openmetrics = "application/openmetrics-text; version=1.0.0"
    for accept, parse in (("text/plain", parse_text), (openmetrics, parse_openmetrics)):
        resp = client.get("/metrics", headers={"Accept": accept, "Accept-Encoding": "gzip"})
        assert resp.status_code == 200
        fams = {f.name: f for f in parse(gzip.decompress(resp.get_data()).decode())}
        interval = {s.labels["plugin"]: s.value for s in fams["sidecar_plugin_interval_seconds"].samples}
        assert math.isnan(interval["hello"]) and interval["echo"] == math.inf
        loaded = {s.labels["plugin"]: s.value for s in fams["sidecar_plugin_loaded_timestamp_seconds"].samples}
        assert loaded["raises"] == -math.inf
        assert {"process_resident_memory_bytes", "python_info"} <= set(fams)
    monkeypatch.undo()
    for name in ("hello", "echo", "raises"):
        series[name].cache = None


# -- saturation with a real Runner whose sandbox is held -------------------------------------------


def test_saturated_503_with_retry_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flask_app = create_app(_settings(tmp_path, max_concurrent_runs=1))
    runner = flask_app.extensions["sidecar_backend"]
    assert isinstance(runner, Runner)
    entered, release = threading.Event(), threading.Event()

    def held_run(request: RunRequest) -> PluginSandboxResult:
        entered.set()
        assert release.wait(30), "test never released the slot"
        now = time.time()
        return PluginSandboxResult(request.plugin.name, Outcome.SUCCESS, result={"held": True},
                                   execution_time_ms=1.0, peak_memory_bytes=1, started_at=now, finished_at=now)

    monkeypatch.setattr(runner.sandbox, "run", held_run)
    responses: list[Any] = []

    def first() -> None:
        responses.append(flask_app.test_client().post("/plugins/hello/run"))

    worker = threading.Thread(target=first)
    worker.start()
    try:
        assert entered.wait(30)
        client = flask_app.test_client()
        resp = client.post("/plugins/echo/run")
        err = _error(resp, 503, "saturated")
        assert "1" in err["message"]
        assert resp.headers["Retry-After"] == "1"
        metrics = client.get("/metrics").get_data(as_text=True)
        assert 'sidecar_plugin_rejected_total{plugin="echo",reason="saturated"} 1.0' in metrics
        assert 'sidecar_plugin_in_flight{plugin="hello"} 1.0' in metrics
    finally:
        release.set()
        worker.join(30)
        runner.close()
    assert len(responses) == 1 and responses[0].status_code == 200
    assert responses[0].get_json()["result"] == {"held": True}
    # the slot is free again
    snapshot = runner.metrics.snapshot("hello")
    assert snapshot["in_flight"] == 0 and snapshot["success"] == 1


def test_in_flight_returns_to_zero_when_the_sandbox_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flask_app = create_app(_settings(tmp_path))
    runner = flask_app.extensions["sidecar_backend"]
    assert isinstance(runner, Runner)

    def broken_run(request: RunRequest) -> PluginSandboxResult:
        raise OSError("launcher gone")

    monkeypatch.setattr(runner.sandbox, "run", broken_run)
    flask_app.logger.disabled = True
    try:
        resp = flask_app.test_client().post("/plugins/hello/run")
        assert resp.status_code == 500
        assert runner.metrics.snapshot("hello")["in_flight"] == 0
    finally:
        runner.close()


HOSTILE_BODIES = [
    b'{"params": {"a": ' + b"[" * 500 + b"]" * 500 + b"}}",
    b'{"timeout_seconds": 1' + b"0" * 400 + b"}",
    b'{"params": {"a": 1e999}}',
    b'{"params": [1]}',
    b'{"bogus": 1}',
    b"{",
    b'{"timeout_seconds": 31}',
]


@pytest.mark.parametrize("body", HOSTILE_BODIES)
def test_hostile_bodies_run_nothing_and_count_invalid(client: FlaskClient, body: bytes) -> None:
    def state() -> tuple[int, float]:
        runs = len(client.get("/plugins/echo/runs?limit=1000").get_json()["runs"])
        for line in client.get("/metrics").get_data(as_text=True).splitlines():
            if line.startswith('sidecar_plugin_rejected_total{plugin="echo",reason="invalid"}'):
                return runs, float(line.rsplit(" ", 1)[1])
        raise AssertionError("no rejected series")

    runs, invalid = state()
    _error(client.post("/plugins/echo/run", data=body, content_type="application/json"), 400, "bad_request")
    assert state() == (runs, invalid + 1)


def test_unknown_plugin_is_404_whatever_the_body(client: FlaskClient) -> None:
    _error(client.post("/plugins/nope/run", data=b"{"), 404, "unknown_plugin")


def test_405_carries_allow(client: FlaskClient) -> None:
    resp = client.get("/plugins/hello/run")
    _error(resp, 405, "method_not_allowed")
    assert "POST" in resp.headers["Allow"]
    resp = client.delete("/plugins")
    assert "GET" in resp.headers["Allow"]


def test_fake_backend_counts_bad_bodies_before_any_run(tmp_path: Path) -> None:
    backend = FakeBackend()
    client = fake_app(_settings(tmp_path), backend).test_client()
    _error(client.post("/plugins/hello/run", data=b'{"params": 1}'), 400, "bad_request")
    assert backend.calls == [("hello", "rejected", "invalid")]


# -- probe and reload routes -----------------------------------------------------------------------------


def test_probe_route_hands_validated_input_to_the_backend(tmp_path: Path) -> None:
    backend = FakeBackend()
    client = fake_app(_settings(tmp_path), backend).test_client()
    resp = client.get("/probe?target=hello&param.n=2&param.s=x", headers={"X-Prometheus-Scrape-Timeout-Seconds": "4"})
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    assert b"sidecar_probe_success 1.0" in resp.data
    assert backend.calls == [("hello", {"n": 2, "s": "x"}, 3.5)]
    assert client.get("/probe?target=hello&bogus=1").status_code == 400
    assert client.get("/probe?target=nope").status_code == 404
    # nothing ran for bad input; the 400 is counted like any other
    assert backend.calls[1:] == [("hello", "rejected", "invalid")]


def test_reload_route(tmp_path: Path) -> None:
    backend = FakeBackend()
    client = fake_app(_settings(tmp_path, api_token="s3cret"), backend).test_client()
    auth = {"Authorization": "Bearer s3cret"}
    _error(client.post("/-/reload"), 401, "unauthorized")
    resp = client.post("/-/reload", headers=auth)
    assert resp.status_code == 200 and resp.get_json()["removed"] == []
    backend.reload_error = ConfigError("reload refused, the running configuration is kept: bad.toml: boom")
    assert "boom" in _error(client.post("/-/reload", headers=auth), 400, "config")["message"]
