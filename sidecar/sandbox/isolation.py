"""What keeps a plugin out of the sidecar that runs it, set up once per launcher, never per run.

Two layers:

- **Namespaces** (bubblewrap, when installed): the launcher starts inside its own mount, PID and
  IPC namespaces. There the sidecar's data directory, the runner's socket directory and the token
  file are covered, `/proc` lists the namespace's processes only, `/tmp` is private (as root, not
  writable by runs: each has a tmpfs of its own, `run_tmp`), and
  directories a plugin needs behind a closed ancestor (`/root`, a 0700 clone) are bound into a
  fresh, traversable tree. When the namespace's first process dies, the kernel kills everything
  inside it: nothing a plugin starts outlives the launcher.
- **An identity of its own per run** (when the sidecar runs as root): each run drops, before any
  plugin code is imported, to a uid and gid nobody else has (`setgroups([])`, `setgid`, `setuid`,
  then `no_new_privs`), so it cannot signal or trace the sidecar's processes or another run, nor
  read root's files.

Strict mode adds a read-only view of the whole system and, unless the check or the plugin says
`network = true`, a network namespace of its own (no network at all, not even loopback).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import ConfigError
from .child import PLUGIN_ID_BASE

__all__ = ["MODES", "PLUGIN_ID_BASE", "Confinement", "Isolation", "bwrap_command", "namespaces_unavailable",
           "require_available"]

log = logging.getLogger(__name__)

MODES = ("default", "strict")



@dataclass(frozen=True, slots=True)
class Confinement:
    """What one launcher enforces; runs needing another confinement get another launcher."""

    strict: bool = False
    network: bool = True
    #: the host's /proc stays visible; as root also the host's PID namespace (see `bwrap_command`)
    host_processes: bool = False
    #: as root, the primary group its runs take instead of a gid of their own (None: their own)
    group: int | None = None
    #: as root, the supplementary groups its runs take (e.g. `adm`'s, to read /var/log)
    groups: tuple[int, ...] = ()
    #: host paths its runs read, bound read-only into their view (a log directory under /tmp, say)
    read_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class Isolation:
    """The sandbox's isolation policy: the mode, and what plugins must not see or must read."""

    mode: str = "default"
    #: paths covered inside the namespace: data directory, runner socket directory, token file
    hidden: tuple[str, ...] = ()
    #: directories plugins import from, beyond the interpreter's own `sys.path` (plugin directories)
    readable: tuple[str, ...] = ()
    bwrap: str | None = field(default_factory=lambda: shutil.which("bwrap"))

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"isolation must be one of {', '.join(MODES)}, got {self.mode!r}")

    def confinement(self, mode: str | None = None, network: bool = False, host_processes: bool = False,
                    group: int | None = None, groups: tuple[int, ...] = (),
                    read_paths: tuple[str, ...] = ()) -> Confinement:
        """The confinement of one run: its check's mode (else ours); network only matters in strict."""
        strict = (mode or self.mode) == "strict"
        return Confinement(strict=strict, network=network or not strict, host_processes=host_processes,
                           group=group, groups=tuple(sorted(set(groups))), read_paths=tuple(sorted(set(read_paths))))


def require_available(mode: str, bwrap: str | None = None) -> None:
    """Strict mode cannot be had without working namespaces: refuse to start rather than run unconfined."""
    if mode != "strict":
        return
    bwrap = bwrap or shutil.which("bwrap")
    if bwrap is None:
        raise ConfigError("isolation = strict needs bubblewrap (the `bwrap` command, Debian package `bubblewrap`), "
                          "which is not on PATH")
    why = namespaces_unavailable(bwrap)
    if why:
        raise ConfigError(f"isolation = strict: bubblewrap cannot create namespaces here ({why}); a container "
                          "needs user namespaces allowed (its seccomp profile may block them)")


@functools.cache
def namespaces_unavailable(bwrap: str) -> str | None:
    """Why bubblewrap fails here (e.g. a container's seccomp profile forbids user namespaces), else None."""
    cmd = [bwrap, "--unshare-pid", "--unshare-ipc", *([] if os.geteuid() == 0 else ["--unshare-user"]),
           "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--", sys.executable, "-S", "-c", ""]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode != 0:
        why = done.stderr.strip() or f"exit status {done.returncode}"
        log.warning("bubblewrap cannot create namespaces here: %s", why)
        return why
    return None


