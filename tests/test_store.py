"""The SQLite run history: order, totals that survive retention, last error, persistence."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.sandbox.result import ErrorInfo, Outcome, PluginSandboxResult
from sidecar.store import Store


def _result(plugin: str = "p", outcome: Outcome = Outcome.SUCCESS, at: float = 1000.0,
            message: str = "boom") -> PluginSandboxResult:
    error = None if outcome is Outcome.SUCCESS else ErrorInfo(f"{outcome.value.title()}Error", message)
    return PluginSandboxResult(plugin, outcome, result=None, error=error, execution_time_ms=12.5,
                               peak_memory_bytes=4096, started_at=at - 0.0125, finished_at=at)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(str(tmp_path / "data"))
    yield s
    s.close()


def test_empty(store: Store) -> None:
    assert store.recent("p") == []
    assert store.totals("p") == {}
    assert store.last_error("p") is None


def test_record_and_recent_newest_first(store: Store) -> None:
    ids = [store.record(_result(at=1000.0 + i), trigger="schedule" if i == 1 else "api") for i in range(3)]
    assert ids == sorted(ids) and len(set(ids)) == 3
    rows = store.recent("p")
    assert [r["id"] for r in rows] == ids[::-1]
    assert [r["finished_at"] for r in rows] == [1002.0, 1001.0, 1000.0]
    assert [r["trigger"] for r in rows] == ["api", "schedule", "api"]
    assert set(rows[0]) == {"id", "plugin", "outcome", "started_at", "finished_at", "execution_time_ms",
                            "peak_memory_bytes", "error_type", "error_message", "trigger"}
    assert rows[0]["plugin"] == "p" and rows[0]["outcome"] == "success"
    assert rows[0]["execution_time_ms"] == 12.5 and rows[0]["peak_memory_bytes"] == 4096
    assert rows[0]["error_type"] is None and rows[0]["error_message"] is None
    assert [r["id"] for r in store.recent("p", 2)] == ids[:0:-1]


def test_plugins_are_separate(store: Store) -> None:
    store.record(_result("a"))
    store.record(_result("b", Outcome.VALUE))
    assert [r["plugin"] for r in store.recent("a")] == ["a"]
    assert store.totals("a") == {"success": 1}
    assert store.totals("b") == {"value": 1}
    assert store.last_error("a") is None


def test_totals_per_outcome_survive_retention(tmp_path: Path) -> None:
    s = Store(str(tmp_path), retention=3)
    try:
        outcomes = [Outcome.SUCCESS] * 5 + [Outcome.TIMEOUT] * 2 + [Outcome.VALUE] * 2 + [Outcome.CRASH]
        for i, outcome in enumerate(outcomes):
            s.record(_result(outcome=outcome, at=1000.0 + i))
        s.record(_result("other", at=5000.0))
        rows = s.recent("p", 100)
        assert len(rows) == 3
        assert [r["outcome"] for r in rows] == ["crash", "value", "value"]
        assert s.totals("p") == {"success": 5, "timeout": 2, "value": 2, "crash": 1}
        assert sum(s.totals("p").values()) == 10
        assert len(s.recent("other")) == 1  # trimming one plugin never touches another
    finally:
        s.close()


def test_last_error(store: Store) -> None:
    store.record(_result(outcome=Outcome.TIMEOUT, at=1000.0, message="first"))
    store.record(_result(outcome=Outcome.VALUE, at=1001.0, message="second"))
    store.record(_result(at=1002.0))
    err = store.last_error("p")
    assert err == {"outcome": "value", "error_type": "ValueError", "error_message": "second", "finished_at": 1001.0}


def test_long_error_message_is_capped(store: Store) -> None:
    store.record(_result(outcome=Outcome.EXCEPTION, message="x" * 10_000))
    err = store.last_error("p")
    assert err is not None and len(err["error_message"]) == 2000


def test_reopen_keeps_data(tmp_path: Path) -> None:
    first = Store(str(tmp_path))
    first.record(_result(at=1000.0))
    first.record(_result(outcome=Outcome.MEMORY, at=1001.0))
    first.close()
    again = Store(str(tmp_path))
    try:
        assert [r["outcome"] for r in again.recent("p")] == ["memory", "success"]
        assert again.totals("p") == {"success": 1, "memory": 1}
        assert again.last_error("p") is not None
        again.record(_result(at=1002.0))
        assert again.totals("p")["success"] == 2
        assert again.recent("p")[0]["id"] > again.recent("p")[1]["id"]
    finally:
        again.close()
    assert os.path.exists(os.path.join(str(tmp_path), "history.sqlite3"))


def test_creates_data_dir(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    s = Store(str(target))
    try:
        assert s.writable()
        assert Path(s.path).parent == target
    finally:
        s.close()


def test_writable(store: Store) -> None:
    assert store.writable() is True
    assert store.writable() is True  # the probe is idempotent
    store.record(_result())
    assert store.totals("p") == {"success": 1}


def test_not_writable_when_writes_fail(tmp_path: Path) -> None:
    s = Store(str(tmp_path))
    try:
        s._db.execute("PRAGMA query_only = ON")
        assert s.writable() is False
        s._db.execute("PRAGMA query_only = OFF")
        assert s.writable() is True
    finally:
        s.close()
    assert s.writable() is False  # closed
