"""Client side of the sandbox: starts a launcher process and turns its reports into results.

`Sandbox` is thread-safe: gunicorn threads and the scheduler submit runs concurrently; one
reader thread resolves their futures. If the launcher dies, pending runs end as `crash` and the
next submission starts a fresh launcher.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..framing import FrameError, recv_frame, send_frame
from .environment import plugin_environment
from .result import ErrorInfo, ExitFacts, Outcome, PluginSandboxResult, decide_outcome

__all__ = ["PluginRef", "RunRequest", "Sandbox", "default_sandbox", "run_plugin_sandboxed"]

DEFAULT_TIMEOUT_SECONDS = 60.0
DEFAULT_MEMORY_LIMIT_MB = 1024
DEFAULT_MAX_RESULT_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class PluginRef:
    """Where a plugin's code lives: a file path or an importable module (never imported here)."""

    name: str
    path: str | None = None
    module: str | None = None
    attr: str = "run"

    def __post_init__(self) -> None:
        if (self.path is None) == (self.module is None):
            raise ValueError("PluginRef needs exactly one of path= or module=")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "module": self.module, "attr": self.attr}


@dataclass(frozen=True, slots=True)
class RunRequest:
    plugin: PluginRef
    params: Mapping[str, Any] = field(default_factory=dict)
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    max_processes: int | None = None
    #: "run" calls the plugin; "import" only loads it (used by `sidecar check`)
    mode: str = "run"

    def to_wire(self, rid: int) -> bytes:
        return json.dumps({
            "id": rid,
            "plugin": self.plugin.to_dict(),
            "params": dict(self.params),
            "timeout_seconds": self.timeout_seconds,
            "memory_limit_mb": self.memory_limit_mb,
            "max_result_bytes": self.max_result_bytes,
            "max_output_bytes": self.max_output_bytes,
            "max_processes": self.max_processes,
            "mode": self.mode,
        }).encode()


