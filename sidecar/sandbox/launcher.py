"""The launcher: a small single-threaded process that forks one child per run and guards it.

Why a separate process: forking a multithreaded server can deadlock the child on a lock another
thread held, forking a large parent costs tens of milliseconds, and a child's `ru_maxrss`
includes the parent's pages. The launcher runs without `site` (`-S`) and imports little, so a
fork is cheap and peak memory is honest. It keeps one child forked ahead ("spare"), so a run
starts by writing a request into a pipe rather than waiting for a fork.

It is also a child subreaper: a plugin's descendants that leave its process group (`setsid`,
double fork) are re-parented here when their parent dies, and are killed when any run ends.

Wire: the client sends connection sockets over the control socket (SCM_RIGHTS), one per
calling thread. On a connection, a JSON request frame in; out, a JSON frame of what was
observed (exit status, guards, timings, rusage, output) and a frame with the child's raw
message. Deciding the outcome is the client's job (`result.decide_outcome`).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import select
import signal
import socket
import sys
import time
from typing import Any

from ..framing import HEADER, FrameError, FrameReader, encode, write_all
from .child import spare_main

__all__ = ["main"]

_PR_SET_CHILD_SUBREAPER = 36
_F_SETPIPE_SZ = 1031
_PIPE_SIZE = 1 << 20
_READ_CHUNK = 1 << 20
_RSS_POLL_SECONDS = 0.1
_PAGE = os.sysconf("SC_PAGE_SIZE")

try:
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - non-glibc platforms
    _prctl = None


class _Capture:
    """Bounded head + tail of a stream; the middle is counted, not kept."""

    __slots__ = ("head", "tail", "total", "half")

    def __init__(self, limit: int) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0
        self.half = max(limit // 2, 1)

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > self.half:
                del self.tail[: len(self.tail) - self.half]

    def to_dict(self) -> dict[str, Any]:
        kept = len(self.head) + len(self.tail)
        truncated = self.total > kept
        body = bytes(self.head)
        if truncated:
            body += f"\n... [{self.total - kept} bytes elided] ...\n".encode()
        body += bytes(self.tail)
        return {"text": body.decode("utf-8", "replace"), "truncated": truncated, "total_bytes": self.total}


class _Child:
    """A forked child: a spare until it is given a request, then a run."""

    __slots__ = (
        "pid", "pidfd", "request_w", "fds", "conn", "rid", "result", "result_limit", "out", "err",
        "deadline", "t0", "started_at", "timed_out", "memory_killed", "protocol_error", "rss_limit",
        "replied",
    )

    def __init__(self, pid: int, pidfd: int, request_w: int, fds: dict[int, str]) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.request_w = request_w
        self.fds = fds  # read fd -> "result" | "out" | "err"
        self.conn: _Conn | None = None
        self.rid: Any = None
        self.result = bytearray()
        self.result_limit = 0
        self.out = _Capture(1)
        self.err = _Capture(1)
        self.deadline = float("inf")
        self.t0 = 0.0
        self.started_at = 0.0
        self.timed_out = False
        self.memory_killed = False
        self.protocol_error: str | None = None
        self.rss_limit = 0
        self.replied = False


class _Conn:
    __slots__ = ("sock", "reader", "child")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = FrameReader(limit=64 << 20)
        self.child: _Child | None = None


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_child(pid: int) -> None:
    """SIGKILL the child's whole process group, and the child itself should it have left the group."""
    _killpg(pid)
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Launcher:
    def __init__(self, ctrl: socket.socket) -> None:
        self.ctrl = ctrl
        self.epoll = select.epoll()
        self.children: dict[int, _Child] = {}  # pid -> spare or run
        self.by_fd: dict[int, _Child] = {}  # pidfd and pipe read fds -> child
        self.conns: dict[int, _Conn] = {}
        self.spare: _Child | None = None
        self.orphans: set[int] = set()
        self.pid = os.getpid()
        self.pgrp = os.getpgrp()
        self.children_file = f"/proc/{self.pid}/task/{self.pid}/children"
        self.next_rss_poll = 0.0
        self.epoll.register(ctrl.fileno(), select.EPOLLIN)

    # -- main loop ---------------------------------------------------------------------------
    def serve(self) -> None:
        try:
            while self._tick():
                pass
        finally:
            self._shutdown()

    def _running(self) -> list[_Child]:
        return [c for c in self.children.values() if c.conn is not None]

    def _tick(self) -> bool:
        now = time.monotonic()
        running = self._running()
        timeout = -1.0
        if running:
            nearest = min((c.deadline for c in running if not c.timed_out), default=now + 1.0)
            timeout = max(0.0, min(nearest, self.next_rss_poll) - now)
        if self.orphans:
            timeout = 0.05 if timeout < 0 else min(timeout, 0.05)
        if self.spare is None:
            timeout = 0.0  # make a spare as soon as nothing else is waiting
        events = self.epoll.poll(timeout)
        for fd, _ev in events:
            if fd == self.ctrl.fileno():
                if not self._on_ctrl():
                    return False
                continue
            try:
                if fd in self.conns:
                    self._on_conn(self.conns[fd])
                elif (child := self.by_fd.get(fd)) is not None:
                    if fd == child.pidfd:
                        self._finish(child)
                    elif fd in child.fds:
                        self._on_pipe(child, fd)
            except Exception:  # a bug must cost one run, not every run in flight
                import traceback

                traceback.print_exc()
        now = time.monotonic()
        for child in self._running():
            if not child.timed_out and now >= child.deadline:
                child.timed_out = True
                _kill_child(child.pid)
        if running and now >= self.next_rss_poll:
            self.next_rss_poll = now + _RSS_POLL_SECONDS
            self._poll_rss()
        if self.orphans:
            self._reap_orphans()
        if self.spare is None and not events:
            self.spare = self._fork()
        return True

    def _on_ctrl(self) -> bool:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(self.ctrl, 16, 64)
        except BlockingIOError:
            return True
        if not msg and not fds:
            return False
        for fd in fds:
            sock = socket.socket(fileno=fd)
            sock.setblocking(False)
            self.conns[fd] = _Conn(sock)
            self.epoll.register(fd, select.EPOLLIN)
        return True

    def _on_conn(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop_conn(conn)
            return
        conn.reader.feed(data)
        try:
            frames = conn.reader.frames()
        except FrameError:
            self._drop_conn(conn)
            return
        for frame in frames:
            request = json.loads(frame)
            if conn.child is not None:  # one run at a time per connection: a client bug
                self._drop_conn(conn)
                return
            try:
                self._start(conn, request)
            except OSError as exc:  # fork or pipe failed (EAGAIN, EMFILE): report, stay up
                self._reply(conn, {"id": request.get("id"), "launch_error": f"{type(exc).__name__}: {exc}"}, b"")

    def _drop_conn(self, conn: _Conn) -> None:
        """The caller is gone: its run has nobody to report to, so it is killed."""
        fd = conn.sock.fileno()
        self.epoll.unregister(fd)
        del self.conns[fd]
        if conn.child is not None:
            conn.child.protocol_error = "caller disconnected"
            _kill_child(conn.child.pid)
            conn.child.conn = None
            conn.child.deadline = float("inf")
        conn.sock.close()

    # -- children ------------------------------------------------------------------------------
    def _fork(self) -> _Child:
        pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(4)]
        for _r, w in pipes[:3]:
            try:
                fcntl.fcntl(w, _F_SETPIPE_SZ, _PIPE_SIZE)
            except OSError:
                pass
        (res_r, res_w), (out_r, out_w), (err_r, err_w), (req_r, req_w) = pipes
        try:
            pid = os.fork()
        except OSError:
            for r, w in pipes:
                os.close(r)
                os.close(w)
            raise
        if pid == 0:  # pragma: no cover - runs in the child
            spare_main((res_w, out_w, err_w, req_r), _prctl)
        try:
            os.setpgid(pid, pid)  # also done by the child: whichever runs first wins the race
        except OSError:
            pass
        for fd in (res_w, out_w, err_w, req_r):
            os.close(fd)
        pidfd = os.pidfd_open(pid)
        child = _Child(pid, pidfd, req_w, {res_r: "result", out_r: "out", err_r: "err"})
        self.children[pid] = child
        self.by_fd[pidfd] = child
        self.epoll.register(pidfd, select.EPOLLIN)
        for fd in child.fds:
            os.set_blocking(fd, False)
            self.by_fd[fd] = child
            self.epoll.register(fd, select.EPOLLIN)
        return child

    def _start(self, conn: _Conn, request: dict[str, Any]) -> None:
        child, self.spare = self.spare, None
        if child is None:
            child = self._fork()
        child.conn = conn
        conn.child = child
        child.rid = request.get("id")
        child.result_limit = int(request["max_result_bytes"]) + 65536
        limit = int(request.get("max_output_bytes", 65536))
        child.out = _Capture(limit)
        child.err = _Capture(limit)
        child.rss_limit = int(request["memory_limit_mb"]) * 1024 * 1024
        child.t0 = time.monotonic()
        child.started_at = time.time()
        child.deadline = child.t0 + float(request["timeout_seconds"])
        try:
            write_all(child.request_w, encode(json.dumps(request).encode()))
        except OSError:
            child.protocol_error = "spare died before its request"
        os.close(child.request_w)
        child.request_w = -1

    def _on_pipe(self, child: _Child, fd: int, budget: int = 1 << 30) -> None:
        kind = child.fds[fd]
        while budget > 0:
            try:
                data = os.read(fd, _READ_CHUNK)
            except BlockingIOError:
                return
            if not data:
                self._close_fd(child, fd)
                return
            budget -= len(data)
            if kind == "result":
                if len(child.result) + len(data) > child.result_limit:
                    child.protocol_error = "result channel exceeded its size cap"
                    _kill_child(child.pid)
                    self._close_fd(child, fd)
                    return
                child.result += data
                if self._result_complete(child):
                    self._answer_early(child)
                    return
            elif kind == "out":
                child.out.feed(data)
            else:
                child.err.feed(data)

    @staticmethod
    def _result_complete(child: _Child) -> bool:
        if len(child.result) < HEADER.size:
            return False
        size: int = HEADER.unpack_from(child.result)[0]
        return len(child.result) >= HEADER.size + size

    def _answer_early(self, child: _Child) -> None:
        """The child's message is whole: answer now, and let its exit be reaped off the hot path.

        The run is over once the plugin has reported, so its process group is killed here; the
        child reported its own peak memory, so waiting for the exit would add nothing but latency.
        """
        finished = time.monotonic()
        _kill_child(child.pid)
        child.deadline = float("inf")
        for fd, kind in list(child.fds.items()):
            if kind != "result" and fd in child.fds:
                self._on_pipe(child, fd, budget=4 * _PIPE_SIZE)
        self._report(child, None, 0, finished)

    def _report(self, child: _Child, status: int | None, peak: int, finished: float) -> None:
        conn = child.conn
        child.replied = True
        if conn is None:
            return
        conn.child = None
        child.conn = None
        message = b""
        if child.protocol_error is None and child.result:
            if len(child.result) >= HEADER.size:
                (size,) = HEADER.unpack_from(child.result)
                if len(child.result) == HEADER.size + size:
                    message = bytes(child.result[HEADER.size :])
            if not message:
                child.protocol_error = "incomplete result frame"
        header = {
            "id": child.rid,
            "wait_status": status,
            "timed_out": child.timed_out,
            "memory_killed": child.memory_killed,
            "protocol_error": child.protocol_error,
            "execution_time_ms": (finished - child.t0) * 1000.0,
            "peak_memory_bytes": peak,
            "started_at": child.started_at,
            "finished_at": child.started_at + (finished - child.t0),
            "stdout": child.out.to_dict(),
            "stderr": child.err.to_dict(),
        }
        self._reply(conn, header, message)

    def _close_fd(self, child: _Child, fd: int) -> None:
        self.epoll.unregister(fd)
        os.close(fd)
        del child.fds[fd]
        del self.by_fd[fd]

    def _finish(self, child: _Child) -> None:
        pid, status, rusage = os.wait4(child.pid, os.WNOHANG)
        if pid == 0:  # a stale event for a reused fd number: this child is still running
            return
        finished = time.monotonic()
        _killpg(child.pid)  # descendants still in the plugin's process group
        del self.children[child.pid]
        self._reap_orphans()  # descendants that left the group and were re-parented to us
        for fd in list(child.fds):
            if fd not in child.fds:  # closed while draining another pipe
                continue
            # Whatever the child wrote is in the pipe now; descendants are dead, so this ends.
            self._on_pipe(child, fd, budget=4 * _PIPE_SIZE)
            if fd in child.fds:
                self._close_fd(child, fd)
        self.epoll.unregister(child.pidfd)
        os.close(child.pidfd)
        del self.by_fd[child.pidfd]
        if child.request_w >= 0:
            os.close(child.request_w)
        if child is self.spare:  # a spare died before use (killed from outside): make another later
            self.spare = None
            return
        if not child.replied:
            self._report(child, status, rusage.ru_maxrss * 1024, finished)

    def _reply(self, conn: _Conn, header: dict[str, Any], message: bytes) -> None:
        # The caller is blocked waiting for exactly this, so a blocking send drains promptly.
        try:
            conn.sock.setblocking(True)
            conn.sock.settimeout(10)
            conn.sock.sendall(encode(json.dumps(header).encode()) + encode(message))
            conn.sock.setblocking(False)
        except OSError:
            self._drop_conn(conn)

    # -- guards ---------------------------------------------------------------------------------
    def _poll_rss(self) -> None:
        for child in self._running():
            if child.memory_killed or child.timed_out:
                continue
            try:
                with open(f"/proc/{child.pid}/statm", "rb") as f:
                    resident = int(f.read().split()[1]) * _PAGE
            except (OSError, IndexError, ValueError):
                continue
            if resident > child.rss_limit:
                child.memory_killed = True
                _kill_child(child.pid)

    def _our_children(self) -> set[int]:
        try:
            with open(self.children_file, "rb") as f:
                return {int(p) for p in f.read().split()}
        except FileNotFoundError:  # kernels without CONFIG_PROC_CHILDREN: scan /proc
            found = set()
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        with open(f"/proc/{entry}/stat", "rb") as f:
                            stat = f.read()
                    except OSError:
                        continue
                    if int(stat[stat.rindex(b")") + 2 :].split()[1]) == self.pid:
                        found.add(int(entry))
            return found

    def _reap_orphans(self) -> None:
        """Kill and reap every child of ours that is not a spare or a run: escaped descendants."""
        for pid in self._our_children() - self.children.keys():
            if pid not in self.orphans:
                try:
                    pgid = os.getpgid(pid)
                    if pgid not in (self.pgrp, self.pid):
                        _killpg(pgid)
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                self.orphans.add(pid)
        for pid in list(self.orphans):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.orphans.discard(pid)

    def _shutdown(self) -> None:
        for child in list(self.children.values()):
            _kill_child(child.pid)
        for child in list(self.children.values()):
            try:
                os.waitpid(child.pid, 0)
            except ChildProcessError:
                pass
        self.children.clear()
        self._reap_orphans()


def _on_term(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    ctrl = socket.socket(fileno=int(args[0]))
    if _prctl is not None:
        _prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    # No PR_SET_PDEATHSIG here: it fires when the *thread* that spawned us exits, and callers
    # spawn from short-lived request threads. The control socket's end-of-file is the signal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_term)
    if len(args) > 1:  # the caller's sys.path, so plugins import what the caller could
        sys.path.extend(p for p in json.loads(args[1]) if p and p not in sys.path)
    Launcher(ctrl).serve()


if __name__ == "__main__":
    main()
