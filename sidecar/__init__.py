"""Sidecar: run plugins in guarded sandboxes and make every run observable.

The public surface is small and pinned by a test; everything else is internal. Imports are
lazy so that the sandbox launcher, which imports this package, stays small.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app
    from .config import Settings
    from .sandbox.client import run_plugin_sandboxed
    from .sandbox.result import PluginSandboxResult

__version__ = "0.1.0"
__all__ = ["PluginSandboxResult", "Settings", "__version__", "create_app", "run_plugin_sandboxed"]

_WHERE = {
    "create_app": "app",
    "Settings": "config",
    "run_plugin_sandboxed": "sandbox.client",
    "PluginSandboxResult": "sandbox.result",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
