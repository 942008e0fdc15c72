"""The built-in `http_probe` over `/probe` beside prometheus-blackbox-exporter's `/probe`, same target, one run.

Both probe the sidecar's own `/healthz` on loopback; the requests are interleaved (one of each per round), so
load falls on every row alike. The other rows break the sidecar's probe down: the target alone (one HTTP
request), a trivial run over `/probe` (the route, a slot and a sandboxed run of `echo`) and over
`POST /plugins/echo/run`, a sandboxed run of `bare_http_get` (one bare `http.client` GET of the same target,
the floor of any HTTP probe in a run); and the request as each plugin timed it (its `duration_seconds`).
What `http_probe` adds beyond the `echo` probe is that request plus the plugin's work around it.

    .venv/bin/python -m benchmarks.probe_bench [--requests N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import make_live_server

from .common import summary, table, write

_DURATION = re.compile(rb'sidecar_probe_value\{field="duration_seconds"\} ([0-9.e+-]+)')
_PLUGINS = Path(__file__).resolve().parent / "plugins"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _blackbox(config_dir: Path) -> tuple[subprocess.Popen[bytes], int] | None:
    exe = shutil.which("prometheus-blackbox-exporter")
    if exe is None:
        print("prometheus-blackbox-exporter not installed (Debian package of that name): its row is left out")
        return None
    config = config_dir / "blackbox.yml"
    config.write_text("modules:\n  http_2xx:\n    prober: http\n    timeout: 5s\n")
    port = _free_port()
    proc = subprocess.Popen([exe, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            if _get(port, "/metrics")[0] == 200:
                return proc, port
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the blackbox exporter did not answer within 30 s")
        time.sleep(0.05)


def bench(requests: int) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory(prefix="sidecar-probe-bench-") as tmp:
        server = make_live_server(Path(tmp), plugin_path=str(_PLUGINS))
        server.start()
        blackbox = _blackbox(Path(tmp))
        try:
            port = server.port
            target = f"http://127.0.0.1:{port}/healthz"

            inner: dict[str, list[float]] = {"http_probe": [], "bare_http_get": []}

            def check(status: int, body: bytes, ok: bytes) -> None:
                assert status == 200 and ok in body, (status, body[:300])

            def probe(plugin: str) -> Callable[[], None]:
                def fn() -> None:
                    status, body = _get(port, f"/probe?target={plugin}&param.url={target}")
                    check(status, body, b"sidecar_probe_success 1")
                    match = _DURATION.search(body)
                    assert match, body[:300]
                    inner[plugin].append(float(match.group(1)) * 1000.0)

                return fn

            cases: list[tuple[str, Callable[[], None]]] = [
                ("GET /healthz (the target alone)", lambda: check(*_get(port, "/healthz"), b"")),
                ("sidecar GET /probe?target=http_probe", probe("http_probe")),
                ("sidecar GET /probe?target=bare_http_get", probe("bare_http_get")),
                ("sidecar GET /probe?target=echo", lambda: check(
                    *_get(port, "/probe?target=echo&param.n=1"), b"sidecar_probe_success 1")),
                ("sidecar POST /plugins/echo/run", lambda: check(200, json.dumps(server.run("echo", n=1)).encode(),
                                                                  b'"outcome": "success"')),
            ]
            if blackbox is not None:
                bb_port = blackbox[1]
                cases.insert(2, ("blackbox GET /probe?module=http_2xx", lambda: check(
                    *_get(bb_port, f"/probe?module=http_2xx&target={target}"), b"probe_success 1")))
            for _name, fn in cases:  # warm: templates built, connections made once
                for _ in range(5):
                    fn()
            times: dict[str, list[float]] = {name: [] for name, _ in cases}
            for _ in range(requests):
                for name, fn in cases:
                    t = time.perf_counter()
                    fn()
                    times[name].append((time.perf_counter() - t) * 1000.0)
            rows: list[dict[str, object]] = [{"what": name, **summary(ms)} for name, ms in times.items()]
            for plugin, ms in inner.items():
                rows.append({"what": f"{plugin}'s own request, as the plugin timed it", **summary(ms[-requests:])})
            if blackbox is not None:
                bb = summary(times["blackbox GET /probe?module=http_2xx"])["median_ms"]
                for row in rows:
                    row["x_blackbox"] = float(row["median_ms"]) / bb  # type: ignore[arg-type]
            return rows
        finally:
            if blackbox is not None:
                blackbox[0].terminate()
                blackbox[0].wait(timeout=30)
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    rows = bench(args.requests)
    cols = ["what", "n", "median_ms", "p99_ms"] + (["x_blackbox"] if "x_blackbox" in rows[0] else [])
    print(table(rows, cols))
    print("wrote", write("probe", rows))


if __name__ == "__main__":
    main()
