"""What `sidecar check` predicts about `serve`, beyond importing each plugin: findings a served run would hit.

Read from sources and file modes, never by running plugin code:

- a check's params against the plugin's `run()` signature (read from the source, like the metadata):
  unknown names, missing required ones, and the JSON type a literal default or a plain annotation implies;
- the paths named by the built-ins' well-known params: relative ones (they depend on the run's working
  directory), and ones the run cannot see (its private `/tmp`, the paths hidden from plugins);
- as root, where every run takes a uid of its own: the plugin file and its directory readable by others.

Each finding names where (the check or the plugin file), the key and the fix.
"""

from __future__ import annotations

import ast
import difflib
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Finding", "Param", "Signature", "check_params", "check_paths", "check_readable", "run_signature"]

#: Params of the built-ins that name a path the run opens or stats, by plugin.
PATH_PARAMS: Mapping[str, tuple[str, ...]] = {"disk_usage": ("path",), "process_check": ("pid_file",)}
#: Private to each run's namespace: a host path under these is not what the run sees.
PRIVATE_DIRS = ("/tmp", "/var/tmp")
#: JSON types a plain annotation or a literal default implies.
_TYPES: Mapping[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
                                          "list": (list,), "dict": (dict,)}


@dataclass(frozen=True)
class Finding:
    where: str
    key: str | None
    problem: str
    fix: str

    def line(self) -> str:
        key = f" {self.key}:" if self.key else ""
        return f"{self.where}:{key} {self.problem}; {self.fix}"


@dataclass(frozen=True)
class Param:
    name: str
    required: bool
    #: the JSON types the value must have, when a plain annotation or a literal default tells (else None)
    types: tuple[type, ...] | None = None
    type_name: str | None = None


@dataclass(frozen=True)
class Signature:
    params: tuple[Param, ...]
    #: `**kwargs`: any name is accepted
    var_keyword: bool


def _annotation_types(node: ast.expr | None) -> tuple[tuple[type, ...] | None, str | None]:
    """The JSON types of `int`, `str | None`, `Optional`-free unions of plain names; None when unknown."""
    if node is None:
        return None, None
    names: list[str] = []
    stack = [node]
    while stack:
        part = stack.pop()
        if isinstance(part, ast.BinOp) and isinstance(part.op, ast.BitOr):
            stack += [part.left, part.right]
        elif isinstance(part, ast.Name) and part.id in _TYPES:
            names.append(part.id)
        elif isinstance(part, ast.Constant) and part.value is None:
            names.append("None")
        else:
            return None, None  # a generic, a string annotation, a class of the plugin's: not told
    types = tuple(t for n in names if n != "None" for t in _TYPES[n])
    allowed = tuple(dict.fromkeys((*types, *((type(None),) if "None" in names else ()))))
    return allowed or None, " | ".join(sorted(set(names)))


