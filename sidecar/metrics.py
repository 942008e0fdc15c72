"""Every Prometheus metric of the sidecar, defined once, and the scrape rendering.

All metric values live in one process, the runner, which records every run; gunicorn workers
only relay the rendered text. So every scrape, whichever worker answers, sees the same
cumulative numbers, with no prometheus-client multiprocess mode (whose per-scrape cost grows
with workers and plugins, and which cannot do scrape-time gauges).

Rendering is ours, not prometheus-client's `generate_latest`: that re-formats every sample on
every scrape (measured ~50-100 ms for 100 plugins here). Each plugin's lines are cached per
family and re-rendered only when that plugin changes; the uptime family, computed at scrape
time, is rendered fresh. Tests check the output with prometheus-client's own parsers.

A scrape never fails because of one value or one plugin: numbers are formatted as
prometheus-client's `floatToGoString` does (NaN, +Inf, -Inf included), and a plugin whose lines
cannot be rendered is left out of that scrape, logged and counted
(`sidecar_metrics_render_errors_total`). The runner's own `process_*` and `python_*` series come
from prometheus-client's process, platform and GC collectors, collected at scrape time.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import __version__
from .check import DROP_REASONS, STATES
from .collector_text import CollectorText
from .metric_family import Family
from .sandbox.outcomes import ABORTED, ERROR_OUTCOMES
from .sandbox.result import PluginSandboxResult
from .store import FAULT_REASONS, ROW_REASONS, StoreStats
from .values import Report, Series

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["CONTENT_TYPE_TEXT", "FAMILIES", "OPENMETRICS_CONTENT_TYPE", "RELOAD_RESULTS", "REJECT_REASONS", "Metrics",
           "refreshed_in_background"]

log = logging.getLogger(__name__)

CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
#: Why a run request was refused before running (docs/monitoring.md says what each counts).
REJECT_REASONS = ("saturated", "overlap", "invalid")
RELOAD_RESULTS = ("success", "failure")
#: Peak memory buckets, bytes: 8 MiB … 4 GiB.
MEMORY_BUCKETS: tuple[float, ...] = tuple(float(2**i * 1024 * 1024) for i in range(3, 13))


#: The metric contract (DESIGN.md "Metrics"); dashboards and alerts use these names.
FAMILIES: tuple[Family, ...] = (
    Family("sidecar_plugin_success", "counter", "Runs that ended with outcome success"),
    Family("sidecar_plugin_errors", "counter", "Runs that ended with an error outcome", ("plugin", "error_type"),
           (("error_type", ERROR_OUTCOMES),), "outcome `aborted` counts in no plugin counter"),
    Family("sidecar_plugin_execution_seconds", "histogram", "Wall time of sandboxed runs",
           doc="buckets `SIDECAR_DURATION_BUCKETS`, default 1 ms … the maximum timeout"),
    Family("sidecar_plugin_peak_memory_bytes", "histogram", "Peak resident memory of runs",
           doc="buckets 8 MiB … 4 GiB"),
    Family("sidecar_plugin_uptime_seconds", "gauge", "Seconds since this sidecar loaded the plugin",
           doc="computed at scrape time"),
    Family("sidecar_plugin_loaded_timestamp_seconds", "gauge", "When this sidecar loaded the plugin"),
    Family("sidecar_plugin_last_run_timestamp_seconds", "gauge", "When the plugin's last run finished",
           doc="absent until the first run"),
    Family("sidecar_plugin_interval_seconds", "gauge", "Schedule interval of a scheduled plugin or check",
           doc="only for scheduled plugins and checks (the staleness alert uses it)"),
    Family("sidecar_plugin_in_flight", "gauge", "Runs in progress"),
    Family("sidecar_plugin_rejected", "counter", "Run requests refused before running", ("plugin", "reason"),
           (("reason", REJECT_REASONS),), "one count per run that did not happen; the reasons are below"),
    Family("sidecar_check_state", "gauge", "What the plugin or check last found: 1 for its state (ok, warning, "
           "critical, unknown), 0 for the others", ("plugin", "state"), (("state", STATES),), "one-hot"),
    Family("sidecar_check_last_success_timestamp_seconds", "gauge", "When the plugin's last successful run "
           "finished: the time of the values exported", doc="absent until the first success"),
    Family("sidecar_check_value", "gauge", "Numeric top-level fields of the last successful run's result",
           ("plugin", "field"), doc="`field`: the result's field name, sanitised; at most `SIDECAR_MAX_PLUGIN_SERIES`"
           " with the plugin's own gauges"),
    Family("sidecar_plugin_values_dropped", "counter", "Values a plugin reported that were not exported",
           ("plugin", "reason"), (("reason", DROP_REASONS),)),
    Family("sidecar_build_info", "gauge", "Always 1; the version label says which build", ("version",)),
    Family("sidecar_scheduler_errors", "counter", "Faults while scheduling a check; the scheduler goes on", ()),
    Family("sidecar_metrics_render_errors", "counter", "Plugins left out of a scrape because rendering failed", ()),
    Family("sidecar_store_errors", "counter", "Runs whose history write failed (kept pending)", ("reason",),
           (("reason", FAULT_REASONS),), "a write that did not finish within 2 s counts as `stalled`"),
    Family("sidecar_store_dropped_runs", "counter", "Pending runs dropped because the write buffer was full", ()),
    Family("sidecar_store_pending_runs", "gauge", "Runs waiting in memory for the history store to recover", ()),
    Family("sidecar_store_unwritable_runs", "counter", "Runs dropped from the history because their row cannot be"
           " stored", ("reason",),
           (("reason", ROW_REASONS),), "the run itself is answered and counted"),
    Family("sidecar_store_reopens", "counter", "History files reopened after being deleted or replaced", ()),
    Family("sidecar_config_reloads", "counter", "Configuration reloads (SIGHUP, POST /-/reload) by result",
           ("result",), (("result", RELOAD_RESULTS),)),
    Family("sidecar_templates", "gauge", "Plugin templates alive (processes that imported a plugin once)", ()),
    Family("sidecar_template_builds", "counter", "Plugin templates started (first runs, edits, evictions)", ()),
    Family("sidecar_template_evictions", "counter", "Templates stopped because SIDECAR_MAX_TEMPLATES was reached", ()),
    Family("sidecar_templates_resident_bytes", "gauge", "Summed resident set size of the templates alive", (),
           doc="pages the templates share, such as the interpreter's, count in each"),
)


def refreshed_in_background(read: Callable[[], Mapping[str, int]], max_age: float,
                            clock: Callable[[], float] = time.monotonic) -> Callable[[], Mapping[str, int]]:
    """`read`'s last answer, re-read on a thread of its own once it is `max_age` seconds old.

    A scrape must not wait on another process: the template counters come from the launcher, which may be
    busy forking (measured with 50 sidecars: asking it on every scrape moved the p99 scrape from 16 to 29 ms).
    Until the first read lands, the answer is empty (the families render 0). A read that raises keeps the
    last good answer and is logged.
    """
    lock = threading.Lock()
    last: dict[str, Mapping[str, int]] = {}
    read_at = [-math.inf]
    busy = [False]

    def refresh() -> None:
        try:
            value: Mapping[str, int] | None = read()
        except Exception:
            log.exception("background read for the scrape failed; the last answer stays")
            value = None
        with lock:
            if value is not None:
                last["value"] = value
            read_at[0] = clock()
            busy[0] = False

    def get() -> Mapping[str, int]:
        with lock:
            if clock() - read_at[0] >= max_age and not busy[0]:
                busy[0] = True
                threading.Thread(target=refresh, name="scrape-refresh", daemon=True).start()
            return last.get("value", {})

    return get


#: The sandbox's template counters (`Sandbox.template_stats`) behind each template family.
_TEMPLATE_STATS = {"sidecar_templates": "alive", "sidecar_template_builds": "builds",
                   "sidecar_template_evictions": "evictions", "sidecar_templates_resident_bytes": "resident_bytes"}


def _header(fam: Family, openmetrics: bool) -> str:
    """A family's HELP and TYPE lines; the Prometheus text format names a counter by its `_total` sample."""
    name = fam.name if openmetrics or fam.type != "counter" else f"{fam.name}_total"
    return f"# HELP {name} {fam.help}\n# TYPE {name} {fam.type}\n"


