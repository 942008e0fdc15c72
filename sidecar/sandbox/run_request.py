"""What a caller asks of the sandbox: a plugin (`PluginRef`) and one run of it (`RunRequest`), checked up front."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..defaults import (
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MAX_RESULT_BYTES,
    DEFAULT_MEMORY_LIMIT_MB,
    DEFAULT_TIMEOUT_SECONDS,
)
from .protocol import PluginWire, RunRequestWire

__all__ = ["PluginRef", "RunRequest"]


@dataclass(frozen=True, slots=True)
class PluginRef:
    """Where a plugin's code lives: a file path or an importable module (never imported here)."""

    name: str
    path: str | None = None
    module: str | None = None
    attr: str = "run"
    #: fork runs from a template that imported the plugin once (metadata `preload = false` says no)
    preload: bool = True

    def __post_init__(self) -> None:
        if (self.path is None) == (self.module is None):
            raise ValueError("PluginRef needs exactly one of path= or module=")

    def to_dict(self) -> PluginWire:
        return {"name": self.name, "path": self.path, "module": self.module, "attr": self.attr}


@dataclass(frozen=True, slots=True)
class RunRequest:
    plugin: PluginRef
    params: Mapping[str, Any] = field(default_factory=dict)
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    max_processes: int | None = None
    #: "run" calls the plugin; "import" only loads it (used by `sidecar check`)
    mode: str = "run"
    #: "default" or "strict" for this run (a check's own); None: the sandbox's isolation mode
    isolation: str | None = None
    #: strict mode only: keep the host's network (the check or the plugin's metadata says so)
    network: bool = False
    #: show the host's /proc (the plugin's metadata says so); its PID namespace stays its own
    host_processes: bool = False
    #: as root, under isolation: the primary gid its run takes (None: a gid of its own) and supplementary gids
    group: int | None = None
    groups: Sequence[int] = ()
    #: under isolation: host paths bound read-only into the run's view
    read_paths: Sequence[str] = ()
    #: positional arguments, before `params` as keywords (the guard API calls any function this way)
    args: Sequence[Any] = ()
    #: the caller's import path, searched first in the child (None: the launcher's, fixed at its start)
    sys_path: Sequence[str] | None = None

    def __post_init__(self) -> None:
        """Refuse impossible limits up front: a NaN deadline would never fire."""
        if not (isinstance(self.timeout_seconds, int | float) and math.isfinite(self.timeout_seconds)
                and self.timeout_seconds > 0):
            raise ValueError(f"timeout_seconds must be a positive finite number, got {self.timeout_seconds!r}")
        for name in ("memory_limit_mb", "max_result_bytes", "max_output_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.mode not in ("run", "import"):
            raise ValueError(f"mode must be 'run' or 'import', got {self.mode!r}")
        if self.isolation not in (None, "default", "strict"):
            raise ValueError(f"isolation must be 'default' or 'strict', got {self.isolation!r}")

    def to_wire(self, rid: int) -> bytes:
        wire: RunRequestWire = {
            "id": rid,
            "plugin": self.plugin.to_dict(),
            "params": dict(self.params),
            "timeout_seconds": self.timeout_seconds,
            "memory_limit_mb": self.memory_limit_mb,
            "max_result_bytes": self.max_result_bytes,
            "max_output_bytes": self.max_output_bytes,
            "max_processes": self.max_processes,
            "mode": self.mode,
            "args": list(self.args),
            "sys_path": self.wire_sys_path(),
        }
        return json.dumps(wire).encode()

    def wire_sys_path(self) -> list[str] | None:
        return None if self.sys_path is None else list(self.sys_path)
