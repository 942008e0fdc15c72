"""A plugin's run: direct call vs this sandbox vs subprocess-per-run vs multiprocessing spawn.

    .venv/bin/python -m benchmarks.sandbox_bench [--runs N] [--plugin-runs N]
        [--only trivial|plugins|memory|isolation]

Prints Markdown tables (median, p99, ratios) and writes benchmarks/results/sandbox.json (a trivial
plugin), sandbox_plugins.json (real plugins: trivial, heavy imports, `http_probe` of a loopback
server; CPU per run by process, templates on and off), sandbox_memory_templates_{off,on}.json (idle
memory of a `sidecar serve`; with templates on, 20 templates alive) and sandbox_isolation.json (the
trivial plugin with no isolation, default and strict isolation side by side, interleaved, with each
mode's launcher start: namespaces are set up then, never per run).
The sandbox is measured back to back and with 5 ms gaps (runs of a sidecar are spaced; the gap lets
the launcher fork its next spare while nobody waits). A bare fork+exit+wait of a small Python
process is included as the machine's floor.
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


def back_to_back(sb: Sandbox, req: RunRequest, n: int) -> tuple[dict[str, float], dict[str, float]]:
    """`n` runs back to back after 20 to warm up: their timing summary, and CPU ms per run of the caller (this
    process), the launcher and the launcher's reaped children."""
    for _ in range(20):
        sb.run(req)
    launcher = sb.launcher_pid
    assert launcher is not None
    before, own_before = _cpu(launcher), resource.getrusage(resource.RUSAGE_SELF)
    timing = summary(timed(lambda: sb.run(req), n))
    after, own_after = _cpu(launcher), resource.getrusage(resource.RUSAGE_SELF)
    caller = own_after.ru_utime + own_after.ru_stime - own_before.ru_utime - own_before.ru_stime
    cpu = {"caller": caller, "launcher": after[0] - before[0], "children": after[1] - before[1]}
    return timing, {k: v / n * 1000.0 for k, v in cpu.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=400)
    ap.add_argument("--plugin-runs", type=int, default=200, help="sandbox runs per real plugin")
    ap.add_argument("--only", choices=["trivial", "plugins", "memory", "isolation"], help="run one section")
    args = ap.parse_args()
    if args.only in (None, "trivial"):
        trivial_plugin(args.runs)
    if args.only in (None, "plugins"):
        real_plugins(args.plugin_runs)
    if args.only in (None, "memory"):
        idle_memory("off")
        idle_memory("on")
    if args.only in (None, "isolation"):
        isolation_modes(args.runs)


