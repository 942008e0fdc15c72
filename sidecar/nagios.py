"""What a monitoring-plugins-style executable says: its state, its message, its long output, its perfdata.

Pure rules, no I/O (the `nagios` built-in runs the executable inside the sandbox and hands its exit code
and output here). They follow the Monitoring Plugins development guidelines:

- **exit code → state**: 0 ok, 1 warning, 2 critical, 3 unknown; anything else is unknown, the code named.
- **output**: the first line is the message up to an optional `|`; the lines after it are long output up to
  the first line holding a `|`, after which everything is performance data (that line's rest and every
  following line)::

      DISK OK - free space: / 3326 MB (56%); | /=2643MB;5948;5958;0;5968
      / 15272 MB (77%);
      /boot 68 MB (69%); | /boot=68MB;88;93;0;98
      /home=69357MB;253404;253409;0;253414

- **perfdata**: space-separated `'label'=value[UOM];[warn];[crit];[min];[max]`; a label with spaces is
  quoted with `'`, a quote inside it doubled (`''`); trailing fields may be left out or empty; a value of
  `U` is unknown; warn and crit are ranges (`10`: outside 0..10 alerts; `10:` below 10; `~:5` above 5;
  `10:20` outside; `@10:20` inside).
- **units to base units**: `s`, `ms`, `us` → seconds; `B`, `KB`, `MB`, `GB`, `TB` → bytes (binary
  multiples, as `check_disk` means them); `%` stays a percentage (unit `percent`); `c` is a counter (unit
  `total`); no unit: a plain number. Thresholds and min/max are scaled like the value. An item that does not
  parse is skipped and counted, never a failure.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["STATES", "Output", "Perfdata", "Range", "parse_output", "parse_perfdata", "parse_range", "state_of"]

#: The states a check can be in, by exit code.
STATES: tuple[str, ...] = ("ok", "warning", "critical", "unknown")

#: UOM -> (multiplier to the base unit, the base unit's name as metric names spell it, is a counter).
UNITS: dict[str, tuple[float, str, bool]] = {
    "": (1.0, "", False),
    "s": (1.0, "seconds", False), "ms": (1e-3, "seconds", False), "us": (1e-6, "seconds", False),
    "%": (1.0, "percent", False),
    "B": (1.0, "bytes", False), "KB": (1024.0, "bytes", False), "MB": (1024.0**2, "bytes", False),
    "GB": (1024.0**3, "bytes", False), "TB": (1024.0**4, "bytes", False),
    "c": (1.0, "total", True),
}

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_VALUE = re.compile(rf"({_NUMBER}|U)([a-zA-Z%]*)")
_RANGE = re.compile(rf"(@)?(?:(~|{_NUMBER})?:)?({_NUMBER})?")


@dataclass(frozen=True)
class Range:
    """A threshold range: the check alerts when the value is outside [low, high] (inside, with `@`)."""

    low: float
    high: float
    inside: bool = False

    def alerts(self, value: float) -> bool:
        within = self.low <= value <= self.high
        return within if self.inside else not within


@dataclass(frozen=True)
class Perfdata:
    label: str
    #: in the base unit; None for `U` (the plugin could not determine it)
    value: float | None
    unit: str
    counter: bool = False
    warning: Range | None = None
    critical: Range | None = None
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class Output:
    state: str
    message: str
    long_output: str
    perfdata: tuple[Perfdata, ...]
    #: perfdata items that did not parse (skipped)
    invalid: int


def state_of(exit_code: int) -> tuple[str, str | None]:
    """The state an exit code means, and a note when the code is not one of the four."""
    if 0 <= exit_code < len(STATES):
        return STATES[exit_code], None
    return "unknown", f"exit code {exit_code} is not a plugin state (0-3)"


def parse_range(text: str, scale: float = 1.0) -> Range | None:
    """A warn/crit range (`[@][start:][end]`, start `~` for minus infinity), scaled; None when malformed."""
    m = _RANGE.fullmatch(text)
    if m is None:
        return None
    inside, start, end = m.group(1) is not None, m.group(2), m.group(3)
    colon = ":" in text
    if end is None and not colon:
        return None  # empty, or a bare "@"
    low = 0.0 if start is None else -math.inf if start == "~" else float(start) * scale
    high = math.inf if end is None else float(end) * scale
    if not (low <= high) or math.isnan(low) or math.isnan(high):
        return None
    return Range(low, high, inside)


def _number(text: str, scale: float) -> float | None | bool:
    """A min/max field: the scaled number, None when empty, False when malformed."""
    if not text:
        return None
    if re.fullmatch(_NUMBER, text) is None:
        return False
    return float(text) * scale


def _items(text: str) -> list[str]:
    """Split perfdata into `label=rest` items, honouring quoted labels (an unclosed quote takes the rest)."""
    items: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        start = i
        if text[i] == "'":
            i += 1
            while True:
                j = text.find("'", i)
                if j < 0:
                    return [*items, text[start:]]
                if j + 1 < n and text[j + 1] == "'":
                    i = j + 2
                    continue
                i = j + 1
                break
        while i < n and not text[i].isspace():
            i += 1
        items.append(text[start:i])
    return items


def _label(raw: str) -> str | None:
    if raw.startswith("'"):
        if len(raw) < 2 or not raw.endswith("'"):
            return None
        raw = raw[1:-1].replace("''", "'")
    return raw or None


def _perfdata_item(item: str) -> Perfdata | None:
    if item.startswith("'"):
        close = item.rfind("'=")
        if close <= 0:
            return None
        label, rest = _label(item[: close + 1]), item[close + 2 :]
    else:
        label_text, eq, rest = item.partition("=")
        if not eq:
            return None
        label = _label(label_text)
    if label is None or "=" in label:
        return None
    fields = rest.split(";")
    if len(fields) > 5:
        return None
    fields += [""] * (5 - len(fields))
    m = _VALUE.fullmatch(fields[0])
    if m is None or m.group(2) not in UNITS:
        return None
    scale, unit, counter = UNITS[m.group(2)]
    value = None if m.group(1) == "U" else float(m.group(1)) * scale
    if value is not None and not math.isfinite(value):
        return None
    warning = parse_range(fields[1], scale) if fields[1] else None
    critical = parse_range(fields[2], scale) if fields[2] else None
    if (fields[1] and warning is None) or (fields[2] and critical is None):
        return None
    low, high = _number(fields[3], scale), _number(fields[4], scale)
    if low is False or high is False:
        return None
    return Perfdata(label, value, unit, counter, warning, critical,
                    low if isinstance(low, float) else None, high if isinstance(high, float) else None)


def parse_perfdata(text: str) -> tuple[list[Perfdata], int]:
    """Every item that parses, and how many did not."""
    items = _items(text.strip())
    parsed: list[Perfdata] = []
    invalid = 0
    for item in items:
        one = _perfdata_item(item)
        if one is None:
            invalid += 1
        else:
            parsed.append(one)
    return parsed, invalid


def parse_output(exit_code: int, stdout: str) -> Output:
    """State, message, long output and perfdata of one run of a monitoring plugin."""
    state, note = state_of(exit_code)
    lines = stdout.splitlines()
    first = lines[0] if lines else ""
    message, bar, perf = first.partition("|")
    perf_parts = [perf] if bar else []
    long_lines: list[str] = []
    in_perf = False
    for line in lines[1:]:
        if in_perf:
            perf_parts.append(line)
            continue
        text, bar, rest = line.partition("|")
        long_lines.append(text.rstrip() if bar else line)
        if bar:
            in_perf = True
            perf_parts.append(rest)
    message = message.strip() or f"(no output; exit code {exit_code})"
    if note:
        message = f"{message} ({note})"
    perfdata, invalid = parse_perfdata(" ".join(perf_parts))
    long_output = "\n".join(long_lines).strip("\n")
    return Output(state, message, long_output, tuple(perfdata), invalid)
