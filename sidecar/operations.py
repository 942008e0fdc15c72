"""The runner's interface: every method a gunicorn worker may call, declared once, here.

`RunnerOperations` declares each operation; `Runner` implements it, the runner's socket server
dispatches to it, and `rpc.RunnerClient` forwards any declared name, so a new route needs the
route, the declaration here, the runner method and its schema, nothing in the relay. Declared in
a module of its own so that the workers import the interface without the runner (its store,
scheduler and sandbox client stay out of every worker). Two flags say how a call crosses the socket:

- `raw`: the method returns `(body, value)`; the body travels as its own frame, never
  JSON-encoded (a large scrape body), and the caller gets the same pair back.
- `resend`: safe to send again on a fresh connection when the first one dropped (reads);
  a run is not — a plugin must never run twice for one request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

__all__ = ["OPERATIONS", "Operation", "RunnerOperations", "operation", "operations_of"]

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


class RunnerOperations(Protocol):
    """What a worker may ask the runner; each returns plain JSON-able values or raises a `SidecarError`."""

    @operation(resend=False)  # a plugin never runs twice for one request
    def run(self, name: str, params: Any = None, timeout_seconds: Any = None) -> dict[str, Any]: ...

    @operation(resend=False)  # a counter: never bumped twice for one request
    def reject(self, name: str, reason: str) -> None: ...

    @operation()
    def plugins(self) -> list[dict[str, Any]]: ...

    @operation()
    def plugin(self, name: str) -> dict[str, Any]: ...

    @operation()
    def health(self, name: str) -> dict[str, Any]: ...

    @operation()
    def runs(self, name: str, limit: int = 20) -> list[dict[str, Any]]: ...

    @operation(raw=True)  # the scrape body travels as its own frame
    def render_metrics(self, openmetrics: bool = False) -> tuple[bytes, str]: ...

    @operation()
    def ready(self) -> dict[str, Any]: ...

    @operation()
    def ping(self) -> bool: ...

    @operation(resend=False)  # runs a plugin: never twice for one request
    def probe(self, name: str, params: Any = None, budget_seconds: float = 10.0) -> dict[str, Any]: ...

    @operation(resend=False)
    def reload(self) -> dict[str, Any]: ...

    @operation()
    def status(self) -> dict[str, Any]: ...


#: The operations a worker may call, by name.
OPERATIONS: dict[str, Operation] = operations_of(RunnerOperations)
