"""Bounded capture of a plugin's stdout or stderr: head and tail kept, the middle counted."""

from __future__ import annotations

from typing import Any

__all__ = ["Capture"]


class Capture:
    __slots__ = ("head", "tail", "total", "half")

    def __init__(self, limit: int) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0
        self.half = max(limit // 2, 1)

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > self.half:
                del self.tail[: len(self.tail) - self.half]

    def to_dict(self) -> dict[str, Any]:
        kept = len(self.head) + len(self.tail)
        truncated = self.total > kept
        body = bytes(self.head)
        if truncated:
            body += f"\n... [{self.total - kept} bytes elided] ...\n".encode()
        body += bytes(self.tail)
        return {"text": body.decode("utf-8", "replace"), "truncated": truncated, "total_bytes": self.total}
