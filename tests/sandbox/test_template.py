"""Per-plugin templates: runs forked from a process that imported the plugin once (issue 11).

Each run must still start from the template's state, never from what an earlier run left behind.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest

from sidecar.sandbox.client import PluginRef, RunRequest, Sandbox
from sidecar.sandbox.result import Outcome, PluginSandboxResult
from tests.conftest import poll

from .conftest import plugin_file


@pytest.fixture
def sandbox(templated: Sandbox) -> Sandbox:
    """Runs forked from templates, in a sandbox of the test's own."""
    return templated


STATEFUL = '''
import json, os
COUNT = 0
LOG = open(os.path.join(os.environ["TMPDIR"], "import.log"), "w")  # an fd opened at import
def run(mutate=False):
    global COUNT
    before = {"count": COUNT, "dumps": json.dumps is _original, "fd_open": not LOG.closed}
    os.fstat(LOG.fileno())  # open in this process too, not just in the file object
    if mutate:
        COUNT += 1
        json.dumps = lambda *a, **k: "patched"  # a monkeypatch of a module the template holds
        LOG.close()
    return {**before, "pid": os.getpid(), "ppid": os.getppid()}
_original = json.dumps
'''


def _run(sb: Sandbox, ref: PluginRef, timeout: float = 10.0, **params: object) -> PluginSandboxResult:
    return sb.run(RunRequest(ref, params, timeout_seconds=timeout))


def test_runs_come_from_one_template_and_are_adopted_by_the_launcher(sandbox: Sandbox, tmp_path: Path) -> None:
    ref = plugin_file(tmp_path, "stateful", STATEFUL)
    results = [_run(sandbox, ref) for _ in range(3)]
    assert all(r.outcome is Outcome.SUCCESS for r in results), results
    assert len({r.result["pid"] for r in results}) == 3  # a fresh process per run
    # Forked by the template, re-parented to the launcher, which reaps and reports it.
    assert {r.result["ppid"] for r in results} == {sandbox.launcher_pid}
    stats = sandbox.template_stats()
    assert stats["builds"] == 1 and stats["alive"] == 1 and stats["resident_bytes"] > 0


def test_state_changed_by_a_run_is_not_seen_by_the_next(sandbox: Sandbox, tmp_path: Path) -> None:
    ref = plugin_file(tmp_path, "stateful", STATEFUL)
    first = _run(sandbox, ref, mutate=True)
    second = _run(sandbox, ref, mutate=True)
    assert first.outcome is Outcome.SUCCESS and second.outcome is Outcome.SUCCESS, (first, second)
    # Module global, monkeypatch and an fd opened at import (closed by the first run): as the template left them.
    assert second.result["count"] == 0 and second.result["dumps"] is True
    assert second.result["fd_open"] is True
    assert sandbox.template_stats()["builds"] == 1


RANDOM = """
import random, ssl, uuid
ssl.RAND_bytes(16)  # the template's OpenSSL generator is seeded before any run is forked
random.random()
def run():
    return [ssl.RAND_bytes(16).hex(), random.random(), str(uuid.uuid4())]
"""


def test_runs_of_one_template_draw_different_random_numbers(sandbox: Sandbox, tmp_path: Path) -> None:
    # Each run is forked from the same template state: every generator must know it is a new process
    # (Python's after-fork hooks reseed `random`; OpenSSL sees a new pid), or runs would repeat nonces.
    ref = plugin_file(tmp_path, "randomness", RANDOM)
    draws = [_run(sandbox, ref) for _ in range(3)]
    assert all(r.outcome is Outcome.SUCCESS for r in draws), draws
    for i in range(3):
        assert len({r.result[i] for r in draws}) == 3, draws
    assert sandbox.template_stats()["builds"] == 1


WARMED = """
import os
from sidecar import check
WARMED_IN = None
def warm_up():
    global WARMED_IN
    WARMED_IN = os.getpid()
    check.state("critical", "reported by the rehearsal")
def run():
    return {"warmed_here": WARMED_IN == os.getpid()}
"""


