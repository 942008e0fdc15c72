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


def test_strings_are_made_encodable_keys_included():
    from sidecar.sandbox.result import encodable

    value = {"a\udcff": ["x\ud800y", {"k": "ok"}], "n": 1, "f": 1.5, "none": None}
    assert encodable(value) == {"a\\udcff": ["x\\ud800y", {"k": "ok"}], "n": 1, "f": 1.5, "none": None}
    assert encodable("plain é") == "plain é"


@pytest.mark.parametrize(("measured", "reported", "peak"), [
    (300, 500, 300),  # what the sidecar measured wins over what the child says
    (0, 10**30, 1000),  # nothing measured: the child's figure, clamped to the host's memory
    (0, 500, 500),
    (10**30, 5, 1000),
    (300, -5, 300),
    (0, -5, 0),  # not a size
    (0, True, 0),
    (0, 1.5e9, 0),
    (0, "7", 0),
    (None, None, 0),
])
def test_recorded_peak_prefers_the_measured_figure_and_is_clamped(measured, reported, peak):
    from sidecar.sandbox.result import recorded_peak

    assert recorded_peak(measured, reported, ceiling=1000) == peak


def test_an_error_record_that_is_not_an_object_is_kept_as_text():
    from sidecar.sandbox.result import ErrorInfo

    info = ErrorInfo.from_dict(["not", "a", "dict"])
    assert info.type == "InvalidErrorRecord" and "['not', 'a', 'dict']" in info.message
    assert ErrorInfo.from_dict({"type": "E", "message": "m", "traceback": 5}).traceback is None


def test_a_memory_kill_says_what_was_measured():
    _o, _r, by_cgroup = decide_outcome(ExitFacts(9, memory_killed=True, memory_by="cgroup"), 1.0, 256)
    _o, _r, by_rss = decide_outcome(ExitFacts(9, memory_killed=True, memory_by="rss"), 1.0, 256)
    assert by_cgroup is not None and "all its processes together" in by_cgroup.message and "256 MB" in by_cgroup.message
    assert by_rss is not None and "resident memory" in by_rss.message
    assert "process group" not in by_cgroup.message + by_rss.message  # the unit is a session or a cgroup
