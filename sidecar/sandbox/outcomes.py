"""Outcome names and the exception → outcome rule.

Kept free of dataclasses and enum so the launcher, whose every import is memory each forked
child starts with, can use it cheaply. `result.Outcome` is the typed face of these strings.
"""

from __future__ import annotations

__all__ = ["ABORTED", "ERROR_OUTCOMES", "OUTCOMES", "classify_exception"]

OUTCOMES: tuple[str, ...] = ("success", "timeout", "memory", "import", "value", "runtime", "exception", "crash",
                             "aborted")
#: The plugin's failures: every outcome but success and `aborted` (the sidecar ended the run for a reason of its
#: own: it was stopping, or its launcher died or was replaced). The `error_type` label values of
#: `sidecar_plugin_errors_total`; an aborted run counts in none of the plugin's counters.
ERROR_OUTCOMES: tuple[str, ...] = OUTCOMES[1:-1]
#: Not the plugin's doing: no health verdict, no plugin error.
ABORTED = "aborted"


def classify_exception(exc: BaseException, *, during_import: bool = False) -> str:
    """Map an exception raised by plugin code to its outcome name.

    Anything raised while importing the plugin is `import` (a module that cannot load is broken
    whatever the reason), except MemoryError, which is always `memory`. SystemExit and
    KeyboardInterrupt fall through to `exception`.
    """
    if isinstance(exc, MemoryError):
        return "memory"
    if during_import or isinstance(exc, ImportError):
        return "import"
    if isinstance(exc, ValueError):
        return "value"
    if isinstance(exc, RuntimeError):  # RecursionError, NotImplementedError
        return "runtime"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "exception"
