"""A real Prometheus scrapes a real sidecar and evaluates the shipped rules; every shipped PromQL expression runs.

Stack: `sidecar serve` (2 gunicorn workers, hostile plugins on its path, three scheduled checks: a heartbeat, a
probe of a port nobody listens on, a plugin reporting its own gauge) and Debian's `prometheus` on loopback ports,
scraping and evaluating every second. The rule files are the repository's
recording rules unchanged and its alerting rules with every `for:` cut to 0s, so alerts fire as soon as their
expression returns data. The module drives every outcome family (success, timeout, memory, crash, value,
import) plus both rejection reasons (saturated, invalid), waits until Prometheus has scraped the resulting
counters, then checks the dashboard panels, rules, runbook queries, alerts and metric names against it.

Without a `prometheus` binary the module is skipped, except under CI (env CI set), where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import HOSTILE, LiveServer, ci, free_port, make_live_server, poll
from tests.stack.contract import SAMPLE_NAMES
from tests.stack.promql import ALERTS_FILE, RECORDING_FILE, all_expressions, load_rules

pytestmark = pytest.mark.integration


#: The scheduled check of the sidecar's TOML config: exports `sidecar_plugin_interval_seconds`.
HEARTBEAT = "heartbeat"
HEARTBEAT_INTERVAL = 2.0
#: A scheduled tcp_probe of a loopback port nobody listens on: its runs succeed and report state critical.
TARGET_DOWN = "target_down"
#: A scheduled check of a plugin that reports its own gauge through `sidecar.check`.
MAIL_QUEUE = "mail_queue"
MAIL_QUEUE_PLUGIN = """
from sidecar.check import gauge

def run():
    gauge("mail_queue_messages", 3, help="Messages waiting to be sent", queue="outbound")
    return {"oldest_seconds": 12.5}
"""
#: The sidecar's API token (the shipped probe job must send it).
TOKEN = "prometheus-live-t0ken"
#: Sandboxes at once; SATURATING concurrent `sleep` runs exceed it.
MAX_CONCURRENT_RUNS = 3
SATURATING = 5

#: (plugin, params, timeout_seconds, expected outcome, how many runs), driven one after the other.
RUNS: tuple[tuple[str, dict[str, Any], float | None, str, int], ...] = (
    ("hello", {"name": "prometheus"}, None, "success", 3),
    ("echo", {"ping": "pong"}, None, "success", 3),
    ("loop", {}, 0.5, "timeout", 3),
    ("memory_bomb", {}, None, "memory", 2),
    ("segfault", {}, None, "crash", 2),
    ("raises", {"kind": "ValueError"}, None, "value", 2),
    ("missing_dependency", {}, None, "import", 1),
)

#: Expressions that legitimately return nothing in this scenario; only their parsing is checked.
MAY_BE_EMPTY: dict[str, str] = {
    "prometheus/alerts.yml: alert SidecarDown": (
        "returns data only while the target is down or absent; the sidecar stays up for the whole module"
    ),
    "prometheus/alerts.yml: alert SidecarInternalErrors": (
        "returns data only after a fault of the sidecar itself (scheduling a check, rendering a plugin's series); "
        "this module causes none"
    ),
    "prometheus/alerts.yml: alert SidecarHistoryWritesFailing": (
        "returns data only while the history cannot be written; this module's disk is fine"
    ),
    "prometheus/alerts.yml: alert SidecarPluginStale": (
        f"returns data only when a scheduled check stops finishing runs; {HEARTBEAT!r} runs every "
        f"{HEARTBEAT_INTERVAL:g} s and the threshold is 3 intervals"
    ),
}

#: Runbook lines select `plugin="PLUGIN"`, a placeholder that matches nothing: they are checked to parse as
#: written, and checked for data with the placeholder replaced by the plugin this module makes misbehave in
#: the way the runbook section is about (keyed by the section, the alert's name).
RUNBOOK_PLUGINS: dict[str, str] = {
    "SidecarPluginTimeouts": "loop",
    "SidecarPluginMemoryErrors": "memory_bomb",
    "SidecarPluginCrashes": "segfault",
    "SidecarPluginErrorRatioHigh": "raises",
    "SidecarPluginStale": HEARTBEAT,
    "SidecarCheckCritical": TARGET_DOWN,
}

#: Alerts this module makes fire, with the `plugin` label each must carry (None: no plugin label).
FIRING: dict[str, str | None] = {
    "SidecarPluginTimeouts": "loop",
    "SidecarPluginMemoryErrors": "memory_bomb",
    "SidecarPluginCrashes": "segfault",
    "SidecarPluginImportErrors": "missing_dependency",
    "SidecarSaturated": None,  # aggregated `without (plugin, reason)`
    "SidecarCheckCritical": TARGET_DOWN,
}






@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, **params: str) -> tuple[int, Any]:
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            with urllib.request.urlopen(url, timeout=15) as resp:
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
        assert status == 200 and doc.get("status") == "success", (path, params, status, doc)
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.data("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, None when it returns nothing."""
        result = self.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


