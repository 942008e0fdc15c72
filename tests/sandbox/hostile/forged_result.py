"""Writes its own result frame on the result fd, claiming an impossible peak memory, and leaves."""

import json
import os
import struct


def run():
    body = json.dumps({"outcome": "success", "result": {"forged": True}, "peak_memory_bytes": 10**30}).encode()
    os.write(3, struct.pack(">Q", len(body)) + body)
    os._exit(0)
