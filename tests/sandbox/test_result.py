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


@pytest.mark.parametrize(("reported", "measured", "peak"), [
    (10**30, 0, 1000),  # clamped to the host's memory
    (500, 0, 500),
    (-5, 300, 300),  # not a size: the launcher's figure
    (True, 300, 300),
    (1.5e9, 300, 300),
    ("7", 0, 0),
    (None, 2000, 1000),
])
def test_reported_peak_is_checked_and_clamped(reported, measured, peak):
    from sidecar.sandbox.result import reported_peak

    assert reported_peak(reported, measured, ceiling=1000) == peak


def test_an_error_record_that_is_not_an_object_is_kept_as_text():
    from sidecar.sandbox.result import ErrorInfo

    info = ErrorInfo.from_dict(["not", "a", "dict"])
    assert info.type == "InvalidErrorRecord" and "['not', 'a', 'dict']" in info.message
    assert ErrorInfo.from_dict({"type": "E", "message": "m", "traceback": 5}).traceback is None
