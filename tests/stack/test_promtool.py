"""promtool (and amtool, when installed) against the shipped Prometheus and Alertmanager files."""

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _tool(name: str, *, required_in_ci: bool = True) -> str:
    path = shutil.which(name)
    if path is None:
        if required_in_ci and _in_ci():
            pytest.fail(f"{name} is not on PATH (required under CI; Debian package `prometheus`)")
        pytest.skip(f"{name} is not on PATH")
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)


def _assert_ok(proc: subprocess.CompletedProcess[str]) -> None:
    output = f"$ {' '.join(map(str, proc.args))}\n{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == 0, output
    assert "WARNING" not in proc.stdout + proc.stderr, output


def credentials_files(config: dict[str, Any]) -> list[str]:
    """Every scrape job's `authorization.credentials_file`."""
    return [job["authorization"]["credentials_file"] for job in config["scrape_configs"] if "authorization" in job]


def test_check_config(tmp_path: Path) -> None:
    """The shipped config in full, its relative paths made absolute and the token path (a compose secret, absent
    here) pointed at a file that exists: promtool checks that every file the config names is there."""
    base = REPO_ROOT / "prometheus"
    config = yaml.safe_load((base / "prometheus.yml").read_text())
    assert credentials_files(config), "the probe job must authenticate"
    token = tmp_path / "sidecar-api-token"
    token.write_text("t0ken")
    config["rule_files"] = [str(base / name) for name in config["rule_files"]]
    for job in config["scrape_configs"]:
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(token)
        for sd in job.get("file_sd_configs", ()):
            sd["files"] = [str(base / pattern) for pattern in sd["files"]]
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(config, sort_keys=False))
    _assert_ok(_run(_tool("promtool"), "check", "config", str(checked)))


def test_check_rules() -> None:
    _assert_ok(_run(_tool("promtool"), "check", "rules", "prometheus/alerts.yml", "prometheus/recording.yml"))


def test_rule_unit_tests() -> None:
    _assert_ok(_run(_tool("promtool"), "test", "rules", "prometheus/alerts.test.yml"))


def test_generated_prometheusrule_groups_are_valid_rules(tmp_path: Path) -> None:
    manifest = yaml.safe_load((REPO_ROOT / "deploy/kubernetes/prometheusrule.yaml").read_text())
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": manifest["spec"]["groups"]}))
    _assert_ok(_run(_tool("promtool"), "check", "rules", str(rules)))


def test_alertmanager_config() -> None:
    # amtool ships with Alertmanager (Debian package `prometheus-alertmanager`), which test.sh does not
    # install: this check runs where it is available.
    _assert_ok(_run(_tool("amtool", required_in_ci=False), "check-config", "alertmanager/alertmanager.yml"))
