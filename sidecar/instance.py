"""What one `sidecar serve` holds on the file system: its data directory and its runtime directory.

Both claims are `flock`s. The kernel drops a lock when its holder's last descriptor closes — on exit,
crash or SIGKILL alike — so a claim can never outlive its sidecar, and a lock that can be taken marks
what a dead sidecar left behind. The descriptors are close-on-exec: no child (gunicorn, the launcher,
a plugin) inherits a claim and keeps it alive.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import tempfile

from .errors import StoreUnavailable

__all__ = ["RUNTIME_PREFIX", "claim_data_dir", "make_runtime_dir", "remove_stale_runtime_dirs"]

log = logging.getLogger(__name__)

#: The lock file in the data directory; it holds the holder's pid, for the message a second sidecar gets.
DATA_DIR_LOCK = "sidecar.lock"
#: Runtime directories (the runner's socket) are `<tmp>/sidecar-XXXXXXXX`, each with this lock file.
RUNTIME_PREFIX = "sidecar-"
RUNTIME_LOCK = ".lock"


def _try_lock(path: str, flags: int = os.O_RDWR | os.O_CREAT) -> int | None:
    """An open descriptor holding an exclusive flock on `path`, or None if someone else holds it."""
    fd = os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


def claim_data_dir(data_dir: str) -> int:
    """Make `data_dir` this sidecar's alone, for as long as the returned descriptor stays open.

    A second sidecar on the same directory would write the same history (counters and health both
    wrong): it is refused with the holder's pid instead."""
    path = os.path.join(data_dir, DATA_DIR_LOCK)
    try:
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        fd = _try_lock(path)
    except OSError as exc:
        raise StoreUnavailable(f"cannot use data directory {data_dir}: {exc.strerror or exc}") from None
    if fd is None:
        holder = ""
        with contextlib.suppress(OSError), open(path) as f:
            holder = f.read(32).strip()
        raise StoreUnavailable(f"data directory {data_dir} is in use by another sidecar"
                               + (f" (pid {holder})" if holder.isdigit() else "")
                               + ": stop it, or give this one another --data-dir")
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def make_runtime_dir(base: str | None = None) -> tuple[str, int]:
    """A new private (0700) runtime directory and the descriptor of the lock that marks it as in use."""
    path = tempfile.mkdtemp(prefix=RUNTIME_PREFIX, dir=base)
    fd = _try_lock(os.path.join(path, RUNTIME_LOCK))
    assert fd is not None, "a directory just made cannot be locked by anyone else"
    return path, fd


def remove_stale_runtime_dirs(base: str | None = None) -> list[str]:
    """Remove the runtime directories that killed sidecars left (their lock is free); keep live ones'.

    Only directories of ours are touched: named `sidecar-*`, owned by this uid, holding a lock file."""
    base = base or tempfile.gettempdir()
    removed: list[str] = []
    try:
        names = os.listdir(base)
    except OSError:
        return removed
    for name in names:
        path = os.path.join(base, name)
        if not name.startswith(RUNTIME_PREFIX):
            continue
        try:
            st = os.lstat(path)
            if not os.path.isdir(path) or os.path.islink(path) or st.st_uid != os.geteuid():
                continue
            fd = _try_lock(os.path.join(path, RUNTIME_LOCK), os.O_RDWR)  # never create one in a stranger
        except OSError:
            continue  # no lock file (not ours, or an older sidecar's), or gone meanwhile
        if fd is None:
            continue  # a live sidecar's
        try:
            shutil.rmtree(path)
            removed.append(path)
        except OSError as exc:
            log.warning("cannot remove a stale runtime directory %s: %s", path, exc)
        finally:
            os.close(fd)
    return removed
