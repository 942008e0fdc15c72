"""Run an ordinary Python function in a sandboxed child: the engine of the guard API.

A thread pool cannot stop a function that hangs or allocates without bound; a child process can
be killed. So the function is not sent to the child (pickling code is fragile and runs it in the
caller's image): the child imports it *by reference* (`module` + name) with the caller's
`sys.path`, exactly as it imports a plugin, and calls it with JSON arguments. That is why only a
module-level function of an importable module qualifies, and why arguments and the return value
must be JSON. Every input is checked here, before any child is used.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .client import PluginRef, RunRequest, default_sandbox
from .result import PluginSandboxResult

__all__ = ["check_json", "function_ref", "run_guarded"]


def function_ref(func: Callable[..., Any]) -> PluginRef:
    """The child's way to find `func`: its module and name. TypeError says why a function has none."""
    if not callable(func):
        raise TypeError(f"{func!r} is not callable")
    module = getattr(func, "__module__", None)
    name = getattr(func, "__name__", None)
    qualname = getattr(func, "__qualname__", None)
    if not (isinstance(module, str) and isinstance(name, str) and isinstance(qualname, str)):
        raise TypeError(f"{func!r} has no module and name to be imported by in the sandboxed child; "
                        "pass a module-level function")
    if name == "<lambda>":
        raise TypeError("a lambda cannot be imported by the sandboxed child (it has no name in its module); "
                        "define it with `def` at module level")
    if "<locals>" in qualname:
        raise TypeError(f"{qualname} is a nested function or closure: the sandboxed child imports functions "
                        "by module and name and cannot reach it or the variables it encloses; define it at "
                        "module level and pass those values as arguments")
    if module == "__main__":
        raise TypeError(f"{name} is defined in __main__: the sandboxed child cannot import the caller's main "
                        "script; move it to an importable module")
    if qualname != name:
        raise TypeError(f"{module}.{qualname} is not a module-level function (a method or a callable "
                        "object); wrap the call in a module-level function")
    if getattr(sys.modules.get(module), name, None) is not func:
        raise TypeError(f"{module}.{name} does not name this function (the module's attribute is another "
                        "object), so the child would run something else")
    return PluginRef(f"{module}.{name}", module=module, attr=name)


def check_json(value: Any, where: str) -> None:
    """Raise unless `value` is made of JSON values only (TypeError; ValueError for NaN and infinity).

    Stricter than `json.dumps`, which would quietly turn a key 1 into "1": what the function gets
    in the child must be what the caller passed.
    """
    try:
        _check(value, where)
    except RecursionError:
        raise ValueError(f"{where} is nested too deeply (or refers to itself) to travel as JSON") from None


def _check(value: Any, where: str) -> None:
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value!r}: JSON has no NaN or infinity")
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has the key {key!r} ({type(key).__name__}): JSON object keys are strings")
            _check(item, f"{where}[{key!r}]")
        return
    raise TypeError(f"{where} is a {type(value).__qualname__}, not a JSON value "
                    "(None, bool, int, float, str, list, tuple or dict with str keys)")


def _caller_path() -> list[str]:
    """This process's import path, absolute (the child's working directory may differ), deduplicated."""
    out: list[str] = []
    for entry in sys.path:
        path = os.path.abspath(entry) if entry else os.getcwd()
        if path not in out:
            out.append(path)
    return out


def run_guarded(func: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any], *,
                timeout_seconds: float, memory_limit_mb: int) -> PluginSandboxResult:
    """Call `func(*args, **kwargs)` in a sandboxed child under both guards; the sandbox's full record.

    Raises (before anything runs) TypeError or ValueError for a function that cannot be imported by
    reference, arguments that are not JSON, or impossible limits; never for what `func` does.
    """
    ref = function_ref(func)
    for i, arg in enumerate(args):
        check_json(arg, f"argument {i}")
    for key, arg in kwargs.items():
        check_json(arg, f"keyword argument {key!r}")
    request = RunRequest(ref, dict(kwargs), timeout_seconds=timeout_seconds, memory_limit_mb=memory_limit_mb,
                         args=tuple(args), sys_path=_caller_path())
    return default_sandbox().run(request)
