"""The `nagios` built-in: real monitoring plugins run as checks in the sandbox, state and perfdata on /metrics.

Debian's `monitoring-plugins-basic` (installed by test.sh) gives the executables; without it these tests skip,
except under CI, where they fail.
"""

from __future__ import annotations

import http.server
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from sidecar import defaults
from sidecar.app import create_app
from sidecar.config import CheckConfig, Settings, load_settings
from sidecar.plugins.builtin import nagios

from ...conftest import ci, poll
from .reported import state_of

PLUGINS = Path("/usr/lib/nagios/plugins")
NONCE = f"np{os.urandom(4).hex()}"  # a process name (comm) no other process has
SECRET = "SIDECAR_NAGIOS_TEST_SECRET"


def _require_plugins() -> None:
    if not (PLUGINS / "check_dummy").is_file():
        why = "monitoring-plugins-basic is not installed (test.sh installs it as root)"
        if ci():
            pytest.fail(why)
        pytest.skip(why)


def _bwrap() -> bool:
    import shutil

    return shutil.which("bwrap") is not None


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello from the loopback\n"
        self.send_response(200 if self.path == "/ok" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def web() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed when the socket is, and nobody listens on it


@pytest.fixture(scope="module")
def named_process() -> Iterator[int]:
    """A host process named NONCE (its comm), waiting on its stdin: what check_procs must count."""
    code = f"open('/proc/self/comm', 'w').write({NONCE!r}); import sys; sys.stdin.read()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    poll("the named process", lambda: (_named(NONCE) == [proc.pid], _named(NONCE)))
    yield proc.pid
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait()


def _named(name: str) -> list[int]:
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == name[:15]]


def _cmd(name: str, *args: str) -> dict[str, Any]:
    return {"command": [str(PLUGINS / name), *args]}


