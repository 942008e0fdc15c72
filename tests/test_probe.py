"""`GET /probe`: query validation, budget, rendering, and probes through the app with a real runner."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families as parse_text

from sidecar.app import create_app
from sidecar.config import CheckConfig, Settings
from sidecar.errors import BadRequest
from sidecar.probe import MAX_FIELDS, SCRAPE_TIMEOUT_HEADER, budget_seconds, numeric_fields, parse_request, render
from sidecar.runner import Runner

from .conftest import HOSTILE

TOKEN = "probe-secret"


def _args(**kw: str | list[str]) -> list[tuple[str, list[str]]]:
    return [(k.replace("__", "."), v if isinstance(v, list) else [v]) for k, v in kw.items()]


def _samples(body: bytes) -> dict[str, float]:
    out = {}
    for fam in parse_text(body.decode()):
        assert fam.type == "gauge", fam
        for s in fam.samples:
            key = s.name + ("" if not s.labels else "{" + ",".join(f"{k}={v}" for k, v in s.labels.items()) + "}")
            out[key] = s.value
    return out


# --- the pure rules -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "budget"), [(None, 10.0), ("3", 2.5), ("10", 9.5), ("0.7", 0.5), ("1e-3", 0.5),
                                                    ("1" + "0" * 400, float("inf"))])
def test_budget_is_the_scrape_timeout_minus_a_margin(header: str | None, budget: float) -> None:
    assert budget_seconds(header) == budget


@pytest.mark.parametrize("header", ["", "abc", "0", "-1", "nan", "-inf"])
def test_a_bad_scrape_timeout_header_is_refused(header: str) -> None:
    with pytest.raises(BadRequest, match=SCRAPE_TIMEOUT_HEADER):
        budget_seconds(header)


def test_params_are_parsed_like_the_cli() -> None:
    req = parse_request(_args(target="echo", param__n="3", param__flag="true", param__s="text", param__l="[1,2]"),
                        "4")
    assert (req.target, req.budget_seconds) == ("echo", 3.5)
    assert req.params == {"n": 3, "flag": True, "s": "text", "l": [1, 2]}


@pytest.mark.parametrize(("args", "message"), [
    (_args(), "missing query parameter target"),
    (_args(target="Bad-Name"), "target must match"),
    (_args(target="echo", other="1"), "unknown query parameter 'other'"),
    (_args(target="echo", param__="1"), "unknown query parameter 'param.'"),
    (_args(target=["echo", "echo"]), "given 2 times"),
])
def test_bad_queries_are_refused(args: list[tuple[str, list[str]]], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_request(args, None)


def test_numeric_fields_are_bounded_and_sanitised() -> None:
    result = {"latency ms": 1.5, "ok": True, "count": 3, "name": "x", "nested": {"a": 1}, "list": [1],
              **{f"z{i:03d}": i for i in range(2 * MAX_FIELDS)}}  # sorted after the others
    found, skipped = numeric_fields(result)
    fields = dict(found)
    assert len(fields) == MAX_FIELDS and skipped == len(result) - 3 - MAX_FIELDS  # not name, nested, list
    assert fields["latency_ms"] == 1.5 and fields["ok"] == 1.0 and fields["count"] == 3.0
    assert not {"name", "nested", "list"} & set(fields)
    assert numeric_fields([1, 2]) == ([], 0) and numeric_fields(None) == ([], 0)


def test_render_parses_as_prometheus_text() -> None:
    ok = _samples(render({"outcome": "success", "duration_seconds": 0.25, "result": {"up": 1, "ms": float("nan")}}))
    assert ok["sidecar_probe_success"] == 1.0 and ok["sidecar_probe_duration_seconds"] == 0.25
    assert ok["sidecar_probe_value{field=up}"] == 1.0
    failed = _samples(render({"outcome": "timeout", "duration_seconds": 2.0, "result": None}))
    assert failed == {"sidecar_probe_success": 0.0, "sidecar_probe_duration_seconds": 2.0,
                      "sidecar_probe_values_skipped": 0.0}


# --- through the app, with a real runner ---------------------------------------------------------------


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    checks = (CheckConfig("loopback_disk", "disk_usage", {"path": "/"}),)
    settings = Settings(data_dir=str(tmp_path_factory.mktemp("probe")), plugin_path=(str(HOSTILE),),
                        entry_points=False, checks=checks, max_concurrent_runs=1, api_token=TOKEN)
    flask_app = create_app(settings)
    yield flask_app
    flask_app.extensions["sidecar_backend"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> Runner:
    backend: Runner = app.extensions["sidecar_backend"]
    return backend


def _probe(client: FlaskClient, query: str, timeout: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if timeout is not None:
        headers[SCRAPE_TIMEOUT_HEADER] = timeout
    resp = client.get(f"/probe?{query}", headers=headers)
    if resp.status_code != 200:
        return resp.status_code, resp.get_json()
    assert resp.mimetype == "text/plain"
    return 200, _samples(resp.data)


def test_probe_of_a_check_uses_its_configured_params(client: FlaskClient, runner: Runner) -> None:
    status, samples = _probe(client, "target=loopback_disk")
    assert status == 200 and samples["sidecar_probe_success"] == 1.0, samples
    assert 0.0 <= samples["sidecar_probe_value{field=used_percent}"] <= 100.0
    assert samples["sidecar_probe_value{field=total_bytes}"] > 0
    assert runner.runs("loopback_disk", 1)[0]["trigger"] == "probe"


def test_probe_of_a_plugin_with_params(client: FlaskClient, runner: Runner) -> None:
    before = runner.metrics.snapshot("echo")["success"]
    status, samples = _probe(client, "target=echo&param.n=42&param.ratio=0.5&param.word=hi")
    assert status == 200
    assert samples["sidecar_probe_success"] == 1.0
    assert samples["sidecar_probe_value{field=n}"] == 42.0 and samples["sidecar_probe_value{field=ratio}"] == 0.5
    assert "sidecar_probe_value{field=word}" not in samples
    assert runner.metrics.snapshot("echo")["success"] == before + 1  # counted like any run
    assert runner.runs("echo", 1)[0]["trigger"] == "probe"


def test_a_spinning_plugin_ends_inside_the_scrape_budget(client: FlaskClient, runner: Runner) -> None:
    status, samples = _probe(client, "target=loop", timeout="2")
    assert status == 200
    assert samples["sidecar_probe_success"] == 0.0
    assert samples["sidecar_probe_duration_seconds"] < 2.0  # inside what Prometheus announced
    last = runner.runs("loop", 1)[0]
    assert (last["outcome"], last["trigger"]) == ("timeout", "probe")


def test_a_saturated_sidecar_answers_200_with_success_0(client: FlaskClient, runner: Runner) -> None:
    holder = threading.Thread(target=lambda: runner.run("sleep", {"seconds": 3}), daemon=True)
    rejected_before = _rejected(runner, "echo")
    holder.start()
    try:
        deadline = time.monotonic() + 30
        while runner.metrics.snapshot("sleep")["in_flight"] < 1:  # the only slot is taken
            assert time.monotonic() < deadline
            time.sleep(0.01)
        status, samples = _probe(client, "target=echo", timeout="1")
        assert status == 200 and samples["sidecar_probe_success"] == 0.0, samples
        assert _rejected(runner, "echo") == rejected_before + 1
    finally:
        holder.join(timeout=30)


def _rejected(runner: Runner, plugin: str, reason: str = "saturated") -> float:
    body, _ = runner.render_metrics()
    for fam in parse_text(body.decode()):
        for s in fam.samples:
            if s.name == "sidecar_plugin_rejected_total" and s.labels == {"plugin": plugin, "reason": reason}:
                return float(s.value)
    raise AssertionError("no rejected series")


@pytest.mark.parametrize(("query", "status", "code"), [
    ("target=no_such_plugin", 404, "unknown_plugin"),
    ("nothing=1", 400, "bad_request"),
])
def test_input_errors_are_4xx(client: FlaskClient, query: str, status: int, code: str) -> None:
    got, doc = _probe(client, query)
    assert (got, doc["error"]["code"]) == (status, code)


def test_params_for_a_check_are_refused_and_counted_invalid(client: FlaskClient, runner: Runner) -> None:
    before = runner.store.totals("loopback_disk")
    assert _probe(client, "target=loopback_disk&param.path=/tmp")[0] == 400
    body, _ = runner.render_metrics()
    assert b'sidecar_plugin_rejected_total{plugin="loopback_disk",reason="invalid"} 1.0' in body
    assert runner.store.totals("loopback_disk") == before  # nothing ran


def test_probe_requires_the_token_when_one_is_set(client: FlaskClient, tmp_path: Path) -> None:
    resp = client.get("/probe?target=echo")
    assert resp.status_code == 401
    resp = client.get("/probe?target=echo", headers={"Authorization": "Bearer wrong"})
    assert resp.status_code == 401


def _ran(runner: Runner, plugin: str) -> tuple[Any, float]:
    """What would change if `plugin` ran: its history totals and its runs in the metrics."""
    return runner.store.totals(plugin), runner.metrics.snapshot(plugin)["runs"]


def test_a_number_beyond_a_float_is_skipped_and_counted_not_a_500(client: FlaskClient, runner: Runner) -> None:
    status, samples = _probe(client, "target=echo&param.big=1" + "0" * 400 + "&param.small=2")
    assert status == 200, samples
    assert samples["sidecar_probe_success"] == 1.0
    assert samples["sidecar_probe_value{field=small}"] == 2.0
    assert "sidecar_probe_value{field=big}" not in samples
    assert samples["sidecar_probe_values_skipped"] == 1.0


def test_values_that_are_not_finite_floats_or_over_the_bound_are_skipped_and_counted() -> None:
    result = {"big": 10**400, "nan": float("nan"), "inf": float("inf"), "ninf": float("-inf"), "ok": 2,
              "a b": 3, "a_b": 4, **{f"z{i:03d}": i for i in range(MAX_FIELDS + 5)}}
    samples = _samples(render({"outcome": "success", "duration_seconds": 0.1, "result": result}))
    values = {k: v for k, v in samples.items() if k.startswith("sidecar_probe_value{")}
    assert len(values) == MAX_FIELDS
    assert values["sidecar_probe_value{field=ok}"] == 2.0 and values["sidecar_probe_value{field=a_b}"] == 3.0
    # 4 not finite, 1 clashing sanitised name ("a_b" after "a b"), 7 past the bound (57 fields for 50 places)
    assert samples["sidecar_probe_values_skipped"] == 12.0


def test_head_runs_nothing(client: FlaskClient, runner: Runner) -> None:
    before = _ran(runner, "echo")
    resp = client.head("/probe?target=echo", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 405 and resp.headers["Allow"] == "GET"
    assert _ran(runner, "echo") == before


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400", "[NaN]"])
def test_a_param_that_is_no_finite_number_is_the_callers_400(client: FlaskClient, runner: Runner, value: str) -> None:
    before, invalid = _ran(runner, "echo"), _rejected(runner, "echo", "invalid")
    status, doc = _probe(client, f"target=echo&param.x={value}")
    assert (status, doc["error"]["code"]) == (400, "bad_request"), doc
    assert "param.x" in doc["error"]["message"]
    assert _ran(runner, "echo") == before  # nothing ran: no `value` error recorded against the plugin
    assert _rejected(runner, "echo", "invalid") == invalid + 1


@pytest.mark.parametrize(("query", "timeout"), [
    ("target=echo&other=1", None),
    ("target=echo&param.=1", None),
    ("target=echo", "abc"),
])
def test_every_400_for_a_known_target_is_counted_invalid(client: FlaskClient, runner: Runner, query: str,
                                                         timeout: str | None) -> None:
    before, invalid = _ran(runner, "echo"), _rejected(runner, "echo", "invalid")
    assert _probe(client, query, timeout)[0] == 400
    assert _rejected(runner, "echo", "invalid") == invalid + 1
    assert _ran(runner, "echo") == before


def test_a_400_for_an_unknown_target_is_its_404(client: FlaskClient) -> None:
    status, doc = _probe(client, "target=no_such_plugin&other=1")
    assert (status, doc["error"]["code"]) == (404, "unknown_plugin")


def test_a_target_with_a_final_newline_is_refused_whole(client: FlaskClient) -> None:
    status, doc = _probe(client, "target=echo%0A")
    assert (status, doc["error"]["code"]) == (400, "bad_request")
    assert "target must match" in doc["error"]["message"]


def test_a_target_down_is_a_failed_probe_with_its_values() -> None:
    """A check that ran and reports critical (the target is down) is sidecar_probe_success 0, like
    blackbox_exporter's probe_success; its numbers still say what it saw."""
    body = render({"outcome": "success", "state": "critical", "result": {"up": 0, "status": 503},
                   "duration_seconds": 0.1}).decode()
    assert "sidecar_probe_success 0.0" in body
    assert 'sidecar_probe_value{field="up"} 0.0' in body and 'sidecar_probe_value{field="status"} 503.0' in body
    assert "sidecar_probe_success 1.0" in render({"outcome": "success", "state": "warning", "result": {},
                                                  "duration_seconds": 0.1}).decode()
