"""The unit of containment of a run: what the launcher created for it, and alone may kill.

A run's promises (its limits hold, nothing it starts outlives it, nothing of it reaches another run)
are per run, while processes are many; so each run, and each template, is one *unit*:

- **always its own session** (`setsid`): no process can join a process group of another session,
  so no run can move its children into another run's group; the unit's leader is a child subreaper
  that stays alive until the launcher ends the unit, so everything the run started, `setsid` daemons
  included, stays in the leader's process tree, which the launcher stops and kills whole;
- **a cgroup of its own where the host lets the sidecar create one** (detected once, at start, by
  `detect`): every process the run starts is in it whatever it does, so `cgroup.kill` (v2) or a
  kill of `cgroup.procs` until empty (v1) ends all of it; `memory.max`/`memory.limit_in_bytes` bounds
  the whole tree (its `/tmp` writes included); `pids.max` bounds its processes; the peak
  (`memory.peak`/`memory.max_usage_in_bytes`) is what the sidecar reports.

`detect` runs in the sidecar's own process (before any namespace is entered) and makes the runner's
subtree under its own cgroup; the launcher makes one directory of its own in it and a unit per run
there (`Units`). A process re-parented to the launcher is judged by its unit: its cgroup where units
have one, else its session; one that belongs to no live unit escaped one that ended and is killed.

What a unit costs the launcher's loop is kept off a run's way: units' directories are made ahead, while
the loop is idle (`Units.prepare`), and a spare the launcher forks moves itself into its unit before it
runs anything (`Unit.join`), since moving a process forked a moment ago waits for an RCU grace period.

The launcher imports this module, so it stays import-light (no dataclasses, no logging).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from .protocol import CgroupsWire, UnitWire

__all__ = ["Cgroups", "Unit", "Units", "describe", "detect", "end_unit_now", "kill_launcher_units", "release",
           "stop_tree"]

_CGROUP_ROOT_PREFIX = "sidecar-"


class Cgroups:
    """What the host gives this sidecar: for each hierarchy it may write, the directory made for it."""

    __slots__ = ("kill", "memory", "memory_v2", "pids", "pids_v2", "why")

    def __init__(self, kill: str | None = None, memory: str | None = None, memory_v2: bool = False,
                 pids: str | None = None, pids_v2: bool = False, why: str = "") -> None:
        #: a v2 directory: `cgroup.kill` ends a unit at once, whatever it did
        self.kill = kill
        #: the directory holding the memory controller (v2 when `memory_v2`, else v1)
        self.memory = memory
        self.memory_v2 = memory_v2
        self.pids = pids
        self.pids_v2 = pids_v2
        #: why a part is missing, for the log and the operator
        self.why = why

    @property
    def any(self) -> bool:
        return bool(self.kill or self.memory or self.pids)

    def dirs(self) -> list[str]:
        return list(dict.fromkeys(d for d in (self.kill, self.memory, self.pids) if d))

    def to_wire(self) -> CgroupsWire:
        return {"kill": self.kill, "memory": self.memory, "memory_v2": self.memory_v2, "pids": self.pids,
                "pids_v2": self.pids_v2, "why": self.why}

    @classmethod
    def from_wire(cls, wire: CgroupsWire | None) -> Cgroups:
        d: dict[str, Any] = dict(wire or {})
        return cls(d.get("kill"), d.get("memory"), bool(d.get("memory_v2")), d.get("pids"), bool(d.get("pids_v2")),
                   str(d.get("why") or ""))


def describe(cg: Cgroups | None) -> str:
    """One line saying what bounds a run here (the log, `sidecar settings`, `/readyz`)."""
    if cg is None or not cg.any:
        why = f" ({cg.why})" if cg is not None and cg.why else ""
        return f"session per run (no writable cgroup{why}): process tree kill, RLIMIT_AS, RLIMIT_NPROC per uid as root"
    parts = []
    parts.append("cgroup.kill" if cg.kill else "cgroup v1 kill loop")
    if cg.memory:
        parts.append("memory.max/memory.peak (v2)" if cg.memory_v2 else "memory.limit_in_bytes/max_usage (v1)")
    else:
        parts.append("no memory controller: RLIMIT_AS and the RSS watch")
    parts.append(("pids.max (v2)" if cg.pids_v2 else "pids.max (v1)") if cg.pids else "no pids controller")
    return "cgroup per run: " + ", ".join(parts)


# -- detection (in the sidecar's process) -----------------------------------------------------------

def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(fstype, root, mountpoint, super options) of each cgroup mount."""
    out: list[tuple[str, str, str, set[str]]] = []
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        out.append((tail[0], fields[3], fields[4].replace("\\040", " "), set(tail[2].split(","))))
    return out


