"""Run history in SQLite: the only SQLite code of the sidecar.

Written by the runner process alone (one writer, WAL journal), so it needs no cross-process
locking; it survives restarts. Per-plugin totals live in their own table so that retention
(`SIDECAR_HISTORY_RETENTION` runs per plugin) never changes the counts the health route reports.

Nothing a run carries and no storage fault can stop the store or the routes around it:

- One writer thread writes runs in the order they finished. `record` hands it a run and waits at
  most `STORE_DEADLINE_SECONDS`: a frozen or hung disk delays a run by that much once, never holds
  its slot (the run is kept pending and counted as `stalled`).
- A write that fails (disk full, read-only file system, corrupt file) is counted by reason, logged,
  and kept in a bounded memory buffer (`PENDING_LIMIT` runs; beyond it the *oldest* pending runs
  are dropped and counted). The writer retries every `RETRY_SECONDS` and writes the buffer once
  the store accepts writes again, so health counts and the metric counters agree after recovery.
- A row that cannot be written at all (text that is not encodable, a number out of SQLite's range)
  is dropped, counted by reason and logged: it never blocks the runs queued behind it.
- The history file deleted or replaced under the sidecar is noticed (its device and inode are
  compared with the open one's before each batch of writes and each readiness probe), logged,
  counted, and a fresh history is opened at the path; runs pending in memory are written there.
- Routes read within the deadline (`within_deadline`) and answer 503 `store_unavailable` past it;
  `probe()` (a real write, for `/readyz`) reports a stalled store as not ready instead of waiting;
  `stats()` (for `/metrics`) takes no lock at all.

At start, a history file SQLite cannot read (corrupt header or pages) is moved aside and a fresh
one begun; a data directory that cannot be used stops start-up with `StoreUnavailable`.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import sqlite3
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .defaults import DEFAULT_MAX_OUTPUT_BYTES, STORE_DEADLINE_SECONDS
from .errors import StoreUnavailable
from .sandbox.result import PluginSandboxResult

__all__ = ["FAULT_REASONS", "PENDING_LIMIT", "ROW_REASONS", "Store", "StoreStats", "fault_reason", "row_values"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Why a write failed; the `reason` label of `sidecar_store_errors_total` (`stalled`: not done
#: within STORE_DEADLINE_SECONDS, e.g. a frozen file system).
FAULT_REASONS = ("disk_full", "read_only", "corrupt", "io", "stalled")
#: Why a run's row was dropped instead of written; the `reason` label of
#: `sidecar_store_unwritable_runs_total`.
ROW_REASONS = ("encoding", "range", "invalid")
#: Runs kept in memory while the store refuses writes (about 1 KB each).
PENDING_LIMIT = 10_000
#: Seconds between attempts to write the pending runs while the store is failing.
RETRY_SECONDS = 1.0
#: Characters of an error message kept in the history.
MESSAGE_LIMIT = 2000
_INT64 = (-(2**63), 2**63 - 1)

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
#: Columns of `runs` added since its first form: added to an older history when it is opened (a history
#: written by this version stays readable by the older one, which selects its own columns by name).
_ADDED_COLUMNS = (("result_json", "TEXT"), ("result_truncated", "INTEGER NOT NULL DEFAULT 0"), ("state", "TEXT"),
                  ("state_reason", "TEXT"), ("error_traceback", "TEXT"))
#: Characters of a traceback kept in the history (the sandbox trims one to 8,000 already).
TRACEBACK_LIMIT = 8000

_DESCRIBE = {"disk_full": "disk full", "read_only": "read-only", "corrupt": "corrupt", "io": "I/O error",
             "stalled": "stalled"}


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


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class BadRow(ValueError):
    """A run whose row cannot be stored as it is; `reason` is one of ROW_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _result_text(value: Any, limit: int) -> tuple[str | None, bool]:
    """A result as JSON text for the history, and whether it was cut to its first `limit` characters."""
    if value is None:
        return None, False
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise BadRow("invalid", f"result not encodable as JSON: {exc}") from None
    return (text, False) if len(text) <= limit else (text[:limit], True)


