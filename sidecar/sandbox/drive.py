"""One run on its ticket: the request written into the child, its result and output read straight out of
it, its unit ended, and what the caller and the launcher saw made into its result (`run_result`)."""

from __future__ import annotations

import os
import select
import signal
import time
from typing import Any

from ..defaults import LAUNCHER_ANSWER_SECONDS, RUN_BACKSTOP_SECONDS
from ..framing import FrameError, FrameReader, encode, write_all
from .capture import Capture
from .channel import Channel
from .containment import end_unit_now, set_memory_limit
from .launcher_process import LauncherLost
from .protocol import Exit
from .result import PluginSandboxResult
from .run_request import RunRequest
from .run_result import Stalled, build_result, unreported

__all__ = ["drive", "kill_run"]


def kill_run(pidfd: int) -> None:
    """SIGKILL a run through its pidfd (its pid may be another namespace's); the launcher then kills
    its process group and reaps whatever it left."""
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def drive(channel: Channel, request: RunRequest, pid: int, fds: list[int], t0: float, started_at: float,
          stalled: Stalled) -> PluginSandboxResult:
    """Run one request on a ticket: write it into the child, read its result and output directly.

    `t0`/`started_at` are when the run was asked for (its deadline counts from there, waits for a template
    included); `stalled(launcher, why)` replaces a launcher that did not report the run's end in time."""
    req_w, res_r, out_r, err_r, pidfd = fds
    unit = channel.units.pop(pid, None)
    limit = request.memory_limit_mb * 1024 * 1024
    if unit and unit.get("limit") != limit:  # the whole tree's bound, in force before the run reads its request
        set_memory_limit(unit.get("memory"), bool(unit.get("memory_v2")), limit)
    try:
        write_all(req_w, encode(request.to_wire(pid)))
    except OSError:
        pass  # the child is already gone: its exit report says why
    os.close(req_w)
    fds[0] = -1
    # Told after the child has its request, so the launcher's work overlaps the run instead of
    # delaying it; the deadline counts from t0 all the same (CLOCK_MONOTONIC is system-wide).
    channel.start(pid, request, t0)
    result = FrameReader(limit=request.max_result_bytes + 65536)
    frames: list[bytes] = []
    out, err = Capture(request.max_output_bytes), Capture(request.max_output_bytes)
    sinks = {out_r: out.feed, err_r: err.feed}
    poller = select.poll()
    for fd in (res_r, out_r, err_r):
        os.set_blocking(fd, False)
        poller.register(fd, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    protocol_error: str | None = None
    exited = False
    backstop = False
    deadline = t0 + request.timeout_seconds + RUN_BACKSTOP_SECONDS

    def drain(fd: int, budget: int = 1 << 62) -> bool:
        """Read what is there; False at end-of-file."""
        nonlocal protocol_error
        while budget > 0:
            try:
                data = os.read(fd, 1 << 20)
            except BlockingIOError:
                return True
            if not data:
                return False
            budget -= len(data)
            if fd == res_r:
                result.feed(data)
                try:
                    frames.extend(result.frames())
                except FrameError:
                    protocol_error = "result channel exceeded its size cap"
                    kill_run(pidfd)
                    return False
            else:
                sinks[fd](data)
        return True

    while not frames and not exited and protocol_error is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            kill_run(pidfd)  # backstop: the launcher should have killed it at the deadline
            backstop = True
            break
        for fd, _ev in poller.poll(remaining * 1000):
            if fd == pidfd:
                exited = True
            elif not drain(fd):
                poller.unregister(fd)
    finished = time.monotonic()
    header: dict[str, Any] = {
        "wait_status": None, "timed_out": backstop, "memory_killed": False, "protocol_error": protocol_error,
        "execution_time_ms": (finished - t0) * 1000.0, "peak_memory_bytes": 0, "started_at": started_at,
        "finished_at": started_at + (finished - t0), "stdout": out.to_dict(), "stderr": err.to_dict(),
    }
    # The run is over. With its result in hand, the caller ends the run's unit itself where it can (its
    # cgroup and process tree, killed and waited for: nothing of the run is alive once its result is
    # returned), and answers without waiting for the launcher's exit report (it reaps and cleans up after;
    # later reads of this channel skip that report). Otherwise the launcher ends the unit and reports.
    if exited and not frames and protocol_error is None:
        drain(res_r, budget=request.max_result_bytes + 65536)  # it wrote its result, then left
    ended = end_unit_now(pidfd, unit) if frames and protocol_error is None and not backstop else None
    lost: LauncherLost | None = None
    if ended is None:  # else the leader's death (its pidfd) tells the launcher: nothing is left to kill
        try:
            channel.end(pid)
        except LauncherLost as exc:
            lost = exc
    for fd in (res_r, out_r, err_r):  # whatever was written before the end is in the pipes
        if not frames or fd != res_r:
            drain(fd, budget=4 << 20)
    header.update(stdout=out.to_dict(), stderr=err.to_dict())
    if ended is not None:
        peak, oom = ended
        # The launcher's deadline fires at t0 + timeout: a result read after it is the timeout's.
        header.update(wait_status=signal.SIGKILL, timed_out=finished >= t0 + request.timeout_seconds,
                      memory_killed=oom, memory_by="cgroup" if oom else "", peak_memory_bytes=peak)
        return build_result(request, header, frames[0])
    report: Exit | None = None
    if lost is None:
        try:
            report = channel.exit_of(pid, timeout=LAUNCHER_ANSWER_SECONDS)
        except LauncherLost as exc:
            lost = exc
    if report is None:
        kill_run(pidfd)
        return unreported(channel.launcher, request, header, frames, protocol_error, t0, str(lost), stalled)
    header.update(wait_status=report["status"], timed_out=bool(report["timed_out"]) or backstop,
                  memory_killed=report["memory_killed"], memory_by=report.get("memory_by", ""),
                  peak_memory_bytes=report["maxrss"])
    if frames and protocol_error is None:
        return build_result(request, header, frames[0])
    if protocol_error is None and len(result):
        header["protocol_error"] = "incomplete result frame"
    return build_result(request, header, b"")
