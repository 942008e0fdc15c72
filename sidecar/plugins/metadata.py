"""Read a plugin's metadata without importing it: the server never executes plugin code.

Metadata are module-level assignments of plain literals (`description = "..."`), read from the
source with `ast.literal_eval`. A file that does not parse is still listed; its runs end with
outcome `import` in the sandbox, where the real import happens.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

__all__ = ["FIELDS", "Metadata", "read_metadata"]

FIELDS: dict[str, tuple[type, ...]] = {
    "description": (str,),
    "version": (str,),
    "timeout_seconds": (int, float),
    "memory_limit_mb": (int,),
    "interval_seconds": (int, float),
    "network": (bool,),
    "host_processes": (bool,),
}


@dataclass(frozen=True)
class Metadata:
    description: str = ""
    version: str | None = None
    timeout_seconds: float | None = None
    memory_limit_mb: int | None = None
    interval_seconds: float | None = None
    #: why the source could not be read or parsed; the plugin stays listed
    problem: str | None = None
    #: the plugin needs the network even in strict isolation
    network: bool = False
    #: the plugin reads the host's processes (`/proc`); isolation still hides them from its signals
    host_processes: bool = False


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
            problems.append(f"{target} is not a plain literal")
            continue
        if not isinstance(value, FIELDS[target]) or (isinstance(value, bool) and bool not in FIELDS[target]):
            problems.append(f"{target} has type {type(value).__name__}")
            continue
        if FIELDS[target] != (bool,) and target not in ("description", "version") and not value > 0:  # type: ignore[operator]
            problems.append(f"{target} must be > 0")
            continue
        values[target] = value
    values.setdefault("description", _docstring_line(tree))
    return Metadata(**values, problem="; ".join(problems) or None)
