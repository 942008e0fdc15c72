"""File-system faults for tests: a small tmpfs to fill, a read-only mount, a frozen ext4 (root only).

As root, `chmod` does not stop writes, so real faults need mounts; tests that use these skip
cleanly when not root or when mounting is not allowed (an unprivileged container).
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["ext4", "fill", "frozen", "read_only_mount", "tmpfs"]


def _mount(*args: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a file system needs root")
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} not allowed here: {done.stderr.strip()}")


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=True)


@contextmanager
def tmpfs(path: Path, size: str = "2m") -> Iterator[Path]:
    """A fresh tmpfs of `size` at `path` (created), unmounted on exit."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path))
    try:
        yield path
    finally:
        _umount(path)


@contextmanager
def read_only_mount(source: Path, target: Path) -> Iterator[Path]:
    """`source` seen read-only at `target` (a read-only bind mount)."""
    target.mkdir(parents=True, exist_ok=True)
    _mount("--bind", str(source), str(target))
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True, capture_output=True)
        yield target
    finally:
        _umount(target)


def fill(directory: Path) -> Path:
    """Fill the file system holding `directory` to the last byte; delete the returned file to free it."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\0" * 65536
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    return filler


@contextmanager
def ext4(path: Path, size_mb: int = 16) -> Iterator[Path]:
    """A fresh ext4 file system of `size_mb` on a loop device, mounted at `path` (created)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a file system needs root")
    path.mkdir(parents=True, exist_ok=True)
    image = path.with_name(path.name + ".img")
    with open(image, "wb") as f:
        f.truncate(size_mb << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"mkfs.ext4 not usable here: {made.stderr.strip()}")
    _mount("-o", "loop", str(image), str(path))  # skips when there is no loop device to take
    try:
        yield path
    finally:
        _umount(path)
        image.unlink()


@contextmanager
def frozen(mount: Path) -> Iterator[None]:
    """The file system mounted at `mount` frozen (`fsfreeze -f`: every write blocks), thawed on exit."""
    done = subprocess.run(["fsfreeze", "-f", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"fsfreeze not allowed here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["fsfreeze", "-u", str(mount)], check=True)
