"""What ships serves: the image's install and the README's first command, each from a fresh copy.

The suite itself runs from an editable install with the test and dev extras, which once hid a missing
runtime dependency (gunicorn's gevent worker needs `packaging`, which only an extra brought). These tests
install what a user installs — the files the Dockerfile copies, `pip install .` without extras, and
`./run.sh` on a copy of the tracked tree — into venvs of their own, start `sidecar serve` from a directory
outside the repository (so nothing is imported from the checkout), and run a plugin through HTTP.
pip's wheel cache (filled by the suite's own bootstrap) keeps the installs fast.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LiveServer, make_live_server
from tests.stack.dockerfile import dockerfile_copy_sources

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def _clean_env() -> dict[str, str]:
    """The environment of a fresh shell: no SIDECAR_* settings, no venv or PYTHONPATH of the suite's."""
    drop = ("SIDECAR_", "PYTHON", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return env


def _sh(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"{shlex.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"


def _serve_and_run_echo(server: LiveServer) -> None:
    server.start(ready_within=120)
    try:
        status, _, body = server.request("GET", "/healthz")
        assert status == 200, body
        doc = server.run("echo", hi=1)
        assert doc["outcome"] == "success", doc
        assert doc["result"] == {"hi": 1}, doc
    finally:
        assert server.stop() == 0, server.log.read_text()


def test_pip_install_without_extras_serves(tmp_path: Path) -> None:
    """The Dockerfile's install: only the files it copies, `pip install .`, no extras, not editable."""
    src = tmp_path / "src"
    src.mkdir()
    for name in dockerfile_copy_sources():
        origin = REPO_ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, src / name)
    env = _clean_env()
    venv = tmp_path / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)  # the interpreter, not the suite's venv
    _sh([base_python, "-m", "venv", str(venv)], tmp_path, env)
    _sh([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(src)],
        tmp_path, env)
    shutil.rmtree(src)  # what runs must come from the venv, as in the image (`rm -rf /src`)

    server = make_live_server(tmp_path, plugin_path="")
    server.env = {**env, **{k: v for k, v in server.env.items() if k.startswith("SIDECAR_")}}
    server.command = [str(venv / "bin" / "sidecar"), "serve"]
    server.cwd = tmp_path
    _serve_and_run_echo(server)


def _tracked_tree(dest: Path) -> None:
    """A copy of the working tree's tracked (and new, unignored) files: what a fresh clone holds."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                             capture_output=True, check=True).stdout.decode()
    for name in filter(None, listing.split("\0")):
        origin = REPO_ROOT / name
        if not origin.is_file():
            continue  # deleted in the working tree
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(origin, dest / name)


@pytest.mark.skipif(shutil.which("git") is None or not (REPO_ROOT / ".git").exists(),
                    reason="needs the repository's git metadata to list its tracked files")
def test_run_sh_on_a_fresh_tree_serves(tmp_path: Path) -> None:
    """The README's first command, bootstrap included, from a tree with no .venv."""
    clone = tmp_path / "clone"
    _tracked_tree(clone)
    assert not (clone / ".venv").exists()
    server = make_live_server(tmp_path)
    env = _clean_env()
    env["SIDECAR_DATA_DIR"] = server.env["SIDECAR_DATA_DIR"]
    server.env = env
    server.command = [str(clone / "run.sh"), "--bind", f"127.0.0.1:{server.port}"]
    server.cwd = tmp_path
    _serve_and_run_echo(server)
    assert (clone / ".venv" / "bin" / "sidecar").exists()
