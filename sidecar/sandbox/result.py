"""What a sandboxed run produced, and the pure rules that decide its outcome.

Nothing here does I/O: the caller and the launcher report facts (the child's message, its exit
status, whether the deadline or the memory watch killed it) and `decide_outcome` turns them into
one `Outcome`. Keeping the rules pure keeps them testable without forking anything.
"""

from __future__ import annotations

import os
import signal
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from .outcomes import ERROR_OUTCOMES
from .outcomes import classify_exception as _classify

__all__ = [
    "ERROR_OUTCOMES",
    "CapturedStream",
    "ErrorInfo",
    "ExitFacts",
    "Outcome",
    "PluginSandboxResult",
    "classify_exception",
    "decide_outcome",
]


class Outcome(StrEnum):
    SUCCESS = "success"
    TIMEOUT = "timeout"
    MEMORY = "memory"
    IMPORT = "import"
    VALUE = "value"
    RUNTIME = "runtime"
    EXCEPTION = "exception"
    CRASH = "crash"
    #: the sidecar ended the run for a reason of its own (stopping, its launcher died or was replaced)
    ABORTED = "aborted"


def classify_exception(exc: BaseException, *, during_import: bool = False) -> Outcome:
    """Typed wrapper of `outcomes.classify_exception`."""
    return Outcome(_classify(exc, during_import=during_import))


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    type: str
    message: str
    traceback: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ErrorInfo:
        return cls(str(d.get("type", "")), str(d.get("message", "")), d.get("traceback"))


@dataclass(frozen=True, slots=True)
class CapturedStream:
    """A bounded capture of stdout or stderr: head and tail kept, the middle elided."""

    text: str = ""
    truncated: bool = False
    total_bytes: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CapturedStream:
        return cls(str(d.get("text", "")), bool(d.get("truncated")), int(d.get("total_bytes", 0)))


@dataclass(frozen=True, slots=True)
class ExitFacts:
    """What the launcher observed about a finished child (input to `decide_outcome`)."""

    wait_status: int
    timed_out: bool = False
    memory_killed: bool = False
    #: what measured the memory: "cgroup" (the run's whole tree against memory.max) or "rss" (the run's
    #: leader's resident set, watched from outside); "" when unknown
    memory_by: str = ""
    #: the child's own report, decoded; None when it sent nothing usable
    message: dict[str, Any] | None = None
    protocol_error: str | None = None


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def decide_outcome(facts: ExitFacts, timeout_seconds: float, memory_limit_mb: int) -> tuple[
    Outcome, Any, ErrorInfo | None
]:
    """(outcome, result, error) for a finished child. Guards win over whatever the child said."""
    if facts.timed_out:
        return Outcome.TIMEOUT, None, ErrorInfo(
            "Timeout", f"run exceeded its timeout of {timeout_seconds:g} s; everything it started was killed"
        )
    if facts.memory_killed:
        measured = ("the memory of all its processes together (its cgroup, /tmp included)"
                    if facts.memory_by == "cgroup" else "its process's resident memory (watched every 100 ms)")
        return Outcome.MEMORY, None, ErrorInfo(
            "MemoryLimitExceeded",
            f"{measured} exceeded the limit of {memory_limit_mb} MB; everything the run started was killed",
        )
    msg = facts.message
    if msg is not None:
        outcome = Outcome(msg["outcome"])
        error = ErrorInfo.from_dict(msg["error"]) if msg.get("error") else None
        return outcome, msg.get("result"), error
    status = facts.wait_status
    if facts.protocol_error and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return Outcome.CRASH, None, ErrorInfo("NoResult", f"plugin process sent no valid result: "
                                                          f"{facts.protocol_error}")
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return Outcome.CRASH, None, ErrorInfo(
            "Killed", f"plugin process killed by {_signal_name(sig)} ({sig})"
        )
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
    detail = f": {facts.protocol_error}" if facts.protocol_error else ""
    return Outcome.CRASH, None, ErrorInfo(
        "NoResult", f"plugin process exited with status {code} without a result{detail}"
    )


@dataclass(frozen=True, slots=True)
class PluginSandboxResult:
    """The one record of a sandboxed run; crosses process boundaries as a dict."""

    plugin: str
    outcome: Outcome
    result: Any = None
    error: ErrorInfo | None = None
    execution_time_ms: float = 0.0
    peak_memory_bytes: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    stdout: CapturedStream = field(default_factory=CapturedStream)
    stderr: CapturedStream = field(default_factory=CapturedStream)

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.SUCCESS

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["outcome"] = self.outcome.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PluginSandboxResult:
        return cls(
            plugin=str(d["plugin"]),
            outcome=Outcome(d["outcome"]),
            result=d.get("result"),
            error=ErrorInfo.from_dict(d["error"]) if d.get("error") else None,
            execution_time_ms=float(d.get("execution_time_ms", 0.0)),
            peak_memory_bytes=int(d.get("peak_memory_bytes", 0)),
            started_at=float(d.get("started_at", 0.0)),
            finished_at=float(d.get("finished_at", 0.0)),
            stdout=CapturedStream.from_dict(d.get("stdout") or {}),
            stderr=CapturedStream.from_dict(d.get("stderr") or {}),
        )
