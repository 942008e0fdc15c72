"""Tickets: children forked ahead of need, handed to callers, and the report of their exit.

Every caller connection holds a ticket, two once it ran on one: each a child forked ahead of need and pre-faulted
(`child.spare_main`), and the caller's ends of its pipes (`protocol.TICKET_FDS`), passed with SCM_RIGHTS.
When a ticket's child exits, its unit is ended and waited for, it is reaped, its exit reported to the
caller, its private directory removed, and the caller's next ticket forked while nobody waits. (A template's
children are handed out by `template_pool`, as the answer to a `Want` or as a ticket ahead; they are reaped
and reported here all the same.)
"""

from __future__ import annotations

import fcntl
import os
import select

from .child import spare_main
from .connections import Conn, Connections
from .containment import Unit
from .launcher_state import prctl

__all__ = ["Child", "Tickets", "run_pipes"]

_F_SETPIPE_SZ = 1031
_PIPE_SIZE = 1 << 20


class Child:
    """A child of the launcher: a ticket, a run, or a template's spare; what guards it and who waits on it."""

    __slots__ = ("pid", "pidfd", "conn", "deadline", "rss_limit", "started", "timed_out", "memory_killed", "memory_by",
                 "tmp", "owner", "key", "ticket_fds", "unit", "killed")

    def __init__(self, pid: int, pidfd: int, conn: Conn | None, tmp: str, owner: int = 0, key: str = "") -> None:
        self.pid = pid
        #: the process whose identity the run wears: itself, or the template it was forked from
        self.owner = owner or pid
        #: the key of the template it was forked from ("": forked by the launcher itself)
        self.key = key
        #: a template's spare: the caller's ends of its pipes, held here until a run of its plugin asks
        self.ticket_fds: tuple[int, ...] = ()
        self.pidfd = pidfd
        self.tmp = tmp
        self.conn: Conn | None = conn
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


def run_pipes() -> list[tuple[int, int]]:
    """A run's four pipes (result, stdout, stderr, request), the first three enlarged where the host lets us."""
    pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(4)]
    for _r, w in pipes[:3]:
        try:
            fcntl.fcntl(w, _F_SETPIPE_SZ, _PIPE_SIZE)
        except OSError:
            pass
    return pipes


class Tickets(Connections):
    """Forking a caller's tickets, and reaping and reporting their children."""

    def _issue_ticket(self, conn: Conn) -> None:
        try:
            pipes = run_pipes()
        except OSError as exc:
            self._send(conn, {"t": "error", "message": f"pipe: {exc}"})
            return
        (res_r, res_w), (out_r, out_w), (err_r, err_w), (req_r, req_w) = pipes
        tmp = ""
        unit = self.units.take()  # the child joins it itself: the loop does not wait for the move
        try:
            tmp = self.tmp.make("run", conn.memory_limit_mb)  # resized when its run starts
            pid = os.fork()
        except OSError as exc:
            for r, w in pipes:
                os.close(r)
                os.close(w)
            if tmp:
                self.tmp.remove(tmp)
            self.units.discard(unit)
            self._send(conn, {"t": "error", "message": f"fork: {exc}"})
            return
        if pid == 0:  # pragma: no cover - runs in the child
            spare_main((res_w, out_w, err_w, req_r), prctl, tmp, self.identity, unit.join)
        for fd in (res_w, out_w, err_w, req_r):
            os.close(fd)
        pidfd = os.pidfd_open(pid)
        child = Child(pid, pidfd, conn, tmp)
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

    def _second_ticket(self, conn: Conn, child: Child) -> None:
        """A run started on one of `conn`'s tickets: from now on it keeps two, so that back-to-back runs find a
        child ready while the next forks. A caller whose runs come from templates uses none and keeps one
        idle child only (for a run its plugin's template cannot serve)."""
        if child.owner == child.pid and not conn.second:
            conn.second = True
            self.want_ticket.append(conn)

    def _on_exit(self, child: Child) -> None:
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
        if conn is not None and conn.ahead is child:
            conn.ahead = None  # it died before its run: the caller sees its exit report and asks again
        if conn is not None and conn.sock.fileno() in self.conns:
            conn.children.discard(child.pid)
            if self._send(conn, {"t": "exit", "pid": child.pid, "status": status, "maxrss": peak,
                                 "timed_out": child.timed_out, "memory_killed": child.memory_killed,
                                 "memory_by": child.memory_by,
                                 "started": child.started}) and child.owner == child.pid:
                self.want_ticket.append(conn)  # a spare was used: fork the next (a template's run was not one)
        self.tmp.remove(child.tmp)  # after the report: nobody waits for this
        if unit is not None:
            self._dispose(unit)