#: Each family's HELP and TYPE lines, by format (OpenMetrics: True) and name: made once, not per scrape.
_HEADERS = {openmetrics: {fam.name: _header(fam, openmetrics) for fam in FAMILIES} for openmetrics in (False, True)}
#: The families whose lines each plugin renders and keeps (`_Plugin.render`), in scrape order.
_PLUGIN_FAMILIES = tuple(fam.name for fam in FAMILIES if "plugin" in fam.labels
                         and fam.name != "sidecar_plugin_uptime_seconds")
#: The key of the plugins' own gauge families among a scrape's joined sections.
_REPORTED = "_reported"


#: Integers in this range print as Python prints them plus ".0", as `floatToGoString` gives them: from a million
#: up Go writes an exponent (1e+06), and beyond 2**53 a float is no longer the integer.
_GO_EXPONENT = 1_000_000
_EXACT_INT = 2**53


def _num(v: float) -> str:
    """prometheus-client's `floatToGoString`, matched exactly (a test compares them): Go's float
    syntax, NaN and +Inf/-Inf as the exposition formats spell them. Not imported, so gunicorn
    workers, which import this module but never render, do not load prometheus-client."""
    if type(v) is int and -_EXACT_INT < v < _GO_EXPONENT:  # counts: most of a scrape's numbers
        return f"{v}.0"
    d = float(v)
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if math.isnan(d):
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:  # Go switches to exponents sooner than Python
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def _escape(v: str) -> str:
    """A label value as the exposition formats quote it (prometheus-client's rules): names are checked whole
    where they come in, and this keeps any value that slipped past from breaking the whole scrape."""
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _help(text: str, openmetrics: bool) -> str:
    """A HELP text as each format escapes it (OpenMetrics also escapes double quotes)."""
    text = text.replace("\\", r"\\").replace("\n", r"\n")
    return text.replace('"', r'\"') if openmetrics else text


