"""The SQLite run history: order, totals that survive retention, last error, persistence."""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.errors import StoreUnavailable
from sidecar.sandbox.result import ErrorInfo, Outcome, PluginSandboxResult
from sidecar.store import FAULT_REASONS, ROW_REASONS, Store, StoreStats, fault_reason
from tests import fsfaults

_NO_ERRORS = dict.fromkeys(FAULT_REASONS, 0)


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
    recorded = [store.record(_result(at=1000.0 + i), trigger="schedule" if i == 1 else "api") for i in range(3)]
    ids = [i for i in recorded if i is not None]
    assert len(ids) == 3
    assert ids == sorted(ids) and len(set(ids)) == 3
    rows = store.recent("p")
    assert [r["id"] for r in rows] == ids[::-1]
    assert [r["finished_at"] for r in rows] == [1002.0, 1001.0, 1000.0]
    assert [r["trigger"] for r in rows] == ["api", "schedule", "api"]
    assert set(rows[0]) == {"id", "plugin", "outcome", "started_at", "finished_at", "execution_time_ms",
                            "peak_memory_bytes", "error_type", "error_message", "trigger", "state", "state_reason"}
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


# -- faults ------------------------------------------------------------------------------------------


def _sqlite_error(message: str, code: int) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError(message)
    exc.sqlite_errorcode = code
    return exc


@pytest.mark.parametrize(("exc", "reason"), [
    (_sqlite_error("database or disk is full", sqlite3.SQLITE_FULL), "disk_full"),
    (_sqlite_error("attempt to write a readonly database", sqlite3.SQLITE_READONLY), "read_only"),
    (_sqlite_error("database disk image is malformed", sqlite3.SQLITE_CORRUPT), "corrupt"),
    (_sqlite_error("file is not a database", sqlite3.SQLITE_NOTADB), "corrupt"),
    (_sqlite_error("disk I/O error", sqlite3.SQLITE_IOERR_WRITE), "io"),
    (sqlite3.OperationalError("database or disk is full"), "disk_full"),
    (OSError(errno.EROFS, "Read-only file system"), "read_only"),
    (OSError(errno.ENOSPC, "No space left on device"), "disk_full"),
])
def test_fault_reason(exc: BaseException, reason: str) -> None:
    assert fault_reason(exc) == reason


class _Failing:
    """Stands in for `Store._write` while `error` is set (the sqlite3 boundary of the store)."""

    def __init__(self, store: Store) -> None:
        self.real = store._write
        self.error: sqlite3.Error | None = None

    def __call__(self, result: PluginSandboxResult, trigger: str, verdict: Any = (None, None)) -> int:
        if self.error is not None:
            raise self.error
        return self.real(result, trigger, verdict)


