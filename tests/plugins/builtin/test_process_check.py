from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.plugins.builtin import process_check

from .reported import critical, state_of


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A live python child that waits on its stdin (no sleeping): it exits when the fixture closes stdin."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()


def _pid_file(tmp_path: Path, content: str) -> str:
    path = tmp_path / "service.pid"
    path.write_text(content)
    return str(path)


def test_pid_file_of_this_process(tmp_path: Path) -> None:
    result = process_check.run(pid_file=_pid_file(tmp_path, f"{os.getpid()}\n"))
    assert result["count"] == 1
    assert result["pids"] == [os.getpid()]
    assert isinstance(result["rss_bytes"], int) and result["rss_bytes"] > 0


def test_pid_file_with_trailing_text(tmp_path: Path) -> None:
    assert process_check.run(pid_file=_pid_file(tmp_path, f"  {os.getpid()} extra\n"))["count"] == 1


def test_pid_file_min_count_above_one_is_critical(tmp_path: Path) -> None:
    critical("found 1 processes from pid file .*at least 2",
             lambda: process_check.run(pid_file=_pid_file(tmp_path, str(os.getpid())), min_count=2))


def test_missing_pid_file_is_critical(tmp_path: Path) -> None:
    critical("does not exist", lambda: process_check.run(pid_file=str(tmp_path / "nope.pid")))


def test_unreadable_pid_file_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="cannot read pid file"):
        process_check.run(pid_file=str(tmp_path))  # a directory


@pytest.mark.parametrize("content", ["", "\n", "abc", "-5", "0", "12.5"])
def test_garbage_pid_file_raises(tmp_path: Path, content: str) -> None:
    with pytest.raises(RuntimeError, match="does not hold a pid"):
        process_check.run(pid_file=_pid_file(tmp_path, content))


def test_stale_pid_file_is_critical(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid is gone
    critical(f"process {proc.pid} .* is not running",
             lambda: process_check.run(pid_file=_pid_file(tmp_path, str(proc.pid))))


@pytest.mark.skipif(not hasattr(os, "waitid"), reason="needs os.waitid")
def test_zombie_pid_file_is_critical(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # wait for the exit, leave it unreaped
        critical("zombie", lambda: process_check.run(pid_file=_pid_file(tmp_path, str(proc.pid))))
    finally:
        proc.wait()


def test_by_name_finds_child(child: subprocess.Popen[bytes]) -> None:
    result = process_check.run(name=os.path.basename(sys.executable))
    pids = result["pids"]
    assert isinstance(pids, list) and child.pid in pids
    assert result["count"] == len(pids) >= 1
    assert os.getpid() not in pids  # the probe never counts itself
    assert isinstance(result["rss_bytes"], int) and result["rss_bytes"] > 0


def test_by_name_min_count(child: subprocess.Popen[bytes]) -> None:
    name = os.path.basename(sys.executable)
    critical(f"processes named {name!r}, expected at least 100000",
             lambda: process_check.run(name=name, min_count=100_000))


def test_unknown_name_is_critical() -> None:
    critical("found 0 processes named 'no-such-process-sidecar-test'",
             lambda: process_check.run(name="no-such-process-sidecar-test"))


def test_min_count_zero_accepts_none() -> None:
    state, result = state_of(lambda: process_check.run(name="no-such-process-sidecar-test", min_count=0))
    assert state is None and result == {"count": 0, "pids": [], "rss_bytes": 0, "cpu_seconds": 0.0}


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({}, "exactly one of name or pid_file"),
        ({"name": "x", "pid_file": "/run/x.pid"}, "exactly one of name or pid_file"),
        ({"name": ""}, "name must be"),
        ({"name": 5}, "name must be"),
        ({"pid_file": ""}, "pid_file must be"),
        ({"pid_file": ["/run/x.pid"]}, "pid_file must be"),
        ({"name": "x", "min_count": -1}, "min_count must be"),
        ({"name": "x", "min_count": 1.0}, "min_count must be"),
        ({"name": "x", "min_count": False}, "min_count must be"),
    ],
)
def test_bad_params_raise_value_error(params: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        process_check.run(**params)  # type: ignore[arg-type]
