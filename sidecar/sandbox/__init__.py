"""Guarded execution of plugin code: one forked child per run, from a small launcher process.

Imports are lazy so that the launcher (`python -m sidecar.sandbox.launcher`) loads only what
it needs: every module it imports is memory every forked child starts with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import PluginRef, RunRequest, Sandbox, run_plugin_sandboxed
    from .result import CapturedStream, ErrorInfo, Outcome, PluginSandboxResult

__all__ = [
    "CapturedStream",
    "ErrorInfo",
    "Outcome",
    "PluginRef",
    "PluginSandboxResult",
    "RunRequest",
    "Sandbox",
    "run_plugin_sandboxed",
]

_WHERE = {
    "PluginRef": "client", "RunRequest": "client", "Sandbox": "client", "run_plugin_sandboxed": "client",
    "CapturedStream": "result", "ErrorInfo": "result", "Outcome": "result", "PluginSandboxResult": "result",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
