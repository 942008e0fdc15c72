"""Module-level functions the guard tests run in sandboxed children (imported there by reference).

Keep imports light: the child imports this module on every run.
"""

from __future__ import annotations

import os
import time
from typing import Any


def add(a: int, b: int, *, scale: int = 1) -> int:
    return (a + b) * scale


def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"args": list(args), "kwargs": kwargs}


def hang(pid_file: str) -> None:
    """Record this process's pid, then never return (and ignore SIGTERM: only SIGKILL stops it)."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(pid_file, "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(0.05)


def allocate(megabytes: int) -> int:
    """Allocate and touch `megabytes` MiB; returns the number of bytes held."""
    block = b"x" * (megabytes * 1024 * 1024)
    return len(block)


def raise_(kind: str, message: str = "boom") -> None:
    raise {"ValueError": ValueError, "RuntimeError": RuntimeError, "ImportError": ImportError,
           "ModuleNotFoundError": ModuleNotFoundError, "TimeoutError": TimeoutError, "MemoryError": MemoryError,
           "KeyError": KeyError, "ZeroDivisionError": ZeroDivisionError, "TypeError": TypeError}[kind](message)


def returns_set() -> set[int]:
    return {1, 2}


def returns_nan() -> float:
    return float("nan")


def touch(path: str, payload: Any = None) -> str:
    with open(path, "w") as f:
        f.write("ran")
    return path


def shout(text: str) -> str:
    print(text.upper())
    return text
