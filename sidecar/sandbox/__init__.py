"""Guarded execution of plugin code: one forked child per run, from a small launcher process.

Imports are lazy so that the launcher (`python -m sidecar.sandbox.launcher`) loads only what
it needs: every module it imports is memory each forked child starts with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import (
        DEFAULT_MEMORY_LIMIT_MB,
        DEFAULT_TIMEOUT_SECONDS,
        PluginRef,
        RunRequest,
        Sandbox,
        run_plugin_sandboxed,
    )
    from .memory_guard import MemoryGuardResult, get_memory_usage_bytes, run_with_memory_guard
    from .result import CapturedStream, ErrorInfo, Outcome, PluginSandboxResult
    from .timeout import TimeoutGuardResult, run_sandboxed_with_timeout, run_with_guards, run_with_timeout

__all__ = [
    "DEFAULT_MEMORY_LIMIT_MB",
    "DEFAULT_TIMEOUT_SECONDS",
    "CapturedStream",
    "ErrorInfo",
    "MemoryGuardResult",
    "Outcome",
    "PluginRef",
    "PluginSandboxResult",
    "RunRequest",
    "Sandbox",
    "TimeoutGuardResult",
    "get_memory_usage_bytes",
    "run_plugin_sandboxed",
    "run_sandboxed_with_timeout",
    "run_with_guards",
    "run_with_memory_guard",
    "run_with_timeout",
]

_WHERE = {
    "DEFAULT_MEMORY_LIMIT_MB": "client", "DEFAULT_TIMEOUT_SECONDS": "client",
    "PluginRef": "client", "RunRequest": "client", "Sandbox": "client", "run_plugin_sandboxed": "client",
    "CapturedStream": "result", "ErrorInfo": "result", "Outcome": "result", "PluginSandboxResult": "result",
    "MemoryGuardResult": "memory_guard", "get_memory_usage_bytes": "memory_guard",
    "run_with_memory_guard": "memory_guard",
    "TimeoutGuardResult": "timeout", "run_sandboxed_with_timeout": "timeout", "run_with_guards": "timeout",
    "run_with_timeout": "timeout",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
