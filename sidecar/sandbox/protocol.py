"""The sandbox's wire protocol: every message between caller, launcher, template and child, declared once.

Four processes talk, each over its own kind of channel; every side imports its messages from here.

**Control socket** (caller ↔ launcher, stream, raw bytes; one per launcher). The caller starts the launcher
with `LauncherOptions` (JSON, on its command line) and this socket's fd. Over it the caller sends
`CONNECT` with one fd, a new *connection* (a socketpair end: one per calling thread), and the watchdog's
`PING`, which the launcher's loop answers `PONG`.

**Connection** (caller ↔ launcher, stream of JSON frames, `framing`). On a new connection the launcher
sends a `Ticket` at once, and another while idle. Then:

- caller → launcher: `Start` once the child has its request (the launcher arms the run's deadline and memory
  watch); `End` once the caller has the result (the launcher ends the run's unit); `Want` before a run of a
  plugin that has a template, unless the caller holds a ticket ahead for it (answered by a template `Ticket`,
  a `Fallback` to a plain ticket, or `TemplateFailed`); `StatsRequest` (answered by `Stats`).
- launcher → caller: `Ticket` + 5 fds (`TICKET_FDS`: the request pipe's write end, the result, stdout and
  stderr pipes' read ends, the child's pidfd); `Exit` when a ticket's child was reaped (a plain ticket's
  exit is followed by the next `Ticket`); `Error` when it could not fork a ticket; `Fallback`,
  `TemplateFailed`, `Stats` as above; `NoneAhead` as below.

*Tickets ahead.* A `Start` of a template's child may ask `ahead`: the launcher then hands the caller the
next child of that template before its next run asks, and answers exactly once, with a template `Ticket`
carrying `ahead` (the template's `template_key` and the plugin file's signature it was built from) or with
`NoneAhead`. A connection has at most one such ticket, asked for or held. The caller's next run of the same
key whose file still has that signature uses it with no message before its `Start`; any `Want` gives it up
(the launcher kills it, or, not yet forked, keeps it as the template's spare and answers `NoneAhead`).

**Template socket** (launcher ↔ template, SOCK_SEQPACKET, one JSON message per packet). The launcher sends
`PLACED` once the template is in its unit (plugin code may start), then a `Fork` + 4 fds (`FORK_FDS`: the
result, stdout and stderr pipes' write ends, the request pipe's read end) per run it wants. The template
answers each `Fork` with `Forked`, and first says `Ready`, or `Failed` / `Threads` and leaves. Its bytes
are the plugin's to forge (plugin code runs in it): the launcher reads them through `template_message`.

**Run pipes** (caller ↔ child, one frame each way, `framing`). The caller writes a `RunRequestWire` into the
request pipe and closes it; the child writes one `ResultMessage` frame on the result pipe. The result is
the plugin's to forge: the caller reads it through `result_message`, then makes it safe (`result`).

TypedDicts cost nothing at run time (they are plain dicts): the hot path pays no more than the dicts
it always built, and mypy checks every place a message is built or read. Their annotations are real types
here, not strings (no `from __future__ import annotations`): a TypedDict compiles each string annotation
into a ForwardRef, which cost the launcher's image, and so every forked child, about 0.2 MB.
"""

import json
from typing import Any, Literal, NotRequired, TypedDict

from .outcomes import OUTCOMES

__all__ = [
    "CONNECT", "FORK_FDS", "PING", "PLACED", "PONG", "TICKET_FDS",
    "Ahead", "CallerMessage", "CgroupsWire", "End", "Error", "ErrorWire", "Exit", "Failed", "Fallback",
    "FallbackReason", "Fork", "Forked", "LauncherMessage", "LauncherOptions", "NoneAhead", "PluginWire",
    "ProtocolError", "Ready", "ResultMessage", "RunRequestWire", "Start", "Stats", "StatsRequest", "TemplateFailed",
    "TemplateMessage", "Threads", "Ticket", "UnitWire", "Want", "result_message", "template_key", "template_message",
]


class ProtocolError(ValueError):
    """Bytes from a peer that may be forged (a template, a child) that are not a message of the protocol."""


# -- shapes that travel inside messages -----------------------------------------------------------------

class PluginWire(TypedDict):
    """Where a plugin's code lives (`PluginRef.to_dict`)."""

    name: str
    path: str | None
    module: str | None
    attr: str


class UnitWire(TypedDict):
    """A run's unit of containment as the caller needs it (`containment.Unit.wire`)."""

    memory: str | None
    memory_v2: bool
    kill: str | None
    #: the memory limit already set on its cgroup (bytes; 0: none, the caller sets the run's)
    limit: int


