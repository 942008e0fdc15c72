"""Caller side of the sandbox: the library's entry point (`run_plugin_sandboxed`) and the names callers import.

The caller side, one idea per module: `run_request` (what is asked), `pool` (`Sandbox`: launchers, channels,
the watchdog), `launcher_process` (one launcher), `channel` (a thread's connection to it), `drive` (one run on
its ticket), `run_result` (what the run came to). `protocol` declares what they say to the launcher and the
child.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Mapping
from typing import Any

from ..defaults import (
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MAX_RESULT_BYTES,
    DEFAULT_MEMORY_LIMIT_MB,
    DEFAULT_TIMEOUT_SECONDS,
)
from .pool import Sandbox
from .result import PluginSandboxResult
from .run_request import PluginRef, RunRequest

# The DEFAULT_* limits are declared once in `sidecar.defaults` and re-exported from here.
__all__ = ["DEFAULT_MAX_OUTPUT_BYTES", "DEFAULT_MAX_RESULT_BYTES", "DEFAULT_MEMORY_LIMIT_MB", "DEFAULT_TIMEOUT_SECONDS",
           "PluginRef", "RunRequest", "Sandbox", "default_sandbox", "run_plugin_sandboxed"]


_default: Sandbox | None = None
_default_lock = threading.Lock()


def default_sandbox() -> Sandbox:
    """The process-wide sandbox used by `run_plugin_sandboxed`, started on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Sandbox()
            atexit.register(_default.close)
        return _default


def run_plugin_sandboxed(
    plugin: PluginRef | str,
    params: Mapping[str, Any] | None = None,
    *,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB,
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    mode: str = "run",
) -> PluginSandboxResult:
    """Run a plugin once in a guarded child process and report exactly what happened.

    `plugin` is a PluginRef, a path to a `.py` file, or an importable module name.
    Never raises for anything the plugin does: every misbehaviour is an outcome.
    """
    if isinstance(plugin, str):
        if plugin.endswith(".py"):
            name = os.path.splitext(os.path.basename(plugin))[0]
            plugin = PluginRef(name, path=os.path.abspath(plugin))
        else:
            plugin = PluginRef(plugin.rsplit(".", 1)[-1], module=plugin)
    request = RunRequest(plugin, dict(params or {}), timeout_seconds, memory_limit_mb, max_result_bytes,
                         max_output_bytes, mode=mode)
    return default_sandbox().run(request)
