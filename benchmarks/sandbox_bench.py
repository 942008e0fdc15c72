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


def _launcher(pid: int) -> int:
    """The launcher itself: the process started, or its descendant under bubblewrap."""
    while b"sidecar.sandbox.launcher" not in open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[:5]:
        pid = int(open(f"/proc/{pid}/task/{pid}/children").read().split()[0])
    return pid


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
    # The modes run interleaved in blocks of 50 runs, so that a shared machine's changing load falls on
    # all of them alike.
    boxes = {label: Sandbox(isolation=isolation) for label, isolation in modes}
    try:
        for label, sb in boxes.items():
            rows.append({"method": f"sandbox ({label}), first run incl. launcher start",
                         **summary(timed(functools.partial(sb.run, req), 1))})
            for _ in range(20):
                sb.run(req)
        back: dict[str, list[float]] = {label: [] for label in boxes}
        for label in boxes:
            cpu[label] = {"caller": 0.0, "launcher": 0.0, "children": 0.0}
        for _ in range(max(1, n // 50)):
            for label, sb in boxes.items():
                assert sb.launcher_pid is not None
                launcher = _launcher(sb.launcher_pid)
                before, self_before = _cpu(launcher), resource.getrusage(resource.RUSAGE_SELF)
                back[label] += timed(functools.partial(sb.run, req), 50)
                after, self_after = _cpu(launcher), resource.getrusage(resource.RUSAGE_SELF)
                cpu[label]["caller"] += (self_after.ru_utime + self_after.ru_stime - self_before.ru_utime
                                         - self_before.ru_stime)
                cpu[label]["launcher"] += after[0] - before[0]
                cpu[label]["children"] += after[1] - before[1]
        spaced: dict[str, list[float]] = {label: [] for label in boxes}
        for _ in range(max(1, n // 50)):
            for label, sb in boxes.items():
                spaced[label] += timed(functools.partial(sb.run, req), 50, gap=0.005)
        for label in boxes:
            rows.append({"method": f"sandbox ({label}), back to back", **summary(back[label])})
            rows.append({"method": f"sandbox ({label}), 5 ms apart", **summary(spaced[label])})
    finally:
        for sb in boxes.values():
            sb.close()
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
        per_run = {k: v / (max(1, n // 50) * 50) * 1000.0 for k, v in used.items()}
        print(f"CPU per back-to-back run ({label}), ms: " + ", ".join(f"{k} {v:.2f}" for k, v in per_run.items())
              + f" (total {sum(per_run.values()):.2f} on {os.cpu_count()} cores)")
        rows.append({"method": f"cpu per back-to-back run, ms ({label})",
                     **{k: round(v, 3) for k, v in per_run.items()}})
    print("wrote", write("sandbox", rows))


if __name__ == "__main__":
    main()
