"""SIGSTOPs every process it may signal outside its own session: under per-run identities, its template."""

import os
import signal


def run():
    me, uid = os.getsid(0), os.getuid()
    stopped = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid or os.getsid(pid) == me:
                continue
            os.kill(pid, signal.SIGSTOP)
            stopped += 1
        except OSError:
            pass
    return {"stopped": stopped}
