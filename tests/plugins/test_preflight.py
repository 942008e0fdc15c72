"""What `sidecar check` predicts from sources and modes, without running a plugin."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sidecar.plugins.preflight import Finding, check_params, check_paths, check_readable, run_signature

DISK_USAGE = (Path(__file__).parents[2] / "sidecar" / "plugins" / "builtin" / "disk_usage.py").read_text()


def _lines(findings: list[Finding]) -> list[str]:
    return [f.line() for f in findings]


def test_a_misspelled_param_is_named_with_the_fix():
    sig = run_signature(DISK_USAGE)
    assert sig is not None and not sig.var_keyword
    found = _lines(check_params("sidecar.toml: [checks.root]", "disk_usage", {"paht": "/"}, sig))
    assert found == ["sidecar.toml: [checks.root]: params.paht: run() of plugin 'disk_usage' takes no parameter "
                     "'paht'; did you mean 'path'? it takes: path, max_used_percent, min_free_bytes"]


def test_types_told_by_annotations_and_defaults():
    sig = run_signature("def run(host: str, port: int, ratio: float = 0.5, flag=False, *, n: int | None = None,"
                        " blob: 'Thing' = None, **kw):\n    pass\n")
    assert sig is not None and sig.var_keyword
    found = _lines(check_params("c", "p", {"host": 1, "port": True, "ratio": 1, "flag": "yes", "n": None,
                                           "blob": [1], "anything": 2}, sig))
    assert found == ["c: params.host: 1 is not str; give host a str value",
                     "c: params.port: True is not int; give port a int value",
                     "c: params.flag: 'yes' is not bool; give flag a bool value"]
    assert _lines(check_params("c", "p", {}, sig)) == [
        "c: params.host: plugin 'p' requires 'host'; add host = ... to the check's params",
        "c: params.port: plugin 'p' requires 'port'; add port = ... to the check's params"]


def test_a_source_without_a_readable_run_tells_nothing():
    assert run_signature("def run(:\n") is None
    assert run_signature("run = lambda: 1\n") is None


@pytest.mark.parametrize(("params", "problem"), [
    ({"path": "logs/app"}, "is relative"),
    ({"path": "/tmp/app-logs"}, "is under /tmp, which is private to each run"),
    ({"path": "/srv/sidecar-data/history.sqlite3"}, "is hidden from plugins"),
    ({"path": "/no/such/dir"}, "does not exist"),
])  # fmt: skip
def test_paths_the_run_would_not_see(params, problem):
    found = _lines(check_paths("c", "disk_usage", params, hidden=["/srv/sidecar-data"]))
    assert len(found) == 1 and problem in found[0], found


def test_paths_the_run_sees_pass():
    assert check_paths("c", "disk_usage", {"path": "/"}) == []
    assert check_paths("c", "disk_usage", {"path": "/tmp"}, granted=["/tmp"]) == []  # the check's read_paths


def test_a_path_under_tmp_names_the_grant_as_the_fix():
    found = _lines(check_paths("c", "disk_usage", {"path": "/tmp/app-logs/x.log"}))
    assert "grant it with read_paths = ['/tmp/app-logs'] in the check's table" in found[0], found
    assert check_paths("c", "echo", {"path": "relative/is/fine/for/echo"}) == []


def test_a_directory_under_tmp_is_granted_itself_not_all_of_tmp(tmp_path):
    if not str(tmp_path).startswith("/tmp/"):
        pytest.skip("the test's directory is not under /tmp")
    found = _lines(check_paths("c", "disk_usage", {"path": str(tmp_path)}))
    assert f"grant it with read_paths = [{str(tmp_path)!r}]" in found[0], found


def test_a_plugin_in_a_closed_directory_is_named_with_the_fix(tmp_path: Path):
    closed = tmp_path / "secret"
    closed.mkdir(mode=0o700)
    plugin = closed / "age.py"
    plugin.write_text("def run():\n    return 1\n")
    plugin.chmod(0o600)
    found = _lines(check_readable(str(plugin), str(plugin)))
    assert found == [f"{plugin}: the file is mode -rw-------: runs, which take a uid of their own, cannot read it; "
                     f"chmod o+r {plugin}",
                     f"{plugin}: its directory is mode drwx------: runs, which take a uid of their own, cannot list "
                     f"it; chmod o+rx {closed}"]
    closed.chmod(0o755)
    plugin.chmod(0o644)
    assert check_readable(str(plugin), str(plugin)) == []
    assert os.path.exists(plugin)
