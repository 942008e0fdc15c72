"""What a plugin reports besides its result: its check's state and named values.

Plugin code imports it inside its sandbox::

    from sidecar.check import gauge, state

    def run(queue="mail"):
        waiting = count_messages(queue)
        gauge("mail_queue_messages", waiting, help="Messages waiting to be sent", queue=queue)
        if waiting > 1000:
            state("critical", f"{waiting} messages waiting")
        return {"waiting": waiting}

`gauge` and `state` only record; what a run recorded travels with its result once `run` returns (a run
that raises sends none: its check is critical, and its last good report stays on `/metrics`). Each
gauge becomes the series `NAME{plugin="…", LABEL="…"}`: the sidecar adds the `plugin` label (the plugin
or check name), so a plugin never names itself.

The rules (`problem`) are applied twice: here, so that what cannot be exported never travels, and by
the runner, which trusts nothing a run sends. Anything that breaks them is dropped and counted in
`sidecar_plugin_values_dropped_total{reason}`, never failing the run or the scrape.

This module runs inside sandboxes: it imports nothing but `os`, `re` and the sidecar's defaults.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

from . import defaults as _d

__all__ = ["DROP_REASONS", "STATES", "dropped", "gauge", "problem", "state", "take"]

#: A check's states, best first; `unknown` until its first run ends.
STATES = ("ok", "warning", "critical", "unknown")
#: Why a reported value was not exported (the `reason` label of `sidecar_plugin_values_dropped_total`):
#: invalid: a malformed name, label or state, or a series reported twice; reserved: a name or label the
#: sidecar or Prometheus owns; too_long: past a length bound; not_finite: NaN, an infinity or not a
#: number; overflow: past the plugin's series cap (SIDECAR_MAX_PLUGIN_SERIES).
DROP_REASONS = ("invalid", "reserved", "too_long", "not_finite", "overflow")

_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_UNIT = re.compile(r"^[a-z][a-z0-9_]*$")
#: Prefixes of the sidecar's own families and of the runner's process collectors.
RESERVED_PREFIXES = ("sidecar_", "process_", "python_", "__")
#: Suffixes that other metric types give their samples (a gauge named so confuses parsers and queries).
RESERVED_SUFFIXES = ("_total", "_created", "_bucket", "_count", "_sum", "_gcount", "_gsum", "_info")
#: Labels the sidecar or Prometheus sets.
RESERVED_LABELS = frozenset({"plugin", "check", "field", "job", "instance", "le", "quantile"})

_run: dict[str, Any] = {"pid": -1}


def _current() -> dict[str, Any]:
    """This run's report; a new process (a run forked from a template) starts from nothing."""
    if _run["pid"] != os.getpid():
        _run.clear()
        _run.update(pid=os.getpid(), state=None, reason=None, gauges=[], seen=set(),
                    dropped=dict.fromkeys(DROP_REASONS, 0))
    return _run


def _text(value: Any, limit: int) -> str:
    """`value` as a string, cut just past `limit` (enough for the rules to see it is too long)."""
    return (value if isinstance(value, str) else str(value))[: limit + 1]


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def problem(name: Any, value: Any, labels: Any, help: Any = "", unit: Any = "") -> str | None:
    """Why this reported series cannot be exported (one of DROP_REASONS), or None when it can (pure)."""
    if not isinstance(name, str) or not _NAME.match(name):
        return "invalid"
    if len(name) > _d.MAX_METRIC_NAME_CHARS:
        return "too_long"
    if name.startswith(RESERVED_PREFIXES) or name.endswith(RESERVED_SUFFIXES):
        return "reserved"
    if not isinstance(help, str) or not isinstance(unit, str) or not _encodable(help):
        return "invalid"
    if len(help) > _d.MAX_HELP_CHARS or len(unit) > _d.MAX_LABEL_NAME_CHARS:
        return "too_long"
    if unit and (not _UNIT.match(unit) or not name.endswith("_" + unit)):
        return "invalid"  # OpenMetrics: a family with a unit is named for it
    if not isinstance(labels, dict) or len(labels) > _d.MAX_LABELS:
        return "invalid"
    for key, text in labels.items():
        if not isinstance(key, str) or not isinstance(text, str) or not _NAME.match(key) or not _encodable(text):
            return "invalid"
        if key in RESERVED_LABELS or key.startswith("__"):
            return "reserved"
        if len(key) > _d.MAX_LABEL_NAME_CHARS or len(text) > _d.MAX_LABEL_VALUE_CHARS:
            return "too_long"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "not_finite" if isinstance(value, str) else "invalid"
    try:
        return None if math.isfinite(float(value)) else "not_finite"
    except OverflowError:
        return "not_finite"


def gauge(name: str, value: float, help: str = "", unit: str = "", **labels: Any) -> None:
    """Report `value` as the gauge `name` with `labels` (strings; others are converted with `str`).

    `help` is the family's description, `unit` its base unit (`seconds`, `bytes`; `name` must end with
    `_<unit>`). Reporting the same name and labels twice in one run keeps the first.
    """
    run = _current()
    labels = {str(k): _text(v, _d.MAX_LABEL_VALUE_CHARS) for k, v in labels.items()}
    help_text, unit_text = _text(help, _d.MAX_HELP_CHARS), _text(unit, _d.MAX_LABEL_NAME_CHARS)
    reason = problem(name, value, labels, help_text, unit_text)
    key = (name, tuple(sorted(labels.items())))
    if reason is None and key in run["seen"]:
        reason = "invalid"
    elif reason is None and len(run["gauges"]) >= _d.MAX_PLUGIN_SERIES_CEILING:
        reason = "overflow"
    if reason is not None:
        run["dropped"][reason] += 1
        return
    run["seen"].add(key)
    run["gauges"].append({"name": name, "value": float(value), "labels": labels, "help": help_text,
                          "unit": unit_text})


def dropped(reason: str, count: int = 1) -> None:
    """Count `count` values this run could not report (one of DROP_REASONS; e.g. perfdata that did not parse)."""
    run = _current()
    run["dropped"]["invalid" if reason not in DROP_REASONS else reason] += max(0, int(count))


def state(value: str, reason: str = "") -> None:
    """Set this run's check state: ok, warning, critical or unknown (the last call wins), and why."""
    run = _current()
    if value not in STATES:
        run["dropped"]["invalid"] += 1
        return
    run["state"], run["reason"] = value, _text(reason, _d.MAX_STATE_REASON_CHARS)[: _d.MAX_STATE_REASON_CHARS]


def take() -> dict[str, Any] | None:
    """What this run reported, for its result message (the sandbox calls this once `run` returned)."""
    if _run.get("pid") != os.getpid():
        return None
    report = {"state": _run["state"], "reason": _run["reason"], "gauges": _run["gauges"],
              "dropped": {k: v for k, v in _run["dropped"].items() if v}}
    _run["pid"] = -1
    return report
