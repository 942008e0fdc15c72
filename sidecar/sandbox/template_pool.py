"""The template pool: a template per plugin (see `template`), chosen, built, asked for children and retired.

A `Want` names a plugin; its key (`protocol.template_key`: the plugin, the caller's import path, its limits)
chooses the template. One whose plugin's file changed is replaced; a plugin whose import starts threads is
imported per run until it changes; one whose import failed or hung backs off (1 s, doubling up to a minute).
The pool holds at most `max_templates`, least recently used evicted first. Each ready template keeps a spare
child forked ahead of need; a run takes it, or the one being forked, or asks for a fork. A template that does
not answer a fork request in time is replaced.

Tickets ahead: a caller whose run of a template's child starts (`Start` with `ahead`) is handed the template's
spare, or the next child forked for it, before its next run asks; that run then costs no message to the
launcher before it starts. One per connection: a `Want` gives it up (killed; still being forked, it becomes the
template's spare). The caller checks the plugin's file before it uses one (`Ahead.signature`): an edited
plugin's next run asks, and so gets a new template. A ticket ahead is a run not yet started, like any handed
out: its template's retirement leaves it alone (it is reaped when it exits, killed with its connection).
"""

from __future__ import annotations

import json
import os
import select
import socket
import time

from .child import PLUGIN_ID_BASE
from .connections import Conn
from .containment import Unit
from .launcher_state import PAGE, prctl
from .protocol import PLACED, Ahead, Fork, Stats, Want, template_key, template_message
from .template import template_main
from .tickets import Child, Tickets, run_pipes

__all__ = ["ForkRequest", "Template", "TemplatePool"]

#: How long a template may take to answer a fork request before it is killed and replaced (runs meanwhile
#: import per run): a template stopped by its own run, or hung in an at-fork hook, never holds a run.
_FORK_ANSWER_SECONDS = 2.0

#: A ticket ahead used within this of being handed over: runs come back to back, and the template keeps a spare
#: forked as well, so that the next ticket ahead is ready when its run asks (spaced runs need none: the one
#: forked as a run starts is ready long before the next).
_BACK_TO_BACK_SECONDS = 0.05

#: Back-off after a template's import failed or hung: 1 s, doubling up to this (runs meanwhile import per run).
_MAX_BACKOFF_SECONDS = 60.0


class ForkRequest:
    """A fork asked of a template and not answered yet: who gets the child (None: kept as the template's spare),
    whether as a ticket ahead, the caller's ends of its pipes, its private directory, and by when the template
    must answer."""

    __slots__ = ("to", "ahead", "ours", "tmp", "deadline")

    def __init__(self, to: Conn | None, ours: tuple[int, ...], tmp: str, deadline: float, ahead: bool) -> None:
        self.to = to
        self.ahead = ahead
        self.ours = ours
        self.tmp = tmp
        self.deadline = deadline


class Template:
    """A plugin's template as the launcher sees it: its process, its socket and who waits on it."""

    __slots__ = ("key", "pid", "pidfd", "sock", "tmp", "origin", "signature", "ready", "deadline", "timed_out",
                 "waiting", "forking", "spares", "answered", "unit", "fork_deadline", "memory_limit_mb")

    def __init__(self, key: str, pid: int, pidfd: int, sock: socket.socket, tmp: str, origin: str | None,
                 signature: tuple[int, ...] | None, deadline: float) -> None:
        self.key = key
        self.pid = pid
        self.pidfd = pidfd
        self.sock = sock
        self.tmp = tmp
        #: the plugin's file (its path, or the file its module was imported from once known)
        self.origin = origin
        #: (inode, size, mtime) of the plugin's file when built: a change means a new template
        self.signature = signature
        self.ready = False
        #: it said why it will not serve (its import failed, or started a thread)
        self.answered = False
        self.deadline = deadline
        self.timed_out = False
        #: connections waiting for the import to finish, then for a fork (with their run's deadline)
        self.waiting: list[tuple[Conn, float]] = []
        #: fork requests in flight, in the order the template answers them
        self.forking: list[ForkRequest] = []
        #: children forked ahead of need, handed to the next runs of this plugin
        self.spares: list[Child] = []
        self.unit: Unit | None = None
        #: by when it must answer its fork requests (a stopped or hung template is replaced)
        self.fork_deadline = float("inf")
        #: its runs' limit (part of its key): the size of their temporary directories
        self.memory_limit_mb = 0

    def asked(self) -> None:
        self.fork_deadline = min((r.deadline for r in self.forking), default=float("inf"))

    def ahead(self) -> Ahead:
        """What a ticket ahead from it says of it (the caller checks the file before it runs one)."""
        return {"key": self.key, "origin": self.origin,
                "signature": list(self.signature) if self.signature is not None else None}