class CgroupsWire(TypedDict):
    """What the host's cgroups offer (`containment.Cgroups.to_wire`)."""

    kill: str | None
    memory: str | None
    memory_v2: bool
    pids: str | None
    pids_v2: bool
    why: str


class LauncherOptions(TypedDict, total=False):
    """The launcher's options, the third argument of its command line (each has a default there)."""

    drop_privileges: bool
    max_templates: int
    cgroups: CgroupsWire
    max_processes: int
    units_tag: str
    #: as root: the primary gid runs take (None: a gid of their own) and their supplementary gids
    group: int | None
    groups: list[int]


class ErrorWire(TypedDict):
    type: str
    message: str
    traceback: str | None


class ResultMessage(TypedDict):
    """child → caller, on the result pipe: the run's outcome (one of `outcomes.OUTCOMES`) and what goes
    with it. Every field but `outcome` is the plugin's to forge, and is made safe by `result`."""

    outcome: str
    result: NotRequired[Any]
    error: NotRequired[ErrorWire]
    #: the child's own rusage peak, bytes (used only where the sidecar measured none)
    peak_memory_bytes: NotRequired[int]
    #: what the plugin reported through `sidecar.check`
    report: NotRequired[Any]


# -- control socket ---------------------------------------------------------------------------------------

#: caller → launcher, with one fd: a new connection
CONNECT = b"c"
#: caller → launcher: the watchdog's ping; answered `PONG` by a loop that guards
PING = b"p"
PONG = b"P"


# -- connection: caller → launcher -------------------------------------------------------------------------

class Want(TypedDict):
    """A run of this plugin is about to start: a child forked from its template, please."""

    t: Literal["want"]
    plugin: PluginWire
    sys_path: list[str] | None
    memory_limit_mb: int
    max_processes: int | None
    timeout_seconds: float
    #: when the run was asked for (CLOCK_MONOTONIC, system-wide): its deadline counts from here
    t0: float


def template_key(plugin: PluginWire, sys_path: list[str] | None, memory_limit_mb: int,
                 max_processes: int | None) -> str:
    """What chooses a plugin's template (and so which runs a ticket ahead may serve): the plugin, the caller's
    import path and the limits the template imports under. Both sides compute it here, so they agree."""
    return json.dumps([plugin, sys_path, memory_limit_mb, max_processes], sort_keys=True)


class Start(TypedDict):
    """The child has its request: arm its deadline (from `t0`) and its memory watch."""

    t: Literal["start"]
    pid: int
    t0: float
    timeout_seconds: float
    memory_limit_mb: int
    #: a template's child: hand this connection the template's next child now (a ticket ahead)
    ahead: NotRequired[bool]


class End(TypedDict):
    """The caller has the result: end the run's unit (its exit report follows)."""

    t: Literal["end"]
    pid: int


class StatsRequest(TypedDict):
    t: Literal["stats"]


CallerMessage = Want | Start | End | StatsRequest


# -- connection: launcher → caller -------------------------------------------------------------------------

#: the fds that travel with a `Ticket`, in order (the caller's ends)
TICKET_FDS = ("request_w", "result_r", "stdout_r", "stderr_r", "pidfd")


class Ahead(TypedDict):
    """What a ticket ahead is for: the template it was forked from, and the file that template imported."""

    #: the template's `template_key`: a run with another key cannot use it
    key: str
    #: the plugin's file and its (inode, size, mtime_ns) when the template was built (None: not known): a
    #: run whose file differs now gives the ticket up and asks (`Want`), so that it runs the new code
    origin: str | None
    signature: list[int] | None


class Ticket(TypedDict):
    """A child ready to run, with `TICKET_FDS`; `template`: forked from a template, the answer to a `Want`
    or, with `ahead`, the answer to a `Start` that asked for a ticket ahead."""

    t: Literal["ticket"]
    pid: int
    #: where the caller sets the run's memory limit and ends the unit itself (None: no cgroup)
    unit: UnitWire | None
    template: NotRequired[bool]
    ahead: NotRequired[Ahead]


class NoneAhead(TypedDict):
    """No ticket ahead for the `Start` that asked: the template is gone, could not fork, or was given up."""

    t: Literal["none_ahead"]


class Exit(TypedDict):
    """A ticket's child was reaped; what the launcher saw of it."""

    t: Literal["exit"]
    pid: int
    status: int
    #: the unit's peak memory (cgroup), else the child's rusage, bytes
    maxrss: int
    timed_out: bool
    memory_killed: bool
    #: what measured it: "cgroup", "rss", "tmp" (its temporary directory outgrew the limit) or ""
    memory_by: str
    started: bool


