"""The quick start's example configuration: it is valid, `run.sh` picks it, and its checks succeed live.

The example probes the sidecar itself at the default bind; the live test serves a copy on a free loopback
port with the port rewritten, so it runs beside anything else on this machine.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from sidecar.config import Settings, load_settings
from tests.conftest import make_live_server

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "examples" / "sidecar.toml"
DEFAULT_PORT = Settings().bind.rpartition(":")[2]


def example_for_port(port: int, dest: Path, interval_seconds: float | None = None) -> Path:
    """A copy of the example whose self-probes target `port` instead of the default one (and, if given,
    every check on `interval_seconds`)."""
    text = EXAMPLE.read_text()
    assert text.count(DEFAULT_PORT) >= 2, "the example no longer probes the default port"
    text = text.replace(f"127.0.0.1:{DEFAULT_PORT}", f"127.0.0.1:{port}")
    text = text.replace(f"port = {DEFAULT_PORT}", f"port = {port}")
    if interval_seconds is not None:
        text = re.sub(r"(?m)^interval_seconds = .*$", f"interval_seconds = {interval_seconds}", text)
    dest.write_text(text)
    return dest


def test_example_probes_the_default_bind_over_http_tcp_and_disk() -> None:
    checks = tomllib.loads(EXAMPLE.read_text())["checks"]
    by_plugin = {c["plugin"]: c for c in checks.values()}
    assert set(by_plugin) == {"http_probe", "tcp_probe", "disk_usage"}
    assert by_plugin["http_probe"]["params"]["url"] == f"http://{Settings().bind}/healthz"
    assert by_plugin["tcp_probe"]["params"]["port"] == int(DEFAULT_PORT)
    # Every check runs often enough that the quick start shows runs within a minute.
    assert all(0 < c["interval_seconds"] <= 30 for c in checks.values())
    settings = load_settings({"config": str(EXAMPLE)}, environ={})
    assert {c.name for c in settings.checks} == set(checks)


def test_example_passes_sidecar_check() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("sidecar")), "check", "--config", str(EXAMPLE)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "BROKEN" not in proc.stdout and "REJECTED" not in proc.stdout


def _run_sh(tmp_path: Path, args: list[str], env: dict[str, str]) -> str:
    """Run a copy of run.sh whose bootstrap and sidecar are stubs that record the command line."""
    shutil.copy(REPO_ROOT / "run.sh", tmp_path / "run.sh")
    (tmp_path / "scripts").mkdir()
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    stubs = {"scripts/bootstrap.sh": "#!/bin/sh\nexit 0\n", ".venv/bin/sidecar": '#!/bin/sh\necho "$@"\n'}
    for rel, body in stubs.items():
        (tmp_path / rel).write_text(body)
        (tmp_path / rel).chmod(stat.S_IRWXU)
    base = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    proc = subprocess.run(
        ["bash", str(tmp_path / "run.sh"), *args],
        capture_output=True,
        text=True,
        env={**base, **env},
        timeout=30,
        check=True,
    )
    return proc.stdout.strip()


def test_run_sh_uses_the_example_only_without_a_configuration(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    assert _run_sh(tmp_path / "a", [], {}) == "serve --config examples/sidecar.toml --data-dir .sidecar"
    (tmp_path / "b").mkdir()
    assert _run_sh(tmp_path / "b", ["--config", "mine.toml"], {}) == "serve --config mine.toml"
    (tmp_path / "c").mkdir()
    assert (
        _run_sh(tmp_path / "c", ["--config=mine.toml", "--workers", "1"], {}) == "serve --config=mine.toml --workers 1"
    )
    (tmp_path / "d").mkdir()
    assert _run_sh(tmp_path / "d", ["--workers", "1"], {"SIDECAR_CONFIG": "env.toml"}) == "serve --workers 1"


def test_run_sh_keeps_the_quick_start_history_in_the_tree_unless_told(tmp_path: Path) -> None:
    for case, args, env, expected in [
        ("a", ["--data-dir", "/srv/h"], {}, "serve --config examples/sidecar.toml --data-dir /srv/h"),
        ("b", ["--data-dir=/srv/h"], {}, "serve --config examples/sidecar.toml --data-dir=/srv/h"),
        ("c", [], {"SIDECAR_DATA_DIR": "/srv/h"}, "serve --config examples/sidecar.toml"),
    ]:
        (tmp_path / case).mkdir()
        assert _run_sh(tmp_path / case, args, env) == expected, case


def test_example_checks_succeed_against_a_live_server(tmp_path: Path) -> None:
    server = make_live_server(tmp_path, workers="1")
    # A short interval: a self-probe scheduled before the HTTP workers listen fails once; the next one counts.
    config = example_for_port(server.port, tmp_path / "sidecar.toml", interval_seconds=1)
    server.env["SIDECAR_CONFIG"] = str(config)
    names = list(tomllib.loads(config.read_text())["checks"])
    server.start()
    try:
        deadline = time.monotonic() + 60
        health: dict[str, Any] = {}
        while time.monotonic() < deadline:
            health = {name: server.json("GET", f"/plugins/{name}/health")[1] for name in names}
            if all(h["success_count"] >= 1 for h in health.values()):
                break
            time.sleep(0.2)
        for name, h in health.items():
            assert h["success_count"] >= 1, (name, h)
            # Its latest run succeeded, whatever the start-up race did to the first one.
            status, runs = server.json("GET", f"/plugins/{name}/runs?limit=1")
            assert status == 200 and runs["runs"][0]["outcome"] == "success", (name, runs)
        _, _, body = server.request("GET", "/metrics")
        text = body.decode()
        for name in names:
            assert f'sidecar_plugin_success_total{{plugin="{name}"}}' in text, name
    finally:
        server.stop()
