"""A calling thread's channel: its connection to the launcher, the tickets it holds, the messages it sends.

The launcher hands each connection a ticket, two once it ran on one (see `protocol`); the channel queues
them as they come, with their fds, and turns a launcher that does not answer, exits or garbles a message
into `LauncherLost`.
"""

from __future__ import annotations

import json
import os
import socket
from collections import deque

from ..defaults import LAUNCHER_ANSWER_SECONDS
from ..framing import FrameError, FrameReader, send_frame
from .launcher_process import LauncherLost, LauncherProcess
from .protocol import CallerMessage, End, Exit, LauncherMessage, Start, Stats, UnitWire, Want
from .run_request import RunRequest

__all__ = ["Channel"]


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

    def close(self) -> None:
        for tickets in (self.tickets, self.template_tickets):
            for _pid, fds in tickets:
                for fd in fds:
                    os.close(fd)
            tickets.clear()
        while self.fds:
            os.close(self.fds.popleft())
        self.sock.close()

    def _receive(self, timeout: float) -> LauncherMessage:
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
        if msg["t"] == "ticket":  # its five fds (`TICKET_FDS`) arrived with (or before) its bytes, in order
            queue = self.template_tickets if msg.get("template") else self.tickets
            queue.append((int(msg["pid"]), [self.fds.popleft() for _ in range(5)]))
            unit = msg["unit"]
            if unit:
                self.units[int(msg["pid"])] = unit
        return msg

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
        try:
            send_frame(self.sock, json.dumps(start).encode())
        except OSError as exc:
            raise LauncherLost(f"launcher connection failed: {exc}") from None
