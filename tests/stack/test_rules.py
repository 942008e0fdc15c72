"""Shape of the alerting and recording rules: names, labels, annotations, runbooks, unit-test coverage."""

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from .promql import ALERTS_FILE, RECORDING_FILE, analyze, load_rules

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNBOOK_BASE = "https://github.com/sidecar-dev/sidecar/blob/main/docs/runbooks.md#"
SEVERITIES = {"critical", "warning", "info"}

ALERTS: list[dict[str, Any]] = [r for r in load_rules(ALERTS_FILE) if "alert" in r]
RECORDS: list[dict[str, Any]] = [r for r in load_rules(RECORDING_FILE) if "record" in r]
UNIT_TESTS: list[dict[str, Any]] = yaml.safe_load((REPO_ROOT / "prometheus/alerts.test.yml").read_text())[
    "tests"
]


def github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub generates for headings, plus explicit <a id="..."> anchors."""
    anchors: set[str] = set()
    for line in markdown.splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    anchors.update(re.findall(r'<a\s+(?:id|name)="([^"]+)"', markdown))
    return anchors


def test_expected_alerts_exist() -> None:
    names = {a["alert"] for a in ALERTS}
    expected = {
        "SidecarDown", "SidecarPluginTimeouts", "SidecarPluginMemoryErrors", "SidecarPluginCrashes",
        "SidecarPluginErrorRatioHigh", "SidecarPluginStale", "SidecarSaturated", "SidecarInternalErrors",
        "SidecarHistoryWritesFailing",
    }  # fmt: skip
    assert expected <= names
    assert len(names) == len(ALERTS), "alert names must be unique"


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: r["alert"])
def test_alert_shape(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    assert re.fullmatch(r"Sidecar(?:[A-Z][a-z0-9]*)+", name), f"{name}: CamelCase with the Sidecar prefix"
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert set(annotations) >= {"summary", "description", "runbook_url"}
    summary = annotations["summary"].strip()
    assert summary.endswith(".") and summary.count(". ") == 0, f"{name}: summary must be one sentence"
    assert "{{" not in summary, f"{name}: summary is static, the description carries the details"
    description = annotations["description"]
    assert "$labels.instance" in description
    if name.startswith("SidecarPlugin"):
        assert "$labels.plugin" in description
    assert annotations["runbook_url"] == RUNBOOK_BASE + name.lower()


def test_runbook_sections_exist_for_every_alert() -> None:
    anchors = github_anchors((REPO_ROOT / "docs/runbooks.md").read_text())
    for rule in ALERTS:
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor in anchors, f"docs/runbooks.md has no section #{anchor} for {rule['alert']}"
        # The dashboard's firing-alerts table links to #<alertname> (Grafana cannot lowercase it).
        assert rule["alert"] in anchors, f'docs/runbooks.md needs <a id="{rule["alert"]}"></a>'


def test_github_anchor_slugs() -> None:
    assert github_anchors("## SidecarDown\n### What to do?\n") == {"sidecardown", "what-to-do"}


def test_monitoring_doc_lists_every_alert_with_its_severity() -> None:
    doc = (REPO_ROOT / "docs/monitoring.md").read_text()
    for rule in ALERTS:
        row = re.search(rf"^\|\s*`{rule['alert']}`\s*\|\s*(\w+)\s*\|", doc, re.MULTILINE)
        assert row, f"docs/monitoring.md: no table row for {rule['alert']}"
        assert row.group(1) == rule["labels"]["severity"]


def _alert_tests(name: str) -> list[dict[str, Any]]:
    return [
        case for test in UNIT_TESTS for case in test.get("alert_rule_test", []) if case["alertname"] == name
    ]


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: r["alert"])
def test_every_alert_is_unit_tested_firing_and_silent(rule: dict[str, Any]) -> None:
    cases = _alert_tests(rule["alert"])
    assert any(case.get("exp_alerts") for case in cases), f"no promtool case where {rule['alert']} fires"
    assert any(not case.get("exp_alerts") for case in cases), (
        f"no promtool case where {rule['alert']} is silent"
    )


def test_counter_alerts_use_increase_or_rate() -> None:
    for rule in ALERTS:
        names = analyze(rule["expr"]).metric_names
        if any(n.endswith("_total") for n in names):
            fns = set(analyze(rule["expr"]).functions)
            assert fns & {"increase", "rate"}, f"{rule['alert']}: read counters with increase()/rate()"


@pytest.mark.parametrize("rule", RECORDS, ids=lambda r: r["record"])
def test_recording_rule_naming_and_coverage(rule: dict[str, Any]) -> None:
    name = rule["record"]
    assert re.fullmatch(r"sidecar:[a-z0-9_]+:[a-z0-9_]+", name), f"{name}: level:metric:operations"
    window = re.search(r"rate(\d+[smh])$", name)
    if window:
        assert f"[{window.group(1)}]" in rule["expr"] or any(r["record"] in rule["expr"] for r in RECORDS), (
            f"{name}: the name's window must match the expression's"
        )
    tested = {
        case["expr"].split("{")[0].strip() for test in UNIT_TESTS for case in test.get("promql_expr_test", [])
    }
    assert name in tested, f"{name}: add a promql_expr_test to prometheus/alerts.test.yml"
