"""What a finished run means for its check (`values.judge`): pure, from a result and its report."""

from __future__ import annotations

from typing import Any

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
