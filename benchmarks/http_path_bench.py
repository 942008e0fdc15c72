"""Where `POST /plugins/echo/run` and `GET /metrics` spend their time outside the sandbox.

    .venv/bin/python -m benchmarks.http_path_bench [--runs N] [--http]

In the runner (a `Runner` in this process, the built-in `echo`, isolation as `serve` runs it):

- a run's steps, back to back and 5 ms apart: the whole `Runner.run`, the sandbox's `run`, the history
  write, and the rest (validation, metrics, the answer); the CPU the caller's thread and the history's
  writer thread spend per run. The history write alternates run by run between
  the store's way (handed to its writer thread, waited for at most `STORE_DEADLINE_SECONDS`, so that a
  frozen disk cannot hold a run) and the same transaction written inline by the caller, as the build
  before that deadline did: the difference is that guarantee's cost alone, both measured under the same load;
- a scrape's steps: the whole render, the runner's `process_*`/`python_*` series, and a render right after
  a run (one plugin's lines made again).

With `--http`, a `sidecar serve` on loopback: medians of sequential requests (a new connection each, as
`ab_bench` does) and the CPU each process group spends per request (the runner, gunicorn, the sandbox's
launcher and its children), from /proc. Writes benchmarks/results/http_path.json.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import summary, table, write

# ruff: noqa: E501


#: Runs per block of one way of writing the history, and the first of them left out of the figures.
BLOCK, WARM = 25, 5


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _thread_cpu_ns(tid: int) -> int:
    """Nanoseconds a thread of this process has run (its schedstat), 0 when it is gone."""
    try:
        return int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def run_steps(runs: int, gap: float) -> list[dict[str, Any]]:
    """Runner.run's steps; the history write alternates between the store's way and an inline write."""
    from sidecar.config import load_settings
    from sidecar.runner import Runner

    os.environ["SIDECAR_DATA_DIR"] = tempfile.mkdtemp(prefix="http-path-bench-")
    runner = Runner(load_settings(), start_scheduler=False)
    store, sandbox = runner.store, runner.sandbox
    guarded = store.record
    steps: dict[str, dict[str, list[float]]] = {"deadline": {}, "inline": {}}
    mode = ["deadline"]

    def inline(result: Any, trigger: str = "api", verdict: Any = (None, None)) -> int | None:
        with store._held(-1):  # the caller's own transaction, as before the writer thread
            return store._write(result, trigger, verdict)

    def timed_step(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                steps[mode[0]].setdefault(name, []).append((time.perf_counter() - t) * 1000.0)
        return wrapper

    writer = store._writer.native_id or 0  # the history's writer thread: its CPU is the run's too
    sandbox_run = sandbox.run
    sandbox.run = timed_step("sandbox", sandbox_run)  # type: ignore[method-assign]
    record_deadline, record_inline = timed_step("history", guarded), timed_step("history", inline)
    try:
        for _ in range(30):
            runner.run("echo", {})
        steps = {"deadline": {}, "inline": {}}
        # Blocks of BLOCK runs, alternating, the first WARM of each left out: run by run alternation would
        # measure each way's run just after the other's (a short history step leaves the launcher less time
        # to clean up after the previous run before the next one asks it for a child).
        for block in range(2 * max(1, runs // (BLOCK - WARM))):
            mode[0] = "deadline" if block % 2 == 0 else "inline"
            store.record = record_deadline if mode[0] == "deadline" else record_inline  # type: ignore[method-assign]
            for i in range(BLOCK):
                if i == WARM:
                    for xs in steps[mode[0]].values():
                        del xs[len(xs) - WARM:]
                    writer_from = _thread_cpu_ns(writer)
                t, c = time.perf_counter(), time.thread_time()
                runner.run("echo", {})
                steps[mode[0]].setdefault("whole", []).append((time.perf_counter() - t) * 1000.0)
                steps[mode[0]].setdefault("caller CPU", []).append((time.thread_time() - c) * 1000.0)
                if gap:
                    time.sleep(gap)
            per_run = (_thread_cpu_ns(writer) - writer_from) / 1e6 / (BLOCK - WARM)
            steps[mode[0]].setdefault("writer CPU", []).extend([per_run] * (BLOCK - WARM))
    finally:
        runner.close()
    rows = []
    for how, s in steps.items():
        whole, sb, hist = _med(s["whole"]), _med(s["sandbox"]), _med(s["history"])
        rest = statistics.mean(s["whole"]) - statistics.mean(s["sandbox"]) - statistics.mean(s["history"])
        rows.append({"spacing": f"{gap * 1000:g} ms apart" if gap else "back to back",
                     "history write": "writer thread, deadline" if how == "deadline" else "inline (no deadline)",
                     "n": len(s["whole"]), "whole ms": whole, "sandbox ms": sb, "history ms": hist,
                     "rest ms (mean)": rest, "caller CPU ms": statistics.mean(s["caller CPU"]),
                     "writer CPU ms": statistics.mean(s["writer CPU"])})
    return rows


def render_steps(n: int) -> list[dict[str, Any]]:
    """A scrape's render in the runner: whole, the process series alone, right after a run."""
    from sidecar.config import load_settings
    from sidecar.runner import Runner

    os.environ["SIDECAR_DATA_DIR"] = tempfile.mkdtemp(prefix="http-path-bench-")
    runner = Runner(load_settings(), start_scheduler=False)
    try:
        for _ in range(5):
            runner.run("echo", {})
        m = runner.metrics

        def after_run() -> None:
            m._plugins["echo"].cache = None  # what a run does to its plugin's lines
            m.render()

        def med(fn: Callable[[], object]) -> float:
            out = []
            for _ in range(n):
                t = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t) * 1000.0)
            return statistics.median(out)

        return [{"step": "whole render (nothing changed since the last scrape)", "median ms": med(m.render)},
                {"step": "the runner's process_* and python_* series", "median ms": med(lambda: m._process_text(False))},
                {"step": "whole render right after a run", "median ms": med(after_run)},
                {"step": f"body bytes, {len(runner.registry)} plugins", "median ms": float(len(m.render()[0]))}]
    finally:
        runner.close()


