"""Every PromQL expression the repository ships, and a small PromQL scanner to check them.

`all_expressions()` returns (source, expr) pairs from the Grafana dashboards (targets and variable
queries, with Grafana's template variables replaced by values Prometheus accepts), the alerting rules and
the recording rules. The static tests check each expression's identifiers against the metric contract; a
live test can send each one to a real Prometheus.

`analyze()` is not a full PromQL parser: it tokenizes an expression and classifies identifiers (metric
names, function names, grouping labels, label matchers) well enough to catch a misspelled metric, label,
label value or function, while strings, durations, numbers and keywords are never mistaken for metrics.
"""

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .contract import (
    LABEL_VALUES,
    METRIC_LABELS,
    PROMETHEUS_SERIES,
    SAMPLE_NAMES,
    TARGET_LABELS,
    sample_labels,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS_DIR = REPO_ROOT / "grafana" / "dashboards"
ALERTS_FILE = REPO_ROOT / "prometheus" / "alerts.yml"
RECORDING_FILE = REPO_ROOT / "prometheus" / "recording.yml"
RUNBOOKS_FILE = REPO_ROOT / "docs" / "runbooks.md"

# Values substituted for Grafana's variables so that an expression is valid PromQL that selects what
# the dashboard would select with "All" chosen. `$job` is the job name of prometheus/prometheus.yml.
DEFAULT_VARIABLES: Mapping[str, str] = {
    "job": "sidecar",
    "instance": ".+",
    "plugin": ".+",
    "__rate_interval": "1m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}

AGGREGATORS = frozenset(
    {
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "limitk", "limit_ratio",
    }
)  # fmt: skip

FUNCTIONS = frozenset(
    {
        "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
        "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
        "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg", "delta",
        "deriv", "double_exponential_smoothing", "exp", "floor", "histogram_avg", "histogram_count",
        "histogram_fraction", "histogram_quantile", "histogram_stddev", "histogram_stdvar", "histogram_sum",
        "holt_winters", "hour", "idelta", "increase", "info", "irate", "label_join", "label_replace",
        "last_over_time", "ln", "log10", "log2", "mad_over_time", "max_over_time", "min_over_time", "minute",
        "month", "pi", "predict_linear", "present_over_time", "quantile_over_time", "rad", "rate", "resets",
        "round", "scalar", "sgn", "sin", "sinh", "sort", "sort_by_label", "sort_by_label_desc", "sort_desc",
        "sqrt", "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan", "tanh", "time", "timestamp",
        "vector", "year",
        # `@ start()` and `@ end()` modifiers
        "start", "end",
    }
)  # fmt: skip

GROUPING_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`[^`]*`)
  | (?P<duration>(?:\d+(?:ms|s|m|h|d|w|y))+(?![A-Za-z0-9_:]))
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|==|!=|<=|>=|[-+*/%^<>=@,(){}\[\]:])
    """,
    re.VERBOSE,
)


class PromQLSyntaxError(ValueError):
    """The scanner could not make sense of an expression."""


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    pos: int


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str


@dataclass(frozen=True)
class Selector:
    name: str | None
    matchers: tuple[Matcher, ...]


@dataclass
class Analysis:
    selectors: list[Selector] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)
    grouping_labels: list[str] = field(default_factory=list)

    @property
    def metric_names(self) -> set[str]:
        return {s.name for s in self.selectors if s.name is not None}


def tokenize(expr: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN_RE.match(expr, pos)
        if m is None:
            raise PromQLSyntaxError(f"unexpected character {expr[pos]!r} at {pos} in {expr!r}")
        kind = m.lastgroup
        assert kind is not None
        if kind not in ("ws", "comment"):
            tokens.append(Token(kind, m.group(), pos))
        pos = m.end()
    return tokens


def unquote(literal: str) -> str:
    if literal.startswith("`"):
        return literal[1:-1]
    body = literal[1:-1]
    escapes = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}
    return re.sub(r"\\(.)", lambda m: escapes.get(m.group(1), "\\" + m.group(1)), body)


def _closing(tokens: list[Token], start: int, open_: str, close: str) -> int:
    """Index of the token closing the bracket opened at tokens[start]."""
    depth = 0
    for i in range(start, len(tokens)):
        if tokens[i].text == open_:
            depth += 1
        elif tokens[i].text == close:
            depth -= 1
            if depth == 0:
                return i
    raise PromQLSyntaxError(f"unbalanced {open_!r} at {tokens[start].pos}")


