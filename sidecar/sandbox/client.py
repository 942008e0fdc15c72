"""Caller side of the sandbox: starts the launcher, drives each run, turns what it saw into a result.

`Sandbox` is thread-safe: runner threads and the scheduler run plugins concurrently, each on a
channel of its own (a connection to the launcher holding pre-forked children). A launcher that
dies or stops answering is replaced (see `Sandbox`); the results of its runs in flight say so.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import math
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..defaults import (
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MAX_RESULT_BYTES,
    DEFAULT_MEMORY_LIMIT_MB,
    DEFAULT_TIMEOUT_SECONDS,
    LAUNCHER_ANSWER_SECONDS,
    LAUNCHER_PING_SECONDS,
    MAX_PROCESSES,
    MAX_TEMPLATES,
    RUN_BACKSTOP_SECONDS,
    TEMPLATES,
)
from ..framing import FrameError, FrameReader, encode, send_frame, write_all
from .capture import Capture
from .containment import Cgroups, describe, detect, end_unit_now, kill_launcher_units, release, set_memory_limit
from .environment import plugin_environment
from .isolation import Confinement, Isolation, bwrap_command, namespaces_unavailable, needed_paths
from .result import ErrorInfo, ExitFacts, Outcome, PluginSandboxResult, decide_outcome, encodable, recorded_peak

# The DEFAULT_* limits are declared once in `sidecar.defaults` and re-exported from here.
_log = logging.getLogger("sidecar.sandbox")

__all__ = ["DEFAULT_MAX_OUTPUT_BYTES", "DEFAULT_MAX_RESULT_BYTES", "DEFAULT_MEMORY_LIMIT_MB", "DEFAULT_TIMEOUT_SECONDS",
           "PluginRef", "RunRequest", "Sandbox", "default_sandbox", "run_plugin_sandboxed"]


@dataclass(frozen=True, slots=True)
class PluginRef:
    """Where a plugin's code lives: a file path or an importable module (never imported here)."""

    name: str
    path: str | None = None
    module: str | None = None
    attr: str = "run"
    #: fork runs from a template that imported the plugin once (metadata `preload = false` says no)
    preload: bool = True

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
    #: "default" or "strict" for this run (a check's own); None: the sandbox's isolation mode
    isolation: str | None = None
    #: strict mode only: keep the host's network (the check or the plugin's metadata says so)
    network: bool = False
    #: show the host's /proc (the plugin's metadata says so); its PID namespace stays its own
    host_processes: bool = False
    #: positional arguments, before `params` as keywords (the guard API calls any function this way)
    args: Sequence[Any] = ()
    #: the caller's import path, searched first in the child (None: the launcher's, fixed at its start)
    sys_path: Sequence[str] | None = None

    def __post_init__(self) -> None:
        """Refuse impossible limits up front: a NaN deadline would never fire."""
        if not (isinstance(self.timeout_seconds, int | float) and math.isfinite(self.timeout_seconds)
                and self.timeout_seconds > 0):
            raise ValueError(f"timeout_seconds must be a positive finite number, got {self.timeout_seconds!r}")
        for name in ("memory_limit_mb", "max_result_bytes", "max_output_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.mode not in ("run", "import"):
            raise ValueError(f"mode must be 'run' or 'import', got {self.mode!r}")
        if self.isolation not in (None, "default", "strict"):
            raise ValueError(f"isolation must be 'default' or 'strict', got {self.isolation!r}")

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
            "args": list(self.args),
            "sys_path": self.wire_sys_path(),
        }).encode()

    def wire_sys_path(self) -> list[str] | None:
        return None if self.sys_path is None else list(self.sys_path)


def _host_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 2**63 - 1


#: The ceiling of a peak memory figure: no process's resident set exceeds the host's memory.
HOST_MEMORY_BYTES = _host_memory()
#: In a result message's raw bytes, what may decode to a lone surrogate: the UTF-8 form of U+D800-U+DFFF
#: (the child encodes with `surrogatepass`) or a JSON `\uD800`-`\uDFFF` escape. Only then is it walked.
_MAY_HOLD_SURROGATES = re.compile(rb"\xed[\xa0-\xbf]|\\u[dD][89a-fA-F]")


