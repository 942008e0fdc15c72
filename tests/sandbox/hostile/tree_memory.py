"""Three children of `megabytes` each, all alive at once: only a bound over the whole tree sees the sum."""

import os
import time


def run(megabytes=190, children=3):
    pids = []
    for _ in range(children):
        pid = os.fork()
        if pid == 0:
            block = bytearray(megabytes * 1024 * 1024)
            for i in range(0, len(block), 4096):
                block[i] = 1
            time.sleep(2)
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    return {"children": len(pids)}
