"""The pool (`sidecar.sandbox.pool`): nobody waits on a launcher that stopped answering, and every result the
sandbox makes up (a launcher died or stalled, a template failed, the sidecar is stopping) says what happened."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path

from sidecar.sandbox.pool import Sandbox
from sidecar.sandbox.result import Outcome, PluginSandboxResult

from ..conftest import poll
from .conftest import run_named


def _in_flight(sb: Sandbox, tmp_path: Path, seconds: float = 30.0,
               timeout: float = 60.0) -> tuple[threading.Thread, dict[str, PluginSandboxResult]]:
    """A run of `seconds` that has started in its child (its mark written) when this returns."""
    mark = tmp_path / "started"
    done: dict[str, PluginSandboxResult] = {}
    caller = threading.Thread(target=lambda: done.update(r=run_named(sb, "mark_then_sleep", timeout=timeout,
                                                                     path=str(mark), seconds=seconds)))
    caller.start()
    poll("the run to start", lambda: (mark.exists(), None))
    return caller, done


def test_a_stopped_launcher_is_replaced_its_overdue_run_ends_timeout_and_readiness_says_so(tmp_path: Path):
    with Sandbox(templates=False) as sb:
        assert run_named(sb, "hello").outcome is Outcome.SUCCESS
        launcher = sb.launcher_pid
        assert launcher is not None
        caller, done = _in_flight(sb, tmp_path, timeout=1.0)
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
        assert run_named(sb, "hello").outcome is Outcome.SUCCESS


def test_a_run_of_a_stopped_launcher_gets_its_answer_and_the_launcher_is_replaced():
    with Sandbox(templates=False) as sb:
        assert run_named(sb, "hello").outcome is Outcome.SUCCESS
        launcher = sb.launcher_pid
        assert launcher is not None
        os.kill(launcher, signal.SIGSTOP)
        try:
            r = run_named(sb, "hello", timeout=30.0)
            assert r.outcome is Outcome.SUCCESS, r.error
            # Replaced by this run (it waited for a child) or, when it held one, by the watchdog's ping.
            poll("the stopped launcher to be replaced", lambda: (sb.replacements == 1, sb.replacements))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(launcher, signal.SIGCONT)
        assert sb.launcher_pid != launcher
        assert run_named(sb, "hello").outcome is Outcome.SUCCESS


def test_a_template_hung_in_an_at_fork_hook_ends_its_run_saying_so_then_the_plugin_imports_per_run():
    with Sandbox(templates=True) as sb:
        r = run_named(sb, "at_fork_hang", timeout=1.0)
        assert r.outcome is Outcome.TIMEOUT, r
        assert r.error is not None and r.error.type == "TemplateHung", r.error
        assert "fork request" in r.error.message
        assert r.finished_at > r.started_at
        again = run_named(sb, "at_fork_hang", timeout=5.0)  # backed off: imported per run
        assert again.outcome is Outcome.SUCCESS, again.error
        assert sb.replacements == 0


def test_a_template_that_hangs_before_the_runs_deadline_ends_it_as_import():
    with Sandbox(templates=True) as sb:
        r = run_named(sb, "at_fork_hang", timeout=20.0)
        assert r.outcome is Outcome.IMPORT, r
        assert r.error is not None and r.error.type == "TemplateHung", r.error


def test_a_closed_sandbox_aborts_a_run_saying_the_sidecar_is_stopping():
    sb = Sandbox(templates=False)
    sb.close()
    r = run_named(sb, "hello")
    assert r.outcome is Outcome.ABORTED
    assert r.error is not None and r.error.type == "SidecarStopping"
    assert r.started_at > 0 and r.finished_at >= r.started_at


def test_a_template_that_dies_importing_its_plugin_is_named_with_the_runs_real_times():
    with Sandbox(templates=True) as sb:
        r = run_named(sb, "import_segfault")
    assert r.outcome is Outcome.CRASH, r
    assert r.error is not None and r.error.type == "TemplateDied", r.error
    assert "SIGSEGV" in r.error.message and "importing" in r.error.message
    assert r.started_at > 0 and r.finished_at > r.started_at and r.execution_time_ms > 0


def test_a_run_whose_launcher_dies_is_aborted_naming_it_not_blamed_on_the_plugin(tmp_path: Path):
    with Sandbox(templates=False) as sb:
        assert run_named(sb, "hello").outcome is Outcome.SUCCESS
        launcher = sb.launcher_pid
        assert launcher is not None
        caller, done = _in_flight(sb, tmp_path, timeout=10.0)
        os.kill(launcher, signal.SIGKILL)
        caller.join()
        r = done["r"]
        assert r.outcome is Outcome.ABORTED, r
        assert r.error is not None and r.error.type == "LauncherDied", r.error
        assert r.started_at > 0 and r.finished_at > r.started_at
        assert run_named(sb, "hello").outcome is Outcome.SUCCESS  # the next run starts a new launcher


def test_close_lets_a_run_in_flight_finish_within_its_grace(tmp_path: Path):
    sb = Sandbox(templates=False)
    caller, done = _in_flight(sb, tmp_path, seconds=1.0)
    sb.close(grace=60.0)  # returns once the run has its answer
    caller.join()
    assert done["r"].outcome is Outcome.SUCCESS, done["r"]
    late = run_named(sb, "hello")  # and nothing starts after
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