def build_result(request: RunRequest, header: dict[str, Any], message: bytes) -> PluginSandboxResult:
    """Combine what the caller and the launcher observed with the child's message (pure).

    The message is the plugin's to forge: its strings are made encodable and its peak memory
    clamped (see `result`), and one that cannot be decoded makes the run a `crash`, never an error here.
    """
    name = request.plugin.name
    decoded: dict[str, Any] | None = None
    protocol_error = header.get("protocol_error")
    if message and protocol_error is None:
        try:
            decoded = json.loads(message)
            if not isinstance(decoded, dict) or decoded.get("outcome") not in Outcome.__members__.values():
                raise ValueError("unexpected message shape")
            if _MAY_HOLD_SURROGATES.search(message):
                decoded = encodable(decoded)
        except (ValueError, RecursionError) as exc:
            decoded, protocol_error = None, f"malformed result message ({type(exc).__name__}: {exc})"
    status = header.get("wait_status")
    facts = ExitFacts(
        wait_status=0 if status is None else int(status),
        timed_out=bool(header["timed_out"]),
        memory_killed=bool(header["memory_killed"]),
        memory_by=str(header.get("memory_by") or ""),
        message=decoded,
        protocol_error=protocol_error,
    )
    outcome, result, error = decide_outcome(facts, request.timeout_seconds, request.memory_limit_mb)
    # What the sidecar measured (the unit's cgroup peak, or the launcher's rusage of the run) comes first.
    peak = recorded_peak(header["peak_memory_bytes"], decoded.get("peak_memory_bytes") if decoded else None,
                         HOST_MEMORY_BYTES)
    return PluginSandboxResult.from_dict({
        "plugin": name,
        "outcome": outcome.value,
        "result": result,
        "error": None if error is None else {"type": error.type, "message": error.message,
                                             "traceback": error.traceback},
        "peak_memory_bytes": peak,
        "report": decoded.get("report") if decoded and outcome is Outcome.SUCCESS else None,
        **{k: header[k] for k in ("execution_time_ms", "started_at", "finished_at", "stdout", "stderr")},
    })


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _LauncherProcess:
    """One launcher process and its control socket, over which channel connections are handed."""

    def __init__(self, env: dict[str, str], prefix: list[str], drop_privileges: bool,
                 max_templates: int = MAX_TEMPLATES, cgroups: Cgroups | None = None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.cgroups = cgroups
        #: the launcher's directory in each cgroup hierarchy: ours to end if it stops answering
        self.units_tag = f"l-{os.getpid()}-{os.urandom(4).hex()}"
        #: why it was replaced (it stopped answering), once it was
        self.replaced: str | None = None
        #: when the watchdog's unanswered ping was sent (None: none outstanding)
        self.ping_sent: float | None = None
        try:
            self.proc = subprocess.Popen(
                # -P: `-m` would put the working directory first on sys.path (a planted `sidecar/` would run);
                # the runner's own path, absolute entries only, is what the launcher imports from.
                [*prefix, sys.executable, "-S", "-P", "-m", "sidecar.sandbox.launcher", str(theirs.fileno()),
                 json.dumps([p for p in sys.path if os.path.isabs(p)]),
                 json.dumps({"drop_privileges": drop_privileges, "max_templates": max_templates,
                             "cgroups": (cgroups or Cgroups()).to_wire(), "max_processes": MAX_PROCESSES,
                             "units_tag": self.units_tag})],
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
                self.ctrl.settimeout(LAUNCHER_ANSWER_SECONDS)
                socket.send_fds(self.ctrl, [b"c"], [theirs.fileno()])
        except OSError as exc:
            mine.close()
            raise LauncherLost(f"launcher connection failed: {exc}") from None
        finally:
            theirs.close()
        return mine

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ping(self, timeout: float) -> str | None:
        """None when the launcher's loop answered within `timeout`, else why not (the watchdog's only reader)."""
        self.ping_sent = time.monotonic()
        try:
            with self.lock:
                self.ctrl.settimeout(timeout)
                self.ctrl.send(b"p")
            self.ctrl.settimeout(max(0.001, self.ping_sent + timeout - time.monotonic()))
            answer = self.ctrl.recv(64)
        except TimeoutError:
            return f"it did not answer a ping within {timeout:g} s (stopped or hung)"
        except OSError as exc:
            return f"its control socket failed: {exc}"
        if not answer:
            return "it exited"
        self.ping_sent = None
        return None

    def kill(self) -> None:
        """End it and everything it started, now: it stopped answering, so it cannot end its runs itself.
        Its children die with it (their death signal; in bubblewrap the PID namespace); its units' cgroups
        are killed from here."""
        kill_launcher_units(self.cgroups, self.units_tag)
        self.proc.kill()
        try:
            self.ctrl.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.ctrl.close()
        try:
            self.proc.wait(timeout=LAUNCHER_ANSWER_SECONDS)
        except subprocess.TimeoutExpired:
            _log.error("launcher %d did not exit after SIGKILL", self.proc.pid)

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


class LauncherLost(Exception):
    pass


class _Channel:
    """One calling thread's connection to the launcher: the messages it sends and the tickets."""

    def __init__(self, sock: socket.socket, launcher: _LauncherProcess) -> None:
        self.sock = sock
        self.launcher = launcher
        self.reader = FrameReader(limit=1 << 20)
        self.messages: deque[dict[str, Any]] = deque()
        self.fds: deque[int] = deque()
        self.tickets: deque[tuple[int, list[int]]] = deque()
        #: tickets forked from a plugin's template: each answers this channel's one `want`
        self.template_tickets: deque[tuple[int, list[int]]] = deque()
        #: pid -> its unit's memory cgroup, where the caller sets the run's limit before the request
        self.units: dict[int, dict[str, Any]] = {}

    def close(self) -> None:
        for tickets in (self.tickets, self.template_tickets):
            for _pid, fds in tickets:
                for fd in fds:
                    os.close(fd)
            tickets.clear()
        while self.fds:
            os.close(self.fds.popleft())
        self.sock.close()

    def _receive(self, timeout: float) -> dict[str, Any]:
        while not self.messages:
            self.sock.settimeout(timeout)
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, 1 << 16, 16)
            except TimeoutError:
                raise LauncherLost("the launcher did not answer") from None
            except OSError as exc:
                raise LauncherLost(f"launcher connection failed: {exc}") from None
            if not data and not fds:
                raise LauncherLost("the launcher exited")
            self.fds.extend(fds)
            self.reader.feed(data)
            try:
                self.messages.extend(json.loads(f) for f in self.reader.frames())
            except (FrameError, ValueError) as exc:
                raise LauncherLost(f"garbled launcher message: {exc}") from None
        msg = self.messages.popleft()
        if msg.get("t") == "ticket":  # its five fds arrived with (or before) its bytes, in order
            queue = self.template_tickets if msg.get("template") else self.tickets
            queue.append((int(msg["pid"]), [self.fds.popleft() for _ in range(5)]))
            if msg.get("unit"):
                self.units[int(msg["pid"])] = msg["unit"]
        return msg

    def ask(self, msg: dict[str, Any]) -> None:
        self.sock.settimeout(LAUNCHER_ANSWER_SECONDS)
        try:
            send_frame(self.sock, json.dumps(msg).encode())
        except OSError as exc:
            raise LauncherLost(f"launcher connection failed: {exc}") from None

    def template_ticket(self, request: RunRequest, t0: float, timeout: float) -> dict[str, Any]:
        """Ask for a child forked from the plugin's template: a ticket, a fallback, or the import's failure."""
        self.ask({"t": "want", "plugin": request.plugin.to_dict(), "sys_path": request.wire_sys_path(),
                  "memory_limit_mb": request.memory_limit_mb, "max_processes": request.max_processes,
                  "timeout_seconds": request.timeout_seconds, "t0": t0})
        while True:
            msg = self._receive(timeout)
            if msg.get("t") == "ticket" and msg.get("template"):
                return msg
            if msg.get("t") in ("fallback", "template_failed", "error"):
                return msg

    def stats(self, timeout: float = LAUNCHER_ANSWER_SECONDS) -> dict[str, Any]:
        self.ask({"t": "stats"})
        while True:
            msg = self._receive(timeout)
            if msg.get("t") == "stats":
                return msg

    def ticket(self, timeout: float = LAUNCHER_ANSWER_SECONDS) -> tuple[int, list[int]]:
        while not self.tickets:
            msg = self._receive(timeout)
            if msg.get("t") == "error":
                raise LauncherLost(f"the launcher could not start a child: {msg.get('message')}")
        return self.tickets.popleft()

    def exit_of(self, pid: int, timeout: float) -> dict[str, Any]:
        while True:
            msg = self._receive(timeout)
            if msg.get("t") == "exit" and msg.get("pid") == pid:
                return msg

    def end(self, pid: int) -> None:
        """The result is in: the launcher ends the run's unit and reports its exit."""
        self.sock.settimeout(LAUNCHER_ANSWER_SECONDS)
        try:
            send_frame(self.sock, json.dumps({"t": "end", "pid": pid}).encode())
        except OSError as exc:
            raise LauncherLost(f"launcher connection failed: {exc}") from None

    def start(self, pid: int, request: RunRequest, t0: float) -> None:
        self.sock.settimeout(LAUNCHER_ANSWER_SECONDS)
        try:
            send_frame(self.sock, json.dumps({"t": "start", "pid": pid, "t0": t0,
                                              "timeout_seconds": request.timeout_seconds,
                                              "memory_limit_mb": request.memory_limit_mb}).encode())
        except OSError as exc:
            raise LauncherLost(f"launcher connection failed: {exc}") from None




def _kill(pidfd: int) -> None:
    """SIGKILL a run through its pidfd (its pid may be another namespace's); the launcher then kills
    its process group and reaps whatever it left."""
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def made_up(request: RunRequest, outcome: Outcome, error_type: str, message: str, started_at: float,
            t0: float) -> PluginSandboxResult:
    """A result the sandbox makes up (the launcher died or was replaced, a template hung, the sidecar is
    stopping): the run's real start and end, and an error naming what happened."""
    elapsed = time.monotonic() - t0
    return PluginSandboxResult(request.plugin.name, outcome, error=ErrorInfo(error_type, message),
                               execution_time_ms=elapsed * 1000.0, started_at=started_at,
                               finished_at=started_at + elapsed)


#: The error type of a run the sidecar's stop ended or refused.
STOPPING = "SidecarStopping"


def _stopped(result: PluginSandboxResult) -> PluginSandboxResult:
    """A run the stop ended (its launcher killed it, or it could no longer start): `aborted`, `SidecarStopping`,
    with its real times and output. What the plugin itself answered in time stands."""
    if result.outcome not in (Outcome.CRASH, Outcome.ABORTED) or (result.error and result.error.type == STOPPING):
        return result
    return dataclasses.replace(result, outcome=Outcome.ABORTED, result=None, error=ErrorInfo(
        STOPPING, "the sidecar stopped while this run was in flight, after its grace period for runs "
                           "in flight (stop_grace_seconds): the run was ended"))


def _drive(channel: _Channel, request: RunRequest, pid: int, fds: list[int], t0: float, started_at: float,
           stalled: Any) -> PluginSandboxResult:
    """Run one request on a ticket: write it into the child, read its result and output directly.

    `t0`/`started_at` are when the run was asked for (its deadline counts from there, waits for a template
    included); `stalled(launcher, why)` replaces a launcher that did not report the run's end in time."""
    req_w, res_r, out_r, err_r, pidfd = fds
    unit = channel.units.pop(pid, None)
    limit = request.memory_limit_mb * 1024 * 1024
    if unit and unit.get("limit") != limit:  # the whole tree's bound, in force before the run reads its request
        set_memory_limit(unit.get("memory"), bool(unit.get("memory_v2")), limit)
    try:
        write_all(req_w, encode(request.to_wire(pid)))
    except OSError:
        pass  # the child is already gone: its exit report says why
    os.close(req_w)
    fds[0] = -1
    # Told after the child has its request, so the launcher's work overlaps the run instead of
    # delaying it; the deadline counts from t0 all the same (CLOCK_MONOTONIC is system-wide).
    channel.start(pid, request, t0)
    result = FrameReader(limit=request.max_result_bytes + 65536)
    frames: list[bytes] = []
    out, err = Capture(request.max_output_bytes), Capture(request.max_output_bytes)
    sinks = {out_r: out.feed, err_r: err.feed}
    poller = select.poll()
    for fd in (res_r, out_r, err_r):
        os.set_blocking(fd, False)
        poller.register(fd, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    protocol_error: str | None = None
    exited = False
    backstop = False
    deadline = t0 + request.timeout_seconds + RUN_BACKSTOP_SECONDS

    def drain(fd: int, budget: int = 1 << 62) -> bool:
        """Read what is there; False at end-of-file."""
        nonlocal protocol_error
        while budget > 0:
            try:
                data = os.read(fd, 1 << 20)
            except BlockingIOError:
                return True
            if not data:
                return False
            budget -= len(data)
            if fd == res_r:
                result.feed(data)
                try:
                    frames.extend(result.frames())
                except FrameError:
                    protocol_error = "result channel exceeded its size cap"
                    _kill(pidfd)
                    return False
            else:
                sinks[fd](data)
        return True

    while not frames and not exited and protocol_error is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _kill(pidfd)  # backstop: the launcher should have killed it at the deadline
            backstop = True
            break
        for fd, _ev in poller.poll(remaining * 1000):
            if fd == pidfd:
                exited = True
            elif not drain(fd):
                poller.unregister(fd)
    finished = time.monotonic()
    header: dict[str, Any] = {
        "wait_status": None, "timed_out": backstop, "memory_killed": False, "protocol_error": protocol_error,
        "execution_time_ms": (finished - t0) * 1000.0, "peak_memory_bytes": 0, "started_at": started_at,
        "finished_at": started_at + (finished - t0), "stdout": out.to_dict(), "stderr": err.to_dict(),
    }
    # The run is over. With its result in hand, the caller ends the run's unit itself where it can (its
    # cgroup and process tree, killed and waited for: nothing of the run is alive once its result is
    # returned), and answers without waiting for the launcher's exit report (it reaps and cleans up after;
    # later reads of this channel skip that report). Otherwise the launcher ends the unit and reports.
    if exited and not frames and protocol_error is None:
        drain(res_r, budget=request.max_result_bytes + 65536)  # it wrote its result, then left
    ended = end_unit_now(pidfd, unit) if frames and protocol_error is None and not backstop else None
    lost: LauncherLost | None = None
    if ended is None:  # else the leader's death (its pidfd) tells the launcher: nothing is left to kill
        try:
            channel.end(pid)
        except LauncherLost as exc:
            lost = exc
    for fd in (res_r, out_r, err_r):  # whatever was written before the end is in the pipes
        if not frames or fd != res_r:
            drain(fd, budget=4 << 20)
    header.update(stdout=out.to_dict(), stderr=err.to_dict())
    if ended is not None:
        peak, oom = ended
        # The launcher's deadline fires at t0 + timeout: a result read after it is the timeout's.
        header.update(wait_status=signal.SIGKILL, timed_out=finished >= t0 + request.timeout_seconds,
                      memory_killed=oom, memory_by="cgroup" if oom else "", peak_memory_bytes=peak)
        return build_result(request, header, frames[0])
    report: dict[str, Any] | None = None
    if lost is None:
        try:
            report = channel.exit_of(pid, timeout=LAUNCHER_ANSWER_SECONDS)
        except LauncherLost as exc:
            lost = exc
    if report is None:
        _kill(pidfd)
        return _unreported(channel.launcher, request, header, frames, protocol_error, t0, str(lost), stalled)
    header.update(wait_status=report["status"], timed_out=bool(report["timed_out"]) or backstop,
                  memory_killed=report["memory_killed"], memory_by=report.get("memory_by", ""),
                  peak_memory_bytes=report["maxrss"])
    if frames and protocol_error is None:
        return build_result(request, header, frames[0])
    if protocol_error is None and len(result):
        header["protocol_error"] = "incomplete result frame"
    return build_result(request, header, b"")


def _unreported(launcher: _LauncherProcess, request: RunRequest, header: dict[str, Any], frames: list[bytes],
                protocol_error: str | None, t0: float, lost: str, stalled: Any) -> PluginSandboxResult:
    """The launcher did not report the run's end: say what happened, honestly, with the run's real times."""
    died = launcher.replaced is None and not launcher.alive()
    if not died and launcher.replaced is None:
        stalled(launcher, f"it did not report the end of a run within {LAUNCHER_ANSWER_SECONDS:g} s ({lost})")
    if frames and protocol_error is None:  # the plugin's own answer: its outcome stands (its peak is its own)
        return build_result(request, header, frames[0])
    elapsed = header["execution_time_ms"] / 1000.0
    if header["timed_out"] or elapsed >= request.timeout_seconds:
        error = ErrorInfo("LauncherStalled", f"run exceeded its timeout of {request.timeout_seconds:g} s and the "
                                             f"sandbox launcher did not end it ({launcher.replaced or lost}): "
                                             "the sidecar killed the run and replaced the launcher")
        outcome = Outcome.TIMEOUT
    elif died:
        error = ErrorInfo("LauncherDied", f"the sandbox launcher exited (status {launcher.proc.returncode}) "
                                          "while this run was in flight; the run ended with it")
        outcome = Outcome.ABORTED
    else:
        error = ErrorInfo("LauncherReplaced", f"the sandbox launcher was replaced while this run was in flight "
                                              f"({launcher.replaced or lost}); the run ended with it")
        outcome = Outcome.ABORTED
    return dataclasses.replace(PluginSandboxResult.from_dict({**header, "plugin": request.plugin.name,
                                                              "outcome": outcome.value}), error=error)


class Sandbox:
    """Runs plugins through one launcher process; thread-safe, one channel per run in flight.

    A run takes an idle channel (a connection to the launcher holding tickets: pre-forked
    children and their pipes) and talks to the child directly, so a run costs two process
    wake-ups, not four.

    Nobody waits on a launcher that stopped answering: a watchdog pings each launcher every
    `LAUNCHER_PING_SECONDS`; one that does not answer within `LAUNCHER_ANSWER_SECONDS` (stopped,
    hung), or does not report a run's end in that time, is killed with everything it started and
    replaced. Runs past their deadline then end `timeout`, the others `aborted`, each saying so;
    a run that had not started yet runs on the new launcher.
    """

    def __init__(self, *, environ: Mapping[str, str] | None = None, extra_env: Iterable[str] = (),
                 isolation: Isolation | None = None, templates: bool = TEMPLATES == "on",
                 max_templates: int = MAX_TEMPLATES, cgroups: bool = True) -> None:
        """`templates`: fork each plugin's runs from a process that imported it once (see `template`);
        `cgroups`: a cgroup per run where the host lets us make one (False: the session-only fallback)."""
        env = plugin_environment(os.environ if environ is None else environ, extra_env)
        root = _package_root()
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._env = env
        #: None: no isolation (the library's default); `serve` always passes one
        self.isolation = isolation
        self.templates = templates
        self.max_templates = max_templates
        self._per_run_logged: set[str] = set()
        self._lock = threading.Lock()
        self._launchers: dict[Confinement | None, _LauncherProcess] = {}
        self._idle: list[_Channel] = []
        self._channels: set[_Channel] = set()
        self._closed = False
        #: runs inside `run` now, and the condition `close` waits on for them to end
        self._in_flight = 0
        self._drained = threading.Condition(self._lock)
        #: set by `close` once its grace is over with runs still in flight: those end as the sidecar's stop
        self._ending = False
        #: launchers replaced because they stopped answering, and the last reason (until a new one answered)
        self.replacements = 0
        self._replacing: str | None = None
        self._watch_stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        #: what bounds a run here, detected once (see `containment`)
        self.cgroups: Cgroups = detect(disabled=not cgroups)
        self.containment = describe(self.cgroups)
        _log.info("sandbox containment: %s", self.containment)

    @property
    def launcher_pid(self) -> int | None:
        """The process whose death takes the (first) launcher and every run with it."""
        return next((launcher.proc.pid for launcher in self._launchers.values()), None)

    def confinement(self, request: RunRequest) -> Confinement | None:
        if self.isolation is None:
            return None
        return self.isolation.confinement(request.isolation, request.network, request.host_processes)

    def _command(self, confinement: Confinement | None) -> tuple[list[str], bool]:
        """The launcher's command prefix (bubblewrap's, when isolating with it) and whether runs drop root."""
        iso = self.isolation
        if iso is None or confinement is None:
            return [], False
        as_root = os.geteuid() == 0
        if iso.bwrap is None or (not confinement.strict and namespaces_unavailable(iso.bwrap)):
            return [], as_root  # default mode degrades to the identity layer (SECURITY.md says what holds)
        needed = needed_paths((*iso.readable, _package_root()))
        return bwrap_command(iso.bwrap, confinement, needed, iso.hidden, as_root,
                             writable=self.cgroups.dirs()), as_root

    def _current(self, confinement: Confinement | None) -> _LauncherProcess:
        with self._lock:
            if self._closed:
                raise RuntimeError("sandbox is closed")
            launcher = self._launchers.get(confinement)
            if launcher is None or not launcher.alive():
                if launcher is not None:
                    launcher.stop()
                launcher = self._launchers[confinement] = _LauncherProcess(self._env, *self._command(confinement),
                                                                           self.max_templates, self.cgroups)
                if self._watchdog is None:
                    self._watchdog = threading.Thread(target=self._watch, name="sandbox-watchdog", daemon=True)
                    self._watchdog.start()
            return launcher

    # -- the watchdog --------------------------------------------------------------------------
    def _watch(self) -> None:
        """Ping every launcher; replace one that does not answer (the launcher never gets waited on)."""
        while not self._watch_stop.wait(LAUNCHER_PING_SECONDS):
            with self._lock:
                launchers = list(self._launchers.values())
            for launcher in launchers:
                if self._watch_stop.is_set():
                    return
                why = launcher.ping(LAUNCHER_ANSWER_SECONDS)
                if why is None:
                    with self._lock:
                        if self._replacing is not None and launcher.replaced is None:
                            _log.info("sandbox launcher %d answers: runs are guarded again", launcher.proc.pid)
                            self._replacing = None
                elif not self._watch_stop.is_set():
                    self._replace(launcher, why)

    def _replace(self, launcher: _LauncherProcess, why: str) -> None:
        """Kill a launcher that stopped answering (and everything it started); start its successor."""
        with self._lock:
            if launcher.replaced is not None or self._closed:
                return
            launcher.replaced = why
            confinement = next((c for c, held in self._launchers.items() if held is launcher), None)
            current = self._launchers.get(confinement) is launcher
            if current:
                del self._launchers[confinement]
            idle = [c for c in self._idle if c.launcher is launcher]
            for channel in idle:
                self._idle.remove(channel)
                self._channels.discard(channel)
            self.replacements += 1
            self._replacing = f"the sandbox launcher was replaced: {why}"
        _log.error("sandbox launcher %d: %s; killing it and everything it started, starting another",
                   launcher.proc.pid, why)
        for channel in idle:
            channel.close()
        launcher.kill()
        if current:
            try:
                self._current(confinement)
            except (OSError, RuntimeError):
                _log.exception("could not start a new sandbox launcher (the next run tries again)")

    def problem(self) -> str | None:
        """Why runs are not guarded right now (for /readyz): a launcher late to answer, or being replaced."""
        now = time.monotonic()
        with self._lock:
            late = [now - launcher.ping_sent for launcher in self._launchers.values()
                    if launcher.ping_sent is not None and now - launcher.ping_sent > LAUNCHER_PING_SECONDS]
            if late:
                return (f"the sandbox launcher has not answered for {max(late):.1f} s (stopped or hung); it is "
                        f"replaced after {LAUNCHER_ANSWER_SECONDS:g} s")
            return self._replacing

    def _checkout(self, confinement: Confinement | None) -> _Channel:
        """An idle channel to the current launcher, or a new one: as many as runs in flight."""
        return self._checkout_of(self._current(confinement))

    def _checkout_of(self, launcher: _LauncherProcess) -> _Channel:
        with self._lock:
            for channel in reversed(self._idle):
                if channel.launcher is launcher:
                    self._idle.remove(channel)
                    return channel
            for channel in [c for c in self._idle if c.launcher not in self._launchers.values()]:
                self._idle.remove(channel)
                self._channels.discard(channel)
                channel.close()
        channel = _Channel(launcher.connect(), launcher)
        with self._lock:
            self._channels.add(channel)
        return channel

    def _checkin(self, channel: _Channel) -> None:
        with self._lock:
            if channel in self._channels:
                self._idle.append(channel)

    def _discard(self, channel: _Channel) -> None:
        with self._lock:
            self._channels.discard(channel)
        channel.close()

    def run(self, request: RunRequest) -> PluginSandboxResult:
        """Run one request; never raises for what the plugin does.

        Counted in flight for `close`, which waits for it (up to its grace) before closing anything it uses;
        a run the stop ended says so (`_stopped`), not `crash`."""
        with self._lock:
            self._in_flight += 1
        try:
            result = self._run_once(request)
        finally:
            with self._lock:
                self._in_flight -= 1
                self._drained.notify_all()
        return _stopped(result) if self._ending else result

    def _run_once(self, request: RunRequest) -> PluginSandboxResult:
        started_at, t0 = time.time(), time.monotonic()
        for attempt in (1, 2):  # a run that never started runs once more, on a fresh launcher
            channel: _Channel | None = None
            try:
                channel = self._checkout(self.confinement(request))
                ticket = self._ticket(channel, request, t0, started_at)
                break
            except (LauncherLost, OSError) as exc:
                launcher = channel.launcher if channel is not None else None
                if channel is not None:
                    self._discard(channel)
                if launcher is not None and launcher.replaced is None and launcher.alive():
                    self._replace(launcher, f"it did not hand out a child within {LAUNCHER_ANSWER_SECONDS:g} s "
                                            f"({exc})")
                if attempt == 1 and time.monotonic() - t0 < request.timeout_seconds:
                    continue
                if time.monotonic() - t0 >= request.timeout_seconds:
                    return made_up(request, Outcome.TIMEOUT, "LauncherStalled",
                                   f"run exceeded its timeout of {request.timeout_seconds:g} s before the sandbox "
                                   f"launcher could start it ({exc})", started_at, t0)
                return made_up(request, Outcome.ABORTED, "LauncherUnavailable",
                               f"the sandbox launcher could not start the run ({exc})", started_at, t0)
            except RuntimeError as exc:  # the sandbox is closed: the sidecar is stopping
                return made_up(request, Outcome.ABORTED, STOPPING, f"the run was not started: {exc}",
                               started_at, t0)
        assert channel is not None  # the loop either broke with a ticket or returned
        if isinstance(ticket, PluginSandboxResult):
            self._checkin(channel)
            return ticket
        pid, fds = ticket
        try:
            result = _drive(channel, request, pid, fds, t0, started_at, self._replace)
            if channel.launcher.replaced is None and channel.launcher.alive():
                self._checkin(channel)
            else:
                self._discard(channel)
            return result
        except (LauncherLost, OSError) as exc:
            self._discard(channel)
            return made_up(request, Outcome.ABORTED, "LauncherDied",
                           f"the run's connection to the sandbox launcher failed: {exc}", started_at, t0)
        except BaseException:
            _kill(fds[4])  # whatever went wrong here, the child must not outlive the call
            self._discard(channel)
            raise
        finally:
            for fd in fds:
                if fd >= 0:
                    os.close(fd)

    def _ticket(self, channel: _Channel, request: RunRequest, t0: float,
                started_at: float) -> tuple[int, list[int]] | PluginSandboxResult:
        if self.templates and request.plugin.preload and request.mode == "run":
            return self._template_ticket(channel, request, t0, started_at)
        return channel.ticket()

    def _template_ticket(self, channel: _Channel, request: RunRequest, t0: float,
                         started_at: float) -> tuple[int, list[int]] | PluginSandboxResult:
        """A child forked from the plugin's template; a spare when the plugin cannot have one; or the
        outcome of the waiting run when the template's import failed or hung (as a run's would)."""
        wait = max(0.0, t0 + request.timeout_seconds - time.monotonic()) + LAUNCHER_ANSWER_SECONDS
        msg = channel.template_ticket(request, t0, wait)
        kind = msg.get("t")
        if kind == "ticket":
            return channel.template_tickets.popleft()
        if kind == "template_failed":
            return self._template_failed(request, msg, t0, started_at)
        if kind == "fallback" and msg.get("reason") == "threads" and request.plugin.name not in self._per_run_logged:
            self._per_run_logged.add(request.plugin.name)
            _log.warning("plugin %s starts %s threads when imported: it is imported per run (a template "
                         "holding threads is unsafe to fork)", request.plugin.name, msg.get("threads", "some"))
        return channel.ticket()

    @staticmethod
    def _template_failed(request: RunRequest, msg: dict[str, Any], t0: float,
                         started_at: float) -> PluginSandboxResult:
        """The run waited on its plugin's template, which failed it: the import's own outcome, or what the
        launcher saw (it hung in a fork, its import passed the run's deadline, it died importing)."""
        timeout = request.timeout_seconds
        if msg.get("hung"):
            late = time.monotonic() - t0 >= timeout
            return made_up(request, Outcome.TIMEOUT if late else Outcome.IMPORT, "TemplateHung",
                           f"the plugin's template did not answer a fork request within {msg.get('waited', 0):g} s "
                           "(an at-fork hook that blocks, or its state hangs a fork): it was killed, and the "
                           "plugin's next runs import it per run for a while", started_at, t0)
        if msg.get("timed_out"):
            return made_up(request, Outcome.TIMEOUT, "ImportTimeout",
                           f"importing the plugin did not finish within the run's timeout of {timeout:g} s: its "
                           "template was killed", started_at, t0)
        message = msg.get("message")
        if not message:  # it died importing the plugin (a crash at import, or killed): say which
            status = int(msg.get("status") or 0)
            how = (f"killed by {_signal_name(os.WTERMSIG(status))}" if os.WIFSIGNALED(status)
                   else f"exited with status {os.WEXITSTATUS(status) if os.WIFEXITED(status) else status}")
            return made_up(request, Outcome.CRASH, "TemplateDied",
                           f"the plugin's template {how} while importing the plugin", started_at, t0)
        finished = time.monotonic()
        header: dict[str, Any] = {
            "wait_status": msg.get("status"), "timed_out": False, "memory_killed": False, "protocol_error": None,
            "execution_time_ms": (finished - t0) * 1000.0, "peak_memory_bytes": 0,
            "started_at": started_at, "finished_at": started_at + (finished - t0),
            "stdout": Capture(request.max_output_bytes).to_dict(),
            "stderr": Capture(request.max_output_bytes).to_dict(),
        }
        return build_result(request, header, json.dumps(message).encode())

    def template_stats(self) -> dict[str, int]:
        """Templates alive, built and evicted, and their resident memory, summed over the launchers."""
        totals = {"alive": 0, "builds": 0, "evictions": 0, "resident_bytes": 0}
        with self._lock:
            launchers = [launcher for launcher in self._launchers.values() if launcher.alive()]
        for launcher in launchers:
            try:
                channel = self._checkout_of(launcher)
            except (LauncherLost, OSError, RuntimeError):
                continue
            try:
                stats = channel.stats()
                self._checkin(channel)
            except (LauncherLost, OSError):
                self._discard(channel)
                continue
            for key in totals:
                totals[key] += int(stats.get(key, 0))
        return totals

    def close(self, grace: float = 0.0) -> None:
        """Stop: new runs end `aborted` at once; runs in flight may finish for up to `grace` seconds; then the
        launchers are stopped (they kill what still runs, which ends `aborted`, `SidecarStopping`).

        Nothing a run's thread still polls is closed under it: its channel is closed by that thread once the
        run has its result; only idle channels are closed here."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._drained.wait_for(lambda: self._in_flight == 0, timeout=grace)
            self._ending = self._in_flight > 0
            launchers, self._launchers = list(self._launchers.values()), {}
        if self._ending:
            _log.warning("stopping: %d run(s) still in flight after the %g s grace are ended", self._in_flight, grace)
        self._watch_stop.set()
        for launcher in launchers:
            launcher.stop()  # closes its control socket: it kills every child it started and exits
        with self._lock:  # their threads see the launcher gone, return `aborted` and close their own channels
            if not self._drained.wait_for(lambda: self._in_flight == 0, timeout=2 * LAUNCHER_ANSWER_SECONDS):
                _log.error("stopping: %d run(s) did not return; their channels are left open", self._in_flight)
            idle, self._idle = self._idle, []
            for channel in idle:
                self._channels.discard(channel)
        for channel in idle:
            channel.close()
        release(self.cgroups)

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