def _reported_families(reported: list[dict[str, tuple[str, str, str]]], openmetrics: bool) -> list[str]:
    """The plugins' own gauge families, each once (sorted), with every plugin's lines under it: the first
    plugin to give a help text or unit for a name gives the family's."""
    families: dict[str, tuple[str, str, list[str]]] = {}
    for per_plugin in reported:
        for name, (help_text, unit, lines) in per_plugin.items():
            h, u, all_lines = families.setdefault(name, (help_text, unit, []))
            if (not h and help_text) or (not u and unit):
                families[name] = (h or help_text, u or unit, all_lines)
            all_lines.append(lines)
    out: list[str] = []
    for name in sorted(families):
        help_text, unit, chunks = families[name]
        out.append(f"# HELP {name} {_help(help_text or 'Reported by a plugin', openmetrics)}\n# TYPE {name} gauge\n")
        if openmetrics and unit:
            out.append(f"# UNIT {name} {unit}\n")
        out.extend(chunks)
    return out


@dataclass
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    les: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.bounds)
        self.les = tuple(_num(b) for b in self.bounds)

    def observe(self, v: float) -> None:
        if math.isnan(v):  # not a measurement; a NaN sum is invalid OpenMetrics (counter-like samples)
            return
        for i, b in enumerate(self.bounds):
            if v <= b:
                self.counts[i] += 1
                break
        self.total += v
        self.count += 1

    def lines(self, name: str, plugin: str) -> list[str]:
        out, cum = [], 0
        for le, c in zip(self.les, self.counts, strict=True):
            cum += c
            out.append(f'{name}_bucket{{plugin="{plugin}",le="{le}"}} {_num(cum)}')
        out.append(f'{name}_bucket{{plugin="{plugin}",le="+Inf"}} {_num(self.count)}')
        out.append(f'{name}_count{{plugin="{plugin}"}} {_num(self.count)}')
        out.append(f'{name}_sum{{plugin="{plugin}"}} {_num(self.total)}')
        return out


