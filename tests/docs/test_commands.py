"""The commands and files the docs show work as shown: each shell command of a code block is run here, or is
listed below as not run with the reason; every TOML block is a valid configuration and every alert rule
shown passes `promtool check rules`."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from sidecar.config import load_settings

from ..conftest import make_live_server
from .markdown import PAGES, REPO_ROOT, Block, blocks

SHELL_BLOCKS = [b for page in PAGES for b in blocks(page) if b.lang in ("sh", "bash", "shell")]
COMMANDS = [(b.page.relative_to(REPO_ROOT), c) for b in SHELL_BLOCKS for c in b.commands()]
BIN = Path(sys.executable).parent

#: Commands the suite does not run (matched by prefix), and why.
NOT_RUN = {
    "./run.sh": "serves until stopped; tests/integration/test_install_live.py runs it from a fresh copy of the tree",
    "./test.sh": "is the suite itself",
    "export SIDECAR_API_TOKEN=": "the compose stack's token: part of `docker compose up`",
    "docker compose up": "no container engine on the test machines; tests/examples/test_compose_example.py and "
                         "tests/stack check the compose file, the image and the provisioning",
    "curl -s http://INSTANCE/": "a runbook's placeholders (INSTANCE, PLUGIN) stand for an alert's labels",
    "curl -s 'http://INSTANCE/": "a runbook's placeholders (INSTANCE, PLUGIN) stand for an alert's labels",
    ".venv/bin/python -m benchmarks.fleet": "starts 50 sidecars and a Prometheus for minutes",
    ".venv/bin/python deploy/kubernetes/generate_prometheusrule.py": "rewrites the committed PrometheusRule; "
                                                                     "tests/stack compares it with the rule files",
}
#: Commands run here against the repository as they are (the venv's own binaries).
LOCAL = (".venv/bin/sidecar ", ".venv/bin/python scripts/", "promtool ")
#: The quick start's calls of a served sidecar, run against a live one on another port.
QUICK_START = "127.0.0.1:9464/"
BACKUP = "python3 -c 'import sqlite3, sys; sqlite3.connect(sys.argv[1]).backup(sqlite3.connect(sys.argv[2]))'"


def _kind(command: str) -> str:
    if any(command.startswith(p) for p in NOT_RUN):
        return "not run"
    if command.startswith(LOCAL):
        return "local"
    if command.startswith("curl ") and QUICK_START in command:
        return "quick start"
    if command.startswith(BACKUP):
        return "backup"
    return "unknown"


def _bash(command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", "set -o pipefail; " + command.replace(".venv/bin/", f"{BIN}/")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False)


def test_every_command_is_run_or_listed_with_its_reason() -> None:
    assert COMMANDS
    unknown = [f"{page}: {command}" for page, command in COMMANDS if _kind(command) == "unknown"]
    assert unknown == [], "run it in tests/docs/test_commands.py or list it in NOT_RUN with the reason"
    shown = {prefix for prefix in NOT_RUN if any(c.startswith(prefix) for _, c in COMMANDS)}
    assert shown == set(NOT_RUN), "NOT_RUN lists commands the docs no longer show"


@pytest.mark.parametrize("command", sorted({c for _, c in COMMANDS if _kind(c) == "local"}))
def test_local_command_runs(command: str) -> None:
    if command.startswith("promtool") and shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (test.sh installs Debian's prometheus)")
    proc = _bash(command)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_backup_command_copies_a_history_while_it_is_open(tmp_path: Path) -> None:
    from sidecar.store import Store

    (command,) = {c for _, c in COMMANDS if _kind(c) == "backup"}
    store = Store(str(tmp_path / "data"))
    try:
        with sqlite3.connect(store.path) as db:
            before = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        target = tmp_path / "backup.sqlite3"
        proc = _bash(command.replace("/var/lib/sidecar/", f"{tmp_path}/data/")
                     .replace("/var/backups/sidecar-history.sqlite3", str(target)))
        assert proc.returncode == 0, proc.stderr
    finally:
        store.close()
    with sqlite3.connect(target) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        tables = {row[0] for row in copy.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"runs", "totals"} <= tables and before > 0


@pytest.mark.integration
def test_quick_start_calls_answer_as_shown(tmp_path: Path) -> None:
    server = make_live_server(tmp_path)
    server.start()
    try:
        for command in sorted({c for _, c in COMMANDS if _kind(c) == "quick start"}):
            proc = _bash(command.replace("127.0.0.1:9464", f"127.0.0.1:{server.port}"))
            assert proc.returncode == 0, (command, proc.stderr)
            body = json.loads(proc.stdout)
            assert not isinstance(body.get("error"), dict), (command, body)  # an error answer is {"error": {...}}
            assert body.get("outcome", "success") == "success", (command, body)
    finally:
        server.stop()


TOML_BLOCKS = [b for page in PAGES for b in blocks(page) if b.lang == "toml"]


@pytest.mark.parametrize("block", TOML_BLOCKS, ids=lambda b: f"{b.page.name}:{b.body.splitlines()[0]}")
def test_toml_block_is_a_valid_configuration(block: Block, tmp_path: Path) -> None:
    tomllib.loads(block.body)
    (tmp_path / "sidecar.toml").write_text(block.body)
    settings = load_settings({"config": str(tmp_path / "sidecar.toml"), "data_dir": str(tmp_path / "data")}, {})
    assert settings.checks or "[checks." not in block.body


RULE_BLOCKS = [b for page in PAGES for b in blocks(page) if b.lang == "yaml" and b.body.lstrip().startswith("- alert:")]


def test_alert_rules_shown_pass_promtool(tmp_path: Path) -> None:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (test.sh installs Debian's prometheus)")
    assert RULE_BLOCKS
    rules = [rule for b in RULE_BLOCKS for rule in yaml.safe_load(b.body)]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "docs", "rules": rules}]}))
    proc = subprocess.run(["promtool", "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
