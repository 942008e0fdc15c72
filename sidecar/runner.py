"""The runner: the one owner of runs in a sidecar.

One runner per sidecar owns the sandbox launcher, the concurrency limit, the scheduler, the
history writes and the metric values. Gunicorn workers reach it over a Unix socket (`rpc`);
tests and single-process use call it directly. It implements `operations.RunnerOperations`, its whole
interface to workers: plain JSON-able values, `SidecarError`s.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .config import Settings, load_settings
from .defaults import STORE_DEADLINE_SECONDS
from .errors import BadRequest, ConfigError, Saturated, SidecarError, Stopping
from .metrics import Metrics, refreshed_in_background
from .operations import RunnerOperations
from .plugins import Entry, Registry, discover
from .sandbox.outcomes import ABORTED, ERROR_OUTCOMES
from .sandbox.result import ErrorInfo, Outcome, PluginSandboxResult, iso_utc
from .sandboxing import request_for, sandbox_for
from .scheduler import Scheduler, Slots
from .store import Store
from .values import Report, judge

__all__ = ["Runner"]

log = logging.getLogger(__name__)

#: Runs averaged by the health route's avg_execution_time_ms.
AVERAGE_OVER = 10
#: Recent execution times the status page draws as a sparkline.
SPARKLINE_RUNS = 30
#: Share of a probe's budget it may spend waiting for a sandbox slot; the rest is the run's.
PROBE_SLOT_WAIT_SHARE = 0.5
#: Settings a reload applies; any other change needs a restart and is named in a warning. A reload
#: re-reads the files of the configured plugin directories; a new directory (`plugin_path`) needs a
#: restart because the sandbox's namespace binds the directories it may read when the launcher starts.
RELOADABLE = ("checks", "plugins", "entry_points", "default_timeout_seconds", "default_memory_limit_mb")


def _iso(ts: float | None) -> str | None:
    return None if ts is None else iso_utc(ts)


def health_status(recent_outcomes: list[str]) -> str:
    """unknown: never ran; failing: the last run failed; degraded: a failure among the last 10; else healthy.
    Runs the sidecar aborted (it was stopping, its launcher was replaced) say nothing of the plugin: left out."""
    recent_outcomes = [o for o in recent_outcomes if o != ABORTED]
    if not recent_outcomes:
        return "unknown"
    if recent_outcomes[0] != "success":
        return "failing"
    if any(o != "success" for o in recent_outcomes[:AVERAGE_OVER]):
        return "degraded"
    return "healthy"


def _own_params_only(entry: Entry, params: Any, given_as: str) -> None:
    """A check runs with its configured params for every caller: the operator chose what it reads and where
    it connects, and no HTTP caller may change that (plugins, not checks, take a caller's params)."""
    if params and entry.source == "check":
        raise BadRequest(f"{entry.name!r} is a check: it runs with its configured params only; {given_as} are for "
                         f"plugins (run plugin {entry.plugin!r} to choose your own)")


def _not_check_only(entry: Entry, how: str) -> None:
    """A `check_only` plugin runs only as a configured check: its params say what it executes (the `nagios`
    built-in's command), so a request that could run the bare plugin would be remote command execution."""
    if entry.check_only:
        raise BadRequest(f"plugin {entry.name!r} runs only as a configured check: {how} may not run it, because "
                         f"its params (what it executes) come from a [checks.NAME] table with plugin = "
                         f"{entry.name!r}; run that check instead")


class Runner(RunnerOperations):
    def __init__(self, settings: Settings, *, start_scheduler: bool = True, hidden: tuple[str, ...] = (),
                 reload_source: Callable[[], Settings] = load_settings) -> None:
        """`hidden`: more paths plugins must not see (the runner's socket directory). `reload_source` reads
        the configuration again on reload (serve: the same flags, env and file)."""
        self.settings = settings
        self.reload_source = reload_source
        self._reload_lock = threading.Lock()
        self._start_scheduler = start_scheduler
        self.registry: Registry = discover(settings)
        self.store = Store(settings.data_dir, settings.history_retention, result_limit=settings.max_output_bytes)
        self.sandbox = sandbox_for(settings, hidden=hidden)
        self.metrics = Metrics(settings.buckets)
        self.metrics.store_stats = self.store.stats
        # read off the scrape path: the launcher may be busy forking when Prometheus asks
        self.metrics.template_stats = refreshed_in_background(self.sandbox.template_stats, max_age=5.0)
        for entry in self.registry:
            self.metrics.add_plugin(entry.name, entry.loaded_at, entry.interval_seconds)
        self._slots = Slots(settings.max_concurrent_runs)
        #: set by `stop`/`close`: runs and probes are refused; `_running` runs are between start and record
        self._stopping = False
        self._running = 0
        self._runs_done = threading.Condition()
        self.scheduler = Scheduler(((e.name, e.interval_seconds) for e in self.registry if e.interval_seconds),
                                   self._slots, self._run_scheduled, self.metrics.reject,
                                   self.metrics.scheduler_error)
        self._start_scheduler_if_needed()

    def _start_scheduler_if_needed(self) -> None:
        if self._start_scheduler and not self.scheduler.alive and any(e.interval_seconds for e in self.registry):
            self.scheduler.start()

    def stop(self, grace: float) -> None:
        """A clean stop's first half (SIGTERM): take no new work (the scheduler stops ticking, runs and probes
        answer 503 `stopping`), let runs in flight finish for up to `grace` seconds, end the rest `aborted`,
        and return once every run is recorded. The HTTP workers keep relaying meanwhile, so callers get their
        answers; `close` follows."""
        deadline = time.monotonic() + grace
        with self._runs_done:
            self._stopping = True
        self.scheduler.stop()
        with self._runs_done:
            self._runs_done.wait_for(lambda: self._running == 0, timeout=grace)
        self.sandbox.close(max(0.0, deadline - time.monotonic()))  # ends what still runs; returns once none does
        with self._runs_done:  # then each run's metrics and history write (bounded by STORE_DEADLINE_SECONDS)
            self._runs_done.wait_for(lambda: self._running == 0, timeout=STORE_DEADLINE_SECONDS + 1.0)

    def close(self) -> None:
        self._stopping = True
        self.scheduler.stop()
        self.sandbox.close()
        self.store.close()

    def _refuse_if_stopping(self) -> None:
        if self._stopping:
            raise Stopping("the sidecar is stopping: it takes no new runs (runs in flight finish)")

    # -- runs --------------------------------------------------------------------------------
    def run(self, name: str, params: Any = None, timeout_seconds: Any = None) -> dict[str, Any]:
        entry = self.registry.get(name)
        self._refuse_if_stopping()
        try:
            if params is None:
                params = {}
            if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
                raise BadRequest("params must be a JSON object")
            _own_params_only(entry, params, "params")
            _not_check_only(entry, "a request")
            timeout, memory = self.registry.limits(entry, timeout_seconds)
        except BadRequest:
            self.metrics.reject(name, "invalid")
            raise
        if not self._slots.try_acquire():
            self.metrics.reject(name, "saturated")
            raise Saturated(f"all {self.settings.max_concurrent_runs} sandbox slots are busy", retry_after=1)
        try:
            result, report = self._run_in_slot(entry, {**entry.params, **params}, timeout, memory, "api")
        finally:
            self._slots.release()
        # what the plugin sent of its report gives way to what the sidecar made of it
        return {**{k: v for k, v in result.to_answer().items() if k != "report"}, "check": report.to_dict()}

    def reject(self, name: str, reason: str) -> None:
        """Count a request refused before it ran (the HTTP front end validates bodies); 404 if unknown."""
        self.registry.get(name)
        if reason != "invalid":
            raise BadRequest(f"reason = {reason!r} is invalid: only 'invalid' is counted this way")
        self.metrics.reject(name, reason)

    def _run_in_slot(self, entry: Entry, params: dict[str, Any], timeout: float, memory: int,
                     trigger: str) -> tuple[PluginSandboxResult, Report]:
        with self._runs_done:  # checked with the count taken, so `stop` never misses a run that got past it
            self._refuse_if_stopping()
            self._running += 1
        try:
            return self._record_run(entry, params, timeout, memory, trigger)
        finally:
            with self._runs_done:
                self._running -= 1
                self._runs_done.notify_all()

    def _record_run(self, entry: Entry, params: dict[str, Any], timeout: float, memory: int,
                    trigger: str) -> tuple[PluginSandboxResult, Report]:
        s = self.settings
        in_flight = self.metrics.started(entry.name)
        try:
            if entry.metadata.issues:  # a broken file: refused with its reason, no sandbox started
                now = time.time()
                where = entry.ref.path or entry.location  # a check names its plugin's file
                why = ErrorInfo("BrokenPlugin", f"plugin {entry.plugin!r} is broken: {where}: {entry.metadata.issues}")
                result = PluginSandboxResult(entry.name, Outcome.IMPORT, error=why, started_at=now, finished_at=now)
            else:
                result = self.sandbox.run(request_for(entry, s, params, timeout, memory))
            if result.plugin != entry.name:  # a check runs its plugin's code under its own name
                result = PluginSandboxResult.from_dict({**result.to_dict(), "plugin": entry.name})
        except BaseException:
            self.metrics.aborted(in_flight)
            log.exception("run of %s failed inside the sidecar", entry.name)
            raise
        report = judge(result, s.max_plugin_series)
        self.metrics.finished(in_flight, result, report)
        # After the metrics: a run that happened is counted even if its history write fails or stalls
        # (the store keeps it pending or drops an unwritable row, counts and logs it; it never raises
        # and waits at most STORE_DEADLINE_SECONDS).
        self.store.record(result, trigger, (report.state, report.reason))
        return result, report

    def _run_scheduled(self, name: str) -> None:
        """One scheduled run of a check; the scheduler holds its slot."""
        registry = self.registry
        entry = registry.entries.get(name)
        if entry is None or self._stopping:
            return  # removed by a reload after its tick, or the sidecar is stopping
        timeout, memory = registry.limits(entry)
        self._run_in_slot(entry, dict(entry.params), timeout, memory, "schedule")

    # -- reads -----------------------------------------------------------------------------------
    # Every route that reads the history does it in one `store.within_deadline` call: a stalled or
    # failing store answers 503 `store_unavailable` with the reason, never a hang or a 500.
    def plugins(self) -> list[dict[str, Any]]:
        registry = self.registry  # a reload may swap it meanwhile
        entries = list(registry)
        summaries = self.store.within_deadline(lambda: [self._summary(e.name) for e in entries])
        return [self._describe(registry, e, summary) for e, summary in zip(entries, summaries, strict=True)]

    def plugin(self, name: str) -> dict[str, Any]:
        registry = self.registry
        entry = registry.get(name)
        return self._describe(registry, entry, self.store.within_deadline(lambda: self._summary(name)))

    def _describe(self, registry: Registry, entry: Entry, summary: dict[str, Any]) -> dict[str, Any]:
        timeout, memory = registry.limits(entry)
        return {**entry.to_dict(), "timeout_seconds": timeout, "memory_limit_mb": memory,
                "loaded_at": _iso(entry.loaded_at), "health": summary}

    def _summary(self, name: str) -> dict[str, Any]:
        totals = self.store.totals(name)
        recent = self.store.recent(name, AVERAGE_OVER)
        return {
            "status": health_status([r["outcome"] for r in recent]),
            "success_count": totals.get("success", 0),
            "error_count": sum(v for k, v in totals.items() if k in ERROR_OUTCOMES),
            "last_used": _iso(recent[0]["finished_at"]) if recent else None,
        }

    def health(self, name: str) -> dict[str, Any]:
        entry = self.registry.get(name)
        timeout, memory = self.registry.limits(entry)
        totals, recent, last_error = self.store.within_deadline(
            lambda: (self.store.totals(name), self.store.recent(name, AVERAGE_OVER), self.store.last_error(name)))
        times = [r["execution_time_ms"] for r in recent]
        return {
            "plugin": name,
            "status": health_status([r["outcome"] for r in recent]),
            "success_count": totals.get("success", 0),
            "error_count": sum(v for k, v in totals.items() if k in ERROR_OUTCOMES),
            "errors_by_type": {k: v for k, v in sorted(totals.items()) if k in ERROR_OUTCOMES},
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

    def runs(self, name: str, limit: int = 20) -> list[dict[str, Any]]:
        self.registry.get(name)
        rows = self.store.within_deadline(lambda: self.store.runs(name, limit))
        for r in rows:
            r["started_at"] = _iso(r["started_at"])
            r["finished_at"] = _iso(r["finished_at"])
        return rows

    def render_metrics(self, openmetrics: bool = False) -> tuple[bytes, str]:
        return self.metrics.render(openmetrics)

    def ready(self) -> dict[str, Any]:
        """Never raises: whatever goes wrong with the history is a reason to be not ready (503)."""
        try:
            writable, why = self.store.probe()
        except Exception as exc:
            log.exception("the readiness probe of the history store failed")
            writable, why = False, f"probe failed: {type(exc).__name__}: {exc}"
        checks = {"plugins_discovered": len(self.registry) > 0, "store_writable": writable}
        stalled = self.sandbox.problem()  # a launcher that stopped answering guards no run
        checks["launcher_answers"] = stalled is None
        state: dict[str, Any] = {"ready": all(checks.values()) and not self._stopping, "checks": checks,
                                 "containment": self.sandbox.containment}
        if self._stopping:  # a load balancer sends its traffic elsewhere while runs in flight finish
            state["reason"] = "the sidecar is stopping"
        elif not writable:
            state["reason"] = f"history store: {why}"
        elif stalled is not None:
            state["reason"] = stalled
        return state

    def ping(self) -> bool:
        return True

    # -- probes (GET /probe) ---------------------------------------------------------------------
    def probe(self, name: str, params: Any = None, budget_seconds: float = 10.0) -> dict[str, Any]:
        """Run `name` now within `budget_seconds` (waiting for a slot included); trigger `probe`.

        Returns `{plugin, outcome, result, state, duration_seconds}`; outcome `saturated` when no slot freed within
        half the budget. A check runs with its configured params only; a plugin with `params`.
        """
        started = time.monotonic()
        entry = self.registry.get(name)
        self._refuse_if_stopping()
        try:
            _own_params_only(entry, params, "param.*")
            _not_check_only(entry, "/probe")
            if not isinstance(params or {}, dict):
                raise BadRequest("params must be a JSON object")
        except BadRequest:
            self.metrics.reject(name, "invalid")
            raise
        timeout, memory = self.registry.limits(entry)
        budget = min(float(budget_seconds), timeout)
        # Wait at most half the budget: a run started with almost nothing left would only record a timeout
        # against the plugin (and page someone) for what is really the sidecar's saturation.
        if not self._slots.acquire(timeout=budget * PROBE_SLOT_WAIT_SHARE):
            self.metrics.reject(name, "saturated")
            return {"plugin": name, "outcome": "saturated", "result": None,
                    "duration_seconds": time.monotonic() - started}
        try:
            remaining = budget - (time.monotonic() - started)
            result, report = self._run_in_slot(entry, {**entry.params, **(params or {})}, remaining, memory, "probe")
        finally:
            self._slots.release()
        return {"plugin": name, "outcome": result.outcome.value, "result": result.result, "state": report.state,
                "duration_seconds": time.monotonic() - started}

    # -- reload (SIGHUP, POST /-/reload) -----------------------------------------------------------
    def reload(self) -> dict[str, Any]:
        """Re-read the checks and plugin directories and swap the registry; refuse a bad configuration.

        A name that stays keeps its history and metric series; removed names leave `/plugins` and
        `/metrics`; new ones are scheduled. Runs in flight finish with the entry they started with.
        Raises ConfigError (the old configuration keeps running) when the new one is bad.
        """
        with self._reload_lock:
            try:
                fresh = self.reload_source()
                settings = self.settings.replace(**{k: getattr(fresh, k) for k in RELOADABLE})
                registry = discover(settings)
                if registry.errors:  # what makes `serve` refuse to start makes a reload refused
                    raise ConfigError("; ".join(registry.errors))
            except SidecarError as exc:
                self.metrics.reloaded("failure")
                raise ConfigError(f"reload refused, the running configuration is kept: {exc.message}") from None
            old = self.registry
            for entry in registry:
                previous = old.entries.get(entry.name)
                if previous is None:
                    self.metrics.add_plugin(entry.name, entry.loaded_at, entry.interval_seconds)
                elif dataclasses.replace(entry, loaded_at=previous.loaded_at) == previous:
                    registry.entries[entry.name] = previous  # unchanged: keeps its load time too
                else:
                    self.metrics.update_plugin(entry.name, entry.loaded_at, entry.interval_seconds)
            self.registry, self.settings = registry, settings
            removed = [n for n in old.entries if n not in registry.entries]
            for name in removed:
                self.metrics.remove_plugin(name)
            self.scheduler.set_checks((e.name, e.interval_seconds) for e in registry if e.interval_seconds)
            self._start_scheduler_if_needed()
            self.metrics.reloaded("success")
            summary = {
                "added": [n for n in registry.entries if n not in old.entries],
                "changed": [n for n, e in registry.entries.items() if n in old.entries and e is not old.entries[n]],
                "removed": removed,
                "needs_restart": [f.name for f in dataclasses.fields(Settings)
                                  if f.name not in RELOADABLE and getattr(fresh, f.name) != getattr(settings, f.name)],
            }
            log.info("configuration reloaded: added %(added)s, changed %(changed)s, removed %(removed)s", summary)
            if summary["needs_restart"]:
                log.warning("reload: changed settings need a restart to apply: %s", ", ".join(summary["needs_restart"]))
            return summary

    # -- the status page (GET /) -------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Everything the status page shows, in one call: each entry's health, recent execution times, and
        what it last found (state, why, latest values)."""
        registry = self.registry
        listed = list(registry)
        history = self.store.within_deadline(
            lambda: [(self.store.recent(e.name, SPARKLINE_RUNS), self.store.totals(e.name)) for e in listed])
        entries = []
        for entry, (recent, totals) in zip(listed, history, strict=True):
            last10 = [r["execution_time_ms"] for r in recent[:AVERAGE_OVER]]
            check = self.metrics.check(entry.name)
            entries.append({
                "name": entry.name, "plugin": entry.plugin, "source": entry.source,
                "description": entry.description, "interval_seconds": entry.interval_seconds,
                "status": health_status([r["outcome"] for r in recent[:AVERAGE_OVER]]),
                "last_used": _iso(recent[0]["finished_at"]) if recent else None,
                "last_outcome": recent[0]["outcome"] if recent else None,
                "avg_execution_time_ms": sum(last10) / len(last10) if last10 else None,
                "success_count": totals.get("success", 0),
                "errors_by_type": {k: v for k, v in sorted(totals.items()) if k in ERROR_OUTCOMES},
                "recent_execution_ms": [r["execution_time_ms"] for r in reversed(recent)],
                "problem": entry.metadata.problem,
                "state": check["state"], "state_reason": check["reason"], "values": check["values"],
            })
        return {"entries": entries, "generated_at": _iso(time.time())}