@dataclass
class _Plugin:
    name: str
    loaded_at: float
    interval: float | None
    execution: _Histogram
    memory: _Histogram
    success: int = 0
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_OUTCOMES, 0))
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECT_REASONS, 0))
    last_run: float | None = None
    in_flight: int = 0
    #: what the check found (`values.Report`): state and reason of the last run, values of the last success
    state: str = "unknown"
    reason: str | None = None
    last_success: float | None = None
    fields: tuple[tuple[str, float], ...] = ()
    series: tuple[Series, ...] = ()
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    cache: dict[str, str] | None = None
    #: the plugin's own gauges by family name: (help, unit, lines)
    reported: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    #: `name` escaped as a label value, once (the uptime line is rendered on every scrape)
    label: str = field(init=False)

    def __post_init__(self) -> None:
        self.label = _escape(self.name)

    def render(self) -> dict[str, str]:
        """This plugin's lines of every family (uptime excluded), keyed by family name."""
        if self.cache is not None:
            return self.cache
        p = self.label
        c: dict[str, list[str]] = {
            "sidecar_plugin_success": [f'sidecar_plugin_success_total{{plugin="{p}"}} {_num(self.success)}'],
            "sidecar_plugin_errors": [f'sidecar_plugin_errors_total{{plugin="{p}",error_type="{t}"}} {_num(n)}'
                                      for t, n in self.errors.items()],
            "sidecar_plugin_execution_seconds": self.execution.lines("sidecar_plugin_execution_seconds", p),
            "sidecar_plugin_peak_memory_bytes": self.memory.lines("sidecar_plugin_peak_memory_bytes", p),
            "sidecar_plugin_loaded_timestamp_seconds": [
                f'sidecar_plugin_loaded_timestamp_seconds{{plugin="{p}"}} {_num(self.loaded_at)}'],
            "sidecar_plugin_last_run_timestamp_seconds": [] if self.last_run is None else [
                f'sidecar_plugin_last_run_timestamp_seconds{{plugin="{p}"}} {_num(self.last_run)}'],
            "sidecar_plugin_interval_seconds": [] if not self.interval else [
                f'sidecar_plugin_interval_seconds{{plugin="{p}"}} {_num(self.interval)}'],
            "sidecar_plugin_in_flight": [f'sidecar_plugin_in_flight{{plugin="{p}"}} {_num(self.in_flight)}'],
            "sidecar_plugin_rejected": [f'sidecar_plugin_rejected_total{{plugin="{p}",reason="{r}"}} {_num(n)}'
                                        for r, n in self.rejected.items()],
            "sidecar_check_state": [f'sidecar_check_state{{plugin="{p}",state="{st}"}} '
                                    f"{'1.0' if st == self.state else '0.0'}" for st in STATES],
            "sidecar_check_last_success_timestamp_seconds": [] if self.last_success is None else [
                f'sidecar_check_last_success_timestamp_seconds{{plugin="{p}"}} {_num(self.last_success)}'],
            "sidecar_check_value": [f'sidecar_check_value{{plugin="{p}",field="{_escape(f)}"}} {_num(v)}'
                                    for f, v in self.fields],
            "sidecar_plugin_values_dropped": [
                f'sidecar_plugin_values_dropped_total{{plugin="{p}",reason="{r}"}} {_num(n)}'
                for r, n in self.dropped.items()],
        }
        self.cache = {k: "".join(line + "\n" for line in v) for k, v in c.items()}
        reported: dict[str, tuple[str, str, list[str]]] = {}
        for one in self.series:
            labels = "".join(f',{k}="{_escape(v)}"' for k, v in one.labels)
            help_text, unit, lines = reported.setdefault(one.name, (one.help, one.unit, []))
            if not help_text and one.help:
                reported[one.name] = (one.help, unit, lines)
            lines.append(f'{one.name}{{plugin="{p}"{labels}}} {_num(one.value)}\n')
        self.reported = {k: (h, u, "".join(lines)) for k, (h, u, lines) in reported.items()}
        return self.cache