def build_result(request: RunRequest, header: dict[str, Any], message: bytes) -> PluginSandboxResult:
    """Combine the launcher's observations and the child's message into the result (pure)."""
    name = request.plugin.name
    if "launch_error" in header:
        return PluginSandboxResult(name, Outcome.CRASH, error=ErrorInfo("LaunchError", header["launch_error"]))
    decoded: dict[str, Any] | None = None
    protocol_error = header.get("protocol_error")
    if message and protocol_error is None:
        try:
            decoded = json.loads(message)
            if not isinstance(decoded, dict) or decoded.get("outcome") not in Outcome.__members__.values():
                raise ValueError("unexpected message shape")
        except ValueError as exc:
            decoded, protocol_error = None, f"malformed result message ({exc})"
    status = header.get("wait_status")
    facts = ExitFacts(
        wait_status=0 if status is None else int(status),
        timed_out=bool(header["timed_out"]),
        memory_killed=bool(header["memory_killed"]),
        message=decoded,
        protocol_error=protocol_error,
    )
    outcome, result, error = decide_outcome(facts, request.timeout_seconds, request.memory_limit_mb)
    peak = decoded.get("peak_memory_bytes") if decoded else None
    if not isinstance(peak, int) or peak <= 0:
        peak = header["peak_memory_bytes"]
    return PluginSandboxResult.from_dict({
        "plugin": name,
        "outcome": outcome.value,
        "result": result,
        "error": None if error is None else {"type": error.type, "message": error.message,
                                             "traceback": error.traceback},
        "peak_memory_bytes": peak,
        **{k: header[k] for k in ("execution_time_ms", "started_at", "finished_at", "stdout", "stderr")},
    })


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _LauncherProcess:
    """One launcher process and its control socket; connections are made per calling thread."""

    def __init__(self, env: dict[str, str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-S", "-m", "sidecar.sandbox.launcher", str(theirs.fileno()),
                 json.dumps(sys.path)],
                pass_fds=(theirs.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        self.ctrl = ours
        self.lock = threading.Lock()

    def connect(self) -> socket.socket:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self.lock:
                socket.send_fds(self.ctrl, [b"c"], [theirs.fileno()])
        finally:
            theirs.close()
        return mine

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        try:
            self.ctrl.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.ctrl.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Sandbox:
    """Runs plugins through one launcher process; thread-safe, one connection per thread.

    A calling thread blocks on its own connection, so there is no reader thread and no hand-off
    between threads on the hot path. If the launcher dies, runs in flight end as `crash` and the
    next run starts a fresh launcher.
    """

    #: extra seconds a caller waits beyond a run's timeout before declaring the launcher wedged
    GRACE_SECONDS = 30.0

    def __init__(self, *, environ: Mapping[str, str] | None = None, extra_env: Iterable[str] = ()) -> None:
        env = plugin_environment(os.environ if environ is None else environ, extra_env)
        root = _package_root()
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._env = env
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._launcher: _LauncherProcess | None = None
        self._local = threading.local()
        self._conns: set[socket.socket] = set()
        self._closed = False

    @property
    def launcher_pid(self) -> int | None:
        return self._launcher.proc.pid if self._launcher else None

    def _current(self) -> _LauncherProcess:
        with self._lock:
            if self._closed:
                raise RuntimeError("sandbox is closed")
            if self._launcher is None or not self._launcher.alive():
                if self._launcher is not None:
                    self._launcher.stop()
                self._launcher = _LauncherProcess(self._env)
            return self._launcher

    def _connection(self) -> socket.socket:
        launcher = self._current()
        conn: socket.socket | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "launcher", None) is not launcher:
            if conn is not None:
                self._discard(conn)
            conn = launcher.connect()
            with self._lock:
                self._conns.add(conn)
            self._local.conn = conn
            self._local.launcher = launcher
        return conn

    def run(self, request: RunRequest) -> PluginSandboxResult:
        """Run one request on this thread's connection; never raises for what the plugin does."""
        rid = next(self._ids)
        try:
            conn = self._connection()
            conn.settimeout(request.timeout_seconds + self.GRACE_SECONDS)
            send_frame(conn, request.to_wire(rid))
            header_bytes = recv_frame(conn)
            message = recv_frame(conn) if header_bytes is not None else None
        except (OSError, FrameError) as exc:
            self._forget_connection()
            return self._lost(request, f"sandbox launcher connection failed: {exc}")
        if header_bytes is None or message is None:
            self._forget_connection()
            return self._lost(request, "sandbox launcher exited mid-run")
        return build_result(request, json.loads(header_bytes), message)

    def _discard(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.discard(conn)
        conn.close()

    def _forget_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._discard(conn)
        self._local.conn = None

    def _lost(self, request: RunRequest, why: str) -> PluginSandboxResult:
        with self._lock:
            launcher = self._launcher
        if launcher is not None and launcher.alive() and "timed out" in why:
            launcher.proc.kill()  # wedged: the next run starts a fresh one
        return PluginSandboxResult(request.plugin.name, Outcome.CRASH, error=ErrorInfo("LauncherDied", why))

    def close(self) -> None:
        """Stop the launcher; it kills whatever runs are still in flight."""
        with self._lock:
            self._closed = True
            launcher, self._launcher = self._launcher, None
            conns, self._conns = self._conns, set()
        for conn in conns:
            conn.close()
        if launcher is not None:
            launcher.stop()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_default: Sandbox | None = None
_default_lock = threading.Lock()


def default_sandbox() -> Sandbox:
    """The process-wide sandbox used by `run_plugin_sandboxed`, started on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Sandbox()
            atexit.register(_default.close)
        return _default


def run_plugin_sandboxed(
    plugin: PluginRef | str,
    params: Mapping[str, Any] | None = None,
    *,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB,
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    mode: str = "run",
) -> PluginSandboxResult:
    """Run a plugin once in a guarded child process and report exactly what happened.

    `plugin` is a PluginRef, a path to a `.py` file, or an importable module name.
    Never raises for anything the plugin does: every misbehaviour is an outcome.
    """
    if isinstance(plugin, str):
        if plugin.endswith(".py"):
            name = os.path.splitext(os.path.basename(plugin))[0]
            plugin = PluginRef(name, path=os.path.abspath(plugin))
        else:
            plugin = PluginRef(plugin.rsplit(".", 1)[-1], module=plugin)
    request = RunRequest(plugin, dict(params or {}), timeout_seconds, memory_limit_mb, max_result_bytes,
                         max_output_bytes, mode=mode)
    return default_sandbox().run(request)
