"""The metric contract (DESIGN.md, "Metrics"): the one list that dashboards, alerts and tests share.

`METRICS` holds the names as they appear in the exposition (counters with their `_total` suffix,
histograms by their family name); `SAMPLE_NAMES` expands histograms into the `_bucket`, `_sum` and
`_count` series that PromQL can select. A live test can compare `SAMPLE_NAMES` with what `GET /metrics`
returns (ignoring prometheus-client's `_created` series).
"""

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

ERROR_TYPES: Final = frozenset({"timeout", "memory", "import", "value", "runtime", "exception", "crash"})
REJECT_REASONS: Final = frozenset({"saturated", "overlap", "invalid"})
STORE_FAULT_REASONS: Final = frozenset({"disk_full", "read_only", "corrupt", "io", "stalled"})
STORE_ROW_REASONS: Final = frozenset({"encoding", "range", "invalid"})
CHECK_STATES: Final = frozenset({"ok", "warning", "critical", "unknown"})
VALUE_DROP_REASONS: Final = frozenset({"invalid", "reserved", "too_long", "not_finite", "overflow"})

METRIC_TYPES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "sidecar_plugin_success_total": "counter",
        "sidecar_plugin_errors_total": "counter",
        "sidecar_plugin_execution_seconds": "histogram",
        "sidecar_plugin_peak_memory_bytes": "histogram",
        "sidecar_plugin_uptime_seconds": "gauge",
        "sidecar_plugin_loaded_timestamp_seconds": "gauge",
        "sidecar_plugin_last_run_timestamp_seconds": "gauge",
        "sidecar_plugin_in_flight": "gauge",
        "sidecar_plugin_rejected_total": "counter",
        "sidecar_plugin_interval_seconds": "gauge",
        "sidecar_check_state": "gauge",
        "sidecar_check_last_success_timestamp_seconds": "gauge",
        "sidecar_check_value": "gauge",
        "sidecar_plugin_values_dropped_total": "counter",
        "sidecar_build_info": "gauge",
        "sidecar_scheduler_errors_total": "counter",
        "sidecar_metrics_render_errors_total": "counter",
        "sidecar_store_errors_total": "counter",
        "sidecar_store_dropped_runs_total": "counter",
        "sidecar_store_pending_runs": "gauge",
        "sidecar_store_unwritable_runs_total": "counter",
        "sidecar_store_reopens_total": "counter",
        "sidecar_templates": "gauge",
        "sidecar_template_builds_total": "counter",
        "sidecar_template_evictions_total": "counter",
        "sidecar_templates_resident_bytes": "gauge",
    }
)

METRICS: Final[frozenset[str]] = frozenset(METRIC_TYPES)

# Labels each metric carries in the exposition (Prometheus adds `job` and `instance` at scrape time,
# histogram buckets add `le`).
METRIC_LABELS: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "sidecar_plugin_success_total": frozenset({"plugin"}),
        "sidecar_plugin_errors_total": frozenset({"plugin", "error_type"}),
        "sidecar_plugin_execution_seconds": frozenset({"plugin"}),
        "sidecar_plugin_peak_memory_bytes": frozenset({"plugin"}),
        "sidecar_plugin_uptime_seconds": frozenset({"plugin"}),
        "sidecar_plugin_loaded_timestamp_seconds": frozenset({"plugin"}),
        "sidecar_plugin_last_run_timestamp_seconds": frozenset({"plugin"}),
        "sidecar_plugin_in_flight": frozenset({"plugin"}),
        "sidecar_plugin_rejected_total": frozenset({"plugin", "reason"}),
        "sidecar_plugin_interval_seconds": frozenset({"plugin"}),
        "sidecar_check_state": frozenset({"plugin", "state"}),
        "sidecar_check_last_success_timestamp_seconds": frozenset({"plugin"}),
        "sidecar_check_value": frozenset({"plugin", "field"}),
        "sidecar_plugin_values_dropped_total": frozenset({"plugin", "reason"}),
        "sidecar_build_info": frozenset({"version"}),
        "sidecar_scheduler_errors_total": frozenset(),
        "sidecar_metrics_render_errors_total": frozenset(),
        "sidecar_store_errors_total": frozenset({"reason"}),
        "sidecar_store_dropped_runs_total": frozenset(),
        "sidecar_store_pending_runs": frozenset(),
        "sidecar_store_unwritable_runs_total": frozenset({"reason"}),
        "sidecar_store_reopens_total": frozenset(),
        "sidecar_templates": frozenset(),
        "sidecar_template_builds_total": frozenset(),
        "sidecar_template_evictions_total": frozenset(),
        "sidecar_templates_resident_bytes": frozenset(),
    }
)

# Labels whose values are a closed set.
LABEL_VALUES: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {"error_type": ERROR_TYPES, "reason": REJECT_REASONS | STORE_FAULT_REASONS | VALUE_DROP_REASONS,
     "state": CHECK_STATES}
)

TARGET_LABELS: Final = frozenset({"job", "instance"})

HISTOGRAM_SUFFIXES: Final = ("_bucket", "_sum", "_count")


def sample_names() -> frozenset[str]:
    """Every series name PromQL can select from a sidecar (histograms expanded)."""
    names: set[str] = set()
    for name, kind in METRIC_TYPES.items():
        if kind == "histogram":
            names.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
        else:
            names.add(name)
    return frozenset(names)


def sample_labels(sample: str) -> frozenset[str]:
    """The labels a series of this sample name can carry, including target labels."""
    for name, kind in METRIC_TYPES.items():
        if kind == "histogram" and sample.startswith(name) and sample[len(name) :] in HISTOGRAM_SUFFIXES:
            extra = {"le"} if sample.endswith("_bucket") else set()
            return METRIC_LABELS[name] | TARGET_LABELS | extra
    return METRIC_LABELS[sample] | TARGET_LABELS


SAMPLE_NAMES: Final[frozenset[str]] = sample_names()

# Series that Prometheus itself produces and the rules and dashboards may use.
PROMETHEUS_SERIES: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "up": TARGET_LABELS,
        "scrape_duration_seconds": TARGET_LABELS,
        "ALERTS": frozenset(
            {"alertname", "alertstate", "severity", "plugin", "error_type", "reason", "state"} | TARGET_LABELS
        ),
    }
)
