"""At import (in its template), forges the template's "forked" answer naming a process not its own.

The victim's pid is read from `victim.pid` beside this file. Were the launcher to trust the template's
word, it would hand the victim out as a run and kill it at that run's end.
"""

import json
import os
import socket

_VICTIM = int(open(os.path.join(os.path.dirname(__file__), "victim.pid")).read())


def _forge() -> None:
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(fd)))
            try:
                if sock.type == socket.SOCK_SEQPACKET:
                    sock.send(json.dumps({"t": "forked", "pid": _VICTIM}).encode())
            finally:
                sock.close()
        except OSError:
            continue


os.register_at_fork(before=_forge)


def run():
    return {"pid": os.getpid()}
