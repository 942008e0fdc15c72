"""Where a trivial run's time goes, step by step, on the caller's side (templates on and off).

    .venv/bin/python -m benchmarks.run_steps_bench [--runs N] [--gap-ms MS]

Wraps the sandbox client's steps with timers (the code under test is not changed) and runs the built-in
`echo` plugin with `--gap-ms` between runs (the way a sidecar's runs are spaced), beside a bare
fork+exit+wait of a `python -S` measured in the same run (the machine's floor). Prints the median of each
step and writes benchmarks/results/run_steps.json. Steps that are not on this build's path show 0.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from sidecar.sandbox import drive
from sidecar.sandbox.channel import Channel
from sidecar.sandbox.client import PluginRef, RunRequest, Sandbox

from .common import summary, table, write
from .sandbox_bench import ECHO, _bare_fork

#: (label, owner, attribute) of each timed step, in the order a run meets them
STEPS: list[tuple[str, Any, str]] = [
    ("channel checkout", Sandbox, "_checkout"),
    ("ticket (template: the one held ahead, else a round trip to the launcher)", Sandbox, "_ticket"),
    ("memory limit on the run's cgroup", drive, "set_memory_limit"),
    ("write the request into the child", drive, "write_all"),
    ("tell the launcher the run started", Channel, "start"),
    ("end the run's unit from the caller (kill, wait until empty)", drive, "end_unit_now"),
    ("tell the launcher the run ended", Channel, "end"),
    ("wait for the launcher's exit report", Channel, "exit_of"),
    ("build the result", drive, "build_result"),
]


def _instrument(spent: dict[str, float]) -> Callable[[], None]:
    """Wrap each step to add its time to `spent`; returns the undo."""
    saved = []
    for label, owner, attr in STEPS:
        original = getattr(owner, attr, None)
        if original is None:
            continue

        def wrapper(*a: Any, _f: Any = original, _label: str = label, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return _f(*a, **k)
            finally:
                spent[_label] += (time.perf_counter() - t) * 1000.0

        functools.update_wrapper(wrapper, original)
        saved.append((owner, attr, original))
        setattr(owner, attr, wrapper)

    def undo() -> None:
        for owner, attr, original in saved:
            setattr(owner, attr, original)

    return undo


def measure(templates: str, n: int, gap: float) -> list[dict[str, Any]]:
    spent: dict[str, float] = defaultdict(float)
    per_step: dict[str, list[float]] = defaultdict(list)
    totals: list[float] = []
    with Sandbox(templates=templates == "on") as sb:
        req = RunRequest(PluginRef("echo", path=str(ECHO)), {"x": 1})
        for _ in range(20):
            sb.run(req)
        undo = _instrument(spent)
        try:
            for _ in range(n):
                time.sleep(gap)
                spent.clear()
                t = time.perf_counter()
                sb.run(req)
                totals.append((time.perf_counter() - t) * 1000.0)
                for label, _o, _a in STEPS:
                    per_step[label].append(spent.get(label, 0.0))
        finally:
            undo()
    rows: list[dict[str, Any]] = [{"templates": templates, "step": label,
                                   "median_ms": statistics.median(per_step[label]),
                                   "mean_ms": statistics.fmean(per_step[label])} for label, _o, _a in STEPS]
    named = sum(r["mean_ms"] for r in rows)
    rows.append({"templates": templates, "step": "the rest (child runs, result read, bookkeeping)",
                 "median_ms": float("nan"), "mean_ms": statistics.fmean(totals) - named})
    rows.append({"templates": templates, "step": "whole run", "median_ms": statistics.median(totals),
                 "mean_ms": statistics.fmean(totals), "p99_ms": summary(totals)["p99_ms"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--gap-ms", type=float, default=5.0)
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    fork = summary(_bare_fork(args.runs))
    for templates in ("on", "off"):
        rows.extend(measure(templates, args.runs, args.gap_ms / 1000.0))
    rows.append({"templates": "-", "step": "bare fork+exit+wait (python -S)", "median_ms": fork["median_ms"],
                 "mean_ms": float("nan")})
    print(f"trivial plugin (echo), {args.runs} runs {args.gap_ms:g} ms apart; steps timed on the caller's side")
    print(table(rows, ["templates", "step", "median_ms", "mean_ms"]))
    for templates in ("on", "off"):
        whole = next(r for r in rows if r["templates"] == templates and r["step"] == "whole run")
        print(f"templates {templates}: {whole['median_ms'] / fork['median_ms']:.2f}x a bare fork+exit+wait")
    print("wrote", write("run_steps", rows))


if __name__ == "__main__":
    main()