def _signature(path: str | None) -> tuple[int, ...] | None:
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class TemplatePool(Tickets):
    """Choosing, building, asking and retiring templates; their stats."""

    def _want(self, conn: Conn, msg: Want) -> None:
        """A run of this plugin is about to start: a ticket forked from its template, or why not."""
        self._give_up_ahead(conn)  # a caller that asks does not use the ticket ahead it may hold
        plugin = msg["plugin"]
        key = template_key(plugin, msg.get("sys_path"), msg["memory_limit_mb"], msg.get("max_processes"))
        tpl = self.templates.get(key)
        origin = plugin.get("path") or self._origins.get(key)
        signature = _signature(origin)
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
            tpl = self._build(key, msg, origin, signature)
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
            self._refill(tpl)  # the next run's, while nobody waits
        elif tpl.ready and self._claim(tpl, conn, run_deadline):
            self._refill(tpl)
        elif tpl.ready:
            self._fork_from(tpl, conn, run_deadline)
        else:
            tpl.waiting.append((conn, run_deadline))

    def _claim(self, tpl: Template, conn: Conn, run_deadline: float) -> bool:
        """Take the spare the template is forking now for this run (back to back, the run after the one that
        took the last spare comes before it is ready): it answers sooner than a fork asked for after it."""
        for req in tpl.forking:
            if req.to is None:
                req.to, req.deadline = conn, min(req.deadline, run_deadline)
                tpl.asked()
                return True
        return False

    def _hand_out(self, child: Child, conn: Conn, ahead: Ahead | None = None) -> None:
        fds, child.ticket_fds = child.ticket_fds, ()
        child.conn = conn
        conn.children.add(child.pid)
        conn.key = child.key
        try:
            unit = child.unit.wire() if child.unit is not None else None
            if ahead is None:
                self._send(conn, {"t": "ticket", "pid": child.pid, "template": True, "unit": unit},
                           [*fds, child.pidfd])
            else:
                conn.ahead, conn.ahead_at = child, time.monotonic()
                self._send(conn, {"t": "ticket", "pid": child.pid, "template": True, "unit": unit, "ahead": ahead},
                           [*fds, child.pidfd])
        finally:
            for fd in fds:
                os.close(fd)

    def _hand_ahead(self, conn: Conn, held: float | None) -> None:
        """A run of the caller's last template child started and it asked for a ticket ahead: the template's
        spare, else a fork for it. Answered exactly once: a ticket (now, or once forked) or `NoneAhead`.
        `held`: how long the run's own ticket ahead was held (None: it was not one); back to back, the
        template's spare is forked again too."""
        tpl = self.templates.get(conn.key)
        if conn.ahead is not None or tpl is None or not tpl.ready or self._stopped(tpl.pid):
            self._send(conn, {"t": "none_ahead"})  # one already, or the template was retired or stopped
            return
        spare = tpl.spares.pop(0) if tpl.spares else None
        if spare is not None and self._stopped(spare.pid):
            self._kill(spare.pid)  # another run of the plugin (same uid) stopped it: never hand it out
            spare = None
        forking = next((req for req in tpl.forking if req.to is None), None)
        if spare is not None:
            self._hand_out(spare, conn, tpl.ahead())
        elif forking is not None:  # the spare being forked (back to back, it is not ready yet): it comes first
            forking.to, forking.ahead, conn.ahead = conn, True, forking
        else:
            self._fork_from(tpl, conn, ahead=True)
        if held is not None and held < _BACK_TO_BACK_SECONDS:
            self._refill(tpl)  # while nobody waits: the next run finds its ticket ahead forked

    def _refill(self, tpl: Template) -> None:
        """Fork the template's spare, unless it has one, ready or being forked (one is enough)."""
        if not tpl.spares and not any(req.to is None for req in tpl.forking):
            self._fork_from(tpl, None)

    def _give_up_ahead(self, conn: Conn) -> None:
        """The caller asked (`Want`): the ticket ahead it holds is given up (killed; its exit report follows),
        and one still being forked is answered `NoneAhead` and kept as its template's spare."""
        ahead, conn.ahead = conn.ahead, None
        if isinstance(ahead, ForkRequest):
            ahead.to, ahead.ahead = None, False
            self._send(conn, {"t": "none_ahead"})
        elif ahead is not None:
            self._kill(ahead.pid)

    def _build(self, key: str, msg: Want, origin: str | None, signature: tuple[int, ...] | None) -> Template | None:
        while len(self.templates) >= self.max_templates:
            victim = next((t for t in self.templates.values() if t.ready and not t.forking), None)
            if victim is None:
                return None  # every template is busy being built or forking: import per run
            self._drop_template(victim)
            self.evictions += 1
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        tmp = ""
        try:
            tmp = self.tmp.make("template", int(msg["memory_limit_mb"]))
            pid = os.fork()
        except OSError:
            mine.close()
            theirs.close()
            if tmp:
                self.tmp.remove(tmp)
            return None
        if pid == 0:  # pragma: no cover - runs in the template
            mine.close()
            template_main(theirs.fileno(), prctl, tmp, self.identity, msg)
        theirs.close()
        mine.setblocking(False)  # a template that does not read never blocks the loop: its fork request fails
        pidfd = os.pidfd_open(pid)
        deadline = float(msg.get("t0") or time.monotonic()) + float(msg["timeout_seconds"])
        tpl = Template(key, pid, pidfd, mine, tmp, origin, signature, deadline)
        tpl.memory_limit_mb = int(msg["memory_limit_mb"])
        tpl.unit = self._unit(pid, tpl.memory_limit_mb * 1024 * 1024)
        try:
            mine.send(PLACED)  # its import (plugin code) starts inside its unit
        except OSError:
            pass
        self.templates[key] = tpl
        for fd in (mine.fileno(), pidfd):
            self.template_fds[fd] = tpl
            self.epoll.register(fd, select.EPOLLIN)
        self.builds += 1
        return tpl

    def _fork_from(self, tpl: Template, conn: Conn | None, run_deadline: float = float("inf"),
                   ahead: bool = False) -> None:
        """Ask the template for a child: for `conn`'s run (or, `ahead`, its next run), or (None) a spare."""
        if conn is not None and conn.sock.fileno() not in self.conns:
            return
        try:
            pipes = run_pipes()
        except OSError:
            if conn is not None:
                self._send(conn, {"t": "none_ahead"} if ahead else {"t": "fallback", "reason": "pipe"})
            return
        (res_r, res_w), (out_r, out_w), (err_r, err_w), (req_r, req_w) = pipes
        tmp = ""
        ours = (req_w, res_r, out_r, err_r)
        try:
            tmp = self.tmp.make("run", tpl.memory_limit_mb)
            if self.drop_privileges:  # the run wears its template's identity
                ident = PLUGIN_ID_BASE + tpl.pid
                os.chown(tmp, ident, ident)
            fork: Fork = {"tmp": tmp}
            socket.send_fds(tpl.sock, [json.dumps(fork).encode()], [res_w, out_w, err_w, req_r])
        except OSError:
            for fd in ours:
                os.close(fd)
            if tmp:
                self.tmp.remove(tmp)
            if conn is not None:
                self._send(conn, {"t": "none_ahead"} if ahead else {"t": "fallback", "reason": "template"})
            return
        finally:
            for fd in (res_w, out_w, err_w, req_r):
                os.close(fd)
        req = ForkRequest(conn, ours, tmp, min(time.monotonic() + _FORK_ANSWER_SECONDS, run_deadline), ahead)
        if ahead and conn is not None:
            conn.ahead = req
        tpl.forking.append(req)
        tpl.asked()

    def _on_template(self, tpl: Template, fd: int) -> None:
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
        msg = template_message(data)  # plugin code runs in the template: checked
        if msg is None:
            return
        if msg["t"] == "ready":
            tpl.ready = True
            if msg["origin"] and tpl.signature is None:
                tpl.signature = _signature(msg["origin"])
                tpl.origin = self._origins[tpl.key] = msg["origin"]
            self.backoff.pop(tpl.key, None)
            waiting, tpl.waiting = tpl.waiting, []
            for conn, run_deadline in waiting:
                self._fork_from(tpl, conn, run_deadline)
            self._fork_from(tpl, None)
        elif msg["t"] == "failed":
            tpl.answered = True
            self._back_off(tpl)
            waiting, tpl.waiting = tpl.waiting, []
            for conn, _d in waiting:
                self._send(conn, {"t": "template_failed", "message": msg["message"], "status": 0,
                                  "timed_out": False})
        elif msg["t"] == "threads":
            tpl.answered = True
            self.per_run[tpl.key] = tpl.signature
            waiting, tpl.waiting = tpl.waiting, []
            for conn, _d in waiting:
                self._send(conn, {"t": "fallback", "reason": "threads", "threads": msg["count"]})
        elif msg["t"] == "forked" and tpl.forking:
            req = tpl.forking.pop(0)
            tpl.asked()
            self._ticket_from(tpl, req, msg["pid"])

    def _ticket_from(self, tpl: Template, req: ForkRequest, pid: int) -> None:
        """The template answered `req` (`pid` 0: it could not fork): hand the child to whom it is for, keep it
        as the spare, or kill it; a caller that waits for it is answered either way."""
        conn, ours, tmp = req.to, req.ours, req.tmp
        current = self.templates.get(tpl.key) is tpl
        alive = conn is not None and self.conns.get(conn.sock.fileno()) is conn
        if conn is not None and conn.ahead is req:
            conn.ahead = None
        pidfd = -1
        if pid:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                pid = 0
        if pid and not self._unclaimed_child(pid):  # plugin code may forge the template's word
            os.close(pidfd)
            pid = 0
        if not pid:
            for fd in ours:
                os.close(fd)
            self.tmp.remove(tmp)
            if alive and conn is not None:
                self._send(conn, {"t": "none_ahead"} if req.ahead else {"t": "fallback", "reason": "fork"})
            self._reap_orphans()
            return
        child = Child(pid, pidfd, conn if alive else None, tmp, owner=tpl.pid, key=tpl.key)
        self.children[pid] = child
        self.by_pidfd[pidfd] = child
        self.epoll.register(pidfd, select.EPOLLIN)
        unit = self._contain(child, tpl.memory_limit_mb * 1024 * 1024)  # set ahead: the caller need not
        if conn is None and current and not tpl.spares:
            child.ticket_fds = ours
            tpl.spares.append(child)
            return
        try:
            if alive and conn is not None and req.ahead and not current:
                self._send(conn, {"t": "none_ahead"})  # its template was retired meanwhile: maybe for a change
                self._kill(pid)
            elif alive and conn is not None:
                conn.children.add(pid)
                conn.key = tpl.key
                if req.ahead:
                    conn.ahead, conn.ahead_at = child, time.monotonic()
                    self._send(conn, {"t": "ticket", "pid": pid, "template": True, "unit": unit,
                                      "ahead": tpl.ahead()}, [*ours, pidfd])
                else:
                    self._send(conn, {"t": "ticket", "pid": pid, "template": True, "unit": unit}, [*ours, pidfd])
            else:
                self._kill(pid)
        finally:
            for fd in ours:
                os.close(fd)
        if self.reap_due:
            self._reap_orphans()

    def _template_exited(self, tpl: Template) -> None:
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

    def _back_off(self, tpl: Template) -> None:
        """No new template for this key for 1 s, doubling per failure up to a minute."""
        _until, failures, _sig = self.backoff.get(tpl.key, (0.0, 0, None))
        self.backoff[tpl.key] = (time.monotonic() + min(_MAX_BACKOFF_SECONDS, 2.0 ** failures), failures + 1,
                                 tpl.signature)

    def _drop_template(self, tpl: Template, wait: bool = False, hung: bool = False) -> None:
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

    def _forget_template(self, tpl: Template, reaped: bool, hung: bool = False) -> None:
        forking, tpl.forking = tpl.forking, []
        for req in forking:  # fork requests it will never answer
            conn = req.to
            if hung and not req.ahead and conn is not None and self.conns.get(conn.sock.fileno()) is conn:
                for fd in req.ours:
                    os.close(fd)
                self.tmp.remove(req.tmp)
                self._send(conn, {"t": "template_failed", "hung": True, "message": None, "status": 0,
                                  "timed_out": False, "waited": _FORK_ANSWER_SECONDS})
            else:
                self._ticket_from(tpl, req, 0)  # a ticket ahead's caller is answered `NoneAhead`
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
        self.tmp.remove(tpl.tmp)
        if not reaped:
            self.orphans.add(tpl.pid)  # killed: reaped with the other orphans
        if tpl.unit is not None:
            tpl.unit.kill([])
            self._dispose(tpl.unit)

    def _stats(self) -> Stats:
        resident = 0
        for tpl in self.templates.values():
            try:
                with open(f"/proc/{tpl.pid}/statm", "rb") as f:
                    resident += int(f.read().split()[1]) * PAGE
            except (OSError, IndexError, ValueError):
                pass
        return {"t": "stats", "alive": len(self.templates), "builds": self.builds, "evictions": self.evictions,
                "resident_bytes": resident}
