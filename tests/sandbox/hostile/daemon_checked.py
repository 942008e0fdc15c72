"""Leaves a setsid daemon, then looks a moment later: another run's end must not have killed it."""

import os
import time


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def run(wait=1.0):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(w, str(os.getpid()).encode())
            os.close(w)
            time.sleep(3600)
        os._exit(0)
    os.waitpid(pid, 0)
    os.close(w)
    daemon = int(os.read(r, 64))
    time.sleep(wait)
    return {"pids": [daemon], "alive": _alive(daemon)}
