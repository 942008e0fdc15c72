"""Return the params unchanged.

Useful to an operator as a smoke test of the whole path (API → sandbox → metrics) with no side effects,
and to the test suite and benchmarks as the cheapest possible plugin: it imports nothing, so its runs
measure the sandbox's own overhead.
"""

from __future__ import annotations

description = "Return the params unchanged (smoke test of the run path; cheapest possible plugin)"
version = "1.0.0"


def run(**params: object) -> dict[str, object]:
    return params
