"""A fleet of sidecars under one real Prometheus: scrape cost, series, query latency, CPU and memory.

    .venv/bin/python -m benchmarks.fleet [--sidecars 50] [--warmup 30] [--cpu-window 60]

Starts N `sidecar serve --workers 1` on loopback ports, each with the quick-start checks of
examples/sidecar.toml (its self-probes pointed at its own port), writes a file_sd target file, starts
Debian's `prometheus` with the shipped recording and alerting rules, scraping every sidecar every 5 s and
evaluating the rules as often as prometheus/prometheus.yml says (15 s). Once every target is up and the
warm-up has passed, it measures:

- per-target scrape duration p50/p99 from Prometheus's own `scrape_duration_seconds` (every scrape since
  all targets were up), and samples per target (`scrape_samples_scraped`);
- series: Prometheus's head series, the sidecars' share of them, and the recording rules' output;
- each sidecar's CPU (its whole process tree, reaped sandbox runs included) over `--cpu-window` seconds
  with its checks and the scrapes running, and its memory (PSS of the tree); Prometheus's memory;
- the latency, through the HTTP API, of every dashboard panel query (instant, and a range query like a
  panel's over the data so far) and every recording and alerting rule expression, over the whole fleet;
  and each rule group's own evaluation time as Prometheus reports it.

Prints a table, writes benchmarks/results/fleet.json, and stops everything it started, also on Ctrl-C
or SIGTERM. The `Fleet` class is also the harness of tests/integration/test_fleet_faults.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import psutil
import yaml

from tests.conftest import LiveServer, free_port, make_live_server, poll
from tests.stack.promql import ALERTS_FILE, RECORDING_FILE, all_expressions

from .common import RESULTS, machine

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = REPO_ROOT / "examples" / "sidecar.toml"
#: The port the example's self-probes use (the default bind's).
EXAMPLE_PORT = 9464
JOB = "sidecar"
SCRAPE_INTERVAL = "5s"
#: Rules are evaluated as often as the shipped Prometheus configuration says.
EVALUATION_INTERVAL: str = yaml.safe_load((REPO_ROOT / "prometheus" / "prometheus.yml").read_text())["global"][
    "evaluation_interval"
]

#: The issue's targets.
TARGET_SCRAPE_P99_MS = 20.0
TARGET_QUERY_MS = 100.0
TARGET_CPU_PERCENT = 1.0


def example_config(port: int) -> str:
    """examples/sidecar.toml with its self-probes pointed at `port` instead of the default one."""
    text = EXAMPLE_CONFIG.read_text()
    if f"127.0.0.1:{EXAMPLE_PORT}" not in text or f"port = {EXAMPLE_PORT}" not in text:
        raise RuntimeError(f"{EXAMPLE_CONFIG} no longer probes 127.0.0.1:{EXAMPLE_PORT}")
    text = text.replace(f"127.0.0.1:{EXAMPLE_PORT}", f"127.0.0.1:{port}")
    return text.replace(f"port = {EXAMPLE_PORT}", f"port = {port}")


def prometheus_binary() -> str | None:
    found = shutil.which("prometheus")
    if found is None and os.access("/usr/bin/prometheus", os.X_OK):
        found = "/usr/bin/prometheus"
    return found


@dataclass
class PrometheusServer:
    """A Prometheus process on a loopback port, with a small client for its HTTP API."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, **params: str) -> tuple[int, Any]:
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            with err:
                body = err.read()
            try:
                return err.code, json.loads(body)
            except ValueError:
                return err.code, {"status": "error", "error": body.decode(errors="replace")}

    def data(self, path: str, **params: str) -> Any:
        status, doc = self.get(path, **params)
        if status != 200 or doc.get("status") != "success":
            raise RuntimeError(f"{path} {params}: HTTP {status}: {doc}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.data("/api/v1/query", query=expr)["result"])

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def firing(self) -> dict[str, set[str | None]]:
        """alertname -> the `instance` labels of its firing alerts."""
        found: dict[str, set[str | None]] = {}
        for alert in self.data("/api/v1/alerts")["alerts"]:
            if alert["state"] == "firing":
                found.setdefault(alert["labels"]["alertname"], set()).add(alert["labels"].get("instance"))
        return found

    def own_metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=30) as resp:
            return str(resp.read().decode())

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]




