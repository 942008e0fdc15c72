"""Real misbehaving plugins: each must end with the right outcome, within its guard, harmlessly."""

from __future__ import annotations

import os
import time
from typing import Any

import psutil
import pytest

from sidecar.sandbox.client import Sandbox
from sidecar.sandbox.result import Outcome
from sidecar.sandbox.run_result import HOST_MEMORY_BYTES

#: Slack the guards get beyond a run's timeout (the issue's bound: timeout + 1 s).
SLACK_MS = 1000.0


def _gone(pids: list[int], within: float = 5.0) -> list[int]:
    """Poll until none of pids is a live process; returns the ones still alive at the deadline."""
    deadline = time.monotonic() + within
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.02)


def test_parameters_that_do_not_fit_run_are_a_value_error(run_hostile):
    r = run_hostile("hello", nonsense=1)
    assert r.outcome is Outcome.VALUE
    assert r.error is not None and r.error.type == "TypeError"
    assert "nonsense" in r.error.message
    # a TypeError raised inside the plugin is still an ordinary exception
    assert run_hostile("raises", kind="TypeError").outcome is Outcome.EXCEPTION


def test_success_with_output(run_hostile):
    r = run_hostile("hello", name="sidecar")
    assert r.outcome is Outcome.SUCCESS
    assert r.result == {"greeting": "hello sidecar"}
    assert r.stdout.text == "hello sidecar\n"
    assert r.error is None
    assert r.peak_memory_bytes > 0
    assert r.execution_time_ms > 0
    assert r.finished_at >= r.started_at


@pytest.mark.parametrize("name", ["loop", "sigterm_sleeper"])
def test_runaway_is_killed_at_the_deadline(run_hostile, name):
    r = run_hostile(name, timeout=1.0)
    assert r.outcome is Outcome.TIMEOUT
    assert r.error is not None and r.error.type == "Timeout"
    assert r.execution_time_ms < 1000.0 + SLACK_MS


def test_import_that_hangs_times_out(run_hostile):
    r = run_hostile("import_hang", timeout=1.0)
    assert r.outcome is Outcome.TIMEOUT
    assert r.execution_time_ms < 1000.0 + SLACK_MS


def test_memory_bomb_gets_memory_error(run_hostile):
    r = run_hostile("memory_bomb", memory_mb=200)
    assert r.outcome is Outcome.MEMORY
    assert r.error is not None and r.error.type == "MemoryError"
    assert r.peak_memory_bytes <= 200 * 1024 * 1024


def test_segfault_is_a_crash(run_hostile):
    r = run_hostile("segfault")
    assert r.outcome is Outcome.CRASH
    assert r.error is not None and "SIGSEGV" in r.error.message


def test_os_exit_without_result_is_a_crash(run_hostile):
    r = run_hostile("os_exit")
    assert r.outcome is Outcome.CRASH
    assert r.error is not None and "status 3" in r.error.message


@pytest.mark.parametrize(("name", "error_type"), [("sys_exit", "SystemExit"),
                                                  ("keyboard_interrupt", "KeyboardInterrupt")])
def test_base_exceptions_are_exception_outcomes(run_hostile, name, error_type):
    r = run_hostile(name)
    assert r.outcome is Outcome.EXCEPTION
    assert r.error is not None and r.error.type == error_type


@pytest.mark.parametrize(("kind", "outcome"), [
    ("ValueError", Outcome.VALUE),
    ("UnicodeError", Outcome.VALUE),
    ("RuntimeError", Outcome.RUNTIME),
    ("NotImplementedError", Outcome.RUNTIME),
    ("RecursionError", Outcome.RUNTIME),
    ("ImportError", Outcome.IMPORT),
    ("ModuleNotFoundError", Outcome.IMPORT),
    ("MemoryError", Outcome.MEMORY),
    ("TimeoutError", Outcome.TIMEOUT),
    ("TypeError", Outcome.EXCEPTION),
    ("KeyError", Outcome.EXCEPTION),
])
def test_exception_families(run_hostile, kind, outcome):
    r = run_hostile("raises", kind=kind)
    assert r.outcome is outcome
    assert r.error is not None
    assert r.error.type == kind
    assert r.error.traceback and "raises.py" in r.error.traceback


@pytest.mark.parametrize(("name", "error_type"), [
    ("syntax_error", "SyntaxError"),
    ("missing_dependency", "ModuleNotFoundError"),
    ("import_crash", "ValueError"),
    ("no_run", "ImportError"),
])
def test_broken_imports(run_hostile, name, error_type):
    r = run_hostile(name)
    assert r.outcome is Outcome.IMPORT
    assert r.error is not None and r.error.type == error_type


def test_output_flood_is_bounded_and_does_not_block(run_hostile):
    r = run_hostile("output_flood", timeout=30.0, megabytes=200)
    assert r.outcome is Outcome.SUCCESS
    assert r.result == "flooded"
    for stream in (r.stdout, r.stderr):
        assert stream.truncated
        assert stream.total_bytes == 100 * 1024 * 1024
        assert len(stream.text) < 128 * 1024


def test_huge_result_is_refused(run_hostile):
    r = run_hostile("big_result", timeout=60.0, megabytes=300)  # encoding 300 MB is slow on a loaded machine
    assert r.outcome is Outcome.VALUE
    assert r.error is not None and r.error.type == "ResultTooLarge"


@pytest.mark.parametrize("name", ["unserialisable", "not_json"])
def test_unserialisable_result(run_hostile, name):
    r = run_hostile(name)
    assert r.outcome is Outcome.VALUE
    assert r.error is not None and r.error.type == "ResultNotSerializable"