def test_a_plugins_warm_up_runs_in_the_runs_own_process_and_reports_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    ref = plugin_file(tmp_path, "warmed", WARMED)
    for _ in range(2):
        r = _run(sandbox, ref)
        assert r.outcome is Outcome.SUCCESS, r
        assert r.result == {"warmed_here": True}  # called before the request, in the process that ran it
        assert r.report is None or r.report.state is None, r.report  # the rehearsal's state was discarded


def test_a_plugin_edited_on_disk_runs_its_new_code(sandbox: Sandbox, tmp_path: Path) -> None:
    ref = plugin_file(tmp_path, "edited", "def run():\n    return 'old'\n")
    assert _run(sandbox, ref).result == "old"
    assert _run(sandbox, ref).result == "old"
    Path(ref.path or "").write_text("def run():\n    return 'new code, other size'\n")
    assert _run(sandbox, ref).result == "new code, other size"
    assert sandbox.template_stats()["builds"] == 2


def test_templates_are_bounded_least_recently_used_first(tmp_path: Path) -> None:
    with Sandbox(templates=True, max_templates=2) as sb:
        refs = [plugin_file(tmp_path, f"p{i}", f"def run():\n    return {i}\n") for i in range(4)]
        for i, ref in enumerate(refs):
            assert _run(sb, ref).result == i
        stats = sb.template_stats()
        assert stats["alive"] == 2 and stats["builds"] == 4 and stats["evictions"] == 2
        assert _run(sb, refs[3]).result == 3  # the most recent is still there: no new build
        assert sb.template_stats()["builds"] == 4
        assert _run(sb, refs[0]).result == 0  # evicted: built again
        assert sb.template_stats()["builds"] == 5


def test_a_hanging_template_import_does_not_block_other_plugins(sandbox: Sandbox, tmp_path: Path) -> None:
    hang = plugin_file(tmp_path, "hang", "import time\ntime.sleep(3600)\ndef run():\n    return 1\n")
    quick = plugin_file(tmp_path, "quick", "def run():\n    return 'quick'\n")
    hung: list[PluginSandboxResult] = []

    def hanging() -> None:
        hung.append(_run(sandbox, hang, timeout=10.0))

    thread = threading.Thread(target=hanging)
    thread.start()
    try:
        for _ in range(3):
            assert _run(sandbox, quick).result == "quick"
        assert thread.is_alive()  # the hanging import is still being waited for, and blocked nobody
    finally:
        thread.join(60)
    assert hung[0].outcome is Outcome.TIMEOUT


def test_a_failed_import_ends_the_run_and_is_retried_with_back_off(sandbox: Sandbox, tmp_path: Path) -> None:
    ref = plugin_file(tmp_path, "broken", "raise RuntimeError('broken at import')\ndef run():\n    return 1\n")
    first = _run(sandbox, ref)
    assert first.outcome is Outcome.IMPORT and first.error is not None
    assert "broken at import" in first.error.message
    second = _run(sandbox, ref)  # within the back-off: imported per run, the same outcome
    assert second.outcome is Outcome.IMPORT
    assert sandbox.template_stats()["builds"] == 1


