"""Memory the kernel can give to new work (MemAvailable); fails below `min_percent` of the total.

An example of a plugin of your own: docker-compose.yml mounts this directory into the sidecars. It reads
/proc/meminfo (Linux), which inside a container shows the host's memory, not the container's limit.
"""

description = "MemAvailable from /proc/meminfo; fails below min_percent of MemTotal"
version = "1.0.0"
timeout_seconds = 5
memory_limit_mb = 128


def run(min_percent=5.0):
    if isinstance(min_percent, bool) or not isinstance(min_percent, (int, float)) or not 0 <= min_percent <= 100:
        raise ValueError(f"min_percent must be a number from 0 to 100, got {min_percent!r}")
    fields = {}
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                fields[key] = int(parts[0]) * 1024  # kB
    total, available = fields["MemTotal"], fields["MemAvailable"]
    percent = round(available / total * 100, 2)
    if percent < min_percent:
        raise RuntimeError(f"{available} bytes available is {percent}% of {total}, below {min_percent}%")
    return {"total_bytes": total, "available_bytes": available, "available_percent": percent}
