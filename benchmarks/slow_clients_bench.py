"""Latency of /healthz and /metrics with 0 and 200 slow connections open (half dripping a request
header one byte a second, half a declared body), for the shipped gevent worker and, as the
before-picture, gunicorn's gthread worker (2 workers x 8 threads) through GUNICORN_CMD_ARGS.

    .venv/bin/python -m benchmarks.slow_clients_bench [--requests N] [--slow N]

A request that gets no answer within --timeout seconds counts as a timeout. Writes
benchmarks/results/slow_clients.json.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
from pathlib import Path

from tests.conftest import make_live_server

from .common import summary, table, timed_get, write

WORKERS = {"gevent (shipped)": None, "gthread 2x8 (before)": "--worker-class gthread --threads 8"}


def _open_slow(port: int, n: int) -> list[socket.socket]:
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"POST /plugins/echo/run HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{" if i % 2
                  else b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    return socks


def _drip(socks: list[socket.socket], stop: threading.Event) -> None:
    while not stop.wait(1.0):
        for s in socks:
            try:
                s.send(b"X")
            except OSError:
                pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=50, help="requests per route and case")
    ap.add_argument("--slow", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=5.0)
    args = ap.parse_args()
    rows = []
    for worker, cmd_args in WORKERS.items():
        with tempfile.TemporaryDirectory() as tmp:
            server = make_live_server(Path(tmp))
            if cmd_args:
                server.env["GUNICORN_CMD_ARGS"] = cmd_args
            server.start()
            try:
                for slow in (0, args.slow):
                    socks = _open_slow(server.port, slow)
                    stop = threading.Event()
                    dripper = threading.Thread(target=_drip, args=(socks, stop), daemon=True)
                    dripper.start()
                    time.sleep(1.5)  # let every slow connection reach a worker
                    # fewer tries where each may wait the whole timeout
                    n = args.requests if cmd_args is None or slow == 0 else max(3, args.requests // 10)
                    for path in ("/healthz", "/metrics"):
                        got = [timed_get(server.port, path, args.timeout) for _ in range(n)]
                        ok = [ms for ms in got if ms is not None]
                        row = {"worker": worker, "slow_connections": slow, "route": path,
                               "timeouts": len(got) - len(ok)}
                        row.update(summary(ok) if ok else {"n": 0, "median_ms": None, "p99_ms": None})
                        row["n"] = len(got)
                        rows.append(row)
                    stop.set()
                    dripper.join()
                    for s in socks:
                        s.close()
            finally:
                server.stop()
    print(table(rows, ["worker", "slow_connections", "route", "n", "timeouts", "median_ms", "p99_ms"]))
    print("wrote", write("slow_clients", rows))


if __name__ == "__main__":
    main()
