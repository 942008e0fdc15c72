"""The Grafana dashboard, and every PromQL expression the repository ships, against the metric contract."""

import json
import re
from pathlib import Path
from typing import Any

import pytest

from .contract import METRIC_TYPES, METRICS, SAMPLE_NAMES
from .promql import (
    DASHBOARDS_DIR,
    DEFAULT_VARIABLES,
    all_expressions,
    analyze,
    contract_problems,
    dashboard_raw_expressions,
    iter_panels,
    recording_rule_names,
    substitute_variables,
    variables_used,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_FILE = DASHBOARDS_DIR / "sidecar.json"
DASHBOARD: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RECORDING_RULES = recording_rule_names()
EXPRESSIONS = all_expressions()
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms"}


def panels() -> list[dict[str, Any]]:
    return list(iter_panels(DASHBOARD["panels"]))


def variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in DASHBOARD["templating"]["list"]}


def raw_dashboard_exprs() -> list[tuple[str, str]]:
    return dashboard_raw_expressions(DASHBOARD, DASHBOARD_FILE.name)


# --- the dashboard ----------------------------------------------------------------------------------------


def test_identity() -> None:
    assert DASHBOARD["uid"] == "sidecar-overview"
    assert DASHBOARD["title"] == "Sidecar"
    assert DASHBOARD.get("id") is None, "provisioned dashboards must not pin a database id"
    assert DASHBOARD_FILE.read_text() == json.dumps(DASHBOARD, indent=2) + "\n", "keep the JSON tidy"


def test_every_panel_and_target_uses_the_datasource_variable() -> None:
    for panel in panels():
        assert panel.get("datasource") == DATASOURCE, f"panel {panel.get('title')!r}"
        for target in panel.get("targets", []):
            assert target.get("datasource") == DATASOURCE, (
                f"panel {panel.get('title')!r} {target.get('refId')}"
            )
    for var in variables().values():
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE, f"variable {var['name']}"


def test_template_variables() -> None:
    vs = variables()
    assert vs["datasource"]["type"] == "datasource"
    assert vs["datasource"]["query"] == "prometheus"
    for name in ("job", "instance", "plugin"):
        assert vs[name]["type"] == "query", name
        assert vs[name]["multi"] is True and vs[name]["includeAll"] is True, name
    assert list(vs) == ["datasource", "job", "instance", "plugin"]


def test_variables_used_are_defined() -> None:
    defined = set(variables()) | BUILTIN_VARIABLES
    for source, expr in raw_dashboard_exprs():
        assert variables_used(expr) <= defined, f"{source}: {expr}"
        assert variables_used(expr) <= set(DEFAULT_VARIABLES), f"{source}: promql.DEFAULT_VARIABLES lacks one"


def test_multi_value_variables_are_matched_as_regexes() -> None:
    for source, expr in raw_dashboard_exprs():
        bad = re.findall(r'\w+\s*!?=\s*"\$\{?(?:job|instance|plugin)\b', expr)
        assert not bad, f"{source}: multi-value variables need =~ / !~, got {bad}"


def test_panels_are_laid_out_without_overlap() -> None:
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels():
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def _panels_using(pattern: str) -> list[dict[str, Any]]:
    return [p for p in panels() if any(re.search(pattern, t.get("expr", "")) for t in p.get("targets", []))]


@pytest.mark.parametrize(
    ("what", "pattern"),
    [
        ("run rate", r"sidecar:plugin_runs:rate5m"),
        ("successes", r"sidecar:plugin_success:rate5m"),
        ("errors by type", r"by \(error_type\) \(sidecar:plugin_errors:rate5m"),
        (
            "error ratio",
            r"sidecar:plugin_failures:rate5m[^/]*\)\s*/\s*\(sum by \(plugin\) \(sidecar:plugin_runs",
        ),
        ("p50", r"histogram_quantile\(0\.50?, .*execution_seconds_bucket"),
        ("p95", r"histogram_quantile\(0\.95, .*execution_seconds_bucket"),
        ("p99", r"histogram_quantile\(0\.99, .*execution_seconds_bucket"),
        ("peak memory", r"sidecar_plugin_peak_memory_bytes|sidecar:plugin_peak_memory_bytes"),
        ("uptime", r"sidecar_plugin_uptime_seconds"),
        ("time since last run", r"time\(\) - .*sidecar_plugin_last_run_timestamp_seconds"),
        ("in-flight runs", r"sidecar_plugin_in_flight"),
        ("rejected runs", r"sidecar:plugin_rejected:rate5m|sidecar_plugin_rejected_total"),
    ],
)
def test_required_panel(what: str, pattern: str) -> None:
    assert _panels_using(pattern), f"no panel shows {what} (/{pattern}/)"


def test_heatmap_panel() -> None:
    heatmaps = [p for p in panels() if p["type"] == "heatmap"]
    assert heatmaps
    target = heatmaps[0]["targets"][0]
    assert target["format"] == "heatmap"
    # At fleet size the heatmap reads the recorded per-job bucket rates, not the raw buckets of every sidecar.
    assert "sidecar:plugin_execution_seconds_bucket:sum_rate5m" in target["expr"] and "by (le)" in target["expr"]


def test_firing_alerts_panel() -> None:
    found = _panels_using(r'ALERTS\{alertstate="firing", alertname=~"Sidecar\.\*"\}')
    assert found and found[0]["type"] in ("table", "alertlist")


