"""A calling thread's channel: its connection to the launcher, the tickets it holds, the messages it sends.

The launcher hands each connection a ticket, two once it ran on one (see `protocol`); the channel queues
them as they come, with their fds, and turns a launcher that does not answer, exits or garbles a message
into `LauncherLost`.

A channel whose runs come from a plugin's template asks, as each such run starts, for a *ticket ahead*: the
template's next child, handed over before the next run asks (see `protocol`). It holds at most one. Its next
run of the same template uses it after two checks that cost microseconds and no message: the child is alive
(its pidfd) and the plugin's file is the one the template imported (a stat); else the run gives it up and
asks (`Want`), and so runs new code after an edit. It asks ahead unless its last templated run was of another
template, or not yet `AHEAD_AFTER` runs in a row, so that a channel running plugins in turn does not fork
children it then gives up.
"""

from __future__ import annotations

import json
import os
import select
import socket
from collections import deque

from ..defaults import LAUNCHER_ANSWER_SECONDS
from ..framing import FrameError, FrameReader, send_frame
from .launcher_process import LauncherLost, LauncherProcess
from .protocol import Ahead, CallerMessage, End, Exit, LauncherMessage, Start, Stats, UnitWire, Want
from .run_request import RunRequest

__all__ = ["AHEAD_AFTER", "Channel", "HeldTicket"]

#: A channel asks for a ticket ahead from this run of one template in a row on: a ticket ahead the next run does
#: not use is a fork and a kill wasted, so a channel whose runs alternate between plugins (a scheduler's, a
#: client probing several targets in turn) asks for none. Measured with `benchmarks.probe_bench`, whose rounds
#: run `echo` twice in a row between other plugins: asking from the second run in a row cost every run there
#: 0.6-1.1 ms (a fork and a kill per round on two cores).
AHEAD_AFTER = 3


class HeldTicket:
    """A ticket ahead the channel holds: its child, the caller's ends of its pipes, and what it is for."""

    __slots__ = ("pid", "fds", "key", "origin", "signature")

    def __init__(self, pid: int, fds: list[int], ahead: Ahead) -> None:
        self.pid = pid
        self.fds = fds
        self.key = ahead["key"]
        self.origin = ahead["origin"]
        self.signature = tuple(ahead["signature"]) if ahead["signature"] is not None else None

    def fresh(self) -> bool:
        """The plugin's file is still the one its template imported (unknown: it is, as for the launcher)."""
        if self.origin is None or self.signature is None:
            return True
        try:
            st = os.stat(self.origin)
        except OSError:
            return False
        return (st.st_ino, st.st_size, st.st_mtime_ns) == self.signature

    def alive(self) -> bool:
        poller = select.poll()
        poller.register(self.fds[4], select.POLLIN)  # the pidfd: readable once the child exited
        return not poller.poll(0)


