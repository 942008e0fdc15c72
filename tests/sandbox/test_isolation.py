"""A hostile plugin against real sidecars, as root, in the default and the strict mode (issue 9).

Two sidecars run side by side (A and B). The `reach_in` plugin, run on A, tries every reach-in on
A and on B: read the token, call the runner's socket, open or forge the history, signal the
runner, the workers and the launcher, and leave a daemon behind. Each attempt must fail, and both
sidecars must be unaffected afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from ..conftest import LiveServer, make_live_server

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the uid-per-run layer is tested as root"),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap (Debian package `bubblewrap`)"),
]

TOKEN = "isolation-test-token-3f9c1e"
CONFIG = """
[checks.reach_in_strict]
plugin = "reach_in"
isolation = "strict"

[checks.probe_strict]
plugin = "tcp_probe"
isolation = "strict"
"""
CHECKS = ("reach_in_strict", "probe_strict")


class Sidecar:
    def __init__(self, server: LiveServer) -> None:
        self.server = server
        assert server.proc is not None
        self.runner = psutil.Process(server.proc.pid)

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        return self.server.json("POST", path, body, headers={"Authorization": f"Bearer {TOKEN}"})

    def run(self, plugin: str, **params: Any) -> dict[str, Any]:
        status, doc = self.post(f"/plugins/{plugin}/run", {"params": params})
        assert status == 200, doc
        return dict(doc)

    def run_check(self, check: str, **params: Any) -> dict[str, Any]:
        """Run a check of CONFIG with `params`: a check takes no params from a caller, so they go into its table
        in the config file, which is reloaded first."""
        table = "".join(f"{key} = {json.dumps(value)}\n" for key, value in params.items())
        (self.server.data_dir / "sidecar.toml").write_text(f"{CONFIG}\n[checks.{check}.params]\n{table}")
        status, doc = self.post("/-/reload", None)
        assert status == 200, doc
        return self.run(check)

    def socket_paths(self) -> list[str]:
        return [str(c.laddr) for c in self.runner.net_connections(kind="unix") if c.laddr]

    def launchers(self) -> list[int]:
        return [p.pid for p in self.runner.children() if "gunicorn" not in " ".join(p.cmdline())]

    def family(self) -> list[psutil.Process]:
        """The runner, gunicorn and its workers, bubblewrap and the launcher: not the runs (depth > 3)."""
        out, level = [self.runner], [self.runner]
        for _ in range(3):
            level = [kid for p in level for kid in p.children()]
            out += level
        return out

    def health(self, plugin: str) -> dict[str, Any]:
        status, doc = self.server.json("GET", f"/plugins/{plugin}/health")
        assert status == 200, doc
        return dict(doc)


@pytest.fixture(scope="module", params=["default", "strict"])
def sidecars(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sidecar, Sidecar]]:
    started: list[LiveServer] = []
    try:
        for name in "ab":
            tmp = tmp_path_factory.mktemp(f"{request.param}-{name}")
            token = tmp / "token"
            token.write_text(TOKEN + "\n")
            token.chmod(0o600)
            config = tmp / "sidecar.toml"
            config.write_text(CONFIG)
            server = make_live_server(tmp, isolation=request.param, api_token_file=str(token), config=str(config))
            server.start()
            started.append(server)
        a, b = (Sidecar(s) for s in started)
        for car in (a, b):
            assert car.run("hello")["outcome"] == "success"  # the launchers are up
        yield a, b
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="module")
def listener() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield int(s.getsockname()[1])


def _survivors(nonce: str, within: float = 5.0) -> list[int]:
    """Processes anywhere on the host named `nonce`, polled until none is left or `within` passes."""
    deadline = time.monotonic() + within
    while True:
        found = [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == nonce[:15]]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _attack(a: Sidecar, target: Sidecar, port: int, plugin: str = "reach_in") -> tuple[dict[str, Any], str]:
    nonce = f"sc{os.urandom(6).hex()}"
    assert target.server.worker_pids() and target.launchers() and target.socket_paths()  # real targets
    call = a.run_check if plugin in CHECKS else a.run
    doc = call(plugin, runner_pid=target.runner.pid, worker_pids=target.server.worker_pids(),
               launcher_pids=target.launchers(), socket_paths=target.socket_paths(),
               data_dir=str(target.server.data_dir / "data"), token_file=str(target.server.data_dir / "token"),
               nonce=nonce, tcp_port=port)
    assert doc["outcome"] == "success", doc
    assert "refused" not in doc["result"], doc["result"]
    if os.environ.get("SIDECAR_SHOW_ATTACK"):
        print(json.dumps(doc["result"], indent=1)[:6000])
    return doc["result"], nonce


@dataclass
class Attack:
    """One reach_in run from sidecar A against `target` (A itself, or B), with the target's state before."""

    target: Sidecar
    result: dict[str, Any]
    nonce: str
    family: list[psutil.Process]
    hello_before: dict[str, Any]


@pytest.fixture(scope="module", params=[("own sidecar", "reach_in"), ("other sidecar", "reach_in"),
                                        ("own sidecar", "reach_in_host")], ids=lambda p: f"{p[0]}, {p[1]}")
def attack(request: pytest.FixtureRequest, sidecars: tuple[Sidecar, Sidecar], listener: int) -> Attack:
    """reach_in_host sees the host's /proc (as process_check does): it must fail all the same."""
    a, b = sidecars
    where, plugin = request.param
    target = a if where == "own sidecar" else b
    family, hello = target.family(), target.health("hello")
    result, nonce = _attack(a, target, listener, plugin)
    return Attack(target, result, nonce, family, hello)


