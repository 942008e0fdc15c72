"""The cardinality budget: series per plugin and per sidecar, pinned from a real /metrics render.

A change to these numbers multiplies across every plugin of every sidecar of a fleet, so it must be a
decision: update PER_PLUGIN (and the budget table of docs/scale.md, which a test compares with it) in the same
change. The counts come from the app's own /metrics, rendered in-process with default settings.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from sidecar.app import create_app
from sidecar.config import CheckConfig, Settings

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Series of one plugin with default settings, by family (histograms: buckets + `+Inf` + `_sum` + `_count`).
#: The last three exist only once the plugin has run (succeeded), and only for scheduled plugins and checks.
#: What a plugin reports (`sidecar_check_value` and its own gauges) comes on top: at most
#: SIDECAR_MAX_PLUGIN_SERIES (default 100) per plugin, pinned by `test_reported_series_are_capped_per_plugin`.
PER_PLUGIN: dict[str, int] = {
    "sidecar_plugin_success_total": 1,
    "sidecar_plugin_errors_total": 7,  # one per error outcome
    "sidecar_plugin_execution_seconds": 20,  # 17 buckets (1 ms … 300 s) + +Inf + _sum + _count
    "sidecar_plugin_peak_memory_bytes": 13,  # 10 buckets (8 MiB … 4 GiB) + +Inf + _sum + _count
    "sidecar_plugin_uptime_seconds": 1,
    "sidecar_plugin_loaded_timestamp_seconds": 1,
    "sidecar_plugin_in_flight": 1,
    "sidecar_plugin_rejected_total": 3,  # reason: saturated, overlap, invalid
    "sidecar_check_state": 4,  # one-hot: ok, warning, critical, unknown
    "sidecar_plugin_values_dropped_total": 5,  # reason: invalid, reserved, too_long, not_finite, overflow
    "sidecar_plugin_last_run_timestamp_seconds": 1,  # after its first run
    "sidecar_check_last_success_timestamp_seconds": 1,  # after its first successful run
    "sidecar_plugin_interval_seconds": 1,  # scheduled plugins and checks only
}
#: Series of a sidecar that carry no plugin label, by family.
PER_SIDECAR: dict[str, int] = {
    "sidecar_build_info": 1,
    "sidecar_scheduler_errors_total": 1,
    "sidecar_metrics_render_errors_total": 1,
    "sidecar_config_reloads_total": 2,  # result: success, failure
    "sidecar_store_errors_total": 5,  # reason: disk_full, read_only, corrupt, io, stalled
    "sidecar_store_pending_runs": 1,
    "sidecar_store_dropped_runs_total": 1,
    "sidecar_store_unwritable_runs_total": 3,  # reason: encoding, range, invalid
    "sidecar_store_reopens_total": 1,
    "sidecar_templates": 1,
    "sidecar_template_builds_total": 1,
    "sidecar_template_evictions_total": 1,
    "sidecar_templates_resident_bytes": 1,
    # the runner's own process and interpreter, from prometheus-client's collectors
    "process_virtual_memory_bytes": 1,
    "process_resident_memory_bytes": 1,
    "process_start_time_seconds": 1,
    "process_cpu_seconds_total": 1,
    "process_open_fds": 1,
    "process_max_fds": 1,
    "python_info": 1,
    "python_gc_objects_collected_total": 3,  # one per GC generation
    "python_gc_objects_uncollectable_total": 3,
    "python_gc_collections_total": 3,
}

SCHEDULED, IDLE, RAN = "tick", "idle_plugin", "echo"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    settings = Settings(
        data_dir=str(tmp_path_factory.mktemp("cardinality")),
        entry_points=False,
        checks=(CheckConfig(name=SCHEDULED, plugin="echo", interval_seconds=3600),),
    )
    flask_app = create_app(settings)
    yield flask_app
    flask_app.extensions["sidecar_backend"].close()


def series(app: Flask) -> tuple[dict[str, Counter[str]], Counter[str]]:
    """(plugin -> series by family, series without a plugin label by family) of one /metrics render."""
    client = app.test_client()
    by_plugin: dict[str, Counter[str]] = {}
    other: Counter[str] = Counter()
    text = client.get("/metrics").get_data(as_text=True)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            for suffix in ("_bucket", "_sum", "_count"):
                if family.type == "histogram" and name == family.name + suffix:
                    name = family.name
            if "plugin" in sample.labels:
                by_plugin.setdefault(sample.labels["plugin"], Counter())[name] += 1
            else:
                other[name] += 1
    return by_plugin, other


def test_series_per_plugin_are_pinned(app: Flask) -> None:
    client = app.test_client()
    assert client.post(f"/plugins/{RAN}/run", json={"params": {}}).status_code == 200

    by_plugin, other = series(app)
    never_ran = {k: v for k, v in PER_PLUGIN.items() if k not in (
        "sidecar_plugin_last_run_timestamp_seconds", "sidecar_plugin_interval_seconds",
        "sidecar_check_last_success_timestamp_seconds")}  # fmt: skip
    ran = {**never_ran, "sidecar_plugin_last_run_timestamp_seconds": 1,
           "sidecar_check_last_success_timestamp_seconds": 1}
    assert dict(by_plugin[RAN]) == ran
    assert dict(by_plugin["sleep"]) == never_ran
    # A check is scheduled: it also exports its interval (and it runs at start, so it has a last run).
    scheduled = dict(by_plugin[SCHEDULED])
    assert scheduled in ({**never_ran, "sidecar_plugin_interval_seconds": 1}, PER_PLUGIN), scheduled
    assert dict(other) == PER_SIDECAR
    assert sum(PER_PLUGIN.values()) == 59


def test_budget_follows_the_knobs(tmp_path: Path) -> None:
    """Fewer histogram buckets, fewer series: the execution-time histogram is the knob that matters most."""
    flask_app = create_app(Settings(data_dir=str(tmp_path), entry_points=False, duration_buckets=(0.01, 0.1, 1.0)))
    try:
        by_plugin, _ = series(flask_app)
        assert by_plugin["echo"]["sidecar_plugin_execution_seconds"] == 3 + 3
    finally:
        flask_app.extensions["sidecar_backend"].close()


def test_reported_series_are_capped_per_plugin(tmp_path: Path) -> None:
    """However many values a plugin reports, it exports at most SIDECAR_MAX_PLUGIN_SERIES; the rest are counted."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "chatty.py").write_text(
        "from sidecar.check import gauge\n"
        "def run():\n"
        "    for i in range(100_000):\n"
        "        gauge('chatty_items', i, item=str(i))\n"
        "    return {f'field_{i}': i for i in range(30)}\n")
    flask_app = create_app(Settings(data_dir=str(tmp_path / "data"), entry_points=False, plugin_path=(str(plugins),),
                                    max_plugin_series=40))
    try:
        run = flask_app.test_client().post("/plugins/chatty/run", json={})
        assert run.status_code == 200 and run.get_json()["outcome"] == "success", run.get_json()
        by_plugin, _ = series(flask_app)
        chatty = by_plugin["chatty"]
        assert chatty["sidecar_check_value"] + chatty["chatty_items"] == 40
        assert chatty["sidecar_check_value"] == 30  # the result's fields first, then the gauges in order
        text = flask_app.test_client().get("/metrics").get_data(as_text=True)
        assert 'sidecar_plugin_values_dropped_total{plugin="chatty",reason="overflow"} 99990.0' in text
    finally:
        flask_app.extensions["sidecar_backend"].close()


def test_docs_budget_table_matches() -> None:
    doc = (REPO_ROOT / "docs" / "scale.md").read_text()
    section = doc[doc.index("## Cardinality budget") :]
    rows = dict(re.findall(r"^\| `((?:sidecar|process|python)_[a-z_]+)` \| (\d+) \|", section, flags=re.MULTILINE))
    assert {k: int(v) for k, v in rows.items()} == {**PER_PLUGIN, **PER_SIDECAR}
    assert f"**{sum(PER_PLUGIN.values())}**" in section
