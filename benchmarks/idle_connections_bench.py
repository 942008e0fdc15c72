"""Latency of /healthz and /metrics while thousands of idle connections churn: each connects, sends
nothing (`silent`) or one byte of a request line (`one byte`), and is reopened as soon as the
server closes it (what any client can do, no token needed).

    .venv/bin/python -m benchmarks.idle_connections_bench [--idle 4000] [--requests N]

The before-picture is gunicorn's stock gevent worker (no deferred accept, no eviction of idle
connections), selected through GUNICORN_CMD_ARGS; its requests each wait seconds, so it gets
a tenth of the requests.

The churn runs in its own process (one epoll loop), so the timed requests do not share its
interpreter. A request that gets no answer within --timeout seconds counts as a timeout. Writes
benchmarks/results/idle_connections.json.
"""

from __future__ import annotations

import argparse
import errno
import multiprocessing
import resource
import selectors
import socket
import tempfile
import time
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from tests.conftest import make_live_server

from .common import summary, table, timed_get, write


def _connect(port: int) -> socket.socket:
    s = socket.socket()
    s.setblocking(False)
    err = s.connect_ex(("127.0.0.1", port))
    if err not in (0, errno.EINPROGRESS):
        s.close()
        raise OSError(err, "connect")
    return s


def _churn(port: int, n: int, send: bytes, stop: Event, reopened: Any) -> None:
    """Hold `n` idle connections (each sends `send` once connected); reopen each the moment it is closed."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (n + 1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    sel = selectors.DefaultSelector()
    live = 0

    def open_one() -> None:
        nonlocal live
        try:
            s = _connect(port)
        except OSError:
            return
        sel.register(s, selectors.EVENT_WRITE if send else selectors.EVENT_READ)
        live += 1

    for _ in range(n):
        open_one()
    count = 0
    while not stop.is_set():
        for key, events in sel.select(timeout=0.2):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            if events & selectors.EVENT_WRITE:  # connected: send the first bytes, then wait
                try:
                    s.send(send)
                except OSError:
                    pass
                sel.modify(s, selectors.EVENT_READ)
                continue
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:  # closed by the server (or refused): open another
                sel.unregister(s)
                s.close()
                live -= 1
                count += 1
        while live < n:
            open_one()
        reopened.value = count
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]


SENDS = {"silent": b"", "one byte": b"G"}
WORKERS = {"shipped": None, "stock gevent (before)": "--worker-class gevent"}


def measure(port: int, idle: int, sends: str, requests: int, timeout: float,
            settle: float) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    stop, reopened = ctx.Event(), ctx.Value("q", 0)
    churner = ctx.Process(target=_churn, args=(port, idle, SENDS[sends], stop, reopened), daemon=True)
    churner.start()
    try:
        time.sleep(settle if idle else 0.5)  # let the churn reach its steady state
        start_count, t0 = reopened.value, time.monotonic()
        rows = []
        for path in ("/healthz", "/metrics"):
            got = [timed_get(port, path, timeout) for _ in range(requests)]
            ok = [ms for ms in got if ms is not None]
            row: dict[str, Any] = {"idle_connections": idle, "idle_sends": sends, "route": path,
                                   "failed": len(got) - len(ok)}
            row.update(summary(ok) if ok else {"median_ms": None, "p99_ms": None})
            row["max_ms"] = max(ok) if ok else None
            row["n"] = len(got)
            rows.append(row)
        rate = (reopened.value - start_count) / (time.monotonic() - t0)
        for row in rows:
            row["reopened_per_s"] = round(rate)
        return rows
    finally:
        stop.set()
        churner.join(10)
        if churner.is_alive():
            churner.kill()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--idle", type=int, default=4000, help="churning idle connections")
    ap.add_argument("--requests", type=int, default=100, help="requests per route and case")
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--settle", type=float, default=8.0, help="seconds of churn before measuring")
    args = ap.parse_args()
    rows = []
    for worker, cmd_args in WORKERS.items():
        with tempfile.TemporaryDirectory() as tmp:
            server = make_live_server(Path(tmp))
            if cmd_args:
                server.env["GUNICORN_CMD_ARGS"] = cmd_args
            server.start()
            try:
                for idle, sends in ((0, "silent"), (args.idle, "silent"), (args.idle, "one byte")):
                    n = args.requests if cmd_args is None or idle == 0 else max(3, args.requests // 10)
                    for row in measure(server.port, idle, sends, n, args.timeout, args.settle):
                        rows.append({"worker": worker, **row})
            finally:
                server.stop()
    cols = ["worker", "idle_connections", "idle_sends", "route", "n", "failed", "median_ms", "p99_ms", "max_ms",
            "reopened_per_s"]
    print(table(rows, cols))
    print("wrote", write("idle_connections", rows))


if __name__ == "__main__":
    main()
