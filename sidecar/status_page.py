"""The status page at `/`: every plugin and check at a glance, for a human without Grafana.

Each row says what the check last found (its state, why when it is not ok, its latest values) beside how
its runs went (health, last run and outcome, averages, errors, a sparkline).

One self-contained HTML document (no scripts, styles or images from elsewhere), rendered from one
runner call (`Runner.status`) and refreshed by the browser every `REFRESH_SECONDS`. The sparkline of
recent execution times is inline SVG. Clients that do not ask for HTML get a JSON index of the API
instead (`app.py`).
"""

from __future__ import annotations

import html
from importlib import resources
from string import Template
from typing import Any

__all__ = ["REFRESH_SECONDS", "render"]

REFRESH_SECONDS = 5
SPARK_WIDTH, SPARK_HEIGHT = 140, 28

_TEMPLATE = Template(resources.files("sidecar").joinpath("templates/status.html").read_text(encoding="utf-8"))


def sparkline(values: list[float], css_class: str) -> str:
    """An inline SVG polyline of `values` (oldest first), scaled to the largest one."""
    if not values:
        return '<span class="sub">no runs yet</span>'
    top = max(values) or 1.0
    step = SPARK_WIDTH / max(1, len(values) - 1)
    points = " ".join(f"{i * step:.1f},{SPARK_HEIGHT - 2 - (v / top) * (SPARK_HEIGHT - 4):.1f}"
                      for i, v in enumerate(values))
    colour = {"healthy": "#1f8f45", "degraded": "#b07d00", "failing": "#c0392b"}.get(css_class, "#5b6475")
    return (f'<svg class="sparkline" width="{SPARK_WIDTH}" height="{SPARK_HEIGHT}" role="img" '
            f'aria-label="last {len(values)} execution times, max {top:.1f} ms">'
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{points}"/></svg>')


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f} ms"


#: Values of a check shown on its row; the rest are on /metrics.
SHOWN_VALUES = 6


def _check(e: dict[str, Any]) -> str:
    """The check's state, why when it is not ok, and its latest values (from its last successful run)."""
    esc = html.escape
    state = str(e.get("state") or "unknown")
    out = f'<span class="status {esc(state)}">{esc(state)}</span>'
    if e.get("state_reason") and state != "ok":
        out += f'<div class="sub why">{esc(str(e["state_reason"])[:300])}</div>'
    values = list((e.get("values") or {}).items())
    if values:
        shown = " · ".join(f"{esc(k)} {v:g}" for k, v in values[:SHOWN_VALUES])
        more = f" · +{len(values) - SHOWN_VALUES} more" if len(values) > SHOWN_VALUES else ""
        out += f'<div class="sub values">{shown}{more}</div>'
    return out


def _row(e: dict[str, Any]) -> str:
    esc = html.escape
    errors = ", ".join(f"{esc(k)} {v}" for k, v in e["errors_by_type"].items() if v) or "—"
    last = "never" if e["last_used"] is None else f'{esc(e["last_used"][:19].replace("T", " "))} UTC'
    outcome = f'<div class="sub">{esc(e["last_outcome"])}</div>' if e["last_outcome"] else ""
    sub = esc(e["source"] if e["source"] != "check" else f'check of {e["plugin"]}')
    if e["interval_seconds"]:
        sub += f' · every {e["interval_seconds"]:g} s'
    if e["problem"]:
        sub += f' · problem: {esc(e["problem"])}'
    return (f'<tr data-name="{esc(e["name"])}"><td><div class="name">{esc(e["name"])}</div>'
            f'<div class="sub">{sub}</div></td>'
            f"<td>{_check(e)}</td>"
            f'<td><span class="status {esc(e["status"])}">{esc(e["status"])}</span></td>'
            f"<td>{last}{outcome}</td><td class=\"num\">{_ms(e['avg_execution_time_ms'])}</td>"
            f'<td class="num">{e["success_count"]}</td><td>{errors}</td>'
            f'<td>{sparkline(e["recent_execution_ms"], e["status"])}</td></tr>')


def render(status: dict[str, Any]) -> str:
    """The page for one `Runner.status()` snapshot."""
    entries = sorted(status["entries"], key=lambda e: e["source"] != "check")  # checks first, then plugins
    generated = str(status["generated_at"])[:19].replace("T", " ") + " UTC"
    return _TEMPLATE.substitute(
        refresh=REFRESH_SECONDS, count=len(entries), generated=html.escape(generated),
        rows="\n".join(_row(e) for e in entries),
    )
