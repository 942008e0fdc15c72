"""Read a plugin's metadata without importing it: the server never executes plugin code.

Metadata are module-level assignments of plain literals (`description = "..."`), read from the
source with `ast.literal_eval` and validated by the same schema as a `[checks.NAME]` table
(`sidecar.schema.PluginMetadata`), so a value refused in one is refused in the other. A file that
does not parse is still listed (`problem`); its runs end with outcome `import` in the sandbox,
where the real import happens. Metadata that parse but are refused (`invalid`) make `sidecar
check` fail and `sidecar serve` refuse to start.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

from .. import schema

__all__ = ["FIELDS", "Metadata", "read_metadata"]

#: The metadata names a plugin file may set: the fields of the shared schema.
FIELDS: tuple[str, ...] = schema.PluginMetadata.__struct_fields__


@dataclass(frozen=True)
class Metadata:
    description: str = ""
    version: str | None = None
    timeout_seconds: float | None = None
    memory_limit_mb: int | None = None
    interval_seconds: float | None = None
    #: why the source could not be read or parsed; the plugin stays listed, its runs end `import`
    problem: str | None = None
    #: metadata values the schema refused (each names the key, the value and what is allowed)
    invalid: str | None = None
    #: the plugin needs the network even in strict isolation
    network: bool = False
    #: the plugin reads the host's processes; isolation still keeps its signals in its namespace
    host_processes: bool = False
    #: runs are forked from a template that imported the plugin once (`preload = false`: import per run)
    preload: bool = True
    #: only a configured check may run it: requests may not run the bare plugin (it would choose its params)
    check_only: bool = False

    @property
    def issues(self) -> str | None:
        """Everything wrong with this plugin's file, for listings."""
        return "; ".join(p for p in (self.problem, self.invalid) if p) or None


def _docstring_line(tree: ast.Module) -> str:
    doc = ast.get_docstring(tree) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def read_metadata(source: str, filename: str = "<plugin>") -> Metadata:
    try:
        tree = ast.parse(source, filename)
    except (SyntaxError, ValueError) as exc:
        return Metadata(problem=f"{type(exc).__name__}: {exc}")
    values: dict[str, Any] = {}
    problems = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target, value_node = node.targets[0].id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            target, value_node = node.target.id, node.value
        else:
            continue
        if target not in FIELDS:
            continue
        try:
            value = ast.literal_eval(value_node)
        except ValueError:
            problems.append(f"{target} is invalid: not a plain literal")
            continue
        try:  # key by key, so that one bad value does not hide the good ones
            schema.convert({target: value}, schema.PluginMetadata)
        except schema.Invalid as exc:
            problems.append(str(exc))
            continue
        values[target] = value
    meta = schema.convert(values, schema.PluginMetadata)
    return Metadata(
        description=meta.description if meta.description is not None else _docstring_line(tree),
        version=meta.version,
        timeout_seconds=meta.timeout_seconds,
        memory_limit_mb=meta.memory_limit_mb,
        interval_seconds=meta.interval_seconds,
        invalid="; ".join(problems) or None,
        network=bool(meta.network),
        host_processes=meta.host_processes,
        preload=meta.preload,
        check_only=meta.check_only,
    )
