"""A caller's channel (`sidecar.sandbox.channel`): tickets ahead, the template children handed over before a run
asks. Messages and processes are counted, never timed."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from sidecar.sandbox.channel import AHEAD_AFTER, Channel, HeldTicket
from sidecar.sandbox.client import PluginRef, RunRequest, Sandbox
from sidecar.sandbox.protocol import Ahead, CallerMessage
from sidecar.sandbox.result import Outcome, PluginSandboxResult

from ..conftest import poll
from .conftest import alive, plugin_file


@pytest.fixture
def sandbox(templated: Sandbox) -> Sandbox:
    """Runs forked from templates, in a sandbox of the test's own."""
    return templated


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The kind of every message a channel asks the launcher (`want`, `stats`)."""
    sent: list[str] = []
    original = Channel.ask

    def ask(self: Channel, msg: CallerMessage) -> None:
        sent.append(msg["t"])
        original(self, msg)

    monkeypatch.setattr(Channel, "ask", ask)
    return sent


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pid of every ticket ahead a channel took in, in order."""
    pids: list[int] = []
    original = HeldTicket.__init__

    def init(self: HeldTicket, pid: int, fds: list[int], ahead: Ahead) -> None:
        pids.append(pid)
        original(self, pid, fds, ahead)

    monkeypatch.setattr(HeldTicket, "__init__", init)
    return pids


def _run(sb: Sandbox, ref: PluginRef) -> PluginSandboxResult:
    return sb.run(RunRequest(ref, {}, timeout_seconds=10.0))


def _launcher_children(sb: Sandbox) -> list[int]:
    pid = sb.launcher_pid
    assert pid is not None
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _settle(channel: Channel) -> None:
    """Read the answers the launcher owes the channel (its ticket ahead, or that there is none)."""
    channel.sock.settimeout(10.0)
    while channel.ahead_owed:
        channel._read()


def test_the_next_run_of_a_plugin_on_a_channel_asks_the_launcher_nothing(sandbox: Sandbox, tmp_path: Path,
                                                                         asked: list[str], held: list[int]) -> None:
    ref = plugin_file(tmp_path, "quick", "import os\ndef run():\n    return os.getpid()\n")
    pids = [_run(sandbox, ref).result for _ in range(6)]
    # The first AHEAD_AFTER runs ask; the last of them asks ahead too, and every later one had its child ahead.
    assert asked == ["want"] * AHEAD_AFTER
    assert len(set(pids)) == 6 and pids[AHEAD_AFTER:] == held[:6 - AHEAD_AFTER]  # fresh processes, handed ahead
    assert len(sandbox._idle) == 1


