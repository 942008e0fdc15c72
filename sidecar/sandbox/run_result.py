"""What a run came to: the child's message combined with what the caller and the launcher saw, and the
results the sandbox makes up when the plugin could not answer (its launcher died or stalled, its template
failed, the sidecar is stopping). Every one says what happened, with the run's real times.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import time
from collections.abc import Callable
from typing import Any

from ..defaults import LAUNCHER_ANSWER_SECONDS
from .capture import Capture
from .launcher_process import LauncherProcess
from .protocol import ProtocolError, ResultMessage, TemplateFailed, result_message
from .result import ErrorInfo, ExitFacts, Outcome, PluginSandboxResult, decide_outcome, encodable, recorded_peak
from .run_request import RunRequest

__all__ = ["HOST_MEMORY_BYTES", "STOPPING", "Stalled", "build_result", "made_up", "stopped", "template_failed",
           "unreported"]

#: `stalled(launcher, why)`: replace a launcher that did not report a run's end in time (`pool.Sandbox._replace`)
Stalled = Callable[[LauncherProcess, str], None]


def _host_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 2**63 - 1


#: The ceiling of a peak memory figure: no process's resident set exceeds the host's memory.
HOST_MEMORY_BYTES = _host_memory()
#: In a result message's raw bytes, what may decode to a lone surrogate: the UTF-8 form of U+D800-U+DFFF
#: (the child encodes with `surrogatepass`) or a JSON `\uD800`-`\uDFFF` escape. Only then is it walked.
_MAY_HOLD_SURROGATES = re.compile(rb"\xed[\xa0-\xbf]|\\u[dD][89a-fA-F]")


def build_result(request: RunRequest, header: dict[str, Any], message: bytes) -> PluginSandboxResult:
    """Combine what the caller and the launcher observed with the child's message (pure).

    The message is the plugin's to forge: its strings are made encodable and its peak memory
    clamped (see `result`), and one that cannot be decoded makes the run a `crash`, never an error here.
    """
    name = request.plugin.name
    decoded: ResultMessage | None = None
    protocol_error = header.get("protocol_error")
    if message and protocol_error is None:
        try:
            decoded = result_message(message)
            if _MAY_HOLD_SURROGATES.search(message):
                decoded = encodable(decoded)
        except ProtocolError as exc:
            decoded, protocol_error = None, f"malformed result message ({exc})"
        except (ValueError, RecursionError) as exc:
            decoded, protocol_error = None, f"malformed result message ({type(exc).__name__}: {exc})"
    status = header.get("wait_status")
    facts = ExitFacts(
        wait_status=0 if status is None else int(status),
        timed_out=bool(header["timed_out"]),
        memory_killed=bool(header["memory_killed"]),
        memory_by=str(header.get("memory_by") or ""),
        message=decoded,
        protocol_error=protocol_error,
    )
    outcome, result, error = decide_outcome(facts, request.timeout_seconds, request.memory_limit_mb)
    # What the sidecar measured (the unit's cgroup peak, or the launcher's rusage of the run) comes first.
    peak = recorded_peak(header["peak_memory_bytes"], decoded.get("peak_memory_bytes") if decoded else None,
                         HOST_MEMORY_BYTES)
    return PluginSandboxResult.from_dict({
        "plugin": name,
        "outcome": outcome.value,
        "result": result,
        "error": None if error is None else {"type": error.type, "message": error.message,
                                             "traceback": error.traceback},
        "peak_memory_bytes": peak,
        "report": decoded.get("report") if decoded and outcome is Outcome.SUCCESS else None,
        **{k: header[k] for k in ("execution_time_ms", "started_at", "finished_at", "stdout", "stderr")},
    })


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def made_up(request: RunRequest, outcome: Outcome, error_type: str, message: str, started_at: float,
            t0: float) -> PluginSandboxResult:
    """A result the sandbox makes up (the launcher died or was replaced, a template hung, the sidecar is
    stopping): the run's real start and end, and an error naming what happened."""
    elapsed = time.monotonic() - t0
    return PluginSandboxResult(request.plugin.name, outcome, error=ErrorInfo(error_type, message),
                               execution_time_ms=elapsed * 1000.0, started_at=started_at,
                               finished_at=started_at + elapsed)


#: The error type of a run the sidecar's stop ended or refused.
STOPPING = "SidecarStopping"


