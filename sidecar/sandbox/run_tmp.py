"""A run's temporary directory (its `TMPDIR` and `HOME`): a tmpfs of its own wherever the launcher may mount.

Where the launcher runs as root (in bubblewrap's namespaces or not), it gives each run, and each template,
a tmpfs mounted at that directory: bounded by the run's memory limit (`size=`), charged to the run's memory
cgroup where one exists (tmpfs pages count to the cgroup of the process that writes them), and gone, with
everything in it, when the run ends (a lazy unmount after the run's report: nobody waits for it). The
launcher's own `/tmp`, a private tmpfs in bubblewrap's namespaces, is then `0711` root: runs, each with a uid
of its own, cannot write a `/tmp` they would share. Mounts are made in the launcher's own mount namespace,
entered at its start, so that none reaches the host.

Without root the launcher cannot mount: a run's directory is a plain directory, removed when the run ends,
and bounded by nothing but the disk (or memory) under it. `describe` says which holds.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil

__all__ = ["RunTmp", "can_mount", "describe", "enter_private_mounts"]

log = logging.getLogger(__name__)

_CLONE_NEWNS = 0x00020000
_MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_REC, _MS_SLAVE = 2, 4, 32, 1 << 14, 1 << 19
_MNT_DETACH = 2
_MIB = 1024 * 1024
_CAP_SYS_ADMIN = 21

try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - non-glibc platforms
    _libc = None


def can_mount() -> bool:
    """Root with CAP_SYS_ADMIN (a container's root usually lacks it): then the launcher mounts."""
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/status") as f:
            caps = next((line.split()[1] for line in f if line.startswith("CapEff:")), "0")
    except OSError:
        return False
    return bool(int(caps, 16) >> _CAP_SYS_ADMIN & 1)


def enter_private_mounts() -> bool:
    """As root: a mount namespace of the launcher's own, receiving the host's mounts but never sending one."""
    if _libc is None or not can_mount():
        return False
    if _libc.unshare(_CLONE_NEWNS) != 0:
        return False
    return bool(_libc.mount(b"none", b"/", None, _MS_REC | _MS_SLAVE, None) == 0)


def describe(mounts: bool, namespaces: bool) -> str:
    """What a run's /tmp is here (the log, `sidecar settings`, `/readyz`); `mounts`: `can_mount()`."""
    if not mounts:
        return "TMPDIR a directory per run, removed at its end (no mount without root: not bounded by size)"
    if namespaces:
        return "TMPDIR a tmpfs per run (size = memory limit), /tmp not writable by runs"
    return "TMPDIR a tmpfs per run (size = memory limit); /tmp is the host's (no bubblewrap)"


class RunTmp:
    """Makes and removes runs' and templates' directories under the launcher's temporary directory."""

    def __init__(self, root: str, mount: bool) -> None:
        self.root = root
        #: each mounted directory's size in MiB: a spare whose run has the limit it was made with is not remounted
        self.sizes: dict[str, int] = {}
        #: whether each directory is a tmpfs of its own: probed once, at the launcher's start
        self.mounts = mount and self._probe()

    def _probe(self) -> bool:
        path = os.path.join(self.root, f"sidecar-probe-{os.urandom(8).hex()}")
        try:
            os.mkdir(path, 0o700)
        except OSError as exc:
            log.warning("no run directories under %s: %s", self.root, exc)
            return False
        ok = self._mount(path, 1)
        if ok:
            self._unmount(path)
        else:
            log.warning("runs' temporary directories are plain directories: mounting a tmpfs failed (%s)",
                        os.strerror(ctypes.get_errno()))
        os.rmdir(path)
        return ok

    def make(self, kind: str, memory_limit_mb: int) -> str:
        """A fresh directory (`kind`: run or template), mode 0700; a tmpfs of that size where we mount.

        Raises OSError when it cannot be made (the caller treats it like a failed fork).
        """
        path = os.path.join(self.root, f"sidecar-{kind}-{os.urandom(8).hex()}")
        os.mkdir(path, 0o700)
        if self.mounts and not self._mount(path, memory_limit_mb):
            err = ctypes.get_errno()
            os.rmdir(path)
            raise OSError(err, f"tmpfs for {path}: {os.strerror(err)}")
        if self.mounts:
            self.sizes[path] = memory_limit_mb
        return path

    def resize(self, path: str, memory_limit_mb: int) -> bool:
        """Bound a spare's directory by its run's memory limit, known once the run starts.

        False when the run already holds more there than its limit (the caller ends it as over its memory).
        """
        if not self.mounts or self.sizes.get(path) == memory_limit_mb:
            return True
        if not self._mount(path, memory_limit_mb, _MS_REMOUNT):
            return False
        self.sizes[path] = memory_limit_mb
        return True

    def remove(self, path: str) -> None:
        """Gone with everything in it (a lazy unmount: open files do not keep the directory)."""
        if self.mounts:
            self._unmount(path)
            self.sizes.pop(path, None)
        shutil.rmtree(path, ignore_errors=True)

    @staticmethod
    def _mount(path: str, size_mb: int, flags: int = 0) -> bool:
        if _libc is None:
            return False
        size = f"size={size_mb * _MIB}"
        options = (size if flags & _MS_REMOUNT else f"{size},mode=0700").encode()
        return bool(_libc.mount(b"tmpfs", path.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV | flags, options) == 0)

    @staticmethod
    def _unmount(path: str) -> None:
        if _libc is not None:
            _libc.umount2(path.encode(), _MNT_DETACH)
