"""Sleep for a while, then report how long.

Useful to an operator to see timeouts, concurrency limits and the `503 Retry-After` back-pressure in
action without touching anything real; used by the tests and benchmarks for the same reasons.
"""

from __future__ import annotations

import math
import time

description = "Sleep for `seconds` (default 1.0) and return {'slept': seconds}; exercises timeouts and limits"
version = "1.0.0"


def run(seconds: float = 1.0) -> dict[str, float]:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValueError(f"seconds must be a number, got {type(seconds).__name__}: {seconds!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
    time.sleep(seconds)
    return {"slept": seconds}
