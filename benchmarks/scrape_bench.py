"""Scrape time of /metrics over HTTP for N plugins and W gunicorn workers, beside the baseline of
prometheus-client's multiprocess collection of the same metric families (in-process, no HTTP).

    .venv/bin/python -m benchmarks.scrape_bench [--scrapes N]

Each plugin has run once before the scrapes, and one run lands between scrapes so the cache is
invalidated (the worst case for ours). A gzip row scrapes as Prometheus does (`Accept-Encoding:
gzip`) and gives the body's size both ways. In-process rows give what the runner's own
`process_*`/`python_*` series cost per scrape and what importing prometheus-client costs the
runner (time and resident memory, in a fresh interpreter). Writes benchmarks/results/scrape.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import make_live_server

from .common import summary, table, timed, write

# ruff: noqa: E501
BASELINE = textwrap.dedent("""
    import os, sys, time, json, statistics
    d = sys.argv[1]; n = int(sys.argv[2]); w = int(sys.argv[3])
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = d
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
    for worker in range(w):
        pid = os.fork()
        if pid == 0:
            s = Counter("sidecar_plugin_success", "", ["plugin"]); e = Counter("sidecar_plugin_errors", "", ["plugin", "error_type"])
            h = Histogram("sidecar_plugin_execution_seconds", "", ["plugin"], buckets=[.001,.0025,.005,.01,.025,.05,.1,.25,.5,1,2.5,5,10,30,60,120,300])
            m = Histogram("sidecar_plugin_peak_memory_bytes", "", ["plugin"], buckets=[2**i*2**20 for i in range(3,13)])
            r = Counter("sidecar_plugin_rejected", "", ["plugin", "reason"])
            g = [Gauge(x, "", ["plugin"], multiprocess_mode="max") for x in ("sidecar_plugin_loaded_timestamp_seconds", "sidecar_plugin_last_run_timestamp_seconds")]
            f = Gauge("sidecar_plugin_in_flight", "", ["plugin"], multiprocess_mode="livesum")
            for i in range(n):
                p = f"p{i}"; s.labels(p).inc(); h.labels(p).observe(0.003); m.labels(p).observe(1e7); f.labels(p).set(0)
                for t in ("timeout","memory","import","value","runtime","exception","crash"): e.labels(p, t)
                for t in ("saturated", "invalid"): r.labels(p, t)
                for x in g: x.labels(p).set(time.time())
            os._exit(0)
        os.waitpid(pid, 0)
    reg = CollectorRegistry(); multiprocess.MultiProcessCollector(reg)
    out = []
    for _ in range(int(sys.argv[4])):
        t = time.perf_counter(); generate_latest(reg); out.append((time.perf_counter() - t) * 1000)
    print(json.dumps(out))
""")


IMPORT_COST = textwrap.dedent("""
    import json, os, time
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    import sidecar.serve  # what `sidecar serve` (the runner) has loaded before it builds its collectors
    before = rss()
    t = time.perf_counter()
    import prometheus_client
    ms = (time.perf_counter() - t) * 1000
    print(json.dumps([ms, (rss() - before) / 2**20]))
""")


def _import_cost(times: int = 7) -> dict[str, Any]:
    """Median time and resident-memory growth of `import prometheus_client` in a fresh interpreter."""
    runs = [json.loads(subprocess.check_output([sys.executable, "-c", IMPORT_COST])) for _ in range(times)]
    return {"what": "import prometheus_client in the runner, after sidecar.serve (fresh interpreter)", "plugins": "-", "workers": "-",
            "n": times, "median_ms": statistics.median(r[0] for r in runs),
            "p99_ms": max(r[0] for r in runs), "rss_mib": statistics.median(r[1] for r in runs)}


def _render_rows(n: int, scrapes: int) -> list[dict[str, Any]]:
    """In-process render of n plugins' cached lines with and without the process collectors."""
    from sidecar.metrics import Metrics

    rows = []
    for with_process in (False, True):
        m = Metrics((0.01, 0.1, 1.0), process_metrics=with_process)
        for i in range(n):
            m.add_plugin(f"p{i:04d}", 0.0, None)
        m.render()
        label = "with" if with_process else "without"
        rows.append({"what": f"in-process render, {label} process_/python_ series (cached)", "plugins": n,
                     "workers": "-", **summary(timed(m.render, scrapes * 4))})
    return rows


def _plugins(d: Path, n: int) -> None:
    for i in range(n):
        (d / f"p{i:04d}.py").write_text("def run(**params):\n    return params\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scrapes", type=int, default=50)
    ap.add_argument("--plugins", default="10,100,1000")
    ap.add_argument("--workers", default="1,4")
    args = ap.parse_args()
    rows = []
    for n in (int(x) for x in args.plugins.split(",")):
        for w in (int(x) for x in args.workers.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                plugins = Path(tmp) / "plugins"
                plugins.mkdir()
                _plugins(plugins, n)
                server = make_live_server(Path(tmp), workers=str(w), plugin_path=str(plugins))
                server.start()
                try:
                    for i in range(n):
                        server.run(f"p{i:04d}")
                    url = server.url + "/metrics"

                    sizes: dict[bool, int] = {}

                    def scrape(url: str = url, gzipped: bool = False, sizes: dict[bool, int] = sizes) -> None:
                        req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"} if gzipped else {})
                        with urllib.request.urlopen(req) as resp:
                            sizes[gzipped] = len(resp.read())

                    ms = []
                    for k in range(args.scrapes):
                        server.run(f"p{k % n:04d}")  # invalidate one plugin's cached lines
                        ms += timed(scrape, 1)
                    cached = timed(scrape, args.scrapes)
                    gzip_ms = timed(lambda: scrape(gzipped=True), args.scrapes)
                finally:
                    server.stop()
            rows.append({"what": "sidecar /metrics over HTTP (after a run)", "plugins": n, "workers": w,
                         **summary(ms), "body_kib": sizes[False] / 1024})
            rows.append({"what": "sidecar /metrics over HTTP (unchanged)", "plugins": n, "workers": w,
                         **summary(cached), "body_kib": sizes[False] / 1024})
            rows.append({"what": "sidecar /metrics over HTTP, gzip (unchanged)", "plugins": n, "workers": w,
                         **summary(gzip_ms), "body_kib": sizes[True] / 1024})
            with tempfile.TemporaryDirectory() as mp:
                out = subprocess.check_output([sys.executable, "-c", BASELINE, mp, str(n), str(w),
                                               str(max(5, args.scrapes // 5))])
            rows.append({"what": "baseline: prometheus-client multiprocess collect (no HTTP)", "plugins": n,
                         "workers": w, **summary(json.loads(out)), "body_kib": "-"})
        rows += [{**r, "body_kib": "-"} for r in _render_rows(n, args.scrapes)]
    rows.append({**_import_cost(), "body_kib": "-"})
    print(table(rows, ["what", "plugins", "workers", "n", "median_ms", "p99_ms", "body_kib"]))
    print(f"prometheus_client import grows the runner's RSS by {rows[-1]['rss_mib']:.1f} MiB")
    print("wrote", write("scrape", rows))


if __name__ == "__main__":
    main()
