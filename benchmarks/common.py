"""Helpers shared by the benchmarks: timing statistics and the JSON/table output."""

from __future__ import annotations

import http.client
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def timed(fn: Callable[[], object], n: int, gap: float = 0.0) -> list[float]:
    out = []
    for _ in range(n):
        if gap:
            time.sleep(gap)
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000.0)
    return out


def summary(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)
    return {"n": len(s), "median_ms": statistics.median(s), "p99_ms": s[min(len(s) - 1, int(len(s) * 0.99))]}


def machine() -> dict[str, Any]:
    import os

    return {"python": platform.python_version(), "cores": os.cpu_count(), "kernel": platform.release(),
            "machine": platform.machine()}


def write(name: str, rows: list[dict[str, Any]]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2) + "\n")
    return path


def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def timed_get(port: int, path: str, timeout: float) -> float | None:
    """Milliseconds for one GET of a loopback `path` on a new connection; None when it failed or timed out."""
    t = time.perf_counter()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        conn.close()
        if resp.status != 200:
            return None
    except OSError:
        return None
    return (time.perf_counter() - t) * 1000.0
