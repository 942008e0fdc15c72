"""What the launcher knows: the tables every part of it reads (its runs, templates, callers, units).

The launcher is one process and one object (`launcher.Launcher`), built in layers, one idea each, every
layer reading the state declared here: `processes` (pids, trees, killing a unit), `reaper` (the orphan
judgement), `connections` (callers, sends that never block), `tickets` (children forked ahead of need, their
exit reports), `template_pool` (a template per plugin: LRU, back-off, spares), `guards` (deadlines and the
memory watch) and `launcher` (the event loop). The records live with their idea: `tickets.Child`,
`template_pool.Template`, `connections.Conn`.
"""

from __future__ import annotations

import ctypes
import os
import select
import socket
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from .child import Identity
from .containment import Cgroups, Unit, Units
from .run_tmp import RunTmp, can_mount

if TYPE_CHECKING:
    from .connections import Conn
    from .template_pool import Template
    from .tickets import Child

__all__ = ["PAGE", "LauncherState", "prctl"]

PAGE = os.sysconf("SC_PAGE_SIZE")

try:
    prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - non-glibc platforms
    prctl = None


class LauncherState:
    """The launcher's tables; the layers above it (see the module) act on them."""

    def __init__(self, ctrl: socket.socket, drop_privileges: bool = False, max_templates: int = 32,
                 cgroups: Cgroups | None = None, max_processes: int = 512, units_tag: str | None = None,
                 identity: Identity = (None, ())) -> None:
        self.ctrl = ctrl
        self.units = Units(cgroups or Cgroups(), max_processes, units_tag)
        self.drop_privileges = drop_privileges
        #: what its spares and templates drop to (the groups its confinement grants), or None: no drop
        self.identity: Identity | None = identity if drop_privileges else None
        self.max_templates = max_templates
        self.templates: OrderedDict[str, Template] = OrderedDict()  # least recently used first
        self.template_fds: dict[int, Template] = {}  # socket and pidfd -> template
        #: key -> (retry after, failures, signature): failed imports, retried with back-off
        self.backoff: dict[str, tuple[float, int, tuple[int, ...] | None]] = {}
        #: key -> signature: plugins whose import starts a thread, imported per run until they change
        self.per_run: dict[str, tuple[int, ...] | None] = {}
        self.builds = 0
        self.evictions = 0
        self.reap_due = False
        self._origins: dict[str, str] = {}
        self.tmp = RunTmp(os.environ.get("TMPDIR") or "/tmp", mount=can_mount())
        self.epoll = select.epoll()
        self.children: dict[int, Child] = {}  # pid -> child
        self.by_pidfd: dict[int, Child] = {}
        self.conns: dict[int, Conn] = {}
        self.want_ticket: list[Conn] = []
        self.orphans: set[int] = set()
        #: units whose cgroups still held a dying process when their run ended
        self.dying: list[Unit] = []
        self.pid = os.getpid()
        # /proc may be the host's (a plugin allowed to see the host's processes shares our mounts):
        # then it names us, and our children, by host pids, which are translated to ours.
        self.proc_pid = int(os.readlink("/proc/self"))
        self.host_proc = self.proc_pid != self.pid
        self.children_file = f"/proc/{self.proc_pid}/task/{self.proc_pid}/children"
        self.next_rss_poll = 0.0
        self.epoll.register(ctrl.fileno(), select.EPOLLIN)

