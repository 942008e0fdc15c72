"""The runner's Unix-socket interface, and the client gunicorn workers use to reach it.

Generic over the runner's declared operations (`@operation` in `runner.py`): the server calls any
declared method, the client forwards any declared name, so neither changes when one is added.

One request per frame: `{"op": NAME, "args": [...], "kwargs": {...}}`. Two frames back: a JSON
header (`{"ok": value}` or `{"error": {...}}`) and a raw body (a `raw` operation's bytes, such as
the rendered metrics; empty otherwise), so a large scrape body is never JSON-encoded. Errors are
rebuilt as the same `SidecarError` classes on the worker side.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import struct
import threading
from collections.abc import Callable
from typing import Any

from .errors import RunnerUnavailable, SidecarError
from .framing import FrameError, recv_frame, send_frame
from .operations import operations_of
from .runner import Runner

__all__ = ["OPERATIONS", "RunnerClient", "RunnerServer"]

log = logging.getLogger(__name__)

#: The operations a worker may call: the runner's methods marked `@operation`.
OPERATIONS = operations_of(Runner)


class _Handler(socketserver.BaseRequestHandler):
    server: RunnerServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        while True:
            try:
                frame = recv_frame(sock, limit=64 << 20)
            except (OSError, FrameError):
                return
            if frame is None:
                return
            body = b""
            try:
                req = json.loads(frame)
                spec = OPERATIONS.get(req.get("op"))
                if spec is None:
                    raise SidecarError(f"unknown operation {req.get('op')!r}")
                value = getattr(self.server.runner, spec.name)(*req.get("args", ()), **req.get("kwargs", {}))
                if spec.raw:
                    body, value = value
                header: dict[str, Any] = {"ok": value}
            except SidecarError as exc:
                header = {"error": exc.to_dict()}
            except Exception as exc:  # a bug must answer 500 on the worker, not kill the connection
                log.exception("runner operation failed")
                header = {"error": {"code": "internal", "message": f"{type(exc).__name__}: {exc}"}}
            try:
                send_frame(sock, json.dumps(header).encode())
                send_frame(sock, body)
            except OSError:
                return  # the worker went away (killed mid-run): the run is recorded all the same


class RunnerServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Answers the sidecar's own processes only: same uid (SO_PEERCRED) and, once `trusted_parent`
    is set, a child of it (the gunicorn master's workers) or this process."""

    daemon_threads = True
    trusted_parent: int | None = None

    def __init__(self, path: str, runner: Runner) -> None:
        self.runner = runner
        if os.path.exists(path):
            os.unlink(path)
        super().__init__(path, _Handler)
        os.chmod(path, 0o600)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        pid, uid, _gid = struct.unpack("3i", request.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        ok = uid == os.geteuid() and (self.trusted_parent is None or pid == os.getpid()
                                      or _parent_of(pid) == self.trusted_parent)
        if not ok:
            log.warning("runner socket: refused a peer that is not the sidecar's (pid %d, uid %d)", pid, uid)
        return ok


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return None


class RunnerClient:
    """The runner's declared operations, called over its socket.

    `client.health("echo")` forwards to `Runner.health("echo")`; a `raw` operation returns the same
    `(body, value)` pair the runner's method does.

    Idle connections are pooled, not kept per thread: under the gevent worker every HTTP
    connection is its own greenlet, and a per-greenlet connection would cost the runner one
    thread per client connection and leak until garbage collection.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        spec = OPERATIONS.get(name)
        if spec is None:
            raise AttributeError(f"the runner has no operation {name!r}")

        def forward(*args: Any, **kwargs: Any) -> Any:
            value, body = self.call(name, *args, **kwargs)
            return (body, value) if spec.raw else value

        forward.__name__ = name
        return forward

    def _take(self) -> socket.socket:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(self.path)
        except OSError as exc:
            conn.close()
            raise RunnerUnavailable(f"the runner is not reachable: {exc}") from None
        return conn

    def _give_back(self, conn: socket.socket) -> None:
        with self._lock:
            self._idle.append(conn)

    def close(self) -> None:
        """Close the idle connections (the next call opens a new one)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def call(self, op: str, *args: Any, **kwargs: Any) -> tuple[Any, bytes]:
        """(value, raw body) of one operation; a dropped connection is retried once unless `resend` is off."""
        spec = OPERATIONS[op]
        payload = json.dumps({"op": op, "args": args, "kwargs": kwargs}).encode()
        for attempt in (1, 2):  # a connection kept from before a runner restart fails once
            conn = self._take()
            try:
                send_frame(conn, payload)
                header = recv_frame(conn)
                body = recv_frame(conn) if header is not None else None
            except (OSError, FrameError):
                header = body = None
            if header is not None and body is not None:
                self._give_back(conn)
                break
            conn.close()
            if attempt == 2 or not spec.resend:
                raise RunnerUnavailable("the runner closed the connection")
        assert header is not None and body is not None
        decoded = json.loads(header)
        if "error" in decoded:
            raise SidecarError.from_dict(decoded["error"])
        return decoded["ok"], body
