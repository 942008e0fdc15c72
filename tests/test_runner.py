"""The runner: checks run on their interval, never overlap themselves, are recorded; the history never silences it."""

from __future__ import annotations

import contextlib
import grp
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.config import CheckConfig, Settings, load_settings
from sidecar.errors import BadRequest, ConfigError, Saturated, Stopping
from sidecar.plugins import Entry
from sidecar.runner import Runner, health_status
from sidecar.sandbox.child import PLUGIN_ID_BASE

from .conftest import poll


@pytest.fixture
def runner(tmp_path) -> Iterator[Runner]:
    checks = (CheckConfig("tick", "echo", {"n": 1}, interval_seconds=0.1),
              CheckConfig("slow", "sleep", {"seconds": 0.4}, interval_seconds=0.05))
    r = Runner(Settings(data_dir=str(tmp_path), checks=checks, entry_points=False))
    yield r
    r.close()


def _wait_for(predicate, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_scheduled_checks_run_and_are_recorded(runner: Runner):
    _wait_for(lambda: runner.health("tick")["success_count"] >= 3)
    runs = runner.runs("tick", 3)
    assert {r["trigger"] for r in runs} == {"schedule"}
    assert runner.health("tick")["interval_seconds"] == 0.1
    body, _ = runner.render_metrics()
    assert b'sidecar_plugin_interval_seconds{plugin="tick"} 0.1' in body


def test_a_check_never_overlaps_itself(runner: Runner):
    _wait_for(lambda: runner.health("slow")["success_count"] >= 2)
    runs = sorted(runner.store.recent("slow", 10), key=lambda r: r["started_at"])
    for earlier, later in zip(runs, runs[1:], strict=False):
        assert later["started_at"] >= earlier["finished_at"]


def _sample(runner: Runner, name: str, **labels: str) -> float:
    body, _ = runner.render_metrics()
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    raise AssertionError(f"no sample {name}{labels}")


def test_three_checks_on_one_interval_with_two_slots_all_keep_running_on_a_busy_sidecar(tmp_path: Path):
    # Each run holds its slot for most of the interval and API calls compete for the same two slots:
    # more demand than capacity, so some ticks are skipped — but no check may be left out.
    checks = tuple(CheckConfig(f"c{i}", "sleep", {"seconds": 0.12}, interval_seconds=0.2) for i in range(3))
    runner = Runner(Settings(data_dir=str(tmp_path), checks=checks, entry_points=False, max_concurrent_runs=2))
    stop = threading.Event()
    api_runs = {"ok": 0, "503": 0}

    def busy_api() -> None:
        while not stop.is_set():
            try:
                runner.run("sleep", {"seconds": 0.05})
                api_runs["ok"] += 1
            except Saturated:
                api_runs["503"] += 1
                stop.wait(0.01)

    api = threading.Thread(target=busy_api)
    api.start()
    try:
        _wait_for(lambda: min(runner.health(f"c{i}")["success_count"] for i in range(3)) >= 4, within=120)
        stop.set()
        api.join(30)
        assert api_runs["ok"] > 0
        for i in range(3):
            assert {r["trigger"] for r in runner.store.recent(f"c{i}", 50)} == {"schedule"}
            assert _sample(runner, "sidecar_plugin_rejected_total", plugin=f"c{i}", reason="invalid") == 0
        assert _sample(runner, "sidecar_scheduler_errors_total") == 0
    finally:
        stop.set()
        api.join(30)
        runner.close()


def test_a_check_whose_scheduling_raises_does_not_stop_the_others(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch):
    checks = (CheckConfig("bad", "echo", {}, interval_seconds=0.2),
              CheckConfig("good", "echo", {}, interval_seconds=0.2))
    runner = Runner(Settings(data_dir=str(tmp_path), checks=checks, entry_points=False), start_scheduler=False)
    limits = runner.registry.limits

    def broken_limits(entry: Entry, timeout_seconds: float | None = None) -> tuple[float, int]:
        if entry.name == "bad":
            raise RuntimeError("a fault while scheduling bad")
        return limits(entry, timeout_seconds)

    monkeypatch.setattr(runner.registry, "limits", broken_limits)
    runner.scheduler.start()
    try:
        _wait_for(lambda: _sample(runner, "sidecar_scheduler_errors_total") >= 3
                  and runner.health("good")["success_count"] >= 3)
        assert runner.scheduler.alive
        assert runner.store.totals("bad") == {}  # never ran
        assert runner.metrics.snapshot("bad")["in_flight"] == 0
    finally:
        runner.close()


@pytest.mark.parametrize(("outcomes", "status"), [
    ([], "unknown"),
    (["success"] * 10, "healthy"),
    (["success", "value"], "degraded"),
    (["timeout", "success"], "failing"),
    (["aborted", "success"], "healthy"),  # the sidecar's doing (a stop, a replaced launcher) blames nobody
    (["aborted"], "unknown"),
])
def test_health_status_rules(outcomes, status):
    assert health_status(outcomes) == status


# --- reload ---------------------------------------------------------------------------------------------


class Source:
    """What a reload reads: settings the test swaps between reloads (a file re-read, in `serve`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __call__(self) -> Settings:
        return self.settings


def _metric_lines(runner: Runner, plugin: str) -> list[str]:
    body, _ = runner.render_metrics()
    return [line for line in body.decode().splitlines() if f'plugin="{plugin}"' in line]


def _reloads(runner: Runner, result: str) -> str:
    body, _ = runner.render_metrics()
    prefix = f'sidecar_config_reloads_total{{result="{result}"}} '
    return next(line for line in body.decode().splitlines() if line.startswith(prefix))[len(prefix):]


@pytest.fixture
def reloadable(tmp_path) -> Iterator[tuple[Runner, Source]]:
    base = Settings(data_dir=str(tmp_path), entry_points=False,
                    checks=(CheckConfig("keep", "echo", {"v": 1}), CheckConfig("drop", "echo", {"v": 2})))
    source = Source(base)
    r = Runner(base, reload_source=source)
    yield r, source
    r.close()


def test_reload_adds_changes_and_removes_checks_keeping_history(reloadable):
    runner, source = reloadable
    runner.run("keep")
    runner.run("drop")
    loaded_at = runner.registry.get("keep").loaded_at
    source.settings = source.settings.replace(checks=(
        CheckConfig("keep", "echo", {"v": 10}, description="changed definition"),
        CheckConfig("fresh", "echo", {"new": True}, interval_seconds=0.1),
    ))
    summary = runner.reload()
    assert summary == {"added": ["fresh"], "changed": ["keep"], "removed": ["drop"], "needs_restart": []}
    names = {p["name"] for p in runner.plugins()}
    assert {"keep", "fresh"} <= names and "drop" not in names
    assert not _metric_lines(runner, "drop")
    # The kept check: same history and counters, new definition.
    assert runner.health("keep")["success_count"] == 1
    assert 'sidecar_plugin_success_total{plugin="keep"} 1.0' in _metric_lines(runner, "keep")
    assert runner.run("keep")["result"] == {"v": 10}
    assert runner.health("keep")["success_count"] == 2
    assert runner.registry.get("keep").loaded_at >= loaded_at
    # The new check is scheduled without a restart.
    _wait_for(lambda: runner.health("fresh")["success_count"] >= 2)
    assert {r["trigger"] for r in runner.runs("fresh")} == {"schedule"}
    assert _reloads(runner, "success") == "1.0"


def test_an_unchanged_reload_changes_nothing(reloadable):
    runner, _ = reloadable
    before = {e.name: e for e in runner.registry}
    assert runner.reload() == {"added": [], "changed": [], "removed": [], "needs_restart": []}
    assert all(runner.registry.get(n) is e for n, e in before.items())


def test_a_bad_reload_keeps_the_old_configuration(reloadable):
    runner, source = reloadable
    registry = runner.registry
    source.settings = source.settings.replace(checks=(CheckConfig("keep", "no_such_plugin"),))
    with pytest.raises(ConfigError, match="no_such_plugin") as info:
        runner.reload()
    assert info.value.status == 400
    assert runner.registry is registry
    assert {"keep", "drop"} <= {p["name"] for p in runner.plugins()}
    assert runner.run("drop")["outcome"] == "success"

    def unreadable() -> Settings:
        raise ConfigError("cannot read config file x.toml: boom")

    runner.reload_source = unreadable
    with pytest.raises(ConfigError, match="boom"):
        runner.reload()
    assert runner.registry is registry
    assert (_reloads(runner, "failure"), _reloads(runner, "success")) == ("2.0", "0.0")


def test_settings_that_need_a_restart_are_named_not_applied(reloadable, tmp_path):
    runner, source = reloadable
    source.settings = source.settings.replace(workers=7, api_token="new", default_timeout_seconds=5.0,
                                              plugin_path=(str(tmp_path),))
    summary = runner.reload()
    assert summary["needs_restart"] == ["workers", "plugin_path", "api_token"]
    assert runner.settings.plugin_path == ()
    assert (runner.settings.workers, runner.settings.api_token) == (Settings().workers, None)
    assert runner.settings.default_timeout_seconds == 5.0  # reloadable: applied


def test_reload_is_safe_with_runs_in_flight(reloadable):
    runner, source = reloadable
    source.settings = source.settings.replace(checks=(CheckConfig("slow", "sleep", {"seconds": 0.5}),))
    runner.reload()
    results: list[dict[str, object]] = []
    in_flight = threading.Thread(target=lambda: results.append(runner.run("slow")))
    in_flight.start()
    _wait_for(lambda: runner.metrics.snapshot("slow")["in_flight"] == 1)
    source.settings = source.settings.replace(checks=(CheckConfig("other", "echo"),))
    for _ in range(10):  # the removal, then reloads that change nothing, all while the run goes on
        runner.reload()
    in_flight.join(30)
    assert [r["outcome"] for r in results] == ["success"]  # it finished with the entry it started with
    assert not _metric_lines(runner, "slow")  # and did not bring the removed series back
    assert runner.store.recent("slow", 1)[0]["outcome"] == "success"  # its run is still recorded


def test_a_check_removed_while_running_and_added_back_starts_clean(reloadable):
    runner, source = reloadable
    with_slow = source.settings.replace(checks=(CheckConfig("slow", "sleep", {"seconds": 0.5}),))
    source.settings = with_slow
    runner.reload()
    results: list[dict[str, object]] = []
    in_flight = threading.Thread(target=lambda: results.append(runner.run("slow")))
    in_flight.start()
    _wait_for(lambda: runner.metrics.snapshot("slow")["in_flight"] == 1)
    source.settings = with_slow.replace(checks=())
    runner.reload()
    source.settings = with_slow
    runner.reload()  # back, as a new series, while the old run goes on
    assert runner.metrics.snapshot("slow")["in_flight"] == 0
    in_flight.join(30)
    assert [r["outcome"] for r in results] == ["success"]
    # The old run settled its own (removed) series: the new one is idle at 0 and counted nothing of it.
    assert runner.metrics.snapshot("slow")["in_flight"] == 0
    assert runner.metrics.snapshot("slow")["success"] == 0


def test_reload_rereads_plugin_directories(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "first.py").write_text("def run():\n    return 1\n")
    base = Settings(data_dir=str(tmp_path / "data"), plugin_path=(str(plugins),), entry_points=False)
    runner = Runner(base, start_scheduler=False, reload_source=Source(base))
    try:
        assert runner.run("first")["result"] == 1
        (plugins / "first.py").unlink()
        (plugins / "second.py").write_text('interval_seconds = 60\ndef run():\n    return 2\n')
        assert runner.reload() == {"added": ["second"], "changed": [], "removed": ["first"], "needs_restart": []}
        assert runner.run("second")["result"] == 2
        assert 'sidecar_plugin_interval_seconds{plugin="second"} 60.0' in _metric_lines(runner, "second")
        assert not _metric_lines(runner, "first")
    finally:
        runner.close()


def test_a_plugin_cannot_read_the_config_file_that_holds_the_token(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("isolation hides files through namespaces entered as root here")
    plugins = tmp_path / "plugins"
    plugins.mkdir(mode=0o755)
    config = plugins / "sidecar.toml"  # beside the plugins, which plugins must be able to read
    config.write_text('api_token = "s3cret-in-config"\n')
    config.chmod(0o644)  # world-readable, as configs under /opt often are
    (plugins / "peek.py").write_text(
        "def run(path):\n"
        "    try:\n"
        "        with open(path) as f:\n"
        "            return {'read': f.read()}\n"
        "    except OSError as exc:\n"
        "        return {'error': type(exc).__name__}\n")
    (plugins / "peek.py").chmod(0o644)
    runner = Runner(Settings(data_dir=str(tmp_path / "data"), plugin_path=(str(plugins),), entry_points=False,
                             config=str(config)), start_scheduler=False)
    try:
        out = runner.run("peek", {"path": str(config)})
        assert out["outcome"] == "success", out
        assert "s3cret-in-config" not in str(out["result"])
        assert "containment" in runner.ready()
    finally:
        runner.close()


def test_a_checks_params_cannot_be_changed_by_a_caller(reloadable):
    """A check runs with what the operator configured, whoever calls it: a caller's params are a 400, counted
    `invalid`, and nothing runs; with no params it runs as configured."""
    runner, _ = reloadable
    for params in ({"v": 99}, {"extra": 1}, {"v": 1}):
        with pytest.raises(BadRequest, match="'keep' is a check: it runs with its configured params only"):
            runner.run("keep", params)
    assert runner.metrics.snapshot("keep")["rejected_invalid"] == 3
    assert runner.store.recent("keep", 10) == []
    assert runner.run("keep")["result"] == {"v": 1}
    assert runner.run("echo", {"v": 99})["result"] == {"v": 99}  # plugins take a caller's params


def test_a_check_only_plugin_is_refused_to_any_request_and_its_checks_run(tmp_path: Path):
    """The `nagios` built-in executes what its params name: only a configured check runs it; a request (run or
    /probe, with or without params) is a 400 naming why, counted `invalid`, and nothing runs."""
    runner = Runner(Settings(data_dir=str(tmp_path), entry_points=False, checks=(
        CheckConfig("truth", "nagios", {"command": ["/bin/sh", "-c", "echo 'OK - fine'"]}),)),
        start_scheduler=False)
    try:
        calls: list[Callable[[], Any]] = [
            lambda: runner.run("nagios", {"command": ["/bin/sh", "-c", "id"]}), lambda: runner.run("nagios"),
            lambda: runner.probe("nagios", {"command": ["/bin/id"]}), lambda: runner.probe("nagios")]
        for call in calls:
            with pytest.raises(BadRequest, match="runs only as a configured check"):
                call()
        assert runner.metrics.snapshot("nagios")["rejected_invalid"] == 4
        assert runner.store.recent("nagios", 10) == []
        done = runner.run("truth")
        assert (done["outcome"], done["check"]["state"], done["result"]["message"]) == ("success", "ok", "OK - fine")
    finally:
        runner.close()


# -- the history cannot silence the sidecar -----------------------------------------------------------------

@pytest.fixture
def fresh_app(tmp_path: Path) -> Iterator[Any]:
    """A fresh sidecar (in-process runner) with the hostile plugins on its path."""
    from sidecar.app import create_app

    from .conftest import HOSTILE

    flask_app = create_app(Settings(data_dir=str(tmp_path), plugin_path=(str(HOSTILE),), entry_points=False))
    yield flask_app
    flask_app.extensions["sidecar_backend"].close()


@pytest.mark.parametrize(("plugin", "outcome"), [("surrogate_error", "runtime"), ("forged_result", "success")])
def test_what_a_plugin_raises_or_forges_never_wedges_the_history(fresh_app: Any, plugin: str, outcome: str) -> None:
    client = fresh_app.test_client()
    first = client.post(f"/plugins/{plugin}/run", json={})
    assert first.status_code == 200 and first.get_json()["outcome"] == outcome
    for i in range(5):
        resp = client.post("/plugins/echo/run", json={"params": {"i": i}})
        assert resp.status_code == 200, resp.get_data(as_text=True)
    assert client.get("/readyz").status_code == 200
    assert client.get("/plugins/echo/health").get_json()["success_count"] == 5
    assert len(client.get("/plugins/echo/runs").get_json()["runs"]) == 5
    health = client.get(f"/plugins/{plugin}/health").get_json()
    assert health["success_count"] + health["error_count"] == 1  # the hostile run is recorded too
    if outcome == "runtime":
        assert health["last_error"]["message"] == "cannot read report-\\udcff.txt"


def test_readyz_is_503_with_a_reason_whatever_the_probe_raises(fresh_app: Any,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    runner = fresh_app.extensions["sidecar_backend"]

    def broken() -> tuple[bool, str]:
        raise OverflowError("Python int too large to convert to SQLite INTEGER")

    monkeypatch.setattr(runner.store, "probe", broken)
    resp = fresh_app.test_client().get("/readyz")
    assert resp.status_code == 503
    doc = resp.get_json()
    assert not doc["ready"] and "OverflowError" in doc["reason"]


def test_a_stalled_history_makes_history_routes_503_while_runs_and_metrics_answer(
        fresh_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = fresh_app.extensions["sidecar_backend"]
    store = runner.store
    store.deadline = 0.2
    real, release = store._write, threading.Event()

    def stuck(result: Any, trigger: str, verdict: Any = (None, None)) -> int:  # a write on a frozen file system
        release.wait()
        return int(real(result, trigger, verdict))

    monkeypatch.setattr(store, "_write", stuck)
    client = fresh_app.test_client()
    try:
        for i in range(3):
            resp = client.post("/plugins/echo/run", json={"params": {"i": i}})
            assert resp.status_code == 200 and resp.get_json()["result"] == {"i": i}
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "stalled" in ready.get_json()["reason"]
        for path, headers in [("/plugins/echo/health", {}), ("/plugins/echo/runs", {}), ("/plugins", {}),
                              ("/plugins/echo", {}), ("/", {"Accept": "text/html"})]:
            resp = client.get(path, headers=headers)
            assert resp.status_code == 503, path
            assert resp.get_json()["error"]["code"] == "store_unavailable", path
            assert "stalled" in resp.get_json()["error"]["message"], path
        scrape = client.get("/metrics")
        assert scrape.status_code == 200
        families = {f.name: f for f in text_string_to_metric_families(scrape.get_data(as_text=True))}
        stalled = [s.value for s in families["sidecar_store_errors"].samples if s.labels.get("reason") == "stalled"]
        assert stalled == [3.0]
    finally:
        release.set()
    _wait_for(lambda: client.get("/readyz").status_code == 200)
    assert client.get("/plugins/echo/health").get_json()["success_count"] == 3


def test_run_answers_give_timestamps_as_iso_strings_like_every_json_answer(reloadable):
    runner, _ = reloadable
    answer = runner.run("echo", {"v": 1})
    run = runner.runs("echo", 1)[0]
    for doc in (answer, run):
        for key in ("started_at", "finished_at"):
            assert isinstance(doc[key], str) and doc[key].endswith("Z"), (key, doc[key])
            datetime.fromisoformat(doc[key])
    assert answer["finished_at"] == run["finished_at"]


@pytest.mark.parametrize(("source", "why"), [
    ("timeout_seconds = -1\ndef run():\n    return 1\n", "timeout_seconds = -1 is invalid"),
    ("def run(:\n", "SyntaxError"),
    (b"\xff\xfe not text", "UnicodeDecodeError"),
])  # fmt: skip
def test_a_broken_plugin_file_is_refused_with_its_reason_and_the_sidecar_serves(tmp_path: Path, source, why):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    target = plugins / "broken.py"
    target.write_bytes(source if isinstance(source, bytes) else source.encode())
    runner = Runner(Settings(data_dir=str(tmp_path / "data"), plugin_path=(str(plugins),), entry_points=False,
                             checks=(CheckConfig("uses_broken", "broken"),)), start_scheduler=False)
    try:
        for name in ("broken", "uses_broken"):
            out = runner.run(name)
            assert out["outcome"] == "import" and out["error"]["type"] == "BrokenPlugin", out
            assert why in out["error"]["message"] and str(target) in out["error"]["message"]
            assert runner.health(name)["errors_by_type"]["import"] == 1  # recorded and counted as an import failure
        assert runner.run("echo", {"v": 1})["outcome"] == "success"  # the others are untouched
        assert why in next(p for p in runner.plugins() if p["name"] == "broken")["problem"]
    finally:
        runner.close()


def _launcher_process(root: int) -> int:
    """The launcher's pid: `root` itself, or (under bubblewrap) the descendant running the launcher."""
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        if argv[0] == b"sidecar: launcher":  # its title (`sandbox.title`); bubblewrap's command names the module
            return pid
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                frontier.extend(int(k) for k in f.read().split())
    raise AssertionError("no launcher process found")


def test_a_stopped_launcher_makes_the_sidecar_unready_until_it_is_replaced(tmp_path: Path):
    runner = Runner(Settings(data_dir=str(tmp_path), entry_points=False), start_scheduler=False)
    try:
        assert runner.run("echo")["outcome"] == "success"
        launcher_pid = runner.sandbox.launcher_pid
        assert launcher_pid is not None
        launcher = _launcher_process(launcher_pid)
        done: dict[str, dict[str, Any]] = {}
        caller = threading.Thread(target=lambda: done.update(r=runner.run("sleep", {"seconds": 30},
                                                                         timeout_seconds=1)))
        caller.start()
        poll("the run to be in flight", lambda: (runner.metrics.snapshot("sleep").get("in_flight") == 1, None))
        os.kill(launcher, signal.SIGSTOP)
        try:
            state = poll("/readyz to report the launcher", lambda: (not runner.ready()["ready"], runner.ready()))
            assert not state["checks"]["launcher_answers"]
            assert "launcher" in state["reason"]
            poll("/readyz to recover", lambda: (runner.ready()["ready"], runner.ready()))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(launcher, signal.SIGCONT)
        caller.join()
        assert done["r"]["outcome"] == "timeout", done["r"]
        assert runner.run("echo")["outcome"] == "success"
        assert [r["outcome"] for r in runner.runs("sleep")] == ["timeout"]
    finally:
        runner.close()


# -- what a check finds becomes a metric --------------------------------------------------------------------

REPORTING = '''
from sidecar.check import gauge, state

def run(lines=51):
    gauge("mail_queue_messages", 3, help="Messages waiting", queue="mail")
    state("warning", "3 messages waiting")
    return {"lines": lines, "age_seconds": 12.5, "name": "not a number"}
'''


def test_a_scheduled_checks_values_and_state_are_on_metrics_with_no_second_run(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "mailq.py").write_text(REPORTING)
    checks = (CheckConfig("mail", "mailq", {"lines": 7}, interval_seconds=0.5),)
    r = Runner(Settings(data_dir=str(tmp_path / "data"), checks=checks, entry_points=False,
                        plugin_path=(str(plugins),)))
    try:
        _wait_for(lambda: r.health("mail")["success_count"] >= 1)
        runs = r.runs("mail")
        assert {run["trigger"] for run in runs} == {"schedule"}  # scheduled runs only, nothing else
        # the history keeps what each run returned and what it meant for the check
        assert runs[0]["result"] == {"lines": 7, "age_seconds": 12.5, "name": "not a number"}
        assert (runs[0]["state"], runs[0]["state_reason"], runs[0]["result_truncated"]) == (
            "warning", "3 messages waiting", False)
        shown = next(e for e in r.status()["entries"] if e["name"] == "mail")
        assert (shown["state"], shown["state_reason"]) == ("warning", "3 messages waiting")
        assert shown["values"] == {"age_seconds": 12.5, "lines": 7.0}
        assert _sample(r, "sidecar_check_value", plugin="mail", field="lines") == 7
        assert _sample(r, "sidecar_check_value", plugin="mail", field="age_seconds") == 12.5
        assert _sample(r, "mail_queue_messages", plugin="mail", queue="mail") == 3
        assert _sample(r, "sidecar_check_state", plugin="mail", state="warning") == 1
        assert _sample(r, "sidecar_check_state", plugin="mail", state="ok") == 0
        assert _sample(r, "sidecar_check_last_success_timestamp_seconds", plugin="mail") > 0
        # the API shows what the sidecar made of the report, not what the plugin sent
        answer = r.run("mailq")
        assert answer["check"] == {"state": "warning", "reason": "3 messages waiting",
                                   "values": {"lines": 51.0, "age_seconds": 12.5}, "dropped": {},
                                   "gauges": [{"name": "mail_queue_messages", "labels": {"queue": "mail"},
                                               "value": 3.0}]}
        assert "report" not in answer
    finally:
        r.close()


def test_a_plugin_that_raises_is_a_failed_run_and_a_critical_check(tmp_path: Path) -> None:
    r = Runner(Settings(data_dir=str(tmp_path), entry_points=False), start_scheduler=False)
    try:
        answer = r.run("sleep", {"seconds": "x"})
        assert answer["outcome"] != "success"
        assert answer["check"]["state"] == "critical" and answer["check"]["reason"].startswith("run failed (")
        assert _sample(r, "sidecar_check_state", plugin="sleep", state="critical") == 1
        (run,) = r.runs("sleep")
        assert run["state"] == "critical" and "ValueError: seconds must be a number" in run["error_traceback"]
        shown = next(e for e in r.status()["entries"] if e["name"] == "sleep")
        assert shown["state"] == "critical" and shown["state_reason"] == answer["check"]["reason"]
    finally:
        r.close()


def test_a_plugin_cannot_read_the_token_file_the_data_directory_or_the_runners_socket(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("isolation hides files through namespaces entered as root here")
    import socket

    plugins = tmp_path / "plugins"
    plugins.mkdir(mode=0o755)
    (plugins / "reach.py").write_text(
        "import os, socket\n"
        "def run(token, data, sock):\n"
        "    out = {}\n"
        "    for key, what in (('token', lambda: open(token).read()), ('data', lambda: os.listdir(data)),\n"
        "                      ('control', lambda: open(os.path.join(os.path.dirname(token), 'control')).read()),\n"
        "                      ('sock', lambda: socket.socket(socket.AF_UNIX).connect(sock))):\n"
        "        try:\n"
        "            out[key] = what()\n"
        "        except OSError as exc:\n"
        "            out[key] = type(exc).__name__\n"
        "    return out\n")
    (plugins / "reach.py").chmod(0o644)
    for d in (tmp_path, plugins):
        d.chmod(0o755)  # the plugin's directory must be reachable by the run's uid
    # Beside the plugin, which the run must be able to read: only their covering hides them.
    token = plugins / "token"
    token.write_text("s3cret-token-file")
    token.chmod(0o644)
    (plugins / "control").write_text("visible")  # a file beside them that nothing hides
    (plugins / "control").chmod(0o644)
    data = plugins / "data"
    sock_dir = plugins / "run"
    sock_dir.mkdir(mode=0o755)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock_dir / "runner.sock"))
    listener.listen()
    os.chmod(sock_dir / "runner.sock", 0o777)
    runner = Runner(Settings(data_dir=str(data), plugin_path=(str(plugins),), entry_points=False,
                             api_token_file=str(token)), start_scheduler=False, hidden=(str(sock_dir),))
    try:
        data.chmod(0o755)
        out = runner.run("reach", {"token": str(token), "data": str(data), "sock": str(sock_dir / "runner.sock")})
        assert out["outcome"] == "success", out
        assert out["result"]["control"] == "visible", out["result"]  # so what fails below is hidden, not unreachable
        assert out["result"]["token"] != "s3cret-token-file"
        assert "history.sqlite3" not in str(out["result"]["data"]), out["result"]
        assert out["result"]["sock"] in ("FileNotFoundError", "PermissionError", "ConnectionRefusedError"), out
    finally:
        runner.close()
        listener.close()


