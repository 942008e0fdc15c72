"""Host load average per CPU; fails when the 5-minute figure per CPU is above `max_per_cpu`.

An example of a plugin of your own: docker-compose.yml mounts this directory into the sidecars. Only the
standard library: a plugin runs in the sidecar's Python, so a dependency must be installed in the image.
"""

import os

description = "load average per CPU; fails above max_per_cpu (5-minute figure)"
version = "1.0.0"
timeout_seconds = 5
memory_limit_mb = 128


def run(max_per_cpu=2.0):
    if isinstance(max_per_cpu, bool) or not isinstance(max_per_cpu, (int, float)) or max_per_cpu <= 0:
        raise ValueError(f"max_per_cpu must be a number > 0, got {max_per_cpu!r}")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    one, five, fifteen = os.getloadavg()
    per_cpu = round(five / cpus, 3)
    if per_cpu > max_per_cpu:
        raise RuntimeError(f"5-minute load {five:.2f} on {cpus} CPUs is {per_cpu} per CPU, above {max_per_cpu}")
    return {"load1": one, "load5": five, "load15": fifteen, "cpus": cpus, "load5_per_cpu": per_cpu}
