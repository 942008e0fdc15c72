"""The hand-rendered exposition, checked with prometheus-client's own parsers."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from sidecar import __version__
from sidecar.check import DROP_REASONS, STATES
from sidecar.metrics import (
    CONTENT_TYPE_TEXT,
    FAMILIES,
    MEMORY_BUCKETS,
    OPENMETRICS_CONTENT_TYPE,
    REJECT_REASONS,
    RELOAD_RESULTS,
    Metrics,
)
from sidecar.sandbox.outcomes import ERROR_OUTCOMES
from sidecar.sandbox.result import ErrorInfo, Outcome, PluginSandboxResult
from sidecar.store import FAULT_REASONS, ROW_REASONS
from sidecar.values import Report, Series

BUCKETS = (0.01, 0.1, 1.0, 10.0)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _families(m: Metrics, openmetrics: bool = False) -> dict[str, Metric]:
    body, content_type = m.render(openmetrics)
    text = body.decode()
    if openmetrics:
        assert content_type == OPENMETRICS_CONTENT_TYPE
        assert text.endswith("# EOF\n")
        fams = list(parse_openmetrics(text))  # type: ignore[no-untyped-call]
    else:
        assert content_type == CONTENT_TYPE_TEXT
        assert "# EOF" not in text
        fams = list(parse_text(text))
    names = [f.name for f in fams]
    assert len(names) == len(set(names)), names
    return {f.name: f for f in fams}


def _sidecar(fams: dict[str, Metric]) -> set[str]:
    return {name for name in fams if name.startswith("sidecar_")}


def _value(fams: dict[str, Metric], family: str, sample: str, **labels: str) -> float:
    hits = [s.value for s in fams[family].samples if s.name == sample and s.labels == labels]
    assert len(hits) == 1, (family, sample, labels, fams[family].samples)
    return float(hits[0])


def _result(plugin: str, outcome: Outcome = Outcome.SUCCESS, ms: float = 50.0, mem: int = 20 * 1024 * 1024,
            finished_at: float = 990.0) -> PluginSandboxResult:
    error = None if outcome is Outcome.SUCCESS else ErrorInfo("E", "m")
    return PluginSandboxResult(plugin, outcome, error=error, execution_time_ms=ms, peak_memory_bytes=mem,
                               started_at=finished_at - ms / 1000, finished_at=finished_at)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metrics(clock: Clock) -> Metrics:
    m = Metrics(BUCKETS, clock=clock)
    m.add_plugin("alpha", 900.0, None)
    m.add_plugin("beta", 950.0, 30.0)
    return m


@pytest.mark.parametrize("openmetrics", [False, True])
def test_every_family_present_with_its_type(metrics: Metrics, openmetrics: bool) -> None:
    fams = _families(metrics, openmetrics)
    assert _sidecar(fams) == {f.name for f in FAMILIES}
    for f in FAMILIES:
        assert fams[f.name].type == f.type, f.name
        assert fams[f.name].documentation == f.help
        for s in fams[f.name].samples:
            assert set(s.labels) - {"le"} == set(f.labels), (f.name, s)


@pytest.mark.parametrize("openmetrics", [False, True])
def test_empty_metrics_still_parse(openmetrics: bool) -> None:
    fams = _families(Metrics(BUCKETS), openmetrics)
    assert _sidecar(fams) == {f.name for f in FAMILIES}
    assert _value(fams, "sidecar_build_info", "sidecar_build_info", version=__version__) == 1.0


@pytest.mark.parametrize("openmetrics", [False, True])
def test_fresh_plugin_series_at_zero(metrics: Metrics, openmetrics: bool) -> None:
    fams = _families(metrics, openmetrics)
    for p in ("alpha", "beta"):
        assert _value(fams, "sidecar_plugin_success", "sidecar_plugin_success_total", plugin=p) == 0
        for t in ERROR_OUTCOMES:
            assert _value(fams, "sidecar_plugin_errors", "sidecar_plugin_errors_total", plugin=p, error_type=t) == 0
        for r in REJECT_REASONS:
            assert _value(fams, "sidecar_plugin_rejected", "sidecar_plugin_rejected_total", plugin=p, reason=r) == 0
        for hist, bounds in (("sidecar_plugin_execution_seconds", BUCKETS),
                             ("sidecar_plugin_peak_memory_bytes", MEMORY_BUCKETS)):
            buckets = {s.labels["le"]: s.value for s in fams[hist].samples
                       if s.name == f"{hist}_bucket" and s.labels["plugin"] == p}
            assert len(buckets) == len(bounds) + 1 and set(buckets.values()) == {0}
            assert float(max(buckets, key=float)) == float("inf")
            assert _value(fams, hist, f"{hist}_count", plugin=p) == 0
            assert _value(fams, hist, f"{hist}_sum", plugin=p) == 0
        assert _value(fams, "sidecar_plugin_in_flight", "sidecar_plugin_in_flight", plugin=p) == 0
    assert fams["sidecar_plugin_last_run_timestamp_seconds"].samples == []
    assert set(ERROR_OUTCOMES) == {o.value for o in Outcome} - {"success", "aborted"}  # aborted: not the plugin's


def test_loaded_and_interval(metrics: Metrics) -> None:
    fams = _families(metrics)
    assert _value(fams, "sidecar_plugin_loaded_timestamp_seconds", "sidecar_plugin_loaded_timestamp_seconds",
                  plugin="alpha") == 900.0
    interval = fams["sidecar_plugin_interval_seconds"].samples
    assert [(s.labels, s.value) for s in interval] == [({"plugin": "beta"}, 30.0)]


def test_uptime_uses_injected_clock(metrics: Metrics, clock: Clock) -> None:
    fams = _families(metrics)
    assert _value(fams, "sidecar_plugin_uptime_seconds", "sidecar_plugin_uptime_seconds", plugin="alpha") == 100.0
    assert _value(fams, "sidecar_plugin_uptime_seconds", "sidecar_plugin_uptime_seconds", plugin="beta") == 50.0
    clock.now = 1234.5
    fams = _families(metrics)  # uptime is computed per scrape, never cached
    assert _value(fams, "sidecar_plugin_uptime_seconds", "sidecar_plugin_uptime_seconds", plugin="alpha") == 334.5
    clock.now = 0.0  # a clock behind loaded_at never gives negative uptime
    fams = _families(metrics)
    assert _value(fams, "sidecar_plugin_uptime_seconds", "sidecar_plugin_uptime_seconds", plugin="alpha") == 0.0


def _buckets(fams: dict[str, Metric], hist: str, plugin: str) -> list[tuple[float, float]]:
    out = [(float(s.labels["le"]), s.value) for s in fams[hist].samples
           if s.name == f"{hist}_bucket" and s.labels["plugin"] == plugin]
    return sorted(out)


@pytest.mark.parametrize("openmetrics", [False, True])
def test_started_and_finished(metrics: Metrics, clock: Clock, openmetrics: bool) -> None:
    first, second = metrics.started("alpha"), metrics.started("alpha")
    fams = _families(metrics, openmetrics)
    assert _value(fams, "sidecar_plugin_in_flight", "sidecar_plugin_in_flight", plugin="alpha") == 2
    assert fams["sidecar_plugin_last_run_timestamp_seconds"].samples == []

    metrics.finished(first, _result("alpha", ms=50.0, mem=20 * 1024 * 1024, finished_at=990.0))
    metrics.finished(second, _result("alpha", Outcome.TIMEOUT, ms=5000.0, mem=600 * 1024 * 1024, finished_at=995.0))
    fams = _families(metrics, openmetrics)
    assert _value(fams, "sidecar_plugin_in_flight", "sidecar_plugin_in_flight", plugin="alpha") == 0
    assert _value(fams, "sidecar_plugin_success", "sidecar_plugin_success_total", plugin="alpha") == 1
    for t in ERROR_OUTCOMES:
        want = 1 if t == "timeout" else 0
        assert _value(fams, "sidecar_plugin_errors", "sidecar_plugin_errors_total", plugin="alpha",
                      error_type=t) == want
    hist = "sidecar_plugin_execution_seconds"
    assert _buckets(fams, hist, "alpha") == [(0.01, 0), (0.1, 1), (1.0, 1), (10.0, 2), (float("inf"), 2)]
    assert _value(fams, hist, f"{hist}_count", plugin="alpha") == 2
    assert _value(fams, hist, f"{hist}_sum", plugin="alpha") == pytest.approx(5.05)
    mem = "sidecar_plugin_peak_memory_bytes"
    mem_buckets = _buckets(fams, mem, "alpha")
    values = [v for _, v in mem_buckets]
    assert values == sorted(values) and values[-1] == 2
    assert dict(mem_buckets)[16 * 1024 * 1024] == 0 and dict(mem_buckets)[32 * 1024 * 1024] == 1
    assert dict(mem_buckets)[512 * 1024 * 1024] == 1 and dict(mem_buckets)[1024 * 1024 * 1024] == 2
    assert _value(fams, mem, f"{mem}_sum", plugin="alpha") == 620 * 1024 * 1024
    assert _value(fams, "sidecar_plugin_last_run_timestamp_seconds", "sidecar_plugin_last_run_timestamp_seconds",
                  plugin="alpha") == 995.0
    # beta untouched
    assert _value(fams, "sidecar_plugin_success", "sidecar_plugin_success_total", plugin="beta") == 0
    assert _value(fams, hist, f"{hist}_count", plugin="beta") == 0
    assert metrics.snapshot("alpha") == {"success": 1, **{f"errors_{t}": int(t == "timeout") for t in ERROR_OUTCOMES},
                                         **{f"rejected_{r}": 0 for r in REJECT_REASONS}, "runs": 2, "in_flight": 0}


def test_buckets_cumulative_and_monotone(metrics: Metrics) -> None:
    for ms in (1, 5, 20, 80, 300, 900, 2000, 20_000, 50, 7):
        metrics.finished(metrics.started("beta"), _result("beta", ms=ms, mem=ms * 1024 * 1024))
    fams = _families(metrics)
    for hist in ("sidecar_plugin_execution_seconds", "sidecar_plugin_peak_memory_bytes"):
        pairs = _buckets(fams, hist, "beta")
        values = [v for _, v in pairs]
        assert values == sorted(values), (hist, pairs)
        assert values[-1] == _value(fams, hist, f"{hist}_count", plugin="beta") == 10
    exec_buckets = dict(_buckets(fams, "sidecar_plugin_execution_seconds", "beta"))
    assert exec_buckets == {0.01: 3, 0.1: 6, 1.0: 8, 10.0: 9, float("inf"): 10}


def test_finished_without_time_uses_clock_and_no_memory_skips_histogram(metrics: Metrics, clock: Clock) -> None:
    metrics.finished(metrics.started("alpha"), _result("alpha", Outcome.CRASH, mem=0, finished_at=0.0))
    fams = _families(metrics)
    assert _value(fams, "sidecar_plugin_last_run_timestamp_seconds", "sidecar_plugin_last_run_timestamp_seconds",
                  plugin="alpha") == clock.now
    assert _value(fams, "sidecar_plugin_peak_memory_bytes", "sidecar_plugin_peak_memory_bytes_count",
                  plugin="alpha") == 0
    assert _value(fams, "sidecar_plugin_errors", "sidecar_plugin_errors_total", plugin="alpha",
                  error_type="crash") == 1


def test_reject(metrics: Metrics) -> None:
    metrics.reject("alpha", "saturated")
    metrics.reject("alpha", "saturated")
    metrics.reject("beta", "invalid")
    fams = _families(metrics, openmetrics=True)
    got = {(s.labels["plugin"], s.labels["reason"]): s.value for s in fams["sidecar_plugin_rejected"].samples}
    assert got == {("alpha", "saturated"): 2, ("alpha", "overlap"): 0, ("alpha", "invalid"): 0,
                   ("beta", "saturated"): 0, ("beta", "overlap"): 0, ("beta", "invalid"): 1}


def test_cache_is_invalidated_on_every_change(metrics: Metrics) -> None:
    def success() -> float:
        return _value(_families(metrics), "sidecar_plugin_success", "sidecar_plugin_success_total", plugin="alpha")

    def in_flight() -> float:
        return _value(_families(metrics), "sidecar_plugin_in_flight", "sidecar_plugin_in_flight", plugin="alpha")

    def ours(body: bytes) -> list[bytes]:  # process_* and python_* (CPU time, GC counts) move on their own
        return [line for line in body.splitlines() if not line.startswith((b"process_", b"python_"))]

    first, _ = metrics.render()
    assert ours(metrics.render()[0]) == ours(first)  # cached render is stable
    run = metrics.started("alpha")
    assert in_flight() == 1
    metrics.finished(run, _result("alpha"))
    assert in_flight() == 0 and success() == 1
    metrics.finished(metrics.started("alpha"), _result("alpha"))
    assert success() == 2
    metrics.reject("alpha", "invalid")
    fams = _families(metrics)
    assert _value(fams, "sidecar_plugin_rejected", "sidecar_plugin_rejected_total", plugin="alpha",
                  reason="invalid") == 1
    # the text and the OpenMetrics renders share the cache and agree
    om = _families(metrics, openmetrics=True)
    assert _value(om, "sidecar_plugin_success", "sidecar_plugin_success_total", plugin="alpha") == 2
    metrics.add_plugin("gamma", 999.0, None)
    assert "gamma" in {s.labels.get("plugin") for s in _families(metrics)["sidecar_plugin_success"].samples}


def test_label_values_only_from_added_plugins(metrics: Metrics) -> None:
    metrics.finished(metrics.started("alpha"), _result("alpha", Outcome.VALUE))
    metrics.reject("beta", "saturated")
    allowed: dict[str, set[Any]] = {"plugin": {"alpha", "beta"}, "error_type": set(ERROR_OUTCOMES),
                                    "reason": {*REJECT_REASONS, *FAULT_REASONS, *ROW_REASONS, *DROP_REASONS},
                                    "version": {__version__},
                                    "result": set(RELOAD_RESULTS), "state": set(STATES)}
    for openmetrics in (False, True):
        for fam in _families(metrics, openmetrics).values():
            if not fam.name.startswith("sidecar_"):
                continue  # process_* and python_* carry prometheus-client's own labels
            for s in fam.samples:
                for k, v in s.labels.items():
                    if k == "le":
                        float(v)
                        continue
                    assert v in allowed[k], (fam.name, k, v)


def test_unknown_plugin_creates_no_series(metrics: Metrics) -> None:
    # A run still in flight when a reload removed its plugin reports to a series that is gone: dropped.
    def ours() -> dict[str, Metric]:  # the process series move on their own (CPU time)
        return {k: v for k, v in _families(metrics).items() if k.startswith("sidecar_")}

    before = ours()
    metrics.finished(metrics.started("nope"), _result("nope", Outcome.VALUE))
    metrics.reject("nope", "saturated")
    assert ours() == before
    with pytest.raises(KeyError):
        metrics.update_plugin("nope", 0.0, None)


def test_removed_plugin_leaves_and_kept_plugin_keeps_its_series(metrics: Metrics) -> None:
    metrics.finished(metrics.started("alpha"), _result("alpha", Outcome.SUCCESS))
    metrics.update_plugin("alpha", 2000.0, 5.0)
    metrics.remove_plugin("beta")
    metrics.reloaded("success")
    metrics.reloaded("failure")
    metrics.reloaded("failure")
    fams = _families(metrics)
    assert {s.labels.get("plugin") for s in fams["sidecar_plugin_success"].samples} == {"alpha"}
    assert _value(fams, "sidecar_plugin_success", "sidecar_plugin_success_total", plugin="alpha") == 1.0
    assert _value(fams, "sidecar_plugin_interval_seconds", "sidecar_plugin_interval_seconds", plugin="alpha") == 5.0
    assert _value(fams, "sidecar_config_reloads", "sidecar_config_reloads_total", result="failure") == 2.0
    assert _value(fams, "sidecar_config_reloads", "sidecar_config_reloads_total", result="success") == 1.0


# -- a scrape never fails because of one value or one plugin ------------------------------------------


@pytest.mark.parametrize("value", [0.0, 1.0, -1.0, 0.1, 1e-9, 123456.0, 1234567.0, 1764110721.123, 5e20, -5e20,
                                   float("nan"), float("inf"), float("-inf"), 2.0**53, 1 / 3,
                                   # counts are ints, formatted without a float on the common path
                                   0, 7, -3, 999_999, 1_000_000, 1_234_567, 2**53 - 1, 2**53, 2**53 + 1,
                                   -(2**53) + 1, -(2**53), -(10**17), 10**17, True])
def test_numbers_match_prometheus_client(value: float) -> None:
    from prometheus_client.utils import floatToGoString

    from sidecar.metrics import _num

    assert _num(value) == floatToGoString(value)  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("openmetrics", [False, True])
def test_nan_and_infinities_render_and_parse(clock: Clock, openmetrics: bool) -> None:
    m = Metrics(BUCKETS, clock=clock)
    m.add_plugin("nan_interval", float("nan"), float("nan"))
    m.add_plugin("inf_interval", 900.0, float("inf"))
    m.add_plugin("neg", float("-inf"), 30.0)
    for plugin, ms in (("nan_interval", float("nan")), ("inf_interval", float("inf")), ("neg", 5.0)):
        m.finished(m.started(plugin), _result(plugin, ms=ms, finished_at=float("inf")))
    fams = _families(m, openmetrics)
    interval = {s.labels["plugin"]: s.value for s in fams["sidecar_plugin_interval_seconds"].samples}
    assert math.isnan(interval["nan_interval"]) and interval["inf_interval"] == math.inf
    loaded = {s.labels["plugin"]: s.value for s in fams["sidecar_plugin_loaded_timestamp_seconds"].samples}
    assert loaded["neg"] == -math.inf
    # a NaN duration is not an observation: OpenMetrics forbids a NaN histogram sum
    assert _value(fams, "sidecar_plugin_execution_seconds", "sidecar_plugin_execution_seconds_count",
                  plugin="nan_interval") == 0
    assert _value(fams, "sidecar_plugin_execution_seconds", "sidecar_plugin_execution_seconds_sum",
                  plugin="inf_interval") == math.inf
    assert _value(fams, "sidecar_plugin_uptime_seconds", "sidecar_plugin_uptime_seconds", plugin="neg") == math.inf
    assert _value(fams, "sidecar_metrics_render_errors", "sidecar_metrics_render_errors_total") == 0


@pytest.mark.parametrize("openmetrics", [False, True])
def test_a_plugin_that_fails_to_render_is_left_out_and_counted(metrics: Metrics, openmetrics: bool,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    broken = metrics._plugins["alpha"]
    monkeypatch.setattr(broken, "render", lambda: 1 / 0)
    for scrape in (1, 2):
        fams = _families(metrics, openmetrics)
        plugins = {s.labels.get("plugin") for s in fams["sidecar_plugin_success"].samples}
        assert plugins == {"beta"}
        assert {s.labels["plugin"] for s in fams["sidecar_plugin_uptime_seconds"].samples} == {"beta"}
        assert _value(fams, "sidecar_metrics_render_errors", "sidecar_metrics_render_errors_total") == scrape
    assert [r.message for r in caplog.records].count(
        "rendering the series of plugin alpha failed; left out of scrapes until it renders again") == 1
    monkeypatch.undo()
    fams = _families(metrics, openmetrics)
    assert {s.labels.get("plugin") for s in fams["sidecar_plugin_success"].samples} == {"alpha", "beta"}


def test_a_failing_process_collector_leaves_the_rest_of_the_scrape(metrics: Metrics,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import prometheus_client.exposition

    def broken(registry: Any) -> bytes:
        raise OSError("no /proc")

    monkeypatch.setattr(prometheus_client.exposition, "generate_latest", broken)
    fams = _families(metrics)
    assert _sidecar(fams) == set(fams) == {f.name for f in FAMILIES}
    assert _value(fams, "sidecar_metrics_render_errors", "sidecar_metrics_render_errors_total") == 1


def test_a_failing_collection_of_the_process_series_leaves_the_rest_of_the_scrape(
        metrics: Metrics, monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import ProcessCollector

    metrics.render()  # the series' text is kept as templates: collecting must still fail the same way

    def broken(self: Any) -> Any:
        raise OSError("no /proc")

    monkeypatch.setattr(ProcessCollector, "collect", broken)
    fams = _families(metrics, openmetrics=True)
    assert _sidecar(fams) == set(fams) == {f.name for f in FAMILIES}
    assert _value(fams, "sidecar_metrics_render_errors", "sidecar_metrics_render_errors_total") == 1


@pytest.mark.parametrize("openmetrics", [False, True])
def test_every_scrape_shows_the_latest_values_whatever_was_scraped_before(metrics: Metrics, clock: Clock,
                                                                         openmetrics: bool) -> None:
    """Each format keeps its plugins' lines joined between scrapes: a run, a new or removed plugin, a scrape in
    the other format in between all show at once."""
    def success(fams: dict[str, Metric]) -> dict[str, float]:
        return {s.labels["plugin"]: s.value for s in fams["sidecar_plugin_success"].samples}

    assert success(_families(metrics, openmetrics)) == {"alpha": 0, "beta": 0}
    assert success(_families(metrics, openmetrics)) == {"alpha": 0, "beta": 0}
    metrics.finished(metrics.started("alpha"), _result("alpha"))
    _families(metrics, not openmetrics)
    assert success(_families(metrics, openmetrics)) == {"alpha": 1, "beta": 0}
    metrics.add_plugin("gamma", 990.0, None)
    assert success(_families(metrics, openmetrics)) == {"alpha": 1, "beta": 0, "gamma": 0}
    metrics.remove_plugin("beta")
    fams = _families(metrics, openmetrics)
    assert success(fams) == {"alpha": 1, "gamma": 0}
    clock.now += 10
    assert _value(fams, "sidecar_plugin_uptime_seconds", "sidecar_plugin_uptime_seconds", plugin="alpha") == 100
    fams = _families(metrics, openmetrics)  # nothing changed but the time: uptime is computed per scrape
    assert _value(fams, "sidecar_plugin_uptime_seconds", "sidecar_plugin_uptime_seconds", plugin="alpha") == 110


def test_scheduler_errors_are_counted(metrics: Metrics) -> None:
    assert _value(_families(metrics), "sidecar_scheduler_errors", "sidecar_scheduler_errors_total") == 0
    metrics.scheduler_error()
    metrics.scheduler_error()
    fams = _families(metrics, openmetrics=True)
    assert _value(fams, "sidecar_scheduler_errors", "sidecar_scheduler_errors_total") == 2


@pytest.mark.parametrize("openmetrics", [False, True])
def test_template_counters_come_from_the_sandbox(metrics: Metrics, openmetrics: bool) -> None:
    metrics.template_stats = lambda: {"alive": 3, "builds": 7, "evictions": 2, "resident_bytes": 75_000_000}
    fams = _families(metrics, openmetrics)
    assert _value(fams, "sidecar_templates", "sidecar_templates") == 3
    assert _value(fams, "sidecar_template_builds", "sidecar_template_builds_total") == 7
    assert _value(fams, "sidecar_template_evictions", "sidecar_template_evictions_total") == 2
    assert _value(fams, "sidecar_templates_resident_bytes", "sidecar_templates_resident_bytes") == 75_000_000


def test_failing_template_counters_are_left_out_and_counted(metrics: Metrics) -> None:
    def broken() -> dict[str, int]:
        raise OSError("launcher gone")

    metrics.template_stats = broken
    fams = _families(metrics)
    assert not fams["sidecar_templates"].samples
    assert _value(fams, "sidecar_metrics_render_errors", "sidecar_metrics_render_errors_total") == 1


# -- the runner's own process and python series ------------------------------------------------------


@pytest.mark.parametrize("openmetrics", [False, True])
def test_process_and_python_series_of_this_process(metrics: Metrics, openmetrics: bool) -> None:
    import os
    import platform

    fams = _families(metrics, openmetrics)
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "process_start_time_seconds",
            "process_open_fds", "python_info", "python_gc_objects_collected"} <= set(fams)
    rss = _value(fams, "process_resident_memory_bytes", "process_resident_memory_bytes")
    with open(f"/proc/{os.getpid()}/statm") as f:
        pages = int(f.read().split()[1])
    assert 0.5 < rss / (pages * os.sysconf("SC_PAGE_SIZE")) < 2  # this process's RSS, not another's
    (info,) = fams["python_info"].samples
    assert info.labels["version"] == platform.python_version()


def test_process_series_can_be_left_out() -> None:
    fams = _families(Metrics(BUCKETS, process_metrics=False))
    assert _sidecar(fams) == set(fams)


def test_refreshed_in_background_never_makes_the_caller_wait() -> None:
    from sidecar.metrics import refreshed_in_background

    now = [0.0]
    gate = threading.Event()
    reads: list[int] = []

    def read() -> dict[str, int]:
        gate.wait(10)  # a busy launcher: the caller must not be the one waiting
        reads.append(1)
        return {"alive": len(reads)}

    get = refreshed_in_background(read, max_age=5.0, clock=lambda: now[0])
    assert get() == {}  # nothing read yet: empty, at once
    assert get() == {}  # a read in progress is not started twice
    gate.set()
    _poll(lambda: get() == {"alive": 1})
    now[0] = 4.0
    assert get() == {"alive": 1} and len(reads) == 1  # fresh enough: no new read
    now[0] = 20.0
    _poll(lambda: get() == {"alive": 2})


def test_refreshed_in_background_keeps_the_last_answer_when_a_read_fails() -> None:
    from sidecar.metrics import refreshed_in_background

    now = [0.0]
    answers: list[object] = [{"alive": 3}, RuntimeError("launcher gone")]

    def read() -> dict[str, int]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]

    get = refreshed_in_background(read, max_age=1.0, clock=lambda: now[0])
    get()
    _poll(lambda: get() == {"alive": 3})
    now[0] = 5.0
    get()
    _poll(lambda: not answers)
    assert get() == {"alive": 3}


def _poll(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.mark.parametrize("openmetrics", [False, True])
def test_label_values_are_escaped_so_one_bad_name_cannot_break_the_scrape(clock: Clock, openmetrics: bool) -> None:
    """Names are checked whole at discovery; escaping is the second line (prometheus-client's rules)."""
    bad = 'nl\nquote"back\\slash'
    m = Metrics(BUCKETS, clock=clock)
    m.add_plugin(bad, 900.0, 30.0)
    m.add_plugin("alpha", 900.0, None)
    m.finished(m.started(bad), _result(bad))
    fams = _families(m, openmetrics)
    for family, sample in (("sidecar_plugin_success", "sidecar_plugin_success_total"),
                           ("sidecar_plugin_uptime_seconds", "sidecar_plugin_uptime_seconds"),
                           ("sidecar_plugin_execution_seconds", "sidecar_plugin_execution_seconds_count")):
        assert _value(fams, family, sample, plugin=bad) == (100.0 if "uptime" in family else 1.0)
    assert _value(fams, "sidecar_plugin_success", "sidecar_plugin_success_total", plugin="alpha") == 0.0


def test_in_flight_belongs_to_the_series_its_run_started_on(metrics: Metrics) -> None:
    """A check removed by a reload while running, then added back: the new series starts clean, and the old run
    settles only the old one (it once left the new series at -1 and counted its outcome there)."""
    def in_flight() -> float:
        return _value(_families(metrics), "sidecar_plugin_in_flight", "sidecar_plugin_in_flight", plugin="alpha")

    old = metrics.started("alpha")
    assert in_flight() == 1
    metrics.remove_plugin("alpha")
    metrics.add_plugin("alpha", 2000.0, None)
    assert in_flight() == 0
    metrics.finished(old, _result("alpha"))
    assert in_flight() == 0
    assert metrics.snapshot("alpha")["success"] == 0
    metrics.finished(metrics.started("alpha"), _result("alpha"))
    assert in_flight() == 0 and metrics.snapshot("alpha")["success"] == 1


def _report(**kw: Any) -> Report:
    return Report(**{"succeeded": True, "state": "ok", **kw})


def _state(fams: dict[str, Metric], plugin: str) -> str:
    on = [s.labels["state"] for s in fams["sidecar_check_state"].samples if s.labels["plugin"] == plugin and s.value]
    assert len(on) == 1, on  # one-hot: exactly one state is 1
    return on[0]


def test_a_check_is_unknown_until_its_first_run_then_what_it_found(metrics: Metrics) -> None:
    fams = _families(metrics)
    assert _state(fams, "alpha") == "unknown"
    assert not fams["sidecar_check_last_success_timestamp_seconds"].samples  # no success yet: no series
    metrics.finished(metrics.started("alpha"), _result("alpha"), _report(state="warning", fields=(("lines", 51.0),)))
    fams = _families(metrics)
    assert _state(fams, "alpha") == "warning"
    assert _value(fams, "sidecar_check_value", "sidecar_check_value", plugin="alpha", field="lines") == 51
    assert _value(fams, "sidecar_check_last_success_timestamp_seconds",
                  "sidecar_check_last_success_timestamp_seconds", plugin="alpha") == 990.0


def test_after_a_failed_run_the_last_good_values_stay_beside_their_time(metrics: Metrics) -> None:
    good = _report(fields=(("lines", 51.0),), series=(Series("queue_length", (("queue", "mail"),), 3.0),))
    metrics.finished(metrics.started("alpha"), _result("alpha", finished_at=990.0), good)
    metrics.finished(metrics.started("alpha"), _result("alpha", Outcome.RUNTIME, finished_at=995.0),
                     Report(False, "critical", "run failed (runtime): E: m"))
    fams = _families(metrics)
    assert _state(fams, "alpha") == "critical"
    assert _value(fams, "sidecar_check_value", "sidecar_check_value", plugin="alpha", field="lines") == 51
    assert _value(fams, "queue_length", "queue_length", plugin="alpha", queue="mail") == 3
    assert _value(fams, "sidecar_check_last_success_timestamp_seconds",
                  "sidecar_check_last_success_timestamp_seconds", plugin="alpha") == 990.0
    assert _value(fams, "sidecar_plugin_last_run_timestamp_seconds",
                  "sidecar_plugin_last_run_timestamp_seconds", plugin="alpha") == 995.0


def test_a_value_no_longer_reported_disappears_and_a_removed_check_takes_its_series(metrics: Metrics) -> None:
    metrics.finished(metrics.started("alpha"), _result("alpha"), _report(
        fields=(("lines", 51.0), ("age", 2.0)), series=(Series("queue_length", (), 3.0),)))
    metrics.finished(metrics.started("alpha"), _result("alpha"), _report(fields=(("lines", 52.0),)))
    fams = _families(metrics)
    assert [s.labels["field"] for s in fams["sidecar_check_value"].samples] == ["lines"]
    assert "queue_length" not in fams
    metrics.finished(metrics.started("beta"), _result("beta"), _report(series=(Series("queue_length", (), 1.0),)))
    metrics.remove_plugin("beta")
    fams = _families(metrics)
    assert "queue_length" not in fams
    assert {s.labels["plugin"] for f in fams.values() for s in f.samples if "plugin" in s.labels} == {"alpha"}


def test_plugin_families_render_once_with_help_unit_and_escaped_labels(metrics: Metrics) -> None:
    hostile = 'a"b\\c\nd'
    metrics.finished(metrics.started("alpha"), _result("alpha"), _report(series=(
        Series("wait_seconds", (("l", hostile),), 1.5, "Time \\ waited\nlong", "seconds"),)))
    metrics.finished(metrics.started("beta"), _result("beta"), _report(series=(
        Series("wait_seconds", (("l", "x"),), 2.5, "", "seconds"),)))
    for openmetrics in (False, True):
        fams = _families(metrics, openmetrics)  # parsed by prometheus-client: one family, both plugins
        name = "wait_seconds"
        assert fams[name].type == "gauge" and fams[name].documentation == "Time \\ waited\nlong"
        assert _value(fams, name, name, plugin="alpha", l=hostile) == 1.5
        assert _value(fams, name, name, plugin="beta", l="x") == 2.5
        if openmetrics:
            assert fams[name].unit == "seconds"


def test_dropped_values_are_counted_per_plugin_and_reason(metrics: Metrics) -> None:
    fams = _families(metrics)
    assert {s.labels["reason"] for s in fams["sidecar_plugin_values_dropped"].samples
            if s.labels["plugin"] == "alpha"} == set(DROP_REASONS)  # at 0 from the start
    metrics.finished(metrics.started("alpha"), _result("alpha"), _report(dropped={"overflow": 7, "reserved": 1}))
    metrics.finished(metrics.started("alpha"), _result("alpha"), _report(dropped={"overflow": 3}))
    fams = _families(metrics)
    total = "sidecar_plugin_values_dropped_total"
    assert _value(fams, "sidecar_plugin_values_dropped", total, plugin="alpha", reason="overflow") == 10
    assert _value(fams, "sidecar_plugin_values_dropped", total, plugin="alpha", reason="reserved") == 1