def _matchers(tokens: list[Token], start: int, end: int) -> tuple[Matcher, ...]:
    """Parse the label matchers between tokens[start] == '{' and tokens[end] == '}'."""
    found: list[Matcher] = []
    i = start + 1
    while i < end:
        if tokens[i].text == ",":
            i += 1
            continue
        if i + 2 >= end or tokens[i].kind != "ident":
            raise PromQLSyntaxError(f"bad label matcher at {tokens[i].pos}")
        label, op, value = tokens[i], tokens[i + 1], tokens[i + 2]
        if op.text not in ("=", "!=", "=~", "!~") or value.kind != "string":
            raise PromQLSyntaxError(f"bad label matcher {label.text}{op.text}{value.text} at {label.pos}")
        found.append(Matcher(label.text, op.text, unquote(value.text)))
        i += 3
    return tuple(found)


def analyze(expr: str) -> Analysis:
    """Classify the identifiers of a PromQL expression."""
    tokens = tokenize(expr)
    result = Analysis()
    depth = {"(": 0, "[": 0, "{": 0}
    for t in tokens:
        if t.text in ("(", "[", "{"):
            depth[t.text] += 1
        elif t.text in (")", "]", "}"):
            depth[{")": "(", "]": "[", "}": "{"}[t.text]] -= 1
        if min(depth.values()) < 0:
            raise PromQLSyntaxError(f"unbalanced {t.text!r} at {t.pos} in {expr!r}")
    if any(depth.values()):
        raise PromQLSyntaxError(f"unbalanced brackets in {expr!r}")

    i = 0
    while i < len(tokens):
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if tok.text == "[":  # range or subquery: durations only
            i = _closing(tokens, i, "[", "]") + 1
            continue
        if tok.text == "{":  # selector without a metric name: {__name__="..."}
            end = _closing(tokens, i, "{", "}")
            matchers = _matchers(tokens, i, end)
            names = [m.value for m in matchers if m.label == "__name__" and m.op == "="]
            result.selectors.append(Selector(names[0] if names else None, matchers))
            i = end + 1
            continue
        if tok.kind != "ident":
            i += 1
            continue
        word = tok.text.lower()
        if word in GROUPING_KEYWORDS:
            if nxt is not None and nxt.text == "(":
                end = _closing(tokens, i + 1, "(", ")")
                for label in tokens[i + 2 : end]:
                    if label.kind == "ident":
                        result.grouping_labels.append(label.text)
                    elif label.text != ",":
                        raise PromQLSyntaxError(f"bad grouping label {label.text!r} at {label.pos}")
                i = end + 1
            else:  # group_left / group_right without a label list
                i += 1
            continue
        if word in KEYWORDS:
            i += 1
            continue
        if word in AGGREGATORS and nxt is not None and nxt.text.lower() in ("by", "without"):
            result.functions.append(tok.text)
            i += 1
            continue
        if nxt is not None and nxt.text == "(":
            result.functions.append(tok.text)
            i += 1
            continue
        if nxt is not None and nxt.text == "{":
            end = _closing(tokens, i + 1, "{", "}")
            result.selectors.append(Selector(tok.text, _matchers(tokens, i + 1, end)))
            i = end + 1
            continue
        result.selectors.append(Selector(tok.text, ()))
        i += 1
    return result


# --- checking an expression against the contract ------------------------------------------------------


def known_labels() -> frozenset[str]:
    labels: set[str] = set(TARGET_LABELS) | {"le"}
    for names in METRIC_LABELS.values():
        labels |= names
    for names in PROMETHEUS_SERIES.values():
        labels |= names
    return frozenset(labels)


def contract_problems(expr: str, recording_rules: frozenset[str]) -> list[str]:
    """Every way `expr` strays from the metric contract; empty when it does not.

    Metric names must be contract samples, Prometheus's own series (`up`, `ALERTS`) or one of
    `recording_rules`; functions must exist; label matchers and grouping labels must be labels the
    selected series can carry; values of closed label sets (error_type, reason) must be valid.
    """
    try:
        analysis = analyze(expr)
    except PromQLSyntaxError as exc:
        return [str(exc)]
    problems: list[str] = []
    all_labels = known_labels()
    for fn in analysis.functions:
        if fn not in FUNCTIONS and fn.lower() not in AGGREGATORS:
            problems.append(f"unknown function {fn!r}")
    for label in analysis.grouping_labels:
        if label not in all_labels:
            problems.append(f"unknown label {label!r} in a grouping clause")
    for sel in analysis.selectors:
        if sel.name is None:
            problems.append("selector without a metric name")
            continue
        if sel.name in SAMPLE_NAMES:
            allowed = sample_labels(sel.name)
        elif sel.name in PROMETHEUS_SERIES:
            allowed = PROMETHEUS_SERIES[sel.name]
        elif sel.name in recording_rules:
            allowed = all_labels
        else:
            problems.append(f"unknown metric {sel.name!r}")
            continue
        for m in sel.matchers:
            if m.label == "__name__":
                continue
            if m.label not in allowed:
                problems.append(f"{sel.name} has no label {m.label!r}")
                continue
            values = LABEL_VALUES.get(m.label)
            if values is None or m.value == "":
                continue
            if m.op in ("=", "!="):
                ok = m.value in values
            else:
                try:
                    ok = any(re.fullmatch(m.value, v) for v in values)
                except re.error:
                    ok = False
            if not ok:
                problems.append(f"{m.label}{m.op}{m.value!r} matches no value of {sorted(values)}")
    return problems


