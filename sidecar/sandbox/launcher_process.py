"""The caller's handle on one launcher process: starting it, connecting to it, pinging it, ending it."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time

from ..defaults import LAUNCHER_ANSWER_SECONDS, MAX_PROCESSES, MAX_TEMPLATES
from .containment import Cgroups, kill_launcher_units
from .isolation import Confinement
from .protocol import CONNECT, PING, LauncherOptions

__all__ = ["LauncherLost", "LauncherProcess", "package_root"]

_log = logging.getLogger("sidecar.sandbox")


def package_root() -> str:
    """The directory that holds the `sidecar` package: the launcher imports it from there."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class LauncherLost(Exception):
    """The launcher did not answer, exited, or its connection failed."""


class LauncherProcess:
    """One launcher process and its control socket, over which channel connections are handed."""

    def __init__(self, env: dict[str, str], prefix: list[str], drop_privileges: bool,
                 max_templates: int = MAX_TEMPLATES, cgroups: Cgroups | None = None,
                 confinement: Confinement | None = None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.cgroups = cgroups
        #: the launcher's directory in each cgroup hierarchy: ours to end if it stops answering
        self.units_tag = f"l-{os.getpid()}-{os.urandom(4).hex()}"
        #: why it was replaced (it stopped answering), once it was
        self.replaced: str | None = None
        #: when the watchdog's unanswered ping was sent (None: none outstanding)
        self.ping_sent: float | None = None
        options: LauncherOptions = {"drop_privileges": drop_privileges, "max_templates": max_templates,
                                    "cgroups": (cgroups or Cgroups()).to_wire(), "max_processes": MAX_PROCESSES,
                                    "units_tag": self.units_tag, "group": confinement.group if confinement else None,
                                    "groups": list(confinement.groups) if confinement else []}
        try:
            self.proc = subprocess.Popen(
                # -P: `-m` would put the working directory first on sys.path (a planted `sidecar/` would run);
                # the runner's own path, absolute entries only, is what the launcher imports from.
                [*prefix, sys.executable, "-S", "-P", "-m", "sidecar.sandbox.launcher", str(theirs.fileno()),
                 json.dumps([p for p in sys.path if os.path.isabs(p)]),
                 json.dumps(options)],
                pass_fds=(theirs.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        self.ctrl = ours
        self.lock = threading.Lock()

    def connect(self) -> socket.socket:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self.lock:
                self.ctrl.settimeout(LAUNCHER_ANSWER_SECONDS)
                socket.send_fds(self.ctrl, [CONNECT], [theirs.fileno()])
        except OSError as exc:
            mine.close()
            raise LauncherLost(f"launcher connection failed: {exc}") from None
        finally:
            theirs.close()
        return mine

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ping(self, timeout: float) -> str | None:
        """None when the launcher's loop answered within `timeout`, else why not (the watchdog's only reader)."""
        self.ping_sent = time.monotonic()
        try:
            with self.lock:
                self.ctrl.settimeout(timeout)
                self.ctrl.send(PING)
            self.ctrl.settimeout(max(0.001, self.ping_sent + timeout - time.monotonic()))
            answer = self.ctrl.recv(64)
        except TimeoutError:
            return f"it did not answer a ping within {timeout:g} s (stopped or hung)"
        except OSError as exc:
            return f"its control socket failed: {exc}"
        if not answer:
            return "it exited"
        self.ping_sent = None
        return None

    def kill(self) -> None:
        """End it and everything it started, now: it stopped answering, so it cannot end its runs itself.
        Its children die with it (their death signal; in bubblewrap the PID namespace); its units' cgroups
        are killed from here."""
        kill_launcher_units(self.cgroups, self.units_tag)
        self.proc.kill()
        try:
            self.ctrl.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.ctrl.close()
        try:
            self.proc.wait(timeout=LAUNCHER_ANSWER_SECONDS)
        except subprocess.TimeoutExpired:
            _log.error("launcher %d did not exit after SIGKILL", self.proc.pid)

    def stop(self) -> None:
        try:
            self.ctrl.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.ctrl.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
