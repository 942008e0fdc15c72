"""Run history in SQLite: the only SQLite code of the sidecar.

Written by the runner process alone (one writer, WAL journal), so it needs no cross-process
locking; it survives restarts. Per-plugin totals live in their own table so that retention
(`SIDECAR_HISTORY_RETENTION` runs per plugin) never changes the counts the health route reports.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .sandbox.result import PluginSandboxResult

__all__ = ["Store"]

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
"""


class Store:
    def __init__(self, data_dir: str, retention: int = 1000) -> None:
        # The history is the sidecar's alone: directory 0700, files 0600 (SQLite gives the -wal and
        # -shm files the database file's mode), whatever the umask or an older install left.
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        os.chmod(data_dir, 0o700)
        self.path = os.path.join(data_dir, "history.sqlite3")
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.chmod(self.path + suffix, 0o600)
        self.retention = retention
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def record(self, result: PluginSandboxResult, trigger: str = "api") -> int:
        """Append one run, bump its totals and trim the plugin's history, atomically."""
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

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[sqlite3.Row]:
        with self._lock:
            self._db.row_factory = sqlite3.Row
            try:
                return list(self._db.execute(sql, args))
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
        try:
            with self._tx() as db:
                db.execute("CREATE TABLE IF NOT EXISTS _probe (x)")
            return True
        except sqlite3.Error:
            return False

