"""The CLI through its real console script: exit codes and output are an interface."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HOSTILE = Path(__file__).parent / "sandbox" / "hostile"


def sidecar(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("sidecar")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")})


def test_run_json_success():
    p = sidecar("run", "echo", "--param", "a=1", "--param", "b=text", "--params-json", '{"c": [1]}', "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["outcome"] == "success"
    assert doc["result"] == {"a": 1, "b": "text", "c": [1]}
    assert set(doc) >= {"plugin", "outcome", "result", "error", "execution_time_ms", "peak_memory_bytes",
                        "started_at", "finished_at", "stdout", "stderr"}


def test_run_failure_exits_1_with_the_outcome():
    p = sidecar("run", "raises", "--plugin-path", str(HOSTILE), "--param", "kind=ValueError", "--json")
    assert p.returncode == 1
    assert json.loads(p.stdout)["outcome"] == "value"


def test_run_timeout_and_memory_flags():
    p = sidecar("run", "loop", "--plugin-path", str(HOSTILE), "--timeout", "0.5", "--json")
    assert (p.returncode, json.loads(p.stdout)["outcome"]) == (1, "timeout")
    p = sidecar("run", "memory_bomb", "--plugin-path", str(HOSTILE), "--memory-mb", "150", "--json")
    assert (p.returncode, json.loads(p.stdout)["outcome"]) == (1, "memory")


def test_usage_errors_exit_2_with_one_line():
    for args in (("run", "no_such_plugin"), ("run", "echo", "--param", "novalue"),
                 ("run", "echo", "--params-json", "{bad"), ("run", "echo", "--timeout", "99999")):
        p = sidecar(*args)
        assert p.returncode == 2, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert p.stdout == ""


def test_list_json_and_check():
    p = sidecar("list", "--json", "--plugin-path", str(HOSTILE))
    names = {e["name"] for e in json.loads(p.stdout)}
    assert {"echo", "sleep", "syntax_error", "hello"} <= names
    p = sidecar("check", "--plugin-path", str(HOSTILE))
    assert p.returncode == 1
    assert "BROKEN  syntax_error: import" in p.stdout
    assert "BROKEN  missing_dependency: import" in p.stdout
    assert "ok      hello" in p.stdout
    assert sidecar("check").returncode == 0


def test_bench_reports_figures():
    p = sidecar("bench", "echo", "--runs", "20", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["runs"] == 20 and doc["outcomes"] == {"success": 20}
    assert 0 < doc["median_ms"] <= doc["p99_ms"]
    assert sidecar("bench", "nope").returncode == 2
