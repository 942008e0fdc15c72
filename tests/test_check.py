"""The plugin side of reported values (`sidecar.check`): recorded per process, checked where made."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sidecar import check, defaults


@pytest.fixture(autouse=True)
def _fresh() -> None:
    check.take()  # nothing left over from another test


def test_a_run_reports_gauges_and_a_state_in_one_line_each() -> None:
    check.gauge("queue_length", 3, help="Mails waiting", queue="mail")
    check.gauge("wait_seconds", 1.5, unit="seconds")
    check.state("warning", "long queue")
    assert check.take() == {
        "state": "warning", "reason": "long queue", "dropped": {},
        "gauges": [{"name": "queue_length", "value": 3.0, "labels": {"queue": "mail"}, "help": "Mails waiting",
                    "unit": ""},
                   {"name": "wait_seconds", "value": 1.5, "labels": {}, "help": "", "unit": "seconds"}]}
    assert check.take() is None  # taken once


@pytest.mark.parametrize(("name", "value", "labels", "reason"), [
    ("with space", 1, {}, "invalid"),
    ("9starts_with_digit", 1, {}, "invalid"),
    ("sidecar_plugin_success", 1, {}, "reserved"),
    ("process_cpu", 1, {}, "reserved"),
    ("requests_total", 1, {}, "reserved"),
    ("x" * (defaults.MAX_METRIC_NAME_CHARS + 1), 1, {}, "too_long"),
    ("ok", float("nan"), {}, "not_finite"),
    ("ok", float("inf"), {}, "not_finite"),
    ("ok", 10**400, {}, "not_finite"),
    ("ok", "12", {}, "not_finite"),
    ("ok", None, {}, "invalid"),
    ("ok", 1, {"plugin": "forged"}, "reserved"),
    ("ok", 1, {"__name__": "x"}, "reserved"),
    ("ok", 1, {"bad label": "x"}, "invalid"),
    ("ok", 1, {"l": "v" * (defaults.MAX_LABEL_VALUE_CHARS + 1)}, "too_long"),
    ("ok", 1, {"l": "\udcff"}, "invalid"),
    ("ok", 1, {f"l{i}": "v" for i in range(defaults.MAX_LABELS + 1)}, "invalid"),
])
def test_what_cannot_be_exported_is_dropped_and_counted_by_reason(name: str, value: object,
                                                                   labels: dict[str, str], reason: str) -> None:
    assert check.problem(name, value, labels) == reason
    check.gauge(name, value, **labels)  # type: ignore[arg-type]
    assert check.take() == {"state": None, "reason": None, "gauges": [], "dropped": {reason: 1}}


def test_quotes_backslashes_and_newlines_are_label_values_like_any_other() -> None:
    assert check.problem("ok", 1, {"l": 'a"b\\c\nd'}) is None


def test_help_and_unit_rules() -> None:
    assert check.problem("ok", 1, {}, help="h" * (defaults.MAX_HELP_CHARS + 1)) == "too_long"
    assert check.problem("wait_seconds", 1, {}, unit="seconds") is None
    assert check.problem("wait", 1, {}, unit="seconds") == "invalid"  # a family with a unit is named for it
    check.gauge("big_help", 1, help="h" * 1_000_000)
    assert check.take() == {"state": None, "reason": None, "gauges": [], "dropped": {"too_long": 1}}


def test_a_series_reported_twice_keeps_the_first_and_an_invalid_state_is_counted() -> None:
    check.gauge("g", 1, a="x")
    check.gauge("g", 2, a="x")
    check.state("broken")
    report = check.take()
    assert report is not None
    assert [g["value"] for g in report["gauges"]] == [1.0]
    assert report["dropped"] == {"invalid": 2} and report["state"] is None


def test_a_run_keeps_at_most_the_ceiling_of_series_and_counts_the_rest() -> None:
    for i in range(defaults.MAX_PLUGIN_SERIES_CEILING + 5):
        check.gauge("many", i, i=str(i))
    report = check.take()
    assert report is not None
    assert len(report["gauges"]) == defaults.MAX_PLUGIN_SERIES_CEILING and report["dropped"] == {"overflow": 5}


def test_a_forked_run_does_not_inherit_what_its_template_recorded() -> None:
    check.gauge("at_import", 1)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(w, b"none" if check.take() is None else b"leak")
        os._exit(0)
    os.close(w)
    assert os.read(r, 4) == b"none"
    os.close(r)
    os.waitpid(pid, 0)


def test_importing_it_stays_light() -> None:
    """Plugin code imports it in every sandbox: it must not pull in the sidecar's heavy modules."""
    code = ("import sys, sidecar.check; heavy = {'flask', 'msgspec', 'sqlite3', 'prometheus_client', 'psutil',"
            " 'json', 'sidecar.config', 'sidecar.metrics'} & set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(check.__file__))})
    assert out.stdout.strip() == "[]"