# --- extracting the repository's expressions ----------------------------------------------------------

_VARIABLE_RE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$([A-Za-z_]\w*)")


def substitute_variables(expr: str, values: Mapping[str, str] = DEFAULT_VARIABLES) -> str:
    """Replace Grafana's `$var`, `${var}`, `${var:fmt}` and `[[var]]` with `values`.

    An unknown variable raises KeyError; `$1` (a regex back-reference) is left alone.
    """

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise KeyError(f"no value for Grafana variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE_RE.sub(repl, expr)


def variables_used(expr: str) -> set[str]:
    return {m.group(1) or m.group(2) or m.group(3) for m in _VARIABLE_RE.finditer(expr)}


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def variable_query(variable: Mapping[str, Any]) -> str | None:
    """The PromQL inside a query variable (`label_values(<selector>, label)`, `query_result(<expr>)`)."""
    query = variable.get("query")
    if isinstance(query, Mapping):
        query = query.get("query")
    if not isinstance(query, str):
        return None
    m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query, re.DOTALL)
    if m:
        return m.group(1)
    m = re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.DOTALL)
    if m:
        return m.group(1)
    return None


def dashboard_raw_expressions(dashboard: Mapping[str, Any], name: str) -> list[tuple[str, str]]:
    """(source, expr) for each target and query variable of a dashboard, template variables left in."""
    found: list[tuple[str, str]] = []
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable_query(variable)
            if query is not None:
                found.append((f"{name}: variable {variable['name']}", query))
    for panel in iter_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                source = (
                    f"{name}: panel {panel.get('id')} {panel.get('title')!r} target {target.get('refId')}"
                )
                found.append((source, target["expr"]))
    return found


def load_dashboards(directory: Path = DASHBOARDS_DIR) -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}


def load_rules(path: Path) -> list[dict[str, Any]]:
    data = yaml.safe_load(path.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def rule_expressions(path: Path) -> list[tuple[str, str]]:
    rel = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
    return [
        (f"{rel}: {'alert' if 'alert' in r else 'record'} {r.get('alert') or r.get('record')}", r["expr"])
        for r in load_rules(path)
    ]


def recording_rule_names(path: Path = RECORDING_FILE) -> frozenset[str]:
    return frozenset(r["record"] for r in load_rules(path) if "record" in r)


def runbook_expressions(path: Path = RUNBOOKS_FILE) -> list[tuple[str, str]]:
    """(source, expr) for each line of the ```promql blocks of the runbooks (comments skipped).

    Placeholders such as `plugin="PLUGIN"` stay: they are valid PromQL that selects nothing.
    """
    found: list[tuple[str, str]] = []
    section = "(top)"
    in_block = False
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not in_block and line.startswith("## "):
            section = line[3:].strip()
        elif line.strip() == "```promql":
            in_block = True
        elif in_block and line.strip() == "```":
            in_block = False
        elif in_block and line.strip() and not line.lstrip().startswith("#"):
            found.append((f"docs/runbooks.md:{number}: {section}", line.strip()))
    return found


def all_expressions(variables: Mapping[str, str] = DEFAULT_VARIABLES) -> list[tuple[str, str]]:
    """(source, expr) for every PromQL expression in dashboards, alerts, recording rules and runbooks.

    Dashboard expressions have their Grafana variables substituted from `variables`.
    """
    found: list[tuple[str, str]] = []
    for name, dashboard in load_dashboards().items():
        found += [
            (source, substitute_variables(expr, variables))
            for source, expr in dashboard_raw_expressions(dashboard, f"grafana/dashboards/{name}")
        ]
    found += rule_expressions(ALERTS_FILE)
    found += rule_expressions(RECORDING_FILE)
    found += runbook_expressions()
    return found
