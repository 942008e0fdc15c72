"""What the operator routes cost over HTTP for N plugins: the status page, a probe beside a plain run, a reload.

    .venv/bin/python -m benchmarks.operate_bench [--requests N]

A real `sidecar serve` (2 workers) with N trivial plugins in a plugin directory, each run a few times so the
page draws sparklines. The probe and the run call the same plugin (`echo`), so their difference is the
probe's own cost (query parsing, slot wait, text rendering). The reload re-reads an unchanged configuration:
discovery of every plugin plus the swap. Writes benchmarks/results/operate.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from tests.conftest import make_live_server

from .common import summary, table, timed, write

PLUGIN = 'description = "benchmark plugin"\n\ndef run(**params):\n    return {"n": 1, "ok": True}\n'


def bench(plugins: int, requests: int) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory(prefix="sidecar-operate-bench-") as tmp:
        root = Path(tmp)
        (root / "plugins").mkdir()
        for i in range(plugins):
            (root / "plugins" / f"p{i}.py").write_text(PLUGIN)
        server = make_live_server(root, plugin_path=str(root / "plugins"))
        server.start()
        try:
            for i in range(plugins):
                for _ in range(3):
                    server.run(f"p{i}")
            html = {"Accept": "text/html"}

            def page() -> None:
                status, _, body = server.request("GET", "/", headers=html)
                assert status == 200 and body

            def probe() -> None:
                status, _, body = server.request("GET", "/probe?target=echo&param.n=1")
                assert status == 200 and b"sidecar_probe_success 1.0" in body

            def run() -> None:
                server.run("echo", n=1)

            def reload() -> None:
                status, _, body = server.request("POST", "/-/reload")
                assert status == 200, body
                assert json.loads(body)["changed"] == []

            rows: list[dict[str, object]] = []
            for what, fn, n in (("GET / (status page)", page, requests), ("GET /probe (echo)", probe, requests),
                                ("POST /plugins/echo/run", run, requests), ("POST /-/reload (unchanged)", reload,
                                                                            max(5, requests // 10))):
                fn()  # warm
                rows.append({"what": what, "plugins": plugins, **summary(timed(fn, n))})
            return rows
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    rows = [row for n in (10, 100) for row in bench(n, args.requests)]
    print(table(rows, ["what", "plugins", "n", "median_ms", "p99_ms"]))
    print(f"wrote {write('operate', rows)}")


if __name__ == "__main__":
    main()
