"""Memory of the quick-start sidecar by process, beside prometheus-blackbox-exporter's, in one run.

    .venv/bin/python -m benchmarks.footprint_bench [--workers 1 2] [--sidecar PATH]

Serves `examples/sidecar.toml` (its three checks pointed at this run's port) with each worker count, waits
until every check has run and the status page, `/metrics` and an `echo` run have been served, then reads
PSS (and RSS, USS) of every process of the `sidecar serve` tree by role. The peer is Debian's
`prometheus-blackbox-exporter` on another loopback port after one probe of the sidecar's `/healthz`.
`--sidecar` measures another build's console script (e.g. an older revision's venv) the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from .common import table, write

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "examples" / "sidecar.toml"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, data: bytes | None = None, timeout: float = 30) -> Any:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        body = resp.read()
    return json.loads(body) if resp.headers.get_content_type() == "application/json" else body


def _wait(what: str, ok: Any, within: float = 90) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            if ok():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _role(p: psutil.Process, root: psutil.Process) -> str:
    argv = p.cmdline()
    cmd = " ".join(argv)
    parent = p.parent()
    if p.pid == root.pid:
        return "runner"
    if argv and os.path.basename(argv[0]) == "bwrap":
        return "bubblewrap"
    if cmd.startswith(("sidecar: template of", "sidecar: spare")):  # their titles (`sidecar.sandbox.title`)
        return "templates and spares"
    if cmd == "sidecar: launcher":
        return "launcher"
    if "gunicorn" in cmd and parent is not None and parent.pid == root.pid:
        return "gunicorn master"
    if parent is not None and "gunicorn" in " ".join(parent.cmdline()):
        return "gunicorn workers"
    return "runs and others"


def _measure(procs: list[psutil.Process], label: str, roles: dict[int, str]) -> list[dict[str, Any]]:
    by_role: dict[str, list[Any]] = {}
    for p in procs:
        try:
            by_role.setdefault(roles[p.pid], []).append(p.memory_full_info())
        except psutil.Error:
            continue
    rows = [{"what": label, "process": role, "count": len(infos), "pss_mib": sum(i.pss for i in infos) / 2**20,
             "rss_mib": sum(i.rss for i in infos) / 2**20, "uss_mib": sum(i.uss for i in infos) / 2**20}
            for role, infos in by_role.items()]
    rows.append({"what": label, "process": "whole tree", "count": sum(r["count"] for r in rows),
                 **{k: sum(r[k] for r in rows) for k in ("pss_mib", "rss_mib", "uss_mib")}})
    return rows


def sidecar_tree(sidecar: str, workers: int) -> list[dict[str, Any]]:
    port = _port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "sidecar.toml"
        config.write_text(EXAMPLE.read_text().replace("127.0.0.1:9464", f"127.0.0.1:{port}")
                          .replace("port = 9464", f"port = {port}"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
        env.update({"SIDECAR_BIND": f"127.0.0.1:{port}", "SIDECAR_DATA_DIR": f"{tmp}/data",
                    "SIDECAR_WORKERS": str(workers), "SIDECAR_ENTRY_POINTS": "false"})
        proc = subprocess.Popen([sidecar, "serve", "--config", str(config)], env=env, cwd=tmp,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            _wait("ready", lambda: _get(base + "/readyz", timeout=2)["ready"])
            checks = ("self_http", "self_port", "root_disk")
            _wait("every check's first run", lambda: all(
                _get(f"{base}/plugins/{c}/health")["success_count"] + _get(f"{base}/plugins/{c}/health")[
                    "error_count"] > 0 for c in checks))
            _get(base + "/plugins/echo/run", data=b'{"params": {"x": 1}}')
            for path in ("/", "/metrics", "/plugins"):
                _get(base + path)
            time.sleep(2.0)  # idle: spares forked, pages settled
            root = psutil.Process(proc.pid)
            procs = [root, *root.children(recursive=True)]
            roles = {p.pid: _role(p, root) for p in procs}
            return _measure(procs, f"sidecar, {workers} worker{'s' if workers > 1 else ''}", roles)
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def blackbox_exporter(target_port: int | None = None) -> list[dict[str, Any]]:
    exe = shutil.which("prometheus-blackbox-exporter")
    if exe is None:
        print("prometheus-blackbox-exporter not installed (Debian package of that name): its row is left out")
        return []
    port = _port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "blackbox.yml"
        config.write_text("modules:\n  http_2xx:\n    prober: http\n    timeout: 5s\n")
        proc = subprocess.Popen([exe, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait("blackbox exporter", lambda: _get(f"http://127.0.0.1:{port}/metrics", timeout=2) is not None)
            target = f"http://127.0.0.1:{target_port or port}/metrics"
            _get(f"http://127.0.0.1:{port}/probe?module=http_2xx&target={target}")
            time.sleep(2.0)
            p = psutil.Process(proc.pid)
            return _measure([p], "prometheus-blackbox-exporter", {p.pid: "exporter"})
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sidecar", default=str(Path(sys.executable).with_name("sidecar")),
                        help="the `sidecar` console script to measure (default: this venv's)")
    parser.add_argument("--label", default="", help="a name for this build in the JSON file")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for workers in args.workers:
        rows += sidecar_tree(args.sidecar, workers)
    rows += blackbox_exporter()
    print(table(rows, ["what", "process", "count", "pss_mib", "rss_mib", "uss_mib"]))
    print("wrote", write(f"footprint{'_' + args.label if args.label else ''}", rows))


if __name__ == "__main__":
    main()
