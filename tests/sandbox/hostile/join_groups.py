"""Moves children into every other process group it can see, then returns: killing by an orphan's group would
then kill other runs."""

import os
import time


def run():
    mine = os.getpgrp()
    groups = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                groups.add(os.getpgid(int(entry)))
            except OSError:
                pass
    joined = []
    for pg in sorted(groups - {mine, 0}):  # 0: a group outside our namespace
        r, w = os.pipe()
        if os.fork() == 0:
            try:
                os.setpgid(0, pg)
                os.write(w, b"1")
            except OSError:
                os.write(w, b"0")
            time.sleep(3600)
            os._exit(0)
        os.close(w)
        if os.read(r, 1) == b"1":
            joined.append(pg)
        os.close(r)
    return {"joined": joined}