def row_values(result: PluginSandboxResult, trigger: str, verdict: tuple[str | None, str | None] = (None, None),
               result_limit: int = DEFAULT_MAX_OUTPUT_BYTES) -> tuple[Any, ...]:
    """The `runs` row of a result, checked against what SQLite can store (pure); raises BadRow.

    `verdict` is the check's (state, reason) after the run; the result is kept as JSON up to `result_limit`
    characters (its head beyond that, flagged), the error's traceback up to TRACEBACK_LIMIT.

    Checked here rather than left to SQLite so that a bad row is told from a bad disk: SQLite raises
    the same exception types for both (and Python's own UnicodeEncodeError or OverflowError for some).
    """
    err = result.error
    result_json, truncated = _result_text(result.result, result_limit)
    state, reason = verdict
    values = (result.plugin, result.outcome.value, result.started_at, result.finished_at,
              result.execution_time_ms, result.peak_memory_bytes, err.type if err else None,
              err.message[:MESSAGE_LIMIT] if err else None, trigger, result_json, int(truncated), state,
              reason[:MESSAGE_LIMIT] if reason else None,
              err.traceback[-TRACEBACK_LIMIT:] if err and err.traceback else None)
    for v in values:
        if v is None:
            continue
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise BadRow("encoding", f"text not encodable as UTF-8 ({exc.reason} at {exc.start})") from None
        elif isinstance(v, bool) or not isinstance(v, int | float):
            raise BadRow("invalid", f"a value of type {type(v).__name__}")
        elif isinstance(v, int) and not _INT64[0] <= v <= _INT64[1]:
            raise BadRow("range", f"integer {v:.3g} outside SQLite's 64-bit range")
        elif isinstance(v, float) and not math.isfinite(v):
            raise BadRow("range", f"number {v!r} is not finite")
    return values


def _row_reason(exc: BaseException) -> str | None:
    """ROW_REASONS for what a bad row raises at write time; None for a storage fault."""
    if isinstance(exc, BadRow):
        return exc.reason
    if isinstance(exc, UnicodeError):
        return "encoding"
    if isinstance(exc, OverflowError):
        return "range"
    if isinstance(exc, sqlite3.DataError | sqlite3.IntegrityError | sqlite3.InterfaceError):
        return "invalid"
    if isinstance(exc, sqlite3.Error | OSError):
        return None
    return "invalid"  # anything else comes from the row: it must not stop the writer


@dataclass(frozen=True)
class StoreStats:
    """What `/metrics` shows of the store: write failures by reason, runs dropped (buffer full),
    runs pending, rows dropped as unwritable by reason, history files reopened."""

    errors: dict[str, int]
    dropped: int
    pending: int
    unwritable: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ROW_REASONS, 0))
    reopens: int = 0


@dataclass
class _Fault:
    reason: str
    detail: str
    since: float = field(default_factory=time.time)


@dataclass(eq=False)
class _Pending:
    """A run waiting for the writer; `done` is set once it is written, dropped or failed to write."""

    result: PluginSandboxResult
    trigger: str
    verdict: tuple[str | None, str | None] = (None, None)
    done: threading.Event = field(default_factory=threading.Event)
    run_id: int | None = None
    unwritable: bool = False


