"""Shape of the alerting and recording rules: names, labels, annotations, runbooks, unit-test coverage."""

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .promql import ALERTS_FILE, RECORDING_FILE, analyze, load_rules

REPO_ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("runbook_urls", REPO_ROOT / "scripts" / "runbook_urls.py")
assert _spec is not None and _spec.loader is not None
runbook_urls = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(runbook_urls)
SEVERITIES = {"critical", "warning", "info"}

ALERTS: list[dict[str, Any]] = [r for r in load_rules(ALERTS_FILE) if "alert" in r]
RECORDS: list[dict[str, Any]] = [r for r in load_rules(RECORDING_FILE) if "record" in r]
UNIT_TESTS: list[dict[str, Any]] = yaml.safe_load((REPO_ROOT / "prometheus/alerts.test.yml").read_text())[
    "tests"
]


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
    assert annotations["runbook_url"].endswith("#" + name.lower())


def _runbook_urls(root: Path = REPO_ROOT, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(root / "scripts" / "runbook_urls.py"), *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_runbook_links_resolve() -> None:
    """Every runbook_url (and the dashboard's links, and the promtool tests' expectations) is BASE#section of
    docs/runbooks.md, with one BASE: the committed one is the page in this repository."""
    proc = _runbook_urls(REPO_ROOT, "--check")
    assert proc.returncode == 0, proc.stderr
    assert {r["annotations"]["runbook_url"].partition("#")[0] for r in ALERTS} == {"docs/runbooks.md"}


def test_runbook_anchor_slugs() -> None:
    assert runbook_urls.anchors('## SidecarDown\n### What to do?\n<a id="X"></a>') == {"sidecardown", "what-to-do",
                                                                                      "X"}


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """The files the runbook script reads and writes, in a tree of their own."""
    for name in ("scripts/runbook_urls.py", "docs/runbooks.md", "prometheus/alerts.yml", "prometheus/alerts.test.yml",
                 "prometheus/recording.yml", "grafana/dashboards/sidecar.json",
                 "deploy/kubernetes/generate_prometheusrule.py", "deploy/kubernetes/prometheusrule.yaml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, tmp_path / name)
    return tmp_path


def test_runbook_base_is_set_once_for_every_link(repo_copy: Path) -> None:
    base = "https://git.example.com/ops/sidecar/blob/main/docs/runbooks.md"
    proc = _runbook_urls(repo_copy, "--base-url", base)
    assert proc.returncode == 0, proc.stderr
    for name in ("prometheus/alerts.yml", "prometheus/alerts.test.yml", "grafana/dashboards/sidecar.json",
                 "deploy/kubernetes/prometheusrule.yaml"):
        text = (repo_copy / name).read_text()
        assert base + "#" in text and "docs/runbooks.md#" not in text.replace(base + "#", ""), name
    assert f'"url": "{base}"' in (repo_copy / "grafana/dashboards/sidecar.json").read_text()
    assert _runbook_urls(repo_copy, "--check").returncode == 0


def test_runbook_check_names_a_missing_section(repo_copy: Path) -> None:
    runbooks = repo_copy / "docs/runbooks.md"
    runbooks.write_text(runbooks.read_text().replace("## SidecarSaturated", "## Saturated"))
    proc = _runbook_urls(repo_copy, "--check")
    assert proc.returncode == 1
    assert "SidecarSaturated: docs/runbooks.md has no section #sidecarsaturated" in proc.stderr


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
