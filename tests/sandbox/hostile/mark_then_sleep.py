"""Says it started (a file at `path`), then sleeps: a run the test knows is in flight."""

import time


def run(path, seconds=30.0):
    with open(path, "w") as f:
        f.write("started")
    time.sleep(seconds)
    return {"slept": seconds}
