"""What a finished run says about its check: a state, and values to export (pure, runner side).

A run's outcome says whether the plugin ran within its limits; its check's *state* says what it found:

- a run that failed (any error outcome) is state `critical`, its error the reason, and reports nothing:
  the values of the last successful run stay exported (as node_exporter's textfile collector keeps a file's
  last contents), with `sidecar_check_last_success_timestamp_seconds` beside them to judge their age;
- a run that succeeded is the state it reported (`sidecar.check.state`), `ok` when it reported none; its
  values *replace* the previous ones: a field or gauge no longer reported is no longer exported.

Values are the numeric top-level fields of the result (`sidecar_check_value{field}`, by the same rule as
`/probe`'s `sidecar_probe_value`) and the gauges reported through `sidecar.check.gauge`. Everything the
child sent is checked again here with `sidecar.check.problem` (its message is the plugin's to forge), and
the whole is capped at `max_series` series per plugin: what is dropped is counted by reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import defaults
from .check import DROP_REASONS, STATES, problem
from .probe import numeric_fields_by_reason
from .sandbox.outcomes import ABORTED
from .sandbox.result import PluginSandboxResult

__all__ = ["Report", "Series", "judge"]

#: Largest count of dropped values a run may claim for one reason (a forged message cannot wrap a counter).
_MAX_CLAIMED = defaults.MAX_PLUGIN_SERIES_CEILING * 1000


@dataclass(frozen=True, slots=True)
class Series:
    """One reported gauge, valid: its family name, labels (in the order given), value, help and unit."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float
    help: str = ""
    unit: str = ""


@dataclass(frozen=True, slots=True)
class Report:
    """What one run means for its check's series."""

    #: the run succeeded: `fields` and `series` replace the check's previous values
    succeeded: bool
    state: str
    reason: str | None = None
    fields: tuple[tuple[str, float], ...] = ()
    series: tuple[Series, ...] = ()
    dropped: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """As the API shows it beside a run: the state, why, and what was exported of this run."""
        return {"state": self.state, "reason": self.reason, "values": dict(self.fields),
                "gauges": [{"name": s.name, "labels": dict(s.labels), "value": s.value} for s in self.series],
                "dropped": dict(self.dropped)}


def _failure_reason(result: PluginSandboxResult) -> str:
    err = result.error
    why = f"{err.type}: {err.message}" if err else "no error record"
    return f"run failed ({result.outcome.value}): {why}"[: defaults.MAX_STATE_REASON_CHARS]


def judge(result: PluginSandboxResult, max_series: int) -> Report:
    """The state and values of a finished run (see the module docstring)."""
    if result.outcome.value == ABORTED:  # the sidecar ended it (stopping, launcher replaced): it found nothing
        return Report(False, "unknown", _failure_reason(result))
    if not result.ok:
        return Report(False, "critical", _failure_reason(result))
    dropped = dict.fromkeys(DROP_REASONS, 0)
    fields, skipped = numeric_fields_by_reason(result.result)
    for skip, n in skipped.items():
        dropped[skip] += n
    raw = result.report if isinstance(result.report, dict) else {}
    claimed = raw.get("dropped")
    if isinstance(claimed, dict):  # what the plugin's side dropped before sending
        for claim, n in claimed.items():
            if claim in dropped and isinstance(n, int) and not isinstance(n, bool) and n > 0:
                dropped[claim] += min(n, _MAX_CLAIMED)
    sent_state, sent_reason = raw.get("state"), raw.get("reason")
    state: str = "ok"
    reason: str | None = None
    if sent_state in STATES:
        state = str(sent_state)
    elif sent_state is not None:
        state, sent_reason = "unknown", "the plugin reported an invalid state"
        dropped["invalid"] += 1
    if isinstance(sent_reason, str) and sent_reason:  # shown and kept in the history: bounded and storable
        reason = sent_reason[: defaults.MAX_STATE_REASON_CHARS].encode("utf-8", "backslashreplace").decode()
    if len(fields) > max_series:
        dropped["overflow"] += len(fields) - max_series
        fields = fields[:max_series]
    room = max_series - len(fields)
    series: list[Series] = []
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    gauges = raw.get("gauges")
    for g in gauges if isinstance(gauges, list) else ():
        if not isinstance(g, dict):
            dropped["invalid"] += 1
            continue
        name, value, labels = g.get("name"), g.get("value"), g.get("labels", {})
        help_text, unit = g.get("help", ""), g.get("unit", "")
        why: str | None = problem(name, value, labels, help_text, unit)
        if why is None:  # all checked by `problem`: a str name, a number, a dict of str to str
            name, value, labels = str(name), float(value or 0), dict(labels)
            key = (name, tuple(sorted(labels.items())))
            if key in seen:
                why = "invalid"
            elif len(series) >= room:
                why = "overflow"
            else:
                seen.add(key)
                series.append(Series(name, tuple(labels.items()), value, help_text, unit))
        if why is not None:
            dropped[why] += 1
    return Report(True, state, reason, tuple(fields), tuple(series), {k: v for k, v in dropped.items() if v})
