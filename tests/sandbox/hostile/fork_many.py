"""Forks hundreds of children that would live forever."""

import os
import time


def run(count=300):
    pids = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            time.sleep(3600)
            os._exit(0)
        pids.append(pid)
    return {"pids": pids}