def _own_cgroups() -> dict[str, str]:
    """Our cgroup per hierarchy: "" for v2, else each v1 controller name."""
    out: dict[str, str] = {}
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[1] == "":
            out[""] = parts[2]
        for ctrl in parts[1].split(","):
            if ctrl:
                out[ctrl] = parts[2]
    return out


def _dir_of(mountpoint: str, root: str, path: str) -> str | None:
    if root != "/" and not (path == root or path.startswith(root.rstrip("/") + "/")):
        return None
    rel = path[len(root):] if root != "/" else path
    return os.path.join(mountpoint, rel.lstrip("/"))


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _make(parent: str | None, name: str) -> str | None:
    if parent is None or not os.path.isdir(parent):
        return None
    path = os.path.join(parent, name)
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    except OSError:
        return None
    return path


def _sweep(parent: str) -> None:
    """Remove subtrees left by sidecars that died (empty directories whose pid is gone)."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if not name.startswith(_CGROUP_ROOT_PREFIX):
            continue
        try:
            pid = int(name[len(_CGROUP_ROOT_PREFIX):].split("-")[0])
        except ValueError:
            continue
        if os.path.exists(f"/proc/{pid}"):
            continue
        _remove_tree(os.path.join(parent, name))


def _remove_tree(path: str) -> None:
    try:
        entries = [e for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for entry in entries:
        _remove_tree(entry.path)
    with contextlib.suppress(OSError):
        os.rmdir(path)


_seq = 0


def detect(disabled: bool = False) -> Cgroups:
    """What the host gives: make this sidecar's subtree in each writable hierarchy (called once per sandbox)."""
    global _seq
    if disabled:
        return Cgroups(why="disabled by configuration")
    if not os.path.isdir("/sys/fs/cgroup"):
        return Cgroups(why="no /sys/fs/cgroup")
    mounts = _mounts()
    own = _own_cgroups()
    _seq += 1
    name = f"{_CGROUP_ROOT_PREFIX}{os.getpid()}-{_seq}"
    found = Cgroups()
    whys: list[str] = []
    for fstype, root, mountpoint, _opts in mounts:
        if fstype != "cgroup2" or "" not in own or found.kill:
            continue
        base = _dir_of(mountpoint, root, own[""])
        if base is None:
            continue
        _sweep(base)
        sub = _make(base, name)
        if sub is None:
            whys.append(f"cgroup v2 at {mountpoint} is not writable")
            continue
        if not os.path.exists(os.path.join(sub, "cgroup.kill")):
            whys.append("cgroup v2 without cgroup.kill (kernel < 5.14)")
            _remove_tree(sub)
            continue
        found.kill = sub
        try:
            available = set(_read(os.path.join(base, "cgroup.controllers")).split())
        except OSError:
            available = set()
        wanted = [c for c in ("memory", "pids") if c in available]
        enabled = set(_read(os.path.join(base, "cgroup.subtree_control")).split()) if wanted else set()
        for ctrl in wanted:
            if ctrl not in enabled:
                with contextlib.suppress(OSError):  # EBUSY when our own cgroup holds processes
                    _write(os.path.join(base, "cgroup.subtree_control"), f"+{ctrl}")
            with contextlib.suppress(OSError):
                _write(os.path.join(sub, "cgroup.subtree_control"), f"+{ctrl}")
        try:
            on = set(_read(os.path.join(sub, "cgroup.subtree_control")).split())
        except OSError:
            on = set()
        if "memory" in on:
            found.memory, found.memory_v2 = sub, True
        if "pids" in on:
            found.pids, found.pids_v2 = sub, True
    for ctrl in ("memory", "pids"):
        if getattr(found, ctrl) or ctrl not in own:
            continue
        for fstype, root, mountpoint, opts in mounts:
            if fstype != "cgroup" or ctrl not in opts:
                continue
            base = _dir_of(mountpoint, root, own[ctrl])
            if base is None:
                continue
            _sweep(base)
            sub = _make(base, name)
            if sub is None:
                whys.append(f"cgroup v1 {ctrl} is not writable")
                break
            setattr(found, ctrl, sub)
            break
    if not found.memory and "memory" not in whys:
        whys.append("no memory controller")
    found.why = "; ".join(whys)
    return found