# -- over HTTP -------------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _cpu_ms(pid: int, reaped: bool) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if reaped else 0)
    return ticks * 1000.0 / os.sysconf("SC_CLK_TCK")


def _cpu_by_group(root: int) -> dict[str, float]:
    groups: dict[str, list[int]] = {"runner": [root], "gunicorn": [], "sandbox": []}
    for child in _children(root):
        try:
            name = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        stack = [child]
        while stack:
            pid = stack.pop()
            groups["gunicorn" if b"gunicorn" in name else "sandbox"].append(pid)
            stack += _children(pid)
    return {g: sum(_cpu_ms(p, reaped=g != "runner") for p in pids) for g, pids in groups.items()}


def http_rows(n: int) -> list[dict[str, Any]]:
    import http.client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tempfile.mkdtemp(prefix="http-path-bench-")
    env = dict(os.environ, SIDECAR_DATA_DIR=data)
    env.pop("SIDECAR_API_TOKEN", None)
    sidecar = str(Path(sys.executable).with_name("sidecar"))
    with open(os.path.join(data, "serve.log"), "w") as log:
        proc = subprocess.Popen([sidecar, "serve", "--bind", f"127.0.0.1:{port}"], env=env, stdout=log,
                                stderr=log, start_new_session=True, cwd=data)

    def request(method: str, path: str, body: bytes | None) -> float:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        t = time.perf_counter()
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        resp = conn.getresponse()
        resp.read()
        ms = (time.perf_counter() - t) * 1000.0
        conn.close()
        if resp.status != 200:
            raise RuntimeError(f"{method} {path}: {resp.status}")
        return ms

    rows = []
    try:
        for _ in range(300):
            try:
                request("GET", "/healthz", None)
                break
            except OSError:
                time.sleep(0.1)
        for _ in range(30):
            request("POST", "/plugins/echo/run", b"{}")
        for label, method, path, body in (("GET /healthz", "GET", "/healthz", None),
                                          ("POST /plugins/echo/run", "POST", "/plugins/echo/run", b"{}"),
                                          ("GET /metrics", "GET", "/metrics", None)):
            before = _cpu_by_group(proc.pid)
            ms = [request(method, path, body) for _ in range(n)]
            after = _cpu_by_group(proc.pid)
            rows.append({"request": label, **{k: round(v, 3) for k, v in summary(ms).items() if k != "n"}, "n": n,
                         **{f"{g} CPU ms": (after[g] - before[g]) / n for g in after}})
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--http", action="store_true", help="also measure a `sidecar serve` on loopback")
    a = ap.parse_args()
    runs = run_steps(a.runs, 0.0) + run_steps(a.runs, 0.005)
    print(table(runs, ["spacing", "history write", "n", "whole ms", "sandbox ms", "history ms", "rest ms (mean)",
                       "caller CPU ms", "writer CPU ms"]))
    render = render_steps(2000)
    print()
    print(table(render, ["step", "median ms"]))
    result: dict[str, Any] = {"runs": runs, "render": render, "load": os.getloadavg()}
    if a.http:
        rows = http_rows(a.runs)
        print()
        print(table(rows, ["request", "median_ms", "p99_ms", "n", "runner CPU ms", "gunicorn CPU ms", "sandbox CPU ms"]))
        result["http"] = rows
    print(f"\nload average {os.getloadavg()[0]:.2f}; wrote {write('http_path', [result])}")


if __name__ == "__main__":
    main()
