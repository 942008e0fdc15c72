"""The memory guard as a library: run a function under a memory limit it cannot escape.

The function runs in a sandboxed child (see `guarded_call`) with `RLIMIT_AS` set to the limit, so
an allocation past it raises MemoryError there, and its resident memory is watched from outside
as a second line (the process group is killed if it passes the limit anyway). Either way the
caller's process is untouched and gets a `MemoryGuardResult`.

    >>> from sidecar.sandbox import run_with_memory_guard
    >>> r = run_with_memory_guard(bytearray, 512 * 1024 * 1024, memory_limit_mb=256)
    >>> r.exceeded, r.error.type
    (True, 'MemoryError')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .client import DEFAULT_MEMORY_LIMIT_MB, DEFAULT_TIMEOUT_SECONDS
from .guarded_call import run_guarded
from .result import ErrorInfo, Outcome, PluginSandboxResult

__all__ = ["DEFAULT_MEMORY_LIMIT_MB", "MemoryGuardResult", "get_memory_usage_bytes", "run_with_memory_guard"]

_MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class MemoryGuardResult:
    """What a memory-guarded call produced."""

    #: the function's return value (None unless `outcome` is success)
    value: Any
    #: the child's own peak resident set size (its `ru_maxrss`), interpreter included
    peak_memory_bytes: int
    #: the limit the run had, in bytes
    limit_bytes: int
    #: the run ended with outcome `memory`: an allocation failed under the limit, or the watch killed it
    exceeded: bool
    #: the sandbox's error record (type, message, traceback), None on success
    error: ErrorInfo | None
    #: the sandbox's classification: success, timeout, memory, import, value, runtime, exception, crash
    outcome: Outcome

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.SUCCESS

    @classmethod
    def from_run(cls, run: PluginSandboxResult, memory_limit_mb: int) -> MemoryGuardResult:
        return cls(run.result, run.peak_memory_bytes, memory_limit_mb * _MB, run.outcome is Outcome.MEMORY,
                   run.error, run.outcome)


def get_memory_usage_bytes(pid: int | None = None) -> int:
    """Resident set size of a process in bytes (this one by default), from psutil.

    Raises psutil.NoSuchProcess for a pid that does not exist (psutil.AccessDenied where it may
    not be read).
    """
    import psutil  # imported on use: `sidecar.sandbox` stays cheap to import

    return int(psutil.Process(pid).memory_info().rss)


def run_with_memory_guard(func: Callable[..., Any], *args: Any, memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB,
                          **kwargs: Any) -> MemoryGuardResult:
    """Call `func(*args, **kwargs)` in a sandboxed child limited to `memory_limit_mb` of address space.

    The limit counts address space, the interpreter included (~30 MB), so a limit near that cannot
    run anything. The timeout guard applies too, at its default (`DEFAULT_TIMEOUT_SECONDS`).
    Raises TypeError or ValueError before anything runs when `func` cannot be imported by
    reference (a lambda, a closure, a function of `__main__`), when an argument is not JSON, or
    for an impossible limit; never for what `func` does: that is in `outcome` and `error`.
    """
    run = run_guarded(func, args, kwargs, timeout_seconds=DEFAULT_TIMEOUT_SECONDS, memory_limit_mb=memory_limit_mb)
    return MemoryGuardResult.from_run(run, memory_limit_mb)