def test_an_edited_plugin_runs_its_new_code_though_a_ticket_ahead_is_held(sandbox: Sandbox, tmp_path: Path,
                                                                          asked: list[str], held: list[int],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    ref = plugin_file(tmp_path, "edited", "def run():\n    return 'old'\n")
    assert [_run(sandbox, ref).result for _ in range(AHEAD_AFTER)] == ["old"] * AHEAD_AFTER  # one held ahead
    checked: list[bool] = []
    fresh = HeldTicket.fresh

    def spied(self: HeldTicket) -> bool:
        checked.append(fresh(self))
        return checked[-1]

    monkeypatch.setattr(HeldTicket, "fresh", spied)
    Path(ref.path or "").write_text("def run():\n    return 'new code, another size'\n")
    assert _run(sandbox, ref).result == "new code, another size"
    assert checked == [False]  # it held one, of the old template: given up, and the run asked
    assert asked == ["want"] * (AHEAD_AFTER + 1)
    poll("the given-up child to be reaped", lambda: (not alive(held[0]), held))
    assert sandbox.template_stats()["builds"] == 2


def test_a_run_of_another_plugin_gives_the_ticket_ahead_up_and_leaks_no_child(sandbox: Sandbox, tmp_path: Path,
                                                                             asked: list[str],
                                                                             held: list[int]) -> None:
    one = plugin_file(tmp_path, "one", "def run():\n    return 1\n")
    two = plugin_file(tmp_path, "two", "def run():\n    return 2\n")
    for _ in range(3):
        assert [_run(sandbox, one).result for _ in range(3)] == [1, 1, 1]
        assert [_run(sandbox, two).result for _ in range(3)] == [2, 2, 2]
    # Three runs in a row of each: every one asks (the third asks ahead too, given up by the next plugin's run).
    assert asked.count("want") == 18
    channel = sandbox._idle[0]
    given_up = [pid for pid in held if channel.held is None or pid != channel.held.pid]
    poll("every ticket ahead given up to be reaped", lambda: (not any(alive(p) for p in given_up), given_up))
    # Two templates, a spare each at most, the channel's plain ticket and its ticket ahead: nothing piles up.
    poll("the runs to be reaped", lambda: (len(_launcher_children(sandbox)) <= 2 + 2 + 1 + 1,
                                           _launcher_children(sandbox)))


def test_spaced_runs_keep_one_idle_child_of_a_template_back_to_back_runs_two(sandbox: Sandbox,
                                                                              tmp_path: Path) -> None:
    ref = plugin_file(tmp_path, "quick", "def run():\n    return 1\n")
    for _ in range(3):
        assert _run(sandbox, ref).result == 1
        time.sleep(0.1)  # spacing, not waiting: held this long, a ticket ahead is not back to back
    # The template, the ticket ahead the channel holds (no spare beside it) and the channel's plain ticket.
    poll("the runs to be reaped", lambda: (len(_launcher_children(sandbox)) == 3, _launcher_children(sandbox)))
    for _ in range(10):
        assert _run(sandbox, ref).result == 1
    # Back to back the template keeps a spare as well (forked before the next run needs it); no more.
    poll("the runs to be reaped", lambda: (len(_launcher_children(sandbox)) <= 4, _launcher_children(sandbox)))


def test_a_channel_running_plugins_in_turn_asks_for_no_ticket_ahead(sandbox: Sandbox, tmp_path: Path,
                                                                    held: list[int]) -> None:
    refs = [plugin_file(tmp_path, f"p{i}", f"def run():\n    return {i}\n") for i in range(2)]
    for _ in range(4):
        assert [_run(sandbox, ref).result for ref in refs] == [0, 1]
    assert len(held) <= 1  # the first run's (a fresh channel asks), given up by the next


def test_closing_the_sandbox_ends_the_held_ticket(tmp_path: Path, held: list[int]) -> None:
    sb = Sandbox(templates=True)
    ref = plugin_file(tmp_path, "quick", "def run():\n    return 1\n")
    assert [_run(sb, ref).result for _ in range(3)] == [1, 1, 1]
    channel = sb._idle[0]
    _settle(channel)
    assert channel.held is not None
    pid, fds = channel.held.pid, list(channel.held.fds)
    sb.close()
    assert channel.held is None
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    poll("the held ticket's child to be ended", lambda: (not alive(pid), pid))


def test_a_replaced_launcher_ends_the_held_ticket_and_runs_go_on(sandbox: Sandbox, tmp_path: Path,
                                                                  held: list[int]) -> None:
    ref = plugin_file(tmp_path, "quick", "def run():\n    return 1\n")
    assert [_run(sandbox, ref).result for _ in range(3)] == [1, 1, 1]
    channel = sandbox._idle[0]
    launcher = channel.launcher
    sandbox._replace(launcher, "a test replaced it")
    assert channel.held is None and channel.sock.fileno() == -1
    poll("the old launcher's children to be gone", lambda: (not any(alive(p) for p in held), held))
    assert _run(sandbox, ref).result == 1
    assert sandbox.launcher_pid != launcher.proc.pid


def test_templates_off_hold_no_ticket_ahead(tmp_path: Path, asked: list[str], held: list[int],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    starts: list[dict[str, Any]] = []
    original = Channel.start

    def start(self: Channel, pid: int, request: RunRequest, t0: float) -> None:
        starts.append({"pid": pid, "asks": self._ask_ahead is not None})
        original(self, pid, request, t0)

    monkeypatch.setattr(Channel, "start", start)
    with Sandbox(templates=False) as sb:
        ref = plugin_file(tmp_path, "quick", "def run():\n    return 1\n")
        assert all(_run(sb, ref).outcome is Outcome.SUCCESS for _ in range(3))
    assert asked == [] and held == [] and len(starts) == 3 and not any(s["asks"] for s in starts)
