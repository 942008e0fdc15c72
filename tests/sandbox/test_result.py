"""The pure outcome rules, without forking anything."""

from __future__ import annotations

import os
import signal

import pytest

from sidecar.sandbox.result import ExitFacts, Outcome, PluginSandboxResult, classify_exception, decide_outcome


def _signalled(sig: int) -> int:
    return sig  # a wait status whose low 7 bits are the signal: WIFSIGNALED


def _exited(code: int) -> int:
    return code << 8


@pytest.mark.parametrize(("exc", "during_import", "outcome"), [
    (MemoryError(), True, Outcome.MEMORY),
    (ValueError(), True, Outcome.IMPORT),
    (SyntaxError(), True, Outcome.IMPORT),
    (ModuleNotFoundError(), False, Outcome.IMPORT),
    (UnicodeDecodeError("utf-8", b"", 0, 1, "x"), False, Outcome.VALUE),
    (RecursionError(), False, Outcome.RUNTIME),
    (TimeoutError(), False, Outcome.TIMEOUT),
    (SystemExit(1), False, Outcome.EXCEPTION),
    (KeyboardInterrupt(), False, Outcome.EXCEPTION),
    (OSError(), False, Outcome.EXCEPTION),
])
def test_classify_exception(exc, during_import, outcome):
    assert classify_exception(exc, during_import=during_import) is outcome


def test_guards_win_over_the_message():
    msg = {"outcome": "success", "result": 1}
    assert decide_outcome(ExitFacts(0, timed_out=True, message=msg), 2, 64)[0] is Outcome.TIMEOUT
    assert decide_outcome(ExitFacts(0, memory_killed=True, message=msg), 2, 64)[0] is Outcome.MEMORY
    assert decide_outcome(ExitFacts(0, message=msg), 2, 64)[:2] == (Outcome.SUCCESS, 1)


def test_no_message_is_a_crash_that_says_why():
    out, _, err = decide_outcome(ExitFacts(_signalled(signal.SIGSEGV)), 2, 64)
    assert out is Outcome.CRASH and err is not None and "SIGSEGV" in err.message
    assert os.WIFEXITED(_exited(3))
    out, _, err = decide_outcome(ExitFacts(_exited(3)), 2, 64)
    assert out is Outcome.CRASH and err is not None and "status 3" in err.message
    out, _, err = decide_outcome(ExitFacts(0, protocol_error="incomplete result frame"), 2, 64)
    assert out is Outcome.CRASH and err is not None and "incomplete" in err.message


def test_result_round_trips_through_a_dict():
    r = PluginSandboxResult("p", Outcome.VALUE, None, None, 1.5, 10, 1.0, 2.0)
    assert PluginSandboxResult.from_dict(r.to_dict()) == r


def test_a_memory_kill_says_what_was_measured():
    _o, _r, by_cgroup = decide_outcome(ExitFacts(9, memory_killed=True, memory_by="cgroup"), 1.0, 256)
    _o, _r, by_rss = decide_outcome(ExitFacts(9, memory_killed=True, memory_by="rss"), 1.0, 256)
    assert by_cgroup is not None and "all its processes together" in by_cgroup.message and "256 MB" in by_cgroup.message
    assert by_rss is not None and "resident memory" in by_rss.message
    assert "process group" not in by_cgroup.message + by_rss.message  # the unit is a session or a cgroup
