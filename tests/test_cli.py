"""The CLI through its real console script: exit codes and output are an interface."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.config import Settings
from tests.conftest import plant_packages

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
    assert doc["started_at"].endswith("Z") and doc["finished_at"].endswith("Z")  # ISO 8601, as HTTP answers


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
                 ("run", "echo", "--params-json", "{bad"), ("run", "echo", "--timeout", "99999"),
                 ("run", "echo", "--param", "x=NaN")):
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
    assert f"BROKEN  syntax_error: {HOSTILE / 'syntax_error.py'}: SyntaxError: " in p.stdout
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


BAD_CHECK_VALUES = [
    ('interval_seconds = "often"', "interval_seconds"),
    ("interval_seconds = nan", "interval_seconds"),
    ("interval_seconds = -5", "interval_seconds"),
    ("interval_seconds = inf", "interval_seconds"),
    ("timeout_seconds = -1", "timeout_seconds"),
    ("timeout_seconds = 0", "timeout_seconds"),
    ("memory_limit_mb = 0", "memory_limit_mb"),
    ("memory_limit_mb = 2.5", "memory_limit_mb"),
    ("params = 3", "params"),
    ('plugin = "no_such_plugin"', "plugin"),
]


def _config(tmp_path: Path, line: str) -> Path:
    cfg = tmp_path / "sidecar.toml"
    body = line + "\n" if line.startswith("plugin =") else 'plugin = "echo"\n' + line + "\n"
    cfg.write_text("[checks.c]\n" + body)
    return cfg


@pytest.mark.parametrize(("line", "key"), BAD_CHECK_VALUES)
def test_check_exits_1_and_serve_refuses_with_2_on_a_bad_check_table(tmp_path: Path, line: str, key: str) -> None:
    cfg = _config(tmp_path, line)
    p = sidecar("check", "--config", str(cfg))
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"INVALID {cfg}: [checks.c]: {key} = " in p.stdout
    p = sidecar("serve", "--config", str(cfg), "--bind", "127.0.0.1:1")
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and f"[checks.c]: {key} = " in lines[0], p.stderr


@pytest.mark.parametrize(("line", "key"), [
    ('interval_seconds = "often"', "interval_seconds"),
    ("interval_seconds = -5", "interval_seconds"),
    ("timeout_seconds = -1", "timeout_seconds"),
    ("memory_limit_mb = 0", "memory_limit_mb"),
])
def test_bad_plugin_metadata_fails_check_and_lists_the_plugin_as_broken(tmp_path: Path, line: str, key: str) -> None:
    """One rule for a broken plugin file (`serve` starts and refuses its runs: tests/test_runner.py)."""
    (tmp_path / "plug.py").write_text(f"{line}\ndef run():\n    return 1\n")
    p = sidecar("check", "--plugin-path", str(tmp_path))
    assert p.returncode == 1
    assert f"BROKEN  plug: {tmp_path / 'plug.py'}: {key} = " in p.stdout
    assert "ok      plug" not in p.stdout
    listed = json.loads(sidecar("list", "--json", "--plugin-path", str(tmp_path)).stdout)
    assert key in next(e for e in listed if e["name"] == "plug")["problem"]


@pytest.mark.parametrize(("args", "key"), [
    (("--workers", "0"), "workers"),
    (("--default-timeout-seconds", "nan"), "default_timeout_seconds"),
    (("--max-body-bytes", "1" + "0" * 400), "max_body_bytes"),
    (("--plugins", "echo,ech"), "plugins"),
])
def test_serve_refuses_a_bad_setting(args: tuple[str, ...], key: str) -> None:
    p = sidecar("serve", "--bind", "127.0.0.1:1", *args)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and key in p.stderr, p.stderr


def test_check_usage_errors_exit_2(tmp_path: Path) -> None:
    assert sidecar("check", "--no-such-flag").returncode == 2
    p = sidecar("check", "--config", str(tmp_path / "missing.toml"))
    assert p.returncode == 2 and "does not exist" in p.stderr


def test_check_bad_setting_in_file_exits_1(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text("workers = -1\n")
    p = sidecar("check", "--config", str(cfg))
    assert p.returncode == 1 and f"INVALID {cfg}: workers = -1 is invalid" in p.stdout


def test_check_passes_a_good_config(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text('plugins = ["echo", "sleep"]\n[checks.c]\nplugin = "echo"\ninterval_seconds = 5\n'
                   "timeout_seconds = 2\nmemory_limit_mb = 128\nparams = { a = 1 }\n")
    p = sidecar("check", "--config", str(cfg))
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.split() == ["ok", "echo", "ok", "sleep"]


def test_run_never_imports_from_the_working_directory(tmp_path: Path) -> None:
    """A `sidecar/sandbox/launcher.py` planted in the cwd must not be what the launcher runs."""
    marker = plant_packages(tmp_path)
    exe = Path(sys.executable).with_name("sidecar")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    p = subprocess.run([str(exe), "run", "echo", "--param", "a=1", "--json"], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["outcome"] == "success"
    assert not marker.exists(), marker.read_text()


def test_settings_into_a_closed_pipe_ends_without_a_traceback():
    exe = Path(sys.executable).with_name("sidecar")
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first byte
    try:
        p = subprocess.run([str(exe), "settings"], stdout=write, stderr=subprocess.PIPE, text=True, timeout=60,
                           env={k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")})
    finally:
        os.close(write)
    assert p.returncode == 1
    assert p.stderr == ""


def test_one_more_problem_is_a_problem(monkeypatch):
    from types import SimpleNamespace

    import sidecar.plugins
    from sidecar import cli

    for errors, expected in ((["first", "second"], "first (and 1 more problem: run `sidecar check`)"),
                             (["first", "second", "third"], "first (and 2 more problems: run `sidecar check`)")):
        monkeypatch.setattr(sidecar.plugins, "discover", lambda settings, errors=errors: SimpleNamespace(errors=errors))
        assert cli._refusal(Settings()) == expected


def test_a_missing_plugin_directory_is_refused_by_check_and_a_warning_for_list(tmp_path: Path):
    missing = str(tmp_path / "nope")
    listed = sidecar("list", "--plugin-path", missing)
    assert listed.returncode == 0
    assert f"sidecar: warning: plugin_path: {missing!r} is not a directory" in listed.stderr
    assert "echo" in listed.stdout
    checked = sidecar("check", "--plugin-path", missing)
    assert checked.returncode == 1
    assert f"INVALID plugin_path: {missing!r} is not a directory" in checked.stdout


def test_check_predicts_what_serve_would_hit(tmp_path: Path):
    """Each finding names the check or file, the key and the fix; exit 1 before `serve` would fail every run."""
    plugins = tmp_path / "plugins"
    plugins.mkdir(mode=0o700)
    (plugins / "secret_age.py").write_text("def run():\n    return {'age': 1}\n")
    config = tmp_path / "sidecar.toml"
    config.write_text('[checks.root_disk]\nplugin = "disk_usage"\nparams = { paht = "/" }\n\n'
                      '[checks.app_logs]\nplugin = "disk_usage"\nparams = { path = "/tmp/app-logs" }\n')
    p = sidecar("check", "--config", str(config), "--plugin-path", str(plugins))
    assert p.returncode == 1, p.stdout + p.stderr
    out = p.stdout
    assert (f"INVALID {config}: [checks.root_disk]: params.paht: run() of plugin 'disk_usage' takes no parameter "
            "'paht'; did you mean 'path'?") in out
    assert f"INVALID {config}: [checks.app_logs]: params.path: '/tmp/app-logs' is under /tmp" in out
    if os.geteuid() == 0:  # as root each run takes a uid of its own
        assert f"chmod o+rx {plugins}" in out


READER = "def run(path):\n    with open(path) as f:\n        return f.read()\n"


def _reader_plugin(tmp_path: Path) -> Path:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "read_text.py").write_text(READER)
    return plugins


def test_run_and_check_use_the_sandbox_serve_would(tmp_path: Path):
    """A check reading a log under /tmp: served runs have a private /tmp, and so has `sidecar run` now."""
    plugins = _reader_plugin(tmp_path)
    logs = tmp_path / "app-logs"
    logs.mkdir()
    (logs / "app.log").write_text("started\n")
    config = tmp_path / "sidecar.toml"
    config.write_text(f'[checks.app_log]\nplugin = "read_text"\nparams = {{ path = "{logs / "app.log"}" }}\n')
    args = ("run", "app_log", "--config", str(config), "--plugin-path", str(plugins), "--json")
    served = sidecar(*args)
    assert served.returncode == 1, served.stdout + served.stderr
    assert json.loads(served.stdout)["error"]["type"] == "FileNotFoundError"
    assert "unisolated" not in served.stderr
    debugging = sidecar(*args, "--unisolated")
    assert debugging.returncode == 0, debugging.stdout + debugging.stderr
    assert json.loads(debugging.stdout)["result"] == "started\n"
    assert "sidecar: unisolated: " in debugging.stderr  # it says it is not what `serve` does
    config.write_text(config.read_text() + f'read_paths = ["{logs}"]\n')  # granted: read-only in its view
    granted = sidecar(*args)
    assert granted.returncode == 0, granted.stdout + granted.stderr
    assert json.loads(granted.stdout)["result"] == "started\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="as root each run takes a uid of its own")
def test_a_plugin_in_a_closed_directory_fails_in_run_and_check_as_it_would_served(tmp_path: Path):
    plugins = tmp_path / "plugins"
    plugins.mkdir(mode=0o700)
    (plugins / "secret_age.py").write_text("def run():\n    return {'age': 1}\n")
    ran = sidecar("run", "secret_age", "--plugin-path", str(plugins), "--json")
    assert ran.returncode == 1
    doc = json.loads(ran.stdout)
    assert (doc["outcome"], doc["error"]["type"]) == ("import", "PermissionError")
    checked = sidecar("check", "--plugin-path", str(plugins))
    assert checked.returncode == 1
    assert "BROKEN  secret_age: import: PermissionError" in checked.stdout
    assert "ok      secret_age" in sidecar("check", "--plugin-path", str(plugins), "--unisolated").stdout


def test_bench_says_its_figures_include_isolation():
    isolated = sidecar("bench", "echo", "--runs", "3")
    assert "isolated as `serve` runs it" in isolated.stdout
    doc = json.loads(sidecar("bench", "echo", "--runs", "3", "--json", "--unisolated").stdout)
    assert doc["isolated"] is False