def _stop_process(proc: subprocess.Popen[bytes], grace: float = 30) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@dataclass
class Fleet:
    """N sidecars and one Prometheus on loopback, in a scratch directory; `close()` stops them all."""

    root: Path
    sidecars: list[LiveServer] = field(default_factory=list)
    prometheus: PrometheusServer | None = None

    @staticmethod
    def instance(sidecar: LiveServer) -> str:
        return f"127.0.0.1:{sidecar.port}"

    def start_sidecars(
        self, n: int, config: Callable[[int, int], str] = lambda i, port: example_config(port), **settings: str
    ) -> None:
        """Start `n` sidecars, `config(index, port)` giving each one's TOML; they start a few at a time."""
        for i in range(n):
            tmp = self.root / f"sidecar-{i}"
            tmp.mkdir()
            server = make_live_server(tmp, **{"workers": "1", "threads": "4", "plugin_path": "", **settings})
            path = tmp / "sidecar.toml"
            path.write_text(config(i, server.port))
            server.env["SIDECAR_CONFIG"] = str(path)
            self.sidecars.append(server)
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(LiveServer.start, self.sidecars))

    def write_targets(self, path: Path) -> None:
        groups = [{"targets": [self.instance(s) for s in self.sidecars if s.proc and s.proc.poll() is None]}]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(groups))
        tmp.replace(path)  # file_sd reads whole files only

    def start_prometheus(
        self, binary: str, interval: str, rule_files: list[Path], evaluation_interval: str | None = None
    ) -> PrometheusServer:
        """Prometheus scraping every sidecar (file_sd) every `interval`, evaluating `rule_files` every
        `evaluation_interval` (default: the same)."""
        tmp = self.root / "prometheus"
        tmp.mkdir()
        targets = tmp / "targets.yml"
        self.write_targets(targets)
        config = tmp / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": interval, "scrape_timeout": interval,
                               "evaluation_interval": evaluation_interval or interval},
                    "rule_files": [str(p) for p in rule_files],
                    "scrape_configs": [
                        {"job_name": JOB, "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "5s"}]}
                    ],
                }
            )
        )  # fmt: skip
        port = free_port()
        log = tmp / "prometheus.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.prometheus = prom = PrometheusServer(f"http://127.0.0.1:{port}", proc, log)

        def ready() -> tuple[bool, str]:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {proc.returncode}:\n{prom.log_tail()}")
            try:
                with urllib.request.urlopen(prom.url + "/-/ready", timeout=2) as resp:
                    return resp.status == 200, f"HTTP {resp.status}"
            except (urllib.error.HTTPError, OSError) as exc:
                return False, repr(exc)

        poll("prometheus /-/ready", ready, timeout=60, every=0.1)
        return prom

    def wait_until_all_up(self, timeout: float) -> None:
        assert self.prometheus is not None
        prom, n = self.prometheus, len(self.sidecars)

        def all_up() -> tuple[bool, float | None]:
            up = prom.scalar(f'count(up{{job="{JOB}"}} == 1)')
            return up == n, up

        poll(f"{n} targets up", all_up, timeout=timeout, every=0.5)

    def kill(self, sidecar: LiveServer) -> None:
        """SIGKILL a sidecar's whole process group: no shutdown, as when a host or pod dies."""
        assert sidecar.proc is not None
        os.killpg(sidecar.proc.pid, signal.SIGKILL)
        sidecar.proc.wait()

    def close(self) -> None:
        if self.prometheus is not None:
            _stop_process(self.prometheus.proc)
        live = [s for s in self.sidecars if s.proc is not None and s.proc.poll() is None]
        for s in live:
            assert s.proc is not None
            s.proc.terminate()
        for s in live:
            assert s.proc is not None
            _stop_process(s.proc)


