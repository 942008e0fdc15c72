"""A plugin's template (the zygote pattern): a process that imported the plugin once and forks its runs.

Forked by the launcher, a template takes on everything its runs will have before any plugin code
runs: its own process group, the scrubbed environment, a private `TMPDIR`/`HOME`, the run's
`RLIMIT_AS` and process limit, `no_new_privs` and, when the launcher runs as root, an identity of
its own (every run of this template wears it; no other plugin's run can signal them). It then
imports the plugin, refuses to serve if the import started a thread (a fork would inherit locks
held by threads that do not exist in the child), freezes the heap out of the collector's reach
(so runs do not copy its pages by touching reference counts in a collection), and answers fork
requests from the launcher until its socket closes.

A run is forked as the launcher's child (`sibling_fork`: one fork, the run's parent is the template's),
so the launcher reaps it, reports its exit and ends its unit exactly as for a run it forked itself.
Where the kernel refuses that, it is forked twice: the intermediate process exits at once, and the run
is re-parented to the launcher (a child subreaper).

Its messages to and from the launcher are declared in `protocol` (the template socket).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import sys
from typing import Any, NoReturn

from .child import (
    _PR_SET_NO_NEW_PRIVS,
    _PR_SET_PDEATHSIG,
    REQUEST_FD,
    Identity,
    _confine,
    _flush_std,
    await_end,
    become_unit,
    confine_fds,
    drop_privileges,
    error_from,
    load_entry,
    read_request,
    serve_request,
    use_caller_path,
    warm_run_path,
)
from .outcomes import classify_exception
from .protocol import Fork, TemplateMessage, Want
from .sibling_fork import fork_sibling
from .title import set_title

__all__ = ["TEMPLATE_FD", "template_main"]

#: The template's socket to the launcher, once the template has settled its fds.
TEMPLATE_FD = 3


def _send(msg: TemplateMessage) -> None:
    os.write(TEMPLATE_FD, json.dumps(msg).encode())


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # pragma: no cover - /proc missing
        import threading

        return threading.active_count()


def _settle(sock: int, tmp: str, prctl: Any, drop: Identity | None) -> None:
    os.setsid()  # a unit of its own: no run (its own included) can join its process group
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # die with the launcher
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.dup2(sock, TEMPLATE_FD, inheritable=False)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # import-time output goes nowhere: no run would own it
        os.dup2(devnull, fd)
    # fd 4 is held too, so that what the plugin opens at import lands above the run's fixed fds
    # (0-4) and is still open in each run, as it would be had the run imported the plugin itself.
    os.dup2(devnull, REQUEST_FD, inheritable=False)
    os.closerange(REQUEST_FD + 1, 1 << 16)
    os.environ["TMPDIR"] = os.environ["HOME"] = tmp
    if drop is not None:
        drop_privileges(prctl, tmp, drop)
    if prctl is not None:
        prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def _run_main(fds: tuple[int, int, int, int], tmp: str, func: Any, prctl: Any, launcher: int,
              name: str) -> NoReturn:
    """The run: like a launcher's spare, but the plugin is already imported."""
    code = 0
    try:
        set_title(f"sidecar: spare of {name}")  # forked ahead, waiting for a run of its plugin
        become_unit(prctl)
        confine_fds(fds, keep_others=True)  # fd 3 (the template's socket) is overwritten by the result's
        os.environ["TMPDIR"] = os.environ["HOME"] = tmp
        warm_run_path()  # pre-faulting while nobody waits, as a launcher's spare does on a stand-in plugin
        request = read_request()
        if request is None:
            os._exit(0)
        set_title(f"sidecar: run of {request['plugin']['name']}")
        # The request comes after the launcher registered us, so the launcher is our parent (from birth,
        # or once a middle process left): only now can the death signal name the right process.
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if prctl is not None and os.getppid() != launcher:
            os._exit(70)  # the launcher is gone (or never adopted us): nobody would guard this run
        gc.unfreeze()
        serve_request(request, func)
        await_end()
    except BaseException:  # noqa: B036 - the launcher reports a missing result as a crash
        code = 70
    os._exit(code)


