"""The gunicorn worker of `sidecar serve`: gevent, with gunicorn's own errors answered in JSON.

Why gevent: a gthread worker gives each connection a thread while it reads the request, so a
few connections dripping header bytes (17 against 2 workers x 8 threads) silence `/healthz` and
`/metrics`. Under gevent a slow connection costs a greenlet (a few KB), up to
`worker_connections` per worker, and the request is handled in the same greenlet once complete.
The runner relay (`rpc.RunnerClient`, blocking Unix sockets) works unchanged: gevent patches
`socket` and `threading` in the worker before the app is imported, so a long run only parks its
greenlet while the worker keeps serving and heartbeating (the arbiter's timeout never sees it).

Why idle connections are bounded: a connection holds a slot of the worker's pool
(`worker_connections`) from its accept until it closes, and gunicorn keeps it for `keepalive`
seconds while it waits for a request (the first one too). 4,000 clients that connect, send
nothing and reconnect as soon as they are closed filled every slot: the worker stopped
accepting, and `/healthz` waited ~5 s in the listen queue behind them. Two defences now:
the listener defers accepting a TCP connection until its first bytes arrive (`defer_accept`), so
a client that only connects stays in the kernel and costs the workers nothing; and a worker that
takes its last free slot closes the connection that has waited for a request the longest
(`SidecarWorker.handle`), so it never stops accepting while any connection is idle. A connection
that is serving a request is never closed to make room.

Why `handle_error`: gunicorn answers what it cannot parse (an over-long request line, bad
headers, too many or too large header fields, a malformed chunk) itself, before the app, with
an HTML page. Every error of this API is `{"error": {"code", "message"}}`, so these are too.
"""

from __future__ import annotations

import json
import socket
from ssl import SSLError
from types import TracebackType
from typing import Any

import gevent  # type: ignore[import-untyped]  # no stubs; pyproject lists gunicorn only
from gunicorn.http import errors as http
from gunicorn.workers.ggevent import GeventWorker

__all__ = ["SidecarWorker", "defer_accept", "gunicorn_error"]

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


def defer_accept(listener: socket.socket, seconds: float) -> bool:
    """Have the kernel hold a new TCP connection until its first bytes arrive (Linux `TCP_DEFER_ACCEPT`).

    A connection that sends nothing then never reaches `accept()`, so it takes neither a slot of a
    worker nor a place in the listen queue ahead of a real request; after `seconds` the kernel
    hands it over anyway, and the worker's deadline applies. False where the option does not
    exist (not Linux, a Unix socket).
    """
    option = getattr(socket, "TCP_DEFER_ACCEPT", None)
    if option is None or listener.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        listener.setsockopt(socket.IPPROTO_TCP, option, max(1, round(seconds)))
    except OSError:
        return False
    return True


class _IdleWait:
    """One connection's wait for its next request, with a deadline; another greenlet may end it early.

    Used as gunicorn's `timeout_ctx` (the wait around reading a request line and headers, the first
    request included): on expiry or eviction the parse is abandoned silently and gunicorn closes
    the connection, exactly as at the end of a keep-alive period.
    """

    __slots__ = ("_glet", "_timeout", "_waits")

    def __init__(self, waits: dict[_IdleWait, None], seconds: float) -> None:
        self._waits = waits
        self._timeout = gevent.Timeout(seconds, False)
        self._glet: Any = None

    def __enter__(self) -> _IdleWait:
        self._glet = gevent.getcurrent()
        self._timeout.start()
        self._waits[self] = None  # insertion order = oldest wait first
        return self

    def __exit__(self, typ: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> bool:
        self._waits.pop(self, None)
        return bool(self._timeout.__exit__(typ, value, tb))  # swallows only its own expiry

    def end_now(self) -> None:
        """Expire this wait on the hub's next turn (never raises into a greenlet that left it)."""
        self._waits.pop(self, None)
        gevent.get_hub().loop.run_callback(self._expire)

    def _expire(self) -> None:
        if self._timeout.pending:  # still waiting: it neither got its request nor timed out
            self._glet.throw(self._timeout)


class SidecarWorker(GeventWorker):  # type: ignore[misc]  # gunicorn is untyped
    """Gunicorn's gevent worker with a bounded number of idle connections and JSON errors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.held = 0  # connections between accept and close
        self.waits: dict[_IdleWait, None] = {}  # connections waiting for a request, oldest first

    def run(self) -> None:
        for listener in self.sockets:
            defer_accept(listener, self.cfg.keepalive)
        super().run()

    def timeout_ctx(self) -> _IdleWait:
        return _IdleWait(self.waits, self.cfg.keepalive)

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        """Serve one connection; taking the pool's last slot closes the longest-waiting idle one."""
        self.held += 1
        try:
            if self.held >= self.worker_connections and self.waits:
                next(iter(self.waits)).end_now()
            super().handle(listener, client, addr)
        finally:
            self.held -= 1

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
