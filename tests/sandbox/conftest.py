from __future__ import annotations

import os
import select
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.sandbox.client import PluginRef, RunRequest, Sandbox
from sidecar.sandbox.connections import Conn
from sidecar.sandbox.launcher import Launcher
from sidecar.sandbox.result import PluginSandboxResult

HOSTILE = Path(__file__).parent / "hostile"


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def run_named(sb: Sandbox, name: str, timeout: float = 10.0, **params: Any) -> PluginSandboxResult:
    """Run the hostile plugin `name` (tests/sandbox/hostile/`name`.py)."""
    return sb.run(RunRequest(PluginRef(name, path=str(HOSTILE / f"{name}.py")), params, timeout_seconds=timeout))


@pytest.fixture(scope="module", params=[True, False], ids=["templates", "per-run-import"])
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """Every sandbox test runs with runs forked from per-plugin templates and with a fresh import per run."""
    environ = dict(os.environ, SIDECAR_API_TOKEN="s3cret-token", SIDECAR_OTHER="x", OPERATOR_EXTRA="passed")
    with Sandbox(environ=environ, extra_env=["OPERATOR_EXTRA"], templates=request.param) as sb:
        yield sb


@pytest.fixture
def run_hostile(sandbox: Sandbox):
    def run(plugin: str, /, timeout: float = 5.0, memory_mb: int = 1024, **params: object) -> PluginSandboxResult:
        ref = PluginRef(plugin, path=str(HOSTILE / f"{plugin}.py"))
        return sandbox.run(RunRequest(ref, params, timeout_seconds=timeout, memory_limit_mb=memory_mb))

    return run


@pytest.fixture
def wired() -> Iterator[tuple[Launcher, Conn, socket.socket]]:
    """A launcher (its loop not running) with one caller connection, and the caller's end of it."""
    ctrl, peer = socket.socketpair()
    launcher = Launcher(ctrl)
    mine, theirs = socket.socketpair()
    theirs.setblocking(False)
    conn = Conn(theirs)
    launcher.conns[theirs.fileno()] = conn
    launcher.epoll.register(theirs.fileno(), select.EPOLLIN)
    try:
        yield launcher, conn, mine
    finally:
        mine.close()
        theirs.close()
        launcher.epoll.close()
        ctrl.close()
        peer.close()


@pytest.fixture
def templated() -> Iterator[Sandbox]:
    """A sandbox of its own whose runs are forked from per-plugin templates."""
    with Sandbox(templates=True) as sb:
        yield sb


def plugin_file(tmp_path: Path, name: str, source: str) -> PluginRef:
    """A plugin written to `tmp_path` from its source."""
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    return PluginRef(name, path=str(path))
