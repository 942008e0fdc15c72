"""The launcher: a small single-threaded process that forks the sandboxed children and guards them.

Why a separate process: forking a multithreaded server can deadlock the child on a lock another
thread held, forking a large parent costs tens of milliseconds, and a child's `ru_maxrss`
includes the parent's pages. The launcher runs without `site` (`-S`) and imports little.

Hand-off: every caller connection holds a *ticket* (two once it ran on one): each a child forked
ahead of need and pre-faulted (`child.spare_main`), and the caller's ends of its pipes (request,
result, stdout, stderr), passed over the connection with SCM_RIGHTS. A run is the caller writing
its request straight into the child and reading the result straight out of it: no hop through
the launcher on the hot path. The launcher is told when a run starts, arms its deadline and its
resident-memory watch, kills the process group on either, reaps the child, reports its exit, and
forks the connection's next ticket while nobody waits. A connection that runs a plugin's template
children is likewise handed the next one of that template as it starts a run (a ticket ahead,
`template_pool`), so its next run of that plugin asks nothing either.

It is also a child subreaper: a plugin's descendants that leave its process group (`setsid`,
double fork) are re-parented here when their parent dies, and are killed when any run ends.

Isolation (`isolation`): the caller may start the launcher inside bubblewrap's namespaces, where
pids are the namespace's own; a ticket therefore carries the child's pidfd, which names it from
anywhere. Each child gets a private temporary directory (its `TMPDIR` and `HOME`; `run_tmp`: a
bounded tmpfs of its own as root), removed when it exits, and, when the launcher runs as root, an
identity of its own.

Its messages, to callers and to templates, are declared in `protocol`. Sends never block the loop:
what a caller does not read waits in a bounded buffer, and a caller past it is dropped.

This module is the event loop; the launcher's other ideas are a layer each (`launcher_state` draws them):
a run's deadline is armed and enforced in `guards`, a template chosen in `template_pool`, a ticket forked
and its exit reported in `tickets`, an orphan judged in `reaper`, a unit ended in `processes`, a caller
sent to in `connections`.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import time

from ..framing import FrameError
from .connections import Conn
from .containment import Cgroups
from .guards import Guards
from .launcher_state import prctl
from .protocol import PING, PONG, CallerMessage, LauncherOptions
from .run_tmp import enter_private_mounts
from .title import set_title

__all__ = ["Launcher", "main"]

_PR_SET_CHILD_SUBREAPER = 36


class Launcher(Guards):
    """The launcher's event loop: callers, children and templates on one epoll; see the module and its layers
    (`launcher_state`)."""

    def serve(self) -> None:
        try:
            while self._tick():
                pass
        finally:
            self._shutdown()

    def _tick(self) -> bool:
        now = time.monotonic()
        running = [c for c in self.children.values() if c.started]
        building = [t for t in self.templates.values() if not t.ready and not t.timed_out]
        timeout = self._wake_in(now, running, building)  # -1: no deadline
        if self.orphans or self.reap_due or self.dying:  # the reaper looks again soon
            timeout = 0.05 if timeout < 0 else min(timeout, 0.05)
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
        self._enforce(time.monotonic(), running, building)
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
        for _ in range(msg.count(PING)):  # the runner's watchdog: a loop that answers is a loop that guards
            try:
                self.ctrl.send(PONG, socket.MSG_DONTWAIT)
            except OSError:
                pass
        for fd in fds:
            sock = socket.socket(fileno=fd)
            sock.setblocking(False)
            conn = Conn(sock)
            self.conns[fd] = conn
            self.epoll.register(fd, select.EPOLLIN)
            self._issue_ticket(conn)  # the first one now: a caller is about to run (a second: `_second_ticket`)
        return True

    def _on_conn(self, conn: Conn) -> None:
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
            msg: CallerMessage = json.loads(frame)  # from the caller: trusted
            if msg["t"] == "want":
                self._want(conn, msg)
            elif msg["t"] == "stats":
                self._send(conn, self._stats())
            elif msg["t"] == "end":
                child = self.children.get(msg["pid"])
                if child is not None and child.conn is conn:
                    self._kill(child.pid)  # the caller has its result: the unit goes, its exit report follows
            elif msg["t"] == "start":
                child = self.children.get(msg["pid"])
                held: float | None = None  # how long its ticket ahead was held, if it ran on one
                if child is not None and child.conn is conn and not child.started:
                    if conn.ahead is child:
                        conn.ahead, held = None, time.monotonic() - conn.ahead_at  # now a run
                    self._arm(child, conn, msg)
                    self._second_ticket(conn, child)
                if msg.get("ahead"):  # even when its run is over and reaped already (a run can be that quick)
                    self._hand_ahead(conn, held)

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
            self.tmp.remove(child.tmp)
        self.children.clear()
        self._reap_orphans()
        self.units.close()


def _on_term(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    ctrl = socket.socket(fileno=int(args[0]))
    if prctl is not None:
        prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    # No PR_SET_PDEATHSIG here: it fires when the *thread* that spawned us exits, and callers
    # spawn from short-lived request threads. The control socket's end-of-file is the signal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_term)
    enter_private_mounts()  # as root: the runs' tmpfs mounts stay ours, never the host's
    if len(args) > 1:  # the caller's sys.path, so plugins import what the caller could
        sys.path.extend(p for p in json.loads(args[1]) if p and p not in sys.path)
    set_title("sidecar: launcher")  # once its path has the caller's site-packages, where setproctitle is
    options: LauncherOptions = json.loads(args[2]) if len(args) > 2 else {}
    Launcher(ctrl, drop_privileges=bool(options.get("drop_privileges")),
             max_templates=int(options.get("max_templates", 32)), cgroups=Cgroups.from_wire(options.get("cgroups")),
             max_processes=int(options.get("max_processes", 512)), units_tag=options.get("units_tag"),
             identity=(options.get("group"), tuple(options.get("groups", ())))).serve()


if __name__ == "__main__":
    main()
