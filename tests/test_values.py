"""What a finished run means for its check (`values.judge`): pure, from a result and its report."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from sidecar.config import Settings
from sidecar.runner import Runner
from sidecar.sandbox.result import ErrorInfo, Outcome, PluginSandboxResult
from sidecar.values import Series, judge


def _ok(result: Any = None, report: Any = None) -> PluginSandboxResult:
    return PluginSandboxResult("p", Outcome.SUCCESS, result=result, report=report)


def test_a_failed_run_is_critical_with_its_error_as_the_reason_and_reports_nothing() -> None:
    failed = PluginSandboxResult("p", Outcome.RUNTIME, error=ErrorInfo("RuntimeError", "connection refused"),
                                 report={"state": "ok", "gauges": [{"name": "x", "value": 1, "labels": {}}]})
    report = judge(failed, 100)
    assert (report.succeeded, report.state) == (False, "critical")
    assert report.reason == "run failed (runtime): RuntimeError: connection refused"
    assert report.fields == () and report.series == ()


def test_a_successful_run_is_ok_unless_it_says_otherwise() -> None:
    assert judge(_ok({"lines": 51}), 100).state == "ok"
    report = judge(_ok(None, {"state": "critical", "reason": "target down"}), 100)
    assert (report.succeeded, report.state, report.reason) == (True, "critical", "target down")


def test_numeric_fields_follow_the_probe_rule() -> None:
    report = judge(_ok({"lines": 51, "age seconds": 12.5, "up": True, "name": "x", "bad": float("nan")}), 100)
    assert report.fields == (("age_seconds", 12.5), ("lines", 51.0), ("up", 1.0))
    assert report.dropped == {"not_finite": 1}


def test_everything_the_child_sent_is_checked_again() -> None:
    forged = {"state": "sideways", "dropped": {"overflow": 2, "made_up": 5, "invalid": -3, "too_long": True},
              "gauges": ["not a dict", {"name": "sidecar_x", "value": 1, "labels": {}},
                         {"name": "ok_total", "value": 1, "labels": {}},
                         {"name": "good", "value": 2, "labels": {"a": "b"}, "help": "h"},
                         {"name": "good", "value": 3, "labels": {"a": "b"}},
                         {"name": "nan", "value": "NaN", "labels": {}}]}
    report = judge(_ok({}, forged), 100)
    assert report.state == "unknown" and report.reason == "the plugin reported an invalid state"
    assert report.series == (Series("good", (("a", "b"),), 2.0, "h", ""),)
    assert report.dropped == {"invalid": 3, "reserved": 2, "not_finite": 1, "overflow": 2}


def test_the_cap_counts_fields_and_gauges_together() -> None:
    gauges = [{"name": "g", "value": i, "labels": {"i": str(i)}} for i in range(10)]
    report = judge(_ok({"a": 1, "b": 2, "c": 3}, {"gauges": gauges}), 5)
    assert len(report.fields) == 3 and len(report.series) == 2
    assert report.dropped == {"overflow": 8}
    assert judge(_ok({f"f{i}": i for i in range(8)}), 5).dropped == {"overflow": 3}


def test_the_api_view_names_state_values_and_gauges() -> None:
    report = judge(_ok({"lines": 51}, {"gauges": [{"name": "q", "value": 3, "labels": {"queue": "mail"}}]}), 100)
    assert report.to_dict() == {"state": "ok", "reason": None, "values": {"lines": 51.0},
                                "gauges": [{"name": "q", "labels": {"queue": "mail"}, "value": 3.0}], "dropped": {}}


HOSTILE_VALUES = '''
from sidecar.check import gauge, state

def run():
    for i in range(100_000):
        gauge("flood", i, i=str(i))
    gauge("not_a_number", float("nan"))
    gauge("with space", 1)
    gauge("sidecar_plugin_success", 1)
    gauge("process_cpu_seconds", 1)
    gauge("quoted", 1, text='say "hi" \\\\ back\\nslash')
    gauge("huge_help", 1, help="h" * 1_000_000)
    gauge("forged", 1, plugin="someone_else")
    state("sideways")
    return {"big": 10**400, "ok": 1, "text": "x"}  # a NaN in the result itself is not JSON: a failed run
'''


def test_hostile_values_are_dropped_and_counted_and_the_scrape_stays_valid(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "hostile_values.py").write_text(HOSTILE_VALUES)
    runner = Runner(Settings(data_dir=str(tmp_path / "data"), entry_points=False, plugin_path=(str(plugins),)),
                    start_scheduler=False)
    try:
        answer = runner.run("hostile_values")
        assert answer["outcome"] == "success", answer  # never fails the run
        check = answer["check"]
        assert check["state"] == "ok"  # an invalid state is ignored and counted
        assert check["values"] == {"ok": 1.0}
        assert len(check["gauges"]) == 100 - 1  # the cap (default 100) less the one result field
        assert {g["name"] for g in check["gauges"]} == {"flood"}
        for openmetrics in (False, True):
            body, _ = runner.render_metrics(openmetrics)
            text = body.decode()
            parse = parse_openmetrics if openmetrics else parse_text
            families = {f.name: f for f in parse(text)}  # prometheus-client's parsers take it whole
            dropped = {s.labels["reason"]: s.value for s in families["sidecar_plugin_values_dropped"].samples
                       if s.labels["plugin"] == "hostile_values"}
            # overflow: 100,000 floods and `quoted` less the 99 exported: the plugin side keeps 10,000 and
            # counts the rest, the runner keeps 99 of those and counts the others
            assert dropped == {"overflow": 100_001 - 99, "not_finite": 2, "invalid": 2, "reserved": 3,
                               "too_long": 1}, dropped
            assert "quoted" not in families  # past the cap: the floods came first
            for name in ("with space", "huge_help", "forged", "not_a_number"):
                assert not any(name in f for f in families), name
            assert len(text) < 200_000
        if shutil.which("promtool"):
            lint = subprocess.run(["promtool", "check", "metrics"], input=runner.render_metrics()[0],
                                  capture_output=True, check=False)
            assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()
    finally:
        runner.close()


def test_label_values_with_quotes_backslashes_and_newlines_are_exported_exactly(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "quoting.py").write_text(
        "from sidecar.check import gauge\n"
        "def run():\n"
        "    gauge('quoted', 1, help='Help with \\\\ and\\nnewline', text='say \"hi\" \\\\ back\\nslash')\n")
    runner = Runner(Settings(data_dir=str(tmp_path / "data"), entry_points=False, plugin_path=(str(plugins),)),
                    start_scheduler=False)
    try:
        assert runner.run("quoting")["outcome"] == "success"
        for openmetrics in (False, True):
            parse = parse_openmetrics if openmetrics else parse_text
            families = {f.name: f for f in parse(runner.render_metrics(openmetrics)[0].decode())}
            (sample,) = families["quoted"].samples
            assert sample.labels == {"plugin": "quoting", "text": 'say "hi" \\ back\nslash'}
            assert families["quoted"].documentation == "Help with \\ and\nnewline"
        if shutil.which("promtool"):
            lint = subprocess.run(["promtool", "check", "metrics"], input=runner.render_metrics()[0],
                                  capture_output=True, check=False)
            assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()
    finally:
        runner.close()


def test_a_run_the_sidecar_aborted_says_nothing_of_the_check() -> None:

    aborted = PluginSandboxResult("c", Outcome("aborted"), error=ErrorInfo("SidecarStopping", "the sidecar stopped"))
    report = judge(aborted, 100)
    assert (report.succeeded, report.state) == (False, "unknown")
    assert report.reason is not None and "the sidecar stopped" in report.reason