def test_a_plugin_starting_a_thread_at_import_runs_per_import(sandbox: Sandbox, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    source = ("import threading, time\nthreading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n"
              "def run():\n    return threading.active_count()\n")
    ref = plugin_file(tmp_path, "threaded", source)
    with caplog.at_level(logging.WARNING, logger="sidecar.sandbox"):
        results = [_run(sandbox, ref) for _ in range(3)]
    assert [r.outcome for r in results] == [Outcome.SUCCESS] * 3, results
    assert all(r.result == 2 for r in results)  # its own import, its own thread, in each run
    assert len([r for r in caplog.records if "threads" in r.getMessage()]) == 1  # logged once
    assert sandbox.template_stats()["alive"] == 0


def test_preload_false_opts_out(sandbox: Sandbox, tmp_path: Path) -> None:
    path = tmp_path / "optout.py"
    path.write_text("import os\ndef run():\n    return os.getppid()\n")
    ref = PluginRef("optout", path=str(path), preload=False)
    assert _run(sandbox, ref).result == sandbox.launcher_pid
    assert sandbox.template_stats()["builds"] == 0


def test_templates_off_imports_per_run(tmp_path: Path) -> None:
    with Sandbox(templates=False) as sb:
        ref = plugin_file(tmp_path, "stateful", STATEFUL)
        assert _run(sb, ref).outcome is Outcome.SUCCESS
        assert sb.template_stats()["builds"] == 0


def test_a_templates_run_keeps_its_environment_and_private_directory(sandbox: Sandbox, tmp_path: Path) -> None:
    ref = plugin_file(tmp_path, "where", "import os\nAT_IMPORT = os.environ['TMPDIR']\n"
                                      "def run():\n    return [AT_IMPORT, os.environ['TMPDIR'], os.environ['HOME']]\n")
    first, second = _run(sandbox, ref).result, _run(sandbox, ref).result
    assert first[1] == first[2] and second[1] == second[2] and first[1] != second[1]  # each run its own
    assert first[0] == second[0] != first[1]  # the template's own, at import time
    # removed after its run: by the launcher once it reaps the run, which may come just after the answer
    poll("the run's private directory to be removed", lambda: (not os.path.exists(first[1]), first[1]), timeout=10)


KILLER = '''
import os, signal
def run():
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                os.kill(int(entry), signal.SIGKILL)
                out[entry] = "killed"
            except OSError as exc:
                out[entry] = type(exc).__name__
    return {"uid": os.getuid(), "signals": out}
'''


@pytest.mark.skipif(os.geteuid() != 0, reason="identities per template need root")
def test_another_plugins_run_cannot_signal_a_template(tmp_path: Path) -> None:
    """Under isolation each template has a uid of its own: the runs of one plugin cannot kill another's."""
    from sidecar.sandbox.isolation import Isolation

    tmp_path.chmod(0o755)
    with Sandbox(templates=True, isolation=Isolation(readable=(str(tmp_path),))) as sb:
        victim = plugin_file(tmp_path, "victim", "import os\ndef run():\n    return os.getuid()\n")
        killer = plugin_file(tmp_path, "killer", KILLER)
        for ref in (victim, killer):
            Path(ref.path or "").chmod(0o644)
        victim_uid = _run(sb, victim).result
        assert isinstance(victim_uid, int) and victim_uid >= 2_000_000_000
        attack = _run(sb, killer)
        assert attack.outcome is Outcome.SUCCESS, attack
        assert attack.result["uid"] != victim_uid and attack.result["uid"] >= 2_000_000_000
        assert "PermissionError" in attack.result["signals"].values()  # it did see other processes
        # It may kill its own template and spare (its own uid), nothing else: the victim's template lives on.
        assert _run(sb, victim).result == victim_uid
        assert sb.template_stats()["builds"] == 2


def test_a_forged_fork_answer_never_makes_another_process_a_run(sandbox: Sandbox, tmp_path: Path) -> None:
    """A plugin's at-fork hook writes "forked" naming a process of someone else's: the launcher checks the
    pid is the template's child, so the victim is neither handed out as a run nor killed at its end."""
    import shutil
    import subprocess

    from .conftest import HOSTILE

    victim = subprocess.Popen(["sleep", "60"])
    try:
        shutil.copy(HOSTILE / "forge_forked.py", tmp_path / "forge_forked.py")
        (tmp_path / "victim.pid").write_text(str(victim.pid))
        ref = PluginRef("forge_forked", path=str(tmp_path / "forge_forked.py"))
        # Its forged answers may also pair its own forks with the wrong runs: that harms only its own runs.
        results = [_run(sandbox, ref, timeout=3.0) for _ in range(3)]
        assert {r.outcome for r in results} <= {Outcome.SUCCESS, Outcome.CRASH}, [(r.outcome, r.error)
                                                                                   for r in results]
        assert all(r.result["pid"] != victim.pid for r in results if r.result)
        bystander = plugin_file(tmp_path, "bystander", "def run():\n    return 1\n")
        assert _run(sandbox, bystander).outcome is Outcome.SUCCESS
        assert victim.poll() is None  # alive: never a run, never killed
        with open(f"/proc/{victim.pid}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] != "T"  # never stopped either
    finally:
        victim.kill()
        victim.wait()