@dataclass
class Stack:
    sidecar: LiveServer
    prometheus: Prometheus
    #: Expected counter values: PromQL selector -> value.
    counters: dict[str, float] = field(default_factory=dict)


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None)
    if found is None:
        if ci():
            pytest.fail("the `prometheus` binary is missing (Debian package `prometheus`); it is required under CI")
        pytest.skip("the `prometheus` binary is missing (Debian package `prometheus`)")
    return found


@pytest.fixture(scope="module")
def sidecar(prometheus_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("prom-sidecar")
    config = tmp / "sidecar.toml"
    plugins = tmp / "plugins"
    plugins.mkdir()
    (plugins / "mailq.py").write_text(MAIL_QUEUE_PLUGIN)
    config.write_text(
        f'[checks.{HEARTBEAT}]\nplugin = "echo"\nparams = {{ beat = true }}\ninterval_seconds = {HEARTBEAT_INTERVAL}\n'
        f'[checks.{TARGET_DOWN}]\nplugin = "tcp_probe"\nparams = {{ host = "127.0.0.1", port = {free_port()}, '
        f"timeout = 0.5 }}\ninterval_seconds = {HEARTBEAT_INTERVAL}\n"
        f'[checks.{MAIL_QUEUE}]\nplugin = "mailq"\ninterval_seconds = {HEARTBEAT_INTERVAL}\n'
    )
    # With a token, as the compose stack runs: the write routes and /probe need it, /metrics does not.
    server = make_live_server(
        tmp, default_memory_limit_mb="200", max_concurrent_runs=str(MAX_CONCURRENT_RUNS), config=str(config),
        api_token=TOKEN, plugin_path=os.pathsep.join((str(HOSTILE), str(plugins))),
    )
    server.token = TOKEN
    server.start()
    yield server
    server.stop()


def _shipped_probe_job() -> dict[str, Any]:
    shipped = yaml.safe_load((Path(__file__).parents[2] / "prometheus" / "prometheus.yml").read_text())
    return dict(next(j for j in shipped["scrape_configs"] if j["metrics_path"] == "/probe"))


def _probe_job(sidecar: LiveServer, tmp: Path) -> dict[str, Any]:
    """The shipped probe job (its relabelling and authorization unchanged), probing this module's scheduled check
    on this sidecar; the token file it names (a compose secret) is written here with the sidecar's token."""
    job = _shipped_probe_job()
    token = tmp / "sidecar-api-token"
    token.write_text(TOKEN)
    job["authorization"] = {**job["authorization"], "credentials_file": str(token)}
    job.pop("params", None)  # a check runs with its configured params
    job["static_configs"] = [{"targets": [HEARTBEAT]}]
    job["scrape_interval"] = job["scrape_timeout"] = "1s"
    for rule in job["relabel_configs"]:
        if rule.get("target_label") == "__address__":
            rule["replacement"] = f"127.0.0.1:{sidecar.port}"
    return job


def _alert_rules_without_for(tmp: Path) -> Path:
    """A copy of prometheus/alerts.yml with every `for:` cut to 0s, so alerts fire on their first evaluation."""
    doc = yaml.safe_load(ALERTS_FILE.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "0s"
    out = tmp / "alerts.yml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


@pytest.fixture(scope="module")
def prometheus(
    prometheus_binary: str, sidecar: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    tmp = tmp_path_factory.mktemp("prometheus")
    recording = tmp / "recording.yml"
    shutil.copyfile(RECORDING_FILE, recording)
    alerts = _alert_rules_without_for(tmp)
    config = tmp / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(recording), str(alerts)],
                "scrape_configs": [
                    {"job_name": "sidecar", "static_configs": [{"targets": [f"127.0.0.1:{sidecar.port}"]}]},
                    _probe_job(sidecar, tmp),
                ],
            }
        )
    )
    port = free_port()
    log = tmp / "prometheus.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                prometheus_binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    try:

        def ready() -> tuple[bool, str]:
            assert proc.poll() is None, f"prometheus exited with {proc.returncode}:\n{prom.log_tail()}"
            try:
                with urllib.request.urlopen(prom.url + "/-/ready", timeout=2) as resp:
                    return resp.status == 200, f"HTTP {resp.status}"
            except urllib.error.HTTPError as err:
                with err:
                    return False, f"HTTP {err.code}"
            except OSError as exc:
                return False, repr(exc)

        poll("prometheus /-/ready", ready, timeout=30, every=0.1)
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _saturate(server: LiveServer) -> int:
    """Start SATURATING `sleep` runs at once against MAX_CONCURRENT_RUNS slots; return how many got 503."""
    statuses: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(SATURATING)

    def one() -> None:
        barrier.wait()
        status, _, _ = server.request("POST", "/plugins/sleep/run", {"params": {"seconds": 1.5}})
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=one) for _ in range(SATURATING)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(statuses) == SATURATING and set(statuses) <= {200, 503}, statuses
    rejected = statuses.count(503)
    assert rejected >= SATURATING - MAX_CONCURRENT_RUNS, statuses
    return rejected


