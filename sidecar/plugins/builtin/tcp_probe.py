"""Check that a TCP port accepts connections, and how fast.

Useful to an operator for dependencies that do not speak HTTP (databases, caches, brokers, SMTP): a
refused connection, an unresolvable name or a timeout makes the check **critical** on a run that
succeeded (the target is down, not the probe), and `connect_seconds` tracks the handshake time when it
works; `up` is 1 or 0. Bad parameters fail the run (outcome `value`). The connection is closed right
away; nothing is sent.
"""

from __future__ import annotations

import math
import socket
import time

from sidecar.check import state

description = "TCP connect probe: critical when the port refuses, times out or the host does not resolve"
version = "1.0.0"
timeout_seconds = 30.0
memory_limit_mb = 256
#: probes need the network even under strict isolation
network = True


def run(host: str, port: int, timeout: float = 3.0) -> dict[str, object]:
    if not isinstance(host, str) or not host.strip():
        raise ValueError(f"host must be a non-empty string, got {host!r}")
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):  # "[::1]" as written in URLs
        host = host[1:-1]
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port must be an integer from 1 to 65535, got {port!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ValueError(f"timeout must be a number of seconds, got {timeout!r}")
    if not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")

    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    started = time.perf_counter()
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as exc:
        return _down(host, port, f"cannot resolve {host!r}: {exc.strerror or exc}")
    except TimeoutError:
        return _down(host, port, f"timed out after {timeout:g}s connecting to {target}")
    except ConnectionRefusedError:
        return _down(host, port, f"connection refused by {target}")
    except OSError as exc:
        return _down(host, port, f"cannot connect to {target}: {exc.strerror or exc}")
    connect_seconds = round(time.perf_counter() - started, 6)
    with sock:
        address = str(sock.getpeername()[0])
    return {"host": host, "port": port, "up": 1, "connect_seconds": connect_seconds, "address": address}


def _down(host: str, port: int, why: str) -> dict[str, object]:
    state("critical", why)
    return {"host": host, "port": port, "up": 0}
