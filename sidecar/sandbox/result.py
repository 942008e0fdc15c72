"""What a sandboxed run produced, and the pure rules that decide its outcome.

Nothing here does I/O: the caller and the launcher report facts (the child's message, its exit
status, whether the deadline or the memory watch killed it) and `decide_outcome` turns them into
one `Outcome`. Keeping the rules pure keeps them testable without forking anything.

The child's message is plugin-controlled (a plugin can write its own frame on the result fd), so
what it says about itself is made safe here before anything stores or sends it: every string is
made encodable (`encodable`), the error record coerced to strings, and the peak memory recorded is
what the sidecar measured, the child's own figure only where nothing was measured (`recorded_peak`).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
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
    "encodable",
    "iso_utc",
    "recorded_peak",
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
    def from_dict(cls, d: Any) -> ErrorInfo:
        """From a dict that crossed a process boundary; anything else a child sent is kept as its text."""
        if not isinstance(d, dict):
            return cls("InvalidErrorRecord", f"the plugin process sent an error record that is not an object:"
                                             f" {d!r:.200}")
        tb = d.get("traceback")
        return cls(str(d.get("type", "")), str(d.get("message", "")), tb if isinstance(tb, str) else None)


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
    message: Mapping[str, Any] | None = None
    protocol_error: str | None = None


def _encodable_str(s: str) -> str:
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


def encodable(value: Any) -> Any:
    """`value` (decoded JSON) with every string, keys included, encodable as UTF-8.

    A lone surrogate (what a non-UTF-8 file name decoded with `surrogateescape` holds, or a forged
    `\\udcff` escape) becomes its backslash escape: `"\\udcff"` as six characters. SQLite, JSON
    encoders and the socket to the workers then take the value as it is.
    """
    if isinstance(value, str):
        return _encodable_str(value)
    if isinstance(value, list):
        return [encodable(v) for v in value]
    if isinstance(value, dict):
        return {_encodable_str(k) if isinstance(k, str) else k: encodable(v) for k, v in value.items()}
    return value


def iso_utc(ts: float) -> str:
    """A unix time as the JSON answers write it: ISO 8601, UTC, with a Z."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def recorded_peak(measured: Any, reported: Any, ceiling: int) -> int:
    """The peak memory to record: what the sidecar measured (the run's cgroup peak, or the launcher's wait4
    rusage) when it is a whole number of bytes > 0, else what the child reported if it is one; never above
    `ceiling` (the host's memory: no peak exceeds it) and never below 0."""
    for value in (measured, reported):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return min(value, ceiling)
    return 0


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
    #: what a successful run reported through `sidecar.check`, as the child sent it (unvalidated)
    report: Any = None

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.SUCCESS

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["outcome"] = self.outcome.value
        return d

    def to_answer(self) -> dict[str, Any]:
        """As every JSON answer gives it (HTTP, `sidecar run --json`): timestamps as ISO 8601 UTC strings.
        `to_dict` (the Python API, the wire) keeps unix floats."""
        d = self.to_dict()
        d["started_at"], d["finished_at"] = iso_utc(self.started_at), iso_utc(self.finished_at)
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
            report=d.get("report"),
        )
