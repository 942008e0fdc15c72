"""Idle connections against the real service: they cannot keep a request out, and a worker holding
its bound of connections closes the longest-idle ones to make room.

One worker bounded to a few connections (`--worker-connections`) with a long keep-alive deadline,
so that a connection the server closes can only have been closed to make room.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LiveServer, make_live_server, poll

pytestmark = pytest.mark.integration

BOUND = 20


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = make_live_server(Path(tmp_path_factory.mktemp("idle")), workers="1")
    server.env["GUNICORN_CMD_ARGS"] = f"--worker-connections {BOUND} --keep-alive 600"
    server.start()
    yield server
    server.stop()


def _open(port: int, n: int, first: bytes) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        if first:
            s.sendall(first)
        socks.append(s)
    return socks


def _closed_by_server(socks: list[socket.socket]) -> int:
    readable, _, _ = select.select(socks, [], [], 0)
    closed = 0
    for s in readable:
        try:
            closed += s.recv(1, socket.MSG_PEEK) == b""
        except ConnectionError:
            closed += 1
    return closed


def test_connections_that_send_nothing_cannot_keep_a_request_out(bounded: LiveServer) -> None:
    silent = _open(bounded.port, 3 * BOUND, b"")
    try:
        for _ in range(5):
            assert bounded.request("GET", "/healthz", timeout=30)[0] == 200
        assert bounded.request("GET", "/metrics", timeout=30)[0] == 200
    finally:
        for s in silent:
            s.close()


def test_a_worker_at_its_bound_closes_the_longest_idle_connections(bounded: LiveServer) -> None:
    begun = _open(bounded.port, 3 * BOUND, b"GET /healthz HTTP/1.1\r\n")  # a request never finished
    try:
        poll("the worker to close the idle connections over its bound",
             lambda: ((n := _closed_by_server(begun)) >= 2 * BOUND, n))
        assert _closed_by_server(begun[:BOUND]) == BOUND  # the oldest went first
        for _ in range(5):
            assert bounded.request("GET", "/healthz", timeout=30)[0] == 200
    finally:
        for s in begun:
            s.close()
