#!/usr/bin/env python3
"""Point every runbook link (alert `runbook_url`s, their promtool tests, the dashboard) at one runbooks page.

The links are `BASE#anchor`, where BASE is where your copy of docs/runbooks.md is published and the anchor is
the alert's section there. The committed BASE is `docs/runbooks.md`, the page in this repository; publish the
repository (or the page) and set its address once:

    .venv/bin/python scripts/runbook_urls.py --base-url https://git.example.com/ops/sidecar/blob/main/docs/runbooks.md
    .venv/bin/python scripts/runbook_urls.py --check   # exit 1 if a link is broken or the files disagree

Rewriting also regenerates deploy/kubernetes/prometheusrule.yaml (which needs PyYAML: the test extras).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNBOOKS = REPO_ROOT / "docs" / "runbooks.md"
ALERTS = REPO_ROOT / "prometheus" / "alerts.yml"
#: Files whose runbook links follow the alerts' base (the alerts file first: it declares the base).
LINKED = (ALERTS, REPO_ROOT / "prometheus" / "alerts.test.yml", REPO_ROOT / "grafana" / "dashboards" / "sidecar.json")
PROMETHEUSRULE_GENERATOR = REPO_ROOT / "deploy" / "kubernetes" / "generate_prometheusrule.py"

_RUNBOOK_URL = re.compile(r"^\s*runbook_url:\s*(\S+)\s*$", re.MULTILINE)
_ALERT = re.compile(r"^\s*-\s*alert:\s*(\S+)\s*$", re.MULTILINE)


def anchors(markdown: str) -> set[str]:
    """The anchors a Markdown renderer (GitHub's slugs) gives the headings, plus explicit `<a id>` anchors."""
    found: set[str] = set()
    for line in markdown.splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            found.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    found.update(re.findall(r'<a\s+(?:id|name)="([^"]+)"', markdown))
    return found


def current_base(alerts_text: str) -> str:
    """The one base every `runbook_url` of the alerts file shares."""
    bases: set[str] = {url.partition("#")[0] for url in _RUNBOOK_URL.findall(alerts_text)}
    if len(bases) != 1:
        raise SystemExit(f"runbook_urls: {ALERTS.relative_to(REPO_ROOT)} must use one base, found {sorted(bases)}")
    return bases.pop()


def problems() -> list[str]:
    """Every broken link: a missing anchor, an alert without its own section, a file on another base."""
    alerts_text = ALERTS.read_text()
    base = current_base(alerts_text)
    found: list[str] = []
    if "://" not in base and not (REPO_ROOT / base).is_file():
        found.append(f"base {base!r} is neither a URL nor a file of the repository")
    have = anchors(RUNBOOKS.read_text())
    urls = _RUNBOOK_URL.findall(alerts_text)
    names = _ALERT.findall(alerts_text)
    if len(urls) != len(names):
        found.append(f"{len(names)} alerts but {len(urls)} runbook_url annotations")
    for name, url in zip(names, urls, strict=False):
        anchor = url.partition("#")[2]
        if anchor != name.lower():
            found.append(f"{name}: runbook_url anchor #{anchor}, expected #{name.lower()}")
        if anchor not in have:
            found.append(f"{name}: docs/runbooks.md has no section #{anchor}")
        if name not in have:  # the dashboard's alert table links to #<alertname> (Grafana cannot lowercase)
            found.append(f'{name}: docs/runbooks.md needs <a id="{name}"></a>')
    for path in LINKED[1:]:
        for other in set(re.findall(r"[^\s\"']*runbooks\.md", path.read_text())) - {base}:
            found.append(f"{path.relative_to(REPO_ROOT)} links {other}, not the alerts' base {base}")
    return found


def rewrite(new_base: str) -> None:
    old = current_base(ALERTS.read_text())
    for path in LINKED:
        path.write_text(path.read_text().replace(old + "#", new_base + "#").replace(f'"{old}"', f'"{new_base}"'))
    subprocess.run([sys.executable, str(PROMETHEUSRULE_GENERATOR)], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--base-url", help="where docs/runbooks.md is published (no #anchor)")
    group.add_argument("--check", action="store_true", help="exit 1 if a runbook link is broken")
    args = parser.parse_args(argv)
    if args.base_url is not None:
        if "#" in args.base_url or not args.base_url.strip() or any(c.isspace() for c in args.base_url):
            parser.error("--base-url: the page's address, without #anchor or spaces")
        rewrite(args.base_url)
    found = problems()
    for line in found:
        print(f"runbook_urls: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
