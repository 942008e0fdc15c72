"""The file-system claims of one sidecar: its data directory, its runtime directory, a killed one's leftovers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.errors import StoreUnavailable
from sidecar.instance import claim_data_dir, make_runtime_dir, remove_stale_runtime_dirs


def test_a_data_directory_has_one_holder_at_a_time(tmp_path: Path) -> None:
    data = tmp_path / "data"
    fd = claim_data_dir(str(data))
    try:
        with pytest.raises(StoreUnavailable, match=rf"in use by another sidecar \(pid {os.getpid()}\)"):
            claim_data_dir(str(data))
    finally:
        os.close(fd)
    os.close(claim_data_dir(str(data)))  # released with its descriptor


def test_a_claim_is_not_inherited_by_children(tmp_path: Path) -> None:
    """A child that outlives the sidecar (a stuck gunicorn, a plugin) must not keep the directory claimed."""
    fd = claim_data_dir(str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", "import sys; print('up', flush=True); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=False)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"up\n"  # past exec: only an inherited descriptor could hold the lock now
        os.close(fd)
        os.close(claim_data_dir(str(tmp_path)))
    finally:
        child.communicate(b"")


def test_an_unusable_data_directory_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreUnavailable, match="cannot use data directory"):
        claim_data_dir(str(tmp_path / "file" / "data"))


def test_stale_runtime_directories_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    live, live_fd = make_runtime_dir(str(tmp_path))
    dead, dead_fd = make_runtime_dir(str(tmp_path))
    Path(dead, "runner.sock").write_text("")
    os.close(dead_fd)  # its sidecar was killed: the kernel dropped the lock
    unlocked = tmp_path / "sidecar-older"  # no lock file: not provably ours, kept
    unlocked.mkdir()
    other = tmp_path / "something-else"
    other.mkdir()
    try:
        assert remove_stale_runtime_dirs(str(tmp_path)) == [dead]
        assert not os.path.exists(dead)
        assert os.path.isdir(live) and unlocked.is_dir() and other.is_dir()
    finally:
        os.close(live_fd)