@pytest.fixture(scope="module")
def stack(sidecar: LiveServer, prometheus: Prometheus) -> Stack:
    """Drive every outcome, then wait until Prometheus has scraped the counters they move."""
    result = Stack(sidecar, prometheus)
    # Prometheus applies discovered targets a few seconds after it is ready. Runs made before its first scrape
    # would be in that scrape's counters already, and increase() would see no increase: so wait until the
    # zeros every plugin's series start at are in the TSDB (the scheduled checks' own series aside).
    others = f'job="sidecar",plugin!~"{HEARTBEAT}|{TARGET_DOWN}|{MAIL_QUEUE}"'
    baseline = f"sum(sidecar_plugin_errors_total{{{others}}}) + sum(sidecar_plugin_success_total{{{others}}})"

    def scraped_zeros() -> tuple[bool, float | None]:
        seen = prometheus.value(baseline)
        return seen is not None, seen

    assert poll("the first scrape of the sidecar", scraped_zeros, timeout=30) == 0.0
    for plugin, params, timeout, outcome, times in RUNS:
        for _ in range(times):
            doc = sidecar.run(plugin, timeout_seconds=timeout, **params)
            assert doc["outcome"] == outcome, doc
        if outcome == "success":
            key = f'sidecar_plugin_success_total{{job="sidecar",plugin="{plugin}"}}'
        else:
            key = f'sidecar_plugin_errors_total{{job="sidecar",plugin="{plugin}",error_type="{outcome}"}}'
        result.counters[key] = result.counters.get(key, 0) + times
    status, _, body = sidecar.request("POST", "/plugins/hello/run", {"params": ["not", "an", "object"]})
    assert status == 400, body
    result.counters['sidecar_plugin_rejected_total{job="sidecar",plugin="hello",reason="invalid"}'] = 1
    rejected = _saturate(sidecar)
    result.counters['sidecar_plugin_rejected_total{job="sidecar",plugin="sleep",reason="saturated"}'] = rejected

    def scraped() -> tuple[bool, dict[str, float | None]]:
        seen = {expr: prometheus.value(expr) for expr in result.counters}
        return all(v is not None and v >= result.counters[k] for k, v in seen.items()), seen

    poll("the driven runs to show in Prometheus", scraped)
    return result


