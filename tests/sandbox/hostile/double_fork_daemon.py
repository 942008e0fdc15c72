"""Classic daemonisation: fork, setsid, fork again, parent exits; the daemon is re-parented."""

import os
import time


def run():
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
    return {"pids": [daemon]}