def test_panels_aggregate_over_instances() -> None:
    for source, expr in raw_dashboard_exprs():
        if "ALERTS" in expr or ": variable " in source:
            continue
        fns = {f.lower() for f in analyze(substitute_variables(expr)).functions}
        assert fns & {"sum", "min", "max", "avg", "count", "histogram_quantile"}, f"{source}: aggregate"
        assert "by (instance" not in expr, f"{source}: sum over instances so many sidecars show together"


# --- every expression (dashboard, alerts, recording rules, runbooks) -----------------------------------


def test_expressions_found() -> None:
    sources = [s for s, _ in EXPRESSIONS]
    assert len(sources) == len(set(sources)), "sources must identify expressions uniquely"
    kinds = {s.split(":")[0] for s in sources}
    assert kinds >= {"grafana/dashboards/sidecar.json", "prometheus/alerts.yml", "prometheus/recording.yml"}
    assert not any("$" in e for s, e in EXPRESSIONS if s.startswith("grafana/")), "unsubstituted variable"


@pytest.mark.parametrize(("source", "expr"), EXPRESSIONS, ids=[s for s, _ in EXPRESSIONS])
def test_expression_uses_only_contract_metrics(source: str, expr: str) -> None:
    assert contract_problems(expr, RECORDING_RULES) == [], expr


def test_every_contract_metric_is_used() -> None:
    used: set[str] = set()
    for _, expr in EXPRESSIONS:
        used |= analyze(expr).metric_names
    for metric in METRICS:
        assert any(name == metric or name.startswith(metric + "_") for name in used), f"{metric} unused"


# --- the checker itself --------------------------------------------------------------------------------


def test_checker_catches_a_misspelled_metric() -> None:
    alert = dict(EXPRESSIONS)["prometheus/alerts.yml: alert SidecarPluginTimeouts"]
    assert contract_problems(alert, RECORDING_RULES) == []
    typo = alert.replace("sidecar_plugin_errors_total", "sidecar_plugin_error_total")
    assert contract_problems(typo, RECORDING_RULES) == ["unknown metric 'sidecar_plugin_error_total'"]
    assert contract_problems("sum(sidecar:plugin_run:rate5m)", RECORDING_RULES) == [
        "unknown metric 'sidecar:plugin_run:rate5m'"
    ]
    assert contract_problems('{__name__="sidecar_plugin_in_fligth"}', RECORDING_RULES) == [
        "unknown metric 'sidecar_plugin_in_fligth'"
    ]
    # A histogram family name is not a series: only _bucket, _sum and _count are.
    assert contract_problems("sidecar_plugin_execution_seconds", RECORDING_RULES) != []


def test_checker_catches_misspelled_functions_labels_and_values() -> None:
    rules = RECORDING_RULES
    assert contract_problems("sum(rat(sidecar_plugin_success_total[5m]))", rules) == [
        "unknown function 'rat'"
    ]
    assert contract_problems('sidecar_plugin_errors_total{plugn="x"}', rules) == [
        "sidecar_plugin_errors_total has no label 'plugn'"
    ]
    assert contract_problems('sidecar_plugin_errors_total{error_type="timout"}', rules) != []
    assert contract_problems('sidecar_plugin_errors_total{error_type=~"time.*|crash"}', rules) == []
    assert contract_problems('sidecar_plugin_rejected_total{reason!="saturatd"}', rules) != []
    assert contract_problems("sum by (plugn) (sidecar_plugin_in_flight)", rules) == [
        "unknown label 'plugn' in a grouping clause"
    ]
    assert contract_problems('sum(sidecar_plugin_in_flight{plugin="x"', rules) != []  # unbalanced


def test_scanner_ignores_strings_durations_keywords_and_grouping_labels() -> None:
    expr = """
      # a comment naming not_a_metric
      sum by (job, instance) (
        rate(sidecar_plugin_success_total{plugin=~"a|b", job!="rate"}[5m:30s] offset 1h)
      )
      / on (job, instance) group_left (version)
      label_replace(sidecar_build_info, "x", "$1", "version", "(.*)") > bool 0.5e-3
      unless ignoring (le) up @ start() and 2h > Inf or count without (plugin) (ALERTS) == NaN
    """
    analysis = analyze(expr)
    assert analysis.metric_names == {"sidecar_plugin_success_total", "sidecar_build_info", "up", "ALERTS"}
    assert set(analysis.grouping_labels) == {"job", "instance", "version", "le", "plugin"}
    assert contract_problems(expr, RECORDING_RULES) == []
    assert {"sum", "rate", "label_replace", "start", "count"} <= set(analysis.functions)


def test_variable_substitution() -> None:
    expr = 'rate(x{job=~"$job", instance=~"${instance}", plugin=~"${plugin:regex}"}[$__rate_interval])'
    assert substitute_variables(expr) == 'rate(x{job=~"sidecar", instance=~".+", plugin=~".+"}[1m])'
    with pytest.raises(KeyError):
        substitute_variables('x{plugin=~"$plugins"}')


def test_contract_sample_names() -> None:
    assert "sidecar_plugin_execution_seconds_bucket" in SAMPLE_NAMES
    assert "sidecar_plugin_execution_seconds" not in SAMPLE_NAMES
    for metric in METRICS:
        if METRIC_TYPES[metric] == "histogram":
            assert {metric + "_bucket", metric + "_sum", metric + "_count"} <= SAMPLE_NAMES
        else:
            assert metric in SAMPLE_NAMES
