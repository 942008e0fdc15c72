"""Run history in SQLite: the only SQLite code of the sidecar.

Written by the runner process alone (one writer, WAL journal), so it needs no cross-process
locking; it survives restarts. Per-plugin totals live in their own table so that retention
(`SIDECAR_HISTORY_RETENTION` runs per plugin) never changes the counts the health route reports.

Faults are loud and lose what they must only: a run whose write fails (disk full, read-only
file system, corrupt file) is counted by reason, logged, and kept in a bounded memory buffer
(`PENDING_LIMIT` runs; beyond it the *oldest* pending runs are dropped and counted). A retry
thread writes the buffer as soon as the store accepts writes again, so health counts and the
metric counters agree once the disk recovers. `probe()` is a real write for `/readyz`.

At start, a history file SQLite cannot read (corrupt header or pages) is moved aside and a fresh
one begun; a data directory that cannot be used stops start-up with `StoreUnavailable`.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .errors import StoreUnavailable
from .sandbox.result import PluginSandboxResult

__all__ = ["FAULT_REASONS", "PENDING_LIMIT", "Store", "StoreStats", "fault_reason"]

log = logging.getLogger(__name__)

#: Why a write failed; the `reason` label of `sidecar_store_errors_total`.
FAULT_REASONS = ("disk_full", "read_only", "corrupt", "io")
#: Runs kept in memory while the store refuses writes (about 1 KB each).
PENDING_LIMIT = 10_000
#: Seconds between attempts to write the pending runs while the store is failing.
RETRY_SECONDS = 1.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    plugin TEXT NOT NULL,
    outcome TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    execution_time_ms REAL NOT NULL,
    peak_memory_bytes INTEGER NOT NULL,
    error_type TEXT,
    error_message TEXT,
    trigger TEXT NOT NULL DEFAULT 'api'
);
CREATE INDEX IF NOT EXISTS runs_by_plugin ON runs (plugin, id DESC);
CREATE TABLE IF NOT EXISTS totals (
    plugin TEXT NOT NULL,
    outcome TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (plugin, outcome)
);
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL);
"""

_DESCRIBE = {"disk_full": "disk full", "read_only": "read-only", "corrupt": "corrupt", "io": "I/O error"}


