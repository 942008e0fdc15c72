"""The runner: the one owner of runs in a sidecar.

One runner per sidecar owns the sandbox launcher, the concurrency limit, the scheduler, the
history writes and the metric values. Gunicorn workers reach it over a Unix socket (`rpc`);
tests and single-process use call it directly. The methods marked `@operation` are its whole
interface to workers: they return plain JSON-able values and raise `SidecarError`s.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from .config import Settings
from .errors import BadRequest, Saturated
from .metrics import Metrics
from .operations import operation
from .plugins import Entry, Registry, discover
from .sandbox.client import RunRequest, Sandbox
from .sandbox.isolation import Isolation
from .sandbox.result import PluginSandboxResult
from .scheduler import Scheduler, Slots
from .store import Store

__all__ = ["Runner"]

log = logging.getLogger(__name__)

#: Runs averaged by the health route's avg_execution_time_ms.
AVERAGE_OVER = 10


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def health_status(recent_outcomes: list[str]) -> str:
    """unknown: never ran; failing: the last run failed; degraded: a failure among the last 10; else healthy."""
    if not recent_outcomes:
        return "unknown"
    if recent_outcomes[0] != "success":
        return "failing"
    if any(o != "success" for o in recent_outcomes[:AVERAGE_OVER]):
        return "degraded"
    return "healthy"


class Runner:
    def __init__(self, settings: Settings, *, start_scheduler: bool = True, hidden: tuple[str, ...] = ()) -> None:
        """`hidden`: more paths plugins must not see (the runner's socket directory)."""
        self.settings = settings
        self.registry: Registry = discover(settings)
        self.store = Store(settings.data_dir, settings.history_retention)
        secrets = (settings.data_dir, *hidden, *((settings.api_token_file,) if settings.api_token_file else ()))
        self.sandbox = Sandbox(extra_env=settings.plugin_env, isolation=Isolation(
            settings.isolation, hidden=secrets, readable=settings.plugin_path))
        self.metrics = Metrics(settings.buckets)
        self.metrics.store_stats = self.store.stats
        for entry in self.registry:
            self.metrics.add_plugin(entry.name, entry.loaded_at, entry.interval_seconds)
        self._slots = Slots(settings.max_concurrent_runs)
        self.scheduler = Scheduler(((e.name, e.interval_seconds) for e in self.registry if e.interval_seconds),
                                   self._slots, self._run_scheduled, self.metrics.reject,
                                   self.metrics.scheduler_error)
        if start_scheduler and any(e.interval_seconds for e in self.registry):
            self.scheduler.start()

    def close(self) -> None:
        self.scheduler.stop()
        self.sandbox.close()
        self.store.close()

    # -- runs --------------------------------------------------------------------------------
    @operation(resend=False)  # a plugin never runs twice for one request
    def run(self, name: str, params: Any = None, timeout_seconds: Any = None) -> dict[str, Any]:
        entry = self.registry.get(name)
        try:
            if params is None:
                params = {}
            if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
                raise BadRequest("params must be a JSON object")
            timeout, memory = self.registry.limits(entry, timeout_seconds)
        except BadRequest:
            self.metrics.reject(name, "invalid")
            raise
        if not self._slots.try_acquire():
            self.metrics.reject(name, "saturated")
            raise Saturated(f"all {self.settings.max_concurrent_runs} sandbox slots are busy", retry_after=1)
        try:
            return self._run_in_slot(entry, {**entry.params, **params}, timeout, memory, "api").to_dict()
        finally:
            self._slots.release()

    @operation(resend=False)  # a counter: never bumped twice for one request
    def reject(self, name: str, reason: str) -> None:
        """Count a request refused before it ran (the HTTP front end validates bodies); 404 if unknown."""
        self.registry.get(name)
        if reason != "invalid":
            raise BadRequest(f"reason = {reason!r} is invalid: only 'invalid' is counted this way")
        self.metrics.reject(name, reason)

    def _run_in_slot(self, entry: Entry, params: dict[str, Any], timeout: float, memory: int,
                     trigger: str) -> PluginSandboxResult:
        s = self.settings
        self.metrics.started(entry.name)
        try:
            result = self.sandbox.run(RunRequest(entry.ref, params, timeout, memory, s.max_result_bytes,
                                                 s.max_output_bytes, isolation=entry.isolation,
                                                 network=entry.network, host_processes=entry.host_processes))
            if result.plugin != entry.name:  # a check runs its plugin's code under its own name
                result = PluginSandboxResult.from_dict({**result.to_dict(), "plugin": entry.name})
        except BaseException:
            self.metrics.aborted(entry.name)
            log.exception("run of %s failed inside the sidecar", entry.name)
            raise
        self.metrics.finished(entry.name, result)
        # After the metrics: a run that happened is counted even if its history write fails (the
        # store keeps it pending, counts and logs the failure; it never raises for a fault).
        self.store.record(result, trigger)
        return result

    def _run_scheduled(self, name: str) -> None:
        """One scheduled run of a check; the scheduler holds its slot."""
        entry = self.registry.get(name)
        timeout, memory = self.registry.limits(entry)
        self._run_in_slot(entry, dict(entry.params), timeout, memory, "schedule")

    # -- reads -----------------------------------------------------------------------------------
    @operation()
    def plugins(self) -> list[dict[str, Any]]:
        return [self.plugin(e.name) for e in self.registry]

    @operation()
    def plugin(self, name: str) -> dict[str, Any]:
        entry = self.registry.get(name)
        timeout, memory = self.registry.limits(entry)
        return {**entry.to_dict(), "timeout_seconds": timeout, "memory_limit_mb": memory,
                "loaded_at": _iso(entry.loaded_at), "health": self._summary(name)}

    def _summary(self, name: str) -> dict[str, Any]:
        totals = self.store.totals(name)
        recent = self.store.recent(name, AVERAGE_OVER)
        return {
            "status": health_status([r["outcome"] for r in recent]),
            "success_count": totals.get("success", 0),
            "error_count": sum(v for k, v in totals.items() if k != "success"),
            "last_used": _iso(recent[0]["finished_at"]) if recent else None,
        }

    @operation()
    def health(self, name: str) -> dict[str, Any]:
        entry = self.registry.get(name)
        timeout, memory = self.registry.limits(entry)
        totals = self.store.totals(name)
        recent = self.store.recent(name, AVERAGE_OVER)
        last_error = self.store.last_error(name)
        times = [r["execution_time_ms"] for r in recent]
        return {
            "plugin": name,
            "status": health_status([r["outcome"] for r in recent]),
            "success_count": totals.get("success", 0),
            "error_count": sum(v for k, v in totals.items() if k != "success"),
            "errors_by_type": {k: v for k, v in sorted(totals.items()) if k != "success"},
            "uptime_seconds": max(0.0, time.time() - entry.loaded_at),
            "last_used": _iso(recent[0]["finished_at"]) if recent else None,
            "execution_time_ms": times[0] if times else None,
            "avg_execution_time_ms": sum(times) / len(times) if times else None,
            "last_error": None if last_error is None else {
                "outcome": last_error["outcome"], "type": last_error["error_type"],
                "message": last_error["error_message"], "at": _iso(last_error["finished_at"])},
            "timeout_seconds": timeout,
            "memory_limit_mb": memory,
            "interval_seconds": entry.interval_seconds,
        }

    @operation()
    def runs(self, name: str, limit: int = 20) -> list[dict[str, Any]]:
        self.registry.get(name)
        rows = self.store.recent(name, limit)
        for r in rows:
            r["started_at"] = _iso(r["started_at"])
            r["finished_at"] = _iso(r["finished_at"])
        return rows

    @operation(raw=True)  # the scrape body travels as its own frame
    def render_metrics(self, openmetrics: bool = False) -> tuple[bytes, str]:
        return self.metrics.render(openmetrics)

    @operation()
    def ready(self) -> dict[str, Any]:
        writable, why = self.store.probe()
        checks = {"plugins_discovered": len(self.registry) > 0, "store_writable": writable}
        state: dict[str, Any] = {"ready": all(checks.values()), "checks": checks}
        if not writable:
            state["reason"] = f"history store: {why}"
        return state

    @operation()
    def ping(self) -> bool:
        return True
