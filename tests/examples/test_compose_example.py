"""The compose stack's own plugins and checks (examples/compose/): mounted where the settings say, importable,
and their checks run.

Docker is not run here; the mounts are checked against the repository and the configuration is exercised
with the same `sidecar` commands the containers run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "examples" / "compose"
CHECKS = EXAMPLE / "checks.toml"
PLUGINS = EXAMPLE / "plugins"
SERVICES: dict[str, Any] = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]
SIDECARS = [name for name in SERVICES if name.startswith("sidecar-")]


def sidecar(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env["SIDECAR_ENTRY_POINTS"] = "false"
    command = [str(Path(sys.executable).with_name("sidecar")), *args]
    command += ["--config", str(CHECKS), "--plugin-path", str(PLUGINS)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, check=False)


@pytest.mark.parametrize("name", SIDECARS)
def test_compose_mounts_the_example_where_the_settings_point(name: str) -> None:
    service = SERVICES[name]
    mounts = {}
    for entry in service["volumes"]:
        source, target = entry.split(":")[:2]
        mounts[target] = source
    env = service["environment"]
    assert (REPO_ROOT / mounts[env["SIDECAR_CONFIG"]]).resolve() == CHECKS
    assert (REPO_ROOT / mounts[env["SIDECAR_PLUGIN_PATH"]]).resolve() == PLUGINS
    for target in (env["SIDECAR_CONFIG"], env["SIDECAR_PLUGIN_PATH"]):
        assert f"{mounts[target]}:{target}:ro" in service["volumes"], "mount configuration read-only"


def test_example_plugins_import_and_checks_load() -> None:
    proc = sidecar("check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for plugin in sorted(p.stem for p in PLUGINS.glob("*.py")):
        assert f"ok      {plugin}" in proc.stdout
    listed = {e["name"]: e for e in json.loads(sidecar("list", "--json").stdout)}
    assert {"self_http", "host_load", "host_memory"} <= set(listed)


@pytest.mark.parametrize(
    ("check", "lenient", "strict"),
    [("host_load", "max_per_cpu=1000", "max_per_cpu=0.000001"), ("host_memory", "min_percent=0", "min_percent=100")],
)
def test_example_checks_run_and_fail_past_their_threshold(check: str, lenient: str, strict: str) -> None:
    ok = sidecar("run", check, "--param", lenient, "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout)["outcome"] == "success"
    failing = sidecar("run", check, "--param", strict, "--json")
    assert failing.returncode == 1, failing.stdout + failing.stderr
    assert json.loads(failing.stdout)["outcome"] == "runtime"
