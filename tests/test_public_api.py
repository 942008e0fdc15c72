"""The public surface of `sidecar`, and the launcher's small import footprint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sidecar

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = ["PluginSandboxResult", "Settings", "__version__", "create_app", "run_plugin_sandboxed"]
#: Modules the sandbox launcher must never import: every one is memory each forked child starts with.
HEAVY = ("flask", "prometheus_client", "sqlite3", "dataclasses", "inspect")


def test_all_is_pinned() -> None:
    assert sidecar.__all__ == PUBLIC
    assert sidecar.__all__ == sorted(sidecar.__all__)


@pytest.mark.parametrize("name", PUBLIC)
def test_public_names_resolve(name: str) -> None:
    assert getattr(sidecar, name) is not None


def test_names_come_from_their_modules() -> None:
    from sidecar.app import create_app
    from sidecar.config import Settings
    from sidecar.sandbox.client import run_plugin_sandboxed
    from sidecar.sandbox.result import PluginSandboxResult

    assert sidecar.create_app is create_app
    assert sidecar.Settings is Settings
    assert sidecar.run_plugin_sandboxed is run_plugin_sandboxed
    assert sidecar.PluginSandboxResult is PluginSandboxResult
    assert isinstance(sidecar.__version__, str) and sidecar.__version__


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        sidecar.no_such_thing  # noqa: B018


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from sidecar import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == PUBLIC


def _modules_after(code: str) -> set[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SIDECAR_"))}
    env["PYTHONPATH"] = str(ROOT)
    script = code + "\nimport sys\n_seen = sorted(sys.modules)\nimport json\nprint(json.dumps(_seen))\n"
    out = subprocess.run([sys.executable, "-S", "-c", script], env=env, cwd=str(ROOT), capture_output=True,
                         text=True, timeout=60, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_launcher_import_stays_small() -> None:
    modules = _modules_after("import sidecar.sandbox.launcher")
    assert "sidecar.sandbox.launcher" in modules
    heavy = {m for m in modules if m.split(".")[0] in HEAVY}
    assert not heavy, f"the launcher imports {sorted(heavy)}"


def test_importing_the_package_is_lazy() -> None:
    modules = _modules_after("import sidecar")
    assert not {m for m in modules if m.split(".")[0] in HEAVY}
    assert not {m for m in modules if m.startswith("sidecar.")}
