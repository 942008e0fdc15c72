"""The timeout guard as a library: run a function or a plugin, and really stop it at its deadline.

A thread pool's `future.result(timeout=...)` only stops *waiting*; the work goes on. Here the work
runs in a sandboxed child (its own process group, forked by the launcher), and at the deadline the
whole group is SIGKILLed. `func` must be a module-level function: the child imports it by
reference with the caller's `sys.path` (see `guarded_call`), and arguments and the return value
travel as JSON.

    >>> import time
    >>> from sidecar.sandbox import run_with_timeout
    >>> r = run_with_timeout(time.sleep, 5, timeout_seconds=0.5)
    >>> r.timed_out, r.value, r.error.type
    (True, None, 'Timeout')
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .client import DEFAULT_MEMORY_LIMIT_MB, DEFAULT_TIMEOUT_SECONDS, PluginRef, RunRequest, default_sandbox
from .guarded_call import check_json, run_guarded
from .result import ErrorInfo, Outcome, PluginSandboxResult

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "TimeoutGuardResult",
    "run_sandboxed_with_timeout",
    "run_with_guards",
    "run_with_timeout",
]


@dataclass(frozen=True, slots=True)
class TimeoutGuardResult:
    """What a timeout-guarded call produced."""

    #: the function's return value (None unless `outcome` is success)
    value: Any
    #: the run ended with outcome `timeout`: killed at the deadline (or it raised TimeoutError itself)
    timed_out: bool
    execution_time_ms: float
    #: the deadline the run had
    timeout_seconds: float
    #: the sandbox's error record (type, message, traceback), None on success
    error: ErrorInfo | None
    #: the sandbox's classification: success, timeout, memory, import, value, runtime, exception, crash
    outcome: Outcome

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.SUCCESS

    @classmethod
    def from_run(cls, run: PluginSandboxResult, timeout_seconds: float) -> TimeoutGuardResult:
        return cls(run.result, run.outcome is Outcome.TIMEOUT, run.execution_time_ms, timeout_seconds, run.error,
                   run.outcome)


def run_with_timeout(func: Callable[..., Any], *args: Any, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
                     **kwargs: Any) -> TimeoutGuardResult:
    """Call `func(*args, **kwargs)` in a sandboxed child; kill it (and its descendants) at the deadline.

    The memory guard applies too, at its default (`DEFAULT_MEMORY_LIMIT_MB`). Raises TypeError or
    ValueError before anything runs when `func` cannot be imported by reference (a lambda, a
    closure, a function of `__main__`), when an argument is not JSON, or for an impossible timeout;
    never for what `func` does: that is in `outcome` and `error`.
    """
    run = run_guarded(func, args, kwargs, timeout_seconds=timeout_seconds, memory_limit_mb=DEFAULT_MEMORY_LIMIT_MB)
    return TimeoutGuardResult.from_run(run, timeout_seconds)


def run_with_guards(func: Callable[..., Any], *args: Any, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
                    memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB, **kwargs: Any) -> PluginSandboxResult:
    """Both guards with their limits chosen; returns the sandbox's full record of the run.

    The record has what both guard results have and more: `outcome`, `result`, `error`,
    `execution_time_ms`, `peak_memory_bytes`, and the captured `stdout` and `stderr`.
    """
    return run_guarded(func, args, kwargs, timeout_seconds=timeout_seconds, memory_limit_mb=memory_limit_mb)


def _plugin_request(plugin: str, params: Mapping[str, Any], timeout_seconds: float | None) -> RunRequest:
    """A run of a plugin file or a registered plugin, with the limits its metadata declares."""
    bound: Mapping[str, Any] = {}  # a configured check's params
    own_timeout: float | None
    memory: int | None
    if plugin.endswith(".py") or os.sep in plugin:  # plugin names are [a-z][a-z0-9_]*: never a path
        from ..plugins.metadata import read_metadata

        path = os.path.abspath(plugin)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no plugin file {path}")
        with open(path, encoding="utf-8") as f:
            meta = read_metadata(f.read(), path)
        ref = PluginRef(os.path.splitext(os.path.basename(path))[0], path=path)
        own_timeout, memory = meta.timeout_seconds, meta.memory_limit_mb
    else:
        from ..config import load_settings
        from ..plugins.registry import discover

        entry = discover(load_settings()).get(plugin)  # built-ins, SIDECAR_PLUGIN_PATH, entry points, checks
        ref, own_timeout, memory, bound = entry.ref, entry.timeout_seconds, entry.memory_limit_mb, entry.params
    timeout = timeout_seconds if timeout_seconds is not None else own_timeout or DEFAULT_TIMEOUT_SECONDS
    return RunRequest(ref, {**bound, **params}, timeout_seconds=timeout,
                      memory_limit_mb=memory or DEFAULT_MEMORY_LIMIT_MB)


def run_sandboxed_with_timeout(plugin: str, params: Mapping[str, Any] | None = None,
                               timeout_seconds: float | None = None) -> TimeoutGuardResult:
    """Run a plugin once under its guards: `plugin` is a registered name or a path to a plugin file.

    Names resolve as `sidecar run NAME` resolves them (built-ins, `SIDECAR_PLUGIN_PATH`, entry
    points, configured checks, whose bound params come first). `timeout_seconds` None means the
    plugin's own `timeout_seconds` metadata, else `DEFAULT_TIMEOUT_SECONDS`; the memory limit is
    the plugin's `memory_limit_mb`, else `DEFAULT_MEMORY_LIMIT_MB`. Raises PluginNotFound for an
    unknown name, FileNotFoundError for a missing file, TypeError or ValueError for params that
    are not JSON or an impossible timeout, all before anything runs.
    """
    params = dict(params or {})
    check_json(params, "params")
    request = _plugin_request(plugin, params, timeout_seconds)
    return TimeoutGuardResult.from_run(default_sandbox().run(request), request.timeout_seconds)
