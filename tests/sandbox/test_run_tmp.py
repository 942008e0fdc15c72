"""A run's temporary directory is its own, bounded and gone at its end (`sidecar.sandbox.run_tmp`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.sandbox.client import PluginRef, RunRequest, Sandbox
from sidecar.sandbox.isolation import Isolation, namespaces_unavailable
from sidecar.sandbox.result import Outcome, PluginSandboxResult
from sidecar.sandbox.run_tmp import RunTmp, can_mount, describe

from .conftest import HOSTILE

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a tmpfs per run needs root (without: a directory)")


@pytest.fixture(scope="module", params=[True, False], ids=["templates", "per-run-import"])
def served(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    iso = Isolation()
    if iso.bwrap is None or namespaces_unavailable(iso.bwrap):
        pytest.skip("bubblewrap cannot create namespaces here")
    with Sandbox(isolation=iso, templates=request.param) as sb:
        yield sb


def _fill(sb: Sandbox, memory_mb: int, megabytes: int, leave: str) -> PluginSandboxResult:
    ref = PluginRef("fill_tmp", path=str(HOSTILE / "fill_tmp.py"))
    return sb.run(RunRequest(ref, {"megabytes": megabytes, "leave": leave}, timeout_seconds=30.0,
                             memory_limit_mb=memory_mb))


def test_a_run_that_fills_its_tmp_hits_its_memory_limit_and_the_next_run_sees_nothing(served: Sandbox) -> None:
    first = _fill(served, memory_mb=256, megabytes=512, leave="first")
    # The bound: the tmpfs' size, or the run's memory cgroup (tmpfs pages are charged to it) if that is hit first.
    if first.outcome is Outcome.SUCCESS:
        assert first.result is not None
        assert first.result["size_mb"] == 256
        assert first.result["written_mb"] < 256 and first.result["error"] == "No space left on device"
        assert first.result["shared_written"] is False  # /tmp itself is no run's to write
    else:
        assert first.outcome is Outcome.MEMORY, (first.outcome, first.error)
    second = _fill(served, memory_mb=256, megabytes=1, leave="second")
    assert second.outcome is Outcome.SUCCESS, (second.outcome, second.error)
    assert second.result is not None
    assert second.result["seen"] == [] and second.result["shared_seen"] is False
    assert second.result["shared_written"] is False
    assert second.result["error"] is None  # its size: resized to its limit once the launcher hears it started


def test_the_library_as_root_gives_each_run_a_bounded_tmpfs() -> None:
    with Sandbox(templates=False) as sb:
        r = _fill(sb, memory_mb=64, megabytes=128, leave="lib")
    assert r.outcome in (Outcome.SUCCESS, Outcome.MEMORY), (r.outcome, r.error)
    if r.outcome is Outcome.SUCCESS:
        assert r.result is not None
        assert r.result["size_mb"] == 64 and r.result["error"] == "No space left on device"


def test_without_mounts_a_run_directory_is_plain_and_removed(tmp_path: Path) -> None:
    tmp = RunTmp(str(tmp_path), mount=False)
    assert tmp.mounts is False
    path = tmp.make("run", 64)
    assert os.path.isdir(path) and (os.stat(path).st_mode & 0o777) == 0o700
    Path(path, "left").write_text("x")
    tmp.remove(path)
    assert not os.path.exists(path)


def test_as_root_a_run_directory_is_a_sized_tmpfs_gone_after_removal(tmp_path: Path) -> None:
    tmp = RunTmp(str(tmp_path), mount=True)
    if not tmp.mounts:
        pytest.skip("this process cannot mount a tmpfs here")
    path = tmp.make("run", 8)
    try:
        st = os.statvfs(path)
        assert st.f_blocks * st.f_frsize == 8 << 20
        Path(path, "two").write_bytes(b"x" * (2 << 20))
        assert tmp.resize(path, 16)
        assert not tmp.resize(path, 1)  # it holds more than that: the launcher ends such a run as over its memory
    finally:
        tmp.remove(path)
    assert not os.path.exists(path)


def test_root_here_can_mount_and_says_so_in_the_containment_line() -> None:
    assert can_mount()  # CI runs as root with CAP_SYS_ADMIN: the tmpfs path is the one under test
    with Sandbox(templates=False) as sb:
        assert "TMPDIR a tmpfs per run" in sb.containment


def test_describe_says_what_a_runs_tmp_is() -> None:
    assert "tmpfs per run" in describe(True, True) and "not writable" in describe(True, True)
    assert "host's" in describe(True, False)
    assert "directory per run" in describe(False, True)