def stopped(result: PluginSandboxResult) -> PluginSandboxResult:
    """A run the stop ended (its launcher killed it, or it could no longer start): `aborted`, `SidecarStopping`,
    with its real times and output. What the plugin itself answered in time stands."""
    if result.outcome not in (Outcome.CRASH, Outcome.ABORTED) or (result.error and result.error.type == STOPPING):
        return result
    return dataclasses.replace(result, outcome=Outcome.ABORTED, result=None, error=ErrorInfo(
        STOPPING, "the sidecar stopped while this run was in flight, after its grace period for runs "
                           "in flight (stop_grace_seconds): the run was ended"))


def template_failed(request: RunRequest, msg: TemplateFailed, t0: float,
                     started_at: float) -> PluginSandboxResult:
    """The run waited on its plugin's template, which failed it: the import's own outcome, or what the
    launcher saw (it hung in a fork, its import passed the run's deadline, it died importing)."""
    timeout = request.timeout_seconds
    if msg.get("hung"):
        late = time.monotonic() - t0 >= timeout
        return made_up(request, Outcome.TIMEOUT if late else Outcome.IMPORT, "TemplateHung",
                       f"the plugin's template did not answer a fork request within {msg.get('waited', 0):g} s "
                       "(an at-fork hook that blocks, or its state hangs a fork): it was killed, and the "
                       "plugin's next runs import it per run for a while", started_at, t0)
    if msg.get("timed_out"):
        return made_up(request, Outcome.TIMEOUT, "ImportTimeout",
                       f"importing the plugin did not finish within the run's timeout of {timeout:g} s: its "
                       "template was killed", started_at, t0)
    message = msg.get("message")
    if not message:  # it died importing the plugin (a crash at import, or killed): say which
        status = int(msg.get("status") or 0)
        how = (f"killed by {_signal_name(os.WTERMSIG(status))}" if os.WIFSIGNALED(status)
               else f"exited with status {os.WEXITSTATUS(status) if os.WIFEXITED(status) else status}")
        return made_up(request, Outcome.CRASH, "TemplateDied",
                       f"the plugin's template {how} while importing the plugin", started_at, t0)
    finished = time.monotonic()
    header: dict[str, Any] = {
        "wait_status": msg.get("status"), "timed_out": False, "memory_killed": False, "protocol_error": None,
        "execution_time_ms": (finished - t0) * 1000.0, "peak_memory_bytes": 0,
        "started_at": started_at, "finished_at": started_at + (finished - t0),
        "stdout": Capture(request.max_output_bytes).to_dict(),
        "stderr": Capture(request.max_output_bytes).to_dict(),
    }
    return build_result(request, header, json.dumps(message).encode())


def unreported(launcher: LauncherProcess, request: RunRequest, header: dict[str, Any], frames: list[bytes],
                protocol_error: str | None, t0: float, lost: str, stalled: Stalled) -> PluginSandboxResult:
    """The launcher did not report the run's end: say what happened, honestly, with the run's real times."""
    died = launcher.replaced is None and not launcher.alive()
    if not died and launcher.replaced is None:
        stalled(launcher, f"it did not report the end of a run within {LAUNCHER_ANSWER_SECONDS:g} s ({lost})")
    if frames and protocol_error is None:  # the plugin's own answer: its outcome stands (its peak is its own)
        return build_result(request, header, frames[0])
    elapsed = header["execution_time_ms"] / 1000.0
    if header["timed_out"] or elapsed >= request.timeout_seconds:
        error = ErrorInfo("LauncherStalled", f"run exceeded its timeout of {request.timeout_seconds:g} s and the "
                                             f"sandbox launcher did not end it ({launcher.replaced or lost}): "
                                             "the sidecar killed the run and replaced the launcher")
        outcome = Outcome.TIMEOUT
    elif died:
        error = ErrorInfo("LauncherDied", f"the sandbox launcher exited (status {launcher.proc.returncode}) "
                                          "while this run was in flight; the run ended with it")
        outcome = Outcome.ABORTED
    else:
        error = ErrorInfo("LauncherReplaced", f"the sandbox launcher was replaced while this run was in flight "
                                              f"({launcher.replaced or lost}); the run ended with it")
        outcome = Outcome.ABORTED
    return dataclasses.replace(PluginSandboxResult.from_dict({**header, "plugin": request.plugin.name,
                                                              "outcome": outcome.value}), error=error)
