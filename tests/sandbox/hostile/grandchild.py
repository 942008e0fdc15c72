"""Leaves descendants behind: one in its process group, one that escaped with setsid."""

import subprocess


def run():
    same_group = subprocess.Popen(["sleep", "3600"])
    escaped = subprocess.Popen(["sleep", "3600"], start_new_session=True)
    return {"pids": [same_group.pid, escaped.pid]}
