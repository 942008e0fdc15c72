import os
import sys


def run(megabytes=200):
    chunk = "x" * (1024 * 1024)
    for _ in range(megabytes // 2):
        sys.stdout.write(chunk)
        os.write(2, chunk.encode())
    sys.stdout.flush()
    return "flooded"