@contextmanager
def fleet(root: Path | None = None) -> Iterator[Fleet]:
    """A Fleet in a scratch directory that is removed, with every process, on the way out."""
    with tempfile.TemporaryDirectory(prefix="sidecar-fleet-", dir=root) as tmp:
        f = Fleet(Path(tmp))
        try:
            yield f
        finally:
            f.close()


# --- measurements -----------------------------------------------------------------------------------------


def _tree(pid: int) -> list[psutil.Process]:
    try:
        top = psutil.Process(pid)
        return [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process tree, including the children it has reaped (finished sandbox runs)."""
    total = 0.0
    for p in _tree(pid):
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def tree_pss_bytes(pid: int) -> int:
    total = 0
    for p in _tree(pid):
        try:
            total += int(p.memory_full_info().pss)
        except psutil.Error:
            continue
    return total


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy since boot (/proc/stat), to tell the fleet's own
    load from everything else running on the machine during a measurement."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def timed_ms(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of `repeat` calls, in ms."""
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return statistics.median(out)


def query_latencies(prom: PrometheusServer, span_s: float) -> list[dict[str, Any]]:
    """Every dashboard panel/variable query and rule expression, timed instant and as a panel's range query."""
    rows = []
    now = time.time()
    for source, expr in all_expressions():
        if source.startswith("docs/"):
            continue
        if "variable" in source and expr.startswith("label_values("):
            match = re.match(r"label_values\((.*),\s*(\w+)\)$", expr)
            selector = match.group(1) if match else "up"
            label = match.group(2) if match else "job"
            instant = timed_ms(partial(prom.data, f"/api/v1/label/{label}/values", **{"match[]": selector}), 5)
            rows.append({"source": source, "instant_ms": instant, "range_ms": None, "series": None})
            continue
        series = len(prom.query(expr))
        instant = timed_ms(partial(prom.data, "/api/v1/query", query=expr), 5)
        step = max(5.0, span_s / 250)  # about the resolution a panel asks for
        window = {"start": f"{now - span_s:.3f}", "end": f"{now:.3f}", "step": f"{step:g}"}
        range_ms = timed_ms(partial(prom.data, "/api/v1/query_range", query=expr, **window), 3)
        rows.append({"source": source, "instant_ms": instant, "range_ms": range_ms, "series": series})
    return rows


def rule_group_durations(prom: PrometheusServer) -> dict[str, float]:
    """Each rule group's last evaluation time (ms), from Prometheus's own metrics."""
    out = {}
    for line in prom.own_metrics().splitlines():
        m = re.match(r'prometheus_rule_group_last_duration_seconds\{rule_group="[^"]*;([^"]+)"\} (\S+)', line)
        if m:
            out[m.group(1)] = float(m.group(2)) * 1000
    return out


def rule_durations(prom: PrometheusServer) -> dict[str, float]:
    """Each rule's last evaluation time (ms) as Prometheus reports it in /api/v1/rules."""
    out = {}
    for group in prom.data("/api/v1/rules")["groups"]:
        for rule in group["rules"]:
            out[rule["name"]] = float(rule.get("evaluationTime", 0.0)) * 1000
    return out


def own_metric(prom: PrometheusServer, name: str) -> float | None:
    for line in prom.own_metrics().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def measure(f: Fleet, warmup: float, cpu_window: float, log: Callable[[str], None]) -> dict[str, Any]:
    assert f.prometheus is not None
    prom = f.prometheus
    up_at = time.time()
    log(f"all {len(f.sidecars)} targets up; warming up for {warmup:g} s")
    time.sleep(warmup)
    pids = [s.proc.pid for s in f.sidecars if s.proc]
    log(f"measuring CPU over {cpu_window:g} s")
    before = [tree_cpu_seconds(p) for p in pids]
    prom_before, busy_before = tree_cpu_seconds(prom.proc.pid), machine_busy_seconds()
    t0 = time.monotonic()
    time.sleep(cpu_window)
    elapsed = time.monotonic() - t0
    cpu = [(tree_cpu_seconds(p) - b) / elapsed * 100 for p, b in zip(pids, before, strict=True)]
    prom_cpu = (tree_cpu_seconds(prom.proc.pid) - prom_before) / elapsed * 100
    machine_cpu = (machine_busy_seconds() - busy_before) / elapsed * 100
    pss = [tree_pss_bytes(p) / 2**20 for p in pids]
    prom_proc = psutil.Process(prom.proc.pid)
    prom_mem = prom_proc.memory_full_info()
    window = int(time.time() - up_at)

    log("reading scrape statistics")
    samples = [
        float(v)
        for series in prom.data("/api/v1/query", query=f'scrape_duration_seconds{{job="{JOB}"}}[{window}s]')["result"]
        for _, v in series["values"]
    ]
    per_target_p99 = [
        float(r["value"][1])
        for r in prom.query(f'quantile_over_time(0.99, scrape_duration_seconds{{job="{JOB}"}}[{window}s])')
    ]
    scraped = [float(r["value"][1]) for r in prom.query(f'scrape_samples_scraped{{job="{JOB}"}}')]
    log("timing every dashboard query and rule expression")
    queries = query_latencies(prom, span_s=time.time() - up_at + warmup)
    return {
        "sidecars": len(f.sidecars),
        "scrape_interval": SCRAPE_INTERVAL,
        "evaluation_interval": EVALUATION_INTERVAL,
        "window_s": window,
        "scrape_duration_ms": {
            "n": len(samples),
            "p50": percentile(samples, 0.5) * 1000,
            "p99": percentile(samples, 0.99) * 1000,
            "max": max(samples) * 1000,
            "worst_target_p99": max(per_target_p99) * 1000,
        },
        "samples_per_target": {"min": min(scraped), "max": max(scraped)},
        "series": {
            "head": own_metric(prom, "prometheus_tsdb_head_series"),
            "sidecar_targets": prom.scalar(f'count({{job="{JOB}", __name__!~"up|scrape_.*|sidecar:.*|ALERTS.*"}})'),
            "recording_rules": prom.scalar('count({__name__=~"sidecar:.+"})'),
        },
        "sidecar_cpu_percent": {"median": statistics.median(cpu), "max": max(cpu), "mean": statistics.mean(cpu)},
        "cpu_window_percent_of_a_core": {
            "machine": machine_cpu,
            "sidecars": sum(cpu),
            "prometheus": prom_cpu,
            "everything_else": machine_cpu - sum(cpu) - prom_cpu,
        },
        "sidecar_pss_mib": {"median": statistics.median(pss), "max": max(pss)},
        "prometheus_memory_mib": {"rss": prom_mem.rss / 2**20, "pss": prom_mem.pss / 2**20},
        "rule_group_eval_ms": rule_group_durations(prom),
        "rule_eval_ms": rule_durations(prom),
        "queries": queries,
    }


def report(result: dict[str, Any]) -> str:
    """The table of docs/scale.md (A fleet under one Prometheus)."""
    scrape, cpu = result["scrape_duration_ms"], result["sidecar_cpu_percent"]
    timed = [q for q in result["queries"] if q["range_ms"] is not None]
    panels = [q for q in timed if q["source"].startswith("grafana/")]
    rules = [q for q in timed if q["source"].startswith("prometheus/")]

    def worst(rows: list[dict[str, Any]]) -> tuple[float, str]:
        row = max(rows, key=lambda q: max(q["instant_ms"], q["range_ms"]))
        return max(row["instant_ms"], row["range_ms"]), row["source"].split(": ", 1)[1]

    def verdict(value: float, target: float) -> str:
        return "met" if value <= target else f"missed by {value - target:.2f} ({value / target:.1f}×)"

    panel_ms, panel_name = worst(panels)
    rule_ms, rule_name = worst(rules)
    groups = ", ".join(f"{g} {ms:.1f} ms" for g, ms in result["rule_group_eval_ms"].items())
    rows = [
        ("sidecars × checks",
         f"{result['sidecars']} × 3 (examples/sidecar.toml), scraped every {result['scrape_interval']}, "
         f"rules evaluated every {result['evaluation_interval']}", ""),
        ("scrape duration per target p50 / p99 / max",
         f"{scrape['p50']:.2f} / {scrape['p99']:.2f} / {scrape['max']:.2f} ms ({scrape['n']} scrapes)",
         f"p99 ≤ {TARGET_SCRAPE_P99_MS:g} ms: {verdict(scrape['p99'], TARGET_SCRAPE_P99_MS)}"),
        ("worst single target's p99", f"{scrape['worst_target_p99']:.2f} ms", ""),
        ("samples per target",
         f"{result['samples_per_target']['min']:.0f}–{result['samples_per_target']['max']:.0f}", ""),
        ("series: Prometheus head / from sidecars / recording rules",
         f"{result['series']['head']:.0f} / {result['series']['sidecar_targets']:.0f} / "
         f"{result['series']['recording_rules']:.0f}", ""),
        ("slowest dashboard query (instant or range)", f"{panel_ms:.1f} ms ({panel_name})",
         f"≤ {TARGET_QUERY_MS:g} ms: {verdict(panel_ms, TARGET_QUERY_MS)}"),
        ("median dashboard query (range)",
         f"{statistics.median(q['range_ms'] for q in panels):.1f} ms over {len(panels)} panel queries", ""),
        ("slowest rule expression (instant or range)", f"{rule_ms:.1f} ms ({rule_name})", ""),
        ("rule group evaluation (Prometheus's own)", groups, ""),
        ("sidecar CPU median / max (whole process tree, checks and scrapes)",
         f"{cpu['median']:.2f} / {cpu['max']:.2f} % of a core",
         f"≤ {TARGET_CPU_PERCENT:g} %: {verdict(cpu['max'], TARGET_CPU_PERCENT)}"),
        ("CPU during the window: machine / all sidecars / Prometheus / everything else",
         " / ".join(f"{result['cpu_window_percent_of_a_core'][k]:.0f} %"
                    for k in ("machine", "sidecars", "prometheus", "everything_else")) + " of a core", ""),
        ("sidecar memory (PSS of the tree) median / max",
         f"{result['sidecar_pss_mib']['median']:.1f} / {result['sidecar_pss_mib']['max']:.1f} MiB", ""),
        ("Prometheus memory RSS / PSS",
         f"{result['prometheus_memory_mib']['rss']:.0f} / {result['prometheus_memory_mib']['pss']:.0f} MiB", ""),
    ]  # fmt: skip
    lines = ["| what | measured | target |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sidecars", type=int, default=50)
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds after every target is up")
    parser.add_argument("--cpu-window", type=float, default=60.0, help="seconds over which CPU is averaged")
    parser.add_argument("--output", type=Path, default=RESULTS / "fleet.json")
    args = parser.parse_args(argv)
    binary = prometheus_binary()
    if binary is None:
        print("fleet: no `prometheus` binary (Debian package `prometheus`; ./test.sh installs it)", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # unwinds through the cleanup below, like Ctrl-C

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (`&`)
    load_before = os.getloadavg()
    started = time.time()
    try:
        with fleet() as f:
            log(f"starting {args.sidecars} sidecars")
            f.start_sidecars(args.sidecars)
            log(f"sidecars ready in {time.time() - started:.1f} s; starting prometheus")
            f.start_prometheus(binary, SCRAPE_INTERVAL, [RECORDING_FILE, ALERTS_FILE], EVALUATION_INTERVAL)
            f.wait_until_all_up(timeout=120)
            result = measure(f, args.warmup, args.cpu_window, log)
            log("stopping the fleet")
    except KeyboardInterrupt:
        log("interrupted: everything started was stopped")
        return 130
    result["machine"] = {**machine(), "load_before": load_before, "load_after": os.getloadavg()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    print(f"\nload average (1, 5, 15 min) before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}; "
          f"after: {result['machine']['load_after'][0]:.2f} (includes the fleet); results in {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
