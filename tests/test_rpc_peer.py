"""The runner's socket answers the sidecar's own processes only (SO_PEERCRED)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.config import Settings
from sidecar.framing import recv_frame, send_frame
from sidecar.rpc import RunnerServer
from sidecar.runner import Runner

_PING = """
import json, socket, struct, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
body = json.dumps({"op": "ping", "args": {}}).encode()
try:
    s.sendall(struct.pack(">Q", len(body)) + body)
    print("answered" if s.recv(64) else "closed")
except OSError:
    print("closed")
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunnerServer]:
    runner = Runner(Settings(data_dir=str(tmp_path / "data"), entry_points=False), start_scheduler=False)
    srv = RunnerServer(str(tmp_path / "runner.sock"), runner)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()
    runner.close()


def _ping_from_a_child(path: str) -> str:
    return subprocess.run([sys.executable, "-c", _PING, path], capture_output=True, text=True,
                          timeout=30).stdout.strip()


def test_same_uid_peers_are_answered_until_a_trusted_parent_is_named(server: RunnerServer) -> None:
    path = str(server.server_address)
    assert _ping_from_a_child(path) == "answered"
    server.trusted_parent = os.getppid()  # not the child's parent: it is refused
    assert _ping_from_a_child(path) == "closed"
    server.trusted_parent = os.getpid()  # the child's parent: answered again
    assert _ping_from_a_child(path) == "answered"
    with socket.socket(socket.AF_UNIX) as own:  # the runner's own process always is
        own.connect(path)
        send_frame(own, json.dumps({"op": "ping", "args": {}}).encode())
        assert recv_frame(own) == b'{"ok": true}'


def test_the_socket_is_owner_only(server: RunnerServer) -> None:
    assert os.stat(str(server.server_address)).st_mode & 0o777 == 0o600
    assert json.dumps(server.trusted_parent) == "null"
