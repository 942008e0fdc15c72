from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.sandbox.client import PluginRef, RunRequest, Sandbox
from sidecar.sandbox.result import PluginSandboxResult

HOSTILE = Path(__file__).parent / "hostile"


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
