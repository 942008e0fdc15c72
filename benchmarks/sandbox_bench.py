"""A trivial plugin's run: direct call vs this sandbox (no isolation, default and strict isolation) vs
subprocess-per-run vs multiprocessing spawn.

    .venv/bin/python -m benchmarks.sandbox_bench [--runs N]

Prints a Markdown table (median, p99, ratio to the sandbox) and writes benchmarks/results/sandbox.json.
The sandbox is measured back to back and with 5 ms gaps (runs of a sidecar are spaced; the gap lets
the launcher fork its next spare while nobody waits), in each isolation mode, with the one-off cost of
starting that mode's launcher (bubblewrap's namespaces are set up then, never per run). A bare
fork+exit+wait of a small Python process is included as the machine's floor.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

from sidecar.sandbox.client import PluginRef, RunRequest, Sandbox
from sidecar.sandbox.isolation import Isolation

from .common import summary, table, timed, write

ECHO = Path(__file__).resolve().parent.parent / "sidecar" / "plugins" / "builtin" / "echo.py"


def _echo(**params: object) -> object:
    return params


def _bare_fork(n: int) -> list[float]:
    code = ("import os,time,json\nout=[]\nfor _ in range(%d):\n t=time.perf_counter();pid=os.fork()\n"
            " if pid==0: os._exit(0)\n os.waitpid(pid,0);out.append((time.perf_counter()-t)*1000)\n"
            "print(json.dumps(out))")
    import json

    return list(json.loads(subprocess.check_output([sys.executable, "-S", "-c", code % n])))


def _cpu(pid: int) -> tuple[float, float]:
    """(own CPU, reaped children's CPU) seconds of a process, from /proc/PID/stat."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / hz, (int(fields[13]) + int(fields[14])) / hz


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=400)
    args = ap.parse_args()
    n = args.runs
    rows: list[dict[str, Any]] = []
    rows.append({"method": "direct call", **summary(timed(lambda: _echo(x=1), n))})
    rows.append({"method": "bare fork+exit+wait (python -S)", **summary(_bare_fork(n))})
    req = RunRequest(PluginRef("echo", path=str(ECHO)), {"x": 1})
    cpu: dict[str, dict[str, float]] = {}
    modes: list[tuple[str, Isolation | None]] = [("no isolation", None), ("default isolation", Isolation())]
    if Isolation().bwrap is not None:
        modes.append(("strict isolation", Isolation("strict")))
    for label, isolation in modes:
        with Sandbox(isolation=isolation) as sb:
            rows.append({"method": f"sandbox ({label}), first run incl. launcher start",
                         **summary(timed(functools.partial(sb.run, req), 1))})
            for _ in range(20):
                sb.run(req)
            launcher = sb.launcher_pid
            assert launcher is not None
            before, self_before = _cpu(launcher), resource.getrusage(resource.RUSAGE_SELF)
            rows.append({"method": f"sandbox ({label}), back to back",
                         **summary(timed(functools.partial(sb.run, req), n))})
            after, self_after = _cpu(launcher), resource.getrusage(resource.RUSAGE_SELF)
            cpu[label] = {
                "caller": (self_after.ru_utime + self_after.ru_stime - self_before.ru_utime
                           - self_before.ru_stime),
                "launcher": after[0] - before[0],
                "children": after[1] - before[1],
            }
            rows.append({"method": f"sandbox ({label}), 5 ms apart",
                         **summary(timed(functools.partial(sb.run, req), n, gap=0.005))})
    code = f"import runpy; m = runpy.run_path({str(ECHO)!r}); print(m['run'](x=1))"
    rows.append({"method": "subprocess per run", **summary(timed(
        lambda: subprocess.run([sys.executable, "-c", code], check=True, capture_output=True), max(20, n // 8)))})
    ctx = multiprocessing.get_context("spawn")

    def spawn() -> None:
        p = ctx.Process(target=_echo, kwargs={"x": 1})
        p.start()
        p.join()

    rows.append({"method": "multiprocessing spawn", **summary(timed(spawn, max(10, n // 20)))})
    ref = float(next(r for r in rows if r["method"] == "sandbox (default isolation), back to back")["median_ms"])
    for r in rows:
        r["ratio_to_sandbox"] = float(r["median_ms"]) / ref
    print(table(rows, ["method", "n", "median_ms", "p99_ms", "ratio_to_sandbox"]))
    for label, used in cpu.items():
        per_run = {k: v / n * 1000.0 for k, v in used.items()}
        print(f"CPU per back-to-back run ({label}), ms: " + ", ".join(f"{k} {v:.2f}" for k, v in per_run.items())
              + f" (total {sum(per_run.values()):.2f} on {os.cpu_count()} cores)")
        rows.append({"method": f"cpu per back-to-back run, ms ({label})",
                     **{k: round(v, 3) for k, v in per_run.items()}})
    print("wrote", write("sandbox", rows))


if __name__ == "__main__":
    main()
