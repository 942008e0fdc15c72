"""Run a monitoring-plugins-style executable (`check_disk`, `check_http`, a vendor's check) as a check.

The command comes only from a `[checks.NAME]` table (`check_only`: the sidecar refuses to run the bare
plugin from a request, so the API never chooses what to execute)::

    [checks.root_disk]
    plugin = "nagios"
    params = { command = ["/usr/lib/nagios/plugins/check_disk", "-w", "20%", "-c", "10%", "-p", "/"] }
    interval_seconds = 60

The executable runs inside this run's sandbox, as a child of the plugin: its whole process tree is under
the run's timeout, memory limit and containment, with the run's scrubbed environment. Its exit code is the
check's state (`sidecar.nagios.state_of`), its first line the state's reason; the run succeeds whenever the
executable ran and exited, whatever the state. Its performance data become gauges (the `perfdata` label is
the item's label; values in base units):

- `nagios_perfdata{_seconds,_bytes,_percent}`: the value (no suffix: a plain number); `nagios_perfdata_counter`:
  a counter's (UOM `c`) current value, for `rate()`;
- `nagios_perfdata_{warning,critical}_{low,high}{_unit}`: the finite ends of the thresholds (an `@` range,
  which alerts *inside*, carries `inside="true"`); `nagios_perfdata_{min,max}{_unit}`: the item's min/max.

A value of `U` exports no value series. Perfdata that does not parse is skipped and counted (the result's
`perfdata_invalid`, and `sidecar_plugin_values_dropped_total{reason="invalid"}`), never failing the run.
Output past `NAGIOS_MAX_OUTPUT_BYTES` is read and thrown away (the executable is never blocked on a full
pipe); its stderr goes to the run's captured stderr.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

from sidecar import defaults, nagios
from sidecar.check import dropped, gauge, state

description = "Runs a monitoring-plugins executable (check_disk, check_http, ...) configured in a check table"
version = "1.0.0"
timeout_seconds = 30.0
memory_limit_mb = 512
#: the command is the operator's: only a configured check runs it, never a request
check_only = True

_HELP = "Performance data of a monitoring plugin run by the sidecar (label perfdata: the item's label)"


def _command(command: Any) -> list[str]:
    if (not isinstance(command, list) or not command
            or not all(isinstance(arg, str) and "\0" not in arg for arg in command)):
        raise ValueError(f"command must be a non-empty list of strings (the executable, then its arguments; no "
                         f"shell), got {command!r}")
    if not os.path.isabs(command[0]):
        raise ValueError(f"command[0] must be the executable's absolute path, got {command[0]!r}")
    return command


def _read(proc: subprocess.Popen[bytes], limit: int) -> tuple[bytes, bool]:
    """The first `limit` bytes of the executable's stdout, draining the rest until it closes."""
    assert proc.stdout is not None
    kept = bytearray()
    cut = False
    while chunk := os.read(proc.stdout.fileno(), 65536):
        room = limit - len(kept)
        if len(chunk) > room:
            cut = True
        kept += chunk[: max(room, 0)]
    return bytes(kept), cut


def _export(item: nagios.Perfdata) -> None:
    family = "nagios_perfdata_counter" if item.counter else "nagios_perfdata"
    unit = "" if item.counter else item.unit
    suffix = f"_{unit}" if unit else ""

    def one(kind: str, value: float | None, **extra: str) -> None:
        if value is not None and abs(value) != float("inf"):
            name = f"{family}{'_' + kind if kind else ''}{suffix}"
            gauge(name, value, help=_HELP, unit=unit, perfdata=item.label, **extra)

    one("", item.value)
    for kind, bounds in (("warning", item.warning), ("critical", item.critical)):
        if bounds is not None:
            extra = {"inside": "true"} if bounds.inside else {}
            one(f"{kind}_low", bounds.low, **extra)
            one(f"{kind}_high", bounds.high, **extra)
    one("min", item.min)
    one("max", item.max)


def run(command: Any = None) -> dict[str, Any]:
    argv = _command(command)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, close_fds=True)
    except OSError as exc:
        raise RuntimeError(f"cannot execute {argv[0]!r}: {exc.strerror or exc}") from None
    with proc:
        raw, cut = _read(proc, defaults.NAGIOS_MAX_OUTPUT_BYTES)
        code = proc.wait()
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        raise RuntimeError(f"{argv[0]!r} was killed by signal {name}")
    out = nagios.parse_output(code, raw.decode("utf-8", "replace"))
    state(out.state, out.message)
    for item in out.perfdata:
        _export(item)
    if out.invalid:
        dropped("invalid", out.invalid)
    long_output = out.long_output
    if cut:
        long_output += f"\n(output cut at {defaults.NAGIOS_MAX_OUTPUT_BYTES} bytes)"
    return {"exit_code": code, "message": out.message, "long_output": long_output,
            "perfdata_invalid": out.invalid}