def _process_registry() -> CollectorRegistry:
    """prometheus-client's process, platform and GC collectors, for this (the runner's) process."""
    from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class Metrics:
    """Metric values of every plugin, updated by the runner, rendered for scrapes.

    `process_metrics` adds the rendering process's own `process_*` and `python_*` series (the
    runner's, under `sidecar serve`).
    """

    def __init__(self, duration_buckets: Iterable[float], clock: Callable[[], float] = time.time,
                 process_metrics: bool = True) -> None:
        self.buckets = tuple(duration_buckets)
        self._plugins: dict[str, _Plugin] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self._reloads = dict.fromkeys(RELOAD_RESULTS, 0)
        self._scheduler_errors = 0
        self._render_errors = 0
        self._failing: set[str] = set()  # plugins whose last render failed (logged once until they recover)
        #: per format: the plugins' caches the joined sections were made from, and those sections
        self._joined: dict[bool, tuple[list[dict[str, str]], dict[str, str]] | None] = {False: None, True: None}
        self._process = CollectorText(_process_registry(), _num) if process_metrics else None
        #: Read at scrape time: the history store's fault counters (set by the runner; read without a lock).
        self.store_stats: Callable[[], StoreStats] = lambda: StoreStats(dict.fromkeys(FAULT_REASONS, 0), 0, 0)
        self.template_stats: Callable[[], Mapping[str, int]] = lambda: dict.fromkeys(_TEMPLATE_STATS.values(), 0)

    def add_plugin(self, name: str, loaded_at: float, interval_seconds: float | None) -> None:
        """Create every series of a plugin at zero, so the first error is an increase, not a new series."""
        with self._lock:
            self._plugins[name] = _Plugin(name, loaded_at, interval_seconds, _Histogram(self.buckets),
                                          _Histogram(MEMORY_BUCKETS))

    def update_plugin(self, name: str, loaded_at: float, interval_seconds: float | None) -> None:
        """A reloaded plugin keeps its series; only its load time and interval may change."""
        with self._lock:
            p = self._plugins[name]
            p.loaded_at, p.interval, p.cache = loaded_at, interval_seconds, None

    def remove_plugin(self, name: str) -> None:
        """Drop a plugin's series (removed by a reload); runs still in flight for it are then ignored."""
        with self._lock:
            self._plugins.pop(name, None)

    def reloaded(self, result: str) -> None:
        with self._lock:
            self._reloads[result] += 1

    # In-flight counts belong to the series a run started on: `started` returns it, and `aborted`/`finished`
    # settle that one. A run of a plugin removed by a reload (or removed and added back: a new series) settles
    # a series nobody renders any more, so the current one is never decremented by a run it did not count.
    def started(self, name: str) -> _Plugin | None:
        """Count a run in flight; returns the token `aborted`/`finished` take (None: no such plugin)."""
        with self._lock:
            p = self._plugins.get(name)
            if p is not None:
                p.in_flight += 1
                p.cache = None
            return p

    def aborted(self, started: _Plugin | None) -> None:
        """A run that ended without a result (a sidecar fault, not a plugin outcome): only in-flight changes."""
        with self._lock:
            if started is not None:
                started.in_flight -= 1
                started.cache = None

    def finished(self, started: _Plugin | None, result: PluginSandboxResult, report: Report | None = None) -> None:
        """Count a finished run; `report` (`values.judge`) sets the check's state and, after a success, its
        values (a failed run leaves the last successful values in place)."""
        with self._lock:
            if started is None:
                return
            p = started
            p.in_flight -= 1
            if self._plugins.get(p.name) is not p:
                return  # its series is gone (removed by a reload): nothing else to count
            if result.outcome.value == ABORTED:
                return  # the sidecar ended it (stopping, launcher replaced): not the plugin's run to count
            if result.ok:
                p.success += 1
            else:
                p.errors[result.outcome.value] += 1
            p.execution.observe(result.execution_time_ms / 1000.0)
            if result.peak_memory_bytes:
                p.memory.observe(float(result.peak_memory_bytes))
            p.last_run = result.finished_at or self._clock()
            if report is not None:
                p.state, p.reason = report.state, report.reason
                if report.succeeded:
                    p.last_success = p.last_run
                    p.fields, p.series = report.fields, report.series
                for reason, n in report.dropped.items():
                    p.dropped[reason] += n
            p.cache = None

    def reject(self, name: str, reason: str) -> None:
        with self._lock:
            p = self._plugins.get(name)
            if p is not None:
                p.rejected[reason] += 1
                p.cache = None

    def scheduler_error(self) -> None:
        with self._lock:
            self._scheduler_errors += 1

    def snapshot(self, name: str) -> dict[str, float]:
        with self._lock:
            p = self._plugins[name]
            return {"success": p.success, **{f"errors_{k}": v for k, v in p.errors.items()},
                    **{f"rejected_{k}": v for k, v in p.rejected.items()},
                    "runs": p.execution.count, "in_flight": p.in_flight}

    def check(self, name: str) -> dict[str, object]:
        """What a plugin or check last found, for the status page: state, reason, the values it exports."""
        with self._lock:
            p = self._plugins.get(name)
            if p is None:
                return {"state": "unknown", "reason": None, "values": {}, "last_success": None}
            return {"state": p.state, "reason": p.reason, "values": dict(p.fields), "last_success": p.last_success}

    def _plugin_lines(self, now: float, openmetrics: bool) -> tuple[dict[str, str], str]:
        """Every plugin family's lines over all plugins (the plugins' own gauge families under the key
        `_REPORTED`), and the uptime lines. The caller holds `_lock`.

        Each plugin keeps its lines until it changes (`_Plugin.render`); their concatenation per family is kept
        too, until any plugin's lines change, so a scrape with no run since the last one joins nothing but
        the uptime lines, the one family computed at scrape time. A plugin that fails to render is left out
        and counted."""
        rendered: list[_Plugin] = []
        caches: list[dict[str, str]] = []
        uptime: list[str] = []
        for p in self._plugins.values():
            try:
                cache = p.render()
                line = f'sidecar_plugin_uptime_seconds{{plugin="{p.label}"}} {_num(max(0.0, now - p.loaded_at))}\n'
            except Exception:
                p.cache = None
                self._render_errors += 1
                if p.name not in self._failing:
                    log.exception("rendering the series of plugin %s failed; left out of scrapes until it "
                                  "renders again", p.name)
                self._failing.add(p.name)
                continue
            rendered.append(p)
            caches.append(cache)
            uptime.append(line)
            self._failing.discard(p.name)
        joined = self._joined[openmetrics]
        if joined is None or len(joined[0]) != len(caches) or any(
                a is not b for a, b in zip(joined[0], caches, strict=True)):
            # Holding the caches themselves (not their ids) in the key: a freed dict's id may be reused.
            sections = {name: "".join(c[name] for c in caches) for name in _PLUGIN_FAMILIES}
            sections[_REPORTED] = "".join(_reported_families([p.reported for p in rendered], openmetrics))
            joined = self._joined[openmetrics] = (caches, sections)
        return joined[1], "".join(uptime)

    def _process_text(self, openmetrics: bool) -> str:
        if self._process is None:
            return ""
        try:
            return self._process.render(openmetrics)
        except Exception:
            log.exception("rendering the process and python series failed; left out of this scrape")
            with self._lock:
                self._render_errors += 1
            return ""

    def _store_stats(self) -> StoreStats | None:
        try:
            return self.store_stats()
        except Exception:
            log.exception("reading the history store's counters failed; left out of this scrape")
            with self._lock:
                self._render_errors += 1
            return None

    def _template_stats(self) -> Mapping[str, int] | None:
        try:
            return self.template_stats()
        except Exception:
            log.exception("reading the sandbox's template counters failed; left out of this scrape")
            with self._lock:
                self._render_errors += 1
            return None

    def render(self, openmetrics: bool = False) -> tuple[bytes, str]:
        """(body, content type) in the Prometheus text format, or OpenMetrics when asked for."""
        process = self._process_text(openmetrics)
        store = self._store_stats()
        templates = self._template_stats()
        now = self._clock()
        with self._lock:
            sections, uptime = self._plugin_lines(now, openmetrics)
            totals = {"sidecar_scheduler_errors": self._scheduler_errors,
                      "sidecar_metrics_render_errors": self._render_errors}
            reloads = dict(self._reloads)
        headers = _HEADERS[openmetrics]
        out: list[str] = []
        for fam in FAMILIES:
            name = fam.name
            out.append(headers[name])
            if name in sections:
                out.append(sections[name])
            elif name == "sidecar_plugin_uptime_seconds":
                out.append(uptime)
            elif name == "sidecar_build_info":
                out.append(f'sidecar_build_info{{version="{_escape(__version__)}"}} 1.0\n')
            elif name == "sidecar_config_reloads":
                out.extend(f'sidecar_config_reloads_total{{result="{r}"}} {_num(v)}\n' for r, v in reloads.items())
            elif name in totals:
                out.append(f"{name}_total {_num(totals[name])}\n")
            elif name in _TEMPLATE_STATS:
                if templates is not None:
                    suffix = "_total" if fam.type == "counter" else ""
                    out.append(f"{name}{suffix} {_num(templates.get(_TEMPLATE_STATS[name], 0))}\n")
            elif name.startswith("sidecar_store_"):
                if store is None:
                    continue
                if name == "sidecar_store_errors":
                    out.extend(f'sidecar_store_errors_total{{reason="{r}"}} {_num(store.errors.get(r, 0))}\n'
                               for r in FAULT_REASONS)
                elif name == "sidecar_store_dropped_runs":
                    out.append(f"sidecar_store_dropped_runs_total {_num(store.dropped)}\n")
                elif name == "sidecar_store_pending_runs":
                    out.append(f"sidecar_store_pending_runs {_num(store.pending)}\n")
                elif name == "sidecar_store_unwritable_runs":
                    out.extend(f'sidecar_store_unwritable_runs_total{{reason="{r}"}} '
                               f"{_num(store.unwritable.get(r, 0))}\n" for r in ROW_REASONS)
                elif name == "sidecar_store_reopens":
                    out.append(f"sidecar_store_reopens_total {_num(store.reopens)}\n")
        out.append(sections[_REPORTED])
        out.append(process)
        if openmetrics:
            out.append("# EOF\n")
            return "".join(out).encode(), OPENMETRICS_CONTENT_TYPE
        return "".join(out).encode(), CONTENT_TYPE_TEXT
