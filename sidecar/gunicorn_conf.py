"""Gunicorn configuration used by `sidecar serve` (`--config python:sidecar.gunicorn_conf`).

Workers are thin HTTP front ends (`sidecar.worker.SidecarWorker`: gevent, JSON errors): all
state lives in the runner process, so there is no prometheus multiprocess directory to wipe and
nothing to clean up when a worker dies.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import signal
from typing import Any

from sidecar import defaults

_cfg = json.loads(os.environ.get(defaults.WORKER_ENV, "{}"))

bind = [_cfg.get("bind", defaults.BIND)]
workers = int(_cfg.get("workers", defaults.WORKERS))
# gevent: a slow client costs a greenlet, not a thread (see sidecar/worker.py). `threads` does not
# apply to it; worker_connections bounds the connections (slow or not) each worker holds open, and
# the worker closes the longest-idle one to make room (sidecar.worker.SidecarWorker.handle).
worker_class = "sidecar.worker.SidecarWorker"
worker_connections = defaults.WORKER_CONNECTIONS
# Heartbeats come from their own greenlet, so runs up to the max timeout never trip this.
timeout = 30
# `sidecar serve` stops gunicorn only once runs in flight are done (or ended at the end of the stop grace), so
# this covers answers still being written. A master that gets its SIGTERM straight from a supervisor (a
# process-group kill) waits as long as serve would, plus that margin.
graceful_timeout = math.ceil(float(_cfg.get("stop_grace_seconds", defaults.STOP_GRACE_SECONDS))) + 5
# The deadline of every wait for a request's line and headers, the first request's too (timeout_ctx).
keepalive = defaults.IDLE_TIMEOUT_SECONDS
proc_name = "sidecar"
accesslog = None
errorlog = "-"
loglevel = str(_cfg.get("log_level", defaults.LOG_LEVEL)).lower()
wsgi_app = "sidecar.app:worker_app()"
# Gunicorn >= 25 opens a control socket in $HOME by default: unused here, and a read-only root
# filesystem (the Kubernetes manifest) has nowhere to put it.
control_socket_disable = True


_PR_SET_PDEATHSIG = 1


def _die_with_parent(signum: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def on_starting(server: Any) -> None:
    """Die with the runner that started us (PR_SET_PDEATHSIG), so a killed runner leaves no server."""
    _die_with_parent(signal.SIGTERM)


def post_fork(server: Any, worker: Any) -> None:
    """A worker serves only under its master: if the master dies (even SIGKILLed), the worker is killed at
    once, rather than answering with a runner that is stopping. Checked again after the prctl, in case the
    master died before it."""
    _die_with_parent(signal.SIGKILL)
    if os.getppid() != server.pid:
        os._exit(1)