def release(cg: Cgroups | None) -> None:
    """Remove this sandbox's subtree (after its launchers stopped)."""
    if cg is None:
        return
    for d in cg.dirs():
        _remove_tree(d)


def kill_launcher_units(cg: Cgroups | None, tag: str) -> None:
    """From the runner: SIGKILL every process in the units of the launcher whose directory is `tag` (it stopped
    answering and is being replaced; it cannot end them itself)."""
    if cg is None:
        return
    if cg.kill:
        with contextlib.suppress(OSError):
            _write(os.path.join(cg.kill, tag, "cgroup.kill"), "1")
    for parent in (cg.pids, cg.memory):
        if not parent or parent == cg.kill:
            continue
        for _ in range(16):  # v1: a forking tree refills cgroup.procs; pids.max bounds how long
            found = False
            for root, _dirs, _files in os.walk(os.path.join(parent, tag)):
                try:
                    pids = [int(p) for p in _read(os.path.join(root, "cgroup.procs")).split()]
                except (OSError, ValueError):
                    continue
                for pid in pids:
                    found = True
                    _signal(pid, signal.SIGKILL)
            if not found:
                break


# -- units (in the launcher) ------------------------------------------------------------------------

def _proc_stat(proc_pid: int) -> list[bytes] | None:
    """Fields after the command name: state, ppid, pgrp, session, ..."""
    try:
        with open(f"/proc/{proc_pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].split()


def session_of(proc_pid: int) -> int | None:
    st = _proc_stat(proc_pid)
    return int(st[3]) if st else None


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


class Unit:
    """One run's (or template's) unit: its leader, its session, its cgroup directories if any."""

    __slots__ = ("leader", "name", "dirs", "kill_dir", "memory_dir", "memory_v2", "pids_dir", "pids_v2", "limit")

    def __init__(self, leader: int, name: str) -> None:
        self.leader = leader
        self.name = name
        self.dirs: list[str] = []
        self.kill_dir: str | None = None
        self.memory_dir: str | None = None
        self.memory_v2 = False
        self.pids_dir: str | None = None
        self.pids_v2 = False
        #: the memory limit in force on its cgroup (bytes; 0: none set yet)
        self.limit = 0

    def wire(self) -> UnitWire:
        """What the caller needs to set the run's memory limit before the run reads its request, and to end
        the unit itself once it has the result (`end_unit_now`)."""
        return {"memory": self.memory_dir, "memory_v2": self.memory_v2, "kill": self.kill_dir, "limit": self.limit}

    @classmethod
    def from_wire(cls, leader: int, wire: UnitWire) -> Unit:
        unit = cls(leader, "")
        unit.kill_dir, unit.memory_dir = wire.get("kill"), wire.get("memory")
        unit.memory_v2 = bool(wire.get("memory_v2"))
        unit.dirs = [d for d in (unit.kill_dir, unit.memory_dir) if d]
        return unit

    def limit_memory(self, limit_bytes: int) -> None:
        set_memory_limit(self.memory_dir, self.memory_v2, limit_bytes)
        self.limit = limit_bytes

    def join(self) -> None:
        """From the process that leads the unit, before it runs anything of a plugin and while it is still root:
        move itself in (raises OSError where it cannot: it must then not run).

        The launcher's loop then does not pay the move: moving a process that was forked a moment ago waits
        for an RCU grace period (measured ~0.5 ms here), while the process moving itself does not hold up
        anything but itself, a spare nobody waits for yet."""
        for d in self.dirs:
            _write(os.path.join(d, "cgroup.procs"), "0")

    def peak(self) -> int:
        """The whole tree's peak (bytes), 0 when no memory controller."""
        if self.memory_dir is None:
            return 0
        name = "memory.peak" if self.memory_v2 else "memory.max_usage_in_bytes"
        try:
            return int(_read(os.path.join(self.memory_dir, name)))
        except (OSError, ValueError):
            return 0

    def oom_killed(self) -> bool:
        """Whether the memory limit of the whole tree ended one of its processes."""
        if self.memory_dir is None:
            return False
        name = "memory.events" if self.memory_v2 else "memory.oom_control"
        try:
            for line in _read(os.path.join(self.memory_dir, name)).splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
        except (OSError, ValueError):
            pass
        if not self.memory_v2:
            try:
                return int(_read(os.path.join(self.memory_dir, "memory.failcnt"))) > 0 and not self.procs()
            except (OSError, ValueError):
                return False
        return False

    def procs(self) -> list[int]:
        for d in (self.kill_dir, self.pids_dir, self.memory_dir):
            if d:
                try:
                    return [int(p) for p in _read(os.path.join(d, "cgroup.procs")).split()]
                except (OSError, ValueError):
                    return []
        return []

    def kill(self, tree: list[int]) -> None:
        """SIGKILL everything of the unit: its cgroup, its leader's process tree (found by the launcher)."""
        if self.kill_dir:
            with contextlib.suppress(OSError):
                _write(os.path.join(self.kill_dir, "cgroup.kill"), "1")
        for pid in tree:
            _signal(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.leader, signal.SIGKILL)  # its session's first group: nobody else can be in it
        if not self.kill_dir and self.dirs:
            for _ in range(64):  # v1: a forking tree refills cgroup.procs; pids.max bounds how long
                pids = self.procs()
                if not pids:
                    break
                for pid in pids:
                    _signal(pid, signal.SIGKILL)

    def empty(self) -> bool:
        return not self.dirs or not self.procs()

    def remove(self) -> bool:
        """rmdir the unit's cgroups; False while a process (a dying one) is still in them."""
        left = []
        for d in self.dirs:
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError:
                left.append(d)
        self.dirs = left
        return not left


def _host_pid(pidfd: int) -> int | None:
    """The pid a pidfd names in our PID namespace (the run's own may be bubblewrap's)."""
    try:
        with open(f"/proc/self/fdinfo/{pidfd}", "rb") as f:
            for line in f:
                if line.startswith(b"Pid:"):
                    pid = int(line.split()[1])
                    return pid if pid > 0 else None
    except (OSError, ValueError, IndexError):
        pass
    return None


def stop_tree(root: int, ours: Callable[[int], int | None] = lambda pid: pid) -> list[int]:
    """SIGSTOP every descendant of `root` (a /proc pid), so none forks meanwhile, and return them.

    `ours` names a descendant as the caller signals it (the launcher translates the host's /proc pids into its
    namespace's); None leaves it and what it started alone. At most 4,096 processes are walked."""
    found: list[int] = []
    seen: set[int] = set()
    frontier = [root]
    while frontier and len(seen) < 4096:
        parent = frontier.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children", "rb") as f:
                    kids = [int(k) for k in f.read().split()]
            except (OSError, ValueError):
                continue
            for kid in kids:
                if kid in seen:
                    continue
                seen.add(kid)
                pid = ours(kid)
                if pid is None:
                    continue
                _signal(pid, signal.SIGSTOP)
                found.append(pid)
                frontier.append(kid)
    return found


def _gone(pid: int) -> bool:
    st = _proc_stat(pid)
    return st is None or st[0] in (b"Z", b"X")


def end_unit_now(pidfd: int, wire: UnitWire | None, settle_seconds: float = 0.2) -> tuple[int, bool] | None:
    """From the caller, the moment it has a run's result: kill the run's whole unit, so that its answer need
    not wait for the launcher's exit report (the launcher still reaps, reports and cleans up after).

    On return every process of the unit has been sent SIGKILL (none runs another instruction of its own),
    and every one but the leader has died (the leader, the run's own process, is torn down by the kernel
    meanwhile: waiting for that would cost a run the time of its exit). (peak memory bytes of the unit,
    whether its cgroup's limit killed one of it); None where this cannot be done here (no `cgroup.kill`
    or no memory controller: the launcher's report says), or the unit did not empty within
    `settle_seconds` (the report then says what became of it)."""
    if not wire or not wire.get("kill") or not wire.get("memory"):
        return None
    leader = _host_pid(pidfd)  # None: the launcher reaped it already; its cgroup holds whatever it left
    unit = Unit.from_wire(leader or 0, wire)
    tree: list[int] = []
    if leader is not None:
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(pidfd, signal.SIGSTOP)
        tree = stop_tree(leader)  # what left the cgroup (a root run may move itself) is still in its tree
    with contextlib.suppress(OSError):
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    _kill_unit(unit, tree)
    deadline = time.monotonic() + settle_seconds
    pause = 0.0002
    while [p for p in unit.procs() if p != leader] or not all(_gone(p) for p in tree):
        if time.monotonic() >= deadline:
            return None
        time.sleep(pause)
        pause = min(pause * 2, 0.005)
        _kill_unit(unit, [])  # the cgroup again; the tree's pids, maybe reaped by now, are not signalled twice
    return unit.peak(), unit.oom_killed()


def _kill_unit(unit: Unit, tree: list[int]) -> None:
    if unit.leader:
        unit.kill(tree)
    elif unit.kill_dir:  # no leader to signal (its pid may be another process's by now): the cgroup alone
        with contextlib.suppress(OSError):
            _write(os.path.join(unit.kill_dir, "cgroup.kill"), "1")


def set_memory_limit(memory_dir: str | None, v2: bool, limit_bytes: int) -> None:
    if memory_dir is None:
        return
    name = "memory.max" if v2 else "memory.limit_in_bytes"
    with contextlib.suppress(OSError):
        _write(os.path.join(memory_dir, name), str(limit_bytes))
    if not v2:  # no swap to hide in, where the kernel offers the knob
        with contextlib.suppress(OSError):
            _write(os.path.join(memory_dir, "memory.memsw.limit_in_bytes"), str(limit_bytes))
    else:
        with contextlib.suppress(OSError):
            _write(os.path.join(memory_dir, "memory.swap.max"), "0")


class Units:
    """The launcher's side: its own directory in each hierarchy, a unit per run and per template."""

    def __init__(self, cg: Cgroups, max_processes: int, tag: str | None = None, spares: int = 2) -> None:
        """`tag`: the name of the launcher's directory, chosen by the runner so that it can end every unit
        of a launcher that stopped answering (`kill_launcher_units`); `spares`: units kept made ahead."""
        self.cg = cg
        self.max_processes = max_processes
        tag = tag or f"l{os.getpid()}-{os.urandom(4).hex()}"
        self.kill_dir = _make(cg.kill, tag)
        self.memory_dir = self.kill_dir if cg.memory == cg.kill and cg.memory else _make(cg.memory, tag)
        self.pids_dir = (self.kill_dir if cg.pids == cg.kill and cg.pids
                         else self.memory_dir if cg.pids == cg.memory and cg.pids else _make(cg.pids, tag))
        self.dirs = list(dict.fromkeys(d for d in (self.kill_dir, self.memory_dir, self.pids_dir) if d))
        for d in self.dirs:  # v2: children get the controllers their parent enables
            for ctrl in ("memory", "pids"):
                if (ctrl == "memory" and cg.memory_v2 and d == self.memory_dir) or (
                        ctrl == "pids" and cg.pids_v2 and d == self.pids_dir):
                    with contextlib.suppress(OSError):
                        _write(os.path.join(d, "cgroup.subtree_control"), f"+{ctrl}")
        #: the units placed, by name (their directories' name in each hierarchy)
        self.by_name: dict[str, Unit] = {}
        #: units made ahead of need (`prepare`), and how many to keep
        self.ready: list[Unit] = []
        self.spares = spares
        #: the directories of ended units kept for reuse (`_reuse`), and the parents whose units' may be
        self.reused: list[Unit] = []
        self.keep = {d for d in (self.pids_dir,) if d and d not in (self.kill_dir, self.memory_dir)}
        self._seq = 0
        #: the hierarchy whose membership names a process's unit: (its line in /proc/PID/cgroup, our path there)
        self.member_key, self.member_prefix = self._membership()

    def _membership(self) -> tuple[str | None, str | None]:
        """Which line of /proc/PID/cgroup names a process's unit, and our directory's tail in it."""
        if self.kill_dir:
            base, key = self.kill_dir, ""
        elif self.pids_dir:
            base, key = self.pids_dir, "" if self.cg.pids_v2 else "pids"
        elif self.memory_dir:
            base, key = self.memory_dir, "" if self.cg.memory_v2 else "memory"
        else:
            return None, None
        return key, "/" + os.path.basename(os.path.dirname(base)) + "/" + os.path.basename(base) + "/"

    @property
    def active(self) -> bool:
        return bool(self.dirs)

    def take(self) -> Unit:
        """A unit's directories, made ahead (`prepare`) or now, not yet anyone's (`place` gives it its leader)."""
        if self.ready:
            return self.ready.pop()
        return self._fill(self.reused.pop() if self.reused else self._new_unit())

    def prepare(self) -> bool:
        """Make one unit's directories ahead of need, while the launcher has nothing else to do (False when
        enough are ready): a run then only joins its unit, without a `mkdir` per hierarchy on its way."""
        if not self.short:
            return False
        self.ready.append(self._fill(self.reused.pop() if self.reused else self._new_unit()))
        return True

    @property
    def short(self) -> bool:
        """Whether fewer units are ready than wanted (the launcher's loop then prepares one when idle)."""
        return bool(self.dirs) and len(self.ready) < self.spares

    def _new_unit(self) -> Unit:
        return Unit(0, "")

    def _fill(self, unit: Unit) -> Unit:
        """Make the directories `unit` lacks (all of a new one; a reused one's others), under a name never used
        before: a caller may still hold an ended unit's paths (`Unit.wire`), which must never name a later one."""
        self._seq += 1
        fresh = f"u{self._seq}"
        made: list[str] = []
        for attr in ("kill_dir", "memory_dir", "pids_dir"):
            parent = getattr(self, attr)
            if parent is None or getattr(unit, attr) is not None:
                continue
            existing = next((d for d in unit.dirs if os.path.dirname(d) == parent), None)
            path = existing or _make(parent, fresh)
            if path is None:
                continue
            if existing is None:
                unit.dirs.append(path)
                made.append(path)
            setattr(unit, attr, path)
        if unit.pids_dir in made:  # a reused one has it already
            with contextlib.suppress(OSError):
                _write(os.path.join(unit.pids_dir, "pids.max"), str(self.max_processes))
        member = unit.kill_dir or unit.pids_dir or unit.memory_dir  # the hierarchy `owner` reads (`_membership`)
        unit.name = os.path.basename(member) if member else fresh
        unit.memory_v2 = self.cg.memory_v2
        unit.pids_v2 = self.cg.pids_v2
        return unit

    def _reuse(self, unit: Unit) -> bool:
        """Keep an ended unit's v1 `pids` cgroup for a later unit, so that it costs no `mkdir`/`rmdir`/`pids.max`
        per run. Only that one: the caller may still hold the paths of the unit's `cgroup.kill` and memory
        cgroups (`Unit.wire`), which must never name a later run's; and a memory cgroup's peak, OOM count and
        what stays charged to it belong to the run that ended. Only an empty one is kept (nothing of a run
        may be in another's), and no more than `spares` of them."""
        if len(self.reused) >= self.spares or not unit.dirs:
            return False
        keep = [d for d in unit.dirs if os.path.dirname(d) in self.keep]
        if not keep:
            return False
        for d in unit.dirs:
            if d in keep:
                continue
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError:
                return False  # a dying process still in it: `remove` retries later
        try:
            if any(_read(os.path.join(d, "cgroup.procs")).split() for d in keep):
                return False
            if unit.pids_dir in keep and int(_read(os.path.join(unit.pids_dir, "pids.current"))):
                return False  # an unreaped zombie still counts: it would shrink the next run's allowance
        except (OSError, ValueError):
            return False
        shell = Unit(0, "")
        shell.dirs = keep
        shell.pids_dir = unit.pids_dir
        self.reused.append(shell)
        return True

    def place(self, unit: Unit, leader: int, memory_limit_bytes: int | None = None, joined: bool = False) -> Unit:
        """Make `unit` the unit of `leader` (a run or a template just forked, before any plugin code of its own
        runs): set its memory limit and move the leader in, unless the leader moved itself in (`Unit.join`)."""
        unit.leader = leader
        if memory_limit_bytes:
            unit.limit_memory(memory_limit_bytes)
        self.by_name[unit.name] = unit
        if not joined:
            for d in unit.dirs:
                try:
                    _write(os.path.join(d, "cgroup.procs"), str(leader))
                except OSError as exc:
                    if exc.errno != errno.ESRCH:
                        raise
        return unit

    def create(self, leader: int, memory_limit_bytes: int | None = None) -> Unit:
        """A unit for `leader`, moved in by us."""
        return self.place(self.take(), leader, memory_limit_bytes)

    def discard(self, unit: Unit) -> None:
        """A unit taken but never placed (its fork failed)."""
        unit.remove()

    def forget(self, unit: Unit) -> bool:
        """Done with an ended unit: its directories kept for reuse or removed (False while a process is still
        leaving them: call again later)."""
        if self._reuse(unit) or unit.remove():
            self.by_name.pop(unit.name, None)
            return True
        return False

    def owner(self, proc_pid: int) -> str | None:
        """The name of the unit a process is in by cgroup ("" for none of ours), None where units have no cgroup."""
        if self.member_key is None or self.member_prefix is None:
            return None
        try:
            with open(f"/proc/{proc_pid}/cgroup") as f:
                lines = f.read().splitlines()
        except OSError:
            return ""
        for line in lines:
            parts = line.split(":", 2)
            if len(parts) == 3 and (parts[1] == self.member_key if self.member_key == "" else
                                    self.member_key in parts[1].split(",")):
                path = parts[2]
                i = path.find(self.member_prefix)
                if i < 0:
                    return ""
                return path[i + len(self.member_prefix):].split("/")[0]
        return ""

    def close(self) -> None:
        deadline = time.monotonic() + 2.0
        self.spares = 0  # nothing ended from here on is kept
        for unit in [*self.ready, *self.reused]:
            unit.remove()
        self.ready, self.reused = [], []
        while self.by_name and time.monotonic() < deadline:
            for unit in list(self.by_name.values()):
                unit.kill([])
                self.forget(unit)
            if self.by_name:
                time.sleep(0.01)
        for d in self.dirs:
            with contextlib.suppress(OSError):
                os.rmdir(d)
