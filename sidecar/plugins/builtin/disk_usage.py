"""Report a filesystem's size, use and free space, and fail past a threshold.

Useful to an operator because a full disk is among the most common causes of outages (logs, spools,
databases): with `max_used_percent` or `min_free_bytes` set, the check turns **critical** (on a run that
succeeded) before the disk fills, and the returned numbers (`total_bytes`, `used_bytes`, `free_bytes`,
`used_percent`, exported as `sidecar_check_value{field}`) show the trend. `used_percent` is computed like
`df`: used / (used + space available to unprivileged users). A path that cannot be read fails the run.
"""

from __future__ import annotations

import math
import os
import shutil

from sidecar.check import state

description = "Disk usage of the filesystem holding `path`; critical past max_used_percent or min_free_bytes"
version = "1.0.0"
timeout_seconds = 30.0
memory_limit_mb = 256


def run(
    path: str = "/",
    max_used_percent: float | None = None,
    min_free_bytes: int | None = None,
) -> dict[str, object]:
    if not isinstance(path, str) or not path:
        raise ValueError(f"path must be a non-empty string, got {path!r}")
    if max_used_percent is not None:
        if isinstance(max_used_percent, bool) or not isinstance(max_used_percent, int | float):
            raise ValueError(f"max_used_percent must be a number, got {max_used_percent!r}")
        if not math.isfinite(max_used_percent) or not 0 <= max_used_percent <= 100:
            raise ValueError(f"max_used_percent must be between 0 and 100, got {max_used_percent!r}")
    if min_free_bytes is not None and (
        isinstance(min_free_bytes, bool) or not isinstance(min_free_bytes, int) or min_free_bytes < 0
    ):
        raise ValueError(f"min_free_bytes must be an integer >= 0, got {min_free_bytes!r}")
    if not os.path.exists(path):
        raise ValueError(f"path does not exist (or is not accessible): {path!r}")

    try:
        usage = shutil.disk_usage(path)
    except OSError as exc:
        raise RuntimeError(f"cannot read the disk usage of {path!r}: {exc.strerror or exc}") from None
    visible = usage.used + usage.free
    used_percent = round(usage.used / visible * 100, 2) if visible else 0.0

    if max_used_percent is not None and used_percent > max_used_percent:
        state("critical", f"{path!r} is {used_percent}% used, above max_used_percent={max_used_percent:g} "
                          f"({usage.free} bytes free)")
    elif min_free_bytes is not None and usage.free < min_free_bytes:
        state("critical",
              f"{path!r} has {usage.free} bytes free, below min_free_bytes={min_free_bytes} ({used_percent}% used)")
    return {
        "path": path,
        "total_bytes": usage.total,
        "used_bytes": usage.used,
        "free_bytes": usage.free,
        "used_percent": used_percent,
    }