def test_a_stopping_runner_lets_its_run_finish_refuses_new_work_and_says_not_ready(tmp_path):
    runner = Runner(Settings(data_dir=str(tmp_path), entry_points=False))
    try:
        done: dict[str, Any] = {}
        caller = threading.Thread(target=lambda: done.update(r=runner.run("sleep", {"seconds": 1.0})))
        caller.start()
        poll("the run to start", lambda: (runner._running >= 1, None))
        runner.stop(grace=60.0)  # returns once the run is answered and recorded
        caller.join()
        assert done["r"]["outcome"] == "success"
        assert runner.store.runs("sleep", 5)[0]["outcome"] == "success"
        attempts: list[Callable[[], Any]] = [lambda: runner.run("echo"), lambda: runner.probe("echo")]
        for attempt in attempts:
            with pytest.raises(Stopping) as refused:
                attempt()
            assert refused.value.status == 503 and refused.value.code == "stopping"
        state = runner.ready()
        assert not state["ready"] and state["reason"] == "the sidecar is stopping"
    finally:
        runner.close()


LOG_READER = '''
import os

def run(path):
    try:
        with open(path) as f:
            text = f.read()
    except OSError as exc:
        return {"read": type(exc).__name__}
    try:
        with open(os.path.join(os.path.dirname(path), "forged.log"), "w") as f:
            f.write("x")
        wrote = "wrote"
    except OSError as exc:
        wrote = type(exc).__name__
    return {"read": text, "write": wrote, "groups": sorted(os.getgroups()), "uid": os.getuid()}
'''


