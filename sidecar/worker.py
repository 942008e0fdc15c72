"""The gunicorn worker of `sidecar serve`: gevent, with gunicorn's own errors answered in JSON.

Why gevent: a gthread worker gives each connection a thread while it reads the request, so a
few connections dripping header bytes (17 against 2 workers x 8 threads) silence `/healthz` and
`/metrics`. Under gevent a slow connection costs a greenlet (a few KB), up to
`worker_connections` per worker, and the request is handled in the same greenlet once complete.
The runner relay (`rpc.RunnerClient`, blocking Unix sockets) works unchanged: gevent patches
`socket` and `threading` in the worker before the app is imported, so a long run only parks its
greenlet while the worker keeps serving and heartbeating (the arbiter's timeout never sees it).

Why `handle_error`: gunicorn answers what it cannot parse (an over-long request line, bad
headers, too many or too large header fields, a malformed chunk) itself, before the app, with
an HTML page. Every error of this API is `{"error": {"code", "message"}}`, so these are too.
"""

from __future__ import annotations

import json
from ssl import SSLError
from typing import Any

from gunicorn.http import errors as http
from gunicorn.workers.ggevent import GeventWorker

__all__ = ["SidecarWorker", "gunicorn_error"]

#: Gunicorn's parse errors by status and code; order matters (subclasses first).
_CLIENT_ERRORS: tuple[tuple[type[BaseException], int, str], ...] = (
    (http.InvalidResponseHeader, 500, "internal"),
    (http.InvalidResponseHeaderName, 500, "internal"),
    (http.LimitRequestLine, 414, "uri_too_long"),
    (http.LimitRequestHeaders, 431, "request_header_fields_too_large"),
    (http.ExpectationFailed, 417, "expectation_failed"),
    (http.UnsupportedTransferCoding, 501, "not_implemented"),
    (http.ConfigurationProblem, 500, "internal"),
    (http.ForbiddenProxyRequest, 403, "forbidden"),
    (SSLError, 403, "forbidden"),
    (http.ParseException, 400, "bad_request"),
)

_REASONS = {400: "Bad Request", 403: "Forbidden", 414: "URI Too Long", 417: "Expectation Failed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented"}


def gunicorn_error(exc: BaseException) -> tuple[int, str, str]:
    """(status, code, message) for an exception gunicorn's worker caught (pure)."""
    for cls, status, code in _CLIENT_ERRORS:
        if isinstance(exc, cls):
            if status == 500:
                return status, code, "internal error"
            text = str(exc)
            if len(text) > 200:  # an echoed 10 KB request line is no use to anyone
                text = text[:200] + "..."
            return status, code, f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return 500, "internal", "internal error"


def error_response(status: int, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


class SidecarWorker(GeventWorker):  # type: ignore[misc]  # gunicorn is untyped
    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        status, code, message = gunicorn_error(exc)
        if status < 500:
            self.log.warning("invalid request from %s: %s", (addr or ("",))[0], message)
        else:
            self.log.exception("error handling request %s", getattr(req, "uri", "(no URI read)"))
        try:
            client.sendall(error_response(status, code, message))
        except OSError:
            self.log.debug("failed to send the error response")
