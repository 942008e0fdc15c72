"""What a built-in reported through `sidecar.check` when called in-process (as the tests call them)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from sidecar import check


def critical(match: str, call: Callable[[], Any]) -> Any:
    """Call a built-in that finds its target down: it returns (the run succeeds) and reports state critical
    with a reason matching `match`; returns what it returned."""
    check.take()
    result = call()
    report = check.take()
    assert report is not None and report["state"] == "critical", (report, result)
    assert re.search(match, report["reason"]), report["reason"]
    return result


def state_of(call: Callable[[], Any]) -> tuple[str | None, Any]:
    """(state reported, result) of a call; None when it reported none (ok)."""
    check.take()
    result = call()
    report = check.take()
    return (report or {}).get("state"), result
