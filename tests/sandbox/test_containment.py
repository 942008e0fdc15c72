"""A run is one unit: nothing of it outlives it, nothing of it crosses into another run, its limits hold over
its whole process tree (`sidecar.sandbox.containment`)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sidecar.sandbox.client import PluginRef, RunRequest, Sandbox
from sidecar.sandbox.containment import Cgroups, Units, describe, detect, release
from sidecar.sandbox.isolation import Isolation, namespaces_unavailable
from sidecar.sandbox.result import Outcome, PluginSandboxResult

from .conftest import HOSTILE


def _ref(name: str) -> PluginRef:
    return PluginRef(name, path=str(HOSTILE / f"{name}.py"))


def _run(sb: Sandbox, name: str, timeout: float = 10.0, memory_mb: int = 1024, **params: Any) -> PluginSandboxResult:
    return sb.run(RunRequest(_ref(name), params, timeout_seconds=timeout, memory_limit_mb=memory_mb))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.fixture(scope="module", params=[True, False], ids=["templates", "per-run-import"])
def library(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """The CLI's and the Python API's sandbox: no isolation, the sidecar's own uid."""
    with Sandbox(templates=request.param) as sb:
        yield sb


@pytest.fixture(scope="module", params=[True, False], ids=["templates", "per-run-import"])
def served(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """The sandbox `sidecar serve` runs as root: namespaces, a uid per run (or per template)."""
    if os.geteuid() != 0:
        pytest.skip("the per-run identity needs root")
    iso = Isolation()
    if iso.bwrap is None or namespaces_unavailable(iso.bwrap):
        pytest.skip("bubblewrap cannot create namespaces here")
    with Sandbox(isolation=iso, templates=request.param) as sb:
        yield sb


def _in_flight(sb: Sandbox, stop: threading.Event, n: int = 4) -> list[threading.Thread]:
    """`n` callers keeping runs in flight until `stop`."""
    def loop() -> None:
        while not stop.is_set():
            assert _run(sb, "nap", seconds=0.2).outcome is Outcome.SUCCESS

    threads = [threading.Thread(target=loop) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def test_a_setsid_daemon_is_dead_when_its_result_is_reported_while_others_run(library):
    stop = threading.Event()
    threads = _in_flight(library, stop)
    try:
        for _ in range(3):
            r = _run(library, "double_fork_daemon")
            assert r.outcome is Outcome.SUCCESS, r.error
            assert [p for p in r.result["pids"] if _alive(p)] == []  # at once: no polling
    finally:
        stop.set()
        for t in threads:
            t.join()


def test_a_setsid_daemon_is_dead_when_its_result_is_reported_as_served(served):
    stop = threading.Event()
    threads = _in_flight(served, stop)
    try:
        for _ in range(3):
            r = _run(served, "double_fork_daemon")
            assert r.outcome is Outcome.SUCCESS, r.error
            # its pids are the namespace's: look from inside, from the next run
            seen = _run(served, "proc_alive", pids=r.result["pids"])
            assert seen.outcome is Outcome.SUCCESS, seen.error
            assert seen.result["alive"] == []
    finally:
        stop.set()
        for t in threads:
            t.join()


def test_children_moved_into_another_runs_group_cannot_end_that_run(served):
    done: dict[str, PluginSandboxResult] = {}
    victim = threading.Thread(target=lambda: done.update(r=_run(served, "nap", seconds=1.5)))
    victim.start()
    attacks = []
    while victim.is_alive():
        attacks.append(_run(served, "join_groups"))
    victim.join()
    r = done["r"]
    assert r.outcome is Outcome.SUCCESS, r.error
    assert r.result == {"slept": 1.5}
    inside = [a for a in attacks if r.started_at < a.started_at and a.finished_at < r.finished_at]
    assert inside, "no attack ran while the victim was in flight"
    for a in attacks:
        assert a.outcome is Outcome.SUCCESS, a.error
        assert a.result["joined"] == []


def test_a_run_cannot_hold_2000_processes(library):
    if not library.cgroups.pids:
        pytest.skip(f"no writable pids controller here ({library.cgroups.why})")
    r = _run(library, "fork_many", timeout=30.0, count=2000)
    assert r.outcome is not Outcome.SUCCESS
    assert r.error is not None and "Resource temporarily unavailable" in r.error.message


def test_memory_limit_holds_over_the_whole_tree(library):
    if not library.cgroups.memory:
        pytest.skip(f"no writable memory controller here ({library.cgroups.why})")
    r = _run(library, "tree_memory", timeout=30.0, memory_mb=256, megabytes=190)
    assert r.outcome is Outcome.MEMORY, (r.outcome, r.error, r.result)
    # the peak is the tree's, measured by the sidecar: more than any one child
    assert r.peak_memory_bytes > 200 * 1024 * 1024


def test_peak_is_the_trees_when_within_the_limit(library):
    if not library.cgroups.memory:
        pytest.skip(f"no writable memory controller here ({library.cgroups.why})")
    r = _run(library, "tree_memory", timeout=30.0, memory_mb=1024, megabytes=100)
    assert r.outcome is Outcome.SUCCESS, r.error
    assert r.peak_memory_bytes > 250 * 1024 * 1024


def test_the_session_fallback_still_kills_escaped_daemons():
    with Sandbox(cgroups=False) as sb:
        assert not sb.cgroups.any
        assert sb.containment.startswith("session per run")
        r = _run(sb, "double_fork_daemon")
        assert r.outcome is Outcome.SUCCESS, r.error
        assert [p for p in r.result["pids"] if _alive(p)] == []


def test_describe_says_what_is_in_force():
    assert describe(Cgroups(why="not writable")).startswith("session per run (no writable cgroup (not writable))")
    line = describe(Cgroups(kill="/k", memory="/m", pids="/p"))
    assert "cgroup.kill" in line and "memory.limit_in_bytes" in line and "pids.max (v1)" in line
    assert "memory.max/memory.peak (v2)" in describe(Cgroups(kill="/k", memory="/k", memory_v2=True))


def test_a_plugin_that_stops_its_template_harms_at_most_that_run(served):
    for _ in range(3):
        r = _run(served, "stop_template", timeout=3.0)
        assert r.outcome is Outcome.SUCCESS, r.error
    assert _run(served, "hello", timeout=3.0).outcome is Outcome.SUCCESS


def test_a_template_hung_in_an_at_fork_hook_costs_no_launcher_and_no_reaping(library):
    done: dict[str, PluginSandboxResult] = {}
    hung = threading.Thread(target=lambda: done.update(r=_run(library, "at_fork_hang", timeout=5.0)))
    hung.start()
    while hung.is_alive():  # meanwhile, other plugins' daemons are still reaped at their runs' end
        r = _run(library, "double_fork_daemon")
        assert r.outcome is Outcome.SUCCESS, r.error
        assert [p for p in r.result["pids"] if _alive(p)] == []
    hung.join()
    r = done["r"]
    assert r.outcome in (Outcome.SUCCESS, Outcome.TIMEOUT, Outcome.IMPORT), r.error
    assert r.error is None or r.error.type != "LauncherDied"


def _units_of(membership: str, parents: list[str]) -> list[str]:
    """The unit named by each line of /proc/PID/cgroup that lies under one of our launchers' directories."""
    found = []
    for line in membership.splitlines():
        path = line.split(":", 2)[2]
        for parent in parents:
            mark = "/" + os.path.basename(parent) + "/"
            if mark in path:
                found.append(path.split(mark, 1)[1])
                break
    return found


def test_a_plugins_code_runs_only_inside_a_unit(library):
    """At import (in the run, or in its template) and at run time, in every hierarchy: a unit's directory
    below a launcher's own, never the launcher's directory itself (a spare moves itself in first)."""
    if not library.cgroups.any:
        pytest.skip(f"no writable cgroup here ({library.cgroups.why})")
    parents = library.cgroups.dirs()
    for _ in range(3):  # units are made ahead and reused: each way a run gets one
        r = _run(library, "where_am_i")
        assert r.outcome is Outcome.SUCCESS, r.error
        for when in ("at_import", "at_run"):
            units = _units_of(r.result[when], parents)
            assert len(units) == len(parents), (when, r.result[when])
            for unit in units:  # <launcher>/<unit>: two components, the unit's a `u` and its number
                launcher, _, name = unit.partition("/")
                assert launcher.startswith("l") and name[:1] == "u" and name[1:].isdigit(), (when, unit)


def _sleeper() -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        time.sleep(30)
        os._exit(0)
    return pid


def test_an_ended_units_pids_cgroup_is_reused_only_empty_and_its_callers_paths_never_name_a_later_unit():
    if os.geteuid() != 0:
        pytest.skip("making cgroups needs root")
    cg = detect()
    if not cg.any:
        pytest.skip(f"no writable cgroup here ({cg.why})")
    units = Units(cg, 64)
    try:
        if not units.keep:
            pytest.skip("no v1 pids hierarchy of its own here: nothing is reused")
        first = _sleeper()
        unit = units.create(first, 64 * 1024 * 1024)
        wire = unit.wire()  # what the run's caller holds, maybe past the run's end
        assert unit.pids_dir is not None
        os.kill(first, 9)
        os.waitpid(first, 0)
        other = _sleeper()
        with open(os.path.join(unit.pids_dir, "cgroup.procs"), "w") as f:  # a process still in it: never handed on
            f.write(str(other))
        assert not units.forget(unit)
        assert not units.reused
        os.kill(other, 9)
        os.waitpid(other, 0)
        assert units.forget(unit)
        assert [u.pids_dir for u in units.reused] == [unit.pids_dir]
        again = units.take()
        assert again.pids_dir == unit.pids_dir
        for path in (wire["kill"], wire["memory"]):  # gone: a late `cgroup.kill` from that caller hits nothing
            assert path is None or (path not in again.dirs and not os.path.exists(path))
        if again.memory_dir is not None:  # new: its limit, peak and OOM count start from nothing
            assert again.limit == 0
            with open(os.path.join(again.memory_dir, "memory.max" if cg.memory_v2 else "memory.limit_in_bytes")) as f:
                assert int(f.read().replace("max", str(1 << 62))) > 64 * 1024 * 1024
        units.discard(again)
    finally:
        units.close()
        release(cg)
