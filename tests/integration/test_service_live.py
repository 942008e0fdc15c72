"""The real service: `sidecar serve` with 2 gunicorn workers on a loopback port."""

from __future__ import annotations

import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import LiveServer, make_live_server, plant_packages

pytestmark = pytest.mark.integration


def scrape(server: LiveServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, headers, body = server.request("GET", "/metrics")
    assert status == 200
    samples = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name: str, **labels: str):
    return samples[(name, tuple(sorted(labels.items())))]


def test_hundred_runs_then_every_scrape_agrees(live_server: LiveServer):
    before = scrape(live_server)
    base_ok = value(before, "sidecar_plugin_success_total", plugin="hello")
    base_err = value(before, "sidecar_plugin_errors_total", plugin="raises", error_type="value")
    base_count = value(before, "sidecar_plugin_execution_seconds_count", plugin="hello")
    results: list[str] = []
    lock = threading.Lock()

    def drive(n: int) -> None:
        for i in range(n):
            if i % 5 == 4:
                out = live_server.run("raises", kind="ValueError")["outcome"]
            else:
                out = live_server.run("hello", name=str(i))["outcome"]
            with lock:
                results.append(out)

    threads = [threading.Thread(target=drive, args=(25,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("success") == 80 and results.count("value") == 20
    for _ in range(10):  # several workers answer; each must show the same cumulative numbers
        s = scrape(live_server)
        assert value(s, "sidecar_plugin_success_total", plugin="hello") == base_ok + 80
        assert value(s, "sidecar_plugin_errors_total", plugin="raises", error_type="value") == base_err + 20
        assert value(s, "sidecar_plugin_execution_seconds_count", plugin="hello") == base_count + 80
        assert value(s, "sidecar_plugin_execution_seconds_bucket", plugin="hello", le="+Inf") == base_count + 80
        assert value(s, "sidecar_plugin_in_flight", plugin="hello") == 0


def test_health_average_is_the_mean_of_the_last_ten_runs(live_server: LiveServer):
    for i in range(12):
        live_server.run("hello", name=f"avg{i}")
    live_server.run("raises", kind="RuntimeError")
    _, health = live_server.json("GET", "/plugins/hello/health")
    _, runs = live_server.json("GET", "/plugins/hello/runs?limit=10")
    times = [r["execution_time_ms"] for r in runs["runs"]]
    assert len(times) == 10
    assert health["avg_execution_time_ms"] == pytest.approx(statistics.mean(times))
    assert health["execution_time_ms"] == pytest.approx(times[0])
    assert health["status"] == "healthy"
    assert health["last_used"].endswith("Z")
    _, bad = live_server.json("GET", "/plugins/raises/health")
    assert bad["status"] == "failing"
    assert bad["last_error"]["type"] == "RuntimeError"
    assert bad["errors_by_type"]["runtime"] >= 1


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), [
    ("GET", "/plugins/nope/health", None, 404, "unknown_plugin"),
    ("POST", "/plugins/nope/run", b"{}", 404, "unknown_plugin"),
    ("POST", "/plugins/echo/run", b"{not json", 400, "bad_request"),
    ("POST", "/plugins/echo/run", b"[1, 2]", 400, "bad_request"),
    ("POST", "/plugins/echo/run", b'{"params": [1]}', 400, "bad_request"),
    ("POST", "/plugins/echo/run", b'{"timeout_seconds": 100000}', 400, "bad_request"),
    ("POST", "/plugins/echo/run", b'{"timeout_seconds": -1}', 400, "bad_request"),
    ("POST", "/plugins/echo/run", b'{"surprise": 1}', 400, "bad_request"),
    ("GET", "/plugins/echo/runs?limit=0", None, 400, "bad_request"),
    ("GET", "/no/such/route", None, 404, "not_found"),
])
def test_error_statuses(live_server: LiveServer, method, path, body, status, code):
    got, headers, data = live_server.request(method, path, raw=body, headers={"Content-Type": "application/json"})
    assert got == status
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(data)["error"]["code"] == code


def test_ten_megabyte_body_is_413(live_server: LiveServer):
    conn = http.client.HTTPConnection("127.0.0.1", live_server.port, timeout=30)
    try:
        body = b'{"params": {"x": "' + b"a" * (10 * 1024 * 1024) + b'"}}'
        try:
            conn.request("POST", "/plugins/echo/run", body=body, headers={"Content-Type": "application/json"})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before the upload ends
        resp = conn.getresponse()
        assert resp.status == 413
        assert json.loads(resp.read())["error"]["code"] == "payload_too_large"
    finally:
        conn.close()


def test_plugin_failure_is_a_200_outcome(live_server: LiveServer):
    doc = live_server.run("loop", timeout_seconds=0.5)
    assert doc["outcome"] == "timeout"
    assert live_server.run("segfault")["outcome"] == "crash"


def test_openmetrics_when_asked(live_server: LiveServer):
    status, headers, body = live_server.request("GET", "/metrics",
                                                headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_worker_killed_mid_run_is_replaced_and_history_intact(live_server: LiveServer):
    _, before = live_server.json("GET", "/plugins/sleep/health")
    outcome: dict[str, object] = {}

    def slow() -> None:
        try:
            outcome["status"] = live_server.request("POST", "/plugins/sleep/run", {"params": {"seconds": 1.5}})[0]
        except OSError as exc:  # the worker serving us dies
            outcome["error"] = exc

    t = threading.Thread(target=slow)
    t.start()
    deadline = time.monotonic() + 10
    while value(scrape(live_server), "sidecar_plugin_in_flight", plugin="sleep") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    workers = live_server.worker_pids()
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    t.join()
    assert "error" in outcome or outcome.get("status") in (200, 502, 503)
    deadline = time.monotonic() + 30
    while True:  # the server keeps answering once gunicorn replaces its workers
        try:
            if live_server.request("GET", "/healthz", timeout=2)[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert set(live_server.worker_pids()).isdisjoint(workers)
    deadline = time.monotonic() + 10
    while True:  # the run itself finished in the runner and was recorded
        _, after = live_server.json("GET", "/plugins/sleep/health")
        if after["success_count"] == before["success_count"] + 1:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    s = scrape(live_server)
    assert value(s, "sidecar_plugin_success_total", plugin="sleep") == after["success_count"]
    assert value(s, "sidecar_plugin_in_flight", plugin="sleep") == 0


def test_restart_keeps_history(tmp_path):
    server = make_live_server(tmp_path)
    server.start()
    try:
        for _ in range(3):
            server.run("echo", a=1)
    finally:
        assert server.stop() == 0
    server.start()
    try:
        _, health = server.json("GET", "/plugins/echo/health")
        assert health["success_count"] == 3
        _, runs = server.json("GET", "/plugins/echo/runs")
        assert len(runs["runs"]) == 3
        s = scrape(server)  # counters restart at zero with the process, as Prometheus expects
        assert value(s, "sidecar_plugin_success_total", plugin="echo") == 0
    finally:
        server.stop()


def test_token_and_saturation(tmp_path):
    server = make_live_server(tmp_path, api_token="t0ken", max_concurrent_runs="1")
    server.start()
    try:
        status, doc = server.json("POST", "/plugins/echo/run", {"params": {}})
        assert status == 401 and doc["error"]["code"] == "unauthorized"
        status, doc = server.json("POST", "/plugins/echo/run", {}, headers={"Authorization": "Bearer wrong"})
        assert status == 401
        auth = {"Authorization": "Bearer t0ken", "Content-Type": "application/json"}
        assert server.json("GET", "/plugins/echo/health")[0] == 200  # reads stay open
        t = threading.Thread(target=server.request, args=("POST", "/plugins/sleep/run", {"params": {"seconds": 2}}),
                             kwargs={"headers": auth})
        t.start()
        deadline = time.monotonic() + 10
        while value(scrape(server), "sidecar_plugin_in_flight", plugin="sleep") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        status, headers, data = server.request("POST", "/plugins/echo/run", {"params": {}}, headers=auth)
        t.join()
        assert status == 503
        assert headers["Retry-After"] == "1"
        assert json.loads(data)["error"]["code"] == "saturated"
        assert value(scrape(server), "sidecar_plugin_rejected_total", plugin="echo", reason="saturated") == 1
        assert server.json("POST", "/plugins/echo/run", {}, headers=auth)[0] == 200
    finally:
        server.stop()


def test_gunicorn_stopped_by_someone_else_is_a_failed_exit(tmp_path):
    """A supervisor must not read an unasked end of gunicorn as a clean stop."""
    server = make_live_server(tmp_path)
    server.start()
    assert server.proc is not None
    server.gunicorn_master().send_signal(signal.SIGTERM)
    code = server.proc.wait(timeout=60)
    assert code == 1, server.log.read_text()  # gunicorn's master stops cleanly on SIGTERM: exit 0, not asked
    assert "gunicorn exited 0 although serve was not asked to stop" in server.log.read_text()


def test_serve_never_imports_from_the_working_directory(tmp_path):
    """`python -m` and gunicorn both put the working directory on sys.path: planted packages there must not run."""
    cwd = tmp_path / "cwd"
    marker = plant_packages(cwd)
    server = make_live_server(tmp_path)
    server.cwd = cwd
    server.start()
    try:
        assert server.run("echo", a=1)["outcome"] == "success"
    finally:
        assert server.stop() == 0
    assert not marker.exists(), marker.read_text()


def test_a_second_sidecar_on_the_same_data_directory_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = make_live_server(tmp_path / "a")
    first.start()
    assert first.proc is not None
    try:
        second = make_live_server(tmp_path / "b")
        second.env["SIDECAR_DATA_DIR"] = first.env["SIDECAR_DATA_DIR"]
        proc = subprocess.run([str(Path(sys.executable).with_name("sidecar")), "serve"], env=second.env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 2, proc.stderr
        assert f"in use by another sidecar (pid {first.proc.pid})" in proc.stderr
        assert first.run("echo", a=1)["outcome"] == "success"  # the first one keeps serving
    finally:
        assert first.stop() == 0


def _runtime_dir_of(server: LiveServer, base: Path) -> Path:
    """The runtime directory `server` holds: the one whose lock file its serve process has open."""
    assert server.proc is not None
    held = [Path(f.path).parent for f in psutil.Process(server.proc.pid).open_files()
            if Path(f.path).name == ".lock" and Path(f.path).parent.parent == base]
    assert len(held) == 1, held
    return held[0]


def test_a_killed_sidecars_runtime_directory_is_removed_by_the_next_start(tmp_path):
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    servers = {}
    for name in ("killed", "live", "next"):
        (tmp_path / name).mkdir()
        servers[name] = make_live_server(tmp_path / name)
        servers[name].env["TMPDIR"] = str(runtime)
    servers["killed"].start()
    servers["live"].start()
    try:
        killed_dir = _runtime_dir_of(servers["killed"], runtime)
        live_dir = _runtime_dir_of(servers["live"], runtime)
        killed = servers["killed"].proc
        assert killed is not None
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=30)
        assert killed_dir.is_dir()  # what a SIGKILL leaves behind
        servers["next"].start()
        try:
            assert not killed_dir.exists()
            assert live_dir.is_dir() and _runtime_dir_of(servers["next"], runtime).is_dir()
            assert servers["live"].run("echo", a=1)["outcome"] == "success"
        finally:
            servers["next"].stop()
    finally:
        servers["live"].stop()


def test_workers_carry_only_the_web_tier(live_server):
    """The runner holds the history (sqlite3) and the sandbox client; a worker maps neither's modules."""
    workers = live_server.worker_pids()
    assert workers
    for pid in workers:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "_sqlite3" not in maps and "psutil" not in maps, pid
    assert live_server.proc is not None
    assert "_sqlite3" in Path(f"/proc/{live_server.proc.pid}/maps").read_text()  # the check can see it
