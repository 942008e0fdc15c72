"""One run on its ticket (`sidecar.sandbox.drive`): the caller ends the run's unit itself once it has the result."""

from __future__ import annotations

import contextlib
import os
import signal

import pytest

from sidecar.defaults import LAUNCHER_ANSWER_SECONDS
from sidecar.sandbox.pool import Sandbox
from sidecar.sandbox.result import Outcome

from .conftest import alive, run_named


def test_a_run_holding_its_ticket_answers_without_the_launchers_exit_report_and_nothing_of_it_survives():
    """Where a run has a cgroup (`cgroup.kill`, a memory controller), the caller ends the unit itself once it has
    the result: a launcher that reports the exit late (here: stopped) neither delays the answer nor is replaced."""
    with Sandbox(templates=False) as sb:
        if not sb.cgroups.kill or not sb.cgroups.memory:
            pytest.skip(f"no cgroup.kill and memory controller here ({sb.containment})")
        assert run_named(sb, "hello").outcome is Outcome.SUCCESS
        launcher = sb.launcher_pid
        assert launcher is not None
        channel = sb._idle[-1]
        while not channel.tickets:  # the next run's child is in hand: the launcher is not asked for one
            channel._receive(LAUNCHER_ANSWER_SECONDS)
        channel.stats()  # answered once the launcher is done handing it out (its copies of the pipes closed)
        os.kill(launcher, signal.SIGSTOP)
        try:
            r = run_named(sb, "double_fork_daemon", timeout=30.0)
            assert r.outcome is Outcome.SUCCESS, r.error
            assert [p for p in r.result["pids"] if alive(p)] == []  # at once, with the launcher stopped
            assert r.peak_memory_bytes > 0
            assert sb.replacements == 0
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(launcher, signal.SIGCONT)
        assert run_named(sb, "hello").outcome is Outcome.SUCCESS
