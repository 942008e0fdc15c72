"""schemathesis against a live `sidecar serve`: every operation of /openapi.json, `--checks all`.

No 5xx, responses match their schemas, schema-invalid requests are refused, 405s carry `Allow`,
and the document's limits are the ones the server enforces. The fuzzed server has only plugins
that touch no network (the `SIDECAR_PLUGINS` allow-list leaves out http_probe, tcp_probe and the
hostile test plugins) and listens on loopback only; runs are capped at 2 s.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_live_server

pytestmark = pytest.mark.integration

NO_NETWORK_PLUGINS = "echo,sleep,disk_usage,process_check"


def test_schemathesis_finds_no_issue(tmp_path: Path) -> None:
    server = make_live_server(tmp_path, plugins=NO_NETWORK_PLUGINS, max_timeout_seconds="2",
                              default_timeout_seconds="2")
    assert server.url.startswith("http://127.0.0.1:")
    server.start()
    try:
        status, listing = server.json("GET", "/plugins")
        assert status == 200
        assert sorted(p["name"] for p in listing["plugins"]) == sorted(NO_NETWORK_PLUGINS.split(","))
        exe = Path(sys.executable).with_name("schemathesis")
        proc = subprocess.run(
            [str(exe), "run", f"{server.url}/openapi.json", "--checks", "all", "--max-examples", "25",
             # One worker: with several, hypothesis' lambda descriptions call ast.parse from concurrent
             # threads, which trips CPython 3.11's "AST constructor recursion depth mismatch" SystemError.
             "--seed", "1", "--no-color", "--workers", "1"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
        assert "No issues found" in proc.stdout, proc.stdout[-6000:]
    finally:
        assert server.stop() == 0
