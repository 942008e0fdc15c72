"""The runner's Unix-socket interface, and the client gunicorn workers use to reach it.

Generic over the runner's declared operations (`@operation` in `runner.py`): the server calls any
declared method, the client forwards any declared name, so neither changes when one is added.

One request per frame: `{"op": NAME, "args": [...], "kwargs": {...}}`. Two frames back: a JSON
header (`{"ok": value}` or `{"error": {...}}`) and a raw body (a `raw` operation's bytes, such as
the rendered metrics; empty otherwise), so a large scrape body is never JSON-encoded. Errors are
rebuilt as the same `SidecarError` classes on the worker side.

The relay is bounded at both ends, so that a burst of calls cannot leave the runner with threads
and descriptors it never gives back (300 concurrent clients once took it from 4 threads and 8 fds
to 44 and 93, for good), and no caller waits without a deadline:

- a worker holds at most `relay_connections(max_concurrent_runs)` connections to the runner (a
  call beyond waits up to `RUNNER_WAIT_SECONDS` for one, then gets 503 `saturated`) and keeps at
  most `RUNNER_IDLE_CONNECTIONS` of them between calls;
- its sockets time out: connecting after `RUNNER_WAIT_SECONDS`, a reply after the longest run
  (`max_timeout_seconds`) plus `RUNNER_REPLY_MARGIN_SECONDS` (503 `runner_unavailable`);
- the runner serves a bounded number of connections, a thread each (the workers' caps together,
  plus spares); one beyond is answered 503 `saturated` and closed.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import defaults
from .config import Settings
from .errors import RunnerUnavailable, Saturated, SidecarError
from .framing import FrameError, recv_frame, send_frame
from .operations import OPERATIONS

if TYPE_CHECKING:  # the server lives in the runner's process; workers import only the client
    from .runner import Runner

__all__ = ["OPERATIONS", "RunnerClient", "RunnerServer", "relay_connections"]

log = logging.getLogger(__name__)



def relay_connections(max_concurrent_runs: int) -> int:
    """Connections one worker may hold to the runner: one per run it may start, plus room for reads."""
    return max_concurrent_runs + defaults.RUNNER_SPARE_CONNECTIONS


def _reply(sock: socket.socket, header: dict[str, Any], body: bytes = b"") -> None:
    send_frame(sock, json.dumps(header).encode())
    send_frame(sock, body)


class _Handler(socketserver.BaseRequestHandler):
    server: RunnerServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        while True:
            try:
                sock.settimeout(None)  # between calls a worker may keep the connection as long as it likes
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
                sock.settimeout(defaults.RUNNER_REPLY_MARGIN_SECONDS)  # a worker that stopped reading
                _reply(sock, header, body)
            except OSError:
                return  # the worker went away (killed mid-run): the run is recorded all the same


class RunnerServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Answers the sidecar's own processes only: same uid (SO_PEERCRED) and, once `trusted_parent`
    is set, a child of it (the gunicorn master's workers) or this process.

    A thread per connection, at most `max_connections` at once (by default what the workers may
    hold together, plus spares); a connection beyond is answered `saturated` and closed, and each
    thread ends with its connection, so the runner returns to its idle threads and fds.
    """

    daemon_threads = True
    request_queue_size = 128  # workers connect in bursts: a full backlog would stall their connect()
    trusted_parent: int | None = None

    def __init__(self, path: str, runner: Runner, max_connections: int | None = None) -> None:
        self.runner = runner
        s = runner.settings
        self.max_connections = max_connections or (
            s.workers * relay_connections(s.max_concurrent_runs) + defaults.RUNNER_SPARE_CONNECTIONS)
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self.refused = 0
        self._refusal_logged = 0.0
        if os.path.exists(path):
            os.unlink(path)
        super().__init__(path, _Handler)
        os.chmod(path, 0o600)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread started to release it
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        """Answer the caller's first call with 503 `saturated` (never a hang), without a thread."""
        self.refused += 1
        now = time.monotonic()
        if now - self._refusal_logged > 10:
            self._refusal_logged = now
            log.warning("runner socket: %d connections open (the limit): refused one (%d so far)",
                        self.max_connections, self.refused)
        error = Saturated(f"the runner serves at most {self.max_connections} connections at once", retry_after=1)
        try:
            request.setblocking(False)  # a fresh socket's buffer takes the two frames; never wait here
            _reply(request, {"error": error.to_dict()})
        except OSError:
            pass
        self.shutdown_request(request)

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
    thread per client connection and leak until garbage collection. The pool is bounded (see the
    module docstring): `max_connections` open at once, `max_idle` kept between calls.
    """

    def __init__(self, path: str, *, max_timeout_seconds: float = defaults.MAX_TIMEOUT_SECONDS,
                 max_concurrent_runs: int | None = None, max_idle: int = defaults.RUNNER_IDLE_CONNECTIONS,
                 wait_seconds: float = defaults.RUNNER_WAIT_SECONDS,
                 reply_margin_seconds: float = defaults.RUNNER_REPLY_MARGIN_SECONDS) -> None:
        self.path = path
        self.max_connections = relay_connections(max_concurrent_runs or Settings().max_concurrent_runs)
        self.max_idle = max_idle
        self.wait_seconds = wait_seconds
        self.reply_timeout = max_timeout_seconds + reply_margin_seconds
        self._open = threading.BoundedSemaphore(self.max_connections)
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
        while True:
            with self._lock:
                if not self._idle:
                    break
                conn = self._idle.pop()
            if _quiet(conn):
                return conn
            conn.close()  # closed by the runner (a refusal, a restart) while it waited here
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(self.wait_seconds)
        try:
            conn.connect(self.path)
        except OSError as exc:
            conn.close()
            raise RunnerUnavailable(f"the runner is not reachable: {exc}") from None
        conn.settimeout(self.reply_timeout)
        return conn

    def _give_back(self, conn: socket.socket) -> None:
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close the idle connections (the next call opens a new one)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def call(self, op: str, *args: Any, **kwargs: Any) -> tuple[Any, bytes]:
        """(value, raw body) of one operation; a dropped connection is retried once unless `resend` is off.

        Raises Saturated when no connection of this worker's freed within `wait_seconds`, and
        RunnerUnavailable when the runner cannot be reached or does not answer in time.
        """
        spec = OPERATIONS[op]
        payload = json.dumps({"op": op, "args": args, "kwargs": kwargs}).encode()
        if not self._open.acquire(timeout=self.wait_seconds):
            raise Saturated(f"all {self.max_connections} connections of this worker to the runner stayed "
                            f"busy for {self.wait_seconds:g} s", retry_after=1)
        try:
            header, body = self._exchange(payload, spec.resend)
        finally:
            self._open.release()
        decoded = json.loads(header)
        if "error" in decoded:
            raise SidecarError.from_dict(decoded["error"])
        return decoded["ok"], body

    def _exchange(self, payload: bytes, resend: bool) -> tuple[bytes, bytes]:
        for attempt in (1, 2):  # a connection kept from before a runner restart fails once
            conn = self._take()
            header = body = None
            try:
                try:
                    send_frame(conn, payload)
                except TimeoutError:
                    raise
                except OSError:
                    pass  # the runner may have answered (a refusal) and closed: read what it said
                header = recv_frame(conn)
                body = recv_frame(conn) if header is not None else None
            except TimeoutError:
                conn.close()
                raise RunnerUnavailable(f"the runner did not answer within {self.reply_timeout:g} s") from None
            except (OSError, FrameError):
                header = body = None
            if header is not None and body is not None:
                self._give_back(conn)
                return header, body
            conn.close()
            if attempt == 2 or not resend:
                break
        raise RunnerUnavailable("the runner closed the connection")


def _quiet(conn: socket.socket) -> bool:
    """True when an idle connection has nothing to read: not closed by the runner, no stray bytes."""
    timeout = conn.gettimeout()
    conn.setblocking(False)
    try:
        conn.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        conn.settimeout(timeout)
    return False
