#!/usr/bin/env python3
"""Regenerate the reference tables of the docs from the one declaration of each.

    .venv/bin/python scripts/gen_docs.py           # rewrite every generated table in place
    .venv/bin/python scripts/gen_docs.py --check   # exit 1 naming each page that differs

A generated table sits in a page between `<!-- generated: NAME ... -->` and `<!-- end: NAME -->`; only the
lines between the two markers are rewritten. The tables and where each comes from:

    settings        `sidecar.config.SETTINGS` (the same table `sidecar settings` prints)
    checks          the keys of a `[checks.NAME]` table, `sidecar.schema.CheckTable`
    metrics         `sidecar.metrics.FAMILIES`, the metric contract
    probe-metrics   `sidecar.probe.FAMILIES`, the families of a `/probe` answer
    routes, errors  the OpenAPI document, `sidecar.openapi.openapi_document()`
    alerts          the alerting rules, `prometheus/alerts.yml` (needs PyYAML: the test extras)

A test runs `--check`'s comparison, so a page that no longer says what the code declares fails the suite.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec

from sidecar.config import settings_table
from sidecar.metric_family import Family
from sidecar.metrics import FAMILIES
from sidecar.openapi import openapi_document
from sidecar.probe import FAMILIES as PROBE_FAMILIES
from sidecar.schema import MAX_SECONDS, CheckTable

REPO_ROOT = Path(__file__).resolve().parents[1]
ALERTS = REPO_ROOT / "prometheus" / "alerts.yml"
COMMAND = ".venv/bin/python scripts/gen_docs.py"

_REGION = re.compile(r"(<!-- generated: (?P<name>[\w-]+)[^\n]*-->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)", re.S)


def pages(root: Path = REPO_ROOT) -> list[Path]:
    """Every page of the documentation: the README, SECURITY.md and docs/*.md."""
    return [root / "README.md", root / "SECURITY.md", *sorted((root / "docs").glob("*.md"))]


def _cell(text: str) -> str:
    """Text as one Markdown table cell: on one line, pipes escaped."""
    return " ".join(text.split()).replace("|", r"\|")


def _rows(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    head = list(header)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _family_rows(families: Iterable[Family]) -> list[list[str]]:
    rows = []
    for f in families:
        sample = f"{f.name}_total" if f.type == "counter" else f.name
        fixed = dict(f.values)
        labels = ", ".join(f"`{label}` ∈ {{{', '.join(fixed[label])}}}" if label in fixed else f"`{label}`"
                           for label in f.labels) or "—"
        rows.append([f"`{sample}`", f.type, labels, f"{f.help}{'; ' + f.doc if f.doc else ''}"])
    return rows


def metrics_table() -> str:
    """The families of `/metrics`, from the metric contract."""
    return _rows(("metric", "type", "labels", "what"), _family_rows(FAMILIES))


def probe_metrics_table() -> str:
    """The families of a `/probe` answer."""
    return _rows(("metric", "type", "labels", "what"), _family_rows(PROBE_FAMILIES))


_ORDER = ("plugin", "params")  # what every check needs first, then the rest as declared


def _type_words(node: dict[str, Any]) -> str:
    """A JSON Schema node as the words of the check table's type column."""
    options = [o for o in node.get("anyOf", []) if o.get("type") != "null"]
    if options and "type" not in node and "enum" not in node:
        return " or ".join(_type_words(o) for o in options)
    if "enum" in node:
        return " or ".join(f'`"{v}"`' for v in node["enum"])
    kind = node.get("type")
    if kind == "array":
        item = _type_words(node["items"])
        return f"array of ({item})" if " " in item else f"array of {item}s"
    words = {"string": "string", "number": "number", "integer": "integer", "boolean": "boolean",
             "object": "table"}.get(str(kind), str(kind))
    bounds = []
    if "exclusiveMinimum" in node:
        bounds.append(f"> {node['exclusiveMinimum']:g}")
    if "minimum" in node and kind != "string":
        bounds.append(f"≥ {node['minimum']:g}")
    if node.get("maximum") == MAX_SECONDS:
        bounds.append("≤ 1 year")
    return " ".join([words, ", ".join(bounds)]).strip()


def checks_table() -> str:
    """The keys of a `[checks.NAME]` table, from its declaration (types, bounds and meanings)."""
    schema = msgspec.json.schema(CheckTable)
    table = schema["$defs"]["CheckTable"]
    required = set(table.get("required", ()))
    keys = sorted(table["properties"], key=lambda k: (_ORDER.index(k) if k in _ORDER else len(_ORDER)))
    rows = []
    for key in keys:
        node = table["properties"][key]
        inner = next((o for o in node.get("anyOf", []) if o.get("type") != "null"), node)
        meaning = inner.get("description") or node.get("description", "")
        rows.append([f"`{key}`", _type_words(inner) + (", required" if key in required else ""), meaning])
    return _rows(("key", "type", "meaning"), rows)


def routes_table(doc: dict[str, Any] | None = None) -> str:
    """Every route of the OpenAPI document: what it answers and its error statuses."""
    doc = doc or openapi_document()
    rows = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            statuses = sorted(s for s in op["responses"] if not s.startswith("2"))
            token = " (token)" if op.get("security") else ""
            rows.append([f"`{method.upper()} {path}`{token}", op.get("description") or op.get("summary", ""),
                         ", ".join(statuses) or "—"])
    return _rows(("route", "what", "errors"), rows)


def errors_table(doc: dict[str, Any] | None = None) -> str:
    """The error answers the OpenAPI document declares (`x-error-answers`)."""
    doc = doc or openapi_document()
    answers = doc["components"]["x-error-answers"]
    return _rows(("status", "code", "when"), ([str(a["status"]), ", ".join(f"`{c}`" for c in a["codes"]), a["when"]]
                                              for a in answers))


def _duration(rule: dict[str, Any]) -> str:
    return f"{rule['for']}" if rule.get("for") else "at once"


def alerts_table(path: Path = ALERTS) -> str:
    """Every alerting rule: severity, how long its condition must hold, its summary and its runbook section."""
    import yaml

    rules = [r for group in yaml.safe_load(path.read_text())["groups"] for r in group["rules"] if "alert" in r]
    return _rows(("alert", "severity", "for", "meaning", "runbook"),
                 ([f"`{r['alert']}`", r["labels"]["severity"], _duration(r), r["annotations"]["summary"],
                   f"[{r['alert']}](runbooks.md#{r['annotations']['runbook_url'].partition('#')[2]})"]
                  for r in rules))


TABLES: dict[str, Callable[[], str]] = {
    "settings": settings_table,
    "checks": checks_table,
    "metrics": metrics_table,
    "probe-metrics": probe_metrics_table,
    "routes": routes_table,
    "errors": errors_table,
    "alerts": alerts_table,
}


def regenerate(text: str, tables: dict[str, str]) -> str:
    """`text` with every generated region holding its table as the code declares it today."""
    def fill(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in tables:
            raise SystemExit(f"gen_docs: unknown generated table {name!r} (known: {', '.join(sorted(tables))})")
        return f"{m.group(1)}{tables[name]}\n{m.group(4)}"

    return _REGION.sub(fill, text)


def problems(root: Path = REPO_ROOT) -> list[str]:
    """Each page whose generated tables differ from the code, and each table that no page holds."""
    tables = {name: make() for name, make in TABLES.items()}
    found: list[str] = []
    placed: set[str] = set()
    for page in pages(root):
        if not page.is_file():
            continue
        text = page.read_text()
        placed.update(m.group("name") for m in _REGION.finditer(text))
        if regenerate(text, tables) != text:
            found.append(f"{page.relative_to(root)}: a generated table differs from the code")
    found += [f"no page holds the generated table {name!r}" for name in TABLES if name not in placed]
    return found


def write(root: Path = REPO_ROOT) -> list[Path]:
    """Rewrite every page whose tables are stale; the pages rewritten."""
    tables = {name: make() for name, make in TABLES.items()}
    changed = []
    for page in pages(root):
        if page.is_file():
            text = page.read_text()
            if (new := regenerate(text, tables)) != text:
                page.write_text(new)
                changed.append(page)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a page differs from what the code generates")
    args = parser.parse_args(argv)
    if not args.check:
        for page in write():
            print(f"gen_docs: rewrote {page.relative_to(REPO_ROOT)}")
    found = problems()
    for line in found:
        print(f"gen_docs: {line}; run `{COMMAND}`", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