def trivial_plugin(n: int) -> None:
    rows: list[dict[str, Any]] = []
    rows.append({"method": "direct call", **summary(timed(lambda: _echo(x=1), n))})
    rows.append({"method": "bare fork+exit+wait (python -S)", **summary(_bare_fork(n))})
    with Sandbox() as sb:
        req = RunRequest(PluginRef("echo", path=str(ECHO)), {"x": 1})
        timing, per_run = back_to_back(sb, req, n)
        rows.append({"method": "sidecar sandbox, back to back", **timing})
        rows.append({"method": "sidecar sandbox, 5 ms apart", **summary(timed(lambda: sb.run(req), n, gap=0.005))})
    code = f"import runpy; m = runpy.run_path({str(ECHO)!r}); print(m['run'](x=1))"
    rows.append({"method": "subprocess per run", **summary(timed(
        lambda: subprocess.run([sys.executable, "-c", code], check=True, capture_output=True), max(20, n // 8)))})
    ctx = multiprocessing.get_context("spawn")

    def spawn() -> None:
        p = ctx.Process(target=_echo, kwargs={"x": 1})
        p.start()
        p.join()

    rows.append({"method": "multiprocessing spawn", **summary(timed(spawn, max(10, n // 20)))})
    ref = float(next(r for r in rows if r["method"] == "sidecar sandbox, back to back")["median_ms"])
    for r in rows:
        r["ratio_to_sandbox"] = float(r["median_ms"]) / ref
    print(table(rows, ["method", "n", "median_ms", "p99_ms", "ratio_to_sandbox"]))
    print("CPU per back-to-back run, ms: " + ", ".join(f"{k} {v:.2f}" for k, v in per_run.items())
          + f" (total {sum(per_run.values()):.2f} on {os.cpu_count()} cores)")
    rows.append({"method": "cpu per back-to-back run (ms)", **{k: round(v, 3) for k, v in per_run.items()}})
    print("wrote", write("sandbox", rows))


# -- real plugins ---------------------------------------------------------------------------------
# Each plugin through the sandbox (per template mode), plus subprocess-per-run and multiprocessing
# spawn running the same file. Rows carry a `templates` column: "on" forks each run from the plugin's
# template (SIDECAR_TEMPLATES=on, the default), "off" imports the plugin in every run.

BENCH_PLUGINS = Path(__file__).resolve().parent / "plugins"
BUILTIN = ECHO.parent
TEMPLATE_MODES = ("off", "on")

_HTTP_SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok"
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args): pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""


class _LoopbackHTTP:
    """A small HTTP server on 127.0.0.1 in its own process (the service `http_probe` watches)."""

    def __enter__(self) -> str:
        self.proc = subprocess.Popen([sys.executable, "-c", _HTTP_SERVER], stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        return f"http://127.0.0.1:{int(self.proc.stdout.readline())}/healthz"

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


def _plugins(url: str) -> list[tuple[str, Path, dict[str, Any]]]:
    return [
        ("trivial (echo)", BUILTIN / "echo.py", {"x": 1}),
        ("heavy imports", BENCH_PLUGINS / "heavy_import.py", {}),
        ("http_probe, loopback HTTP", BUILTIN / "http_probe.py", {"url": url}),
    ]


def _sandbox_for(templates: str) -> Sandbox:
    if templates not in TEMPLATE_MODES:
        raise ValueError(f"unknown template mode {templates!r}")
    return Sandbox(templates=templates == "on")


def _run_plugin_file(path: str, params: dict[str, Any]) -> object:
    """What a multiprocessing-spawn child runs: load the plugin file and call it (module level: picklable)."""
    import runpy

    return runpy.run_path(path)["run"](**params)


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _sandbox_rows(label: str, path: Path, params: dict[str, Any], templates: str, n: int) -> list[dict[str, Any]]:
    rows = []
    with _sandbox_for(templates) as sb:
        req = RunRequest(PluginRef(path.stem, path=str(path)), params)
        for _ in range(10):
            result = sb.run(req)
        assert result.ok, (label, result.error)
        launcher = sb.launcher_pid
        assert launcher is not None
        before, self_before = _cpu(launcher), _self_cpu()
        times = timed(lambda: sb.run(req), n)
        after, self_after = _cpu(launcher), _self_cpu()
        cpu = {"cpu_caller_ms": (self_after - self_before) / n * 1000, "cpu_launcher_ms": (after[0] - before[0]) / n
               * 1000, "cpu_children_ms": (after[1] - before[1]) / n * 1000}
        rows.append({"plugin": label, "method": "sidecar sandbox, back to back", "templates": templates,
                     **summary(times), **cpu})
        rows.append({"plugin": label, "method": "sidecar sandbox, 5 ms apart", "templates": templates,
                     **summary(timed(lambda: sb.run(req), n, gap=0.005))})
    return rows


def _baseline_rows(label: str, path: Path, params: dict[str, Any], n: int) -> list[dict[str, Any]]:
    import json

    code = "import json, runpy, sys; print(json.dumps(runpy.run_path(sys.argv[1])['run'](**json.loads(sys.argv[2]))))"
    argv = [sys.executable, "-c", code, str(path), json.dumps(params)]
    rows = []
    runs = max(10, n // 8)
    self_before, children_before = _self_cpu(), _children_cpu()
    times = timed(lambda: subprocess.run(argv, check=True, capture_output=True), runs)
    rows.append({"plugin": label, "method": "subprocess per run", "templates": "-", **summary(times),
                 "cpu_caller_ms": (_self_cpu() - self_before) / runs * 1000,
                 "cpu_children_ms": (_children_cpu() - children_before) / runs * 1000})
    ctx = multiprocessing.get_context("spawn")

    def spawn() -> None:
        p = ctx.Process(target=_run_plugin_file, args=(str(path), params))
        p.start()
        p.join()
        assert p.exitcode == 0

    runs = max(5, n // 20)
    self_before, children_before = _self_cpu(), _children_cpu()
    times = timed(spawn, runs)
    rows.append({"plugin": label, "method": "multiprocessing spawn", "templates": "-", **summary(times),
                 "cpu_caller_ms": (_self_cpu() - self_before) / runs * 1000,
                 "cpu_children_ms": (_children_cpu() - children_before) / runs * 1000})
    return rows


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """× sandbox: to this plugin's sandbox run (same template mode); × trivial: to the trivial plugin, same method."""
    def key(r: dict[str, Any]) -> tuple[str, str, str]:
        return r["plugin"], r["method"], r["templates"]

    by = {key(r): float(r["median_ms"]) for r in rows}
    trivial = rows[0]["plugin"]
    for r in rows:
        mode = r["templates"] if r["templates"] != "-" else TEMPLATE_MODES[0]
        r["x_sandbox"] = float(r["median_ms"]) / by[(r["plugin"], "sidecar sandbox, back to back", mode)]
        r["x_trivial"] = float(r["median_ms"]) / by[(trivial, r["method"], r["templates"])]


def real_plugins(n: int) -> None:
    rows: list[dict[str, Any]] = []
    with _LoopbackHTTP() as url:
        for label, path, params in _plugins(url):
            for templates in TEMPLATE_MODES:
                rows += _sandbox_rows(label, path, params, templates, n)
            rows += _baseline_rows(label, path, params, n)
    _add_ratios(rows)
    print(table(rows, ["plugin", "method", "templates", "n", "median_ms", "p99_ms", "x_sandbox", "x_trivial"]))
    cpu_rows = [r for r in rows if "cpu_caller_ms" in r]
    for r in cpu_rows:
        r.setdefault("cpu_launcher_ms", 0.0)
        r["cpu_total_ms"] = r["cpu_caller_ms"] + r["cpu_launcher_ms"] + r["cpu_children_ms"]
    print("\nCPU per run by process, ms:")
    print(table(cpu_rows, ["plugin", "method", "templates", "cpu_caller_ms", "cpu_launcher_ms", "cpu_children_ms",
                           "cpu_total_ms"]))
    print("wrote", write("sandbox_plugins", rows))


# -- idle memory of a sidecar -----------------------------------------------------------------------

def _roles(root: Any) -> dict[str, list[Any]]:
    """The processes of a `sidecar serve` tree by role."""
    roles: dict[str, list[Any]] = {"runner": [root], "launcher": [], "templates": [], "spare children": [],
                                   "gunicorn master": [], "gunicorn workers": []}
    for p in root.children(recursive=True):
        cmd = " ".join(p.cmdline())
        parent = p.parent()
        if cmd.startswith("sidecar: template of"):  # the titles `sidecar.sandbox.title` gives
            roles["templates"].append(p)
        elif cmd.startswith(("sidecar: spare", "sidecar: run of")):
            roles["spare children"].append(p)
        elif cmd == "sidecar: launcher" or "sidecar.sandbox.launcher" in cmd:  # or bubblewrap, starting it
            roles["launcher"].append(p)
        elif "gunicorn" in cmd and parent is not None and parent.pid == root.pid:
            roles["gunicorn master"].append(p)
        else:
            roles["gunicorn workers"].append(p)
    return roles


#: Plugins run once each before measuring idle memory with templates on: 20 templates.
IDLE_TEMPLATES = 20


def idle_memory(templates: str = "off") -> None:
    """RSS and PSS of an idle `sidecar serve` by process role, after one run of each benchmark plugin
    (with templates on: also of 17 copies of the heavy-import plugin, so that 20 templates are alive)."""
    import json
    import socket
    import tempfile
    import time
    import urllib.request

    import psutil

    if templates not in TEMPLATE_MODES:
        raise ValueError(f"unknown template mode {templates!r}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp, _LoopbackHTTP() as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
        extra = Path(tmp) / "plugins"
        extra.mkdir()
        source = (BENCH_PLUGINS / "heavy_import.py").read_text()
        copies = [f"heavy_copy_{i:02d}" for i in range(IDLE_TEMPLATES - 3)] if templates == "on" else []
        for name in copies:
            (extra / f"{name}.py").write_text(source)
        env.update({"SIDECAR_BIND": f"127.0.0.1:{port}", "SIDECAR_DATA_DIR": tmp + "/data",
                    "SIDECAR_ENTRY_POINTS": "false", "SIDECAR_TEMPLATES": templates,
                    "SIDECAR_PLUGIN_PATH": os.pathsep.join((str(BENCH_PLUGINS), str(extra)))})
        proc = subprocess.Popen([sys.executable, "-m", "sidecar.cli", "serve"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(base + "/readyz", timeout=2):
                        break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("sidecar serve did not become ready") from None
                    time.sleep(0.2)
            runs = [("echo", {"x": 1}), ("heavy_import", {}), ("http_probe", {"url": url}),
                    *((name, {}) for name in copies)]
            for name, params in runs:
                req = urllib.request.Request(f"{base}/plugins/{name}/run", method="POST",
                                             data=json.dumps({"params": params}).encode(),
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=60) as resp:
                    assert json.load(resp)["outcome"] == "success", name
            time.sleep(2.0)  # idle: spares forked, pages settled
            rows = []
            for role, procs in _roles(psutil.Process(proc.pid)).items():
                infos = [p.memory_full_info() for p in procs]
                rows.append({"templates": templates, "process": role, "count": len(procs),
                             "rss_mb": sum(i.rss for i in infos) / 2**20, "pss_mb": sum(i.pss for i in infos) / 2**20,
                             "uss_mb": sum(i.uss for i in infos) / 2**20})
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    core = [r for r in rows if r["process"] in ("runner", "launcher", "templates", "spare children")]
    rows.append({"templates": templates, "process": "runner + launcher + templates + spares",
                 "count": sum(r["count"] for r in core),
                 **{k: sum(r[k] for r in core) for k in ("rss_mb", "pss_mb", "uss_mb")}})
    print(table(rows, ["templates", "process", "count", "rss_mb", "pss_mb", "uss_mb"]))
    print("wrote", write(f"sandbox_memory_templates_{templates}", rows))


# -- isolation modes ------------------------------------------------------------------------------
def _launcher(pid: int) -> int:
    """The launcher itself: the process started, or its descendant under bubblewrap."""
    while open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0] != b"sidecar: launcher":
        pid = int(open(f"/proc/{pid}/task/{pid}/children").read().split()[0])
    return pid


def isolation_modes(n: int) -> None:
    """The trivial plugin in each isolation mode; what isolation costs per run and once."""
    rows: list[dict[str, Any]] = []
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
    print(table(rows, ["method", "n", "median_ms", "p99_ms"]))
    for label, used in cpu.items():
        per_run = {k: v / (max(1, n // 50) * 50) * 1000.0 for k, v in used.items()}
        print(f"CPU per back-to-back run ({label}), ms: " + ", ".join(f"{k} {v:.2f}" for k, v in per_run.items())
              + f" (total {sum(per_run.values()):.2f} on {os.cpu_count()} cores)")
        rows.append({"method": f"cpu per back-to-back run, ms ({label})",
                     **{k: round(v, 3) for k, v in per_run.items()}})
    print("wrote", write("sandbox_isolation", rows))


if __name__ == "__main__":
    main()
