"""Registers an at-fork hook that never returns: a template of this plugin hangs in every fork."""

import os
import time

os.register_at_fork(after_in_child=lambda: time.sleep(3600))


def run():
    return "ran"
