"""The reaper: the launcher is a child subreaper, and judges every process re-parented to it.

A plugin's descendants that leave its process group (`setsid`, a double fork) are re-parented to the launcher
when their parent dies. Each is judged by its unit (its cgroup, else its session), never by who else is in
flight: one that belongs to no live run or template is an orphan, stopped with its tree and killed, then
reaped. Units whose cgroup still held a dying process when their run ended are removed by a later tick.
"""

from __future__ import annotations

import os
import signal

from .containment import Unit, session_of
from .processes import Processes, send_signal

__all__ = ["Reaper"]


class Reaper(Processes):
    """The orphan judgement and the reaping of what the launcher killed."""

    def _live_unit(self, proc_pid: int) -> bool | None:
        """Whether a process re-parented to us belongs to a live unit (None: cannot tell yet)."""
        owner = self.units.owner(proc_pid)
        if owner is not None:  # cgroups say whose it is, whatever it did
            unit = self.units.by_name.get(owner)
            return unit is not None and self._unit_live(unit.leader)
        sid = session_of(proc_pid)
        if sid is None:
            return False
        leaders = {self._proc_pid(p) for p in self._live_leaders()}
        if sid in leaders:
            return True
        if sid == proc_pid and any(t.forking for t in self.templates.values()):
            return None  # maybe a run a template is forking, not yet announced
        return False

    def _live_leaders(self) -> list[int]:
        return [*(c.pid for c in self.children.values()), *(t.pid for t in self.templates.values())]

    def _unit_live(self, pid: int) -> bool:
        return pid in self.children or any(t.pid == pid for t in self.templates.values())

    def _reap_orphans(self) -> None:
        """Kill and reap every child of ours that belongs to no live unit: what a run or a template left
        when its leader died. Judged by unit (cgroup, else session), never by who else is in flight."""
        self.reap_due = False
        known = set(self._live_leaders())
        for pid, proc_pid in self._our_children().items():
            if pid in known or pid in self.orphans:
                continue
            live = self._live_unit(proc_pid)
            if live is None:
                self.reap_due = True
                continue
            if live:
                continue
            send_signal(pid, signal.SIGSTOP)
            for p in self._tree(pid):
                send_signal(p, signal.SIGKILL)
            send_signal(pid, signal.SIGKILL)
            self.orphans.add(pid)
        self._reap_killed()
        for unit in list(self.dying):
            if self.units.forget(unit):
                self.dying.remove(unit)

    def _reap_killed(self) -> None:
        for pid in list(self.orphans):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.orphans.discard(pid)

    def _dispose(self, unit: Unit) -> None:
        if not self.units.forget(unit):
            self.dying.append(unit)  # a process still leaving: removed by a later tick
