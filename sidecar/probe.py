"""`GET /probe?target=NAME`: Prometheus drives a run at scrape time (the blackbox-exporter pattern).

The query is validated here, in the worker, before anything runs; the runner (`Runner.probe`) runs the
target within the budget; the answer is rendered here in the Prometheus text format. A failed or
refused run, or one whose check reports state critical (a target down), is a probe result
(`sidecar_probe_success 0`, HTTP 200), never a 5xx: a 5xx would mark the sidecar down rather than the
thing it probes.

Numeric top-level fields of the result become `sidecar_probe_value{field="..."}` gauges: one family
(so dashboards and recording rules need no per-plugin names), label values bounded to `MAX_FIELDS`
fields of at most `MAX_FIELD_CHARS` characters from `[a-zA-Z0-9_]`. Booleans count as 0/1. A numeric
field that is not exported — not a finite float (NaN, an infinity, an integer beyond a float's range),
a name that clashes once sanitised, or past the bound — is counted in `sidecar_probe_values_skipped`:
whatever a plugin returns, the answer is a valid exposition and a 200.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import defaults, schema
from .errors import BadRequest
from .metric_family import Family
from .params import parse_value

__all__ = ["CONTENT_TYPE", "FAMILIES", "SCRAPE_TIMEOUT_HEADER", "ProbeRequest", "budget_seconds", "parse_request",
           "render", "target_of"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SCRAPE_TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
#: Budget when Prometheus sends no scrape timeout (Prometheus's own default scrape_timeout).
DEFAULT_BUDGET_SECONDS = 10.0
#: Left for the answer to travel back before Prometheus gives up on the scrape.
HEADER_MARGIN_SECONDS = 0.5
MIN_BUDGET_SECONDS = 0.5
MAX_FIELDS = 50
MAX_FIELD_CHARS = 64

#: The families of a probe's answer (on `/probe` only, never on `/metrics`), in the order they are rendered.
FAMILIES: tuple[Family, ...] = (
    Family("sidecar_probe_success", "gauge",
           "Whether the probed run succeeded and its check is not critical (1) or not (0)", ()),
    Family("sidecar_probe_duration_seconds", "gauge", "Wall time of the probe: waiting for a slot plus the run", ()),
    Family("sidecar_probe_value", "gauge", "Numeric top-level fields of the probed run's result", ("field",),
           doc=f"booleans as 0/1; at most {MAX_FIELDS} fields, names `[a-zA-Z0-9_]` of at most {MAX_FIELD_CHARS}"
               " characters; absent when the run exported none"),
    Family("sidecar_probe_values_skipped", "gauge", "Numeric result fields not exported: not a finite float "
           f"(NaN, infinite, beyond a float's range), a clashing name, or past the first {MAX_FIELDS}", (),
           doc="0 when nothing was left out"),
)
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
    """Validate the whole query (`target=NAME`, `param.KEY=VALUE`…) and the scrape-timeout header.

    Params go through the rules of a run body (`parse_value`, `schema.check_depth`), so `param.x=NaN` is
    the caller's 400 before anything runs, never a `value` error recorded against the plugin.
    """
    target: str | None = None
    params: dict[str, Any] = {}
    for key, values in args:
        if len(values) != 1:
            raise BadRequest(f"query parameter {key!r} given {len(values)} times; give it once")
        if key == "target":
            target = values[0]
        elif key.startswith(PARAM_PREFIX) and len(key) > len(PARAM_PREFIX):
            try:
                params[key[len(PARAM_PREFIX):]] = parse_value(values[0])
            except schema.Invalid as exc:
                raise BadRequest(f"{schema.short(key)}: {exc}") from None
        else:
            raise BadRequest(f"unknown query parameter {schema.short(key)}; allowed: target, {PARAM_PREFIX}KEY")
    if target is None:
        raise BadRequest("missing query parameter target (a plugin or check name)")
    if not schema.is_name(target):
        raise BadRequest(f"target must match {defaults.PLUGIN_NAME_PATTERN}")
    try:
        schema.check_depth(params, "query")
    except schema.Invalid as exc:
        raise BadRequest(str(exc)) from None
    return ProbeRequest(target, params, budget_seconds(timeout_header))


def _number(v: float) -> str:
    """Go's float formatting, as Prometheus's own exporters write it."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def target_of(args: Iterable[tuple[str, list[str]]]) -> str | None:
    """The one name a query gives as `target`, if any: whom a refused probe is counted against."""
    given = [values for key, values in args if key == "target"]
    if len(given) == 1 and len(given[0]) == 1 and schema.is_name(given[0][0]):
        return given[0][0]
    return None


def numeric_fields(result: Any) -> tuple[list[tuple[str, float]], int]:
    """(sanitised field name, value) of the numeric top-level fields of a result, sorted and bounded, and
    how many numeric fields were skipped: not a finite float, a name taken once sanitised, past the bound."""
    fields, skipped = numeric_fields_by_reason(result)
    return fields, sum(skipped.values())


def numeric_fields_by_reason(result: Any) -> tuple[list[tuple[str, float]], dict[str, int]]:
    """`numeric_fields` with the skipped fields counted by reason: `not_finite` (NaN, an infinity, beyond
    a float's range), `invalid` (a name taken once sanitised), `overflow` (past the first MAX_FIELDS).
    The one field rule of `/probe` and of a check's `sidecar_check_value` series."""
    if not isinstance(result, dict):
        return [], {}
    out: dict[str, float] = {}
    skipped: dict[str, int] = {}
    for key in sorted(str(k) for k in result):
        value = result[key]
        if not isinstance(value, int | float):
            continue
        name = _UNSAFE.sub("_", key)[:MAX_FIELD_CHARS] or "_"
        try:
            number = float(value)
        except OverflowError:  # an int beyond a float's range: 10**400
            number = math.nan
        reason = ("not_finite" if not math.isfinite(number) else "invalid" if name in out
                  else "overflow" if len(out) == MAX_FIELDS else None)
        if reason is not None:
            skipped[reason] = skipped.get(reason, 0) + 1
        else:
            out[name] = number
    return list(out.items()), skipped


def render(outcome: dict[str, Any]) -> bytes:
    """The probe's answer: success, duration and numeric result fields, in the Prometheus text format."""
    ran = outcome.get("outcome") == "success"
    # as blackbox_exporter's probe_success: 0 when the target is down (a check that reports critical)
    success = ran and outcome.get("state") != "critical"
    fields, skipped = numeric_fields(outcome.get("result")) if ran else ([], 0)
    samples = {"sidecar_probe_success": [f"sidecar_probe_success {1.0 if success else 0.0}"],
               "sidecar_probe_duration_seconds": [
                   f"sidecar_probe_duration_seconds {_number(float(outcome.get('duration_seconds', 0.0)))}"],
               "sidecar_probe_value": [f'sidecar_probe_value{{field="{name}"}} {_number(v)}' for name, v in fields],
               "sidecar_probe_values_skipped": [f"sidecar_probe_values_skipped {_number(skipped)}"]}
    lines: list[str] = []
    for family in FAMILIES:
        if samples[family.name]:
            lines += [f"# HELP {family.name} {family.help}", f"# TYPE {family.name} {family.type}",
                      *samples[family.name]]
    return ("\n".join(lines) + "\n").encode()
