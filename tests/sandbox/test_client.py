"""The runner's side of the sandbox (`sidecar.sandbox.client`): nobody waits on a launcher that stopped
answering, and every result the sandbox makes up says what happened.

`build_result`: whatever a plugin forges on its result fd becomes a result, never an error in the caller.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from sidecar.defaults import LAUNCHER_ANSWER_SECONDS
from sidecar.sandbox.client import HOST_MEMORY_BYTES, PluginRef, RunRequest, Sandbox, build_result
from sidecar.sandbox.result import Outcome, PluginSandboxResult

from ..conftest import poll
from .conftest import HOSTILE

REQUEST = RunRequest(PluginRef("forger", path="/nonexistent/forger.py"))


def _header(**kw: Any) -> dict[str, Any]:
    return {"wait_status": 0, "timed_out": False, "memory_killed": False, "protocol_error": None,
            "execution_time_ms": 1.0, "peak_memory_bytes": 4096, "started_at": 1.0, "finished_at": 1.001,
            "stdout": {}, "stderr": {}, **kw}


@pytest.mark.parametrize("message", [
    # raw UTF-8 of a lone surrogate, as the child's `surrogatepass` encoding writes it
    '{"outcome": "runtime", "error": {"type": "RuntimeError", "message": "x\udcff"}}'.encode("utf-8", "surrogatepass"),
    # the same as a JSON escape, as a forged frame may write it
    b'{"outcome": "runtime", "error": {"type": "RuntimeError", "message": "x\\udcff"}}',
])
def test_lone_surrogates_come_back_backslash_escaped(message: bytes) -> None:
    r = build_result(REQUEST, _header(), message)
    assert r.outcome is Outcome.RUNTIME and r.error is not None and r.error.message == "x\\udcff"


def test_a_forged_peak_is_ignored_or_clamped_and_a_forged_error_record_kept_as_text() -> None:
    forged = json.dumps({"outcome": "value", "error": "nope", "peak_memory_bytes": 10**30}).encode()
    r = build_result(REQUEST, _header(), forged)
    assert r.outcome is Outcome.VALUE and r.error is not None and r.error.type == "InvalidErrorRecord"
    assert r.peak_memory_bytes == 4096  # what the sidecar measured, not what the child claims
    # With nothing measured, the child's figure is the fallback: clamped to the host's memory.
    assert build_result(REQUEST, _header(peak_memory_bytes=0), forged).peak_memory_bytes == HOST_MEMORY_BYTES


def test_a_message_nested_past_the_recursion_limit_is_a_crash() -> None:
    r = build_result(REQUEST, _header(), b'{"outcome": "success", "result": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert r.outcome is Outcome.CRASH and r.error is not None and "malformed result message" in r.error.message


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _run(sb: Sandbox, name: str, timeout: float = 10.0, **params: Any) -> PluginSandboxResult:
    return sb.run(RunRequest(PluginRef(name, path=str(HOSTILE / f"{name}.py")), params, timeout_seconds=timeout))


def test_a_stopped_launcher_is_replaced_its_overdue_run_ends_timeout_and_readiness_says_so(tmp_path: Path):
    with Sandbox(templates=False) as sb:
        assert _run(sb, "hello").outcome is Outcome.SUCCESS
        launcher = sb.launcher_pid
        assert launcher is not None
        mark = tmp_path / "started"
        done: dict[str, PluginSandboxResult] = {}
        caller = threading.Thread(target=lambda: done.update(r=_run(sb, "mark_then_sleep", timeout=1.0,
                                                                    path=str(mark))))
        caller.start()
        poll("the run to start", lambda: (mark.exists(), None))
        os.kill(launcher, signal.SIGSTOP)
        try:
            why = poll("the sandbox to report the stalled launcher", lambda: (sb.problem() is not None, None))
            assert why is None
            caller.join()
        finally:
            with contextlib.suppress(ProcessLookupError):  # if it is still there: the test's own leftovers
                os.kill(launcher, signal.SIGCONT)
        r = done["r"]
        assert r.outcome is Outcome.TIMEOUT, r
        assert r.error is not None and r.error.type == "LauncherStalled", r.error
        assert r.started_at > 0 and r.finished_at > r.started_at
        assert sb.replacements == 1
        poll("the new launcher to answer", lambda: (sb.problem() is None, sb.problem()))
        assert sb.launcher_pid != launcher
        assert _run(sb, "hello").outcome is Outcome.SUCCESS


def test_a_run_of_a_stopped_launcher_gets_its_answer_and_the_launcher_is_replaced():
    with Sandbox(templates=False) as sb:
        assert _run(sb, "hello").outcome is Outcome.SUCCESS
        launcher = sb.launcher_pid
        assert launcher is not None
        os.kill(launcher, signal.SIGSTOP)
        try:
            r = _run(sb, "hello", timeout=30.0)
            assert r.outcome is Outcome.SUCCESS, r.error
            # Replaced by this run (it waited for a child) or, when it held one, by the watchdog's ping.
            poll("the stopped launcher to be replaced", lambda: (sb.replacements == 1, sb.replacements))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(launcher, signal.SIGCONT)
        assert sb.launcher_pid != launcher
        assert _run(sb, "hello").outcome is Outcome.SUCCESS


def test_a_run_holding_its_ticket_answers_without_the_launchers_exit_report_and_nothing_of_it_survives():
    """Where a run has a cgroup (`cgroup.kill`, a memory controller), the caller ends the unit itself once it has
    the result: a launcher that reports the exit late (here: stopped) neither delays the answer nor is replaced."""
    with Sandbox(templates=False) as sb:
        if not sb.cgroups.kill or not sb.cgroups.memory:
            pytest.skip(f"no cgroup.kill and memory controller here ({sb.containment})")
        assert _run(sb, "hello").outcome is Outcome.SUCCESS
        launcher = sb.launcher_pid
        assert launcher is not None
        channel = sb._idle[-1]
        while not channel.tickets:  # the next run's child is in hand: the launcher is not asked for one
            channel._receive(LAUNCHER_ANSWER_SECONDS)
        channel.stats()  # answered once the launcher is done handing it out (its copies of the pipes closed)
        os.kill(launcher, signal.SIGSTOP)
        try:
            r = _run(sb, "double_fork_daemon", timeout=30.0)
            assert r.outcome is Outcome.SUCCESS, r.error
            assert [p for p in r.result["pids"] if _alive(p)] == []  # at once, with the launcher stopped
            assert r.peak_memory_bytes > 0
            assert sb.replacements == 0
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(launcher, signal.SIGCONT)
        assert _run(sb, "hello").outcome is Outcome.SUCCESS


def test_a_template_hung_in_an_at_fork_hook_ends_its_run_saying_so_then_the_plugin_imports_per_run():
    with Sandbox(templates=True) as sb:
        r = _run(sb, "at_fork_hang", timeout=1.0)
        assert r.outcome is Outcome.TIMEOUT, r
        assert r.error is not None and r.error.type == "TemplateHung", r.error
        assert "fork request" in r.error.message
        assert r.finished_at > r.started_at
        again = _run(sb, "at_fork_hang", timeout=5.0)  # backed off: imported per run
        assert again.outcome is Outcome.SUCCESS, again.error
        assert sb.replacements == 0


def test_a_template_that_hangs_before_the_runs_deadline_ends_it_as_import():
    with Sandbox(templates=True) as sb:
        r = _run(sb, "at_fork_hang", timeout=20.0)
        assert r.outcome is Outcome.IMPORT, r
        assert r.error is not None and r.error.type == "TemplateHung", r.error


def test_a_closed_sandbox_aborts_a_run_saying_the_sidecar_is_stopping():
    sb = Sandbox(templates=False)
    sb.close()
    r = _run(sb, "hello")
    assert r.outcome is Outcome.ABORTED
    assert r.error is not None and r.error.type == "SidecarStopping"
    assert r.started_at > 0 and r.finished_at >= r.started_at


def test_a_template_that_dies_importing_its_plugin_is_named_with_the_runs_real_times():
    with Sandbox(templates=True) as sb:
        r = _run(sb, "import_segfault")
    assert r.outcome is Outcome.CRASH, r
    assert r.error is not None and r.error.type == "TemplateDied", r.error
    assert "SIGSEGV" in r.error.message and "importing" in r.error.message
    assert r.started_at > 0 and r.finished_at > r.started_at and r.execution_time_ms > 0


def test_a_run_whose_launcher_dies_is_aborted_naming_it_not_blamed_on_the_plugin(tmp_path: Path):
    with Sandbox(templates=False) as sb:
        assert _run(sb, "hello").outcome is Outcome.SUCCESS
        launcher = sb.launcher_pid
        assert launcher is not None
        mark = tmp_path / "started"
        done: dict[str, PluginSandboxResult] = {}
        caller = threading.Thread(target=lambda: done.update(r=_run(sb, "mark_then_sleep", path=str(mark))))
        caller.start()
        poll("the run to start", lambda: (mark.exists(), None))
        os.kill(launcher, signal.SIGKILL)
        caller.join()
        r = done["r"]
        assert r.outcome is Outcome.ABORTED, r
        assert r.error is not None and r.error.type == "LauncherDied", r.error
        assert r.started_at > 0 and r.finished_at > r.started_at
        assert _run(sb, "hello").outcome is Outcome.SUCCESS  # the next run starts a new launcher


def _in_flight(sb: Sandbox, tmp_path: Path, seconds: float) -> tuple[threading.Thread, dict[str, PluginSandboxResult]]:
    """A run of `seconds` that has started in its child (its mark written) when this returns."""
    mark = tmp_path / "started"
    done: dict[str, PluginSandboxResult] = {}
    caller = threading.Thread(target=lambda: done.update(r=_run(sb, "mark_then_sleep", timeout=60.0, path=str(mark),
                                                                seconds=seconds)))
    caller.start()
    poll("the run to start", lambda: (mark.exists(), None))
    return caller, done


def test_close_lets_a_run_in_flight_finish_within_its_grace(tmp_path: Path):
    sb = Sandbox(templates=False)
    caller, done = _in_flight(sb, tmp_path, seconds=1.0)
    sb.close(grace=60.0)  # returns once the run has its answer
    caller.join()
    assert done["r"].outcome is Outcome.SUCCESS, done["r"]
    late = _run(sb, "hello")  # and nothing starts after
    assert late.outcome is Outcome.ABORTED and late.error is not None and late.error.type == "SidecarStopping"


def test_close_ends_a_run_past_its_grace_as_the_sidecar_stopping_with_real_times(tmp_path: Path):
    sb = Sandbox(templates=False)
    caller, done = _in_flight(sb, tmp_path, seconds=30.0)
    sb.close(grace=0.2)
    caller.join()
    r = done["r"]
    assert r.outcome is Outcome.ABORTED, r  # not `crash`: the plugin did nothing wrong
    assert r.error is not None and r.error.type == "SidecarStopping", r.error
    assert "stop_grace_seconds" in r.error.message
    assert r.started_at > 0 and r.finished_at > r.started_at and r.execution_time_ms > 0
