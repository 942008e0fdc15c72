"""Sleeps: keeps a run in flight."""

import time


def run(seconds=0.3):
    time.sleep(seconds)
    return {"slept": seconds}
