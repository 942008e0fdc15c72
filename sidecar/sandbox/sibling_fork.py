"""A fork whose child is our parent's child: how a template hands the launcher a run in one fork, not two.

The launcher must be a run's parent (it reaps it, reads its status and rusage, judges what it leaves). A
template's plain fork would make the run the template's child; the classic way round, forking twice and
letting the middle process exit so that the run is re-parented to the launcher (a child subreaper), costs
a whole extra process per run: a copy of the template's page tables, its first writes, its exit. Measured
with the built-in `echo`, that middle process was 0.86 ms of CPU per run, a third of a run's total.

`clone3(CLONE_PARENT)` makes the child the launcher's from birth. It is `os.fork` in every way Python sees
(the interpreter's before/after hooks run, so `random` reseeds and the import lock is reset), but glibc's
own fork wrapper is bypassed: its `pthread_atfork` handlers do not run in the child, and the child's
thread descriptor keeps the template's thread id (only `pthread_kill` of the main thread from another
thread would notice). OpenSSL, the one library of note that relies on fork detection, detects a new
process by its pid and reseeds (a test holds it to that). Where `clone3` is refused (kernels before 5.3,
seccomp profiles that answer ENOSYS) `fork_sibling` answers None from the first refusal on, and the
template forks twice as before.
"""

from __future__ import annotations

import ctypes
import errno
import os

__all__ = ["fork_sibling", "supported"]

#: clone3's number is the same on every architecture (added after the syscall tables were unified)
_SYS_CLONE3 = 435
_CLONE_PARENT = 0x00008000


class _CloneArgs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in
                ("flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size", "tls")]


try:  # PyDLL: the GIL stays held across the call, as os.fork holds it across fork()
    _syscall = ctypes.PyDLL(None, use_errno=True).syscall
    _syscall.restype = ctypes.c_long
    _api = ctypes.pythonapi
    for _hook in (_api.PyOS_BeforeFork, _api.PyOS_AfterFork_Parent, _api.PyOS_AfterFork_Child):
        _hook.restype = None
        _hook.argtypes = []
    _available = True
except (OSError, AttributeError):  # pragma: no cover - non-glibc platforms
    _available = False

#: None until the first attempt; then whether clone3(CLONE_PARENT) works here
_works: bool | None = None


def supported() -> bool:
    """Whether the last attempt (if any) found clone3(CLONE_PARENT) usable here."""
    return _available and _works is not False


def fork_sibling() -> int | None:
    """Fork a child whose parent is our parent: its pid in the parent, 0 in the child, None where the kernel
    refuses (the caller then forks twice). Raises OSError as `os.fork` does for a fork that failed."""
    global _works
    if not _available or _works is False:
        return None
    # No exit signal of its own: with CLONE_PARENT the kernel gives the child ours (SIGCHLD, to the launcher).
    args = _CloneArgs(flags=_CLONE_PARENT)
    _api.PyOS_BeforeFork()
    pid = _syscall(ctypes.c_long(_SYS_CLONE3), ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args)))
    err = ctypes.get_errno()
    if pid == 0:  # pragma: no cover - runs in the child
        _api.PyOS_AfterFork_Child()
        return 0
    _api.PyOS_AfterFork_Parent()
    if pid > 0:
        _works = True
        return int(pid)
    if err in (errno.ENOSYS, errno.EINVAL, errno.EPERM) and not _works:
        _works = False  # never worked here: fork twice from now on
        return None
    raise OSError(err, f"clone3: {os.strerror(err)}")
