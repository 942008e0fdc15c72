"""The runner's operations: the methods a gunicorn worker may call, declared once on `Runner`.

A method marked `@operation` is exposed: the runner's socket server dispatches to it, and
`rpc.RunnerClient` forwards any declared name, so a new route needs the route, the runner
method and its schema, nothing in the relay. Two flags say how a call crosses the socket:

- `raw`: the method returns `(body, value)`; the body travels as its own frame, never
  JSON-encoded (a large scrape body), and the caller gets the same pair back.
- `resend`: safe to send again on a fresh connection when the first one dropped (reads);
  a run is not — a plugin must never run twice for one request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["Operation", "operation", "operations_of"]

F = TypeVar("F", bound=Callable[..., Any])

_MARK = "__sidecar_operation__"


@dataclass(frozen=True)
class Operation:
    name: str
    raw: bool = False
    resend: bool = True


def operation(*, raw: bool = False, resend: bool = True) -> Callable[[F], F]:
    """Mark a runner method as callable from workers (see the module docstring for the flags)."""

    def mark(fn: F) -> F:
        setattr(fn, _MARK, Operation(fn.__name__, raw, resend))
        return fn

    return mark


def operations_of(cls: type) -> dict[str, Operation]:
    """Every operation declared on `cls` (and its bases), by name."""
    found: dict[str, Operation] = {}
    for name in dir(cls):
        op = getattr(getattr(cls, name, None), _MARK, None)
        if isinstance(op, Operation):
            found[name] = op
    return found
