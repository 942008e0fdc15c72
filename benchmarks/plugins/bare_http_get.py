"""One bare `http.client` GET of `url` (plain http), timed by itself: the floor an HTTP probe in a sandboxed
run stands on, to set `http_probe`'s own request against (`benchmarks.probe_bench`)."""

from __future__ import annotations

import encodings.idna  # noqa: F401 - as http_probe: getaddrinfo's first lookup imports it
import http.client
import time
import urllib.parse

description = "one bare http.client GET of a plain-http url, timed"
version = "1.0"
network = True


def run(url: str) -> dict[str, object]:
    parts = urllib.parse.urlsplit(url)
    started = time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=5)
    try:
        conn.request("GET", parts.path or "/")
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    return {"status": response.status, "bytes": len(body), "duration_seconds": time.perf_counter() - started}
