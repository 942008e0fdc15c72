"""What a run came to (`sidecar.sandbox.run_result`): whatever a plugin forges on its result fd becomes a
result, never an error in the caller."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sidecar.sandbox.result import Outcome
from sidecar.sandbox.run_request import PluginRef, RunRequest
from sidecar.sandbox.run_result import HOST_MEMORY_BYTES, build_result

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