def fault_reason(exc: BaseException) -> str:
    """Classify a failed write into one of FAULT_REASONS (pure: from the exception alone)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        primary = code & 0xFF
        if primary == sqlite3.SQLITE_FULL:
            return "disk_full"
        if primary in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM):
            return "read_only"
        if primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            return "corrupt"
        if primary == sqlite3.SQLITE_IOERR:
            return "io"
    if isinstance(exc, OSError):
        return {errno.ENOSPC: "disk_full", errno.EDQUOT: "disk_full", errno.EROFS: "read_only",
                errno.EACCES: "read_only", errno.EPERM: "read_only"}.get(exc.errno or 0, "io")
    text = str(exc).lower()
    if "full" in text:
        return "disk_full"
    if "readonly" in text or "read-only" in text:
        return "read_only"
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return "corrupt"
    return "io"


def _private(path: str, mode: int) -> None:
    """Tighten an existing path to `mode` (directory 0700, files 0600) when we own it."""
    try:
        os.chmod(path, mode)
    except PermissionError:
        log.warning("%s is not ours to make private (mode %o): plugins may reach it", path, mode)


@dataclass(frozen=True)
class StoreStats:
    """What `/metrics` shows of the store: write failures by reason, runs dropped, runs pending."""

    errors: dict[str, int]
    dropped: int
    pending: int


@dataclass
class _Fault:
    reason: str
    detail: str
    since: float = field(default_factory=time.time)


class Store:
    def __init__(self, data_dir: str, retention: int = 1000, *, pending_limit: int = PENDING_LIMIT,
                 retry_seconds: float = RETRY_SECONDS) -> None:
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, "history.sqlite3")
        self.retention = retention
        self.retry_seconds = retry_seconds
        self._lock = threading.Lock()
        self._pending: deque[tuple[PluginSandboxResult, str]] = deque()
        self._pending_limit = pending_limit
        self._errors = dict.fromkeys(FAULT_REASONS, 0)
        self._dropped = 0
        self._fault: _Fault | None = None
        self._stop = threading.Event()
        self._retrier: threading.Thread | None = None
        self._retrying = False  # under _lock: whether a retry thread is (still) looping
        #: Where a corrupt history file found at start was moved, if one was.
        self.moved_aside: str | None = None
        try:
            os.makedirs(data_dir, mode=0o700, exist_ok=True)
            _private(data_dir, 0o700)
            with tempfile.TemporaryFile(dir=data_dir):
                pass  # names the cause (read-only file system, permission denied) before SQLite does
            self._db = self._open()
        except (OSError, sqlite3.Error) as exc:
            cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise StoreUnavailable(f"cannot use data directory {data_dir}: {cause}") from None

    # -- opening ---------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        # The history is the sidecar's alone: files 0600 (SQLite gives the -wal and -shm files the
        # database file's mode), whatever the umask or an older install left.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                _private(self.path + suffix, 0o600)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("database disk image is malformed (quick_check)")
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _open(self) -> sqlite3.Connection:
        """Open the history; a corrupt file is moved aside (and named in the log), never deleted."""
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            if fault_reason(exc) != "corrupt":
                raise
            aside = f"{self.path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                if os.path.exists(self.path + suffix):
                    os.replace(self.path + suffix, aside + suffix)
            self.moved_aside = aside
            log.error("history %s is corrupt (%s): moved aside to %s; starting a fresh history",
                      self.path, exc, aside)
            return self._connect()

    def close(self) -> None:
        self._stop.set()
        if self._retrier is not None:
            self._retrier.join(timeout=5)
        with self._lock:
            if self._pending:
                self._flush_locked()  # a last try
            if self._pending:
                log.error("history %s: %d run(s) could not be written before stopping and are lost",
                          self.path, len(self._pending))
            self._db.close()

    # -- writes ----------------------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction; the caller holds `_lock`.

        A failed COMMIT (disk full) may leave the transaction open: roll it back, or every later
        BEGIN would fail with a misleading "transaction within a transaction".
        """
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the failed statement may have rolled back already
            raise

    def _write(self, result: PluginSandboxResult, trigger: str) -> int:
        err = result.error
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO runs (plugin, outcome, started_at, finished_at, execution_time_ms,"
                " peak_memory_bytes, error_type, error_message, trigger) VALUES (?,?,?,?,?,?,?,?,?)",
                (result.plugin, result.outcome.value, result.started_at, result.finished_at,
                 result.execution_time_ms, result.peak_memory_bytes, err.type if err else None,
                 err.message[:2000] if err else None, trigger),
            )
            db.execute(
                "INSERT INTO totals (plugin, outcome, count) VALUES (?, ?, 1)"
                " ON CONFLICT (plugin, outcome) DO UPDATE SET count = count + 1",
                (result.plugin, result.outcome.value),
            )
            db.execute(
                "DELETE FROM runs WHERE plugin = ? AND id <= (SELECT id FROM runs WHERE plugin = ?"
                " ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (result.plugin, result.plugin, self.retention),
            )
            return int(cur.lastrowid or 0)

    def record(self, result: PluginSandboxResult, trigger: str = "api") -> int | None:
        """Append one run, bump its totals and trim the plugin's history, atomically.

        Never raises for a storage fault: the run is kept pending (and the fault counted and
        logged) and None is returned; the run id otherwise. Pending runs are written first, so
        history keeps the order runs finished in.
        """
        with self._lock:
            self._pending.append((result, trigger))
            if len(self._pending) > self._pending_limit:
                self._pending.popleft()
                self._dropped += 1
                log.error("history write buffer full (%d runs): dropped the oldest pending run",
                          self._pending_limit)
            if self._fault is None or len(self._pending) == 1:
                written = self._flush_locked()
                if written is not None:
                    return written
            # Written later, in order, by the retry thread (or `probe`) once the store recovers.
            assert self._fault is not None
            self._errors[self._fault.reason] += 1
            return None

    def _flush_locked(self) -> int | None:
        """Write pending runs oldest first; stop at the first failure. The caller holds `_lock`."""
        last: int | None = None
        while self._pending:
            result, trigger = self._pending[0]
            try:
                last = self._write(result, trigger)
            except sqlite3.Error as exc:
                self._failed(exc, f"recording a run of {result.plugin}")
                return None
            self._pending.popleft()
        self._cleared()
        return last

    def _failed(self, exc: sqlite3.Error, doing: str) -> None:
        """Enter (or change) the fault state, log it once, and make sure a retry thread runs."""
        reason = fault_reason(exc)
        first = self._fault is None or self._fault.reason != reason
        if first:
            self._fault = _Fault(reason, str(exc))
            log.error("history %s: %s failed: %s (%s); %d run(s) kept in memory, retrying every %.0f s",
                      self.path, doing, _DESCRIBE[reason], exc, len(self._pending), self.retry_seconds)
        if not self._retrying:
            self._retrying = True
            self._retrier = threading.Thread(target=self._retry_loop, name="store-retry", daemon=True)
            self._retrier.start()

    def _cleared(self) -> None:
        if self._fault is not None:
            log.warning("history %s writable again after %.1f s (%s)", self.path,
                        time.time() - self._fault.since, _DESCRIBE[self._fault.reason])
            self._fault = None

    def _retry_loop(self) -> None:
        while not self._stop.wait(self.retry_seconds):
            with self._lock:
                if self._fault is None and not self._pending:
                    self._retrying = False
                    return
                if self._probe_locked():
                    self._flush_locked()

    def _probe_locked(self) -> bool:
        try:
            with self._tx() as db:
                db.execute("INSERT INTO probe (id, at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                           (time.time(),))
            return True
        except sqlite3.Error as exc:
            self._failed(exc, "the readiness write")
            return False

    def probe(self) -> tuple[bool, str]:
        """A real write (for `/readyz`), then the pending runs: (ready, reason when not)."""
        with self._lock:
            if self._probe_locked():
                self._flush_locked()
            if self._fault is None:
                return True, "ok"
            f = self._fault
            return False, (f"{_DESCRIBE[f.reason]}: {f.detail} ({self.path}; {len(self._pending)} run(s) pending,"
                           f" since {time.strftime('%H:%M:%S', time.gmtime(f.since))} UTC)")

    def stats(self) -> StoreStats:
        with self._lock:
            return StoreStats(dict(self._errors), self._dropped, len(self._pending))

    # -- reads -----------------------------------------------------------------------------------
    def _query(self, sql: str, args: tuple[Any, ...]) -> list[sqlite3.Row]:
        with self._lock:
            self._db.row_factory = sqlite3.Row
            try:
                return list(self._db.execute(sql, args))
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"history {self.path} unreadable: {_DESCRIBE[fault_reason(exc)]}"
                                       f" ({exc})") from None
            finally:
                self._db.row_factory = None

    def recent(self, plugin: str, limit: int = 10) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT id, plugin, outcome, started_at, finished_at, execution_time_ms, peak_memory_bytes,"
            " error_type, error_message, trigger FROM runs WHERE plugin = ? ORDER BY id DESC LIMIT ?",
            (plugin, limit),
        )
        return [dict(r) for r in rows]

    def totals(self, plugin: str) -> dict[str, int]:
        rows = self._query("SELECT outcome, count FROM totals WHERE plugin = ?", (plugin,))
        return {r["outcome"]: int(r["count"]) for r in rows}

    def last_error(self, plugin: str) -> dict[str, Any] | None:
        rows = self._query(
            "SELECT outcome, error_type, error_message, finished_at FROM runs"
            " WHERE plugin = ? AND outcome != 'success' ORDER BY id DESC LIMIT 1",
            (plugin,),
        )
        return dict(rows[0]) if rows else None

    def writable(self) -> bool:
        return self.probe()[0]
