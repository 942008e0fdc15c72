"""Three children of `megabytes` each, all alive at once: only a bound over the whole tree sees the sum.

Each child holds its memory until all of them hold theirs (a pipe, not a sleep: under load a sleeping
child could leave before the last one allocated, and the sum would never be reached).
"""

import os


def run(megabytes=190, children=3):
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pids = []
    for _ in range(children):
        pid = os.fork()
        if pid == 0:
            os.close(go_w)
            block = bytearray(megabytes * 1024 * 1024)
            for i in range(0, len(block), 4096):
                block[i] = 1
            os.write(ready_w, b"1")
            os.close(ready_w)  # a child killed before this line closes it by dying: the parent sees EOF
            os.read(go_r, 1)  # until the parent lets go: all blocks are held at once
            os._exit(0)
        pids.append(pid)
    os.close(ready_w)
    for _ in pids:
        if not os.read(ready_r, 1):
            break  # every child died (killed over the bound)
    os.close(go_w)
    for pid in pids:
        os.waitpid(pid, 0)
    return {"children": len(pids)}
