"""Discovery of plugins and the registry of entries that may run.

Sources, in order: built-ins (`sidecar/plugins/builtin/`), `*.py` files in `SIDECAR_PLUGIN_PATH`,
and distributions' entry points in the group `sidecar.plugins`; then the checks of the TOML
config, each a named instance of one of those plugins. The first entry of a name wins; later
ones are rejected with a log line, as are names that do not match the pattern whole (`schema.is_name`:
a file `evil\n.py` is refused). An entry's name is the `plugin` label in metrics and the `<name>` in
routes, so label values are bounded here.

`Registry.errors` holds what makes the operator's configuration wrong: a check naming an unknown
plugin or clashing with a plugin's name, a plugin directory or allow-listed name that does not exist.
`sidecar check` exits 1 and `sidecar serve` refuses to start on any of them.

One rule for a plugin *file* whose name is valid but that cannot be used (refused metadata, a syntax
error, unreadable): it is listed as broken with the reason (`problem`), its runs are refused with that
reason without starting a sandbox (outcome `import`, recorded and counted like any import failure),
`sidecar check` exits 1, and `serve` starts — one broken file never stops the other checks. A file
whose name is not a valid plugin name is rejected at discovery (the name is a metric label and a route).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from .. import defaults, schema
from ..config import CheckConfig, Settings
from ..errors import BadRequest, PluginNotFound
from ..sandbox.client import PluginRef
from .metadata import Metadata, read_metadata

__all__ = ["ENTRY_POINT_GROUP", "Entry", "Registry", "discover"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "sidecar.plugins"
BUILTIN_DIR = Path(__file__).parent / "builtin"


@dataclass(frozen=True)
class Entry:
    """A runnable thing with a unique name: a discovered plugin or a configured check."""

    name: str
    plugin: str  # the underlying plugin's name (== name unless this is a check)
    ref: PluginRef
    source: str  # builtin | path | entry_point | check
    location: str
    metadata: Metadata
    loaded_at: float
    params: Mapping[str, Any] = field(default_factory=dict)
    interval_seconds: float | None = None
    timeout_seconds: float | None = None
    memory_limit_mb: int | None = None
    #: "default" or "strict" for this entry's runs; None: the sidecar's isolation
    isolation: str | None = None
    #: strict isolation keeps the network for this entry (plugin metadata or check says `network = true`)
    network: bool = False
    #: the plugin's metadata (or, for a check, its table) asks to read the host's processes
    host_processes: bool = False
    #: a check's groups for its runs, as gids (None: the sidecar's `default_group`/`default_groups`)
    group: int | None = None
    groups: tuple[int, ...] | None = None
    #: host paths a check's runs read, bound read-only into their view
    read_paths: tuple[str, ...] = ()

    @property
    def description(self) -> str:
        return self.metadata.description

    @property
    def check_only(self) -> bool:
        """A plugin that only a configured check may run (a check of it is not: it has its params)."""
        return self.metadata.check_only and self.source != "check"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "plugin": self.plugin,
            "source": self.source,
            "location": self.location,
            "description": self.description,
            "version": self.metadata.version,
            "timeout_seconds": self.timeout_seconds,
            "memory_limit_mb": self.memory_limit_mb,
            "interval_seconds": self.interval_seconds,
            "params": dict(self.params),
            "loaded_at": self.loaded_at,
            "problem": self.metadata.issues,
        }


@dataclass
class Registry:
    settings: Settings
    entries: dict[str, Entry] = field(default_factory=dict)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    #: configuration errors (see the module docstring), each one line naming where and what
    errors: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries.values())

    def __len__(self) -> int:
        return len(self.entries)

    def names(self) -> list[str]:
        return list(self.entries)

    def get(self, name: str) -> Entry:
        entry = self.entries.get(name)
        if entry is None:
            raise PluginNotFound(f"unknown plugin {name!r}")
        return entry

    def add(self, entry: Entry) -> bool:
        allowed = self.settings.plugins
        if allowed and entry.source != "check" and entry.name not in allowed:
            return False  # not wanted on this sidecar (SIDECAR_PLUGINS): neither listed nor an error
        if not schema.is_name(entry.name):
            self._reject(repr(entry.location), f"invalid plugin name {entry.name!r}: must match "
                                               f"{defaults.PLUGIN_NAME_PATTERN}")
            return False
        if entry.name in self.entries:
            first = self.entries[entry.name]
            if entry.source == "check":
                self.errors.append(f"{self.settings.config or 'config'}: {entry.location}: the name "
                                   f"{entry.name!r} clashes with a plugin ({first.location}); choose another")
                return False
            self._reject(entry.location, f"duplicate plugin name {entry.name!r} (already from {first.location})")
            return False
        if entry.metadata.issues and entry.source != "check":
            log.warning("plugin %s is broken: %s: %s", entry.name, entry.location, entry.metadata.issues)
        self.entries[entry.name] = entry
        return True

    def _reject(self, where: str, why: str) -> None:
        log.warning("plugin rejected: %s: %s", where, why)
        self.rejected.append((where, why))

    def limits(self, entry: Entry, timeout_seconds: float | None = None) -> tuple[float, int]:
        """(timeout, memory MB) for a run: the call's, else the entry's, else the defaults; capped."""
        s = self.settings
        if timeout_seconds is not None:
            try:
                timeout_seconds = schema.convert({"timeout_seconds": timeout_seconds}, schema.RunBody).timeout_seconds
            except schema.Invalid as exc:
                raise BadRequest(str(exc)) from None
            assert timeout_seconds is not None
            if timeout_seconds > s.max_timeout_seconds:
                raise BadRequest(
                    f"timeout_seconds {timeout_seconds:g} exceeds the server maximum {s.max_timeout_seconds:g}"
                )
            timeout = float(timeout_seconds)
        else:
            timeout = min(entry.timeout_seconds or s.default_timeout_seconds, s.max_timeout_seconds)
        return timeout, entry.memory_limit_mb or s.default_memory_limit_mb


def _file_entry(path: Path, source: str, now: float) -> Entry:
    try:
        meta = read_metadata(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError) as exc:
        meta = Metadata(problem=f"{type(exc).__name__}: {exc}")
    return Entry(
        name=path.stem, plugin=path.stem, ref=PluginRef(path.stem, path=str(path.resolve()), preload=meta.preload),
        source=source,
        location=str(path), metadata=meta, loaded_at=now, interval_seconds=meta.interval_seconds,
        timeout_seconds=meta.timeout_seconds, memory_limit_mb=meta.memory_limit_mb, network=meta.network,
        host_processes=meta.host_processes,
    )


def _py_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.py") if not p.name.startswith("_"))


def _entry_point_entries(now: float) -> Iterable[Entry]:
    for ep in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP):
        module, _, attr = ep.value.partition(":")
        attr = attr.strip() or "run"
        path = None
        # Locate the module's file from the distribution's record: finding it through the import
        # system would execute the package's __init__ in the server.
        if ep.dist is not None:
            rel = module.strip().replace(".", "/")
            for f in ep.dist.files or ():
                if str(f) in (f"{rel}.py", f"{rel}/__init__.py"):
                    path = Path(str(ep.dist.locate_file(f)))
                    break
        meta = Metadata()
        if path is not None and path.is_file():
            meta = read_metadata(path.read_text(encoding="utf-8"), str(path))
        yield Entry(
            name=ep.name, plugin=ep.name, ref=PluginRef(ep.name, module=module.strip(), attr=attr,
                                                        preload=meta.preload),
            source="entry_point", location=f"{ep.value} ({ep.dist.name if ep.dist else '?'})",
            metadata=meta, loaded_at=now, interval_seconds=meta.interval_seconds,
            timeout_seconds=meta.timeout_seconds, memory_limit_mb=meta.memory_limit_mb, network=meta.network,
            host_processes=meta.host_processes,
        )


def _check_entry(check: CheckConfig, registry: Registry, now: float) -> Entry | None:
    base = registry.entries.get(check.plugin)
    if base is None or base.source == "check":
        where = f"{registry.settings.config or 'config'}: [checks.{check.name}]"
        known = ", ".join(e.name for e in registry if e.source != "check") or "none"
        registry.errors.append(f"{where}: plugin = {check.plugin!r} is invalid: no such plugin (known: {known})")
        return None
    meta = base.metadata
    if check.description:
        meta = dataclasses.replace(meta, description=check.description)
    return Entry(
        name=check.name, plugin=base.name, ref=base.ref, source="check", location=f"[checks.{check.name}]",
        metadata=meta, loaded_at=now, params=dict(check.params),
        interval_seconds=check.interval_seconds if check.interval_seconds is not None else base.interval_seconds,
        timeout_seconds=check.timeout_seconds or base.timeout_seconds,
        memory_limit_mb=check.memory_limit_mb or base.memory_limit_mb,
        isolation=check.isolation, network=base.network if check.network is None else check.network,
        host_processes=base.host_processes if check.host_processes is None else check.host_processes,
        group=check.group, groups=check.groups, read_paths=check.read_paths,
    )


def discover(settings: Settings) -> Registry:
    """Build the registry; never raises for a bad plugin (it is rejected or listed with a problem)."""
    registry = Registry(settings)
    now = time.time()
    for path in _py_files(BUILTIN_DIR):
        registry.add(_file_entry(path, "builtin", now))
    for directory in settings.plugin_path:
        d = Path(directory)
        if not d.is_dir():
            registry.errors.append(f"plugin_path: {directory!r} is not a directory")
            continue
        for path in _py_files(d):
            registry.add(_file_entry(path, "path", now))
    if settings.entry_points:
        try:
            for entry in _entry_point_entries(now):
                registry.add(entry)
        except Exception as exc:  # a broken distribution's metadata must not stop start-up
            registry._reject(ENTRY_POINT_GROUP, f"entry points unreadable: {exc}")
    missing = [name for name in settings.plugins if name not in registry.entries]
    if missing:
        registry.errors.append(f"plugins = {list(settings.plugins)!r} is invalid: no plugin named "
                               f"{', '.join(map(repr, missing))} was found")
    for check in settings.checks:
        configured = _check_entry(check, registry, now)
        if configured is not None:
            registry.add(configured)
    return registry
