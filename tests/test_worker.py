"""The gunicorn worker's JSON errors and idle-connection bounds, without a server (the live answers
are in tests/integration)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import gevent  # type: ignore[import-untyped]  # no stubs; pyproject lists gunicorn only
import pytest
from gunicorn.http import errors as http

from sidecar.worker import _IdleWait, defer_accept, error_response, gunicorn_error


@pytest.mark.parametrize(("exc", "status", "code"), [
    (http.LimitRequestLine(10_000, 4094), 414, "uri_too_long"),
    (http.LimitRequestHeaders("too many"), 431, "request_header_fields_too_large"),
    (http.InvalidRequestLine("GARBAGE"), 400, "bad_request"),
    (http.InvalidHeaderName("Bad Header"), 400, "bad_request"),
    (http.InvalidChunkSize(b"zz"), 400, "bad_request"),
    (http.UnsupportedTransferCoding("gzip"), 501, "not_implemented"),
    (http.InvalidResponseHeaderName("x\n"), 500, "internal"),
    (RuntimeError("bug"), 500, "internal"),
])
def test_status_and_code(exc: BaseException, status: int, code: str) -> None:
    got = gunicorn_error(exc)
    assert got[:2] == (status, code)
    assert got[2] and len(got[2]) < 300
    if status == 500:
        assert "bug" not in got[2]  # internals stay in the log


def test_response_is_json_and_closes() -> None:
    raw = error_response(414, "uri_too_long", "LimitRequestLine: " + "é")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 414 URI Too Long\r\n")
    assert b"Connection: close" in head and b"Content-Type: application/json" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert json.loads(body) == {"error": {"code": "uri_too_long", "message": "LimitRequestLine: é"}}


def test_an_idle_wait_ended_early_closes_quietly_and_never_after_it_was_left() -> None:
    waits: dict[_IdleWait, None] = {}
    seen: list[str] = []

    def idle() -> None:  # a connection that never sends its request
        with _IdleWait(waits, 60):
            gevent.sleep(60)
            seen.append("request")
        seen.append("closed")

    def served() -> None:  # a connection whose request arrived: its wait is over, it is busy
        with _IdleWait(waits, 60):
            pass
        gevent.sleep(0.05)
        seen.append("served")

    first = gevent.spawn(idle)
    gevent.sleep(0)
    assert list(waits) and len(waits) == 1
    wait = next(iter(waits))
    second = gevent.spawn(served)
    gevent.sleep(0)
    assert list(waits) == [wait]  # the served one left its wait at once
    wait.end_now()
    assert not waits
    gevent.joinall([first, second], timeout=10, raise_error=True)
    assert sorted(seen) == ["closed", "served"]


def test_an_idle_wait_expires_on_its_deadline() -> None:
    waits: dict[_IdleWait, None] = {}
    with _IdleWait(waits, 0.01):
        gevent.sleep(60)
        raise AssertionError("the wait should have expired")
    assert not waits


def test_tcp_listeners_defer_accept_and_unix_ones_are_left_alone(tmp_path: Path) -> None:
    with socket.socket() as tcp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        if not hasattr(socket, "TCP_DEFER_ACCEPT"):
            assert not defer_accept(tcp, 5)
        else:
            assert defer_accept(tcp, 5)
            assert tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) > 0
    with socket.socket(socket.AF_UNIX) as unix:
        unix.bind(str(tmp_path / "s"))
        unix.listen()
        assert not defer_accept(unix, 5)
