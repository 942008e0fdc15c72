"""A stand-in plugin that every spare child loads and runs before it waits for its request.

Pre-faulting: the first touch of a copy-on-write page costs a page fault, and importing and
calling a plugin touches a few hundred of them. A spare does that work on this module while
nobody is waiting, so the real run finds most pages already private.
"""

from __future__ import annotations

from typing import Any


def run(**params: Any) -> dict[str, Any]:
    return {"warm": True, "params": params}
