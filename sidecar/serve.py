"""`sidecar serve`: the runner in this process, gunicorn workers in front of it.

Process tree::

    sidecar serve (runner: sandbox client, limit, scheduler, history, metrics; Unix socket)
    ├── launcher (forks one sandboxed child per run)
    └── gunicorn master ── workers (HTTP, relay to the runner's socket)

If gunicorn exits, so does serve. SIGTERM/SIGINT stop cleanly: the runner takes no new work, lets runs in
flight finish for up to `stop_grace_seconds` (gunicorn still relays their answers), ends the rest `aborted`
(`SidecarStopping`) and records them; then gunicorn is stopped, then the runner closed. serve exits 0
only after a stop it was asked for: any other end of gunicorn is a failure a supervisor must see
(`exit_status`). If the runner is killed, gunicorn and the launcher get their parent-death signal. SIGHUP
reloads the checks and plugin directories (`Runner.reload`); a refused reload is logged.

Secrets: the API token reaches gunicorn in a memfd inherited by fd number, never in an argument
or an environment variable; the runner's socket lives in a 0700 directory plugins cannot see, and
answers the gunicorn master's children only (`RunnerServer.trusted_parent`).
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

from . import defaults
from .config import Settings, load_settings
from .errors import SidecarError
from .instance import claim_data_dir, make_runtime_dir, remove_stale_runtime_dirs
from .rpc import RunnerServer
from .runner import Runner
from .sandbox.isolation import require_available

__all__ = ["serve"]

log = logging.getLogger("sidecar")


def _reload_on_sighup(runner: Runner) -> None:
    """SIGHUP only sets an event (nothing else is safe in a handler); this thread does the reload."""
    hup = threading.Event()

    def loop() -> None:
        while True:
            hup.wait()
            hup.clear()
            try:
                runner.reload()
            except SidecarError as exc:
                log.error("SIGHUP: %s", exc.message)
            except Exception:
                log.exception("SIGHUP: reload failed")

    threading.Thread(target=loop, name="sighup-reload", daemon=True).start()
    signal.signal(signal.SIGHUP, lambda signum, frame: hup.set())


def serve(settings: Settings, reload_source: Callable[[], Settings] = load_settings) -> int:
    """Run until gunicorn exits; `reload_source` re-reads the configuration on reload (the same flags)."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    require_available(settings.isolation)
    data_claim = claim_data_dir(settings.data_dir)  # one sidecar per data directory, or exit 2 naming the holder
    for path in remove_stale_runtime_dirs():
        log.info("removed %s, left by a sidecar that was killed", path)
    sock_dir, runtime_claim = make_runtime_dir()  # 0700
    runner = Runner(settings, hidden=(sock_dir,), reload_source=reload_source)
    _reload_on_sighup(runner)
    for where, why in runner.registry.rejected:
        log.warning("rejected %s: %s", where, why)
    log.info("sidecar: %d plugins, history %s, up to %d concurrent runs", len(runner.registry),
             runner.store.path, settings.max_concurrent_runs)
    server = RunnerServer(os.path.join(sock_dir, "runner.sock"), runner)
    threading.Thread(target=server.serve_forever, name="rpc", daemon=True).start()
    token_fd = _token_memfd(settings.api_token)
    env = {k: v for k, v in os.environ.items() if k != "SIDECAR_API_TOKEN"}
    env[defaults.WORKER_ENV] = json.dumps({
        "socket": server.server_address, "bind": settings.bind, "workers": settings.workers,
        "threads": settings.threads, "api_token_fd": token_fd, "max_body_bytes": settings.max_body_bytes,
        "max_timeout_seconds": settings.max_timeout_seconds,
        "log_level": settings.log_level,
        "max_concurrent_runs": settings.max_concurrent_runs,  # bounds each worker's connections to the runner
        "stop_grace_seconds": settings.stop_grace_seconds,  # gunicorn's graceful timeout exceeds it
    })
    try:
        # -P: never import from serve's working directory (`-m` puts it first on sys.path: a `gunicorn/` there
        # would run as root).
        gunicorn = subprocess.Popen(
            [sys.executable, "-P", "-m", "gunicorn", "--config", "python:sidecar.gunicorn_conf"],
            env=env, pass_fds=() if token_fd is None else (token_fd,),
            cwd=sock_dir)  # gunicorn puts its working directory on sys.path: give it one nobody else writes
    finally:
        if token_fd is not None:
            os.close(token_fd)
    server.trusted_parent = gunicorn.pid  # workers are the master's children; nobody else may call

    stop_asked: list[int] = []
    # Any thread may receive a signal, and only the main thread's wait would be interrupted: the wakeup fd
    # (written by the C-level handler, whichever thread it ran on) wakes the main thread in every case.
    woken, wake = os.pipe()
    os.set_blocking(wake, False)
    signal.set_wakeup_fd(wake)
    signal.signal(signal.SIGTERM, lambda signum, frame: stop_asked.append(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: stop_asked.append(signum))
    try:
        _wait_for_stop_or_exit(gunicorn, woken, stop_asked)
        if stop_asked and gunicorn.poll() is None:
            # gunicorn keeps relaying while runs in flight finish, so their callers get their answers
            log.info("sidecar: stopping; runs in flight may finish for %g s", settings.stop_grace_seconds)
            runner.stop(settings.stop_grace_seconds)
            gunicorn.send_signal(signal.SIGTERM)
        code = gunicorn.wait()
    finally:
        signal.set_wakeup_fd(-1)
        os.close(woken)
        os.close(wake)
        server.shutdown()
        server.server_close()
        runner.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
        os.close(runtime_claim)
        os.close(data_claim)
    status, why = exit_status(code, asked=bool(stop_asked))
    (log.info if status == 0 else log.error)("sidecar: %s", why)
    return status


def _wait_for_stop_or_exit(gunicorn: subprocess.Popen[bytes], woken: int, stop_asked: list[int]) -> None:
    """Until a stop is asked or gunicorn exits (its pidfd). A signal writes a byte on `woken`; its Python handler
    has run by the time the loop looks again (SIGHUP wakes it too, and it waits on)."""
    pidfd = os.pidfd_open(gunicorn.pid)
    try:
        while not stop_asked:
            ready, _, _ = select.select([woken, pidfd], [], [])
            if pidfd in ready:
                return
            os.read(woken, 512)
    finally:
        os.close(pidfd)


def exit_status(code: int, asked: bool) -> tuple[int, str]:
    """serve's exit status and the line saying why, from gunicorn's `Popen.returncode` (pure).

    0 only when serve was asked to stop and gunicorn stopped cleanly; a signal serve did not send, or
    gunicorn ending on its own (even with 0), is a failure: 128 + the signal, as shells report it."""
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
        if asked and code == -signal.SIGTERM:
            return 0, "stopped"
        return 128 - code, f"gunicorn was killed by {name}{'' if asked else ' that serve did not send'}"
    if code == 0:
        return (0, "stopped") if asked else (1, "gunicorn exited 0 although serve was not asked to stop")
    return code, f"gunicorn exited with {code}"


def _token_memfd(token: str | None) -> int | None:
    """The token in an anonymous file that gunicorn inherits: readable by its workers, listed nowhere."""
    if token is None:
        return None
    fd = os.memfd_create("sidecar-api-token", os.MFD_CLOEXEC)
    os.write(fd, token.encode())
    return fd