def _wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_failed_write_is_kept_counted_and_written_on_recovery(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    s = Store(str(tmp_path), retry_seconds=3600)  # recovery through probe() here; the thread is tested below
    try:
        failing = _Failing(s)
        monkeypatch.setattr(s, "_write", failing)
        monkeypatch.setattr(s, "_probe_locked", lambda: failing.error is None)
        s.record(_result(at=1000.0))
        failing.error = _sqlite_error("database or disk is full", sqlite3.SQLITE_FULL)
        assert s.record(_result(outcome=Outcome.VALUE, at=1001.0)) is None
        assert s.record(_result(at=1002.0)) is None
        assert s.stats() == StoreStats({**_NO_ERRORS, "disk_full": 2}, 0, 2)
        ready, why = s.probe()
        assert not ready and why.startswith("disk full") and s.path in why and "2 run(s) pending" in why
        assert any("disk full" in r.getMessage() and s.path in r.getMessage() for r in caplog.records)
        assert s.totals("p") == {"success": 1}  # reads still work on a full disk
        failing.error = None
        assert s.probe() == (True, "ok")
        assert s.totals("p") == {"success": 2, "value": 1}
        assert [r["finished_at"] for r in s.recent("p")] == [1002.0, 1001.0, 1000.0]  # order kept
        assert s.stats().pending == 0 and s.stats().errors["disk_full"] == 2
    finally:
        s.close()


def test_recovers_by_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Store(str(tmp_path), retry_seconds=0.02)
    try:
        failing = _Failing(s)
        monkeypatch.setattr(s, "_write", failing)
        failing.error = _sqlite_error("attempt to write a readonly database", sqlite3.SQLITE_READONLY)
        for i in range(3):
            assert s.record(_result(at=1000.0 + i)) is None
        assert s.stats().errors["read_only"] == 3
        failing.error = None
        _wait_for(lambda: s.stats().pending == 0)
        assert s.totals("p") == {"success": 3}
        assert s.probe() == (True, "ok")
    finally:
        s.close()


def test_full_buffer_drops_oldest_with_a_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Store(str(tmp_path), pending_limit=3, retry_seconds=3600)
    try:
        failing = _Failing(s)
        monkeypatch.setattr(s, "_write", failing)
        failing.error = _sqlite_error("database or disk is full", sqlite3.SQLITE_FULL)
        for i in range(5):
            s.record(_result(at=1000.0 + i))
        assert s.stats() == StoreStats({**_NO_ERRORS, "disk_full": 5}, 2, 3)
        failing.error = None
        assert s.probe()[0]
        assert [r["finished_at"] for r in s.recent("p")] == [1004.0, 1003.0, 1002.0]
    finally:
        s.close()


def _write_history(data: Path, runs: int) -> Path:
    s = Store(str(data))
    for i in range(runs):
        s.record(_result(at=1000.0 + i, outcome=Outcome.VALUE, message="m" * 500))
    s.close()
    return Path(s.path)


@pytest.mark.parametrize("damage", ["header", "pages"])
def test_corrupt_history_is_moved_aside(tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    path = _write_history(tmp_path, 300)
    raw = bytearray(path.read_bytes())
    assert len(raw) > 16 * 4096
    if damage == "header":
        raw[0:100] = os.urandom(100)
    else:
        for page in range(2, len(raw) // 4096, 2):
            raw[page * 4096: page * 4096 + 200] = b"\xff" * 200
    path.write_bytes(bytes(raw))
    s = Store(str(tmp_path))
    try:
        assert s.moved_aside is not None and Path(s.moved_aside).read_bytes() == bytes(raw)
        assert any(s.moved_aside in r.getMessage() for r in caplog.records)
        assert s.totals("p") == {}
        s.record(_result())
        assert s.totals("p") == {"success": 1} and s.probe() == (True, "ok")
    finally:
        s.close()


def test_unusable_data_dir_names_path_and_cause(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreUnavailable, match=rf"{blocker}/data: Not a directory"):
        Store(str(blocker / "data"))


def test_read_only_data_dir_stops_start_up(tmp_path: Path) -> None:
    _write_history(tmp_path / "data", 1)
    with fsfaults.read_only_mount(tmp_path / "data", tmp_path / "ro") as ro:
        with pytest.raises(StoreUnavailable, match=rf"cannot use data directory {ro}: Read-only file system"):
            Store(str(ro))


def test_full_file_system_then_space_returns(tmp_path: Path) -> None:
    with fsfaults.tmpfs(tmp_path / "small", "1m") as data:
        s = Store(str(data), retry_seconds=0.05)
        try:
            s.record(_result(at=1000.0))
            filler = fsfaults.fill(data)
            results = [s.record(_result(at=1001.0 + i)) for i in range(20)]
            assert None in results  # the disk refused some writes...
            assert s.stats().errors["disk_full"] >= 1
            ready, why = s.probe()
            assert not ready and why.startswith("disk full")
            filler.unlink()  # ...and every run comes back when space does
            _wait_for(lambda: s.stats().pending == 0)
            assert s.totals("p") == {"success": 21}
            assert s.probe() == (True, "ok")
        finally:
            s.close()


def test_failed_read_is_store_unavailable(tmp_path: Path) -> None:
    s = Store(str(tmp_path))
    s._db.close()  # any sqlite3 error on a read
    with pytest.raises(StoreUnavailable, match="unreadable"):
        s.totals("p")
    s.close()


def test_corrupt_write_is_kept_like_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Store(str(tmp_path), retry_seconds=3600)
    try:
        failing = _Failing(s)
        monkeypatch.setattr(s, "_write", failing)
        monkeypatch.setattr(s, "_probe_locked", lambda: failing.error is None)
        failing.error = _sqlite_error("database disk image is malformed", sqlite3.SQLITE_CORRUPT)
        assert s.record(_result()) is None
        assert s.stats().errors["corrupt"] == 1 and s.stats().pending == 1
    finally:
        s.close()


def test_the_history_is_private_whatever_an_older_install_left(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    Store(str(data)).close()
    for name in ("history.sqlite3", "history.sqlite3-wal", "history.sqlite3-shm"):
        if (data / name).exists():
            (data / name).chmod(0o644)
    data.chmod(0o755)
    store = Store(str(data))
    store.record(PluginSandboxResult("p", Outcome.SUCCESS, result=1), "api")
    assert data.stat().st_mode & 0o777 == 0o700
    files = list(data.iterdir())
    assert any(f.name.endswith("-wal") for f in files)
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files), [(f.name, oct(f.stat().st_mode)) for f in files]
    store.close()


# -- totality: rows that cannot be written, a stalled disk, a history file that vanishes ------------------


@pytest.mark.parametrize(("bad", "reason"), [
    (PluginSandboxResult("p", Outcome.RUNTIME, error=ErrorInfo("RuntimeError", "name \udcff.txt")), "encoding"),
    (PluginSandboxResult("p", Outcome.SUCCESS, peak_memory_bytes=10**30), "range"),
    (PluginSandboxResult("p", Outcome.SUCCESS, execution_time_ms=float("nan")), "range"),
])
def test_a_row_that_cannot_be_written_is_dropped_counted_and_never_blocks_the_queue(
        store: Store, bad: PluginSandboxResult, reason: str, caplog: pytest.LogCaptureFixture) -> None:
    store.record(_result(at=1000.0))
    assert store.record(bad) is None
    assert [store.record(_result(at=1001.0 + i)) is not None for i in range(5)] == [True] * 5
    assert store.totals("p") == {"success": 6}
    stats = store.stats()
    assert stats.unwritable == {**dict.fromkeys(ROW_REASONS, 0), reason: 1}
    assert stats.pending == 0 and stats.errors == _NO_ERRORS
    assert store.probe() == (True, "ok")
    assert any("dropped from the history" in r.getMessage() and reason in r.getMessage() for r in caplog.records)


def test_a_deleted_history_file_is_noticed_and_a_fresh_one_written(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    s = Store(str(tmp_path))
    try:
        s.record(_result(at=1000.0))
        for suffix in ("", "-wal", "-shm"):
            Path(s.path + suffix).unlink(missing_ok=True)
        ids = [s.record(_result(at=1001.0 + i)) for i in range(3)]
        assert None not in ids
        assert s.stats().reopens == 1
        assert any("was deleted under the sidecar" in r.getMessage() for r in caplog.records)
        assert s.probe() == (True, "ok")
    finally:
        s.close()
    again = Store(str(tmp_path))  # a restart finds the runs recorded after the deletion
    try:
        assert [r["finished_at"] for r in again.recent("p")] == [1003.0, 1002.0, 1001.0]
    finally:
        again.close()


def test_a_replaced_history_file_is_noticed_by_the_readiness_probe(tmp_path: Path) -> None:
    s = Store(str(tmp_path / "data"))
    try:
        s.record(_result(at=1000.0))
        other = Store(str(tmp_path / "other"))
        other.close()
        os.replace(other.path, s.path)
        assert s.probe() == (True, "ok")
        assert s.stats().reopens == 1
        s.record(_result(at=1001.0))
        assert [r["finished_at"] for r in s.recent("p")] == [1001.0]
    finally:
        s.close()


class _Stuck:
    """Stands in for `Store._write`: blocks (as on a frozen file system) until released."""

    def __init__(self, store: Store) -> None:
        self.real = store._write
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, result: PluginSandboxResult, trigger: str, verdict: Any = (None, None)) -> int:
        self.entered.set()
        self.release.wait()
        return self.real(result, trigger, verdict)


def test_a_stalled_write_never_holds_a_run_reads_or_the_counters(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    s = Store(str(tmp_path), deadline=0.2, retry_seconds=0.05)
    stuck = _Stuck(s)
    monkeypatch.setattr(s, "_write", stuck)
    try:
        assert s.record(_result(at=1000.0)) is None  # answered after the deadline, kept pending
        assert stuck.entered.is_set()
        assert [s.record(_result(at=1001.0 + i)) for i in range(3)] == [None] * 3
        stats = s.stats()
        assert stats.errors["stalled"] == 4 and stats.pending == 4
        ready, why = s.probe()
        assert not ready and why.startswith("stalled") and "4 run(s) pending" in why
        with pytest.raises(StoreUnavailable, match="stalled"):
            s.within_deadline(lambda: s.totals("p"))
        with pytest.raises(StoreUnavailable):
            s.totals("p")
        stuck.release.set()
        _wait_for(lambda: s.stats().pending == 0)
        assert s.probe() == (True, "ok")
        assert s.totals("p") == {"success": 4}
    finally:
        stuck.release.set()
        s.close()


def test_counters_are_read_without_the_store_locks(store: Store) -> None:
    got: list[StoreStats] = []
    with store._io, store._state:  # a writer stuck in SQLite holds these
        reader = threading.Thread(target=lambda: got.append(store.stats()), daemon=True)
        reader.start()
        reader.join(timeout=10)
    assert got and got[0].pending == 0


def test_a_frozen_file_system_stalls_no_caller(tmp_path: Path) -> None:
    with fsfaults.ext4(tmp_path / "mnt") as mnt:
        s = Store(str(mnt / "data"), deadline=0.5, retry_seconds=0.1)
        try:
            s.record(_result(at=1000.0))
            with fsfaults.frozen(mnt):
                assert [s.record(_result(at=1001.0 + i)) for i in range(3)] == [None] * 3
                ready, why = s.probe()
                assert not ready and ("stalled" in why or "did not answer" in why), why
                with pytest.raises(StoreUnavailable):
                    s.within_deadline(lambda: s.recent("p"))
                assert s.stats().pending == 3
            _wait_for(lambda: s.stats().pending == 0)
            assert s.probe() == (True, "ok")
            assert s.totals("p") == {"success": 4}
        finally:
            s.close()


def test_a_run_keeps_its_result_state_and_traceback_bounded(tmp_path: Path) -> None:
    s = Store(str(tmp_path), result_limit=40)
    try:
        s.record(PluginSandboxResult("p", Outcome.SUCCESS, result={"lines": 51, "name": "queue"}, finished_at=1.0),
                 verdict=("warning", "51 lines"))
        s.record(PluginSandboxResult("p", Outcome.SUCCESS, result={"blob": "x" * 100}, finished_at=2.0))
        failed = PluginSandboxResult("p", Outcome.RUNTIME, finished_at=3.0,
                                     error=ErrorInfo("RuntimeError", "down", "Traceback ...\nRuntimeError: down"))
        s.record(failed, verdict=("critical", "run failed (runtime): RuntimeError: down"))
        newest, big, first = s.runs("p")
        assert (first["result"], first["result_truncated"]) == ({"lines": 51, "name": "queue"}, False)
        assert (first["state"], first["state_reason"]) == ("warning", "51 lines")
        assert big["result"] == '{"blob": "' + "x" * 30 and big["result_truncated"] is True  # the head, as text
        assert newest["result"] is None and newest["state"] == "critical"
        assert newest["error_traceback"] == "Traceback ...\nRuntimeError: down"
    finally:
        s.close()


def test_an_older_history_gains_the_new_columns_and_keeps_its_runs(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "history.sqlite3")
    db.executescript("CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, plugin TEXT NOT NULL, outcome TEXT NOT"
                     " NULL, started_at REAL NOT NULL, finished_at REAL NOT NULL, execution_time_ms REAL NOT NULL,"
                     " peak_memory_bytes INTEGER NOT NULL, error_type TEXT, error_message TEXT, trigger TEXT NOT NULL"
                     " DEFAULT 'api');"
                     "INSERT INTO runs (plugin, outcome, started_at, finished_at, execution_time_ms, peak_memory_bytes)"
                     " VALUES ('p', 'success', 1, 2, 3, 4);")
    db.close()
    s = Store(str(tmp_path))
    try:
        s.record(PluginSandboxResult("p", Outcome.SUCCESS, result=[1, 2], finished_at=5.0), verdict=("ok", None))
        newer, older = s.runs("p")
        assert older["result"] is None and older["state"] is None and older["result_truncated"] is False
        assert newer["result"] == [1, 2] and newer["state"] == "ok"
    finally:
        s.close()
