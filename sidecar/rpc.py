"""The runner's Unix-socket interface, and the client gunicorn workers use to reach it.

One request per frame: `{"op": NAME, "args": {...}}`. Two frames back: a JSON header
(`{"ok": value}` or `{"error": {...}}`) and a raw body (the rendered metrics; empty otherwise),
so a large scrape body is never JSON-encoded. Errors are rebuilt as the same `SidecarError`
classes on the worker side.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading
from typing import Any

from .errors import RunnerUnavailable, SidecarError
from .framing import FrameError, recv_frame, send_frame
from .runner import Runner

__all__ = ["RunnerClient", "RunnerServer"]

log = logging.getLogger(__name__)

#: The operations a worker may call, and the runner method each maps to.
OPERATIONS = {"plugins", "plugin", "health", "runs", "run", "reject", "render_metrics", "ready", "ping"}


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
                op = req.get("op")
                if op not in OPERATIONS:
                    raise SidecarError(f"unknown operation {op!r}")
                value = getattr(self.server.runner, op)(**req.get("args", {}))
                if op == "render_metrics":
                    body, content_type = value
                    value = content_type
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
    daemon_threads = True

    def __init__(self, path: str, runner: Runner) -> None:
        self.runner = runner
        if os.path.exists(path):
            os.unlink(path)
        super().__init__(path, _Handler)
        os.chmod(path, 0o600)


class RunnerClient:
    """The runner's methods, called over its socket.

    Idle connections are pooled, not kept per thread: under the gevent worker every HTTP
    connection is its own greenlet, and a per-greenlet connection would cost the runner one
    thread per client connection and leak until garbage collection.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()

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

    def call(self, op: str, **args: Any) -> tuple[Any, bytes]:
        payload = json.dumps({"op": op, "args": args}).encode()
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
            if attempt == 2 or op == "run":  # never run a plugin twice
                raise RunnerUnavailable("the runner closed the connection")
        assert header is not None and body is not None
        decoded = json.loads(header)
        if "error" in decoded:
            raise SidecarError.from_dict(decoded["error"])
        return decoded["ok"], body

    def plugins(self) -> list[dict[str, Any]]:
        return list(self.call("plugins")[0])

    def plugin(self, name: str) -> dict[str, Any]:
        return dict(self.call("plugin", name=name)[0])

    def health(self, name: str) -> dict[str, Any]:
        return dict(self.call("health", name=name)[0])

    def runs(self, name: str, limit: int = 20) -> list[dict[str, Any]]:
        return list(self.call("runs", name=name, limit=limit)[0])

    def run(self, name: str, params: Any = None, timeout_seconds: Any = None) -> dict[str, Any]:
        return dict(self.call("run", name=name, params=params, timeout_seconds=timeout_seconds)[0])

    def reject(self, name: str, reason: str) -> None:
        self.call("reject", name=name, reason=reason)

    def render_metrics(self, openmetrics: bool = False) -> tuple[bytes, str]:
        content_type, body = self.call("render_metrics", openmetrics=openmetrics)
        return body, str(content_type)

    def ready(self) -> dict[str, Any]:
        return dict(self.call("ready")[0])

    def ping(self) -> bool:
        return bool(self.call("ping")[0])