def run_signature(source: str, attr: str = "run") -> Signature | None:
    """The module-level `def run(...)` of a plugin's source; None when it cannot be read from the source."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == attr]
    if len(funcs) != 1:
        return None
    args = funcs[0].args
    params: list[Param] = []
    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    for arg, default in [*zip(positional, defaults, strict=True), *zip(args.kwonlyargs, args.kw_defaults,
                                                                       strict=True)]:
        if arg in args.posonlyargs:
            continue  # cannot be given by name: a check cannot set it
        types, type_name = _annotation_types(arg.annotation)
        if types is None and isinstance(default, ast.Constant) and type(default.value) in (str, int, float, bool):
            value_type = type(default.value)
            types, type_name = _TYPES[value_type.__name__], value_type.__name__
        params.append(Param(arg.arg, required=default is None, types=types, type_name=type_name))
    return Signature(tuple(params), var_keyword=args.kwarg is not None)


def check_params(where: str, plugin: str, params: Mapping[str, Any], signature: Signature) -> list[Finding]:
    """A check's params against its plugin's `run()`: what the plugin would refuse in every run."""
    found: list[Finding] = []
    known = {p.name: p for p in signature.params}
    for key, value in params.items():
        param = known.get(key)
        if param is None:
            if signature.var_keyword:
                continue
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            found.append(Finding(where, f"params.{key}", f"run() of plugin {plugin!r} takes no parameter {key!r}",
                                 f"{hint}it takes: {', '.join(known) or 'none'}"))
        elif param.types is not None and not (isinstance(value, param.types)
                                              and not (isinstance(value, bool) and bool not in param.types)):
            found.append(Finding(where, f"params.{key}", f"{value!r} is not {param.type_name}",
                                 f"give {key} a {param.type_name} value"))
    for param in signature.params:
        if param.required and param.name not in params:
            found.append(Finding(where, f"params.{param.name}", f"plugin {plugin!r} requires {param.name!r}",
                                 f"add {param.name} = ... to the check's params"))
    return found


def check_paths(where: str, plugin: str, params: Mapping[str, Any], hidden: Iterable[str] = (),
                private_tmp: bool = True, granted: Iterable[str] = ()) -> list[Finding]:
    """Paths in a built-in's well-known params: absolute, present and visible in the run's view (where the
    check's `read_paths` show the host's)."""
    granted = tuple(granted)
    found: list[Finding] = []
    for key in PATH_PARAMS.get(plugin, ()):
        value = params.get(key)
        if not isinstance(value, str) or not value:
            continue
        if not os.path.isabs(value):
            found.append(Finding(where, f"params.{key}", f"{value!r} is relative: it depends on the run's working "
                                 "directory, which is not the sidecar's", "give an absolute path"))
            continue
        if private_tmp and any(_within(value, d) for d in PRIVATE_DIRS) and not any(_within(value, g)
                                                                                     for g in granted):
            found.append(Finding(where, f"params.{key}", f"{value!r} is under {_private_root(value)}, which is "
                                 "private to each run: the run sees its own, empty one",
                                 f"grant it with read_paths = [{_grant(value)!r}] in the check's "
                                 "table, or keep the file elsewhere (e.g. under /var/lib or /run)"))
        elif any(_within(value, h) for h in hidden):
            found.append(Finding(where, f"params.{key}", f"{value!r} is hidden from plugins (the sidecar's own "
                                 "files)", "point the check at the application's files, not the sidecar's"))
        elif not os.path.exists(value):
            found.append(Finding(where, f"params.{key}", f"{value!r} does not exist", "create it or fix the path"))
    return found


def check_readable(where: str, path: str) -> list[Finding]:
    """A plugin file a run with a uid of its own (no groups) must read: the file and its directory by others."""
    try:
        file_mode = os.stat(path).st_mode
        dir_mode = os.stat(os.path.dirname(path) or ".").st_mode
    except OSError as exc:
        return [Finding(where, None, f"cannot stat the plugin file: {exc.strerror}", "check the path")]
    found: list[Finding] = []
    if not file_mode & stat.S_IROTH:
        found.append(Finding(where, None, f"the file is mode {stat.filemode(file_mode)}: runs, which take a uid of "
                             "their own, cannot read it", f"chmod o+r {path}"))
    if dir_mode & (stat.S_IROTH | stat.S_IXOTH) != stat.S_IROTH | stat.S_IXOTH:
        directory = os.path.dirname(path)
        found.append(Finding(where, None, f"its directory is mode {stat.filemode(dir_mode)}: runs, which take a uid "
                             "of their own, cannot list it", f"chmod o+rx {directory}"))
    return found


def _grant(path: str) -> str:
    """What to bind for `path`: itself if a directory, else its directory (never /tmp as a whole)."""
    return path if os.path.isdir(path) or os.path.dirname(path) in PRIVATE_DIRS else os.path.dirname(path)


def _within(path: str, directory: str) -> bool:
    path, directory = os.path.normpath(path), os.path.normpath(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _private_root(path: str) -> str:
    return next(d for d in PRIVATE_DIRS if _within(path, d))
