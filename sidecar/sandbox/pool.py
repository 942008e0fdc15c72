"""The pool: `Sandbox`, the launchers (one per confinement), their channels, the watchdog, and each run's
way from a request to a result.

`Sandbox` is thread-safe: runner threads and the scheduler run plugins concurrently, each on a
channel of its own (a connection to the launcher holding pre-forked children). A launcher that
dies or stops answering is replaced (see `Sandbox`); the results of its runs in flight say so.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping

from ..defaults import LAUNCHER_ANSWER_SECONDS, LAUNCHER_PING_SECONDS, MAX_TEMPLATES, TEMPLATES
from .channel import AHEAD_AFTER, Channel
from .containment import Cgroups, describe, detect, release
from .drive import drive, kill_run
from .environment import plugin_environment
from .isolation import Confinement, Isolation, bwrap_command, namespaces_unavailable, needed_paths
from .launcher_process import LauncherLost, LauncherProcess, package_root
from .protocol import template_key
from .result import Outcome, PluginSandboxResult
from .run_request import RunRequest
from .run_result import STOPPING, made_up, stopped, template_failed
from .run_tmp import can_mount
from .run_tmp import describe as describe_tmp

__all__ = ["Sandbox"]

_log = logging.getLogger("sidecar.sandbox")


class Sandbox:
    """Runs plugins through one launcher process; thread-safe, one channel per run in flight.

    A run takes an idle channel (a connection to the launcher holding tickets: pre-forked
    children and their pipes) and talks to the child directly, so a run costs two process
    wake-ups, not four. A run of a templated plugin takes, if there is one, an idle channel
    holding a ticket ahead for its template (`channel`): it starts without asking the launcher.

    Nobody waits on a launcher that stopped answering: a watchdog pings each launcher every
    `LAUNCHER_PING_SECONDS`; one that does not answer within `LAUNCHER_ANSWER_SECONDS` (stopped,
    hung), or does not report a run's end in that time, is killed with everything it started and
    replaced. Runs past their deadline then end `timeout`, the others `aborted`, each saying so;
    a run that had not started yet runs on the new launcher.
    """

    def __init__(self, *, environ: Mapping[str, str] | None = None, extra_env: Iterable[str] = (),
                 isolation: Isolation | None = None, templates: bool = TEMPLATES == "on",
                 max_templates: int = MAX_TEMPLATES, cgroups: bool = True) -> None:
        """`templates`: fork each plugin's runs from a process that imported it once (see `template`);
        `cgroups`: a cgroup per run where the host lets us make one (False: the session-only fallback)."""
        env = plugin_environment(os.environ if environ is None else environ, extra_env)
        root = package_root()
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._env = env
        #: None: no isolation (the library's default); `serve` always passes one
        self.isolation = isolation
        self.templates = templates
        self.max_templates = max_templates
        self._per_run_logged: set[str] = set()
        self._lock = threading.Lock()
        self._launchers: dict[Confinement | None, LauncherProcess] = {}
        self._idle: list[Channel] = []
        self._channels: set[Channel] = set()
        self._closed = False
        #: runs inside `run` now, and the condition `close` waits on for them to end
        self._in_flight = 0
        self._drained = threading.Condition(self._lock)
        #: set by `close` once its grace is over with runs still in flight: those end as the sidecar's stop
        self._ending = False
        #: launchers replaced because they stopped answering, and the last reason (until a new one answered)
        self.replacements = 0
        self._replacing: str | None = None
        self._watch_stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        #: what bounds a run here, detected once (see `containment`)
        self.cgroups: Cgroups = detect(disabled=not cgroups)
        namespaces = bool(isolation and isolation.bwrap and namespaces_unavailable(isolation.bwrap) is None)
        self.containment = f"{describe(self.cgroups)}; {describe_tmp(can_mount(), namespaces)}"
        _log.info("sandbox containment: %s", self.containment)

    @property
    def launcher_pid(self) -> int | None:
        """The process whose death takes the (first) launcher and every run with it."""
        return next((launcher.proc.pid for launcher in self._launchers.values()), None)

    def confinement(self, request: RunRequest) -> Confinement | None:
        if self.isolation is None:
            return None
        return self.isolation.confinement(request.isolation, request.network, request.host_processes,
                                          request.group, tuple(request.groups), tuple(request.read_paths))

    def _command(self, confinement: Confinement | None) -> tuple[list[str], bool]:
        """The launcher's command prefix (bubblewrap's, when isolating with it) and whether runs drop root."""
        iso = self.isolation
        if iso is None or confinement is None:
            return [], False
        as_root = os.geteuid() == 0
        if iso.bwrap is None or (not confinement.strict and namespaces_unavailable(iso.bwrap)):
            return [], as_root  # default mode degrades to the identity layer (SECURITY.md says what holds)
        needed = needed_paths((*iso.readable, package_root(), *confinement.read_paths))
        return bwrap_command(iso.bwrap, confinement, needed, iso.hidden, as_root,
                             writable=self.cgroups.dirs()), as_root

    def _current(self, confinement: Confinement | None) -> LauncherProcess:
        with self._lock:
            if self._closed:
                raise RuntimeError("sandbox is closed")
            launcher = self._launchers.get(confinement)
            if launcher is None or not launcher.alive():
                if launcher is not None:
                    launcher.stop()
                launcher = self._launchers[confinement] = LauncherProcess(self._env, *self._command(confinement),
                                                                          self.max_templates, self.cgroups,
                                                                          confinement)
                if self._watchdog is None:
                    self._watchdog = threading.Thread(target=self._watch, name="sandbox-watchdog", daemon=True)
                    self._watchdog.start()
            return launcher

    # -- the watchdog --------------------------------------------------------------------------
    def _watch(self) -> None:
        """Ping every launcher; replace one that does not answer (the launcher never gets waited on)."""
        while not self._watch_stop.wait(LAUNCHER_PING_SECONDS):
            with self._lock:
                launchers = list(self._launchers.values())
            for launcher in launchers:
                if self._watch_stop.is_set():
                    return
                why = launcher.ping(LAUNCHER_ANSWER_SECONDS)
                if why is None:
                    with self._lock:
                        if self._replacing is not None and launcher.replaced is None:
                            _log.info("sandbox launcher %d answers: runs are guarded again", launcher.proc.pid)
                            self._replacing = None
                elif not self._watch_stop.is_set():
                    self._replace(launcher, why)

    def _replace(self, launcher: LauncherProcess, why: str) -> None:
        """Kill a launcher that stopped answering (and everything it started); start its successor."""
        with self._lock:
            if launcher.replaced is not None or self._closed:
                return
            launcher.replaced = why
            confinement = next((c for c, held in self._launchers.items() if held is launcher), None)
            current = self._launchers.get(confinement) is launcher
            if current:
                del self._launchers[confinement]
            idle = [c for c in self._idle if c.launcher is launcher]
            for channel in idle:
                self._idle.remove(channel)
                self._channels.discard(channel)
            self.replacements += 1
            self._replacing = f"the sandbox launcher was replaced: {why}"
        _log.error("sandbox launcher %d: %s; killing it and everything it started, starting another",
                   launcher.proc.pid, why)
        for channel in idle:
            channel.close()
        launcher.kill()
        if current:
            try:
                self._current(confinement)
            except (OSError, RuntimeError):
                _log.exception("could not start a new sandbox launcher (the next run tries again)")

    def problem(self) -> str | None:
        """Why runs are not guarded right now (for /readyz): a launcher late to answer, or being replaced."""
        now = time.monotonic()
        with self._lock:
            late = [now - launcher.ping_sent for launcher in self._launchers.values()
                    if launcher.ping_sent is not None and now - launcher.ping_sent > LAUNCHER_PING_SECONDS]
            if late:
                return (f"the sandbox launcher has not answered for {max(late):.1f} s (stopped or hung); it is "
                        f"replaced after {LAUNCHER_ANSWER_SECONDS:g} s")
            return self._replacing

    def _checkout(self, confinement: Confinement | None, key: str | None = None) -> Channel:
        """An idle channel to the current launcher, or a new one: as many as runs in flight. For a run of
        template `key`, one holding a ticket ahead for it first, then one holding none."""
        return self._checkout_of(self._current(confinement), key)

    def _checkout_of(self, launcher: LauncherProcess, key: str | None = None) -> Channel:
        with self._lock:
            mine = [c for c in reversed(self._idle) if c.launcher is launcher]
            if mine:
                channel = mine[0]
                if key is not None and channel.ahead_key != key:
                    channel = next((c for c in mine if c.ahead_key == key), None) or next(
                        (c for c in mine if c.ahead_key is None), channel)
                self._idle.remove(channel)
                return channel
            for channel in [c for c in self._idle if c.launcher not in self._launchers.values()]:
                self._idle.remove(channel)
                self._channels.discard(channel)
                channel.close()
        channel = Channel(launcher.connect(), launcher)
        with self._lock:
            self._channels.add(channel)
        return channel

    def _checkin(self, channel: Channel) -> None:
        with self._lock:
            if channel in self._channels:
                self._idle.append(channel)

    def _discard(self, channel: Channel) -> None:
        with self._lock:
            self._channels.discard(channel)
        channel.close()

    def run(self, request: RunRequest) -> PluginSandboxResult:
        """Run one request; never raises for what the plugin does.

        Counted in flight for `close`, which waits for it (up to its grace) before closing anything it uses;
        a run the stop ended says so (`_stopped`), not `crash`."""
        with self._lock:
            self._in_flight += 1
        try:
            result = self._run_once(request)
        finally:
            with self._lock:
                self._in_flight -= 1
                self._drained.notify_all()
        return stopped(result) if self._ending else result

    def _run_once(self, request: RunRequest) -> PluginSandboxResult:
        started_at, t0 = time.time(), time.monotonic()
        key = None
        if self.templates and request.plugin.preload and request.mode == "run":
            key = template_key(request.plugin.to_dict(), request.wire_sys_path(), request.memory_limit_mb,
                               request.max_processes)
        for attempt in (1, 2):  # a run that never started runs once more, on a fresh launcher
            channel: Channel | None = None
            try:
                channel = self._checkout(self.confinement(request), key)
                ticket = self._ticket(channel, request, key, t0, started_at)
                break
            except (LauncherLost, OSError) as exc:
                launcher = channel.launcher if channel is not None else None
                if channel is not None:
                    self._discard(channel)
                if launcher is not None and launcher.replaced is None and launcher.alive():
                    self._replace(launcher, f"it did not hand out a child within {LAUNCHER_ANSWER_SECONDS:g} s "
                                            f"({exc})")
                if attempt == 1 and time.monotonic() - t0 < request.timeout_seconds:
                    continue
                if time.monotonic() - t0 >= request.timeout_seconds:
                    return made_up(request, Outcome.TIMEOUT, "LauncherStalled",
                                   f"run exceeded its timeout of {request.timeout_seconds:g} s before the sandbox "
                                   f"launcher could start it ({exc})", started_at, t0)
                return made_up(request, Outcome.ABORTED, "LauncherUnavailable",
                               f"the sandbox launcher could not start the run ({exc})", started_at, t0)
            except RuntimeError as exc:  # the sandbox is closed: the sidecar is stopping
                return made_up(request, Outcome.ABORTED, STOPPING, f"the run was not started: {exc}",
                               started_at, t0)
        assert channel is not None  # the loop either broke with a ticket or returned
        if isinstance(ticket, PluginSandboxResult):
            self._checkin(channel)
            return ticket
        pid, fds = ticket
        try:
            result = drive(channel, request, pid, fds, t0, started_at, self._replace)
            if channel.launcher.replaced is None and channel.launcher.alive():
                self._checkin(channel)
            else:
                self._discard(channel)
            return result
        except (LauncherLost, OSError) as exc:
            self._discard(channel)
            return made_up(request, Outcome.ABORTED, "LauncherDied",
                           f"the run's connection to the sandbox launcher failed: {exc}", started_at, t0)
        except BaseException:
            kill_run(fds[4])  # whatever went wrong here, the child must not outlive the call
            self._discard(channel)
            raise
        finally:
            for fd in fds:
                if fd >= 0:
                    os.close(fd)

    def _ticket(self, channel: Channel, request: RunRequest, key: str | None, t0: float,
                started_at: float) -> tuple[int, list[int]] | PluginSandboxResult:
        if key is not None:
            return self._template_ticket(channel, request, key, t0, started_at)
        return channel.ticket()

    def _template_ticket(self, channel: Channel, request: RunRequest, key: str, t0: float,
                         started_at: float) -> tuple[int, list[int]] | PluginSandboxResult:
        """A child forked from the plugin's template (the ticket ahead the channel holds, or one asked for);
        a spare when the plugin cannot have one; or the outcome of the waiting run when the template's import
        failed or hung (as a run's would)."""
        wait = max(0.0, t0 + request.timeout_seconds - time.monotonic()) + LAUNCHER_ANSWER_SECONDS
        streak = channel.streak + 1 if channel.last_key == key else 1
        held = channel.take_ahead(key, wait)
        if held is not None:
            channel.streak = streak
            channel.ask_ahead(held[0], key)
            return held
        msg = channel.template_ticket(request, t0, wait)
        if msg["t"] == "ticket":
            ticket = channel.template_tickets.popleft()
            channel.last_key, channel.streak = key, streak
            if streak >= AHEAD_AFTER:  # not for a channel running plugins in turn
                channel.ask_ahead(ticket[0], key)
            return ticket
        if msg["t"] == "template_failed":
            return template_failed(request, msg, t0, started_at)
        if msg["t"] == "fallback" and msg["reason"] == "threads" and request.plugin.name not in self._per_run_logged:
            self._per_run_logged.add(request.plugin.name)
            _log.warning("plugin %s starts %s threads when imported: it is imported per run (a template "
                         "holding threads is unsafe to fork)", request.plugin.name, msg.get("threads", "some"))
        return channel.ticket()

    def template_stats(self) -> dict[str, int]:
        """Templates alive, built and evicted, and their resident memory, summed over the launchers."""
        totals = {"alive": 0, "builds": 0, "evictions": 0, "resident_bytes": 0}
        with self._lock:
            launchers = [launcher for launcher in self._launchers.values() if launcher.alive()]
        for launcher in launchers:
            try:
                channel = self._checkout_of(launcher)
            except (LauncherLost, OSError, RuntimeError):
                continue
            try:
                stats = channel.stats()
                self._checkin(channel)
            except (LauncherLost, OSError):
                self._discard(channel)
                continue
            totals["alive"] += stats["alive"]
            totals["builds"] += stats["builds"]
            totals["evictions"] += stats["evictions"]
            totals["resident_bytes"] += stats["resident_bytes"]
        return totals

    def close(self, grace: float = 0.0) -> None:
        """Stop: new runs end `aborted` at once; runs in flight may finish for up to `grace` seconds; then the
        launchers are stopped (they kill what still runs, which ends `aborted`, `SidecarStopping`).

        Nothing a run's thread still polls is closed under it: its channel is closed by that thread once the
        run has its result; only idle channels are closed here."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._drained.wait_for(lambda: self._in_flight == 0, timeout=grace)
            self._ending = self._in_flight > 0
            launchers, self._launchers = list(self._launchers.values()), {}
        if self._ending:
            _log.warning("stopping: %d run(s) still in flight after the %g s grace are ended", self._in_flight, grace)
        self._watch_stop.set()
        for launcher in launchers:
            launcher.stop()  # closes its control socket: it kills every child it started and exits
        with self._lock:  # their threads see the launcher gone, return `aborted` and close their own channels
            if not self._drained.wait_for(lambda: self._in_flight == 0, timeout=2 * LAUNCHER_ANSWER_SECONDS):
                _log.error("stopping: %d run(s) did not return; their channels are left open", self._in_flight)
            idle, self._idle = self._idle, []
            for channel in idle:
                self._channels.discard(channel)
        for channel in idle:
            channel.close()
        release(self.cgroups)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
