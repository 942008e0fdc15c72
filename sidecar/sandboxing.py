"""The sandbox and the run requests a set of settings gives: one place, so `serve` and the CLI run alike.

`sidecar run`, `check` and `bench` build their sandbox and requests here, as the runner does: the same
isolation (namespaces where bubblewrap works, a uid per run as root, a unit per run), the same hidden
paths, and for a check its own isolation, network, groups and granted paths. What the CLI says of a
plugin is then what `serve` will do with it; `unisolated` (a debugging flag) is the one way out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .groups import resolve_cached
from .sandbox.client import RunRequest, Sandbox
from .sandbox.isolation import Isolation

if TYPE_CHECKING:
    from .config import Settings
    from .plugins.registry import Entry

__all__ = ["hidden_paths", "request_for", "sandbox_for"]


def hidden_paths(settings: Settings, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """What plugins must not see: the data directory, the token file, the config file (it may hold the token),
    and `extra` (the runner's socket directory)."""
    return (settings.data_dir, *extra, *((settings.api_token_file,) if settings.api_token_file else ()),
            *((settings.config,) if settings.config else ()))


def sandbox_for(settings: Settings, *, hidden: tuple[str, ...] = (), unisolated: bool = False) -> Sandbox:
    """The sandbox `serve` runs plugins in with these settings (`unisolated`: the host's view and identity)."""
    isolation = None if unisolated else Isolation(settings.isolation, hidden=hidden_paths(settings, hidden),
                                                  readable=settings.plugin_path)
    return Sandbox(extra_env=settings.plugin_env, isolation=isolation, templates=settings.templates == "on",
                   max_templates=settings.max_templates)


def request_for(entry: Entry, settings: Settings, params: Mapping[str, Any], timeout: float, memory: int,
                mode: str = "run") -> RunRequest:
    """A run of `entry` as `serve` asks for it: its limits, and its check's confinement and identity (its
    groups, else the settings' defaults)."""
    group, groups = resolve_cached(settings.default_group, settings.default_groups)
    return RunRequest(entry.ref, params, timeout, memory, settings.max_result_bytes, settings.max_output_bytes,
                      mode=mode, isolation=entry.isolation, network=entry.network,
                      host_processes=entry.host_processes, group=group if entry.group is None else entry.group,
                      groups=groups if entry.groups is None else entry.groups, read_paths=entry.read_paths)
