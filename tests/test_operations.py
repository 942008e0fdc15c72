"""The runner's interface: declared once, implemented by `Runner`, importable without the runner."""

from __future__ import annotations

import inspect
import subprocess
import sys

from sidecar.operations import OPERATIONS, RunnerOperations
from sidecar.runner import Runner


def test_the_runner_implements_every_operation_with_its_declared_signature() -> None:
    for name in OPERATIONS:
        declared = inspect.signature(getattr(RunnerOperations, name))
        implemented = inspect.signature(getattr(Runner, name))
        assert implemented == declared, name


def test_the_web_tier_imports_the_interface_without_the_runner() -> None:
    """A worker imports the app, the relay and the worker class: not the store (sqlite3), the scheduler, the
    sandbox client, the metrics or the plugin registry."""
    probe = ("import sys, sidecar.worker, sidecar.app, sidecar.rpc; "
             "print(' '.join(sorted(m for m in sys.modules if m.startswith(('sidecar', 'sqlite3', 'psutil', "
             "'prometheus_client')))))")
    loaded = set(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                                timeout=60).stdout.split())
    assert "sidecar.operations" in loaded and "sidecar.rpc" in loaded
    heavy = {"sqlite3", "psutil", "prometheus_client", "sidecar.runner", "sidecar.store", "sidecar.scheduler",
             "sidecar.metrics", "sidecar.sandbox.client", "sidecar.plugins"}
    assert not loaded & heavy, sorted(loaded & heavy)