class Store:
    def __init__(self, data_dir: str, retention: int = 1000, *, pending_limit: int = PENDING_LIMIT,
                 retry_seconds: float = RETRY_SECONDS, deadline: float = STORE_DEADLINE_SECONDS,
                 result_limit: int = DEFAULT_MAX_OUTPUT_BYTES) -> None:
        """`result_limit`: characters of a run's result (as JSON) kept in the history, like its stdout."""
        self.data_dir = data_dir
        self.result_limit = result_limit
        self.path = os.path.join(data_dir, "history.sqlite3")
        self.retention = retention
        self.retry_seconds = retry_seconds
        self.deadline = deadline
        #: The connection's lock, held across every SQLite call.
        self._io = threading.Lock()
        #: When the current holder of `_io` took it (monotonic); None when free. Read without a lock.
        self._busy_since: float | None = None
        #: Guards the queue, the counters and the fault; never held across I/O.
        self._state = threading.Condition(threading.Lock())
        self._pending: deque[_Pending] = deque()
        self._pending_limit = pending_limit
        self._errors = dict.fromkeys(FAULT_REASONS, 0)
        self._unwritable = dict.fromkeys(ROW_REASONS, 0)
        self._dropped = 0
        self._reopens = 0
        self._fault: _Fault | None = None
        self._stopping = False
        #: (st_dev, st_ino) of the file the connection has open; None once it is known gone.
        self._identity: tuple[int, int] | None = None
        self._companions: dict[str, tuple[int, int] | None] = {}
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
        self._writer = threading.Thread(target=self._writer_loop, name="store-writer", daemon=True)
        self._writer.start()

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
            present = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
            for column, declaration in _ADDED_COLUMNS:
                if column not in present:
                    db.execute(f"ALTER TABLE runs ADD COLUMN {column} {declaration}")
            st = os.stat(self.path)
        except BaseException:
            db.close()
            raise
        self._identity = (st.st_dev, st.st_ino)
        self._companions = {suffix: _identity(self.path + suffix) for suffix in ("-wal", "-shm")}
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

    def _check_identity(self) -> None:
        """Reopen the history if the file at the path is no longer the one open (deleted, replaced);
        the caller holds `_io`. Raises (OSError, sqlite3.Error) when it cannot be reopened."""
        try:
            st = os.stat(self.path)
            current: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            current = None
        if current is not None and current == self._identity:
            return
        if self._identity is not None:  # first notice: later attempts after a failed reopen stay quiet
            with self._state:
                self._reopens += 1
            log.error("history %s was %s under the sidecar: opening a fresh history there (%d run(s) pending"
                      " are written to it; runs written to the old file since then are not)", self.path,
                      "deleted" if current is None else "replaced", len(self._pending))
            self._identity = None
            self._set_aside_companions()
            self._db.close()
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        self._db = self._open()
        log.warning("history %s reopened", self.path)

    def _set_aside_companions(self) -> None:
        """Move our own -wal aside (and drop our -shm) before the file now at the path is opened: SQLite does
        not check that a WAL belongs to its database, and would replay the old history's WAL into the new one."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for suffix, ours in self._companions.items():
            if ours is not None and _identity(self.path + suffix) == ours:
                try:
                    if suffix == "-shm":
                        os.unlink(self.path + suffix)  # an index SQLite rebuilds from the WAL
                    else:
                        os.replace(self.path + suffix, f"{self.path}{suffix}.orphaned-{stamp}")
                except OSError as exc:
                    log.warning("history %s: could not move the old %s file aside: %s", self.path, suffix, exc)

    @contextmanager
    def _held(self, timeout: float) -> Iterator[bool]:
        """Hold `_io` (waiting at most `timeout`, -1: for ever) and mark the store busy meanwhile."""
        if not self._io.acquire(timeout=timeout):
            yield False
            return
        self._busy_since = time.monotonic()
        try:
            yield True
        finally:
            self._busy_since = None
            self._io.release()

    def _stalled_for(self) -> float | None:
        """Seconds the current SQLite call has run when that is past the deadline (lock-free)."""
        since = self._busy_since
        if since is None:
            return None
        busy = time.monotonic() - since
        return busy if busy > self.deadline else None

    def _stalled_message(self, seconds: float) -> str:
        return (f"stalled: a history call has not returned for {seconds:.1f} s (file system frozen or"
                f" hung?) ({self.path}; {len(self._pending)} run(s) pending)")

    def within_deadline(self, call: Callable[[], T]) -> T:
        """`call()` (store reads for one route) if it returns within the deadline; else StoreUnavailable.

        The call runs on a thread of its own: a read blocked by a frozen file system cannot be
        interrupted, so the route stops waiting for it instead. Once a call is known stalled, later
        ones fail at once rather than start threads that would queue behind it.
        """
        stalled = self._stalled_for()
        if stalled is not None:
            raise StoreUnavailable(f"history store {self._stalled_message(stalled)}")
        box: dict[str, Any] = {}
        finished = threading.Event()

        def target() -> None:
            try:
                box["value"] = call()
            except BaseException as exc:  # noqa: B036 - re-raised in the caller's thread
                box["error"] = exc
            finally:
                finished.set()

        threading.Thread(target=target, name="store-call", daemon=True).start()
        if not finished.wait(self.deadline):
            raise StoreUnavailable(f"history store did not answer within {self.deadline:g} s (file system frozen"
                                   f" or hung?) ({self.path})")
        if "error" in box:
            raise box["error"]
        return box["value"]  # type: ignore[no-any-return]

    def close(self) -> None:
        with self._state:
            self._stopping = True
            self._state.notify_all()
        self._writer.join(timeout=self.deadline)
        with self._held(self.deadline) as held:
            if held:
                if self._pending:
                    self._flush_locked()  # a last try
                self._db.close()
        if self._pending:
            log.error("history %s: %d run(s) could not be written before stopping and are lost",
                      self.path, len(self._pending))

    # -- writes ----------------------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction; the caller holds `_io`.

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

    def _write(self, result: PluginSandboxResult, trigger: str,
               verdict: tuple[str | None, str | None] = (None, None)) -> int:
        row = row_values(result, trigger, verdict, self.result_limit)
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO runs (plugin, outcome, started_at, finished_at, execution_time_ms,"
                " peak_memory_bytes, error_type, error_message, trigger, result_json, result_truncated, state,"
                " state_reason, error_traceback) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", row)
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

    def record(self, result: PluginSandboxResult, trigger: str = "api",
               verdict: tuple[str | None, str | None] = (None, None)) -> int | None:
        """Append one run, bump its totals and trim the plugin's history, atomically.

        Never raises and never waits longer than the deadline: the run id once written; None when
        the store is failing or stalled (the run is kept pending, the fault counted and logged) or
        when its row cannot be written (dropped, counted and logged). Pending runs are written first,
        so history keeps the order runs finished in.
        """
        item = _Pending(result, trigger, verdict)
        dropped = False
        with self._state:
            self._pending.append(item)
            if len(self._pending) > self._pending_limit:
                self._pending.popleft().done.set()
                self._dropped += 1
                dropped = True
            waiting = self._fault is None
            if waiting:
                self._state.notify_all()
        if dropped:
            log.error("history write buffer full (%d runs): dropped the oldest pending run", self._pending_limit)
        if waiting and self._stalled_for() is None:
            item.done.wait(self.deadline)
        stalled = False
        with self._state:
            if item.run_id is not None or item.unwritable:
                return item.run_id
            if self._fault is None:
                self._fault = _Fault("stalled", f"a write did not finish within {self.deadline:g} s")
                stalled = True
            self._errors[self._fault.reason] += 1
        if stalled:
            log.error("history %s: writes stalled (not done within %g s: file system frozen or hung?); runs are"
                      " answered and kept in memory until the store answers again", self.path, self.deadline)
        return None

    def _writer_loop(self) -> None:
        """Write pending runs as they come; while the store is failing, retry every `retry_seconds`."""
        while True:
            with self._state:
                while not self._stopping and (not self._pending or self._fault is not None):
                    if self._fault is not None:
                        self._state.wait(self.retry_seconds)
                        break
                    self._state.wait()
                if self._stopping:
                    return
            with self._held(-1):
                if self._fault is None or self._probe_locked():
                    self._flush_locked()

    def _flush_locked(self) -> int | None:
        """Write pending runs oldest first; stop at the first storage fault. The caller holds `_io`."""
        last: int | None = None
        try:
            self._check_identity()
        except (OSError, sqlite3.Error) as exc:
            self._failed(exc, "reopening the history")
            return None
        while True:
            with self._state:
                if not self._pending:
                    break
                item = self._pending[0]
            try:
                last = self._write(item.result, item.trigger, item.verdict)
            except Exception as exc:
                reason = _row_reason(exc)
                if reason is None:
                    self._failed(exc, f"recording a run of {item.result.plugin}")
                    return None
                self._drop(item, reason, exc)
                continue
            with self._state:
                item.run_id = last
                if self._pending and self._pending[0] is item:
                    self._pending.popleft()
            item.done.set()
        self._cleared()
        return last

    def _drop(self, item: _Pending, reason: str, exc: Exception) -> None:
        with self._state:
            self._unwritable[reason] += 1
            item.unwritable = True
            if self._pending and self._pending[0] is item:
                self._pending.popleft()
        item.done.set()
        log.error("history %s: a run of %s (outcome %s) cannot be stored and is dropped from the history"
                  " (%s: %s); it is counted in the metrics", self.path, item.result.plugin,
                  item.result.outcome.value, reason, exc, exc_info=not isinstance(exc, BadRow | UnicodeError))

    def _failed(self, exc: BaseException, doing: str) -> None:
        """Enter (or change) the fault state, log it once, and release every run waiting on the writer."""
        reason = fault_reason(exc)
        with self._state:
            first = self._fault is None or self._fault.reason != reason
            if first:
                self._fault = _Fault(reason, str(exc))
            waiting = list(self._pending)
        if first:
            log.error("history %s: %s failed: %s (%s); %d run(s) kept in memory, retrying every %g s",
                      self.path, doing, _DESCRIBE[reason], exc, len(waiting), self.retry_seconds)
        for item in waiting:
            item.done.set()

    def _cleared(self) -> None:
        with self._state:
            fault, self._fault = self._fault, None
        if fault is not None:
            log.warning("history %s writable again after %.1f s (%s)", self.path, time.time() - fault.since,
                        _DESCRIBE[fault.reason])

    def _probe_locked(self) -> bool:
        """A real write, after checking the file is still the one open; the caller holds `_io`."""
        try:
            self._check_identity()
            with self._tx() as db:
                db.execute("INSERT INTO probe (id, at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                           (time.time(),))
            return True
        except (OSError, sqlite3.Error) as exc:
            self._failed(exc, "the readiness write")
            return False

    def probe(self) -> tuple[bool, str]:
        """A real write (for `/readyz`), then the pending runs: (ready, reason when not).

        Never waits past the deadline: a store whose calls do not return is reported stalled.
        """
        def attempt() -> tuple[bool, str]:
            with self._held(self.deadline) as held:
                if not held:
                    return False, self._stalled_message(self.deadline)
                if self._probe_locked():
                    self._flush_locked()
            fault = self._fault
            if fault is None:
                return True, "ok"
            return False, (f"{_DESCRIBE[fault.reason]}: {fault.detail} ({self.path}; {len(self._pending)} run(s)"
                           f" pending, since {time.strftime('%H:%M:%S', time.gmtime(fault.since))} UTC)")

        try:
            return self.within_deadline(attempt)
        except StoreUnavailable as exc:
            return False, exc.message.removeprefix("history store ")

    def stats(self) -> StoreStats:
        """The counters, read without any lock: a scrape must never wait on the store (a stalled disk).

        Only the store's threads change them, each change a single step; a scrape may see one run behind.
        """
        return StoreStats(dict(self._errors), self._dropped, len(self._pending), dict(self._unwritable),
                          self._reopens)

    # -- reads -----------------------------------------------------------------------------------
    def _query(self, sql: str, args: tuple[Any, ...]) -> list[sqlite3.Row]:
        with self._held(self.deadline) as held:
            if not held:
                raise StoreUnavailable(f"history store busy: {self._stalled_message(self.deadline)}")
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
            " error_type, error_message, trigger, state, state_reason FROM runs WHERE plugin = ?"
            " ORDER BY id DESC LIMIT ?",
            (plugin, limit),
        )
        return [dict(r) for r in rows]

    def runs(self, plugin: str, limit: int = 20) -> list[dict[str, Any]]:
        """`recent` with what each run returned and its traceback: `result` (decoded; the head of its JSON
        text, a string, when `result_truncated`) and `error_traceback`."""
        rows = self._query(
            "SELECT id, plugin, outcome, started_at, finished_at, execution_time_ms, peak_memory_bytes,"
            " error_type, error_message, trigger, state, state_reason, result_json, result_truncated,"
            " error_traceback FROM runs WHERE plugin = ? ORDER BY id DESC LIMIT ?",
            (plugin, limit),
        )
        out = []
        for r in rows:
            run = dict(r)
            text, truncated = run.pop("result_json"), bool(run["result_truncated"])
            run["result_truncated"] = truncated
            run["result"] = text if truncated or text is None else json.loads(text)
            out.append(run)
        return out

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
