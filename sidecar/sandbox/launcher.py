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
"status", "maxrss", "timed_out", "memory_killed", "memory_by"}`, `{"t": "error", "message"}`. On the control socket,
`b"p"` (the runner's watchdog) is answered `b"P"`. Sends never block the loop: what a caller does not read
waits in a bounded buffer, and a caller past it is dropped.
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
from collections import OrderedDict
from typing import Any

from ..framing import FrameError, FrameReader, encode
from .child import PLUGIN_ID_BASE, spare_main
from .containment import Cgroups, Unit, Units, session_of, stop_tree
from .template import template_main

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
    __slots__ = ("pid", "pidfd", "conn", "deadline", "rss_limit", "started", "timed_out", "memory_killed", "memory_by",
                 "tmp",
                 "owner", "ticket_fds", "unit", "killed")

    def __init__(self, pid: int, pidfd: int, conn: _Conn | None, tmp: str, owner: int = 0) -> None:
        self.pid = pid
        #: the process whose identity the run wears: itself, or the template it was forked from
        self.owner = owner or pid
        #: a template's spare: the caller's ends of its pipes, held here until a run of its plugin asks
        self.ticket_fds: tuple[int, ...] = ()
        self.pidfd = pidfd
        self.tmp = tmp
        self.conn: _Conn | None = conn
        self.deadline = float("inf")
        self.rss_limit = 0
        self.started = False
        self.timed_out = False
        self.memory_killed = False
        #: what measured it: "cgroup" (the whole tree's memory.max) or "rss" (the leader's resident set)
        self.memory_by = ""
        #: its unit of containment (session, cgroup): set once the launcher placed it
        self.unit: Unit | None = None
        #: the descendants its end killed: dead before its exit is reported
        self.killed: list[int] = []


class _Conn:
    __slots__ = ("sock", "reader", "children", "out", "queued", "second")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        #: whether it keeps a second ticket (from its first run on a ticket: runs forked from templates use none)
        self.second = False
        self.reader = FrameReader(limit=1 << 20)
        self.children: set[int] = set()
        #: what the caller has not read yet: (bytes, fds to pass with their first byte; ours, closed once sent)
        self.out: list[tuple[bytes, list[int]]] = []
        self.queued = 0


#: Bytes a caller may leave unread before the launcher drops it: a peer that does not read never blocks
#: the loop that guards every run.
_SEND_BUFFER_BYTES = 1 << 20


#: How long a template may take to answer a fork request before it is killed and replaced (runs meanwhile
#: import per run): a template stopped by its own run, or hung in an at-fork hook, never holds a run.
_FORK_ANSWER_SECONDS = 2.0

#: Back-off after a template's import failed or hung: 1 s, doubling up to this (runs meanwhile import per run).
_MAX_BACKOFF_SECONDS = 60.0


class _Template:
    """A plugin's template as the launcher sees it: its process, its socket and who waits on it."""

    __slots__ = ("key", "pid", "pidfd", "sock", "tmp", "signature", "ready", "deadline", "timed_out",
                 "waiting", "forking", "spares", "answered", "unit", "fork_deadline", "limit")

    def __init__(self, key: str, pid: int, pidfd: int, sock: socket.socket, tmp: str,
                 signature: tuple[int, ...] | None, deadline: float, limit: int) -> None:
        self.key = key
        #: its runs' memory limit (bytes): set on each run's cgroup ahead, so that the caller need not
        self.limit = limit
        self.pid = pid
        self.pidfd = pidfd
        self.sock = sock
        self.tmp = tmp
        #: (inode, size, mtime) of the plugin's file when built: a change means a new template
        self.signature = signature
        self.ready = False
        #: it said why it will not serve (its import failed, or started a thread)
        self.answered = False
        self.deadline = deadline
        self.timed_out = False
        #: connections waiting for the import to finish, then for a fork (with their run's deadline)
        self.waiting: list[tuple[_Conn, float]] = []
        #: fork requests in flight, in order: who gets the child (None: kept as a spare), the caller's
        #: ends of its pipes, its private directory and by when the template must answer it
        self.forking: list[tuple[_Conn | None, tuple[int, ...], str, float]] = []
        #: children forked ahead of need, handed to the next runs of this plugin
        self.spares: list[_Child] = []
        self.unit: Unit | None = None
        #: by when it must answer its fork requests (a stopped or hung template is replaced)
        self.fork_deadline = float("inf")

    def asked(self) -> None:
        self.fork_deadline = min((d for *_rest, d in self.forking), default=float("inf"))


def _signature(path: str | None) -> tuple[int, ...] | None:
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Launcher:
    def __init__(self, ctrl: socket.socket, drop_privileges: bool = False, max_templates: int = 32,
                 cgroups: Cgroups | None = None, max_processes: int = 512, units_tag: str | None = None) -> None:
        self.ctrl = ctrl
        self.units = Units(cgroups or Cgroups(), max_processes, units_tag)
        self.drop_privileges = drop_privileges
        self.max_templates = max_templates
        self.templates: OrderedDict[str, _Template] = OrderedDict()  # least recently used first
        self.template_fds: dict[int, _Template] = {}  # socket and pidfd -> template
        #: key -> (retry after, failures, signature): failed imports, retried with back-off
        self.backoff: dict[str, tuple[float, int, tuple[int, ...] | None]] = {}
        #: key -> signature: plugins whose import starts a thread, imported per run until they change
        self.per_run: dict[str, tuple[int, ...] | None] = {}
        self.builds = 0
        self.evictions = 0
        self.reap_due = False
        self._origins: dict[str, str] = {}
        self.tmp_root = os.environ.get("TMPDIR") or "/tmp"
        self.epoll = select.epoll()
        self.children: dict[int, _Child] = {}  # pid -> child
        self.by_pidfd: dict[int, _Child] = {}
        self.conns: dict[int, _Conn] = {}
        self.want_ticket: list[_Conn] = []
        self.orphans: set[int] = set()
        #: units whose cgroups still held a dying process when their run ended
        self.dying: list[Unit] = []
        self.pid = os.getpid()
        # /proc may be the host's (a plugin allowed to see the host's processes shares our mounts):
        # then it names us, and our children, by host pids, which are translated to ours.
        self.proc_pid = int(os.readlink("/proc/self"))
        self.host_proc = self.proc_pid != self.pid
        self.children_file = f"/proc/{self.proc_pid}/task/{self.proc_pid}/children"
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
        if self.orphans or self.reap_due or self.dying:
            timeout = 0.05 if timeout < 0 else min(timeout, 0.05)
        building = [t for t in self.templates.values() if not t.ready and not t.timed_out]
        if building:
            nearest = max(0.0, min(t.deadline for t in building) - now)
            timeout = nearest if timeout < 0 else min(timeout, nearest)
        asked = [t.fork_deadline for t in self.templates.values() if t.forking]
        if asked:
            nearest = max(0.0, min(asked) - now)
            timeout = nearest if timeout < 0 else min(timeout, nearest)
        if self.want_ticket or self.units.short:
            timeout = 0.0  # fork tickets, make units ahead, as soon as nothing else is waiting
        events = self.epoll.poll(timeout)
        for fd, ev in events:
            if fd == self.ctrl.fileno():
                if not self._on_ctrl():
                    return False
                continue
            try:
                if fd in self.conns:
                    conn = self.conns[fd]
                    if ev & select.EPOLLOUT and not self._flush(conn):
                        continue
                    if ev & ~select.EPOLLOUT:
                        self._on_conn(conn)
                elif fd in self.by_pidfd:
                    self._on_exit(self.by_pidfd[fd])
                elif fd in self.template_fds:
                    self._on_template(self.template_fds[fd], fd)
            except Exception:  # a bug must cost one run, not every run in flight
                import traceback

                traceback.print_exc()
        now = time.monotonic()
        for child in running:
            if not child.timed_out and now >= child.deadline:
                child.timed_out = True
                self._kill(child.pid)
        if running and now >= self.next_rss_poll:
            self.next_rss_poll = now + _RSS_POLL_SECONDS
            self._poll_rss(running)
        for tpl in [t for t in self.templates.values() if t.forking and now >= t.fork_deadline]:
            # It did not answer: the plugin backs off (its next runs import per run). Stopped (by a run of its
            # plugin), its waiting runs import per run now; hung (an at-fork hook), they end saying so.
            self._back_off(tpl)
            self._drop_template(tpl, hung=not self._stopped(tpl.pid))
        for tpl in building:
            if now >= tpl.deadline:
                tpl.timed_out = True  # its exit ends the runs waiting for it as `timeout`
                self._kill(tpl.pid)
        if self.orphans or self.reap_due or self.dying:
            self._reap_orphans()
        if self.want_ticket and not events:
            conn = self.want_ticket.pop(0)
            if conn.sock.fileno() in self.conns:
                self._issue_ticket(conn)
        elif not events:
            self.units.prepare()
        return True

    def _on_ctrl(self) -> bool:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(self.ctrl, 16, 64)
        except BlockingIOError:
            return True
        if not msg and not fds:
            return False
        for _ in range(msg.count(b"p")):  # the runner's watchdog: a loop that answers is a loop that guards
            try:
                self.ctrl.send(b"P", socket.MSG_DONTWAIT)
            except OSError:
                pass
        for fd in fds:
            sock = socket.socket(fileno=fd)
            sock.setblocking(False)
            conn = _Conn(sock)
            self.conns[fd] = conn
            self.epoll.register(fd, select.EPOLLIN)
            self._issue_ticket(conn)  # the first one now: a caller is about to run
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
            kind = msg.get("t")
            if kind == "want":
                self._want(conn, msg)
            elif kind == "stats":
                self._send(conn, self._stats())
            elif kind == "end" and child is not None and child.conn is conn:
                self._kill(child.pid)  # the caller has its result: the unit goes, its exit report follows
            elif kind == "start" and child is not None and child.conn is conn and not child.started:
                child.started = True
                child.deadline = float(msg.get("t0") or time.monotonic()) + float(msg["timeout_seconds"])
                child.rss_limit = int(msg["memory_limit_mb"]) * 1024 * 1024
                if child.owner == child.pid and not conn.second:
                    # A second ticket while idle: back-to-back runs then find a child ready while the next
                    # forks. Only for a caller that runs on tickets: one whose runs come from templates
                    # keeps a single idle child (for a run its plugin's template cannot serve).
                    conn.second = True
                    self.want_ticket.append(conn)

    def _drop_conn(self, conn: _Conn) -> None:
        """The caller is gone: its ticket and its run have nobody to report to, so they are killed."""
        fd = conn.sock.fileno()
        self.epoll.unregister(fd)
        del self.conns[fd]
        for tpl in self.templates.values():
            tpl.waiting = [(c, d) for c, d in tpl.waiting if c is not conn]
        for pid in conn.children:
            if pid in self.children:
                self.children[pid].conn = None
                self._kill(pid)
        conn.children.clear()
        for _data, fds in conn.out:
            for queued in fds:
                os.close(queued)
        conn.out.clear()
        conn.sock.close()

    def _send(self, conn: _Conn, msg: dict[str, Any], fds: list[int] | None = None) -> bool:
        """Queue a message (and fds) for the caller and send what its socket takes now; never blocks. A
        caller that leaves more than `_SEND_BUFFER_BYTES` unread is dropped (its runs are killed)."""
        if self.conns.get(conn.sock.fileno()) is not conn:
            return False
        data = encode(json.dumps(msg).encode())
        try:
            ours = [os.dup(fd) for fd in fds or ()]
        except OSError:
            self._drop_conn(conn)
            return False
        was_idle = not conn.out
        conn.out.append((data, ours))
        conn.queued += len(data)
        if not self._flush(conn):
            return False
        if conn.out and was_idle:
            self.epoll.modify(conn.sock.fileno(), select.EPOLLIN | select.EPOLLOUT)
        return True

    def _flush(self, conn: _Conn) -> bool:
        """Send what the caller's socket takes; False when the caller was dropped."""
        try:
            while conn.out:
                data, fds = conn.out[0]
                if fds:
                    sent = socket.send_fds(conn.sock, [data], fds, socket.MSG_DONTWAIT)
                    for fd in fds:
                        os.close(fd)
                else:
                    sent = conn.sock.send(data, socket.MSG_DONTWAIT)
                conn.queued -= sent
                if sent < len(data):
                    conn.out[0] = (data[sent:], [])
                    break
                conn.out.pop(0)
        except BlockingIOError:
            pass
        except OSError:
            self._drop_conn(conn)
            return False
        if conn.queued > _SEND_BUFFER_BYTES:
            self._drop_conn(conn)
            return False
        if not conn.out:
            self.epoll.modify(conn.sock.fileno(), select.EPOLLIN)
        return True

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
        unit = self.units.take()  # the child joins it itself: the loop does not wait for the move
        try:
            os.mkdir(tmp, 0o700)
            pid = os.fork()
        except OSError as exc:
            for r, w in pipes:
                os.close(r)
                os.close(w)
            shutil.rmtree(tmp, ignore_errors=True)
            self.units.discard(unit)
            self._send(conn, {"t": "error", "message": f"fork: {exc}"})
            return
        if pid == 0:  # pragma: no cover - runs in the child
            spare_main((res_w, out_w, err_w, req_r), _prctl, tmp, self.drop_privileges, unit.join)
        for fd in (res_w, out_w, err_w, req_r):
            os.close(fd)
        pidfd = os.pidfd_open(pid)
        child = _Child(pid, pidfd, conn, tmp)
        self.children[pid] = child
        self.by_pidfd[pidfd] = child
        self.epoll.register(pidfd, select.EPOLLIN)
        conn.children.add(pid)
        child.unit = self.units.place(unit, pid, joined=True)
        try:
            self._send(conn, {"t": "ticket", "pid": pid, "unit": unit.wire() if unit.dirs else None},
                       [req_w, res_r, out_r, err_r, pidfd])
        finally:
            for fd in (req_w, res_r, out_r, err_r):
                os.close(fd)

    def _on_exit(self, child: _Child) -> None:
        pid, status, rusage = os.wait4(child.pid, os.WNOHANG)
        if pid == 0:
            return
        unit = child.unit
        peak = rusage.ru_maxrss * 1024
        if unit is not None:
            unit.kill([])  # whatever of it is left: nothing a run started outlives its report
            self._settle_unit(unit)
            peak = unit.peak() or peak
            if child.started and unit.oom_killed():
                child.memory_killed, child.memory_by = True, child.memory_by or "cgroup"
        self._settle_tree(child.killed)
        del self.children[child.pid]
        self.epoll.unregister(child.pidfd)
        os.close(child.pidfd)
        del self.by_pidfd[child.pidfd]
        self._reap_orphans()  # what it left that was re-parented to us (its leader died before its end)
        for fd in child.ticket_fds:  # a template's spare that never ran
            os.close(fd)
        for tpl in self.templates.values():
            if child in tpl.spares:
                tpl.spares.remove(child)
        conn = child.conn
        if conn is not None and conn.sock.fileno() in self.conns:
            conn.children.discard(child.pid)
            if self._send(conn, {"t": "exit", "pid": child.pid, "status": status, "maxrss": peak,
                                 "timed_out": child.timed_out, "memory_killed": child.memory_killed,
                                 "memory_by": child.memory_by,
                                 "started": child.started}) and child.owner == child.pid:
                self.want_ticket.append(conn)  # a spare was used: fork the next (a template's run was not one)
        shutil.rmtree(child.tmp, ignore_errors=True)  # after the report: nobody waits for this
        if unit is not None:
            self._dispose(unit)

    # -- templates ------------------------------------------------------------------------------
    def _want(self, conn: _Conn, msg: dict[str, Any]) -> None:
        """A run of this plugin is about to start: a ticket forked from its template, or why not."""
        plugin = msg["plugin"]
        key = json.dumps([plugin, msg.get("sys_path"), msg["memory_limit_mb"], msg.get("max_processes")],
                         sort_keys=True)
        tpl = self.templates.get(key)
        signature = _signature(plugin.get("path") or self._origins.get(key))
        if tpl is not None and tpl.ready and signature != tpl.signature:
            self._drop_template(tpl)  # the file changed on disk: its next run gets a new template
            tpl = None
        if key in self.per_run:
            if self.per_run[key] == signature or signature is None:
                self._send(conn, {"t": "fallback", "reason": "threads"})
                return
            del self.per_run[key]
        if key in self.backoff:
            until, _failures, failed_signature = self.backoff[key]
            if time.monotonic() < until and (failed_signature == signature or signature is None):
                self._send(conn, {"t": "fallback", "reason": "backoff"})
                return
        if tpl is None:
            tpl = self._build(key, msg, signature)
            if tpl is None:
                self._send(conn, {"t": "fallback", "reason": "fork"})
                return
        self.templates.move_to_end(key)
        if tpl.ready and self._stopped(tpl.pid):  # a run of its plugin stopped it: replaced, never waited on
            self._back_off(tpl)
            self._drop_template(tpl)
            self._send(conn, {"t": "fallback", "reason": "stopped"})
            return
        run_deadline = float(msg.get("t0") or time.monotonic()) + float(msg["timeout_seconds"])
        spare = tpl.spares.pop(0) if tpl.ready and tpl.spares else None
        if spare is not None and self._stopped(spare.pid):
            self._kill(spare.pid)  # another run of the plugin (same uid) stopped it: never hand it out
            spare = None
        if spare is not None:
            self._hand_out(spare, conn)
            self._fork_from(tpl, None)  # the next run's, while nobody waits
        elif tpl.ready and self._claim(tpl, conn, run_deadline):
            self._fork_from(tpl, None)
        elif tpl.ready:
            self._fork_from(tpl, conn, run_deadline)
        else:
            tpl.waiting.append((conn, run_deadline))

    def _claim(self, tpl: _Template, conn: _Conn, run_deadline: float) -> bool:
        """Take the spare the template is forking now for this run (back to back, the run after the one that
        took the last spare comes before it is ready): it answers sooner than a fork asked for after it."""
        for i, (to, ours, tmp, deadline) in enumerate(tpl.forking):
            if to is None:
                tpl.forking[i] = (conn, ours, tmp, min(deadline, run_deadline))
                tpl.asked()
                return True
        return False

    def _stopped(self, pid: int) -> bool:
        proc_pid = self._proc_pid(pid)
        try:
            with open(f"/proc/{proc_pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[0] in (b"T", b"t")
        except (OSError, IndexError):
            return False

    def _hand_out(self, child: _Child, conn: _Conn) -> None:
        fds, child.ticket_fds = child.ticket_fds, ()
        child.conn = conn
        conn.children.add(child.pid)
        try:
            unit = child.unit.wire() if child.unit is not None else None
            self._send(conn, {"t": "ticket", "pid": child.pid, "template": True, "unit": unit}, [*fds, child.pidfd])
        finally:
            for fd in fds:
                os.close(fd)

    def _build(self, key: str, msg: dict[str, Any], signature: tuple[int, ...] | None) -> _Template | None:
        while len(self.templates) >= self.max_templates:
            victim = next((t for t in self.templates.values() if t.ready and not t.forking), None)
            if victim is None:
                return None  # every template is busy being built or forking: import per run
            self._drop_template(victim)
            self.evictions += 1
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        tmp = os.path.join(self.tmp_root, f"sidecar-template-{os.urandom(8).hex()}")
        try:
            os.mkdir(tmp, 0o700)
            pid = os.fork()
        except OSError:
            mine.close()
            theirs.close()
            shutil.rmtree(tmp, ignore_errors=True)
            return None
        if pid == 0:  # pragma: no cover - runs in the template
            mine.close()
            template_main(theirs.fileno(), _prctl, tmp, self.drop_privileges, msg)
        theirs.close()
        mine.setblocking(False)  # a template that does not read never blocks the loop: its fork request fails
        pidfd = os.pidfd_open(pid)
        deadline = float(msg.get("t0") or time.monotonic()) + float(msg["timeout_seconds"])
        tpl = _Template(key, pid, pidfd, mine, tmp, signature, deadline, int(msg["memory_limit_mb"]) * 1024 * 1024)
        tpl.unit = self._unit(pid, tpl.limit)
        try:
            mine.send(b'{"t": "placed"}')  # its import (plugin code) starts inside its unit
        except OSError:
            pass
        self.templates[key] = tpl
        for fd in (mine.fileno(), pidfd):
            self.template_fds[fd] = tpl
            self.epoll.register(fd, select.EPOLLIN)
        self.builds += 1
        return tpl

    def _fork_from(self, tpl: _Template, conn: _Conn | None, run_deadline: float = float("inf")) -> None:
        """Ask the template for a child: for `conn`'s run, or (None) a spare for the next run."""
        if conn is not None and conn.sock.fileno() not in self.conns:
            return
        try:
            pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(4)]
        except OSError:
            if conn is not None:
                self._send(conn, {"t": "fallback", "reason": "pipe"})
            return
        for _r, w in pipes[:3]:
            try:
                fcntl.fcntl(w, _F_SETPIPE_SZ, _PIPE_SIZE)
            except OSError:
                pass
        (res_r, res_w), (out_r, out_w), (err_r, err_w), (req_r, req_w) = pipes
        tmp = os.path.join(self.tmp_root, f"sidecar-run-{os.urandom(8).hex()}")
        ours = (req_w, res_r, out_r, err_r)
        try:
            os.mkdir(tmp, 0o700)
            if self.drop_privileges:  # the run wears its template's identity
                ident = PLUGIN_ID_BASE + tpl.pid
                os.chown(tmp, ident, ident)
            socket.send_fds(tpl.sock, [json.dumps({"tmp": tmp}).encode()], [res_w, out_w, err_w, req_r])
        except OSError:
            for fd in ours:
                os.close(fd)
            shutil.rmtree(tmp, ignore_errors=True)
            if conn is not None:
                self._send(conn, {"t": "fallback", "reason": "template"})
            return
        finally:
            for fd in (res_w, out_w, err_w, req_r):
                os.close(fd)
        tpl.forking.append((conn, ours, tmp, min(time.monotonic() + _FORK_ANSWER_SECONDS, run_deadline)))
        tpl.asked()

    def _on_template(self, tpl: _Template, fd: int) -> None:
        if fd == tpl.pidfd:
            self._template_exited(tpl)
            return
        try:
            data = tpl.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            return  # its exit (pidfd) says the rest
        msg = json.loads(data)
        kind = msg.get("t")
        if kind == "ready":
            tpl.ready = True
            if msg.get("origin") and tpl.signature is None:
                tpl.signature = _signature(msg["origin"])
                self._origins[tpl.key] = msg["origin"]
            self.backoff.pop(tpl.key, None)
            waiting, tpl.waiting = tpl.waiting, []
            for conn, run_deadline in waiting:
                self._fork_from(tpl, conn, run_deadline)
            self._fork_from(tpl, None)
        elif kind == "failed":
            tpl.answered = True
            self._back_off(tpl)
            waiting, tpl.waiting = tpl.waiting, []
            for conn, _d in waiting:
                self._send(conn, {"t": "template_failed", "message": msg.get("message"), "status": 0,
                                  "timed_out": False})
        elif kind == "threads":
            tpl.answered = True
            self.per_run[tpl.key] = tpl.signature
            waiting, tpl.waiting = tpl.waiting, []
            for conn, _d in waiting:
                self._send(conn, {"t": "fallback", "reason": "threads", "threads": msg.get("count")})
        elif kind == "forked" and tpl.forking:
            to, ours, tmp, _deadline = tpl.forking.pop(0)
            tpl.asked()
            self._ticket_from(tpl, to, int(msg.get("pid") or 0), ours, tmp)

    def _ticket_from(self, tpl: _Template, conn: _Conn | None, pid: int, ours: tuple[int, ...], tmp: str) -> None:
        spare = conn is None and pid and self.templates.get(tpl.key) is tpl
        alive = conn is not None and self.conns.get(conn.sock.fileno()) is conn
        pidfd = -1
        if pid:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                pid = 0
        if not pid:
            for fd in ours:
                os.close(fd)
            shutil.rmtree(tmp, ignore_errors=True)
            if alive and conn is not None:
                self._send(conn, {"t": "fallback", "reason": "fork"})
            self._reap_orphans()
            return
        child = _Child(pid, pidfd, conn if alive else None, tmp, owner=tpl.pid)
        self.children[pid] = child
        self.by_pidfd[pidfd] = child
        self.epoll.register(pidfd, select.EPOLLIN)
        unit = self._contain(child, tpl.limit)
        if spare:
            child.ticket_fds = ours
            tpl.spares.append(child)
            return
        try:
            if alive and conn is not None:
                conn.children.add(pid)
                self._send(conn, {"t": "ticket", "pid": pid, "template": True, "unit": unit}, [*ours, pidfd])
            else:
                self._kill(pid)
        finally:
            for fd in ours:
                os.close(fd)
        if self.reap_due:
            self._reap_orphans()

    def _template_exited(self, tpl: _Template) -> None:
        try:
            _pid, status, _rusage = os.wait4(tpl.pid, os.WNOHANG)
        except ChildProcessError:
            _pid, status = tpl.pid, 0
        if _pid == 0:
            return
        if not tpl.ready and not tpl.answered:
            self._back_off(tpl)  # died (or was killed at its deadline) while importing
        if tpl.waiting:  # the runs waiting for it end the same way
            for conn, _d in tpl.waiting:
                self._send(conn, {"t": "template_failed", "message": None, "status": status,
                                  "timed_out": tpl.timed_out})
            tpl.waiting = []
        self._forget_template(tpl, reaped=True)

    def _back_off(self, tpl: _Template) -> None:
        """No new template for this key for 1 s, doubling per failure up to a minute."""
        _until, failures, _sig = self.backoff.get(tpl.key, (0.0, 0, None))
        self.backoff[tpl.key] = (time.monotonic() + min(_MAX_BACKOFF_SECONDS, 2.0 ** failures), failures + 1,
                                 tpl.signature)

    def _drop_template(self, tpl: _Template, wait: bool = False, hung: bool = False) -> None:
        """Retire a template (evicted, stale, stopped, hung or shutting down); its runs are ours and go on.
        `hung`: it did not answer a fork request in time: the runs that asked end saying so."""
        self._kill(tpl.pid)
        if wait:
            try:
                os.waitpid(tpl.pid, 0)
            except ChildProcessError:
                pass
        for conn, _d in tpl.waiting:
            self._send(conn, {"t": "fallback", "reason": "retired"})
        tpl.waiting = []
        self._forget_template(tpl, reaped=wait, hung=hung)

    def _forget_template(self, tpl: _Template, reaped: bool, hung: bool = False) -> None:
        forking, tpl.forking = tpl.forking, []
        for conn, ours, tmp, _deadline in forking:  # fork requests it will never answer
            if hung and conn is not None and self.conns.get(conn.sock.fileno()) is conn:
                for fd in ours:
                    os.close(fd)
                shutil.rmtree(tmp, ignore_errors=True)
                self._send(conn, {"t": "template_failed", "hung": True, "message": None, "status": 0,
                                  "timed_out": False, "waited": _FORK_ANSWER_SECONDS})
            else:
                self._ticket_from(tpl, conn, 0, ours, tmp)
        for child in tpl.spares:  # reaped (and their fds closed) when their exit is seen
            self._kill(child.pid)
        tpl.spares = []
        if self.templates.get(tpl.key) is tpl:
            del self.templates[tpl.key]
        for fd in (tpl.sock.fileno(), tpl.pidfd):
            if self.template_fds.pop(fd, None) is not None:
                self.epoll.unregister(fd)
        tpl.sock.close()
        os.close(tpl.pidfd)
        shutil.rmtree(tpl.tmp, ignore_errors=True)
        if not reaped:
            self.orphans.add(tpl.pid)  # killed: reaped with the other orphans
        if tpl.unit is not None:
            tpl.unit.kill([])
            self._dispose(tpl.unit)

    def _stats(self) -> dict[str, Any]:
        resident = 0
        for tpl in self.templates.values():
            try:
                with open(f"/proc/{tpl.pid}/statm", "rb") as f:
                    resident += int(f.read().split()[1]) * _PAGE
            except (OSError, IndexError, ValueError):
                pass
        return {"t": "stats", "alive": len(self.templates), "builds": self.builds, "evictions": self.evictions,
                "resident_bytes": resident}

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
                child.memory_killed, child.memory_by = True, "rss"
                self._kill(child.pid)

    def _our_children(self) -> dict[int, int]:
        """Our children: our pid for each -> its pid in /proc (the same unless /proc is the host's)."""
        if not self.host_proc:
            return {pid: pid for pid in self._listed_children()}
        found = {}
        for proc_pid in self._listed_children():
            try:
                with open(f"/proc/{proc_pid}/status", "rb") as f:
                    ours = int(next(line for line in f if line.startswith(b"NSpid:")).split()[-1])
            except (OSError, StopIteration, ValueError, IndexError):
                continue
            found[ours] = proc_pid
        return found

    def _listed_children(self) -> set[int]:
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
                    if int(stat[stat.rindex(b")") + 2 :].split()[1]) == self.proc_pid:
                        found.add(int(entry))
            return found

    # -- units ----------------------------------------------------------------------------------
    def _unit(self, pid: int, memory_limit_bytes: int | None = None) -> Unit:
        try:
            return self.units.create(pid, memory_limit_bytes)
        except OSError:
            return Unit(pid, "")  # the process is gone already: its exit says the rest

    def _contain(self, child: _Child, memory_limit_bytes: int | None = None) -> dict[str, Any] | None:
        """Give a run its unit before any code of its plugin runs; what the caller needs of it."""
        child.unit = self._unit(child.pid, memory_limit_bytes)
        return child.unit.wire() if child.unit.dirs else None

    def _proc_pid(self, pid: int) -> int | None:
        """Our child's pid in /proc (the same unless /proc is the host's)."""
        if not self.host_proc:
            return pid
        return next((proc for ours, proc in self._our_children().items() if ours == pid), None)

    def _ours(self, proc_pid: int) -> int | None:
        if not self.host_proc:
            return proc_pid
        try:
            with open(f"/proc/{proc_pid}/status", "rb") as f:
                return int(next(line for line in f if line.startswith(b"NSpid:")).split()[-1])
        except (OSError, StopIteration, ValueError, IndexError):
            return None

    def _tree(self, pid: int) -> list[int]:
        """Stop every descendant of `pid` (so none forks meanwhile) and return them, ours pids.

        A run's leader is a child subreaper that lives until its end, so whatever the run started, `setsid`
        daemons included, is in this tree."""
        root = self._proc_pid(pid)
        if root is None:
            return []

        def ours(proc_pid: int) -> int | None:  # never the launcher itself
            mine = self._ours(proc_pid)
            return None if mine is None or mine == self.pid else mine

        return stop_tree(root, ours)

    def _kill(self, pid: int) -> None:
        """End a unit (a run's, a template's, or an orphan's tree): its cgroup, its process tree, its leader."""
        child = self.children.get(pid)
        tpl = next((t for t in self.templates.values() if t.pid == pid), None)
        unit = child.unit if child is not None else tpl.unit if tpl is not None else None
        _signal(pid, signal.SIGSTOP)
        tree = self._tree(pid)
        if unit is not None:
            unit.kill(tree)
        else:
            for p in tree:
                _signal(p, signal.SIGKILL)
        _signal(pid, signal.SIGKILL)
        if child is not None:
            child.killed.extend(tree)

    def _settle_tree(self, pids: list[int]) -> None:
        """Wait (briefly: SIGKILLed processes only) until the killed descendants of a run are dead (a zombie
        or gone): a unit without a cgroup has no other way to tell its end is complete."""
        for i in range(200):
            if all(self._dead(p) for p in pids):  # read only: a pid reaped meanwhile may be reused
                return
            time.sleep(0.0005 if i < 20 else 0.005)

    def _dead(self, pid: int) -> bool:
        proc_pid = self._proc_pid(pid)
        if proc_pid is None:
            return True
        try:
            with open(f"/proc/{proc_pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
        except (OSError, IndexError):
            return True

    def _settle_unit(self, unit: Unit) -> None:
        """Wait (briefly: SIGKILLed processes only) until the unit's cgroup is empty."""
        if not unit.dirs:
            return
        for i in range(200):
            if unit.empty():
                return
            unit.kill([])
            time.sleep(0.0005 if i < 20 else 0.005)

    def _dispose(self, unit: Unit) -> None:
        if not self.units.forget(unit):
            self.dying.append(unit)  # a process still leaving: removed by a later tick

    def _live_unit(self, proc_pid: int) -> bool | None:
        """Whether a process re-parented to us belongs to a live unit (None: cannot tell yet)."""
        owner = self.units.owner(proc_pid)
        if owner is not None:  # cgroups say whose it is, whatever it did
            unit = self.units.by_name.get(owner)
            return unit is not None and self._unit_live(unit.leader)
        sid = session_of(proc_pid)
        if sid is None:
            return False
        leaders = {self._proc_pid(p) for p in self._live_leaders()}
        if sid in leaders:
            return True
        if sid == proc_pid and any(t.forking for t in self.templates.values()):
            return None  # maybe a run a template is forking, not yet announced
        return False

    def _live_leaders(self) -> list[int]:
        return [*(c.pid for c in self.children.values()), *(t.pid for t in self.templates.values())]

    def _unit_live(self, pid: int) -> bool:
        return pid in self.children or any(t.pid == pid for t in self.templates.values())

    def _reap_orphans(self) -> None:
        """Kill and reap every child of ours that belongs to no live unit: what a run or a template left
        when its leader died. Judged by unit (cgroup, else session), never by who else is in flight."""
        self.reap_due = False
        known = set(self._live_leaders())
        for pid, proc_pid in self._our_children().items():
            if pid in known or pid in self.orphans:
                continue
            live = self._live_unit(proc_pid)
            if live is None:
                self.reap_due = True
                continue
            if live:
                continue
            _signal(pid, signal.SIGSTOP)
            for p in self._tree(pid):
                _signal(p, signal.SIGKILL)
            _signal(pid, signal.SIGKILL)
            self.orphans.add(pid)
        self._reap_killed()
        for unit in list(self.dying):
            if self.units.forget(unit):
                self.dying.remove(unit)

    def _reap_killed(self) -> None:
        for pid in list(self.orphans):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.orphans.discard(pid)

    def _shutdown(self) -> None:
        for tpl in list(self.templates.values()):
            self._drop_template(tpl, wait=True)
        for child in list(self.children.values()):
            self._kill(child.pid)
        for child in list(self.children.values()):
            try:
                os.waitpid(child.pid, 0)
            except ChildProcessError:
                pass
            shutil.rmtree(child.tmp, ignore_errors=True)
        self.children.clear()
        self._reap_orphans()
        self.units.close()


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
    Launcher(ctrl, drop_privileges=bool(options.get("drop_privileges")),
             max_templates=int(options.get("max_templates", 32)), cgroups=Cgroups.from_wire(options.get("cgroups")),
             max_processes=int(options.get("max_processes", 512)), units_tag=options.get("units_tag")).serve()


if __name__ == "__main__":
    main()
