"""The launcher's callers (`sidecar.sandbox.connections`): a peer that does not read never blocks the loop."""

from __future__ import annotations

import socket
from typing import Any

from sidecar.sandbox.connections import Conn
from sidecar.sandbox.launcher import Launcher


def test_a_caller_that_does_not_read_never_blocks_the_launcher_and_is_dropped(
        wired: tuple[Launcher, Conn, socket.socket]) -> None:
    launcher, conn, mine = wired
    theirs = conn.sock
    big: Any = {"t": "stats", "pad": "x" * 60_000}  # a message far larger than any of the protocol
    # More than the socket takes, less than the launcher's buffer: queued at once, nothing blocks.
    assert all(launcher._send(conn, big) for _ in range(8))
    assert conn.out, "nothing was left queued: the socket took it all"
    while theirs.fileno() in launcher.conns and len(conn.out) < 100:
        launcher._send(conn, big)
    assert conn not in launcher.conns.values(), "a peer that does not read was never dropped"
    mine.settimeout(5)
    while mine.recv(1 << 20):  # what it had sent, then the end
        pass