# --- tests ---------------------------------------------------------------------------------------


def test_scraped_counters_match_the_runs(stack: Stack) -> None:
    seen = {expr: stack.prometheus.value(expr) for expr in stack.counters}
    assert seen == stack.counters
    assert stack.prometheus.value('up{job="sidecar"}') == 1.0
    # The scheduled check runs on its own and exports its interval.
    assert stack.prometheus.value(f'sidecar_plugin_interval_seconds{{plugin="{HEARTBEAT}"}}') == HEARTBEAT_INTERVAL


def test_the_shipped_probe_job_runs_the_check_at_scrape_time(stack: Stack) -> None:
    prom = stack.prometheus
    job = _shipped_probe_job()["job_name"]
    selector = f'{{job="{job}",target="{HEARTBEAT}"}}'

    def probed() -> tuple[bool, dict[str, float | None]]:
        seen = {name: prom.value(name + selector) for name in
                ("up", "sidecar_probe_success", "sidecar_probe_duration_seconds")}
        return seen["sidecar_probe_success"] == 1.0, seen

    seen = poll("a successful probe of the heartbeat check", probed)
    assert seen["up"] == 1.0 and seen["sidecar_probe_duration_seconds"] is not None
    # The check's result {"beat": true} gives one numeric field; probe runs are recorded with trigger "probe".
    assert prom.value(f'sidecar_probe_value{{job="{job}",target="{HEARTBEAT}",field="beat"}}') == 1.0
    status, doc = stack.sidecar.json("GET", f"/plugins/{HEARTBEAT}/runs?limit=1000")
    assert status == 200 and "probe" in {r["trigger"] for r in doc["runs"]}


def _expression_cases() -> list[tuple[str, str, str | None]]:
    """(source, expression to parse, expression that must return data or None) for every shipped expression."""
    cases: list[tuple[str, str, str | None]] = []
    for source, expr in all_expressions():
        data_expr: str | None = expr
        if source in MAY_BE_EMPTY:
            data_expr = None
        elif source.startswith("docs/runbooks.md:") and 'plugin="PLUGIN"' in expr:
            section = source.split(": ", 1)[1]
            data_expr = expr.replace('plugin="PLUGIN"', f'plugin="{RUNBOOK_PLUGINS[section]}"')
        cases.append((source, expr, data_expr))
    return cases


def _has_data(prom: Prometheus, expr: str) -> tuple[bool, str]:
    """Whether `expr` returns a series now or, failing that, at any step of the last 5 minutes."""
    status, doc = prom.get("/api/v1/query", query=expr)
    if status != 200 or doc.get("status") != "success":
        return False, f"instant query failed: HTTP {status} {doc}"
    if doc["data"]["result"]:
        return True, ""
    now = time.time()
    status, doc = prom.get("/api/v1/query_range", query=expr, start=f"{now - 300:.3f}", end=f"{now:.3f}", step="1")
    if status != 200 or doc.get("status") != "success":
        return False, f"range query failed: HTTP {status} {doc}"
    if doc["data"]["result"]:
        return True, ""
    return False, "empty result (instant, and range over the last 5 minutes)"


def test_every_shipped_expression_parses_and_returns_data(stack: Stack) -> None:
    prom = stack.prometheus
    cases = _expression_cases()
    assert len(cases) > 40, cases  # the dashboards, both rule files and the runbooks were all found
    assert set(MAY_BE_EMPTY) <= {source for source, _, _ in cases}, "stale MAY_BE_EMPTY entry"

    parse_failures = []
    for source, expr, _ in cases:
        status, doc = prom.get("/api/v1/query", query=expr)
        if status != 200 or doc.get("status") != "success":
            parse_failures.append(f"{source}: {expr!r} -> HTTP {status}: {doc.get('errorType')}: {doc.get('error')}")
    assert not parse_failures, "expressions Prometheus rejects:\n" + "\n".join(parse_failures)

    def all_have_data() -> tuple[bool, list[str]]:
        failures = []
        for source, _, data_expr in cases:
            if data_expr is None:
                continue
            ok, why = _has_data(prom, data_expr)
            if not ok:
                failures.append(f"{source}: {data_expr!r}: {why}")
        return not failures, failures

    try:
        poll("every expression to return data", all_have_data, timeout=45, every=1.0)
    except AssertionError:
        _, failures = all_have_data()
        raise AssertionError("expressions that return no data:\n" + "\n".join(failures)) from None


