"""The gunicorn worker's JSON errors, without a server (the live answers are in tests/integration)."""

from __future__ import annotations

import json

import pytest
from gunicorn.http import errors as http

from sidecar.worker import error_response, gunicorn_error


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