def _closed_ancestor(path: str) -> str | None:
    """The outermost directory above `path` that other users cannot enter, if any."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts)):
        ancestor = "/" + "/".join(parts[:i])
        try:
            if not os.stat(ancestor).st_mode & stat.S_IXOTH:
                return ancestor
        except OSError:
            return None
    return None


def needed_paths(readable: Iterable[str] = ()) -> list[str]:
    """What a plugin must be able to read: the interpreter, its `sys.path`, the plugin directories."""
    candidates = [sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable)),
                  *sys.path, *readable]
    out: list[str] = []
    for p in candidates:
        if not p:
            continue
        real = os.path.realpath(p)
        if os.path.exists(real) and real != "/" and real not in out:
            out.append(real)
    return out


def bwrap_command(bwrap: str, confinement: Confinement, needed: Iterable[str], hidden: Iterable[str],
                  as_root: bool, writable: Iterable[str] = ()) -> list[str]:
    """bubblewrap's arguments for a launcher (pure: decided from the paths' modes, nothing started).

    `host_processes` as root shares the host's PID namespace: `ps` (hence `check_procs`) reads
    `/proc/<getpid()>` and fails ("lookup self") when a namespace's pid names nobody in the host's /proc.
    Signals stay in all the same (each run has a uid of its own) and runs stay in their units. Not as root,
    the runs share the sidecar's uid, so the PID namespace is what keeps their signals in: it stays.
    """
    args = [bwrap, "--unshare-ipc", "--unshare-uts"]
    if not (confinement.host_processes and as_root):
        args.insert(1, "--unshare-pid")
    if not as_root:
        args.append("--unshare-user")
    if confinement.strict and not confinement.network:
        args.append("--unshare-net")
    args += ["--ro-bind" if confinement.strict else "--bind", "/", "/", "--dev", "/dev"]
    if not confinement.host_processes:  # else the host's /proc, bound with `/`, stays
        args += ["--proc", "/proc"]
    # As root each run has a uid and a tmpfs of its own (`run_tmp`): no run may write a /tmp another reads.
    shared_tmp = "0711" if as_root else "1777"
    args += ["--perms", shared_tmp, "--tmpfs", "/tmp"]
    if os.path.isdir("/var/tmp"):
        args += ["--perms", shared_tmp, "--tmpfs", "/var/tmp"]
    covered = ["/tmp", "/var/tmp"]
    binds: list[str] = []
    for path in needed:
        closed = _closed_ancestor(path)
        if closed and not any(_within(closed, c) for c in covered):
            args += ["--tmpfs", closed]  # hide the closed directory, then bind back only what is needed
            covered.append(closed)
        if path not in covered and any(_within(path, c) for c in covered):
            binds.append(path)
    made: set[str] = set()
    bound: list[str] = []
    for path in sorted(set(binds), key=lambda p: p.count("/")):
        if any(_within(path, b) for b in bound):
            continue  # visible already through a bind of its ancestor
        # bubblewrap creates missing parents 0700: create those on a tmpfs (not inside a bind) 0755 first
        parts = path.strip("/").split("/")
        for parent in ("/" + "/".join(parts[:i]) for i in range(1, len(parts))):
            if (parent not in covered and parent not in made and any(_within(parent, c) for c in covered)
                    and not any(_within(parent, b) for b in bound)):
                args += ["--perms", "0755", "--dir", parent]
                made.add(parent)
        args += ["--ro-bind", path, path]
        bound.append(path)
    for path in confinement.read_paths:  # granted by the operator: read-only, over a private /tmp too
        real = os.path.realpath(path)
        if not any(_within(real, b) for b in bound):
            args += ["--ro-bind", real, real]
    for path in writable:  # the sandbox's cgroup subtree: the launcher makes a unit per run there
        args += ["--bind", path, path]
    for path in hidden:
        real = os.path.realpath(path)
        if os.path.isdir(real):
            args += ["--perms", "0700", "--tmpfs", real]
        elif os.path.exists(real):
            args += ["--ro-bind", "/dev/null", real]
    return [*args, "--"]


def _within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")
