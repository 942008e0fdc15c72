"""A real `sidecar serve` operated as an operator would: the status page in headless Chromium, probes over
HTTP through gunicorn with a token, and reloads by SIGHUP and by `POST /-/reload`.

Chromium is Debian's `chromium` (test.sh installs it as root); without it the browser test is skipped, except
under CI (env CI set), where it fails. The browser test writes test-artifacts/status-page.png (and the
docs' copy, docs/status-page.png, with SIDECAR_UPDATE_SCREENSHOT=1).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, fields
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer, ci, free_port, make_live_server, poll

pytestmark = pytest.mark.integration

TOKEN = "operate-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: Each run writes its screenshot under test-artifacts/ (ignored by git); the docs' copy in docs/ is
#: refreshed on purpose with SIDECAR_UPDATE_SCREENSHOT=1, so a test run leaves the tree clean.
SCREENSHOT = Path(__file__).parents[2] / "test-artifacts" / "status-page.png"
DOCS_SCREENSHOT = Path(__file__).parents[2] / "docs" / "status-page.png"






def _config(port: int, closed_port: int, extra: str = "", drop: str = "") -> str:
    """Checks on loopback only: the sidecar's own /healthz and port, the disk, and a port nobody listens on."""
    checks = {
        "sidecar_healthz": f'plugin = "http_probe"\nparams = {{ url = "http://127.0.0.1:{port}/healthz" }}\n'
                           "interval_seconds = 1",
        "sidecar_port": f'plugin = "tcp_probe"\nparams = {{ host = "127.0.0.1", port = {port} }}\ninterval_seconds = 1',
        "root_disk": 'plugin = "disk_usage"\nparams = { path = "/" }\ninterval_seconds = 1',
        "nobody_listening": f'plugin = "tcp_probe"\nparams = {{ host = "127.0.0.1", port = {closed_port}, '
                            'timeout = 0.5 }\ninterval_seconds = 2',
    }
    body = "".join(f"[checks.{name}]\n{text}\n\n" for name, text in checks.items() if name != drop)
    return body + extra


@dataclass
class Operated(LiveServer):
    """A live sidecar with its TOML file (rewritten by the reload tests) and a loopback port nobody listens on."""

    config: Path = Path()
    closed_port: int = 0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operated]:
    tmp = tmp_path_factory.mktemp("operate")
    base = make_live_server(tmp, api_token=TOKEN, plugin_path="")
    srv = Operated(**{f.name: getattr(base, f.name) for f in fields(base)}, config=tmp / "sidecar.toml",
                   closed_port=free_port())
    srv.config.write_text(_config(srv.port, srv.closed_port))
    srv.env["SIDECAR_CONFIG"] = str(srv.config)
    srv.start()
    yield srv
    srv.stop()


def _plugins(server: LiveServer) -> dict[str, dict[str, Any]]:
    status, doc = server.json("GET", "/plugins")
    assert status == 200, doc
    return {p["name"]: p for p in doc["plugins"]}


def _checks(server: LiveServer) -> set[str]:
    return {name for name, p in _plugins(server).items() if p["source"] == "check"}


def _metric(server: LiveServer, line_prefix: str) -> float | None:
    _, _, body = server.request("GET", "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


# --- the status page in Chromium --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if ci():
            pytest.fail("chromium is missing (Debian package `chromium`); test.sh installs it, CI requires it")
        pytest.skip("chromium is missing (Debian package `chromium`; test.sh installs it when run as root)")
    return found


def _browse(chromium: str, url: str, *args: str) -> str:
    with tempfile.TemporaryDirectory(prefix="sidecar-chromium-") as profile:
        proc = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args, url],
            capture_output=True, timeout=120, check=False,
        )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    return proc.stdout.decode()


