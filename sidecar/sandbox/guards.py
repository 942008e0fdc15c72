"""The guards: a run's deadline and memory watch, armed when it starts, enforced by every tick of the loop.

A run's deadline counts from when it was asked for (`Start.t0`, CLOCK_MONOTONIC is system-wide), so waits for
a ticket or a template count too. Its resident set is read every `RSS_POLL_SECONDS` (the cgroup's memory.max
binds the whole tree where there is one). A template has deadlines too: its import must finish within the
waiting run's, and it must answer a fork request within `template_pool._FORK_ANSWER_SECONDS`.
"""

from __future__ import annotations

import time

from .connections import Conn
from .launcher_state import PAGE
from .protocol import Start
from .template_pool import Template, TemplatePool
from .tickets import Child

__all__ = ["RSS_POLL_SECONDS", "Guards"]

RSS_POLL_SECONDS = 0.1


class Guards(TemplatePool):
    """Arming a run's deadline and memory limit; killing what passes its own."""

    def _arm(self, child: Child, conn: Conn, msg: Start) -> None:
        """The caller says the run started: its deadline, its resident-memory limit and its temporary directory's
        size are now in force."""
        child.started = True
        child.deadline = float(msg.get("t0") or time.monotonic()) + float(msg["timeout_seconds"])
        conn.memory_limit_mb = int(msg["memory_limit_mb"])
        child.rss_limit = conn.memory_limit_mb * 1024 * 1024
        if child.owner == child.pid and not self.tmp.resize(child.tmp, conn.memory_limit_mb):
            child.memory_killed, child.memory_by = True, "tmp"  # it wrote more there than its limit
            self._kill(child.pid)

    def _wake_in(self, now: float, running: list[Child], building: list[Template]) -> float:
        """Seconds until the nearest deadline or memory poll of a run or a template; -1 when there is none."""
        timeout = -1.0
        if running:
            nearest = min((c.deadline for c in running if not c.timed_out), default=now + 1.0)
            timeout = max(0.0, min(nearest, self.next_rss_poll) - now)
        if building:
            nearest = max(0.0, min(t.deadline for t in building) - now)
            timeout = nearest if timeout < 0 else min(timeout, nearest)
        asked = [t.fork_deadline for t in self.templates.values() if t.forking]
        if asked:
            nearest = max(0.0, min(asked) - now)
            timeout = nearest if timeout < 0 else min(timeout, nearest)
        return timeout

    def _enforce(self, now: float, running: list[Child], building: list[Template]) -> None:
        """Kill every run past its deadline or memory limit, and every template past its own."""
        for child in running:
            if not child.timed_out and now >= child.deadline:
                child.timed_out = True
                self._kill(child.pid)
        if running and now >= self.next_rss_poll:
            self.next_rss_poll = now + RSS_POLL_SECONDS
            self._poll_rss(running)
        for tpl in [t for t in self.templates.values() if t.forking and now >= t.fork_deadline]:
            # It did not answer: the plugin backs off (its next runs import per run). Stopped (by a run of its
            # plugin), its waiting runs import per run now; hung (an at-fork hook), they end saying so.
            self._back_off(tpl)
            self._drop_template(tpl, hung=not self._stopped(tpl.pid))
        for tpl in building:
            if now >= tpl.deadline:
                tpl.timed_out = True  # its exit ends the runs waiting for it as `timeout`
                self._kill(tpl.pid)

    def _poll_rss(self, running: list[Child]) -> None:
        for child in running:
            if child.memory_killed or child.timed_out:
                continue
            try:
                with open(f"/proc/{child.pid}/statm", "rb") as f:
                    resident = int(f.read().split()[1]) * PAGE
            except (OSError, IndexError, ValueError):
                continue
            if resident > child.rss_limit:
                child.memory_killed, child.memory_by = True, "rss"
                self._kill(child.pid)