@pytest.mark.skipif(os.geteuid() != 0, reason="as root each run takes a uid of its own; only root gives groups")
def test_a_served_check_reads_what_its_table_grants_and_nothing_more(tmp_path: Path):
    """`groups = ["adm"]` reads a 0640 root:adm log, read-only, from a directory under /tmp named in
    `read_paths`; the same check without the group gets PermissionError, and without the path sees its own /tmp."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "read_log.py").write_text(LOG_READER)
    logs = tmp_path / "app-logs"
    logs.mkdir(mode=0o755)
    log = logs / "app.log"
    log.write_text("line 1\n")
    os.chown(log, 0, grp.getgrnam("adm").gr_gid)
    log.chmod(0o640)
    config = tmp_path / "sidecar.toml"
    config.write_text(
        f'[checks.with_adm]\nplugin = "read_log"\nparams = {{ path = "{log}" }}\ngroups = ["adm"]\n'
        'read_paths = ["app-logs"]\n\n'
        f'[checks.without_group]\nplugin = "read_log"\nparams = {{ path = "{log}" }}\nread_paths = ["app-logs"]\n\n'
        f'[checks.without_path]\nplugin = "read_log"\nparams = {{ path = "{log}" }}\ngroups = ["adm"]\n')
    settings = load_settings({"config": str(config), "data_dir": str(tmp_path / "data"),
                              "plugin_path": str(plugins)}, environ={})
    runner = Runner(settings.replace(entry_points=False), start_scheduler=False)
    try:
        out = runner.run("with_adm")
        assert out["outcome"] == "success", out
        assert out["result"]["read"] == "line 1\n"
        assert out["result"]["write"] == "OSError"  # read-only: EROFS
        assert out["result"]["groups"] == [grp.getgrnam("adm").gr_gid]
        assert out["result"]["uid"] >= PLUGIN_ID_BASE  # the uid stays the run's own
        assert runner.run("without_group")["result"] == {"read": "PermissionError"}
        assert runner.run("without_path")["result"] == {"read": "FileNotFoundError"}  # runs have a private /tmp
        assert not (logs / "forged.log").exists()
    finally:
        runner.close()
