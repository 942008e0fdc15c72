"""The launcher's hold on its processes: pids as `/proc` names them, process trees, ending a unit.

The launcher may run in a PID namespace of its own under a `/proc` that is the host's (a plugin allowed to see
the host's processes shares its mounts): every pid it reads there is translated to its own. Ending a unit
(a run's, a template's, an orphan's) stops its whole tree first, so nothing of it forks meanwhile, then kills
its cgroup (where it has one), its tree and its leader.
"""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING

from .containment import Unit, stop_tree
from .launcher_state import LauncherState
from .protocol import UnitWire

if TYPE_CHECKING:
    from .tickets import Child

__all__ = ["Processes", "send_signal"]


def send_signal(pid: int, sig: int) -> None:
    """Signal a process that may be gone already (or, after a change of identity, not ours to signal)."""
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Processes(LauncherState):
    """Pid translation, process trees, units: what every other layer uses to end what it must."""

    def _proc_pid(self, pid: int) -> int | None:
        """Our child's pid in /proc (the same unless /proc is the host's)."""
        if not self.host_proc:
            return pid
        return next((proc for ours, proc in self._our_children().items() if ours == pid), None)

    def _unclaimed_child(self, pid: int) -> bool:
        """Whether `pid` is a child of ours that is no run or template yet: what a template says it forked
        (its run, our child from birth or once a middle process left) is checked, never trusted — its plugin's
        code, e.g. an at-fork hook, can write to its socket — so that no other process becomes a run the
        launcher will stop and kill. Asked after the pidfd is open: a pid reused since names no such child."""
        if pid in self.children or any(t.pid == pid for t in self.templates.values()):
            return False
        if self.host_proc:
            return pid in self._our_children()
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                return int(f.read().rsplit(b")", 1)[1].split()[1]) == self.pid
        except (OSError, ValueError, IndexError):
            return False

    def _ours(self, proc_pid: int) -> int | None:
        if not self.host_proc:
            return proc_pid
        try:
            with open(f"/proc/{proc_pid}/status", "rb") as f:
                return int(next(line for line in f if line.startswith(b"NSpid:")).split()[-1])
        except (OSError, StopIteration, ValueError, IndexError):
            return None

    def _our_children(self) -> dict[int, int]:
        """Our children: our pid for each -> its pid in /proc (the same unless /proc is the host's)."""
        if not self.host_proc:
            return {pid: pid for pid in self._listed_children()}
        found = {}
        for proc_pid in self._listed_children():
            try:
                with open(f"/proc/{proc_pid}/status", "rb") as f:
                    ours = int(next(line for line in f if line.startswith(b"NSpid:")).split()[-1])
            except (OSError, StopIteration, ValueError, IndexError):
                continue
            found[ours] = proc_pid
        return found

    def _listed_children(self) -> set[int]:
        try:
            with open(self.children_file, "rb") as f:
                return {int(p) for p in f.read().split()}
        except FileNotFoundError:  # kernels without CONFIG_PROC_CHILDREN: scan /proc
            found = set()
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        with open(f"/proc/{entry}/stat", "rb") as f:
                            stat = f.read()
                    except OSError:
                        continue
                    if int(stat[stat.rindex(b")") + 2 :].split()[1]) == self.proc_pid:
                        found.add(int(entry))
            return found

    def _tree(self, pid: int) -> list[int]:
        """Stop every descendant of `pid` (so none forks meanwhile) and return them, ours pids.

        A run's leader is a child subreaper that lives until its end, so whatever the run started, `setsid`
        daemons included, is in this tree."""
        root = self._proc_pid(pid)
        if root is None:
            return []

        def ours(proc_pid: int) -> int | None:  # never the launcher itself
            mine = self._ours(proc_pid)
            return None if mine is None or mine == self.pid else mine

        return stop_tree(root, ours)

    def _kill(self, pid: int) -> None:
        """End a unit (a run's, a template's, or an orphan's tree): its cgroup, its process tree, its leader."""
        child = self.children.get(pid)
        tpl = next((t for t in self.templates.values() if t.pid == pid), None)
        unit = child.unit if child is not None else tpl.unit if tpl is not None else None
        send_signal(pid, signal.SIGSTOP)
        tree = self._tree(pid)
        if unit is not None:
            unit.kill(tree)
        else:
            for p in tree:
                send_signal(p, signal.SIGKILL)
        send_signal(pid, signal.SIGKILL)
        if child is not None:
            child.killed.extend(tree)

    def _stopped(self, pid: int) -> bool:
        proc_pid = self._proc_pid(pid)
        try:
            with open(f"/proc/{proc_pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[0] in (b"T", b"t")
        except (OSError, IndexError):
            return False

    def _dead(self, pid: int) -> bool:
        proc_pid = self._proc_pid(pid)
        if proc_pid is None:
            return True
        try:
            with open(f"/proc/{proc_pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
        except (OSError, IndexError):
            return True

    def _settle_tree(self, pids: list[int]) -> None:
        """Wait (briefly: SIGKILLed processes only) until the killed descendants of a run are dead (a zombie
        or gone): a unit without a cgroup has no other way to tell its end is complete."""
        for i in range(200):
            if all(self._dead(p) for p in pids):  # read only: a pid reaped meanwhile may be reused
                return
            time.sleep(0.0005 if i < 20 else 0.005)

    def _settle_unit(self, unit: Unit) -> None:
        """Wait (briefly: SIGKILLed processes only) until the unit's cgroup is empty."""
        if not unit.dirs:
            return
        for i in range(200):
            if unit.empty():
                return
            unit.kill([])
            time.sleep(0.0005 if i < 20 else 0.005)

    def _unit(self, pid: int, memory_limit_bytes: int | None = None) -> Unit:
        try:
            return self.units.create(pid, memory_limit_bytes)
        except OSError:
            return Unit(pid, "")  # the process is gone already: its exit says the rest

    def _contain(self, child: Child, memory_limit_bytes: int | None = None) -> UnitWire | None:
        """Give a run its unit before any code of its plugin runs; what the caller needs of it."""
        child.unit = self._unit(child.pid, memory_limit_bytes)
        return child.unit.wire() if child.unit.dirs else None
