"""Length-prefixed frames over a stream: the one wire format between sidecar processes.

A frame is an 8-byte big-endian length followed by that many bytes. Framing (rather than
reading to end-of-file) matters because a plugin's descendants may inherit and hold a pipe
open long after the plugin itself has exited.

This module is imported by the sandbox launcher, so it must stay import-light.
"""

from __future__ import annotations

import os
import socket
import struct

__all__ = ["HEADER", "FrameError", "FrameReader", "encode", "recv_frame", "send_frame"]

HEADER = struct.Struct(">Q")


class FrameError(Exception):
    """The peer closed the stream mid-frame or announced a frame over the size limit."""


def encode(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


class FrameReader:
    """Incremental decoder: feed it bytes as they arrive, take whole frames out."""

    __slots__ = ("_buf", "limit")

    def __init__(self, limit: int = 1 << 40) -> None:
        self._buf = bytearray()
        self.limit = limit

    def __len__(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def frames(self) -> list[bytes]:
        """Every complete frame buffered so far; raises FrameError on an oversized header."""
        out: list[bytes] = []
        buf = self._buf
        while len(buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(buf)
            if size > self.limit:
                raise FrameError(f"frame of {size} bytes exceeds the limit of {self.limit}")
            end = HEADER.size + size
            if len(buf) < end:
                break
            out.append(bytes(buf[HEADER.size : end]))
            del buf[:end]
        return out


def send_frame(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(encode(payload))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise FrameError("connection closed mid-frame")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket, limit: int = 1 << 40) -> bytes | None:
    """One frame from a blocking socket, or None on a clean end-of-stream before a header."""
    first = sock.recv(HEADER.size)
    if not first:
        return None
    header = first if len(first) == HEADER.size else first + _recv_exact(sock, HEADER.size - len(first))
    (size,) = HEADER.unpack(header)
    if size > limit:
        raise FrameError(f"frame of {size} bytes exceeds the limit of {limit}")
    return _recv_exact(sock, size)


def write_all(fd: int, data: bytes) -> None:
    """os.write until done (pipes accept partial writes)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