@pytest.mark.parametrize("name", ["grandchild", "double_fork_daemon"])
def test_descendants_do_not_outlive_the_run(run_hostile, name):
    r = run_hostile(name)
    assert r.outcome is Outcome.SUCCESS, r.error
    pids = r.result["pids"]
    assert pids
    assert _gone(pids) == []


def test_hundreds_of_children_are_all_killed(run_hostile):
    r = run_hostile("fork_many", timeout=20.0, count=300)
    assert r.outcome is Outcome.SUCCESS, r.error
    assert len(r.result["pids"]) == 300
    assert _gone(r.result["pids"], within=10.0) == []


def test_environment_is_scrubbed(run_hostile):
    r = run_hostile("read_env")
    assert r.outcome is Outcome.SUCCESS
    env = r.result
    assert not [k for k in env if k.startswith("SIDECAR_")]
    assert "s3cret-token" not in env.values()
    assert env["OPERATOR_EXTRA"] == "passed"
    assert env["OPENBLAS_NUM_THREADS"] == "1"


def test_core_dumps_are_off_and_the_caller_is_unharmed(run_hostile):
    run_hostile("hello")
    before = psutil.Process().num_fds()
    for _ in range(5):
        run_hostile("segfault")
        run_hostile("loop", timeout=0.2)
    # A channel holds up to two tickets of five fds each (four pipe ends, a pidfd); a leak per run would
    # exceed that.
    assert psutil.Process().num_fds() <= before + 10
    assert run_hostile("hello").outcome is Outcome.SUCCESS


def test_launcher_death_fails_runs_and_recovers():
    with Sandbox() as sb:
        from sidecar.sandbox.client import PluginRef, RunRequest

        from .conftest import HOSTILE

        ok = RunRequest(PluginRef("hello", path=str(HOSTILE / "hello.py")))
        assert sb.run(ok).outcome is Outcome.SUCCESS
        pid = sb.launcher_pid
        assert pid is not None
        os.kill(pid, 9)
        psutil.Process(pid).wait(timeout=5) if psutil.pid_exists(pid) else None
        first = sb.run(ok)
        # The dead launcher is noticed either before the run (fresh launcher) or during it (crash).
        assert first.outcome in (Outcome.SUCCESS, Outcome.CRASH)
        assert sb.run(ok).outcome is Outcome.SUCCESS
        assert sb.launcher_pid != pid


def test_concurrent_callers_each_get_their_own_result(sandbox):
    """Four threads share one launcher; a caller thread's exit must not take the launcher down."""
    import threading

    from sidecar.sandbox.client import PluginRef, RunRequest

    from .conftest import HOSTILE

    ref = PluginRef("hello", path=str(HOSTILE / "hello.py"))
    results: list[tuple[str, object]] = []

    def drive(tag: str) -> None:
        for i in range(15):
            r = sandbox.run(RunRequest(ref, {"name": f"{tag}{i}"}))
            results.append((f"{tag}{i}", r.result))

    threads = [threading.Thread(target=drive, args=(t,)) for t in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 60
    assert all(res == {"greeting": f"hello {name}"} for name, res in results)
    # the threads that spawned the launcher are gone; it still serves
    assert sandbox.run(RunRequest(ref, {"name": "after"})).result == {"greeting": "hello after"}


def test_outside_rss_watch_catches_a_plugin_that_lifts_its_rlimit(run_hostile):
    if os.geteuid() != 0:
        pytest.skip("only root (CAP_SYS_RESOURCE) can raise its own hard RLIMIT_AS")
    r = run_hostile("raise_own_limit", timeout=30.0, memory_mb=150, megabytes=2000)
    if r.outcome is Outcome.VALUE and r.error and "not allowed to raise" in r.error.message:
        pytest.skip("this root lacks CAP_SYS_RESOURCE, so the rlimit itself holds")
    assert r.outcome is Outcome.MEMORY
    assert r.error is not None and r.error.type == "MemoryLimitExceeded"


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), 0, -1])
def test_impossible_limits_are_refused_before_anything_runs(timeout):
    from sidecar.sandbox.client import PluginRef, RunRequest, run_plugin_sandboxed

    from .conftest import HOSTILE

    with pytest.raises(ValueError, match="timeout_seconds"):
        RunRequest(PluginRef("loop", path=str(HOSTILE / "loop.py")), timeout_seconds=timeout)
    with pytest.raises(ValueError, match="timeout_seconds"):
        run_plugin_sandboxed(str(HOSTILE / "loop.py"), timeout_seconds=timeout)


def test_one_runs_end_does_not_kill_another_runs_daemon(run_hostile):
    """Escaped descendants die when their run ends, not when some other run does."""
    import threading

    done: dict[str, Any] = {}
    slow = threading.Thread(target=lambda: done.update(r=run_hostile("daemon_checked", wait=1.0)))
    slow.start()
    ends = 0
    while slow.is_alive():
        assert run_hostile("hello").outcome is Outcome.SUCCESS
        ends += 1
    slow.join()
    r = done["r"]
    assert r.outcome is Outcome.SUCCESS, r.error
    assert ends > 1 and r.result["alive"] is True
    assert _gone(r.result["pids"]) == []


def test_a_lone_surrogate_in_the_message_comes_back_backslash_escaped(run_hostile):
    r = run_hostile("surrogate_error")
    assert r.outcome is Outcome.RUNTIME
    assert r.error is not None and r.error.message == "cannot read report-\\udcff.txt"
    r.error.message.encode("utf-8")  # storable and sendable as it is


def test_a_forged_result_frame_cannot_claim_more_memory_than_the_host_has(run_hostile):
    r = run_hostile("forged_result")
    assert r.outcome is Outcome.SUCCESS and r.result == {"forged": True}
    assert 0 <= r.peak_memory_bytes <= HOST_MEMORY_BYTES
