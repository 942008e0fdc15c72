"""The status page's rendering, and `/` for browsers and for JSON clients (Chromium: tests/integration)."""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser

import pytest
from flask import Flask

from sidecar.app import create_app
from sidecar.config import CheckConfig, Settings
from sidecar.status_page import render, sparkline

from .conftest import HOSTILE


class _Page(HTMLParser):
    """Collects row names, sparklines and any reference to another document (there must be none)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[str] = []
        self.sparklines = 0
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-name"):
            self.rows.append(str(a["data-name"]))
        if tag == "svg" and "sparkline" in (a.get("class") or ""):
            self.sparklines += 1
        if tag in ("script", "img", "link", "iframe") or (tag == "style" and a.get("src")):
            self.external.append(tag)


def _entry(name: str, **kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": name, "plugin": "echo", "source": "check", "description": "", "interval_seconds": 30.0,
        "status": "healthy", "last_used": "2026-01-01T00:00:00.5Z", "last_outcome": "success",
        "avg_execution_time_ms": 2.5, "success_count": 3, "errors_by_type": {"timeout": 1, "crash": 0},
        "recent_execution_ms": [1.0, 3.0, 2.0], "problem": None,
    }
    return {**base, **kw}


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def test_page_lists_every_entry_self_contained_and_escaped() -> None:
    status = {"generated_at": "2026-01-01T00:00:00.5Z", "entries": [
        _entry("zeta", source="builtin"), _entry("alpha"),
        _entry("beta", status="unknown", last_used=None, last_outcome=None, recent_execution_ms=[],
               problem="<script>alert(1)</script>")]}
    html = render(status)
    page = _parse(html)
    assert page.rows == ["alpha", "beta", "zeta"]  # checks first, in registry order, then plugins
    assert page.sparklines == 2  # beta never ran: "no runs yet" instead
    assert page.external == []
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    assert "timeout 1" in html and "crash 0" not in html
    assert 'http-equiv="refresh"' in html


def test_sparkline_scales_to_the_largest_value() -> None:
    svg = sparkline([0.0, 10.0], "healthy")
    assert 'points="0.0,26.0 140.0,2.0"' in svg
    assert "no runs yet" in sparkline([], "unknown")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    settings = Settings(data_dir=str(tmp_path_factory.mktemp("status")), plugin_path=(str(HOSTILE),),
                        entry_points=False, checks=(CheckConfig("beat", "echo", {"n": 1}),))
    flask_app = create_app(settings)
    yield flask_app
    flask_app.extensions["sidecar_backend"].close()


def test_browsers_get_the_page_with_every_plugin_and_check(app: Flask) -> None:
    client = app.test_client()
    client.post("/plugins/beat/run")
    resp = client.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    names = {p["name"] for p in client.get("/plugins").get_json()["plugins"]}
    page = _parse(resp.get_data(as_text=True))
    assert set(page.rows) == names and "beat" in names
    assert page.sparklines >= 1


@pytest.mark.parametrize("accept", [None, "application/json", "*/*"])
def test_json_clients_get_an_index_of_the_api(app: Flask, accept: str | None) -> None:
    resp = app.test_client().get("/", headers={"Accept": accept} if accept else {})
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    doc = resp.get_json()
    assert doc["openapi"] == "/openapi.json"
    assert {"/", "/probe", "/-/reload", "/metrics", "/plugins/{name}/run"} <= set(doc["routes"])


def test_each_row_shows_the_checks_state_why_and_latest_values() -> None:
    status = {"generated_at": "2026-01-01T00:00:00.5Z", "entries": [
        _entry("api", state="critical", state_reason="connection refused by 127.0.0.1:1 <b>",
               values={"up": 0.0, "connect_seconds": 0.002}),
        _entry("disk", state="ok", state_reason=None, values={f"v{i}": float(i) for i in range(8)}),
        _entry("old", state="unknown", state_reason=None, values={})]}
    page = render(status)
    assert '<span class="status critical">critical</span>' in page
    assert "connection refused by 127.0.0.1:1 &lt;b&gt;" in page  # why it fails, escaped
    assert "up 0 · connect_seconds 0.002" in page
    assert "v0 0 · v1 1" in page and "+2 more" in page
    assert '<span class="status unknown">unknown</span>' in page