class Channel:
    """One calling thread's connection to the launcher: the messages it sends and the tickets."""

    def __init__(self, sock: socket.socket, launcher: LauncherProcess) -> None:
        self.sock = sock
        self.launcher = launcher
        self.reader = FrameReader(limit=1 << 20)
        self.messages: deque[LauncherMessage] = deque()
        self.fds: deque[int] = deque()
        self.tickets: deque[tuple[int, list[int]]] = deque()
        #: tickets forked from a plugin's template: each answers this channel's one `want`
        self.template_tickets: deque[tuple[int, list[int]]] = deque()
        #: pid -> its unit's memory cgroup, where the caller sets the run's limit before the request
        self.units: dict[int, UnitWire] = {}
        #: the ticket ahead it holds
        self.held: HeldTicket | None = None
        #: the template the ticket ahead it holds or asked for is of (None: none, or given up)
        self.ahead_key: str | None = None
        #: answers the launcher still owes to `Start`s that asked for a ticket ahead
        self.ahead_owed = 0
        #: the template its last templated run came from, and how many runs in a row came from it: it asks
        #: ahead only from the `AHEAD_AFTER`th run of one template in a row
        self.last_key: str | None = None
        self.streak = 0
        #: the run whose `Start` asks for a ticket ahead, and of which template
        self._ask_ahead: tuple[int, str] | None = None

    def close(self) -> None:
        self.give_up_ahead()
        for tickets in (self.tickets, self.template_tickets):
            for _pid, fds in tickets:
                for fd in fds:
                    os.close(fd)
            tickets.clear()
        while self.fds:
            os.close(self.fds.popleft())
        self.sock.close()

    def _read(self) -> bool:
        """Read what the launcher sent (False: nothing there, on a socket that does not block) and take in
        each message."""
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, 1 << 16, 16)
        except BlockingIOError:
            return False
        except TimeoutError:
            raise LauncherLost("the launcher did not answer") from None
        except OSError as exc:
            raise LauncherLost(f"launcher connection failed: {exc}") from None
        if not data and not fds:
            raise LauncherLost("the launcher exited")
        self.fds.extend(fds)
        self.reader.feed(data)
        try:
            frames = self.reader.frames()
            for frame in frames:
                self._take(json.loads(frame))
        except (FrameError, ValueError) as exc:
            raise LauncherLost(f"garbled launcher message: {exc}") from None
        return True

    def _take(self, msg: LauncherMessage) -> None:
        """A message, in the order sent: a ticket takes its fds now (they came with or before its bytes)."""
        if msg["t"] == "ticket":
            pid = int(msg["pid"])
            fds = [self.fds.popleft() for _ in range(5)]  # `TICKET_FDS`
            ahead = msg.get("ahead")
            if ahead is not None:
                self.ahead_owed = max(0, self.ahead_owed - 1)
                if self.held is not None or ahead["key"] != self.ahead_key:
                    for fd in fds:  # given up meanwhile: the launcher killed it when it saw our `Want`
                        os.close(fd)
                    return
                self.held = HeldTicket(pid, fds, ahead)
            else:
                (self.template_tickets if msg.get("template") else self.tickets).append((pid, fds))
            if msg["unit"]:
                self.units[pid] = msg["unit"]
            if ahead is not None:
                return
        elif msg["t"] == "none_ahead":
            self.ahead_owed = max(0, self.ahead_owed - 1)
            if self.held is None:
                self.ahead_key = None
            return
        elif msg["t"] == "exit" and self.held is not None and msg["pid"] == self.held.pid:
            self.give_up_ahead()  # it died before its run
            return
        self.messages.append(msg)

    def _receive(self, timeout: float) -> LauncherMessage:
        while not self.messages:
            self.sock.settimeout(timeout)
            self._read()
        return self.messages.popleft()

    def take_ahead(self, key: str, timeout: float) -> tuple[int, list[int]] | None:
        """The ticket ahead for a run of template `key`, when it holds a live one whose plugin's file is
        unchanged (one owed for `key` is waited for: it is forked already); else None, and what it held is
        given up (the `Want` that follows tells the launcher)."""
        self.sock.setblocking(False)
        while self._read():
            pass
        # Nobody waits for these any more: the channel's runs are over (they would pile up, runs that hold
        # tickets ahead send no `Want` that reads past them).
        if self.messages:
            self.messages = deque(m for m in self.messages if m["t"] != "exit")
        while self.held is None and self.ahead_owed and self.ahead_key == key:
            self.sock.settimeout(timeout)
            self._read()
        held = self.held
        if held is None:
            return None
        if held.key != key or not held.alive() or not held.fresh():
            self.give_up_ahead()
            return None
        self.held = None
        return held.pid, held.fds

    def give_up_ahead(self) -> None:
        """Close the ticket ahead it holds (the launcher kills it at our next `Want`, or with the connection)."""
        held, self.held = self.held, None
        self.ahead_key = None
        if held is not None:
            self.units.pop(held.pid, None)
            for fd in held.fds:
                os.close(fd)

    def ask_ahead(self, pid: int, key: str) -> None:
        """Let the `Start` of run `pid`, of template `key`, ask for the next child of that template."""
        if self.held is None and not self.ahead_owed:
            self._ask_ahead = (pid, key)

    def ask(self, msg: CallerMessage) -> None:
        self.sock.settimeout(LAUNCHER_ANSWER_SECONDS)
        try:
            send_frame(self.sock, json.dumps(msg).encode())
        except OSError as exc:
            raise LauncherLost(f"launcher connection failed: {exc}") from None

    def template_ticket(self, request: RunRequest, t0: float, timeout: float) -> LauncherMessage:
        """Ask for a child forked from the plugin's template: a ticket, a fallback, or the import's failure."""
        want: Want = {"t": "want", "plugin": request.plugin.to_dict(), "sys_path": request.wire_sys_path(),
                      "memory_limit_mb": request.memory_limit_mb, "max_processes": request.max_processes,
                      "timeout_seconds": request.timeout_seconds, "t0": t0}
        self.give_up_ahead()  # the launcher gives it up at this `Want` too
        self.ask(want)
        while True:
            msg = self._receive(timeout)
            if msg["t"] == "ticket" and msg.get("template"):
                return msg
            if msg["t"] in ("fallback", "template_failed", "error"):
                return msg

    def stats(self, timeout: float = LAUNCHER_ANSWER_SECONDS) -> Stats:
        self.ask({"t": "stats"})
        while True:
            msg = self._receive(timeout)
            if msg["t"] == "stats":
                return msg

    def ticket(self, timeout: float = LAUNCHER_ANSWER_SECONDS) -> tuple[int, list[int]]:
        while not self.tickets:
            msg = self._receive(timeout)
            if msg["t"] == "error":
                raise LauncherLost(f"the launcher could not start a child: {msg.get('message')}")
        return self.tickets.popleft()

    def exit_of(self, pid: int, timeout: float) -> Exit:
        while True:
            msg = self._receive(timeout)
            if msg["t"] == "exit" and msg.get("pid") == pid:
                return msg

    def end(self, pid: int) -> None:
        """The result is in: the launcher ends the run's unit and reports its exit."""
        self.sock.settimeout(LAUNCHER_ANSWER_SECONDS)
        end: End = {"t": "end", "pid": pid}
        try:
            send_frame(self.sock, json.dumps(end).encode())
        except OSError as exc:
            raise LauncherLost(f"launcher connection failed: {exc}") from None

    def start(self, pid: int, request: RunRequest, t0: float) -> None:
        self.sock.settimeout(LAUNCHER_ANSWER_SECONDS)
        start: Start = {"t": "start", "pid": pid, "t0": t0, "timeout_seconds": request.timeout_seconds,
                        "memory_limit_mb": request.memory_limit_mb}
        asked = self._ask_ahead
        if asked is not None and asked[0] == pid:
            start["ahead"] = True
        self._ask_ahead = None
        try:
            send_frame(self.sock, json.dumps(start).encode())
        except OSError as exc:
            raise LauncherLost(f"launcher connection failed: {exc}") from None
        if asked is not None and asked[0] == pid:
            self.ahead_key, self.ahead_owed = asked[1], self.ahead_owed + 1
