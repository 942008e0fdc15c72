"""Check that a process is running: by name, or by the pid in a pid file.

Useful to an operator to catch a daemon that died or never started (the classic "port open but worker
gone", or a crashed cron-style agent): too few matching processes, a stale pid file or a zombie makes
the check **critical** on a run that succeeded (an unreadable pid file fails the run). It reports how
many processes matched (`count`), their pids, their total resident memory (`rss_bytes`) and CPU time
(`cpu_seconds`, user + system), exported as `sidecar_check_value{field}`, so a leak or a fork storm
shows on a graph.

By name, a process matches when `psutil.Process.name()` or the basename of its `cmdline[0]` equals
`name`; zombies and the probe's own process are not counted.
"""

from __future__ import annotations

import os

import psutil

from sidecar.check import state

description = "Process check by name or pid file; critical when fewer than min_count are running (or a zombie)"
version = "1.0.0"
timeout_seconds = 30.0
memory_limit_mb = 256
#: reads the host's processes: isolation shows it the host's /proc (signals still stay in its namespace)
host_processes = True


class _Down(Exception):
    """The process is not there (stale pid file, zombie): the check is critical, the run succeeded."""


def _cpu(times: object) -> float:
    return float(getattr(times, "user", 0.0) + getattr(times, "system", 0.0)) if times is not None else 0.0


def _by_name(name: str) -> tuple[list[int], int, float]:
    me = os.getpid()
    pids: list[int] = []
    rss = 0
    cpu = 0.0
    for proc in psutil.process_iter(["name", "cmdline", "status", "memory_info", "cpu_times"], ad_value=None):
        info = proc.info
        if proc.pid == me or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmdline = info["cmdline"]
        argv0 = os.path.basename(cmdline[0]) if cmdline else None
        if info["name"] != name and argv0 != name:
            continue
        pids.append(proc.pid)
        if info["memory_info"] is not None:
            rss += int(info["memory_info"].rss)
        cpu += _cpu(info["cpu_times"])
    return sorted(pids), rss, cpu


def _read_pid(pid_file: str) -> int:
    try:
        with open(pid_file, encoding="ascii", errors="replace") as handle:
            text = handle.read(64).strip()
    except FileNotFoundError:
        raise _Down(f"pid file {pid_file!r} does not exist (is the process running?)") from None
    except OSError as exc:
        raise RuntimeError(f"cannot read pid file {pid_file!r}: {exc.strerror or exc}") from None
    first = text.split()[0] if text.split() else ""
    if not first.isdigit() or int(first) <= 0:
        raise RuntimeError(f"pid file {pid_file!r} does not hold a pid: {text[:32]!r}")
    return int(first)


def _by_pid_file(pid_file: str) -> tuple[list[int], int, float]:
    pid = _read_pid(pid_file)
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            status = proc.status()
            rss = int(proc.memory_info().rss) if status != psutil.STATUS_ZOMBIE else 0
            cpu = _cpu(proc.cpu_times()) if status != psutil.STATUS_ZOMBIE else 0.0
    except psutil.ZombieProcess:  # a NoSuchProcess subclass: test it first
        status = psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        raise _Down(f"process {pid} from pid file {pid_file!r} is not running (stale pid file)") from None
    except psutil.AccessDenied:
        return [pid], 0, 0.0  # it exists; its memory is someone else's business
    if status == psutil.STATUS_ZOMBIE:
        raise _Down(f"process {pid} from pid file {pid_file!r} is a zombie (exited, not reaped)")
    return [pid], rss, cpu


def run(name: str | None = None, pid_file: str | None = None, min_count: int = 1) -> dict[str, object]:
    if (name is None) == (pid_file is None):
        raise ValueError("give exactly one of name or pid_file")
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if pid_file is not None and (not isinstance(pid_file, str) or not pid_file):
        raise ValueError(f"pid_file must be a non-empty string, got {pid_file!r}")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 0:
        raise ValueError(f"min_count must be an integer >= 0, got {min_count!r}")

    if name is not None:
        pids, rss, cpu = _by_name(name)
        what = f"processes named {name!r}"
    else:
        assert pid_file is not None
        try:
            pids, rss, cpu = _by_pid_file(pid_file)
        except _Down as down:
            state("critical", str(down))
            return {"count": 0, "pids": [], "rss_bytes": 0, "cpu_seconds": 0.0}
        what = f"processes from pid file {pid_file!r}"
    if len(pids) < min_count:
        state("critical", f"found {len(pids)} {what}, expected at least {min_count}")
    return {"count": len(pids), "pids": pids, "rss_bytes": rss, "cpu_seconds": round(cpu, 3)}