def _fork_run(fds: list[int], tmp: str, func: Any, prctl: Any, launcher: int, name: str) -> int:
    """Fork a run; its pid once the plugin's after-fork hooks have returned in it (0: it could not be forked).

    The answer waits for those hooks, so that one that hangs hangs the template, which the launcher
    replaces within its fork-answer deadline (the plugin is then imported per run), as it did when a
    middle process ran them."""
    r, w = os.pipe()
    try:
        pid = fork_sibling()
    except OSError:
        os.close(r)
        os.close(w)
        raise
    if pid == 0:  # pragma: no cover - the run, the launcher's child from birth
        os.close(r)
        os.close(w)  # past the hooks: the template may answer
        _run_main((fds[0], fds[1], fds[2], fds[3]), tmp, func, prctl, launcher, name)
    os.close(w)
    try:
        if pid is not None:
            os.read(r, 1)  # end-of-file once the run closed its end (or died)
            return pid
    finally:
        os.close(r)
    return _fork_twice(fds, tmp, func, prctl, launcher, name)


def _fork_twice(fds: list[int], tmp: str, func: Any, prctl: Any, launcher: int, name: str) -> int:
    """Where `fork_sibling` is refused: fork a middle process that forks the run and leaves at once."""
    r, w = os.pipe()
    first = os.fork()
    if first == 0:  # pragma: no cover - the intermediate: fork the run, tell its pid, leave
        try:
            os.close(r)
            pid = os.fork()
            if pid == 0:
                os.close(w)
                _run_main((fds[0], fds[1], fds[2], fds[3]), tmp, func, prctl, launcher, name)
            os.write(w, str(pid).encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        data = os.read(r, 32)
    finally:
        os.close(r)
        os.waitpid(first, 0)  # the run is the launcher's child once this returns
    return int(data) if data else 0


def template_main(sock: int, prctl: Any, tmp: str, drop: Identity | None, spec: Want) -> NoReturn:
    """Entry point in a template forked by the launcher; `spec` is the want that asked for it."""
    launcher = os.getppid()
    try:
        _settle(sock, tmp, prctl, drop)
        set_title(f"sidecar: template of {spec['plugin']['name']}")
        os.read(TEMPLATE_FD, 64)  # `PLACED`: the launcher put us in our unit; plugin code may start
        _confine(int(spec["memory_limit_mb"]), spec.get("max_processes"))
        use_caller_path(spec.get("sys_path"))
        try:
            func = load_entry(spec["plugin"])
        except BaseException as exc:  # noqa: B036 - an import's failure is its waiting runs' outcome
            _flush_std()
            _send({"t": "failed", "message": error_from(exc, classify_exception(exc, during_import=True))})
            os._exit(0)
        _flush_std()  # to /dev/null, so no run inherits a buffer holding import-time output
        count = _threads()
        if count > 1:
            _send({"t": "threads", "count": count})
            os._exit(0)
        module = sys.modules.get(getattr(func, "__module__", "") or "")
        gc.collect()
        gc.freeze()
        _send({"t": "ready", "origin": getattr(module, "__file__", None)})
        channel = socket.socket(fileno=TEMPLATE_FD)
        while True:
            msg, fds, _flags, _addr = socket.recv_fds(channel, 4096, 4)
            if not msg:
                os._exit(0)
            fork: Fork = json.loads(msg)  # from the launcher: trusted
            try:
                pid = _fork_run(fds, fork["tmp"], func, prctl, launcher, spec["plugin"]["name"]) if len(fds) == 4 else 0
            except OSError:
                pid = 0
            for fd in fds:
                os.close(fd)
            _send({"t": "forked", "pid": pid})
    except BaseException:  # noqa: B036 - a template that cannot serve just goes; its runs fall back
        os._exit(70)
