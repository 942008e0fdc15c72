"""What the input schema costs the sidecar: import time and resident memory of the validation
library in the runner's own process (Flask, the app and `typing` already imported, as in `sidecar
serve` and its workers), and the time to validate one run body.

    .venv/bin/python -m benchmarks.schema_bench [--procs N] [--python PATH]

`--python` measures with another interpreter (e.g. one that has pydantic installed) while importing
this checkout; libraries that are not installed there are reported as such. Writes
benchmarks/results/schema.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

from .common import summary, table, timed, write

ROOT = Path(__file__).resolve().parent.parent
PROBE = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    {site}
    {pre}
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * 4096
    r0 = rss(); t = time.perf_counter()
    {mod}
    dt = (time.perf_counter() - t) * 1000; r1 = rss()
    import json; print(json.dumps([dt, (r1 - r0) / 2**20]))
""")
RUNNER = "import sidecar.serve, sidecar.runner, sidecar.app"
#: Lists what the runner imports besides the sidecar and msgspec: the context a library lands in.
LIST_RUNNER = RUNNER + """
import json, sys
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} - {"sidecar", "msgspec", "__main__"})))"""
LIBRARIES = {"msgspec": "import msgspec", "pydantic": "import pydantic; pydantic.TypeAdapter(int)"}


def _import_cost(python: str, pre: str, mod: str, procs: int, site: str) -> dict[str, float] | None:
    samples = []
    for _ in range(procs):
        code = PROBE.format(root=str(ROOT), site=site, pre=pre, mod=mod)
        proc = subprocess.run([python, "-c", code], capture_output=True, text=True)
        if proc.returncode != 0:
            return None
        samples.append(json.loads(proc.stdout))
    return {"import_ms": statistics.median(s[0] for s in samples), "rss_mb": statistics.median(s[1] for s in samples)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=7)
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()
    site = ""
    if args.python != sys.executable:  # borrow this venv's packages (flask, msgspec) after the other's own
        import sysconfig

        site = f"sys.path.append({sysconfig.get_paths()['purelib']!r})"
    listed = subprocess.run([sys.executable, "-c", LIST_RUNNER], cwd=ROOT, capture_output=True, text=True, check=True)
    runner_modules = [m for m in json.loads(listed.stdout) if not m.startswith("_") or m in ("_thread",)]
    runner_pre = "\n".join(f"try:\n    import {m}\nexcept Exception:\n    pass" for m in runner_modules)
    rows = []
    for context, pre in (("bare interpreter", ""), ("runner process (its other imports first)", runner_pre)):
        for lib, mod in LIBRARIES.items():
            cost = _import_cost(args.python, pre, mod, args.procs, site)
            rows.append({"library": lib, "context": context,
                         "import_ms": cost["import_ms"] if cost else "not installed",
                         "rss_mb": cost["rss_mb"] if cost else "-"})

    from sidecar import schema

    body = b'{"params": {"url": "http://127.0.0.1:8080/healthz", "expect": [200, 204]}, "timeout_seconds": 5}'
    validate = summary(timed(lambda: schema.decode_json(body, schema.RunBody), 20000))
    rows.append({"library": "msgspec", "context": "validate one run body (µs, median)",
                 "import_ms": validate["median_ms"] * 1000, "rss_mb": "-"})
    print(table(rows, ["library", "context", "import_ms", "rss_mb"]))
    print(f"wrote {write('schema', rows)}")


if __name__ == "__main__":
    main()
