"""The template pool's tickets ahead (`sidecar.sandbox.template_pool`), on a launcher that runs no loop: every
`Start` that asks ahead is answered exactly once, and a ticket ahead given up while being forked is not lost."""

from __future__ import annotations

import json
import socket

from sidecar.framing import FrameReader
from sidecar.sandbox.connections import Conn
from sidecar.sandbox.launcher import Launcher
from sidecar.sandbox.template_pool import ForkRequest


def _received(sock: socket.socket) -> list[dict[str, object]]:
    sock.setblocking(False)
    reader = FrameReader()
    try:
        while data := sock.recv(1 << 16):
            reader.feed(data)
    except BlockingIOError:
        pass
    return [json.loads(frame) for frame in reader.frames()]


def test_asking_ahead_for_a_template_that_is_gone_is_answered_none_ahead(wired: tuple[Launcher, Conn, socket.socket]):
    launcher, conn, mine = wired
    conn.key = "a template evicted meanwhile"
    launcher._hand_ahead(conn, None)
    assert _received(mine) == [{"t": "none_ahead"}]
    assert conn.ahead is None


def test_a_ticket_ahead_given_up_while_forked_is_answered_and_becomes_the_spare(
        wired: tuple[Launcher, Conn, socket.socket]):
    launcher, conn, mine = wired
    req = ForkRequest(conn, (), "", float("inf"), ahead=True)
    conn.ahead = req
    launcher._give_up_ahead(conn)  # what a `Want` does first
    assert _received(mine) == [{"t": "none_ahead"}]
    assert conn.ahead is None
    assert req.to is None and not req.ahead  # forked, it is kept as its template's spare (or claimed by the want)
