"""Load on a live sidecar over loopback: R runs of `echo` at concurrency C, then a check that no
answered run was lost (every 200 is in the metrics and in the history behind the health route).

    .venv/bin/python -m benchmarks.load_bench [--runs 2000] [--concurrency 32]

503s are the concurrency limit (`SIDECAR_MAX_CONCURRENT_RUNS`, 2 x cores by default) doing its
job, with Retry-After. Two passes: clients that take a 503 as the answer, and clients that retry
it (after 10-20 ms, sooner than Retry-After asks, to load the server harder) until the run is
answered; latency is per run, retries included. Writes benchmarks/results/load.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_live_server

from .common import summary, table, write


def _worker(port: int, todo: list[int], lock: threading.Lock, statuses: Counter[int], ms: list[float],
            retry: bool) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while True:
        with lock:
            if not todo:
                break
            i = todo.pop()
        body = json.dumps({"params": {"i": i}})
        t = time.perf_counter()
        while True:
            try:
                conn.request("POST", "/plugins/echo/run", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                status = resp.status
                if status == 200 and json.loads(data)["result"] != {"i": i}:
                    status = -1  # a wrong answer
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                status = 0
            with lock:
                statuses[status] += 1
            if status != 503 or not retry:
                break
            time.sleep(0.01 + random.random() * 0.01)
        elapsed = (time.perf_counter() - t) * 1000.0
        with lock:
            ms.append(elapsed)
    conn.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--workers", type=int, nargs="+", default=[2], help="gunicorn worker counts to compare")
    args = ap.parse_args()
    rows = [_load(args.runs, args.concurrency, retry, workers) for workers in args.workers for retry in (False, True)]
    print(table(rows, ["workers", "clients", "runs", "concurrency", "ok_200", "saturated_503", "other", "runs_per_s",
                       "median_ms", "p99_ms", "metrics_success", "history_success", "lost"]))
    print("wrote", write("load", rows))


def _load(runs: int, concurrency: int, retry: bool, workers: int = 2) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        server = make_live_server(Path(tmp), workers=str(workers))
        server.start()
        try:
            todo = list(range(runs))
            lock = threading.Lock()
            statuses: Counter[int] = Counter()
            ms: list[float] = []
            threads = [threading.Thread(target=_worker, args=(server.port, todo, lock, statuses, ms, retry))
                       for _ in range(concurrency)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            _, health = server.json("GET", "/plugins/echo/health")
            _, _, body = server.request("GET", "/metrics")
            counted = {(s.name, s.labels.get("plugin")): s.value
                       for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}
        finally:
            server.stop()
    ok = statuses[200]
    recorded = health["success_count"]
    succeeded = int(counted[("sidecar_plugin_success_total", "echo")])
    return {"workers": workers, "clients": "retry 503" if retry else "take 503", "runs": runs,
            "concurrency": concurrency,
           "wall_s": wall,
           "ok_200": ok, "runs_per_s": ok / wall, "saturated_503": statuses[503],
           "other": sum(v for k, v in statuses.items() if k not in (200, 503)),
           **summary(ms), "metrics_success": succeeded, "history_success": recorded,
           "lost": ok - min(recorded, succeeded)}


if __name__ == "__main__":
    main()
