"""Scrape time of /metrics over HTTP for N plugins and W gunicorn workers, beside the baseline of
prometheus-client's multiprocess collection of the same metric families (in-process, no HTTP).

    .venv/bin/python -m benchmarks.scrape_bench [--scrapes N]

Each plugin has run once before the scrapes, and one run lands between scrapes so the cache is
invalidated (the worst case for ours). Writes benchmarks/results/scrape.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import urllib.request
from pathlib import Path

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

                    def scrape(url: str = url) -> None:
                        with urllib.request.urlopen(url) as resp:
                            resp.read()

                    ms = []
                    for k in range(args.scrapes):
                        server.run(f"p{k % n:04d}")  # invalidate one plugin's cached lines
                        ms += timed(scrape, 1)
                    cached = timed(scrape, args.scrapes)
                finally:
                    server.stop()
            rows.append({"what": "sidecar /metrics over HTTP (after a run)", "plugins": n, "workers": w,
                         **summary(ms)})
            rows.append({"what": "sidecar /metrics over HTTP (unchanged)", "plugins": n, "workers": w,
                         **summary(cached)})
            with tempfile.TemporaryDirectory() as mp:
                out = subprocess.check_output([sys.executable, "-c", BASELINE, mp, str(n), str(w),
                                               str(max(5, args.scrapes // 5))])
            rows.append({"what": "baseline: prometheus-client multiprocess collect (no HTTP)", "plugins": n,
                         "workers": w, **summary(json.loads(out))})
    print(table(rows, ["what", "plugins", "workers", "n", "median_ms", "p99_ms"]))
    print("wrote", write("scrape", rows))


if __name__ == "__main__":
    main()
