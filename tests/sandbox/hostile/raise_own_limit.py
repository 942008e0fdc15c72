"""A root plugin lifting its own RLIMIT_AS, then eating memory: only the outside RSS watch stops it."""

import resource


def run(megabytes=600):
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    hog = []
    for _ in range(megabytes):
        block = bytearray(1024 * 1024)
        for i in range(0, len(block), 4096):
            block[i] = 1
        hog.append(block)
    return len(hog)
