"""A clean stop of `sidecar serve`: SIGTERM lets runs in flight answer their callers (up to the stop grace),
ends the rest as the sidecar's doing, and marks no plugin as crashed; workers never outlive their master."""

from __future__ import annotations

import http.client
import signal
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import LiveServer, make_live_server, poll

pytestmark = pytest.mark.integration


def _in_flight(server: LiveServer) -> float:
    status, _, body = server.request("GET", "/metrics")
    assert status == 200
    return sum(s.value for fam in text_string_to_metric_families(body.decode()) for s in fam.samples
               if s.name == "sidecar_plugin_in_flight" and s.labels.get("plugin") == "sleep")


def _start_run(server: LiveServer, seconds: float) -> tuple[threading.Thread, dict[str, Any]]:
    """A run of `sleep` that is in flight when this returns; its caller's answer lands in the dict."""
    answer: dict[str, Any] = {}

    def call() -> None:
        answer["status"], answer["doc"] = server.json("POST", "/plugins/sleep/run", {"params": {"seconds": seconds}})

    caller = threading.Thread(target=call)
    caller.start()
    poll("the run to start", lambda: (_in_flight(server) >= 1, None), every=0.02)
    return caller, answer


def _history_after_restart(server: LiveServer) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    server.start()
    try:
        _, runs = server.json("GET", "/plugins/sleep/runs")
        _, health = server.json("GET", "/plugins/sleep/health")
        return runs["runs"], health
    finally:
        assert server.stop() == 0


def test_sigterm_lets_a_run_in_flight_answer_its_caller_and_refuses_new_work(tmp_path: Path) -> None:
    server = make_live_server(tmp_path)
    server.start()
    assert server.proc is not None
    try:
        caller, answer = _start_run(server, seconds=3.0)
    except BaseException:
        server.stop()
        raise
    server.proc.send_signal(signal.SIGTERM)
    # while the run finishes: not ready, and no new run or probe (503 `stopping`, never 500)
    state = poll("/readyz to say stopping", lambda: (server.json("GET", "/readyz")[0] == 503,
                                                     server.json("GET", "/readyz")[1]))
    assert state["reason"] == "the sidecar is stopping"
    for method, path, body in (("POST", "/plugins/echo/run", {"params": {}}), ("GET", "/probe?target=echo", None)):
        status, doc = server.json(method, path, body)
        assert (status, doc["error"]["code"]) == (503, "stopping"), doc
    caller.join()
    assert answer["status"] == 200 and answer["doc"]["outcome"] == "success", answer
    assert server.proc.wait(timeout=60) == 0, server.log.read_text()
    runs, health = _history_after_restart(server)
    assert [r["outcome"] for r in runs] == ["success"]
    assert health["status"] == "healthy" and health["errors_by_type"] == {}


def test_a_run_past_the_stop_grace_is_recorded_aborted_not_crashed(tmp_path: Path) -> None:
    server = make_live_server(tmp_path, stop_grace_seconds="1")
    server.start()
    assert server.proc is not None
    try:
        caller, answer = _start_run(server, seconds=20.0)
    except BaseException:
        server.stop()
        raise
    server.proc.send_signal(signal.SIGTERM)
    caller.join()
    assert answer["status"] == 200, answer  # the caller is told what happened to its run
    assert answer["doc"]["outcome"] == "aborted" and answer["doc"]["error"]["type"] == "SidecarStopping", answer
    assert server.proc.wait(timeout=60) == 0, server.log.read_text()
    assert "Bad file descriptor" not in server.log.read_text()
    runs, health = _history_after_restart(server)
    assert [(r["outcome"], r["error_type"]) for r in runs] == [("aborted", "SidecarStopping")], runs
    assert runs[0]["finished_at"] > runs[0]["started_at"]  # its real times
    assert health["status"] == "unknown" and health["errors_by_type"] == {}, health  # the plugin is not blamed


def test_workers_stop_serving_when_their_master_is_killed(tmp_path: Path) -> None:
    """Even a worker in the middle of a request: none goes on serving (nor answers that run) without its master."""
    server = make_live_server(tmp_path)
    server.start()
    assert server.proc is not None
    try:
        master = server.gunicorn_master()
        workers = [psutil.Process(pid) for pid in server.worker_pids()]
        assert workers
        answer: dict[str, Any] = {}

        def call() -> None:
            try:
                answer["status"] = server.request("POST", "/plugins/sleep/run", {"params": {"seconds": 20}})[0]
            except (OSError, http.client.HTTPException) as exc:  # cut off mid-answer: no answer either
                answer["error"] = exc

        caller = threading.Thread(target=call)
        caller.start()
        poll("the run to start", lambda: (_in_flight(server) >= 1, None), every=0.02)
        master.kill()

        def refused() -> tuple[bool, Any]:
            try:
                return False, server.request("GET", "/healthz", timeout=2)[0]
            except http.client.HTTPException as exc:  # an answer cut off while its worker died: not yet refused
                return False, exc
            except OSError as exc:  # urllib wraps it; a reset or a timeout while a worker dies is not yet refused
                return isinstance(getattr(exc, "reason", exc), ConnectionRefusedError), exc

        poll("the listening port to refuse connections", refused, every=0.02)
        alive = [w.pid for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
        assert alive == [], "workers still running without their master"
        caller.join()
        assert "status" not in answer, answer  # its worker died with the master: no answer from a stopping runner
    finally:
        server.stop()
