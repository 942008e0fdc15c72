"""Shared fixtures: `live_server` starts the real thing — `sidecar serve` with gunicorn workers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

HOSTILE = Path(__file__).parent / "sandbox" / "hostile"


T = TypeVar("T")


def ci() -> bool:
    """True under CI (env CI set): tests that skip for a missing tool fail there instead."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def poll(what: str, attempt: Callable[[], tuple[bool, T]], timeout: float = 45.0, every: float = 0.25) -> T:
    """Call `attempt` until it reports done; fail with its last answer after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        done, answer = attempt()
        if done:
            return answer
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}; last seen:\n{answer}")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    port: int
    data_dir: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=lambda: Path("/dev/null"))
    #: What to start (default: this venv's `sidecar serve`) and where (default: this process's cwd).
    command: list[str] | None = None
    cwd: Path | None = None
    #: The API token, sent as a bearer token with every request that brings no Authorization of its own.
    token: str | None = None

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                raw: bytes | None = None, timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = dict(headers or {})
        if self.token is not None and not any(k.lower() == "authorization" for k in headers):
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, dict(err.headers), err.read()

    def json(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        status, _, data = self.request(method, path, body, **kw)
        return status, json.loads(data)

    def run(self, plugin: str, timeout_seconds: float | None = None, **params: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"params": params}
        if timeout_seconds is not None:
            body["timeout_seconds"] = timeout_seconds
        status, doc = self.json("POST", f"/plugins/{plugin}/run", body)
        assert status == 200, doc
        return dict(doc)

    def start(self, ready_within: float = 60) -> None:
        self.log = self.data_dir / "serve.log"
        command = self.command or [str(Path(sys.executable).with_name("sidecar")), "serve"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(command, env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + ready_within
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if self.request("GET", "/readyz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("sidecar did not become ready:\n" + self.log.read_text())

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            return self.proc.wait()

    def gunicorn_master(self) -> Any:
        """The gunicorn master `serve` started (a psutil.Process)."""
        import psutil

        assert self.proc is not None
        for kid in psutil.Process(self.proc.pid).children():
            try:
                argv = kid.cmdline()
            except psutil.Error:
                continue
            if ("-m" in argv and argv[argv.index("-m") + 1:][:1] == ["gunicorn"]
                    or argv[:1] and argv[0].startswith("gunicorn: master")):  # its own title, with setproctitle
                return kid
        raise AssertionError("serve has no gunicorn master")

    def worker_pids(self) -> list[int]:
        import psutil

        try:
            return [w.pid for w in self.gunicorn_master().children() if w.status() != psutil.STATUS_ZOMBIE]
        except psutil.Error:
            return []


def make_live_server(tmp: Path, **settings: str) -> LiveServer:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env.update({"SIDECAR_BIND": f"127.0.0.1:{port}", "SIDECAR_DATA_DIR": str(tmp / "data"),
                "SIDECAR_WORKERS": "2", "SIDECAR_THREADS": "4", "SIDECAR_PLUGIN_PATH": str(HOSTILE),
                "SIDECAR_ENTRY_POINTS": "false"})
    env.update({f"SIDECAR_{k.upper()}": v for k, v in settings.items()})
    return LiveServer(f"http://127.0.0.1:{port}", port, tmp, env)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real `sidecar serve` (gunicorn, 2 workers) on a loopback port, hostile plugins on its path."""
    server = make_live_server(tmp_path_factory.mktemp("live"))
    server.start()
    yield server
    server.stop()


def plant_packages(where: Path) -> Path:
    """Packages an attacker could leave in a working directory: `gunicorn` and `sidecar.sandbox.launcher` that,
    if ever imported, write `where/planted-ran` (the file's presence is the test)."""
    marker = where / "planted-ran"
    code = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
    for name in ("gunicorn/__init__.py", "gunicorn/__main__.py", "sidecar/__init__.py", "sidecar/sandbox/__init__.py",
                 "sidecar/sandbox/launcher.py"):
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        (where / name).write_text(code)
    return marker
