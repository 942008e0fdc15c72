"""What a cgroup per run costs alone: the trivial plugin with and without cgroups, interleaved.

    .venv/bin/python -m benchmarks.containment_cost_bench [--runs N] [--rounds R]

The sandbox is the same in both columns (a session per run, a subreaper leader, templates on and off);
only the unit's cgroup differs (`Sandbox(cgroups=False)`, as on a host that gives the sidecar none).
Rounds alternate on and off so that both see the same machine load; each round runs `echo` back to back
and 5 ms apart and reads the launcher's and its children's CPU from /proc. Then the launcher's own
containment work per unit is timed alone, in this process (thread CPU, no fork or run counted): placing a
unit (moving a settled process in, its memory limit), ending it (cgroup.kill, the emptiness, peak and OOM
reads, its removal or reuse), and apart from that what is made ahead while the launcher is idle; and the
wall time of moving a process into a cgroup (`cgroup.procs`) just after its fork, once it has settled, and
by the process itself. Prints
the medians and writes benchmarks/results/containment_cost.json. Needs a host where the sidecar may
create cgroups (as root): elsewhere there is nothing to compare.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import time
from typing import Any

from sidecar.sandbox import containment
from sidecar.sandbox.client import PluginRef, RunRequest, Sandbox

from .common import summary, table, timed, write
from .sandbox_bench import ECHO, back_to_back


def _round(cgroups: bool, templates: bool, n: int) -> dict[str, float]:
    with Sandbox(cgroups=cgroups, templates=templates) as sb:
        if cgroups and not sb.cgroups.any:
            raise SystemExit(f"no writable cgroup here ({sb.cgroups.why}): nothing to compare")
        req = RunRequest(PluginRef("echo", path=str(ECHO)), {"x": 1})
        timing, cpu = back_to_back(sb, req, n)
        spaced = summary(timed(lambda: sb.run(req), n, gap=0.005))["median_ms"]
    return {"back_to_back_ms": timing["median_ms"], "spaced_5ms_ms": spaced,
            **{f"{who}_cpu_ms": ms for who, ms in cpu.items()}}


def unit_work(n: int) -> dict[str, float]:
    """The launcher's containment work for one unit, thread CPU in µs (medians; `ahead`: a mean, 0 for a build
    that makes nothing ahead, measured the same way)."""
    cg = containment.detect()
    units = containment.Units(cg, 512)
    on_way: list[float] = []
    ahead: list[float] = [0.0]
    try:
        for _ in range(n):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the stand-in run
                time.sleep(5)
                os._exit(0)
            time.sleep(0.003)  # settled: a move of a process forked a moment ago also waits for RCU (wall, not CPU)
            prepare = getattr(units, "prepare", None)
            if prepare is not None:
                t = time.thread_time()
                while prepare():
                    pass
                ahead.append((time.thread_time() - t) * 1e6)
            t = time.thread_time()
            create: Any = units.create  # the build before took a name too
            unit = create(pid, 256 << 20) if prepare is not None else create(pid, f"r{pid}", 256 << 20)
            placing = time.thread_time() - t
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            t = time.thread_time()
            unit.kill([])
            unit.empty()
            unit.peak()
            unit.oom_killed()
            units.forget(unit)
            on_way.append((placing + time.thread_time() - t) * 1e6)
    finally:
        units.close()
        containment.release(cg)
    return {"on_a_runs_way_us": statistics.median(on_way), "made_ahead_us": statistics.fmean(ahead)}


def move_wait(n: int) -> dict[str, float]:
    """Wall µs (medians) of moving a process into a new cgroup of the first hierarchy units use."""
    cg = containment.detect()
    parent = next(iter(cg.dirs()), None)
    if parent is None:
        raise SystemExit(f"no writable cgroup here ({cg.why})")
    spent: dict[str, list[float]] = {"just forked": [], "settled (3 ms after its fork)": [], "by itself": []}
    try:
        for i in range(n):
            how = list(spent)[i % 3]
            path = os.path.join(parent, f"move{i}")
            os.mkdir(path)
            time.sleep(0.003)
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the moved process
                if how == "by itself":
                    t = time.perf_counter()
                    containment._write(os.path.join(path, "cgroup.procs"), "0")
                    os.write(w, str((time.perf_counter() - t) * 1e6).encode())
                time.sleep(5)
                os._exit(0)
            if how == "by itself":
                spent[how].append(float(os.read(r, 64)))
            else:
                if how.startswith("settled"):
                    time.sleep(0.003)
                t = time.perf_counter()
                containment._write(os.path.join(path, "cgroup.procs"), str(pid))
                spent[how].append((time.perf_counter() - t) * 1e6)
            os.close(r)
            os.close(w)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.rmdir(path)
    finally:
        containment.release(cg)
    return {how: statistics.median(v) for how, v in spent.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    figures: dict[tuple[bool, bool], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for templates in (True, False):
            for cgroups in (True, False):
                figures.setdefault((templates, cgroups), []).append(_round(cgroups, templates, args.runs))
    rows: list[dict[str, Any]] = []
    for (templates, cgroups), rounds in figures.items():
        row: dict[str, Any] = {"templates": "on" if templates else "off",
                               "unit": "session + cgroup" if cgroups else "session only"}
        for key in rounds[0]:
            row[key] = statistics.median(r[key] for r in rounds)
        rows.append(row)
    print(f"trivial plugin (echo), {args.runs} runs per round, medians over {args.rounds} interleaved rounds")
    print(table(rows, ["templates", "unit", "back_to_back_ms", "spaced_5ms_ms", "caller_cpu_ms", "launcher_cpu_ms",
                       "children_cpu_ms"]))
    work = unit_work(args.runs)
    print("the launcher's containment work per unit, thread CPU: "
          f"{work['on_a_runs_way_us']:.0f} µs on a run's way, {work['made_ahead_us']:.0f} µs made ahead when idle")
    rows.append({"templates": "-", "unit": "launcher's containment work per unit (µs CPU)", **work})
    moves = move_wait(args.runs)
    print("moving a process into a cgroup, wall µs: " + ", ".join(f"{k} {v:.0f}" for k, v in moves.items()))
    rows.append({"templates": "-", "unit": "a move into a cgroup (µs wall)", **moves})
    print("wrote", write("containment_cost", rows))


if __name__ == "__main__":
    main()