def test_the_plugin_runs_as_an_identity_of_its_own(attack: Attack) -> None:
    assert attack.result["uid"] >= 2_000_000_000


def test_1_the_token_is_not_read(attack: Attack) -> None:
    """Not from any command line or environment it can see, nor from the token file."""
    assert TOKEN not in json.dumps(attack.result)
    assert attack.result["secrets"][str(attack.target.server.data_dir / "token")].startswith("!")


def test_2_the_runner_socket_refuses_the_plugin(attack: Attack) -> None:
    attempts = attack.result["socket"]
    assert set(attack.target.socket_paths()) <= set(attempts)
    assert {p: got for p, got in attempts.items() if not got.startswith("!") and got != "closed"} == {}


def test_3_the_history_is_neither_readable_nor_forged(attack: Attack) -> None:
    history = attack.result["history"]
    assert str(history["listdir"]).startswith("!") and history["read"].startswith("!")
    assert history["write"].startswith("!") and history["forged"].startswith("!") and history["fd_links"] == []
    after = attack.target.health("hello")
    assert (after["success_count"], after["error_count"]) == (attack.hello_before["success_count"],
                                                              attack.hello_before["error_count"])
    status, doc = attack.target.server.json("GET", "/plugins/echo/runs")
    assert status == 200 and doc["runs"] == []  # no run of echo was started through the socket


def test_4_nothing_is_signalled_and_nothing_survives_the_run(attack: Attack) -> None:
    signals = attack.result["signals"]
    assert {pid for pid in map(str, [attack.target.runner.pid, *attack.target.launchers()])} <= set(signals)
    assert [pid for pid, got in signals.items() if got == "killed"] == []
    assert attack.result["daemon"] == "up"
    assert _survivors(attack.nonce) == []


def test_6_what_plugins_need_still_works(attack: Attack) -> None:
    assert attack.result["tmp"] == "mine" and attack.result["import"] == {"ok": 1}


def test_the_sidecar_is_unaffected(attack: Attack) -> None:
    assert all(p.is_running() for p in attack.family)
    assert attack.target.run("hello", name="after")["result"] == {"greeting": "hello after"}


def test_process_check_still_sees_the_hosts_processes(sidecars: tuple[Sidecar, Sidecar]) -> None:
    a, b = sidecars
    doc = a.run("process_check", name="sidecar", min_count=2)
    assert doc["outcome"] == "success", doc
    assert {a.runner.pid, b.runner.pid} <= set(doc["result"]["pids"])


def test_strict_mode_sees_a_read_only_system_without_network(sidecars: tuple[Sidecar, Sidecar],
                                                             listener: int) -> None:
    a, _b = sidecars
    strict, _ = _attack(a, a, listener, plugin="reach_in_strict")
    assert strict["readonly_root"] is True
    assert strict["network"].startswith("!")
    # a plugin whose metadata says network = true keeps it, in strict mode too
    probe = a.run_check("probe_strict", host="127.0.0.1", port=listener)
    assert probe["outcome"] == "success" and probe["result"]["up"] == 1, probe  # connected, not just ran


def test_default_mode_keeps_the_network_for_plugins(sidecars: tuple[Sidecar, Sidecar], listener: int) -> None:
    a, _b = sidecars
    result, _ = _attack(a, a, listener)
    is_strict = a.server.env["SIDECAR_ISOLATION"] == "strict"
    assert result["network"] == ("!ConnectionRefusedError" if is_strict else "connected")
    assert result["readonly_root"] is is_strict


def test_the_token_is_on_no_command_line_and_in_no_worker_environment(sidecars: tuple[Sidecar, Sidecar]) -> None:
    for car in sidecars:
        for proc in car.family():
            assert TOKEN not in " ".join(proc.cmdline()), proc
            if proc.pid != car.runner.pid:
                assert TOKEN not in json.dumps(proc.environ()), proc


def test_the_history_is_private_to_the_sidecar(sidecars: tuple[Sidecar, Sidecar]) -> None:
    data = sidecars[0].server.data_dir / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    files = list(data.iterdir())
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files), files


def test_serve_refuses_strict_mode_without_bubblewrap(tmp_path: Path) -> None:
    import subprocess
    import sys

    server = make_live_server(tmp_path, isolation="strict")
    env = dict(server.env, PATH=str(tmp_path))  # no bwrap on this PATH
    done = subprocess.run([str(Path(sys.executable).with_name("sidecar")), "serve"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "bubblewrap" in done.stderr


def test_under_isolation_one_runs_end_does_not_kill_another_runs_daemon() -> None:
    """The launcher tells whose an escaped descendant is by its uid (the run's own identity)."""
    import threading

    from sidecar.sandbox.client import PluginRef, RunRequest, Sandbox
    from sidecar.sandbox.isolation import Isolation
    from sidecar.sandbox.result import Outcome

    from .conftest import HOSTILE

    def request(name: str, **params: Any) -> RunRequest:
        return RunRequest(PluginRef(name, path=str(HOSTILE / f"{name}.py")), params, timeout_seconds=30.0)

    with Sandbox(isolation=Isolation()) as sb:
        done: dict[str, Any] = {}
        slow = threading.Thread(target=lambda: done.update(r=sb.run(request("daemon_checked", wait=1.0))))
        slow.start()
        ends = 0
        while slow.is_alive():
            assert sb.run(request("hello")).outcome is Outcome.SUCCESS
            ends += 1
        slow.join()
        assert done["r"].outcome is Outcome.SUCCESS, done["r"].error
        assert ends > 1 and done["r"].result["alive"] is True
