"""The runner's scheduler: checks run on their interval, never overlap themselves, and are recorded."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.config import CheckConfig, Settings
from sidecar.errors import Saturated
from sidecar.plugins import Entry
from sidecar.runner import Runner, health_status


@pytest.fixture
def runner(tmp_path) -> Iterator[Runner]:
    checks = (CheckConfig("tick", "echo", {"n": 1}, interval_seconds=0.1),
              CheckConfig("slow", "sleep", {"seconds": 0.4}, interval_seconds=0.05))
    r = Runner(Settings(data_dir=str(tmp_path), checks=checks, entry_points=False))
    yield r
    r.close()


def _wait_for(predicate, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_scheduled_checks_run_and_are_recorded(runner: Runner):
    _wait_for(lambda: runner.health("tick")["success_count"] >= 3)
    runs = runner.runs("tick", 3)
    assert {r["trigger"] for r in runs} == {"schedule"}
    assert runner.health("tick")["interval_seconds"] == 0.1
    body, _ = runner.render_metrics()
    assert b'sidecar_plugin_interval_seconds{plugin="tick"} 0.1' in body


def test_a_check_never_overlaps_itself(runner: Runner):
    _wait_for(lambda: runner.health("slow")["success_count"] >= 2)
    runs = sorted(runner.store.recent("slow", 10), key=lambda r: r["started_at"])
    for earlier, later in zip(runs, runs[1:], strict=False):
        assert later["started_at"] >= earlier["finished_at"]


def _sample(runner: Runner, name: str, **labels: str) -> float:
    body, _ = runner.render_metrics()
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    raise AssertionError(f"no sample {name}{labels}")


def test_three_checks_on_one_interval_with_two_slots_all_keep_running_on_a_busy_sidecar(tmp_path: Path):
    # Each run holds its slot for most of the interval and API calls compete for the same two slots:
    # more demand than capacity, so some ticks are skipped — but no check may be left out.
    checks = tuple(CheckConfig(f"c{i}", "sleep", {"seconds": 0.12}, interval_seconds=0.2) for i in range(3))
    runner = Runner(Settings(data_dir=str(tmp_path), checks=checks, entry_points=False, max_concurrent_runs=2))
    stop = threading.Event()
    api_runs = {"ok": 0, "503": 0}

    def busy_api() -> None:
        while not stop.is_set():
            try:
                runner.run("sleep", {"seconds": 0.05})
                api_runs["ok"] += 1
            except Saturated:
                api_runs["503"] += 1
                stop.wait(0.01)

    api = threading.Thread(target=busy_api)
    api.start()
    try:
        _wait_for(lambda: min(runner.health(f"c{i}")["success_count"] for i in range(3)) >= 4, within=120)
        stop.set()
        api.join(30)
        assert api_runs["ok"] > 0
        for i in range(3):
            assert {r["trigger"] for r in runner.store.recent(f"c{i}", 50)} == {"schedule"}
            assert _sample(runner, "sidecar_plugin_rejected_total", plugin=f"c{i}", reason="invalid") == 0
        assert _sample(runner, "sidecar_scheduler_errors_total") == 0
    finally:
        stop.set()
        api.join(30)
        runner.close()


def test_a_check_whose_scheduling_raises_does_not_stop_the_others(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch):
    checks = (CheckConfig("bad", "echo", {}, interval_seconds=0.2),
              CheckConfig("good", "echo", {}, interval_seconds=0.2))
    runner = Runner(Settings(data_dir=str(tmp_path), checks=checks, entry_points=False), start_scheduler=False)
    limits = runner.registry.limits

    def broken_limits(entry: Entry, timeout_seconds: float | None = None) -> tuple[float, int]:
        if entry.name == "bad":
            raise RuntimeError("a fault while scheduling bad")
        return limits(entry, timeout_seconds)

    monkeypatch.setattr(runner.registry, "limits", broken_limits)
    runner.scheduler.start()
    try:
        _wait_for(lambda: _sample(runner, "sidecar_scheduler_errors_total") >= 3
                  and runner.health("good")["success_count"] >= 3)
        assert runner.scheduler.alive
        assert runner.store.totals("bad") == {}  # never ran
        assert runner.metrics.snapshot("bad")["in_flight"] == 0
    finally:
        runner.close()


@pytest.mark.parametrize(("outcomes", "status"), [
    ([], "unknown"),
    (["success"] * 10, "healthy"),
    (["success", "value"], "degraded"),
    (["timeout", "success"], "failing"),
])
def test_health_status_rules(outcomes, status):
    assert health_status(outcomes) == status