class _Rows(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[str] = []
        self.sparklines = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-name"):
            self.rows.append(str(a["data-name"]))
        if tag == "svg" and "sparkline" in (a.get("class") or ""):
            self.sparklines += 1


def test_status_page_in_chromium_lists_every_check(server: LiveServer, chromium: str) -> None:
    checks = _checks(server)
    assert len(checks) == 4

    def ran_a_few_times() -> tuple[bool, dict[str, int]]:
        counts = {n: p["health"]["success_count"] + p["health"]["error_count"] for n, p in _plugins(server).items()
                  if n in checks}
        return all(c >= 4 for c in counts.values()), counts

    poll("every check to run a few times", ran_a_few_times)
    dom = _browse(chromium, server.url + "/", "--dump-dom")
    page = _Rows()
    page.feed(dom)
    assert checks <= set(page.rows), (checks, page.rows)
    assert set(page.rows) == set(_plugins(server))  # every plugin too
    assert page.sparklines >= len(checks)
    assert "Sidecar status" in dom
    SCREENSHOT.parent.mkdir(exist_ok=True)
    _browse(chromium, server.url + "/", f"--screenshot={SCREENSHOT}", "--window-size=1200,720",
            "--hide-scrollbars")
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("SIDECAR_UPDATE_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.write_bytes(SCREENSHOT.read_bytes())


# --- probes through gunicorn --------------------------------------------------------------------------


def test_probe_over_http_with_the_token(server: LiveServer) -> None:
    status, headers, body = server.request("GET", "/probe?target=root_disk",
                                           headers={**AUTH, "X-Prometheus-Scrape-Timeout-Seconds": "5"})
    assert status == 200 and headers["Content-Type"].startswith("text/plain"), body
    assert b"sidecar_probe_success 1.0" in body and b'sidecar_probe_value{field="used_percent"}' in body
    status, _, body = server.request("GET", "/probe?target=nobody_listening", headers=AUTH)
    assert status == 200 and b"sidecar_probe_success 0.0" in body  # a failed probe is a result, not a 5xx
    assert server.request("GET", "/probe?target=root_disk")[0] == 401


# --- reload ---------------------------------------------------------------------------------------------


def test_sighup_adds_changes_and_removes_checks_keeping_history(server: Operated) -> None:
    assert server.proc is not None
    config = server.config
    kept_before = _plugins(server)["root_disk"]["health"]["success_count"]
    assert kept_before > 0
    config.write_text(_config(server.port, server.closed_port, drop="nobody_listening",
                              extra='[checks.added_later]\nplugin = "echo"\nparams = { n = 1 }\n'
                                    "interval_seconds = 1\n")
                      .replace('params = { path = "/" }', 'params = { path = "/tmp" }'))
    os.kill(server.proc.pid, signal.SIGHUP)

    def reloaded() -> tuple[bool, set[str]]:
        checks = _checks(server)
        return "added_later" in checks and "nobody_listening" not in checks, checks

    poll("the SIGHUP reload", reloaded)
    plugins = _plugins(server)
    assert plugins["root_disk"]["params"] == {"path": "/tmp"}  # changed definition...
    assert plugins["root_disk"]["health"]["success_count"] >= kept_before  # ...same history
    assert _metric(server, 'sidecar_plugin_success_total{plugin="root_disk"}') is not None
    assert _metric(server, 'sidecar_plugin_success_total{plugin="nobody_listening"}') is None
    assert server.json("GET", "/plugins/nobody_listening/health")[0] == 404
    poll("the added check's scheduled runs",
         lambda: (_plugins(server)["added_later"]["health"]["success_count"] >= 1, _plugins(server)["added_later"]))
    assert _metric(server, 'sidecar_config_reloads_total{result="success"}') == 1.0


def test_reload_route_refuses_a_bad_configuration_and_keeps_the_old_one(server: Operated) -> None:
    config = server.config
    before = _checks(server)
    good = config.read_text()
    assert server.request("POST", "/-/reload")[0] == 401
    config.write_text(good + '\n[checks.broken]\nplugin = "no_such_plugin"\n')
    status, doc = server.json("POST", "/-/reload", headers=AUTH)
    assert status == 400 and doc["error"]["code"] == "config" and "no_such_plugin" in doc["error"]["message"]
    config.write_text("this is [not toml")
    assert server.json("POST", "/-/reload", headers=AUTH)[0] == 400
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGHUP)  # refused too: logged, counted
    poll("the refused SIGHUP to be counted",
         lambda: (_metric(server, 'sidecar_config_reloads_total{result="failure"}') == 3.0, server.log.read_text()))
    assert _checks(server) == before
    assert "reload refused" in server.log.read_text()
    # A good configuration again; a restart-only setting is named, not applied.
    config.write_text("max_concurrent_runs = 3\n" + good)  # top-level keys come before the tables
    status, doc = server.json("POST", "/-/reload", headers=AUTH)
    assert status == 200, doc
    assert doc == {"added": [], "changed": [], "removed": [], "needs_restart": ["max_concurrent_runs"]}
    assert "need a restart to apply: max_concurrent_runs" in server.log.read_text()
