"""`GET /probe?target=NAME`: Prometheus drives a run at scrape time (the blackbox-exporter pattern).

The query is validated here, in the worker, before anything runs; the runner (`Runner.probe`) runs the
target within the budget; the answer is rendered here in the Prometheus text format. A failed or
refused run is a probe result (`sidecar_probe_success 0`, HTTP 200), never a 5xx: a 5xx would mark
the sidecar down rather than the thing it probes.

Numeric top-level fields of the result become `sidecar_probe_value{field="..."}` gauges: one family
(so dashboards and recording rules need no per-plugin names), label values bounded to `MAX_FIELDS`
fields of at most `MAX_FIELD_CHARS` characters from `[a-zA-Z0-9_]`. Booleans count as 0/1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import defaults, schema
from .errors import BadRequest
from .params import parse_value

__all__ = ["CONTENT_TYPE", "SCRAPE_TIMEOUT_HEADER", "ProbeRequest", "budget_seconds", "parse_request", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SCRAPE_TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
#: Budget when Prometheus sends no scrape timeout (Prometheus's own default scrape_timeout).
DEFAULT_BUDGET_SECONDS = 10.0
#: Left for the answer to travel back before Prometheus gives up on the scrape.
HEADER_MARGIN_SECONDS = 0.5
MIN_BUDGET_SECONDS = 0.5
MAX_FIELDS = 50
MAX_FIELD_CHARS = 64
PARAM_PREFIX = "param."

_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


@dataclass(frozen=True)
class ProbeRequest:
    target: str
    params: dict[str, Any] = field(default_factory=dict)
    budget_seconds: float = DEFAULT_BUDGET_SECONDS


def budget_seconds(header: str | None) -> float:
    """The scrape timeout Prometheus announced minus a margin (floor 0.5 s); 10 s without the header."""
    if header is None:
        return DEFAULT_BUDGET_SECONDS
    try:
        announced = float(header)
    except ValueError:
        announced = math.nan
    if math.isnan(announced) or announced <= 0:  # a huge value is fine: the run's own timeout caps it
        raise BadRequest(f"{SCRAPE_TIMEOUT_HEADER} must be a positive number of seconds, got {header!r}")
    return max(MIN_BUDGET_SECONDS, announced - HEADER_MARGIN_SECONDS)


def parse_request(args: Iterable[tuple[str, list[str]]], timeout_header: str | None) -> ProbeRequest:
    """Validate the query (`target=NAME`, `param.KEY=VALUE`…) and the scrape-timeout header."""
    target: str | None = None
    params: dict[str, Any] = {}
    for key, values in args:
        if len(values) != 1:
            raise BadRequest(f"query parameter {key!r} given {len(values)} times; give it once")
        if key == "target":
            target = values[0]
        elif key.startswith(PARAM_PREFIX) and len(key) > len(PARAM_PREFIX):
            params[key[len(PARAM_PREFIX):]] = parse_value(values[0])
        else:
            raise BadRequest(f"unknown query parameter {key!r}; allowed: target, {PARAM_PREFIX}KEY")
    if target is None:
        raise BadRequest("missing query parameter target (a plugin or check name)")
    if not schema.is_name(target):
        raise BadRequest(f"target must match {defaults.PLUGIN_NAME_PATTERN}")
    return ProbeRequest(target, params, budget_seconds(timeout_header))


def _number(v: float) -> str:
    """Go's float formatting, as Prometheus's own exporters write it."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def numeric_fields(result: Any) -> list[tuple[str, float]]:
    """(sanitised field name, value) of the numeric top-level fields of a result, sorted and bounded."""
    if not isinstance(result, dict):
        return []
    out: dict[str, float] = {}
    for key in sorted(str(k) for k in result):
        value = result[key]
        if not isinstance(value, int | float):
            continue
        name = _UNSAFE.sub("_", key)[:MAX_FIELD_CHARS] or "_"
        if name not in out:
            out[name] = float(value)
        if len(out) == MAX_FIELDS:
            break
    return list(out.items())


def render(outcome: dict[str, Any]) -> bytes:
    """The probe's answer: success, duration and numeric result fields, in the Prometheus text format."""
    success = outcome.get("outcome") == "success"
    lines = [
        "# HELP sidecar_probe_success Whether the probed run succeeded (1) or failed or was refused (0)",
        "# TYPE sidecar_probe_success gauge",
        f"sidecar_probe_success {1.0 if success else 0.0}",
        "# HELP sidecar_probe_duration_seconds Wall time of the probe: waiting for a slot plus the run",
        "# TYPE sidecar_probe_duration_seconds gauge",
        f"sidecar_probe_duration_seconds {_number(float(outcome.get('duration_seconds', 0.0)))}",
    ]
    fields = numeric_fields(outcome.get("result")) if success else []
    if fields:
        lines += ["# HELP sidecar_probe_value Numeric top-level fields of the probed run's result",
                  "# TYPE sidecar_probe_value gauge"]
        lines += [f'sidecar_probe_value{{field="{name}"}} {_number(v)}' for name, v in fields]
    return ("\n".join(lines) + "\n").encode()
