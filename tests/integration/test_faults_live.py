"""Faults against the real service: a full, read-only, frozen data directory, a corrupt or deleted history,
results no store could take, slow clients, and requests gunicorn refuses before the app (answered in JSON)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import fsfaults
from tests.conftest import LiveServer, make_live_server
from tests.integration.test_service_live import scrape, value

pytestmark = pytest.mark.integration


def _poll(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def _raw(server: LiveServer, data: bytes, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the whole answer (gunicorn closes after its own errors)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
            head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
            headers = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if ": " in line)
            if "Content-Length" in headers and len(body) >= int(headers["Content-Length"]):
                break
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    return int(lines[0].split()[1]), dict(line.split(": ", 1) for line in lines[1:]), body


@pytest.mark.parametrize(("request_bytes", "status", "code"), [
    (b"POST /plugins/" + b"a" * 10_000 + b"/run HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
     414, "uri_too_long"),
    (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    (b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", 400, "bad_request"),
    (b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",
     431, "request_header_fields_too_large"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 10_000 + b"\r\n\r\n",
     431, "request_header_fields_too_large"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", 400, "bad_request"),
])
def test_gunicorn_errors_are_json(live_server: LiveServer, request_bytes: bytes, status: int, code: str) -> None:
    got, headers, body = _raw(live_server, request_bytes)
    assert got == status, body
    assert headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert doc["error"]["code"] == code and doc["error"]["message"]
    assert len(doc["error"]["message"]) < 300  # the 10 KB name is not echoed back


@pytest.fixture
def slow_clients(live_server: LiveServer) -> Iterator[list[socket.socket]]:
    """200 connections: half dripping a header one byte a second, half dripping a declared body."""
    socks: list[socket.socket] = []
    stop = threading.Event()
    for i in range(200):
        s = socket.create_connection(("127.0.0.1", live_server.port), timeout=10)
        if i % 2:
            s.sendall(b"POST /plugins/echo/run HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{")
        else:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)

    def drip() -> None:
        while not stop.wait(1.0):
            for s in socks:
                try:
                    s.send(b" " if s.fileno() % 2 else b"X")
                except OSError:
                    pass

    t = threading.Thread(target=drip, daemon=True)
    t.start()
    yield socks
    stop.set()
    t.join()
    for s in socks:
        s.close()


def test_health_and_metrics_answer_while_200_slow_clients_are_open(live_server: LiveServer,
                                                                   slow_clients: list[socket.socket]) -> None:
    for _ in range(5):
        assert live_server.request("GET", "/healthz", timeout=30)[0] == 200
        status, _, body = live_server.request("GET", "/metrics", timeout=30)
        assert status == 200 and b"sidecar_plugin_success_total" in body
    assert live_server.run("echo", value=1)["outcome"] == "success"
    # the slow connections are still open: none was answered or dropped meanwhile
    for s in slow_clients[:10]:
        s.setblocking(False)
        with pytest.raises(BlockingIOError):
            s.recv(1)


def _store_errors(server: LiveServer, reason: str) -> float:
    return float(value(scrape(server), "sidecar_store_errors_total", reason=reason))


def test_full_disk_runs_answer_and_everything_recovers(tmp_path: Path) -> None:
    server = make_live_server(tmp_path)
    with fsfaults.tmpfs(server.data_dir / "data", "2m") as data:
        server.start()
        try:
            server.run("echo", n=0)
            filler = fsfaults.fill(data)
            results = [server.run("echo", n=i + 1) for i in range(30)]
            assert [r["result"] for r in results] == [{"n": i + 1} for i in range(30)]  # 200, with results
            assert _store_errors(server, "disk_full") >= 1
            status, doc = server.json("GET", "/readyz")
            assert status == 503 and not doc["ready"] and "disk full" in doc["reason"], doc
            assert value(scrape(server), "sidecar_plugin_success_total", plugin="echo") == 31
            filler.unlink()
            _poll(lambda: server.request("GET", "/readyz")[0] == 200)
            _poll(lambda: value(scrape(server), "sidecar_store_pending_runs") == 0)
            status, health = server.json("GET", "/plugins/echo/health")
            assert health["success_count"] == 31  # every run written: health agrees with the counters
            assert value(scrape(server), "sidecar_store_dropped_runs_total") == 0
            assert "disk full" in server.log.read_text()
        finally:
            server.stop()


def test_read_only_data_dir_stops_start_up_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with fsfaults.read_only_mount(tmp_path / "data", tmp_path / "ro") as ro:
        server = make_live_server(tmp_path, data_dir=str(ro))
        done = subprocess.run([str(Path(sys.executable).with_name("sidecar")), "serve"], env=server.env,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if "data directory" in line]
    assert lines == [f"sidecar: error: cannot use data directory {ro}: Read-only file system"], done.stderr


def test_corrupt_history_is_moved_aside_at_start(tmp_path: Path) -> None:
    server = make_live_server(tmp_path)
    (server.data_dir / "data").mkdir()
    (server.data_dir / "data" / "history.sqlite3").write_bytes(b"not a database" * 1000)
    server.start()
    try:
        assert server.run("echo", x=1)["outcome"] == "success"
        assert server.json("GET", "/plugins/echo/health")[1]["success_count"] == 1
        aside = [p.name for p in (server.data_dir / "data").iterdir() if ".corrupt-" in p.name]
        assert len(aside) == 1 and aside[0] in server.log.read_text()
    finally:
        server.stop()


def test_a_run_longer_than_the_worker_timeout_is_answered(tmp_path: Path) -> None:
    """Heartbeats continue while a greenlet waits on the runner: gunicorn's worker timeout (cut to 2 s
    here, 30 s as shipped) never kills a worker in the middle of a long run."""
    server = make_live_server(tmp_path)
    server.env["GUNICORN_CMD_ARGS"] = "--timeout 2"
    server.start()
    try:
        workers = set(server.worker_pids())
        doc = server.run("sleep", seconds=5)
        assert doc["outcome"] == "success"
        assert set(server.worker_pids()) == workers
        assert "WORKER TIMEOUT" not in server.log.read_text()
    finally:
        server.stop()


@pytest.mark.parametrize(("plugin", "outcome"), [("surrogate_error", "runtime"), ("forged_result", "success")])
def test_nothing_a_plugin_raises_or_forges_stops_the_history(tmp_path: Path, plugin: str, outcome: str) -> None:
    server = make_live_server(tmp_path)
    server.start()
    try:
        assert server.run(plugin)["outcome"] == outcome
        assert [server.run("echo", i=i)["result"] for i in range(5)] == [{"i": i} for i in range(5)]
        assert server.request("GET", "/readyz")[0] == 200
        status, health = server.json("GET", "/plugins/echo/health")
        assert status == 200 and health["success_count"] == 5
        status, hostile = server.json("GET", f"/plugins/{plugin}/health")
        assert status == 200 and hostile["success_count"] + hostile["error_count"] == 1
        assert value(scrape(server), "sidecar_store_pending_runs") == 0
    finally:
        server.stop()


def test_a_frozen_data_directory_silences_nothing(tmp_path: Path) -> None:
    """fsfreeze blocks every write (and SQLite's reads) on the history's file system until thawed."""
    server = make_live_server(tmp_path)
    with fsfaults.ext4(server.data_dir / "data") as data:
        server.start()
        try:
            server.run("echo", n=0)
            with fsfaults.frozen(data):
                results = [server.run("echo", n=i + 1)["result"] for i in range(3)]  # each 200
                assert results == [{"n": i + 1} for i in range(3)]
                for _ in range(3):
                    samples = scrape(server)  # /metrics answers and counts
                    assert value(samples, "sidecar_plugin_success_total", plugin="echo") == 4
                    status, doc = server.json("GET", "/readyz", timeout=30)
                    assert status == 503 and not doc["ready"], doc
                    assert "stalled" in doc["reason"] or "did not answer" in doc["reason"], doc
                    status, doc = server.json("GET", "/plugins/echo/health", timeout=30)
                    assert status == 503 and doc["error"]["code"] == "store_unavailable", doc
                assert _store_errors(server, "stalled") >= 1
                assert value(scrape(server), "sidecar_store_pending_runs") >= 1
                assert server.request("GET", "/healthz")[0] == 200
            _poll(lambda: server.request("GET", "/readyz")[0] == 200)
            _poll(lambda: value(scrape(server), "sidecar_store_pending_runs") == 0)
            status, health = server.json("GET", "/plugins/echo/health")
            assert health["success_count"] == 4  # every run written once the disk answered
            assert "writes stalled" in server.log.read_text()
        finally:
            server.stop()


def test_a_deleted_history_is_noticed_and_runs_after_it_survive_a_restart(tmp_path: Path) -> None:
    server = make_live_server(tmp_path)
    server.start()
    try:
        for i in range(2):
            server.run("echo", i=i)
        (server.data_dir / "data" / "history.sqlite3").unlink()  # as `rm` would: its -wal and -shm stay
        for i in range(3):
            server.run("echo", i=i)
        assert value(scrape(server), "sidecar_store_reopens_total") == 1
        assert server.json("GET", "/plugins/echo/health")[1]["success_count"] == 3
        assert server.request("GET", "/readyz")[0] == 200
    finally:
        server.stop()
    assert "was deleted under the sidecar" in server.log.read_text()
    server.start()
    try:
        runs = server.json("GET", "/plugins/echo/runs")[1]["runs"]
        assert len(runs) == 3  # written to the new file, not into the deleted one
    finally:
        server.stop()