def test_alerts_fire_with_the_offending_plugin(stack: Stack) -> None:
    prom = stack.prometheus

    def firing() -> tuple[bool, dict[str, set[str | None]]]:
        found: dict[str, set[str | None]] = {}
        for alert in prom.data("/api/v1/alerts")["alerts"]:
            if alert["state"] == "firing":
                found.setdefault(alert["labels"]["alertname"], set()).add(alert["labels"].get("plugin"))
        return all(plugin in found.get(name, set()) for name, plugin in FIRING.items()), found

    found = poll("the driven alerts to fire", firing)
    # The alerts the brief insists on, spelled out: right plugin label, state firing.
    assert "loop" in found["SidecarPluginTimeouts"], found
    assert "memory_bomb" in found["SidecarPluginMemoryErrors"], found
    # A plugin that only succeeded never fires an error alert.
    for name in ("SidecarPluginTimeouts", "SidecarPluginMemoryErrors", "SidecarPluginCrashes"):
        assert not found[name] & {"hello", "echo", HEARTBEAT}, found
    assert "SidecarDown" not in found, found
    # "my check is critical" is one alert, for exactly the check in critical state: not the checks that are
    # fine, not the plugins whose runs failed on demand (no schedule), and not SidecarPluginErrorRatioHigh
    # for a probe whose target is down (its runs succeed).
    assert found["SidecarCheckCritical"] == {TARGET_DOWN}, found
    assert TARGET_DOWN not in found.get("SidecarPluginErrorRatioHigh", set()), found


def test_what_checks_report_is_scraped_as_series(stack: Stack) -> None:
    prom = stack.prometheus

    def reported() -> tuple[bool, dict[str, float | None]]:
        seen = {
            "own gauge": prom.value(f'mail_queue_messages{{plugin="{MAIL_QUEUE}", queue="outbound"}}'),
            "result field": prom.value(f'sidecar_check_value{{plugin="{MAIL_QUEUE}", field="oldest_seconds"}}'),
            "probe down": prom.value(f'sidecar_check_value{{plugin="{TARGET_DOWN}", field="up"}}'),
            "critical": prom.value(f'sidecar_check_state{{plugin="{TARGET_DOWN}", state="critical"}}'),
        }
        return None not in seen.values(), seen

    assert poll("the checks' values in Prometheus", reported) == {
        "own gauge": 3.0, "result field": 12.5, "probe down": 0.0, "critical": 1.0}


def test_every_rule_group_is_loaded_and_healthy(stack: Stack) -> None:
    prom = stack.prometheus
    expected = {
        "sidecar.recording": {r["record"] for r in load_rules(RECORDING_FILE)},
        "sidecar.alerts": {r["alert"] for r in load_rules(ALERTS_FILE)},
    }

    def healthy() -> tuple[bool, list[str]]:
        groups = prom.data("/api/v1/rules")["groups"]
        problems = []
        names = {g["name"]: {r["name"] for r in g["rules"]} for g in groups}
        if names != expected:
            problems.append(f"groups/rules loaded {names}, expected {expected}")
        for g in groups:
            for r in g["rules"]:
                if r.get("health") != "ok":
                    problems.append(f"{g['name']}/{r['name']}: health {r.get('health')!r} {r.get('lastError', '')}")
        return not problems, problems

    poll("every rule to be evaluated healthily", healthy)


def test_every_contract_metric_is_scraped(stack: Stack) -> None:
    # sidecar_plugin_interval_seconds exists only for scheduled plugins and checks: the heartbeat check
    # of this module's sidecar config makes it present, so no metric is exempt.
    prom = stack.prometheus

    def present() -> tuple[bool, list[str]]:
        names = set(prom.data("/api/v1/label/__name__/values"))
        missing = sorted(SAMPLE_NAMES - names)
        return not missing, missing

    poll("every contract sample name in Prometheus", present, timeout=15)