class Error(TypedDict):
    """The launcher could not fork a ticket."""

    t: Literal["error"]
    message: str


#: why a `Want` is answered with a plain ticket: the template could not fork (`fork`, `pipe`, `template`),
#: was retired meanwhile, its plugin starts threads at import, failed recently (`backoff`), or was stopped
FallbackReason = Literal["fork", "pipe", "template", "retired", "threads", "backoff", "stopped"]


class Fallback(TypedDict):
    """No template child for this run: it imports its plugin in a plain ticket."""

    t: Literal["fallback"]
    reason: FallbackReason
    #: `threads`: how many the import started
    threads: NotRequired[int | None]


class TemplateFailed(TypedDict):
    """The template the run waited on failed it: its import's outcome (`message`), or its exit."""

    t: Literal["template_failed"]
    #: the import's outcome, as a run's result message (forged by the plugin, if it likes)
    message: ResultMessage | None
    status: int
    timed_out: bool
    #: it did not answer a fork request within `waited` seconds
    hung: NotRequired[bool]
    waited: NotRequired[float]


class Stats(TypedDict):
    """The launcher's templates: alive, built, evicted, and their resident memory."""

    t: Literal["stats"]
    alive: int
    builds: int
    evictions: int
    resident_bytes: int


LauncherMessage = Ticket | NoneAhead | Exit | Error | Fallback | TemplateFailed | Stats


# -- template socket ------------------------------------------------------------------------------------------

#: launcher → template: it is in its unit; its import (plugin code) may start
PLACED = b'{"t": "placed"}'

#: the fds that travel with a `Fork`, in order (the run's ends)
FORK_FDS = ("result_w", "stdout_w", "stderr_w", "request_r")


class Fork(TypedDict):
    """launcher → template, with `FORK_FDS`: fork a run, whose private directory is `tmp`."""

    tmp: str


class Ready(TypedDict):
    """template → launcher: imported; `origin` is the plugin module's file (a change means a new template)."""

    t: Literal["ready"]
    origin: str | None


class Failed(TypedDict):
    """template → launcher: the import failed; `message` is its outcome, as a run's result message."""

    t: Literal["failed"]
    message: ResultMessage


class Threads(TypedDict):
    """template → launcher: the import started threads; it will not serve (a fork would inherit their locks)."""

    t: Literal["threads"]
    count: int | None


class Forked(TypedDict):
    """template → launcher: the run a `Fork` asked for, now the launcher's child (0: the fork failed)."""

    t: Literal["forked"]
    pid: int


TemplateMessage = Ready | Failed | Threads | Forked


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def template_message(data: bytes) -> TemplateMessage | None:
    """A template's packet, checked (plugin code runs in the template: it may forge one); None for a kind
    the launcher does not know. Raises `ProtocolError` (a `ValueError`) for anything malformed."""
    try:
        msg = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"template message is not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("template message is not an object")
    kind = msg.get("t")
    if kind == "forked":
        if not _int(msg.get("pid")) or msg["pid"] < 0:
            raise ProtocolError("`forked` needs a pid")
    elif kind == "ready":
        if msg.get("origin") is not None and not isinstance(msg["origin"], str):
            raise ProtocolError("`ready` needs an origin that is a path or null")
        msg.setdefault("origin", None)
    elif kind == "failed":
        if not isinstance(msg.get("message"), dict):
            raise ProtocolError("`failed` needs a message")
    elif kind == "threads":
        if msg.get("count") is not None and not _int(msg["count"]):
            raise ProtocolError("`threads` needs a count")
        msg.setdefault("count", None)
    else:
        return None
    return msg  # type: ignore[return-value]  # its shape was checked above


# -- run pipes --------------------------------------------------------------------------------------------------

class RunRequestWire(TypedDict):
    """caller → child, on the request pipe (`RunRequest.to_wire`)."""

    id: int
    plugin: PluginWire
    params: dict[str, Any]
    timeout_seconds: float
    memory_limit_mb: int
    max_result_bytes: int
    max_output_bytes: int
    max_processes: int | None
    #: "run" calls the plugin; "import" only loads it
    mode: str
    args: list[Any]
    sys_path: list[str] | None


def result_message(data: bytes) -> ResultMessage:
    """A child's result frame, decoded: an object with a known `outcome`, or `ProtocolError`. Its other
    fields are unchecked here (see `ResultMessage`)."""
    try:
        msg = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"{type(exc).__name__}: {exc}") from None
    if not isinstance(msg, dict) or msg.get("outcome") not in OUTCOMES:
        raise ProtocolError("ValueError: unexpected message shape")
    return msg  # type: ignore[return-value]  # the rest is made safe by the caller