HANG = (
    "import os, signal\n"
    "def name(n): open('/proc/self/comm', 'w').write(n)\n"
    "if os.fork() == 0:\n"
    "    os.setsid(); name(NONCE_H)\n"
    "    while True: signal.pause()\n"
    "name(NONCE_H)\n"
    "print('still starting', flush=True)\n"
    "while True: signal.pause()\n"
)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, web: int, closed_port: int, named_process: int) -> Iterator[Flask]:
    _require_plugins()
    long = "disk full\nsda1 90%\nsdb1 95% | sda1=90%;80;90;0;100\n'sd b'=95%;@80:90;~:90 broken=x time=250ms;;;0"
    checks = [
        CheckConfig("dummy_ok", "nagios", _cmd("check_dummy", "0", "all fine")),
        CheckConfig("dummy_warning", "nagios", _cmd("check_dummy", "1", "getting full")),
        CheckConfig("dummy_critical", "nagios", _cmd("check_dummy", "2", "full")),
        CheckConfig("dummy_unknown", "nagios", _cmd("check_dummy", "3", "cannot tell")),
        CheckConfig("dummy_long", "nagios", _cmd("check_dummy", "2", long)),
        CheckConfig("odd_exit", "nagios", {"command": ["/bin/sh", "-c", "echo weird; exit 7"]}),
        CheckConfig("root_disk", "nagios", _cmd("check_disk", "-w", "1%", "-c", "1%", "-p", "/")),
        CheckConfig("load", "nagios", _cmd("check_load", "-w", "1000,1000,1000", "-c", "2000,2000,2000")),
        CheckConfig("procs_host", "nagios", _cmd("check_procs", "-C", NONCE, "-c", "1:1"), host_processes=True),
        CheckConfig("procs_ns", "nagios", _cmd("check_procs", "-C", NONCE, "-c", "1:1")),
        CheckConfig("passwd_age", "nagios", _cmd("check_file_age", "-w", "1", "-c", "2", "-f", "/etc/passwd")),
        CheckConfig("passwd_young", "nagios", _cmd("check_file_age", "-w", "3000000000", "-c", "4000000000",
                                                   "-f", "/etc/passwd")),
        CheckConfig("missing_file", "nagios", _cmd("check_file_age", "-f", f"/nonexistent/{NONCE}")),
        CheckConfig("tcp_up", "nagios", _cmd("check_tcp", "-H", "127.0.0.1", "-p", str(web))),
        CheckConfig("tcp_down", "nagios", _cmd("check_tcp", "-H", "127.0.0.1", "-p", str(closed_port))),
        CheckConfig("http_up", "nagios", _cmd("check_http", "-H", "127.0.0.1", "-p", str(web), "-u", "/ok",
                                              "-s", "loopback")),
        CheckConfig("http_404", "nagios", _cmd("check_http", "-H", "127.0.0.1", "-p", str(web), "-u", "/nope")),
        CheckConfig("env", "nagios", {"command": ["/usr/bin/env"]}),
        CheckConfig("hang", "nagios", {"command": [sys.executable, "-c", f"NONCE_H = {NONCE + 'h'!r}\n{HANG}"]},
                    timeout_seconds=2.0),
    ]
    os.environ[SECRET] = "s3cret"  # the sidecar's environment: its launcher starts with the app
    try:
        flask_app = create_app(Settings(data_dir=str(tmp_path_factory.mktemp("nagios")), checks=tuple(checks),
                                        entry_points=False))
    finally:
        del os.environ[SECRET]
    yield flask_app
    flask_app.extensions["sidecar_backend"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def _run(client: FlaskClient, name: str) -> dict[str, Any]:
    resp = client.post(f"/plugins/{name}/run", json={})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    doc: dict[str, Any] = resp.get_json()
    return doc


def _ran(client: FlaskClient, name: str, state: str) -> dict[str, Any]:
    """Run check `name`: the run succeeded (the executable ran and exited) and the state is `state`."""
    doc = _run(client, name)
    assert doc["outcome"] == "success", doc
    assert doc["check"]["state"] == state, doc
    assert doc["check"]["reason"] == doc["result"]["message"]
    return doc


def _gauges(doc: dict[str, Any], name: str) -> dict[str, float]:
    return {g["labels"]["perfdata"]: g["value"] for g in doc["check"]["gauges"] if g["name"] == name}


def _metrics(client: FlaskClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = client.get("/metrics").get_data(as_text=True)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.mark.parametrize(("code", "state", "text"), [
    ("0", "ok", "OK: all fine"), ("1", "warning", "WARNING: getting full"), ("2", "critical", "CRITICAL: full"),
    ("3", "unknown", "UNKNOWN: cannot tell")])
def test_check_dummy_every_state(client: FlaskClient, code: str, state: str, text: str) -> None:
    doc = _ran(client, f"dummy_{state}", state)
    assert doc["result"] == {"exit_code": int(code), "message": text, "long_output": "", "perfdata_invalid": 0}
    assert doc["check"]["values"] == {"exit_code": float(code), "perfdata_invalid": 0.0}


def test_an_exit_code_beyond_three_is_unknown_naming_it(client: FlaskClient) -> None:
    doc = _ran(client, "odd_exit", "unknown")
    assert doc["result"]["message"] == "weird (exit code 7 is not a plugin state (0-3))"


def test_long_output_is_the_results_text_and_every_perfdata_line_counts(client: FlaskClient) -> None:
    doc = _ran(client, "dummy_long", "critical")
    assert doc["result"]["message"] == "CRITICAL: disk full"
    assert doc["result"]["long_output"] == "sda1 90%\nsdb1 95%"
    assert doc["result"]["perfdata_invalid"] == 1  # `broken=x`: skipped and counted, the run still succeeds
    assert doc["check"]["dropped"] == {"invalid": 1}
    assert _gauges(doc, "nagios_perfdata_percent") == {"sda1": 90.0, "sd b": 95.0}
    assert _gauges(doc, "nagios_perfdata_seconds") == {"time": 0.25}
    assert _gauges(doc, "nagios_perfdata_critical_high_percent") == {"sda1": 90.0, "sd b": 90.0}
    assert _gauges(doc, "nagios_perfdata_critical_low_percent") == {"sda1": 0.0}  # `~:90`: no finite low end
    assert _gauges(doc, "nagios_perfdata_max_percent") == {"sda1": 100.0}
    inside = [g for g in doc["check"]["gauges"] if g["name"] == "nagios_perfdata_warning_low_percent"
              and g["labels"]["perfdata"] == "sd b"]
    assert inside == [{"name": "nagios_perfdata_warning_low_percent", "labels": {"perfdata": "sd b", "inside": "true"},
                       "value": 80.0}]
    runs = client.get("/plugins/dummy_long/runs?limit=1").get_json()["runs"]
    assert runs[0]["result"]["long_output"] == "sda1 90%\nsdb1 95%"


def test_check_disk(client: FlaskClient) -> None:
    doc = _run(client, "root_disk")
    assert doc["outcome"] == "success" and doc["check"]["state"] in ("ok", "warning", "critical"), doc
    assert doc["result"]["message"].startswith("DISK ")
    used, total = _gauges(doc, "nagios_perfdata_bytes")["/"], _gauges(doc, "nagios_perfdata_max_bytes")["/"]
    assert 0 < used <= total
    assert total == pytest.approx(psutil.disk_usage("/").total, rel=0.01)


def test_check_load(client: FlaskClient) -> None:
    doc = _ran(client, "load", "ok")
    loads = _gauges(doc, "nagios_perfdata")
    assert set(loads) == {"load1", "load5", "load15"} and all(v >= 0 for v in loads.values())
    assert _gauges(doc, "nagios_perfdata_warning_high")["load1"] == 1000.0


def test_check_procs_counts_the_hosts_processes_with_host_processes(client: FlaskClient, named_process: int) -> None:
    doc = _ran(client, "procs_host", "ok")
    assert _gauges(doc, "nagios_perfdata")["procs"] == 1.0
    if _bwrap():  # in its own namespace (bubblewrap), the check does not see the host's process
        assert _ran(client, "procs_ns", "critical")["result"]["message"].startswith("PROCS CRITICAL: 0 processes")


def test_check_file_age(client: FlaskClient) -> None:
    old = _ran(client, "passwd_age", "critical")
    assert "/etc/passwd" in old["result"]["message"]
    assert _gauges(old, "nagios_perfdata_seconds")["age"] > 2
    assert _gauges(old, "nagios_perfdata_bytes")["size"] == os.stat("/etc/passwd").st_size
    _ran(client, "passwd_young", "ok")
    assert "not found" in _ran(client, "missing_file", "critical")["result"]["message"].lower()


def test_check_tcp_against_a_loopback_server(client: FlaskClient) -> None:
    up = _ran(client, "tcp_up", "ok")
    assert 0 <= _gauges(up, "nagios_perfdata_seconds")["time"] < 30
    _ran(client, "tcp_down", "critical")


def test_check_http_against_a_loopback_server(client: FlaskClient) -> None:
    up = _ran(client, "http_up", "ok")
    assert up["result"]["message"].startswith("HTTP OK")
    assert _gauges(up, "nagios_perfdata_bytes")["size"] > 0
    assert "time" in _gauges(up, "nagios_perfdata_seconds")
    _ran(client, "http_404", "warning")  # check_http: a 4xx is a warning


def test_the_executable_gets_the_scrubbed_environment(client: FlaskClient) -> None:
    doc = _ran(client, "env", "ok")
    seen = f"{doc['result']['message']}\n{doc['result']['long_output']}"
    assert "PATH=" in seen and SECRET not in seen and "s3cret" not in seen


def test_an_executable_that_forks_and_hangs_is_killed_at_the_timeout_with_nothing_left(client: FlaskClient) -> None:
    doc = _run(client, "hang")
    assert doc["outcome"] == "timeout", doc
    assert doc["check"]["state"] == "critical"
    left = poll("no survivor", lambda: (not _named(NONCE + "h"), _named(NONCE + "h")), timeout=10)
    assert left == []


@pytest.mark.parametrize(("method", "url", "body"), [
    ("post", "/plugins/nagios/run", {"params": {"command": ["/bin/sh", "-c", "id"]}}),
    ("post", "/plugins/nagios/run", {}),
    ("get", "/probe?target=nagios&param.command=/bin/id", None),
    ("get", "/probe?target=nagios", None),
    ("post", "/plugins/dummy_ok/run", {"params": {"command": ["/bin/sh", "-c", "id"]}}),
    ("get", "/probe?target=dummy_ok&param.command=/bin/id", None),
])  # fmt: skip
def test_the_command_cannot_be_chosen_or_changed_through_the_api(client: FlaskClient, method: str, url: str,
                                                                 body: Any) -> None:
    before = client.get("/plugins/nagios/runs").get_json()["runs"]
    resp = getattr(client, method)(url, json=body) if body is not None else getattr(client, method)(url)
    assert resp.status_code == 400, resp.get_data(as_text=True)
    message = resp.get_json()["error"]["message"]
    assert "configured check" in message or "configured params only" in message, message
    assert client.get("/plugins/nagios/runs").get_json()["runs"] == before == []


def test_state_and_perfdata_are_on_metrics(client: FlaskClient) -> None:
    _ran(client, "dummy_long", "critical")
    _ran(client, "load", "ok")
    samples = _metrics(client)
    assert samples[("sidecar_check_state", (("plugin", "dummy_long"), ("state", "critical")))] == 1.0
    assert samples[("sidecar_check_state", (("plugin", "load"), ("state", "ok")))] == 1.0
    assert samples[("nagios_perfdata_percent", (("perfdata", "sd b"), ("plugin", "dummy_long")))] == 95.0
    assert samples[("nagios_perfdata_seconds", (("perfdata", "time"), ("plugin", "dummy_long")))] == 0.25
    assert (("nagios_perfdata", (("perfdata", "load1"), ("plugin", "load")))) in samples
    assert samples[("sidecar_check_value", (("field", "exit_code"), ("plugin", "dummy_long")))] == 2.0
    assert samples[("sidecar_plugin_values_dropped_total", (("plugin", "dummy_long"), ("reason", "invalid")))] >= 1


# -- the plugin itself, in-process (no sandbox): its refusals and bounds ------------------------------------

@pytest.mark.parametrize("command", [None, [], "check_disk -w 10%", ["check_disk"], [1, 2], ["/bin/true", None]])
def test_a_bad_command_is_a_value_error_saying_what_to_write(command: Any) -> None:
    with pytest.raises(ValueError, match="command"):
        nagios.run(command)


def test_an_executable_that_cannot_run_fails_the_run(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="cannot execute"):
        nagios.run([str(tmp_path / "nope")])


def test_an_executable_killed_by_a_signal_fails_the_run() -> None:
    with pytest.raises(RuntimeError, match="killed by signal SIGKILL"):
        nagios.run(["/bin/sh", "-c", "kill -KILL $$"])


def test_a_flood_of_output_is_cut_and_drained() -> None:
    limit = defaults.NAGIOS_MAX_OUTPUT_BYTES
    state, result = state_of(lambda: nagios.run(["/bin/sh", "-c", f"echo 'OK | a=1'; head -c {limit * 4} /dev/zero "
                                                                   "| tr '\\0' x; echo; exit 0"]))
    assert state == "ok" and result["message"] == "OK"
    assert result["long_output"].endswith(f"(output cut at {limit} bytes)")
    assert len(result["long_output"]) < limit + 100


def test_stderr_is_not_the_message() -> None:
    state, result = state_of(lambda: nagios.run(["/bin/sh", "-c", "echo oops >&2; echo 'WARNING - slow'; exit 1"]))
    assert state == "warning" and result["message"] == "WARNING - slow"


def test_the_docs_check_disk_example_runs_as_documented(tmp_path: Path) -> None:
    """docs/plugins.md's `[checks.root_disk]` table, run once: its state and the series it shows are on /metrics."""
    _require_plugins()
    doc = (Path(__file__).resolve().parents[3] / "docs" / "plugins.md").read_text()
    section = doc[doc.index("## Monitoring plugins as checks"):]
    table = re.search(r"```toml\n(\[checks\.root_disk\].*?)```", section, re.S)
    shown = re.search(r"```\n(sidecar_check_state\{plugin=\"root_disk\".*?)```", section, re.S)
    assert table and shown
    (tmp_path / "sidecar.toml").write_text(table.group(1))
    settings = load_settings({"config": str(tmp_path / "sidecar.toml"), "data_dir": str(tmp_path / "data"),
                              "entry_points": False})
    flask_app = create_app(settings)
    try:
        client = flask_app.test_client()
        assert client.get("/plugins/root_disk").get_json()["interval_seconds"] == 60
        assert _run(client, "root_disk")["outcome"] == "success"  # now, rather than at its first tick
        samples = _metrics(client)
    finally:
        flask_app.extensions["sidecar_backend"].close()
    states = {dict(labels)["state"]: v for (name, labels), v in samples.items()
              if name == "sidecar_check_state" and dict(labels)["plugin"] == "root_disk"}
    assert sum(states.values()) == 1 and states["unknown"] == 0
    for line in shown.group(1).splitlines():
        name, labels = re.match(r"(\w+)\{(.*)\}", line).groups()  # type: ignore[union-attr]
        if name != "sidecar_check_state":
            key = (name, tuple(sorted(re.findall(r'(\w+)="([^"]*)"', labels))))
            assert key in samples, line
