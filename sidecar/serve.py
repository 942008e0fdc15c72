"""`sidecar serve`: the runner in this process, gunicorn workers in front of it.

Process tree::

    sidecar serve (runner: sandbox client, limit, scheduler, history, metrics; Unix socket)
    ├── launcher (forks one sandboxed child per run)
    └── gunicorn master ── workers (HTTP, relay to the runner's socket)

If gunicorn exits, so does serve (with its status); SIGTERM/SIGINT stop gunicorn first, then the
runner. If the runner is killed, gunicorn and the launcher get their parent-death signal. SIGHUP
reloads the checks and plugin directories (`Runner.reload`); a refused reload is logged.

Secrets: the API token reaches gunicorn in a memfd inherited by fd number, never in an argument
or an environment variable; the runner's socket lives in a 0700 directory plugins cannot see, and
answers the gunicorn master's children only (`RunnerServer.trusted_parent`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from types import FrameType

from .app import WORKER_ENV
from .config import Settings, load_settings
from .errors import SidecarError
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
    sock_dir = tempfile.mkdtemp(prefix="sidecar-")  # 0700
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
    env[WORKER_ENV] = json.dumps({
        "socket": server.server_address, "bind": settings.bind, "workers": settings.workers,
        "threads": settings.threads, "api_token_fd": token_fd, "max_body_bytes": settings.max_body_bytes,
        "max_timeout_seconds": settings.max_timeout_seconds,
        "log_level": settings.log_level,
        "max_concurrent_runs": settings.max_concurrent_runs,  # bounds each worker's connections to the runner
    })
    try:
        gunicorn = subprocess.Popen([sys.executable, "-m", "gunicorn", "--config", "python:sidecar.gunicorn_conf"],
                                    env=env, pass_fds=() if token_fd is None else (token_fd,))
    finally:
        if token_fd is not None:
            os.close(token_fd)
    server.trusted_parent = gunicorn.pid  # workers are the master's children; nobody else may call

    def forward(signum: int, frame: FrameType | None) -> None:
        if gunicorn.poll() is None:
            gunicorn.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        code = gunicorn.wait()
    finally:
        server.shutdown()
        server.server_close()
        runner.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
    log.info("sidecar: gunicorn exited with %s", code)
    return 0 if code in (0, -signal.SIGTERM) else (code if code > 0 else 1)


def _token_memfd(token: str | None) -> int | None:
    """The token in an anonymous file that gunicorn inherits: readable by its workers, listed nowhere."""
    if token is None:
        return None
    fd = os.memfd_create("sidecar-api-token", os.MFD_CLOEXEC)
    os.write(fd, token.encode())
    return fd
