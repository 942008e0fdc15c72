"""The runner's scheduler: checks run on their interval, never overlap themselves, and are recorded."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from sidecar.config import CheckConfig, Settings
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


@pytest.mark.parametrize(("outcomes", "status"), [
    ([], "unknown"),
    (["success"] * 10, "healthy"),
    (["success", "value"], "degraded"),
    (["timeout", "success"], "failing"),
])
def test_health_status_rules(outcomes, status):
    assert health_status(outcomes) == status
