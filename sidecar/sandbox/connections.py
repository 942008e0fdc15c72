"""The launcher's callers: one connection per calling thread, and sends that never block the loop.

What a caller does not read waits in a bounded buffer (`SEND_BUFFER_BYTES`); a caller past it, or gone, is
dropped, and its tickets and runs, which have nobody to report to any more, are killed.
"""

from __future__ import annotations

import json
import os
import select
import socket
from typing import TYPE_CHECKING

from ..defaults import DEFAULT_MEMORY_LIMIT_MB
from ..framing import FrameReader, encode
from .protocol import LauncherMessage
from .reaper import Reaper

if TYPE_CHECKING:
    from .template_pool import ForkRequest
    from .tickets import Child

__all__ = ["SEND_BUFFER_BYTES", "Conn", "Connections"]


class Conn:
    """A caller's connection: its socket, what it sent not yet framed, its children, what it has not read."""

    __slots__ = ("sock", "reader", "children", "out", "queued", "memory_limit_mb", "second", "key", "ahead",
                 "ahead_at")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = FrameReader(limit=1 << 20)
        self.children: set[int] = set()
        #: what the caller has not read yet: (bytes, fds to pass with their first byte; ours, closed once sent)
        self.out: list[tuple[bytes, list[int]]] = []
        self.queued = 0
        #: its last run's limit: the first size of its next spare's directory (resized when that run starts)
        self.memory_limit_mb = DEFAULT_MEMORY_LIMIT_MB
        #: whether it keeps a second ticket (from its first run on a ticket: runs forked from templates use none)
        self.second = False
        #: the template its last template child came from: a `Start` that asks ahead asks for its next
        self.key = ""
        #: its ticket ahead (see `protocol`): the child handed to it, or the fork request still in flight
        self.ahead: Child | ForkRequest | None = None
        #: when that child was handed to it (CLOCK_MONOTONIC)
        self.ahead_at = 0.0


#: Bytes a caller may leave unread before the launcher drops it: a peer that does not read never blocks
#: the loop that guards every run.
SEND_BUFFER_BYTES = 1 << 20


class Connections(Reaper):
    """Sending to callers (never blocking), and dropping the ones that went or stopped reading."""

    def _send(self, conn: Conn, msg: LauncherMessage, fds: list[int] | None = None) -> bool:
        """Queue a message (and fds) for the caller and send what its socket takes now; never blocks. A
        caller that leaves more than `SEND_BUFFER_BYTES` unread is dropped (its runs are killed)."""
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

    def _flush(self, conn: Conn) -> bool:
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
        if conn.queued > SEND_BUFFER_BYTES:
            self._drop_conn(conn)
            return False
        if not conn.out:
            self.epoll.modify(conn.sock.fileno(), select.EPOLLIN)
        return True

    def _drop_conn(self, conn: Conn) -> None:
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
