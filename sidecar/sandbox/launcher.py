"""The launcher: a small single-threaded process that forks the sandboxed children and guards them.

Why a separate process: forking a multithreaded server can deadlock the child on a lock another
thread held, forking a large parent costs tens of milliseconds, and a child's `ru_maxrss`
includes the parent's pages. The launcher runs without `site` (`-S`) and imports little.

Hand-off: every caller connection holds two *tickets*: each a child forked
ahead of need and pre-faulted (`child.spare_main`), and the caller's ends of its pipes (request,
result, stdout, stderr), passed over the connection with SCM_RIGHTS. A run is the caller writing
its request straight into the child and reading the result straight out of it: no hop through
the launcher on the hot path. The launcher is told when a run starts, arms its deadline and its
resident-memory watch, kills the process group on either, reaps the child, reports its exit, and
forks the connection's next ticket while nobody waits.

It is also a child subreaper: a plugin's descendants that leave its process group (`setsid`,
double fork) are re-parented here when their parent dies, and are killed when any run ends.

Isolation (`isolation`): the caller may start the launcher inside bubblewrap's namespaces, where
pids are the namespace's own; a ticket therefore carries the child's pidfd, which names it from
anywhere. Each child gets a private temporary directory (its `TMPDIR` and `HOME`), removed when
it exits, and, when the launcher runs as root, an identity of its own.

Wire (JSON frames, `framing`): caller → launcher `{"t": "start", "pid", "t0", "timeout_seconds",
"memory_limit_mb"}`; launcher → caller `{"t": "ticket", "pid"}` + 5 fds (request, result,
stdout, stderr, pidfd), `{"t": "exit", "pid",
"status", "maxrss", "timed_out", "memory_killed"}`, `{"t": "error", "message"}`.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import sys
import time
from typing import Any

from ..framing import FrameError, FrameReader, encode
from .child import PLUGIN_ID_BASE, spare_main

__all__ = ["main"]

_PR_SET_CHILD_SUBREAPER = 36
_F_SETPIPE_SZ = 1031
_PIPE_SIZE = 1 << 20
_RSS_POLL_SECONDS = 0.1
_PAGE = os.sysconf("SC_PAGE_SIZE")

try:
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - non-glibc platforms
    _prctl = None


class _Child:
    __slots__ = ("pid", "pidfd", "conn", "deadline", "rss_limit", "started", "timed_out", "memory_killed", "tmp")

    def __init__(self, pid: int, pidfd: int, conn: _Conn, tmp: str) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.tmp = tmp
        self.conn: _Conn | None = conn
        self.deadline = float("inf")
        self.rss_limit = 0
        self.started = False
        self.timed_out = False
        self.memory_killed = False


class _Conn:
    __slots__ = ("sock", "reader", "children")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = FrameReader(limit=1 << 20)
        self.children: set[int] = set()


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
    def __init__(self, ctrl: socket.socket, drop_privileges: bool = False) -> None:
        self.ctrl = ctrl
        self.drop_privileges = drop_privileges
        self.tmp_root = os.environ.get("TMPDIR") or "/tmp"
        self.epoll = select.epoll()
        self.children: dict[int, _Child] = {}  # pid -> child
        self.by_pidfd: dict[int, _Child] = {}
        self.conns: dict[int, _Conn] = {}
        self.want_ticket: list[_Conn] = []
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

    def _tick(self) -> bool:
        now = time.monotonic()
        running = [c for c in self.children.values() if c.started]
        timeout = -1.0
        if running:
            nearest = min((c.deadline for c in running if not c.timed_out), default=now + 1.0)
            timeout = max(0.0, min(nearest, self.next_rss_poll) - now)
        if self.orphans:
            timeout = 0.05 if timeout < 0 else min(timeout, 0.05)
        if self.want_ticket:
            timeout = 0.0  # fork tickets as soon as nothing else is waiting
        events = self.epoll.poll(timeout)
        for fd, _ev in events:
            if fd == self.ctrl.fileno():
                if not self._on_ctrl():
                    return False
                continue
            try:
                if fd in self.conns:
                    self._on_conn(self.conns[fd])
                elif fd in self.by_pidfd:
                    self._on_exit(self.by_pidfd[fd])
            except Exception:  # a bug must cost one run, not every run in flight
                import traceback

                traceback.print_exc()
        now = time.monotonic()
        for child in running:
            if not child.timed_out and now >= child.deadline:
                child.timed_out = True
                _kill_child(child.pid)
        if running and now >= self.next_rss_poll:
            self.next_rss_poll = now + _RSS_POLL_SECONDS
            self._poll_rss(running)
        if self.orphans:
            self._reap_orphans()
        if self.want_ticket and not events:
            conn = self.want_ticket.pop(0)
            if conn.sock.fileno() in self.conns:
                self._issue_ticket(conn)
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
            conn = _Conn(sock)
            self.conns[fd] = conn
            self.epoll.register(fd, select.EPOLLIN)
            self._issue_ticket(conn)  # the first one now: a caller is about to run
            # A second one while idle: back-to-back runs then find a child ready while the next forks.
            self.want_ticket.append(conn)
        return True

    def _on_conn(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(1 << 16)
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
            msg = json.loads(frame)
            child = self.children.get(int(msg.get("pid", 0)))
            if msg.get("t") == "start" and child is not None and child.conn is conn and not child.started:
                child.started = True
                child.deadline = float(msg.get("t0") or time.monotonic()) + float(msg["timeout_seconds"])
                child.rss_limit = int(msg["memory_limit_mb"]) * 1024 * 1024

    def _drop_conn(self, conn: _Conn) -> None:
        """The caller is gone: its ticket and its run have nobody to report to, so they are killed."""
        fd = conn.sock.fileno()
        self.epoll.unregister(fd)
        del self.conns[fd]
        for pid in conn.children:
            if pid in self.children:
                self.children[pid].conn = None
                _kill_child(pid)
        conn.children.clear()
        conn.sock.close()

    def _send(self, conn: _Conn, msg: dict[str, Any], fds: list[int] | None = None) -> bool:
        data = encode(json.dumps(msg).encode())
        try:
            conn.sock.setblocking(True)
            conn.sock.settimeout(10)
            if fds:
                sent = socket.send_fds(conn.sock, [data], fds)
                if sent < len(data):
                    conn.sock.sendall(data[sent:])
            else:
                conn.sock.sendall(data)
            conn.sock.setblocking(False)
            return True
        except OSError:
            self._drop_conn(conn)
            return False

    # -- children ------------------------------------------------------------------------------
    def _issue_ticket(self, conn: _Conn) -> None:
        try:
            pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(4)]
        except OSError as exc:
            self._send(conn, {"t": "error", "message": f"pipe: {exc}"})
            return
        for _r, w in pipes[:3]:
            try:
                fcntl.fcntl(w, _F_SETPIPE_SZ, _PIPE_SIZE)
            except OSError:
                pass
        (res_r, res_w), (out_r, out_w), (err_r, err_w), (req_r, req_w) = pipes
        tmp = os.path.join(self.tmp_root, f"sidecar-run-{os.urandom(8).hex()}")
        try:
            os.mkdir(tmp, 0o700)
            pid = os.fork()
        except OSError as exc:
            for r, w in pipes:
                os.close(r)
                os.close(w)
            shutil.rmtree(tmp, ignore_errors=True)
            self._send(conn, {"t": "error", "message": f"fork: {exc}"})
            return
        if pid == 0:  # pragma: no cover - runs in the child
            spare_main((res_w, out_w, err_w, req_r), _prctl, tmp, self.drop_privileges)
        try:
            os.setpgid(pid, pid)  # also done by the child: whichever runs first wins the race
        except OSError:
            pass
        for fd in (res_w, out_w, err_w, req_r):
            os.close(fd)
        pidfd = os.pidfd_open(pid)
        child = _Child(pid, pidfd, conn, tmp)
        self.children[pid] = child
        self.by_pidfd[pidfd] = child
        self.epoll.register(pidfd, select.EPOLLIN)
        conn.children.add(pid)
        try:
            self._send(conn, {"t": "ticket", "pid": pid}, [req_w, res_r, out_r, err_r, pidfd])
        finally:
            for fd in (req_w, res_r, out_r, err_r):
                os.close(fd)

    def _on_exit(self, child: _Child) -> None:
        pid, status, rusage = os.wait4(child.pid, os.WNOHANG)
        if pid == 0:
            return
        _killpg(child.pid)  # descendants still in the plugin's process group
        del self.children[child.pid]
        self.epoll.unregister(child.pidfd)
        os.close(child.pidfd)
        del self.by_pidfd[child.pidfd]
        self._reap_orphans()  # descendants that left the group and were re-parented to us
        conn = child.conn
        if conn is not None and conn.sock.fileno() in self.conns:
            conn.children.discard(child.pid)
            if self._send(conn, {"t": "exit", "pid": child.pid, "status": status, "maxrss": rusage.ru_maxrss * 1024,
                                 "timed_out": child.timed_out, "memory_killed": child.memory_killed,
                                 "started": child.started}):
                self.want_ticket.append(conn)
        shutil.rmtree(child.tmp, ignore_errors=True)  # after the report: nobody waits for this

    # -- guards ---------------------------------------------------------------------------------
    def _poll_rss(self, running: list[_Child]) -> None:
        for child in running:
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

    def _of_a_live_run(self, pid: int, live: set[int]) -> bool:
        """Whether an escaped descendant may belong to a run still in flight (then it is left alone).

        Under per-run identities its uid names its run; otherwise nobody can tell, so escaped
        descendants wait until no run is in flight."""
        if not live:
            return False
        if not self.drop_privileges:
            return True
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                uid = int(next(line for line in f if line.startswith(b"Uid:")).split()[1])
        except (OSError, StopIteration, ValueError, IndexError):
            return True
        return uid - PLUGIN_ID_BASE in live

    def _reap_orphans(self) -> None:
        """Kill and reap every child of ours that is not a ticket nor a run's: escaped descendants of
        runs that ended. One run's end must not kill another run's daemon while that run goes on."""
        live = {c.pid for c in self.children.values() if c.started}
        for pid in self._our_children() - self.children.keys():
            if pid not in self.orphans and not self._of_a_live_run(pid, live):
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
            shutil.rmtree(child.tmp, ignore_errors=True)
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
    options = json.loads(args[2]) if len(args) > 2 else {}
    Launcher(ctrl, drop_privileges=bool(options.get("drop_privileges"))).serve()


if __name__ == "__main__":
    main()
