"""Hostile request bodies against the real service (gunicorn workers relaying to the runner).

Each answers 4xx JSON, runs nothing (the history and the success/error counters do not move) and
is counted once as `reason="invalid"`.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import LiveServer

pytestmark = pytest.mark.integration

PLUGIN = "hello"


def _state(server: LiveServer) -> tuple[int, float, float]:
    status, doc = server.json("GET", f"/plugins/{PLUGIN}/runs?limit=1000")
    assert status == 200
    values = {}
    _, _, body = server.request("GET", "/metrics")
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            if s.labels.get("plugin") == PLUGIN:
                values[(s.name, s.labels.get("reason"), s.labels.get("error_type"))] = s.value
    runs = values[("sidecar_plugin_success_total", None, None)] + sum(
        v for (name, _, _), v in values.items() if name == "sidecar_plugin_errors_total")
    return len(doc["runs"]), runs, values[("sidecar_plugin_rejected_total", "invalid", None)]


def _raw(server: LiveServer, head: bytes, body: bytes) -> tuple[int, dict[str, Any]]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1])


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 1 << 30


HOSTILE = [
    b'{"params": {"a": ' + b"[" * 500 + b"]" * 500 + b"}}",
    b'{"params": ' + b'{"a": ' * 500 + b"1" + b"}" * 500 + b"}",
    b'{"timeout_seconds": 1' + b"0" * 400 + b"}",
    b'{"timeout_seconds": NaN}',
    b'{"timeout_seconds": 100000}',
    b'{"params": {"a": 1e999}}',
    b'{"params": "x"}',
    b'{"params": {}, "extra": 1}',
    b"\xff\xfe",
]


@pytest.mark.parametrize("body", HOSTILE, ids=lambda b: repr(b[:24]))
def test_hostile_body_is_400_json_and_runs_nothing(live_server: LiveServer, body: bytes) -> None:
    before = _state(live_server)
    status, _, data = live_server.request("POST", f"/plugins/{PLUGIN}/run", raw=body,
                                          headers={"Content-Type": "application/json"})
    assert status == 400, data[:300]
    assert set(json.loads(data)["error"]) == {"code", "message"}
    runs, count, invalid = _state(live_server)
    assert (runs, count, invalid) == (before[0], before[1], before[2] + 1)


@pytest.mark.parametrize("chunks", [b"zz\r\n{}\r\n0\r\n\r\n", b"2\r\n{}XX0\r\n\r\n", b"-1\r\n{}\r\n0\r\n\r\n"])
def test_malformed_chunked_body_is_400_json_and_runs_nothing(live_server: LiveServer, chunks: bytes) -> None:
    before = _state(live_server)
    head = (f"POST /plugins/{PLUGIN}/run HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: application/json\r\nConnection: close\r\n\r\n").encode()
    status, doc = _raw(live_server, head, chunks)
    assert status == 400 and doc["error"]["code"] == "bad_request", doc
    runs, count, invalid = _state(live_server)
    assert (runs, count, invalid) == (before[0], before[1], before[2] + 1)


def test_405_is_json_with_allow(live_server: LiveServer) -> None:
    status, headers, data = live_server.request("DELETE", f"/plugins/{PLUGIN}/run")
    assert status == 405 and "POST" in str(headers.get("Allow"))
    assert json.loads(data)["error"]["code"] == "method_not_allowed"


def test_a_plugin_that_does_not_import_does_not_stop_serve(live_server: LiveServer) -> None:
    """The live server's plugin path holds syntax_error.py and missing_dependency.py: serve started anyway."""
    status, doc = live_server.json("GET", "/plugins/syntax_error")
    assert status == 200 and doc["problem"].startswith("SyntaxError")
    assert live_server.run("missing_dependency")["outcome"] == "import"
